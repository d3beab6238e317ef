//! iommufd from userspace, as the cases use it: an `/dev/iommu` context
//! (`IOMMU_OPTION` per-mm accounting, IOAS allocation, `IOMMU_IOAS_MAP` /
//! `UNMAP`) and VFIO devices opened through their cdev
//! (`/dev/vfio/devices/vfioN`, `VFIO_DEVICE_BIND_IOMMUFD`,
//! `VFIO_DEVICE_ATTACH_IOMMUFD_PT`). The structures are the 6.12 uAPI's.

use crate::suites::{fail, Fail};
use crate::vfio::{ioctl_ptr, Device, Errno};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

// include/uapi/linux/iommufd.h: `_IO(';', 0x80 + n)`.
const fn iommufd_io(n: u32) -> u64 {
    ((b';' as u64) << 8) | (0x80 + n) as u64
}
const IOMMU_IOAS_ALLOC: u64 = iommufd_io(1);
const IOMMU_IOAS_MAP: u64 = iommufd_io(5);
const IOMMU_IOAS_UNMAP: u64 = iommufd_io(6);
const IOMMU_OPTION: u64 = iommufd_io(7);
const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;
const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
const IOMMU_OPTION_OP_SET: u16 = 0;
// include/uapi/linux/vfio.h: `_IO(VFIO_TYPE, VFIO_BASE + n)`.
const VFIO_DEVICE_BIND_IOMMUFD: u64 = (b';' as u64) << 8 | (100 + 18);
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u64 = (b';' as u64) << 8 | (100 + 19);

#[repr(C)]
#[derive(Default)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

#[repr(C)]
#[derive(Default)]
struct IoasMap {
    size: u32,
    flags: u32,
    ioas_id: u32,
    reserved: u32,
    user_va: u64,
    length: u64,
    iova: u64,
}

#[repr(C)]
#[derive(Default)]
struct IoasUnmap {
    size: u32,
    ioas_id: u32,
    iova: u64,
    length: u64,
}

#[repr(C)]
#[derive(Default)]
struct IommuOption {
    size: u32,
    option_id: u32,
    op: u16,
    reserved: u16,
    object_id: u32,
    val64: u64,
}

#[repr(C)]
#[derive(Default)]
struct BindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
}

// The sizes of include/uapi/linux/{iommufd,vfio}.h in 6.12.
const _: () = assert!(std::mem::size_of::<IoasAlloc>() == 12);
const _: () = assert!(std::mem::size_of::<IoasMap>() == 40);
const _: () = assert!(std::mem::size_of::<IoasUnmap>() == 24);
const _: () = assert!(std::mem::size_of::<IommuOption>() == 24);
const _: () = assert!(std::mem::size_of::<BindIommufd>() == 16);
const _: () = assert!(std::mem::size_of::<AttachPt>() == 12);

fn size_of<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// `VmPin` of this process in kB: iommufd always counts its pins in the
/// mm's `pinned_vm` (per-mm accounting mode also charges `locked_vm`),
/// where type1 uses `locked_vm` alone.
pub fn vm_pinned_kb() -> u64 {
    crate::vfio::status_kb("self", "VmPin:")
}

fn open_rw(path: &str) -> Result<File, Fail> {
    OpenOptions::new().read(true).write(true).open(path).map_err(|e| fail(format!("open {path}: {e}")))
}

/// Opens the VFIO device cdev of the device at `sysfs_dev` (an mdev or a
/// PCI function bound to a VFIO driver): `sysfs_dev/vfio-dev/vfioN` names
/// `/dev/vfio/devices/vfioN`.
pub fn open_device_cdev(sysfs_dev: &Path) -> Result<Device, Fail> {
    let dir = sysfs_dev.join("vfio-dev");
    let name = std::fs::read_dir(&dir)
        .map_err(|e| fail(format!("{}: {e} (no VFIO device cdev: CONFIG_VFIO_DEVICE_CDEV)", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vfio"))
        .ok_or_else(|| fail(format!("no vfioN under {}", dir.display())))?;
    Ok(Device { fd: OwnedFd::from(open_rw(&format!("/dev/vfio/devices/{name}"))?) })
}

/// An `/dev/iommu` context whose pins are charged to this process's mm
/// (`IOMMU_OPTION_RLIMIT_MODE` = 1), so `VmPin` shows them.
pub struct Iommufd {
    file: File,
}

impl Iommufd {
    /// Opens `/dev/iommu`; a skip on a kernel without `CONFIG_IOMMUFD`.
    pub fn open() -> Result<Self, Fail> {
        if !Path::new("/dev/iommu").exists() {
            return Err(Fail::Skip("no /dev/iommu (a kernel without CONFIG_IOMMUFD)".into()));
        }
        let file = open_rw("/dev/iommu")?;
        let mut opt = IommuOption {
            size: size_of::<IommuOption>(),
            option_id: IOMMU_OPTION_RLIMIT_MODE,
            op: IOMMU_OPTION_OP_SET,
            val64: 1,
            ..Default::default()
        };
        ioctl_ptr(file.as_raw_fd(), IOMMU_OPTION, &mut opt).map_err(|e| fail(format!("IOMMU_OPTION(RLIMIT_MODE=mm): {e}")))?;
        Ok(Self { file })
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`: binds `device` to this context; returns
    /// its device id.
    pub fn bind(&self, device: &Device) -> Result<u32, Fail> {
        self.try_bind(device).map_err(|e| fail(format!("VFIO_DEVICE_BIND_IOMMUFD: {e}")))
    }

    /// `IOMMU_IOAS_ALLOC`: a new, empty IOAS.
    pub fn ioas_alloc(&self) -> Result<u32, Fail> {
        let mut alloc = IoasAlloc { size: size_of::<IoasAlloc>(), ..Default::default() };
        ioctl_ptr(self.file.as_raw_fd(), IOMMU_IOAS_ALLOC, &mut alloc).map_err(|e| fail(format!("IOMMU_IOAS_ALLOC: {e}")))?;
        Ok(alloc.out_ioas_id)
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches a bound `device` to the
    /// IOAS or hardware page table `pt_id`.
    pub fn attach_pt(&self, device: &Device, pt_id: u32) -> Result<(), Fail> {
        let mut attach = AttachPt { argsz: size_of::<AttachPt>(), pt_id, ..Default::default() };
        ioctl_ptr(device.raw(), VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut attach)
            .map_err(|e| fail(format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT: {e}")))?;
        Ok(())
    }

    /// `IOMMU_IOAS_MAP` of `[vaddr, vaddr + length)` at the fixed `iova`,
    /// readable and writeable.
    pub fn map(&self, ioas: u32, vaddr: u64, iova: u64, length: u64) -> Result<(), Fail> {
        let mut m = IoasMap {
            size: size_of::<IoasMap>(),
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va: vaddr,
            length,
            iova,
            ..Default::default()
        };
        ioctl_ptr(self.file.as_raw_fd(), IOMMU_IOAS_MAP, &mut m).map_err(|e| fail(format!("IOMMU_IOAS_MAP: {e}")))?;
        Ok(())
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, iova + length)`; returns the length
    /// unmapped.
    pub fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, Fail> {
        let mut u = IoasUnmap { size: size_of::<IoasUnmap>(), ioas_id: ioas, iova, length };
        ioctl_ptr(self.file.as_raw_fd(), IOMMU_IOAS_UNMAP, &mut u).map_err(|e| fail(format!("IOMMU_IOAS_UNMAP: {e}")))?;
        Ok(u.length)
    }
}

// IOMMU_HWPT_ALLOC and IOMMU_IOAS_IOVA_RANGES (6.12 uAPI).
const IOMMU_IOAS_IOVA_RANGES: u64 = iommufd_io(4);
const IOMMU_HWPT_ALLOC: u64 = iommufd_io(9);

#[repr(C)]
#[derive(Default)]
struct HwptAlloc {
    size: u32,
    flags: u32,
    dev_id: u32,
    pt_id: u32,
    out_hwpt_id: u32,
    reserved: u32,
    data_type: u32,
    data_len: u32,
    data_uptr: u64,
    fault_id: u32,
    reserved2: u32,
}

#[repr(C)]
#[derive(Default)]
struct IoasIovaRanges {
    size: u32,
    ioas_id: u32,
    num_iovas: u32,
    reserved: u32,
    allowed_iovas: u64,
    out_iova_alignment: u64,
}

const _: () = assert!(std::mem::size_of::<HwptAlloc>() == 48);
const _: () = assert!(std::mem::size_of::<IoasIovaRanges>() == 32);

impl Iommufd {
    /// [`Iommufd::bind`] with the errno of a refusal.
    pub fn try_bind(&self, device: &Device) -> Result<u32, Errno> {
        let mut bind = BindIommufd { argsz: size_of::<BindIommufd>(), iommufd: self.file.as_raw_fd(), ..Default::default() };
        ioctl_ptr(device.raw(), VFIO_DEVICE_BIND_IOMMUFD, &mut bind)?;
        Ok(bind.out_devid)
    }

    /// `IOMMU_HWPT_ALLOC`: a kernel-managed hardware page table (an IOMMU
    /// domain, `IOMMU_HWPT_DATA_NONE`) for the bound device `dev_id`, filled
    /// from and kept in sync with the IOAS `ioas`; returns its id.
    pub fn hwpt_alloc(&self, dev_id: u32, ioas: u32) -> Result<u32, Fail> {
        let mut a = HwptAlloc { size: size_of::<HwptAlloc>(), dev_id, pt_id: ioas, ..Default::default() };
        ioctl_ptr(self.file.as_raw_fd(), IOMMU_HWPT_ALLOC, &mut a).map_err(|e| fail(format!("IOMMU_HWPT_ALLOC: {e}")))?;
        Ok(a.out_hwpt_id)
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the IOVA ranges `[start, last]` the IOAS
    /// allows, i.e. without the reserved regions of the attached devices.
    pub fn iova_ranges(&self, ioas: u32) -> Result<Vec<(u64, u64)>, Fail> {
        // Room for more ranges than an x86 device has reserved holes; the
        // kernel says EMSGSIZE if there are more.
        let mut ranges = [[0u64; 2]; 16];
        let mut r = IoasIovaRanges {
            size: size_of::<IoasIovaRanges>(),
            ioas_id: ioas,
            num_iovas: ranges.len() as u32,
            allowed_iovas: ranges.as_mut_ptr() as u64,
            ..Default::default()
        };
        ioctl_ptr(self.file.as_raw_fd(), IOMMU_IOAS_IOVA_RANGES, &mut r)
            .map_err(|e| fail(format!("IOMMU_IOAS_IOVA_RANGES: {e}")))?;
        Ok(ranges[..r.num_iovas as usize].iter().map(|&[start, last]| (start, last)).collect())
    }
}
