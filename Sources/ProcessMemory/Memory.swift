public import UIOMMUBase

// How the engine and the simulated hardware reach memory.
//
// Two address spaces meet here:
//  - *user VA*: what a client passes to IOAS_MAP (`user_va`), valid in one process (an mm);
//  - *physical*: what page-table entries hold and what a DMA reads or writes. In uiommufd a
//    physical address is a host address the engine can copy to and from (for the calling
//    process, the user VA itself; for a simulated address space, the host buffer behind it).
//
// Pinning resolves user VA to physical runs once; after that the page tables hold physical
// addresses, exactly as a real IOMMU's tables hold PFNs.

/// A run of physical memory backing a run of user memory.
public struct PhysicalRun: Hashable, Sendable {
    /// Physical address of the run's first byte.
    public var physical: UInt64
    public var length: UInt64
    /// The backing page size: physical memory is contiguous in naturally aligned chunks of this
    /// size (4 KiB for ordinary anonymous memory, 2 MiB or 1 GiB for huge pages). Page tables
    /// never use a leaf larger than this.
    public var backingPageSize: UInt64

    public init(physical: UInt64, length: UInt64, backingPageSize: UInt64) {
        self.physical = physical
        self.length = length
        self.backingPageSize = backingPageSize
    }
}

/// Memory that DMA can read and write by physical address.
public protocol PhysicalMemory: AnyObject, Sendable {
    /// Copies `count` bytes at `physical` into `destination`; EFAULT if not backed.
    func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError)
    /// Copies `count` bytes from `source` to `physical`; EFAULT if not backed.
    func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError)
}

/// Who owns an address space, for pinned-page accounting (the kernel's mm and user).
public struct MemoryOwner: Hashable, Sendable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public init(pid: Int32, uid: UInt32) { self.pid = pid; self.uid = uid }
    public var description: String { "pid \(pid) uid \(uid)" }
}

/// Memory that can be pinned for DMA: a process's address space (offsets are user VAs) or a
/// file such as a memfd (offsets are file offsets).
public protocol PinnableMemory: PhysicalMemory {
    /// The mm and user that pinned pages are charged to.
    var owner: MemoryOwner { get }

    /// Resolves `[offset, offset + length)` for long-term pinning and calls `body` with its
    /// physical runs in order. Throws EFAULT if any page is not accessible (not mapped, or not
    /// writable when `writable`), before calling `body` at all, so a failed pin has no effects.
    /// `offset` and `length` are multiples of 4 KiB.
    func resolve(offset: UInt64, length: UInt64, writable: Bool,
                 _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError)

    /// Size in bytes for a file; nil for an address space. MAP_FILE checks ranges against it.
    var fileSize: UInt64? { get }
}

public extension PinnableMemory {
    var fileSize: UInt64? { nil }

    /// Copies from user memory at `offset` (a CPU access by the engine, e.g. iommufd_access_rw).
    func readUser(offset: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        try forEachPhysical(offset: offset, count: count, writable: false) { (pa, done, n) throws(IOMMUError) in
            try read(physical: pa, into: destination + done, count: n)
        }
    }

    /// Copies to user memory at `offset`.
    func writeUser(offset: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        try forEachPhysical(offset: offset, count: count, writable: true) { (pa, done, n) throws(IOMMUError) in
            try write(physical: pa, from: source + done, count: n)
        }
    }

    private func forEachPhysical(offset: UInt64, count: Int, writable: Bool,
                                 _ body: (UInt64, Int, Int) throws(IOMMUError) -> Void) throws(IOMMUError) {
        guard count > 0 else { return }
        let (endByte, overflow) = offset.addingReportingOverflow(UInt64(count))
        guard !overflow, let end = endByte.alignedUp(to: 4096) else {
            throw IOMMUError(.EFAULT, "user range wraps")
        }
        let start = offset.alignedDown(to: 4096)
        var skip = offset - start       // bytes of the first page before `offset`
        var done = 0
        try resolve(offset: start, length: end - start, writable: writable) { (run) throws(IOMMUError) in
            var pa = run.physical, len = run.length
            let s = min(skip, len)
            pa += s; len -= s; skip -= s
            let n = Int(min(len, UInt64(count - done)))
            if n > 0 { try body(pa, done, n) }
            done += n
        }
    }
}
