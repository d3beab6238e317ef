//! When the driver's character-timeout timer has to run.
//!
//! A 16550A raises the character-timeout interrupt (IIR ID 0xC) when the
//! receive FIFO holds data below the trigger level and no character entered
//! or left it for four character times. The UART model ([`Uart`]) knows
//! whether such a timeout is wanted ([`Uart::rx_timer_wanted`]), how long it
//! is ([`Uart::rx_timeout_ns`]) and whether the FIFO moved
//! ([`Uart::take_rx_activity`]), but it has no clock. [`RxTimeouts`] turns
//! that into a per-port deadline on the driver's monotonic clock and into
//! one command for the driver's single timer per device: arm it for the
//! earliest deadline, cancel it, or leave it alone.
//!
//! The driver calls [`RxTimeouts::update`] after anything that may have
//! touched a FIFO (register accesses, DMA transfers, reset, migration load)
//! and [`RxTimeouts::expire`] from its timer callback, both under the device
//! lock, and carries out the returned [`TimerCmd`] under the same lock.
//!
//! The timer may fire late, early (jiffy rounding) or spuriously (a callback
//! racing with a re-arm): `expire` only times out ports whose deadline has
//! passed at the time it is given, and always returns an explicit command,
//! so the timer converges to the earliest outstanding deadline. Deadlines
//! are host time, not device state: they are not migrated; after a load
//! `update` starts a full timeout for every port that wants one.

use super::uart::Uart;

/// Nanoseconds per microsecond.
const NS_PER_US: u64 = 1_000;

/// What the driver does with its timer after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerCmd {
    /// The armed timer (or its absence) is still right.
    Keep,
    /// (Re)start the timer to fire after `delay_us` microseconds (rounded
    /// up, at least 1).
    Arm {
        /// Delay from now.
        delay_us: u64,
    },
    /// No port wants a timeout: stop the timer if it is pending.
    Cancel,
}

/// Character-timeout deadlines of both ports of one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RxTimeouts {
    /// Per port: when its timeout fires, in the driver's clock (ns).
    deadline: [Option<u64>; 2],
    /// The deadline the driver's timer was last armed for.
    armed: Option<u64>,
}

/// Microseconds from `now` to `at`, rounded up, at least 1.
fn delay_us(now: u64, at: u64) -> u64 {
    let ns = at.saturating_sub(now);
    ns.div_ceil(NS_PER_US).max(1)
}

impl RxTimeouts {
    /// No deadline, no timer.
    pub const fn new() -> Self {
        RxTimeouts { deadline: [None, None], armed: None }
    }

    /// The deadline of `port` (0 or 1), if its timeout is running.
    pub fn deadline(&self, port: usize) -> Option<u64> {
        self.deadline.get(port).copied().flatten()
    }

    /// The deadline the driver's timer is armed for, as far as this
    /// bookkeeping knows.
    pub fn armed(&self) -> Option<u64> {
        self.armed
    }

    /// Recomputes the deadlines at time `now` (ns) after the ports may have
    /// changed: a port that wants a timeout and saw FIFO traffic since the
    /// last call (or had no deadline) gets a full timeout from `now`; a port
    /// that no longer wants one loses its deadline.
    pub fn update(&mut self, ports: &mut [Uart; 2], now: u64) -> TimerCmd {
        for (d, p) in self.deadline.iter_mut().zip(ports.iter_mut()) {
            let moved = p.take_rx_activity();
            if !p.rx_timer_wanted() {
                *d = None;
            } else if moved || d.is_none() {
                *d = Some(now.saturating_add(p.rx_timeout_ns()));
            }
        }
        match (self.next(), self.armed) {
            (None, None) => TimerCmd::Keep,
            (None, Some(_)) => {
                self.armed = None;
                TimerCmd::Cancel
            }
            (Some(n), Some(a)) if n == a => TimerCmd::Keep,
            (Some(n), _) => {
                self.armed = Some(n);
                TimerCmd::Arm { delay_us: delay_us(now, n) }
            }
        }
    }

    /// The timer fired and its callback runs at time `now`: every port whose
    /// deadline has passed times out ([`Uart::rx_timeout_expired`]; the
    /// caller compares the device's pending mask around this call to
    /// signal the interrupt). Always returns `Arm` or `Cancel`, never
    /// `Keep`, because the timer's real state is unknown after a callback.
    pub fn expire(&mut self, ports: &mut [Uart; 2], now: u64) -> TimerCmd {
        for (d, p) in self.deadline.iter_mut().zip(ports.iter_mut()) {
            if d.is_some_and(|at| at <= now) {
                *d = None;
                let _ = p.rx_timeout_expired();
            }
        }
        // Traffic since the last update restarts that port's timeout.
        let _ = self.update(ports, now);
        match self.next() {
            Some(n) => {
                self.armed = Some(n);
                TimerCmd::Arm { delay_us: delay_us(now, n) }
            }
            None => {
                self.armed = None;
                TimerCmd::Cancel
            }
        }
    }

    /// The earliest deadline.
    fn next(&self) -> Option<u64> {
        self.deadline.iter().flatten().copied().min()
    }
}
