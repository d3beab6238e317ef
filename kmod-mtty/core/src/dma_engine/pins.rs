//! Pinned pages: the page size, the four pin slots, page ranges and what an IOMMU unmap takes back.

/// log2 of [`PAGE_SIZE`]: the engine plans pins in 4 KiB pages.
///
/// This is the core's only statement of the page size. The driver pins the
/// planned ranges with `vfio_pin_pages`, which counts kernel pages, so the
/// kernel module asserts at compile time that [`PAGE_SIZE`] equals
/// `kernel::page::PAGE_SIZE`.
pub const PAGE_SHIFT: u32 = 12;
/// Page size the engine plans pins in.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset bits inside a page.
const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// Largest number of pages of one pinned range.
pub const MAX_PIN_PAGES: u32 = 2;
/// Number of pin slots (ranges the engine may hold pinned at once).
pub const MAX_PINS: usize = 4;

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

/// Bytes from `addr` to the end of its page, as a `u32`.
pub(super) fn page_remainder(addr: u64) -> u32 {
    // The result is in 1..=PAGE_SIZE, so the conversion cannot fail.
    u32::try_from(PAGE_SIZE.saturating_sub(addr & PAGE_MASK)).unwrap_or(1)
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

/// Pinned ranges handed back to the driver for unpinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpinList {
    pub(super) entries: [Option<PinRange>; MAX_PINS],
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
///
/// [`DmaEngine::dma_unmap`]: super::DmaEngine::dma_unmap
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
