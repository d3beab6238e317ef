// SPDX-License-Identifier: GPL-2.0
/*
 * Module parameters of vfio_iommu_type1_rs, with the names, types,
 * permissions and defaults of the C vfio_iommu_type1 (6.12 has no module
 * parameters for Rust modules, and module_param_named is a macro). Declared
 * in Rust by params.rs, through kmod-common/module_param.rs. A C file of its
 * own name: Kbuild would not know which of params.c and params.rs builds
 * params.o.
 */
#include <linux/limits.h>
#include <linux/moduleparam.h>

bool type1_rs_allow_unsafe_interrupts;
module_param_named(allow_unsafe_interrupts, type1_rs_allow_unsafe_interrupts, bool, 0644);
MODULE_PARM_DESC(allow_unsafe_interrupts,
		 "Enable VFIO IOMMU support for on platforms without interrupt remapping support.");

bool type1_rs_disable_hugepages;
module_param_named(disable_hugepages, type1_rs_disable_hugepages, bool, 0644);
MODULE_PARM_DESC(disable_hugepages,
		 "Disable VFIO IOMMU support for IOMMU hugepages.");

unsigned int type1_rs_dma_entry_limit = U16_MAX;
module_param_named(dma_entry_limit, type1_rs_dma_entry_limit, uint, 0644);
MODULE_PARM_DESC(dma_entry_limit,
		 "Maximum number of user DMA mappings per container (65535).");
