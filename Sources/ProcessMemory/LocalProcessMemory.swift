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
        let vmas = try Self.readMaps()
        var runs: [PhysicalRun] = []
        var cursor = va
        for vma in vmas where vma.end > cursor && cursor < end {
            guard vma.start <= cursor else { break }
            guard vma.readable, !writable || vma.writable else { break }
            let n = min(end, vma.end) - cursor
            runs.append(PhysicalRun(physical: cursor, length: n, backingPageSize: vma.pageSize))
            cursor += n
        }
        guard cursor >= end else {
            throw IOMMUError(.EFAULT, "user address 0x\(String(cursor, radix: 16)) is not accessible")
        }
        // Adjacent VMAs of the same page size are one physical run.
        var merged: [PhysicalRun] = []
        for run in runs {
            if var last = merged.last, last.physical + last.length == run.physical,
               last.backingPageSize == run.backingPageSize {
                last.length += run.length
                merged[merged.count - 1] = last
            } else {
                merged.append(run)
            }
        }
        for run in merged { try body(run) }
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

    /// Parses /proc/self/maps. Huge-page mappings (hugetlbfs files, MAP_HUGETLB) report the
    /// system's default huge page size; everything else is 4 KiB.
    static func readMaps() throws(IOMMUError) -> [VMA] {
        let fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOMMUError(.EFAULT, "cannot read /proc/self/maps") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        var vmas: [VMA] = []
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard fields.count >= 2 else { continue }
            let range = fields[0].split(separator: UInt8(ascii: "-"))
            guard range.count == 2,
                  let start = UInt64(String(decoding: range[0], as: UTF8.self), radix: 16),
                  let end = UInt64(String(decoding: range[1], as: UTF8.self), radix: 16) else { continue }
            let perms = Array(fields[1])
            let path = fields.count >= 6 ? String(decoding: fields[5], as: UTF8.self) : ""
            let huge = path.contains("anon_hugepage") || path.hasPrefix("/dev/hugepages")
            vmas.append(VMA(start: start, end: end,
                            readable: perms.first == UInt8(ascii: "r"),
                            writable: perms.count > 1 && perms[1] == UInt8(ascii: "w"),
                            pageSize: huge ? 2 << 20 : 4096))
        }
        return vmas
    }
}
