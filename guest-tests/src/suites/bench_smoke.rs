//! The workloads of `cargo xtask bench`, run once each at a small scale
//! against the loaded backend, so that a change that breaks one (a
//! workload's own checks, an ioctl it relies on) fails `cargo xtask test`
//! rather than the next benchmark run. Each runs as the bench runs it: a
//! `vfio-guest bench-one` process with its untimed warm-up pass.

use super::{fail, CaseResult, Ctx};
use crate::bench::WORKLOADS;
use std::process::Command;

/// Iterations × this: enough for every timed loop to run at least once.
const SMOKE_SCALE: &str = "0.05";

/// Workloads whose size does not shrink with the scale (262144 mappings per
/// pass for `map.4k`): minutes on the test kernel, and their code paths are
/// the ones `map.64k` and `scale` run.
const TOO_BIG: &[&str] = &["map.4k"];

/// The largest mapping the `iommu.size.*` sweeps make here (their sizes do
/// not shrink with the scale; the bench goes to 1 GiB): 4 KiB, 64 KiB and
/// one whole 2 MiB page, on 2 MiB of populated memory per backing.
const SMOKE_MAX_BYTES: &str = "2097152";

/// Every workload but [`TOO_BIG`] runs and reports samples, each a positive
/// number; the DMA-engine workloads skip exactly when the mtty is the C
/// sample, which has no engine.
pub fn workloads_run(ctx: &Ctx) -> CaseResult {
    let exe = std::env::current_exe().map_err(|e| fail(format!("current_exe: {e}")))?;
    for w in WORKLOADS.iter().filter(|w| !TOO_BIG.contains(&w.name)) {
        let t = std::time::Instant::now();
        let out = Command::new(&exe)
            .args(["bench-one", w.name, "--backend", ctx.backend.name(), "--scale", SMOKE_SCALE])
            .env("VFIO_BENCH_MAX_BYTES", SMOKE_MAX_BYTES)
            .output()
            .map_err(|e| fail(format!("spawn bench-one {}: {e}", w.name)))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        // What each workload costs this case (docs/bench.md says the total).
        println!("bench-one {}: exit {code:?} after {:.1} s", w.name, t.elapsed().as_secs_f64());
        let skipped = code == Some(crate::EXIT_SKIP);
        let wants_skip = w.needs_engine && !ctx.backend.rust_mtty;
        if skipped != wants_skip || (!skipped && code != Some(0)) {
            return Err(fail(format!(
                "bench-one {}: exit {code:?} (skip expected: {wants_skip}); stdout: {stdout}; stderr: {}",
                w.name,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if skipped {
            continue;
        }
        let values: Vec<f64> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("SAMPLE "))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect();
        crate::check!(!values.is_empty(), "bench-one {} reported no sample: {stdout}", w.name);
        crate::check!(
            values.iter().all(|v| v.is_finite() && *v > 0.0),
            "bench-one {} reported a sample that is not a positive number: {stdout}",
            w.name
        );
    }
    Ok(())
}
