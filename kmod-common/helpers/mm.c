// SPDX-License-Identifier: GPL-2.0
/* Memory-management helpers: the mm of a task, pinning, locked_vm, user copies (../mm.rs). */
#include <linux/capability.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>

struct mm_struct *kmod_helper_current_mm(void)
{
	return current->mm;
}

/*
 * What a new VFIO mapping records of the calling process, in one call:
 * its mm (mmgrab), its thread-group leader (a task reference) and whether
 * it has CAP_IPC_LOCK. Returns false, taking nothing, in a kernel thread.
 */
bool kmod_helper_owner_current(struct mm_struct **mm, struct task_struct **task,
			       bool *lock_cap)
{
	struct mm_struct *m = current->mm;

	if (!m)
		return false;
	mmgrab(m);
	*mm = m;
	*task = current->group_leader;
	get_task_struct(*task);
	*lock_cap = capable(CAP_IPC_LOCK);
	return true;
}

/* Gives back what kmod_helper_owner_current() took. */
void kmod_helper_owner_put(struct mm_struct *mm, struct task_struct *task)
{
	put_task_struct(task);
	mmdrop(mm);
}

/*
 * Makes @mm usable by the calling thread: 1 when it took a user reference
 * (mmget_not_zero; give it back with mmput), 0 when none is needed because
 * @mm is the calling task's own (it cannot go while the task runs), -ESRCH
 * once the process has exited.
 */
int kmod_helper_mm_enter(struct mm_struct *mm)
{
	if (current->mm == mm)
		return 0;
	return mmget_not_zero(mm) ? 1 : -ESRCH;
}

void kmod_helper_mmap_read_lock(struct mm_struct *mm)
{
	mmap_read_lock(mm);
}

void kmod_helper_mmap_read_unlock(struct mm_struct *mm)
{
	mmap_read_unlock(mm);
}

void kmod_helper_mmput(struct mm_struct *mm)
{
	mmput(mm);
}

/*
 * The frame number of each of @n pinned pages, and whether it is reserved
 * (`is_invalid_reserved_pfn` of the C type1: not accounted, not unpinned).
 * A pinned page has a struct page, so its pfn is valid: only PageReserved
 * is left to test.
 */
static void kmod_pages_to_pfns(struct page *const *pages, unsigned long *pfns, bool *reserved, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		pfns[i] = page_to_pfn(pages[i]);
		reserved[i] = PageReserved(pages[i]);
	}
}

/*
 * Describes @n pinned pages as runs of physically contiguous pages of one
 * kind (reserved or not: is_invalid_reserved_pfn), in order, each at most
 * @max_npage long: what the C type1's vfio_pin_pages_remote() works out
 * page by page. Stores the runs in @runs (room for @n), returns how many,
 * and sets *@unreserved to how many pages are not reserved. One call per
 * batch of pinned pages.
 */
unsigned int kmod_helper_pages_to_runs(struct page *const *pages, unsigned int n, unsigned int max_npage,
				       struct kmod_pfn_run *runs, unsigned int *unreserved)
{
	unsigned int i, nruns = 0, plain = 0;
	struct kmod_pfn_run *run = NULL;

	for (i = 0; i < n; i++) {
		unsigned long pfn = page_to_pfn(pages[i]);
		/* A pinned page's pfn is valid: is_invalid_reserved_pfn() is PageReserved. */
		bool rsvd = PageReserved(pages[i]);

		plain += !rsvd;
		if (run && pfn == run->pfn + run->npage && rsvd == run->reserved && run->npage < max_npage) {
			run->npage++;
			continue;
		}
		run = &runs[nruns++];
		run->pfn = pfn;
		run->npage = 1;
		run->reserved = rsvd;
	}
	*unreserved = plain;
	return nruns;
}

/* is_invalid_reserved_pfn() of the C type1: pins of such pfns are not accounted. */
bool kmod_helper_pfn_reserved(unsigned long pfn)
{
	return !pfn_valid(pfn) || PageReserved(pfn_to_page(pfn));
}

/*
 * The pinning half of the C type1's vfio_pin_page_external(), for a run of
 * up to KMOD_PIN_RUN_MAX pages in one call: pins the pages of @mm from
 * @vaddr for long-term device access, under the mmap read lock, and stores
 * each one's pfn and whether it is reserved. The caller holds a user
 * reference on @mm. Returns how many were pinned from the start, or a
 * negative errno.
 */
long kmod_helper_pin_pfns(struct mm_struct *mm, unsigned long vaddr, unsigned long n,
			  unsigned int gup_flags, unsigned long *pfns, bool *reserved)
{
	struct page *pages[KMOD_PIN_RUN_MAX];
	long ret;

	if (n > KMOD_PIN_RUN_MAX)
		n = KMOD_PIN_RUN_MAX;
	mmap_read_lock(mm);
	ret = pin_user_pages_remote(mm, vaddr, n, gup_flags, pages, NULL);
	mmap_read_unlock(mm);
	if (ret > 0)
		kmod_pages_to_pfns(pages, pfns, reserved, ret);
	return ret;
}

/* put_pfn() of the C type1: unpins @pfn unless it is reserved; true if it did. */
bool kmod_helper_put_pfn(unsigned long pfn, bool dirty)
{
	struct page *page;

	if (kmod_helper_pfn_reserved(pfn))
		return false;
	page = pfn_to_page(pfn);
	unpin_user_pages_dirty_lock(&page, 1, dirty);
	return true;
}

/*
 * Turns each of the @n pfns in @slots into the address of its struct page,
 * in place: the pages vfio_pin_pages() returns, in the array the pfns were
 * gathered in (a pointer and an unsigned long have the same size).
 */
void kmod_helper_pfns_to_pages(unsigned long *slots, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		slots[i] = (unsigned long)pfn_to_page(slots[i]);
}

/*
 * mm_lock_acct() of the C type1: __account_locked_vm() under the mmap write
 * lock, with a user reference on @mm for the time (none is needed for the
 * calling task's own mm). -ESRCH once the process has exited. The caller
 * holds an mmgrab reference on @mm.
 */
int kmod_helper_account_locked_vm(struct mm_struct *mm, unsigned long npage, bool inc,
				  struct task_struct *task, bool bypass_rlimit)
{
	bool counted = current->mm != mm;
	int ret;

	if (counted && !mmget_not_zero(mm))
		return -ESRCH;
	ret = mmap_write_lock_killable(mm);
	if (!ret) {
		ret = __account_locked_vm(mm, npage, inc, task, bypass_rlimit);
		mmap_write_unlock(mm);
	}
	if (counted)
		mmput(mm);
	return ret;
}

/*
 * Copies @n bytes between @buf and the user memory of @mm at @vaddr (to it
 * if @write), from whatever context may reach it, as the C type1's
 * vfio_dma_rw_chunk() does: the calling process's own mm, or any mm from a
 * kernel thread (kthread_use_mm). Returns 0, -EPERM once the process has
 * exited, or -EFAULT if @mm is another process's or not every byte was
 * copied. The caller holds an mmgrab reference on @mm.
 */
static noinline int kmod_copy_mm_user_other(struct mm_struct *mm, unsigned long vaddr, void *buf,
					    unsigned long n, bool write)
{
	bool kthread = current->mm == NULL;
	int ret = -EFAULT;

	if (!mmget_not_zero(mm))
		return -EPERM;
	if (!kthread)
		goto out;
	kthread_use_mm(mm);
	if (write)
		ret = copy_to_user((void __user *)vaddr, buf, n) ? -EFAULT : 0;
	else
		ret = copy_from_user(buf, (const void __user *)vaddr, n) ? -EFAULT : 0;
	kthread_unuse_mm(mm);
out:
	mmput(mm);
	return ret;
}

int kmod_helper_copy_mm_user(struct mm_struct *mm, unsigned long vaddr, void *buf,
			     unsigned long n, bool write)
{
	/*
	 * The calling task's own mm is live while it runs: no reference, and
	 * nothing on this path needs a stack frame.
	 */
	if (likely(current->mm == mm)) {
		if (write)
			return copy_to_user((void __user *)vaddr, buf, n) ? -EFAULT : 0;
		return copy_from_user(buf, (const void __user *)vaddr, n) ? -EFAULT : 0;
	}
	return kmod_copy_mm_user_other(mm, vaddr, buf, n, write);
}

bool kmod_helper_access_ok(unsigned long addr, unsigned long size)
{
	return access_ok((const void __user *)addr, size);
}

/* Gives back one pin of each page of a physically contiguous run. */
void kmod_helper_unpin_pfn_range(unsigned long pfn, unsigned long npage, bool dirty)
{
	unpin_user_page_range_dirty_lock(pfn_to_page(pfn), npage, dirty);
}

void kmod_helper_cond_resched(void)
{
	cond_resched();
}
