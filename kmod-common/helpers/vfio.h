/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/vfio.c. */
#ifndef KMOD_COMMON_HELPERS_VFIO_H
#define KMOD_COMMON_HELPERS_VFIO_H

#include <linux/types.h>

struct file;
struct file_operations;
struct iommufd_ctx;
struct vfio_device;

struct file *kmod_helper_anon_inode_getfile(const char *name,
					    const struct file_operations *fops,
					    void *priv, int flags);
void kmod_helper_get_file(struct file *file);
bool kmod_helper_iommufd_enabled(void);
int kmod_helper_iommufd_emulated_bind(struct vfio_device *vdev, struct iommufd_ctx *ictx, u32 *out_device_id);
void kmod_helper_iommufd_emulated_unbind(struct vfio_device *vdev);
int kmod_helper_iommufd_emulated_attach_ioas(struct vfio_device *vdev, u32 *pt_id);
void kmod_helper_iommufd_emulated_detach_ioas(struct vfio_device *vdev);

#endif
