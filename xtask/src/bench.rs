//! `cargo xtask bench`: the same workloads against the C and the Rust type1
//! in one VM, alternating rounds; medians, spreads and Rust/C ratios
//! (docs/bench.md).
//!
//! The guest (`vfio-guest bench`, guest-tests/src/bench.rs) writes raw
//! samples as JSON lines; this module reads them, computes the statistics
//! and writes `target/bench/results.{json,md}` and `chart.svg`.

use crate::cmd::{note, step};
use crate::paths::Paths;
use crate::report;
use crate::test;
use crate::vm::{Accel, Boot};
use crate::AccelArg;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which pair of backends is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PairArg {
    /// C type1 + Rust mtty against Rust type1 + Rust mtty: every workload
    /// (the DMA-engine ones need the Rust mtty; only type1 differs).
    Mtty,
    /// C type1 + C mtty against Rust type1 + C mtty: map/unmap workloads
    /// only (the C mtty sample has no DMA engine).
    Sample,
}

impl PairArg {
    fn guest_list(self) -> &'static str {
        match self {
            PairArg::Mtty => "mtty-rs,rust",
            PairArg::Sample => "c,type1-rs",
        }
    }
}

/// What the guest's clock counts while the workloads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockArg {
    /// Wall-clock time (under TCG: the time QEMU takes to emulate the code).
    Wall,
    /// Guest instructions: QEMU's instruction counter drives the guest
    /// clock (`-icount shift=0`), one nanosecond per instruction. Exact and
    /// repeatable whatever else the host is doing; TCG only.
    Icount,
}

/// Options of `cargo xtask bench`.
pub struct BenchOpts {
    pub clock: ClockArg,
    pub rounds: u32,
    pub filter: Option<String>,
    pub pair: PairArg,
    pub scale: f64,
    pub timeout_min: u64,
    pub accel: Option<AccelArg>,
    /// Re-render from an existing samples file instead of booting.
    pub from: Option<PathBuf>,
    /// Profile these workloads with `perf` instead of timing rounds.
    pub perf: Option<String>,
    /// The kernel measured on.
    pub kernel: crate::kernel::Flavor,
}

/// One line of `samples.jsonl`: a flat object of strings and numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum JVal {
    Str(String),
    Num(f64),
}

/// Parses one flat JSON object (`{"k": "v", "n": 1.5}`); `None` if malformed.
pub fn parse_flat_json(line: &str) -> Option<BTreeMap<String, JVal>> {
    let mut out = BTreeMap::new();
    let s = line.trim();
    let mut it = s.strip_prefix('{')?.strip_suffix('}')?.chars().peekable();
    fn skip_ws(it: &mut std::iter::Peekable<std::str::Chars>) {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
    }
    fn string(it: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
        if it.next()? != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match it.next()? {
                '"' => return Some(s),
                '\\' => match it.next()? {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| it.next()).collect();
                        s.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    c => s.push(c),
                },
                c => s.push(c),
            }
        }
    }
    loop {
        skip_ws(&mut it);
        if it.peek().is_none() {
            break;
        }
        let key = string(&mut it)?;
        skip_ws(&mut it);
        if it.next()? != ':' {
            return None;
        }
        skip_ws(&mut it);
        let val = if it.peek() == Some(&'"') {
            JVal::Str(string(&mut it)?)
        } else {
            let mut n = String::new();
            while it.peek().is_some_and(|c| *c != ',' && !c.is_whitespace()) {
                n.push(it.next()?);
            }
            JVal::Num(n.parse().ok()?)
        };
        out.insert(key, val);
        skip_ws(&mut it);
        match it.next() {
            None => break,
            Some(',') => {}
            Some(_) => return None,
        }
    }
    Some(out)
}

/// Median, minimum and maximum of a sample set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stats { median, min: v[0], max: v[n - 1], n })
    }
}

/// One row of the result table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    pub c: Option<Stats>,
    pub rust: Option<Stats>,
    /// Rust median / C median.
    pub ratio: Option<f64>,
    /// Smallest and largest Rust/C ratio of the same round.
    pub ratio_range: Option<(f64, f64)>,
    /// Why there is no ratio (skip, error, missing samples).
    pub note: Option<String>,
}

/// The statistics of a samples file: one row per metric, in first-seen
/// order, then skipped/failed workloads.
pub fn analyze(samples: &str) -> Vec<Row> {
    // metric -> (unit, side -> round -> value)
    let mut order: Vec<String> = Vec::new();
    let mut data: BTreeMap<String, (String, BTreeMap<String, BTreeMap<i64, f64>>)> = BTreeMap::new();
    let mut notes: Vec<(String, String)> = Vec::new();
    for line in samples.lines().filter(|l| !l.trim().is_empty()) {
        let Some(o) = parse_flat_json(line) else { continue };
        let s = |k: &str| match o.get(k) {
            Some(JVal::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let round = match o.get("round") {
            Some(JVal::Num(n)) => *n as i64,
            _ => 0,
        };
        let side = s("side").unwrap_or_default();
        if let (Some(metric), Some(JVal::Num(v))) = (s("metric"), o.get("value")) {
            if !data.contains_key(&metric) {
                order.push(metric.clone());
            }
            let e = data.entry(metric).or_insert_with(|| (s("unit").unwrap_or_default(), BTreeMap::new()));
            e.1.entry(side).or_default().insert(round, *v);
            continue;
        }
        let workload = s("workload").unwrap_or_default();
        let why = if let Some(err) = s("error") {
            format!("error ({side} side, round {round}): {err}")
        } else if let Some(skip) = s("skip") {
            format!("skipped: {skip}")
        } else {
            continue;
        };
        if !notes.iter().any(|(w, _)| *w == workload) {
            notes.push((workload, why));
        }
    }
    let mut rows = Vec::new();
    for metric in order {
        let (unit, sides) = &data[&metric];
        let vals = |side: &str| -> Vec<f64> { sides.get(side).map(|m| m.values().copied().collect()).unwrap_or_default() };
        let c = Stats::of(&vals("c"));
        let rust = Stats::of(&vals("rust"));
        let ratio = match (c, rust) {
            (Some(c), Some(r)) if c.median > 0.0 => Some(r.median / c.median),
            _ => None,
        };
        let per_round: Vec<f64> = match (sides.get("c"), sides.get("rust")) {
            (Some(cm), Some(rm)) => cm
                .iter()
                .filter_map(|(round, cv)| rm.get(round).filter(|_| *cv > 0.0).map(|rv| rv / cv))
                .collect(),
            _ => vec![],
        };
        let ratio_range = Stats::of(&per_round).map(|s| (s.min, s.max));
        let note = if ratio.is_none() { Some("missing samples on one side".to_owned()) } else { None };
        rows.push(Row { metric, unit: unit.clone(), c, rust, ratio, ratio_range, note });
    }
    for (workload, why) in notes {
        // A workload that produced some samples already has rows.
        if rows.iter().any(|r| r.metric.starts_with(&workload)) && why.starts_with("skipped") {
            continue;
        }
        rows.push(Row { metric: workload, unit: String::new(), c: None, rust: None, ratio: None, ratio_range: None, note: Some(why) });
    }
    rows
}

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

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { "null".into() }
}

fn json_stats(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{{\"median\":{},\"min\":{},\"max\":{},\"n\":{}}}",
            json_num(s.median),
            json_num(s.min),
            json_num(s.max),
            s.n
        ),
        None => "null".into(),
    }
}

/// `results.json`: the run's context and every row.
pub fn json(rows: &[Row], meta: &[(&str, String)]) -> String {
    let mut s = String::from("{\n");
    for (k, v) in meta {
        let _ = writeln!(s, "  {}: {},", json_str(k), json_str(v));
    }
    s.push_str("  \"rows\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"metric\":{},\"unit\":{},\"c\":{},\"rust\":{},\"ratio\":{},\"ratio_min\":{},\"ratio_max\":{},\"note\":{}}}",
            json_str(&r.metric),
            json_str(&r.unit),
            json_stats(&r.c),
            json_stats(&r.rust),
            r.ratio.map(json_num).unwrap_or_else(|| "null".into()),
            r.ratio_range.map(|x| json_num(x.0)).unwrap_or_else(|| "null".into()),
            r.ratio_range.map(|x| json_num(x.1)).unwrap_or_else(|| "null".into()),
            r.note.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
        );
        s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

fn xml_escape(s: &str) -> String {
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

/// The kernel reports in the console and the guest's dumps, deduplicated.
fn splats(console: &str, results: &Path) -> Vec<report::Splat> {
    report::run_splats(console, results)
}

/// The `[module]` names in the 60 console lines from `line` on: which
/// modules a report's stack traces go through.
pub fn modules_in_report(console: &str, line: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(start) = console.lines().position(|l| l.trim() == line.trim()) else { return out };
    for l in console.lines().skip(start).take(60) {
        let Some(msg) = report::kernel_message(l) else { continue };
        if let (Some(a), Some(b)) = (msg.rfind('['), msg.rfind(']')) {
            let m = &msg[a + 1..b.max(a + 1)];
            if m.len() > 1 && m.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') && !out.iter().any(|o| o == m) {
                out.push(m.to_owned());
            }
        }
    }
    out
}

/// Prefix of the side markers the guest writes to the kernel log
/// (guest-tests/src/bench.rs).
const MARK: &str = "vfio-rs-bench:";

/// Which side's modules were loaded when the console line `line` was
/// printed: the side named by the last marker before it, as
/// `(round, side, backend)`. `None` before the first marker (boot).
pub fn side_at(console: &str, line: &str) -> Option<(u32, String, String)> {
    let end = console.lines().position(|l| l.trim() == line.trim())?;
    let mut last = None;
    for l in console.lines().take(end) {
        let Some(msg) = report::kernel_message(l) else { continue };
        let Some(rest) = msg.strip_prefix(MARK) else { continue };
        // " begin round N side S backend B" or " end ..."
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let [_, "round", n, "side", side, "backend", b] = f[..] {
            last = Some((n.parse().unwrap_or(0), side.to_owned(), b.to_owned()));
        }
    }
    last
}

/// Whether a report is the C type1's own lock inversion (docs/type1.md): a
/// lockdep circular-dependency report on the C side of the `mtty` pair
/// (C `vfio_iommu_type1` + `mtty_rs`) whose lock chain runs through the C
/// module's `device_list_lock`. Everything else is a failure.
pub fn is_known_c_inversion(console: &str, splat: &report::Splat, side: Option<&(u32, String, String)>) -> bool {
    if splat.kind != "lockdep" || !splat.line.contains("possible circular locking dependency") {
        return false;
    }
    let Some((_, s, backend)) = side else { return false };
    if s != "c" || backend != "mtty-rs" {
        return false;
    }
    let Some(start) = console.lines().position(|l| l.trim() == splat.line.trim()) else { return false };
    let text: Vec<&str> = console.lines().skip(start).take(80).collect();
    let text = text.join("\n");
    text.contains("&iommu->device_list_lock") && text.contains("[vfio_iommu_type1]") && !text.contains("[vfio_iommu_type1_rs]")
}

/// Sorts the run's kernel reports into the C reference's known inversion
/// (reported, not a failure) and everything else (failures); prints both.
/// Returns whether no failure was found.
fn judge_splats(console: &str, found: &[report::Splat], log: &Path) -> bool {
    let mut failures = 0usize;
    let mut first_lockdep: Option<usize> = None;
    for s in found {
        let side = side_at(console, &s.line);
        let known = is_known_c_inversion(console, s, side.as_ref());
        if s.kind == "lockdep" && first_lockdep.is_none() {
            first_lockdep = console.lines().position(|l| l.trim() == s.line.trim());
        }
        let at = match &side {
            Some((r, side, b)) => format!("round {r}, {side} side ({b})"),
            None => "before the first round".to_owned(),
        };
        if known {
            println!("known C-reference report ({at}), not a failure of our modules: [{}] {}", s.kind, s.line);
            println!("         the C vfio_iommu_type1's device_list_lock/iommu->lock inversion (docs/type1.md, docs/bench.md)");
        } else {
            failures += 1;
            println!("FAIL kernel.log_clean: [{}] {} ({at}); full log: {}", s.kind, s.line, log.display());
            let mods = modules_in_report(console, &s.line);
            if !mods.is_empty() {
                println!("         modules in the report: {}", mods.join(", "));
            }
        }
    }
    if found.is_empty() {
        println!("kernel log clean (no warnings, lockdep, KASAN, kmemleak or other reports)");
    }
    if let Some(pos) = first_lockdep {
        // Lockdep stops checking after its first report: say which Rust
        // windows it still covered.
        let mut live = Vec::new();
        for (i, l) in console.lines().enumerate().take(pos) {
            if let Some(rest) = report::kernel_message(l).and_then(|m| m.strip_prefix(MARK)) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let ["end", "round", n, "side", "rust", ..] = f[..] {
                    if i < pos {
                        live.push(if n == "0" { "0 (warm-up)".to_owned() } else { n.to_owned() });
                    }
                }
            }
        }
        note(&format!(
            "lockdep stops after its first report: it checked the Rust side in round(s) {} (KASAN, kmemleak and WARN checks stay on for the whole run; docs/bench.md)",
            if live.is_empty() { "none".to_owned() } else { live.join(", ") }
        ));
    }
    failures == 0
}

/// The first line of a samples file measured with `--clock icount`.
const ICOUNT_MARK: &str = r#"{"clock":"icount"}"#;

/// The unit of a metric measured on the instruction counter: the guest's
/// nanoseconds are instructions (`ns/op` -> `insn/op`, `us/copy` ->
/// `kinsn/copy`).
fn instruction_unit(unit: &str) -> String {
    if let Some(per) = unit.strip_prefix("ns/") {
        format!("insn/{per}")
    } else if let Some(per) = unit.strip_prefix("us/") {
        format!("kinsn/{per}")
    } else {
        unit.to_owned()
    }
}

/// Writes the three result files; returns the Markdown.
fn write_outputs(dir: &Path, rows: &[Row], meta: &[(&str, String)]) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let icount = meta.iter().any(|(k, v)| *k == "clock" && v.starts_with("icount"));
    let header = format!(
        "Rust/C {} ratios ({}): below 1.00 the Rust type1 is faster. {}",
        if icount { "instruction-count" } else { "time" },
        meta.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        if icount { "Guest instructions per operation, counted by QEMU." } else { "TCG timings; compare ratios, not absolute times." }
    );
    let md = markdown(rows, &header);
    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(dir.join("results.json"), json(rows, meta))?;
    std::fs::write(dir.join("chart.svg"), svg(rows, "vfio type1: Rust / C"))?;
    Ok(md)
}

/// Copies the guest's `perf-*.txt` reports to `dest` and prints the head of
/// each flat profile; returns how many reports there were.
fn copy_profiles(results: &Path, dest: &Path) -> Result<usize> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(results)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("perf-") && n.ends_with(".txt")))
        .collect();
    names.sort();
    for p in &names {
        let name = p.file_name().unwrap_or_default();
        std::fs::copy(p, dest.join(name))?;
        if name.to_string_lossy().ends_with(".self.txt") {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            println!("\n{} (top of the flat profile):", name.to_string_lossy());
            for l in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).take(25) {
                println!("  {l}");
            }
        }
    }
    if names.is_empty() {
        println!("no perf reports were written: see the console above (is `perf` installed? cargo xtask setup adds linux-perf)");
    } else {
        note(&format!("{} perf report(s) in {}", names.len(), dest.display()));
    }
    Ok(names.len())
}

/// `cargo xtask bench`. Returns whether every workload ran and the kernel log is clean.
pub fn bench(paths: &Paths, o: &BenchOpts) -> Result<bool> {
    let out_dir = paths.target().join("bench");
    let (samples, clean, meta_extra) = if let Some(from) = &o.from {
        step(&format!("bench: re-rendering {} (no VM)", from.display()));
        let s = std::fs::read_to_string(from).with_context(|| format!("cannot read {}: pass a samples.jsonl of an earlier run", from.display()))?;
        (s, true, "re-rendered".to_owned())
    } else {
        if o.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let p = test::prepare(paths, o.accel, o.kernel)?;
        let results = paths.vm_results().join("bench");
        let _ = std::fs::remove_dir_all(&results);
        std::fs::create_dir_all(&results)?;
        let mut exec = format!(
            "{} bench --results {} {} --backends {} --rounds {} --scale {}",
            p.guest.display(),
            results.display(),
            test::guest_args(&p),
            o.pair.guest_list(),
            o.rounds,
            o.scale
        );
        if let Some(f) = o.perf.as_ref().or(o.filter.as_ref()) {
            exec.push_str(&format!(" --filter '{}'", f.replace('\'', "")));
        }
        if o.perf.is_some() {
            exec.push_str(" --perf");
            if o.clock == ClockArg::Icount {
                // The guest's second is 10^9 instructions: sample every
                // ~50000 instructions, ten times as often as on the wall clock.
                exec.push_str(" --perf-freq 20011");
            }
        }
        step(&format!(
            "VM: booting ({:?}); {} round(s) of {} then {} (alternating order); progress below",
            p.accel,
            o.rounds,
            o.pair.guest_list().split(',').next().unwrap_or(""),
            o.pair.guest_list().split(',').nth(1).unwrap_or("")
        ));
        let log = paths.vm_results().join("bench-console.log");
        let icount = o.clock == ClockArg::Icount;
        if icount && p.accel != Accel::Tcg {
            bail!("--clock icount needs TCG (QEMU counts instructions only when it emulates them): add --accel tcg");
        }
        let boot = Boot {
            accel: p.accel,
            exec,
            results: Some(results.clone()),
            timeout: Duration::from_secs(o.timeout_min * 60),
            interactive: false,
            echo: true,
            icount,
        };
        let run = boot.run(paths, &p.kernel, &log)?;
        let finished = run.console.contains("VFIO-RS-BENCH-DONE");
        if !finished {
            let why = if run.timed_out { format!("the VM timed out after {} min (raise --timeout-min or lower --scale)", o.timeout_min) } else { "the guest did not finish (kernel panic or crash?)".into() };
            println!("FAIL bench: {why}; console log: {}", log.display());
        }
        let found = splats(&run.console, &results);
        let log_clean = judge_splats(&run.console, &found, &log);
        std::fs::create_dir_all(&out_dir)?;
        if o.perf.is_some() {
            return copy_profiles(&results, &out_dir.join("perf")).map(|n| n > 0 && finished && log_clean);
        }
        let samples_path = results.join("samples.jsonl");
        let mut s = std::fs::read_to_string(&samples_path).unwrap_or_default();
        if icount {
            // Recorded with the samples, so that `--from` renders the units right.
            s.insert_str(0, &format!("{ICOUNT_MARK}\n"));
        }
        std::fs::write(out_dir.join("samples.jsonl"), &s)?;
        (s, log_clean && finished, format!("{:?}", p.accel))
    };
    let icount = samples.lines().any(|l| l.trim() == ICOUNT_MARK);
    let mut rows = analyze(&samples);
    if icount {
        for r in &mut rows {
            r.unit = instruction_unit(&r.unit);
        }
    }
    if rows.iter().all(|r| r.ratio.is_none()) {
        println!("no samples: nothing to compare (see the output above for why)");
    }
    let meta = [
        ("clock", if icount { "icount (guest instructions)".to_owned() } else { "wall".to_owned() }),
        ("pair", o.pair.guest_list().replace(',', " vs ")),
        ("rounds", o.rounds.to_string()),
        ("scale", o.scale.to_string()),
        ("accel", meta_extra),
        ("kernel", format!("{:?}", o.kernel).to_lowercase()),
    ];
    write_outputs(&out_dir, &rows, &meta)?;
    println!("\n{}", text_table(&rows));
    note(&format!(
        "written: {}, {}, {} (samples: {})",
        out_dir.join("results.json").display(),
        out_dir.join("results.md").display(),
        out_dir.join("chart.svg").display(),
        out_dir.join("samples.jsonl").display()
    ));
    let errors = rows.iter().any(|r| r.note.as_deref().is_some_and(|n| n.starts_with("error")));
    if errors {
        println!("some workloads failed: see the rows marked `error`");
    }
    Ok(clean && !errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = r#"{"round":1,"backend":"mtty-rs","side":"c","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":100.0}
{"round":1,"backend":"rust","side":"rust","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":110}
{"round":2,"backend":"rust","side":"rust","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":90}
{"round":2,"backend":"mtty-rs","side":"c","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":100}
{"round":3,"backend":"mtty-rs","side":"c","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":120}
{"round":3,"backend":"rust","side":"rust","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":240}
{"round":1,"backend":"c","side":"c","workload":"pin.single","skip":"needs the DMA engine"}
{"round":1,"backend":"rust","side":"rust","workload":"scale","error":"exit 1: MAP_DMA \"x\""}
"#;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[3.0, 1.0, 2.0]), Some(Stats { median: 2.0, min: 1.0, max: 3.0, n: 3 }));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn report_modules_are_listed() {
        let console = "[  1.000000] WARNING: possible circular locking dependency detected\n\
[  1.000100]        vfio_iommu_type1_unpin_pages+0x55/0x210 [vfio_iommu_type1]\n\
[  1.000200]        _RNv4mtty9dma_unmap+0x5a7/0x6b0 [mtty_rs]\n\
[  1.000300]        __x64_sys_ioctl+0x1d2c/0x2410\n\
[  1.000400] ffff888109991130 (&iommu->device_list_lock){+.+.}-{3:3}, at: f+0x1/0x2 [vfio_iommu_type1]\n";
        let first = console.lines().next().unwrap();
        assert_eq!(modules_in_report(console, first), ["vfio_iommu_type1", "mtty_rs"]);
    }

    #[test]
    fn reports_are_attributed_to_sides() {
        let console = "[  1.0] vfio-rs-bench: begin round 1 side rust backend rust\n\
[  2.0] vfio-rs-bench: end round 1 side rust backend rust\n\
[  3.0] vfio-rs-bench: begin round 1 side c backend mtty-rs\n\
[  4.000001] WARNING: possible circular locking dependency detected\n\
[  4.000002] vfio-guest/401 is trying to acquire lock:\n\
[  4.000003] ffff88800a2b1040 (&iommu->lock){+.+.}-{3:3}, at: vfio_iommu_type1_unpin_pages+0x5e/0x1f0 [vfio_iommu_type1]\n\
[  4.000004] ffff888109991130 (&iommu->device_list_lock){+.+.}-{3:3}, at: f+0x1/0x2 [vfio_iommu_type1]\n\
[  5.0] WARNING: CPU: 0 PID: 1 at x.rs:1 f+0x1/0x2 [mtty_rs]\n";
        let found = report::find_splats(console);
        assert_eq!(found.len(), 2);
        let side = side_at(console, &found[0].line);
        assert_eq!(side, Some((1, "c".to_owned(), "mtty-rs".to_owned())));
        assert!(is_known_c_inversion(console, &found[0], side.as_ref()));
        // The same report on the Rust side, or any other report, is a failure.
        let rust = Some((1, "rust".to_owned(), "rust".to_owned()));
        assert!(!is_known_c_inversion(console, &found[0], rust.as_ref()));
        assert!(!is_known_c_inversion(console, &found[1], side.as_ref()));
        assert_eq!(side_at("[  1.0] WARNING: x\n", "[  1.0] WARNING: x"), None);
    }

    #[test]
    fn icount_units_are_instructions() {
        assert_eq!(instruction_unit("ns/op"), "insn/op");
        assert_eq!(instruction_unit("ns/desc"), "insn/desc");
        assert_eq!(instruction_unit("us/copy"), "kinsn/copy");
        assert_eq!(instruction_unit("count"), "count");
        // The marker line carries no metric, so the statistics ignore it.
        let marked = format!("{ICOUNT_MARK}\n{SAMPLES}");
        assert_eq!(analyze(&marked), analyze(SAMPLES));
    }

    #[test]
    fn flat_json_lines_parse() {
        let o = parse_flat_json(r#"{"a":"x\"y","n":-1.5e3, "u":"\u00e9"}"#).unwrap();
        assert_eq!(o["a"], JVal::Str("x\"y".into()));
        assert_eq!(o["n"], JVal::Num(-1500.0));
        assert_eq!(o["u"], JVal::Str("é".into()));
        assert!(parse_flat_json("not json").is_none());
        assert!(parse_flat_json(r#"{"a" 1}"#).is_none());
    }

    #[test]
    fn ratios_pair_rounds() {
        let rows = analyze(SAMPLES);
        let r = &rows[0];
        assert_eq!(r.metric, "map.1g.map");
        assert_eq!(r.c.unwrap().median, 100.0);
        assert_eq!(r.rust.unwrap().median, 110.0);
        assert!((r.ratio.unwrap() - 1.1).abs() < 1e-9);
        // Per round: 1.1, 0.9, 2.0.
        let (lo, hi) = r.ratio_range.unwrap();
        assert!((lo - 0.9).abs() < 1e-9 && (hi - 2.0).abs() < 1e-9);
        let names: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, ["map.1g.map", "pin.single", "scale"]);
        assert!(rows[1].note.as_deref().unwrap().starts_with("skipped"));
        assert!(rows[2].note.as_deref().unwrap().contains("error (rust side, round 1)"));
    }

    #[test]
    fn writers_render_every_row() {
        let rows = analyze(SAMPLES);
        let md = markdown(&rows, "head");
        assert!(md.contains("| map.1g.map | ns/op | 100.0 (100.0–120.0) | 110.0 (90.000–240.0) | 1.10 | 0.90–2.00 |"), "{md}");
        let j = json(&rows, &[("rounds", "3".into())]);
        assert!(j.contains("\"rounds\": \"3\""));
        assert!(j.contains("\"ratio\":1.1"));
        assert!(j.contains(r#""note":"error (rust side, round 1): exit 1: MAP_DMA \"x\"""#), "{j}");
        // Every row object parses back as JSON-ish flat text up to its nested objects.
        assert_eq!(j.matches("\"metric\":").count(), rows.len());
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
}
