/*
 * Two selftest mock constants that the iommufd selftest in Debian's linux-source-6.12
 * (6.12.95 .. 6.12.117) uses but whose iommufd_test.h of the same tree lacks (they arrived
 * upstream with PASID support for mock devices). Values as the upstream test header defines
 * them: the MOCK_FLAGS_DEVICE_PASID device flag (bit 2) and the mock IOMMU's PASID width.
 * The other two newer names the 6.12.y test uses (IOMMU_HW_INFO_TYPE_DEFAULT,
 * IOMMU_HW_INFO_FLAG_INPUT_TYPE) are uAPI, in include/uapi-compat/linux/iommufd.h.
 * Used with: cc -include selftest_compat.h (see run.sh).
 */
#ifndef UIOMMUFD_SELFTEST_COMPAT_H
#define UIOMMUFD_SELFTEST_COMPAT_H
#define MOCK_FLAGS_DEVICE_PASID (1 << 2)
#define MOCK_PASID_WIDTH 20
#endif
