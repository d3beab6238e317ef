// SPDX-License-Identifier: GPL-2.0

//! The kernel's IOMMU subsystem (`drivers/iommu/`), as a VFIO backend uses
//! it: paging domains for the groups it serves, their page tables and TLB
//! flushing, and what a group's IOMMU reports (reserved regions, interrupt
//! isolation). Not to be confused with type1's container state
//! (`type1_core::container`) or its real-IOMMU path (`kmod-iommu/domain/`),
//! which use this module.
//!
//! C header: [`include/linux/iommu.h`](srctree/include/linux/iommu.h).
//!
//! A [`Domain`] owns an `iommu_domain` allocated for a group's IOMMU and
//! records the groups attached to it; dropping it detaches them and frees
//! the domain. Page-table calls take `&self`: the IOMMU drivers serialise
//! their own page-table updates, and the caller keeps mapped ranges
//! disjoint (type1 does so under its container lock).

use crate::bindings;
use crate::kvec_ext::VecExt;
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
        Ok(Domain { raw, groups })
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
    pub(crate) fn enforce_cache_coherency(&self) -> bool {
        // SAFETY: the domain is valid (type invariant); its `ops` points to
        // the IOMMU driver's static table.
        let f = unsafe { (*(*self.as_ptr()).ops).enforce_cache_coherency };
        match f {
            // SAFETY: the driver's own op, called on its own domain.
            Some(f) => unsafe { f(self.as_ptr()) },
            None => false,
        }
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
    /// alignment allows).
    pub(crate) fn map(&self, iova: u64, paddr: u64, size: u64, prot: u32) -> Result {
        let size = usize::try_from(size).map_err(|_| EINVAL)?;
        // SAFETY: the domain is valid; the caller owns the IOVA range and
        // keeps the physical pages pinned until it unmaps them. The
        // page-table allocations are charged to the caller's memcg.
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

    /// Unmaps up to `size` bytes at `iova` and flushes the IOTLB
    /// (`iommu_unmap`); returns the bytes unmapped.
    pub(crate) fn unmap(&self, iova: u64, size: u64) -> u64 {
        // SAFETY: the domain is valid; unmapping any range is allowed.
        unsafe { bindings::iommu_unmap(self.as_ptr(), iova as ffi::c_ulong, size as usize) as u64 }
    }

    /// Unmaps up to `size` bytes at `iova` without flushing: the flush is
    /// gathered in `gather` until [`Domain::iotlb_sync`]. The pages stay
    /// reachable by the device until then, so they must stay pinned.
    pub(crate) fn unmap_fast(&self, iova: u64, size: u64, gather: &IotlbGather) -> u64 {
        // SAFETY: the domain is valid; `gather` was initialised in place
        // and is used for this domain only (the caller's contract).
        unsafe {
            bindings::iommu_unmap_fast(self.as_ptr(), iova as ffi::c_ulong, size as usize, gather.inner.get()) as u64
        }
    }

    /// Flushes what `gather` collected and frees the page-table pages it
    /// held; `gather` is empty again afterwards.
    pub(crate) fn iotlb_sync(&self, gather: &IotlbGather) {
        // SAFETY: as for `unmap_fast`.
        unsafe { bindings::kmod_helper_iotlb_sync(self.as_ptr(), gather.inner.get()) };
    }

    /// The physical address `iova` maps to, 0 if none.
    pub(crate) fn iova_to_phys(&self, iova: u64) -> u64 {
        // SAFETY: the domain is valid; a lookup has no other precondition.
        unsafe { bindings::iommu_iova_to_phys(self.as_ptr(), iova) }
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

/// An `iommu_iotlb_gather`: TLB flushes and freed page-table pages
/// collected over several [`Domain::unmap_fast`] calls on one domain.
/// Create it on the stack with `stack_pin_init!` (it points to itself).
#[pin_data]
pub(crate) struct IotlbGather {
    #[pin]
    inner: Opaque<bindings::iommu_iotlb_gather>,
}

impl IotlbGather {
    /// An empty gather.
    pub(crate) fn new() -> impl PinInit<Self> {
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
