/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/eventfd.c. */
#ifndef KMOD_COMMON_HELPERS_EVENTFD_H
#define KMOD_COMMON_HELPERS_EVENTFD_H

#include <linux/types.h>

struct eventfd_ctx;

void kmod_helper_eventfd_signal(struct eventfd_ctx *ctx);
bool kmod_helper_is_err(const void *ptr);
long kmod_helper_ptr_err(const void *ptr);

#endif
