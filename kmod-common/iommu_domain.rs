// SPDX-License-Identifier: GPL-2.0

//! The kernel's IOMMU subsystem (`drivers/iommu/`), as a VFIO backend uses
//! it: paging domains for the groups it serves, their page tables and TLB
//! flushing, and what a group's IOMMU reports (reserved regions, interrupt
//! isolation). Not to be confused with type1's container state
//! (`type1_core::container`) or its real-IOMMU path (`kmod-iommu/real_iommu/`),
//! which use this module.
//!
//! C header: [`include/linux/iommu.h`](srctree/include/linux/iommu.h).
//!
//! A [`Domain`] owns an `iommu_domain` allocated for a group's IOMMU and
//! records the groups attached to it; dropping it detaches them and frees
//! the domain. Page-table calls take `&self`: the IOMMU drivers serialise
//! their own page-table updates, and the caller keeps mapped ranges
//! disjoint (type1 does so under its container lock).
//!
//! # Who owns the pins the page tables hold
//!
//! A [`DomainSet`] (a container's domains) owns the pinned pages its page
//! tables map, and is the only way to put entries there: a
//! [`mm::PinnedRun`] is mapped into every domain ([`DomainSet::map`]; small
//! runs a [`RunList`] at a time, [`DomainSet::map_list`]), which takes
//! over its pins (or gives the run back on failure), and a
//! domain being added copies the first domain's entries ([`Replay`]). The
//! pins leave only with [`DomainSet::unmap_unpin`]: every domain unmaps the
//! range, the IOTLB is flushed (gathered, up to [`TLB_SYNC_MAX`] runs per
//! flush), and only then are the pins of what the first domain mapped given
//! back. So a device never reaches a page after its pin is given back, and
//! no caller can map a physical address it did not pin. The page-table
//! calls of [`Domain`] are private to this module.
//!
//! # Finding the runs to unpin
//!
//! An unmap must learn, for each page it takes out, which page it maps,
//! to give back that page's pin. The page tables say so, but only one
//! `iommu_iova_to_phys` per 4 KiB page at a time, which makes an unmap of
//! huge pages cost several times its map (docs/bench.md, "Cost growth").
//! So the set also remembers every run of 2 MiB or more that it mapped
//! ([`CACHED_RUN_PAGES`]): a cache of what the page tables hold, private
//! to the set, by IOVA. An unmap takes a remembered run out in one
//! `iommu_unmap_fast` and unpins it in one call; between remembered runs
//! (4 KiB pages, small runs, a node that could not be allocated) it walks
//! the first domain's page tables as before. Every change to the page
//! tables goes through the set, which forgets the runs it unmaps, so the
//! cache cannot say what the page tables do not.

use crate::bindings;
use crate::kvec_ext::VecExt;
use crate::mm::{self, PinnedRun};
use crate::rb_map::{Node, RbMap, RbSlot, RbValue};
use crate::slab::{CacheNodes, FromCache, ModuleCache};
use crate::vfio_iommu_devices::{GroupKey, IommuGroup};
use core::ptr::NonNull;
use kernel::error::{from_err_ptr, to_result};
use kernel::ffi;
use kernel::prelude::*;
use kernel::types::Opaque;

/// `IOMMU_READ`: the device may read the mapping.
pub(crate) const IOMMU_READ: u32 = bindings::IOMMU_READ;
/// `IOMMU_WRITE`: the device may write the mapping.
pub(crate) const IOMMU_WRITE: u32 = bindings::IOMMU_WRITE;
/// `IOMMU_CACHE`: the mapping is cache-coherent.
pub(crate) const IOMMU_CACHE: u32 = bindings::IOMMU_CACHE;

/// A domain as the VFIO core asks for it (`group_iommu_domain`): only
/// handed back to C, never dereferenced in Rust.
pub(crate) struct DomainHandle(NonNull<bindings::iommu_domain>);

impl DomainHandle {
    /// The C domain, for the trampoline that returns it to the VFIO core.
    pub(crate) fn as_ptr(&self) -> *mut bindings::iommu_domain {
        self.0.as_ptr()
    }
}

/// `iommu_group_for_each_dev` callback: allocates a paging domain for the
/// first device's IOMMU into `*data` and stops the walk.
///
/// # Safety
///
/// `dev` is a valid device and `data` points to a `*mut iommu_domain`
/// valid for writes (what [`Domain::alloc_for_group`] passes).
unsafe extern "C" fn alloc_on_first_dev(dev: *mut bindings::device, data: *mut ffi::c_void) -> ffi::c_int {
    // SAFETY: see the function's safety section.
    unsafe { data.cast::<*mut bindings::iommu_domain>().write(bindings::iommu_paging_domain_alloc(dev)) };
    1
}

/// A paging IOMMU domain and the groups attached to it.
///
/// # Invariants
///
/// `raw` is a domain from `iommu_paging_domain_alloc` that this value owns;
/// every group in `groups` is attached to it, and the VFIO core keeps each
/// such group alive until the backend detaches it.
pub(crate) struct Domain {
    raw: NonNull<bindings::iommu_domain>,
    groups: KVec<NonNull<bindings::iommu_group>>,
    /// Enforced cache coherency was turned on.
    enforce_cc: bool,
}

// SAFETY: an IOMMU domain may be used and freed from any thread; the group
// pointers are only passed back to the IOMMU core.
unsafe impl Send for Domain {}
// SAFETY: the `&self` methods are the IOMMU core's page-table calls, which
// the IOMMU drivers make safe to call concurrently on disjoint ranges.
unsafe impl Sync for Domain {}

impl Domain {
    /// Allocates a paging domain for the IOMMU behind `group`'s devices
    /// (`iommu_paging_domain_alloc` on the group's first device).
    pub(crate) fn alloc_for_group(group: &IommuGroup) -> Result<Self> {
        let mut groups = KVec::new();
        groups.reserve(1, GFP_KERNEL)?;
        let mut d: *mut bindings::iommu_domain = core::ptr::null_mut();
        // SAFETY: the group is valid for the call (reference invariant) and
        // the iterator holds its lock, so its devices stay while the
        // callback runs; `d` is valid for the callback's write.
        unsafe {
            bindings::iommu_group_for_each_dev(
                group.as_raw(),
                core::ptr::addr_of_mut!(d).cast(),
                Some(alloc_on_first_dev),
            )
        };
        // No device (an empty group): nothing to allocate for.
        let raw = NonNull::new(from_err_ptr(d)?).ok_or(ENODEV)?;
        // INVARIANT: a fresh domain from the allocator, no group attached.
        Ok(Domain { raw, groups, enforce_cc: false })
    }

    fn as_ptr(&self) -> *mut bindings::iommu_domain {
        self.raw.as_ptr()
    }

    /// The C domain, for the VFIO core (`group_iommu_domain`), which only
    /// uses it while the group stays attached.
    pub(crate) fn handle(&self) -> DomainHandle {
        DomainHandle(self.raw)
    }

    /// Attaches `group` (`iommu_attach_group`); the group's devices then
    /// reach memory only through this domain's page tables.
    pub(crate) fn attach(&mut self, group: &IommuGroup) -> Result {
        self.groups.reserve(1, GFP_KERNEL)?;
        // SAFETY: the domain is ours (type invariant) and the group valid.
        to_result(unsafe { bindings::iommu_attach_group(self.as_ptr(), group.as_raw()) })?;
        // INVARIANT: attached just above. `reserve` made room, so this cannot fail.
        self.groups.push(NonNull::from(group).cast(), GFP_KERNEL)?;
        Ok(())
    }

    /// Detaches the group with `key`, if attached here; true if it was.
    pub(crate) fn detach(&mut self, key: GroupKey) -> bool {
        let Some(i) = self.groups.iter().position(|g| GroupKey::of_raw(g.as_ptr()) == key) else {
            return false;
        };
        let Some(g) = self.groups.swap_remove(i) else { return false };
        // SAFETY: `g` was attached to our domain and is alive (type
        // invariant); it is off the list now, so it is detached once.
        unsafe { bindings::iommu_detach_group(self.as_ptr(), g.as_ptr()) };
        true
    }

    /// Whether the group with `key` is attached here.
    pub(crate) fn has_group(&self, key: GroupKey) -> bool {
        self.groups.iter().any(|g| GroupKey::of_raw(g.as_ptr()) == key)
    }

    /// Number of attached groups.
    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Calls `f` on each attached group.
    pub(crate) fn for_each_group(&self, mut f: impl FnMut(&IommuGroup) -> Result) -> Result {
        for g in self.groups.iter() {
            // SAFETY: attached groups are alive (type invariant) while `self` is borrowed.
            f(unsafe { IommuGroup::from_raw(g.as_ptr()) })?;
        }
        Ok(())
    }

    /// An identity of the IOMMU driver (its `iommu_domain_ops`): two
    /// domains with the same identity can hold each other's groups.
    pub(crate) fn ops_id(&self) -> usize {
        // SAFETY: the domain is valid (type invariant); `ops` is set at
        // allocation and never changes.
        unsafe { (*self.as_ptr()).ops as usize }
    }

    /// Turns on enforced cache coherency (no-snoop DMA blocked) if the
    /// IOMMU can; true if it is on.
    pub(crate) fn enforce_cache_coherency(&mut self) -> bool {
        // SAFETY: the domain is valid (type invariant); its `ops` points to
        // the IOMMU driver's static table.
        let f = unsafe { (*(*self.as_ptr()).ops).enforce_cache_coherency };
        self.enforce_cc = match f {
            // SAFETY: the driver's own op, called on its own domain.
            Some(f) => unsafe { f(self.as_ptr()) },
            None => false,
        };
        self.enforce_cc
    }

    /// Whether [`Self::enforce_cache_coherency`] turned it on.
    pub(crate) fn enforces_cc(&self) -> bool {
        self.enforce_cc
    }

    /// The aperture: first and last mappable IOVA.
    pub(crate) fn aperture(&self) -> (u64, u64) {
        // SAFETY: the domain is valid (type invariant); the geometry is set
        // at allocation and never changes.
        let g = unsafe { &(*self.as_ptr()).geometry };
        (g.aperture_start, g.aperture_end)
    }

    /// The IOMMU page sizes this domain can map.
    pub(crate) fn pgsize_bitmap(&self) -> u64 {
        // SAFETY: as for `aperture`.
        unsafe { (*self.as_ptr()).pgsize_bitmap as u64 }
    }

    /// Maps `size` bytes at `iova` to the physical range at `paddr`
    /// (`iommu_map`; the IOMMU core picks the largest page sizes the
    /// alignment allows). Private: only a [`DomainSet`] maps, pages whose
    /// pins it owns.
    fn map(&self, iova: u64, paddr: u64, size: u64, prot: u32) -> Result {
        let size = usize::try_from(size).map_err(|_| EINVAL)?;
        // SAFETY: the domain is valid; the caller (this module) owns the
        // IOVA range and keeps the physical pages pinned until it unmaps
        // them. The page-table allocations are charged to the caller's memcg.
        to_result(unsafe {
            bindings::iommu_map(
                self.as_ptr(),
                iova as ffi::c_ulong,
                paddr,
                size,
                prot as ffi::c_int,
                bindings::GFP_KERNEL_ACCOUNT,
            )
        })
    }

    /// Maps the `n` entries of `sg`, `size` bytes in all, from `iova` on
    /// with `prot`, and syncs the IOMMU's map-time caches once
    /// (`iommu_map_sg`). On failure the IOMMU core has unmapped what it
    /// mapped.
    ///
    /// # Safety
    ///
    /// `sg` is an initialised scatterlist of at least `n` entries (the last
    /// marked as the end) whose pages the caller keeps pinned until it
    /// unmaps them, and the caller owns the IOVA range.
    unsafe fn map_sg(&self, iova: u64, sg: *mut bindings::scatterlist, n: usize, size: u64, prot: u32) -> Result {
        let n = ffi::c_uint::try_from(n).map_err(|_| EINVAL)?;
        // SAFETY: the domain is valid; `sg` and the IOVA range as the
        // function's contract says. The page-table allocations are charged
        // to the caller's memcg.
        let mapped = unsafe {
            bindings::iommu_map_sg(
                self.as_ptr(),
                iova as ffi::c_ulong,
                sg,
                n,
                prot as ffi::c_int,
                bindings::GFP_KERNEL_ACCOUNT,
            )
        };
        if mapped < 0 {
            return Err(Error::from_errno(mapped as i32));
        }
        if mapped as u64 != size {
            // Not all of it (an entry the IOMMU core skipped): not what was asked.
            self.unmap(iova, mapped as u64);
            return Err(EINVAL);
        }
        Ok(())
    }

    /// Unmaps up to `size` bytes at `iova` and flushes the IOTLB
    /// (`iommu_unmap`); returns the bytes unmapped.
    fn unmap(&self, iova: u64, size: u64) -> u64 {
        // SAFETY: the domain is valid; unmapping any range is allowed.
        unsafe { bindings::iommu_unmap(self.as_ptr(), iova as ffi::c_ulong, size as usize) as u64 }
    }

    /// Unmaps up to `size` bytes at `iova` without flushing: the flush is
    /// gathered in `gather` until [`Domain::iotlb_sync`]. The pages stay
    /// reachable by the device until then, so they must stay pinned:
    /// private to [`DomainSet::unmap_unpin`], which unpins after the flush.
    fn unmap_fast(&self, iova: u64, size: u64, gather: &IotlbGather) -> u64 {
        // SAFETY: the domain is valid; `gather` was initialised in place
        // and is used for this domain only (its one user, `unmap_unpin`).
        unsafe {
            bindings::iommu_unmap_fast(self.as_ptr(), iova as ffi::c_ulong, size as usize, gather.inner.get()) as u64
        }
    }

    /// Flushes what `gather` collected and frees the page-table pages it
    /// held; `gather` is empty again afterwards.
    fn iotlb_sync(&self, gather: &IotlbGather) {
        // SAFETY: as for `unmap_fast`.
        unsafe { bindings::kmod_helper_iotlb_sync(self.as_ptr(), gather.inner.get()) };
    }

    /// The physical address `iova` maps to, 0 if none.
    fn iova_to_phys(&self, iova: u64) -> u64 {
        // SAFETY: the domain is valid; a lookup has no other precondition.
        unsafe { bindings::iommu_iova_to_phys(self.as_ptr(), iova) }
    }

    /// The largest run at `iova` that this domain maps physically
    /// contiguously, up to `end`: (phys, len), or `None` if `iova` is not
    /// mapped.
    fn mapped_run(&self, iova: u64, end: u64) -> Option<(u64, u64)> {
        let phys = self.iova_to_phys(iova);
        if phys == 0 {
            return None;
        }
        let next = iova + PAGE_SIZE;
        if next >= end || self.iova_to_phys(next) != phys + PAGE_SIZE {
            return Some((phys, PAGE_SIZE));
        }
        Some((phys, self.contiguous_len(iova, phys, end)))
    }

    /// [`Self::mapped_run`]'s length where the run has two pages or more.
    /// Out of line: its per-page loop then keeps its values in registers
    /// of its own (inlined into the unmap, it took two more moves a page).
    #[inline(never)]
    fn contiguous_len(&self, iova: u64, phys: u64, end: u64) -> u64 {
        let mut len = 2 * PAGE_SIZE;
        while iova + len < end && self.iova_to_phys(iova + len) == phys + len {
            len += PAGE_SIZE;
        }
        len
    }

    /// Asks for a nesting-capable domain (`VFIO_TYPE1_NESTING_IOMMU`);
    /// IOMMUs without nesting refuse with `EINVAL`.
    pub(crate) fn enable_nesting(&self) -> Result {
        // SAFETY: the domain is valid and nothing is attached to it yet.
        to_result(unsafe { bindings::iommu_enable_nesting(self.as_ptr()) })
    }

    /// Sets up the software MSI window at `base` for platforms whose MSIs
    /// go through the IOMMU (`iommu_get_msi_cookie`).
    pub(crate) fn get_msi_cookie(&self, base: u64) -> Result {
        // SAFETY: the domain is valid and has no cookie yet (the caller
        // asks once, before the domain is in use).
        to_result(unsafe { bindings::iommu_get_msi_cookie(self.as_ptr(), base) })
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        for g in self.groups.iter() {
            // SAFETY: attached and alive (type invariant).
            unsafe { bindings::iommu_detach_group(self.as_ptr(), g.as_ptr()) };
        }
        // SAFETY: we own the domain and nothing is attached any more.
        unsafe { bindings::iommu_domain_free(self.as_ptr()) };
    }
}

const PAGE_SHIFT: u32 = kernel::page::PAGE_SHIFT as u32;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Runs unmapped between two IOTLB flushes (`VFIO_IOMMU_TLB_SYNC_MAX`).
pub(crate) const TLB_SYNC_MAX: usize = 512;

/// The shortest run a [`DomainSet`] remembers, in pages: 2 MiB, a THP or
/// hugetlbfs folio. A node costs an allocation and a tree insertion at map
/// time (a few hundred instructions), which shorter runs would not win back
/// at unmap time (about 200 instructions a page for the walk), and 4 KiB
/// pages, each a run of its own, would cost a node each.
pub(crate) const CACHED_RUN_PAGES: u64 = 512;

/// A physically contiguous run that a [`DomainSet`] mapped: `npage` pages
/// at `iova`, from page frame `pfn` on.
pub(crate) struct MappedRun {
    iova: u64,
    pfn: u64,
    npage: u64,
}

impl MappedRun {
    fn end(&self) -> u64 {
        self.iova + (self.npage << PAGE_SHIFT)
    }
}

impl RbValue for MappedRun {
    #[inline(always)]
    fn rb_key(&self) -> u64 {
        self.iova
    }
}

/// The slab cache of the remembered runs' nodes: created at module load
/// (`type1.rs`), destroyed at unload, when no container is left.
pub(crate) static RUN_NODES: ModuleCache<Node<MappedRun>> = ModuleCache::new();

impl CacheNodes for MappedRun {
    #[inline(always)]
    fn cache() -> &'static ModuleCache<Node<MappedRun>> {
        &RUN_NODES
    }
}

/// The runs a [`DomainSet`] remembers, by IOVA.
type RunCache = RbMap<MappedRun, FromCache<MappedRun>>;

/// The IOMMU domains of a container (the C `domain_list`), owning the pins
/// of the pages their page tables map; see the module documentation.
///
/// # Invariants
///
/// Every domain in `list` maps the same pages at the same IOVAs. For each
/// IOVA page that the first domain maps to an accountable page
/// ([`mm::pfn_is_accountable`]), this value holds one long-term pin of that
/// page, taken over from a [`PinnedRun`]; non-accountable pages (reserved
/// pages, device memory) were mapped from reserved runs, which hold none.
///
/// Each run in `runs` is mapped by every domain as it says: the IOVAs
/// `[iova, iova + npage pages)` to the page frames `[pfn, pfn + npage)`,
/// in order. The runs do not overlap, and `runs` is empty when `list` is.
pub(crate) struct DomainSet {
    list: KVec<Domain>,
    runs: RunCache,
}

impl DomainSet {
    /// No domain.
    pub(crate) fn new() -> Self {
        // INVARIANT: no domain maps anything, and no run is remembered.
        DomainSet { list: KVec::new(), runs: RunCache::new() }
    }

    /// The domains, in order (the first is where unmap looks up pages).
    pub(crate) fn domains(&self) -> &[Domain] {
        &self.list
    }

    /// Whether there is no domain.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Attaches `group` to the domain at `i` ([`Domain::attach`]).
    pub(crate) fn attach_group(&mut self, i: usize, group: &IommuGroup) -> Result {
        self.list.get_mut(i).ok_or(EINVAL)?.attach(group)
    }

    /// Detaches the group with `key` from its domain; that domain's index.
    pub(crate) fn detach_group(&mut self, key: GroupKey) -> Option<usize> {
        let i = self.list.iter().position(|d| d.has_group(key))?;
        self.list.get_mut(i)?.detach(key);
        Some(i)
    }

    /// Drops the domain at `i` (detaching its groups, freeing it). The last
    /// domain takes its place: all domains map the same pages, so any of
    /// them can be first. Pins that only the last domain held are leaked:
    /// unmap everything first ([`Self::unmap_unpin`]).
    pub(crate) fn remove(&mut self, i: usize) {
        // INVARIANT: the remaining domains still map the same pages; the
        // new first one maps what the old one did. Without a domain,
        // nothing is mapped: no run is remembered.
        drop(self.list.swap_remove(i));
        if self.list.is_empty() {
            self.runs = RunCache::new();
        }
    }

    /// Adds `new` after `replay` made it map what the others map (copied
    /// from the first domain, or pinned now if there is none): see
    /// [`Replay`]. If `replay` fails, `new` is dropped; `replay` must have
    /// unmapped what it mapped by then (or its pins leak).
    pub(crate) fn add(&mut self, new: Domain, replay: impl FnOnce(&Replay<'_>) -> Result) -> Result {
        self.list.reserve(1, GFP_KERNEL)?;
        replay(&Replay { first: self.list.first(), new: &new })?;
        // INVARIANT: `new` maps what the first domain maps (`Replay`'s
        // contract with `replay`, which succeeded), or is the only domain;
        // the remembered runs are mapped by it too. `reserve` above made
        // room: this push cannot fail.
        self.list.push(new, GFP_KERNEL)?;
        Ok(())
    }

    /// Maps `run` at `iova` into every domain with `prot` (`IOMMU_READ`,
    /// `IOMMU_WRITE`; `IOMMU_CACHE` is added), taking over its pins: `run`
    /// is left empty (`vfio_iommu_map`). On failure the run is unmapped from
    /// the domains already done and left as it was. `EINVAL` without a
    /// domain, or for `IOMMU_WRITE` on pages not pinned for writing.
    #[inline]
    pub(crate) fn map(&mut self, iova: u64, run: &mut PinnedRun, prot: u32) -> Result {
        if self.list.is_empty() {
            return Err(EINVAL);
        }
        let (pfn, npage) = (run.pfn(), run.npage());
        map_into(&self.list, iova, run, prot)?;
        if npage >= CACHED_RUN_PAGES {
            self.remember(MappedRun { iova, pfn, npage });
        }
        Ok(())
    }

    /// Maps the runs gathered in `list` into every domain with `prot`, as
    /// [`Self::map`] maps one: the domains take over their pins and `list`
    /// is left empty; on failure the runs are unmapped from the domains
    /// already done and `list` is left as it was.
    #[inline]
    pub(crate) fn map_list(&mut self, list: &mut RunList, prot: u32) -> Result {
        if self.list.is_empty() {
            return Err(EINVAL);
        }
        // Shorter than `CACHED_RUN_PAGES` (`RunList::push`): nothing to remember.
        map_list_into(&self.list, list, prot)
    }

    /// Remembers `run`, just mapped by every domain. Without memory for
    /// its node, it is not: the unmap walks the page tables there instead.
    #[cold]
    fn remember(&mut self, run: MappedRun) {
        // IOMMU drivers refuse to map over a present entry, so nothing
        // remembered overlaps a new run; if one did, the page tables no
        // longer map it as remembered: it goes.
        self.forget(run.iova, run.end());
        let Ok(slot) = RbSlot::new() else { return };
        // INVARIANT: every domain maps `run` (`map_into` succeeded), and no
        // remembered run overlaps it any more. The insertion cannot find
        // the key taken: `forget` removed whatever started there.
        let _ = self.runs.insert(slot, run);
    }

    /// Forgets the remembered runs that overlap `[start, end)`.
    fn forget(&mut self, start: u64, end: u64) {
        if self.runs.is_empty() {
            return;
        }
        forget_straddling(&mut self.runs, start);
        let mut next = self.runs.ceil_key(start);
        while let Some(k) = next.filter(|&k| k < end) {
            next = self.runs.remove_then_next(k).1.map(|(k, _)| k);
        }
    }

    /// `vfio_unmap_unpin` for `size` bytes at `iova`: unmaps them from every
    /// domain and, if `pinned` (the range holds pins at all), gives back the
    /// pins of the pages the first domain mapped there, marking them dirty
    /// if `dirty`, each only after the IOTLB flush that covers it. Returns
    /// how many pins were given back (accountable pages).
    pub(crate) fn unmap_unpin(&mut self, iova: u64, size: u64, pinned: bool, dirty: bool) -> u64 {
        let Some(first) = self.list.first() else { return 0 };
        if !pinned {
            // Device memory only: nothing to unpin, so no runs to find.
            for d in self.list.iter() {
                d.unmap(iova, size);
                mm::cond_resched();
            }
            // INVARIANT: what was remembered there is no longer mapped.
            self.forget(iova, iova + size);
            return 0;
        }
        // The first domain tells which pages to unpin; the others go at
        // once, so that no translation remains once the pages are unpinned.
        for d in self.list.iter().skip(1) {
            d.unmap(iova, size);
            mm::cond_resched();
        }
        // A remembered run that starts before the range and reaches into
        // it is only partly unmapped: the walk finds its pages instead.
        forget_straddling(&mut self.runs, iova);
        // INVARIANT: the first domain's pins are given back below as its
        // entries go, and the runs remembered in the range are forgotten
        // as they are unmapped; the other domains no longer map the range.
        // SAFETY: the first domain of the set: we own the pins of the
        // accountable pages it maps (type invariant); `runs` are the set's
        // remembered runs, mapped by it as they say (type invariant).
        unsafe { unmap_unpin_first(first, &mut self.runs, iova, size, dirty) }
    }
}

/// Forgets the remembered run that starts before `at` and reaches past it,
/// if there is one.
fn forget_straddling(runs: &mut RunCache, at: u64) {
    if let Some(k) = runs.floor_key(at) {
        if k < at && runs.get(k).is_some_and(|r| r.end() > at) {
            drop(runs.remove(k));
        }
    }
}

/// Maps `run` at `iova` into every domain of `domains` (not empty), as
/// [`DomainSet::map`].
#[inline]
fn map_into(domains: &[Domain], iova: u64, run: &mut PinnedRun, prot: u32) -> Result {
    if prot & IOMMU_WRITE != 0 && !run.is_writable() {
        return Err(EINVAL);
    }
    let (paddr, size) = (run.pfn() << PAGE_SHIFT, run.npage() << PAGE_SHIFT);
    for (i, d) in domains.iter().enumerate() {
        if let Err(e) = d.map(iova, paddr, size, prot | IOMMU_CACHE) {
            for done in domains.iter().take(i).rev() {
                done.unmap(iova, size);
            }
            return Err(e);
        }
        mm::cond_resched();
    }
    // The page tables hold the pins now (the caller's invariant): the run
    // must not give them back.
    core::mem::forget(core::mem::take(run));
    Ok(())
}

/// Small pinned runs for consecutive IOVAs, gathered to be mapped into the
/// domains together ([`DomainSet::map_list`]): one `iommu_map_sg` per
/// domain maps them all and syncs the IOMMU's map-time caches
/// (`iotlb_sync_map`) once, where one `iommu_map` per run, as the C type1
/// makes, syncs once per run. On an IOMMU in caching mode (a virtual
/// IOMMU such as QEMU's `intel-iommu,caching-mode=on`, which a VFIO user
/// inside a guest sits behind) each sync is an invalidation the IOMMU must
/// process, and memory of 4 KiB pages is a run per page.
///
/// Only runs that are not reserved and shorter than [`CACHED_RUN_PAGES`]
/// are gathered: the page tables get the entries they would get run by run
/// (two gathered runs never continue each other physically, else they
/// would be one run, so `iommu_map_sg` merges none); a longer run is
/// mapped on its own and remembered, and a reserved one may be device
/// memory, which has no `struct page` for a scatterlist entry.
///
/// The list is allocated when a second run comes (one run is mapped with
/// `iommu_map` as before, and a mapping of one THP or hugetlbfs folio
/// allocates nothing); without memory for it, runs are mapped one by one.
///
/// # Invariants
///
/// The runs, `first` then `rest`, are to be mapped one after the other
/// from `iova`, `bytes` in all; `first` is empty only if `rest` is. Each
/// is unreserved (its pages have `struct page`s) and shorter than
/// [`CACHED_RUN_PAGES`]; there are at most `room`. `writable` is whether
/// every run is writable. `rest` is empty while not allocated.
pub(crate) struct RunList {
    iova: u64,
    bytes: u64,
    writable: bool,
    room: usize,
    first: PinnedRun,
    rest: Option<Gathered>,
}

/// The allocated part of a [`RunList`]: the runs after the first, and a
/// scatterlist.
///
/// # Invariants
///
/// `runs` has capacity for `room - 1` runs and `sg` for `room` entries
/// (`room` of the list).
struct Gathered {
    runs: KVec<PinnedRun>,
    sg: KVec<bindings::scatterlist>,
}

impl RunList {
    /// Room for `room` runs (allocated when needed); with none,
    /// [`Self::push`] takes nothing.
    #[inline]
    pub(crate) fn new(room: usize) -> Self {
        // INVARIANT: empty.
        RunList { iova: 0, bytes: 0, writable: true, room, first: PinnedRun::default(), rest: None }
    }

    /// Whether no run is gathered.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.first.npage() == 0
    }

    /// The bytes the gathered runs cover.
    #[inline(always)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gathers `run`, to be mapped at `iova`: if it is small and
    /// unreserved, follows the gathered runs in IOVA, and there is room
    /// (and, for a second run, memory for the list). Otherwise it is
    /// handed back.
    #[inline]
    pub(crate) fn push(&mut self, iova: u64, run: PinnedRun) -> core::result::Result<(), PinnedRun> {
        if run.is_reserved() || run.npage() >= CACHED_RUN_PAGES || run.npage() == 0 || self.room == 0 {
            return Err(run);
        }
        if self.is_empty() {
            // INVARIANT: the first run, as checked above.
            self.iova = iova;
            self.bytes = run.npage() << PAGE_SHIFT;
            self.writable = run.is_writable();
            self.first = run;
            return Ok(());
        }
        if iova != self.iova.wrapping_add(self.bytes) {
            return Err(run);
        }
        let rest = match &mut self.rest {
            Some(rest) => rest,
            None => match Self::allocate(self.room) {
                Ok(rest) => self.rest.insert(rest),
                Err(_) => return Err(run),
            },
        };
        if 1 + rest.runs.len() >= self.room {
            return Err(run);
        }
        self.bytes += run.npage() << PAGE_SHIFT;
        self.writable &= run.is_writable();
        // INVARIANT: checked above. `runs` has capacity for `room - 1`
        // runs and holds fewer, so this push does not allocate and cannot
        // fail.
        let _ = rest.runs.push(run, GFP_KERNEL);
        Ok(())
    }

    /// The list's allocated part for `room` runs.
    #[cold]
    fn allocate(room: usize) -> Result<Gathered> {
        let runs = KVec::with_capacity(room - 1, GFP_KERNEL)?;
        let sg = KVec::with_capacity(room, GFP_KERNEL)?;
        // INVARIANT: as the type says.
        Ok(Gathered { runs, sg })
    }

    /// Takes the gathered runs out, each with its IOVA, in order: the list
    /// is empty afterwards.
    pub(crate) fn take_each(&mut self, mut each: impl FnMut(u64, PinnedRun)) {
        let mut iova = self.iova;
        let first = core::mem::take(&mut self.first);
        let rest = self.rest.as_mut().map_or(&mut [][..], |r| &mut r.runs[..]);
        let runs = Iterator::chain(core::iter::once(first), rest.iter_mut().map(core::mem::take));
        for run in runs.filter(|r| r.npage() != 0) {
            let len = run.npage() << PAGE_SHIFT;
            each(iova, run);
            iova += len;
        }
        if let Some(rest) = &mut self.rest {
            rest.runs.clear();
        }
        self.bytes = 0;
    }
}

/// Maps the runs of `list` into every domain of `domains` (not empty), as
/// [`DomainSet::map_list`].
fn map_list_into(domains: &[Domain], list: &mut RunList, prot: u32) -> Result {
    if list.is_empty() {
        return Ok(());
    }
    let rest = match &mut list.rest {
        Some(rest) if !rest.runs.is_empty() => rest,
        _ => {
            // One run: no scatterlist.
            map_into(domains, list.iova, &mut list.first, prot)?;
            list.bytes = 0;
            return Ok(());
        }
    };
    if prot & IOMMU_WRITE != 0 && !list.writable {
        return Err(EINVAL);
    }
    let n = 1 + rest.runs.len();
    let sg = rest.sg.spare_capacity_mut();
    if sg.len() < n {
        return Err(EINVAL);
    }
    let sg = sg.as_mut_ptr().cast::<bindings::scatterlist>();
    // SAFETY: `sg` points to room for at least `n` entries (checked just
    // above), which this initialises as an unchained list whose last entry
    // is the `n`th.
    unsafe { bindings::sg_init_table(sg, n as ffi::c_uint) };
    for (i, run) in Iterator::chain(core::iter::once(&list.first), rest.runs.iter()).enumerate() {
        // SAFETY: entry `i < n` was initialised above. The run is
        // unreserved, so its pages have `struct page`s, and shorter than
        // 2 MiB, so its length fits the entry (type invariant).
        unsafe { bindings::kmod_helper_sg_set_pfn(sg.add(i), run.pfn() as ffi::c_ulong, (run.npage() << PAGE_SHIFT) as ffi::c_uint) };
    }
    for (i, d) in domains.iter().enumerate() {
        // SAFETY: `sg` describes the `n` runs, which stay pinned: they are
        // ours until the domains take them over below, or given back by
        // the caller after this unmaps them on failure.
        if let Err(e) = unsafe { d.map_sg(list.iova, sg, n, list.bytes, prot | IOMMU_CACHE) } {
            for done in domains.iter().take(i).rev() {
                done.unmap(list.iova, list.bytes);
            }
            return Err(e);
        }
        mm::cond_resched();
    }
    // The page tables hold the pins now (the caller's invariant): the runs
    // must not give them back.
    core::mem::forget(core::mem::take(&mut list.first));
    for run in rest.runs.iter_mut() {
        core::mem::forget(core::mem::take(run));
    }
    rest.runs.clear();
    list.bytes = 0;
    Ok(())
}

/// Unmaps `size` bytes at `start` from `first` run by run, with IOTLB
/// flushes gathered over up to [`TLB_SYNC_MAX`] runs, and gives back the
/// pins of the accountable pages of each run after the flush that covers it
/// (without memory for the list of runs, each run is unmapped and flushed
/// on its own). A run remembered in `runs` is taken from there and
/// forgotten; between them, runs are found by walking `first`'s page
/// tables. Returns how many pins were given back.
///
/// # Safety
///
/// The caller owns one pin of each accountable page `first` maps in the
/// range, and no other domain maps the range. Each run in `runs` that
/// starts in the range is mapped by `first` as it says, and none starts
/// before the range and reaches into it.
unsafe fn unmap_unpin_first(first: &Domain, runs: &mut RunCache, start: u64, size: u64, dirty: bool) -> u64 {
    let end = start + size;
    kernel::stack_pin_init!(let gather = IotlbGather::new());
    // Runs unmapped but not yet flushed: (pfn, npage).
    let mut pending: KVec<(u64, u64)> = KVec::with_capacity(TLB_SYNC_MAX, GFP_KERNEL).unwrap_or(KVec::new());
    let batched = pending.capacity() >= TLB_SYNC_MAX;
    let mut unpinned = 0;
    let mut iova = start;
    // The next remembered run at or after `iova`.
    let mut next = if runs.is_empty() { None } else { runs.ceil_key(start) };
    while iova < end {
        let found = match next {
            Some(k) if k == iova => {
                let (taken, following) = runs.remove_then_next(k);
                next = following.map(|(k, _)| k);
                match taken {
                    // Wholly in the range: as the page tables map it (the
                    // function's contract).
                    Some(r) if r.end() <= end => Some((r.pfn << PAGE_SHIFT, r.npage << PAGE_SHIFT)),
                    // Reaching past the range, or gone: walk.
                    _ => first.mapped_run(iova, end),
                }
            }
            // Walk up to the next remembered run, which is taken whole.
            Some(k) if k < end => first.mapped_run(iova, k),
            _ => first.mapped_run(iova, end),
        };
        let Some((phys, len)) = found else {
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
                // SAFETY: the pending runs were unmapped from `first`, and
                // we own their pins (the function's contract).
                unpinned += unsafe { sync_unpin(first, &gather, &mut pending, dirty) };
            }
        }
        if unmapped == 0 {
            unmapped = first.unmap(iova, len);
            if unmapped == 0 {
                pr_warn!("could not unmap iova {iova:#x} from its IOMMU domain\n");
                break;
            }
            // SAFETY: unmapped and flushed by `unmap`; we own the pins of
            // its accountable pages (the function's contract).
            unpinned += unsafe { mm::unpin_accountable(phys >> PAGE_SHIFT, unmapped >> PAGE_SHIFT, dirty) };
            mm::cond_resched();
        }
        iova += unmapped;
        // An IOMMU page larger than asked for goes whole: runs remembered
        // inside what it covered are gone with it (physically contiguous,
        // unpinned above as part of it). The same loop as in
        // `DomainSet::forget`, kept apart: a helper shared by both cost a
        // one-page unmap 30 more instructions, even inlined.
        while let Some(k) = next {
            if k >= iova {
                break;
            }
            let (_, following) = runs.remove_then_next(k);
            next = following.map(|(k, _)| k);
        }
    }
    // SAFETY: as above.
    unpinned + unsafe { sync_unpin(first, &gather, &mut pending, dirty) }
}

/// Flushes the IOTLB for what `gather` collected from `d`, then gives back
/// the pins of the `pending` runs (emptied).
///
/// # Safety
///
/// The `pending` runs were unmapped from `d` into `gather`, no other domain
/// maps them, and the caller owns the pins of their accountable pages.
unsafe fn sync_unpin(d: &Domain, gather: &IotlbGather, pending: &mut KVec<(u64, u64)>, dirty: bool) -> u64 {
    d.iotlb_sync(gather);
    let mut unpinned = 0;
    for &(pfn, npage) in pending.iter() {
        // SAFETY: no longer reachable by any device (flushed just above);
        // the pins are the caller's (the function's contract).
        unpinned += unsafe { mm::unpin_accountable(pfn, npage, dirty) };
    }
    pending.clear();
    mm::cond_resched();
    unpinned
}

/// A domain being added to a [`DomainSet`] by [`DomainSet::add`], and the
/// set's first domain, if any: the new domain is made to map what the
/// first maps (`vfio_iommu_replay`), by copying its entries, or, when the
/// set is empty, by mapping pinned runs, which the new domain then owns as
/// the first domain.
pub(crate) struct Replay<'a> {
    first: Option<&'a Domain>,
    new: &'a Domain,
}

impl Replay<'_> {
    /// Copies what the first domain maps in `[iova, iova + size)` into the
    /// new domain with `prot` (`IOMMU_CACHE` is added). `EINVAL` if the set
    /// is empty. The pages stay owned by the set.
    pub(crate) fn copy(&self, iova: u64, size: u64, prot: u32) -> Result {
        let from = self.first.ok_or(EINVAL)?;
        let end = iova + size;
        let mut at = iova;
        while at < end {
            let Some((phys, len)) = from.mapped_run(at, end) else {
                pr_warn!("mapping at iova {at:#x} is missing from the first IOMMU domain\n");
                at += PAGE_SIZE;
                continue;
            };
            self.new.map(at, phys, len, prot | IOMMU_CACHE)?;
            at += len;
            mm::cond_resched();
        }
        Ok(())
    }

    /// Unmaps what [`Self::copy`] mapped in `[iova, iova + size)`.
    pub(crate) fn uncopy(&self, iova: u64, size: u64) {
        if self.first.is_some() {
            self.new.unmap(iova, size);
        }
    }

    /// Maps `run` at `iova` into the new domain, as [`DomainSet::map`]:
    /// only when the set is empty (the new domain will be the first, which
    /// owns the pins), else `EINVAL`.
    #[inline]
    pub(crate) fn map(&self, iova: u64, run: &mut PinnedRun, prot: u32) -> Result {
        if self.first.is_some() {
            return Err(EINVAL);
        }
        map_into(core::slice::from_ref(self.new), iova, run, prot)
    }

    /// Maps the runs gathered in `list` into the new domain, as
    /// [`DomainSet::map_list`]: only when the set is empty, else `EINVAL`.
    #[inline]
    pub(crate) fn map_list(&self, list: &mut RunList, prot: u32) -> Result {
        if self.first.is_some() {
            return Err(EINVAL);
        }
        map_list_into(core::slice::from_ref(self.new), list, prot)
    }

    /// Unmaps what [`Self::map`] mapped in `[iova, iova + size)`, each run
    /// flushed on its own, and gives back its pins; returns how many.
    pub(crate) fn unmap_unpin(&self, iova: u64, size: u64, dirty: bool) -> u64 {
        if self.first.is_some() {
            return 0;
        }
        let end = iova + size;
        let mut at = iova;
        let mut unpinned = 0;
        while at < end {
            let Some((phys, len)) = self.new.mapped_run(at, end) else {
                at += PAGE_SIZE;
                continue;
            };
            self.new.unmap(at, len);
            // SAFETY: the set is empty, so the new domain alone maps these
            // pages, with pins it took over from `Self::map`; unmapped and
            // flushed just above.
            unpinned += unsafe { mm::unpin_accountable(phys >> PAGE_SHIFT, len >> PAGE_SHIFT, dirty) };
            at += len;
        }
        unpinned
    }
}

/// An `iommu_iotlb_gather`: TLB flushes and freed page-table pages
/// collected over several [`Domain::unmap_fast`] calls on one domain.
/// Create it on the stack with `stack_pin_init!` (it points to itself).
#[pin_data]
struct IotlbGather {
    #[pin]
    inner: Opaque<bindings::iommu_iotlb_gather>,
}

impl IotlbGather {
    /// An empty gather.
    fn new() -> impl PinInit<Self> {
        pin_init!(IotlbGather {
            inner <- Opaque::ffi_init(|slot| {
                // SAFETY: `slot` is valid for writes and stays where it is.
                unsafe { bindings::kmod_helper_iotlb_gather_init(slot) }
            }),
        })
    }
}

/// `enum iommu_resv_type`, as the regions report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResvKind {
    Direct,
    DirectRelaxable,
    Reserved,
    Msi,
    SwMsi,
}

/// A reserved region of a group: IOVAs userspace must not map.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResvRegion {
    pub(crate) start: u64,
    pub(crate) length: u64,
    pub(crate) kind: ResvKind,
}

/// The reserved regions of `group`'s devices (`iommu_get_group_resv_regions`).
pub(crate) fn group_resv_regions(group: &IommuGroup) -> Result<KVec<ResvRegion>> {
    let mut head = bindings::list_head { next: core::ptr::null_mut(), prev: core::ptr::null_mut() };
    let head = core::ptr::addr_of_mut!(head);
    // SAFETY: `head` is a local that stays in place until the end of the
    // function: an empty list (`INIT_LIST_HEAD`) that the IOMMU core fills
    // with regions it allocated for us; the group is valid for the call.
    let ret = unsafe {
        (*head).next = head;
        (*head).prev = head;
        bindings::iommu_get_group_resv_regions(group.as_raw(), head)
    };
    let mut out = KVec::new();
    let mut res = to_result(ret);
    // SAFETY: `head` is a valid list (see above; on failure it may hold
    // some regions); each entry is the `list` field of an
    // `iommu_resv_region` allocated with `kmalloc` and now ours, freed
    // once after its fields are read and its successor is known.
    let mut pos = unsafe { (*head).next };
    while pos != head {
        // SAFETY: see above.
        let (next, r) = unsafe { ((*pos).next, kernel::container_of!(pos, bindings::iommu_resv_region, list)) };
        if res.is_ok() {
            // SAFETY: `r` is a live region (see above).
            let (start, length, kind) = unsafe { ((*r).start, (*r).length as u64, (*r).type_) };
            let kind = match kind {
                bindings::iommu_resv_type_IOMMU_RESV_DIRECT => ResvKind::Direct,
                bindings::iommu_resv_type_IOMMU_RESV_DIRECT_RELAXABLE => ResvKind::DirectRelaxable,
                bindings::iommu_resv_type_IOMMU_RESV_MSI => ResvKind::Msi,
                bindings::iommu_resv_type_IOMMU_RESV_SW_MSI => ResvKind::SwMsi,
                _ => ResvKind::Reserved,
            };
            res = out.push(ResvRegion { start, length, kind }, GFP_KERNEL).map_err(Error::from);
        }
        // SAFETY: see above; nothing reaches `r` afterwards.
        unsafe { bindings::kfree(r.cast()) };
        pos = next;
    }
    res.map(|()| out)
}

/// Whether the group's MSIs are isolated (interrupt remapping): without
/// it, a device could forge interrupts to other devices.
pub(crate) fn group_has_isolated_msi(group: &IommuGroup) -> bool {
    // SAFETY: the group is valid for the call.
    unsafe { bindings::iommu_group_has_isolated_msi(group.as_raw()) }
}
