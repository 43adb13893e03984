public import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// The physical address space of a server process that pins and DMAs into *other* processes'
/// memory (`uiommufd serve`): the `physicalMemory` of the server's Platform.
///
/// Physical addresses must be unique across every client and the server itself, because the
/// page tables, the IOTLB and the pin registry are keyed by them. The space is cut in two:
///
///  - below 2^47 (`remoteWindowStart`): the server's own host addresses — FileMemory mappings,
///    simulated buffers, anything the server itself can dereference. Read and written by
///    pointer, exactly as LocalProcessMemory does (x86-64 user space ends at 2^47, so no server
///    address can reach the window);
///  - `[2^47, 2^48)`: the remote window. It is handed out in 1 GiB blocks, each belonging to one
///    client address space (a `RemoteProcessMemory`) and standing for one 1 GiB-aligned slice
///    of that client's VA. A block is allocated the first time a page in its slice is resolved
///    and keeps its place until the address space goes away, so one client VA always resolves
///    to the same physical address (the pin registry counts pins per physical page; the
///    selftest checks refcounts by VA), and contiguity inside a GiB slice is kept (2 MiB leaves
///    still form over huge-page mappings).
///
/// Clients' MAP_SHARED pages are the exception to the window: they are one object's pages, not a
/// client's own, so the server maps the object and they live below 2^47 like any server memory
/// (see SharedObjectMappings.swift).
///
/// Anything else is not memory: EFAULT, as a DMA to an unbacked bus address would abort.
///
/// Thread-safe. An access costs one uncontended mutex to index the block table (an array, not
/// a search), then the block's own path: a pointer copy for preserved pages, a
/// process_vm_readv/writev for live ones.
public final class HostPhysicalMemory: PhysicalMemory, @unchecked Sendable {
    /// First physical address of the remote window (the end of x86-64 user space).
    public static let remoteWindowStart: UInt64 = 1 << 47
    /// One past the last physical address of the remote window.
    public static let remoteWindowEnd: UInt64 = 1 << 48
    /// The unit the window is handed out in; a remote VA keeps its offset inside one.
    public static let remoteBlockSize: UInt64 = 1 << 30

    /// Guards `blocks` and `freeBlockIndexes`. Never held across a system call.
    private let tableLock = Lock()
    /// `blocks[i]` owns physical `[remoteWindowStart + i GiB, + 1 GiB)`; nil when free. Grows on
    /// demand, so a server with few clients keeps a short table.
    private var blocks: [RemoteBlock?] = []
    /// Indexes freed by address spaces that went away, reused last-freed first.
    private var freeBlockIndexes: [Int] = []
    private let blockLimit: Int
    /// The server's own mappings of clients' shared memory objects (below the window).
    let sharedObjects = SharedObjectRegistry()

    /// `remoteBlockLimit` caps the window (at most its 2^17 blocks); tests lower it to reach
    /// exhaustion without reserving 128 TiB of addresses.
    public init(remoteBlockLimit: Int = Int((remoteWindowEnd - remoteWindowStart) / remoteBlockSize)) {
        let windowBlocks = Int((Self.remoteWindowEnd - Self.remoteWindowStart) / Self.remoteBlockSize)
        blockLimit = max(0, min(remoteBlockLimit, windowBlocks))
    }

    /// How many remote blocks are in use (for statistics and tests).
    public var remoteBlockCount: Int {
        tableLock.withLock { blocks.count - freeBlockIndexes.count }
    }

    public func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        if physical < Self.remoteWindowStart {
            let source = try localPointer(physical, count)
            destination.copyMemory(from: source, byteCount: count)
            return
        }
        try forEachRemotePiece(physical: physical, count: count, onlyFor: nil) { (block, offset, done, n) throws(IOMMUError) in
            try block.read(offset: offset, into: destination + done, count: n)
        }
    }

    public func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        if physical < Self.remoteWindowStart {
            let target = try localPointer(physical, count)
            // Clients' shared objects the server could only map read-only would fault it.
            try sharedObjects.checkWritable(physical, count)
            target.copyMemory(from: source, byteCount: count)
            return
        }
        try forEachRemotePiece(physical: physical, count: count, onlyFor: nil) { (block, offset, done, n) throws(IOMMUError) in
            try block.write(offset: offset, from: source + done, count: n)
        }
    }

    /// A server host address, as LocalProcessMemory trusts it: the engine only hands us
    /// addresses that came out of a resolve. The range must stay below the window.
    private func localPointer(_ physical: UInt64, _ count: Int) throws(IOMMUError) -> UnsafeMutableRawPointer {
        guard count >= 0, UInt64(count) <= Self.remoteWindowStart - physical,
              let p = UnsafeMutableRawPointer(bitPattern: UInt(physical)) else {
            throw IOMMUError(.EFAULT, "no memory at physical 0x\(String(physical, radix: 16))")
        }
        return p
    }

    // MARK: The remote window

    /// Splits `[physical, physical + count)` at block boundaries and calls `body(block,
    /// offsetInBlock, bytesDone, pieceLength)` for each piece; EFAULT at the first piece outside
    /// the window, in a free block, or (when `onlyFor` is given) in another address space's
    /// block. Pieces before a fault have been transferred, as on a bus.
    func forEachRemotePiece(physical: UInt64, count: Int, onlyFor space: RemoteAddressSpace?,
                            _ body: (RemoteBlock, UInt64, Int, Int) throws(IOMMUError) -> Void) throws(IOMMUError) {
        guard count >= 0 else { throw IOMMUError(.EFAULT, "negative length") }
        var done = 0
        while done < count {
            // `physical + done` cannot overflow: the check below keeps every piece in the window.
            let address = physical + UInt64(done)
            guard address >= Self.remoteWindowStart, address < Self.remoteWindowEnd else {
                throw IOMMUError(.EFAULT, "no memory at physical 0x\(String(address, radix: 16))")
            }
            let windowOffset = address - Self.remoteWindowStart
            let index = Int(windowOffset / Self.remoteBlockSize)
            let offset = windowOffset % Self.remoteBlockSize
            let n = Int(min(UInt64(count - done), Self.remoteBlockSize - offset))
            let block = tableLock.withLock { index < blocks.count ? blocks[index] : nil }
            guard let block, space == nil || block.space === space else {
                throw IOMMUError(.EFAULT, "no memory at physical 0x\(String(address, radix: 16))")
            }
            try body(block, offset, done, n)
            done += n
        }
    }

    /// A new block standing for the GiB of `space`'s VA that starts at `vaBase`; ENOMEM when
    /// the window is full.
    func allocateBlock(for space: RemoteAddressSpace, vaBase: UInt64) throws(IOMMUError) -> RemoteBlock {
        try tableLock.withLock { () throws(IOMMUError) -> RemoteBlock in
            let index: Int
            if let reused = freeBlockIndexes.popLast() {
                index = reused
            } else {
                guard blocks.count < blockLimit else {
                    throw IOMMUError(.ENOMEM, "the remote physical window is full")
                }
                index = blocks.count
                blocks.append(nil)
            }
            let physicalBase = Self.remoteWindowStart + UInt64(index) * Self.remoteBlockSize
            let block = RemoteBlock(space: space, vaBase: vaBase, physicalBase: physicalBase, index: index)
            blocks[index] = block
            return block
        }
    }

    /// Returns blocks to the window. An access already past the table lookup keeps its block
    /// (and the preserved copy in it) alive until it finishes.
    func freeBlocks(_ freed: [RemoteBlock]) {
        tableLock.withLock {
            for block in freed where block.index < blocks.count && blocks[block.index] === block {
                blocks[block.index] = nil
                freeBlockIndexes.append(block.index)
            }
        }
    }
}

/// One GiB of the remote window: a 1 GiB-aligned slice of one client's VA, and, once the client
/// has been preserved, the server-owned copy of the slice's resolved pages.
final class RemoteBlock: @unchecked Sendable {
    let space: RemoteAddressSpace
    /// Client VA of the block's first byte (1 GiB aligned).
    let vaBase: UInt64
    /// Physical address of the block's first byte.
    let physicalBase: UInt64
    let index: Int
    /// The preserved pages: a 1 GiB MAP_NORESERVE reservation, of which only resolved pages are
    /// ever written (so only they take memory). Set only under `space.accessLock` held for
    /// writing, read under it held for reading; nil while the client's own pages are the
    /// memory.
    private(set) var preservedCopy: UnsafeMutableRawPointer?

    init(space: RemoteAddressSpace, vaBase: UInt64, physicalBase: UInt64, index: Int) {
        self.space = space; self.vaBase = vaBase; self.physicalBase = physicalBase; self.index = index
    }

    deinit { dropPreservedCopy() }

    /// The block's copy, reserved on first use. Caller holds `space.accessLock` for writing.
    func reservePreservedCopy() throws(IOMMUError) -> UnsafeMutableRawPointer {
        if let preservedCopy { return preservedCopy }
        let p = mmap(nil, Int(HostPhysicalMemory.remoteBlockSize), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw IOMMUError(.ENOMEM, "cannot reserve memory to preserve pinned pages")
        }
        preservedCopy = p
        return p
    }

    /// Caller holds `space.accessLock` for writing (or is the last owner, in deinit).
    func dropPreservedCopy() {
        if let preservedCopy { munmap(preservedCopy, Int(HostPhysicalMemory.remoteBlockSize)) }
        preservedCopy = nil
    }

    func read(offset: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        try space.accessLock.withReadLock { () throws(IOMMUError) in
            if let preservedCopy {
                destination.copyMemory(from: preservedCopy + Int(offset), byteCount: count)
            } else {
                try space.process.read(va: vaBase + offset, into: destination, count: count)
            }
        }
    }

    func write(offset: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        try space.accessLock.withReadLock { () throws(IOMMUError) in
            if let preservedCopy {
                (preservedCopy + Int(offset)).copyMemory(from: source, byteCount: count)
                // The client may still be running its exit path: let it see the DMA as it
                // would see a write to its pinned page. Best effort — the copy is the memory now.
                if space.process.isAlive {
                    try? space.process.write(va: vaBase + offset, from: source, count: count)
                }
            } else {
                try space.process.write(va: vaBase + offset, from: source, count: count)
            }
        }
    }
}
