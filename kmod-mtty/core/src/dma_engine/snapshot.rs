//! Migration snapshot of the engine: its fixed-size layout, writer and checked reader.

use super::copy::{check_copy, CopyRegs};
use super::descriptor::Descriptor;
use super::engine::DmaEngine;
use super::registers::{DmaError, INT_MASK};
use super::ring::{ring_config_valid, InFlight, Ring, RingRegs};

/// Length in bytes of the snapshot produced by [`DmaEngine::save_state`].
pub const STATE_LEN: usize = 160;

impl DmaEngine {
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
        let mut w = super::super::wire::Writer::new(out);
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
        let mut r = super::super::wire::Reader::new(image);
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
