// SPDX-License-Identifier: GPL-2.0

//! The module parameters, defined in `module_params.c` (as the C type1 has
//! them: `dma_entry_limit`, `disable_hugepages`, `allow_unsafe_interrupts`,
//! all writable at run time through `/sys/module/vfio_iommu_type1_rs/parameters/`).

#![deny(unsafe_code)]

use crate::module_param::c_module_params;

c_module_params! {
    static ALLOW_UNSAFE_INTERRUPTS: bool = "type1_rs_allow_unsafe_interrupts";
    static DISABLE_HUGEPAGES: bool = "type1_rs_disable_hugepages";
    static DMA_ENTRY_LIMIT: u32 = "type1_rs_dma_entry_limit";
}

/// `dma_entry_limit`: mappings a new container may hold.
pub(crate) fn dma_entry_limit() -> u32 {
    DMA_ENTRY_LIMIT.get()
}

/// `disable_hugepages`: map only `PAGE_SIZE` pages into IOMMU domains.
pub(crate) fn disable_hugepages() -> bool {
    DISABLE_HUGEPAGES.get()
}

/// `allow_unsafe_interrupts`: accept groups without interrupt remapping.
pub(crate) fn allow_unsafe_interrupts() -> bool {
    ALLOW_UNSAFE_INTERRUPTS.get()
}
