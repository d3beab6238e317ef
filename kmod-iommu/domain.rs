// SPDX-License-Identifier: GPL-2.0

//! The real-IOMMU path: groups whose devices reach memory through IOMMU
//! page tables (`vfio-pci` behind VT-d, AMD-Vi, SMMU, ...), as
//! `drivers/vfio/vfio_iommu_type1.c` serves them.
//!
//! # What happens
//!
//! - **Attach** (`attach`): a paging domain is allocated for the group's
//!   IOMMU and the group attached to it; the domain's aperture and the
//!   group's reserved regions must not cover an existing mapping (`EINVAL`)
//!   and shrink the container's list of valid IOVA ranges; a group without
//!   interrupt isolation is refused (`EPERM`) unless
//!   `allow_unsafe_interrupts`; the domain enforces cache coherency if the
//!   IOMMU can. If an existing domain has the same IOMMU driver and the same
//!   coherency, the group joins it and the new domain is freed; otherwise
//!   every existing mapping is replayed into the new domain (copied from
//!   the first domain's page tables, or pinned now if no domain had it),
//!   and a software MSI window gets its cookie.
//! - **Map** (`pin_map`): the whole range is pinned at `MAP_DMA` time, in
//!   batches of up to 512 pages (`pin_user_pages_remote`, `FOLL_LONGTERM`),
//!   charged to the mapping process's `locked_vm` (pages a device already
//!   pinned through `vfio_pin_pages` are charged already), and mapped into
//!   every domain one physically contiguous run at a time, so that the IOMMU
//!   can use its large pages. `disable_hugepages` maps page by page.
//! - **Unmap** (`unmap_unpin`): every domain but the first is unmapped in
//!   one call; the first is walked with `iova_to_phys` to find the
//!   contiguous runs to unpin, unmapped with `iommu_unmap_fast`, and its
//!   IOTLB flushed once per 512 runs before those runs are unpinned (a page
//!   must not be unpinned while the IOTLB may still reach it).
//! - **Detach** (`detach`): the group leaves its domain; an empty domain is
//!   freed. When the last domain goes, all mappings go too, unless mdev
//!   groups remain: then only the IOMMU pins go and the pages devices
//!   pinned are charged again.
//!
//! # Locks
//!
//! Everything here runs under the container lock (`container.rs`), which
//! protects the domain list and the IOVA ranges as well as the mappings.
//! Below it this code takes, in this order: the mapping process's mmap lock
//! (pinning takes it for reading, `locked_vm` accounting for writing, never
//! both at once), the IOMMU group mutex (`iommu_attach_group`,
//! `iommu_detach_group`) and the IOMMU driver's own page-table locks. The
//! C type1 nests the same locks in the same order.
//!
//! # Differences from the reference
//!
//! - Pages are pinned in the mapping process's mm (the one `MAP_DMA`
//!   recorded), also when another process attaches a group and the
//!   mappings are replayed; C pins in the calling process's mm.
//! - `VM_PFNMAP` ranges (device memory mapped by another driver) cannot be
//!   pinned: `MAP_DMA` fails with `EFAULT` where C follows the PFN map.
//! - The MSI cookie is taken before the replay, so its failure leaves
//!   nothing pinned; C takes it after the replay and leaks the replay's
//!   pins on that (theoretical) failure.
//! - The fine-grained superpage probe (`vfio_test_domain_fgsp`) is not
//!   made: unmap always looks for contiguous runs, which is what C does on
//!   IOMMUs with discrete superpage sizes such as VT-d.

use crate::container::State;
use crate::iommu::{self as kiommu, Domain, IotlbGather, ResvKind, IOMMU_CACHE};
use crate::mm::{self, MmUsers};
use crate::params;
use crate::mm::TaskRef;
use crate::store::{Dma, Mappings, PfnTree, RemovedDma};
use crate::type1_core::dma::{first_key, next_key, remove_dma as core_remove_dma, DmaTree};
use crate::type1_core::errno::Errno;
use crate::type1_core::dma::VfioDma;
use crate::type1_core::iommu::{update_pgsize_bitmap, VfioIommu};
use crate::type1_core::iova::{self as ciova, IovaList, ResvRegion, ResvType, VfioIova};
use crate::type1_core::pin::PfnStore;
use crate::type1_core::uapi::IOMMU_WRITE;
use crate::vfio_iommu::{GroupKey, IommuGroup};
use kernel::prelude::*;
use kernel::rbtree::RBTreeNodeReservation;

// type1_core's protection bits are the kernel's, passed to iommu_map as they are.
const _: () = assert!(
    crate::type1_core::uapi::IOMMU_READ == crate::bindings::IOMMU_READ
        && IOMMU_WRITE == crate::bindings::IOMMU_WRITE
);

const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Pages pinned per `pin_user_pages_remote` call (one page of pointers).
const PIN_BATCH: usize = 512;
/// Runs unmapped between two IOTLB flushes (`VFIO_IOMMU_TLB_SYNC_MAX`).
const TLB_SYNC_MAX: usize = 512;

fn err(e: Errno) -> Error {
    Error::from_errno(-e)
}

/// One IOMMU domain of the container (the C `struct vfio_domain`).
pub(crate) struct VfioDomain {
    domain: Domain,
    enforce_cc: bool,
}

/// The container's IOMMU domains and its valid IOVA ranges (the C
/// `domain_list` and `iova_list`). Protected by the container lock.
pub(crate) struct Domains {
    list: KVec<VfioDomain>,
    /// Empty until the first IOMMU-backed group: every IOVA is valid then.
    iovas: KVec<VfioIova>,
}

impl Domains {
    pub(crate) fn new() -> Self {
        Domains { list: KVec::new(), iovas: KVec::new() }
    }

    /// The valid IOVA ranges (empty: all are valid).
    pub(crate) fn iovas(&self) -> &[VfioIova] {
        &self.iovas
    }

    /// Whether every domain enforces cache coherency (true with none).
    pub(crate) fn all_enforce_cc(&self) -> bool {
        self.list.iter().all(|d| d.enforce_cc)
    }

    /// How many groups are attached to domains.
    pub(crate) fn group_count(&self) -> usize {
        self.list.iter().map(|d| d.domain.group_count()).sum()
    }

    /// Whether the container has no IOMMU domain (then mappings are not
    /// pinned at `MAP_DMA` time).
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The domain `key`'s group is attached to.
    pub(crate) fn group_domain(&self, key: GroupKey) -> Option<*mut crate::bindings::iommu_domain> {
        self.list.iter().find(|d| d.domain.has_group(key)).map(|d| d.domain.as_raw())
    }

    fn first(&self) -> Option<&Domain> {
        self.list.first().map(|d| &d.domain)
    }

    fn pgsize_bitmap(&self) -> u64 {
        update_pgsize_bitmap(self.list.iter().map(|d| d.domain.pgsize_bitmap()))
    }
}

/// Where a pinned run is mapped: every domain of the container, or only a
/// domain being attached.
#[derive(Clone, Copy)]
enum Targets<'a> {
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

fn to_core(r: &kiommu::ResvRegion) -> ResvRegion {
    let kind = match r.kind {
        ResvKind::Direct => ResvType::Direct,
        ResvKind::DirectRelaxable => ResvType::DirectRelaxable,
        ResvKind::Reserved => ResvType::Reserved,
        ResvKind::Msi => ResvType::Msi,
        ResvKind::SwMsi => ResvType::SwMsi,
    };
    ResvRegion { start: r.start, length: r.length, kind }
}

/// A working copy of the IOVA list with room for `extra` more ranges
/// (the C code edits a copy and installs it only on success).
struct IovaCopy {
    buf: KVec<VfioIova>,
    len: usize,
}

impl IovaCopy {
    fn new(cur: &[VfioIova], extra: usize) -> Result<Self> {
        let cap = ciova::exclude_capacity(cur.len(), extra).saturating_add(1);
        let mut buf = KVec::from_elem(VfioIova::default(), cap, GFP_KERNEL)?;
        buf[..cur.len()].copy_from_slice(cur);
        Ok(IovaCopy { buf, len: cur.len() })
    }

    fn edit<R>(&mut self, f: impl FnOnce(&mut IovaList<'_>) -> R) -> R {
        let mut list = IovaList::new(&mut self.buf, self.len);
        let r = f(&mut list);
        self.len = list.len();
        r
    }

    fn install(mut self, into: &mut KVec<VfioIova>) {
        // SAFETY: shrinking a vector of plain `Copy` values.
        unsafe { self.buf.set_len(self.len) };
        *into = self.buf;
    }
}

/// `attach_group` for a group behind a real IOMMU. On success the group is
/// recorded in `st.groups` (outside pinned dirty scope) using `node`.
pub(crate) fn attach(st: &mut State, group: &IommuGroup, node: RBTreeNodeReservation<GroupKey, bool>) -> Result {
    let key = group.key();
    let mut new = Domain::alloc_for_group(group)?;
    if st.iommu.nesting {
        new.enable_nesting()?;
    }
    new.attach(group)?;
    // From here on, dropping `new` detaches the group and frees the domain.

    let (astart, aend) = new.aperture();
    if ciova::aper_conflict(&mut st.dmas, &st.domains.iovas, astart, aend) {
        return Err(EINVAL);
    }
    let resv = kiommu::group_resv_regions(group)?;
    if ciova::resv_conflict(&mut st.dmas, resv.iter().map(to_core)) {
        return Err(EINVAL);
    }
    let mut copy = IovaCopy::new(&st.domains.iovas, resv.len())?;
    copy.edit(|l| ciova::aper_resize(l, astart, aend)).map_err(err)?;
    copy.edit(|l| ciova::resv_exclude(l, resv.iter().map(to_core))).map_err(err)?;
    let sw_msi = ciova::has_sw_msi(resv.iter().map(to_core));

    if !params::allow_unsafe_interrupts() && !kiommu::group_has_isolated_msi(group) {
        pr_warn!(
            "No interrupt remapping support. Use the module param \"allow_unsafe_interrupts\" to enable VFIO IOMMU support on this platform\n"
        );
        return Err(EPERM);
    }
    // An IOMMU that can block no-snoop DMA always gets it blocked.
    let enforce_cc = new.enforce_cache_coherency();

    // A compatible domain takes the group, and the new one goes.
    let mut joined = false;
    for d in st.domains.list.iter_mut() {
        if d.domain.ops_id() != new.ops_id() || d.enforce_cc != enforce_cc {
            continue;
        }
        new.detach(key);
        if d.domain.attach(group).is_ok() {
            joined = true;
            break;
        }
        new.attach(group)?;
    }

    if !joined {
        st.domains.list.reserve(1, GFP_KERNEL)?;
        if let Some(base) = sw_msi {
            match new.get_msi_cookie(base) {
                Ok(()) => {}
                Err(e) if e == ENODEV => {}
                Err(e) => return Err(e),
            }
        }
        replay(st, &new)?;
        // `reserve` above made room: this push cannot fail.
        st.domains.list.push(VfioDomain { domain: new, enforce_cc }, GFP_KERNEL)?;
        st.iommu.pgsize_bitmap = st.domains.pgsize_bitmap();
    }
    copy.install(&mut st.domains.iovas);
    st.iommu.has_domains = true;
    // An IOMMU-backed group can dirty any page it can reach: outside the
    // pinned dirty scope until its devices pin.
    drop(st.groups.insert(node.into_node(key, false)));
    st.iommu.group_attached(false);
    Ok(())
}

/// `detach_group` for a group behind a real IOMMU; false if `key` is not
/// attached to any domain (an mdev group). The caller has removed it from
/// `st.groups` already and settles its dirty scope.
pub(crate) fn detach(st: &mut State, key: GroupKey) -> bool {
    let Some(i) = st.domains.list.iter().position(|d| d.domain.has_group(key)) else {
        return false;
    };
    st.domains.list[i].domain.detach(key);
    let removed_domain = st.domains.list[i].domain.group_count() == 0;
    if removed_domain {
        // Group ownership gave the right to map: with the last IOMMU group
        // the mappings go, unless mdev groups remain, which keep them but
        // lose the IOMMU pins.
        if st.domains.list.len() == 1 {
            let emulated_left = count_groups(st) > st.domains.group_count();
            if emulated_left {
                unmap_unpin_reaccount(st);
            } else {
                unmap_unpin_all(st);
            }
        }
        remove_domain(&mut st.domains, i);
        st.iommu.pgsize_bitmap = st.domains.pgsize_bitmap();
        st.iommu.has_domains = !st.domains.is_empty();
    }
    // The IOVA ranges are rebuilt on a copy from the remaining apertures and
    // the remaining groups' reserved regions (the detached group's may be
    // valid IOVAs now). If that fails, the old ranges stay, as in C.
    let Ok(resv) = remaining_resv(&st.domains) else { return true };
    let Ok(mut copy) = IovaCopy::new(&st.domains.iovas, resv.len()) else { return true };
    if removed_domain {
        let apertures = collect_apertures(&st.domains);
        copy.edit(|l| ciova::aper_expand(l, apertures.iter().copied()));
    }
    if copy.edit(|l| ciova::resv_refresh(l, resv.iter().map(to_core))).is_ok() {
        copy.install(&mut st.domains.iovas);
    }
    true
}

fn count_groups(st: &State) -> usize {
    st.groups.iter().count()
}

fn collect_apertures(domains: &Domains) -> KVec<(u64, u64)> {
    let mut v = KVec::new();
    for d in domains.list.iter() {
        if v.push(d.domain.aperture(), GFP_KERNEL).is_err() {
            break;
        }
    }
    v
}

/// The reserved regions of every group still attached to a domain.
fn remaining_resv(domains: &Domains) -> Result<KVec<kiommu::ResvRegion>> {
    let mut all = KVec::new();
    for d in domains.list.iter() {
        d.domain.for_each_group(|g| {
            for r in kiommu::group_resv_regions(g)?.iter() {
                all.push(*r, GFP_KERNEL)?;
            }
            Ok(())
        })?;
    }
    Ok(all)
}

/// Drops the domain at `i` (it has no groups left). The last domain takes
/// its place: which domain comes first does not matter (the first one is
/// only where unmap looks up physical addresses).
fn remove_domain(domains: &mut Domains, i: usize) {
    let last = domains.list.len() - 1;
    domains.list.swap(i, last);
    // SAFETY: the element at `last` is moved out once and the length
    // shrunk past it, so it is neither dropped twice nor reachable.
    let d = unsafe { core::ptr::read(&domains.list[last]) };
    // SAFETY: as above; shrinking only.
    unsafe { domains.list.set_len(last) };
    drop(d);
}

/// `vfio_iommu_unmap_unpin_all`.
fn unmap_unpin_all(st: &mut State) {
    let State { iommu, dmas, domains, .. } = st;
    while let Some(k) = first_key(dmas) {
        match core_remove_dma(dmas, iommu, k) {
            Some(d) => remove_dma(domains, dmas, d),
            None => break,
        }
    }
}

/// `vfio_iommu_unmap_unpin_reaccount`: the last domain goes but mdev groups
/// stay; the mappings lose their IOMMU pins and are charged again for the
/// pages devices pinned.
fn unmap_unpin_reaccount(st: &mut State) {
    let State { dmas, domains, .. } = st;
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if let Some(dma) = dmas.get_mut(key) {
            let unlocked = unmap_unpin(domains, dma, false);
            let mut locked = 0i64;
            dma.pfns.for_each(|_, vpfn| {
                if mm::pfn_is_accountable(vpfn.pfn) {
                    locked += 1;
                }
            });
            lock_acct(dma, locked - unlocked);
        }
        k = next_key(dmas, key);
    }
}

/// Charges (`npage > 0`) or releases `npage` pages of `dma`'s owner's
/// `locked_vm`, as `vfio_lock_acct(dma, npage, true)`: nothing if the
/// process is gone (its pins went with it).
fn lock_acct(dma: &mut Dma, npage: i64) {
    if npage == 0 {
        return;
    }
    if dma.owner.mm().account_locked(dma.owner.task(), npage, dma.info.lock_cap).is_ok() {
        dma.info.locked_vm = dma.info.locked_vm.wrapping_add(npage as u64);
    }
}

/// Tears down a mapping removed from the tree (`vfio_remove_dma`): unmaps
/// it from every domain and gives its pins and their charge back, then
/// drops it and keeps its node for the next mapping.
#[inline]
pub(crate) fn remove_dma(domains: &Domains, dmas: &mut Mappings, mut dma: RemovedDma) {
    // Only a mapping in an IOMMU domain has anything to unmap and unpin:
    // the test is made here, so that an mdev-only unmap makes no call.
    if dma.info.size != 0 && !domains.is_empty() {
        unmap_unpin(domains, &mut dma, true);
    }
    dmas.release(dma);
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
fn pin_map(dma: &mut Dma, targets: Targets<'_>, npage: u64, grow: bool) -> Result {
    let mut cx = PinCtx::new(dma)?;
    let single = params::disable_hugepages();
    let batch_len = if single { 1 } else { PIN_BATCH };
    let mut batch = KVec::from_elem(core::ptr::null_mut(), batch_len, GFP_KERNEL)?;
    // Each batch as physically contiguous runs of one kind, worked out in
    // one C call (the C code goes page by page); page by page when huge
    // IOMMU pages are off.
    let mut runs = KVec::with_capacity(batch_len, GFP_KERNEL)?;
    for _ in 0..batch_len {
        runs.push(mm::PfnRun::default(), GFP_KERNEL)?;
    }
    let max_run = if single { 1 } else { u32::MAX };
    let device_pins = !cx.pfns.is_empty();
    let write = cx.write();
    let prot = cx.info.prot;
    let mut run: Option<Run> = None;
    let mut done = 0u64;
    while done < npage {
        mm::cond_resched();
        let want = core::cmp::min(batch_len as u64, npage - done) as usize;
        let vaddr = cx.info.vaddr + (done << PAGE_SHIFT);
        let got = match cx.users.pin_pages(vaddr, &mut batch[..want], write) {
            Ok(n) => n,
            Err(e) => {
                if let Some(r) = run {
                    cx.give_back(r.iova, r.pfn, r.npage);
                }
                return Err(e);
            }
        };
        let first_iova = cx.info.iova + (done << PAGE_SHIFT);
        let (nruns, unreserved) = mm::pages_to_runs(&batch[..got], max_run, &mut runs);
        let runs = runs.get(..nruns).unwrap_or(&[]);
        // Charge the new pins (device-pinned pages are charged already).
        let mut charge = unreserved as i64;
        if device_pins {
            charge = 0;
            let mut iova = first_iova;
            for r in runs {
                for j in 0..u64::from(r.npage) {
                    if !r.reserved && !cx.charged_by_device(iova + (j << PAGE_SHIFT)) {
                        charge += 1;
                    }
                }
                iova += u64::from(r.npage) << PAGE_SHIFT;
            }
        }
        if let Err(e) = cx.charge(charge) {
            if e == ENOMEM {
                pr_warn!("RLIMIT_MEMLOCK exceeded while pinning a mapping at iova {:#x}\n", cx.info.iova);
            }
            for r in runs.iter().filter(|r| !r.reserved) {
                mm::unpin_pfn_range(r.pfn as u64, u64::from(r.npage), write);
            }
            if let Some(r) = run {
                cx.give_back(r.iova, r.pfn, r.npage);
            }
            return Err(e);
        }
        let mut iova = first_iova;
        for (i, r) in runs.iter().enumerate() {
            let (pfn, n, rsvd) = (r.pfn as u64, u64::from(r.npage), r.reserved);
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
                        cx.give_back(at, rest.pfn as u64, u64::from(rest.npage));
                        at += u64::from(rest.npage) << PAGE_SHIFT;
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

/// Finds the largest run at `iova` that `d` maps physically contiguously,
/// up to `end`: (phys, len), or `None` if `iova` is not mapped.
fn mapped_run(d: &Domain, iova: u64, end: u64) -> Option<(u64, u64)> {
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

/// `vfio_iommu_replay`: makes `new` map every existing mapping.
fn replay(st: &mut State, new: &Domain) -> Result {
    let State { dmas, domains, .. } = st;
    let first = domains.first();
    let mut k = first_key(dmas);
    while let Some(key) = k {
        let Some(dma) = dmas.get_mut(key) else { break };
        let r = if dma.info.iommu_mapped {
            // Another domain has it: copy its translations.
            match first {
                Some(f) => copy_mappings(f, new, dma),
                None => Err(EINVAL),
            }
        } else {
            let npage = dma.info.size >> PAGE_SHIFT;
            pin_map(dma, Targets::One(new), npage, false)
        };
        if let Err(e) = r {
            replay_unwind(dmas, new, key);
            return Err(e);
        }
        k = next_key(dmas, key);
    }
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if let Some(dma) = dmas.get_mut(key) {
            dma.info.iommu_mapped = true;
        }
        k = next_key(dmas, key);
    }
    Ok(())
}

fn copy_mappings(from: &Domain, to: &Domain, dma: &Dma) -> Result {
    let end = dma.info.iova + dma.info.size;
    let mut iova = dma.info.iova;
    while iova < end {
        let Some((phys, len)) = mapped_run(from, iova, end) else {
            pr_warn!("mapping at iova {iova:#x} is missing from the first IOMMU domain\n");
            iova += PAGE_SIZE;
            continue;
        };
        to.map(iova, phys, len, dma.info.prot | IOMMU_CACHE)?;
        iova += len;
        mm::cond_resched();
    }
    Ok(())
}

/// Undoes a failed replay up to and including the mapping at `last`.
fn replay_unwind(dmas: &mut Mappings, new: &Domain, last: u64) {
    let mut k = first_key(dmas);
    while let Some(key) = k {
        if key > last {
            break;
        }
        if let Some(dma) = dmas.get_mut(key) {
            if dma.info.iommu_mapped {
                new.unmap(dma.info.iova, dma.info.size);
            } else {
                // Pinned for `new` alone: unmap and unpin what it maps.
                let end = dma.info.iova + dma.info.size;
                let mut iova = dma.info.iova;
                let mut unlocked = 0i64;
                while iova < end {
                    let Some((phys, len)) = mapped_run(new, iova, end) else {
                        iova += PAGE_SIZE;
                        continue;
                    };
                    new.unmap(iova, len);
                    unlocked += unpin_run(dma, phys >> PAGE_SHIFT, len >> PAGE_SHIFT);
                    iova += len;
                }
                lock_acct(dma, -unlocked);
            }
        }
        k = next_key(dmas, key);
    }
}

/// Unpins the accountable pages of a contiguous run; returns how many.
fn unpin_run(dma: &Dma, pfn: u64, npage: u64) -> i64 {
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
pub(crate) fn unmap_unpin(domains: &Domains, dma: &mut Dma, do_accounting: bool) -> i64 {
    if dma.info.size == 0 {
        return 0;
    }
    let Some(first) = domains.first() else { return 0 };
    let (start, end) = (dma.info.iova, dma.info.iova + dma.info.size);
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
    // SAFETY: emptying a vector of plain `Copy` values.
    unsafe { pending.set_len(0) };
    mm::cond_resched();
    unlocked
}
