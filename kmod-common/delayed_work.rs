// SPDX-License-Identifier: GPL-2.0

//! Delayed work: a function that runs once, in process context on the
//! system workqueue, after a delay (a timer that may sleep and take
//! mutexes).
//!
//! C header: [`include/linux/workqueue.h`](srctree/include/linux/workqueue.h).
//! The 6.12 `kernel` crate has a workqueue abstraction but neither timers
//! nor `struct delayed_work`; this module is the small part of the latter
//! that a device model needs.
//!
//! A [`DelayedWork`] is a field of a reference-counted owner `T` (for
//! example a `vfio_device`), which implements [`DelayedWorkOwner`]. While
//! the work is queued (its timer running, or waiting on the workqueue) it
//! owns one reference to `T`, taken by [`DelayedWork::schedule`] and given
//! back after [`DelayedWorkOwner::run`] returns, or by the cancel that took
//! it off the queue. So `T`, and the work inside it, cannot be freed while
//! queued, and the callback always sees a live `T`; the last reference may
//! be dropped by the callback itself, which the workqueue allows.
//!
//! Teardown: the callback runs code of the module, so the owner must stop
//! queueing and call [`DelayedWork::cancel_sync`] before it can go away for
//! good (for a VFIO device: in `close_device`, which also runs before an
//! mdev instance is removed and before the module can be unloaded).
//! `cancel_sync` waits for a running callback and may sleep: never call it
//! with a lock held that [`DelayedWorkOwner::run`] takes. [`DelayedWork::schedule`]
//! and [`DelayedWork::cancel`] do not sleep and may be called under such a
//! lock.

use crate::bindings;
use core::marker::PhantomPinned;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::ffi;
use kernel::prelude::*;
use kernel::types::{ARef, AlwaysRefCounted, Opaque};

/// A reference-counted object with a [`DelayedWork`] inside.
///
/// The queue keeps a queued work alive through a reference to its owner, so
/// the work must lie in the owner's own memory. [`DelayedWork`] checks that
/// on every call and refuses, with a warning, a work that lies elsewhere;
/// no implementation can make a work outlive its owner.
pub(crate) trait DelayedWorkOwner: AlwaysRefCounted + Send + Sync + Sized + 'static {
    /// The work of `this`: a field of `this` (directly or through a `Deref`
    /// into `this`'s own allocation), the same one every time.
    fn delayed_work(this: &Self) -> &DelayedWork<Self>;

    /// Runs when the delay has passed, in process context (may sleep).
    fn run(this: &Self);
}

/// A `struct delayed_work` whose callback is [`DelayedWorkOwner::run`] of
/// `T`.
///
/// # Invariants
///
/// `dw` was initialised with [`Self::work_fn`] as its function. While it
/// is queued, `owner` points to the `T` it belongs to and the queue owns one
/// reference to that `T`.
#[repr(C)]
#[pin_data]
pub(crate) struct DelayedWork<T: DelayedWorkOwner> {
    /// First field: the C callback gets a pointer to its `work` member,
    /// which is the first member of `struct delayed_work`.
    #[pin]
    dw: Opaque<bindings::delayed_work>,
    owner: AtomicPtr<T>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the C work item may be queued, cancelled and run from any thread;
// `owner` is atomic and `T: Send + Sync`.
unsafe impl<T: DelayedWorkOwner> Send for DelayedWork<T> {}
// SAFETY: as above: every operation through `&DelayedWork` is thread-safe in C.
unsafe impl<T: DelayedWorkOwner> Sync for DelayedWork<T> {}

/// `delay_us` in jiffies for `mod_delayed_work`: rounded up
/// (`usecs_to_jiffies`), at least one (a zero delay would run the work at
/// once) and saturated at the largest delay `usecs_to_jiffies` takes.
fn delay_jiffies(delay_us: u64) -> ffi::c_ulong {
    let us = u32::try_from(delay_us).unwrap_or(u32::MAX);
    // SAFETY: a pure conversion with no preconditions (the non-constant
    // branch of the inline `usecs_to_jiffies`).
    unsafe { bindings::__usecs_to_jiffies(us) }.max(1)
}

impl<T: DelayedWorkOwner> DelayedWork<T> {
    /// An idle work item.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(DelayedWork {
            dw <- Opaque::ffi_init(|slot: *mut bindings::delayed_work| {
                // SAFETY: `slot` is valid for writes and pinned: the work is
                // initialised in place and never moves afterwards.
                unsafe { bindings::kmod_helper_init_delayed_work(slot, Some(Self::work_fn)) }
            }),
            owner: AtomicPtr::new(core::ptr::null_mut()),
            _pin: PhantomPinned,
        })
    }

    /// The work of `owner`, if it lies within `owner`'s own memory (which a
    /// queued run keeps alive); otherwise `None`, with a warning.
    fn of(owner: &T) -> Option<&Self> {
        let work = T::delayed_work(owner);
        let start = core::ptr::from_ref(owner) as usize;
        let at = core::ptr::from_ref(work) as usize;
        let inside = at
            .checked_sub(start)
            .and_then(|off| off.checked_add(core::mem::size_of::<Self>()))
            .is_some_and(|end| end <= core::mem::size_of_val(owner));
        if !inside {
            pr_warn!("delayed work outside its owner: not queued\n");
            return None;
        }
        Some(work)
    }

    /// Starts the work's timer to run [`DelayedWorkOwner::run`] of `owner`
    /// after `delay_us` microseconds (rounded up to whole jiffies, at least
    /// one), or moves the expiry of an already queued run there
    /// (`mod_delayed_work`). Does not sleep.
    pub(crate) fn schedule(owner: &T, delay_us: u64) {
        let Some(this) = Self::of(owner) else { return };
        let ptr = core::ptr::from_ref(owner).cast_mut();
        this.owner.store(ptr, Ordering::Relaxed);
        // The reference the queued work will own, taken before queueing so
        // the callback can never drop it first.
        owner.inc_ref();
        // SAFETY: `dw` was initialised in `new` and is pinned inside `owner`
        // (`of` checked), which the reference just taken keeps alive while
        // it is queued. The
        // store above is ordered before the callback by the workqueue's own
        // locking (queueing and running the work are release/acquire).
        let was_pending = unsafe {
            bindings::mod_delayed_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32,
                bindings::system_wq,
                this.dw.get(),
                delay_jiffies(delay_us),
            )
        };
        if was_pending {
            // The work was queued already and owns a reference; drop ours.
            // SAFETY: we took it above and it is not the last one: the
            // queued work holds another, and so does our caller's `owner`.
            unsafe { T::dec_ref(NonNull::from(owner)) };
        }
    }

    /// Takes a queued run off the queue without waiting for one that is
    /// already running. Does not sleep.
    pub(crate) fn cancel(owner: &T) {
        let Some(this) = Self::of(owner) else { return };
        // SAFETY: `dw` is initialised and `owner` alive (we borrow it).
        let was_pending = unsafe { bindings::cancel_delayed_work(this.dw.get()) };
        if was_pending {
            // SAFETY: the cancelled run owned one reference (type
            // invariant), now ours to drop; the caller still holds another.
            unsafe { T::dec_ref(NonNull::from(owner)) };
        }
    }

    /// Takes a queued run off the queue and waits until a running one has
    /// finished, even if it queues itself again meanwhile. May sleep: call
    /// it without any lock that [`DelayedWorkOwner::run`] takes.
    pub(crate) fn cancel_sync(owner: &T) {
        let Some(this) = Self::of(owner) else { return };
        // SAFETY: `dw` is initialised and `owner` alive (we borrow it).
        let was_pending = unsafe { bindings::cancel_delayed_work_sync(this.dw.get()) };
        if was_pending {
            // SAFETY: as in `cancel`.
            unsafe { T::dec_ref(NonNull::from(owner)) };
        }
    }

    /// The C callback.
    ///
    /// # Safety
    ///
    /// Called by the workqueue with the `work` member of the `dw` of a
    /// queued [`DelayedWork`].
    unsafe extern "C" fn work_fn(work: *mut bindings::work_struct) {
        // `work` is the first member of `struct delayed_work`, which is the
        // first field of the `#[repr(C)]` `DelayedWork<T>`.
        let this = work.cast::<Self>();
        // SAFETY: `this` is a live `DelayedWork<T>`: the queue owned a
        // reference to the owner it lives in until now.
        let owner = unsafe { (*this).owner.load(Ordering::Relaxed) };
        let Some(owner) = NonNull::new(owner) else { return };
        // SAFETY: the run that is starting owned one reference to `owner`
        // (type invariant); it becomes this `ARef`, dropped at the end.
        let owner = unsafe { ARef::from_raw(owner) };
        T::run(&owner);
    }
}
