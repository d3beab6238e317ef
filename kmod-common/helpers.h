/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers.c: static inline kernel functions made callable from Rust. */
#ifndef KMOD_COMMON_HELPERS_H
#define KMOD_COMMON_HELPERS_H

#include <linux/types.h>

struct eventfd_ctx;
struct list_head;
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
unsigned long kmod_helper_rlimit_memlock(struct task_struct *task);
void kmod_helper_eventfd_signal(struct eventfd_ctx *ctx);
bool kmod_helper_is_err(const void *ptr);
long kmod_helper_ptr_err(const void *ptr);
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

#endif

/* Helpers of the mtty module (kmod-common/vfio_device.rs). */
#ifndef KMOD_COMMON_HELPERS_MTTY_H
#define KMOD_COMMON_HELPERS_MTTY_H
struct file;
struct file_operations;
struct file *kmod_helper_anon_inode_getfile(const char *name,
					    const struct file_operations *fops,
					    void *priv, int flags);
void kmod_helper_get_file(struct file *file);
#endif

/* Helpers of the real-IOMMU path of type1 (kmod-common/iommu.rs). */
#ifndef KMOD_COMMON_HELPERS_IOMMU_H
#define KMOD_COMMON_HELPERS_IOMMU_H
struct iommu_domain;
struct iommu_group;
struct iommu_iotlb_gather;

/* One reserved region of a group, copied out of the kernel's list. */
struct kmod_resv_region {
	u64 start;
	u64 length;
	u32 type;
};

struct iommu_domain *kmod_helper_group_paging_domain_alloc(struct iommu_group *group);
const void *kmod_helper_domain_ops(struct iommu_domain *domain);
bool kmod_helper_domain_enforce_cc(struct iommu_domain *domain);
void kmod_helper_domain_geometry(struct iommu_domain *domain, u64 *start, u64 *end);
unsigned long kmod_helper_domain_pgsize_bitmap(struct iommu_domain *domain);
int kmod_helper_domain_map(struct iommu_domain *domain, unsigned long iova,
			   u64 paddr, size_t size, int prot);
void kmod_helper_iotlb_gather_init(struct iommu_iotlb_gather *gather);
void kmod_helper_iotlb_sync(struct iommu_domain *domain, struct iommu_iotlb_gather *gather);
int kmod_helper_group_resv_regions(struct iommu_group *group,
				   struct kmod_resv_region *out, int max);
void kmod_helper_unpin_pfn_range(unsigned long pfn, unsigned long npage, bool dirty);
void kmod_helper_cond_resched(void);
#endif

/* Delayed work (kmod-common/delayed_work.rs). */
#ifndef KMOD_COMMON_HELPERS_DELAYED_WORK_H
#define KMOD_COMMON_HELPERS_DELAYED_WORK_H
struct delayed_work;
struct work_struct;
void kmod_helper_init_delayed_work(struct delayed_work *dwork,
				   void (*func)(struct work_struct *work));
bool kmod_helper_mod_delayed_work_us(struct delayed_work *dwork, u64 delay_us);
#endif

/* iommufd ops of emulated VFIO devices (kmod-common/vfio_device.rs). */
#ifndef KMOD_COMMON_HELPERS_IOMMUFD_H
#define KMOD_COMMON_HELPERS_IOMMUFD_H
struct iommufd_ctx;
struct vfio_device;
bool kmod_helper_iommufd_enabled(void);
int kmod_helper_iommufd_emulated_bind(struct vfio_device *vdev, struct iommufd_ctx *ictx, u32 *out_device_id);
void kmod_helper_iommufd_emulated_unbind(struct vfio_device *vdev);
int kmod_helper_iommufd_emulated_attach_ioas(struct vfio_device *vdev, u32 *pt_id);
void kmod_helper_iommufd_emulated_detach_ioas(struct vfio_device *vdev);
#endif
