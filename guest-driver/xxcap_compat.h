/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xxcapture: the kernel interfaces that differ between the kernels the
 * driver supports (Linux 6.1 to 7.x). Every version test of the driver is
 * here; the other files call the xxcap_ wrappers below and stay free of
 * version checks.
 *
 * - 6.3:  vma->vm_flags became read-only; vm_flags_set() and
 *         vm_flags_clear() change it (with the mmap lock held for writing).
 * - 6.4:  class_create() lost its owner argument.
 * - 6.11: virtio_find_vqs() takes one struct virtqueue_info per queue
 *         instead of separate callback and name arrays.
 * - 6.12: <asm/unaligned.h> became <linux/unaligned.h>.
 * - later: nth_page() and the vb2 wait callbacks went away.
 */
#ifndef _XXCAP_COMPAT_H
#define _XXCAP_COMPAT_H

#include <linux/device.h>
#include <linux/errno.h>
#include <linux/mm.h>
#include <linux/version.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

/*
 * True when building for Linux major.minor or later. The one place that
 * reads LINUX_VERSION_CODE (checkpatch.sh lets this file do so).
 */
#define XXCAP_KERNEL_SINCE(major, minor) \
	(KERNEL_VERSION(major, minor, 0) <= LINUX_VERSION_CODE)

#if XXCAP_KERNEL_SINCE(6, 12)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

/* Most virtqueues xxcap_find_vqs() sets up */
#define XXCAP_COMPAT_MAX_VQS	8

/* Sets @flags in @vma->vm_flags; mmap lock held for writing (mmap()). */
static inline void xxcap_vm_flags_set(struct vm_area_struct *vma,
				      vm_flags_t flags)
{
#if XXCAP_KERNEL_SINCE(6, 3)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

/* Clears @flags in @vma->vm_flags; mmap lock held for writing (mmap()). */
static inline void xxcap_vm_flags_clear(struct vm_area_struct *vma,
					vm_flags_t flags)
{
#if XXCAP_KERNEL_SINCE(6, 3)
	vm_flags_clear(vma, flags);
#else
	vma->vm_flags &= ~flags;
#endif
}

/* A device class owned by this module. */
static inline struct class *xxcap_class_create(const char *name)
{
#if XXCAP_KERNEL_SINCE(6, 4)
	return class_create(name);
#else
	return class_create(THIS_MODULE, name);
#endif
}

/*
 * Finds @nvqs virtqueues (at most XXCAP_COMPAT_MAX_VQS): queue i gets
 * @callbacks[i] and @names[i], no per-buffer context, default interrupt
 * affinity.
 */
static inline int xxcap_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
				 struct virtqueue *vqs[],
				 vq_callback_t *callbacks[],
				 const char * const names[])
{
#if XXCAP_KERNEL_SINCE(6, 11)
	struct virtqueue_info info[XXCAP_COMPAT_MAX_VQS] = {};
	unsigned int i;

	if (nvqs > ARRAY_SIZE(info))
		return -EINVAL;
	for (i = 0; i < nvqs; i++) {
		info[i].name = names[i];
		info[i].callback = callbacks[i];
	}
	return virtio_find_vqs(vdev, nvqs, vqs, info, NULL);
#else
	if (nvqs > XXCAP_COMPAT_MAX_VQS)
		return -EINVAL;
	return virtio_find_vqs(vdev, nvqs, vqs, callbacks, names, NULL);
#endif
}

/*
 * vb2 wait callbacks. Newer kernels dropped vb2_ops_wait_prepare/finish:
 * vb2 releases the queue lock itself while it waits for a buffer. The
 * driver is tested with the callbacks on 6.1 and 6.12 and without them on
 * 7.x.
 */
#if XXCAP_KERNEL_SINCE(6, 16)
#define XXCAP_VB2_WAIT_OPS
#else
#define XXCAP_VB2_WAIT_OPS \
	.wait_prepare = vb2_ops_wait_prepare, \
	.wait_finish = vb2_ops_wait_finish,
#endif

/* Page @n of a run starting at @page; newer kernels dropped nth_page() */
#ifdef nth_page
#define xxcap_nth_page(page, n)	nth_page(page, n)
#else
#define xxcap_nth_page(page, n)	((page) + (n))
#endif

#endif /* _XXCAP_COMPAT_H */
