//! Locked-memory (`RLIMIT_MEMLOCK`) accounting arithmetic.
//!
//! Type1 charges every page it pins for a mapping to the owner's
//! `mm->locked_vm`, except reserved/invalid pfns (MMIO) and pages that an
//! mdev already pinned and accounted through `vfio_pin_pages()`.  These
//! helpers are the pure parts of `__account_locked_vm()`,
//! `vfio_pin_pages_remote()`, `vfio_unpin_pages_remote()` and
//! `vfio_iommu_unmap_unpin_reaccount()`; the kernel supplies the values it
//! reads under `mmap_lock`.

use super::errno::{Errno, ENOMEM};
use super::container::PAGE_SHIFT;

/// `rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT`: the limit in pages.
pub fn memlock_limit_pages(rlimit_bytes: u64) -> u64 {
    rlimit_bytes >> PAGE_SHIFT
}

/// Result of [`account_locked_vm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockedVm {
    /// The new value of `mm->locked_vm`.
    pub locked_vm: u64,
    /// The C code would `WARN_ON_ONCE()`: more pages were released than locked.
    pub warn_underflow: bool,
}

/// Mirrors `__account_locked_vm(mm, pages, inc, task, bypass_rlim)`.
///
/// Increments fail with `ENOMEM` (leaving `locked_vm` unchanged) when the
/// new total would exceed `limit_pages`, unless `bypass_rlim`
/// (`CAP_IPC_LOCK`).  Decrements never fail; releasing more than is locked
/// wraps like the C `unsigned long` after a WARN.  An increment whose sum
/// overflows is treated as exceeding the limit (C would wrap and accept it).
pub fn account_locked_vm(
    locked_vm: u64,
    pages: u64,
    inc: bool,
    bypass_rlim: bool,
    limit_pages: u64,
) -> Result<LockedVm, Errno> {
    if inc {
        let Some(new) = locked_vm.checked_add(pages) else {
            return Err(ENOMEM);
        };
        if !bypass_rlim && new > limit_pages {
            return Err(ENOMEM);
        }
        Ok(LockedVm {
            locked_vm: new,
            warn_underflow: false,
        })
    } else {
        Ok(LockedVm {
            locked_vm: locked_vm.wrapping_sub(pages),
            warn_underflow: pages > locked_vm,
        })
    }
}

/// Mirrors `vfio_lock_acct()` on the mapping's own counter: `npage` pages
/// (signed) are added to `dma->locked_vm` once the mm accounting succeeded.
/// Returns the new per-mapping count.
pub fn dma_locked_vm_after(dma_locked_vm: u64, npage: i64) -> u64 {
    dma_locked_vm.wrapping_add(npage as u64)
}

/// The per-page charge decision of `vfio_pin_pages_remote()`.
///
/// A page is charged only if its pfn is not reserved and no `vfio_pfn`
/// exists for its iova (an mdev pin already charged it).  Before charging,
/// a task without `CAP_IPC_LOCK` must stay within the limit, counting the
/// pages charged so far in this batch: `ENOMEM` otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemotePinAcct {
    /// Pages charged so far (`lock_acct`), to be passed to `vfio_lock_acct()`.
    pub lock_acct: u64,
}

impl RemotePinAcct {
    /// Accounts one more pinned page.
    pub fn page(
        &mut self,
        rsvd: bool,
        already_pinned: bool,
        lock_cap: bool,
        mm_locked_vm: u64,
        limit_pages: u64,
    ) -> Result<(), Errno> {
        if rsvd || already_pinned {
            return Ok(());
        }
        if !lock_cap {
            let total = mm_locked_vm
                .checked_add(self.lock_acct)
                .and_then(|v| v.checked_add(1));
            match total {
                Some(t) if t <= limit_pages => {}
                _ => return Err(ENOMEM),
            }
        }
        self.lock_acct += 1;
        Ok(())
    }
}

/// Mirrors the tally of `vfio_unpin_pages_remote()`: of the pages released,
/// `unlocked` were real pages and `locked` of those also have a `vfio_pfn`
/// (still pinned and accounted by an mdev).  Returns the `npage` passed to
/// `vfio_lock_acct()`: `locked - unlocked`.
pub fn unpin_remote_delta(unlocked: u64, locked: u64) -> i64 {
    (locked as i64).wrapping_sub(unlocked as i64)
}
