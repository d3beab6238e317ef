//! Type1 with a real (emulated VT-d) IOMMU: `vfio-pci` groups whose devices
//! DMA through IOMMU page tables the backend fills at `MAP_DMA` time.
//!
//! The devices are QEMU `edu`s (see `crate::pci`): a test maps a buffer,
//! programs the device to copy into and out of it, and checks the bytes;
//! after the unmap the same transfer must fault in the IOMMU (a `DMAR`
//! fault line in the kernel log) and leave the buffer untouched. Every
//! case gives the same results on the C and the Rust type1. Without VT-d
//! (no `edu` in an IOMMU group) the cases skip.

use super::{fail, CaseResult, Ctx, Fail};
use super::type1::dirty;
use crate::pci::{self, Edu, PciDev, EDU_DMA_LIMIT};
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, Container, Group};
use crate::{check, check_eq};
use std::time::Duration;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// The `n`th edu device, or a skip.
pub(crate) fn edu(n: usize) -> Result<PciDev, Fail> {
    pci::find(pci::EDU_ID)
        .into_iter()
        .nth(n)
        .ok_or_else(|| Fail::Skip(format!("no edu device #{n} behind an IOMMU (needs the VM's VT-d)")))
}

/// A type1v2 container with one edu's group and the device open.
pub(crate) struct EduSetup {
    pub(crate) edu: Edu,
    _group: Group,
    pub(crate) container: Container,
}

pub(crate) fn edu_setup(n: usize) -> Result<EduSetup, Fail> {
    let dev = edu(n)?;
    let container = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    let group = pci::open_group(&dev, &container)?;
    container
        .set_iommu(VFIO_TYPE1v2_IOMMU)
        .map_err(|e| fail(format!("SET_IOMMU(TYPE1v2) with {}: {e}", dev.bdf)))?;
    let edu = Edu::open(&group, &dev.bdf)?;
    Ok(EduSetup { edu, _group: group, container })
}

/// An anonymous mapping used as DMA memory: `[addr, addr + len)` inside
/// `[map, map + map_len)`, unmapped on drop.
pub(crate) struct Mem {
    map: *mut u8,
    map_len: usize,
    addr: *mut u8,
    len: usize,
}

impl Mem {
    /// `len` bytes of 4 KiB pages, zeroed and populated.
    pub(crate) fn anon(len: u64) -> Result<Mem, Fail> {
        backed(Backing::Small, len)
    }

    pub(crate) fn vaddr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: the mapping `backed` created.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

pub(crate) fn bytes(buf: &Mem, off: u64, len: u64) -> &[u8] {
    assert!(off + len <= buf.len as u64);
    // SAFETY: in bounds of the live mapping (checked above).
    unsafe { std::slice::from_raw_parts(buf.addr.add(off as usize), len as usize) }
}

pub(crate) fn fill(buf: &Mem, off: u64, data: &[u8]) {
    assert!(off + data.len() as u64 <= buf.len as u64);
    // SAFETY: in bounds of the live mapping (checked above).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.addr.add(off as usize), data.len()) };
}

/// Round trip through the device: RAM at `src_iova` -> edu buffer -> RAM at
/// `dst_iova`, `len` bytes, checking that `dst` then holds what `src` held.
pub(crate) fn round_trip(e: &Edu, buf: &Mem, base_iova: u64, src_off: u64, dst_off: u64, len: u64, seed: u8) -> CaseResult {
    let data = pattern(seed, len as usize);
    fill(buf, src_off, &data);
    fill(buf, dst_off, &vec![0u8; len as usize]);
    e.dma_from_ram(base_iova + src_off, 0, len)?;
    e.dma_to_ram(0, base_iova + dst_off, len)?;
    check!(bytes(buf, dst_off, len) == &data[..], "bytes at iova {:#x} after the device copied them", base_iova + dst_off);
    Ok(())
}

/// Maps a buffer, has the edu copy into and out of it, unmaps, and checks
/// that the same transfer then faults in the IOMMU and leaves the buffer
/// as it was.
pub fn edu_dma_and_fault_after_unmap(_ctx: &Ctx) -> CaseResult {
    let s = edu_setup(0)?;
    let c = &s.container;
    let buf = Mem::anon(4 * PAGE)?;
    let iova = 0x10_0000;
    c.map_rw(buf.vaddr(), iova, 4 * PAGE)?;
    // Within a page, across a page boundary, and between pages.
    round_trip(&s.edu, &buf, iova, 0, PAGE, 256, 1)?;
    round_trip(&s.edu, &buf, iova, PAGE - 100, 3 * PAGE - 50, 1000, 2)?;
    round_trip(&s.edu, &buf, iova, 2 * PAGE, 3 * PAGE, 4000, 3)?;
    check_eq!(c.unmap_range(iova, 4 * PAGE)?, 4 * PAGE, "unmapped size");

    // The same write to RAM must now fault and change nothing.
    fill(&buf, PAGE, &[0x5a; 256]);
    let target = iova + PAGE;
    let faults = pci::FaultWatch::start(target);
    s.edu.dma_to_ram(0, target, 256)?;
    check!(bytes(&buf, PAGE, 256).iter().all(|&b| b == 0x5a), "the buffer changed after its IOVA was unmapped");
    check!(
        faults.wait(Duration::from_secs(5)),
        "no IOMMU fault reported at {target:#x} in the kernel log after a DMA to an unmapped IOVA"
    );
    Ok(())
}

/// GET_INFO with a VT-d domain: the page sizes are the domain's (4 KiB and
/// the VT-d superpages), and the IOVA ranges are the aperture minus the
/// reserved regions (the interrupt range 0xfee00000-0xfeefffff).
pub fn iommu_get_info(_ctx: &Ctx) -> CaseResult {
    let s = edu_setup(0)?;
    let c = &s.container;
    let head = c.get_info_raw(argsz::<vfio_iommu_type1_info>())?;
    let pgsizes = u64::from_ne_bytes(head[8..16].try_into().unwrap());
    check!(pgsizes & PAGE != 0 && pgsizes & (PAGE - 1) == 0, "iova_pgsizes {pgsizes:#x} must start at 4 KiB");
    check!(pgsizes != !(PAGE - 1), "iova_pgsizes {pgsizes:#x} is the emulated-only PAGE_MASK, not the domain's");
    let ranges = iova_ranges(c)?;
    let Some(ranges) = ranges else { return Err(fail("no IOVA range capability with an IOMMU domain")) };
    check!(!ranges.is_empty(), "no IOVA ranges");
    check_eq!(ranges[0].0, 0, "first IOVA range start");
    let msi = (0xfee0_0000u64, 0xfeef_ffffu64);
    check!(
        ranges.iter().all(|&(a, b)| b < msi.0 || a > msi.1),
        "the MSI range {msi:x?} must be a hole in the IOVA ranges {ranges:x?}"
    );
    check!(
        ranges.iter().any(|&(_, b)| b + 1 == msi.0) && ranges.iter().any(|&(a, _)| a == msi.1 + 1),
        "the IOVA ranges {ranges:x?} must end at and resume after the MSI range"
    );
    // A map inside the hole is refused.
    let buf = Mem::anon(PAGE)?;
    check_eq!(c.map_rw(buf.vaddr(), msi.0, PAGE).err(), Some(crate::vfio::Errno(libc::EINVAL)), "map in the MSI hole");
    Ok(())
}

/// The IOVA ranges GET_INFO reports, `None` without the capability.
fn iova_ranges(c: &Container) -> Result<Option<Vec<(u64, u64)>>, Fail> {
    let head = c.get_info_raw(argsz::<vfio_iommu_type1_info>())?;
    let want = u32::from_ne_bytes(head[0..4].try_into().unwrap());
    let full = c.get_info_raw(want)?;
    let mut off = u32::from_ne_bytes(full[16..20].try_into().unwrap()) as usize;
    let mut ranges = None;
    let mut hops = 0;
    while off != 0 && off + 8 <= full.len() && hops < 16 {
        let id = u16::from_ne_bytes(full[off..off + 2].try_into().unwrap());
        if u32::from(id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = u32::from_ne_bytes(full[off + 8..off + 12].try_into().unwrap()) as usize;
            let mut v = Vec::new();
            for i in 0..n {
                let at = off + 16 + i * 16;
                if at + 16 > full.len() {
                    return Err(fail(format!("IOVA range {i} of {n} lies past the {}-byte reply", full.len())));
                }
                let start = u64::from_ne_bytes(full[at..at + 8].try_into().unwrap());
                let end = u64::from_ne_bytes(full[at + 8..at + 16].try_into().unwrap());
                v.push((start, end));
            }
            ranges = Some(v);
        }
        off = u32::from_ne_bytes(full[off + 4..off + 8].try_into().unwrap()) as usize;
        hops += 1;
    }
    Ok(ranges)
}

/// CHECK_EXTENSION with a VT-d domain: UPDATE_VADDR is offered (no mdev),
/// and DMA_CC_IOMMU says whether the domain enforces cache coherency.
pub fn iommu_check_extension(_ctx: &Ctx) -> CaseResult {
    let s = edu_setup(0)?;
    let c = &s.container;
    check_eq!(c.check_extension(VFIO_UPDATE_VADDR)?, 1, "UPDATE_VADDR without mdev");
    let cc = c.check_extension(VFIO_DMA_CC_IOMMU)?;
    println!("DMA_CC_IOMMU = {cc}");
    check!(cc == 0 || cc == 1, "DMA_CC_IOMMU answered {cc}");
    Ok(())
}

/// How the memory of a large mapping is backed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backing {
    Small,
    Thp,
    Hugetlb,
}

/// `size` bytes of anonymous memory, populated, 2 MiB aligned.
pub(crate) fn backed(kind: Backing, size: u64) -> Result<Mem, Fail> {
    let align = 2 * MIB;
    let (flags, map_len) = match kind {
        // hugetlbfs mappings are aligned to the huge page size already.
        Backing::Hugetlb => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB, size),
        _ => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, size + align),
    };
    // SAFETY: an anonymous mapping with no address hint.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), map_len as usize, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        return Err(match kind {
            Backing::Hugetlb => Fail::Skip(format!("no hugetlbfs pages ({e})")),
            _ => fail(format!("mmap {map_len}: {e}")),
        });
    }
    let aligned = ((p as u64) + align - 1) & !(align - 1);
    let mem = Mem { map: p.cast(), map_len: map_len as usize, addr: aligned as *mut u8, len: size as usize };
    let advice = match kind {
        Backing::Thp => Some(libc::MADV_HUGEPAGE),
        Backing::Small => Some(libc::MADV_NOHUGEPAGE),
        Backing::Hugetlb => None,
    };
    if let Some(a) = advice {
        // SAFETY: advice on part of our own mapping.
        unsafe { libc::madvise(mem.addr.cast(), mem.len, a) };
    }
    // SAFETY: [addr, addr + len) is inside the mapping.
    unsafe { std::ptr::write_bytes(mem.addr, 0, mem.len) };
    Ok(mem)
}

pub(crate) fn ensure_hugepages(n: u64) {
    let path = "/proc/sys/vm/nr_hugepages";
    let cur: u64 = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if cur < n {
        let _ = std::fs::write(path, n.to_string());
    }
}

fn large_range(kind: Backing) -> CaseResult {
    let s = edu_setup(0)?;
    let c = &s.container;
    let size = 64 * MIB;
    if let Backing::Hugetlb = kind {
        ensure_hugepages(size / (2 * MIB) + 4);
    }
    let buf = backed(kind, size)?;
    let base = vm_locked_kb();
    let iova = 0x400_0000; // 64 MiB: 2 MiB aligned and below the edu's 28-bit limit.
    check!(iova + size <= EDU_DMA_LIMIT, "iova range beyond the edu DMA mask");
    let t = std::time::Instant::now();
    c.map_rw(buf.vaddr(), iova, size)?;
    let map_time = t.elapsed();
    check_eq!(vm_locked_kb(), base + size / 1024, "VmLck after mapping {size:#x} bytes ({kind:?})");
    // DMA at the start, across a 2 MiB boundary, and at the very end.
    round_trip(&s.edu, &buf, iova, 0, 3 * PAGE, 512, 7)?;
    round_trip(&s.edu, &buf, iova, 2 * MIB - 200, 34 * MIB - 100, 400, 8)?;
    round_trip(&s.edu, &buf, iova, size - 2 * PAGE, size - 512, 512, 9)?;
    let t = std::time::Instant::now();
    check_eq!(c.unmap_range(iova, size)?, size, "unmapped size");
    let unmap_time = t.elapsed();
    // For comparing the backends by eye (TCG times, one sample).
    println!("{kind:?}: MAP_DMA of {} MiB took {map_time:?}, UNMAP_DMA {unmap_time:?}", size / MIB);
    check_eq!(vm_locked_kb(), base, "VmLck back to the baseline after the unmap ({kind:?})");
    let faults = pci::FaultWatch::start(iova + size - PAGE);
    fill(&buf, size - PAGE, &[0xa5; 64]);
    s.edu.dma_to_ram(0, iova + size - PAGE, 64)?;
    check!(bytes(&buf, size - PAGE, 64).iter().all(|&b| b == 0xa5), "buffer changed after unmap ({kind:?})");
    check!(faults.wait(Duration::from_secs(5)), "no IOMMU fault after unmap ({kind:?})");
    Ok(())
}

/// 64 MiB of 4 KiB pages (THP off for the range).
pub fn large_small_pages(_ctx: &Ctx) -> CaseResult {
    large_range(Backing::Small)
}

/// 64 MiB of transparent huge pages.
pub fn large_thp(_ctx: &Ctx) -> CaseResult {
    large_range(Backing::Thp)
}

/// 64 MiB of hugetlbfs pages (2 MiB).
pub fn large_hugetlb(_ctx: &Ctx) -> CaseResult {
    large_range(Backing::Hugetlb)
}

/// A second group joins a container that already has mappings: they are
/// replayed into its domain (or it shares the first group's), so its device
/// can DMA to them at once.
pub fn second_group_sees_live_mappings(_ctx: &Ctx) -> CaseResult {
    let s = edu_setup(0)?;
    let dev1 = edu(1)?;
    let c = &s.container;
    let buf = Mem::anon(8 * PAGE)?;
    let iova = 0x20_0000;
    c.map_rw(buf.vaddr(), iova, 8 * PAGE)?;
    round_trip(&s.edu, &buf, iova, 0, PAGE, 128, 11)?;
    let g1 = pci::open_group(&dev1, c)?;
    let e1 = Edu::open(&g1, &dev1.bdf)?;
    round_trip(&e1, &buf, iova, 2 * PAGE, 7 * PAGE, 4000, 12)?;
    // The first device keeps working too.
    round_trip(&s.edu, &buf, iova, 5 * PAGE, 6 * PAGE + 8, 1024, 13)?;
    // An unmap reaches both.
    c.unmap_range(iova, 8 * PAGE)?;
    let target = iova + 3 * PAGE;
    for (e, name) in [(&s.edu, "first"), (&e1, "second")] {
        fill(&buf, 3 * PAGE, &[0x3c; 128]);
        let faults = pci::FaultWatch::start(target);
        e.dma_to_ram(0, target, 128)?;
        check!(bytes(&buf, 3 * PAGE, 128).iter().all(|&b| b == 0x3c), "{name} device wrote after the unmap");
        check!(faults.wait(Duration::from_secs(5)), "no IOMMU fault for the {name} device");
    }
    drop(e1);
    drop(g1);
    Ok(())
}

/// Mappings made while only an mdev group is attached are pinned and
/// mapped when a vfio-pci group joins; both paths work in one container,
/// and detaching the PCI group leaves the mdev container consistent.
pub fn mixed_mdev_and_pci(ctx: &Ctx) -> CaseResult {
    let dev = edu(0)?;
    let m = ctx.container_with_mdev("mtty-1")?;
    let c = &m.container;
    let buf = Mem::anon(4 * PAGE)?;
    let iova = 0x30_0000;
    let base = vm_locked_kb();
    c.map_rw(buf.vaddr(), iova, 4 * PAGE)?;
    check_eq!(vm_locked_kb(), base, "VmLck after a map with only an mdev group (nothing pinned)");
    let g = pci::open_group(&dev, c)?;
    check_eq!(vm_locked_kb(), base + 16, "VmLck once a vfio-pci group joined (the mapping is pinned)");
    let e = Edu::open(&g, &dev.bdf)?;
    round_trip(&e, &buf, iova, 0, 2 * PAGE, 300, 21)?;
    check_eq!(c.check_extension(VFIO_UPDATE_VADDR)?, 0, "UPDATE_VADDR with an mdev present");
    drop(e);
    drop(g);
    check_eq!(vm_locked_kb(), base, "VmLck after the vfio-pci group left");
    // The IOVA ranges widen back to the whole space (the reference keeps a
    // one-range list rather than none once a domain has existed).
    check_eq!(iova_ranges(c)?, Some(vec![(0, u64::MAX)]), "IOVA ranges after the last domain went");
    check_eq!(c.unmap_range(iova, 4 * PAGE)?, 4 * PAGE, "unmap in the mdev-only container");
    Ok(())
}

/// `disable_hugepages=1`: the mapping is made of 4 KiB IOMMU pages; DMA and
/// accounting are unchanged.
pub fn disable_hugepages(ctx: &Ctx) -> CaseResult {
    let param = format!("/sys/module/{}/parameters/disable_hugepages", ctx.backend.type1_module());
    std::fs::write(&param, "1").map_err(|e| fail(format!("{param}: {e}")))?;
    let r = large_range(Backing::Thp);
    let _ = std::fs::write(&param, "0");
    r
}

/// Dirty tracking with a vfio-pci group: its device writes through the
/// IOMMU without telling anyone, so every page of every mapping counts as
/// dirty, for mappings made before and during tracking alike.
pub fn dirty_tracking_whole_mapping(_ctx: &Ctx) -> CaseResult {
    let s = edu_setup(0)?;
    let c = &s.container;
    let buf = Mem::anon(16 * PAGE)?;
    let iova = 0x50_0000;
    c.map_rw(buf.vaddr(), iova, 8 * PAGE)?;
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START)?;
    c.map_rw(buf.vaddr() + 8 * PAGE, iova + 8 * PAGE, 8 * PAGE)?;
    let mut bits = [0u8; 16];
    let mut g = DirtyGet {
        argsz: std::mem::size_of::<DirtyGet>() as u32,
        flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        iova,
        size: 16 * PAGE,
        pgsize: PAGE,
        bitmap_size: 8,
        data: bits.as_mut_ptr() as u64,
    };
    crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut g)?;
    check_eq!(&bits[..2], &[0xffu8, 0xff][..], "dirty bits of 16 pages a vfio-pci device could write");
    check_eq!(&bits[2..8], &[0u8; 6][..], "bits beyond the range");
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?;
    check_eq!(c.unmap_range(iova, 16 * PAGE)?, 16 * PAGE, "unmapped size");
    Ok(())
}

/// A process that exits with its container, group, device and mappings
/// (pinned for the IOMMU) still open leaves nothing behind: the group can
/// be used again at once, its device DMAs through the new container only,
/// and the end-of-run kmemleak scan stays clean.
pub fn process_exit_with_pinned_mappings(_ctx: &Ctx) -> CaseResult {
    let dev = edu(0)?;
    for round in 0..2 {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(fail("fork failed"));
        }
        if pid == 0 {
            let ok = (|| -> Result<(), Fail> {
                let s = edu_setup(0)?;
                let buf = Mem::anon(8 * MIB)?;
                s.container.map_rw(buf.vaddr(), 0x100_0000, 4 * MIB)?;
                s.container.map_rw(buf.vaddr() + 4 * MIB, 0x140_0000, 4 * MIB)?;
                round_trip(&s.edu, &buf, 0x100_0000, 0, 5 * MIB, 256, 31)?;
                std::mem::forget(buf);
                std::mem::forget(s);
                Ok(())
            })();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok.is_ok() { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child created above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        check!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child of round {round} failed: status {status:#x}");
    }
    // The group is free again, and the child's mappings are gone.
    let s = edu_setup(0)?;
    check_eq!(s.container.unmap_range(0, 1 << 39)?, 0, "mappings visible in a new container");
    let buf = Mem::anon(4 * PAGE)?;
    s.container.map_rw(buf.vaddr(), 0x100_0000, 4 * PAGE)?;
    round_trip(&s.edu, &buf, 0x100_0000, 0, 2 * PAGE, 128, 32)?;
    drop(dev);
    Ok(())
}

/// Attaching a vfio-pci group to a container whose mappings (made while
/// only an mdev group was attached) its IOMMU cannot serve is refused, and
/// the container keeps working for the mdev: a mapping over a reserved
/// region (the interrupt range) is `EINVAL`; one beyond the aperture passes
/// the aperture check (an mdev-only container has no IOVA list to
/// conflict with) and fails when it is replayed into the new domain, where
/// VT-d refuses an address wider than its 39 bits (`EFAULT`).
pub fn attach_refused_over_reserved_or_aperture(ctx: &Ctx) -> CaseResult {
    let dev = edu(0)?;
    let buf = Mem::anon(PAGE)?;
    for (iova, errno, what) in [
        (0xfee0_0000u64, libc::EINVAL, "the MSI range"),
        (1u64 << 48, libc::EFAULT, "beyond the 39-bit aperture"),
    ] {
        let m = ctx.container_with_mdev("mtty-1")?;
        let c = &m.container;
        c.map_rw(buf.vaddr(), iova, PAGE)?;
        let g = crate::vfio::Group::open(dev.group).map_err(|e| fail(format!("open group: {e}")))?;
        check_eq!(
            g.set_container(c).err(),
            Some(crate::vfio::Errno(errno)),
            "GROUP_SET_CONTAINER with a mapping in {what}"
        );
        check_eq!(iova_ranges(c)?, None, "IOVA ranges after the refused attach ({what})");
        check_eq!(c.unmap_range(iova, PAGE)?, PAGE, "unmap after the refused attach ({what})");
        check_eq!(vm_locked_kb(), 0, "VmLck after the refused attach ({what})");
    }
    // With a domain, a map beyond the aperture is refused.
    let s = edu_setup(0)?;
    check_eq!(
        s.container.map_rw(buf.vaddr(), 1 << 48, PAGE).err(),
        Some(crate::vfio::Errno(libc::EINVAL)),
        "map beyond the aperture"
    );
    Ok(())
}

/// The `e1000e` (another device type behind the same IOMMU) joins a
/// container with an edu and live mappings: both groups share one domain.
/// Either group may leave first: the mappings stay while a group remains
/// (the edu keeps DMAing after the e1000e left; after the edu left, a new
/// edu attach sees them at once) and go with the last one.
pub fn two_device_types_share_a_domain(_ctx: &Ctx) -> CaseResult {
    let nic = pci::find(pci::E1000E_ID)
        .into_iter()
        .next()
        .ok_or_else(|| Fail::Skip("no e1000e behind an IOMMU (needs the VM's VT-d)".into()))?;
    let s = edu_setup(0)?;
    let dev0 = edu(0)?;
    let c = &s.container;
    let buf = Mem::anon(8 * PAGE)?;
    let iova = 0x70_0000;
    let base = vm_locked_kb();
    c.map_rw(buf.vaddr(), iova, 8 * PAGE)?;
    let ranges_before = iova_ranges(c)?;
    let gn = pci::open_group(&nic, c)?;
    let nicdev = gn.device(&nic.bdf).map_err(|e| fail(format!("GET_DEVICE_FD {}: {e}", nic.bdf)))?;
    check_eq!(iova_ranges(c)?, ranges_before, "IOVA ranges after the e1000e joined");
    check_eq!(vm_locked_kb(), base + 32, "VmLck: the shared domain pins once");
    round_trip(&s.edu, &buf, iova, 0, 4 * PAGE, 700, 51)?;
    drop(nicdev);
    drop(gn);
    round_trip(&s.edu, &buf, iova, PAGE, 5 * PAGE, 700, 52)?;
    check_eq!(vm_locked_kb(), base + 32, "VmLck after the e1000e left");

    // Now the edu leaves first: the e1000e keeps the container's mappings.
    let gn = pci::open_group(&nic, c)?;
    let EduSetup { edu, _group, container } = s;
    drop(edu);
    drop(_group);
    check_eq!(vm_locked_kb(), base + 32, "VmLck after the edu left (the e1000e keeps the mappings)");
    let g0 = pci::open_group(&dev0, &container)?;
    let e0 = Edu::open(&g0, &dev0.bdf)?;
    round_trip(&e0, &buf, iova, 2 * PAGE, 6 * PAGE, 700, 53)?;
    drop(e0);
    drop(g0);
    drop(gn);
    check_eq!(vm_locked_kb(), base, "VmLck after the last group left");
    check_eq!(container.unmap_range(0, 1 << 39).err(), Some(crate::vfio::Errno(libc::EINVAL)), "unmap with no IOMMU set");
    Ok(())
}

/// `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`: a child that dropped root
/// (keeping its open VFIO files) may pin up to its limit; a map past it
/// fails with `ENOMEM` and leaves nothing pinned; one within it works.
pub fn memlock_limit(_ctx: &Ctx) -> CaseResult {
    edu(0)?;
    // SAFETY: the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork failed"));
    }
    if pid == 0 {
        let code = (|| -> Result<i32, Fail> {
            let s = edu_setup(0)?;
            let c = &s.container;
            let buf = Mem::anon(4 * MIB)?;
            let lim = libc::rlimit { rlim_cur: MIB, rlim_max: MIB };
            // SAFETY: plain system calls; the child then runs as `nobody`
            // without capabilities, with its VFIO files still open.
            unsafe {
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 || libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Ok(10);
                }
            }
            if c.map_rw(buf.vaddr(), 0x100_0000, 2 * MIB).err() != Some(crate::vfio::Errno(libc::ENOMEM)) {
                return Ok(11);
            }
            if vm_locked_kb() != 0 {
                return Ok(12);
            }
            if c.map_rw(buf.vaddr(), 0x100_0000, MIB / 2).is_err() {
                return Ok(13);
            }
            if vm_locked_kb() != 512 {
                return Ok(14);
            }
            // Another 512 KiB reaches the limit exactly; one more page is too much.
            if c.map_rw(buf.vaddr() + MIB / 2, 0x108_0000, MIB / 2).is_err() {
                return Ok(15);
            }
            if c.map_rw(buf.vaddr() + MIB, 0x110_0000, PAGE).err() != Some(crate::vfio::Errno(libc::ENOMEM)) {
                return Ok(16);
            }
            round_trip(&s.edu, &buf, 0x100_0000, 0, MIB / 2 + 100, 300, 61)?;
            if c.unmap_range(0x100_0000, MIB).ok() != Some(MIB) || vm_locked_kb() != 0 {
                return Ok(17);
            }
            Ok(0)
        })()
        .unwrap_or(3);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child created above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    let why = match code {
        0 => return Ok(()),
        3 => "setup or DMA failed",
        10 => "could not drop root",
        11 => "a 2 MiB map past a 1 MiB limit was not ENOMEM",
        12 => "the refused map left pages locked",
        13 => "a 512 KiB map within the limit failed",
        14 => "VmLck is not 512 kB after the 512 KiB map",
        15 => "a map reaching the limit exactly failed",
        16 => "one page past the limit was not ENOMEM",
        17 => "unmap or VmLck after it",
        _ => "child died",
    };
    Err(fail(format!("memlock child: {why} (status {status:#x})")))
}
