// The benchmark environment: memory the benchmarks map, the simulated machine they run on,
// and facts about the host for the report.

import CBenchReference
import IOMMUFD
#if canImport(Glibc)
import Glibc
#endif

let KiB: UInt64 = 1 << 10
let MiB: UInt64 = 1 << 20
let GiB: UInt64 = 1 << 30
let TiB: UInt64 = 1 << 40

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

// MARK: Host memory

/// An anonymous mapping that unmaps itself.
final class HostMapping {
    let base: UnsafeMutableRawPointer
    let bytes: Int
    var address: UInt64 { UInt64(UInt(bitPattern: base)) }

    init(bytes: UInt64, flags: Int32) throws {
        guard let p = cb_map_anonymous(Int(bytes), flags) else {
            throw BenchError("mmap of \(formatBytes(Double(bytes))) failed: \(String(cString: cb_strerror()))")
        }
        base = p
        self.bytes = Int(bytes)
    }

    /// Populated, private, 4 KiB pages (what B2 maps).
    static func populated4K(_ bytes: UInt64) throws -> HostMapping {
        try HostMapping(bytes: bytes, flags: Int32(CB_MAP_POPULATE | CB_MAP_NOHUGEPAGE))
    }

    /// Reserved, untouched VA (MAP_NORESERVE): costs nothing until touched.
    static func reserved(_ bytes: UInt64) throws -> HostMapping {
        try HostMapping(bytes: bytes, flags: Int32(CB_MAP_NORESERVE | CB_MAP_NOHUGEPAGE))
    }

    deinit { _ = cb_unmap(base, bytes) }
}

/// `bytes` of VA backed by one memfd of at most `aliasBytes`, mapped again and again: a VM-sized
/// IOVA span without VM-sized RAM (perf-anchors §5). Every page is real, shared memory; pages
/// cost RAM only once touched, and alias each other every `aliasBytes`.
final class AliasedRegion {
    let reservation: HostMapping
    let fd: Int32
    let bytes: UInt64
    var address: UInt64 { reservation.address }

    init(bytes: UInt64, aliasBytes: UInt64 = GiB) throws {
        let chunk = min(bytes, aliasBytes)
        precondition(bytes % chunk == 0)
        reservation = try HostMapping(bytes: bytes, flags: Int32(CB_MAP_NORESERVE | CB_MAP_PROT_NONE))
        fd = cb_memfd(Int(chunk))
        guard fd >= 0 else { throw BenchError("memfd: \(String(cString: cb_strerror()))") }
        self.bytes = bytes
        var offset: UInt64 = 0
        while offset < bytes {
            guard cb_map_file_fixed(reservation.base + Int(offset), Int(chunk), fd) != nil else {
                throw BenchError("memfd alias mmap: \(String(cString: cb_strerror()))")
            }
            offset += chunk
        }
    }

    deinit { _ = cb_close(fd) }   // the reservation's munmap removes the aliases
}

/// A hugetlb pool for MAP_HUGETLB (2 MiB pages). Full runs may grow the pool (as root) and put
/// it back as it was; quick runs only use pages that are already free.
final class HugeTLBPool {
    static let path = "/proc/sys/vm/nr_hugepages"
    private var original: Int?

    static func readInt(_ path: String) -> Int? {
        Int(readTextFile(path).trimmingSpaces)
    }

    static func meminfo(_ key: String) -> Int? {
        for line in readTextFile("/proc/meminfo").split(separator: "\n") where line.hasPrefix(key + ":") {
            return Int(line.dropFirst(key.count + 1).split(separator: " ").first ?? "")
        }
        return nil
    }

    static func write(_ value: Int) -> Bool {
        guard let f = fopen(path, "w") else { return false }
        defer { fclose(f) }
        return fputs("\(value)\n", f) >= 0
    }

    /// Makes `pages` 2 MiB pages free if possible. Returns a note describing what it did, or
    /// nil if the pool cannot provide them.
    func ensureFree(pages: Int, mayConfigure: Bool) -> String? {
        let free = Self.meminfo("HugePages_Free") ?? 0
        if free >= pages { return "hugetlb pool had \(free) free 2 MiB pages" }
        guard mayConfigure, getuid() == 0, let total = Self.readInt(Self.path) else { return nil }
        if original == nil { original = total }
        _ = Self.write(total + (pages - free))
        let now = Self.meminfo("HugePages_Free") ?? 0
        if now >= pages {
            return "hugetlb pool grown from \(total) to \(Self.readInt(Self.path) ?? -1) pages for this run (restored afterwards)"
        }
        restore()
        return nil
    }

    func restore() {
        if let o = original {
            _ = Self.write(o)
            original = nil
        }
    }

    deinit { restore() }
}

/// The NUL-terminated text in a C buffer.
func stringFromCBuffer(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The contents of a (small) text file, or "" if it cannot be read.
func readTextFile(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var out = ""
    var buf = [CChar](repeating: 0, count: 4096)
    while fgets(&buf, 4096, f) != nil { out += stringFromCBuffer(buf) }
    return out
}

// MARK: A synthetic address space

/// A client address space with no memory behind it: regions of VA with a backing page size,
/// identity "physical" addresses. For maps whose pages are never touched by DMA, bigger than
/// this machine's RAM (B3's 1 TiB of 1 GiB pages). DMA through it fails with EFAULT.
final class SyntheticAddressSpace: PinnableMemory, @unchecked Sendable {
    struct Region { var va: UInt64; var length: UInt64; var pageSize: UInt64 }
    let owner = MemoryOwner(pid: 4242, uid: 4242)
    let regions: [Region]

    init(_ regions: [Region]) { self.regions = regions.sorted { $0.va < $1.va } }

    func resolve(offset va: UInt64, length: UInt64, writable: Bool,
                 _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError) {
        guard let r = regions.first(where: { $0.va <= va && va &+ length <= $0.va + $0.length }) else {
            throw IOMMUError(.EFAULT, "not in a synthetic region")
        }
        try body(PhysicalRun(physical: va, length: length, backingPageSize: r.pageSize))
    }

    func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        throw IOMMUError(.EFAULT, "synthetic memory has no contents")
    }

    func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        throw IOMMUError(.EFAULT, "synthetic memory has no contents")
    }
}

// MARK: The simulated machine

/// One context on the default machine with one device bound and attached to one IOAS (through
/// an automatic domain, or a dirty-tracking HWPT with tracking on).
final class Rig {
    let platform: Platform
    let context: IOMMUFDContext
    let device: PlatformDevice
    let deviceID: UInt32
    let ioas: UInt32
    let hwpt: UInt32

    /// `deviceName` must sit behind dmar0 (48-bit VT-d, 4K/2M/1G, dirty tracking).
    init(memory: any PinnableMemory, physical: (any PhysicalMemory)? = nil, platform: Platform? = nil,
         deviceName: String = "gpu0", dirtyTracking: Bool = false, attach: Bool = true) throws {
        let platform = platform ?? Platform(machine: .default, physicalMemory: physical ?? memory)
        self.platform = platform
        context = IOMMUFDContext(platform: platform, memory: memory, pinPolicy: .unlimited)
        guard let d = platform.device(named: deviceName) else { throw BenchError("no device \(deviceName)") }
        device = d
        ioas = try context.allocIOAS()
        if attach {
            deviceID = try context.bind(d)
            if dirtyTracking {
                hwpt = try context.allocHWPT(device: deviceID, ioas: ioas, flags: .dirtyTracking)
                _ = try context.attach(device: deviceID, to: hwpt)
                try context.setDirtyTracking(hwpt: hwpt, enabled: true)
            } else {
                hwpt = try context.attach(device: deviceID, to: ioas)
            }
        } else {
            deviceID = 0
            hwpt = 0
        }
    }

    /// The IOMMU domain the device translates through.
    var domain: IOMMUDomain {
        guard let d = device.unit.context(requester: device.spec.address) else {
            preconditionFailure("device is not attached")
        }
        return d
    }

    func close() { context.close() }
}

// MARK: Host facts

struct HostInfo {
    var cpus: Int
    var cpuModel: String
    var kernel: String
    var memory: String
    var thp: String

    static func read() -> HostInfo {
        func file(_ p: String) -> String { readTextFile(p) }
        let model = file("/proc/cpuinfo").split(separator: "\n")
            .first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingSpaces } ?? "unknown"
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let mem = HugeTLBPool.meminfo("MemTotal").map { formatBytes(Double($0) * 1024) } ?? "?"
        return HostInfo(cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), cpuModel: model, kernel: release,
                        memory: mem, thp: file("/sys/kernel/mm/transparent_hugepage/enabled").trimmingSpaces)
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" { s.removeLast() }
        return String(s)
    }
}

/// A deterministic generator (splitmix64) so both sides of a pair see the same addresses.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
}

/// A random cyclic permutation of 0..<n (Sattolo): following it visits every index once.
func randomCycle(_ n: Int, seed: UInt64) -> [Int] {
    var rng = SplitMix(state: seed)
    var p = Array(0..<n)
    var i = n - 1
    while i > 0 {
        let j = Int(rng.below(UInt64(i)))
        p.swapAt(i, j)
        i -= 1
    }
    // p is a random cycle when read as "next of p[k] is p[k+1]"; return next[] by position.
    var next = [Int](repeating: 0, count: n)
    for k in 0..<n { next[p[k]] = p[(k + 1) % n] }
    return next
}
