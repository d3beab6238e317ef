//! The engine's step loop: `plan` picks the next action, `complete` applies its result.

use super::action::{Action, Completion, EngineEnv, StaleCompletion};
use super::copy::CopyRegs;
use super::descriptor::{Descriptor, DESC_DONE};
use super::engine::DmaEngine;
use super::pins::{page_remainder, Location, PinRange, PinSlot};
use super::registers::{DmaError, INT_COPY_DONE};
use super::ring::{InFlight, Ring};

impl DmaEngine {
    /// Decides the next step. Pure: calling it twice gives the same answer.
    pub fn plan(&self, env: &EngineEnv) -> Action {
        // Release what is no longer needed first, bus master or not: it is a
        // host-side operation and keeps the pin table minimal.
        for slot in PinSlot::ALL {
            if let Some(held) = self.pins.get(slot.index()).copied().flatten() {
                let wanted = self.wanted_pin(slot, env).map(|(r, _)| r);
                if wanted != Some(held) {
                    return Action::Unpin { slot, range: held };
                }
            }
        }
        if !env.bus_master {
            return Action::Idle;
        }
        // An accepted copy goes first: it is one step, and the rings may
        // keep each other busy for a long time.
        if self.copy_busy {
            return Action::Copy {
                src: self.copy.src,
                dst: self.copy.dst,
                len: self.copy.len,
                tag: self.copy_tag,
            };
        }
        if let Some(a) = self.plan_tx(env) {
            return a;
        }
        if let Some(a) = self.plan_rx(env) {
            return a;
        }
        Action::Idle
    }

    /// Applies the result of `action`, which must be what [`DmaEngine::plan`]
    /// returned for the current state.
    pub fn complete(&mut self, action: &Action, result: Completion) -> Result<(), StaleCompletion> {
        match (*action, result) {
            (Action::Pin { slot, range, .. }, Completion::Pinned) => {
                let entry = self.pins.get_mut(slot.index()).ok_or(StaleCompletion)?;
                if entry.is_some() {
                    return Err(StaleCompletion);
                }
                *entry = Some(range);
                Ok(())
            }
            (Action::Pin { slot, range, target }, Completion::PinFailed) => {
                if self.wants_pin_regardless_of_env(slot) != Some(range) {
                    return Err(StaleCompletion);
                }
                self.halt(DmaError::PinFailed, target);
                Ok(())
            }
            (Action::Unpin { slot, range }, Completion::Unpinned) => {
                let entry = self.pins.get_mut(slot.index()).ok_or(StaleCompletion)?;
                if *entry != Some(range) {
                    return Err(StaleCompletion);
                }
                *entry = None;
                Ok(())
            }
            (Action::ReadDescriptor { ring, at }, Completion::DescriptorRead(raw)) => {
                let regs = self.ring(ring);
                if !self.running()
                    || self.cur(ring).is_some()
                    || regs.pending() == 0
                    || regs.desc_iova(regs.head) != Some(at.iova)
                {
                    return Err(StaleCompletion);
                }
                let desc = Descriptor::parse(&raw);
                match desc.validate() {
                    Ok(()) => {
                        *self.cur_mut(ring) = Some(InFlight {
                            desc_iova: at.iova,
                            desc,
                            done: 0,
                        });
                    }
                    Err(_) => self.halt(DmaError::BadDescriptor, at.iova),
                }
                Ok(())
            }
            (Action::ReadDescriptor { ring, at }, Completion::Failed) => {
                let regs = self.ring(ring);
                if !self.running() || regs.desc_iova(regs.head) != Some(at.iova) {
                    return Err(StaleCompletion);
                }
                self.halt(DmaError::AccessFault, at.iova);
                Ok(())
            }
            (Action::WriteDescriptor { ring, at, .. }, Completion::DescriptorWritten) => {
                match self.cur(ring) {
                    Some(c) if c.desc_iova == at.iova => {}
                    _ => return Err(StaleCompletion),
                }
                *self.cur_mut(ring) = None;
                let regs = self.ring_mut(ring);
                regs.head = regs.head.wrapping_add(1);
                self.int_status |= ring.done_bit();
                Ok(())
            }
            (Action::WriteDescriptor { ring, at, .. }, Completion::Failed) => {
                match self.cur(ring) {
                    Some(c) if c.desc_iova == at.iova => {}
                    _ => return Err(StaleCompletion),
                }
                self.halt(DmaError::AccessFault, at.iova);
                Ok(())
            }
            (Action::TxToUart { at, len }, r) => self.complete_transfer(Ring::Tx, at, len, r),
            (Action::UartToRx { at, len }, r) => self.complete_transfer(Ring::Rx, at, len, r),
            (Action::Copy { src, dst, len, tag }, r) => {
                if !self.copy_busy || self.copy_tag != tag || self.copy != (CopyRegs { src, dst, len }) {
                    return Err(StaleCompletion);
                }
                match r {
                    Completion::Copied => {
                        self.copy_busy = false;
                        self.int_status |= INT_COPY_DONE;
                    }
                    Completion::CopyReadFailed => self.halt(DmaError::CopyFault, src),
                    Completion::CopyWriteFailed => self.halt(DmaError::CopyFault, dst),
                    _ => return Err(StaleCompletion),
                }
                Ok(())
            }
            _ => Err(StaleCompletion),
        }
    }

    /// The pin `slot` should hold now, with the IOVA to report if pinning
    /// fails.
    fn wanted_pin(&self, slot: PinSlot, env: &EngineEnv) -> Option<(PinRange, u64)> {
        match slot {
            PinSlot::TxRing | PinSlot::RxRing => {
                let ring = if slot == PinSlot::TxRing { Ring::Tx } else { Ring::Rx };
                let regs = self.ring(ring);
                // The ring page is needed while running, and while stopping
                // for the write-back of a partially done descriptor.
                if self.running() || self.cur(ring).is_some() {
                    regs.range().map(|r| (r, regs.base))
                } else {
                    None
                }
            }
            PinSlot::TxBuf => {
                let c = self.tx_cur.filter(|c| self.running() && c.done < c.desc.len)?;
                c.desc.pin_range().map(|r| (r, c.desc.addr))
            }
            PinSlot::RxBuf => {
                let c = self.rx_cur.filter(|c| self.rx_filling(c, env))?;
                c.desc.pin_range().map(|r| (r, c.desc.addr))
            }
        }
    }

    /// The range `slot` may want in some environment, used to recognize a
    /// `PinFailed` completion that is still relevant.
    fn wants_pin_regardless_of_env(&self, slot: PinSlot) -> Option<PinRange> {
        let any = EngineEnv {
            bus_master: true,
            rx_fifo_len: 1,
            rx_fifo_space: 1,
        };
        self.wanted_pin(slot, &any).map(|(r, _)| r)
    }

    /// A receive descriptor keeps filling while running, not full, and data
    /// keeps coming; once it has data and the FIFO runs dry it completes.
    fn rx_filling(&self, c: &InFlight, env: &EngineEnv) -> bool {
        self.running() && c.done < c.desc.len && !(c.done > 0 && env.rx_fifo_len == 0)
    }

    fn location(&self, slot: PinSlot, iova: u64) -> Option<Location> {
        let range = self.pins.get(slot.index()).copied().flatten()?;
        let (page, offset) = range.locate(iova)?;
        Some(Location {
            slot,
            iova,
            page,
            offset,
        })
    }

    /// Pins the ring page if needed, or fetches the descriptor at HEAD.
    fn plan_ring_common(&self, ring: Ring, env: &EngineEnv, fetch: bool) -> Option<Action> {
        let slot = ring.ring_slot();
        if let Some((range, target)) = self.wanted_pin(slot, env) {
            if self.pins.get(slot.index()).copied().flatten().is_none() {
                return Some(Action::Pin {
                    slot,
                    range,
                    target,
                });
            }
        }
        let regs = self.ring(ring);
        if self.cur(ring).is_none() && self.running() && regs.pending() != 0 && fetch {
            let iova = regs.desc_iova(regs.head)?;
            let at = self.location(slot, iova)?;
            return Some(Action::ReadDescriptor { ring, at });
        }
        None
    }

    fn write_back(&self, ring: Ring, c: &InFlight) -> Option<Action> {
        let at = self.location(ring.ring_slot(), c.desc_iova)?;
        let done = Descriptor {
            addr: c.desc.addr,
            len: c.done,
            flags: DESC_DONE,
        };
        Some(Action::WriteDescriptor {
            ring,
            at,
            bytes: done.encode(),
        })
    }

    fn plan_buffer_pin(&self, ring: Ring, env: &EngineEnv) -> Option<Action> {
        let slot = ring.buf_slot();
        let (range, target) = self.wanted_pin(slot, env)?;
        if self.pins.get(slot.index()).copied().flatten().is_some() {
            return None;
        }
        Some(Action::Pin {
            slot,
            range,
            target,
        })
    }

    fn plan_tx(&self, env: &EngineEnv) -> Option<Action> {
        if let Some(a) = self.plan_ring_common(Ring::Tx, env, true) {
            return Some(a);
        }
        let c = self.tx_cur?;
        if self.running() && c.done < c.desc.len {
            if let Some(a) = self.plan_buffer_pin(Ring::Tx, env) {
                return Some(a);
            }
            if env.rx_fifo_space == 0 {
                // Blocked until the receive side drains the FIFO.
                return None;
            }
            let addr = c.desc.addr.checked_add(u64::from(c.done))?;
            let at = self.location(PinSlot::TxBuf, addr)?;
            let len = c
                .remaining()
                .min(u32::from(env.rx_fifo_space))
                .min(page_remainder(addr));
            return Some(Action::TxToUart { at, len });
        }
        // Finished, or stopping after a partial transfer: report it.
        self.write_back(Ring::Tx, &c)
    }

    fn plan_rx(&self, env: &EngineEnv) -> Option<Action> {
        // A receive descriptor is only taken once there is data for it.
        if let Some(a) = self.plan_ring_common(Ring::Rx, env, env.rx_fifo_len > 0) {
            return Some(a);
        }
        let c = self.rx_cur?;
        if self.rx_filling(&c, env) {
            if let Some(a) = self.plan_buffer_pin(Ring::Rx, env) {
                return Some(a);
            }
            if env.rx_fifo_len == 0 {
                return None;
            }
            let addr = c.desc.addr.checked_add(u64::from(c.done))?;
            let at = self.location(PinSlot::RxBuf, addr)?;
            let len = c
                .remaining()
                .min(u32::from(env.rx_fifo_len))
                .min(page_remainder(addr));
            return Some(Action::UartToRx { at, len });
        }
        if c.done > 0 {
            return self.write_back(Ring::Rx, &c);
        }
        None
    }

    fn complete_transfer(
        &mut self,
        ring: Ring,
        at: Location,
        len: u32,
        result: Completion,
    ) -> Result<(), StaleCompletion> {
        let running = self.running();
        let cur = self.cur_mut(ring).as_mut().ok_or(StaleCompletion)?;
        let expected = cur.desc.addr.checked_add(u64::from(cur.done));
        if !running || expected != Some(at.iova) || len > cur.remaining() {
            return Err(StaleCompletion);
        }
        match result {
            Completion::Transferred(n) if n <= len => {
                cur.done = cur.done.saturating_add(n);
                Ok(())
            }
            Completion::Failed => {
                self.halt(DmaError::AccessFault, at.iova);
                Ok(())
            }
            _ => Err(StaleCompletion),
        }
    }
}
