// SPDX-License-Identifier: GPL-2.0
/* The shared C helpers, compiled into this module (see kmod-common/helpers.c). */
#include "../kmod-common/helpers.c"
