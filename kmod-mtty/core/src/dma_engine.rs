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
//! bytes, so it spans at most [`MAX_PIN_PAGES`] = 2 pages. The driver thus
//! needs at most 8 `struct page` pointers per device, in fixed arrays.
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

/// Page size the engine plans pins in.
pub const PAGE_SIZE: u64 = 4096;
/// Mask of the offset bits inside a page.
const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Size of one descriptor in bytes.
pub const DESC_SIZE: usize = 16;
/// Largest number of entries of one ring, so that a ring is one page.
pub const MAX_RING_ENTRIES: u32 = 256;
/// Largest buffer a descriptor may describe.
pub const MAX_BUFFER_LEN: u32 = 4096;
/// Largest number of pages of one pinned range.
pub const MAX_PIN_PAGES: u32 = 2;
/// Number of pin slots (ranges the engine may hold pinned at once).
pub const MAX_PINS: usize = 4;
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
/// Register: copy length in bytes, 1..=[`MAX_COPY_LEN`].
pub const REG_COPY_LEN: u32 = 0x90;
/// Largest length of one copy command (64 KiB).
pub const MAX_COPY_LEN: u32 = 65536;
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
/// Descriptor flags: written back by the device on completion.
pub const DESC_DONE: u32 = 0x1;

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
    /// A copy command with length 0 or above [`MAX_COPY_LEN`], or with a
    /// range that runs past the end of the IOVA space.
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

/// Why a BAR2 access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// Width other than 4 or 8 bytes.
    BadWidth,
    /// Offset not a multiple of the width.
    Misaligned,
    /// The access does not fit inside the BAR.
    OutOfRange,
}

/// Why a descriptor was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescError {
    /// Length 0.
    ZeroLength,
    /// Length above [`MAX_BUFFER_LEN`].
    TooLong,
    /// A flag bit other than [`DESC_DONE`] is set.
    ReservedFlags,
    /// The buffer runs past the last IOVA.
    AddressOverflow,
}

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

/// One ring entry as stored in guest memory (16 bytes, little-endian).
///
/// | offset | size | field                                                    |
/// |--------|------|----------------------------------------------------------|
/// | 0      | 8    | buffer IOVA                                              |
/// | 8      | 4    | length: bytes to send / buffer capacity; on completion the device writes the number of bytes transferred |
/// | 12     | 4    | flags: bit 0 DONE (written by the device), bits 31:1 reserved, must be 0 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// IOVA of the data buffer.
    pub addr: u64,
    /// Length of the data buffer in bytes.
    pub len: u32,
    /// Flag bits.
    pub flags: u32,
}

impl Descriptor {
    /// Decodes the 16 bytes of a ring entry; any bit pattern decodes.
    pub fn parse(raw: &[u8; DESC_SIZE]) -> Self {
        let mut r = super::wire::Reader::new(raw);
        Descriptor {
            addr: r.u64(),
            len: r.u32(),
            flags: r.u32(),
        }
    }

    /// Encodes the descriptor as the 16 bytes of a ring entry.
    pub fn encode(&self) -> [u8; DESC_SIZE] {
        let mut out = [0u8; DESC_SIZE];
        let mut w = super::wire::Writer::new(&mut out);
        w.u64(self.addr);
        w.u32(self.len);
        w.u32(self.flags);
        let _ = w.finish();
        out
    }

    /// Checks a descriptor posted by the guest.
    pub fn validate(&self) -> Result<(), DescError> {
        if self.len == 0 {
            return Err(DescError::ZeroLength);
        }
        if self.len > MAX_BUFFER_LEN {
            return Err(DescError::TooLong);
        }
        if self.flags & !DESC_DONE != 0 {
            return Err(DescError::ReservedFlags);
        }
        if self.last_byte().is_none() {
            return Err(DescError::AddressOverflow);
        }
        Ok(())
    }

    /// Page range covering the buffer, for a valid descriptor.
    pub fn pin_range(&self) -> Option<PinRange> {
        PinRange::covering(self.addr, u64::from(self.len))
    }

    fn last_byte(&self) -> Option<u64> {
        self.addr.checked_add(u64::from(self.len.checked_sub(1)?))
    }
}

/// A page-aligned IOVA range the engine holds (or wants) pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRange {
    /// First IOVA, page aligned.
    pub iova: u64,
    /// Number of pages, 1 to [`MAX_PIN_PAGES`].
    pub pages: u32,
}

impl PinRange {
    /// Smallest page range covering `len` (>0) bytes at `addr`, if it does
    /// not wrap the IOVA space and has at most [`MAX_PIN_PAGES`] pages.
    pub fn covering(addr: u64, len: u64) -> Option<Self> {
        let last = addr.checked_add(len.checked_sub(1)?)?;
        let first_page = addr >> PAGE_SHIFT;
        let last_page = last >> PAGE_SHIFT;
        let pages = u32::try_from(last_page.checked_sub(first_page)?.checked_add(1)?).ok()?;
        if pages > MAX_PIN_PAGES {
            return None;
        }
        Some(PinRange {
            iova: addr & !PAGE_MASK,
            pages,
        })
    }

    /// Last IOVA of the range (inclusive), `None` if the range is malformed.
    pub fn last(&self) -> Option<u64> {
        let bytes = u64::from(self.pages).checked_mul(PAGE_SIZE)?;
        self.iova.checked_add(bytes.checked_sub(1)?)
    }

    /// Lowest IOVA shared by this range and `[iova, iova + len)`, if any.
    /// A range running past the top of the IOVA space is clipped there.
    pub fn first_overlap(&self, iova: u64, len: u64) -> Option<u64> {
        let unmap_last = iova.saturating_add(len.checked_sub(1)?);
        let last = self.last()?;
        if self.iova <= unmap_last && iova <= last {
            Some(self.iova.max(iova))
        } else {
            None
        }
    }

    /// Page index and in-page offset of `addr` inside this range.
    pub fn locate(&self, addr: u64) -> Option<(u32, u32)> {
        if addr < self.iova || addr > self.last()? {
            return None;
        }
        let rel = addr.checked_sub(self.iova)?;
        let page = u32::try_from(rel >> PAGE_SHIFT).ok()?;
        let offset = u32::try_from(rel & PAGE_MASK).ok()?;
        Some((page, offset))
    }
}

/// The four pin slots, one per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSlot {
    /// Page of the transmit ring.
    TxRing = 0,
    /// Page of the receive ring.
    RxRing = 1,
    /// Pages of the current transmit buffer.
    TxBuf = 2,
    /// Pages of the current receive buffer.
    RxBuf = 3,
}

impl PinSlot {
    /// All slots in the order the engine reconciles them.
    pub const ALL: [PinSlot; MAX_PINS] =
        [PinSlot::TxRing, PinSlot::RxRing, PinSlot::TxBuf, PinSlot::RxBuf];

    /// Index of the slot in fixed arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

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

/// A byte position inside a pinned range, resolved to page and offset so
/// the driver can map exactly one page for the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Slot whose pinned pages hold the bytes.
    pub slot: PinSlot,
    /// IOVA of the first byte.
    pub iova: u64,
    /// Index of the page inside the slot's range.
    pub page: u32,
    /// Byte offset inside that page.
    pub offset: u32,
}

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
    /// `CopyWriteFailed`. The ranges are checked by [`check_copy`].
    Copy {
        /// Source IOVA.
        src: u64,
        /// Destination IOVA.
        dst: u64,
        /// Bytes, 1..=[`MAX_COPY_LEN`].
        len: u32,
        /// Identifies this copy command among those the engine accepted,
        /// so a completion outliving a reset cannot finish a later copy.
        tag: u32,
    },
}

/// Result of an action, reported through [`DmaEngine::complete`].
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

/// Pinned ranges handed back to the driver for unpinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpinList {
    entries: [Option<PinRange>; MAX_PINS],
}

impl UnpinList {
    /// Range released from `slot`, if any.
    pub fn get(&self, slot: PinSlot) -> Option<PinRange> {
        self.entries.get(slot.index()).copied().flatten()
    }

    /// Released ranges with their slots.
    pub fn iter(&self) -> impl Iterator<Item = (PinSlot, PinRange)> + '_ {
        PinSlot::ALL
            .iter()
            .zip(self.entries.iter())
            .filter_map(|(s, r)| r.map(|r| (*s, r)))
    }

    /// True if nothing was released.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(Option::is_none)
    }
}

/// Outcome of [`unmap_decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapDecision {
    /// Pinned ranges overlapping the unmapped range, by slot.
    pub unpin: UnpinList,
    /// Lowest IOVA that is both pinned and unmapped (the ERROR_IOVA value).
    pub first_iova: Option<u64>,
}

/// Which of the pinned ranges `pins` overlap the unmapped range
/// `[iova, iova + len)` (clipped at the top of the IOVA space), as a pure
/// function so it can be checked on its own. [`DmaEngine::dma_unmap`] applies
/// it to the engine's pin table.
pub fn unmap_decision(pins: &[Option<PinRange>; MAX_PINS], iova: u64, len: u64) -> UnmapDecision {
    let mut unpin = UnpinList::default();
    let mut first_iova: Option<u64> = None;
    for (entry, out) in pins.iter().zip(unpin.entries.iter_mut()) {
        if let Some(range) = *entry {
            if let Some(at) = range.first_overlap(iova, len) {
                *out = Some(range);
                first_iova = Some(first_iova.map_or(at, |f| f.min(at)));
            }
        }
    }
    UnmapDecision { unpin, first_iova }
}

/// Programmable state of one ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RingRegs {
    base: u64,
    size: u32,
    head: u32,
    tail: u32,
    /// TAIL as sampled by the last doorbell (or enable): the engine only
    /// consumes descriptors before this index.
    avail: u32,
}

/// Page the driver has to pin for a ring of `size` entries at `base`, or
/// `None` if the ring is disabled (size 0) or malformed. A well-formed ring
/// is naturally aligned and at most 4 KiB, so this is always one page.
pub fn ring_pin_range(base: u64, size: u32) -> Option<PinRange> {
    if size == 0 || !ring_config_valid(base, size) {
        return None;
    }
    PinRange::covering(base, u64::from(size).checked_mul(DESC_SIZE as u64)?)
}

impl RingRegs {
    /// Page holding the ring, if the ring is enabled and well formed.
    fn range(&self) -> Option<PinRange> {
        ring_pin_range(self.base, self.size)
    }

    /// IOVA of the descriptor at ring index `idx`.
    fn desc_iova(&self, idx: u32) -> Option<u64> {
        let slot = idx & self.size.checked_sub(1)?;
        self.base
            .checked_add(u64::from(slot).checked_mul(DESC_SIZE as u64)?)
    }

    fn pending(&self) -> u32 {
        self.avail.wrapping_sub(self.head)
    }
}

/// Whether a ring of `size` entries at `base` is acceptable: disabled (size
/// 0), or a power of two up to 256 entries aligned to its own byte size so
/// that it lies inside one page.
fn ring_config_valid(base: u64, size: u32) -> bool {
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
struct InFlight {
    /// IOVA of the descriptor in the ring (the entry at HEAD).
    desc_iova: u64,
    /// The descriptor as fetched and validated.
    desc: Descriptor,
    /// Bytes transferred so far.
    done: u32,
}

impl InFlight {
    fn remaining(&self) -> u32 {
        self.desc.len.saturating_sub(self.done)
    }
}

/// The copy command's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CopyRegs {
    src: u64,
    dst: u64,
    len: u32,
}

/// Length in bytes of the snapshot produced by [`DmaEngine::save_state`].
pub const STATE_LEN: usize = 160;

/// The DMA engine: register file, ring progress and pin table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaEngine {
    enabled: bool,
    error: DmaError,
    error_iova: u64,
    int_status: u32,
    int_enable: u32,
    tx: RingRegs,
    rx: RingRegs,
    tx_cur: Option<InFlight>,
    rx_cur: Option<InFlight>,
    pins: [Option<PinRange>; MAX_PINS],
    /// COPY_SRC, COPY_DST, COPY_LEN.
    copy: CopyRegs,
    /// A copy was accepted by the doorbell and has not finished: the copy
    /// registers are frozen and `plan` asks for it.
    copy_busy: bool,
    /// Tag of the last accepted copy (not part of the snapshot).
    copy_tag: u32,
}

impl Default for DmaEngine {
    fn default() -> Self {
        DmaEngine::new()
    }
}

/// Bytes from `addr` to the end of its page, as a `u32`.
fn page_remainder(addr: u64) -> u32 {
    // The result is in 1..=4096, so the conversion cannot fail.
    u32::try_from(PAGE_SIZE.saturating_sub(addr & PAGE_MASK)).unwrap_or(1)
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

    /// The pin table, indexed by [`PinSlot::index`].
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

    /// Reads `width` (4 or 8) bytes at `offset`, little-endian. An 8-byte
    /// access is the two 4-byte registers at `offset` and `offset + 4`.
    pub fn read(&self, offset: u32, width: u8) -> Result<u64, AccessError> {
        check_access(offset, width)?;
        let lo = u64::from(self.read32(offset));
        if width == 8 {
            let hi = u64::from(self.read32(offset.wrapping_add(4)));
            Ok(lo | hi << 32)
        } else {
            Ok(lo)
        }
    }

    /// Writes `width` (4 or 8) bytes of `val` at `offset`. An 8-byte access
    /// writes the low register first, then the high one.
    pub fn write(&mut self, offset: u32, width: u8, val: u64) -> Result<(), AccessError> {
        check_access(offset, width)?;
        let [l0, l1, l2, l3, h0, h1, h2, h3] = val.to_le_bytes();
        self.write32(offset, u32::from_le_bytes([l0, l1, l2, l3]));
        if width == 8 {
            self.write32(offset.wrapping_add(4), u32::from_le_bytes([h0, h1, h2, h3]));
        }
        Ok(())
    }

    /// Decides the next step. Pure: calling it twice gives the same answer.
    pub fn plan(&self, env: &EngineEnv) -> Action {
        // Release what is no longer needed first, bus master or not: it is a
        // host-side operation and keeps the pin table minimal.
        for slot in PinSlot::ALL {
            if let Some(held) = self.pins.get(slot.index()).copied().flatten() {
                let wanted = self.wanted_pin(slot, env).map(|(r, _)| r);
                if wanted != Some(held) {
                    return Action::Unpin { slot, range: held };
                }
            }
        }
        if !env.bus_master {
            return Action::Idle;
        }
        // An accepted copy goes first: it is one step, and the rings may
        // keep each other busy for a long time.
        if self.copy_busy {
            return Action::Copy {
                src: self.copy.src,
                dst: self.copy.dst,
                len: self.copy.len,
                tag: self.copy_tag,
            };
        }
        if let Some(a) = self.plan_tx(env) {
            return a;
        }
        if let Some(a) = self.plan_rx(env) {
            return a;
        }
        Action::Idle
    }

    /// Applies the result of `action`, which must be what [`DmaEngine::plan`]
    /// returned for the current state.
    pub fn complete(&mut self, action: &Action, result: Completion) -> Result<(), StaleCompletion> {
        match (*action, result) {
            (Action::Pin { slot, range, .. }, Completion::Pinned) => {
                let entry = self.pins.get_mut(slot.index()).ok_or(StaleCompletion)?;
                if entry.is_some() {
                    return Err(StaleCompletion);
                }
                *entry = Some(range);
                Ok(())
            }
            (Action::Pin { slot, range, target }, Completion::PinFailed) => {
                if self.wants_pin_regardless_of_env(slot) != Some(range) {
                    return Err(StaleCompletion);
                }
                self.halt(DmaError::PinFailed, target);
                Ok(())
            }
            (Action::Unpin { slot, range }, Completion::Unpinned) => {
                let entry = self.pins.get_mut(slot.index()).ok_or(StaleCompletion)?;
                if *entry != Some(range) {
                    return Err(StaleCompletion);
                }
                *entry = None;
                Ok(())
            }
            (Action::ReadDescriptor { ring, at }, Completion::DescriptorRead(raw)) => {
                let regs = self.ring(ring);
                if !self.running()
                    || self.cur(ring).is_some()
                    || regs.pending() == 0
                    || regs.desc_iova(regs.head) != Some(at.iova)
                {
                    return Err(StaleCompletion);
                }
                let desc = Descriptor::parse(&raw);
                match desc.validate() {
                    Ok(()) => {
                        *self.cur_mut(ring) = Some(InFlight {
                            desc_iova: at.iova,
                            desc,
                            done: 0,
                        });
                    }
                    Err(_) => self.halt(DmaError::BadDescriptor, at.iova),
                }
                Ok(())
            }
            (Action::ReadDescriptor { ring, at }, Completion::Failed) => {
                let regs = self.ring(ring);
                if !self.running() || regs.desc_iova(regs.head) != Some(at.iova) {
                    return Err(StaleCompletion);
                }
                self.halt(DmaError::AccessFault, at.iova);
                Ok(())
            }
            (Action::WriteDescriptor { ring, at, .. }, Completion::DescriptorWritten) => {
                match self.cur(ring) {
                    Some(c) if c.desc_iova == at.iova => {}
                    _ => return Err(StaleCompletion),
                }
                *self.cur_mut(ring) = None;
                let regs = self.ring_mut(ring);
                regs.head = regs.head.wrapping_add(1);
                self.int_status |= ring.done_bit();
                Ok(())
            }
            (Action::WriteDescriptor { ring, at, .. }, Completion::Failed) => {
                match self.cur(ring) {
                    Some(c) if c.desc_iova == at.iova => {}
                    _ => return Err(StaleCompletion),
                }
                self.halt(DmaError::AccessFault, at.iova);
                Ok(())
            }
            (Action::TxToUart { at, len }, r) => self.complete_transfer(Ring::Tx, at, len, r),
            (Action::UartToRx { at, len }, r) => self.complete_transfer(Ring::Rx, at, len, r),
            (Action::Copy { src, dst, len, tag }, r) => {
                if !self.copy_busy || self.copy_tag != tag || self.copy != (CopyRegs { src, dst, len }) {
                    return Err(StaleCompletion);
                }
                match r {
                    Completion::Copied => {
                        self.copy_busy = false;
                        self.int_status |= INT_COPY_DONE;
                    }
                    Completion::CopyReadFailed => self.halt(DmaError::CopyFault, src),
                    Completion::CopyWriteFailed => self.halt(DmaError::CopyFault, dst),
                    _ => return Err(StaleCompletion),
                }
                Ok(())
            }
            _ => Err(StaleCompletion),
        }
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

    /// Serializes the registers and ring progress. Pins are host resources
    /// and are not part of the state: the destination pins afresh.
    pub fn save_state(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        // The layout is exactly STATE_LEN bytes; a unit test checks it.
        let _ = self.encode(&mut out);
        out
    }

    /// Writes the snapshot layout, returning the number of bytes used.
    fn encode(&self, out: &mut [u8; STATE_LEN]) -> Option<usize> {
        let mut w = super::wire::Writer::new(out);
        w.bool(self.enabled);
        w.u32(self.error as u32);
        w.u64(self.error_iova);
        w.u32(self.int_status);
        w.u32(self.int_enable);
        for regs in [&self.tx, &self.rx] {
            w.u64(regs.base);
            w.u32(regs.size);
            w.u32(regs.head);
            w.u32(regs.tail);
            w.u32(regs.avail);
        }
        for cur in [&self.tx_cur, &self.rx_cur] {
            let c = cur.unwrap_or(InFlight {
                desc_iova: 0,
                desc: Descriptor {
                    addr: 0,
                    len: 0,
                    flags: 0,
                },
                done: 0,
            });
            w.bool(cur.is_some());
            w.u64(c.desc_iova);
            w.u64(c.desc.addr);
            w.u32(c.desc.len);
            w.u32(c.desc.flags);
            w.u32(c.done);
        }
        w.zeros(1);
        w.u64(self.copy.src);
        w.u64(self.copy.dst);
        w.u32(self.copy.len);
        w.bool(self.copy_busy);
        w.zeros(11);
        w.finish()
    }

    /// Rebuilds an engine from [`DmaEngine::save_state`] output, refusing
    /// images that violate the engine's invariants. The pin table is empty.
    pub fn restore_state(image: &[u8; STATE_LEN]) -> Option<Self> {
        let mut r = super::wire::Reader::new(image);
        let mut e = DmaEngine::new();
        e.enabled = r.bool();
        let code = r.u32();
        e.error_iova = r.u64();
        e.int_status = r.u32();
        e.int_enable = r.u32();
        let mut rings = [RingRegs::default(); 2];
        for regs in rings.iter_mut() {
            regs.base = r.u64();
            regs.size = r.u32();
            regs.head = r.u32();
            regs.tail = r.u32();
            regs.avail = r.u32();
        }
        let [tx, rx] = rings;
        e.tx = tx;
        e.rx = rx;
        let mut curs = [None; 2];
        for cur in curs.iter_mut() {
            let present = r.bool();
            let c = InFlight {
                desc_iova: r.u64(),
                desc: Descriptor {
                    addr: r.u64(),
                    len: r.u32(),
                    flags: r.u32(),
                },
                done: r.u32(),
            };
            if present {
                *cur = Some(c);
            } else {
                r.check(c.desc_iova == 0 && c.desc.addr == 0 && c.desc.len == 0);
                r.check(c.desc.flags == 0 && c.done == 0);
            }
        }
        let [tx_cur, rx_cur] = curs;
        e.tx_cur = tx_cur;
        e.rx_cur = rx_cur;
        r.zeros(1);
        e.copy = CopyRegs {
            src: r.u64(),
            dst: r.u64(),
            len: r.u32(),
        };
        e.copy_busy = r.bool();
        r.zeros(11);
        if e.copy_busy {
            r.check(check_copy(e.copy.src, e.copy.dst, e.copy.len).is_ok());
        }
        match DmaError::from_u32(code) {
            Some(err) => e.error = err,
            None => r.reject(),
        }
        r.check(e.int_status & !INT_MASK == 0 && e.int_enable & !INT_MASK == 0);
        // A halt cancels the copy.
        r.check(!e.copy_busy || e.error == DmaError::None);
        let running = e.running();
        for ring in [Ring::Tx, Ring::Rx] {
            let regs = *e.ring(ring);
            if running {
                r.check(ring_config_valid(regs.base, regs.size));
                r.check(regs.size == 0 || regs.pending() <= regs.size);
            }
            if let Some(c) = e.cur(ring) {
                r.check(e.error == DmaError::None);
                r.check(running || c.done > 0);
                r.check(regs.size != 0 && ring_config_valid(regs.base, regs.size));
                r.check(regs.pending() != 0 && regs.pending() <= regs.size);
                r.check(regs.desc_iova(regs.head) == Some(c.desc_iova));
                r.check(c.desc.validate().is_ok() && c.done <= c.desc.len);
            }
        }
        r.finish().filter(|&n| n == STATE_LEN).map(|_| e)
    }

    fn ring(&self, ring: Ring) -> &RingRegs {
        match ring {
            Ring::Tx => &self.tx,
            Ring::Rx => &self.rx,
        }
    }

    fn ring_mut(&mut self, ring: Ring) -> &mut RingRegs {
        match ring {
            Ring::Tx => &mut self.tx,
            Ring::Rx => &mut self.rx,
        }
    }

    fn cur(&self, ring: Ring) -> Option<&InFlight> {
        match ring {
            Ring::Tx => self.tx_cur.as_ref(),
            Ring::Rx => self.rx_cur.as_ref(),
        }
    }

    fn cur_mut(&mut self, ring: Ring) -> &mut Option<InFlight> {
        match ring {
            Ring::Tx => &mut self.tx_cur,
            Ring::Rx => &mut self.rx_cur,
        }
    }

    /// Stops processing after an error. In-flight descriptors are abandoned
    /// without write-back; pins are released by the following plans. Only
    /// the first error is kept so the guest sees the root cause.
    fn halt(&mut self, err: DmaError, iova: u64) {
        if self.error == DmaError::None {
            self.error = err;
            self.error_iova = iova;
        }
        self.tx_cur = None;
        self.rx_cur = None;
        self.copy_busy = false;
        self.int_status |= INT_ERROR;
    }

    /// Accepts the copy in the copy registers, or halts with
    /// [`DmaError::BadCopy`]. A doorbell while a copy is busy is ignored.
    fn doorbell_copy(&mut self) {
        if self.copy_busy {
            return;
        }
        let CopyRegs { src, dst, len } = self.copy;
        match check_copy(src, dst, len) {
            Ok(()) => {
                self.copy_busy = true;
                self.copy_tag = self.copy_tag.wrapping_add(1);
            }
            Err(err) => self.halt(DmaError::BadCopy, err.iova(src, dst)),
        }
    }

    /// Samples TAIL of `ring` as the new limit of available descriptors.
    ///
    /// TAIL may not run more than a ring ahead of HEAD, and it may not be
    /// moved back over the descriptor the engine is working on (that one
    /// belongs to the device until it is written back).
    fn doorbell(&mut self, ring: Ring) {
        let in_flight = self.cur(ring).is_some();
        let regs = self.ring_mut(ring);
        if regs.size == 0 {
            return;
        }
        regs.avail = regs.tail;
        let (pending, size, base) = (regs.pending(), regs.size, regs.base);
        if pending > size || (in_flight && pending == 0) {
            self.halt(DmaError::BadIndex, base);
        }
    }

    fn start(&mut self) {
        for ring in [Ring::Tx, Ring::Rx] {
            let regs = self.ring(ring);
            if !ring_config_valid(regs.base, regs.size) {
                let base = regs.base;
                self.halt(DmaError::BadRing, base);
                return;
            }
        }
        self.doorbell(Ring::Tx);
        self.doorbell(Ring::Rx);
    }

    fn stop(&mut self) {
        // Descriptors that moved no byte yet are simply left in the ring;
        // the others are completed with their partial length by `plan`.
        for cur in [&mut self.tx_cur, &mut self.rx_cur] {
            if cur.is_some_and(|c| c.done == 0) {
                *cur = None;
            }
        }
    }

    fn read32(&self, offset: u32) -> u32 {
        let ring_reg = |regs: &RingRegs, off: u32| -> u32 {
            let [b0, b1, b2, b3, b4, b5, b6, b7] = regs.base.to_le_bytes();
            match off {
                RING_BASE => u32::from_le_bytes([b0, b1, b2, b3]),
                0x04 => u32::from_le_bytes([b4, b5, b6, b7]),
                RING_SIZE => regs.size,
                RING_HEAD => regs.head,
                RING_TAIL => regs.tail,
                _ => 0,
            }
        };
        let [e0, e1, e2, e3, e4, e5, e6, e7] = self.error_iova.to_le_bytes();
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match offset {
            REG_ID => ID_VALUE,
            REG_VERSION => VERSION_VALUE,
            REG_CTRL => u32::from(self.enabled),
            REG_STATUS => self.status(),
            REG_ERROR_CODE => self.error as u32,
            REG_ERROR_IOVA => u32::from_le_bytes([e0, e1, e2, e3]),
            0x1C => u32::from_le_bytes([e4, e5, e6, e7]),
            REG_INT_STATUS => self.int_status,
            REG_INT_ENABLE => self.int_enable,
            0x40..=0x5F => ring_reg(&self.tx, offset.wrapping_sub(REG_TX_RING)),
            0x60..=0x7F => ring_reg(&self.rx, offset.wrapping_sub(REG_RX_RING)),
            REG_COPY_SRC => lo(self.copy.src),
            0x84 => hi(self.copy.src),
            REG_COPY_DST => lo(self.copy.dst),
            0x8C => hi(self.copy.dst),
            REG_COPY_LEN => self.copy.len,
            // DOORBELL and reserved space read as zero.
            _ => 0,
        }
    }

    fn write32(&mut self, offset: u32, val: u32) {
        match offset {
            REG_CTRL => {
                if val & CTRL_RESET != 0 {
                    self.reset();
                    return;
                }
                let enable = val & CTRL_ENABLE != 0;
                if enable && !self.enabled {
                    self.enabled = true;
                    if self.error == DmaError::None {
                        self.start();
                    }
                } else if !enable && self.enabled {
                    self.enabled = false;
                    self.stop();
                }
            }
            REG_DOORBELL => {
                if self.running() && val & DOORBELL_TX != 0 {
                    self.doorbell(Ring::Tx);
                }
                if self.running() && val & DOORBELL_RX != 0 {
                    self.doorbell(Ring::Rx);
                }
                if self.running() && val & DOORBELL_COPY != 0 {
                    self.doorbell_copy();
                }
            }
            REG_INT_STATUS => self.int_status &= !val,
            REG_INT_ENABLE => self.int_enable = val & INT_MASK,
            0x40..=0x5F => self.write_ring(Ring::Tx, offset.wrapping_sub(REG_TX_RING), val),
            0x60..=0x7F => self.write_ring(Ring::Rx, offset.wrapping_sub(REG_RX_RING), val),
            // The copy registers are frozen while a copy is busy.
            REG_COPY_SRC..=REG_COPY_LEN if !self.copy_busy => self.write_copy(offset, val),
            // ID, VERSION, STATUS, ERROR_* are read-only; the rest is reserved.
            _ => {}
        }
    }

    fn write_copy(&mut self, offset: u32, val: u32) {
        let set_lo = |v: u64| (v & !0xFFFF_FFFF) | u64::from(val);
        let set_hi = |v: u64| (v & 0xFFFF_FFFF) | u64::from(val) << 32;
        let c = &mut self.copy;
        match offset {
            REG_COPY_SRC => c.src = set_lo(c.src),
            0x84 => c.src = set_hi(c.src),
            REG_COPY_DST => c.dst = set_lo(c.dst),
            0x8C => c.dst = set_hi(c.dst),
            REG_COPY_LEN => c.len = val,
            _ => {}
        }
    }

    fn write_ring(&mut self, ring: Ring, off: u32, val: u32) {
        // The ring's geometry is frozen while the engine may use it, so the
        // pinned ring page and the in-flight descriptor stay valid.
        let frozen = self.enabled || self.cur(ring).is_some();
        let regs = self.ring_mut(ring);
        let [b0, b1, b2, b3, b4, b5, b6, b7] = regs.base.to_le_bytes();
        let [v0, v1, v2, v3] = val.to_le_bytes();
        match off {
            RING_BASE if !frozen => {
                regs.base = u64::from_le_bytes([v0, v1, v2, v3, b4, b5, b6, b7]);
            }
            0x04 if !frozen => {
                regs.base = u64::from_le_bytes([b0, b1, b2, b3, v0, v1, v2, v3]);
            }
            RING_SIZE if !frozen => regs.size = val,
            RING_TAIL => regs.tail = val,
            // HEAD is owned by the device.
            _ => {}
        }
    }

    /// The pin `slot` should hold now, with the IOVA to report if pinning
    /// fails.
    fn wanted_pin(&self, slot: PinSlot, env: &EngineEnv) -> Option<(PinRange, u64)> {
        match slot {
            PinSlot::TxRing | PinSlot::RxRing => {
                let ring = if slot == PinSlot::TxRing { Ring::Tx } else { Ring::Rx };
                let regs = self.ring(ring);
                // The ring page is needed while running, and while stopping
                // for the write-back of a partially done descriptor.
                if self.running() || self.cur(ring).is_some() {
                    regs.range().map(|r| (r, regs.base))
                } else {
                    None
                }
            }
            PinSlot::TxBuf => {
                let c = self.tx_cur.filter(|c| self.running() && c.done < c.desc.len)?;
                c.desc.pin_range().map(|r| (r, c.desc.addr))
            }
            PinSlot::RxBuf => {
                let c = self.rx_cur.filter(|c| self.rx_filling(c, env))?;
                c.desc.pin_range().map(|r| (r, c.desc.addr))
            }
        }
    }

    /// The range `slot` may want in some environment, used to recognize a
    /// `PinFailed` completion that is still relevant.
    fn wants_pin_regardless_of_env(&self, slot: PinSlot) -> Option<PinRange> {
        let any = EngineEnv {
            bus_master: true,
            rx_fifo_len: 1,
            rx_fifo_space: 1,
        };
        self.wanted_pin(slot, &any).map(|(r, _)| r)
    }

    /// A receive descriptor keeps filling while running, not full, and data
    /// keeps coming; once it has data and the FIFO runs dry it completes.
    fn rx_filling(&self, c: &InFlight, env: &EngineEnv) -> bool {
        self.running() && c.done < c.desc.len && !(c.done > 0 && env.rx_fifo_len == 0)
    }

    fn location(&self, slot: PinSlot, iova: u64) -> Option<Location> {
        let range = self.pins.get(slot.index()).copied().flatten()?;
        let (page, offset) = range.locate(iova)?;
        Some(Location {
            slot,
            iova,
            page,
            offset,
        })
    }

    /// Pins the ring page if needed, or fetches the descriptor at HEAD.
    fn plan_ring_common(&self, ring: Ring, env: &EngineEnv, fetch: bool) -> Option<Action> {
        let slot = ring.ring_slot();
        if let Some((range, target)) = self.wanted_pin(slot, env) {
            if self.pins.get(slot.index()).copied().flatten().is_none() {
                return Some(Action::Pin {
                    slot,
                    range,
                    target,
                });
            }
        }
        let regs = self.ring(ring);
        if self.cur(ring).is_none() && self.running() && regs.pending() != 0 && fetch {
            let iova = regs.desc_iova(regs.head)?;
            let at = self.location(slot, iova)?;
            return Some(Action::ReadDescriptor { ring, at });
        }
        None
    }

    fn write_back(&self, ring: Ring, c: &InFlight) -> Option<Action> {
        let at = self.location(ring.ring_slot(), c.desc_iova)?;
        let done = Descriptor {
            addr: c.desc.addr,
            len: c.done,
            flags: DESC_DONE,
        };
        Some(Action::WriteDescriptor {
            ring,
            at,
            bytes: done.encode(),
        })
    }

    fn plan_buffer_pin(&self, ring: Ring, env: &EngineEnv) -> Option<Action> {
        let slot = ring.buf_slot();
        let (range, target) = self.wanted_pin(slot, env)?;
        if self.pins.get(slot.index()).copied().flatten().is_some() {
            return None;
        }
        Some(Action::Pin {
            slot,
            range,
            target,
        })
    }

    fn plan_tx(&self, env: &EngineEnv) -> Option<Action> {
        if let Some(a) = self.plan_ring_common(Ring::Tx, env, true) {
            return Some(a);
        }
        let c = self.tx_cur?;
        if self.running() && c.done < c.desc.len {
            if let Some(a) = self.plan_buffer_pin(Ring::Tx, env) {
                return Some(a);
            }
            if env.rx_fifo_space == 0 {
                // Blocked until the receive side drains the FIFO.
                return None;
            }
            let addr = c.desc.addr.checked_add(u64::from(c.done))?;
            let at = self.location(PinSlot::TxBuf, addr)?;
            let len = c
                .remaining()
                .min(u32::from(env.rx_fifo_space))
                .min(page_remainder(addr));
            return Some(Action::TxToUart { at, len });
        }
        // Finished, or stopping after a partial transfer: report it.
        self.write_back(Ring::Tx, &c)
    }

    fn plan_rx(&self, env: &EngineEnv) -> Option<Action> {
        // A receive descriptor is only taken once there is data for it.
        if let Some(a) = self.plan_ring_common(Ring::Rx, env, env.rx_fifo_len > 0) {
            return Some(a);
        }
        let c = self.rx_cur?;
        if self.rx_filling(&c, env) {
            if let Some(a) = self.plan_buffer_pin(Ring::Rx, env) {
                return Some(a);
            }
            if env.rx_fifo_len == 0 {
                return None;
            }
            let addr = c.desc.addr.checked_add(u64::from(c.done))?;
            let at = self.location(PinSlot::RxBuf, addr)?;
            let len = c
                .remaining()
                .min(u32::from(env.rx_fifo_len))
                .min(page_remainder(addr));
            return Some(Action::UartToRx { at, len });
        }
        if c.done > 0 {
            return self.write_back(Ring::Rx, &c);
        }
        None
    }

    fn complete_transfer(
        &mut self,
        ring: Ring,
        at: Location,
        len: u32,
        result: Completion,
    ) -> Result<(), StaleCompletion> {
        let running = self.running();
        let cur = self.cur_mut(ring).as_mut().ok_or(StaleCompletion)?;
        let expected = cur.desc.addr.checked_add(u64::from(cur.done));
        if !running || expected != Some(at.iova) || len > cur.remaining() {
            return Err(StaleCompletion);
        }
        match result {
            Completion::Transferred(n) if n <= len => {
                cur.done = cur.done.saturating_add(n);
                Ok(())
            }
            Completion::Failed => {
                self.halt(DmaError::AccessFault, at.iova);
                Ok(())
            }
            _ => Err(StaleCompletion),
        }
    }
}

/// Checks width, alignment and range of a BAR2 access.
fn check_access(offset: u32, width: u8) -> Result<(), AccessError> {
    let w = match width {
        4 => 4u32,
        8 => 8u32,
        _ => return Err(AccessError::BadWidth),
    };
    if offset & w.wrapping_sub(1) != 0 {
        return Err(AccessError::Misaligned);
    }
    match offset.checked_add(w) {
        Some(end) if end <= BAR_SIZE => Ok(()),
        _ => Err(AccessError::OutOfRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_layout_fills_state_len_exactly() {
        let mut out = [0u8; STATE_LEN];
        assert_eq!(DmaEngine::new().encode(&mut out), Some(STATE_LEN));
    }
}
