// SPDX-License-Identifier: GPL-2.0

//! VFIO migration v2: the device state machine and its data files.
//!
//! The arcs follow `mtty_step_state` of the sample: `STOP -> STOP_COPY`
//! and `PRE_COPY_P2P -> STOP_COPY` fill the saving file with the device
//! state; `RUNNING -> PRE_COPY` and `RUNNING_P2P -> PRE_COPY_P2P` open it
//! empty; `STOP -> RESUMING` opens the resuming file and `RESUMING -> STOP`
//! loads what was written into it; leaving a data state disables its file.
//! The stream is `mtty_core::migration` (a header, both ports, config space and
//! the DMA engine registers, with a CRC), not the sample's raw C structs.
//!
//! Locks: [`MigCtl`] is under [`Mtty::mig`]; each file's [`MigData`] has
//! its own lock, taken inside `mig` or alone (file reads and writes), and
//! `Mtty::state` is never held together with a file's lock.
//!
//! [`Mtty::mig`]: crate::device::Mtty
#![deny(unsafe_code)]

use crate::device::Mtty;
use crate::mtty_core::migration::{MttyState, HEADER_LEN, STATE_SIZE};
use crate::vfio_device::uapi::precopy_info;
use crate::vfio_device::{self as vd, Device, MigState, MigrationFile, MigrationFileOps};
use kernel::c_str;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::types::ARef;
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

/// The bytes of one data file, and its stream position (kept here, under
/// the same lock, rather than in the file's `f_pos`: two threads may read
/// or write one file at once).
struct MigBuf {
    data: KVec<u8>,
    filled: usize,
    pos: usize,
    disabled: bool,
}

/// The private state of a data file (the sample's `mtty_migration_file`).
#[pin_data]
pub(crate) struct MigData {
    dev: ARef<Device<Mtty>>,
    #[pin]
    buf: Mutex<MigBuf>,
}

/// A saving file (read side).
#[pin_data]
pub(crate) struct SaveFile {
    #[pin]
    inner: MigData,
}

/// A resuming file (write side).
#[pin_data]
pub(crate) struct ResumeFile {
    #[pin]
    inner: MigData,
}

impl MigData {
    fn new(dev: ARef<Device<Mtty>>) -> Result<impl PinInit<Self, Error>> {
        let data = KVec::from_elem(0u8, STATE_SIZE, GFP_KERNEL)?;
        Ok(try_pin_init!(MigData {
            dev,
            buf <- new_mutex!(MigBuf { data, filled: 0, pos: 0, disabled: false }, "MigData::buf"),
        }? Error))
    }

    fn disable(&self) {
        let mut b = self.buf.lock();
        b.disabled = true;
        b.filled = 0;
    }
}

/// The migration state of one device (under `Mtty::mig`).
pub(crate) struct MigCtl {
    state: MigState,
    saving: Option<(Arc<SaveFile>, MigrationFile)>,
    resuming: Option<(Arc<ResumeFile>, MigrationFile)>,
}

impl MigCtl {
    /// A running device with no data file.
    pub(crate) const fn new() -> Self {
        MigCtl { state: MigState::Running, saving: None, resuming: None }
    }

    /// The current state.
    pub(crate) fn state(&self) -> MigState {
        self.state
    }
}

/// Disables and drops both data files (`mtty_disable_files`): their file
/// descriptors stay open but read and write fail with `ENODEV`.
pub(crate) fn disable_files(ctl: &mut MigCtl) {
    if let Some((f, file)) = ctl.saving.take() {
        f.inner.disable();
        drop(file);
    }
    if let Some((f, file)) = ctl.resuming.take() {
        f.inner.disable();
        drop(file);
    }
}

/// The migration side of `VFIO_DEVICE_RESET`: back to `RUNNING` with no
/// data file (the sample's deferred reset).
pub(crate) fn reset(dev: &Device<Mtty>) {
    let mut ctl = dev.mig.lock();
    ctl.state = MigState::Running;
    disable_files(&mut ctl);
}

/// Takes a snapshot of the device into the saving file.
fn fill(dev: &Device<Mtty>, f: &SaveFile) -> Result {
    let snapshot = {
        let st = dev.state.lock();
        let mut img = KVec::from_elem(0u8, STATE_SIZE, GFP_KERNEL)?;
        st.model.save(&mut img).map_err(|_| EINVAL)?;
        img
    };
    let mut b = f.inner.buf.lock();
    b.data = snapshot;
    b.filled = STATE_SIZE;
    Ok(())
}

/// Loads the resuming file into the device.
fn load(dev: &Device<Mtty>, f: &ResumeFile) -> Result {
    let new = {
        let b = f.inner.buf.lock();
        let img = b.data.get(..b.filled).ok_or(EINVAL)?;
        MttyState::restore(img, dev.ports()).map_err(|_| EINVAL)?
    };
    let mut st = dev.state.lock();
    let pins = crate::dma::take_all(dev, &mut st);
    st.model = new;
    crate::rx_timer::update(dev, &mut st);
    drop(st);
    crate::dma::unpin_all(dev, pins);
    Ok(())
}

/// One arc of the state machine (`mtty_step_state`).
fn step(dev: &Device<Mtty>, ctl: &mut MigCtl, new: MigState) -> Result<Option<MigrationFile>> {
    use MigState::*;
    let cur = ctl.state;
    match (cur, new) {
        (Running, RunningP2p) | (RunningP2p, Running) | (RunningP2p, Stop) | (PreCopy, PreCopyP2p)
        | (PreCopyP2p, PreCopy) | (Stop, RunningP2p) => Ok(None),
        (Resuming, Stop) => {
            if let Some((f, _)) = &ctl.resuming {
                load(dev, f)?;
            } else {
                return Err(EINVAL);
            }
            disable_files(ctl);
            Ok(None)
        }
        (PreCopy, Running) | (PreCopyP2p, RunningP2p) | (StopCopy, Stop) => {
            disable_files(ctl);
            Ok(None)
        }
        (Running, PreCopy) | (RunningP2p, PreCopyP2p) | (Stop, StopCopy) | (PreCopyP2p, StopCopy) => {
            if ctl.saving.is_none() {
                let f = Arc::pin_init(try_pin_init!(SaveFile { inner <- MigData::new(dev.into())? }? kernel::error::Error), GFP_KERNEL)?;
                let file = MigrationFile::new(c_str!("mtty_mig"), f.clone())?;
                ctl.saving = Some((f, file));
            } else if new != StopCopy {
                return Ok(None);
            }
            let Some((f, file)) = &ctl.saving else { return Err(EINVAL) };
            if new == StopCopy {
                fill(dev, f)?;
            }
            if cur == PreCopyP2p {
                // The file was handed out when PRE_COPY was entered.
                return Ok(None);
            }
            Ok(Some(file.clone_ref()))
        }
        (Stop, Resuming) => {
            let f = Arc::pin_init(try_pin_init!(ResumeFile { inner <- MigData::new(dev.into())? }? kernel::error::Error), GFP_KERNEL)?;
            let file = MigrationFile::new(c_str!("mtty_mig"), f.clone())?;
            let ret = file.clone_ref();
            ctl.resuming = Some((f, file));
            Ok(Some(ret))
        }
        _ => Err(EINVAL),
    }
}

/// `migration_set_state`: walks the arcs from the current state to `new`.
pub(crate) fn set_state(dev: &Device<Mtty>, new: MigState) -> Result<Option<MigrationFile>> {
    let mut ctl = dev.mig.lock();
    let mut ret = None;
    while ctl.state != new {
        let next = dev.mig_next_state(ctl.state, new)?;
        let file = step(dev, &mut ctl, next)?;
        ctl.state = next;
        if file.is_some() && next != new {
            return Err(EINVAL);
        }
        ret = file;
    }
    Ok(ret)
}

#[vtable]
impl MigrationFileOps for SaveFile {
    const OWNER: &'static ThisModule = &crate::THIS_MODULE;

    fn read(this: &Self, buf: &mut UserSliceWriter) -> Result<usize> {
        let mut b = this.inner.buf.lock();
        if b.disabled {
            return Err(ENODEV);
        }
        let start = b.pos;
        if start > b.filled {
            return Err(EINVAL);
        }
        let n = (b.filled - start).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let src = b.data.get(start..start + n).ok_or(EINVAL)?;
        buf.write_slice(src)?;
        b.pos = start + n;
        Ok(n)
    }

    fn ioctl(this: &Self, cmd: u32, arg: usize) -> Result<isize> {
        if cmd != vd::uapi::VFIO_MIG_GET_PRECOPY_INFO {
            return Err(ENOTTY);
        }
        let dev = &this.inner.dev;
        precopy_info(arg, || {
            let ctl = dev.mig.lock();
            if !matches!(ctl.state, MigState::PreCopy | MigState::PreCopyP2p) {
                return Err(EINVAL);
            }
            let b = this.inner.buf.lock();
            if b.disabled {
                return Err(ENODEV);
            }
            if b.pos > b.filled {
                return Err(EINVAL);
            }
            Ok(((b.filled - b.pos) as u64, 0))
        })?;
        Ok(0)
    }
}

#[vtable]
impl MigrationFileOps for ResumeFile {
    const OWNER: &'static ThisModule = &crate::THIS_MODULE;

    fn write(this: &Self, buf: &mut UserSliceReader) -> Result<usize> {
        let mut b = this.inner.buf.lock();
        let start = b.pos;
        let len = buf.len();
        let end = start.checked_add(len).ok_or(EINVAL)?;
        if end > STATE_SIZE {
            return Err(ENOMEM);
        }
        if b.disabled {
            return Err(ENODEV);
        }
        let dst = b.data.get_mut(start..end).ok_or(EINVAL)?;
        buf.read_slice(dst)?;
        b.pos = end;
        let before = b.filled;
        b.filled = b.filled.max(end);
        if before < HEADER_LEN && b.filled >= HEADER_LEN {
            // Refuse a stream for another device type as early as the sample.
            let header = b.data.get(..HEADER_LEN).ok_or(EINVAL)?;
            if MttyState::check_header(header, this.inner.dev.ports()).is_err() {
                return Err(EFAULT);
            }
        }
        Ok(len)
    }
}
