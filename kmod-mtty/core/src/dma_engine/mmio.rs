//! Guest accesses to BAR2: access checks, register reads and writes, doorbells, enable and disable.

use super::copy::{check_copy, CopyRegs};
use super::engine::DmaEngine;
use super::registers::*;
use super::ring::{ring_config_valid, Ring, RingRegs};

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

impl DmaEngine {
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
}
