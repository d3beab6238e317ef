//! Type1 uAPI conformance: the results and errnos of
//! `drivers/vfio/vfio_iommu_type1.c` (Linux 6.12), which both backends must give.

use super::{fail, CaseResult, Ctx};
use crate::uapi::*;
use crate::vfio::{Buffer, Container, Errno};
use crate::{check, check_eq};

const PAGE: u64 = 4096;

/// `VFIO_GET_API_VERSION` is answered by the container core, whatever backend.
pub fn api_version(_ctx: &Ctx) -> CaseResult {
    let c = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    check_eq!(c.api_version()?, VFIO_API_VERSION, "VFIO_GET_API_VERSION");
    Ok(())
}

/// Before SET_IOMMU the core asks every registered backend with NULL
/// iommu_data (`vfio_iommu_type1_check_extension(NULL, ...)`).
pub fn check_extension_without_iommu(_ctx: &Ctx) -> CaseResult {
    let c = Container::open()?;
    for (ext, want, what) in [
        (VFIO_TYPE1_IOMMU, 1, "TYPE1"),
        (VFIO_TYPE1V2_IOMMU, 1, "TYPE1v2"),
        (VFIO_TYPE1_NESTING_IOMMU, 1, "TYPE1_NESTING"),
        (VFIO_UNMAP_ALL, 1, "UNMAP_ALL"),
        // Needs an iommu to say yes.
        (VFIO_UPDATE_VADDR, 0, "UPDATE_VADDR"),
        (VFIO_DMA_CC_IOMMU, 0, "DMA_CC_IOMMU"),
        (VFIO_NOIOMMU_IOMMU, 0, "NOIOMMU"),
        (12345, 0, "unknown extension"),
    ] {
        check_eq!(c.check_extension(ext)?, want, "CHECK_EXTENSION({what}) before SET_IOMMU");
    }
    Ok(())
}

/// With an mdev group attached, UPDATE_VADDR is refused (mdevs cannot pin
/// safely while vaddrs change) and DMA_CC_IOMMU is 1: every one of the
/// container's IOMMU domains enforces coherency, vacuously, as there are none
/// (`vfio_domains_have_enforce_cache_coherency` starts from true).
pub fn check_extension_with_mdev(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-2")?;
    let c = &s.container;
    check_eq!(c.check_extension(VFIO_TYPE1V2_IOMMU)?, 1, "TYPE1v2");
    check_eq!(c.check_extension(VFIO_UNMAP_ALL)?, 1, "UNMAP_ALL");
    check_eq!(c.check_extension(VFIO_UPDATE_VADDR)?, 0, "UPDATE_VADDR with an mdev");
    check_eq!(c.check_extension(VFIO_DMA_CC_IOMMU)?, 1, "DMA_CC_IOMMU without a domain");
    Ok(())
}

/// Walks the capability chain of a GET_INFO reply: (id, version, offset).
fn caps(buf: &[u8]) -> Result<Vec<(u16, u16, usize)>, String> {
    let info_len = std::mem::size_of::<Type1Info>();
    let cap_offset = u32::from_ne_bytes(buf[16..20].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut off = cap_offset;
    while off != 0 {
        if off < info_len || off + 8 > buf.len() || out.len() > 16 {
            return Err(format!("bad capability offset {off} in a {}-byte reply", buf.len()));
        }
        let id = u16::from_ne_bytes(buf[off..off + 2].try_into().unwrap());
        let ver = u16::from_ne_bytes(buf[off + 2..off + 4].try_into().unwrap());
        out.push((id, ver, off));
        off = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap()) as usize;
    }
    Ok(out)
}

/// GET_INFO: argsz below the fixed part is EINVAL; a fixed-size buffer
/// reports the size the capabilities need; a big enough buffer gets the
/// chain (migration and DMA-available for an mdev-only container, which
/// has no IOVA ranges) with dma_avail counting down as mappings are made.
pub fn get_info(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    check_eq!(c.get_info_raw(8).err(), Some(Errno(libc::EINVAL)), "GET_INFO with argsz 8");

    let fixed = argsz::<Type1Info>();
    let buf = c.get_info_raw(fixed)?;
    let argsz_back = u32::from_ne_bytes(buf[0..4].try_into().unwrap());
    let flags = u32::from_ne_bytes(buf[4..8].try_into().unwrap());
    let pgsizes = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
    check_eq!(flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS, "flags");
    check_eq!(pgsizes, !(PAGE - 1), "iova_pgsizes of an emulated-only container (PAGE_MASK)");
    check!(argsz_back > fixed, "argsz must grow to hold the caps, got {argsz_back}");
    check_eq!(u32::from_ne_bytes(buf[16..20].try_into().unwrap()), 0, "cap_offset when the caps did not fit");

    let full = c.get_info_raw(argsz_back)?;
    let chain = caps(&full)?;
    let mut ids: Vec<u16> = chain.iter().map(|c| c.0).collect();
    ids.sort();
    check_eq!(
        ids,
        vec![VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL],
        "capability ids"
    );
    let avail = |buf: &[u8]| -> Result<u32, String> {
        let (_, _, off) = caps(buf)?
            .into_iter()
            .find(|c| c.0 == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
            .ok_or("no DMA_AVAIL cap")?;
        Ok(u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap()))
    };
    let before = avail(&full)?;
    check_eq!(before, 65535, "dma_avail of a new container (dma_entry_limit)");
    let mem = Buffer::new(2 * PAGE as usize);
    c.map_rw(mem.vaddr(), 0x10_0000, PAGE)?;
    c.map_rw(mem.vaddr() + PAGE, 0x20_0000, PAGE)?;
    check_eq!(avail(&c.get_info_raw(argsz_back)?)?, before - 2, "dma_avail after two maps");
    c.unmap_range(0x10_0000, PAGE)?;
    check_eq!(avail(&c.get_info_raw(argsz_back)?)?, before - 1, "dma_avail after an unmap");
    Ok(())
}

/// Maps, then unmaps with a larger range; the returned size is what was mapped.
pub fn map_unmap_roundtrip(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let mem = Buffer::new(16 * PAGE as usize);
    c.map_rw(mem.vaddr(), 0x100_0000, 16 * PAGE)?;
    // Mapping the same range again overlaps: EEXIST.
    check_eq!(c.map_rw(mem.vaddr(), 0x100_0000, 16 * PAGE).err(), Some(Errno(libc::EEXIST)), "remap");
    check_eq!(c.map_rw(mem.vaddr(), 0x100_0000 + 15 * PAGE, PAGE).err(), Some(Errno(libc::EEXIST)), "overlap at the end");
    check_eq!(c.unmap_range(0, 0x1000_0000)?, 16 * PAGE, "size returned by UNMAP_DMA");
    check_eq!(c.unmap_range(0, 0x1000_0000)?, 0, "unmap of nothing");
    Ok(())
}

/// Every invalid MAP_DMA input and its errno, in the order the reference checks.
pub fn map_bad_input_errno(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let mem = Buffer::new(4 * PAGE as usize);
    let v = mem.vaddr();
    let rw = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    let base = DmaMap { argsz: argsz::<DmaMap>(), flags: rw, vaddr: v, iova: 0x40_0000, size: PAGE };
    let cases: Vec<(&str, DmaMap, i32)> = vec![
        ("argsz below the struct", DmaMap { argsz: 16, ..base }, libc::EINVAL),
        ("unknown flag", DmaMap { flags: rw | 1 << 3, ..base }, libc::EINVAL),
        ("no READ or WRITE", DmaMap { flags: 0, ..base }, libc::EINVAL),
        ("VADDR with READ", DmaMap { flags: VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ, ..base }, libc::EINVAL),
        ("size 0", DmaMap { size: 0, ..base }, libc::EINVAL),
        ("unaligned size", DmaMap { size: PAGE + 1, ..base }, libc::EINVAL),
        ("unaligned iova", DmaMap { iova: 0x40_0800, ..base }, libc::EINVAL),
        ("unaligned vaddr", DmaMap { vaddr: v + 8, ..base }, libc::EINVAL),
        ("iova + size wraps", DmaMap { iova: u64::MAX - PAGE + 1, size: 2 * PAGE, ..base }, libc::EINVAL),
        ("vaddr + size wraps", DmaMap { vaddr: u64::MAX - PAGE + 1, size: 2 * PAGE, ..base }, libc::EINVAL),
        ("VADDR update of nothing", DmaMap { flags: VFIO_DMA_MAP_FLAG_VADDR, ..base }, libc::ENOENT),
    ];
    for (what, m, errno) in cases {
        check_eq!(c.map(&m).err(), Some(Errno(errno)), "MAP_DMA with {what}");
    }
    // None of the failures may have left a mapping behind.
    check_eq!(c.unmap_range(0, 1 << 40)?, 0, "bytes mapped after only failed MAP_DMAs");
    // A VADDR update of a mapping whose vaddr is still valid is EINVAL.
    c.map(&base)?;
    check_eq!(c.map(&DmaMap { flags: VFIO_DMA_MAP_FLAG_VADDR, ..base }).err(), Some(Errno(libc::EINVAL)), "VADDR update of a valid vaddr");
    // VADDR invalidation is refused while an mdev is in the container.
    let inval = DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova: base.iova, size: PAGE };
    check_eq!(c.unmap(&inval).err(), Some(Errno(libc::EBUSY)), "UNMAP_DMA(VADDR) with an mdev");
    Ok(())
}

/// Type1v2 refuses an unmap that would cut a mapping in two, and the
/// refusal unmaps nothing.
pub fn unmap_v2_no_bisect(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let mem = Buffer::new(8 * PAGE as usize);
    let iova = 0x80_0000;
    c.map_rw(mem.vaddr(), iova, 4 * PAGE)?;
    c.map_rw(mem.vaddr() + 4 * PAGE, iova + 4 * PAGE, 4 * PAGE)?;
    check_eq!(c.unmap_range(iova + PAGE, PAGE).err(), Some(Errno(libc::EINVAL)), "unmap inside a mapping");
    check_eq!(c.unmap_range(iova, 2 * PAGE).err(), Some(Errno(libc::EINVAL)), "unmap of a mapping's head");
    check_eq!(c.unmap_range(iova + 2 * PAGE, 4 * PAGE).err(), Some(Errno(libc::EINVAL)), "unmap across two mappings' middles");
    for (what, u) in [
        ("unaligned iova", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: 0, iova: iova + 1, size: PAGE }),
        ("size 0", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: 0, iova, size: 0 }),
        ("unaligned size", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: 0, iova, size: 100 }),
        ("wrapping range", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: 0, iova, size: u64::MAX - PAGE + 1 }),
        ("argsz too small", DmaUnmap { argsz: 8, flags: 0, iova, size: PAGE }),
        ("unknown flag", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: 1 << 3, iova, size: PAGE }),
        ("ALL with a range", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: VFIO_DMA_UNMAP_FLAG_ALL, iova, size: PAGE }),
        ("dirty bitmap with ALL", DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, iova: 0, size: 0 }),
    ] {
        check_eq!(c.unmap(&u).err(), Some(Errno(libc::EINVAL)), "UNMAP_DMA with {what}");
    }
    // Exactly covering both mappings works and reports both.
    check_eq!(c.unmap_range(iova, 8 * PAGE)?, 8 * PAGE, "unmap of both mappings");
    Ok(())
}

/// UNMAP_ALL removes every mapping and reports their total size.
pub fn unmap_all(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let mem = Buffer::new(8 * PAGE as usize);
    for i in 0..8 {
        c.map_rw(mem.vaddr() + i * PAGE, 0x1_0000_0000 + i * 0x10_0000, PAGE)?;
    }
    let all = DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: 0, size: 0 };
    check_eq!(c.unmap(&all)?, 8 * PAGE, "UNMAP_ALL size");
    check_eq!(c.unmap(&all)?, 0, "second UNMAP_ALL");
    Ok(())
}
