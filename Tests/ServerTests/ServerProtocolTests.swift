// The server's wire protocol, driven by hand from this process (which is also the "client"
// whose memory the server reads and writes): well-formed calls work, and malformed or random
// messages on connections and channels never take the server down or disturb another client.

import CUIOMMUWire
import IOMMUServer
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A server on a private socket, run by a background thread.
final class TestServer: @unchecked Sendable {
    let server: IOMMUServer
    let path: String

    init(selftestOps: Bool = false) throws {
        var template = Array("/tmp/uiommufd-test-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = String(cString: dir!) + "/s"
        server = IOMMUServer(configuration: ServerConfiguration(socketPath: path, socketMode: 0o600, selftestOps: selftestOps))
        try server.listen()
        let s = server
        var thread = pthread_t()
        final class Box { let s: IOMMUServer; init(_ s: IOMMUServer) { self.s = s } }
        let box = Unmanaged.passRetained(Box(s)).toOpaque()
        pthread_create(&thread, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().s.run()
            return nil
        }, box)
        pthread_detach(thread)
    }

    deinit {
        server.stop()
        rmdir(String(path.dropLast(2)))
    }

    /// A connected socket: one open of /dev/iommu.
    func connect() -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) == 0 }
        }
        precondition(ok, "cannot connect to the test server")
        return fd
    }

    /// Waits (up to ~2 s) until the server reports no open context, and returns its summary.
    func settledStatus() -> String {
        var line = server.statusLines()[0]
        for _ in 0..<200 where !line.hasPrefix("contexts 0 open") {
            usleep(10_000)
            line = server.statusLines()[0]
        }
        return line
    }
}

/// One process's channel on a connection.
struct Channel {
    let fd: Int32

    /// Opens a channel through `connection` (HELLO with one end of a socket pair).
    static func open(on connection: Int32) -> Channel? {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return nil }
        var hello = uiommu_wire_request()
        hello.op = UInt32(UIOMMU_WIRE_HELLO.rawValue)
        let sent = withUnsafeBytes(of: &hello) { uiommu_wire_send(connection, $0.baseAddress, $0.count, nil, 0, pair[1]) }
        close(pair[1])
        let channel = Channel(fd: pair[0])
        guard sent == 0, let reply = channel.receive(), reply.result == 0 else { close(pair[0]); return nil }
        return channel
    }

    /// Sends one request without payload and returns the reply.
    func call(_ op: UIOMMU_WIRE_OP_TYPE, request: UInt64 = 0, argument: UInt64 = 0, value: Int64 = 0) -> uiommu_wire_reply? {
        var r = uiommu_wire_request()
        r.op = UInt32(op.rawValue)
        r.request = request
        r.argument = argument
        r.value = value
        guard withUnsafeBytes(of: &r, { uiommu_wire_send(fd, $0.baseAddress, $0.count, nil, 0, -1) }) == 0 else { return nil }
        return receive()
    }

    func receive() -> uiommu_wire_reply? {
        let size = MemoryLayout<uiommu_wire_reply>.size + 65536
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        var fd: Int32 = -1
        let n = uiommu_wire_receive(self.fd, buffer, size, &fd)
        if fd >= 0 { close(fd) }
        guard n >= MemoryLayout<uiommu_wire_reply>.size else { return nil }
        return buffer.loadUnaligned(as: uiommu_wire_reply.self)
    }

    /// An ioctl whose struct is at `arg` in this process (sent inline, as the client does).
    func ioctl(_ request: UInt64, _ arg: UnsafeMutableRawPointer, size: Int) -> Int64? {
        var r = uiommu_wire_request()
        r.op = UInt32(UIOMMU_WIRE_IOCTL.rawValue)
        r.length = UInt32(size)
        r.request = request
        r.argument = UInt64(UInt(bitPattern: arg))
        let sent = withUnsafeBytes(of: &r) { uiommu_wire_send(fd, $0.baseAddress, $0.count, arg, size, -1) }
        guard sent == 0 else { return nil }
        return receive()?.result
    }

    /// IOMMU_IOAS_ALLOC: the new IOAS ID, or nil.
    func allocIOAS() -> UInt32? {
        var cmd: (UInt32, UInt32, UInt32) = (12, 0, 0)
        let rc = withUnsafeMutableBytes(of: &cmd) { ioctl(0x3b81, $0.baseAddress!, size: 12) }
        return rc == 0 ? cmd.2 : nil
    }

    func destroy(_ id: UInt32) -> Int64? {
        var cmd: (UInt32, UInt32) = (8, id)
        return withUnsafeMutableBytes(of: &cmd) { ioctl(0x3b80, $0.baseAddress!, size: 8) }
    }
}

typealias UIOMMU_WIRE_OP_TYPE = uiommu_wire_op

/// Sends a connection's first message (IDENTIFY, VFIO_OPEN, VFIO_GROUP_OPEN) and returns the
/// answer the server sends on the connection (skipping readiness messages), or nil.
func firstExchange(_ connection: Int32, _ op: uiommu_wire_op, request: UInt64 = 0, fd: Int32 = -1) -> uiommu_wire_reply? {
    var r = uiommu_wire_request()
    r.op = UInt32(op.rawValue)
    r.request = request
    guard withUnsafeBytes(of: &r, { uiommu_wire_send(connection, $0.baseAddress, $0.count, nil, 0, fd) }) == 0 else { return nil }
    while true {
        var reply = uiommu_wire_reply()
        var received: Int32 = -1
        let n = withUnsafeMutableBytes(of: &reply) { uiommu_wire_receive(connection, $0.baseAddress, $0.count, &received) }
        if received >= 0 { close(received) }
        guard n == MemoryLayout<uiommu_wire_reply>.size else { return nil }
        if reply.op == UInt32(UIOMMU_WIRE_REPLY.rawValue) { return reply }
    }
}

/// A deterministic random generator (SplitMix64) so a failure is reproducible from its seed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

@Suite("Server wire protocol", .serialized)
struct ServerProtocolTests {
    @Test func ioctlsRoundTripThroughTheServer() throws {
        let server = try TestServer()
        let connection = server.connect()
        let channel = try #require(Channel.open(on: connection))
        let ioas = try #require(channel.allocIOAS())
        #expect(ioas >= 1)
        // The result was written into this process's memory by the server (process_vm_writev).
        #expect(channel.destroy(ioas) == 0)
        #expect(channel.destroy(ioas) == -Int64(ENOENT))
        // An unreadable struct: EFAULT, as the kernel.
        var r = uiommu_wire_request()
        r.op = UInt32(UIOMMU_WIRE_IOCTL.rawValue)
        r.request = 0x3b81
        r.argument = 16
        _ = withUnsafeBytes(of: &r) { uiommu_wire_send(channel.fd, $0.baseAddress, $0.count, nil, 0, -1) }
        #expect(channel.receive()?.result == -Int64(EFAULT))
        close(channel.fd)
        close(connection)
        #expect(server.settledStatus() == "contexts 0 open (1 opened), objects 0, pinned pages 0")
    }

    @Test func contextLivesWhileAnyHolderHasTheConnection() throws {
        let server = try TestServer()
        let connection = server.connect()
        let copy = dup(connection)
        let channel = try #require(Channel.open(on: connection))
        let ioas = try #require(channel.allocIOAS())
        close(connection)
        // Still held by `copy`: the IOAS is still there.
        var closed = uiommu_wire_request()
        closed.op = UInt32(UIOMMU_WIRE_CLOSED.rawValue)
        _ = withUnsafeBytes(of: &closed) { uiommu_wire_send(channel.fd, $0.baseAddress, $0.count, nil, 0, -1) }
        #expect(channel.receive()?.result == 0)
        #expect(server.server.statusLines()[0].hasPrefix("contexts 1 open"))
        #expect(channel.destroy(ioas) == 0)
        close(copy)
        // The last holder gone: CLOSED releases the context before it answers.
        _ = withUnsafeBytes(of: &closed) { uiommu_wire_send(channel.fd, $0.baseAddress, $0.count, nil, 0, -1) }
        #expect(channel.receive()?.result == 0)
        #expect(server.server.statusLines()[0].hasPrefix("contexts 0 open"))
        close(channel.fd)
    }

    @Test func vfioDeviceConnectionsRefuseMalformedCalls() throws {
        let server = try TestServer()
        // No such device: ENOENT, answered on the connection.
        let missing = server.connect()
        #expect(firstExchange(missing, UIOMMU_WIRE_VFIO_OPEN, request: 1 << 40)?.result == -Int64(ENOENT))
        close(missing)
        let connection = server.connect()
        let opened = try #require(firstExchange(connection, UIOMMU_WIRE_VFIO_OPEN, request: 0))
        #expect(opened.result == 0)
        #expect(opened.aux >> 32 == 237)   // the vfio-dev character device major
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        var hello = uiommu_wire_request()
        hello.op = UInt32(UIOMMU_WIRE_HELLO.rawValue)
        _ = withUnsafeBytes(of: &hello) { uiommu_wire_send(connection, $0.baseAddress, $0.count, nil, 0, pair[1]) }
        close(pair[1])
        let channel = Channel(fd: pair[0])
        let greeting = try #require(channel.receive())
        #expect(greeting.result == 0 && greeting.aux == 1)   // a VFIO device
        // Unbound: VFIO_DEVICE_GET_INFO and region access are EINVAL, as the kernel's.
        var info: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (24, 0, 0, 0, 0, 0)
        #expect(withUnsafeMutableBytes(of: &info) { channel.ioctl(0x3b6b, $0.baseAddress!, size: 24) } == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_RW, request: 0, argument: 7 << 40, value: 4)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_RW, request: 9, argument: 0, value: 4)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_RW, request: 0, argument: UInt64.max, value: 4)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_RW, request: 0, argument: 0, value: -1)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_MMAP, request: 4096, argument: 0, value: 1)?.result == -Int64(EINVAL))
        // No mapping: no access through one, no reference to drop.
        #expect(channel.call(UIOMMU_WIRE_VFIO_MMIO, request: 4 << 8, argument: 0)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_MAP_RELEASE)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_MAP_RETAIN)?.result == 0)
        #expect(channel.call(UIOMMU_WIRE_VFIO_MMIO, request: 3 << 8, argument: 0)?.result == -Int64(EINVAL))   // width 3
        #expect(channel.call(UIOMMU_WIRE_VFIO_MMIO, request: 9 | 4 << 8, argument: 0)?.result == -Int64(EINVAL))   // BAR 9
        #expect(channel.call(UIOMMU_WIRE_VFIO_MMIO, request: 4 << 8, argument: UInt64.max - 1)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_VFIO_MMIO, request: 4 << 8 | 1 << 20, argument: 0)?.result == -Int64(EINVAL))
        #expect(channel.call(UIOMMU_WIRE_AUX_READ, request: 1, argument: 8)?.result == -Int64(EINVAL))
        #expect(server.server.statusLines().contains("VFIO device files 1 open"))
        // The connection closed with a mapping still held: the file lives until the channel ends.
        close(connection)
        #expect(channel.call(UIOMMU_WIRE_CLOSED)?.result == 0)
        #expect(server.server.statusLines().contains("VFIO device files 1 open"))
        close(channel.fd)
        var gone = false
        for _ in 0..<200 where !gone {
            gone = !server.server.statusLines().contains { $0.hasPrefix("VFIO device files") }
            if !gone { usleep(10_000) }
        }
        #expect(gone)
        // Group holds: an unknown group is ENOENT; the same group twice is EBUSY.
        let g0 = server.connect()
        #expect(firstExchange(g0, UIOMMU_WIRE_VFIO_GROUP_OPEN, request: UInt64.max)?.result == -Int64(ENOENT))
        close(g0)
        #expect(server.settledStatus().hasPrefix("contexts 0 open (0 opened)"))
    }

    @Test func identifyRecordsTheClientEndOnce() throws {
        let server = try TestServer()
        let connection = server.connect()
        #expect(firstExchange(connection, UIOMMU_WIRE_IDENTIFY, fd: connection)?.result == 0)
        // Another context cannot claim the same identity; a non-socket is refused.
        let other = server.connect()
        #expect(firstExchange(other, UIOMMU_WIRE_IDENTIFY, fd: connection)?.result == -Int64(EINVAL))
        let third = server.connect()
        #expect(firstExchange(third, UIOMMU_WIRE_IDENTIFY, fd: 2)?.result ?? 0 <= 0)
        close(third); close(other); close(connection)
        #expect(server.settledStatus().hasPrefix("contexts 0 open"))
    }

    /// Random messages on connections and channels: random ops, lengths, values, descriptors,
    /// truncated and oversized datagrams, channels closed mid-call. The server must keep
    /// serving a well-behaved client throughout and end with nothing left.
    @Test(arguments: [UInt64(1), 2, 3, 4])
    func randomMessagesNeverHurtTheServer(seed: UInt64) throws {
        let server = try TestServer(selftestOps: true)
        var rng = SplitMix(state: seed)
        let good = server.connect()
        let goodChannel = try #require(Channel.open(on: good))
        // Scratch memory the random ioctls may point at (the server writes results there).
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
        defer { scratch.deallocate() }
        var payload = [UInt8](repeating: 0, count: 9000)
        for round in 0..<60 {
            let connection = server.connect()
            // Every third connection is a VFIO device file, every seventh a group hold.
            if round % 3 == 1 {
                _ = firstExchange(connection, UIOMMU_WIRE_VFIO_OPEN, request: UInt64.random(in: 0...4, using: &rng))
            } else if round % 7 == 2 {
                _ = firstExchange(connection, UIOMMU_WIRE_VFIO_GROUP_OPEN, request: UInt64.random(in: 0...40, using: &rng))
            }
            var channels: [Channel] = []
            for _ in 0..<Int.random(in: 0...2, using: &rng) {
                if let c = Channel.open(on: connection) { channels.append(c) }
            }
            for _ in 0..<40 {
                let length = Int.random(in: 0...payload.count, using: &rng)
                for i in 0..<min(length, 256) { payload[i] = UInt8.random(in: 0...255, using: &rng) }
                var header = uiommu_wire_request()
                header.op = [0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 20, 21, 22, 32, 33, 34, 35, 36, 64, 65, 0xffff_ffff][Int.random(in: 0..<21, using: &rng)]
                header.length = Bool.random(using: &rng) ? UInt32(length) : UInt32.random(in: 0...UInt32.max, using: &rng)
                header.request = [0x3b80, 0x3b81, 0x3b84, 0x3b85, 0x3b87, 0x3ba0, 0x3b64, 0x3b6b, 0x3b6c, 0x3b6e, 0x3b76,
                                  0x400, 0x10800, UInt64.random(in: 0...UInt64.max, using: &rng)][Int.random(in: 0..<14, using: &rng)]
                header.argument = [0, 1, UInt64(UInt(bitPattern: scratch)), UInt64(UInt(bitPattern: scratch)) + 4096 - 8, 0xffff_ffff_ffff_f000][Int.random(in: 0..<5, using: &rng)]
                header.value = Int64.random(in: Int64.min...Int64.max, using: &rng)
                for i in 0..<min(64, 8192) { scratch.storeBytes(of: UInt8.random(in: 0...255, using: &rng), toByteOffset: i, as: UInt8.self) }
                scratch.storeBytes(of: UInt32.random(in: 0...96, using: &rng), as: UInt32.self)
                let target = channels.isEmpty || Int.random(in: 0..<5, using: &rng) == 0 ? connection : channels.randomElement(using: &rng)!.fd
                let passFD: Int32 = Int.random(in: 0..<8, using: &rng) == 0 ? dup(2) : -1
                _ = withUnsafeBytes(of: &header) { h in
                    payload.withUnsafeBytes { uiommu_wire_send(target, h.baseAddress, h.count, $0.baseAddress, Int.random(in: 0...length, using: &rng), passFD) }
                }
                if passFD >= 0 { close(passFD) }
                // Drain whatever came back (replies, call-backs we never answer).
                for c in channels {
                    var buffer = [UInt8](repeating: 0, count: 70000)
                    while buffer.withUnsafeMutableBytes({ recv(c.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
                }
            }
            for c in channels { close(c.fd) }
            close(connection)
            // The good client is unaffected.
            let ioas = try #require(goodChannel.allocIOAS(), "round \(round)")
            #expect(goodChannel.destroy(ioas) == 0)
        }
        close(goodChannel.fd)
        close(good)
        #expect(server.settledStatus().hasPrefix("contexts 0 open"))
        var devicesGone = false
        for _ in 0..<200 where !devicesGone {
            devicesGone = !server.server.statusLines().contains { $0.hasPrefix("VFIO device files") }
            if !devicesGone { usleep(10_000) }
        }
        #expect(devicesGone)
    }
}
