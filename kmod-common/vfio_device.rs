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
//!
//! Files: `vfio_device/callbacks.rs` (the C ops tables and their
//! trampolines), `vfio_device/migration.rs` (migration states and data
//! files), `vfio_device/pinned.rs` (pinned pages), `vfio_device/uapi.rs`
//! (ioctl numbers and argument handling).

// A file mounted with `#[path]` looks for its children beside itself, so
// each names its own file.
#[path = "vfio_device/callbacks.rs"]
mod callbacks;
#[path = "vfio_device/migration.rs"]
mod migration;
#[path = "vfio_device/pinned.rs"]
mod pinned;
#[path = "vfio_device/uapi.rs"]
pub(crate) mod uapi;

pub(crate) use migration::{MigState, MigrationFile, MigrationFileOps};
pub(crate) use pinned::PinnedPages;

use crate::bindings;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use kernel::error::{from_err_ptr, to_result};
use kernel::prelude::*;
use kernel::types::{ARef, AlwaysRefCounted, Opaque};
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

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
// The C and the Rust view of `struct vfio_device` must have the same size:
// `data` follows it in the allocation `_vfio_alloc_device` makes.
const _: () = assert!(core::mem::size_of::<bindings::vfio_device>() == bindings::KMOD_VFIO_DEVICE_SIZE as usize);

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
                (*vdev).migration_flags = T::MIGRATION_FLAGS;
                (*vdev).mig_ops = mig;
                // No `log_ops`: the device writes guest memory only through
                // pages the IOMMU backend pinned for it, and the backend's
                // dirty tracking reports those. With `log_ops` (the C
                // sample's do-nothing stubs) QEMU would ask the device
                // instead and be told nothing is ever dirty.
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

    /// Pins `npage` (1 to `N`, the driver's own bound) pages of user memory from the
    /// page-aligned `iova`, for reading and also writing when `write`, through
    /// the container's IOMMU backend. The pages stay pinned (and counted in
    /// the owner's locked memory) until given to [`Self::unpin_pages`].
    ///
    /// Only valid while the device is open.
    pub(crate) fn pin_pages<const N: usize>(&self, iova: u64, npage: usize, write: bool) -> Result<PinnedPages<N>> {
        const {
            // `vfio_pin_pages` takes an `int` count, and refuses more than
            // `VFIO_PIN_PAGES_MAX_ENTRIES` (a page of pointers).
            assert!(N > 0 && N <= kernel::page::PAGE_SIZE / core::mem::size_of::<usize>());
        }
        if npage == 0 || npage > N {
            return Err(EINVAL);
        }
        let mut pages = [core::ptr::null_mut(); N];
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
    /// an order that would invert (the driver states its lock order).
    pub(crate) fn unpin_pages<const N: usize>(&self, pinned: PinnedPages<N>) {
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
