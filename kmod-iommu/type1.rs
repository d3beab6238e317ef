// SPDX-License-Identifier: GPL-2.0

//! `vfio_iommu_type1_rs`: the VFIO type1 IOMMU backend in Rust.
//!
//! Serves `/dev/vfio/vfio` containers with the uAPI and errnos of
//! `drivers/vfio/vfio_iommu_type1.c` (Linux 6.12), and keeps the devices
//! that pin pages on a per-container list whose `dma_unmap` callbacks an
//! unmap calls directly. Load it instead of `vfio_iommu_type1`, never
//! beside it: the VFIO core would offer containers to both.
//!
//! Files: `container.rs` (state, locks, callbacks; the lock order is stated
//! there and only there), `real_iommu.rs` and `real_iommu/` (groups behind a
//! real IOMMU: domains, pinning and IOMMU page tables), `ioctl.rs` (the
//! uAPI), `store.rs` (mappings in rbtrees, their nodes from slab caches),
//! `params.rs` (module parameters); the rules live in the `no_std` crate
//! `core/` (`type1_core`), the FFI and every `unsafe` block in
//! `../kmod-common/`. This file mounts those and expands `module!`, which
//! hold unsafe code; its own items deny it.

use kernel::{c_str, prelude::*};

#[path = "../kmod-common/bindings.rs"]
mod bindings;
#[path = "../kmod-common/iommu_domain.rs"]
mod iommu_domain;
#[path = "../kmod-common/kvec_ext.rs"]
mod kvec_ext;
#[path = "../kmod-common/mm.rs"]
mod mm;
#[path = "../kmod-common/module_param.rs"]
mod module_param;
#[path = "../kmod-common/mutex.rs"]
mod mutex;
#[path = "../kmod-common/rb_map.rs"]
mod rb_map;
#[path = "../kmod-common/slab.rs"]
mod slab;
#[path = "../kmod-common/vfio_iommu.rs"]
mod vfio_iommu;
#[path = "../kmod-common/vfio_iommu_devices.rs"]
mod vfio_iommu_devices;

mod container;
mod ioctl;
mod params;
mod real_iommu;
mod store;

/// The kernel-independent rules, shared with the host tests (`cargo test -p type1-core`).
#[path = "core/src"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod type1_core {
    pub(crate) mod acct;
    pub(crate) mod container;
    pub(crate) mod dirty;
    pub(crate) mod dma;
    pub(crate) mod errno;
    pub(crate) mod info;
    pub(crate) mod iova;
    pub(crate) mod map;
    pub(crate) mod pin;
    pub(crate) mod uapi;
    pub(crate) mod unmap;
}

// The core, and every file that converts between pages and bytes, assume
// 4 KiB pages: the kernel's must be those.
const _: () = assert!(type1_core::container::PAGE_SHIFT as usize == kernel::page::PAGE_SHIFT);

use container::Container;
use iommu_domain::DomainHandle;
use slab::ModuleCacheGuard;
use vfio_iommu::{DmaRwBuffer, IommuDriver, PinnedPages, Registration};
use vfio_iommu_devices::{GroupType, IommuGroup, Registering, Unregistering};

module! {
    type: Type1Module,
    name: "vfio_iommu_type1_rs",
    author: "vfio-rs developers",
    description: "VFIO type1 IOMMU backend in Rust",
    license: "GPL v2",
}

#[deny(unsafe_code)]
struct Type1;

#[deny(unsafe_code)]
#[vtable]
impl IommuDriver for Type1 {
    type Data = Container;

    fn open(kind: u64) -> Result<Pin<KBox<Container>>> {
        Container::open(kind)
    }

    // Inlined into the C trampoline: one frame less in every stack trace
    // the debug kernel saves (KASAN, kmemleak) for the ioctls' allocations.
    #[inline(always)]
    fn ioctl(c: Option<&Container>, cmd: u32, arg: usize) -> Result<isize> {
        ioctl::ioctl(c, cmd, arg)
    }

    fn attach_group(c: &Container, group: &IommuGroup, kind: GroupType) -> Result {
        c.attach_group(group, kind)
    }

    fn detach_group(c: &Container, group: &IommuGroup) {
        c.detach_group(group)
    }

    // Inlined into the trampoline, as `ioctl`.
    #[inline(always)]
    fn pin_pages(c: &Container, group: &IommuGroup, iova: u64, prot: i32, pages: PinnedPages<'_>) -> Result<usize> {
        c.pin_pages(group, iova, prot, pages)
    }

    fn unpin_pages(c: &Container, iova: u64, npage: usize) {
        c.unpin_pages(iova, npage)
    }

    fn register_device(c: &Container, dev: Registering<'_>) {
        c.register_device(dev)
    }

    fn unregister_device(c: &Container, dev: Unregistering<'_>) {
        c.unregister_device(dev)
    }

    // Inlined into the trampoline, as `ioctl`.
    #[inline(always)]
    fn dma_rw(c: &Container, iova: u64, buf: DmaRwBuffer<'_>) -> Result {
        c.dma_rw(iova, buf)
    }

    fn group_iommu_domain(c: &Container, group: &IommuGroup) -> Result<DomainHandle> {
        // Emulated groups have none (`ENODEV`, as in C).
        c.state.lock().domains.group_domain(group.key()).ok_or(ENODEV)
    }
}

#[deny(unsafe_code)]
struct Type1Module {
    // Dropped in this order: no container is left once the backend is
    // unregistered (each holds a module reference), so no mapping node is
    // left when the cache goes.
    _reg: Pin<KBox<Registration<Type1>>>,
    _dma_nodes: ModuleCacheGuard<rb_map::Node<store::Dma>>,
    _pfn_nodes: ModuleCacheGuard<rb_map::Node<store::DevicePage>>,
    _run_nodes: ModuleCacheGuard<rb_map::Node<iommu_domain::MappedRun>>,
}

#[deny(unsafe_code)]
impl kernel::Module for Type1Module {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let dma_nodes = store::DMA_NODES.create(c_str!("vfio_dma_rs"))?;
        let pfn_nodes = store::PFN_NODES.create(c_str!("vfio_pfn_rs"))?;
        let run_nodes = iommu_domain::RUN_NODES.create(c_str!("vfio_run_rs"))?;
        let reg = KBox::try_pin_init(Registration::new(c_str!("vfio-iommu-type1-rs"), module), GFP_KERNEL)?;
        Ok(Type1Module { _reg: reg, _dma_nodes: dma_nodes, _pfn_nodes: pfn_nodes, _run_nodes: run_nodes })
    }
}
