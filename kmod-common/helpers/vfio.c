// SPDX-License-Identifier: GPL-2.0
/* Static inline VFS functions for the VFIO device layer (../vfio_device.rs). */
#include <linux/fs.h>

/* A new reference to @file (migration data files are shared with userspace). */
void kmod_helper_get_file(struct file *file)
{
	get_file(file);
}
