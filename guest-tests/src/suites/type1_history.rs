//! Type1's bug history as regression cases: inputs that broke the C type1
//! in the past, or that a review of ours found, each with 6.12's results.
//! docs/type1.md ("Bug history") maps each historical bug to its case.

use super::type1_iommu::{edu, Mem};
use super::type1_multi::Pipe;
use super::{fail, pins_held, CaseResult, Ctx, Fail};
use crate::pci;
use crate::uapi::*;
use crate::vfio::{ioctl_raw, vm_locked_kb, Container, Errno, EventFd};
use crate::{check, check_eq};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// Two pages, the second `PROT_NONE`, unmapped on drop: a buffer placed
/// `k` bytes before the second page's start has exactly `k` writable bytes.
struct Guarded {
    base: *mut u8,
}

impl Guarded {
    fn new() -> Result<Guarded, super::Fail> {
        // SAFETY: a new anonymous mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(fail(format!("mmap: {}", std::io::Error::last_os_error())));
        }
        let g = Guarded { base: p.cast() };
        // SAFETY: the second page of the mapping just made.
        if unsafe { libc::mprotect(g.base.add(PAGE as usize).cast(), PAGE as usize, libc::PROT_NONE) } != 0 {
            return Err(fail(format!("mprotect: {}", std::io::Error::last_os_error())));
        }
        Ok(g)
    }

    /// The address `k` bytes before the guard page.
    fn at(&self, k: usize) -> *mut u8 {
        // SAFETY: `k` is at most a page: the result lies in the first page
        // or at its end.
        unsafe { self.base.add(PAGE as usize - k) }
    }

    /// The `k` writable bytes before the guard page.
    fn bytes(&self, k: usize) -> Vec<u8> {
        let mut v = vec![0u8; k];
        // SAFETY: `k` bytes of the first page.
        unsafe { std::ptr::copy_nonoverlapping(self.at(k), v.as_mut_ptr(), k) };
        v
    }

    fn fill(&self, k: usize, data: &[u8]) {
        // SAFETY: `data.len() <= k` bytes of the first page.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.at(k), data.len().min(k)) };
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made.
        unsafe { libc::munmap(self.base.cast(), 2 * PAGE as usize) };
    }
}

/// `VFIO_IOMMU_GET_INFO` into a buffer that runs into an unmapped page,
/// at every length from 1 byte to the whole reply: 6.12 copies the
/// capability chain first and the fixed header last, so when the chain
/// faults (`EFAULT`) the header is left as it was, and the chain's bytes
/// up to the fault are the reply's. Ours wrote the header first.
pub fn get_info_into_a_short_buffer(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let full_len = u32::from_ne_bytes(c.get_info_raw(argsz::<vfio_iommu_type1_info>())?[0..4].try_into().unwrap());
    let full = c.get_info_raw(full_len)?;
    check_eq!(full.len(), full_len as usize, "reply length");
    let g = Guarded::new()?;
    const POISON: u8 = 0xa5;
    for k in 1..=full.len() + 8 {
        let mut before = vec![POISON; k];
        before[..4.min(k)].copy_from_slice(&full_len.to_ne_bytes()[..4.min(k)]);
        g.fill(k, &before);
        let r = ioctl_raw(c.fd(), VFIO_IOMMU_GET_INFO, g.at(k) as libc::c_ulong);
        let after = g.bytes(k);
        if k >= full.len() {
            check!(r.is_ok(), "GET_INFO with {k} writable bytes: {r:?}");
            check!(after[..full.len()] == full[..], "reply with {k} writable bytes");
            continue;
        }
        check_eq!(r.err(), Some(Errno(libc::EFAULT)), "GET_INFO with {k} of {} bytes writable", full.len());
        let head = k.min(IOMMU_INFO_LEN);
        check!(after[..head] == before[..head], "header bytes changed although GET_INFO failed ({k} writable bytes): {:02x?}", &after[..head]);
        if k > IOMMU_INFO_LEN {
            check!(
                after[IOMMU_INFO_LEN..] == full[IOMMU_INFO_LEN..k],
                "capability bytes before the fault ({k} writable bytes): {:02x?}",
                &after[IOMMU_INFO_LEN..]
            );
        }
    }
    Ok(())
}

/// `sizeof(struct vfio_iommu_type1_info)`.
const IOMMU_INFO_LEN: usize = std::mem::size_of::<vfio_iommu_type1_info>();

/// A type1v2 container with the first `edu`'s group (a real IOMMU domain).
fn edu_container() -> Result<(Container, crate::vfio::Group), Fail> {
    Ok(pci::type1v2_container(&edu(0)?)?)
}

/// SIGKILL in the middle of a large `MAP_DMA` on a real-IOMMU container
/// (GUP sees the fatal signal and the map unwinds, or the process exit
/// tears the mapping down): afterwards no page is left pinned.
pub fn map_killed_midway(_ctx: &Ctx) -> CaseResult {
    let _ = edu(0)?;
    let before = pins_held()?;
    let size = 1u64 << 30;
    let up = Pipe::new()?;
    // SAFETY: the case runs single-threaded in its own process; the child
    // only makes system calls and then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork failed"));
    }
    if pid == 0 {
        let code = match edu_container() {
            Ok((c, _g)) => {
                // SAFETY: a new anonymous mapping, never unmapped (the child exits).
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                up.send(b's');
                if p != libc::MAP_FAILED && c.map_rw(p as u64, 0x1000_0000, size).is_ok() {
                    up.send(b'm');
                    0
                } else {
                    1
                }
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    check_eq!(up.recv(), Some(b's'), "child ready to map");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a child of ours.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: waits for that child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let finished = up.try_recv() == Some(b'm');
    println!("child {} before the kill", if finished { "had finished mapping" } else { "was still mapping" });
    check!(libc::WIFSIGNALED(status), "child status {status:#x}: not killed");
    // Pins of a dying process go when its files are released, which the
    // exit does before waitpid returns; give deferred fput a moment anyway.
    // (Another process's pin may also end meanwhile: the count may drop
    // below where it was, but a pin left by the child keeps it above.)
    let t = Instant::now();
    while pins_held()? > before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = pins_held()?;
    check!(after <= before, "{} pages still pinned system-wide after the killed MAP_DMA ({before} before, {after} after)", after - before);
    Ok(())
}

/// The `locked_vm` accounting race: 4 KiB MAP/UNMAP on a real-IOMMU
/// container in one thread while another thread of the same process (same
/// mm) mlocks and munlocks: every update of `locked_vm` is made under the
/// mmap lock, so `VmLck` ends where it started.
pub fn locked_vm_race_with_mlock(_ctx: &Ctx) -> CaseResult {
    let (c, _g) = edu_container()?;
    let buf = Mem::anon(4 * PAGE)?;
    let locked = Mem::anon(16 * PAGE)?;
    let base = vm_locked_kb();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, len) = (locked.vaddr() as usize, 16 * PAGE as usize);
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            // SAFETY: lock and unlock pages of a live mapping of the case.
            unsafe {
                libc::mlock(addr as *const libc::c_void, len);
                libc::munlock(addr as *const libc::c_void, len);
            }
            n += 1;
        }
        n
    });
    let start = Instant::now();
    let mut maps = 0u64;
    let mut r = Ok(());
    while start.elapsed() < Duration::from_secs(3) {
        for i in 0..4 {
            if let Err(e) = c.map_rw(buf.vaddr() + i * PAGE, 0x20_0000 + i * PAGE, PAGE) {
                r = Err(fail(format!("MAP_DMA: {e}")));
            }
        }
        if let Err(e) = c.unmap_range(0x20_0000, 4 * PAGE) {
            r = Err(fail(format!("UNMAP_DMA: {e}")));
        }
        maps += 4;
        if r.is_err() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mlocks = t.join().map_err(|_| fail("mlock thread panicked"))?;
    r?;
    println!("{maps} maps against {mlocks} mlock/munlock pairs");
    check!(mlocks > 0 && maps > 0, "both threads ran");
    check_eq!(vm_locked_kb(), base, "VmLck after the race");
    Ok(())
}

/// The interrupt eventfd leak the mtty sample once had: triggers set,
/// replaced, torn down and left set at close, many times over. No
/// eventfd may stay referenced: the fds are closed by us, the kernel's
/// references are checked by kmemleak at the end of the run, and a
/// signal after teardown must not arrive.
pub fn irq_eventfds_released(ctx: &Ctx) -> CaseResult {
    let fds_before = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    for round in 0..20 {
        let o = super::mtty::open_device(ctx, "mtty-1")?;
        let d = &o.device;
        d.info()?;
        // INTx and MSI in turn (one at a time, as vfio-pci allows), each
        // left set at close every other time.
        let index = if round % 2 == 0 { VFIO_PCI_INTX_IRQ_INDEX } else { VFIO_PCI_MSI_IRQ_INDEX };
        d.irq_info(index)?;
        let step = |what: &str, r: Result<(), Errno>| r.map_err(|e| fail(format!("round {round}, irq index {index}: {what}: {e}")));
        let a = EventFd::new()?;
        let b = EventFd::new()?;
        step("set a trigger", d.set_irq_eventfd(index, a.raw()))?;
        step("replace the trigger", d.set_irq_eventfd(index, b.raw()))?;
        if (round / 2) % 2 == 0 {
            // Left set at close: the release path must drop it.
            continue;
        }
        step("disable (DATA_NONE, count 0)", d.set_irq_none(index, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0))?;
        step("set a trigger again", d.set_irq_eventfd(index, a.raw()))?;
        step("disable again", d.set_irq_none(index, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0))?;
    }
    let fds_after = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    check_eq!(fds_after, fds_before, "open file descriptors after 20 rounds");
    Ok(())
}

/// `rmmod` of either module while it is in use is refused and changes
/// nothing: the container and the device keep working.
pub fn rmmod_while_in_use(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let dev = s.group.device(&s.mdev.uuid).map_err(|e| fail(format!("GET_DEVICE_FD: {e}")))?;
    for module in [ctx.backend.type1_module(), ctx.backend.mtty_module()] {
        let out = std::process::Command::new("rmmod").arg(module).output().map_err(|e| fail(format!("rmmod: {e}")))?;
        check!(!out.status.success(), "rmmod {module} succeeded while in use");
        check!(std::path::Path::new("/sys/module").join(module).exists(), "{module} is gone after a refused rmmod");
    }
    let buf = Mem::anon(PAGE)?;
    s.container.map_rw(buf.vaddr(), 0x10_0000, PAGE)?;
    check_eq!(s.container.unmap_range(0x10_0000, PAGE)?, PAGE, "unmap after the refused rmmods");
    check!(dev.info().is_ok(), "device info after the refused rmmods");
    Ok(())
}

/// Hot-unplug of an assigned `vfio-pci` device while its buffer is mapped
/// and pinned and it has just DMA'd: `remove` waits (vfio-pci relays the
/// request to the user) until the process closes the device, then the
/// group leaves the container, the pins go, and nothing is reported. The
/// device comes back by a bus rescan and is bound to `vfio-pci` again.
pub fn hot_unplug_while_mapped(_ctx: &Ctx) -> CaseResult {
    let dev = edu(1)?;
    let before = pins_held()?;
    let base = vm_locked_kb();
    let c = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    let g = pci::open_group(&dev, &c)?;
    c.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(|e| fail(format!("SET_IOMMU(TYPE1v2): {e}")))?;
    let e = pci::Edu::open(&g, &dev.bdf)?;
    let buf = Mem::anon(16 * PAGE)?;
    c.map_rw(buf.vaddr(), 0x10_0000, 16 * PAGE)?;
    check_eq!(vm_locked_kb(), base + 64, "VmLck with the buffer pinned");
    e.dma_from_ram(0x10_0000, 0, 512)?;
    e.dma_to_ram(0, 0x10_0000 + PAGE, 512)?;
    // No request eventfd is registered: vfio-pci says it waits for the user.
    let relays = || kernel_log_count("blocked until released by user");
    let relayed_before = relays();
    let remove = format!("/sys/bus/pci/devices/{}/remove", dev.bdf);
    let t = std::thread::spawn(move || std::fs::write(&remove, "1"));
    // vfio-pci's remove waits for the user to close the device.
    let start = Instant::now();
    while relays() == relayed_before && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let relayed = relays() > relayed_before;
    check!(!t.is_finished(), "remove finished while the device was open");
    drop(e);
    drop(g);
    let removed = t.join().map_err(|_| fail("remove thread panicked"))?;
    let rescan = std::fs::write("/sys/bus/pci/rescan", "1");
    let rebound = pci::bind_test_devices();
    removed.map_err(|err| fail(format!("remove: {err}")))?;
    check!(relayed, "vfio-pci never said it waits for the user to release the device");
    rescan.map_err(|err| fail(format!("rescan: {err}")))?;
    rebound?;
    check_eq!(pci::driver(&dev.bdf), Some("vfio-pci".to_string()), "driver of the device after the rescan");
    // The container outlived its group: the IOMMU backend went with the
    // last group, and the mapping with it.
    check_eq!(vm_locked_kb(), base, "VmLck after the unplug");
    check_eq!(c.unmap_range(0, 1 << 40).err(), Some(Errno(libc::EINVAL)), "UNMAP_DMA on the container its last group left");
    drop(c);
    let t = Instant::now();
    while pins_held()? > before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = pins_held()?;
    check!(after <= before, "{} pages still pinned after the unplug ({before} before, {after} after)", after - before);
    check!(pci::find(crate::pci::EDU_ID).len() >= 2, "both edu devices back behind the IOMMU");
    Ok(())
}

/// Kernel log lines containing `needle`.
fn kernel_log_count(needle: &str) -> usize {
    std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

/// A `vfio-pci` group leaves a container while an mdev there holds pins:
/// with the last IOMMU domain gone only the IOMMU's pins go, the pages the
/// device pinned stay pinned and are charged again (C's
/// `vfio_iommu_unmap_unpin_reaccount`), the device keeps working, and an
/// unmap still reaches it. Needs the Rust mtty's DMA engine to pin;
/// `--backend mtty-rs` runs it on the C type1, with the same results, and
/// a lockdep report from the final unmap (the C type1's lock inversion,
/// docs/type1.md).
pub fn group_leaves_while_mdev_pins(ctx: &Ctx) -> CaseResult {
    use crate::mtty_dma_regs::*;
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine to pin with")?;
    let dev = edu(0)?;
    let o = super::mtty::open_device(ctx, "mtty-1")?;
    let (c, d) = (&o._container, &o.device);
    const IOVA: u64 = 0x10_0000;
    let mem = Mem::anon(16 * PAGE)?;
    c.map_rw(mem.vaddr(), IOVA, 16 * PAGE)?;
    let base = vm_locked_kb();
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d.write16(cfg + 0x04, 0x0007)?;
    let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    for (ring, page) in [(TX, 0), (RX, 1)] {
        d.write32(bar + ring + RING_BASE, (IOVA + page * PAGE) as u32)?;
        d.write32(bar + ring + RING_BASE + 4, 0)?;
        d.write32(bar + ring + RING_SIZE, 16)?;
    }
    d.write32(bar + CTRL, CTRL_ENABLE)?;
    let running = |what: &str| -> CaseResult {
        check_eq!(d.read32(bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine {what}");
        Ok(())
    };
    running("after enable")?;
    check_eq!(vm_locked_kb(), base + 8, "VmLck: the two ring pages the device pinned");
    let g = pci::open_group(&dev, c)?;
    check_eq!(vm_locked_kb(), base + 64, "VmLck once the vfio-pci group joined: the whole mapping, the device's pages once");
    let e = pci::Edu::open(&g, &dev.bdf)?;
    e.dma_from_ram(IOVA + 4 * PAGE, 0, 256)?;
    drop(e);
    g.unset_container()?;
    check_eq!(vm_locked_kb(), base + 8, "VmLck after the group left: the device's pins, charged again");
    running("after the group left")?;
    check_eq!(c.unmap_range(IOVA, 16 * PAGE)?, 16 * PAGE, "unmap reaching the device");
    check_eq!(d.read32(bar + ERROR_CODE)?, ERR_UNMAPPED, "engine told of the unmap");
    check_eq!(vm_locked_kb(), base, "VmLck after the unmap");
    Ok(())
}

/// `vfio_dma_rw` dirty accounting with a start offset: a 2-byte device
/// write at offset `PAGE_SIZE - 1` of a mapping dirties its first two
/// pages (an upstream fix once counted the pages from the offset wrongly),
/// and a device read dirties nothing. The writes come from the mtty
/// engine's copy command, in the calling process's context. Rust mtty only
/// (the engine); `--backend mtty-rs` gives the same on the C type1.
pub fn dma_rw_dirty_with_offset(ctx: &Ctx) -> CaseResult {
    use crate::mtty_dma_regs::*;
    use super::type1::dirty;
    use super::type1_faults::get_bitmap;
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let o = super::mtty::open_device(ctx, "mtty-1")?;
    let (c, d) = (&o._container, &o.device);
    const IOVA: u64 = 0x10_0000;
    let mem = Mem::anon(8 * PAGE)?;
    c.map_rw(mem.vaddr(), IOVA, 8 * PAGE)?;
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d.write16(cfg + 0x04, 0x0007)?;
    let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    d.write32(bar + INT_ENABLE, INT_COPY_DONE | INT_ERROR)?;
    d.write32(bar + CTRL, CTRL_ENABLE)?;
    let copy = |src: u64, dst: u64, len: u32| -> CaseResult {
        for (reg, v) in [(COPY_SRC, src), (COPY_DST, dst)] {
            d.write32(bar + reg, v as u32)?;
            d.write32(bar + reg + 4, (v >> 32) as u32)?;
        }
        d.write32(bar + COPY_LEN, len)?;
        d.write32(bar + DOORBELL, DOORBELL_COPY)?;
        let t = Instant::now();
        while d.read32(bar + STATUS)? & STATUS_COPY != 0 {
            check!(t.elapsed() < Duration::from_secs(10), "copy still busy after 10 s");
        }
        check_eq!(d.read32(bar + STATUS)? & STATUS_ERROR, 0, "copy {src:#x} -> {dst:#x} failed");
        Ok(())
    };
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START)?;
    // Nothing dirty yet once the first report is taken.
    let _ = get_bitmap(c, IOVA, 8 * PAGE)?;
    check_eq!(get_bitmap(c, IOVA, 8 * PAGE)?[0], 0, "bitmap after it was read once");
    // Source on pages 5-6, destination 2 bytes straddling pages 0 and 1.
    copy(IOVA + 5 * PAGE + PAGE - 1, IOVA + PAGE - 1, 2)?;
    check_eq!(get_bitmap(c, IOVA, 8 * PAGE)?[0], 0b0000_0011, "dirty pages after a 2-byte write at offset PAGE_SIZE - 1");
    // A larger write from offset 1 of page 2 to the first byte of page 4.
    copy(IOVA + 6 * PAGE, IOVA + 2 * PAGE + 1, (2 * PAGE) as u32)?;
    check_eq!(get_bitmap(c, IOVA, 8 * PAGE)?[0], 0b0001_1100, "dirty pages after a write over pages 2-4");
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?;
    Ok(())
}

/// One outcome of an ioctl at the top of the IOVA space, as the cases
/// compare them: the size the kernel wrote back, or the errno.
fn outcome(r: Result<u64, crate::vfio::Errno>) -> String {
    match r {
        Ok(n) => format!("ok {n:#x}"),
        Err(e) => format!("errno {}", e.0),
    }
}

/// Map, unmap, dirty bitmap and unmap-all of a two-page mapping at the top
/// of the IOVA space, in a type1v2 container with an mdev (the device
/// pins nothing). A mapping ending at 2^64 - PAGE gives the same results
/// on both backends. One ending exactly at 2^64 is where 6.12's C wraps
/// (`iova + size` is 0 in its range lookups): it maps, but neither an
/// unmap of its exact range nor UNMAP_ALL finds it, and GET_BITMAP of its
/// range is `EINVAL` (the mappings go only with the container). Ours finds
/// it (docs/type1.md, "Differences from the reference"); the case checks
/// each backend against its own table.
pub fn top_of_iova_space(ctx: &Ctx) -> CaseResult {
    let mem = crate::vfio::Buffer::new(2 * PAGE as usize);
    let run = |iova: u64| -> Result<Vec<String>, Fail> {
        let s = ctx.container_with_mdev("mtty-1")?;
        let c = &s.container;
        let map = || outcome(c.map_rw(mem.vaddr(), iova, 2 * PAGE).map(|()| 0));
        let all = dma_unmap(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0);
        let mut seen = vec![map(), outcome(c.unmap_range(iova, 2 * PAGE)), map()];
        seen.push(outcome(super::type1::dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START).map(|()| 0)));
        seen.push(outcome(super::type1_faults::get_bitmap(c, iova, 2 * PAGE).map(|bits| u64::from(bits[0]))));
        seen.push(outcome(c.unmap(&all)));
        seen.push(map());
        Ok(seen)
    };
    let below = run(u64::MAX - 3 * PAGE + 1)?;
    println!("ending at 2^64 - PAGE: {below:?}");
    let want_below = ["ok 0x0", "ok 0x2000", "ok 0x0", "ok 0x0", "ok 0x0", "ok 0x2000", "ok 0x0"];
    // GET_BITMAP of a range ending at 2^64 is EINVAL on both (the bitmap
    // code checks `iova + size` for a wrap).
    check_eq!(below, want_below, "map, unmap, map, dirty START, GET_BITMAP, UNMAP_ALL, map ending at 2^64 - PAGE");
    let at_top = run(u64::MAX - 2 * PAGE + 1)?;
    println!("ending at 2^64: {at_top:?}");
    let want_top: Vec<String> = if ctx.backend.rust_type1 {
        ["ok 0x0", "ok 0x2000", "ok 0x0", "ok 0x0", "errno 22", "ok 0x2000", "ok 0x0"].iter().map(|s| s.to_string()).collect()
    } else {
        // 6.12: the unmaps find nothing (0 bytes), and each map after the
        // first adds another mapping at the same IOVA: its lookup finds no
        // overlap either.
        ["ok 0x0", "ok 0x0", "ok 0x0", "ok 0x0", "errno 22", "ok 0x0", "ok 0x0"].iter().map(|s| s.to_string()).collect()
    };
    check_eq!(at_top, want_top, "map, unmap, map, dirty START, GET_BITMAP, UNMAP_ALL, map ending at 2^64");
    Ok(())
}

/// An anonymous mapping never touched: every page reads as the shared zero
/// page. Unmapped on drop.
struct Untouched {
    addr: *mut libc::c_void,
    len: usize,
}

impl Untouched {
    fn new(len: usize, prot: libc::c_int) -> Result<Untouched, Fail> {
        // SAFETY: a new anonymous mapping with no address hint.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if addr == libc::MAP_FAILED {
            return Err(fail(format!("mmap {len}: {}", std::io::Error::last_os_error())));
        }
        // 4 KiB zero pages, not the huge zero page.
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        Ok(Untouched { addr, len })
    }
}

impl Drop for Untouched {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Read-only `MAP_DMA` of never-touched anonymous memory on a real-IOMMU
/// container, many times over: GUP hands out the shared zero page (C once
/// leaked a reference to it on every such map). 6.12's GUP takes no pin on
/// it, and type1 charges it like any page (measured on the C type1:
/// `VmLck` +4 MiB for a 4 MiB mapping) and uncharges it at unmap; the
/// system's pin count comes back, and the device reads zeros through the
/// mapping.
pub fn zero_page_read_only_maps(_ctx: &Ctx) -> CaseResult {
    let (c, g) = edu_container()?;
    let dev = edu(0)?;
    let e = pci::Edu::open(&g, &dev.bdf)?;
    const LEN: u64 = 4 << 20;
    let ro = Untouched::new(LEN as usize, libc::PROT_READ)?;
    let out = Mem::anon(PAGE)?;
    let (ro_iova, out_iova) = (0x100_0000, 0x80_0000);
    c.map_rw(out.vaddr(), out_iova, PAGE)?;
    let (locked, pins) = (vm_locked_kb(), pins_held()?);
    let map_ro = vfio_iommu_type1_dma_map {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ,
        vaddr: ro.addr as u64,
        iova: ro_iova,
        size: LEN,
    };
    for round in 0..32 {
        c.map(&map_ro)?;
        if round == 0 {
            check_eq!(vm_locked_kb(), locked + LEN / 1024, "VmLck while 4 MiB of zero pages are mapped (charged, as 6.12 does)");
            // The device reads the last page through the mapping: zeros,
            // over a buffer that held a pattern.
            super::type1_iommu::fill(&out, 0, &[0x5a; 256]);
            e.dma_from_ram(out_iova, 0, 256)?;
            e.dma_from_ram(ro_iova + LEN - PAGE, 0, 256)?;
            e.dma_to_ram(0, out_iova, 256)?;
            check!(super::type1_iommu::bytes(&out, 0, 256).iter().all(|&b| b == 0), "the device read non-zero bytes from the zero page");
        }
        check_eq!(c.unmap_range(ro_iova, LEN)?, LEN, "unmapped size");
        check_eq!(vm_locked_kb(), locked, "VmLck after unmapping zero pages (round {round})");
    }
    check_eq!(vm_locked_kb(), locked, "VmLck after 32 read-only maps of zero pages");
    let after = pins_held()?;
    check!(after <= pins, "{} pins left system-wide after 32 read-only maps of zero pages", after - pins);
    Ok(())
}

/// Pinning and mapping 1 GiB of 4 KiB pages in one `MAP_DMA` on a real-IOMMU
/// container, and unmapping it, with the soft-lockup detector's threshold
/// at 6 s (`kernel.watchdog_thresh` = 3, restored afterwards; 20 s by
/// default): the pin, map and unmap loops must reschedule (the test kernel
/// has no preemption), or the watchdog reports a soft lockup. Not lower:
/// under TCG the guest's clock runs on while the host deschedules a vCPU,
/// which a 2 s threshold could take for a lockup on a busy machine.
pub fn no_soft_lockup_pinning_a_gib(_ctx: &Ctx) -> CaseResult {
    let (c, _g) = edu_container()?;
    const LEN: u64 = 1 << 30;
    let mem = super::type1_iommu::backed(super::type1_iommu::Backing::Small, LEN)?;
    let thresh = "/proc/sys/kernel/watchdog_thresh";
    let old = std::fs::read_to_string(thresh).map_err(|e| fail(format!("{thresh}: {e}")))?;
    let lockups = kernel_log_count("soft lockup");
    std::fs::write(thresh, "3").map_err(|e| fail(format!("{thresh}: {e}")))?;
    let t = Instant::now();
    let mapped = c.map_rw(mem.vaddr(), 0x4000_0000, LEN);
    let map_time = t.elapsed();
    let unmapped = c.unmap_range(0x4000_0000, LEN);
    let total = t.elapsed();
    // Let the watchdog look once more before it is relaxed again.
    std::thread::sleep(Duration::from_secs(6));
    let _ = std::fs::write(thresh, old.trim());
    println!("MAP_DMA of 1 GiB of 4 KiB pages: {map_time:?}; with the UNMAP_DMA: {total:?}");
    mapped?;
    check_eq!(unmapped?, LEN, "unmapped size");
    check_eq!(kernel_log_count("soft lockup"), lockups, "soft lockup reports during the 1 GiB MAP_DMA and UNMAP_DMA");
    Ok(())
}
