// SPDX-License-Identifier: GPL-2.0

//! A type1 container: its state, its locks, and the IOMMU-backend callbacks
//! the VFIO core makes on it.
//!
//! # State
//!
//! [`State`] holds what the C `struct vfio_iommu` holds: the counters and
//! flags of `type1_core::container::VfioIommu`, the mappings
//! ([`Mappings`]), the attached groups, and the IOMMU domains with the
//! valid IOVA ranges ([`Domains`], see `real_iommu.rs`). Emulated-IOMMU (mdev) groups reach memory
//! through pins devices make with `vfio_pin_pages`; groups behind a real
//! IOMMU get a domain, and while one exists every mapping is pinned and
//! mapped into the IOMMU page tables at `MAP_DMA` time.
//!
//! # Locks
//!
//! This is the one statement of the module's lock order; other files and
//! `docs/type1.md` refer to it.
//!
//! - `devices` (the *device-list lock*, a mutex): the devices that have a
//!   `dma_unmap` op, registered when they are opened.
//! - `state` (the *container lock*, a mutex): everything in [`State`].
//!
//! Order: device-list lock, then the vendor drivers' own locks (taken inside
//! their `dma_unmap`), then the container lock. Every path keeps it:
//!
//! - `register_device`/`unregister_device`: device-list lock, then the
//!   container lock (to update `has_devices`, which `pin_pages` tests).
//! - `UNMAP_DMA` finding pinned pages: drops the container lock, takes the
//!   device-list lock, calls each device's `dma_unmap` (whose unpin takes
//!   the container lock), drops the device-list lock, retakes the container
//!   lock and retries.
//! - `pin_pages`, `unpin_pages`, `dma_rw` (called by vendor drivers under
//!   their own locks) and every other ioctl: the container lock alone.
//! - Below the container lock, pinning and `locked_vm` accounting take the
//!   mapping process's mmap lock (read to pin, write to charge, never both
//!   at once), and the real-IOMMU path (`real_iommu/`) takes the IOMMU
//!   group mutex (attach, detach) and the IOMMU driver's page-table locks,
//!   one at a time; none of them is held while taking the container lock.
//!   The C type1 nests the same locks in the same order under its
//!   `iommu->lock`.
//!
//! The C type1 (6.12) takes the container lock and then the device-list lock
//! in `register_device`, but holds the device-list lock while the callbacks
//! take the container lock: an inversion that lockdep reports when a device
//! is opened while another thread unmaps pinned memory. Here nothing takes
//! the device-list lock while holding the container lock.

#![deny(unsafe_code)]

use crate::real_iommu::{self, Domains};
use crate::mm;
use crate::store::{Dma, Mappings, PfnSlot, PfnSpares};
use crate::type1_core::dma::{DmaTree, VfioDma};
use crate::type1_core::errno::{self as cerr, Errno};
use crate::type1_core::container::VfioIommu;
use crate::type1_core::pin::{self as cpin, PfnStore, PinOps};
use crate::type1_core::uapi::IOMMU_WRITE;
use crate::type1_core::{acct, dirty as cdirty};
use crate::vfio_iommu::{DmaRwBuffer, PinnedPages};
use crate::vfio_iommu_devices::{
    DeviceList, DeviceSlot, GroupKey, GroupType, IommuGroup, Registering, Unregistering,
};
use crate::mutex::{new_direct_mutex, Mutex};
use crate::params;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};

/// Turns a `type1_core` errno into a kernel error. The core's errnos map
/// to the kernel's constants without a call (`Error::from_errno` is out of
/// line, and refused requests, such as a `MAP_DMA` of a mapped IOVA, take
/// this path every time).
#[inline]
pub(crate) fn err(e: Errno) -> Error {
    match e {
        cerr::EPERM => EPERM,
        cerr::ENOENT => ENOENT,
        cerr::ESRCH => ESRCH,
        cerr::E2BIG => E2BIG,
        cerr::ENOMEM => ENOMEM,
        cerr::EACCES => EACCES,
        cerr::EFAULT => EFAULT,
        cerr::EBUSY => EBUSY,
        cerr::EEXIST => EEXIST,
        cerr::ENODEV => ENODEV,
        cerr::EINVAL => EINVAL,
        cerr::ENOTTY => ENOTTY,
        cerr::ENOSPC => ENOSPC,
        _ => Error::from_errno(-e),
    }
}

/// Everything the container lock protects.
pub(crate) struct State {
    pub(crate) iommu: VfioIommu,
    pub(crate) dmas: Mappings,
    /// The attached groups (the C `struct vfio_iommu_group`s), each with
    /// its `pinned_page_dirty_scope`: whether its devices reach memory only
    /// through pins, so that its dirty pages are exactly the pinned ones.
    pub(crate) groups: RBTree<GroupKey, bool>,
    /// Mirrors `DeviceList::has_lost` for the pin path, which may not take
    /// the device-list lock.
    pub(crate) registrations_lost: bool,
    /// The IOMMU domains of groups behind a real IOMMU, and the valid IOVA
    /// ranges (`real_iommu.rs`).
    pub(crate) domains: Domains,
    /// Nodes of unpinned pages, for the next pins.
    pub(crate) pfn_spares: PfnSpares,
}

/// One container using this backend.
#[pin_data]
pub(crate) struct Container {
    /// The device-list lock; see the module documentation for the order.
    #[pin]
    devices: Mutex<DeviceList>,
    /// The container lock.
    #[pin]
    pub(crate) state: Mutex<State>,
}

impl Container {
    /// `VFIO_SET_IOMMU(kind)` chose this backend.
    pub(crate) fn open(kind: u64) -> Result<Pin<KBox<Self>>> {
        let iommu = VfioIommu::open(kind, params::dma_entry_limit()).map_err(err)?;
        KBox::try_pin_init(
            try_pin_init!(Container {
                devices <- new_direct_mutex!(DeviceList::new(), "vfio_iommu_type1_rs::devices"),
                state <- new_direct_mutex!(
                    State {
                        iommu,
                        dmas: Mappings::new(),
                        groups: RBTree::new(),
                        registrations_lost: false,
                        domains: Domains::new(),
                        pfn_spares: PfnSpares::new(),
                    },
                    "vfio_iommu_type1_rs::state"
                ),
            }),
            GFP_KERNEL,
        )
    }

    /// `attach_group`.
    pub(crate) fn attach_group(&self, group: &IommuGroup, kind: GroupType) -> Result {
        let key = group.key();
        let node = RBTreeNodeReservation::new(GFP_KERNEL)?;
        let mut st = self.state.lock();
        let attached = st.groups.get(&key).is_some();
        st.iommu.attach_group_check(attached).map_err(err)?;
        match kind {
            GroupType::EmulatedIommu => {
                // An emulated group reaches memory only through pins, so it
                // starts in pinned dirty scope.
                drop(st.groups.insert(node.into_node(key, true)));
                st.iommu.group_attached(true);
                Ok(())
            }
            GroupType::Iommu => real_iommu::attach(&mut st, group, node),
            GroupType::NoIommu => Err(EINVAL),
        }
    }

    /// `detach_group`. When the last group leaves, every mapping goes, as
    /// group ownership is what gave the right to map.
    pub(crate) fn detach_group(&self, group: &IommuGroup) {
        let key = group.key();
        let mut st = self.state.lock();
        let Some(scope) = st.groups.remove(&key) else {
            return;
        };
        // A group behind a real IOMMU leaves its domain (and with the last
        // domain the mappings may go: see `real_iommu::detach`).
        let iommu_backed = real_iommu::detach(&mut st, key);
        if st.groups.iter().next().is_none() {
            if st.iommu.has_devices {
                pr_warn!("last group detached while devices are still registered\n");
            }
            if !iommu_backed {
                remove_all(&mut st);
            }
        }
        st.iommu.has_emulated_groups = st.groups.iter().count() > st.domains.group_count();
        let State { iommu, dmas, .. } = &mut *st;
        cdirty::group_detached(dmas, iommu, scope);
    }

    /// `register_device`: devices with `dma_unmap` go on the list.
    pub(crate) fn register_device(&self, dev: Registering<'_>) {
        if !dev.device().has_dma_unmap() {
            return;
        }
        let slot = DeviceSlot::new().ok();
        let mut devices = self.devices.lock();
        devices.add(dev, slot);
        let mut st = self.state.lock();
        st.iommu.has_devices = true;
        st.registrations_lost = devices.has_lost();
    }

    /// `unregister_device`. Waits for a running unmap notification, which
    /// holds the device-list lock, so no `dma_unmap` call can reach the
    /// device once this returns.
    pub(crate) fn unregister_device(&self, dev: Unregistering<'_>) {
        if !dev.device().has_dma_unmap() {
            return;
        }
        let mut devices = self.devices.lock();
        devices.remove(dev);
        let mut st = self.state.lock();
        st.iommu.has_devices = !devices.is_empty();
        st.registrations_lost = devices.has_lost();
    }

    /// Tells every registered device that `[iova, iova + size)` goes away.
    /// Called without the container lock (see the module documentation).
    pub(crate) fn notify_dma_unmap(&self, iova: u64, size: u64) {
        self.devices.lock().notify_dma_unmap(iova, size);
    }

    /// `pin_pages` from a device of `group`. Inlined into the trampoline:
    /// one Rust frame per `vfio_pin_pages`.
    #[inline(always)]
    pub(crate) fn pin_pages(&self, group: &IommuGroup, iova: u64, prot: i32, pages: PinnedPages<'_>) -> Result<usize> {
        let npage = i32::try_from(pages.len()).map_err(|_| EINVAL)?;
        let prot = u32::try_from(prot).map_err(|_| EINVAL)?;
        // The core pins into pfns, gathered in the caller's array itself.
        pages.fill(|pfns| {
            let mut st = self.state.lock();
            if st.registrations_lost {
                // A device missing from the list could not be told to unpin.
                return Err(ENOMEM);
            }
            let State { iommu, dmas, groups, pfn_spares, .. } = &mut *st;
            let mut ops = PinContext { groups, group: group.key(), spares: pfn_spares, saw_reserved: false };
            let pinned = cpin::pin_pages(dmas, iommu, &mut ops, iova, npage, prot, pfns).map_err(err)?;
            usize::try_from(pinned).map_err(|_| EINVAL)
        })
    }

    /// `unpin_pages`.
    pub(crate) fn unpin_pages(&self, iova: u64, npage: usize) {
        let Ok(npage) = i32::try_from(npage) else { return };
        let mut st = self.state.lock();
        let State { iommu, dmas, groups, pfn_spares, .. } = &mut *st;
        let mut ops = PinContext { groups, group: GroupKey::NONE, spares: pfn_spares, saw_reserved: false };
        let done = cpin::unpin_pages(dmas, iommu, &mut ops, iova, npage);
        if iommu.v2 && done != npage {
            // The C type1 WARNs here: a driver unpinned memory that is not
            // mapped. A warning without a stack trace says the same.
            pr_warn!("unpin of {npage} pages at {iova:#x} stopped at an unmapped page after {done}\n");
        }
    }

    /// `dma_rw`: copies between `buf` and the memory mapped at `iova`,
    /// chunk by chunk across mappings. Inlined into the trampoline: one Rust
    /// frame per `vfio_dma_rw`.
    #[inline(always)]
    pub(crate) fn dma_rw(&self, iova: u64, mut buf: DmaRwBuffer<'_>) -> Result {
        let total = match &buf {
            DmaRwBuffer::Read(b) => b.len(),
            DmaRwBuffer::Write(b) => b.len(),
        };
        let write = matches!(buf, DmaRwBuffer::Write(_));
        cpin::vfio_dma_rw_check(true, total as u64).map_err(err)?;
        let mut st = self.state.lock();
        let State { iommu, dmas, .. } = &mut *st;
        cpin::dma_rw_check(iommu).map_err(err)?;
        let mut done = 0usize;
        while done < total {
            let cur = iova.checked_add(done as u64).ok_or(EINVAL)?;
            // The mapping that contains `cur` (the lookup remembers its node,
            // so `get_mut` does not search again), then the chunk's rules.
            let key = dmas.find_any(cur, 1).ok_or(EINVAL)?;
            let entry = dmas.get_mut(key).ok_or(EINVAL)?;
            let chunk = cpin::dma_rw_chunk_of(&entry.info, cur, (total - done) as u64, write).map_err(err)?;
            let count = usize::try_from(chunk.count).map_err(|_| EINVAL)?;
            let mm = entry.owner.mm();
            // `EPERM` once the process is gone; `EFAULT` for a chunk that did
            // not fully copy, as in C.
            match &mut buf {
                DmaRwBuffer::Write(b) => mm.write_user(chunk.vaddr, b.get(done..done + count).ok_or(EINVAL)?)?,
                DmaRwBuffer::Read(b) => mm.read_user(chunk.vaddr, b.get_mut(done..done + count).ok_or(EINVAL)?)?,
            }
            if write {
                cpin::dma_rw_mark_dirty(iommu, entry, chunk.offset, chunk.count);
            }
            done += count;
        }
        Ok(())
    }
}

/// Removes every mapping (`vfio_iommu_unmap_unpin_all`).
fn remove_all(st: &mut State) {
    let State { iommu, dmas, domains, .. } = st;
    while let Some(k) = crate::type1_core::dma::first_key(dmas) {
        match crate::type1_core::dma::remove_dma(dmas, iommu, k) {
            Some(d) => real_iommu::remove_dma(domains, dmas, d),
            None => break,
        }
    }
}

/// Ties the pin paths of `type1_core` to kernel services.
struct PinContext<'a> {
    groups: &'a mut RBTree<GroupKey, bool>,
    /// The group of the device that pins; `GroupKey::NONE` for unpins.
    group: GroupKey,
    /// Nodes of unpinned pages (`take_slot`, `recycle_slot`).
    spares: &'a mut PfnSpares,
    /// A reserved pfn was pinned: it may be device memory without a
    /// `struct page`, so `pfn_valid` must really check.
    saw_reserved: bool,
}

/// `vfio_pin_page_external()` with the address space already held live:
/// pins the page at `vaddr` and charges it to `task` unless it is reserved.
/// Returns it as a batch of one page (what `pin_run_external` returns).
/// Inlined into the pin path, which calls it for every single-page pin.
#[inline(always)]
fn pin_one<'r>(
    users: &mm::MmUsers<'_>,
    task: &mm::TaskRef,
    info: &mut VfioDma,
    vaddr: u64,
    do_accounting: bool,
    room: &'r mut mm::PinRoom<1>,
) -> core::result::Result<mm::PagePins<'r>, Errno> {
    let write = info.prot & IOMMU_WRITE != 0;
    let page = users.pin_pages(vaddr, write, 1, room).map_err(|e| -e.to_errno())?;
    if do_accounting && page.accountable() != 0 {
        if let Err(e) = users.account_locked(task, 1, info.lock_cap) {
            drop(page);
            if e == ENOMEM {
                pr_warn!("RLIMIT_MEMLOCK exceeded by a device pin\n");
            }
            return Err(-e.to_errno());
        }
        info.locked_vm = acct::dma_locked_vm_after(info.locked_vm, 1);
    }
    Ok(page)
}

impl PinOps<Dma> for PinContext<'_> {
    /// Room for a run, and for the single page pinned if the run fails.
    type Room = (mm::PinRoom<{ mm::PIN_RUN_MAX }>, mm::PinRoom<1>);
    type Pins<'r>
        = mm::PagePins<'r>
    where
        Self: 'r;

    fn pin_page_external(&mut self, entry: &mut Dma, vaddr: u64, do_accounting: bool) -> core::result::Result<mm::PinnedPage, Errno> {
        let Dma { info, owner, .. } = entry;
        let users = owner.mm().users().ok_or(cerr::ENODEV)?;
        let mut room = mm::PinRoom::default();
        let mut page = pin_one(&users, owner.task(), info, vaddr, do_accounting, &mut room)?;
        self.saw_reserved |= page.accountable() == 0;
        page.next().ok_or(cerr::EFAULT)
    }

    #[inline(always)]
    fn pin_run_external<'r>(
        &mut self,
        entry: &mut Dma,
        vaddr: u64,
        npage: usize,
        do_accounting: bool,
        room: &'r mut Self::Room,
    ) -> core::result::Result<mm::PagePins<'r>, Errno> {
        let Dma { info, owner, .. } = entry;
        let users = owner.mm().users().ok_or(cerr::ENODEV)?;
        if npage > 1 {
            // The whole run under one mmap lock, charged at once.
            let write = info.prot & IOMMU_WRITE != 0;
            if let Ok(pins) = users.pin_pages(vaddr, write, npage, &mut room.0) {
                let charge = pins.accountable() as i64;
                self.saw_reserved |= charge != pins.len() as i64;
                if !do_accounting || charge == 0 {
                    return Ok(pins);
                }
                if users.account_locked(owner.task(), charge, info.lock_cap).is_ok() {
                    info.locked_vm = acct::dma_locked_vm_after(info.locked_vm, charge);
                    return Ok(pins);
                }
                // Over the limit (or interrupted): the run is given back
                // (dropped); page by page finds the page that crosses the
                // limit and its errno.
            }
        }
        // One page, exactly as the C loop pins it.
        let page = pin_one(&users, owner.task(), info, vaddr, do_accounting, &mut room.1)?;
        self.saw_reserved |= page.accountable() == 0;
        Ok(page)
    }

    fn pfn_valid(&self, pfn: u64) -> bool {
        // A pinned page always has a valid pfn; device memory
        // (`VM_PFNMAP`), which `MmUsers::pin_pages` returns as reserved,
        // may not, and then `vfio_pin_pages` fails with `EINVAL` as in C.
        !self.saw_reserved || mm::pfn_valid(pfn)
    }

    fn unpin(&mut self, page: mm::PinnedPage) -> bool {
        page.unpin()
    }

    fn lock_acct(&mut self, entry: &mut Dma, npage: i64, _is_async: bool) -> core::result::Result<(), Errno> {
        if npage == 0 {
            return Ok(());
        }
        // The process may have exited (`ESRCH`): its pins are then already gone.
        entry
            .owner
            .mm()
            .account_locked(entry.owner.task(), npage, entry.info.lock_cap)
            .map_err(|e| -e.to_errno())?;
        entry.info.locked_vm = acct::dma_locked_vm_after(entry.info.locked_vm, npage);
        Ok(())
    }

    fn take_slot(&mut self) -> core::result::Result<PfnSlot, Errno> {
        self.spares.take().map_err(|_| cerr::ENOMEM)
    }

    fn recycle_slot(&mut self, slot: PfnSlot) {
        self.spares.keep(slot);
    }

    fn promote_pinned_scope(&mut self) -> bool {
        match self.groups.get_mut(&self.group) {
            Some(scope) if !*scope => {
                *scope = true;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Dma {
    // Inlined into every removal: the usual mapping needs only the test.
    #[inline(always)]
    fn drop(&mut self) {
        // Almost every mapping ends unmapped from the IOMMU and without pins.
        if (self.info.iommu_mapped && self.info.size != 0) || !self.pfns.is_empty() {
            self.drop_leftovers();
        }
    }
}

impl Dma {
    /// What dropping a mapping should never find: IOMMU pins or device pins.
    #[cold]
    fn drop_leftovers(&mut self) {
        // Mappings in IOMMU domains are torn down by `real_iommu::remove_dma`,
        // and the VFIO core detaches every group (so every domain goes, with
        // the mappings) before it releases a container. Should that ever not
        // hold, the IOMMU pins cannot be found any more: say so.
        if self.info.iommu_mapped && self.info.size != 0 {
            pr_warn!("mapping at iova {:#x} dropped while mapped in an IOMMU domain; its pins leak\n", self.info.iova);
        }
        // A device that kept pins past close: its driver may still use the
        // pages, so unpinning them here could hand them to someone else
        // under its feet. They stay pinned and charged (leaked), as the C
        // type1 leaves them after its WARN_ON; the nodes go with the tree.
        if self.pfns.is_empty() {
            return;
        }
        let mut pinned = 0u64;
        self.pfns.for_each(|_, _| pinned += 1);
        pr_warn!(
            "mapping at iova {:#x} removed with {} pages still pinned by a device: they stay pinned (leaked)\n",
            self.info.iova,
            pinned
        );
    }
}


