//! The walk-through that `cargo xtask demo` runs inside the VM: each step
//! says in plain words what it does and what came back.

use crate::harness::Backend;
use crate::uapi::*;
use crate::vfio::{Container, Group, Mdev};
use std::path::Path;

fn say(s: &str) {
    println!("demo: {s}");
}

/// Runs the demo on an already-loaded backend; returns whether every step worked.
pub fn run(backend: Backend, _modroot: &Path, _kmods: &Path) -> bool {
    match steps(backend) {
        Ok(()) => {
            say("all steps worked.");
            true
        }
        Err(e) => {
            say(&format!("FAILED: {e}"));
            false
        }
    }
}

fn steps(backend: Backend) -> Result<(), String> {
    let parent = Path::new("/sys/class/mdev_bus/mtty");
    say(&format!(
        "1. The {} backend is loaded: type1 IOMMU driver `{}`, mdev vendor driver `{}`.",
        backend.name(),
        if backend == Backend::C { "vfio_iommu_type1" } else { "vfio_iommu_type1_rs" },
        if backend == Backend::C { "mtty" } else { "mtty_rs" },
    ));
    let avail = std::fs::read_to_string(parent.join("mdev_supported_types/mtty-1/available_instances"))
        .map_err(|e| format!("mtty parent device missing: {e}"))?;
    say(&format!("2. The mtty parent device offers type mtty-1 (one 16550A port); {} instances available.", avail.trim()));
    let mdev = Mdev::create(parent, "mtty-1")?;
    say(&format!("3. Created an instance by writing a UUID to .../mtty-1/create: {}", mdev.uuid));
    let gid = mdev.group()?;
    say(&format!("4. The mdev core put it in IOMMU group {gid}, so userspace reaches it as /dev/vfio/{gid}."));
    let group = Group::open(gid).map_err(|e| format!("open /dev/vfio/{gid}: {e}"))?;
    let container = Container::open().map_err(|e| format!("open /dev/vfio/vfio: {e}"))?;
    group.set_container(&container).map_err(|e| format!("GROUP_SET_CONTAINER: {e}"))?;
    container.set_iommu(VFIO_TYPE1V2_IOMMU).map_err(|e| format!("SET_IOMMU: {e}"))?;
    say("5. Opened the container /dev/vfio/vfio, added the group, and chose the type1v2 IOMMU backend.");
    let dev = group.device(&mdev.uuid).map_err(|e| format!("GET_DEVICE_FD: {e}"))?;
    let info = dev.info().map_err(|e| format!("DEVICE_GET_INFO: {e}"))?;
    say(&format!("6. Got the device fd: a PCI device with {} regions and {} IRQ types.", info.num_regions, info.num_irqs));
    let bar0 = dev.region(VFIO_PCI_BAR0_REGION_INDEX).map_err(|e| e.to_string())?;
    let line = b"hello, serial port\n";
    for &b in line.iter() {
        dev.write8(bar0.offset, b).map_err(|e| e.to_string())?;
    }
    say(&format!(
        "7. Wrote {:?} to the UART's transmit register (BAR0 offset 0) one byte at a time.",
        String::from_utf8_lossy(line)
    ));
    let mut back = Vec::new();
    // The FIFO holds 16 bytes: the rest of the line was dropped, as on hardware.
    while dev.read8(bar0.offset + 5).map_err(|e| e.to_string())? & 1 != 0 {
        back.push(dev.read8(bar0.offset).map_err(|e| e.to_string())?);
    }
    say(&format!(
        "8. Read back {:?} from the receive register while LSR said data was ready (the emulated port loops TX to RX; its FIFO holds 16 bytes).",
        String::from_utf8_lossy(&back)
    ));
    if back.is_empty() || !line.starts_with(&back) {
        return Err("the bytes read back do not match what was written".into());
    }
    if backend == Backend::C {
        say("9. DMA through pinned pages: skipped. The C sample has no DMA engine; kmod-mtty adds one (docs/mtty-dma.md).");
    } else {
        say("9. DMA through pinned pages: the Rust mtty's DMA engine is not finished yet (see the open kmod-mtty issue).");
    }
    drop(dev);
    drop(container);
    drop(group);
    mdev.remove()?;
    say("10. Closed the device, the container and the group, and removed the instance.");
    Ok(())
}
