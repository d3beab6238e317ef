//! Container-wide state of a type1 container (the C `struct vfio_iommu`)
//! minus the kernel objects. (Not the kernel's IOMMU subsystem, which the
//! module reaches through `kmod-common/iommu_domain.rs`.)
//!
//! The kernel module keeps the lists of domains, groups and devices itself;
//! this struct holds the counters and flags that the validation rules read,
//! and the kernel keeps the three `has_*` flags in sync with its lists.

use super::errno::{Errno, EBUSY, EINVAL};
use super::uapi::{
    VFIO_DMA_CC_IOMMU, VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU, VFIO_TYPE1_NESTING_IOMMU,
    VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR,
};

/// `PAGE_SHIFT` of the kernel the module is built for: type1 assumes 4 KiB
/// pages. `kmod-iommu/type1.rs`, where this crate is mounted, asserts that
/// the kernel's `PAGE_SHIFT` matches.
pub const PAGE_SHIFT: u32 = 12;
/// `PAGE_SIZE`.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// `PAGE_MASK`: clears the offset within a page.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

/// Default of the `dma_entry_limit` module parameter (`U16_MAX`).
pub const DMA_ENTRY_LIMIT_DEFAULT: u32 = u16::MAX as u32;

/// The counters and flags of `struct vfio_iommu` that the type1 rules depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioIommu {
    /// How many more mappings may be created (`dma_avail`, starts at `dma_entry_limit`).
    pub dma_avail: u32,
    /// Number of mappings whose vaddr was invalidated with `VFIO_DMA_UNMAP_FLAG_VADDR`.
    pub vaddr_invalid_count: u32,
    /// Page sizes supported by every domain (`pgsize_bitmap`).
    pub pgsize_bitmap: u64,
    /// Number of IOMMU-backed groups that have not proven they only dirty pinned pages.
    pub num_non_pinned_groups: u64,
    /// The container was opened as type1v2 (or nesting), which changes unmap rules.
    pub v2: bool,
    /// The container was opened as `VFIO_TYPE1_NESTING_IOMMU`.
    pub nesting: bool,
    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START` is in effect.
    pub dirty_page_tracking: bool,
    /// `!list_empty(&iommu->domain_list)`: at least one IOMMU-backed domain exists.
    pub has_domains: bool,
    /// `!list_empty(&iommu->emulated_iommu_groups)`: an mdev-style group is attached.
    pub has_emulated_groups: bool,
    /// `!list_empty(&iommu->device_list)`: a device with a `dma_unmap` callback is registered.
    pub has_devices: bool,
}

impl VfioIommu {
    /// Mirrors `vfio_iommu_type1_open()`: picks v1/v2/nesting from the extension
    /// argument, returning `EINVAL` for any other value.
    pub fn open(arg: u64, dma_entry_limit: u32) -> Result<Self, Errno> {
        let (v2, nesting) = match arg {
            VFIO_TYPE1_IOMMU => (false, false),
            VFIO_TYPE1_NESTING_IOMMU => (true, true),
            VFIO_TYPE1V2_IOMMU => (true, false),
            _ => return Err(EINVAL),
        };
        Ok(Self {
            dma_avail: dma_entry_limit,
            vaddr_invalid_count: 0,
            // The C code starts with PAGE_MASK: every power of two >= PAGE_SIZE.
            pgsize_bitmap: PAGE_MASK,
            num_non_pinned_groups: 0,
            v2,
            nesting,
            dirty_page_tracking: false,
            has_domains: false,
            has_emulated_groups: false,
            has_devices: false,
        })
    }

    /// The smallest supported page shift, `__ffs(iommu->pgsize_bitmap)`.
    ///
    /// The C code never guards against an empty bitmap (`__ffs(0)` is
    /// undefined); we report `EINVAL` instead so no computation shifts by 64.
    pub fn pgshift(&self) -> Result<u32, Errno> {
        min_pgshift(self.pgsize_bitmap)
    }

    /// The smallest supported page size, `(size_t)1 << __ffs(iommu->pgsize_bitmap)`.
    pub fn min_pgsize(&self) -> Result<u64, Errno> {
        min_pgsize(self.pgsize_bitmap)
    }

    /// Mirrors the first checks of `vfio_iommu_type1_attach_group()`: `EBUSY`
    /// while any vaddr is invalid (attaching may need to pin), then `EINVAL`
    /// if the group is already attached to this container.
    pub fn attach_group_check(&self, already_attached: bool) -> Result<(), Errno> {
        if self.vaddr_invalid_count != 0 {
            return Err(EBUSY);
        }
        if already_attached {
            return Err(EINVAL);
        }
        Ok(())
    }

    /// Bookkeeping of a successful attach: an IOMMU-backed group can dirty
    /// memory directly, so it demotes the dirty scope until it pins pages
    /// (`num_non_pinned_groups++`); an emulated group starts in pinned scope
    /// and only makes `has_emulated_groups` true.
    pub fn group_attached(&mut self, emulated: bool) {
        if emulated {
            self.has_emulated_groups = true;
        } else {
            self.num_non_pinned_groups = self.num_non_pinned_groups.saturating_add(1);
        }
    }
}

/// `__ffs(bitmap)` with the undefined zero case reported as `EINVAL`.
pub fn min_pgshift(pgsize_bitmap: u64) -> Result<u32, Errno> {
    if pgsize_bitmap == 0 {
        return Err(EINVAL);
    }
    Ok(pgsize_bitmap.trailing_zeros())
}

/// `1 << __ffs(bitmap)` with the undefined zero case reported as `EINVAL`.
pub fn min_pgsize(pgsize_bitmap: u64) -> Result<u64, Errno> {
    let shift = min_pgshift(pgsize_bitmap)?;
    1u64.checked_shl(shift).ok_or(EINVAL)
}

/// Mirrors `vfio_update_pgsize_bitmap()`: the intersection of every domain's
/// page sizes, with sub-page sizes hidden behind `PAGE_SIZE` so userspace
/// always maps in pinning granularity.
pub fn update_pgsize_bitmap<I: IntoIterator<Item = u64>>(domain_pgsize_bitmaps: I) -> u64 {
    let mut bitmap = u64::MAX;
    for d in domain_pgsize_bitmaps {
        bitmap &= d;
    }
    if bitmap & !PAGE_MASK != 0 {
        bitmap &= PAGE_MASK;
        bitmap |= PAGE_SIZE;
    }
    bitmap
}

/// Mirrors `vfio_iommu_type1_check_extension()`.
///
/// `iommu` is `None` when the query is made on a container that has no
/// backend yet; otherwise it carries `!list_empty(&emulated_iommu_groups)`
/// and whether every domain enforces cache coherency (true with no domain,
/// like `vfio_domains_have_enforce_cache_coherency()`).
pub fn check_extension(arg: u64, iommu: Option<(bool, bool)>) -> i64 {
    check_extension_with(arg, || iommu)
}

/// [`check_extension`], asking for the container's state only for the
/// extensions whose answer depends on it (the C code takes the container
/// lock for those two only).
pub fn check_extension_with(arg: u64, iommu: impl FnOnce() -> Option<(bool, bool)>) -> i64 {
    match arg {
        VFIO_TYPE1_IOMMU | VFIO_TYPE1V2_IOMMU | VFIO_TYPE1_NESTING_IOMMU | VFIO_UNMAP_ALL => 1,
        // The vaddr feature is hidden while mdevs are present: they cannot
        // safely pin or access memory while a vaddr is being replaced.
        VFIO_UPDATE_VADDR => match iommu() {
            Some((has_emulated, _)) => i64::from(!has_emulated),
            None => 0,
        },
        VFIO_DMA_CC_IOMMU => match iommu() {
            Some((_, all_cc)) => i64::from(all_cc),
            None => 0,
        },
        _ => 0,
    }
}
