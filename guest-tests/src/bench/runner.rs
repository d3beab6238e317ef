//! The rounds of `vfio-guest bench`: load a side's modules, run each
//! selected workload in its own process, append its samples to
//! `samples.jsonl`, unload; markers in the kernel log say which side was
//! loaded when (xtask/src/bench/splats.rs reads them).

use super::workloads::{Workload, WORKLOADS};
use crate::harness::{self, Backend, RunConfig};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `vfio-guest bench`.
pub struct BenchConfig {
    pub run: RunConfig,
    /// (C side, Rust side).
    pub pair: (Backend, Backend),
    pub rounds: u32,
    pub scale: f64,
    pub timeout: Duration,
    /// `perf record -F`: samples per second of the guest's clock.
    pub perf_freq: u32,
}


/// One line of `samples.jsonl` (read by xtask/src/bench/stats.rs): which
/// round, backend (absent in the warm-up round 0), side and workload, then
/// a sample, a skip or an error.
#[derive(Serialize)]
struct SampleLine<'a> {
    round: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'a str>,
    side: &'a str,
    workload: &'a str,
    #[serde(flatten)]
    what: What<'a>,
}

/// Where a line of `samples.jsonl` comes from: its round and side.
#[derive(Clone, Copy)]
struct Head<'a> {
    round: u32,
    backend: Option<&'a str>,
    side: &'a str,
}

impl<'a> Head<'a> {
    fn line<'b>(self, workload: &'b str, what: What<'b>) -> SampleLine<'b>
    where
        'a: 'b,
    {
        SampleLine { round: self.round, backend: self.backend, side: self.side, workload, what }
    }
}

/// What a line of `samples.jsonl` says about its workload; its fields sit
/// beside the others in the same object.
#[derive(Serialize)]
#[serde(untagged)]
enum What<'a> {
    Sample { metric: &'a str, unit: &'a str, value: f64 },
    Skip { skip: &'a str },
    Error { error: &'a str },
}

/// `samples.jsonl`, written a line at a time so that a crash loses no
/// finished workload.
struct Samples(std::fs::File);

impl Samples {
    fn write(&mut self, line: &SampleLine) {
        let mut text = serde_json::to_vec(line).expect("plain data serializes");
        text.push(b'\n');
        let _ = self.0.write_all(&text);
    }
}

/// Runs the rounds; returns whether every workload ran (skips count as run).
pub fn run(cfg: &BenchConfig) -> bool {
    let dir = &cfg.run.results;
    let _ = std::fs::create_dir_all(dir);
    let mut out = Samples(std::fs::File::create(dir.join("samples.jsonl")).expect("results dir must be writable"));
    harness_debugfs_clear();
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| cfg.run.filter.as_deref().is_none_or(|f| f.split(',').any(|f| w.name.contains(f))))
        .collect();
    println!("bench: {} workload(s), {} round(s), C side {}, Rust side {}", selected.len(), cfg.rounds, cfg.pair.0.name(), cfg.pair.1.name());
    let mut ok = true;
    let start = Instant::now();
    // Warm-up (round 0, untimed, at a twentieth of the iterations): every
    // selected workload on the Rust side, then on the C side. Lockdep turns
    // itself off after its first report, and the C type1 reports its known
    // lock inversion (docs/type1.md) on its first pinned unmap. So the Rust
    // modules run every workload under a live lockdep first, and the C
    // side's report (if any) comes before the timed rounds: every timed
    // round then runs with the same lockdep state on both sides.
    for (side, b) in [("rust", cfg.pair.1), ("c", cfg.pair.0)] {
        println!("bench: warm-up (untimed) backend {} ({side} side), {:.0} s elapsed", b.name(), start.elapsed().as_secs_f64());
        kmsg(&format!("{MARK} begin round 0 side {side} backend {}", b.name()));
        if let Err(err) = harness::load_backend(&cfg.run, b) {
            out.write(&Head { round: 0, backend: None, side }.line("modules.load", What::Error { error: &err }));
            println!("bench: loading {} failed: {err}", b.name());
            let _ = harness::unload_backend(&cfg.run, b);
            return false;
        }
        for w in selected.iter().filter(|w| !w.needs_engine || b.rust_mtty) {
            let (code, _, stderr) = spawn_one(w.name, b, cfg, cfg.scale / 20.0);
            if !matches!(code, Some(0)) && code != Some(crate::EXIT_SKIP) {
                ok = false;
                let why = format!("warm-up: exit {code:?}: {}", stderr.trim().lines().last().unwrap_or(""));
                out.write(&Head { round: 0, backend: None, side }.line(w.name, What::Error { error: &why }));
                println!("bench:   {} FAILED: {why}", w.name);
            }
        }
        if let Err(err) = harness::unload_backend(&cfg.run, b) {
            println!("bench: unloading {} failed: {err}", b.name());
            return false;
        }
        kmsg(&format!("{MARK} end round 0 side {side} backend {}", b.name()));
    }
    for round in 1..=cfg.rounds {
        // The side that goes first alternates, so drift in the VM spreads
        // over both.
        let order = if round % 2 == 1 { [cfg.pair.1, cfg.pair.0] } else { [cfg.pair.0, cfg.pair.1] };
        for b in order {
            let side = if b == cfg.pair.0 { "c" } else { "rust" };
            let head = Head { round, backend: Some(b.name()), side };
            println!("bench: round {round}/{} backend {} ({side} side), {:.0} s elapsed", cfg.rounds, b.name(), start.elapsed().as_secs_f64());
            // Markers in the kernel log: the host attributes every kernel
            // report to the side (and modules) that were loaded when it fired.
            kmsg(&format!("{MARK} begin round {round} side {side} backend {}", b.name()));
            if let Err(err) = harness::load_backend(&cfg.run, b) {
                out.write(&head.line("modules.load", What::Error { error: &err }));
                println!("bench: loading {} failed: {err}", b.name());
                let _ = harness::unload_backend(&cfg.run, b);
                return false;
            }
            for w in &selected {
                if w.needs_engine && !b.rust_mtty {
                    let why = "needs the DMA engine of mtty_rs: pair mtty-rs with rust";
                    out.write(&head.line(w.name, What::Skip { skip: why }));
                    println!("bench:   {} skipped: {why}", w.name);
                    continue;
                }
                let t = Instant::now();
                let (code, stdout, stderr) = spawn_one(w.name, b, cfg, cfg.scale);
                let mut got = Vec::new();
                for line in stdout.lines() {
                    let mut f = line.split_whitespace();
                    if f.next() != Some("SAMPLE") {
                        continue;
                    }
                    let (Some(metric), Some(unit), Some(v)) = (f.next(), f.next(), f.next()) else { continue };
                    let Ok(value) = v.parse() else { continue };
                    out.write(&head.line(w.name, What::Sample { metric, unit, value }));
                    got.push(format!("{metric}={v}{}", unit.split('/').next().unwrap_or("")));
                }
                match code {
                    Some(0) => println!("bench:   {} ({:.1} s): {}", w.name, t.elapsed().as_secs_f64(), summarize(&got)),
                    Some(c) if c == crate::EXIT_SKIP => {
                        let why = stdout.lines().last().unwrap_or("").trim_start_matches("SKIP: ").to_owned();
                        out.write(&head.line(w.name, What::Skip { skip: &why }));
                        println!("bench:   {} skipped: {why}", w.name);
                    }
                    other => {
                        ok = false;
                        let why = match other {
                            None => format!("timed out after {} s", cfg.timeout.as_secs()),
                            Some(c) => format!("exit {c}: {}", stderr.trim().lines().last().unwrap_or("")),
                        };
                        out.write(&head.line(w.name, What::Error { error: &why }));
                        println!("bench:   {} FAILED: {why}", w.name);
                    }
                }
            }
            if let Err(err) = harness::unload_backend(&cfg.run, b) {
                out.write(&head.line("modules.unload", What::Error { error: &err }));
                println!("bench: unloading {} failed: {err}", b.name());
                return false;
            }
            kmsg(&format!("{MARK} end round {round} side {side} backend {}", b.name()));
        }
    }
    ok
}

/// Prefix of the side markers written to the kernel log (xtask/src/bench/splats.rs
/// looks for it).
pub(super) const MARK: &str = "vfio-rs-bench:";

/// Writes one line to the kernel log.
pub(super) fn kmsg(line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(line.as_bytes());
    }
}

fn summarize(got: &[String]) -> String {
    if got.len() <= 4 {
        got.join(" ")
    } else {
        format!("{} ... ({} metrics)", got[..3].join(" "), got.len())
    }
}

pub(super) fn harness_debugfs_clear() {
    if !Path::new("/sys/kernel/debug/kmemleak").exists() {
        let _ = Command::new("mount").args(["-t", "debugfs", "none", "/sys/kernel/debug"]).status();
    }
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "clear");
    // kmemleak's periodic scan walks all memory (minutes under TCG) and
    // would land in some workloads' timings; `finish` scans explicitly.
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "scan=off");
}

/// Runs one workload in its own process; (exit code or None on timeout, stdout, stderr).
fn spawn_one(name: &str, b: Backend, cfg: &BenchConfig, scale: f64) -> (Option<i32>, String, String) {
    let scale = scale.to_string();
    match harness::run_self(&["bench-one", name, "--backend", b.name(), "--scale", &scale], cfg.timeout) {
        Ok(r) => {
            // A process killed by a signal has no exit code: say which
            // signal, as the last line that the failure report quotes (a
            // guest binary replaced under a running bench ended every
            // later workload this way, without a word).
            let mut stderr = r.stderr;
            let code = r.status.map(|s| {
                if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&s) {
                    stderr.push_str(&format!("\nkilled by signal {sig}"));
                }
                s.code().unwrap_or(1)
            });
            (code, r.stdout, stderr)
        }
        Err(err) => (Some(1), String::new(), format!("cannot start: {err}")),
    }
}

/// The end of the run: kmemleak scan and dmesg, as the test runner does.
pub fn finish(dir: &Path) {
    for _ in 0..2 {
        let _ = std::fs::write("/sys/kernel/debug/kmemleak", "scan");
        std::thread::sleep(Duration::from_secs(1));
    }
    let leaks = std::fs::read_to_string("/sys/kernel/debug/kmemleak").unwrap_or_default();
    let _ = std::fs::write(dir.join("kmemleak.txt"), &leaks);
    if let Ok(o) = Command::new("dmesg").output() {
        let _ = std::fs::write(dir.join("dmesg.txt"), o.stdout);
    }
    println!("VFIO-RS-BENCH-DONE");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines are the ones the hand-written writer produced, key for key.
    #[test]
    fn sample_lines_keep_their_shape() {
        let head = Head { round: 1, backend: Some("rust"), side: "rust" };
        let text = |l: SampleLine| serde_json::to_string(&l).unwrap();
        assert_eq!(
            text(head.line("map.1g", What::Sample { metric: "map.1g.map", unit: "ns/op", value: 100.5 })),
            r#"{"round":1,"backend":"rust","side":"rust","workload":"map.1g","metric":"map.1g.map","unit":"ns/op","value":100.5}"#
        );
        assert_eq!(
            text(head.line("pin.single", What::Skip { skip: "needs \"x\"" })),
            r#"{"round":1,"backend":"rust","side":"rust","workload":"pin.single","skip":"needs \"x\""}"#
        );
        let warm_up = Head { round: 0, backend: None, side: "c" };
        assert_eq!(
            text(warm_up.line("modules.load", What::Error { error: "exit 1\n" })),
            r#"{"round":0,"side":"c","workload":"modules.load","error":"exit 1\n"}"#
        );
    }
}
