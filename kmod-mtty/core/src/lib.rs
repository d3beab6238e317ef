//! Kernel-independent logic of the Rust port of the `mtty` sample device.
//!
//! The modules below hold everything of the emulated device that does not
//! need the kernel: the 16550A UART model (`uart`), the emulated PCI
//! configuration space (`pci_config`), the DMA engine behind BAR2
//! (`dma_engine`) and the migration stream format (`migration`), plus the
//! little-endian snapshot helpers they share (`wire`). The kernel
//! module mounts these files with `#[path]`, so they refer to each other only
//! through `super::` (and `dma_engine.rs` names its own children with
//! `#[path]`), use no allocation, no floating point and no `unsafe`, and
//! never panic on any input.
#![no_std]
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

pub mod dma_engine;
pub mod migration;
pub mod pci_config;
pub mod rx_timeout;
pub mod uart;
pub mod wire;
