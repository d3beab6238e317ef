// SPDX-License-Identifier: GPL-2.0

//! Unmapping and unpinning (`vfio_unmap_unpin`, `vfio_remove_dma`): the
//! domain set (kmod-common/iommu_domain.rs) unmaps, flushes and unpins in
//! one call; the charge of what it unpinned is released here.

#![deny(unsafe_code)]

use super::Domains;
use crate::iommu_domain::IOMMU_WRITE;
use crate::store::{Dma, Mappings, RemovedDma};

/// Charges (`npage > 0`) or releases `npage` pages of `dma`'s owner's
/// `locked_vm`, as `vfio_lock_acct(dma, npage, true)`: nothing if the
/// process is gone (its pins went with it).
pub(super) fn lock_acct(dma: &mut Dma, npage: i64) {
    if npage == 0 {
        return;
    }
    if dma.owner.mm().account_locked(dma.owner.task(), npage, dma.info.lock_cap).is_ok() {
        dma.info.locked_vm = dma.info.locked_vm.wrapping_add(npage as u64);
    }
}

/// Tears down a mapping removed from the tree (`vfio_remove_dma`): unmaps
/// it from every domain and gives its pins and their charge back, then
/// drops it and keeps its node for the next mapping. Inlined into every
/// unmap, most of which (no IOMMU domain) need only the test.
#[inline]
pub(crate) fn remove_dma(domains: &mut Domains, dmas: &mut Mappings, mut dma: RemovedDma) {
    // Only a mapping in an IOMMU domain has anything to unmap and unpin:
    // the test is made here, so that an mdev-only unmap makes no call.
    if dma.info.size != 0 && !domains.is_empty() {
        unmap_unpin(domains, &mut dma, true);
    }
    dmas.release(dma);
}

/// `vfio_unmap_unpin`: removes `dma` from every domain's page tables and
/// unpins its pages (`DomainSet::unmap_unpin`: flushed before unpinned).
/// Returns the pages unpinned, or 0 after releasing their charge itself
/// with `do_accounting`.
pub(super) fn unmap_unpin(domains: &mut Domains, dma: &mut Dma, do_accounting: bool) -> i64 {
    if dma.info.size == 0 || domains.is_empty() {
        return 0;
    }
    let write = dma.info.prot & IOMMU_WRITE != 0;
    let unlocked = domains.set.unmap_unpin(dma.info.iova, dma.info.size, dma.info.has_iommu_pins, write) as i64;
    dma.info.iommu_mapped = false;
    dma.info.has_iommu_pins = false;
    if do_accounting {
        lock_acct(dma, -unlocked);
        return 0;
    }
    unlocked
}
