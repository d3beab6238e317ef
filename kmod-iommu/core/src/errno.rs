//! Positive errno numbers returned by this crate.
//!
//! The C reference returns negative errno values; this crate returns the
//! positive number in `Err(..)` and the kernel side negates it when it
//! builds a `kernel::error::Error`.  The values are the generic Linux ones
//! from `include/uapi/asm-generic/errno-base.h`, which are the same on
//! every architecture the module targets.

/// The error type of every fallible function in this crate: a positive errno.
pub type Errno = i32;

/// Operation not permitted (`EPERM`).
pub const EPERM: Errno = 1;
/// No such file or directory (`ENOENT`): MAP_DMA with the VADDR flag and no mapping.
pub const ENOENT: Errno = 2;
/// No such process (`ESRCH`): the mm of a mapping went away during accounting.
pub const ESRCH: Errno = 3;
/// Argument list too long (`E2BIG`): too many pages in one pin request.
pub const E2BIG: Errno = 7;
/// Out of memory (`ENOMEM`).
pub const ENOMEM: Errno = 12;
/// Permission denied (`EACCES`): a v2-only operation on a v1 container.
pub const EACCES: Errno = 13;
/// Bad address (`EFAULT`): a user copy failed.
pub const EFAULT: Errno = 14;
/// Device or resource busy (`EBUSY`).
pub const EBUSY: Errno = 16;
/// File exists (`EEXIST`): MAP_DMA overlapping an existing mapping.
pub const EEXIST: Errno = 17;
/// No such device (`ENODEV`).
pub const ENODEV: Errno = 19;
/// Invalid argument (`EINVAL`).
pub const EINVAL: Errno = 22;
/// Inappropriate ioctl for device (`ENOTTY`).
pub const ENOTTY: Errno = 25;
/// No space left on device (`ENOSPC`): the dma_entry_limit is exhausted.
pub const ENOSPC: Errno = 28;
