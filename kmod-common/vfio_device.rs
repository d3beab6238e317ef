// SPDX-License-Identifier: GPL-2.0

//! VFIO devices: `struct vfio_device` and its `struct vfio_device_ops`.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h) (core in
//! `drivers/vfio/vfio_main.c`).
//!
//! A driver implements [`DeviceOps`] on its per-device state `T`.
//! [`Device::new`] allocates the C `struct vfio_device` with `T` behind it
//! (`_vfio_alloc_device`, as the C `vfio_alloc_device` macro does) and the
//! VFIO core hands `&Device<T>` back to every callback. [`Registration`]
//! makes the device visible to userspace with
//! `vfio_register_emulated_iommu_dev` and unregisters it on drop, which
//! waits until userspace closed its last file descriptor.
//!
//! A device of an emulated IOMMU group reaches user memory only through the
//! container's IOMMU backend: [`Device::pin_pages`] (long-lived pins, given
//! back with [`Device::unpin_pages`]) and [`Device::dma_rw`]. The backend
//! calls [`DeviceOps::dma_unmap`] when userspace unmaps an IOVA range; the
//! driver must unpin everything it holds in that range before returning.
//!
//! Migration (VFIO migration protocol v2) is optional: a driver that sets
//! `HAS_MIGRATION_SET_STATE` gets a `struct vfio_migration_ops` and returns
//! its data stream as a [`MigrationFile`] made with [`MigrationFile::new`]
//! from a [`MigrationFileOps`] implementation.

use crate::bindings;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use kernel::error::{from_err_ptr, from_result, to_result};
use kernel::ffi;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::{ARef, AlwaysRefCounted, ForeignOwnable, Opaque};
use kernel::uaccess::{UserSlice, UserSliceReader, UserSliceWriter};

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO ioctls carry no size or direction.
const fn vfio_io(nr: u32) -> u32 {
    ((bindings::VFIO_TYPE as u32) << 8) | (bindings::VFIO_BASE + nr)
}

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub(crate) const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub(crate) const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub(crate) const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
/// `VFIO_DEVICE_RESET`.
pub(crate) const VFIO_DEVICE_RESET: u32 = vfio_io(11);
/// `VFIO_MIG_GET_PRECOPY_INFO`, an ioctl of the migration data file.
pub(crate) const VFIO_MIG_GET_PRECOPY_INFO: u32 = vfio_io(21);

/// Largest number of pages one [`Device::pin_pages`] call may pin here.
pub(crate) const MAX_PIN_PAGES: usize = 2;

/// Device states of the migration protocol (`enum vfio_device_mig_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MigState {
    /// The device failed a transition and must be reset.
    Error,
    /// Stopped: no DMA, no interrupts, state frozen.
    Stop,
    /// Running normally.
    Running,
    /// Stopped, with the data file producing the final state.
    StopCopy,
    /// Stopped, with the data file accepting a state to load.
    Resuming,
    /// Running, but not initiating peer-to-peer DMA.
    RunningP2p,
    /// Running, with the data file producing initial state.
    PreCopy,
    /// `PreCopy` without peer-to-peer DMA.
    PreCopyP2p,
}

impl MigState {
    fn from_raw(v: bindings::vfio_device_mig_state) -> Option<Self> {
        Some(match v {
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR => MigState::Error,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP => MigState::Stop,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING => MigState::Running,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY => MigState::StopCopy,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING => MigState::Resuming,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P => MigState::RunningP2p,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY => MigState::PreCopy,
            bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P => MigState::PreCopyP2p,
            _ => return None,
        })
    }

    fn to_raw(self) -> bindings::vfio_device_mig_state {
        match self {
            MigState::Error => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
            MigState::Stop => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
            MigState::Running => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
            MigState::StopCopy => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
            MigState::Resuming => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
            MigState::RunningP2p => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
            MigState::PreCopy => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
            MigState::PreCopyP2p => bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
        }
    }
}

/// The callbacks of a VFIO device driver, implemented on its device state.
///
/// The VFIO core calls `open_device` when the first file descriptor of the
/// device is opened and `close_device` when the last one is closed; `read`,
/// `write` and `ioctl` only between the two. `dma_unmap` may come at any time
/// while the device is open, concurrently with the others, from the IOMMU
/// backend with its device-list lock held: it must not take locks that are
/// held around `pin_pages`/`unpin_pages` callers in the opposite order.
#[vtable]
pub(crate) trait DeviceOps: Sized + Send + Sync + 'static {
    /// The `name` of the ops table.
    const NAME: &'static CStr;

    /// `migration_flags` (`VFIO_MIGRATION_*`), for drivers with migration.
    const MIGRATION_FLAGS: u32 = 0;

    /// The first file descriptor was opened.
    fn open_device(_dev: &Device<Self>) -> Result {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The last file descriptor was closed.
    fn close_device(_dev: &Device<Self>) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// `read(2)` at `offset` of the device file into `buf`; returns the
    /// number of bytes read.
    fn read(_dev: &Device<Self>, _buf: &mut UserSliceWriter, _offset: u64) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// `write(2)` at `offset` of the device file from `buf`; returns the
    /// number of bytes written.
    fn write(_dev: &Device<Self>, _buf: &mut UserSliceReader, _offset: u64) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// A device ioctl; `arg` is the raw argument (usually a user pointer).
    fn ioctl(_dev: &Device<Self>, _cmd: u32, _arg: usize) -> Result<isize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Userspace unmapped `[iova, iova + length)` from the container: stop
    /// DMA there and unpin every page pinned in that range before returning.
    fn dma_unmap(_dev: &Device<Self>, _iova: u64, _length: u64) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Moves the device to migration state `new` (one arc of the protocol's
    /// state machine at a time, see [`Device::mig_next_state`]), returning
    /// the data file when the new state has one.
    fn migration_set_state(_dev: &Device<Self>, _new: MigState) -> Result<Option<MigrationFile>> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// The current migration state.
    fn migration_get_state(_dev: &Device<Self>) -> Result<MigState> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Estimated length of the `STOP_COPY` data.
    fn migration_get_data_size(_dev: &Device<Self>) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// A device that can be the parent of a VFIO device.
///
/// # Safety
///
/// [`DeviceParent::as_raw_device`] must return a valid `struct device` that
/// stays valid for as long as the VFIO device is registered (an mdev
/// instance is: its driver unregisters the VFIO device in `remove`).
pub(crate) unsafe trait DeviceParent {
    /// The C device.
    fn as_raw_device(&self) -> *mut bindings::device;
}

/// A VFIO device with the driver state `T` behind it.
///
/// # Invariants
///
/// `vdev` was allocated and initialised by `_vfio_alloc_device` with the ops
/// table of `T`, the allocation being a whole `Device<T>`; `data` is
/// initialised once `live` is set, which happens before the device is shared.
/// The object is reference counted through `vdev.device`.
#[repr(C)]
pub(crate) struct Device<T: DeviceOps> {
    vdev: Opaque<bindings::vfio_device>,
    live: bool,
    data: MaybeUninit<T>,
}

// SAFETY: the VFIO core may call back on any thread; `T: Send + Sync`.
unsafe impl<T: DeviceOps> Send for Device<T> {}
// SAFETY: as above.
unsafe impl<T: DeviceOps> Sync for Device<T> {}

// SAFETY: `get_device`/`put_device` on the embedded `struct device` manage
// the lifetime of the whole allocation (its release frees it).
unsafe impl<T: DeviceOps> AlwaysRefCounted for Device<T> {
    fn inc_ref(&self) {
        // SAFETY: the device is alive while we have a reference to it.
        unsafe { bindings::get_device(core::ptr::addr_of_mut!((*self.vdev.get()).device)) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: the caller gives up one reference, which we drop; this is
        // what the C `vfio_put_device` does.
        unsafe { bindings::put_device(core::ptr::addr_of_mut!((*obj.as_ref().vdev.get()).device)) };
    }
}

impl<T: DeviceOps> core::ops::Deref for Device<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: by the type invariant `data` is initialised whenever a
        // `&Device<T>` is reachable by the driver.
        unsafe { self.data.assume_init_ref() }
    }
}

impl<T: DeviceOps> Device<T> {
    /// The ops table of `T`.
    const OPS: bindings::vfio_device_ops = bindings::vfio_device_ops {
        name: T::NAME.as_char_ptr() as *mut ffi::c_char,
        init: None,
        release: Some(Self::release_callback),
        // With CONFIG_IOMMUFD the VFIO core refuses to register a device
        // without iommufd ops, and an emulated device uses the core's own,
        // as the C sample does; without it they do not exist (NULL in C).
        #[cfg(CONFIG_IOMMUFD)]
        bind_iommufd: Some(bindings::vfio_iommufd_emulated_bind),
        #[cfg(CONFIG_IOMMUFD)]
        unbind_iommufd: Some(bindings::vfio_iommufd_emulated_unbind),
        #[cfg(CONFIG_IOMMUFD)]
        attach_ioas: Some(bindings::vfio_iommufd_emulated_attach_ioas),
        #[cfg(CONFIG_IOMMUFD)]
        detach_ioas: Some(bindings::vfio_iommufd_emulated_detach_ioas),
        #[cfg(not(CONFIG_IOMMUFD))]
        bind_iommufd: None,
        #[cfg(not(CONFIG_IOMMUFD))]
        unbind_iommufd: None,
        #[cfg(not(CONFIG_IOMMUFD))]
        attach_ioas: None,
        #[cfg(not(CONFIG_IOMMUFD))]
        detach_ioas: None,
        open_device: if T::HAS_OPEN_DEVICE { Some(Self::open_callback) } else { None },
        close_device: if T::HAS_CLOSE_DEVICE { Some(Self::close_callback) } else { None },
        read: if T::HAS_READ { Some(Self::read_callback) } else { None },
        write: if T::HAS_WRITE { Some(Self::write_callback) } else { None },
        ioctl: if T::HAS_IOCTL { Some(Self::ioctl_callback) } else { None },
        mmap: None,
        request: None,
        match_: None,
        dma_unmap: if T::HAS_DMA_UNMAP { Some(Self::dma_unmap_callback) } else { None },
        device_feature: None,
    };

    /// The migration ops table of `T`.
    const MIG_OPS: bindings::vfio_migration_ops = bindings::vfio_migration_ops {
        migration_set_state: Some(Self::mig_set_state_callback),
        migration_get_state: Some(Self::mig_get_state_callback),
        migration_get_data_size: Some(Self::mig_get_data_size_callback),
    };

    /// The dirty-logging ops: a device that writes guest memory only through
    /// the IOMMU backend's pins has nothing to log itself (the backend
    /// reports pinned pages dirty), so every operation succeeds, as in the
    /// C sample.
    const LOG_OPS: bindings::vfio_log_ops = bindings::vfio_log_ops {
        log_start: Some(Self::log_start_callback),
        log_stop: Some(Self::log_stop_callback),
        log_read_and_clear: Some(Self::log_read_and_clear_callback),
    };

    /// Allocates a VFIO device whose parent is `parent` and initialises its
    /// state with `init`.
    pub(crate) fn new(parent: &impl DeviceParent, init: impl PinInit<T, Error>) -> Result<ARef<Self>> {
        let parent = parent.as_raw_device();
        const {
            assert!(core::mem::align_of::<Self>() <= 8, "kvzalloc only guarantees 8-byte alignment");
        }
        let ops: &'static bindings::vfio_device_ops = &Self::OPS;
        // SAFETY: the size covers a whole `Device<T>`, whose first field is
        // the `vfio_device`; `parent` is valid (`DeviceParent`); `ops` is
        // static.
        let vdev = from_err_ptr(unsafe { bindings::_vfio_alloc_device(core::mem::size_of::<Self>(), parent, ops) })?;
        let this = vdev.cast::<Self>();
        // SAFETY: the allocation is a zeroed `Device<T>` (so `live` is
        // false), and we hold its only reference.
        let data = unsafe { core::ptr::addr_of_mut!((*this).data) }.cast::<T>();
        // SAFETY: `data` is valid for writes and never moves: the C core
        // frees the allocation only in `release`.
        if let Err(e) = unsafe { init.__pinned_init(data) } {
            // SAFETY: drops our reference; `release` sees `live == false` and
            // leaves `data` alone.
            unsafe { bindings::put_device(core::ptr::addr_of_mut!((*vdev).device)) };
            return Err(e);
        }
        // SAFETY: we still hold the only reference; nothing reads these
        // fields concurrently before registration.
        unsafe {
            // INVARIANT: `data` was initialised just above.
            (*this).live = true;
            if T::HAS_MIGRATION_SET_STATE {
                let mig: &'static bindings::vfio_migration_ops = &Self::MIG_OPS;
                let log: &'static bindings::vfio_log_ops = &Self::LOG_OPS;
                (*vdev).migration_flags = T::MIGRATION_FLAGS;
                (*vdev).mig_ops = mig;
                (*vdev).log_ops = log;
            }
        }
        // SAFETY: `_vfio_alloc_device` returned with one reference, which
        // the `ARef` now owns.
        Ok(unsafe { ARef::from_raw(NonNull::new_unchecked(this)) })
    }

    fn raw(&self) -> *mut bindings::vfio_device {
        self.vdev.get()
    }

    /// # Safety
    ///
    /// `vdev` must be the `vfio_device` of a live `Device<T>` whose state is
    /// initialised, and stay so for `'a`.
    unsafe fn from_raw<'a>(vdev: *mut bindings::vfio_device) -> &'a Self {
        // SAFETY: `vdev` is the first field of a `#[repr(C)] Device<T>`.
        unsafe { &*vdev.cast::<Self>() }
    }

    /// Pins `npage` (1 to [`MAX_PIN_PAGES`]) pages of user memory from the
    /// page-aligned `iova`, for reading and also writing when `write`, through
    /// the container's IOMMU backend. The pages stay pinned (and counted in
    /// the owner's locked memory) until given to [`Self::unpin_pages`].
    ///
    /// Only valid while the device is open.
    pub(crate) fn pin_pages(&self, iova: u64, npage: usize, write: bool) -> Result<PinnedPages> {
        if npage == 0 || npage > MAX_PIN_PAGES {
            return Err(EINVAL);
        }
        let mut pages = [core::ptr::null_mut(); MAX_PIN_PAGES];
        let prot = bindings::IOMMU_READ | if write { bindings::IOMMU_WRITE } else { 0 };
        // SAFETY: the device is alive and open (documented precondition;
        // the core warns and fails otherwise); `pages` has room for `npage`.
        let ret = unsafe { bindings::vfio_pin_pages(self.raw(), iova, npage as i32, prot as i32, pages.as_mut_ptr()) };
        if ret < 0 {
            return Err(Error::from_errno(ret));
        }
        if ret as usize != npage {
            // The backend pins all or nothing; undo a partial answer anyway.
            if ret > 0 {
                // SAFETY: the backend pinned `ret` pages from `iova`.
                unsafe { bindings::vfio_unpin_pages(self.raw(), iova, ret) };
            }
            return Err(EFAULT);
        }
        // INVARIANT: the backend pinned `npage` pages from `iova` for us.
        Ok(PinnedPages { iova, npage, pages })
    }

    /// Unpins pages pinned by [`Self::pin_pages`] on this device.
    ///
    /// Takes the container's lock: the caller must not hold a lock that is
    /// also taken inside `dma_unmap` after the backend's device-list lock in
    /// an order that would invert (see the driver's lock order).
    pub(crate) fn unpin_pages(&self, pinned: PinnedPages) {
        // SAFETY: by the invariant of `PinnedPages`, these pages were pinned
        // through this device and not yet unpinned; `pinned` is consumed.
        unsafe { bindings::vfio_unpin_pages(self.raw(), pinned.iova, pinned.npage as i32) };
    }

    /// Copies between `buf` and user memory at `iova`: from user memory into
    /// `buf` when `write` is false, from `buf` into user memory otherwise.
    pub(crate) fn dma_rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads and writes
        // for the duration of the call; the device is alive.
        to_result(unsafe { bindings::vfio_dma_rw(self.raw(), iova, buf.as_mut_ptr().cast(), buf.len(), write) })
    }

    /// The next state on the way from `cur` to `new` (the core's
    /// `vfio_mig_get_next_state`), or `EINVAL` for an unreachable target.
    pub(crate) fn mig_next_state(&self, cur: MigState, new: MigState) -> Result<MigState> {
        let mut next: bindings::vfio_device_mig_state = 0;
        // SAFETY: the device is alive; `next` is a valid out-pointer.
        to_result(unsafe { bindings::vfio_mig_get_next_state(self.raw(), cur.to_raw(), new.to_raw(), &mut next) })?;
        MigState::from_raw(next).ok_or(EINVAL)
    }

    /// # Safety
    ///
    /// Called by the VFIO core when the last reference is dropped.
    unsafe extern "C" fn release_callback(vdev: *mut bindings::vfio_device) {
        let this = vdev.cast::<Self>();
        // SAFETY: nobody else can reach the device any more; `data` is
        // initialised exactly when `live` is set.
        unsafe {
            if (*this).live {
                (*this).live = false;
                core::ptr::drop_in_place(core::ptr::addr_of_mut!((*this).data).cast::<T>());
            }
        }
    }

    /// # Safety
    ///
    /// Called by the VFIO core for the first open of a registered device.
    unsafe extern "C" fn open_callback(vdev: *mut bindings::vfio_device) -> ffi::c_int {
        // SAFETY: a registered device is live.
        let dev = unsafe { Self::from_raw(vdev) };
        from_result(|| T::open_device(dev).map(|()| 0))
    }

    /// # Safety
    ///
    /// Called by the VFIO core for the last close of a registered device.
    unsafe extern "C" fn close_callback(vdev: *mut bindings::vfio_device) {
        // SAFETY: a registered device is live.
        T::close_device(unsafe { Self::from_raw(vdev) });
    }

    /// # Safety
    ///
    /// Called by the VFIO core for `read(2)` with a user buffer of `count`
    /// bytes and a valid `ppos`.
    unsafe extern "C" fn read_callback(
        vdev: *mut bindings::vfio_device,
        buf: *mut ffi::c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: a registered, open device is live; `ppos` is valid.
        let (dev, pos) = unsafe { (Self::from_raw(vdev), *ppos) };
        let Ok(offset) = u64::try_from(pos) else {
            return EINVAL.to_errno() as isize;
        };
        let mut writer = UserSlice::new(buf as usize, count).writer();
        match T::read(dev, &mut writer, offset) {
            Ok(n) => {
                // SAFETY: `ppos` is valid; `n <= count`, so no overflow.
                unsafe { *ppos = pos + n as bindings::loff_t };
                n as isize
            }
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by the VFIO core for `write(2)` with a user buffer of `count`
    /// bytes and a valid `ppos`.
    unsafe extern "C" fn write_callback(
        vdev: *mut bindings::vfio_device,
        buf: *const ffi::c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: a registered, open device is live; `ppos` is valid.
        let (dev, pos) = unsafe { (Self::from_raw(vdev), *ppos) };
        let Ok(offset) = u64::try_from(pos) else {
            return EINVAL.to_errno() as isize;
        };
        let mut reader = UserSlice::new(buf as usize, count).reader();
        match T::write(dev, &mut reader, offset) {
            Ok(n) => {
                // SAFETY: `ppos` is valid; `n <= count`, so no overflow.
                unsafe { *ppos = pos + n as bindings::loff_t };
                n as isize
            }
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by the VFIO core for an ioctl on an open device.
    unsafe extern "C" fn ioctl_callback(vdev: *mut bindings::vfio_device, cmd: ffi::c_uint, arg: ffi::c_ulong) -> ffi::c_long {
        // SAFETY: a registered, open device is live.
        let dev = unsafe { Self::from_raw(vdev) };
        from_result(|| T::ioctl(dev, cmd, arg).map(|v| v as ffi::c_long))
    }

    /// # Safety
    ///
    /// Called by the IOMMU backend for a device on its device list, which is
    /// open and therefore live.
    unsafe extern "C" fn dma_unmap_callback(vdev: *mut bindings::vfio_device, iova: u64, length: u64) {
        // SAFETY: see the function's safety section.
        T::dma_unmap(unsafe { Self::from_raw(vdev) }, iova, length);
    }

    /// # Safety
    ///
    /// Called by the VFIO core for `VFIO_DEVICE_FEATURE_MIGRATION` requests
    /// on an open device.
    unsafe extern "C" fn mig_set_state_callback(
        vdev: *mut bindings::vfio_device,
        new: bindings::vfio_device_mig_state,
    ) -> *mut bindings::file {
        // SAFETY: see the function's safety section.
        let dev = unsafe { Self::from_raw(vdev) };
        let Some(new) = MigState::from_raw(new) else {
            return EINVAL.to_ptr();
        };
        match T::migration_set_state(dev, new) {
            Ok(Some(f)) => f.into_raw(),
            Ok(None) => core::ptr::null_mut(),
            Err(e) => e.to_ptr(),
        }
    }

    /// # Safety
    ///
    /// As [`Self::mig_set_state_callback`], with a valid `cur`.
    unsafe extern "C" fn mig_get_state_callback(
        vdev: *mut bindings::vfio_device,
        cur: *mut bindings::vfio_device_mig_state,
    ) -> ffi::c_int {
        // SAFETY: see the function's safety section.
        let dev = unsafe { Self::from_raw(vdev) };
        from_result(|| {
            let s = T::migration_get_state(dev)?;
            // SAFETY: `cur` is a valid out-pointer.
            unsafe { *cur = s.to_raw() };
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// As [`Self::mig_set_state_callback`], with a valid `len`.
    unsafe extern "C" fn mig_get_data_size_callback(vdev: *mut bindings::vfio_device, len: *mut ffi::c_ulong) -> ffi::c_int {
        // SAFETY: see the function's safety section.
        let dev = unsafe { Self::from_raw(vdev) };
        from_result(|| {
            let n = T::migration_get_data_size(dev)?;
            // SAFETY: `len` is a valid out-pointer.
            unsafe { *len = n as ffi::c_ulong };
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the VFIO core; the arguments are not used.
    unsafe extern "C" fn log_start_callback(
        _vdev: *mut bindings::vfio_device,
        _ranges: *mut bindings::rb_root_cached,
        _nnodes: u32,
        _page_size: *mut u64,
    ) -> ffi::c_int {
        0
    }

    /// # Safety
    ///
    /// Called by the VFIO core; the argument is not used.
    unsafe extern "C" fn log_stop_callback(_vdev: *mut bindings::vfio_device) -> ffi::c_int {
        0
    }

    /// # Safety
    ///
    /// Called by the VFIO core; the arguments are not used.
    unsafe extern "C" fn log_read_and_clear_callback(
        _vdev: *mut bindings::vfio_device,
        _iova: ffi::c_ulong,
        _length: ffi::c_ulong,
        _dirty: *mut bindings::iova_bitmap,
    ) -> ffi::c_int {
        0
    }
}

/// Pages pinned through a device's IOMMU backend.
///
/// # Invariants
///
/// `pages[..npage]` are the pages of `[iova, iova + npage * PAGE_SIZE)`,
/// pinned for us by `vfio_pin_pages` and not yet unpinned. There is no
/// `Drop`: unpinning needs the device, so the owner gives the value back to
/// [`Device::unpin_pages`] (leaking it would leak the pins until the
/// container goes away).
#[must_use = "pinned pages must be given back to `Device::unpin_pages`"]
pub(crate) struct PinnedPages {
    iova: u64,
    npage: usize,
    pages: [*mut bindings::page; MAX_PIN_PAGES],
}

// SAFETY: a pinned page may be accessed and unpinned from any thread.
unsafe impl Send for PinnedPages {}
// SAFETY: `&PinnedPages` only allows copying bytes in and out of the pages,
// which the owner serialises with its own lock.
unsafe impl Sync for PinnedPages {}

impl PinnedPages {
    fn page(&self, index: usize, offset: usize, len: usize) -> Result<*mut bindings::page> {
        if index >= self.npage || offset.checked_add(len).map_or(true, |end| end > kernel::page::PAGE_SIZE) {
            return Err(EINVAL);
        }
        self.pages.get(index).copied().ok_or(EINVAL)
    }

    /// Copies `out.len()` bytes from page `index` at `offset` (inside one page).
    pub(crate) fn read(&self, index: usize, offset: usize, out: &mut [u8]) -> Result {
        let page = self.page(index, offset, out.len())?;
        // SAFETY: `page` is pinned (type invariant), so it stays allocated;
        // `kmap_local_page` maps it until `kunmap_local` below.
        let addr = unsafe { bindings::kmap_local_page(page) };
        // SAFETY: `offset + out.len() <= PAGE_SIZE` was checked; the mapping
        // is valid for the whole page; `out` does not overlap it.
        unsafe {
            core::ptr::copy_nonoverlapping(addr.cast::<u8>().add(offset), out.as_mut_ptr(), out.len());
            bindings::kunmap_local(addr);
        }
        Ok(())
    }

    /// Copies `data` into page `index` at `offset` (inside one page).
    pub(crate) fn write(&self, index: usize, offset: usize, data: &[u8]) -> Result {
        let page = self.page(index, offset, data.len())?;
        // SAFETY: as in `read`.
        let addr = unsafe { bindings::kmap_local_page(page) };
        // SAFETY: as in `read`, with the page as destination; the device
        // pinned it for writing (the caller's `write` request).
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(offset), data.len());
            bindings::kunmap_local(addr);
        }
        Ok(())
    }
}

/// A registered VFIO device; unregisters on drop.
///
/// # Invariants
///
/// `dev` was registered with `vfio_register_emulated_iommu_dev` and is
/// unregistered exactly once, in `drop`.
pub(crate) struct Registration<T: DeviceOps> {
    dev: ARef<Device<T>>,
}

impl<T: DeviceOps> Registration<T> {
    /// Makes `dev` visible to userspace in its own emulated IOMMU group.
    pub(crate) fn new(dev: ARef<Device<T>>) -> Result<Self> {
        // SAFETY: `dev` is a fully initialised, allocated VFIO device.
        to_result(unsafe { bindings::vfio_register_emulated_iommu_dev(dev.raw()) })?;
        // INVARIANT: registered just above.
        Ok(Registration { dev })
    }
}

impl<T: DeviceOps> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the device is registered. This waits
        // until userspace closed the device (after `close_device`).
        unsafe { bindings::vfio_unregister_group_dev(self.dev.raw()) };
    }
}

/// The file operations of a migration data file.
#[vtable]
pub(crate) trait MigrationFileOps: Sized + Send + Sync + 'static {
    /// The module whose code the file's operations are (`THIS_MODULE`): the
    /// VFS keeps it loaded while the file is open.
    const OWNER: &'static ThisModule;

    /// `read(2)` from the stream position into `buf`.
    fn read(_this: &Self, _buf: &mut UserSliceWriter, _pos: &mut u64) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// `write(2)` at the stream position from `buf`.
    fn write(_this: &Self, _buf: &mut UserSliceReader, _pos: &mut u64) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// An ioctl on the file, with the stream position.
    fn ioctl(_this: &Self, _cmd: u32, _arg: usize, _pos: u64) -> Result<isize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// A reference to an open migration data file (a `struct file`).
///
/// # Invariants
///
/// `self.0` is a file on which this value owns one reference.
pub(crate) struct MigrationFile(NonNull<bindings::file>);

// SAFETY: file references may be dropped from any thread.
unsafe impl Send for MigrationFile {}
// SAFETY: `&MigrationFile` allows nothing but cloning a reference.
unsafe impl Sync for MigrationFile {}

impl MigrationFile {
    /// An anonymous-inode stream file `name` whose operations are `F`'s,
    /// with `data` as its private state (dropped when the file is released).
    /// The file is readable if `F` has `read`, writable if it has `write`.
    pub(crate) fn new<F: MigrationFileOps>(name: &'static CStr, data: Arc<F>) -> Result<Self> {
        let fops: &'static bindings::file_operations = &MigrationFileVTable::<F>::FOPS;
        let flags = if F::HAS_WRITE { bindings::O_WRONLY } else { bindings::O_RDONLY };
        let private = data.into_foreign();
        // SAFETY: `name` and `fops` are static; `private` stays valid until
        // `release` takes it back.
        let file = unsafe { bindings::anon_inode_getfile(name.as_char_ptr(), fops, private as *mut _, flags as i32) };
        let file = match from_err_ptr(file) {
            Ok(file) => file,
            Err(e) => {
                // SAFETY: the file was not made, so the reference comes back to us.
                drop(unsafe { Arc::<F>::from_foreign(private) });
                return Err(e);
            }
        };
        // SAFETY: `file` is a new file with a valid inode; a migration
        // stream has no seekable position (as `stream_open` in C).
        unsafe { bindings::stream_open((*file).f_inode, file) };
        // INVARIANT: `anon_inode_getfile` returned a new reference.
        Ok(MigrationFile(NonNull::new(file).ok_or(ENOMEM)?))
    }

    /// Another reference to the same file.
    pub(crate) fn clone_ref(&self) -> Self {
        // SAFETY: we own a reference, so the file is alive.
        unsafe { bindings::kmod_helper_get_file(self.0.as_ptr()) };
        // INVARIANT: `get_file` took a new reference.
        MigrationFile(self.0)
    }

    fn into_raw(self) -> *mut bindings::file {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }
}

impl Drop for MigrationFile {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant).
        unsafe { bindings::fput(self.0.as_ptr()) };
    }
}

/// The C file operations for `F`.
struct MigrationFileVTable<F: MigrationFileOps>(PhantomData<F>);

impl<F: MigrationFileOps> MigrationFileVTable<F> {
    const FOPS: bindings::file_operations = bindings::file_operations {
        owner: F::OWNER.as_ptr(),
        read: if F::HAS_READ { Some(Self::read) } else { None },
        write: if F::HAS_WRITE { Some(Self::write) } else { None },
        unlocked_ioctl: if F::HAS_IOCTL { Some(Self::ioctl) } else { None },
        release: Some(Self::release),
        // SAFETY: all-zero is a valid `file_operations` (no callbacks).
        ..unsafe { MaybeUninit::zeroed().assume_init() }
    };

    /// # Safety
    ///
    /// `file` must be one of our files, whose private data came from
    /// `MigrationFile::new::<F>` and is valid until `release`.
    unsafe fn data<'a>(file: *mut bindings::file) -> kernel::sync::ArcBorrow<'a, F> {
        // SAFETY: see the function's safety section: the private data is an
        // `Arc<F>` turned into a foreign pointer, alive until `release`.
        unsafe { <Arc<F> as ForeignOwnable>::borrow((*file).private_data) }
    }

    /// # Safety
    ///
    /// Called by the VFS for `read(2)` on one of our files; `ppos` is NULL
    /// for a stream file (the position is `f_pos`).
    unsafe extern "C" fn read(file: *mut bindings::file, buf: *mut ffi::c_char, len: usize, ppos: *mut bindings::loff_t) -> isize {
        if !ppos.is_null() {
            return ESPIPE.to_errno() as isize;
        }
        // SAFETY: see the function's safety section.
        let (this, fpos) = unsafe { (Self::data(file), &mut (*file).f_pos) };
        let mut pos = u64::try_from(*fpos).unwrap_or(u64::MAX);
        let mut w = UserSlice::new(buf as usize, len).writer();
        match F::read(&this, &mut w, &mut pos) {
            Ok(n) => {
                *fpos = bindings::loff_t::try_from(pos).unwrap_or(bindings::loff_t::MAX);
                n as isize
            }
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// As [`Self::read`], for `write(2)`.
    unsafe extern "C" fn write(file: *mut bindings::file, buf: *const ffi::c_char, len: usize, ppos: *mut bindings::loff_t) -> isize {
        if !ppos.is_null() {
            return ESPIPE.to_errno() as isize;
        }
        // SAFETY: see the function's safety section.
        let (this, fpos) = unsafe { (Self::data(file), &mut (*file).f_pos) };
        let Ok(mut pos) = u64::try_from(*fpos) else {
            return EINVAL.to_errno() as isize;
        };
        let mut r = UserSlice::new(buf as usize, len).reader();
        match F::write(&this, &mut r, &mut pos) {
            Ok(n) => {
                *fpos = bindings::loff_t::try_from(pos).unwrap_or(bindings::loff_t::MAX);
                n as isize
            }
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by the VFS for an ioctl on one of our files.
    unsafe extern "C" fn ioctl(file: *mut bindings::file, cmd: ffi::c_uint, arg: ffi::c_ulong) -> ffi::c_long {
        // SAFETY: see the function's safety section.
        let (this, pos) = unsafe { (Self::data(file), (*file).f_pos) };
        let pos = u64::try_from(pos).unwrap_or(u64::MAX);
        from_result(|| F::ioctl(&this, cmd, arg, pos).map(|v| v as ffi::c_long))
    }

    /// # Safety
    ///
    /// Called by the VFS once, when the last reference to one of our files
    /// is dropped.
    unsafe extern "C" fn release(_inode: *mut bindings::inode, file: *mut bindings::file) -> ffi::c_int {
        // SAFETY: the private data came from `Arc::into_foreign` in `new`;
        // it is taken back exactly once, here.
        drop(unsafe { Arc::<F>::from_foreign((*file).private_data) });
        0
    }
}

/// The uAPI of the device ioctls (`include/uapi/linux/vfio.h`): the values
/// drivers put in replies, and the argument handling the C drivers share
/// (copy the fixed part in, check `argsz`, copy the fixed part back).
pub(crate) mod uapi {
    use crate::bindings;
    use kernel::prelude::*;
    use kernel::uaccess::UserSlice;

    pub(crate) use crate::bindings::{
        VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD,
        VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
        VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
        VFIO_MIGRATION_STOP_COPY, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    };

    /// `VFIO_PCI_NUM_REGIONS`.
    pub(crate) const PCI_NUM_REGIONS: u32 = bindings::VFIO_PCI_NUM_REGIONS;
    /// `VFIO_PCI_NUM_IRQS`.
    pub(crate) const PCI_NUM_IRQS: u32 = bindings::VFIO_PCI_NUM_IRQS;
    /// `VFIO_PCI_CONFIG_REGION_INDEX`.
    pub(crate) const PCI_CONFIG_REGION_INDEX: u32 = bindings::VFIO_PCI_CONFIG_REGION_INDEX;
    /// `VFIO_PCI_BAR5_REGION_INDEX`.
    pub(crate) const PCI_BAR5_REGION_INDEX: u32 = bindings::VFIO_PCI_BAR5_REGION_INDEX;
    /// `VFIO_PCI_INTX_IRQ_INDEX`.
    pub(crate) const PCI_INTX_IRQ_INDEX: u32 = bindings::VFIO_PCI_INTX_IRQ_INDEX;
    /// `VFIO_PCI_MSI_IRQ_INDEX`.
    pub(crate) const PCI_MSI_IRQ_INDEX: u32 = bindings::VFIO_PCI_MSI_IRQ_INDEX;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        let mut w = [0u8; 4];
        if let Some(s) = b.get(off..off + 4) {
            w.copy_from_slice(s);
        }
        u32::from_ne_bytes(w)
    }

    fn put_u32(b: &mut [u8], off: usize, v: u32) {
        if let Some(s) = b.get_mut(off..off + 4) {
            s.copy_from_slice(&v.to_ne_bytes());
        }
    }

    fn put_u64(b: &mut [u8], off: usize, v: u64) {
        if let Some(s) = b.get_mut(off..off + 8) {
            s.copy_from_slice(&v.to_ne_bytes());
        }
    }

    /// Reads the fixed part (`N` bytes) of an ioctl argument and checks its
    /// leading `argsz`: `EFAULT` if unreadable, `EINVAL` if `argsz < N`.
    fn read_fixed<const N: usize>(arg: usize) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        UserSlice::new(arg, N).reader().read_slice(&mut b)?;
        if (u32_at(&b, 0) as usize) < N {
            return Err(EINVAL);
        }
        Ok(b)
    }

    fn write_fixed(arg: usize, b: &[u8]) -> Result {
        UserSlice::new(arg, b.len()).writer().write_slice(b)
    }

    /// The reply to `VFIO_DEVICE_GET_INFO`.
    pub(crate) struct DeviceInfo {
        /// `VFIO_DEVICE_FLAGS_*`.
        pub(crate) flags: u32,
        /// Number of regions.
        pub(crate) num_regions: u32,
        /// Number of IRQ indices.
        pub(crate) num_irqs: u32,
    }

    /// Handles `VFIO_DEVICE_GET_INFO` (no capability chain).
    pub(crate) fn get_info(arg: usize, info: &DeviceInfo) -> Result {
        // offsetofend(struct vfio_device_info, num_irqs)
        let mut b = read_fixed::<16>(arg)?;
        put_u32(&mut b, 4, info.flags);
        put_u32(&mut b, 8, info.num_regions);
        put_u32(&mut b, 12, info.num_irqs);
        write_fixed(arg, &b)
    }

    /// The reply to `VFIO_DEVICE_GET_REGION_INFO` for one region.
    pub(crate) struct RegionInfo {
        /// `VFIO_REGION_INFO_FLAG_*`.
        pub(crate) flags: u32,
        /// Size in bytes.
        pub(crate) size: u64,
        /// Offset of the region in the device file.
        pub(crate) offset: u64,
    }

    /// Handles `VFIO_DEVICE_GET_REGION_INFO`, asking `region` about the
    /// requested index (no capability chain).
    pub(crate) fn get_region_info(arg: usize, region: impl FnOnce(u32) -> Result<RegionInfo>) -> Result {
        // offsetofend(struct vfio_region_info, offset)
        let mut b = read_fixed::<32>(arg)?;
        let r = region(u32_at(&b, 8))?;
        put_u32(&mut b, 4, r.flags);
        put_u64(&mut b, 16, r.size);
        put_u64(&mut b, 24, r.offset);
        write_fixed(arg, &b)
    }

    /// The reply to `VFIO_DEVICE_GET_IRQ_INFO` for one index.
    pub(crate) struct IrqInfo {
        /// `VFIO_IRQ_INFO_*`.
        pub(crate) flags: u32,
        /// Number of vectors.
        pub(crate) count: u32,
    }

    /// Handles `VFIO_DEVICE_GET_IRQ_INFO`, asking `irq` about the index.
    pub(crate) fn get_irq_info(arg: usize, irq: impl FnOnce(u32) -> Result<IrqInfo>) -> Result {
        // offsetofend(struct vfio_irq_info, count)
        let mut b = read_fixed::<16>(arg)?;
        let r = irq(u32_at(&b, 8))?;
        put_u32(&mut b, 4, r.flags);
        put_u32(&mut b, 12, r.count);
        write_fixed(arg, &b)
    }

    /// A validated `VFIO_DEVICE_SET_IRQS` request.
    pub(crate) struct IrqSet {
        /// `VFIO_IRQ_SET_DATA_*` and `VFIO_IRQ_SET_ACTION_*`.
        pub(crate) flags: u32,
        /// IRQ index.
        pub(crate) index: u32,
        /// First vector.
        pub(crate) start: u32,
        /// Number of vectors.
        pub(crate) count: u32,
        /// The data that follows the header (bools or eventfds).
        pub(crate) data: KVec<u8>,
    }

    impl IrqSet {
        /// The first data byte (`DATA_BOOL`), zero if there is none.
        pub(crate) fn bool_at0(&self) -> bool {
            self.data.first().copied().unwrap_or(0) != 0
        }

        /// The first data word as a file descriptor (`DATA_EVENTFD`).
        pub(crate) fn fd_at0(&self) -> i32 {
            u32_at(&self.data, 0) as i32
        }
    }

    /// Reads and validates a `VFIO_DEVICE_SET_IRQS` argument with the VFIO
    /// core's `vfio_set_irqs_validate_and_prepare`, then copies its data.
    pub(crate) fn set_irqs_prepare(arg: usize, num_irqs: u32, max_irq_type: u32) -> Result<IrqSet> {
        // offsetofend(struct vfio_irq_set, count)
        const MINSZ: usize = 20;
        let mut b = [0u8; MINSZ];
        UserSlice::new(arg, MINSZ).reader().read_slice(&mut b)?;
        let mut hdr = bindings::vfio_irq_set {
            argsz: u32_at(&b, 0),
            flags: u32_at(&b, 4),
            index: u32_at(&b, 8),
            start: u32_at(&b, 12),
            count: u32_at(&b, 16),
            ..Default::default()
        };
        let mut data_size: usize = 0;
        // SAFETY: `hdr` and `data_size` are valid for the call; the function
        // only reads the header and writes `data_size`.
        kernel::error::to_result(unsafe {
            bindings::vfio_set_irqs_validate_and_prepare(&mut hdr, num_irqs as i32, max_irq_type as i32, &mut data_size)
        })?;
        let mut data = KVec::new();
        if data_size > 0 {
            data = KVec::from_elem(0u8, data_size, GFP_KERNEL)?;
            UserSlice::new(arg + MINSZ, data_size).reader().read_slice(&mut data)?;
        }
        Ok(IrqSet { flags: hdr.flags, index: hdr.index, start: hdr.start, count: hdr.count, data })
    }

    /// Writes a `struct vfio_precopy_info` reply (`VFIO_MIG_GET_PRECOPY_INFO`):
    /// `EFAULT` if unreadable, `EINVAL` if `argsz` is too small.
    pub(crate) fn precopy_info(arg: usize, info: impl FnOnce() -> Result<(u64, u64)>) -> Result {
        // offsetofend(struct vfio_precopy_info, dirty_bytes)
        let mut b = read_fixed::<24>(arg)?;
        let (initial, dirty) = info()?;
        put_u64(&mut b, 8, initial);
        put_u64(&mut b, 16, dirty);
        write_fixed(arg, &b)
    }
}
