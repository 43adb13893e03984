import UIOMMUBase
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// MAP_SHARED memory of a client (shmem: MAP_SHARED|MAP_ANONYMOUS, SysV shm, memfd, tmpfs and
// hugetlbfs files, any file mapped shared) is not the client's own: it is one set of pages that
// every process mapping the object sees. Pinning it through one client must give the page that
// another process (a fork parent, say) writes — also after the pinning client has exited, which
// a copy taken at exit cannot do. So the server maps the object itself, MAP_SHARED, and a
// page's physical address is the server's host address of it (below the remote window, read
// and written by pointer like any server memory). The server mapping holds the object, so the
// pages outlive the client exactly as the kernel's pinned pages do, and nothing needs
// preserving.
//
// Physical addresses are per page of the *object*, not per client VA: the pin registry counts
// pins per physical page (the kernel counts them on the struct page), so two clients mapping
// the same object must get the same address for the same file offset. Mappings are therefore
// kept per object, keyed by (st_dev, st_ino), and per file range; a file offset is mapped once
// and keeps its server address while any address space that resolved through the object lives.

/// A file object as the kernel identifies it.
struct SharedObjectKey: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
}

/// One server MAP_SHARED mapping of `[fileStart, fileEnd)` of an object at server address `base`.
struct SharedMapping: Sendable {
    var fileStart: UInt64
    var fileEnd: UInt64
    var base: UInt64
    var writable: Bool
    /// The page size the mapping's addresses are contiguous in: the object's page size when
    /// `base` is aligned to it (the kernel aligns hugetlbfs mappings), else 4 KiB.
    var pageSize: UInt64
}

/// The server's mappings of one shared object.
final class SharedObject: @unchecked Sendable {
    let key: SharedObjectKey
    /// 4 KiB, or the huge page size of a hugetlbfs object (mappings and offsets are in whole
    /// huge pages there).
    let pageSize: UInt64
    /// Guards `mappings`; taken before the registry's lock, never after it.
    let lock = Lock()
    /// Sorted by fileStart, disjoint. Only ever grows while the object is held, so a file
    /// offset keeps its server address.
    var mappings: [SharedMapping] = []
    /// Address spaces holding the object (under the registry's lock).
    var users = 0

    init(key: SharedObjectKey, pageSize: UInt64) { self.key = key; self.pageSize = pageSize }
}

/// Every shared object some address space of one HostPhysicalMemory has resolved through,
/// reference counted by those address spaces.
final class SharedObjectRegistry: @unchecked Sendable {
    private let lock = Lock()
    private var objects: [SharedObjectKey: SharedObject] = [:]
    /// Server ranges mapped read-only (objects the server may only read), sorted by start: a
    /// write there would fault the server, so HostPhysicalMemory refuses it instead. Counted
    /// separately so that writes skip the lock while there are none (the usual case).
    private var readOnlyRanges: [(start: UInt64, end: UInt64)] = []
    private let readOnlyRangeCount = Atomic<Int>(0)

    /// The number of objects held (for tests).
    var count: Int { lock.withLock { objects.count } }

    /// The object `key`, created if nobody holds it, with one more user.
    func acquire(_ key: SharedObjectKey, pageSize: UInt64) -> SharedObject {
        lock.withLock {
            let object: SharedObject
            if let existing = objects[key] {
                object = existing
            } else {
                object = SharedObject(key: key, pageSize: pageSize)
                objects[key] = object
            }
            object.users += 1
            return object
        }
    }

    /// Drops one user of each object; an object nobody holds is unmapped. The caller
    /// guarantees no page table or access can still reach its pages (the address spaces that
    /// resolved through it are gone).
    func release(_ released: [SharedObject]) {
        var unused: [SharedObject] = []
        lock.withLock {
            for object in released {
                object.users -= 1
                if object.users <= 0, objects[object.key] === object {
                    objects[object.key] = nil
                    unused.append(object)
                }
            }
        }
        for object in unused {
            let mappings = object.lock.withLock { () -> [SharedMapping] in
                defer { object.mappings = [] }
                return object.mappings
            }
            for mapping in mappings {
                if !mapping.writable { forgetReadOnly(mapping.base) }
                munmap(UnsafeMutableRawPointer(bitPattern: UInt(mapping.base)), Int(mapping.fileEnd - mapping.fileStart))
            }
        }
    }

    /// EFAULT if `[physical, physical + count)` touches a read-only server mapping.
    func checkWritable(_ physical: UInt64, _ count: Int) throws(IOMMUError) {
        guard readOnlyRangeCount.load(ordering: .acquiring) > 0 else { return }
        let end = physical.addingReportingOverflow(UInt64(max(0, count)))
        try lock.withLock { () throws(IOMMUError) in
            for range in readOnlyRanges where range.start < (end.overflow ? .max : end.partialValue) && physical < range.end {
                throw IOMMUError(.EFAULT, "physical 0x\(String(physical, radix: 16)) is read-only")
            }
        }
    }

    private func rememberReadOnly(_ start: UInt64, _ end: UInt64) {
        lock.withLock {
            let i = readOnlyRanges.firstIndex { $0.start > start } ?? readOnlyRanges.count
            readOnlyRanges.insert((start, end), at: i)
            readOnlyRangeCount.store(readOnlyRanges.count, ordering: .releasing)
        }
    }

    private func forgetReadOnly(_ start: UInt64) {
        lock.withLock {
            readOnlyRanges.removeAll { $0.start == start }
            readOnlyRangeCount.store(readOnlyRanges.count, ordering: .releasing)
        }
    }

    /// The server mappings covering file range `[offset, end)` of `object` (clipped to it, in
    /// order), mapping from `fd` — an open file of that object, writable if `fdWritable` — what
    /// no mapping covers yet. Faults the pages in (writable ones for writing), as pinning
    /// does, so that a page that cannot exist fails here rather than in a later DMA.
    ///
    /// Nil if the range cannot be served this way (a mapping failed, or a writable range meets
    /// a read-only mapping): the caller falls back to reaching the pages through the client.
    /// EFAULT if the range runs past the end of the file or its pages cannot be faulted in.
    func mappings(of object: SharedObject, fd: Int32, fdWritable: Bool, fileSize: UInt64,
                  offset: UInt64, end: UInt64, writable: Bool) throws(IOMMUError) -> [SharedMapping]? {
        let pageSize = object.pageSize
        // A page past the end of the file does not exist (a client touching it gets SIGBUS,
        // and so would the server).
        guard offset < end, let lastByte = fileSize.alignedUp(to: 4096), end <= lastByte else {
            throw IOMMUError(.EFAULT, "shared mapping past the end of its file")
        }
        guard let mapEnd = end.alignedUp(to: pageSize), mapEnd <= UInt64(Int.max) else { return nil }
        let mapStart = offset.alignedDown(to: pageSize)
        return try object.lock.withLock { () throws(IOMMUError) -> [SharedMapping]? in
            // Map the gaps, whole object pages at a time.
            var cursor = mapStart
            var added: [SharedMapping] = []
            var index = 0
            while cursor < mapEnd {
                while index < object.mappings.count, object.mappings[index].fileEnd <= cursor { index += 1 }
                let next = index < object.mappings.count ? object.mappings[index] : nil
                if let next, next.fileStart <= cursor {
                    cursor = next.fileEnd
                    continue
                }
                let gapEnd = min(mapEnd, next?.fileStart ?? mapEnd)
                guard let mapping = map(fd: fd, writable: fdWritable, from: cursor, to: gapEnd, pageSize: pageSize) else {
                    insert(added, into: object)
                    return nil
                }
                added.append(mapping)
                cursor = gapEnd
            }
            insert(added, into: object)

            // The pieces of [offset, end).
            var pieces: [SharedMapping] = []
            for mapping in object.mappings where mapping.fileEnd > offset && mapping.fileStart < end {
                guard !writable || mapping.writable else { return nil }
                let s = max(offset, mapping.fileStart), e = min(end, mapping.fileEnd)
                pieces.append(SharedMapping(fileStart: s, fileEnd: e, base: mapping.base + (s - mapping.fileStart),
                                            writable: mapping.writable, pageSize: mapping.pageSize))
            }
            // Fault in what the pin covers (whole object pages): the kernel's pin does the same,
            // and a page that cannot be had (a hole past a truncation, an empty huge page pool)
            // must fail the pin, not SIGBUS the server in a later access.
            for piece in pieces {
                let start = piece.base.alignedDown(to: piece.pageSize)
                guard let stop = (piece.base + (piece.fileEnd - piece.fileStart)).alignedUp(to: piece.pageSize) else { continue }
                let advice = writable ? Self.madvPopulateWrite : Self.madvPopulateRead
                if madvise(UnsafeMutableRawPointer(bitPattern: UInt(start)), Int(stop - start), advice) != 0,
                   errno != EINVAL {           // EINVAL: a kernel without MADV_POPULATE_*
                    throw IOMMUError(.EFAULT, "cannot fault in shared pages at file offset 0x\(String(piece.fileStart, radix: 16))")
                }
            }
            return pieces
        }
    }

    /// MADV_POPULATE_READ / _WRITE (Linux 5.14), which the Glibc module does not export.
    static let madvPopulateRead: Int32 = 22
    static let madvPopulateWrite: Int32 = 23

    /// Maps `[from, to)` of `fd` MAP_SHARED, writable if the descriptor and the object allow
    /// it (seals may not), else read-only. Nil if it cannot be mapped at all.
    private func map(fd: Int32, writable: Bool, from: UInt64, to: UInt64, pageSize: UInt64) -> SharedMapping? {
        guard from < to, from <= UInt64(Int64.max) else { return nil }
        let length = Int(to - from)
        var p: UnsafeMutableRawPointer? = MAP_FAILED
        var mappedWritable = false
        if writable {
            p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(from))
            mappedWritable = p != MAP_FAILED
        }
        if p == MAP_FAILED {
            p = mmap(nil, length, PROT_READ, MAP_SHARED, fd, off_t(from))
        }
        guard let p, p != MAP_FAILED else { return nil }
        let base = UInt64(UInt(bitPattern: p))
        // Server addresses must stay below the remote window (they do on x86-64, where user
        // space ends there); anything else could not be told apart from a remote address.
        guard base < HostPhysicalMemory.remoteWindowStart, UInt64(length) <= HostPhysicalMemory.remoteWindowStart - base else {
            munmap(p, length)
            return nil
        }
        if !mappedWritable { rememberReadOnly(base, base + UInt64(length)) }
        return SharedMapping(fileStart: from, fileEnd: to, base: base, writable: mappedWritable,
                             pageSize: base % pageSize == 0 ? pageSize : 4096)
    }

    /// Under `object.lock`.
    private func insert(_ added: [SharedMapping], into object: SharedObject) {
        guard !added.isEmpty else { return }
        object.mappings.append(contentsOf: added)
        object.mappings.sort { $0.fileStart < $1.fileStart }
    }
}
