// Handlers of the hardware-facing ioctls: HWPT_ALLOC (paging and nested), GET_HW_INFO, dirty
// tracking, HWPT_INVALIDATE, FAULT_QUEUE_ALLOC (hw_pagetable.c, device.c, io_pagetable.c,
// eventq.c), vIOMMU, vDEVICE and vEVENTQ allocation (viommu.c, eventq.c), and the answer of
// the feature the engine does not model (HW queues), given as a kernel whose IOMMU drivers
// lack it would give it.

import UIOMMUBase
import IOMMUHardware
import IOMMUEngine

extension Handlers {
    // MARK: IOMMU_HWPT_ALLOC

    static let hwptAlloc: IoctlHandler = { file, call in
        typealias L = ABI.HWPTAlloc
        let b = call.bytes
        guard b.u32(L.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        let dataType = b.u32(L.dataType), dataLen = b.u32(L.dataLen)
        if (dataType == IOMMUConstants.hwptDataNone) != (dataLen == 0) {
            return call.fail(.EINVAL, "data_type and data_len disagree")
        }
        let devID = b.u32(L.devID), ptID = b.u32(L.ptID), flags = b.u32(L.flags)
        // iommufd_get_device: ENOENT.
        do throws(IOMMUError) {
            _ = try file.context.attachedHWPT(device: devID)
        } catch {
            return call.fail(error)
        }
        // A paging HWPT takes no driver data: the drivers refuse user data for a paging
        // domain (EOPNOTSUPP) after the flag checks, which all fail with EOPNOTSUPP too.
        if dataLen != 0, ioasLookupError(file, ptID) == nil {
            return call.fail(.EOPNOTSUPP, "a paging HWPT takes no driver data (data_type \(dataType))")
        }
        // The engine checks in the kernel's order: the pt_id object (EINVAL if none), the
        // allocation (flags and driver data: EOPNOTSUPP; a nested HWPT's parent: EINVAL; the
        // data's copy: EINVAL/EFAULT), then FAULT_ID_VALID's fault_id (ENOENT).
        let userData: HWPTUserData? = dataLen == 0 ? nil : HWPTUserData { () throws(IOMMUError) -> NestedDomainConfig in
            try decodeNestedData(file, type: dataType, uptr: b.u64(L.dataUptr), length: dataLen)
        }
        let hwptID: UInt32
        do throws(IOMMUError) {
            hwptID = try file.context.allocHWPT(device: devID, pt: ptID, flags: HWPTAllocFlags(rawValue: flags),
                                                faultID: b.u32(L.faultID), userData: userData)
        } catch {
            return call.fail(error)
        }
        b.set32(L.outHWPTID, hwptID)
        guard call.respond(file) else {
            try? file.context.destroy(hwptID)
            return call.fail(.EFAULT, "cannot write out_hwpt_id")
        }
        return 0
    }

    /// The driver data of a nested HWPT_ALLOC, as the mock driver reads it: its data type or
    /// EOPNOTSUPP, then iommu_copy_struct_from_user (`decodeUserStruct`).
    static func decodeNestedData(_ file: IOMMUFDFile, type: UInt32, uptr: UInt64,
                                 length: UInt32) throws(IOMMUError) -> NestedDomainConfig {
        guard type == IOMMUConstants.hwptDataSelftest else {
            throw IOMMUError(.EOPNOTSUPP, "the driver has no nested data type 0x\(String(type, radix: 16))")
        }
        typealias D = ABI.HWPTSelftest
        return try decodeUserStruct(file, uptr: uptr, length: length, minSize: D.minSize, size: D.size) { d in
            .selftest(iotlb: d.u32(D.iotlb))
        }
    }

    /// iommu_copy_struct_from_user for driver data of at most 16 bytes: a length below the
    /// struct's first version (`minSize`) or above the driver's struct (`size`) is EINVAL; a
    /// shorter one is zero-extended; unreadable data is EFAULT.
    static func decodeUserStruct<R>(_ file: IOMMUFDFile, uptr: UInt64, length: UInt32, minSize: Int, size: Int,
                                    _ decode: (StructBytes) -> R) throws(IOMMUError) -> R {
        precondition(size <= 16)
        guard Int(length) >= minSize, Int(length) <= size else {
            throw IOMMUError(.EINVAL, "data length \(length) is outside \(minSize)...\(size)")
        }
        var storage: (UInt64, UInt64) = (0, 0)
        return try withUnsafeMutableBytes(of: &storage) { (raw) throws(IOMMUError) -> R in
            guard file.user.copyFromUser(raw.baseAddress!, uptr, Int(length)) else {
                throw IOMMUError(.EFAULT, "data at 0x\(String(uptr, radix: 16)) is not readable")
            }
            return decode(StructBytes(raw.baseAddress!))
        }
    }

    // MARK: IOMMU_GET_HW_INFO

    static let getHWInfo: IoctlHandler = { file, call in
        typealias L = ABI.HWInfo
        let b = call.bytes
        let flags = b.u32(L.flags)
        guard flags & ~IOMMUConstants.hwInfoFlagInputType == 0 else {
            return call.fail(.EOPNOTSUPP, "unknown flags 0x\(String(flags, radix: 16))")
        }
        guard b.u8(L.reserved) == 0, b.u8(L.reserved + 1) == 0, b.u8(L.reserved + 2) == 0 else {
            return call.fail(.EOPNOTSUPP, "__reserved is not zero")
        }
        // Without FLAG_INPUT_TYPE the type field is output only: an input value is ignored.
        if flags & IOMMUConstants.hwInfoFlagInputType == 0 { b.set32(L.inDataType, IOMMUConstants.hwInfoTypeDefault) }
        let requested = b.u32(L.inDataType)
        let info: HWInfo
        do throws(IOMMUError) {
            info = try file.context.hwInfo(device: b.u32(L.devID))
        } catch {
            return call.fail(error)
        }
        // The driver's hw_info callback: its data, or EOPNOTSUPP for a type it does not have.
        return withUnsafeTemporaryAllocation(byteCount: HWInfoData.maxSize, alignment: 8) { buffer -> Int64 in
            let data = StructBytes(buffer.baseAddress!)
            guard let (type, length) = HWInfoData.fill(data, for: info, requested: requested) else {
                return call.fail(.EOPNOTSUPP, "the driver has no hw_info type 0x\(String(requested, radix: 16))")
            }
            let userLength = b.u32(L.dataLen)
            let uptr = b.u64(L.dataUptr)
            let copy = min(Int(userLength), length)
            if copy > 0, !file.user.copyToUser(uptr, data.base, copy) {
                return call.fail(.EFAULT, "data_uptr is not writable")
            }
            // Zero the rest of the user's buffer (clear_user).
            if UInt64(userLength) > UInt64(copy),
               !clearUser(file, uptr &+ UInt64(copy), UInt64(userLength) - UInt64(copy)) {
                return call.fail(.EFAULT, "data_uptr is not writable")
            }
            b.set32(L.dataLen, UInt32(length))
            b.set32(L.outDataType, type)
            b.set64(L.outCapabilities, info.capabilities)
            b.set8(L.outMaxPASIDLog2, info.maxPASIDLog2)
            guard call.respond(file) else { return call.fail(.EFAULT, "cannot write the struct back") }
            return 0
        }
    }

    /// clear_user: writes `count` zero bytes at `uptr` through a bounded buffer.
    static func clearUser(_ file: IOMMUFDFile, _ uptr: UInt64, _ count: UInt64) -> Bool {
        let chunk = 4096
        return withUnsafeTemporaryAllocation(byteCount: chunk, alignment: 16) { buffer -> Bool in
            let p = buffer.baseAddress!
            p.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
            var address = uptr, remaining = count
            while remaining > 0 {
                let n = Int(min(remaining, UInt64(chunk) - (address & UInt64(chunk - 1))))
                guard file.user.copyToUser(address, p, n) else { return false }
                address = address &+ UInt64(n)
                remaining -= UInt64(n)
            }
            return true
        }
    }

    // MARK: IOMMU_HWPT_SET_DIRTY_TRACKING

    static let hwptSetDirtyTracking: IoctlHandler = { file, call in
        typealias L = ABI.HWPTSetDirtyTracking
        let b = call.bytes
        let flags = b.u32(L.flags)
        // The kernel checks the flags only (not __reserved).
        guard flags & ~IOMMUConstants.dirtyTrackingEnable == 0 else {
            return call.fail(.EOPNOTSUPP, "unknown flags 0x\(String(flags, radix: 16))")
        }
        do throws(IOMMUError) {
            try file.context.setDirtyTracking(hwpt: b.u32(L.hwptID), enabled: flags & IOMMUConstants.dirtyTrackingEnable != 0)
        } catch {
            return call.fail(error)
        }
        return 0
    }

    // MARK: IOMMU_HWPT_GET_DIRTY_BITMAP

    static let hwptGetDirtyBitmap: IoctlHandler = { file, call in
        typealias L = ABI.HWPTGetDirtyBitmap
        let b = call.bytes
        let flags = b.u32(L.flags)
        guard flags & ~IOMMUConstants.getDirtyBitmapNoClear == 0 else {
            return call.fail(.EOPNOTSUPP, "unknown flags 0x\(String(flags, radix: 16))")
        }
        guard b.u32(L.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        let pageSize = b.u64(L.pageSize)
        let hwptID = b.u32(L.hwptID)
        let noClear = flags & IOMMUConstants.getDirtyBitmapNoClear != 0
        let bitmap = b.u64(L.data)
        let iova = b.u64(L.iova), length = b.u64(L.length)
        // Validate first, in the kernel's order (ENOENT, EOPNOTSUPP, EOVERFLOW, EINVAL), without
        // touching a dirty bit.
        do throws(IOMMUError) {
            try file.context.checkDirtyRequest(hwpt: hwptID, iova: iova, length: length, pageSize: pageSize)
        } catch {
            return call.fail(error)
        }
        // The engine validated page_size (a power of two) and length: nbits fits.
        let nbits = length >> UInt64(pageSize.trailingZeroBitCount)
        let totalBytes = (nbits >> 3) + (nbits & 7 == 0 ? 0 : 1)
        // The kernel pins the bitmap for writing before it reads (and clears) the dirty
        // bits: an unwritable bitmap fails, dirty or not, before any bit is lost.
        guard probeWritable(file, bitmap, totalBytes) else {
            return call.fail(.EFAULT, "the bitmap at 0x\(String(bitmap, radix: 16)) is not writable")
        }
        // One walk, reading (and unless NO_CLEAR, clearing). Runs of dirty bits are coalesced,
        // so the memory this takes grows with the number of dirty runs, not the bitmap size.
        var runs: [(UInt64, UInt64)] = []
        do throws(IOMMUError) {
            try file.context.readDirty(hwpt: hwptID, iova: iova, length: length, pageSize: pageSize,
                                       clear: !noClear) { first, count in
                if let last = runs.last, last.0 &+ last.1 >= first {
                    let end = max(last.0 &+ last.1, first &+ count)
                    runs[runs.count - 1].1 = end - last.0
                } else {
                    runs.append((first, count))
                }
            }
        } catch {
            return call.fail(error)
        }
        guard setBits(file, bitmap: bitmap, totalBytes: totalBytes, runs: runs) else {
            return call.fail(.EFAULT, "the bitmap at 0x\(String(bitmap, radix: 16)) is not writable")
        }
        return 0
    }

    /// True if every page of `[uptr, uptr + count)` can be read and written (one byte per
    /// page, written back unchanged).
    static func probeWritable(_ file: IOMMUFDFile, _ uptr: UInt64, _ count: UInt64) -> Bool {
        guard count > 0 else { return true }
        var address = uptr
        var remaining = count
        var byte: UInt8 = 0
        while remaining > 0 {
            guard file.user.copyFromUser(&byte, address, 1), file.user.copyToUser(address, &byte, 1) else { return false }
            let step = min(remaining, 4096 - (address & 4095))
            remaining -= step
            address = address &+ step
        }
        return true
    }

    /// Sets the bits of `runs` (ascending) in the user bitmap at `bitmap`, `totalBytes` long
    /// (bit i is bit i%8 of byte i/8: the kernel's little-endian unsigned-long bitmap), leaving
    /// the other bits as they are. Read-modify-write through a bounded window that only moves
    /// forward; `bitmap` may have any alignment.
    static func setBits(_ file: IOMMUFDFile, bitmap: UInt64, totalBytes: UInt64, runs: [(UInt64, UInt64)]) -> Bool {
        guard !runs.isEmpty else { return true }
        let chunk: UInt64 = 4096
        return withUnsafeTemporaryAllocation(byteCount: Int(chunk), alignment: 16) { buffer -> Bool in
            let p = buffer.baseAddress!
            var windowStart: UInt64 = 0, windowLength: UInt64 = 0
            func flush() -> Bool {
                windowLength == 0 || file.user.copyToUser(bitmap &+ windowStart, p, Int(windowLength))
            }
            for (first, count) in runs {
                var bit = first
                let (end, overflow) = first.addingReportingOverflow(count)
                let stopAt = overflow ? UInt64.max : end
                while bit < stopAt {
                    let byte = bit >> 3
                    if windowLength == 0 || byte < windowStart || byte - windowStart >= windowLength {
                        guard flush() else { return false }
                        guard byte < totalBytes else { return true }
                        windowStart = byte
                        windowLength = min(chunk, totalBytes - byte)
                        guard file.user.copyFromUser(p, bitmap &+ windowStart, Int(windowLength)) else { return false }
                    }
                    let (windowEndBit, o) = (windowStart + windowLength).multipliedReportingOverflow(by: 8)
                    let stop = min(stopAt, o ? UInt64.max : windowEndBit)
                    setRange(p, bit - (windowStart << 3), stop - (windowStart << 3))
                    bit = stop
                }
            }
            return flush()
        }
    }

    /// Sets bits [from, to) of the buffer.
    private static func setRange(_ p: UnsafeMutableRawPointer, _ from: UInt64, _ to: UInt64) {
        var bit = from
        while bit < to {
            let byte = Int(bit >> 3), shift = Int(bit & 7)
            if shift == 0 && to - bit >= 8 {
                // Whole bytes.
                let whole = Int((to - bit) >> 3)
                (p + byte).initializeMemory(as: UInt8.self, repeating: 0xff, count: whole)
                bit += UInt64(whole) << 3
                continue
            }
            let span = min(8 - shift, Int(to - bit))
            let mask = UInt8(truncatingIfNeeded: ((1 << span) - 1) << shift)
            p.storeBytes(of: p.load(fromByteOffset: byte, as: UInt8.self) | mask, toByteOffset: byte, as: UInt8.self)
            bit += UInt64(span)
        }
    }

    // MARK: IOMMU_HWPT_INVALIDATE

    /// IOMMU_HWPT_INVALIDATE: __reserved (EOPNOTSUPP), entries without data_uptr or entry_len
    /// (EINVAL), then the object: a nested HWPT's driver handles the array request by request,
    /// a vIOMMU's driver reads the whole array first (readVIOMMURequests); anything else is
    /// EINVAL, nothing ENOENT. entry_num is written back — the
    /// number of requests handled — whatever happens, as the kernel does. Each request is read
    /// with iommu_copy_struct_from_user_array's rule: an entry_len below the driver struct's
    /// first version or above the driver's struct is EINVAL, a shorter one is zero-extended.
    static let hwptInvalidate: IoctlHandler = { file, call in
        typealias L = ABI.HWPTInvalidate
        let b = call.bytes
        var rc: Int64 = 0
        var done: UInt32 = 0
        let entryNum = b.u32(L.entryNum), entryLen = b.u32(L.entryLen), uptr = b.u64(L.dataUptr)
        if b.u32(L.reserved) != 0 {
            rc = call.fail(.EOPNOTSUPP, "__reserved is not zero")
        } else if entryNum != 0 && (uptr == 0 || entryLen == 0) {
            rc = call.fail(.EINVAL, "entries without data_uptr or entry_len")
        } else {
            let dataType = b.u32(L.dataType)
            let type: NestedInvalidationType = dataType == IOMMUConstants.invalidateDataSelftest ? .selftest : .other(dataType)
            let viommuType: VIOMMUInvalidationType = dataType == IOMMUConstants.viommuInvalidateDataSelftest ? .selftest : .other(dataType)
            let readAll = { () throws(IOMMUError) -> [VIOMMUInvalidation] in
                try readVIOMMURequests(file, uptr: uptr, entryLen: entryLen, entryNum: entryNum)
            }
            let result = file.context.invalidateHWPT(b.u32(L.hwptID), type: type, count: entryNum,
                                                     viommuType: viommuType, readAll: readAll) {
                (index) throws(IOMMUError) -> NestedInvalidation in
                typealias E = ABI.HWPTInvalidateSelftest
                // uptr + entry_len * index: an address past the top is unreadable (EFAULT).
                let (address, overflow) = uptr.addingReportingOverflow(UInt64(entryLen) * UInt64(index))
                guard !overflow else { throw IOMMUError(.EFAULT, "request \(index) lies past the address space") }
                return try decodeUserStruct(file, uptr: address, length: entryLen, minSize: E.minSize, size: E.size) { e in
                    .selftest(flags: e.u32(E.flags), iotlbID: e.u32(E.iotlbID))
                }
            }
            done = result.done
            if let error = result.error { rc = call.fail(error) }
        }
        b.set32(L.entryNum, done)
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write entry_num back") }
        return rc
    }

    /// The whole request array of a vIOMMU invalidation, as iommu_copy_struct_from_full_user_array
    /// reads it: each entry_len-byte entry copied into a 12-byte struct
    /// iommu_viommu_invalidate_selftest (zero-extended; E2BIG for non-zero bytes past it;
    /// EFAULT); an array the kernel could not allocate is ENOMEM.
    static func readVIOMMURequests(_ file: IOMMUFDFile, uptr: UInt64, entryLen: UInt32,
                                   entryNum: UInt32) throws(IOMMUError) -> [VIOMMUInvalidation] {
        typealias E = ABI.VIOMMUInvalidateSelftest
        guard entryNum != 0 else { throw IOMMUError(.EINVAL, "empty array") }
        guard UInt64(entryNum) * UInt64(E.size) <= 64 << 20 else { throw IOMMUError(.ENOMEM, "request array too large") }
        var requests: [VIOMMUInvalidation] = []
        requests.reserveCapacity(Int(entryNum))
        for i in 0..<UInt64(entryNum) {
            let (address, overflow) = uptr.addingReportingOverflow(UInt64(entryLen) * i)
            guard !overflow else { throw IOMMUError(.EFAULT, "request \(i) lies past the address space") }
            let bytes = try readUserStruct(file, uptr: address, length: UInt64(entryLen), size: E.size)
            let r = bytes.withUnsafeBytes { raw in
                (raw.load(fromByteOffset: E.flags, as: UInt32.self), raw.load(fromByteOffset: E.vdevID, as: UInt32.self),
                 raw.load(fromByteOffset: E.cacheID, as: UInt32.self))
            }
            requests.append(.selftest(flags: r.0, vdevID: r.1, cacheID: r.2))
        }
        return requests
    }

    // MARK: IOMMU_FAULT_QUEUE_ALLOC

    /// IOMMU_FAULT_QUEUE_ALLOC: flags (EOPNOTSUPP), then a FAULT object and its descriptor
    /// (FaultQueueFile); both go away again if the answer cannot be written back.
    static let faultQueueAlloc: IoctlHandler = { file, call in
        typealias L = ABI.FaultAlloc
        let b = call.bytes
        let flags = b.u32(L.flags)
        guard flags == 0 else { return call.fail(.EOPNOTSUPP, "unknown flags 0x\(String(flags, radix: 16))") }
        let endpoint: FaultQueueEndpoint
        do throws(IOMMUError) {
            endpoint = try file.context.allocFaultQueue()
        } catch {
            return call.fail(error)
        }
        return installQueue(FaultQueueFile(iommufd: file, endpoint: endpoint), id: endpoint.id,
                            idField: L.outFaultID, fdField: L.outFaultFD, what: "fault queue", file, &call)
    }

    /// Hands out the descriptor of a new event queue (fault queue, vEVENTQ) and answers its ID
    /// and fd. The queue holds the context while its descriptor is open.
    private static func installQueue(_ queueFile: some EventQueueFile, id: UInt32, idField: Int, fdField: Int,
                                     what: String, _ file: IOMMUFDFile, _ call: inout IoctlCall) -> Int64 {
        queueFile.retainContext()
        let fd = file.broker.install(queueFile)
        guard fd >= 0 else {
            queueFile.abort()
            queueFile.release()
            return call.fail(LinuxErrno(rawValue: -fd), "no descriptor for the \(what)")
        }
        call.bytes.set32(idField, id)
        call.bytes.set32(fdField, UInt32(bitPattern: fd))
        guard call.respond(file) else {
            // The kernel never installs the descriptor; this one stays open but dead.
            queueFile.abort()
            return call.fail(.EFAULT, "cannot write the \(what)'s ID and fd")
        }
        return 0
    }

    // MARK: IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, IOMMU_VEVENTQ_ALLOC

    /// IOMMU_VIOMMU_ALLOC: flags and type DEFAULT (EOPNOTSUPP), then the engine: the device
    /// (ENOENT), the driver's support of the type (EOPNOTSUPP), the HWPT (ENOENT; EINVAL
    /// without NEST_PARENT), the driver data if data_len is not 0 (struct iommu_viommu_selftest:
    /// EINVAL below its first version or without data_uptr, E2BIG for non-zero bytes past it,
    /// EFAULT), whose out fields the driver writes back. The object goes away again if the
    /// answer cannot be written.
    static let viommuAlloc: IoctlHandler = { file, call in
        typealias L = ABI.VIOMMUAlloc
        let b = call.bytes
        let type = b.u32(L.type)
        guard b.u32(L.flags) == 0, type != 0 else { return call.fail(.EOPNOTSUPP, "unknown flags, or type DEFAULT") }
        let dataLen = b.u32(L.dataLen), uptr = b.u64(L.dataUptr)
        typealias D = ABI.VIOMMUSelftest
        let userData: VIOMMUUserData? = dataLen == 0 ? nil : VIOMMUUserData(decode: { () throws(IOMMUError) -> UInt32 in
            // iommu_copy_struct_from_user for the driver's type (the vIOMMU type here).
            guard type == IOMMUConstants.viommuTypeSelftest else { throw IOMMUError(.EINVAL, "data of another type") }
            let bytes = try copyStructFromUser(file, uptr: uptr, length: UInt64(dataLen), minSize: D.minSize, size: D.size)
            return bytes.withUnsafeBytes { $0.load(fromByteOffset: D.inData, as: UInt32.self) }
        }, respond: { (outData, offset, length) throws(IOMMUError) in
            var reply = [UInt8](repeating: 0, count: D.size)
            reply.withUnsafeMutableBytes { raw in
                let r = StructBytes(raw.baseAddress!)
                r.set32(D.inData, outData)
                r.set32(D.outData, outData)
                r.set64(D.outMmapOffset, offset)
                r.set64(D.outMmapLength, length)
            }
            let n = min(Int(dataLen), D.size)
            let ok = reply.withUnsafeBytes { file.user.copyToUser(uptr, $0.baseAddress!, n) }
            guard ok else { throw IOMMUError(.EFAULT, "data_uptr is not writable") }
        })
        let id: UInt32
        do throws(IOMMUError) {
            id = try file.context.allocVIOMMU(device: b.u32(L.devID), hwpt: b.u32(L.hwptID), type: type, userData: userData)
        } catch {
            return call.fail(error)
        }
        b.set32(L.outVIOMMUID, id)
        guard call.respond(file) else {
            try? file.context.destroy(id)
            return call.fail(.EFAULT, "cannot write out_viommu_id")
        }
        return 0
    }

    /// copy_struct_from_user of a driver struct of `size` bytes from `length` user bytes
    /// (iommu_copy_struct_from_user): below `minSize` or a NULL pointer EINVAL; a shorter
    /// struct is zero-extended; bytes past `size` must be zero (E2BIG); unreadable EFAULT.
    static func copyStructFromUser(_ file: IOMMUFDFile, uptr: UInt64, length: UInt64, minSize: Int,
                                   size: Int) throws(IOMMUError) -> [UInt8] {
        guard length >= UInt64(minSize), uptr != 0 else {
            throw IOMMUError(.EINVAL, "data length \(length) is below \(minSize), or no data pointer")
        }
        return try readUserStruct(file, uptr: uptr, length: length, size: size)
    }

    /// copy_struct_from_user: `size` bytes from `length` user bytes at `uptr` (zero-extended;
    /// E2BIG for a non-zero byte past `size`; EFAULT).
    static func readUserStruct(_ file: IOMMUFDFile, uptr: UInt64, length: UInt64, size: Int) throws(IOMMUError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        let n = Int(min(length, UInt64(size)))
        if n > 0 {
            let ok = bytes.withUnsafeMutableBytes { file.user.copyFromUser($0.baseAddress!, uptr, n) }
            guard ok else { throw IOMMUError(.EFAULT, "data at 0x\(String(uptr, radix: 16)) is not readable") }
        }
        if length > UInt64(size) {
            // check_zeroed_user over the tail, a bounded chunk at a time.
            var address = uptr &+ UInt64(size), remaining = length - UInt64(size)
            var chunk = [UInt8](repeating: 0, count: 4096)
            while remaining > 0 {
                let k = Int(min(remaining, 4096))
                let ok = chunk.withUnsafeMutableBytes { file.user.copyFromUser($0.baseAddress!, address, k) }
                guard ok else { throw IOMMUError(.EFAULT, "data at 0x\(String(address, radix: 16)) is not readable") }
                if chunk[0..<k].contains(where: { $0 != 0 }) {
                    throw IOMMUError(.E2BIG, "non-zero bytes past the driver's struct")
                }
                address = address &+ UInt64(k)
                remaining -= UInt64(k)
            }
        }
        return bytes
    }

    /// IOMMU_VDEVICE_ALLOC: the vIOMMU (ENOENT), the device (ENOENT), the same IOMMU (EINVAL),
    /// one vDEVICE per device and per virt_id (EEXIST).
    static let vdeviceAlloc: IoctlHandler = { file, call in
        typealias L = ABI.VDeviceAlloc
        let b = call.bytes
        let id: UInt32
        do throws(IOMMUError) {
            id = try file.context.allocVDevice(viommu: b.u32(L.viommuID), device: b.u32(L.devID), virtID: b.u64(L.virtID))
        } catch {
            return call.fail(error)
        }
        b.set32(L.outVDeviceID, id)
        guard call.respond(file) else {
            try? file.context.destroy(id)
            return call.fail(.EFAULT, "cannot write out_vdevice_id")
        }
        return 0
    }

    /// IOMMU_IOAS_CHANGE_PROCESS: the calling process takes over the pin accounting of every
    /// file map (EINVAL if a user-address map exists).
    static let ioasChangeProcess: IoctlHandler = { file, call in
        guard call.bytes.u32(ABI.IOASChangeProcess.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "__reserved is not zero") }
        do throws(IOMMUError) {
            try file.context.changeProcess(to: file.callerMemory.owner)
        } catch {
            return call.fail(error)
        }
        return 0
    }

    /// IOMMU_VEVENTQ_ALLOC: flags, __reserved and type DEFAULT (EOPNOTSUPP), depth 0 (EINVAL),
    /// then the vIOMMU (ENOENT) and one queue per type (EEXIST); a VEVENTQ object and its
    /// descriptor (VEventQueueFile), both gone again if the answer cannot be written back.
    static let veventqAlloc: IoctlHandler = { file, call in
        typealias L = ABI.VEventQAlloc
        let b = call.bytes
        guard b.u32(L.flags) == 0, b.u32(L.reserved) == 0 else { return call.fail(.EOPNOTSUPP, "flags or __reserved not zero") }
        guard b.u32(L.type) != 0 else { return call.fail(.EOPNOTSUPP, "type DEFAULT cannot be allocated") }
        guard b.u32(L.veventqDepth) != 0 else { return call.fail(.EINVAL, "veventq_depth is 0") }
        let endpoint: VEventQueueEndpoint
        do throws(IOMMUError) {
            endpoint = try file.context.allocVEventQueue(viommu: b.u32(L.viommuID), type: b.u32(L.type),
                                                         depth: b.u32(L.veventqDepth))
        } catch {
            return call.fail(error)
        }
        return installQueue(VEventQueueFile(iommufd: file, endpoint: endpoint), id: endpoint.id,
                            idField: L.outVEventQID, fdField: L.outVEventQFD, what: "vEVENTQ", file, &call)
    }

    /// IOMMU_HW_QUEUE_ALLOC: flags and type (EOPNOTSUPP), length (EINVAL), overflow
    /// (EOVERFLOW), then the vIOMMU lookup (ENOENT); HW queues are not modelled (EOPNOTSUPP).
    static let hwQueueAlloc: IoctlHandler = { file, call in
        typealias L = ABI.HWQueueAlloc
        let b = call.bytes
        guard b.u32(L.flags) == 0 else { return call.fail(.EOPNOTSUPP, "unknown flags") }
        guard b.u32(L.type) != 0 else { return call.fail(.EOPNOTSUPP, "type DEFAULT cannot be allocated") }
        let length = b.u64(L.length)
        guard length != 0 else { return call.fail(.EINVAL, "length is 0") }
        guard !b.u64(L.nestingParentIOVA).addingReportingOverflow(length - 1).overflow else {
            return call.fail(.EOVERFLOW, "nesting_parent_iova + length overflows")
        }
        do throws(IOMMUError) {
            _ = try file.context.viommuInfo(b.u32(L.viommuID))
        } catch {
            return call.fail(error)
        }
        // HW queues are not modelled: answered as a vIOMMU driver without them.
        return call.fail(.EOPNOTSUPP, "the vIOMMU driver has no HW queues")
    }

    // MARK: IOMMU_TEST_CMD

    static let testCmd: IoctlHandler = { file, call in
        var buffer = [UInt8](repeating: 0, count: ABI.TestCmd.size)
        buffer.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: call.bytes.base, byteCount: ABI.TestCmd.size) }
        let rc = selftestCommand(file, &buffer)
        buffer.withUnsafeBytes { call.bytes.base.copyMemory(from: $0.baseAddress!, byteCount: ABI.TestCmd.size) }
        let op = call.bytes.u32(ABI.TestCmd.op)
        if rc < 0 { return call.fail(LinuxErrno(rawValue: Int32(truncatingIfNeeded: -rc)), "selftest op \(op)") }
        guard call.respond(file) else { return call.fail(.EFAULT, "cannot write the command back") }
        return rc
    }
}
