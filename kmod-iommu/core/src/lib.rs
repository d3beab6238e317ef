//! Kernel-independent logic of the VFIO "type1" IOMMU backend.
//!
//! Every rule in this crate is derived from `drivers/vfio/vfio_iommu_type1.c`
//! of Linux 6.12 (plus the small wrappers in `vfio_main.c` and
//! `container.c`) so that the Rust kernel module returns the same errno for
//! the same bad input as the C reference.  The crate is `no_std` without
//! `alloc`: wherever the C code keeps a container (the `dma_list` rbtree, a
//! `pfn_list` rbtree, the `iova_list`), the logic here is generic over a
//! small trait that the kernel implements over `kernel::rbtree::RBTree` and
//! the host tests implement over `std::collections::BTreeMap`.
//!
//! The source files are also compiled into the kernel module through
//! `#[path]` includes, which is why modules only refer to each other through
//! `super::name::Item` and this file contains nothing but module lines.
#![no_std]
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod acct;
pub mod container;
pub mod dirty;
pub mod dma;
pub mod errno;
pub mod info;
pub mod iova;
pub mod map;
pub mod pin;
pub mod uapi;
pub mod unmap;
