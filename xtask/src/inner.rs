//! The inner guest of the QEMU case (`mtty.qemu.guest_8250`): a tiny kernel
//! and a busybox initramfs that QEMU, running inside the test VM, boots with
//! an mtty instance assigned through vfio-pci.
//!
//! The kernel is built from the same unpacked source as the test kernel,
//! with `images/inner-guest.config` on `allnoconfig` and no Rust, into
//! `<cache>/kernel/tiny-<key>/` (the key hashes the fragment, this recipe,
//! the source package version and clang/lld). The initramfs is rebuilt every
//! run (it takes a moment) from `images/inner-guest-init.sh`, the host's
//! static busybox and the guest test program (`vfio-guest inner-dma`, with
//! the shared libraries `ldd` lists) into `target/vm/inner-initramfs.cpio`.

use crate::cmd::{self, note, step};
use crate::kernel::{config_mismatches, KernelBuild};
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Bump when the way the inner kernel is built changes.
const RECIPE: &str = "inner-recipe-1: allnoconfig+fragment, LLVM=1, bzImage";
const FRAGMENT: &str = "images/inner-guest.config";
const INIT: &str = "images/inner-guest-init.sh";
const BUSYBOX: &str = "/bin/busybox";

/// The files the QEMU case boots.
pub struct InnerGuest {
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
}

fn key(paths: &Paths, source_dir: &Path) -> Result<String> {
    let fragment = std::fs::read_to_string(paths.root().join(FRAGMENT)).with_context(|| format!("cannot read {FRAGMENT}"))?;
    let tool = |c: &mut Command| cmd::probe_version(c).unwrap_or_else(|| "missing".into());
    // The test kernel's cache directory name carries the source package version.
    let source = source_dir
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = source.rsplit_once('-').map_or(source.as_str(), |(v, _)| v).to_owned();
    let material = format!(
        "{RECIPE}\nsource {version}\nclang {}\nlld {}\n--- fragment\n{fragment}",
        tool(Command::new("clang").arg("--version")),
        tool(Command::new("ld.lld").arg("--version")),
    );
    let digest = Sha256::digest(material.as_bytes());
    Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
}

/// The cache directory of the inner kernel for the current key.
pub fn current_dir(paths: &Paths, kernel: &KernelBuild) -> Result<PathBuf> {
    Ok(paths.kernels().join(format!("tiny-{}", key(paths, &kernel.src)?)))
}

/// Returns the inner kernel and a fresh initramfs (with `guest`, the guest
/// test program, for `vfio-guest inner-dma`), building the kernel if it is
/// not cached.
pub fn inner_guest(paths: &Paths, kernel: &KernelBuild, guest: &Path) -> Result<InnerGuest> {
    let dir = current_dir(paths, kernel)?;
    let build = dir.join("build");
    let bzimage = build.join("arch/x86/boot/bzImage");
    let stamp = dir.join("ready");
    if stamp.exists() && bzimage.exists() {
        step(&format!("inner guest kernel: cached in {}", dir.display()));
    } else {
        step(&format!("inner guest kernel: building a tiny kernel for the QEMU case into {}", dir.display()));
        std::fs::create_dir_all(&build)?;
        let fragment = paths.root().join(FRAGMENT);
        cmd::output(
            Command::new("make")
                .arg("-C")
                .arg(&kernel.src)
                .arg(format!("O={}", build.display()))
                .args(["LLVM=1", "allnoconfig"])
                .env("KCONFIG_ALLCONFIG", &fragment),
        )
        .context("configuring the inner kernel failed")?;
        let config = std::fs::read_to_string(build.join(".config"))?;
        let dropped = config_mismatches(&std::fs::read_to_string(&fragment)?, &config);
        if !dropped.is_empty() {
            bail!("Kconfig did not keep these options of {FRAGMENT}:\n  {}", dropped.join("\n  "));
        }
        let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) + 1;
        let mut make = Command::new("make");
        make.arg("-C").arg(&build).args(["LLVM=1", &format!("-j{jobs}"), "bzImage"]);
        note("compiling (about 3 minutes on 2 cores; progress every 30 s)");
        let start = Instant::now();
        cmd::run_with_progress(make, &dir.join("build.log"), "inner kernel build")?;
        std::fs::write(&stamp, format!("built in {} s\n", start.elapsed().as_secs()))?;
        note(&format!("inner kernel built in {} s", start.elapsed().as_secs()));
    }
    let initramfs = initramfs(paths, guest)?;
    Ok(InnerGuest { bzimage, initramfs })
}

/// The shared libraries `ldd` lists for `binary` (absolute paths).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(binary)).with_context(|| format!("ldd {}", binary.display()))?;
    Ok(parse_ldd(&out))
}

/// `ldd` lines: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            path.split_whitespace().next().filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect()
}

/// Packs `/init` (the script), busybox and the guest test program with its
/// shared libraries into an uncompressed newc cpio.
fn initramfs(paths: &Paths, guest: &Path) -> Result<PathBuf> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: install busybox-static (`cargo xtask setup`)");
    }
    let stage = paths.vm_results().join("inner-initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy(BUSYBOX, stage.join("bin/busybox"))?;
    std::fs::copy(guest, stage.join("bin/vfio-guest")).with_context(|| format!("cannot copy {}", guest.display()))?;
    for lib in shared_libraries(guest)? {
        let to = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&lib, &to).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    std::fs::copy(paths.root().join(INIT), stage.join("init")).with_context(|| format!("cannot read {INIT}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(stage.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let out = paths.vm_results().join("inner-initramfs.cpio");
    cmd::run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("cd '{}' && find . | cpio --quiet -o -H newc -R 0:0 > '{}'", stage.display(), out.display())),
    )
    .context("cpio failed (the cpio package is missing? run `cargo xtask setup`)")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ldd_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f98)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f98)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f98)\n";
        let libs: Vec<String> = super::parse_ldd(out).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            libs,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
        );
    }
}
