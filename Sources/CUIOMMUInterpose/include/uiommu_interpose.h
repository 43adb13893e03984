#ifndef UIOMMU_INTERPOSE_H
#define UIOMMU_INTERPOSE_H
/* The interposer's C side: symbol interposition (open/ioctl/close/...) and the fd table.
 * Only the preload library links this target. */
int uiommu_interpose_placeholder(void);
#endif
