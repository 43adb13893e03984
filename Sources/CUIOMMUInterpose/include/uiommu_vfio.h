#ifndef UIOMMU_VFIO_H
#define UIOMMU_VFIO_H
/*
 * What the Swift half's VFIO code calls back in the C half (vfio.c, sysfs.c, mmio.c).
 */
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The Swift object of the iommufd open on `fd` (a /dev/iommu or /dev/vfio/vfio file), or NULL;
 * *state: 1 one of ours, 0 some other open file, -1 not an open descriptor. Call only from
 * inside a core call (the object stays valid until it returns). */
void *uiommu_fd_iommufd(int fd, int *state);
/* The Swift object of the VFIO group file open on `fd`, or NULL (*state as above). */
void *uiommu_fd_vfio_group(int fd, int *state);
/* A private reference (a duplicate descriptor) to the eventfd on `fd`, or -EBADF / -EINVAL;
 * *identity identifies the file for the two calls below. */
int uiommu_eventfd_ref(int fd, uint64_t *identity);
/* Adds 1 to the eventfd's counter (nothing if the descriptor no longer names that file). */
void uiommu_eventfd_signal(int fd, uint64_t identity);
/* Drops the reference. */
void uiommu_eventfd_unref(int fd, uint64_t identity);
/* Installs a descriptor for a device file (retained by the caller, released through
 * uiommu_core_vfio_release at its last close); the fd or -errno. */
int uiommu_vfio_install_device(void *object, uint32_t major, uint32_t minor);
/* Registers a virtual character device node (path under /dev) with its numbers. */
void uiommu_vnode_add(const char *path, uint32_t major, uint32_t minor);
/* Number of BAR mappings alive (for tests). */
long uiommu_mmio_mappings(void);

#ifdef __cplusplus
}
#endif
#endif
