// SPDX-License-Identifier: GPL-2.0

//! The C ops tables of a [`Device<T>`] (`struct vfio_device_ops`,
//! `vfio_migration_ops`) and their trampolines: each fills
//! an entry only if `T` implements the method, and turns the C arguments
//! into safe ones for [`DeviceOps`].

use super::{Device, DeviceOps, MigState};
use crate::bindings;
use kernel::error::from_result;
use kernel::ffi;
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

impl<T: DeviceOps> Device<T> {
    /// The ops table of `T`.
    pub(super) const OPS: bindings::vfio_device_ops = bindings::vfio_device_ops {
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
    pub(super) const MIG_OPS: bindings::vfio_migration_ops = bindings::vfio_migration_ops {
        migration_set_state: Some(Self::mig_set_state_callback),
        migration_get_state: Some(Self::mig_get_state_callback),
        migration_get_data_size: Some(Self::mig_get_data_size_callback),
    };

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
}
