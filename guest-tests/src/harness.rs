//! The guest side of the test run: loads one backend's modules, runs each
//! case in its own process with a timeout, and prints KTAP.
//!
//! A case runs as `vfio-guest case <name>`, so a case that crashes its
//! process, leaks a file descriptor or leaves pins behind is contained and
//! reported, and process-exit cleanup paths get exercised on every case.

use crate::suites;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Wakes every CPU of the guest once a second, from another CPU.
///
/// Under TCG (QEMU 10, two vCPUs), 2 of 6 full runs saw guest CPU 1 halted
/// in `default_idle` for good, about 2.5 minutes in, with timers queued on
/// it that never ran: RCU's "rcu_sched kthread timer wakeup didn't happen
/// ... Possible timer handling issue on cpu=1", then its stall reports
/// every 78 s until the VM's timeout, while the other CPU worked on. An
/// NMI still reached it; its timer interrupt did not come back. Whether
/// QEMU lost the halted vCPU's timer or the kernel's NOHZ timer hand-over
/// (`kernel/time/timer_migration.c`) left the timer to nobody is not
/// known (docs/testing.md). Either way a wakeup from another CPU ends it:
/// the woken CPU leaves idle and reprograms its tick. So each CPU has a
/// thread blocked on a channel, and the next CPU's thread sends it a
/// message every second. A CPU stuck for longer than RCU's stall timeout
/// would still be reported, and fail the run, as before.
fn start_cpu_wakers() {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let Ok(n) = usize::try_from(n) else { return };
    if n < 2 {
        return;
    }
    for cpu in 0..n {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            pin_to_cpu(cpu);
            while rx.recv().is_ok() {}
        });
        std::thread::spawn(move || {
            pin_to_cpu((cpu + 1) % n);
            while tx.send(()).is_ok() {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }
}

/// Keeps the calling thread on `cpu` (best effort: unpinned if refused).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // (the index is checked against the set's size first), and
    // sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < 8 * std::mem::size_of::<libc::cpu_set_t>() {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Which implementations of type1 and mtty are loaded: C or Rust for each.
/// The mixed pairs let one module be developed against the other's C
/// reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Our `vfio_iommu_type1_rs` instead of the kernel's `vfio_iommu_type1`.
    pub rust_type1: bool,
    /// Our `mtty_rs` instead of `samples/vfio-mdev/mtty`.
    pub rust_mtty: bool,
}

impl Backend {
    /// The kernel's C modules.
    pub const C: Backend = Backend { rust_type1: false, rust_mtty: false };
    /// Both of ours.
    pub const RUST: Backend = Backend { rust_type1: true, rust_mtty: true };

    /// `c`, `rust`, `type1-rs` (Rust type1, C mtty) or `mtty-rs` (C type1, Rust mtty).
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "c" => Some(Backend::C),
            "rust" => Some(Backend::RUST),
            "type1-rs" => Some(Backend { rust_type1: true, rust_mtty: false }),
            "mtty-rs" => Some(Backend { rust_type1: false, rust_mtty: true }),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match (self.rust_type1, self.rust_mtty) {
            (false, false) => "c",
            (true, true) => "rust",
            (true, false) => "type1-rs",
            (false, true) => "mtty-rs",
        }
    }

    pub fn type1_module(self) -> &'static str {
        if self.rust_type1 { "vfio_iommu_type1_rs" } else { "vfio_iommu_type1" }
    }

    pub fn mtty_module(self) -> &'static str {
        if self.rust_mtty { "mtty_rs" } else { "mtty" }
    }

    /// The modules loaded, in load order, as (module name, how to load it).
    fn modules(self, kmods: &Path) -> Vec<(&'static str, Load)> {
        let load = |rust: bool, ko: &str| {
            if rust { Load::Insmod(kmods.join(ko)) } else { Load::Kernel }
        };
        vec![
            ("vfio", Load::Kernel),
            (self.type1_module(), load(self.rust_type1, "kmod-iommu/vfio_iommu_type1_rs.ko")),
            // vfio-pci serves the emulated PCI devices behind the VT-d
            // (crate::pci binds them); vfio-pci-core needs irqbypass.
            ("irqbypass", Load::Kernel),
            ("vfio_pci_core", Load::Kernel),
            ("vfio_pci", Load::Kernel),
            ("mdev", Load::Kernel),
            (self.mtty_module(), load(self.rust_mtty, "kmod-mtty/mtty_rs.ko")),
        ]
    }

    /// Modules that must NOT be loaded while this backend runs: the other
    /// implementation of each piece.
    fn absent(self) -> [&'static str; 2] {
        [
            if self.rust_type1 { "vfio_iommu_type1" } else { "vfio_iommu_type1_rs" },
            if self.rust_mtty { "mtty" } else { "mtty_rs" },
        ]
    }
}

/// How a module is loaded. Everything goes through `insmod` in an explicit
/// order: `modprobe vfio` would also load `vfio_iommu_type1` (a softdep of
/// vfio), which must stay out while our type1 runs.
enum Load {
    /// A module of the test kernel, found through `modules.dep` in the modroot.
    Kernel,
    /// One of our modules, by path.
    Insmod(PathBuf),
}

/// The path of kernel module `name` under `modroot` (from `modules.dep`).
fn kernel_module_path(modroot: &Path, name: &str) -> Result<PathBuf, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("kernel release: {e}"))?;
    let dir = modroot.join("lib/modules").join(release.trim());
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(|e| format!("{}/modules.dep: {e}", dir.display()))?;
    // Module names use '_' where file names may use '-'.
    let stem = |p: &str| -> String {
        let file = p.rsplit('/').next().unwrap_or(p);
        file.trim_end_matches(".ko").replace('-', "_")
    };
    dep.lines()
        .filter_map(|l| l.split_once(':').map(|(p, _)| p))
        .find(|p| stem(p) == name)
        .map(|p| dir.join(p))
        .ok_or_else(|| format!("{name}.ko is not in {}/modules.dep", dir.display()))
}

/// What the runner needs to know about the VM's file layout.
pub struct RunConfig {
    pub results: PathBuf,
    pub modroot: PathBuf,
    pub kmods: PathBuf,
    pub backends: Vec<Backend>,
    pub filter: Option<String>,
    /// Cases whose name contains one of these comma-separated texts are
    /// left out (after `filter`).
    pub skip: Option<String>,
    pub keep_going: bool,
    pub case_timeout: Duration,
}

/// Writes KTAP lines to stdout and to `results.ktap` as they happen.
pub(crate) struct Ktap {
    file: std::fs::File,
    n: usize,
}

impl Ktap {
    /// A new `results.ktap` in `results`.
    pub(crate) fn create(results: &Path) -> Ktap {
        let _ = std::fs::create_dir_all(results);
        let file = std::fs::File::create(results.join("results.ktap")).expect("results dir must be writable");
        Ktap { file, n: 0 }
    }

    pub(crate) fn line(&mut self, s: &str) {
        println!("{s}");
        let _ = writeln!(self.file, "{s}");
        let _ = self.file.flush();
    }

    pub(crate) fn result(&mut self, name: &str, verdict: &Verdict, diags: &[String]) {
        for d in diags {
            self.line(&format!("# {d}"));
        }
        self.n += 1;
        let n = self.n;
        match verdict {
            Verdict::Pass => self.line(&format!("ok {n} {name}")),
            Verdict::Skip(why) => self.line(&format!("ok {n} {name} # SKIP {why}")),
            Verdict::Fail(why) => {
                self.line(&format!("# {name}: {why}"));
                self.line(&format!("not ok {n} {name}"));
            }
        }
    }
}

/// How a case ended.
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

pub(crate) fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

pub fn load_backend(cfg: &RunConfig, b: Backend) -> Result<(), String> {
    for (name, how) in b.modules(&cfg.kmods) {
        if module_loaded(name) {
            continue;
        }
        match how {
            Load::Kernel => {
                let path = kernel_module_path(&cfg.modroot, name)?;
                sh("insmod", &[&path.to_string_lossy()])?
            }
            Load::Insmod(path) => {
                if !path.exists() {
                    return Err(format!("{} was not built", path.display()));
                }
                sh("insmod", &[&path.to_string_lossy()])?
            }
        };
        if !module_loaded(name) {
            return Err(format!("{name} did not appear in /sys/module after loading"));
        }
    }
    for other in b.absent() {
        if module_loaded(other) {
            return Err(format!("{other} is loaded while testing the {} backend", b.name()));
        }
    }
    crate::pci::bind_test_devices()
}

pub fn unload_backend(cfg: &RunConfig, b: Backend) -> Result<(), String> {
    let mut errors = Vec::new();
    for (name, _) in b.modules(&cfg.kmods).iter().rev() {
        if module_loaded(name) {
            if let Err(e) = sh("rmmod", &[name]) {
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Replaces the loaded type1 of `from` with that of `to` (the other
/// modules must be the same in both: only the type1 module is unloaded,
/// then [`load_backend`] loads what `to` lacks). Used by the differential
/// tester (`crate::fuzz`), whose two sides differ in type1 alone.
pub(crate) fn swap_type1(cfg: &RunConfig, from: Backend, to: Backend) -> Result<(), String> {
    if from.rust_mtty != to.rust_mtty {
        return Err(format!("cannot swap {} for {}: the mtty differs too", from.name(), to.name()));
    }
    if module_loaded(from.type1_module()) {
        sh("rmmod", &[from.type1_module()])?;
    }
    load_backend(cfg, to)
}

/// What [`run_self`] saw of a child: its exit status (`None` if it was
/// killed at the time limit or could not be waited for), stdout, stderr.
pub struct ChildRun {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs this program again with `args` (one case or workload per process),
/// killing it after `limit`. Both pipes are drained on threads while it
/// runs, so a chatty child cannot block on a full pipe.
pub fn run_self(args: &[&str], limit: Duration) -> Result<ChildRun, String> {
    use std::io::Read;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let ho = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let he = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    Ok(ChildRun { status, stdout: ho.join().unwrap_or_default(), stderr: he.join().unwrap_or_default() })
}

pub(crate) fn run_case(cfg: &RunConfig, name: &str, b: Backend) -> (Verdict, Vec<String>) {
    let limit = suites::case_timeout(name).map_or(cfg.case_timeout, |t| t.max(cfg.case_timeout));
    let results = cfg.results.to_string_lossy();
    let run = match run_self(&["case", name, "--backend", b.name(), "--results", &results], limit) {
        Ok(r) => r,
        Err(e) => return (Verdict::Fail(format!("cannot start case process: {e}")), vec![]),
    };
    let status = run.status;
    let out = run.stdout + &run.stderr;
    let mut diags: Vec<String> = out.lines().map(str::to_owned).collect();
    let verdict = match status {
        None => Verdict::Fail(format!("timed out after {} s", limit.as_secs())),
        Some(s) if s.success() => Verdict::Pass,
        Some(s) if s.code() == Some(crate::EXIT_SKIP) => {
            let why = diags.pop().unwrap_or_default();
            Verdict::Skip(why.trim_start_matches("SKIP: ").to_owned())
        }
        Some(s) => {
            let why = diags.pop().unwrap_or_else(|| format!("exited with {s}"));
            Verdict::Fail(why)
        }
    };
    (verdict, diags)
}

pub(crate) fn ensure_debugfs() {
    if !Path::new("/sys/kernel/debug/kmemleak").exists() {
        let _ = sh("mount", &["-t", "debugfs", "none", "/sys/kernel/debug"]);
    }
}

/// Runs the selected cases on each backend; returns whether all passed.
pub fn run(cfg: &RunConfig) -> bool {
    let mut k = Ktap::create(&cfg.results);
    ensure_debugfs();
    start_cpu_wakers();
    // Only leaks made during this run count: forget what boot left.
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "clear");

    let cases: Vec<&suites::Case> = suites::ALL
        .iter()
        .filter(|c| {
            let names = |list: &str| list.split(',').any(|part| c.name.contains(part));
            cfg.filter.as_deref().is_none_or(names) && !cfg.skip.as_deref().is_some_and(names)
        })
        .collect();
    k.line("KTAP version 1");
    k.line(&format!("1..{}", (cases.len() + 2) * cfg.backends.len()));
    let mut all_ok = true;
    'backends: for &b in &cfg.backends {
        let load = load_backend(cfg, b);
        let load_verdict = match &load {
            Ok(()) => Verdict::Pass,
            Err(e) => Verdict::Fail(e.clone()),
        };
        k.result(&format!("modules.load [{}]", b.name()), &load_verdict, &[]);
        if load.is_err() {
            all_ok = false;
            let _ = unload_backend(cfg, b);
            if cfg.keep_going {
                continue;
            }
            break;
        }
        for case in &cases {
            let (verdict, diags) = run_case(cfg, case.name, b);
            let failed = matches!(verdict, Verdict::Fail(_));
            k.result(&format!("{} [{}]", case.name, b.name()), &verdict, &diags);
            if failed {
                all_ok = false;
                if !cfg.keep_going {
                    let _ = unload_backend(cfg, b);
                    break 'backends;
                }
            }
        }
        let unload = unload_backend(cfg, b);
        let v = match unload {
            Ok(()) => Verdict::Pass,
            Err(e) => {
                all_ok = false;
                Verdict::Fail(e)
            }
        };
        k.result(&format!("modules.unload [{}]", b.name()), &v, &[]);
    }
    finish(cfg);
    all_ok
}

/// The end of a run: an explicit kmemleak scan and a copy of the kernel log.
pub(crate) fn finish(cfg: &RunConfig) {
    // kmemleak reports an object only once it has been seen unreferenced
    // over two scans, with some time between them.
    for _ in 0..2 {
        let _ = std::fs::write("/sys/kernel/debug/kmemleak", "scan");
        std::thread::sleep(Duration::from_secs(1));
    }
    let leaks = std::fs::read_to_string("/sys/kernel/debug/kmemleak").unwrap_or_default();
    let _ = std::fs::write(cfg.results.join("kmemleak.txt"), &leaks);
    if !leaks.trim().is_empty() {
        println!("kmemleak report:\n{leaks}");
    }
    if let Ok(dmesg) = sh("dmesg", &[]) {
        let _ = std::fs::write(cfg.results.join("dmesg.txt"), dmesg);
    }
    println!("VFIO-RS-GUEST-DONE");
}
