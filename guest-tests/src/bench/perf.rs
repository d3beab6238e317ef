//! `vfio-guest bench --perf`: profiles of single workloads under `perf`.

use super::runner::{harness_debugfs_clear, kmsg, BenchConfig, MARK};
use super::workloads::{Workload, WORKLOADS};
use crate::harness;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// `vfio-guest bench --perf`: for each selected workload and each side of
/// the pair (Rust first), loads the side's modules, runs the workload once
/// under `perf record -g` (cpu-clock sampling: TCG has no hardware
/// counters) and writes, while the modules are still loaded so that
/// `/proc/kallsyms` names their functions:
///
/// - `perf-<workload>-<side>.self.txt`: flat profile, self time per symbol;
/// - `perf-<workload>-<side>.children.txt`: inclusive time per symbol;
/// - `perf-<workload>-<side>.graph.txt`: call graphs (callers of each hot symbol).
pub fn perf(cfg: &BenchConfig) -> bool {
    let dir = &cfg.run.results;
    let _ = std::fs::create_dir_all(dir);
    harness_debugfs_clear();
    // Kernel addresses and sampling for root without restrictions.
    let _ = std::fs::write("/proc/sys/kernel/kptr_restrict", "0");
    let _ = std::fs::write("/proc/sys/kernel/perf_event_paranoid", "-1");
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| cfg.run.filter.as_deref().is_none_or(|f| f.split(',').any(|f| w.name.contains(f))))
        .collect();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut ok = true;
    for w in &selected {
        for (side, b) in [("rust", cfg.pair.1), ("c", cfg.pair.0)] {
            if w.needs_engine && !b.rust_mtty {
                println!("perf: {} skipped on {}: needs the DMA engine of mtty_rs", w.name, b.name());
                continue;
            }
            kmsg(&format!("{MARK} begin round 0 side {side} backend {}", b.name()));
            if let Err(err) = harness::load_backend(&cfg.run, b) {
                println!("perf: loading {} failed: {err}", b.name());
                let _ = harness::unload_backend(&cfg.run, b);
                return false;
            }
            // Names by formatting: workload names contain dots.
            let base = format!("perf-{}-{side}", w.name);
            let data = dir.join(format!("{base}.data"));
            let t = Instant::now();
            let rec = Command::new("perf")
                .args(["record", "-q", "-N", "-e", "cpu-clock", "-F", &cfg.perf_freq.to_string(), "-g", "-o"])
                .arg(&data)
                .arg("--")
                .arg(&exe)
                .args(["bench-one", w.name, "--backend", b.name(), "--scale", &cfg.scale.to_string()])
                .stdin(Stdio::null())
                .output();
            match rec {
                Ok(o) if o.status.success() => {
                    let samples: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap_or("").lines().filter(|l| l.starts_with("SAMPLE")).collect();
                    println!("perf: {} on {} ({side} side), {:.1} s: {}", w.name, b.name(), t.elapsed().as_secs_f64(), samples.join("; "));
                    let reports: [(&str, &[&str]); 3] = [
                        ("self", &["--no-children", "--sort", "sym", "-g", "none", "--percent-limit", "0.3"]),
                        ("children", &["--children", "--sort", "sym", "-g", "none", "--percent-limit", "0.5"]),
                        ("graph", &["--no-children", "--sort", "sym", "-g", "caller,0.5,callee,function,percent", "--percent-limit", "2"]),
                    ];
                    for (kind, extra) in reports {
                        let out = Command::new("perf")
                            .args(["report", "--stdio", "--kallsyms", "/proc/kallsyms", "-i"])
                            .arg(&data)
                            .args(extra)
                            .stdin(Stdio::null())
                            .output();
                        let path = dir.join(format!("{base}.{kind}.txt"));
                        match out {
                            Ok(o) => {
                                let mut text = o.stdout;
                                text.extend_from_slice(&o.stderr);
                                let _ = std::fs::write(&path, text);
                            }
                            Err(err) => println!("perf: cannot run perf report: {err}"),
                        }
                    }
                }
                Ok(o) => {
                    ok = false;
                    println!(
                        "perf: {} on {} failed ({}): {}",
                        w.name,
                        b.name(),
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
                    );
                }
                Err(err) => {
                    println!("perf: cannot run perf ({err}): is linux-perf installed on the host? (cargo xtask setup)");
                    let _ = harness::unload_backend(&cfg.run, b);
                    return false;
                }
            }
            hot_instructions(&data, &dir.join(format!("{base}.ips.txt")));
            let _ = std::fs::remove_file(&data);
            if let Err(err) = harness::unload_backend(&cfg.run, b) {
                println!("perf: unloading {} failed: {err}", b.name());
                return false;
            }
            kmsg(&format!("{MARK} end round 0 side {side} backend {}", b.name()));
        }
    }
    ok
}

/// Writes the most sampled instructions (`symbol+offset`, count), so the
/// hot spots inside a function can be found in `objdump -d` of its module.
fn hot_instructions(data: &Path, out: &Path) {
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym,symoff", "-G", "--kallsyms", "/proc/kallsyms", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .output();
    let Ok(o) = script else { return };
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut total = 0u64;
    // With callchains off (-G), each sample is one line: `ip sym+0xoff`.
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some((_, l)) = line.trim().split_once(' ') else { continue };
        let l = l.trim();
        total += 1;
        *counts.entry(l.to_owned()).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut text = format!("# {total} samples; the most sampled instructions\n");
    for (sym, n) in v.iter().take(300) {
        text.push_str(&format!("{:6.2}% {n:6} {sym}\n", *n as f64 * 100.0 / total.max(1) as f64));
    }
    let _ = std::fs::write(out, text);
}
