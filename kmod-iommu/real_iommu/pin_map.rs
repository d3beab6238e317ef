// SPDX-License-Identifier: GPL-2.0

//! Pinning a mapping and mapping it into the IOMMU domains: at `MAP_DMA`
//! time for every domain, and for a new domain in a replay.

#![deny(unsafe_code)]

use super::unmap::remove_dma;
use super::Domains;
use crate::iommu_domain::{DomainSet, Replay, RunList, IOMMU_WRITE};
use crate::mm::{self, MmUsers, PinBatch, PinnedRun, TaskRef};
use crate::params;
use crate::store::{Dma, Mappings, PfnTree};
use crate::type1_core::container::{VfioIommu, PAGE_SHIFT, PAGE_SIZE};
use crate::type1_core::dma::{remove_dma as core_remove_dma, DmaTree, VfioDma};
use crate::type1_core::pin::PfnStore;
use kernel::prelude::*;

/// Pages pinned per `pin_user_pages_remote` call (one page of pointers).
const PIN_BATCH: usize = 512;

/// Where a pinned run is mapped: every domain of the container, or only a
/// domain being added (a replay with no domain yet).
pub(super) enum Targets<'a> {
    All(&'a mut DomainSet),
    New(&'a Replay<'a>),
}

impl Targets<'_> {
    /// Maps `run` at `iova` into every target, which take over its pins
    /// (`run` is left empty); on failure `run` is as it was, unmapped
    /// (`vfio_iommu_map`).
    #[inline]
    fn map(&mut self, iova: u64, run: &mut PinnedRun, prot: u32) -> Result {
        match self {
            Targets::All(set) => set.map(iova, run, prot),
            Targets::New(replay) => replay.map(iova, run, prot),
        }
    }

    /// Maps the runs gathered in `list` into every target, as `map` maps
    /// one (`list` is left empty, or as it was on failure).
    #[inline]
    fn map_list(&mut self, list: &mut RunList, prot: u32) -> Result {
        match self {
            Targets::All(set) => set.map_list(list, prot),
            Targets::New(replay) => replay.map_list(list, prot),
        }
    }
}

/// The pinned runs of a mapping on their way into the targets, in IOVA
/// order: small ones gathered and mapped together ([`RunList`]: one
/// map-time IOTLB sync for many runs), others mapped on their own after
/// what was gathered before them. With `grow`, the mapping's size grows by
/// what is mapped, so that on failure it covers exactly that.
struct Mapper<'a> {
    targets: Targets<'a>,
    list: RunList,
    prot: u32,
    grow: bool,
}

impl Mapper<'_> {
    /// Maps `run` at `iova`, right after the runs added before, now or with
    /// later ones. On failure every pin it held (`run` and what was
    /// gathered) is given back through `cx`.
    #[inline]
    fn add(&mut self, cx: &mut PinCtx<'_>, iova: u64, run: PinnedRun) -> Result {
        let Err(mut run) = self.list.push(iova, run) else { return Ok(()) };
        if !self.list.is_empty() {
            if let Err(e) = self.flush(cx) {
                cx.give_back(iova, run);
                return Err(e);
            }
            let Err(r) = self.list.push(iova, run) else { return Ok(()) };
            run = r;
        }
        // A run the list does not take even empty goes on its own.
        let npage = run.npage();
        if let Err(e) = self.targets.map(iova, &mut run, self.prot) {
            cx.give_back(iova, run);
            return Err(e);
        }
        if self.grow {
            cx.info.size += npage << PAGE_SHIFT;
        }
        Ok(())
    }

    /// Gives back what is gathered, unmapped, through `cx`.
    fn give_back(&mut self, cx: &mut PinCtx<'_>) {
        self.list.take_each(|iova, run| cx.give_back(iova, run));
    }

    /// Maps what is gathered; on failure gives it back through `cx`.
    fn flush(&mut self, cx: &mut PinCtx<'_>) -> Result {
        if self.list.is_empty() {
            return Ok(());
        }
        let bytes = self.list.bytes();
        if let Err(e) = self.targets.map_list(&mut self.list, self.prot) {
            self.give_back(cx);
            return Err(e);
        }
        if self.grow {
            cx.info.size += bytes;
        }
        Ok(())
    }
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

    /// Gives back pins that were made but not mapped (`run`, at `iova`):
    /// each accountable page is unpinned and, unless a device pin charged
    /// it, uncharged.
    fn give_back(&mut self, iova: u64, run: PinnedRun) {
        let uncharge = if self.pfns.is_empty() {
            run.unpin() as i64
        } else {
            let pfns = self.pfns;
            let mut n = 0i64;
            run.unpin_each(|i| {
                if pfns.get(iova + i * PAGE_SIZE).is_none() {
                    n += 1;
                }
            });
            n
        };
        let _ = self.charge(-uncharge);
    }
}

/// Pins `[dma.vaddr, + npage pages)` and maps it at `dma.iova` into
/// `targets`, as physically contiguous runs (`vfio_pin_map_dma`, and the
/// pinning branch of `vfio_iommu_replay`). With `grow`, `dma.info.size`
/// grows by what is mapped, so that on failure it covers exactly that;
/// pages pinned but not mapped (also those gathered, see [`Mapper`]) are
/// given back before returning the error.
pub(super) fn pin_map(dma: &mut Dma, targets: Targets<'_>, npage: u64, grow: bool) -> Result {
    let mut cx = PinCtx::new(dma)?;
    let single = params::disable_hugepages();
    // No more room than the mapping has pages: setting up room for 512
    // cost a 4 KiB MAP_DMA three times C's instructions. Device memory is
    // not limited by the room (see `PinBatch::pin`).
    let batch_len = if single { 1 } else { usize::try_from(npage).unwrap_or(PIN_BATCH).clamp(1, PIN_BATCH) };
    // Each batch as physically contiguous runs of one kind; page by page
    // when huge IOMMU pages are off.
    let mut batch = PinBatch::new(batch_len)?;
    // Small runs are gathered to be mapped together, up to a batch's
    // worth; not for a single page, nor when huge IOMMU pages are off
    // (`iommu_map_sg` would merge physically contiguous pages).
    let gather = if single || npage < 2 { 0 } else { batch_len };
    let mut mapper = Mapper { targets, list: RunList::new(gather), prot: cx.info.prot, grow };
    let max_run = if single { 1 } else { u64::MAX };
    let device_pins = !cx.pfns.is_empty();
    let write = cx.write();
    // The run being built (merged across batches; empty at first) and its
    // iova.
    let (mut run, mut run_iova) = (PinnedRun::default(), 0u64);
    let mut done = 0u64;
    while done < npage {
        mm::cond_resched();
        // Pages are pinned a batch at a time; device memory, which is only
        // looked up, as far as one page-table entry maps it.
        let want = if single { 1 } else { usize::try_from(npage - done).unwrap_or(usize::MAX) };
        let vaddr = cx.info.vaddr + (done << PAGE_SHIFT);
        let (got, mut runs, unreserved) = match batch.pin(&cx.users, vaddr, want, write, max_run) {
            Ok(r) => r,
            Err(e) => {
                cx.give_back(run_iova, run);
                mapper.give_back(&mut cx);
                return Err(e);
            }
        };
        let first_iova = cx.info.iova + (done << PAGE_SHIFT);
        // Charge the new pins (device-pinned pages are charged already).
        let mut charge = unreserved as i64;
        if device_pins {
            charge = 0;
            let mut iova = first_iova;
            for r in runs.remaining() {
                if !r.is_reserved() {
                    for j in 0..r.npage() {
                        if !cx.charged_by_device(iova + (j << PAGE_SHIFT)) {
                            charge += 1;
                        }
                    }
                }
                iova += r.npage() << PAGE_SHIFT;
            }
        }
        if unreserved != 0 {
            cx.info.has_iommu_pins = true;
        }
        if let Err(e) = cx.charge(charge) {
            if e == ENOMEM {
                pr_warn!("RLIMIT_MEMLOCK exceeded while pinning a mapping at iova {:#x}\n", cx.info.iova);
            }
            // The batch's pins go back uncharged (they were not charged).
            drop(runs);
            cx.give_back(run_iova, run);
            mapper.give_back(&mut cx);
            return Err(e);
        }
        let mut iova = first_iova;
        while let Some(r) = runs.next() {
            let n = r.npage();
            // An empty `run` takes nothing: the first run starts it.
            let r = if single {
                r
            } else {
                match run.extend(r) {
                    Ok(()) => {
                        iova += n << PAGE_SHIFT;
                        continue;
                    }
                    Err(r) => r,
                }
            };
            if run.npage() != 0 {
                // On failure `add` gave back `run` and what it gathered.
                if let Err(e) = mapper.add(&mut cx, run_iova, core::mem::take(&mut run)) {
                    cx.give_back(iova, r);
                    let mut at = iova + (n << PAGE_SHIFT);
                    for rest in runs {
                        let rest_npage = rest.npage();
                        cx.give_back(at, rest);
                        at += rest_npage << PAGE_SHIFT;
                    }
                    return Err(e);
                }
            }
            // `run` is empty now (handed on, or never started).
            run = r;
            run_iova = iova;
            iova += n << PAGE_SHIFT;
        }
        done += got as u64;
    }
    if run.npage() != 0 {
        mapper.add(&mut cx, run_iova, run)?;
    }
    mapper.flush(&mut cx)
}

/// `MAP_DMA` with IOMMU domains: pins and maps the new mapping at `key`
/// (inserted with size 0) to `size` bytes. On failure the mapping is
/// removed, with whatever was mapped of it.
pub(crate) fn map_new(iommu: &mut VfioIommu, dmas: &mut Mappings, domains: &mut Domains, key: u64, size: u64) -> Result {
    let Some(dma) = dmas.get_mut(key) else { return Err(EINVAL) };
    let r = pin_map(dma, Targets::All(&mut domains.set), size >> PAGE_SHIFT, true);
    dma.info.iommu_mapped = true;
    if let Err(e) = r {
        if let Some(d) = core_remove_dma(dmas, iommu, key) {
            remove_dma(domains, dmas, d);
        }
        return Err(e);
    }
    Ok(())
}

