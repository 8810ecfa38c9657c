//! `-plot FILE.png`: throughput over time and the latency distribution,
//! drawn with `plotters` into an RGB buffer (DejaVu Sans, embedded, rendered
//! by the pure-Rust `ab_glyph`) and saved as PNG.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::stats::Point;

const W: u32 = 1000;
const H: u32 = 760;
const FONT: &str = "sans-serif";
const BLUE: RGBColor = RGBColor(40, 90, 200);
const GREEN: RGBColor = RGBColor(30, 160, 80);
const RED: RGBColor = RGBColor(200, 50, 40);

/// Percentiles on the latency chart's x axis, as decades of `1/(1-p)`.
const DECADES: f64 = 5.0;

/// What the picture shows.
pub struct Plot<'a> {
    /// First title line: the run's parameters and date.
    pub title: &'a str,
    pub timeline: &'a [Point],
    /// Names of the two timeline series (`sent/s`, `delivered/s`).
    pub labels: (&'a str, &'a str),
    pub latency_us: &'a Histogram<u64>,
    pub latency_title: &'a str,
}

fn plot_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Writes the picture to `path`.
pub fn draw(path: &Path, plot: &Plot<'_>) -> std::io::Result<()> {
    // The same bytes each time: registering again only replaces the entry.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| plot_error("the embedded font is unusable"))?;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root
            .margin(10, 0, 0, 0)
            .titled(plot.title, (FONT, 20))
            .map_err(plot_error)?;
        let (top, bottom) = root.split_vertically(H / 2 - 20);
        draw_timeline(&top, plot)?;
        draw_latency(&bottom, plot)?;
        root.present().map_err(plot_error)?;
    }
    let file = BufWriter::new(File::create(path)?);
    let mut enc = png::Encoder::new(file, W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(&buf).map_err(std::io::Error::other)?;
    w.finish().map_err(std::io::Error::other)
}

/// The samples worth drawing: a last interval in which nothing was started
/// (sending had stopped; only the drain) is left out, so the chart does not
/// end in a drop to zero that the run never had.
pub fn trim_tail(points: &[Point]) -> &[Point] {
    let mut end = points.len();
    while end > 1 && points[end - 1].sent == 0 && points[..end - 1].iter().any(|p| p.sent > 0) {
        end -= 1;
    }
    &points[..end]
}

/// Rates per second of each interval, as steps: `(t, sent/s, done/s)` at
/// the start and at the end of each interval.
fn steps(points: &[Point]) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    let mut t0 = 0.0;
    for p in points {
        let dt = (p.t - t0).max(1e-3);
        let (s, d) = (p.sent as f64 / dt, p.done as f64 / dt);
        out.push((t0, s, d));
        out.push((p.t, s, d));
        t0 = p.t;
    }
    out
}

fn draw_timeline<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plot: &Plot<'_>,
) -> std::io::Result<()> {
    let pts = steps(trim_tail(plot.timeline));
    let t_max = pts.last().map_or(1.0, |p| p.0).max(1.0);
    let y_max = pts.iter().map(|p| p.1.max(p.2)).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput per second", (FONT, 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| fmt_si(*v))
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    for (label, color, pick) in [
        (plot.labels.0, BLUE, 1usize),
        (plot.labels.1, GREEN, 2usize),
    ] {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, if pick == 1 { p.1 } else { p.2 })),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    if pts.is_empty() {
        chart
            .draw_series(std::iter::once(Text::new(
                "no samples",
                (t_max * 0.05, y_max * 0.5),
                (FONT, 16).into_font().color(&RED),
            )))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// x position of percentile `p` (0 at 0 %, 1 per decade of `1/(1-p)`).
fn x_of(p: f64) -> f64 {
    (-(1.0 - p).max(1e-9).log10()).clamp(0.0, DECADES)
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    match x.round() as i64 {
        0 => "0%".to_owned(),
        n => format!("{p:.*}%", (n - 2).max(0) as usize),
    }
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plot: &Plot<'_>,
) -> std::io::Result<()> {
    let h = plot.latency_us;
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let caption = if h.is_empty() {
        format!("{} by percentile (ms): no samples", plot.latency_title)
    } else {
        format!(
            "{} by percentile (ms): p50 {}, p99 {}, max {}, n = {}",
            plot.latency_title,
            fmt_ms(q(0.5)),
            fmt_ms(q(0.99)),
            fmt_ms(h.max() as f64 / 1000.0),
            h.len()
        )
    };
    let y_max = if h.is_empty() {
        1.0
    } else {
        (h.max() as f64 / 1000.0).max(0.01) * 1.1
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..DECADES, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(DECADES as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .x_desc("percentile")
        .y_label_formatter(&|v| fmt_ms(*v))
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    if !h.is_empty() {
        let steps = 400;
        chart
            .draw_series(LineSeries::new(
                (0..=steps).map(|i| {
                    let x = DECADES * i as f64 / steps as f64;
                    let p = 1.0 - 10f64.powf(-x);
                    (x_of(p), q(p.min(1.0)))
                }),
                RED.stroke_width(2),
            ))
            .map_err(plot_error)?;
    }
    Ok(())
}

fn fmt_si(v: f64) -> String {
    if v >= 1e6 {
        trim(format!("{:.1}M", v / 1e6))
    } else if v >= 1e3 {
        trim(format!("{:.1}K", v / 1e3))
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.1}"))
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

fn trim(s: String) -> String {
    // "1.0K" -> "1K", "0.500" -> "0.5"
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if !num.contains('.') {
        return s;
    }
    let t = num.trim_end_matches('0').trim_end_matches('.');
    format!("{t}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, sent: u64, done: u64) -> Point {
        Point {
            t,
            sent,
            done,
            ..Default::default()
        }
    }

    #[test]
    fn labels() {
        assert_eq!(fmt_si(120_000.0), "120K");
        assert_eq!(fmt_si(1_500_000.0), "1.5M");
        assert_eq!(fmt_si(2.5), "2.5");
        assert_eq!(fmt_ms(0.25), "0.25");
        assert_eq!(fmt_ms(12.0), "12");
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }

    #[test]
    fn no_drop_to_zero_at_the_end() {
        let pts = [point(1.0, 10, 9), point(2.0, 10, 10), point(2.4, 0, 1)];
        assert_eq!(trim_tail(&pts).len(), 2);
        // Nothing sent at all (idle): kept as it is.
        let idle = [point(1.0, 0, 0), point(2.0, 0, 0)];
        assert_eq!(trim_tail(&idle).len(), 2);
        assert!(trim_tail(&[]).is_empty());
        // Steps: each interval's rate at its start and its end.
        assert_eq!(
            steps(&pts[..2]),
            [
                (0.0, 10.0, 9.0),
                (1.0, 10.0, 9.0),
                (1.0, 10.0, 10.0),
                (2.0, 10.0, 10.0)
            ]
        );
    }

    /// The picture is a PNG of the right size with text and both charts on
    /// it (not a blank page).
    #[test]
    fn writes_a_png() {
        let mut h = crate::stats::histogram();
        for v in 1..1000u64 {
            h.saturating_record(v * 10);
        }
        let pts: Vec<Point> = (1..=5)
            .map(|i| point(i as f64, 1000 * i, 990 * i))
            .collect();
        let path = std::env::temp_dir().join(format!("client-plot-{}.png", std::process::id()));
        let plot = Plot {
            title: "flood: 20 clients, 2026-12-07 02:20 UTC",
            timeline: &pts,
            labels: ("sent/s", "delivered/s"),
            latency_us: &h,
            latency_title: "message latency",
        };
        draw(&path, &plot).expect("png");
        let file = File::open(&path).expect("read back");
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .expect("png header");
        let mut img = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut img).expect("frame");
        assert_eq!((info.width, info.height), (W, H));
        let pixels = &img[..info.buffer_size()];
        let count = |c: RGBColor| {
            pixels
                .chunks_exact(3)
                .filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
                .count()
        };
        assert!(count(BLUE) > 100, "no sent series");
        assert!(count(GREEN) > 100, "no delivered series");
        assert!(count(RED) > 100, "no latency curve");
        // Dark anti-aliased text pixels of the titles and labels.
        let dark = pixels
            .chunks_exact(3)
            .filter(|p| p[0] < 80 && p[1] < 80 && p[2] < 80)
            .count();
        assert!(dark > 1000, "no text: {dark}");
        let _ = std::fs::remove_file(&path);
        // Empty inputs must not panic either.
        let empty = crate::stats::histogram();
        let plot = Plot {
            title: "empty",
            timeline: &[],
            labels: ("a", "b"),
            latency_us: &empty,
            latency_title: "x",
        };
        draw(&path, &plot).expect("png");
        let _ = std::fs::remove_file(&path);
    }
}
