//! The mtty sample's observable behaviour (`samples/vfio-mdev/mtty.c`),
//! which the Rust mtty must reproduce.

use super::{fail, CaseResult, Ctx};
use crate::uapi::*;
use crate::vfio::{Container, Group, Mdev};
use crate::{check, check_eq};

/// mtty's ports are 24 in all: an `mtty-2` instance takes two.
pub fn types_and_instances(ctx: &Ctx) -> CaseResult {
    let types = ctx.mtty_parent().join("mdev_supported_types");
    let read = |t: &str, f: &str| -> Result<String, String> {
        std::fs::read_to_string(types.join(t).join(f))
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("{t}/{f}: {e}"))
    };
    check_eq!(read("mtty-1", "name")?, "Single port serial", "mtty-1 name");
    check_eq!(read("mtty-2", "name")?, "Dual port serial", "mtty-2 name");
    check_eq!(read("mtty-1", "device_api")?, "vfio-pci", "device_api");
    let avail = |t: &str| -> Result<u32, String> {
        read(t, "available_instances")?.parse::<u32>().map_err(|e| format!("{t}: {e}"))
    };
    let (one, two) = (avail("mtty-1")?, avail("mtty-2")?);
    check_eq!((one, two), (24, 12), "available instances with no instance");
    let a = Mdev::create(&ctx.mtty_parent(), "mtty-2")?;
    check_eq!((avail("mtty-1")?, avail("mtty-2")?), (22, 11), "after one mtty-2");
    let b = Mdev::create(&ctx.mtty_parent(), "mtty-1")?;
    check_eq!((avail("mtty-1")?, avail("mtty-2")?), (21, 10), "after one mtty-2 and one mtty-1");
    a.remove()?;
    b.remove()?;
    check_eq!((avail("mtty-1")?, avail("mtty-2")?), (24, 12), "after removing both");
    Ok(())
}

/// An open device with what keeps it open (dropped device first).
pub(crate) struct Open {
    pub(crate) device: crate::vfio::Device,
    pub(crate) _container: Container,
    pub(crate) _group: Group,
    pub(crate) _mdev: Mdev,
}

/// Skips a case on the C sample: `what` says what the sample lacks.
pub(crate) fn needs_rust_mtty(ctx: &Ctx, what: &str) -> CaseResult {
    if ctx.backend.rust_mtty {
        Ok(())
    } else {
        Err(super::Fail::Skip(what.into()))
    }
}

/// Creates an instance of `mdev_type` in a new container and opens it.
pub(crate) fn open_device(ctx: &Ctx, mdev_type: &str) -> Result<Open, super::Fail> {
    let s = ctx.container_with_mdev(mdev_type)?;
    let device = s.group.device(&s.mdev.uuid).map_err(|e| fail(format!("GET_DEVICE_FD: {e}")))?;
    Ok(Open { device, _container: s.container, _group: s.group, _mdev: s.mdev })
}

/// Device info and the region table of a 2-port instance.
pub fn device_info_and_regions(ctx: &Ctx) -> CaseResult {
    let o = open_device(ctx, "mtty-2")?;
    let info = o.device.info()?;
    // The sample reports a PCI device without VFIO_DEVICE_FLAGS_RESET, though
    // it implements VFIO_DEVICE_RESET (as a migration-state reset only); ours
    // resets the whole device and says so (docs/mtty.md).
    let flags = if ctx.backend.rust_mtty { VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET } else { VFIO_DEVICE_FLAGS_PCI };
    check_eq!(info.flags, flags, "device flags");
    check_eq!(info.num_regions, VFIO_PCI_NUM_REGIONS, "num_regions");
    check_eq!(info.num_irqs, 5, "num_irqs (VFIO_PCI_NUM_IRQS)");
    let cfg = o.device.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
    check_eq!(cfg.size, 0xff, "config region size (the sample's MTTY_CONFIG_SPACE_SIZE)");
    let bar0 = o.device.region(VFIO_PCI_BAR0_REGION_INDEX)?;
    let bar1 = o.device.region(VFIO_PCI_BAR1_REGION_INDEX)?;
    check_eq!((bar0.size, bar1.size), (8, 8), "BAR0/BAR1 sizes of a 2-port instance");
    check_eq!(bar0.offset, 0, "BAR0 offset");
    check_eq!(bar1.offset, 1 << 40, "BAR1 offset (index << 40)");
    check!(o.device.region(VFIO_PCI_NUM_REGIONS).is_err(), "region index past the last must fail");
    // Vendor and device IDs from config space.
    let mut id = [0u8; 4];
    o.device.pread(&mut id, cfg.offset)?;
    check_eq!(u32::from_le_bytes(id), 0x3253_4348, "vendor/device ID dword (the sample's 0x32534348)");
    Ok(())
}

/// Bytes written to THR come back from RBR (the sample loops TX into RX),
/// with LSR's data-ready bit following the FIFO.
pub fn uart_loopback(ctx: &Ctx) -> CaseResult {
    let o = open_device(ctx, "mtty-1")?;
    let bar0 = o.device.region(VFIO_PCI_BAR0_REGION_INDEX)?.offset;
    const RBR: u64 = 0;
    const LSR: u64 = 5;
    const LSR_DR: u8 = 0x01;
    check_eq!(o.device.read8(bar0 + LSR)? & LSR_DR, 0, "LSR.DR with an empty FIFO");
    let msg = b"hello";
    for &b in msg {
        o.device.write8(bar0, b)?;
    }
    check_eq!(o.device.read8(bar0 + LSR)? & LSR_DR, LSR_DR, "LSR.DR after writes");
    let mut back = Vec::new();
    for _ in 0..msg.len() {
        back.push(o.device.read8(bar0 + RBR)?);
    }
    check_eq!(&back[..], &msg[..], "bytes read back from RBR");
    check_eq!(o.device.read8(bar0 + LSR)? & LSR_DR, 0, "LSR.DR after draining");
    Ok(())
}

// ---- More parity cases: registers, FIFO, interrupts, reset, errnos,
// remove-while-open, migration. Each runs unchanged on the C sample. ----

/// UART register offsets and bits (`include/uapi/linux/serial_reg.h`).
pub(crate) mod reg {
    pub const RBR: u64 = 0;
    pub const THR: u64 = 0;
    pub const DLL: u64 = 0;
    pub const IER: u64 = 1;
    pub const DLM: u64 = 1;
    pub const IIR: u64 = 2;
    pub const FCR: u64 = 2;
    pub const LCR: u64 = 3;
    pub const MCR: u64 = 4;
    pub const LSR: u64 = 5;
    pub const MSR: u64 = 6;
    pub const SCR: u64 = 7;
    pub const IER_RDI: u8 = 0x01;
    pub const IER_THRI: u8 = 0x02;
    pub const IER_RLSI: u8 = 0x04;
    pub const IER_MSI: u8 = 0x08;
    pub const LSR_DR: u8 = 0x01;
    pub const LSR_OE: u8 = 0x02;
    pub const LSR_THRE: u8 = 0x20;
    pub const LSR_TEMT: u8 = 0x40;
    pub const LCR_DLAB: u8 = 0x80;
    pub const MCR_DTR: u8 = 0x01;
    pub const MCR_RTS: u8 = 0x02;
    pub const MCR_OUT2: u8 = 0x08;
    /// FIFO enable, clear both FIFOs, trigger level 1.
    pub const FCR_ENABLE_CLEAR: u8 = 0x07;
}

/// BAR0 offset of a device (port 0).
pub(crate) fn bar0(d: &crate::vfio::Device) -> Result<u64, super::Fail> {
    Ok(d.region(VFIO_PCI_BAR0_REGION_INDEX)?.offset)
}

/// Every UART register read and written through BAR0, values as the sample has them.
pub fn uart_registers(ctx: &Ctx) -> CaseResult {
    use reg::*;
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let b = bar0(d)?;
    // Power-on values.
    check_eq!(d.read8(b + LSR)?, LSR_THRE | LSR_TEMT, "LSR of an idle port");
    check_eq!(d.read8(b + IIR)?, 0xC1, "IIR with no interrupt enabled");
    check_eq!(d.read8(b + MSR)?, 0xB3, "first MSR read (DCD, DSR, CTS with their deltas)");
    check_eq!(d.read8(b + IER)?, 0, "IER at power-on");
    // Read/write registers.
    d.write8(b + SCR, 0x5a)?;
    check_eq!(d.read8(b + SCR)?, 0x5a, "SCR");
    d.write8(b + LCR, 0x1b)?;
    check_eq!(d.read8(b + LCR)?, 0x1b, "LCR");
    d.write8(b + MCR, 0x0b)?;
    check_eq!(d.read8(b + MCR)?, 0x0b, "MCR");
    d.write8(b + IER, 0xff)?;
    check_eq!(d.read8(b + IER)?, 0x0f, "IER keeps only its four bits");
    d.write8(b + IER, 0)?;
    // The divisor latch behind DLAB.
    d.write8(b + LCR, LCR_DLAB | 0x03)?;
    d.write8(b + DLL, 0x0c)?;
    d.write8(b + DLM, 0x00)?;
    check_eq!((d.read8(b + DLL)?, d.read8(b + DLM)?), (0x0c, 0x00), "divisor 12 (9600 baud)");
    d.write8(b + LCR, 0x03)?;
    check_eq!(d.read8(b + LCR)?, 0x03, "LCR after clearing DLAB");
    check_eq!(d.read8(b + IER)?, 0, "IER again visible with DLAB clear");
    // A write to THR with DLAB clear is data, not divisor.
    d.write8(b + THR, b'x')?;
    check_eq!(d.read8(b + LSR)? & LSR_DR, LSR_DR, "LSR.DR after one byte");
    check_eq!(d.read8(b + RBR)?, b'x', "RBR");
    Ok(())
}

/// The loopback FIFO: order, 15-deep fill, overrun, FIFO clear, and the
/// one-byte holding register with the FIFO disabled. (A FIFO of exactly 16
/// bytes is left out: the sample then reports it empty.)
pub fn fifo_behaviour(ctx: &Ctx) -> CaseResult {
    use reg::*;
    let o = open_device(ctx, "mtty-2")?;
    let d = &o.device;
    for port in [VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX] {
        let b = d.region(port)?.offset;
        d.write8(b + FCR, FCR_ENABLE_CLEAR)?;
        let data: Vec<u8> = (0..15u8).map(|i| b'a' + i + port as u8).collect();
        for &x in &data {
            d.write8(b + THR, x)?;
        }
        check_eq!(d.read8(b + LSR)? & (LSR_DR | LSR_OE), LSR_DR, "LSR with 15 bytes (port {port})");
        let back: Vec<u8> = (0..15).map(|_| d.read8(b + RBR)).collect::<Result<_, _>>()?;
        check_eq!(back, data, "bytes in order (port {port})");
        check_eq!(d.read8(b + LSR)? & (LSR_DR | LSR_THRE), LSR_THRE, "drained (port {port})");
        // 17 writes overrun a 16-byte FIFO.
        for i in 0..17u8 {
            d.write8(b + THR, i)?;
        }
        check_eq!(d.read8(b + LSR)? & LSR_OE, LSR_OE, "LSR.OE after an overrun (port {port})");
        d.write8(b + FCR, FCR_ENABLE_CLEAR)?;
        check_eq!(d.read8(b + LSR)? & (LSR_DR | LSR_THRE), LSR_THRE, "FCR clears the FIFO (port {port})");
        // FIFO disabled: a one-byte holding register.
        d.write8(b + FCR, 0x00)?;
        d.write8(b + THR, b'1')?;
        d.write8(b + THR, b'2')?;
        check_eq!(d.read8(b + LSR)? & LSR_OE, LSR_OE, "second byte overruns without FIFO (port {port})");
        check_eq!(d.read8(b + RBR)?, b'1', "the first byte is kept (port {port})");
        check_eq!(d.read8(b + LSR)? & LSR_DR, 0, "and nothing else (port {port})");
    }
    // The two ports are independent.
    let (b0, b1) = (d.region(0)?.offset, d.region(1)?.offset);
    d.write8(b0 + FCR, FCR_ENABLE_CLEAR)?;
    d.write8(b1 + FCR, FCR_ENABLE_CLEAR)?;
    d.write8(b0 + THR, b'A')?;
    check_eq!(d.read8(b1 + LSR)? & LSR_DR, 0, "port 1 does not see port 0's byte");
    d.write8(b1 + SCR, 0x11)?;
    d.write8(b0 + SCR, 0x22)?;
    check_eq!((d.read8(b0 + SCR)?, d.read8(b1 + SCR)?), (0x22, 0x11), "separate scratch registers");
    Ok(())
}

/// One interrupt cause, set up on a fresh device: `setup` makes it pending.
pub(crate) struct Cause {
    name: &'static str,
    setup: fn(&crate::vfio::Device, u64) -> Result<(), crate::vfio::Errno>,
}

pub(crate) const CAUSES: &[Cause] = &[
    Cause {
        name: "received data",
        setup: |d, b| {
            d.write8(b + reg::FCR, reg::FCR_ENABLE_CLEAR)?;
            d.write8(b + reg::IER, reg::IER_RDI)?;
            d.write8(b + reg::THR, b'x')
        },
    },
    Cause { name: "THR empty", setup: |d, b| d.write8(b + reg::IER, reg::IER_THRI) },
    Cause {
        name: "line status (overrun)",
        setup: |d, b| {
            d.write8(b + reg::FCR, reg::FCR_ENABLE_CLEAR)?;
            d.write8(b + reg::IER, reg::IER_RLSI)?;
            for i in 0..17u8 {
                d.write8(b + reg::THR, i)?;
            }
            Ok(())
        },
    },
    Cause {
        name: "modem status",
        setup: |d, b| {
            d.write8(b + reg::IER, reg::IER_MSI)?;
            d.write8(b + reg::MCR, reg::MCR_OUT2 | reg::MCR_RTS | reg::MCR_DTR)
        },
    },
];

fn interrupts_for(ctx: &Ctx, index: u32) -> CaseResult {
    for cause in CAUSES {
        let o = open_device(ctx, "mtty-1")?;
        cause_signals(&o.device, index, cause)?;
    }
    Ok(())
}

/// On a freshly opened device, an eventfd on IRQ `index` is signalled when
/// `cause` becomes pending (once for INTx, which automasks).
pub(crate) fn cause_signals(d: &crate::vfio::Device, index: u32, cause: &Cause) -> CaseResult {
    d.info()?;
    let ev = crate::vfio::EventFd::new()?;
    d.set_irq_eventfd(index, ev.raw())?;
    check_eq!(ev.take(), 0, "no interrupt before {}", cause.name);
    (cause.setup)(d, bar0(d)?)?;
    let n = ev.take();
    if index == VFIO_PCI_INTX_IRQ_INDEX {
        check_eq!(n, 1, "INTx signals for {} (once: it automasks)", cause.name);
    } else {
        check!(n >= 1, "MSI signals for {}: got {n}", cause.name);
    }
    d.set_irq_eventfd(index, -1)?;
    Ok(())
}

/// Each of the four UART causes raises INTx through its eventfd.
pub fn interrupts_intx(ctx: &Ctx) -> CaseResult {
    interrupts_for(ctx, VFIO_PCI_INTX_IRQ_INDEX)
}

/// Each of the four UART causes sends an MSI through its eventfd.
pub fn interrupts_msi(ctx: &Ctx) -> CaseResult {
    interrupts_for(ctx, VFIO_PCI_MSI_IRQ_INDEX)
}

/// INTx automasking, mask/unmask and a software trigger; MSI trigger.
pub fn interrupt_controls(ctx: &Ctx) -> CaseResult {
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    d.info()?;
    let intx = d.irq_info(VFIO_PCI_INTX_IRQ_INDEX)?;
    check_eq!(
        (intx.flags, intx.count),
        (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED, 1),
        "INTx info"
    );
    let msi = d.irq_info(VFIO_PCI_MSI_IRQ_INDEX)?;
    check_eq!((msi.flags, msi.count), (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 1), "MSI info");
    let ev = crate::vfio::EventFd::new()?;
    d.set_irq_eventfd(VFIO_PCI_INTX_IRQ_INDEX, ev.raw())?;
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)?;
    check_eq!(ev.take(), 1, "software trigger");
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)?;
    check_eq!(ev.take(), 0, "automasked after the first trigger");
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)?;
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)?;
    check_eq!(ev.take(), 1, "unmasked again");
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)?;
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK, 0, 1)?;
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)?;
    check_eq!(ev.take(), 0, "explicitly masked");
    // MSI while INTx is set up is refused; after disabling INTx it works.
    let msi_ev = crate::vfio::EventFd::new()?;
    check_eq!(d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, msi_ev.raw()), Err(crate::vfio::Errno(libc::EINVAL)), "MSI while INTx is in use");
    d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)?;
    d.set_irq_eventfd(VFIO_PCI_MSI_IRQ_INDEX, msi_ev.raw())?;
    d.set_irq_none(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)?;
    d.set_irq_none(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)?;
    check_eq!(msi_ev.take(), 2, "MSI does not automask");
    Ok(())
}

/// Bad ioctl arguments get the sample's errnos.
pub fn bad_input_errno(ctx: &Ctx) -> CaseResult {
    use crate::vfio::{ioctl_ptr, ioctl_raw, Errno};
    let o = open_device(ctx, "mtty-1")?;
    let d = &o.device;
    let einval = Err(Errno(libc::EINVAL));
    let mut info = vfio_device_info { argsz: 8, ..Default::default() };
    check_eq!(ioctl_ptr(d.raw(), VFIO_DEVICE_GET_INFO, &mut info).map(|_| ()), einval, "GET_INFO with short argsz");
    d.info()?;
    check_eq!(d.region(VFIO_PCI_NUM_REGIONS).map(|_| ()), einval, "region index 9");
    let mut r = vfio_region_info { argsz: 16, index: 0, ..Default::default() };
    check_eq!(ioctl_ptr(d.raw(), VFIO_DEVICE_GET_REGION_INFO, &mut r).map(|_| ()), einval, "REGION_INFO short argsz");
    check_eq!(d.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).map(|_| ()), einval, "IRQ_INFO for MSI-X");
    check_eq!(d.irq_info(5).map(|_| ()), einval, "IRQ_INFO index 5");
    check_eq!(
        d.set_irq_eventfd(VFIO_PCI_MSIX_IRQ_INDEX, -1),
        Err(Errno(libc::ENOTTY)),
        "SET_IRQS on MSI-X"
    );
    check_eq!(
        d.set_irq_none(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK, 0, 1),
        einval,
        "INTx mask without INTx"
    );
    check_eq!(
        d.set_irq_none(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK, 0, 1),
        Err(Errno(libc::ENOTTY)),
        "MSI mask"
    );
    check_eq!(d.set_irq_eventfd(VFIO_PCI_INTX_IRQ_INDEX, 0), einval, "INTx with a non-eventfd fd");
    check_eq!(ioctl_raw(d.raw(), VFIO_DEVICE_GET_INFO + 40, 0).map(|_| ()), Err(Errno(libc::ENOTTY)), "unknown ioctl");
    let mut b = [0u8; 1];
    check_eq!(
        d.pread(&mut b, (VFIO_PCI_VGA_REGION_INDEX as u64) << 40).map(|_| ()),
        Err(Errno(libc::EFAULT)),
        "read of the VGA region"
    );
    check_eq!(
        d.pread(&mut b, 20u64 << 40).map(|_| ()),
        Err(Errno(libc::EFAULT)),
        "read past the last region"
    );
    Ok(())
}

/// VFIO_DEVICE_RESET succeeds on an open device (what it resets differs:
/// see `mtty_ext.reset_clears_state`).
pub fn reset(ctx: &Ctx) -> CaseResult {
    let o = open_device(ctx, "mtty-1")?;
    o.device.reset()?;
    o.device.reset()?;
    let b = bar0(&o.device)?;
    o.device.write8(b + reg::SCR, 0x42)?;
    check_eq!(o.device.read8(b + reg::SCR)?, 0x42, "device works after reset");
    Ok(())
}

/// Removing an instance whose device is open waits for the close, then
/// the ports come back.
pub fn remove_while_open(ctx: &Ctx) -> CaseResult {
    let avail = || -> Result<u32, String> {
        std::fs::read_to_string(ctx.mtty_parent().join("mdev_supported_types/mtty-1/available_instances"))
            .map_err(|e| e.to_string())
            .and_then(|s| s.trim().parse().map_err(|e| format!("{e}")))
    };
    let start = avail()?;
    let o = open_device(ctx, "mtty-2")?;
    check_eq!(avail()?, start - 2, "two ports taken");
    let path = o._mdev.path.join("remove");
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = std::fs::write(&path, "1").map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    check!(rx.try_recv().is_err(), "remove returned while the device was open");
    let b = bar0(&o.device)?;
    o.device.write8(b + reg::SCR, 0x24)?;
    check_eq!(o.device.read8(b + reg::SCR)?, 0x24, "device still works while removal waits");
    let Open { device, _container, _group, _mdev } = o;
    drop(device);
    let r = rx.recv_timeout(std::time::Duration::from_secs(20)).map_err(|e| format!("remove did not finish: {e}"))?;
    let _ = t.join();
    r?;
    check!(!_mdev.path.exists(), "instance gone after remove");
    drop(_group);
    check_eq!(avail()?, start, "ports back after removal");
    Ok(())
}

/// Migration v2 round trip between two instances: the UART's FIFO bytes
/// and registers arrive intact.
pub fn migration_round_trip(ctx: &Ctx) -> CaseResult {
    let src = open_device(ctx, "mtty-2")?;
    let dst = open_device(ctx, "mtty-2")?;
    round_trip_between(&src.device, &dst.device)
}

/// The body of `migration_round_trip` on two open `mtty-2` devices, however
/// they were opened (group or cdev).
pub(crate) fn round_trip_between(s: &crate::vfio::Device, t: &crate::vfio::Device) -> CaseResult {
    use reg::*;
    let flags = s.migration_flags()?;
    check_eq!(
        flags,
        u64::from(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY),
        "migration flags"
    );
    check_eq!(s.mig_state()?, VFIO_DEVICE_STATE_RUNNING, "initial state");
    let (b0, b1) = (s.region(0)?.offset, s.region(1)?.offset);
    s.write8(b0 + FCR, FCR_ENABLE_CLEAR)?;
    s.write8(b1 + FCR, FCR_ENABLE_CLEAR)?;
    for &x in b"abc" {
        s.write8(b0 + THR, x)?;
    }
    s.write8(b1 + THR, b'z')?;
    s.write8(b0 + SCR, 0x5a)?;
    s.write8(b1 + SCR, 0xa5)?;
    s.write8(b0 + LCR, 0x1b)?;
    s.write8(b0 + IER, IER_RDI | IER_RLSI)?;
    let image = migrate(s, t)?;
    check!(!image.is_empty(), "empty migration stream");
    check_eq!(s.mig_state()?, VFIO_DEVICE_STATE_STOP, "source stopped after the save");
    check_eq!(t.mig_state()?, VFIO_DEVICE_STATE_RUNNING, "destination running");
    let (c0, c1) = (t.region(0)?.offset, t.region(1)?.offset);
    check_eq!((t.read8(c0 + SCR)?, t.read8(c1 + SCR)?), (0x5a, 0xa5), "scratch registers");
    check_eq!(t.read8(c0 + LCR)?, 0x1b, "LCR");
    check_eq!(t.read8(c0 + IER)?, IER_RDI | IER_RLSI, "IER");
    let back: Vec<u8> = (0..3).map(|_| t.read8(c0 + RBR)).collect::<Result<_, _>>()?;
    check_eq!(&back[..], b"abc", "port 0 FIFO");
    check_eq!(t.read8(c1 + RBR)?, b'z', "port 1 FIFO");
    check_eq!(t.read8(c0 + LSR)? & LSR_DR, 0, "port 0 drained");
    // A stream for a one-port device is refused by a two-port one.
    s.set_mig_state(VFIO_DEVICE_STATE_RUNNING)?;
    Ok(())
}

/// A stream for a different device type is refused while resuming.
/// Moves the state of running device `s` to device `t` with a stop-copy
/// migration and starts `t`; `s` is left stopped. Returns the image.
pub(crate) fn migrate(s: &crate::vfio::Device, t: &crate::vfio::Device) -> Result<Vec<u8>, super::Fail> {
    s.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    let fd = s.set_mig_state(VFIO_DEVICE_STATE_STOP_COPY)?.ok_or_else(|| fail("STOP_COPY gave no data fd"))?;
    let image = crate::vfio::read_all_fd(&fd)?;
    s.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    drop(fd);
    t.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    let fd = t.set_mig_state(VFIO_DEVICE_STATE_RESUMING)?.ok_or_else(|| fail("RESUMING gave no data fd"))?;
    crate::vfio::write_all_fd(&fd, &image)?;
    t.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    drop(fd);
    t.set_mig_state(VFIO_DEVICE_STATE_RUNNING)?;
    Ok(image)
}

pub fn migration_wrong_type(ctx: &Ctx) -> CaseResult {
    let one = open_device(ctx, "mtty-1")?;
    let two = open_device(ctx, "mtty-2")?;
    one.device.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    let fd = one.device.set_mig_state(VFIO_DEVICE_STATE_STOP_COPY)?.ok_or_else(|| fail("no data fd"))?;
    let image = crate::vfio::read_all_fd(&fd)?;
    drop(fd);
    two.device.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    let fd = two.device.set_mig_state(VFIO_DEVICE_STATE_RESUMING)?.ok_or_else(|| fail("no data fd"))?;
    let r = crate::vfio::write_all_fd(&fd, &image);
    check!(r.is_err(), "a one-port stream was accepted by a two-port device");
    Ok(())
}

/// Migration through PRE_COPY: the data fd returned on entering PRE_COPY
/// carries the whole state once STOP_COPY is reached, and resumes into
/// another instance.
pub fn migration_precopy(ctx: &Ctx) -> CaseResult {
    use reg::*;
    let src = open_device(ctx, "mtty-1")?;
    let dst = open_device(ctx, "mtty-1")?;
    let (s, t) = (&src.device, &dst.device);
    let b = bar0(s)?;
    s.write8(b + FCR, FCR_ENABLE_CLEAR)?;
    s.write8(b + THR, b'p')?;
    s.write8(b + SCR, 0x3c)?;
    let fd = s.set_mig_state(VFIO_DEVICE_STATE_PRE_COPY)?.ok_or_else(|| fail("PRE_COPY gave no data fd"))?;
    check_eq!(s.mig_state()?, VFIO_DEVICE_STATE_PRE_COPY, "in PRE_COPY");
    let mut info = vfio_precopy_info { argsz: argsz::<vfio_precopy_info>(), ..Default::default() };
    use std::os::fd::AsRawFd;
    crate::vfio::ioctl_ptr(fd.as_raw_fd(), VFIO_MIG_GET_PRECOPY_INFO, &mut info)?;
    check_eq!(info.dirty_bytes, 0, "no dirty bytes");
    let mut short = vfio_precopy_info { argsz: 8, ..Default::default() };
    check_eq!(
        crate::vfio::ioctl_ptr(fd.as_raw_fd(), VFIO_MIG_GET_PRECOPY_INFO, &mut short).map(|_| ()),
        Err(crate::vfio::Errno(libc::EINVAL)),
        "PRECOPY_INFO with short argsz"
    );
    check!(s.set_mig_state(VFIO_DEVICE_STATE_STOP_COPY)?.is_none(), "STOP_COPY after PRE_COPY gives no second fd");
    let image = crate::vfio::read_all_fd(&fd)?;
    s.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    let mut byte = [0u8; 1];
    // SAFETY: reads at most one byte into `byte`.
    let r = unsafe { libc::read(fd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    check!(r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENODEV), "data fd disabled after STOP");
    t.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
    let rfd = t.set_mig_state(VFIO_DEVICE_STATE_RESUMING)?.ok_or_else(|| fail("no resume fd"))?;
    crate::vfio::write_all_fd(&rfd, &image)?;
    t.set_mig_state(VFIO_DEVICE_STATE_RUNNING)?;
    let c = bar0(t)?;
    check_eq!((t.read8(c + RBR)?, t.read8(c + SCR)?), (b'p', 0x3c), "FIFO byte and SCR after PRE_COPY migration");
    s.set_mig_state(VFIO_DEVICE_STATE_RUNNING)?;
    Ok(())
}

/// Two threads read one migration data file at once, one byte per
/// `read(2)`: the stream position is shared, so between them they read
/// every byte of the image exactly once (the same bytes as a second,
/// single-threaded save of the stopped device), none twice and none lost.
pub fn migration_two_readers(ctx: &Ctx) -> CaseResult {
    use reg::*;
    use std::os::fd::AsRawFd;
    let o = open_device(ctx, "mtty-2")?;
    let d = &o.device;
    let b0 = d.region(0)?.offset;
    d.write8(b0 + SCR, 0x3c)?;
    d.write8(b0 + LCR, 0x1b)?;
    let save = || -> Result<std::os::fd::OwnedFd, super::Fail> {
        d.set_mig_state(VFIO_DEVICE_STATE_STOP)?;
        d.set_mig_state(VFIO_DEVICE_STATE_STOP_COPY)?.ok_or_else(|| fail("STOP_COPY gave no data file"))
    };
    let reference = crate::vfio::read_all_fd(&save()?)?;
    check!(reference.len() > 64, "a migration image of {} bytes", reference.len());
    for round in 0..4 {
        let f = save()?;
        let fd = f.as_raw_fd();
        let reader = move || -> Result<Vec<u8>, i32> {
            let mut got = Vec::new();
            loop {
                let mut b = [0u8; 1];
                // SAFETY: reads at most one byte into `b`; `f` outlives both threads.
                let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
                match r {
                    0 => return Ok(got),
                    1 => got.push(b[0]),
                    _ => return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
                }
            }
        };
        let (t1, t2) = (std::thread::spawn(reader), std::thread::spawn(reader));
        let (a, b) = (t1.join(), t2.join());
        let (Ok(Ok(a)), Ok(Ok(b))) = (a, b) else {
            return Err(fail(format!("round {round}: a reader failed")));
        };
        check_eq!(a.len() + b.len(), reference.len(), "bytes read by two threads together (round {round}: {} + {})", a.len(), b.len());
        let mut all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut want = reference.clone();
        all.sort_unstable();
        want.sort_unstable();
        check!(all == want, "round {round}: the two threads' bytes are not the image's bytes");
        drop(f);
    }
    d.set_mig_state(VFIO_DEVICE_STATE_RUNNING)?;
    Ok(())
}
