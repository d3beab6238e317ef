//! Host implementations of the storage traits and small drivers that play the
//! kernel's part (allocation, teardown, device notification) in the tests.
#![allow(dead_code, unreachable_pub)]

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use type1_core::dirty::{
    check_get_bitmap_unlocked, dma_bitmap_alloc, iova_dirty_bitmap, UserBitmap,
};
use type1_core::dma::{remove_dma, DmaEntry, DmaPartsMut, DmaTree, DmaView, VfioDma};
use type1_core::errno::{Errno, EFAULT, ENOMEM};
use type1_core::container::VfioIommu;
use type1_core::iova::VfioIova;
use type1_core::map::{apply_update_vaddr, validate_map, MapPlan};
use type1_core::pin::{PfnStore, PinOps, VfioPfn};
use type1_core::uapi::{
    DirtyBitmapGet, DmaMap, DmaUnmap, VfioBitmap, DIRTY_BITMAP_GET_SIZE, DIRTY_BITMAP_MINSZ,
    DMA_MAP_MINSZ, DMA_UNMAP_MINSZ, VFIO_BITMAP_SIZE, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU,
};
use type1_core::unmap::{check_unmap_args, check_unmap_bitmap, UnmapPlan, UnmapStep};

pub const PG: u64 = 4096;

/// `pfn_list` over a BTreeMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPfns(pub BTreeMap<u64, VfioPfn>);

impl PfnStore for HostPfns {
    type Slot = ();
    type Pin = u64;
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn get(&self, iova: u64) -> Option<&VfioPfn> {
        self.0.get(&iova)
    }
    fn get_mut(&mut self, iova: u64) -> Option<&mut VfioPfn> {
        self.0.get_mut(&iova)
    }
    fn insert(&mut self, _slot: (), iova: u64, vpfn: VfioPfn) {
        self.0.insert(iova, vpfn);
    }
    fn remove(&mut self, iova: u64) -> Option<VfioPfn> {
        self.0.remove(&iova)
    }
    fn for_each<F: FnMut(u64, &VfioPfn)>(&self, mut f: F) {
        for (k, v) in &self.0 {
            f(*k, v);
        }
    }
}

/// A full mapping as the kernel would store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDma {
    pub dma: VfioDma,
    pub pfns: HostPfns,
    pub bitmap: Option<Vec<u64>>,
    /// Fail the next bitmap allocation with ENOMEM.
    pub fail_alloc: bool,
}

impl HostDma {
    pub fn new(dma: VfioDma) -> Self {
        Self {
            dma,
            pfns: HostPfns::default(),
            bitmap: None,
            fail_alloc: false,
        }
    }
}

impl DmaEntry for HostDma {
    type Pfns = HostPfns;
    fn dma(&self) -> &VfioDma {
        &self.dma
    }
    fn pfn_list(&self) -> &HostPfns {
        &self.pfns
    }
    fn parts_mut(&mut self) -> DmaPartsMut<'_, HostPfns> {
        DmaPartsMut {
            dma: &mut self.dma,
            pfn_list: &mut self.pfns,
            bitmap: self.bitmap.as_deref_mut(),
        }
    }
    fn alloc_bitmap(&mut self, words: usize) -> Result<(), Errno> {
        if self.fail_alloc {
            return Err(ENOMEM);
        }
        self.bitmap = Some(vec![0; words]);
        Ok(())
    }
    fn free_bitmap(&mut self) {
        self.bitmap = None;
    }
}

/// `dma_list` over a BTreeMap, floor/ceil implemented directly; of
/// [`HostDma`]s unless a test has an entry type of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTree<E = HostDma>(pub BTreeMap<u64, E>);

impl<E> Default for HostTree<E> {
    fn default() -> Self {
        HostTree(BTreeMap::new())
    }
}

impl<E: DmaEntry> DmaTree for HostTree<E> {
    type Entry = E;
    type Removed = E;
    fn floor_key(&mut self, key: u64) -> Option<u64> {
        self.0.range(..=key).next_back().map(|(k, _)| *k)
    }
    fn ceil_key(&mut self, key: u64) -> Option<u64> {
        self.0.range(key..).next().map(|(k, _)| *k)
    }
    fn get(&self, key: u64) -> Option<&E> {
        self.0.get(&key)
    }
    fn get_mut(&mut self, key: u64) -> Option<&mut E> {
        self.0.get_mut(&key)
    }
    fn remove(&mut self, key: u64) -> Option<E> {
        self.0.remove(&key)
    }
}

/// The same tree, but floor/ceil written with only the operations of the
/// 6.12 `kernel::rbtree` cursor API (`cursor_lower_bound` = first key >= k,
/// `peek_prev`, `cursor_back`), following the recipe documented on `DmaTree`.
#[derive(Clone, Debug, Default)]
pub struct CursorTree(pub HostTree);

impl CursorTree {
    fn lower_bound(&self, k: u64) -> Option<u64> {
        self.0 .0.range(k..).next().map(|(k, _)| *k)
    }
    fn peek_prev(&self, k: u64) -> Option<u64> {
        self.0 .0.range(..k).next_back().map(|(k, _)| *k)
    }
    fn peek_next(&self, k: u64) -> Option<u64> {
        self.0 .0.range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)).next().map(|(k, _)| *k)
    }
    fn back(&self) -> Option<u64> {
        self.0 .0.keys().next_back().copied()
    }
}

impl DmaTree for CursorTree {
    type Entry = HostDma;
    type Removed = HostDma;
    fn floor_key(&mut self, key: u64) -> Option<u64> {
        match self.lower_bound(key) {
            Some(c) if c == key => Some(c),
            Some(c) => self.peek_prev(c),
            None => self.back(),
        }
    }
    fn ceil_key(&mut self, key: u64) -> Option<u64> {
        self.lower_bound(key)
    }
    fn get(&self, key: u64) -> Option<&HostDma> {
        self.0.get(key)
    }
    fn get_mut(&mut self, key: u64) -> Option<&mut HostDma> {
        self.0.get_mut(key)
    }
    fn remove(&mut self, key: u64) -> Option<HostDma> {
        self.0.remove(key)
    }
    /// The highest selected mapping, where `HostTree` gives the lowest: what
    /// `validate_map` decides must not depend on which one a tree returns
    /// (the kernel's tree returns the first its descent meets).
    fn find_any(&mut self, start: u64, size: u64) -> Option<u64> {
        self.0 .0.iter().rev().find(|(_, e)| e.dma.matches_find(start, size)).map(|(k, _)| *k)
    }
    /// The one-search recipe documented on `DmaTree::around`.
    fn around(&mut self, key: u64) -> (Option<DmaView>, Option<DmaView>) {
        let with = |k: Option<u64>| k.and_then(|k| self.0.get(k).map(|e| DmaView::of(k, e)));
        match self.lower_bound(key) {
            Some(c) if c == key => (with(Some(c)), with(self.peek_next(c))),
            Some(c) => (with(self.peek_prev(c)), with(Some(c))),
            None => (with(self.back()), None),
        }
    }
    /// As the kernel does it: `cursor_lower_bound(&key)`, `remove_current()`,
    /// whose cursor is the next node if there is one, else the previous.
    fn remove_then_next(&mut self, key: u64) -> (Option<HostDma>, Option<DmaView>) {
        if self.lower_bound(key) != Some(key) {
            return (None, None);
        }
        let removed = self.0.remove(key);
        let (next, prev) = (self.lower_bound(key), self.peek_prev(key));
        let cursor = next.or(prev);
        let view = cursor.filter(|&c| c > key).and_then(|c| self.0.get(c).map(|e| DmaView::of(c, e)));
        (removed, view)
    }
}

/// A user bitmap in a Vec; accesses past the end fail like a bad user pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VecBitmap {
    pub words: Vec<u64>,
    pub fail: bool,
}

impl VecBitmap {
    pub fn new(words: usize) -> Self {
        Self {
            words: vec![0; words],
            fail: false,
        }
    }
    pub fn bit(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

impl UserBitmap for VecBitmap {
    fn read_word(&mut self, index: u64) -> Result<u64, Errno> {
        if self.fail {
            return Err(EFAULT);
        }
        self.words.get(index as usize).copied().ok_or(EFAULT)
    }
    fn write_words(&mut self, index: u64, words: &[u64]) -> Result<(), Errno> {
        if self.fail {
            return Err(EFAULT);
        }
        let start = index as usize;
        let dst = self
            .words
            .get_mut(start..start + words.len())
            .ok_or(EFAULT)?;
        dst.copy_from_slice(words);
        Ok(())
    }
}

pub fn v1() -> VfioIommu {
    VfioIommu::open(VFIO_TYPE1_IOMMU, 65535).unwrap()
}

pub fn v2() -> VfioIommu {
    VfioIommu::open(VFIO_TYPE1V2_IOMMU, 65535).unwrap()
}

pub fn map_args(iova: u64, size: u64) -> DmaMap {
    DmaMap {
        argsz: DMA_MAP_MINSZ,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr: 0x7f00_0000_0000u64.wrapping_add(iova) & 0x7fff_ffff_ffff,
        iova,
        size,
    }
}

pub fn vaddr_args(iova: u64, size: u64, vaddr: u64) -> DmaMap {
    DmaMap {
        argsz: DMA_MAP_MINSZ,
        flags: VFIO_DMA_MAP_FLAG_VADDR,
        vaddr,
        iova,
        size,
    }
}

pub fn unmap_args(iova: u64, size: u64, flags: u32) -> DmaUnmap {
    DmaUnmap {
        argsz: DMA_UNMAP_MINSZ,
        flags,
        iova,
        size,
    }
}

/// The kernel's MAP_DMA after validation: link, "pin" (just set the size),
/// allocate the dirty bitmap when tracking.
pub fn do_map<T: DmaTree<Entry = HostDma> + Insert>(
    t: &mut T,
    iommu: &mut VfioIommu,
    iovas: &[VfioIova],
    m: DmaMap,
) -> Result<(), Errno> {
    match validate_map(t, iommu, iovas, &m)? {
        MapPlan::New(nd) => {
            let mut d = nd.commit(iommu);
            d.size = nd.size;
            d.iommu_mapped = iommu.has_domains;
            t.insert(HostDma::new(d));
            if iommu.dirty_page_tracking {
                let e = t.get_mut(nd.iova).unwrap();
                if let Err(err) = dma_bitmap_alloc(e, iommu) {
                    remove_dma(t, iommu, nd.iova);
                    return Err(err);
                }
            }
            Ok(())
        }
        MapPlan::UpdateVaddr { key, vaddr } => apply_update_vaddr(t, iommu, key, vaddr),
    }
}

/// Insertion is a kernel-only operation (it needs a reserved node), so the
/// tests add it on top of the trait.
pub trait Insert {
    fn insert(&mut self, e: HostDma);
}

impl Insert for HostTree {
    fn insert(&mut self, e: HostDma) {
        self.0.insert(e.dma.iova, e);
    }
}

impl Insert for CursorTree {
    fn insert(&mut self, e: HostDma) {
        self.0.insert(e);
    }
}

/// Result of a driven unmap: the errno or the unmapped size, plus how many
/// times devices were notified.
#[derive(Debug, PartialEq, Eq)]
pub struct UnmapOutcome {
    pub result: Result<u64, Errno>,
    pub notifications: Vec<(u64, u64)>,
    pub removed: Vec<u64>,
}

/// The kernel's UNMAP_DMA: runs the argument checks and the plan, calling
/// `notify` (playing the devices' dma_unmap) when pinned pages block it.
pub fn do_unmap<T, F>(
    t: &mut T,
    iommu: &mut VfioIommu,
    u: DmaUnmap,
    bitmap: Option<(VfioBitmap, &mut VecBitmap)>,
    mut notify: F,
) -> UnmapOutcome
where
    T: DmaTree<Entry = HostDma>,
    T::Removed: Borrow<HostDma>,
    F: FnMut(&mut T, u64, u64),
{
    let mut out = UnmapOutcome {
        result: Ok(0),
        notifications: vec![],
        removed: vec![],
    };
    if let Err(e) = check_unmap_args(&u) {
        out.result = Err(e);
        return out;
    }
    let mut pgsize = 0;
    let mut user: Option<&mut VecBitmap> = None;
    if u.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
        if let Err(e) = check_unmap_bitmap(&u, None, true) {
            out.result = Err(e);
            return out;
        }
        let Some((bm, ub)) = bitmap else {
            out.result = Err(EFAULT);
            return out;
        };
        if let Err(e) = check_unmap_bitmap(&u, Some(&bm), true) {
            out.result = Err(e);
            return out;
        }
        pgsize = bm.pgsize;
        user = Some(ub);
    }
    let mut plan = match UnmapPlan::new(iommu, &u, pgsize) {
        Ok(p) => p,
        Err(e) => {
            out.result = Err(e);
            return out;
        }
    };
    loop {
        match plan.step(t, iommu, user.as_deref_mut()) {
            UnmapStep::Removed(e) => out.removed.push(e.borrow().dma.iova),
            UnmapStep::NotifyUnmap { iova, size } => {
                out.notifications.push((iova, size));
                notify(t, iova, size);
            }
            UnmapStep::Done => {
                out.result = Ok(plan.unmapped());
                return out;
            }
            UnmapStep::Failed(e) => {
                out.result = Err(e);
                return out;
            }
        }
    }
}

/// A notifier that behaves like a well-behaved mdev: drops every pin in the range.
pub fn unpin_all<T: DmaTree<Entry = HostDma>>(t: &mut T, iova: u64, _size: u64) {
    if let Some(e) = t.get_mut(iova) {
        e.pfns.0.clear();
    }
}

/// A notifier that ignores the request (a buggy device).
pub fn ignore<T>(_t: &mut T, _iova: u64, _size: u64) {}

/// The kernel's DIRTY_PAGES GET_BITMAP after the flag checks.
pub fn do_get_bitmap<T: DmaTree<Entry = HostDma>>(
    t: &mut T,
    iommu: &VfioIommu,
    range: DirtyBitmapGet,
    user: &mut VecBitmap,
) -> Result<(), Errno> {
    check_get_bitmap_unlocked(
        DIRTY_BITMAP_MINSZ + DIRTY_BITMAP_GET_SIZE,
        Some(&range),
        true,
    )?;
    iova_dirty_bitmap(t, iommu, user, &range)
}

pub fn bitmap_args(pgsize: u64, size: u64) -> VfioBitmap {
    VfioBitmap {
        pgsize,
        size,
        data: 0x1000,
    }
}

pub const UNMAP_BITMAP_ARGSZ: u32 = DMA_UNMAP_MINSZ + VFIO_BITMAP_SIZE;

/// Mock of the kernel services used by pin_pages, recording every call.
#[derive(Debug, Default)]
pub struct MockPin {
    /// pfn returned for a vaddr: vaddr >> 12 + offset.
    pub pfn_offset: u64,
    /// Pages currently pinned (pfn -> count of real page references).
    pub page_refs: HashMap<u64, i64>,
    /// Net locked pages charged.
    pub locked: i64,
    /// Fail pin_page_external for this vaddr.
    pub fail_vaddr: Option<(u64, Errno)>,
    /// pfns considered invalid (pfn_valid false).
    pub invalid_pfns: Vec<u64>,
    /// Number of slots available before ENOMEM.
    pub slots: Option<usize>,
    pub group_promoted: bool,
    pub pin_calls: usize,
    /// Pin runs in one call, as the kernel does (up to this many pages per
    /// call; 0: page by page, the trait's default).
    pub batch: usize,
    /// Runs pinned by one `pin_run_external` call, with their length.
    pub run_calls: Vec<usize>,
}

impl PinOps<HostDma> for MockPin {
    type Room = ();
    type Pins<'r>
        = std::vec::IntoIter<u64>
    where
        Self: 'r;

    fn pin_page_external(
        &mut self,
        _e: &mut HostDma,
        vaddr: u64,
        do_accounting: bool,
    ) -> Result<u64, Errno> {
        self.pin_calls += 1;
        if let Some((v, e)) = self.fail_vaddr {
            if v == vaddr {
                return Err(e);
            }
        }
        let pfn = (vaddr >> 12) + self.pfn_offset;
        *self.page_refs.entry(pfn).or_default() += 1;
        if do_accounting {
            self.locked += 1;
        }
        Ok(pfn)
    }
    fn pin_run_external<'r>(
        &mut self,
        e: &mut HostDma,
        vaddr: u64,
        npage: usize,
        do_accounting: bool,
        _room: &'r mut (),
    ) -> Result<Self::Pins<'r>, Errno> {
        if self.batch == 0 {
            return Ok(vec![self.pin_page_external(e, vaddr, do_accounting)?].into_iter());
        }
        // Like pin_user_pages_remote: pins up to the first page that fails;
        // a failing first page falls back to the single-page path.
        let n = npage.min(self.batch);
        let ok = (0..n as u64)
            .take_while(|j| self.fail_vaddr.is_none_or(|(v, _)| v != vaddr + j * PG))
            .count();
        if ok == 0 {
            return Ok(vec![self.pin_page_external(e, vaddr, do_accounting)?].into_iter());
        }
        self.run_calls.push(ok);
        let mut pins = Vec::with_capacity(ok);
        for j in 0..ok as u64 {
            let pfn = ((vaddr + j * PG) >> 12) + self.pfn_offset;
            *self.page_refs.entry(pfn).or_default() += 1;
            pins.push(pfn);
        }
        if do_accounting {
            self.locked += ok as i64;
        }
        Ok(pins.into_iter())
    }
    fn pfn_valid(&self, pfn: u64) -> bool {
        !self.invalid_pfns.contains(&pfn)
    }
    fn unpin(&mut self, pfn: u64) -> bool {
        let r = self.page_refs.entry(pfn).or_default();
        *r -= 1;
        true
    }
    fn lock_acct(&mut self, _e: &mut HostDma, npage: i64, _is_async: bool) -> Result<(), Errno> {
        self.locked += npage;
        Ok(())
    }
    fn take_slot(&mut self) -> Result<(), Errno> {
        match &mut self.slots {
            Some(0) => Err(ENOMEM),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
    fn promote_pinned_scope(&mut self) -> bool {
        if self.group_promoted {
            false
        } else {
            self.group_promoted = true;
            true
        }
    }
}

/// Inserts a mapping directly (bypassing validation) for lookup tests.
pub fn raw_insert(t: &mut HostTree, iova: u64, size: u64) {
    let mut d = VfioDma::new(iova, 0x7f00_0000_0000u64.wrapping_add(iova), 3);
    d.size = size;
    t.0.insert(iova, HostDma::new(d));
}

/// (iova, size) of every mapping in order.
pub fn ranges(t: &HostTree) -> Vec<(u64, u64)> {
    t.0.values().map(|e| (e.dma.iova, e.dma.size)).collect()
}
