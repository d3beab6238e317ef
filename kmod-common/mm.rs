// SPDX-License-Identifier: GPL-2.0

//! Another process's memory: long-term page pinning, locked-memory
//! accounting and user copies on behalf of a recorded `mm_struct`.
//!
//! C headers: [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`include/linux/sched/mm.h`](srctree/include/linux/sched/mm.h).
//!
//! A VFIO mapping records the mm and the task (thread-group leader) of the
//! process that made it. Pins and accounting later happen on that mm from
//! whatever context a device driver calls in: these types make that safe.

use crate::bindings;
use core::ptr::NonNull;
use kernel::ffi;
use kernel::prelude::*;

/// A grabbed `mm_struct` (`mmgrab`: kept allocated, not its address
/// space): pages can only be reached through [`MmGrab::users`] while the
/// process lives. Only an [`Owner`] makes one, and lends it out by reference.
///
/// # Invariants
///
/// `self.0` points to an `mm_struct` on which the `Owner` holding this value
/// holds one `mmgrab` reference.
pub(crate) struct MmGrab(NonNull<bindings::mm_struct>);

// SAFETY: the mm may be used from any thread; the reference is the Owner's.
unsafe impl Send for MmGrab {}
// SAFETY: shared access only reads the pointer.
unsafe impl Sync for MmGrab {}

impl MmGrab {
    /// Whether this is the calling process's mm.
    pub(crate) fn is_current(&self) -> bool {
        // SAFETY: reading `current->mm` has no precondition.
        self.0.as_ptr() == unsafe { bindings::kmod_helper_current_mm() }
    }

    /// Takes a user reference (`mmget_not_zero`), or `None` once the process
    /// has exited and its address space is gone.
    pub(crate) fn users(&self) -> Option<MmUsers<'_>> {
        // SAFETY: by the type invariant the mm is allocated.
        if unsafe { bindings::kmod_helper_mmget_not_zero(self.0.as_ptr()) } {
            // INVARIANT: mmget_not_zero succeeded.
            Some(MmUsers(self))
        } else {
            None
        }
    }
}

/// A live address space: `mmget` held until drop.
///
/// # Invariants
///
/// Holds one `mm_users` reference on `self.0`'s mm.
pub(crate) struct MmUsers<'a>(&'a MmGrab);

impl Drop for MmUsers<'_> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we hold one mm_users reference.
        unsafe { bindings::kmod_helper_mmput(self.0 .0.as_ptr()) };
    }
}

/// A page frame number as VFIO records pins.
pub(crate) type Pfn = u64;

/// Most pages [`MmUsers::pin_pages`] pins in one call (its page array is
/// on the stack).
pub(crate) const PIN_RUN_MAX: usize = 16;

impl MmUsers<'_> {
    fn mm(&self) -> *mut bindings::mm_struct {
        self.0 .0.as_ptr()
    }

    /// Pins the page at `vaddr` for long-term device access and returns its
    /// pfn ([`Self::pin_pages`] for one page).
    pub(crate) fn pin_page(&self, vaddr: u64, write: bool) -> Result<Pfn> {
        let mut page = [core::ptr::null_mut::<bindings::page>()];
        self.pin_pages(vaddr, &mut page, write)?;
        Ok(page_to_pfn(page[0]))
    }

    /// Pins the pages from `vaddr` into `out` as pfns with one
    /// [`Self::pin_pages`] call: at most `out.len()` and at most
    /// [`PIN_RUN_MAX`] pages. Returns how many it pinned from the start (`0`
    /// if not even the first page could be: the caller then retries that
    /// page alone with [`Self::pin_page`] for its errno).
    pub(crate) fn pin_pfn_run(&self, vaddr: u64, write: bool, out: &mut [Pfn]) -> usize {
        let mut pages = [core::ptr::null_mut::<bindings::page>(); PIN_RUN_MAX];
        let n = out.len().min(PIN_RUN_MAX);
        let got = self.pin_pages(vaddr, &mut pages[..n], write).unwrap_or(0);
        for (slot, page) in out.iter_mut().zip(pages.iter()).take(got) {
            *slot = page_to_pfn(*page);
        }
        got
    }

    /// `__account_locked_vm`: adds (`npage > 0`) or removes `npage` pages to
    /// the mm's `locked_vm`, checking `RLIMIT_MEMLOCK` of `task` on increase
    /// unless `bypass_rlimit` (the mapping task had `CAP_IPC_LOCK`).
    pub(crate) fn account_locked(&self, task: &TaskRef, npage: i64, bypass_rlimit: bool) -> Result {
        if npage == 0 {
            return Ok(());
        }
        // SAFETY: the address space is live; mmap_write_lock_killable pairs
        // with the unlock below only when it returns 0.
        let ret = unsafe { bindings::kmod_helper_mmap_write_lock_killable(self.mm()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        // SAFETY: the mmap lock is held for writing, as required; `task` is
        // a live task reference.
        let ret = unsafe {
            bindings::__account_locked_vm(
                self.mm(),
                npage.unsigned_abs() as ffi::c_ulong,
                npage > 0,
                task.0.as_ptr(),
                bypass_rlimit,
            )
        };
        // SAFETY: we took the lock above.
        unsafe { bindings::kmod_helper_mmap_write_unlock(self.mm()) };
        kernel::error::to_result(ret)
    }

    /// Runs `f` with this address space as the user address space, so that
    /// user copies reach it: directly when it is the caller's own mm, through
    /// `kthread_use_mm` from a kernel thread. A user thread of another
    /// process may not reach it (`None`), as in the C type1.
    pub(crate) fn with_user_access<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        // SAFETY: reading `current->mm` has no precondition.
        let kthread = unsafe { bindings::kmod_helper_current_is_kthread() };
        if kthread {
            // SAFETY: we are a kernel thread without an mm, and we hold a user
            // reference for the duration of the borrow.
            unsafe { bindings::kthread_use_mm(self.mm()) };
            let r = f();
            // SAFETY: paired with the kthread_use_mm above.
            unsafe { bindings::kthread_unuse_mm(self.mm()) };
            Some(r)
        } else if self.0.is_current() {
            Some(f())
        } else {
            None
        }
    }
}

/// Unpins a page pinned by [`MmUsers::pin_page`], marking it dirty if the
/// device could write it (`unpin_user_pages_dirty_lock`).
pub(crate) fn unpin_pfn(pfn: Pfn, dirty: bool) {
    // SAFETY: `pfn_to_page` only computes an address.
    let mut page = unsafe { bindings::kmod_helper_pfn_to_page(pfn as ffi::c_ulong) };
    // SAFETY: the caller pinned this pfn once and gives that pin back.
    unsafe { bindings::unpin_user_pages_dirty_lock(&mut page, 1, dirty) };
}

/// `pfn_valid(pfn) && !PageReserved`: a pin of this pfn is accounted as
/// locked memory (`!is_invalid_reserved_pfn` in the C type1).
pub(crate) fn pfn_is_accountable(pfn: Pfn) -> bool {
    // SAFETY: pure computations on a frame number.
    unsafe {
        if !bindings::kmod_helper_pfn_valid(pfn as ffi::c_ulong) {
            return false;
        }
        !bindings::kmod_helper_page_reserved(bindings::kmod_helper_pfn_to_page(pfn as ffi::c_ulong))
    }
}

/// The frame number of each page of `pages` and whether it is reserved
/// (`!pfn_is_accountable`), for a batch of pinned pages in one call.
/// Only the first `min(pages.len(), pfns.len(), reserved.len())` are done.
pub(crate) fn pages_to_pfns(pages: &[*mut bindings::page], pfns: &mut [Pfn], reserved: &mut [bool]) {
    let n = pages.len().min(pfns.len()).min(reserved.len());
    // `Pfn` is the C `unsigned long`, so `pfns` can be written in place.
    const _: () = assert!(core::mem::size_of::<Pfn>() == core::mem::size_of::<ffi::c_ulong>());
    // SAFETY: the three arrays have at least `n` elements; `pages` holds
    // pages pinned by the caller (valid `struct page` pointers); `pfns` and
    // `reserved` are written, `Pfn` has the layout of `unsigned long` and
    // `bool` that of C's `bool`.
    unsafe {
        bindings::kmod_helper_pages_to_pfns(
            pages.as_ptr(),
            pfns.as_mut_ptr().cast::<ffi::c_ulong>(),
            reserved.as_mut_ptr(),
            n as ffi::c_uint,
        )
    }
}

/// `pfn_valid(pfn)`.
pub(crate) fn pfn_valid(pfn: Pfn) -> bool {
    // SAFETY: a pure computation on a frame number.
    unsafe { bindings::kmod_helper_pfn_valid(pfn as ffi::c_ulong) }
}

/// The `struct page` of a pinned pfn, as `vfio_pin_pages` returns it.
pub(crate) fn pfn_to_page(pfn: Pfn) -> *mut bindings::page {
    // SAFETY: `pfn_to_page` only computes an address.
    unsafe { bindings::kmod_helper_pfn_to_page(pfn as ffi::c_ulong) }
}

/// A counted task (the mapping process's group leader). Only an [`Owner`]
/// makes one, and lends it out by reference.
///
/// # Invariants
///
/// The `Owner` holding this value holds one `get_task_struct` reference on
/// `self.0`.
pub(crate) struct TaskRef(NonNull<bindings::task_struct>);

// SAFETY: the task may be used from any thread; the reference is the Owner's.
unsafe impl Send for TaskRef {}
// SAFETY: shared access only reads the pointer.
unsafe impl Sync for TaskRef {}

/// What a VFIO mapping records of the process that made it: its mm and its
/// thread-group leader, each with a reference. Taken with one C call and
/// given back with one, where the two references alone take four (a
/// `MAP_DMA` and an `UNMAP_DMA` each make one of these).
///
/// # Invariants
///
/// This value holds an `mmgrab` reference on `mm` and a task reference on
/// `task`, given back by `Owner::drop`.
pub(crate) struct Owner {
    mm: MmGrab,
    task: TaskRef,
}

impl Owner {
    /// The calling process, and whether it has `CAP_IPC_LOCK` (its pins
    /// then bypass `RLIMIT_MEMLOCK`). `ENODEV` in a kernel thread.
    #[inline]
    pub(crate) fn current() -> Result<(Owner, bool)> {
        let mut mm = core::ptr::null_mut();
        let mut task = core::ptr::null_mut();
        let mut lock_cap = false;
        // SAFETY: the helper writes the three out-parameters, valid for
        // writes, and takes the references only when it returns true.
        if !unsafe { bindings::kmod_helper_owner_current(&mut mm, &mut task, &mut lock_cap) } {
            return Err(ENODEV);
        }
        let (Some(mm), Some(task)) = (NonNull::new(mm), NonNull::new(task)) else {
            // The helper never returns true with a NULL pointer.
            return Err(ENODEV);
        };
        // INVARIANT: the helper took an mmgrab reference on `mm` and a task
        // reference on `task`, which the `Owner` now holds.
        let owner = Owner { mm: MmGrab(mm), task: TaskRef(task) };
        Ok((owner, lock_cap))
    }

    /// The mm.
    #[inline]
    pub(crate) fn mm(&self) -> &MmGrab {
        &self.mm
    }

    /// The thread-group leader.
    #[inline]
    pub(crate) fn task(&self) -> &TaskRef {
        &self.task
    }
}

impl Drop for Owner {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: we hold both references (type invariant) and give each
        // back once; the fields have no drop of their own.
        unsafe { bindings::kmod_helper_owner_put(self.mm.0.as_ptr(), self.task.0.as_ptr()) };
    }
}

/// `access_ok(addr, size)`: the range lies in user address space.
pub(crate) fn access_ok(addr: u64, size: u64) -> bool {
    // SAFETY: `access_ok` only compares the range with the user address limit.
    unsafe { bindings::kmod_helper_access_ok(addr as ffi::c_ulong, size as ffi::c_ulong) }
}

// ---- The real-IOMMU path: pinning whole mappings in batches ----

impl MmUsers<'_> {
    /// Pins up to `pages.len()` consecutive pages from `vaddr` for long-term
    /// device access (`pin_user_pages_remote` with `FOLL_LONGTERM`, plus
    /// `FOLL_WRITE` when the device may write) and stores their `struct
    /// page`s; returns how many were pinned (at least one). Ranges without
    /// struct pages (`VM_PFNMAP`) are refused with `EFAULT`.
    pub(crate) fn pin_pages(&self, vaddr: u64, pages: &mut [*mut bindings::page], write: bool) -> Result<usize> {
        if pages.is_empty() {
            return Err(EINVAL);
        }
        let mut flags = bindings::FOLL_LONGTERM;
        if write {
            flags |= bindings::FOLL_WRITE;
        }
        let n = ffi::c_ulong::try_from(pages.len()).map_err(|_| EINVAL)?;
        // SAFETY: we hold a user reference, so the address space is live for
        // the lock/pin/unlock sequence; `pages` has room for `n` pointers.
        let ret = unsafe {
            bindings::kmod_helper_mmap_read_lock(self.mm());
            let r = bindings::pin_user_pages_remote(
                self.mm(),
                vaddr as ffi::c_ulong,
                n,
                flags as ffi::c_uint,
                pages.as_mut_ptr(),
                core::ptr::null_mut(),
            );
            bindings::kmod_helper_mmap_read_unlock(self.mm());
            r
        };
        match ret {
            r if r < 0 => Err(Error::from_errno(r as i32)),
            0 => Err(EFAULT),
            r => Ok((r as usize).min(pages.len())),
        }
    }
}

/// The pfn of a page pinned by [`MmUsers::pin_pages`].
pub(crate) fn page_to_pfn(page: *mut bindings::page) -> Pfn {
    // SAFETY: `page_to_pfn` only computes a frame number from the address.
    unsafe { bindings::kmod_helper_page_to_pfn(page) as Pfn }
}

/// Gives back one pin of each of `npage` pages from `pfn`, a physically
/// contiguous run of pages pinned by [`MmUsers::pin_pages`], marking them
/// dirty if the device could write them.
pub(crate) fn unpin_pfn_range(pfn: Pfn, npage: u64, dirty: bool) {
    if npage == 0 {
        return;
    }
    // SAFETY: the caller pinned each page of the run once and gives that pin back.
    unsafe { bindings::kmod_helper_unpin_pfn_range(pfn as ffi::c_ulong, npage as ffi::c_ulong, dirty) };
}

/// Yields the CPU if the scheduler wants it (long pin and map loops).
pub(crate) fn cond_resched() {
    // SAFETY: called from process context without spinlocks held.
    unsafe { bindings::kmod_helper_cond_resched() };
}
