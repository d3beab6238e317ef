//! Container open, page sizes, extensions, IOVA ranges, GET_INFO and
//! locked-memory accounting, mirroring the named C functions.

mod common;

use common::*;
use type1_core::acct::*;
use type1_core::errno::*;
use type1_core::info::*;
use type1_core::container::*;
use type1_core::iova::*;
use type1_core::uapi::*;

fn rsv(start: u64, length: u64) -> ResvRegion {
    ResvRegion {
        start,
        length,
        kind: ResvType::Reserved,
    }
}

fn r(start: u64, end: u64) -> VfioIova {
    VfioIova { start, end }
}

#[test]
fn open_selects_version_or_einval() {
    // vfio_iommu_type1_open: switch (arg)
    let a = VfioIommu::open(VFIO_TYPE1_IOMMU, 7).unwrap();
    assert!(!a.v2 && !a.nesting);
    assert_eq!((a.dma_avail, a.pgsize_bitmap), (7, PAGE_MASK));
    let b = VfioIommu::open(VFIO_TYPE1V2_IOMMU, DMA_ENTRY_LIMIT_DEFAULT).unwrap();
    assert!(b.v2 && !b.nesting);
    assert_eq!(b.dma_avail, 65535);
    let c = VfioIommu::open(VFIO_TYPE1_NESTING_IOMMU, 1).unwrap();
    assert!(c.v2 && c.nesting);
    for bad in [0, 2, 4, 5, 7, 8, 9, 10, u64::MAX] {
        assert_eq!(VfioIommu::open(bad, 1), Err(EINVAL), "{bad}");
    }
}

#[test]
fn pgsize_bitmap_update_hides_sub_page_sizes() {
    // vfio_update_pgsize_bitmap
    assert_eq!(update_pgsize_bitmap([]), PAGE_MASK);
    let x86 = (1 << 12) | (1 << 21) | (1 << 30);
    assert_eq!(update_pgsize_bitmap([x86]), x86);
    assert_eq!(
        update_pgsize_bitmap([x86, (1 << 12) | (1 << 21)]),
        (1 << 12) | (1 << 21)
    );
    // 512-byte and 1K pages are replaced by PAGE_SIZE.
    assert_eq!(
        update_pgsize_bitmap([0x200 | 0x400 | (1 << 16)]),
        (1 << 12) | (1 << 16)
    );
}

#[test]
fn min_pgsize_of_empty_bitmap_is_einval() {
    // __ffs(0) is undefined in vfio_dma_do_map & co.; reported as EINVAL here.
    let mut i = v2();
    i.pgsize_bitmap = 0;
    assert_eq!(i.min_pgsize(), Err(EINVAL));
    let mut t = HostTree::default();
    assert_eq!(do_map(&mut t, &mut i, &[], map_args(0, PG)), Err(EINVAL));
    i.pgsize_bitmap = 1 << 21 | 1 << 30;
    assert_eq!(i.min_pgsize(), Ok(1 << 21));
}

#[test]
fn check_extension_values() {
    // vfio_iommu_type1_check_extension
    for ext in [
        VFIO_TYPE1_IOMMU,
        VFIO_TYPE1V2_IOMMU,
        VFIO_TYPE1_NESTING_IOMMU,
        VFIO_UNMAP_ALL,
    ] {
        assert_eq!(check_extension(ext, None), 1);
    }
    assert_eq!(check_extension(VFIO_UPDATE_VADDR, None), 0);
    assert_eq!(check_extension(VFIO_UPDATE_VADDR, Some((false, true))), 1);
    assert_eq!(check_extension(VFIO_UPDATE_VADDR, Some((true, true))), 0);
    assert_eq!(check_extension(VFIO_DMA_CC_IOMMU, None), 0);
    assert_eq!(check_extension(VFIO_DMA_CC_IOMMU, Some((false, true))), 1);
    assert_eq!(check_extension(VFIO_DMA_CC_IOMMU, Some((false, false))), 0);
    assert_eq!(check_extension(2, Some((false, true))), 0);
}

#[test]
fn ioctl_numbers_match_uapi() {
    // _IO(VFIO_TYPE, VFIO_BASE + n)
    assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
    assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
    assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
    assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
    assert_eq!(VFIO_IOMMU_DIRTY_PAGES, 0x3b75);
    // vfio_iommu_type1_ioctl: default -> -ENOTTY
    assert_eq!(classify_ioctl(0x3b71), Ok(Type1Ioctl::MapDma));
    assert_eq!(classify_ioctl(0x3b66), Err(ENOTTY));
    assert_eq!(classify_ioctl(0x3b73), Err(ENOTTY));
}

#[test]
fn uapi_structs_decode_native_endian() {
    let mut b = [0u8; 40];
    b[0..4].copy_from_slice(&40u32.to_ne_bytes());
    b[4..8].copy_from_slice(&3u32.to_ne_bytes());
    b[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
    b[16..24].copy_from_slice(&0x2000u64.to_ne_bytes());
    b[24..32].copy_from_slice(&0x3000u64.to_ne_bytes());
    let m = DmaMap::from_bytes(&b).unwrap();
    assert_eq!(
        (m.argsz, m.flags, m.vaddr, m.iova, m.size),
        (40, 3, 0x1000, 0x2000, 0x3000)
    );
    assert_eq!(DmaMap::from_bytes(&b[..31]), None);
    let u = DmaUnmap::from_bytes(&b).unwrap();
    assert_eq!((u.iova, u.size), (0x1000, 0x2000));
    assert_eq!(DmaUnmap::from_bytes(&u.to_bytes()), Some(u));
    // The word forms the kernel copies decode the same bytes the same way.
    let words = |n: usize| -> Vec<u64> {
        (0..n).map(|i| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())).collect()
    };
    let w = words(4);
    assert_eq!(DmaMap::from_words([w[0], w[1], w[2], w[3]]), m);
    assert_eq!(DmaUnmap::from_words([w[0], w[1], w[2]]), u);
    let back: Vec<u8> = u.to_words().iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(back, u.to_bytes());
    let g = DirtyBitmapGet::from_bytes(&b).unwrap();
    assert_eq!(
        (g.iova, g.bitmap.pgsize, g.bitmap.data),
        (
            u64::from_ne_bytes(b[0..8].try_into().unwrap()),
            0x2000,
            u64::from_ne_bytes(b[32..40].try_into().unwrap())
        )
    );
    assert_eq!(DirtyBitmapGet::from_bytes(&b[..39]), None);
}

#[test]
fn iova_valid_with_empty_list_allows_all() {
    // vfio_iommu_iova_dma_valid: list_empty -> true
    assert!(iova_dma_valid(&[], 0, u64::MAX));
    assert!(iova_dma_valid(&[r(0, 0xfff)], 0, 0xfff));
    assert!(!iova_dma_valid(&[r(0, 0xfff)], 0, 0x1000));
}

#[test]
fn aper_resize_creates_and_clips() {
    // vfio_iommu_aper_resize
    let mut buf = [VfioIova::default(); 4];
    let mut l = IovaList::new(&mut buf, 0);
    aper_resize(&mut l, 0, (1 << 48) - 1).unwrap();
    assert_eq!(l.as_slice(), &[r(0, (1 << 48) - 1)]);

    let mut buf = [
        r(0, 0xfff),
        r(0x2000, 0x2fff),
        r(0x4000, 0x4fff),
        VfioIova::default(),
    ];
    let mut l = IovaList::new(&mut buf, 3);
    aper_resize(&mut l, 0x2800, 0x4800).unwrap();
    assert_eq!(l.as_slice(), &[r(0x2800, 0x2fff), r(0x4000, 0x4800)]);
}

#[test]
fn aper_resize_keeps_c_edge_cases() {
    // vfio_iommu_aper_resize: start == node->end deletes the node, as does end == node->start.
    let mut buf = [r(0, 0xfff), r(0x2000, 0x2fff)];
    let mut l = IovaList::new(&mut buf, 2);
    aper_resize(&mut l, 0xfff, 0x2000).unwrap();
    assert!(l.is_empty());
}

#[test]
fn resv_exclude_punches_holes() {
    // vfio_iommu_resv_exclude
    let mut buf = [VfioIova::default(); 8];
    let mut l = IovaList::new(&mut buf, 0);
    l.push(0, (1 << 48) - 1).unwrap();
    let msi = ResvRegion {
        start: 0xfee0_0000,
        length: 0x10_0000,
        kind: ResvType::Msi,
    };
    let relax = ResvRegion {
        start: 0x1000,
        length: 0x1000,
        kind: ResvType::DirectRelaxable,
    };
    resv_exclude(&mut l, [msi, relax, rsv(0, 0x1000)]).unwrap();
    assert_eq!(
        l.as_slice(),
        &[r(0x1000, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)]
    );
    // A region spanning both ranges removes the inner ends.
    resv_exclude(&mut l, [rsv(0xfe00_0000, 0x200_0000)]).unwrap();
    assert_eq!(
        l.as_slice(),
        &[r(0x1000, 0xfdff_ffff), r(0x1_0000_0000, (1 << 48) - 1)]
    );
}

#[test]
fn resv_exclude_everything_is_einval() {
    // vfio_iommu_resv_exclude: list_empty(iova) -> -EINVAL
    let mut buf = [r(0x1000, 0x1fff)];
    let mut l = IovaList::new(&mut buf, 1);
    assert_eq!(resv_exclude(&mut l, [rsv(0, 0x10000)]), Err(EINVAL));
}

#[test]
fn resv_exclude_without_room_is_enomem() {
    // vfio_iommu_iova_insert: kmalloc failure -> -ENOMEM (here: buffer full)
    let mut buf = [r(0, 0xffff)];
    let mut l = IovaList::new(&mut buf, 1);
    assert_eq!(resv_exclude(&mut l, [rsv(0x1000, 0x1000)]), Err(ENOMEM));
    assert_eq!(exclude_capacity(1, 1), 2);
}

#[test]
fn aper_conflict_cases() {
    // vfio_iommu_aper_conflict
    let mut t = HostTree::default();
    raw_insert(&mut t, 0x10000, 0x1000);
    let cur = [r(0, 0xffff_ffff)];
    assert!(
        !aper_conflict(&mut t, &[], 5, 6),
        "empty list never conflicts"
    );
    assert!(
        aper_conflict(&mut t, &cur, 0x1_0000_0000, 0x2_0000_0000),
        "disjoint"
    );
    assert!(
        aper_conflict(&mut t, &cur, 0x10800, 0xffff_ffff),
        "mapping below new start"
    );
    assert!(
        aper_conflict(&mut t, &cur, 0, 0x10800),
        "mapping beyond new end"
    );
    assert!(!aper_conflict(&mut t, &cur, 0x10000, 0x10fff));
    assert!(!aper_conflict(&mut t, &cur, 0x1000, 0x2_0000_0000));
}

#[test]
fn aper_conflict_detects_mapping_near_top_of_address_space() {
    // vfio_iommu_aper_conflict: C's end + 1 + (last->end - end) wraps to 0 and misses this.
    let mut t = HostTree::default();
    raw_insert(&mut t, u64::MAX - 0xfff, 0x1000);
    assert!(aper_conflict(&mut t, &[r(0, u64::MAX)], 0, (1 << 48) - 1));
}

#[test]
fn resv_conflict_cases() {
    // vfio_iommu_resv_conflict: DIRECT_RELAXABLE skipped, vfio_find_dma semantics
    let mut t = HostTree::default();
    raw_insert(&mut t, 0x10000, 0x2000);
    assert!(resv_conflict(&mut t, [rsv(0xf000, 0x1001)]));
    assert!(!resv_conflict(&mut t, [rsv(0xf000, 0x1000)]));
    let relax = ResvRegion {
        start: 0x10000,
        length: 0x1000,
        kind: ResvType::DirectRelaxable,
    };
    assert!(!resv_conflict(&mut t, [relax]));
    // Zero length: only strictly inside the mapping.
    assert!(!resv_conflict(&mut t, [rsv(0x10000, 0)]));
    assert!(resv_conflict(&mut t, [rsv(0x10800, 0)]));
}

#[test]
fn sw_msi_detection() {
    // vfio_iommu_has_sw_msi: a real MSI region takes precedence
    let sw = ResvRegion {
        start: 0x800_0000,
        length: 0x10_0000,
        kind: ResvType::SwMsi,
    };
    let hw = ResvRegion {
        start: 0xfee0_0000,
        length: 0x10_0000,
        kind: ResvType::Msi,
    };
    assert_eq!(has_sw_msi([sw]), Some(0x800_0000));
    assert_eq!(has_sw_msi([sw, hw]), None);
    assert_eq!(has_sw_msi([rsv(0, 1)]), None);
}

#[test]
fn aper_expand_and_resv_refresh_on_detach() {
    // vfio_iommu_aper_expand + vfio_iommu_resv_refresh
    let mut buf = [VfioIova::default(); 4];
    buf[0] = r(0x1000, 0xfedf_ffff);
    buf[1] = r(0xfef0_0000, (1 << 39) - 1);
    let mut l = IovaList::new(&mut buf, 2);
    aper_expand(&mut l, [(0, (1 << 48) - 1)]);
    assert_eq!(
        l.as_slice(),
        &[r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)]
    );
    // The remaining group has only the MSI hole.
    let msi = ResvRegion {
        start: 0xfee0_0000,
        length: 0x10_0000,
        kind: ResvType::Msi,
    };
    resv_refresh(&mut l, [msi]).unwrap();
    assert_eq!(
        l.as_slice(),
        &[r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)]
    );
    // No domain left: the aperture becomes everything.
    aper_expand(&mut l, []);
    resv_refresh(&mut l, []).unwrap();
    assert_eq!(l.as_slice(), &[r(0, u64::MAX)]);
    let mut empty: [VfioIova; 0] = [];
    assert_eq!(
        resv_refresh(&mut IovaList::new(&mut empty, 0), []),
        Err(EINVAL)
    );
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}
fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().unwrap())
}
fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes(b[o..o + 2].try_into().unwrap())
}

#[test]
fn get_info_short_argsz_is_einval() {
    // vfio_iommu_type1_get_info: info.argsz < minsz
    let mut out = vec![0u8; info_reply_len(0)];
    assert_eq!(build_info(&v2(), &[], 15, &mut out), Err(EINVAL));
}

#[test]
fn get_info_small_argsz_reports_needed_size() {
    // vfio_iommu_type1_get_info: argsz < sizeof(info) + caps.size -> set CAPS flag and argsz
    let iovas = [r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)];
    let need = 24 + 32 + 16 + 16 + 32;
    assert_eq!(info_reply_len(2), need);
    let mut out = vec![0xaau8; need];
    let n = build_info(&v2(), &iovas, 16, &mut out).unwrap();
    assert_eq!(n, 16);
    assert_eq!(rd32(&out, 0) as usize, need);
    assert_eq!(
        rd32(&out, 4),
        VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS
    );
    assert_eq!(rd64(&out, 8), PAGE_MASK);
    let n = build_info(&v2(), &iovas, 24, &mut out).unwrap();
    assert_eq!(n, 24);
    assert_eq!(rd32(&out, 16), 0, "cap_offset stays 0");
    let n = build_info(&v2(), &iovas, need as u32 - 1, &mut out).unwrap();
    assert_eq!(n, 24);
}

#[test]
fn get_info_full_capability_chain() {
    // vfio_iommu_type1_get_info: migration, dma_avail, iova range caps, shifted by sizeof(info)
    let mut i = v2();
    i.dma_avail = 1234;
    let iovas = [r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)];
    let need = info_reply_len(2);
    let mut out = vec![0xaau8; need + 8];
    let n = build_info(&i, &iovas, need as u32 + 8, &mut out).unwrap();
    assert_eq!(n, need);
    assert_eq!(
        rd32(&out, 0) as usize,
        need + 8,
        "argsz keeps the user's value"
    );
    assert_eq!(rd32(&out, 16), 24, "cap_offset");
    assert_eq!(rd32(&out, 20), 0, "pad");
    // Migration capability.
    assert_eq!((rd16(&out, 24), rd16(&out, 26), rd32(&out, 28)), (2, 1, 56));
    assert_eq!(rd32(&out, 32), 0);
    assert_eq!(rd64(&out, 40), 4096);
    assert_eq!(rd64(&out, 48), 1 << 28);
    // DMA avail capability.
    assert_eq!((rd16(&out, 56), rd16(&out, 58), rd32(&out, 60)), (3, 1, 72));
    assert_eq!(rd32(&out, 64), 1234);
    assert_eq!(rd32(&out, 68), 0, "padding is zeroed");
    // IOVA range capability.
    assert_eq!((rd16(&out, 72), rd16(&out, 74), rd32(&out, 76)), (1, 1, 0));
    assert_eq!(rd32(&out, 80), 2);
    assert_eq!((rd64(&out, 88), rd64(&out, 96)), (0, 0xfedf_ffff));
    assert_eq!(
        (rd64(&out, 104), rd64(&out, 112)),
        (0xfef0_0000, (1 << 48) - 1)
    );
}

#[test]
fn get_info_without_iova_list_has_no_iova_cap() {
    // vfio_iommu_iova_build_caps: empty list (mdev-only container) adds nothing
    let need = info_reply_len(0);
    assert_eq!(need, 24 + 48);
    let mut out = vec![0u8; need];
    let n = build_info(&v1(), &[], need as u32, &mut out).unwrap();
    assert_eq!(n, need);
    assert_eq!(rd32(&out, 60), 0, "dma avail is the last capability");
}

#[test]
fn get_info_small_output_buffer_is_enomem() {
    let mut out = vec![0u8; 10];
    assert_eq!(build_info(&v2(), &[], 100, &mut out), Err(ENOMEM));
}

#[test]
fn account_locked_vm_rules() {
    // __account_locked_vm
    assert_eq!(
        account_locked_vm(10, 5, true, false, 15).map(|l| l.locked_vm),
        Ok(15)
    );
    assert_eq!(account_locked_vm(10, 6, true, false, 15), Err(ENOMEM));
    assert_eq!(
        account_locked_vm(10, 6, true, true, 15).map(|l| l.locked_vm),
        Ok(16)
    );
    assert_eq!(
        account_locked_vm(10, 3, false, false, 0),
        Ok(LockedVm {
            locked_vm: 7,
            warn_underflow: false
        })
    );
    let under = account_locked_vm(2, 3, false, false, 0).unwrap();
    assert!(under.warn_underflow);
    assert_eq!(under.locked_vm, u64::MAX);
    assert_eq!(account_locked_vm(u64::MAX, 1, true, true, 0), Err(ENOMEM));
    assert_eq!(memlock_limit_pages(64 << 20), 16384);
    assert_eq!(dma_locked_vm_after(5, -2), 3);
}

#[test]
fn remote_pin_charge_rules() {
    // vfio_pin_pages_remote: reserved and already-pinned pages are free; others
    // are limited unless dma->lock_cap.
    let mut a = RemotePinAcct::default();
    a.page(true, false, false, 10, 10).unwrap();
    a.page(false, true, false, 10, 10).unwrap();
    assert_eq!(a.lock_acct, 0);
    assert_eq!(a.page(false, false, false, 10, 10), Err(ENOMEM));
    a.page(false, false, false, 8, 10).unwrap();
    a.page(false, false, false, 8, 10).unwrap();
    assert_eq!(a.page(false, false, false, 8, 10), Err(ENOMEM));
    a.page(false, false, true, 8, 10).unwrap();
    assert_eq!(a.lock_acct, 3);
    // vfio_unpin_pages_remote: vfio_lock_acct(dma, locked - unlocked)
    assert_eq!(unpin_remote_delta(5, 2), -3);
}
