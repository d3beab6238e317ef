//! Constants and argument structures of the type1 uAPI (`include/uapi/linux/vfio.h`).
//!
//! The structures here are plain host-order copies of what userspace passes;
//! the kernel side copies the bytes from user memory and decodes them with
//! the `from_bytes` helpers so that the validation code never touches user
//! pointers.  Sizes are those of the 64-bit ABI, which is the only one the
//! module is built for.

/// `VFIO_TYPE`: the ioctl type byte of every VFIO ioctl (`';'`).
pub const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`: the first ioctl number used by VFIO.
pub const VFIO_BASE: u32 = 100;

/// Builds an `_IO(VFIO_TYPE, VFIO_BASE + nr)` ioctl number; VFIO encodes no size in its ioctls.
pub const fn vfio_io(nr: u32) -> u32 {
    (VFIO_TYPE << 8) | (VFIO_BASE + nr)
}

/// `VFIO_CHECK_EXTENSION` ioctl number.
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
/// `VFIO_IOMMU_GET_INFO` ioctl number.
pub const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA` ioctl number.
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA` ioctl number.
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
/// `VFIO_IOMMU_DIRTY_PAGES` ioctl number.
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = vfio_io(17);

/// Extension `VFIO_TYPE1_IOMMU`: the original (v1) type1 interface.
pub const VFIO_TYPE1_IOMMU: u64 = 1;
/// Extension `VFIO_TYPE1v2_IOMMU`: the deterministic v2 interface.
pub const VFIO_TYPE1V2_IOMMU: u64 = 3;
/// Extension `VFIO_DMA_CC_IOMMU`: every domain enforces cache coherency.
pub const VFIO_DMA_CC_IOMMU: u64 = 4;
/// Extension `VFIO_TYPE1_NESTING_IOMMU`: two-stage IOMMU, implies v2.
pub const VFIO_TYPE1_NESTING_IOMMU: u64 = 6;
/// Extension `VFIO_UNMAP_ALL`: `VFIO_DMA_UNMAP_FLAG_ALL` is supported.
pub const VFIO_UNMAP_ALL: u64 = 9;
/// Extension `VFIO_UPDATE_VADDR`: the VADDR map/unmap flags are supported.
pub const VFIO_UPDATE_VADDR: u64 = 10;

/// `IOMMU_READ` (`include/linux/iommu.h`): the device may read the mapping.
pub const IOMMU_READ: u32 = 1 << 0;
/// `IOMMU_WRITE` (`include/linux/iommu.h`): the device may write the mapping.
pub const IOMMU_WRITE: u32 = 1 << 1;
/// `IOMMU_CACHE` (`include/linux/iommu.h`): added by type1 to every iommu_map().
pub const IOMMU_CACHE: u32 = 1 << 2;

/// `VFIO_DMA_MAP_FLAG_READ`: readable from the device.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`: writable from the device.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_DMA_MAP_FLAG_VADDR`: update the vaddr of an invalidated mapping.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`: report dirty pages before unmapping.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// `VFIO_DMA_UNMAP_FLAG_ALL`: unmap every mapping; iova and size must be 0.
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// `VFIO_DMA_UNMAP_FLAG_VADDR`: only invalidate the vaddr of the mappings.
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`: start dirty page tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`: stop dirty page tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`: copy out a dirty bitmap.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

/// `VFIO_IOMMU_INFO_PGSIZES`: `iova_pgsizes` is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// `VFIO_IOMMU_INFO_CAPS`: the info reply has a capability chain.
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;

/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`: capability id of the IOVA ranges.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION`: capability id of the migration info.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
/// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`: capability id of the DMA-avail count.
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

/// `offsetofend(struct vfio_iommu_type1_dma_map, size)`: the MAP_DMA minsz.
pub const DMA_MAP_MINSZ: u32 = 32;
/// `offsetofend(struct vfio_iommu_type1_dma_unmap, size)`: the UNMAP_DMA minsz.
pub const DMA_UNMAP_MINSZ: u32 = 24;
/// `sizeof(struct vfio_bitmap)` on a 64-bit kernel.
pub const VFIO_BITMAP_SIZE: u32 = 24;
/// `offsetofend(struct vfio_iommu_type1_dirty_bitmap, flags)`: the DIRTY_PAGES minsz.
pub const DIRTY_BITMAP_MINSZ: u32 = 8;
/// `sizeof(struct vfio_iommu_type1_dirty_bitmap_get)`.
pub const DIRTY_BITMAP_GET_SIZE: u32 = 40;
/// `offsetofend(struct vfio_iommu_type1_info, iova_pgsizes)`: the GET_INFO minsz.
pub const IOMMU_INFO_MINSZ: u32 = 16;
/// `sizeof(struct vfio_iommu_type1_info)`.
pub const IOMMU_INFO_SIZE: u32 = 24;

/// Reads a native-endian `u32` at `off`, or `None` when `buf` is too short.
fn rd_u32(buf: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    let bytes: [u8; 4] = buf.get(off..end)?.try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// Reads a native-endian `u64` at `off`, or `None` when `buf` is too short.
fn rd_u64(buf: &[u8], off: usize) -> Option<u64> {
    let end = off.checked_add(8)?;
    let bytes: [u8; 8] = buf.get(off..end)?.try_into().ok()?;
    Some(u64::from_ne_bytes(bytes))
}

/// `struct vfio_iommu_type1_dma_map` as copied from userspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of the user structure as claimed by userspace.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_*`.
    pub flags: u32,
    /// Process virtual address of the buffer.
    pub vaddr: u64,
    /// IO virtual address the device will use.
    pub iova: u64,
    /// Size of the mapping in bytes.
    pub size: u64,
}

/// Splits a native-endian `u64` into the two `__u32` fields stored in it
/// (the first in memory first).
#[inline]
fn split_u32s(w: u64) -> (u32, u32) {
    let b = w.to_ne_bytes();
    (u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), u32::from_ne_bytes([b[4], b[5], b[6], b[7]]))
}

/// Joins two `__u32` fields into the native-endian `u64` that holds them.
#[inline]
fn join_u32s(first: u32, second: u32) -> u64 {
    let (a, b) = (first.to_ne_bytes(), second.to_ne_bytes());
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
}

impl DmaMap {
    /// Decodes the structure copied from userspace as the four `u64`
    /// words it occupies: what the kernel copies in, with no byte shuffling.
    #[inline]
    pub fn from_words(w: [u64; 4]) -> Self {
        let (argsz, flags) = split_u32s(w[0]);
        Self { argsz, flags, vaddr: w[1], iova: w[2], size: w[3] }
    }

    /// Decodes the first `DMA_MAP_MINSZ` bytes copied from userspace; `None` if fewer were given.
    pub fn from_bytes(buf: &[u8]) -> Option<Self> {
        Some(Self {
            argsz: rd_u32(buf, 0)?,
            flags: rd_u32(buf, 4)?,
            vaddr: rd_u64(buf, 8)?,
            iova: rd_u64(buf, 16)?,
            size: rd_u64(buf, 24)?,
        })
    }
}

/// `struct vfio_iommu_type1_dma_unmap` (fixed part) as copied from userspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Size of the user structure as claimed by userspace.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// First IO virtual address to unmap.
    pub iova: u64,
    /// Size of the range in bytes; on success the kernel writes back the unmapped size.
    pub size: u64,
}

impl DmaUnmap {
    /// Decodes the fixed part copied from userspace as the three `u64`
    /// words it occupies.
    #[inline]
    pub fn from_words(w: [u64; 3]) -> Self {
        let (argsz, flags) = split_u32s(w[0]);
        Self { argsz, flags, iova: w[1], size: w[2] }
    }

    /// Encodes the fixed part as the three `u64` words it occupies.
    #[inline]
    pub fn to_words(&self) -> [u64; 3] {
        [join_u32s(self.argsz, self.flags), self.iova, self.size]
    }

    /// Decodes the first `DMA_UNMAP_MINSZ` bytes copied from userspace; `None` if fewer were given.
    pub fn from_bytes(buf: &[u8]) -> Option<Self> {
        Some(Self {
            argsz: rd_u32(buf, 0)?,
            flags: rd_u32(buf, 4)?,
            iova: rd_u64(buf, 8)?,
            size: rd_u64(buf, 16)?,
        })
    }

    /// Encodes the structure for the copy back to userspace (`copy_to_user(arg, &unmap, minsz)`).
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[0..4].copy_from_slice(&self.argsz.to_ne_bytes());
        out[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        out[8..16].copy_from_slice(&self.iova.to_ne_bytes());
        out[16..24].copy_from_slice(&self.size.to_ne_bytes());
        out
    }
}

/// `struct vfio_bitmap`: a user bitmap description.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioBitmap {
    /// Page size represented by one bit, in bytes.
    pub pgsize: u64,
    /// Size of the user bitmap in bytes.
    pub size: u64,
    /// User pointer to the bitmap (kept as an integer; only the kernel dereferences it).
    pub data: u64,
}

impl VfioBitmap {
    /// Decodes `sizeof(struct vfio_bitmap)` bytes; `None` if fewer were given.
    pub fn from_bytes(buf: &[u8]) -> Option<Self> {
        Some(Self {
            pgsize: rd_u64(buf, 0)?,
            size: rd_u64(buf, 8)?,
            data: rd_u64(buf, 16)?,
        })
    }
}

/// `struct vfio_iommu_type1_dirty_bitmap` (fixed part).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// Size of the user structure as claimed by userspace.
    pub argsz: u32,
    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_*`.
    pub flags: u32,
}

impl DirtyBitmap {
    /// Decodes the first `DIRTY_BITMAP_MINSZ` bytes; `None` if fewer were given.
    pub fn from_bytes(buf: &[u8]) -> Option<Self> {
        Some(Self {
            argsz: rd_u32(buf, 0)?,
            flags: rd_u32(buf, 4)?,
        })
    }
}

/// `struct vfio_iommu_type1_dirty_bitmap_get`: the GET_BITMAP payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmapGet {
    /// First IO virtual address of the range.
    pub iova: u64,
    /// Size of the range in bytes.
    pub size: u64,
    /// Where and how to write the bitmap.
    pub bitmap: VfioBitmap,
}

impl DirtyBitmapGet {
    /// Decodes `DIRTY_BITMAP_GET_SIZE` bytes; `None` if fewer were given.
    pub fn from_bytes(buf: &[u8]) -> Option<Self> {
        Some(Self {
            iova: rd_u64(buf, 0)?,
            size: rd_u64(buf, 8)?,
            bitmap: VfioBitmap::from_bytes(buf.get(16..)?)?,
        })
    }
}

/// The ioctls served by the type1 backend (`vfio_iommu_type1_ioctl()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type1Ioctl {
    /// `VFIO_CHECK_EXTENSION`.
    CheckExtension,
    /// `VFIO_IOMMU_GET_INFO`.
    GetInfo,
    /// `VFIO_IOMMU_MAP_DMA`.
    MapDma,
    /// `VFIO_IOMMU_UNMAP_DMA`.
    UnmapDma,
    /// `VFIO_IOMMU_DIRTY_PAGES`.
    DirtyPages,
}

/// Mirrors the switch of `vfio_iommu_type1_ioctl()`: any other command is `ENOTTY`.
pub fn classify_ioctl(cmd: u32) -> Result<Type1Ioctl, super::errno::Errno> {
    match cmd {
        VFIO_CHECK_EXTENSION => Ok(Type1Ioctl::CheckExtension),
        VFIO_IOMMU_GET_INFO => Ok(Type1Ioctl::GetInfo),
        VFIO_IOMMU_MAP_DMA => Ok(Type1Ioctl::MapDma),
        VFIO_IOMMU_UNMAP_DMA => Ok(Type1Ioctl::UnmapDma),
        VFIO_IOMMU_DIRTY_PAGES => Ok(Type1Ioctl::DirtyPages),
        _ => Err(super::errno::ENOTTY),
    }
}
