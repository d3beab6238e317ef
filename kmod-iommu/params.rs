// SPDX-License-Identifier: GPL-2.0

//! The module parameters, defined in `module_params.c` (as the C type1 has them:
//! `dma_entry_limit`, `disable_hugepages`, `allow_unsafe_interrupts`, all
//! writable at run time through `/sys/module/vfio_iommu_type1_rs/parameters/`).

use core::ptr::addr_of;

extern "C" {
    static type1_rs_allow_unsafe_interrupts: bool;
    static type1_rs_disable_hugepages: bool;
    static type1_rs_dma_entry_limit: ffi::c_uint;
}

/// `dma_entry_limit`: mappings a new container may hold.
pub(crate) fn dma_entry_limit() -> u32 {
    // SAFETY: the parameter is a plain `unsigned int` that sysfs may rewrite
    // at any time; a volatile read of an aligned word is what C does too.
    unsafe { core::ptr::read_volatile(addr_of!(type1_rs_dma_entry_limit)) }
}

/// `disable_hugepages`: map only `PAGE_SIZE` pages into IOMMU domains.
pub(crate) fn disable_hugepages() -> bool {
    // SAFETY: as for `dma_entry_limit`; the kernel's bool params are 0 or 1.
    unsafe { core::ptr::read_volatile(addr_of!(type1_rs_disable_hugepages)) }
}

/// `allow_unsafe_interrupts`: accept groups without interrupt remapping.
pub(crate) fn allow_unsafe_interrupts() -> bool {
    // SAFETY: as for `disable_hugepages`.
    unsafe { core::ptr::read_volatile(addr_of!(type1_rs_allow_unsafe_interrupts)) }
}

use kernel::ffi;
