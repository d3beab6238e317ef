// SPDX-License-Identifier: GPL-2.0
/* Static inline IOMMU functions, for ../iommu_domain.rs. */
#include <linux/iommu.h>
#include <linux/scatterlist.h>

void kmod_helper_iotlb_gather_init(struct iommu_iotlb_gather *gather)
{
	iommu_iotlb_gather_init(gather);
}

void kmod_helper_iotlb_sync(struct iommu_domain *domain, struct iommu_iotlb_gather *gather)
{
	iommu_iotlb_sync(domain, gather);
}

/* An entry of the scatterlist given to iommu_map_sg(): len bytes from pfn. */
void kmod_helper_sg_set_pfn(struct scatterlist *sg, unsigned long pfn, unsigned int len)
{
	sg_set_page(sg, pfn_to_page(pfn), len, 0);
}
