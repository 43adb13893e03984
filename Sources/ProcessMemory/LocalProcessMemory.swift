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
        let vmas = try Self.readMaps(from: va, to: end)
        var runs: [PhysicalRun] = []
        var cursor = va
        for vma in vmas where vma.end > cursor && cursor < end {
            guard vma.start <= cursor else { break }
            guard vma.readable, !writable || vma.writable else { break }
            let n = min(end, vma.end) - cursor
            // Adjacent VMAs of the same page size are one physical run.
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
        for run in runs { try body(run) }
    }

    public func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        guard let p = UnsafeRawPointer(bitPattern: UInt(physical)) else { throw IOMMUError(.EFAULT) }
        destination.copyMemory(from: p, byteCount: count)
    }

    public func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        guard let p = UnsafeMutableRawPointer(bitPattern: UInt(physical)) else { throw IOMMUError(.EFAULT) }
        p.copyMemory(from: source, byteCount: count)
    }

    struct VMA { var start: UInt64; var end: UInt64; var readable: Bool; var writable: Bool; var pageSize: UInt64 }

    /// The VMAs of /proc/self/maps that intersect `[from, to)`, parsed straight from bytes and
    /// read only as far as needed (lines are sorted by address). Huge-page mappings
    /// (hugetlbfs files, MAP_HUGETLB) report 2 MiB; everything else 4 KiB.
    static func readMaps(from: UInt64, to: UInt64) throws(IOMMUError) -> [VMA] {
        let fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOMMUError(.EFAULT, "cannot read /proc/self/maps") }
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

    /// One maps line: "start-end perms offset dev inode [path]".
    private static func parse(_ line: [UInt8]) -> VMA? {
        var i = 0
        func hex() -> UInt64? {
            var v: UInt64 = 0
            let begin = i
            while i < line.count {
                let c = line[i]
                let d: UInt64
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt64(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt64(c - UInt8(ascii: "a") + 10)
                default: return i > begin ? v : nil
                }
                v = v << 4 | d
                i += 1
            }
            return i > begin ? v : nil
        }
        guard let start = hex(), i < line.count, line[i] == UInt8(ascii: "-") else { return nil }
        i += 1
        guard let end = hex(), i + 3 < line.count else { return nil }
        let readable = line[i + 1] == UInt8(ascii: "r")
        let writable = line[i + 2] == UInt8(ascii: "w")
        // The path, if any, is what follows the fifth field; only its huge-page markers matter.
        var huge = false
        if let slash = line.firstIndex(of: UInt8(ascii: "/")) {
            let path = line[slash...]
            huge = path.starts(with: Array("/dev/hugepages".utf8))
                || path.starts(with: Array("/anon_hugepage".utf8))
        }
        return VMA(start: start, end: end, readable: readable, writable: writable, pageSize: huge ? 2 << 20 : 4096)
    }
}
