/*
 * The Swift half's entry points for VFIO files, the virtual sysfs tree and BAR mappings
 * (defined with @_cdecl in Sources/UIOMMUPreload/VFIOEntry.swift). Every call is made inside
 * the gate. All return >= 0 or -errno unless said otherwise.
 */
#ifndef UIOMMU_VFIO_CORE_H
#define UIOMMU_VFIO_CORE_H
#include <stddef.h>
#include <stdint.h>

/* Makes a freshly opened iommufd object behave as /dev/vfio/vfio (the iommufd container). */
void uiommu_core_vfio_container(void *iommufd_object);
/* open() of /dev/vfio/devices/vfio<index> (kind 2) or /dev/vfio/<index> (kind 3): a retained
 * object, or NULL with *error set to a positive errno. *major, *minor: its device numbers. */
void *uiommu_core_vfio_open(int32_t kind, uint32_t index, int32_t flags, int32_t *error,
                            uint32_t *major, uint32_t *minor);
/* ioctl on a VFIO file of `kind`. */
int64_t uiommu_core_vfio_ioctl(void *object, int32_t kind, uint64_t request, uint64_t argument);
/* Region access of a device file at `offset`; `buffer` is the interposer's own memory. */
int64_t uiommu_core_vfio_rw(void *object, int32_t write, void *buffer, uint64_t count, int64_t offset);
/* Checks an mmap of a device file; on success 0 with *bar and *start (offset in the BAR). */
int64_t uiommu_core_vfio_mmap(void *object, uint64_t length, int32_t shared, int64_t offset,
                              int32_t *bar, uint64_t *start);
/* One access through a BAR mapping: a load returns the value, a store returns 0. */
uint64_t uiommu_core_vfio_mmio(void *object, int32_t bar, uint64_t offset, int32_t width, int32_t write,
                               uint64_t value);
/* A reference for a BAR mapping (the kernel's vma keeps the file). */
void uiommu_core_vfio_retain(void *object);
/* The last descriptor of a VFIO file closed, or a mapping's reference dropped. */
void uiommu_core_vfio_release(void *object, int32_t kind);

/* Prepares the virtual tree: writes its root directory (no trailing slash) into `root`, creating
 * it if needed, and registers the device nodes with uiommu_vnode_add. 0 or -errno. */
int64_t uiommu_core_sysfs_prepare(char *root, uint64_t size);
#endif
