//! Fault tests of the DMA engine, driven through the simulated driver in
//! `common`: unmaps of pinned pages, pin and access failures, bad
//! descriptors, ring geometry and indices, stale completions, reset.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod common;

use common::rings::{desc, drain_uart, post_tx, sim_with_rings, BUFS, RX_RING, TX_RING};
use common::{Sim, PAGE};
use mtty_core::dma_engine::*;

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
