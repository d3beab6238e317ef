// SPDX-License-Identifier: GPL-2.0
/* VFIO device helpers (../vfio_device.rs): migration files, iommufd ops of emulated devices. */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/vfio.h>

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

/*
 * iommufd ops of emulated VFIO devices. With CONFIG_IOMMUFD the VFIO core
 * refuses to register a device without them (WARN and -EINVAL), and an
 * emulated device uses the core's own, as the C mtty sample does; without
 * it they do not exist and the device's ops stay NULL (the Rust side asks
 * kmod_helper_iommufd_enabled() which table to use), so the stubs below are
 * never installed.
 */
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
