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
//! The C helpers (`helpers/mm.c`) only wrap static inline functions; the
//! decisions and loops are here.
//!
//! The small functions here are `#[inline]`: they run per `vfio_pin_pages`
//! and `vfio_dma_rw` call, and per pinned page on the real-IOMMU path.
//!
//! # Pins are owned
//!
//! Only this module pins pages, and every pin it makes is handed out as a
//! value that owns it: a [`PinnedPage`] (one page, the mdev path), a
//! [`PagePins`] (up to [`PIN_RUN_MAX`] pages of one `vfio_pin_pages` run)
//! or a [`PinnedRun`] (physically contiguous pages, the real-IOMMU path).
//! None is `Copy` or `Clone`; each gives its pins back once, when dropped
//! or unpinned explicitly, marking the pages dirty if the device could
//! write them. A safe caller therefore cannot unpin a page it did not pin,
//! nor unpin a page twice. Reserved pages and device memory come in the
//! same types, marked reserved: they hold no pin to give back, as the C
//! type1 never gives one back (`is_invalid_reserved_pfn`). Pins that
//! IOMMU page tables hold are owned by `iommu_domain::DomainSet`, which
//! gives them back with [`unpin_accountable`]: the only way to unpin by
//! frame number outside these types, an `unsafe fn`.

use crate::bindings;
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::ffi;
use kernel::prelude::*;

#[cfg(not(CONFIG_SPARSEMEM_VMEMMAP))]
compile_error!("mm.rs converts between pages and frame numbers as SPARSEMEM_VMEMMAP lays them out");

/// The calling task's mm (`current->mm`); null in a kernel thread.
#[inline]
fn current_mm() -> *mut bindings::mm_struct {
    // SAFETY: `current` is the running task, valid while it runs; only the
    // task itself changes its `mm` (exec, exit, `kthread_use_mm`), so it
    // reads it without a lock.
    unsafe { (*bindings::get_current()).mm }
}

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

/// `_copy_to_user` (`write`) or `_copy_from_user` of `n` bytes between `buf`
/// and `vaddr` in the address space the calling thread uses: `EFAULT`
/// unless every byte was copied (both check `access_ok` themselves).
///
/// # Safety
///
/// `buf` is valid for `n` writes, or for `n` reads if `write`.
#[inline(always)]
unsafe fn copy_user(vaddr: u64, buf: *mut ffi::c_void, n: usize, write: bool) -> Result {
    let (user, n) = (vaddr as usize as *mut ffi::c_void, n as ffi::c_ulong);
    // SAFETY: `buf` per the function's contract; the user address is
    // checked by the callee.
    let left = unsafe {
        if write {
            bindings::_copy_to_user(user, buf, n)
        } else {
            bindings::_copy_from_user(buf, user, n)
        }
    };
    if left == 0 {
        Ok(())
    } else {
        Err(EFAULT)
    }
}

impl MmGrab {
    fn as_ptr(&self) -> *mut bindings::mm_struct {
        self.0.as_ptr()
    }

    /// Whether this is the calling process's mm.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        self.as_ptr() == current_mm()
    }

    /// Copies `buf.len()` bytes of this address space from `vaddr` into
    /// `buf` ([`Self::write_user`] the other way): `EPERM` once the process
    /// has exited, `EFAULT` if the calling thread may not reach the address
    /// space (another process; a kernel thread may) or not every byte was
    /// copied, as the C type1's `vfio_dma_rw_chunk()` does.
    #[inline]
    pub(crate) fn read_user(&self, vaddr: u64, buf: &mut [u8]) -> Result {
        // SAFETY: `buf` is valid for `buf.len()` writes.
        unsafe { self.copy(vaddr, buf.as_mut_ptr().cast(), buf.len(), false) }
    }

    /// Copies `buf` into this address space at `vaddr`, as [`Self::read_user`].
    #[inline]
    pub(crate) fn write_user(&self, vaddr: u64, buf: &[u8]) -> Result {
        // SAFETY: `buf` is valid for `buf.len()` reads, and only read with `write`.
        unsafe { self.copy(vaddr, buf.as_ptr().cast_mut().cast(), buf.len(), true) }
    }

    /// The copy of [`Self::read_user`] and [`Self::write_user`].
    ///
    /// # Safety
    ///
    /// `buf` is valid for `n` writes, or for `n` reads if `write`.
    #[inline(always)]
    unsafe fn copy(&self, vaddr: u64, buf: *mut ffi::c_void, n: usize, write: bool) -> Result {
        // The calling task's own mm is live while it runs: no reference.
        if self.is_current() {
            // SAFETY: `buf` per the function's contract.
            return unsafe { copy_user(vaddr, buf, n, write) };
        }
        // SAFETY: as above.
        unsafe { self.copy_other(vaddr, buf, n, write) }
    }

    /// [`Self::copy`] for an mm that is not the caller's: only a kernel
    /// thread may reach it, by taking it over (`kthread_use_mm`). Out of
    /// line: the usual copy, to the caller's own mm, needs none of it.
    ///
    /// # Safety
    ///
    /// As for [`Self::copy`].
    #[inline(never)]
    unsafe fn copy_other(&self, vaddr: u64, buf: *mut ffi::c_void, n: usize, write: bool) -> Result {
        let Some(users) = self.users() else { return Err(EPERM) };
        if !current_mm().is_null() {
            return Err(EFAULT);
        }
        // SAFETY: a kernel thread without an mm takes over a live one (we
        // hold a user reference) for the copy, and gives it back; `buf` per
        // the function's contract.
        unsafe {
            bindings::kthread_use_mm(users.mm());
            let r = copy_user(vaddr, buf, n, write);
            bindings::kthread_unuse_mm(users.mm());
            r
        }
    }

    /// `__account_locked_vm` under the mmap write lock (`mm_lock_acct` of
    /// the C type1), with a user reference for the time (`ESRCH` once the
    /// process has exited): adds (`npage > 0`) or removes `npage` pages to
    /// the mm's `locked_vm`, checking `RLIMIT_MEMLOCK` of `task` on increase
    /// unless `bypass_rlimit` (the mapping task had `CAP_IPC_LOCK`).
    pub(crate) fn account_locked(&self, task: &TaskRef, npage: i64, bypass_rlimit: bool) -> Result {
        if npage == 0 {
            return Ok(());
        }
        self.users().ok_or(ESRCH)?.account_locked(task, npage, bypass_rlimit)
    }

    /// Makes the address space usable for as long as the guard lives:
    /// `None` once the process has exited and it is gone. The C type1 takes
    /// a user reference for that (`mmget_not_zero`, then `mmput`); here no
    /// reference is taken when this is the calling task's own mm, which
    /// cannot go while the task runs (the usual case: a device pins and
    /// copies on behalf of the process that drives it).
    #[inline]
    pub(crate) fn users(&self) -> Option<MmUsers<'_>> {
        if self.is_current() {
            // INVARIANT: the calling task's mm; the guard cannot leave its thread.
            return Some(MmUsers { mm: self, counted: false, _thread: PhantomData });
        }
        // SAFETY: by the type invariant the mm is allocated.
        if unsafe { bindings::kmod_helper_mmget_not_zero(self.as_ptr()) } {
            // INVARIANT: a user reference was taken.
            Some(MmUsers { mm: self, counted: true, _thread: PhantomData })
        } else {
            None
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
            unsafe { bindings::mmput(self.mm()) };
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

/// Most pages [`MmUsers::pin_pages`] pins in one call (its page array is in
/// the returned [`PagePins`], on the stack).
pub(crate) const PIN_RUN_MAX: usize = 16;

/// `page_to_pfn` and `pfn_to_page` of `SPARSEMEM_VMEMMAP`: offsets from the
/// `struct page` of pfn 0 (`vmemmap`), which is fixed once the kernel has
/// booted. Computed here rather than by a C call per page: the real-IOMMU
/// path converts every page it pins.
#[derive(Clone, Copy)]
struct PageFrames(usize);

/// The address of `vmemmap`, read once.
static VMEMMAP: AtomicUsize = AtomicUsize::new(0);

impl PageFrames {
    #[inline]
    fn get() -> Self {
        let base = VMEMMAP.load(Ordering::Relaxed);
        if base != 0 {
            return PageFrames(base);
        }
        // SAFETY: reads a variable the kernel set before modules load.
        let base = unsafe { bindings::kmod_helper_vmemmap() } as usize;
        VMEMMAP.store(base, Ordering::Relaxed);
        PageFrames(base)
    }

    #[inline(always)]
    fn pfn(self, page: *mut bindings::page) -> Pfn {
        ((page as usize).wrapping_sub(self.0) / core::mem::size_of::<bindings::page>()) as Pfn
    }

    #[inline(always)]
    fn page(self, pfn: Pfn) -> *mut bindings::page {
        self.0.wrapping_add(pfn as usize * core::mem::size_of::<bindings::page>()) as *mut bindings::page
    }
}

/// The flags word of `page`, read once (as `test_bit` does). With
/// `PG_reserved` set, a pin of the page is neither accounted nor given back
/// (`is_invalid_reserved_pfn` of the C type1, for a valid pfn); `PG_head`
/// marks the first page of a large folio.
///
/// # Safety
///
/// `page` is a `struct page` of the memory map (of a valid pfn).
#[inline(always)]
unsafe fn page_flags(page: *mut bindings::page) -> usize {
    // SAFETY: the page is valid (the caller).
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*page).flags)) as usize }
}

/// `PG_reserved` in a flags word ([`page_flags`]).
const PG_RESERVED: usize = 1 << bindings::pageflags_PG_reserved;
/// `PG_head` in a flags word ([`page_flags`]).
const PG_HEAD: usize = 1 << bindings::pageflags_PG_head;

/// `PageReserved(page)`: see [`page_flags`].
///
/// # Safety
///
/// `page` is a `struct page` of the memory map (of a valid pfn).
#[inline(always)]
unsafe fn page_reserved(page: *mut bindings::page) -> bool {
    // SAFETY: the caller's contract is `page_flags`'.
    let flags = unsafe { page_flags(page) };
    flags & PG_RESERVED != 0
}

impl MmUsers<'_> {
    fn mm(&self) -> *mut bindings::mm_struct {
        self.mm.as_ptr()
    }

    /// [`MmGrab::account_locked`], for a caller that holds the address space
    /// live anyway.
    pub(crate) fn account_locked(&self, task: &TaskRef, npage: i64, bypass_rlimit: bool) -> Result {
        if npage == 0 {
            return Ok(());
        }
        // SAFETY: the address space is live (type invariant).
        errno_result(unsafe { bindings::kmod_helper_mmap_write_lock_killable(self.mm()) })?;
        // SAFETY: we hold the mmap write lock of a live mm; `task` is a live
        // task reference.
        let ret = unsafe {
            let r = bindings::__account_locked_vm(
                self.mm(),
                npage.unsigned_abs() as ffi::c_ulong,
                npage > 0,
                task.0.as_ptr(),
                bypass_rlimit,
            );
            bindings::kmod_helper_mmap_write_unlock(self.mm());
            r
        };
        errno_result(ret)
    }

    /// Pins up to `npage` (at most `N` and [`PIN_RUN_MAX`]) pages from
    /// `vaddr` for long-term device access (`FOLL_LONGTERM`, plus
    /// `FOLL_WRITE` when the device may write) under one mmap lock, keeping
    /// their pages in `room`: at least one page, from the start. Device
    /// memory (`VM_IO`/`VM_PFNMAP`) gives one page, reserved and not
    /// pinned, whose pfn may have no `struct page` (check [`pfn_valid`]),
    /// as the C `vaddr_get_pfns()` gives it. Inlined into the pin path.
    #[inline(always)]
    pub(crate) fn pin_pages<'r, const N: usize>(
        &self,
        vaddr: u64,
        write: bool,
        npage: usize,
        room: &'r mut PinRoom<N>,
    ) -> Result<PagePins<'r>> {
        let n = npage.min(N).min(PIN_RUN_MAX);
        // INVARIANT: nothing is held yet (`len` 0). Only the slots used are
        // initialised: a one-page pin writes one.
        let mut pins = PagePins { pages: &mut room.0, reserved: 0, write, next: 0, len: 0 };
        for slot in pins.pages.iter_mut().take(n) {
            slot.write(core::ptr::null_mut());
        }
        // SAFETY: the first `n` slots (`n <= N`) are initialised just above,
        // and a `MaybeUninit<T>` has the layout of `T`.
        let pages = unsafe { core::slice::from_raw_parts_mut(pins.pages.as_mut_ptr().cast::<*mut bindings::page>(), n) };
        match self.pin_or_follow(vaddr, pages, write, 1)? {
            Found::Pages(got) => {
                let got = got.min(n);
                for (i, page) in pages[..got].iter().enumerate() {
                    // SAFETY: a pinned page is a page of the memory map.
                    if unsafe { page_reserved(*page) } {
                        pins.reserved |= 1 << i;
                    }
                }
                // INVARIANT: `pin_or_follow` pinned the first `got` pages,
                // each once; their reserved ones are marked.
                pins.len = got as u8;
            }
            Found::Device(run) => {
                // INVARIANT: device memory, not pinned: marked reserved. The
                // page address is only turned back into its pfn; slot 0
                // exists (`pin_or_follow` refuses an empty array).
                let page = PageFrames::get().page(run.pfn);
                let Some(slot) = pins.pages.first_mut() else { return Err(EINVAL) };
                slot.write(page);
                pins.reserved = 1;
                pins.len = 1;
            }
        }
        Ok(pins)
    }

    /// Pins up to `pages.len()` consecutive pages from `vaddr` for long-term
    /// device access (`pin_user_pages_remote` with `FOLL_LONGTERM`, plus
    /// `FOLL_WRITE` when the device may write) under the mmap read lock, and
    /// stores their `struct page`s: [`Found::Pages`] with how many (at least
    /// one). Where nothing can be pinned and `vaddr` lies in device memory
    /// (a `VM_IO`/`VM_PFNMAP` VMA: BARs mapped by another driver), looks its
    /// pfns up instead, under the same lock, as the C `vaddr_get_pfns()`
    /// does: [`Found::Device`], at most `max_device` pages.
    fn pin_or_follow(&self, vaddr: u64, pages: &mut [*mut bindings::page], write: bool, max_device: u64) -> Result<Found> {
        if pages.is_empty() || max_device == 0 {
            return Err(EINVAL);
        }
        let mut flags = bindings::FOLL_LONGTERM;
        if write {
            flags |= bindings::FOLL_WRITE;
        }
        let n = ffi::c_ulong::try_from(pages.len()).map_err(|_| EINVAL)?;
        // SAFETY: the address space is live (type invariant).
        unsafe { bindings::kmod_helper_mmap_read_lock(self.mm()) };
        // SAFETY: the address space is live and its mmap lock held; `pages`
        // has room for `n` pointers.
        let r = unsafe {
            bindings::pin_user_pages_remote(
                self.mm(),
                vaddr as ffi::c_ulong,
                n,
                flags as ffi::c_uint,
                pages.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        };
        let found = if r > 0 {
            Ok(Found::Pages((r as usize).min(pages.len())))
        } else {
            // Nothing pinned: 0 counts as `EFAULT` (the C type1 would
            // return 0 and retry the same page forever).
            let pin_err = if r < 0 { Error::from_errno(r as i32) } else { EFAULT };
            // SAFETY: the mmap read lock is held.
            match unsafe { self.follow_device(vaddr, write, max_device) } {
                Ok(Some(run)) => Ok(Found::Device(run)),
                Ok(None) => Err(pin_err),
                Err(e) => Err(e),
            }
        };
        // SAFETY: taken above (and held again if the fault handler dropped it).
        unsafe { bindings::kmod_helper_mmap_read_unlock(self.mm()) };
        found
    }

    /// `follow_fault_pfn()` and the device branch of `vaddr_get_pfns()` of
    /// the C type1: the pfns that the `VM_IO`/`VM_PFNMAP` VMA at `vaddr`
    /// maps there, faulted in first if not yet mapped (a BAR mmap that was
    /// never touched). `None` if `vaddr` is in no such VMA; `EFAULT` for a
    /// `write` lookup of a read-only mapping, and for pfns of ordinary RAM
    /// (pages with a refcount, which only pinning may hand out).
    ///
    /// Where C looks up one page per call, this returns the whole run that
    /// one page-table entry maps from `vaddr` (up to `max_npage` pages and
    /// the end of the VMA): a PMD or PUD leaf maps 512 or 262144
    /// physically contiguous pages, and 6.12's `vfio-pci` maps BARs with
    /// such leaves where alignment allows. The leaf's level is read by
    /// `kmod_helper_pfnmap_leaf_shift()` while `follow_pfnmap_start()`
    /// holds the leaf's lock, and used only if that leaf's pfn agrees with
    /// the looked-up one; otherwise (a 4 KiB entry, a race) the run is one
    /// page. So a VMA that mixes levels or has holes is walked entry by
    /// entry, each hole faulted in on its own.
    ///
    /// # Safety
    ///
    /// The caller holds this mm's mmap read lock; it may be dropped and
    /// retaken while faulting, so no VMA of the caller's stays valid.
    unsafe fn follow_device(&self, vaddr: u64, write: bool, max_npage: u64) -> Result<Option<PfnRun>> {
        let mm = self.mm();
        let addr = vaddr as ffi::c_ulong;
        loop {
            // SAFETY: the mmap lock is held (the caller).
            let vma = unsafe { bindings::kmod_helper_vma_lookup(mm, addr) };
            if vma.is_null() {
                return Ok(None);
            }
            // SAFETY: a VMA of the locked mm stays valid while the lock is
            // held; `vm_flags` is the union's readable member.
            let (vm_flags, vm_end) =
                unsafe { ((*vma).__bindgen_anon_2.vm_flags, (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_end) };
            if vm_flags & (bindings::VM_IO | bindings::VM_PFNMAP) as ffi::c_ulong == 0 {
                return Ok(None);
            }
            let mut args = bindings::follow_pfnmap_args { vma, address: addr, ..Default::default() };
            // SAFETY: `args` names a VMA of the locked mm and an address in it.
            if unsafe { bindings::follow_pfnmap_start(&mut args) } != 0 {
                let mut flags = bindings::fault_flag_FAULT_FLAG_REMOTE;
                if write {
                    flags |= bindings::fault_flag_FAULT_FLAG_WRITE;
                }
                let mut unlocked = false;
                // SAFETY: the mm is live and its mmap lock held; the fault
                // handler may drop and retake it, and says so in `unlocked`.
                let r = unsafe { bindings::fixup_user_fault(mm, addr, flags as ffi::c_uint, &mut unlocked) };
                if unlocked {
                    // The VMA may have changed while the lock was dropped.
                    continue;
                }
                errno_result(r)?;
                // SAFETY: as for the first call.
                errno_result(unsafe { bindings::follow_pfnmap_start(&mut args) })?;
            }
            let (pfn, writable) = (args.pfn as Pfn, args.writable);
            let mut leaf_pfn: ffi::c_ulong = 0;
            // SAFETY: the mm is live and locked; `follow_pfnmap_start` holds
            // the lock of the leaf entry this reads, until the end call.
            let shift = unsafe { bindings::kmod_helper_pfnmap_leaf_shift(mm, addr, &mut leaf_pfn) };
            // SAFETY: ends the successful start above.
            unsafe { bindings::follow_pfnmap_end(&mut args) };
            if write && !writable {
                return Err(EFAULT);
            }
            let mut npage = 1u64;
            if shift > bindings::PAGE_SHIFT && shift < u64::BITS {
                let in_leaf = vaddr & ((1u64 << shift) - 1);
                if leaf_pfn as Pfn + (in_leaf >> bindings::PAGE_SHIFT) == pfn {
                    npage = ((1u64 << shift) - in_leaf) >> bindings::PAGE_SHIFT;
                }
            }
            let to_vma_end = (vm_end as u64).saturating_sub(vaddr) >> bindings::PAGE_SHIFT;
            npage = npage.min(max_npage).min(to_vma_end).max(1);
            return device_run(pfn, npage).map(Some);
        }
    }
}

/// The part of `npage` pages from `pfn`, mapped by one device-memory
/// entry, that the C type1 maps without pinning (`is_invalid_reserved_pfn`):
/// pfns without a `struct page`, or one reserved page. A pfn of ordinary
/// RAM is `EFAULT`, as in C.
fn device_run(pfn: Pfn, npage: u64) -> Result<PfnRun> {
    if pfn_valid(pfn) {
        if pfn_is_accountable(pfn) {
            return Err(EFAULT);
        }
        return Ok(PfnRun { pfn, npage: 1, reserved: true });
    }
    // Validity is per memory subsection: check where each one starts, and
    // end the run before the first with a memory map.
    const SUBSECTION_PAGES: u64 = 1 << bindings::PFN_SUBSECTION_SHIFT;
    let end = pfn + npage;
    let mut at = (pfn | (SUBSECTION_PAGES - 1)) + 1;
    while at < end {
        if pfn_valid(at) {
            return Ok(PfnRun { pfn, npage: at - pfn, reserved: true });
        }
        at += SUBSECTION_PAGES;
    }
    Ok(PfnRun { pfn, npage, reserved: true })
}

/// What [`MmUsers::pin_or_follow`] found at an address.
enum Found {
    /// This many pages pinned, their `struct page`s in the caller's array.
    Pages(usize),
    /// Device memory: a physically contiguous run, reserved, not pinned.
    Device(PfnRun),
}

/// `pfn_valid()`: the pfn has a `struct page` in the memory map.
#[inline]
pub(crate) fn pfn_valid(pfn: Pfn) -> bool {
    // SAFETY: `pfn_valid` only looks the pfn up in the memory map.
    unsafe { bindings::kmod_helper_pfn_valid(pfn as ffi::c_ulong) }
}

/// `pfn_valid(pfn) && !PageReserved`: a pin of this pfn is accounted as
/// locked memory (`!is_invalid_reserved_pfn` in the C type1).
#[inline]
pub(crate) fn pfn_is_accountable(pfn: Pfn) -> bool {
    if !pfn_valid(pfn) {
        return false;
    }
    // SAFETY: the pfn is valid, so its `struct page` is in the memory map.
    !unsafe { page_reserved(PageFrames::get().page(pfn)) }
}

/// Gives back one pin of each of `npage` pages from `pfn` (a physically
/// contiguous run with `struct page`s), marking them dirty if `dirty`.
///
/// # Safety
///
/// The caller owns one long-term pin of each of these pages and gives it up.
#[inline]
unsafe fn unpin_range(pfn: Pfn, npage: u64, dirty: bool) {
    // SAFETY: the pages have `struct page`s, pinned once each by the caller,
    // who gives those pins back (the function's contract).
    unsafe {
        bindings::unpin_user_page_range_dirty_lock(PageFrames::get().page(pfn), npage as ffi::c_ulong, dirty)
    };
}

/// Gives back the pins of the accountable pages ([`pfn_is_accountable`])
/// among `npage` physically contiguous pages from `pfn`, marking them dirty
/// if `dirty`; returns how many. Reserved pages and pfns without a `struct
/// page` are left alone, as the C type1's `put_pfn` leaves them. Maximal
/// accountable sub-runs are unpinned with one call each.
///
/// # Safety
///
/// The caller owns one long-term pin of each accountable page of the range
/// (pins of a [`PinnedRun`] it took apart: IOMMU page tables record them)
/// and gives it up.
pub(crate) unsafe fn unpin_accountable(pfn: Pfn, npage: u64, dirty: bool) -> u64 {
    let mut unpinned = 0;
    let mut start = 0u64;
    while start < npage {
        if !pfn_is_accountable(pfn + start) {
            start += 1;
            continue;
        }
        let mut end = start + 1;
        while end < npage && pfn_is_accountable(pfn + end) {
            end += 1;
        }
        // SAFETY: accountable pages have `struct page`s; the caller owns
        // their pins (the function's contract).
        unsafe { unpin_range(pfn + start, end - start, dirty) };
        unpinned += end - start;
        start = end;
    }
    unpinned
}

/// One page pinned for long-term device access (a page a device pinned
/// with `vfio_pin_pages`): gives its pin back when dropped or unpinned.
/// Only [`PagePins`] makes one.
///
/// One word: the pfn (below 2^52: a physical address has 64 bits) with two
/// flags in its top bits, so that a pinned page's tree node is as large as
/// with a bare pfn.
///
/// # Invariants
///
/// Unless [`Self::PAGE_RESERVED`] is set, `self.0` holds one long-term pin
/// of the page of `self.pfn()`, which has a `struct page`. A reserved one
/// holds no pin that is given back (a reserved page, or device memory,
/// which is not pinned). [`Self::PAGE_WRITE`]: the device may write it.
pub(crate) struct PinnedPage(u64);

impl PinnedPage {
    const PAGE_RESERVED: u64 = 1 << 63;
    const PAGE_WRITE: u64 = 1 << 62;

    /// The page's frame number.
    #[inline(always)]
    pub(crate) fn pfn(&self) -> Pfn {
        self.0 & !(Self::PAGE_RESERVED | Self::PAGE_WRITE)
    }

    /// Reserved page or device memory: not accounted, nothing to give back.
    #[inline(always)]
    pub(crate) fn is_reserved(&self) -> bool {
        self.0 & Self::PAGE_RESERVED != 0
    }

    /// Gives the pin back (the C type1's `put_pfn`); true if there was one
    /// (the page is accountable), false for a reserved page.
    #[inline]
    pub(crate) fn unpin(self) -> bool {
        let page = core::mem::ManuallyDrop::new(self);
        page.release()
    }

    /// Gives the pin back; the caller then forgets `self`.
    #[inline(always)]
    fn release(&self) -> bool {
        if self.is_reserved() {
            return false;
        }
        let mut page = PageFrames::get().page(self.pfn());
        // SAFETY: not reserved, so we hold one pin of this page, which has a
        // `struct page` (type invariant); both callers forget `self` after.
        unsafe { bindings::unpin_user_pages_dirty_lock(&mut page, 1, self.0 & Self::PAGE_WRITE != 0) };
        true
    }
}

impl Drop for PinnedPage {
    #[inline]
    fn drop(&mut self) {
        self.release();
    }
}

/// Room for the pages of one [`PagePins`], kept by its caller (on the
/// stack): it holds no pin itself, and only [`MmUsers::pin_pages`] reads or
/// writes it. A [`PagePins`] borrows it, so that it is small to move.
pub(crate) struct PinRoom<const N: usize>([MaybeUninit<*mut bindings::page>; N]);

impl<const N: usize> Default for PinRoom<N> {
    #[inline(always)]
    fn default() -> Self {
        PinRoom([MaybeUninit::uninit(); N])
    }
}

/// Up to [`PIN_RUN_MAX`] pages pinned by one [`MmUsers::pin_pages`] call,
/// handed out in order as [`PinnedPage`]s; the pins not taken out are
/// given back on drop.
///
/// # Invariants
///
/// `len` is at most `pages.len()` and [`PIN_RUN_MAX`]. For each `i` in
/// `next..len`, `pages[i]` is initialised, with the `struct page` address
/// of the pfn of one page that this value holds a long-term pin of, unless
/// bit `i` of `reserved` is set: then it holds none (a reserved page, or
/// device memory whose "page" may only be turned back into its pfn).
/// `write`: the device may write the pages.
pub(crate) struct PagePins<'r> {
    pages: &'r mut [MaybeUninit<*mut bindings::page>],
    reserved: u16,
    write: bool,
    next: u8,
    len: u8,
}

const _: () = assert!(PIN_RUN_MAX <= u16::BITS as usize);

impl PagePins<'_> {
    /// How many pages are left to take out.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        usize::from(self.len - self.next)
    }

    /// How many of the pages left are accountable (not reserved).
    #[inline]
    pub(crate) fn accountable(&self) -> usize {
        let left = ((1u32 << self.len) - 1) & !((1u32 << self.next) - 1);
        self.len() - (u32::from(self.reserved) & left).count_ones() as usize
    }
}

impl Iterator for PagePins<'_> {
    type Item = PinnedPage;

    #[inline]
    fn next(&mut self) -> Option<PinnedPage> {
        if self.next >= self.len {
            return None;
        }
        let i = usize::from(self.next);
        // SAFETY: `next < len`: slot `i` exists and is initialised (type
        // invariant).
        let page = unsafe { self.pages.get_unchecked(i).assume_init() };
        let mut bits = PageFrames::get().pfn(page);
        if self.reserved & (1 << i) != 0 {
            bits |= PinnedPage::PAGE_RESERVED;
        }
        if self.write {
            bits |= PinnedPage::PAGE_WRITE;
        }
        // INVARIANT: the pin of page `i` moves to the `PinnedPage` (which
        // has the same pfn and flags), and leaves `next..len`.
        self.next += 1;
        Some(PinnedPage(bits))
    }
}

impl Drop for PagePins<'_> {
    #[inline]
    fn drop(&mut self) {
        // Usually every page was taken out.
        if self.next < self.len {
            self.give_back_rest();
        }
    }
}

impl PagePins<'_> {
    /// Gives back the pins not taken out.
    #[cold]
    fn give_back_rest(&mut self) {
        for page in self.by_ref() {
            drop(page);
        }
    }
}

/// The output of `vfio_pin_pages`: lends `pages` to `pin` as room for as
/// many pfns (a `struct page` pointer and a pfn have the same size), then
/// turns the pfns of the pages `pin` pinned, from the start, into their
/// `struct page` addresses in place: no buffer of our own. If `pin` fails,
/// every entry is null, as C leaves them.
#[inline]
pub(crate) fn pin_into_pages(
    pages: &mut [*mut bindings::page],
    pin: impl FnOnce(&mut [Pfn]) -> Result<usize>,
) -> Result<usize> {
    const _: () = assert!(core::mem::size_of::<*mut bindings::page>() == core::mem::size_of::<Pfn>());
    const _: () = assert!(core::mem::align_of::<*mut bindings::page>() == core::mem::align_of::<Pfn>());
    let len = pages.len();
    let base = pages.as_mut_ptr();
    // SAFETY: a `*mut page` and a `Pfn` have the same size and alignment
    // (checked above) and every bit pattern is a valid `Pfn`, so the memory
    // of `pages` is a valid `[Pfn]`; `pages` is not used while this borrow
    // of it lives (until `pin` returns).
    let pfns = unsafe { core::slice::from_raw_parts_mut(base.cast::<Pfn>(), len) };
    match pin(pfns) {
        Ok(n) => {
            let n = n.min(len);
            let frames = PageFrames::get();
            for i in 0..n {
                // SAFETY: `i < len`: slot `i` is in `pages` and holds the pfn
                // of a pinned page, replaced by its `struct page` address.
                unsafe {
                    let pfn = base.cast::<Pfn>().add(i).read();
                    base.add(i).write(frames.page(pfn));
                }
            }
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
/// thread-group leader, each with a reference, taken together and given
/// back together (a `MAP_DMA` and an `UNMAP_DMA` each make one of these).
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
        // SAFETY: `current` is the running task, valid while it runs; it
        // reads its own `mm` and `group_leader` (see `current_mm`).
        let (mm, task) = unsafe {
            let cur = bindings::get_current();
            ((*cur).mm, (*cur).group_leader)
        };
        let (Some(mm), Some(task)) = (NonNull::new(mm), NonNull::new(task)) else {
            // A kernel thread has no mm.
            return Err(ENODEV);
        };
        // SAFETY: both are live: the calling task's own mm and its group
        // leader, which outlive the call.
        unsafe { bindings::kmod_helper_owner_get(mm.as_ptr(), task.as_ptr()) };
        // INVARIANT: the references just taken are the `Owner`'s.
        let owner = Owner { mm: MmGrab(mm), task: TaskRef(task) };
        // SAFETY: `capable` tests the calling task's credentials.
        let lock_cap = unsafe { bindings::capable(bindings::CAP_IPC_LOCK as ffi::c_int) };
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
        unsafe { bindings::kmod_helper_owner_put(self.mm.as_ptr(), self.task.0.as_ptr()) };
    }
}

/// `access_ok(addr, size)`: the range lies in user address space.
pub(crate) fn access_ok(addr: u64, size: u64) -> bool {
    // SAFETY: `access_ok` only compares the range with the user address limit.
    unsafe { bindings::kmod_helper_access_ok(addr as ffi::c_ulong, size as ffi::c_ulong) }
}

/// Yields the CPU if the scheduler wants it (long pin and map loops).
pub(crate) fn cond_resched() {
    // SAFETY: called from process context without spinlocks held.
    unsafe { bindings::kmod_helper_cond_resched() };
}

// ---- The real-IOMMU path: pinning whole mappings in batches ----

/// Physically contiguous frames as found (pinned or looked up): a record,
/// owns nothing.
#[derive(Clone, Copy, Default)]
struct PfnRun {
    pfn: Pfn,
    npage: u64,
    reserved: bool,
}

/// A run of physically contiguous pages of one kind (reserved or not),
/// pinned for long-term device access: gives its pins back when dropped or
/// unpinned. Only [`PinBatch::pin`] makes one with pages; runs are merged
/// with [`PinnedRun::extend`]; `iommu_domain::DomainSet` takes them over
/// into IOMMU page tables.
///
/// # Invariants
///
/// Unless `reserved`, this value holds one long-term pin of each of the
/// `npage` pages from `pfn`, which have `struct page`s. A reserved run holds
/// no pin that is given back: reserved pages (whose pins the C type1 never
/// gives back either) or device memory (`VM_IO`/`VM_PFNMAP`, not pinned).
/// `write`: the device may write the pages (dirty when unpinned).
#[derive(Default)]
pub(crate) struct PinnedRun {
    pfn: Pfn,
    npage: u64,
    reserved: bool,
    write: bool,
}

impl PinnedRun {
    /// The first page's frame number.
    #[inline(always)]
    pub(crate) fn pfn(&self) -> Pfn {
        self.pfn
    }

    /// How many pages.
    #[inline(always)]
    pub(crate) fn npage(&self) -> u64 {
        self.npage
    }

    /// Reserved pages or device memory: not accounted, never unpinned.
    #[inline(always)]
    pub(crate) fn is_reserved(&self) -> bool {
        self.reserved
    }

    /// Whether the device may write the pages.
    #[inline(always)]
    pub(crate) fn is_writable(&self) -> bool {
        self.write
    }

    /// Appends `next` if it continues this run physically, with pages of
    /// the same kind; otherwise gives it back (`Err`).
    #[inline(always)]
    pub(crate) fn extend(&mut self, next: PinnedRun) -> core::result::Result<(), PinnedRun> {
        if self.npage == 0 || next.pfn != self.pfn + self.npage || next.reserved != self.reserved || next.write != self.write {
            return Err(next);
        }
        // INVARIANT: `next`'s pins (or its lack of them, like ours) move
        // here; its pages follow ours.
        self.npage += next.npage;
        core::mem::forget(next);
        Ok(())
    }

    /// Gives the pins back; returns how many pages that was (0 for a
    /// reserved run, which is not accounted), calling `each` with the index
    /// in the run of every such page first.
    #[inline]
    pub(crate) fn unpin_each(self, mut each: impl FnMut(u64)) -> u64 {
        let run = core::mem::ManuallyDrop::new(self);
        if run.reserved || run.npage == 0 {
            return 0;
        }
        (0..run.npage).for_each(&mut each);
        // SAFETY: not reserved: we hold one pin of each page (type
        // invariant), given back once: `run` is forgotten.
        unsafe { unpin_range(run.pfn, run.npage, run.write) };
        run.npage
    }

    /// Gives the pins back; returns how many pages that was.
    #[inline]
    pub(crate) fn unpin(self) -> u64 {
        self.unpin_each(|_| {})
    }
}

impl Drop for PinnedRun {
    #[inline]
    fn drop(&mut self) {
        core::mem::take(self).unpin();
    }
}

/// Room to pin a batch of pages and hand them out as [`PinnedRun`]s.
///
/// # Invariants
///
/// Every entry of `runs` is empty (no pages) between calls of
/// [`PinBatch::pin`]: the [`PinnedRuns`] it returns takes them all. So
/// the entries need no drop: filling one has no old value to give back,
/// and dropping the batch nothing (a drop per entry cost a 2 MiB MAP_DMA
/// 28 instructions a slot, 14,000 in all, when it was not inlined).
pub(crate) struct PinBatch {
    pages: KVec<*mut bindings::page>,
    runs: KVec<ManuallyDrop<PinnedRun>>,
}

impl PinBatch {
    /// Room for `len` pages.
    pub(crate) fn new(len: usize) -> Result<Self> {
        let mut runs = KVec::with_capacity(len, GFP_KERNEL)?;
        for _ in 0..len {
            runs.push(ManuallyDrop::default(), GFP_KERNEL)?;
        }
        Ok(PinBatch { pages: KVec::from_elem(core::ptr::null_mut(), len, GFP_KERNEL)?, runs })
    }

    /// Pins up to `want` pages (at most the batch's room) from `vaddr` with
    /// [`MmUsers`], and hands them out as runs of physically contiguous
    /// pages of one kind, in order, each at most `max_npage` long (what the
    /// C type1's `vfio_pin_pages_remote()` works out page by page). Returns
    /// how many pages were pinned (at least one), the runs, and how many
    /// pages are not reserved. Device memory (`VM_IO`/`VM_PFNMAP`) is not
    /// pinned: it comes back as one reserved run of up to `want` pages (not
    /// limited by the batch's room), as far as one page-table entry maps it
    /// contiguously.
    pub(crate) fn pin(
        &mut self,
        users: &MmUsers<'_>,
        vaddr: u64,
        want: usize,
        write: bool,
        max_npage: u64,
    ) -> Result<(usize, PinnedRuns<'_>, usize)> {
        let room = want.min(self.pages.len());
        let max_device = (want as u64).min(max_npage);
        let got = match users.pin_or_follow(vaddr, &mut self.pages[..room], write, max_device)? {
            Found::Pages(got) => got.min(room),
            Found::Device(run) => {
                let slot = self.runs.first_mut().ok_or(EINVAL)?;
                // INVARIANT: device memory, not pinned: a reserved run.
                *slot = ManuallyDrop::new(PinnedRun { pfn: run.pfn, npage: run.npage, reserved: true, write });
                let runs = PinnedRuns { runs: &mut self.runs[..1], next: 0 };
                return Ok((run.npage as usize, runs, 0));
            }
        };
        let frames = PageFrames::get();
        // The run being built stays in registers; `runs` gets it when the
        // next piece does not continue it (one run per page at most, so
        // `runs`, as long as the batch, has room). A piece is one page, or,
        // from the head page of a large folio on, as many of the folio's
        // pages as follow it in `pages` in order, taken to be of the head's
        // kind (`PG_reserved` is not a flag of compound pages, and a
        // folio's pages are initialised alike): only their places are
        // compared, one load and compare a page instead of a frame number,
        // a flags word and four tests.
        let pages = &self.pages[..got];
        let runs = &mut self.runs[..got];
        let (mut nruns, mut unreserved) = (0usize, 0usize);
        let mut cur = PfnRun::default();
        let max_piece = usize::try_from(max_npage).unwrap_or(usize::MAX);
        let mut i = 0;
        while let Some(&page) = pages.get(i) {
            let pfn = frames.pfn(page);
            // SAFETY: a pinned page is a page of the memory map.
            let flags = unsafe { page_flags(page) };
            let rsvd = flags & PG_RESERVED != 0;
            // (Not for a last page: one page needs no folio size.)
            let n = if flags & PG_HEAD != 0 && max_piece > 1 && i + 1 < pages.len() {
                // SAFETY: `page` is the head page of a folio whose pages
                // are pinned (it is pinned itself).
                let folio = unsafe { bindings::kmod_helper_folio_nr_pages(page) } as usize;
                let rest = &pages[i..pages.len().min(i.saturating_add(folio.min(max_piece)))];
                // The pages of one folio are consecutive in the memory map.
                rest.iter().enumerate().take_while(|&(k, &p)| p == page.wrapping_add(k)).count()
            } else {
                1
            };
            i += n;
            if !rsvd {
                unreserved += n;
            }
            let n = n as u64;
            if cur.npage != 0 && pfn == cur.pfn + cur.npage && rsvd == cur.reserved && cur.npage + n <= max_npage {
                cur.npage += n;
                continue;
            }
            if cur.npage != 0 {
                if let Some(slot) = runs.get_mut(nruns) {
                    // INVARIANT: pages pinned just above, each once, in
                    // exactly one run (the slot was empty).
                    *slot = ManuallyDrop::new(PinnedRun { pfn: cur.pfn, npage: cur.npage, reserved: cur.reserved, write });
                    nruns += 1;
                }
            }
            cur = PfnRun { pfn, npage: n, reserved: rsvd };
        }
        if cur.npage != 0 {
            if let Some(slot) = runs.get_mut(nruns) {
                // INVARIANT: as above.
                *slot = ManuallyDrop::new(PinnedRun { pfn: cur.pfn, npage: cur.npage, reserved: cur.reserved, write });
                nruns += 1;
            }
        }
        Ok((got, PinnedRuns { runs: &mut runs[..nruns], next: 0 }, unreserved))
    }
}

/// The runs of one [`PinBatch::pin`], in order: taken out one by one with
/// `next`; those not taken are given back on drop (and the batch's room is
/// empty again).
pub(crate) struct PinnedRuns<'a> {
    runs: &'a mut [ManuallyDrop<PinnedRun>],
    next: usize,
}

impl PinnedRuns<'_> {
    /// The runs not taken out yet.
    #[inline]
    pub(crate) fn remaining(&self) -> &[ManuallyDrop<PinnedRun>] {
        self.runs.get(self.next..).unwrap_or(&[])
    }
}

impl Iterator for PinnedRuns<'_> {
    type Item = PinnedRun;

    #[inline(always)]
    fn next(&mut self) -> Option<PinnedRun> {
        let slot = self.runs.get_mut(self.next)?;
        self.next += 1;
        Some(ManuallyDrop::into_inner(core::mem::take(slot)))
    }
}

impl Drop for PinnedRuns<'_> {
    fn drop(&mut self) {
        for run in self.by_ref() {
            drop(run);
        }
    }
}
