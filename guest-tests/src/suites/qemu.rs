//! QEMU as the client of the backend under test: QEMU (10, TCG) runs inside
//! the test VM and boots the tiny inner kernel (`crate::inner_qemu`).
//!
//! - `qemu.vfio_pci_nic`: the test VM's `e1000e` is assigned with
//!   `-device vfio-pci,host=BDF`. QEMU opens a type1v2 container on the
//!   real IOMMU, pins and maps the inner guest's RAM and maps the NIC's
//!   MMIO BARs (device memory); the inner guest's ordinary e1000e driver
//!   brings the link up and sends frames, which the outer QEMU's e1000e
//!   fetches by DMA through the VT-d from the pages QEMU pinned, and its
//!   MSI-X vectors reach the inner guest through QEMU's vfio-pci
//!   interrupt path.
//! - `qemu.migrate_mtty`: live migration of an inner guest whose serial
//!   port is an mtty instance, to a second QEMU with a second instance,
//!   while the guest streams numbered lines through the port's loopback and
//!   (our mtty) has the device's DMA engine copy pages that only the device
//!   writes (`vfio-guest inner-dma`): the VFIO migration v2 uAPI and the
//!   container's dirty-page tracking, driven by QEMU.

use super::{fail, pins_held, CaseResult, Ctx, Fail};
use crate::inner_qemu::{self, InnerQemu, Qmp};
use crate::pci;
use crate::vfio::{vm_locked_kb_of, Mdev};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long an inner guest may take to reach its result: nested TCG boots
/// the tiny kernel in 15-25 s on an idle 2-core host, several times that
/// on a busy one.
pub const INNER_TIMEOUT: Duration = Duration::from_secs(300);

/// The inner guest's RAM in MiB: what QEMU pins and maps.
const NIC_GUEST_MIB: u64 = 128;
/// Frames the inner guest sends (`FRAMES` in images/inner-guest-init.sh).
const NIC_FRAMES: u32 = 16;

/// Waits (up to 5 s, the counters are folded lazily) for the system's pin
/// count to come back to `baseline`; returns what it reads last.
fn pins_back_to(baseline: i64) -> Result<i64, Fail> {
    let t = Instant::now();
    loop {
        let now = pins_held()?;
        if now <= baseline || t.elapsed() > Duration::from_secs(5) {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number at the start of `INNER-IRQ` lines' per-CPU column, summed over
/// the lines that are MSI or MSI-X vectors.
fn msi_interrupts(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("INNER-IRQ "))
        .filter(|l| l.contains("PCI-MSI"))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// The test VM's e1000e assigned to an inner guest that sends frames.
pub fn vfio_pci_nic(_ctx: &Ctx) -> CaseResult {
    let Some(nic) = pci::find(pci::E1000E_ID).into_iter().next() else {
        return Err(Fail::Skip("no e1000e in the test VM".into()));
    };
    if pci::driver(&nic.bdf).as_deref() != Some("vfio-pci") {
        return Err(fail(format!("{} is not bound to vfio-pci", nic.bdf)));
    }
    let pins_before = pins_held()?;
    let dmar_before = pci::dmar_fault_irqs();
    let mut qemu = inner_qemu::command(NIC_GUEST_MIB as u32, "vfio_rs.case=nic")?;
    qemu.args(["-device", &format!("vfio-pci,host={}", nic.bdf)]);
    let mut vm = InnerQemu::spawn(qemu)?;
    let deadline = Instant::now() + INNER_TIMEOUT;
    // While the guest runs (its link is up, its RAM mapped): what QEMU has
    // locked and what the system has pinned.
    let running = vm.wait_for(deadline, |l| l.starts_with("INNER-LINK ")).is_some();
    let locked_kb = vm_locked_kb_of(&vm.pid().to_string());
    let pinned_while_running = pins_held()? - pins_before;
    let result = if running { vm.result(deadline) } else { None };
    vm.finish(Duration::from_secs(10));
    vm.print("inner guest");
    let pins_after = pins_back_to(pins_before)?;
    let dmar_after = pci::dmar_fault_irqs();
    println!(
        "QEMU VmLck while running: {locked_kb} kB; pages pinned then: {pinned_while_running}; after exit: {}",
        pins_after - pins_before
    );

    let errors = vm.dma_map_errors();
    if !errors.is_empty() {
        return Err(fail(format!("QEMU could not map into the container: {errors:?}")));
    }
    let Some(passed) = result else {
        return Err(fail(format!("the inner guest gave no result (last line: {:?})", vm.lines.last())));
    };
    if !passed {
        let tx: Vec<&String> = vm.lines.iter().filter(|l| l.starts_with("INNER-TX") || l.starts_with("INNER-LINK")).collect();
        return Err(fail(format!("the inner guest's NIC check failed: {tx:?}")));
    }
    let transmitted = vm
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("INNER-PING ").filter(|r| r.contains("packets transmitted")))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok());
    if transmitted != Some(NIC_FRAMES) {
        return Err(fail(format!("ping sent {transmitted:?} frames, not {NIC_FRAMES}")));
    }
    if msi_interrupts(&vm.lines) == 0 {
        return Err(fail("no MSI/MSI-X interrupt reached the inner guest's e1000e"));
    }
    // QEMU locks exactly what it mapped: the guest's RAM plus its ROMs
    // (BIOS, option ROMs; well under a MiB), and the same pages are pinned.
    let ram_kb = NIC_GUEST_MIB * 1024;
    if !(ram_kb..ram_kb + 2048).contains(&locked_kb) {
        return Err(fail(format!("QEMU's VmLck is {locked_kb} kB for {ram_kb} kB of guest RAM")));
    }
    if pinned_while_running * 4 < ram_kb as i64 {
        return Err(fail(format!("only {pinned_while_running} pages pinned for {ram_kb} kB of guest RAM")));
    }
    if pins_after != pins_before {
        return Err(fail(format!("{} pages still pinned after QEMU exited", pins_after - pins_before)));
    }
    if dmar_after != dmar_before {
        return Err(fail(format!("{} DMAR fault events during the run", dmar_after - dmar_before)));
    }
    Ok(())
}

/// The inner guest's RAM for the migration case, small to keep pre-copy
/// short under nested TCG.
const MIGRATE_GUEST_MIB: u32 = 64;
/// Lines the inner guest streams: enough to outlast the migration.
const STREAM_LINES: u32 = 200;
/// The line after which the outer case starts the migration.
const MIGRATE_AT_LINE: u32 = 20;

/// One side of the migration: QEMU with an `mtty-1` instance and a QMP
/// socket; the destination also waits for the incoming stream.
fn migration_side(mdev: &Mdev, qmp: &str, incoming: Option<&str>) -> Result<InnerQemu, Fail> {
    let mut qemu = inner_qemu::command(MIGRATE_GUEST_MIB, &format!("vfio_rs.case=stream vfio_rs.lines={STREAM_LINES}"))?;
    qemu
        // `enable-migration=on`: the device has no dirty tracking of its own
        // (no DMA logging feature), so QEMU (9.1 and later) would block
        // migration unless told to use the container's dirty tracking.
        .args(["-device", &format!("vfio-pci,sysfsdev={},id=mtty0,enable-migration=on", mdev.path.display())])
        .args(["-qmp", &format!("unix:{qmp},server=on,wait=off")]);
    if let Some(uri) = incoming {
        qemu.args(["-incoming", uri]);
    }
    InnerQemu::spawn(qemu)
}

/// The UART register line (`INNER-REGS before|after ier=.. lcr=..`) without
/// its label.
fn regs<'a>(vm: &'a InnerQemu, label: &str) -> Option<&'a str> {
    vm.lines.iter().find_map(|l| l.strip_prefix("INNER-REGS ").and_then(|r| r.strip_prefix(label)).map(str::trim))
}

/// Live migration of a guest that streams bytes through its mtty port.
pub fn migrate_mtty(ctx: &Ctx) -> CaseResult {
    inner_qemu::inner_guest_files()?;
    let dir = std::env::temp_dir().join(format!("vfio-rs-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let sock = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (src_qmp, dst_qmp, stream) = (sock("src.qmp"), sock("dst.qmp"), sock("migration"));
    let pins_before = pins_held()?;
    let src_dev = Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let dst_dev = Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let mut src = migration_side(&src_dev, &src_qmp, None)?;
    let mut dst = migration_side(&dst_dev, &dst_qmp, Some(&format!("unix:{stream}")))?;
    let deadline = Instant::now() + INNER_TIMEOUT;
    let outcome = migrate_while_streaming(&mut src, &mut dst, &src_qmp, &dst_qmp, &stream, deadline, ctx.backend.rust_mtty);
    src.finish(Duration::from_secs(2));
    dst.finish(Duration::from_secs(10));
    src.print("source");
    dst.print("destination");
    drop((src_dev, dst_dev));
    let _ = std::fs::remove_dir_all(&dir);
    let pins_after = pins_back_to(pins_before)?;
    let verdict = outcome.and_then(|()| {
        let (before, after) = (regs(&src, "before"), regs(&dst, "after"));
        // The inner guest wrote 0xa5 to the scratch register first.
        if !before.is_some_and(|r| r.contains("scr=a5")) || before != after {
            return Err(fail(format!("UART registers before the migration {before:?}, after {after:?}")));
        }
        if pins_after != pins_before {
            return Err(fail(format!("{} pages still pinned after both QEMUs exited", pins_after - pins_before)));
        }
        Ok(())
    });
    match verdict {
        Err(Fail::Fail(why)) if !ctx.backend.rust_mtty => Err(Fail::Skip(format!(
            "the C sample does not pass this (its interrupt model loses long lines, see mtty.qemu.guest_8250): {why}"
        ))),
        v => v,
    }
}

fn migrate_while_streaming(
    src: &mut InnerQemu,
    dst: &mut InnerQemu,
    src_qmp: &str,
    dst_qmp: &str,
    stream: &str,
    deadline: Instant,
    rust_mtty: bool,
) -> CaseResult {
    let started = format!("INNER-STREAM {MIGRATE_AT_LINE} ok");
    if !src.reached(deadline, &started) {
        return Err(fail(format!("the source never streamed {MIGRATE_AT_LINE} lines (last: {:?})", src.lines.last())));
    }
    // Our mtty's engine has copied on the source before the migration starts.
    if rust_mtty && !src.reached(deadline, "INNER-DMA round 2 ") {
        return Err(fail(format!("the DMA engine never completed 2 rounds on the source (last: {:?})", src.lines.last())));
    }
    let mut qmp = Qmp::connect(std::path::Path::new(src_qmp), Duration::from_secs(10))?;
    // Make sure the destination is listening before the source connects.
    let _dst_qmp = Qmp::connect(std::path::Path::new(dst_qmp), Duration::from_secs(30))?;
    qmp.execute("migrate-set-parameters", json!({ "max-bandwidth": 1u64 << 30, "downtime-limit": 2000 }))?;
    let t = Instant::now();
    qmp.execute("migrate", json!({ "uri": format!("unix:{stream}") }))?;
    let status = loop {
        let info = qmp.execute("query-migrate", serde_json::Value::Null)?;
        let status = info.get("status").and_then(|s| s.as_str()).unwrap_or("").to_owned();
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") || Instant::now() > deadline {
            if status != "completed" {
                println!("query-migrate: {info}");
            }
            break status;
        }
        // Keep the source's console flowing meanwhile.
        src.wait_for(Instant::now() + Duration::from_millis(300), |_| false);
    };
    println!("migration {status} after {:.1} s", t.elapsed().as_secs_f64());
    if status != "completed" {
        return Err(fail(format!("migration ended {status:?}")));
    }
    let _ = qmp.execute("quit", serde_json::Value::Null);
    let last_on_source = src
        .lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("INNER-STREAM ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse::<u32>().ok()))
        .unwrap_or(0);
    match dst.result(deadline) {
        None => Err(fail(format!("the destination gave no result (last line: {:?})", dst.lines.last()))),
        Some(false) => Err(fail(format!("the stream broke on the destination: {:?}", dst.lines.iter().rev().take(3).collect::<Vec<_>>()))),
        Some(true) => {
            // Our mtty's engine copied pages before, across and after the
            // switch-over, every byte checked by the inner guest's CPU.
            let dma_on_destination = dst.lines.iter().filter(|l| l.starts_with("INNER-DMA round ")).count();
            let dma_done = dst.lines.iter().any(|l| l.starts_with("INNER-DMA done"));
            let dma_on_source = src.lines.iter().filter(|l| l.starts_with("INNER-DMA round ")).count();
            println!("DMA rounds: {dma_on_source} on the source, {dma_on_destination} on the destination");
            if rust_mtty && (!dma_done || dma_on_source == 0 || dma_on_destination == 0) {
                return Err(fail("the DMA engine did not run on both sides of the migration"));
            }
            let on_destination = dst.lines.iter().filter(|l| l.starts_with("INNER-STREAM ")).count();
            println!("lines checked: up to {last_on_source} on the source, then {on_destination} progress lines on the destination");
            if on_destination == 0 {
                return Err(fail("the stream finished before the switch-over: nothing ran on the destination"));
            }
            Ok(())
        }
    }
}
