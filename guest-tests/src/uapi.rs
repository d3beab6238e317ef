//! The VFIO uAPI the suites use (`include/uapi/linux/vfio.h`).
//!
//! The argument structs and the flag and index constants come from
//! rust-vmm's `vfio-bindings`: bindgen's output for the kernel's own header,
//! with bindgen's size and offset checks, and no code of ours (docs/testing.md
//! says why the suite takes them from there). Written out here is only what
//! those bindings lack:
//!
//! - the ioctl numbers: `_IO()` macros, which bindgen does not expand;
//! - `VFIO_TYPE1_NESTING_IOMMU`, which 6.12 still defines and the header the
//!   bindings come from (a newer kernel's) no longer does;
//! - the plain names of `enum vfio_device_mig_state`'s values (bindgen
//!   prefixes them with the enum's name);
//! - the arguments made of a header struct that ends in a flexible array and
//!   its payload (GET_BITMAP, unmap with a bitmap, one-eventfd SET_IRQS,
//!   device features): flat `Copy` structs, so that a case can copy one and
//!   change a field, each checked at compile time, field by field, against
//!   the generated header and payload structs ([`same_layout!`]).

#![allow(dead_code, reason = "the uAPI's numbers as a set, not only those the suites use today")]

pub use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_iommu_type1_info, vfio_irq_info,
    vfio_precopy_info, vfio_region_info, VFIO_API_VERSION, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_SET, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
    VFIO_DMA_CC_IOMMU,
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_DMA_UNMAP_FLAG_VADDR, VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_START, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
    VFIO_MIGRATION_STOP_COPY, VFIO_NOIOMMU_IOMMU, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX,
    VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_PCI_VGA_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU,
    VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR,
};
use vfio_bindings::bindings::vfio as gen;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: every VFIO ioctl has no size or
/// direction bits.
const fn vfio_io(n: u32) -> u64 {
    ((gen::VFIO_TYPE as u64) << 8) | (gen::VFIO_BASE + n) as u64
}

pub const VFIO_GET_API_VERSION: u64 = vfio_io(0);
pub const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
pub const VFIO_SET_IOMMU: u64 = vfio_io(2);
pub const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
pub const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
pub const VFIO_DEVICE_RESET: u64 = vfio_io(11);
pub const VFIO_IOMMU_GET_INFO: u64 = vfio_io(12);
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);
pub const VFIO_IOMMU_DIRTY_PAGES: u64 = vfio_io(17);
pub const VFIO_DEVICE_FEATURE: u64 = vfio_io(17);
pub const VFIO_MIG_GET_PRECOPY_INFO: u64 = vfio_io(21);

/// Removed from the header after 6.12 (the nesting type never had a
/// backend); 6.12's type1 still answers CHECK_EXTENSION for it.
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;

pub const VFIO_DEVICE_STATE_ERROR: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR;
pub const VFIO_DEVICE_STATE_STOP: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP;
pub const VFIO_DEVICE_STATE_RUNNING: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING;
pub const VFIO_DEVICE_STATE_STOP_COPY: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY;
pub const VFIO_DEVICE_STATE_RESUMING: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING;
pub const VFIO_DEVICE_STATE_RUNNING_P2P: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P;
pub const VFIO_DEVICE_STATE_PRE_COPY: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY;
pub const VFIO_DEVICE_STATE_PRE_COPY_P2P: u32 = gen::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P;

/// `struct vfio_irq_set` with room for one eventfd.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct IrqSet1 {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
    pub data: i32,
}

/// `struct vfio_device_feature` followed by `struct vfio_device_feature_mig_state`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct FeatureMigState {
    pub argsz: u32,
    pub flags: u32,
    pub device_state: u32,
    pub data_fd: i32,
}

/// `struct vfio_device_feature` followed by `struct vfio_device_feature_migration`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct FeatureMigration {
    pub argsz: u32,
    pub flags: u32,
    pub migration_flags: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` followed by the `struct vfio_bitmap`
/// of `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DmaUnmapBitmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
    pub pgsize: u64,
    pub bitmap_size: u64,
    pub data: u64,
}

/// `struct vfio_iommu_type1_dirty_bitmap` followed by the `struct
/// vfio_iommu_type1_dirty_bitmap_get` of `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DirtyGet {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
    pub pgsize: u64,
    pub bitmap_size: u64,
    pub data: u64,
}

/// Checks that a flat argument struct lays its payload out as the generated
/// header struct followed by the generated payload struct, field for field
/// (`$flat.$f` at `$head`'s size plus `$payload.$g`'s offset), and holds all of it.
macro_rules! same_layout {
    ($flat:ty = $head:ty, $payload:ty; $($f:ident: $g:ident$(.$h:ident)?),*) => {
        const _: () = {
            use core::mem::{offset_of, size_of};
            assert!(offset_of!($flat, argsz) == offset_of!($head, argsz));
            assert!(offset_of!($flat, flags) == offset_of!($head, flags));
            $(assert!(offset_of!($flat, $f) == size_of::<$head>() + offset_of!($payload, $g$(.$h)?));)*
            assert!(size_of::<$flat>() >= size_of::<$head>() + size_of::<$payload>());
        };
    };
}

/// The payload of a `DATA_EVENTFD` set of one interrupt.
#[repr(C)]
struct IrqSetData<T> {
    data: T,
}

same_layout!(IrqSet1 = gen::vfio_irq_set, IrqSetData<i32>; data: data);
same_layout!(FeatureMigState = gen::vfio_device_feature, gen::vfio_device_feature_mig_state; device_state: device_state, data_fd: data_fd);
same_layout!(FeatureMigration = gen::vfio_device_feature, gen::vfio_device_feature_migration; migration_flags: flags);
same_layout!(DmaUnmapBitmap = gen::vfio_iommu_type1_dma_unmap, gen::vfio_bitmap; pgsize: pgsize, bitmap_size: size, data: data);
same_layout!(DirtyGet = gen::vfio_iommu_type1_dirty_bitmap, gen::vfio_iommu_type1_dirty_bitmap_get; iova: iova, size: size, pgsize: bitmap.pgsize, bitmap_size: bitmap.size, data: bitmap.data);
const _: () = assert!(core::mem::offset_of!(DmaUnmapBitmap, iova) == core::mem::offset_of!(vfio_iommu_type1_dma_unmap, iova));
const _: () = assert!(core::mem::offset_of!(DmaUnmapBitmap, size) == core::mem::offset_of!(vfio_iommu_type1_dma_unmap, size));

/// `argsz` of an argument: its whole size.
pub const fn argsz<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// The argument of a plain `VFIO_IOMMU_UNMAP_DMA` (no payload).
pub fn dma_unmap(flags: u32, iova: u64, size: u64) -> vfio_iommu_type1_dma_unmap {
    vfio_iommu_type1_dma_unmap { argsz: argsz::<vfio_iommu_type1_dma_unmap>(), flags, iova, size, ..Default::default() }
}

// The byte offset the suites' capability walks read `cap_offset` at.
const _: () = assert!(core::mem::offset_of!(vfio_iommu_type1_info, cap_offset) == 16);
