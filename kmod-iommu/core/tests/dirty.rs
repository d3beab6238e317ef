//! DIRTY_PAGES cases mirroring `vfio_iommu_type1_dirty_pages()`,
//! `vfio_iova_dirty_bitmap()`, `update_user_bitmap()` and the bitmap helpers.

mod common;

use common::*;
use type1_core::dirty::*;
use type1_core::dma::{DmaEntry, DmaTree, VfioDma};
use type1_core::errno::*;
use type1_core::container::VfioIommu;
use type1_core::pin::{dma_rw_chunk, dma_rw_mark_dirty, VfioPfn};
use type1_core::uapi::*;

const START: u32 = VFIO_IOMMU_DIRTY_PAGES_FLAG_START;
const STOP: u32 = VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP;
const GET: u32 = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;

fn setup(maps: &[(u64, u64)]) -> (HostTree, VfioIommu) {
    let mut t = HostTree::default();
    let mut i = v2();
    for &(a, s) in maps {
        do_map(&mut t, &mut i, &[], map_args(a * PG, s * PG)).unwrap();
    }
    (t, i)
}

fn get(iova: u64, size: u64, bytes: u64) -> DirtyBitmapGet {
    DirtyBitmapGet {
        iova,
        size,
        bitmap: bitmap_args(PG, bytes),
    }
}

fn dirty(argsz: u32, flags: u32) -> DirtyBitmap {
    DirtyBitmap { argsz, flags }
}

#[test]
fn dirty_pages_on_v1_is_eacces() {
    // vfio_iommu_type1_dirty_pages: !iommu->v2 -> -EACCES before any argument check
    assert_eq!(dirty_pages_v2_check(&v1()), Err(EACCES));
    assert_eq!(dirty_pages_v2_check(&v2()), Ok(()));
}

#[test]
fn dirty_pages_short_argsz_or_unknown_flag_is_einval() {
    // vfio_iommu_type1_dirty_pages: dirty.argsz < minsz || dirty.flags & ~mask
    assert_eq!(check_dirty_args(&dirty(7, START)), Err(EINVAL));
    assert_eq!(check_dirty_args(&dirty(8, START | 8)), Err(EINVAL));
    assert_eq!(check_dirty_args(&dirty(8, 1 << 31)), Err(EINVAL));
}

#[test]
fn dirty_pages_requires_exactly_one_flag() {
    // vfio_iommu_type1_dirty_pages: __ffs(flags) != __fls(flags), and no flag at all
    assert_eq!(check_dirty_args(&dirty(8, 0)), Err(EINVAL));
    assert_eq!(check_dirty_args(&dirty(8, START | STOP)), Err(EINVAL));
    assert_eq!(check_dirty_args(&dirty(8, STOP | GET)), Err(EINVAL));
    assert_eq!(check_dirty_args(&dirty(8, START)), Ok(DirtyOp::Start));
    assert_eq!(check_dirty_args(&dirty(8, STOP)), Ok(DirtyOp::Stop));
    assert_eq!(check_dirty_args(&dirty(8, GET)), Ok(DirtyOp::GetBitmap));
}

#[test]
fn dirty_pages_start_allocates_and_populates_pinned_pages() {
    // vfio_dma_bitmap_alloc_all + vfio_dma_populate_bitmap
    let (mut t, mut i) = setup(&[(0, 3), (10, 130)]);
    t.0.get_mut(&(10 * PG)).unwrap().pfns.0.insert(
        12 * PG,
        VfioPfn {
            pin: 5,
            ref_count: 1,
        },
    );
    dirty_pages_start(&mut t, &mut i).unwrap();
    assert!(i.dirty_page_tracking);
    let a = t.0[&0].bitmap.as_ref().unwrap();
    let b = t.0[&(10 * PG)].bitmap.as_ref().unwrap();
    // DIRTY_BITMAP_BYTES(npages) / 8 words plus the spare word.
    assert_eq!((a.len(), b.len()), (2, 4));
    assert!(a.iter().all(|w| *w == 0));
    assert_eq!(b[0], 1 << 2);
}

#[test]
fn dirty_pages_start_twice_keeps_bitmaps() {
    // vfio_iommu_type1_dirty_pages: START while tracking does nothing.
    let (mut t, mut i) = setup(&[(0, 3)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    t.0.get_mut(&0).unwrap().bitmap.as_mut().unwrap()[0] = 0b101;
    dirty_pages_start(&mut t, &mut i).unwrap();
    assert_eq!(t.0[&0].bitmap.as_ref().unwrap()[0], 0b101);
}

#[test]
fn dirty_pages_start_enomem_unwinds() {
    // vfio_dma_bitmap_alloc_all: on failure free the bitmaps allocated so far.
    let (mut t, mut i) = setup(&[(0, 1), (4, 1), (8, 1)]);
    t.0.get_mut(&(8 * PG)).unwrap().fail_alloc = true;
    assert_eq!(dirty_pages_start(&mut t, &mut i), Err(ENOMEM));
    assert!(!i.dirty_page_tracking);
    assert!(t.0.values().all(|e| e.bitmap.is_none()));
}

#[test]
fn dirty_pages_start_with_huge_mapping_is_einval() {
    // vfio_dma_bitmap_alloc: npages > DIRTY_BITMAP_PAGES_MAX
    let (mut t, mut i) = setup(&[(0, 1), (16, DIRTY_BITMAP_PAGES_MAX + 1)]);
    assert_eq!(dirty_pages_start(&mut t, &mut i), Err(EINVAL));
    assert!(!i.dirty_page_tracking);
    assert!(t.0.values().all(|e| e.bitmap.is_none()));
}

#[test]
fn dirty_pages_stop_frees_bitmaps() {
    // vfio_iommu_type1_dirty_pages: STOP -> vfio_dma_bitmap_free_all
    let (mut t, mut i) = setup(&[(0, 1), (4, 1)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    dirty_pages_stop(&mut t, &mut i);
    assert!(!i.dirty_page_tracking);
    assert!(t.0.values().all(|e| e.bitmap.is_none()));
}

#[test]
fn get_bitmap_argsz_without_range_is_einval() {
    // vfio_iommu_type1_dirty_pages: !data_size || data_size < sizeof(range)
    assert_eq!(check_get_bitmap_unlocked(8, None, true), Err(EINVAL));
    assert_eq!(check_get_bitmap_unlocked(8 + 39, None, true), Err(EINVAL));
    assert_eq!(check_get_bitmap_unlocked(8 + 40, None, true), Ok(()));
}

#[test]
fn get_bitmap_wrapping_range_is_einval() {
    // vfio_iommu_type1_dirty_pages: range.iova + range.size < range.iova
    let r = get(u64::MAX - PG + 1, PG, 8);
    assert_eq!(check_get_bitmap_unlocked(48, Some(&r), true), Err(EINVAL));
    let r = get(u64::MAX - 2 * PG + 1, PG, 8);
    assert_eq!(check_get_bitmap_unlocked(48, Some(&r), true), Ok(()));
}

#[test]
fn get_bitmap_access_not_ok_is_einval() {
    // vfio_iommu_type1_dirty_pages: !access_ok(range.bitmap.data, range.bitmap.size)
    assert_eq!(
        check_get_bitmap_unlocked(48, Some(&get(0, PG, 8)), false),
        Err(EINVAL)
    );
}

#[test]
fn get_bitmap_size_checks_are_einval() {
    // vfio_iommu_type1_dirty_pages -> verify_bitmap_size(range.size >> pgshift, bitmap.size)
    assert_eq!(
        check_get_bitmap_unlocked(48, Some(&get(0, 0, 8)), true),
        Err(EINVAL)
    );
    assert_eq!(
        check_get_bitmap_unlocked(48, Some(&get(0, 65 * PG, 8)), true),
        Err(EINVAL)
    );
    assert_eq!(
        check_get_bitmap_unlocked(48, Some(&get(0, 65 * PG, 16)), true),
        Ok(())
    );
    assert_eq!(
        check_get_bitmap_unlocked(48, Some(&get(0, PG, 0)), true),
        Err(EINVAL)
    );
    assert_eq!(
        check_get_bitmap_unlocked(48, Some(&get(0, PG, DIRTY_BITMAP_SIZE_MAX + 8)), true),
        Err(EINVAL)
    );
}

#[test]
fn get_bitmap_locked_checks_are_einval() {
    // vfio_iommu_type1_dirty_pages: pgsize != iommu_pgsize, iova/size alignment, !tracking
    let (mut t, mut i) = setup(&[(0, 4)]);
    let mut ub = VecBitmap::new(1);
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(0, 4 * PG, 8)),
        Err(EINVAL),
        "tracking off"
    );
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut r = get(0, 4 * PG, 8);
    r.bitmap.pgsize = 2 * PG;
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &r),
        Err(EINVAL),
        "pgsize"
    );
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(8, 4 * PG, 8)),
        Err(EINVAL),
        "iova"
    );
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(0, 4 * PG + 8, 8)),
        Err(EINVAL),
        "size"
    );
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(0, 0, 8)),
        Err(EINVAL),
        "zero size"
    );
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(0, 4 * PG, 8)),
        Ok(())
    );
}

#[test]
fn get_bitmap_bisecting_a_mapping_is_einval() {
    // vfio_iova_dirty_bitmap: the range must fully cover the mappings it touches.
    let (mut t, mut i) = setup(&[(4, 4)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut ub = VecBitmap::new(1);
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(5 * PG, 8 * PG, 8)),
        Err(EINVAL)
    );
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(0, 6 * PG, 8)),
        Err(EINVAL)
    );
    assert_eq!(
        iova_dirty_bitmap(&mut t, &i, &mut ub, &get(0, 8 * PG, 8)),
        Ok(())
    );
}

#[test]
fn get_bitmap_reports_all_pages_when_a_group_does_not_pin() {
    // update_user_bitmap: num_non_pinned_groups && dma->iommu_mapped -> bitmap_set(all)
    let (mut t, mut i) = setup(&[(1, 3), (70, 2)]);
    t.0.get_mut(&(PG)).unwrap().dma.iommu_mapped = true;
    dirty_pages_start(&mut t, &mut i).unwrap();
    i.num_non_pinned_groups = 1;
    let mut ub = VecBitmap::new(2);
    do_get_bitmap(&mut t, &i, get(0, 128 * PG, 16), &mut ub).unwrap();
    let set: Vec<u64> = (0..128).filter(|b| ub.bit(*b)).collect();
    // Only the IOMMU-mapped mapping is reported in full.
    assert_eq!(set, vec![1, 2, 3]);
    // Without non-pinned groups nothing is dirty (fresh state: a repeated
    // report of a shifted mapping would show the C stale bits, see below).
    let (mut t, mut i) = setup(&[(1, 3), (70, 2)]);
    t.0.get_mut(&(PG)).unwrap().dma.iommu_mapped = true;
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut ub = VecBitmap::new(2);
    do_get_bitmap(&mut t, &i, get(0, 128 * PG, 16), &mut ub).unwrap();
    assert!(ub.words.iter().all(|w| *w == 0));
}

#[test]
fn get_bitmap_rw_dirty_is_reported_once_pinned_stays() {
    // vfio_iova_dirty_bitmap: re-populate with pinned pages only after reporting.
    let (mut t, mut i) = setup(&[(0, 8)]);
    t.0.get_mut(&0).unwrap().pfns.0.insert(
        PG,
        VfioPfn {
            pin: 9,
            ref_count: 1,
        },
    );
    dirty_pages_start(&mut t, &mut i).unwrap();
    // vfio_iommu_type1_dma_rw_chunk: a 2-byte write straddling pages 4 and 5.
    let c = dma_rw_chunk(&mut t, 5 * PG - 1, 2, true).unwrap();
    dma_rw_mark_dirty(&i, t.get_mut(c.key).unwrap(), c.offset, 2);
    let mut ub = VecBitmap::new(1);
    do_get_bitmap(&mut t, &i, get(0, 8 * PG, 8), &mut ub).unwrap();
    assert_eq!(ub.words[0], 0b11_0010);
    let mut ub = VecBitmap::new(1);
    do_get_bitmap(&mut t, &i, get(0, 8 * PG, 8), &mut ub).unwrap();
    assert_eq!(ub.words[0], 0b10);
}

#[test]
fn get_bitmap_user_fault_is_efault() {
    // update_user_bitmap: copy_to_user failure -> -EFAULT
    let (mut t, mut i) = setup(&[(0, 8)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut ub = VecBitmap::new(1);
    ub.fail = true;
    assert_eq!(
        do_get_bitmap(&mut t, &i, get(0, 8 * PG, 8), &mut ub),
        Err(EFAULT)
    );
}

#[test]
fn update_user_bitmap_shift_ors_whole_leftover_word() {
    // update_user_bitmap: bitmap_or(dma->bitmap, dma->bitmap, &leftover, shift) ORs a whole long.
    let dma = VfioDma {
        iova: 3 * PG,
        size: 2 * PG,
        ..VfioDma::default()
    };
    let mut bm = vec![0b11, 0];
    let mut ub = VecBitmap::new(1);
    ub.words[0] = 0xf000_0000_0000_0004;
    update_user_bitmap(&mut ub, &mut bm, &dma, 0, 12, false).unwrap();
    assert_eq!(ub.words[0], 0xf000_0000_0000_0004 | (0b11 << 3));
}

#[test]
fn update_user_bitmap_without_shift_overwrites_whole_words() {
    // update_user_bitmap: copy_to_user of DIRTY_BITMAP_BYTES(nbits + shift) bytes.
    let dma = VfioDma {
        iova: 64 * PG,
        size: 2 * PG,
        ..VfioDma::default()
    };
    let mut bm = vec![0b01, 0];
    let mut ub = VecBitmap::new(2);
    ub.words = vec![u64::MAX, u64::MAX];
    update_user_bitmap(&mut ub, &mut bm, &dma, 0, 12, false).unwrap();
    assert_eq!(ub.words, vec![u64::MAX, 1]);
}

#[test]
fn update_user_bitmap_crossing_words() {
    // update_user_bitmap + __bitmap_shift_left across a word boundary.
    let dma = VfioDma {
        iova: 60 * PG,
        size: 70 * PG,
        ..VfioDma::default()
    };
    let mut bm = vec![0u64; 3];
    bitmap_set(&mut bm, 0, 70);
    let mut ub = VecBitmap::new(3);
    update_user_bitmap(&mut ub, &mut bm, &dma, 0, 12, false).unwrap();
    let set: Vec<u64> = (0..192).filter(|b| ub.bit(*b)).collect();
    assert_eq!(set, (60..130).collect::<Vec<_>>());
}

#[test]
fn update_user_bitmap_short_dma_bitmap_is_einval_not_overrun() {
    // Hardening: a bitmap without the spare word cannot be shifted in place.
    let dma = VfioDma {
        iova: 60 * PG,
        size: 64 * PG,
        ..VfioDma::default()
    };
    let mut bm = vec![0u64; 1];
    let mut ub = VecBitmap::new(3);
    assert_eq!(
        update_user_bitmap(&mut ub, &mut bm, &dma, 0, 12, false),
        Err(EINVAL)
    );
}

#[test]
fn get_bitmap_repeated_unaligned_report_mirrors_c_stale_bits() {
    // vfio_iova_dirty_bitmap: bitmap_clear(dma->bitmap, 0, nbits) after a
    // shifted copy leaves the shifted bits above nbits in place, so the next
    // report of the same mapping shows them beyond its end (an over-report
    // that the C reference has; kept for fidelity).
    let (mut t, mut i) = setup(&[(5, 3)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    t.0.get_mut(&(5 * PG)).unwrap().bitmap.as_mut().unwrap()[0] = 0b100;
    let mut ub = VecBitmap::new(1);
    do_get_bitmap(&mut t, &i, get(0, 64 * PG, 8), &mut ub).unwrap();
    assert_eq!(ub.words[0], 0b100 << 5);
    let mut ub = VecBitmap::new(1);
    do_get_bitmap(&mut t, &i, get(0, 64 * PG, 8), &mut ub).unwrap();
    assert_eq!(ub.words[0], 0b100 << 10);
}

#[test]
fn populate_bitmap_full_marks_everything() {
    // vfio_iommu_populate_bitmap_full
    let (mut t, mut i) = setup(&[(0, 3), (4, 65)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    populate_bitmap_full(&mut t, &i);
    assert_eq!(t.0[&0].bitmap.as_ref().unwrap()[0], 0b111);
    let b = t.0[&(4 * PG)].bitmap.as_ref().unwrap();
    assert_eq!((b[0], b[1], b[2]), (u64::MAX, 1, 0));
}

#[test]
fn dma_bitmap_words_matches_kvzalloc_size() {
    // vfio_dma_bitmap_alloc: DIRTY_BITMAP_BYTES(npages) + sizeof(u64)
    assert_eq!(dma_bitmap_words(PG, PG), Ok(2));
    assert_eq!(dma_bitmap_words(64 * PG, PG), Ok(2));
    assert_eq!(dma_bitmap_words(65 * PG, PG), Ok(3));
    assert_eq!(
        dma_bitmap_words(DIRTY_BITMAP_PAGES_MAX * PG, PG),
        Ok((1 << 25) + 1)
    );
    assert_eq!(
        dma_bitmap_words((DIRTY_BITMAP_PAGES_MAX + 1) * PG, PG),
        Err(EINVAL)
    );
}

#[test]
fn dirty_bitmap_constants_match_c() {
    // DIRTY_BITMAP_SIZE_MAX = DIRTY_BITMAP_BYTES(INT_MAX) = 256 MiB
    assert_eq!(DIRTY_BITMAP_SIZE_MAX, 1 << 28);
    assert_eq!(dirty_bitmap_bytes(0), 0);
    assert_eq!(dirty_bitmap_bytes(1), 8);
    assert_eq!(dirty_bitmap_bytes(64), 8);
    assert_eq!(dirty_bitmap_bytes(65), 16);
    assert_eq!(dirty_bitmap_bytes(u64::MAX), (u64::MAX / 64 + 1) * 8);
}

#[test]
fn pin_marks_dirty_while_tracking() {
    // vfio_iommu_type1_pin_pages: bitmap_set(dma->bitmap, (iova - dma->iova) >> pgshift, 1)
    let (mut t, mut i) = setup(&[(2, 4)]);
    i.has_devices = true;
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut ops = MockPin::default();
    let mut pages = [0u64; 1];
    type1_core::pin::pin_pages(&mut t, &mut i, &mut ops, 4 * PG, 1, IOMMU_READ, &mut pages)
        .unwrap();
    assert_eq!(t.0[&(2 * PG)].bitmap.as_ref().unwrap()[0], 0b100);
    assert_eq!(t.get(2 * PG).unwrap().pfn_list().0.len(), 1);
}

#[test]
fn detach_of_non_pinned_group_marks_all_dirty() {
    // vfio_iommu_type1_detach_group: update_dirty_scope -> num_non_pinned_groups--,
    // vfio_iommu_populate_bitmap_full() while tracking
    let (mut t, mut i) = setup(&[(0, 3)]);
    i.group_attached(false);
    i.group_attached(false);
    dirty_pages_start(&mut t, &mut i).unwrap();
    group_detached(&mut t, &mut i, true);
    assert_eq!(i.num_non_pinned_groups, 2);
    assert_eq!(t.0[&0].bitmap.as_ref().unwrap()[0], 0);
    group_detached(&mut t, &mut i, false);
    assert_eq!(i.num_non_pinned_groups, 1);
    assert_eq!(t.0[&0].bitmap.as_ref().unwrap()[0], 0b111);
}

#[test]
fn attach_checks_and_bookkeeping() {
    // vfio_iommu_type1_attach_group: vaddr_invalid_count -> -EBUSY, duplicate -> -EINVAL
    let mut i = v2();
    assert_eq!(i.attach_group_check(false), Ok(()));
    assert_eq!(i.attach_group_check(true), Err(EINVAL));
    i.vaddr_invalid_count = 1;
    assert_eq!(i.attach_group_check(true), Err(EBUSY));
    i.group_attached(true);
    assert!(i.has_emulated_groups);
    assert_eq!(i.num_non_pinned_groups, 0);
}
