public import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// The address space of another process, for a server that pins and DMAs into its clients'
/// memory (`uiommufd serve`). Offsets are the client's user VAs.
///
/// - Pinning validates against `/proc/<pid>/maps` exactly as LocalProcessMemory does with
///   `/proc/self/maps` (EFAULT for unmapped, unreadable, or — when asked — read-only memory),
///   and returns runs in the server's remote physical window (see HostPhysicalMemory): the same
///   VA always gives the same physical address while this object lives.
/// - DMA by physical address reads and writes the client's own pages with process_vm_readv /
///   process_vm_writev, so a device write lands in the client's memory and the client sees it,
///   as it would see a DMA into a pinned page.
/// - The process is held by a pidfd opened at init. Every use of the pid is checked against it
///   (before a write, after a read), so once the client has exited nothing is read from or
///   written to a process that later got the same pid.
/// - Shared memory (MAP_SHARED mappings of a file object: shmem, SysV shm, memfd, tmpfs and
///   hugetlbfs files) is not the client's alone: the server maps the object itself (through
///   `/proc/<pid>/map_files`) and hands out its own host addresses of those pages, the same
///   ones for every client mapping the same object (see SharedObjectMappings.swift). Other
///   processes' writes to the object are seen, and the pages outlive the client because the
///   server's mapping holds the object. If the object cannot be opened or mapped, the pages
///   take the private path below.
/// - Private pages outlive the process on Linux too. Here the client must ask first:
///   `preservePinnedPages()` (the server calls it when the client says it is exiting, before
///   its mm disappears) copies every private range ever resolved into server memory; from then
///   on that copy is the memory behind those physical addresses, and those ranges still
///   resolve after the process is gone. Everything else fails with EFAULT once the process has
///   exited (shared pages already pinned stay usable; new pins need the mm, as in the kernel).
///
/// Who holds this object decides how long the physical addresses live: the engine's Pages
/// hold their PinnableMemory, so when the last reference goes (deinit) no page table can still
/// point into it, and its blocks — with any preserved copy — go back to the window.
public final class RemoteProcessMemory: PinnableMemory, @unchecked Sendable {
    public let owner: MemoryOwner
    /// The physical space this client's pages live in (the server's Platform memory).
    public let physicalMemory: HostPhysicalMemory
    let space: RemoteAddressSpace

    /// Opens process `pid` (pidfd_open) so a later process with the same pid cannot be reached
    /// through this object. `uid` is the client's user (the server takes it from SO_PEERCRED):
    /// pinned pages are charged to it. ESRCH if there is no such process; EPERM/EACCES etc. as
    /// pidfd_open reports them.
    public convenience init(pid: Int32, uid: UInt32, physicalMemory: HostPhysicalMemory) throws(IOMMUError) {
        guard pid > 0 else { throw IOMMUError(.ESRCH, "no process \(pid)") }
        let pidfd = RemoteProcess.openPidfd(pid)
        guard pidfd >= 0 else {
            throw IOMMUError(LinuxErrno(rawValue: pidfd == -1 ? errno : ENOSYS), "pidfd_open(\(pid))")
        }
        self.init(pid: pid, uid: uid, pidfd: pidfd, physicalMemory: physicalMemory)
    }

    /// Takes ownership of `pidfd`, which must refer to process `pid` — except in the pid-reuse
    /// test, which pairs a dead process's pidfd with a live pid.
    init(pid: Int32, uid: UInt32, pidfd: Int32, physicalMemory: HostPhysicalMemory) {
        owner = MemoryOwner(pid: pid, uid: uid)
        self.physicalMemory = physicalMemory
        space = RemoteAddressSpace(process: RemoteProcess(pid: pid, pidfd: pidfd))
    }

    deinit {
        // Nothing references us, so no Pages (and no page table filled from them) does: the
        // window's blocks can be reused. Clearing the space's block list also breaks the
        // block → space → block cycle. The same reasoning lets the shared objects go.
        physicalMemory.freeBlocks(space.releaseBlocks())
        physicalMemory.sharedObjects.release(space.releaseSharedObjects())
    }

    /// Whether the process still runs (not exited; a zombie counts as exited).
    public var isAlive: Bool { space.process.isAlive }

    /// Whether `preservePinnedPages()` has succeeded.
    public var isPreserved: Bool { space.isPreserved }

    public func resolve(offset va: UInt64, length: UInt64, writable: Bool,
                        _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError) {
        let (end, overflow) = va.addingReportingOverflow(length)
        guard !overflow else { throw IOMMUError(.EFAULT, "user range wraps") }
        guard length > 0 else { return }
        // Pages preserved for an exiting client are pinned: they resolve as before, whether or
        // not the process is still there.
        if let runs = space.preservedRuns(from: va, to: end, writable: writable) {
            for run in runs { try body(run) }
            return
        }
        let process = space.process
        guard process.isAlive else {
            throw IOMMUError(.EFAULT, "process \(process.pid) has exited")
        }
        let vmas = try LocalProcessMemory.readMaps(path: process.mapsPath, from: va, to: end)
        // Validates the whole range first (EFAULT before any effect).
        let userRuns = try LocalProcessMemory.accessibleRuns(vmas, from: va, to: end, writable: writable)
        // The maps we read were this process's only if it had not exited by now: after exit
        // the pid may already name another process.
        guard process.isAlive else {
            throw IOMMUError(.EFAULT, "process \(process.pid) has exited")
        }
        // Shared mappings resolve to the server's mappings of their objects, where that works.
        var sharedPieces: [(from: UInt64, to: UInt64, runs: [PhysicalRun])] = []
        for vma in vmas where vma.shared && vma.inode != 0 {
            let from = max(va, vma.start), to = min(end, vma.end)
            guard from < to else { continue }
            if let runs = try space.sharedRuns(vma, from: from, to: to, writable: writable, in: physicalMemory) {
                sharedPieces.append((from, to, runs))
            }
        }
        guard !sharedPieces.isEmpty else {
            let runs = try space.commit(userRuns, from: va, to: end, writable: writable, in: physicalMemory)
            for run in runs { try body(run) }
            return
        }
        // Everything between the shared pieces is the process's own memory, in the window.
        func privateRuns(from: UInt64, to: UInt64) throws(IOMMUError) -> [PhysicalRun] {
            let userRuns = try LocalProcessMemory.accessibleRuns(vmas, from: from, to: to, writable: writable)
            return try space.commit(userRuns, from: from, to: to, writable: writable, in: physicalMemory)
        }
        var runs: [PhysicalRun] = []
        var cursor = va
        for piece in sharedPieces {
            if cursor < piece.from { runs += try privateRuns(from: cursor, to: piece.from) }
            runs += piece.runs
            cursor = piece.to
        }
        if cursor < end { runs += try privateRuns(from: cursor, to: end) }
        for run in runs { try body(run) }
    }

    /// Copies every range that was ever resolved into server-owned memory, so the physical
    /// addresses handed out keep their contents (and stay readable and writable by DMA) after
    /// the process exits. Call it while the process is still alive — when the client announces
    /// its exit. Ranges resolved afterwards are copied as they are resolved. Returns the number
    /// of bytes copied by this call. EFAULT if the process has already gone (nothing to copy
    /// from); pages the client unmapped since they were pinned are preserved as zeros.
    @discardableResult
    public func preservePinnedPages() throws(IOMMUError) -> UInt64 {
        try space.preserve(in: physicalMemory)
    }

    public func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        if physical < HostPhysicalMemory.remoteWindowStart {
            // Below the window: only shared pages this space resolved are its memory.
            let source = try space.sharedPointer(physical, count, write: false)
            destination.copyMemory(from: source, byteCount: count)
            return
        }
        try physicalMemory.forEachRemotePiece(physical: physical, count: count, onlyFor: space) { (block, offset, done, n) throws(IOMMUError) in
            try block.read(offset: offset, into: destination + done, count: n)
        }
    }

    public func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        if physical < HostPhysicalMemory.remoteWindowStart {
            let target = try space.sharedPointer(physical, count, write: true)
            target.copyMemory(from: source, byteCount: count)
            return
        }
        try physicalMemory.forEachRemotePiece(physical: physical, count: count, onlyFor: space) { (block, offset, done, n) throws(IOMMUError) in
            try block.write(offset: offset, from: source + done, count: n)
        }
    }
}

// MARK: - The address space's state

/// What a RemoteProcessMemory and its blocks share. Blocks hold it strongly (an access in
/// flight keeps it alive); it holds its blocks until `releaseBlocks()`.
final class RemoteAddressSpace: @unchecked Sendable {
    let process: RemoteProcess

    /// Held for reading by every DMA access, for writing while pages are copied into the
    /// preserved copies, so no DMA write can slip between the copy and the switch to it.
    /// Lock order: accessLock, then stateLock, then the window's table lock.
    let accessLock = ReadWriteLock()
    private let stateLock = Lock()

    // Under stateLock:
    /// The window block standing for each GiB of VA (keyed by va >> 30).
    private var blocksByVAGiB: [UInt64: RemoteBlock] = [:]
    /// Every VA range ever resolved, and those resolved writable.
    private var resolved = AddressRangeSet()
    private var resolvedWritable = AddressRangeSet()
    /// Set once preserve has copied `resolved`; from then on every newly resolved range is
    /// copied before it is handed out, so the copies always cover `resolved`.
    private var preserved = false

    init(process: RemoteProcess) { self.process = process }

    var isPreserved: Bool { stateLock.withLock { preserved } }

    /// The physical runs for `[va, end)` if it lies wholly in preserved memory (writable only
    /// if it was resolved writable), else nil. Page size is reported as 4 KiB: the original
    /// page sizes are not kept, and smaller leaves are always safe.
    func preservedRuns(from va: UInt64, to end: UInt64, writable: Bool) -> [PhysicalRun]? {
        stateLock.withLock { () -> [PhysicalRun]? in
            guard preserved, (writable ? resolvedWritable : resolved).contains(from: va, to: end) else { return nil }
            var runs: [PhysicalRun] = []
            var cursor = va
            while cursor < end {
                // Resolved ranges always have their blocks.
                guard let block = blocksByVAGiB[cursor >> 30] else { return nil }
                let blockEnd = block.vaBase &+ HostPhysicalMemory.remoteBlockSize
                let pieceEnd = blockEnd == 0 || blockEnd > end ? end : blockEnd
                runs.append(PhysicalRun(physical: block.physicalBase + (cursor - block.vaBase),
                                        length: pieceEnd - cursor, backingPageSize: 4096))
                cursor = pieceEnd
            }
            return runs
        }
    }

    /// Records a successful resolve of `[va, end)` (whose accessible runs, in user VA, are
    /// `userRuns`) and returns its runs in physical addresses, split at GiB boundaries. If the
    /// space is preserved, the new range is copied first.
    func commit(_ userRuns: [PhysicalRun], from va: UInt64, to end: UInt64, writable: Bool,
                in window: HostPhysicalMemory) throws(IOMMUError) -> [PhysicalRun] {
        let fastPath = try stateLock.withLock { () throws(IOMMUError) -> [PhysicalRun]? in
            // Preserving needs the access lock, which ranks above this one: take the slow path.
            guard !preserved else { return nil }
            let runs = try physicalRuns(userRuns, in: window)
            record(from: va, to: end, writable: writable)
            return runs
        }
        if let fastPath { return fastPath }
        return try accessLock.withWriteLock { () throws(IOMMUError) -> [PhysicalRun] in
            try stateLock.withLock { () throws(IOMMUError) -> [PhysicalRun] in
                let runs = try physicalRuns(userRuns, in: window)
                // Every page of the new range gets its copy before the range counts as
                // resolved, so `resolved` never names a page the copies lack. (Re-copying an
                // already preserved part would overwrite DMA writes made to the copy: skip it.)
                _ = try copyToPreserved(resolved.gaps(from: va, to: end))
                // The copy came from this process only if it had not exited by now.
                guard process.isAlive else { throw IOMMUError(.EFAULT, "process \(process.pid) has exited") }
                record(from: va, to: end, writable: writable)
                return runs
            }
        }
    }

    /// Under stateLock.
    private func record(from va: UInt64, to end: UInt64, writable: Bool) {
        resolved.insert(from: va, to: end)
        if writable { resolvedWritable.insert(from: va, to: end) }
    }

    /// `userRuns` (user VAs) in the window's physical addresses, split at GiB boundaries,
    /// allocating blocks as needed. Under stateLock.
    private func physicalRuns(_ userRuns: [PhysicalRun], in window: HostPhysicalMemory) throws(IOMMUError) -> [PhysicalRun] {
        var runs: [PhysicalRun] = []
        for userRun in userRuns {
            var cursor = userRun.physical            // a user VA in accessibleRuns' output
            let runEnd = userRun.physical + userRun.length
            while cursor < runEnd {
                let block = try block(forVA: cursor, in: window)
                let blockEnd = block.vaBase &+ HostPhysicalMemory.remoteBlockSize
                let pieceEnd = blockEnd == 0 || blockEnd > runEnd ? runEnd : blockEnd
                runs.append(PhysicalRun(physical: block.physicalBase + (cursor - block.vaBase),
                                        length: pieceEnd - cursor,
                                        backingPageSize: min(userRun.backingPageSize, HostPhysicalMemory.remoteBlockSize)))
                cursor = pieceEnd
            }
        }
        return runs
    }

    /// Under stateLock.
    private func block(forVA va: UInt64, in window: HostPhysicalMemory) throws(IOMMUError) -> RemoteBlock {
        let key = va >> 30
        if let block = blocksByVAGiB[key] { return block }
        let block = try window.allocateBlock(for: self, vaBase: key << 30)
        blocksByVAGiB[key] = block
        return block
    }

    func preserve(in window: HostPhysicalMemory) throws(IOMMUError) -> UInt64 {
        try accessLock.withWriteLock { () throws(IOMMUError) -> UInt64 in
            try stateLock.withLock { () throws(IOMMUError) -> UInt64 in
                if preserved { return 0 }
                guard process.isAlive else {
                    throw IOMMUError(.EFAULT, "process \(process.pid) has exited; its pages are gone")
                }
                let copied: UInt64
                do throws(IOMMUError) {
                    copied = try copyToPreserved(resolved.ranges)
                } catch {
                    for block in blocksByVAGiB.values { block.dropPreservedCopy() }
                    throw error
                }
                // Only if the process was still alive after the copy did the bytes come from it.
                guard process.isAlive else {
                    for block in blocksByVAGiB.values { block.dropPreservedCopy() }
                    throw IOMMUError(.EFAULT, "process \(process.pid) exited while being preserved")
                }
                preserved = true
                return copied
            }
        }
    }

    /// Copies `ranges` (user VAs, already resolved, so their blocks exist) from the process
    /// into the blocks' preserved copies. Caller holds accessLock for writing and stateLock.
    private func copyToPreserved(_ ranges: [(start: UInt64, end: UInt64)]) throws(IOMMUError) -> UInt64 {
        var copied: UInt64 = 0
        for range in ranges {
            var cursor = range.start
            while cursor < range.end {
                guard let block = blocksByVAGiB[cursor >> 30] else {
                    throw IOMMUError(.EFAULT, "no block for resolved address 0x\(String(cursor, radix: 16))")
                }
                let blockEnd = block.vaBase &+ HostPhysicalMemory.remoteBlockSize
                let pieceEnd = blockEnd == 0 || blockEnd > range.end ? range.end : blockEnd
                let copy = try block.reservePreservedCopy()
                copied += process.copyOut(va: cursor, into: copy + Int(cursor - block.vaBase),
                                          count: Int(pieceEnd - cursor))
                cursor = pieceEnd
            }
        }
        return copied
    }

    /// Forgets every block (the owner is going away) and returns them for the window to free.
    func releaseBlocks() -> [RemoteBlock] {
        stateLock.withLock {
            let blocks = Array(blocksByVAGiB.values)
            blocksByVAGiB.removeAll()
            return blocks
        }
    }

    // MARK: Shared memory

    /// Guards the shared-memory state below. Taken before an object's lock and the registry's.
    private let sharedLock = Lock()
    /// The shared objects this space resolved through, one registry user each.
    private var heldObjects: [SharedObjectKey: SharedObject] = [:]
    /// Server addresses of the shared pages this space resolved (all, and those in writable
    /// server mappings): what its own read and write may touch below the window.
    private var sharedReadable = AddressRangeSet()
    private var sharedWritable = AddressRangeSet()

    /// The physical runs of `[from, to)`, which lies in shared file mapping `vma`: the server's
    /// mappings of the same object. Nil if the object cannot be reached that way (map_files
    /// refused, the mapping changed since maps was read, not a regular file, or mapping it
    /// failed): the caller then takes the private path. EFAULT for pages that cannot be pinned
    /// (past the end of the file) or if the process has exited.
    func sharedRuns(_ vma: LocalProcessMemory.VMA, from: UInt64, to: UInt64, writable: Bool,
                    in window: HostPhysicalMemory) throws(IOMMUError) -> [PhysicalRun]? {
        guard vma.start <= from, from < to, to <= vma.end else { return nil }
        var fdWritable = false
        let fd = process.openMappedFile(start: vma.start, end: vma.end, writable: &fdWritable)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        // The file must be the one maps named (the client may have remapped the range since),
        // and an ordinary file: device mappings are not pages we could pin.
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG,
              UInt64(st.st_dev) == vma.device, UInt64(st.st_ino) == vma.inode else { return nil }
        // The descriptor came from this process only if it had not exited by now.
        guard process.isAlive else { throw IOMMUError(.EFAULT, "process \(process.pid) has exited") }
        let (offset, overflow1) = vma.fileOffset.addingReportingOverflow(from - vma.start)
        let (fileEnd, overflow2) = offset.addingReportingOverflow(to - from)
        guard !overflow1, !overflow2 else { throw IOMMUError(.EFAULT, "file offset overflows") }

        let key = SharedObjectKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        let pageSize = Self.pageSize(of: fd, st)
        let object = sharedLock.withLock { () -> SharedObject in
            if let held = heldObjects[key] { return held }
            let acquired = window.sharedObjects.acquire(key, pageSize: pageSize)
            heldObjects[key] = acquired
            return acquired
        }
        guard let pieces = try window.sharedObjects.mappings(
            of: object, fd: fd, fdWritable: fdWritable, fileSize: UInt64(max(0, st.st_size)),
            offset: offset, end: fileEnd, writable: writable) else { return nil }
        return sharedLock.withLock { () -> [PhysicalRun] in
            var runs: [PhysicalRun] = []
            for piece in pieces {
                let length = piece.fileEnd - piece.fileStart
                sharedReadable.insert(from: piece.base, to: piece.base + length)
                if piece.writable { sharedWritable.insert(from: piece.base, to: piece.base + length) }
                runs.append(PhysicalRun(physical: piece.base, length: length, backingPageSize: piece.pageSize))
            }
            return runs
        }
    }

    /// A hugetlbfs object's pages are its huge pages (st_blksize); anything else is in 4 KiB
    /// pages.
    private static func pageSize(of fd: Int32, _ st: stat) -> UInt64 {
        let hugetlbfsMagic = 0x9584_58f6
        // struct statfs is 120 bytes on 64-bit Linux and starts with f_type (a long); the
        // buffer leaves room to spare.
        var fs = [Int](repeating: 0, count: 64)
        guard let fstatfs = SystemCalls.fstatfs,
              fs.withUnsafeMutableBytes({ fstatfs(fd, $0.baseAddress) }) == 0,
              fs[0] == hugetlbfsMagic else { return 4096 }
        let size = UInt64(max(0, st.st_blksize))
        // Only a sane power of two (up to 1 GiB) can align anything.
        guard size >= 4096, size <= 1 << 30, size & (size - 1) == 0 else { return 4096 }
        return size
    }

    /// The server pointer for `[physical, physical + count)` if it lies in shared pages this
    /// space resolved (in a writable mapping, for a write); EFAULT otherwise.
    func sharedPointer(_ physical: UInt64, _ count: Int, write: Bool) throws(IOMMUError) -> UnsafeMutableRawPointer {
        let (end, overflow) = physical.addingReportingOverflow(UInt64(max(0, count)))
        let ok = count >= 0 && !overflow && sharedLock.withLock {
            (write ? sharedWritable : sharedReadable).contains(from: physical, to: end)
        }
        guard ok, let p = UnsafeMutableRawPointer(bitPattern: UInt(physical)) else {
            throw IOMMUError(.EFAULT, "no memory at physical 0x\(String(physical, radix: 16))")
        }
        return p
    }

    /// Gives up the shared objects (the owner is going away), for the registry to release.
    func releaseSharedObjects() -> [SharedObject] {
        sharedLock.withLock {
            let objects = Array(heldObjects.values)
            heldObjects.removeAll()
            sharedReadable = AddressRangeSet()
            sharedWritable = AddressRangeSet()
            return objects
        }
    }
}

// MARK: - The process

/// A client process reached by pid, guarded by a pidfd: a pidfd polls readable once the
/// process has exited, and a pid cannot be reused before then (an exited process stays a
/// zombie until reaped). So a pid use is safe if the process is alive *after* a read (the bytes
/// came from it) or *before* a write (the only window left is the write syscall itself racing
/// an exit, a reap and a full pid wrap-around).
final class RemoteProcess: @unchecked Sendable {
    let pid: Int32
    private let pidfd: Int32
    let mapsPath: String

    init(pid: Int32, pidfd: Int32) {
        self.pid = pid
        self.pidfd = pidfd
        mapsPath = "/proc/\(pid)/maps"
    }

    deinit { close(pidfd) }

    var isAlive: Bool {
        var entry = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        while true {
            let n = poll(&entry, 1, 0)
            if n == 0 { return true }
            if n < 0 && errno == EINTR { continue }
            // Readable (exited), or the pidfd is unusable: either way, do not trust the pid.
            return false
        }
    }

    /// Opens the file mapped at exactly `[start, end)` in the process, through
    /// `/proc/<pid>/map_files` (which needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), for
    /// reading and writing if allowed (`writable` says which), else read-only. -1 if it cannot
    /// be opened. The caller checks `isAlive` afterwards: only then is the file this process's.
    func openMappedFile(start: UInt64, end: UInt64, writable: inout Bool) -> Int32 {
        // The names are "%lx-%lx": lower-case hex without leading zeros, which the kernel insists on.
        let path = "/proc/\(pid)/map_files/\(String(start, radix: 16))-\(String(end, radix: 16))"
        var fd = open(path, O_RDWR | O_CLOEXEC)
        writable = fd >= 0
        if fd < 0 { fd = open(path, O_RDONLY | O_CLOEXEC) }
        return fd
    }

    /// pidfd_open(2) by number: the Swift Glibc module exports neither it nor a callable
    /// syscall(2) (variadic), so syscall is looked up and called with a fixed arity.
    static func openPidfd(_ pid: Int32) -> Int32 {
        guard let syscall = SystemCalls.syscall3 else { return -2 }
        return Int32(truncatingIfNeeded: syscall(SystemCalls.pidfdOpen, Int(pid), 0, 0))
    }

    func read(va: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        guard transfer(va: va, local: destination, count: count, write: false) == count, isAlive else {
            throw IOMMUError(.EFAULT, "cannot read process \(pid) at 0x\(String(va, radix: 16))")
        }
    }

    func write(va: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        guard isAlive, transfer(va: va, local: UnsafeMutableRawPointer(mutating: source), count: count, write: true) == count else {
            throw IOMMUError(.EFAULT, "cannot write process \(pid) at 0x\(String(va, radix: 16))")
        }
    }

    /// Copies as much of `[va, va + count)` as is readable into `destination`, page by page
    /// past holes (left untouched: zeros in a fresh reservation). Returns the bytes copied.
    func copyOut(va: UInt64, into destination: UnsafeMutableRawPointer, count: Int) -> UInt64 {
        var copied: UInt64 = 0
        var done = 0
        while done < count {
            let cursor = va + UInt64(done)
            let n = transfer(va: cursor, local: destination + done, count: count - done, write: false)
            copied += UInt64(n)
            done += n
            if done < count {
                // A dead process has nothing more to give (the caller notices and throws).
                guard isAlive else { break }
                // The page at `done` failed: skip to the next page and go on.
                let nextPage = (cursor + UInt64(n)) / 4096 * 4096 + 4096
                done = Int(min(UInt64(count), nextPage - va))
            }
        }
        return copied
    }

    /// One process_vm_readv/writev, resumed after partial transfers; returns the bytes moved
    /// before the first failure.
    private func transfer(va: UInt64, local: UnsafeMutableRawPointer, count: Int, write: Bool) -> Int {
        guard let call = write ? SystemCalls.processVMWritev : SystemCalls.processVMReadv else { return 0 }
        var done = 0
        while done < count {
            var localIO = iovec(iov_base: local + done, iov_len: count - done)
            var remoteIO = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(va + UInt64(done))),
                                 iov_len: count - done)
            let n = call(pid, &localIO, 1, &remoteIO, 1, 0)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }          // ESRCH (gone), EFAULT (unmapped), EPERM...
            done += n
        }
        return done
    }
}

/// System calls the Swift Glibc module does not export, looked up once in libc.
enum SystemCalls {
    typealias Syscall3 = @convention(c) (Int, Int, Int, Int) -> Int
    typealias ProcessVM = @convention(c) (pid_t, UnsafePointer<iovec>?, UInt, UnsafePointer<iovec>?, UInt, UInt) -> Int

    /// pidfd_open's number, the same on every architecture (the unified syscall table).
    static let pidfdOpen = 434
    static let syscall3: Syscall3? = symbol("syscall")
    static let processVMReadv: ProcessVM? = symbol("process_vm_readv")
    static let processVMWritev: ProcessVM? = symbol("process_vm_writev")
    /// fstatfs(2), which the Glibc module does not export (nor struct statfs).
    typealias FStatFS = @convention(c) (Int32, UnsafeMutableRawPointer?) -> Int32
    static let fstatfs: FStatFS? = symbol("fstatfs")

    private static func symbol<F>(_ name: String) -> F? {
        // A nil handle is RTLD_DEFAULT on glibc: the global symbol, i.e. libc's.
        guard let address = dlsym(nil, name) else { return nil }
        return unsafeBitCast(address, to: F.self)
    }
}

// MARK: - Helpers

/// A set of byte ranges kept as sorted, disjoint, non-touching `[start, end)` pairs: memory
/// scales with the number of distinct resolved ranges, not pages.
struct AddressRangeSet {
    private(set) var ranges: [(start: UInt64, end: UInt64)] = []

    /// Index of the first range whose end is at or after `address`.
    private func firstEnding(atOrAfter address: UInt64) -> Int {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].end < address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    mutating func insert(from start: UInt64, to end: UInt64) {
        guard start < end else { return }
        let first = firstEnding(atOrAfter: start)
        var last = first
        var merged = (start: start, end: end)
        // Absorb every range that overlaps or touches the new one.
        while last < ranges.count && ranges[last].start <= end {
            merged.start = min(merged.start, ranges[last].start)
            merged.end = max(merged.end, ranges[last].end)
            last += 1
        }
        ranges.replaceSubrange(first..<last, with: [merged])
    }

    /// The parts of `[start, end)` not in the set, in order.
    func gaps(from start: UInt64, to end: UInt64) -> [(start: UInt64, end: UInt64)] {
        var out: [(start: UInt64, end: UInt64)] = []
        var cursor = start
        var i = firstEnding(atOrAfter: start)
        while cursor < end {
            guard i < ranges.count, ranges[i].start < end else {
                out.append((cursor, end))
                break
            }
            if ranges[i].start > cursor { out.append((cursor, ranges[i].start)) }
            cursor = max(cursor, ranges[i].end)
            i += 1
        }
        return out
    }

    func contains(from start: UInt64, to end: UInt64) -> Bool {
        guard start < end else { return true }
        let i = firstEnding(atOrAfter: start + 1)
        return i < ranges.count && ranges[i].start <= start && ranges[i].end >= end
    }
}

/// A pthread reader-writer lock: many DMA accesses at once, one preserve at a time.
final class ReadWriteLock: @unchecked Sendable {
    private let rwlock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        rwlock = .allocate(capacity: 1)
        rwlock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(rwlock, nil)
    }

    deinit {
        pthread_rwlock_destroy(rwlock)
        rwlock.deallocate()
    }

    func withReadLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }

    func withWriteLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(rwlock)
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }
}
