//! The mtty through the VFIO device cdev and iommufd, as kernels built with
//! `CONFIG_IOMMUFD` and `CONFIG_VFIO_DEVICE_CDEV` (the distributions'
//! kernels, and the test kernel) offer it: `/dev/vfio/devices/vfioN`,
//! `VFIO_DEVICE_BIND_IOMMUFD` to an `/dev/iommu` context,
//! `IOMMU_IOAS_ALLOC`, `VFIO_DEVICE_ATTACH_IOMMUFD_PT`, and `IOMMU_IOAS_MAP`
//! / `UNMAP` in place of a type1 container. An emulated device's
//! `vfio_pin_pages` then goes to iommufd's access object and an
//! `IOMMU_IOAS_UNMAP` calls the device's `dma_unmap`: the same contract as
//! type1's device list, served by other code. No type1 module takes part.

use super::{fail, CaseResult, Ctx, Fail};
use crate::uapi::*;
use crate::vfio::{ioctl_ptr, Device, Mdev};
use crate::{check, check_eq};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};

const PAGE: u64 = 4096;

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

/// `VmPin` of this process in kB: iommufd charges pinned pages to the mm's
/// `pinned_vm` (in per-mm accounting mode), where type1 uses `locked_vm`.
fn vm_pinned_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmPin:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// An mtty instance opened through its cdev, bound to a new iommufd
/// context (pinned memory charged to the process's mm, so `VmPin` shows
/// the pins) and attached to a new IOAS.
struct CdevDevice {
    device: Device,
    iommufd: File,
    ioas: u32,
    _mdev: Mdev,
}

fn open_cdev(ctx: &Ctx, mdev_type: &str) -> Result<CdevDevice, Fail> {
    if !std::path::Path::new("/dev/iommu").exists() {
        return Err(Fail::Skip("no /dev/iommu (a kernel without CONFIG_IOMMUFD)".into()));
    }
    let mdev = Mdev::create(&ctx.mtty_parent(), mdev_type)?;
    let dir = mdev.path.join("vfio-dev");
    let name = std::fs::read_dir(&dir)
        .map_err(|e| fail(format!("{}: {e} (no VFIO device cdev: CONFIG_VFIO_DEVICE_CDEV)", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vfio"))
        .ok_or_else(|| fail(format!("no vfioN under {}", dir.display())))?;
    let open = |p: &str| OpenOptions::new().read(true).write(true).open(p).map_err(|e| fail(format!("open {p}: {e}")));
    let cdev = open(&format!("/dev/vfio/devices/{name}"))?;
    let iommufd = open("/dev/iommu")?;
    let mut opt = IommuOption {
        size: size_of::<IommuOption>(),
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_SET,
        val64: 1,
        ..Default::default()
    };
    ioctl_ptr(iommufd.as_raw_fd(), IOMMU_OPTION, &mut opt).map_err(|e| fail(format!("IOMMU_OPTION(RLIMIT_MODE=mm): {e}")))?;
    let device = Device { fd: OwnedFd::from(cdev) };
    let mut bind = BindIommufd { argsz: size_of::<BindIommufd>(), iommufd: iommufd.as_raw_fd(), ..Default::default() };
    ioctl_ptr(device.raw(), VFIO_DEVICE_BIND_IOMMUFD, &mut bind).map_err(|e| fail(format!("VFIO_DEVICE_BIND_IOMMUFD: {e}")))?;
    let mut alloc = IoasAlloc { size: size_of::<IoasAlloc>(), ..Default::default() };
    ioctl_ptr(iommufd.as_raw_fd(), IOMMU_IOAS_ALLOC, &mut alloc).map_err(|e| fail(format!("IOMMU_IOAS_ALLOC: {e}")))?;
    let mut attach = AttachPt { argsz: size_of::<AttachPt>(), pt_id: alloc.out_ioas_id, ..Default::default() };
    ioctl_ptr(device.raw(), VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut attach)
        .map_err(|e| fail(format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT: {e}")))?;
    Ok(CdevDevice { device, iommufd, ioas: alloc.out_ioas_id, _mdev: mdev })
}

impl CdevDevice {
    fn map(&self, vaddr: u64, iova: u64, length: u64) -> Result<(), Fail> {
        let mut m = IoasMap {
            size: size_of::<IoasMap>(),
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: self.ioas,
            user_va: vaddr,
            length,
            iova,
            ..Default::default()
        };
        ioctl_ptr(self.iommufd.as_raw_fd(), IOMMU_IOAS_MAP, &mut m).map_err(|e| fail(format!("IOMMU_IOAS_MAP: {e}")))?;
        Ok(())
    }

    /// Unmaps `[iova, iova + length)`; returns the length unmapped.
    fn unmap(&self, iova: u64, length: u64) -> Result<u64, Fail> {
        let mut u = IoasUnmap { size: size_of::<IoasUnmap>(), ioas_id: self.ioas, iova, length };
        ioctl_ptr(self.iommufd.as_raw_fd(), IOMMU_IOAS_UNMAP, &mut u).map_err(|e| fail(format!("IOMMU_IOAS_UNMAP: {e}")))?;
        Ok(u.length)
    }
}

/// UART loopback through the cdev: bytes written to THR come back from
/// RBR, on both mttys (no DMA, so no pins).
pub fn uart_loopback(ctx: &Ctx) -> CaseResult {
    let d = open_cdev(ctx, "mtty-1")?;
    let bar0 = d.device.region(VFIO_PCI_BAR0_REGION_INDEX)?.offset;
    for &b in b"cdev" {
        d.device.write8(bar0, b)?;
    }
    let back: Vec<u8> = (0..4).map(|_| d.device.read8(bar0)).collect::<Result<_, _>>()?;
    check_eq!(&back[..], b"cdev", "bytes read back through the cdev");
    Ok(())
}

/// The Rust mtty's DMA engine on iommufd: enabling it pins both ring pages
/// through iommufd's access (`VmPin` +8 kB with mm accounting), a TX/RX
/// loopback moves the bytes, and an `IOMMU_IOAS_UNMAP` of the range while
/// the engine runs calls the device's `dma_unmap`: the engine stops with
/// UNMAPPED, the pins are released, and the unmap reports the whole range.
pub fn dma_engine_on_iommufd(ctx: &Ctx) -> CaseResult {
    use crate::mtty_dma_regs::*;
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let d = open_cdev(ctx, "mtty-1")?;
    let dev = &d.device;
    const IOVA: u64 = 0x10_0000;
    let mem = crate::vfio::Buffer::new(16 * PAGE as usize);
    let base = vm_pinned_kb();
    d.map(mem.vaddr(), IOVA, 16 * PAGE)?;
    check_eq!(vm_pinned_kb(), base, "VmPin after IOMMU_IOAS_MAP (an access pins on demand)");
    let cfg = dev.region(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
    dev.write16(cfg + 0x04, 0x0007)?;
    let bar = dev.region(VFIO_PCI_BAR2_REGION_INDEX)?.offset;
    for (ring, page) in [(TX, 0), (RX, 1)] {
        dev.write32(bar + ring + RING_BASE, (IOVA + page * PAGE) as u32)?;
        dev.write32(bar + ring + RING_BASE + 4, 0)?;
        dev.write32(bar + ring + RING_SIZE, 16)?;
    }
    dev.write32(bar + CTRL, CTRL_ENABLE)?;
    check_eq!(dev.read32(bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR), STATUS_RUNNING, "engine running on iommufd");
    check_eq!(vm_pinned_kb(), base + 8, "VmPin: the two ring pages pinned through iommufd");
    // One byte string through TX, the UART loopback and RX.
    let post = |ring_page: u64, addr: u64, len: u32| {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        // SAFETY: entry 0 of a ring page inside the live buffer.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), mem.addr.add((ring_page * PAGE) as usize), 16) };
    };
    let msg = b"through iommufd";
    // SAFETY: page 2 of the live buffer.
    unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), mem.addr.add(2 * PAGE as usize), msg.len()) };
    post(1, IOVA + 3 * PAGE, 64);
    dev.write32(bar + RX + RING_TAIL, 1)?;
    dev.write32(bar + DOORBELL, DOORBELL_RX)?;
    post(0, IOVA + 2 * PAGE, msg.len() as u32);
    dev.write32(bar + TX + RING_TAIL, 1)?;
    dev.write32(bar + DOORBELL, DOORBELL_TX)?;
    let t = std::time::Instant::now();
    while dev.read32(bar + RX + RING_HEAD)? != 1 {
        check!(t.elapsed().as_secs() < 10, "RX descriptor not done after 10 s (STATUS {:#x})", dev.read32(bar + STATUS)?);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut got = vec![0u8; msg.len()];
    // SAFETY: page 3 of the live buffer.
    unsafe { std::ptr::copy_nonoverlapping(mem.addr.add(3 * PAGE as usize), got.as_mut_ptr(), msg.len()) };
    check_eq!(&got[..], &msg[..], "bytes through TX ring, UART and RX ring");
    // The unmap reaches the device while its engine holds the ring pages.
    check_eq!(d.unmap(IOVA, 16 * PAGE)?, 16 * PAGE, "IOMMU_IOAS_UNMAP length");
    check_eq!(dev.read32(bar + ERROR_CODE)?, ERR_UNMAPPED, "engine told of the unmap");
    check_eq!(vm_pinned_kb(), base, "VmPin after the unmap");
    Ok(())
}
