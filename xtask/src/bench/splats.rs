//! The kernel reports of a bench run, told apart by side: the guest marks
//! each round's module load and unload in the kernel log, so every report
//! is attributed to the modules that were loaded when it fired, and the C
//! type1's own known lock inversion is reported without failing the run.

use crate::cmd::note;
use crate::report;
use std::path::Path;

/// The kernel reports in the console and the guest's dumps, deduplicated.
pub fn splats(console: &str, results: &Path) -> Vec<report::Splat> {
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

/// Prefixes of the side markers the guest writes to the kernel log: the
/// bench's (guest-tests/src/bench/runner.rs) and the differential tester's
/// (guest-tests/src/fuzz/mod.rs), which share this format.
const MARKS: [&str; 2] = ["vfio-rs-bench:", "vfio-rs-fuzz:"];

/// The rest of a kernel message after a side marker.
fn strip_mark(msg: &str) -> Option<&str> {
    MARKS.iter().find_map(|m| msg.strip_prefix(m))
}

/// Which side's modules were loaded when the console line `line` was
/// printed: the side named by the last marker before it, as
/// `(round, side, backend)`. `None` before the first marker (boot).
pub fn side_at(console: &str, line: &str) -> Option<(u32, String, String)> {
    let end = console.lines().position(|l| l.trim() == line.trim())?;
    let mut last = None;
    for l in console.lines().take(end) {
        let Some(msg) = report::kernel_message(l) else { continue };
        let Some(rest) = strip_mark(msg) else { continue };
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
pub fn judge_splats(console: &str, found: &[report::Splat], log: &Path) -> bool {
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
            if let Some(rest) = report::kernel_message(l).and_then(strip_mark) {
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


#[cfg(test)]
mod tests {
    use super::*;

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
}
