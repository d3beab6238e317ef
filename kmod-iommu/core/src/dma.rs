//! The mapping list (`iommu->dma_list`) and lookups on it.
//!
//! The C code keeps `struct vfio_dma` in an rbtree ordered by iova.  Here the
//! tree is abstracted by [`DmaTree`], keyed by the mapping's iova, whose
//! values implement [`DmaEntry`] to expose the kernel-independent part of a
//! mapping ([`VfioDma`]), its pinned-page list and its dirty bitmap.
//!
//! Range arithmetic deliberately avoids the C `iova + size` sums: a mapping
//! ending exactly at 2^64 makes `dma->iova + dma->size` wrap to 0 in C, after
//! which `vfio_find_dma()` can never find it again.  We evaluate the same
//! comparisons in exact arithmetic instead (see the report on questionable
//! C behaviour); every non-wrapping case gives the identical answer.

use super::container::VfioIommu;
use super::pin::PfnStore;
use core::borrow::{Borrow, BorrowMut};

/// The kernel-independent fields of `struct vfio_dma`.
///
/// In declaration order (`repr(C)`): the range comes first, so that a
/// tree node that stores this first keeps the fields a lookup reads next
/// to its key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VfioDma {
    /// Device address of the first byte (`iova`); also the tree key.
    pub iova: u64,
    /// Process virtual address of the first byte (`vaddr`).
    pub vaddr: u64,
    /// Size in bytes (`size`); grows from 0 while the kernel pins and maps chunks.
    pub size: u64,
    /// `IOMMU_READ` / `IOMMU_WRITE`.
    pub prot: u32,
    /// The range is currently mapped into the IOMMU domains (`iommu_mapped`).
    pub iommu_mapped: bool,
    /// The owning task had `CAP_IPC_LOCK` at map time (`lock_cap`).
    pub lock_cap: bool,
    /// The vaddr was invalidated by `VFIO_DMA_UNMAP_FLAG_VADDR` (`vaddr_invalid`).
    pub vaddr_invalid: bool,
    /// The IOMMU path pinned pages of the range that it must unpin (not in
    /// C). A mapping of device memory only (`VM_PFNMAP` BARs) pins nothing:
    /// it is then unmapped in one call per domain, without walking the
    /// first domain's page tables for runs to unpin.
    pub has_iommu_pins: bool,
    /// Pages charged to the owner's `locked_vm` for this mapping (`locked_vm`).
    pub locked_vm: u64,
}

impl VfioDma {
    /// A fresh mapping as `vfio_dma_do_map()` creates it before pinning: zero sized.
    pub fn new(iova: u64, vaddr: u64, prot: u32) -> Self {
        Self {
            iova,
            vaddr,
            size: 0,
            prot,
            ..Self::default()
        }
    }

    /// The mapped range.
    #[inline]
    pub fn range(&self) -> IovaRange {
        IovaRange { iova: self.iova, size: self.size }
    }

    /// True if `addr` lies inside `[iova, iova + size)`.
    pub fn contains(&self, addr: u64) -> bool {
        self.range().contains(addr)
    }

    /// True if `[iova, iova + size)` ends exactly where `[start, start + len)` ends.
    pub fn ends_at(&self, start: u64, len: u64) -> bool {
        self.range().ends_at(start, len)
    }

    /// The C predicate used by `vfio_find_dma(start, size)` to select this mapping.
    #[inline]
    pub fn matches_find(&self, start: u64, size: u64) -> bool {
        self.range().matches_find(start, size)
    }
}

/// The IOVA range `[iova, iova + size)` of a mapping, compared in exact
/// arithmetic (the end may be 2^64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaRange {
    /// First iova.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
}

impl IovaRange {
    /// True if `addr` lies inside `[iova, iova + size)`.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.iova && addr - self.iova < self.size
    }

    /// True if `[iova, iova + size)` ends exactly where `[start, start + len)` ends,
    /// i.e. the C test `dma->iova + dma->size == start + len` in exact arithmetic.
    #[inline]
    pub fn ends_at(&self, start: u64, len: u64) -> bool {
        // Compare (a + b) with (c + d) without overflow: the sums are equal
        // iff a - c == d - b when a >= c, or c - a == b - d otherwise.
        if self.iova >= start {
            len.checked_sub(self.size) == Some(self.iova - start)
        } else {
            self.size.checked_sub(len) == Some(start - self.iova)
        }
    }

    /// The C predicate used by `vfio_find_dma(start, size)` to select this
    /// mapping: `!(start + size <= iova) && !(start >= iova + size)`.
    ///
    /// With `size == 0` this only matches when `start` is strictly inside
    /// the mapping (not its first byte), exactly like the C expression.
    #[inline]
    pub fn matches_find(&self, start: u64, size: u64) -> bool {
        // start + size > iova
        let above_start = start > self.iova || self.iova - start < size;
        // start < iova + self.size
        let below_end = start < self.iova || start - self.iova < self.size;
        above_start && below_end
    }
}

/// The pieces of a mapping that some operations need to borrow at the same time.
pub struct DmaPartsMut<'a, P> {
    /// The kernel-independent fields.
    pub dma: &'a mut VfioDma,
    /// The list of externally pinned pages (`pfn_list`).
    pub pfn_list: &'a mut P,
    /// The dirty bitmap (`bitmap`), `None` while dirty tracking is off.
    ///
    /// When allocated it has `dma_bitmap_words()` words: one bit per page
    /// of the minimum page size plus one spare word that the shift in
    /// `update_user_bitmap()` needs.
    pub bitmap: Option<&'a mut [u64]>,
}

/// A value stored in the mapping tree (the kernel's full `vfio_dma`).
pub trait DmaEntry {
    /// The container of pinned pages of this mapping.
    type Pfns: PfnStore;

    /// The kernel-independent fields.
    fn dma(&self) -> &VfioDma;

    /// The pinned-page list.
    fn pfn_list(&self) -> &Self::Pfns;

    /// Mutable access to all parts at once (split borrow).
    fn parts_mut(&mut self) -> DmaPartsMut<'_, Self::Pfns>;

    /// Allocates a zeroed dirty bitmap of `words` 64-bit words, replacing any
    /// previous one (`vfio_dma_bitmap_alloc()`, which uses `kvzalloc`).
    fn alloc_bitmap(&mut self, words: usize) -> Result<(), super::errno::Errno>;

    /// Frees the dirty bitmap (`vfio_dma_bitmap_free()`).
    fn free_bitmap(&mut self);
}

/// The ordered mapping list, keyed by iova (`iommu->dma_list`).
///
/// Kernel implementation over `kernel::rbtree::RBTree<u64, V>` in 6.12,
/// whose `cursor_lower_bound(&k)` returns the first key `>= k`:
/// * `ceil_key(k)`: `cursor_lower_bound(&k).map(|c| *c.current().0)`.
/// * `floor_key(k)`: take `cursor_lower_bound(&k)`; if its key equals `k`
///   return it, otherwise return its `peek_prev()` key; if there is no cursor
///   at all return the key of `cursor_back()`.
///
/// If a kernel version's `cursor_lower_bound` instead returns the greatest
/// key `<= k`, swap the roles: `floor_key` is direct and `ceil_key` is the
/// cursor's key when equal to `k`, else its `peek_next()` key (or the key of
/// `cursor_front()` when there is no cursor).  The core never relies on
/// anything but these two exact contracts.
pub trait DmaTree {
    /// The stored value.
    type Entry: DmaEntry;

    /// A value taken out of the tree by [`Self::remove`]: the entry itself,
    /// or something that owns it (the kernel hands out the tree node, so
    /// that the entry is not moved out of it).
    type Removed: BorrowMut<Self::Entry>;

    /// The greatest key `<= key`.
    fn floor_key(&mut self, key: u64) -> Option<u64>;

    /// The smallest key `>= key`.
    fn ceil_key(&mut self, key: u64) -> Option<u64>;

    /// The entry stored under `key`.
    fn get(&self, key: u64) -> Option<&Self::Entry>;

    /// The entry stored under `key`, mutably.
    fn get_mut(&mut self, key: u64) -> Option<&mut Self::Entry>;

    /// Unlinks and returns the entry stored under `key` (`vfio_unlink_dma()`).
    fn remove(&mut self, key: u64) -> Option<Self::Removed>;

    /// The two mappings around `key`, as views: the one with the greatest
    /// key `<= key` and the one with the smallest key `> key`.
    ///
    /// The lookups ([`find_dma`], [`find_dma_first`]) need both. The
    /// default asks `floor_key`, `next_key` and `get` (up to four searches);
    /// a tree that can step from one node to its neighbour finds both with
    /// one search: for the 6.12 `kernel::rbtree`, take
    /// `cursor_lower_bound(&key)`; if its key equals `key` the pair is (it,
    /// its `peek_next()`), otherwise (its `peek_prev()`, it); without a
    /// cursor it is (`cursor_back()`, none).
    fn around(&mut self, key: u64) -> (Option<DmaView>, Option<DmaView>) {
        let floor = self.floor_key(key).and_then(|k| view_at(self, k));
        let next = next_key(self, key).and_then(|k| view_at(self, k));
        (floor, next)
    }

    /// The key of a mapping that [`VfioDma::matches_find`] selects for
    /// `[start, start + size)`, or `None`: any of them when several do,
    /// like `vfio_find_dma()`, which returns the first its descent meets.
    /// For callers that ask only whether one exists, or whether the one
    /// found is exactly a given range (when several overlap none is).
    ///
    /// The default is [`find_dma`] (the lowest); a tree may stop its
    /// descent at the first selected mapping on the way to `start` (the
    /// mappings around `start`, the only candidates, are on that way).
    fn find_any(&mut self, start: u64, size: u64) -> Option<u64> {
        find_dma(self, start, size)
    }

    /// [`Self::find_any`], as a view. With a `size` of 0 or 1 at most one
    /// mapping can be selected, so this is then [`find_dma_view`].
    fn find_any_view(&mut self, start: u64, size: u64) -> Option<DmaView> {
        find_dma_view(self, start, size)
    }

    /// Unlinks the entry stored under `key` and returns it with a view of
    /// the mapping that follows it (the smallest key `> key`): an unmap
    /// walk's `vfio_remove_dma()` and `rb_next()`. The default searches
    /// twice; a tree with cursors removes at the cursor and steps from it.
    fn remove_then_next(&mut self, key: u64) -> (Option<Self::Removed>, Option<DmaView>) {
        let removed = self.remove(key);
        let next = next_key(self, key).and_then(|k| view_at(self, k));
        (removed, next)
    }
}

/// A mapping as a lookup finds it: its key, its range and whether devices
/// hold pins in it. What the searches of a map or an unmap need, so that
/// they do not search again for the entry itself; small, so that a lookup
/// hands two of them back in registers or a few stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaView {
    /// The tree key (the mapping's first iova).
    pub key: u64,
    /// The mapped range.
    pub range: IovaRange,
    /// `!RB_EMPTY_ROOT(&dma->pfn_list)`.
    pub pinned: bool,
}

impl DmaView {
    /// The view of `entry`, stored under `key`.
    #[inline]
    pub fn of<E: DmaEntry + ?Sized>(key: u64, entry: &E) -> Self {
        DmaView {
            key,
            range: entry.dma().range(),
            pinned: !entry.pfn_list().is_empty(),
        }
    }
}

/// The view of the mapping stored under `key`.
pub fn view_at<T: DmaTree + ?Sized>(tree: &T, key: u64) -> Option<DmaView> {
    tree.get(key).map(|e| DmaView::of(key, e))
}

/// The smallest key strictly greater than `key` (`rb_next()`).
#[inline]
pub fn next_key<T: DmaTree + ?Sized>(tree: &mut T, key: u64) -> Option<u64> {
    tree.ceil_key(key.checked_add(1)?)
}

/// The smallest key of the tree (`rb_first()`).
pub fn first_key<T: DmaTree + ?Sized>(tree: &mut T) -> Option<u64> {
    tree.ceil_key(0)
}

/// Mirrors `vfio_find_dma()`: the key of a mapping selected by
/// [`VfioDma::matches_find`] for `[start, start + size)`, or `None`.
///
/// When several mappings overlap the range the C result depends on the
/// shape of the rbtree; we return the lowest one.  Every caller in the
/// reference either only tests for existence, or passes a range that can
/// overlap at most one mapping, so the choice is never observable there.
#[inline(always)]
pub fn find_dma<T: DmaTree + ?Sized>(tree: &mut T, start: u64, size: u64) -> Option<u64> {
    find_dma_view(tree, start, size).map(|v| v.key)
}

/// [`find_dma`], returning the mapping's view (one search in all).
#[inline(always)]
pub fn find_dma_view<T: DmaTree + ?Sized>(tree: &mut T, start: u64, size: u64) -> Option<DmaView> {
    // The only mapping starting at or below `start` that can match is the
    // closest one; every other candidate starts above `start`, and the
    // lowest of those is the only one that can be the lowest match.
    let (floor, next) = tree.around(start);
    if let Some(v) = floor {
        if v.range.matches_find(start, size) {
            return Some(v);
        }
    }
    next.filter(|v| v.range.matches_find(start, size))
}

/// Mirrors `vfio_find_dma_first_node()`: the lowest mapping that ends after
/// `start`, or `None` if there is none or (for a non-zero `size`) it starts at
/// or beyond `start + size`.
#[inline(always)]
pub fn find_dma_first<T: DmaTree + ?Sized>(tree: &mut T, start: u64, size: u64) -> Option<u64> {
    find_dma_first_view(tree, start, size).map(|v| v.key)
}

/// [`find_dma_first`], returning the mapping's view (one search in all).
#[inline(always)]
pub fn find_dma_first_view<T: DmaTree + ?Sized>(tree: &mut T, start: u64, size: u64) -> Option<DmaView> {
    let (floor, next) = tree.around(start);
    // start < dma->iova + dma->size
    let v = floor.filter(|v| start - v.range.iova < v.range.size).or(next)?;
    let d = v.range;
    // dma_res->iova >= start + size
    if size != 0 && d.iova >= start && d.iova - start >= size {
        return None;
    }
    Some(v)
}

/// Mirrors the bookkeeping half of `vfio_remove_dma()`: unlinks the mapping,
/// gives its slot back to `dma_avail` and drops it from the vaddr-invalid
/// count.  The caller tears the returned entry down (unmap, unpin, put the
/// task and mm, free the bitmap) exactly as `vfio_remove_dma()` does.
pub fn remove_dma<T: DmaTree + ?Sized>(
    tree: &mut T,
    iommu: &mut VfioIommu,
    key: u64,
) -> Option<T::Removed> {
    let entry = tree.remove(key)?;
    unaccount_removed(iommu, entry.borrow());
    Some(entry)
}

/// [`remove_dma`], and the view of the next mapping (`rb_next()`, taken
/// by the C unmap loop before it removes the node).
pub fn remove_dma_then_next<T: DmaTree + ?Sized>(
    tree: &mut T,
    iommu: &mut VfioIommu,
    key: u64,
) -> (Option<T::Removed>, Option<DmaView>) {
    let (entry, next) = tree.remove_then_next(key);
    if let Some(e) = &entry {
        unaccount_removed(iommu, e.borrow());
    }
    (entry, next)
}

/// Gives a removed mapping's slot back and drops it from the vaddr-invalid count.
fn unaccount_removed<E: DmaEntry + ?Sized>(iommu: &mut VfioIommu, entry: &E) {
    if entry.dma().vaddr_invalid {
        iommu.vaddr_invalid_count = iommu.vaddr_invalid_count.saturating_sub(1);
    }
    iommu.dma_avail = iommu.dma_avail.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::VfioDma;

    fn dma(iova: u64, size: u64) -> VfioDma {
        VfioDma {
            iova,
            size,
            ..VfioDma::default()
        }
    }

    #[test]
    fn matches_find_is_the_c_predicate() {
        // vfio_find_dma: !(start + size <= iova) && !(start >= iova + size)
        let d = dma(0x1000, 0x2000);
        assert!(d.matches_find(0x1000, 1));
        assert!(d.matches_find(0x0fff, 2));
        assert!(!d.matches_find(0x0fff, 1));
        assert!(d.matches_find(0x2fff, 1));
        assert!(!d.matches_find(0x3000, 1));
        // size 0 matches only strictly inside.
        assert!(!d.matches_find(0x1000, 0));
        assert!(d.matches_find(0x1001, 0));
        assert!(!d.matches_find(0x3000, 0));
        // A mapping ending at 2^64 is still found (C wraps and misses it).
        let top = dma(u64::MAX - 0xfff, 0x1000);
        assert!(top.matches_find(u64::MAX, 1));
        assert!(top.matches_find(0, u64::MAX));
        // A zero-sized mapping being filled in matches nothing.
        assert!(!dma(0x1000, 0).matches_find(0x1000, 0x1000));
    }

    #[test]
    fn ends_at_and_contains_are_exact() {
        let top = dma(u64::MAX - 0xfff, 0x1000);
        assert!(top.ends_at(u64::MAX - 0x1fff, 0x2000));
        assert!(!top.ends_at(u64::MAX - 0x1fff, 0x1000));
        assert!(top.contains(u64::MAX));
        assert!(!top.contains(u64::MAX - 0x1000));
        let d = dma(0x1000, 0x1000);
        assert!(d.ends_at(0, 0x2000));
        assert!(d.ends_at(0x1800, 0x800));
        assert!(!d.ends_at(0x1800, 0x801));
    }
}
