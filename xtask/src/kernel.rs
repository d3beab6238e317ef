//! `cargo xtask kernel`: unpack Debian's linux-source-6.12, configure it from
//! `images/vfio-test.config` on top of `allnoconfig`, and build it with LLVM.
//!
//! Two flavours share that fragment: the *debug* kernel every test runs on
//! (KASAN, lockdep, kmemleak, ...), and the *release* kernel `cargo xtask
//! bench` measures on by default, which `images/vfio-release.config` turns
//! the checkers off in (they cost more than the code under test, and cost
//! the C and the Rust modules differently).
//!
//! Builds are cached under `<cache>/kernel/<package version>[-release]-<key>/`,
//! where the key hashes the config fragment(s), the build recipe and the
//! toolchain versions (clang, lld, rustc, bindgen). Nothing rebuilds while
//! none of them changes; an interrupted build resumes where `make` stopped.

use crate::cmd::{self, note, step};
use crate::paths::Paths;
use crate::setup;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the way the kernel is built changes, so old caches are not reused.
const RECIPE: &str = "recipe-1: allnoconfig+fragment, LLVM=1, bzImage modules modules_install";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const FRAGMENT: &str = "images/vfio-test.config";
/// Applied over [`FRAGMENT`] for the release flavour.
const RELEASE_OVERLAY: &str = "images/vfio-release.config";

/// Which kernel: the checkers on (tests) or off (benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// `images/vfio-test.config`: KASAN, lockdep, kmemleak, fault injection.
    Debug,
    /// The same with `images/vfio-release.config` over it: no checkers.
    Release,
}

impl Flavor {
    fn dir_tag(self) -> &'static str {
        match self {
            Flavor::Debug => "",
            Flavor::Release => "-release",
        }
    }
}

/// A configured and built kernel in the cache.
pub struct KernelBuild {
    /// The unpacked source tree.
    pub src: PathBuf,
    /// The `O=` build directory; out-of-tree modules build against it.
    pub build: PathBuf,
    /// `modules_install` output: `modprobe -d <modroot>` loads from it.
    pub modroot: PathBuf,
    /// `make kernelrelease`.
    pub release: String,
    pub flavor: Flavor,
    /// Built elsewhere (`--kdir`), not one of the cached kernels.
    pub external: bool,
}

impl KernelBuild {
    /// A kernel built elsewhere (for `cargo xtask modules --kdir`). Without
    /// `src`, an `O=` tree's `source` link (Kbuild makes it) names the
    /// source tree, else the build tree is taken to be the source tree too.
    pub fn external(build: PathBuf, src: Option<PathBuf>) -> Self {
        let src = src.unwrap_or_else(|| match std::fs::canonicalize(build.join("source")) {
            Ok(s) if s.join("Makefile").exists() => s,
            _ => build.clone(),
        });
        KernelBuild {
            src,
            modroot: PathBuf::new(),
            release: String::new(),
            build,
            flavor: Flavor::Debug,
            external: true,
        }
    }

    /// The bootable image.
    pub fn bzimage(&self) -> PathBuf {
        self.build.join("arch/x86/boot/bzImage")
    }
}

/// `-jN` for make: one job more than there are cores.
pub fn make_jobs() -> String {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    format!("-j{}", n + 1)
}

/// The fragment a flavour is configured from: the test fragment, with the
/// release overlay's options replacing the lines that name the same option.
fn fragment(paths: &Paths, flavor: Flavor) -> Result<String> {
    let read = |f: &str| std::fs::read_to_string(paths.root().join(f)).with_context(|| format!("cannot read {f}"));
    let base = read(FRAGMENT)?;
    match flavor {
        Flavor::Debug => Ok(base),
        Flavor::Release => Ok(overlay_fragment(&base, &read(RELEASE_OVERLAY)?, RELEASE_OVERLAY)),
    }
}

/// The option a fragment line sets (`CONFIG_X=...` or `# CONFIG_X is not set`).
fn option_name(line: &str) -> Option<&str> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ").and_then(|r| r.strip_suffix(" is not set")) {
        return Some(rest);
    }
    line.starts_with("CONFIG_").then(|| line.split_once('=').map_or(line, |(n, _)| n))
}

/// `base` without the lines for options `overlay` sets, then `overlay`
/// under a `# --- <heading> ---` line.
pub fn overlay_fragment(base: &str, overlay: &str, heading: &str) -> String {
    let over: std::collections::HashSet<&str> = overlay.lines().filter_map(option_name).collect();
    let mut out: String = base
        .lines()
        .filter(|l| option_name(l).is_none_or(|n| !over.contains(n)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("\n# --- {heading} ---\n"));
    out.push_str(overlay);
    out
}

/// The installed version of the kernel source package, e.g. `6.12.118-1~deb12u1`.
pub fn source_version() -> Result<String> {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]))
        .with_context(|| format!("{SOURCE_PACKAGE} is not installed: run `cargo xtask setup`"))
}

/// The versions of the tools that compile the kernel, one `tool version` line each.
pub fn toolchain_versions() -> String {
    let tool = |c: &mut Command| cmd::probe_version(c).unwrap_or_else(|| "missing".into());
    format!(
        "clang {}\nlld {}\nrustc {}\nbindgen {}\n",
        tool(Command::new("clang").arg("--version")),
        tool(Command::new("ld.lld").arg("--version")),
        tool(Command::new("rustc").arg("--version")),
        setup::bindgen_version().unwrap_or_else(|| "missing".into()),
    )
}

/// The cache key of a build: the first 6 bytes of the SHA-256 of
/// everything it depends on, in hex.
pub fn cache_key(material: &str) -> String {
    Sha256::digest(material.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// A cache directory name: `<package version><tag>-<key>`, with no `~`
/// (make cannot have it in a path).
pub fn cache_dir_name(pkg_version: &str, tag: &str, key: &str) -> String {
    format!("{pkg_version}{tag}-{key}").replace('~', "_")
}

/// Everything the cache key covers, as text, so a stale-cache message can say what changed.
fn key_material(paths: &Paths, flavor: Flavor) -> Result<(String, String)> {
    let pkg_version = source_version()?;
    let fragment = fragment(paths, flavor)?;
    let material = format!("{RECIPE}\npackage {pkg_version}\n{}--- fragment\n{fragment}", toolchain_versions());
    Ok((pkg_version, material))
}

/// The cache directory of the kernel build for the current key.
fn current_dir(paths: &Paths, flavor: Flavor) -> Result<PathBuf> {
    let (pkg_version, material) = key_material(paths, flavor)?;
    Ok(paths.kernels().join(cache_dir_name(&pkg_version, flavor.dir_tag(), &cache_key(&material))))
}

/// The finished build in cache directory `dir`, if its stamp and bzImage are there.
fn finished_build(dir: &Path, flavor: Flavor) -> Option<KernelBuild> {
    let release = std::fs::read_to_string(dir.join("ready")).ok()?;
    let kb = KernelBuild {
        src: dir.join("src"),
        build: dir.join("build"),
        modroot: dir.join("modroot"),
        release: release.trim().to_owned(),
        flavor,
        external: false,
    };
    if kb.bzimage().exists() {
        return Some(kb);
    }
    note("the cache stamp exists but bzImage is gone: rebuilding");
    None
}

/// The cached build of `flavor` for the current key, without building one
/// (`cargo xtask install` only needs to know what the modules were built against).
pub fn cached(paths: &Paths, flavor: Flavor) -> Result<Option<KernelBuild>> {
    Ok(finished_build(&current_dir(paths, flavor)?, flavor))
}

/// Returns the cached build of `flavor` for the current key, building it if needed.
pub fn kernel(paths: &Paths, flavor: Flavor) -> Result<KernelBuild> {
    let (pkg_version, material) = key_material(paths, flavor)?;
    let dir = current_dir(paths, flavor)?;
    let src = dir.join("src");
    let build = dir.join("build");
    let modroot = dir.join("modroot");
    let stamp = dir.join("ready");

    let cached = || finished_build(&dir, flavor);
    if let Some(kb) = cached() {
        step(&format!("kernel {}: cached in {}", kb.release, dir.display()));
        return Ok(kb);
    }
    // One build per cache directory at a time: a second `cargo xtask` that
    // needs the same kernel waits for the first, then uses its build (two
    // makes in one tree break each other's objects).
    let _lock = lock_build_dir(&dir, "this kernel")?;
    if let Some(kb) = cached() {
        step(&format!("kernel {}: built by the other cargo xtask, in {}", kb.release, dir.display()));
        return Ok(kb);
    }
    report_other_caches(paths);
    step(&format!("kernel: building {SOURCE_PACKAGE} {pkg_version} ({flavor:?}) into {}", dir.display()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("key.txt"), &material)?;

    unpack_source(&src)?;
    configure(paths, flavor, &dir, &src, &build)?;

    let mut make = Command::new("make");
    make.arg("-C").arg(&build).args(["LLVM=1", &make_jobs(), "bzImage", "modules"]);
    note("compiling (about 9 minutes on 2 cores; progress every 30 s)");
    cmd::run_with_progress(make, &dir.join("build.log"), "kernel build")?;

    let _ = std::fs::remove_dir_all(&modroot);
    let mut install = Command::new("make");
    install
        .arg("-C")
        .arg(&build)
        .args(["LLVM=1", "modules_install"])
        .arg(format!("INSTALL_MOD_PATH={}", modroot.display()));
    cmd::run_with_progress(install, &dir.join("modules_install.log"), "modules_install")?;

    let release = cmd::output(Command::new("make").arg("-s").arg("-C").arg(&build).args(["LLVM=1", "kernelrelease"]))?
        .trim()
        .to_owned();
    std::fs::write(&stamp, &release)?;
    note(&format!("kernel {release} ready"));
    Ok(KernelBuild { src, build, modroot, release, flavor, external: false })
}

/// Unpacks the kernel source into `src` unless it is there already (an
/// interrupted unpack leaves only a temporary directory beside it).
pub fn unpack_source(src: &Path) -> Result<()> {
    if src.join("Makefile").exists() {
        return Ok(());
    }
    note(&format!("unpacking {SOURCE_TARBALL} (about 20 s)"));
    let unpack = src.with_file_name("unpack.tmp");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)?;
    cmd::run(Command::new("tar").arg("-xf").arg(SOURCE_TARBALL).arg("-C").arg(&unpack))
        .with_context(|| format!("cannot unpack {SOURCE_TARBALL}: run `cargo xtask setup`"))?;
    let _ = std::fs::remove_dir_all(src);
    std::fs::rename(unpack.join("linux-source-6.12"), src).context("the tarball did not contain linux-source-6.12/")?;
    let _ = std::fs::remove_dir_all(&unpack);
    Ok(())
}

/// `allnoconfig` with the fragment forced, then a check that Kconfig kept
/// every option the fragment asks for (it silently drops options whose
/// dependencies are not met).
fn configure(paths: &Paths, flavor: Flavor, dir: &Path, src: &Path, build: &Path) -> Result<()> {
    let fragment = fragment(paths, flavor)?;
    let fragment_path = dir.join("fragment.config");
    std::fs::write(&fragment_path, &fragment)?;
    std::fs::create_dir_all(build)?;
    let what = match flavor {
        Flavor::Debug => FRAGMENT.to_owned(),
        Flavor::Release => format!("{FRAGMENT} + {RELEASE_OVERLAY}"),
    };
    note(&format!("configuring: allnoconfig + {what}"));
    cmd::output(
        Command::new("make")
            .arg("-C")
            .arg(src)
            .arg(format!("O={}", build.display()))
            .args(["LLVM=1", "allnoconfig"])
            .env("KCONFIG_ALLCONFIG", &fragment_path),
    )?;
    let config = std::fs::read_to_string(build.join(".config"))?;
    check_kept(&fragment, &config, &what, src)
}

/// Fails naming each option of `wanted` that `config` (Kconfig's result,
/// from the source tree `src`) does not have as asked: Kconfig silently
/// drops options whose dependencies are not met.
pub fn check_kept(wanted: &str, config: &str, what: &str, src: &Path) -> Result<()> {
    let dropped = config_mismatches(wanted, config);
    if !dropped.is_empty() {
        bail!(
            "Kconfig did not keep these options of {what} (a dependency is missing or the toolchain fails a check; for CONFIG_RUST run `make LLVM=1 rustavailable` in {}):\n  {}",
            src.display(),
            dropped.join("\n  ")
        );
    }
    Ok(())
}

/// Lines of `fragment` whose setting `config` does not have.
pub fn config_mismatches(fragment: &str, config: &str) -> Vec<String> {
    let value_of = |name: &str| -> Option<String> {
        config.lines().find_map(|l| {
            let l = l.trim();
            if let Some(v) = l.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return Some(v.to_owned());
            }
            if l == format!("# {name} is not set") {
                return Some("n".to_owned());
            }
            None
        })
    };
    let mut out = Vec::new();
    for line in fragment.lines().map(str::trim) {
        let (name, want) = if let Some(rest) = line.strip_prefix("# ").and_then(|r| r.strip_suffix(" is not set")) {
            (rest, "n".to_owned())
        } else if line.starts_with("CONFIG_") {
            match line.split_once('=') {
                Some((n, v)) => (n, v.to_owned()),
                None => continue,
            }
        } else {
            continue;
        };
        let got = value_of(name).unwrap_or_else(|| "n".to_owned());
        if got != want {
            out.push(format!("{name}: wanted {want}, got {got}"));
        }
    }
    out
}

/// `cargo xtask clean-cache`: removes the whole cache, or with `stale` only
/// the kernel builds whose key no longer matches.
pub fn clean_cache(paths: &Paths, stale: bool) -> Result<()> {
    if !stale {
        step(&format!("removing {}", paths.cache().display()));
        if paths.cache().exists() {
            std::fs::remove_dir_all(paths.cache())?;
        }
        return Ok(());
    }
    let keep = current_dirs(paths)?;
    let Ok(entries) = std::fs::read_dir(paths.kernels()) else { return Ok(()) };
    for e in entries.flatten() {
        if !keep.contains(&e.path()) {
            step(&format!("removing stale kernel build {}", e.path().display()));
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// The cache directories of the current key: both flavours and the QEMU
/// case's tiny kernel (crate::inner).
fn current_dirs(paths: &Paths) -> Result<Vec<PathBuf>> {
    let debug = current_dir(paths, Flavor::Debug)?;
    let inner = crate::inner::current_dir(paths, &KernelBuild::external(PathBuf::new(), Some(debug.join("src"))))?;
    Ok(vec![current_dir(paths, Flavor::Release)?, inner, debug])
}

/// Creates the cache directory `dir` and takes its `build.lock`, waiting
/// (and saying so) while another `cargo xtask` builds `what` there. The
/// lock is held until the returned file is dropped.
pub fn lock_build_dir(dir: &Path, what: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::create(dir.join("build.lock"))?;
    if lock.try_lock().is_err() {
        note(&format!("another cargo xtask is building {what} in {}: waiting for it", dir.display()));
        lock.lock().with_context(|| format!("cannot lock {}", dir.join("build.lock").display()))?;
    }
    Ok(lock)
}

fn report_other_caches(paths: &Paths) {
    let Ok(entries) = std::fs::read_dir(paths.kernels()) else { return };
    let Ok(keep) = current_dirs(paths) else { return };
    let others: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| !keep.contains(p)).collect();
    if !others.is_empty() {
        note(&format!(
            "the config or toolchain changed since the {} older kernel build(s) in {}; `cargo xtask clean-cache --stale` removes them",
            others.len(),
            paths.kernels().display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::{config_mismatches, overlay_fragment, KernelBuild};

    #[test]
    fn overlay_replaces_the_options_it_names() {
        let base = "# head\nCONFIG_A=y\nCONFIG_KASAN=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        let over = "# CONFIG_KASAN is not set\nCONFIG_B=y\n";
        let merged = overlay_fragment(base, over, "over");
        assert!(merged.contains("CONFIG_A=y\n") && merged.contains("CONFIG_C=\"x\"\n") && merged.contains("# head"));
        assert!(merged.contains("\n# --- over ---\n"), "{merged}");
        assert!(!merged.contains("CONFIG_KASAN=y") && !merged.contains("# CONFIG_B is not set"));
        let config = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=\"x\"\n";
        assert!(config_mismatches(&merged, config).is_empty());
        assert_eq!(config_mismatches(&merged, "CONFIG_A=y\nCONFIG_KASAN=y\nCONFIG_B=y\nCONFIG_C=\"x\"\n"), vec!["CONFIG_KASAN: wanted n, got y"]);
    }

    #[test]
    fn mismatches_name_dropped_and_wrong_options() {
        let fragment = "# comment\nCONFIG_RUST=y\nCONFIG_VFIO=m\n# CONFIG_IOMMUFD is not set\nCONFIG_NR_CPUS=8\n";
        let config = "CONFIG_VFIO=y\n# CONFIG_RUST is not set\nCONFIG_IOMMUFD=y\nCONFIG_NR_CPUS=8\n";
        assert_eq!(
            config_mismatches(fragment, config),
            vec![
                "CONFIG_RUST: wanted y, got n",
                "CONFIG_VFIO: wanted m, got y",
                "CONFIG_IOMMUFD: wanted n, got y",
            ]
        );
    }

    #[test]
    fn an_external_o_tree_finds_its_source_through_the_source_link() {
        let base = std::env::temp_dir().join(format!("xtask-kernel-external-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (src, build) = (base.join("src"), base.join("build"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        // Without a source link (or one to no kernel tree), the build tree is the source tree.
        assert_eq!(KernelBuild::external(build.clone(), None).src, build);
        std::os::unix::fs::symlink(&src, build.join("source")).unwrap();
        assert_eq!(KernelBuild::external(build.clone(), None).src, build, "src has no Makefile yet");
        std::fs::write(src.join("Makefile"), "").unwrap();
        assert_eq!(KernelBuild::external(build.clone(), None).src, std::fs::canonicalize(&src).unwrap());
        // --ksrc wins.
        assert_eq!(KernelBuild::external(build.clone(), Some(base.join("other"))).src, base.join("other"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn absent_option_counts_as_unset() {
        assert!(config_mismatches("# CONFIG_FOO is not set\n", "").is_empty());
        assert_eq!(config_mismatches("CONFIG_FOO=y\n", ""), vec!["CONFIG_FOO: wanted y, got n"]);
    }

    #[test]
    fn matching_config_has_no_mismatch() {
        let text = "CONFIG_A=y\nCONFIG_B=\"x\"\n# CONFIG_C is not set\n";
        assert!(config_mismatches(text, text).is_empty());
    }
}
