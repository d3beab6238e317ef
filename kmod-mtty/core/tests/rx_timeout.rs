//! The character-timeout timer decisions (`rx_timeout.rs`): unit cases and a
//! property test that drives two ports and a simulated one-shot timer with
//! random accesses, clock advances and early or spurious timer callbacks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use mtty_core::rx_timeout::*;
use mtty_core::uart::*;
use proptest::prelude::*;

/// Two ports; port 0 with FIFO trigger level 8 and IER.RDI, 8N1 at 115200.
fn ports() -> [Uart; 2] {
    let mut p = [Uart::new(), Uart::new()];
    for u in p.iter_mut() {
        u.write(LCR, LCR_DLAB | 0x03);
        u.write(DLL, 1);
        u.write(LCR, 0x03);
        u.write(FCR, FCR_ENABLE_FIFO | FCR_TRIGGER_8);
    }
    p[0].write(IER, IER_RDI);
    p
}

/// 4 characters of 10 bits at 115200 baud.
const T: u64 = 40 * 1_000_000_000 / 115_200;

#[test]
fn no_data_no_timer() {
    let mut p = ports();
    let mut t = RxTimeouts::new();
    assert_eq!(t.update(&mut p, 0), TimerCmd::Keep);
    assert_eq!(t.armed(), None);
}

#[test]
fn data_below_trigger_arms_and_expiry_raises_the_timeout() {
    let mut p = ports();
    let mut t = RxTimeouts::new();
    p[0].write(THR, b'a');
    p[0].write(THR, b'b');
    assert_eq!(t.update(&mut p, 1_000), TimerCmd::Arm { delay_us: T.div_ceil(1000) });
    assert_eq!(t.deadline(0), Some(1_000 + T));
    assert_eq!(t.deadline(1), None);
    // A register access that moves nothing keeps the timer.
    let _ = p[0].read(LSR);
    assert_eq!(t.update(&mut p, 2_000), TimerCmd::Keep);
    // Fired a little early (jiffy rounding): nothing times out, re-armed.
    assert_eq!(t.expire(&mut p, 1_000 + T - 10), TimerCmd::Arm { delay_us: 1 });
    assert!(!p[0].irq_asserted());
    // On time: the timeout is pending and no timer is needed any more.
    assert_eq!(t.expire(&mut p, 1_000 + T), TimerCmd::Cancel);
    assert_eq!(p[0].pending_interrupt(), Some(IrqCause::CharacterTimeout));
    assert_eq!(p[0].read(IIR).0, IIR_FIFO_BITS | IIR_RX_TIMEOUT);
    assert_eq!(t.update(&mut p, 1_000 + T), TimerCmd::Keep);
    // Reading one byte clears it and starts a new timeout for the other.
    assert_eq!(p[0].read(RBR).0, b'a');
    let now = 5 * T;
    assert_eq!(t.update(&mut p, now), TimerCmd::Arm { delay_us: T.div_ceil(1000) });
    assert_eq!(t.deadline(0), Some(now + T));
}

#[test]
fn traffic_restarts_the_timeout() {
    let mut p = ports();
    let mut t = RxTimeouts::new();
    p[0].write(THR, 1);
    let _ = t.update(&mut p, 0);
    p[0].write(THR, 2);
    assert_eq!(t.update(&mut p, T / 2), TimerCmd::Arm { delay_us: T.div_ceil(1000) });
    assert_eq!(t.deadline(0), Some(T / 2 + T));
    // The old deadline passes: nothing happens.
    assert!(matches!(t.expire(&mut p, T), TimerCmd::Arm { .. }));
    assert!(!p[0].irq_asserted());
}

#[test]
fn reaching_the_trigger_level_or_draining_cancels() {
    let mut p = ports();
    let mut t = RxTimeouts::new();
    for b in 0..7 {
        p[0].write(THR, b);
    }
    assert!(matches!(t.update(&mut p, 0), TimerCmd::Arm { .. }));
    p[0].write(THR, 7);
    assert_eq!(t.update(&mut p, 10), TimerCmd::Cancel, "8 bytes: received-data, no timeout");
    assert_eq!(p[0].pending_interrupt(), Some(IrqCause::ReceivedData));
    let _ = p[0].read(RBR);
    assert!(matches!(t.update(&mut p, 20), TimerCmd::Arm { .. }), "below the level again");
    p[0].write(FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR | FCR_TRIGGER_8);
    assert_eq!(t.update(&mut p, 30), TimerCmd::Cancel);
    assert_eq!(t.armed(), None);
}

#[test]
fn no_timeout_without_ier_rdi_and_reset_cancels() {
    let mut p = ports();
    let mut t = RxTimeouts::new();
    p[1].write(THR, 1);
    assert_eq!(t.update(&mut p, 0), TimerCmd::Keep, "port 1 has IER.RDI clear");
    p[1].write(IER, IER_RDI);
    assert!(matches!(t.update(&mut p, 0), TimerCmd::Arm { .. }));
    p[1].reset();
    assert_eq!(t.update(&mut p, 1), TimerCmd::Cancel);
}

#[test]
fn earliest_of_two_ports_wins() {
    let mut p = ports();
    p[1].write(IER, IER_RDI);
    let mut t = RxTimeouts::new();
    p[1].write(THR, 1);
    let _ = t.update(&mut p, 0);
    p[0].write(THR, 1);
    assert_eq!(t.update(&mut p, 100), TimerCmd::Keep, "port 1 still first");
    assert_eq!(t.expire(&mut p, T), TimerCmd::Arm { delay_us: 1 });
    assert!(p[1].irq_asserted());
    assert!(!p[0].irq_asserted());
    assert_eq!(t.expire(&mut p, T + 100), TimerCmd::Cancel);
    assert!(p[0].irq_asserted());
}

#[test]
fn a_spurious_callback_with_nothing_pending_cancels() {
    let mut p = ports();
    let mut t = RxTimeouts::new();
    assert_eq!(t.expire(&mut p, 123), TimerCmd::Cancel);
}

#[derive(Debug, Clone)]
enum Op {
    Write { port: usize, off: u8, val: u8 },
    Read { port: usize, off: u8 },
    /// Let time pass; the timer fires if its expiry is reached.
    Advance(u64),
    /// A callback at an arbitrary time (early or racing).
    Spurious,
}

fn op() -> impl Strategy<Value = Op> {
    let port = 0usize..2;
    prop_oneof![
        4 => (port.clone(), any::<u8>()).prop_map(|(port, val)| Op::Write { port, off: THR, val }),
        1 => (port.clone(), 0u8..2).prop_map(|(port, v)| Op::Write { port, off: IER, val: v }),
        1 => (port.clone(), prop::sample::select(vec![0x01u8, 0x41, 0x81, 0xC1, 0x03, 0x43, 0x83, 0x00]))
            .prop_map(|(port, val)| Op::Write { port, off: FCR, val }),
        3 => (port.clone(), prop::sample::select(vec![RBR, IIR, LSR])).prop_map(|(port, off)| Op::Read { port, off }),
        3 => (0u64..3 * T).prop_map(Op::Advance),
        1 => Just(Op::Spurious),
    ]
}

proptest! {
    /// With the driver's loop simulated (update after every access, a
    /// one-shot timer that follows `TimerCmd`, callbacks on expiry and at
    /// random):
    /// * a port times out only when a full timeout passed since its FIFO
    ///   last moved;
    /// * a port that wants a timeout always has a deadline no later than a
    ///   full timeout after its last traffic, and the timer is armed for the
    ///   earliest deadline;
    /// * once time passes a deadline and the timer fires, the port's timeout
    ///   is pending (no lost timeout).
    #[test]
    fn timer_follows_the_fifo(ops in prop::collection::vec(op(), 1..200)) {
        let mut p = ports();
        let mut t = RxTimeouts::new();
        let mut now = 0u64;
        let mut timer: Option<u64> = None;
        let mut last_move = [0u64; 2];
        let apply = |cmd: TimerCmd, now: u64, timer: &mut Option<u64>| match cmd {
            TimerCmd::Keep => {}
            TimerCmd::Arm { delay_us } => *timer = Some(now + delay_us * 1000),
            TimerCmd::Cancel => *timer = None,
        };
        for o in ops {
            match o {
                Op::Write { port, off, val } => {
                    let before = p[port].rx_len();
                    p[port].write(off, val);
                    if p[port].rx_len() != before { last_move[port] = now; }
                    let cmd = t.update(&mut p, now);
                    apply(cmd, now, &mut timer);
                }
                Op::Read { port, off } => {
                    let before = p[port].rx_len();
                    let _ = p[port].read(off);
                    if p[port].rx_len() != before { last_move[port] = now; }
                    let cmd = t.update(&mut p, now);
                    apply(cmd, now, &mut timer);
                }
                Op::Advance(dt) => {
                    let end = now + dt;
                    // Fire the timer as often as it expires within the step.
                    while let Some(at) = timer.filter(|&at| at <= end) {
                        now = now.max(at);
                        let pending: Vec<bool> = p.iter().map(|u| u.pending_interrupt() == Some(IrqCause::CharacterTimeout)).collect();
                        let cmd = t.expire(&mut p, now);
                        timer = None;
                        apply(cmd, now, &mut timer);
                        for i in 0..2 {
                            let newly = p[i].pending_interrupt() == Some(IrqCause::CharacterTimeout) && !pending[i];
                            prop_assert!(!newly || now >= last_move[i] + p[i].rx_timeout_ns(), "early timeout on port {}", i);
                        }
                    }
                    now = end;
                }
                Op::Spurious => {
                    let pending: Vec<bool> = p.iter().map(|u| u.pending_interrupt() == Some(IrqCause::CharacterTimeout)).collect();
                    let cmd = t.expire(&mut p, now);
                    apply(cmd, now, &mut timer);
                    for i in 0..2 {
                        let newly = p[i].pending_interrupt() == Some(IrqCause::CharacterTimeout) && !pending[i];
                        prop_assert!(!newly || now >= last_move[i] + p[i].rx_timeout_ns(), "early timeout on port {}", i);
                    }
                }
            }
            // Deadlines and the timer follow the ports.
            let mut earliest: Option<u64> = None;
            for i in 0..2 {
                match t.deadline(i) {
                    Some(d) => {
                        prop_assert!(p[i].rx_timer_wanted());
                        prop_assert!(d <= last_move[i] + p[i].rx_timeout_ns() || d <= now + p[i].rx_timeout_ns());
                        earliest = Some(earliest.map_or(d, |e: u64| e.min(d)));
                    }
                    None => prop_assert!(!p[i].rx_timer_wanted(), "port {} wants a timeout but has no deadline", i),
                }
            }
            prop_assert_eq!(t.armed(), earliest);
            if let Some(e) = earliest {
                let at = timer.expect("a deadline without a running timer");
                prop_assert!(at >= e, "timer fires before the deadline it is for");
                prop_assert!(at < e + 1000, "timer later than the deadline by a microsecond or more");
            }
        }
    }
}
