// SPDX-License-Identifier: GPL-2.0

//! A kernel `struct mutex` whose lock and unlock are direct C calls.
//!
//! C header: [`include/linux/mutex.h`](srctree/include/linux/mutex.h).
//!
//! The 6.12 `kernel::sync::Mutex` reaches `mutex_lock` through two
//! out-of-line functions (`MutexBackend::lock` in the kernel crate, then
//! the `rust_helper_mutex_lock` wrapper under lockdep) and `mutex_unlock`
//! through one. A container ioctl takes its lock once per call, on the
//! `MAP_DMA`/`UNMAP_DMA` and pin paths. This
//! backend is the same lock with the same lockdep class and name; its
//! methods are inlined into the caller, which then calls `mutex_lock`
//! (`mutex_lock_nested(lock, 0)` under `CONFIG_DEBUG_LOCK_ALLOC`, as the C
//! macro expands) and `mutex_unlock` directly.

use crate::bindings;
use kernel::ffi;
use kernel::sync::lock::{Backend, Lock};

/// A mutex protecting a `T`; `lock()` returns a guard as `kernel::sync::Mutex` does.
pub(crate) type Mutex<T> = Lock<T, DirectMutexBackend>;

/// The guard of a [`Mutex`].
#[allow(dead_code)] // The mtty module names it; type1 only uses `lock()`.
pub(crate) type MutexGuard<'a, T> = kernel::sync::lock::Guard<'a, T, DirectMutexBackend>;

/// Creates a [`Mutex`] initialiser with a lockdep class of its own and `$name`.
macro_rules! new_direct_mutex {
    ($inner:expr, $name:literal) => {
        $crate::mutex::Mutex::new($inner, kernel::c_str!($name), kernel::static_lock_class!())
    };
}
pub(crate) use new_direct_mutex;

/// The backend of [`Mutex`]: a `struct mutex`, locked with direct calls.
pub(crate) struct DirectMutexBackend;

// SAFETY: a `struct mutex` gives mutual exclusion between `mutex_lock` and
// `mutex_unlock`; `relock` is the default, which locks the same way.
unsafe impl Backend for DirectMutexBackend {
    type State = bindings::mutex;
    type GuardState = ();

    #[inline]
    unsafe fn init(ptr: *mut Self::State, name: *const ffi::c_char, key: *mut bindings::lock_class_key) {
        // SAFETY: the caller guarantees that `ptr` is valid for writes and
        // that `name` and `key` stay valid for reads for ever.
        unsafe { bindings::__mutex_init(ptr, name, key) }
    }

    #[inline]
    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: the caller guarantees that `ptr` is a mutex that `init`
        // initialised. Under lockdep `mutex_lock(l)` is the C macro
        // `mutex_lock_nested(l, 0)`.
        #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
        unsafe {
            bindings::mutex_lock_nested(ptr, 0)
        };
        // SAFETY: as above; without lockdep `mutex_lock` is a function.
        #[cfg(not(CONFIG_DEBUG_LOCK_ALLOC))]
        unsafe {
            bindings::mutex_lock(ptr)
        };
    }

    #[inline]
    unsafe fn unlock(ptr: *mut Self::State, _guard_state: &Self::GuardState) {
        // SAFETY: the caller guarantees that it owns the mutex at `ptr`.
        unsafe { bindings::mutex_unlock(ptr) };
    }
}
