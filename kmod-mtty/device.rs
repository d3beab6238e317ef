// SPDX-License-Identifier: GPL-2.0

//! One mtty instance as a VFIO device: regions, ioctls, interrupts, DMA.
//!
//! # Regions
//!
//! Region `n` starts at `n << 40` of the device file, as in the sample:
//!
//! | index | region        | size              | accesses                              |
//! |-------|---------------|-------------------|---------------------------------------|
//! | 0     | BAR0, port 0  | 8                 | bytes; a wider access is one per byte |
//! | 1     | BAR1, port 1  | 8 (`mtty-2` only) | as BAR0                               |
//! | 2     | BAR2, DMA     | 4096              | 4 or 8 bytes, naturally aligned       |
//! | 3-5   | BAR3-5        | 0                 | read 0xff, writes ignored             |
//! | 7     | config space  | 0xff (reported)   | 256 bytes, in 4/2/1-byte pieces       |
//!
//! # Locking
//!
//! This is the one statement of the module's lock order; other files and
//! docs/mtty.md refer to it. Each device has two locks, always taken in
//! this order:
//!
//! 1. [`Mtty::mig`]: the migration state machine and its data files
//!    (the sample's `state_mutex`). A data file's own lock
//!    ([`crate::migration::MigData`]) nests inside it, never the other way,
//!    and is never held together with `state`.
//! 2. [`Mtty::state`]: the device model (UARTs, config space, DMA engine),
//!    the interrupt configuration, the pinned pages and the copy command's
//!    bounce buffer (the sample's `ops_lock` and `rxtx_lock` in one).
//!
//! No lock of ours is held while calling into the IOMMU backend
//! (`vfio_pin_pages`, `vfio_unpin_pages`, `vfio_dma_rw`, which take the
//! container lock): `dma_unmap` arrives with the backend's device-list lock
//! held and takes `state`, and the C type1 takes its container lock before
//! its device-list lock (`register_device`), so any lock held across a pin
//! would close a cycle with it. The DMA runner drops `state` around each backend
//! call and marks it with `State::ffi_in_flight`; `dma_unmap`, reset, close
//! and a migration load wait on [`Mtty::ffi_done`] until no call is in
//! flight, take the pins out of the table under `state`, and unpin after
//! dropping it. No user copy happens under `state` either: register values
//! are copied from and to userspace outside it.
//!
//! The character-timeout timer ([`Mtty::rx_work`], `rx_timer.rs`) is armed
//! and cancelled under `state` without waiting; its callback takes `state`,
//! so `close_device` cancels it synchronously before taking `state`.
#![deny(unsafe_code)]

use crate::delayed_work::DelayedWork;
use crate::dma::{self, SlotPages};
use crate::rx_timer;
use crate::irq::Irq;
use crate::migration::MigCtl;
use crate::mtty_core::dma_engine::{MAX_COPY_LEN, MAX_PINS};
use crate::mtty_core::migration::MttyState;
use crate::mtty_core::pci_config::{PortCount, CONFIG_SIZE, DMA_BAR, IO_BAR_SIZE};
use crate::mtty_core::rx_timeout::RxTimeouts;
use crate::mtty_core::uart::IrqChange;
use crate::vfio_device::uapi::*;
use crate::vfio_device::{self as vd, Device, DeviceOps, MigState, MigrationFile};
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::c_str;
use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

/// Ports available to new instances, shared by all types (24, as the
/// sample's `MAX_MTTYS`).
pub(crate) const MAX_PORTS: u32 = 24;
static AVAIL_PORTS: AtomicU32 = AtomicU32::new(MAX_PORTS);

/// Region offsets in the device file: `index << 40`.
const REGION_SHIFT: u32 = 40;
/// Config space size the sample reports (`MTTY_CONFIG_SPACE_SIZE`).
const CONFIG_REGION_SIZE: u64 = 0xff;
/// Size of the DMA BAR.
const DMA_BAR_SIZE: u64 = crate::mtty_core::pci_config::DMA_BAR_SIZE as u64;

/// Number of instances of a type with `ports` ports that can still be made.
pub(crate) fn available(ports: u32) -> u32 {
    AVAIL_PORTS.load(Ordering::Relaxed) / ports.max(1)
}

/// Ports taken from the pool for one instance, given back on drop.
pub(crate) struct Reservation(u32);

impl Reservation {
    /// Takes `ports` ports, or fails with `ENOSPC` (as `mtty_init_dev`).
    pub(crate) fn take(ports: u32) -> Result<Self> {
        AVAIL_PORTS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(ports))
            .map_err(|_| ENOSPC)?;
        Ok(Reservation(ports))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        AVAIL_PORTS.fetch_add(self.0, Ordering::AcqRel);
    }
}

/// Everything protected by [`Mtty::state`].
pub(crate) struct State {
    /// The guest-visible device.
    pub(crate) model: MttyState,
    /// INTx/MSI configuration.
    pub(crate) irq: Irq,
    /// Pinned pages, by engine pin slot.
    pub(crate) pins: [Option<SlotPages>; MAX_PINS],
    /// A thread is running the DMA engine (`dma::run`).
    pub(crate) engine_active: bool,
    /// That thread dropped this lock to call into the IOMMU backend.
    pub(crate) ffi_in_flight: bool,
    /// Number of `dma_unmap` calls waiting for `ffi_in_flight` to clear.
    pub(crate) unmap_waiting: u32,
    /// The copy command's bounce buffer, `MAX_COPY_LEN` bytes, allocated
    /// with the device. The runner takes it out (leaving an empty vector)
    /// for the two `vfio_dma_rw` of a copy and puts it back; freed with the
    /// device.
    pub(crate) copy_buf: KVVec<u8>,
    /// Character-timeout deadlines and what the timer is armed for.
    pub(crate) rx_timer: RxTimeouts,
    /// The device is open: the character-timeout timer may be armed.
    pub(crate) timer_enabled: bool,
}

impl State {
    /// Signals the interrupt for a change of the device's pending causes.
    pub(crate) fn irq_update(&mut self, before: u32) {
        let change = IrqChange::between(before, self.model.pending_mask());
        let intx_disabled = self.model.config.intx_disabled();
        self.irq.update(change, intx_disabled);
    }
}

/// The state of one mtty device.
#[pin_data]
pub(crate) struct Mtty {
    ports: PortCount,
    _reservation: Reservation,
    /// The migration state machine (outer lock).
    #[pin]
    pub(crate) mig: Mutex<MigCtl>,
    /// The device model, interrupts and pins (inner lock).
    #[pin]
    pub(crate) state: Mutex<State>,
    /// Signalled when `State::ffi_in_flight` clears.
    #[pin]
    pub(crate) ffi_done: CondVar,
    /// The character-timeout timer (`rx_timer.rs`); its callback takes
    /// `state`.
    #[pin]
    pub(crate) rx_work: DelayedWork<Device<Mtty>>,
}

impl Mtty {
    /// A new device with `ports` ports holding `reservation`.
    pub(crate) fn new(ports: PortCount, reservation: Reservation) -> impl PinInit<Self, Error> {
        let model = MttyState::new(ports);
        let copy_buf = KVVec::from_elem(0u8, MAX_COPY_LEN as usize, GFP_KERNEL);
        try_pin_init!(Mtty {
            ports,
            _reservation: reservation,
            mig <- new_mutex!(MigCtl::new(), "Mtty::mig"),
            state <- new_mutex!(State {
                model,
                irq: Irq::new(),
                pins: [None, None, None, None],
                engine_active: false,
                ffi_in_flight: false,
                unmap_waiting: 0,
                copy_buf: copy_buf?,
                rx_timer: RxTimeouts::new(),
                timer_enabled: false,
            }, "Mtty::state"),
            ffi_done <- new_condvar!("Mtty::ffi_done"),
            rx_work <- DelayedWork::new(),
        }? Error)
    }

    /// The number of ports.
    pub(crate) fn ports(&self) -> PortCount {
        self.ports
    }

    /// Device reset: every register to its power-on value, every pin
    /// released. The interrupt configuration stays, as on vfio-pci.
    pub(crate) fn reset_model(dev: &Device<Self>) {
        let mut st = dev.state.lock();
        let pins = dma::take_all(dev, &mut st);
        st.model.reset();
        // Empty FIFOs want no timeout: this cancels a pending timer.
        rx_timer::update(dev, &mut st);
        drop(st);
        dma::unpin_all(dev, pins);
    }
}

/// A decoded region access.
enum Region {
    Config(u16),
    Port(usize, u8),
    Dma(u32),
    NoBar,
}

impl Mtty {
    /// Finds the region and offset of `pos` for an access of `len` bytes.
    fn region(&self, pos: u64, len: usize) -> Result<Region> {
        let index = pos >> REGION_SHIFT;
        let off = pos & ((1u64 << REGION_SHIFT) - 1);
        let end = off.checked_add(len as u64).ok_or(EINVAL)?;
        let ports = u64::from(self.ports.get());
        match index {
            i if i == u64::from(PCI_CONFIG_REGION_INDEX) => {
                if end > CONFIG_SIZE as u64 {
                    return Err(EINVAL);
                }
                Ok(Region::Config(off as u16))
            }
            i if i < ports => {
                if end > u64::from(IO_BAR_SIZE) {
                    return Err(EINVAL);
                }
                Ok(Region::Port(i as usize, off as u8))
            }
            i if i == u64::from(DMA_BAR) => {
                if end > DMA_BAR_SIZE {
                    return Err(EINVAL);
                }
                Ok(Region::Dma(off as u32))
            }
            i if i <= u64::from(PCI_BAR5_REGION_INDEX) => Ok(Region::NoBar),
            // The sample fails other regions with EFAULT.
            _ => Err(EFAULT),
        }
    }

    /// Reads `out.len()` bytes at `pos`: one register access per
    /// config/DMA piece, one UART register per byte.
    fn access_read(dev: &Device<Self>, pos: u64, out: &mut [u8]) -> Result {
        let region = dev.region(pos, out.len())?;
        let mut st = dev.state.lock();
        let before = st.model.pending_mask();
        let res = match region {
            Region::Config(off) => {
                let mut done = 0usize;
                let mut r = Ok(());
                while done < out.len() {
                    let w = piece(off as usize + done, out.len() - done);
                    match st.model.config.read(off + done as u16, w as u8) {
                        Ok(v) => {
                            if let Some(dst) = out.get_mut(done..done + w) {
                                dst.copy_from_slice(&v.to_le_bytes()[..w]);
                            }
                        }
                        Err(_) => {
                            r = Err(EINVAL);
                            break;
                        }
                    }
                    done += w;
                }
                r
            }
            Region::Port(port, off) => {
                let Some(uart) = st.model.ports.get_mut(port) else { return Err(EINVAL) };
                for (i, b) in out.iter_mut().enumerate() {
                    *b = uart.read(off + i as u8).0;
                }
                Ok(())
            }
            Region::Dma(off) => {
                let width = out.len();
                if width != 4 && width != 8 {
                    return Err(EINVAL);
                }
                match st.model.dma.read(off, width as u8) {
                    Ok(v) => {
                        if let Some(dst) = out.get_mut(..width) {
                            dst.copy_from_slice(&v.to_le_bytes()[..width]);
                        }
                        Ok(())
                    }
                    Err(_) => Err(EINVAL),
                }
            }
            Region::NoBar => {
                out.fill(0xff);
                Ok(())
            }
        };
        st.irq_update(before);
        rx_timer::update(dev, &mut st);
        drop(st);
        if matches!(region, Region::Port(0, _)) {
            dma::run(dev);
        }
        res
    }

    /// Writes `data` at `pos`, piece by piece as [`Self::access_read`].
    fn access_write(dev: &Device<Self>, pos: u64, data: &[u8]) -> Result {
        let region = dev.region(pos, data.len())?;
        let mut st = dev.state.lock();
        let before = st.model.pending_mask();
        let res = match region {
            Region::Config(off) => {
                let mut done = 0usize;
                let mut r = Ok(());
                while done < data.len() {
                    let w = piece(off as usize + done, data.len() - done);
                    let mut v = [0u8; 4];
                    if let (Some(dst), Some(src)) = (v.get_mut(..w), data.get(done..done + w)) {
                        dst.copy_from_slice(src);
                    }
                    if st.model.config.write(off + done as u16, w as u8, u32::from_le_bytes(v)).is_err() {
                        r = Err(EINVAL);
                        break;
                    }
                    done += w;
                }
                r
            }
            Region::Port(port, off) => {
                let Some(uart) = st.model.ports.get_mut(port) else { return Err(EINVAL) };
                for (i, &b) in data.iter().enumerate() {
                    let _ = uart.write(off + i as u8, b);
                }
                Ok(())
            }
            Region::Dma(off) => {
                let width = data.len();
                if width != 4 && width != 8 {
                    return Err(EINVAL);
                }
                let mut v = [0u8; 8];
                if let (Some(dst), Some(src)) = (v.get_mut(..width), data.get(..width)) {
                    dst.copy_from_slice(src);
                }
                st.model.dma.write(off, width as u8, u64::from_le_bytes(v)).map_err(|_| EINVAL)
            }
            Region::NoBar => Ok(()),
        };
        st.irq_update(before);
        rx_timer::update(dev, &mut st);
        drop(st);
        // Port 0 data, the DMA registers or bus mastering may have changed.
        if matches!(region, Region::Port(0, _) | Region::Dma(_) | Region::Config(_)) {
            dma::run(dev);
        }
        res
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        if index >= PCI_NUM_REGIONS {
            return Err(EINVAL);
        }
        let size = match index {
            PCI_CONFIG_REGION_INDEX => CONFIG_REGION_SIZE,
            i if i < u32::from(self.ports.get()) => u64::from(IO_BAR_SIZE),
            i if i == u32::from(DMA_BAR) => DMA_BAR_SIZE,
            _ => 0,
        };
        Ok(RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            size,
            offset: u64::from(index) << REGION_SHIFT,
        })
    }

    fn set_irqs(dev: &Device<Self>, arg: usize) -> Result {
        let req = set_irqs_prepare(arg, PCI_NUM_IRQS, PCI_NUM_IRQS)?;
        let mut st = dev.state.lock();
        let asserted = st.model.irq_asserted();
        let intx_disabled = st.model.config.intx_disabled();
        st.irq.set(&req, asserted, intx_disabled)
    }
}

/// The width of the next piece of a config access at `off` with `left`
/// bytes to go: 4 or 2 when aligned and long enough, else 1 (as the
/// sample's `mtty_read`/`mtty_write` loops).
fn piece(off: usize, left: usize) -> usize {
    if left >= 4 && off % 4 == 0 {
        4
    } else if left >= 2 && off % 2 == 0 {
        2
    } else {
        1
    }
}

/// Largest single `read`/`write` on the device file handled at once.
const MAX_ACCESS: usize = 256;

#[vtable]
impl DeviceOps for Mtty {
    const NAME: &'static CStr = c_str!("vfio-mtty");
    const MIGRATION_FLAGS: u32 = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;

    fn open_device(dev: &Device<Self>) -> Result {
        rx_timer::start(dev);
        Ok(())
    }

    fn close_device(dev: &Device<Self>) {
        crate::migration::disable_files(&mut dev.mig.lock());
        // Before taking `state`: waits for a running timer callback.
        rx_timer::stop(dev);
        let mut st = dev.state.lock();
        st.irq.disable();
        let pins = dma::take_all(dev, &mut st);
        // The engine stops with its pins; the UARTs keep their state across
        // close and open, as in the sample.
        st.model.dma.reset();
        drop(st);
        dma::unpin_all(dev, pins);
    }

    fn read(dev: &Device<Self>, buf: &mut UserSliceWriter, offset: u64) -> Result<usize> {
        let len = buf.len().min(MAX_ACCESS);
        if len == 0 {
            return Ok(0);
        }
        let mut tmp = [0u8; MAX_ACCESS];
        let out = tmp.get_mut(..len).ok_or(EINVAL)?;
        Self::access_read(dev, offset, out)?;
        buf.write_slice(out)?;
        Ok(len)
    }

    fn write(dev: &Device<Self>, buf: &mut UserSliceReader, offset: u64) -> Result<usize> {
        let len = buf.len().min(MAX_ACCESS);
        if len == 0 {
            return Ok(0);
        }
        let mut tmp = [0u8; MAX_ACCESS];
        let data = tmp.get_mut(..len).ok_or(EINVAL)?;
        buf.read_slice(data)?;
        Self::access_write(dev, offset, data)?;
        Ok(len)
    }

    fn ioctl(dev: &Device<Self>, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            vd::uapi::VFIO_DEVICE_GET_INFO => {
                // Unlike the sample, VFIO_DEVICE_FLAGS_RESET is reported:
                // VFIO_DEVICE_RESET returns the device to its power-on state
                // (and a VMM that sees no reset warns that it cannot reset).
                let flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
                get_info(arg, &DeviceInfo { flags, num_regions: PCI_NUM_REGIONS, num_irqs: PCI_NUM_IRQS })?;
            }
            vd::uapi::VFIO_DEVICE_GET_REGION_INFO => get_region_info(arg, |i| dev.region_info(i))?,
            vd::uapi::VFIO_DEVICE_GET_IRQ_INFO => get_irq_info(arg, |i| {
                if i >= PCI_NUM_IRQS {
                    return Err(EINVAL);
                }
                Irq::info(i)
            })?,
            vd::uapi::VFIO_DEVICE_SET_IRQS => Self::set_irqs(dev, arg)?,
            vd::uapi::VFIO_DEVICE_RESET => {
                crate::migration::reset(dev);
                Self::reset_model(dev);
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }

    fn dma_unmap(dev: &Device<Self>, iova: u64, length: u64) {
        let mut st = dev.state.lock();
        let before = st.model.pending_mask();
        let pins = dma::take_unmapped(dev, &mut st, iova, length);
        st.irq_update(before);
        drop(st);
        // Unpinned without our lock, before returning to the backend.
        dma::unpin_all(dev, pins);
    }

    fn migration_set_state(dev: &Device<Self>, new: MigState) -> Result<Option<MigrationFile>> {
        crate::migration::set_state(dev, new)
    }

    fn migration_get_state(dev: &Device<Self>) -> Result<MigState> {
        Ok(dev.mig.lock().state())
    }

    fn migration_get_data_size(_dev: &Device<Self>) -> Result<usize> {
        Ok(crate::mtty_core::migration::STATE_SIZE)
    }
}
