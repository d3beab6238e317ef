// SPDX-License-Identifier: GPL-2.0

//! Mediated devices: an mdev parent with its types, and the mdev driver
//! that probes the instances userspace creates through sysfs.
//!
//! C header: [`include/linux/mdev.h`](srctree/include/linux/mdev.h) (core in
//! `drivers/vfio/mdev/`).
//!
//! A driver implements [`MdevDriver`]. [`Parent`] registers, in this order,
//! the `struct mdev_driver` (a trampoline for each implemented method), a
//! device class and a parent device both named [`MdevDriver::NAME`], and the
//! mdev parent with one `struct mdev_type` per entry of
//! [`MdevDriver::TYPES`]. The mdev core names each type
//! `<NAME>-<sysfs_name>` (it uses the class name of the parent device), so
//! `NAME = "mtty"` and a type `"1"` give `mdev_supported_types/mtty-1`.
//! Dropping the [`Parent`] undoes everything in reverse order; the mdev core
//! removes every remaining instance first.
//!
//! Each instance gets a [`MdevDriver::Instance`] from `probe`, kept as the
//! mdev device's driver data until `remove`. Parent-wide state lives in
//! [`MdevDriver::Shared`], which every callback receives.

use crate::bindings;
use core::marker::PhantomData;
use kernel::error::{from_err_ptr, from_result, to_result};
use kernel::ffi;
use kernel::c_str;
use kernel::prelude::*;
use kernel::types::Opaque;

/// Static description of one mdev type.
pub(crate) struct TypeDesc {
    /// The suffix of the type's sysfs name (`<driver>-<sysfs_name>`).
    pub(crate) sysfs_name: &'static CStr,
    /// The `name` attribute.
    pub(crate) pretty_name: &'static CStr,
    /// The `description` attribute (all types must have one, or none).
    pub(crate) description: Option<&'static CStr>,
}

/// An mdev instance, borrowed for the duration of `probe`.
///
/// # Invariants
///
/// The wrapped `struct mdev_device` is valid for as long as the reference.
#[repr(transparent)]
pub(crate) struct MdevDevice(Opaque<bindings::mdev_device>);

impl MdevDevice {
    /// # Safety
    ///
    /// `ptr` must point to a valid `mdev_device` that outlives `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::mdev_device) -> &'a Self {
        // SAFETY: transparent wrapper; validity from the caller.
        unsafe { &*ptr.cast() }
    }

}

// SAFETY: the mdev core removes (and so unregisters the VFIO device of) an
// instance before its `struct device` goes away.
unsafe impl crate::vfio_device::DeviceParent for MdevDevice {
    fn as_raw_device(&self) -> *mut bindings::device {
        // SAFETY: by the type invariant the mdev device is valid; this only
        // computes a field address.
        unsafe { core::ptr::addr_of_mut!((*self.0.get()).dev) }
    }
}

/// An mdev driver with its parent device.
#[vtable]
pub(crate) trait MdevDriver: Sized + 'static {
    /// State shared by the parent and all its instances.
    type Shared: Send + Sync + 'static;

    /// What `probe` makes for each instance; dropped after `remove`.
    type Instance: Send + Sync + 'static;

    /// Name of the driver, of the parent's class and of the parent device.
    const NAME: &'static CStr;

    /// The `device_api` attribute of every type (e.g. `vfio-pci`).
    const DEVICE_API: &'static CStr;

    /// The types, in the order their indices are passed to the methods.
    const TYPES: &'static [TypeDesc];

    /// An instance of type `type_index` was created: make its device.
    fn probe(shared: &Self::Shared, mdev: &MdevDevice, type_index: usize) -> Result<KBox<Self::Instance>>;

    /// The instance is being removed; the default just drops it.
    fn remove(_shared: &Self::Shared, instance: KBox<Self::Instance>) {
        drop(instance);
    }

    /// The `available_instances` attribute of type `type_index`.
    fn get_available(_shared: &Self::Shared, _type_index: usize) -> u32 {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// A registered mdev driver, parent device and parent.
///
/// # Invariants
///
/// `raw` (first field, so a `struct mdev_parent *` of ours is a pointer to
/// the `Parent`) is registered with `mdev_register_parent` on `dev`, with
/// `driver` registered and the types in `types`; all of it stays at this
/// address (the value is pinned) until `drop` unregisters it.
#[repr(C)]
pub(crate) struct Parent<T: MdevDriver> {
    raw: Opaque<bindings::mdev_parent>,
    driver: Opaque<bindings::mdev_driver>,
    types: KVec<Opaque<bindings::mdev_type>>,
    type_ptrs: KVec<*mut bindings::mdev_type>,
    class: *mut bindings::class,
    dev: *mut bindings::device,
    shared: T::Shared,
    _t: PhantomData<T>,
}

// SAFETY: after registration the raw parts are only used by the mdev core
// under its own locks; `shared` is `Sync`.
unsafe impl<T: MdevDriver> Send for Parent<T> {}
// SAFETY: as above.
unsafe impl<T: MdevDriver> Sync for Parent<T> {}

impl<T: MdevDriver> Parent<T> {
    /// Registers driver `T` with its parent device and types, owned by
    /// `module`, with `shared` as the parent-wide state.
    pub(crate) fn new(module: &'static ThisModule, shared: T::Shared) -> impl PinInit<Self, Error> {
        let init = move |slot: *mut Self| -> Result {
            let mut types = KVec::with_capacity(T::TYPES.len(), GFP_KERNEL)?;
            let mut type_ptrs = KVec::with_capacity(T::TYPES.len(), GFP_KERNEL)?;
            for t in T::TYPES {
                let raw = bindings::mdev_type {
                    sysfs_name: t.sysfs_name.as_char_ptr(),
                    pretty_name: t.pretty_name.as_char_ptr(),
                    ..Default::default()
                };
                types.push(Opaque::new(raw), GFP_KERNEL)?;
            }
            for t in types.iter() {
                type_ptrs.push(t.get(), GFP_KERNEL)?;
            }
            let driver = bindings::mdev_driver {
                device_api: T::DEVICE_API.as_char_ptr(),
                probe: Some(Self::probe),
                remove: Some(Self::remove),
                get_available: if T::HAS_GET_AVAILABLE { Some(Self::get_available) } else { None },
                show_description: if T::TYPES.iter().all(|t| t.description.is_some()) {
                    Some(Self::show_description)
                } else {
                    None
                },
                driver: bindings::device_driver {
                    name: T::NAME.as_char_ptr(),
                    owner: module.as_ptr(),
                    ..Default::default()
                },
                ..Default::default()
            };
            // SAFETY: `slot` is valid for writes (the initializer's
            // contract) and every field is written exactly once here, before
            // any C code sees the structure.
            unsafe {
                core::ptr::addr_of_mut!((*slot).raw).write(Opaque::uninit());
                core::ptr::addr_of_mut!((*slot).driver).write(Opaque::new(driver));
                core::ptr::addr_of_mut!((*slot).types).write(types);
                core::ptr::addr_of_mut!((*slot).type_ptrs).write(type_ptrs);
                core::ptr::addr_of_mut!((*slot).class).write(core::ptr::null_mut());
                core::ptr::addr_of_mut!((*slot).dev).write(core::ptr::null_mut());
                core::ptr::addr_of_mut!((*slot).shared).write(shared);
                core::ptr::addr_of_mut!((*slot)._t).write(PhantomData);
            }
            // SAFETY: `slot` is now fully initialised and pinned.
            let this = unsafe { &mut *slot };
            if let Err(e) = this.register() {
                // SAFETY: `register` undid its partial work; the fields are
                // dropped once, here, since the initializer failed.
                unsafe { core::ptr::drop_in_place(slot) };
                return Err(e);
            }
            Ok(())
        };
        // SAFETY: on success every field is initialised and registered at
        // its final, pinned address; on failure everything was undone and
        // dropped.
        unsafe { kernel::init::pin_init_from_closure(init) }
    }

    /// The registration steps; on failure undoes the ones that succeeded.
    fn register(&mut self) -> Result {
        // Checked before anything is registered: an early return later would
        // leave `dev` set, and the failed initializer's drop would then
        // unregister a parent that was never registered.
        let nr = u32::try_from(self.type_ptrs.len()).map_err(|_| EINVAL)?;
        // SAFETY: `driver` is a complete `mdev_driver` that stays at this
        // address until `unregister`.
        to_result(unsafe { bindings::mdev_register_driver(self.driver.get()) })?;
        // SAFETY: `NAME` is a NUL-terminated string with static lifetime.
        let class = match from_err_ptr(unsafe { bindings::class_create(T::NAME.as_char_ptr()) }) {
            Ok(class) => class,
            Err(e) => {
                // SAFETY: registered just above.
                unsafe { bindings::mdev_unregister_driver(self.driver.get()) };
                return Err(e);
            }
        };
        self.class = class;
        // SAFETY: `class` is a live class; the format "%s" consumes the one
        // NUL-terminated string argument.
        let dev = from_err_ptr(unsafe {
            bindings::device_create(
                class,
                core::ptr::null_mut(),
                0,
                core::ptr::null_mut(),
                c_str!("%s").as_char_ptr(),
                T::NAME.as_char_ptr(),
            )
        });
        let dev = match dev {
            Ok(dev) => dev,
            Err(e) => {
                self.class = core::ptr::null_mut();
                // SAFETY: both were registered above and nothing uses them.
                unsafe {
                    bindings::class_destroy(class);
                    bindings::mdev_unregister_driver(self.driver.get());
                }
                return Err(e);
            }
        };
        self.dev = dev;
        // SAFETY: `raw`, `driver` and the types stay at their addresses
        // until `drop`; `dev` is a registered device; `type_ptrs` holds
        // `nr` valid type pointers.
        let ret = unsafe {
            bindings::mdev_register_parent(self.raw.get(), dev, self.driver.get(), self.type_ptrs.as_mut_ptr(), nr)
        };
        if let Err(e) = to_result(ret) {
            self.dev = core::ptr::null_mut();
            self.class = core::ptr::null_mut();
            // SAFETY: all three were registered above; the parent was not.
            unsafe {
                bindings::device_unregister(dev);
                bindings::class_destroy(class);
                bindings::mdev_unregister_driver(self.driver.get());
            }
            return Err(e);
        }
        Ok(())
    }

    /// # Safety
    ///
    /// `mtype` must be one of the types of a registered `Parent<T>`, which
    /// then outlives `'a`.
    unsafe fn from_type<'a>(mtype: *mut bindings::mdev_type) -> (&'a Self, usize) {
        // SAFETY: the mdev core set `parent` when it added the type, to the
        // `raw` field of our `Parent`, which is its first field.
        let this = unsafe { &*(*mtype).parent.cast::<Self>() };
        let index = this.type_ptrs.iter().position(|&p| p == mtype).unwrap_or(0);
        (this, index)
    }

    /// # Safety
    ///
    /// Called by the mdev core with a new instance of one of our types.
    unsafe extern "C" fn probe(mdev: *mut bindings::mdev_device) -> ffi::c_int {
        from_result(|| {
            // SAFETY: an instance's type is one of our registered types, and
            // the parent outlives its instances.
            let (this, index) = unsafe { Self::from_type((*mdev).type_) };
            // SAFETY: `mdev` is valid during probe.
            let dev = unsafe { MdevDevice::from_raw(mdev) };
            let instance = T::probe(&this.shared, dev, index)?;
            let ptr = KBox::into_raw(instance);
            // SAFETY: the device is ours until `remove`; its driver data is
            // the driver's to set (what `dev_set_drvdata` does).
            unsafe { (*mdev).dev.driver_data = ptr.cast() };
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the mdev core once per successful `probe`.
    unsafe extern "C" fn remove(mdev: *mut bindings::mdev_device) {
        // SAFETY: as in `probe`.
        let (this, _) = unsafe { Self::from_type((*mdev).type_) };
        // SAFETY: `probe` stored the pointer; it is taken back once, here.
        let ptr = unsafe { core::mem::replace(&mut (*mdev).dev.driver_data, core::ptr::null_mut()) };
        if ptr.is_null() {
            return;
        }
        // SAFETY: `ptr` came from `KBox::into_raw` in `probe`.
        let instance = unsafe { KBox::from_raw(ptr.cast::<T::Instance>()) };
        T::remove(&this.shared, instance);
    }

    /// # Safety
    ///
    /// Called by the mdev core with one of our types.
    unsafe extern "C" fn get_available(mtype: *mut bindings::mdev_type) -> ffi::c_uint {
        // SAFETY: see the function's safety section.
        let (this, index) = unsafe { Self::from_type(mtype) };
        T::get_available(&this.shared, index)
    }

    /// # Safety
    ///
    /// Called by the mdev core with one of our types and a `PAGE_SIZE`
    /// sysfs buffer.
    unsafe extern "C" fn show_description(mtype: *mut bindings::mdev_type, buf: *mut ffi::c_char) -> isize {
        // SAFETY: see the function's safety section.
        let (_, index) = unsafe { Self::from_type(mtype) };
        let Some(desc) = T::TYPES.get(index).and_then(|t| t.description) else {
            return 0;
        };
        let bytes = desc.as_bytes();
        let len = bytes.len().min(4095);
        // SAFETY: `buf` has room for `PAGE_SIZE` bytes and does not overlap
        // the static string.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), len) };
        len as isize
    }
}

impl<T: MdevDriver> Drop for Parent<T> {
    fn drop(&mut self) {
        if self.dev.is_null() {
            // Never registered (only reachable from a failed `new`).
            return;
        }
        // SAFETY: by the type invariant everything is registered; the mdev
        // core removes the remaining instances inside
        // `mdev_unregister_parent`, then nothing refers to the parent.
        unsafe {
            bindings::mdev_unregister_parent(self.raw.get());
            bindings::device_unregister(self.dev);
            bindings::class_destroy(self.class);
            bindings::mdev_unregister_driver(self.driver.get());
        }
    }
}
