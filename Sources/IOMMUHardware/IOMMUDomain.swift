public import UIOMMUBase
import Synchronization

/// Process-unique domain ids (the IOTLB's domain tag). Starts at 1: an empty IOTLB slot is all
/// zero, so 0 must never name a live domain.
private let nextDomainID = Atomic<UInt32>(1)

/// One IOMMU domain: a page table in one hardware format plus the state that decides what it
/// may be attached to (what iommufd's HWPT_PAGING wraps as its iommu_domain).
///
/// Locking. One mutex serialises everything that reads or writes the page table (map, unmap,
/// translate, DMA walks, dirty operations). The domain never calls into an `IOMMUUnit`: IOTLBs
/// learn about unmaps through `generation`, an atomic counter the domain bumps (under its lock)
/// whenever a cached translation may have become wrong. IOTLB entries are tagged with the
/// generation they were filled at, so an unmap invalidates every unit's cached copies at once
/// without taking any unit lock, and the only lock order in the hardware model is
/// unit → domain (a DMA miss walks the domain), never the reverse.
public final class IOMMUDomain: @unchecked Sendable {
    /// How the domain is created (iommufd's HWPT_ALLOC flags plus the device's properties).
    public struct Options: Hashable, Sendable {
        /// Force snooping of every DMA (the VT-d SNP bit / AMD FC bit / ARM S2FWB write-back
        /// MemAttr in every leaf).
        public var enforceCacheCoherency: Bool
        /// The domain supports dirty tracking (IOMMU_HWPT_ALLOC_DIRTY_TRACKING).
        public var dirtyTrackingCapable: Bool
        /// The domain can be a nesting parent (IOMMU_HWPT_ALLOC_NEST_PARENT).
        public var nestParent: Bool
        /// Mock format only: add 1 MiB leaves (MOCK_FLAGS_DEVICE_HUGE_IOVA). Other formats
        /// have large leaves anyway and ignore it.
        public var allowHugeIOVA: Bool

        public init(enforceCacheCoherency: Bool = false, dirtyTrackingCapable: Bool = false,
                    nestParent: Bool = false, allowHugeIOVA: Bool = false) {
            self.enforceCacheCoherency = enforceCacheCoherency
            self.dirtyTrackingCapable = dirtyTrackingCapable
            self.nestParent = nestParent
            self.allowHugeIOVA = allowHugeIOVA
        }
    }

    /// Process-unique id: the domain tag of IOTLB entries (a VT-d domain-id).
    public let id: UInt32
    public let kind: IOMMUKind
    public let format: PageTableFormat
    /// The IOVAs the page table can translate (the unit's aperture).
    public let aperture: IOVARange
    /// Leaf sizes in use: bit n set means 2^n bytes.
    public let pageSizes: UInt64
    public let dirtyTrackingCapable: Bool
    public let isNestParent: Bool
    /// Whether the unit the domain was made for can force snooping (needed to upgrade later).
    public let canEnforceCacheCoherency: Bool
    /// log2 of the smallest leaf (the IOTLB's page granule).
    public let granuleShift: Int

    /// Page sizes a unit must support to walk this domain (`pageSizes` without the mock's
    /// huge-IOVA leaves, which are a property of the mock device, not of its IOMMU).
    private let requiredUnitPageSizes: UInt64
    /// Whether the format keeps snooping per leaf, so turning it on needs an empty table.
    private let snoopIsPerLeaf: Bool
    private let generationCounter = Atomic<UInt64>(1)
    private let lock = Mutex<Void>(())
    // Guarded by `lock`.
    private let table: any IOPageTable
    private var enforcing: Bool

    /// A domain for devices behind `unit`, with a page table of `unit.format` over
    /// `unit.aperture` using `unit.pageSizes`. Throws EOPNOTSUPP when `options` ask for what the
    /// unit lacks (dirty tracking, nesting, snoop control), EINVAL for an aperture or page sizes
    /// the format cannot express, ENOMEM (via `failures`) when the root table cannot be allocated.
    public init(unit: IOMMUUnitSpec, options: Options = Options(),
                failures: FailureInjector = FailureInjector()) throws(IOMMUError) {
        if options.dirtyTrackingCapable && !unit.dirtyTracking {
            throw IOMMUError(.EOPNOTSUPP, "\(unit.name) has no dirty tracking")
        }
        if options.nestParent && !unit.nesting {
            throw IOMMUError(.EOPNOTSUPP, "\(unit.name) cannot be a nesting parent")
        }
        if options.enforceCacheCoherency && !unit.enforcesCacheCoherency {
            throw IOMMUError(.EOPNOTSUPP, "\(unit.name) cannot enforce cache coherency")
        }
        let table: any IOPageTable
        switch unit.format {
        case .vtdSecondStage:
            table = try VTDSecondStagePageTable(aperture: unit.aperture, pageSizes: unit.pageSizes,
                                                snoopControl: options.enforceCacheCoherency, failures: failures)
            snoopIsPerLeaf = true
            granuleShift = 12
        case .amdV1:
            table = try AMDv1PageTable(aperture: unit.aperture, pageSizes: unit.pageSizes,
                                       forceCoherent: options.enforceCacheCoherency, failures: failures)
            snoopIsPerLeaf = true
            granuleShift = 12
        case .mock:
            table = try MockPageTable(aperture: unit.aperture, pageSizes: unit.pageSizes,
                                      hugeIOVA: options.allowHugeIOVA, failures: failures)
            snoopIsPerLeaf = false
            granuleShift = 11
        case .armLPAE:
            // Coherency is the S2FWB write-back MemAttr in every leaf (per leaf, like SNP/FC);
            // a dirty-capable domain maps writable leaves writable-clean (DBM) for HTTU.
            table = try ARMLPAEPageTable(aperture: unit.aperture, pageSizes: unit.pageSizes,
                                         forceCoherent: options.enforceCacheCoherency,
                                         hardwareDirty: options.dirtyTrackingCapable, failures: failures)
            snoopIsPerLeaf = true
            granuleShift = 12
        }
        self.table = table
        self.id = Self.allocateID()
        self.kind = unit.kind
        self.format = unit.format
        self.aperture = table.aperture
        self.pageSizes = table.pageSizes
        self.requiredUnitPageSizes = unit.format == .mock && options.allowHugeIOVA
            ? table.pageSizes & ~MockPageTable.hugePageSize : table.pageSizes
        self.dirtyTrackingCapable = options.dirtyTrackingCapable
        self.isNestParent = options.nestParent
        self.canEnforceCacheCoherency = unit.enforcesCacheCoherency
        self.enforcing = options.enforceCacheCoherency
    }

    private static func allocateID() -> UInt32 {
        while true {
            let id = nextDomainID.wrappingAdd(1, ordering: .relaxed).oldValue
            if id != 0 { return id }    // 4G domains later the counter wraps; 0 stays reserved
        }
    }

    // MARK: IOTLB coherence

    /// Bumped whenever a translation an IOTLB may hold becomes wrong (unmap, dirty-bit clear,
    /// dirty-tracking change). IOTLB entries of older generations miss.
    public var generation: UInt64 { generationCounter.load(ordering: .acquiring) }

    /// Makes every IOTLB entry for this domain miss (a domain-selective invalidation).
    public func invalidateIOTLBs() {
        lock.withLock { _ in bumpGeneration() }
    }

    /// Called with `lock` held, after the table changed, so a walk that reads the generation
    /// under the lock can never pair a stale translation with a new generation.
    private func bumpGeneration() {
        generationCounter.wrappingAdd(1, ordering: .releasing)
    }

    // MARK: Mapping

    /// Maps `[iova, iova + length)` to `[physical, physical + length)` with leaves no larger
    /// than `maxLeafSize`. EINVAL for misaligned or out-of-aperture ranges or no permission,
    /// EOVERFLOW for wrapping ranges, EEXIST if part is mapped, ENOMEM (injected at
    /// "pagetable.alloc"); on any failure nothing of this call stays mapped.
    public func map(iova: UInt64, physical: UInt64, length: UInt64, permissions: IOPermissions,
                    maxLeafSize: UInt64) throws(IOMMUError) {
        try lock.withLock { (_) throws(IOMMUError) -> Void in
            try table.map(iova: iova, physical: physical, length: length, permissions: permissions,
                          maxLeafSize: maxLeafSize)
        }
    }

    /// Unmaps every leaf inside `[iova, iova + length)` and returns the bytes unmapped; IOTLBs
    /// stop using the old translations before this returns. Never fails.
    @discardableResult
    public func unmap(iova: UInt64, length: UInt64) -> UInt64 {
        lock.withLock { _ in
            let bytes = table.unmap(iova: iova, length: length)
            if bytes != 0 { bumpGeneration() }
            return bytes
        }
    }

    /// A software walk: the translation of `iova`, or nil. Changes no A/D bit.
    public func translate(iova: UInt64) -> IOTranslation? {
        lock.withLock { _ in table.translate(iova: iova) }
    }

    /// The hardware walk of a DMA (sets A, and D on a write with tracking on), with the
    /// generation and tracking state read under the same lock so the IOTLB can tag the result.
    func walkForDMA(iova: UInt64, write: Bool) -> (translation: IOTranslation?, generation: UInt64, tracking: Bool) {
        lock.withLock { _ in
            (table.walkForDMA(iova: iova, write: write),
             generationCounter.load(ordering: .relaxed),
             table.dirtyTrackingEnabled)
        }
    }

    /// Runs `body` with the page table under the domain lock (for inspection, e.g. the mock's
    /// START/LAST flags). `body` must not call back into this domain.
    public func withPageTable<R: Sendable, E: Error>(_ body: (any IOPageTable) throws(E) -> R) throws(E) -> R {
        try lock.withLock { (_) throws(E) -> R in try body(table) }
    }

    /// The mock format's view of the IO page holding `iova` (nil if unmapped or not mock).
    public func mockIOPage(at iova: UInt64) -> MockPageTable.IOPageState? {
        lock.withLock { _ in (table as? MockPageTable)?.ioPage(at: iova) }
    }

    // MARK: Dirty tracking

    /// Turns hardware dirty tracking on or off (VT-d SSADS, AMD HD, SMMU S2HD). EOPNOTSUPP
    /// unless the domain was created dirty-tracking capable. Enabling does not clear old dirty bits; the
    /// caller does that with `readAndClearDirty`, as iommufd does. A change invalidates IOTLBs,
    /// which remember whether a write must walk to set the dirty bit.
    public func setDirtyTracking(_ on: Bool) throws(IOMMUError) {
        guard dirtyTrackingCapable else {
            throw IOMMUError(.EOPNOTSUPP, "domain was not created with dirty tracking")
        }
        lock.withLock { _ in
            if table.dirtyTrackingEnabled != on {
                table.dirtyTrackingEnabled = on
                bumpGeneration()
            }
        }
    }

    public var dirtyTrackingEnabled: Bool {
        lock.withLock { _ in table.dirtyTrackingEnabled }
    }

    /// Calls `visit(leafIOVA, leafSize)` for every dirty leaf intersecting
    /// `[iova, iova + length)`, ascending, clearing the dirty bits unless `clear` is false.
    /// Works whether or not tracking is on. `visit` runs under the domain lock and must not
    /// call back into the domain. Clearing invalidates IOTLBs: their entries remember that the
    /// dirty bit was set, and the next write must walk to set it again.
    public func readAndClearDirty(iova: UInt64, length: UInt64, clear: Bool,
                                  visit: (UInt64, UInt64) -> Void) {
        lock.withLock { _ in
            var cleared = false
            table.readAndClearDirty(iova: iova, length: length, clear: clear) { leaf, size in
                cleared = clear
                visit(leaf, size)
            }
            if cleared { bumpGeneration() }
        }
    }

    /// Sets the dirty bit of the leaf mapping `iova` (the selftest's dirty injection), whatever
    /// its permissions. False if `iova` is not mapped.
    @discardableResult
    public func markDirty(iova: UInt64) -> Bool {
        lock.withLock { _ in table.markDirty(iova: iova) }
    }

    // MARK: Cache coherency

    /// Whether every DMA through this domain is forced to snoop.
    public var enforcesCacheCoherency: Bool { lock.withLock { _ in enforcing } }

    /// Upgrades the domain to enforce cache coherency (iommu_domain's
    /// enforce_cache_coherency). Needs a unit that can force snooping and, for formats that
    /// keep the snoop bit per leaf (VT-d, AMD, ARM), an empty table: existing leaves would keep
    /// snooping optional. True if the domain now enforces.
    public func enforceCacheCoherency() -> Bool {
        lock.withLock { _ in
            if enforcing { return true }
            guard canEnforceCacheCoherency else { return false }
            if snoopIsPerLeaf && table.mappedBytes != 0 { return false }
            if let vtd = table as? VTDSecondStagePageTable { vtd.snoopControl = true }
            if let amd = table as? AMDv1PageTable { amd.forceCoherent = true }
            if let arm = table as? ARMLPAEPageTable { arm.forceCoherent = true }
            enforcing = true
            return true
        }
    }

    // MARK: Accounting

    /// Bytes of page-table memory (every table, root included).
    public var tableMemoryBytes: Int { lock.withLock { _ in table.tableMemoryBytes } }
    /// Bytes the page-table allocator holds from the system (tables are carved from 2 MiB chunks).
    public var reservedTableMemoryBytes: Int { lock.withLock { _ in table.reservedTableMemoryBytes } }
    /// Bytes of IOVA mapped.
    public var mappedBytes: UInt64 { lock.withLock { _ in table.mappedBytes } }

    // MARK: Compatibility

    /// Why a device behind `unit` cannot use this domain (EINVAL with a reason), or nil if it
    /// can: the unit must walk the same format, cover the domain's aperture, support every leaf
    /// size the domain may use, force snooping if the domain enforces coherency (the VT-d rule:
    /// a snoop-forcing domain cannot be attached through a unit without snoop control), track
    /// dirty bits if the domain is dirty-tracking capable, and nest if it is a nesting parent.
    public func attachError(to unit: IOMMUUnitSpec) -> IOMMUError? {
        if unit.format != format || unit.kind != kind {
            return IOMMUError(.EINVAL, "domain is \(kind.rawValue)/\(format.rawValue), \(unit.name) is \(unit.kind.rawValue)/\(unit.format.rawValue)")
        }
        if !unit.aperture.contains(aperture) {
            return IOMMUError(.EINVAL, "domain aperture \(aperture) exceeds \(unit.name)'s \(unit.aperture)")
        }
        if requiredUnitPageSizes & ~unit.pageSizes != 0 {
            return IOMMUError(.EINVAL, "\(unit.name) lacks page sizes 0x\(String(requiredUnitPageSizes & ~unit.pageSizes, radix: 16)) the domain uses")
        }
        let (enforces, tracking) = lock.withLock { _ in (enforcing, table.dirtyTrackingEnabled) }
        if enforces && !unit.enforcesCacheCoherency {
            return IOMMUError(.EINVAL, "domain enforces cache coherency; \(unit.name) cannot force snooping")
        }
        if (dirtyTrackingCapable || tracking) && !unit.dirtyTracking {
            return IOMMUError(.EINVAL, "domain tracks dirty pages; \(unit.name) has no dirty tracking")
        }
        if isNestParent && !unit.nesting {
            return IOMMUError(.EINVAL, "domain is a nesting parent; \(unit.name) cannot nest")
        }
        return nil
    }
}
