// Struct layouts of the iommufd uAPI (include/uapi/linux/iommufd.h, v6.17) and of the VFIO
// type1 structs that iommufd serves on its own fd (include/uapi/linux/vfio.h).
//
// Written here from the documented ABI: every offset and size below is a fact of the Linux
// x86-64/arm64 ABI (naturally aligned fields, `__aligned_u64` on 8), pinned by the layout
// tests in Tests/ABITests. Nothing relies on Swift's own struct layout: commands are byte
// buffers, read and written with little-endian loads and stores at these offsets.
//
// Each struct is a namespace of `Int` offsets plus `size` (sizeof) and, for ioctl structs,
// `minSize` (offsetofend of the last field an old kernel already had: the kernel's
// `IOCTL_OP(..., last)`), and a `layout` that names every field for the trace and the tests.

/// Which way a field travels.
public enum ABIFieldRole: Sendable, Hashable {
    /// Read by the kernel.
    case input
    /// Written by the kernel.
    case output
    /// Read, then written back (IOAS_MAP's iova, IOAS_UNMAP's length, …).
    case inOut
    /// Must be zero (`__reserved`): shown in traces only when it is not.
    case reserved
}

/// How the trace prints a field.
public enum ABIFieldFormat: Sendable {
    case decimal
    case hex
    /// Named bits, e.g. `FIXED_IOVA|WRITEABLE`; unknown bits print as hex.
    case flags([(UInt64, String)])
    /// Named values, e.g. `HUGE_PAGES`; unknown values print as hex.
    case enumeration([(UInt64, String)])
    /// A signed 32-bit value (file descriptors).
    case signed
}

/// One field of a uAPI struct.
public struct ABIField: Sendable {
    public let name: String
    public let offset: Int
    /// 1, 2, 4 or 8 bytes.
    public let width: Int
    public let role: ABIFieldRole
    public let format: ABIFieldFormat

    public init(_ name: String, _ offset: Int, _ width: Int, _ role: ABIFieldRole, _ format: ABIFieldFormat = .decimal) {
        self.name = name; self.offset = offset; self.width = width; self.role = role; self.format = format
    }

    static func u8(_ n: String, _ o: Int, _ r: ABIFieldRole, _ f: ABIFieldFormat = .decimal) -> ABIField { ABIField(n, o, 1, r, f) }
    static func u16(_ n: String, _ o: Int, _ r: ABIFieldRole, _ f: ABIFieldFormat = .decimal) -> ABIField { ABIField(n, o, 2, r, f) }
    static func u32(_ n: String, _ o: Int, _ r: ABIFieldRole, _ f: ABIFieldFormat = .decimal) -> ABIField { ABIField(n, o, 4, r, f) }
    static func u64(_ n: String, _ o: Int, _ r: ABIFieldRole, _ f: ABIFieldFormat = .hex) -> ABIField { ABIField(n, o, 8, r, f) }
}

/// A named struct: its size and fields in offset order.
public struct ABIStructLayout: Sendable {
    public let name: String
    public let size: Int
    public let fields: [ABIField]
    public init(_ name: String, size: Int, _ fields: [ABIField]) {
        self.name = name; self.size = size; self.fields = fields
    }
    /// The field called `name`.
    public func field(_ name: String) -> ABIField? { fields.first { $0.name == name } }
}

// MARK: - Byte access

/// A view of a command buffer: little-endian loads and stores at byte offsets. The buffer is
/// owned by the caller (a stack buffer in the dispatcher); the view never outlives it.
public struct StructBytes {
    public let base: UnsafeMutableRawPointer
    public init(_ base: UnsafeMutableRawPointer) { self.base = base }

    @inline(__always) public func u8(_ offset: Int) -> UInt8 { base.load(fromByteOffset: offset, as: UInt8.self) }
    @inline(__always) public func u16(_ offset: Int) -> UInt16 {
        UInt16(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inline(__always) public func u32(_ offset: Int) -> UInt32 {
        UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
    @inline(__always) public func i32(_ offset: Int) -> Int32 { Int32(bitPattern: u32(offset)) }
    @inline(__always) public func u64(_ offset: Int) -> UInt64 {
        UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
    @inline(__always) public func set8(_ offset: Int, _ value: UInt8) { base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self) }
    @inline(__always) public func set16(_ offset: Int, _ value: UInt16) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inline(__always) public func set32(_ offset: Int, _ value: UInt32) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
    }
    @inline(__always) public func set64(_ offset: Int, _ value: UInt64) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt64.self)
    }
    /// The field's value, zero-extended (for the trace and the tests).
    public func value(of field: ABIField) -> UInt64 {
        switch field.width {
        case 1: UInt64(u8(field.offset))
        case 2: UInt64(u16(field.offset))
        case 4: UInt64(u32(field.offset))
        default: u64(field.offset)
        }
    }
}

// MARK: - Enumerations of the uAPI

/// Numbers and names from the uAPI headers, for handlers and traces.
public enum IOMMUConstants {
    public static let ioctlType: UInt32 = 0x3b            // ';'
    public static let commandBase: UInt32 = 0x80

    public static let mapFlags: [(UInt64, String)] = [(1, "FIXED_IOVA"), (2, "WRITEABLE"), (4, "READABLE")]
    public static let mapFixedIOVA: UInt32 = 1
    public static let mapWriteable: UInt32 = 2
    public static let mapReadable: UInt32 = 4

    public static let optionIDs: [(UInt64, String)] = [(0, "RLIMIT_MODE"), (1, "HUGE_PAGES")]
    public static let optionOps: [(UInt64, String)] = [(0, "SET"), (1, "GET")]
    public static let optionRlimitMode: UInt32 = 0
    public static let optionHugePages: UInt32 = 1
    public static let optionOpSet: UInt16 = 0
    public static let optionOpGet: UInt16 = 1

    public static let vfioIOASOps: [(UInt64, String)] = [(0, "GET"), (1, "SET"), (2, "CLEAR")]
    public static let vfioIOASGet: UInt16 = 0
    public static let vfioIOASSet: UInt16 = 1
    public static let vfioIOASClear: UInt16 = 2

    public static let hwptAllocFlags: [(UInt64, String)] = [
        (1, "NEST_PARENT"), (2, "DIRTY_TRACKING"), (4, "FAULT_ID_VALID"), (8, "PASID"),
    ]
    public static let hwptAllocNestParent: UInt32 = 1
    public static let hwptAllocDirtyTracking: UInt32 = 2
    public static let hwptFaultIDValid: UInt32 = 4
    public static let hwptAllocPASID: UInt32 = 8

    public static let hwptDataTypes: [(UInt64, String)] = [(0, "NONE"), (1, "VTD_S1"), (2, "ARM_SMMUV3"), (0xdead, "SELFTEST")]
    public static let hwptDataNone: UInt32 = 0

    public static let hwInfoTypes: [(UInt64, String)] = [
        (0, "DEFAULT"), (1, "INTEL_VTD"), (2, "ARM_SMMUV3"), (3, "TEGRA241_CMDQV"), (0xfeed_beef, "SELFTEST"),
    ]
    public static let hwInfoTypeDefault: UInt32 = 0
    public static let hwInfoTypeIntelVTd: UInt32 = 1
    public static let hwInfoTypeARMSMMUv3: UInt32 = 2
    public static let hwInfoTypeTegra241CMDQV: UInt32 = 3
    public static let hwInfoTypeSelftest: UInt32 = 0xfeed_beef
    public static let hwInfoFlags: [(UInt64, String)] = [(1, "INPUT_TYPE")]
    public static let hwInfoFlagInputType: UInt32 = 1
    public static let hwCapabilities: [(UInt64, String)] = [(1, "DIRTY_TRACKING"), (2, "PCI_PASID_EXEC"), (4, "PCI_PASID_PRIV")]

    public static let dirtyTrackingFlags: [(UInt64, String)] = [(1, "ENABLE")]
    public static let dirtyTrackingEnable: UInt32 = 1
    public static let getDirtyBitmapFlags: [(UInt64, String)] = [(1, "NO_CLEAR")]
    public static let getDirtyBitmapNoClear: UInt32 = 1

    public static let hwptDataSelftest: UInt32 = 0xdead
    public static let invalidateDataSelftest: UInt32 = 0xdead_beef
    public static let pgfaultFlags: [(UInt64, String)] = [(1, "PASID_VALID"), (2, "LAST_PAGE")]
    public static let pgfaultPerms: [(UInt64, String)] = [(1, "READ"), (2, "WRITE"), (4, "EXEC"), (8, "PRIV")]
    public static let pageResponseCodes: [(UInt64, String)] = [(0, "SUCCESS"), (1, "INVALID")]
    public static let invalidateDataTypes: [(UInt64, String)] = [(0, "VTD_S1"), (1, "ARM_SMMUV3"), (0xdead_beef, "SELFTEST")]
    public static let viommuTypes: [(UInt64, String)] = [(0, "DEFAULT"), (1, "ARM_SMMUV3"), (2, "TEGRA241_CMDQV"), (0xdead_beef, "SELFTEST")]
    public static let veventqTypes: [(UInt64, String)] = [(0, "DEFAULT"), (1, "ARM_SMMUV3"), (2, "TEGRA241_CMDQV"), (0xbeef_beef, "SELFTEST")]
    public static let viommuTypeSelftest: UInt32 = 0xdead_beef
    public static let veventqTypeSelftest: UInt32 = 0xbeef_beef
    public static let viommuInvalidateDataSelftest: UInt32 = 0xdead_beef
    public static let veventqFlags: [(UInt64, String)] = [(1, "LOST_EVENTS")]
    public static let hwQueueTypes: [(UInt64, String)] = [(0, "DEFAULT"), (1, "TEGRA241_CMDQV"), (0xdead_beef, "SELFTEST")]
}

// MARK: - iommufd ioctl structs

/// The namespace of every uAPI struct layout.
public enum ABI {
    /// struct iommu_destroy.
    public enum Destroy {
        public static let size = 8, minSize = 8
        public static let id = 4
        public static let layout = ABIStructLayout("iommu_destroy", size: size, [
            .u32("size", 0, .input), .u32("id", id, .input),
        ])
    }

    /// struct iommu_ioas_alloc.
    public enum IOASAlloc {
        public static let size = 12, minSize = 12
        public static let flags = 4, outIOASID = 8
        public static let layout = ABIStructLayout("iommu_ioas_alloc", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .hex), .u32("out_ioas_id", outIOASID, .output),
        ])
    }

    /// struct iommu_iova_range (an element of IOAS_IOVA_RANGES / IOAS_ALLOW_IOVAS arrays).
    public enum IOVARangeElement {
        public static let size = 16
        public static let start = 0, last = 8
        public static let layout = ABIStructLayout("iommu_iova_range", size: size, [
            .u64("start", start, .inOut), .u64("last", last, .inOut),
        ])
    }

    /// struct iommu_ioas_allow_iovas.
    public enum IOASAllowIOVAs {
        public static let size = 24, minSize = 24
        public static let ioasID = 4, numIOVAs = 8, reserved = 12, allowedIOVAs = 16
        public static let layout = ABIStructLayout("iommu_ioas_allow_iovas", size: size, [
            .u32("size", 0, .input), .u32("ioas_id", ioasID, .input), .u32("num_iovas", numIOVAs, .input),
            .u32("__reserved", reserved, .reserved, .hex), .u64("allowed_iovas", allowedIOVAs, .input),
        ])
    }

    /// struct iommu_ioas_copy.
    public enum IOASCopy {
        public static let size = 40, minSize = 40
        public static let flags = 4, dstIOASID = 8, srcIOASID = 12, length = 16, dstIOVA = 24, srcIOVA = 32
        public static let layout = ABIStructLayout("iommu_ioas_copy", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .flags(IOMMUConstants.mapFlags)),
            .u32("dst_ioas_id", dstIOASID, .input), .u32("src_ioas_id", srcIOASID, .input),
            .u64("length", length, .input), .u64("dst_iova", dstIOVA, .inOut), .u64("src_iova", srcIOVA, .input),
        ])
    }

    /// struct iommu_ioas_iova_ranges.
    public enum IOASIOVARanges {
        public static let size = 32, minSize = 32
        public static let ioasID = 4, numIOVAs = 8, reserved = 12, allowedIOVAs = 16, outIOVAAlignment = 24
        public static let layout = ABIStructLayout("iommu_ioas_iova_ranges", size: size, [
            .u32("size", 0, .input), .u32("ioas_id", ioasID, .input), .u32("num_iovas", numIOVAs, .inOut),
            .u32("__reserved", reserved, .reserved, .hex), .u64("allowed_iovas", allowedIOVAs, .input),
            .u64("out_iova_alignment", outIOVAAlignment, .output),
        ])
    }

    /// struct iommu_ioas_map.
    public enum IOASMap {
        public static let size = 40, minSize = 40
        public static let flags = 4, ioasID = 8, reserved = 12, userVA = 16, length = 24, iova = 32
        public static let layout = ABIStructLayout("iommu_ioas_map", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .flags(IOMMUConstants.mapFlags)),
            .u32("ioas_id", ioasID, .input), .u32("__reserved", reserved, .reserved, .hex),
            .u64("user_va", userVA, .input), .u64("length", length, .input), .u64("iova", iova, .inOut),
        ])
    }

    /// struct iommu_ioas_map_file.
    public enum IOASMapFile {
        public static let size = 40, minSize = 40
        public static let flags = 4, ioasID = 8, fd = 12, start = 16, length = 24, iova = 32
        public static let layout = ABIStructLayout("iommu_ioas_map_file", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .flags(IOMMUConstants.mapFlags)),
            .u32("ioas_id", ioasID, .input), .u32("fd", fd, .input, .signed),
            .u64("start", start, .input), .u64("length", length, .input), .u64("iova", iova, .inOut),
        ])
    }

    /// struct iommu_ioas_unmap.
    public enum IOASUnmap {
        public static let size = 24, minSize = 24
        public static let ioasID = 4, iova = 8, length = 16
        public static let layout = ABIStructLayout("iommu_ioas_unmap", size: size, [
            .u32("size", 0, .input), .u32("ioas_id", ioasID, .input),
            .u64("iova", iova, .input), .u64("length", length, .inOut),
        ])
    }

    /// struct iommu_option.
    public enum Option {
        public static let size = 24, minSize = 24
        public static let optionID = 4, op = 8, reserved = 10, objectID = 12, val64 = 16
        public static let layout = ABIStructLayout("iommu_option", size: size, [
            .u32("size", 0, .input), .u32("option_id", optionID, .input, .enumeration(IOMMUConstants.optionIDs)),
            .u16("op", op, .input, .enumeration(IOMMUConstants.optionOps)), .u16("__reserved", reserved, .reserved, .hex),
            .u32("object_id", objectID, .input), .u64("val64", val64, .inOut, .decimal),
        ])
    }

    /// struct iommu_vfio_ioas.
    public enum VFIOIOAS {
        public static let size = 12, minSize = 12
        public static let ioasID = 4, op = 8, reserved = 10
        public static let layout = ABIStructLayout("iommu_vfio_ioas", size: size, [
            .u32("size", 0, .input), .u32("ioas_id", ioasID, .inOut),
            .u16("op", op, .input, .enumeration(IOMMUConstants.vfioIOASOps)), .u16("__reserved", reserved, .reserved, .hex),
        ])
    }

    /// struct iommu_hwpt_alloc (fault_id since 6.11).
    public enum HWPTAlloc {
        public static let size = 48, minSize = 24
        public static let flags = 4, devID = 8, ptID = 12, outHWPTID = 16, reserved = 20
        public static let dataType = 24, dataLen = 28, dataUptr = 32, faultID = 40, reserved2 = 44
        public static let layout = ABIStructLayout("iommu_hwpt_alloc", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .flags(IOMMUConstants.hwptAllocFlags)),
            .u32("dev_id", devID, .input), .u32("pt_id", ptID, .input), .u32("out_hwpt_id", outHWPTID, .output),
            .u32("__reserved", reserved, .reserved, .hex),
            .u32("data_type", dataType, .input, .enumeration(IOMMUConstants.hwptDataTypes)),
            .u32("data_len", dataLen, .input), .u64("data_uptr", dataUptr, .input),
            .u32("fault_id", faultID, .input), .u32("__reserved2", reserved2, .reserved, .hex),
        ])
    }

    /// struct iommu_hw_info (in_data_type shares its offset with out_data_type).
    public enum HWInfo {
        public static let size = 40, minSize = 32
        public static let flags = 4, devID = 8, dataLen = 12, dataUptr = 16
        public static let inDataType = 24, outDataType = 24, outMaxPASIDLog2 = 28, reserved = 29
        public static let outCapabilities = 32
        public static let layout = ABIStructLayout("iommu_hw_info", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .flags(IOMMUConstants.hwInfoFlags)),
            .u32("dev_id", devID, .input), .u32("data_len", dataLen, .inOut), .u64("data_uptr", dataUptr, .input),
            .u32("in_data_type", inDataType, .inOut, .enumeration(IOMMUConstants.hwInfoTypes)),
            .u8("out_max_pasid_log2", outMaxPASIDLog2, .output),
            .u8("__reserved[0]", reserved, .reserved, .hex), .u8("__reserved[1]", reserved + 1, .reserved, .hex),
            .u8("__reserved[2]", reserved + 2, .reserved, .hex),
            .u64("out_capabilities", outCapabilities, .output, .flags(IOMMUConstants.hwCapabilities)),
        ])
    }

    /// struct iommu_hwpt_set_dirty_tracking.
    public enum HWPTSetDirtyTracking {
        public static let size = 16, minSize = 16
        public static let flags = 4, hwptID = 8, reserved = 12
        public static let layout = ABIStructLayout("iommu_hwpt_set_dirty_tracking", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .flags(IOMMUConstants.dirtyTrackingFlags)),
            .u32("hwpt_id", hwptID, .input), .u32("__reserved", reserved, .reserved, .hex),
        ])
    }

    /// struct iommu_hwpt_get_dirty_bitmap.
    public enum HWPTGetDirtyBitmap {
        public static let size = 48, minSize = 48
        public static let hwptID = 4, flags = 8, reserved = 12, iova = 16, length = 24, pageSize = 32, data = 40
        public static let layout = ABIStructLayout("iommu_hwpt_get_dirty_bitmap", size: size, [
            .u32("size", 0, .input), .u32("hwpt_id", hwptID, .input),
            .u32("flags", flags, .input, .flags(IOMMUConstants.getDirtyBitmapFlags)),
            .u32("__reserved", reserved, .reserved, .hex), .u64("iova", iova, .input), .u64("length", length, .input),
            .u64("page_size", pageSize, .input), .u64("data", data, .input),
        ])
    }

    /// struct iommu_hwpt_invalidate.
    public enum HWPTInvalidate {
        public static let size = 32, minSize = 32
        public static let hwptID = 4, dataUptr = 8, dataType = 16, entryLen = 20, entryNum = 24, reserved = 28
        public static let layout = ABIStructLayout("iommu_hwpt_invalidate", size: size, [
            .u32("size", 0, .input), .u32("hwpt_id", hwptID, .input), .u64("data_uptr", dataUptr, .input),
            .u32("data_type", dataType, .input, .enumeration(IOMMUConstants.invalidateDataTypes)),
            .u32("entry_len", entryLen, .input), .u32("entry_num", entryNum, .inOut),
            .u32("__reserved", reserved, .reserved, .hex),
        ])
    }

    /// struct iommu_fault_alloc.
    public enum FaultAlloc {
        public static let size = 16, minSize = 16
        public static let flags = 4, outFaultID = 8, outFaultFD = 12
        public static let layout = ABIStructLayout("iommu_fault_alloc", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .hex),
            .u32("out_fault_id", outFaultID, .output), .u32("out_fault_fd", outFaultFD, .output, .signed),
        ])
    }

    /// struct iommu_hwpt_pgfault: one page request as read(2) returns it from a fault queue fd.
    public enum HWPTPgFault {
        public static let size = 40
        public static let flags = 0, devID = 4, pasid = 8, grpid = 12, perm = 16, reserved = 20
        public static let addr = 24, length = 32, cookie = 36
        public static let layout = ABIStructLayout("iommu_hwpt_pgfault", size: size, [
            .u32("flags", flags, .output, .flags(IOMMUConstants.pgfaultFlags)), .u32("dev_id", devID, .output),
            .u32("pasid", pasid, .output), .u32("grpid", grpid, .output),
            .u32("perm", perm, .output, .flags(IOMMUConstants.pgfaultPerms)), .u32("__reserved", reserved, .reserved, .hex),
            .u64("addr", addr, .output), .u32("length", length, .output), .u32("cookie", cookie, .output),
        ])
    }

    /// struct iommu_hwpt_page_response: one response as write(2) takes it on a fault queue fd.
    public enum HWPTPageResponse {
        public static let size = 8
        public static let cookie = 0, code = 4
        public static let layout = ABIStructLayout("iommu_hwpt_page_response", size: size, [
            .u32("cookie", cookie, .input), .u32("code", code, .input, .enumeration(IOMMUConstants.pageResponseCodes)),
        ])
    }

    /// struct iommu_viommu_alloc (data_len / data_uptr since 6.17).
    public enum VIOMMUAlloc {
        public static let size = 40, minSize = 24
        public static let flags = 4, type = 8, devID = 12, hwptID = 16, outVIOMMUID = 20
        public static let dataLen = 24, reserved = 28, dataUptr = 32
        public static let layout = ABIStructLayout("iommu_viommu_alloc", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .hex),
            .u32("type", type, .input, .enumeration(IOMMUConstants.viommuTypes)), .u32("dev_id", devID, .input),
            .u32("hwpt_id", hwptID, .input), .u32("out_viommu_id", outVIOMMUID, .output),
            .u32("data_len", dataLen, .input), .u32("__reserved", reserved, .reserved, .hex),
            .u64("data_uptr", dataUptr, .input),
        ])
    }

    /// struct iommu_vdevice_alloc.
    public enum VDeviceAlloc {
        public static let size = 24, minSize = 24
        public static let viommuID = 4, devID = 8, outVDeviceID = 12, virtID = 16
        public static let layout = ABIStructLayout("iommu_vdevice_alloc", size: size, [
            .u32("size", 0, .input), .u32("viommu_id", viommuID, .input), .u32("dev_id", devID, .input),
            .u32("out_vdevice_id", outVDeviceID, .output), .u64("virt_id", virtID, .input),
        ])
    }

    /// struct iommu_ioas_change_process.
    public enum IOASChangeProcess {
        public static let size = 8, minSize = 8
        public static let reserved = 4
        public static let layout = ABIStructLayout("iommu_ioas_change_process", size: size, [
            .u32("size", 0, .input), .u32("__reserved", reserved, .reserved, .hex),
        ])
    }

    /// struct iommu_veventq_alloc.
    public enum VEventQAlloc {
        public static let size = 32, minSize = 28
        public static let flags = 4, viommuID = 8, type = 12, veventqDepth = 16, outVEventQID = 20
        public static let outVEventQFD = 24, reserved = 28
        public static let layout = ABIStructLayout("iommu_veventq_alloc", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .hex), .u32("viommu_id", viommuID, .input),
            .u32("type", type, .input, .enumeration(IOMMUConstants.veventqTypes)),
            .u32("veventq_depth", veventqDepth, .input), .u32("out_veventq_id", outVEventQID, .output),
            .u32("out_veventq_fd", outVEventQFD, .output, .signed), .u32("__reserved", reserved, .reserved, .hex),
        ])
    }

    /// struct iommu_hw_queue_alloc.
    public enum HWQueueAlloc {
        public static let size = 40, minSize = 40
        public static let flags = 4, viommuID = 8, type = 12, index = 16, outHWQueueID = 20
        public static let nestingParentIOVA = 24, length = 32
        public static let layout = ABIStructLayout("iommu_hw_queue_alloc", size: size, [
            .u32("size", 0, .input), .u32("flags", flags, .input, .hex), .u32("viommu_id", viommuID, .input),
            .u32("type", type, .input, .enumeration(IOMMUConstants.hwQueueTypes)), .u32("index", index, .input),
            .u32("out_hw_queue_id", outHWQueueID, .output), .u64("nesting_parent_iova", nestingParentIOVA, .input),
            .u64("length", length, .input),
        ])
    }

    // MARK: Driver data of IOMMU_GET_HW_INFO

    /// struct iommu_hw_info_vtd (IOMMU_HW_INFO_TYPE_INTEL_VTD).
    public enum HWInfoVTd {
        public static let size = 24
        public static let flags = 0, reserved = 4, capReg = 8, ecapReg = 16
        public static let layout = ABIStructLayout("iommu_hw_info_vtd", size: size, [
            .u32("flags", flags, .output, .hex), .u32("__reserved", reserved, .reserved, .hex),
            .u64("cap_reg", capReg, .output), .u64("ecap_reg", ecapReg, .output),
        ])
    }

    /// struct iommu_hw_info_arm_smmuv3 (IOMMU_HW_INFO_TYPE_ARM_SMMUV3).
    public enum HWInfoARMSMMUv3 {
        public static let size = 40
        public static let flags = 0, reserved = 4, idr = 8, iidr = 32, aidr = 36
        public static let layout = ABIStructLayout("iommu_hw_info_arm_smmuv3", size: size, [
            .u32("flags", flags, .output, .hex), .u32("__reserved", reserved, .reserved, .hex),
            .u32("idr[0]", idr, .output, .hex), .u32("idr[1]", idr + 4, .output, .hex),
            .u32("idr[2]", idr + 8, .output, .hex), .u32("idr[3]", idr + 12, .output, .hex),
            .u32("idr[4]", idr + 16, .output, .hex), .u32("idr[5]", idr + 20, .output, .hex),
            .u32("iidr", iidr, .output, .hex), .u32("aidr", aidr, .output, .hex),
        ])
    }

    /// struct iommu_test_hw_info (the selftest mock's data, IOMMU_HW_INFO_TYPE_SELFTEST).
    public enum HWInfoSelftest {
        public static let size = 8
        public static let flags = 0, testReg = 4
        public static let testRegValue: UInt32 = 0xdead_beef
        public static let layout = ABIStructLayout("iommu_test_hw_info", size: size, [
            .u32("flags", flags, .output, .hex), .u32("test_reg", testReg, .output, .hex),
        ])
    }

    // MARK: IOMMU_TEST_CMD (drivers/iommu/iommufd/iommufd_test.h)

    /// struct iommu_hwpt_selftest: the mock's nested-domain data (IOMMU_HWPT_DATA_SELFTEST).
    /// The first (minimum) version ends with `iotlb`.
    public enum HWPTSelftest {
        public static let size = 4, minSize = 4
        public static let iotlb = 0
        public static let layout = ABIStructLayout("iommu_hwpt_selftest", size: size, [
            .u32("iotlb", iotlb, .input, .hex),
        ])
    }

    /// struct iommu_hwpt_invalidate_selftest: one request of the mock's HWPT_INVALIDATE array
    /// (IOMMU_HWPT_INVALIDATE_DATA_SELFTEST). The first (minimum) version ends with `iotlb_id`.
    public enum HWPTInvalidateSelftest {
        public static let size = 8, minSize = 8
        public static let flags = 0, iotlbID = 4
        public static let layout = ABIStructLayout("iommu_hwpt_invalidate_selftest", size: size, [
            .u32("flags", flags, .input, .flags([(1, "ALL")])), .u32("iotlb_id", iotlbID, .input),
        ])
    }

    /// struct iommu_viommu_selftest: the mock vIOMMU's data (IOMMU_VIOMMU_TYPE_SELFTEST).
    /// The first (minimum) version ends with `out_data`.
    public enum VIOMMUSelftest {
        public static let size = 24, minSize = 8
        public static let inData = 0, outData = 4, outMmapOffset = 8, outMmapLength = 16
        public static let layout = ABIStructLayout("iommu_viommu_selftest", size: size, [
            .u32("in_data", inData, .input, .hex), .u32("out_data", outData, .output, .hex),
            .u64("out_mmap_offset", outMmapOffset, .output, .hex), .u64("out_mmap_length", outMmapLength, .output, .hex),
        ])
    }

    /// struct iommu_viommu_invalidate_selftest: one request of the mock vIOMMU's HWPT_INVALIDATE
    /// array (IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST).
    public enum VIOMMUInvalidateSelftest {
        public static let size = 12
        public static let flags = 0, vdevID = 4, cacheID = 8
        public static let layout = ABIStructLayout("iommu_viommu_invalidate_selftest", size: size, [
            .u32("flags", flags, .input, .flags([(1, "ALL")])), .u32("vdev_id", vdevID, .input, .hex),
            .u32("cache_id", cacheID, .input),
        ])
    }

    /// struct iommufd_vevent_header: what read(2) of a vEVENTQ returns before each event's data.
    public enum VEventHeader {
        public static let size = 8
        public static let flags = 0, sequence = 4
        public static let layout = ABIStructLayout("iommufd_vevent_header", size: size, [
            .u32("flags", flags, .output, .flags(IOMMUConstants.veventqFlags)), .u32("sequence", sequence, .output),
        ])
    }

    /// struct iommu_viommu_event_selftest: the mock's vEVENT data (IOMMU_VEVENTQ_TYPE_SELFTEST).
    public enum VIOMMUEventSelftest {
        public static let size = 4
        public static let virtID = 0
        public static let layout = ABIStructLayout("iommu_viommu_event_selftest", size: size, [
            .u32("virt_id", virtID, .output, .hex),
        ])
    }

    /// struct iommu_test_cmd: a header, a 48-byte union at 16 (its largest member is `dirty`:
    /// a u32 then five 8-aligned u64s), and `last` at 64; sizeof is 72 (padded to 8), and the
    /// kernel's minimum is offsetofend(last) = 68.
    public enum TestCmd {
        public static let size = 72, minSize = 68
        public static let op = 4, id = 8, reserved = 12, union = 16, last = 64
        public static let layout = ABIStructLayout("iommu_test_cmd", size: size, [
            .u32("size", 0, .input), .u32("op", op, .input, .enumeration(SelftestOp.names)),
            .u32("id", id, .input), .u32("__reserved", reserved, .reserved, .hex), .u32("last", last, .input),
        ])
        /// Union members, as offsets from the start of the command.
        public enum AddReserved { public static let start = 16, length = 24 }
        public enum MockDomain { public static let outStdevID = 16, outHWPTID = 20, outIdevID = 24 }
        public enum MockDomainFlags { public static let outStdevID = 16, outHWPTID = 20, outIdevID = 24, devFlags = 28 }
        public enum MockDomainReplace { public static let ptID = 16 }
        public enum CheckMap { public static let iova = 16, length = 24, uptr = 32 }
        public enum CheckRefs { public static let length = 16, uptr = 24, refs = 32 }
        public enum CreateAccess { public static let outAccessFD = 16, flags = 20 }
        public enum DestroyAccessPages { public static let accessPagesID = 16 }
        public enum AccessPages { public static let flags = 16, outAccessPagesID = 20, iova = 24, length = 32, uptr = 40 }
        public enum AccessRW { public static let iova = 16, length = 24, uptr = 32, flags = 40 }
        public enum MemoryLimit { public static let limit = 16 }
        public enum AccessReplaceIOAS { public static let ioasID = 16 }
        public enum Dirty { public static let flags = 16, iova = 24, length = 32, pageSize = 40, uptr = 48, outNrDirty = 56 }
        public enum CheckIOTLB { public static let id = 16, iotlb = 20 }
        public enum TriggerIOPF { public static let devID = 16, pasid = 20, grpid = 24, perm = 28, addr = 32 }
        public enum CheckDevCache { public static let id = 16, cache = 20 }
        public enum TriggerVEvent { public static let devID = 16 }
        public enum PASIDAttach { public static let pasid = 16, ptID = 20 }
        public enum PASIDReplace { public static let pasid = 16, ptID = 20 }
        public enum PASIDDetach { public static let pasid = 16 }
        public enum PASIDCheck { public static let pasid = 16, hwptID = 20 }
    }

    // MARK: - VFIO type1 structs (include/uapi/linux/vfio.h)

    /// struct vfio_iommu_type1_info.
    public enum VFIOType1Info {
        public static let size = 24
        /// offsetofend(iova_pgsizes): what VFIO_IOMMU_GET_INFO reads first.
        public static let minSize = 16
        public static let argsz = 0, flags = 4, iovaPgsizes = 8, capOffset = 16, pad = 20
        public static let flagPgsizes: UInt32 = 1, flagCaps: UInt32 = 2
        public static let layout = ABIStructLayout("vfio_iommu_type1_info", size: size, [
            .u32("argsz", argsz, .inOut), .u32("flags", flags, .output, .flags([(1, "PGSIZES"), (2, "CAPS")])),
            .u64("iova_pgsizes", iovaPgsizes, .output), .u32("cap_offset", capOffset, .output),
            .u32("pad", pad, .reserved, .hex),
        ])
    }

    /// struct vfio_info_cap_header.
    public enum VFIOCapHeader {
        public static let size = 8
        public static let id = 0, version = 2, next = 4
        public static let layout = ABIStructLayout("vfio_info_cap_header", size: size, [
            .u16("id", id, .output), .u16("version", version, .output), .u32("next", next, .output),
        ])
    }

    /// struct vfio_iommu_type1_info_cap_iova_range (capability 1, version 1) and its
    /// vfio_iova_range elements {start, end} of 16 bytes from offset 16.
    public enum VFIOCapIOVARange {
        public static let id: UInt16 = 1, version: UInt16 = 1
        public static let headerSize = 16
        public static let nrIOVAs = 8, reserved = 12, ranges = 16
        public static let rangeSize = 16, rangeStart = 0, rangeEnd = 8
        public static let layout = ABIStructLayout("vfio_iommu_type1_info_cap_iova_range", size: headerSize, [
            .u16("header.id", 0, .output), .u16("header.version", 2, .output), .u32("header.next", 4, .output),
            .u32("nr_iovas", nrIOVAs, .output), .u32("reserved", reserved, .reserved, .hex),
        ])
    }

    /// struct vfio_iommu_type1_info_dma_avail (capability 3, version 1).
    public enum VFIOCapDMAAvail {
        public static let id: UInt16 = 3, version: UInt16 = 1
        public static let size = 12
        public static let avail = 8
        public static let layout = ABIStructLayout("vfio_iommu_type1_info_dma_avail", size: size, [
            .u16("header.id", 0, .output), .u16("header.version", 2, .output), .u32("header.next", 4, .output),
            .u32("avail", avail, .output),
        ])
    }

    /// struct vfio_iommu_type1_dma_map.
    public enum VFIODMAMap {
        public static let size = 32
        public static let argsz = 0, flags = 4, vaddr = 8, iova = 16, length = 24
        public static let flagRead: UInt32 = 1, flagWrite: UInt32 = 2, flagVAddr: UInt32 = 4
        public static let layout = ABIStructLayout("vfio_iommu_type1_dma_map", size: size, [
            .u32("argsz", argsz, .input), .u32("flags", flags, .input, .flags([(1, "READ"), (2, "WRITE"), (4, "VADDR")])),
            .u64("vaddr", vaddr, .input), .u64("iova", iova, .input), .u64("size", length, .input),
        ])
    }

    /// struct vfio_iommu_type1_dma_unmap (without the dirty-bitmap tail).
    public enum VFIODMAUnmap {
        public static let size = 24
        public static let argsz = 0, flags = 4, iova = 8, length = 16
        public static let flagGetDirtyBitmap: UInt32 = 1, flagAll: UInt32 = 2, flagVAddr: UInt32 = 4
        public static let layout = ABIStructLayout("vfio_iommu_type1_dma_unmap", size: size, [
            .u32("argsz", argsz, .input),
            .u32("flags", flags, .input, .flags([(1, "GET_DIRTY_BITMAP"), (2, "ALL"), (4, "VADDR")])),
            .u64("iova", iova, .input), .u64("size", length, .inOut),
        ])
    }
}

/// VFIO numbers used on an iommufd fd.
public enum VFIOConstants {
    public static let apiVersion: Int64 = 0
    public static let type1IOMMU: UInt64 = 1
    public static let spaprTCEIOMMU: UInt64 = 2
    public static let type1v2IOMMU: UInt64 = 3
    public static let dmaCCIOMMU: UInt64 = 4
    public static let eeh: UInt64 = 5
    public static let type1NestingIOMMU: UInt64 = 6
    public static let spaprTCEv2IOMMU: UInt64 = 7
    public static let noIOMMU: UInt64 = 8
    public static let unmapAll: UInt64 = 9
    public static let updateVAddr: UInt64 = 10
    public static let extensionNames: [(UInt64, String)] = [
        (1, "VFIO_TYPE1_IOMMU"), (2, "VFIO_SPAPR_TCE_IOMMU"), (3, "VFIO_TYPE1v2_IOMMU"), (4, "VFIO_DMA_CC_IOMMU"),
        (5, "VFIO_EEH"), (6, "VFIO_TYPE1_NESTING_IOMMU"), (7, "VFIO_SPAPR_TCE_v2_IOMMU"), (8, "VFIO_NOIOMMU_IOMMU"),
        (9, "VFIO_UNMAP_ALL"), (10, "VFIO_UPDATE_VADDR"),
    ]
}
