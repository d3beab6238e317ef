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
//! The groups and devices the callbacks receive, and a container's list of
//! devices to notify of unmaps, are in `vfio_iommu_devices.rs`.

use crate::bindings;
use crate::iommu_domain::DomainHandle;
use crate::mm::Pfn;
use crate::vfio_iommu_devices::{GroupType, IommuGroup, Registering, Unregistering, VfioDevice};
use core::marker::PhantomData;
use kernel::error::{from_result, to_result};
use kernel::ffi;
use kernel::prelude::*;
use kernel::types::{ForeignOwnable, Opaque};

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
        // SAFETY: the VFIO core is registering `dev`.
        T::register_device(data, unsafe { Registering::new(dev) });
    }

    /// # Safety
    ///
    /// Called when a registered device is closed, with a live `iommu_data`.
    unsafe extern "C" fn unregister_device(iommu_data: *mut ffi::c_void, vdev: *mut bindings::vfio_device) {
        // SAFETY: see the function's safety section.
        let (data, dev) = unsafe { (Self::data(iommu_data), VfioDevice::from_raw(vdev)) };
        T::unregister_device(data, Unregistering::new(dev));
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
