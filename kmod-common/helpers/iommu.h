/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/iommu.c. */
#ifndef KMOD_COMMON_HELPERS_IOMMU_H
#define KMOD_COMMON_HELPERS_IOMMU_H

#include <linux/types.h>

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

#endif
