//! Runs sequences against whichever type1 is loaded and records what each
//! operation did: its return value and errno, every byte the kernel wrote
//! into the argument and bitmap pages, `VmLck`, the engine's registers and
//! the data pages' contents.

use super::ops::*;
use crate::mtty_dma_regs as regs;
use crate::uapi::*;
use crate::vfio::{ioctl_raw, vm_locked_kb, Container, Device, Errno, Group, Mdev};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What one operation did. Two runs of a sequence agree when their lists
/// of outcomes are equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The call's return value (0 for memory operations that worked).
    pub ret: i64,
    /// Its errno, 0 when it succeeded.
    pub errno: i32,
    /// Bytes of the argument page that differ from what was there before
    /// the call, as (offset, hex) runs.
    pub arg: Vec<(u32, String)>,
    /// The same for the bitmap page.
    pub bitmap: Vec<(u32, String)>,
    /// `VmLck` (kB) after the call, relative to the sequence's start.
    pub vmlck_kb: i64,
    /// STATUS, ERROR_CODE, ERROR_IOVA and INT_STATUS of the engine after
    /// the call, when the device is open and has the engine.
    pub engine: Option<[u32; 4]>,
    /// FNV-1a of the mapped data pages after an engine operation.
    pub data: Option<u64>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.errno != 0 {
            write!(f, "errno {} ({})", self.errno, std::io::Error::from_raw_os_error(self.errno))?;
        } else {
            write!(f, "ret {}", self.ret)?;
        }
        for (what, runs) in [("arg", &self.arg), ("bitmap", &self.bitmap)] {
            for (off, hex) in runs {
                write!(f, "; {what}[{off:#x}..] = {hex}")?;
            }
        }
        write!(f, "; VmLck {:+} kB", self.vmlck_kb)?;
        if let Some([st, code, iova, int]) = self.engine {
            write!(f, "; engine status {st:#x} error {code} error_iova {iova:#x} int {int:#x}")?;
        }
        if let Some(h) = self.data {
            write!(f, "; data {h:016x}")?;
        }
        Ok(())
    }
}

/// The outcomes of one sequence, or why it could not be set up.
pub type SeqOutcome = Result<Vec<Outcome>, String>;

/// Fill byte of the argument and bitmap pages before each call.
const FILL: u8 = 0xa5;

fn mmap_fixed(addr: u64, len: u64) -> Result<(), String> {
    // SAFETY: a new anonymous mapping at an address inside the arena,
    // which nothing else in this program uses; NOREPLACE refuses to map
    // over anything that is there.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as u64 != addr {
        return Err(format!("mmap at {addr:#x}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn munmap(addr: u64, len: u64) {
    // SAFETY: only arena addresses are passed, and no Rust reference into
    // the arena outlives the call (the executor reads it through raw copies).
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}

/// Copies `len` bytes from `src` to arena address `dst`.
fn poke(dst: u64, src: &[u8]) {
    // SAFETY: callers pass mapped arena pages and lengths inside them.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
}

fn peek(src: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: callers pass mapped arena pages and lengths inside them.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, v.as_mut_ptr(), len) };
    v
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// The (offset, hex) runs where `after` differs from `before`.
fn diff(before: &[u8], after: &[u8]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < after.len() {
        if before[i] == after[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < after.len() && before[i] != after[i] {
            i += 1;
        }
        let hex: String = after[start..i].iter().map(|b| format!("{b:02x}")).collect();
        out.push((start as u32, hex));
    }
    out
}

/// The arena's state: which data pages are mapped.
struct Arena {
    mapped: Vec<bool>,
}

impl Arena {
    /// Clears the arena and maps it anew: data pages with a pattern, the
    /// argument and bitmap pages with [`FILL`].
    fn reset() -> Result<Self, String> {
        munmap(ARENA, ARENA_LEN);
        mmap_fixed(ARENA, DATA_PAGES * PAGE)?;
        let mut pattern = vec![0u8; (DATA_PAGES * PAGE) as usize];
        for (i, b) in pattern.iter_mut().enumerate() {
            *b = (i / PAGE as usize) as u8 ^ (i as u8).wrapping_mul(31);
        }
        poke(ARENA, &pattern);
        for page in [ARG_PAGE, BITMAP_PAGE] {
            mmap_fixed(page, PAGE)?;
            poke(page, &[FILL; PAGE as usize]);
        }
        Ok(Arena { mapped: vec![true; DATA_PAGES as usize] })
    }

    fn data_hash(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325;
        for (i, m) in self.mapped.iter().enumerate() {
            if *m {
                fnv(&mut h, &peek(ARENA + i as u64 * PAGE, PAGE as usize));
            } else {
                fnv(&mut h, b"unmapped");
            }
        }
        h
    }
}

/// The mdev every sequence of one executor process uses.
pub struct Env {
    mdev: Mdev,
    /// Whether the sequences use the DMA engine (then its registers are
    /// part of every outcome; else the mtty's BAR2 is not looked at, and the
    /// C sample and the Rust mtty look the same).
    engine: bool,
}

impl Env {
    pub fn new(engine: bool) -> Result<Self, String> {
        let mdev = Mdev::create(Path::new("/sys/class/mdev_bus/mtty"), "mtty-1")?;
        Ok(Env { mdev, engine })
    }

    /// Runs `seqs`, each in a fresh container.
    pub fn run_all(&self, seqs: &[Seq]) -> Vec<SeqOutcome> {
        let out = seqs.iter().map(|s| self.run(s)).collect();
        munmap(ARENA, ARENA_LEN);
        out
    }

    /// Runs one sequence.
    pub fn run(&self, seq: &Seq) -> SeqOutcome {
        let mut arena = Arena::reset()?;
        let group = Group::open(self.mdev.group()?).map_err(|e| format!("open group: {e}"))?;
        let container = Container::open().map_err(|e| format!("open container: {e}"))?;
        group.set_container(&container).map_err(|e| format!("GROUP_SET_CONTAINER: {e}"))?;
        let kind = if seq.v2 { VFIO_TYPE1v2_IOMMU } else { VFIO_TYPE1_IOMMU };
        container.set_iommu(kind).map_err(|e| format!("SET_IOMMU: {e}"))?;
        let device = if seq.device {
            let d = group.device(&self.mdev.uuid).map_err(|e| format!("GET_DEVICE_FD: {e}"))?;
            let cfg = d.region(VFIO_PCI_CONFIG_REGION_INDEX).map_err(|e| format!("config region: {e}"))?.offset;
            // Memory decoding and bus mastering, as the engine needs.
            d.write16(cfg + 0x04, 0x0007).map_err(|e| format!("PCI command: {e}"))?;
            let bar = if self.engine { d.region(VFIO_PCI_BAR2_REGION_INDEX).ok().map(|r| r.offset) } else { None };
            // The C sample has no engine behind BAR2 (nor a BAR2).
            let engine = match bar {
                Some(b) if d.read32(b + regs::ID).ok() == Some(regs::ID_VALUE) => Some(b),
                _ => None,
            };
            Some((d, engine))
        } else {
            None
        };
        let base = vm_locked_kb() as i64;
        let mut out = Vec::with_capacity(seq.ops.len());
        for op in &seq.ops {
            let before_arg = peek(ARG_PAGE, PAGE as usize);
            let before_bm = peek(BITMAP_PAGE, PAGE as usize);
            let (ret, errno) = match (op.needs_engine(), &device) {
                (true, Some((d, Some(bar)))) => engine_op(d, *bar, op),
                (true, _) => (-1, libc::ENODEV),
                (false, _) => call(&container, &mut arena, op),
            };
            let arg = diff(&before_arg, &peek(ARG_PAGE, PAGE as usize));
            let bitmap = diff(&before_bm, &peek(BITMAP_PAGE, PAGE as usize));
            // Back to the fill, so the next call's writes stand out.
            poke(ARG_PAGE, &[FILL; PAGE as usize]);
            poke(BITMAP_PAGE, &[FILL; PAGE as usize]);
            let engine = match &device {
                Some((d, Some(bar))) => Some(engine_regs(d, *bar)),
                _ => None,
            };
            let data = op.needs_engine().then(|| arena.data_hash());
            out.push(Outcome { ret, errno, arg, bitmap, vmlck_kb: vm_locked_kb() as i64 - base, engine, data });
        }
        // Device first (its pins go), then group, then container.
        drop(device);
        drop(group);
        drop(container);
        Ok(out)
    }
}

fn result(r: Result<i32, Errno>) -> (i64, i32) {
    match r {
        Ok(v) => (i64::from(v), 0),
        Err(Errno(e)) => (-1, e),
    }
}

/// Writes `bytes` at `at` in the argument page (the part that fits: at the
/// page's end the rest would be in the unmapped page) and returns the
/// pointer to pass.
fn place(at: Ptr, bytes: &[u8]) -> u64 {
    if let Ptr::At(off) = at {
        let room = (PAGE as usize).saturating_sub(off as usize);
        poke(ARG_PAGE + u64::from(off), &bytes[..bytes.len().min(room)]);
    }
    at.addr(ARG_PAGE)
}

fn bitmap_bytes(b: &Bitmap) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[0..8].copy_from_slice(&b.pgsize.to_ne_bytes());
    v[8..16].copy_from_slice(&b.size.to_ne_bytes());
    v[16..24].copy_from_slice(&b.data.addr(BITMAP_PAGE).to_ne_bytes());
    v
}

fn call(c: &Container, arena: &mut Arena, op: &Op) -> (i64, i32) {
    let fd = c.fd();
    match op {
        Op::Map { argsz, flags, vaddr, iova, size, at } => {
            let mut b = Vec::with_capacity(32);
            b.extend_from_slice(&argsz.to_ne_bytes());
            b.extend_from_slice(&flags.to_ne_bytes());
            b.extend_from_slice(&vaddr.to_ne_bytes());
            b.extend_from_slice(&iova.to_ne_bytes());
            b.extend_from_slice(&size.to_ne_bytes());
            result(ioctl_raw(fd, VFIO_IOMMU_MAP_DMA, place(*at, &b)))
        }
        Op::Unmap { argsz, flags, iova, size, bitmap, at } => {
            let mut b = Vec::with_capacity(48);
            b.extend_from_slice(&argsz.to_ne_bytes());
            b.extend_from_slice(&flags.to_ne_bytes());
            b.extend_from_slice(&iova.to_ne_bytes());
            b.extend_from_slice(&size.to_ne_bytes());
            if let Some(bm) = bitmap {
                b.extend_from_slice(&bitmap_bytes(bm));
            }
            result(ioctl_raw(fd, VFIO_IOMMU_UNMAP_DMA, place(*at, &b)))
        }
        Op::Dirty { argsz, flags, get, at } => {
            let mut b = Vec::with_capacity(48);
            b.extend_from_slice(&argsz.to_ne_bytes());
            b.extend_from_slice(&flags.to_ne_bytes());
            if let Some((iova, size, bm)) = get {
                b.extend_from_slice(&iova.to_ne_bytes());
                b.extend_from_slice(&size.to_ne_bytes());
                b.extend_from_slice(&bitmap_bytes(bm));
            }
            result(ioctl_raw(fd, VFIO_IOMMU_DIRTY_PAGES, place(*at, &b)))
        }
        Op::Info { argsz, at } => {
            let mut b = [0u8; 16];
            b[0..4].copy_from_slice(&argsz.to_ne_bytes());
            result(ioctl_raw(fd, VFIO_IOMMU_GET_INFO, place(*at, &b)))
        }
        Op::Ext { arg } => result(ioctl_raw(fd, VFIO_CHECK_EXTENSION, *arg as libc::c_ulong)),
        Op::Munmap { page, pages } => {
            munmap(ARENA + u64::from(*page) * PAGE, u64::from(*pages) * PAGE);
            for m in &mut arena.mapped[*page as usize..(*page + *pages) as usize] {
                *m = false;
            }
            (0, 0)
        }
        Op::Remap { page, pages } => {
            let (addr, len) = (ARENA + u64::from(*page) * PAGE, u64::from(*pages) * PAGE);
            munmap(addr, len);
            if let Err(e) = mmap_fixed(addr, len) {
                eprintln!("{e}");
                return (-1, libc::ENOMEM);
            }
            for m in &mut arena.mapped[*page as usize..(*page + *pages) as usize] {
                *m = true;
            }
            (0, 0)
        }
        Op::EngineStart { .. } | Op::EngineStop | Op::Copy { .. } => (-1, libc::ENODEV),
    }
}

fn engine_regs(d: &Device, bar: u64) -> [u32; 4] {
    let r = |off| d.read32(bar + off).unwrap_or(u32::MAX);
    [r(regs::STATUS), r(regs::ERROR_CODE), r(regs::ERROR_IOVA), r(regs::INT_STATUS)]
}

fn engine_op(d: &Device, bar: u64, op: &Op) -> (i64, i32) {
    let w = |off: u64, v: u32| d.write32(bar + off, v);
    let r: Result<(), Errno> = (|| match op {
        Op::EngineStart { rings } => {
            w(regs::CTRL, regs::CTRL_RESET)?;
            if let Some((tx, rx)) = rings {
                for (ring, base) in [(regs::TX, *tx), (regs::RX, *rx)] {
                    w(ring + regs::RING_BASE, base as u32)?;
                    w(ring + regs::RING_BASE + 4, (base >> 32) as u32)?;
                    w(ring + regs::RING_SIZE, 16)?;
                }
            }
            w(regs::CTRL, regs::CTRL_ENABLE)
        }
        Op::EngineStop => w(regs::CTRL, 0),
        Op::Copy { src, dst, len } => {
            for (reg, v) in [(regs::COPY_SRC, *src), (regs::COPY_DST, *dst)] {
                w(reg, v as u32)?;
                w(reg + 4, (v >> 32) as u32)?;
            }
            w(regs::COPY_LEN, *len)?;
            w(regs::DOORBELL, regs::DOORBELL_COPY)
        }
        _ => Err(Errno(libc::ENODEV)),
    })();
    result(r.map(|()| 0))
}
