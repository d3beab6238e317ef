//! The two descriptor rings: ring registers, geometry rules and the descriptor in flight.

use super::descriptor::{Descriptor, DESC_SIZE};
use super::pins::{PinRange, PinSlot, PAGE_SIZE};
use super::registers::{INT_RX_DONE, INT_TX_DONE};

/// Largest number of entries of one ring, so that a ring is one page.
pub const MAX_RING_ENTRIES: u32 = 256;
// The largest ring, aligned to its own size, lies inside one page.
const _: () = assert!(MAX_RING_ENTRIES as u64 * DESC_SIZE as u64 <= PAGE_SIZE);

/// One of the two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Transmit: guest buffers to UART.
    Tx,
    /// Receive: UART to guest buffers.
    Rx,
}

impl Ring {
    /// Slot holding the ring's page.
    pub const fn ring_slot(self) -> PinSlot {
        match self {
            Ring::Tx => PinSlot::TxRing,
            Ring::Rx => PinSlot::RxRing,
        }
    }

    /// Slot holding the current buffer's pages.
    pub const fn buf_slot(self) -> PinSlot {
        match self {
            Ring::Tx => PinSlot::TxBuf,
            Ring::Rx => PinSlot::RxBuf,
        }
    }

    /// Interrupt status bit of a completion on this ring.
    pub const fn done_bit(self) -> u32 {
        match self {
            Ring::Tx => INT_TX_DONE,
            Ring::Rx => INT_RX_DONE,
        }
    }
}

/// Programmable state of one ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct RingRegs {
    pub(super) base: u64,
    pub(super) size: u32,
    pub(super) head: u32,
    pub(super) tail: u32,
    /// TAIL as sampled by the last doorbell (or enable): the engine only
    /// consumes descriptors before this index.
    pub(super) avail: u32,
}

/// Page the driver has to pin for a ring of `size` entries at `base`, or
/// `None` if the ring is disabled (size 0) or malformed. A well-formed ring
/// is naturally aligned and at most one page long, so this is always one
/// page.
pub fn ring_pin_range(base: u64, size: u32) -> Option<PinRange> {
    if size == 0 || !ring_config_valid(base, size) {
        return None;
    }
    PinRange::covering(base, u64::from(size).checked_mul(DESC_SIZE as u64)?)
}

impl RingRegs {
    /// Page holding the ring, if the ring is enabled and well formed.
    pub(super) fn range(&self) -> Option<PinRange> {
        ring_pin_range(self.base, self.size)
    }

    /// IOVA of the descriptor at ring index `idx`.
    pub(super) fn desc_iova(&self, idx: u32) -> Option<u64> {
        let slot = idx & self.size.checked_sub(1)?;
        self.base
            .checked_add(u64::from(slot).checked_mul(DESC_SIZE as u64)?)
    }

    /// Descriptors made available by the last doorbell and not consumed yet.
    pub(super) fn pending(&self) -> u32 {
        self.avail.wrapping_sub(self.head)
    }
}

/// Whether a ring of `size` entries at `base` is acceptable: disabled (size
/// 0), or a power of two up to 256 entries aligned to its own byte size so
/// that it lies inside one page.
pub(super) fn ring_config_valid(base: u64, size: u32) -> bool {
    if size == 0 {
        return true;
    }
    if !size.is_power_of_two() || size > MAX_RING_ENTRIES {
        return false;
    }
    let bytes = u64::from(size).saturating_mul(DESC_SIZE as u64);
    base & bytes.wrapping_sub(1) == 0 && base.checked_add(bytes.wrapping_sub(1)).is_some()
}

/// The descriptor a ring is working on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InFlight {
    /// IOVA of the descriptor in the ring (the entry at HEAD).
    pub(super) desc_iova: u64,
    /// The descriptor as fetched and validated.
    pub(super) desc: Descriptor,
    /// Bytes transferred so far.
    pub(super) done: u32,
}

impl InFlight {
    /// Bytes of the descriptor's buffer not transferred yet.
    pub(super) fn remaining(&self) -> u32 {
        self.desc.len.saturating_sub(self.done)
    }
}
