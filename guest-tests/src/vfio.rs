//! Thin userspace wrappers over `/dev/vfio`: containers, groups, devices and
//! mdev instances. Every call returns the raw errno on failure, because the
//! suites compare errnos between backends.

use crate::uapi::*;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// An errno from a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "errno {} ({})", self.0, std::io::Error::from_raw_os_error(self.0))
    }
}

/// Result of a VFIO call.
pub type VResult<T> = Result<T, Errno>;

fn last_errno() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// `ioctl(fd, req, arg)` returning the non-negative result or the errno.
pub fn ioctl_raw(fd: RawFd, req: u64, arg: libc::c_ulong) -> VResult<i32> {
    // SAFETY: the VFIO ioctls take either an integer or a pointer to a struct
    // the caller owns and sized in `argsz`; the kernel validates both.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, req, &mut *arg)`.
pub fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: &mut T) -> VResult<i32> {
    ioctl_raw(fd, req, arg as *mut T as libc::c_ulong)
}

/// `/dev/vfio/vfio`.
pub struct Container {
    pub file: File,
}

impl Container {
    /// Opens a new container.
    pub fn open() -> VResult<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
            .map_err(|e| Errno(e.raw_os_error().unwrap_or(0)))?;
        Ok(Container { file })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn api_version(&self) -> VResult<i32> {
        ioctl_raw(self.fd(), VFIO_GET_API_VERSION, 0)
    }

    pub fn check_extension(&self, ext: u32) -> VResult<i32> {
        ioctl_raw(self.fd(), VFIO_CHECK_EXTENSION, libc::c_ulong::from(ext))
    }

    pub fn set_iommu(&self, kind: u32) -> VResult<i32> {
        ioctl_raw(self.fd(), VFIO_SET_IOMMU, libc::c_ulong::from(kind))
    }

    /// `VFIO_IOMMU_GET_INFO` into a buffer of `argsz` bytes (at least the
    /// fixed struct), returning the whole buffer for capability walks.
    pub fn get_info_raw(&self, argsz: u32) -> VResult<Vec<u8>> {
        let len = (argsz as usize).max(std::mem::size_of::<vfio_iommu_type1_info>());
        let mut buf = vec![0u8; len];
        buf[..4].copy_from_slice(&argsz.to_ne_bytes());
        ioctl_raw(self.fd(), VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as libc::c_ulong)?;
        Ok(buf)
    }

    pub fn map(&self, m: &vfio_iommu_type1_dma_map) -> VResult<()> {
        let mut m = *m;
        ioctl_ptr(self.fd(), VFIO_IOMMU_MAP_DMA, &mut m).map(|_| ())
    }

    /// Maps `[vaddr, vaddr+size)` at `iova` read/write.
    pub fn map_rw(&self, vaddr: u64, iova: u64, size: u64) -> VResult<()> {
        self.map(&vfio_iommu_type1_dma_map {
            argsz: argsz::<vfio_iommu_type1_dma_map>(),
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        })
    }

    /// `VFIO_IOMMU_UNMAP_DMA`; returns the size the kernel wrote back.
    pub fn unmap(&self, u: &vfio_iommu_type1_dma_unmap) -> VResult<u64> {
        let mut u = vfio_iommu_type1_dma_unmap { argsz: u.argsz, flags: u.flags, iova: u.iova, size: u.size, ..Default::default() };
        ioctl_ptr(self.fd(), VFIO_IOMMU_UNMAP_DMA, &mut u)?;
        Ok(u.size)
    }

    pub fn unmap_range(&self, iova: u64, size: u64) -> VResult<u64> {
        self.unmap(&dma_unmap(0, iova, size))
    }
}

/// `/dev/vfio/<group>`.
pub struct Group {
    pub file: File,
}

impl Group {
    pub fn open(id: u32) -> VResult<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/vfio/{id}"))
            .map_err(|e| Errno(e.raw_os_error().unwrap_or(0)))?;
        Ok(Group { file })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn set_container(&self, c: &Container) -> VResult<()> {
        let mut fd: i32 = c.fd();
        ioctl_ptr(self.fd(), VFIO_GROUP_SET_CONTAINER, &mut fd).map(|_| ())
    }

    /// `VFIO_GROUP_UNSET_CONTAINER`: the group leaves its container.
    pub fn unset_container(&self) -> VResult<()> {
        ioctl_raw(self.fd(), VFIO_GROUP_UNSET_CONTAINER, 0).map(|_| ())
    }

    pub fn device(&self, name: &str) -> VResult<Device> {
        let cname = CString::new(name).map_err(|_| Errno(libc::EINVAL))?;
        let fd = ioctl_raw(self.fd(), VFIO_GROUP_GET_DEVICE_FD, cname.as_ptr() as libc::c_ulong)?;
        // SAFETY: a successful GET_DEVICE_FD returns a new file descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Device { fd })
    }
}

/// A VFIO device file descriptor.
pub struct Device {
    pub fd: OwnedFd,
}

impl Device {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn info(&self) -> VResult<vfio_device_info> {
        let mut i = vfio_device_info { argsz: argsz::<vfio_device_info>(), ..Default::default() };
        ioctl_ptr(self.raw(), VFIO_DEVICE_GET_INFO, &mut i)?;
        Ok(i)
    }

    pub fn region(&self, index: u32) -> VResult<vfio_region_info> {
        let mut r = vfio_region_info { argsz: argsz::<vfio_region_info>(), index, ..Default::default() };
        ioctl_ptr(self.raw(), VFIO_DEVICE_GET_REGION_INFO, &mut r)?;
        Ok(r)
    }

    pub fn irq_info(&self, index: u32) -> VResult<vfio_irq_info> {
        let mut r = vfio_irq_info { argsz: argsz::<vfio_irq_info>(), index, ..Default::default() };
        ioctl_ptr(self.raw(), VFIO_DEVICE_GET_IRQ_INFO, &mut r)?;
        Ok(r)
    }

    pub fn reset(&self) -> VResult<()> {
        ioctl_raw(self.raw(), VFIO_DEVICE_RESET, 0).map(|_| ())
    }

    /// Reads `buf.len()` bytes at `offset` of the device file (a region offset plus a register).
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> VResult<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let r = unsafe { libc::pread(self.raw(), buf.as_mut_ptr().cast(), buf.len(), offset as i64) };
        if r < 0 {
            Err(last_errno())
        } else {
            Ok(r as usize)
        }
    }

    pub fn pwrite(&self, buf: &[u8], offset: u64) -> VResult<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let r = unsafe { libc::pwrite(self.raw(), buf.as_ptr().cast(), buf.len(), offset as i64) };
        if r < 0 {
            Err(last_errno())
        } else {
            Ok(r as usize)
        }
    }

    pub fn read8(&self, offset: u64) -> VResult<u8> {
        let mut b = [0u8; 1];
        self.pread(&mut b, offset)?;
        Ok(b[0])
    }

    pub fn write8(&self, offset: u64, v: u8) -> VResult<()> {
        self.pwrite(&[v], offset).map(|_| ())
    }
}

/// Anonymous memory for DMA tests, unmapped on drop.
pub struct Buffer {
    pub addr: *mut u8,
    pub len: usize,
}

impl Buffer {
    /// `mmap(MAP_PRIVATE|MAP_ANONYMOUS)` of `len` bytes, touched so it is populated.
    pub fn new(len: usize) -> Self {
        // SAFETY: an anonymous private mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of {len} bytes failed: {}", std::io::Error::last_os_error());
        // SAFETY: the mapping is `len` bytes, readable and writable.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, len) };
        Buffer { addr: p.cast(), len }
    }

    pub fn vaddr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe the mapping `new` created.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// An mdev instance created through sysfs, removed on drop.
pub struct Mdev {
    pub uuid: String,
    pub path: PathBuf,
}

impl Mdev {
    /// Creates an instance of `mdev_type` (e.g. `mtty-2`) under `parent`
    /// (e.g. `/sys/class/mdev_bus/mtty`).
    pub fn create(parent: &Path, mdev_type: &str) -> Result<Self, String> {
        let uuid = new_uuid();
        let create = parent.join("mdev_supported_types").join(mdev_type).join("create");
        std::fs::write(&create, &uuid).map_err(|e| format!("writing {} to {}: {e}", uuid, create.display()))?;
        Ok(Mdev { path: PathBuf::from("/sys/bus/mdev/devices").join(&uuid), uuid })
    }

    /// The IOMMU group number the instance was put in.
    pub fn group(&self) -> Result<u32, String> {
        let link = std::fs::read_link(self.path.join("iommu_group"))
            .map_err(|e| format!("{}/iommu_group: {e}", self.path.display()))?;
        link.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad iommu_group link {}", link.display()))
    }

    /// Removes the instance now, reporting failure (drop ignores it).
    pub fn remove(&self) -> Result<(), String> {
        std::fs::write(self.path.join("remove"), "1").map_err(|e| format!("remove {}: {e}", self.uuid))
    }
}

impl Drop for Mdev {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = self.remove();
        }
    }
}

/// A random version-4 UUID from the kernel's generator.
pub fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_owned())
}

// ---- mtty suites: eventfds, IRQ setup, migration, locked memory (appended) ----

/// A non-blocking eventfd, closed on drop.
pub struct EventFd {
    pub fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> VResult<Self> {
        // SAFETY: eventfd(2) with valid flags returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_errno());
        }
        // SAFETY: `fd` is a new descriptor we own.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads and resets the counter; 0 when nothing was signalled.
    pub fn take(&self) -> u64 {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v`.
        let r = unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
        if r == 8 {
            v
        } else {
            0
        }
    }
}

impl Device {
    /// `VFIO_DEVICE_SET_IRQS` with one eventfd (or -1) for `index`, action TRIGGER.
    pub fn set_irq_eventfd(&self, index: u32, fd: i32) -> VResult<()> {
        let mut s = IrqSet1 {
            argsz: argsz::<IrqSet1>(),
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 1,
            data: fd,
        };
        ioctl_ptr(self.raw(), VFIO_DEVICE_SET_IRQS, &mut s).map(|_| ())
    }

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE` and the given action/start/count.
    pub fn set_irq_none(&self, index: u32, action: u32, start: u32, count: u32) -> VResult<()> {
        let mut s = IrqSet1 {
            argsz: 20,
            flags: VFIO_IRQ_SET_DATA_NONE | action,
            index,
            start,
            count,
            data: 0,
        };
        ioctl_ptr(self.raw(), VFIO_DEVICE_SET_IRQS, &mut s).map(|_| ())
    }

    /// `VFIO_DEVICE_FEATURE` SET of `MIG_DEVICE_STATE`; returns the data fd, if any.
    pub fn set_mig_state(&self, state: u32) -> VResult<Option<OwnedFd>> {
        let mut f = FeatureMigState {
            argsz: argsz::<FeatureMigState>(),
            flags: VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            device_state: state,
            data_fd: -1,
        };
        ioctl_ptr(self.raw(), VFIO_DEVICE_FEATURE, &mut f)?;
        if f.data_fd >= 0 {
            // SAFETY: the kernel installed a new descriptor for us.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(f.data_fd) }))
        } else {
            Ok(None)
        }
    }

    /// `VFIO_DEVICE_FEATURE` GET of `MIG_DEVICE_STATE`.
    pub fn mig_state(&self) -> VResult<u32> {
        let mut f = FeatureMigState {
            argsz: argsz::<FeatureMigState>(),
            flags: VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            device_state: 0,
            data_fd: -1,
        };
        ioctl_ptr(self.raw(), VFIO_DEVICE_FEATURE, &mut f)?;
        Ok(f.device_state)
    }

    /// `VFIO_DEVICE_FEATURE` GET of `MIGRATION` (the migration flags).
    pub fn migration_flags(&self) -> VResult<u64> {
        let mut f = FeatureMigration {
            argsz: argsz::<FeatureMigration>(),
            flags: VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
            migration_flags: 0,
        };
        ioctl_ptr(self.raw(), VFIO_DEVICE_FEATURE, &mut f)?;
        Ok(f.migration_flags)
    }

    pub fn read32(&self, offset: u64) -> VResult<u32> {
        let mut b = [0u8; 4];
        self.pread(&mut b, offset)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write32(&self, offset: u64, v: u32) -> VResult<()> {
        self.pwrite(&v.to_le_bytes(), offset).map(|_| ())
    }

    pub fn write16(&self, offset: u64, v: u16) -> VResult<()> {
        self.pwrite(&v.to_le_bytes(), offset).map(|_| ())
    }
}

/// Reads everything from `fd` until end of stream.
pub fn read_all_fd(fd: &OwnedFd) -> VResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return Err(last_errno());
        }
        if r == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..r as usize]);
    }
}

/// Writes all of `data` to `fd`.
pub fn write_all_fd(fd: &OwnedFd, data: &[u8]) -> VResult<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writes from the valid slice `data[done..]`.
        let r = unsafe { libc::write(fd.as_raw_fd(), data[done..].as_ptr().cast(), data.len() - done) };
        if r < 0 {
            return Err(last_errno());
        }
        done += r as usize;
    }
    Ok(())
}

/// `VmLck` of this process in kB (`/proc/self/status`).
pub fn vm_locked_kb() -> u64 {
    vm_locked_kb_of("self")
}

/// `VmLck` in kB of the process `pid` ("self" or a number); 0 when it is gone.
pub fn vm_locked_kb_of(pid: &str) -> u64 {
    status_kb(pid, "VmLck:")
}

/// The kB value of the `/proc/<pid>/status` line starting with `field`
/// (e.g. "VmPin:"); 0 when the process or the line is gone.
pub fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}
