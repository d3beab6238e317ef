//! The device list under concurrency: devices opened and closed while other
//! threads unmap memory that a device has pinned, in one container.
//!
//! The C type1 (6.12) takes its container lock then its device-list lock to
//! register a device, but holds the device-list lock while the devices'
//! `dma_unmap` callbacks take the container lock to unpin. These threads make
//! both orders happen, which lockdep reports for the C type1; ours takes the
//! device-list lock with nothing held. The run's kernel-log check turns any
//! lockdep report into a failure, so this case runs only where it must stay
//! silent: our type1 with our mtty (the only mdev here that pins).

use super::{fail, CaseResult, Ctx, Fail};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{Buffer, Container, Device, Errno, Group, Mdev};
use crate::{check, check_eq};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// Maps a ring page, starts the engine on it (which pins the page), unmaps
/// it (which must make the device unpin and halt with UNMAPPED), resets the
/// engine. Returns the size the unmap reported.
fn pin_and_unmap(c: &Container, d: &Device, bar2: u64, mem: &Buffer, iova: u64) -> Result<u64, String> {
    c.map_rw(mem.vaddr(), iova, PAGE).map_err(|e| format!("map: {e}"))?;
    let step = || -> Result<(), Errno> {
        d.write32(bar2 + TX + RING_BASE, iova as u32)?;
        d.write32(bar2 + TX + RING_BASE + 4, (iova >> 32) as u32)?;
        d.write32(bar2 + TX + RING_SIZE, 16)?;
        d.write32(bar2 + CTRL, CTRL_ENABLE)
    };
    step().map_err(|e| format!("program engine: {e}"))?;
    let status = d.read32(bar2 + STATUS).map_err(|e| e.to_string())?;
    if status & STATUS_RUNNING == 0 {
        return Err(format!("engine not running after enable: status {status:#x}"));
    }
    let size = c.unmap_range(iova, PAGE).map_err(|e| format!("unmap of a pinned page: {e}"))?;
    let code = d.read32(bar2 + ERROR_CODE).map_err(|e| e.to_string())?;
    if code != ERR_UNMAPPED {
        return Err(format!("error code after unmap: {code}, wanted UNMAPPED"));
    }
    d.write32(bar2 + CTRL, CTRL_RESET).map_err(|e| format!("reset engine: {e}"))?;
    Ok(size)
}

/// Opens and closes devices on the container while another thread makes
/// one device pin and then unmaps the pinned memory, and a third maps and
/// unmaps unpinned memory; bounded in time, every operation must succeed.
pub fn device_list_stress(ctx: &Ctx) -> CaseResult {
    if !(ctx.backend.rust_type1 && ctx.backend.rust_mtty) {
        return Err(Fail::Skip(
            "needs the Rust mtty to pin, and would provoke the C type1's lock inversion (lockdep)".into(),
        ));
    }
    let parent = ctx.mtty_parent();
    let a = Mdev::create(&parent, "mtty-1")?;
    let b = Mdev::create(&parent, "mtty-1")?;
    let ga = Group::open(a.group()?)?;
    let gb = Group::open(b.group()?)?;
    let c = Arc::new(Container::open()?);
    ga.set_container(&c)?;
    gb.set_container(&c)?;
    c.set_iommu(VFIO_TYPE1v2_IOMMU)?;
    let da = ga.device(&a.uuid)?;
    let cfg = da.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    da.pwrite(&0x0007u16.to_le_bytes(), cfg + 4)?; // memory space + bus master
    let bar2 = da.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;

    let stop = Arc::new(AtomicBool::new(false));
    let opens = Arc::new(AtomicU64::new(0));
    let plain = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(8);

    let opener = {
        let (stop, opens, uuid) = (stop.clone(), opens.clone(), b.uuid.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                // Opening registers the device on the container; closing
                // unregisters it.
                let d = gb.device(&uuid).map_err(|e| format!("open device: {e}"))?;
                drop(d);
                opens.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let mapper = {
        let (stop, plain, c) = (stop.clone(), plain.clone(), c.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mem = Buffer::new(16 * PAGE as usize);
            while !stop.load(Ordering::Relaxed) {
                c.map_rw(mem.vaddr(), 0x4000_0000, 16 * PAGE).map_err(|e| format!("map: {e}"))?;
                let n = c.unmap_range(0x4000_0000, 16 * PAGE).map_err(|e| format!("unmap: {e}"))?;
                if n != 16 * PAGE {
                    return Err(format!("unmapped {n} bytes, wanted {}", 16 * PAGE));
                }
                plain.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let mem = Buffer::new(PAGE as usize);
    let mut rounds = 0u64;
    let mut result = Ok(());
    while Instant::now() < deadline {
        match pin_and_unmap(&c, &da, bar2, &mem, 0x10_0000) {
            Ok(PAGE) => rounds += 1,
            Ok(n) => {
                result = Err(fail(format!("round {rounds}: unmap reported {n} bytes")));
                break;
            }
            Err(e) => {
                result = Err(fail(format!("round {rounds}: {e}")));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let o = opener.join().map_err(|_| fail("opener thread panicked"))?;
    let m = mapper.join().map_err(|_| fail("mapper thread panicked"))?;
    result?;
    o.map_err(fail)?;
    m.map_err(fail)?;
    let (opens, plain) = (opens.load(Ordering::Relaxed), plain.load(Ordering::Relaxed));
    println!("{rounds} pin+unmap rounds, {opens} device opens, {plain} plain map/unmap pairs");
    check!(rounds >= 5 && opens >= 5 && plain >= 5, "too little concurrency: {rounds} rounds, {opens} opens, {plain} pairs");
    check_eq!(c.unmap_range(0, 1 << 40)?, 0, "mappings left");
    Ok(())
}
