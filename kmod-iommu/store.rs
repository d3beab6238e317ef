// SPDX-License-Identifier: GPL-2.0

//! The container's mappings in kernel memory: `type1_core`'s storage traits
//! implemented over `kernel::rbtree::RBTree`.
//!
//! Data model: one [`Dma`] per `VFIO_IOMMU_MAP_DMA`, keyed by its first IOVA
//! in the container's tree. A `Dma` owns the references that keep the
//! mapping process reachable (its group leader for `RLIMIT_MEMLOCK`, its mm
//! for pinning and accounting), the per-page pins devices made in it (iova
//! to pfn with a reference count) and, while dirty tracking is on, its
//! dirty bitmap in units of the smallest page size.

use crate::mm::{MmGrab, TaskRef};
use crate::type1_core::dma::{DmaEntry, DmaPartsMut, DmaTree, VfioDma};
use crate::type1_core::errno::{Errno, ENOMEM};
use crate::type1_core::pin::{PfnStore, VfioPfn};
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};

/// One mapping (the C `struct vfio_dma`).
pub(crate) struct Dma {
    /// Range, vaddr, protection and accounting state.
    pub(crate) info: VfioDma,
    /// Pages pinned by devices, by iova.
    pub(crate) pfns: PfnTree,
    /// Dirty bitmap while tracking is on.
    pub(crate) bitmap: Option<KVVec<u64>>,
    /// The mapping process's group leader: its `RLIMIT_MEMLOCK` applies.
    pub(crate) task: TaskRef,
    /// The mapping process's mm: pins and `locked_vm` charges go there.
    pub(crate) mm: MmGrab,
}

/// Pinned pages of one mapping (the C `pfn_list`).
pub(crate) struct PfnTree(pub(crate) RBTree<u64, VfioPfn>);

impl PfnStore for PfnTree {
    type Slot = RBTreeNodeReservation<u64, VfioPfn>;

    fn is_empty(&self) -> bool {
        self.0.iter().next().is_none()
    }

    fn get(&self, iova: u64) -> Option<&VfioPfn> {
        self.0.get(&iova)
    }

    fn get_mut(&mut self, iova: u64) -> Option<&mut VfioPfn> {
        self.0.get_mut(&iova)
    }

    fn insert(&mut self, slot: Self::Slot, iova: u64, vpfn: VfioPfn) {
        // The iova was looked up and found unpinned under the same lock, so
        // nothing is displaced.
        drop(self.0.insert(slot.into_node(iova, vpfn)));
    }

    fn remove(&mut self, iova: u64) -> Option<VfioPfn> {
        self.0.remove(&iova)
    }

    fn for_each<F: FnMut(u64, &VfioPfn)>(&self, mut f: F) {
        for (k, v) in self.0.iter() {
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

/// All mappings of a container (the C `dma_list`).
pub(crate) struct Mappings(pub(crate) RBTree<u64, Dma>);

impl DmaTree for Mappings {
    type Entry = Dma;

    fn floor_key(&mut self, key: u64) -> Option<u64> {
        // In 6.12 `cursor_lower_bound` finds the smallest key >= `key`.
        match self.0.cursor_lower_bound(&key) {
            Some(c) => {
                let k = *c.current().0;
                if k == key {
                    Some(k)
                } else {
                    c.peek_prev().map(|(k, _)| *k)
                }
            }
            // Every key is below `key`: the last one is the floor.
            None => self.0.cursor_back().map(|c| *c.current().0),
        }
    }

    fn ceil_key(&mut self, key: u64) -> Option<u64> {
        self.0.cursor_lower_bound(&key).map(|c| *c.current().0)
    }

    fn get(&self, key: u64) -> Option<&Dma> {
        self.0.get(&key)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Dma> {
        self.0.get_mut(&key)
    }

    fn remove(&mut self, key: u64) -> Option<Dma> {
        self.0.remove(&key)
    }
}
