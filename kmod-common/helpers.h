/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of the C helpers (helpers.c), one header per kernel subsystem, for bindgen and the helpers. */
#ifndef KMOD_COMMON_HELPERS_H
#define KMOD_COMMON_HELPERS_H

#include "helpers/iommu.h"
#include "helpers/mm.h"
#include "helpers/vfio.h"
#include "helpers/workqueue.h"

#endif
