// Struct layouts and numbers of the VFIO device and group uAPI (include/uapi/linux/vfio.h):
// the ioctls of /dev/vfio/<group> and of device files (/dev/vfio/devices/vfioN, or fds from
// VFIO_GROUP_GET_DEVICE_FD), and the vfio-pci region and IRQ index conventions.
//
// Written here from the documented ABI; every offset and size is pinned by
// Tests/ABITests/VFIOLayoutTests.swift. VFIO structs start with `argsz` (the caller's size),
// and each ioctl reads a fixed minimum (`minSize`, the kernel's offsetofend of the last
// mandatory field): below it the kernel answers EINVAL.

/// Request numbers of the VFIO group and device ioctls (`_IO(';', 100 + n)`).
public enum VFIODeviceRequest {
    public static let groupGetStatus: UInt32 = 0x3b67
    public static let groupSetContainer: UInt32 = 0x3b68
    public static let groupUnsetContainer: UInt32 = 0x3b69
    public static let groupGetDeviceFD: UInt32 = 0x3b6a
    public static let getInfo: UInt32 = 0x3b6b
    public static let getRegionInfo: UInt32 = 0x3b6c
    public static let getIRQInfo: UInt32 = 0x3b6d
    public static let setIRQs: UInt32 = 0x3b6e
    public static let reset: UInt32 = 0x3b6f
    public static let getPCIHotResetInfo: UInt32 = 0x3b70
    public static let pciHotReset: UInt32 = 0x3b71
    public static let queryGfxPlane: UInt32 = 0x3b72
    public static let getGfxDmabuf: UInt32 = 0x3b73
    public static let ioeventfd: UInt32 = 0x3b74
    public static let feature: UInt32 = 0x3b75
    public static let bindIOMMUFD: UInt32 = 0x3b76
    public static let attachIOMMUFDPT: UInt32 = 0x3b77
    public static let detachIOMMUFDPT: UInt32 = 0x3b78

    public static let names: [UInt32: String] = [
        groupGetStatus: "VFIO_GROUP_GET_STATUS", groupSetContainer: "VFIO_GROUP_SET_CONTAINER",
        groupUnsetContainer: "VFIO_GROUP_UNSET_CONTAINER", groupGetDeviceFD: "VFIO_GROUP_GET_DEVICE_FD",
        getInfo: "VFIO_DEVICE_GET_INFO", getRegionInfo: "VFIO_DEVICE_GET_REGION_INFO",
        getIRQInfo: "VFIO_DEVICE_GET_IRQ_INFO", setIRQs: "VFIO_DEVICE_SET_IRQS", reset: "VFIO_DEVICE_RESET",
        getPCIHotResetInfo: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", pciHotReset: "VFIO_DEVICE_PCI_HOT_RESET",
        queryGfxPlane: "VFIO_DEVICE_QUERY_GFX_PLANE", getGfxDmabuf: "VFIO_DEVICE_GET_GFX_DMABUF",
        ioeventfd: "VFIO_DEVICE_IOEVENTFD", feature: "VFIO_DEVICE_FEATURE",
        bindIOMMUFD: "VFIO_DEVICE_BIND_IOMMUFD", attachIOMMUFDPT: "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        detachIOMMUFDPT: "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    ]
}

/// vfio-pci's fixed region and IRQ indexes, and the offset encoding of regions in the device
/// file (index << 40).
public enum VFIOPCI {
    public static let bar0RegionIndex: UInt32 = 0
    public static let romRegionIndex: UInt32 = 6
    public static let configRegionIndex: UInt32 = 7
    public static let vgaRegionIndex: UInt32 = 8
    public static let numRegions: UInt32 = 9

    public static let intxIRQIndex: UInt32 = 0
    public static let msiIRQIndex: UInt32 = 1
    public static let msixIRQIndex: UInt32 = 2
    public static let errIRQIndex: UInt32 = 3
    public static let reqIRQIndex: UInt32 = 4
    public static let numIRQs: UInt32 = 5

    public static let offsetShift: UInt64 = 40
    public static let offsetMask: UInt64 = (1 << 40) - 1
    public static func offset(ofRegion index: UInt32) -> UInt64 { UInt64(index) << offsetShift }
    public static func region(ofOffset offset: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: offset >> offsetShift) }

    public static let regionNames = ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"]
    public static let irqNames: [(UInt64, String)] = [(0, "INTX"), (1, "MSI"), (2, "MSIX"), (3, "ERR"), (4, "REQ")]
}

extension ABI {
    /// struct vfio_group_status.
    public enum VFIOGroupStatus {
        public static let size = 8, minSize = 8
        public static let argsz = 0, flags = 4
        public static let flagViable: UInt32 = 1 << 0, flagContainerSet: UInt32 = 1 << 1
        public static let layout = ABIStructLayout("vfio_group_status", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .output, .flags([(1, "VIABLE"), (2, "CONTAINER_SET")])),
        ])
    }

    /// struct vfio_device_info.
    public enum VFIODeviceInfo {
        public static let size = 24
        /// offsetofend(num_irqs).
        public static let minSize = 16
        public static let argsz = 0, flags = 4, numRegions = 8, numIRQs = 12, capOffset = 16, pad = 20
        public static let flagReset: UInt32 = 1 << 0, flagPCI: UInt32 = 1 << 1, flagCaps: UInt32 = 1 << 7
        public static let layout = ABIStructLayout("vfio_device_info", size: size, [
            .u32("argsz", argsz, .inOut),
            .u32("flags", flags, .output, .flags([(1, "RESET"), (2, "PCI"), (4, "PLATFORM"), (128, "CAPS")])),
            .u32("num_regions", numRegions, .output), .u32("num_irqs", numIRQs, .output),
            .u32("cap_offset", capOffset, .output),
        ])
    }

    /// struct vfio_region_info.
    public enum VFIORegionInfo {
        public static let size = 32, minSize = 32
        public static let argsz = 0, flags = 4, index = 8, capOffset = 12, regionSize = 16, offset = 24
        public static let flagRead: UInt32 = 1 << 0, flagWrite: UInt32 = 1 << 1
        public static let flagMmap: UInt32 = 1 << 2, flagCaps: UInt32 = 1 << 3
        public static let layout = ABIStructLayout("vfio_region_info", size: size, [
            .u32("argsz", argsz, .inOut),
            .u32("flags", flags, .output, .flags([(1, "READ"), (2, "WRITE"), (4, "MMAP"), (8, "CAPS")])),
            .u32("index", index, .input), .u32("cap_offset", capOffset, .output),
            .u64("size", regionSize, .output), .u64("offset", offset, .output),
        ])
    }

    /// struct vfio_region_info_cap_type (id 2) and the MSI-X mappable capability (id 3, header only).
    public enum VFIORegionCap {
        public static let sparseMmapID: UInt16 = 1, typeID: UInt16 = 2, msixMappableID: UInt16 = 3
        public static let headerSize = 8
    }

    /// struct vfio_irq_info.
    public enum VFIOIRQInfo {
        public static let size = 16, minSize = 16
        public static let argsz = 0, flags = 4, index = 8, count = 12
        public static let flagEventfd: UInt32 = 1 << 0, flagMaskable: UInt32 = 1 << 1
        public static let flagAutomasked: UInt32 = 1 << 2, flagNoresize: UInt32 = 1 << 3
        public static let layout = ABIStructLayout("vfio_irq_info", size: size, [
            .u32("argsz", argsz, .input),
            .u32("flags", flags, .output, .flags([(1, "EVENTFD"), (2, "MASKABLE"), (4, "AUTOMASKED"), (8, "NORESIZE")])),
            .u32("index", index, .input, .enumeration(VFIOPCI.irqNames)), .u32("count", count, .output),
        ])
    }

    /// struct vfio_irq_set (a header; `data` follows at 20: u8 bools or s32 eventfds).
    public enum VFIOIRQSet {
        public static let size = 20, minSize = 20
        public static let argsz = 0, flags = 4, index = 8, start = 12, count = 16, data = 20
        public static let dataNone: UInt32 = 1 << 0, dataBool: UInt32 = 1 << 1, dataEventfd: UInt32 = 1 << 2
        public static let actionMask: UInt32 = 1 << 3, actionUnmask: UInt32 = 1 << 4, actionTrigger: UInt32 = 1 << 5
        public static let dataTypeMask: UInt32 = 0x7, actionTypeMask: UInt32 = 0x38
        public static let flagNames: [(UInt64, String)] = [
            (1, "DATA_NONE"), (2, "DATA_BOOL"), (4, "DATA_EVENTFD"), (8, "ACTION_MASK"), (16, "ACTION_UNMASK"),
            (32, "ACTION_TRIGGER"),
        ]
        public static let layout = ABIStructLayout("vfio_irq_set", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .flags(flagNames)),
            .u32("index", index, .input, .enumeration(VFIOPCI.irqNames)), .u32("start", start, .input),
            .u32("count", count, .input),
        ])
    }

    /// struct vfio_pci_hot_reset_info (header; `devices` at 12: vfio_pci_dependent_device of 8
    /// bytes — u32 group_id or devid, u16 segment, u8 bus, u8 devfn).
    public enum VFIOHotResetInfo {
        public static let size = 12, minSize = 12
        public static let argsz = 0, flags = 4, count = 8, devices = 12
        public static let deviceSize = 8, deviceID = 0, deviceSegment = 4, deviceBus = 6, deviceDevfn = 7
        public static let flagDevID: UInt32 = 1 << 0, flagDevIDOwned: UInt32 = 1 << 1
        public static let devidOwned: UInt32 = 0, devidNotOwned: UInt32 = 0xffff_ffff
        public static let layout = ABIStructLayout("vfio_pci_hot_reset_info", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .output, .flags([(1, "DEV_ID"), (2, "DEV_ID_OWNED")])),
            .u32("count", count, .inOut),
        ])
    }

    /// struct vfio_pci_hot_reset (header; s32 group_fds[] at 12).
    public enum VFIOHotReset {
        public static let size = 12, minSize = 12
        public static let argsz = 0, flags = 4, count = 8, groupFDs = 12
        public static let layout = ABIStructLayout("vfio_pci_hot_reset", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .hex), .u32("count", count, .input),
        ])
    }

    /// struct vfio_device_feature (header; `data` at 8).
    public enum VFIODeviceFeature {
        public static let size = 8, minSize = 8
        public static let argsz = 0, flags = 4
        public static let featureMask: UInt32 = 0xffff
        public static let get: UInt32 = 1 << 16, set: UInt32 = 1 << 17, probe: UInt32 = 1 << 18
        public static let layout = ABIStructLayout("vfio_device_feature", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .hex),
        ])
    }

    /// struct vfio_device_bind_iommufd (token_uuid_ptr since 6.17).
    public enum VFIOBindIOMMUFD {
        public static let size = 24
        /// offsetofend(out_devid).
        public static let minSize = 16
        public static let argsz = 0, flags = 4, iommufd = 8, outDevID = 12, tokenUUIDPtr = 16
        public static let flagToken: UInt32 = 1 << 0
        public static let layout = ABIStructLayout("vfio_device_bind_iommufd", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .flags([(1, "TOKEN")])),
            .u32("iommufd", iommufd, .input, .signed), .u32("out_devid", outDevID, .output),
        ])
    }

    /// struct vfio_device_attach_iommufd_pt (pasid since 6.15).
    public enum VFIOAttachIOMMUFDPT {
        public static let size = 16
        /// offsetofend(pt_id).
        public static let minSize = 12
        public static let argsz = 0, flags = 4, ptID = 8, pasid = 12
        public static let flagPASID: UInt32 = 1 << 0
        public static let layout = ABIStructLayout("vfio_device_attach_iommufd_pt", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .flags([(1, "PASID")])),
            .u32("pt_id", ptID, .inOut),
        ])
    }

    /// struct vfio_device_detach_iommufd_pt (pasid since 6.15).
    public enum VFIODetachIOMMUFDPT {
        public static let size = 12
        /// offsetofend(flags).
        public static let minSize = 8
        public static let argsz = 0, flags = 4, pasid = 8
        public static let flagPASID: UInt32 = 1 << 0
        public static let layout = ABIStructLayout("vfio_device_detach_iommufd_pt", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .flags([(1, "PASID")])),
        ])
    }
}
