// IOMMU_TEST_CMD: the kernel selftest's multiplexer (drivers/iommu/iommufd/selftest.c),
// served only with `ABIOptions.selftestOps` (the kernel has it only with CONFIG_IOMMUFD_TEST).
//
// The dispatcher has already applied the size rule (min 68 = offsetofend(last), sizeof 72)
// and hands over the whole zero-extended 72-byte command. On a result ≥ 0 it writes the
// buffer back (min(size, 72) bytes), so an op fills its out fields in `buffer` and returns 0.
// Layout: ABI.TestCmd (header and every union member's offsets).
//
// The ops are implemented by the selftest work; until then every op answers EOPNOTSUPP,
// which is also the kernel's answer to an unknown op.

import UIOMMUBase
import IOMMUEngine

/// The ops of iommu_test_cmd (enum in iommufd_test.h).
public enum SelftestOp: UInt32, Sendable, CaseIterable {
    case addReserved = 1
    case mockDomain = 2
    case mdCheckMap = 3
    case mdCheckRefs = 4
    case createAccess = 5
    case destroyAccessPages = 6
    case accessPages = 7
    case accessRW = 8
    case setTempMemoryLimit = 9
    case mockDomainReplace = 10
    case accessReplaceIOAS = 11
    case mockDomainFlags = 12
    case dirty = 13
    case mdCheckIOTLB = 14
    case triggerIOPF = 15
    case devCheckCache = 16
    case triggerVEvent = 17
    case pasidAttach = 18
    case pasidReplace = 19
    case pasidDetach = 20
    case pasidCheckHWPT = 21

    /// The kernel's name (IOMMU_TEST_OP_…).
    public var name: String {
        switch self {
        case .addReserved: "ADD_RESERVED"
        case .mockDomain: "MOCK_DOMAIN"
        case .mdCheckMap: "MD_CHECK_MAP"
        case .mdCheckRefs: "MD_CHECK_REFS"
        case .createAccess: "CREATE_ACCESS"
        case .destroyAccessPages: "DESTROY_ACCESS_PAGES"
        case .accessPages: "ACCESS_PAGES"
        case .accessRW: "ACCESS_RW"
        case .setTempMemoryLimit: "SET_TEMP_MEMORY_LIMIT"
        case .mockDomainReplace: "MOCK_DOMAIN_REPLACE"
        case .accessReplaceIOAS: "ACCESS_REPLACE_IOAS"
        case .mockDomainFlags: "MOCK_DOMAIN_FLAGS"
        case .dirty: "DIRTY"
        case .mdCheckIOTLB: "MD_CHECK_IOTLB"
        case .triggerIOPF: "TRIGGER_IOPF"
        case .devCheckCache: "DEV_CHECK_CACHE"
        case .triggerVEvent: "TRIGGER_VEVENT"
        case .pasidAttach: "PASID_ATTACH"
        case .pasidReplace: "PASID_REPLACE"
        case .pasidDetach: "PASID_DETACH"
        case .pasidCheckHWPT: "PASID_CHECK_HWPT"
        }
    }

    static let names: [(UInt64, String)] = allCases.map { (UInt64($0.rawValue), $0.name) }
}

/// Mock constants of iommufd_test.h.
public enum SelftestConstants {
    public static let apertureStart: UInt64 = 1 << 24
    public static let apertureLast: UInt64 = (1 << 31) - 1
    public static let accessCreateNeedsPinPages: UInt32 = 1 << 0
    public static let accessWrite: UInt32 = 1 << 0          // MOCK_FLAGS_ACCESS_WRITE
    public static let accessRWWrite: UInt32 = 1 << 0        // MOCK_ACCESS_RW_WRITE
    public static let accessRWSlowPath: UInt32 = 1 << 2     // MOCK_ACCESS_RW_SLOW_PATH
    public static let deviceNoDirty: UInt32 = 1 << 0        // MOCK_FLAGS_DEVICE_NO_DIRTY
    public static let deviceHugeIOVA: UInt32 = 1 << 1       // MOCK_FLAGS_DEVICE_HUGE_IOVA
    public static let devicePASID: UInt32 = 1 << 2          // MOCK_FLAGS_DEVICE_PASID
    public static let pasidWidth = 20
    public static let pasidReserved: UInt32 = 1024
}

/// Runs `body` over the command bytes of `buffer` (72 bytes, see ABI.TestCmd).
public func withTestCommand<R>(_ buffer: inout [UInt8], _ body: (StructBytes) -> R) -> R {
    precondition(buffer.count >= ABI.TestCmd.size, "a test command is \(ABI.TestCmd.size) bytes")
    return buffer.withUnsafeMutableBytes { body(StructBytes($0.baseAddress!)) }
}

/// IOMMU_TEST_CMD. Returns ≥ 0 or -errno; `buffer` is the zero-extended command, written
/// back by the dispatcher on success.
func selftestCommand(_ file: IOMMUFDFile, _ buffer: inout [UInt8]) -> Int64 {
    guard file.options.selftestOps else { return -Int64(LinuxErrno.ENOTTY.rawValue) }
    guard buffer.count >= ABI.TestCmd.size else { return -Int64(LinuxErrno.EINVAL.rawValue) }
    let opValue = withTestCommand(&buffer) { $0.u32(ABI.TestCmd.op) }
    guard let op = SelftestOp(rawValue: opValue) else { return -Int64(LinuxErrno.EOPNOTSUPP.rawValue) }
    switch op {
    case .addReserved, .mockDomain, .mdCheckMap, .mdCheckRefs, .createAccess, .destroyAccessPages,
         .accessPages, .accessRW, .setTempMemoryLimit, .mockDomainReplace, .accessReplaceIOAS,
         .mockDomainFlags, .dirty, .mdCheckIOTLB, .triggerIOPF, .devCheckCache, .triggerVEvent,
         .pasidAttach, .pasidReplace, .pasidDetach, .pasidCheckHWPT:
        // Not implemented yet.
        return -Int64(LinuxErrno.EOPNOTSUPP.rawValue)
    }
}
