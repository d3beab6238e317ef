//! Unit tests of the 16550A model: every register, every interrupt cause,
//! and the places where the model intentionally matches or departs from
//! mtty.c.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use mtty_core::uart::*;

fn rd(u: &mut Uart, off: u8) -> u8 {
    u.read(off).0
}

/// A port with FIFO enabled at trigger level `fcr_trigger`.
fn port_with_fcr(fcr: u8) -> Uart {
    let mut u = Uart::new();
    u.write(FCR, fcr);
    u
}

#[test]
fn power_on_register_values() {
    let mut u = Uart::new();
    assert_eq!(rd(&mut u, RBR), 0, "empty FIFO reads 0");
    assert_eq!(rd(&mut u, IER), 0);
    assert_eq!(rd(&mut u, IIR), 0xC1, "no interrupt, 16550A FIFO bits");
    assert_eq!(rd(&mut u, LCR), 0);
    assert_eq!(rd(&mut u, MCR), 0);
    assert_eq!(rd(&mut u, LSR), LSR_THRE | LSR_TEMT);
    // Same first value as mtty.c (DCD|DSR|CTS|DDSR|DCTS), deltas then clear.
    assert_eq!(rd(&mut u, MSR), 0xB3);
    assert_eq!(rd(&mut u, MSR), 0xB0);
    assert_eq!(rd(&mut u, SCR), 0);
    assert_eq!(u.trigger_level(), 1);
    assert_eq!(u.rx_space(), 16);
    assert!(!u.irq_asserted());
}

#[test]
fn scratch_register_holds_any_byte() {
    let mut u = Uart::new();
    for v in [0x00, 0x5A, 0xA5, 0xFF] {
        assert_eq!(u.write(SCR, v), IrqChange::Unchanged);
        assert_eq!(rd(&mut u, SCR), v);
    }
}

#[test]
fn thr_loops_back_into_rbr_in_order() {
    let mut u = Uart::new();
    for b in b"hello" {
        u.write(THR, *b);
    }
    assert_eq!(u.rx_len(), 5);
    assert_eq!(rd(&mut u, LSR) & (LSR_DR | LSR_THRE | LSR_TEMT), LSR_DR);
    let got: Vec<u8> = (0..5).map(|_| rd(&mut u, RBR)).collect();
    assert_eq!(got, b"hello");
    assert_eq!(rd(&mut u, LSR), LSR_THRE | LSR_TEMT);
    assert_eq!(rd(&mut u, RBR), 0);
}

#[test]
fn full_fifo_holds_sixteen_bytes_and_overruns_on_the_seventeenth() {
    let mut u = Uart::new();
    for i in 0..16u8 {
        u.write(THR, i);
    }
    assert_eq!(u.rx_len(), 16);
    // mtty.c would report an empty FIFO here (head == tail).
    assert_eq!(rd(&mut u, LSR), LSR_DR);
    u.write(THR, 0xEE);
    assert_eq!(u.rx_len(), 16, "overrun byte is dropped");
    assert_eq!(rd(&mut u, LSR), LSR_DR | LSR_OE);
    assert_eq!(rd(&mut u, LSR), LSR_DR, "reading LSR clears OE");
    let got: Vec<u8> = (0..16).map(|_| rd(&mut u, RBR)).collect();
    assert_eq!(got, (0..16).collect::<Vec<u8>>());
}

#[test]
fn divisor_latch_is_reached_through_dlab() {
    let mut u = Uart::new();
    u.write(IER, IER_RDI | IER_MSI);
    u.write(LCR, LCR_DLAB | 0x03);
    assert_eq!(rd(&mut u, LCR), 0x83);
    u.write(DLL, 0x0C);
    u.write(DLM, 0x01);
    // A second DLL write replaces the byte (mtty.c would OR it in).
    u.write(DLL, 0x30);
    assert_eq!(rd(&mut u, DLL), 0x30);
    assert_eq!(rd(&mut u, DLM), 0x01);
    assert_eq!(u.divisor(), 0x0130);
    assert_eq!(u.rx_len(), 0, "DLL write is not a THR write");
    u.write(LCR, 0x03);
    assert_eq!(rd(&mut u, IER), IER_RDI | IER_MSI, "IER untouched by DLM writes");
    assert_eq!(u.divisor(), 0x0130);
    // Re-entering DLAB keeps the divisor, as on hardware.
    u.write(LCR, 0x83);
    assert_eq!(rd(&mut u, DLL), 0x30);
}

#[test]
fn ier_reads_back_low_nibble_only() {
    let mut u = Uart::new();
    u.write(IER, 0xF0);
    assert_eq!(rd(&mut u, IER), 0);
    u.write(IER, 0xF5);
    assert_eq!(rd(&mut u, IER), 0x05);
}

#[test]
fn fcr_clear_bits_empty_the_fifo() {
    for clear in [FCR_CLEAR_RCVR, FCR_CLEAR_XMIT] {
        let mut u = Uart::new();
        u.write(THR, 1);
        u.write(THR, 2);
        u.write(FCR, FCR_ENABLE_FIFO | clear);
        assert_eq!(u.rx_len(), 0);
        assert_eq!(rd(&mut u, LSR), LSR_THRE | LSR_TEMT);
        u.write(THR, 3);
        assert_eq!(rd(&mut u, RBR), 3, "FIFO indices restart cleanly");
    }
}

#[test]
fn fcr_trigger_levels() {
    for (bits, level) in [
        (FCR_TRIGGER_1, 1),
        (FCR_TRIGGER_4, 4),
        (FCR_TRIGGER_8, 8),
        (FCR_TRIGGER_14, 14),
    ] {
        let u = port_with_fcr(FCR_ENABLE_FIFO | bits);
        assert_eq!(u.trigger_level(), level);
        assert_eq!(u.fcr(), FCR_ENABLE_FIFO | bits);
    }
    // Without FIFO enable the port holds one byte and triggers at 1.
    let mut u = port_with_fcr(FCR_TRIGGER_14);
    assert_eq!(u.trigger_level(), 1);
    u.write(THR, 1);
    u.write(THR, 2);
    assert_eq!(u.rx_len(), 1);
    assert_eq!(rd(&mut u, LSR), LSR_DR | LSR_OE);
}

#[test]
fn lcr_and_mcr_read_back_what_was_written() {
    let mut u = Uart::new();
    u.write(LCR, 0x1B);
    assert_eq!(rd(&mut u, LCR), 0x1B);
    u.write(MCR, 0x2B);
    assert_eq!(rd(&mut u, MCR), 0x2B, "MCR keeps all bits like mtty.c");
}

#[test]
fn lsr_msr_writes_and_unknown_offsets_are_ignored() {
    let mut u = Uart::new();
    let _ = rd(&mut u, MSR);
    u.write(LSR, 0xFF);
    u.write(MSR, 0xFF);
    u.write(8, 0x12);
    u.write(0xFF, 0x12);
    assert_eq!(rd(&mut u, LSR), LSR_THRE | LSR_TEMT);
    assert_eq!(rd(&mut u, MSR), 0xB0);
    assert_eq!(rd(&mut u, 8), 0xFF);
    assert_eq!(rd(&mut u, 200), 0xFF);
    assert_eq!(u, {
        let mut v = Uart::new();
        let _ = v.read(MSR);
        v
    });
}

#[test]
fn received_data_interrupt_is_a_level_at_trigger_one() {
    let mut u = port_with_fcr(FCR_ENABLE_FIFO);
    assert_eq!(u.write(IER, IER_RDI), IrqChange::Unchanged);
    assert_eq!(u.write(THR, b'a'), IrqChange::Raised);
    assert_eq!(u.pending_interrupt(), Some(IrqCause::ReceivedData));
    assert_eq!(u.write(THR, b'b'), IrqChange::Unchanged, "still the same level");
    assert_eq!(rd(&mut u, IIR), 0xC4);
    assert_eq!(rd(&mut u, IIR), 0xC4, "reading IIR does not clear RDA");
    assert_eq!(u.read(RBR), (b'a', IrqChange::Unchanged));
    assert_eq!(u.read(RBR), (b'b', IrqChange::Lowered));
    assert_eq!(rd(&mut u, IIR), 0xC1);
}

#[test]
fn received_data_waits_for_the_trigger_level() {
    let mut u = port_with_fcr(FCR_ENABLE_FIFO | FCR_TRIGGER_4);
    u.write(IER, IER_RDI);
    for b in 0..3 {
        assert_eq!(u.write(THR, b), IrqChange::Unchanged);
    }
    assert!(!u.irq_asserted());
    assert_eq!(u.write(THR, 3), IrqChange::Raised);
    // A fifth byte keeps it pending (mtty.c only fires at count == level).
    u.write(THR, 4);
    assert_eq!(u.pending_interrupt(), Some(IrqCause::ReceivedData));
    assert_eq!(u.read(RBR).1, IrqChange::Unchanged);
    assert_eq!(u.read(RBR).1, IrqChange::Lowered, "3 bytes left, below 4");
}

#[test]
fn character_timeout_reports_data_below_the_trigger_level() {
    let mut u = port_with_fcr(FCR_ENABLE_FIFO | FCR_TRIGGER_8);
    assert!(!u.rx_timer_wanted());
    u.write(IER, IER_RDI);
    u.write(THR, b'x');
    u.write(THR, b'y');
    assert!(u.take_rx_activity());
    assert!(!u.take_rx_activity());
    assert!(u.rx_timer_wanted());
    assert!(!u.irq_asserted());
    assert_eq!(u.rx_timeout_expired(), IrqChange::Raised);
    assert!(!u.rx_timer_wanted(), "no timer while the timeout is pending");
    assert_eq!(u.pending_interrupt(), Some(IrqCause::CharacterTimeout));
    assert_eq!(rd(&mut u, IIR), 0xCC);
    assert_eq!(u.read(RBR), (b'x', IrqChange::Lowered));
    assert!(u.take_rx_activity());
    assert!(u.rx_timer_wanted(), "one byte left, timer again");
    assert_eq!(u.rx_timeout_expired(), IrqChange::Raised);
    assert_eq!(u.read(RBR), (b'y', IrqChange::Lowered));
    assert!(!u.rx_timer_wanted());
    assert_eq!(u.rx_timeout_expired(), IrqChange::Unchanged, "empty FIFO: no timeout");
}

#[test]
fn character_timeout_needs_ier_rdi_and_is_cleared_by_fifo_reset() {
    let mut u = port_with_fcr(FCR_ENABLE_FIFO | FCR_TRIGGER_4);
    u.write(THR, 1);
    assert!(!u.rx_timer_wanted(), "no timer without IER.RDI");
    assert_eq!(u.rx_timeout_expired(), IrqChange::Unchanged);
    assert_eq!(u.write(IER, IER_RDI), IrqChange::Raised, "enabling shows it");
    assert_eq!(u.write(FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR), IrqChange::Lowered);
}

#[test]
fn timeout_ns_follows_divisor_and_frame() {
    let mut u = Uart::new();
    u.write(LCR, LCR_DLAB | 0x03);
    u.write(DLL, 1);
    u.write(DLM, 0);
    u.write(LCR, 0x03);
    // 8N1 = 10 bits, 4 characters at 115200 baud.
    assert_eq!(u.rx_timeout_ns(), 40 * 1_000_000_000 / 115_200);
    u.write(LCR, 0x03 | LCR_PARITY | LCR_STOP);
    assert_eq!(u.rx_timeout_ns(), 48 * 1_000_000_000 / 115_200);
    let mut z = Uart::new();
    assert_eq!(z.divisor(), 0);
    // Divisor 0 counts as 1; 5N1 = 7 bits.
    assert_eq!(z.rx_timeout_ns(), 28 * 1_000_000_000 / 115_200);
    z.write(LCR, LCR_DLAB);
    z.write(DLL, 0xFF);
    z.write(DLM, 0xFF);
    assert_eq!(z.rx_timeout_ns(), 28 * 1_000_000_000 * 65_535 / 115_200);
    z.reset();
}

#[test]
fn thr_empty_interrupt_is_acknowledged_by_reading_iir() {
    let mut u = Uart::new();
    assert_eq!(u.write(IER, IER_THRI), IrqChange::Raised, "rising edge with THR empty");
    assert_eq!(u.pending_interrupt(), Some(IrqCause::ThrEmpty));
    assert_eq!(u.read(IIR), (0xC2, IrqChange::Lowered));
    assert_eq!(rd(&mut u, IIR), 0xC1);
    // Writing IER again without an edge does not re-raise it.
    assert_eq!(u.write(IER, IER_THRI), IrqChange::Unchanged);
    // Filling and draining the FIFO (THR empty again) re-raises it.
    assert_eq!(u.write(THR, 7), IrqChange::Unchanged);
    assert_eq!(u.read(RBR), (7, IrqChange::Raised));
    assert_eq!(rd(&mut u, IIR), 0xC2);
    // A THR write clears a pending THRE.
    u.write(THR, 8);
    let _ = u.read(RBR);
    assert!(u.irq_asserted());
    assert_eq!(u.write(THR, 9), IrqChange::Lowered);
}

#[test]
fn thr_empty_rearms_on_ier_toggle_like_linux_probes() {
    // serial8250_do_startup writes IER=THRI, reads IIR, writes 0, writes
    // THRI again and expects THRE to be reported a second time.
    let mut u = Uart::new();
    u.write(IER, IER_THRI);
    assert_eq!(rd(&mut u, IIR) & 0x0F, IIR_THRI);
    u.write(IER, 0);
    u.write(IER, IER_THRI);
    assert_eq!(rd(&mut u, IIR) & 0x0F, IIR_THRI);
    // Disabling THRI drops the latch.
    u.write(IER, IER_THRI);
    u.write(IER, 0);
    assert!(!u.irq_asserted());
}

#[test]
fn fifo_clear_makes_thr_empty() {
    let mut u = Uart::new();
    u.write(IER, IER_THRI);
    let _ = u.read(IIR);
    u.write(THR, 1);
    assert_eq!(u.write(FCR, FCR_ENABLE_FIFO | FCR_CLEAR_XMIT), IrqChange::Raised);
    assert_eq!(u.pending_interrupt(), Some(IrqCause::ThrEmpty));
}

#[test]
fn line_status_interrupt_on_overrun_until_lsr_read() {
    let mut u = Uart::new();
    u.write(IER, IER_RLSI);
    for i in 0..16 {
        assert_eq!(u.write(THR, i), IrqChange::Unchanged);
    }
    assert_eq!(u.write(THR, 99), IrqChange::Raised);
    assert_eq!(rd(&mut u, IIR), 0xC6);
    // Draining the FIFO does not acknowledge it; reading LSR does.
    let _ = u.read(RBR);
    assert!(u.irq_asserted());
    assert_eq!(u.read(LSR), (LSR_DR | LSR_OE, IrqChange::Lowered));
}

#[test]
fn modem_status_interrupt_until_msr_read() {
    let mut u = Uart::new();
    // The power-on deltas are pending; enabling MSI reports them.
    assert_eq!(u.write(IER, IER_MSI), IrqChange::Raised);
    assert_eq!(rd(&mut u, IIR), 0xC0, "ID 0 with bit 0 clear, not 'no interrupt'");
    assert_eq!(u.read(MSR), (0xB3, IrqChange::Lowered));
    // Outside loop mode RTS/DTR do not change the inputs.
    assert_eq!(u.write(MCR, MCR_RTS | MCR_DTR | MCR_OUT2), IrqChange::Unchanged);
    assert_eq!(rd(&mut u, MSR), 0xB0);
}

#[test]
fn loopback_mode_wires_mcr_outputs_to_msr_inputs() {
    let mut u = Uart::new();
    let _ = u.read(MSR);
    u.write(IER, IER_MSI);
    // The Linux 8250 loopback probe: LOOP | OUT2 | RTS reads CTS and DCD.
    assert_eq!(u.write(MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS), IrqChange::Raised);
    assert_eq!(rd(&mut u, MSR) & MSR_STATUS_MASK, MSR_DCD | MSR_CTS);
    assert!(!u.irq_asserted());
    u.write(MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
    let msr = rd(&mut u, MSR);
    assert_eq!(msr & MSR_STATUS_MASK, MSR_DSR | MSR_RI);
    assert_eq!(msr & MSR_ANY_DELTA, MSR_DCTS | MSR_DDSR | MSR_DDCD);
    // RI falling edge sets TERI.
    u.write(MCR, MCR_LOOP | MCR_DTR);
    assert_eq!(rd(&mut u, MSR), MSR_DSR | MSR_TERI);
}

#[test]
fn auto_flow_control_drops_cts_when_full() {
    let mut u = Uart::new();
    let _ = u.read(MSR);
    u.write(MCR, MCR_AFE);
    assert_eq!(rd(&mut u, MSR), MSR_DCD | MSR_DSR | MSR_CTS);
    u.write(IER, IER_MSI);
    for i in 0..15 {
        assert_eq!(u.write(THR, i), IrqChange::Unchanged);
    }
    assert_eq!(u.write(THR, 15), IrqChange::Raised, "CTS dropped");
    assert_eq!(rd(&mut u, MSR), MSR_DCD | MSR_DSR | MSR_DCTS);
    let _ = u.read(RBR);
    assert_eq!(rd(&mut u, MSR), MSR_DCD | MSR_DSR | MSR_CTS | MSR_DCTS);
}

#[test]
fn iir_reports_causes_in_priority_order() {
    let mut u = Uart::new();
    // Make all four kinds pending: MSR deltas from power-on, an overrun,
    // a full FIFO, and THRE (latched below).
    for i in 0..17 {
        u.write(THR, i);
    }
    u.write(IER, IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
    assert_eq!(rd(&mut u, IIR), 0xC6, "line status first");
    let _ = u.read(LSR);
    assert_eq!(rd(&mut u, IIR), 0xC4, "then received data");
    for _ in 0..16 {
        let _ = u.read(RBR);
    }
    assert_eq!(rd(&mut u, IIR), 0xC2, "then THR empty (latched when the FIFO drained)");
    assert_eq!(rd(&mut u, IIR), 0xC0, "then modem status");
    let _ = u.read(MSR);
    assert_eq!(rd(&mut u, IIR), 0xC1);
    assert!(!u.irq_asserted());
}

#[test]
fn enabling_a_cause_that_already_holds_raises_the_line() {
    let mut u = Uart::new();
    u.write(THR, 1);
    assert!(!u.irq_asserted());
    assert_eq!(u.write(IER, IER_RDI), IrqChange::Raised);
    assert_eq!(u.write(IER, 0), IrqChange::Lowered);
    assert_eq!(u.write(IER, IER_RDI), IrqChange::Raised, "still pending, re-raised");
}

#[test]
fn a_new_cause_while_asserted_asks_for_a_resignal() {
    let mut u = Uart::new();
    let _ = u.read(MSR);
    u.write(IER, IER_RDI | IER_RLSI);
    for i in 0..16 {
        u.write(THR, i);
    }
    assert!(u.irq_asserted());
    assert_eq!(u.write(THR, 16), IrqChange::Resignal, "overrun on top of RDA");
    assert_eq!(u.write(THR, 17), IrqChange::Unchanged);
}

#[test]
fn irq_change_classification() {
    assert_eq!(IrqChange::between(0, 0), IrqChange::Unchanged);
    assert_eq!(IrqChange::between(0, 4), IrqChange::Raised);
    assert_eq!(IrqChange::between(4, 0), IrqChange::Lowered);
    assert_eq!(IrqChange::between(4, 6), IrqChange::Resignal);
    assert_eq!(IrqChange::between(4, 8), IrqChange::Resignal);
    assert_eq!(IrqChange::between(6, 4), IrqChange::Unchanged);
    assert!(IrqChange::Raised.needs_signal() && IrqChange::Resignal.needs_signal());
    assert!(!IrqChange::Lowered.needs_signal() && !IrqChange::Unchanged.needs_signal());
    for c in IrqCause::ALL {
        assert_eq!(c.iir_id() & IIR_NO_INT, 0);
    }
}

#[test]
fn rx_push_and_pop_are_the_wire_side_of_the_fifo() {
    let mut u = Uart::new();
    u.write(IER, IER_RDI);
    assert_eq!(u.rx_push(0x41), (true, IrqChange::Raised));
    u.write(LCR, LCR_DLAB);
    // rx_pop ignores DLAB (an RBR read would return DLL).
    assert_eq!(u.rx_pop(), (Some(0x41), IrqChange::Lowered));
    assert_eq!(u.rx_pop(), (None, IrqChange::Unchanged));
    for i in 0..16 {
        assert!(u.rx_push(i).0);
    }
    assert_eq!(u.rx_space(), 0);
    assert!(!u.rx_push(0).0);
    assert_eq!(rd(&mut u, LSR) & LSR_OE, LSR_OE);
}

#[test]
fn snapshot_round_trip_and_rejection() {
    let mut u = port_with_fcr(FCR_ENABLE_FIFO | FCR_TRIGGER_4);
    for b in b"abc" {
        u.write(THR, *b);
    }
    u.write(IER, IER_RDI | IER_THRI);
    u.write(SCR, 0x77);
    u.write(LCR, 0x83);
    u.write(DLL, 3);
    let _ = u.rx_timeout_expired();
    let img = u.save_state();
    let back = Uart::restore_state(&img).expect("valid image");
    let mut back2 = back.clone();
    assert_eq!(back, {
        let mut v = u.clone();
        let _ = v.take_rx_activity();
        v
    });
    assert_eq!(rd(&mut back2, IIR), 0xCC);
    assert_eq!(back2.save_state(), img);

    // Count beyond the FIFO, inconsistent indices, bad trigger, stray bits.
    for (idx, val) in [(25usize, 17u8), (23, 9), (27, 3), (28, 0x80), (0, 0x10), (31, 1)] {
        let mut bad = img;
        bad[idx] = val;
        assert_eq!(Uart::restore_state(&bad), None, "byte {idx} = {val:#x} accepted");
    }
    // MSR status that does not match MCR is refused.
    let mut bad = img;
    bad[29] ^= MSR_CTS;
    assert_eq!(Uart::restore_state(&bad), None);
    assert_eq!(STATE_LEN, 32);
}
