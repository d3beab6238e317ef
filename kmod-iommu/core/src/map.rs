//! `VFIO_IOMMU_MAP_DMA`: argument checks, overlap and limit checks, and the
//! `VFIO_DMA_MAP_FLAG_VADDR` update.
//!
//! [`validate_map`] runs every check of `vfio_iommu_type1_map_dma()` and
//! `vfio_dma_do_map()` up to the allocation of the new `vfio_dma`, in the
//! same order, so the first failing check decides the errno exactly as in
//! C.  The kernel then allocates its entry (before taking the lock if it
//! wishes: a successful plan stays valid while the lock is held), creates
//! the core fields with [`NewDma::commit`], inserts the node, and pins and
//! maps.

use super::dma::{DmaEntry, DmaTree, VfioDma};
use super::errno::{Errno, EEXIST, EINVAL, ENOENT, ENOSPC};
use super::container::VfioIommu;
use super::iova::{iova_dma_valid, VfioIova};
use super::uapi::{
    DmaMap, DMA_MAP_MINSZ, IOMMU_READ, IOMMU_WRITE, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE,
};

/// A new mapping that passed every check of `vfio_dma_do_map()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewDma {
    /// First iova.
    pub iova: u64,
    /// User virtual address of the first byte.
    pub vaddr: u64,
    /// Requested size in bytes.
    pub size: u64,
    /// `IOMMU_READ` / `IOMMU_WRITE` derived from the flags.
    pub prot: u32,
}

impl NewDma {
    /// Takes a slot from `dma_avail` and returns the zero-sized mapping the
    /// C code links into the tree before pinning (`iommu->dma_avail--`).
    ///
    /// Without IOMMU domains the kernel then sets `size` to the full size
    /// at once; otherwise it grows `size` while pinning and, on failure,
    /// removes the mapping with [`super::dma::remove_dma`], which gives the
    /// slot back.
    pub fn commit(self, iommu: &mut VfioIommu) -> VfioDma {
        iommu.dma_avail = iommu.dma_avail.saturating_sub(1);
        VfioDma::new(self.iova, self.vaddr, self.prot)
    }
}

/// The outcome of a successful validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapPlan {
    /// Create a new mapping.
    New(NewDma),
    /// `VFIO_DMA_MAP_FLAG_VADDR`: the mapping under `key` gets a new vaddr.
    /// The kernel first moves the locked-memory accounting to the caller's mm
    /// (`vfio_change_dma_owner()`, which may fail) and then calls
    /// [`apply_update_vaddr`].
    UpdateVaddr {
        /// Key (iova) of the mapping to update.
        key: u64,
        /// The new user virtual address.
        vaddr: u64,
    },
}

/// Mirrors the checks of `vfio_iommu_type1_map_dma()`: `EINVAL` if `argsz`
/// is below `offsetofend(size)` or an unknown flag is set.
pub fn check_map_args(map: &DmaMap) -> Result<(), Errno> {
    let mask = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR;
    if map.argsz < DMA_MAP_MINSZ || map.flags & !mask != 0 {
        return Err(EINVAL);
    }
    Ok(())
}

/// Mirrors `vfio_iommu_type1_map_dma()` + `vfio_dma_do_map()` up to the
/// allocation, with the container lock held.  `iovas` is the container's
/// `iova_list` (empty for a container without IOMMU domain).
///
/// Order of failures:
/// 1. `EINVAL`: short `argsz` or unknown flag;
/// 2. `EINVAL`: a `__u64` field does not fit the kernel type (never on 64-bit);
/// 3. `EINVAL`: READ/WRITE together with VADDR, or neither;
/// 4. `EINVAL`: zero size, or size/iova/vaddr not aligned to the smallest page size;
/// 5. `EINVAL`: `iova + size - 1` or `vaddr + size - 1` wraps;
/// 6. with VADDR: `ENOENT` if nothing overlaps, `EINVAL` unless the overlapping
///    mapping has an invalid vaddr and exactly this iova and size;
/// 7. without VADDR: `EEXIST` if any mapping overlaps;
/// 8. `ENOSPC` when `dma_avail` is 0;
/// 9. `EINVAL` when the range is not inside one allowed IOVA range.
#[inline(always)]
pub fn validate_map<T: DmaTree + ?Sized>(
    tree: &mut T,
    iommu: &VfioIommu,
    iovas: &[VfioIova],
    map: &DmaMap,
) -> Result<MapPlan, Errno> {
    check_map_args(map)?;

    let set_vaddr = map.flags & VFIO_DMA_MAP_FLAG_VADDR != 0;
    let iova = map.iova;
    let vaddr = map.vaddr;
    let size = map.size;

    // Verify that none of the __u64 fields overflow size_t / unsigned long.
    if usize::try_from(size).is_err() || usize::try_from(vaddr).is_err() {
        return Err(EINVAL);
    }

    // READ/WRITE from the device's perspective.
    let mut prot = 0;
    if map.flags & VFIO_DMA_MAP_FLAG_WRITE != 0 {
        prot |= IOMMU_WRITE;
    }
    if map.flags & VFIO_DMA_MAP_FLAG_READ != 0 {
        prot |= IOMMU_READ;
    }
    if (prot != 0 && set_vaddr) || (prot == 0 && !set_vaddr) {
        return Err(EINVAL);
    }

    let pgsize = iommu.min_pgsize()?;
    if size == 0 || (size | iova | vaddr) & (pgsize - 1) != 0 {
        return Err(EINVAL);
    }

    // Don't allow IOVA or virtual address wrap.
    let Some(last) = iova.checked_add(size - 1) else {
        return Err(EINVAL);
    };
    if vaddr.checked_add(size - 1).is_none() {
        return Err(EINVAL);
    }

    // Any selected mapping decides: with VADDR only one that is exactly
    // this range passes, and no other can then overlap it.
    let found = tree.find_any(iova, size);
    if set_vaddr {
        let Some(key) = found else {
            return Err(ENOENT);
        };
        let dma = tree.get(key).ok_or(ENOENT)?.dma();
        if !dma.vaddr_invalid || dma.iova != iova || dma.size != size {
            return Err(EINVAL);
        }
        return Ok(MapPlan::UpdateVaddr { key, vaddr });
    }
    if found.is_some() {
        return Err(EEXIST);
    }

    if iommu.dma_avail == 0 {
        return Err(ENOSPC);
    }

    if !iova_dma_valid(iovas, iova, last) {
        return Err(EINVAL);
    }

    Ok(MapPlan::New(NewDma {
        iova,
        vaddr,
        size,
        prot,
    }))
}

/// The tail of the VADDR branch of `vfio_dma_do_map()`, after
/// `vfio_change_dma_owner()` succeeded: stores the new vaddr, clears the
/// invalid mark and decrements `vaddr_invalid_count`.  `EINVAL` if the
/// mapping is gone or no longer invalid (impossible under the lock).
pub fn apply_update_vaddr<T: DmaTree + ?Sized>(
    tree: &mut T,
    iommu: &mut VfioIommu,
    key: u64,
    vaddr: u64,
) -> Result<(), Errno> {
    let entry = tree.get_mut(key).ok_or(EINVAL)?;
    let parts = entry.parts_mut();
    if !parts.dma.vaddr_invalid {
        return Err(EINVAL);
    }
    parts.dma.vaddr = vaddr;
    parts.dma.vaddr_invalid = false;
    iommu.vaddr_invalid_count = iommu.vaddr_invalid_count.saturating_sub(1);
    Ok(())
}
