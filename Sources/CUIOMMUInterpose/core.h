/*
 * The Swift half's entry points, as the C half calls them (defined with @_cdecl in
 * Sources/UIOMMUPreload/Entry.swift). Every call is made inside the gate (see fdtable.c), so
 * fork never copies a half-done call. All return >= 0 or -errno.
 */
#ifndef UIOMMU_CORE_H
#define UIOMMU_CORE_H
#include <stddef.h>
#include <stdint.h>

/* A new open of /dev/iommu with open(2) flags. Returns a retained object, or NULL with
 * *error set to a positive errno. */
void *uiommu_core_open(int32_t flags, int32_t *error);
/* An ioctl on an iommufd. `argument` is the raw third argument (pointer or integer). */
int64_t uiommu_core_ioctl(void *object, uint64_t request, uint64_t argument);
/* mmap of an iommufd: the address, or -errno. */
int64_t uiommu_core_mmap(void *object, uint64_t length, int32_t protection, int32_t flags, int64_t offset);
/* The last descriptor of an iommufd closed. */
void uiommu_core_release(void *object);

/* read/write on an auxiliary descriptor; buffers are the interposer's own memory. */
int64_t uiommu_core_aux_read(void *object, void *buffer, uint64_t count);
int64_t uiommu_core_aux_write(void *object, const void *buffer, uint64_t count);
/* The last descriptor of an auxiliary file closed. */
void uiommu_core_aux_release(void *object);
/* At exit, with UIOMMUFD_LEAKS=1: report what is still alive. */
void uiommu_core_exit_report(void);
#endif
