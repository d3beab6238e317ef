// SPDX-License-Identifier: GPL-2.0

//! Groups and devices as a VFIO IOMMU backend sees them in its callbacks
//! (`vfio_iommu.rs`), and a container's list of the devices it must tell
//! about unmaps (`dma_unmap`).
//!
//! C header: [`drivers/vfio/vfio.h`](srctree/drivers/vfio/vfio.h).

use crate::bindings;
use core::ptr::NonNull;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::types::Opaque;

/// How the devices of a group reach memory (`enum vfio_group_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupType {
    /// Behind a real IOMMU: the backend must attach an IOMMU domain.
    Iommu,
    /// An mdev-style group: devices pin pages through the backend.
    EmulatedIommu,
    /// No IOMMU at all (`vfio noiommu`); type1 never sees these.
    NoIommu,
}

/// An IOMMU group, borrowed for the duration of a callback.
///
/// # Invariants
///
/// The wrapped `struct iommu_group` is valid for as long as the reference.
#[repr(transparent)]
pub(crate) struct IommuGroup(Opaque<bindings::iommu_group>);

impl IommuGroup {
    /// # Safety
    ///
    /// `ptr` must point to a valid `iommu_group` that outlives `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::iommu_group) -> &'a Self {
        // SAFETY: `IommuGroup` is a transparent wrapper of the C struct, and
        // the caller guarantees validity for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// An identity for this group, stable while it is attached: the VFIO core
    /// keeps an attached group alive until `detach_group` returns.
    pub(crate) fn key(&self) -> GroupKey {
        GroupKey(self.0.get() as usize)
    }

    /// The raw pointer, for the C calls of `iommu_domain.rs`.
    pub(crate) fn as_raw(&self) -> *mut bindings::iommu_group {
        self.0.get()
    }
}

/// The identity of an attached group; compares groups, dereferences nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupKey(usize);

impl GroupKey {
    /// No group: a group's address is never 0.
    pub(crate) const NONE: GroupKey = GroupKey(0);

    /// The key of the group at `ptr` (compared, never dereferenced).
    pub(crate) fn of_raw(ptr: *mut bindings::iommu_group) -> GroupKey {
        GroupKey(ptr as usize)
    }
}

/// A VFIO device as the backend sees it in `register_device` and
/// `unregister_device`.
///
/// # Invariants
///
/// The wrapped `struct vfio_device` is valid for as long as the reference.
#[repr(transparent)]
pub(crate) struct VfioDevice(Opaque<bindings::vfio_device>);

impl VfioDevice {
    /// # Safety
    ///
    /// `ptr` must point to a valid `vfio_device` that outlives `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::vfio_device) -> &'a Self {
        // SAFETY: transparent wrapper; validity from the caller.
        unsafe { &*ptr.cast() }
    }

    fn ops(&self) -> Option<&bindings::vfio_device_ops> {
        // SAFETY: by the type invariant the device is valid; `ops` is set
        // before the device is registered and never changes afterwards.
        let ops = unsafe { (*self.0.get()).ops };
        // SAFETY: a non-NULL `ops` points to the driver's static ops table.
        unsafe { ops.as_ref() }
    }

    /// Whether the device's driver implements `dma_unmap`: only such devices
    /// may pin pages, and only they go on a container's device list.
    pub(crate) fn has_dma_unmap(&self) -> bool {
        self.ops().is_some_and(|o| o.dma_unmap.is_some())
    }

    /// Tells the device's driver that `[iova, iova + length)` is being
    /// unmapped: it must stop DMA there and unpin what it pinned in it.
    fn dma_unmap(&self, iova: u64, length: u64) {
        if let Some(f) = self.ops().and_then(|o| o.dma_unmap) {
            // SAFETY: the device is valid (type invariant) and open (it is
            // registered); the driver's callback accepts any range.
            unsafe { f(self.0.get(), iova, length) };
        }
    }
}

/// A device being registered: handed to `IommuDriver::register_device`
/// and consumed by [`DeviceList::add`]. Only the trampoline makes one, so
/// only a device the VFIO core registered can go on a list.
pub(crate) struct Registering<'a>(&'a VfioDevice);

impl<'a> Registering<'a> {
    /// # Safety
    ///
    /// The VFIO core is registering `dev` (`register_device`): it stays
    /// alive and open until its `unregister_device`.
    pub(crate) unsafe fn new(dev: &'a VfioDevice) -> Self {
        Registering(dev)
    }

    /// The device.
    pub(crate) fn device(&self) -> &VfioDevice {
        self.0
    }
}

/// A device being unregistered: handed to
/// `IommuDriver::unregister_device` and consumed by [`DeviceList::remove`].
pub(crate) struct Unregistering<'a>(&'a VfioDevice);

impl<'a> Unregistering<'a> {
    /// The device the VFIO core is unregistering (`unregister_device`).
    pub(crate) fn new(dev: &'a VfioDevice) -> Self {
        Unregistering(dev)
    }

    /// The device.
    pub(crate) fn device(&self) -> &VfioDevice {
        self.0
    }
}

/// A device on a [`DeviceList`].
///
/// # Invariants
///
/// Points to a device that went through `register_device` and whose
/// `unregister_device` has not yet removed it from the list: the VFIO core
/// keeps it alive and open until then.
struct DeviceEntry(NonNull<bindings::vfio_device>);

/// Memory for one [`DeviceList`] entry, allocated before the list's lock is
/// taken.
pub(crate) struct DeviceSlot(RBTreeNodeReservation<usize, DeviceEntry>);

impl DeviceSlot {
    /// Allocates a slot.
    pub(crate) fn new() -> Result<Self> {
        Ok(DeviceSlot(RBTreeNodeReservation::new(GFP_KERNEL)?))
    }
}

/// The devices registered on a container that have a `dma_unmap` op.
///
/// Keep it under a lock; it only records devices and calls them.
pub(crate) struct DeviceList {
    devices: RBTree<usize, DeviceEntry>,
    /// Registrations that found no memory for their entry: those devices
    /// cannot be told about unmaps, so the container must refuse pins.
    lost: usize,
}

// SAFETY: the entries are addresses of devices that may be called from any
// thread; the list itself is plain data.
unsafe impl Send for DeviceList {}

impl DeviceList {
    /// An empty list.
    pub(crate) fn new() -> Self {
        DeviceList { devices: RBTree::new(), lost: 0 }
    }

    /// Whether no device is registered (counting lost registrations).
    pub(crate) fn is_empty(&self) -> bool {
        self.lost == 0 && self.devices.iter().next().is_none()
    }

    /// Whether some registered device is missing from the list.
    pub(crate) fn has_lost(&self) -> bool {
        self.lost != 0
    }

    /// Records a device that is being registered. Without a slot (the
    /// allocation failed) the registration is counted as lost.
    pub(crate) fn add(&mut self, dev: Registering<'_>, slot: Option<DeviceSlot>) {
        let ptr = dev.0 .0.get();
        match slot {
            Some(slot) => {
                // INVARIANT: `Registering` is only made for a device the VFIO
                // core is registering; `remove` takes it off before the core
                // finishes unregistering it.
                let entry = DeviceEntry(NonNull::from(&dev.0 .0).cast());
                drop(self.devices.insert(slot.0.into_node(ptr as usize, entry)));
            }
            None => {
                pr_err!("no memory to register a VFIO device for unmap notification; pins are refused\n");
                self.lost += 1;
            }
        }
    }

    /// Forgets a device that is being unregistered.
    pub(crate) fn remove(&mut self, dev: Unregistering<'_>) {
        let key = dev.0 .0.get() as usize;
        if self.devices.remove(&key).is_none() {
            self.lost = self.lost.saturating_sub(1);
        }
    }

    /// Calls every registered device's `dma_unmap` for `[iova, iova+length)`.
    ///
    /// The drivers' callbacks unpin through `vfio_unpin_pages`, which takes
    /// the container lock: the caller must not hold it.
    pub(crate) fn notify_dma_unmap(&self, iova: u64, length: u64) {
        for entry in self.devices.values() {
            // SAFETY: by the invariant of `DeviceEntry` the device is alive
            // and open while it is on the list, and the list cannot change
            // while the caller holds its lock.
            let dev = unsafe { VfioDevice::from_raw(entry.0.as_ptr()) };
            dev.dma_unmap(iova, length);
        }
    }
}
