//! Reading what a VM run left behind: KTAP results and kernel splats.
//!
//! The guest runner writes its results as KTAP to a file in the shared
//! results directory (console lines can be torn by kernel messages, the file
//! cannot). Splats are looked for in the whole console log, which survives a
//! guest that panics or hangs, and in the `dmesg` and kmemleak dumps the
//! runner takes at the end.

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `ok N name`.
    Pass,
    /// `not ok N name`.
    Fail,
    /// `ok N name # SKIP reason`.
    Skip(String),
}

/// One top-level KTAP result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The test's name as the runner printed it.
    pub name: String,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// The `# ` diagnostic lines printed before the result line.
    pub diagnostics: Vec<String>,
}

/// Parses top-level KTAP result lines; indented subtest lines and the header
/// are ignored, `# ` lines are kept as the next result's diagnostics.
pub fn parse_ktap(text: &str) -> Vec<TestResult> {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        if let Some(d) = line.strip_prefix("# ") {
            diags.push(d.to_owned());
            continue;
        }
        let (passed, rest) = if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else {
            continue;
        };
        // "<number> <name>[ # SKIP reason]"
        let Some((num, rest)) = rest.split_once(' ') else { continue };
        if num.parse::<u32>().is_err() {
            continue;
        }
        let (name, directive) = match rest.split_once(" # ") {
            Some((n, d)) => (n.trim(), Some(d.trim())),
            None => (rest.trim(), None),
        };
        let outcome = match directive {
            Some(d) if d.to_ascii_uppercase().starts_with("SKIP") => {
                Outcome::Skip(d[4..].trim().to_owned())
            }
            _ if passed => Outcome::Pass,
            _ => Outcome::Fail,
        };
        out.push(TestResult { name: name.to_owned(), outcome, diagnostics: std::mem::take(&mut diags) });
    }
    out
}

/// A kernel report found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splat {
    /// What kind of report: "warning", "KASAN", "lockdep", ...
    pub kind: &'static str,
    /// The line that identified it.
    pub line: String,
}

/// Markers in kernel messages (text after the `[  time]` stamp) and the kind
/// of report each one starts. Checked in order; the first match names it.
const KERNEL_MARKERS: &[(&str, &str)] = &[
    ("BUG: KASAN:", "KASAN"),
    ("KASAN:", "KASAN"),
    ("possible circular locking dependency", "lockdep"),
    ("possible recursive locking detected", "lockdep"),
    ("inconsistent lock state", "lockdep"),
    ("suspicious RCU usage", "lockdep"),
    ("INFO: trying to register non-static key", "lockdep"),
    ("BUG: sleeping function called from invalid context", "might_sleep"),
    ("BUG: soft lockup", "soft lockup"),
    ("rcu: INFO:", "RCU stall"),
    ("detected stalls on CPUs", "RCU stall"),
    ("blocked for more than", "hung task"),
    ("UBSAN:", "UBSAN"),
    ("list_add corruption", "list corruption"),
    ("list_del corruption", "list corruption"),
    ("Oops", "oops"),
    ("general protection fault", "oops"),
    ("Kernel panic", "panic"),
    ("kernel BUG at", "BUG"),
    ("BUG:", "BUG"),
    ("WARNING:", "warning"),
    ("kmemleak:", "kmemleak"),
    ("Call Trace:", "stack dump"),
];

/// kmemleak's report lines, found anywhere: the runner prints
/// `/sys/kernel/debug/kmemleak` as program output, without timestamps.
const ANYWHERE_MARKERS: &[(&str, &str)] = &[("unreferenced object 0x", "kmemleak")];

/// kmemleak lines that are not reports.
const KMEMLEAK_BENIGN: &[&str] = &["Kernel memory leak detector initialized", "Automatic memory scanning thread"];

/// Returns the message part of a kernel log line (`[    1.234567] msg`), or
/// `None` for program output. The stamp may follow other text when a kernel
/// message tears a line of program output on the console.
pub fn kernel_message(line: &str) -> Option<&str> {
    let mut search = line;
    while let Some(pos) = search.find('[') {
        let after = &search[pos + 1..];
        if let Some(end) = after.find(']') {
            let stamp = after[..end].trim_start();
            let mut parts = stamp.splitn(2, '.');
            let secs = parts.next().unwrap_or("");
            let frac = parts.next().unwrap_or("");
            if !secs.is_empty()
                && !frac.is_empty()
                && secs.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
            {
                return Some(after[end + 1..].trim_start());
            }
        }
        search = after;
    }
    None
}

/// Finds kernel reports in a console log, a dmesg dump or a kmemleak dump.
/// Only the first line of each report is returned; a report that prints
/// several markers (a WARNING with its Call Trace) counts once.
pub fn find_splats(log: &str) -> Vec<Splat> {
    let mut out: Vec<Splat> = Vec::new();
    let mut in_report = false;
    for line in log.lines() {
        let mut found = None;
        if let Some(msg) = kernel_message(line) {
            let benign = msg.starts_with("kmemleak:") && KMEMLEAK_BENIGN.iter().any(|b| msg.contains(b));
            if !benign {
                found = KERNEL_MARKERS.iter().find(|(m, _)| msg.contains(m)).map(|(_, k)| *k);
            }
            // A report's trailing lines (Call Trace, "---[ end trace") belong to it.
            if msg.starts_with("---[ end trace") || msg.starts_with("====") {
                in_report = false;
                continue;
            }
        } else {
            found = ANYWHERE_MARKERS.iter().find(|(m, _)| line.contains(m)).map(|(_, k)| *k);
        }
        match found {
            Some("stack dump") if in_report => {}
            Some(kind) => {
                out.push(Splat { kind, line: line.trim().to_owned() });
                in_report = kind != "kmemleak";
            }
            None => {}
        }
    }
    out
}

/// The kernel reports of a VM run: in its console (which survives a panic)
/// and in the runner's `dmesg.txt` and `kmemleak.txt` under `results`. The
/// console and dmesg show the same report: it is counted once.
pub fn run_splats(console: &str, results: &std::path::Path) -> Vec<Splat> {
    let mut texts = vec![console.to_owned()];
    for f in ["dmesg.txt", "kmemleak.txt"] {
        texts.push(std::fs::read_to_string(results.join(f)).unwrap_or_default());
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for text in &texts {
        for s in find_splats(text) {
            let key = kernel_message(&s.line).unwrap_or(&s.line).to_owned();
            if seen.insert(key) {
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real WARN_ON from a module (format of lib/bug.c / kernel/panic.c in 6.12).
    const WARN: &str = "\
[   12.345678] ------------[ cut here ]------------
[   12.345901] WARNING: CPU: 1 PID: 231 at /root/work/target/kmod/tree/kmod-iommu/vfio_iommu_type1_rs.rs:120 vfio_iommu_type1_rs_init+0x2a/0x40 [vfio_iommu_type1_rs]
[   12.346210] Modules linked in: vfio_iommu_type1_rs(O+) vfio
[   12.346500] CPU: 1 UID: 0 PID: 231 Comm: insmod Tainted: G           O       6.12.117-vfio-rs #1
[   12.346800] RIP: 0010:vfio_iommu_type1_rs_init+0x2a/0x40 [vfio_iommu_type1_rs]
[   12.347100] Call Trace:
[   12.347200]  <TASK>
[   12.347300]  do_one_initcall+0xa1/0x2e0
[   12.347400]  </TASK>
[   12.347500] ---[ end trace 0000000000000000 ]---
";

    const KASAN: &str = "\
[   20.100000] ==================================================================
[   20.100100] BUG: KASAN: slab-use-after-free in vfio_dma_do_unmap+0x1f3/0x6a0 [vfio_iommu_type1]
[   20.100200] Read of size 8 at addr ffff888003a1c2d8 by task vfio-guest/312
[   20.100300] Call Trace:
[   20.100400]  <TASK>
[   20.100500]  kasan_report+0xb9/0xf0
[   20.100900] ==================================================================
";

    const LOCKDEP: &str = "\
[   31.000001] ======================================================
[   31.000002] WARNING: possible circular locking dependency detected
[   31.000003] 6.12.117-vfio-rs #1 Tainted: G           O
[   31.000004] ------------------------------------------------------
[   31.000005] vfio-guest/401 is trying to acquire lock:
[   31.000006] ffff88800a2b1040 (&iommu->lock){+.+.}-{3:3}, at: vfio_iommu_type1_unpin_pages+0x5e/0x1f0
";

    const KMEMLEAK: &str = "\
unreferenced object 0xffff888006d0a180 (size 64):
  comm \"vfio-guest\", pid 355, jiffies 4294912345
  hex dump (first 32 bytes):
  backtrace (crc 5a3c1e2b):
    kmalloc_trace_noprof+0x1e5/0x360
";

    const CLEAN_BOOT: &str = "\
[    0.000000] Linux version 6.12.117-vfio-rs (root@host) (Debian clang version 14.0.6) #1 SMP PREEMPT_DYNAMIC
[    0.210000] kasan: KernelAddressSanitizer initialized (generic)
[    0.900000] kmemleak: Kernel memory leak detector initialized (mem pool available: 15731)
[    0.900100] kmemleak: Automatic memory scanning thread started
[    1.500000] VFIO - User Level meta-driver version: 0.3
KTAP version 1
1..2
ok 1 type1.check_extension [c]
# WARNING: this is program output, not a kernel message
ok 2 type1.map_unmap [c]
";

    #[test]
    fn warn_on_in_a_module_is_one_warning() {
        let s = find_splats(WARN);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "warning");
        assert!(s[0].line.contains("vfio_iommu_type1_rs_init"));
    }

    #[test]
    fn kasan_report_is_found() {
        let s = find_splats(KASAN);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "KASAN");
    }

    #[test]
    fn lockdep_cycle_is_found() {
        let s = find_splats(LOCKDEP);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "lockdep");
    }

    #[test]
    fn kmemleak_dump_without_timestamps_is_found() {
        let s = find_splats(KMEMLEAK);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "kmemleak");
    }

    #[test]
    fn clean_boot_and_program_output_are_not_splats() {
        assert_eq!(find_splats(CLEAN_BOOT), vec![]);
    }

    /// The real-IOMMU cases provoke IOMMU faults on purpose (a DMA after
    /// the unmap): the VT-d fault report is expected output, not a splat.
    /// A warning in the middle of such output still is one.
    #[test]
    fn dmar_fault_reports_are_not_splats() {
        let log = "\
[   76.979302] DMAR: DRHD: handling fault status reg 2
[   76.979979] DMAR: [DMA Write NO_PASID] Request device [00:0a.0] fault addr 0x101000 [fault reason 0x05] PTE Write access is not set
[   77.000000] vfio-pci 0000:00:0a.0: resetting
";
        assert_eq!(find_splats(log), vec![]);
        let with_warning = format!("{log}[   78.000000] WARNING: CPU: 1 PID: 9 at drivers/iommu/intel/iommu.c:100 x+0x1/0x2\n");
        assert_eq!(find_splats(&with_warning).len(), 1);
    }

    #[test]
    fn splat_tearing_a_program_line_is_found() {
        let log = "ok 3 type1.unmap_a[   40.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008\n";
        let s = find_splats(log);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].kind, "BUG");
    }

    #[test]
    fn stalls_hangs_and_panics_are_found() {
        let log = "\
[  100.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
[  200.000000] INFO: task vfio-guest:500 blocked for more than 60 seconds.
[  300.000000] Kernel panic - not syncing: Fatal exception
[  301.000000] Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN
";
        let kinds: Vec<_> = find_splats(log).into_iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec!["RCU stall", "hung task", "panic", "oops"]);
    }

    #[test]
    fn kernel_message_needs_a_timestamp() {
        assert_eq!(kernel_message("[   12.5] hello"), Some("hello"));
        assert_eq!(kernel_message("[abc] hello"), None);
        assert_eq!(kernel_message("ok 1 [c] test"), None);
        assert_eq!(kernel_message("x [1.2] y"), Some("y"));
    }

    #[test]
    fn ktap_results_with_skip_and_diagnostics() {
        let text = "KTAP version 1\n1..4\n# errno 22, wanted 17\nnot ok 1 a\nok 2 b\nok 3 c # SKIP no DMA engine in the C sample\n    ok 1 sub\nok 4 d # TODO later\n";
        let r = parse_ktap(text);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].outcome, Outcome::Fail);
        assert_eq!(r[0].diagnostics, vec!["errno 22, wanted 17"]);
        assert_eq!(r[1].outcome, Outcome::Pass);
        assert_eq!(r[2].outcome, Outcome::Skip("no DMA engine in the C sample".into()));
        assert_eq!(r[3].outcome, Outcome::Pass);
        assert_eq!(r[3].name, "d");
    }

    #[test]
    fn torn_or_garbage_result_lines_are_ignored() {
        assert!(parse_ktap("ok x name\nnot ok\nokay 1 a\n").is_empty());
    }
}
