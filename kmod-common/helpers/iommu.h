/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/iommu.c. */
#ifndef KMOD_COMMON_HELPERS_IOMMU_H
#define KMOD_COMMON_HELPERS_IOMMU_H

struct iommu_domain;
struct iommu_iotlb_gather;
struct scatterlist;

void kmod_helper_iotlb_gather_init(struct iommu_iotlb_gather *gather);
void kmod_helper_iotlb_sync(struct iommu_domain *domain, struct iommu_iotlb_gather *gather);
void kmod_helper_sg_set_pfn(struct scatterlist *sg, unsigned long pfn, unsigned int len);

#endif
