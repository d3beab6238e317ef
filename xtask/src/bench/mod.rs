//! `cargo xtask bench`: the same workloads against the C and the Rust type1
//! in one VM, alternating rounds; medians, spreads and Rust/C ratios
//! (docs/bench.md).
//!
//! The guest (`vfio-guest bench`, guest-tests/src/bench/) writes raw
//! samples as JSON lines; [`stats`] reads them and computes the statistics,
//! [`render`] writes `target/bench/results.{json,md}` and `chart.svg`,
//! [`growth`] writes `growth.svg` (cost against mapping count and size), and
//! [`splats`] sorts the run's kernel reports by the side that was loaded.

mod growth;
mod render;
pub(crate) mod splats;
mod stats;

use crate::cmd::{note, step};
use crate::paths::Paths;
use crate::test;
use crate::vm::{Accel, Boot};
use crate::AccelArg;
use anyhow::{bail, Context, Result};
use render::{json, markdown, svg, text_table};
use splats::{judge_splats, splats};
use stats::{analyze, Row};
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
    std::fs::write(dir.join("growth.svg"), growth::growth_svg(rows, "vfio type1: cost of MAP_DMA and UNMAP_DMA as mappings grow in number and size"))?;
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
        "written: {}, {}, {}, {} (samples: {})",
        out_dir.join("results.json").display(),
        out_dir.join("results.md").display(),
        out_dir.join("chart.svg").display(),
        out_dir.join("growth.svg").display(),
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
    use super::stats::tests::SAMPLES;
    use super::*;

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
}
