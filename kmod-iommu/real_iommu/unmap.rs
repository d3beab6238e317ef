// SPDX-License-Identifier: GPL-2.0

//! Unmapping and unpinning (`vfio_unmap_unpin`, `vfio_remove_dma`): the
//! first domain's page tables tell which physically contiguous runs to
//! unpin; IOTLB flushes are gathered, and a run is unpinned only after the
//! flush that covers it.

#![deny(unsafe_code)]

use super::Domains;
use crate::iommu_domain::{Domain, IotlbGather, IOMMU_WRITE};
use crate::kvec_ext::VecExt;
use crate::mm;
use crate::store::{Dma, Mappings, RemovedDma};
use crate::type1_core::container::{PAGE_SHIFT, PAGE_SIZE};
use kernel::prelude::*;

/// Runs unmapped between two IOTLB flushes (`VFIO_IOMMU_TLB_SYNC_MAX`).
const TLB_SYNC_MAX: usize = 512;

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
pub(crate) fn remove_dma(domains: &Domains, dmas: &mut Mappings, mut dma: RemovedDma) {
    // Only a mapping in an IOMMU domain has anything to unmap and unpin:
    // the test is made here, so that an mdev-only unmap makes no call.
    if dma.info.size != 0 && !domains.is_empty() {
        unmap_unpin(domains, &mut dma, true);
    }
    dmas.release(dma);
}

/// Finds the largest run at `iova` that `d` maps physically contiguously,
/// up to `end`: (phys, len), or `None` if `iova` is not mapped.
pub(super) fn mapped_run(d: &Domain, iova: u64, end: u64) -> Option<(u64, u64)> {
    let phys = d.iova_to_phys(iova);
    if phys == 0 {
        return None;
    }
    let mut len = PAGE_SIZE;
    while iova + len < end && d.iova_to_phys(iova + len) == phys + len {
        len += PAGE_SIZE;
    }
    Some((phys, len))
}

/// Unpins the accountable pages of a contiguous run; returns how many.
pub(super) fn unpin_run(dma: &Dma, pfn: u64, npage: u64) -> i64 {
    let write = dma.info.prot & IOMMU_WRITE != 0;
    let mut unlocked = 0i64;
    let mut start = 0u64;
    // Unpin maximal accountable sub-runs in one call each.
    while start < npage {
        if !mm::pfn_is_accountable(pfn + start) {
            start += 1;
            continue;
        }
        let mut end = start + 1;
        while end < npage && mm::pfn_is_accountable(pfn + end) {
            end += 1;
        }
        mm::unpin_pfn_range(pfn + start, end - start, write);
        unlocked += (end - start) as i64;
        start = end;
    }
    unlocked
}

/// `vfio_unmap_unpin`: removes `dma` from every domain's page tables and
/// unpins its pages. Returns the pages unpinned, or 0 after releasing their
/// charge itself with `do_accounting`.
pub(super) fn unmap_unpin(domains: &Domains, dma: &mut Dma, do_accounting: bool) -> i64 {
    if dma.info.size == 0 {
        return 0;
    }
    let Some(first) = domains.first() else { return 0 };
    let (start, end) = (dma.info.iova, dma.info.iova + dma.info.size);
    if !dma.info.has_iommu_pins {
        // Device memory only: nothing to unpin, so no runs to find.
        for d in domains.list.iter() {
            d.domain.unmap(start, dma.info.size);
            mm::cond_resched();
        }
        dma.info.iommu_mapped = false;
        return 0;
    }
    // The first domain tells which pages to unpin; the others go at once,
    // so that no translation remains once the pages are unpinned.
    for d in domains.list.iter().skip(1) {
        d.domain.unmap(start, dma.info.size);
        mm::cond_resched();
    }
    kernel::stack_pin_init!(let gather = IotlbGather::new());
    // Runs unmapped but not yet flushed: (pfn, npage). Without memory for
    // the list every run is unmapped and flushed on its own.
    let mut pending: KVec<(u64, u64)> = KVec::with_capacity(TLB_SYNC_MAX, GFP_KERNEL).unwrap_or(KVec::new());
    let batched = pending.capacity() >= TLB_SYNC_MAX;
    let mut unlocked = 0i64;
    let mut iova = start;
    while iova < end {
        let Some((phys, len)) = mapped_run(first, iova, end) else {
            pr_warn!("iova {iova:#x} of a mapping is not mapped in its IOMMU domain\n");
            iova += PAGE_SIZE;
            continue;
        };
        let mut unmapped = 0;
        if batched {
            unmapped = first.unmap_fast(iova, len, &gather);
            if unmapped != 0 {
                // Capacity is TLB_SYNC_MAX and the list is flushed when full.
                let _ = pending.push((phys >> PAGE_SHIFT, unmapped >> PAGE_SHIFT), GFP_KERNEL);
            }
            if unmapped == 0 || pending.len() >= TLB_SYNC_MAX {
                unlocked += sync_unpin(first, &gather, dma, &mut pending);
            }
        }
        if unmapped == 0 {
            unmapped = first.unmap(iova, len);
            if unmapped == 0 {
                pr_warn!("could not unmap iova {iova:#x} from its IOMMU domain\n");
                break;
            }
            unlocked += unpin_run(dma, phys >> PAGE_SHIFT, unmapped >> PAGE_SHIFT);
            mm::cond_resched();
        }
        iova += unmapped;
    }
    dma.info.iommu_mapped = false;
    unlocked += sync_unpin(first, &gather, dma, &mut pending);
    dma.info.has_iommu_pins = false;
    if do_accounting {
        lock_acct(dma, -unlocked);
        return 0;
    }
    unlocked
}

/// Flushes the IOTLB for what was gathered, then unpins those runs.
fn sync_unpin(d: &Domain, gather: &IotlbGather, dma: &Dma, pending: &mut KVec<(u64, u64)>) -> i64 {
    d.iotlb_sync(gather);
    let mut unlocked = 0;
    for &(pfn, npage) in pending.iter() {
        unlocked += unpin_run(dma, pfn, npage);
    }
    pending.clear();
    mm::cond_resched();
    unlocked
}
