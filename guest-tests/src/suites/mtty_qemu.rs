//! An mtty instance assigned to a QEMU guest: QEMU (TCG, inside the test
//! VM) gets an `mtty-2` instance with `-device vfio-pci,sysfsdev=...` and
//! boots the tiny inner kernel (`images/inner-guest.config`) with a busybox
//! initramfs (`images/inner-guest-init.sh`). The inner kernel's ordinary
//! 8250 PCI driver binds both ports; the init script writes a short line
//! (below the FIFO trigger level, so it needs the character timeout) and a
//! long one to each port and reads them back.
//!
//! QEMU is driven through `crate::inner_qemu`, shared with the `qemu.*`
//! cases.
//!
//! When the VM has the `ivshmem` (behind the VT-d), QEMU gets it too, with
//! `-device vfio-pci,host=...`: the container then has a real IOMMU domain,
//! QEMU maps the inner guest's RAM (pinned) and, once the inner firmware
//! turns memory decoding on, the device's 1 GiB BAR (a `ram_device` region
//! backed by QEMU's mmap of the BAR: device memory). QEMU traces each RAM
//! region it maps (`-trace vfio_listener_region_add_ram`) and reports a
//! failed map as `vfio_container_dma_map(...) = -errno`; the case requires the BAR's
//! map to be traced and no map to fail, on both backends.
//!
//! The C sample fails this (reported as `rx:0` in the issue; in our runs
//! the 3-byte lines come back and the 50-byte lines are lost, `rx:3` per
//! port); on the C backend the case reports a skip with the outcome rather
//! than failing the run.

use super::{fail, CaseResult, Ctx, Fail};
use crate::inner_qemu::{self, InnerQemu};
use crate::vfio::Mdev;
use std::time::{Duration, Instant};

/// How long the inner guest may take from QEMU's start to its result line.
/// Nested TCG reaches the inner `/init` in 15-25 s (80-100 s on a busy
/// 2-core host) and the case takes about 20 s on ours (see
/// docs/testing.md); this leaves room without letting a hang eat the run.
pub const INNER_TIMEOUT: Duration = Duration::from_secs(420);

/// QEMU assigns an `mtty-2` instance to a guest whose 8250 driver reads back
/// what it wrote on each port.
pub fn guest_8250(ctx: &Ctx) -> CaseResult {
    run_guest_8250(ctx, false)
}

/// The same through iommufd: QEMU opens the instance's cdev
/// (`/dev/vfio/devices/vfioN`) and `/dev/iommu` (`-object iommufd`) instead
/// of a type1 container, so the mtty's accesses go through iommufd's access
/// object. Only the instance: the ivshmem's BAR (device memory) cannot be
/// mapped into an IOAS by 6.12's iommufd.
pub fn guest_8250_iommufd(ctx: &Ctx) -> CaseResult {
    if !ctx.backend.rust_mtty {
        return Err(Fail::Skip("the C sample already fails the 8250 check through its group (mtty.qemu.guest_8250)".into()));
    }
    if !std::path::Path::new("/dev/iommu").exists() {
        return Err(Fail::Skip("no /dev/iommu: the kernel has no CONFIG_IOMMUFD".into()));
    }
    run_guest_8250(ctx, true)
}

fn run_guest_8250(ctx: &Ctx, iommufd: bool) -> CaseResult {
    let mut qemu = inner_qemu::command(128, "vfio_rs.case=serial")?;
    let mdev = Mdev::create(&ctx.mtty_parent(), "mtty-2")?;
    if iommufd {
        qemu.args(["-object", "iommufd,id=iommufd0"])
            .args(["-device", &format!("vfio-pci,sysfsdev={},iommufd=iommufd0", mdev.path.display())]);
    } else {
        qemu.args(["-device", &format!("vfio-pci,sysfsdev={}", mdev.path.display())]);
    }
    let shm = if iommufd { None } else { crate::pci::find(crate::pci::IVSHMEM_ID).into_iter().next() };
    if let Some(dev) = &shm {
        qemu.args(["-device", &format!("vfio-pci,host={}", dev.bdf)]).args(["-trace", "vfio_listener_region_add_ram"]);
    }
    let mut vm = InnerQemu::spawn(qemu)?;
    let deadline = Instant::now() + INNER_TIMEOUT;
    // Which way QEMU reached the device, seen from its open files once the
    // inner guest runs.
    vm.wait_for(deadline, |l| l.starts_with("INNER-BOOTED"));
    let files = vm.open_files();
    let result = vm.result(deadline);
    vm.finish(Duration::from_secs(10));
    drop(mdev);
    // Everything the inner guest said (its kernel's warnings included) goes
    // to the case's diagnostics.
    vm.print("inner guest");
    if shm.is_some() {
        check_device_memory_mapped(&vm)?;
    }
    let through_cdev = files.iter().any(|f| f == "/dev/iommu") && files.iter().any(|f| f.starts_with("/dev/vfio/devices/vfio"));
    if iommufd && !through_cdev {
        return Err(fail(format!("QEMU has no /dev/iommu and device cdev open: {files:?}")));
    }
    if !iommufd && !files.iter().any(|f| f == "/dev/vfio/vfio") {
        return Err(fail(format!("QEMU has no type1 container (/dev/vfio/vfio) open: {files:?}")));
    }
    let run = &vm;
    let ports_ok = run.lines.iter().filter(|l| l.starts_with("INNER-PORT ") && l.ends_with(" ok")).count();
    let passed = result == Some(true) && ports_ok == 4;
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
    match result {
        None => Err(fail(format!(
            "the inner guest gave no result within {:.0} s (last line: {:?})",
            INNER_TIMEOUT.as_secs_f64(),
            run.lines.last()
        ))),
        Some(_) if !passed => Err(fail(format!("{ports_ok} of 4 port checks (2 ports x 2 lines) read back what was written"))),
        Some(_) => Ok(()),
    }
}

/// QEMU mapped the assigned ivshmem's 1 GiB BAR into the container (a
/// traced `region_add [ram]` of exactly 1 GiB) and no DMA map failed.
fn check_device_memory_mapped(vm: &InnerQemu) -> CaseResult {
    let lines = &vm.lines;
    let failed = vm.dma_map_errors();
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
