// SPDX-License-Identifier: GPL-2.0
/* Static inline memory-management functions and macros, for ../mm.rs. */
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <linux/uaccess.h>

/* mmgrab() and get_task_struct(): the references a mapping keeps of its owner. */
void kmod_helper_owner_get(struct mm_struct *mm, struct task_struct *task)
{
	mmgrab(mm);
	get_task_struct(task);
}

/* Gives back what kmod_helper_owner_get() took. */
void kmod_helper_owner_put(struct mm_struct *mm, struct task_struct *task)
{
	put_task_struct(task);
	mmdrop(mm);
}

bool kmod_helper_mmget_not_zero(struct mm_struct *mm)
{
	return mmget_not_zero(mm);
}

void kmod_helper_mmap_read_lock(struct mm_struct *mm)
{
	mmap_read_lock(mm);
}

void kmod_helper_mmap_read_unlock(struct mm_struct *mm)
{
	mmap_read_unlock(mm);
}

int kmod_helper_mmap_write_lock_killable(struct mm_struct *mm)
{
	return mmap_write_lock_killable(mm);
}

void kmod_helper_mmap_write_unlock(struct mm_struct *mm)
{
	mmap_write_unlock(mm);
}

#ifdef CONFIG_SPARSEMEM_VMEMMAP
/* The struct page of pfn 0: page_to_pfn() and pfn_to_page() are offsets from it. */
struct page *kmod_helper_vmemmap(void)
{
	return vmemmap;
}
#endif

bool kmod_helper_pfn_valid(unsigned long pfn)
{
	return pfn_valid(pfn);
}

bool kmod_helper_access_ok(unsigned long addr, unsigned long size)
{
	return access_ok((const void __user *)addr, size);
}

void kmod_helper_cond_resched(void)
{
	cond_resched();
}
