// The ioctl dispatch table and the extensible-struct ("size") rule of iommufd's main.c.
//
// Every iommufd ioctl is _IO(';', nr): no size or direction bits, the struct's first u32 is
// its size. The rule, in the kernel's order:
//   1. nr < 0x80, or past the table          → the VFIO compatibility ioctls (ENOTTY if unknown);
//   2. get_user(size, arg)                    → EFAULT (NULL or unmapped arg);
//   3. a hole, or a request that is not exactly the table's number → ENOTTY;
//   4. size < offsetofend(last mandatory field) → EINVAL;
//   5. copy_struct_from_user: bytes past the kernel's struct must be zero (E2BIG; EFAULT if
//      unreadable), a shorter struct is zero-extended;
//   6. the handler, which checks flags / __reserved (EOPNOTSUPP), overflow (EOVERFLOW),
//      semantics (EINVAL), objects (ENOENT), in that order, and writes back at most
//      min(size, sizeof) bytes.
//
// Fixed-size commands never touch the heap: the struct lives in a 72-byte stack buffer.

import UIOMMUBase
import IOMMUEngine

/// One command in flight: the kernel's `struct iommufd_ucmd`.
public struct IoctlCall {
    /// The command struct, zero-extended to the kernel's size.
    public let bytes: StructBytes
    /// The user's `size` field.
    public let userSize: UInt32
    /// The user pointer the struct came from.
    public let arg: UInt64
    /// sizeof(struct) the kernel knows.
    public let structSize: Int
    /// The reason of a failure, kept for the trace.
    var reason: String?
    let tracing: Bool

    init(bytes: StructBytes, userSize: UInt32, arg: UInt64, structSize: Int, tracing: Bool) {
        self.bytes = bytes; self.userSize = userSize; self.arg = arg
        self.structSize = structSize; self.tracing = tracing
    }

    /// -errno, remembering why for the trace.
    @inline(__always)
    mutating func fail(_ errno: LinuxErrno, _ why: @autoclosure () -> String) -> Int64 {
        if tracing { reason = why() }
        return -Int64(errno.rawValue)
    }

    /// -errno of an engine error.
    @inline(__always)
    mutating func fail(_ error: IOMMUError) -> Int64 {
        if tracing { reason = error.reason.isEmpty ? error.operation : error.reason }
        return -Int64(error.errno.rawValue)
    }

    /// iommufd_ucmd_respond: copies min(size, sizeof) bytes back to the user.
    func respond(_ file: IOMMUFDFile) -> Bool {
        let count = Int(min(UInt64(userSize), UInt64(structSize)))
        return file.user.copyToUser(arg, bytes.base, count)
    }
}

typealias IoctlHandler = @Sendable (IOMMUFDFile, inout IoctlCall) -> Int64

/// One row of the dispatch table (the kernel's `struct iommufd_ioctl_op`).
struct IoctlOp: Sendable {
    /// The exact request number; 0 for a hole.
    let request: UInt32
    let name: String
    let minSize: Int
    let size: Int
    let layout: ABIStructLayout?
    let handler: IoctlHandler

    static func hole() -> IoctlOp {
        IoctlOp(request: 0, name: "", minSize: 0, size: 0, layout: nil, handler: { _, _ in -Int64(LinuxErrno.ENOTTY.rawValue) })
    }
}

/// Request numbers of the iommufd ioctls (`_IO(';', nr)`).
public enum IOMMURequest {
    public static let destroy: UInt32 = 0x3b80
    public static let ioasAlloc: UInt32 = 0x3b81
    public static let ioasAllowIOVAs: UInt32 = 0x3b82
    public static let ioasCopy: UInt32 = 0x3b83
    public static let ioasIOVARanges: UInt32 = 0x3b84
    public static let ioasMap: UInt32 = 0x3b85
    public static let ioasUnmap: UInt32 = 0x3b86
    public static let option: UInt32 = 0x3b87
    public static let vfioIOAS: UInt32 = 0x3b88
    public static let hwptAlloc: UInt32 = 0x3b89
    public static let getHWInfo: UInt32 = 0x3b8a
    public static let hwptSetDirtyTracking: UInt32 = 0x3b8b
    public static let hwptGetDirtyBitmap: UInt32 = 0x3b8c
    public static let hwptInvalidate: UInt32 = 0x3b8d
    public static let faultQueueAlloc: UInt32 = 0x3b8e
    public static let ioasMapFile: UInt32 = 0x3b8f
    public static let viommuAlloc: UInt32 = 0x3b90
    public static let vdeviceAlloc: UInt32 = 0x3b91
    public static let ioasChangeProcess: UInt32 = 0x3b92
    public static let veventqAlloc: UInt32 = 0x3b93
    public static let hwQueueAlloc: UInt32 = 0x3b94
    public static let testCmd: UInt32 = 0x3ba0
}

/// Request numbers of the VFIO container ioctls iommufd answers (`_IO(';', 100 + n)`).
public enum VFIORequest {
    public static let getAPIVersion: UInt32 = 0x3b64
    public static let checkExtension: UInt32 = 0x3b65
    public static let setIOMMU: UInt32 = 0x3b66
    public static let iommuGetInfo: UInt32 = 0x3b70
    public static let iommuMapDMA: UInt32 = 0x3b71
    public static let iommuUnmapDMA: UInt32 = 0x3b72
    public static let iommuEnable: UInt32 = 0x3b73
    public static let iommuDisable: UInt32 = 0x3b74
    public static let iommuDirtyPages: UInt32 = 0x3b75
}

/// The dispatch table, indexed by nr - 0x80, like iommufd_ioctl_ops[].
enum IoctlTable {
    static let countWithoutSelftest = 0x15       // 0x80 … 0x94
    static let countWithSelftest = 0x21          // … 0xa0 (IOMMUFD_CMD_BASE + 32)
    /// The largest struct (iommu_test_cmd): the size of the stack buffer.
    static let maxSize = 72

    static let ops: [IoctlOp] = {
        var t = [IoctlOp](repeating: .hole(), count: countWithSelftest)
        func add(_ request: UInt32, _ name: String, _ min: Int, _ size: Int, _ layout: ABIStructLayout,
                 _ handler: @escaping IoctlHandler) {
            t[Int(request & 0xff) - 0x80] = IoctlOp(request: request, name: name, minSize: min, size: size,
                                                     layout: layout, handler: handler)
        }
        typealias R = IOMMURequest
        add(R.destroy, "IOMMU_DESTROY", ABI.Destroy.minSize, ABI.Destroy.size, ABI.Destroy.layout, Handlers.destroy)
        add(R.ioasAlloc, "IOMMU_IOAS_ALLOC", ABI.IOASAlloc.minSize, ABI.IOASAlloc.size, ABI.IOASAlloc.layout,
            Handlers.ioasAlloc)
        add(R.ioasAllowIOVAs, "IOMMU_IOAS_ALLOW_IOVAS", ABI.IOASAllowIOVAs.minSize, ABI.IOASAllowIOVAs.size,
            ABI.IOASAllowIOVAs.layout, Handlers.ioasAllowIOVAs)
        add(R.ioasCopy, "IOMMU_IOAS_COPY", ABI.IOASCopy.minSize, ABI.IOASCopy.size, ABI.IOASCopy.layout,
            Handlers.ioasCopy)
        add(R.ioasIOVARanges, "IOMMU_IOAS_IOVA_RANGES", ABI.IOASIOVARanges.minSize, ABI.IOASIOVARanges.size,
            ABI.IOASIOVARanges.layout, Handlers.ioasIOVARanges)
        add(R.ioasMap, "IOMMU_IOAS_MAP", ABI.IOASMap.minSize, ABI.IOASMap.size, ABI.IOASMap.layout, Handlers.ioasMap)
        add(R.ioasUnmap, "IOMMU_IOAS_UNMAP", ABI.IOASUnmap.minSize, ABI.IOASUnmap.size, ABI.IOASUnmap.layout,
            Handlers.ioasUnmap)
        add(R.option, "IOMMU_OPTION", ABI.Option.minSize, ABI.Option.size, ABI.Option.layout, Handlers.option)
        add(R.vfioIOAS, "IOMMU_VFIO_IOAS", ABI.VFIOIOAS.minSize, ABI.VFIOIOAS.size, ABI.VFIOIOAS.layout,
            Handlers.vfioIOAS)
        add(R.hwptAlloc, "IOMMU_HWPT_ALLOC", ABI.HWPTAlloc.minSize, ABI.HWPTAlloc.size, ABI.HWPTAlloc.layout,
            Handlers.hwptAlloc)
        add(R.getHWInfo, "IOMMU_GET_HW_INFO", ABI.HWInfo.minSize, ABI.HWInfo.size, ABI.HWInfo.layout,
            Handlers.getHWInfo)
        add(R.hwptSetDirtyTracking, "IOMMU_HWPT_SET_DIRTY_TRACKING", ABI.HWPTSetDirtyTracking.minSize,
            ABI.HWPTSetDirtyTracking.size, ABI.HWPTSetDirtyTracking.layout, Handlers.hwptSetDirtyTracking)
        add(R.hwptGetDirtyBitmap, "IOMMU_HWPT_GET_DIRTY_BITMAP", ABI.HWPTGetDirtyBitmap.minSize,
            ABI.HWPTGetDirtyBitmap.size, ABI.HWPTGetDirtyBitmap.layout, Handlers.hwptGetDirtyBitmap)
        add(R.hwptInvalidate, "IOMMU_HWPT_INVALIDATE", ABI.HWPTInvalidate.minSize, ABI.HWPTInvalidate.size,
            ABI.HWPTInvalidate.layout, Handlers.hwptInvalidate)
        add(R.faultQueueAlloc, "IOMMU_FAULT_QUEUE_ALLOC", ABI.FaultAlloc.minSize, ABI.FaultAlloc.size,
            ABI.FaultAlloc.layout, Handlers.faultQueueAlloc)
        add(R.ioasMapFile, "IOMMU_IOAS_MAP_FILE", ABI.IOASMapFile.minSize, ABI.IOASMapFile.size,
            ABI.IOASMapFile.layout, Handlers.ioasMapFile)
        add(R.viommuAlloc, "IOMMU_VIOMMU_ALLOC", ABI.VIOMMUAlloc.minSize, ABI.VIOMMUAlloc.size,
            ABI.VIOMMUAlloc.layout, Handlers.viommuAlloc)
        add(R.vdeviceAlloc, "IOMMU_VDEVICE_ALLOC", ABI.VDeviceAlloc.minSize, ABI.VDeviceAlloc.size,
            ABI.VDeviceAlloc.layout, Handlers.vdeviceAlloc)
        add(R.ioasChangeProcess, "IOMMU_IOAS_CHANGE_PROCESS", ABI.IOASChangeProcess.minSize,
            ABI.IOASChangeProcess.size, ABI.IOASChangeProcess.layout, Handlers.ioasChangeProcess)
        add(R.veventqAlloc, "IOMMU_VEVENTQ_ALLOC", ABI.VEventQAlloc.minSize, ABI.VEventQAlloc.size,
            ABI.VEventQAlloc.layout, Handlers.veventqAlloc)
        add(R.hwQueueAlloc, "IOMMU_HW_QUEUE_ALLOC", ABI.HWQueueAlloc.minSize, ABI.HWQueueAlloc.size,
            ABI.HWQueueAlloc.layout, Handlers.hwQueueAlloc)
        add(R.testCmd, "IOMMU_TEST_CMD", ABI.TestCmd.minSize, ABI.TestCmd.size, ABI.TestCmd.layout,
            Handlers.testCmd)
        return t
    }()

    /// What the hot path needs of each row, without the strings and layouts (no reference
    /// counting per call).
    struct Entry: Sendable {
        let request: UInt32
        let minSize: UInt32
        let size: UInt32
        let handler: IoctlHandler
    }
    static let entries: [Entry] = ops.map {
        Entry(request: $0.request, minSize: UInt32($0.minSize), size: UInt32($0.size), handler: $0.handler)
    }

    /// The row for `request`, if it is an iommufd ioctl (whether or not this file serves it).
    static func op(for request: UInt32) -> IoctlOp? {
        let nr = Int(request & 0xff)
        guard nr >= 0x80, nr - 0x80 < ops.count else { return nil }
        let op = ops[nr - 0x80]
        return op.request == request ? op : nil
    }

    /// Every ioctl in the table (for tests and documentation).
    static var all: [(request: UInt32, name: String, minSize: Int, size: Int)] {
        ops.filter { $0.request != 0 }.map { ($0.request, $0.name, $0.minSize, $0.size) }
    }
}

/// The dispatch table as public data: number, name, minimum and full size of every iommufd
/// ioctl this layer knows.
public enum IOMMUIoctls {
    public static var table: [(request: UInt32, name: String, minSize: Int, size: Int)] { IoctlTable.all }
}

extension IOMMUFDFile {
    /// iommufd_fops_ioctl.
    @inline(__always)
    func dispatch(_ cmd: UInt32, _ arg: UInt64, _ trace: TraceRecord?) -> Int64 {
        let nr = Int(cmd & 0xff)
        guard nr >= 0x80, nr - 0x80 < tableCount else { return vfioIoctl(cmd, arg, trace) }

        let op = IoctlTable.entries[nr - 0x80]
        if let trace, op.request == cmd {
            let row = IoctlTable.ops[nr - 0x80]
            trace.name = row.name
            trace.layout = row.layout
        }
        // get_user(size) comes first: a NULL argument is EFAULT even for a hole.
        var userSize: UInt32 = 0
        guard user.copyFromUser(&userSize, arg, 4) else {
            trace?.reason = "cannot read the size at 0x\(String(arg, radix: 16))"
            return -Int64(LinuxErrno.EFAULT.rawValue)
        }
        userSize = UInt32(littleEndian: userSize)
        guard op.request == cmd else {
            return -Int64(LinuxErrno.ENOTTY.rawValue)
        }
        let size = Int(op.size)
        guard userSize >= op.minSize else {
            trace?.reason = "size \(userSize) is below the minimum \(op.minSize)"
            return -Int64(LinuxErrno.EINVAL.rawValue)
        }

        // The command buffer: 72 bytes on the stack, zeroed (the zero-extension of a short struct).
        var storage: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &storage) { raw -> Int64 in
            let base = raw.baseAddress!
            // copy_struct_from_user: the tail past the kernel's struct first, then the struct.
            if Int(userSize) > size {
                let rc = checkZeroedUser(arg &+ UInt64(size), UInt64(userSize) - UInt64(size))
                if rc != 0 {
                    trace?.reason = rc == -Int64(LinuxErrno.E2BIG.rawValue)
                        ? "non-zero bytes past the \(size)-byte struct" : "struct tail unreadable"
                    return rc
                }
            }
            let copy = min(Int(userSize), size)
            guard user.copyFromUser(base, arg, copy) else {
                trace?.reason = "struct unreadable"
                return -Int64(LinuxErrno.EFAULT.rawValue)
            }
            var call = IoctlCall(bytes: StructBytes(base), userSize: userSize, arg: arg, structSize: size,
                                 tracing: trace != nil)
            if let trace { trace.captureInput(call.bytes, userSize: userSize, size: size) }
            let result = op.handler(self, &call)
            if let trace {
                trace.reason = call.reason
                if result >= 0 { trace.captureOutput(call.bytes) }
            }
            return result
        }
    }

    /// check_zeroed_user: 0 if `count` bytes at `uptr` read as zero, -E2BIG at the first
    /// non-zero byte, -EFAULT if unreadable. Reads page by page through a bounded buffer
    /// (`count` is client-controlled, up to 4 GiB), so a fault is reported exactly where the
    /// kernel would find it.
    func checkZeroedUser(_ uptr: UInt64, _ count: UInt64) -> Int64 {
        let chunk = 4096
        return withUnsafeTemporaryAllocation(byteCount: chunk, alignment: 16) { buffer -> Int64 in
            let p = buffer.baseAddress!
            var address = uptr
            var remaining = count
            while remaining > 0 {
                let toPageEnd = UInt64(chunk) - (address & UInt64(chunk - 1))
                let n = Int(min(remaining, toPageEnd))
                guard user.copyFromUser(p, address, n) else { return -Int64(LinuxErrno.EFAULT.rawValue) }
                var i = 0
                // Word at a time where possible.
                while i + 8 <= n {
                    if p.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return -Int64(LinuxErrno.E2BIG.rawValue) }
                    i += 8
                }
                while i < n {
                    if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return -Int64(LinuxErrno.E2BIG.rawValue) }
                    i += 1
                }
                let (next, overflow) = address.addingReportingOverflow(UInt64(n))
                remaining -= UInt64(n)
                if overflow && remaining > 0 { return -Int64(LinuxErrno.EFAULT.rawValue) }
                address = next
            }
            return 0
        }
    }
}
