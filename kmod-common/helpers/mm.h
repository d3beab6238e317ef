/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/mm.c. */
#ifndef KMOD_COMMON_HELPERS_MM_H
#define KMOD_COMMON_HELPERS_MM_H

#include <linux/types.h>

struct mm_struct;
struct page;
struct task_struct;

struct mm_struct *kmod_helper_current_mm(void);
bool kmod_helper_owner_current(struct mm_struct **mm, struct task_struct **task,
			       bool *lock_cap);
void kmod_helper_owner_put(struct mm_struct *mm, struct task_struct *task);
int kmod_helper_mm_enter(struct mm_struct *mm);
void kmod_helper_mmap_read_lock(struct mm_struct *mm);
void kmod_helper_mmap_read_unlock(struct mm_struct *mm);
void kmod_helper_mmput(struct mm_struct *mm);
/* The most pages kmod_helper_pin_pfns() pins in one call (its page array is on the stack). */
#define KMOD_PIN_RUN_MAX 16
/* A run of physically contiguous pinned pages of one kind. */
struct kmod_pfn_run {
	unsigned long pfn;
	unsigned int npage;
	bool reserved;
};
unsigned int kmod_helper_pages_to_runs(struct page *const *pages, unsigned int n, unsigned int max_npage,
				       struct kmod_pfn_run *runs, unsigned int *unreserved);
bool kmod_helper_pfn_reserved(unsigned long pfn);
long kmod_helper_pin_pfns(struct mm_struct *mm, unsigned long vaddr, unsigned long n,
			  unsigned int gup_flags, unsigned long *pfns, bool *reserved);
bool kmod_helper_put_pfn(unsigned long pfn, bool dirty);
void kmod_helper_pfns_to_pages(unsigned long *slots, unsigned int n);
int kmod_helper_account_locked_vm(struct mm_struct *mm, unsigned long npage, bool inc,
				  struct task_struct *task, bool bypass_rlimit);
int kmod_helper_copy_mm_user(struct mm_struct *mm, unsigned long vaddr, void *buf,
			     unsigned long n, bool write);
bool kmod_helper_access_ok(unsigned long addr, unsigned long size);

void kmod_helper_unpin_pfn_range(unsigned long pfn, unsigned long npage, bool dirty);
void kmod_helper_cond_resched(void);

#endif
