// SPDX-License-Identifier: GPL-2.0

//! The kernel-independent device model: the `mtty-core` crate in `core/`,
//! mounted under its crate name (as kmod-iommu mounts `type1_core`).
//!
//! The same files build the host-tested `mtty-core` crate and, mounted here,
//! this module: they use only `core`, no `unsafe` and no allocation, and
//! refer to each other through `super::`. Their items are `pub` for the
//! host crate, hence the allowances below.
#![deny(unsafe_code)]
#![allow(
    unreachable_pub,
    dead_code,
    reason = "the core crate's public API is wider than what the module uses"
)]

#[path = "core/src/dma_engine.rs"]
pub(crate) mod dma_engine;
#[path = "core/src/migration.rs"]
pub(crate) mod migration;
#[path = "core/src/pci_config.rs"]
pub(crate) mod pci_config;
#[path = "core/src/rx_timeout.rs"]
pub(crate) mod rx_timeout;
#[path = "core/src/uart.rs"]
pub(crate) mod uart;
#[path = "core/src/wire.rs"]
pub(crate) mod wire;

// The model's page size (DMA descriptors, pin ranges, BAR2) is the kernel's.
const _: () = assert!(dma_engine::PAGE_SIZE == kernel::page::PAGE_SIZE as u64);
