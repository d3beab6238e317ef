// SPDX-License-Identifier: GPL-2.0

//! The emulated 16550A serial mdev in Rust (work in progress; see docs/).

use kernel::prelude::*;

module! {
    type: MttyModule,
    name: "mtty_rs",
    author: "vfio-rs developers",
    description: "Emulated 16550A serial mdev with a DMA engine, in Rust",
    license: "GPL v2",
}

struct MttyModule;

impl kernel::Module for MttyModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(MttyModule)
    }
}
