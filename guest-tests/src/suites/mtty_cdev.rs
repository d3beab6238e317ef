//! The mtty through the VFIO device cdev and iommufd, as kernels built with
//! `CONFIG_IOMMUFD` and `CONFIG_VFIO_DEVICE_CDEV` (the distributions'
//! kernels, and the test kernel) offer it: `/dev/vfio/devices/vfioN`,
//! `VFIO_DEVICE_BIND_IOMMUFD` to an `/dev/iommu` context,
//! `IOMMU_IOAS_ALLOC`, `VFIO_DEVICE_ATTACH_IOMMUFD_PT`, and `IOMMU_IOAS_MAP`
//! / `UNMAP` in place of a type1 container. An emulated device's
//! `vfio_pin_pages` then goes to iommufd's access object and an
//! `IOMMU_IOAS_UNMAP` calls the device's `dma_unmap`: the same contract as
//! type1's device list, served by other code. No type1 module takes part.

use super::mtty_dma::{engine_on, Dma, IOVA};
use super::{CaseResult, Ctx, Fail};
use crate::iommufd::{open_device_cdev, vm_pinned_kb, Iommufd};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{vm_locked_kb, Buffer, Device, Mdev};
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
    let ioas = iommufd.ioas_alloc()?;
    let device = attach_cdev(&iommufd, ioas, &mdev)?;
    Ok(CdevDevice { device, iommufd, ioas, _mdev: mdev })
}

/// Opens `mdev`'s cdev, binds it to `iommufd` and attaches it to `ioas`.
fn attach_cdev(iommufd: &Iommufd, ioas: u32, mdev: &Mdev) -> Result<Device, Fail> {
    let device = open_device_cdev(&mdev.path)?;
    iommufd.bind(&device)?;
    iommufd.attach_pt(&device, ioas)?;
    Ok(device)
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
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let d = open_cdev(ctx, "mtty-1")?;
    let dev = &d.device;
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

/// Starts the engine of `d` with its TX and RX rings in pages `tx` and `rx`
/// after `IOVA` (already mapped); `mem` is the memory behind them.
fn start_engine(d: &Device, mem: Buffer, tx: u64, rx: u64) -> Result<Dma, Fail> {
    let (bar, _) = engine_on(d)?;
    let dma = Dma { bar, mem };
    dma.start(d, tx, rx)?;
    Ok(dma)
}

/// STATUS (running, error, busy bits) and ERROR_CODE of an engine.
fn engine_state(d: &Device, dma: &Dma) -> Result<(u32, u32), Fail> {
    Ok((d.read32(dma.bar + STATUS)? & (STATUS_RUNNING | STATUS_ERROR | STATUS_BUSY), d.read32(dma.bar + ERROR_CODE)?))
}

/// `VFIO_DEVICE_SET_IRQS` through the cdev: each UART cause of the
/// container cases (`mtty.interrupts_*`) signals its eventfd, as INTx and
/// as MSI, on a fresh device each time (both mttys).
pub fn interrupts(ctx: &Ctx) -> CaseResult {
    for index in [VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX] {
        for cause in super::mtty::CAUSES {
            let d = open_cdev(ctx, "mtty-1")?;
            super::mtty::cause_signals(&d.device, index, cause)?;
        }
    }
    Ok(())
}

/// `VFIO_DEVICE_RESET` through the cdev returns the UART to its power-on
/// values and releases the engine's pins taken through iommufd. The
/// sample's reset resets only its migration state (`mtty.ext.reset_clears_state`
/// skips there too): on C the ioctl must succeed, the rest is a skip.
pub fn reset(ctx: &Ctx) -> CaseResult {
    let d = open_cdev(ctx, "mtty-1")?;
    if !ctx.backend.rust_mtty {
        d.device.reset()?;
        return Err(Fail::Skip("the C sample's VFIO_DEVICE_RESET leaves the UART registers as they are (it resets its migration state only); the ioctl itself succeeded through the cdev".into()));
    }
    super::mtty_ext::reset_clears_uart(&d.device)?;
    let mem = Buffer::new(16 * PAGE as usize);
    d.map(mem.vaddr(), IOVA, 16 * PAGE)?;
    let base = vm_pinned_kb();
    let dma = start_engine(&d.device, mem, 0, 1)?;
    check_eq!(vm_pinned_kb(), base + 8, "VmPin: ring pages pinned through iommufd");
    d.device.reset()?;
    check_eq!(vm_pinned_kb(), base, "VmPin after VFIO_DEVICE_RESET");
    check_eq!(d.device.read32(dma.bar + STATUS)?, 0, "engine in its reset state");
    Ok(())
}

/// Migration v2 through the cdev: the state transitions and the save of
/// one `mtty-2` instance resumed into another, both opened through their
/// cdev, with the FIFO bytes and UART registers (SCR, LCR, IER) the same
/// afterwards. The body is `mtty.migration_round_trip`'s (both mttys).
pub fn migration(ctx: &Ctx) -> CaseResult {
    let src = open_cdev(ctx, "mtty-2")?;
    let dst = open_cdev(ctx, "mtty-2")?;
    super::mtty::round_trip_between(&src.device, &dst.device)
}

/// Two instances bound to one iommufd and attached to one IOAS, each
/// engine's rings in its own IOAS area. One `IOMMU_IOAS_UNMAP` of A's area:
/// A's engine stops with UNMAPPED and its pins go, B's (pins elsewhere)
/// runs on with its pins; B's area then stops B.
pub fn unmap_from_second_device(ctx: &Ctx) -> CaseResult {
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let iommufd = Iommufd::open()?;
    let ioas = iommufd.ioas_alloc()?;
    let (ma, mb) = (Mdev::create(&ctx.mtty_parent(), "mtty-1")?, Mdev::create(&ctx.mtty_parent(), "mtty-1")?);
    let a = attach_cdev(&iommufd, ioas, &ma)?;
    let b = attach_cdev(&iommufd, ioas, &mb)?;
    let mem = Buffer::new(16 * PAGE as usize);
    // Two areas: an IOAS unmap takes whole areas only.
    iommufd.map(ioas, mem.vaddr(), IOVA, 8 * PAGE)?;
    iommufd.map(ioas, mem.vaddr() + 8 * PAGE, IOVA + 8 * PAGE, 8 * PAGE)?;
    let base = vm_pinned_kb();
    let ea = start_engine(&a, mem, 0, 1)?;
    // B's rings are in the second area; its `mem` is never touched.
    let eb = start_engine(&b, Buffer::new(PAGE as usize), 8, 9)?;
    check_eq!(vm_pinned_kb(), base + 16, "VmPin: four ring pages pinned");
    check_eq!(iommufd.unmap(ioas, IOVA, 8 * PAGE)?, 8 * PAGE, "IOMMU_IOAS_UNMAP of A's area");
    check_eq!(engine_state(&a, &ea)?, (STATUS_ERROR, ERR_UNMAPPED), "A's engine (STATUS, ERROR_CODE)");
    check_eq!(a.read32(ea.bar + ERROR_IOVA)?, IOVA as u32, "A's ERROR_IOVA");
    // BUSY: the engine still holds its ring pins.
    check_eq!(engine_state(&b, &eb)?, (STATUS_RUNNING | STATUS_BUSY, 0), "B's engine, pins outside the range (STATUS, ERROR_CODE)");
    check_eq!(vm_pinned_kb(), base + 8, "VmPin: A's pins released, B's held");
    check_eq!(iommufd.unmap(ioas, IOVA + 8 * PAGE, 8 * PAGE)?, 8 * PAGE, "IOMMU_IOAS_UNMAP of B's area");
    check_eq!(engine_state(&b, &eb)?, (STATUS_ERROR, ERR_UNMAPPED), "B's engine after its own area went");
    check_eq!(b.read32(eb.bar + ERROR_IOVA)?, (IOVA + 8 * PAGE) as u32, "B's ERROR_IOVA");
    check_eq!(vm_pinned_kb(), base, "VmPin after both unmaps");
    Ok(())
}

/// The engine runs with pins and the process closes `/dev/iommu`, then the
/// device, without stopping it: the bound device keeps the iommufd context
/// (and the pins) until its own close, which releases them (VmPin and the
/// system's pin count back). Reopened, the engine is stopped.
pub fn close_while_pinned(ctx: &Ctx) -> CaseResult {
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let mdev = Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    let (base, system) = (vm_pinned_kb(), super::pins_held()?);
    let iommufd = Iommufd::open()?;
    let ioas = iommufd.ioas_alloc()?;
    let dev = attach_cdev(&iommufd, ioas, &mdev)?;
    let mem = Buffer::new(16 * PAGE as usize);
    iommufd.map(ioas, mem.vaddr(), IOVA, 16 * PAGE)?;
    let dma = start_engine(&dev, mem, 0, 1)?;
    check_eq!(vm_pinned_kb(), base + 8, "VmPin: ring pages pinned");
    drop(iommufd);
    check_eq!(vm_pinned_kb(), base + 8, "VmPin after closing /dev/iommu (the bound device holds the context)");
    drop(dev);
    check_eq!(vm_pinned_kb(), base, "VmPin after closing the device");
    check_eq!(super::pins_held()?, system, "pins held in the system after the close");
    let iommufd = Iommufd::open()?;
    let dev = attach_cdev(&iommufd, iommufd.ioas_alloc()?, &mdev)?;
    check_eq!(dev.read32(dma.bar + STATUS)? & STATUS_RUNNING, 0, "engine stopped when reopened");
    Ok(())
}

/// One process, both ways to a Rust mtty: one instance on a type1 container
/// (`/dev/vfio/vfio`), another on iommufd (its cdev), both engines running
/// with their rings at the same IOVA of their own address space. A
/// `VFIO_IOMMU_UNMAP_DMA` stops only the container's device (VmLck back,
/// VmPin kept); an `IOMMU_IOAS_UNMAP` then stops the other (VmPin back).
pub fn both_paths(ctx: &Ctx) -> CaseResult {
    super::mtty::needs_rust_mtty(ctx, "the C sample has no DMA engine")?;
    let s = ctx.container_with_mdev("mtty-1")?;
    let dc = s.group.device(&s.mdev.uuid)?;
    let di = open_cdev(ctx, "mtty-1")?;
    let (lck, pin) = (vm_locked_kb(), vm_pinned_kb());
    let (memc, memi) = (Buffer::new(16 * PAGE as usize), Buffer::new(16 * PAGE as usize));
    s.container.map_rw(memc.vaddr(), IOVA, 16 * PAGE)?;
    di.map(memi.vaddr(), IOVA, 16 * PAGE)?;
    let ec = start_engine(&dc, memc, 0, 1)?;
    let ei = start_engine(&di.device, memi, 0, 1)?;
    // type1 charges locked_vm (VmLck), iommufd pinned_vm (VmPin).
    check_eq!((vm_locked_kb(), vm_pinned_kb()), (lck + 8, pin + 8), "(VmLck, VmPin) with both engines running");
    let n = s.container.unmap_range(IOVA, 16 * PAGE).map_err(|e| super::fail(format!("VFIO_IOMMU_UNMAP_DMA: {e}")))?;
    check_eq!(n, 16 * PAGE, "VFIO_IOMMU_UNMAP_DMA size");
    check_eq!(engine_state(&dc, &ec)?, (STATUS_ERROR, ERR_UNMAPPED), "container device's engine (STATUS, ERROR_CODE)");
    check_eq!(engine_state(&di.device, &ei)?, (STATUS_RUNNING | STATUS_BUSY, 0), "cdev device's engine after the type1 unmap (BUSY: pins held)");
    check_eq!((vm_locked_kb(), vm_pinned_kb()), (lck, pin + 8), "(VmLck, VmPin) after the type1 unmap");
    check_eq!(di.unmap(IOVA, 16 * PAGE)?, 16 * PAGE, "IOMMU_IOAS_UNMAP length");
    check_eq!(engine_state(&di.device, &ei)?, (STATUS_ERROR, ERR_UNMAPPED), "cdev device's engine after the IOAS unmap");
    check_eq!((vm_locked_kb(), vm_pinned_kb()), (lck, pin), "(VmLck, VmPin) after both unmaps");
    Ok(())
}
