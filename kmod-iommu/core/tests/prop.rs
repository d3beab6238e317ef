//! Property tests against small independent models.

// The reference predicates are written exactly as in the C source.
#![allow(clippy::nonminimal_bool)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use proptest::prelude::*;
use type1_core::dirty::{dirty_bitmap_bytes, dirty_pages_start, test_bit};
use type1_core::dma::{find_dma, find_dma_first, DmaTree, VfioDma};
use type1_core::errno::*;
use type1_core::container::VfioIommu;
use type1_core::iova::{
    aper_resize, exclude_capacity, resv_exclude, IovaList, ResvRegion, ResvType, VfioIova,
};
use type1_core::pin::{pin_pages, unpin_pages};
use type1_core::uapi::*;

const LIMIT: u32 = 6;
const SPACE: u64 = 48; // pages

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, n: u64, misalign: bool },
    Unmap { page: u64, n: u64 },
    UnmapAll,
    Invalidate { page: u64, n: u64 },
    UpdateVaddr { page: u64, n: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SPACE, 0..8u64, prop::bool::weighted(0.1)).prop_map(|(page, n, misalign)| Op::Map { page, n, misalign }),
        4 => (0..SPACE, 0..16u64).prop_map(|(page, n)| Op::Unmap { page, n }),
        1 => Just(Op::UnmapAll),
        2 => (0..SPACE, 0..16u64).prop_map(|(page, n)| Op::Invalidate { page, n }),
        2 => (0..SPACE, 0..8u64).prop_map(|(page, n)| Op::UpdateVaddr { page, n }),
    ]
}

/// The model: mappings as (start page, pages, vaddr_invalid), in a Vec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    maps: Vec<(u64, u64, bool)>,
}

impl Model {
    fn overlaps(&self, a: u64, n: u64) -> bool {
        self.maps.iter().any(|&(s, l, _)| a < s + l && s < a + n)
    }
    /// Pages strictly inside a mapping (not its first page).
    fn strictly_inside(&self, p: u64) -> bool {
        self.maps.iter().any(|&(s, l, _)| p > s && p < s + l)
    }
    /// Pages inside a mapping but not its last page.
    fn before_end_inside(&self, p: u64) -> bool {
        self.maps.iter().any(|&(s, l, _)| p >= s && p + 1 < s + l)
    }
    /// Indices of the mappings an unmap of [a, a+n) selects, or Err.
    fn select(&self, v2: bool, a: u64, n: u64) -> Result<Vec<usize>, Errno> {
        if v2 {
            // May not bisect at the first or last page.
            if self.strictly_inside(a) || self.before_end_inside(a + n - 1) {
                return Err(EINVAL);
            }
        } else if self.strictly_inside(a) {
            // v1: starting inside a mapping unmaps nothing at all.
            return Ok(vec![]);
        }
        Ok((0..self.maps.len())
            .filter(|&i| self.maps[i].0 >= a && self.maps[i].0 < a + n)
            .collect())
    }
    fn apply(&mut self, v2: bool, op: &Op) -> Result<u64, Errno> {
        match *op {
            Op::Map { page, n, misalign } => {
                if n == 0 || misalign {
                    return Err(EINVAL);
                }
                if self.overlaps(page, n) {
                    return Err(EEXIST);
                }
                if self.maps.len() as u32 >= LIMIT {
                    return Err(ENOSPC);
                }
                self.maps.push((page, n, false));
                self.maps.sort();
                Ok(0)
            }
            Op::UpdateVaddr { page, n } => {
                if n == 0 {
                    return Err(EINVAL);
                }
                if let Some(m) = self
                    .maps
                    .iter_mut()
                    .find(|m| m.0 == page && m.1 == n && m.2)
                {
                    m.2 = false;
                    return Ok(0);
                }
                if self.overlaps(page, n) {
                    Err(EINVAL)
                } else {
                    Err(ENOENT)
                }
            }
            Op::Unmap { page, n } => {
                if n == 0 {
                    return Err(EINVAL);
                }
                let sel = self.select(v2, page, n)?;
                let sum = sel.iter().map(|&i| self.maps[i].1).sum::<u64>();
                let keep: Vec<_> = (0..self.maps.len())
                    .filter(|i| !sel.contains(i))
                    .map(|i| self.maps[i])
                    .collect();
                self.maps = keep;
                Ok(sum * PG)
            }
            Op::UnmapAll => {
                let sum = self.maps.iter().map(|m| m.1).sum::<u64>();
                self.maps.clear();
                Ok(sum * PG)
            }
            Op::Invalidate { page, n } => {
                if n == 0 {
                    return Err(EINVAL);
                }
                let sel = self.select(v2, page, n)?;
                if sel.iter().any(|&i| self.maps[i].2) {
                    return Err(EINVAL);
                }
                let mut sum = 0;
                for &i in &sel {
                    self.maps[i].2 = true;
                    sum += self.maps[i].1;
                }
                Ok(sum * PG)
            }
        }
    }
}

fn run_impl<T: DmaTree<Entry = HostDma> + Insert>(
    t: &mut T,
    i: &mut VfioIommu,
    op: &Op,
) -> Result<u64, Errno> {
    match *op {
        Op::Map { page, n, misalign } => {
            let mut m = map_args(page * PG, n * PG);
            if misalign {
                m.iova += 512;
            }
            do_map(t, i, &[], m).map(|_| 0)
        }
        Op::UpdateVaddr { page, n } => {
            do_map(t, i, &[], vaddr_args(page * PG, n * PG, 0x5000_0000)).map(|_| 0)
        }
        Op::Unmap { page, n } => {
            do_unmap(t, i, unmap_args(page * PG, n * PG, 0), None, ignore).result
        }
        Op::UnmapAll => {
            do_unmap(
                t,
                i,
                unmap_args(0, 0, VFIO_DMA_UNMAP_FLAG_ALL),
                None,
                ignore,
            )
            .result
        }
        Op::Invalidate { page, n } => {
            do_unmap(
                t,
                i,
                unmap_args(page * PG, n * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
                None,
                ignore,
            )
            .result
        }
    }
}

fn snapshot(t: &HostTree) -> Vec<(u64, u64, bool)> {
    t.0.values()
        .map(|e| (e.dma.iova / PG, e.dma.size / PG, e.dma.vaddr_invalid))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// vfio_dma_do_map / vfio_dma_do_unmap against the model, for v1 and v2,
    /// on both tree implementations.
    #[test]
    fn map_unmap_sequences_match_model(v2flag in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        let ver = if v2flag { VFIO_TYPE1V2_IOMMU } else { VFIO_TYPE1_IOMMU };
        let mut t = HostTree::default();
        let mut ct = CursorTree::default();
        let mut i = VfioIommu::open(ver, LIMIT).unwrap();
        let mut ci = i.clone();
        let mut model = Model::default();
        for op in &ops {
            let before = t.clone();
            let before_i = i.clone();
            let want = model.apply(v2flag, op);
            let got = run_impl(&mut t, &mut i, op);
            let got_c = run_impl(&mut ct, &mut ci, op);
            prop_assert_eq!(got, want, "op {:?}", op);
            prop_assert_eq!(got_c, want, "cursor tree, op {:?}", op);
            prop_assert_eq!(snapshot(&t), model.maps.clone());
            prop_assert_eq!(&ct.0, &t);
            if got.is_err() {
                prop_assert_eq!(&t, &before, "a failed call changed the tree: {:?}", op);
                prop_assert_eq!(&i, &before_i, "a failed call changed the counters: {:?}", op);
            }
            // Invariants: non-overlap and the counters.
            let r = snapshot(&t);
            for w in r.windows(2) {
                prop_assert!(w[0].0 + w[0].1 <= w[1].0);
            }
            prop_assert_eq!(i.dma_avail, LIMIT - r.len() as u32);
            prop_assert_eq!(i.vaddr_invalid_count as usize, r.iter().filter(|m| m.2).count());
        }
    }

    /// vfio_find_dma / vfio_find_dma_first_node against brute force, both trees.
    #[test]
    fn find_dma_matches_brute_force(
        maps in prop::collection::btree_map(0..64u64, 1..6u64, 0..10),
        start in 0..80u64, size in 0..12u64, sub in 0..PG,
    ) {
        let mut t = HostTree::default();
        let mut last_end = 0;
        for (&p, &n) in &maps {
            if p < last_end { continue; }
            raw_insert(&mut t, p * PG, n * PG);
            last_end = p + n;
        }
        let mut ct = CursorTree(t.clone());
        let s = start * PG + sub;
        let sz = size * PG / 2;
        let all: Vec<VfioDma> = t.0.values().map(|e| e.dma).collect();
        let want = all.iter().find(|d| {
            // !(start + size <= dma->iova) && !(start >= dma->iova + dma->size), no wrap here
            !(s + sz <= d.iova) && !(s >= d.iova + d.size)
        }).map(|d| d.iova);
        prop_assert_eq!(find_dma(&mut t, s, sz), want);
        prop_assert_eq!(find_dma(&mut ct, s, sz), want);
        let first = all.iter().find(|d| s < d.iova + d.size)
            .filter(|d| sz == 0 || d.iova < s + sz)
            .map(|d| d.iova);
        prop_assert_eq!(find_dma_first(&mut t, s, sz), first);
        prop_assert_eq!(find_dma_first(&mut ct, s, sz), first);
    }
}

/// Builds non-overlapping mappings from (gap, len) pairs.
fn layout(spec: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![];
    let mut p = 0;
    for &(gap, len) in spec {
        p += gap;
        out.push((p, len));
        p += len;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// vfio_iova_dirty_bitmap / update_user_bitmap with arbitrary alignments
    /// against a per-page model; also through unmap with GET_DIRTY_BITMAP.
    #[test]
    fn dirty_bitmap_matches_per_page_model(
        spec in prop::collection::vec((0..70u64, 1..140u64), 1..6),
        seeds in prop::collection::vec(any::<u64>(), 6),
        from in 0..6usize, count in 1..6usize, pre in 0..70u64, post in 0..70u64,
        non_pinned in any::<bool>(), via_unmap in any::<bool>(),
    ) {
        let maps = layout(&spec);
        let from = from.min(maps.len() - 1);
        let to = (from + count).min(maps.len()); // exclusive
        let mut t = HostTree::default();
        let mut i = v2();
        for &(p, n) in &maps {
            do_map(&mut t, &mut i, &[], map_args(p * PG, n * PG)).unwrap();
        }
        dirty_pages_start(&mut t, &mut i).unwrap();
        i.num_non_pinned_groups = u64::from(non_pinned);
        // Random dirty pages and iommu_mapped flags per mapping.
        let mut dirty: BTreeSet<u64> = BTreeSet::new();
        for (k, &(p, n)) in maps.iter().enumerate() {
            let mut x = seeds[k % seeds.len()] | 1;
            let e = t.0.get_mut(&(p * PG)).unwrap();
            e.dma.iommu_mapped = x & 2 != 0;
            let all = non_pinned && e.dma.iommu_mapped;
            for pg in 0..n {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if x % 3 == 0 || all {
                    if x % 3 == 0 {
                        type1_core::dirty::bitmap_set(e.bitmap.as_mut().unwrap(), pg, 1);
                    }
                    dirty.insert(p + pg);
                }
            }
        }
        // The range starts in the gap before mapping `from` and ends in the gap after `to - 1`.
        let lo_gap = if from == 0 { 0 } else { maps[from - 1].0 + maps[from - 1].1 };
        let start = maps[from].0 - pre.min(maps[from].0 - lo_gap);
        let end_map = maps[to - 1].0 + maps[to - 1].1;
        let hi_gap = if to < maps.len() { maps[to].0 } else { end_map + 70 };
        let end = end_map + post.min(hi_gap - end_map);
        let npages = end - start;
        let bytes = dirty_bitmap_bytes(npages);
        let mut ub = VecBitmap::new((bytes / 8) as usize);
        if via_unmap {
            let mut u = unmap_args(start * PG, npages * PG, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
            u.argsz = UNMAP_BITMAP_ARGSZ;
            let o = do_unmap(&mut t, &mut i, u, Some((bitmap_args(PG, bytes), &mut ub)), ignore);
            let want: u64 = maps[from..to].iter().map(|m| m.1 * PG).sum();
            prop_assert_eq!(o.result, Ok(want));
            prop_assert_eq!(t.0.len(), maps.len() - (to - from));
        } else {
            let r = DirtyBitmapGet { iova: start * PG, size: npages * PG, bitmap: bitmap_args(PG, bytes) };
            prop_assert_eq!(do_get_bitmap(&mut t, &i, r, &mut ub), Ok(()));
        }
        for b in 0..(bytes * 8) {
            let want = b < npages && dirty.contains(&(start + b))
                && maps[from..to].iter().any(|&(p, n)| start + b >= p && start + b < p + n);
            prop_assert_eq!(test_bit(&ub.words, b), want, "bit {}", b);
        }
    }

    /// vfio_iommu_type1_pin_pages / unpin_pages reference counts against a HashMap.
    #[test]
    fn pin_refcounts_match_model(
        ops in prop::collection::vec((any::<bool>(), 0..20u64, 1..5i32), 1..60),
    ) {
        // Mapped pages: [0, 6) and [8, 14), i.e. holes at 6, 7 and from 14 on.
        let mut t = HostTree::default();
        let mut i = v2();
        i.has_devices = true;
        do_map(&mut t, &mut i, &[], map_args(0, 6 * PG)).unwrap();
        do_map(&mut t, &mut i, &[], map_args(8 * PG, 6 * PG)).unwrap();
        let mapped = |p: u64| p < 6 || (8..14).contains(&p);
        let mut ops_impl = MockPin::default();
        let mut model: HashMap<u64, u32> = HashMap::new();
        for (pin, page, n) in ops {
            let pages: Vec<u64> = (page..page + n as u64).collect();
            if pin {
                let mut out = vec![0u64; n as usize];
                let r = pin_pages(&mut t, &mut i, &mut ops_impl, page * PG, n, IOMMU_READ, &mut out);
                if pages.iter().all(|p| mapped(*p)) {
                    prop_assert_eq!(r, Ok(n));
                    for p in &pages { *model.entry(*p).or_default() += 1; }
                } else {
                    prop_assert_eq!(r, Err(EINVAL));
                }
            } else {
                let done = unpin_pages(&mut t, &i, &mut ops_impl, page * PG, n);
                let want = pages.iter().take_while(|p| mapped(**p)).count();
                prop_assert_eq!(done as usize, want);
                for p in pages.iter().take(want) {
                    if let Some(c) = model.get_mut(p) {
                        *c -= 1;
                        if *c == 0 { model.remove(p); }
                    }
                }
            }
            // The implementation's lists equal the model.
            let mut got: HashMap<u64, u32> = HashMap::new();
            for e in t.0.values() {
                for (iova, v) in &e.pfns.0 {
                    got.insert(iova / PG, v.ref_count);
                }
            }
            prop_assert_eq!(&got, &model);
            // One real page reference and one locked page per pinned iova.
            prop_assert_eq!(ops_impl.locked, model.len() as i64);
            let held = ops_impl.page_refs.values().filter(|r| **r > 0).count();
            prop_assert_eq!(held, model.len());
            prop_assert!(ops_impl.page_refs.values().all(|r| *r == 0 || *r == 1));
        }
    }

    /// vfio_iommu_aper_resize + vfio_iommu_resv_exclude against set difference.
    #[test]
    fn iova_list_matches_set_model(
        ap in (0..200u64, 0..200u64),
        resv in prop::collection::vec((0..256u64, 1..40u64, any::<bool>()), 0..8),
    ) {
        let (a0, a1) = (ap.0.min(ap.1), ap.0.max(ap.1));
        let regions: Vec<ResvRegion> = resv.iter().map(|&(s, l, relax)| ResvRegion {
            start: s, length: l,
            kind: if relax { ResvType::DirectRelaxable } else { ResvType::Reserved },
        }).collect();
        let cap = exclude_capacity(0, regions.len());
        let mut buf = vec![VfioIova::default(); cap];
        let mut l = IovaList::new(&mut buf, 0);
        aper_resize(&mut l, a0, a1).unwrap();
        let res = resv_exclude(&mut l, regions.iter().copied());
        let allowed: Vec<bool> = (0..300u64).map(|x| {
            x >= a0 && x <= a1 && !regions.iter().any(|r| {
                r.kind != ResvType::DirectRelaxable && x >= r.start && x < r.start + r.length
            })
        }).collect();
        if allowed.iter().any(|b| *b) {
            prop_assert_eq!(res, Ok(()));
            let s = l.as_slice();
            for w in s.windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            for (x, want) in allowed.iter().enumerate() {
                let got = s.iter().any(|r| x as u64 >= r.start && x as u64 <= r.end);
                prop_assert_eq!(got, *want, "address {}", x);
            }
        } else {
            prop_assert_eq!(res, Err(EINVAL));
        }
    }
}
