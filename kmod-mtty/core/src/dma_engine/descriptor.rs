//! Ring descriptors: the 16-byte entry format in guest memory and its checks.

use super::pins::{PinRange, MAX_PIN_PAGES, PAGE_SIZE};

/// Size of one descriptor in bytes.
pub const DESC_SIZE: usize = 16;
/// Largest buffer a descriptor may describe.
pub const MAX_BUFFER_LEN: u32 = 4096;
// The worst-placed buffer starts at the last byte of a page; its other
// MAX_BUFFER_LEN - 1 bytes must fit in MAX_PIN_PAGES - 1 more pages, so that
// every valid descriptor has a pin range.
const _: () = assert!(MAX_BUFFER_LEN as u64 - 1 <= (MAX_PIN_PAGES as u64 - 1) * PAGE_SIZE);
/// Descriptor flags: written back by the device on completion.
pub const DESC_DONE: u32 = 0x1;

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
        let mut r = super::super::wire::Reader::new(raw);
        Descriptor {
            addr: r.u64(),
            len: r.u32(),
            flags: r.u32(),
        }
    }

    /// Encodes the descriptor as the 16 bytes of a ring entry.
    pub fn encode(&self) -> [u8; DESC_SIZE] {
        let mut out = [0u8; DESC_SIZE];
        let mut w = super::super::wire::Writer::new(&mut out);
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
