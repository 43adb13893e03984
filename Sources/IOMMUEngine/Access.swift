// ACCESS objects: software users of an IOAS (the kernel's iommufd_access, used by mdev-style
// drivers that emulate DMA in software, and by the selftest).
//
// An access can pin pages by IOVA (and get their physical runs), and read or write through
// IOVAs. When an area it has pinned is unmapped, the access is told first (its unmap handler
// runs), and any pin it still holds inside that range is dropped — in Linux a driver that fails
// to unpin in its callback is a bug; here the engine finishes the job so the unmap completes.

public import UIOMMUBase
public import ProcessMemory
public import IOMMUHardware

/// A pin held by an access.
struct AccessPin {
    var id: UInt32
    var iova: UInt64
    var last: UInt64
    var writable: Bool
    /// (area, first page, last page) per area the pin covers.
    var pieces: [(Area, UInt64, UInt64)]
}

final class Access: EngineObject {
    var ioas: IOAS
    /// The creating driver's reference; DESTROY gives EBUSY until the driver destroys it.
    var heldByDriver = true
    let needsPinPages: Bool
    let unmapHandler: (@Sendable (UInt64, UInt64) -> Void)?
    var pins: [AccessPin] = []
    var nextPinID: UInt32 = 1

    init(ioas: IOAS, needsPinPages: Bool, unmapHandler: (@Sendable (UInt64, UInt64) -> Void)?) {
        self.ioas = ioas
        self.needsPinPages = needsPinPages
        self.unmapHandler = unmapHandler
        super.init(kind: .access)
        holders = 1
    }

    /// Accesses that pin pages need PAGE_SIZE-aligned IOVAs.
    var iovaAlignment: UInt64 { needsPinPages ? hostPageSize : 1 }

    override func teardown(_ context: IOMMUFDContext) {
        for pin in pins { Self.release(pin) }
        pins.removeAll()
        ioas.iopt.accesses.removeAll { $0 === self }
        ioas.iopt.iovaAlignment = ioas.iopt.requiredAlignment()
        ioas.holders -= 1
    }

    static func release(_ pin: AccessPin) {
        for (area, first, last) in pin.pieces {
            area.pages.removeUser(first: first, last: last)
            area.accessPins -= 1
        }
    }

    override var summary: String { "on IOAS \(ioas.id), \(pins.count) pin(s)" }
}

/// The pages an access pinned: an ID to unpin with, and their physical runs.
public struct AccessPinResult: Sendable {
    public var pinID: UInt32
    public var runs: [PhysicalRun]
}

extension IOMMUFDContext {
    func access(_ id: UInt32) throws(IOMMUError) -> Access { try lookup(id, as: Access.self, "access") }

    /// Creates an access on an IOAS (iommufd_access_create). `needsPinPages` registers an
    /// unmap callback (the selftest's MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES). The handler
    /// runs with the context locked and must not call back into the context.
    public func createAccess(ioas ioasID: UInt32, needsPinPages: Bool,
                             unmapHandler: (@Sendable (UInt64, UInt64) -> Void)? = nil) throws(IOMMUError) -> UInt32 {
        try lock.withLock { () throws(IOMMUError) -> UInt32 in
            try checkOpen()
            let ioas = try self.ioas(ioasID)
            try failures.check("access.alloc")
            let access = Access(ioas: ioas, needsPinPages: needsPinPages, unmapHandler: unmapHandler)
            try attachAccess(access, to: ioas)
            do throws(IOMMUError) {
                return try install(access)
            } catch {
                detachAccess(access)
                throw error
            }
        }
    }

    private func attachAccess(_ access: Access, to ioas: IOAS) throws(IOMMUError) {
        ioas.iopt.accesses.append(access)
        do throws(IOMMUError) {
            try ioas.iopt.recalculateAlignment()
        } catch {
            ioas.iopt.accesses.removeAll { $0 === access }
            throw error
        }
        access.ioas = ioas
        ioas.holders += 1
    }

    private func detachAccess(_ access: Access) {
        let ioas = access.ioas
        ioas.iopt.accesses.removeAll { $0 === access }
        ioas.iopt.iovaAlignment = ioas.iopt.requiredAlignment()
        ioas.holders -= 1
    }

    /// Destroys an access the way its driver does (iommufd_access_destroy).
    public func destroyAccess(_ accessID: UInt32) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let access = try self.access(accessID)
            if access.heldByDriver {
                access.heldByDriver = false
                access.holders -= 1
            }
            if access.holders == 0 { remove(access) }
        }
    }

    /// The areas covering `[iova, last]` contiguously, or ENOENT.
    private func contiguousAreas(_ iopt: IOPagetable, _ iova: UInt64, _ last: UInt64) throws(IOMMUError) -> [Area] {
        var out: [Area] = []
        var cursor = iova
        while true {
            guard let area = iopt.areas.area(containing: cursor) else {
                throw IOMMUError(.ENOENT, "0x\(String(cursor, radix: 16)) is not mapped")
            }
            out.append(area)
            if area.last >= last { return out }
            cursor = area.last + 1
        }
    }

    /// iommufd_access_pin_pages: pins the pages behind `[iova, iova + length)`.
    public func accessPinPages(_ accessID: UInt32, iova: UInt64, length: UInt64,
                               writable: Bool) throws(IOMMUError) -> AccessPinResult {
        try lock.withLock { () throws(IOMMUError) -> AccessPinResult in
            try checkOpen()
            let access = try self.access(accessID)
            guard access.needsPinPages else { throw IOMMUError(.EOPNOTSUPP, "access cannot pin pages") }
            guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
            let (last, overflow) = iova.addingReportingOverflow(length - 1)
            guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
            let areas = try contiguousAreas(access.ioas.iopt, iova, last)
            var pieces: [(Area, UInt64, UInt64)] = []
            var runs: [PhysicalRun] = []
            do throws(IOMMUError) {
                for area in areas {
                    try Self.checkProt(area, write: writable)
                    let s = max(iova, area.iova), e = min(last, area.last)
                    // iopt_area_contig_is_aligned: each piece starts on a page, and every piece
                    // but the last ends on one.
                    guard area.startByte(at: s) % hostPageSize == 0,
                          e == last || (area.startByte(at: e) + 1) % hostPageSize == 0 else {
                        throw IOMMUError(.EINVAL, "pin range is not page aligned in the user memory")
                    }
                    let firstPage = area.startByte(at: s) / hostPageSize
                    let lastPage = area.startByte(at: e) / hostPageSize
                    try area.pages.addUser(first: firstPage, last: lastPage, failures: failures)
                    area.accessPins += 1
                    pieces.append((area, firstPage, lastPage))
                    for r in area.pages.physicalRuns(first: firstPage, last: lastPage) {
                        runs.append(PhysicalRun(physical: r.physical, length: r.pageCount * hostPageSize,
                                                backingPageSize: r.backingPageSize))
                    }
                }
            } catch {
                Access.release(AccessPin(id: 0, iova: iova, last: last, writable: writable, pieces: pieces))
                throw error
            }
            let pin = AccessPin(id: access.nextPinID, iova: iova, last: last, writable: writable, pieces: pieces)
            access.nextPinID &+= 1
            if access.nextPinID == 0 { access.nextPinID = 1 }
            access.pins.append(pin)
            return AccessPinResult(pinID: pin.id, runs: runs)
        }
    }

    /// Unpins a pin made by `accessPinPages`; ENOENT if it is gone (e.g. dropped by an unmap).
    public func accessUnpin(_ accessID: UInt32, pinID: UInt32) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let access = try self.access(accessID)
            guard let k = access.pins.firstIndex(where: { $0.id == pinID }) else {
                throw IOMMUError(.ENOENT, "no pin \(pinID)")
            }
            Access.release(access.pins.remove(at: k))
        }
    }

    /// Number of pins an access holds.
    public func accessPinCount(_ accessID: UInt32) throws(IOMMUError) -> Int {
        try lock.withLock { () throws(IOMMUError) -> Int in try self.access(accessID).pins.count }
    }

    /// iommufd_access_rw: copies between `buffer` and `[iova, iova + count)` through the IOAS,
    /// from the pinned pages if they are pinned, else from the mapping process's memory.
    public func accessReadWrite(_ accessID: UInt32, iova: UInt64, buffer: UnsafeMutableRawPointer,
                                count: Int, write: Bool) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let access = try self.access(accessID)
            guard count > 0 else { throw IOMMUError(.EINVAL, "zero length") }
            let (last, overflow) = iova.addingReportingOverflow(UInt64(count) - 1)
            guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
            let areas = try contiguousAreas(access.ioas.iopt, iova, last)
            var done = 0
            for area in areas {
                try Self.checkProt(area, write: write)
                let s = max(iova, area.iova), e = min(last, area.last)
                let n = Int(e - s + 1)
                let byte = area.startByte(at: s)
                let firstPage = byte / hostPageSize, lastPage = (byte + UInt64(n) - 1) / hostPageSize
                if area.pages.isPinned(first: firstPage, last: lastPage) {
                    try copyPinned(area.pages, byte: byte, buffer: buffer + done, count: n, write: write)
                } else if write {
                    try area.pages.memory.writeUser(offset: area.pages.base + byte, from: buffer + done, count: n)
                } else {
                    try area.pages.memory.readUser(offset: area.pages.base + byte, into: buffer + done, count: n)
                }
                done += n
            }
        }
    }

    private func copyPinned(_ pages: Pages, byte: UInt64, buffer: UnsafeMutableRawPointer, count: Int,
                            write: Bool) throws(IOMMUError) {
        var cursor = byte
        var done = 0
        let end = byte + UInt64(count)
        for run in pages.physicalRuns(first: byte / hostPageSize, last: (end - 1) / hostPageSize) {
            let runStart = run.firstPage * hostPageSize, runEnd = (run.lastPage + 1) * hostPageSize
            let s = max(cursor, runStart), e = min(end, runEnd)
            let n = Int(e - s)
            let pa = run.physical + (s - runStart)
            if write {
                try pages.memory.write(physical: pa, from: buffer + done, count: n)
            } else {
                try pages.memory.read(physical: pa, into: buffer + done, count: n)
            }
            done += n
            cursor = e
        }
    }

    /// Moves an access to another IOAS (iommufd_access_replace): its pins are dropped first,
    /// after telling it, as Linux tells the driver to unmap everything.
    public func accessReplaceIOAS(_ accessID: UInt32, ioas ioasID: UInt32) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let access = try self.access(accessID)
            let newIOAS = try self.ioas(ioasID)
            if newIOAS === access.ioas { return }
            let old = access.ioas
            newIOAS.iopt.accesses.append(access)
            do throws(IOMMUError) {
                try newIOAS.iopt.recalculateAlignment()
            } catch {
                newIOAS.iopt.accesses.removeAll { $0 === access }
                throw error
            }
            if !access.pins.isEmpty {
                access.unmapHandler?(0, .max)
                for pin in access.pins { Access.release(pin) }
                access.pins.removeAll()
            }
            old.iopt.accesses.removeAll { $0 === access }
            old.iopt.iovaAlignment = old.iopt.requiredAlignment()
            old.holders -= 1
            access.ioas = newIOAS
            newIOAS.holders += 1
        }
    }

    /// check_area_prot: a write needs WRITEABLE, anything else READABLE (EPERM).
    static func checkProt(_ area: Area, write: Bool) throws(IOMMUError) {
        let needed: IOPermissions = write ? .write : .read
        guard area.permissions.contains(needed) else {
            throw IOMMUError(.EPERM, "the area at 0x\(String(area.iova, radix: 16)) is not \(write ? "writeable" : "readable")")
        }
    }

    /// Tells every access with pins in `area` that it is going away, then drops those pins.
    func notifyAccessesOfUnmap(_ iopt: IOPagetable, area: Area) {
        for access in iopt.accesses {
            let hit = access.pins.filter { pin in pin.pieces.contains { $0.0 === area } }
            guard !hit.isEmpty else { continue }
            access.unmapHandler?(area.iova, area.length)
            for pin in hit { Access.release(pin) }
            access.pins.removeAll { pin in pin.pieces.contains { $0.0 === area } }
        }
    }
}
