//! `-plot FILE.png`: throughput over time and the latency distribution,
//! drawn by hand into an RGB raster (a 5x7 bitmap font for the labels), so
//! no plotting or font stack is needed.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::stats::Point;

const W: usize = 1000;
const H: usize = 720;
type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [30, 30, 30];
const GRID: Rgb = [225, 225, 225];
const BLUE: Rgb = [40, 90, 200];
const GREEN: Rgb = [30, 160, 80];
const RED: Rgb = [200, 50, 40];

/// Writes the picture. `labels` name the two timeline series.
pub fn draw(
    path: &Path,
    name: &str,
    timeline: &[Point],
    labels: (&str, &str),
    latency_us: &Histogram<u64>,
    latency_title: &str,
) -> std::io::Result<()> {
    let mut c = Canvas::new(W, H);
    c.text(20, 8, name, BLACK, 2);
    draw_timeline(&mut c, timeline, labels, Rect::new(90, 60, 880, 270));
    draw_latency(
        &mut c,
        latency_us,
        latency_title,
        Rect::new(90, 410, 880, 270),
    );
    let file = BufWriter::new(File::create(path)?);
    let mut enc = png::Encoder::new(file, W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(&c.buf).map_err(std::io::Error::other)?;
    w.finish().map_err(std::io::Error::other)
}

#[derive(Clone, Copy)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

impl Rect {
    fn new(x: i64, y: i64, w: i64, h: i64) -> Rect {
        Rect { x, y, w, h }
    }
    fn bottom(&self) -> i64 {
        self.y + self.h
    }
    /// Pixel of a point given as fractions of the width and height (y up).
    fn at(&self, fx: f64, fy: f64) -> (i64, i64) {
        (
            self.x + (fx.clamp(0.0, 1.0) * self.w as f64).round() as i64,
            self.bottom() - (fy.clamp(0.0, 1.0) * self.h as f64).round() as i64,
        )
    }
}

fn draw_timeline(c: &mut Canvas, pts: &[Point], labels: (&str, &str), r: Rect) {
    c.text(r.x, r.y - 26, "THROUGHPUT PER SECOND", BLACK, 2);
    let t_max = pts.last().map_or(1.0, |p| p.t).max(1.0);
    let rate = |p: &Point, prev_t: f64, v: u64| v as f64 / (p.t - prev_t).max(1e-3);
    let mut series: Vec<(f64, f64, f64)> = Vec::new();
    let mut prev_t = 0.0;
    for p in pts {
        series.push((p.t, rate(p, prev_t, p.sent), rate(p, prev_t, p.done)));
        prev_t = p.t;
    }
    let y_max = nice_ceiling(
        series
            .iter()
            .map(|s| s.1.max(s.2))
            .fold(0.0, f64::max)
            .max(1.0),
    );
    axes(c, r, y_max, &fmt_si);
    x_ticks(c, r, t_max, "S");
    // Each point is the rate over the interval ending at its time: steps.
    for (i, color) in [(1, BLUE), (2, GREEN)] {
        let mut last: Option<(i64, i64)> = None;
        let mut t0 = 0.0;
        for s in &series {
            let v = if i == 1 { s.1 } else { s.2 };
            let a = r.at(t0 / t_max, v / y_max);
            let b = r.at(s.0 / t_max, v / y_max);
            if let Some(l) = last {
                c.line(l, a, color);
            }
            c.line(a, b, color);
            last = Some(b);
            t0 = s.0;
        }
    }
    legend(c, r, &[(labels.0, BLUE), (labels.1, GREEN)]);
}

fn draw_latency(c: &mut Canvas, h: &Histogram<u64>, title: &str, r: Rect) {
    c.text(
        r.x,
        r.y - 26,
        &format!("{title} by percentile (ms)"),
        BLACK,
        2,
    );
    // x: percentile on a log scale of 1/(1-p), from p=0 to p=99.999%.
    const DECADES: f64 = 5.0;
    let x_of = |p: f64| (-(1.0 - p).max(1e-9).log10() / DECADES).clamp(0.0, 1.0);
    let y_max_ms = if h.is_empty() {
        1.0
    } else {
        nice_ceiling((h.max() as f64 / 1000.0).max(0.01))
    };
    axes(c, r, y_max_ms, &fmt_ms);
    for (p, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (0.99999, "99.999%"),
    ] {
        let (x, _) = r.at(x_of(p), 0.0);
        c.vline(x, r.y, r.bottom(), GRID);
        let width = 12 * label.len() as i64;
        let left = (x - width / 2).min(W as i64 - width - 6);
        c.text(left, r.bottom() + 8, label, BLACK, 2);
    }
    if h.is_empty() {
        c.text(r.x + 20, r.y + 20, "no samples", RED, 2);
        return;
    }
    let mut last = None;
    let steps = 400;
    for i in 0..=steps {
        let fx = i as f64 / steps as f64;
        let p = 1.0 - 10f64.powf(-fx * DECADES);
        let v_ms = h.value_at_quantile(p.min(1.0)) as f64 / 1000.0;
        let pt = r.at(fx, v_ms / y_max_ms);
        if let Some(l) = last {
            c.line(l, pt, RED);
        }
        last = Some(pt);
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let summary = format!(
        "p50 {} p99 {} max {} ms  n={}",
        fmt_ms(q(0.5)),
        fmt_ms(q(0.99)),
        fmt_ms(h.max() as f64 / 1000.0),
        h.len()
    );
    c.text(r.x + 10, r.y + 8, &summary, BLACK, 2);
}

fn axes(c: &mut Canvas, r: Rect, y_max: f64, fmt: &dyn Fn(f64) -> String) {
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let (_, y) = r.at(0.0, i as f64 / 4.0);
        c.hline(r.x, r.x + r.w, y, if i == 0 { BLACK } else { GRID });
        let label = fmt(v);
        c.text(r.x - 12 - 12 * label.len() as i64, y - 7, &label, BLACK, 2);
    }
    c.vline(r.x, r.y, r.bottom(), BLACK);
}

fn x_ticks(c: &mut Canvas, r: Rect, t_max: f64, unit: &str) {
    let step = nice_ceiling(t_max / 8.0).max(1.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let (x, _) = r.at(t / t_max, 0.0);
        c.vline(x, r.bottom(), r.bottom() + 5, BLACK);
        let label = format!("{}{unit}", fmt_si(t));
        c.text(
            x - 6 * label.len() as i64,
            r.bottom() + 10,
            &label,
            BLACK,
            2,
        );
        t += step;
    }
}

fn legend(c: &mut Canvas, r: Rect, items: &[(&str, Rgb)]) {
    let mut x = r.x + r.w - 10;
    for (label, color) in items.iter().rev() {
        let width = 12 * label.len() as i64 + 30;
        x -= width;
        c.fill(x, r.y + 10, 20, 6, *color);
        c.text(x + 26, r.y + 6, label, BLACK, 2);
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v * 0.999_999 {
            return m * mag;
        }
    }
    10.0 * mag
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

struct Canvas {
    w: usize,
    h: usize,
    buf: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            buf: WHITE.repeat(w * h),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        self.buf[i..i + 3].copy_from_slice(&c);
    }

    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: Rgb) {
        for x in x0..=x1 {
            self.set(x, y, c);
        }
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: Rgb) {
        for y in y0..=y1 {
            self.set(x, y, c);
        }
    }

    /// Two pixels wide (Bresenham, drawn twice).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in the 5x7 font, `scale` pixels per font pixel; lower case is
    /// drawn as upper case, unknown characters as blanks.
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if bits & (0x10 >> rx) != 0 {
                        self.fill(cx + rx * scale, y + ry as i64 * scale, scale, scale, c);
                    }
                }
            }
            cx += 6 * scale;
        }
    }
}

/// Rows of a 5x7 glyph, top first, bit 4 leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7000.0), 10000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(fmt_si(120_000.0), "120K");
        assert_eq!(fmt_si(1_500_000.0), "1.5M");
        assert_eq!(fmt_si(2.5), "2.5");
        assert_eq!(fmt_ms(0.25), "0.25");
        assert_eq!(fmt_ms(12.0), "12");
    }

    #[test]
    fn writes_a_png() {
        let mut h = crate::stats::histogram();
        for v in 1..1000u64 {
            h.saturating_record(v * 10);
        }
        let pts: Vec<Point> = (1..=5)
            .map(|i| Point {
                t: i as f64,
                sent: 1000 * i,
                done: 990 * i,
                ..Default::default()
            })
            .collect();
        let path = std::env::temp_dir().join(format!("client-plot-{}.png", std::process::id()));
        draw(
            &path,
            "flood test",
            &pts,
            ("sent/s", "delivered/s"),
            &h,
            "latency",
        )
        .expect("png");
        let bytes = std::fs::read(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        assert_eq!(&bytes[1..4], b"PNG");
        // Empty inputs must not panic either.
        draw(
            &path,
            "empty",
            &[],
            ("a", "b"),
            &crate::stats::histogram(),
            "x",
        )
        .expect("png");
        let _ = std::fs::remove_file(&path);
    }
}
