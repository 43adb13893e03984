#include "uiommu_interpose.h"
int uiommu_interpose_placeholder(void) { return 0; }
