//! The engine's state: the `DmaEngine` struct, its reset and status, and the IOMMU unmap hook.
//!
//! Its registers are read and written in `mmio.rs`, its steps are planned
//! and completed in `plan.rs`, and it is saved and restored in
//! `snapshot.rs`; those files share the fields and helpers marked
//! `pub(super)` here.

use super::copy::CopyRegs;
use super::pins::{unmap_decision, PinRange, UnpinList, MAX_PINS};
use super::registers::{
    DmaError, INT_ERROR, STATUS_BUSY, STATUS_COPY, STATUS_ERROR, STATUS_RUNNING,
};
use super::ring::{InFlight, Ring, RingRegs};

/// The DMA engine: register file, ring progress and pin table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaEngine {
    pub(super) enabled: bool,
    pub(super) error: DmaError,
    pub(super) error_iova: u64,
    pub(super) int_status: u32,
    pub(super) int_enable: u32,
    pub(super) tx: RingRegs,
    pub(super) rx: RingRegs,
    pub(super) tx_cur: Option<InFlight>,
    pub(super) rx_cur: Option<InFlight>,
    pub(super) pins: [Option<PinRange>; MAX_PINS],
    /// COPY_SRC, COPY_DST, COPY_LEN.
    pub(super) copy: CopyRegs,
    /// A copy was accepted by the doorbell and has not finished: the copy
    /// registers are frozen and `plan` asks for it.
    pub(super) copy_busy: bool,
    /// Tag of the last accepted copy (not part of the snapshot).
    pub(super) copy_tag: u32,
}

impl Default for DmaEngine {
    fn default() -> Self {
        DmaEngine::new()
    }
}

impl DmaEngine {
    /// An engine in its reset state with nothing pinned.
    pub const fn new() -> Self {
        DmaEngine {
            enabled: false,
            error: DmaError::None,
            error_iova: 0,
            int_status: 0,
            int_enable: 0,
            tx: RingRegs {
                base: 0,
                size: 0,
                head: 0,
                tail: 0,
                avail: 0,
            },
            rx: RingRegs {
                base: 0,
                size: 0,
                head: 0,
                tail: 0,
                avail: 0,
            },
            tx_cur: None,
            rx_cur: None,
            pins: [None; MAX_PINS],
            copy: CopyRegs {
                src: 0,
                dst: 0,
                len: 0,
            },
            copy_busy: false,
            copy_tag: 0,
        }
    }

    /// Resets every register to its reset value. Pinned ranges stay in the
    /// table (they are real host resources); [`DmaEngine::plan`] then asks
    /// for their release, or the driver takes them with
    /// [`DmaEngine::take_all_pins`].
    pub fn reset(&mut self) {
        let pins = self.pins;
        let tag = self.copy_tag;
        *self = DmaEngine::new();
        self.pins = pins;
        // Tags keep counting, so a completion from before the reset stays
        // stale even if the same copy is started again.
        self.copy_tag = tag;
    }

    /// True while enabled and not halted by an error.
    pub fn running(&self) -> bool {
        self.enabled && self.error == DmaError::None
    }

    /// Current value of the STATUS register.
    pub fn status(&self) -> u32 {
        let mut s = 0;
        if self.running() {
            s |= STATUS_RUNNING;
        }
        if self.tx_cur.is_some()
            || self.rx_cur.is_some()
            || self.copy_busy
            || self.pins.iter().any(Option::is_some)
        {
            s |= STATUS_BUSY;
        }
        if self.error != DmaError::None {
            s |= STATUS_ERROR;
        }
        if self.copy_busy {
            s |= STATUS_COPY;
        }
        s
    }

    /// Error the engine halted on ([`DmaError::None`] if it did not).
    pub fn error(&self) -> DmaError {
        self.error
    }

    /// IOVA reported with the error.
    pub fn error_iova(&self) -> u64 {
        self.error_iova
    }

    /// Enabled interrupt causes that are pending, as INT_* bits.
    pub fn pending_mask(&self) -> u32 {
        self.int_status & self.int_enable
    }

    /// Level of the engine's interrupt output.
    pub fn irq_asserted(&self) -> bool {
        self.pending_mask() != 0
    }

    /// The pin table, indexed by [`PinSlot::index`](super::PinSlot::index).
    pub fn pins(&self) -> &[Option<PinRange>; MAX_PINS] {
        &self.pins
    }

    /// Empties the pin table and returns everything that was in it, for
    /// device close or reset when the driver unpins directly. Nothing else
    /// changes: if the engine still needs a range, the next plan pins it
    /// again, because the memory itself is still mapped.
    pub fn take_all_pins(&mut self) -> UnpinList {
        let list = UnpinList { entries: self.pins };
        self.pins = [None; MAX_PINS];
        list
    }

    /// Handles the IOMMU unmapping `[iova, iova + len)`: forgets and returns
    /// every pinned range that overlaps it and, if there was one, halts the
    /// engine with [`DmaError::Unmapped`] and the lowest overlapping IOVA.
    /// The driver must unpin exactly the returned ranges.
    pub fn dma_unmap(&mut self, iova: u64, len: u64) -> UnpinList {
        let decision = unmap_decision(&self.pins, iova, len);
        for (entry, hit) in self.pins.iter_mut().zip(decision.unpin.entries.iter()) {
            if hit.is_some() {
                *entry = None;
            }
        }
        if let Some(at) = decision.first_iova {
            self.halt(DmaError::Unmapped, at);
        }
        decision.unpin
    }

    pub(super) fn ring(&self, ring: Ring) -> &RingRegs {
        match ring {
            Ring::Tx => &self.tx,
            Ring::Rx => &self.rx,
        }
    }

    pub(super) fn ring_mut(&mut self, ring: Ring) -> &mut RingRegs {
        match ring {
            Ring::Tx => &mut self.tx,
            Ring::Rx => &mut self.rx,
        }
    }

    pub(super) fn cur(&self, ring: Ring) -> Option<&InFlight> {
        match ring {
            Ring::Tx => self.tx_cur.as_ref(),
            Ring::Rx => self.rx_cur.as_ref(),
        }
    }

    pub(super) fn cur_mut(&mut self, ring: Ring) -> &mut Option<InFlight> {
        match ring {
            Ring::Tx => &mut self.tx_cur,
            Ring::Rx => &mut self.rx_cur,
        }
    }

    /// Stops processing after an error. In-flight descriptors are abandoned
    /// without write-back; pins are released by the following plans. Only
    /// the first error is kept so the guest sees the root cause.
    pub(super) fn halt(&mut self, err: DmaError, iova: u64) {
        if self.error == DmaError::None {
            self.error = err;
            self.error_iova = iova;
        }
        self.tx_cur = None;
        self.rx_cur = None;
        self.copy_busy = false;
        self.int_status |= INT_ERROR;
    }
}
