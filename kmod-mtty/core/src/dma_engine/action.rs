//! The driver protocol: the actions the engine asks for and the completions the driver reports.
//!
//! [`DmaEngine::plan`] returns an [`Action`]; the driver performs it and
//! hands the outcome to [`DmaEngine::complete`].
//!
//! [`DmaEngine::plan`]: super::DmaEngine::plan
//! [`DmaEngine::complete`]: super::DmaEngine::complete

use super::descriptor::DESC_SIZE;
use super::pins::{Location, PinRange, PinSlot};
use super::ring::Ring;

/// Next step the driver has to perform for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until a register write, a UART FIFO change or a change
    /// of the bus-master bit.
    Idle,
    /// Pin `range` and complete with `Pinned` or `PinFailed`.
    Pin {
        /// Slot that will own the range.
        slot: PinSlot,
        /// Pages to pin.
        range: PinRange,
        /// Start of the ring or buffer, reported in ERROR_IOVA on failure.
        target: u64,
    },
    /// Unpin `range` (always succeeds) and complete with `Unpinned`.
    Unpin {
        /// Slot that owns the range.
        slot: PinSlot,
        /// Pages to unpin.
        range: PinRange,
    },
    /// Read the 16-byte descriptor at `at` and complete with `DescriptorRead`.
    ReadDescriptor {
        /// Ring of the descriptor.
        ring: Ring,
        /// Where the descriptor is.
        at: Location,
    },
    /// Write `bytes` over the descriptor at `at` and complete with
    /// `DescriptorWritten` (or `Failed`).
    WriteDescriptor {
        /// Ring of the descriptor.
        ring: Ring,
        /// Where the descriptor is.
        at: Location,
        /// New descriptor contents (length transferred, DONE set).
        bytes: [u8; DESC_SIZE],
    },
    /// Copy `len` bytes (all inside one page) from `at` into UART port 0
    /// with `Uart::rx_push`, then complete with `Transferred(len)`.
    TxToUart {
        /// Source bytes.
        at: Location,
        /// Number of bytes; never more than the FIFO space given in the env.
        len: u32,
    },
    /// Pop `len` bytes from UART port 0 with `Uart::rx_pop` into `at` (all
    /// inside one page), then complete with `Transferred(len)`.
    UartToRx {
        /// Destination bytes.
        at: Location,
        /// Number of bytes; never more than the FIFO fill given in the env.
        len: u32,
    },
    /// Read `len` bytes at IOVA `src` into a driver buffer with one
    /// `vfio_dma_rw`, then write them at IOVA `dst` with one more; complete
    /// with `Copied`, `CopyReadFailed` (the write is then not attempted) or
    /// `CopyWriteFailed`. The ranges are checked by
    /// [`check_copy`](super::check_copy).
    Copy {
        /// Source IOVA.
        src: u64,
        /// Destination IOVA.
        dst: u64,
        /// Bytes, 1..=[`MAX_COPY_LEN`](super::MAX_COPY_LEN).
        len: u32,
        /// Identifies this copy command among those the engine accepted,
        /// so a completion outliving a reset cannot finish a later copy.
        tag: u32,
    },
}

/// Result of an action, reported through
/// [`DmaEngine::complete`](super::DmaEngine::complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The range was pinned; the engine now owns the pin.
    Pinned,
    /// Pinning failed.
    PinFailed,
    /// The range was unpinned.
    Unpinned,
    /// The descriptor bytes that were read.
    DescriptorRead([u8; DESC_SIZE]),
    /// The descriptor was written.
    DescriptorWritten,
    /// This many bytes were moved (at most the action's `len`).
    Transferred(u32),
    /// Accessing the pinned page failed.
    Failed,
    /// The copy's source was read and its destination written.
    Copied,
    /// Reading the copy's source failed; nothing was written.
    CopyReadFailed,
    /// Writing the copy's destination failed.
    CopyWriteFailed,
}

/// A completion that does not match the engine's current state.
///
/// The engine is left unchanged. If the refused completion was `Pinned`,
/// the engine did not take ownership and the driver must unpin the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleCompletion;

/// What the engine needs to know about its surroundings to plan a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineEnv {
    /// PCI command register bus-master bit: no memory access while clear.
    pub bus_master: bool,
    /// Bytes in UART port 0's receive FIFO (`Uart::rx_len`).
    pub rx_fifo_len: u8,
    /// Free bytes in that FIFO (`Uart::rx_space`).
    pub rx_fifo_space: u8,
}
