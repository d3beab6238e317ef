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

/// Which implementations of type1 and mtty are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel's `vfio_iommu_type1` and `samples/vfio-mdev/mtty`.
    C,
    /// Our `vfio_iommu_type1_rs` and `mtty_rs`.
    Rust,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "c" => Some(Backend::C),
            "rust" => Some(Backend::Rust),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::C => "c",
            Backend::Rust => "rust",
        }
    }

    /// The modules loaded, in load order, as (module name, how to load it).
    fn modules(self, kmods: &Path) -> Vec<(&'static str, Load)> {
        match self {
            Backend::C => vec![
                ("vfio", Load::Modprobe),
                ("vfio_iommu_type1", Load::Modprobe),
                ("mdev", Load::Modprobe),
                ("mtty", Load::Modprobe),
            ],
            Backend::Rust => vec![
                ("vfio", Load::Modprobe),
                ("vfio_iommu_type1_rs", Load::Insmod(kmods.join("kmod-iommu/vfio_iommu_type1_rs.ko"))),
                ("mdev", Load::Modprobe),
                ("mtty_rs", Load::Insmod(kmods.join("kmod-mtty/mtty_rs.ko"))),
            ],
        }
    }

    /// Modules that must NOT be loaded while this backend runs: the other
    /// implementation of each piece.
    fn absent(self) -> &'static [&'static str] {
        match self {
            Backend::C => &["vfio_iommu_type1_rs", "mtty_rs"],
            Backend::Rust => &["vfio_iommu_type1", "mtty"],
        }
    }
}

enum Load {
    Modprobe,
    Insmod(PathBuf),
}

/// What the runner needs to know about the VM's file layout.
pub struct RunConfig {
    pub results: PathBuf,
    pub modroot: PathBuf,
    pub kmods: PathBuf,
    pub backends: Vec<Backend>,
    pub filter: Option<String>,
    pub keep_going: bool,
    pub case_timeout: Duration,
}

/// Writes KTAP lines to stdout and to `results.ktap` as they happen.
struct Ktap {
    file: std::fs::File,
    n: usize,
}

impl Ktap {
    fn line(&mut self, s: &str) {
        println!("{s}");
        let _ = writeln!(self.file, "{s}");
        let _ = self.file.flush();
    }

    fn result(&mut self, name: &str, verdict: &Verdict, diags: &[String]) {
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

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
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

fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

pub fn load_backend(cfg: &RunConfig, b: Backend) -> Result<(), String> {
    let modroot = cfg.modroot.to_string_lossy().into_owned();
    for (name, how) in b.modules(&cfg.kmods) {
        if module_loaded(name) {
            continue;
        }
        match how {
            Load::Modprobe => sh("modprobe", &["-d", &modroot, name])?,
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
    Ok(())
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

fn run_case(cfg: &RunConfig, name: &str, b: Backend) -> (Verdict, Vec<String>) {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let child = Command::new(exe)
        .args(["case", name, "--backend", b.name()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Verdict::Fail(format!("cannot start case process: {e}")), vec![]),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > cfg.case_timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let mut out = String::new();
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    let mut diags: Vec<String> = out.lines().map(str::to_owned).collect();
    let verdict = match status {
        None => Verdict::Fail(format!("timed out after {} s", cfg.case_timeout.as_secs())),
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

fn ensure_debugfs() {
    if !Path::new("/sys/kernel/debug/kmemleak").exists() {
        let _ = sh("mount", &["-t", "debugfs", "none", "/sys/kernel/debug"]);
    }
}

/// Runs the selected cases on each backend; returns whether all passed.
pub fn run(cfg: &RunConfig) -> bool {
    let _ = std::fs::create_dir_all(&cfg.results);
    let file = std::fs::File::create(cfg.results.join("results.ktap")).expect("results dir must be writable");
    let mut k = Ktap { file, n: 0 };
    ensure_debugfs();
    // Only leaks made during this run count: forget what boot left.
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "clear");

    let cases: Vec<&suites::Case> = suites::ALL
        .iter()
        .filter(|c| cfg.filter.as_deref().is_none_or(|f| c.name.contains(f)))
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
fn finish(cfg: &RunConfig) {
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
