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

struct Open {
    device: crate::vfio::Device,
    _container: Container,
    _group: Group,
    _mdev: Mdev,
}

fn open_device(ctx: &Ctx, mdev_type: &str) -> Result<Open, super::Fail> {
    let s = ctx.container_with_mdev(mdev_type)?;
    let device = s.group.device(&s.mdev.uuid).map_err(|e| fail(format!("GET_DEVICE_FD: {e}")))?;
    Ok(Open { device, _container: s.container, _group: s.group, _mdev: s.mdev })
}

/// Device info and the region table of a 2-port instance.
pub fn device_info_and_regions(ctx: &Ctx) -> CaseResult {
    let o = open_device(ctx, "mtty-2")?;
    let info = o.device.info()?;
    // The sample reports a PCI device without VFIO_DEVICE_FLAGS_RESET, though
    // it implements VFIO_DEVICE_RESET.
    check_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI, "device flags");
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
