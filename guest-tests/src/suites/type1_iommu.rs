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
use crate::pci::{self, Edu, PciDev, EDU_DMA_LIMIT};
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, Container, Group};
use crate::{check, check_eq};
use std::time::Duration;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// The `n`th edu device, or a skip.
fn edu(n: usize) -> Result<PciDev, Fail> {
    pci::find(pci::EDU_ID)
        .into_iter()
        .nth(n)
        .ok_or_else(|| Fail::Skip(format!("no edu device #{n} behind an IOMMU (needs the VM's VT-d)")))
}

/// A type1v2 container with one edu's group and the device open.
struct EduSetup {
    edu: Edu,
    _group: Group,
    container: Container,
}

fn edu_setup(n: usize) -> Result<EduSetup, Fail> {
    let dev = edu(n)?;
    let container = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    let group = pci::open_group(&dev, &container)?;
    container
        .set_iommu(VFIO_TYPE1V2_IOMMU)
        .map_err(|e| fail(format!("SET_IOMMU(TYPE1v2) with {}: {e}", dev.bdf)))?;
    let edu = Edu::open(&group, &dev.bdf)?;
    Ok(EduSetup { edu, _group: group, container })
}

/// An anonymous mapping used as DMA memory: `[addr, addr + len)` inside
/// `[map, map + map_len)`, unmapped on drop.
struct Mem {
    map: *mut u8,
    map_len: usize,
    addr: *mut u8,
    len: usize,
}

impl Mem {
    /// `len` bytes of 4 KiB pages, zeroed and populated.
    fn anon(len: u64) -> Result<Mem, Fail> {
        backed(Backing::Small, len)
    }

    fn vaddr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: the mapping `backed` created.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn bytes(buf: &Mem, off: u64, len: u64) -> &[u8] {
    assert!(off + len <= buf.len as u64);
    // SAFETY: in bounds of the live mapping (checked above).
    unsafe { std::slice::from_raw_parts(buf.addr.add(off as usize), len as usize) }
}

fn fill(buf: &Mem, off: u64, data: &[u8]) {
    assert!(off + data.len() as u64 <= buf.len as u64);
    // SAFETY: in bounds of the live mapping (checked above).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.addr.add(off as usize), data.len()) };
}

/// Round trip through the device: RAM at `src_iova` -> edu buffer -> RAM at
/// `dst_iova`, `len` bytes, checking that `dst` then holds what `src` held.
fn round_trip(e: &Edu, buf: &Mem, base_iova: u64, src_off: u64, dst_off: u64, len: u64, seed: u8) -> CaseResult {
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
    let before = pci::dmar_faults_at(target);
    s.edu.dma_to_ram(0, target, 256)?;
    check!(bytes(&buf, PAGE, 256).iter().all(|&b| b == 0x5a), "the buffer changed after its IOVA was unmapped");
    check!(
        pci::wait_dmar_fault(target, before, Duration::from_secs(5)),
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
    let head = c.get_info_raw(argsz::<Type1Info>())?;
    let want = u32::from_ne_bytes(head[0..4].try_into().unwrap());
    let pgsizes = u64::from_ne_bytes(head[8..16].try_into().unwrap());
    check!(pgsizes & PAGE != 0 && pgsizes & (PAGE - 1) == 0, "iova_pgsizes {pgsizes:#x} must start at 4 KiB");
    check!(pgsizes != !(PAGE - 1), "iova_pgsizes {pgsizes:#x} is the emulated-only PAGE_MASK, not the domain's");
    let full = c.get_info_raw(want)?;
    let mut off = u32::from_ne_bytes(full[16..20].try_into().unwrap()) as usize;
    let mut ranges = None;
    while off != 0 && off + 8 <= full.len() {
        let id = u16::from_ne_bytes(full[off..off + 2].try_into().unwrap());
        if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = u32::from_ne_bytes(full[off + 8..off + 12].try_into().unwrap()) as usize;
            let mut v = Vec::new();
            for i in 0..n {
                let at = off + 16 + i * 16;
                let start = u64::from_ne_bytes(full[at..at + 8].try_into().unwrap());
                let end = u64::from_ne_bytes(full[at + 8..at + 16].try_into().unwrap());
                v.push((start, end));
            }
            ranges = Some(v);
        }
        off = u32::from_ne_bytes(full[off + 4..off + 8].try_into().unwrap()) as usize;
    }
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
enum Backing {
    Small,
    Thp,
    Hugetlb,
}

/// `size` bytes of anonymous memory, populated, 2 MiB aligned.
fn backed(kind: Backing, size: u64) -> Result<Mem, Fail> {
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

fn ensure_hugepages(n: u64) {
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
    c.map_rw(buf.vaddr(), iova, size)?;
    check_eq!(vm_locked_kb(), base + size / 1024, "VmLck after mapping {size:#x} bytes ({kind:?})");
    // DMA at the start, across a 2 MiB boundary, and at the very end.
    round_trip(&s.edu, &buf, iova, 0, 3 * PAGE, 512, 7)?;
    round_trip(&s.edu, &buf, iova, 2 * MIB - 200, 34 * MIB - 100, 400, 8)?;
    round_trip(&s.edu, &buf, iova, size - 2 * PAGE, size - 512, 512, 9)?;
    check_eq!(c.unmap_range(iova, size)?, size, "unmapped size");
    check_eq!(vm_locked_kb(), base, "VmLck back to the baseline after the unmap ({kind:?})");
    let before = pci::dmar_faults_at(iova + size - PAGE);
    fill(&buf, size - PAGE, &[0xa5; 64]);
    s.edu.dma_to_ram(0, iova + size - PAGE, 64)?;
    check!(bytes(&buf, size - PAGE, 64).iter().all(|&b| b == 0xa5), "buffer changed after unmap ({kind:?})");
    check!(pci::wait_dmar_fault(iova + size - PAGE, before, Duration::from_secs(5)), "no IOMMU fault after unmap ({kind:?})");
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
        let before = pci::dmar_faults_at(target);
        e.dma_to_ram(0, target, 128)?;
        check!(bytes(&buf, 3 * PAGE, 128).iter().all(|&b| b == 0x3c), "{name} device wrote after the unmap");
        check!(pci::wait_dmar_fault(target, before, Duration::from_secs(5)), "no IOMMU fault for the {name} device");
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
