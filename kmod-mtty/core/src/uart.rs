//! Model of one 16550A port of the mtty device.
//!
//! This file is one concept, the 16550A register model: the register and bit
//! constants, the interrupt causes and the port's state machine (with its
//! snapshot) describe the same chip and are read together, so it stays one
//! file although it is longer than the others.
//!
//! The data path follows `handle_bar_write`/`handle_bar_read` of
//! `samples/vfio-mdev/mtty.c`: the port is a loopback, so every byte the
//! guest writes to THR lands in the port's own 16-byte receive FIFO and is
//! read back through RBR. LSR reports "data ready" while the FIFO holds data
//! and "transmitter empty" while it is empty, the divisor latch is reached
//! through LCR.DLAB, SCR is a plain scratch byte, and IIR always has bits 7:6
//! set as a 16550A with enabled FIFOs does.
//!
//! # Interrupts are a level
//!
//! The C sample treats interrupts as events: it signals the eventfd at the
//! instant the FIFO count becomes equal to the trigger level, when a THR
//! write overruns, on some IER and MCR writes, and it forgets the event if
//! INTx is masked at that moment. A guest that misses one of those instants
//! never hears about the data again. This model instead keeps the set of
//! *pending causes* as state, exactly like the INTR pin of a real 16550:
//!
//! | priority | cause                        | pending while                                             | cleared by                                |
//! |----------|------------------------------|-----------------------------------------------------------|-------------------------------------------|
//! | 1        | receiver line status (0x06)  | IER.RLSI and LSR.OE                                       | reading LSR                               |
//! | 2        | received data (0x04)         | IER.RDI and FIFO count >= trigger level                   | reading RBR below the trigger level       |
//! | 2        | character timeout (0x0C)     | IER.RDI, 0 < count < trigger and the timeout has expired  | reading RBR, clearing the FIFO            |
//! | 3        | THR empty (0x02)             | IER.THRI and the THRE latch                               | reading IIR while it reports THRE, THR write |
//! | 4        | modem status (0x00)          | IER.MSI and any MSR delta bit                             | reading MSR                               |
//!
//! [`Uart::pending_interrupt`] returns the highest-priority enabled cause and
//! [`Uart::irq_asserted`] is true exactly while one is pending. Every access
//! returns an [`IrqChange`] computed from the set of pending causes before
//! and after it, so the driver can assert INTx or send an MSI while a cause
//! is pending, re-signal a cause that is still pending when the guest
//! unmasks INTx, and send a fresh MSI when a new cause appears (for example
//! when IER newly enables a condition that already holds).
//!
//! ## Character timeout
//!
//! A real 16550 raises the timeout interrupt when the FIFO holds data below
//! the trigger level and nothing moved through it for four character times.
//! The model has no clock, so the driver owns a timer: whenever
//! [`Uart::rx_timer_wanted`] is true it arms a one-shot timer of
//! [`Uart::rx_timeout_ns`], restarts it whenever [`Uart::take_rx_activity`]
//! reports FIFO traffic, and calls [`Uart::rx_timeout_expired`] when it
//! fires. The expiry sets a flag that makes the timeout cause pending (if
//! IER.RDI is set and data is still below the trigger level); reading RBR,
//! clearing the FIFO or a reset clears it.
//!
//! # Differences from mtty.c
//!
//! Each one either follows from the level semantics above or fixes a bug of
//! the sample that a guest driver could observe:
//!
//! * Interrupts are levels (see above), not one-shot events.
//! * IIR reports only the highest-priority cause. The sample ORs the IDs of
//!   all pending causes together, so "received data + THR empty" read as
//!   "line status", and a modem-status cause (ID 0) read as "no interrupt".
//! * Reading IIR while it reports THR empty acknowledges that cause, and the
//!   cause re-arms when the FIFO drains or IER.THRI goes from 0 to 1. The
//!   sample reports THRE whenever IER.THRI is set and the FIFO is empty, which
//!   the guest cannot acknowledge, and raises an event on every IER write with
//!   THRI set rather than on its rising edge.
//! * FCR trigger levels 1, 4, 8 and 14 are honoured, because the character
//!   timeout now exists. The sample forces the trigger level to 1 on every FCR
//!   write for lack of a timeout (see its own comment).
//! * The reset trigger level is 1. The sample starts at 0, which makes a port
//!   with IER.RDI set report "received data" with an empty FIFO until the
//!   guest first writes FCR.
//! * LSR.OE is cleared by reading LSR, as on hardware, so that the guest can
//!   acknowledge a line-status interrupt. The sample clears it only when a
//!   later byte is accepted into the FIFO and never on an LSR read.
//! * MSR delta bits (DCTS, DDSR, TERI, DDCD) are latched on changes of the
//!   status lines and cleared by reading MSR; the modem-status cause is
//!   pending while one is set. The sample returns DDSR and DCTS on every read
//!   and raises events on MCR writes of RTS/DTR/OUT2. The first MSR read after
//!   reset still returns 0xB3 like the sample.
//! * With MCR.LOOP set, the MSR status lines follow the MCR outputs (CTS=RTS,
//!   DSR=DTR, RI=OUT1, DCD=OUT2) as in a real 16550's loopback mode; the
//!   sample ignores LOOP.
//! * A FIFO holding 16 bytes is full, not empty. The sample tests emptiness
//!   with `head == tail`, which is also true when full, so a full FIFO reads
//!   as empty and stays stuck until FCR clears it.
//! * DLL and DLM writes replace their byte of the divisor. The sample ORs the
//!   byte into the divisor and zeroes it whenever LCR.DLAB is written as 1,
//!   which gives the same result only for the usual one-shot sequence.
//! * RBR read with an empty FIFO returns 0 (the sample returns whatever the
//!   caller's buffer held); offsets 8 and above read 0xFF and ignore writes.

/// Receive buffer register offset (read, DLAB = 0).
pub const RBR: u8 = 0;
/// Transmit holding register offset (write, DLAB = 0).
pub const THR: u8 = 0;
/// Divisor latch low byte offset (DLAB = 1).
pub const DLL: u8 = 0;
/// Interrupt enable register offset (DLAB = 0).
pub const IER: u8 = 1;
/// Divisor latch high byte offset (DLAB = 1).
pub const DLM: u8 = 1;
/// Interrupt identification register offset (read).
pub const IIR: u8 = 2;
/// FIFO control register offset (write).
pub const FCR: u8 = 2;
/// Line control register offset.
pub const LCR: u8 = 3;
/// Modem control register offset.
pub const MCR: u8 = 4;
/// Line status register offset.
pub const LSR: u8 = 5;
/// Modem status register offset.
pub const MSR: u8 = 6;
/// Scratch register offset.
pub const SCR: u8 = 7;
/// Number of byte registers of one port, which is also the I/O BAR size.
pub const NUM_REGS: u8 = 8;

/// Depth of the loopback FIFO, as `MAX_FIFO_SIZE` in mtty.c.
pub const FIFO_SIZE: u8 = 16;
/// Index mask of the FIFO ring; valid because the depth is a power of two.
const FIFO_MASK: u8 = 15;

/// IER: enable received-data (and character-timeout) interrupt.
pub const IER_RDI: u8 = 0x01;
/// IER: enable THR-empty interrupt.
pub const IER_THRI: u8 = 0x02;
/// IER: enable receiver-line-status interrupt.
pub const IER_RLSI: u8 = 0x04;
/// IER: enable modem-status interrupt.
pub const IER_MSI: u8 = 0x08;
/// IER bits a 16550A implements; the others read as zero.
pub const IER_MASK: u8 = 0x0F;

/// IIR: no interrupt pending.
pub const IIR_NO_INT: u8 = 0x01;
/// IIR ID: modem status.
pub const IIR_MSI: u8 = 0x00;
/// IIR ID: transmitter holding register empty.
pub const IIR_THRI: u8 = 0x02;
/// IIR ID: received data available.
pub const IIR_RDI: u8 = 0x04;
/// IIR ID: receiver line status.
pub const IIR_RLSI: u8 = 0x06;
/// IIR ID: character timeout.
pub const IIR_RX_TIMEOUT: u8 = 0x0C;
/// IIR bits 7:6, always set as in mtty.c to identify a 16550A.
pub const IIR_FIFO_BITS: u8 = 0xC0;

/// FCR: enable the FIFO.
pub const FCR_ENABLE_FIFO: u8 = 0x01;
/// FCR: clear the receive FIFO.
pub const FCR_CLEAR_RCVR: u8 = 0x02;
/// FCR: clear the transmit FIFO (the same loopback FIFO here).
pub const FCR_CLEAR_XMIT: u8 = 0x04;
/// FCR: mask of the receive trigger level field.
pub const FCR_TRIGGER_MASK: u8 = 0xC0;
/// FCR: trigger level 1 byte.
pub const FCR_TRIGGER_1: u8 = 0x00;
/// FCR: trigger level 4 bytes.
pub const FCR_TRIGGER_4: u8 = 0x40;
/// FCR: trigger level 8 bytes.
pub const FCR_TRIGGER_8: u8 = 0x80;
/// FCR: trigger level 14 bytes.
pub const FCR_TRIGGER_14: u8 = 0xC0;

/// LCR: word length select mask (5 to 8 data bits).
pub const LCR_WLEN_MASK: u8 = 0x03;
/// LCR: two stop bits (1.5 with 5-bit words).
pub const LCR_STOP: u8 = 0x04;
/// LCR: parity enable.
pub const LCR_PARITY: u8 = 0x08;
/// LCR: divisor latch access bit.
pub const LCR_DLAB: u8 = 0x80;

/// MCR: data terminal ready.
pub const MCR_DTR: u8 = 0x01;
/// MCR: request to send.
pub const MCR_RTS: u8 = 0x02;
/// MCR: OUT1.
pub const MCR_OUT1: u8 = 0x04;
/// MCR: OUT2.
pub const MCR_OUT2: u8 = 0x08;
/// MCR: loopback test mode.
pub const MCR_LOOP: u8 = 0x10;
/// MCR: auto flow control enable (16750 extension used by mtty.c for CTS).
pub const MCR_AFE: u8 = 0x20;

/// LSR: data ready.
pub const LSR_DR: u8 = 0x01;
/// LSR: overrun error.
pub const LSR_OE: u8 = 0x02;
/// LSR: parity error (never set by the model).
pub const LSR_PE: u8 = 0x04;
/// LSR: framing error (never set by the model).
pub const LSR_FE: u8 = 0x08;
/// LSR: break interrupt (never set by the model).
pub const LSR_BI: u8 = 0x10;
/// LSR: transmitter holding register empty.
pub const LSR_THRE: u8 = 0x20;
/// LSR: transmitter empty.
pub const LSR_TEMT: u8 = 0x40;
/// LSR: error in receive FIFO (never set by the model).
pub const LSR_FIFOE: u8 = 0x80;

/// MSR: delta CTS.
pub const MSR_DCTS: u8 = 0x01;
/// MSR: delta DSR.
pub const MSR_DDSR: u8 = 0x02;
/// MSR: trailing edge of ring indicator.
pub const MSR_TERI: u8 = 0x04;
/// MSR: delta DCD.
pub const MSR_DDCD: u8 = 0x08;
/// MSR: clear to send.
pub const MSR_CTS: u8 = 0x10;
/// MSR: data set ready.
pub const MSR_DSR: u8 = 0x20;
/// MSR: ring indicator.
pub const MSR_RI: u8 = 0x40;
/// MSR: data carrier detect.
pub const MSR_DCD: u8 = 0x80;
/// MSR: all delta bits.
pub const MSR_ANY_DELTA: u8 = 0x0F;
/// MSR: all status (line level) bits.
pub const MSR_STATUS_MASK: u8 = 0xF0;

/// Reference clock of the baud generator divided by 16, in baud, so that
/// divisor 1 means 115200 baud as on a PC serial port.
pub const BASE_BAUD: u64 = 115_200;

/// One interrupt cause of a 16550A, in hardware priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqCause {
    /// Overrun (the only line-status error the model produces).
    LineStatus,
    /// FIFO count at or above the trigger level.
    ReceivedData,
    /// Data below the trigger level and the driver's timeout expired.
    CharacterTimeout,
    /// Transmitter holding register became empty.
    ThrEmpty,
    /// A modem status line changed.
    ModemStatus,
}

impl IrqCause {
    /// All causes, highest priority first.
    pub const ALL: [IrqCause; 5] = [
        IrqCause::LineStatus,
        IrqCause::ReceivedData,
        IrqCause::CharacterTimeout,
        IrqCause::ThrEmpty,
        IrqCause::ModemStatus,
    ];

    /// Interrupt ID as reported in IIR bits 3:0 (bit 0 clear: pending).
    pub const fn iir_id(self) -> u8 {
        match self {
            IrqCause::LineStatus => IIR_RLSI,
            IrqCause::ReceivedData => IIR_RDI,
            IrqCause::CharacterTimeout => IIR_RX_TIMEOUT,
            IrqCause::ThrEmpty => IIR_THRI,
            IrqCause::ModemStatus => IIR_MSI,
        }
    }

    /// Bit of this cause in [`Uart::pending_mask`].
    pub const fn mask_bit(self) -> u8 {
        match self {
            IrqCause::LineStatus => 0x01,
            IrqCause::ReceivedData => 0x02,
            IrqCause::CharacterTimeout => 0x04,
            IrqCause::ThrEmpty => 0x08,
            IrqCause::ModemStatus => 0x10,
        }
    }
}

/// What an operation did to the interrupt line, derived from the sets of
/// pending causes before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChange {
    /// No cause appeared and the line kept its level; nothing to signal.
    Unchanged,
    /// The line went from deasserted to asserted: assert INTx / send an MSI.
    Raised,
    /// The line was and stays asserted, but a cause that was not pending
    /// before is now pending: send another MSI (for INTx, signal only if the
    /// guest has unmasked it meanwhile).
    Resignal,
    /// The line went from asserted to deasserted.
    Lowered,
}

impl IrqChange {
    /// Classifies the change between two pending-cause sets.
    ///
    /// The sets are plain bit masks, so a driver can combine several sources
    /// (both ports and the DMA engine) into one `u32` per side and get the
    /// change of the device's single interrupt line.
    pub const fn between(before: u32, after: u32) -> IrqChange {
        if before == 0 && after != 0 {
            IrqChange::Raised
        } else if before != 0 && after == 0 {
            IrqChange::Lowered
        } else if after & !before != 0 {
            IrqChange::Resignal
        } else {
            IrqChange::Unchanged
        }
    }

    /// True when the driver has to signal the interrupt (subject to masking).
    pub const fn needs_signal(self) -> bool {
        matches!(self, IrqChange::Raised | IrqChange::Resignal)
    }
}

/// Length in bytes of the snapshot produced by [`Uart::save_state`].
pub const STATE_LEN: usize = 32;

/// One emulated 16550A port (the C `struct serial_port` plus interrupt state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    divisor: u16,
    fifo: [u8; FIFO_SIZE as usize],
    head: u8,
    tail: u8,
    count: u8,
    max_fifo_size: u8,
    trigger_level: u8,
    overrun: bool,
    thre_pending: bool,
    timeout_pending: bool,
    msr_status: u8,
    msr_delta: u8,
    rx_activity: bool,
}

impl Default for Uart {
    fn default() -> Self {
        Uart::new()
    }
}

/// Trigger level selected by the FCR trigger field.
const fn trigger_for_fcr(fcr: u8) -> u8 {
    match fcr & FCR_TRIGGER_MASK {
        FCR_TRIGGER_1 => 1,
        FCR_TRIGGER_4 => 4,
        FCR_TRIGGER_8 => 8,
        _ => 14,
    }
}

/// Status (level) bits of MSR as a function of MCR and the FIFO fill.
///
/// Outside loopback mode this is what mtty.c reports: DCD and DSR always
/// asserted, CTS asserted unless auto flow control is on and the FIFO is
/// full. In loopback mode the outputs are wired back as on a real 16550.
const fn modem_lines(mcr: u8, count: u8, max_fifo_size: u8) -> u8 {
    if mcr & MCR_LOOP != 0 {
        let mut s = 0;
        if mcr & MCR_RTS != 0 {
            s |= MSR_CTS;
        }
        if mcr & MCR_DTR != 0 {
            s |= MSR_DSR;
        }
        if mcr & MCR_OUT1 != 0 {
            s |= MSR_RI;
        }
        if mcr & MCR_OUT2 != 0 {
            s |= MSR_DCD;
        }
        s
    } else {
        let mut s = MSR_DSR | MSR_DCD;
        if mcr & MCR_AFE == 0 || count < max_fifo_size {
            s |= MSR_CTS;
        }
        s
    }
}

impl Uart {
    /// A port in its power-on state.
    ///
    /// Matches mtty.c after `mtty_init_dev` (all registers zero, FIFO depth
    /// 16) except that the trigger level is 1 instead of 0, and MSR carries
    /// DDSR|DCTS so that the first MSR read returns 0xB3 like the sample.
    pub const fn new() -> Self {
        Uart {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            fcr: 0,
            divisor: 0,
            fifo: [0; FIFO_SIZE as usize],
            head: 0,
            tail: 0,
            count: 0,
            max_fifo_size: FIFO_SIZE,
            trigger_level: 1,
            overrun: false,
            thre_pending: false,
            timeout_pending: false,
            msr_status: modem_lines(0, 0, FIFO_SIZE),
            msr_delta: MSR_DDSR | MSR_DCTS,
            rx_activity: false,
        }
    }

    /// Returns the port to its power-on state (used on device reset).
    pub fn reset(&mut self) {
        *self = Uart::new();
    }

    /// Bit set of enabled pending causes (see [`IrqCause::mask_bit`]).
    pub fn pending_mask(&self) -> u8 {
        let mut m = 0;
        if self.ier & IER_RLSI != 0 && self.overrun {
            m |= IrqCause::LineStatus.mask_bit();
        }
        if self.ier & IER_RDI != 0 && self.count > 0 {
            if self.count >= self.trigger_level {
                m |= IrqCause::ReceivedData.mask_bit();
            } else if self.timeout_pending {
                m |= IrqCause::CharacterTimeout.mask_bit();
            }
        }
        if self.ier & IER_THRI != 0 && self.thre_pending {
            m |= IrqCause::ThrEmpty.mask_bit();
        }
        if self.ier & IER_MSI != 0 && self.msr_delta & MSR_ANY_DELTA != 0 {
            m |= IrqCause::ModemStatus.mask_bit();
        }
        m
    }

    /// Highest-priority enabled cause that is pending, which IIR reports.
    pub fn pending_interrupt(&self) -> Option<IrqCause> {
        let m = self.pending_mask();
        IrqCause::ALL.iter().copied().find(|c| m & c.mask_bit() != 0)
    }

    /// Level of the port's interrupt output: true while a cause is pending.
    pub fn irq_asserted(&self) -> bool {
        self.pending_mask() != 0
    }

    /// Reads the register at `offset` (0..8) with its side effects.
    pub fn read(&mut self, offset: u8) -> (u8, IrqChange) {
        let before = self.pending_mask();
        let dlab = self.lcr & LCR_DLAB != 0;
        let val = match offset {
            RBR if dlab => self.divisor.to_le_bytes()[0],
            RBR => self.pop().unwrap_or(0),
            IER if dlab => self.divisor.to_le_bytes()[1],
            IER => self.ier,
            IIR => self.read_iir(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr();
                // Reading LSR acknowledges the error bits, as on hardware.
                self.overrun = false;
                v
            }
            MSR => {
                let v = self.msr_status | self.msr_delta;
                self.msr_delta = 0;
                v
            }
            SCR => self.scr,
            _ => 0xFF,
        };
        self.sample_modem_lines();
        (val, self.change_since(before))
    }

    /// Writes `val` to the register at `offset` (0..8) with its side effects.
    pub fn write(&mut self, offset: u8, val: u8) -> IrqChange {
        let before = self.pending_mask();
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            THR if dlab => self.divisor = (self.divisor & 0xFF00) | u16::from(val),
            THR => {
                // The loopback: a transmitted byte is received by the same port.
                let _ = self.push(val);
            }
            IER if dlab => self.divisor = (self.divisor & 0x00FF) | (u16::from(val) << 8),
            IER => {
                let old = self.ier;
                self.ier = val & IER_MASK;
                if (old ^ self.ier) & IER_THRI != 0 {
                    // A rising edge of THRI with THR empty raises THRE even if
                    // an earlier one was acknowledged; Linux probes for this.
                    self.thre_pending = self.ier & IER_THRI != 0 && self.count == 0;
                }
            }
            FCR => self.write_fcr(val),
            LCR => self.lcr = val,
            MCR => self.mcr = val,
            SCR => self.scr = val,
            // LSR and MSR are read-only; other offsets do not exist.
            _ => {}
        }
        self.sample_modem_lines();
        self.change_since(before)
    }

    /// Delivers a byte from the wire into the receive FIFO, as a THR write
    /// does through the loopback. Returns false (and flags an overrun) when
    /// the FIFO is full; the DMA engine checks [`Uart::rx_space`] first.
    pub fn rx_push(&mut self, byte: u8) -> (bool, IrqChange) {
        let before = self.pending_mask();
        let ok = self.push(byte);
        self.sample_modem_lines();
        (ok, self.change_since(before))
    }

    /// Takes the oldest byte out of the receive FIFO as an RBR read does
    /// (ignoring DLAB), for the DMA engine's receive side.
    pub fn rx_pop(&mut self) -> (Option<u8>, IrqChange) {
        let before = self.pending_mask();
        let b = self.pop();
        self.sample_modem_lines();
        (b, self.change_since(before))
    }

    /// Number of bytes in the receive FIFO.
    pub fn rx_len(&self) -> u8 {
        self.count
    }

    /// Number of bytes the FIFO accepts before overrunning.
    pub fn rx_space(&self) -> u8 {
        self.max_fifo_size.saturating_sub(self.count)
    }

    /// Called by the driver when its character-timeout timer fires.
    pub fn rx_timeout_expired(&mut self) -> IrqChange {
        let before = self.pending_mask();
        if self.count > 0 {
            self.timeout_pending = true;
        }
        self.change_since(before)
    }

    /// True while the driver should have a character-timeout timer running:
    /// received-data interrupts are enabled, data sits below the trigger level
    /// and the timeout has not fired yet.
    pub fn rx_timer_wanted(&self) -> bool {
        self.ier & IER_RDI != 0
            && self.count > 0
            && self.count < self.trigger_level
            && !self.timeout_pending
    }

    /// Returns whether a byte entered or left the FIFO since the last call,
    /// so the driver can restart its timeout timer, and clears the flag.
    pub fn take_rx_activity(&mut self) -> bool {
        core::mem::replace(&mut self.rx_activity, false)
    }

    /// Four character times at the programmed divisor and frame format, in
    /// nanoseconds: the 16550 receive timeout.
    ///
    /// Divisor 0 (never programmed; undefined on real parts) counts as 1, so
    /// a VFIO user that skips baud programming gets a short timeout rather
    /// than one of many seconds.
    pub fn rx_timeout_ns(&self) -> u64 {
        let data_bits = u64::from(self.lcr & LCR_WLEN_MASK).saturating_add(5);
        let parity = u64::from(self.lcr & LCR_PARITY != 0);
        // 1.5 stop bits (5-bit words) are rounded up to 2: no floating point.
        let stop = if self.lcr & LCR_STOP != 0 { 2 } else { 1 };
        let bits = data_bits.saturating_add(parity).saturating_add(stop).saturating_add(1);
        let divisor = u64::from(self.divisor.max(1));
        bits.saturating_mul(4)
            .saturating_mul(1_000_000_000)
            .saturating_mul(divisor)
            / BASE_BAUD
    }

    /// Current divisor latch value.
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// Last value written to FCR (FCR itself is write-only).
    pub fn fcr(&self) -> u8 {
        self.fcr
    }

    /// Receive trigger level in bytes.
    pub fn trigger_level(&self) -> u8 {
        self.trigger_level
    }

    /// Serializes the complete port state into a fixed little-endian image.
    pub fn save_state(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        // The layout is exactly STATE_LEN bytes; a unit test checks it.
        let _ = self.encode(&mut out);
        out
    }

    /// Writes the snapshot layout, returning the number of bytes used.
    fn encode(&self, out: &mut [u8; STATE_LEN]) -> Option<usize> {
        let mut w = super::wire::Writer::new(out);
        w.u8(self.ier);
        w.u8(self.lcr);
        w.u8(self.mcr);
        w.u8(self.scr);
        w.u8(self.fcr);
        w.u16(self.divisor);
        w.bytes(&self.fifo);
        w.u8(self.head);
        w.u8(self.tail);
        w.u8(self.count);
        w.u8(self.max_fifo_size);
        w.u8(self.trigger_level);
        w.u8(u8::from(self.overrun)
            | u8::from(self.thre_pending) << 1
            | u8::from(self.timeout_pending) << 2);
        w.u8(self.msr_status);
        w.u8(self.msr_delta);
        w.zeros(1);
        w.finish()
    }

    /// Rebuilds a port from [`Uart::save_state`] output, refusing images
    /// that violate any invariant the model relies on.
    pub fn restore_state(image: &[u8; STATE_LEN]) -> Option<Self> {
        let mut r = super::wire::Reader::new(image);
        let mut u = Uart::new();
        u.ier = r.u8();
        u.lcr = r.u8();
        u.mcr = r.u8();
        u.scr = r.u8();
        u.fcr = r.u8();
        u.divisor = r.u16();
        u.fifo = r.array();
        u.head = r.u8();
        u.tail = r.u8();
        u.count = r.u8();
        u.max_fifo_size = r.u8();
        u.trigger_level = r.u8();
        let flags = r.u8();
        u.msr_status = r.u8();
        u.msr_delta = r.u8();
        r.zeros(1);
        u.overrun = flags & 0x01 != 0;
        u.thre_pending = flags & 0x02 != 0;
        u.timeout_pending = flags & 0x04 != 0;
        u.rx_activity = false;
        r.check(flags & !0x07 == 0);
        r.check(u.ier & !IER_MASK == 0);
        r.check(u.head <= FIFO_MASK && u.tail <= FIFO_MASK && u.count <= FIFO_SIZE);
        r.check(u.tail.wrapping_add(u.count) & FIFO_MASK == u.head);
        r.check(u.max_fifo_size == FIFO_SIZE || u.max_fifo_size == 1);
        r.check(matches!(u.trigger_level, 1 | 4 | 8 | 14));
        r.check(u.max_fifo_size == FIFO_SIZE || u.trigger_level == 1);
        r.check(!u.thre_pending || u.count == 0);
        r.check(!u.timeout_pending || u.count > 0);
        r.check(u.msr_delta & !MSR_ANY_DELTA == 0);
        r.check(u.msr_status == modem_lines(u.mcr, u.count, u.max_fifo_size));
        r.finish().filter(|&n| n == STATE_LEN).map(|_| u)
    }

    fn change_since(&self, before: u8) -> IrqChange {
        IrqChange::between(u32::from(before), u32::from(self.pending_mask()))
    }

    fn lsr(&self) -> u8 {
        let mut lsr = 0;
        if self.count > 0 {
            lsr |= LSR_DR;
        } else {
            lsr |= LSR_THRE | LSR_TEMT;
        }
        if self.overrun {
            lsr |= LSR_OE;
        }
        lsr
    }

    fn read_iir(&mut self) -> u8 {
        match self.pending_interrupt() {
            Some(cause) => {
                if cause == IrqCause::ThrEmpty {
                    // Reading IIR that reports THRE acknowledges it.
                    self.thre_pending = false;
                }
                IIR_FIFO_BITS | cause.iir_id()
            }
            None => IIR_FIFO_BITS | IIR_NO_INT,
        }
    }

    fn write_fcr(&mut self, val: u8) {
        self.fcr = val;
        if val & (FCR_CLEAR_RCVR | FCR_CLEAR_XMIT) != 0 {
            if self.count > 0 {
                // Emptying the loopback FIFO empties the transmitter too.
                self.thre_pending = true;
                self.rx_activity = true;
            }
            self.count = 0;
            self.head = 0;
            self.tail = 0;
            self.timeout_pending = false;
        }
        if val & FCR_ENABLE_FIFO != 0 {
            self.max_fifo_size = FIFO_SIZE;
            self.trigger_level = trigger_for_fcr(val);
        } else {
            self.max_fifo_size = 1;
            self.trigger_level = 1;
        }
    }

    fn push(&mut self, byte: u8) -> bool {
        if self.count >= self.max_fifo_size {
            self.overrun = true;
            return false;
        }
        if let Some(slot) = self.fifo.get_mut(usize::from(self.head & FIFO_MASK)) {
            *slot = byte;
        }
        self.head = self.head.wrapping_add(1) & FIFO_MASK;
        self.count = self.count.saturating_add(1);
        self.thre_pending = false;
        self.rx_activity = true;
        true
    }

    fn pop(&mut self) -> Option<u8> {
        if self.count == 0 {
            return None;
        }
        let byte = self
            .fifo
            .get(usize::from(self.tail & FIFO_MASK))
            .copied()
            .unwrap_or(0);
        self.tail = self.tail.wrapping_add(1) & FIFO_MASK;
        self.count = self.count.saturating_sub(1);
        // Reading a character resets the receive timeout.
        self.timeout_pending = false;
        self.rx_activity = true;
        if self.count == 0 {
            self.thre_pending = true;
        }
        Some(byte)
    }

    /// Recomputes the MSR status lines and latches delta bits for changes.
    fn sample_modem_lines(&mut self) {
        let new = modem_lines(self.mcr, self.count, self.max_fifo_size);
        let changed = new ^ self.msr_status;
        if changed & MSR_CTS != 0 {
            self.msr_delta |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_delta |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            self.msr_delta |= MSR_DDCD;
        }
        if self.msr_status & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_delta |= MSR_TERI;
        }
        self.msr_status = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_layout_fills_state_len_exactly() {
        let mut out = [0u8; STATE_LEN];
        assert_eq!(Uart::new().encode(&mut out), Some(STATE_LEN));
    }
}
