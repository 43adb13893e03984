// IOAS: an I/O address space, and the operations of the IOMMU_IOAS_* ioctls.
//
// Each operation validates in the kernel's order (flags, overflow, semantic checks, object
// lookup, then the work), so the errno for a bad request is the one Linux gives.

public import UIOMMUBase
public import ProcessMemory
public import IOMMUHardware

/// The IOAS object: an io_pagetable plus the HWPTs that mirror it.
final class IOAS: EngineObject {
    let iopt = IOPagetable()

    init() { super.init(kind: .ioas) }

    override func teardown(_ context: IOMMUFDContext) {
        // Nothing can hold an IOAS that reaches here, so no domain or access remains.
        _ = context.unmapRange(iopt, first: 0, last: .max)
    }

    override var summary: String {
        "\(iopt.areas.count) area(s), \(iopt.domains.count) domain(s)"
    }
}

/// Permissions of a mapping (IOMMU_IOAS_MAP_READABLE / WRITEABLE).
public typealias MapPermissions = IOPermissions

/// One usable IOVA range report (IOAS_IOVA_RANGES).
public struct IOVARanges: Hashable, Sendable {
    public var ranges: [IOVARange]
    /// Required alignment of IOVA and length (out_iova_alignment).
    public var alignment: UInt64
}

extension IOMMUFDContext {
    // MARK: IOAS_ALLOC

    /// IOMMU_IOAS_ALLOC.
    public func allocIOAS() throws(IOMMUError) -> UInt32 {
        try lock.withLock { () throws(IOMMUError) -> UInt32 in
            try checkOpen()
            return try install(IOAS())
        }
    }

    func ioas(_ id: UInt32) throws(IOMMUError) -> IOAS { try lookup(id, as: IOAS.self, "IOAS") }

    // MARK: IOAS_MAP / IOAS_MAP_FILE

    /// IOMMU_IOAS_MAP: maps `length` bytes of the caller's memory at `userVA`. With `iova` the
    /// mapping is placed there (FIXED_IOVA); without, an IOVA is chosen. Returns the IOVA.
    /// `caller` is the address space of the process making the call (the kernel's current->mm)
    /// when several processes share the context (server mode); nil means the context's own.
    public func map(ioas ioasID: UInt32, userVA: UInt64, length: UInt64, iova: UInt64? = nil,
                    permissions: MapPermissions) throws(IOMMUError) -> UInt64 {
        try map(ioas: ioasID, userVA: userVA, length: length, iova: iova, permissions: permissions, caller: memory)
    }

    public func map(ioas ioasID: UInt32, userVA: UInt64, length: UInt64, iova: UInt64? = nil,
                    permissions: MapPermissions, caller: any PinnableMemory) throws(IOMMUError) -> UInt64 {
        try mapMemory(ioasID, memory: caller, offset: userVA, length: length, iova: iova,
                      permissions: permissions, isFile: false)
    }

    /// IOMMU_IOAS_MAP_FILE: maps `[start, start + length)` of a file (a memfd).
    public func mapFile(ioas ioasID: UInt32, file: any PinnableMemory, start: UInt64, length: UInt64,
                        iova: UInt64? = nil, permissions: MapPermissions) throws(IOMMUError) -> UInt64 {
        guard let size = file.fileSize else { throw IOMMUError(.EINVAL, "not a mappable file") }
        let (end, overflow) = start.addingReportingOverflow(length)
        guard !overflow else { throw IOMMUError(.EOVERFLOW, "start + length overflows") }
        guard end <= size else { throw IOMMUError(.EINVAL, "range beyond the end of the file") }
        return try mapMemory(ioasID, memory: file, offset: start, length: length, iova: iova,
                             permissions: permissions, isFile: true)
    }

    private func mapMemory(_ ioasID: UInt32, memory source: any PinnableMemory, offset: UInt64,
                           length: UInt64, iova: UInt64?, permissions: MapPermissions,
                           isFile: Bool) throws(IOMMUError) -> UInt64 {
        let op = isFile ? "IOAS_MAP_FILE" : "IOAS_MAP"
        do throws(IOMMUError) {
            if let iova, iova == .max { throw IOMMUError(.EOVERFLOW, "iova too large") }
            guard length != .max else { throw IOMMUError(.EOVERFLOW, "length too large") }
            guard !permissions.isEmpty else { throw IOMMUError(.EINVAL, "neither readable nor writeable") }
            return try lock.withLock { () throws(IOMMUError) -> UInt64 in
                try checkOpen()
                let ioas = try self.ioas(ioasID)
                let pages = try makePages(memory: source, offset: offset, length: length,
                                          writable: permissions.contains(.write), isFile: isFile)
                return try insertAreas(ioas.iopt, slices: [(pages, offset % hostPageSize, length)],
                                       length: length, iova: iova,
                                       uptr: offset, permissions: permissions)
            }
        } catch {
            throw error.during(op)
        }
    }

    /// iopt_alloc_pages: a Pages object for `[offset, offset + length)`, charged as this
    /// context charges.
    private func makePages(memory source: any PinnableMemory, offset: UInt64, length: UInt64,
                           writable: Bool, isFile: Bool) throws(IOMMUError) -> Pages {
        guard length != 0, length <= UInt64.max - hostPageSize else {
            throw IOMMUError(.EINVAL, "bad length")
        }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end.alignedUp(to: hostPageSize) != nil else {
            throw IOMMUError(.EOVERFLOW, "address + length overflows")
        }
        try failures.check("pages.alloc")
        let base = offset.alignedDown(to: hostPageSize)
        let pageCount = (end.alignedUp(to: hostPageSize)! - base) / hostPageSize
        let account = PinAccount(owner: source.owner, mode: accountMode, policy: _pinPolicy)
        return Pages(memory: source, base: base, pageCount: pageCount, writable: writable,
                     account: account, ledger: platform.ledger, isFile: isFile)
    }

    /// iopt_map_pages: places `slices` (pages, start byte, length) back to back at `iova` (or
    /// an allocated IOVA), then loads them into the domains. All or nothing.
    func insertAreas(_ iopt: IOPagetable, slices: [(Pages, UInt64, UInt64)], length: UInt64,
                     iova fixed: UInt64?, uptr: UInt64, permissions: IOPermissions) throws(IOMMUError) -> UInt64 {
        guard length != 0, length.isAligned(to: iopt.iovaAlignment) else {
            throw IOMMUError(.EINVAL, "length not aligned to \(iopt.iovaAlignment)")
        }
        let start: UInt64
        if let fixed {
            try iopt.checkFixedIOVA(fixed, length: length)
            start = fixed
        } else {
            start = try iopt.allocateIOVA(length: length, uptr: uptr)
        }
        var created: [Area] = []
        do throws(IOMMUError) {
            var cursor = start
            for (pages, startByte, sliceLength) in slices {
                if permissions.contains(.write) && !pages.writable {
                    throw IOMMUError(.EPERM, "pages are not writable")
                }
                guard (startByte % hostPageSize).isAligned(to: iopt.iovaAlignment) else {
                    throw IOMMUError(.EINVAL, "user address not aligned to \(iopt.iovaAlignment)")
                }
                try failures.check("area.alloc")
                let (last, overflow) = cursor.addingReportingOverflow(sliceLength - 1)
                guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
                let area = Area(iova: cursor, last: last, pages: pages, startByte: startByte,
                                permissions: permissions)
                iopt.areas.insert(area)
                pages.areaRefs += 1
                created.append(area)
                cursor = last &+ 1
            }
            for area in created { try iopt.fillDomains(area, failures: failures) }
        } catch {
            for area in created {
                iopt.unfillDomains(area)
                iopt.areas.remove(area)
                area.pages.areaRefs -= 1
            }
            throw error
        }
        return start
    }

    // MARK: IOAS_UNMAP

    /// IOMMU_IOAS_UNMAP of `[iova, iova + length)`: every area inside is unmapped; an area only
    /// partly inside gives ENOENT (areas before it in IOVA order stay unmapped, as in Linux).
    /// `iova == 0, length == UInt64.max` unmaps everything. Returns the bytes unmapped.
    public func unmap(ioas ioasID: UInt32, iova: UInt64, length: UInt64) throws(IOMMUError) -> UInt64 {
        var ignored: UInt64 = 0
        return try unmap(ioas: ioasID, iova: iova, length: length, unmappedBeforeError: &ignored)
    }

    /// IOMMU_IOAS_UNMAP that also reports, when it fails part-way, how many bytes it had
    /// unmapped before the area that stopped it (VFIO_IOMMU_UNMAP_DMA writes that back).
    public func unmap(ioas ioasID: UInt32, iova: UInt64, length: UInt64,
                      unmappedBeforeError: inout UInt64) throws(IOMMUError) -> UInt64 {
        unmappedBeforeError = 0
        var partial: UInt64 = 0
        defer { unmappedBeforeError = partial }
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> UInt64 in
                try checkOpen()
                let ioas = try self.ioas(ioasID)
                if iova == 0 && length == .max {
                    let (unmapped, error) = unmapRange(ioas.iopt, first: 0, last: .max)
                    partial = unmapped
                    if let error, error.errno != .ENOENT { throw error }
                    return unmapped
                }
                guard iova != .max, length != .max else { throw IOMMUError(.EOVERFLOW, "iova or length too large") }
                guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
                let (last, overflow) = iova.addingReportingOverflow(length - 1)
                guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
                let (unmapped, error) = unmapRange(ioas.iopt, first: iova, last: last)
                partial = unmapped
                if let error { throw error }
                return unmapped
            }
        } catch {
            throw error.during("IOAS_UNMAP")
        }
    }

    /// iopt_unmap_iova_range. Returns the bytes unmapped and the error that stopped it, if any
    /// (ENOENT when nothing was mapped). Areas are taken in IOVA order; the first one only
    /// partly inside stops the walk, and the whole areas before it stay unmapped, as in Linux.
    func unmapRange(_ iopt: IOPagetable, first: UInt64, last: UInt64) -> (UInt64, IOMMUError?) {
        let candidates = iopt.areas.indexes(in: first, last)
        var unmapped: UInt64 = 0
        var end = candidates.lowerBound
        var stop: IOMMUError?
        for k in candidates {
            let area = iopt.areas.areas[k]
            if area.iova < first || area.last > last {
                stop = IOMMUError(.ENOENT, "the area at 0x\(String(area.iova, radix: 16)) is only partly inside")
                break
            }
            if area.accessPins > 0 { notifyAccessesOfUnmap(iopt, area: area) }
            iopt.unfillDomains(area)
            area.pages.areaRefs -= 1
            unmapped += area.length
            end = k + 1
        }
        iopt.areas.removeSubrange(candidates.lowerBound..<end)
        if let stop { return (unmapped, stop) }
        return unmapped > 0 ? (unmapped, nil) : (0, IOMMUError(.ENOENT, "nothing mapped in range"))
    }

    // MARK: IOAS_COPY

    /// IOMMU_IOAS_COPY: maps the pages behind `[srcIOVA, srcIOVA + length)` of `src` into
    /// `dst`, sharing pins. The source range must be covered by contiguous areas (ENOENT).
    public func copy(from srcID: UInt32, srcIOVA: UInt64, length: UInt64, to dstID: UInt32,
                     dstIOVA: UInt64? = nil, permissions: MapPermissions) throws(IOMMUError) -> UInt64 {
        do throws(IOMMUError) {
            guard length != .max, srcIOVA != .max, dstIOVA != .max else {
                throw IOMMUError(.EOVERFLOW, "iova or length too large")
            }
            guard !permissions.isEmpty else { throw IOMMUError(.EINVAL, "neither readable nor writeable") }
            return try lock.withLock { () throws(IOMMUError) -> UInt64 in
                try checkOpen()
                let src = try self.ioas(srcID)
                guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
                let (last, overflow) = srcIOVA.addingReportingOverflow(length - 1)
                guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
                // iopt_get_pages: contiguous areas from srcIOVA to last.
                var slices: [(Pages, UInt64, UInt64)] = []
                var cursor = srcIOVA
                while true {
                    guard let area = src.iopt.areas.area(containing: cursor) else {
                        throw IOMMUError(.ENOENT, "source 0x\(String(cursor, radix: 16)) is not mapped")
                    }
                    let pieceLast = min(last, area.last)
                    slices.append((area.pages, area.startByte(at: cursor), pieceLast - cursor + 1))
                    if pieceLast == last { break }
                    cursor = pieceLast + 1
                }
                let dst = try self.ioas(dstID)
                let firstPages = slices[0].0
                let uptr = firstPages.base + slices[0].1
                return try insertAreas(dst.iopt, slices: slices, length: length, iova: dstIOVA,
                                       uptr: uptr, permissions: permissions)
            }
        } catch {
            throw error.during("IOAS_COPY")
        }
    }

    // MARK: IOAS_ALLOW_IOVAS, IOVA_RANGES, reserved ranges, options

    /// IOMMU_IOAS_ALLOW_IOVAS: replaces the allow-list. Each range needs start < last and no
    /// overlap with the others (EINVAL); none may meet a reserved range (EADDRINUSE).
    public func allowIOVAs(ioas ioasID: UInt32, _ ranges: [IOVARange]) throws(IOMMUError) {
        do throws(IOMMUError) {
            try lock.withLock { () throws(IOMMUError) in
                try checkOpen()
                let ioas = try self.ioas(ioasID)
                for r in ranges {
                    guard r.first < r.last else { throw IOMMUError(.EINVAL, "range \(r) has start >= last") }
                    try failures.check("allowed.alloc")
                }
                let sorted = ranges.sorted { $0.first < $1.first }
                for k in sorted.indices.dropFirst() where sorted[k - 1].overlaps(sorted[k]) {
                    throw IOMMUError(.EINVAL, "range \(sorted[k]) overlaps another")
                }
                for r in sorted {
                    if let res = ioas.iopt.reservedOverlap(r.first, r.last) {
                        throw IOMMUError(.EADDRINUSE, "allowed \(r) meets reserved \(res.range)")
                    }
                }
                ioas.iopt.allowed = sorted
            }
        } catch {
            throw error.during("IOAS_ALLOW_IOVAS")
        }
    }

    /// IOMMU_IOAS_IOVA_RANGES: the usable ranges (everything not reserved) and the alignment.
    public func iovaRanges(ioas ioasID: UInt32) throws(IOMMUError) -> IOVARanges {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> IOVARanges in
                try checkOpen()
                let ioas = try self.ioas(ioasID)
                return IOVARanges(ranges: ioas.iopt.usableRanges(), alignment: ioas.iopt.iovaAlignment)
            }
        } catch {
            throw error.during("IOAS_IOVA_RANGES")
        }
    }

    /// Reserves `range` in an IOAS on the user's behalf (IOMMU_TEST_OP_ADD_RESERVED).
    /// EADDRINUSE if it meets an area or an allowed range.
    public func addReserved(ioas ioasID: UInt32, _ range: IOVARange) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let ioas = try self.ioas(ioasID)
            try ioas.iopt.reserve(range, owner: .user, failures: failures)
        }
    }

    /// IOMMU_OPTION HUGE_PAGES get.
    public func hugePages(ioas ioasID: UInt32) throws(IOMMUError) -> Bool {
        try lock.withLock { () throws(IOMMUError) -> Bool in
            try checkOpen()
            return try !self.ioas(ioasID).iopt.disableLargePages
        }
    }

    /// IOMMU_OPTION HUGE_PAGES set. Turning huge pages off raises the alignment to PAGE_SIZE
    /// (EADDRINUSE if an area does not conform) and is refused once a domain has mappings
    /// (EINVAL).
    public func setHugePages(ioas ioasID: UInt32, _ enabled: Bool) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let iopt = try self.ioas(ioasID).iopt
            if enabled {
                iopt.disableLargePages = false
                iopt.iovaAlignment = iopt.requiredAlignment()
                return
            }
            if iopt.disableLargePages { return }
            if !iopt.domains.isEmpty && !iopt.areas.isEmpty {
                throw IOMMUError(.EINVAL, "domains already have mappings")
            }
            iopt.disableLargePages = true
            do throws(IOMMUError) {
                try iopt.recalculateAlignment()
            } catch {
                iopt.disableLargePages = false
                throw error
            }
        }
    }

    /// Splits areas so that `iovas` each end an area (iopt_cut_iova; VFIO type1 v1 unmap).
    public func cutAreas(ioas ioasID: UInt32, at iovas: [UInt64]) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let iopt = try self.ioas(ioasID).iopt
            for iova in iovas {
                guard let area = iopt.areas.area(containing: iova), iova != area.last else { continue }
                if iova == area.iova && area.iova == area.last { continue }
                if iova == area.iova { continue }   // the kernel treats a cut at the start as a no-op
                let newStart = iova + 1
                guard newStart.isAligned(to: iopt.iovaAlignment),
                      area.startByte(at: newStart).isAligned(to: iopt.iovaAlignment) else {
                    throw IOMMUError(.EINVAL, "cut point not aligned")
                }
                if area.accessPins > 0 { throw IOMMUError(.EINVAL, "an access holds pages in the area") }
                if area.pinnedForDomains && !iopt.disableLargePages {
                    throw IOMMUError(.EINVAL, "the area may be mapped with huge pages")
                }
                try failures.check("area.split")
                let lhs = Area(iova: area.iova, last: iova, pages: area.pages, startByte: area.startByte,
                               permissions: area.permissions)
                let rhs = Area(iova: newStart, last: area.last, pages: area.pages,
                               startByte: area.startByte(at: newStart), permissions: area.permissions)
                // Each half keeps its share of the domain pin: re-split the page users.
                if area.pinnedForDomains {
                    // The pages stay pinned; the halves take over the area's user count.
                    try area.pages.addUser(first: lhs.firstPage, last: lhs.lastPage, failures: failures)
                    do throws(IOMMUError) {
                        try area.pages.addUser(first: rhs.firstPage, last: rhs.lastPage, failures: failures)
                    } catch {
                        area.pages.removeUser(first: lhs.firstPage, last: lhs.lastPage)
                        throw error
                    }
                    area.pages.removeUser(first: area.firstPage, last: area.lastPage)
                    lhs.pinnedForDomains = true
                    rhs.pinnedForDomains = true
                }
                iopt.areas.remove(area)
                iopt.areas.insert(lhs)
                iopt.areas.insert(rhs)
                area.pages.areaRefs += 1
            }
        }
    }

    /// IOMMU_IOAS_CHANGE_PROCESS: charges every pinned page of this context's maps to `owner`
    /// (the calling process) instead of the process that mapped it. Only file maps
    /// (IOAS_MAP_FILE) can move: any user-address map gives EINVAL. All or nothing (ENOMEM if
    /// the new owner's budget is exceeded).
    public func changeProcess(to owner: MemoryOwner) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            var moving: [Pages] = []
            var seen = Set<ObjectIdentifier>()
            for case let ioas as IOAS in table.objects.values {
                for area in ioas.iopt.areas.all(in: 0, .max) {
                    guard area.pages.isFile else {
                        throw IOMMUError(.EINVAL, "the area at 0x\(String(area.iova, radix: 16)) maps user memory, not a file")
                    }
                    if area.pages.account.owner != owner, seen.insert(ObjectIdentifier(area.pages)).inserted {
                        moving.append(area.pages)
                    }
                }
            }
            // Charge the new owner first, so a refusal leaves every charge where it was.
            var charged: [(Pages, PinAccount)] = []
            for pages in moving {
                var account = pages.account
                account.owner = owner
                account.mode = accountMode
                account.policy = _pinPolicy
                do throws(IOMMUError) {
                    if pages.pinnedPageCount > 0 { try platform.ledger.charge(pages: pages.pinnedPageCount, to: account) }
                } catch {
                    for (p, a) in charged where p.pinnedPageCount > 0 { platform.ledger.uncharge(pages: p.pinnedPageCount, from: a) }
                    throw error
                }
                charged.append((pages, account))
            }
            for (pages, account) in charged {
                if pages.pinnedPageCount > 0 { platform.ledger.uncharge(pages: pages.pinnedPageCount, from: pages.account) }
                pages.account = account
            }
        }
    }

    /// True if any area of the IOAS intersects `[first, last]`.
    public func hasArea(ioas ioasID: UInt32, first: UInt64, last: UInt64) throws(IOMMUError) -> Bool {
        try lock.withLock { () throws(IOMMUError) -> Bool in
            try checkOpen()
            return try self.ioas(ioasID).iopt.areas.first(in: first, last) != nil
        }
    }

    /// The area that maps `iova` in an IOAS, if any: (iova, last, permissions).
    public func area(ioas ioasID: UInt32, containing iova: UInt64) throws(IOMMUError) -> (iova: UInt64, last: UInt64, permissions: IOPermissions)? {
        try lock.withLock { () throws(IOMMUError) -> (iova: UInt64, last: UInt64, permissions: IOPermissions)? in
            try checkOpen()
            guard let a = try self.ioas(ioasID).iopt.areas.area(containing: iova) else { return nil }
            return (a.iova, a.last, a.permissions)
        }
    }

    /// Every area of an IOAS, for inspection: (iova, last, permissions).
    public func areas(ioas ioasID: UInt32) throws(IOMMUError) -> [(iova: UInt64, last: UInt64, permissions: IOPermissions)] {
        try lock.withLock { () throws(IOMMUError) -> [(iova: UInt64, last: UInt64, permissions: IOPermissions)] in
            try checkOpen()
            return try self.ioas(ioasID).iopt.areas.all(in: 0, .max).map { ($0.iova, $0.last, $0.permissions) }
        }
    }
}
