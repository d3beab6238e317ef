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
use core::marker::PhantomData;
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

    /// Copies `buf.len()` bytes of this address space from `vaddr` into
    /// `buf` ([`Self::write_user`] the other way): `EPERM` once the process
    /// has exited, `EFAULT` if the calling thread may not reach the address
    /// space (another process; a kernel thread may) or not every byte was
    /// copied. One C call takes the user reference, switches to the mm from
    /// a kernel thread, copies and gives everything back, as the C type1's
    /// `vfio_dma_rw_chunk()` does inline.
    pub(crate) fn read_user(&self, vaddr: u64, buf: &mut [u8]) -> Result {
        // SAFETY: by the type invariant the mm is allocated; `buf` is valid
        // for `buf.len()` writes, which the helper makes at most.
        let ret = unsafe {
            bindings::kmod_helper_copy_mm_user(
                self.0.as_ptr(),
                vaddr as ffi::c_ulong,
                buf.as_mut_ptr().cast(),
                buf.len() as ffi::c_ulong,
                false,
            )
        };
        errno_result(ret)
    }

    /// Copies `buf` into this address space at `vaddr`, as [`Self::read_user`].
    pub(crate) fn write_user(&self, vaddr: u64, buf: &[u8]) -> Result {
        // SAFETY: by the type invariant the mm is allocated; `buf` is valid
        // for `buf.len()` reads, and the helper only reads it when `write`.
        let ret = unsafe {
            bindings::kmod_helper_copy_mm_user(
                self.0.as_ptr(),
                vaddr as ffi::c_ulong,
                buf.as_ptr().cast_mut().cast(),
                buf.len() as ffi::c_ulong,
                true,
            )
        };
        errno_result(ret)
    }

    /// `__account_locked_vm` under the mmap write lock (`mm_lock_acct` of
    /// the C type1), in one C call that also takes and drops a user
    /// reference (`ESRCH` once the process has exited): adds (`npage > 0`)
    /// or removes `npage` pages to the mm's `locked_vm`, checking
    /// `RLIMIT_MEMLOCK` of `task` on increase unless `bypass_rlimit` (the
    /// mapping task had `CAP_IPC_LOCK`).
    pub(crate) fn account_locked(&self, task: &TaskRef, npage: i64, bypass_rlimit: bool) -> Result {
        if npage == 0 {
            return Ok(());
        }
        // SAFETY: by the type invariant the mm is allocated; the helper
        // makes it live for the time or fails; `task` is a live task
        // reference.
        let ret = unsafe {
            bindings::kmod_helper_account_locked_vm(
                self.0.as_ptr(),
                npage.unsigned_abs() as ffi::c_ulong,
                npage > 0,
                task.0.as_ptr(),
                bypass_rlimit,
            )
        };
        errno_result(ret)
    }

    /// Makes the address space usable for as long as the guard lives:
    /// `None` once the process has exited and it is gone. The C type1 takes
    /// a user reference for that (`mmget_not_zero`, then `mmput`); here no
    /// reference is taken when this is the calling task's own mm, which
    /// cannot go while the task runs (the usual case: a device pins and
    /// copies on behalf of the process that drives it), so those two atomic
    /// operations and the `mmput` call are skipped.
    #[inline]
    pub(crate) fn users(&self) -> Option<MmUsers<'_>> {
        // SAFETY: by the type invariant the mm is allocated.
        match unsafe { bindings::kmod_helper_mm_enter(self.0.as_ptr()) } {
            // INVARIANT: a reference was taken, or the mm is the calling
            // task's; the guard cannot leave this thread.
            1 => Some(MmUsers { mm: self, counted: true, _thread: PhantomData }),
            0 => Some(MmUsers { mm: self, counted: false, _thread: PhantomData }),
            _ => None,
        }
    }
}

/// A live address space, kept live until drop.
///
/// # Invariants
///
/// If `counted`, holds one `mm_users` reference on `mm`'s mm; otherwise
/// the mm is the one of the task that made the guard, which keeps it live
/// while it runs. The guard stays on that task's thread (it is not `Send`).
pub(crate) struct MmUsers<'a> {
    mm: &'a MmGrab,
    counted: bool,
    _thread: PhantomData<*mut ()>,
}

impl Drop for MmUsers<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.counted {
            // SAFETY: by the type invariant we hold one mm_users reference.
            unsafe { bindings::kmod_helper_mmput(self.mm.0.as_ptr()) };
        }
    }
}

/// A C return value: 0, or a negative errno. Inlined, where
/// `kernel::error::to_result` is a call.
#[inline(always)]
fn errno_result(ret: ffi::c_int) -> Result {
    if ret == 0 {
        Ok(())
    } else {
        Err(Error::from_errno(ret))
    }
}

/// A page frame number as VFIO records pins.
pub(crate) type Pfn = u64;

/// Most pages [`MmUsers::pin_pfns`] pins in one call (the helper's page
/// array is on its stack).
pub(crate) const PIN_RUN_MAX: usize = bindings::KMOD_PIN_RUN_MAX as usize;

// `Pfn` is the C `unsigned long`, so arrays of pfns pass to C as they are.
const _: () = assert!(core::mem::size_of::<Pfn>() == core::mem::size_of::<ffi::c_ulong>());

impl MmUsers<'_> {
    fn mm(&self) -> *mut bindings::mm_struct {
        self.mm.0.as_ptr()
    }

    /// [`MmGrab::account_locked`], for a caller that holds the address space
    /// live anyway.
    #[inline]
    pub(crate) fn account_locked(&self, task: &TaskRef, npage: i64, bypass_rlimit: bool) -> Result {
        self.mm.account_locked(task, npage, bypass_rlimit)
    }

    /// Pins pages from `vaddr` for long-term device access (`FOLL_LONGTERM`,
    /// plus `FOLL_WRITE` when the device may write) and stores each one's
    /// pfn in `pfns` and whether it is reserved (not accounted, never
    /// unpinned: `is_invalid_reserved_pfn`) in `reserved`: at most
    /// `pfns.len()`, `reserved.len()` and [`PIN_RUN_MAX`] pages, with one C
    /// call (lock, pin, look up, unlock). Returns how many were pinned from
    /// the start, at least one; memory without struct pages is `EFAULT`.
    pub(crate) fn pin_pfns(&self, vaddr: u64, write: bool, pfns: &mut [Pfn], reserved: &mut [bool]) -> Result<usize> {
        let n = pfns.len().min(reserved.len()).min(PIN_RUN_MAX);
        if n == 0 {
            return Err(EINVAL);
        }
        let mut flags = bindings::FOLL_LONGTERM;
        if write {
            flags |= bindings::FOLL_WRITE;
        }
        // SAFETY: we hold a user reference on the mm (type invariant), so the
        // address space is live; `pfns` and `reserved` have room for `n`
        // entries, which the helper writes for each page it pinned.
        let ret = unsafe {
            bindings::kmod_helper_pin_pfns(
                self.mm(),
                vaddr as ffi::c_ulong,
                n as ffi::c_ulong,
                flags as ffi::c_uint,
                pfns.as_mut_ptr().cast::<ffi::c_ulong>(),
                reserved.as_mut_ptr(),
            )
        };
        match ret {
            r if r < 0 => Err(Error::from_errno(r as i32)),
            0 => Err(EFAULT),
            r => Ok((r as usize).min(n)),
        }
    }

    /// Pins the page at `vaddr` for long-term device access: its pfn, and
    /// whether it is reserved ([`Self::pin_pfns`] for one page).
    pub(crate) fn pin_page(&self, vaddr: u64, write: bool) -> Result<(Pfn, bool)> {
        let (mut pfn, mut reserved) = ([0], [false]);
        self.pin_pfns(vaddr, write, &mut pfn, &mut reserved)?;
        Ok((pfn[0], reserved[0]))
    }
}

/// `put_pfn` of the C type1: gives back a pin of `pfn` (marking the page
/// dirty if the device could write it) unless the pfn is reserved; true if
/// it did. One C call.
pub(crate) fn put_pfn(pfn: Pfn, dirty: bool) -> bool {
    // SAFETY: the caller pinned this pfn once and gives that pin back; a
    // reserved pfn is left alone, as it was never pinned for real.
    unsafe { bindings::kmod_helper_put_pfn(pfn as ffi::c_ulong, dirty) }
}

/// `pfn_valid(pfn) && !PageReserved`: a pin of this pfn is accounted as
/// locked memory (`!is_invalid_reserved_pfn` in the C type1).
pub(crate) fn pfn_is_accountable(pfn: Pfn) -> bool {
    // SAFETY: a pure computation on a frame number.
    !unsafe { bindings::kmod_helper_pfn_reserved(pfn as ffi::c_ulong) }
}

/// A run of physically contiguous pinned pages of one kind (reserved or
/// not), as [`pages_to_runs`] describes a batch.
pub(crate) type PfnRun = bindings::kmod_pfn_run;

/// Describes the pinned `pages` as runs of physically contiguous pages of
/// one kind, each at most `max_npage` long, in `runs` (it must have room
/// for one run per page), with one C call: the number of runs, and how
/// many pages are not reserved.
pub(crate) fn pages_to_runs(pages: &[*mut bindings::page], max_npage: u32, runs: &mut [PfnRun]) -> (usize, usize) {
    let n = pages.len().min(runs.len());
    let mut unreserved: ffi::c_uint = 0;
    // SAFETY: `pages` holds `n` pages pinned by the caller (valid `struct
    // page` pointers); `runs` has room for `n` runs, the most `n` pages make.
    let nruns = unsafe {
        bindings::kmod_helper_pages_to_runs(pages.as_ptr(), n as ffi::c_uint, max_npage, runs.as_mut_ptr(), &mut unreserved)
    };
    (nruns as usize, unreserved as usize)
}

/// The output of `vfio_pin_pages`: lends `pages` to `pin` as room for as
/// many pfns (a `struct page` pointer and a pfn have the same size), then
/// turns the pfns of the pages `pin` pinned, from the start, into their
/// `struct page` addresses in place, with one C call: no buffer of our own.
/// If `pin` fails, every entry is null, as C leaves them.
pub(crate) fn pin_into_pages(
    pages: &mut [*mut bindings::page],
    pin: impl FnOnce(&mut [Pfn]) -> Result<usize>,
) -> Result<usize> {
    const _: () = assert!(core::mem::size_of::<*mut bindings::page>() == core::mem::size_of::<Pfn>());
    const _: () = assert!(core::mem::align_of::<*mut bindings::page>() == core::mem::align_of::<Pfn>());
    let len = pages.len();
    // SAFETY: a `*mut page` and a `Pfn` have the same size and alignment
    // (checked above) and every bit pattern is a valid `Pfn`, so the memory
    // of `pages` is a valid `[Pfn]`; `pages` is not used while this borrow
    // of it lives (until `pin` returns).
    let pfns = unsafe { core::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<Pfn>(), len) };
    match pin(pfns) {
        Ok(n) => {
            let n = n.min(len);
            // SAFETY: the first `n` slots hold pfns of pinned pages;
            // `pfn_to_page` only computes addresses, written back in place.
            unsafe { bindings::kmod_helper_pfns_to_pages(pages.as_mut_ptr().cast::<ffi::c_ulong>(), n as ffi::c_uint) };
            Ok(n)
        }
        Err(e) => {
            pages.fill(core::ptr::null_mut());
            Err(e)
        }
    }
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
