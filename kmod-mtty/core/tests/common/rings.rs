//! Ring fixtures shared by the DMA scenario tests: ring and buffer IOVAs,
//! a simulator with both rings programmed, and descriptor posting.

use super::{Sim, PAGE};
use mtty_core::dma_engine::*;
use mtty_core::uart::RBR;

/// IOVA of the transmit ring.
pub const TX_RING: u64 = 0x10_000;
/// IOVA of the receive ring.
pub const RX_RING: u64 = 0x20_000;
/// IOVA of the 16 buffer pages.
pub const BUFS: u64 = 0x30_000;

/// A descriptor of `len` bytes at `addr` with no flags.
pub fn desc(addr: u64, len: u32) -> Descriptor {
    Descriptor { addr, len, flags: 0 }
}

/// Maps ring and buffer memory and programs both rings with `n` entries.
pub fn sim_with_rings(n: u32) -> Sim {
    let mut s = Sim::new();
    s.map(TX_RING, PAGE);
    s.map(RX_RING, PAGE);
    s.map(BUFS, 16 * PAGE);
    s.setup_ring(REG_TX_RING, TX_RING, n);
    s.setup_ring(REG_RX_RING, RX_RING, n);
    s.reg_write(REG_INT_ENABLE, INT_MASK);
    s
}

/// Writes `data` at `addr` and posts it as transmit descriptor `idx`.
pub fn post_tx(s: &mut Sim, idx: u32, addr: u64, data: &[u8]) {
    s.write_mem(addr, data);
    let size = s.reg_read(REG_TX_RING + RING_SIZE);
    s.put_desc(TX_RING + u64::from(idx % size) * 16, desc(addr, data.len() as u32));
}

/// Posts a receive buffer of `cap` bytes at `addr` as descriptor `idx`.
pub fn post_rx(s: &mut Sim, idx: u32, addr: u64, cap: u32) {
    let size = s.reg_read(REG_RX_RING + RING_SIZE);
    s.put_desc(RX_RING + u64::from(idx % size) * 16, desc(addr, cap));
}

/// Reads every byte waiting in UART port 0.
pub fn drain_uart(s: &mut Sim) -> Vec<u8> {
    let mut out = Vec::new();
    while s.uart.rx_len() > 0 {
        out.push(s.uart.read(RBR).0);
    }
    out
}
