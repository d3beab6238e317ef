// SPDX-License-Identifier: GPL-2.0

//! VFIO IOMMU backends: the `struct vfio_iommu_driver_ops` interface.
//!
//! C header: [`drivers/vfio/vfio.h`](srctree/drivers/vfio/vfio.h) (internal to
//! VFIO; container side in `drivers/vfio/container.c`).
//!
//! A backend implements [`IommuDriver`]; [`Registration`] fills a C ops table
//! with trampolines for exactly the methods the backend implements and
//! registers it with `vfio_register_iommu_driver`. Each container that
//! chooses the backend (`VFIO_SET_IOMMU`) gets one [`IommuDriver::Data`],
//! handed to C as `iommu_data` and back to every callback as `&Data`.

use crate::bindings;
use crate::iommu_domain::DomainHandle;
use crate::mm::Pfn;
use core::marker::PhantomData;
use kernel::error::{from_result, to_result};
use kernel::ffi;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::types::{ForeignOwnable, Opaque};
use core::ptr::NonNull;

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
    unsafe fn from_raw<'a>(ptr: *mut bindings::iommu_group) -> &'a Self {
        // SAFETY: `IommuGroup` is a transparent wrapper of the C struct, and
        // the caller guarantees validity for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// An identity for this group, stable while it is attached: the VFIO core
    /// keeps an attached group alive until `detach_group` returns.
    pub(crate) fn key(&self) -> GroupKey {
        GroupKey(self.0.get() as usize)
    }

    /// The raw pointer, for the C calls of the IOMMU abstraction.
    #[allow(dead_code)] // Only the type1 module uses IOMMU domains.
    pub(crate) fn as_raw(&self) -> *mut bindings::iommu_group {
        self.0.get()
    }

    /// A group the IOMMU abstraction recorded as attached to a domain.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `iommu_group` that outlives `'a`.
    #[allow(dead_code)] // Only the type1 module uses IOMMU domains.
    pub(crate) unsafe fn from_raw_group<'a>(ptr: *mut bindings::iommu_group) -> &'a Self {
        // SAFETY: the caller's contract is that of `from_raw`.
        unsafe { Self::from_raw(ptr) }
    }
}

/// The identity of an attached group; compares groups, dereferences nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupKey(usize);

impl GroupKey {
    /// No group: a group's address is never 0.
    pub(crate) const NONE: GroupKey = GroupKey(0);

    /// The key of the group at `ptr` (compared, never dereferenced).
    #[allow(dead_code)] // Only the type1 module uses IOMMU domains.
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
    unsafe fn from_raw<'a>(ptr: *mut bindings::vfio_device) -> &'a Self {
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

/// A device being registered: handed to [`IommuDriver::register_device`]
/// and consumed by [`DeviceList::add`]. Only the trampoline makes one, so
/// only a device the VFIO core registered can go on a list.
pub(crate) struct Registering<'a>(&'a VfioDevice);

impl Registering<'_> {
    /// The device.
    pub(crate) fn device(&self) -> &VfioDevice {
        self.0
    }
}

/// A device being unregistered: handed to
/// [`IommuDriver::unregister_device`] and consumed by [`DeviceList::remove`].
pub(crate) struct Unregistering<'a>(&'a VfioDevice);

impl Unregistering<'_> {
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

/// Where `dma_rw` moves bytes: the kernel buffer of the caller.
pub(crate) enum DmaRwBuffer<'a> {
    /// Read from the IOVA into this buffer.
    Read(&'a mut [u8]),
    /// Write this buffer to the IOVA.
    Write(&'a [u8]),
}

/// The caller's `struct page *` array of a `vfio_pin_pages` call: the
/// backend fills it with the pages it pinned, given as frame numbers.
pub(crate) struct PinnedPages<'a>(&'a mut [*mut bindings::page]);

impl PinnedPages<'_> {
    /// How many pages the caller asked for.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Lends the array to `pin` as room for as many frame numbers; `pin`
    /// pins pages from the start of the request and returns how many. Their
    /// `struct page`s are then stored in place (no buffer of our own). If
    /// `pin` fails, every entry is null, as C leaves them.
    #[inline]
    pub(crate) fn fill(self, pin: impl FnOnce(&mut [Pfn]) -> Result<usize>) -> Result<usize> {
        crate::mm::pin_into_pages(self.0, pin)
    }
}

/// A VFIO IOMMU backend (the C `struct vfio_iommu_driver_ops`).
///
/// Every method except `open` runs on the container state that `open` made.
/// The VFIO core keeps that state alive until `release`, and calls no other
/// method concurrently with or after `release`.
#[vtable]
pub(crate) trait IommuDriver: Sized + 'static {
    /// Per-container state.
    type Data: Send + Sync + 'static;

    /// `VFIO_SET_IOMMU(kind)`: makes a container's state, or fails so that
    /// the core tries the next backend.
    fn open(kind: u64) -> Result<Pin<KBox<Self::Data>>>;

    /// The container is going away; dropping the state releases it.
    fn release(data: Pin<KBox<Self::Data>>) {
        drop(data);
    }

    /// A container ioctl. `data` is `None` for `VFIO_CHECK_EXTENSION` before
    /// `VFIO_SET_IOMMU`, when the core asks every backend. `arg` is the raw
    /// ioctl argument: an integer or a user pointer, depending on `cmd`.
    fn ioctl(data: Option<&Self::Data>, cmd: u32, arg: usize) -> Result<isize>;

    /// A group joins the container.
    fn attach_group(data: &Self::Data, group: &IommuGroup, kind: GroupType) -> Result;

    /// A group leaves the container.
    fn detach_group(data: &Self::Data, group: &IommuGroup);

    /// `vfio_pin_pages`: pins `pages.len()` pages from `iova` and hands
    /// their frame numbers to `pages` ([`PinnedPages::fill`]); returns how
    /// many were pinned.
    fn pin_pages(
        _data: &Self::Data,
        _group: &IommuGroup,
        _iova: u64,
        _prot: i32,
        _pages: PinnedPages<'_>,
    ) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// `vfio_unpin_pages`: undoes one pin of each of `npage` pages from `iova`.
    fn unpin_pages(_data: &Self::Data, _iova: u64, _npage: usize) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// A device of the container was opened.
    fn register_device(_data: &Self::Data, _dev: Registering<'_>) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// A device of the container is being closed.
    fn unregister_device(_data: &Self::Data, _dev: Unregistering<'_>) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// `vfio_dma_rw`: copies between a kernel buffer and user memory at an IOVA.
    fn dma_rw(_data: &Self::Data, _iova: u64, _buf: DmaRwBuffer<'_>) -> Result {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The IOMMU domain a group is attached to (for KVM and iommufd users).
    fn group_iommu_domain(_data: &Self::Data, _group: &IommuGroup) -> Result<DomainHandle> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// `ERR_PTR(err)`.
fn err_ptr<T>(err: Error) -> *mut T {
    // ERR_PTR is the negative errno as an address, in the top page.
    (err.to_errno() as isize) as *mut T
}

/// The C trampolines for `T`.
struct OpsTable<T: IommuDriver>(PhantomData<T>);

impl<T: IommuDriver> OpsTable<T> {
    /// # Safety
    ///
    /// `iommu_data` must be a pointer returned by [`Self::open`] and not yet
    /// passed to [`Self::release`]; the returned reference must not outlive
    /// the callback.
    unsafe fn data<'a>(iommu_data: *mut ffi::c_void) -> &'a T::Data {
        // SAFETY: per the function's contract the pointer came from
        // `into_foreign` of a `Pin<KBox<T::Data>>` that is still alive.
        let pinned: Pin<&T::Data> = unsafe { <Pin<KBox<T::Data>> as ForeignOwnable>::borrow(iommu_data) };
        pinned.get_ref()
    }

    /// # Safety
    ///
    /// Called by the VFIO core for `VFIO_SET_IOMMU`.
    unsafe extern "C" fn open(arg: ffi::c_ulong) -> *mut ffi::c_void {
        match T::open(arg as u64) {
            Ok(data) => data.into_foreign() as *mut ffi::c_void,
            Err(e) => err_ptr(e),
        }
    }

    /// # Safety
    ///
    /// Called once per successful `open`, when the container goes away, with
    /// no other callback running on the same `iommu_data`.
    unsafe extern "C" fn release(iommu_data: *mut ffi::c_void) {
        // SAFETY: `iommu_data` came from `open` and is released exactly once.
        let data = unsafe { <Pin<KBox<T::Data>> as ForeignOwnable>::from_foreign(iommu_data) };
        T::release(data);
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a live `iommu_data`, or NULL for
    /// `VFIO_CHECK_EXTENSION` before any backend was chosen.
    unsafe extern "C" fn ioctl(iommu_data: *mut ffi::c_void, cmd: ffi::c_uint, arg: ffi::c_ulong) -> ffi::c_long {
        let data = if iommu_data.is_null() {
            None
        } else {
            // SAFETY: non-NULL `iommu_data` is a live container of this backend.
            Some(unsafe { Self::data(iommu_data) })
        };
        from_result(|| T::ioctl(data, cmd, arg).map(|v| v as ffi::c_long))
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a live `iommu_data` and a valid group.
    unsafe extern "C" fn attach_group(
        iommu_data: *mut ffi::c_void,
        group: *mut bindings::iommu_group,
        kind: bindings::vfio_group_type,
    ) -> ffi::c_int {
        from_result(|| {
            // SAFETY: see the function's safety section.
            let (data, group) = unsafe { (Self::data(iommu_data), IommuGroup::from_raw(group)) };
            let kind = match kind {
                bindings::vfio_group_type_VFIO_IOMMU => GroupType::Iommu,
                bindings::vfio_group_type_VFIO_EMULATED_IOMMU => GroupType::EmulatedIommu,
                bindings::vfio_group_type_VFIO_NO_IOMMU => GroupType::NoIommu,
                _ => return Err(EINVAL),
            };
            T::attach_group(data, group, kind)?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core with a live `iommu_data` and an attached group.
    unsafe extern "C" fn detach_group(iommu_data: *mut ffi::c_void, group: *mut bindings::iommu_group) {
        // SAFETY: see the function's safety section.
        let (data, group) = unsafe { (Self::data(iommu_data), IommuGroup::from_raw(group)) };
        T::detach_group(data, group);
    }

    /// # Safety
    ///
    /// Called from `vfio_pin_pages` with a live `iommu_data`, an attached
    /// group and `pages` valid for `npage` writes (the core checked
    /// `0 < npage <= VFIO_PIN_PAGES_MAX_ENTRIES`).
    unsafe extern "C" fn pin_pages(
        iommu_data: *mut ffi::c_void,
        group: *mut bindings::iommu_group,
        user_iova: bindings::dma_addr_t,
        npage: ffi::c_int,
        prot: ffi::c_int,
        pages: *mut *mut bindings::page,
    ) -> ffi::c_int {
        from_result(|| {
            let n = usize::try_from(npage).map_err(|_| EINVAL)?;
            if pages.is_null() {
                return Err(EINVAL);
            }
            // SAFETY: see the function's safety section.
            let (data, group) = unsafe { (Self::data(iommu_data), IommuGroup::from_raw(group)) };
            // SAFETY: `pages` is valid for `n` writes and the caller does not
            // touch it until we return. The caller's array may be
            // uninitialised, and a slice of pointers must not be: it is
            // nulled first (what C leaves in it on failure anyway). One
            // page, the usual request, is one store rather than a memset call.
            let slots = unsafe {
                if n == 1 {
                    pages.write(core::ptr::null_mut());
                } else {
                    core::ptr::write_bytes(pages, 0, n);
                }
                core::slice::from_raw_parts_mut(pages, n)
            };
            let pinned = T::pin_pages(data, group, user_iova, prot, PinnedPages(slots))?;
            ffi::c_int::try_from(pinned).map_err(|_| EINVAL)
        })
    }

    /// # Safety
    ///
    /// Called from `vfio_unpin_pages` with a live `iommu_data`.
    unsafe extern "C" fn unpin_pages(iommu_data: *mut ffi::c_void, user_iova: bindings::dma_addr_t, npage: ffi::c_int) {
        // SAFETY: see the function's safety section.
        let data = unsafe { Self::data(iommu_data) };
        T::unpin_pages(data, user_iova, usize::try_from(npage).unwrap_or(0));
    }

    /// # Safety
    ///
    /// Called when a device of the container is opened, with a live
    /// `iommu_data`; the device stays valid until `unregister_device`.
    unsafe extern "C" fn register_device(iommu_data: *mut ffi::c_void, vdev: *mut bindings::vfio_device) {
        // SAFETY: see the function's safety section.
        let (data, dev) = unsafe { (Self::data(iommu_data), VfioDevice::from_raw(vdev)) };
        T::register_device(data, Registering(dev));
    }

    /// # Safety
    ///
    /// Called when a registered device is closed, with a live `iommu_data`.
    unsafe extern "C" fn unregister_device(iommu_data: *mut ffi::c_void, vdev: *mut bindings::vfio_device) {
        // SAFETY: see the function's safety section.
        let (data, dev) = unsafe { (Self::data(iommu_data), VfioDevice::from_raw(vdev)) };
        T::unregister_device(data, Unregistering(dev));
    }

    /// # Safety
    ///
    /// Called from `vfio_dma_rw` with a live `iommu_data` and `buf` valid for
    /// `count` bytes, read or written according to `write`.
    unsafe extern "C" fn dma_rw(
        iommu_data: *mut ffi::c_void,
        user_iova: bindings::dma_addr_t,
        buf: *mut ffi::c_void,
        count: usize,
        write: bool,
    ) -> ffi::c_int {
        from_result(|| {
            if buf.is_null() {
                return Err(EINVAL);
            }
            // SAFETY: see the function's safety section.
            let data = unsafe { Self::data(iommu_data) };
            let b = if write {
                // SAFETY: `buf` is valid for `count` reads for this call.
                DmaRwBuffer::Write(unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) })
            } else {
                // SAFETY: `buf` is valid for `count` writes and not otherwise
                // accessed during this call.
                DmaRwBuffer::Read(unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), count) })
            };
            T::dma_rw(data, user_iova, b)?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called with a live `iommu_data` and an attached group.
    unsafe extern "C" fn group_iommu_domain(
        iommu_data: *mut ffi::c_void,
        group: *mut bindings::iommu_group,
    ) -> *mut bindings::iommu_domain {
        // SAFETY: see the function's safety section.
        let (data, group) = unsafe { (Self::data(iommu_data), IommuGroup::from_raw(group)) };
        match T::group_iommu_domain(data, group) {
            Ok(d) => d.as_ptr(),
            Err(e) => err_ptr(e),
        }
    }

    const fn build(name: &'static CStr) -> bindings::vfio_iommu_driver_ops {
        // The core warns unless both device-list hooks are set or neither is.
        kernel::build_assert!(T::HAS_REGISTER_DEVICE == T::HAS_UNREGISTER_DEVICE);
        bindings::vfio_iommu_driver_ops {
            name: name.as_char_ptr() as *mut ffi::c_char,
            owner: core::ptr::null_mut(),
            open: Some(Self::open),
            release: Some(Self::release),
            ioctl: Some(Self::ioctl),
            attach_group: Some(Self::attach_group),
            detach_group: Some(Self::detach_group),
            pin_pages: if T::HAS_PIN_PAGES { Some(Self::pin_pages) } else { None },
            unpin_pages: if T::HAS_UNPIN_PAGES { Some(Self::unpin_pages) } else { None },
            register_device: if T::HAS_REGISTER_DEVICE { Some(Self::register_device) } else { None },
            unregister_device: if T::HAS_UNREGISTER_DEVICE { Some(Self::unregister_device) } else { None },
            dma_rw: if T::HAS_DMA_RW { Some(Self::dma_rw) } else { None },
            group_iommu_domain: if T::HAS_GROUP_IOMMU_DOMAIN { Some(Self::group_iommu_domain) } else { None },
        }
    }
}

/// A registered backend; unregisters on drop.
///
/// # Invariants
///
/// `ops` was registered with `vfio_register_iommu_driver` and stays at this
/// address (the registration is pinned) until it is unregistered in `drop`.
pub(crate) struct Registration<T: IommuDriver> {
    ops: Opaque<bindings::vfio_iommu_driver_ops>,
    _t: PhantomData<T>,
}

// SAFETY: the ops table is written once before registration and only read
// afterwards (by the VFIO core, under its own locks).
unsafe impl<T: IommuDriver> Send for Registration<T> {}
// SAFETY: as above.
unsafe impl<T: IommuDriver> Sync for Registration<T> {}

impl<T: IommuDriver> Registration<T> {
    /// Registers backend `T` under `name`, owned by `module` (the core takes
    /// a module reference for every container using the backend).
    pub(crate) fn new(name: &'static CStr, module: &'static ThisModule) -> impl PinInit<Self, Error> {
        let init = move |slot: *mut Self| -> Result {
            let mut ops = OpsTable::<T>::build(name);
            ops.owner = module.as_ptr();
            // `Opaque<T>` has the layout of `T`.
            // SAFETY: `slot` is valid for writes (the initializer's contract).
            let ops_ptr = unsafe { core::ptr::addr_of_mut!((*slot).ops) }.cast::<bindings::vfio_iommu_driver_ops>();
            // SAFETY: `ops_ptr` is valid for writes and pinned.
            unsafe { ops_ptr.write(ops) };
            // SAFETY: `ops_ptr` holds a complete ops table that stays at this
            // address until `drop` unregisters it.
            to_result(unsafe { bindings::vfio_register_iommu_driver(ops_ptr) })?;
            // SAFETY: `slot` is valid for writes; the zero-sized marker has
            // nothing to initialise, but is written for form.
            unsafe { core::ptr::addr_of_mut!((*slot)._t).write(PhantomData) };
            Ok(())
        };
        // SAFETY: on success every field is initialised and the ops table is
        // registered at its final, pinned address; on failure nothing was
        // registered and nothing needs dropping.
        unsafe { kernel::init::pin_init_from_closure(init) }
    }
}

impl<T: IommuDriver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `ops` is registered. The core refuses
        // to unload a module with live containers (it holds `owner`), so no
        // container uses the table once we are dropped.
        unsafe { bindings::vfio_unregister_iommu_driver(self.ops.get()) };
    }
}
