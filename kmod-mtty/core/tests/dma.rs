//! Unit and scenario tests of the DMA engine, driven through the simulated
//! driver in `common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod common;

use common::{Sim, PAGE};
use mtty_core::dma_engine::*;
use mtty_core::uart::{LSR, RBR};

const TX_RING: u64 = 0x10_000;
const RX_RING: u64 = 0x20_000;
const BUFS: u64 = 0x30_000;

fn desc(addr: u64, len: u32) -> Descriptor {
    Descriptor { addr, len, flags: 0 }
}

/// Maps ring and buffer memory and programs both rings with `n` entries.
fn sim_with_rings(n: u32) -> Sim {
    let mut s = Sim::new();
    s.map(TX_RING, PAGE);
    s.map(RX_RING, PAGE);
    s.map(BUFS, 16 * PAGE);
    s.setup_ring(REG_TX_RING, TX_RING, n);
    s.setup_ring(REG_RX_RING, RX_RING, n);
    s.reg_write(REG_INT_ENABLE, INT_MASK);
    s
}

fn post_tx(s: &mut Sim, idx: u32, addr: u64, data: &[u8]) {
    s.write_mem(addr, data);
    let size = s.reg_read(REG_TX_RING + RING_SIZE);
    s.put_desc(TX_RING + u64::from(idx % size) * 16, desc(addr, data.len() as u32));
}

fn post_rx(s: &mut Sim, idx: u32, addr: u64, cap: u32) {
    let size = s.reg_read(REG_RX_RING + RING_SIZE);
    s.put_desc(RX_RING + u64::from(idx % size) * 16, desc(addr, cap));
}

fn drain_uart(s: &mut Sim) -> Vec<u8> {
    let mut out = Vec::new();
    while s.uart.rx_len() > 0 {
        out.push(s.uart.read(RBR).0);
    }
    out
}

#[test]
fn register_reset_values() {
    let s = Sim::new();
    assert_eq!(s.reg_read(REG_ID), ID_VALUE);
    assert_eq!(s.reg_read(REG_ID).to_le_bytes(), *b"mDMA");
    assert_eq!(s.reg_read(REG_VERSION), VERSION_VALUE);
    for off in (0x08..0x100).step_by(4) {
        assert_eq!(s.reg_read(off), 0, "register {off:#x}");
    }
    assert_eq!(s.reg_read(0xFFC), 0);
    assert_eq!(s.reg_read64(REG_ID), u64::from(VERSION_VALUE) << 32 | u64::from(ID_VALUE));
    assert!(!s.dma.irq_asserted());
}

#[test]
fn access_width_alignment_and_range() {
    let mut e = DmaEngine::new();
    for w in [0u8, 1, 2, 3, 16] {
        assert_eq!(e.read(0, w), Err(AccessError::BadWidth));
        assert_eq!(e.write(0, w, 0), Err(AccessError::BadWidth));
    }
    assert_eq!(e.read(2, 4), Err(AccessError::Misaligned));
    assert_eq!(e.read(4, 8), Err(AccessError::Misaligned));
    assert_eq!(e.write(0x41, 4, 0), Err(AccessError::Misaligned));
    assert_eq!(e.read(BAR_SIZE, 4), Err(AccessError::OutOfRange));
    assert_eq!(e.read(BAR_SIZE - 4, 8), Err(AccessError::Misaligned));
    assert_eq!(e.read(BAR_SIZE - 8, 8), Ok(0));
    assert_eq!(e.read(u32::MAX - 3, 4), Err(AccessError::OutOfRange));
    assert_eq!(e.write(0x1000, 8, 0), Err(AccessError::OutOfRange));
}

#[test]
fn ring_registers_and_their_halves() {
    let mut s = Sim::new();
    s.reg_write64(REG_TX_RING + RING_BASE, 0x1122_3344_5566_7700);
    assert_eq!(s.reg_read(REG_TX_RING + RING_BASE), 0x5566_7700);
    assert_eq!(s.reg_read(REG_TX_RING + RING_BASE + 4), 0x1122_3344);
    s.reg_write(REG_TX_RING + RING_BASE + 4, 0xAABB_CCDD);
    assert_eq!(s.reg_read64(REG_TX_RING + RING_BASE), 0xAABB_CCDD_5566_7700);
    s.reg_write(REG_RX_RING + RING_SIZE, 64);
    s.reg_write(REG_RX_RING + RING_TAIL, 9);
    s.reg_write(REG_RX_RING + RING_HEAD, 5);
    assert_eq!(s.reg_read(REG_RX_RING + RING_SIZE), 64);
    assert_eq!(s.reg_read(REG_RX_RING + RING_TAIL), 9);
    assert_eq!(s.reg_read(REG_RX_RING + RING_HEAD), 0, "HEAD is read-only");
    // An 8-byte write over HEAD/TAIL only lands in TAIL.
    s.reg_write64(REG_RX_RING + RING_HEAD, 0x0000_0007_0000_0003);
    assert_eq!(s.reg_read64(REG_RX_RING + RING_HEAD), 0x0000_0007_0000_0000);
    // Read-only registers ignore writes.
    for off in [REG_ID, REG_VERSION, REG_STATUS, REG_ERROR_CODE, REG_ERROR_IOVA, REG_ERROR_IOVA + 4] {
        let before = s.reg_read(off);
        s.reg_write(off, 0xFFFF_FFFF);
        assert_eq!(s.reg_read(off), before, "register {off:#x}");
    }
    assert_eq!(s.reg_read(REG_DOORBELL), 0);
}

#[test]
fn ring_geometry_is_frozen_while_enabled() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.reg_write64(REG_TX_RING + RING_BASE, 0x9000);
    s.reg_write(REG_TX_RING + RING_SIZE, 8);
    assert_eq!(s.reg_read64(REG_TX_RING + RING_BASE), TX_RING);
    assert_eq!(s.reg_read(REG_TX_RING + RING_SIZE), 4);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    assert_eq!(s.reg_read(REG_TX_RING + RING_TAIL), 1, "TAIL stays writable");
    s.reg_write(REG_CTRL, 0);
    s.run();
    s.reg_write(REG_TX_RING + RING_SIZE, 8);
    assert_eq!(s.reg_read(REG_TX_RING + RING_SIZE), 8);
}

#[test]
fn interrupt_status_is_write_one_to_clear_and_masked_by_enable() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_INT_ENABLE, 0xFFFF_FFFF);
    assert_eq!(s.reg_read(REG_INT_ENABLE), INT_MASK);
    s.reg_write(REG_INT_ENABLE, INT_TX_DONE);
    post_tx(&mut s, 0, BUFS, b"a");
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.reg_read(REG_INT_STATUS), INT_TX_DONE);
    assert!(s.dma.irq_asserted());
    assert_eq!(s.dma.pending_mask(), INT_TX_DONE);
    s.reg_write(REG_INT_ENABLE, INT_RX_DONE);
    assert!(!s.dma.irq_asserted(), "masked");
    s.reg_write(REG_INT_ENABLE, INT_MASK);
    s.reg_write(REG_INT_STATUS, INT_RX_DONE);
    assert!(s.dma.irq_asserted(), "writing other bits does not clear");
    s.reg_write(REG_INT_STATUS, INT_TX_DONE);
    assert_eq!(s.reg_read(REG_INT_STATUS), 0);
    assert!(!s.dma.irq_asserted());
}

#[test]
fn transmit_and_receive_through_the_loopback() {
    let mut s = sim_with_rings(4);
    post_tx(&mut s, 0, BUFS, b"hello");
    // This buffer straddles a page boundary: it needs a two-page pin and
    // the copies must be split at the boundary.
    post_tx(&mut s, 1, BUFS + 2 * PAGE - 3, b"world!");
    for i in 0..3 {
        post_rx(&mut s, i, BUFS + 8 * PAGE + u64::from(i) * 0x100, 8);
    }
    s.reg_write(REG_TX_RING + RING_TAIL, 2);
    s.reg_write(REG_RX_RING + RING_TAIL, 3);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    assert_eq!(s.reg_read(REG_STATUS) & STATUS_RUNNING, STATUS_RUNNING);
    s.run();

    let t0 = s.get_desc(TX_RING);
    let t1 = s.get_desc(TX_RING + 16);
    assert_eq!(t0, Descriptor { addr: BUFS, len: 5, flags: DESC_DONE });
    assert_eq!(t1, Descriptor { addr: BUFS + 2 * PAGE - 3, len: 6, flags: DESC_DONE });
    assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 2);

    let mut got = Vec::new();
    let mut lens = Vec::new();
    for i in 0..2u64 {
        let d = s.get_desc(RX_RING + i * 16);
        assert_eq!(d.flags, DESC_DONE);
        lens.push(d.len);
        got.extend(s.read_mem(d.addr, d.len as usize));
    }
    assert_eq!(got, b"helloworld!");
    assert_eq!(lens, [8, 3], "RX fills a buffer, then completes when the FIFO runs dry");
    assert_eq!(s.get_desc(RX_RING + 32).flags, 0, "third RX buffer untouched");
    assert_eq!(s.reg_read(REG_RX_RING + RING_HEAD), 2);
    assert_eq!(s.reg_read(REG_INT_STATUS), INT_TX_DONE | INT_RX_DONE);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_RUNNING | STATUS_BUSY);
    // Only the two ring pages stay pinned while idle.
    assert_eq!(s.dma.pins()[PinSlot::TxRing.index()], Some(PinRange { iova: TX_RING, pages: 1 }));
    assert_eq!(s.dma.pins()[PinSlot::RxRing.index()], Some(PinRange { iova: RX_RING, pages: 1 }));
    assert_eq!(s.dma.pins()[PinSlot::TxBuf.index()], None);
    assert_eq!(s.dma.pins()[PinSlot::RxBuf.index()], None);
    assert_eq!(s.uart.rx_len(), 0);
}

#[test]
fn transmit_blocks_on_a_full_fifo_and_resumes() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    let data: Vec<u8> = (0..40).collect();
    post_tx(&mut s, 0, BUFS + 100, &data);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.uart.rx_len(), 16);
    assert_eq!(s.get_desc(TX_RING).flags, 0, "not done yet");
    assert!(s.dma.pins()[PinSlot::TxBuf.index()].is_some(), "buffer stays pinned");
    let mut seen = drain_uart(&mut s);
    s.run();
    seen.extend(drain_uart(&mut s));
    s.run();
    seen.extend(drain_uart(&mut s));
    s.run();
    assert_eq!(seen, data);
    assert_eq!(s.get_desc(TX_RING), Descriptor { addr: BUFS + 100, len: 40, flags: DESC_DONE });
    assert_eq!(s.dma.pins()[PinSlot::TxBuf.index()], None);
}

#[test]
fn stopping_completes_partial_descriptors_and_releases_pins() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    post_tx(&mut s, 0, BUFS, &[7u8; 40]);
    post_tx(&mut s, 1, BUFS + PAGE, &[8u8; 4]);
    s.reg_write(REG_TX_RING + RING_TAIL, 2);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.uart.rx_len(), 16);
    s.reg_write(REG_CTRL, 0);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_BUSY, "stopping, not yet quiet");
    s.run();
    assert_eq!(s.get_desc(TX_RING), Descriptor { addr: BUFS, len: 16, flags: DESC_DONE });
    assert_eq!(s.get_desc(TX_RING + 16).flags, 0, "untouched descriptor stays posted");
    assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 1);
    assert_eq!(s.reg_read(REG_STATUS), 0);
    assert!(s.dma.pins().iter().all(Option::is_none));
    assert_eq!(s.pin_calls, s.unpin_calls);
    // Restarting continues with the next descriptor.
    drain_uart(&mut s);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(drain_uart(&mut s), [8u8; 4]);
    assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 2);
}

#[test]
fn stopping_before_any_byte_leaves_the_descriptor_posted() {
    let mut s = sim_with_rings(4);
    post_tx(&mut s, 0, BUFS, b"abc");
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.bus_master = false;
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    assert_eq!(s.run(), 0, "no memory access without bus mastering");
    assert_eq!(s.pin_calls, 0);
    s.reg_write(REG_CTRL, 0);
    s.run();
    assert_eq!(s.get_desc(TX_RING).flags, 0);
    assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 0);
    assert_eq!(s.reg_read(REG_STATUS), 0);
}

#[test]
fn bus_master_gates_and_resumes() {
    let mut s = sim_with_rings(4);
    post_tx(&mut s, 0, BUFS, b"xyz");
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.bus_master = false;
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.uart.rx_len(), 0);
    s.bus_master = true;
    s.run();
    assert_eq!(s.get_desc(TX_RING).flags, DESC_DONE);
}

#[test]
fn doorbell_latches_tail_and_is_ignored_while_disabled() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    post_tx(&mut s, 0, BUFS, b"1");
    post_tx(&mut s, 1, BUFS + 0x10, b"2");
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.run();
    assert_eq!(s.uart.rx_len(), 0, "TAIL alone does not wake the engine");
    s.reg_write(REG_DOORBELL, DOORBELL_TX);
    s.run();
    assert_eq!(drain_uart(&mut s), b"1");
    s.reg_write(REG_TX_RING + RING_TAIL, 2);
    s.reg_write(REG_CTRL, 0);
    s.reg_write(REG_DOORBELL, DOORBELL_TX);
    s.run();
    assert_eq!(s.uart.rx_len(), 0);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(drain_uart(&mut s), b"2", "enable samples TAIL");
}

#[test]
fn receive_waits_for_data_before_taking_a_buffer() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_TX_RING + RING_SIZE, 0);
    post_rx(&mut s, 0, BUFS, 64);
    s.reg_write(REG_RX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.dma.pins()[PinSlot::RxBuf.index()], None);
    assert_eq!(s.get_desc(RX_RING).flags, 0);
    // Bytes written by the guest to THR loop back and are received by DMA.
    for b in b"ping" {
        s.uart.write(mtty_core::uart::THR, *b);
    }
    s.run();
    assert_eq!(s.get_desc(RX_RING), Descriptor { addr: BUFS, len: 4, flags: DESC_DONE });
    assert_eq!(s.read_mem(BUFS, 4), b"ping");
    assert_eq!(s.uart.read(LSR).0 & 1, 0, "FIFO drained by DMA");
}

#[test]
fn ring_indices_are_free_running_and_wrap() {
    let mut s = sim_with_rings(2);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    let mut out = Vec::new();
    for i in 0..7u32 {
        post_tx(&mut s, i, BUFS + u64::from(i) * 0x20, &[i as u8; 3]);
        s.reg_write(REG_TX_RING + RING_TAIL, i + 1);
        s.reg_write(REG_DOORBELL, DOORBELL_TX);
        s.run();
        out.extend(drain_uart(&mut s));
        assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), i + 1);
    }
    let want: Vec<u8> = (0..7u8).flat_map(|i| [i; 3]).collect();
    assert_eq!(out, want);
}

#[test]
fn unmapping_a_pinned_buffer_halts_the_engine() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    post_tx(&mut s, 0, BUFS + 0x800, &[1u8; 100]);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    // Unmapping an unrelated range changes nothing.
    s.map(0x90_000, PAGE);
    assert!(s.unmap(0x90_000, PAGE).is_empty());
    assert_eq!(s.reg_read(REG_STATUS) & STATUS_ERROR, 0);
    // Unmap starting in the middle of the pinned buffer page.
    let list = s.unmap(BUFS + 0x900, 0x10);
    assert_eq!(list.iter().count(), 1);
    assert_eq!(list.get(PinSlot::TxBuf), Some(PinRange { iova: BUFS, pages: 1 }));
    assert_eq!(s.dma.pins()[PinSlot::TxBuf.index()], None);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_BUSY | STATUS_ERROR);
    assert_eq!(s.reg_read(REG_ERROR_CODE), DmaError::Unmapped as u32);
    assert_eq!(s.reg_read64(REG_ERROR_IOVA), BUFS + 0x900);
    assert_eq!(s.reg_read(REG_INT_STATUS) & INT_ERROR, INT_ERROR);
    assert!(s.dma.irq_asserted());
    // The remaining ring pin is released; the descriptor is not completed.
    s.run();
    assert!(s.dma.pins().iter().all(Option::is_none));
    assert_eq!(s.pin_calls, s.unpin_calls);
    assert_eq!(s.get_desc(TX_RING).flags, 0);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_ERROR);
    assert_eq!(s.reg_read(REG_CTRL), CTRL_ENABLE, "ENABLE stays set until reset");
    // A second error does not overwrite the first.
    s.reg_write(REG_DOORBELL, DOORBELL_TX);
    assert_eq!(s.reg_read(REG_ERROR_CODE), DmaError::Unmapped as u32);
    s.reg_write(REG_CTRL, CTRL_RESET);
    for off in (0x08..0xA0).step_by(4) {
        assert_eq!(s.reg_read(off), 0, "register {off:#x} after reset");
    }
}

#[test]
fn unmapping_the_ring_reports_the_lowest_overlapping_iova() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    let list = s.unmap(TX_RING - PAGE, u64::MAX);
    assert_eq!(list.get(PinSlot::TxRing), Some(PinRange { iova: TX_RING, pages: 1 }));
    assert_eq!(list.get(PinSlot::RxRing), Some(PinRange { iova: RX_RING, pages: 1 }));
    assert_eq!(s.reg_read64(REG_ERROR_IOVA), TX_RING);
    assert_eq!(s.dma.error(), DmaError::Unmapped);
    assert_eq!(s.dma.error_iova(), TX_RING);
}

#[test]
fn pin_failure_halts_with_the_buffer_iova() {
    let mut s = sim_with_rings(4);
    s.put_desc(TX_RING, desc(0x7777_0010, 4));
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.dma.error(), DmaError::PinFailed);
    assert_eq!(s.reg_read64(REG_ERROR_IOVA), 0x7777_0010);
    assert!(s.dma.pins().iter().all(Option::is_none));
}

#[test]
fn unmapped_ring_fails_to_pin() {
    let mut s = Sim::new();
    s.setup_ring(REG_TX_RING, 0x5000, 4);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.dma.error(), DmaError::PinFailed);
    assert_eq!(s.dma.error_iova(), 0x5000);
}

#[test]
fn bad_descriptors_halt_with_the_descriptor_iova() {
    let bad = [
        desc(BUFS, 0),
        desc(BUFS, MAX_BUFFER_LEN + 1),
        Descriptor { addr: BUFS, len: 4, flags: 2 },
        desc(u64::MAX - 2, 4),
    ];
    for d in bad {
        let mut s = sim_with_rings(4);
        post_tx(&mut s, 0, BUFS, b"ok");
        s.put_desc(TX_RING + 16, d);
        s.reg_write(REG_TX_RING + RING_TAIL, 2);
        s.reg_write(REG_CTRL, CTRL_ENABLE);
        s.run();
        assert_eq!(s.dma.error(), DmaError::BadDescriptor, "{d:?}");
        assert_eq!(s.dma.error_iova(), TX_RING + 16);
        assert_eq!(s.get_desc(TX_RING).flags, DESC_DONE, "the good one before completed");
        assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 1);
        assert!(s.dma.pins().iter().all(Option::is_none));
    }
    // DONE set by the guest is ignored, not an error.
    let mut s = sim_with_rings(4);
    s.write_mem(BUFS, b"z");
    s.put_desc(TX_RING, Descriptor { addr: BUFS, len: 1, flags: DESC_DONE });
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.dma.error(), DmaError::None);
}

#[test]
fn bad_ring_geometry_is_refused_on_enable() {
    for (base, size) in [(TX_RING, 3), (TX_RING, 512), (TX_RING + 0x20, 4), (u64::MAX - 7, 1)] {
        let mut s = sim_with_rings(4);
        s.setup_ring(REG_TX_RING, base, size);
        s.reg_write(REG_CTRL, CTRL_ENABLE);
        assert_eq!(s.dma.error(), DmaError::BadRing, "base {base:#x} size {size}");
        assert_eq!(s.dma.error_iova(), base);
        assert_eq!(s.reg_read(REG_STATUS) & STATUS_RUNNING, 0);
        assert_eq!(s.run(), 0);
    }
    // Smallest and largest valid rings.
    for (base, size) in [(TX_RING + 0x10, 1), (TX_RING, 256), (u64::MAX - 15, 1)] {
        let mut s = sim_with_rings(4);
        s.setup_ring(REG_TX_RING, base, size);
        s.reg_write(REG_CTRL, CTRL_ENABLE);
        assert_eq!(s.dma.error(), DmaError::None);
    }
}

#[test]
fn tail_too_far_ahead_is_a_bad_index() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.reg_write(REG_RX_RING + RING_TAIL, 5);
    s.reg_write(REG_DOORBELL, DOORBELL_RX);
    assert_eq!(s.dma.error(), DmaError::BadIndex);
    assert_eq!(s.dma.error_iova(), RX_RING);
    let mut s = sim_with_rings(4);
    s.reg_write(REG_TX_RING + RING_TAIL, u32::MAX);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    assert_eq!(s.dma.error(), DmaError::BadIndex, "tail behind head");
}

#[test]
fn tail_moved_back_over_an_in_flight_descriptor_is_a_bad_index() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    post_tx(&mut s, 0, BUFS, &[3u8; 40]);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.reg_read(REG_STATUS) & STATUS_BUSY, STATUS_BUSY, "descriptor 0 in flight");
    // Retracting TAIL to 0 would take descriptor 0 back from the device.
    s.reg_write(REG_TX_RING + RING_TAIL, 0);
    s.reg_write(REG_DOORBELL, DOORBELL_TX);
    assert_eq!(s.dma.error(), DmaError::BadIndex);
    assert_eq!(s.dma.error_iova(), TX_RING);
    s.run();
    assert!(s.dma.pins().iter().all(Option::is_none));
    assert_eq!(s.get_desc(TX_RING).flags, 0);
    // Retracting descriptors the engine has not taken yet is harmless.
    let mut s = sim_with_rings(4);
    s.bus_master = false;
    s.reg_write(REG_TX_RING + RING_TAIL, 2);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.reg_write(REG_TX_RING + RING_TAIL, 0);
    s.reg_write(REG_DOORBELL, DOORBELL_TX);
    assert_eq!(s.dma.error(), DmaError::None);
}

#[test]
fn copy_failures_are_access_faults() {
    let mut s = sim_with_rings(4);
    post_tx(&mut s, 0, BUFS + 5, b"abc");
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    // Let the engine pin the ring, then fail the descriptor read.
    assert!(s.step());
    s.fail_copies = true;
    s.run();
    assert_eq!(s.dma.error(), DmaError::AccessFault);
    assert_eq!(s.dma.error_iova(), TX_RING);
}

#[test]
fn stale_or_mismatched_completions_are_refused() {
    let mut s = sim_with_rings(4);
    post_tx(&mut s, 0, BUFS, b"abc");
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    let env = s.env();
    let pin = s.dma.plan(&env);
    assert!(matches!(pin, Action::Pin { slot: PinSlot::TxRing, .. }));
    let before = s.dma.clone();
    assert_eq!(s.dma.complete(&pin, Completion::Unpinned), Err(StaleCompletion));
    assert_eq!(s.dma.complete(&pin, Completion::Transferred(1)), Err(StaleCompletion));
    assert_eq!(s.dma.complete(&Action::Idle, Completion::Pinned), Err(StaleCompletion));
    let bogus = Action::Unpin { slot: PinSlot::RxBuf, range: PinRange { iova: 0, pages: 1 } };
    assert_eq!(s.dma.complete(&bogus, Completion::Unpinned), Err(StaleCompletion));
    let bogus_tx = Action::TxToUart {
        at: Location { slot: PinSlot::TxBuf, iova: BUFS, page: 0, offset: 0 },
        len: 3,
    };
    assert_eq!(s.dma.complete(&bogus_tx, Completion::Transferred(3)), Err(StaleCompletion));
    assert_eq!(s.dma, before);
    // Pinning into an occupied slot is refused: the driver must undo it.
    s.step();
    assert_eq!(s.dma.complete(&pin, Completion::Pinned), Err(StaleCompletion));
    // A failed pin that is no longer wanted does not halt the engine.
    s.reg_write(REG_CTRL, 0);
    let stale_pin = Action::Pin { slot: PinSlot::TxBuf, range: PinRange { iova: BUFS, pages: 1 }, target: BUFS };
    assert_eq!(s.dma.complete(&stale_pin, Completion::PinFailed), Err(StaleCompletion));
    assert_eq!(s.dma.error(), DmaError::None);
}

#[test]
fn transferring_more_than_planned_is_refused() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    post_tx(&mut s, 0, BUFS, b"abcd");
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    loop {
        let env = s.env();
        let a = s.dma.plan(&env);
        if let Action::TxToUart { len, .. } = a {
            assert_eq!(len, 4);
            assert_eq!(s.dma.complete(&a, Completion::Transferred(5)), Err(StaleCompletion));
            // A short transfer is accepted and the rest is planned next.
            for b in b"ab" {
                s.uart.rx_push(*b);
            }
            s.dma.complete(&a, Completion::Transferred(2)).unwrap();
            let env = s.env();
            match s.dma.plan(&env) {
                Action::TxToUart { at, len } => {
                    assert_eq!((at.iova, len), (BUFS + 2, 2));
                }
                other => panic!("unexpected {other:?}"),
            }
            break;
        }
        assert!(s.step());
    }
    s.run();
    assert_eq!(drain_uart(&mut s), b"abcd");
}

#[test]
fn reset_and_take_all_pins_release_everything() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    post_tx(&mut s, 0, BUFS, &[0u8; 64]);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.dma.pins().iter().flatten().count(), 2);
    s.dma.reset();
    assert_eq!(s.reg_read(REG_STATUS), STATUS_BUSY, "pins still held after reset");
    s.run();
    assert_eq!(s.reg_read(REG_STATUS), 0);
    assert_eq!(s.pin_calls, s.unpin_calls);

    let mut s = sim_with_rings(4);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    let list = s.dma.take_all_pins();
    assert_eq!(list.iter().count(), 2);
    assert!(s.dma.pins().iter().all(Option::is_none));
    // The engine is still running and simply pins its rings again.
    s.pinned.clear();
    s.run();
    assert_eq!(s.dma.pins().iter().flatten().count(), 2);
}

#[test]
fn descriptor_encoding_and_validation() {
    let d = Descriptor { addr: 0x0102_0304_0506_0708, len: 0x1112_1314, flags: 0x2122_2324 };
    let raw = d.encode();
    assert_eq!(
        raw,
        [8, 7, 6, 5, 4, 3, 2, 1, 0x14, 0x13, 0x12, 0x11, 0x24, 0x23, 0x22, 0x21]
    );
    assert_eq!(Descriptor::parse(&raw), d);
    assert_eq!(desc(0, 1).validate(), Ok(()));
    assert_eq!(desc(0, 0).validate(), Err(DescError::ZeroLength));
    assert_eq!(desc(0, 4097).validate(), Err(DescError::TooLong));
    assert_eq!(desc(0, 4096).validate(), Ok(()));
    assert_eq!(Descriptor { addr: 0, len: 1, flags: 0x8000_0000 }.validate(), Err(DescError::ReservedFlags));
    assert_eq!(Descriptor { addr: 0, len: 1, flags: DESC_DONE }.validate(), Ok(()));
    assert_eq!(desc(u64::MAX, 1).validate(), Ok(()));
    assert_eq!(desc(u64::MAX, 2).validate(), Err(DescError::AddressOverflow));
    assert_eq!(desc(0x1FFF, 2).pin_range(), Some(PinRange { iova: 0x1000, pages: 2 }));
    assert_eq!(desc(0x1000, 4096).pin_range(), Some(PinRange { iova: 0x1000, pages: 1 }));
    assert_eq!(desc(0x1001, 4096).pin_range(), Some(PinRange { iova: 0x1000, pages: 2 }));
}

#[test]
fn pin_range_helpers() {
    assert_eq!(PinRange::covering(0x1234, 0), None);
    assert_eq!(PinRange::covering(0x1234, 1), Some(PinRange { iova: 0x1000, pages: 1 }));
    assert_eq!(PinRange::covering(0x1000, 8193), None, "three pages");
    assert_eq!(PinRange::covering(u64::MAX, 2), None);
    let top = PinRange::covering(u64::MAX, 1).unwrap();
    assert_eq!(top, PinRange { iova: u64::MAX - 4095, pages: 1 });
    assert_eq!(top.last(), Some(u64::MAX));
    let r = PinRange { iova: 0x4000, pages: 2 };
    assert_eq!(r.last(), Some(0x5FFF));
    assert_eq!(r.locate(0x4000), Some((0, 0)));
    assert_eq!(r.locate(0x5ABC), Some((1, 0xABC)));
    assert_eq!(r.locate(0x6000), None);
    assert_eq!(r.locate(0x3FFF), None);
    assert_eq!(r.first_overlap(0x3000, 0x1000), None);
    assert_eq!(r.first_overlap(0x3000, 0x1001), Some(0x4000));
    assert_eq!(r.first_overlap(0x5FFF, 1), Some(0x5FFF));
    assert_eq!(r.first_overlap(0x6000, 100), None);
    assert_eq!(r.first_overlap(0x4800, 0), None);
    assert_eq!(r.first_overlap(0, u64::MAX), Some(0x4000));
    assert_eq!(PinRange { iova: u64::MAX - 4095, pages: 2 }.last(), None);
    assert_eq!(ring_pin_range(0x12_340, 4), Some(PinRange { iova: 0x12_000, pages: 1 }));
    assert_eq!(ring_pin_range(0x12_000, 256), Some(PinRange { iova: 0x12_000, pages: 1 }));
    assert_eq!(ring_pin_range(0x12_800, 256), None, "misaligned for its size");
    assert_eq!(ring_pin_range(0x12_000, 0), None, "disabled");
    assert_eq!(ring_pin_range(0x12_000, 6), None, "not a power of two");
    assert_eq!(ring_pin_range(u64::MAX - 4095, 256), Some(PinRange { iova: u64::MAX - 4095, pages: 1 }));
    assert_eq!(DmaError::from_u32(6), Some(DmaError::AccessFault));
    assert_eq!(DmaError::from_u32(9), None);
}

#[test]
fn snapshot_mid_transfer_continues_on_the_destination() {
    let mut s = sim_with_rings(4);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    let data: Vec<u8> = (0..50).collect();
    post_tx(&mut s, 0, BUFS + 7, &data);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    let mut seen = drain_uart(&mut s);
    s.run();
    let dma_img = s.dma.save_state();
    let uart_img = s.uart.save_state();

    // Destination: same guest memory, fresh driver, no pins.
    let mut d = Sim::new();
    d.mem = s.mem.clone();
    d.dma = DmaEngine::restore_state(&dma_img).unwrap();
    d.uart = mtty_core::uart::Uart::restore_state(&uart_img).unwrap();
    assert!(d.dma.pins().iter().all(Option::is_none));
    assert_eq!(d.dma.save_state(), dma_img);
    loop {
        seen.extend(drain_uart(&mut d));
        d.run();
        if d.uart.rx_len() == 0 {
            break;
        }
    }
    assert_eq!(seen, data);
    assert_eq!(d.get_desc(TX_RING).flags, DESC_DONE);
}

#[test]
fn snapshot_rejects_inconsistent_images() {
    let mut s = sim_with_rings(4);
    post_tx(&mut s, 0, BUFS, &[1u8; 30]);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_RX_RING + RING_SIZE, 0);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    let img = s.dma.save_state();
    assert!(DmaEngine::restore_state(&img).is_some());
    let mut bad = img;
    bad[1] = 9; // error code
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[13] = 0x80; // int_status reserved bit
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[29] = 3; // TX ring size 3 while running
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[127] = 1; // reserved byte
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[0] = 2; // not a boolean
    assert_eq!(DmaEngine::restore_state(&bad), None);
    // In-flight TX descriptor with done > len.
    let mut bad = img;
    bad[97] = 0xFF; // high byte of TX `done`
    assert_eq!(DmaEngine::restore_state(&bad), None);
}

/// The example at the end of docs/mtty-dma.md, step by step.
#[test]
fn documented_example() {
    let mut s = Sim::new();
    s.map(0x100_000, 4 * PAGE);
    s.reg_write64(REG_TX_RING + RING_BASE, 0x100_000);
    s.reg_write(REG_TX_RING + RING_SIZE, 4);
    s.reg_write64(REG_RX_RING + RING_BASE, 0x101_000);
    s.reg_write(REG_RX_RING + RING_SIZE, 4);
    s.put_desc(0x100_000, desc(0x102_000, 5));
    s.write_mem(0x102_000, b"hello");
    for i in 0..4u64 {
        s.put_desc(0x101_000 + i * 16, desc(0x103_000 + i * 0x100, 256));
    }
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_RX_RING + RING_TAIL, 4);
    s.reg_write(REG_INT_ENABLE, 0x7);
    s.reg_write(REG_CTRL, 1);
    s.run();
    assert_eq!(s.get_desc(0x100_000).flags & DESC_DONE, DESC_DONE);
    assert_eq!(s.get_desc(0x101_000), Descriptor { addr: 0x103_000, len: 5, flags: 1 });
    assert_eq!(s.read_mem(0x103_000, 5), b"hello");
    assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 1);
    assert_eq!(s.reg_read(REG_RX_RING + RING_HEAD), 1);
    assert_eq!(s.reg_read(REG_INT_STATUS), 0x3);
}

// ---------------------------------------------------------------------
// The copy command (COPY_SRC, COPY_DST, COPY_LEN, DOORBELL.COPY).

const SRC: u64 = 0x100_000;
const DST: u64 = 0x200_000;

/// Running engine (no rings), 80 KiB mapped at `SRC` and at `DST`, source
/// filled with a pattern, destination with 0xEE.
fn copy_sim() -> Sim {
    let mut s = Sim::new();
    s.map(SRC, 20 * PAGE);
    s.map(DST, 20 * PAGE);
    let pattern: Vec<u8> = (0..20 * PAGE).map(|i| (i * 13 % 251) as u8).collect();
    s.write_mem(SRC, &pattern);
    s.write_mem(DST, &vec![0xEE; 20 * PAGE as usize]);
    s.reg_write(REG_INT_ENABLE, INT_MASK);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s
}

fn program_copy(s: &mut Sim, src: u64, dst: u64, len: u32) {
    s.reg_write64(REG_COPY_SRC, src);
    s.reg_write64(REG_COPY_DST, dst);
    s.reg_write(REG_COPY_LEN, len);
}

#[test]
fn copy_registers_version_and_codes() {
    assert_eq!(VERSION_VALUE, 0x0001_0001);
    assert_eq!(DmaError::from_u32(7), Some(DmaError::BadCopy));
    assert_eq!(DmaError::from_u32(8), Some(DmaError::CopyFault));
    assert_eq!(DmaError::from_u32(9), None);
    let mut s = Sim::new();
    // Plain read/write registers while no copy is busy, also while stopped.
    s.reg_write(REG_COPY_SRC, 0x1234_5678);
    s.reg_write(REG_COPY_SRC + 4, 0x9abc_def0);
    s.reg_write64(REG_COPY_DST, 0x1111_2222_3333_4444);
    s.reg_write(REG_COPY_LEN, 0xFFFF_FFFF);
    assert_eq!(s.reg_read64(REG_COPY_SRC), 0x9abc_def0_1234_5678);
    assert_eq!(s.reg_read(REG_COPY_DST + 4), 0x1111_2222);
    assert_eq!(s.reg_read(REG_COPY_LEN), 0xFFFF_FFFF, "any value is stored, checked on the doorbell");
    assert_eq!(s.reg_read(0x94), 0);
    s.reg_write(0x94, 5);
    assert_eq!(s.reg_read(0x94), 0, "0x94 is reserved");
    // The doorbell while not RUNNING is ignored, even with a bad length.
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    assert_eq!(s.reg_read(REG_STATUS), 0);
    assert_eq!(s.dma.error(), DmaError::None);
    s.reg_write(REG_CTRL, CTRL_RESET);
    for off in [REG_COPY_SRC, REG_COPY_SRC + 4, REG_COPY_DST, REG_COPY_DST + 4, REG_COPY_LEN] {
        assert_eq!(s.reg_read(off), 0, "register {off:#x} after reset");
    }
}

#[test]
fn copy_of_64k_moves_exactly_those_bytes() {
    let mut s = copy_sim();
    program_copy(&mut s, SRC + 0x123, DST + 0x456, MAX_COPY_LEN);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_RUNNING | STATUS_BUSY | STATUS_COPY);
    // One step, one action for the whole length.
    assert_eq!(
        s.dma.plan(&s.env()),
        Action::Copy { src: SRC + 0x123, dst: DST + 0x456, len: MAX_COPY_LEN, tag: 1 }
    );
    assert_eq!(s.run(), 1);
    assert_eq!(s.copy_calls, 1);
    assert_eq!(s.pin_calls, 0, "copies do not pin");
    assert_eq!(s.read_mem(DST + 0x456, 65536), s.read_mem(SRC + 0x123, 65536));
    assert_eq!(s.read_mem(DST, 0x456), vec![0xEE; 0x456]);
    assert_eq!(s.read_mem(DST + 0x456 + 65536, 100), vec![0xEE; 100]);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_RUNNING);
    assert_eq!(s.reg_read(REG_INT_STATUS), INT_COPY_DONE);
    assert!(s.dma.irq_asserted());
    s.reg_write(REG_INT_STATUS, INT_COPY_DONE);
    assert!(!s.dma.irq_asserted());
    // Registers keep their values: the same copy can be started again.
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    assert_eq!(s.run(), 1);
    assert_eq!(s.copy_calls, 2);
}

#[test]
fn bad_copy_lengths_and_overflowing_ranges_halt() {
    for (src, dst, len, iova) in [
        (SRC, DST, 0, SRC),
        (SRC, DST, MAX_COPY_LEN + 1, SRC),
        (SRC, DST, u32::MAX, SRC),
        (u64::MAX - 10, DST, 12, u64::MAX - 10),
        (SRC, u64::MAX, 2, u64::MAX),
    ] {
        let mut s = copy_sim();
        program_copy(&mut s, src, dst, len);
        s.reg_write(REG_DOORBELL, DOORBELL_COPY);
        assert_eq!(s.dma.error(), DmaError::BadCopy, "{src:#x} {dst:#x} {len}");
        assert_eq!(s.reg_read(REG_ERROR_CODE), 7);
        assert_eq!(s.reg_read64(REG_ERROR_IOVA), iova);
        assert_eq!(s.reg_read(REG_STATUS), STATUS_ERROR);
        assert_eq!(s.reg_read(REG_INT_STATUS), INT_ERROR);
        s.run();
        assert_eq!(s.copy_calls, 0);
    }
    assert_eq!(check_copy(u64::MAX, 0, 1), Ok(()), "the last byte of the IOVA space");
    assert_eq!(check_copy(0, 0, MAX_COPY_LEN), Ok(()));
}

#[test]
fn copy_faults_report_the_side_that_failed() {
    // Unmapped source: nothing written.
    let mut s = copy_sim();
    program_copy(&mut s, SRC + 19 * PAGE, DST, 2 * PAGE as u32);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    s.run();
    assert_eq!(s.dma.error(), DmaError::CopyFault);
    assert_eq!(s.reg_read(REG_ERROR_CODE), 8);
    assert_eq!(s.dma.error_iova(), SRC + 19 * PAGE);
    assert_eq!(s.read_mem(DST, 2 * PAGE as usize), vec![0xEE; 2 * PAGE as usize]);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_ERROR);
    assert_eq!(s.reg_read(REG_INT_STATUS), INT_ERROR);
    // Unmapped destination.
    let mut s = copy_sim();
    program_copy(&mut s, SRC, DST - 1, 16);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    s.run();
    assert_eq!((s.dma.error(), s.dma.error_iova()), (DmaError::CopyFault, DST - 1));
    // Read-only destination.
    let mut s = copy_sim();
    s.map_ro(0x300_000, PAGE);
    program_copy(&mut s, SRC, 0x300_000, 16);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    s.run();
    assert_eq!((s.dma.error(), s.dma.error_iova()), (DmaError::CopyFault, 0x300_000));
    // ... but a read-only source is fine.
    let mut s = copy_sim();
    s.map_ro(0x300_000, PAGE);
    s.write_mem(0x300_000, b"ro");
    program_copy(&mut s, 0x300_000, DST, 2);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    s.run();
    assert_eq!(s.dma.error(), DmaError::None);
    assert_eq!(s.read_mem(DST, 2), b"ro");
    // A halted engine ignores the doorbell until reset.
    let mut s = copy_sim();
    program_copy(&mut s, SRC, DST, 0);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    program_copy(&mut s, SRC, DST, 8);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    s.run();
    assert_eq!(s.copy_calls, 0);
    assert_eq!(s.reg_read(REG_ERROR_CODE), 7, "the first error stays");
}

#[test]
fn copy_waits_for_bus_master_and_survives_a_stop() {
    let mut s = copy_sim();
    s.bus_master = false;
    program_copy(&mut s, SRC, DST, 100);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    assert_eq!(s.run(), 0, "no access while bus master is clear");
    assert_eq!(s.read_mem(DST, 100), vec![0xEE; 100]);
    // Frozen registers and a second doorbell are ignored while busy.
    program_copy(&mut s, SRC + 1, DST + 1, 1);
    assert_eq!(s.reg_read64(REG_COPY_SRC), SRC);
    assert_eq!(s.reg_read(REG_COPY_LEN), 100);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    // Stopping the engine does not cancel an accepted copy.
    s.reg_write(REG_CTRL, 0);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_BUSY | STATUS_COPY);
    s.bus_master = true;
    assert_eq!(s.run(), 1);
    assert_eq!(s.copy_calls, 1);
    assert_eq!(s.read_mem(DST, 100), s.read_mem(SRC, 100));
    assert_eq!(s.reg_read(REG_STATUS), 0);
    assert_eq!(s.reg_read(REG_INT_STATUS), INT_COPY_DONE);
}

#[test]
fn copy_completions_after_reset_or_halt_are_stale() {
    let mut s = copy_sim();
    program_copy(&mut s, SRC, DST, 64);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    let a = s.dma.plan(&s.env());
    assert!(matches!(a, Action::Copy { tag: 1, .. }));
    // Wrong completion kinds are refused.
    assert_eq!(s.dma.complete(&a, Completion::Failed), Err(StaleCompletion));
    assert_eq!(s.dma.complete(&a, Completion::Transferred(64)), Err(StaleCompletion));
    // Reset while the driver performs it, then the same copy again: the
    // old completion names the old tag.
    s.reg_write(REG_CTRL, CTRL_RESET);
    assert_eq!(s.dma.complete(&a, Completion::Copied), Err(StaleCompletion));
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    program_copy(&mut s, SRC, DST, 64);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    assert_eq!(s.dma.complete(&a, Completion::Copied), Err(StaleCompletion));
    let b = s.dma.plan(&s.env());
    assert!(matches!(b, Action::Copy { tag: 2, .. }));
    assert_eq!(s.dma.complete(&b, Completion::Copied), Ok(()));
    assert_eq!(s.dma.complete(&b, Completion::Copied), Err(StaleCompletion), "already completed");
    // A halt (here: the unmap of the pinned ring page) cancels a busy copy.
    s.map(TX_RING, PAGE);
    s.reg_write(REG_CTRL, CTRL_RESET);
    s.setup_ring(REG_TX_RING, TX_RING, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    s.run();
    assert_eq!(s.dma.pins()[PinSlot::TxRing.index()], Some(PinRange { iova: TX_RING, pages: 1 }));
    s.bus_master = false;
    program_copy(&mut s, SRC, DST, 64);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    let c = s.dma.plan(&EngineEnv { bus_master: true, rx_fifo_len: 0, rx_fifo_space: 16 });
    assert!(matches!(c, Action::Copy { tag: 3, .. }));
    s.unmap(TX_RING, PAGE);
    assert_eq!(s.dma.error(), DmaError::Unmapped);
    assert_eq!(s.reg_read(REG_STATUS) & STATUS_COPY, 0);
    assert_eq!(s.dma.complete(&c, Completion::Copied), Err(StaleCompletion));
    assert_eq!(s.reg_read(REG_INT_STATUS) & INT_COPY_DONE, 0);
}

#[test]
fn copy_runs_beside_the_rings() {
    let mut s = sim_with_rings(4);
    s.map(SRC, PAGE);
    s.map(DST, PAGE);
    s.write_mem(SRC, b"copied");
    post_tx(&mut s, 0, BUFS, b"ring");
    post_rx(&mut s, 0, BUFS + PAGE, 64);
    s.reg_write(REG_TX_RING + RING_TAIL, 1);
    s.reg_write(REG_RX_RING + RING_TAIL, 1);
    s.reg_write(REG_CTRL, CTRL_ENABLE);
    program_copy(&mut s, SRC, DST, 6);
    s.reg_write(REG_DOORBELL, DOORBELL_TX | DOORBELL_RX | DOORBELL_COPY);
    s.run();
    assert_eq!(s.read_mem(DST, 6), b"copied");
    assert_eq!(s.read_mem(BUFS + PAGE, 4), b"ring");
    assert_eq!(s.reg_read(REG_INT_STATUS), INT_TX_DONE | INT_RX_DONE | INT_COPY_DONE);
    assert_eq!(s.reg_read(REG_TX_RING + RING_HEAD), 1);
    assert_eq!(s.reg_read(REG_STATUS), STATUS_RUNNING | STATUS_BUSY, "ring pages stay pinned");
}

#[test]
fn snapshot_carries_a_busy_copy() {
    let mut s = copy_sim();
    s.bus_master = false;
    program_copy(&mut s, SRC + 5, DST + 7, 5000);
    s.reg_write(REG_DOORBELL, DOORBELL_COPY);
    let img = s.dma.save_state();
    let mut t = DmaEngine::restore_state(&img).expect("snapshot with a busy copy");
    assert_eq!(t.save_state(), img);
    assert_eq!(t.status(), STATUS_RUNNING | STATUS_BUSY | STATUS_COPY);
    let env = EngineEnv { bus_master: true, rx_fifo_len: 0, rx_fifo_space: 16 };
    let a = t.plan(&env);
    assert!(matches!(a, Action::Copy { src, dst, len: 5000, .. } if src == SRC + 5 && dst == DST + 7));
    assert_eq!(t.complete(&a, Completion::Copied), Ok(()));
    assert_eq!(t.status(), STATUS_RUNNING);
    // A busy copy with a bad length, or beside an error, is refused.
    let len_at = 128 + 16;
    let mut bad = img;
    bad[len_at..len_at + 4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[1] = 1; // error code UNMAPPED
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[len_at + 4] = 2; // not a boolean
    assert_eq!(DmaEngine::restore_state(&bad), None);
    let mut bad = img;
    bad[STATE_LEN - 1] = 1; // reserved
    assert_eq!(DmaEngine::restore_state(&bad), None);
    // Not busy: any register values are fine.
    let mut ok = img;
    ok[len_at..len_at + 4].copy_from_slice(&0u32.to_le_bytes());
    ok[len_at + 4] = 0;
    assert!(DmaEngine::restore_state(&ok).is_some());
}
