//! `cargo xtask setup`: installs what the build and the VM need, idempotently.
//!
//! Everything installed here is pinned, so the kernel cache key (which hashes
//! the tool versions) only changes when a pin changes.

use crate::cmd::{self, note, step};
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Debian packages the kernel build, the module build and the VM need.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "qemu-system-x86",
    "clang",
    "lld",
    "llvm",
    "libclang-dev",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "kmod",
    "busybox-static",
    "rsync",
    "python3-venv",
    "mdevctl",
    "linux-perf",
];

/// The bindgen-cli release the modules' bindings are generated with.
pub const BINDGEN_VERSION: &str = "0.70.1";
/// The virtme-ng release that boots the test VM.
pub const VIRTME_NG_VERSION: &str = "1.42";

/// Installs whatever is missing; prints one line per check.
pub fn setup(paths: &Paths) -> Result<()> {
    step("setup: checking the tools the build and the VM need");
    debian_packages()?;
    rust_src()?;
    bindgen()?;
    virtme_ng(paths)?;
    Ok(())
}

fn is_root() -> bool {
    cmd::probe_version(Command::new("id").arg("-u")).as_deref() == Some("0")
}

fn missing_debian_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for pkg in DEBIAN_PACKAGES {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .context("dpkg-query not found: this project expects a Debian 12 machine")?;
        let text = String::from_utf8_lossy(&status.stdout);
        if !text.contains("install ok installed") {
            missing.push(*pkg);
        }
    }
    Ok(missing)
}

fn debian_packages() -> Result<()> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        note(&format!("Debian packages: all {} present", DEBIAN_PACKAGES.len()));
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}\n  install them with:\n    sudo apt-get update && sudo apt-get install -y {list}\n  then run the command again"
        );
    }
    note(&format!("installing Debian packages: {list}"));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update failed: check the network access to Debian's mirrors")?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_debian_packages()?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["component", "list", "--installed"]))
        .context("rustup is needed to add the rust-src component the kernel's Rust build uses")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        note("rustup component rust-src: present");
        return Ok(());
    }
    note("adding rustup component rust-src (the kernel builds `core` from it)");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// The version bindgen prints, e.g. "bindgen 0.70.1".
pub fn bindgen_version() -> Option<String> {
    cmd::probe_version(Command::new("bindgen").arg("--version"))
}

fn bindgen() -> Result<()> {
    let want = format!("bindgen {BINDGEN_VERSION}");
    if bindgen_version().as_deref() == Some(want.as_str()) {
        note(&format!("{want}: present"));
        return Ok(());
    }
    note(&format!("installing bindgen-cli {BINDGEN_VERSION} with cargo install (about 2 minutes)"));
    cmd::run(Command::new("cargo").args([
        "install",
        "--locked",
        "--quiet",
        "--force",
        &format!("bindgen-cli@{BINDGEN_VERSION}"),
    ]))?;
    match bindgen_version() {
        Some(v) if v == want => Ok(()),
        other => bail!(
            "after installing, `bindgen --version` says {other:?}, expected {want}: put ~/.cargo/bin first in PATH"
        ),
    }
}

fn virtme_ng(paths: &Paths) -> Result<()> {
    let vng = paths.vng();
    let have = cmd::probe_version(Command::new(&vng).arg("--version"));
    if let Some(v) = &have {
        if v.contains(VIRTME_NG_VERSION) {
            note(&format!("virtme-ng {VIRTME_NG_VERSION}: present in {}", paths.venv().display()));
            return Ok(());
        }
    }
    note(&format!(
        "installing virtme-ng {VIRTME_NG_VERSION} into the project's venv {}",
        paths.venv().display()
    ));
    std::fs::create_dir_all(paths.cache())?;
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(paths.venv()))
        .context("python3 -m venv failed: install python3-venv")?;
    cmd::run(
        Command::new(paths.venv().join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )?;
    Ok(())
}
