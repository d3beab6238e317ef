//! `growth.svg`: how the cost of one MAP_DMA and one UNMAP_DMA grows with
//! the number of mappings in the container (the `scale` workload's
//! `scale.{map,unmap}@N` rows) and with the size of the mapping (the
//! `iommu.size.<backing>` workloads' `.{map,unmap}@<size>` rows), the C and
//! the Rust type1 as separate lines, on log-log axes. Drawn by hand like
//! `chart.svg` (render.rs): four panels of polylines, ticks and labels.

use super::render::xml_escape;
use super::stats::Row;
use std::fmt::Write as _;

/// What a panel's x axis counts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum XKind {
    /// Mappings in the container.
    Count,
    /// Bytes in the one mapping.
    Bytes,
}

/// One line: one backend's medians of one metric family, by x.
#[derive(Debug)]
struct Line {
    /// What the line is (the colour's meaning), e.g. `THP`.
    what: &'static str,
    color: &'static str,
    /// Stroke width; the dots' radius follows it.
    width: f64,
    rust: bool,
    /// (x, median), x ascending; only positive finite values.
    points: Vec<(f64, f64)>,
    /// The metric family, for the points' tooltips.
    family: String,
}

/// One panel of the chart.
struct Panel {
    title: &'static str,
    x: XKind,
    unit: String,
    lines: Vec<Line>,
    /// Shown in place of the lines when there are none.
    empty: &'static str,
}

/// The metric families drawn against the mapping size: their backing,
/// its name, colour and stroke width. THP and hugetlbfs memory cost the same
/// (both are 2 MiB folios to the type1s), so the THP line is drawn wide,
/// under the hugetlbfs one, to stay visible where they coincide.
const BACKINGS: [(&str, &str, &str, f64); 3] = [
    ("4k", "4 KiB pages", "#1f77b4", 2.0),
    ("thp", "THP (wide: under hugetlbfs where equal)", "#e6550d", 6.0),
    ("hugetlb", "hugetlbfs 2 MiB", "#31a354", 2.0),
];
/// The colour of the count panels' lines.
const SCALE_COLOR: &str = "#444";

/// `4096`, `64K`, `2M`, `1G` (powers of 1024) as a number.
fn parse_x(label: &str) -> Option<f64> {
    let (digits, mult) = match label.as_bytes().last()? {
        b'K' => (&label[..label.len() - 1], 1024.0),
        b'M' => (&label[..label.len() - 1], 1024.0 * 1024.0),
        b'G' => (&label[..label.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (label, 1.0),
    };
    let v = digits.parse::<u64>().ok()? as f64 * mult;
    (v > 0.0).then_some(v)
}

/// A family's points on one side: the medians of the rows `<family>@<x>`.
fn points(rows: &[Row], family: &str, rust: bool) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let (f, x) = r.metric.rsplit_once('@')?;
            let side = if rust { r.rust } else { r.c };
            let y = side?.median;
            (f == family && y.is_finite() && y > 0.0).then_some((parse_x(x)?, y))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn unit_of(rows: &[Row], prefix: &str) -> String {
    rows.iter().find(|r| r.metric.starts_with(prefix)).map(|r| r.unit.clone()).unwrap_or_else(|| "ns/op".into())
}

fn panels(rows: &[Row]) -> Vec<Panel> {
    let lines = |family: String, what: &'static str, color: &'static str, width: f64| {
        [false, true]
            .map(|rust| Line { what, color, width, rust, points: points(rows, &family, rust), family: family.clone() })
            .into_iter()
            .filter(|l| !l.points.is_empty())
    };
    let mut out = Vec::new();
    for (op, title) in [("map", "MAP_DMA of one 4 KiB mapping, N mappings in the container"), ("unmap", "UNMAP_DMA of one 4 KiB mapping, N in the container")] {
        out.push(Panel {
            title,
            x: XKind::Count,
            unit: unit_of(rows, "scale."),
            lines: lines(format!("scale.{op}"), "scale", SCALE_COLOR, 2.0).collect(),
            empty: "no scale.* rows (run the `scale` workload)",
        });
    }
    for (op, title) in [("map", "MAP_DMA of one mapping, real IOMMU (VT-d), by size"), ("unmap", "UNMAP_DMA of one mapping, real IOMMU (VT-d), by size")] {
        out.push(Panel {
            title,
            x: XKind::Bytes,
            unit: unit_of(rows, "iommu.size."),
            lines: BACKINGS.iter().flat_map(|&(b, what, color, width)| lines(format!("iommu.size.{b}.{op}"), what, color, width)).collect(),
            empty: "no iommu.size.* rows (run the `iommu.size` workloads)",
        });
    }
    out
}

/// Powers of two from `lo` to `hi` (exponents), every `step`th, covering
/// `[min, max]`: (exponent range, tick exponents).
fn log2_ticks(min: f64, max: f64) -> (f64, f64, Vec<i32>) {
    let (mut lo, mut hi) = (min.log2().floor() as i32, max.log2().ceil() as i32);
    if hi <= lo {
        hi = lo + 1;
    }
    let step = ((hi - lo) as f64 / 8.0).ceil().max(1.0) as i32;
    lo -= lo.rem_euclid(step);
    while (hi - lo) % step != 0 {
        hi += 1;
    }
    (lo as f64, hi as f64, (lo..=hi).step_by(step as usize).collect())
}

/// Powers of ten covering `[min, max]`.
fn log10_ticks(min: f64, max: f64) -> (f64, f64, Vec<i32>) {
    let (lo, mut hi) = (min.log10().floor() as i32, max.log10().ceil() as i32);
    if hi <= lo {
        hi = lo + 1;
    }
    (lo as f64, hi as f64, (lo..=hi).collect())
}

/// `1`, `16`, `4096`, `65536`; or `4 KiB`, `2 MiB`, `1 GiB`.
fn x_label(kind: XKind, exp: i32) -> String {
    let v = 2f64.powi(exp);
    match kind {
        XKind::Count => format!("{v:.0}"),
        XKind::Bytes => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let i = ((exp.max(0) / 10) as usize).min(units.len() - 1);
            format!("{:.0} {}", v / 1024f64.powi(i as i32), units[i])
        }
    }
}

/// `1`, `10`, `100`, `1k`, `10k`, ..., `1G`.
fn y_label(exp: i32) -> String {
    let (div, suffix) = match exp {
        e if e >= 12 => (12, "T"),
        e if e >= 9 => (9, "G"),
        e if e >= 6 => (6, "M"),
        e if e >= 3 => (3, "k"),
        _ => (0, ""),
    };
    format!("{:.0}{suffix}", 10f64.powi(exp - div))
}

const PANEL_W: f64 = 540.0;
const PANEL_H: f64 = 340.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

fn draw_panel(s: &mut String, p: &Panel, ox: f64, oy: f64) {
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let (x0, y0) = (ox + LEFT, oy + TOP);
    let _ = writeln!(s, "<text x=\"{x0}\" y=\"{}\" font-weight=\"bold\">{}</text>", oy + 18.0, xml_escape(p.title));
    let _ = writeln!(s, "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    let all: Vec<(f64, f64)> = p.lines.iter().flat_map(|l| l.points.iter().copied()).collect();
    if all.is_empty() {
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#777\">{}</text>", x0 + pw / 2.0, y0 + ph / 2.0, xml_escape(p.empty));
        return;
    }
    let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(f64, f64)) -> f64| all.iter().map(pick).fold(init, f);
    let (xlo, xhi, xticks) = log2_ticks(fold(f64::min, f64::INFINITY, |p| p.0), fold(f64::max, 0.0, |p| p.0));
    let (ylo, yhi, yticks) = log10_ticks(fold(f64::min, f64::INFINITY, |p| p.1), fold(f64::max, 0.0, |p| p.1));
    let px = |x: f64| x0 + (x.log2() - xlo) / (xhi - xlo) * pw;
    let py = |y: f64| y0 + ph - (y.log10() - ylo) / (yhi - ylo) * ph;
    for e in &xticks {
        let x = px(2f64.powi(*e));
        let _ = writeln!(s, "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#e4e4e4\"/>", y0 + ph);
        let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>", y0 + ph + 15.0, x_label(p.x, *e));
    }
    for e in &yticks {
        let y = py(10f64.powi(*e));
        let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>", x0 + pw);
        let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", x0 - 5.0, y + 4.0, y_label(*e));
    }
    let x_title = match p.x {
        XKind::Count => "N, mappings in the container (log scale)",
        XKind::Bytes => "size of the mapping (log scale)",
    };
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_title}</text>", x0 + pw / 2.0, y0 + ph + 34.0);
    let (tx, ty) = (ox + 16.0, y0 + ph / 2.0);
    let _ = writeln!(
        s,
        "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\" transform=\"rotate(-90 {tx} {ty})\">{} per operation (log scale)</text>",
        xml_escape(&p.unit)
    );
    for l in &p.lines {
        let pts: Vec<String> = l.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if l.rust { "" } else { " stroke-dasharray=\"6 4\"" };
        let side = if l.rust { "rust" } else { "c" };
        let _ = writeln!(
            s,
            "<polyline class=\"{side}\" points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"{dash}/>",
            pts.join(" "),
            l.color,
            l.width
        );
        for &(x, y) in &l.points {
            let fill = if l.rust { l.color } else { "white" };
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{fill}\" stroke=\"{}\"><title>{}, {side}: {}@{} = {y:.0} {}</title></circle>",
                px(x),
                py(y),
                1.5 + l.width,
                l.color,
                xml_escape(l.what),
                xml_escape(&l.family),
                x_label_exact(p.x, x),
                xml_escape(&p.unit)
            );
        }
    }
}

/// A point's x for its tooltip.
fn x_label_exact(kind: XKind, x: f64) -> String {
    if x.log2().fract() == 0.0 {
        x_label(kind, x.log2() as i32)
    } else {
        format!("{x:.0}")
    }
}

/// The chart: a title, a legend, and four panels (map and unmap against
/// the number of mappings, then against the mapping size).
pub fn growth_svg(rows: &[Row], title: &str) -> String {
    let panels = panels(rows);
    let legend_h = 64.0;
    let (width, height) = (2.0 * PANEL_W, legend_h + 2.0 * PANEL_H);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>", xml_escape(title));
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"38\" fill=\"#555\">Median cost of one ioctl over the rounds, log-log. Solid line, filled dots: Rust type1; dashed line, open dots: C type1.</text>"
    );
    let mut x = 10.0;
    let keys = [(SCALE_COLOR, "scale: 4 KiB mappings, mdev-only container (nothing pinned)")]
        .into_iter()
        .chain(BACKINGS.iter().map(|&(_, what, color, _)| (color, what)));
    for (color, what) in keys {
        let _ = writeln!(s, "<line x1=\"{x}\" y1=\"52\" x2=\"{}\" y2=\"52\" stroke=\"{color}\" stroke-width=\"3\"/>", x + 20.0);
        let _ = writeln!(s, "<text x=\"{}\" y=\"56\">{}</text>", x + 25.0, xml_escape(what));
        x += 40.0 + 6.5 * what.len() as f64;
    }
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut s, p, (i % 2) as f64 * PANEL_W, legend_h + (i / 2) as f64 * PANEL_H);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::stats::{analyze, Stats};
    use super::*;

    fn row(metric: &str, c: Option<f64>, rust: Option<f64>) -> Row {
        let st = |v: Option<f64>| v.map(|m| Stats { median: m, min: m, max: m, n: 1 });
        Row { metric: metric.into(), unit: "insn/op".into(), c: st(c), rust: st(rust), ratio: None, ratio_range: None, note: None }
    }

    /// `scale` at its five N, and the size sweep on three backings.
    fn full_rows() -> Vec<Row> {
        let mut rows = Vec::new();
        for n in [1, 16, 256, 4096, 65535] {
            for op in ["map", "lookup", "unmap"] {
                rows.push(row(&format!("scale.{op}@{n}"), Some(1000.0 + n as f64 / 100.0), Some(900.0 + n as f64 / 100.0)));
            }
        }
        for b in ["4k", "thp", "hugetlb"] {
            for (label, bytes) in [("4K", 4096.0), ("64K", 65536.0), ("2M", 2097152.0), ("64M", 67108864.0), ("1G", 1073741824.0)] {
                for op in ["map", "unmap"] {
                    rows.push(row(&format!("iommu.size.{b}.{op}@{label}"), Some(5000.0 + bytes / 8.0), Some(4000.0 + bytes / 16.0)));
                }
            }
        }
        rows.push(row("map.1g.map", Some(1.0), Some(1.0)));
        rows
    }

    /// Every number in every `name="..."` attribute of the SVG.
    fn attr_numbers(svg: &str, name: &str) -> Vec<f64> {
        let key = format!(" {name}=\"");
        svg.match_indices(&key)
            .map(|(i, _)| &svg[i + key.len()..])
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .flat_map(|v| v.split([' ', ',']).map(|n| n.parse::<f64>().unwrap_or_else(|_| panic!("{name}={v:?}"))).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn one_polyline_per_backend_per_series() {
        let svg = growth_svg(&full_rows(), "growth <&>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("growth &lt;&amp;&gt;"));
        // scale map, scale unmap; 3 backings × map, unmap: 8 series, 2 backends each.
        assert_eq!(svg.matches("<polyline").count(), 16, "{svg}");
        assert_eq!(svg.matches("<polyline class=\"rust\"").count(), 8);
        assert_eq!(svg.matches("<polyline class=\"c\"").count(), 8);
        assert_eq!(svg.matches(" stroke-dasharray=").count(), 8, "C lines dashed");
        // Every series has its 5 points, as dots.
        assert_eq!(svg.matches("<circle").count(), 16 * 5);
        for (_, _, color, width) in BACKINGS {
            assert_eq!(svg.matches(&format!("stroke=\"{color}\" stroke-width=\"{width}\"")).count(), 4, "{color}: map and unmap, C and Rust");
        }
        // The lookups are not drawn, nor rows without an @.
        assert!(!svg.contains("scale.lookup") && !svg.contains("map.1g"));
        for label in ["MAP_DMA", "UNMAP_DMA", "N, mappings in the container", "size of the mapping", "insn/op per operation", "Rust type1", "C type1", "THP", "hugetlbfs 2 MiB", "4 KiB pages"] {
            assert!(svg.contains(label), "{label}");
        }
    }

    #[test]
    fn ticks_are_powers_of_two_and_ten() {
        let svg = growth_svg(&full_rows(), "t");
        // Count axis: 1 .. 65536 every second power of two.
        for l in ["1", "4", "16", "64", "256", "1024", "4096", "16384", "65536"] {
            assert!(svg.contains(&format!("text-anchor=\"middle\">{l}</text>")), "x tick {l}");
        }
        // Size axis: 4 KiB .. 1 GiB every third power of two.
        for l in ["4 KiB", "32 KiB", "256 KiB", "2 MiB", "16 MiB", "128 MiB", "1 GiB"] {
            assert!(svg.contains(&format!(">{l}</text>")), "x tick {l}");
        }
        // Cost axes: powers of ten.
        for l in ["100", "1k", "10k", "100k", "1M", "10M", "100M"] {
            assert!(svg.contains(&format!("text-anchor=\"end\">{l}</text>")), "y tick {l}");
        }
        let (lo, hi, t) = log2_ticks(4096.0, 1073741824.0);
        assert_eq!((lo, hi), (12.0, 30.0));
        assert!(t.iter().all(|e| (e - 12) % 3 == 0) && t.len() == 7, "{t:?}");
        let (lo, hi, t) = log2_ticks(1.0, 65535.0);
        assert_eq!((lo, hi, t.len()), (0.0, 16.0, 9));
        let (lo, hi, t) = log10_ticks(950.0, 1.2e8);
        assert_eq!((lo, hi, t), (2.0, 9.0, (2..=9).collect()));
        // One point: an axis of one decade, not zero width.
        assert_eq!(log10_ticks(1000.0, 1000.0).2, vec![3, 4]);
        assert_eq!(log2_ticks(16.0, 16.0).2.len(), 2);
    }

    #[test]
    fn no_nan_and_everything_inside_the_picture() {
        let mut rows = full_rows();
        // Values a log axis cannot place: dropped, not drawn as NaN.
        rows.push(row("iommu.size.thp.map@128M", Some(0.0), Some(f64::NAN)));
        rows.push(row("iommu.size.thp.unmap@8M", Some(f64::INFINITY), Some(-1.0)));
        rows.push(row("scale.map@x", Some(5.0), Some(5.0)));
        let svg = growth_svg(&rows, "t");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 16 * 5);
        let (w, h) = (2.0 * PANEL_W, 64.0 + 2.0 * PANEL_H);
        for x in attr_numbers(&svg, "cx").into_iter().chain(attr_numbers(&svg, "x1")) {
            assert!(x.is_finite() && (0.0..=w).contains(&x), "x {x}");
        }
        for y in attr_numbers(&svg, "cy").into_iter().chain(attr_numbers(&svg, "y1")) {
            assert!(y.is_finite() && (0.0..=h).contains(&y), "y {y}");
        }
        let pts = attr_numbers(&svg, "points");
        assert_eq!(pts.len(), 16 * 5 * 2);
        assert!(pts.iter().all(|v| v.is_finite() && *v >= 0.0 && *v <= w));
    }

    #[test]
    fn missing_sides_and_empty_panels() {
        // One side only: one line per series; no rows at all: a note per panel.
        let rows: Vec<Row> = full_rows().into_iter().map(|mut r| {
            r.c = None;
            r
        }).collect();
        let svg = growth_svg(&rows, "t");
        assert_eq!(svg.matches("<polyline class=\"rust\"").count(), 8);
        assert_eq!(svg.matches("<polyline class=\"c\"").count(), 0);
        let empty = growth_svg(&analyze(""), "t");
        assert_eq!(empty.matches("<polyline").count(), 0);
        assert_eq!(empty.matches("no scale.* rows").count(), 2);
        assert_eq!(empty.matches("no iommu.size.* rows").count(), 2);
        assert!(!empty.contains("NaN"));
    }

    #[test]
    fn labels() {
        assert_eq!(parse_x("65535"), Some(65535.0));
        assert_eq!(parse_x("4K"), Some(4096.0));
        assert_eq!(parse_x("2M"), Some(2097152.0));
        assert_eq!(parse_x("1G"), Some(1073741824.0));
        assert_eq!(parse_x("0"), None);
        assert_eq!(parse_x("x"), None);
        assert_eq!(parse_x(""), None);
        assert_eq!(x_label(XKind::Bytes, 12), "4 KiB");
        assert_eq!(x_label(XKind::Bytes, 30), "1 GiB");
        assert_eq!(x_label(XKind::Count, 16), "65536");
        assert_eq!(y_label(2), "100");
        assert_eq!(y_label(4), "10k");
        assert_eq!(y_label(8), "100M");
    }
}
