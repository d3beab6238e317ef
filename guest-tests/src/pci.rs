//! The emulated PCI devices behind the VM's VT-d, driven through `vfio-pci`.
//!
//! The VM (xtask/src/vm.rs) has two QEMU `edu` devices, an `e1000e` and
//! an `ivshmem-plain` (1 GiB BAR2 of device memory), each in an IOMMU
//! group of its own. [`bind_test_devices`] hands them to
//! `vfio-pci` (through `driver_override`) after the backend's modules are
//! loaded. [`Edu`] drives an `edu` device's DMA engine from userspace
//! (QEMU's docs/specs/edu.rst): it copies between the device's 4 KiB
//! buffer, at device address 0x40000, and a bus address, which the IOMMU
//! translates through the container's mappings.

use crate::uapi::*;
use crate::vfio::{Container, Device, Group};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// QEMU's `edu`: vendor 0x1234, device 0x11e8.
pub const EDU_ID: (u16, u16) = (0x1234, 0x11e8);
/// Intel 82574L, QEMU's `e1000e`.
pub const E1000E_ID: (u16, u16) = (0x8086, 0x10d3);
/// QEMU's `ivshmem-plain` (Red Hat, Inc. Inter-VM shared memory).
pub const IVSHMEM_ID: (u16, u16) = (0x1af4, 0x1110);

/// A PCI function in sysfs.
#[derive(Clone, Debug)]
pub struct PciDev {
    /// `0000:00:03.0`.
    pub bdf: String,
    /// Its IOMMU group number (`/dev/vfio/<group>`).
    pub group: u32,
}

impl PciDev {
    /// `/sys/bus/pci/devices/<bdf>`.
    pub fn sysfs(&self) -> PathBuf {
        sysfs(&self.bdf)
    }
}

fn sysfs(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

/// A sysfs hex ID file (`vendor`, `device`), e.g. "0x1b36".
pub(crate) fn read_hex(p: &Path) -> Option<u16> {
    let s = std::fs::read_to_string(p).ok()?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The PCI functions with `id`, in bus order.
pub fn find(id: (u16, u16)) -> Vec<PciDev> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else { return out };
    let mut bdfs: Vec<String> = dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    bdfs.sort();
    for bdf in bdfs {
        let p = sysfs(&bdf);
        if read_hex(&p.join("vendor")) != Some(id.0) || read_hex(&p.join("device")) != Some(id.1) {
            continue;
        }
        // Without an IOMMU there is no group: such devices are not ours to test.
        let Some(group) = link_name(&p.join("iommu_group")).and_then(|g| g.parse().ok()) else { continue };
        out.push(PciDev { bdf, group });
    }
    out
}

/// The driver bound to `bdf`, if any.
pub fn driver(bdf: &str) -> Option<String> {
    link_name(&sysfs(bdf).join("driver"))
}

/// Binds every `edu`, `e1000e` and `ivshmem` to `vfio-pci`. Without VT-d
/// (no group) there is nothing to bind and the real-IOMMU cases skip.
pub fn bind_test_devices() -> Result<(), String> {
    for dev in find(EDU_ID).into_iter().chain(find(E1000E_ID)).chain(find(IVSHMEM_ID)) {
        if driver(&dev.bdf).as_deref() == Some("vfio-pci") {
            continue;
        }
        let p = sysfs(&dev.bdf);
        std::fs::write(p.join("driver_override"), "vfio-pci")
            .map_err(|e| format!("{}: driver_override: {e}", dev.bdf))?;
        if driver(&dev.bdf).is_some() {
            std::fs::write(p.join("driver/unbind"), &dev.bdf).map_err(|e| format!("{}: unbind: {e}", dev.bdf))?;
        }
        std::fs::write("/sys/bus/pci/drivers_probe", &dev.bdf).map_err(|e| format!("{}: drivers_probe: {e}", dev.bdf))?;
        if driver(&dev.bdf).as_deref() != Some("vfio-pci") {
            return Err(format!("{} did not bind to vfio-pci (driver {:?})", dev.bdf, driver(&dev.bdf)));
        }
    }
    Ok(())
}

/// A group opened and put in a container.
pub fn open_group(dev: &PciDev, c: &Container) -> Result<Group, String> {
    let g = Group::open(dev.group).map_err(|e| format!("open /dev/vfio/{}: {e}", dev.group))?;
    g.set_container(c).map_err(|e| format!("GROUP_SET_CONTAINER for {}: {e}", dev.bdf))?;
    Ok(g)
}

/// A new container with `dev`'s group in it and the type1v2 IOMMU set: the
/// start of every real-IOMMU case and workload. The group is returned so
/// that it stays in the container while the caller uses it.
pub fn type1v2_container(dev: &PciDev) -> Result<(Container, Group), String> {
    let c = Container::open().map_err(|e| format!("open /dev/vfio/vfio: {e}"))?;
    let g = open_group(dev, &c)?;
    c.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(|e| format!("SET_IOMMU(TYPE1v2): {e}"))?;
    Ok((c, g))
}

// The edu registers (BAR0) and its DMA engine.
const EDU_REG_ID: u64 = 0x00;
const EDU_REG_DMA_SRC: u64 = 0x80;
const EDU_REG_DMA_DST: u64 = 0x88;
const EDU_REG_DMA_COUNT: u64 = 0x90;
const EDU_REG_DMA_CMD: u64 = 0x98;
const EDU_DMA_START: u32 = 0x1;
const EDU_DMA_TO_RAM: u32 = 0x2;
/// Device address of the edu's own buffer.
pub const EDU_BUF: u64 = 0x40000;
/// Its size.
pub const EDU_BUF_SIZE: u64 = 4096;
/// The edu masks DMA addresses to 28 bits by default: IOVAs must be below this.
pub const EDU_DMA_LIMIT: u64 = 1 << 28;

/// An `edu` device opened through VFIO.
pub struct Edu {
    pub dev: Device,
    bar0: u64,
}

impl Edu {
    /// Opens `bdf` in `group` (already in a container with an IOMMU set),
    /// checks its identity register and enables bus mastering.
    pub fn open(group: &Group, bdf: &str) -> Result<Edu, String> {
        let dev = group.device(bdf).map_err(|e| format!("GET_DEVICE_FD {bdf}: {e}"))?;
        Edu::from_device(dev, bdf)
    }

    /// The same for a device already opened and given an IOMMU some other
    /// way (its cdev attached to an iommufd IOAS or page table).
    pub fn from_device(dev: Device, bdf: &str) -> Result<Edu, String> {
        let bar0 = dev.region(VFIO_PCI_BAR0_REGION_INDEX).map_err(|e| format!("BAR0 info: {e}"))?.offset;
        let cfg = dev.region(VFIO_PCI_CONFIG_REGION_INDEX).map_err(|e| format!("config info: {e}"))?.offset;
        let edu = Edu { dev, bar0 };
        let id = edu.read(EDU_REG_ID)?;
        if id & 0xff != 0xed {
            return Err(format!("{bdf}: edu identification register reads {id:#x}"));
        }
        // PCI_COMMAND: memory space and bus master, so the device may DMA.
        let mut cmd = [0u8; 2];
        edu.dev.pread(&mut cmd, cfg + 4).map_err(|e| format!("read PCI_COMMAND: {e}"))?;
        let cmd = u16::from_le_bytes(cmd) | 0x6;
        edu.dev.write16(cfg + 4, cmd).map_err(|e| format!("write PCI_COMMAND: {e}"))?;
        Ok(edu)
    }

    fn read(&self, reg: u64) -> Result<u32, String> {
        self.dev.read32(self.bar0 + reg).map_err(|e| format!("edu read {reg:#x}: {e}"))
    }

    fn write(&self, reg: u64, v: u32) -> Result<(), String> {
        self.dev.write32(self.bar0 + reg, v).map_err(|e| format!("edu write {reg:#x}: {e}"))
    }

    /// Runs one transfer and waits for the engine to finish. The edu ignores
    /// the upper half of 32-bit writes to its 64-bit address registers, so
    /// addresses must fit in 32 bits (they are below [`EDU_DMA_LIMIT`]).
    fn transfer(&self, src: u64, dst: u64, len: u64, to_ram: bool) -> Result<(), String> {
        let (Ok(src), Ok(dst), Ok(len)) = (u32::try_from(src), u32::try_from(dst), u32::try_from(len)) else {
            return Err("edu DMA arguments must fit in 32 bits".into());
        };
        self.write(EDU_REG_DMA_SRC, src)?;
        self.write(EDU_REG_DMA_DST, dst)?;
        self.write(EDU_REG_DMA_COUNT, len)?;
        self.write(EDU_REG_DMA_CMD, EDU_DMA_START | if to_ram { EDU_DMA_TO_RAM } else { 0 })?;
        // The engine runs from a QEMU timer 100 ms (virtual) later.
        let start = Instant::now();
        while self.read(EDU_REG_DMA_CMD)? & EDU_DMA_START != 0 {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("edu DMA did not finish in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Device reads `len` bytes at bus address `iova` into its buffer at `off`.
    pub fn dma_from_ram(&self, iova: u64, off: u64, len: u64) -> Result<(), String> {
        check_buf(off, len)?;
        self.transfer(iova, EDU_BUF + off, len, false)
    }

    /// Device writes `len` bytes of its buffer at `off` to bus address `iova`.
    pub fn dma_to_ram(&self, off: u64, iova: u64, len: u64) -> Result<(), String> {
        check_buf(off, len)?;
        self.transfer(EDU_BUF + off, iova, len, true)
    }
}

/// QEMU 7.2 aborts the whole VM (`hw_error`) on a transfer outside the
/// edu's buffer, and its bounds check is off by one: a transfer that ends
/// at the buffer's last byte counts as outside (measured: 4096 bytes at
/// 0x40000 aborts). Only transfers that end before it are sent.
fn check_buf(off: u64, len: u64) -> Result<(), String> {
    if len == 0 || off.checked_add(len).is_none_or(|end| end >= EDU_BUF_SIZE) {
        return Err(format!("edu buffer range {off:#x}+{len:#x} must end before the last byte of its 4 KiB"));
    }
    Ok(())
}

/// How many kernel log lines report an IOMMU fault at page `iova` (Intel
/// VT-d: `DMAR: [DMA Write NO_PASID] Request device [..] fault addr 0x...`).
pub fn dmar_faults_at(iova: u64) -> usize {
    let needle = format!("fault addr {:#x} ", iova & !0xfff);
    std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(&needle)).count())
        .unwrap_or(0)
}

/// How many DMAR fault interrupts the guest has taken (`/proc/interrupts`,
/// the `dmarN` lines): counted even when the kernel's rate limit (10
/// reports per 5 s) or QEMU's fault compression leaves no log line.
pub fn dmar_fault_irqs() -> u64 {
    let table = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let cpus = table.lines().next().map_or(0, |h| h.split_whitespace().count());
    table
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w.starts_with("dmar")))
        .flat_map(|l| l.split_whitespace().skip(1).take(cpus).filter_map(|n| n.parse::<u64>().ok()))
        .sum()
}

/// Watches for an IOMMU fault caused by a DMA about to be started.
pub struct FaultWatch {
    iova: u64,
    records: usize,
    irqs: u64,
}

impl FaultWatch {
    /// Takes the counts before the DMA to `iova`.
    pub fn start(iova: u64) -> Self {
        Self { iova, records: dmar_faults_at(iova), irqs: dmar_fault_irqs() }
    }

    /// Waits up to `wait` for a fault report at the page of `iova` or, when
    /// the log has none (rate limit, or QEMU's VT-d dropping the record of
    /// a fault soon after another's: "New fault is not recorded due to
    /// compression of faults"), a new fault interrupt; true if one came.
    pub fn wait(&self, wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            if dmar_faults_at(self.iova) > self.records || dmar_fault_irqs() > self.irqs {
                return true;
            }
            if start.elapsed() > wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// QEMU's `ivshmem-plain` opened through VFIO: BAR2 is device memory (a
/// host memory backend QEMU maps as the BAR), which `mmap` of the device
/// file maps as `VM_PFNMAP` and type1 maps without pinning.
pub struct Ivshmem {
    pub dev: Device,
    /// BAR2's offset in the device file and its size.
    pub bar2: u64,
    pub bar2_size: u64,
    cfg: u64,
}

impl Ivshmem {
    /// Opens `bdf` in `group` (already in a container with an IOMMU set) and
    /// turns memory decoding on, so that the BAR can be mapped and reached.
    pub fn open(group: &Group, bdf: &str) -> Result<Ivshmem, String> {
        let dev = group.device(bdf).map_err(|e| format!("GET_DEVICE_FD {bdf}: {e}"))?;
        let bar2 = dev.region(VFIO_PCI_BAR2_REGION_INDEX).map_err(|e| format!("BAR2 info: {e}"))?;
        if bar2.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!("{bdf}: BAR2 cannot be mmap'd (flags {:#x})", bar2.flags));
        }
        let cfg = dev.region(VFIO_PCI_CONFIG_REGION_INDEX).map_err(|e| format!("config info: {e}"))?.offset;
        let shm = Ivshmem { dev, bar2: bar2.offset, bar2_size: bar2.size, cfg };
        shm.set_memory_decode(true)?;
        Ok(shm)
    }

    /// Sets PCI_COMMAND's memory-space bit. Clearing it makes `vfio-pci`
    /// zap every mmap of the BARs (they fault with SIGBUS until it is set).
    pub fn set_memory_decode(&self, on: bool) -> Result<(), String> {
        let mut cmd = [0u8; 2];
        self.dev.pread(&mut cmd, self.cfg + 4).map_err(|e| format!("read PCI_COMMAND: {e}"))?;
        let cmd = u16::from_le_bytes(cmd);
        let cmd = if on { cmd | 0x2 } else { cmd & !0x2 };
        self.dev.write16(self.cfg + 4, cmd).map_err(|e| format!("write PCI_COMMAND: {e}"))
    }
}
