//! DMA engine of the mtty device, behind the 4 KiB memory BAR2.
//!
//! The guest (or a VFIO user) describes a transmit ring and a receive ring of
//! 16-byte descriptors in its own memory by IOVA. Transmit descriptors move
//! bytes from guest buffers into UART port 0, where the loopback delivers
//! them to the port's receive FIFO; receive descriptors move bytes out of
//! that FIFO into guest buffers. The register layout, descriptor format,
//! state machine and error codes are specified in `docs/mtty-dma.md`; this
//! module is the executable form of that document.
//!
//! The module cannot touch guest memory or pin pages itself. Instead
//! [`DmaEngine::plan`] is a pure function of the engine state and a small
//! [`EngineEnv`] that returns the next [`Action`] the driver must perform
//! (pin or unpin a page range, read or write a descriptor, move bytes between
//! a pinned page and the UART). The driver performs it and reports the
//! result with [`DmaEngine::complete`], then asks again until the answer is
//! [`Action::Idle`]. Everything happens under the device lock, so the state
//! cannot change between `plan` and `complete`; `complete` still checks that
//! the reported action matches the current state and refuses stale ones.
//!
//! # Pins
//!
//! The engine owns at most [`MAX_PINS`] = 4 pinned IOVA ranges, one per
//! [`PinSlot`]: the page of each ring (long-lived, held while the ring is in
//! use) and the pages of the buffer each ring is currently transferring
//! (held for one descriptor). A ring is naturally aligned and at most 4 KiB,
//! so it is always one page; a buffer is at most [`MAX_BUFFER_LEN`] = 4096
//! bytes, so it spans at most [`MAX_PIN_PAGES`] = 2 pages (both facts are
//! checked at compile time against [`PAGE_SIZE`], the one page-size constant
//! of the core). The driver thus needs at most 8 `struct page` pointers per
//! device, in fixed arrays.
//!
//! When the IOMMU backend unmaps an IOVA range, [`DmaEngine::dma_unmap`]
//! returns exactly the pinned ranges that overlap it, forgets them, and
//! halts the engine with [`DmaError::Unmapped`] and the lowest overlapping
//! IOVA in ERROR_IOVA. The driver unpins those ranges before returning from
//! its `dma_unmap` callback.
//!
//! # Copy command
//!
//! Besides the rings, the engine copies up to [`MAX_COPY_LEN`] bytes from one
//! IOVA range to another on a [`DOORBELL_COPY`]: [`Action::Copy`] asks the
//! driver to read the whole source into a buffer of its own and write it to
//! the destination, each with a single `vfio_dma_rw` (no pins). The
//! parameters are checked by [`check_copy`] when the doorbell is rung.
//!
//! # Map
//!
//! This file holds only this overview and the public paths; the engine
//! lives in `dma_engine/`, one concept per file:
//!
//! | file            | holds                                                              |
//! |-----------------|--------------------------------------------------------------------|
//! | `registers.rs`  | BAR2 register offsets, bit values, ID/version, [`DmaError`] codes  |
//! | `descriptor.rs` | the 16-byte ring entry: [`Descriptor`], its encoding and checks    |
//! | `ring.rs`       | the two rings: [`Ring`], ring registers and geometry rules         |
//! | `pins.rs`       | page size, [`PinSlot`], [`PinRange`], [`unmap_decision`]           |
//! | `copy.rs`       | the copy command: [`MAX_COPY_LEN`], [`check_copy`]                 |
//! | `action.rs`     | the driver protocol: [`Action`], [`Completion`], [`EngineEnv`]     |
//! | `engine.rs`     | the [`DmaEngine`] state, reset, status, [`DmaEngine::dma_unmap`]   |
//! | `mmio.rs`       | BAR2 reads and writes, doorbells, enable and disable               |
//! | `plan.rs`       | [`DmaEngine::plan`] and [`DmaEngine::complete`]                    |
//! | `snapshot.rs`   | [`DmaEngine::save_state`] and [`DmaEngine::restore_state`]         |
//!
//! The kernel module mounts this file with `#[path]`, which makes rustc look
//! for its children beside it rather than in `dma_engine/`; every child
//! therefore names its file with `#[path]` too, which resolves the same way
//! in the host crate and in the module.

#[path = "dma_engine/action.rs"]
mod action;
#[path = "dma_engine/copy.rs"]
mod copy;
#[path = "dma_engine/descriptor.rs"]
mod descriptor;
#[path = "dma_engine/engine.rs"]
mod engine;
#[path = "dma_engine/mmio.rs"]
mod mmio;
#[path = "dma_engine/pins.rs"]
mod pins;
#[path = "dma_engine/plan.rs"]
mod plan;
#[path = "dma_engine/registers.rs"]
mod registers;
#[path = "dma_engine/ring.rs"]
mod ring;
#[path = "dma_engine/snapshot.rs"]
mod snapshot;

#[allow(
    unused_imports,
    reason = "the kernel module mounts this file in a private module and uses only part of it"
)]
pub use self::{
    action::{Action, Completion, EngineEnv, StaleCompletion},
    copy::{check_copy, CopyError, MAX_COPY_LEN},
    descriptor::{DescError, Descriptor, DESC_DONE, DESC_SIZE, MAX_BUFFER_LEN},
    engine::DmaEngine,
    mmio::AccessError,
    pins::{
        unmap_decision, Location, PinRange, PinSlot, UnmapDecision, UnpinList, MAX_PINS,
        MAX_PIN_PAGES, PAGE_SHIFT, PAGE_SIZE,
    },
    registers::*,
    ring::{ring_pin_range, Ring, MAX_RING_ENTRIES},
    snapshot::STATE_LEN,
};
