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



pub(crate) const PAGE: u64 = 4096;
/// IOVA of the mapping every case uses; the pages inside it:
pub(crate) const IOVA: u64 = 0x10_0000;
const TX_RING: u64 = 0; // page 0
const RX_RING: u64 = 1; // page 1
const TX_BUF: u64 = 2; // page 2
const RX_BUF: u64 = 3; // page 3
const MAP_PAGES: u64 = 16;

fn rust_only(ctx: &Ctx) -> CaseResult {
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")
}

/// A device with its memory mapped at `IOVA` and bus mastering on.
pub(crate) struct Dma {
    pub(crate) bar: u64,
    pub(crate) mem: Buffer,
}

/// Maps `pages` of new memory read/write at `iova`, turns memory decoding
/// and bus mastering on and checks the engine is there; returns the
/// memory and the offsets of BAR2 and of the config space.
fn map_for_engine(d: &Device, c: &Container, iova: u64, pages: u64) -> Result<(Buffer, u64, u64), Fail> {
    let mem = Buffer::new((pages * PAGE) as usize);
    c.map_rw(mem.vaddr(), iova, pages * PAGE)?;
    let (bar, cfg) = engine_on(d)?;
    Ok((mem, bar, cfg))
}

/// Turns memory decoding and bus mastering on and checks the engine is
/// there; returns the offsets of BAR2 and of the config space.
pub(crate) fn engine_on(d: &Device) -> Result<(u64, u64), Fail> {
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d.write16(cfg + 0x04, 0x0007)?;
    let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    check_eq!(d.read32(bar + ID)?, ID_VALUE, "engine ID");
    Ok((bar, cfg))
}

impl Dma {
    fn new(d: &Device, c: &Container) -> Result<Self, Fail> {
        let (mem, bar, _) = map_for_engine(d, c, IOVA, MAP_PAGES)?;
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
    pub(crate) fn start(&self, d: &Device, tx_ring: u64, rx_ring: u64) -> CaseResult {
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

// ---- the copy command (docs/mtty-dma.md, "Copy"): two vfio_dma_rw, no pins ----

/// IOVA of the copy cases' mapping (separate from the ring cases' `IOVA`).
const COPY_IOVA: u64 = 0x100_0000;
/// Pages of that mapping: the source area, then the destination area.
const COPY_PAGES: u64 = 48;
const COPY_DST_PAGE: u64 = 24;
/// Byte filling the destination area before a copy.
const UNTOUCHED: u8 = 0xEE;

/// A device with a running engine (no rings: nothing is pinned) and one
/// read/write mapping of `COPY_PAGES` at `COPY_IOVA`.
struct Copier {
    bar: u64,
    cfg: u64,
    mem: Buffer,
}

impl Copier {
    fn new(d: &Device, c: &Container) -> Result<Self, Fail> {
        let (mem, bar, cfg) = map_for_engine(d, c, COPY_IOVA, COPY_PAGES)?;
        check_eq!(d.read32(bar + VERSION)?, VERSION_VALUE, "engine version 1.1 (copy command)");
        d.write32(bar + INT_ENABLE, INT_COPY_DONE | INT_ERROR)?;
        d.write32(bar + CTRL, CTRL_ENABLE)?;
        check_eq!(d.read32(bar + STATUS)?, STATUS_RUNNING, "running, nothing busy");
        let me = Copier { bar, cfg, mem };
        me.fill();
        Ok(me)
    }

    /// The mapping's bytes, for reading after a copy.
    fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer is mapped for its whole length while `self`
        // lives; the device only writes it inside the doorbell write, when
        // no slice is held across it.
        unsafe { std::slice::from_raw_parts(self.mem.addr, self.mem.len) }
    }

    /// Source area: a pattern no shift of which repeats within 64 KiB;
    /// destination area: `UNTOUCHED`.
    fn fill(&self) {
        let split = (COPY_DST_PAGE * PAGE) as usize;
        let mut b = vec![UNTOUCHED; self.mem.len];
        for (i, x) in b[..split].iter_mut().enumerate() {
            *x = (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 16) as u8;
        }
        // SAFETY: `b` is as long as the mapping, which stays mapped while
        // `self` lives; no slice of the mapping is held across this call
        // (it takes `&self` only to reach the address).
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.mem.addr, b.len()) };
    }

    fn program(&self, d: &Device, src: u64, dst: u64, len: u32) -> CaseResult {
        for (reg, v) in [(COPY_SRC, src), (COPY_DST, dst)] {
            d.write32(self.bar + reg, v as u32)?;
            d.write32(self.bar + reg + 4, (v >> 32) as u32)?;
        }
        d.write32(self.bar + COPY_LEN, len)?;
        Ok(())
    }

    /// Programs and starts a copy; returns STATUS once COPY cleared (the
    /// engine runs the copy inside the doorbell write; the poll is a bound).
    fn copy(&self, d: &Device, src: u64, dst: u64, len: u32) -> Result<u32, Fail> {
        self.program(d, src, dst, len)?;
        d.write32(self.bar + DOORBELL, DOORBELL_COPY)?;
        self.wait(d)
    }

    fn wait(&self, d: &Device) -> Result<u32, Fail> {
        let t = std::time::Instant::now();
        loop {
            let st = d.read32(self.bar + STATUS)?;
            if st & STATUS_COPY == 0 {
                return Ok(st);
            }
            check!(t.elapsed().as_secs() < 10, "copy still busy after 10 s (STATUS {st:#x})");
        }
    }

    fn error(&self, d: &Device) -> Result<(u32, u64), Fail> {
        let lo = d.read32(self.bar + ERROR_IOVA)? as u64;
        let hi = d.read32(self.bar + ERROR_IOVA + 4)? as u64;
        Ok((d.read32(self.bar + ERROR_CODE)?, lo | hi << 32))
    }

    /// Reset (clears an error), then run again.
    fn restart(&self, d: &Device) -> CaseResult {
        d.write32(self.bar + CTRL, CTRL_RESET)?;
        d.write32(self.bar + INT_ENABLE, INT_COPY_DONE | INT_ERROR)?;
        d.write32(self.bar + CTRL, CTRL_ENABLE)?;
        check_eq!(d.read32(self.bar + STATUS)?, STATUS_RUNNING, "running again after reset");
        self.fill();
        Ok(())
    }

    /// Checks the whole mapping after a copy of `len` bytes from offset
    /// `src` to offset `dst` (bytes from the start of the mapping), or after
    /// no copy (`len` 0): source area unchanged, destination area
    /// `UNTOUCHED` except the copied bytes.
    fn verify(&self, src: usize, dst: usize, len: usize, what: &str) -> CaseResult {
        let before = Copier { bar: 0, cfg: 0, mem: Buffer::new(self.mem.len) };
        before.fill();
        let mut want = before.bytes().to_vec();
        want.copy_within(src..src + len, dst);
        let got = self.bytes();
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            return Err(fail(format!(
                "{what}: byte at mapping offset {i:#x} is {:#04x}, wanted {:#04x} (copy {len:#x} bytes {src:#x} -> {dst:#x})",
                got[i], want[i]
            )));
        }
        Ok(())
    }
}

/// A 64 KiB copy moves exactly those bytes, with one COPY_DONE interrupt
/// and no pins.
pub fn copy_64k(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let base = vm_locked_kb();
    let c = Copier::new(d, &o._container)?;
    let ev = crate::vfio::EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, ev.raw())?;
    let (src, dst) = (0x10usize, (COPY_DST_PAGE * PAGE) as usize + 0x7f3);
    let st = c.copy(d, COPY_IOVA + src as u64, COPY_IOVA + dst as u64, MAX_COPY_LEN)?;
    check_eq!(st, STATUS_RUNNING, "STATUS after the copy");
    check_eq!(c.error(d)?, (0, 0), "no error");
    c.verify(src, dst, MAX_COPY_LEN as usize, "64 KiB copy")?;
    check_eq!(d.read32(c.bar + INT_STATUS)?, INT_COPY_DONE, "COPY_DONE");
    check!(ev.take() >= 1, "COPY_DONE delivered as MSI");
    check_eq!(vm_locked_kb(), base, "a copy pins nothing");
    // The registers keep their values and are plain read/write when idle.
    check_eq!(d.read32(c.bar + COPY_LEN)?, MAX_COPY_LEN, "COPY_LEN kept");
    check_eq!(d.read32(c.bar + COPY_DST)?, (COPY_IOVA + dst as u64) as u32, "COPY_DST kept");
    d.write32(c.bar + INT_STATUS, INT_COPY_DONE)?;
    // Again over the same destination: same bytes, another interrupt.
    c.copy(d, COPY_IOVA + src as u64, COPY_IOVA + dst as u64, MAX_COPY_LEN)?;
    c.verify(src, dst, MAX_COPY_LEN as usize, "second 64 KiB copy")?;
    check_eq!(d.read32(c.bar + INT_STATUS)?, INT_COPY_DONE, "COPY_DONE again");
    Ok(())
}

/// Lengths 1, odd, page-crossing and multi-page, and ranges that cross
/// from one mapping into an adjacent one (two MAP_DMA of unrelated memory).
pub fn copy_lengths_and_boundaries(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let c = Copier::new(d, &o._container)?;
    let dst0 = (COPY_DST_PAGE * PAGE) as usize;
    for (src, dst, len) in [
        (0usize, dst0, 1usize),
        (0x123, dst0 + 0x321, 1),
        (0x5, dst0 + 0x9, 7),
        (0xff1, dst0 + 0x3, 4097),
        (PAGE as usize - 1, dst0 + 2 * PAGE as usize - 1, 2),
        (0xffd, dst0 + 0xffe, 3 * PAGE as usize + 5),
        (0x1, dst0 + PAGE as usize - 0x10, MAX_COPY_LEN as usize - 1),
    ] {
        c.fill();
        let st = c.copy(d, COPY_IOVA + src as u64, COPY_IOVA + dst as u64, len as u32)?;
        check_eq!(st, STATUS_RUNNING, "STATUS after copying {len} bytes");
        c.verify(src, dst, len, &format!("copy of {len} bytes"))?;
    }
    // Two separate mappings at adjacent IOVAs, backed by unrelated memory:
    // A (8 pages) then B (8 pages).
    let (a, b) = (Buffer::new(8 * PAGE as usize), Buffer::new(8 * PAGE as usize));
    let ab = 0x200_0000u64;
    o._container.map_rw(a.vaddr(), ab, 8 * PAGE)?;
    o._container.map_rw(b.vaddr(), ab + 8 * PAGE, 8 * PAGE)?;
    // SAFETY: both buffers are 8 pages, mapped while this function runs.
    let (sa, sb) = unsafe {
        (std::slice::from_raw_parts_mut(a.addr, a.len), std::slice::from_raw_parts_mut(b.addr, b.len))
    };
    for (i, x) in sa.iter_mut().enumerate() {
        *x = (i % 253) as u8;
    }
    sb.fill(0x5a);
    // Source crossing A -> B: the last 0x300 bytes of A and the first 0x500 of B.
    let src = ab + 8 * PAGE - 0x300;
    c.copy(d, src, COPY_IOVA + dst0 as u64, 0x800)?;
    check_eq!(c.error(d)?, (0, 0), "copy from two adjacent mappings");
    let got = &c.bytes()[dst0..dst0 + 0x800];
    let mut want = sa[sa.len() - 0x300..].to_vec();
    want.extend_from_slice(&sb[..0x500]);
    check!(got == &want[..], "bytes read across the two mappings");
    // Destination crossing A -> B.
    c.fill();
    let dst = ab + 8 * PAGE - 0x10;
    c.copy(d, COPY_IOVA + 0x40, dst, 0x1020)?;
    check_eq!(c.error(d)?, (0, 0), "copy into two adjacent mappings");
    let want = c.bytes()[0x40..0x40 + 0x1020].to_vec();
    check!(sa[sa.len() - 0x10..] == want[..0x10], "the part written into mapping A");
    check!(sb[..0x1010] == want[0x10..], "the part written into mapping B");
    check!(sb[0x1010..].iter().all(|&x| x == 0x5a), "mapping B untouched after the copy");
    check!(sa[..sa.len() - 0x10].iter().enumerate().all(|(i, &x)| x == (i % 253) as u8), "mapping A untouched before the copy");
    Ok(())
}

/// Unmapped source or destination, and a read-only destination: the
/// engine halts with COPY_FAULT and the failing side's IOVA; a read-only
/// source is fine.
pub fn copy_faults(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let c = Copier::new(d, &o._container)?;
    let dst0 = (COPY_DST_PAGE * PAGE) as usize;
    let end = COPY_IOVA + COPY_PAGES * PAGE;
    // Source: the last page of the mapping and one unmapped page after it.
    let src = end - PAGE;
    let st = c.copy(d, src, COPY_IOVA + dst0 as u64, 2 * PAGE as u32)?;
    check_eq!(st, STATUS_ERROR, "halted on the unmapped source");
    check_eq!(c.error(d)?, (ERR_COPY_FAULT, src), "ERROR_CODE and ERROR_IOVA (source)");
    check_eq!(d.read32(c.bar + INT_STATUS)?, INT_ERROR, "error interrupt, no COPY_DONE");
    c.verify(0, 0, 0, "nothing written after a failed read")?;
    // A halted engine ignores doorbells until reset.
    c.copy(d, COPY_IOVA, COPY_IOVA + dst0 as u64, 16)?;
    c.verify(0, 0, 0, "nothing written while halted")?;
    // Destination entirely unmapped.
    c.restart(d)?;
    let st = c.copy(d, COPY_IOVA, end + 0x10_0000, 64)?;
    check_eq!(st, STATUS_ERROR, "halted on the unmapped destination");
    check_eq!(c.error(d)?, (ERR_COPY_FAULT, end + 0x10_0000), "ERROR_CODE and ERROR_IOVA (destination)");
    c.verify(0, 0, 0, "nothing written")?;
    // Destination running off the end of the mapping.
    c.restart(d)?;
    let st = c.copy(d, COPY_IOVA, end - 0x10, 0x20)?;
    check_eq!(st, STATUS_ERROR, "halted on the partly unmapped destination");
    check_eq!(c.error(d)?, (ERR_COPY_FAULT, end - 0x10), "ERROR_IOVA: COPY_DST");
    // Read-only mapping: readable by the device, not writable.
    c.restart(d)?;
    let ro = Buffer::new(PAGE as usize);
    // SAFETY: one page, mapped while this function runs.
    let ro_bytes = unsafe { std::slice::from_raw_parts_mut(ro.addr, ro.len) };
    ro_bytes.fill(0x77);
    let ro_iova = 0x300_0000u64;
    o._container.map(&vfio_iommu_type1_dma_map { argsz: argsz::<vfio_iommu_type1_dma_map>(), flags: VFIO_DMA_MAP_FLAG_READ, vaddr: ro.vaddr(), iova: ro_iova, size: PAGE })?;
    let st = c.copy(d, COPY_IOVA, ro_iova + 8, 8)?;
    check_eq!(st, STATUS_ERROR, "halted on the read-only destination");
    check_eq!(c.error(d)?, (ERR_COPY_FAULT, ro_iova + 8), "ERROR_CODE and ERROR_IOVA (read-only)");
    check!(ro_bytes.iter().all(|&x| x == 0x77), "read-only memory not written");
    c.restart(d)?;
    let st = c.copy(d, ro_iova, COPY_IOVA + dst0 as u64, 4)?;
    check_eq!(st, STATUS_RUNNING, "copy from read-only memory");
    check_eq!(&c.bytes()[dst0..dst0 + 5], &[0x77, 0x77, 0x77, 0x77, UNTOUCHED][..], "bytes from the read-only mapping");
    Ok(())
}

/// COPY_LEN 0 and 65537 are refused with BAD_COPY (ERROR_IOVA = COPY_SRC)
/// and move nothing; 65536 is the largest accepted.
pub fn copy_bad_length(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let c = Copier::new(d, &o._container)?;
    let dst = COPY_IOVA + COPY_DST_PAGE * PAGE;
    for len in [0u32, MAX_COPY_LEN + 1, u32::MAX] {
        c.restart(d)?;
        let st = c.copy(d, COPY_IOVA + 4, dst, len)?;
        check_eq!(st, STATUS_ERROR, "COPY_LEN {len} halts");
        check_eq!(c.error(d)?, (ERR_BAD_COPY, COPY_IOVA + 4), "ERROR_CODE and ERROR_IOVA for COPY_LEN {len}");
        check_eq!(d.read32(c.bar + INT_STATUS)?, INT_ERROR, "error interrupt for COPY_LEN {len}");
        c.verify(0, 0, 0, &format!("nothing moved for COPY_LEN {len}"))?;
    }
    // Not RUNNING: the doorbell is ignored, even with a bad length.
    c.restart(d)?;
    d.write32(c.bar + CTRL, 0)?;
    c.program(d, COPY_IOVA, dst, 0)?;
    d.write32(c.bar + DOORBELL, DOORBELL_COPY)?;
    check_eq!(d.read32(c.bar + STATUS)?, 0, "doorbell ignored while stopped");
    Ok(())
}

/// With Bus Master clear an accepted copy waits (STATUS.COPY) and touches
/// no memory; setting the bit runs it. Copy registers are frozen meanwhile,
/// and clearing ENABLE does not cancel it.
pub fn copy_waits_for_bus_master(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let c = Copier::new(d, &o._container)?;
    let dst = (COPY_DST_PAGE * PAGE) as usize + 0x100;
    d.write16(c.cfg + 0x04, 0x0003)?;
    c.program(d, COPY_IOVA, COPY_IOVA + dst as u64, 0x3000)?;
    d.write32(c.bar + DOORBELL, DOORBELL_COPY)?;
    check_eq!(d.read32(c.bar + STATUS)?, STATUS_RUNNING | STATUS_BUSY | STATUS_COPY, "accepted, waiting");
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.verify(0, 0, 0, "no access while Bus Master is clear")?;
    c.program(d, COPY_IOVA + 1, COPY_IOVA + 2, 3)?;
    check_eq!(d.read32(c.bar + COPY_LEN)?, 0x3000, "COPY_LEN frozen while busy");
    check_eq!(d.read32(c.bar + COPY_SRC)?, COPY_IOVA as u32, "COPY_SRC frozen while busy");
    d.write32(c.bar + CTRL, 0)?;
    check_eq!(d.read32(c.bar + STATUS)?, STATUS_BUSY | STATUS_COPY, "stopping keeps the copy");
    d.write16(c.cfg + 0x04, 0x0007)?;
    let st = c.wait(d)?;
    check_eq!(st, 0, "done: stopped, not busy");
    c.verify(0, dst, 0x3000, "copy after Bus Master was set")?;
    check_eq!(d.read32(c.bar + INT_STATUS)?, INT_COPY_DONE, "COPY_DONE");
    Ok(())
}

/// An accepted copy that waits for Bus Master is part of the migration
/// stream: the destination device performs it in its own memory, the
/// source never does.
pub fn copy_survives_migration(ctx: &Ctx) -> CaseResult {
    rust_only(ctx)?;
    let src = open_device(ctx, "mtty-1")?;
    let dst = open_device(ctx, "mtty-1")?;
    let (s, t) = (&src.device, &dst.device);
    let cs = Copier::new(s, &src._container)?;
    let ct = Copier::new(t, &dst._container)?;
    let to = (COPY_DST_PAGE * PAGE) as usize + 0x11;
    s.write16(cs.cfg + 0x04, 0x0003)?;
    cs.program(s, COPY_IOVA + 0x22, COPY_IOVA + to as u64, 0x2345)?;
    s.write32(cs.bar + DOORBELL, DOORBELL_COPY)?;
    check_eq!(s.read32(cs.bar + STATUS)?, STATUS_RUNNING | STATUS_BUSY | STATUS_COPY, "source: copy waiting");
    super::mtty::migrate(s, t)?;
    check_eq!(t.read32(ct.bar + STATUS)?, STATUS_RUNNING | STATUS_BUSY | STATUS_COPY, "destination: copy waiting");
    check_eq!(t.read32(ct.bar + COPY_LEN)?, 0x2345, "destination: COPY_LEN");
    check_eq!(t.read32(ct.bar + COPY_SRC)?, (COPY_IOVA + 0x22) as u32, "destination: COPY_SRC");
    ct.verify(0, 0, 0, "destination memory before Bus Master")?;
    t.write16(ct.cfg + 0x04, 0x0007)?;
    check_eq!(ct.wait(t)?, STATUS_RUNNING, "destination: copy done");
    ct.verify(0x22, to, 0x2345, "the copy on the destination")?;
    check_eq!(t.read32(ct.bar + INT_STATUS)?, INT_COPY_DONE, "destination: COPY_DONE");
    cs.verify(0, 0, 0, "source memory: the source device never copied")?;
    Ok(())
}
