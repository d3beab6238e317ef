//! Property tests of the 16550A model against an independent reference
//! model written with a `VecDeque` FIFO and the cause table of the module
//! documentation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use mtty_core::uart::*;
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
enum Op {
    Read(u8),
    Write(u8, u8),
    Push(u8),
    Pop,
    Timeout,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..10).prop_map(Op::Read),
        4 => (0u8..10, any::<u8>()).prop_map(|(o, v)| Op::Write(o, v)),
        // Plain THR writes and LCR writes without DLAB, so that data really
        // flows through the FIFO often.
        3 => any::<u8>().prop_map(|v| Op::Write(THR, v)),
        1 => (0u8..0x80).prop_map(|v| Op::Write(LCR, v)),
        2 => any::<u8>().prop_map(Op::Push),
        1 => Just(Op::Pop),
        1 => Just(Op::Timeout),
        1 => Just(Op::Snapshot),
    ]
}

/// Reference model of one port.
#[derive(Debug, Clone)]
struct Model {
    fifo: VecDeque<u8>,
    cap: usize,
    trigger: usize,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    oe: bool,
    thre: bool,
    timeout: bool,
    lines: u8,
    delta: u8,
}

impl Model {
    fn new() -> Self {
        Model {
            fifo: VecDeque::new(),
            cap: 16,
            trigger: 1,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 0,
            dlm: 0,
            oe: false,
            thre: false,
            timeout: false,
            lines: 0xB0,
            delta: 0x03,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    /// Pending causes as [RLS, RDA, TIMEOUT, THRE, MSI].
    fn causes(&self) -> [bool; 5] {
        let n = self.fifo.len();
        let rdi = self.ier & 1 != 0;
        [
            self.ier & 4 != 0 && self.oe,
            rdi && n > 0 && n >= self.trigger,
            rdi && n > 0 && n < self.trigger && self.timeout,
            self.ier & 2 != 0 && self.thre,
            self.ier & 8 != 0 && self.delta != 0,
        ]
    }

    fn mask(&self) -> u32 {
        self.causes()
            .iter()
            .enumerate()
            .map(|(i, c)| u32::from(*c) << i)
            .sum()
    }

    fn expected_lines(&self) -> u8 {
        if self.mcr & 0x10 != 0 {
            let m = self.mcr;
            (if m & 2 != 0 { 0x10 } else { 0 })
                | (if m & 1 != 0 { 0x20 } else { 0 })
                | (if m & 4 != 0 { 0x40 } else { 0 })
                | (if m & 8 != 0 { 0x80 } else { 0 })
        } else {
            let full = self.fifo.len() >= self.cap;
            0xA0 | if self.mcr & 0x20 != 0 && full { 0 } else { 0x10 }
        }
    }

    fn settle_lines(&mut self) {
        let new = self.expected_lines();
        let old = self.lines;
        if (new ^ old) & 0x10 != 0 {
            self.delta |= 1;
        }
        if (new ^ old) & 0x20 != 0 {
            self.delta |= 2;
        }
        if (new ^ old) & 0x80 != 0 {
            self.delta |= 8;
        }
        if old & 0x40 != 0 && new & 0x40 == 0 {
            self.delta |= 4;
        }
        self.lines = new;
    }

    fn push(&mut self, v: u8) -> bool {
        if self.fifo.len() < self.cap {
            self.fifo.push_back(v);
            self.thre = false;
            true
        } else {
            self.oe = true;
            false
        }
    }

    fn pop(&mut self) -> Option<u8> {
        let v = self.fifo.pop_front()?;
        self.timeout = false;
        if self.fifo.is_empty() {
            self.thre = true;
        }
        Some(v)
    }

    fn read(&mut self, off: u8) -> u8 {
        let v = match off {
            0 if self.dlab() => self.dll,
            0 => self.pop().unwrap_or(0),
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => {
                let c = self.causes();
                let id = if c[0] {
                    6
                } else if c[1] {
                    4
                } else if c[2] {
                    0x0C
                } else if c[3] {
                    self.thre = false;
                    2
                } else if c[4] {
                    0
                } else {
                    1
                };
                0xC0 | id
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let n = self.fifo.len();
                let v = u8::from(n > 0) | if self.oe { 2 } else { 0 } | if n == 0 { 0x60 } else { 0 };
                self.oe = false;
                v
            }
            6 => {
                let v = self.lines | self.delta;
                self.delta = 0;
                v
            }
            7 => self.scr,
            _ => 0xFF,
        };
        self.settle_lines();
        v
    }

    fn write(&mut self, off: u8, v: u8) {
        match off {
            0 if self.dlab() => self.dll = v,
            0 => {
                self.push(v);
            }
            1 if self.dlab() => self.dlm = v,
            1 => {
                let new = v & 0x0F;
                if (new ^ self.ier) & 2 != 0 {
                    self.thre = new & 2 != 0 && self.fifo.is_empty();
                }
                self.ier = new;
            }
            2 => {
                if v & 0x06 != 0 {
                    if !self.fifo.is_empty() {
                        self.thre = true;
                    }
                    self.fifo.clear();
                    self.timeout = false;
                }
                if v & 1 != 0 {
                    self.cap = 16;
                    self.trigger = [1, 4, 8, 14][usize::from(v >> 6)];
                } else {
                    self.cap = 1;
                    self.trigger = 1;
                }
            }
            3 => self.lcr = v,
            4 => self.mcr = v,
            7 => self.scr = v,
            _ => {}
        }
        self.settle_lines();
    }
}

fn check_invariants(u: &Uart, m: &Model) {
    assert!(u.rx_len() <= FIFO_SIZE);
    assert_eq!(usize::from(u.rx_len()), m.fifo.len());
    assert_eq!(usize::from(u.trigger_level()), m.trigger);
    assert_eq!(usize::from(u.rx_space()), m.cap.saturating_sub(m.fifo.len()));
    // Level semantics: asserted exactly while an enabled cause is pending.
    assert_eq!(u.irq_asserted(), u.pending_interrupt().is_some());
    assert_eq!(u.irq_asserted(), m.mask() != 0);
    let expected_first = m.causes().iter().position(|c| *c).map(|i| IrqCause::ALL[i]);
    assert_eq!(u.pending_interrupt(), expected_first);
    assert_eq!(u32::from(u.pending_mask()), m.mask());
    assert_eq!(u.divisor(), u16::from(m.dll) | u16::from(m.dlm) << 8);
    let n = m.fifo.len();
    let want_timer = m.ier & 1 != 0 && n > 0 && n < m.trigger && !m.timeout;
    assert_eq!(u.rx_timer_wanted(), want_timer);
}

fn run(ops: &[Op]) {
    let mut u = Uart::new();
    let mut m = Model::new();
    for op in ops {
        let before = m.mask();
        let change = match op {
            Op::Read(off) => {
                let pending = u.pending_interrupt();
                let (v, ch) = u.read(*off);
                assert_eq!(v, m.read(*off), "read of {off} after {ops:?}");
                if *off == IIR {
                    // IIR names exactly the cause pending before the read.
                    assert_eq!(v & 0x0F, pending.map_or(IIR_NO_INT, |c| c.iir_id()));
                    assert_eq!(v & 0xC0, 0xC0);
                }
                if *off == LSR {
                    assert_eq!(v & LSR_DR != 0, v & LSR_THRE == 0);
                }
                ch
            }
            Op::Write(off, v) => {
                m.write(*off, *v);
                u.write(*off, *v)
            }
            Op::Push(v) => {
                let ok = m.push(*v);
                m.settle_lines();
                let (got, ch) = u.rx_push(*v);
                assert_eq!(got, ok);
                ch
            }
            Op::Pop => {
                let want = m.pop();
                m.settle_lines();
                let (got, ch) = u.rx_pop();
                assert_eq!(got, want);
                ch
            }
            Op::Timeout => {
                if !m.fifo.is_empty() {
                    m.timeout = true;
                }
                u.rx_timeout_expired()
            }
            Op::Snapshot => {
                let img = u.save_state();
                let back = Uart::restore_state(&img).expect("own snapshot refused");
                assert_eq!(back.save_state(), img);
                let _ = u.take_rx_activity();
                assert_eq!(back, u);
                u = back;
                IrqChange::Unchanged
            }
        };
        let after = m.mask();
        assert_eq!(change, IrqChange::between(before, after), "after {op:?}");
        match change {
            IrqChange::Raised => assert!(before == 0 && u.irq_asserted()),
            IrqChange::Lowered => assert!(before != 0 && !u.irq_asserted()),
            IrqChange::Resignal => assert!(before != 0 && u.irq_asserted()),
            IrqChange::Unchanged => assert_eq!(before != 0, u.irq_asserted()),
        }
        check_invariants(&u, &m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) + (b): arbitrary register traffic agrees with the reference
    /// model, never panics, and keeps the invariants.
    #[test]
    fn register_traffic_matches_reference_model(ops in prop::collection::vec(op(), 0..300)) {
        run(&ops);
    }

    /// (b): the FIFO alone, with the FIFO enabled at a random trigger level,
    /// behaves exactly like a bounded VecDeque.
    #[test]
    fn fifo_matches_vecdeque(trigger in 0u8..4, ops in prop::collection::vec(prop_oneof![
        any::<u8>().prop_map(Some),
        Just(None),
    ], 0..400)) {
        let mut u = Uart::new();
        u.write(FCR, FCR_ENABLE_FIFO | trigger << 6);
        let mut q: VecDeque<u8> = VecDeque::new();
        let mut overrun = false;
        for o in ops {
            match o {
                Some(b) => {
                    u.write(THR, b);
                    if q.len() < 16 { q.push_back(b) } else { overrun = true }
                }
                None => {
                    let lsr = u.read(LSR).0;
                    prop_assert_eq!(lsr & LSR_OE != 0, overrun);
                    overrun = false;
                    prop_assert_eq!(lsr & LSR_DR != 0, !q.is_empty());
                    prop_assert_eq!(u.read(RBR).0, q.pop_front().unwrap_or(0));
                }
            }
            prop_assert_eq!(usize::from(u.rx_len()), q.len());
        }
    }

    /// Restoring arbitrary bytes never panics, and whatever is accepted
    /// re-encodes to the same bytes and satisfies the invariants.
    #[test]
    fn restore_of_arbitrary_bytes_is_safe(img in prop::array::uniform32(any::<u8>())) {
        if let Some(mut u) = Uart::restore_state(&img) {
            prop_assert_eq!(u.save_state(), img);
            prop_assert!(u.rx_len() <= 16);
            prop_assert_eq!(u.irq_asserted(), u.pending_interrupt().is_some());
            for off in 0..8 {
                let _ = u.read(off);
            }
        }
    }
}
