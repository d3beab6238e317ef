//! The operations of a differential sequence, the fixed memory layout their
//! addresses refer to, and how one is printed.
//!
//! Every address an operation passes is either a constant or inside the
//! *arena*, memory the executor maps itself at a fixed address
//! ([`ARENA`], `MAP_FIXED_NOREPLACE`), so that the same sequence passes the
//! same numbers on every run and every byte the kernel writes back can be
//! compared between runs without ASLR getting in the way.

use serde::{Deserialize, Serialize};

pub const PAGE: u64 = 4096;

/// Start of the arena. Far below where the kernel puts ASLR'd mmaps and
/// stacks (`0x7f..`) and far above the program and its heap (`0x55..`).
pub const ARENA: u64 = 0x3000_0000_0000;
/// Backing memory for MAP_DMA: `DATA_PAGES` pages at [`ARENA`]. Operations
/// munmap and remap parts of it between calls.
pub const DATA_PAGES: u64 = 48;
/// An address inside the arena that is never mapped (past the data pages).
pub const HOLE: u64 = ARENA + 0x8_0000;
/// The page argument structs are written to; the page after it is never
/// mapped, so a struct placed at its end straddles into unmapped memory.
pub const ARG_PAGE: u64 = ARENA + 0x10_0000;
/// The page dirty bitmaps are written to, with an unmapped page after it too.
pub const BITMAP_PAGE: u64 = ARENA + 0x20_0000;
/// How much of the address space the executor clears before each sequence.
pub const ARENA_LEN: u64 = 0x30_0000;
/// A kernel address: never accessible from user space.
pub const KERNEL_ADDR: u64 = 0xffff_8880_0000_0000;
/// First IOVA of the window most operations aim at.
pub const IOVA_BASE: u64 = 0x10_0000;
/// Pages in that window.
pub const IOVA_PAGES: u64 = 40;

/// Where a pointer argument points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ptr {
    /// `offset` bytes into the page it belongs to ([`ARG_PAGE`] for an
    /// argument struct, [`BITMAP_PAGE`] for a bitmap). Near the page's end
    /// the object runs into the unmapped page after it.
    At(u32),
    /// NULL.
    Null,
    /// [`HOLE`]: user memory that is not mapped.
    Unmapped,
    /// [`KERNEL_ADDR`].
    Kernel,
}

impl Ptr {
    pub fn addr(self, page: u64) -> u64 {
        match self {
            Ptr::At(off) => page + u64::from(off),
            Ptr::Null => 0,
            Ptr::Unmapped => HOLE,
            Ptr::Kernel => KERNEL_ADDR,
        }
    }
}

/// The `struct vfio_bitmap` of UNMAP_DMA and DIRTY_PAGES GET_BITMAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bitmap {
    pub pgsize: u64,
    pub size: u64,
    pub data: Ptr,
}

/// One call (or one change to the process's memory) of a sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `VFIO_IOMMU_MAP_DMA`.
    Map { argsz: u32, flags: u32, vaddr: u64, iova: u64, size: u64, at: Ptr },
    /// `VFIO_IOMMU_UNMAP_DMA`; `bitmap` appends a `struct vfio_bitmap`.
    Unmap { argsz: u32, flags: u32, iova: u64, size: u64, bitmap: Option<Bitmap>, at: Ptr },
    /// `VFIO_IOMMU_DIRTY_PAGES`; `get` appends the GET_BITMAP payload.
    Dirty { argsz: u32, flags: u32, get: Option<(u64, u64, Bitmap)>, at: Ptr },
    /// `VFIO_IOMMU_GET_INFO` with `argsz` (the rest of the struct zero).
    Info { argsz: u32, at: Ptr },
    /// `VFIO_CHECK_EXTENSION(arg)`.
    Ext { arg: u64 },
    /// `munmap` of data pages `page..page+pages`.
    Munmap { page: u32, pages: u32 },
    /// A new anonymous read/write mapping over data pages (new zeroed pages).
    Remap { page: u32, pages: u32 },
    /// Resets the mtty DMA engine, points its TX and RX rings (16
    /// descriptors each) at `rings` if given (the engine pins the ring
    /// pages through `vfio_pin_pages` while it runs) and enables it.
    EngineStart { rings: Option<(u64, u64)> },
    /// Disables the engine (releases its ring pins).
    EngineStop,
    /// The engine's copy command (`vfio_dma_rw` from `src` to `dst`).
    Copy { src: u64, dst: u64, len: u32 },
}

impl Op {
    /// The operation's name, for coverage counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Map { flags, .. } if flags & crate::uapi::VFIO_DMA_MAP_FLAG_VADDR != 0 => "MAP_DMA(VADDR)",
            Op::Map { .. } => "MAP_DMA",
            Op::Unmap { flags, .. } if *flags == 0 => "UNMAP_DMA",
            Op::Unmap { flags, .. } if *flags == crate::uapi::VFIO_DMA_UNMAP_FLAG_ALL => "UNMAP_DMA(ALL)",
            Op::Unmap { flags, .. } if *flags == crate::uapi::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP => "UNMAP_DMA(BITMAP)",
            Op::Unmap { .. } => "UNMAP_DMA(other flags)",
            Op::Dirty { flags, .. } if *flags == crate::uapi::VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP => "DIRTY_PAGES(GET_BITMAP)",
            Op::Dirty { .. } => "DIRTY_PAGES(other)",
            Op::Info { .. } => "GET_INFO",
            Op::Ext { .. } => "CHECK_EXTENSION",
            Op::Munmap { .. } => "munmap",
            Op::Remap { .. } => "mmap",
            Op::EngineStart { .. } => "engine start",
            Op::EngineStop => "engine stop",
            Op::Copy { .. } => "engine copy",
        }
    }

    /// Whether the op needs the mtty device open (and the Rust mtty's engine).
    pub fn needs_engine(&self) -> bool {
        matches!(self, Op::EngineStart { .. } | Op::EngineStop | Op::Copy { .. })
    }
}

/// A sequence: a fresh container (type1v2 or type1), one `mtty-1` group,
/// the device opened or not, then `ops`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seq {
    /// Index of the sequence under the run's seed (`gen::sequence`).
    pub index: u64,
    pub v2: bool,
    pub device: bool,
    pub ops: Vec<Op>,
}

/// An address, shown relative to the arena where it is inside it.
pub fn addr(a: u64) -> String {
    if (ARENA..ARENA + ARENA_LEN).contains(&a) {
        format!("A+{:#x}", a - ARENA)
    } else {
        format!("{a:#x}")
    }
}

fn ptr(p: Ptr, page: u64) -> String {
    match p {
        Ptr::At(off) => addr(page + u64::from(off)),
        Ptr::Null => "NULL".into(),
        Ptr::Unmapped => format!("unmapped {}", addr(HOLE)),
        Ptr::Kernel => format!("kernel {KERNEL_ADDR:#x}"),
    }
}

fn bitmap(b: &Bitmap) -> String {
    format!("bitmap{{pgsize {:#x} size {:#x} data {}}}", b.pgsize, b.size, ptr(b.data, BITMAP_PAGE))
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Map { argsz, flags, vaddr, iova, size, at } => write!(
                f,
                "MAP_DMA argsz {argsz} flags {flags:#x} vaddr {} iova {iova:#x} size {size:#x} (arg at {})",
                addr(*vaddr),
                ptr(*at, ARG_PAGE)
            ),
            Op::Unmap { argsz, flags, iova, size, bitmap: b, at } => {
                write!(f, "UNMAP_DMA argsz {argsz} flags {flags:#x} iova {iova:#x} size {size:#x}")?;
                if let Some(b) = b {
                    write!(f, " {}", bitmap(b))?;
                }
                write!(f, " (arg at {})", ptr(*at, ARG_PAGE))
            }
            Op::Dirty { argsz, flags, get, at } => {
                write!(f, "DIRTY_PAGES argsz {argsz} flags {flags:#x}")?;
                if let Some((iova, size, b)) = get {
                    write!(f, " iova {iova:#x} size {size:#x} {}", bitmap(b))?;
                }
                write!(f, " (arg at {})", ptr(*at, ARG_PAGE))
            }
            Op::Info { argsz, at } => write!(f, "GET_INFO argsz {argsz} (arg at {})", ptr(*at, ARG_PAGE)),
            Op::Ext { arg } => write!(f, "CHECK_EXTENSION {arg:#x}"),
            Op::Munmap { page, pages } => write!(f, "munmap data pages {page}..{}", page + pages),
            Op::Remap { page, pages } => write!(f, "mmap new data pages {page}..{}", page + pages),
            Op::EngineStart { rings: Some((tx, rx)) } => write!(f, "engine start, rings at iova {tx:#x} and {rx:#x}"),
            Op::EngineStart { rings: None } => write!(f, "engine start, no rings"),
            Op::EngineStop => write!(f, "engine stop"),
            Op::Copy { src, dst, len } => write!(f, "engine copy {len:#x} bytes iova {src:#x} -> {dst:#x}"),
        }
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sequence {}: {} container, one mtty-1 group, device {}",
            self.index,
            if self.v2 { "type1v2" } else { "type1 (v1)" },
            if self.device { "open" } else { "not opened" }
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {i:>3}: {op}")?;
        }
        Ok(())
    }
}
