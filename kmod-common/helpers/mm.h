/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/mm.c. */
#ifndef KMOD_COMMON_HELPERS_MM_H
#define KMOD_COMMON_HELPERS_MM_H

#include <linux/types.h>

struct mm_struct;
struct page;
struct task_struct;
struct vm_area_struct;

void kmod_helper_owner_get(struct mm_struct *mm, struct task_struct *task);
void kmod_helper_owner_put(struct mm_struct *mm, struct task_struct *task);
bool kmod_helper_mmget_not_zero(struct mm_struct *mm);
void kmod_helper_mmap_read_lock(struct mm_struct *mm);
void kmod_helper_mmap_read_unlock(struct mm_struct *mm);
int kmod_helper_mmap_write_lock_killable(struct mm_struct *mm);
void kmod_helper_mmap_write_unlock(struct mm_struct *mm);
struct page *kmod_helper_vmemmap(void);
unsigned long kmod_helper_folio_nr_pages(struct page *head);
bool kmod_helper_pfn_valid(unsigned long pfn);
bool kmod_helper_access_ok(unsigned long addr, unsigned long size);
void kmod_helper_cond_resched(void);
struct vm_area_struct *kmod_helper_vma_lookup(struct mm_struct *mm, unsigned long addr);
unsigned int kmod_helper_pfnmap_leaf_shift(struct mm_struct *mm, unsigned long addr,
					   unsigned long *leaf_pfn);

#endif
