//! The statistics of a bench run: the guest's raw samples (`samples.jsonl`)
//! in, one [`Row`] per metric out (medians, spreads, Rust/C ratios).

use serde::Deserialize;
use std::collections::BTreeMap;

/// One line of `samples.jsonl`, as the guest writes it
/// (guest-tests/src/bench/runner.rs): a sample (`metric`, `unit`, `value`)
/// or a workload that was skipped (`skip`) or failed (`error`). Unknown
/// keys are ignored, and a line with none of these (such as the icount
/// marker) counts for nothing.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct SampleLine {
    #[serde(default)]
    pub round: i64,
    #[serde(default)]
    pub side: String,
    #[serde(default)]
    pub workload: String,
    pub metric: Option<String>,
    pub unit: Option<String>,
    pub value: Option<f64>,
    pub error: Option<String>,
    pub skip: Option<String>,
}

/// One metric's values: side (`c`, `rust`) -> round -> value.
type SideRounds = BTreeMap<String, BTreeMap<i64, f64>>;

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
    let mut data: BTreeMap<String, (String, SideRounds)> = BTreeMap::new();
    let mut notes: Vec<(String, String)> = Vec::new();
    for line in samples.lines().filter(|l| !l.trim().is_empty()) {
        // Lines that are not one flat object (a truncated last line) are skipped.
        let Ok(o) = serde_json::from_str::<SampleLine>(line) else { continue };
        let (round, side) = (o.round, o.side);
        if let (Some(metric), Some(v)) = (o.metric, o.value) {
            if !data.contains_key(&metric) {
                order.push(metric.clone());
            }
            let e = data.entry(metric).or_insert_with(|| (o.unit.unwrap_or_default(), BTreeMap::new()));
            e.1.entry(side).or_default().insert(round, v);
            continue;
        }
        let workload = o.workload;
        let why = if let Some(err) = o.error {
            format!("error ({side} side, round {round}): {err}")
        } else if let Some(skip) = o.skip {
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


#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Three rounds of one metric on both sides, a skip and an error.
    pub const SAMPLES: &str = r#"{"round":1,"backend":"mtty-rs","side":"c","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":100.0}
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
    fn sample_lines_parse() {
        let o: SampleLine = serde_json::from_str(r#"{"round":2,"side":"c","metric":"a\"b","unit":"\u00e9","value":-1.5e3,"extra":[1]}"#).unwrap();
        assert_eq!((o.round, o.side.as_str(), o.metric.as_deref(), o.unit.as_deref(), o.value), (2, "c", Some("a\"b"), Some("é"), Some(-1500.0)));
        // The icount marker is a line with no sample, skip or error.
        assert_eq!(serde_json::from_str::<SampleLine>(r#"{"clock":"icount"}"#).unwrap(), SampleLine::default());
        assert!(serde_json::from_str::<SampleLine>("not json").is_err());
        // A truncated last line is skipped, not fatal.
        assert_eq!(analyze(&format!("{SAMPLES}{{\"round\":4,\"side\"")), analyze(SAMPLES));
    }
}
