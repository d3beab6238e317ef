//! The VM booted from the project's own kernel packages: the proof, in
//! `cargo xtask test`, that README's "Loading the modules on a real
//! machine" works as written.
//!
//! The steps are a developer's: `cargo xtask host-kernel` (here from the
//! test kernel's config, so a small build, cached by its key), `cargo xtask
//! modules --kdir <its build tree>`, the image package unpacked into a root
//! (instead of `dpkg -i` on a machine), `cargo xtask install --kdir ...
//! --root <root>`, then a boot of the packaged kernel in which `vfio-guest
//! installed` loads everything with plain `modprobe` and runs a few mtty
//! cases on it. Its results are the `installed.*` lines.

use crate::cmd::{self, note, step};
use crate::host_kernel::{self, Base, HostKernelOpts};
use crate::install;
use crate::kernel::KernelBuild;
use crate::modules;
use crate::paths::Paths;
use crate::progress;
use crate::test::{judge, Prepared, Tally};
use crate::vm::Boot;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The name every result of this boot starts with (`--filter`, `--skip`).
pub const PREFIX: &str = "installed.";

/// The kernel's build number (`#N` in `uname -v`), which bindeb-pkg also
/// makes the package version's Debian revision: the `2` of
/// `linux-image-6.12.118-vfio-rs_6.12.118-2_amd64.deb`.
pub fn build_number(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    let version = name.split('_').nth(1)?;
    let (_, revision) = version.rsplit_once('-')?;
    (!revision.is_empty() && revision.chars().all(|c| c.is_ascii_digit())).then(|| revision.to_owned())
}

/// Builds (or finds) the packages and the modules for them, lays out the
/// root and boots it; the results as the suites' are counted.
pub fn run(paths: &Paths, p: &Prepared) -> Result<Tally> {
    step("installed kernel: Debian packages of the test kernel's config, as `cargo xtask host-kernel --from-test-kernel` builds them");
    let opts = HostKernelOpts { base: Some(Base::TestKernel), localmodconfig: false, configure_only: false };
    let Some(host) = host_kernel::build(paths, opts)? else { bail!("host-kernel stopped after configuring") };
    let release = host.packages.release.clone();
    modules::modules(paths, &KernelBuild::external(host.build.clone(), None))?;

    let root = paths.vm_results().join("installed-root");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("cannot remove the old {}", root.display()))?;
    }
    std::fs::create_dir_all(&root)?;
    note(&format!("dpkg-deb -x {} {}", host.packages.image.display(), root.display()));
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&host.packages.image).arg(&root))
        .context("unpacking the image package (dpkg-deb is Debian's package `dpkg`)")?;
    install::install(paths, Some(host.build.clone()), &root, false)?;

    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    if !image.is_file() {
        bail!("the image package has no boot/vmlinuz-{release}: see {}", root.display());
    }
    let results = paths.vm_results().join("installed-results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    let Some(build) = build_number(&host.packages.image) else {
        bail!("{}: not a package name of bindeb-pkg's (linux-image-<release>_<version>-<build>_<arch>.deb)", host.packages.image.display());
    };
    let exec = format!(
        "{} installed --results {} --release {release} --build {build} --root {}",
        p.guest.display(),
        results.display(),
        root.display()
    );
    step(&format!("VM: booting the packaged {release} and loading the modules with modprobe"));
    let boot = Boot {
        accel: p.accel,
        exec,
        results: Some(results.clone()),
        timeout: Duration::from_secs(10 * 60),
        interactive: false,
        echo: false,
        icount: false,
    };
    let log = paths.vm_results().join("installed-console.log");
    let done = AtomicBool::new(false);
    let ktap = results.join("results.ktap");
    let run = std::thread::scope(|scope| {
        scope.spawn(|| progress::Follower::follow(&ktap, &done));
        let run = boot.run_image(paths, &image, &log);
        done.store(true, Ordering::Relaxed);
        run
    })?;
    Ok(judge(&run, &results, &log, PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_number_is_the_debian_revision_of_the_image_package() {
        let deb = Path::new("/c/linux-image-6.12.118-vfio-rs_6.12.118-2_amd64.deb");
        assert_eq!(build_number(deb).as_deref(), Some("2"));
        assert_eq!(build_number(Path::new("/c/linux-image-6.12.118-vfio-rs_6.12.118_amd64.deb")), None);
        assert_eq!(build_number(Path::new("/c/vmlinuz")), None);
    }
}
