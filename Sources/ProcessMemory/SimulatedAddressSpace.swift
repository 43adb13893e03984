public import UIOMMUBase
import Synchronization

/// A simulated process address space backed by host memory: the deterministic stand-in for a
/// client process in engine tests, the demo and benchmarks.
///
/// Like a real mm it has mappings with permissions and a backing page size, can be partly
/// unmapped (which makes later pins fail with EFAULT), and can exit (the mm is gone). Like real
/// pinned pages, backing memory is never freed while the space lives, so page tables may keep
/// pointing at it after the user unmapped it.
public final class SimulatedAddressSpace: PinnableMemory, Sendable {
    public let owner: MemoryOwner

    private struct Mapping {
        var va: UInt64
        var length: UInt64
        var writable: Bool
        var physical: UInt64          // host address of the byte at `va`
        var backingPageSize: UInt64
        var end: UInt64 { va + length }
    }

    private struct Backing {
        var base: UInt64      // host address, kept as an integer so the state stays Sendable
        var length: UInt64
        var pointer: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: UInt(base))! }
    }

    private struct State {
        var mappings: [Mapping] = []  // sorted by va, non-overlapping
        var backings: [Backing] = []  // sorted by base
        var nextVA: UInt64 = 0x7f00_0000_0000
        var exited = false
    }

    private let state = Mutex(State())

    public init(owner: MemoryOwner = MemoryOwner(pid: 1000, uid: 1000)) {
        self.owner = owner
    }

    deinit {
        state.withLock { s in for b in s.backings { b.pointer.deallocate() } }
    }

    /// Maps `length` bytes (a multiple of `backingPageSize`) of zeroed memory and returns its VA,
    /// aligned to `backingPageSize`. `at` places it at a fixed VA (which must be free).
    @discardableResult
    public func map(length: UInt64, at fixedVA: UInt64? = nil, writable: Bool = true,
                    backingPageSize: UInt64 = 4096) -> UInt64 {
        precondition(length > 0 && length % backingPageSize == 0 && backingPageSize.isPowerOfTwo)
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: Int(length),
                                                       alignment: Int(min(backingPageSize, 1 << 21)))
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
        let physical = UInt64(UInt(bitPattern: pointer))
        return state.withLock { s in
            let va: UInt64
            if let fixedVA {
                precondition(fixedVA % backingPageSize == 0)
                precondition(!s.mappings.contains { fixedVA < $0.end && $0.va < fixedVA + length },
                             "fixed VA overlaps a mapping")
                va = fixedVA
            } else {
                va = s.nextVA.alignedUp(to: max(backingPageSize, 4096))!
                s.nextVA = va + length + 4096 * 16   // leave a guard gap
            }
            let m = Mapping(va: va, length: length, writable: writable, physical: physical,
                            backingPageSize: backingPageSize)
            let i = s.mappings.firstIndex { $0.va > va } ?? s.mappings.count
            s.mappings.insert(m, at: i)
            let b = Backing(base: physical, length: length)
            let j = s.backings.firstIndex { $0.base > physical } ?? s.backings.count
            s.backings.insert(b, at: j)
            return va
        }
    }

    /// Removes `[va, va + length)` from the address space (like munmap; partial is fine).
    public func unmap(va: UInt64, length: UInt64) {
        let end = va + length
        state.withLock { s in
            var out: [Mapping] = []
            for m in s.mappings {
                if m.end <= va || m.va >= end { out.append(m); continue }
                if m.va < va {
                    var head = m; head.length = va - m.va; out.append(head)
                }
                if m.end > end {
                    var tail = m
                    tail.physical = m.physical + (end - m.va)
                    tail.va = end; tail.length = m.end - end
                    out.append(tail)
                }
            }
            s.mappings = out
        }
    }

    /// The process exits: its mm is gone and every later pin fails with EFAULT.
    public func exit() { state.withLock { $0.exited = true } }

    /// A host pointer to user memory at `va`, for tests that fill or inspect buffers.
    public func pointer(va: UInt64) -> UnsafeMutableRawPointer? {
        state.withLock { s in
            guard let m = s.mappings.last(where: { $0.va <= va }), va < m.end else { return nil }
            return UnsafeMutableRawPointer(bitPattern: UInt(m.physical + (va - m.va)))
        }
    }

    public func resolve(offset va: UInt64, length: UInt64, writable: Bool,
                        _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError) {
        let runs: [PhysicalRun] = try state.withLock { (s) throws(IOMMUError) -> [PhysicalRun] in
            guard !s.exited else { throw IOMMUError(.EFAULT, "the address space is gone") }
            var runs: [PhysicalRun] = []
            var cursor = va
            let (end, overflow) = va.addingReportingOverflow(length)
            guard !overflow else { throw IOMMUError(.EFAULT, "user range wraps") }
            // First mapping that may contain `cursor`.
            var lo = 0, hi = s.mappings.count
            while lo < hi { let mid = (lo + hi) / 2; if s.mappings[mid].end <= cursor { lo = mid + 1 } else { hi = mid } }
            var i = lo
            while cursor < end {
                guard i < s.mappings.count, s.mappings[i].va <= cursor else {
                    throw IOMMUError(.EFAULT, "user address 0x\(String(cursor, radix: 16)) is not mapped")
                }
                let m = s.mappings[i]
                if writable && !m.writable {
                    throw IOMMUError(.EFAULT, "user address 0x\(String(cursor, radix: 16)) is not writable")
                }
                let n = min(end, m.end) - cursor
                runs.append(PhysicalRun(physical: m.physical + (cursor - m.va), length: n,
                                        backingPageSize: m.backingPageSize))
                cursor += n
                i += 1
            }
            return runs
        }
        for run in runs { try body(run) }
    }

    private func backing(containing physical: UInt64, count: Int) throws(IOMMUError) -> UnsafeMutableRawPointer {
        try state.withLock { (s) throws(IOMMUError) -> UnsafeMutableRawPointer in
            var lo = 0, hi = s.backings.count
            while lo < hi { let mid = (lo + hi) / 2; if s.backings[mid].base <= physical { lo = mid + 1 } else { hi = mid } }
            guard lo > 0 else { throw IOMMUError(.EFAULT, "no memory at physical 0x\(String(physical, radix: 16))") }
            let b = s.backings[lo - 1]
            guard physical - b.base + UInt64(count) <= b.length else {
                throw IOMMUError(.EFAULT, "no memory at physical 0x\(String(physical, radix: 16))")
            }
            return b.pointer + Int(physical - b.base)
        }
    }

    public func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        let p = try backing(containing: physical, count: count)
        destination.copyMemory(from: p, byteCount: count)
    }

    public func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        let p = try backing(containing: physical, count: count)
        p.copyMemory(from: source, byteCount: count)
    }
}
