//! Allocation failures in the type1 paths, injected one at a time.
//!
//! `/proc/thread-self/fail-nth` makes the N-th fault-injection point this
//! thread passes fail; failslab, told not to ignore sleeping allocations,
//! turns that into a `kmalloc` returning NULL. Each operation is repeated
//! with N = 1, 2, ... until it passes N points without an injection. Every
//! injected failure must come back as ENOMEM with nothing changed (or be
//! absorbed: success), and the kernel must stay silent (the run fails on
//! any splat or leak).

use super::type1::{dirty, dma_avail};
use super::{fail, CaseResult, Ctx, Fail};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, Buffer, Container, Errno, Group, VResult};
use crate::{check, check_eq};

const PAGE: u64 = 4096;
const FAILSLAB: &str = "/sys/kernel/debug/failslab";
/// An operation passing more injection points than this is a runaway.
const MAX_POINTS: u32 = 500;

/// failslab set up for fail-nth, restored on drop.
struct FailSlab {
    saved: Vec<(String, String)>,
}

impl FailSlab {
    fn setup() -> Result<Self, Fail> {
        if !std::path::Path::new(FAILSLAB).exists() {
            return Err(Fail::Skip(format!("{FAILSLAB} missing (CONFIG_FAILSLAB, debugfs)")));
        }
        let mut saved = Vec::new();
        // Sleeping allocations are exactly the ones our paths make; no
        // messages or stack dumps for each injected failure.
        for (attr, value) in [("ignore-gfp-wait", "N"), ("verbose", "0")] {
            let path = format!("{FAILSLAB}/{attr}");
            let old = std::fs::read_to_string(&path).map_err(|e| fail(format!("read {path}: {e}")))?;
            std::fs::write(&path, value).map_err(|e| fail(format!("write {path}: {e}")))?;
            saved.push((path, old.trim().to_string()));
        }
        Ok(FailSlab { saved })
    }
}

impl Drop for FailSlab {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            let _ = std::fs::write(path, old);
        }
    }
}

/// This thread's `fail-nth`, opened once: opening a file allocates, and an
/// allocation between arming and the operation would take the failure.
struct FailNth(std::fs::File);

impl FailNth {
    const PATH: &str = "/proc/thread-self/fail-nth";

    fn open() -> Result<Self, Fail> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(Self::PATH);
        Ok(FailNth(f.map_err(|e| fail(format!("open {}: {e}", Self::PATH)))?))
    }

    fn set(&self, n: u32) -> CaseResult {
        use std::os::unix::fs::FileExt;
        self.0.write_at(n.to_string().as_bytes(), 0).map_err(|e| fail(format!("write {}: {e}", Self::PATH)))?;
        Ok(())
    }

    /// Runs `op` with the `n`-th injection point armed; returns its result
    /// and whether the failure was injected. Disarms before returning.
    fn run<T>(&self, n: u32, op: &mut dyn FnMut() -> VResult<T>) -> Result<(VResult<T>, bool), Fail> {
        use std::os::unix::fs::FileExt;
        self.set(n)?;
        let r = op();
        let mut buf = [0u8; 16];
        let len = self.0.read_at(&mut buf, 0).map_err(|e| fail(format!("read {}: {e}", Self::PATH)))?;
        self.set(0)?;
        let left: u32 = std::str::from_utf8(&buf[..len])
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| fail(format!("{}: unreadable {:?}", Self::PATH, &buf[..len])))?;
        Ok((r, left == 0))
    }
}

/// Sweeps `op` over every injection point it passes. After an injected
/// failure `unchanged` must hold; after a success (injected and absorbed, or
/// the final clean run) `undo` puts things back for the next attempt, except
/// after the clean run, whose result is returned. Returns the number of
/// injection points and the result of the run that had none.
fn sweep<T>(
    nth: &FailNth,
    what: &str,
    op: &mut dyn FnMut() -> VResult<T>,
    unchanged: &mut dyn FnMut() -> CaseResult,
    undo: &mut dyn FnMut(&T) -> CaseResult,
) -> Result<(u32, T), Fail> {
    for n in 1..=MAX_POINTS {
        match nth.run(n, op)? {
            (Ok(v), false) => {
                println!("{what}: {} injection points", n - 1);
                return Ok((n - 1, v));
            }
            (Err(e), false) => return Err(fail(format!("{what}: failed with {e} and nothing injected"))),
            (Ok(v), true) => undo(&v)?,
            (Err(e), true) => {
                check_eq!(e, Errno(libc::ENOMEM), "{what}: errno with allocation {n} failed");
                unchanged()?;
            }
        }
    }
    Err(fail(format!("{what}: still injecting after {MAX_POINTS} points")))
}

/// Whether anything is mapped in the first page of `[iova, iova+size)`:
/// a one-page MAP_DMA there answers EEXIST if so.
fn is_mapped(c: &Container, iova: u64, size: u64) -> Result<bool, Fail> {
    let probe = Buffer::new(PAGE as usize);
    match c.map_rw(probe.vaddr(), iova, size.min(PAGE)) {
        Err(Errno(libc::EEXIST)) => Ok(true),
        Ok(()) => {
            c.unmap_range(iova, size.min(PAGE))?;
            Ok(false)
        }
        Err(e) => Err(fail(format!("probe map at {iova:#x}: {e}"))),
    }
}

pub(crate) fn get_bitmap(c: &Container, iova: u64, size: u64) -> VResult<Vec<u8>> {
    let mut bits = vec![0u8; ((size / PAGE).div_ceil(64) * 8) as usize];
    let mut g = DirtyGet {
        argsz: std::mem::size_of::<DirtyGet>() as u32,
        flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        iova,
        size,
        pgsize: PAGE,
        bitmap_size: bits.len() as u64,
        data: bits.as_mut_ptr() as u64,
    };
    crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut g)?;
    Ok(bits)
}

/// Sweeps a MAP_DMA of `[iova, iova+size)`: a failed one leaves no
/// mapping there. The clean run's mapping is left in place.
fn sweep_map(nth: &FailNth, what: &str, c: &Container, vaddr: u64, iova: u64, size: u64) -> CaseResult {
    let avail = dma_avail(c)?;
    let mut map = || c.map_rw(vaddr, iova, size);
    let mut nothing_there = || -> CaseResult {
        // Before the probe, whose unmap would also remove a zero-sized
        // mapping left behind.
        check_eq!(dma_avail(c)?, avail, "{what}: dma_avail after a failed MAP_DMA");
        check!(!is_mapped(c, iova, size)?, "{what}: a failed MAP_DMA left a mapping");
        Ok(())
    };
    let mut unmap = |_: &()| -> CaseResult {
        check_eq!(c.unmap_range(iova, size)?, size, "{what}: unmap after an absorbed failure");
        Ok(())
    };
    sweep(nth, what, &mut map, &mut nothing_there, &mut unmap).map(|_| ())
}

/// MAP_DMA, GET_INFO, dirty tracking, UNMAP_DMA and (where a device pins)
/// pinning and unmapping pinned pages, each with every allocation failed
/// in turn.
pub fn fault_injection(ctx: &Ctx) -> CaseResult {
    let _failslab = FailSlab::setup()?;
    let nth = FailNth::open()?;
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let mem = Buffer::new(64 * PAGE as usize);
    let base = vm_locked_kb();
    // Neighbours, so the new mapping goes into a populated tree.
    c.map_rw(mem.vaddr(), 0x1000_0000, 4 * PAGE)?;
    c.map_rw(mem.vaddr(), 0x3000_0000, 4 * PAGE)?;
    const IOVA: u64 = 0x2000_0000;
    let size = 32 * PAGE;

    sweep_map(&nth, "MAP_DMA", c, mem.vaddr(), IOVA, size)?;
    check_eq!(c.unmap_range(IOVA, size)?, size, "unmap of the mapping made without injection");

    let mut info = || c.get_info_raw(512);
    sweep(&nth, "GET_INFO", &mut info, &mut || Ok(()), &mut |_| Ok(()))?;

    // START allocates a bitmap per mapping; a failure must leave tracking off.
    let mut start = || dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START);
    let mut not_tracking = || -> CaseResult {
        check_eq!(get_bitmap(c, IOVA, size).err(), Some(Errno(libc::EINVAL)), "GET_BITMAP after a failed START");
        Ok(())
    };
    let mut stop = |_: &()| -> CaseResult { Ok(dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?) };
    sweep(&nth, "DIRTY_PAGES START", &mut start, &mut not_tracking, &mut stop)?;

    // MAP_DMA while tracking also allocates the new mapping's bitmap.
    // The clean run's mapping stays for GET_BITMAP and UNMAP_DMA below.
    sweep_map(&nth, "MAP_DMA while tracking", c, mem.vaddr(), IOVA, size)?;
    let mut bitmap = || get_bitmap(c, IOVA, size);
    sweep(&nth, "GET_BITMAP", &mut bitmap, &mut || Ok(()), &mut |_| Ok(()))?;
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?;

    // UNMAP_DMA: re-map after every successful attempt.
    let mut unmap = || c.unmap_range(IOVA, size);
    let mut still_mapped = || -> CaseResult {
        check!(is_mapped(c, IOVA, size)?, "a failed UNMAP_DMA removed the mapping");
        Ok(())
    };
    let mut remap = |n: &u64| -> CaseResult {
        check_eq!(*n, size, "unmapped size");
        Ok(c.map_rw(mem.vaddr(), IOVA, size)?)
    };
    let (_, n) = sweep(&nth, "UNMAP_DMA", &mut unmap, &mut still_mapped, &mut remap)?;
    check_eq!(n, size, "unmapped size");

    if ctx.backend.rust_type1 && ctx.backend.rust_mtty {
        pin_paths(&nth, &s, &mem, base)?;
    }
    check_eq!(c.unmap_range(0, 1 << 40)?, 8 * PAGE, "only the neighbours left");
    check_eq!(vm_locked_kb(), base, "locked memory back at the baseline");
    Ok(())
}

/// The device's pin path (engine start pins both ring pages) and the unmap
/// of pinned pages, which goes through the device list.
fn pin_paths(nth: &FailNth, s: &super::Setup, mem: &Buffer, base: u64) -> CaseResult {
    const IOVA: u64 = 0x4000_0000;
    let c = &s.container;
    let d = s.group.device(&s.mdev.uuid)?;
    let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    d.write16(cfg + 0x04, 0x0007)?;
    let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    c.map_rw(mem.vaddr(), IOVA, 16 * PAGE)?;
    let program = || -> VResult<()> {
        d.write32(bar + CTRL, CTRL_RESET)?;
        for (ring, page) in [(TX, 0u64), (RX, 1)] {
            d.write32(bar + ring + RING_BASE, (IOVA + page * PAGE) as u32)?;
            d.write32(bar + ring + RING_SIZE, 16)?;
        }
        Ok(())
    };
    // A pin that fails halts the engine with PIN_FAILED and holds nothing.
    let mut enable = || -> VResult<u32> {
        d.write32(bar + CTRL, CTRL_ENABLE)?;
        d.read32(bar + STATUS)
    };
    let mut pin_failed = || -> CaseResult {
        let status = d.read32(bar + STATUS)?;
        if status & STATUS_ERROR != 0 {
            check_eq!(d.read32(bar + ERROR_CODE)?, 5, "error code after a failed pin");
        }
        check_eq!(status & STATUS_RUNNING, 0, "engine running after a failed enable");
        check_eq!(vm_locked_kb(), base, "pins left by a failed enable");
        program()?;
        Ok(())
    };
    let mut check_status = |status: &u32| -> CaseResult {
        if status & STATUS_ERROR != 0 {
            // The write succeeded but a pin inside it failed.
            check_eq!(d.read32(bar + ERROR_CODE)?, 5, "error code after a failed pin");
            check_eq!(vm_locked_kb(), base, "pins left by a failed pin");
        }
        program()?;
        check_eq!(vm_locked_kb(), base, "reset releases the pins");
        Ok(())
    };
    program()?;
    let (_, status) = sweep(nth, "engine enable (pins)", &mut enable, &mut pin_failed, &mut check_status)?;
    check_eq!(status & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine running");
    check_eq!(vm_locked_kb(), base + 8, "two ring pages pinned");

    // Unmapping pinned pages: either the whole unmap happens (device told,
    // pins gone) or ENOMEM with the mapping and the pins as they were.
    let mut unmap = || c.unmap_range(IOVA, 16 * PAGE);
    let mut intact = || -> CaseResult {
        check!(is_mapped(c, IOVA, 16 * PAGE)?, "a failed unmap removed the mapping");
        check_eq!(d.read32(bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine after a failed unmap");
        check_eq!(vm_locked_kb(), base + 8, "pins after a failed unmap");
        Ok(())
    };
    let mut again = |n: &u64| -> CaseResult {
        check_eq!(*n, 16 * PAGE, "unmapped size");
        check_eq!(d.read32(bar + ERROR_CODE)?, ERR_UNMAPPED, "engine told of the unmap");
        check_eq!(vm_locked_kb(), base, "pins released by the unmap");
        c.map_rw(mem.vaddr(), IOVA, 16 * PAGE)?;
        program()?;
        d.write32(bar + CTRL, CTRL_ENABLE)?;
        check_eq!(vm_locked_kb(), base + 8, "pinned again");
        Ok(())
    };
    let (_, n) = sweep(nth, "UNMAP_DMA of pinned pages", &mut unmap, &mut intact, &mut again)?;
    check_eq!(n, 16 * PAGE, "unmapped size");
    check_eq!(d.read32(bar + ERROR_CODE)?, ERR_UNMAPPED, "engine told of the unmap");
    check_eq!(vm_locked_kb(), base, "pins released");
    Ok(())
}

/// As [`sweep`], for paths where an injected failure may surface as
/// another errno than `ENOMEM` (an IOMMU driver's own allocation failing
/// inside an attach): any errno is accepted, and printed, as long as
/// `unchanged` holds.
fn sweep_any_errno<T>(
    nth: &FailNth,
    what: &str,
    op: &mut dyn FnMut() -> VResult<T>,
    unchanged: &mut dyn FnMut() -> CaseResult,
    undo: &mut dyn FnMut(&T) -> CaseResult,
) -> Result<(u32, T), Fail> {
    let mut errnos = std::collections::BTreeSet::new();
    for n in 1..=MAX_POINTS {
        match nth.run(n, op)? {
            (Ok(v), false) => {
                println!("{what}: {} injection points, errnos {errnos:?}", n - 1);
                return Ok((n - 1, v));
            }
            (Err(e), false) => return Err(fail(format!("{what}: failed with {e} and nothing injected"))),
            (Ok(v), true) => undo(&v)?,
            (Err(e), true) => {
                errnos.insert(e.0);
                unchanged()?;
            }
        }
    }
    Err(fail(format!("{what}: still injecting after {MAX_POINTS} points")))
}

/// The real-IOMMU paths with every allocation failed in turn (the IOMMU
/// driver's page-table and domain allocations included): the first
/// attach (`SET_IOMMU` with an `edu`'s group), MAP_DMA (pin, map into the
/// domain), UNMAP_DMA (unmap, flush, unpin), and the replay when the group
/// joins a container whose mappings were made with only an mdev group. A
/// failed step leaves no pin behind (`VmLck`) and the container as it was.
pub fn iommu_fault_injection(ctx: &Ctx) -> CaseResult {
    let Some(dev) = crate::pci::find(crate::pci::EDU_ID).into_iter().next() else {
        return Err(Fail::Skip("no edu device behind an IOMMU (needs the VM's VT-d)".into()));
    };
    let _failslab = FailSlab::setup()?;
    let nth = FailNth::open()?;
    let group = Group::open(dev.group).map_err(|e| fail(format!("open group {}: {e}", dev.group)))?;
    let base = vm_locked_kb();

    // The first attach: SET_IOMMU allocates the domain and attaches the group.
    let c = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    group.set_container(&c)?;
    let mut set_iommu = || c.set_iommu(VFIO_TYPE1v2_IOMMU).map(|_| ());
    let mut no_iommu = || -> CaseResult {
        check_eq!(c.check_extension(VFIO_TYPE1v2_IOMMU)?, 1, "the container still offers type1v2");
        check_eq!(c.get_info_raw(16).err(), Some(Errno(libc::EINVAL)), "GET_INFO after a failed SET_IOMMU (no IOMMU set)");
        Ok(())
    };
    let mut reset = |_: &()| -> CaseResult {
        group.unset_container()?;
        group.set_container(&c)?;
        Ok(())
    };
    sweep_any_errno(&nth, "SET_IOMMU (first attach of a vfio-pci group)", &mut set_iommu, &mut no_iommu, &mut reset)?;

    // MAP_DMA and UNMAP_DMA with the domain: 64 pages of 4 KiB.
    let mem = Buffer::new(64 * PAGE as usize);
    const IOVA: u64 = 0x20_0000;
    let size = 64 * PAGE;
    let avail = dma_avail(&c)?;
    let mut map = || c.map_rw(mem.vaddr(), IOVA, size);
    let mut nothing = || -> CaseResult {
        // Before the probe, whose unmap would also remove a zero-sized
        // mapping left behind.
        check_eq!(dma_avail(&c)?, avail, "dma_avail after a failed MAP_DMA (a mapping left behind)");
        check!(!is_mapped(&c, IOVA, size)?, "a failed MAP_DMA left a mapping");
        check_eq!(vm_locked_kb(), base, "VmLck after a failed MAP_DMA");
        Ok(())
    };
    let mut unmap_again = |_: &()| -> CaseResult {
        check_eq!(c.unmap_range(IOVA, size)?, size, "unmap after an absorbed failure");
        Ok(())
    };
    sweep(&nth, "MAP_DMA with an IOMMU domain", &mut map, &mut nothing, &mut unmap_again)?;
    check_eq!(vm_locked_kb(), base + size / 1024, "VmLck with the mapping pinned");
    let mut unmap = || c.unmap_range(IOVA, size);
    let mut still = || -> CaseResult {
        check!(is_mapped(&c, IOVA, size)?, "a failed UNMAP_DMA removed the mapping");
        check_eq!(vm_locked_kb(), base + size / 1024, "VmLck after a failed UNMAP_DMA");
        Ok(())
    };
    let mut remap = |n: &u64| -> CaseResult {
        check_eq!(*n, size, "unmapped size");
        Ok(c.map_rw(mem.vaddr(), IOVA, size)?)
    };
    sweep(&nth, "UNMAP_DMA with an IOMMU domain", &mut unmap, &mut still, &mut remap)?;
    check_eq!(vm_locked_kb(), base, "VmLck after the unmap");
    group.unset_container()?;
    drop(c);

    // The replay: mappings made with only an mdev group are pinned and
    // mapped when the vfio-pci group joins.
    let s = ctx.container_with_mdev("mtty-1")?;
    let m = &s.container;
    m.map_rw(mem.vaddr(), IOVA, size)?;
    m.map_rw(mem.vaddr(), IOVA + 2 * size, 4 * PAGE)?;
    let mut join = || group.set_container(m);
    let mut not_joined = || -> CaseResult {
        check_eq!(vm_locked_kb(), base, "VmLck after a failed replay");
        check_eq!(group.unset_container().err(), Some(Errno(libc::EINVAL)), "the group is in no container after a failed join");
        Ok(())
    };
    let mut leave = |_: &()| -> CaseResult {
        check_eq!(vm_locked_kb(), base + (size + 4 * PAGE) / 1024, "VmLck after the replay");
        group.unset_container()?;
        check_eq!(vm_locked_kb(), base, "VmLck after the group left");
        Ok(())
    };
    sweep_any_errno(&nth, "GROUP_SET_CONTAINER with replay", &mut join, &mut not_joined, &mut leave)?;
    check_eq!(vm_locked_kb(), base + (size + 4 * PAGE) / 1024, "VmLck with the replayed mappings pinned");
    group.unset_container()?;
    check_eq!(m.unmap_range(0, 1 << 40)?, size + 4 * PAGE, "both mappings still there");
    check_eq!(vm_locked_kb(), base, "VmLck at the end");
    Ok(())
}

/// The container's own life with every allocation failed in turn, the
/// steps `type1.fault_injection` leaves out: `SET_IOMMU` (the backend's
/// open and first attach), a second group joining, that group leaving a
/// container with mappings (detach), and the last group leaving, which
/// releases the container with its mappings and a device's former pins.
/// A failed step leaves the container as it was; a step that cannot fail
/// (detach, release) must absorb every failure. Each sweep prints its
/// number of injection points.
pub fn fault_injection_lifecycle(ctx: &Ctx) -> CaseResult {
    let _failslab = FailSlab::setup()?;
    let nth = FailNth::open()?;
    let parent = ctx.mtty_parent();
    let m1 = crate::vfio::Mdev::create(&parent, "mtty-1")?;
    let m2 = crate::vfio::Mdev::create(&parent, "mtty-1")?;
    let g1 = Group::open(m1.group()?)?;
    let g2 = Group::open(m2.group()?)?;
    let c = Container::open()?;
    let mem = Buffer::new(64 * PAGE as usize);
    let base = vm_locked_kb();
    const IOVA: u64 = 0x4000_0000;
    let size = 16 * PAGE;

    // SET_IOMMU: a failure leaves the container without a backend, so a
    // MAP_DMA is refused; an absorbed failure is undone by the group
    // leaving (the last one: the backend is released) and joining again.
    g1.set_container(&c)?;
    let mut set_iommu = || c.set_iommu(VFIO_TYPE1v2_IOMMU);
    let mut no_backend = || -> CaseResult {
        check!(c.map_rw(mem.vaddr(), IOVA, PAGE).is_err(), "MAP_DMA after a failed SET_IOMMU");
        Ok(())
    };
    let mut reset = |_: &i32| -> CaseResult {
        g1.unset_container()?;
        Ok(g1.set_container(&c)?)
    };
    sweep(&nth, "SET_IOMMU (open, first attach)", &mut set_iommu, &mut no_backend, &mut reset)?;
    c.map_rw(mem.vaddr(), IOVA, size)?;

    // A second group joins a container with a mapping: a failure leaves
    // it outside (its UNSET_CONTAINER is refused with EINVAL).
    let mut join = || g2.set_container(&c);
    let mut outside = || -> CaseResult {
        check_eq!(g2.unset_container().err(), Some(Errno(libc::EINVAL)), "group 2 after a failed join");
        Ok(())
    };
    let mut leave = |_: &()| -> CaseResult { Ok(g2.unset_container()?) };
    sweep(&nth, "GROUP_SET_CONTAINER (second group)", &mut join, &mut outside, &mut leave)?;

    // It leaves again: detach cannot fail, whatever allocation fails in it.
    let mut detach = || g2.unset_container();
    let mut rejoin = |_: &()| -> CaseResult {
        check!(is_mapped(&c, IOVA, size)?, "the mapping after group 2 left");
        Ok(g2.set_container(&c)?)
    };
    sweep(&nth, "GROUP_UNSET_CONTAINER (detach)", &mut detach, &mut || Ok(()), &mut rejoin)?;
    check!(is_mapped(&c, IOVA, size)?, "the mapping after the detach");

    // With the Rust mtty, group 1's device pins two ring pages; closing the
    // device stops the engine and gives them back before the release.
    if ctx.backend.rust_mtty {
        let d = g1.device(&m1.uuid)?;
        let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
        d.write16(cfg + 0x04, 0x0007)?;
        let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
        d.write32(bar + CTRL, CTRL_RESET)?;
        for (ring, page) in [(TX, 0u64), (RX, 1)] {
            d.write32(bar + ring + RING_BASE, (IOVA + page * PAGE) as u32)?;
            d.write32(bar + ring + RING_SIZE, 16)?;
        }
        d.write32(bar + CTRL, CTRL_ENABLE)?;
        check_eq!(vm_locked_kb(), base + 8, "two ring pages pinned");
    }
    check_eq!(vm_locked_kb(), base, "the device's close gave its pins back");

    // The last group leaves: the backend's release frees the mappings.
    let mut release = || g1.unset_container();
    let mut rebuild = |_: &()| -> CaseResult {
        check_eq!(vm_locked_kb(), base, "locked memory after a release");
        g1.set_container(&c)?;
        c.set_iommu(VFIO_TYPE1v2_IOMMU)?;
        Ok(c.map_rw(mem.vaddr(), IOVA, size)?)
    };
    sweep(&nth, "last GROUP_UNSET_CONTAINER (release with mappings)", &mut release, &mut || Ok(()), &mut rebuild)?;
    check_eq!(vm_locked_kb(), base, "locked memory at the end");
    Ok(())
}
