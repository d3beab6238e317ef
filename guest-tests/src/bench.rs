//! `vfio-guest bench`: the guest half of `cargo xtask bench` (docs/bench.md).
//!
//! For each round, for each backend of the pair (the order alternates from
//! round to round so drift in the VM spreads over both), the runner loads
//! the backend's modules, runs every selected workload as
//! `vfio-guest bench-one <workload> --backend <b>` in its own process (so a
//! crash or a leftover pin stays contained, as for the test cases), and
//! unloads. Each workload prints `SAMPLE <metric> <unit> <value>` lines; the
//! runner appends them, with the round and backend, as JSON lines to
//! `<results>/samples.jsonl`. The host computes the statistics.
//!
//! Times are wall-clock (`Instant`) around the ioctls only; setup (creating
//! instances, programming rings, touching memory) is outside the timed part.

use crate::harness::{self, Backend, RunConfig};
use crate::suites::type1_iommu::{backed, ensure_hugepages, Backing};
use crate::mtty_dma_regs::*;
use crate::uapi::*;
use crate::vfio::{Buffer, Container, Device, Errno, Group, Mdev};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
/// Where the benchmark's mappings start in IOVA space.
const IOVA0: u64 = 1 << 32;
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
];

/// What a workload process knows.
pub struct Env {
    pub backend: Backend,
    /// Multiplies iteration counts (not sizes): `--scale 0.25` for a quick look.
    pub scale: f64,
}

impl Env {
    fn iters(&self, n: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(1)
    }
}

/// Set while a workload runs its untimed warm-up pass (see [`run_one`]).
static WARMING_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn sample(metric: &str, unit: &str, value: f64) {
    if !WARMING_UP.load(std::sync::atomic::Ordering::Relaxed) {
        println!("SAMPLE {metric} {unit} {value:.3}");
    }
}

fn e(what: &str) -> impl Fn(Errno) -> String + '_ {
    move |err| format!("{what}: {err}")
}

/// Address space for mappings that are never touched: with an mdev-only
/// container, MAP_DMA records the range and pins nothing, so the pages are
/// never populated (MAP_NORESERVE keeps 1 GiB cheap in a 4 GiB guest).
struct Reserve {
    addr: *mut libc::c_void,
    len: usize,
}

impl Reserve {
    fn new(len: u64) -> Result<Self, String> {
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
    fn vaddr(&self) -> u64 {
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
struct Setup {
    devices: Vec<Device>,
    container: Container,
    _groups: Vec<Group>,
    _mdevs: Vec<Mdev>,
}

fn setup(instances: usize, open_devices: bool) -> Result<Setup, String> {
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
            container.set_iommu(VFIO_TYPE1V2_IOMMU).map_err(e("SET_IOMMU(TYPE1v2)"))?;
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

fn ns_per(t: Duration, ops: u64) -> f64 {
    t.as_nanos() as f64 / ops.max(1) as f64
}

/// MAP_DMA and UNMAP_DMA of 1 GiB as one mapping, repeated.
/// The floor under every other row: a container ioctl that does no work
/// (`VFIO_CHECK_EXTENSION(TYPE1v2)`: the core's dispatch into the backend
/// and back), and, as a control, `getpid`, a system call that enters no
/// VFIO code: if it differs between the sides, the loaded modules slow the
/// whole VM down and the other rows carry that too.
fn ioctl_floor(env: &Env) -> Result<(), String> {
    let s = setup(1, false)?;
    let n = env.iters(100_000);
    let t = Instant::now();
    for _ in 0..n {
        if s.container.check_extension(VFIO_TYPE1V2_IOMMU).map_err(e("CHECK_EXTENSION"))? != 1 {
            return Err("CHECK_EXTENSION(TYPE1v2) on a type1 container is not 1".into());
        }
    }
    sample("ioctl.check_extension", "ns/op", ns_per(t.elapsed(), n));
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid has no preconditions.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    sample("ioctl.getpid", "ns/op", ns_per(t.elapsed(), n));
    Ok(())
}

fn map_1g(env: &Env) -> Result<(), String> {
    let s = setup(1, false)?;
    let mem = Reserve::new(GIB)?;
    let n = env.iters(200);
    let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        s.container.map_rw(mem.vaddr(), IOVA0, GIB).map_err(e("MAP_DMA 1 GiB"))?;
        tm += t.elapsed();
        let t = Instant::now();
        let got = s.container.unmap_range(IOVA0, GIB).map_err(e("UNMAP_DMA 1 GiB"))?;
        tu += t.elapsed();
        if got != GIB {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {GIB:#x}"));
        }
    }
    sample("map.1g.map", "ns/op", ns_per(tm, n));
    sample("map.1g.unmap", "ns/op", ns_per(tu, n));
    Ok(())
}

/// The real-IOMMU path: MAP_DMA (pin the whole range, map it into the
/// VT-d domain in physically contiguous runs) and UNMAP_DMA (unmap with
/// batched IOTLB flushes, unpin) of 64 MiB in one mapping, with a QEMU
/// `edu`'s group in the container; memory backed by 4 KiB pages, THP or
/// hugetlbfs pages.
fn iommu_map(env: &Env, name: &str, kind: Backing) -> Result<(), String> {
    const SIZE: u64 = 64 << 20;
    // Below the edu's 28-bit DMA mask, 2 MiB aligned (as its test cases).
    const IOVA: u64 = 64 << 20;
    let dev = crate::pci::find(crate::pci::EDU_ID)
        .into_iter()
        .next()
        .ok_or("no edu device behind an IOMMU (the VM's VT-d)")?;
    let container = Container::open().map_err(e("open /dev/vfio/vfio"))?;
    let _group = crate::pci::open_group(&dev, &container)?;
    container.set_iommu(VFIO_TYPE1V2_IOMMU).map_err(e("SET_IOMMU(TYPE1v2)"))?;
    if let Backing::Hugetlb = kind {
        ensure_hugepages(SIZE / (2 << 20) + 4);
    }
    let mem = backed(kind, SIZE).map_err(|f| format!("{name} memory: {f:?}"))?;
    let n = env.iters(8);
    let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        container.map_rw(mem.vaddr(), IOVA, SIZE).map_err(e("MAP_DMA 64 MiB"))?;
        tm += t.elapsed();
        let t = Instant::now();
        let got = container.unmap_range(IOVA, SIZE).map_err(e("UNMAP_DMA 64 MiB"))?;
        tu += t.elapsed();
        if got != SIZE {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {SIZE:#x}"));
        }
    }
    sample(&format!("{name}.map"), "ns/op", ns_per(tm, n));
    sample(&format!("{name}.unmap"), "ns/op", ns_per(tu, n));
    Ok(())
}

/// Sets the loaded type1's `dma_entry_limit` (read when a container opens);
/// returns the previous value.
fn set_entry_limit(b: Backend, v: u64) -> Result<u64, String> {
    let p = PathBuf::from("/sys/module").join(b.type1_module()).join("parameters/dma_entry_limit");
    let old = std::fs::read_to_string(&p).map_err(|err| format!("{}: {err}", p.display()))?;
    std::fs::write(&p, v.to_string()).map_err(|err| format!("writing {}: {err}", p.display()))?;
    old.trim().parse().map_err(|_| format!("{}: not a number: {old}", p.display()))
}

/// 1 GiB in mappings of `chunk` bytes: map them all, then unmap each.
/// More mappings than the default dma_entry_limit (65535) need a higher
/// limit: the workload raises it for its container and restores it.
fn map_split(env: &Env, name: &str, chunk: u64) -> Result<(), String> {
    let count = GIB / chunk;
    let old = if count > 65535 { Some(set_entry_limit(env.backend, count + 16)?) } else { None };
    let r = (|| {
        let s = setup(1, false)?;
        let mem = Reserve::new(GIB)?;
        let reps = env.iters(((1u64 << 15) / count).clamp(1, 64));
        let (mut tm, mut tu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..reps {
            let t = Instant::now();
            for i in 0..count {
                s.container
                    .map_rw(mem.vaddr() + i * chunk, IOVA0 + i * chunk, chunk)
                    .map_err(|err| format!("MAP_DMA #{i} of {count}: {err}"))?;
            }
            tm += t.elapsed();
            let t = Instant::now();
            for i in 0..count {
                s.container.unmap_range(IOVA0 + i * chunk, chunk).map_err(|err| format!("UNMAP_DMA #{i}: {err}"))?;
            }
            tu += t.elapsed();
        }
        sample(&format!("{name}.map"), "ns/op", ns_per(tm, reps * count));
        sample(&format!("{name}.unmap"), "ns/op", ns_per(tu, reps * count));
        Ok(())
    })();
    if let Some(old) = old {
        set_entry_limit(env.backend, old)?;
    }
    r
}

/// Per-operation cost of map, lookup and unmap with N mappings in the
/// container. The lookup is a MAP_DMA of an already mapped IOVA, which the
/// backend refuses with EEXIST after one search of its mapping tree.
fn scale(env: &Env) -> Result<(), String> {
    let s = setup(1, false)?;
    let mem = Reserve::new(PAGE * 65536)?;
    for &n in &SCALE_NS {
        // Small N repeat, so every point times at least ~16k operations.
        let reps = env.iters((16384 / n).max(1));
        let (mut tm, mut tl, mut tu) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..reps {
            let t = Instant::now();
            for i in 0..n {
                s.container
                    .map_rw(mem.vaddr() + i * PAGE, IOVA0 + i * PAGE, PAGE)
                    .map_err(|err| format!("MAP_DMA #{i} of {n}: {err}"))?;
            }
            tm += t.elapsed();
            let t = Instant::now();
            for i in 0..n {
                // Spread the probes over the tree rather than walking it in order.
                let j = (i * 40503) % n;
                match s.container.map_rw(mem.vaddr() + j * PAGE, IOVA0 + j * PAGE, PAGE) {
                    Err(Errno(libc::EEXIST)) => {}
                    other => return Err(format!("lookup of mapping {j}: wanted EEXIST, got {other:?}")),
                }
            }
            tl += t.elapsed();
            let t = Instant::now();
            for i in 0..n {
                s.container.unmap_range(IOVA0 + i * PAGE, PAGE).map_err(|err| format!("UNMAP_DMA #{i}: {err}"))?;
            }
            tu += t.elapsed();
        }
        let ops = reps * n;
        sample(&format!("scale.map@{n}"), "ns/op", ns_per(tm, ops));
        sample(&format!("scale.lookup@{n}"), "ns/op", ns_per(tl, ops));
        sample(&format!("scale.unmap@{n}"), "ns/op", ns_per(tu, ops));
    }
    Ok(())
}

// ---- the DMA engine of the Rust mtty (docs/mtty-dma.md) ----


/// One device's engine and the user memory its rings and buffers live in.
struct Engine<'a> {
    d: &'a Device,
    bar: u64,
    mem: &'a Buffer,
    /// IOVA of `mem`.
    iova: u64,
}

impl<'a> Engine<'a> {
    fn new(d: &'a Device, mem: &'a Buffer, iova: u64) -> Result<Self, String> {
        let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX).map_err(e("config region"))?.offset;
        d.write16(cfg + 0x04, 0x0007).map_err(e("PCI command"))?;
        let bar = d.region(VFIO_PCI_BAR2_REGION_INDEX).map_err(e("BAR2 region"))?.offset;
        let id = d.read32(bar + ID).map_err(e("engine ID"))?;
        if id != ID_VALUE {
            return Err(format!("BAR2 ID {id:#x}: not the mtty DMA engine (is mtty_rs loaded?)"));
        }
        Ok(Engine { d, bar, mem, iova })
    }

    fn w(&self, reg: u64, v: u32) -> Result<(), String> {
        self.d.write32(self.bar + reg, v).map_err(|err| format!("BAR2 write {reg:#x}: {err}"))
    }

    fn r(&self, reg: u64) -> Result<u32, String> {
        self.d.read32(self.bar + reg).map_err(|err| format!("BAR2 read {reg:#x}: {err}"))
    }

    /// Writes a descriptor at byte offset `at` of the memory.
    fn post(&self, at: u64, addr: u64, len: u32) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        assert!(at + 16 <= self.mem.len as u64);
        // SAFETY: 16 bytes inside `mem` (checked above).
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), self.mem.addr.add(at as usize), 16) };
    }

    /// LEN written back into the descriptor at byte offset `at`.
    fn done_len(&self, at: u64) -> u32 {
        let mut raw = [0u8; 4];
        // SAFETY: 4 bytes inside `mem` (descriptors are posted by `post`).
        unsafe { std::ptr::copy_nonoverlapping(self.mem.addr.add(at as usize + 8), raw.as_mut_ptr(), 4) };
        u32::from_le_bytes(raw)
    }

    /// Reset, then program both rings (offsets into `mem`, `size` entries) and enable.
    fn start(&self, tx_ring: u64, rx_ring: u64, size: u32) -> Result<(), String> {
        self.w(CTRL, CTRL_RESET)?;
        for (ring, off) in [(TX, tx_ring), (RX, rx_ring)] {
            let iova = self.iova + off;
            self.w(ring + RING_BASE, iova as u32)?;
            self.w(ring + RING_BASE + 4, (iova >> 32) as u32)?;
            self.w(ring + RING_SIZE, size)?;
        }
        self.w(CTRL, CTRL_ENABLE)?;
        self.check()?;
        if self.r(STATUS)? & STATUS_RUNNING == 0 {
            return Err("engine not RUNNING after enable".into());
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        let st = self.r(STATUS)?;
        if st & STATUS_ERROR != 0 {
            return Err(format!(
                "engine halted: ERROR_CODE {} at IOVA {:#x} (docs/mtty-dma.md)",
                self.r(ERROR_CODE)?,
                self.r(ERROR_IOVA)? as u64 | (self.r(ERROR_IOVA + 4)? as u64) << 32
            ));
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), String> {
        self.w(CTRL, 0)?;
        let t = Instant::now();
        while self.r(STATUS)? & STATUS_BUSY != 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("engine still BUSY 10 s after stop".into());
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum PinKind {
    /// Each buffer on its own page: one 1-page pin and unpin per descriptor.
    Single,
    /// Each buffer straddles a page boundary: 2-page pins.
    Run2,
    /// Every buffer on the same (otherwise unpinned) page: pin, unpin, pin...
    Same,
    /// Buffers inside the ring pages, which the engine holds pinned: the
    /// buffer pin only takes a reference, so the descriptor fetch and
    /// write-back (two 16-byte `vfio_dma_rw` each) dominate.
    Held,
}

/// Loops bytes through the TX ring, the UART and the RX ring and reports
/// the cost per descriptor (TX and RX descriptors both count). Each
/// descriptor is a 16-byte `vfio_dma_rw` read, a `vfio_pin_pages` of its
/// buffer, the copy, a `vfio_unpin_pages` and a 16-byte `vfio_dma_rw` write.
fn pin_workload(env: &Env, kind: PinKind) -> Result<(), String> {
    if !env.backend.rust_mtty {
        return Err("SKIP: needs the DMA engine of mtty_rs (backend mtty-rs or rust)".into());
    }
    let s = setup(1, true)?;
    let d = &s.devices[0];
    // Layout (pages): 0 TX ring, 1 RX ring, 2.. TX buffers, then RX buffers.
    let ring: u32 = if matches!(kind, PinKind::Held) { 128 } else { 256 };
    let pages: u64 = 2 + 2 * (ring as u64 + 2);
    let mem = Buffer::new((pages * PAGE) as usize);
    let iova = IOVA0;
    s.container.map_rw(mem.vaddr(), iova, pages * PAGE).map_err(e("MAP_DMA"))?;
    let eng = Engine::new(d, &mem, iova)?;
    let (tx_ring, rx_ring) = (0, PAGE);
    let tx_bufs = 2 * PAGE;
    let rx_bufs = tx_bufs + (ring as u64 + 2) * PAGE;
    let len: u32 = if matches!(kind, PinKind::Run2) { 2 } else { 1 };
    // Buffer IOVA of descriptor i (offset into mem).
    let buf = |base: u64, ring_off: u64, i: u64| -> u64 {
        match kind {
            PinKind::Single => base + i * PAGE,
            PinKind::Run2 => base + i * PAGE + PAGE - 1,
            PinKind::Same => base + (i % 2048) * 2,
            PinKind::Held => ring_off + 2048 + (i % 1024) * 2,
        }
    };
    eng.start(tx_ring, rx_ring, ring)?;
    let batches = env.iters(4);
    let mut descs = 0u64;
    let mut t_all = Duration::ZERO;
    let (mut tx_tail, mut rx_tail) = (0u32, 0u32);
    for _ in 0..batches {
        let n = ring;
        let bytes = n as u64 * len as u64;
        for k in 0..n {
            let i = tx_tail.wrapping_add(k);
            let at = tx_ring + (i % ring) as u64 * 16;
            eng.post(at, iova + buf(tx_bufs, tx_ring, (i % ring) as u64), len);
        }
        let mut rx_posted = rx_tail;
        let post_rx = |from: u32, to: u32| {
            for i in from..to {
                let at = rx_ring + (i % ring) as u64 * 16;
                eng.post(at, iova + buf(rx_bufs, rx_ring, (i % ring) as u64), len);
            }
        };
        post_rx(rx_posted, rx_tail.wrapping_add(ring));
        rx_posted = rx_tail.wrapping_add(ring);
        let t = Instant::now();
        let tx_target = tx_tail.wrapping_add(n);
        eng.w(RX + RING_TAIL, rx_posted)?;
        eng.w(TX + RING_TAIL, tx_target)?;
        eng.w(DOORBELL, 3)?;
        let mut rx_head = rx_tail;
        let mut received = 0u64;
        let mut rx_descs = 0u64;
        loop {
            let th = eng.r(TX + RING_HEAD)?;
            let rh = eng.r(RX + RING_HEAD)?;
            // Count what the RX descriptors received, then give them back.
            while rx_head != rh {
                received += eng.done_len(rx_ring + (rx_head % ring) as u64 * 16) as u64;
                rx_head = rx_head.wrapping_add(1);
                rx_descs += 1;
            }
            if th == tx_target && received >= bytes {
                break;
            }
            if rx_posted != rx_head.wrapping_add(ring) {
                post_rx(rx_posted, rx_head.wrapping_add(ring));
                rx_posted = rx_head.wrapping_add(ring);
                eng.w(RX + RING_TAIL, rx_posted)?;
            }
            eng.check()?;
            eng.w(DOORBELL, 3)?;
            if t.elapsed() > Duration::from_secs(120) {
                return Err(format!("engine stalled: TX head {th}/{tx_target}, received {received}/{bytes} bytes"));
            }
        }
        t_all += t.elapsed();
        descs += n as u64 + rx_descs;
        tx_tail = tx_target;
        rx_tail = rx_head;
    }
    eng.check()?;
    eng.stop()?;
    let metric = match kind {
        PinKind::Single => "pin.single",
        PinKind::Run2 => "pin.run2",
        PinKind::Same => "pin.same",
        PinKind::Held => "dma_rw.16b",
    };
    sample(metric, "ns/desc", ns_per(t_all, descs));
    s.container.unmap_range(iova, pages * PAGE).map_err(e("UNMAP_DMA"))?;
    Ok(())
}

/// 64 KiB copy commands of the mtty DMA engine (docs/mtty-dma.md, "Copy")
/// between two mapped 64 KiB buffers, alternating direction: each copy is
/// one 64 KiB `vfio_dma_rw` read and one 64 KiB `vfio_dma_rw` write, no
/// pins. Timed from the doorbell write to the STATUS read that shows the
/// copy done (the engine runs it inside the doorbell write).
fn dma_rw_64k(env: &Env) -> Result<(), String> {
    if !env.backend.rust_mtty {
        return Err("SKIP: needs the DMA engine of mtty_rs (backend mtty-rs or rust)".into());
    }
    let s = setup(1, true)?;
    let d = &s.devices[0];
    let len = MAX_COPY_LEN as u64;
    let mem = Buffer::new(2 * len as usize);
    let iova = IOVA0;
    s.container.map_rw(mem.vaddr(), iova, 2 * len).map_err(e("MAP_DMA"))?;
    // SAFETY: the buffer is mapped for its length while `mem` lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(mem.addr, mem.len) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let eng = Engine::new(d, &mem, iova)?;
    // No rings (size 0): the engine only copies.
    eng.start(0, 0, 0)?;
    let n = env.iters(4000);
    let mut t_all = Duration::ZERO;
    for k in 0..n {
        let (src, dst) = if k % 2 == 0 { (iova, iova + len) } else { (iova + len, iova) };
        for (reg, v) in [(COPY_SRC, src), (COPY_DST, dst)] {
            eng.w(reg, v as u32)?;
            eng.w(reg + 4, (v >> 32) as u32)?;
        }
        eng.w(COPY_LEN, MAX_COPY_LEN)?;
        let t = Instant::now();
        eng.w(DOORBELL, DOORBELL_COPY)?;
        while eng.r(STATUS)? & STATUS_COPY != 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("copy still busy after 10 s".into());
            }
        }
        t_all += t.elapsed();
        eng.check()?;
    }
    // The bytes went there and back: spot-check the copy really happened.
    if bytes[..len as usize] != bytes[len as usize..] || bytes[12345] != (12345 % 251) as u8 {
        return Err("the two buffers differ after the copies".into());
    }
    eng.stop()?;
    sample("dma_rw.64k", "us/copy", t_all.as_secs_f64() * 1e6 / n as f64);
    s.container.unmap_range(iova, 2 * len).map_err(e("UNMAP_DMA"))?;
    Ok(())
}

/// The whole UNMAP_DMA round trip over a range that `devs` devices hold
/// pinned (each engine pins its two ring pages): the backend calls every
/// registered device's `dma_unmap`, each engine halts and unpins. Reported
/// as the median of the unmaps' latencies: with few, short operations a
/// single one that meets a timer interrupt or waits for an engine step in
/// flight would otherwise move the mean of a round.
fn unmap_pinned(env: &Env, devs: usize) -> Result<(), String> {
    if !env.backend.rust_mtty {
        return Err("SKIP: needs the DMA engine of mtty_rs (backend mtty-rs or rust)".into());
    }
    let s = setup(devs, true)?;
    let pages = 2 * devs as u64;
    let mem = Buffer::new((pages * PAGE) as usize);
    let iova = IOVA0;
    let engines: Vec<Engine> = s.devices.iter().map(|d| Engine::new(d, &mem, iova)).collect::<Result<_, _>>()?;
    let n = env.iters(40);
    let mut latencies = Vec::with_capacity(n as usize);
    for _ in 0..n {
        s.container.map_rw(mem.vaddr(), iova, pages * PAGE).map_err(e("MAP_DMA"))?;
        for (k, eng) in engines.iter().enumerate() {
            eng.start(2 * k as u64 * PAGE, (2 * k as u64 + 1) * PAGE, 4)?;
        }
        let t = Instant::now();
        let got = s.container.unmap_range(iova, pages * PAGE).map_err(e("UNMAP_DMA of the pinned range"))?;
        latencies.push(t.elapsed());
        if got != pages * PAGE {
            return Err(format!("UNMAP_DMA unmapped {got:#x} bytes, wanted {:#x}", pages * PAGE));
        }
        for eng in &engines {
            if eng.r(STATUS)? & STATUS_ERROR == 0 || eng.r(ERROR_CODE)? != 1 {
                return Err("an engine did not halt with UNMAPPED after the unmap".into());
            }
        }
    }
    latencies.sort_unstable();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    sample(&format!("unmap_pinned.{devs}dev"), "us/op", median.as_secs_f64() * 1e6);
    Ok(())
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

/// Options of `vfio-guest bench`.
pub struct BenchConfig {
    pub run: RunConfig,
    /// (C side, Rust side).
    pub pair: (Backend, Backend),
    pub rounds: u32,
    pub scale: f64,
    pub timeout: Duration,
    /// `perf record -F`: samples per second of the guest's clock.
    pub perf_freq: u32,
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Runs the rounds; returns whether every workload ran (skips count as run).
pub fn run(cfg: &BenchConfig) -> bool {
    let dir = &cfg.run.results;
    let _ = std::fs::create_dir_all(dir);
    let mut out = std::fs::File::create(dir.join("samples.jsonl")).expect("results dir must be writable");
    harness_debugfs_clear();
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| cfg.run.filter.as_deref().is_none_or(|f| f.split(',').any(|f| w.name.contains(f))))
        .collect();
    println!("bench: {} workload(s), {} round(s), C side {}, Rust side {}", selected.len(), cfg.rounds, cfg.pair.0.name(), cfg.pair.1.name());
    let mut ok = true;
    let start = Instant::now();
    // Warm-up (round 0, untimed, at a twentieth of the iterations): every
    // selected workload on the Rust side, then on the C side. Lockdep turns
    // itself off after its first report, and the C type1 reports its known
    // lock inversion (docs/type1.md) on its first pinned unmap. So the Rust
    // modules run every workload under a live lockdep first, and the C
    // side's report (if any) comes before the timed rounds: every timed
    // round then runs with the same lockdep state on both sides.
    for (side, b) in [("rust", cfg.pair.1), ("c", cfg.pair.0)] {
        println!("bench: warm-up (untimed) backend {} ({side} side), {:.0} s elapsed", b.name(), start.elapsed().as_secs_f64());
        kmsg(&format!("{MARK} begin round 0 side {side} backend {}", b.name()));
        if let Err(err) = harness::load_backend(&cfg.run, b) {
            let _ = writeln!(out, "{{\"round\":0,\"side\":\"{side}\",\"workload\":\"modules.load\",\"error\":{}}}", json_str(&err));
            println!("bench: loading {} failed: {err}", b.name());
            let _ = harness::unload_backend(&cfg.run, b);
            return false;
        }
        for w in selected.iter().filter(|w| !w.needs_engine || b.rust_mtty) {
            let (code, _, stderr) = spawn_one(w.name, b, cfg, cfg.scale / 20.0);
            if !matches!(code, Some(0)) && code != Some(crate::EXIT_SKIP) {
                ok = false;
                let why = format!("warm-up: exit {code:?}: {}", stderr.trim().lines().last().unwrap_or(""));
                let _ = writeln!(out, "{{\"round\":0,\"side\":\"{side}\",\"workload\":{},\"error\":{}}}", json_str(w.name), json_str(&why));
                println!("bench:   {} FAILED: {why}", w.name);
            }
        }
        if let Err(err) = harness::unload_backend(&cfg.run, b) {
            println!("bench: unloading {} failed: {err}", b.name());
            return false;
        }
        kmsg(&format!("{MARK} end round 0 side {side} backend {}", b.name()));
    }
    for round in 1..=cfg.rounds {
        // The side that goes first alternates, so drift in the VM spreads
        // over both.
        let order = if round % 2 == 1 { [cfg.pair.1, cfg.pair.0] } else { [cfg.pair.0, cfg.pair.1] };
        for b in order {
            let side = if b == cfg.pair.0 { "c" } else { "rust" };
            let head = format!("{{\"round\":{round},\"backend\":{},\"side\":\"{side}\"", json_str(b.name()));
            println!("bench: round {round}/{} backend {} ({side} side), {:.0} s elapsed", cfg.rounds, b.name(), start.elapsed().as_secs_f64());
            // Markers in the kernel log: the host attributes every kernel
            // report to the side (and modules) that were loaded when it fired.
            kmsg(&format!("{MARK} begin round {round} side {side} backend {}", b.name()));
            if let Err(err) = harness::load_backend(&cfg.run, b) {
                let _ = writeln!(out, "{head},\"workload\":\"modules.load\",\"error\":{}}}", json_str(&err));
                println!("bench: loading {} failed: {err}", b.name());
                let _ = harness::unload_backend(&cfg.run, b);
                return false;
            }
            for w in &selected {
                if w.needs_engine && !b.rust_mtty {
                    let why = "needs the DMA engine of mtty_rs: pair mtty-rs with rust";
                    let _ = writeln!(out, "{head},\"workload\":{},\"skip\":{}}}", json_str(w.name), json_str(why));
                    println!("bench:   {} skipped: {why}", w.name);
                    continue;
                }
                let t = Instant::now();
                let (code, stdout, stderr) = spawn_one(w.name, b, cfg, cfg.scale);
                let mut got = Vec::new();
                for line in stdout.lines() {
                    let mut f = line.split_whitespace();
                    if f.next() != Some("SAMPLE") {
                        continue;
                    }
                    let (Some(metric), Some(unit), Some(v)) = (f.next(), f.next(), f.next()) else { continue };
                    let _ = writeln!(
                        out,
                        "{head},\"workload\":{},\"metric\":{},\"unit\":{},\"value\":{v}}}",
                        json_str(w.name),
                        json_str(metric),
                        json_str(unit)
                    );
                    got.push(format!("{metric}={v}{}", unit.split('/').next().unwrap_or("")));
                }
                match code {
                    Some(0) => println!("bench:   {} ({:.1} s): {}", w.name, t.elapsed().as_secs_f64(), summarize(&got)),
                    Some(c) if c == crate::EXIT_SKIP => {
                        let why = stdout.lines().last().unwrap_or("").trim_start_matches("SKIP: ").to_owned();
                        let _ = writeln!(out, "{head},\"workload\":{},\"skip\":{}}}", json_str(w.name), json_str(&why));
                        println!("bench:   {} skipped: {why}", w.name);
                    }
                    other => {
                        ok = false;
                        let why = match other {
                            None => format!("timed out after {} s", cfg.timeout.as_secs()),
                            Some(c) => format!("exit {c}: {}", stderr.trim().lines().last().unwrap_or("")),
                        };
                        let _ = writeln!(out, "{head},\"workload\":{},\"error\":{}}}", json_str(w.name), json_str(&why));
                        println!("bench:   {} FAILED: {why}", w.name);
                    }
                }
                let _ = out.flush();
            }
            if let Err(err) = harness::unload_backend(&cfg.run, b) {
                let _ = writeln!(out, "{head},\"workload\":\"modules.unload\",\"error\":{}}}", json_str(&err));
                println!("bench: unloading {} failed: {err}", b.name());
                return false;
            }
            kmsg(&format!("{MARK} end round {round} side {side} backend {}", b.name()));
        }
    }
    ok
}

/// Prefix of the side markers written to the kernel log (xtask/src/bench.rs
/// looks for it).
const MARK: &str = "vfio-rs-bench:";

/// Writes one line to the kernel log.
fn kmsg(line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(line.as_bytes());
    }
}

/// `vfio-guest bench --perf`: for each selected workload and each side of
/// the pair (Rust first), loads the side's modules, runs the workload once
/// under `perf record -g` (cpu-clock sampling: TCG has no hardware
/// counters) and writes, while the modules are still loaded so that
/// `/proc/kallsyms` names their functions:
///
/// - `perf-<workload>-<side>.self.txt`: flat profile, self time per symbol;
/// - `perf-<workload>-<side>.children.txt`: inclusive time per symbol;
/// - `perf-<workload>-<side>.graph.txt`: call graphs (callers of each hot symbol).
pub fn perf(cfg: &BenchConfig) -> bool {
    let dir = &cfg.run.results;
    let _ = std::fs::create_dir_all(dir);
    harness_debugfs_clear();
    // Kernel addresses and sampling for root without restrictions.
    let _ = std::fs::write("/proc/sys/kernel/kptr_restrict", "0");
    let _ = std::fs::write("/proc/sys/kernel/perf_event_paranoid", "-1");
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| cfg.run.filter.as_deref().is_none_or(|f| f.split(',').any(|f| w.name.contains(f))))
        .collect();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut ok = true;
    for w in &selected {
        for (side, b) in [("rust", cfg.pair.1), ("c", cfg.pair.0)] {
            if w.needs_engine && !b.rust_mtty {
                println!("perf: {} skipped on {}: needs the DMA engine of mtty_rs", w.name, b.name());
                continue;
            }
            kmsg(&format!("{MARK} begin round 0 side {side} backend {}", b.name()));
            if let Err(err) = harness::load_backend(&cfg.run, b) {
                println!("perf: loading {} failed: {err}", b.name());
                let _ = harness::unload_backend(&cfg.run, b);
                return false;
            }
            // Names by formatting: workload names contain dots.
            let base = format!("perf-{}-{side}", w.name);
            let data = dir.join(format!("{base}.data"));
            let t = Instant::now();
            let rec = Command::new("perf")
                .args(["record", "-q", "-N", "-e", "cpu-clock", "-F", &cfg.perf_freq.to_string(), "-g", "-o"])
                .arg(&data)
                .arg("--")
                .arg(&exe)
                .args(["bench-one", w.name, "--backend", b.name(), "--scale", &cfg.scale.to_string()])
                .stdin(Stdio::null())
                .output();
            match rec {
                Ok(o) if o.status.success() => {
                    let samples: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap_or("").lines().filter(|l| l.starts_with("SAMPLE")).collect();
                    println!("perf: {} on {} ({side} side), {:.1} s: {}", w.name, b.name(), t.elapsed().as_secs_f64(), samples.join("; "));
                    let reports: [(&str, &[&str]); 3] = [
                        ("self", &["--no-children", "--sort", "sym", "-g", "none", "--percent-limit", "0.3"]),
                        ("children", &["--children", "--sort", "sym", "-g", "none", "--percent-limit", "0.5"]),
                        ("graph", &["--no-children", "--sort", "sym", "-g", "caller,0.5,callee,function,percent", "--percent-limit", "2"]),
                    ];
                    for (kind, extra) in reports {
                        let out = Command::new("perf")
                            .args(["report", "--stdio", "--kallsyms", "/proc/kallsyms", "-i"])
                            .arg(&data)
                            .args(extra)
                            .stdin(Stdio::null())
                            .output();
                        let path = dir.join(format!("{base}.{kind}.txt"));
                        match out {
                            Ok(o) => {
                                let mut text = o.stdout;
                                text.extend_from_slice(&o.stderr);
                                let _ = std::fs::write(&path, text);
                            }
                            Err(err) => println!("perf: cannot run perf report: {err}"),
                        }
                    }
                }
                Ok(o) => {
                    ok = false;
                    println!(
                        "perf: {} on {} failed ({}): {}",
                        w.name,
                        b.name(),
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
                    );
                }
                Err(err) => {
                    println!("perf: cannot run perf ({err}): is linux-perf installed on the host? (cargo xtask setup)");
                    let _ = harness::unload_backend(&cfg.run, b);
                    return false;
                }
            }
            hot_instructions(&data, &dir.join(format!("{base}.ips.txt")));
            let _ = std::fs::remove_file(&data);
            if let Err(err) = harness::unload_backend(&cfg.run, b) {
                println!("perf: unloading {} failed: {err}", b.name());
                return false;
            }
            kmsg(&format!("{MARK} end round 0 side {side} backend {}", b.name()));
        }
    }
    ok
}

/// Writes the most sampled instructions (`symbol+offset`, count), so the
/// hot spots inside a function can be found in `objdump -d` of its module.
fn hot_instructions(data: &Path, out: &Path) {
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym,symoff", "-G", "--kallsyms", "/proc/kallsyms", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .output();
    let Ok(o) = script else { return };
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut total = 0u64;
    // With callchains off (-G), each sample is one line: `ip sym+0xoff`.
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some((_, l)) = line.trim().split_once(' ') else { continue };
        let l = l.trim();
        total += 1;
        *counts.entry(l.to_owned()).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut text = format!("# {total} samples; the most sampled instructions\n");
    for (sym, n) in v.iter().take(300) {
        text.push_str(&format!("{:6.2}% {n:6} {sym}\n", *n as f64 * 100.0 / total.max(1) as f64));
    }
    let _ = std::fs::write(out, text);
}

fn summarize(got: &[String]) -> String {
    if got.len() <= 4 {
        got.join(" ")
    } else {
        format!("{} ... ({} metrics)", got[..3].join(" "), got.len())
    }
}

fn harness_debugfs_clear() {
    if !Path::new("/sys/kernel/debug/kmemleak").exists() {
        let _ = Command::new("mount").args(["-t", "debugfs", "none", "/sys/kernel/debug"]).status();
    }
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "clear");
    // kmemleak's periodic scan walks all memory (minutes under TCG) and
    // would land in some workloads' timings; `finish` scans explicitly.
    let _ = std::fs::write("/sys/kernel/debug/kmemleak", "scan=off");
}

/// Runs one workload in its own process; (exit code or None on timeout, stdout, stderr).
fn spawn_one(name: &str, b: Backend, cfg: &BenchConfig, scale: f64) -> (Option<i32>, String, String) {
    let scale = scale.to_string();
    match harness::run_self(&["bench-one", name, "--backend", b.name(), "--scale", &scale], cfg.timeout) {
        Ok(r) => (r.status.map(|s| s.code().unwrap_or(1)), r.stdout, r.stderr),
        Err(err) => (Some(1), String::new(), format!("cannot start: {err}")),
    }
}

/// The end of the run: kmemleak scan and dmesg, as the test runner does.
pub fn finish(dir: &Path) {
    for _ in 0..2 {
        let _ = std::fs::write("/sys/kernel/debug/kmemleak", "scan");
        std::thread::sleep(Duration::from_secs(1));
    }
    let leaks = std::fs::read_to_string("/sys/kernel/debug/kmemleak").unwrap_or_default();
    let _ = std::fs::write(dir.join("kmemleak.txt"), &leaks);
    if let Ok(o) = Command::new("dmesg").output() {
        let _ = std::fs::write(dir.join("dmesg.txt"), o.stdout);
    }
    println!("VFIO-RS-BENCH-DONE");
}
