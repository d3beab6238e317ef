// SPDX-License-Identifier: GPL-2.0
/* Workqueue macros (../delayed_work.rs). */
#include <linux/workqueue.h>

void kmod_helper_init_delayed_work(struct delayed_work *dwork, work_func_t func)
{
	INIT_DELAYED_WORK(dwork, func);
}
