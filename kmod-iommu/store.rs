// SPDX-License-Identifier: GPL-2.0

//! The container's mappings in kernel memory: `type1_core`'s storage traits
//! implemented over [`RbMap`] (the mappings) and `kernel::rbtree::RBTree`
//! (each mapping's pinned pages).
//!
//! Data model: one [`Dma`] per `VFIO_IOMMU_MAP_DMA`, keyed by its first IOVA
//! in the container's tree. A `Dma` owns the references that keep the
//! mapping process reachable (its [`Owner`]: the group leader for
//! `RLIMIT_MEMLOCK`, the mm for pinning and accounting), the per-page pins
//! devices made in it (iova to pfn with a reference count) and, while dirty
//! tracking is on, its dirty bitmap in units of the smallest page size.
//!
//! Memory: the tree nodes come from the module's slab cache
//! [`DMA_NODES`]; a mapping is built in its node and dropped there (a
//! removal hands out the node, [`RemovedDma`]), and up to [`SPARE_NODES`]
//! nodes of removed mappings are kept for the next maps.

use crate::mm::Owner;
use crate::rb_map::{Node, NodeAlloc, RbMap, RbOwned, RbSlot};
use crate::slab::ModuleCache;
use crate::type1_core::dma::{DmaEntry, DmaPartsMut, DmaTree, DmaView, VfioDma};
use crate::type1_core::errno::{Errno, ENOMEM};
use crate::type1_core::pin::{PfnStore, VfioPfn};
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ptr::NonNull;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};

/// One mapping (the C `struct vfio_dma`).
///
/// `repr(C)` with `info` first: in an [`RbMap`] node it then follows the
/// tree links and the key, so a lookup finds the range it compares in the
/// cache line it already read (as in the C struct).
#[repr(C)]
pub(crate) struct Dma {
    /// Range, vaddr, protection and accounting state.
    pub(crate) info: VfioDma,
    /// Pages pinned by devices, by iova.
    pub(crate) pfns: PfnTree,
    /// Dirty bitmap while tracking is on.
    pub(crate) bitmap: Option<KVVec<u64>>,
    /// The mapping process: pins and `locked_vm` charges go to its mm,
    /// against its group leader's `RLIMIT_MEMLOCK`.
    pub(crate) owner: Owner,
}

impl Dma {
    /// A mapping of `owner`'s memory with no pins and no bitmap.
    #[inline]
    pub(crate) fn new(info: VfioDma, owner: Owner) -> Self {
        Dma { info, pfns: PfnTree::new(), bitmap: None, owner }
    }
}

/// The slab cache of the mapping tree's nodes: made at module load
/// (`type1.rs`), destroyed at unload, when no container is left.
pub(crate) static DMA_NODES: ModuleCache<Node<Dma>> = ModuleCache::new();

/// The allocator of the mapping tree's nodes: [`DMA_NODES`].
pub(crate) struct DmaNodes;

// SAFETY: `alloc` hands out fresh memory for one `Node<Dma>` from the
// cache made for that type, which nothing else uses until `free` gives it
// back to the same cache.
unsafe impl NodeAlloc<Dma> for DmaNodes {
    #[inline]
    fn alloc() -> Result<NonNull<MaybeUninit<Node<Dma>>>> {
        DMA_NODES.alloc()
    }

    #[inline]
    unsafe fn free(node: NonNull<MaybeUninit<Node<Dma>>>) {
        // SAFETY: the caller hands back memory from `alloc`, holding no value.
        unsafe { DMA_NODES.free(node) }
    }
}

/// A mapping taken out of the tree, in its node.
pub(crate) type RemovedDma = RbOwned<Dma, DmaNodes>;

/// Pinned pages of one mapping (the C `pfn_list`), and how many there are:
/// every lookup of a mapping asks whether it has pins, and the 6.12
/// `RBTree` can only tell by starting an iteration (a call to `rb_first`).
///
/// The tree is dropped only when it has nodes: the 6.12 `RBTree` calls
/// `rb_first_postorder` when dropped, empty or not, and almost every
/// mapping ends without pins.
pub(crate) struct PfnTree {
    tree: ManuallyDrop<RBTree<u64, VfioPfn>>,
    len: usize,
}

impl PfnTree {
    pub(crate) fn new() -> Self {
        PfnTree { tree: ManuallyDrop::new(RBTree::new()), len: 0 }
    }

    /// Unlinks the lowest pinned page.
    pub(crate) fn pop_first(&mut self) -> Option<(u64, VfioPfn)> {
        let iova = *self.tree.iter().next()?.0;
        self.remove(iova).map(|vpfn| (iova, vpfn))
    }
}

impl Drop for PfnTree {
    #[inline]
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: dropped once, here; `self.tree` is not used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.tree) };
        }
    }
}

impl PfnStore for PfnTree {
    type Slot = RBTreeNodeReservation<u64, VfioPfn>;

    #[inline]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, iova: u64) -> Option<&VfioPfn> {
        self.tree.get(&iova)
    }

    fn get_mut(&mut self, iova: u64) -> Option<&mut VfioPfn> {
        self.tree.get_mut(&iova)
    }

    fn insert(&mut self, slot: Self::Slot, iova: u64, vpfn: VfioPfn) {
        // The iova was looked up and found unpinned under the same lock, so
        // nothing is displaced.
        if self.tree.insert(slot.into_node(iova, vpfn)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, iova: u64) -> Option<VfioPfn> {
        let vpfn = self.tree.remove(&iova)?;
        self.len -= 1;
        Some(vpfn)
    }

    fn remove_keep(&mut self, iova: u64) -> Option<(VfioPfn, Option<Self::Slot>)> {
        let entry = self.tree.find_mut(&iova)?;
        let vpfn = *entry.get();
        let slot = entry.remove_node().into_reservation();
        self.len -= 1;
        Some((vpfn, Some(slot)))
    }

    fn for_each<F: FnMut(u64, &VfioPfn)>(&self, mut f: F) {
        for (k, v) in self.tree.iter() {
            f(*k, v);
        }
    }
}

impl DmaEntry for Dma {
    type Pfns = PfnTree;

    fn dma(&self) -> &VfioDma {
        &self.info
    }

    fn pfn_list(&self) -> &PfnTree {
        &self.pfns
    }

    fn parts_mut(&mut self) -> DmaPartsMut<'_, PfnTree> {
        DmaPartsMut {
            dma: &mut self.info,
            pfn_list: &mut self.pfns,
            bitmap: self.bitmap.as_deref_mut(),
        }
    }

    fn alloc_bitmap(&mut self, words: usize) -> core::result::Result<(), Errno> {
        self.bitmap = Some(KVVec::from_elem(0u64, words, GFP_KERNEL).map_err(|_| ENOMEM)?);
        Ok(())
    }

    fn free_bitmap(&mut self) {
        self.bitmap = None;
    }
}

/// Up to `N` allocated but unused tree nodes, kept so that the next
/// insertion takes one instead of allocating (and the last removal keeps
/// one instead of freeing). Freed when dropped.
struct Spares<T, const N: usize> {
    slots: [Option<T>; N],
    n: usize,
}

impl<T, const N: usize> Spares<T, N> {
    fn new() -> Self {
        Spares { slots: core::array::from_fn(|_| None), n: 0 }
    }

    /// The most recently kept node, if any.
    #[inline]
    fn take(&mut self) -> Option<T> {
        let i = self.n.checked_sub(1)?;
        let slot = self.slots.get_mut(i).and_then(Option::take)?;
        self.n = i;
        Some(slot)
    }

    /// Keeps `slot`, or frees it when `N` are kept already.
    #[inline]
    fn keep(&mut self, slot: T) {
        match self.slots.get_mut(self.n) {
            Some(s) => {
                *s = Some(slot);
                self.n += 1;
            }
            None => drop(slot),
        }
    }
}

/// How many nodes of unpinned pages a container keeps for its next pins.
const SPARE_PFN_NODES: usize = 8;

/// Nodes of unpinned pages, kept for the next pins of any mapping of the
/// container: a device that pins and unpins buffer pages all the time (as
/// the mtty DMA engine does per descriptor) then allocates and frees no
/// node per page.
pub(crate) struct PfnSpares(Spares<RBTreeNodeReservation<u64, VfioPfn>, SPARE_PFN_NODES>);

impl PfnSpares {
    pub(crate) fn new() -> Self {
        PfnSpares(Spares::new())
    }

    /// A node for a new pin: a spare one, else a new allocation.
    #[inline]
    pub(crate) fn take(&mut self) -> Result<RBTreeNodeReservation<u64, VfioPfn>> {
        self.0.take().map_or_else(|| RBTreeNodeReservation::new(GFP_KERNEL), Ok)
    }

    /// Keeps a node (frees it when there are enough spares).
    #[inline]
    pub(crate) fn keep(&mut self, slot: RBTreeNodeReservation<u64, VfioPfn>) {
        self.0.keep(slot);
    }
}

/// How many unlinked tree nodes a container keeps for its next mappings.
pub(crate) const SPARE_NODES: usize = 16;

/// A tree node for a mapping, allocated or taken from the spares.
pub(crate) type DmaSlot = RbSlot<Dma, DmaNodes>;

/// All mappings of a container (the C `dma_list`), and a few spare nodes.
///
/// The tree is an [`RbMap`] (kmod-common/rb_map.rs): the lookups of
/// `type1_core` need the mapping at or below an IOVA and the one above it,
/// which it finds in one descent, as `vfio_find_dma()` does, and the
/// insertion or removal that follows a lookup reuses its descent.
///
/// Spare nodes make a mapping that replaces a removed one (an unmap
/// followed by a map, as a VM with a virtual IOMMU does all the time) cost
/// no allocation and no free: up to [`SPARE_NODES`] nodes of removed
/// mappings are kept (about 2 KiB) and freed with the container.
pub(crate) struct Mappings {
    tree: RbMap<Dma, DmaNodes>,
    spare: Spares<DmaSlot, SPARE_NODES>,
}

impl Mappings {
    pub(crate) fn new() -> Self {
        Mappings { tree: RbMap::new(), spare: Spares::new() }
    }

    /// A node for a new mapping: a spare one if there is one, else a new
    /// allocation (which may sleep: the container lock is a mutex).
    #[inline]
    pub(crate) fn slot(&mut self) -> Result<DmaSlot> {
        self.spare.take().map_or_else(DmaSlot::new, Ok)
    }

    /// Drops a removed mapping (its owner references, pins and bitmap go)
    /// and keeps its node as a spare, or frees it when there are enough.
    #[inline]
    pub(crate) fn release(&mut self, dma: RemovedDma) {
        self.spare.keep(dma.into_slot());
    }

    /// Links a new mapping (whose range overlaps no other: checked by
    /// `validate_map` under the same lock, so its key is free). Inlined, so
    /// that `dma` is built in its node.
    #[inline(always)]
    pub(crate) fn insert(&mut self, slot: DmaSlot, iova: u64, dma: Dma) {
        if let Err((slot, dma)) = self.tree.insert(slot, iova, dma) {
            Self::inserted_twice(iova, slot, dma);
        }
    }

    /// Cannot happen (see `insert`); keeps the tree as it is.
    #[cold]
    fn inserted_twice(iova: u64, slot: DmaSlot, dma: Dma) {
        pr_warn!("mapping at iova {iova:#x} inserted twice; the second one is dropped\n");
        drop(slot);
        drop(dma);
    }
}

impl DmaTree for Mappings {
    type Entry = Dma;
    type Removed = RemovedDma;

    #[inline]
    fn floor_key(&mut self, key: u64) -> Option<u64> {
        self.tree.floor_key(key)
    }

    #[inline]
    fn ceil_key(&mut self, key: u64) -> Option<u64> {
        self.tree.ceil_key(key)
    }

    #[inline]
    fn get(&self, key: u64) -> Option<&Dma> {
        self.tree.get(key)
    }

    #[inline]
    fn get_mut(&mut self, key: u64) -> Option<&mut Dma> {
        self.tree.get_mut(key)
    }

    #[inline]
    fn remove(&mut self, key: u64) -> Option<RemovedDma> {
        self.tree.remove(key)
    }

    #[inline]
    fn around(&mut self, key: u64) -> (Option<DmaView>, Option<DmaView>) {
        // One descent (see `RbMap::around`).
        let (floor, above) = self.tree.around(key);
        let view = |e: Option<(u64, &Dma)>| e.map(|(k, d)| DmaView::of(k, d));
        (view(floor), view(above))
    }

    #[inline]
    fn remove_then_next(&mut self, key: u64) -> (Option<RemovedDma>, Option<DmaView>) {
        let (removed, next) = self.tree.remove_then_next(key);
        (removed, next.map(|(k, d)| DmaView::of(k, d)))
    }
}
