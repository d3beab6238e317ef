// SPDX-License-Identifier: GPL-2.0

//! Eventfd contexts: the interrupt channel from a VFIO device to userspace.
//!
//! C header: [`include/linux/eventfd.h`](srctree/include/linux/eventfd.h).
//!
//! Userspace hands a device an eventfd file descriptor with
//! `VFIO_DEVICE_SET_IRQS`; the driver takes a reference to its context and
//! signals it for every interrupt. [`EventFd`] owns that reference.

use crate::bindings;
use core::ptr::NonNull;
use kernel::error::from_err_ptr;
use kernel::prelude::*;

/// A reference to an eventfd context (`struct eventfd_ctx`).
///
/// # Invariants
///
/// `self.0` points to an eventfd context on which this value owns one
/// reference, taken with `eventfd_ctx_fdget` and dropped with
/// `eventfd_ctx_put`.
pub(crate) struct EventFd(NonNull<bindings::eventfd_ctx>);

// SAFETY: an eventfd context is reference counted and internally locked: it
// may be signalled and released from any thread.
unsafe impl Send for EventFd {}
// SAFETY: `signal` is the only operation through `&EventFd`, and
// `eventfd_signal` may run concurrently on one context.
unsafe impl Sync for EventFd {}

impl EventFd {
    /// Takes a reference to the eventfd behind file descriptor `fd` of the
    /// calling process. Fails with `EBADF` for a closed or negative `fd` and
    /// with `EINVAL` when `fd` is not an eventfd.
    pub(crate) fn from_fd(fd: i32) -> Result<Self> {
        // SAFETY: `eventfd_ctx_fdget` accepts any integer and returns a new
        // reference or an `ERR_PTR`.
        let ctx = from_err_ptr(unsafe { bindings::eventfd_ctx_fdget(fd) })?;
        let ctx = NonNull::new(ctx).ok_or(EINVAL)?;
        // INVARIANT: `eventfd_ctx_fdget` succeeded, so we own one reference.
        Ok(EventFd(ctx))
    }

    /// Adds one to the eventfd's counter and wakes its waiters.
    pub(crate) fn signal(&self) {
        // SAFETY: by the type invariant the context is alive; signalling is
        // allowed in any context that may take a spinlock. A zero mask is
        // what the inline `eventfd_signal` passes.
        unsafe { bindings::eventfd_signal_mask(self.0.as_ptr(), 0) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own one reference; it is dropped
        // exactly once, here.
        unsafe { bindings::eventfd_ctx_put(self.0.as_ptr()) };
    }
}
