//! The workloads that drive the DMA engine of the Rust mtty
//! (docs/mtty-dma.md): descriptor rings with per-buffer pins, 64 KiB
//! copies, and UNMAP_DMA of ranges that devices hold pinned.

use super::workloads::{e, ns_per, sample, setup, Env, IOVA0, PAGE};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{Buffer, Device};
use std::time::{Duration, Instant};

/// One device's engine and the user memory its rings and buffers live in.
struct Engine<'a> {
    d: &'a Device,
    bar: u64,
    mem: &'a Buffer,
    /// IOVA of `mem`.
    iova: u64,
}

impl<'a> Engine<'a> {
    fn new(d: &'a Device, mem: &'a Buffer, iova: u64) -> Result<Self, String> {
        let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX).map_err(e("config region"))?.offset;
        d.write16(cfg + 0x04, 0x0007).map_err(e("PCI command"))?;
        let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX).map_err(e("BAR2 region"))?.offset;
        let id = d.read32(bar + ID).map_err(e("engine ID"))?;
        if id != ID_VALUE {
            return Err(format!("BAR2 ID {id:#x}: not the mtty DMA engine (is mtty_rs loaded?)"));
        }
        Ok(Engine { d, bar, mem, iova })
    }

    fn w(&self, reg: u64, v: u32) -> Result<(), String> {
        self.d.write32(self.bar + reg, v).map_err(|err| format!("BAR2 write {reg:#x}: {err}"))
    }

    fn r(&self, reg: u64) -> Result<u32, String> {
        self.d.read32(self.bar + reg).map_err(|err| format!("BAR2 read {reg:#x}: {err}"))
    }

    /// Writes a descriptor at byte offset `at` of the memory.
    fn post(&self, at: u64, addr: u64, len: u32) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        assert!(at + 16 <= self.mem.len as u64);
        // SAFETY: 16 bytes inside `mem` (checked above).
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.mem.addr.add(at as usize), 16) };
    }

    /// LEN written back into the descriptor at byte offset `at`.
    fn done_len(&self, at: u64) -> u32 {
        let mut raw = [0u8; 4];
        // SAFETY: 4 bytes inside `mem` (descriptors are posted by `post`).
        unsafe { std::ptr::copy_nonoverlapping(self.mem.addr.add(at as usize + 8), raw.as_mut_ptr(), 4) };
        u32::from_le_bytes(raw)
    }

    /// Reset, then program both rings (offsets into `mem`, `size` entries) and enable.
    fn start(&self, tx_ring: u64, rx_ring: u64, size: u32) -> Result<(), String> {
        self.w(CTRL, CTRL_RESET)?;
        for (ring, off) in [(TX, tx_ring), (RX, rx_ring)] {
            let iova = self.iova + off;
            self.w(ring + RING_BASE, iova as u32)?;
            self.w(ring + RING_BASE + 4, (iova >> 32) as u32)?;
            self.w(ring + RING_SIZE, size)?;
        }
        self.w(CTRL, CTRL_ENABLE)?;
        self.check()?;
        if self.r(STATUS)? & STATUS_RUNNING == 0 {
            return Err("engine not RUNNING after enable".into());
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        let st = self.r(STATUS)?;
        if st & STATUS_ERROR != 0 {
            return Err(format!(
                "engine halted: ERROR_CODE {} at IOVA {:#x} (docs/mtty-dma.md)",
                self.r(ERROR_CODE)?,
                self.r(ERROR_IOVA)? as u64 | (self.r(ERROR_IOVA + 4)? as u64) << 32
            ));
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), String> {
        self.w(CTRL, 0)?;
        let t = Instant::now();
        while self.r(STATUS)? & STATUS_BUSY != 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("engine still BUSY 10 s after stop".into());
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub(super) enum PinKind {
    /// Each buffer on its own page: one 1-page pin and unpin per descriptor.
    Single,
    /// Each buffer straddles a page boundary: 2-page pins.
    Run2,
    /// Every buffer on the same (otherwise unpinned) page: pin, unpin, pin...
    Same,
    /// Buffers inside the ring pages, which the engine holds pinned: the
    /// buffer pin only takes a reference, so the descriptor fetch and
    /// write-back (two 16-byte `vfio_dma_rw` each) dominate.
    Held,
}

/// Loops bytes through the TX ring, the UART and the RX ring and reports
/// the cost per descriptor (TX and RX descriptors both count). Each
/// descriptor is a 16-byte `vfio_dma_rw` read, a `vfio_pin_pages` of its
/// buffer, the copy, a `vfio_unpin_pages` and a 16-byte `vfio_dma_rw` write.
pub(super) fn pin_workload(env: &Env, kind: PinKind) -> Result<(), String> {
    if !env.backend.rust_mtty {
        return Err("SKIP: needs the DMA engine of mtty_rs (backend mtty-rs or rust)".into());
    }
    let s = setup(1, true)?;
    let d = &s.devices[0];
    // Layout (pages): 0 TX ring, 1 RX ring, 2.. TX buffers, then RX buffers.
    let ring: u32 = if matches!(kind, PinKind::Held) { 128 } else { 256 };
    let pages: u64 = 2 + 2 * (ring as u64 + 2);
    let mem = Buffer::new((pages * PAGE) as usize);
    let iova = IOVA0;
    s.container.map_rw(mem.vaddr(), iova, pages * PAGE).map_err(e("MAP_DMA"))?;
    let eng = Engine::new(d, &mem, iova)?;
    let (tx_ring, rx_ring) = (0, PAGE);
    let tx_bufs = 2 * PAGE;
    let rx_bufs = tx_bufs + (ring as u64 + 2) * PAGE;
    let len: u32 = if matches!(kind, PinKind::Run2) { 2 } else { 1 };
    // Buffer IOVA of descriptor i (offset into mem).
    let buf = |base: u64, ring_off: u64, i: u64| -> u64 {
        match kind {
            PinKind::Single => base + i * PAGE,
            PinKind::Run2 => base + i * PAGE + PAGE - 1,
            PinKind::Same => base + (i % 2048) * 2,
            PinKind::Held => ring_off + 2048 + (i % 1024) * 2,
        }
    };
    eng.start(tx_ring, rx_ring, ring)?;
    let batches = env.iters(4);
    let mut descs = 0u64;
    let mut t_all = Duration::ZERO;
    let (mut tx_tail, mut rx_tail) = (0u32, 0u32);
    for _ in 0..batches {
        let n = ring;
        let bytes = n as u64 * len as u64;
        for k in 0..n {
            let i = tx_tail.wrapping_add(k);
            let at = tx_ring + (i % ring) as u64 * 16;
            eng.post(at, iova + buf(tx_bufs, tx_ring, (i % ring) as u64), len);
        }
        let mut rx_posted = rx_tail;
        let post_rx = |from: u32, to: u32| {
            for i in from..to {
                let at = rx_ring + (i % ring) as u64 * 16;
                eng.post(at, iova + buf(rx_bufs, rx_ring, (i % ring) as u64), len);
            }
        };
        post_rx(rx_posted, rx_tail.wrapping_add(ring));
        rx_posted = rx_tail.wrapping_add(ring);
        let t = Instant::now();
        let tx_target = tx_tail.wrapping_add(n);
        eng.w(RX + RING_TAIL, rx_posted)?;
        eng.w(TX + RING_TAIL, tx_target)?;
        eng.w(DOORBELL, 3)?;
        let mut rx_head = rx_tail;
        let mut received = 0u64;
        let mut rx_descs = 0u64;
        loop {
            let th = eng.r(TX + RING_HEAD)?;
            let rh = eng.r(RX + RING_HEAD)?;
            // Count what the RX descriptors received, then give them back.
            while rx_head != rh {
                received += eng.done_len(rx_ring + (rx_head % ring) as u64 * 16) as u64;
                rx_head = rx_head.wrapping_add(1);
                rx_descs += 1;
            }
            if th == tx_target && received >= bytes {
                break;
            }
            if rx_posted != rx_head.wrapping_add(ring) {
                post_rx(rx_posted, rx_head.wrapping_add(ring));
                rx_posted = rx_head.wrapping_add(ring);
                eng.w(RX + RING_TAIL, rx_posted)?;
            }
            eng.check()?;
            eng.w(DOORBELL, 3)?;
            if t.elapsed() > Duration::from_secs(120) {
                return Err(format!("engine stalled: TX head {th}/{tx_target}, received {received}/{bytes} bytes"));
            }
        }
        t_all += t.elapsed();
        descs += n as u64 + rx_descs;
        tx_tail = tx_target;
        rx_tail = rx_head;
    }
    eng.check()?;
    eng.stop()?;
    let metric = match kind {
        PinKind::Single => "pin.single",
        PinKind::Run2 => "pin.run2",
        PinKind::Same => "pin.same",
        PinKind::Held => "dma_rw.16b",
    };
    sample(metric, "ns/desc", ns_per(t_all, descs));
    s.container.unmap_range(iova, pages * PAGE).map_err(e("UNMAP_DMA"))?;
    Ok(())
}

/// 64 KiB copy commands of the mtty DMA engine (docs/mtty-dma.md, "Copy")
/// between two mapped 64 KiB buffers, alternating direction: each copy is
/// one 64 KiB `vfio_dma_rw` read and one 64 KiB `vfio_dma_rw` write, no
/// pins. Timed from the doorbell write to the STATUS read that shows the
/// copy done (the engine runs it inside the doorbell write).
pub(super) fn dma_rw_64k(env: &Env) -> Result<(), String> {
    if !env.backend.rust_mtty {
        return Err("SKIP: needs the DMA engine of mtty_rs (backend mtty-rs or rust)".into());
    }
    let s = setup(1, true)?;
    let d = &s.devices[0];
    let len = MAX_COPY_LEN as u64;
    let mem = Buffer::new(2 * len as usize);
    let iova = IOVA0;
    s.container.map_rw(mem.vaddr(), iova, 2 * len).map_err(e("MAP_DMA"))?;
    // SAFETY: the buffer is mapped for its length while `mem` lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(mem.addr, mem.len) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let eng = Engine::new(d, &mem, iova)?;
    // No rings (size 0): the engine only copies.
    eng.start(0, 0, 0)?;
    let n = env.iters(4000);
    let mut t_all = Duration::ZERO;
    for k in 0..n {
        let (src, dst) = if k % 2 == 0 { (iova, iova + len) } else { (iova + len, iova) };
        for (reg, v) in [(COPY_SRC, src), (COPY_DST, dst)] {
            eng.w(reg, v as u32)?;
            eng.w(reg + 4, (v >> 32) as u32)?;
        }
        eng.w(COPY_LEN, MAX_COPY_LEN)?;
        let t = Instant::now();
        eng.w(DOORBELL, DOORBELL_COPY)?;
        while eng.r(STATUS)? & STATUS_COPY != 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("copy still busy after 10 s".into());
            }
        }
        t_all += t.elapsed();
        eng.check()?;
    }
    // The bytes went there and back: spot-check the copy really happened.
    if bytes[..len as usize] != bytes[len as usize..] || bytes[12345] != (12345 % 251) as u8 {
        return Err("the two buffers differ after the copies".into());
    }
    eng.stop()?;
    sample("dma_rw.64k", "us/copy", t_all.as_secs_f64() * 1e6 / n as f64);
    s.container.unmap_range(iova, 2 * len).map_err(e("UNMAP_DMA"))?;
    Ok(())
}

/// The whole UNMAP_DMA round trip over a range that `devs` devices hold
/// pinned (each engine pins its two ring pages): the backend calls every
/// registered device's `dma_unmap`, each engine halts and unpins. Reported
/// as the median of the unmaps' latencies: with few, short operations a
/// single one that meets a timer interrupt or waits for an engine step in
/// flight would otherwise move the mean of a round.
pub(super) fn unmap_pinned(env: &Env, devs: usize) -> Result<(), String> {
    if !env.backend.rust_mtty {
        return Err("SKIP: needs the DMA engine of mtty_rs (backend mtty-rs or rust)".into());
    }
    let s = setup(devs, true)?;
    let pages = 2 * devs as u64;
    let mem = Buffer::new((pages * PAGE) as usize);
    let iova = IOVA0;
    let engines: Vec<Engine> = s.devices.iter().map(|d| Engine::new(d, &mem, iova)).collect::<Result<_, _>>()?;
    let n = env.iters(40);
    let mut latencies = Vec::with_capacity(n as usize);
    for _ in 0..n {
        s.container.map_rw(mem.vaddr(), iova, pages * PAGE).map_err(e("MAP_DMA"))?;
        for (k, eng) in engines.iter().enumerate() {
            eng.start(2 * k as u64 * PAGE, (2 * k as u64 + 1) * PAGE, 4)?;
        }
        let t = Instant::now();
        let got = s.container.unmap_range(iova, pages * PAGE).map_err(e("UNMAP_DMA of the pinned range"))?;
        latencies.push(t.elapsed());
        if got != pages * PAGE {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {:#x}", pages * PAGE));
        }
        for eng in &engines {
            if eng.r(STATUS)? & STATUS_ERROR == 0 || eng.r(ERROR_CODE)? != 1 {
                return Err("an engine did not halt with UNMAPPED after the unmap".into());
            }
        }
    }
    latencies.sort_unstable();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    sample(&format!("unmap_pinned.{devs}dev"), "us/op", median.as_secs_f64() * 1e6);
    Ok(())
}
