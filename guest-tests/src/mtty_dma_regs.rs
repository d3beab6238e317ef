//! Register offsets and bits of the Rust mtty's DMA engine on BAR2, as
//! `docs/mtty-dma.md` documents them. One copy for every program that
//! drives the engine (the DMA cases, the device-list stress case, the bench
//! and the demo).

/// "mDMA": the engine's ID register value.
pub const ID_VALUE: u32 = 0x414D_446D;

pub const ID: u64 = 0x00;
pub const CTRL: u64 = 0x08;
pub const STATUS: u64 = 0x0c;
pub const ERROR_CODE: u64 = 0x10;
pub const DOORBELL: u64 = 0x14;
pub const ERROR_IOVA: u64 = 0x18;
pub const INT_STATUS: u64 = 0x20;
pub const INT_ENABLE: u64 = 0x24;
/// The TX ring's register block; ring registers are offsets inside it.
pub const TX: u64 = 0x40;
/// The RX ring's register block.
pub const RX: u64 = 0x60;
pub const RING_BASE: u64 = 0x00;
pub const RING_SIZE: u64 = 0x08;
pub const RING_HEAD: u64 = 0x10;
pub const RING_TAIL: u64 = 0x14;

pub const CTRL_ENABLE: u32 = 1;
pub const CTRL_RESET: u32 = 2;
pub const STATUS_RUNNING: u32 = 1;
pub const STATUS_BUSY: u32 = 2;
pub const STATUS_ERROR: u32 = 4;
pub const DOORBELL_TX: u32 = 1;
pub const DOORBELL_RX: u32 = 2;
pub const ERR_UNMAPPED: u32 = 1;
/// ERROR_CODE: a ring page or buffer could not be pinned.
pub const ERR_PIN_FAILED: u32 = 5;
/// The DONE flag the device writes back into a descriptor.
pub const DESC_DONE: u32 = 1;

/// The copy command (engine version 1.1): source and destination IOVA
/// (64-bit registers) and length.
pub const COPY_SRC: u64 = 0x80;
pub const COPY_DST: u64 = 0x88;
pub const COPY_LEN: u64 = 0x90;
/// Largest COPY_LEN.
pub const MAX_COPY_LEN: u32 = 65536;
pub const DOORBELL_COPY: u32 = 4;
pub const STATUS_COPY: u32 = 8;
pub const INT_ERROR: u32 = 4;
pub const INT_COPY_DONE: u32 = 8;
/// ERROR_CODE: COPY_LEN 0 or above 65536 (or a range past the IOVA space).
pub const ERR_BAD_COPY: u32 = 7;
/// ERROR_CODE: the copy's read or write failed (`vfio_dma_rw`).
pub const ERR_COPY_FAULT: u32 = 8;
/// VERSION: major 1, minor 1 (the copy command).
pub const VERSION: u64 = 0x04;
pub const VERSION_VALUE: u32 = 0x0001_0001;
