/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C API our modules use beyond what the kernel's own Rust bindings
 * cover (rust/bindings/bindings_helper.h): VFIO (including the internal
 * IOMMU-backend interface of drivers/vfio/vfio.h), mdev, IOMMU groups,
 * page pinning and eventfds. xtask runs bindgen on this file with the
 * kernel's own recorded bindgen flags.
 */
#include <linux/anon_inodes.h>
#include <linux/eventfd.h>
#include <linux/iommu.h>
#include <linux/mdev.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/vfio.h>
#include <linux/vfio_pci_core.h>
#include <drivers/vfio/vfio.h>

#include "helpers.h"
