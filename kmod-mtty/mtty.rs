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
//! - [`model`]: the kernel-independent device model (`core/`).
//!
//! Design, lock order and differences from the sample: `docs/mtty.md`.

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
mod model;
mod parent;
mod rx_timer;

module! {
    type: MttyModule,
    name: "mtty_rs",
    author: "vfio-rs developers",
    description: "Emulated 16550A serial mdev with a DMA engine, in Rust",
    license: "GPL v2",
}

struct MttyModule {
    _parent: Pin<KBox<mdev::Parent<parent::MttyDriver>>>,
}

impl kernel::Module for MttyModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let parent = KBox::try_pin_init(mdev::Parent::new(module, ()), GFP_KERNEL)?;
        Ok(MttyModule { _parent: parent })
    }
}
