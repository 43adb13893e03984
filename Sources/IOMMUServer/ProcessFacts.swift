// What the server learns about a client process from the kernel, never from the client:
// its memory lock limit and capabilities (for pin accounting and RLIMIT_MODE), and helpers
// for threads and descriptors.

import CUIOMMUWire
import UIOMMUBase
import IOMMUEngine
#if canImport(Glibc)
import Glibc
#endif

enum ProcessFacts {
    /// RLIMIT_MEMLOCK (soft) of `pid`, in bytes; nil when unlimited or unreadable.
    static func memlockLimit(pid: Int32) -> UInt64? {
        let limit = uiommu_process_memlock_limit(pid)
        return limit == .max ? nil : limit
    }

    /// Effective capabilities of `pid` from /proc/<pid>/status (CapEff, a hex mask).
    static func effectiveCapabilities(pid: Int32) -> UInt64 {
        guard let text = try? readSmallFile("/proc/\(pid)/status") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst("CapEff:".count).trimmingCharacters(in: " \t")
            return UInt64(hex, radix: 16) ?? 0
        }
        return 0
    }

    static let capIPCLock = 14
    static let capSysResource = 24

    /// The pin policy of a process: its RLIMIT_MEMLOCK, and CAP_IPC_LOCK (or a capability the
    /// server was told to grant every client).
    static func pinPolicy(pid: Int32, granted: UInt64) -> PinPolicy {
        let caps = effectiveCapabilities(pid: pid) | granted
        return PinPolicy(memlockLimit: memlockLimit(pid: pid) ?? .max,
                         privileged: caps & (1 << UInt64(capIPCLock)) != 0)
    }

    static func hasSysResource(pid: Int32, granted: UInt64) -> Bool {
        (effectiveCapabilities(pid: pid) | granted) & (1 << UInt64(capSysResource)) != 0
    }
}

struct SmallFileError: Error {}

/// Reads a small text file (procfs) whole.
func readSmallFile(_ path: String) throws(SmallFileError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SmallFileError() }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return s
    }
}

/// Runs `body` on a new detached thread (one per connection and per channel: each blocks in
/// recvmsg, and the engine serialises what must be serialised).
func startThread(_ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let rc = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    if rc != 0 { Unmanaged<Box>.fromOpaque(box).release() }
    return rc == 0
}
