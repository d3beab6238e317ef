// SPDX-License-Identifier: GPL-2.0
/* Delayed work (../delayed_work.rs). */
#include <linux/jiffies.h>
#include <linux/workqueue.h>

void kmod_helper_init_delayed_work(struct delayed_work *dwork, work_func_t func)
{
	INIT_DELAYED_WORK(dwork, func);
}

bool kmod_helper_mod_delayed_work_us(struct delayed_work *dwork, u64 delay_us)
{
	unsigned int us = delay_us > UINT_MAX ? UINT_MAX : (unsigned int)delay_us;

	/* usecs_to_jiffies() rounds up; a zero delay would run it at once. */
	return mod_delayed_work(system_wq, dwork, max(usecs_to_jiffies(us), 1UL));
}
