// SPDX-License-Identifier: GPL-2.0

//! Pinning a mapping and mapping it into the IOMMU domains: at `MAP_DMA`
//! time for every domain, and for a new domain in a replay.

#![deny(unsafe_code)]

use super::unmap::remove_dma;
use super::{Domains, VfioDomain};
use crate::iommu_domain::{Domain, IOMMU_CACHE, IOMMU_WRITE};
use crate::mm::{self, MmUsers, PinBatch, TaskRef};
use crate::params;
use crate::store::{Dma, Mappings, PfnTree};
use crate::type1_core::container::{VfioIommu, PAGE_SHIFT, PAGE_SIZE};
use crate::type1_core::dma::{remove_dma as core_remove_dma, DmaTree, VfioDma};
use crate::type1_core::pin::PfnStore;
use kernel::prelude::*;

/// Pages pinned per `pin_user_pages_remote` call (one page of pointers).
const PIN_BATCH: usize = 512;

/// Where a pinned run is mapped: every domain of the container, or only a
/// domain being attached.
#[derive(Clone, Copy)]
pub(super) enum Targets<'a> {
    All(&'a [VfioDomain]),
    One(&'a Domain),
}

impl Targets<'_> {
    fn get(&self, i: usize) -> Option<&Domain> {
        match self {
            Targets::All(l) => l.get(i).map(|d| &d.domain),
            Targets::One(d) => (i == 0).then_some(*d),
        }
    }

    /// Maps one run into every target; on failure, unmaps it from those
    /// already done (`vfio_iommu_map`).
    fn map(&self, iova: u64, pfn: u64, npage: u64, prot: u32) -> Result {
        let (paddr, size) = (pfn << PAGE_SHIFT, npage << PAGE_SHIFT);
        let mut i = 0;
        while let Some(d) = self.get(i) {
            if let Err(e) = d.map(iova, paddr, size, prot | IOMMU_CACHE) {
                for j in (0..i).rev() {
                    if let Some(done) = self.get(j) {
                        done.unmap(iova, size);
                    }
                }
                return Err(e);
            }
            i += 1;
            mm::cond_resched();
        }
        Ok(())
    }
}

/// A physically contiguous run of pinned pages.
#[derive(Clone, Copy)]
struct Run {
    iova: u64,
    pfn: u64,
    npage: u64,
    /// Reserved (not accountable) pages: never unpinned nor charged.
    rsvd: bool,
}

/// A mapping's fields as pinning needs them, with its owner's address
/// space held live.
struct PinCtx<'a> {
    info: &'a mut VfioDma,
    pfns: &'a PfnTree,
    task: &'a TaskRef,
    users: MmUsers<'a>,
}

impl PinCtx<'_> {
    fn new(dma: &mut Dma) -> Result<PinCtx<'_>> {
        let Dma { info, pfns, owner, .. } = dma;
        let users = owner.mm().users().ok_or(ENODEV)?;
        Ok(PinCtx { info, pfns, task: owner.task(), users })
    }

    fn write(&self) -> bool {
        self.info.prot & IOMMU_WRITE != 0
    }

    /// Whether pinning the page at `iova` is charged: not when a device pin
    /// charged it already.
    fn charged_by_device(&self, iova: u64) -> bool {
        self.pfns.get(iova).is_some()
    }

    fn charge(&mut self, npage: i64) -> Result {
        if npage == 0 {
            return Ok(());
        }
        self.users.account_locked(self.task, npage, self.info.lock_cap)?;
        self.info.locked_vm = self.info.locked_vm.wrapping_add(npage as u64);
        Ok(())
    }

    /// Gives back pins that were made but not mapped: each accountable
    /// page is unpinned and, unless a device pin charged it, uncharged.
    fn give_back(&mut self, iova: u64, pfn: u64, npage: u64) {
        let write = self.write();
        let mut uncharge = 0i64;
        for i in 0..npage {
            if !mm::put_pfn(pfn + i, write) {
                continue;
            }
            if !self.charged_by_device(iova + i * PAGE_SIZE) {
                uncharge += 1;
            }
        }
        let _ = self.charge(-uncharge);
    }
}

/// Pins `[dma.vaddr, + npage pages)` and maps it at `dma.iova` into
/// `targets`, run by run (`vfio_pin_map_dma`, and the pinning branch of
/// `vfio_iommu_replay`). With `grow`, `dma.info.size` grows by each mapped
/// run, so that on failure it covers exactly what is mapped; pages pinned
/// but not mapped are given back before returning the error.
pub(super) fn pin_map(dma: &mut Dma, targets: Targets<'_>, npage: u64, grow: bool) -> Result {
    let mut cx = PinCtx::new(dma)?;
    let single = params::disable_hugepages();
    let batch_len = if single { 1 } else { PIN_BATCH };
    // Each batch as physically contiguous runs of one kind; page by page
    // when huge IOMMU pages are off.
    let mut batch = PinBatch::new(batch_len)?;
    let max_run = if single { 1 } else { u64::MAX };
    let device_pins = !cx.pfns.is_empty();
    let write = cx.write();
    let prot = cx.info.prot;
    let mut run: Option<Run> = None;
    let mut done = 0u64;
    while done < npage {
        mm::cond_resched();
        // Pages are pinned a batch at a time; device memory, which is only
        // looked up, as far as one page-table entry maps it.
        let want = if single { 1 } else { usize::try_from(npage - done).unwrap_or(usize::MAX) };
        let vaddr = cx.info.vaddr + (done << PAGE_SHIFT);
        let (got, runs, unreserved) = match batch.pin(&cx.users, vaddr, want, write, max_run) {
            Ok(r) => r,
            Err(e) => {
                if let Some(r) = run {
                    cx.give_back(r.iova, r.pfn, r.npage);
                }
                return Err(e);
            }
        };
        let first_iova = cx.info.iova + (done << PAGE_SHIFT);
        // Charge the new pins (device-pinned pages are charged already).
        let mut charge = unreserved as i64;
        if device_pins {
            charge = 0;
            let mut iova = first_iova;
            for r in runs {
                if !r.reserved {
                    for j in 0..r.npage {
                        if !cx.charged_by_device(iova + (j << PAGE_SHIFT)) {
                            charge += 1;
                        }
                    }
                }
                iova += r.npage << PAGE_SHIFT;
            }
        }
        if unreserved != 0 {
            cx.info.has_iommu_pins = true;
        }
        if let Err(e) = cx.charge(charge) {
            if e == ENOMEM {
                pr_warn!("RLIMIT_MEMLOCK exceeded while pinning a mapping at iova {:#x}\n", cx.info.iova);
            }
            for r in runs.iter().filter(|r| !r.reserved) {
                mm::unpin_pfn_range(r.pfn, r.npage, write);
            }
            if let Some(r) = run {
                cx.give_back(r.iova, r.pfn, r.npage);
            }
            return Err(e);
        }
        let mut iova = first_iova;
        for (i, r) in runs.iter().enumerate() {
            let (pfn, n, rsvd) = (r.pfn, r.npage, r.reserved);
            if let Some(cur) = run.as_mut() {
                if !single && pfn == cur.pfn + cur.npage && rsvd == cur.rsvd {
                    cur.npage += n;
                    iova += n << PAGE_SHIFT;
                    continue;
                }
            }
            if let Some(cur) = run.take() {
                if let Err(e) = targets.map(cur.iova, cur.pfn, cur.npage, prot) {
                    cx.give_back(cur.iova, cur.pfn, cur.npage);
                    let mut at = iova;
                    for rest in runs.iter().skip(i) {
                        cx.give_back(at, rest.pfn, rest.npage);
                        at += rest.npage << PAGE_SHIFT;
                    }
                    return Err(e);
                }
                if grow {
                    cx.info.size += cur.npage << PAGE_SHIFT;
                }
            }
            run = Some(Run { iova, pfn, npage: n, rsvd });
            iova += n << PAGE_SHIFT;
        }
        done += got as u64;
    }
    if let Some(r) = run {
        if let Err(e) = targets.map(r.iova, r.pfn, r.npage, prot) {
            cx.give_back(r.iova, r.pfn, r.npage);
            return Err(e);
        }
        if grow {
            cx.info.size += r.npage << PAGE_SHIFT;
        }
    }
    Ok(())
}

/// `MAP_DMA` with IOMMU domains: pins and maps the new mapping at `key`
/// (inserted with size 0) to `size` bytes. On failure the mapping is
/// removed, with whatever was mapped of it.
pub(crate) fn map_new(iommu: &mut VfioIommu, dmas: &mut Mappings, domains: &Domains, key: u64, size: u64) -> Result {
    let Some(dma) = dmas.get_mut(key) else { return Err(EINVAL) };
    let r = pin_map(dma, Targets::All(&domains.list[..]), size >> PAGE_SHIFT, true);
    dma.info.iommu_mapped = true;
    if let Err(e) = r {
        if let Some(d) = core_remove_dma(dmas, iommu, key) {
            remove_dma(domains, dmas, d);
        }
        return Err(e);
    }
    Ok(())
}

