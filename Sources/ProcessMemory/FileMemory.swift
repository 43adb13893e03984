public import UIOMMUBase
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The memory of a shared-memory file (a memfd or a hugetlbfs file) for IOMMU_IOAS_MAP_FILE.
///
/// The file is mapped MAP_SHARED into this process once, whole; offsets are file offsets and
/// a page's "physical address" is its host address in that mapping, so DMA through the page
/// tables reaches the file's pages (as the kernel's pinned folios do), and the program sees the
/// same bytes through its own mappings of the file. `fileSize` is the size when the file was
/// opened for mapping; MAP_FILE checks ranges against it.
///
/// Limit: the mapping is not a pin. If the program shrinks the file afterwards, the pages past
/// the new end are gone and touching them raises SIGBUS, where the kernel's pins would have kept
/// them (the engine checks `fileSize` only when mapping).
public final class FileMemory: PinnableMemory, @unchecked Sendable {
    public let owner: MemoryOwner
    public let fileSize: UInt64?
    /// Start of the shared mapping (nil when the file is empty).
    private let base: UnsafeMutableRawPointer?
    private let mappedLength: Int
    private let writable: Bool
    private let pageSize: UInt64

    /// Maps the file behind descriptor `fd`. Nil if `fd` is not open (EBADF for the caller) or
    /// is not a shared-memory file (a memfd, tmpfs or hugetlbfs file).
    /// `owner` is the process the pins are charged to (the mapping process; default: this one,
    /// a server passes its client).
    public init?(fd: Int32, owner: MemoryOwner? = nil) {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        // Only shared-memory files (memfd, tmpfs, hugetlbfs) take seals: F_GET_SEALS is the
        // kernel's own test for "a file MAP_FILE can pin" (EINVAL for anything else).
        let getSeals: Int32 = 1034
        guard fcntl(fd, getSeals) >= 0 else { return nil }
        self.owner = owner ?? MemoryOwner(pid: getpid(), uid: getuid())
        let size = UInt64(max(0, st.st_size))
        fileSize = size
        // tmpfs reports the base page size, hugetlbfs its huge page size.
        pageSize = UInt64(max(4096, Int(st.st_blksize)))
        guard size > 0, size <= UInt64(Int.max) else {
            base = nil; mappedLength = 0; writable = false
            return
        }
        var w = true
        var p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED {
            w = false
            p = mmap(nil, Int(size), PROT_READ, MAP_SHARED, fd, 0)
        }
        guard let p, p != MAP_FAILED else { return nil }
        base = p
        mappedLength = Int(size)
        writable = w
    }

    deinit {
        if let base { munmap(base, mappedLength) }
    }

    /// The host address of file offset `offset` for `length` bytes, or nil past the mapping.
    private func address(_ offset: UInt64, _ length: UInt64) -> UInt64? {
        guard let base else { return nil }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= UInt64(mappedLength) else { return nil }
        return UInt64(UInt(bitPattern: base)) + offset
    }

    public func resolve(offset: UInt64, length: UInt64, writable: Bool,
                        _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError) {
        guard let start = address(offset, length) else {
            throw IOMMUError(.EFAULT, "file range 0x\(String(offset, radix: 16))+0x\(String(length, radix: 16)) is past its end")
        }
        guard !writable || self.writable else { throw IOMMUError(.EFAULT, "the file is not writable") }
        try body(PhysicalRun(physical: start, length: length, backingPageSize: pageSize))
    }

    public func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        guard contains(physical, count), let p = UnsafeRawPointer(bitPattern: UInt(physical)) else {
            throw IOMMUError(.EFAULT)
        }
        destination.copyMemory(from: p, byteCount: count)
    }

    public func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        guard writable, contains(physical, count), let p = UnsafeMutableRawPointer(bitPattern: UInt(physical)) else {
            throw IOMMUError(.EFAULT)
        }
        p.copyMemory(from: source, byteCount: count)
    }

    private func contains(_ physical: UInt64, _ count: Int) -> Bool {
        guard let base, count >= 0 else { return false }
        let start = UInt64(UInt(bitPattern: base))
        return physical >= start && physical - start <= UInt64(mappedLength) &&
            UInt64(count) <= UInt64(mappedLength) - (physical - start)
    }
}
