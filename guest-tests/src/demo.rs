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
pub fn run(backend: Backend) -> bool {
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
        "1. Loaded: type1 IOMMU backend `{}`, mdev vendor driver `{}`.",
        if backend.rust_type1 { "vfio_iommu_type1_rs (ours, Rust)" } else { "vfio_iommu_type1 (the kernel's C reference)" },
        if backend.rust_mtty { "mtty_rs (ours, Rust)" } else { "mtty (the kernel's C sample)" },
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
    // The FIFO holds 16 bytes: send the line in chunks and drain after each.
    let mut back = Vec::new();
    for chunk in line.chunks(8) {
        for &b in chunk {
            dev.write8(bar0.offset, b).map_err(|e| e.to_string())?;
        }
        while dev.read8(bar0.offset + 5).map_err(|e| e.to_string())? & 1 != 0 {
            back.push(dev.read8(bar0.offset).map_err(|e| e.to_string())?);
        }
    }
    say(&format!(
        "7. Wrote {:?} to the UART's transmit register (BAR0 offset 0), 8 bytes at a time.",
        String::from_utf8_lossy(line)
    ));
    say(&format!(
        "8. Read back {:?} from the receive register (offset 0) while the line status register (offset 5) said data was ready: the emulated port loops what it sends into its own receive FIFO.",
        String::from_utf8_lossy(&back)
    ));
    if back != line {
        return Err("the bytes read back do not match what was written".into());
    }
    if !backend.rust_mtty {
        say("9. DMA through pinned pages: skipped. The C sample has no DMA engine; kmod-mtty adds one (docs/mtty-dma.md).");
    } else {
        say("9. DMA through pinned pages: the Rust mtty's DMA engine is not wired into the demo yet.");
    }
    drop(dev);
    drop(container);
    drop(group);
    mdev.remove()?;
    say("10. Closed the device, the container and the group, and removed the instance.");
    Ok(())
}
