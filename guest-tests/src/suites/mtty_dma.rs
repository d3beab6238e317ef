//! The DMA engine behind BAR2 of the Rust mtty (`docs/mtty-dma.md`): rings
//! in user memory by IOVA, pages pinned through the container's type1
//! backend, and the `dma_unmap` path. The C sample has no DMA engine, so
//! these cases skip there.

use super::mtty::{open_device, Open};
use super::{fail, CaseResult, Ctx, Fail};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, Buffer, Container, Device, Group, Mdev};
use crate::{check, check_eq};



const PAGE: u64 = 4096;
/// IOVA of the mapping every case uses; the pages inside it:
const IOVA: u64 = 0x10_0000;
const TX_RING: u64 = 0; // page 0
const RX_RING: u64 = 1; // page 1
const TX_BUF: u64 = 2; // page 2
const RX_BUF: u64 = 3; // page 3
const MAP_PAGES: u64 = 16;

fn rust_only(ctx: &Ctx) -> CaseResult {
    if ctx.backend.rust_mtty {
        Ok(())
    } else {
        Err(Fail::Skip("the C sample has no DMA engine".into()))
    }
}

/// A device with its memory mapped at `IOVA` and bus mastering on.
struct Dma {
    bar: u64,
    mem: Buffer,
}

impl Dma {
    fn new(d: &Device, c: &Container) -> Result<Self, Fail> {
        let mem = Buffer::new((MAP_PAGES * PAGE) as usize);
        c.map_rw(mem.vaddr(), IOVA, MAP_PAGES * PAGE)?;
        let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
        d.write16(cfg + 0x04, 0x0007)?;
        let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
        check_eq!(d.read32(bar + ID)?, ID_VALUE, "engine ID");
        Ok(Dma { bar, mem })
    }

    fn page_ptr(&self, page: u64) -> *mut u8 {
        // SAFETY: every page used is inside the mapping.
        unsafe { self.mem.addr.add((page * PAGE) as usize) }
    }

    /// Writes a descriptor (addr, len, flags 0) at entry `i` of the ring in `page`.
    fn post(&self, ring_page: u64, i: usize, addr: u64, len: u32) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        // SAFETY: 16 bytes inside the ring page.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.page_ptr(ring_page).add(i * 16), 16) };
    }

    /// Reads back (len, flags) of entry `i` of the ring in `page`.
    fn desc(&self, ring_page: u64, i: usize) -> (u32, u32) {
        let mut raw = [0u8; 16];
        // SAFETY: 16 bytes inside the ring page.
        unsafe { std::ptr::copy_nonoverlapping(self.page_ptr(ring_page).add(i * 16), raw.as_mut_ptr(), 16) };
        (u32::from_le_bytes(raw[8..12].try_into().unwrap()), u32::from_le_bytes(raw[12..16].try_into().unwrap()))
    }

    /// Programs both rings (16 entries each) and enables the engine.
    fn start(&self, d: &Device, tx_ring: u64, rx_ring: u64) -> CaseResult {
        let b = self.bar;
        d.write32(b + TX + RING_BASE, (IOVA + tx_ring * PAGE) as u32)?;
        d.write32(b + TX + RING_BASE + 4, 0)?;
        d.write32(b + TX + RING_SIZE, 16)?;
        d.write32(b + RX + RING_BASE, (IOVA + rx_ring * PAGE) as u32)?;
        d.write32(b + RX + RING_BASE + 4, 0)?;
        d.write32(b + RX + RING_SIZE, 16)?;
        d.write32(b + INT_ENABLE, 0x7)?;
        d.write32(b + CTRL, CTRL_ENABLE)?;
        check_eq!(d.read32(b + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine running");
        Ok(())
    }
}

/// Sends bytes through the TX ring into the UART and back out of the RX
/// ring; locked memory follows the pins.
pub fn loopback_and_pins(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let base = vm_locked_kb();
    let dma = Dma::new(d, &o._container)?;
    check_eq!(vm_locked_kb(), base, "mapping alone pins nothing (no IOMMU domain)");
    d.info()?;
    let ev = crate::vfio::EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
    dma.start(d, TX_RING, RX_RING)?;
    check_eq!(vm_locked_kb(), base + 8, "both ring pages pinned while running");
    let msg = b"hello, dma";
    // SAFETY: inside the TX buffer page.
    unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), dma.page_ptr(TX_BUF), msg.len()) };
    dma.post(RX_RING, 0, IOVA + RX_BUF * PAGE, 64);
    d.write32(dma.bar + RX + RING_TAIL, 1)?;
    d.write32(dma.bar + DOORBELL, 2)?;
    dma.post(TX_RING, 0, IOVA + TX_BUF * PAGE, msg.len() as u32);
    d.write32(dma.bar + TX + RING_TAIL, 1)?;
    d.write32(dma.bar + DOORBELL, 1)?;
    check_eq!(d.read32(dma.bar + TX + RING_HEAD)?, 1, "TX head");
    check_eq!(dma.desc(TX_RING, 0), (msg.len() as u32, DESC_DONE), "TX descriptor written back");
    check_eq!(d.read32(dma.bar + RX + RING_HEAD)?, 1, "RX head");
    check_eq!(dma.desc(RX_RING, 0), (msg.len() as u32, DESC_DONE), "RX descriptor written back");
    let mut got = vec![0u8; msg.len()];
    // SAFETY: inside the RX buffer page.
    unsafe { std::ptr::copy_nonoverlapping(dma.page_ptr(RX_BUF), got.as_mut_ptr(), msg.len()) };
    check_eq!(&got[..], &msg[..], "bytes through TX ring, UART and RX ring");
    check_eq!(d.read32(dma.bar + INT_STATUS)? & 3, 3, "TX and RX done interrupts");
    check!(ev.take() >= 1, "completion interrupt delivered as MSI");
    d.write32(dma.bar + INT_STATUS, 3)?;
    check_eq!(d.read32(dma.bar + INT_STATUS)? & 3, 0, "INT_STATUS is write-1-to-clear");
    check_eq!(vm_locked_kb(), base + 8, "buffer pins released after each descriptor");
    d.write32(dma.bar + CTRL, 0)?;
    check_eq!(d.read32(dma.bar + STATUS)? & STATUS_BUSY, 0, "idle after disable");
    check_eq!(vm_locked_kb(), base, "disable releases the ring pins");
    o._container.unmap_range(IOVA, MAP_PAGES * PAGE)?;
    check_eq!(d.read32(dma.bar + STATUS)? & STATUS_ERROR, 0, "unmapping unpinned memory is no error");
    Ok(())
}

/// Unmapping pinned ring pages while the engine runs: the unmap completes,
/// the engine stops with UNMAPPED and the pins are gone.
pub fn unmap_while_running(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let base = vm_locked_kb();
    let dma = Dma::new(d, &o._container)?;
    dma.start(d, TX_RING, RX_RING)?;
    check_eq!(vm_locked_kb(), base + 8, "ring pages pinned");
    let n = o._container.unmap_range(IOVA, MAP_PAGES * PAGE)?;
    check_eq!(n, MAP_PAGES * PAGE, "unmapped size");
    let st = d.read32(dma.bar + STATUS)?;
    check_eq!(st & (STATUS_RUNNING | STATUS_ERROR | STATUS_BUSY), STATUS_ERROR, "stopped with an error, nothing held");
    check_eq!(d.read32(dma.bar + ERROR_CODE)?, ERR_UNMAPPED, "error code");
    check_eq!(d.read32(dma.bar + ERROR_IOVA)?, IOVA as u32, "error IOVA: the lowest pinned and unmapped");
    check_eq!(d.read32(dma.bar + INT_STATUS)? & 4, 4, "error interrupt status");
    check_eq!(vm_locked_kb(), base, "pins released by the unmap");
    Ok(())
}

/// VFIO_DEVICE_RESET releases every pin.
pub fn reset_releases_pins(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let base = vm_locked_kb();
    let dma = Dma::new(d, &o._container)?;
    dma.start(d, TX_RING, RX_RING)?;
    check_eq!(vm_locked_kb(), base + 8, "ring pages pinned");
    d.reset()?;
    check_eq!(vm_locked_kb(), base, "reset releases the pins");
    check_eq!(d.read32(dma.bar + STATUS)?, 0, "engine in reset state");
    Ok(())
}

/// Closing the device releases every pin; so does removing the instance.
pub fn close_releases_pins(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let Open { device, _container, _group, _mdev } = open_device(ctx, "mtty-1")?;
    let base = vm_locked_kb();
    let dma = Dma::new(&device, &_container)?;
    dma.start(&device, TX_RING, RX_RING)?;
    check_eq!(vm_locked_kb(), base + 8, "ring pages pinned");
    drop(device);
    check_eq!(vm_locked_kb(), base, "close releases the pins");
    let device = _group.device(&_mdev.uuid)?;
    check_eq!(device.read32(dma.bar + STATUS)? & STATUS_RUNNING, 0, "engine stopped after close");
    dma.start(&device, TX_RING, RX_RING)?;
    check_eq!(vm_locked_kb(), base + 8, "pinned again after reopen");
    drop(device);
    check_eq!(vm_locked_kb(), base, "second close releases them too");
    Ok(())
}

/// Two devices in two groups of one container: one unmap reaches both.
pub fn unmap_reaches_second_device(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let s = ctx.container_with_mdev("mtty-1")?;
    let d1 = s.group.device(&s.mdev.uuid).map_err(|e| fail(format!("GET_DEVICE_FD: {e}")))?;
    let m2 = Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let g2 = Group::open(m2.group()?).map_err(|e| fail(format!("open second group: {e}")))?;
    g2.set_container(&s.container)?;
    let d2 = g2.device(&m2.uuid)?;
    let base = vm_locked_kb();
    let dma1 = Dma::new(&d1, &s.container)?;
    // The mapping already exists: only enable bus mastering on the second.
    let cfg2 = d2.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d2.write16(cfg2 + 0x04, 0x0007)?;
    let dma2 = Dma { bar: d2.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset, mem: Buffer::new(PAGE as usize) };
    dma1.start(&d1, TX_RING, RX_RING)?;
    dma2.start(&d2, 4, 5)?;
    check_eq!(vm_locked_kb(), base + 16, "four ring pages pinned");
    s.container.unmap_range(IOVA, MAP_PAGES * PAGE)?;
    for (d, dma, first) in [(&d1, &dma1, IOVA), (&d2, &dma2, IOVA + 4 * PAGE)] {
        check_eq!(d.read32(dma.bar + ERROR_CODE)?, ERR_UNMAPPED, "both engines see the unmap");
        check_eq!(d.read32(dma.bar + ERROR_IOVA)?, first as u32, "each reports its own first page");
    }
    check_eq!(vm_locked_kb(), base, "all pins released");
    drop((d1, d2));
    drop(g2);
    drop(m2);
    Ok(())
}
