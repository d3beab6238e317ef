/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/workqueue.c. */
#ifndef KMOD_COMMON_HELPERS_WORKQUEUE_H
#define KMOD_COMMON_HELPERS_WORKQUEUE_H

struct delayed_work;
struct work_struct;

void kmod_helper_init_delayed_work(struct delayed_work *dwork,
				   void (*func)(struct work_struct *work));

#endif
