// IOMMU_TEST_CMD: the kernel selftest's multiplexer (drivers/iommu/iommufd/selftest.c),
// served only with `ABIOptions.selftestOps` (the kernel has it only with CONFIG_IOMMUFD_TEST).
//
// The dispatcher has already applied the size rule (min 68 = offsetofend(last), sizeof 72)
// and hands over the whole zero-extended 72-byte command. On a result ≥ 0 it writes the
// buffer back (min(size, 72) bytes), so an op fills its out fields in `buffer` and returns 0.
// Layout: ABI.TestCmd (header and every union member's offsets).
//
// Each op works on the engine's real machinery: mock devices are devices of the mock IOMMU
// (IOMMUFDContext.createMockDevice), their domains are real mock-format page tables, pin
// counts are the host-wide per-page counts (PinLedger.physicalPins), accesses are engine
// ACCESS objects behind an auxiliary descriptor (SelftestAccess.swift), nested HWPTs carry the
// mock's nested domain (MD_CHECK_IOTLB reads its IOTLB), TRIGGER_IOPF raises a page request
// that lands in a FAULT object's queue, DEV_CHECK_CACHE reads a mock device's cache (which
// vIOMMU invalidations clear), TRIGGER_VEVENT reports a vEVENT through the device's vIOMMU.
// The PASID ops are not modelled and answer as unknown ops (EOPNOTSUPP).

import UIOMMUBase
import IOMMUEngine
import IOMMUHardware
import ProcessMemory

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
    public static let accessSyzkaller: UInt32 = 1 << 16     // MOCK_FLAGS_ACCESS_SYZ
    /// ACCESS_PAGES and ACCESS_RW refuse more than this (ENOMEM), as the kernel does.
    public static let accessMaxLength: UInt64 = 16 << 20
    /// IOMMU_TEST_DEV_CACHE_DEFAULT: every mock device cache entry until a vIOMMU invalidates it.
    public static let devCacheDefault: UInt32 = 0xbaddad
    public static let devCacheIDMax: UInt32 = 3
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
    return withTestCommand(&buffer) { b -> Int64 in
        do throws(IOMMUError) {
            try SelftestOps(file: file, cmd: b).run(op)
            return 0
        } catch {
            return -Int64(error.errno.rawValue)
        }
    }
}

extension LinuxErrno {
    /// File descriptor in bad state: an fd that is not an access file.
    static let EBADFD = LinuxErrno(rawValue: 77)
}

/// One test command being served.
struct SelftestOps {
    let file: IOMMUFDFile
    let cmd: StructBytes
    var context: IOMMUFDContext { file.context }
    var id: UInt32 { cmd.u32(ABI.TestCmd.id) }

    func run(_ op: SelftestOp) throws(IOMMUError) {
        switch op {
        case .addReserved: try addReserved()
        case .mockDomain: try mockDomain(flags: 0)
        case .mockDomainFlags: try mockDomain(flags: cmd.u32(ABI.TestCmd.MockDomainFlags.devFlags))
        case .mockDomainReplace: try mockDomainReplace()
        case .mdCheckMap: try checkMap()
        case .mdCheckRefs: try checkRefs()
        case .createAccess: try createAccess()
        case .destroyAccessPages: try destroyAccessPages()
        case .accessPages: try accessPages()
        case .accessRW: try accessRW()
        case .setTempMemoryLimit:
            try context.setTemporaryMemoryLimit(pages: UInt64(cmd.u32(ABI.TestCmd.MemoryLimit.limit)))
        case .accessReplaceIOAS:
            let access = try accessFile(id)
            try access.context.accessReplaceIOAS(access.accessID, ioas: cmd.u32(ABI.TestCmd.AccessReplaceIOAS.ioasID))
        case .dirty: try dirty()
        case .mdCheckIOTLB: try checkIOTLB()
        case .triggerIOPF: try triggerIOPF()
        case .devCheckCache: try devCheckCache()
        case .triggerVEvent: try triggerVEvent()
        case .pasidAttach, .pasidReplace, .pasidDetach, .pasidCheckHWPT:
            // PASID attachment is not modelled: answered as a kernel without these ops.
            throw IOMMUError(.EOPNOTSUPP, "PASID attach is not supported")
        }
    }

    // MARK: IOAS and devices

    /// ADD_RESERVED: reserves [start, start + length - 1] in IOAS `id`.
    func addReserved() throws(IOMMUError) {
        typealias L = ABI.TestCmd.AddReserved
        let start = cmd.u64(L.start), length = cmd.u64(L.length)
        guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
        let (last, overflow) = start.addingReportingOverflow(length - 1)
        guard !overflow else { throw IOMMUError(.EOVERFLOW, "start + length overflows") }
        try context.addReserved(ioas: id, IOVARange(first: start, last: last))
    }

    /// MOCK_DOMAIN / MOCK_DOMAIN_FLAGS: a mock device bound and attached to `id`.
    func mockDomain(flags: UInt32) throws(IOMMUError) {
        typealias C = SelftestConstants
        let known = C.deviceNoDirty | C.deviceHugeIOVA | C.devicePASID
        guard flags & ~known == 0 else { throw IOMMUError(.EINVAL, "unknown device flags 0x\(String(flags, radix: 16))") }
        var quirks: DeviceQuirks = []
        if flags & C.deviceNoDirty != 0 { quirks.insert(.noDirty) }
        if flags & C.deviceHugeIOVA != 0 { quirks.insert(.hugeIOVA) }
        let ids = try context.createMockDevice(attachTo: id, quirks: quirks, pasid: flags & C.devicePASID != 0)
        typealias L = ABI.TestCmd.MockDomain
        cmd.set32(L.outStdevID, ids.stdev)
        cmd.set32(L.outHWPTID, ids.hwpt)
        cmd.set32(L.outIdevID, ids.idev)
    }

    /// MOCK_DOMAIN_REPLACE: SELFTEST object `id` moves to pt_id; pt_id returns the HWPT used.
    func mockDomainReplace() throws(IOMMUError) {
        typealias L = ABI.TestCmd.MockDomainReplace
        let hwpt = try context.replaceMockDevice(id, with: cmd.u32(L.ptID))
        cmd.set32(L.ptID, hwpt)
    }

    // MARK: Checks

    /// MD_CHECK_MAP: every 2 KiB IO page of [iova, iova + length) in mock HWPT `id` holds the
    /// page that backs the same offset of uptr now (md_check_pa compares frame numbers only).
    func checkMap() throws(IOMMUError) {
        typealias L = ABI.TestCmd.CheckMap
        let io = MockPageTable.ioPageSize
        let iova = cmd.u64(L.iova), length = cmd.u64(L.length), uptr = cmd.u64(L.uptr)
        guard iova % io == 0, length % io == 0, uptr % io == 0,
              !uptr.addingReportingOverflow(length).overflow,
              !iova.addingReportingOverflow(length).overflow else {
            throw IOMMUError(.EINVAL, "iova, length and uptr must be \(io)-aligned")
        }
        let memory = file.callerMemory
        try context.withMockDomain(hwpt: id) { (domain) throws(IOMMUError) in
            guard length > 0 else { return }
            let user = try UserPages(memory, va: uptr, length: length)
            var offset: UInt64 = 0
            while offset < length {
                // The kernel pins the user page first, then reads the IO page.
                let expected = try user.physical(at: uptr + offset)
                guard let page = domain.mockIOPage(at: iova + offset) else {
                    throw IOMMUError(.EINVAL, "IOVA 0x\(String(iova + offset, radix: 16)) is not mapped")
                }
                guard page.physical == expected else {
                    throw IOMMUError(.EINVAL, "IOVA 0x\(String(iova + offset, radix: 16)) maps 0x\(String(page.physical, radix: 16)), uptr has 0x\(String(expected, radix: 16))")
                }
                offset += io
            }
        }
    }

    /// MD_CHECK_REFS: every 4 KiB page of uptr that is not part of a huge page is pinned
    /// exactly `refs` times, counting every pin of every context (EIO otherwise).
    func checkRefs() throws(IOMMUError) {
        typealias L = ABI.TestCmd.CheckRefs
        let length = cmd.u64(L.length), uptr = cmd.u64(L.uptr), refs = Int(cmd.u32(L.refs))
        guard length % hostPageSize == 0, uptr % hostPageSize == 0,
              !uptr.addingReportingOverflow(length).overflow else {
            throw IOMMUError(.EINVAL, "uptr and length must be page aligned")
        }
        guard length > 0 else { return }
        let user = try UserPages(file.callerMemory, va: uptr, length: length)
        let counter = context.platform.ledger.physicalPins
        if user.complete {
            for run in user.runs where run.backingPageSize <= hostPageSize {
                if let (physical, count) = counter.mismatches(physical: run.physical, length: run.length, expected: refs).first {
                    throw IOMMUError(.EIO, "page at physical 0x\(String(physical, radix: 16)) has \(count) pin(s), not \(refs)")
                }
            }
            return
        }
        // Part of the range is not mapped: page by page, as the kernel walks it.
        var offset: UInt64 = 0
        while offset < length {
            let page = try user.page(at: uptr + offset)
            if page.backingPageSize <= hostPageSize, counter.pins(physical: page.physical) != refs {
                throw IOMMUError(.EIO, "page at 0x\(String(uptr + offset, radix: 16)) has \(counter.pins(physical: page.physical)) pin(s), not \(refs)")
            }
            offset += hostPageSize
        }
    }

    // MARK: Dirty tracking

    /// DIRTY: marks dirty the IO page at iova + i * page_size of mock HWPT `id` for every bit i
    /// set in the user bitmap, and returns how many were mapped.
    func dirty() throws(IOMMUError) {
        typealias L = ABI.TestCmd.Dirty
        let iova = cmd.u64(L.iova), length = cmd.u64(L.length), pageSize = cmd.u64(L.pageSize)
        let uptr = cmd.u64(L.uptr)
        guard pageSize != 0, length != 0, iova % pageSize == 0, length % pageSize == 0, uptr != 0 else {
            throw IOMMUError(.EINVAL, "bad iova, length, page_size or bitmap")
        }
        let bits = length / pageSize
        guard bits <= (16 << 20) * 8 else { throw IOMMUError(.EOVERFLOW, "bitmap larger than 16 MiB") }
        let user = file.user
        let count = try context.withMockDomain(hwpt: id) { (domain) throws(IOMMUError) -> UInt64 in
            guard domain.dirtyTrackingEnabled else { throw IOMMUError(.EINVAL, "dirty tracking is off") }
            let bytes = Int((bits + 7) / 8)
            var bitmap = [UInt8](repeating: 0, count: bytes)
            let copied = bitmap.withUnsafeMutableBytes { user.copyFromUser($0.baseAddress!, uptr, bytes) }
            guard copied else { throw IOMMUError(.EFAULT, "the bitmap is not readable") }
            var count: UInt64 = 0
            for (byteIndex, byte) in bitmap.enumerated() where byte != 0 {
                for bit in 0..<8 where byte & (1 << bit) != 0 {
                    let i = UInt64(byteIndex) * 8 + UInt64(bit)
                    guard i < bits else { break }
                    if domain.markDirty(iova: iova + i * pageSize) { count += 1 }
                }
            }
            return count
        }
        cmd.set64(L.outNrDirty, count)
    }

    // MARK: Devices

    /// TRIGGER_IOPF: a page request (LAST_PAGE, with a PASID unless pasid is 0) from DEVICE
    /// dev_id (ENOENT if there is none). It lands in the fault queue of the HWPT handling it;
    /// if none does, the core answers it INVALID and drops it, and the op still succeeds, as
    /// the kernel's does.
    func triggerIOPF() throws(IOMMUError) {
        typealias L = ABI.TestCmd.TriggerIOPF
        let pasid = cmd.u32(L.pasid)
        let request = PageRequest(pasid: pasid == 0 ? nil : pasid, groupID: cmd.u32(L.grpid),
                                  permissions: cmd.u32(L.perm), address: cmd.u64(L.addr), lastPage: true)
        try context.reportPageRequest(device: cmd.u32(L.devID), request)
    }

    /// MD_CHECK_IOTLB: the mock IOTLB entry check_iotlb.id of nested HWPT `id` holds
    /// check_iotlb.iotlb (ENOENT if `id` is not a nested HWPT; EINVAL for a bad entry or value).
    func checkIOTLB() throws(IOMMUError) {
        typealias L = ABI.TestCmd.CheckIOTLB
        let iotlb = try context.mockNestedIOTLB(hwpt: id)
        let entry = cmd.u32(L.id), value = cmd.u32(L.iotlb)
        guard entry <= MockNestedDomain.iotlbIDMax, iotlb[Int(entry)] == value else {
            throw IOMMUError(.EINVAL, "iotlb[\(entry)] is not 0x\(String(value, radix: 16))")
        }
    }

    /// DEV_CHECK_CACHE: entry check_dev_cache.id of the cache of mock DEVICE `id` holds
    /// check_dev_cache.cache (ENOENT without the DEVICE; EINVAL for a bad entry or value).
    func devCheckCache() throws(IOMMUError) {
        typealias L = ABI.TestCmd.CheckDevCache
        guard let cache = try context.mockDeviceCache(device: id) else {
            throw IOMMUError(.EINVAL, "device \(id) is not a mock device")
        }
        let entry = cmd.u32(L.id), value = cmd.u32(L.cache)
        guard entry <= MockDeviceCache.idMax, cache[Int(entry)] == value else {
            throw IOMMUError(.EINVAL, "cache[\(entry)] is not 0x\(String(value, radix: 16))")
        }
    }

    /// TRIGGER_VEVENT: an event (struct iommu_viommu_event_selftest: the virtual ID) from DEVICE
    /// dev_id through the vIOMMU of the nested HWPT it is attached to (ENOENT without one, or
    /// without a virtual ID; EOPNOTSUPP without a vEVENTQ of the selftest type).
    func triggerVEvent() throws(IOMMUError) {
        try context.reportVEvent(device: cmd.u32(ABI.TestCmd.TriggerVEvent.devID)) { virtID in
            var data = [UInt8](repeating: 0, count: ABI.VIOMMUEventSelftest.size)
            data.withUnsafeMutableBytes { StructBytes($0.baseAddress!).set32(ABI.VIOMMUEventSelftest.virtID, UInt32(truncatingIfNeeded: virtID)) }
            return data
        }
    }

    // MARK: Accesses

    /// The access file behind descriptor `fd` (iommufd_access_get): EBADFD if it is not one.
    func accessFile(_ fd: UInt32) throws(IOMMUError) -> SelftestAccessFile {
        guard let access = file.broker.auxiliaryFile(fd: Int32(bitPattern: fd)) as? SelftestAccessFile else {
            throw IOMMUError(.EBADFD, "fd \(Int32(bitPattern: fd)) is not a selftest access")
        }
        return access
    }

    /// CREATE_ACCESS: an access on IOAS `id`, returned as a new descriptor.
    func createAccess() throws(IOMMUError) {
        typealias L = ABI.TestCmd.CreateAccess
        let flags = cmd.u32(L.flags)
        guard flags & ~SelftestConstants.accessCreateNeedsPinPages == 0 else {
            throw IOMMUError(.EOPNOTSUPP, "unknown access flags 0x\(String(flags, radix: 16))")
        }
        let access = SelftestAccessFile(iommufd: file,
                                        needsPinPages: flags & SelftestConstants.accessCreateNeedsPinPages != 0)
        try access.create(ioas: id)
        let fd = file.broker.install(access)
        guard fd >= 0 else {
            access.release()
            // get_unused_fd_flags failing (EMFILE) is ENOMEM in the kernel's create_access.
            throw IOMMUError(fd == -24 ? .ENOMEM : LinuxErrno(rawValue: -fd), "no descriptor for the access")
        }
        cmd.set32(L.outAccessFD, UInt32(bitPattern: fd))
    }

    /// DESTROY_ACCESS_PAGES: unpins one ACCESS_PAGES item.
    func destroyAccessPages() throws(IOMMUError) {
        try accessFile(id).destroyItem(cmd.u32(ABI.TestCmd.DestroyAccessPages.accessPagesID))
    }

    /// ACCESS_PAGES: pins [iova, iova + length) through access `id`, checks that the pinned
    /// pages are the pages behind uptr (EBADE), and returns an item number.
    func accessPages() throws(IOMMUError) {
        typealias L = ABI.TestCmd.AccessPages
        let flags = cmd.u32(L.flags), iova = cmd.u64(L.iova), length = cmd.u64(L.length), uptr = cmd.u64(L.uptr)
        guard length <= SelftestConstants.accessMaxLength else { throw IOMMUError(.ENOMEM, "more than 16 MiB") }
        guard flags & ~SelftestConstants.accessWrite == 0 else {
            throw IOMMUError(.EOPNOTSUPP, "unsupported access flags 0x\(String(flags, radix: 16))")
        }
        let access = try accessFile(id)
        guard access.needsPinPages else { throw IOMMUError(.EOPNOTSUPP, "the access was created without pin ops") }
        let pin = try access.context.accessPinPages(access.accessID, iova: iova, length: length,
                                                    writable: flags & SelftestConstants.accessWrite != 0)
        if uptr != 0 {
            do throws(IOMMUError) {
                try checkPinnedPages(pin.runs, uptr: uptr &- (iova % hostPageSize))
            } catch {
                try? access.context.accessUnpin(access.accessID, pinID: pin.pinID)
                throw error
            }
        }
        let item = access.addItem(iova: iova, length: length, pin: pin.pinID)
        cmd.set32(L.outAccessPagesID, item)
    }

    /// iommufd_test_check_pages: page k of the pin is the page at uptr + k * PAGE_SIZE.
    private func checkPinnedPages(_ runs: [PhysicalRun], uptr: UInt64) throws(IOMMUError) {
        let total = runs.reduce(UInt64(0)) { $0 + $1.length }
        guard total > 0 else { return }
        let user = try UserPages(file.callerMemory, va: uptr, length: total)
        var offset: UInt64 = 0
        for run in runs {
            var k: UInt64 = 0
            while k < run.length {
                guard try user.physical(at: uptr + offset) == run.physical + k else {
                    throw IOMMUError(.EBADE, "pinned page \(offset / hostPageSize) is not the page at uptr")
                }
                k += hostPageSize
                offset += hostPageSize
            }
        }
    }

    /// ACCESS_RW: copies between the user buffer and [iova, iova + length) through access `id`.
    func accessRW() throws(IOMMUError) {
        typealias L = ABI.TestCmd.AccessRW
        let iova = cmd.u64(L.iova), length = cmd.u64(L.length), uptr = cmd.u64(L.uptr), flags = cmd.u32(L.flags)
        guard length <= SelftestConstants.accessMaxLength else { throw IOMMUError(.ENOMEM, "more than 16 MiB") }
        let known = SelftestConstants.accessRWWrite | SelftestConstants.accessRWSlowPath
        guard flags & ~known == 0 else { throw IOMMUError(.EOPNOTSUPP, "unsupported flags 0x\(String(flags, radix: 16))") }
        let access = try accessFile(id)
        let write = flags & SelftestConstants.accessRWWrite != 0
        let count = Int(length)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
        defer { buffer.deallocate() }
        if write, count > 0, !file.user.copyFromUser(buffer, uptr, count) {
            throw IOMMUError(.EFAULT, "the user buffer is not readable")
        }
        try access.context.accessReadWrite(access.accessID, iova: iova, buffer: buffer, count: count, write: write)
        if !write, !file.user.copyToUser(uptr, buffer, count) {
            throw IOMMUError(.EFAULT, "the user buffer is not writable")
        }
    }
}

/// The physical pages behind a range of the caller's memory, as get_user_pages finds them now.
/// If some page of the range is not mapped, the pages before the first such page are still
/// resolved, and asking for a page from it on is EFAULT: the error comes at the page where the
/// kernel's page-by-page walk stops, after the checks of the pages before it.
struct UserPages {
    /// The first page's user address.
    let base: UInt64
    /// The runs of the resolvable prefix of the range.
    let runs: [PhysicalRun]
    /// Bytes from `base` that resolved (the whole page-aligned range when `complete`).
    let resolved: UInt64
    let complete: Bool
    /// User offset (from `base`) where each run starts.
    private let starts: [UInt64]

    init(_ memory: any PinnableMemory, va: UInt64, length: UInt64) throws(IOMMUError) {
        base = va.alignedDown(to: hostPageSize)
        let (end, overflow) = va.addingReportingOverflow(length)
        guard !overflow, let top = end.alignedUp(to: hostPageSize) else { throw IOMMUError(.EFAULT, "user range wraps") }
        let base = self.base
        func resolve(_ bytes: UInt64) -> [PhysicalRun]? {
            guard bytes > 0 else { return [] }
            var runs: [PhysicalRun] = []
            do throws(IOMMUError) {
                try memory.resolve(offset: base, length: bytes, writable: false) { (run) throws(IOMMUError) in
                    runs.append(run)
                }
            } catch {
                return nil
            }
            return runs
        }
        var runs: [PhysicalRun]
        var resolved = top - base
        if let all = resolve(resolved) {
            runs = all
            complete = true
        } else {
            // The longest prefix that resolves (binary search over whole pages).
            var lo: UInt64 = 0, hi = resolved / hostPageSize - 1    // lo pages resolve; hi + 1 do not
            runs = []
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                if let prefix = resolve(mid * hostPageSize) { lo = mid; runs = prefix } else { hi = mid - 1 }
            }
            if lo > 0, runs.isEmpty { runs = resolve(lo * hostPageSize) ?? [] }
            resolved = lo * hostPageSize
            complete = false
        }
        var starts: [UInt64] = []
        var offset: UInt64 = 0
        for run in runs {
            starts.append(offset)
            offset += run.length
        }
        self.runs = runs
        self.resolved = resolved
        self.starts = starts
    }

    /// The physical address of user address `va` (inside the range) and the size of the page
    /// backing it; EFAULT if it is not mapped.
    func page(at va: UInt64) throws(IOMMUError) -> (physical: UInt64, backingPageSize: UInt64) {
        let offset = va - base
        guard offset < resolved else { throw IOMMUError(.EFAULT, "user address 0x\(String(va, radix: 16)) is not mapped") }
        var lo = 0, hi = starts.count
        while lo < hi { let mid = (lo + hi) >> 1; if starts[mid] <= offset { lo = mid + 1 } else { hi = mid } }
        let k = max(0, lo - 1)
        return (runs[k].physical + (offset - starts[k]), runs[k].backingPageSize)
    }

    func physical(at va: UInt64) throws(IOMMUError) -> UInt64 { try page(at: va).physical }
}
