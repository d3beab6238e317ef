//! The mtty through the VFIO device cdev and iommufd, as kernels built with
//! `CONFIG_IOMMUFD` and `CONFIG_VFIO_DEVICE_CDEV` (the distributions'
//! kernels, and the test kernel) offer it: `/dev/vfio/devices/vfioN`,
//! `VFIO_DEVICE_BIND_IOMMUFD` to an `/dev/iommu` context,
//! `IOMMU_IOAS_ALLOC`, `VFIO_DEVICE_ATTACH_IOMMUFD_PT`, and `IOMMU_IOAS_MAP`
//! / `UNMAP` in place of a type1 container. An emulated device's
//! `vfio_pin_pages` then goes to iommufd's access object and an
//! `IOMMU_IOAS_UNMAP` calls the device's `dma_unmap`: the same contract as
//! type1's device list, served by other code. No type1 module takes part.

use super::{CaseResult, Ctx, Fail};
use crate::iommufd::{open_device_cdev, vm_pinned_kb, Iommufd};
use crate::uapi::*;
use crate::vfio::{Device, Mdev};
use crate::{check, check_eq};

const PAGE: u64 = 4096;

/// An mtty instance opened through its cdev, bound to a new iommufd
/// context (pinned memory charged to the process's mm, so `VmPin` shows
/// the pins) and attached to a new IOAS.
struct CdevDevice {
    device: Device,
    iommufd: Iommufd,
    ioas: u32,
    _mdev: Mdev,
}

fn open_cdev(ctx: &Ctx, mdev_type: &str) -> Result<CdevDevice, Fail> {
    let iommufd = Iommufd::open()?;
    let mdev = Mdev::create(&ctx.mtty_parent(), mdev_type)?;
    let device = open_device_cdev(&mdev.path)?;
    iommufd.bind(&device)?;
    let ioas = iommufd.ioas_alloc()?;
    iommufd.attach_pt(&device, ioas)?;
    Ok(CdevDevice { device, iommufd, ioas, _mdev: mdev })
}

impl CdevDevice {
    fn map(&self, vaddr: u64, iova: u64, length: u64) -> Result<(), Fail> {
        self.iommufd.map(self.ioas, vaddr, iova, length)
    }

    /// Unmaps `[iova, iova + length)`; returns the length unmapped.
    fn unmap(&self, iova: u64, length: u64) -> Result<u64, Fail> {
        self.iommufd.unmap(self.ioas, iova, length)
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
