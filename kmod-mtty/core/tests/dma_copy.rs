//! Tests of the DMA engine's copy command (COPY_SRC, COPY_DST, COPY_LEN,
//! DOORBELL.COPY), driven through the simulated driver in `common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod common;

use common::rings::{post_rx, post_tx, sim_with_rings, BUFS, TX_RING};
use common::{Sim, PAGE};
use mtty_core::dma_engine::*;


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
