// SPDX-License-Identifier: GPL-2.0
/* Static inline memory-management functions and macros, for ../mm.rs. */
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/pgtable.h>
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

/* How many pages the folio whose head page is @head has. */
unsigned long kmod_helper_folio_nr_pages(struct page *head)
{
	return folio_nr_pages(page_folio(head));
}

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

/* vma_lookup(): the VMA that contains @addr, or NULL. */
struct vm_area_struct *kmod_helper_vma_lookup(struct mm_struct *mm, unsigned long addr)
{
	return vma_lookup(mm, addr);
}

/*
 * The page-table level whose leaf entry maps @addr in @mm: PUD_SHIFT,
 * PMD_SHIFT or PAGE_SHIFT, with that leaf's first pfn in *@leaf_pfn for the
 * huge levels; 0 if nothing is mapped there. 6.12's follow_pfnmap_start()
 * knows the level but does not report it (6.15 adds args->addr_mask), and
 * the walk is made of inline functions and macros only, so it is here.
 * Called between follow_pfnmap_start() and follow_pfnmap_end() on the same
 * address: the lock they hold keeps the leaf entry from changing.
 */
unsigned int kmod_helper_pfnmap_leaf_shift(struct mm_struct *mm, unsigned long addr,
					   unsigned long *leaf_pfn)
{
	pgd_t *pgdp = pgd_offset(mm, addr);
	p4d_t *p4dp, p4d;
	pud_t *pudp, pud;
	pmd_t pmd;

	if (pgd_none(*pgdp) || pgd_bad(*pgdp))
		return 0;
	p4dp = p4d_offset(pgdp, addr);
	p4d = p4dp_get(p4dp);
	if (p4d_none(p4d) || p4d_bad(p4d))
		return 0;
	pudp = pud_offset(p4dp, addr);
	pud = pudp_get(pudp);
	if (!pud_present(pud))
		return 0;
	if (pud_leaf(pud)) {
		*leaf_pfn = pud_pfn(pud);
		return PUD_SHIFT;
	}
	pmd = pmdp_get_lockless(pmd_offset(pudp, addr));
	if (!pmd_present(pmd))
		return 0;
	if (pmd_leaf(pmd)) {
		*leaf_pfn = pmd_pfn(pmd);
		return PMD_SHIFT;
	}
	return PAGE_SHIFT;
}
