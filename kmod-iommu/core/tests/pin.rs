//! Pin/unpin and dma_rw cases mirroring `vfio_pin_pages()`,
//! `vfio_device_container_pin_pages()`, `vfio_iommu_type1_pin_pages()`,
//! `vfio_iommu_type1_unpin_pages()` and `vfio_iommu_type1_dma_rw*()`.

mod common;

use common::*;
use type1_core::dma::DmaTree;
use type1_core::errno::*;
use type1_core::container::VfioIommu;
use type1_core::pin::*;
use type1_core::uapi::*;

fn setup(maps: &[(u64, u64, u32)]) -> (HostTree, VfioIommu) {
    let mut t = HostTree::default();
    let mut i = v2();
    i.has_devices = true;
    for &(a, s, flags) in maps {
        let mut m = map_args(a * PG, s * PG);
        m.flags = flags;
        do_map(&mut t, &mut i, &[], m).unwrap();
    }
    (t, i)
}

const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;

fn refs(t: &HostTree, key: u64, iova: u64) -> Option<u32> {
    t.0[&key].pfns.0.get(&iova).map(|v| v.ref_count)
}

#[test]
fn vfio_pin_pages_argument_checks() {
    // vfio_pin_pages: !pages || !npage -> -EINVAL; !device->ops->dma_unmap -> -EINVAL
    assert_eq!(vfio_pin_pages_check(1, false, true), Err(EINVAL));
    assert_eq!(vfio_pin_pages_check(0, true, true), Err(EINVAL));
    assert_eq!(vfio_pin_pages_check(1, true, false), Err(EINVAL));
    // vfio_device_container_pin_pages: npage > VFIO_PIN_PAGES_MAX_ENTRIES -> -E2BIG
    assert_eq!(vfio_pin_pages_check(513, true, true), Err(E2BIG));
    assert_eq!(
        vfio_pin_pages_check(VFIO_PIN_PAGES_MAX_ENTRIES, true, true),
        Ok(())
    );
    // The dma_unmap check precedes E2BIG.
    assert_eq!(vfio_pin_pages_check(513, true, false), Err(EINVAL));
}

#[test]
fn pin_pages_on_v1_is_eacces() {
    // vfio_iommu_type1_pin_pages: !iommu->v2 -> -EACCES
    let mut t = HostTree::default();
    let mut i = v1();
    i.has_devices = true;
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]),
        Err(EACCES)
    );
}

#[test]
fn pin_pages_with_invalid_vaddr_is_ebusy() {
    // vfio_iommu_type1_pin_pages: WARN_ONCE(iommu->vaddr_invalid_count) -> -EBUSY
    let (mut t, mut i) = setup(&[(0, 4, RW)]);
    i.vaddr_invalid_count = 1;
    i.has_devices = false;
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]),
        Err(EBUSY)
    );
}

#[test]
fn pin_pages_without_registered_device_is_einval() {
    // vfio_iommu_type1_pin_pages: list_empty(&iommu->device_list) -> -EINVAL
    let (mut t, mut i) = setup(&[(0, 4, RW)]);
    i.has_devices = false;
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]),
        Err(EINVAL)
    );
}

#[test]
fn pin_pages_unmapped_iova_is_einval_and_unwinds() {
    // vfio_iommu_type1_pin_pages: !vfio_find_dma() -> -EINVAL, goto pin_unwind
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin::default();
    let mut pages = [7u64; 3];
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 3, IOMMU_READ, &mut pages),
        Err(EINVAL)
    );
    assert_eq!(pages, [0, 0, 0]);
    assert!(t.0[&0].pfns.0.is_empty());
    assert!(ops.page_refs.values().all(|r| *r == 0));
    assert_eq!(ops.locked, 0);
}

#[test]
fn pin_pages_prot_mismatch_is_eperm() {
    // vfio_iommu_type1_pin_pages: (dma->prot & prot) != prot -> -EPERM
    let (mut t, mut i) = setup(&[(0, 2, VFIO_DMA_MAP_FLAG_READ)]);
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_WRITE, &mut [0]),
        Err(EPERM)
    );
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]),
        Ok(1)
    );
}

#[test]
fn pin_pages_again_takes_a_reference() {
    // vfio_iova_get_vfio_pfn: an already pinned iova only gets ref_count++
    let (mut t, mut i) = setup(&[(0, 4, RW)]);
    let mut ops = MockPin::default();
    let mut p1 = [0u64; 2];
    let mut p2 = [0u64; 1];
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, PG, 2, IOMMU_READ, &mut p1),
        Ok(2)
    );
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, PG, 1, IOMMU_READ, &mut p2),
        Ok(1)
    );
    assert_eq!(p1[0], p2[0]);
    assert_eq!(ops.pin_calls, 2);
    assert_eq!(refs(&t, 0, PG), Some(2));
    assert_eq!(refs(&t, 0, 2 * PG), Some(1));
    assert_eq!(ops.locked, 2);
}

#[test]
fn unpin_pages_frees_at_zero_and_unaccounts() {
    // vfio_iova_put_vfio_pfn: ref_count-- and put_pfn + remove at zero;
    // vfio_unpin_page_external: vfio_lock_acct(dma, -unlocked)
    let (mut t, mut i) = setup(&[(0, 4, RW)]);
    let mut ops = MockPin::default();
    pin_pages(&mut t, &mut i, &mut ops, PG, 1, IOMMU_READ, &mut [0]).unwrap();
    pin_pages(&mut t, &mut i, &mut ops, PG, 1, IOMMU_READ, &mut [0]).unwrap();
    assert_eq!(unpin_pages(&mut t, &i, &mut ops, PG, 1), 1);
    assert_eq!(refs(&t, 0, PG), Some(1));
    assert_eq!(ops.locked, 1);
    assert_eq!(unpin_pages(&mut t, &i, &mut ops, PG, 1), 1);
    assert_eq!(refs(&t, 0, PG), None);
    assert_eq!(ops.locked, 0);
    assert!(ops.page_refs.values().all(|r| *r == 0));
    // Unpinning a page that is mapped but not pinned is a no-op.
    assert_eq!(unpin_pages(&mut t, &i, &mut ops, PG, 1), 1);
    assert_eq!(ops.locked, 0);
}

#[test]
fn unpin_pages_stops_at_unmapped_page() {
    // vfio_iommu_type1_unpin_pages: if (!dma) break; WARN_ON(i != npage)
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin::default();
    pin_pages(&mut t, &mut i, &mut ops, 0, 2, IOMMU_READ, &mut [0, 0]).unwrap();
    assert_eq!(unpin_pages(&mut t, &i, &mut ops, PG, 3), 1);
    assert_eq!(refs(&t, 0, 0), Some(1));
    assert_eq!(refs(&t, 0, PG), None);
}

#[test]
fn unpin_pages_on_v1_does_nothing() {
    // vfio_iommu_type1_unpin_pages: WARN_ON(!iommu->v2) return
    let (mut t, _) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin::default();
    assert_eq!(unpin_pages(&mut t, &v1(), &mut ops, 0, 1), 0);
}

#[test]
fn unpin_pages_check_bounds() {
    // vfio_device_container_unpin_pages: WARN_ON(npage <= 0 || npage > MAX)
    assert!(!vfio_unpin_pages_check(0));
    assert!(!vfio_unpin_pages_check(-1));
    assert!(!vfio_unpin_pages_check(513));
    assert!(vfio_unpin_pages_check(512));
}

#[test]
fn pin_pages_no_accounting_with_iommu_domain() {
    // vfio_iommu_type1_pin_pages: do_accounting = list_empty(&iommu->domain_list)
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    i.has_domains = true;
    let mut ops = MockPin::default();
    pin_pages(&mut t, &mut i, &mut ops, 0, 2, IOMMU_READ, &mut [0, 0]).unwrap();
    assert_eq!(ops.locked, 0);
    unpin_pages(&mut t, &i, &mut ops, 0, 2);
    assert_eq!(ops.locked, 0);
}

#[test]
fn pin_pages_external_pin_failure_unwinds() {
    // vfio_iommu_type1_pin_pages: vfio_pin_page_external() error -> pin_unwind
    let (mut t, mut i) = setup(&[(0, 4, RW)]);
    let vaddr_of_page2 = t.get(0).unwrap().dma.vaddr + 2 * PG;
    let mut ops = MockPin {
        fail_vaddr: Some((vaddr_of_page2, ENODEV)),
        ..MockPin::default()
    };
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 4, IOMMU_READ, &mut [0; 4]),
        Err(ENODEV)
    );
    assert!(t.0[&0].pfns.0.is_empty());
    assert_eq!(ops.locked, 0);
    assert!(ops.page_refs.values().all(|r| *r == 0));
}

#[test]
fn pin_pages_unwind_keeps_earlier_references() {
    // pin_unwind only drops the references taken by this call.
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin::default();
    pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]).unwrap();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 3, IOMMU_READ, &mut [0; 3]),
        Err(EINVAL)
    );
    assert_eq!(refs(&t, 0, 0), Some(1));
    assert_eq!(refs(&t, 0, PG), None);
    assert_eq!(ops.locked, 1);
}

#[test]
fn pin_pages_invalid_pfn_is_einval() {
    // vfio_iommu_type1_pin_pages: !pfn_valid(phys_pfn) -> -EINVAL
    let (mut t, mut i) = setup(&[(0, 1, RW)]);
    let pfn = t.get(0).unwrap().dma.vaddr >> 12;
    let mut ops = MockPin {
        invalid_pfns: vec![pfn],
        ..MockPin::default()
    };
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]),
        Err(EINVAL)
    );
    assert!(t.0[&0].pfns.0.is_empty());
}

#[test]
fn pin_pages_list_alloc_failure_puts_page() {
    // vfio_iommu_type1_pin_pages: vfio_add_to_pfn_list() -ENOMEM -> put_pfn + vfio_lock_acct(-1)
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin {
        slots: Some(1),
        ..MockPin::default()
    };
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 2, IOMMU_READ, &mut [0; 2]),
        Err(ENOMEM)
    );
    assert_eq!(ops.locked, 0);
    assert!(ops.page_refs.values().all(|r| *r == 0));
    assert!(t.0[&0].pfns.0.is_empty());
}

#[test]
fn pin_pages_promotes_group_dirty_scope_once() {
    // vfio_iommu_type1_pin_pages: !group->pinned_page_dirty_scope -> num_non_pinned_groups--
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    i.num_non_pinned_groups = 2;
    let mut ops = MockPin::default();
    pin_pages(&mut t, &mut i, &mut ops, 0, 1, IOMMU_READ, &mut [0]).unwrap();
    pin_pages(&mut t, &mut i, &mut ops, PG, 1, IOMMU_READ, &mut [0]).unwrap();
    assert_eq!(i.num_non_pinned_groups, 1);
    // A failed pin does not promote.
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    i.num_non_pinned_groups = 2;
    let mut ops = MockPin::default();
    let _ = pin_pages(&mut t, &mut i, &mut ops, 10 * PG, 1, IOMMU_READ, &mut [0]);
    assert_eq!(i.num_non_pinned_groups, 2);
}

#[test]
fn pin_pages_negative_npage_pins_nothing() {
    // vfio_iommu_type1_pin_pages: for (i = 0; i < npage; i++) with npage < 0; ret = i = 0
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, -3, IOMMU_READ, &mut []),
        Ok(0)
    );
    assert_eq!(ops.pin_calls, 0);
}

#[test]
fn pin_pages_across_adjacent_mappings() {
    // vfio_iommu_type1_pin_pages: each page looks up its own vfio_dma.
    let (mut t, mut i) = setup(&[(0, 1, RW), (1, 1, RW)]);
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 2, IOMMU_READ, &mut [0; 2]),
        Ok(2)
    );
    assert_eq!(refs(&t, 0, 0), Some(1));
    assert_eq!(refs(&t, PG, PG), Some(1));
}

#[test]
fn pin_pages_short_page_array_is_einval() {
    // Hardening: the output array must hold npage entries.
    let (mut t, mut i) = setup(&[(0, 2, RW)]);
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, 0, 2, IOMMU_READ, &mut [0]),
        Err(EINVAL)
    );
    assert_eq!(ops.pin_calls, 0);
}

#[test]
fn pin_pages_unaligned_iova_below_mapping_is_einval() {
    // Deviation from vfio_iommu_type1_pin_pages: C would use a negative offset.
    let (mut t, mut i) = setup(&[(1, 2, RW)]);
    let mut ops = MockPin::default();
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, PG - 8, 1, IOMMU_READ, &mut [0]),
        Err(EINVAL)
    );
    assert_eq!(ops.pin_calls, 0);
    // Unaligned inside the mapping is keyed by the exact iova, as in C.
    assert_eq!(
        pin_pages(&mut t, &mut i, &mut ops, PG + 8, 1, IOMMU_READ, &mut [0]),
        Ok(1)
    );
    assert_eq!(refs(&t, PG, PG + 8), Some(1));
}

#[test]
fn dma_rw_checks() {
    // vfio_dma_rw: !data || len <= 0 -> -EINVAL
    assert_eq!(vfio_dma_rw_check(false, 1), Err(EINVAL));
    assert_eq!(vfio_dma_rw_check(true, 0), Err(EINVAL));
    // vfio_iommu_type1_dma_rw: vaddr_invalid_count -> -EBUSY
    let mut i = v2();
    i.vaddr_invalid_count = 1;
    assert_eq!(dma_rw_check(&i), Err(EBUSY));
}

#[test]
fn dma_rw_chunk_lookup_and_permissions() {
    // vfio_iommu_type1_dma_rw_chunk: !dma -> -EINVAL; write to RO or any access to
    // a mapping without IOMMU_READ -> -EPERM; count clipped to the mapping end
    let (mut t, _i) = setup(&[
        (0, 2, VFIO_DMA_MAP_FLAG_READ),
        (4, 2, VFIO_DMA_MAP_FLAG_WRITE),
        (8, 2, RW),
    ]);
    assert_eq!(dma_rw_chunk(&mut t, 3 * PG, 4, false), Err(EINVAL));
    assert_eq!(dma_rw_chunk(&mut t, 0, 4, true), Err(EPERM));
    assert_eq!(dma_rw_chunk(&mut t, 4 * PG, 4, true), Err(EPERM));
    assert_eq!(dma_rw_chunk(&mut t, 4 * PG, 4, false), Err(EPERM));
    let c = dma_rw_chunk(&mut t, 9 * PG + 16, 3 * PG, true).unwrap();
    assert_eq!((c.key, c.offset, c.count), (8 * PG, PG + 16, PG - 16));
    assert_eq!(c.vaddr, t.get(8 * PG).unwrap().dma.vaddr + PG + 16);
}

#[test]
fn put_and_get_vfio_pfn_helpers() {
    // vfio_iova_get_vfio_pfn / vfio_iova_put_vfio_pfn on a bare list
    let mut l = HostPfns::default();
    assert_eq!(get_vfio_pfn(&mut l, 0), None);
    assert_eq!(put_vfio_pfn(&mut l, 0), PutPfn::NotPinned);
    add_to_pfn_list(&mut l, (), 0, 42);
    assert_eq!(get_vfio_pfn(&mut l, 0), Some(42));
    assert_eq!(put_vfio_pfn(&mut l, 0), PutPfn::StillPinned);
    assert_eq!(put_vfio_pfn(&mut l, 0), PutPfn::Released(42));
    assert!(l.0.is_empty());
}

#[test]
fn pin_pages_pins_runs_in_one_call() {
    // Pages 1 and 3 are already pinned: the runs are [0], [2], [4, 5, 6, 7],
    // and the second mapping starts a run of its own.
    let (mut t, mut i) = setup(&[(0, 8, RW), (8, 2, RW)]);
    let mut ops = MockPin { batch: 16, ..MockPin::default() };
    pin_pages(&mut t, &mut i, &mut ops, PG, 1, IOMMU_READ, &mut [0]).unwrap();
    pin_pages(&mut t, &mut i, &mut ops, 3 * PG, 1, IOMMU_READ, &mut [0]).unwrap();
    ops.run_calls.clear();
    let mut pfns = [0; 10];
    assert_eq!(pin_pages(&mut t, &mut i, &mut ops, 0, 10, IOMMU_READ, &mut pfns), Ok(10));
    assert_eq!(ops.run_calls, [1, 1, 4, 2]);
    for (j, pfn) in pfns.iter().enumerate() {
        assert_eq!(*pfn, (t.0[&if j < 8 { 0 } else { 8 * PG }].dma.vaddr + (j as u64 % 8) * PG) >> 12);
    }
    assert_eq!(refs(&t, 0, PG), Some(2));
    assert_eq!(refs(&t, 0, 7 * PG), Some(1));
    assert_eq!(ops.locked, 10);
}

/// The same calls on a batching and a page-by-page backend: same results,
/// same pins, same accounting, same trees.
fn same_as_page_by_page(maps: &[(u64, u64, u32)], calls: &[(u64, i32, bool)], fail_page: Option<u64>, slots: Option<usize>) {
    let (mut t1, mut i1) = setup(maps);
    let (mut t2, mut i2) = (t1.clone(), i1.clone());
    let fail = fail_page.map(|p| (t1.0.values().next().map_or(0, |d| d.dma.vaddr - d.dma.iova) + p * PG, ENODEV));
    let mut one = MockPin { fail_vaddr: fail, slots, ..MockPin::default() };
    let mut run = MockPin { fail_vaddr: fail, slots, batch: 3, ..MockPin::default() };
    for &(page, n, unpin) in calls {
        if unpin {
            assert_eq!(unpin_pages(&mut t1, &i1, &mut one, page * PG, n), unpin_pages(&mut t2, &i2, &mut run, page * PG, n));
        } else {
            let (mut p1, mut p2) = (vec![0; n.max(0) as usize], vec![0; n.max(0) as usize]);
            let r1 = pin_pages(&mut t1, &mut i1, &mut one, page * PG, n, IOMMU_READ, &mut p1);
            let r2 = pin_pages(&mut t2, &mut i2, &mut run, page * PG, n, IOMMU_READ, &mut p2);
            assert_eq!(r1, r2, "pin {page} {n}");
            if r1.is_ok() {
                assert_eq!(p1, p2);
            }
        }
        assert_eq!(t1, t2);
        assert_eq!(i1, i2);
        assert_eq!(one.locked, run.locked);
        one.page_refs.retain(|_, r| *r != 0);
        run.page_refs.retain(|_, r| *r != 0);
        assert_eq!(one.page_refs, run.page_refs);
    }
}

#[test]
fn batched_pins_match_page_by_page() {
    let maps = [(0, 6, RW), (6, 3, RW), (12, 4, VFIO_DMA_MAP_FLAG_WRITE)];
    let calls = [(0, 4, false), (2, 5, false), (1, 2, true), (0, 9, false), (11, 3, false), (12, 2, false), (0, 9, true), (5, 4, false)];
    for fail in [None, Some(1), Some(3), Some(7)] {
        for slots in [None, Some(0), Some(2), Some(5), Some(9)] {
            same_as_page_by_page(&maps, &calls, fail, slots);
        }
    }
    // Every prefix and start, both kinds of calls.
    for a in 0..10 {
        for n in 1..8 {
            same_as_page_by_page(&maps, &[(a, n, false), (a + 1, n, false), (a, n, true)], Some(4), Some(6));
        }
    }
}
