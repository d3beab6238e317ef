// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers for what Rust cannot reach in 6.12: static inline functions and
 * macros, one file per kernel subsystem under helpers/ (as the kernel's
 * rust/helpers/ does). Each module compiles this file in through a one-line
 * `helpers.c` of its own, so the symbols stay local to the module (no
 * EXPORT_SYMBOL).
 */
#include "helpers.h"

#include "helpers/iommu.c"
#include "helpers/mm.c"
#include "helpers/vfio.c"
#include "helpers/workqueue.c"
