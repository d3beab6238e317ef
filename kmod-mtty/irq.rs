// SPDX-License-Identifier: GPL-2.0

//! The device's interrupt: INTx or MSI, delivered through eventfds.
//!
//! Like the C sample, a device has one interrupt line, configured by
//! `VFIO_DEVICE_SET_IRQS` as either INTx or MSI with one eventfd. INTx is
//! automasked: a signal masks it until userspace unmasks it.
//!
//! Unlike the sample, the line is a level (see `docs/mtty.md`): the device
//! model reports the set of pending causes, the caller signals on every
//! [`IrqChange`] that raises or adds a cause, and an INTx unmask while a
//! cause is still pending signals again at once.
#![deny(unsafe_code)]

use crate::eventfd::EventFd;
use crate::mtty_core::uart::IrqChange;
use crate::vfio_device::uapi::*;
use kernel::prelude::*;

/// Which interrupt index is in use (`irq_index` of the sample).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Intx,
    Msi,
}

/// The interrupt configuration of one device.
pub(crate) struct Irq {
    mode: Mode,
    intx: Option<EventFd>,
    msi: Option<EventFd>,
    intx_masked: bool,
}

impl Irq {
    /// No interrupt configured.
    pub(crate) const fn new() -> Self {
        Irq { mode: Mode::None, intx: None, msi: None, intx_masked: false }
    }

    /// Signals the configured interrupt (`mtty_trigger_interrupt`): MSI
    /// always; INTx unless masked or disabled in the command register, and
    /// then masks it.
    pub(crate) fn trigger(&mut self, intx_disabled: bool) {
        match self.mode {
            Mode::Msi => {
                if let Some(e) = &self.msi {
                    e.signal();
                }
            }
            Mode::Intx => {
                if let Some(e) = &self.intx {
                    if !self.intx_masked && !intx_disabled {
                        e.signal();
                        self.intx_masked = true;
                    }
                }
            }
            Mode::None => {}
        }
    }

    /// Signals when the line rose or gained a cause.
    pub(crate) fn update(&mut self, change: IrqChange, intx_disabled: bool) {
        if change.needs_signal() {
            self.trigger(intx_disabled);
        }
    }

    fn disable_intx(&mut self) {
        if self.intx.take().is_some() {
            self.intx_masked = false;
            self.mode = Mode::None;
        }
    }

    fn disable_msi(&mut self) {
        if self.msi.take().is_some() {
            self.mode = Mode::None;
        }
    }

    /// Drops both eventfds (device close).
    pub(crate) fn disable(&mut self) {
        self.disable_intx();
        self.disable_msi();
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO` for `index`.
    pub(crate) fn info(index: u32) -> Result<IrqInfo> {
        match index {
            PCI_INTX_IRQ_INDEX => Ok(IrqInfo {
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
                count: 1,
            }),
            PCI_MSI_IRQ_INDEX => Ok(IrqInfo { flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, count: 1 }),
            _ => Err(EINVAL),
        }
    }

    /// `VFIO_DEVICE_SET_IRQS` on a validated request, with the sample's
    /// errnos. `asserted` is the current level of the line: unmasking INTx
    /// or triggering re-signals a pending cause.
    pub(crate) fn set(&mut self, req: &IrqSet, asserted: bool, intx_disabled: bool) -> Result {
        let action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let single = req.start == 0 && req.count == 1;
        match req.index {
            PCI_INTX_IRQ_INDEX => match action {
                VFIO_IRQ_SET_ACTION_MASK => {
                    if self.mode != Mode::Intx || !single {
                        return Err(EINVAL);
                    }
                    if req.flags & VFIO_IRQ_SET_DATA_NONE != 0 || (req.flags & VFIO_IRQ_SET_DATA_BOOL != 0 && req.bool_at0()) {
                        self.intx_masked = true;
                    } else if req.flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                        return Err(ENOTTY);
                    }
                    Ok(())
                }
                VFIO_IRQ_SET_ACTION_UNMASK => {
                    if self.mode != Mode::Intx || !single {
                        return Err(EINVAL);
                    }
                    if req.flags & VFIO_IRQ_SET_DATA_NONE != 0 || (req.flags & VFIO_IRQ_SET_DATA_BOOL != 0 && req.bool_at0()) {
                        self.intx_masked = false;
                        if asserted {
                            // Level semantics: a still-pending cause fires again.
                            self.trigger(intx_disabled);
                        }
                    } else if req.flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                        return Err(ENOTTY);
                    }
                    Ok(())
                }
                VFIO_IRQ_SET_ACTION_TRIGGER => {
                    if self.mode == Mode::Intx && req.count == 0 && req.flags & VFIO_IRQ_SET_DATA_NONE != 0 {
                        self.disable_intx();
                        return Ok(());
                    }
                    if !matches!(self.mode, Mode::Intx | Mode::None) || !single {
                        return Err(EINVAL);
                    }
                    if req.flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                        self.disable_intx();
                        let fd = req.fd_at0();
                        if fd < 0 {
                            return Ok(());
                        }
                        self.intx = Some(EventFd::from_fd(fd)?);
                        self.mode = Mode::Intx;
                        return Ok(());
                    }
                    if self.mode != Mode::Intx {
                        return Err(EINVAL);
                    }
                    if req.flags & VFIO_IRQ_SET_DATA_NONE != 0 || (req.flags & VFIO_IRQ_SET_DATA_BOOL != 0 && req.bool_at0()) {
                        self.trigger(intx_disabled);
                    }
                    Ok(())
                }
                _ => Ok(()),
            },
            PCI_MSI_IRQ_INDEX => match action {
                VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK => Err(ENOTTY),
                VFIO_IRQ_SET_ACTION_TRIGGER => {
                    if self.mode == Mode::Msi && req.count == 0 && req.flags & VFIO_IRQ_SET_DATA_NONE != 0 {
                        self.disable_msi();
                        return Ok(());
                    }
                    if !matches!(self.mode, Mode::Msi | Mode::None) || !single {
                        return Err(EINVAL);
                    }
                    if req.flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                        self.disable_msi();
                        let fd = req.fd_at0();
                        if fd < 0 {
                            return Ok(());
                        }
                        self.msi = Some(EventFd::from_fd(fd)?);
                        self.mode = Mode::Msi;
                        return Ok(());
                    }
                    if self.mode != Mode::Msi {
                        return Err(EINVAL);
                    }
                    if req.flags & VFIO_IRQ_SET_DATA_NONE != 0 || (req.flags & VFIO_IRQ_SET_DATA_BOOL != 0 && req.bool_at0()) {
                        self.trigger(intx_disabled);
                    }
                    Ok(())
                }
                _ => Ok(()),
            },
            // MSI-X, ERR and REQ: not implemented, as in the sample.
            _ => Err(ENOTTY),
        }
    }
}
