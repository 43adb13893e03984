// One connection = one open file of /dev/iommu (an iommufd context), and the channels through
// which processes holding that connection make calls.
//
// Lifetimes, as the kernel's:
//  - the context is released when its last holder goes: every client descriptor of the
//    connection closed (the connection hangs up) and every auxiliary file that holds it
//    (selftest access objects) released — IOMMUFDFile counts these holders;
//  - an auxiliary file is released when no process holds a descriptor of it any more: the
//    server keeps one end of a socket pair per file and sees that as a hang-up of its end;
//  - a channel ends when its process closes it (its last descriptor of the file closed, or
//    the process died); it holds nothing of the context.

import CUIOMMUWire
import IOMMUABI
import IOMMUEngine
import ProcessMemory
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// An auxiliary file handed to clients, with the server's end of its socket pair.
final class ServedAuxiliary: @unchecked Sendable {
    let id: UInt64
    let file: any AuxiliaryFile
    /// Our end: hang-up means every client descriptor is closed; a byte queued on it makes the
    /// clients' end poll readable.
    let serverEnd: Int32
    /// Identity of the clients' end (to recognise a descriptor the client sends back).
    let dev: UInt64, ino: UInt64
    var signalled = false

    init(id: UInt64, file: any AuxiliaryFile, serverEnd: Int32, dev: UInt64, ino: UInt64) {
        self.id = id; self.file = file; self.serverEnd = serverEnd; self.dev = dev; self.ino = ino
    }
}

final class ServedContext: @unchecked Sendable {
    let server: IOMMUServer
    let connection: Int32
    /// The context's own file (holders counted here); channels use views of it.
    let file: IOMMUFDFile
    let serial: Int
    /// The process that opened the connection.
    let openerPID: Int32

    /// (st_dev, st_ino) of the clients' end of the connection, from IDENTIFY: how a descriptor
    /// a client names in VFIO_DEVICE_BIND_IOMMUFD is recognised as this context.
    var identity: (dev: UInt64, ino: UInt64)? {
        get { lock.withLock { identityStorage } }
        set { lock.withLock { identityStorage = newValue } }
    }
    private var identityStorage: (dev: UInt64, ino: UInt64)?
    /// False once a VFIO device took the connection over (VFIO_OPEN).
    private var ownsConnection = true

    private let lock = Lock()
    private var auxiliaries: [UInt64: ServedAuxiliary] = [:]
    private var nextAuxiliaryID: UInt64 = 1
    private var connectionClosed = false

    init(server: IOMMUServer, connection: Int32, file: IOMMUFDFile, serial: Int, openerPID: Int32) {
        self.server = server; self.connection = connection; self.file = file
        self.serial = serial; self.openerPID = openerPID
    }

    // MARK: The connection

    /// Reads the connection until every client descriptor of it is closed: HELLO attaches a
    /// channel, STATUS answers on the connection itself (tools), IDENTIFY records the clients'
    /// end, VFIO_OPEN as the first message hands the connection to a VFIO device file, anything
    /// else is ignored.
    func serveConnection() {
        var first = true
        let ended = readConnection(connection) { message, received in
            defer { first = false }
            guard let header = message else {
                if received >= 0 { close(received) }
                return true
            }
            if header.op == UInt32(UIOMMU_WIRE_HELLO.rawValue) && received >= 0 {
                attachChannel(received)
            } else if header.op == UInt32(UIOMMU_WIRE_STATUS.rawValue) {
                if received >= 0 { close(received) }
                server.sendStatus(on: connection)
            } else if first && header.op == UInt32(UIOMMU_WIRE_IDENTIFY.rawValue) {
                identify(received)
            } else if first && header.op == UInt32(UIOMMU_WIRE_VFIO_OPEN.rawValue) {
                if received >= 0 { close(received) }
                // The server could not know at accept which file the connection opens; the
                // context made then has no objects and goes away unseen.
                // Either way the connection is no iommufd: the context goes (a failed open's
                // connection is closed with it, after the answer).
                let device = server.openDevice(connection: connection, index: header.request, flags: header.argument)
                if device != nil { lock.withLock { ownsConnection = false } }
                closeConnection(handedOff: true)
                device?.serveConnection()
                return false
            } else if first && header.op == UInt32(UIOMMU_WIRE_VFIO_GROUP_OPEN.rawValue) {
                if received >= 0 { close(received) }
                let group = server.holdGroup(connection: connection, id: header.request)
                if group != nil { lock.withLock { ownsConnection = false } }
                closeConnection(handedOff: true)
                if let group { server.serveGroupHold(connection: connection, group) }
                return false
            } else if received >= 0 {
                close(received)
            }
            return true
        }
        if ended { closeConnection() }
    }

    private func identify(_ received: Int32) {
        var result: Int64 = -Int64(EINVAL)
        if received >= 0 {
            var st = stat()
            if fstat(received, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
                && server.claimIdentity(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino), for: self) {
                result = 0
            }
            close(received)
        }
        server.answerFirst(on: connection, result)
    }

    /// The last client descriptor of the connection is closed: drop the descriptors' hold on
    /// the context (iommufd_fops_release). Idempotent.
    func closeConnection(handedOff: Bool = false) {
        let first = lock.withLock { () -> Bool in
            if connectionClosed { return false }
            connectionClosed = true
            return true
        }
        guard first else { return }
        file.release()
        server.contextClosed(self, handedOff: handedOff)
        // The connection descriptor itself is closed when the context object goes (deinit),
        // so its number cannot be reused while the reader thread may still look at it.
    }

    deinit { if ownsConnection { close(connection) } }

    private func attachChannel(_ fd: Int32) {
        startChannel(fd) { (pid, uid) throws(IOMMUError) in try ContextChannel(fd: fd, pid: pid, uid: uid, context: self) }
    }

    // MARK: Auxiliary files

    func addAuxiliary(_ file: any AuxiliaryFile, serverEnd: Int32, dev: UInt64, ino: UInt64) -> ServedAuxiliary {
        lock.withLock {
            let aux = ServedAuxiliary(id: nextAuxiliaryID, file: file, serverEnd: serverEnd, dev: dev, ino: ino)
            nextAuxiliaryID += 1
            auxiliaries[aux.id] = aux
            return aux
        }
    }

    func auxiliary(id: UInt64) -> ServedAuxiliary? { lock.withLock { auxiliaries[id] } }

    func auxiliary(dev: UInt64, ino: UInt64) -> (any AuxiliaryFile)? {
        reapClosedAuxiliaries()
        return lock.withLock { auxiliaries.values.first { $0.dev == dev && $0.ino == ino }?.file }
    }

    var hasAuxiliaries: Bool { lock.withLock { !auxiliaries.isEmpty } }

    /// Releases every auxiliary file whose client descriptors are all closed.
    func reapClosedAuxiliaries() {
        let gone = lock.withLock { () -> [ServedAuxiliary] in
            let closed = auxiliaries.values.filter { uiommu_wire_hung_up($0.serverEnd) != 0 }
            for aux in closed { auxiliaries.removeValue(forKey: aux.id) }
            return closed
        }
        for aux in gone {
            close(aux.serverEnd)
            aux.file.release()
        }
    }

    /// Makes each auxiliary file's client end poll readable when the file has something to
    /// read (a byte queued; the client drains it when a read finds the file empty).
    func syncReadiness() {
        let all = lock.withLock { Array(auxiliaries.values) }
        for aux in all {
            let readable = aux.file.isReadable
            if readable && !aux.signalled {
                var byte: UInt8 = 1
                if send(aux.serverEnd, &byte, 1, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) == 1 { aux.signalled = true }
            } else if !readable {
                aux.signalled = false
            }
        }
    }

    /// Everything still alive, for the status report.
    var objectLines: [String] { file.context.objects().map { "\($0)" } }
}

/// Starts serving channel `fd` (its server end, received with HELLO) made by `make` from the
/// process the kernel says created it; a failure is answered on the channel and closes it.
func startChannel(_ fd: Int32, _ make: (Int32, UInt32) throws(IOMMUError) -> Channel) {
    var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
    guard uiommu_wire_peer(fd, &pid, &uid, &gid) == 0, pid > 0 else {
        close(fd)
        return
    }
    let channel: Channel
    do throws(IOMMUError) {
        channel = try make(pid, uid)
    } catch {
        // The process is already gone, or we may not reach its memory.
        var reply = uiommu_wire_reply()
        reply.op = UInt32(UIOMMU_WIRE_REPLY.rawValue)
        reply.result = -Int64(error.errno.rawValue)
        _ = withUnsafeBytes(of: &reply) { uiommu_wire_send(fd, $0.baseAddress, $0.count, nil, 0, -1) }
        close(fd)
        return
    }
    // The channel owns `fd` now (closed with it).
    _ = startThread({ channel.serve() })
}
