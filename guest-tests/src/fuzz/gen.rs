//! Seeded generation of sequences. Sequence `i` of seed `s` is always the
//! same (its generator is seeded from `s` and `i` alone), so a divergence is
//! reproduced from the pair whatever ran before it.

use super::ops::*;
use crate::uapi::*;

/// splitmix64: small, fast, and good enough to pick operations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// What the generated sequences may contain.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Operations on the Rust mtty's DMA engine (pins and `vfio_dma_rw`):
    /// only where the Rust mtty is loaded on both sides.
    pub engine: bool,
    /// Longest sequence.
    pub max_ops: u64,
}

/// The most ops in a sequence: long enough to build up several mappings,
/// dirty tracking and pins, short enough to shrink quickly.
pub const MAX_OPS: u64 = 32;

const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;

/// Sequence `index` of `seed`.
pub fn sequence(seed: u64, index: u64, p: Profile) -> Seq {
    let mut r = Rng::new(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
    // Mix twice so that neighbouring indices start far apart.
    r = Rng::new(r.next() ^ r.next().rotate_left(17));
    let v2 = !r.chance(1, 5);
    let device = p.engine && r.chance(2, 3) || !p.engine && r.chance(1, 3);
    let n = 1 + r.below(p.max_ops);
    let mut known = Vec::new();
    let ops = (0..n).map(|_| op(&mut r, p.engine && device, &mut known)).collect();
    Seq { index, v2, device, ops }
}

/// A page-aligned IOVA in the window, or now and then a stranger one.
fn iova(r: &mut Rng) -> u64 {
    match r.below(20) {
        0 => 0,
        1 => IOVA_BASE + r.below(IOVA_PAGES) * PAGE + r.pick(&[1, 0x800, 0xfff]),
        2 => r.pick(&[1 << 32, 1 << 40, 1 << 48, 1 << 52]),
        // Near the top of the address space. A *mapping* that ends exactly
        // at 2^64 is excluded in `size_for` (docs/type1.md "Differences from
        // the reference": the C wrap-around there is deliberately not kept).
        3 => u64::MAX - (1 + r.below(8)) * PAGE + 1,
        _ => IOVA_BASE + r.below(IOVA_PAGES) * PAGE,
    }
}

fn size(r: &mut Rng) -> u64 {
    match r.below(24) {
        0 => 0,
        1 => r.pick(&[1, 0x800, PAGE + 1, 3 * PAGE - 8]),
        2 => r.pick(&[u64::MAX, u64::MAX - PAGE + 1, 1 << 63, 1 << 40]),
        3 => IOVA_PAGES * PAGE,
        _ => {
            let most = if r.chance(1, 4) { 12 } else { 4 };
            (1 + r.below(most)) * PAGE
        }
    }
}

/// A size for a mapping at `iova`, never one that ends exactly at 2^64
/// (see `iova`).
fn map_size(r: &mut Rng, iova: u64) -> u64 {
    loop {
        let s = size(r);
        if s == 0 || iova.wrapping_add(s) != 0 {
            return s;
        }
    }
}

fn vaddr(r: &mut Rng) -> u64 {
    match r.below(24) {
        0 => 0,
        1 => ARENA + r.below(DATA_PAGES) * PAGE + r.pick(&[8, 0x800]),
        2 => HOLE,
        3 => KERNEL_ADDR,
        4 => u64::MAX - PAGE + 1,
        _ => ARENA + r.below(DATA_PAGES) * PAGE,
    }
}

/// Where an argument struct of `len` bytes goes.
fn at(r: &mut Rng, len: u32) -> Ptr {
    match r.below(40) {
        0 => Ptr::Null,
        1 => Ptr::Unmapped,
        2 => Ptr::Kernel,
        // Straddling the end of the page into the unmapped one.
        3 => Ptr::At(PAGE as u32 - len / 2),
        4 => Ptr::At(8 * r.below(64) as u32),
        _ => Ptr::At(0),
    }
}

fn argsz(r: &mut Rng, good: u32) -> u32 {
    match r.below(16) {
        0 => r.pick(&[0, 4, 8, 16, 23, 24, 31, 32, 33, 47, 48]),
        1 => r.pick(&[good - 1, good + 1, good + 8, 4096, u32::MAX]),
        _ => good,
    }
}

/// Bits of the pages of `[iova, iova+size)` at `pgsize`, in bytes rounded
/// up to u64s, as the kernel wants the bitmap.
fn bitmap_bytes(size: u64, pgsize: u64) -> u64 {
    let pages = size.checked_div(pgsize).unwrap_or(0);
    pages.div_ceil(64) * 8
}

fn bitmap(r: &mut Rng, size: u64) -> Bitmap {
    let pgsize = match r.below(12) {
        0 => r.pick(&[0, 512, 2 * PAGE, 1 << 21]),
        _ => PAGE,
    };
    let need = bitmap_bytes(size, PAGE);
    let bsize = match r.below(10) {
        0 => 0,
        1 => need.saturating_sub(8),
        2 => r.pick(&[need + 8, 4096, 1 << 40, u64::MAX]),
        _ => need,
    };
    let data = match r.below(16) {
        0 => Ptr::Null,
        1 => Ptr::Unmapped,
        2 => Ptr::Kernel,
        3 => Ptr::At(PAGE as u32 - 8),
        4 => Ptr::At(4 * r.below(16) as u32),
        _ => Ptr::At(0),
    };
    Bitmap { pgsize, size: bsize, data }
}

/// A range the sequence mapped before (or tried to), so that unmaps,
/// bitmaps, ring pins and copies often hit mappings exactly; sometimes two
/// neighbours in one range.
fn known_range(r: &mut Rng, known: &[(u64, u64)]) -> Option<(u64, u64)> {
    if known.is_empty() || r.chance(1, 2) {
        return None;
    }
    let (iova, size) = known[r.below(known.len() as u64) as usize];
    if r.chance(1, 4) {
        let (next, nsize) = known[r.below(known.len() as u64) as usize];
        if next > iova {
            return Some((iova, (next - iova).saturating_add(nsize)));
        }
    }
    Some((iova, size))
}

/// An IOVA inside a known mapping (page-aligned when `aligned`), or in the window.
fn inside(r: &mut Rng, known: &[(u64, u64)], aligned: bool) -> u64 {
    if !known.is_empty() && r.chance(3, 4) {
        let (iova, size) = known[r.below(known.len() as u64) as usize];
        let off = r.below(size.max(1));
        return iova.wrapping_add(if aligned { off & !(PAGE - 1) } else { off });
    }
    let off = r.below(IOVA_PAGES * PAGE);
    IOVA_BASE + if aligned { off & !(PAGE - 1) } else { off }
}

fn op(r: &mut Rng, engine: bool, known: &mut Vec<(u64, u64)>) -> Op {
    let k = r.below(if engine { 100 } else { 84 });
    match k {
        0..=29 => {
            let iova = iova(r);
            let size = map_size(r, iova);
            let flags = match r.below(14) {
                0 => r.pick(&[0, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE]),
                1 => VFIO_DMA_MAP_FLAG_VADDR,
                2 => {
                    let any = r.next() as u32;
                    r.pick(&[VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ, RW | 1 << 3, 1 << 31, any])
                }
                _ => RW,
            };
            if flags == RW && size != 0 && (iova | size).is_multiple_of(PAGE) && iova.checked_add(size).is_some() {
                known.push((iova, size));
            }
            Op::Map { argsz: argsz(r, 32), flags, vaddr: vaddr(r), iova, size, at: at(r, 32) }
        }
        30..=49 => {
            let (mut iova, mut size) = (iova(r), size(r));
            if let Some(k) = known_range(r, known) {
                (iova, size) = k;
            }
            let mut flags = 0;
            match r.below(12) {
                0 | 1 => {
                    flags = VFIO_DMA_UNMAP_FLAG_ALL;
                    if !r.chance(1, 4) {
                        (iova, size) = (0, 0);
                    }
                }
                2 => flags = VFIO_DMA_UNMAP_FLAG_VADDR,
                3 => flags = VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL,
                4 | 5 => flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                6 => {
                    let any = r.next() as u32;
                    flags = r.pick(&[1 << 3, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_ALL, any]);
                }
                _ => {}
            }
            let with_bitmap = flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 || r.chance(1, 20);
            let bitmap = with_bitmap.then(|| bitmap(r, size));
            let good = if bitmap.is_some() { 48 } else { 24 };
            Op::Unmap { argsz: argsz(r, good), flags, iova, size, bitmap, at: at(r, good) }
        }
        50..=61 => {
            let flags = match r.below(12) {
                0..=3 => VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
                4..=5 => VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
                6..=9 => VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
                10 => r.pick(&[0, VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, 1 << 3]),
                _ => r.next() as u32,
            };
            let get = (flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP != 0 || r.chance(1, 10)).then(|| {
                let (iova, size) = known_range(r, known).unwrap_or_else(|| (iova(r), size(r)));
                (iova, size, bitmap(r, size))
            });
            let good = if get.is_some() { 48 } else { 8 };
            Op::Dirty { argsz: argsz(r, good), flags, get, at: at(r, good) }
        }
        62..=69 => {
            let argsz = match r.below(4) {
                0 => r.pick(&[0, 8, 15, 16, 17, 20, 23, 24]),
                1 => r.pick(&[40, 48, 52, 56, 64, 72, 80, 4096, u32::MAX]),
                _ => r.pick(&[24, 104, 120, 128, 256]),
            };
            Op::Info { argsz, at: at(r, 64) }
        }
        70..=75 => Op::Ext {
            arg: match r.below(4) {
                0 => r.next(),
                1 => r.pick(&[1 << 32 | u64::from(VFIO_TYPE1v2_IOMMU), u64::MAX]),
                _ => r.below(13),
            },
        },
        76..=79 => {
            let page = r.below(DATA_PAGES);
            let pages = (1 + r.below(8)).min(DATA_PAGES - page);
            Op::Munmap { page: page as u32, pages: pages as u32 }
        }
        80..=83 => {
            let page = r.below(DATA_PAGES);
            let pages = (1 + r.below(8)).min(DATA_PAGES - page);
            Op::Remap { page: page as u32, pages: pages as u32 }
        }
        84..=90 => {
            // Ring bases page-aligned: the engine pins whole ring pages, and
            // unaligned pin IOVAs below a mapping are a documented
            // difference (docs/type1.md "Differences from the reference").
            let ring = |r: &mut Rng| if r.chance(1, 10) { iova(r) & !(PAGE - 1) } else { inside(r, known, true) };
            let rings = (!r.chance(1, 5)).then(|| (ring(r), ring(r)));
            Op::EngineStart { rings }
        }
        91..=93 => Op::EngineStop,
        _ => {
            let len = match r.below(8) {
                0 => r.pick(&[0, 65537]),
                1 => 65536,
                _ => 1 + r.below(3 * PAGE) as u32,
            };
            Op::Copy { src: inside(r, known, false), dst: inside(r, known, false), len }
        }
    }
}
