// SPDX-License-Identifier: GPL-2.0
/* Static inline IOMMU functions, for ../iommu_domain.rs. */
#include <linux/iommu.h>

void kmod_helper_iotlb_gather_init(struct iommu_iotlb_gather *gather)
{
	iommu_iotlb_gather_init(gather);
}

void kmod_helper_iotlb_sync(struct iommu_domain *domain, struct iommu_iotlb_gather *gather)
{
	iommu_iotlb_sync(domain, gather);
}
