// SPDX-License-Identifier: GPL-2.0

//! The container's mappings in kernel memory: `type1_core`'s storage traits
//! implemented over [`RbMap`]s, the mappings' and each mapping's pinned
//! pages'.
//!
//! Data model: one [`Dma`] per `VFIO_IOMMU_MAP_DMA`, keyed by its first IOVA
//! in the container's tree. A `Dma` owns the references that keep the
//! mapping process reachable (its [`Owner`]: the group leader for
//! `RLIMIT_MEMLOCK`, the mm for pinning and accounting), the per-page pins
//! devices made in it (iova to pfn with a reference count) and, while dirty
//! tracking is on, its dirty bitmap in units of the smallest page size.
//!
//! Memory: tree nodes come from the module's slab caches [`DMA_NODES`] and
//! [`PFN_NODES`]. A mapping's node is 96 bytes, as the C `struct vfio_dma`
//! is: the tree links, the fields a lookup reads (iova, size) next to them,
//! the pin tree as one pointer, the bitmap, which only dirty tracking
//! makes, behind one. The fewer pages a lookup's nodes spread over, the
//! fewer TLB and cache misses it takes. A mapping is built in its node and
//! dropped there (a removal hands out the node, [`RemovedDma`]), and up to
//! [`SPARE_NODES`] nodes of removed mappings, and [`SPARE_PFN_NODES`] of
//! unpinned pages, are kept for the next maps and pins.
//!
//! The small methods here run on every lookup, insertion and removal of
//! `MAP_DMA`, `UNMAP_DMA` and the pin paths, through the core's generic
//! code: they are `#[inline]` so that each path stays one function.

#![deny(unsafe_code)]

use crate::mm::{Owner, PinnedPage};
use crate::rb_map::{Forget, Node, RbMap, RbOwned, RbSlot, RbValue};
use crate::slab::{CacheNodes, FromCache, ModuleCache};
use crate::type1_core::dma::{DmaEntry, DmaPartsMut, DmaTree, DmaView, VfioDma};
use crate::type1_core::errno::{Errno, ENOMEM};
use crate::type1_core::pin::{PagePin, PfnStore, PutPfn, VfioPfn};
use kernel::prelude::*;

/// One mapping (the C `struct vfio_dma`).
///
/// `repr(C)` with `info` first: in an [`RbMap`] node it then follows the
/// tree links, and a lookup finds the key and range it compares in the
/// cache line it already read (as in the C struct).
#[repr(C)]
pub(crate) struct Dma {
    /// Range, vaddr, protection and accounting state; `info.iova` is the key.
    pub(crate) info: VfioDma,
    /// Pages pinned by devices, by iova.
    pub(crate) pfns: PfnTree,
    /// Dirty bitmap while tracking is on.
    pub(crate) bitmap: Option<KBox<KVVec<u64>>>,
    /// The mapping process: pins and `locked_vm` charges go to its mm,
    /// against its group leader's `RLIMIT_MEMLOCK`.
    pub(crate) owner: Owner,
}

// The size the module doc promises, the C `struct vfio_dma`'s.
const _: () = assert!(core::mem::size_of::<Node<Dma>>() == 96);

impl Dma {
    /// A mapping of `owner`'s memory with no pins and no bitmap.
    #[inline]
    pub(crate) fn new(info: VfioDma, owner: Owner) -> Self {
        Dma { info, pfns: PfnTree::new(), bitmap: None, owner }
    }
}

impl RbValue for Dma {
    #[inline(always)]
    fn rb_key(&self) -> u64 {
        // Set at MAP_DMA and never changed.
        self.info.iova
    }
}

/// The slab cache of the mapping tree's nodes: made at module load
/// (`type1.rs`), destroyed at unload, when no container is left.
pub(crate) static DMA_NODES: ModuleCache<Node<Dma>> = ModuleCache::new();

impl CacheNodes for Dma {
    #[inline(always)]
    fn cache() -> &'static ModuleCache<Node<Dma>> {
        &DMA_NODES
    }
}

/// A mapping taken out of the tree, in its node.
pub(crate) type RemovedDma = RbOwned<Dma, FromCache<Dma>>;

impl PagePin for PinnedPage {
    #[inline(always)]
    fn pfn(&self) -> u64 {
        PinnedPage::pfn(self)
    }
}

/// A page's entry in the C `pfn_list`, as the core sees it: its pin and
/// how many times devices pinned it.
type DevicePin = VfioPfn<PinnedPage>;

/// One page a device pinned (the C `struct vfio_pfn`): its iova and pin.
///
/// The pin is not given back when the node is dropped: a mapping dropped
/// with device pins left leaks them on purpose (see `Dma::drop_leftovers`
/// in container.rs); the unpin path takes the pin out ([`PfnStore::remove`],
/// [`PfnStore::put_ref`]) and gives it back.
pub(crate) struct DevicePage {
    iova: u64,
    vpfn: core::mem::ManuallyDrop<DevicePin>,
}

impl RbValue for DevicePage {
    #[inline(always)]
    fn rb_key(&self) -> u64 {
        self.iova
    }
}

/// The slab cache of the pin trees' nodes, made and destroyed with
/// [`DMA_NODES`].
pub(crate) static PFN_NODES: ModuleCache<Node<DevicePage>> = ModuleCache::new();

// A pin is one word: a node is as large as with a bare pfn.
const _: () = assert!(core::mem::size_of::<Node<DevicePage>>() == 48);

impl CacheNodes for DevicePage {
    #[inline(always)]
    fn cache() -> &'static ModuleCache<Node<DevicePage>> {
        &PFN_NODES
    }
}

/// A tree node for a pinned page.
pub(crate) type PfnSlot = RbSlot<DevicePage, FromCache<DevicePage>>;

/// Pinned pages of one mapping (the C `pfn_list`): a tree that remembers
/// nothing, one pointer wide, so that whether a mapping has pins (every
/// lookup of an unmap asks) is a test of its root.
pub(crate) struct PfnTree(RbMap<DevicePage, FromCache<DevicePage>, Forget>);

impl PfnTree {
    pub(crate) const fn new() -> Self {
        PfnTree(RbMap::new())
    }
}

impl PfnStore for PfnTree {
    type Slot = PfnSlot;
    type Pin = PinnedPage;

    #[inline]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, iova: u64) -> Option<&DevicePin> {
        self.0.get(iova).map(|p| &*p.vpfn)
    }

    fn get_mut(&mut self, iova: u64) -> Option<&mut DevicePin> {
        self.0.get_mut(iova).map(|p| &mut *p.vpfn)
    }

    #[inline]
    fn insert(&mut self, slot: PfnSlot, iova: u64, vpfn: DevicePin) {
        // The iova was looked up and found unpinned under the same lock, so
        // it is free; were it not, the new pin would be given back.
        if let Err((_, page)) = self.0.insert(slot, DevicePage { iova, vpfn: core::mem::ManuallyDrop::new(vpfn) }) {
            drop(core::mem::ManuallyDrop::into_inner(page.vpfn));
        }
    }

    fn remove(&mut self, iova: u64) -> Option<DevicePin> {
        self.0.remove(iova).map(|p| core::mem::ManuallyDrop::into_inner(p.into_value().vpfn))
    }

    fn put_ref(&mut self, iova: u64) -> (PutPfn<PinnedPage>, Option<PfnSlot>) {
        // One search: the reference is dropped in the node, which is unlinked
        // when it was the last one.
        let put = self.0.remove_if(iova, |p| {
            p.vpfn.ref_count = p.vpfn.ref_count.wrapping_sub(1);
            p.vpfn.ref_count == 0
        });
        match put {
            None => (PutPfn::NotPinned, None),
            Some(None) => (PutPfn::StillPinned, None),
            Some(Some(p)) => {
                let (page, slot) = p.into_parts();
                (PutPfn::Released(core::mem::ManuallyDrop::into_inner(page.vpfn).pin), Some(slot))
            }
        }
    }

    fn for_each<F: FnMut(u64, &DevicePin)>(&self, mut f: F) {
        self.0.for_each(|p| f(p.iova, &p.vpfn));
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
            bitmap: self.bitmap.as_deref_mut().map(|b| &mut b[..]),
        }
    }

    fn alloc_bitmap(&mut self, words: usize) -> core::result::Result<(), Errno> {
        let words = KVVec::from_elem(0u64, words, GFP_KERNEL).map_err(|_| ENOMEM)?;
        self.bitmap = Some(KBox::new(words, GFP_KERNEL).map_err(|_| ENOMEM)?);
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

/// How many nodes of unpinned pages a container keeps for its next pins:
/// enough for the pages a few devices hold at once (an mtty DMA engine
/// holds its two ring pages and one buffer, so eight engines unmapped and
/// restarted together reuse nodes rather than free and allocate them).
pub(crate) const SPARE_PFN_NODES: usize = 32;

/// Nodes of unpinned pages, kept for the next pins of any mapping of the
/// container: a device that pins and unpins buffer pages all the time (as
/// the mtty DMA engine does per descriptor) then allocates and frees no
/// node per page.
pub(crate) struct PfnSpares(Spares<PfnSlot, SPARE_PFN_NODES>);

impl PfnSpares {
    pub(crate) fn new() -> Self {
        PfnSpares(Spares::new())
    }

    /// A node for a new pin: a spare one, else a new allocation.
    #[inline]
    pub(crate) fn take(&mut self) -> Result<PfnSlot> {
        self.0.take().map_or_else(PfnSlot::new, Ok)
    }

    /// Keeps a node (frees it when there are enough spares).
    #[inline]
    pub(crate) fn keep(&mut self, slot: PfnSlot) {
        self.0.keep(slot);
    }
}

/// How many unlinked tree nodes a container keeps for its next mappings.
pub(crate) const SPARE_NODES: usize = 16;

/// A tree node for a mapping, allocated or taken from the spares.
pub(crate) type DmaSlot = RbSlot<Dma, FromCache<Dma>>;

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
    tree: RbMap<Dma, FromCache<Dma>>,
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
    pub(crate) fn insert(&mut self, slot: DmaSlot, dma: Dma) {
        if let Err((slot, dma)) = self.tree.insert(slot, dma) {
            Self::inserted_twice(slot, dma);
        }
    }

    /// Cannot happen (see `insert`); keeps the tree as it is.
    #[cold]
    fn inserted_twice(slot: DmaSlot, dma: Dma) {
        pr_warn!("mapping at iova {:#x} inserted twice; the second one is dropped\n", dma.info.iova);
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

    #[inline(always)]
    fn around(&mut self, key: u64) -> (Option<DmaView>, Option<DmaView>) {
        // One descent (see `RbMap::around`).
        let (floor, above) = self.tree.around(key);
        let view = |e: Option<(u64, &Dma)>| e.map(|(k, d)| DmaView::of(k, d));
        (view(floor), view(above))
    }

    #[inline(always)]
    fn find_any(&mut self, start: u64, size: u64) -> Option<u64> {
        self.find_any_view(start, size).map(|v| v.key)
    }

    #[inline(always)]
    fn find_any_view(&mut self, start: u64, size: u64) -> Option<DmaView> {
        // `vfio_find_dma()`'s descent: stops at the first selected mapping;
        // a miss leaves the gap remembered for the insertion that follows.
        let found = self.tree.find_overlap(start, size, |d| d.info.size);
        found.map(|(k, d)| DmaView::of(k, d))
    }

    #[inline]
    fn remove_then_next(&mut self, key: u64) -> (Option<RemovedDma>, Option<DmaView>) {
        let (removed, next) = self.tree.remove_then_next(key);
        (removed, next.map(|(k, d)| DmaView::of(k, d)))
    }
}
