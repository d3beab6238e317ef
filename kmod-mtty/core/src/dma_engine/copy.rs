//! The copy command: its length limit, its registers and the check run when its doorbell rings.

/// Largest length of one copy command (64 KiB).
pub const MAX_COPY_LEN: u32 = 65536;

/// Why a copy command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// Length 0.
    ZeroLength,
    /// Length above [`MAX_COPY_LEN`].
    TooLong,
    /// The source runs past the last IOVA.
    SourceOverflow,
    /// The destination runs past the last IOVA.
    DestOverflow,
}

impl CopyError {
    /// The IOVA reported in ERROR_IOVA: the destination for a destination
    /// that overflows, else the source.
    pub const fn iova(self, src: u64, dst: u64) -> u64 {
        match self {
            CopyError::DestOverflow => dst,
            _ => src,
        }
    }
}

/// Checks the parameters of a copy command: `len` in 1..=[`MAX_COPY_LEN`],
/// and neither `[src, src + len)` nor `[dst, dst + len)` running past the
/// end of the 64-bit IOVA space. Overlapping ranges are allowed.
pub fn check_copy(src: u64, dst: u64, len: u32) -> Result<(), CopyError> {
    let Some(last) = len.checked_sub(1) else {
        return Err(CopyError::ZeroLength);
    };
    if len > MAX_COPY_LEN {
        return Err(CopyError::TooLong);
    }
    if src.checked_add(u64::from(last)).is_none() {
        return Err(CopyError::SourceOverflow);
    }
    if dst.checked_add(u64::from(last)).is_none() {
        return Err(CopyError::DestOverflow);
    }
    Ok(())
}

/// The copy command's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct CopyRegs {
    pub(super) src: u64,
    pub(super) dst: u64,
    pub(super) len: u32,
}
