// SPDX-License-Identifier: GPL-2.0

//! The UART character-timeout timer of one device.
//!
//! One [`DelayedWork`] per device (`Mtty::rx_work`) serves both ports: the
//! decisions (per-port deadlines, when to arm or cancel) are made by
//! `mtty_core::rx_timeout::RxTimeouts` in `State::rx_timer`, host-tested in
//! `mtty-core`; this file only carries them out.
//!
//! Locking: [`update`] runs with `Mtty::state` held and only arms or
//! cancels without waiting (`mod_delayed_work`, `cancel_delayed_work`).
//! The callback ([`DelayedWorkOwner::run`]) takes `Mtty::state` itself, so
//! the one waiting cancel ([`stop`], from `close_device`) runs after
//! dropping it. While `State::timer_enabled` is false (device closed)
//! nothing arms the timer, so once [`stop`] returned no callback is queued
//! or running and the device holds no reference on itself: instance removal
//! and module unload (both close the device first) find the timer idle.
//!
//! A callback that comes early, late or after the timeout stopped being
//! wanted changes nothing: `RxTimeouts::expire` only times out ports whose
//! deadline has passed and re-arms or cancels explicitly.
#![deny(unsafe_code)]

use crate::delayed_work::{DelayedWork, DelayedWorkOwner};
use crate::device::{Mtty, State};
use crate::mtty_core::rx_timeout::{RxTimeouts, TimerCmd};
use crate::vfio_device::Device;
use kernel::time::Ktime;

/// The monotonic clock the deadlines are kept in, in nanoseconds.
fn now_ns() -> u64 {
    u64::try_from(Ktime::ktime_get().to_ns()).unwrap_or(0)
}

/// Carries out `cmd` (under `Mtty::state`).
fn apply(dev: &Device<Mtty>, cmd: TimerCmd) {
    match cmd {
        TimerCmd::Keep => {}
        TimerCmd::Arm { delay_us } => DelayedWork::schedule(dev, delay_us),
        TimerCmd::Cancel => DelayedWork::cancel(dev),
    }
}

/// Brings the timer up to date after the ports may have changed (a register
/// access, a DMA transfer, reset or a migration load). Call with
/// `Mtty::state` held; does not sleep.
pub(crate) fn update(dev: &Device<Mtty>, st: &mut State) {
    if !st.timer_enabled {
        return;
    }
    let cmd = st.rx_timer.update(&mut st.model.ports, now_ns());
    apply(dev, cmd);
}

/// The device was opened: the timer may run, for data already waiting in a
/// FIFO too (UART state survives close and reopen).
pub(crate) fn start(dev: &Device<Mtty>) {
    let mut st = dev.state.lock();
    st.timer_enabled = true;
    st.rx_timer = RxTimeouts::new();
    update(dev, &mut st);
}

/// The device is being closed: no more arming, and wait until no callback
/// is queued or running. Takes `Mtty::state`; call without it.
pub(crate) fn stop(dev: &Device<Mtty>) {
    let mut st = dev.state.lock();
    st.timer_enabled = false;
    st.rx_timer = RxTimeouts::new();
    drop(st);
    DelayedWork::cancel_sync(dev);
}

/// The device's `rx_work` runs the character timeout.
impl DelayedWorkOwner for Device<Mtty> {
    fn delayed_work(this: &Self) -> &DelayedWork<Self> {
        &this.rx_work
    }

    fn run(dev: &Self) {
        let mut st = dev.state.lock();
        if !st.timer_enabled {
            return;
        }
        let before = st.model.pending_mask();
        let st = &mut *st;
        let cmd = st.rx_timer.expire(&mut st.model.ports, now_ns());
        st.irq_update(before);
        apply(dev, cmd);
    }
}
