//! RSS-over-time charts (PNG, drawn with plotters) for BENCHMARKS.md.

use std::path::Path;

use plotters::prelude::*;

use crate::procfs::RssPoint;

/// One line on a chart: a label and its (seconds, bytes) points.
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// Readings, in time order.
    pub points: &'a [RssPoint],
}

/// Where the chart's font comes from: Debian's `fonts-dejavu-core` (present on the base image).
const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the chart font once (plotters' `ab_glyph` backend needs the bytes for the whole
/// process, so they are leaked once, on first use).
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_FILE)
                .map_err(|e| format!("{FONT_FILE}: {e} (apt-get install fonts-dejavu-core)"))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_FILE}: not a usable TrueType font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Draws the series as RSS (MiB) against time (s) into a PNG at `path`.
pub fn draw_rss(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    register_font()?;
    let max_t = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let max_mib = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1 as f64 / 1_048_576.0))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_mib)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS (MiB)")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.0, p.1 as f64 / 1_048_576.0)),
                color.stroke_width(2),
            ))?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("weir-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rss.png");
        let a: Vec<RssPoint> = (0..50).map(|i| (i as f64, 30 << 20)).collect();
        let b: Vec<RssPoint> = (0..50)
            .map(|i| (i as f64, (20 + i as u64 / 5) << 20))
            .collect();
        draw_rss(
            &path,
            "test",
            &[
                Series {
                    label: "flat",
                    points: &a,
                },
                Series {
                    label: "rising",
                    points: &b,
                },
            ],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
