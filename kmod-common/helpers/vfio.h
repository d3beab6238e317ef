/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of helpers/vfio.c. */
#ifndef KMOD_COMMON_HELPERS_VFIO_H
#define KMOD_COMMON_HELPERS_VFIO_H

struct file;

void kmod_helper_get_file(struct file *file);

#endif
