public import ProcessMemory
public import UIOMMUBase
import Synchronization

/// A DMA the IOMMU refused (or, for `.memoryError`, that found no memory behind a valid
/// translation).
public struct DMAFault: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: String, Hashable, Sendable {
        /// The requester (or requester + PASID) has no domain: DMA is blocked.
        case blocked
        /// The IOVA is inside the aperture but not mapped.
        case notPresent = "not-present"
        /// The mapping forbids the access (a write to a read-only page, a read of a write-only one).
        case permission
        /// The IOVA is outside the domain's aperture.
        case outsideAperture = "outside-aperture"
        /// The translation succeeded but no memory answers at the physical address (a bus
        /// error rather than an IOMMU fault, so it is not recorded in the fault log).
        case memoryError = "memory-error"
    }
    public var requester: PCIAddress
    public var pasid: UInt32?
    public var iova: UInt64
    public var write: Bool
    public var reason: Reason

    public init(requester: PCIAddress, pasid: UInt32?, iova: UInt64, write: Bool, reason: Reason) {
        self.requester = requester; self.pasid = pasid; self.iova = iova; self.write = write
        self.reason = reason
    }

    public var description: String {
        let p = pasid.map { " pasid \($0)" } ?? ""
        return "DMA \(write ? "write" : "read") fault from \(requester)\(p) at 0x\(String(iova, radix: 16)): \(reason.rawValue)"
    }
}

/// One IOMMU unit at run time: its context entries (which domain each requester, and each
/// requester + PASID, translates through), its IOTLB, and its fault recording.
///
/// Locks. The context table has its own mutex and the fault log another; neither is held while
/// calling into a domain or a fault handler. A translation takes the context lock once to find
/// its domain (once per burst with `withTranslator`, `dmaRead`, `dmaWrite`), then uses the
/// lock-free IOTLB, and on a miss walks the domain under the domain's lock. Domains never call
/// back into units (they invalidate IOTLBs through their generation counter), so there is no
/// lock cycle.
///
/// A DMA in flight when its domain is changed or unmapped may complete with the old
/// translation, as on hardware until the invalidation wait completes; any DMA that starts after
/// `setContext` or `IOMMUDomain.unmap` returned sees the new state.
public final class IOMMUUnit: @unchecked Sendable {
    public let spec: IOMMUUnitSpec
    public let iotlb: IOTLB
    /// Number of fault records kept (the oldest are overwritten, like the fault recording
    /// registers of a DMAR unit).
    public let faultLogCapacity: Int

    public var name: String { spec.name }

    private struct ContextEntry {
        var domain: IOMMUDomain?
        /// PASID entries, sorted by PASID (a handful per device at most).
        var pasids: [(pasid: UInt32, domain: IOMMUDomain)] = []

        mutating func update(pasid: UInt32?, domain: IOMMUDomain?, previous: inout IOMMUDomain?) {
            guard let pasid else {
                previous = self.domain
                self.domain = domain
                return
            }
            let i = pasids.firstIndex(where: { $0.pasid >= pasid }) ?? pasids.count
            if i < pasids.count && pasids[i].pasid == pasid {
                previous = pasids[i].domain
                if let domain { pasids[i].domain = domain } else { pasids.remove(at: i) }
            } else if let domain {
                pasids.insert((pasid, domain), at: i)
            }
        }
    }

    /// A root table per PCI segment, a context table per bus (allocated on first use), an
    /// entry per device/function — the VT-d shape, and no hashing on the translation path.
    private struct ContextTable {
        var segments: [(segment: UInt16, buses: [[ContextEntry]?])] = []

        func lookup(_ requester: PCIAddress, _ pasid: UInt32?) -> IOMMUDomain? {
            guard let root = segments.first(where: { $0.segment == requester.segment }),
                  let bus = root.buses[Int(requester.bus)] else { return nil }
            let entry = bus[Int(requester.device) << 3 | Int(requester.function & 7)]
            guard let pasid else { return entry.domain }
            return entry.pasids.first(where: { $0.pasid == pasid })?.domain
        }

        mutating func set(_ requester: PCIAddress, _ pasid: UInt32?, _ domain: IOMMUDomain?) -> IOMMUDomain? {
            let s: Int
            if let i = segments.firstIndex(where: { $0.segment == requester.segment }) {
                s = i
            } else {
                if domain == nil { return nil }
                segments.append((requester.segment, Array(repeating: nil, count: 256)))
                s = segments.count - 1
            }
            let b = Int(requester.bus)
            if segments[s].buses[b] == nil {
                if domain == nil { return nil }
                segments[s].buses[b] = Array(repeating: ContextEntry(), count: 256)
            }
            let d = Int(requester.device) << 3 | Int(requester.function & 7)
            var previous: IOMMUDomain?
            segments[s].buses[b]?[d].update(pasid: pasid, domain: domain, previous: &previous)
            return previous
        }
    }

    private struct FaultLog {
        var records: [DMAFault] = []
        var next = 0                // where the next record goes once `records` is full
        var total: UInt64 = 0
        var handler: (@Sendable (DMAFault) -> Void)?
    }

    private let contexts = Mutex(ContextTable())
    private let faults = Mutex(FaultLog())

    /// A unit described by `spec`, with an IOTLB of `iotlbEntries` (rounded to a power of two)
    /// and a fault log of `faultLogCapacity` records.
    public init(spec: IOMMUUnitSpec, iotlbEntries: Int = 8192, faultLogCapacity: Int = 256) {
        self.spec = spec
        self.iotlb = IOTLB(entries: iotlbEntries)
        self.faultLogCapacity = max(1, faultLogCapacity)
    }

    // MARK: Context entries

    /// Points `requester` (or its `pasid`) at `domain`; nil blocks its DMA. Returns the domain
    /// it replaced. The caller checks compatibility first (`contextError`). Cached translations
    /// need no flush: IOTLB entries are tagged by domain, so the old domain's entries no longer
    /// match this requester's lookups.
    @discardableResult
    public func setContext(requester: PCIAddress, pasid: UInt32? = nil, domain: IOMMUDomain?) -> IOMMUDomain? {
        contexts.withLock { $0.set(requester, pasid, domain) }
    }

    /// The domain `requester` (or its `pasid`) translates through, or nil (blocked).
    public func context(requester: PCIAddress, pasid: UInt32? = nil) -> IOMMUDomain? {
        contexts.withLock { $0.lookup(requester, pasid) }
    }

    /// Why `setContext(requester:pasid:domain:)` would install an unusable entry: EINVAL if
    /// the PASID does not fit the unit's PASID width or the domain is incompatible with this
    /// unit (`IOMMUDomain.attachError`). Nil if fine.
    public func contextError(pasid: UInt32?, domain: IOMMUDomain?) -> IOMMUError? {
        if let pasid {
            guard spec.pasidWidth > 0 else { return IOMMUError(.EINVAL, "\(spec.name) has no PASID support") }
            if spec.pasidWidth < 32 && UInt64(pasid) >> UInt64(spec.pasidWidth) != 0 {
                return IOMMUError(.EINVAL, "PASID \(pasid) exceeds \(spec.name)'s \(spec.pasidWidth)-bit PASIDs")
            }
        }
        return domain?.attachError(to: spec)
    }

    // MARK: Faults

    /// Called (outside every lock) for each recorded fault; the engine's fault reporting.
    public var faultHandler: (@Sendable (DMAFault) -> Void)? {
        get { faults.withLock { $0.handler } }
        set { faults.withLock { $0.handler = newValue } }
    }

    /// The recorded faults, oldest first (at most `faultLogCapacity`).
    public var faultLog: [DMAFault] {
        faults.withLock { log in
            guard log.records.count == faultLogCapacity else { return log.records }
            return Array(log.records[log.next...] + log.records[..<log.next])
        }
    }

    /// Every fault recorded since creation, including those the log has overwritten.
    public var faultCount: UInt64 { faults.withLock { $0.total } }

    public func clearFaultLog() {
        faults.withLock { $0.records.removeAll(); $0.next = 0 }
    }

    @inline(never)
    fileprivate func record(_ fault: DMAFault) -> DMAFault {
        guard fault.reason != .memoryError else { return fault }
        let handler = faults.withLock { log in
            log.total &+= 1
            if log.records.count < faultLogCapacity {
                log.records.append(fault)
            } else {
                log.records[log.next] = fault
                log.next = (log.next + 1) % faultLogCapacity
            }
            return log.handler
        }
        handler?(fault)
        return fault
    }

    // MARK: Translation

    /// Translates one DMA access: through the IOTLB, walking the domain's table on a miss.
    public func translate(requester: PCIAddress, pasid: UInt32? = nil, iova: UInt64,
                          write: Bool) -> Result<IOTranslation, DMAFault> {
        withTranslator(requester: requester, pasid: pasid) { $0.translate(iova: iova, write: write) }
    }

    /// Runs `body` with a translator bound to `requester`'s current context: the context lock
    /// is taken once for the whole burst and IOTLB counters are published once at the end.
    public func withTranslator<R, E: Error>(requester: PCIAddress, pasid: UInt32? = nil,
                                            _ body: (inout DMATranslator) throws(E) -> R) throws(E) -> R {
        var translator = DMATranslator(unit: self, requester: requester, pasid: pasid,
                                       domain: context(requester: requester, pasid: pasid))
        defer { iotlb.add(translator.counters) }
        return try body(&translator)
    }

    /// A device reads `count` bytes at `iova` into `destination`. The transfer is cut at leaf
    /// boundaries and each piece translated; a fault stops it (pieces before it have been read).
    public func dmaRead(requester: PCIAddress, pasid: UInt32? = nil, iova: UInt64,
                        into destination: UnsafeMutableRawPointer, count: Int,
                        memory: any PhysicalMemory) throws(DMAFault) {
        guard count > 0 else { return }
        try withTranslator(requester: requester, pasid: pasid) { (t: inout DMATranslator) throws(DMAFault) in
            try t.transfer(iova: iova, count: count, write: false) { (physical, offset, n) throws(IOMMUError) in
                try memory.read(physical: physical, into: destination + offset, count: n)
            }
        }
    }

    /// A device writes `count` bytes from `source` at `iova` (setting dirty bits when tracking
    /// is on). A fault stops it; pieces before the fault have been written, as on a bus.
    public func dmaWrite(requester: PCIAddress, pasid: UInt32? = nil, iova: UInt64,
                         from source: UnsafeRawPointer, count: Int,
                         memory: any PhysicalMemory) throws(DMAFault) {
        guard count > 0 else { return }
        try withTranslator(requester: requester, pasid: pasid) { (t: inout DMATranslator) throws(DMAFault) in
            try t.transfer(iova: iova, count: count, write: true) { (physical, offset, n) throws(IOMMUError) in
                try memory.write(physical: physical, from: source + offset, count: n)
            }
        }
    }
}

/// Translates a burst of DMA accesses for one requester (and PASID) through its unit. It holds
/// the context entry read when the burst began, as a device's in-flight transactions do; get a
/// new one (via `IOMMUUnit.withTranslator`) for each burst.
public struct DMATranslator {
    public let requester: PCIAddress
    public let pasid: UInt32?
    /// The domain the burst translates through (nil: blocked).
    public let domain: IOMMUDomain?
    let unit: IOMMUUnit
    var counters = IOTLB.LocalCounters()

    init(unit: IOMMUUnit, requester: PCIAddress, pasid: UInt32?, domain: IOMMUDomain?) {
        self.unit = unit; self.requester = requester; self.pasid = pasid; self.domain = domain
    }

    @inline(never)
    private func fault(_ iova: UInt64, _ write: Bool, _ reason: DMAFault.Reason) -> DMAFault {
        unit.record(DMAFault(requester: requester, pasid: pasid, iova: iova, write: write, reason: reason))
    }

    /// Translates one access. An IOTLB hit costs a seqlock read and a generation compare; a
    /// write hit whose entry does not know the leaf's dirty bit to be set walks anyway, because
    /// hardware must set that bit; a miss walks (setting A/D) and fills the IOTLB.
    public mutating func translate(iova: UInt64, write: Bool) -> Result<IOTranslation, DMAFault> {
        guard let domain else { return .failure(fault(iova, write, .blocked)) }
        guard domain.aperture.contains(iova) else { return .failure(fault(iova, write, .outsideAperture)) }
        let needed: IOPermissions = write ? .write : .read
        let offset = iova & ((1 << UInt64(domain.granuleShift)) - 1)
        let tag = IOTLB.Tag(domainID: domain.id, generation: domain.generation, pasid: pasid,
                            pageNumber: iova >> UInt64(domain.granuleShift))
        switch unit.iotlb.probe(tag) {
        case .hit(let entry):
            if !entry.permissions.contains(needed) {
                counters.hits &+= 1
                return .failure(fault(iova, write, .permission))
            }
            if !(write && entry.writeNeedsWalk) {
                counters.hits &+= 1
                return .success(IOTranslation(physical: entry.pagePhysical | offset, permissions: entry.permissions,
                                              leafSize: entry.leafSize, dirty: entry.dirty))
            }
            counters.misses &+= 1
        case .invalidated:
            counters.misses &+= 1
            counters.invalidated &+= 1
        case .miss:
            counters.misses &+= 1
        }
        let walk = domain.walkForDMA(iova: iova, write: write)
        guard let translation = walk.translation else { return .failure(fault(iova, write, .notPresent)) }
        guard translation.permissions.contains(needed) else { return .failure(fault(iova, write, .permission)) }
        var filled = tag
        filled.generation = walk.generation
        unit.iotlb.insert(filled, IOTLB.Entry(pagePhysical: translation.physical &- offset,
                                              permissions: translation.permissions,
                                              leafSize: translation.leafSize, dirty: translation.dirty,
                                              writeNeedsWalk: walk.tracking && !translation.dirty))
        counters.fills &+= 1
        return .success(translation)
    }

    /// Moves `count` bytes at `iova`, one leaf-bounded piece at a time: `copy(physical,
    /// offsetInBuffer, length)` does the memory side. Memory errors become `.memoryError`.
    mutating func transfer(iova: UInt64, count: Int, write: Bool,
                           _ copy: (UInt64, Int, Int) throws(IOMMUError) -> Void) throws(DMAFault) {
        var done = 0
        var cursor = iova
        while done < count {
            let t = try translate(iova: cursor, write: write).get()
            let intoLeaf = t.leafSize - (cursor & (t.leafSize - 1))
            let n = Int(min(UInt64(count - done), intoLeaf))
            do {
                try copy(t.physical, done, n)
            } catch {
                throw DMAFault(requester: requester, pasid: pasid, iova: cursor, write: write, reason: .memoryError)
            }
            done += n
            let (next, wrapped) = cursor.addingReportingOverflow(UInt64(n))
            if wrapped && done < count {
                // The burst runs past the top of the IOVA space; no aperture reaches there.
                throw fault(0, write, .outsideAperture)
            }
            cursor = next
        }
    }
}
