/*
 * The iommufd and VFIO ABI facts these tests use, written for this suite from the documented
 * uAPI (request numbers, struct layouts, flag values). Every name carries a cf_/CF_ prefix so
 * the file can be included next to a system <linux/iommufd.h> or <linux/vfio.h> without a clash,
 * and the tests need no header from the project or the kernel: they build and run unchanged on
 * a real kernel (CONFIG_IOMMUFD, optionally CONFIG_IOMMUFD_TEST) and under `uiommufd run`.
 *
 * Layout rules (x86-64 and every 64-bit Linux): u64 fields are 8-byte aligned; every iommufd
 * struct starts with its u32 size; the _Static_asserts below pin sizes and offsets.
 */
#ifndef UIOMMUFD_CONFORMANCE_UAPI_H
#define UIOMMUFD_CONFORMANCE_UAPI_H

#include <stddef.h>
#include <stdint.h>

typedef uint64_t cf_u64 __attribute__((aligned(8)));

/* ---- request numbers: _IO(';', nr), no size or direction bits ------------------------------ */
#define CF_IOMMUFD_TYPE 0x3b   /* ';' */
#define CF_IO(nr) ((unsigned long)((CF_IOMMUFD_TYPE << 8) | (nr)))

#define CF_IOMMU_DESTROY              CF_IO(0x80)
#define CF_IOMMU_IOAS_ALLOC           CF_IO(0x81)
#define CF_IOMMU_IOAS_ALLOW_IOVAS     CF_IO(0x82)
#define CF_IOMMU_IOAS_COPY            CF_IO(0x83)
#define CF_IOMMU_IOAS_IOVA_RANGES     CF_IO(0x84)
#define CF_IOMMU_IOAS_MAP             CF_IO(0x85)
#define CF_IOMMU_IOAS_UNMAP           CF_IO(0x86)
#define CF_IOMMU_OPTION               CF_IO(0x87)
#define CF_IOMMU_VFIO_IOAS            CF_IO(0x88)
#define CF_IOMMU_HWPT_ALLOC           CF_IO(0x89)
#define CF_IOMMU_GET_HW_INFO          CF_IO(0x8a)
#define CF_IOMMU_HWPT_SET_DIRTY_TRACKING CF_IO(0x8b)
#define CF_IOMMU_HWPT_GET_DIRTY_BITMAP CF_IO(0x8c)
#define CF_IOMMU_HWPT_INVALIDATE      CF_IO(0x8d)
#define CF_IOMMU_FAULT_QUEUE_ALLOC    CF_IO(0x8e)
#define CF_IOMMU_IOAS_MAP_FILE        CF_IO(0x8f)
#define CF_IOMMU_VIOMMU_ALLOC         CF_IO(0x90)
#define CF_IOMMU_VDEVICE_ALLOC        CF_IO(0x91)
#define CF_IOMMU_IOAS_CHANGE_PROCESS  CF_IO(0x92)
#define CF_IOMMU_VEVENTQ_ALLOC        CF_IO(0x93)
#define CF_IOMMU_HW_QUEUE_ALLOC       CF_IO(0x94)

/* VFIO: _IO(';', 100 + n) */
#define CF_VFIO_GET_API_VERSION       CF_IO(100 + 0)
#define CF_VFIO_CHECK_EXTENSION       CF_IO(100 + 1)
#define CF_VFIO_SET_IOMMU             CF_IO(100 + 2)
#define CF_VFIO_GROUP_GET_STATUS      CF_IO(100 + 3)
#define CF_VFIO_IOMMU_GET_INFO        CF_IO(100 + 12)
#define CF_VFIO_IOMMU_MAP_DMA         CF_IO(100 + 13)
#define CF_VFIO_IOMMU_UNMAP_DMA       CF_IO(100 + 14)
#define CF_VFIO_IOMMU_ENABLE          CF_IO(100 + 15)
#define CF_VFIO_IOMMU_DIRTY_PAGES     CF_IO(100 + 17)

#define CF_VFIO_API_VERSION 0
#define CF_VFIO_TYPE1_IOMMU 1
#define CF_VFIO_SPAPR_TCE_IOMMU 2
#define CF_VFIO_TYPE1v2_IOMMU 3
#define CF_VFIO_DMA_CC_IOMMU 4
#define CF_VFIO_TYPE1_NESTING_IOMMU 6
#define CF_VFIO_UNMAP_ALL 9
#define CF_VFIO_UPDATE_VADDR 10

/* ---- iommufd structs ------------------------------------------------------------------------ */
struct cf_destroy { uint32_t size; uint32_t id; };

struct cf_ioas_alloc { uint32_t size; uint32_t flags; uint32_t out_ioas_id; };

struct cf_iova_range { cf_u64 start; cf_u64 last; };

struct cf_ioas_iova_ranges {
    uint32_t size; uint32_t ioas_id; uint32_t num_iovas; uint32_t reserved;
    cf_u64 allowed_iovas; cf_u64 out_iova_alignment;
};

struct cf_ioas_allow_iovas {
    uint32_t size; uint32_t ioas_id; uint32_t num_iovas; uint32_t reserved; cf_u64 allowed_iovas;
};

#define CF_MAP_FIXED_IOVA 1u
#define CF_MAP_WRITEABLE 2u
#define CF_MAP_READABLE 4u

struct cf_ioas_map {
    uint32_t size; uint32_t flags; uint32_t ioas_id; uint32_t reserved;
    cf_u64 user_va; cf_u64 length; cf_u64 iova;
};

struct cf_ioas_map_file {
    uint32_t size; uint32_t flags; uint32_t ioas_id; int32_t fd;
    cf_u64 start; cf_u64 length; cf_u64 iova;
};

struct cf_ioas_copy {
    uint32_t size; uint32_t flags; uint32_t dst_ioas_id; uint32_t src_ioas_id;
    cf_u64 length; cf_u64 dst_iova; cf_u64 src_iova;
};

struct cf_ioas_unmap { uint32_t size; uint32_t ioas_id; cf_u64 iova; cf_u64 length; };

#define CF_OPTION_RLIMIT_MODE 0
#define CF_OPTION_HUGE_PAGES 1
#define CF_OPTION_OP_SET 0
#define CF_OPTION_OP_GET 1

struct cf_option {
    uint32_t size; uint32_t option_id; uint16_t op; uint16_t reserved; uint32_t object_id; cf_u64 val64;
};

#define CF_VFIO_IOAS_GET 0
#define CF_VFIO_IOAS_SET 1
#define CF_VFIO_IOAS_CLEAR 2

struct cf_vfio_ioas { uint32_t size; uint32_t ioas_id; uint16_t op; uint16_t reserved; };

struct cf_hwpt_alloc {
    uint32_t size; uint32_t flags; uint32_t dev_id; uint32_t pt_id; uint32_t out_hwpt_id;
    uint32_t reserved; uint32_t data_type; uint32_t data_len; cf_u64 data_uptr;
    uint32_t fault_id; uint32_t reserved2;
};

struct cf_hw_info {
    uint32_t size; uint32_t flags; uint32_t dev_id; uint32_t data_len; cf_u64 data_uptr;
    uint32_t out_data_type; uint8_t out_max_pasid_log2; uint8_t reserved[3]; cf_u64 out_capabilities;
};

struct cf_hwpt_set_dirty_tracking { uint32_t size; uint32_t flags; uint32_t hwpt_id; uint32_t reserved; };

struct cf_hwpt_get_dirty_bitmap {
    uint32_t size; uint32_t hwpt_id; uint32_t flags; uint32_t reserved;
    cf_u64 iova; cf_u64 length; cf_u64 page_size; cf_u64 data;
};

struct cf_hwpt_invalidate {
    uint32_t size; uint32_t hwpt_id; cf_u64 data_uptr; uint32_t data_type; uint32_t entry_len;
    uint32_t entry_num; uint32_t reserved;
};

struct cf_fault_alloc { uint32_t size; uint32_t flags; uint32_t out_fault_id; uint32_t out_fault_fd; };

struct cf_viommu_alloc {
    uint32_t size; uint32_t flags; uint32_t type; uint32_t dev_id; uint32_t hwpt_id;
    uint32_t out_viommu_id; uint32_t data_len; uint32_t reserved; cf_u64 data_uptr;
};

struct cf_vdevice_alloc {
    uint32_t size; uint32_t viommu_id; uint32_t dev_id; uint32_t out_vdevice_id; cf_u64 virt_id;
};

struct cf_ioas_change_process { uint32_t size; uint32_t reserved; };

struct cf_veventq_alloc {
    uint32_t size; uint32_t flags; uint32_t viommu_id; uint32_t type; uint32_t veventq_depth;
    uint32_t out_veventq_id; uint32_t out_veventq_fd; uint32_t reserved;
};

struct cf_hw_queue_alloc {
    uint32_t size; uint32_t flags; uint32_t viommu_id; uint32_t type; uint32_t index;
    uint32_t out_hw_queue_id; cf_u64 nesting_parent_iova; cf_u64 length;
};

/* ---- VFIO type1 structs ---------------------------------------------------------------------- */
#define CF_VFIO_IOMMU_INFO_PGSIZES (1u << 0)
#define CF_VFIO_IOMMU_INFO_CAPS (1u << 1)
#define CF_VFIO_CAP_IOVA_RANGE 1
#define CF_VFIO_CAP_DMA_AVAIL 3

struct cf_vfio_iommu_info {
    uint32_t argsz; uint32_t flags; cf_u64 iova_pgsizes; uint32_t cap_offset; uint32_t pad;
};

struct cf_vfio_cap_header { uint16_t id; uint16_t version; uint32_t next; };

struct cf_vfio_cap_dma_avail { struct cf_vfio_cap_header header; uint32_t avail; };

struct cf_vfio_iova_range { cf_u64 start; cf_u64 end; };

struct cf_vfio_cap_iova_range {
    struct cf_vfio_cap_header header; uint32_t nr_iovas; uint32_t reserved;
    struct cf_vfio_iova_range ranges[];
};

#define CF_VFIO_DMA_MAP_FLAG_READ 1u
#define CF_VFIO_DMA_MAP_FLAG_WRITE 2u

struct cf_vfio_dma_map { uint32_t argsz; uint32_t flags; cf_u64 vaddr; cf_u64 iova; cf_u64 size; };

#define CF_VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP 1u
#define CF_VFIO_DMA_UNMAP_FLAG_ALL 2u
#define CF_VFIO_DMA_UNMAP_FLAG_VADDR 4u

struct cf_vfio_dma_unmap { uint32_t argsz; uint32_t flags; cf_u64 iova; cf_u64 size; };

/* ---- VFIO groups and devices ------------------------------------------------------------------- */
#define CF_VFIO_GROUP_SET_CONTAINER   CF_IO(100 + 4)
#define CF_VFIO_GROUP_UNSET_CONTAINER CF_IO(100 + 5)
#define CF_VFIO_GROUP_GET_DEVICE_FD   CF_IO(100 + 6)
#define CF_VFIO_DEVICE_GET_INFO       CF_IO(100 + 7)
#define CF_VFIO_DEVICE_GET_REGION_INFO CF_IO(100 + 8)
#define CF_VFIO_DEVICE_GET_IRQ_INFO   CF_IO(100 + 9)
#define CF_VFIO_DEVICE_SET_IRQS       CF_IO(100 + 10)
#define CF_VFIO_DEVICE_RESET          CF_IO(100 + 11)
#define CF_VFIO_DEVICE_FEATURE        CF_IO(100 + 17)
#define CF_VFIO_DEVICE_BIND_IOMMUFD   CF_IO(100 + 18)
#define CF_VFIO_DEVICE_ATTACH_IOMMUFD_PT CF_IO(100 + 19)
#define CF_VFIO_DEVICE_DETACH_IOMMUFD_PT CF_IO(100 + 20)

#define CF_VFIO_GROUP_FLAGS_VIABLE (1u << 0)
#define CF_VFIO_GROUP_FLAGS_CONTAINER_SET (1u << 1)
struct cf_vfio_group_status { uint32_t argsz; uint32_t flags; };

#define CF_VFIO_DEVICE_FLAGS_RESET (1u << 0)
#define CF_VFIO_DEVICE_FLAGS_PCI (1u << 1)
struct cf_vfio_device_info {
    uint32_t argsz; uint32_t flags; uint32_t num_regions; uint32_t num_irqs; uint32_t cap_offset; uint32_t pad;
};

#define CF_VFIO_REGION_INFO_FLAG_READ (1u << 0)
#define CF_VFIO_REGION_INFO_FLAG_WRITE (1u << 1)
#define CF_VFIO_REGION_INFO_FLAG_MMAP (1u << 2)
#define CF_VFIO_REGION_INFO_FLAG_CAPS (1u << 3)
struct cf_vfio_region_info {
    uint32_t argsz; uint32_t flags; uint32_t index; uint32_t cap_offset; cf_u64 size; cf_u64 offset;
};

/* vfio-pci's fixed indexes */
#define CF_VFIO_PCI_BAR0_REGION_INDEX 0
#define CF_VFIO_PCI_ROM_REGION_INDEX 6
#define CF_VFIO_PCI_CONFIG_REGION_INDEX 7
#define CF_VFIO_PCI_VGA_REGION_INDEX 8
#define CF_VFIO_PCI_NUM_REGIONS 9
#define CF_VFIO_PCI_INTX_IRQ_INDEX 0
#define CF_VFIO_PCI_MSI_IRQ_INDEX 1
#define CF_VFIO_PCI_MSIX_IRQ_INDEX 2
#define CF_VFIO_PCI_ERR_IRQ_INDEX 3
#define CF_VFIO_PCI_REQ_IRQ_INDEX 4
#define CF_VFIO_PCI_NUM_IRQS 5

#define CF_VFIO_IRQ_INFO_EVENTFD (1u << 0)
#define CF_VFIO_IRQ_INFO_MASKABLE (1u << 1)
#define CF_VFIO_IRQ_INFO_AUTOMASKED (1u << 2)
#define CF_VFIO_IRQ_INFO_NORESIZE (1u << 3)
struct cf_vfio_irq_info { uint32_t argsz; uint32_t flags; uint32_t index; uint32_t count; };

#define CF_VFIO_IRQ_SET_DATA_NONE (1u << 0)
#define CF_VFIO_IRQ_SET_DATA_BOOL (1u << 1)
#define CF_VFIO_IRQ_SET_DATA_EVENTFD (1u << 2)
#define CF_VFIO_IRQ_SET_ACTION_MASK (1u << 3)
#define CF_VFIO_IRQ_SET_ACTION_UNMASK (1u << 4)
#define CF_VFIO_IRQ_SET_ACTION_TRIGGER (1u << 5)
struct cf_vfio_irq_set { uint32_t argsz; uint32_t flags; uint32_t index; uint32_t start; uint32_t count; };
/* ... followed by `count` u8 bools or s32 eventfds */

struct cf_vfio_device_bind_iommufd { uint32_t argsz; uint32_t flags; int32_t iommufd; uint32_t out_devid; };
struct cf_vfio_device_attach_iommufd_pt { uint32_t argsz; uint32_t flags; uint32_t pt_id; };
struct cf_vfio_device_detach_iommufd_pt { uint32_t argsz; uint32_t flags; };

/* PCI configuration space (the PCI Local Bus specification) */
#define CF_PCI_VENDOR_ID 0x00
#define CF_PCI_DEVICE_ID 0x02
#define CF_PCI_COMMAND 0x04
#define CF_PCI_STATUS 0x06
#define CF_PCI_BASE_ADDRESS_0 0x10
#define CF_PCI_CAPABILITY_LIST 0x34
#define CF_PCI_INTERRUPT_PIN 0x3d
#define CF_PCI_COMMAND_MEMORY 0x2
#define CF_PCI_COMMAND_MASTER 0x4
#define CF_PCI_STATUS_CAP_LIST 0x10
#define CF_PCI_STATUS_REC_MASTER_ABORT 0x2000
#define CF_PCI_CAP_ID_MSI 0x05

/* ---- layout pins ------------------------------------------------------------------------------ */
_Static_assert(sizeof(struct cf_destroy) == 8, "destroy");
_Static_assert(sizeof(struct cf_ioas_alloc) == 12, "ioas_alloc");
_Static_assert(sizeof(struct cf_ioas_allow_iovas) == 24, "allow_iovas");
_Static_assert(sizeof(struct cf_ioas_copy) == 40, "copy");
_Static_assert(sizeof(struct cf_ioas_iova_ranges) == 32, "iova_ranges");
_Static_assert(sizeof(struct cf_ioas_map) == 40, "map");
_Static_assert(sizeof(struct cf_ioas_unmap) == 24, "unmap");
_Static_assert(sizeof(struct cf_option) == 24, "option");
_Static_assert(sizeof(struct cf_vfio_ioas) == 12, "vfio_ioas");
_Static_assert(sizeof(struct cf_hwpt_alloc) == 48, "hwpt_alloc");
_Static_assert(sizeof(struct cf_hw_info) == 40, "hw_info");
_Static_assert(sizeof(struct cf_hwpt_set_dirty_tracking) == 16, "set_dirty");
_Static_assert(sizeof(struct cf_hwpt_get_dirty_bitmap) == 48, "get_dirty");
_Static_assert(sizeof(struct cf_hwpt_invalidate) == 32, "invalidate");
_Static_assert(sizeof(struct cf_fault_alloc) == 16, "fault_alloc");
_Static_assert(sizeof(struct cf_ioas_map_file) == 40, "map_file");
_Static_assert(sizeof(struct cf_viommu_alloc) == 40, "viommu_alloc");
_Static_assert(sizeof(struct cf_vdevice_alloc) == 24, "vdevice_alloc");
_Static_assert(sizeof(struct cf_ioas_change_process) == 8, "change_process");
_Static_assert(sizeof(struct cf_veventq_alloc) == 32, "veventq_alloc");
_Static_assert(sizeof(struct cf_hw_queue_alloc) == 40, "hw_queue_alloc");
_Static_assert(offsetof(struct cf_option, val64) == 16, "option.val64");
_Static_assert(offsetof(struct cf_hw_info, out_capabilities) == 32, "hw_info.out_capabilities");
_Static_assert(sizeof(struct cf_vfio_iommu_info) == 24, "vfio info");
_Static_assert(sizeof(struct cf_vfio_cap_dma_avail) == 12, "dma_avail cap");
_Static_assert(sizeof(struct cf_vfio_cap_iova_range) == 16, "iova_range cap");
_Static_assert(sizeof(struct cf_vfio_dma_map) == 32, "dma_map");
_Static_assert(sizeof(struct cf_vfio_dma_unmap) == 24, "dma_unmap");
_Static_assert(sizeof(struct cf_vfio_group_status) == 8, "group_status");
_Static_assert(sizeof(struct cf_vfio_device_info) == 24, "device_info");
_Static_assert(sizeof(struct cf_vfio_region_info) == 32, "region_info");
_Static_assert(offsetof(struct cf_vfio_region_info, size) == 16, "region_info.size");
_Static_assert(sizeof(struct cf_vfio_irq_info) == 16, "irq_info");
_Static_assert(sizeof(struct cf_vfio_irq_set) == 20, "irq_set");
_Static_assert(sizeof(struct cf_vfio_device_bind_iommufd) == 16, "bind_iommufd (6.6 size)");
_Static_assert(sizeof(struct cf_vfio_device_attach_iommufd_pt) == 12, "attach_iommufd_pt (6.6 size)");
_Static_assert(sizeof(struct cf_vfio_device_detach_iommufd_pt) == 8, "detach_iommufd_pt (6.6 size)");

#endif
