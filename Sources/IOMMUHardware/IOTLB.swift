import Synchronization

/// The translation cache of one IOMMU unit: a fixed-size, direct-mapped table of recent
/// translations, shared by every device and domain behind the unit.
///
/// Tags. An entry is found by (domain id, PASID, IO page number) — as on VT-d, where the
/// IOTLB is tagged by domain-id and PASID, not by requester, so devices sharing a domain share
/// entries — and is valid only for the domain *generation* it was filled at and the IOTLB's
/// own *epoch*. A domain bumps its generation whenever a cached translation may have become
/// wrong (unmap, dirty clear), which makes all its entries in every unit miss without the
/// domain touching any unit: a domain-selective invalidation in O(1). `invalidateAll()` bumps
/// the epoch the same way (a global invalidation, also O(1)).
///
/// Concurrency without a lock. Devices translate from many threads, and a lock per translation
/// would cost as much as the lookup itself, so each entry is a seqlock: a writer makes the
/// sequence word odd, stores the fields, and makes it even again; a reader copies the fields
/// between two reads of the sequence word and discards the copy if the word changed or was odd.
/// A fill that finds the slot being written simply gives up: this is a cache, a lost fill only
/// costs a later walk. All fields are atomics with relaxed ordering (plain loads and stores on
/// x86-64), so there is no data race in the language sense either.
///
/// Layout: one 64-byte line per entry (sequence, page, domain, PASID tag, generation, epoch,
/// value, padding), so two threads filling neighbouring slots never share a cache line.
/// The value packs the physical page (granule-aligned, so its low 11 bits are free) with the
/// permissions, the dirty state and log2 of the leaf size.
public final class IOTLB: @unchecked Sendable {
    /// What identifies a cached translation.
    public struct Tag: Hashable, Sendable {
        public var domainID: UInt32
        /// The domain generation the translation was read at (or is looked up for).
        public var generation: UInt64
        public var pasid: UInt32?
        /// IOVA >> the format's granule shift.
        public var pageNumber: UInt64
        public init(domainID: UInt32, generation: UInt64, pasid: UInt32?, pageNumber: UInt64) {
            self.domainID = domainID; self.generation = generation; self.pasid = pasid
            self.pageNumber = pageNumber
        }
    }

    /// A cached translation of one IO page.
    public struct Entry: Hashable, Sendable {
        /// Physical address of the IO page (granule-aligned).
        public var pagePhysical: UInt64
        public var permissions: IOPermissions
        /// Size of the leaf the page belongs to.
        public var leafSize: UInt64
        /// The leaf's dirty bit was set when the entry was filled.
        public var dirty: Bool
        /// A write must walk the table to set the dirty bit (tracking was on and the bit clear).
        /// Hardware caches the dirty state so that a write hit can skip the walk only when the
        /// bit is known to be set already.
        public var writeNeedsWalk: Bool
        public init(pagePhysical: UInt64, permissions: IOPermissions, leafSize: UInt64,
                    dirty: Bool, writeNeedsWalk: Bool) {
            self.pagePhysical = pagePhysical; self.permissions = permissions; self.leafSize = leafSize
            self.dirty = dirty; self.writeNeedsWalk = writeNeedsWalk
        }
    }

    /// Counters since creation.
    public struct Statistics: Hashable, Sendable {
        public var hits: UInt64 = 0
        /// Lookups that found nothing usable (including stale ones).
        public var misses: UInt64 = 0
        /// Misses on an entry for the right page whose generation or epoch was invalidated.
        public var invalidatedMisses: UInt64 = 0
        public var fills: UInt64 = 0
        /// `invalidateAll()` calls.
        public var globalInvalidations: UInt64 = 0
        public init() {}
    }

    /// Result of a probe.
    enum Probe {
        case hit(Entry)
        case miss
        /// The slot held this page for an older generation or epoch: an invalidation at work.
        case invalidated
    }

    /// Number of entries (a power of two).
    public let capacity: Int
    private let mask: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>
    private static var wordsPerEntry: Int { 8 }
    private let epoch = Atomic<UInt64>(1)   // empty slots have epoch 0, so they never match
    private let hitCount = Atomic<UInt64>(0)
    private let missCount = Atomic<UInt64>(0)
    private let invalidatedCount = Atomic<UInt64>(0)
    private let fillCount = Atomic<UInt64>(0)
    private let globalCount = Atomic<UInt64>(0)

    /// An IOTLB of `entries` slots, rounded up to a power of two in 16...1M.
    public init(entries: Int = 8192) {
        var n = 16
        while n < min(max(entries, 16), 1 << 20) { n <<= 1 }
        capacity = n
        mask = n - 1
        let count = n * Self.wordsPerEntry
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<UInt64>.stride, alignment: 64)
        words = raw.bindMemory(to: Atomic<UInt64>.self, capacity: count)
        for i in 0..<count { (words + i).initialize(to: Atomic<UInt64>(0)) }
    }

    deinit {
        words.deinitialize(count: capacity * Self.wordsPerEntry)
        words.deallocate()
    }

    @inline(__always)
    private static func pasidTag(_ pasid: UInt32?) -> UInt64 {
        pasid.map { UInt64($0) } ?? 1 << 32       // outside the 32-bit PASID space: "no PASID"
    }

    /// Consecutive pages land in consecutive slots (a sequential or hot-set workload never
    /// conflicts with itself); domain and PASID shift the window so two domains' page 0 differ.
    @inline(__always)
    private func slot(_ tag: Tag, _ pasidTag: UInt64) -> UnsafeMutablePointer<Atomic<UInt64>> {
        let mix = tag.pageNumber &+ UInt64(tag.domainID) &* 0x9E37_79B9 &+ pasidTag &* 0x85EB_CA6B
        return words + Int(truncatingIfNeeded: mix & UInt64(mask)) &* Self.wordsPerEntry
    }

    @inline(__always)
    func probe(_ tag: Tag) -> Probe {
        let pasid = Self.pasidTag(tag.pasid)
        let e = slot(tag, pasid)
        let sequence = e[0].load(ordering: .acquiring)
        if sequence & 1 != 0 { return .miss }
        let page = e[1].load(ordering: .relaxed)
        let domain = e[2].load(ordering: .relaxed)
        let pasidWord = e[3].load(ordering: .relaxed)
        let generation = e[4].load(ordering: .relaxed)
        let entryEpoch = e[5].load(ordering: .relaxed)
        let value = e[6].load(ordering: .relaxed)
        atomicMemoryFence(ordering: .acquiring)
        if e[0].load(ordering: .relaxed) != sequence { return .miss }
        guard page == tag.pageNumber, domain == UInt64(tag.domainID), pasidWord == pasid else { return .miss }
        guard generation == tag.generation, entryEpoch == epoch.load(ordering: .relaxed) else {
            return .invalidated
        }
        return .hit(Entry(pagePhysical: value & ~0x7FF,
                          permissions: IOPermissions(rawValue: UInt8(truncatingIfNeeded: value & 3)),
                          leafSize: 1 << ((value >> 4) & 63),
                          dirty: value & 4 != 0,
                          writeNeedsWalk: value & 8 != 0))
    }

    func insert(_ tag: Tag, _ entry: Entry) {
        let pasid = Self.pasidTag(tag.pasid)
        let e = slot(tag, pasid)
        let sequence = e[0].load(ordering: .relaxed)
        guard sequence & 1 == 0,
              e[0].compareExchange(expected: sequence, desired: sequence &+ 1,
                                   ordering: .acquiringAndReleasing).exchanged else { return }
        let shift = UInt64(entry.leafSize.trailingZeroBitCount)
        var value = (entry.pagePhysical & ~0x7FF) | UInt64(entry.permissions.rawValue & 3) | shift << 4
        if entry.dirty { value |= 4 }
        if entry.writeNeedsWalk { value |= 8 }
        e[1].store(tag.pageNumber, ordering: .relaxed)
        e[2].store(UInt64(tag.domainID), ordering: .relaxed)
        e[3].store(pasid, ordering: .relaxed)
        e[4].store(tag.generation, ordering: .relaxed)
        e[5].store(epoch.load(ordering: .relaxed), ordering: .relaxed)
        e[6].store(value, ordering: .relaxed)
        e[0].store(sequence &+ 2, ordering: .releasing)
    }

    /// Counters accumulated by a translator over a burst and added in one go, so that the hot
    /// path does no shared-memory read-modify-write per translation.
    struct LocalCounters {
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        var invalidated: UInt64 = 0
        var fills: UInt64 = 0
    }

    func add(_ c: LocalCounters) {
        if c.hits != 0 { hitCount.wrappingAdd(c.hits, ordering: .relaxed) }
        if c.misses != 0 { missCount.wrappingAdd(c.misses, ordering: .relaxed) }
        if c.invalidated != 0 { invalidatedCount.wrappingAdd(c.invalidated, ordering: .relaxed) }
        if c.fills != 0 { fillCount.wrappingAdd(c.fills, ordering: .relaxed) }
    }

    // MARK: Public interface

    /// Looks `tag` up (counted in the statistics).
    public func lookup(_ tag: Tag) -> Entry? {
        switch probe(tag) {
        case .hit(let entry):
            hitCount.wrappingAdd(1, ordering: .relaxed)
            return entry
        case .invalidated:
            invalidatedCount.wrappingAdd(1, ordering: .relaxed)
            missCount.wrappingAdd(1, ordering: .relaxed)
            return nil
        case .miss:
            missCount.wrappingAdd(1, ordering: .relaxed)
            return nil
        }
    }

    /// Caches `entry` under `tag`, evicting whatever shared its slot.
    public func fill(_ tag: Tag, _ entry: Entry) {
        insert(tag, entry)
        fillCount.wrappingAdd(1, ordering: .relaxed)
    }

    /// Invalidates every entry (a global invalidation).
    public func invalidateAll() {
        epoch.wrappingAdd(1, ordering: .releasing)
        globalCount.wrappingAdd(1, ordering: .relaxed)
    }

    public var statistics: Statistics {
        var s = Statistics()
        s.hits = hitCount.load(ordering: .relaxed)
        s.misses = missCount.load(ordering: .relaxed)
        s.invalidatedMisses = invalidatedCount.load(ordering: .relaxed)
        s.fills = fillCount.load(ordering: .relaxed)
        s.globalInvalidations = globalCount.load(ordering: .relaxed)
        return s
    }
}
