// SPDX-License-Identifier: GPL-2.0
/* eventfd signalling (../eventfd.rs) and ERR_PTR decoding. */
#include <linux/err.h>
#include <linux/eventfd.h>

void kmod_helper_eventfd_signal(struct eventfd_ctx *ctx)
{
	eventfd_signal(ctx);
}

bool kmod_helper_is_err(const void *ptr)
{
	return IS_ERR(ptr);
}

long kmod_helper_ptr_err(const void *ptr)
{
	return PTR_ERR(ptr);
}
