// SPDX-License-Identifier: GPL-2.0

//! The mtty sample (`samples/vfio-mdev/mtty.c`) in Rust: an mdev parent
//! whose instances are emulated PCI serial cards with 16550A UARTs, plus a
//! DMA engine that reaches user memory through VFIO page pinning.
//!
//! - [`parent`]: the mdev parent, its types and the instance life cycle.
//! - [`device`]: one instance as a VFIO device (regions, ioctls, locking).
//! - [`irq`]: INTx/MSI through eventfds, as a level.
//! - [`dma`]: runs the DMA engine with pinned pages.
//! - [`migration`]: VFIO migration v2.
//! - [`rx_timer`]: the UART character-timeout timer.
//! - [`mtty_core`]: the kernel-independent device model (`core/`).
//!
//! This file mounts the modules and expands `module!`, which holds unsafe
//! code; its own items deny it, every other driver file denies it whole.
//! The lock order: [`device`] ("Locking"). Design and differences from the
//! sample: `docs/mtty.md`.

use kernel::prelude::*;

#[path = "../kmod-common/bindings.rs"]
mod bindings;
#[path = "../kmod-common/delayed_work.rs"]
mod delayed_work;
#[path = "../kmod-common/eventfd.rs"]
mod eventfd;
#[path = "../kmod-common/mdev.rs"]
mod mdev;
#[path = "../kmod-common/vfio_device.rs"]
mod vfio_device;

mod device;
mod dma;
mod irq;
mod migration;
mod mtty_core;
mod parent;
mod rx_timer;

module! {
    type: MttyModule,
    name: "mtty_rs",
    author: "vfio-rs developers",
    description: "Emulated 16550A serial mdev with a DMA engine, in Rust",
    license: "GPL v2",
}

#[deny(unsafe_code)]
struct MttyModule {
    _parent: Pin<KBox<mdev::Parent<parent::MttyDriver>>>,
}

#[deny(unsafe_code)]
impl kernel::Module for MttyModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let parent = KBox::try_pin_init(mdev::Parent::new(module, ()), GFP_KERNEL)?;
        Ok(MttyModule { _parent: parent })
    }
}
