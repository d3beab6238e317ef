//! `cargo xtask modules`: builds `kmod-iommu` and `kmod-mtty` out of tree.
//!
//! The module sources (with the shared `kmod-common/` layer and the `no_std`
//! cores they include by path) are mirrored into `target/kmod/tree/`, so
//! Kbuild's objects never land in the checkout. Files are copied only when
//! their content changed, which keeps their mtimes and lets Kbuild rebuild
//! only what changed. The extra bindings (VFIO, mdev, IOMMU) are generated
//! with the exact bindgen command line the kernel recorded for its own.

use crate::cmd::{self, note, step};
use crate::kernel::{Flavor, KernelBuild};
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Source directories mirrored into the build tree.
const MIRRORED: &[&str] = &["kmod-common", "kmod-iommu", "kmod-mtty"];
/// The modules, by their directory in the tree and the `.ko` they produce.
pub const MODULES: &[(&str, &str)] = &[
    ("kmod-iommu", "vfio_iommu_type1_rs.ko"),
    ("kmod-mtty", "mtty_rs.ko"),
];

/// Built modules: where each `.ko` is.
pub struct BuiltModules {
    /// The mirrored tree.
    pub tree: PathBuf,
}

impl BuiltModules {
    /// The modules built against `kernel`, whether or not they were built yet.
    pub fn for_kernel(paths: &Paths, kernel: &KernelBuild) -> Self {
        if kernel.external {
            BuiltModules::for_kdir(paths, &kernel.build)
        } else {
            BuiltModules::of(paths, kernel.flavor)
        }
    }

    /// The modules built against the kernel tree `kdir` given with
    /// `--kdir`: a directory of their own per tree, so that building for
    /// another kernel never replaces the test kernel's objects.
    pub fn for_kdir(paths: &Paths, kdir: &Path) -> Self {
        let canonical = std::fs::canonicalize(kdir).unwrap_or_else(|_| kdir.to_owned());
        let key = crate::kernel::cache_key(&canonical.to_string_lossy());
        BuiltModules { tree: paths.target().join(format!("kmod-kdir-{key}")).join("tree") }
    }

    /// The modules built against `flavor`'s cached kernel, whether or not
    /// they were built yet.
    pub fn of(paths: &Paths, flavor: Flavor) -> Self {
        // One build directory per kernel flavour: Kbuild's objects are only
        // valid for the kernel they were built against.
        let base = match flavor {
            Flavor::Debug => paths.kmod_build(),
            Flavor::Release => paths.target().join("kmod-release"),
        };
        BuiltModules { tree: base.join("tree") }
    }

    /// Every module's `.ko`, in [`MODULES`] order.
    pub fn kos(&self) -> Vec<PathBuf> {
        MODULES.iter().map(|(dir, ko)| self.tree.join(dir).join(ko)).collect()
    }
}


/// Mirrors, generates bindings and runs Kbuild for every module.
pub fn modules(paths: &Paths, kernel: &KernelBuild) -> Result<BuiltModules> {
    let built = BuiltModules::for_kernel(paths, kernel);
    let tree = built.tree.clone();
    let base = tree.parent().expect("the tree has a build directory above it").to_path_buf();
    step("modules: building kmod-iommu and kmod-mtty out of tree");
    for dir in MIRRORED {
        mirror(&paths.root().join(dir), &tree.join(dir))?;
    }
    // The no_std cores live in the cargo workspace; the modules include them by path.
    generate_bindings(kernel, &tree)?;
    for (dir, ko) in MODULES {
        let mdir = tree.join(dir);
        let mut make = Command::new("make");
        // CLIPPY=1 runs the kernel's Rust lints (undocumented_unsafe_blocks,
        // missing_docs, ...) as part of the build; warnings fail it below.
        make.arg("-C")
            .arg(&kernel.build)
            .arg(format!("M={}", mdir.display()))
            .args(["LLVM=1", "CLIPPY=1", "modules"]);
        let log = base.join(format!("{dir}.log"));
        cmd::run_with_progress(make, &log, &format!("{dir} build"))
            .with_context(|| format!("building {dir} failed; the compiler's messages are above and in {}", log.display()))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let warnings = compiler_warnings(&text);
        if !warnings.is_empty() {
            // Remove the objects, or the next run, with nothing to rebuild,
            // would not see the warnings again and pass.
            for entry in std::fs::read_dir(&mdir)?.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".o") || name.ends_with(".ko") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            for w in &warnings {
                eprintln!("    | {w}");
            }
            bail!(
                "{dir} built with {} compiler/clippy warning(s); the modules must build clean. Full messages: {}",
                warnings.len(),
                log.display()
            );
        }
        if !mdir.join(ko).exists() {
            bail!("{dir} built but {ko} is missing: check {dir}/Kbuild");
        }
    }
    Ok(built)
}

/// The first line of each rustc/clippy or C compiler warning in a build log.
/// Kbuild only recompiles what changed, so a warning shows up once; the
/// failure it causes makes sure it is fixed before it scrolls away.
pub fn compiler_warnings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let t = l.trim_start();
            let rust = t.starts_with("warning:") && !t.ends_with("warning emitted") && !t.ends_with("warnings emitted");
            let c = t.contains(": warning:");
            rust || c
        })
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Copies `src` into `dst` recursively, writing only files whose content
/// differs, and deleting files that no longer exist in `src` (build outputs
/// excepted: Kbuild's files start with `.` or end in build suffixes).
fn mirror(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut wanted = std::collections::HashSet::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        if name_s == "target" || name_s.starts_with('.') {
            continue;
        }
        wanted.insert(name.clone());
        let from = entry.path();
        let to = dst.join(&name);
        if entry.file_type()?.is_dir() {
            mirror(&from, &to)?;
        } else {
            let data = std::fs::read(&from)?;
            if std::fs::read(&to).ok().as_deref() != Some(&data[..]) {
                std::fs::write(&to, &data)?;
            }
        }
    }
    for entry in std::fs::read_dir(dst)? {
        let entry = entry?;
        let name = entry.file_name();
        let n = name.to_string_lossy();
        let is_build_output = n.starts_with('.')
            || [".o", ".ko", ".mod", ".mod.c", ".mod.o", ".cmd", ".d", ".symvers", ".order", "_generated.rs"]
                .iter()
                .any(|s| n.ends_with(s));
        if !wanted.contains(&name) && !is_build_output {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// The options of every `*.args` file in `dir` (one per subsystem), in name
/// order: one option per line, `#` comments and blank lines skipped.
fn read_bindgen_args(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "args"))
        .collect();
    files.sort();
    let mut opts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        opts.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned));
    }
    Ok(opts)
}

/// Runs bindgen on `kmod-common/bindings_helper.h` with the kernel's own
/// recorded command line (through the shell, which keeps its quoting intact),
/// restricted to the allowlists in `kmod-common/bindgen/*.args`.
fn generate_bindings(kernel: &KernelBuild, tree: &Path) -> Result<()> {
    let recorded = kernel.build.join("rust/bindings/.bindings_generated.rs.cmd");
    let text = std::fs::read_to_string(&recorded).with_context(|| {
        format!("{} is missing: the kernel was built without CONFIG_RUST; run `cargo xtask clean-cache`", recorded.display())
    })?;
    let line = text
        .lines()
        .find_map(|l| l.split_once(":= ").map(|(_, cmd)| cmd))
        .context("unexpected format of the recorded bindgen command")?;
    let (bindgen_opts, clang_opts) = line
        .split_once(" -- ")
        .context("the recorded bindgen command has no ` -- ` before the clang flags")?;
    // The recording goes on with `; sed ...` post-processing: not ours.
    let clang_opts = clang_opts.split(';').next().unwrap_or_default();
    // Drop the kernel's own header and output; keep every option.
    let mut words = bindgen_opts.split(' ').filter(|w| !w.is_empty()).peekable();
    let mut kept = Vec::new();
    while let Some(w) = words.next() {
        if w == "bindgen" || w.ends_with("bindings_helper.h") {
            continue;
        }
        if w == "-o" {
            words.next();
            continue;
        }
        kept.push(w.to_owned());
    }
    let clang_opts: Vec<&str> = clang_opts
        .split(' ')
        .filter(|w| !w.is_empty() && !w.starts_with("-Wp,-MMD"))
        .collect();
    let common = tree.join("kmod-common");
    let header = common.join("bindings_helper.h");
    let extra = read_bindgen_args(&common.join("bindgen"))?;
    let out = common.join("bindings_generated.rs");
    let tmp = common.join("bindings_generated.rs.tmp");
    // `-I<src>` lets the header include the internal drivers/vfio/vfio.h.
    let script = format!(
        "bindgen {} {} {} -o {} -- {} -I{}",
        header.display(),
        kept.join(" "),
        extra.join(" "),
        tmp.display(),
        clang_opts.join(" "),
        kernel.src.display(),
    );
    cmd::output(Command::new("sh").arg("-c").arg(&script).current_dir(&kernel.build))
        .context("bindgen failed on kmod-common/bindings_helper.h")?;
    // Replace only on change, so Kbuild does not rebuild for nothing.
    let new = std::fs::read(&tmp)?;
    if std::fs::read(&out).ok().as_deref() != Some(&new[..]) {
        std::fs::rename(&tmp, &out)?;
        note("bindings regenerated");
    } else {
        std::fs::remove_file(&tmp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::compiler_warnings;

    #[test]
    fn rustc_clippy_and_c_warnings_are_found_summaries_are_not() {
        let log = "\
  RUSTC [M] /t/kmod-iommu/type1.o
warning: casting to the same type is unnecessary (`usize` -> `usize`)
   --> /t/kmod-common/vfio_iommu.rs:364:44
warning: 1 warning emitted

/t/kmod-iommu/helpers.c:12:5: warning: unused variable 'x' [-Wunused-variable]
  LD [M]  /t/kmod-iommu/vfio_iommu_type1_rs.ko
";
        let w = compiler_warnings(log);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("warning: casting"));
        assert!(w[1].contains("helpers.c:12:5: warning: unused variable"));
    }

    #[test]
    fn clean_log_has_no_warnings() {
        assert!(compiler_warnings("  RUSTC [M] a.o\n  LD [M]  a.ko\n").is_empty());
    }
}
