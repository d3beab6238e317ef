//! UNMAP_DMA cases, each mirroring one check or rule of
//! `vfio_iommu_type1_unmap_dma()` / `vfio_dma_do_unmap()`.

mod common;

use common::*;
use type1_core::dirty::{dirty_pages_start, DIRTY_BITMAP_SIZE_MAX};
use type1_core::dma::DmaTree;
use type1_core::errno::*;
use type1_core::container::VfioIommu;
use type1_core::pin::VfioPfn;
use type1_core::uapi::*;
use type1_core::unmap::{
    check_unmap_args, check_unmap_bitmap, UnmapPlan, UnmapStep, UNMAP_MAX_RETRIES,
};

const ALL: u32 = VFIO_DMA_UNMAP_FLAG_ALL;
const VADDR: u32 = VFIO_DMA_UNMAP_FLAG_VADDR;
const DIRTY: u32 = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;

/// Maps `(iova, size)` pages (in units of PG) on a fresh container.
fn setup(iommu: VfioIommu, maps: &[(u64, u64)]) -> (HostTree, VfioIommu) {
    let mut t = HostTree::default();
    let mut i = iommu;
    for &(a, s) in maps {
        do_map(&mut t, &mut i, &[], map_args(a * PG, s * PG)).unwrap();
    }
    (t, i)
}

fn unmap(
    t: &mut HostTree,
    i: &mut VfioIommu,
    iova: u64,
    size: u64,
    flags: u32,
) -> Result<u64, Errno> {
    do_unmap(t, i, unmap_args(iova, size, flags), None, unpin_all).result
}

#[test]
fn unmap_dma_argsz_below_minsz_is_einval() {
    // vfio_iommu_type1_unmap_dma: unmap.argsz < minsz
    let mut u = unmap_args(0, PG, 0);
    u.argsz = DMA_UNMAP_MINSZ - 1;
    assert_eq!(check_unmap_args(&u), Err(EINVAL));
    u.argsz = DMA_UNMAP_MINSZ;
    assert_eq!(check_unmap_args(&u), Ok(()));
}

#[test]
fn unmap_dma_unknown_flag_is_einval() {
    // vfio_iommu_type1_unmap_dma: unmap.flags & ~mask
    for bit in 3..32 {
        assert_eq!(check_unmap_args(&unmap_args(0, PG, 1 << bit)), Err(EINVAL));
    }
}

#[test]
fn unmap_dma_dirty_bitmap_with_all_or_vaddr_is_einval() {
    // vfio_iommu_type1_unmap_dma: GET_DIRTY_BITMAP && (ALL | VADDR)
    assert_eq!(
        check_unmap_args(&unmap_args(0, 0, DIRTY | ALL)),
        Err(EINVAL)
    );
    assert_eq!(
        check_unmap_args(&unmap_args(0, PG, DIRTY | VADDR)),
        Err(EINVAL)
    );
    assert_eq!(check_unmap_args(&unmap_args(0, 0, ALL | VADDR)), Ok(()));
}

#[test]
fn unmap_dma_dirty_bitmap_short_argsz_is_einval() {
    // vfio_iommu_type1_unmap_dma: unmap.argsz < minsz + sizeof(bitmap)
    let mut u = unmap_args(0, PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ - 1;
    assert_eq!(check_unmap_bitmap(&u, None, true), Err(EINVAL));
    u.argsz = UNMAP_BITMAP_ARGSZ;
    assert_eq!(check_unmap_bitmap(&u, None, true), Ok(()));
}

#[test]
fn unmap_dma_dirty_bitmap_access_not_ok_is_einval() {
    // vfio_iommu_type1_unmap_dma: !access_ok(bitmap.data, bitmap.size)
    let mut u = unmap_args(0, PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ;
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(PG, 8)), false),
        Err(EINVAL)
    );
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(PG, 8)), true),
        Ok(())
    );
}

#[test]
fn unmap_dma_dirty_bitmap_size_checks_are_einval() {
    // vfio_iommu_type1_unmap_dma -> verify_bitmap_size()
    let mut u = unmap_args(0, 128 * PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ;
    // bitmap_size == 0
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(PG, 0)), true),
        Err(EINVAL)
    );
    // bitmap smaller than DIRTY_BITMAP_BYTES(npages): 128 pages need 16 bytes.
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(PG, 15)), true),
        Err(EINVAL)
    );
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(PG, 16)), true),
        Ok(())
    );
    // bitmap_size > DIRTY_BITMAP_SIZE_MAX
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(PG, DIRTY_BITMAP_SIZE_MAX + 1)), true),
        Err(EINVAL)
    );
    // npages == 0: size smaller than the bitmap page size.
    let mut u0 = unmap_args(0, PG / 2, DIRTY);
    u0.argsz = UNMAP_BITMAP_ARGSZ;
    assert_eq!(
        check_unmap_bitmap(&u0, Some(&bitmap_args(PG, 8)), true),
        Err(EINVAL)
    );
    // pgsize == 0 (undefined __ffs in C) ends in EINVAL.
    assert_eq!(
        check_unmap_bitmap(&u, Some(&bitmap_args(0, 16)), true),
        Err(EINVAL)
    );
}

#[test]
fn unmap_dma_vaddr_with_emulated_groups_is_ebusy_first() {
    // vfio_dma_do_unmap: invalidate_vaddr && !list_empty(&emulated_iommu_groups)
    let mut i = v2();
    i.has_emulated_groups = true;
    // EBUSY even though the iova is also unaligned (checked later).
    assert_eq!(UnmapPlan::new(&i, &unmap_args(1, PG, VADDR), 0), Err(EBUSY));
    // Without VADDR the emulated groups do not matter.
    assert!(UnmapPlan::new(&i, &unmap_args(0, PG, 0), 0).is_ok());
}

#[test]
fn unmap_dma_unaligned_iova_is_einval() {
    // vfio_dma_do_unmap: iova & (pgsize - 1)
    let i = v2();
    assert_eq!(
        UnmapPlan::new(&i, &unmap_args(0x800, PG, 0), 0),
        Err(EINVAL)
    );
}

#[test]
fn unmap_dma_all_with_iova_or_size_is_einval() {
    // vfio_dma_do_unmap: unmap_all && (iova || size)
    let i = v2();
    assert_eq!(UnmapPlan::new(&i, &unmap_args(PG, 0, ALL), 0), Err(EINVAL));
    assert_eq!(UnmapPlan::new(&i, &unmap_args(0, PG, ALL), 0), Err(EINVAL));
    assert_eq!(
        UnmapPlan::new(&i, &unmap_args(0, 0, ALL), 0).map(|p| p.size()),
        Ok(u64::MAX)
    );
}

#[test]
fn unmap_dma_zero_size_is_einval() {
    // vfio_dma_do_unmap: !size
    let i = v2();
    assert_eq!(UnmapPlan::new(&i, &unmap_args(0, 0, 0), 0), Err(EINVAL));
    assert_eq!(UnmapPlan::new(&v1(), &unmap_args(0, 0, 0), 0), Err(EINVAL));
}

#[test]
fn unmap_dma_unaligned_size_is_einval() {
    // vfio_dma_do_unmap: size & (pgsize - 1)
    let i = v2();
    assert_eq!(
        UnmapPlan::new(&i, &unmap_args(0, PG + 512, 0), 0),
        Err(EINVAL)
    );
}

#[test]
fn unmap_dma_wrapping_range_is_einval() {
    // vfio_dma_do_unmap: iova + size - 1 < iova
    let i = v2();
    assert_eq!(
        UnmapPlan::new(&i, &unmap_args(u64::MAX - PG + 1, 2 * PG, 0), 0),
        Err(EINVAL)
    );
    assert!(UnmapPlan::new(&i, &unmap_args(u64::MAX - PG + 1, PG, 0), 0).is_ok());
}

#[test]
fn unmap_dma_dirty_bitmap_without_tracking_is_einval() {
    // vfio_dma_do_unmap: GET_DIRTY_BITMAP && !iommu->dirty_page_tracking
    let (mut t, mut i) = setup(v2(), &[(0, 1)]);
    let mut u = unmap_args(0, PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ;
    let mut ub = VecBitmap::new(1);
    let o = do_unmap(
        &mut t,
        &mut i,
        u,
        Some((bitmap_args(PG, 8), &mut ub)),
        unpin_all,
    );
    assert_eq!(o.result, Err(EINVAL));
    assert_eq!(t.0.len(), 1);
}

#[test]
fn unmap_dma_dirty_bitmap_wrong_pgsize_is_einval() {
    // vfio_dma_do_unmap: bitmap->pgsize != pgsize
    let (mut t, mut i) = setup(v2(), &[(0, 2)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut u = unmap_args(0, 2 * PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ;
    let mut ub = VecBitmap::new(1);
    let o = do_unmap(
        &mut t,
        &mut i,
        u,
        Some((bitmap_args(2 * PG, 8), &mut ub)),
        unpin_all,
    );
    assert_eq!(o.result, Err(EINVAL));
    assert_eq!(t.0.len(), 1);
}

#[test]
fn unmap_dma_v2_bisect_at_start_is_einval() {
    // vfio_dma_do_unmap: v2, vfio_find_dma(iova, 1) && dma->iova != iova
    let (mut t, mut i) = setup(v2(), &[(0, 4), (8, 2)]);
    assert_eq!(unmap(&mut t, &mut i, PG, 16 * PG, 0), Err(EINVAL));
    assert_eq!(t.0.len(), 2);
}

#[test]
fn unmap_dma_v2_bisect_at_end_is_einval() {
    // vfio_dma_do_unmap: v2, vfio_find_dma(iova + size - 1, 0) && end mismatch
    let (mut t, mut i) = setup(v2(), &[(0, 4), (8, 4)]);
    assert_eq!(unmap(&mut t, &mut i, 0, 9 * PG, 0), Err(EINVAL));
    assert_eq!(t.0.len(), 2);
}

#[test]
fn unmap_dma_v2_no_mapping_in_range_is_success_zero() {
    // vfio_dma_do_unmap: v2 returns success with size 0 only if nothing is mapped there.
    let (mut t, mut i) = setup(v2(), &[(0, 4), (8, 4)]);
    assert_eq!(unmap(&mut t, &mut i, 4 * PG, 4 * PG, 0), Ok(0));
    assert_eq!(unmap(&mut t, &mut i, 100 * PG, PG, 0), Ok(0));
    assert_eq!(t.0.len(), 2);
}

#[test]
fn unmap_dma_v2_covering_several_mappings_returns_sum() {
    // vfio_dma_do_unmap: multiple mappings may be unmapped with one large range.
    let (mut t, mut i) = setup(v2(), &[(0, 4), (8, 2), (16, 1), (20, 3)]);
    let avail = i.dma_avail;
    assert_eq!(unmap(&mut t, &mut i, 0, 17 * PG, 0), Ok(7 * PG));
    assert_eq!(ranges(&t), vec![(20 * PG, 3 * PG)]);
    assert_eq!(i.dma_avail, avail + 3);
}

#[test]
fn unmap_dma_v1_offset_into_mapping_unmaps_nothing() {
    // vfio_dma_do_unmap: !iommu->v2 && iova > dma->iova -> break, success, size 0.
    let (mut t, mut i) = setup(v1(), &[(0, 4), (8, 2)]);
    assert_eq!(unmap(&mut t, &mut i, PG, 16 * PG, 0), Ok(0));
    // The later mapping inside the range survives too.
    assert_eq!(t.0.len(), 2);
}

#[test]
fn unmap_dma_v1_covering_first_iova_unmaps_whole_mapping() {
    // vfio_dma_do_unmap: v1, a request covering the first iova unmaps the entire range.
    let (mut t, mut i) = setup(v1(), &[(0, 4), (8, 8)]);
    assert_eq!(unmap(&mut t, &mut i, 8 * PG, PG, 0), Ok(8 * PG));
    assert_eq!(ranges(&t), vec![(0, 4 * PG)]);
    // Also when the request starts in a gap below the mapping.
    assert_eq!(unmap(&mut t, &mut i, 0, PG, 0), Ok(4 * PG));
    assert!(t.0.is_empty());
}

#[test]
fn unmap_dma_v1_start_in_gap_collects_mappings_starting_in_range() {
    // vfio_dma_do_unmap: v1 walks from vfio_find_dma_first_node() while dma->iova < iova + size.
    let (mut t, mut i) = setup(v1(), &[(2, 2), (6, 4), (12, 1)]);
    assert_eq!(unmap(&mut t, &mut i, PG, 6 * PG, 0), Ok(6 * PG));
    assert_eq!(ranges(&t), vec![(12 * PG, PG)]);
}

#[test]
fn unmap_dma_all_removes_everything_on_v1_and_v2() {
    // vfio_dma_do_unmap: VFIO_DMA_UNMAP_FLAG_ALL, size = U64_MAX
    for iommu in [v1(), v2()] {
        let (mut t, mut i) = setup(iommu, &[(0, 1), (5, 3), (100, 10)]);
        assert_eq!(unmap(&mut t, &mut i, 0, 0, ALL), Ok(14 * PG));
        assert!(t.0.is_empty());
        assert_eq!(i.dma_avail, 65535);
    }
}

#[test]
fn unmap_dma_vaddr_invalidates_without_unmapping() {
    // vfio_dma_do_unmap: invalidate_vaddr marks vaddr_invalid and counts the size.
    let (mut t, mut i) = setup(v2(), &[(0, 2), (4, 2)]);
    assert_eq!(unmap(&mut t, &mut i, 0, 8 * PG, VADDR), Ok(4 * PG));
    assert_eq!(t.0.len(), 2);
    assert_eq!(i.vaddr_invalid_count, 2);
    assert!(t.0.values().all(|e| e.dma.vaddr_invalid));
}

#[test]
fn unmap_dma_vaddr_twice_is_einval_and_rolls_back() {
    // vfio_dma_do_unmap: dma->vaddr_invalid already set -> undo this call's marks, -EINVAL
    let (mut t, mut i) = setup(v2(), &[(0, 2), (4, 2), (8, 2)]);
    assert_eq!(unmap(&mut t, &mut i, 8 * PG, 2 * PG, VADDR), Ok(2 * PG));
    assert_eq!(i.vaddr_invalid_count, 1);
    assert_eq!(unmap(&mut t, &mut i, 0, 10 * PG, VADDR), Err(EINVAL));
    assert_eq!(i.vaddr_invalid_count, 1);
    let flags: Vec<bool> = t.0.values().map(|e| e.dma.vaddr_invalid).collect();
    assert_eq!(flags, vec![false, false, true]);
}

#[test]
fn unmap_dma_all_vaddr_invalidates_everything() {
    // vfio_dma_do_unmap: ALL | VADDR
    let (mut t, mut i) = setup(v1(), &[(0, 2), (4, 2)]);
    assert_eq!(unmap(&mut t, &mut i, 0, 0, ALL | VADDR), Ok(4 * PG));
    assert_eq!(i.vaddr_invalid_count, 2);
}

#[test]
fn unmap_dma_vaddr_v2_bisect_is_still_einval() {
    // vfio_dma_do_unmap: the v2 bisect checks run before the vaddr branch.
    let (mut t, mut i) = setup(v2(), &[(0, 4)]);
    assert_eq!(unmap(&mut t, &mut i, PG, PG, VADDR), Err(EINVAL));
    assert_eq!(i.vaddr_invalid_count, 0);
}

#[test]
fn unmap_dma_of_invalid_vaddr_mapping_drops_invalid_count() {
    // vfio_remove_dma: if (dma->vaddr_invalid) iommu->vaddr_invalid_count--
    let (mut t, mut i) = setup(v2(), &[(0, 2), (4, 2)]);
    unmap(&mut t, &mut i, 0, 8 * PG, VADDR).unwrap();
    assert_eq!(unmap(&mut t, &mut i, 0, 2 * PG, 0), Ok(2 * PG));
    assert_eq!(i.vaddr_invalid_count, 1);
}

fn pin(t: &mut HostTree, iova: u64) {
    let key = *t.0.range(..=iova).next_back().unwrap().0;
    t.0.get_mut(&key).unwrap().pfns.0.insert(
        iova,
        VfioPfn {
            pin: 1,
            ref_count: 1,
        },
    );
}

#[test]
fn unmap_dma_with_pinned_pages_notifies_then_retries() {
    // vfio_dma_do_unmap: !RB_EMPTY_ROOT(&dma->pfn_list) -> vfio_notify_dma_unmap, goto again
    let (mut t, mut i) = setup(v2(), &[(0, 2), (4, 2), (8, 2)]);
    pin(&mut t, 4 * PG);
    let o = do_unmap(&mut t, &mut i, unmap_args(0, 10 * PG, 0), None, unpin_all);
    assert_eq!(o.result, Ok(6 * PG));
    assert_eq!(o.notifications, vec![(4 * PG, 2 * PG)]);
    assert_eq!(o.removed, vec![0, 4 * PG, 8 * PG]);
    assert!(t.0.is_empty());
}

#[test]
fn unmap_dma_pins_never_released_fails_after_bounded_retries() {
    // vfio_dma_do_unmap: BUG_ON(++retries > 10) becomes EBUSY here.
    let (mut t, mut i) = setup(v2(), &[(0, 2), (4, 2)]);
    pin(&mut t, 4 * PG);
    let o = do_unmap(&mut t, &mut i, unmap_args(0, 8 * PG, 0), None, ignore);
    assert_eq!(o.result, Err(EBUSY));
    assert_eq!(o.notifications.len() as u32, UNMAP_MAX_RETRIES + 1);
    // The mapping before the stuck one was already removed, as in C.
    assert_eq!(ranges(&t), vec![(4 * PG, 2 * PG)]);
}

#[test]
fn unmap_dma_retry_counter_resets_per_mapping() {
    // vfio_dma_do_unmap: dma_last != dma resets retries.
    let (mut t, mut i) = setup(v2(), &[(0, 1), (1, 1)]);
    pin(&mut t, 0);
    pin(&mut t, PG);
    let mut calls = 0;
    // Each mapping needs 10 notifications before its device lets go.
    let o = do_unmap(
        &mut t,
        &mut i,
        unmap_args(0, 2 * PG, 0),
        None,
        |t: &mut HostTree, iova, s| {
            calls += 1;
            if calls % 10 == 0 {
                unpin_all(t, iova, s);
            }
        },
    );
    assert_eq!(o.result, Ok(2 * PG));
    assert_eq!(o.notifications.len(), 20);
}

#[test]
fn unmap_dma_v2_checks_rerun_after_notification() {
    // vfio_dma_do_unmap: "goto again" re-runs the v2 checks after the lock was dropped.
    let (mut t, mut i) = setup(v2(), &[(0, 2)]);
    pin(&mut t, 0);
    let mut iommu2 = i.clone();
    let o = do_unmap(
        &mut t,
        &mut i,
        unmap_args(0, 4 * PG, 0),
        None,
        |t: &mut HostTree, iova, s| {
            unpin_all(t, iova, s);
            // Another thread maps a range straddling the request end meanwhile.
            do_map(t, &mut iommu2, &[], map_args(3 * PG, 2 * PG)).unwrap();
        },
    );
    assert_eq!(o.result, Err(EINVAL));
    assert_eq!(t.0.len(), 2);
}

#[test]
fn unmap_dma_plan_after_done_is_inert() {
    // The state machine must not restart the search after it finished.
    let (mut t, mut i) = setup(v2(), &[(0, 1)]);
    let mut plan = UnmapPlan::new(&i, &unmap_args(0, PG, 0), 0).unwrap();
    assert!(matches!(
        plan.step::<_, VecBitmap>(&mut t, &mut i, None),
        UnmapStep::Removed(_)
    ));
    assert!(matches!(
        plan.step::<_, VecBitmap>(&mut t, &mut i, None),
        UnmapStep::Done
    ));
    do_map(&mut t, &mut i, &[], map_args(0, PG)).unwrap();
    assert!(matches!(
        plan.step::<_, VecBitmap>(&mut t, &mut i, None),
        UnmapStep::Done
    ));
    assert_eq!(plan.unmapped(), PG);
    assert_eq!(t.0.len(), 1);
}

#[test]
fn unmap_dma_with_dirty_bitmap_reports_then_removes() {
    // vfio_dma_do_unmap: update_user_bitmap() before vfio_remove_dma()
    let (mut t, mut i) = setup(v2(), &[(2, 3), (70, 2)]);
    i.num_non_pinned_groups = 0;
    dirty_pages_start(&mut t, &mut i).unwrap();
    pin(&mut t, 3 * PG);
    // A well-behaved device unpins on notification; the pin already marked the bit.
    t.0.get_mut(&(2 * PG)).unwrap().bitmap.as_mut().unwrap()[0] |= 1 << 1;
    t.0.get_mut(&(70 * PG)).unwrap().bitmap.as_mut().unwrap()[0] |= 1 << 1;
    let mut u = unmap_args(0, 128 * PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ;
    let mut ub = VecBitmap::new(2);
    let o = do_unmap(
        &mut t,
        &mut i,
        u,
        Some((bitmap_args(PG, 16), &mut ub)),
        unpin_all,
    );
    assert_eq!(o.result, Ok(5 * PG));
    let set: Vec<u64> = (0..128).filter(|b| ub.bit(*b)).collect();
    assert_eq!(set, vec![3, 71]);
}

#[test]
fn unmap_dma_with_dirty_bitmap_fault_stops_with_efault() {
    // vfio_dma_do_unmap: update_user_bitmap() fails -> break with its error
    let (mut t, mut i) = setup(v2(), &[(0, 1), (1, 1)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut u = unmap_args(0, 2 * PG, DIRTY);
    u.argsz = UNMAP_BITMAP_ARGSZ;
    let mut ub = VecBitmap::new(1);
    ub.fail = true;
    let o = do_unmap(
        &mut t,
        &mut i,
        u,
        Some((bitmap_args(PG, 8), &mut ub)),
        unpin_all,
    );
    assert_eq!(o.result, Err(EFAULT));
    assert_eq!(t.0.len(), 2);
}

#[test]
fn unmap_dma_mapping_ending_at_top_of_address_space_is_found() {
    // vfio_find_dma_first_node: exact arithmetic where C's iova + size wraps to 0.
    let mut t = HostTree::default();
    let mut i = v2();
    let mut m = map_args(u64::MAX - 2 * PG + 1, 2 * PG);
    m.vaddr = 0x10000;
    do_map(&mut t, &mut i, &[], m).unwrap();
    // A second overlapping map is refused.
    let mut m2 = map_args(u64::MAX - PG + 1, PG);
    m2.vaddr = 0x10000;
    assert_eq!(do_map(&mut t, &mut i, &[], m2), Err(EEXIST));
    assert_eq!(
        unmap(&mut t, &mut i, u64::MAX - 2 * PG + 1, 2 * PG, 0),
        Ok(2 * PG)
    );
}

#[test]
fn unmap_dma_missing_user_bitmap_is_einval() {
    // A plan carrying GET_DIRTY_BITMAP must be given the user bitmap.
    let (mut t, mut i) = setup(v2(), &[(0, 1)]);
    dirty_pages_start(&mut t, &mut i).unwrap();
    let mut plan = UnmapPlan::new(&i, &unmap_args(0, PG, DIRTY), PG).unwrap();
    assert!(matches!(
        plan.step::<_, VecBitmap>(&mut t, &mut i, None),
        UnmapStep::Failed(EINVAL)
    ));
    assert!(t.get(0).is_some());
}
