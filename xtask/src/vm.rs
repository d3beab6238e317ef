//! Booting the test VM with virtme-ng.
//!
//! The guest sees the host's root filesystem read-only (so it runs the guest
//! binaries and loads the modules straight from the build directories) and one
//! writable results directory. Its console, kernel messages included, is
//! captured to a log file that the splat scanner reads, because that log
//! survives a guest that panics or hangs.

use crate::cmd::{self, note, step};
use crate::kernel::KernelBuild;
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How the VM's CPU is provided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// Decides between KVM and TCG. KVM is used only when the CPU advertises
/// vmx or svm, `/dev/kvm` opens, and a probe boot finishes: on nested hosts
/// without those flags a KVM guest hangs in the kernel decompressor.
pub fn choose_accel(paths: &Paths, kernel: &KernelBuild, forced: Option<Accel>) -> Accel {
    if let Some(a) = forced {
        note(&format!("accelerator: {a:?} (forced)"));
        return a;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu_has_virtualization(&cpuinfo) {
        note("accelerator: TCG (the CPU shows no vmx/svm flag, so a KVM guest would hang; expect ~20 s per boot)");
        return Accel::Tcg;
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        note("accelerator: TCG (/dev/kvm cannot be opened: add yourself to the kvm group to use KVM)");
        return Accel::Tcg;
    }
    let log = paths.vm_results().join("kvm-probe.log");
    match kvm_probe().run(paths, kernel, &log) {
        Ok(run) if run.console.contains(KVM_PROBE_MARKER) => {
            note("accelerator: KVM (probe boot succeeded)");
            Accel::Kvm
        }
        _ => {
            note(&format!("accelerator: TCG (a KVM probe boot failed; see {})", log.display()));
            Accel::Tcg
        }
    }
}

/// What the probe guest prints when it got as far as running a command.
const KVM_PROBE_MARKER: &str = "vfio-rs-kvm-probe-ok";

/// Whether the first `flags` line of /proc/cpuinfo shows vmx (Intel) or svm (AMD).
fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    flags.split_whitespace().any(|f| f == "vmx" || f == "svm")
}

/// The probe boot: the real test machine (same devices, split irqchip) on
/// KVM, so a KVM that cannot run it falls back to TCG here rather than
/// hanging the suite later.
fn kvm_probe() -> Boot {
    Boot {
        accel: Accel::Kvm,
        exec: format!("echo {KVM_PROBE_MARKER}"),
        results: None,
        timeout: Duration::from_secs(60),
        interactive: false,
        echo: false,
        icount: false,
    }
}

/// One boot of the VM.
pub struct Boot {
    /// KVM or TCG.
    pub accel: Accel,
    /// The shell command the guest runs; the VM powers off when it exits.
    pub exec: String,
    /// A host directory the guest may write (results); `None` for none.
    pub results: Option<PathBuf>,
    /// The VM is killed after this long.
    pub timeout: Duration,
    /// Give the guest the terminal (for `cargo xtask shell`); `exec` then
    /// names a script that vng runs as the login shell.
    pub interactive: bool,
    /// Print program output lines as they arrive.
    pub echo: bool,
    /// Run the guest on QEMU's instruction counter (`-icount shift=0`, TCG
    /// only): its clock then advances one nanosecond per guest instruction,
    /// so a time the guest measures is the number of instructions it ran
    /// (`cargo xtask bench --clock icount`).
    pub icount: bool,
}

/// What a finished boot left.
pub struct Run {
    /// The whole console: kernel messages and program output.
    pub console: String,
    /// The VM ran past its timeout and was killed.
    pub timed_out: bool,
    /// vng's exit status (the guest command's, when it finished).
    pub success: bool,
}

impl Boot {
    fn command(&self, paths: &Paths, image: &Path) -> Command {
        let mut c = Command::new(paths.vng());
        // vng runs virtme-run and friends from PATH: put the venv first.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![paths.venv().join("bin")];
        dirs.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).unwrap_or(path));
        c.arg("--run").arg(image);
        c.args(machine_args(self.accel, self.icount));
        if let Some(r) = &self.results {
            c.arg(format!("--rwdir={}", r.display()));
        }
        c.arg("--cwd").arg(paths.root());
        if self.interactive {
            // `--exec` does not connect the terminal; a custom shell does.
            c.arg("--shell").arg(&self.exec);
        } else {
            c.arg("--exec").arg(&self.exec);
        }
        c
    }

    /// Boots `kernel`, waits for the guest command (or the timeout) and
    /// returns the console.
    pub fn run(&self, paths: &Paths, kernel: &KernelBuild, log: &Path) -> Result<Run> {
        self.run_image(paths, &kernel.bzimage(), log)
    }

    /// As [`Boot::run`], with a kernel image file. For an image inside an
    /// unpacked root (`<root>/boot/vmlinuz-<release>`), vng gives the guest
    /// that root's `lib/modules/<release>` as its `/lib/modules/<release>`.
    pub fn run_image(&self, paths: &Paths, image: &Path, log: &Path) -> Result<Run> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut c = self.command(paths, image);
        if self.interactive {
            let status = c.status().context("could not start vng: run `cargo xtask setup`")?;
            return Ok(Run { console: String::new(), timed_out: false, success: status.success() });
        }
        let desc = cmd::describe(&c);
        std::fs::write(log.with_extension("cmd"), &desc)?;
        // Own process group, so a timeout kills QEMU along with vng.
        c.process_group(0).stdin(Stdio::null());
        let (reader, writer) = std::io::pipe()?;
        c.stdout(writer.try_clone()?).stderr(writer);
        let mut child = c.spawn().with_context(|| format!("could not start `{desc}`: run `cargo xtask setup`"))?;
        drop(c);
        let pid = child.id() as i32;

        let (tx, rx) = mpsc::channel::<String>();
        let pump = std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut logfile = std::fs::File::create(log)?;
        let mut console = String::new();
        let start = Instant::now();
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    writeln!(logfile, "{line}")?;
                    if self.echo {
                        echo_line(&line);
                    }
                    console.push_str(&line);
                    console.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if start.elapsed() > self.timeout && !timed_out {
                timed_out = true;
                writeln!(logfile, "xtask: VM timed out after {} s: killing it", self.timeout.as_secs())?;
                kill_group(pid);
            }
        }
        let status = child.wait()?;
        let _ = pump.join();
        Ok(Run { console, timed_out, success: status.success() })
    }
}

/// The vng arguments that describe the machine: accelerator, CPUs, memory,
/// kernel command line and the QEMU options of [`real_iommu_qemu_opts`].
/// A pure function, so the KVM command line (which this project's own
/// machine, without KVM, never boots) is checked by unit tests.
///
/// The `-cpu` model is vng's: `host,topoext=on` when it runs KVM, `max`
/// with `--disable-kvm`; both show the guest the features the nested QEMU
/// cases need, so none is passed here.
pub fn machine_args(accel: Accel, icount: bool) -> Vec<String> {
    let mut args = Vec::new();
    if accel == Accel::Tcg {
        args.push("--disable-kvm".to_owned());
    }
    // q35 rather than microvm: the VFIO tests want PCI and VT-d.
    args.extend(["--disable-microvm", "--cpus", "2", "--memory", "4G", "--verbose"].map(String::from));
    // An oops must end the run at once rather than leave a hung guest;
    // loglevel 6 puts warnings and lockdep reports on the console.
    // `intel_iommu=on` turns the emulated VT-d on (docs/testing.md).
    // `no_timer_check`: under a loaded TCG host the boot-time IO-APIC timer
    // check through interrupt remapping can miss its ticks and panic.
    args.push("--append".to_owned());
    args.push("oops=panic panic=-1 loglevel=6 kasan.fault=report intel_iommu=on no_timer_check".to_owned());
    let mut qemu_opts = real_iommu_qemu_opts(accel);
    if icount {
        // `sleep=off`: an idle guest skips ahead instead of waiting, so
        // timers still fire while the counter stands still. (Callers refuse
        // icount under KVM: QEMU counts only instructions it emulates.)
        qemu_opts.push_str(" -icount shift=0,sleep=off");
    }
    args.push(format!("--qemu-opts={qemu_opts}"));
    args
}

/// The QEMU options that give the guest an emulated Intel VT-d and the PCI
/// devices the real-IOMMU cases drive through `vfio-pci`: two `edu` devices
/// (each a DMA engine userspace can program, in its own IOMMU group), an
/// `e1000e` (a different device type, for domain sharing) and an
/// `ivshmem-plain` whose BAR2 is 1 GiB of 64-bit prefetchable memory
/// (device memory for the PFNMAP cases: big enough for PUD-sized pfn
/// entries; host memory only where touched). vng passes these last on
/// QEMU's command line, through a shell.
///
/// VT-d needs the q35 machine (vng asks for it only under TCG). Interrupt
/// remapping needs QEMU's own interrupt controller: under TCG it always is;
/// under KVM the irqchip must be split. `caching-mode=on` makes the guest
/// send invalidations for new mappings too, which QEMU needs to follow them.
pub fn real_iommu_qemu_opts(accel: Accel) -> String {
    let machine = match accel {
        Accel::Kvm => "q35,kernel-irqchip=split",
        Accel::Tcg => "q35",
    };
    format!(
        "-machine {machine} -device intel-iommu,intremap=on,caching-mode=on \
         -device edu,id=edu0 -device edu,id=edu1 -device e1000e,id=nic0 \
         -object memory-backend-memfd,id=shmmem0,size=1G,share=on \
         -device ivshmem-plain,memdev=shmmem0,id=shm0"
    )
}

/// Shows program output and kernel reports; hides routine kernel messages.
fn echo_line(line: &str) {
    match crate::report::kernel_message(line) {
        None => println!("    {line}"),
        Some(msg) => {
            if !crate::report::find_splats(line).is_empty() || msg.contains("Kernel panic") {
                println!("    kernel: {msg}");
            }
        }
    }
}

fn kill_group(pid: i32) {
    // `kill -KILL -PGID` through the kill(1) program keeps xtask free of unsafe.
    let _ = Command::new("kill").arg("-KILL").arg(format!("-{pid}")).status();
}

/// Fails early with a useful message when the kernel image is missing.
pub fn check_image(kernel: &KernelBuild) -> Result<()> {
    if !kernel.bzimage().exists() {
        bail!(
            "no kernel image at {}: the kernel cache is stale or incomplete; run `cargo xtask clean-cache` then `cargo xtask kernel`",
            kernel.bzimage().display()
        );
    }
    step(&format!("VM: kernel {}", kernel.release));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `--qemu-opts=` in `args`.
    fn qemu_opts(args: &[String]) -> &str {
        args.iter().find_map(|a| a.strip_prefix("--qemu-opts=")).expect("--qemu-opts is always passed")
    }

    #[test]
    fn kvm_machine_splits_the_irqchip_for_interrupt_remapping() {
        let args = machine_args(Accel::Kvm, false);
        assert!(!args.iter().any(|a| a == "--disable-kvm"), "{args:?}");
        let q = qemu_opts(&args);
        // Interrupt remapping on the emulated VT-d needs QEMU's IOAPIC.
        assert!(q.starts_with("-machine q35,kernel-irqchip=split "), "{q}");
        assert!(q.contains("-device intel-iommu,intremap=on,caching-mode=on"), "{q}");
        assert!(!q.contains("-icount"), "{q}");
        // vng chooses the CPU model (`-cpu host` under KVM); a second -cpu would fight it.
        assert!(!q.contains("-cpu"), "{q}");
        assert!(args.windows(2).any(|w| w[0] == "--append" && w[1].contains("intel_iommu=on")), "{args:?}");
    }

    #[test]
    fn tcg_machine_disables_kvm_and_keeps_the_irqchip_whole() {
        let args = machine_args(Accel::Tcg, false);
        assert_eq!(args[0], "--disable-kvm");
        let q = qemu_opts(&args);
        assert!(q.starts_with("-machine q35 "), "{q}");
        assert!(!q.contains("kernel-irqchip"), "{q}");
        assert!(q.contains("-device intel-iommu,intremap=on,caching-mode=on"), "{q}");
        for dev in ["edu,id=edu0", "edu,id=edu1", "e1000e,id=nic0", "ivshmem-plain,memdev=shmmem0"] {
            assert!(q.contains(dev), "{dev} missing: {q}");
        }
        assert!(["--disable-microvm", "--cpus", "2", "--memory", "4G"].iter().all(|w| args.iter().any(|a| a == w)), "{args:?}");
    }

    #[test]
    fn icount_goes_on_the_qemu_line() {
        let q = machine_args(Accel::Tcg, true);
        assert!(qemu_opts(&q).ends_with(" -icount shift=0,sleep=off"), "{q:?}");
    }

    #[test]
    fn probe_boots_the_test_machine_on_kvm() {
        let probe = kvm_probe();
        assert_eq!(probe.accel, Accel::Kvm);
        assert!(!probe.icount && !probe.interactive && probe.results.is_none());
        assert!(probe.exec.contains(KVM_PROBE_MARKER));
        assert!(probe.timeout <= Duration::from_secs(120));
    }

    #[test]
    fn virtualization_flags_are_read_from_cpuinfo() {
        assert!(cpu_has_virtualization("processor\t: 0\nflags\t\t: fpu vme sse2 vmx ept\n"));
        assert!(cpu_has_virtualization("flags\t\t: fpu svm npt\n"));
        assert!(!cpu_has_virtualization("flags\t\t: fpu vme hypervisor\nvmx flags\t: ept\n"));
        assert!(!cpu_has_virtualization(""));
    }
}
