//! One container used by two processes, and by many threads at once.
//!
//! `two_processes`: a container fd inherited across fork. Mappings belong to
//! the container, not to the process that made them: either process sees,
//! and may unmap, the other's. Pins are charged to the mm of the task that
//! made the mapping (`VmLck` of that process), even when another process's
//! device pins them, and a mapping outlives its process: after the owner
//! exits, pinning through it fails, and unmapping it still completes and
//! releases what was pinned.
//!
//! `pin_unpin_vs_map_threads`: two devices pin and unpin pages of one
//! mapping (some pages shared by both, so per-page pin counts go above one)
//! while other threads map and unmap other ranges, including an alias of the
//! pinned pages at a second IOVA, and another reads dirty bitmaps; bounded
//! in time, every transfer checked byte for byte.

use super::type1::dirty;
use super::{fail, CaseResult, Ctx, Fail};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, vm_locked_kb_of, Buffer, Container, Device, Errno, Group, Mdev};
use crate::{check, check_eq};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// A one-byte message channel between parent and child (a pipe).
pub(super) struct Pipe {
    rx: OwnedFd,
    tx: OwnedFd,
}

impl Pipe {
    pub(super) fn new() -> Result<Self, Fail> {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(fail(format!("pipe: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: pipe(2) just returned these two descriptors, owned by nobody else.
        Ok(unsafe { Pipe { rx: OwnedFd::from_raw_fd(fds[0]), tx: OwnedFd::from_raw_fd(fds[1]) } })
    }

    pub(super) fn send(&self, b: u8) {
        // SAFETY: writes one byte from a live local.
        unsafe { libc::write(self.tx.as_raw_fd(), (&b as *const u8).cast(), 1) };
    }

    /// A byte if one is waiting, without blocking.
    pub(super) fn try_recv(&self) -> Option<u8> {
        let mut p = libc::pollfd { fd: self.rx.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one live descriptor, without waiting.
        if unsafe { libc::poll(&mut p, 1, 0) } != 1 {
            return None;
        }
        self.recv()
    }

    /// The next byte, or `None` when the other end is closed.
    pub(super) fn recv(&self) -> Option<u8> {
        let mut b = 0u8;
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::read(self.rx.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
        (n == 1).then_some(b)
    }
}

/// Starts a child that maps `pages` pages of its own memory at `iova` in
/// `c` (filled with `fill`), reports through `up` ('m' mapped, 'e' failed)
/// and exits when `down` says so or closes.
fn spawn_mapper(c: &Container, iova: u64, pages: u64, fill: u8, up: &Pipe, down: &Pipe) -> Result<i32, Fail> {
    // SAFETY: the case runs single-threaded in its own process; the child
    // only makes system calls and then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork failed"));
    }
    if pid == 0 {
        let mem = Buffer::new((pages * PAGE) as usize);
        // SAFETY: `mem` is `pages` pages, writable.
        unsafe { std::ptr::write_bytes(mem.addr, fill, mem.len) };
        up.send(if c.map_rw(mem.vaddr(), iova, pages * PAGE).is_ok() { b'm' } else { b'e' });
        let _ = down.recv();
        // SAFETY: ends the child without running the parent's destructors;
        // the mapping stays in the container, which the parent still holds.
        unsafe { libc::_exit(0) };
    }
    match up.recv() {
        Some(b'm') => Ok(pid),
        other => Err(fail(format!("child could not map at {iova:#x}: {other:?}"))),
    }
}

fn reap(pid: i32) -> CaseResult {
    let mut status = 0;
    // SAFETY: waits for a child this process created.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {pid} ended with status {status:#x}");
    Ok(())
}

/// Programs a TX ring at `tx_ring` and an RX ring at `rx_ring` (16 entries
/// each) and enables the engine on BAR2 at `bar`.
fn start_engine(d: &Device, bar: u64, tx_ring: u64, rx_ring: u64) -> Result<(), Errno> {
    d.write32(bar + TX + RING_BASE, tx_ring as u32)?;
    d.write32(bar + TX + RING_BASE + 4, (tx_ring >> 32) as u32)?;
    d.write32(bar + TX + RING_SIZE, 16)?;
    d.write32(bar + RX + RING_BASE, rx_ring as u32)?;
    d.write32(bar + RX + RING_BASE + 4, (rx_ring >> 32) as u32)?;
    d.write32(bar + RX + RING_SIZE, 16)?;
    d.write32(bar + CTRL, CTRL_ENABLE)
}

/// Bus mastering on, returns the DMA engine's BAR2 offset.
fn engine_bar(d: &Device) -> Result<u64, Fail> {
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d.write16(cfg + 0x04, 0x0007)?;
    let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    check_eq!(d.read32(bar + ID)?, ID_VALUE, "engine ID");
    Ok(bar)
}

/// Writes a descriptor (addr, len, flags 0) at `host` (the ring entry as
/// this process sees it).
fn post(host: u64, addr: u64, len: u32) {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    // SAFETY: callers pass the address of a 16-byte ring entry inside a
    // mapping they keep alive.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), host as *mut u8, 16) };
}

/// A container fd shared by a parent and its children.
pub fn two_processes(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let pins = ctx.backend.rust_type1 && ctx.backend.rust_mtty;
    const CHILD: u64 = 0x100_0000;
    const PARENT: u64 = 0x200_0000;
    let (up, down) = (Pipe::new()?, Pipe::new()?);
    let base = vm_locked_kb();

    // A child maps its memory; the parent sees the mapping (EEXIST) and
    // adds its own next to it.
    let child = spawn_mapper(c, CHILD, 16, 0x5a, &up, &down)?;
    let mine = Buffer::new(16 * PAGE as usize);
    check_eq!(c.map_rw(mine.vaddr(), CHILD, PAGE).err(), Some(Errno(libc::EEXIST)), "the child's mapping seen by the parent");
    c.map_rw(mine.vaddr(), PARENT, 16 * PAGE)?;

    let mut engine = None;
    if pins {
        // The parent's device pins the child's pages: the child's locked
        // memory rises, the parent's does not.
        let d = s.group.device(&s.mdev.uuid)?;
        let bar = engine_bar(&d)?;
        let child_base = vm_locked_kb_of(&child.to_string());
        start_engine(&d, bar, CHILD, CHILD + PAGE)?;
        check_eq!(d.read32(bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine running on the child's rings");
        check_eq!(vm_locked_kb_of(&child.to_string()), child_base + 8, "pins charged to the mapping's owner");
        check_eq!(vm_locked_kb(), base, "nothing charged to the process whose device pinned");
        // One transfer: from the child's page 2 through the UART into the
        // parent's page 0. The child filled its pages with 0x5a; the
        // descriptors go into the child's ring pages through its memory,
        // which the parent cannot write, so the RX descriptor is in the
        // parent's ring below and the TX one reads the child's bytes.
        d.write32(bar + CTRL, 0)?;
        d.write32(bar + CTRL, CTRL_RESET)?;
        start_engine(&d, bar, PARENT + 15 * PAGE, PARENT + 14 * PAGE)?;
        post(mine.vaddr() + 15 * PAGE, CHILD + 2 * PAGE, 12);
        post(mine.vaddr() + 14 * PAGE, PARENT, 64);
        d.write32(bar + RX + RING_TAIL, 1)?;
        d.write32(bar + DOORBELL, DOORBELL_RX)?;
        d.write32(bar + TX + RING_TAIL, 1)?;
        d.write32(bar + DOORBELL, DOORBELL_TX)?;
        check_eq!(d.read32(bar + STATUS)? & STATUS_ERROR, 0, "transfer between the two processes' memory");
        // SAFETY: page 0 of `mine` is mapped and 12 bytes long at least.
        let got = unsafe { std::slice::from_raw_parts(mine.addr, 12) }.to_vec();
        check_eq!(got, vec![0x5au8; 12], "the child's bytes arrived in the parent's page");
        // Back to the child's rings, and keep them pinned past its exit.
        d.write32(bar + CTRL, 0)?;
        d.write32(bar + CTRL, CTRL_RESET)?;
        start_engine(&d, bar, CHILD, CHILD + PAGE)?;
        check_eq!(vm_locked_kb_of(&child.to_string()), child_base + 8, "child's pages pinned again");
        engine = Some((d, bar));
    }

    // The owner exits with its mapping (and, on the pinning pair, two pins) live.
    down.send(b'x');
    reap(child)?;
    check_eq!(vm_locked_kb(), base, "the parent's locked memory after the child exit");

    if let Some((d, bar)) = &engine {
        // Pinning through a mapping whose process is gone fails cleanly.
        let d2m = Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
        let g2 = Group::open(d2m.group()?)?;
        g2.set_container(c)?;
        let d2 = g2.device(&d2m.uuid)?;
        let bar2 = engine_bar(&d2)?;
        start_engine(&d2, bar2, CHILD + 4 * PAGE, CHILD + 5 * PAGE)?;
        check_eq!(d2.read32(bar2 + STATUS)? & STATUS_ERROR, STATUS_ERROR, "pin through a dead process's mapping refused");
        check_eq!(d2.read32(bar2 + ERROR_CODE)?, 5, "PIN_FAILED");
        check_eq!(d.read32(*bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "the first engine still holds its pins");
        drop(d2);
        drop(g2);
        drop(d2m);
    }
    // The parent unmaps the dead child's mapping: the device gives its pins
    // back and the unmap reports the whole range.
    check_eq!(c.unmap_range(CHILD, 16 * PAGE)?, 16 * PAGE, "unmap of the exited child's mapping");
    if let Some((d, bar)) = &engine {
        check_eq!(d.read32(*bar + ERROR_CODE)?, ERR_UNMAPPED, "engine stopped by the unmap");
        check_eq!(d.read32(*bar + STATUS)? & (STATUS_RUNNING | STATUS_BUSY), 0, "engine holds nothing");
    }

    // A second child unmaps the parent's mapping and exits.
    // SAFETY: as in `spawn_mapper`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork failed"));
    }
    if pid == 0 {
        let ok = c.unmap_range(PARENT, 16 * PAGE) == Ok(16 * PAGE);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 4 }) };
    }
    reap(pid)?;
    check_eq!(c.unmap_range(0, 1 << 40)?, 0, "mappings left");
    check_eq!(vm_locked_kb(), base, "locked memory back at the baseline");
    Ok(())
}

/// What one DMA thread works on: a device, its rings and buffers, all in the
/// shared mapping.
struct Lane {
    device: Device,
    bar: u64,
    /// Page numbers inside the shared mapping.
    tx_ring: u64,
    rx_ring: u64,
    rx_buf: u64,
    /// Byte offset of this lane's TX bytes inside the shared TX page.
    tx_off: u64,
    tag: u8,
}

const SHARED: u64 = 0x10_0000;
const SHARED_PAGES: u64 = 16;
/// Both lanes' TX buffers are in this page, so it is pinned twice at once.
const TX_PAGE: u64 = 2;

impl Lane {
    /// Moves one 12-byte message TX ring -> UART -> RX ring and checks it.
    /// `host` is the shared mapping's address here; `i` the ring index.
    fn round(&self, host: u64, i: u32) -> Result<(), String> {
        let (d, b) = (&self.device, self.bar);
        let mut msg = [self.tag; 12];
        msg[4..8].copy_from_slice(&i.to_le_bytes());
        let tx_host = host + TX_PAGE * PAGE + self.tx_off;
        let rx_host = host + self.rx_buf * PAGE;
        // SAFETY: both ranges are inside the shared mapping, which outlives
        // the lanes; no other lane uses these bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), tx_host as *mut u8, msg.len());
            std::ptr::write_bytes(rx_host as *mut u8, 0, msg.len());
        }
        let slot = u64::from(i % 16) * 16;
        post(host + self.rx_ring * PAGE + slot, SHARED + self.rx_buf * PAGE, 64);
        post(host + self.tx_ring * PAGE + slot, SHARED + TX_PAGE * PAGE + self.tx_off, msg.len() as u32);
        let io = |e: Errno| format!("round {i}: {e}");
        d.write32(b + RX + RING_TAIL, i + 1).map_err(io)?;
        d.write32(b + DOORBELL, DOORBELL_RX).map_err(io)?;
        d.write32(b + TX + RING_TAIL, i + 1).map_err(io)?;
        d.write32(b + DOORBELL, DOORBELL_TX).map_err(io)?;
        let status = d.read32(b + STATUS).map_err(io)?;
        if status & STATUS_ERROR != 0 {
            let code = d.read32(b + ERROR_CODE).map_err(io)?;
            return Err(format!("round {i}: engine error {code} (status {status:#x})"));
        }
        let heads = (d.read32(b + TX + RING_HEAD).map_err(io)?, d.read32(b + RX + RING_HEAD).map_err(io)?);
        if heads != (i + 1, i + 1) {
            return Err(format!("round {i}: heads {heads:?}"));
        }
        let mut got = [0u8; 12];
        // SAFETY: inside the shared mapping, see above.
        unsafe { std::ptr::copy_nonoverlapping(rx_host as *const u8, got.as_mut_ptr(), got.len()) };
        if got != msg {
            return Err(format!("round {i}: received {got:02x?}, sent {msg:02x?}"));
        }
        Ok(())
    }

    /// Resets the engine (releasing its ring pins) and starts it again.
    fn restart(&self) -> Result<(), String> {
        let e = |e: Errno| format!("restart: {e}");
        self.device.write32(self.bar + CTRL, CTRL_RESET).map_err(e)?;
        start_engine(&self.device, self.bar, SHARED + self.tx_ring * PAGE, SHARED + self.rx_ring * PAGE).map_err(e)
    }

    /// Rounds until `stop`, restarting every 64 rounds; returns the count.
    fn run(&self, host: u64, stop: &AtomicBool) -> Result<u64, String> {
        let mut total = 0u64;
        while !stop.load(Ordering::Relaxed) {
            self.restart()?;
            for i in 0..64 {
                self.round(host, i)?;
                total += 1;
            }
        }
        Ok(total)
    }
}

/// The GET_BITMAP of the shared mapping, one bit per page.
fn shared_bitmap(c: &Container) -> Result<u64, Errno> {
    let mut bits = 0u64;
    let mut g = DirtyGet {
        argsz: std::mem::size_of::<DirtyGet>() as u32,
        flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        iova: SHARED,
        size: SHARED_PAGES * PAGE,
        pgsize: PAGE,
        bitmap_size: 8,
        data: (&mut bits as *mut u64) as u64,
    };
    crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut g)?;
    Ok(bits)
}

/// Two devices pin and unpin while other threads map, unmap and read
/// dirty bitmaps in the same container.
pub fn pin_unpin_vs_map_threads(ctx: &Ctx) -> CaseResult {
    if !(ctx.backend.rust_type1 && ctx.backend.rust_mtty) {
        return Err(Fail::Skip(
            "needs the Rust mtty to pin, and would provoke the C type1's lock inversion (lockdep)".into(),
        ));
    }
    let parent = ctx.mtty_parent();
    let (m1, m2) = (Mdev::create(&parent, "mtty-1")?, Mdev::create(&parent, "mtty-1")?);
    let (g1, g2) = (Group::open(m1.group()?)?, Group::open(m2.group()?)?);
    let c = Arc::new(Container::open()?);
    g1.set_container(&c)?;
    g2.set_container(&c)?;
    c.set_iommu(VFIO_TYPE1v2_IOMMU)?;
    let base = vm_locked_kb();
    let shared = Buffer::new((SHARED_PAGES * PAGE) as usize);
    c.map_rw(shared.vaddr(), SHARED, SHARED_PAGES * PAGE)?;
    dirty(&c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START)?;
    let host = shared.vaddr();

    let mut lanes = Vec::new();
    for (i, (g, m)) in [(&g1, &m1), (&g2, &m2)].into_iter().enumerate() {
        let device = g.device(&m.uuid)?;
        let bar = engine_bar(&device)?;
        let i = i as u64;
        lanes.push(Lane { device, bar, tx_ring: 4 * i, rx_ring: 4 * i + 1, rx_buf: 4 * i + 3, tx_off: 2048 * i, tag: 0xa0 + i as u8 });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let maps = Arc::new(AtomicU64::new(0));
    let bitmaps = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| -> CaseResult {
        let dma: Vec<_> = lanes.iter().map(|lane| scope.spawn(|| lane.run(host, &stop))).collect();
        let mappers: Vec<_> = (0..2u64)
            .map(|t| {
                let (c, stop, maps) = (c.clone(), stop.clone(), maps.clone());
                scope.spawn(move || -> Result<(), String> {
                    let own = Buffer::new(8 * PAGE as usize);
                    let (iova, alias) = (0x4000_0000 + t * 0x1000_0000, 0x7000_0000 + t * 0x100_0000);
                    while !stop.load(Ordering::Relaxed) {
                        c.map_rw(own.vaddr(), iova, 8 * PAGE).map_err(|e| format!("map: {e}"))?;
                        // The pinned pages again, at a second IOVA: unmapping
                        // this alias must not disturb the devices.
                        c.map_rw(host, alias, SHARED_PAGES * PAGE).map_err(|e| format!("map alias: {e}"))?;
                        let n = c.unmap_range(alias, SHARED_PAGES * PAGE).map_err(|e| format!("unmap alias: {e}"))?;
                        let m = c.unmap_range(iova, 8 * PAGE).map_err(|e| format!("unmap: {e}"))?;
                        if (n, m) != (SHARED_PAGES * PAGE, 8 * PAGE) {
                            return Err(format!("unmapped {n:#x} and {m:#x} bytes"));
                        }
                        maps.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        let reader = {
            let (c, stop, bitmaps) = (c.clone(), stop.clone(), bitmaps.clone());
            scope.spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    shared_bitmap(&c).map_err(|e| format!("GET_BITMAP: {e}"))?;
                    bitmaps.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        };
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let mut rounds = Vec::new();
        for h in dma {
            rounds.push(h.join().map_err(|_| fail("DMA thread panicked"))?.map_err(fail)?);
        }
        for h in mappers {
            h.join().map_err(|_| fail("mapper thread panicked"))?.map_err(fail)?;
        }
        reader.join().map_err(|_| fail("bitmap thread panicked"))?.map_err(fail)?;
        check!(start.elapsed() < Duration::from_secs(30), "threads took {:?} to stop", start.elapsed());
        let (maps, bitmaps) = (maps.load(Ordering::Relaxed), bitmaps.load(Ordering::Relaxed));
        println!("DMA rounds {rounds:?}, {maps} map/alias/unmap cycles, {bitmaps} dirty bitmaps");
        check!(rounds.iter().all(|&r| r >= 64) && maps >= 5 && bitmaps >= 5, "too little concurrency");
        Ok(())
    })?;

    // Both engines run, holding their ring pins (2 pages each).
    check_eq!(vm_locked_kb(), base + 16, "ring pins of both engines");
    // Everything pinned since the last bitmap read is dirty: one more
    // round on the first lane makes its RX buffer page dirty for certain.
    shared_bitmap(&c)?;
    lanes[0].restart().map_err(fail)?;
    lanes[0].round(host, 0).map_err(fail)?;
    let bits = shared_bitmap(&c)?;
    check!(bits & (1 << lanes[0].rx_buf) != 0, "RX buffer page reported dirty: bitmap {bits:#x}");
    for lane in &lanes {
        lane.device.write32(lane.bar + CTRL, 0)?;
        check_eq!(lane.device.read32(lane.bar + STATUS)?, 0, "engine idle, no error");
    }
    check_eq!(vm_locked_kb(), base, "locked memory back at the baseline");
    dirty(&c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?;
    check_eq!(c.unmap_range(0, 1 << 40)?, SHARED_PAGES * PAGE, "only the shared mapping left");
    drop(lanes);
    Ok(())
}
