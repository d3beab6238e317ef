/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/vfio.c. */
#ifndef KMOD_COMMON_HELPERS_VFIO_H
#define KMOD_COMMON_HELPERS_VFIO_H

#include <linux/vfio.h>

struct file;

void kmod_helper_get_file(struct file *file);

/*
 * The C size of struct vfio_device, which vfio_device.rs checks bindgen's
 * layout against: the driver's state lives right after it in one
 * allocation, so a shorter Rust view would let the state overwrite the
 * core's fields.
 */
enum { KMOD_VFIO_DEVICE_SIZE = sizeof(struct vfio_device) };

#endif
