// SPDX-License-Identifier: GPL-2.0

//! Pages a device pinned through its container's IOMMU backend
//! (`vfio_pin_pages`), and the byte access to them the device's DMA needs.

use crate::bindings;
use kernel::prelude::*;

/// Pages pinned through a device's IOMMU backend.
///
/// # Invariants
///
/// `pages[..npage]` are the pages of `[iova, iova + npage * PAGE_SIZE)`,
/// pinned for us by `vfio_pin_pages` and not yet unpinned. There is no
/// `Drop`: unpinning needs the device, so the owner gives the value back to
/// [`Device::unpin_pages`](super::Device::unpin_pages) (leaking it would leak the pins until the
/// container goes away).
#[must_use = "pinned pages must be given back to `Device::unpin_pages`"]
pub(crate) struct PinnedPages<const N: usize> {
    pub(super) iova: u64,
    pub(super) npage: usize,
    pub(super) pages: [*mut bindings::page; N],
}

// SAFETY: a pinned page may be accessed and unpinned from any thread.
unsafe impl<const N: usize> Send for PinnedPages<N> {}
// SAFETY: `&PinnedPages` only allows copying bytes in and out of the pages,
// which the owner serialises with its own lock.
unsafe impl<const N: usize> Sync for PinnedPages<N> {}

impl<const N: usize> PinnedPages<N> {
    fn page(&self, index: usize, offset: usize, len: usize) -> Result<*mut bindings::page> {
        if index >= self.npage || offset.checked_add(len).map_or(true, |end| end > kernel::page::PAGE_SIZE) {
            return Err(EINVAL);
        }
        self.pages.get(index).copied().ok_or(EINVAL)
    }

    /// Copies `out.len()` bytes from page `index` at `offset` (inside one page).
    pub(crate) fn read(&self, index: usize, offset: usize, out: &mut [u8]) -> Result {
        let page = self.page(index, offset, out.len())?;
        // SAFETY: `page` is pinned (type invariant), so it stays allocated;
        // `kmap_local_page` maps it until `kunmap_local` below.
        let addr = unsafe { bindings::kmap_local_page(page) };
        // SAFETY: `offset + out.len() <= PAGE_SIZE` was checked; the mapping
        // is valid for the whole page; `out` does not overlap it.
        unsafe {
            core::ptr::copy_nonoverlapping(addr.cast::<u8>().add(offset), out.as_mut_ptr(), out.len());
            bindings::kunmap_local(addr);
        }
        Ok(())
    }

    /// Copies `data` into page `index` at `offset` (inside one page).
    pub(crate) fn write(&self, index: usize, offset: usize, data: &[u8]) -> Result {
        let page = self.page(index, offset, data.len())?;
        // SAFETY: as in `read`.
        let addr = unsafe { bindings::kmap_local_page(page) };
        // SAFETY: as in `read`, with the page as destination; the device
        // pinned it for writing (the caller's `write` request).
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(offset), data.len());
            bindings::kunmap_local(addr);
        }
        Ok(())
    }
}
