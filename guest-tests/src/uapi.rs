//! The VFIO uAPI (`include/uapi/linux/vfio.h` of Linux 6.12), written out by
//! hand: the ioctl numbers and the argument structs the suites use.

#![allow(dead_code)]

/// `_IO(';', 100 + n)`: every VFIO ioctl has no size or direction bits.
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}

pub const VFIO_API_VERSION: i32 = 0;
pub const VFIO_TYPE1_IOMMU: u64 = 1;
pub const VFIO_TYPE1V2_IOMMU: u64 = 3;
pub const VFIO_DMA_CC_IOMMU: u64 = 4;
pub const VFIO_TYPE1_NESTING_IOMMU: u64 = 6;
pub const VFIO_NOIOMMU_IOMMU: u64 = 8;
pub const VFIO_UNMAP_ALL: u64 = 9;
pub const VFIO_UPDATE_VADDR: u64 = 10;

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

pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;

pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;

pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;

pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct GroupStatus {
    pub argsz: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct Type1Info {
    pub argsz: u32,
    pub flags: u32,
    pub iova_pgsizes: u64,
    pub cap_offset: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DmaMap {
    pub argsz: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub iova: u64,
    pub size: u64,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

/// `struct vfio_bitmap`, which follows `DmaUnmap` for GET_DIRTY_BITMAP.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct Bitmap {
    pub pgsize: u64,
    pub size: u64,
    pub data: u64,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct IrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

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

/// Size of a uAPI struct as the `argsz` field wants it.
pub const fn argsz<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

// ---- mtty suites: interrupts, migration (appended) ----

pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

pub const VFIO_DEVICE_FEATURE: u64 = vfio_io(17);
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;
pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
pub const VFIO_MIGRATION_PRE_COPY: u64 = 1 << 2;
pub const VFIO_MIG_GET_PRECOPY_INFO: u64 = vfio_io(21);

pub const VFIO_DEVICE_STATE_ERROR: u32 = 0;
pub const VFIO_DEVICE_STATE_STOP: u32 = 1;
pub const VFIO_DEVICE_STATE_RUNNING: u32 = 2;
pub const VFIO_DEVICE_STATE_STOP_COPY: u32 = 3;
pub const VFIO_DEVICE_STATE_RESUMING: u32 = 4;
pub const VFIO_DEVICE_STATE_RUNNING_P2P: u32 = 5;
pub const VFIO_DEVICE_STATE_PRE_COPY: u32 = 6;
pub const VFIO_DEVICE_STATE_PRE_COPY_P2P: u32 = 7;

/// `struct vfio_irq_set` with one byte of `DATA_BOOL` payload.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct IrqSetBool {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
    pub data: u8,
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

/// `struct vfio_precopy_info`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct PrecopyInfo {
    pub argsz: u32,
    pub flags: u32,
    pub initial_bytes: u64,
    pub dirty_bytes: u64,
}
