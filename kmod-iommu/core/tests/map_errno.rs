//! MAP_DMA errno cases, each mirroring one check of
//! `vfio_iommu_type1_map_dma()` / `vfio_dma_do_map()`.

mod common;

use common::*;
use type1_core::dma::{remove_dma, DmaEntry, DmaTree};
use type1_core::errno::*;
use type1_core::iova::VfioIova;
use type1_core::map::{check_map_args, validate_map, MapPlan, NewDma};
use type1_core::uapi::*;

fn fresh() -> (HostTree, type1_core::container::VfioIommu) {
    (HostTree::default(), v2())
}

#[test]
fn map_dma_argsz_below_minsz_is_einval() {
    // vfio_iommu_type1_map_dma: map.argsz < minsz
    let mut m = map_args(0, PG);
    m.argsz = DMA_MAP_MINSZ - 1;
    assert_eq!(check_map_args(&m), Err(EINVAL));
    let (mut t, i) = fresh();
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
    m.argsz = DMA_MAP_MINSZ;
    assert!(validate_map(&mut t, &i, &[], &m).is_ok());
}

#[test]
fn map_dma_unknown_flag_is_einval() {
    // vfio_iommu_type1_map_dma: map.flags & ~mask
    let (mut t, i) = fresh();
    for bit in 3..32 {
        let mut m = map_args(0, PG);
        m.flags |= 1 << bit;
        assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL), "bit {bit}");
    }
}

#[test]
fn map_dma_unknown_flag_beats_other_errors() {
    // vfio_iommu_type1_map_dma runs before vfio_dma_do_map: an unknown flag
    // with an otherwise EEXIST request is EINVAL.
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(0, PG)).unwrap();
    let mut m = map_args(0, PG);
    m.flags |= 1 << 5;
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
}

#[test]
fn map_dma_without_read_or_write_is_einval() {
    // vfio_dma_do_map: !prot && !set_vaddr
    let (mut t, i) = fresh();
    let mut m = map_args(0, PG);
    m.flags = 0;
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
}

#[test]
fn map_dma_read_only_and_write_only_are_accepted_with_matching_prot() {
    // vfio_dma_do_map: READ/WRITE from device perspective
    let (mut t, i) = fresh();
    let mut m = map_args(0, PG);
    m.flags = VFIO_DMA_MAP_FLAG_READ;
    assert!(matches!(
        validate_map(&mut t, &i, &[], &m),
        Ok(MapPlan::New(NewDma {
            prot: IOMMU_READ,
            ..
        }))
    ));
    m.flags = VFIO_DMA_MAP_FLAG_WRITE;
    assert!(matches!(
        validate_map(&mut t, &i, &[], &m),
        Ok(MapPlan::New(NewDma {
            prot: IOMMU_WRITE,
            ..
        }))
    ));
}

#[test]
fn map_dma_vaddr_with_read_or_write_is_einval() {
    // vfio_dma_do_map: prot && set_vaddr
    let (mut t, i) = fresh();
    let mut m = map_args(0, PG);
    m.flags |= VFIO_DMA_MAP_FLAG_VADDR;
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
    m.flags = VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ;
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
}

#[test]
fn map_dma_zero_size_is_einval() {
    // vfio_dma_do_map: !size
    let (mut t, i) = fresh();
    assert_eq!(validate_map(&mut t, &i, &[], &map_args(0, 0)), Err(EINVAL));
}

#[test]
fn map_dma_unaligned_size_iova_vaddr_is_einval() {
    // vfio_dma_do_map: (size | iova | vaddr) & (pgsize - 1)
    let (mut t, i) = fresh();
    assert_eq!(
        validate_map(&mut t, &i, &[], &map_args(0, PG + 1)),
        Err(EINVAL)
    );
    assert_eq!(
        validate_map(&mut t, &i, &[], &map_args(0x800, PG)),
        Err(EINVAL)
    );
    let mut m = map_args(0, PG);
    m.vaddr += 8;
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
}

#[test]
fn map_dma_alignment_follows_min_pgsize_of_bitmap() {
    // vfio_dma_do_map: pgsize = 1 << __ffs(iommu->pgsize_bitmap)
    let (mut t, mut i) = fresh();
    i.pgsize_bitmap = (1 << 21) | (1 << 30);
    assert_eq!(validate_map(&mut t, &i, &[], &map_args(0, PG)), Err(EINVAL));
    assert_eq!(
        validate_map(&mut t, &i, &[], &map_args(PG, 1 << 21)),
        Err(EINVAL)
    );
    assert!(validate_map(&mut t, &i, &[], &map_args(1 << 21, 1 << 21)).is_ok());
}

#[test]
fn map_dma_iova_wrap_is_einval() {
    // vfio_dma_do_map: iova + size - 1 < iova
    let (mut t, i) = fresh();
    let m = map_args(u64::MAX - PG + 1, 2 * PG);
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
    // Ending exactly at 2^64 does not wrap: iova + size - 1 == U64_MAX.
    let mut m = map_args(u64::MAX - PG + 1, PG);
    m.vaddr = 0x1000;
    assert!(validate_map(&mut t, &i, &[], &m).is_ok());
}

#[test]
fn map_dma_vaddr_wrap_is_einval() {
    // vfio_dma_do_map: vaddr + size - 1 < vaddr
    let (mut t, i) = fresh();
    let mut m = map_args(0, 2 * PG);
    m.vaddr = u64::MAX - PG + 1;
    assert_eq!(validate_map(&mut t, &i, &[], &m), Err(EINVAL));
}

#[test]
fn map_dma_overlap_is_eexist() {
    // vfio_dma_do_map: vfio_find_dma(iommu, iova, size) -> -EEXIST
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(4 * PG, 4 * PG)).unwrap();
    for (iova, size) in [
        (4 * PG, 4 * PG),
        (3 * PG, 2 * PG),
        (7 * PG, 4 * PG),
        (5 * PG, PG),
        (0, 16 * PG),
    ] {
        assert_eq!(
            validate_map(&mut t, &i, &[], &map_args(iova, size)),
            Err(EEXIST),
            "{iova:#x}+{size:#x}"
        );
    }
    // Adjacent ranges do not overlap.
    assert!(validate_map(&mut t, &i, &[], &map_args(3 * PG, PG)).is_ok());
    assert!(validate_map(&mut t, &i, &[], &map_args(8 * PG, PG)).is_ok());
}

#[test]
fn map_dma_eexist_comes_before_enospc_and_iova_range() {
    // vfio_dma_do_map: the overlap test precedes dma_avail and iova_dma_valid.
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(0, PG)).unwrap();
    i.dma_avail = 0;
    let ranges = [VfioIova {
        start: 1 << 40,
        end: (1 << 41) - 1,
    }];
    assert_eq!(
        validate_map(&mut t, &i, &ranges, &map_args(0, PG)),
        Err(EEXIST)
    );
}

#[test]
fn map_dma_dma_avail_exhausted_is_enospc() {
    // vfio_dma_do_map: !iommu->dma_avail
    let mut t = HostTree::default();
    let mut i = type1_core::container::VfioIommu::open(VFIO_TYPE1V2_IOMMU, 2).unwrap();
    do_map(&mut t, &mut i, &[], map_args(0, PG)).unwrap();
    do_map(&mut t, &mut i, &[], map_args(PG, PG)).unwrap();
    assert_eq!(i.dma_avail, 0);
    assert_eq!(
        do_map(&mut t, &mut i, &[], map_args(2 * PG, PG)),
        Err(ENOSPC)
    );
    // Removing one gives the slot back (vfio_remove_dma: dma_avail++).
    remove_dma(&mut t, &mut i, 0).unwrap();
    assert_eq!(i.dma_avail, 1);
    assert!(do_map(&mut t, &mut i, &[], map_args(2 * PG, PG)).is_ok());
}

#[test]
fn map_dma_enospc_comes_before_iova_range_check() {
    // vfio_dma_do_map: dma_avail is tested before vfio_iommu_iova_dma_valid.
    let (mut t, mut i) = fresh();
    i.dma_avail = 0;
    let ranges = [VfioIova {
        start: 1 << 40,
        end: (1 << 41) - 1,
    }];
    assert_eq!(
        validate_map(&mut t, &i, &ranges, &map_args(0, PG)),
        Err(ENOSPC)
    );
}

#[test]
fn map_dma_outside_iova_ranges_is_einval() {
    // vfio_dma_do_map: !vfio_iommu_iova_dma_valid(iommu, iova, iova + size - 1)
    let (mut t, i) = fresh();
    let ranges = [
        VfioIova {
            start: 0,
            end: 0xfedf_ffff,
        },
        VfioIova {
            start: 0xfef0_0000,
            end: (1 << 48) - 1,
        },
    ];
    // Straddles the hole.
    assert_eq!(
        validate_map(&mut t, &i, &ranges, &map_args(0xfedf_f000, 2 * PG)),
        Err(EINVAL)
    );
    // Inside the hole.
    assert_eq!(
        validate_map(&mut t, &i, &ranges, &map_args(0xfee0_0000, PG)),
        Err(EINVAL)
    );
    // Beyond the aperture.
    assert_eq!(
        validate_map(&mut t, &i, &ranges, &map_args(1 << 48, PG)),
        Err(EINVAL)
    );
    // Ends exactly at a range end.
    assert!(validate_map(&mut t, &i, &ranges, &map_args(0xfedf_f000, PG)).is_ok());
    assert!(validate_map(&mut t, &i, &ranges, &map_args(0xfef0_0000, PG)).is_ok());
}

#[test]
fn map_dma_empty_iova_list_allows_everything() {
    // vfio_iommu_iova_dma_valid: list_empty(iova) -> true (mdev-only container)
    let (mut t, i) = fresh();
    let mut m = map_args(u64::MAX - PG + 1, PG);
    m.vaddr = 0;
    assert!(validate_map(&mut t, &i, &[], &m).is_ok());
}

#[test]
fn map_dma_vaddr_without_mapping_is_enoent() {
    // vfio_dma_do_map: set_vaddr && !dma -> -ENOENT
    let (mut t, i) = fresh();
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(0, PG, 0x1000)),
        Err(ENOENT)
    );
}

#[test]
fn map_dma_vaddr_on_valid_vaddr_is_einval() {
    // vfio_dma_do_map: set_vaddr && !dma->vaddr_invalid
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(0, 2 * PG)).unwrap();
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(0, 2 * PG, 0x1000)),
        Err(EINVAL)
    );
}

#[test]
fn map_dma_vaddr_must_match_iova_and_size() {
    // vfio_dma_do_map: dma->iova != iova || dma->size != size
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(2 * PG, 2 * PG)).unwrap();
    let o = do_unmap(
        &mut t,
        &mut i,
        unmap_args(2 * PG, 2 * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        None,
        ignore,
    );
    assert_eq!(o.result, Ok(2 * PG));
    assert_eq!(i.vaddr_invalid_count, 1);
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(2 * PG, PG, 0x1000)),
        Err(EINVAL)
    );
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(3 * PG, PG, 0x1000)),
        Err(EINVAL)
    );
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(PG, 2 * PG, 0x1000)),
        Err(EINVAL)
    );
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(2 * PG, 3 * PG, 0x1000)),
        Err(EINVAL)
    );
    // Exact match updates the vaddr and drops the invalid count.
    assert_eq!(
        do_map(&mut t, &mut i, &[], vaddr_args(2 * PG, 2 * PG, 0x9000)),
        Ok(())
    );
    assert_eq!(i.vaddr_invalid_count, 0);
    let d = t.get(2 * PG).unwrap().dma();
    assert_eq!((d.vaddr, d.vaddr_invalid), (0x9000, false));
    // A second update finds a valid vaddr again.
    assert_eq!(
        validate_map(&mut t, &i, &[], &vaddr_args(2 * PG, 2 * PG, 0xa000)),
        Err(EINVAL)
    );
}

#[test]
fn map_dma_vaddr_ignores_dma_avail_and_iova_ranges() {
    // vfio_dma_do_map: the set_vaddr branch returns before dma_avail and iova checks.
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(0, PG)).unwrap();
    do_unmap(
        &mut t,
        &mut i,
        unmap_args(0, PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        None,
        ignore,
    );
    i.dma_avail = 0;
    let ranges = [VfioIova {
        start: 1 << 40,
        end: (1 << 41) - 1,
    }];
    assert_eq!(
        validate_map(&mut t, &i, &ranges, &vaddr_args(0, PG, 0x5000)),
        Ok(MapPlan::UpdateVaddr {
            key: 0,
            vaddr: 0x5000
        })
    );
}

#[test]
fn map_dma_alignment_checked_before_overlap() {
    // vfio_dma_do_map: alignment (EINVAL) precedes vfio_find_dma (EEXIST).
    let (mut t, mut i) = fresh();
    do_map(&mut t, &mut i, &[], map_args(0, 4 * PG)).unwrap();
    assert_eq!(
        validate_map(&mut t, &i, &[], &map_args(0, PG + 1)),
        Err(EINVAL)
    );
}

#[test]
fn map_commit_takes_a_dma_avail_slot_and_starts_zero_sized() {
    // vfio_dma_do_map: iommu->dma_avail--, "Insert zero-sized and grow"
    let (mut t, i0) = fresh();
    let mut i = i0.clone();
    let Ok(MapPlan::New(nd)) = validate_map(&mut t, &i, &[], &map_args(PG, PG)) else {
        panic!("expected a new mapping");
    };
    let d = nd.commit(&mut i);
    assert_eq!(i.dma_avail, i0.dma_avail - 1);
    assert_eq!((d.iova, d.size, d.prot), (PG, 0, IOMMU_READ | IOMMU_WRITE));
}

#[test]
fn map_dma_dirty_tracking_bitmap_too_large_is_einval_and_removed() {
    // vfio_dma_do_map -> vfio_dma_bitmap_alloc: npages > DIRTY_BITMAP_PAGES_MAX
    let (mut t, mut i) = fresh();
    i.dirty_page_tracking = true;
    let size = (type1_core::dirty::DIRTY_BITMAP_PAGES_MAX + 1) * PG;
    let before = i.dma_avail;
    assert_eq!(do_map(&mut t, &mut i, &[], map_args(0, size)), Err(EINVAL));
    assert!(t.0.is_empty());
    assert_eq!(i.dma_avail, before);
}
