//! Large runs on the real-IOMMU path: the Rust type1 remembers every run
//! of 2 MiB or more it maps (kmod-common/iommu_domain.rs, "Finding the runs
//! to unpin") and unmaps and unpins it from there, without walking the
//! page tables. These cases check what that must not change: every pin
//! comes back (`nr_foll_pin_*` in /proc/vmstat, `VmLck`), the device
//! reaches every byte while mapped and none after the unmap, whether runs
//! start on an IOMMU superpage boundary or not, mixed with 4 KiB pages in
//! one mapping, and after device memory was mapped at the same IOVA
//! (type1_pfnmap.rs, `ram_where_bar_was`). Small runs are gathered and
//! mapped together (`RunList`, one map-time IOTLB sync for many runs):
//! `scattered_pages_gathered` checks the device reaches them across the
//! list's flushes, and that a map failing while runs are gathered gives
//! them back. The C type1 gives the same results.

use super::type1_iommu::{edu_setup, ensure_hugepages, pattern};
use super::{fail, pins_held, CaseResult, Ctx, Fail};
use crate::pci::{self, Edu, EDU_DMA_LIMIT};
use crate::vfio::{vm_locked_kb, Container};
use crate::{check, check_eq};
use std::time::Duration;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// How a stretch of a [`Region`] gets its pages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Pages {
    /// Transparent huge pages (`MADV_HUGEPAGE`).
    Thp,
    /// 4 KiB pages (`MADV_NOHUGEPAGE`), faulted in even pages first, then
    /// odd ones, so that no page is physically next to its neighbour and
    /// each is a run of its own.
    Scattered,
}

/// Anonymous memory, 2 MiB aligned (or hugetlbfs pages), populated;
/// unmapped on drop.
pub(crate) struct Region {
    map: *mut libc::c_void,
    map_len: usize,
    addr: u64,
    len: u64,
}

impl Region {
    /// `layout` stretches of anonymous memory, in order.
    pub(crate) fn anon(layout: &[(Pages, u64)]) -> Result<Region, Fail> {
        let len: u64 = layout.iter().map(|&(_, n)| n).sum();
        let align = 2 * MIB;
        let map_len = (len + align) as usize;
        // SAFETY: an anonymous mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(fail(format!("mmap {map_len}: {}", std::io::Error::last_os_error())));
        }
        let addr = ((p as u64) + align - 1) & !(align - 1);
        let r = Region { map: p, map_len, addr, len };
        let mut at = addr;
        for &(kind, n) in layout {
            let advice = match kind {
                Pages::Thp => libc::MADV_HUGEPAGE,
                Pages::Scattered => libc::MADV_NOHUGEPAGE,
            };
            // SAFETY: advice on part of our own mapping.
            unsafe { libc::madvise(at as *mut libc::c_void, n as usize, advice) };
            at += n;
        }
        let mut at = addr;
        for &(kind, n) in layout {
            match kind {
                Pages::Thp => r.touch(at, n, 1),
                Pages::Scattered => {
                    r.touch(at, n, 2);
                    r.touch(at + PAGE, n - PAGE, 2);
                }
            }
            at += n;
        }
        Ok(r)
    }

    /// `len` bytes of hugetlbfs 2 MiB pages, or a skip.
    fn hugetlb(len: u64) -> Result<Region, Fail> {
        ensure_hugepages(len / (2 * MIB) + 4);
        // SAFETY: an anonymous mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Fail::Skip(format!("no hugetlbfs pages ({})", std::io::Error::last_os_error())));
        }
        let r = Region { map: p, map_len: len as usize, addr: p as u64, len };
        r.touch(r.addr, len, 1);
        Ok(r)
    }

    /// KiB of the region that transparent huge pages back (`AnonHugePages`
    /// of its VMAs in /proc/self/smaps).
    fn thp_kb(&self) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut inside = false;
        let mut kb = 0;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((start, _)) = range.filter(|(s, e)| s.len() > 4 && e.chars().all(|c| c.is_ascii_hexdigit())) {
                let start = u64::from_str_radix(start, 16).unwrap_or(0);
                inside = start >= self.addr && start < self.addr + self.len;
            } else if let Some(v) = line.strip_prefix("AnonHugePages:") {
                if inside {
                    kb += v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        kb
    }

    /// Fails unless THP backs at least `want` bytes of the region: without
    /// huge pages the cases would test only the walk.
    fn expect_thp(&self, want: u64) -> CaseResult {
        let kb = self.thp_kb();
        check!(kb * 1024 >= want, "only {kb} KiB of the region came as transparent huge pages, wanted {}", want / 1024);
        Ok(())
    }

    /// Writes a byte into every `step`th page of `[at, at + len)`.
    fn touch(&self, at: u64, len: u64, step: u64) {
        let mut p = at;
        while p < at + len {
            // SAFETY: inside our own read-write mapping.
            unsafe { std::ptr::write_volatile(p as *mut u8, 1) };
            p += step * PAGE;
        }
    }

    pub(crate) fn write(&self, off: u64, data: &[u8]) {
        assert!(off + data.len() as u64 <= self.len);
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (self.addr + off) as *mut u8, data.len()) };
    }

    pub(crate) fn read(&self, off: u64, len: u64) -> Vec<u8> {
        assert!(off + len <= self.len);
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe { std::slice::from_raw_parts((self.addr + off) as *const u8, len as usize) }.to_vec()
    }
}

impl Region {
    /// `len` bytes of the region from `off` on, as a region that does not
    /// own (or unmap) its memory: it must not outlive `self`.
    fn view(&self, off: u64, len: u64) -> Region {
        assert!(off + len <= self.len);
        Region { map: std::ptr::null_mut(), map_len: 0, addr: self.addr + off, len }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if !self.map.is_null() {
            // SAFETY: the mapping `anon` or `hugetlb` created.
            unsafe { libc::munmap(self.map, self.map_len) };
        }
    }
}

/// The edu copies `len` bytes from `src_off` to `dst_off` of `r`, mapped
/// at `iova`, through its buffer; the destination must then hold them.
fn copy_through(e: &Edu, r: &Region, iova: u64, src_off: u64, dst_off: u64, len: u64, seed: u8) -> CaseResult {
    let data = pattern(seed, len as usize);
    r.write(src_off, &data);
    r.write(dst_off, &vec![0u8; len as usize]);
    e.dma_from_ram(iova + src_off, 0, len)?;
    e.dma_to_ram(0, iova + dst_off, len)?;
    check!(r.read(dst_off, len) == data, "bytes at iova {:#x} after the device copied them", iova + dst_off);
    Ok(())
}

/// A DMA write into `r` at `off` (mapped at `iova` before the unmap) must
/// fault and leave the memory as it was.
fn expect_fault(e: &Edu, r: &Region, iova: u64, off: u64) -> CaseResult {
    r.write(off, &[0x5a; 64]);
    let faults = pci::FaultWatch::start(iova + off);
    e.dma_to_ram(0, iova + off, 64)?;
    check!(r.read(off, 64).iter().all(|&b| b == 0x5a), "memory at iova {:#x} changed after the unmap", iova + off);
    check!(faults.wait(Duration::from_secs(5)), "no IOMMU fault at iova {:#x} after the unmap", iova + off);
    Ok(())
}

/// Maps all of `r` at `iova`, copies across each boundary in `seams` (byte
/// offsets), unmaps, and checks pins, `VmLck` and faults at the first page,
/// the last page and each seam.
fn map_copy_unmap(r: &Region, iova: u64, seams: &[u64], what: &str) -> CaseResult {
    let s = edu_setup(0)?;
    map_copy_unmap_in(&s.container, &s.edu, r, iova, seams, what)
}

/// [`map_copy_unmap`] in container `c`, whose group holds `e`.
pub(crate) fn map_copy_unmap_in(c: &Container, e: &Edu, r: &Region, iova: u64, seams: &[u64], what: &str) -> CaseResult {
    check!(iova + r.len <= EDU_DMA_LIMIT, "iova range beyond the edu DMA mask");
    let (pins, locked) = (pins_held()?, vm_locked_kb());
    c.map_rw(r.addr, iova, r.len)?;
    let npage = (r.len / PAGE) as i64;
    check_eq!(pins_held()? - pins, npage, "pins held after mapping {what}");
    check_eq!(vm_locked_kb(), locked + r.len / 1024, "VmLck after mapping {what}");
    copy_through(e, r, iova, 0, PAGE + 100, 300, 1)?;
    for (i, &at) in seams.iter().enumerate() {
        copy_through(e, r, iova, at - 200, at + 3 * PAGE - 150, 400, 2 + i as u8)?;
    }
    copy_through(e, r, iova, r.len - 3 * PAGE, r.len - 512, 512, 9)?;
    check_eq!(c.unmap_range(iova, r.len)?, r.len, "unmapped size of {what}");
    check_eq!(pins_held()?, pins, "pins held after unmapping {what}");
    check_eq!(vm_locked_kb(), locked, "VmLck after unmapping {what}");
    expect_fault(e, r, iova, 0)?;
    for &at in seams {
        expect_fault(e, r, iova, at - PAGE)?;
    }
    expect_fault(e, r, iova, r.len - PAGE)?;
    Ok(())
}

/// 8 MiB of THP, then of hugetlbfs pages, mapped at a 2 MiB-aligned IOVA
/// (the IOMMU may use 2 MiB pages) and at one 4 KiB past it (it cannot),
/// and THP from inside one folio to inside another (the pins of a folio's
/// pages are found together from its head page on, page by page before
/// it): each run of 2 MiB or more goes in one unmap, and every pin comes
/// back.
pub fn huge_pages_return_their_pins(_ctx: &Ctx) -> CaseResult {
    let thp = Region::anon(&[(Pages::Thp, 8 * MIB)])?;
    thp.expect_thp(6 * MIB)?;
    let seams = [2 * MIB, 4 * MIB, 6 * MIB];
    for iova in [0x40_0000, 0x40_1000] {
        map_copy_unmap(&thp, iova, &seams, &format!("8 MiB of THP at {iova:#x}"))?;
    }
    // From the second page of a folio to the second last of another: the
    // mapping starts and ends inside huge pages.
    let part = thp.view(PAGE, 6 * MIB - 2 * PAGE);
    map_copy_unmap(&part, 0x40_1000, &[2 * MIB - PAGE, 4 * MIB - PAGE], "THP from inside one folio to inside another")?;
    drop(part);
    drop(thp);
    let huge = Region::hugetlb(8 * MIB)?;
    for iova in [0x40_0000, 0x40_1000] {
        map_copy_unmap(&huge, iova, &seams, &format!("8 MiB of hugetlbfs pages at {iova:#x}"))?;
    }
    Ok(())
}

/// One mapping of THP, then 2 MiB of scattered 4 KiB pages (runs of one
/// page), then THP again: the unmap takes the large runs whole and walks
/// the small ones in between, stopping where a large run starts.
pub fn mixed_runs_in_one_mapping(_ctx: &Ctx) -> CaseResult {
    let r = Region::anon(&[(Pages::Thp, 2 * MIB), (Pages::Scattered, 2 * MIB), (Pages::Thp, 4 * MIB)])?;
    r.expect_thp(4 * MIB)?;
    map_copy_unmap(&r, 0x80_0000, &[2 * MIB, 4 * MIB, 6 * MIB], "THP, 4 KiB pages and THP in one mapping")
}

/// 3 MiB of scattered 4 KiB pages (768 runs of one page: more than one
/// batch of 512 pages, and more runs than one gathered list holds) mapped
/// and unmapped, with copies across the batch boundary; then a map of 4
/// MiB of them whose last MiB cannot be pinned (`PROT_NONE`): `EFAULT`,
/// with the runs already mapped and those still gathered all given back
/// and the IOVA range free again.
pub fn scattered_pages_gathered(_ctx: &Ctx) -> CaseResult {
    let r = Region::anon(&[(Pages::Scattered, 3 * MIB)])?;
    map_copy_unmap(&r, 0x40_0000, &[MIB, 2 * MIB, 2 * MIB + 5 * PAGE], "3 MiB of scattered 4 KiB pages")?;
    drop(r);
    let r = Region::anon(&[(Pages::Scattered, 4 * MIB)])?;
    // SAFETY: our own mapping's last MiB; nothing reads it afterwards.
    let rc = unsafe { libc::mprotect((r.addr + 3 * MIB) as *mut libc::c_void, MIB as usize, libc::PROT_NONE) };
    check_eq!(rc, 0, "mprotect of the last MiB");
    let s = edu_setup(0)?;
    let (c, iova) = (&s.container, 0x40_0000);
    let (pins, locked) = (pins_held()?, vm_locked_kb());
    check_eq!(c.map_rw(r.addr, iova, 4 * MIB).err(), Some(crate::vfio::Errno(libc::EFAULT)), "map reaching PROT_NONE memory");
    check_eq!(pins_held()?, pins, "pins held after the refused map");
    check_eq!(vm_locked_kb(), locked, "VmLck after the refused map");
    check_eq!(c.unmap_range(iova, 4 * MIB)?, 0, "bytes unmapped where the refused map was");
    let part = r.view(0, 3 * MIB);
    map_copy_unmap_in(c, &s.edu, &part, iova, &[2 * MIB], "the pinnable 3 MiB after the refused map")
}
