// Hooks for the interposer's own tests (tests/interposer): an auxiliary file that echoes, so
// the auxiliary-descriptor machinery (installation, read/write routing, poll readiness, dup,
// fork, last-close release) can be tested before any ioctl hands out such a file. Reached with
// dlsym(RTLD_DEFAULT, "uiommufd_test_…") by a test program; nothing else calls them.

import CUIOMMUInterpose
import IOMMUABI
import UIOMMUBase

/// write(2) queues a record, read(2) returns the oldest whole record (EINVAL if the buffer is
/// too small, EAGAIN when empty), poll says readable while records are queued.
final class EchoFile: AuxiliaryFile, @unchecked Sendable {
    private let lock = Lock()
    private var records: [[UInt8]] = []

    func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Int {
        lock.withLock {
            guard let first = records.first else { return -11 }        // EAGAIN
            guard count >= first.count else { return -22 }             // EINVAL
            first.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: first.count) }
            records.removeFirst()
            return first.count
        }
    }

    func write(from buffer: UnsafeRawPointer, count: Int) -> Int {
        let record = [UInt8](UnsafeRawBufferPointer(start: buffer, count: count))
        lock.withLock { records.append(record) }
        return count
    }

    var isReadable: Bool { lock.withLock { !records.isEmpty } }

    func release() { EchoFile.releases.increment() }

    static let releases = Counter()
}

final class Counter: @unchecked Sendable {
    private let lock = Lock()
    private var value = 0
    func increment() { lock.withLock { value += 1 } }
    var current: Int { lock.withLock { value } }
}

/// A new echo descriptor, or -errno.
@_cdecl("uiommufd_test_echo_fd")
func testEchoFD() -> Int32 {
    PreloadBroker().install(EchoFile())
}

/// How many echo files have been released (their last descriptor closed).
@_cdecl("uiommufd_test_echo_releases")
func testEchoReleases() -> Int {
    EchoFile.releases.current
}
