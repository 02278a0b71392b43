//! RSS-over-time charts (PNG, drawn with plotters) for BENCHMARKS.md.

use std::path::{Path, PathBuf};

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

/// Where a bench draws its RSS chart unless told: the full preset's next to BENCHMARKS.md
/// (`BENCHMARKS-rss-<stem>.png`, the chart it quotes), any other preset's in `benches/results/`
/// (`rss-<stem>-<preset>.png`), so a quick run never overwrites the full run's chart; with `out`,
/// in that directory.
pub fn default_path(repo: &Path, out: Option<&Path>, stem: &str, preset: &str) -> PathBuf {
    match (out, preset) {
        (Some(dir), _) => dir.join(format!("rss-{stem}-{preset}.png")),
        (None, "full") => repo.join(format!("BENCHMARKS-rss-{stem}.png")),
        (None, _) => repo
            .join("benches")
            .join("results")
            .join(format!("rss-{stem}-{preset}.png")),
    }
}

/// `path` relative to `repo` when it lies inside it, for the results files.
pub fn shown(repo: &Path, path: &Path) -> String {
    path.strip_prefix(repo)
        .unwrap_or(path)
        .display()
        .to_string()
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

/// Draws the series as RSS (MiB) against time (s) into a PNG at `path` (its directory is
/// created if missing). When some series peak far below the others, a second panel under the
/// first shows them alone on their own scale.
pub fn draw_rss(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
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

    /// Draws `series` into a temporary file and returns the PNG's bytes.
    fn drawn(name: &str, series: &[Series<'_>]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("weir-chart-{name}-{}", std::process::id()));
        // A directory that does not exist yet: `draw_rss` creates it.
        let path = dir.join("results").join("rss.png");
        draw_rss(&path, name, series).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        bytes
    }

    /// The PNG's height in pixels (IHDR: width then height, big-endian, at bytes 16..24).
    fn png_height(bytes: &[u8]) -> u32 {
        u32::from_be_bytes(bytes[20..24].try_into().unwrap())
    }

    fn s<'a>(label: &'a str, points: &'a [RssPoint]) -> Series<'a> {
        Series { label, points }
    }

    #[test]
    fn draws_a_png() {
        let a: Vec<RssPoint> = (0..50).map(|i| (i as f64, 30 << 20)).collect();
        let b: Vec<RssPoint> = (0..50)
            .map(|i| (i as f64, (20 + i as u64 / 5) << 20))
            .collect();
        let bytes = drawn("one", &[s("flat", &a), s("rising", &b)]);
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        assert_eq!(png_height(&bytes), 500, "one panel");
    }

    #[test]
    fn presets_get_charts_of_their_own() {
        let repo = Path::new("/r");
        let full = default_path(repo, None, "ingest", "full");
        let quick = default_path(repo, None, "ingest", "quick");
        assert_eq!(full, Path::new("/r/BENCHMARKS-rss-ingest.png"));
        assert_eq!(quick, Path::new("/r/benches/results/rss-ingest-quick.png"));
        assert_eq!(
            default_path(repo, Some(Path::new("/tmp/x")), "subscriptions", "full"),
            Path::new("/tmp/x/rss-subscriptions-full.png")
        );
        assert_eq!(shown(repo, &quick), "benches/results/rss-ingest-quick.png");
        assert_eq!(shown(repo, Path::new("/tmp/a.png")), "/tmp/a.png");
    }

    #[test]
    fn lines_far_below_the_highest_get_a_zoomed_panel() {
        let flat: Vec<RssPoint> = (0..50).map(|i| (i as f64, 60 << 20)).collect();
        let small: Vec<RssPoint> = (0..50).map(|i| (i as f64, 17 << 20)).collect();
        let huge: Vec<RssPoint> = (0..50)
            .map(|i| (i as f64, (i as u64 * 120) << 20))
            .collect();
        assert_eq!(
            zoomed(&[s("weir", &flat), s("limited", &small), s("bare", &huge)]),
            vec![0, 1]
        );
        // Of one scale: one panel.
        assert!(zoomed(&[s("weir", &flat), s("limited", &small)]).is_empty());

        let bytes = drawn("zoom", &[s("weir", &flat), s("bare", &huge)]);
        assert_eq!(png_height(&bytes), 900, "two panels");
    }
}
