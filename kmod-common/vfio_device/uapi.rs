// SPDX-License-Identifier: GPL-2.0

//! The uAPI of the device ioctls: their numbers, the values drivers put in
//! replies, and the argument handling the C drivers share (copy the fixed
//! part in, check `argsz`, copy the fixed part back).
//!
//! C header: [`include/uapi/linux/vfio.h`](srctree/include/uapi/linux/vfio.h).

use crate::bindings;
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO ioctls carry no size or direction.
const fn vfio_io(nr: u32) -> u32 {
    ((bindings::VFIO_TYPE as u32) << 8) | (bindings::VFIO_BASE + nr)
}

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub(crate) const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub(crate) const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub(crate) const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
/// `VFIO_DEVICE_RESET`.
pub(crate) const VFIO_DEVICE_RESET: u32 = vfio_io(11);
/// `VFIO_MIG_GET_PRECOPY_INFO`, an ioctl of the migration data file.
pub(crate) const VFIO_MIG_GET_PRECOPY_INFO: u32 = vfio_io(21);
pub(crate) use crate::bindings::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
    VFIO_MIGRATION_STOP_COPY, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// `VFIO_PCI_NUM_REGIONS`.
pub(crate) const PCI_NUM_REGIONS: u32 = bindings::VFIO_PCI_NUM_REGIONS;
/// `VFIO_PCI_NUM_IRQS`.
pub(crate) const PCI_NUM_IRQS: u32 = bindings::VFIO_PCI_NUM_IRQS;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub(crate) const PCI_CONFIG_REGION_INDEX: u32 = bindings::VFIO_PCI_CONFIG_REGION_INDEX;
/// `VFIO_PCI_BAR5_REGION_INDEX`.
pub(crate) const PCI_BAR5_REGION_INDEX: u32 = bindings::VFIO_PCI_BAR5_REGION_INDEX;
/// `VFIO_PCI_INTX_IRQ_INDEX`.
pub(crate) const PCI_INTX_IRQ_INDEX: u32 = bindings::VFIO_PCI_INTX_IRQ_INDEX;
/// `VFIO_PCI_MSI_IRQ_INDEX`.
pub(crate) const PCI_MSI_IRQ_INDEX: u32 = bindings::VFIO_PCI_MSI_IRQ_INDEX;

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        w.copy_from_slice(s);
    }
    u32::from_ne_bytes(w)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

/// Reads the fixed part (`N` bytes) of an ioctl argument and checks its
/// leading `argsz`: `EFAULT` if unreadable, `EINVAL` if `argsz < N`.
fn read_fixed<const N: usize>(arg: usize) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    UserSlice::new(arg, N).reader().read_slice(&mut b)?;
    if (u32_at(&b, 0) as usize) < N {
        return Err(EINVAL);
    }
    Ok(b)
}

fn write_fixed(arg: usize, b: &[u8]) -> Result {
    UserSlice::new(arg, b.len()).writer().write_slice(b)
}

/// The reply to `VFIO_DEVICE_GET_INFO`.
pub(crate) struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub(crate) flags: u32,
    /// Number of regions.
    pub(crate) num_regions: u32,
    /// Number of IRQ indices.
    pub(crate) num_irqs: u32,
}

/// Handles `VFIO_DEVICE_GET_INFO` (no capability chain).
pub(crate) fn get_info(arg: usize, info: &DeviceInfo) -> Result {
    // offsetofend(struct vfio_device_info, num_irqs)
    let mut b = read_fixed::<16>(arg)?;
    put_u32(&mut b, 4, info.flags);
    put_u32(&mut b, 8, info.num_regions);
    put_u32(&mut b, 12, info.num_irqs);
    write_fixed(arg, &b)
}

/// The reply to `VFIO_DEVICE_GET_REGION_INFO` for one region.
pub(crate) struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub(crate) flags: u32,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Offset of the region in the device file.
    pub(crate) offset: u64,
}

/// Handles `VFIO_DEVICE_GET_REGION_INFO`, asking `region` about the
/// requested index (no capability chain).
pub(crate) fn get_region_info(arg: usize, region: impl FnOnce(u32) -> Result<RegionInfo>) -> Result {
    // offsetofend(struct vfio_region_info, offset)
    let mut b = read_fixed::<32>(arg)?;
    let r = region(u32_at(&b, 8))?;
    put_u32(&mut b, 4, r.flags);
    put_u64(&mut b, 16, r.size);
    put_u64(&mut b, 24, r.offset);
    write_fixed(arg, &b)
}

/// The reply to `VFIO_DEVICE_GET_IRQ_INFO` for one index.
pub(crate) struct IrqInfo {
    /// `VFIO_IRQ_INFO_*`.
    pub(crate) flags: u32,
    /// Number of vectors.
    pub(crate) count: u32,
}

/// Handles `VFIO_DEVICE_GET_IRQ_INFO`, asking `irq` about the index.
pub(crate) fn get_irq_info(arg: usize, irq: impl FnOnce(u32) -> Result<IrqInfo>) -> Result {
    // offsetofend(struct vfio_irq_info, count)
    let mut b = read_fixed::<16>(arg)?;
    let r = irq(u32_at(&b, 8))?;
    put_u32(&mut b, 4, r.flags);
    put_u32(&mut b, 12, r.count);
    write_fixed(arg, &b)
}

/// A validated `VFIO_DEVICE_SET_IRQS` request.
pub(crate) struct IrqSet {
    /// `VFIO_IRQ_SET_DATA_*` and `VFIO_IRQ_SET_ACTION_*`.
    pub(crate) flags: u32,
    /// IRQ index.
    pub(crate) index: u32,
    /// First vector.
    pub(crate) start: u32,
    /// Number of vectors.
    pub(crate) count: u32,
    /// The data that follows the header (bools or eventfds).
    pub(crate) data: KVec<u8>,
}

impl IrqSet {
    /// The first data byte (`DATA_BOOL`), zero if there is none.
    pub(crate) fn bool_at0(&self) -> bool {
        self.data.first().copied().unwrap_or(0) != 0
    }

    /// The first data word as a file descriptor (`DATA_EVENTFD`).
    pub(crate) fn fd_at0(&self) -> i32 {
        u32_at(&self.data, 0) as i32
    }
}

/// Reads and validates a `VFIO_DEVICE_SET_IRQS` argument with the VFIO
/// core's `vfio_set_irqs_validate_and_prepare`, then copies its data.
pub(crate) fn set_irqs_prepare(arg: usize, num_irqs: u32, max_irq_type: u32) -> Result<IrqSet> {
    // offsetofend(struct vfio_irq_set, count)
    const MINSZ: usize = 20;
    let mut b = [0u8; MINSZ];
    UserSlice::new(arg, MINSZ).reader().read_slice(&mut b)?;
    let mut hdr = bindings::vfio_irq_set {
        argsz: u32_at(&b, 0),
        flags: u32_at(&b, 4),
        index: u32_at(&b, 8),
        start: u32_at(&b, 12),
        count: u32_at(&b, 16),
        ..Default::default()
    };
    let mut data_size: usize = 0;
    // SAFETY: `hdr` and `data_size` are valid for the call; the function
    // only reads the header and writes `data_size`.
    kernel::error::to_result(unsafe {
        bindings::vfio_set_irqs_validate_and_prepare(&mut hdr, num_irqs as i32, max_irq_type as i32, &mut data_size)
    })?;
    let mut data = KVec::new();
    if data_size > 0 {
        data = KVec::from_elem(0u8, data_size, GFP_KERNEL)?;
        UserSlice::new(arg + MINSZ, data_size).reader().read_slice(&mut data)?;
    }
    Ok(IrqSet { flags: hdr.flags, index: hdr.index, start: hdr.start, count: hdr.count, data })
}

/// Writes a `struct vfio_precopy_info` reply (`VFIO_MIG_GET_PRECOPY_INFO`):
/// `EFAULT` if unreadable, `EINVAL` if `argsz` is too small.
pub(crate) fn precopy_info(arg: usize, info: impl FnOnce() -> Result<(u64, u64)>) -> Result {
    // offsetofend(struct vfio_precopy_info, dirty_bytes)
    let mut b = read_fixed::<24>(arg)?;
    let (initial, dirty) = info()?;
    put_u64(&mut b, 8, initial);
    put_u64(&mut b, 16, dirty);
    write_fixed(arg, &b)
}
