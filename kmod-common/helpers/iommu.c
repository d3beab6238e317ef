// SPDX-License-Identifier: GPL-2.0
/* IOMMU domain and group helpers for the real-IOMMU path of type1 (../iommu.rs). */
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
