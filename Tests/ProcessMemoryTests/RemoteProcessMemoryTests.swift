import Testing
import UIOMMUBase
@testable import ProcessMemory
#if canImport(Glibc)
import Glibc
#endif

/// RemoteProcessMemory and HostPhysicalMemory: a server pinning and DMAing into other processes.
/// The test process stands in for a client (process_vm_readv and map_files work on oneself); a
/// spawned `/bin/sleep` or a forked child is a client that can exit. Needs root (map_files needs
/// CAP_SYS_ADMIN; without it shared memory takes the private path and those tests fail).
@Suite struct RemoteProcessMemoryTests {
    // MARK: Helpers

    /// `pages` fresh anonymous pages with protection `protection`; the caller unmaps them.
    func mapPages(_ pages: Int, protection: Int32 = PROT_READ | PROT_WRITE, flags: Int32 = 0) throws -> UnsafeMutableRawPointer {
        let p = mmap(nil, pages * 4096, protection, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0)
        try #require(p != MAP_FAILED)
        return try #require(p)
    }

    func address(_ p: UnsafeRawPointer) -> UInt64 { UInt64(UInt(bitPattern: p)) }

    func runs(_ memory: RemoteProcessMemory, _ va: UInt64, _ length: UInt64, writable: Bool = false) throws -> [PhysicalRun] {
        var out: [PhysicalRun] = []
        try memory.resolve(offset: va, length: length, writable: writable) { out.append($0) }
        return out
    }

    func expectEFAULT(_ body: () throws -> Void) {
        do {
            try body()
            Issue.record("expected EFAULT")
        } catch let error as IOMMUError {
            #expect(error.errno == .EFAULT, "\(error)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    /// A `/bin/sleep 30` child; the caller kills and reaps it.
    func spawnSleeper() throws -> pid_t {
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sleep"), strdup("30"), nil]
        defer { for a in argv { free(a) } }
        let rc = posix_spawn(&pid, "/bin/sleep", nil, nil, argv, environ)
        try #require(rc == 0)
        return pid
    }

    func killAndReap(_ pid: pid_t) {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    /// The child's `[stack]` mapping (always present, readable and writable), from its maps.
    func stackMapping(of pid: pid_t) throws -> (start: UInt64, end: UInt64) {
        let fd = open("/proc/\(pid)/maps", O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasSuffix("[stack]") {
            let fields = line.split(separator: " ")
            let bounds = fields[0].split(separator: "-")
            #expect(fields[1].hasPrefix("rw"))
            return (try #require(UInt64(bounds[0], radix: 16)), try #require(UInt64(bounds[1], radix: 16)))
        }
        throw IOMMUError(.ENOENT, "no [stack] in the child's maps")
    }

    /// Reads the child's memory through /proc/<pid>/mem: an independent witness of what the
    /// process itself sees.
    func procMemRead(_ pid: pid_t, _ va: UInt64, _ count: Int) throws -> [UInt8] {
        let fd = open("/proc/\(pid)/mem", O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(truncatingIfNeeded: va)) }
        try #require(n == count)
        return out
    }

    // MARK: The test process as the client

    @Test func resolvesIntoTheRemoteWindowAndDMAReachesTheProcess() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        #expect(memory.owner == MemoryOwner(pid: getpid(), uid: getuid()))
        let buffer = try mapPages(4)
        defer { munmap(buffer, 4 * 4096) }
        for i in 0..<(4 * 4096) { buffer.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }

        let found = try runs(memory, address(buffer), 4 * 4096, writable: true)
        #expect(found.reduce(0) { $0 + $1.length } == 4 * 4096)
        for run in found {
            #expect(run.physical >= HostPhysicalMemory.remoteWindowStart && run.physical < HostPhysicalMemory.remoteWindowEnd)
            #expect(run.physical % (1 << 30) == address(buffer) % (1 << 30) || found.count > 1)
            #expect(run.backingPageSize == 4096)
        }
        let physical = found[0].physical

        // A DMA read sees the process's bytes; a DMA write lands in the process's memory.
        var back = [UInt8](repeating: 0, count: 100)
        try back.withUnsafeMutableBytes { try host.read(physical: physical + 10, into: $0.baseAddress!, count: 100) }
        #expect(back == (10..<110).map { UInt8($0) })
        let pattern = [UInt8](repeating: 0xA5, count: 64)
        try pattern.withUnsafeBytes { try host.write(physical: physical + 4000, from: $0.baseAddress!, count: 64) }
        #expect(buffer.load(fromByteOffset: 4000, as: UInt8.self) == 0xA5)
        #expect(buffer.load(fromByteOffset: 4063, as: UInt8.self) == 0xA5)
        // The memory's own read/write and the user-VA copies agree.
        var viaMemory: UInt8 = 0
        try memory.read(physical: physical + 4001, into: &viaMemory, count: 1)
        #expect(viaMemory == 0xA5)
        var byte: UInt8 = 0x5A
        try memory.writeUser(offset: address(buffer) + 5, from: &byte, count: 1)
        #expect(buffer.load(fromByteOffset: 5, as: UInt8.self) == 0x5A)
    }

    @Test func physicalAddressesAreDeterministicAndUniquePerAddressSpace() throws {
        let host = HostPhysicalMemory()
        let buffer = try mapPages(8)
        defer { munmap(buffer, 8 * 4096) }
        let va = address(buffer)
        var first: RemoteProcessMemory? = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let a = try runs(first!, va, 8 * 4096)
        let b = try runs(first!, va, 8 * 4096)
        #expect(a == b)
        // A sub-range resolves to the same pages.
        let c = try runs(first!, va + 3 * 4096, 4096)
        #expect(c.count == 1 && c[0].physical == a[0].physical + 3 * 4096 || a.count > 1)

        // Another address space (even of the same process) gets its own physical pages.
        let second = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let d = try runs(second, va, 8 * 4096)
        #expect(Set(a.map(\.physical)).isDisjoint(with: d.map(\.physical)))
        let blocksBefore = host.remoteBlockCount
        #expect(blocksBefore >= 2)

        // When nothing references an address space its blocks go back to the window.
        let firstPhysical = a[0].physical
        first = nil
        #expect(host.remoteBlockCount < blocksBefore)
        var byte: UInt8 = 0
        expectEFAULT { try host.read(physical: firstPhysical, into: &byte, count: 1) }
        // The other space is untouched.
        try host.read(physical: d[0].physical, into: &byte, count: 1)
    }

    @Test func runsAreSplitAtGiBBoundaries() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        // A 2 GiB reservation always contains a GiB boundary with room on both sides.
        let size = 2 << 30
        let reservation = try mapPages(size / 4096, flags: MAP_NORESERVE)
        defer { munmap(reservation, size) }
        let boundary = (address(reservation) >> 30 + 1) << 30
        let start = boundary - 8192
        let found = try runs(memory, start, 16384, writable: true)
        #expect(found.count == 2)
        #expect(found[0].length == 8192 && found[1].length == 8192)
        #expect(found[0].physical % (1 << 30) == (1 << 30) - 8192)
        #expect(found[1].physical % (1 << 30) == 0)
        #expect(host.remoteBlockCount == 2)

        // A DMA crossing the physical boundary is split too, and lands on both sides.
        let pattern = [UInt8](repeating: 7, count: 32)
        try pattern.withUnsafeBytes { try host.write(physical: found[1].physical, from: $0.baseAddress!, count: 32) }
        let p = UnsafeMutableRawPointer(bitPattern: UInt(boundary))!
        #expect(p.load(as: UInt8.self) == 7)
        try pattern.withUnsafeBytes { try memory.writeUser(offset: boundary - 16, from: $0.baseAddress!, count: 32) }
        #expect((p - 16).load(as: UInt8.self) == 7 && (p + 15).load(as: UInt8.self) == 7)
    }

    @Test func refusesReadOnlyUnmappedAndBadRanges() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let readOnly = try mapPages(2, protection: PROT_READ)
        defer { munmap(readOnly, 2 * 4096) }
        expectEFAULT { _ = try runs(memory, address(readOnly), 8192, writable: true) }
        #expect(try runs(memory, address(readOnly), 8192).count == 1)

        let gone = try mapPages(3)
        munmap(gone + 4096, 4096)
        defer { munmap(gone, 3 * 4096) }
        expectEFAULT { _ = try runs(memory, address(gone), 3 * 4096) }
        expectEFAULT { _ = try runs(memory, UInt64.max - 4095, 8192) }    // wraps
        expectEFAULT { _ = try runs(memory, 0x1000, 4096) }

        var byte: UInt8 = 0
        // Outside the window, free blocks, other spaces' blocks, silly lengths.
        expectEFAULT { try host.read(physical: HostPhysicalMemory.remoteWindowEnd, into: &byte, count: 1) }
        expectEFAULT { try host.read(physical: .max, into: &byte, count: 1) }
        expectEFAULT { try host.read(physical: HostPhysicalMemory.remoteWindowStart + (100 << 30), into: &byte, count: 1) }
        expectEFAULT { try host.read(physical: HostPhysicalMemory.remoteWindowStart - 1, into: &byte, count: 2) }
        expectEFAULT { try host.read(physical: 0, into: &byte, count: 1) }
        expectEFAULT { try host.write(physical: HostPhysicalMemory.remoteWindowEnd - 1, from: &byte, count: -1) }
        let other = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let theirs = try runs(other, address(readOnly), 4096)[0].physical
        expectEFAULT { try memory.read(physical: theirs, into: &byte, count: 1) }
        try host.read(physical: theirs, into: &byte, count: 1)
        // The last block of the window cannot be read past its end.
        expectEFAULT { try host.read(physical: HostPhysicalMemory.remoteWindowEnd - 1, into: &byte, count: 1) }
    }

    @Test func serverAddressesBelowTheWindowArePlainMemory() throws {
        let host = HostPhysicalMemory()
        var value: UInt64 = 0x1122_3344_5566_7788
        var copy: UInt64 = 0
        try withUnsafeMutablePointer(to: &value) { p in
            try host.read(physical: address(p), into: &copy, count: 8)
            var replacement: UInt64 = 42
            try host.write(physical: address(p), from: &replacement, count: 8)
        }
        #expect(copy == 0x1122_3344_5566_7788 && value == 42)
    }

    @Test func aFullWindowFailsWithENOMEM() throws {
        let host = HostPhysicalMemory(remoteBlockLimit: 1)
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let size = 2 << 30
        let reservation = try mapPages(size / 4096, flags: MAP_NORESERVE)
        defer { munmap(reservation, size) }
        let boundary = (address(reservation) >> 30 + 1) << 30
        _ = try runs(memory, boundary - 4096, 4096)
        #expect(throws: IOMMUError(.ENOMEM, "the remote physical window is full")) {
            _ = try runs(memory, boundary, 4096)
        }
    }

    @Test func preservingTheLiveProcessKeepsDMAVisibleToIt() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let buffer = try mapPages(4)
        defer { munmap(buffer, 4 * 4096) }
        buffer.storeBytes(of: 0xDEAD_BEEF as UInt32, as: UInt32.self)
        let physical = try runs(memory, address(buffer), 2 * 4096, writable: true)[0].physical
        #expect(try memory.preservePinnedPages() == 2 * 4096)
        #expect(memory.isPreserved)
        #expect(try memory.preservePinnedPages() == 0)    // once is enough

        var word: UInt32 = 0
        try host.read(physical: physical, into: &word, count: 4)
        #expect(word == 0xDEAD_BEEF)
        // Writes go to the copy, and still reach the living process.
        word = 0xFEED_FACE
        try host.write(physical: physical + 4096, from: &word, count: 4)
        #expect((buffer + 4096).load(as: UInt32.self) == 0xFEED_FACE)
        var again: UInt32 = 0
        try host.read(physical: physical + 4096, into: &again, count: 4)
        #expect(again == 0xFEED_FACE)

        // A range resolved after preserving is copied as it is resolved.
        (buffer + 3 * 4096).storeBytes(of: 0x1234_5678 as UInt32, as: UInt32.self)
        let later = try runs(memory, address(buffer) + 3 * 4096, 4096)
        #expect(later[0].physical == physical + 3 * 4096)
        try host.read(physical: later[0].physical, into: &again, count: 4)
        #expect(again == 0x1234_5678)
        // Preserved ranges resolve to the same physical pages.
        #expect(try runs(memory, address(buffer), 4096, writable: true)[0].physical == physical)
    }

    @Test func manyThreadsDMAWhilePreserving() async throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let pages = 64
        let buffer = try mapPages(pages)
        defer { munmap(buffer, pages * 4096) }
        let physical = try runs(memory, address(buffer), UInt64(pages * 4096), writable: true)[0].physical
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    for i in 0..<500 {
                        var value = UInt64(t * 1_000_000 + i)
                        let at = physical + UInt64(t * 4096)
                        try? host.write(physical: at, from: &value, count: 8)
                        var back: UInt64 = 0
                        try? host.read(physical: at, into: &back, count: 8)
                        // Each thread owns its page: it reads what it last wrote, before or
                        // after the switch to the copy.
                        #expect(back == value)
                    }
                }
            }
            group.addTask { _ = try? memory.preservePinnedPages() }
        }
        #expect(memory.isPreserved)
    }

    // MARK: A child process as the client

    @Test func aPreservedChildOutlivesItsExit() throws {
        let host = HostPhysicalMemory()
        let child = try spawnSleeper()
        var reaped = false
        defer { if !reaped { killAndReap(child) } }
        let memory = try RemoteProcessMemory(pid: child, uid: getuid(), physicalMemory: host)
        #expect(memory.isAlive)
        let stack = try stackMapping(of: child)
        // The lowest pages of the stack mapping: mapped, writable, and far below what sleep uses.
        let va = stack.start
        let found = try runs(memory, va, 8192, writable: true)
        #expect(found.count == 1 && found[0].length == 8192)
        let physical = found[0].physical

        let pattern = (0..<256).map { UInt8($0) }
        try pattern.withUnsafeBytes { try host.write(physical: physical + 100, from: $0.baseAddress!, count: 256) }
        // The child itself sees the DMA write.
        #expect(try procMemRead(child, va + 100, 256) == pattern)
        var back = [UInt8](repeating: 0, count: 256)
        try back.withUnsafeMutableBytes { try host.read(physical: physical + 100, into: $0.baseAddress!, count: 256) }
        #expect(back == pattern)

        #expect(try memory.preservePinnedPages() == 8192)
        killAndReap(child)
        reaped = true
        #expect(!memory.isAlive)

        // The pinned pages are still memory: reads see the preserved bytes, writes stick.
        back = [UInt8](repeating: 0, count: 256)
        try back.withUnsafeMutableBytes { try host.read(physical: physical + 100, into: $0.baseAddress!, count: 256) }
        #expect(back == pattern)
        var byte: UInt8 = 0x77
        try host.write(physical: physical + 5000, from: &byte, count: 1)
        byte = 0
        try host.read(physical: physical + 5000, into: &byte, count: 1)
        #expect(byte == 0x77)
        // Preserved ranges still resolve, to the same pages; writable only if pinned writable.
        #expect(try runs(memory, va, 8192, writable: true) == [PhysicalRun(physical: physical, length: 8192, backingPageSize: 4096)])
        #expect(try runs(memory, va + 4096, 4096)[0].physical == physical + 4096)
        // New ranges do not: the mm is gone.
        expectEFAULT { _ = try runs(memory, va + 8192, 4096) }
        expectEFAULT { _ = try runs(memory, va + 4096, 8192) }
    }

    @Test func anUnpreservedChildsPagesDieWithIt() throws {
        let host = HostPhysicalMemory()
        let child = try spawnSleeper()
        let memory = try RemoteProcessMemory(pid: child, uid: getuid(), physicalMemory: host)
        let stack = try stackMapping(of: child)
        let physical = try runs(memory, stack.start, 4096, writable: true)[0].physical
        var byte: UInt8 = 0
        try host.read(physical: physical, into: &byte, count: 1)
        killAndReap(child)

        expectEFAULT { try host.read(physical: physical, into: &byte, count: 1) }
        expectEFAULT { try host.write(physical: physical, from: &byte, count: 1) }
        expectEFAULT { _ = try runs(memory, stack.start, 4096) }
        expectEFAULT { try memory.preservePinnedPages() }
        #expect(!memory.isPreserved)
    }

    @Test func theProcessIsHeldByPidfdNotByNumber() throws {
        let host = HostPhysicalMemory()
        // A pidfd for a process that has exited and been reaped, paired with a pid that names a
        // live process (ours): what pid reuse would look like. Nothing may go through the pid.
        let child = try spawnSleeper()
        let deadPidfd = RemoteProcess.openPidfd(child)
        try #require(deadPidfd >= 0)
        killAndReap(child)
        let reused = RemoteProcessMemory(pid: getpid(), uid: getuid(), pidfd: deadPidfd, physicalMemory: host)
        let buffer = try mapPages(1)
        defer { munmap(buffer, 4096) }
        #expect(!reused.isAlive)
        expectEFAULT { _ = try runs(reused, address(buffer), 4096) }
        expectEFAULT { try reused.preservePinnedPages() }

        // The reaped pid itself cannot be opened any more.
        #expect(throws: IOMMUError.self) {
            _ = try RemoteProcessMemory(pid: child, uid: getuid(), physicalMemory: host)
        }
        #expect(throws: IOMMUError.self) {
            _ = try RemoteProcessMemory(pid: -1, uid: getuid(), physicalMemory: host)
        }
    }

    // MARK: Shared memory

    /// `pages` pages of MAP_SHARED|MAP_ANONYMOUS memory (shmem); the caller unmaps them.
    func mapShared(_ pages: Int, protection: Int32 = PROT_READ | PROT_WRITE) throws -> UnsafeMutableRawPointer {
        let p = mmap(nil, pages * 4096, protection, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        try #require(p != MAP_FAILED)
        return try #require(p)
    }

    /// A forked child that does nothing but wait to be killed; it inherits every MAP_SHARED
    /// mapping of the test process at the same addresses. The child only calls pause(), which
    /// is safe after fork in a threaded process.
    func forkPauser() throws -> pid_t {
        let pid = fork()
        if pid == 0 {
            while true { pause() }
        }
        try #require(pid > 0)
        return pid
    }

    @Test func sharedAnonymousMemoryIsTheServersMappingOfTheObject() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let buffer = try mapShared(4)
        defer { munmap(buffer, 4 * 4096) }
        for i in 0..<(4 * 4096) { buffer.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }

        let found = try runs(memory, address(buffer), 4 * 4096, writable: true)
        #expect(found.reduce(0) { $0 + $1.length } == 4 * 4096)
        for run in found {
            // Server memory, not the remote window, and not the client VA itself.
            #expect(run.physical < HostPhysicalMemory.remoteWindowStart)
            #expect(run.backingPageSize == 4096)
        }
        #expect(found[0].physical != address(buffer))
        let physical = found[0].physical
        #expect(host.sharedObjects.count == 1)
        #expect(host.remoteBlockCount == 0)

        // A DMA read sees the process's bytes, a DMA write lands in its mapping, and the
        // process's own writes are seen — both ways, through the host and through the memory.
        var back = [UInt8](repeating: 0, count: 100)
        try back.withUnsafeMutableBytes { try host.read(physical: physical + 10, into: $0.baseAddress!, count: 100) }
        #expect(back == (10..<110).map { UInt8($0) })
        let pattern = [UInt8](repeating: 0xA5, count: 64)
        try pattern.withUnsafeBytes { try host.write(physical: physical + 4000, from: $0.baseAddress!, count: 64) }
        #expect(buffer.load(fromByteOffset: 4000, as: UInt8.self) == 0xA5)
        #expect(buffer.load(fromByteOffset: 4063, as: UInt8.self) == 0xA5)
        buffer.storeBytes(of: 0xCAFE_F00D as UInt32, toByteOffset: 8192, as: UInt32.self)
        var word: UInt32 = 0
        try memory.read(physical: physical + 8192, into: &word, count: 4)
        #expect(word == 0xCAFE_F00D)
        word = 0x0BAD_CAFE
        try memory.write(physical: physical + 8196, from: &word, count: 4)
        #expect(buffer.load(fromByteOffset: 8196, as: UInt32.self) == 0x0BAD_CAFE)
        var byte: UInt8 = 0x5A
        try memory.writeUser(offset: address(buffer) + 5, from: &byte, count: 1)
        #expect(buffer.load(fromByteOffset: 5, as: UInt8.self) == 0x5A)

        // The same pages every time, also for a sub-range and for another address space.
        #expect(try runs(memory, address(buffer), 4 * 4096) == found.map {
            PhysicalRun(physical: $0.physical, length: $0.length, backingPageSize: $0.backingPageSize)
        })
        let sub = try runs(memory, address(buffer) + 2 * 4096, 4096)
        #expect(sub.count == 1 && sub[0].physical == physical + 2 * 4096 || found.count > 1)
        let other = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        #expect(try runs(other, address(buffer), 4 * 4096, writable: true) == found)
        #expect(host.sharedObjects.count == 1)

        // Nothing to preserve: the server's mapping already keeps the pages.
        #expect(try memory.preservePinnedPages() == 0)
        try memory.read(physical: physical + 8192, into: &word, count: 4)
        #expect(word == 0xCAFE_F00D)

        // The memory only reaches what it resolved; other server addresses are not its own.
        var stackByte: UInt8 = 0
        expectEFAULT { try memory.read(physical: address(&stackByte), into: &byte, count: 1) }
        expectEFAULT { try memory.read(physical: physical + 4 * 4096 - 1, into: &word, count: 4) }
        expectEFAULT { try memory.read(physical: physical, into: &byte, count: -1) }
    }

    @Test func sharedAndPrivateMappingsInOneRange() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        // Three pages: private, shared, private — made by replacing the middle page.
        let buffer = try mapPages(3)
        defer { munmap(buffer, 3 * 4096) }
        let middle = mmap(buffer + 4096, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        try #require(middle == buffer + 4096)
        for page in 0..<3 { buffer.storeBytes(of: UInt32(page + 1), toByteOffset: page * 4096, as: UInt32.self) }

        let found = try runs(memory, address(buffer), 3 * 4096, writable: true)
        try #require(found.count == 3)
        #expect(found[0].physical >= HostPhysicalMemory.remoteWindowStart && found[0].length == 4096)
        #expect(found[1].physical < HostPhysicalMemory.remoteWindowStart && found[1].length == 4096)
        #expect(found[2].physical >= HostPhysicalMemory.remoteWindowStart && found[2].length == 4096)
        var value: UInt32 = 0
        for (page, run) in found.enumerated() {
            try host.read(physical: run.physical, into: &value, count: 4)
            #expect(value == UInt32(page + 1))
        }
        // The range reads across all three through the user-VA copy too.
        var all = [UInt8](repeating: 0, count: 3 * 4096)
        try all.withUnsafeMutableBytes { try memory.readUser(offset: address(buffer), into: $0.baseAddress!, count: 3 * 4096) }
        #expect(all[4096] == 2 && all[8192] == 3)
        // Only the private pages are copied when preserving.
        #expect(try memory.preservePinnedPages() == 2 * 4096)
    }

    @Test func aForkedChildsSharedPagesOutliveIt() throws {
        let host = HostPhysicalMemory()
        let buffer = try mapShared(4)
        defer { munmap(buffer, 4 * 4096) }
        buffer.storeBytes(of: 0x1111_1111 as UInt32, as: UInt32.self)
        let child = try forkPauser()
        var reaped = false
        defer { if !reaped { killAndReap(child) } }

        var childMemory: RemoteProcessMemory? = try RemoteProcessMemory(pid: child, uid: getuid(), physicalMemory: host)
        let parentMemory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let fromChild = try runs(childMemory!, address(buffer), 4 * 4096, writable: true)
        // The same object page has the same physical address whichever process pinned it.
        #expect(try runs(parentMemory, address(buffer), 4 * 4096, writable: true) == fromChild)
        #expect(try runs(parentMemory, address(buffer) + 4096, 4096)[0].physical == fromChild[0].physical + 4096
                || fromChild.count > 1)
        let physical = fromChild[0].physical
        #expect(physical < HostPhysicalMemory.remoteWindowStart)
        #expect(host.sharedObjects.count == 1)

        // The child exits the way a client does: it asks to be preserved first.
        #expect(try childMemory!.preservePinnedPages() == 0)
        killAndReap(child)
        reaped = true
        #expect(!childMemory!.isAlive)

        // The parent's writes to its own mapping are what a DMA through the child's pins sees,
        // and a DMA write lands in the parent's mapping — the fork_gone case.
        buffer.storeBytes(of: 0x2222_2222 as UInt32, toByteOffset: 4096, as: UInt32.self)
        var word: UInt32 = 0
        try childMemory!.read(physical: physical + 4096, into: &word, count: 4)
        #expect(word == 0x2222_2222)
        try host.read(physical: physical, into: &word, count: 4)
        #expect(word == 0x1111_1111)
        word = 0x3333_3333
        try childMemory!.write(physical: physical + 8192, from: &word, count: 4)
        #expect(buffer.load(fromByteOffset: 8192, as: UInt32.self) == 0x3333_3333)
        // New pins need the child's mm, which is gone.
        expectEFAULT { _ = try runs(childMemory!, address(buffer), 4096) }

        // The mappings stay while any address space that resolved through them lives...
        childMemory = nil
        #expect(host.sharedObjects.count == 1)
        try host.read(physical: physical + 4096, into: &word, count: 4)
        #expect(word == 0x2222_2222)
        #expect(try runs(parentMemory, address(buffer), 4 * 4096, writable: true) == fromChild)
    }

    @Test func sharedMappingsGoWithTheirLastUser() throws {
        let host = HostPhysicalMemory()
        let buffer = try mapShared(2)
        defer { munmap(buffer, 2 * 4096) }
        var first: RemoteProcessMemory? = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        var second: RemoteProcessMemory? = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        _ = try runs(first!, address(buffer), 8192)
        _ = try runs(second!, address(buffer), 4096)
        #expect(host.sharedObjects.count == 1)
        first = nil
        #expect(host.sharedObjects.count == 1)
        second = nil
        #expect(host.sharedObjects.count == 0)
        // The test's own mapping is untouched.
        buffer.storeBytes(of: 7 as UInt8, as: UInt8.self)
        #expect(buffer.load(as: UInt8.self) == 7)
    }

    @Test func readOnlySharedMappingsRefuseWritablePins() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        let buffer = try mapShared(2, protection: PROT_READ)
        defer { munmap(buffer, 2 * 4096) }
        expectEFAULT { _ = try runs(memory, address(buffer), 8192, writable: true) }
        let found = try runs(memory, address(buffer), 8192)
        #expect(found.allSatisfy { $0.physical < HostPhysicalMemory.remoteWindowStart })
        var byte: UInt8 = 1
        try memory.read(physical: found[0].physical, into: &byte, count: 1)
        #expect(byte == 0)
    }

    @Test func aSharedFileIsPinnableOnlyWithinItsSize() throws {
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        // A tmpfs file one page long, mapped two pages long: the second page does not exist
        // (touching it is SIGBUS), so pinning it fails as the kernel's pin would.
        let path = "/dev/shm/uiommufd-test-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        unlink(path)
        defer { close(fd) }
        try #require(ftruncate(fd, 4096) == 0)
        let p = try #require(mmap(nil, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        try #require(p != MAP_FAILED)
        defer { munmap(p, 8192) }
        p.storeBytes(of: 0x77 as UInt8, toByteOffset: 100, as: UInt8.self)
        expectEFAULT { _ = try runs(memory, address(p), 8192) }
        let found = try runs(memory, address(p), 4096, writable: true)
        #expect(found.count == 1 && found[0].physical < HostPhysicalMemory.remoteWindowStart)
        var byte: UInt8 = 0
        try host.read(physical: found[0].physical + 100, into: &byte, count: 1)
        #expect(byte == 0x77)
        // A write through the file descriptor is seen too: it is the same page cache page.
        var fresh: UInt8 = 0x99
        #expect(pwrite(fd, &fresh, 1, 200) == 1)
        try host.read(physical: found[0].physical + 200, into: &byte, count: 1)
        #expect(byte == 0x99)
    }

    @Test func hugeSharedPagesKeepTheirSize() throws {
        let hugePage = 2 << 20
        let p = mmap(nil, 2 * hugePage, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0)
        guard let p, p != MAP_FAILED else { return }    // no huge page pool on this machine
        defer { munmap(p, 2 * hugePage) }
        let host = HostPhysicalMemory()
        let memory = try RemoteProcessMemory(pid: getpid(), uid: getuid(), physicalMemory: host)
        p.storeBytes(of: 0xABCD as UInt16, toByteOffset: hugePage + 6, as: UInt16.self)
        let found = try runs(memory, address(p), UInt64(2 * hugePage), writable: true)
        #expect(found.reduce(0) { $0 + $1.length } == UInt64(2 * hugePage))
        for run in found {
            #expect(run.physical < HostPhysicalMemory.remoteWindowStart)
            #expect(run.backingPageSize == UInt64(hugePage))
            #expect(run.physical % UInt64(hugePage) == 0)
        }
        // A 4 KiB page in the middle of a huge page is that huge page's, at the same address
        // as in the whole range's runs.
        let inner = try runs(memory, address(p) + UInt64(hugePage) + 4096, 4096)
        #expect(inner.count == 1 && inner[0].backingPageSize == UInt64(hugePage))
        #expect(found.count > 1 || inner[0].physical == found[0].physical + UInt64(hugePage) + 4096)
        var value: UInt16 = 0
        try host.read(physical: inner[0].physical - 4096 + 6, into: &value, count: 2)
        #expect(value == 0xABCD)
    }

    @Test func mapsLinesParseWithTheirFileFields() throws {
        let line = Array("7f6422254000-7f6422256000 rw-s 00002000 fe:01 60852                      /dev/zero (deleted)".utf8)
        let vma = try #require(LocalProcessMemory.parse(line))
        #expect(vma.start == 0x7f64_2225_4000 && vma.end == 0x7f64_2225_6000)
        #expect(vma.readable && vma.writable && vma.shared)
        #expect(vma.fileOffset == 0x2000 && vma.inode == 60852)
        #expect(vma.device == LocalProcessMemory.encodeDevice(major: 0xfe, minor: 1))
        #expect(vma.device == 0xfe01)
        let anon = try #require(LocalProcessMemory.parse(Array("1000-2000 r--p 00000000 00:00 0 ".utf8)))
        #expect(!anon.shared && anon.inode == 0 && !anon.writable)
        // Garbage and overflow never parse into something else.
        #expect(LocalProcessMemory.parse(Array("zzz".utf8)) == nil)
        #expect(LocalProcessMemory.parse(Array("1000-".utf8)) == nil)
        #expect(LocalProcessMemory.parse(Array("11112222333344445555-2000 rw-p".utf8)) == nil)
        let cut = try #require(LocalProcessMemory.parse(Array("1000-2000 rw-s 0000".utf8)))
        #expect(cut.shared && cut.inode == 0)
    }

    @Test func rangeSetMergesAndFindsGaps() {
        var set = AddressRangeSet()
        set.insert(from: 0x3000, to: 0x5000)
        set.insert(from: 0x1000, to: 0x2000)
        set.insert(from: 0x2000, to: 0x3000)          // touching: one range
        #expect(set.ranges.count == 1 && set.ranges[0] == (0x1000, 0x5000))
        set.insert(from: 0x8000, to: 0x9000)
        #expect(set.contains(from: 0x1000, to: 0x5000) && !set.contains(from: 0x4000, to: 0x8001))
        #expect(!set.contains(from: 0x5000, to: 0x6000) && set.contains(from: 0x8000, to: 0x8001))
        let gaps = set.gaps(from: 0, to: 0xA000)
        #expect(gaps.count == 3 && gaps[0] == (0, 0x1000) && gaps[1] == (0x5000, 0x8000) && gaps[2] == (0x9000, 0xA000))
        #expect(set.gaps(from: 0x1000, to: 0x5000).isEmpty)
        set.insert(from: 0, to: 0x10000)
        #expect(set.ranges.count == 1 && set.ranges[0] == (0, 0x10000))
    }
}
