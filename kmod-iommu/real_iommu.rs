// SPDX-License-Identifier: GPL-2.0

//! The real-IOMMU path: groups whose devices reach memory through IOMMU
//! page tables (`vfio-pci` behind VT-d, AMD-Vi, SMMU, ...), as
//! `drivers/vfio/vfio_iommu_type1.c` serves them.
//!
//! # What happens
//!
//! - **Attach** (`attach.rs`): a paging domain is allocated for the group's
//!   IOMMU and the group attached to it; the domain's aperture and the
//!   group's reserved regions must not cover an existing mapping (`EINVAL`)
//!   and shrink the container's list of valid IOVA ranges; a group without
//!   interrupt isolation is refused (`EPERM`) unless
//!   `allow_unsafe_interrupts`; the domain enforces cache coherency if the
//!   IOMMU can. If an existing domain has the same IOMMU driver and the same
//!   coherency, the group joins it and the new domain is freed; otherwise
//!   every existing mapping is replayed into the new domain (copied from
//!   the first domain's page tables, or pinned now if no domain had it),
//!   and a software MSI window gets its cookie.
//! - **Map** (`pin_map.rs`): the whole range is pinned at `MAP_DMA` time, in
//!   batches of up to 512 pages (`pin_user_pages_remote`, `FOLL_LONGTERM`),
//!   charged to the mapping process's `locked_vm` (pages a device already
//!   pinned through `vfio_pin_pages` are charged already), and mapped into
//!   every domain as physically contiguous runs, so that the IOMMU can use
//!   its large pages; runs shorter than 2 MiB are gathered and mapped with
//!   one `iommu_map_sg` per domain (`iommu_domain::RunList`: one map-time
//!   IOTLB sync per list, not per run). `disable_hugepages` maps page by
//!   page.
//!   Device memory (`VM_IO`/`VM_PFNMAP`: BARs) is looked up instead of
//!   pinned, one page-table entry at a time (`MmUsers::pin_or_follow` in
//!   kmod-common/mm.rs), and neither pinned nor charged.
//! - **Unmap** (`unmap.rs`): one call of `DomainSet::unmap_unpin`
//!   (kmod-common/iommu_domain.rs). A mapping that pinned nothing (device
//!   memory only) is unmapped from each domain in one call. Otherwise every
//!   domain but the first is unmapped in one call; the first is walked
//!   with `iova_to_phys` to find the contiguous runs to unpin, unmapped
//!   with `iommu_unmap_fast`, and its
//!   IOTLB flushed once per 512 runs before those runs are unpinned (a page
//!   must not be unpinned while the IOTLB may still reach it).
//!
//! # Who owns the pins
//!
//! Pins are values (`mm::PinnedRun`); the domains (`iommu_domain::DomainSet`)
//! own those their page tables map, take them only through `map` or a
//! replay, and give them back only through `unmap_unpin`. This path keeps
//! the accounting: `locked_vm` charges from the counts the set returns.
//! - **Detach** (`attach.rs`): the group leaves its domain; an empty domain is
//!   freed. When the last domain goes, all mappings go too, unless mdev
//!   groups remain: then only the IOMMU pins go and the pages devices
//!   pinned are charged again.
//!
//! # Files
//!
//! - `attach.rs`: attach and detach, the domain list and the IOVA ranges.
//! - `pin_map.rs`: pinning a mapping and mapping it into the domains.
//! - `unmap.rs`: unmapping and unpinning, with gathered IOTLB flushes.
//! - `replay.rs`: making a new domain map every existing mapping.
//!
//! The C IOMMU subsystem itself is wrapped in `kmod-common/iommu_domain.rs`.
//!
//! # Locks
//!
//! Everything here runs under the container lock; what it takes below that
//! lock is part of the lock order stated in `container.rs`.
//!
//! # Differences from the reference
//!
//! - Pages are pinned in the mapping process's mm (the one `MAP_DMA`
//!   recorded), also when another process attaches a group and the
//!   mappings are replayed; C pins in the calling process's mm.
//! - Device memory is looked up as far as one page-table entry maps it
//!   (2 MiB, 1 GiB), where C looks up 4 KiB per step.
//! - The MSI cookie is taken before the replay, so its failure leaves
//!   nothing pinned; C takes it after the replay and leaks the replay's
//!   pins on that (theoretical) failure.
//! - The fine-grained superpage probe (`vfio_test_domain_fgsp`) is not
//!   made: unmap always looks for contiguous runs, which is what C does on
//!   IOMMUs with discrete superpage sizes such as VT-d.
//! - Runs shorter than 2 MiB are mapped a list at a time with
//!   `iommu_map_sg`, which syncs the IOMMU's map-time caches once per list;
//!   C calls `iommu_map`, which syncs once per run. The page-table entries
//!   are the same.

#![deny(unsafe_code)]

mod attach;
mod pin_map;
mod replay;
mod unmap;

pub(crate) use attach::{attach, detach};
pub(crate) use pin_map::map_new;
pub(crate) use unmap::remove_dma;

use crate::iommu_domain::{DomainHandle, DomainSet};
use crate::type1_core::container::update_pgsize_bitmap;
use crate::type1_core::iova::VfioIova;
use crate::vfio_iommu_devices::GroupKey;
use kernel::prelude::*;

// type1_core's protection bits are the kernel's, passed to `iommu_map` as they are.
const _: () = assert!(
    crate::type1_core::uapi::IOMMU_READ == crate::iommu_domain::IOMMU_READ
        && crate::type1_core::uapi::IOMMU_WRITE == crate::iommu_domain::IOMMU_WRITE
);

/// The container's IOMMU domains and its valid IOVA ranges (the C
/// `domain_list` and `iova_list`). Protected by the container lock.
pub(crate) struct Domains {
    /// The domains, which own the pins of the pages they map
    /// (kmod-common/iommu_domain.rs).
    set: DomainSet,
    /// Empty until the first IOMMU-backed group: every IOVA is valid then.
    iovas: KVec<VfioIova>,
}

impl Domains {
    pub(crate) fn new() -> Self {
        Domains { set: DomainSet::new(), iovas: KVec::new() }
    }

    /// The valid IOVA ranges (empty: all are valid).
    pub(crate) fn iovas(&self) -> &[VfioIova] {
        &self.iovas
    }

    /// Whether every domain enforces cache coherency (true with none).
    pub(crate) fn all_enforce_cc(&self) -> bool {
        self.set.domains().iter().all(|d| d.enforces_cc())
    }

    /// How many groups are attached to domains.
    pub(crate) fn group_count(&self) -> usize {
        self.set.domains().iter().map(|d| d.group_count()).sum()
    }

    /// Whether the container has no IOMMU domain (then mappings are not
    /// pinned at `MAP_DMA` time).
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The domain `key`'s group is attached to.
    pub(crate) fn group_domain(&self, key: GroupKey) -> Option<DomainHandle> {
        self.set.domains().iter().find(|d| d.has_group(key)).map(|d| d.handle())
    }

    fn pgsize_bitmap(&self) -> u64 {
        update_pgsize_bitmap(self.set.domains().iter().map(|d| d.pgsize_bitmap()))
    }
}

