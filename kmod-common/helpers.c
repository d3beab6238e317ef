// SPDX-License-Identifier: GPL-2.0
/*
 * Out-of-line wrappers for the static inline functions and macros our Rust
 * code needs, in the manner of the kernel's rust/helpers/. Each module
 * compiles this file in through a one-line `helpers.c` of its own, so the
 * symbols stay local to the module (no EXPORT_SYMBOL).
 */
#include <linux/capability.h>
#include <linux/eventfd.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>
#include <linux/vfio.h>

#include "helpers.h"

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

unsigned long kmod_helper_rlimit_memlock(struct task_struct *task)
{
	return task_rlimit(task, RLIMIT_MEMLOCK);
}

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

/* Helpers of the mtty module (kmod-common/vfio_device.rs). */
#include <linux/anon_inodes.h>
#include <linux/file.h>

struct file *kmod_helper_anon_inode_getfile(const char *name,
					    const struct file_operations *fops,
					    void *priv, int flags)
{
	return anon_inode_getfile(name, fops, priv, flags);
}

void kmod_helper_get_file(struct file *file)
{
	get_file(file);
}

/* Helpers of the real-IOMMU path of type1 (kmod-common/iommu.rs). */
#include <linux/iommu.h>
#include <linux/slab.h>

static int kmod_domain_alloc_first_dev(struct device *dev, void *data)
{
	struct iommu_domain **domain = data;

	*domain = iommu_paging_domain_alloc(dev);
	return 1; /* the first device decides */
}

/*
 * A paging domain for the IOMMU behind @group's devices, allocated through
 * the group's first device (the group iterator holds the group's lock, so
 * the device cannot go away meanwhile). ERR_PTR(-ENODEV) for an empty group.
 */
struct iommu_domain *kmod_helper_group_paging_domain_alloc(struct iommu_group *group)
{
	struct iommu_domain *domain = ERR_PTR(-ENODEV);

	iommu_group_for_each_dev(group, &domain, kmod_domain_alloc_first_dev);
	return domain;
}

const void *kmod_helper_domain_ops(struct iommu_domain *domain)
{
	return domain->ops;
}

bool kmod_helper_domain_enforce_cc(struct iommu_domain *domain)
{
	if (!domain->ops->enforce_cache_coherency)
		return false;
	return domain->ops->enforce_cache_coherency(domain);
}

void kmod_helper_domain_geometry(struct iommu_domain *domain, u64 *start, u64 *end)
{
	*start = domain->geometry.aperture_start;
	*end = domain->geometry.aperture_end;
}

unsigned long kmod_helper_domain_pgsize_bitmap(struct iommu_domain *domain)
{
	return domain->pgsize_bitmap;
}

/* iommu_map() with the page-table allocations charged to the caller's memcg. */
int kmod_helper_domain_map(struct iommu_domain *domain, unsigned long iova,
			   u64 paddr, size_t size, int prot)
{
	return iommu_map(domain, iova, paddr, size, prot, GFP_KERNEL_ACCOUNT);
}

void kmod_helper_iotlb_gather_init(struct iommu_iotlb_gather *gather)
{
	iommu_iotlb_gather_init(gather);
}

void kmod_helper_iotlb_sync(struct iommu_domain *domain, struct iommu_iotlb_gather *gather)
{
	iommu_iotlb_sync(domain, gather);
}

/*
 * Copies up to @max of @group's reserved regions to @out and frees the
 * kernel's list. Returns how many regions the group has (more than @max
 * means the caller must retry with a larger array) or a negative errno.
 */
int kmod_helper_group_resv_regions(struct iommu_group *group,
				   struct kmod_resv_region *out, int max)
{
	struct iommu_resv_region *r, *next;
	LIST_HEAD(regions);
	int n = 0, ret;

	ret = iommu_get_group_resv_regions(group, &regions);
	list_for_each_entry_safe(r, next, &regions, list) {
		if (!ret && n < max) {
			out[n].start = r->start;
			out[n].length = r->length;
			out[n].type = r->type;
		}
		n++;
		list_del(&r->list);
		kfree(r);
	}
	return ret ? ret : n;
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

/* Delayed work (kmod-common/delayed_work.rs). */
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

/*
 * iommufd ops of emulated VFIO devices. With CONFIG_IOMMUFD the VFIO core
 * refuses to register a device without them (WARN and -EINVAL), and an
 * emulated device uses the core's own, as the C mtty sample does; without
 * it they do not exist and the device's ops stay NULL (the Rust side asks
 * kmod_helper_iommufd_enabled() which table to use), so the stubs below are
 * never installed.
 */
#include <linux/vfio.h>

bool kmod_helper_iommufd_enabled(void)
{
	return IS_ENABLED(CONFIG_IOMMUFD);
}

#if IS_ENABLED(CONFIG_IOMMUFD)
int kmod_helper_iommufd_emulated_bind(struct vfio_device *vdev, struct iommufd_ctx *ictx, u32 *out_device_id)
{
	return vfio_iommufd_emulated_bind(vdev, ictx, out_device_id);
}

void kmod_helper_iommufd_emulated_unbind(struct vfio_device *vdev)
{
	vfio_iommufd_emulated_unbind(vdev);
}

int kmod_helper_iommufd_emulated_attach_ioas(struct vfio_device *vdev, u32 *pt_id)
{
	return vfio_iommufd_emulated_attach_ioas(vdev, pt_id);
}

void kmod_helper_iommufd_emulated_detach_ioas(struct vfio_device *vdev)
{
	vfio_iommufd_emulated_detach_ioas(vdev);
}
#else
int kmod_helper_iommufd_emulated_bind(struct vfio_device *vdev, struct iommufd_ctx *ictx, u32 *out_device_id)
{
	return -EOPNOTSUPP;
}

void kmod_helper_iommufd_emulated_unbind(struct vfio_device *vdev)
{
}

int kmod_helper_iommufd_emulated_attach_ioas(struct vfio_device *vdev, u32 *pt_id)
{
	return -EOPNOTSUPP;
}

void kmod_helper_iommufd_emulated_detach_ioas(struct vfio_device *vdev)
{
}
#endif
