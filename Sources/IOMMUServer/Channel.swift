// One process's private channel to one served file: requests in, replies out, and the
// call-backs a request may need (installing or fetching descriptors in the client).
//
// `Channel` is the transport (the serving loop, replies, call-backs); `ContextChannel` serves
// an iommufd context, `DeviceChannel` (ServedDevice.swift) a VFIO device file.

import CUIOMMUWire
import IOMMUABI
import IOMMUEngine
import ProcessMemory
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

class Channel: @unchecked Sendable {
    let fd: Int32
    let pid: Int32
    let uid: UInt32
    let user: ChannelUserMemory
    private let buffer: UnsafeMutableRawPointer
    private let bufferSize = MemoryLayout<uiommu_wire_request>.size + Int(UIOMMU_WIRE_PAYLOAD_MAX)

    init(fd: Int32, pid: Int32, uid: UInt32) {
        self.fd = fd; self.pid = pid; self.uid = uid
        user = ChannelUserMemory(pid: pid)
        buffer = .allocate(byteCount: bufferSize, alignment: 16)
    }

    deinit {
        buffer.deallocate()
        close(fd)
    }

    /// What HELLO's reply says about the file (`aux`): 1 for a VFIO device.
    var helloAux: UInt64 { 0 }

    /// One request (overridden per kind of file).
    func handle(_ request: uiommu_wire_request, payload: UnsafeRawBufferPointer) {
        reply(-Int64(EINVAL))
    }

    /// The process closed the channel or died.
    func ended() {}

    // MARK: Serving

    func serve() {
        reply(0, aux: helloAux)   // HELLO accepted
        let headerSize = MemoryLayout<uiommu_wire_request>.size
        while true {
            var received: Int32 = -1
            let n = uiommu_wire_receive(fd, buffer, bufferSize, &received)
            if received >= 0 { close(received) }   // requests carry no descriptors
            if n == 0 || (n < 0 && n != -Int(EMSGSIZE)) { break }
            guard n >= headerSize else { reply(-Int64(EINVAL)); continue }
            let request = buffer.loadUnaligned(as: uiommu_wire_request.self)
            let payloadLength = n - headerSize
            guard Int(request.length) == payloadLength else { reply(-Int64(EINVAL)); continue }
            handle(request, payload: UnsafeRawBufferPointer(start: buffer + headerSize, count: payloadLength))
        }
        ended()
    }

    func reply(_ result: Int64, payload: UnsafeRawBufferPointer? = nil, aux: UInt64 = 0) {
        send(op: UInt32(UIOMMU_WIRE_REPLY.rawValue), result: result, aux: aux, payload: payload, fd: -1)
    }

    func send(op: UInt32, result: Int64, aux: UInt64, payload: UnsafeRawBufferPointer?, fd passing: Int32) {
        var header = uiommu_wire_reply()
        header.op = op
        header.length = UInt32(payload?.count ?? 0)
        header.result = result
        header.aux = aux
        _ = withUnsafeBytes(of: &header) { h in
            uiommu_wire_send(fd, h.baseAddress, h.count, payload?.baseAddress, payload?.count ?? 0, passing)
        }
    }

    /// Waits for the client's CALLBACK_RESULT; nil if the channel broke.
    func callbackResult() -> (value: Int64, fd: Int32)? {
        var request = uiommu_wire_request()
        var received: Int32 = -1
        let n = withUnsafeMutableBytes(of: &request) { uiommu_wire_receive(fd, $0.baseAddress, $0.count, &received) }
        guard n == MemoryLayout<uiommu_wire_request>.size, request.op == UInt32(UIOMMU_WIRE_CALLBACK_RESULT.rawValue) else {
            if received >= 0 { close(received) }
            return nil
        }
        return (request.value, received)
    }

    /// The file behind the client's descriptor `number` (a descriptor of our own, to close),
    /// or nil (EBADF).
    func fetchDescriptor(_ number: Int32) -> Int32? {
        guard number >= 0 else { return nil }
        send(op: UInt32(UIOMMU_WIRE_CB_GET_FD.rawValue), result: Int64(number), aux: 0, payload: nil, fd: -1)
        guard let answer = callbackResult() else { return nil }
        guard answer.value == 0, answer.fd >= 0 else {
            if answer.fd >= 0 { close(answer.fd) }
            return nil
        }
        return answer.fd
    }
}

/// A channel of an iommufd context.
final class ContextChannel: Channel, @unchecked Sendable {
    let context: ServedContext
    /// The shared context as this process sees it (its memory, its user access, its fds).
    private(set) var view: IOMMUFDFile!

    init(fd: Int32, pid: Int32, uid: UInt32, context: ServedContext) throws(IOMMUError) {
        self.context = context
        let server = context.server
        let memory = try server.memory(pid: pid, uid: uid)
        super.init(fd: fd, pid: pid, uid: uid)
        var options = server.options
        options.pinPolicy = ProcessFacts.pinPolicy(pid: pid, granted: server.grantedCapabilities)
        options.canSetRlimitMode = ProcessFacts.hasSysResource(pid: pid, granted: server.grantedCapabilities)
        if let trace = server.options.trace {
            let prefix = "[pid \(pid) #\(context.serial)] "
            options.trace = { trace(prefix + $0) }
        }
        view = IOMMUFDFile(sharing: context.file, memory: memory, user: user, broker: ChannelBroker(channel: self),
                           options: options)
    }

    override func handle(_ request: uiommu_wire_request, payload: UnsafeRawBufferPointer) {
        switch Int(request.op) {
        case Int(UIOMMU_WIRE_IOCTL.rawValue):
            if context.hasAuxiliaries { context.reapClosedAuxiliaries() }
            user.setWindow(start: request.argument, bytes: payload)
            let result = view.ioctl(UInt(truncatingIfNeeded: request.request), request.argument)
            user.clearWindow()
            if context.hasAuxiliaries { context.syncReadiness() }
            reply(result)
        case Int(UIOMMU_WIRE_AUX_READ.rawValue):
            guard let aux = context.auxiliary(id: request.request) else { return reply(-Int64(EBADF)) }
            let count = Int(min(request.argument, UInt64(UIOMMU_WIRE_PAYLOAD_MAX)))
            let data = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
            defer { data.deallocate() }
            let n = aux.file.read(into: data, count: count)
            context.syncReadiness()
            reply(Int64(n), payload: n > 0 ? UnsafeRawBufferPointer(start: data, count: n) : nil,
                  aux: aux.file.isReadable ? 1 : 0)
        case Int(UIOMMU_WIRE_AUX_WRITE.rawValue):
            guard let aux = context.auxiliary(id: request.request) else { return reply(-Int64(EBADF)) }
            let n = payload.count == 0 ? 0 : aux.file.write(from: payload.baseAddress!, count: payload.count)
            context.syncReadiness()
            reply(Int64(n))
        case Int(UIOMMU_WIRE_AUX_CLOSED.rawValue):
            context.reapClosedAuxiliaries()
            reply(0)
        case Int(UIOMMU_WIRE_CLOSED.rawValue):
            // The process closed its last descriptor; if it was the last anywhere, release the
            // context now so the client's close() returns after the release, as the kernel's.
            if uiommu_wire_hung_up(context.connection) != 0 { context.closeConnection() }
            reply(0)
        case Int(UIOMMU_WIRE_EXITING.rawValue):
            context.server.preserveMemory(pid: pid)
            reply(0)
        default:
            reply(-Int64(EINVAL))
        }
    }

    // MARK: Call-backs (from the ABI layer, during a request)

    /// Hands the client a new auxiliary descriptor for `file`; returns its number or -errno.
    func installAuxiliary(_ file: any AuxiliaryFile) -> Int32 {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            return -Int32(errno)
        }
        var st = stat()
        fstat(pair[1], &st)
        let aux = context.addAuxiliary(file, serverEnd: pair[0], dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        send(op: UInt32(UIOMMU_WIRE_CB_INSTALL_FD.rawValue), result: 0, aux: aux.id, payload: nil, fd: pair[1])
        close(pair[1])
        guard let answer = callbackResult() else { return -Int32(EBADF) }
        if answer.fd >= 0 { close(answer.fd) }
        // On failure the client closed its end: the next reap releases the file.
        return Int32(truncatingIfNeeded: answer.value)
    }
}
