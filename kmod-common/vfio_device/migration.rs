// SPDX-License-Identifier: GPL-2.0

//! VFIO migration protocol v2 for a device: its states ([`MigState`]) and
//! its data stream, an anonymous-inode file ([`MigrationFile`]) whose
//! operations a driver implements with [`MigrationFileOps`].

use super::{Device, DeviceOps};
use crate::bindings;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use kernel::error::{from_err_ptr, from_result, to_result};
use kernel::ffi;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::ForeignOwnable;
use kernel::uaccess::{UserSlice, UserSliceReader, UserSliceWriter};

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
    pub(super) fn from_raw(v: bindings::vfio_device_mig_state) -> Option<Self> {
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

    pub(super) fn to_raw(self) -> bindings::vfio_device_mig_state {
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

impl<T: DeviceOps> Device<T> {
    /// The next state on the way from `cur` to `new` (the core's
    /// `vfio_mig_get_next_state`), or `EINVAL` for an unreachable target.
    pub(crate) fn mig_next_state(&self, cur: MigState, new: MigState) -> Result<MigState> {
        let mut next: bindings::vfio_device_mig_state = 0;
        // SAFETY: the device is alive; `next` is a valid out-pointer.
        to_result(unsafe { bindings::vfio_mig_get_next_state(self.raw(), cur.to_raw(), new.to_raw(), &mut next) })?;
        MigState::from_raw(next).ok_or(EINVAL)
    }
}

/// The file operations of a migration data file.
#[vtable]
pub(crate) trait MigrationFileOps: Sized + Send + Sync + 'static {
    /// The module whose code the file's operations are (`THIS_MODULE`): the
    /// VFS keeps it loaded while the file is open.
    const OWNER: &'static ThisModule;

    /// `read(2)` into `buf`. The file is a stream: the driver keeps its
    /// position itself, under the lock that guards its data, so that
    /// concurrent reads of one file each see and advance it atomically
    /// (the file's `f_pos` is never used).
    fn read(_this: &Self, _buf: &mut UserSliceWriter) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// `write(2)` from `buf`, at the driver's own position (see `read`).
    fn write(_this: &Self, _buf: &mut UserSliceReader) -> Result<usize> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// An ioctl on the file.
    fn ioctl(_this: &Self, _cmd: u32, _arg: usize) -> Result<isize> {
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

    pub(super) fn into_raw(self) -> *mut bindings::file {
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
    /// for a stream file. The driver keeps the position (see
    /// [`MigrationFileOps::read`]): `f_pos` is not touched, as two threads
    /// may read one file at once.
    unsafe extern "C" fn read(file: *mut bindings::file, buf: *mut ffi::c_char, len: usize, ppos: *mut bindings::loff_t) -> isize {
        if !ppos.is_null() {
            return ESPIPE.to_errno() as isize;
        }
        // SAFETY: see the function's safety section.
        let this = unsafe { Self::data(file) };
        let mut w = UserSlice::new(buf as usize, len).writer();
        match F::read(&this, &mut w) {
            Ok(n) => n as isize,
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
        let this = unsafe { Self::data(file) };
        let mut r = UserSlice::new(buf as usize, len).reader();
        match F::write(&this, &mut r) {
            Ok(n) => n as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by the VFS for an ioctl on one of our files.
    unsafe extern "C" fn ioctl(file: *mut bindings::file, cmd: ffi::c_uint, arg: ffi::c_ulong) -> ffi::c_long {
        // SAFETY: see the function's safety section.
        let this = unsafe { Self::data(file) };
        from_result(|| F::ioctl(&this, cmd, arg).map(|v| v as ffi::c_long))
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
