//! Unit and scenario tests of the DMA engine, driven through the simulated
//! driver in `common`: registers, the data path through both rings, ring
//! indices, descriptor and pin helpers, snapshots. Fault handling is in
//! `dma_faults.rs`, the copy command in `dma_copy.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod common;

use common::rings::{desc, drain_uart, post_rx, post_tx, sim_with_rings, BUFS, RX_RING, TX_RING};
use common::{Sim, PAGE};
use mtty_core::dma_engine::*;
use mtty_core::uart::LSR;


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
