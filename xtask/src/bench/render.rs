//! The outputs of a bench run, all from the same rows: the Markdown table
//! (`results.md`, also the README's), the text table printed at the end,
//! `results.json` and the ratio chart (`chart.svg`).

use super::stats::{Row, Stats};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::fmt::Write as _;

fn fmt_num(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}", v)
    } else if v >= 100.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.3}", v)
    }
}

fn fmt_stats(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!("{} ({}–{})", fmt_num(s.median), fmt_num(s.min), fmt_num(s.max)),
        None => "-".to_owned(),
    }
}

fn fmt_ratio(r: &Row) -> (String, String) {
    match (r.ratio, r.ratio_range) {
        (Some(x), Some((lo, hi))) => (format!("{x:.2}"), format!("{lo:.2}–{hi:.2}")),
        (Some(x), None) => (format!("{x:.2}"), "-".to_owned()),
        _ => (r.note.clone().unwrap_or_else(|| "-".into()), String::new()),
    }
}

/// The Markdown table (also what the README shows).
pub fn markdown(rows: &[Row], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(s, "| metric | unit | C median (min–max) | Rust median (min–max) | Rust/C | per-round Rust/C |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let (ratio, range) = fmt_ratio(r);
        let ratio = ratio.replace('|', "\\|");
        let _ = writeln!(s, "| {} | {} | {} | {} | {} | {} |", r.metric, r.unit, fmt_stats(&r.c), fmt_stats(&r.rust), ratio, range);
    }
    s
}

/// The plain-text table printed at the end of the run.
pub fn text_table(rows: &[Row]) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let (ratio, range) = fmt_ratio(r);
            [r.metric.clone(), r.unit.clone(), fmt_stats(&r.c), fmt_stats(&r.rust), if range.is_empty() { ratio } else { format!("{ratio} ({range})") }]
        })
        .collect();
    let head = ["metric", "unit", "C median (min-max)", "Rust median (min-max)", "Rust/C (per round)"];
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for (i, x) in c.iter().enumerate().take(4) {
            w[i] = w[i].max(x.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, c: &[String]| {
        let _ = writeln!(s, "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}", c[0], c[1], c[2], c[3], c[4], w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3]);
    };
    line(&mut s, &head.map(String::from));
    for c in &cells {
        line(&mut s, c);
    }
    s
}

/// `results.json`'s statistics of one side (non-finite numbers are `null`).
#[derive(Serialize)]
struct StatsJson {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

/// One row of `results.json`.
#[derive(Serialize)]
struct RowJson<'a> {
    metric: &'a str,
    unit: &'a str,
    c: Option<StatsJson>,
    rust: Option<StatsJson>,
    ratio: Option<f64>,
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
    note: Option<&'a str>,
}

impl<'a> From<&'a Row> for RowJson<'a> {
    fn from(r: &'a Row) -> Self {
        let stats = |s: &Option<Stats>| s.map(|s| StatsJson { median: s.median, min: s.min, max: s.max, n: s.n });
        RowJson {
            metric: &r.metric,
            unit: &r.unit,
            c: stats(&r.c),
            rust: stats(&r.rust),
            ratio: r.ratio,
            ratio_min: r.ratio_range.map(|x| x.0),
            ratio_max: r.ratio_range.map(|x| x.1),
            note: r.note.as_deref(),
        }
    }
}

/// `results.json`'s top level: the run's context as string fields, in the
/// order given, then `rows`.
struct ResultsJson<'a> {
    meta: &'a [(&'a str, String)],
    rows: &'a [Row],
}

impl Serialize for ResultsJson<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut map = ser.serialize_map(Some(self.meta.len() + 1))?;
        for (k, v) in self.meta {
            map.serialize_entry(k, v)?;
        }
        let rows: Vec<RowJson> = self.rows.iter().map(RowJson::from).collect();
        map.serialize_entry("rows", &rows)?;
        map.end()
    }
}

/// `results.json`: the run's context and every row. serde_json writes
/// non-finite numbers as `null`.
pub fn json(rows: &[Row], meta: &[(&str, String)]) -> String {
    let mut s = serde_json::to_string_pretty(&ResultsJson { meta, rows }).expect("plain data serializes");
    s.push('\n');
    s
}

pub(super) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A horizontal bar chart of the ratios, with the per-round range as a
/// whisker and a line at 1.00 (same speed); rows without a ratio are listed
/// with their note.
pub fn svg(rows: &[Row], title: &str) -> String {
    let label_w = 190.0;
    let plot_w = 520.0;
    let bar_h = 16.0;
    let gap = 6.0;
    let top = 48.0;
    let max = rows
        .iter()
        .filter_map(|r| r.ratio_range.map(|x| x.1).or(r.ratio))
        .fold(2.0_f64, f64::max)
        .min(10.0);
    let x_of = |v: f64| label_w + (v.min(max) / max) * plot_w;
    let height = top + rows.len() as f64 * (bar_h + gap) + 40.0;
    let width = label_w + plot_w + 200.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>", xml_escape(title));
    let _ = writeln!(s, "<text x=\"10\" y=\"36\" fill=\"#555\">Rust / C time (median; whisker: per-round range). Left of the line: Rust faster.</text>");
    for (i, r) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", label_w - 6.0, y + bar_h - 4.0, xml_escape(&r.metric));
        match r.ratio {
            Some(v) => {
                let color = if v <= 1.0 { "#4a8" } else { "#d64" };
                let _ = writeln!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{color}\"/>",
                    x_of(v) - label_w
                );
                if let Some((lo, hi)) = r.ratio_range {
                    let ym = y + bar_h / 2.0;
                    let _ = writeln!(s, "<line x1=\"{:.1}\" y1=\"{ym}\" x2=\"{:.1}\" y2=\"{ym}\" stroke=\"black\"/>", x_of(lo), x_of(hi));
                }
                let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\">{v:.2}</text>", x_of(r.ratio_range.map_or(v, |x| x.1).max(v)) + 4.0, y + bar_h - 4.0);
            }
            None => {
                let note = r.note.as_deref().unwrap_or("-");
                let short: String = note.chars().take(90).collect();
                let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" fill=\"#777\">{}</text>", label_w + 4.0, y + bar_h - 4.0, xml_escape(&short));
            }
        }
    }
    let bottom = top + rows.len() as f64 * (bar_h + gap);
    let one = x_of(1.0);
    let _ = writeln!(s, "<line x1=\"{one:.1}\" y1=\"{}\" x2=\"{one:.1}\" y2=\"{bottom}\" stroke=\"#00f\" stroke-dasharray=\"4 3\"/>", top - 4.0);
    let _ = writeln!(s, "<text x=\"{one:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#00f\">1.00</text>", bottom + 14.0);
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{max:.2}</text>", x_of(max), bottom + 14.0);
    let _ = writeln!(s, "<text x=\"{label_w}\" y=\"{}\" text-anchor=\"middle\">0</text>", bottom + 14.0);
    s.push_str("</svg>\n");
    s
}


#[cfg(test)]
mod tests {
    use super::super::stats::{analyze, tests::SAMPLES};
    use super::*;

    #[test]
    fn writers_render_every_row() {
        let rows = analyze(SAMPLES);
        let md = markdown(&rows, "head");
        assert!(md.contains("| map.1g.map | ns/op | 100.0 (100.0–120.0) | 110.0 (90.000–240.0) | 1.10 | 0.90–2.00 |"), "{md}");
        let j: serde_json::Value = serde_json::from_str(&json(&rows, &[("rounds", "3".into())])).unwrap();
        assert_eq!(j["rounds"], "3");
        assert_eq!(j["rows"][0]["ratio"], 1.1);
        assert_eq!(j["rows"][2]["note"], r#"error (rust side, round 1): exit 1: MAP_DMA "x""#);
        assert_eq!(j["rows"].as_array().unwrap().len(), rows.len());
        let svg = svg(&rows, "t <&>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains(">1.00</text>"));
        assert!(svg.contains(">1.10</text>"));
        assert_eq!(svg.matches("<rect").count(), 2, "background and one bar");
        let t = text_table(&rows);
        assert!(t.lines().count() == rows.len() + 1);
        assert!(t.contains("1.10 (0.90–2.00)"));
    }

    /// `results.json` as the hand-written writer produced it before serde
    /// (commit 5a9159c) for the rows of [`SAMPLES`] plus one row of
    /// non-finite numbers. The schema (keys, their order, nesting, `null`
    /// for a missing or non-finite number) must stay this one.
    const RESULTS_BEFORE_SERDE: &str = r#"{
  "clock": "wall",
  "pair": "mtty-rs vs rust",
  "rounds": "3",
  "rows": [
    {"metric":"map.1g.map","unit":"ns/op","c":{"median":100,"min":100,"max":120,"n":3},"rust":{"median":110,"min":90,"max":240,"n":3},"ratio":1.1,"ratio_min":0.9,"ratio_max":2,"note":null},
    {"metric":"pin.single","unit":"","c":null,"rust":null,"ratio":null,"ratio_min":null,"ratio_max":null,"note":"skipped: needs the DMA engine"},
    {"metric":"scale","unit":"","c":null,"rust":null,"ratio":null,"ratio_min":null,"ratio_max":null,"note":"error (rust side, round 1): exit 1: MAP_DMA \"x\""},
    {"metric":"inf","unit":"ns/op","c":{"median":null,"min":0.5,"max":null,"n":2},"rust":null,"ratio":null,"ratio_min":null,"ratio_max":2,"note":null}
  ]
}
"#;

    /// The document with every number as an `f64` (the old writer printed
    /// `100`, serde_json prints `100.0`: the same JSON number).
    fn shape(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Number(n) => format!("{:?}", n.as_f64().unwrap()),
            serde_json::Value::Object(o) => {
                let fields: Vec<String> = o.iter().map(|(k, v)| format!("{k:?}:{}", shape(v))).collect();
                format!("{{{}}}", fields.join(","))
            }
            serde_json::Value::Array(a) => format!("[{}]", a.iter().map(shape).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        }
    }

    #[test]
    fn results_json_schema_is_pinned() {
        let mut rows = analyze(SAMPLES);
        let odd = Stats { median: f64::INFINITY, min: 0.5, max: f64::NAN, n: 2 };
        rows.push(Row {
            metric: "inf".into(),
            unit: "ns/op".into(),
            c: Some(odd),
            rust: None,
            ratio: Some(f64::NAN),
            ratio_range: Some((f64::NEG_INFINITY, 2.0)),
            note: None,
        });
        let meta = [("clock", "wall".to_owned()), ("pair", "mtty-rs vs rust".to_owned()), ("rounds", "3".to_owned())];
        let new: serde_json::Value = serde_json::from_str(&json(&rows, &meta)).unwrap();
        let old: serde_json::Value = serde_json::from_str(RESULTS_BEFORE_SERDE).unwrap();
        assert_eq!(shape(&new), shape(&old));
        let order = keys(RESULTS_BEFORE_SERDE);
        assert_eq!(order.len(), 4 + 4 * 8 + 3 * 4, "meta and rows, 4 rows of 8 fields, 3 stats of 4");
        assert_eq!(keys(&json(&rows, &meta)), order);
    }

    /// Every object key in the order written (`Value` sorts them).
    fn keys(text: &str) -> Vec<String> {
        // Escaped quotes occur only inside values; drop them, then every
        // other piece between quotes is a string, and a key if a `:` follows.
        let text = text.replace("\\\"", "");
        let parts: Vec<&str> = text.split('"').collect();
        (1..parts.len())
            .step_by(2)
            .filter(|&i| parts.get(i + 1).is_some_and(|p| p.trim_start().starts_with(':')))
            .map(|i| parts[i].to_owned())
            .collect()
    }
}
