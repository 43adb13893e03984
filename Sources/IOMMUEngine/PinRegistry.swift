// Host-wide pin counts per physical page: what the kernel keeps in each struct page's
// refcount (every pin_user_pages adds GUP_PIN_COUNTING_BIAS), and what the selftest's
// IOMMU_TEST_OP_MD_CHECK_REFS reads back to find missing or leaked pins.
//
// A `Pages` object holds at most one pin on a page, however many areas, domains and accesses
// use it (one storage pin, as iopt_pages does): the count of a physical page is the number of
// Pages objects, across every context of the host, that have it pinned. Two IOAS_MAPs of the
// same buffer pin it twice; an IOAS_COPY shares the Pages and adds nothing.
//
// Counting costs a lock and a span update per pinned or unpinned run, so it is off unless the
// front end turns it on (the selftest ops do, when the first file that serves them opens).
// A Pages object decides once, when it is created, whether it counts, so enabling the counter
// part-way never meets an unpin of a pin it did not see.

public import UIOMMUBase

/// Pin counts per 4 KiB physical page, host-wide (`PinLedger.physicalPins`).
public final class PhysicalPinCounter: @unchecked Sendable {
    private let lock = Lock()
    /// Indexed by physical page frame (physical address / 4 KiB).
    private var counts = SpanCounter()
    private var tracking = false

    public init() {}

    /// Whether Pages objects created from now on count their pins.
    public var isTracking: Bool { lock.withLock { tracking } }

    /// Starts counting (idempotent). Pins made by Pages objects created before stay uncounted.
    public func startTracking() { lock.withLock { tracking = true } }

    /// Number of pins on the page containing `physical`.
    public func pins(physical: UInt64) -> Int {
        lock.withLock { Int(counts.count(at: physical / hostPageSize)) }
    }

    /// Pages of `[physical, physical + length)` whose pin count differs from `expected`, as
    /// (physical address of the page, count), at most `limit` of them.
    public func mismatches(physical: UInt64, length: UInt64, expected: Int, limit: Int = 8) -> [(UInt64, Int)] {
        guard length > 0 else { return [] }
        let first = physical / hostPageSize
        let last = (physical + (length - 1)) / hostPageSize
        var out: [(UInt64, Int)] = []
        lock.withLock {
            counts.forEach(first, last) { a, _, c in
                if Int(c) != expected && out.count < limit { out.append((a * hostPageSize, Int(c))) }
            }
        }
        return out
    }

    /// Adds `delta` (+1 or -1) to every page of the runs.
    func add(_ runs: [PinnedRun], _ delta: Int32) {
        guard !runs.isEmpty else { return }
        lock.withLock {
            for r in runs where r.pageCount > 0 {
                let first = r.physical / hostPageSize
                counts.add(first, first + r.pageCount - 1, delta)
            }
        }
    }
}
