import UIOMMUBase

// The radix walk shared by every page-table format.
//
// All formats we model are the same tree:
//
//  - a table is 4 KiB of 512 little-endian 8-byte entries, so every level resolves 9 bits of
//    IOVA; level 1 holds the smallest leaves (the format's granule: 4 KiB, or 2 KiB for the
//    selftest mock) and level `levels` is the root;
//  - an entry is empty (all zero), a leaf (maps a naturally aligned block of 2^shift bytes) or a
//    pointer to the next table; which bits say which, where the address lives, and where the
//    permission, accessed and dirty bits sit is the format's business, and nothing else is.
//
// So the walk, bulk map, unmap, table freeing and dirty harvest are written once, here, as
// `RadixTree<Encoding>`. An encoding is a caseless enum of static, inlinable functions; the
// formats hold a `RadixTree<TheirEncoding>` (a concrete type), so the optimiser specialises
// every loop below for one format and the inner loops contain no dynamic dispatch at all. (A
// generic class *conforming* to `IOPageTable` would not do: calls through the protocol witness
// of a generic class run the unspecialised code, which dispatches per entry.)
//
// Performance rules the code follows, because the engine fills millions of entries:
//  - bulk map keeps its position: each table level loops over its own entries and recurses
//    once per child table, so a run of N leaves costs N stores plus one step per table, never
//    a walk from the root per leaf;
//  - the level-1 loops (map, unmap, harvest) are straight pointer loops;
//  - no allocation except the 4 KiB tables themselves, no Dictionary, no existentials.
//
// Where tables live. Each tree carves its tables out of 2 MiB chunks (`TableArena`), so the
// tables a bulk map creates one after another are adjacent in memory. That matters more than
// it looks: a dirty harvest streams through every level-1 table, and over tables scattered by
// malloc (one 4 KiB aligned allocation each) the same loop runs about 4x slower than over
// contiguous ones (measured: 16M entries, 21 ms against 5.5 ms), because the hardware
// prefetcher and DRAM pages stop helping at every table.
//
// Tables are allocated as 4 KiB-aligned host memory and entries store their host addresses:
// in uiommufd a "physical address" is a host address (see ProcessMemory), so a table pointer is
// exactly what real hardware would find in the entry, and a test can follow it with a plain
// pointer read.

/// How one format encodes its 8-byte entries. All members are static so `RadixTree`
/// specialises into straight-line code per format.
protocol RadixEntryEncoding {
    /// log2 of the smallest leaf (level 1).
    static var granuleShift: Int { get }
    /// Levels whose entries may be leaves, as a bit mask (bit l set: level l).
    static var leafLevels: UInt32 { get }
    /// The bits that hold the address of a leaf or of the next table.
    static var addressMask: UInt64 { get }
    static var dirtyBit: UInt64 { get }
    static var accessedBit: UInt64 { get }
    /// Whether a leaf without read or write permission is representable.
    static var allowsEmptyPermissions: Bool { get }
    static func isPresent(_ entry: UInt64) -> Bool
    /// For a present entry above level 1: does it point to a table (rather than being a leaf)?
    /// (No format needs the level to tell, which keeps the walk loop short.)
    static func isTable(_ entry: UInt64) -> Bool
    /// The entry at `level` pointing to the table at host address `child` (one level down).
    static func tableEntry(child: UInt64, level: Int) -> UInt64
    /// Every bit of a leaf at `level` except the address and format-wide extras.
    static func leafBits(level: Int, permissions: IOPermissions) -> UInt64
    static func permissions(of entry: UInt64) -> IOPermissions

    // Optional (defaults below keep VT-d, AMD and the mock as they were); ARM LPAE needs both.

    /// The bits that are all set exactly when a leaf is dirty. Default: `dirtyBit` alone. ARM
    /// stage 2 with hardware dirty management: DBM | S2AP[7] (S2AP[7] without DBM is plain
    /// write permission, not dirt). A DMA write and `markDirty` set `dirtyBit`, a harvest
    /// clears it; `markDirty` refuses a leaf lacking the other bits of the pattern.
    static var dirtyPattern: UInt64 { get }
    /// Every bit of a new leaf, given the tree's `extraLeafBits`. Default: `leafBits | extra`.
    /// A format whose extras depend on the permissions (ARM: DBM on writable leaves only)
    /// interprets `extra` itself.
    static func leafBits(level: Int, permissions: IOPermissions, extra: UInt64) -> UInt64
}

extension RadixEntryEncoding {
    @inline(__always) static var dirtyPattern: UInt64 { dirtyBit }
    @inline(__always) static func leafBits(level: Int, permissions: IOPermissions, extra: UInt64) -> UInt64 {
        leafBits(level: level, permissions: permissions) | extra
    }
    @inline(__always) static func isDirty(_ entry: UInt64) -> Bool { entry & dirtyPattern == dirtyPattern }
}

/// Why a fill stopped early.
enum RadixMapStatus {
    case ok
    case noMemory
    case occupied
}

/// The tree of one page table. Not thread-safe: `IOMMUDomain` serialises access.
final class RadixTree<E: RadixEntryEncoding> {
    static var entriesPerTable: Int { 512 }
    static var tableBytes: Int { 4096 }

    /// Number of levels (the root is at level `levels`).
    let levels: Int
    let root: UnsafeMutablePointer<UInt64>
    /// The last IOVA the tree can hold (`levels` × 9 bits above the granule).
    let coverageLast: UInt64
    let aperture: IOVARange
    /// Leaf sizes this tree uses: the requested sizes the format can express at its levels.
    let pageSizes: UInt64
    /// `pageSizes` as levels (bit l: level l may hold leaves).
    let leafLevelMask: UInt32
    let failures: FailureInjector
    /// Format-wide bits added to every new leaf (VT-d SNP, AMD FC; ARM: memory attributes and
    /// DBM-on-writable, see `RadixEntryEncoding.leafBits(level:permissions:extra:)`).
    var extraLeafBits: UInt64 = 0
    var dirtyTrackingEnabled = false
    private var arena = TableArena()
    private(set) var mappedBytes: UInt64 = 0
    /// Shift of the root level's entries.
    private let rootShift: UInt64

    @inline(__always) static func shift(_ level: Int) -> Int { E.granuleShift &+ 9 &* (level &- 1) }
    @inline(__always) static func index(_ iova: UInt64, _ level: Int) -> Int {
        Int(truncatingIfNeeded: (iova &>> UInt64(shift(level))) & 511)
    }
    @inline(__always) static func address(of table: UnsafeMutablePointer<UInt64>) -> UInt64 {
        UInt64(UInt(bitPattern: table))
    }
    /// The table an entry points to. Only called on entries this tree wrote, never on client data.
    @inline(__always) static func table(at entry: UInt64) -> UnsafeMutablePointer<UInt64> {
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(truncatingIfNeeded: entry & E.addressMask)).unsafelyUnwrapped
    }

    var granule: UInt64 { 1 << UInt64(E.granuleShift) }
    /// Bytes of the tables in use (the arena reserves address space in 2 MiB chunks).
    var tableMemoryBytes: Int { arena.liveTables * Self.tableBytes }
    /// Bytes of the chunks the arena holds (in-use tables, free slots, chunk headers).
    var reservedTableBytes: Int { arena.reservedBytes }
    var rootAddress: UInt64 { Self.address(of: root) }

    /// A tree covering `aperture` with the fewest levels in `minimumLevels...maximumLevels` that
    /// reach `aperture.last`. EINVAL if the aperture is too wide or not granule-aligned, or if
    /// `pageSizes` lacks the granule; ENOMEM if the root table cannot be allocated.
    init(aperture: IOVARange, pageSizes requested: UInt64, minimumLevels: Int, maximumLevels: Int,
         failures: FailureInjector) throws(IOMMUError) {
        func coverageBits(_ levels: Int) -> Int { E.granuleShift + 9 * levels }
        var levels = max(1, minimumLevels)
        while coverageBits(levels) < 64 && aperture.last >> UInt64(coverageBits(levels)) != 0 {
            levels += 1
        }
        guard levels <= maximumLevels else {
            throw IOMMUError(.EINVAL, "aperture \(aperture) is wider than \(maximumLevels) levels can map")
        }
        let granuleMask: UInt64 = (1 << UInt64(E.granuleShift)) - 1
        guard aperture.first & granuleMask == 0, aperture.last & granuleMask == granuleMask else {
            throw IOMMUError(.EINVAL, "aperture \(aperture) is not aligned to the \(granuleMask + 1)-byte granule")
        }
        var sizes: UInt64 = 0
        var mask: UInt32 = 0
        for level in 1...levels where E.leafLevels & (1 << UInt32(level)) != 0 {
            let s = Self.shift(level)
            if s < 64 && requested & (1 << UInt64(s)) != 0 {
                sizes |= 1 << UInt64(s)
                mask |= 1 << UInt32(level)
            }
        }
        guard mask & 0b10 != 0 else {
            throw IOMMUError(.EINVAL, "page sizes 0x\(String(requested, radix: 16)) lack the \(granuleMask + 1)-byte granule")
        }
        if failures.shouldFail("pagetable.alloc") {
            throw IOMMUError(.ENOMEM, "injected failure at pagetable.alloc")
        }
        self.levels = levels
        self.coverageLast = coverageBits(levels) >= 64 ? .max : (1 << UInt64(coverageBits(levels))) - 1
        self.aperture = aperture
        self.pageSizes = sizes
        self.leafLevelMask = mask
        self.failures = failures
        self.rootShift = UInt64(Self.shift(levels))
        self.root = arena.allocate()
    }

    deinit {
        _ = freeSubtree(root, level: levels)
        arena.releaseSpare()
    }

    // MARK: Tables

    /// A zeroed table, or nil when the failure injector says this allocation fails.
    @inline(__always)
    private func allocateTable() -> UnsafeMutablePointer<UInt64>? {
        if failures.shouldFail("pagetable.alloc") { return nil }
        return arena.allocate()
    }

    @inline(__always)
    private func freeTable(_ table: UnsafeMutablePointer<UInt64>) {
        arena.free(table)
    }

    private func isEmpty(_ table: UnsafeMutablePointer<UInt64>) -> Bool {
        for i in 0..<Self.entriesPerTable where E.isPresent(table[i]) { return false }
        return true
    }

    // MARK: Map

    private struct MapCursor {
        var iova: UInt64
        var physical: UInt64
        var remaining: UInt64
        var mapped: UInt64 = 0
        let allowed: UInt32
        let permissions: IOPermissions

        @inline(__always) mutating func advance(_ bytes: UInt64) {
            iova &+= bytes; physical &+= bytes; remaining &-= bytes; mapped &+= bytes
        }
    }

    /// Checks a map request against the contract: EINVAL for zero, misaligned, outside the
    /// aperture, a physical range the address field cannot hold, or no permission where the
    /// format cannot express that; EOVERFLOW when a range wraps.
    func validateMap(iova: UInt64, physical: UInt64, length: UInt64,
                     permissions: IOPermissions) throws(IOMMUError) {
        guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
        let g = granule
        guard iova.isAligned(to: g), physical.isAligned(to: g), length.isAligned(to: g) else {
            throw IOMMUError(.EINVAL, "iova, physical address and length must be multiples of \(g)")
        }
        let (last, iovaOverflow) = iova.addingReportingOverflow(length - 1)
        let (physicalLast, physicalOverflow) = physical.addingReportingOverflow(length - 1)
        guard !iovaOverflow, !physicalOverflow else { throw IOMMUError(.EOVERFLOW, "range wraps") }
        guard aperture.contains(IOVARange(first: iova, last: last)) else {
            throw IOMMUError(.EINVAL, "[0x\(String(iova, radix: 16)), 0x\(String(last, radix: 16))] is outside the aperture \(aperture)")
        }
        guard physicalLast & ~(E.addressMask | (g - 1)) == 0 else {
            throw IOMMUError(.EINVAL, "physical 0x\(String(physicalLast, radix: 16)) does not fit the entry's address field")
        }
        guard !permissions.intersection([.read, .write]).isEmpty || E.allowsEmptyPermissions else {
            throw IOMMUError(.EINVAL, "a mapping needs read or write permission")
        }
    }

    /// Maps `[iova, iova + length)` with the largest leaves that alignment, `maxLeafSize` and
    /// the page sizes allow. All or nothing: on failure everything this call created is gone,
    /// including tables allocated on the way.
    func map(iova: UInt64, physical: UInt64, length: UInt64, permissions: IOPermissions,
             maxLeafSize: UInt64) throws(IOMMUError) {
        try validateMap(iova: iova, physical: physical, length: length, permissions: permissions)
        var allowed: UInt32 = 0b10
        if levels >= 2 {
            for level in 2...levels where leafLevelMask & (1 << UInt32(level)) != 0 {
                if UInt64(1) << UInt64(Self.shift(level)) <= maxLeafSize { allowed |= 1 << UInt32(level) }
            }
        }
        var cursor = MapCursor(iova: iova, physical: physical, remaining: length,
                               allowed: allowed, permissions: permissions)
        let status = fill(root, level: levels, &cursor)
        mappedBytes &+= cursor.mapped
        switch status {
        case .ok:
            return
        case .noMemory:
            rollback(first: iova, stoppedAt: cursor.iova)
            throw IOMMUError(.ENOMEM, "injected failure at pagetable.alloc")
        case .occupied:
            rollback(first: iova, stoppedAt: cursor.iova)
            throw IOMMUError(.EEXIST, "IOVA 0x\(String(cursor.iova, radix: 16)) is already mapped")
        }
    }

    /// Fills `table` (at `level`) from `c.iova` until the request or the table ends.
    private func fill(_ table: UnsafeMutablePointer<UInt64>, level: Int, _ c: inout MapCursor) -> RadixMapStatus {
        let shift = UInt64(Self.shift(level))
        let size: UInt64 = 1 << shift
        var index = Self.index(c.iova, level)
        if level == 1 {
            // The hot loop: one store per leaf. Only an already-present entry (a caller that
            // broke the "currently unmapped" contract) stops it.
            let bits = E.leafBits(level: 1, permissions: c.permissions, extra: extraLeafBits)
            let count = min(Self.entriesPerTable - index, Int(truncatingIfNeeded: c.remaining >> shift))
            let first = table + index
            let end = first + count
            var slot = first
            var physical = c.physical
            while slot < end {
                if E.isPresent(slot.pointee) { break }
                slot.pointee = physical | bits
                physical &+= size
                slot += 1
            }
            c.advance(UInt64(slot - first) << shift)
            return slot == end ? .ok : .occupied
        }
        let leafHere = c.allowed & (1 << UInt32(level)) != 0
        let bits = E.leafBits(level: level, permissions: c.permissions, extra: extraLeafBits)
        while index < Self.entriesPerTable && c.remaining != 0 {
            let slot = table + index
            let entry = slot.pointee
            if leafHere && (c.iova | c.physical) & (size - 1) == 0 && c.remaining >= size {
                if E.isPresent(entry) { return .occupied }
                slot.pointee = c.physical | bits
                c.advance(size)
            } else {
                let child: UnsafeMutablePointer<UInt64>
                if !E.isPresent(entry) {
                    guard let fresh = allocateTable() else { return .noMemory }
                    slot.pointee = E.tableEntry(child: Self.address(of: fresh), level: level)
                    child = fresh
                } else if E.isTable(entry) {
                    child = Self.table(at: entry)
                } else {
                    return .occupied        // a large leaf covers part of the request
                }
                let status = fill(child, level: level - 1, &c)
                if status != .ok { return status }
            }
            index += 1
        }
        return .ok
    }

    /// Undoes a failed map: unmaps what it mapped before `stoppedAt`, then frees the tables it
    /// allocated on the path to `stoppedAt` that hold nothing.
    private func rollback(first: UInt64, stoppedAt: UInt64) {
        if stoppedAt > first {
            mappedBytes &-= unmapTable(root, level: levels, first: first, last: stoppedAt - 1)
        }
        prune(root, level: levels, iova: stoppedAt)
    }

    private func prune(_ table: UnsafeMutablePointer<UInt64>, level: Int, iova: UInt64) {
        guard level > 1 else { return }
        let slot = table + Self.index(iova, level)
        let entry = slot.pointee
        guard E.isPresent(entry), E.isTable(entry) else { return }
        let child = Self.table(at: entry)
        prune(child, level: level - 1, iova: iova)
        if isEmpty(child) {
            freeTable(child)
            slot.pointee = 0
        }
    }

    // MARK: Unmap

    /// Clamps `[iova, iova + length)` to what the tree covers; nil if nothing is left.
    @inline(__always)
    private func clamp(iova: UInt64, length: UInt64) -> (first: UInt64, last: UInt64)? {
        guard length != 0, iova <= coverageLast else { return nil }
        let (last, overflow) = iova.addingReportingOverflow(length - 1)
        return (iova, overflow ? coverageLast : min(last, coverageLast))
    }

    /// Removes every leaf lying wholly inside `[iova, iova + length)`; a large leaf straddling
    /// an edge stays (leaves are never split: the engine unmaps whole areas, and an area is a
    /// union of whole leaves). Frees tables that become empty. Returns the bytes unmapped.
    func unmap(iova: UInt64, length: UInt64) -> UInt64 {
        guard let (first, last) = clamp(iova: iova, length: length) else { return 0 }
        let bytes = unmapTable(root, level: levels, first: first, last: last)
        mappedBytes &-= bytes
        return bytes
    }

    /// `[first, last]` lies inside the span of `table`.
    private func unmapTable(_ table: UnsafeMutablePointer<UInt64>, level: Int,
                            first: UInt64, last: UInt64) -> UInt64 {
        let shift = UInt64(Self.shift(level))
        let size: UInt64 = 1 << shift
        var lo = Self.index(first, level)
        var hi = Self.index(last, level)
        if level == 1 {
            // Only the two edge entries can be partly covered; all leaves are granule-sized.
            if first & (size - 1) != 0 { lo += 1 }
            if last & (size - 1) != size - 1 { hi -= 1 }
            guard lo <= hi else { return 0 }
            var removed = 0
            for i in lo...hi where E.isPresent(table[i]) {
                table[i] = 0
                removed += 1
            }
            return UInt64(removed) << shift
        }
        let tableBase = shift + 9 >= 64 ? 0 : first & ~((1 << (shift + 9)) - 1)
        var bytes: UInt64 = 0
        for i in lo...hi {
            let slot = table + i
            let entry = slot.pointee
            guard E.isPresent(entry) else { continue }
            let base = tableBase | UInt64(i) << shift
            let entryLast = base | (size - 1)
            let whole = base >= first && entryLast <= last
            if !E.isTable(entry) {
                if whole {
                    slot.pointee = 0
                    bytes &+= size
                }
            } else {
                let child = Self.table(at: entry)
                if whole {
                    bytes &+= freeSubtree(child, level: level - 1)
                    slot.pointee = 0
                } else {
                    bytes &+= unmapTable(child, level: level - 1, first: max(first, base), last: min(last, entryLast))
                    if isEmpty(child) {
                        freeTable(child)
                        slot.pointee = 0
                    }
                }
            }
        }
        return bytes
    }

    /// Frees `table` and everything below it; returns the bytes its leaves mapped.
    private func freeSubtree(_ table: UnsafeMutablePointer<UInt64>, level: Int) -> UInt64 {
        let shift = UInt64(Self.shift(level))
        var bytes: UInt64 = 0
        if level == 1 {
            var present = 0
            for i in 0..<Self.entriesPerTable where E.isPresent(table[i]) { present += 1 }
            bytes = UInt64(present) << shift
        } else {
            for i in 0..<Self.entriesPerTable {
                let entry = table[i]
                guard E.isPresent(entry) else { continue }
                if E.isTable(entry) {
                    bytes &+= freeSubtree(Self.table(at: entry), level: level - 1)
                } else {
                    bytes &+= 1 << shift
                }
            }
        }
        freeTable(table)
        return bytes
    }

    // MARK: Walks

    /// The leaf entry mapping `iova` and log2 of the leaf's size, or nil. The loop steps the
    /// shift down by 9 rather than recomputing it from a level number: a short loop body lets
    /// the CPU overlap more independent walks, and a random walk is all cache misses.
    @inline(__always)
    func leafSlot(_ iova: UInt64) -> (slot: UnsafeMutablePointer<UInt64>, shift: UInt64)? {
        guard iova <= coverageLast else { return nil }
        var table = root
        var shift = rootShift
        while true {
            let slot = table + Int(truncatingIfNeeded: (iova &>> shift) & 511)
            let entry = slot.pointee
            guard E.isPresent(entry) else { return nil }
            if shift == UInt64(E.granuleShift) || !E.isTable(entry) { return (slot, shift) }
            table = Self.table(at: entry)
            shift &-= 9
        }
    }

    @inline(__always)
    func translation(of entry: UInt64, shift: UInt64, iova: UInt64) -> IOTranslation {
        let mask: UInt64 = (1 &<< shift) &- 1
        return IOTranslation(physical: (entry & E.addressMask & ~mask) | (iova & mask),
                             permissions: E.permissions(of: entry), leafSize: mask &+ 1,
                             dirty: E.isDirty(entry))
    }

    func translate(iova: UInt64) -> IOTranslation? {
        guard let (slot, shift) = leafSlot(iova) else { return nil }
        return translation(of: slot.pointee, shift: shift, iova: iova)
    }

    /// The walk a DMA makes: when the leaf permits the access it sets the accessed bit, and on
    /// a write with tracking enabled the dirty bit (an access the leaf forbids changes nothing:
    /// it faults, and hardware records A/D only for translations it completes).
    func walkForDMA(iova: UInt64, write: Bool) -> IOTranslation? {
        guard let (slot, shift) = leafSlot(iova) else { return nil }
        var entry = slot.pointee
        if E.permissions(of: entry).contains(write ? .write : .read) {
            var updated = entry | E.accessedBit
            if write && dirtyTrackingEnabled { updated |= E.dirtyBit }
            if updated != entry {
                slot.pointee = updated
                entry = updated
            }
        }
        return translation(of: entry, shift: shift, iova: iova)
    }

    /// Sets the leaf's dirty bit. False if `iova` is unmapped, or if the leaf cannot be dirty
    /// without a permission change (ARM: no DBM, i.e. read-only or not hardware-managed).
    func markDirty(iova: UInt64) -> Bool {
        guard let (slot, _) = leafSlot(iova) else { return false }
        let entry = slot.pointee
        let qualifier = E.dirtyPattern & ~E.dirtyBit
        guard entry & qualifier == qualifier else { return false }
        slot.pointee = entry | E.dirtyBit
        return true
    }

    // MARK: Dirty harvest

    /// Visits every dirty leaf intersecting `[iova, iova + length)` in ascending order, clearing
    /// its dirty bit when `clear`. Returns whether any bit was cleared. One walk does both the
    /// read and the clear (walking twice would double the cost of the biggest scan we make).
    func readAndClearDirty(iova: UInt64, length: UInt64, clear: Bool,
                           visit: (UInt64, UInt64) -> Void) -> Bool {
        guard let (first, last) = clamp(iova: iova, length: length) else { return false }
        return harvest(root, level: levels, first: first, last: last, clear: clear, visit: visit)
    }

    private func harvest(_ table: UnsafeMutablePointer<UInt64>, level: Int, first: UInt64, last: UInt64,
                         clear: Bool, visit: (UInt64, UInt64) -> Void) -> Bool {
        let shift = UInt64(Self.shift(level))
        let size: UInt64 = 1 << shift
        let lo = Self.index(first, level)
        let hi = Self.index(last, level)
        let tableBase = shift + 9 >= 64 ? 0 : first & ~((1 << (shift + 9)) - 1)
        let dirty = E.dirtyBit
        var cleared = false
        if level == 1 {
            // Every level-1 entry is a leaf, and only present leaves ever carry the dirty bit.
            // Most entries are clean, so test eight at a time with one branch: the scan then
            // runs at memory speed instead of paying a branch per entry. (The prefilter tests
            // `dirtyBit` only, which every dirty entry has; `isDirty` decides.)
            @inline(__always) func one(_ i: Int) {
                let entry = table[i]
                if E.isDirty(entry) {
                    if clear {
                        table[i] = entry & ~dirty
                        cleared = true
                    }
                    visit(tableBase | UInt64(i) << shift, size)
                }
            }
            var i = lo
            while i &+ 8 <= hi &+ 1 {
                let p = table + i
                if (p[0] | p[1] | p[2] | p[3] | p[4] | p[5] | p[6] | p[7]) & dirty != 0 {
                    for k in 0..<8 { one(i &+ k) }
                }
                i &+= 8
            }
            while i <= hi {
                one(i)
                i &+= 1
            }
            return cleared
        }
        for i in lo...hi {
            let entry = table[i]
            guard E.isPresent(entry) else { continue }
            let base = tableBase | UInt64(i) << shift
            if E.isTable(entry) {
                let entryLast = base | (size - 1)
                if harvest(Self.table(at: entry), level: level - 1, first: max(first, base),
                           last: min(last, entryLast), clear: clear, visit: visit) {
                    cleared = true
                }
            } else if E.isDirty(entry) {
                if clear {
                    table[i] = entry & ~dirty
                    cleared = true
                }
                visit(base, size)
            }
        }
        return cleared
    }
}

/// Where a tree's tables come from: 2 MiB chunks, 2 MiB aligned, cut into 512 slots of 4 KiB.
/// Slot 0 of each chunk is the chunk's header, so the chunk of any table is found by masking
/// its address. Freed slots are linked through their first word; chunks with a free slot are on
/// a doubly linked list, most recently used first, so allocation stays in one chunk and bulk
/// maps get adjacent tables. A chunk whose last table is freed goes back to the allocator,
/// except up to `maxSpares` kept (already faulted in) to absorb map/unmap churn: a VMM that
/// unmaps and remaps a guest region must not pay the page faults of fresh table memory again.
/// Spares are linked through their header's `next`.
struct TableArena {
    static var chunkBytes: Int { 1 << 21 }
    static var slotsPerChunk: Int { 512 }

    struct Chunk {
        var live = 0                               // slots handed out
        var bump = 1                               // first never-used slot
        var free: UnsafeMutablePointer<UInt64>?    // freed slots, linked through word 0
        var previous: UnsafeMutablePointer<Chunk>?
        var next: UnsafeMutablePointer<Chunk>?
        var listed = false                         // on the with-room list
    }

    private(set) var liveTables = 0
    private var chunks = 0
    private var withRoom: UnsafeMutablePointer<Chunk>?
    private var spares: UnsafeMutablePointer<Chunk>?
    private var spareCount = 0
    /// At most 16 MiB of table memory kept per tree after unmaps.
    static var maxSpares: Int { 8 }

    var reservedBytes: Int { (chunks + spareCount) * Self.chunkBytes }

    @inline(__always)
    private static func chunk(of table: UnsafeMutablePointer<UInt64>) -> UnsafeMutablePointer<Chunk> {
        let base = UInt(bitPattern: table) & ~UInt(chunkBytes - 1)
        return UnsafeMutablePointer<Chunk>(bitPattern: base).unsafelyUnwrapped
    }

    private mutating func link(_ c: UnsafeMutablePointer<Chunk>) {
        c.pointee.previous = nil
        c.pointee.next = withRoom
        withRoom?.pointee.previous = c
        withRoom = c
        c.pointee.listed = true
    }

    private mutating func unlink(_ c: UnsafeMutablePointer<Chunk>) {
        if let p = c.pointee.previous { p.pointee.next = c.pointee.next } else { withRoom = c.pointee.next }
        c.pointee.next?.pointee.previous = c.pointee.previous
        c.pointee.previous = nil
        c.pointee.next = nil
        c.pointee.listed = false
    }

    /// A zeroed 4 KiB table.
    mutating func allocate() -> UnsafeMutablePointer<UInt64> {
        let c: UnsafeMutablePointer<Chunk>
        if let head = withRoom {
            c = head
        } else {
            if let s = spares {
                c = s
                spares = s.pointee.next
                spareCount -= 1
            } else {
                c = UnsafeMutableRawPointer.allocate(byteCount: Self.chunkBytes, alignment: Self.chunkBytes)
                    .bindMemory(to: Chunk.self, capacity: 1)
            }
            c.initialize(to: Chunk())
            chunks += 1
            link(c)
        }
        let table: UnsafeMutablePointer<UInt64>
        if let slot = c.pointee.free {
            c.pointee.free = UnsafeMutablePointer<UInt64>(bitPattern: UInt(truncatingIfNeeded: slot.pointee))
            table = slot
        } else {
            table = (UnsafeMutableRawPointer(c) + c.pointee.bump * 4096).assumingMemoryBound(to: UInt64.self)
            c.pointee.bump += 1
        }
        c.pointee.live += 1
        if c.pointee.free == nil && c.pointee.bump == Self.slotsPerChunk { unlink(c) }
        liveTables += 1
        table.initialize(repeating: 0, count: 512)
        return table
    }

    mutating func free(_ table: UnsafeMutablePointer<UInt64>) {
        let c = Self.chunk(of: table)
        table.pointee = UInt64(UInt(bitPattern: c.pointee.free))
        c.pointee.free = table
        c.pointee.live -= 1
        liveTables -= 1
        if c.pointee.live == 0 {
            if c.pointee.listed { unlink(c) }
            chunks -= 1
            if spareCount < Self.maxSpares {
                c.pointee.next = spares
                spares = c
                spareCount += 1
            } else {
                UnsafeMutableRawPointer(c).deallocate()
            }
        } else if !c.pointee.listed {
            link(c)
        }
    }

    /// Returns the spare chunks (when the tree is destroyed, after every table was freed).
    mutating func releaseSpare() {
        while let s = spares {
            spares = s.pointee.next
            UnsafeMutableRawPointer(s).deallocate()
        }
        spareCount = 0
    }
}
