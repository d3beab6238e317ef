//! Type1 uAPI conformance: the results and errnos of
//! `drivers/vfio/vfio_iommu_type1.c` (Linux 6.12), which both backends must give.

use super::{fail, CaseResult, Ctx, Fail};
use crate::uapi::*;
use crate::vfio::{Buffer, Container, Errno};
use crate::{check, check_eq};

const PAGE: u64 = 4096;

/// `VFIO_GET_API_VERSION` is answered by the container core, whatever backend.
pub fn api_version(_ctx: &Ctx) -> CaseResult {
    let c = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
    check_eq!(c.api_version()?, VFIO_API_VERSION as i32, "VFIO_GET_API_VERSION");
    Ok(())
}

/// Before SET_IOMMU the core asks every registered backend with NULL
/// iommu_data (`vfio_iommu_type1_check_extension(NULL, ...)`).
pub fn check_extension_without_iommu(_ctx: &Ctx) -> CaseResult {
    let c = Container::open()?;
    for (ext, want, what) in [
        (VFIO_TYPE1_IOMMU, 1, "TYPE1"),
        (VFIO_TYPE1v2_IOMMU, 1, "TYPE1v2"),
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
    check_eq!(c.check_extension(VFIO_TYPE1v2_IOMMU)?, 1, "TYPE1v2");
    check_eq!(c.check_extension(VFIO_UNMAP_ALL)?, 1, "UNMAP_ALL");
    check_eq!(c.check_extension(VFIO_UPDATE_VADDR)?, 0, "UPDATE_VADDR with an mdev");
    check_eq!(c.check_extension(VFIO_DMA_CC_IOMMU)?, 1, "DMA_CC_IOMMU without a domain");
    Ok(())
}

/// Walks the capability chain of a GET_INFO reply: (id, version, offset).
fn caps(buf: &[u8]) -> Result<Vec<(u16, u16, usize)>, String> {
    let info_len = std::mem::size_of::<vfio_iommu_type1_info>();
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

/// The container's `dma_avail` (the DMA_AVAIL capability of GET_INFO):
/// how many more mappings `dma_entry_limit` allows.
pub(crate) fn dma_avail(c: &Container) -> Result<u32, Fail> {
    let buf = c.get_info_raw(512)?;
    let (_, _, off) = caps(&buf)?
        .into_iter()
        .find(|c| u32::from(c.0) == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
        .ok_or_else(|| fail("no DMA_AVAIL capability"))?;
    Ok(u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap()))
}

/// GET_INFO: argsz below the fixed part is EINVAL; a fixed-size buffer
/// reports the size the capabilities need; a big enough buffer gets the
/// chain (migration and DMA-available for an mdev-only container, which
/// has no IOVA ranges) with dma_avail counting down as mappings are made.
pub fn get_info(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    check_eq!(c.get_info_raw(8).err(), Some(Errno(libc::EINVAL)), "GET_INFO with argsz 8");

    let fixed = argsz::<vfio_iommu_type1_info>();
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
    let mut ids: Vec<u32> = chain.iter().map(|c| u32::from(c.0)).collect();
    ids.sort();
    check_eq!(
        ids,
        vec![VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL],
        "capability ids"
    );
    let avail = |buf: &[u8]| -> Result<u32, String> {
        let (_, _, off) = caps(buf)?
            .into_iter()
            .find(|c| u32::from(c.0) == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
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
    let base = vfio_iommu_type1_dma_map { argsz: argsz::<vfio_iommu_type1_dma_map>(), flags: rw, vaddr: v, iova: 0x40_0000, size: PAGE };
    let cases: Vec<(&str, vfio_iommu_type1_dma_map, i32)> = vec![
        ("argsz below the struct", vfio_iommu_type1_dma_map { argsz: 16, ..base }, libc::EINVAL),
        ("unknown flag", vfio_iommu_type1_dma_map { flags: rw | 1 << 3, ..base }, libc::EINVAL),
        ("no READ or WRITE", vfio_iommu_type1_dma_map { flags: 0, ..base }, libc::EINVAL),
        ("VADDR with READ", vfio_iommu_type1_dma_map { flags: VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ, ..base }, libc::EINVAL),
        ("size 0", vfio_iommu_type1_dma_map { size: 0, ..base }, libc::EINVAL),
        ("unaligned size", vfio_iommu_type1_dma_map { size: PAGE + 1, ..base }, libc::EINVAL),
        ("unaligned iova", vfio_iommu_type1_dma_map { iova: 0x40_0800, ..base }, libc::EINVAL),
        ("unaligned vaddr", vfio_iommu_type1_dma_map { vaddr: v + 8, ..base }, libc::EINVAL),
        ("iova + size wraps", vfio_iommu_type1_dma_map { iova: u64::MAX - PAGE + 1, size: 2 * PAGE, ..base }, libc::EINVAL),
        ("vaddr + size wraps", vfio_iommu_type1_dma_map { vaddr: u64::MAX - PAGE + 1, size: 2 * PAGE, ..base }, libc::EINVAL),
        ("VADDR update of nothing", vfio_iommu_type1_dma_map { flags: VFIO_DMA_MAP_FLAG_VADDR, ..base }, libc::ENOENT),
    ];
    for (what, m, errno) in cases {
        check_eq!(c.map(&m).err(), Some(Errno(errno)), "MAP_DMA with {what}");
    }
    // None of the failures may have left a mapping behind.
    check_eq!(c.unmap_range(0, 1 << 40)?, 0, "bytes mapped after only failed MAP_DMAs");
    // A VADDR update of a mapping whose vaddr is still valid is EINVAL.
    c.map(&base)?;
    check_eq!(c.map(&vfio_iommu_type1_dma_map { flags: VFIO_DMA_MAP_FLAG_VADDR, ..base }).err(), Some(Errno(libc::EINVAL)), "VADDR update of a valid vaddr");
    // VADDR invalidation is refused while an mdev is in the container.
    let inval = dma_unmap(VFIO_DMA_UNMAP_FLAG_VADDR, base.iova, PAGE);
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
        ("unaligned iova", dma_unmap(0, iova + 1, PAGE)),
        ("size 0", dma_unmap(0, iova, 0)),
        ("unaligned size", dma_unmap(0, iova, 100)),
        ("wrapping range", dma_unmap(0, iova, u64::MAX - PAGE + 1)),
        ("argsz too small", vfio_iommu_type1_dma_unmap { argsz: 8, ..dma_unmap(0, iova, PAGE) }),
        ("unknown flag", dma_unmap(1 << 3, iova, PAGE)),
        ("ALL with a range", dma_unmap(VFIO_DMA_UNMAP_FLAG_ALL, iova, PAGE)),
        ("dirty bitmap with ALL", dma_unmap(VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0, 0)),
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
    let all = dma_unmap(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0);
    check_eq!(c.unmap(&all)?, 8 * PAGE, "UNMAP_ALL size");
    check_eq!(c.unmap(&all)?, 0, "second UNMAP_ALL");
    Ok(())
}

/// A type1 (v1) container on an mdev group.
fn v1_container(ctx: &Ctx) -> Result<super::Setup, super::Fail> {
    let mdev = crate::vfio::Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let group = crate::vfio::Group::open(mdev.group()?)?;
    let container = Container::open()?;
    group.set_container(&container)?;
    container.set_iommu(VFIO_TYPE1_IOMMU)?;
    Ok(super::Setup { container, group, mdev })
}

/// SET_IOMMU is answered by the container core and the backend together:
/// a type no backend claims in CHECK_EXTENSION is ENODEV, a container
/// without a group cannot choose, and neither can one that already has a
/// backend (both EINVAL, `vfio_ioctl_set_iommu`).
pub fn set_iommu_errors(ctx: &Ctx) -> CaseResult {
    let lonely = Container::open()?;
    check_eq!(lonely.set_iommu(VFIO_TYPE1v2_IOMMU).err(), Some(Errno(libc::EINVAL)), "SET_IOMMU without a group");
    let mdev = crate::vfio::Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let group = crate::vfio::Group::open(mdev.group()?)?;
    let c = Container::open()?;
    group.set_container(&c)?;
    check_eq!(c.set_iommu(77).err(), Some(Errno(libc::ENODEV)), "SET_IOMMU of an unknown type");
    check_eq!(c.set_iommu(VFIO_NOIOMMU_IOMMU).err(), Some(Errno(libc::ENODEV)), "SET_IOMMU(NOIOMMU) without the noiommu driver");
    c.set_iommu(VFIO_TYPE1v2_IOMMU)?;
    check_eq!(c.set_iommu(VFIO_TYPE1v2_IOMMU).err(), Some(Errno(libc::EINVAL)), "second SET_IOMMU");
    // The backend's ioctls work; an ioctl it does not know is ENOTTY.
    check_eq!(
        crate::vfio::ioctl_raw(c.fd(), VFIO_IOMMU_MAP_DMA + 40, 0).err(),
        Some(Errno(libc::ENOTTY)),
        "unknown container ioctl"
    );
    Ok(())
}

/// Every argsz from 0 to past the full reply, in 4-byte steps, as the
/// iommufd compat selftest walks it: below 16 is EINVAL; from 16 the fixed
/// part is filled up to argsz and argsz grows to the full size; at the full
/// size the capability chain is there and argsz is unchanged.
pub fn get_info_argsz_walk(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let full = u32::from_ne_bytes(c.get_info_raw(argsz::<vfio_iommu_type1_info>())?[0..4].try_into().unwrap());
    let mut argsz = 0;
    while argsz <= full + 8 {
        let r = c.get_info_raw(argsz);
        if argsz < 16 {
            check_eq!(r.err(), Some(Errno(libc::EINVAL)), "GET_INFO argsz {argsz}");
        } else {
            let buf = r.map_err(|e| fail(format!("GET_INFO argsz {argsz}: {e}")))?;
            let back = u32::from_ne_bytes(buf[0..4].try_into().unwrap());
            let flags = u32::from_ne_bytes(buf[4..8].try_into().unwrap());
            check_eq!(flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS, "flags at argsz {argsz}");
            if argsz < full {
                check_eq!(back, full, "argsz written back for argsz {argsz}");
            } else {
                check_eq!(back, argsz, "argsz kept for argsz {argsz}");
                check!(caps(&buf)?.len() == 2, "two caps at argsz {argsz}");
            }
        }
        argsz += 4;
    }
    Ok(())
}

/// 512 single-page mappings at scattered IOVAs, unmapped page by page in a
/// shuffled order: each unmap reports exactly one page, then nothing is left.
pub fn map_many_unmap_shuffled(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let n = 512u64;
    let mem = Buffer::new((n * PAGE) as usize);
    // A fixed permutation (multiplicative hash) keeps the case reproducible.
    let iova = |i: u64| 0x10_0000_0000 + ((i * 2654435761) % 4093) * 2 * PAGE;
    for i in 0..n {
        c.map_rw(mem.vaddr() + i * PAGE, iova(i), PAGE)
            .map_err(|e| fail(format!("map {i} at {:#x}: {e}", iova(i))))?;
    }
    let mut order: Vec<u64> = (0..n).collect();
    let mut x = 12345u64;
    for i in (1..order.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    for i in order {
        check_eq!(c.unmap_range(iova(i), PAGE)?, PAGE, "unmap of page {i}");
    }
    check_eq!(c.unmap_range(0, u64::MAX - PAGE + 1)?, 0, "left after unmapping all");
    Ok(())
}

/// Random MAP_DMA and UNMAP_DMA over a small IOVA window, each result
/// checked against a model of the v2 rules: a map overlapping a mapping is
/// `EEXIST`, an unmap whose first or last page falls inside a mapping that
/// it does not start or end with is `EINVAL`, any other unmap removes the
/// mappings inside it and reports their bytes. Crowded, so that lookups
/// find neighbours on both sides, maps land between and beside mappings,
/// and unmaps walk several: the paths where the backend reuses a lookup's
/// place in its tree for the insertion or removal that follows.
pub fn random_map_unmap_model(ctx: &Ctx) -> CaseResult {
    use std::collections::BTreeMap;
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    const PAGES: u64 = 96;
    const BASE: u64 = 0x20_0000_0000;
    let mem = Buffer::new((PAGES * PAGE) as usize);
    // Mapped ranges by first page: (first page, pages).
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let (mut maps, mut eexist, mut unmaps, mut einval, mut walked) = (0u32, 0u32, 0u32, 0u32, 0u32);
    for op in 0..6000u32 {
        let first = next(PAGES);
        let wide = next(4) == 0;
        let len = 1 + next(if wide { 12 } else { 3 }).min(PAGES - first - 1);
        let (iova, size) = (BASE + first * PAGE, len * PAGE);
        let end = first + len;
        if next(5) < 3 {
            let overlaps = model.range(..end).next_back().is_some_and(|(&f, &l)| f + l > first);
            let got = c.map_rw(mem.vaddr() + first * PAGE, iova, size);
            if overlaps {
                check_eq!(got.err(), Some(Errno(libc::EEXIST)), "op {op}: map of pages {first}..{end} over a mapping");
                eexist += 1;
            } else {
                check_eq!(got.err(), None, "op {op}: map of free pages {first}..{end}");
                model.insert(first, len);
                maps += 1;
            }
        } else {
            let splits = |p: u64| model.range(..p).next_back().is_some_and(|(&f, &l)| f < p && f + l > p);
            let got = c.unmap_range(iova, size);
            if splits(first) || splits(end) {
                check_eq!(got.err(), Some(Errno(libc::EINVAL)), "op {op}: unmap of pages {first}..{end} bisecting a mapping");
                einval += 1;
            } else {
                let inside: Vec<(u64, u64)> = model.range(first..end).map(|(&f, &l)| (f, l)).collect();
                let bytes: u64 = inside.iter().map(|(_, l)| l * PAGE).sum();
                check_eq!(got.ok(), Some(bytes), "op {op}: unmap of pages {first}..{end} over {inside:?}");
                walked += u32::from(inside.len() > 1);
                for (f, _) in inside {
                    model.remove(&f);
                }
                unmaps += 1;
            }
        }
    }
    let left: u64 = model.values().map(|l| l * PAGE).sum();
    check_eq!(c.unmap_range(0, u64::MAX - PAGE + 1)?, left, "unmap of everything left");
    // The sequence must have reached every path it is meant for.
    check!(maps > 500 && eexist > 500 && unmaps > 500 && einval > 100 && walked > 50,
        "too few of some operation: {maps} maps, {eexist} EEXIST, {unmaps} unmaps, {einval} EINVAL, {walked} multi-mapping unmaps");
    println!("{maps} maps, {eexist} EEXIST, {unmaps} unmaps ({walked} of several mappings), {einval} EINVAL");
    Ok(())
}

/// Type1 v1 keeps the old unmap rules: a request starting inside a mapping
/// unmaps nothing and succeeds with size 0, one covering a mapping's first
/// IOVA unmaps all of it; DIRTY_PAGES is v2-only (EACCES).
pub fn v1_semantics(ctx: &Ctx) -> CaseResult {
    let s = v1_container(ctx)?;
    let c = &s.container;
    let mem = Buffer::new(8 * PAGE as usize);
    c.map_rw(mem.vaddr(), 0x40_0000, 8 * PAGE)?;
    check_eq!(c.unmap_range(0x40_0000 + PAGE, PAGE)?, 0, "v1 unmap inside a mapping");
    check_eq!(c.unmap_range(0x40_0000, PAGE)?, 8 * PAGE, "v1 unmap of the first page");
    let mut d = [0u32; 2];
    d[0] = 8;
    d[1] = VFIO_IOMMU_DIRTY_PAGES_FLAG_START;
    check_eq!(
        crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut d).err(),
        Some(Errno(libc::EACCES)),
        "DIRTY_PAGES on v1"
    );
    Ok(())
}

/// `/sys/module/<type1>/parameters/dma_entry_limit` bounds the mappings of
/// containers opened after it is set (ENOSPC beyond), as dma_avail shows.
pub fn dma_entry_limit(ctx: &Ctx) -> CaseResult {
    let param = std::path::PathBuf::from("/sys/module")
        .join(ctx.backend.type1_module())
        .join("parameters/dma_entry_limit");
    let old = std::fs::read_to_string(&param).map_err(|e| fail(format!("{}: {e}", param.display())))?;
    check_eq!(old.trim(), "65535", "default dma_entry_limit");
    std::fs::write(&param, "3").map_err(|e| fail(format!("set {}: {e}", param.display())))?;
    let result = (|| -> CaseResult {
        let s = ctx.container_with_mdev("mtty-1")?;
        let c = &s.container;
        let mem = Buffer::new(4 * PAGE as usize);
        for i in 0..3 {
            c.map_rw(mem.vaddr() + i * PAGE, 0x100_0000 + i * PAGE * 2, PAGE)?;
        }
        check_eq!(c.map_rw(mem.vaddr() + 3 * PAGE, 0x200_0000, PAGE).err(), Some(Errno(libc::ENOSPC)), "fourth map");
        c.unmap_range(0x100_0000, PAGE)?;
        c.map_rw(mem.vaddr() + 3 * PAGE, 0x200_0000, PAGE)?;
        Ok(())
    })();
    std::fs::write(&param, old.trim()).map_err(|e| fail(format!("restore {}: {e}", param.display())))?;
    result
}

/// `VFIO_IOMMU_DIRTY_PAGES` with `flags` and no range (START, STOP).
pub(super) fn dirty(c: &Container, flags: u32) -> Result<(), Errno> {
    let mut d = [8u32, flags];
    crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut d).map(|_| ())
}

/// Dirty tracking with an mdev that pins nothing: START/STOP are idempotent,
/// GET_BITMAP reports no page dirty (emulated groups dirty only what they
/// pin), every invalid GET_BITMAP and flag combination has its errno, and
/// UNMAP with GET_DIRTY_BITMAP works only while tracking.
pub fn dirty_pages(ctx: &Ctx) -> CaseResult {
    let s = ctx.container_with_mdev("mtty-1")?;
    let c = &s.container;
    let mem = Buffer::new(64 * PAGE as usize);
    let base = 0x800_0000u64;
    c.map_rw(mem.vaddr(), base, 32 * PAGE)?;
    c.map_rw(mem.vaddr() + 32 * PAGE, base + 32 * PAGE, 32 * PAGE)?;
    // Dirty what the CPU can: the device did not write, so nothing is reported.
    unsafe { std::ptr::write_bytes(mem.addr, 0xa5, mem.len) };

    check_eq!(dirty(c, 0).err(), Some(Errno(libc::EINVAL)), "no flag");
    check_eq!(dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP).err(), Some(Errno(libc::EINVAL)), "two flags");
    check_eq!(dirty(c, 1 << 3).err(), Some(Errno(libc::EINVAL)), "unknown flag");
    let mut short = [4u32, VFIO_IOMMU_DIRTY_PAGES_FLAG_START];
    check_eq!(crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut short).err(), Some(Errno(libc::EINVAL)), "argsz 4");

    let mut bits = vec![0xffu8; 16];
    let good = DirtyGet {
        argsz: std::mem::size_of::<DirtyGet>() as u32,
        flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        iova: base,
        size: 64 * PAGE,
        pgsize: PAGE,
        bitmap_size: 8,
        data: bits.as_mut_ptr() as u64,
    };
    let get = |g: DirtyGet| -> Result<(), Errno> {
        let mut g = g;
        crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_DIRTY_PAGES, &mut g).map(|_| ())
    };
    check_eq!(get(good).err(), Some(Errno(libc::EINVAL)), "GET_BITMAP before START");
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START)?;
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_START)?;
    for (what, g) in [
        ("argsz without the range", DirtyGet { argsz: 8, ..good }),
        ("bitmap pgsize 8K", DirtyGet { pgsize: 2 * PAGE, ..good }),
        ("unaligned iova", DirtyGet { iova: base + 1, ..good }),
        ("size 0", DirtyGet { size: 0, ..good }),
        ("bitmap too small", DirtyGet { bitmap_size: 4, ..good }),
        ("range bisecting a mapping", DirtyGet { size: 16 * PAGE, ..good }),
        ("wrapping range", DirtyGet { iova: u64::MAX - PAGE + 1, size: 2 * PAGE, ..good }),
    ] {
        check_eq!(get(g).err(), Some(Errno(libc::EINVAL)), "GET_BITMAP with {what}");
    }
    get(good)?;
    check_eq!(&bits[..8], &[0u8; 8][..], "dirty bitmap of pages only the CPU wrote");
    check_eq!(&bits[8..], &[0xffu8; 8][..], "bytes past bitmap_size untouched");

    // Unmap with the bitmap: allowed while tracking, bitmap pgsize must match.
    let mut ub = DmaUnmapBitmap {
        argsz: argsz::<DmaUnmapBitmap>(),
        flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
        iova: base,
        size: 32 * PAGE,
        pgsize: 2 * PAGE,
        bitmap_size: 8,
        data: bits.as_mut_ptr() as u64,
    };
    let mut bad = ub;
    check_eq!(crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_UNMAP_DMA, &mut bad).err(), Some(Errno(libc::EINVAL)), "unmap bitmap pgsize 8K");
    ub.pgsize = PAGE;
    crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_UNMAP_DMA, &mut ub)?;
    check_eq!(ub.size, 32 * PAGE, "size unmapped with the bitmap");

    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?;
    dirty(c, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)?;
    check_eq!(get(DirtyGet { iova: base + 32 * PAGE, size: 32 * PAGE, ..good }).err(), Some(Errno(libc::EINVAL)), "GET_BITMAP after STOP");
    let mut after = ub;
    after.iova = base + 32 * PAGE;
    check_eq!(crate::vfio::ioctl_ptr(c.fd(), VFIO_IOMMU_UNMAP_DMA, &mut after).err(), Some(Errno(libc::EINVAL)), "unmap with bitmap, tracking off");
    Ok(())
}

/// Processes that exit with live mappings, and with the container still
/// set, leave nothing behind: the group can be used again at once, and the
/// end-of-run kmemleak scan must stay clean.
pub fn process_exit_with_mappings(ctx: &Ctx) -> CaseResult {
    let mdev = crate::vfio::Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let gid = mdev.group()?;
    for round in 0..3 {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(fail("fork failed"));
        }
        if pid == 0 {
            let ok = (|| -> Result<(), Errno> {
                let group = crate::vfio::Group::open(gid)?;
                let c = Container::open()?;
                group.set_container(&c)?;
                c.set_iommu(VFIO_TYPE1v2_IOMMU)?;
                let mem = Buffer::new(64 * PAGE as usize);
                for i in 0..64 {
                    c.map_rw(mem.vaddr() + i * PAGE, 0x1000_0000 + i * 4 * PAGE, PAGE)?;
                }
                std::mem::forget(mem);
                std::mem::forget(c);
                std::mem::forget(group);
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
    // The group is free again: a new container can take it.
    let group = crate::vfio::Group::open(gid)?;
    let c = Container::open()?;
    group.set_container(&c)?;
    c.set_iommu(VFIO_TYPE1v2_IOMMU)?;
    check_eq!(c.unmap_range(0, 1 << 40)?, 0, "mappings visible in a new container");
    Ok(())
}
