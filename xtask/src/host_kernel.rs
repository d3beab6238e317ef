//! `cargo xtask host-kernel`: Debian packages (`make bindeb-pkg`) of the
//! same linux-source-6.12 the tests run on, for a developer's own machine,
//! configured so that our modules load on it.
//!
//! The config starts from a base (the running kernel's, a file, or the
//! cached test kernel's), optionally trimmed by `make localmodconfig`, and
//! gets [`REQUIRED`] and [`LOCAL`] over it, plus whatever has to go for
//! `CONFIG_RUST` to be possible ([`rust_conflicts`]); `make olddefconfig`
//! fills in the rest and the test kernel's checker then fails naming any
//! option Kconfig did not keep.
//!
//! Builds are cached under `<cache>/host-kernel/<package version>-<key>/`
//! (the key hashes the base config, the settings, the toolchain and, with
//! `--localmodconfig`, the loaded modules), with the `O=` tree in `build/`
//! (out-of-tree modules build against it, so it stays) and the packages
//! beside it, where bindeb-pkg puts them.

use crate::cmd::{self, note, step};
use crate::kernel::{self, Flavor};
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bump when the way the packages are built changes, so old caches are not reused.
const RECIPE: &str = "host-recipe-2: base (+localmodconfig) + settings, olddefconfig, LLVM=1 bindeb-pkg; \
     test-kernel base: a copy of its build tree on its source, its release";

/// What our modules need of the kernel they load into.
pub const REQUIRED: &str = "\
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_RUST=y
CONFIG_VFIO=m
CONFIG_VFIO_GROUP=y
CONFIG_VFIO_CONTAINER=y
# The C type1: the reference, and what vfio's softdep asks for.
CONFIG_VFIO_IOMMU_TYPE1=m
CONFIG_VFIO_MDEV=m
CONFIG_VFIO_PCI=m
# VFIO_MDEV has no prompt: only a driver that uses it turns it on. The C
# mtty sample does, and is the reference for ours.
CONFIG_SAMPLES=y
CONFIG_SAMPLE_VFIO_MDEV_MTTY=m
# Else iommufd serves /dev/vfio/vfio and no type1 module ever runs.
# CONFIG_IOMMUFD_VFIO_CONTAINER is not set
";

/// The release suffix: `6.12.N-vfio-rs-host`, so the packages and
/// `/lib/modules/<release>` never clash with Debian's kernels or the test kernel.
pub const LOCAL: &str = "\
CONFIG_LOCALVERSION=\"-vfio-rs-host\"
# CONFIG_LOCALVERSION_AUTO is not set
";

/// pahole's `--lang_exclude`, which BTF needs to leave Rust's debug info
/// out, came with 1.24 (6.12's PAHOLE_HAS_LANG_EXCLUDE).
const PAHOLE_LANG_EXCLUDE: u32 = 124;

/// Where the base config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// A config file: `--config FILE`, or the running kernel's `/boot/config-<release>`.
    File(PathBuf),
    /// The cached test kernel's `.config` (a small, quick build).
    TestKernel,
}

/// `cargo xtask host-kernel`'s options.
pub struct HostKernelOpts {
    pub base: Option<Base>,
    pub localmodconfig: bool,
    /// Stop after the config: to see what changes and how long the build would take.
    pub configure_only: bool,
}

/// A setting changed in the base config so that `CONFIG_RUST` can be on.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// Fragment lines (`CONFIG_X=v` or `# CONFIG_X is not set`).
    pub lines: Vec<String>,
    /// Said to the user.
    pub why: String,
}

/// The value `config` gives option `name` (`n` for `# ... is not set` and
/// for an option it does not name).
pub fn value_of(config: &str, name: &str) -> String {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix(name).and_then(|r| r.strip_prefix('=')).map(str::to_owned))
        .unwrap_or_else(|| "n".to_owned())
}

/// pahole's version as Kconfig counts it (`v1.24` is 124).
pub fn parse_pahole_version(line: &str) -> Option<u32> {
    let (major, minor) = line.trim().trim_start_matches('v').split_once('.')?;
    Some(major.parse::<u32>().ok()? * 100 + minor.parse::<u32>().ok()?)
}

/// What in `base` 6.12's `config RUST` (init/Kconfig) does not allow, and
/// what `cargo xtask host-kernel` sets instead. `pahole` is the installed
/// pahole's version; `in_source` says whether a path exists in the source tree.
pub fn rust_conflicts(base: &str, pahole: Option<u32>, in_source: &dyn Fn(&str) -> bool) -> Vec<Change> {
    let on = |name: &str| value_of(base, name) != "n";
    let unset = |name: &str| format!("# {name} is not set");
    let mut out = Vec::new();
    if on("CONFIG_RANDSTRUCT_FULL") || on("CONFIG_RANDSTRUCT_PERFORMANCE") {
        out.push(Change {
            lines: vec![
                "CONFIG_RANDSTRUCT_NONE=y".into(),
                unset("CONFIG_RANDSTRUCT_FULL"),
                unset("CONFIG_RANDSTRUCT_PERFORMANCE"),
            ],
            why: "RANDSTRUCT off: RUST depends on !RANDSTRUCT (Rust code would not see C's randomized struct layouts)".into(),
        });
    }
    if on("CONFIG_MODVERSIONS") {
        out.push(Change {
            lines: vec![unset("CONFIG_MODVERSIONS")],
            why: "MODVERSIONS off: RUST depends on !MODVERSIONS in 6.12 (Rust symbols get no CRCs); modules then \
                  load only into the kernel build whose vermagic they carry, which is how ours are built anyway"
                .into(),
        });
    }
    if on("CONFIG_DEBUG_INFO_BTF") {
        let lto = on("CONFIG_LTO_CLANG");
        let old_pahole = pahole.is_none_or(|v| v < PAHOLE_LANG_EXCLUDE);
        if lto || old_pahole {
            let cause = if lto {
                "and no LTO, which this config has".to_owned()
            } else {
                match pahole {
                    None => "which is not installed (Debian package dwarves: install it to keep BTF)".to_owned(),
                    Some(v) => format!("and this one is {}.{} (install dwarves 1.24+ to keep BTF)", v / 100, v % 100),
                }
            };
            out.push(Change {
                lines: vec![unset("CONFIG_DEBUG_INFO_BTF")],
                why: format!(
                    "DEBUG_INFO_BTF off: with RUST it needs pahole 1.24 or later (--lang_exclude=rust) {cause}; \
                     BPF programs that rely on the kernel's BTF (CO-RE, bpftrace) will not run on this kernel"
                ),
            });
        }
    }
    for name in ["CONFIG_SYSTEM_TRUSTED_KEYS", "CONFIG_SYSTEM_REVOCATION_KEYS"] {
        let value = value_of(base, name);
        let file = value.trim_matches('"');
        if value != "n" && !file.is_empty() && !in_source(file) {
            out.push(Change {
                lines: vec![format!("{name}=\"\"")],
                why: format!(
                    "{} emptied: it names {file}, which linux-source-6.12 does not contain (a distribution's \
                     certificates come with its own builds); the build would stop at certs/",
                    name.trim_start_matches("CONFIG_")
                ),
            });
        }
    }
    out
}

/// The fragment applied over the base: [`REQUIRED`], [`LOCAL`] unless
/// the base keeps its own release suffix (`local`), and the changes.
pub fn settings(changes: &[Change], local: bool) -> String {
    let mut text = if local { format!("{REQUIRED}{LOCAL}") } else { REQUIRED.to_owned() };
    for c in changes {
        text.push_str(&format!("# {}\n", c.why));
        for l in &c.lines {
            text.push_str(l);
            text.push('\n');
        }
    }
    text
}

/// The command that builds the packages: out of tree, with LLVM, into
/// `build`; bindeb-pkg leaves the `.deb`s in `build`'s parent.
pub fn bindeb_command(src: &Path, build: &Path, jobs: &str) -> Command {
    let mut make = Command::new("make");
    make.arg("-C").arg(src).arg(format!("O={}", build.display())).args(["LLVM=1", jobs, "bindeb-pkg"]);
    make
}

/// Options set to `y` or `m`: how big a build is.
pub fn enabled_options(config: &str) -> usize {
    config.lines().filter(|l| l.starts_with("CONFIG_") && (l.ends_with("=y") || l.ends_with("=m"))).count()
}

/// The bindeb-pkg from the test kernel's config: its options set to y or m,
/// and minutes it took on 2 cores (measured; see the README).
const MEASURED: (usize, u64) = (735, 7);

/// A rough estimate of the build in minutes on this machine, from the
/// number of enabled options against the measured build.
pub fn estimate_minutes(enabled: usize, cores: usize) -> u64 {
    let (ref_enabled, ref_min) = MEASURED;
    (ref_min * enabled as u64 * 2).div_ceil(ref_enabled as u64 * cores.max(1) as u64).max(1)
}

/// The packages a finished build left, recorded in its `ready` stamp.
#[derive(Debug, PartialEq, Eq)]
pub struct Packages {
    pub release: String,
    pub image: PathBuf,
    pub headers: PathBuf,
}

impl Packages {
    fn stamp_text(&self) -> String {
        format!("{}\n{}\n{}\n", self.release, self.image.display(), self.headers.display())
    }

    fn from_stamp(text: &str) -> Option<Packages> {
        let mut l = text.lines();
        let p = Packages { release: l.next()?.to_owned(), image: l.next()?.into(), headers: l.next()?.into() };
        (p.image.exists() && p.headers.exists()).then_some(p)
    }
}

/// The image and headers packages of `release` among the file names in `dir`.
pub fn find_packages(names: &[String], release: &str) -> Option<(String, String)> {
    let pick = |prefix: String| names.iter().find(|n| n.starts_with(&prefix) && n.ends_with(".deb")).cloned();
    Some((pick(format!("linux-image-{release}_"))?, pick(format!("linux-headers-{release}_"))?))
}

/// Everything the cache key covers: the recipe, the source package's
/// version, the toolchain (`tools`: [`kernel::toolchain_versions`] and
/// pahole, which decides BTF), the settings, the loaded modules
/// (`--localmodconfig` only, else empty) and the base config's text.
pub fn key_material(pkg_version: &str, tools: &str, pahole: &str, modules: &str, base: &str) -> String {
    format!(
        "{RECIPE}\npackage {pkg_version}\n{tools}pahole {pahole}\n--- settings\n{REQUIRED}{LOCAL}\n\
         --- localmodconfig: loaded modules\n{modules}\n--- base config\n{base}"
    )
}

/// The default base: the running kernel's config, if /boot has it.
fn running_kernel_config() -> Result<PathBuf> {
    let release = cmd::output(Command::new("uname").arg("-r"))?.trim().to_owned();
    let file = PathBuf::from(format!("/boot/config-{release}"));
    if !file.exists() {
        bail!(
            "{} does not exist (the running kernel {release} did not come from a Debian package): pass \
             --config FILE with a config to start from, or --from-test-kernel for the small test kernel's",
            file.display()
        );
    }
    Ok(file)
}

/// The base config's text and a description of where it came from.
fn base_config(paths: &Paths, base: Option<Base>) -> Result<(String, String)> {
    let file = match base {
        Some(Base::TestKernel) => match kernel::cached(paths, Flavor::Debug)? {
            Some(k) => k.build.join(".config"),
            None => bail!("no test kernel in the cache: build it with `cargo xtask kernel`, or pass --config FILE"),
        },
        Some(Base::File(f)) => f,
        None => running_kernel_config()?,
    };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read the base config {}", file.display()))?;
    Ok((text, file.display().to_string()))
}

/// The loaded modules' names, sorted (what `make localmodconfig` keeps).
fn loaded_modules() -> Result<String> {
    let text = std::fs::read_to_string("/proc/modules")
        .context("cannot read /proc/modules (a kernel without loadable modules?): leave out --localmodconfig")?;
    let mut names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    names.sort_unstable();
    Ok(names.join(" "))
}

fn pahole() -> (Option<u32>, String) {
    let line = cmd::probe_version(Command::new("pahole").arg("--version"));
    (line.as_deref().and_then(parse_pahole_version), line.unwrap_or_else(|| "missing".into()))
}

/// A finished build: its packages and the `O=` tree modules build against.
pub struct HostBuild {
    pub packages: Packages,
    pub build: PathBuf,
}

/// `cargo xtask host-kernel`: builds (or finds) the packages and says what
/// to do with them.
pub fn host_kernel(paths: &Paths, opts: HostKernelOpts) -> Result<()> {
    if let Some(b) = build(paths, opts)? {
        report(&b);
    }
    Ok(())
}

/// Builds the packages, or finds them in the cache; `None` with `--configure-only`.
pub fn build(paths: &Paths, opts: HostKernelOpts) -> Result<Option<HostBuild>> {
    let configure_only = opts.configure_only;
    // From the test kernel, the build is incremental: it starts from a copy
    // of that kernel's build tree, on its source, and keeps its release
    // (`-vfio-rs`, as distinct from Debian's kernels as `-vfio-rs-host`), so
    // the config stays the same and bindeb-pkg mostly packages.
    let seed = match opts.base {
        Some(Base::TestKernel) => kernel::cached(paths, Flavor::Debug)?,
        _ => None,
    };
    let (base, base_name) = base_config(paths, opts.base)?;
    let pkg_version = kernel::source_version()?;
    let (pahole_version, pahole_line) = pahole();
    let modules = if opts.localmodconfig { loaded_modules()? } else { String::new() };
    let material = key_material(&pkg_version, &kernel::toolchain_versions(), &pahole_line, &modules, &base);
    let dir = paths.host_kernels().join(kernel::cache_dir_name(&pkg_version, "", &kernel::cache_key(&material)));
    let src = seed.as_ref().map_or_else(|| dir.join("src"), |k| k.src.clone());
    let build = dir.join("build");
    let stamp = dir.join("ready");

    let cached = || std::fs::read_to_string(&stamp).ok().and_then(|t| Packages::from_stamp(&t));
    if let Some(p) = cached() {
        step(&format!("host kernel {}: cached in {}", p.release, dir.display()));
        return Ok(Some(HostBuild { packages: p, build }));
    }
    // One build per cache directory at a time, as for the test kernel.
    let _lock = kernel::lock_build_dir(&dir, "these packages")?;
    if let Some(p) = cached() {
        step(&format!("host kernel {}: built by the other cargo xtask, in {}", p.release, dir.display()));
        return Ok(Some(HostBuild { packages: p, build }));
    }
    if !configure_only && cmd::probe_version(Command::new("dpkg-buildpackage").arg("--version")).is_none() {
        bail!("dpkg-buildpackage is missing (bindeb-pkg runs it): `sudo apt-get install dpkg-dev`, then run this again");
    }
    // The generated debian/control build-depends on debhelper-compat (= 12):
    // without debhelper, dpkg-buildpackage stops after the kernel's config.
    let debhelper = cmd::probe_version(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", "debhelper"]));
    if !configure_only && debhelper.as_deref() != Some("installed") {
        bail!("debhelper is missing (the packages bindeb-pkg builds need it): `sudo apt-get install debhelper`, or `cargo xtask setup`, then run this again");
    }
    step(&format!("host kernel: Debian packages of linux-source-6.12 {pkg_version} into {}", dir.display()));
    std::fs::write(dir.join("key.txt"), &material)?;
    match &seed {
        Some(k) if !build.join(".config").exists() => {
            note(&format!("copying the test kernel's build tree {} (about 10 s)", k.build.display()));
            let copy = dir.join("build.copy");
            let _ = std::fs::remove_dir_all(&copy);
            // `cp -a` keeps the times, so make sees every object as current.
            cmd::run(Command::new("cp").arg("-a").arg(&k.build).arg(&copy))?;
            std::fs::rename(&copy, &build)?;
        }
        Some(_) => {}
        None => kernel::unpack_source(&src)?,
    }
    let settings = Settings { localmodconfig: opts.localmodconfig, local: seed.is_none(), pahole: pahole_version };
    let config = configure(&src, &build, &base, &base_name, &settings)?;
    if let Some(k) = &seed {
        // A `.config` newer than `include/config/auto.conf` makes Kbuild
        // rewrite `autoconf.h`, and every object then rebuilds: with the
        // test kernel's config unchanged, give it back its time.
        if std::fs::read_to_string(k.build.join(".config")).is_ok_and(|c| c == config) {
            cmd::run(Command::new("touch").arg("-r").arg(k.build.join(".config")).arg(build.join(".config")))?;
            keep_objtool_current(&src, &build, &k.build)?;
        } else {
            note("the settings changed the test kernel's config: everything that depends on it is rebuilt");
        }
    }

    // A build interrupted earlier may have left packages of another build
    // number: only this build's may be found afterwards.
    for e in std::fs::read_dir(&dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if [".deb", ".buildinfo", ".changes"].iter().any(|s| name.ends_with(s)) {
            std::fs::remove_file(e.path())?;
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let enabled = enabled_options(&config);
    let estimate = format!(
        "{enabled} options on, roughly {} minutes on {cores} cores (scaled from the {}-option test config's \
         {}-minute build on 2; debug info, if the config has it, comes on top)",
        estimate_minutes(enabled, cores),
        MEASURED.0,
        MEASURED.1
    );
    if configure_only {
        note(&format!("configured, not built: {estimate}"));
        println!("config: {}", build.join(".config").display());
        println!("build it: cargo xtask host-kernel with the same options, without --configure-only");
        return Ok(None);
    }
    note(&format!("compiling and packaging: {estimate}; progress every 30 s"));
    cmd::run_with_progress(bindeb_command(&src, &build, &kernel::make_jobs()), &dir.join("bindeb-pkg.log"), "bindeb-pkg")?;

    let release = std::fs::read_to_string(build.join("include/config/kernel.release"))
        .context("the build finished without include/config/kernel.release")?
        .trim()
        .to_owned();
    let names: Vec<String> =
        std::fs::read_dir(&dir)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let Some((image, headers)) = find_packages(&names, &release) else {
        bail!(
            "bindeb-pkg finished but the linux-image-{release} and linux-headers-{release} packages are not in {}: see {}",
            dir.display(),
            dir.join("bindeb-pkg.log").display()
        );
    };
    let p = Packages { release, image: dir.join(image), headers: dir.join(headers) };
    std::fs::write(&stamp, p.stamp_text())?;
    Ok(Some(HostBuild { packages: p, build }))
}

/// Writes the config into `build/.config`: the base, `make localmodconfig`
/// if asked, the settings over it, `make olddefconfig`; then checks it.
/// objtool is built with absolute paths under the build tree, so in the
/// copy its objects' recorded commands differ and it is rebuilt, and every
/// object it checks (nearly all, C and Rust) is then older than it. Built
/// here once, from the same sources and so the same program, its files
/// get the time of the test kernel's objtool, and the main build leaves
/// them and every object alone.
fn keep_objtool_current(src: &Path, build: &Path, test_build: &Path) -> Result<()> {
    note("rebuilding objtool for the copy's paths (under a minute), with the test kernel's file times");
    let mut make = Command::new("make");
    make.arg("-C").arg(src).arg(format!("O={}", build.display())).args(["LLVM=1", &kernel::make_jobs(), "tools/objtool"]);
    cmd::output(&mut make)?;
    let reference = test_build.join("tools/objtool/objtool");
    let mut touch = Command::new("find");
    touch.arg(build.join("tools/objtool")).args(["-exec", "touch", "-h", "-r"]).arg(&reference).args(["{}", "+"]);
    cmd::run(&mut touch)
}

/// How [`configure`] changes the base.
struct Settings {
    localmodconfig: bool,
    /// Set [`LOCAL`]'s release suffix.
    local: bool,
    /// The installed pahole's version.
    pahole: Option<u32>,
}

fn configure(src: &Path, build: &Path, base: &str, base_name: &str, how: &Settings) -> Result<String> {
    std::fs::create_dir_all(build)?;
    let dot_config = build.join(".config");
    let make = |target: &str| {
        let mut c = Command::new("make");
        c.arg("-C").arg(src).arg(format!("O={}", build.display())).args(["LLVM=1", target]);
        // localmodconfig asks about options it cannot decide: the defaults.
        c.stdin(Stdio::null());
        c
    };
    std::fs::write(&dot_config, base)?;
    note(&format!("configuring: {base_name}"));
    let base = if how.localmodconfig {
        note("make localmodconfig: only the modules loaded now stay (plug in what you use first)");
        cmd::output(&mut make("localmodconfig"))?;
        std::fs::read_to_string(&dot_config)?
    } else {
        base.to_owned()
    };
    let changes = rust_conflicts(&base, how.pahole, &|f| src.join(f).exists());
    if changes.is_empty() {
        note("changed: nothing the base config had on stands in RUST's way");
    }
    for c in &changes {
        note(&format!("changed: {}", c.why));
    }
    let wanted = settings(&changes, how.local);
    std::fs::write(&dot_config, kernel::overlay_fragment(&base, &wanted, "cargo xtask host-kernel"))?;
    note("make olddefconfig, then checking RUST, VFIO, VFIO_CONTAINER, VFIO_MDEV, ... are as required");
    cmd::output(&mut make("olddefconfig"))?;
    let config = std::fs::read_to_string(&dot_config)?;
    kernel::check_kept(&wanted, &config, "cargo xtask host-kernel's settings", src)?;
    Ok(config)
}

/// Prints the packages and what to do with them.
fn report(b: &HostBuild) {
    let (p, build) = (&b.packages, &b.build);
    println!("image:   {}", p.image.display());
    println!("headers: {}", p.headers.display());
    println!("build tree (keep it: the modules build against it): {}", build.display());
    println!("next:");
    println!("  sudo dpkg -i {} {}", p.image.display(), p.headers.display());
    println!("  sudo reboot        # into {} (GRUB's \"Advanced options\" if it is not the default)", p.release);
    println!("  cargo xtask modules --kdir {}", build.display());
    println!("  sudo env \"PATH=$PATH\" cargo xtask install --kdir {}", build.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{config_mismatches, overlay_fragment};

    /// The options of a Debian 12 distribution config that matter here.
    const DISTRO: &str = "\
CONFIG_MODULES=y
CONFIG_MODVERSIONS=y
CONFIG_DEBUG_INFO_BTF=y
CONFIG_RANDSTRUCT_NONE=y
CONFIG_SYSTEM_TRUSTED_KEYS=\"debian/certs/debian-uefi-certs.pem\"
CONFIG_SYSTEM_REVOCATION_KEYS=\"\"
CONFIG_VFIO=m
CONFIG_VFIO_CONTAINER=y
# CONFIG_RUST is not set
CONFIG_LOCALVERSION=\"\"
";

    fn nothing_in_source(_: &str) -> bool {
        false
    }

    #[test]
    fn required_names_what_the_modules_need() {
        for line in [
            "CONFIG_RUST=y",
            "CONFIG_VFIO=m",
            "CONFIG_VFIO_GROUP=y",
            "CONFIG_VFIO_CONTAINER=y",
            "CONFIG_VFIO_IOMMU_TYPE1=m",
            "CONFIG_VFIO_MDEV=m",
            "CONFIG_VFIO_PCI=m",
            "# CONFIG_IOMMUFD_VFIO_CONTAINER is not set",
        ] {
            assert!(REQUIRED.lines().any(|l| l == line), "{line} missing from REQUIRED");
        }
        // Every required option is checked afterwards: an empty config fails each one set to y or m.
        let missing = config_mismatches(REQUIRED, "");
        assert_eq!(missing.len(), REQUIRED.lines().filter(|l| l.starts_with("CONFIG_")).count(), "{missing:?}");
    }

    #[test]
    fn distro_config_loses_modversions_btf_without_pahole_and_debian_certs() {
        let changes = rust_conflicts(DISTRO, None, &nothing_in_source);
        let lines: Vec<&str> = changes.iter().flat_map(|c| c.lines.iter().map(String::as_str)).collect();
        assert_eq!(
            lines,
            vec![
                "# CONFIG_MODVERSIONS is not set",
                "# CONFIG_DEBUG_INFO_BTF is not set",
                "CONFIG_SYSTEM_TRUSTED_KEYS=\"\"",
            ]
        );
        assert!(changes[1].why.contains("not installed") && changes[1].why.contains("dwarves"), "{}", changes[1].why);
        // The merged config asks for all of it, and the checker names what Kconfig would have left as it was.
        let merged = overlay_fragment(DISTRO, &settings(&changes, true), "host");
        let wanted = settings(&changes, true);
        assert!(config_mismatches(&wanted, &merged).is_empty(), "{merged}");
        assert_eq!(value_of(&merged, "CONFIG_MODVERSIONS"), "n");
        assert_eq!(value_of(&merged, "CONFIG_RUST"), "y");
        assert_eq!(value_of(&merged, "CONFIG_LOCALVERSION"), "\"-vfio-rs-host\"");
        // What olddefconfig would leave if RUST's dependencies were still unmet:
        let dropped = merged.replace("CONFIG_RUST=y", "# CONFIG_RUST is not set");
        assert_eq!(config_mismatches(&wanted, &dropped), vec!["CONFIG_RUST: wanted y, got n"]);
    }

    #[test]
    fn a_dropped_requirement_fails_naming_it_and_what_to_run() {
        let config = REQUIRED.replace("CONFIG_RUST=y", "# CONFIG_RUST is not set").replace("CONFIG_VFIO_MDEV=m", "");
        let err = kernel::check_kept(&settings(&[], true), &format!("{config}{LOCAL}"), "the settings", Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_RUST: wanted y, got n") && err.contains("CONFIG_VFIO_MDEV: wanted m, got n"), "{err}");
        assert!(err.contains("rustavailable") && err.contains("/s"), "{err}");
        assert!(!err.contains("CONFIG_VFIO:"), "{err}");
        assert!(kernel::check_kept(&settings(&[], true), &format!("{REQUIRED}{LOCAL}"), "the settings", Path::new("/s")).is_ok());
    }

    #[test]
    fn btf_stays_with_a_new_pahole_and_goes_with_an_old_one_or_lto() {
        let in_source = |f: &str| f == "debian/certs/debian-uefi-certs.pem";
        let kept = rust_conflicts(DISTRO, Some(124), &in_source);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(kept[0].why.starts_with("MODVERSIONS off"));
        let old = rust_conflicts(DISTRO, Some(122), &in_source);
        assert!(old[1].why.contains("this one is 1.22"), "{}", old[1].why);
        let lto = rust_conflicts(&format!("{DISTRO}CONFIG_LTO_CLANG=y\n"), Some(125), &in_source);
        assert!(lto[1].why.contains("no LTO"), "{}", lto[1].why);
    }

    #[test]
    fn randstruct_goes_and_the_test_config_needs_nothing() {
        let c = rust_conflicts("CONFIG_RANDSTRUCT_FULL=y\nCONFIG_MODVERSIONS=y\n", Some(124), &nothing_in_source);
        assert_eq!(c[0].lines[0], "CONFIG_RANDSTRUCT_NONE=y");
        assert_eq!(c[1].lines, vec!["# CONFIG_MODVERSIONS is not set"]);
        let test = "# CONFIG_MODVERSIONS is not set\nCONFIG_DEBUG_INFO_NONE=y\nCONFIG_RUST=y\n";
        assert!(rust_conflicts(test, None, &nothing_in_source).is_empty());
    }

    #[test]
    fn the_key_follows_the_config_the_modules_and_the_toolchain() {
        let key = |tools: &str, modules: &str, base: &str| {
            kernel::cache_key(&key_material("6.12.118-1~deb12u1", tools, "v1.24", modules, base))
        };
        let k = key("clang 16\n", "", DISTRO);
        assert_eq!(k.len(), 12);
        assert_eq!(k, key("clang 16\n", "", DISTRO), "the same inputs, the same key");
        assert_ne!(k, key("clang 16\n", "", &DISTRO.replace("CONFIG_VFIO=m", "CONFIG_VFIO=y")));
        assert_ne!(k, key("clang 16\n", "kvm vfio", DISTRO));
        assert_ne!(k, key("clang 17\n", "", DISTRO));
        assert_eq!(
            kernel::cache_dir_name("6.12.118-1~deb12u1", "", &k),
            format!("6.12.118-1_deb12u1-{k}"),
            "no ~ in the O= path"
        );
    }

    #[test]
    fn pahole_versions_parse_as_kconfig_counts_them() {
        assert_eq!(parse_pahole_version("v1.24"), Some(124));
        assert_eq!(parse_pahole_version("v1.30\n"), Some(130));
        assert_eq!(parse_pahole_version("pahole"), None);
    }

    #[test]
    fn make_runs_bindeb_pkg_out_of_tree_with_llvm() {
        let c = bindeb_command(Path::new("/c/src"), Path::new("/c/build"), "-j3");
        assert_eq!(cmd::describe(&c), "make -C /c/src O=/c/build LLVM=1 -j3 bindeb-pkg");
    }

    #[test]
    fn packages_are_found_by_release_and_the_estimate_scales() {
        let names: Vec<String> = [
            "linux-libc-dev_6.12.118-5_amd64.deb",
            "linux-image-6.12.118-vfio-rs-host-dbg_6.12.118-5_amd64.deb",
            "linux-headers-6.12.118-vfio-rs-host_6.12.118-5_amd64.deb",
            "linux-image-6.12.118-vfio-rs-host_6.12.118-5_amd64.deb",
            "build",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            find_packages(&names, "6.12.118-vfio-rs-host"),
            Some((
                "linux-image-6.12.118-vfio-rs-host_6.12.118-5_amd64.deb".into(),
                "linux-headers-6.12.118-vfio-rs-host_6.12.118-5_amd64.deb".into()
            ))
        );
        assert_eq!(find_packages(&names, "6.12.118-other"), None);
        assert_eq!(estimate_minutes(MEASURED.0, 2), MEASURED.1);
        assert_eq!(estimate_minutes(MEASURED.0 * 10, 2), MEASURED.1 * 10);
        assert_eq!(estimate_minutes(MEASURED.0 * 10, 8), (MEASURED.1 * 10).div_ceil(4));
        assert_eq!(enabled_options("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n"), 2);
    }
}
