//! `vfio-guest installed`: the checks of a VM booted from the project's own
//! kernel packages, with our modules installed into the unpacked root by
//! `cargo xtask install --root` (xtask/src/installed.rs builds that root).
//!
//! Nothing here loads a module by path: the modules come from `modprobe`
//! alone, as on a developer's machine that installed the packages. The VM
//! shares the host's root file system, so vng links `/lib/modules/<release>`
//! to the unpacked root's, and this program mounts the root's
//! `etc/modprobe.d` over `/etc/modprobe.d` (the host's own must not decide).
//! Each check is one KTAP result, named `installed.*`.

use crate::harness::{self, module_loaded, run_case, sh, Backend, Ktap, RunConfig, Verdict};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Cases of the suite run on the modprobe-loaded modules: the device, its
/// interrupts, and the DMA engine pinning through our type1.
const CASES: &[&str] = &[
    "mtty.device_info_and_regions",
    "mtty.uart_loopback",
    "mtty.interrupts_msi",
    "mtty.dma.loopback_and_pins",
    "mtty.dma.unmap_while_running",
];

/// One check: what went wrong, if anything.
type Check<'a> = dyn Fn() -> Result<(), String> + 'a;

/// Where `modinfo` says the module file of `name` is.
fn module_file(name: &str) -> Result<String, String> {
    Ok(sh("modinfo", &["-F", "filename", name])?.trim().to_owned())
}

/// Names of the loaded modules (`/proc/modules`).
fn loaded() -> Vec<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// The running kernel is the packaged one (its release, and the build
/// number bindeb-pkg gave it, `#N` in `/proc/version`), and its modules
/// directory is the unpacked root's.
fn packaged_kernel(release: &str, build: &str, root: &Path) -> Result<(), String> {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| format!("osrelease: {e}"))?;
    check(running.trim() == release, || format!("running kernel {}, wanted the packaged {release}", running.trim()))?;
    let version = std::fs::read_to_string("/proc/version").map_err(|e| format!("/proc/version: {e}"))?;
    check(version.contains(&format!(" #{build} ")), || format!("/proc/version is {version:?}, wanted build #{build}"))?;
    let dir = format!("/lib/modules/{release}");
    let real = std::fs::canonicalize(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    check(real.starts_with(&root), || format!("{dir} is {}, not inside {}", real.display(), root.display()))
}

/// The root's modprobe.d (with install's file) replaces the host's.
fn modprobe_d(root: &Path) -> Result<(), String> {
    let dir = root.join("etc/modprobe.d");
    check(dir.join("vfio-rs.conf").is_file(), || format!("{}/vfio-rs.conf was not installed", dir.display()))?;
    sh("mount", &["--bind", &dir.to_string_lossy(), "/etc/modprobe.d"])?;
    Ok(())
}

/// `modprobe vfio` loads our type1 from `extra/`, and not the C one that
/// vfio's softdep names, although the package ships it.
fn modprobe_vfio(release: &str) -> Result<(), String> {
    let extra = format!("/lib/modules/{release}/extra/");
    let c_type1 = module_file("vfio_iommu_type1")?;
    check(c_type1.starts_with(&format!("/lib/modules/{release}/kernel/")), || {
        format!("the C vfio_iommu_type1 is at {c_type1}, not in the package's kernel/ tree")
    })?;
    sh("modprobe", &["vfio"])?;
    let mods = loaded();
    let has = |m: &str| mods.iter().any(|l| l == m);
    check(has("vfio") && has("vfio_iommu_type1_rs"), || format!("after `modprobe vfio`, /proc/modules has {mods:?}"))?;
    check(!has("vfio_iommu_type1"), || "the C vfio_iommu_type1 was loaded by `modprobe vfio`".into())?;
    let ours = module_file("vfio_iommu_type1_rs")?;
    check(ours.starts_with(&extra), || format!("vfio_iommu_type1_rs came from {ours}, not {extra}"))
}

/// `modprobe mtty_rs` loads our mtty (and mdev) and registers its parent.
fn modprobe_mtty_rs(release: &str) -> Result<(), String> {
    sh("modprobe", &["mtty_rs"])?;
    let mods = loaded();
    let has = |m: &str| mods.iter().any(|l| l == m);
    check(has("mtty_rs") && has("mdev"), || format!("after `modprobe mtty_rs`, /proc/modules has {mods:?}"))?;
    check(!has("mtty") && !has("vfio_iommu_type1"), || format!("a C module is loaded: {mods:?}"))?;
    let file = module_file("mtty_rs")?;
    check(file.starts_with(&format!("/lib/modules/{release}/extra/")), || format!("mtty_rs came from {file}"))?;
    check(Path::new("/sys/class/mdev_bus/mtty").is_dir(), || "no /sys/class/mdev_bus/mtty after loading".into())
}

/// `modprobe -r` takes both modules out again.
fn modprobe_remove() -> Result<(), String> {
    sh("modprobe", &["-r", "mtty_rs"])?;
    sh("modprobe", &["-r", "vfio_iommu_type1_rs"])?;
    for m in ["mtty_rs", "vfio_iommu_type1_rs"] {
        check(!module_loaded(m), || format!("{m} is still loaded after `modprobe -r`"))?;
    }
    Ok(())
}

/// Runs the checks; returns whether all passed.
pub fn run(results: &Path, release: &str, build: &str, root: &Path) -> bool {
    let mut k = Ktap::create(results);
    harness::ensure_debugfs();
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "clear");
    let cfg = RunConfig {
        results: results.to_owned(),
        modroot: PathBuf::new(),
        kmods: PathBuf::new(),
        backends: vec![Backend::RUST],
        filter: None,
        skip: None,
        keep_going: false,
        case_timeout: Duration::from_secs(180),
    };
    k.line("KTAP version 1");
    k.line(&format!("1..{}", 5 + CASES.len()));
    let steps: [(&str, &Check); 4] = [
        ("installed.packaged_kernel", &|| packaged_kernel(release, build, root)),
        ("installed.modprobe_d", &|| modprobe_d(root)),
        ("installed.modprobe_vfio", &|| modprobe_vfio(release)),
        ("installed.modprobe_mtty_rs", &|| modprobe_mtty_rs(release)),
    ];
    let mut ok = true;
    for (name, step) in steps {
        let v = match step() {
            Ok(()) => Verdict::Pass,
            Err(e) => Verdict::Fail(e),
        };
        ok &= matches!(v, Verdict::Pass);
        k.result(name, &v, &[]);
    }
    for case in CASES {
        let (v, diags) = if ok { run_case(&cfg, case, Backend::RUST) } else { (Verdict::Skip("modules not loaded".into()), vec![]) };
        ok &= !matches!(v, Verdict::Fail(_));
        k.result(&format!("installed.{case}"), &v, &diags);
    }
    let v = match modprobe_remove() {
        Ok(()) => Verdict::Pass,
        Err(e) => Verdict::Fail(e),
    };
    ok &= matches!(v, Verdict::Pass);
    k.result("installed.modprobe_remove", &v, &[]);
    harness::finish(&cfg);
    ok
}
