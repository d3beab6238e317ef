//! The BAR2 register map: offsets, bit values and error codes of the DMA engine.
//!
//! These are the numbers of the "Registers" section of `docs/mtty-dma.md`;
//! what a read or write of each register does is in `mmio.rs`.

/// Size of the register BAR.
pub const BAR_SIZE: u32 = 4096;

/// Register: identification, reads [`ID_VALUE`].
pub const REG_ID: u32 = 0x00;
/// Register: version, reads [`VERSION_VALUE`].
pub const REG_VERSION: u32 = 0x04;
/// Register: control ([`CTRL_ENABLE`], [`CTRL_RESET`]).
pub const REG_CTRL: u32 = 0x08;
/// Register: status ([`STATUS_RUNNING`], [`STATUS_BUSY`], [`STATUS_ERROR`]).
pub const REG_STATUS: u32 = 0x0C;
/// Register: error code of the halt, a [`DmaError`] value.
pub const REG_ERROR_CODE: u32 = 0x10;
/// Register: doorbell ([`DOORBELL_TX`], [`DOORBELL_RX`]); reads zero.
pub const REG_DOORBELL: u32 = 0x14;
/// Register: IOVA related to the error, low half (high half at +4).
pub const REG_ERROR_IOVA: u32 = 0x18;
/// Register: interrupt status, write 1 to clear.
pub const REG_INT_STATUS: u32 = 0x20;
/// Register: interrupt enable.
pub const REG_INT_ENABLE: u32 = 0x24;
/// Register block of the transmit ring.
pub const REG_TX_RING: u32 = 0x40;
/// Register block of the receive ring.
pub const REG_RX_RING: u32 = 0x60;
/// Register: copy source IOVA, low half (high half at +4).
pub const REG_COPY_SRC: u32 = 0x80;
/// Register: copy destination IOVA, low half (high half at +4).
pub const REG_COPY_DST: u32 = 0x88;
/// Register: copy length in bytes, 1..=[`MAX_COPY_LEN`](super::MAX_COPY_LEN).
pub const REG_COPY_LEN: u32 = 0x90;
/// Offset in a ring block: ring base IOVA, low half (high half at +4).
pub const RING_BASE: u32 = 0x00;
/// Offset in a ring block: number of entries (0 disables the ring).
pub const RING_SIZE: u32 = 0x08;
/// Offset in a ring block: device consumer index (read-only).
pub const RING_HEAD: u32 = 0x10;
/// Offset in a ring block: driver producer index.
pub const RING_TAIL: u32 = 0x14;

/// Value of the ID register: the bytes "mDMA" in little-endian order.
pub const ID_VALUE: u32 = 0x414D_446D;
/// Value of the version register: major 1, minor 1 (minor 1 added the copy
/// command).
pub const VERSION_VALUE: u32 = 0x0001_0001;

/// CTRL: run the engine.
pub const CTRL_ENABLE: u32 = 0x1;
/// CTRL: reset every register to its reset value (self-clearing).
pub const CTRL_RESET: u32 = 0x2;
/// STATUS: enabled and not halted by an error.
pub const STATUS_RUNNING: u32 = 0x1;
/// STATUS: the engine still owns descriptors or pinned pages.
pub const STATUS_BUSY: u32 = 0x2;
/// STATUS: halted by an error; see ERROR_CODE and ERROR_IOVA.
pub const STATUS_ERROR: u32 = 0x4;
/// STATUS: a copy command was accepted and has not finished.
pub const STATUS_COPY: u32 = 0x8;
/// DOORBELL: the transmit ring's TAIL moved.
pub const DOORBELL_TX: u32 = 0x1;
/// DOORBELL: the receive ring's TAIL moved.
pub const DOORBELL_RX: u32 = 0x2;
/// DOORBELL: start the copy described by COPY_SRC, COPY_DST and COPY_LEN.
pub const DOORBELL_COPY: u32 = 0x4;
/// INT_STATUS/INT_ENABLE: a transmit descriptor completed.
pub const INT_TX_DONE: u32 = 0x1;
/// INT_STATUS/INT_ENABLE: a receive descriptor completed.
pub const INT_RX_DONE: u32 = 0x2;
/// INT_STATUS/INT_ENABLE: the engine halted on an error.
pub const INT_ERROR: u32 = 0x4;
/// INT_STATUS/INT_ENABLE: a copy command completed.
pub const INT_COPY_DONE: u32 = 0x8;
/// All implemented interrupt bits.
pub const INT_MASK: u32 = INT_TX_DONE | INT_RX_DONE | INT_ERROR | INT_COPY_DONE;

/// Reason the engine halted, as reported in ERROR_CODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DmaError {
    /// No error.
    None = 0,
    /// IOVA pages the engine had pinned were unmapped.
    Unmapped = 1,
    /// A descriptor had length 0 or above 4096, reserved flag bits, or a
    /// buffer that wraps past the end of the IOVA space.
    BadDescriptor = 2,
    /// A ring size is not a power of two up to 256, or its base is not
    /// aligned to the ring's byte size.
    BadRing = 3,
    /// TAIL is more than the ring size ahead of HEAD, or was moved back over
    /// the descriptor the engine is working on.
    BadIndex = 4,
    /// The pages of a ring or buffer could not be pinned (IOVA not mapped).
    PinFailed = 5,
    /// Copying to or from a pinned page failed.
    AccessFault = 6,
    /// A copy command with length 0 or above
    /// [`MAX_COPY_LEN`](super::MAX_COPY_LEN), or with a range that runs past
    /// the end of the IOVA space.
    BadCopy = 7,
    /// The read of a copy's source or the write of its destination failed
    /// (IOVA not mapped, or mapped without the needed permission).
    CopyFault = 8,
}

impl DmaError {
    /// Decodes an ERROR_CODE value.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(DmaError::None),
            1 => Some(DmaError::Unmapped),
            2 => Some(DmaError::BadDescriptor),
            3 => Some(DmaError::BadRing),
            4 => Some(DmaError::BadIndex),
            5 => Some(DmaError::PinFailed),
            6 => Some(DmaError::AccessFault),
            7 => Some(DmaError::BadCopy),
            8 => Some(DmaError::CopyFault),
            _ => None,
        }
    }
}
