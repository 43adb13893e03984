// The io_pagetable: an IOAS's map from IOVA to pages, and the domains that mirror it.
//
// State (all protected by the owning context's lock):
//  - areas: disjoint IOVA ranges, each a slice of a `Pages`, kept sorted by IOVA in one
//    contiguous array with a parallel array of start IOVAs, so lookups are a binary search over
//    8-byte keys (the "interval structure": areas never overlap, so a sorted array of starts is
//    an exact interval index);
//  - allowed: the user's allow-list (IOAS_ALLOW_IOVAS); empty means "everything";
//  - reserved: ranges no area may use, each with an owner (a device's reserved regions, a
//    domain's outside-the-aperture, or the user);
//  - domains: the HWPT_PAGING objects attached to this IOAS. Every area is loaded into every
//    domain; the area holds one page user for all of them (the kernel's storage domain idea).
//
// The rules follow drivers/iommu/iommufd/io_pagetable.c: EEXIST for a fixed IOVA over an area,
// EINVAL for one over a reserved range or misaligned, EADDRINUSE when a reservation meets an
// area or an allowed range, ENOENT for an unmap that would split an area.

public import UIOMMUBase
public import IOMMUHardware
public import ProcessMemory

/// One mapping: IOVA `[iova, last]` → bytes `[startByte, startByte + length)` of `pages`.
final class Area {
    var iova: UInt64
    var last: UInt64
    let pages: Pages
    let startByte: UInt64
    let permissions: IOPermissions
    /// The area holds a page user for the IOAS's domains.
    var pinnedForDomains = false
    /// Pins held by accesses inside this area (the kernel's num_accesses).
    var accessPins = 0

    init(iova: UInt64, last: UInt64, pages: Pages, startByte: UInt64, permissions: IOPermissions) {
        self.iova = iova; self.last = last; self.pages = pages; self.startByte = startByte
        self.permissions = permissions
    }

    var length: UInt64 { last - iova + 1 }
    var firstPage: UInt64 { startByte / hostPageSize }
    var lastPage: UInt64 { (startByte + length - 1) / hostPageSize }
    /// Offset in `pages` of the byte at `iova`.
    func startByte(at iova: UInt64) -> UInt64 { startByte + (iova - self.iova) }
}

/// Who owns a reserved range.
enum ReservationOwner: Equatable {
    case user
    case domain(ObjectIdentifier)
    case device(ObjectIdentifier)
}

struct Reservation {
    var range: IOVARange
    var owner: ReservationOwner
}

/// Sorted, disjoint areas with binary-search lookup.
///
/// The search runs over `lasts`, a plain array of 8-byte keys (each area's last IOVA), so a
/// lookup touches one cache line per step and never dereferences an area until it has found
/// it. Since areas never overlap, the first area whose last ≥ x is the only one that can
/// contain x.
struct AreaIndex {
    private(set) var lasts: [UInt64] = []
    private(set) var areas: [Area] = []

    var count: Int { areas.count }
    var isEmpty: Bool { areas.isEmpty }

    /// Index of the first area whose last >= iova.
    func lowerBound(_ iova: UInt64) -> Int {
        lasts.withUnsafeBufferPointer { keys in
            var lo = 0, n = keys.count
            while n > 0 {
                let half = n >> 1
                if keys[lo + half] < iova { lo += half + 1; n -= half + 1 } else { n = half }
            }
            return lo
        }
    }

    /// The first area intersecting `[first, last]`.
    func first(in first: UInt64, _ last: UInt64) -> Area? {
        let k = lowerBound(first)
        guard k < areas.count, areas[k].iova <= last else { return nil }
        return areas[k]
    }

    /// The area containing `iova`.
    func area(containing iova: UInt64) -> Area? {
        let k = lowerBound(iova)
        guard k < areas.count, areas[k].iova <= iova else { return nil }
        return areas[k]
    }

    /// Areas intersecting `[first, last]`, in order.
    func all(in first: UInt64, _ last: UInt64) -> ArraySlice<Area> {
        let k = lowerBound(first)
        var e = k
        while e < areas.count, areas[e].iova <= last { e += 1 }
        return areas[k..<e]
    }

    /// Index range of the areas intersecting `[first, last]`.
    func indexes(in first: UInt64, _ last: UInt64) -> Range<Int> {
        let k = lowerBound(first)
        var e = k
        while e < areas.count, areas[e].iova <= last { e += 1 }
        return k..<e
    }

    mutating func insert(_ area: Area) {
        let k = lowerBound(area.iova)
        lasts.insert(area.last, at: k)
        areas.insert(area, at: k)
    }

    mutating func remove(_ area: Area) {
        let k = lowerBound(area.iova)
        precondition(k < areas.count && areas[k] === area, "area index corrupt")
        lasts.remove(at: k)
        areas.remove(at: k)
    }

    /// Removes a run of areas at once (unmapping many areas stays linear).
    mutating func removeSubrange(_ range: Range<Int>) {
        lasts.removeSubrange(range)
        areas.removeSubrange(range)
    }
}

/// The kernel's io_pagetable: the IOVA map of one IOAS.
final class IOPagetable {
    var areas = AreaIndex()
    /// Sorted, disjoint; empty = all IOVAs allowed.
    var allowed: [IOVARange] = []
    private(set) var reserved: [Reservation] = [] {
        didSet { usableCache = nil }
    }
    /// IOVA_RANGES' answer, kept until the reservations change (it is asked for on every
    /// attach by VMMs, and building it allocates).
    private var usableCache: [IOVARange]?
    /// The HWPT_PAGING objects whose domains mirror this table.
    var domains: [HWPTPaging] = []
    var accesses: [Access] = []
    /// Required alignment of IOVA, length and user address (1 until a domain or access needs more).
    var iovaAlignment: UInt64 = 1
    /// IOMMU_OPTION_HUGE_PAGES = 0 (or VFIO type1 v1): domains use PAGE_SIZE leaves only.
    var disableLargePages = false

    // MARK: Queries

    func reservedOverlap(_ first: UInt64, _ last: UInt64) -> Reservation? {
        reserved.first { $0.range.first <= last && $0.range.last >= first }
    }

    func allowedOverlap(_ first: UInt64, _ last: UInt64) -> IOVARange? {
        allowed.first { $0.first <= last && $0.last >= first }
    }

    /// The usable IOVA ranges: the holes between reserved ranges (IOAS_IOVA_RANGES).
    func usableRanges() -> [IOVARange] {
        if let cached = usableCache { return cached }
        let ranges = Self.holes(in: IOVARange.all, excluding: reserved.map(\.range))
        usableCache = ranges
        return ranges
    }

    /// The holes of `span` not covered by `used` (ranges may overlap, any order).
    static func holes(in span: IOVARange, excluding used: [IOVARange]) -> [IOVARange] {
        let sorted = used.compactMap { $0.intersection(span) }.sorted { $0.first < $1.first }
        var out: [IOVARange] = []
        var cursor = span.first
        var done = false
        for r in sorted {
            if r.first > cursor { out.append(IOVARange(first: cursor, last: r.first - 1)) }
            if r.last >= cursor {
                if r.last == span.last { done = true; break }
                cursor = r.last + 1
            }
        }
        if !done && cursor <= span.last { out.append(IOVARange(first: cursor, last: span.last)) }
        return out
    }

    // MARK: Checks (iopt_check_iova, iopt_alloc_iova)

    func checkFixedIOVA(_ iova: UInt64, length: UInt64) throws(IOMMUError) {
        guard iova.isAligned(to: iovaAlignment) else {
            throw IOMMUError(.EINVAL, "iova not aligned to \(iovaAlignment)")
        }
        let (last, overflow) = iova.addingReportingOverflow(length - 1)
        guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
        if let r = reservedOverlap(iova, last) {
            throw IOMMUError(.EINVAL, "range meets reserved \(r.range)")
        }
        if let a = areas.first(in: iova, last) {
            throw IOMMUError(.EEXIST, "range meets the area at 0x\(String(a.iova, radix: 16))")
        }
    }

    /// Picks a free IOVA for `length` bytes whose user address is `uptr` (the kernel's
    /// iopt_alloc_iova): aligned to the largest power of two of the length and of the user
    /// address (so huge pages stay possible), keeping the address's offset in its page, inside
    /// the allowed ranges, away from reserved ranges and areas, never at 0.
    func allocateIOVA(length: UInt64, uptr: UInt64) throws(IOMMUError) -> UInt64 {
        guard length != 0, length < UInt64.max / 2 else { throw IOMMUError(.EOVERFLOW, "length too large") }
        let pageOffset = uptr % hostPageSize
        let lengthPow2 = length.isPowerOfTwo ? length : UInt64(1) << (64 - (length - 1).leadingZeroBitCount)
        let alignment = uptr == 0 ? lengthPow2 : min(lengthPow2, uptr.lowestSetBitValue)
        guard alignment >= iovaAlignment else {
            throw IOMMUError(.EINVAL, "user address alignment below the IOAS alignment")
        }
        let window = IOVARange(first: hostPageSize, last: UInt64.max - hostPageSize)
        // Adjacent allowed ranges form one span, as the kernel's span iterator sees them.
        var merged: [IOVARange] = []
        for r in allowed {
            if let l = merged.last, l.last != .max, l.last + 1 == r.first {
                merged[merged.count - 1] = IOVARange(first: l.first, last: r.last)
            } else {
                merged.append(r)
            }
        }
        let allowedSpans = allowed.isEmpty ? [window] : merged.compactMap { $0.intersection(window) }
        var used = reserved.map(\.range)
        for a in areas.all(in: 0, .max) { used.append(IOVARange(first: a.iova, last: a.last)) }
        for span in allowedSpans {
            // Quick reject: the allowed span itself is too small.
            guard fit(in: span, length: length, alignment: alignment, pageOffset: pageOffset) != nil else {
                continue
            }
            for hole in Self.holes(in: span, excluding: used) {
                if let iova = fit(in: hole, length: length, alignment: alignment, pageOffset: pageOffset) {
                    return iova
                }
            }
        }
        throw IOMMUError(.ENOSPC, "no free IOVA range of 0x\(String(length, radix: 16)) bytes")
    }

    /// The first `ALIGN(first, alignment) | pageOffset` in `range` that leaves room for `length`.
    private func fit(in range: IOVARange, length: UInt64, alignment: UInt64, pageOffset: UInt64) -> UInt64? {
        guard range.last - range.first >= length - 1 else { return nil }
        guard let aligned = range.first.alignedUp(to: alignment) else { return nil }
        let start = aligned | pageOffset
        guard start <= range.last, range.last - start >= length - 1 else { return nil }
        return start
    }

    /// EADDRINUSE unless every area conforms to `alignment` (iopt_check_iova_alignment).
    func checkAreasAligned(to alignment: UInt64) throws(IOMMUError) {
        for a in areas.all(in: 0, .max) {
            if !a.iova.isAligned(to: alignment) || !a.length.isAligned(to: alignment)
                || !(a.startByte % hostPageSize).isAligned(to: alignment) {
                throw IOMMUError(.EADDRINUSE, "the area at 0x\(String(a.iova, radix: 16)) is not \(alignment)-aligned")
            }
        }
    }

    /// The alignment the current domains and accesses need (iopt_calculate_iova_alignment).
    func requiredAlignment() -> UInt64 {
        var alignment: UInt64 = disableLargePages ? hostPageSize : 1
        for d in domains { alignment = max(alignment, d.domain.pageSizes.lowestSetBitValue) }
        for a in accesses { alignment = max(alignment, a.iovaAlignment) }
        return alignment
    }

    func recalculateAlignment() throws(IOMMUError) {
        let alignment = requiredAlignment()
        if alignment > iovaAlignment { try checkAreasAligned(to: alignment) }
        iovaAlignment = alignment
    }

    // MARK: Reservations

    /// Reserves `range` for `owner`; EADDRINUSE if it meets an area or an allowed range.
    func reserve(_ range: IOVARange, owner: ReservationOwner, failures: FailureInjector) throws(IOMMUError) {
        if let a = areas.first(in: range.first, range.last) {
            throw IOMMUError(.EADDRINUSE, "reserved \(range) meets the area at 0x\(String(a.iova, radix: 16))")
        }
        if let a = allowedOverlap(range.first, range.last) {
            throw IOMMUError(.EADDRINUSE, "reserved \(range) meets allowed \(a)")
        }
        try failures.check("reserved.alloc")
        reserved.append(Reservation(range: range, owner: owner))
    }

    func removeReservations(owner: ReservationOwner) {
        reserved.removeAll { $0.owner == owner }
    }

    // MARK: Loading areas into domains

    /// Maps `area` into `domain`, run by run. All or nothing.
    func load(_ area: Area, into domain: IOMMUDomain) throws(IOMMUError) {
        let areaEnd = area.startByte + area.length
        var mapped: UInt64 = 0
        do throws(IOMMUError) {
            for run in area.pages.physicalRuns(first: area.firstPage, last: area.lastPage) {
                let runStart = run.firstPage * hostPageSize
                let runEnd = (run.lastPage + 1) * hostPageSize
                let s = max(area.startByte, runStart), e = min(areaEnd, runEnd)
                let iova = area.iova + (s - area.startByte)
                let maxLeaf = disableLargePages ? hostPageSize : run.backingPageSize
                try domain.map(iova: iova, physical: run.physical + (s - runStart), length: e - s,
                               permissions: area.permissions, maxLeafSize: maxLeaf)
                mapped += e - s
            }
        } catch {
            if mapped > 0 { domain.unmap(iova: area.iova, length: mapped) }
            throw error
        }
    }

    /// Pins `area` for the domains and loads it into each of them. All or nothing.
    func fillDomains(_ area: Area, failures: FailureInjector) throws(IOMMUError) {
        guard !domains.isEmpty else { return }
        try area.pages.addUser(first: area.firstPage, last: area.lastPage, failures: failures)
        var done: [HWPTPaging] = []
        do throws(IOMMUError) {
            for hwpt in domains {
                try load(area, into: hwpt.domain)
                done.append(hwpt)
            }
        } catch {
            for hwpt in done { hwpt.domain.unmap(iova: area.iova, length: area.length) }
            area.pages.removeUser(first: area.firstPage, last: area.lastPage)
            throw error
        }
        area.pinnedForDomains = true
    }

    /// Unloads `area` from every domain and drops its domain pin.
    func unfillDomains(_ area: Area) {
        guard area.pinnedForDomains else { return }
        for hwpt in domains { hwpt.domain.unmap(iova: area.iova, length: area.length) }
        area.pages.removeUser(first: area.firstPage, last: area.lastPage)
        area.pinnedForDomains = false
    }

    /// iopt_table_add_domain: alignment, aperture reservation, fill every area. All or nothing.
    func addDomain(_ hwpt: HWPTPaging, failures: FailureInjector) throws(IOMMUError) {
        let domain = hwpt.domain
        let newAlignment = max(domain.pageSizes.lowestSetBitValue, iovaAlignment)
        guard newAlignment <= hostPageSize else {
            throw IOMMUError(.EINVAL, "domain page size above PAGE_SIZE")
        }
        if newAlignment != iovaAlignment { try checkAreasAligned(to: newAlignment) }
        let owner = ReservationOwner.domain(ObjectIdentifier(hwpt))
        do throws(IOMMUError) {
            let aperture = domain.aperture
            if aperture.first != 0 {
                try reserve(IOVARange(first: 0, last: aperture.first - 1), owner: owner, failures: failures)
            }
            if aperture.last != .max {
                try reserve(IOVARange(first: aperture.last + 1, last: .max), owner: owner, failures: failures)
            }
            let firstDomain = domains.isEmpty
            var filled: [Area] = []
            do throws(IOMMUError) {
                for area in areas.all(in: 0, .max) {
                    if firstDomain {
                        try area.pages.addUser(first: area.firstPage, last: area.lastPage, failures: failures)
                    }
                    do throws(IOMMUError) {
                        try load(area, into: domain)
                    } catch {
                        if firstDomain { area.pages.removeUser(first: area.firstPage, last: area.lastPage) }
                        throw error
                    }
                    filled.append(area)
                }
            } catch {
                for area in filled {
                    domain.unmap(iova: area.iova, length: area.length)
                    if firstDomain { area.pages.removeUser(first: area.firstPage, last: area.lastPage) }
                }
                throw error
            }
            if firstDomain { for area in filled { area.pinnedForDomains = true } }
        } catch {
            removeReservations(owner: owner)
            throw error
        }
        iovaAlignment = newAlignment
        domains.append(hwpt)
    }

    /// iopt_table_remove_domain: unload every area, release pins if it was the last domain.
    func removeDomain(_ hwpt: HWPTPaging) {
        guard let k = domains.firstIndex(where: { $0 === hwpt }) else { return }
        domains.remove(at: k)
        for area in areas.all(in: 0, .max) {
            hwpt.domain.unmap(iova: area.iova, length: area.length)
            if domains.isEmpty && area.pinnedForDomains {
                area.pages.removeUser(first: area.firstPage, last: area.lastPage)
                area.pinnedForDomains = false
            }
        }
        removeReservations(owner: .domain(ObjectIdentifier(hwpt)))
        // Dropping a constraint can only lower the alignment, which never fails.
        iovaAlignment = requiredAlignment()
    }
}
