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

/// Line colours, by series index (kept across the two panels).
const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// A series is drawn again in a zoomed panel when its peak is below this fraction of the
/// chart's highest peak: otherwise a flat 60 MiB line under a 6 GiB one is a line on the axis.
const ZOOM_BELOW: f64 = 1.0 / 8.0;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn peak_mib(s: &Series<'_>) -> f64 {
    s.points.iter().map(|p| mib(p.1)).fold(0.0, f64::max)
}

/// Which series a zoomed panel should show: those far below the highest peak (none when all
/// are of one scale).
fn zoomed(series: &[Series<'_>]) -> Vec<usize> {
    let top = series.iter().map(peak_mib).fold(0.0, f64::max);
    (0..series.len())
        .filter(|&i| peak_mib(&series[i]) < top * ZOOM_BELOW)
        .collect()
}

/// Draws the series as RSS (MiB) against time (s) into a PNG at `path`. When some series peak
/// far below the others, a second panel under the first shows them alone on their own scale.
pub fn draw_rss(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    register_font()?;
    let max_t = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let zoom = zoomed(series);
    let height = if zoom.is_empty() { 500 } else { 900 };
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let all: Vec<usize> = (0..series.len()).collect();
    if zoom.is_empty() {
        panel(&root, title, max_t, series, &all)?;
    } else {
        let (upper, lower) = root.split_vertically(500);
        panel(&upper, title, max_t, series, &all)?;
        let caption = "the same, zoomed to the lower lines";
        panel(&lower, caption, max_t, series, &zoom)?;
    }
    root.present()?;
    Ok(())
}

/// One chart of the series at `show` (indices into `series`, which fix their colours).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    max_t: f64,
    series: &[Series<'_>],
    show: &[usize],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let max_mib = show
        .iter()
        .map(|&i| peak_mib(&series[i]))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_mib)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS (MiB)")
        .draw()?;
    for &i in show {
        let s = &series[i];
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.0, mib(p.1))),
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

    #[test]
    fn lines_far_below_the_highest_get_a_zoomed_panel() {
        let flat: Vec<RssPoint> = (0..50).map(|i| (i as f64, 60 << 20)).collect();
        let small: Vec<RssPoint> = (0..50).map(|i| (i as f64, 17 << 20)).collect();
        let huge: Vec<RssPoint> = (0..50)
            .map(|i| (i as f64, (i as u64 * 120) << 20))
            .collect();
        let s = |label, points| Series { label, points };
        assert_eq!(
            zoomed(&[s("weir", &flat), s("limited", &small), s("bare", &huge)]),
            vec![0, 1]
        );
        // Of one scale: one panel.
        assert!(zoomed(&[s("weir", &flat), s("limited", &small)]).is_empty());

        let dir = std::env::temp_dir().join(format!("weir-chart-zoom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rss.png");
        draw_rss(&path, "zoom", &[s("weir", &flat), s("bare", &huge)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // PNG IHDR: width then height, big-endian, at bytes 16..24.
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!(height, 900, "two panels");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
