// SPDX-License-Identifier: GPL-2.0

//! Runs the DMA engine of `mtty_core::dma_engine` against real user memory.
//!
//! The engine plans one step at a time ([`DmaEngine::plan`]); this module
//! performs it through the VFIO device (pin or unpin IOVA pages with the
//! container's IOMMU backend, read or write a descriptor with `vfio_dma_rw`,
//! copy bytes between a pinned page and UART port 0, perform a copy command
//! with two `vfio_dma_rw` through the device's bounce buffer) and reports
//! the result, until the engine is idle. A plan and its completion are made
//! under the device's state lock, which is dropped around each backend call
//! (the lock order and why: `device.rs`, "Locking").
//!
//! The pinned pages of each of the engine's pin slots are kept in
//! [`State::pins`], parallel to the engine's own table of pinned ranges.
//!
//! [`DmaEngine::plan`]: crate::mtty_core::dma_engine::DmaEngine::plan
#![deny(unsafe_code)]

use crate::device::{Mtty, State};
use crate::mtty_core::dma_engine::{Action, Completion, EngineEnv, PinSlot, DESC_SIZE, MAX_PINS};
use crate::mtty_core::dma_engine::MAX_PIN_PAGES;
use crate::vfio_device::{Device, PinnedPages};
use kernel::alloc::KVVec;
use kernel::sync::lock::{mutex::MutexBackend, Guard};

/// The pages of one of the engine's pin slots: a range of at most
/// `MAX_PIN_PAGES`, the bound the engine's descriptors are checked against.
pub(crate) type SlotPages = PinnedPages<{ MAX_PIN_PAGES as usize }>;

/// Upper bound of engine steps per run, so one register access cannot hold
/// the lock for long; the engine resumes on the next access or doorbell.
const MAX_STEPS: usize = 4096;

/// Largest number of bytes moved per transfer step (FIFO-sized steps are
/// all the engine asks for; this bounds the stack buffer).
const CHUNK: usize = 64;

/// What the engine needs to know about port 0 and the command register.
fn env(st: &State) -> EngineEnv {
    let [p0, _] = &st.model.ports;
    EngineEnv {
        bus_master: st.model.config.bus_master_enabled(),
        rx_fifo_len: p0.rx_len(),
        rx_fifo_space: p0.rx_space(),
    }
}

/// Performs engine steps until it is idle. Called without the state lock:
/// it takes `Mtty::state` itself and drops it around every call into the
/// IOMMU backend (pin, unpin, `vfio_dma_rw`), so that no lock of ours is ever
/// held while the backend's container lock is taken. While it is dropped,
/// `State::ffi_in_flight` is set; `dma_unmap` and the pin release paths wait
/// for it to clear, so they always see every pin in the table. One runner
/// at a time (`State::engine_active`); a concurrent caller returns at once,
/// and the active runner picks its change up at its next plan.
pub(crate) fn run(dev: &Device<Mtty>) {
    let mut st = dev.state.lock();
    if st.engine_active {
        return;
    }
    st.engine_active = true;
    for _ in 0..MAX_STEPS {
        if st.unmap_waiting > 0 {
            break;
        }
        let action = st.model.dma.plan(&env(&st));
        match action {
            Action::Idle => break,
            Action::Pin { slot, range, .. } => {
                // Transmit buffers are only read; rings and receive buffers are written.
                let write = slot != PinSlot::TxBuf;
                st.ffi_in_flight = true;
                drop(st);
                let pinned = dev.pin_pages(range.iova, range.pages as usize, write);
                st = dev.state.lock();
                let before = st.model.pending_mask();
                let leftover = match pinned {
                    Ok(p) => {
                        let free = st.pins.get(slot.index()).is_some_and(Option::is_none);
                        if free && st.model.dma.complete(&action, Completion::Pinned).is_ok() {
                            if let Some(entry) = st.pins.get_mut(slot.index()) {
                                *entry = Some(p);
                            }
                            None
                        } else {
                            Some(p)
                        }
                    }
                    Err(_) => {
                        let _ = st.model.dma.complete(&action, Completion::PinFailed);
                        None
                    }
                };
                st.irq_update(before);
                if let Some(p) = leftover {
                    drop(st);
                    dev.unpin_pages(p);
                    st = dev.state.lock();
                }
                st.ffi_in_flight = false;
                dev.ffi_done.notify_all();
            }
            Action::Unpin { slot, .. } => {
                let taken = st.pins.get_mut(slot.index()).and_then(Option::take);
                let _ = st.model.dma.complete(&action, Completion::Unpinned);
                if let Some(p) = taken {
                    st.ffi_in_flight = true;
                    drop(st);
                    dev.unpin_pages(p);
                    st = dev.state.lock();
                    st.ffi_in_flight = false;
                    dev.ffi_done.notify_all();
                }
            }
            Action::ReadDescriptor { at, .. } | Action::WriteDescriptor { at, .. } => {
                let (mut raw, write) = match action {
                    Action::WriteDescriptor { bytes, .. } => (bytes, true),
                    _ => ([0u8; DESC_SIZE], false),
                };
                st.ffi_in_flight = true;
                drop(st);
                let ok = dev.dma_rw(at.iova, &mut raw, write).is_ok();
                st = dev.state.lock();
                st.ffi_in_flight = false;
                dev.ffi_done.notify_all();
                let result = match (ok, write) {
                    (false, _) => Completion::Failed,
                    (true, false) => Completion::DescriptorRead(raw),
                    (true, true) => Completion::DescriptorWritten,
                };
                let before = st.model.pending_mask();
                // A stale completion (the state changed meanwhile) changes nothing.
                let _ = st.model.dma.complete(&action, result);
                st.irq_update(before);
            }
            Action::Copy { src, dst, len, .. } => {
                // The bounce buffer leaves the state for the unlocked part;
                // one runner at a time, so nobody else looks for it.
                let mut buf = core::mem::replace(&mut st.copy_buf, KVVec::new());
                st.ffi_in_flight = true;
                drop(st);
                let result = copy(dev, &mut buf, src, dst, len);
                st = dev.state.lock();
                st.copy_buf = buf;
                st.ffi_in_flight = false;
                dev.ffi_done.notify_all();
                let before = st.model.pending_mask();
                // Stale if a reset or an error came in meanwhile.
                let _ = st.model.dma.complete(&action, result);
                st.irq_update(before);
            }
            Action::TxToUart { .. } | Action::UartToRx { .. } => {
                let before = st.model.pending_mask();
                let result = transfer(&mut st, &action);
                let _ = st.model.dma.complete(&action, result);
                st.irq_update(before);
            }
        }
    }
    // Transfers moved bytes through port 0's FIFO.
    crate::rx_timer::update(dev, &mut st);
    st.engine_active = false;
}

/// The copy command: one `vfio_dma_rw` reading all `len` bytes at `src`
/// into `buf`, then one writing them at `dst`. Call without the state lock.
fn copy(dev: &Device<Mtty>, buf: &mut KVVec<u8>, src: u64, dst: u64, len: u32) -> Completion {
    // The engine checked `len` (1..=MAX_COPY_LEN, the buffer's length).
    let Some(data) = buf.get_mut(..len as usize) else { return Completion::CopyReadFailed };
    if dev.dma_rw(src, data, false).is_err() {
        return Completion::CopyReadFailed;
    }
    if dev.dma_rw(dst, data, true).is_err() {
        return Completion::CopyWriteFailed;
    }
    Completion::Copied
}

/// Moves bytes between a pinned page and UART port 0 (no backend call).
fn transfer(st: &mut State, action: &Action) -> Completion {
    match *action {
        Action::TxToUart { at, len } => {
            let n = (len as usize).min(CHUNK);
            let mut buf = [0u8; CHUNK];
            let Some(chunk) = buf.get_mut(..n) else { return Completion::Failed };
            let Some(Some(p)) = st.pins.get(at.slot.index()) else { return Completion::Failed };
            if p.read(at.page as usize, at.offset as usize, chunk).is_err() {
                return Completion::Failed;
            }
            let [p0, _] = &mut st.model.ports;
            let mut moved = 0u32;
            for &b in chunk.iter() {
                let (ok, _) = p0.rx_push(b);
                if !ok {
                    break;
                }
                moved += 1;
            }
            Completion::Transferred(moved)
        }
        Action::UartToRx { at, len } => {
            let n = (len as usize).min(CHUNK);
            let mut buf = [0u8; CHUNK];
            let [p0, _] = &mut st.model.ports;
            let mut got = 0usize;
            for slot in buf.iter_mut().take(n) {
                match p0.rx_pop() {
                    (Some(b), _) => {
                        *slot = b;
                        got += 1;
                    }
                    (None, _) => break,
                }
            }
            let Some(Some(p)) = st.pins.get(at.slot.index()) else { return Completion::Failed };
            let Some(data) = buf.get(..got) else { return Completion::Failed };
            if p.write(at.page as usize, at.offset as usize, data).is_err() {
                return Completion::Failed;
            }
            Completion::Transferred(got as u32)
        }
        _ => Completion::Failed,
    }
}

/// Takes every pin out of the table (the engine forgets them too) once no
/// backend call of a runner is in flight, and returns them for unpinning
/// after the state lock is dropped.
pub(crate) fn take_all(dev: &Device<Mtty>, st: &mut Guard<'_, State, MutexBackend>) -> [Option<SlotPages>; MAX_PINS] {
    while st.ffi_in_flight {
        dev.ffi_done.wait(st);
    }
    let _ = st.model.dma.take_all_pins();
    let mut out: [Option<SlotPages>; MAX_PINS] = [None, None, None, None];
    for (o, p) in out.iter_mut().zip(st.pins.iter_mut()) {
        *o = p.take();
    }
    out
}

/// Unpins what [`take_all`] or [`take_unmapped`] returned; call without
/// the state lock.
pub(crate) fn unpin_all(dev: &Device<Mtty>, pins: [Option<SlotPages>; MAX_PINS]) {
    for p in pins.into_iter().flatten() {
        dev.unpin_pages(p);
    }
}

/// The `dma_unmap` decision: the engine forgets (and halts on) every pinned
/// range overlapping `[iova, iova + len)`; their pages are returned for
/// unpinning after the state lock is dropped.
pub(crate) fn take_unmapped(
    dev: &Device<Mtty>,
    st: &mut Guard<'_, State, MutexBackend>,
    iova: u64,
    len: u64,
) -> [Option<SlotPages>; MAX_PINS] {
    st.unmap_waiting += 1;
    while st.ffi_in_flight {
        dev.ffi_done.wait(st);
    }
    st.unmap_waiting -= 1;
    let list = st.model.dma.dma_unmap(iova, len);
    let mut out: [Option<SlotPages>; MAX_PINS] = [None, None, None, None];
    for (slot, _) in list.iter() {
        if let (Some(o), Some(p)) = (out.get_mut(slot.index()), st.pins.get_mut(slot.index())) {
            *o = p.take();
        }
    }
    out
}
