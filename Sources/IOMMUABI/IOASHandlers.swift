// Handlers of the core iommufd ioctls: DESTROY, IOAS_*, OPTION, VFIO_IOAS (main.c, ioas.c,
// vfio_compat.c). Each checks its struct in the kernel's order — unknown flags and non-zero
// __reserved (EOPNOTSUPP), overflow (EOVERFLOW), semantics (EINVAL), objects (ENOENT) — then
// calls the engine and writes back only on success (unless the kernel does otherwise, which
// is said where it happens).

import UIOMMUBase
import IOMMUEngine

/// The handlers of the dispatch table.
enum Handlers {
    // MARK: IOMMU_DESTROY

    static let destroy: IoctlHandler = { file, call in
        let id = call.bytes.u32(ABI.Destroy.id)
        do throws(IOMMUError) {
            try file.destroyObject(id)
        } catch {
            return call.fail(error)
        }
        return 0
    }

    // MARK: IOMMU_IOAS_ALLOC

    static let ioasAlloc: IoctlHandler = { file, call in
        let b = call.bytes
        let flags = b.u32(ABI.IOASAlloc.flags)
        guard flags == 0 else { return call.fail(.EOPNOTSUPP, "unknown flags 0x\(String(flags, radix: 16))") }
        let id: UInt32
        do throws(IOMMUError) {
            id = try file.context.allocIOAS()
        } catch {
            return call.fail(error)
        }
        b.set32(ABI.IOASAlloc.outIOASID, id)
        guard call.respond(file) else {
            // The kernel aborts the object when the ID cannot be returned.
            try? file.context.destroy(id)
            return call.fail(.EFAULT, "cannot write out_ioas_id")
        }
        return 0
    }

    // MARK: IOMMU_IOAS_ALLOW_IOVAS

    /// More ranges than this answer ENOMEM. The kernel has no fixed limit (each range is a
    /// small accounted allocation); the engine's allow-list is a sorted array, so a bound keeps
    /// one ioctl from monopolising the context.
    static let maxAllowedRanges: UInt32 = 4096

    static let ioasAllowIOVAs: IoctlHandler = { file, call in
        let b = call.bytes
        let reserved = b.u32(ABI.IOASAllowIOVAs.reserved)
        guard reserved == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        let ioasID = b.u32(ABI.IOASAllowIOVAs.ioasID)
        if let error = ioasLookupError(file, ioasID) { return call.fail(error) }
        let count = b.u32(ABI.IOASAllowIOVAs.numIOVAs)
        let uptr = b.u64(ABI.IOASAllowIOVAs.allowedIOVAs)
        // iommufd_ioas_load_iovas: one range at a time — EFAULT, start >= last (EINVAL),
        // overlap with an earlier range (EINVAL) — in array order.
        var sorted: [IOVARange] = []
        var ranges: [IOVARange] = []
        var element = (UInt64(0), UInt64(0))
        var i: UInt32 = 0
        while i < count {
            if i >= maxAllowedRanges { return call.fail(.ENOMEM, "more than \(maxAllowedRanges) allowed ranges") }
            let address = uptr &+ UInt64(i) &* UInt64(ABI.IOVARangeElement.size)
            guard file.user.copyFromUser(&element, address, ABI.IOVARangeElement.size) else {
                return call.fail(.EFAULT, "allowed_iovas[\(i)] is unreadable")
            }
            let start = UInt64(littleEndian: element.0), last = UInt64(littleEndian: element.1)
            guard start < last else { return call.fail(.EINVAL, "allowed_iovas[\(i)]: start >= last") }
            let range = IOVARange(first: start, last: last)
            // Sorted insertion; an overlap shows up at a neighbour.
            var lo = 0, hi = sorted.count
            while lo < hi { let mid = (lo + hi) >> 1; if sorted[mid].first < start { lo = mid + 1 } else { hi = mid } }
            if lo > 0 && sorted[lo - 1].overlaps(range) || lo < sorted.count && sorted[lo].overlaps(range) {
                return call.fail(.EINVAL, "allowed_iovas[\(i)] overlaps another range")
            }
            sorted.insert(range, at: lo)
            ranges.append(range)
            i += 1
        }
        do throws(IOMMUError) {
            try file.context.allowIOVAs(ioas: ioasID, ranges)
        } catch {
            return call.fail(error)
        }
        return 0
    }

    // MARK: IOMMU_IOAS_IOVA_RANGES

    static let ioasIOVARanges: IoctlHandler = { file, call in
        let b = call.bytes
        guard b.u32(ABI.IOASIOVARanges.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        let report: IOVARanges
        do throws(IOMMUError) {
            report = try file.context.iovaRanges(ioas: b.u32(ABI.IOASIOVARanges.ioasID))
        } catch {
            return call.fail(error)
        }
        let capacity = b.u32(ABI.IOASIOVARanges.numIOVAs)
        let uptr = b.u64(ABI.IOASIOVARanges.allowedIOVAs)
        b.set64(ABI.IOASIOVARanges.outIOVAAlignment, report.alignment)
        var n: UInt32 = 0
        for range in report.ranges {
            if n < capacity {
                var element = (range.first.littleEndian, range.last.littleEndian)
                let address = uptr &+ UInt64(n) &* UInt64(ABI.IOVARangeElement.size)
                guard file.user.copyToUser(address, &element, ABI.IOVARangeElement.size) else {
                    return call.fail(.EFAULT, "allowed_iovas[\(n)] is not writable")
                }
            }
            n &+= 1
        }
        b.set32(ABI.IOASIOVARanges.numIOVAs, n)
        // Written back even when the array was too small: num_iovas tells the size needed.
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write the struct back") }
        if n > capacity { return call.fail(.EMSGSIZE, "\(n) ranges, room for \(capacity)") }
        return 0
    }

    // MARK: IOMMU_IOAS_MAP

    static let knownMapFlags = IOMMUConstants.mapFixedIOVA | IOMMUConstants.mapWriteable | IOMMUConstants.mapReadable

    static func permissions(_ flags: UInt32) -> MapPermissions {
        var p: MapPermissions = []
        if flags & IOMMUConstants.mapReadable != 0 { p.insert(.read) }
        if flags & IOMMUConstants.mapWriteable != 0 { p.insert(.write) }
        return p
    }

    /// The checks IOAS_MAP, IOAS_MAP_FILE and IOAS_COPY share, in the kernel's order: unknown
    /// flags (or a non-zero __reserved) → EOPNOTSUPP, an IOVA or length of ULONG_MAX →
    /// EOVERFLOW, neither READABLE nor WRITEABLE → EINVAL. nil when all pass.
    static func checkMapRequest(_ call: inout IoctlCall, flags: UInt32, reserved: UInt32 = 0,
                                values: [UInt64]) -> Int64? {
        guard flags & ~knownMapFlags == 0 else { return call.fail(.EOPNOTSUPP, "unknown flags 0x\(String(flags, radix: 16))") }
        guard reserved == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        guard !values.contains(.max) else { return call.fail(.EOVERFLOW, "an IOVA or the length is ULONG_MAX") }
        guard flags & (IOMMUConstants.mapWriteable | IOMMUConstants.mapReadable) != 0 else {
            return call.fail(.EINVAL, "neither READABLE nor WRITEABLE")
        }
        return nil
    }

    static let ioasMap: IoctlHandler = { file, call in
        typealias L = ABI.IOASMap
        let b = call.bytes
        let flags = b.u32(L.flags)
        let iova = b.u64(L.iova), length = b.u64(L.length)
        if let rc = checkMapRequest(&call, flags: flags, reserved: b.u32(L.reserved), values: [iova, length]) { return rc }
        let placed: UInt64
        do throws(IOMMUError) {
            placed = try file.context.map(ioas: b.u32(L.ioasID), userVA: b.u64(L.userVA), length: length,
                                          iova: flags & IOMMUConstants.mapFixedIOVA != 0 ? iova : nil,
                                          permissions: permissions(flags), caller: file.callerMemory)
        } catch {
            return call.fail(error)
        }
        b.set64(L.iova, placed)
        // As in the kernel, the mapping stays if the IOVA cannot be returned.
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write iova back") }
        return 0
    }

    // MARK: IOMMU_IOAS_MAP_FILE

    static let ioasMapFile: IoctlHandler = { file, call in
        typealias L = ABI.IOASMapFile
        let b = call.bytes
        let flags = b.u32(L.flags)
        let iova = b.u64(L.iova), length = b.u64(L.length)
        if let rc = checkMapRequest(&call, flags: flags, values: [iova, length]) { return rc }
        let ioasID = b.u32(L.ioasID)
        if let error = ioasLookupError(file, ioasID) { return call.fail(error) }
        let fd = b.i32(L.fd)
        guard let memory = file.broker.fileMemory(fd: fd) else { return call.fail(.EBADF, "fd \(fd) is not a mappable file") }
        let placed: UInt64
        do throws(IOMMUError) {
            placed = try file.context.mapFile(ioas: ioasID, file: memory, start: b.u64(L.start), length: length,
                                              iova: flags & IOMMUConstants.mapFixedIOVA != 0 ? iova : nil,
                                              permissions: permissions(flags))
        } catch {
            return call.fail(error)
        }
        b.set64(L.iova, placed)
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write iova back") }
        return 0
    }

    // MARK: IOMMU_IOAS_UNMAP

    static let ioasUnmap: IoctlHandler = { file, call in
        typealias L = ABI.IOASUnmap
        let b = call.bytes
        let unmapped: UInt64
        do throws(IOMMUError) {
            unmapped = try file.context.unmap(ioas: b.u32(L.ioasID), iova: b.u64(L.iova), length: b.u64(L.length))
        } catch {
            return call.fail(error)
        }
        b.set64(L.length, unmapped)
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write length back") }
        return 0
    }

    // MARK: IOMMU_IOAS_COPY

    static let ioasCopy: IoctlHandler = { file, call in
        typealias L = ABI.IOASCopy
        let b = call.bytes
        let flags = b.u32(L.flags)
        let length = b.u64(L.length), src = b.u64(L.srcIOVA), dst = b.u64(L.dstIOVA)
        if let rc = checkMapRequest(&call, flags: flags, values: [length, src, dst]) { return rc }
        let placed: UInt64
        do throws(IOMMUError) {
            placed = try file.context.copy(from: b.u32(L.srcIOASID), srcIOVA: src, length: length,
                                           to: b.u32(L.dstIOASID),
                                           dstIOVA: flags & IOMMUConstants.mapFixedIOVA != 0 ? dst : nil,
                                           permissions: permissions(flags))
        } catch {
            return call.fail(error)
        }
        b.set64(L.dstIOVA, placed)
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write dst_iova back") }
        return 0
    }

    // MARK: IOMMU_OPTION

    static let option: IoctlHandler = { file, call in
        typealias L = ABI.Option
        let b = call.bytes
        guard b.u16(L.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        let op = b.u16(L.op), value = b.u64(L.val64)
        switch b.u32(L.optionID) {
        case IOMMUConstants.optionRlimitMode:
            guard b.u32(L.objectID) == 0 else { return call.fail(.EOPNOTSUPP, "RLIMIT_MODE is global: object_id must be 0") }
            switch op {
            case IOMMUConstants.optionOpGet:
                b.set64(L.val64, file.context.rlimitMode == .process ? 1 : 0)
            case IOMMUConstants.optionOpSet:
                guard let mode = AccountMode(rawValue: value) else {
                    // The kernel checks privilege and emptiness before the value: probe them by
                    // setting the current mode again, which changes nothing.
                    do throws(IOMMUError) {
                        try file.context.setRlimitMode(file.context.rlimitMode, privileged: file.options.canSetRlimitMode)
                    } catch {
                        return call.fail(error)
                    }
                    return call.fail(.EINVAL, "RLIMIT_MODE \(value) is neither 0 nor 1")
                }
                do throws(IOMMUError) {
                    try file.context.setRlimitMode(mode, privileged: file.options.canSetRlimitMode)
                } catch {
                    return call.fail(error)
                }
            default:
                return call.fail(.EOPNOTSUPP, "unknown op \(op)")
            }
        case IOMMUConstants.optionHugePages:
            let ioasID = b.u32(L.objectID)
            do throws(IOMMUError) {
                // iommufd_ioas_option looks the IOAS up first.
                let current = try file.context.hugePages(ioas: ioasID)
                switch op {
                case IOMMUConstants.optionOpGet:
                    b.set64(L.val64, current ? 1 : 0)
                case IOMMUConstants.optionOpSet:
                    guard value <= 1 else { return call.fail(.EINVAL, "HUGE_PAGES \(value) is neither 0 nor 1") }
                    try file.context.setHugePages(ioas: ioasID, value == 1)
                default:
                    return call.fail(.EOPNOTSUPP, "unknown op \(op)")
                }
            } catch {
                return call.fail(error)
            }
        default:
            return call.fail(.EOPNOTSUPP, "unknown option \(b.u32(L.optionID))")
        }
        // Only val64 is written back.
        var out = b.u64(L.val64).littleEndian
        guard file.user.copyToUser(call.arg &+ UInt64(L.val64), &out, 8) else {
            return call.fail(.EFAULT, "cannot write val64 back")
        }
        return 0
    }

    // MARK: IOMMU_VFIO_IOAS

    static let vfioIOAS: IoctlHandler = { file, call in
        typealias L = ABI.VFIOIOAS
        let b = call.bytes
        guard b.u16(L.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        switch b.u16(L.op) {
        case IOMMUConstants.vfioIOASGet:
            guard let id = file.compatIOAS() else { return call.fail(.ENODEV, "no compatibility IOAS") }
            b.set32(L.ioasID, id)
            guard call.respond(file) else { return call.fail(.EFAULT, "cannot write ioas_id back") }
            return 0
        case IOMMUConstants.vfioIOASSet:
            do throws(IOMMUError) {
                try file.setCompatIOAS(b.u32(L.ioasID))
            } catch {
                return call.fail(error)
            }
            return 0
        case IOMMUConstants.vfioIOASClear:
            do throws(IOMMUError) { try file.setCompatIOAS(nil) } catch { return call.fail(error) }
            return 0
        default:
            return call.fail(.EOPNOTSUPP, "unknown op \(b.u16(L.op))")
        }
    }

    // MARK: Helpers

    /// ENOENT unless `id` names an IOAS (iommufd_get_ioas), without side effects.
    static func ioasLookupError(_ file: IOMMUFDFile, _ id: UInt32) -> IOMMUError? {
        file.context.objectKind(id) == .ioas ? nil : IOMMUError(.ENOENT, "no IOAS with ID \(id)")
    }
}
