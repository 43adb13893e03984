// Pages: the memory behind areas, and how it is pinned.
//
// A `Pages` object is the kernel's iopt_pages: one run of user memory (a VA range of one
// process, or a range of a memfd) that one IOAS_MAP created. Areas take slices of it; IOAS_COPY
// makes a new area over the *same* Pages, so copies share pins and accounting, exactly as in
// Linux.
//
// Pinning is lazy and counted per page:
//
//  - Nothing is pinned while nothing needs the pages. An IOAS with no domain and no access
//    costs O(1) per map, whatever its size: 64 GiB of untouched VA maps as fast as 4 KiB.
//  - Each page has a count of *users*: +1 for every area over it that is loaded into the IOAS's
//    domains (one count for all of that IOAS's domains, like the kernel's storage domain), and
//    +1 for every access pin over it. A page is pinned while its count is non-zero.
//  - Counts are kept as a piecewise-constant function over page indexes (`SpanCounter`), so
//    pinning 4 GiB is a handful of array operations, not a million: memory and time scale with
//    the number of distinct ranges, never with the number of pages.
//  - When a range goes from 0 to 1 users it is resolved to physical runs through
//    `PinnableMemory.resolve` (which is where EFAULT comes from: unmapped or read-only user
//    memory) and charged to the owner's locked-memory budget (ENOMEM over the limit). When it
//    goes back to 0 it is uncharged and forgotten. A range that is already pinned is never
//    resolved again: its physical runs are remembered, so a second domain can be filled even
//    after the mapping process exited, as in the kernel (the fork_gone test).
//
// Every operation is all-or-nothing: `pin` first resolves and charges everything it needs and
// only then commits, so a failure anywhere leaves the counts, the runs and the ledger as they
// were.
//
// Terms: `last` is inclusive, `end` exclusive; page indexes are relative to the first page of
// the Pages object; PAGE_SIZE is 4 KiB.

public import UIOMMUBase
public import ProcessMemory

/// The host page size the engine pins in (the kernel's PAGE_SIZE on x86-64).
public let hostPageSize: UInt64 = 4096

/// A piecewise-constant counter over UInt64 indexes: `count(i)` for every i, stored as sorted
/// segment starts. Index `UInt64.max` is never used (page indexes cannot reach it).
struct SpanCounter {
    /// `starts[k]` begins a segment with value `counts[k]` that runs to `starts[k+1] - 1`.
    private(set) var starts: [UInt64] = [0]
    private(set) var counts: [Int32] = [0]

    /// Index of the segment containing `i`.
    private func segment(containing i: UInt64) -> Int {
        var lo = 0, hi = starts.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if starts[mid] <= i { lo = mid + 1 } else { hi = mid }
        }
        return lo - 1
    }

    /// Ensures a segment boundary at `i`; returns the segment index starting at `i`.
    private mutating func split(at i: UInt64) -> Int {
        let k = segment(containing: i)
        if starts[k] == i { return k }
        starts.insert(i, at: k + 1)
        counts.insert(counts[k], at: k + 1)
        return k + 1
    }

    /// Calls `body(first, last, count)` for each maximal sub-range of `[first, last]`.
    func forEach(_ first: UInt64, _ last: UInt64, _ body: (UInt64, UInt64, Int32) -> Void) {
        var k = segment(containing: first)
        var cursor = first
        while cursor <= last {
            let segLast = k + 1 < starts.count ? starts[k + 1] - 1 : UInt64.max
            let end = min(segLast, last)
            body(cursor, end, counts[k])
            if end == last { break }
            cursor = end + 1
            k += 1
        }
    }

    /// Sub-ranges of `[first, last]` whose count is zero.
    func zeroRanges(_ first: UInt64, _ last: UInt64) -> [(UInt64, UInt64)] {
        var out: [(UInt64, UInt64)] = []
        forEach(first, last) { a, b, c in
            if c == 0 {
                if let l = out.last, l.1 &+ 1 == a { out[out.count - 1].1 = b } else { out.append((a, b)) }
            }
        }
        return out
    }

    /// Adds `delta` (+1 or -1) over `[first, last]` and returns the sub-ranges whose count
    /// crossed zero (0→1 for +1, 1→0 for -1).
    @discardableResult
    mutating func add(_ first: UInt64, _ last: UInt64, _ delta: Int32) -> [(UInt64, UInt64)] {
        let k0 = split(at: first)
        let k1 = last == UInt64.max ? starts.count : split(at: last + 1)
        var crossed: [(UInt64, UInt64)] = []
        for k in k0..<k1 {
            let before = counts[k]
            counts[k] = before + delta
            precondition(counts[k] >= 0, "page user count went negative")
            if (before == 0) != (counts[k] == 0) {
                let a = starts[k], b = k + 1 < starts.count ? starts[k + 1] - 1 : UInt64.max
                if let l = crossed.last, l.1 &+ 1 == a { crossed[crossed.count - 1].1 = b } else { crossed.append((a, b)) }
            }
        }
        coalesce(from: max(0, k0 - 1), to: min(starts.count - 1, k1 + 1))
        return crossed
    }

    /// Merges equal neighbours in the index window (keeps the representation minimal).
    private mutating func coalesce(from: Int, to: Int) {
        var k = min(to, starts.count - 1)
        while k > from && k > 0 {
            if counts[k] == counts[k - 1] {
                starts.remove(at: k)
                counts.remove(at: k)
            }
            k -= 1
        }
    }

    var isAllZero: Bool { counts.count == 1 && counts[0] == 0 }
    var segmentCount: Int { starts.count }

    func count(at i: UInt64) -> Int32 { counts[segment(containing: i)] }
}

/// Physical memory remembered for pinned pages: page `firstPage + k` is at `physical + k*4K`.
struct PinnedRun {
    var firstPage: UInt64
    var pageCount: UInt64
    var physical: UInt64
    var backingPageSize: UInt64
    var lastPage: UInt64 { firstPage + pageCount - 1 }
}

/// The kernel's iopt_pages: user memory one map created, shared by the areas over it.
public final class Pages {
    let memory: any PinnableMemory
    /// Offset in `memory` (user VA or file offset) of page 0; page aligned.
    let base: UInt64
    let pageCount: UInt64
    /// Pages may be mapped writeable (the map asked for WRITEABLE).
    let writable: Bool
    /// Who is charged for pinned pages, and how (moved by IOAS_CHANGE_PROCESS).
    var account: PinAccount
    let ledger: PinLedger
    let isFile: Bool

    private var users = SpanCounter()
    private var pinned: [PinnedRun] = []       // sorted by firstPage, disjoint
    private(set) var pinnedPageCount: UInt64 = 0
    /// Areas referencing this object (the kernel's kref on iopt_pages).
    var areaRefs = 0
    /// Pins are counted per physical page in `ledger.physicalPins` (decided at creation).
    let countsPhysicalPins: Bool

    init(memory: any PinnableMemory, base: UInt64, pageCount: UInt64, writable: Bool,
         account: PinAccount, ledger: PinLedger, isFile: Bool) {
        self.memory = memory; self.base = base; self.pageCount = pageCount
        self.writable = writable; self.account = account; self.ledger = ledger; self.isFile = isFile
        self.countsPhysicalPins = ledger.physicalPins.isTracking
    }

    /// Adds one user to pages `[first, last]`, pinning (resolving and charging) those that had
    /// none. All or nothing.
    func addUser(first: UInt64, last: UInt64, failures: FailureInjector) throws(IOMMUError) {
        precondition(first <= last && last < pageCount)
        let needed = users.zeroRanges(first, last)
        var newRuns: [PinnedRun] = []
        var newPages: UInt64 = 0
        for (a, b) in needed {
            try failures.check("pages.pin")
            var page = a
            try memory.resolve(offset: base + a * hostPageSize, length: (b - a + 1) * hostPageSize,
                               writable: writable) { (run) throws(IOMMUError) in
                let n = run.length / hostPageSize
                newRuns.append(PinnedRun(firstPage: page, pageCount: n, physical: run.physical,
                                         backingPageSize: max(run.backingPageSize, hostPageSize)))
                page += n
            }
            newPages += b - a + 1
        }
        if newPages > 0 {
            try failures.check("pages.account")
            try ledger.charge(pages: newPages, to: account)
        }
        // Commit.
        users.add(first, last, 1)
        if !newRuns.isEmpty { insertRuns(newRuns) }
        if countsPhysicalPins { ledger.physicalPins.add(newRuns, 1) }
        pinnedPageCount += newPages
    }

    /// Removes one user from pages `[first, last]`, unpinning those left with none. Never fails.
    func removeUser(first: UInt64, last: UInt64) {
        let released = users.add(first, last, -1)
        var freed: UInt64 = 0
        for (a, b) in released {
            if countsPhysicalPins { ledger.physicalPins.add(physicalRuns(first: a, last: b), -1) }
            removeRuns(first: a, last: b)
            freed += b - a + 1
        }
        if freed > 0 {
            ledger.uncharge(pages: freed, from: account)
            pinnedPageCount -= freed
        }
    }

    /// Physical runs for pinned pages `[first, last]`, clipped to that range.
    func physicalRuns(first: UInt64, last: UInt64) -> [PinnedRun] {
        var lo = 0, hi = pinned.count
        while lo < hi { let mid = (lo + hi) >> 1; if pinned[mid].lastPage < first { lo = mid + 1 } else { hi = mid } }
        var out: [PinnedRun] = []
        var k = lo
        while k < pinned.count, pinned[k].firstPage <= last {
            var r = pinned[k]
            if r.firstPage < first {
                let skip = first - r.firstPage
                r.firstPage = first; r.pageCount -= skip; r.physical += skip * hostPageSize
            }
            if r.lastPage > last { r.pageCount = last - r.firstPage + 1 }
            out.append(r)
            k += 1
        }
        return out
    }

    /// True if every page in `[first, last]` is pinned.
    func isPinned(first: UInt64, last: UInt64) -> Bool { users.zeroRanges(first, last).isEmpty }

    /// Number of users of page `index` (for invariant checks and tests).
    func userCount(page index: UInt64) -> Int32 { users.count(at: index) }

    var hasUsers: Bool { !users.isAllZero }

    private func insertRuns(_ runs: [PinnedRun]) {
        pinned.append(contentsOf: runs)
        pinned.sort { $0.firstPage < $1.firstPage }
    }

    private func removeRuns(first: UInt64, last: UInt64) {
        var out: [PinnedRun] = []
        out.reserveCapacity(pinned.count + 1)
        for r in pinned {
            if r.lastPage < first || r.firstPage > last { out.append(r); continue }
            if r.firstPage < first {
                out.append(PinnedRun(firstPage: r.firstPage, pageCount: first - r.firstPage,
                                     physical: r.physical, backingPageSize: r.backingPageSize))
            }
            if r.lastPage > last {
                let skip = last + 1 - r.firstPage
                out.append(PinnedRun(firstPage: last + 1, pageCount: r.lastPage - last,
                                     physical: r.physical + skip * hostPageSize,
                                     backingPageSize: r.backingPageSize))
            }
        }
        pinned = out
    }
}
