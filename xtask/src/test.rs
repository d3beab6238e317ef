//! `cargo xtask test`, `shell` and `demo`: everything that boots the VM.

use crate::cmd::{self, note, step};
use crate::inner;
use crate::installed;
use crate::kernel::{self, KernelBuild};
use crate::modules::{self, BuiltModules};
use crate::paths::Paths;
use crate::progress;
use crate::report::{self, Outcome};
use crate::vm::{self, Accel, Boot};
use crate::{setup, AccelArg, BackendArg};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The guest cases that boot the inner guest kernel (`crate::inner`).
const QEMU_CASES: &[&str] =
    &["mtty.qemu.guest_8250", "mtty.qemu.guest_8250_iommufd", "qemu.vfio_pci_nic", "qemu.migrate_mtty"];

/// Whether a case runs, as the guest runner decides it: its name contains
/// one of the comma-separated texts of `--filter` (if given) and none of
/// `--skip`'s.
fn case_selected(name: &str, filter: Option<&str>, skip: Option<&str>) -> bool {
    let any_part = |list: &str| list.split(',').any(|part| name.contains(part));
    filter.is_none_or(any_part) && !skip.is_some_and(any_part)
}

/// Whether `--filter` and `--skip` leave one of [`QEMU_CASES`] to run.
fn selects_qemu_case(filter: Option<&str>, skip: Option<&str>) -> bool {
    QEMU_CASES.iter().any(|case| case_selected(case, filter, skip))
}

/// Options of `cargo xtask test`.
pub struct TestOpts {
    pub filter: Option<String>,
    pub skip: Option<String>,
    pub keep_going: bool,
    pub backend: BackendArg,
    pub host: bool,
    pub timeout_min: u64,
    pub accel: Option<AccelArg>,
}

/// Pass/fail/skip counts.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// Sums cargo test's `test result:` lines.
pub fn parse_cargo_test(text: &str) -> Tally {
    let mut t = Tally::default();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { continue };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<usize>() else { continue };
            match what {
                "passed" => t.passed += n,
                "failed" => t.failed += n,
                "ignored" => t.skipped += n,
                _ => {}
            }
        }
    }
    t
}

fn host_tests(paths: &Paths) -> Result<Tally> {
    step("host tests: cargo test --workspace (no_std cores, xtask's parsers)");
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--color", "never"])
        .current_dir(paths.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run cargo test")?;
    let mut text = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.unwrap_or_default();
        if line.starts_with("test ") && (line.ends_with("FAILED") || line.starts_with("test result")) {
            println!("    {line}");
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    let mut t = parse_cargo_test(&text);
    if !status.success() && t.failed == 0 {
        // A build failure: no test ran, but the step failed.
        t.failed += 1;
        println!("FAIL host: cargo test did not build or run (see above)");
    }
    note(&format!("host: {} passed, {} failed, {} ignored", t.passed, t.failed, t.skipped));
    // Each lint gate counts as one failure, as a build failure does; a clean
    // run adds nothing, so the counts stay those of the tests.
    if !clippy_clean(paths)? {
        t.failed += 1;
    }
    match workflows_lint(paths)? {
        LintGate::Clean => {}
        LintGate::Failed => t.failed += 1,
        LintGate::Skipped => t.skipped += 1,
    }
    Ok(t)
}

/// The outcome of a lint gate whose tool may be missing.
enum LintGate {
    Clean,
    Failed,
    /// The tool could not be installed here (said why on a SKIP line).
    Skipped,
}

/// The workflow files actionlint checks: `.github/workflows/*.yml` and
/// `*.yaml`, sorted.
fn workflow_files(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join(".github/workflows");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut files = Vec::new();
    for e in entries {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// The second lint gate: actionlint on the CI workflows (syntax, keys,
/// expressions, job dependencies, and the shell of `run:` steps when
/// shellcheck is installed). A workflow is only run by GitHub, so a typo
/// would otherwise show up as a broken CI run after the push.
fn workflows_lint(paths: &Paths) -> Result<LintGate> {
    let files = workflow_files(paths.root())?;
    if files.is_empty() {
        note("host lints: no .github/workflows/*.yml to check");
        return Ok(LintGate::Clean);
    }
    step("host lints: actionlint .github/workflows/*.yml");
    if let setup::Actionlint::Unavailable(why) = setup::actionlint(paths, false)? {
        println!("SKIP host.actionlint ({why})");
        return Ok(LintGate::Skipped);
    }
    let status = Command::new(paths.actionlint())
        .args(["-no-color"])
        .args(&files)
        .current_dir(paths.root())
        .status()
        .with_context(|| format!("cannot run {} (`cargo xtask setup` installs it)", paths.actionlint().display()))?;
    if !status.success() {
        println!(
            "FAIL host.actionlint: actionlint found the problems above (file:line:col, then the rule in brackets). Fix \
             the workflow there; https://github.com/rhysd/actionlint/blob/main/docs/checks.md explains each rule. \
             Re-check with `{} .github/workflows/*.yml`.",
            paths.actionlint().display()
        );
        return Ok(LintGate::Failed);
    }
    Ok(LintGate::Clean)
}

/// The lint gate of the host stage: `cargo clippy` over the whole workspace
/// (the no_std cores, xtask and the guest programs), every warning an error.
fn clippy_clean(paths: &Paths) -> Result<bool> {
    step("host lints: cargo clippy --workspace --all-targets -- -D warnings");
    let status = Command::new("cargo")
        .args(["clippy", "--quiet", "--workspace", "--all-targets", "--", "-D", "warnings"])
        .current_dir(paths.root())
        .status()
        .context("cannot run cargo clippy (rustup component add clippy)")?;
    if !status.success() {
        println!(
            "FAIL host.clippy: cargo clippy reported the warnings above. Fix the code (`cargo clippy --fix` applies the \
             mechanical ones); a lint that must stay off at one place takes `#[expect(clippy::<lint>, reason = \"...\")]` \
             there. Re-check with `cargo clippy --workspace --all-targets -- -D warnings`."
        );
    }
    Ok(status.success())
}

/// The guest binary, built for the host (the guest shares the host's root).
fn build_guest(paths: &Paths) -> Result<PathBuf> {
    step("guest tests: cargo build -p guest-tests --release");
    cmd::run(
        Command::new("cargo")
            .args(["build", "--quiet", "--release", "-p", "guest-tests"])
            .current_dir(paths.root()),
    )?;
    Ok(paths.target().join("release/vfio-guest"))
}

pub struct Prepared {
    pub kernel: KernelBuild,
    pub kmods: BuiltModules,
    pub guest: PathBuf,
    pub accel: Accel,
}

pub fn prepare(paths: &Paths, accel: Option<AccelArg>, flavor: kernel::Flavor) -> Result<Prepared> {
    setup::setup(paths)?;
    let kernel = kernel::kernel(paths, flavor)?;
    let kmods = modules::modules(paths, &kernel)?;
    let guest = build_guest(paths)?;
    vm::check_image(&kernel)?;
    let forced = accel.map(|a| match a {
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    });
    let accel = vm::choose_accel(paths, &kernel, forced);
    Ok(Prepared { kernel, kmods, guest, accel })
}

pub fn guest_args(p: &Prepared) -> String {
    format!(
        "--modroot {} --kmods {}",
        p.kernel.modroot.display(),
        p.kmods.tree.display()
    )
}

/// `cargo xtask test`. Returns whether everything passed.
pub fn test(paths: &Paths, o: &TestOpts) -> Result<bool> {
    let mut total = Tally::default();
    if o.host {
        let host = host_tests(paths)?;
        total.add(host);
        if host.failed > 0 && !o.keep_going {
            println!("host tests or lints failed: not booting the VM (use --keep-going to boot anyway)");
            println!("{} passed, {} failed, {} skipped", total.passed, total.failed, total.skipped);
            return Ok(false);
        }
    }
    let p = prepare(paths, o.accel, kernel::Flavor::Debug)?;
    let results = paths.vm_results().join("results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    // The QEMU cases boot a tiny kernel of their own: build it only when
    // one of them is selected.
    let mut env = String::new();
    if selects_qemu_case(o.filter.as_deref(), o.skip.as_deref()) {
        let g = inner::inner_guest(paths, &p.kernel, &p.guest)?;
        env = format!("VFIO_RS_INNER_KERNEL='{}' VFIO_RS_INNER_INITRD='{}' ", g.bzimage.display(), g.initramfs.display());
    }
    let mut exec = format!(
        "{env}{} run --results {} {} --backends {}",
        p.guest.display(),
        results.display(),
        guest_args(&p),
        o.backend.guest_list()
    );
    if let Some(f) = &o.filter {
        exec.push_str(&format!(" --filter '{}'", f.replace('\'', "")));
    }
    if let Some(s) = &o.skip {
        exec.push_str(&format!(" --skip '{}'", s.replace('\'', "")));
    }
    if o.keep_going {
        exec.push_str(" --keep-going");
    }
    step(&format!("VM: booting ({:?}) and running the guest suites against backend {:?}; results below as they finish", p.accel, o.backend));
    let log = paths.vm_results().join("console.log");
    let boot = Boot {
        accel: p.accel,
        exec,
        results: Some(results.clone()),
        timeout: Duration::from_secs(o.timeout_min * 60),
        interactive: false,
        echo: false,
        icount: false,
    };
    let done = AtomicBool::new(false);
    let ktap = results.join("results.ktap");
    let run = std::thread::scope(|scope| {
        scope.spawn(|| progress::Follower::follow(&ktap, &done));
        let run = boot.run(paths, &p.kernel, &log);
        done.store(true, Ordering::Relaxed);
        run
    })?;
    let guest = judge(&run, &results, &log, "");
    total.add(guest);
    // The boot from the project's own packages: our modules, so not on a
    // C-only run.
    let rust = !matches!(o.backend, BackendArg::C);
    if rust && case_selected(installed::PREFIX, o.filter.as_deref(), o.skip.as_deref()) {
        if guest.failed > 0 && !o.keep_going {
            println!("SKIP {}* (the suites failed: use --keep-going to boot the packages anyway)", installed::PREFIX);
        } else {
            total.add(installed::run(paths, &p)?);
        }
    }
    println!("{} passed, {} failed, {} skipped", total.passed, total.failed, total.skipped);
    Ok(total.failed == 0)
}

/// Turns a finished VM run into one line per test plus the kernel-log
/// verdict; `prefix` starts the names of the run's own checks
/// (`vm.finished`, `kernel.log_clean`).
pub fn judge(run: &vm::Run, results: &std::path::Path, log: &std::path::Path, prefix: &str) -> Tally {
    let mut t = Tally::default();
    let ktap = std::fs::read_to_string(results.join("results.ktap")).unwrap_or_default();
    for r in report::parse_ktap(&ktap) {
        match &r.outcome {
            Outcome::Pass => {
                t.passed += 1;
                println!("PASS {}", r.name);
            }
            Outcome::Skip(why) => {
                t.skipped += 1;
                println!("SKIP {} ({why})", r.name);
            }
            Outcome::Fail => {
                t.failed += 1;
                println!("FAIL {}", r.name);
                for d in &r.diagnostics {
                    println!("       {d}");
                }
            }
        }
    }
    let finished = run.console.contains("VFIO-RS-GUEST-DONE");
    if !finished {
        t.failed += 1;
        let why = if run.timed_out { "the VM timed out (hung guest?)" } else { "the guest runner did not finish (kernel panic or crash?)" };
        println!("FAIL {prefix}vm.finished: {why}; console log: {}", log.display());
    }
    let splats = report::run_splats(&run.console, results);
    if splats.is_empty() && finished {
        t.passed += 1;
        println!("PASS {prefix}kernel.log_clean (no warnings, lockdep, KASAN, kmemleak or other reports)");
    } else if !splats.is_empty() {
        t.failed += 1;
        println!("FAIL {prefix}kernel.log_clean: {} kernel report(s); full log: {}", splats.len(), log.display());
        for s in splats.iter().take(20) {
            println!("       [{}] {}", s.kind, s.line);
        }
    }
    t
}

/// `cargo xtask shell`.
pub fn shell(paths: &Paths, backend: BackendArg, accel: Option<AccelArg>) -> Result<bool> {
    let p = prepare(paths, accel, kernel::Flavor::Debug)?;
    // vng runs this as the guest's login shell: load, then hand over to bash.
    let script = paths.vm_results().join("shell-init.sh");
    std::fs::create_dir_all(paths.vm_results())?;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{} load --backends {} {} && echo 'modules loaded ({}); mdev parent: /sys/class/mdev_bus/mtty; guest tools: {}'\nexec bash -i\n",
            p.guest.display(),
            backend.guest_list(),
            guest_args(&p),
            backend.guest_list(),
            p.guest.display(),
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    step("VM: interactive shell (exit with Ctrl-D)");
    let boot = Boot {
        accel: p.accel,
        exec: script.display().to_string(),
        results: None,
        timeout: Duration::MAX,
        interactive: true,
        echo: true,
        icount: false,
    };
    let run = boot.run(paths, &p.kernel, &paths.vm_results().join("shell.log"))?;
    Ok(run.success)
}

/// `cargo xtask demo`.
pub fn demo(paths: &Paths, backend: BackendArg, accel: Option<AccelArg>) -> Result<bool> {
    let backend = match backend {
        BackendArg::Both => BackendArg::C,
        b => b,
    };
    let p = prepare(paths, accel, kernel::Flavor::Debug)?;
    if backend == BackendArg::C {
        note("the demo runs on the C vfio_iommu_type1 and the C mtty sample; without --backend c it runs on ours");
    }
    let exec = format!(
        "{g} load --backends {b} {a} && {g} demo --backend {b}",
        g = p.guest.display(),
        b = backend.guest_list(),
        a = guest_args(&p)
    );
    step("VM: booting for the demo");
    let log = paths.vm_results().join("demo.log");
    let boot = Boot { accel: p.accel, exec, results: None, timeout: Duration::from_secs(600), interactive: false, echo: true, icount: false };
    let run = boot.run(paths, &p.kernel, &log)?;
    let splats = report::find_splats(&run.console);
    for s in &splats {
        println!("kernel report [{}]: {}", s.kind, s.line);
    }
    let ok = run.console.contains("demo: all steps worked.") && splats.is_empty();
    println!("{}", if ok { "demo finished: every step worked" } else { "demo failed: see above and the log" });
    note(&format!("full console log: {}", log.display()));
    Ok(ok)
}

#[cfg(test)]
mod tests {

    #[test]
    fn workflow_files_are_the_yaml_files_of_github_workflows() {
        let root = std::env::temp_dir().join(format!("xtask-workflows-{}", std::process::id()));
        let dir = root.join(".github/workflows");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ci.yml", "a.yaml", "README.md", "ci.yml.orig"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let found = super::workflow_files(&root).unwrap();
        assert_eq!(found, vec![dir.join("a.yaml"), dir.join("ci.yml")]);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(super::workflow_files(&root).unwrap().is_empty());
    }

    #[test]
    fn qemu_case_is_selected_by_any_part_of_a_filter_list() {
        let only = |f| super::selects_qemu_case(Some(f), None);
        assert!(only("mtty,mdevctl,demo"));
        assert!(only("guest_8250"));
        assert!(!only("type1,bench"));
        assert!(only("qemu"));
        assert!(only("vfio_pci_nic"));
        assert!(super::selects_qemu_case(None, None));
    }

    #[test]
    fn skip_leaves_out_every_case_it_names_also_within_a_filter() {
        assert!(!super::selects_qemu_case(None, Some("qemu")));
        assert!(!super::selects_qemu_case(Some("mtty"), Some("qemu")));
        assert!(super::selects_qemu_case(None, Some("migrate,guest_8250")), "qemu.vfio_pci_nic is left");
        assert!(super::case_selected("type1.dirty_pages", None, Some("qemu")));
        assert!(!super::case_selected("type1.dirty_pages", Some("mtty"), None));
        assert!(!super::case_selected("mtty.qemu.guest_8250", Some("mtty"), Some("qemu,bench")));
    }

    use super::*;

    #[test]
    fn cargo_test_summaries_are_summed() {
        let text = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.20s
";
        assert_eq!(parse_cargo_test(text), Tally { passed: 8, failed: 2, skipped: 1 });
    }

    #[test]
    fn judge_fails_on_a_warning_even_when_every_case_passed() {
        let dir = std::env::temp_dir().join(format!("xtask-judge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("results.ktap"), "KTAP version 1\n1..1\nok 1 type1.api_version [c]\n").unwrap();
        let console = "[    5.000000] WARNING: CPU: 0 PID: 1 at kmod-iommu/x.rs:1 f+0x1/0x2 [vfio_iommu_type1_rs]\nVFIO-RS-GUEST-DONE\n";
        let run = vm::Run { console: console.into(), timed_out: false, success: true };
        let t = judge(&run, &dir, &dir.join("console.log"), "");
        assert_eq!(t, Tally { passed: 1, failed: 1, skipped: 0 });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn judge_fails_a_failed_case_and_an_unfinished_guest() {
        let dir = std::env::temp_dir().join(format!("xtask-judge2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("results.ktap"), "ok 1 a\n# got 22, wanted 17\nnot ok 2 b\n").unwrap();
        let run = vm::Run { console: "[  1.0] Kernel panic - not syncing: Fatal exception\n".into(), timed_out: false, success: false };
        let t = judge(&run, &dir, &dir.join("console.log"), "");
        // a passed; b failed; the guest did not finish; the panic is a report.
        assert_eq!(t, Tally { passed: 1, failed: 3, skipped: 0 });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
