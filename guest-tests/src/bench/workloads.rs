//! The workloads of the bench: their list, what a workload process knows
//! ([`Env`]), the setup most of them share, and `bench-one`, which runs one
//! of them in its own process.

use super::engine::{dma_rw_64k, pin_workload, unmap_pinned, PinKind};
use super::map::{iommu_map, iommu_pfnmap, ioctl_floor, map_1g, map_split, scale};
use super::sizes::iommu_sizes;
use crate::harness::Backend;
use crate::suites::type1_iommu::Backing;
use crate::uapi::*;
use crate::vfio::{Container, Device, Errno, Group, Mdev};
use std::path::Path;
use std::time::Duration;

pub(super) const PAGE: u64 = 4096;
pub(super) const GIB: u64 = 1 << 30;
/// Where the benchmark's mappings start in IOVA space.
pub(super) const IOVA0: u64 = 1 << 32;
/// The N of the scaling workload (the last is the default dma_entry_limit).
pub const SCALE_NS: [u64; 5] = [1, 16, 256, 4096, 65535];

/// One workload: a name for `--filter` and the function that measures it.
pub struct Workload {
    pub name: &'static str,
    /// Needs the DMA engine of the Rust mtty.
    pub needs_engine: bool,
    pub run: fn(&Env) -> Result<(), String>,
}

/// Every workload, in run order.
pub const WORKLOADS: &[Workload] = &[
    Workload { name: "ioctl", needs_engine: false, run: ioctl_floor },
    Workload { name: "map.1g", needs_engine: false, run: map_1g },
    Workload { name: "map.2m", needs_engine: false, run: |e| map_split(e, "map.2m", 2 << 20) },
    Workload { name: "map.64k", needs_engine: false, run: |e| map_split(e, "map.64k", 64 << 10) },
    Workload { name: "map.4k", needs_engine: false, run: |e| map_split(e, "map.4k", 4 << 10) },
    Workload { name: "scale", needs_engine: false, run: scale },
    Workload { name: "pin.single", needs_engine: true, run: |e| pin_workload(e, PinKind::Single) },
    Workload { name: "pin.run2", needs_engine: true, run: |e| pin_workload(e, PinKind::Run2) },
    Workload { name: "pin.same", needs_engine: true, run: |e| pin_workload(e, PinKind::Same) },
    Workload { name: "dma_rw.16b", needs_engine: true, run: |e| pin_workload(e, PinKind::Held) },
    Workload { name: "dma_rw.64k", needs_engine: true, run: dma_rw_64k },
    Workload { name: "unmap_pinned.1dev", needs_engine: true, run: |e| unmap_pinned(e, 1) },
    Workload { name: "unmap_pinned.8dev", needs_engine: true, run: |e| unmap_pinned(e, 8) },
    Workload { name: "iommu.4k", needs_engine: false, run: |e| iommu_map(e, "iommu.4k", Backing::Small) },
    Workload { name: "iommu.thp", needs_engine: false, run: |e| iommu_map(e, "iommu.thp", Backing::Thp) },
    Workload { name: "iommu.hugetlb", needs_engine: false, run: |e| iommu_map(e, "iommu.hugetlb", Backing::Hugetlb) },
    Workload { name: "iommu.pfnmap", needs_engine: false, run: iommu_pfnmap },
    Workload { name: "iommu.size.4k", needs_engine: false, run: |e| iommu_sizes(e, "iommu.size.4k", Backing::Small) },
    Workload { name: "iommu.size.thp", needs_engine: false, run: |e| iommu_sizes(e, "iommu.size.thp", Backing::Thp) },
    Workload { name: "iommu.size.hugetlb", needs_engine: false, run: |e| iommu_sizes(e, "iommu.size.hugetlb", Backing::Hugetlb) },
];

/// What a workload process knows.
pub struct Env {
    pub backend: Backend,
    /// Multiplies iteration counts (not sizes): `--scale 0.25` for a quick look.
    pub scale: f64,
}

impl Env {
    pub(super) fn iters(&self, n: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(1)
    }
}

/// Set while a workload runs its untimed warm-up pass (see [`run_one`]).
static WARMING_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the untimed warm-up pass is running (workloads may keep it small).
pub(super) fn warming_up() -> bool {
    WARMING_UP.load(std::sync::atomic::Ordering::Relaxed)
}

pub(super) fn sample(metric: &str, unit: &str, value: f64) {
    if !WARMING_UP.load(std::sync::atomic::Ordering::Relaxed) {
        println!("SAMPLE {metric} {unit} {value:.3}");
    }
}

pub(super) fn e(what: &str) -> impl Fn(Errno) -> String + '_ {
    move |err| format!("{what}: {err}")
}

/// Address space for mappings that are never touched: with an mdev-only
/// container, MAP_DMA records the range and pins nothing, so the pages are
/// never populated (MAP_NORESERVE keeps 1 GiB cheap in a 4 GiB guest).
pub(super) struct Reserve {
    addr: *mut libc::c_void,
    len: usize,
}

impl Reserve {
    pub(super) fn new(len: u64) -> Result<Self, String> {
        // SAFETY: an anonymous private mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of {len} bytes: {}", std::io::Error::last_os_error()));
        }
        Ok(Reserve { addr: p, len: len as usize })
    }
    pub(super) fn vaddr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` created.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Instances, their groups and one container with the type1v2 IOMMU set.
/// Dropped in field order: devices, container, groups, instances.
pub(super) struct Setup {
    pub(super) devices: Vec<Device>,
    pub(super) container: Container,
    _groups: Vec<Group>,
    _mdevs: Vec<Mdev>,
}

pub(super) fn setup(instances: usize, open_devices: bool) -> Result<Setup, String> {
    let parent = Path::new("/sys/class/mdev_bus/mtty");
    let mut mdevs = Vec::new();
    let mut groups = Vec::new();
    for _ in 0..instances {
        let m = Mdev::create(parent, "mtty-1")?;
        groups.push(Group::open(m.group()?).map_err(e("open group"))?);
        mdevs.push(m);
    }
    let container = Container::open().map_err(e("open /dev/vfio/vfio"))?;
    for (i, g) in groups.iter().enumerate() {
        g.set_container(&container).map_err(e("GROUP_SET_CONTAINER"))?;
        if i == 0 {
            container.set_iommu(VFIO_TYPE1v2_IOMMU).map_err(e("SET_IOMMU(TYPE1v2)"))?;
        }
    }
    let mut devices = Vec::new();
    if open_devices {
        for (g, m) in groups.iter().zip(&mdevs) {
            devices.push(g.device(&m.uuid).map_err(e("GET_DEVICE_FD"))?);
        }
    }
    Ok(Setup { devices, container, _groups: groups, _mdevs: mdevs })
}

pub(super) fn ns_per(t: Duration, ops: u64) -> f64 {
    t.as_nanos() as f64 / ops.max(1) as f64
}


/// `vfio-guest bench-one NAME --backend B [--scale F]`: one workload.
pub fn run_one(name: &str, env: &Env) -> i32 {
    let Some(w) = WORKLOADS.iter().find(|w| w.name == name) else {
        eprintln!("no workload named {name}");
        return 2;
    };
    // An untimed pass at a tenth of the iterations first (its samples are
    // dropped), in the same process: the modules were loaded just before,
    // and under TCG the first run of their code pays for translating it,
    // which is no cost of the code itself. Rows with few iterations
    // (map.1g, the real-IOMMU rows) would otherwise mostly measure that.
    WARMING_UP.store(true, std::sync::atomic::Ordering::Relaxed);
    let warm = (w.run)(&Env { backend: env.backend, scale: env.scale / 10.0 });
    WARMING_UP.store(false, std::sync::atomic::Ordering::Relaxed);
    let result = match warm {
        Ok(()) => (w.run)(env),
        Err(msg) => Err(msg),
    };
    match result {
        Ok(()) => 0,
        Err(msg) if msg.starts_with("SKIP: ") => {
            println!("{msg}");
            crate::EXIT_SKIP
        }
        Err(msg) => {
            eprintln!("{name}: {msg}");
            1
        }
    }
}
