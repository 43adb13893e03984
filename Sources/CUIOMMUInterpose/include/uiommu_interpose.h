#ifndef UIOMMU_INTERPOSE_H
#define UIOMMU_INTERPOSE_H
/*
 * The interposer's C half, as the Swift half (module UIOMMUPreload) sees it.
 *
 * The C half replaces open/ioctl/close/dup/read/write/mmap/stat… for the whole process when
 * the preload library is loaded (LD_PRELOAD). It hands out real file descriptors, keeps the
 * fd → handle table, and calls into Swift only for descriptors it owns. What the Swift half
 * calls back is declared here: user-memory access with exact EFAULT, installing auxiliary
 * descriptors, table queries, and a few raw system calls that must not be interposed.
 *
 * Only the preload library links this target.
 */
#include <stddef.h>
#include <stdint.h>
/* The VFIO, sysfs and BAR-mapping half (vfio.c, sysfs.c, mmio.c). */
#include "uiommu_vfio.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- copy_from_user / copy_to_user for this process ---------------------------------------
 * Return 0, or -EFAULT (14) for NULL, wrapping, non-user or unmapped memory. Never crash. */
int uiommu_copy_from_user(void *destination, uint64_t user_address, size_t count);
int uiommu_copy_to_user(uint64_t user_address, const void *source, size_t count);

/* How user memory is reached: 0 = memcpy under a SIGSEGV/SIGBUS guard (default),
 * 1 = process_vm_readv/writev on our own pid (no signal handler; ~2 µs per copy). */
void uiommu_set_uaccess_mode(int mode);

/* ---- auxiliary descriptors (access, fault, vEVENTQ files) ---------------------------------
 * Installs a new descriptor (a real eventfd, O_RDWR|O_CLOEXEC) whose read/write/close reach
 * the Swift object `object` (retained by the caller; released through uiommu_core_aux_release
 * when its last descriptor closes). Returns the fd or -errno; *handle receives the table
 * handle used with uiommu_aux_set_readable. */
int uiommu_aux_install(void *object, void **handle);
/* Makes the descriptor poll readable (POLLIN) or not. Call only from inside a core call. */
void uiommu_aux_set_readable(void *handle, int readable);
/* Number of auxiliary handles alive (a cheap check before syncing readiness). */
long uiommu_aux_count(void);

/* ---- the fd table --------------------------------------------------------------------------*/
enum { UIOMMU_FD_NONE = 0, UIOMMU_FD_IOMMUFD = 1, UIOMMU_FD_AUX = 2 };
/* What descriptor `fd` is to the interposer. */
int uiommu_fd_kind(int fd);
/* Up to `max` descriptor numbers that refer to the object `object`; returns how many exist. */
int uiommu_fds_of(const void *object, int *fds, int max);

/* ---- system facts and raw calls (never interposed) -----------------------------------------*/
/* Effective CAP_IPC_LOCK and CAP_SYS_RESOURCE (capget). */
void uiommu_capabilities(int *ipc_lock, int *sys_resource);
/* RLIMIT_MEMLOCK (soft) in bytes; UINT64_MAX when unlimited. */
uint64_t uiommu_memlock_limit(void);
/* Registers the UIOMMUFD_LEAKS report, run at exit inside the gate. */
void uiommu_register_exit_report(void);
/* write(2) straight to the kernel, retried until done or failed. */
long uiommu_raw_write_all(int fd, const void *buffer, size_t count);
/* The interposer's symbol list, NULL-terminated (for documentation and tests). */
const char *const *uiommu_interposed_symbols(void);

#ifdef __cplusplus
}
#endif
#endif
