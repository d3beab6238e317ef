//! The walk-through that `cargo xtask demo` runs inside the VM: each step
//! says in plain words what it does and what came back.

use crate::harness::Backend;
use crate::mtty_dma_regs::*;
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
    container.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(|e| format!("SET_IOMMU: {e}"))?;
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
        say("9. DMA through pinned pages: skipped. The C sample has no DMA engine; the Rust mtty has one (`cargo xtask demo --backend rust`, docs/mtty-dma.md).");
    } else {
        dma_steps(&dev, &container)?;
    }
    drop(dev);
    drop(container);
    drop(group);
    mdev.remove()?;
    say("Last: closed the device, the container and the group, and removed the instance.");
    Ok(())
}

/// Kilobytes of locked memory charged to this process (`VmLck`).
fn locked_kb() -> u64 {
    crate::vfio::vm_locked_kb()
}

/// One transfer through the Rust mtty's DMA engine (docs/mtty-dma.md):
/// bytes go from a TX buffer through the UART and come back in an RX
/// buffer, through pages the device pinned; then the memory is unmapped
/// while the engine runs, and the device drops its pins.
fn dma_steps(dev: &crate::vfio::Device, container: &Container) -> Result<(), String> {
    const PAGE: u64 = 4096;
    const IOVA: u64 = 0x10_0000;
    let e = |x: crate::vfio::Errno| x.to_string();
    let mem = crate::vfio::Buffer::new((8 * PAGE) as usize);
    let page = |i: u64| -> *mut u8 {
        // SAFETY: every page index used below is inside the 8-page buffer.
        unsafe { mem.addr.add((i * PAGE) as usize) }
    };
    let base_kb = locked_kb();
    container.map_rw(mem.vaddr(), IOVA, 8 * PAGE).map_err(e)?;
    say(&format!(
        "9. Mapped 8 pages of this process at IOVA {IOVA:#x} (MAP_DMA). Nothing is pinned yet: an mdev container has no IOMMU to program, so VmLck stays {base_kb} kB."
    ));
    let cfg = dev.region(VFIO_PCI_CONFIG_REGION_INDEX).map_err(e)?.offset;
    dev.write16(cfg + 4, 0x0007).map_err(e)?;
    let bar = dev.region(VFIO_PCI_BAR2_REGION_INDEX).map_err(e)?.offset;
    // Ring pages 0 (TX) and 1 (RX); buffers in pages 2 (TX) and 3 (RX).
    let msg = b"hello through pinned pages";
    let post = |ring: u64, addr: u64, len: u32| {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        // SAFETY: the first descriptor of a ring page.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), page(ring), 16) };
    };
    // SAFETY: inside the TX buffer page.
    unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), page(2), msg.len()) };
    post(0, IOVA + 2 * PAGE, msg.len() as u32);
    post(1, IOVA + 3 * PAGE, 64);
    for (off, v) in [
        (TX + RING_BASE, IOVA as u32),
        (TX + RING_BASE + 4, 0),
        (TX + RING_SIZE, 16),
        (RX + RING_BASE, (IOVA + PAGE) as u32),
        (RX + RING_BASE + 4, 0),
        (RX + RING_SIZE, 16),
        (CTRL, CTRL_ENABLE),
    ] {
        dev.write32(bar + off, v).map_err(e)?;
    }
    let ring_kb = locked_kb();
    say(&format!(
        "10. Programmed the engine's TX and RX rings (BAR2) and enabled it: the device pinned both ring pages with vfio_pin_pages, so VmLck went from {base_kb} to {ring_kb} kB."
    ));
    dev.write32(bar + RX + RING_TAIL, 1).map_err(e)?;
    dev.write32(bar + TX + RING_TAIL, 1).map_err(e)?;
    dev.write32(bar + DOORBELL, DOORBELL_TX | DOORBELL_RX).map_err(e)?;
    let mut got = vec![0u8; msg.len()];
    // SAFETY: inside the RX buffer page.
    unsafe { std::ptr::copy_nonoverlapping(page(3), got.as_mut_ptr(), msg.len()) };
    say(&format!(
        "11. Rang the doorbell: the device read {:?} from the TX buffer, sent it through the UART's loopback and wrote {:?} into the RX buffer.",
        String::from_utf8_lossy(msg),
        String::from_utf8_lossy(&got)
    ));
    if got != msg {
        return Err("the DMA transfer did not deliver the bytes".into());
    }
    let unmapped = container.unmap_range(IOVA, 8 * PAGE).map_err(e)?;
    let status = dev.read32(bar + STATUS).map_err(e)?;
    let code = dev.read32(bar + ERROR_CODE).map_err(e)?;
    let after_kb = locked_kb();
    say(&format!(
        "12. Unmapped the {unmapped} bytes while the engine ran: the type1 backend called the device's dma_unmap, the device stopped (STATUS {status:#x}, ERROR_CODE {code} = UNMAPPED) and unpinned its pages, and VmLck is back to {after_kb} kB."
    ));
    if after_kb != base_kb || code != ERR_UNMAPPED {
        return Err("the device did not release its pins on unmap".into());
    }
    dev.write32(bar + CTRL, CTRL_RESET).map_err(e)?; // clears the error
    Ok(())
}
