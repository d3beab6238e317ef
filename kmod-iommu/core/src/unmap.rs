//! `VFIO_IOMMU_UNMAP_DMA`: argument checks and the unmap planner.
//!
//! Type1 never splits a mapping: v1 removes every mapping whose *first*
//! iova is inside the request (even if it extends beyond it) and stops,
//! reporting success with size 0, when the request starts in the middle of
//! a mapping; v2 refuses (`EINVAL`) any request whose start or end bisects a
//! mapping.  So an unmap never needs a new tree node and the kernel never
//! has to allocate while it holds the container lock here.
//!
//! The C loop drops the lock to let mdev drivers unpin pages and then
//! restarts from scratch; [`UnmapPlan::step`] is that loop turned into a
//! state machine whose steps the kernel carries out between calls.

use super::dirty::{copy_dma_to_user, user_pgshift, verify_bitmap_size, UserBitmap};
use super::dma::{find_dma_first_view, next_key, remove_dma_then_next, DmaEntry, DmaTree, DmaView};
use super::errno::{Errno, EBUSY, EINVAL};
use super::container::VfioIommu;
use super::uapi::{
    DmaUnmap, VfioBitmap, DMA_UNMAP_MINSZ, VFIO_BITMAP_SIZE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_DMA_UNMAP_FLAG_VADDR,
};

/// How many times the same mapping may be found still pinned after its
/// devices were notified before we give up; the C code `BUG_ON(++retries > 10)`.
pub const UNMAP_MAX_RETRIES: u32 = 10;

/// The errno returned instead of the reference's `BUG_ON` when a device keeps
/// pages pinned after `UNMAP_MAX_RETRIES` notifications.
pub const UNMAP_PINS_STUCK_ERRNO: Errno = EBUSY;

/// Mirrors the first checks of `vfio_iommu_type1_unmap_dma()` on the fixed
/// part: `EINVAL` for a short `argsz`, unknown flags, or the dirty-bitmap
/// flag combined with `ALL` or `VADDR`.
pub fn check_unmap_args(unmap: &DmaUnmap) -> Result<(), Errno> {
    let mask =
        VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL;
    if unmap.argsz < DMA_UNMAP_MINSZ || unmap.flags & !mask != 0 {
        return Err(EINVAL);
    }
    if unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0
        && unmap.flags & (VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR) != 0
    {
        return Err(EINVAL);
    }
    Ok(())
}

/// The dirty-bitmap part of `vfio_iommu_type1_unmap_dma()`, for requests with
/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`: `argsz` must include a `struct
/// vfio_bitmap` (checked before it is copied: pass `bitmap == None` for that
/// first check), then `access_ok()` of the user bitmap (given by the kernel)
/// and `verify_bitmap_size(unmap.size >> __ffs(bitmap.pgsize), bitmap.size)`.
pub fn check_unmap_bitmap(
    unmap: &DmaUnmap,
    bitmap: Option<&VfioBitmap>,
    access_ok: bool,
) -> Result<(), Errno> {
    if unmap.argsz < DMA_UNMAP_MINSZ + VFIO_BITMAP_SIZE {
        return Err(EINVAL);
    }
    let Some(bitmap) = bitmap else {
        return Ok(());
    };
    if !access_ok {
        return Err(EINVAL);
    }
    let pgshift = user_pgshift(bitmap.pgsize)?;
    verify_bitmap_size(unmap.size >> pgshift, bitmap.size)
}

/// What the kernel must do next for an unmap in progress.
#[derive(Debug)]
pub enum UnmapStep<E> {
    /// A mapping was unlinked (and its dirty bits copied out if requested).
    /// Tear it down like `vfio_remove_dma()` (unmap from every domain,
    /// unpin, unaccount, drop task/mm/bitmap), then call `step` again
    /// *before releasing the container lock*: the plan keeps its place in
    /// the tree (the mapping after the removed one, as the removal found
    /// it), as the C loop keeps its `rb_next()` node.
    Removed(E),
    /// The mapping `[iova, iova + size)` still has pages pinned by devices.
    /// Drop the container lock, call every registered device's `dma_unmap`
    /// for that range (`vfio_notify_dma_unmap()`), retake the lock and call
    /// `step` again: the plan restarts its search like the C `goto again`.
    NotifyUnmap {
        /// First iova of the pinned mapping.
        iova: u64,
        /// Size of the pinned mapping.
        size: u64,
    },
    /// Finished successfully; report [`UnmapPlan::unmapped`] to userspace.
    Done,
    /// Finished with an error; nothing is copied back to userspace.  Mappings
    /// removed by earlier steps stay removed, as in C.
    Failed(Errno),
}

/// An unmap request that passed the locked argument checks of
/// `vfio_dma_do_unmap()` and is being carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmapPlan {
    iova: u64,
    size: u64,
    unmap_all: bool,
    invalidate_vaddr: bool,
    get_dirty_bitmap: bool,
    v2: bool,
    pgshift: u32,
    unmapped: u64,
    /// Where the next step resumes the walk.
    cursor: Cursor,
    dma_last: Option<u64>,
    retries: u32,
    finished: bool,
}

impl UnmapPlan {
    /// Mirrors the checks of `vfio_dma_do_unmap()` before its `again:` label,
    /// made with the container lock held.
    ///
    /// Order: `EBUSY` for `VADDR` while emulated (mdev) groups exist, then
    /// `EINVAL` for an iova not aligned to the smallest page size, for `ALL`
    /// with a non-zero iova or size, for a zero or unaligned size or a
    /// range that wraps (or exceeds `SIZE_MAX`), and for the dirty-bitmap flag
    /// while tracking is off or with a bitmap page size other than the
    /// smallest page size.  `bitmap_pgsize` is `vfio_bitmap.pgsize` (ignored
    /// without the dirty-bitmap flag).
    pub fn new(iommu: &VfioIommu, unmap: &DmaUnmap, bitmap_pgsize: u64) -> Result<Self, Errno> {
        let unmap_all = unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0;
        let invalidate_vaddr = unmap.flags & VFIO_DMA_UNMAP_FLAG_VADDR != 0;
        let get_dirty_bitmap = unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0;

        // Cannot update vaddr if mdev is present.
        if invalidate_vaddr && iommu.has_emulated_groups {
            return Err(EBUSY);
        }
        let pgshift = iommu.pgshift()?;
        let pgsize = iommu.min_pgsize()?;
        let iova = unmap.iova;
        let mut size = unmap.size;

        if iova & (pgsize - 1) != 0 {
            return Err(EINVAL);
        }
        if unmap_all {
            if iova != 0 || size != 0 {
                return Err(EINVAL);
            }
            size = u64::MAX;
        } else if size == 0
            || size & (pgsize - 1) != 0
            || iova.checked_add(size - 1).is_none()
            || usize::try_from(size).is_err()
        {
            return Err(EINVAL);
        }

        // When dirty tracking is enabled, allow only the minimum page size.
        if get_dirty_bitmap && (!iommu.dirty_page_tracking || bitmap_pgsize != pgsize) {
            return Err(EINVAL);
        }

        Ok(Self {
            iova,
            size,
            unmap_all,
            invalidate_vaddr,
            get_dirty_bitmap,
            v2: iommu.v2,
            pgshift,
            unmapped: 0,
            cursor: Cursor::Restart,
            dma_last: None,
            retries: 0,
            finished: false,
        })
    }

    /// Bytes unmapped (or invalidated) so far; the value written back to
    /// `unmap.size` when the plan ends with [`UnmapStep::Done`].
    pub fn unmapped(&self) -> u64 {
        self.unmapped
    }

    /// The effective size of the request (`U64_MAX` for `ALL`).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True if the request only invalidates vaddrs (`VFIO_DMA_UNMAP_FLAG_VADDR`).
    pub fn invalidate_vaddr(&self) -> bool {
        self.invalidate_vaddr
    }

    /// True if dirty bits must be copied to the user bitmap before each removal.
    pub fn get_dirty_bitmap(&self) -> bool {
        self.get_dirty_bitmap
    }

    /// `dma->iova >= iova + size`, in exact arithmetic.
    fn beyond_end(&self, dma_iova: u64) -> bool {
        dma_iova >= self.iova && dma_iova - self.iova >= self.size
    }

    /// Runs the loop body of `vfio_dma_do_unmap()` until the kernel has to
    /// act.  `user` is the user bitmap, required when the request carries
    /// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP` (its absence is `EINVAL`).
    ///
    /// Once the plan returned `Done` or `Failed`, further calls return
    /// `Done` without touching the tree.
    pub fn step<T, U>(
        &mut self,
        tree: &mut T,
        iommu: &mut VfioIommu,
        user: Option<&mut U>,
    ) -> UnmapStep<T::Removed>
    where
        T: DmaTree + ?Sized,
        U: UserBitmap + ?Sized,
    {
        if self.finished {
            return UnmapStep::Done;
        }
        let r = self.step_inner(tree, iommu, user);
        if matches!(r, UnmapStep::Done | UnmapStep::Failed(_)) {
            self.finished = true;
        }
        r
    }

    fn step_inner<T, U>(
        &mut self,
        tree: &mut T,
        iommu: &mut VfioIommu,
        mut user: Option<&mut U>,
    ) -> UnmapStep<T::Removed>
    where
        T: DmaTree + ?Sized,
        U: UserBitmap + ?Sized,
    {
        let mut n = match self.cursor {
            Cursor::At(next) => next,
            Cursor::Restart => {
                // again: the v2 checks are repeated after every notification
                // because the lock was dropped in between.
                let mut at_iova = None;
                if self.v2 && !self.unmap_all {
                    match self.check_v2_bisect(tree) {
                        Ok(found) => at_iova = found,
                        Err(e) => return UnmapStep::Failed(e),
                    }
                }
                // A mapping starting exactly at `iova` is the first one
                // `vfio_find_dma_first_node()` would find.
                match at_iova {
                    Some(v) => Some(v),
                    None => find_dma_first_view(tree, self.iova, self.size),
                }
            }
        };

        if self.invalidate_vaddr {
            return self.invalidate_vaddrs(tree, iommu, n.map(|v| v.key));
        }

        while let Some(DmaView { key: k, range: dma, pinned }) = n {
            if self.beyond_end(dma.iova) {
                break;
            }
            // v1: a request starting inside a mapping unmaps nothing more.
            if !self.v2 && self.iova > dma.iova {
                break;
            }

            if pinned {
                if self.dma_last == Some(k) {
                    self.retries += 1;
                    if self.retries > UNMAP_MAX_RETRIES {
                        return UnmapStep::Failed(UNMAP_PINS_STUCK_ERRNO);
                    }
                } else {
                    self.dma_last = Some(k);
                    self.retries = 0;
                }
                self.cursor = Cursor::Restart;
                return UnmapStep::NotifyUnmap {
                    iova: dma.iova,
                    size: dma.size,
                };
            }

            if self.get_dirty_bitmap {
                let Some(user) = user.as_deref_mut() else {
                    return UnmapStep::Failed(EINVAL);
                };
                let Some(entry) = tree.get_mut(k) else {
                    break;
                };
                if let Err(e) = copy_dma_to_user(entry, iommu, user, self.iova, self.pgshift) {
                    return UnmapStep::Failed(e);
                }
            }

            self.unmapped = self.unmapped.wrapping_add(dma.size);
            // The C loop takes rb_next() before vfio_remove_dma(); the
            // removal here reports the next mapping, where the next step
            // resumes (the lock is held in between: see `Removed`).
            let (removed, next) = remove_dma_then_next(tree, iommu, k);
            self.cursor = Cursor::At(next);
            if let Some(e) = removed {
                return UnmapStep::Removed(e);
            }
            n = next;
        }
        UnmapStep::Done
    }

    /// The v2 rule of `vfio_dma_do_unmap()`: the request may not bisect a
    /// mapping at its first or its last byte. Returns the mapping that
    /// contains the first byte (it then starts there), if any.
    fn check_v2_bisect<T: DmaTree + ?Sized>(&self, tree: &mut T) -> Result<Option<DmaView>, Errno> {
        // One byte, and below zero bytes: at most one mapping is selected.
        let first = tree.find_any_view(self.iova, 1);
        if let Some(v) = first {
            if v.range.iova != self.iova {
                return Err(EINVAL);
            }
        }
        // `new()` rejected requests whose last byte overflows.
        let last = self.iova.checked_add(self.size - 1).ok_or(EINVAL)?;
        // `find_dma(last, 0)` selects the one mapping with `last` strictly
        // inside it: when that is the first byte's mapping, no search.
        let at_last = match first {
            Some(v) if v.range.matches_find(last, 0) => Some(v),
            _ => tree.find_any_view(last, 0),
        };
        if let Some(v) = at_last {
            if !v.range.ends_at(self.iova, self.size) {
                return Err(EINVAL);
            }
        }
        Ok(first)
    }

    /// The `invalidate_vaddr` branch of the loop: marks every selected
    /// mapping's vaddr invalid; if one already is, every mark made by this
    /// call is rolled back and the result is `EINVAL` with nothing reported.
    fn invalidate_vaddrs<T: DmaTree + ?Sized>(
        &mut self,
        tree: &mut T,
        iommu: &mut VfioIommu,
        first: Option<u64>,
    ) -> UnmapStep<T::Removed> {
        let mut n = first;
        while let Some(k) = n {
            let Some(entry) = tree.get_mut(k) else {
                break;
            };
            let dma = *entry.dma();
            if self.beyond_end(dma.iova) {
                break;
            }
            if !self.v2 && self.iova > dma.iova {
                break;
            }
            if dma.vaddr_invalid {
                let mut m = first;
                while let Some(mk) = m {
                    if mk == k {
                        break;
                    }
                    if let Some(e) = tree.get_mut(mk) {
                        e.parts_mut().dma.vaddr_invalid = false;
                        iommu.vaddr_invalid_count = iommu.vaddr_invalid_count.saturating_sub(1);
                    }
                    m = next_key(tree, mk);
                }
                self.unmapped = 0;
                return UnmapStep::Failed(EINVAL);
            }
            entry.parts_mut().dma.vaddr_invalid = true;
            iommu.vaddr_invalid_count = iommu.vaddr_invalid_count.saturating_add(1);
            self.unmapped = self.unmapped.wrapping_add(dma.size);
            n = next_key(tree, k);
        }
        UnmapStep::Done
    }
}

/// Where the unmap walk resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// Run the `again:` checks and search for the first mapping.
    Restart,
    /// Continue with this mapping (the one after the last removed one, as
    /// the removal found it; `None`: there was none).
    At(Option<DmaView>),
}
