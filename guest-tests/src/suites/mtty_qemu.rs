//! An mtty instance assigned to a QEMU guest: QEMU (TCG, inside the test
//! VM) gets an `mtty-2` instance with `-device vfio-pci,sysfsdev=...` and
//! boots the tiny inner kernel (`images/inner-guest.config`) with a busybox
//! initramfs (`images/inner-guest-init.sh`). The inner kernel's ordinary
//! 8250 PCI driver binds both ports; the init script writes a short line
//! (below the FIFO trigger level, so it needs the character timeout) and a
//! long one to each port and reads them back.
//!
//! xtask builds the inner kernel and passes its files in
//! `VFIO_RS_INNER_KERNEL` and `VFIO_RS_INNER_INITRD`.
//!
//! When the VM has the `ivshmem` (behind the VT-d), QEMU gets it too, with
//! `-device vfio-pci,host=...`: the container then has a real IOMMU domain,
//! QEMU maps the inner guest's RAM (pinned) and, once the inner firmware
//! turns memory decoding on, the device's 1 GiB BAR (a `ram_device` region
//! backed by QEMU's mmap of the BAR: device memory). QEMU traces each RAM
//! region it maps (`-trace vfio_listener_region_add_ram`) and reports a
//! failed map as `vfio_dma_map(...) = -errno`; the case requires the BAR's
//! map to be traced and no map to fail, on both backends.
//!
//! The C sample fails this (reported as `rx:0` in the issue; in our runs
//! the 3-byte lines come back and the 50-byte lines are lost, `rx:3` per
//! port); on the C backend the case reports a skip with the outcome rather
//! than failing the run.

use super::{fail, CaseResult, Ctx, Fail};
use crate::vfio::Mdev;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the inner guest may take from QEMU's start to its result line.
/// Nested TCG reaches the inner `/init` in 80-100 s on a busy 2-core host
/// and the case takes about 100 s (see docs/testing.md); this leaves room
/// without letting a hang eat the run.
pub const INNER_TIMEOUT: Duration = Duration::from_secs(420);

/// What the inner guest reported.
struct InnerRun {
    lines: Vec<String>,
    result: Option<bool>,
    elapsed: Duration,
    booted_after: Option<Duration>,
}

fn run_qemu(kernel: &str, initrd: &str, sysfsdev: &str, pci_host: Option<&str>) -> Result<InnerRun, Fail> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-machine", "pc", "-accel", "tcg,tb-size=64", "-m", "128", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(["-kernel", kernel, "-initrd", initrd])
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 8250.nr_uarts=8"])
        .args(["-device", &format!("vfio-pci,sysfsdev={sysfsdev}")]);
    if let Some(bdf) = pci_host {
        qemu.args(["-device", &format!("vfio-pci,host={bdf}")]).args(["-trace", "vfio_listener_region_add_ram"]);
    }
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start qemu-system-x86_64: {e}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut pumps = Vec::new();
    let out = child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for (stream, prefix) in [(out, ""), (err, "qemu: ")] {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        pumps.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(format!("{prefix}{}", line.trim_end_matches('\r'))).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let start = Instant::now();
    let mut run = InnerRun { lines: Vec::new(), result: None, elapsed: Duration::ZERO, booted_after: None };
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                if line.starts_with("INNER-BOOTED") {
                    run.booted_after = Some(start.elapsed());
                }
                if let Some(r) = line.strip_prefix("INNER-RESULT ") {
                    run.result = Some(r.trim() == "pass");
                }
                run.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > INNER_TIMEOUT {
            run.lines.push(format!("(killed QEMU after {} s)", INNER_TIMEOUT.as_secs()));
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for p in pumps {
        let _ = p.join();
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

/// QEMU assigns an `mtty-2` instance to a guest whose 8250 driver reads back
/// what it wrote on each port.
pub fn guest_8250(ctx: &Ctx) -> CaseResult {
    let (Ok(kernel), Ok(initrd)) = (std::env::var("VFIO_RS_INNER_KERNEL"), std::env::var("VFIO_RS_INNER_INITRD")) else {
        return Err(Fail::Skip("no inner guest kernel (VFIO_RS_INNER_KERNEL unset: run through cargo xtask test)".into()));
    };
    let mdev = Mdev::create(&ctx.mtty_parent(), "mtty-2")?;
    let shm = crate::pci::find(crate::pci::IVSHMEM_ID).into_iter().next();
    let run = run_qemu(&kernel, &initrd, &mdev.path.to_string_lossy(), shm.as_ref().map(|d| d.bdf.as_str()))?;
    drop(mdev);
    // Everything the inner guest said (its kernel's warnings included) goes
    // to the case's diagnostics.
    for l in run.lines.iter().filter(|l| l.starts_with("INNER-") || l.starts_with("qemu: ") || l.contains("8250")) {
        println!("{l}");
    }
    println!(
        "inner guest: booted after {}, finished after {:.1} s",
        run.booted_after.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        run.elapsed.as_secs_f64()
    );
    if shm.is_some() {
        check_device_memory_mapped(&run.lines)?;
    }
    let ports_ok = run.lines.iter().filter(|l| l.starts_with("INNER-PORT ") && l.ends_with(" ok")).count();
    let passed = run.result == Some(true) && ports_ok == 4;
    if !ctx.backend.rust_mtty {
        let what = if passed { "passed" } else { "failed" };
        let rx: Vec<&str> = run
            .lines
            .iter()
            .filter(|l| l.starts_with("INNER-SERIAL ") && !l.contains("port:000003F8"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("rx:")))
            .collect();
        return Err(Fail::Skip(format!(
            "known failure of the C sample with the 8250 driver; here it {what}: {ports_ok}/4 port checks ok, PCI ports {}",
            rx.join(" ")
        )));
    }
    match run.result {
        None => Err(fail(format!(
            "the inner guest gave no result within {:.0} s (last line: {:?})",
            run.elapsed.as_secs_f64(),
            run.lines.last()
        ))),
        Some(_) if !passed => Err(fail(format!("{ports_ok} of 4 port checks (2 ports x 2 lines) read back what was written"))),
        Some(_) => Ok(()),
    }
}

/// QEMU mapped the assigned ivshmem's 1 GiB BAR into the container (a
/// traced `region_add [ram]` of exactly 1 GiB) and no DMA map failed.
fn check_device_memory_mapped(lines: &[String]) -> CaseResult {
    let failed: Vec<&String> = lines.iter().filter(|l| l.contains("vfio_dma_map(")).collect();
    if !failed.is_empty() {
        return Err(fail(format!("QEMU could not map guest memory into the container: {failed:?}")));
    }
    // `vfio_listener_region_add_ram region_add [ram] 0xSTART - 0xEND [0xVADDR]`
    let bar_mapped = lines.iter().filter(|l| l.contains("region_add [ram]")).any(|l| {
        let nums: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.trim_matches(|c| c == '[' || c == ']').strip_prefix("0x"))
            .filter_map(|h| u64::from_str_radix(h, 16).ok())
            .collect();
        nums.len() >= 2 && nums[1].wrapping_sub(nums[0]).wrapping_add(1) == 1 << 30
    });
    if !bar_mapped {
        let traced: Vec<&String> = lines.iter().filter(|l| l.contains("region_add")).collect();
        return Err(fail(format!("QEMU never mapped the ivshmem's 1 GiB BAR (traced maps: {traced:?})")));
    }
    Ok(())
}
