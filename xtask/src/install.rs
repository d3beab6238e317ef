//! `cargo xtask install`: puts the built modules where `modprobe` finds
//! them, `<root>/lib/modules/<release>/extra/`, with a modprobe.d file that
//! makes `modprobe vfio` load our type1 instead of the C one; `--uninstall`
//! takes back exactly that.
//!
//! The release is the one the kernel build tree (`--kdir`, by default the
//! cached test kernel `cargo xtask modules` builds against) was configured
//! for, and every module's vermagic must name it: a module built for
//! another kernel would install fine and then fail to load.

use crate::cmd::{self, note, step};
use crate::kernel::{self, Flavor};
use crate::modules::BuiltModules;
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The modprobe.d file install writes, relative to the root.
const MODPROBE_CONF: &str = "etc/modprobe.d/vfio-rs.conf";
/// The comment lines of [`MODPROBE_CONF`] that record a directory install
/// created, so that uninstall removes it and no other.
const CREATED_MARK: &str = "# created by install: ";

/// What `cargo xtask install` writes into one root for one kernel release.
#[derive(Debug)]
pub struct Plan {
    pub root: PathBuf,
    pub release: String,
    /// (built `.ko`, where it goes).
    pub modules: Vec<(PathBuf, PathBuf)>,
    /// `<root>/etc/modprobe.d/vfio-rs.conf`.
    pub conf: PathBuf,
}

impl Plan {
    pub fn new(root: &Path, release: &str, kos: &[PathBuf]) -> Plan {
        let extra = module_dir(root, release).join("extra");
        let modules = kos
            .iter()
            .map(|ko| (ko.clone(), extra.join(ko.file_name().expect("a .ko path names a file"))))
            .collect();
        Plan { root: root.to_owned(), release: release.to_owned(), modules, conf: root.join(MODPROBE_CONF) }
    }

    /// The directories install may have to create, outermost first.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut wanted: Vec<&Path> = self.modules.iter().filter_map(|(_, dest)| dest.parent()).collect();
        wanted.extend(self.conf.parent());
        let mut dirs = Vec::new();
        for d in wanted {
            let mut chain: Vec<PathBuf> =
                d.ancestors().take_while(|a| *a != self.root && a.starts_with(&self.root)).map(Path::to_owned).collect();
            chain.reverse();
            for c in chain {
                if !dirs.contains(&c) {
                    dirs.push(c);
                }
            }
        }
        dirs
    }
}

/// `<root>/lib/modules/<release>`.
fn module_dir(root: &Path, release: &str) -> PathBuf {
    root.join("lib/modules").join(release)
}

/// The text of [`MODPROBE_CONF`]; `created` are the directories install
/// made (recorded for uninstall).
///
/// vfio.ko carries `softdep vfio post: vfio_iommu_type1` (6.12's
/// vfio_main.c; depmod copies it into modules.softdep), so `modprobe vfio`
/// loads the C type1 right after vfio. What kmod (checked with kmod 30,
/// Debian 12's, `modprobe --show-depends`) does with the usual ways out:
/// - `blacklist vfio_iommu_type1`: nothing. A blacklist only filters
///   modules reached through an alias; a softdep names the module.
/// - `softdep vfio post: vfio_iommu_type1_rs` here: nothing. kmod takes the
///   first softdep line for a module, and the module's own comes first.
/// - `install vfio_iommu_type1 /sbin/modprobe vfio_iommu_type1_rs`: loops.
///   Our module depends on vfio, whose softdep puts vfio_iommu_type1, and so
///   this install command, into the inner modprobe's list before our module
///   is loaded; the inner modprobe runs it again, and so on without end
///   (`--ignore-install` does not help: it does not cover softdeps).
///
/// So the install command loads our module with insmod, which resolves
/// nothing: it runs as vfio's post softdep, or after vfio in any modprobe
/// that lists it, so vfio (our only dependency) is loaded by then. It does
/// nothing if ours is loaded already, and passes on `$CMDLINE_OPTS` (the
/// options given for vfio_iommu_type1, from the command line or `options
/// vfio_iommu_type1 ...` lines: our module has the same parameters).
pub fn modprobe_conf(created: &[PathBuf], root: &Path) -> String {
    let mut text = String::from(
        "# Written by `cargo xtask install` (vfio-rs); `cargo xtask install --uninstall` removes it.\n\
         #\n\
         # `modprobe vfio` (and vfio-pci, mtty_rs, ... through it) loads vfio_iommu_type1_rs\n\
         # instead of the C vfio_iommu_type1 that vfio's own softdep asks for. Not a blacklist\n\
         # (it does not apply to softdeps) and not `/sbin/modprobe vfio_iommu_type1_rs` (that\n\
         # modprobe would meet vfio's softdep, and so this line, again, without end): insmod,\n\
         # once vfio is loaded. Options: `options vfio_iommu_type1 ...` (the same parameters).\n\
         install vfio_iommu_type1 [ -d /sys/module/vfio_iommu_type1_rs ] || \
         /sbin/insmod \"$(/sbin/modinfo -F filename vfio_iommu_type1_rs)\" $CMDLINE_OPTS\n",
    );
    for d in created {
        let rel = d.strip_prefix(root).unwrap_or(d);
        text.push_str(&format!("{CREATED_MARK}/{}\n", rel.display()));
    }
    text
}

/// The directories a [`modprobe_conf`] text records as created, under `root`.
fn created_dirs(conf: &str, root: &Path) -> Vec<PathBuf> {
    conf.lines()
        .filter_map(|l| l.strip_prefix(CREATED_MARK))
        .map(|rel| root.join(rel.trim_start_matches('/')))
        .collect()
}

/// The kernel release a module was built for: the first word of the
/// `vermagic=` string in its `.modinfo` section.
pub fn vermagic_release(ko: &[u8]) -> Option<String> {
    let key = b"vermagic=";
    let at = ko.windows(key.len()).position(|w| w == key)? + key.len();
    let value = ko[at..].split(|&b| b == 0).next()?;
    let text = std::str::from_utf8(value).ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

/// Copies the modules and writes the modprobe.d file.
pub fn install_files(plan: &Plan) -> Result<()> {
    for (ko, _) in &plan.modules {
        let data = std::fs::read(ko)
            .with_context(|| format!("{} is missing: build the modules first with `cargo xtask modules`", ko.display()))?;
        match vermagic_release(&data) {
            Some(r) if r == plan.release => {}
            other => bail!(
                "{} was built for kernel {}, not {}: rebuild it against that kernel with `cargo xtask modules` \
                 (or `cargo xtask modules --kdir DIR` for another build tree), then install again",
                ko.display(),
                other.as_deref().unwrap_or("(no vermagic: not a kernel module)"),
                plan.release
            ),
        }
    }
    let created: Vec<PathBuf> = plan.dirs().into_iter().filter(|d| !d.exists()).collect();
    // A previous install's record of created directories stays valid.
    let mut record = std::fs::read_to_string(&plan.conf).map(|t| created_dirs(&t, &plan.root)).unwrap_or_default();
    record.extend(created.iter().cloned());
    for d in &created {
        std::fs::create_dir(d).with_context(|| writable_hint(d))?;
    }
    for (ko, dest) in &plan.modules {
        std::fs::copy(ko, dest).with_context(|| writable_hint(dest))?;
        note(&format!("installed {}", dest.display()));
    }
    std::fs::write(&plan.conf, modprobe_conf(&record, &plan.root)).with_context(|| writable_hint(&plan.conf))?;
    note(&format!("wrote {}", plan.conf.display()));
    Ok(())
}

/// Removes what [`install_files`] wrote: the modules, the modprobe.d file
/// and the directories it created (if they are empty; with the depmod
/// index in a release directory it created, which only indexed ours).
pub fn uninstall_files(plan: &Plan) -> Result<()> {
    let created = std::fs::read_to_string(&plan.conf).map(|t| created_dirs(&t, &plan.root)).unwrap_or_default();
    for (_, dest) in &plan.modules {
        match std::fs::remove_file(dest) {
            Ok(()) => note(&format!("removed {}", dest.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| writable_hint(dest)),
        }
    }
    match std::fs::remove_file(&plan.conf) {
        Ok(()) => note(&format!("removed {}", plan.conf.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| writable_hint(&plan.conf)),
    }
    let release_dir = module_dir(&plan.root, &plan.release);
    if created.contains(&release_dir) {
        for e in std::fs::read_dir(&release_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("modules.") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    // Innermost first; a directory that holds anything else stays.
    for d in created.iter().rev() {
        if std::fs::remove_dir(d).is_ok() {
            note(&format!("removed {}", d.display()));
        }
    }
    Ok(())
}

fn writable_hint(path: &Path) -> String {
    format!(
        "cannot write {}: installing into / needs root (`sudo env \"PATH=$PATH\" cargo xtask install`), \
         or pass --root DIR",
        path.display()
    )
}

/// `depmod`, from PATH or the sbin directories a non-root PATH lacks.
fn find_depmod() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("depmod"))
        .find(|p| p.is_file())
}

fn depmod(root: &Path, release: &str) -> Result<()> {
    let Some(depmod) = find_depmod() else {
        note(&format!(
            "depmod not found (Debian package kmod): modprobe will not see the change until \
             `depmod -b {} {release}` runs",
            root.display()
        ));
        return Ok(());
    };
    note(&format!("depmod -b {} {release}", root.display()));
    cmd::run(Command::new(depmod).arg("-b").arg(root).arg(release))
}

/// `cargo xtask install [--kdir DIR] [--root DIR] [--uninstall]`.
pub fn install(paths: &Paths, kdir: Option<PathBuf>, root: &Path, uninstall: bool) -> Result<()> {
    let test_kernel = kernel::cached(paths, Flavor::Debug)?.map(|k| k.build);
    let kdir = match kdir {
        Some(k) => k,
        None => match test_kernel.clone() {
            Some(k) => k,
            None => bail!(
                "no test kernel in the cache: run `cargo xtask modules` (it builds the kernel and the modules), \
                 or pass --kdir with the build tree the modules were built against"
            ),
        },
    };
    let release_file = kdir.join("include/config/kernel.release");
    let release = std::fs::read_to_string(&release_file)
        .with_context(|| {
            format!(
                "{} is missing: --kdir must be a configured and built kernel tree (the O= directory if it had one)",
                release_file.display()
            )
        })?
        .trim()
        .to_owned();
    // `cargo xtask modules` builds for the test kernel into a tree of its
    // own, and `--kdir` builds into one per kernel tree.
    let same = |a: &Path, b: &Path| std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok();
    let built = match &test_kernel {
        Some(t) if same(t, &kdir) => BuiltModules::of(paths, Flavor::Debug),
        _ => BuiltModules::for_kdir(paths, &kdir),
    };
    let plan = Plan::new(root, &release, &built.kos());
    if uninstall {
        step(&format!("uninstall: the vfio-rs modules for {release} from {}", root.display()));
        uninstall_files(&plan)?;
        if module_dir(root, &release).exists() {
            depmod(root, &release)?;
        }
        return Ok(());
    }
    step(&format!("install: the vfio-rs modules for {release} into {}", root.display()));
    install_files(&plan)?;
    depmod(root, &release)?;
    note("`modprobe vfio` now loads vfio_iommu_type1_rs instead of vfio_iommu_type1; `modprobe mtty_rs` loads the mtty");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temp directory.
    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Every path under `dir` with its content (empty for directories).
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((p.clone(), Vec::new()));
                out.extend(snapshot(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out.sort();
        out
    }

    /// Two fake modules whose `.modinfo` says they were built for `release`.
    fn fake_kos(dir: &Path, release: &str) -> Vec<PathBuf> {
        ["vfio_iommu_type1_rs.ko", "mtty_rs.ko"]
            .iter()
            .map(|name| {
                let p = dir.join(name);
                let body = format!("\x7fELF...\0license=GPL v2\0vermagic={release} SMP mod_unload \0name={name}\0");
                std::fs::write(&p, body).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn install_lays_out_extra_and_modprobe_d_and_uninstall_restores_the_root() {
        let base = temp("layout");
        let kos = fake_kos(&base, "6.12.0-test");
        let root = base.join("root");
        // A root with a kernel and a modprobe.d of its own.
        std::fs::create_dir_all(root.join("lib/modules/6.12.0-test/kernel/drivers/vfio")).unwrap();
        std::fs::write(root.join("lib/modules/6.12.0-test/kernel/drivers/vfio/vfio.ko"), "c").unwrap();
        std::fs::write(root.join("lib/modules/6.12.0-test/modules.dep"), "kernel/drivers/vfio/vfio.ko:\n").unwrap();
        std::fs::create_dir_all(root.join("etc/modprobe.d")).unwrap();
        std::fs::write(root.join("etc/modprobe.d/other.conf"), "options foo bar=1\n").unwrap();
        let before = snapshot(&root);

        let plan = Plan::new(&root, "6.12.0-test", &kos);
        install_files(&plan).unwrap();
        let extra = root.join("lib/modules/6.12.0-test/extra");
        assert_eq!(std::fs::read(extra.join("vfio_iommu_type1_rs.ko")).unwrap(), std::fs::read(&kos[0]).unwrap());
        assert_eq!(std::fs::read(extra.join("mtty_rs.ko")).unwrap(), std::fs::read(&kos[1]).unwrap());
        let conf = std::fs::read_to_string(root.join("etc/modprobe.d/vfio-rs.conf")).unwrap();
        assert!(conf.contains("# created by install: /lib/modules/6.12.0-test/extra\n"), "{conf}");
        assert!(!conf.contains("created by install: /etc"), "{conf}");
        assert_eq!(snapshot(&root).len(), before.len() + 4, "extra/, two modules and the conf");

        uninstall_files(&plan).unwrap();
        assert_eq!(snapshot(&root), before);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn uninstall_of_an_empty_root_leaves_it_empty_again() {
        let base = temp("empty");
        let kos = fake_kos(&base, "6.12.0-test");
        let root = base.join("root");
        std::fs::create_dir(&root).unwrap();
        let plan = Plan::new(&root, "6.12.0-test", &kos);
        install_files(&plan).unwrap();
        // What depmod would have written into the release directory install made.
        std::fs::write(root.join("lib/modules/6.12.0-test/modules.dep"), "extra/mtty_rs.ko:\n").unwrap();
        // Installing twice keeps the record of what the first install created.
        install_files(&plan).unwrap();
        let conf = std::fs::read_to_string(&plan.conf).unwrap();
        for d in ["/lib", "/lib/modules", "/lib/modules/6.12.0-test", "/lib/modules/6.12.0-test/extra", "/etc", "/etc/modprobe.d"] {
            assert!(conf.contains(&format!("{CREATED_MARK}{d}\n")), "{d} not recorded: {conf}");
        }
        uninstall_files(&plan).unwrap();
        assert!(snapshot(&root).is_empty(), "{:?}", snapshot(&root));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_module_built_for_another_kernel_is_refused() {
        let base = temp("vermagic");
        let kos = fake_kos(&base, "6.12.0-other");
        let root = base.join("root");
        std::fs::create_dir(&root).unwrap();
        let err = install_files(&Plan::new(&root, "6.12.0-test", &kos)).unwrap_err().to_string();
        assert!(err.contains("built for kernel 6.12.0-other, not 6.12.0-test") && err.contains("cargo xtask modules"), "{err}");
        assert!(snapshot(&root).is_empty(), "nothing written");
        let missing = install_files(&Plan::new(&root, "6.12.0-test", &[base.join("nope.ko")])).unwrap_err().to_string();
        assert!(missing.contains("cargo xtask modules"), "{missing}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn modprobe_conf_redirects_the_c_type1_without_recursing() {
        let conf = modprobe_conf(&[], Path::new("/"));
        let rules: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
        assert_eq!(rules.len(), 1, "{rules:?}");
        let rule = rules[0];
        assert!(rule.starts_with("install vfio_iommu_type1 "), "{rule}");
        // insmod of our file, not a modprobe of ours (which would meet vfio's softdep again).
        assert!(rule.contains("/sbin/insmod \"$(/sbin/modinfo -F filename vfio_iommu_type1_rs)\""), "{rule}");
        assert!(!rule.contains("modprobe"), "{rule}");
        assert!(rule.contains("[ -d /sys/module/vfio_iommu_type1_rs ] ||"), "{rule}");
        assert!(rule.ends_with("$CMDLINE_OPTS"), "{rule}");
    }

    #[test]
    fn vermagic_is_read_from_modinfo() {
        assert_eq!(vermagic_release(b"x\0vermagic=6.12.118-vfio-rs SMP mod_unload \0name=a\0").as_deref(), Some("6.12.118-vfio-rs"));
        assert_eq!(vermagic_release(b"\0name=a\0"), None);
    }
}
