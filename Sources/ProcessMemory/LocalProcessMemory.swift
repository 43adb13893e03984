public import UIOMMUBase
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The calling process's own memory: user VA and physical address are the same number.
///
/// Pinning validates the range against `/proc/self/maps` (mapped, readable, and writable when
/// asked), which is what the kernel's get_user_pages would refuse with EFAULT. Unlike the
/// kernel we cannot hold a page alive after the program unmaps it: a device DMA to a pinned
/// page the program later unmapped is undefined here (documented in the README).
public final class LocalProcessMemory: PinnableMemory, Sendable {
    public let owner: MemoryOwner

    public init() {
        owner = MemoryOwner(pid: getpid(), uid: getuid())
    }

    public func resolve(offset va: UInt64, length: UInt64, writable: Bool,
                        _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError) {
        let (end, overflow) = va.addingReportingOverflow(length)
        guard !overflow else { throw IOMMUError(.EFAULT, "user range wraps") }
        let runs = try Self.accessibleRuns(Self.readMaps(from: va, to: end), from: va, to: end, writable: writable)
        for run in runs { try body(run) }
    }

    /// The runs of user memory `[va, end)` covered by `vmas` (as read from a maps file), with
    /// the user VA as the run's address, or EFAULT at the first page that is not mapped,
    /// readable, and (when `writable`) writable. Adjacent VMAs of the same page size are one run.
    static func accessibleRuns(_ vmas: [VMA], from va: UInt64, to end: UInt64,
                               writable: Bool) throws(IOMMUError) -> [PhysicalRun] {
        var runs: [PhysicalRun] = []
        var cursor = va
        for vma in vmas where vma.end > cursor && cursor < end {
            guard vma.start <= cursor else { break }
            guard vma.readable, !writable || vma.writable else { break }
            let n = min(end, vma.end) - cursor
            if var last = runs.last, last.physical + last.length == cursor, last.backingPageSize == vma.pageSize {
                last.length += n
                runs[runs.count - 1] = last
            } else {
                runs.append(PhysicalRun(physical: cursor, length: n, backingPageSize: vma.pageSize))
            }
            cursor += n
        }
        guard cursor >= end else {
            throw IOMMUError(.EFAULT, "user address 0x\(String(cursor, radix: 16)) is not accessible")
        }
        return runs
    }

    public func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        guard let p = UnsafeRawPointer(bitPattern: UInt(physical)) else { throw IOMMUError(.EFAULT) }
        destination.copyMemory(from: p, byteCount: count)
    }

    public func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        guard let p = UnsafeMutableRawPointer(bitPattern: UInt(physical)) else { throw IOMMUError(.EFAULT) }
        p.copyMemory(from: source, byteCount: count)
    }

    struct VMA {
        var start: UInt64; var end: UInt64; var readable: Bool; var writable: Bool; var pageSize: UInt64
        /// MAP_SHARED ('s' in the permissions): the pages are the backing object's, seen by
        /// every process that maps it, not this process's own copy.
        var shared = false
        /// The backing file, when there is one (inode non-zero): its device (as st_dev encodes
        /// it), inode, and the file offset of `start`. Shared anonymous memory and SysV shm are
        /// shmem files too, so they have all three.
        var fileOffset: UInt64 = 0
        var device: UInt64 = 0
        var inode: UInt64 = 0
    }

    /// The VMAs of a maps file (`/proc/self/maps` by default, `/proc/<pid>/maps` for another
    /// process) that intersect `[from, to)`, parsed straight from bytes and read only as far as
    /// needed (lines are sorted by address). Huge-page mappings (hugetlbfs files, MAP_HUGETLB)
    /// report 2 MiB; everything else 4 KiB.
    static func readMaps(path: String = "/proc/self/maps", from: UInt64, to: UInt64) throws(IOMMUError) -> [VMA] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOMMUError(.EFAULT, "cannot read \(path)") }
        defer { close(fd) }
        var vmas: [VMA] = []
        var line: [UInt8] = []
        line.reserveCapacity(256)
        var chunk = [UInt8](repeating: 0, count: 16384)
        var done = false
        while !done {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            for i in 0..<n {
                let byte = chunk[i]
                if byte != UInt8(ascii: "\n") { line.append(byte); continue }
                if let vma = parse(line) {
                    if vma.start >= to { done = true; break }
                    if vma.end > from { vmas.append(vma) }
                }
                line.removeAll(keepingCapacity: true)
            }
        }
        return vmas
    }

    /// One maps line: "start-end perms offset major:minor inode [path]" (all hex but the
    /// inode, which is decimal). Nil for a line that does not parse.
    static func parse(_ line: [UInt8]) -> VMA? {
        var i = 0
        // Digits in `radix`, or nil if there are none or the value would not fit.
        func number(_ radix: UInt64) -> UInt64? {
            var v: UInt64 = 0
            let begin = i
            while i < line.count {
                let c = line[i]
                let d: UInt64
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt64(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f") where radix == 16: d = UInt64(c - UInt8(ascii: "a") + 10)
                default: return i > begin ? v : nil
                }
                let (shifted, o1) = v.multipliedReportingOverflow(by: radix)
                let (sum, o2) = shifted.addingReportingOverflow(d)
                guard !o1, !o2 else { return nil }
                v = sum
                i += 1
            }
            return i > begin ? v : nil
        }
        func skip(_ byte: UInt8) -> Bool {
            guard i < line.count, line[i] == byte else { return false }
            i += 1
            return true
        }
        func skipSpaces() { while i < line.count, line[i] == UInt8(ascii: " ") { i += 1 } }
        guard let start = number(16), skip(UInt8(ascii: "-")) else { return nil }
        guard let end = number(16), i + 4 < line.count else { return nil }
        let readable = line[i + 1] == UInt8(ascii: "r")
        let writable = line[i + 2] == UInt8(ascii: "w")
        let shared = line[i + 4] == UInt8(ascii: "s")
        // The path, if any, is what follows the fifth field; only its huge-page markers matter.
        var huge = false
        if let slash = line.firstIndex(of: UInt8(ascii: "/")) {
            let path = line[slash...]
            huge = path.starts(with: Array("/dev/hugepages".utf8))
                || path.starts(with: Array("/anon_hugepage".utf8))
        }
        var vma = VMA(start: start, end: end, readable: readable, writable: writable,
                      pageSize: huge ? 2 << 20 : 4096, shared: shared)
        // The file fields. A line cut short leaves them zero: no backing object, so the
        // mapping is treated as the process's own memory, as before they were read.
        i += 5
        skipSpaces()
        guard let offset = number(16) else { return vma }
        skipSpaces()
        guard let major = number(16), skip(UInt8(ascii: ":")), let minor = number(16) else { return vma }
        skipSpaces()
        guard let inode = number(10) else { return vma }
        vma.fileOffset = offset
        vma.device = encodeDevice(major: major, minor: minor)
        vma.inode = inode
        return vma
    }

    /// A device number as glibc's makedev(3) packs it into st_dev, so a maps line's
    /// "major:minor" compares with what fstat reports for the same file.
    static func encodeDevice(major: UInt64, minor: UInt64) -> UInt64 {
        ((major & 0xFFFF_F000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFF_FF00) << 12) | (minor & 0xFF)
    }
}
