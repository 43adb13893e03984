// Test doubles for the ABI layer's seam (user memory over a simulated address space, an fd
// broker with memfd-like files), a harness that issues ioctls the way a C program does —
// struct bytes in the client's memory, a pointer as the argument — and command builders.

import Testing
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase
import Synchronization

// MARK: Seam doubles

/// copy_from_user / copy_to_user over a simulated process: unmapped addresses (NULL
/// included) fail, and so do writes to read-only mappings.
final class TestUserMemory: UserMemoryAccess {
    let space: SimulatedAddressSpace
    init(_ space: SimulatedAddressSpace) { self.space = space }

    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool {
        guard count > 0 else { return true }
        guard uptr != 0 else { return false }
        do { try space.readUser(offset: uptr, into: destination, count: count) } catch { return false }
        return true
    }

    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        guard count > 0 else { return true }
        guard uptr != 0 else { return false }
        do { try space.writeUser(offset: uptr, from: source, count: count) } catch { return false }
        return true
    }
}

/// A memfd stand-in: `size` bytes of the simulated space, addressed by file offset.
final class TestFile: PinnableMemory, @unchecked Sendable {
    let space: SimulatedAddressSpace
    let base: UInt64
    let size: UInt64
    init(space: SimulatedAddressSpace, size: UInt64) {
        self.space = space
        self.size = size
        self.base = space.map(length: size)
    }
    var owner: MemoryOwner { space.owner }
    var fileSize: UInt64? { size }
    func resolve(offset: UInt64, length: UInt64, writable: Bool,
                 _ body: (PhysicalRun) throws(IOMMUError) -> Void) throws(IOMMUError) {
        guard offset <= size, length <= size - offset else { throw IOMMUError(.EFAULT, "beyond the file") }
        try space.resolve(offset: base + offset, length: length, writable: writable, body)
    }
    func read(physical: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(IOMMUError) {
        try space.read(physical: physical, into: destination, count: count)
    }
    func write(physical: UInt64, from source: UnsafeRawPointer, count: Int) throws(IOMMUError) {
        try space.write(physical: physical, from: source, count: count)
    }
}

final class TestBroker: FileDescriptorBroker {
    private let state = Mutex<(next: Int32, files: [Int32: TestFile], installed: Int)>((100, [:], 0))
    private let aux = Mutex<[Int32: any AuxiliaryFile]>([:])

    func install(_ file: any AuxiliaryFile) -> Int32 {
        let fd = state.withLock { s in
            defer { s.next += 1; s.installed += 1 }
            return s.next
        }
        aux.withLock { $0[fd] = file }
        return fd
    }

    func fileMemory(fd: Int32) -> (any PinnableMemory)? { state.withLock { $0.files[fd] } }

    func auxiliaryFile(fd: Int32) -> (any AuxiliaryFile)? { aux.withLock { $0[fd] } }

    /// close(2) of an auxiliary descriptor: its file is released. False if `fd` is not one.
    @discardableResult
    func close(_ fd: Int32) -> Bool {
        guard let file = aux.withLock({ $0.removeValue(forKey: fd) }) else { return false }
        file.release()
        return true
    }

    /// Auxiliary descriptors still open.
    var openAuxiliary: [Int32] { aux.withLock { $0.keys.sorted() } }

    /// Registers a memfd and returns its fd number.
    func addFile(_ file: TestFile) -> Int32 {
        state.withLock { s in
            defer { s.next += 1 }
            s.files[s.next] = file
            return s.next
        }
    }
}

// MARK: Machine

enum ABITestMachine {
    static let text = """
        machine abitest
        iommu mock0 kind=selftest-mock format=mock aperture=0x1000000-0x7fffffff pages=2K coherent=no dirty=yes nesting=yes pasid=20
        iommu dmar0 kind=intel-vtd format=vtd-ss width=39 pages=4K,2M coherent=yes dirty=yes nesting=yes pasid=20
        iommu dmar1 kind=intel-vtd format=vtd-ss width=48 pages=4K,2M,1G coherent=no dirty=no nesting=no pasid=0
        iommu amd0 kind=amd-vi format=amd-v1 width=48 pages=4K,2M coherent=yes dirty=yes nesting=no pasid=0
        reserve dmar0 msi 0xfee00000-0xfeefffff
        reserve dmar1 msi 0xfee00000-0xfeefffff
        host-bridge pci0 segment=0 bus=0x00 iommu=mock0
        device mdev0 at=pci0 dev=0x01 id=1234:0001 class=0x088000 pasid=20
        device mdev1 at=pci0 dev=0x02 id=1234:0002 class=0x088000
        device vdev0 at=pci0 dev=0x04 id=8086:0001 class=0x088000 iommu=dmar0
        device vdev1 at=pci0 dev=0x05 id=8086:0002 class=0x088000 iommu=dmar1
        device adev0 at=pci0 dev=0x06 id=1022:0001 class=0x088000 iommu=amd0
        """

    static func make() -> MachineDescription {
        do {
            return try MachineDescription.parse(text, fileName: "abitest")
        } catch {
            fatalError("test machine does not parse: \(error)")
        }
    }
}

// MARK: Harness

/// One simulated process with /dev/iommu open.
final class ABIHarness: @unchecked Sendable {
    let space: SimulatedAddressSpace
    let platform: Platform
    let user: TestUserMemory
    let broker = TestBroker()
    let file: IOMMUFDFile
    private let sink = LineSink()

    init(selftest: Bool = false, trace: Bool = false, canSetRlimitMode: Bool = false,
         pinPolicy: PinPolicy = .unlimited) {
        space = SimulatedAddressSpace()
        platform = Platform(machine: ABITestMachine.make(), physicalMemory: space)
        user = TestUserMemory(space)
        var options = ABIOptions(selftestOps: selftest, pinPolicy: pinPolicy, canSetRlimitMode: canSetRlimitMode)
        if trace {
            let sink = self.sink
            options.trace = { line in sink.append(line) }
        }
        file = IOMMUFDFile(platform: platform, memory: space, user: user, broker: broker, options: options)
    }

    var lines: [String] { sink.lines }

    /// Maps `bytes` of zeroed client memory.
    func alloc(_ bytes: Int, writable: Bool = true) -> UInt64 {
        let length = UInt64(max(4096, (bytes + 4095) & ~4095))
        return space.map(length: length, writable: writable)
    }

    func poke(_ va: UInt64, _ bytes: [UInt8]) {
        guard let p = space.pointer(va: va) else { fatalError("poke at unmapped 0x\(String(va, radix: 16))") }
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    func peek(_ va: UInt64, _ count: Int) -> [UInt8] {
        guard let p = space.pointer(va: va) else { fatalError("peek at unmapped 0x\(String(va, radix: 16))") }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Places `cmd` in client memory, issues the ioctl, reads the struct back.
    @discardableResult
    func call(_ request: UInt32, _ cmd: inout Cmd) -> Int64 { callRaw(UInt(request), &cmd) }

    @discardableResult
    func callRaw(_ request: UInt, _ cmd: inout Cmd) -> Int64 {
        let va = alloc(cmd.bytes.count)
        poke(va, cmd.bytes)
        let rc = file.ioctl(request, va)
        cmd.bytes = peek(va, cmd.bytes.count)
        space.unmap(va: va, length: UInt64(max(4096, (cmd.bytes.count + 4095) & ~4095)))
        return rc
    }

    func call(_ request: UInt32, _ cmd: Cmd) -> Int64 {
        var copy = cmd
        return call(request, &copy)
    }

    // Conveniences for common set-ups.

    func allocIOAS() -> UInt32 {
        var cmd = Cmd(ABI.IOASAlloc.size)
        let rc = call(IOMMURequest.ioasAlloc, &cmd)
        #expect(rc == 0, "IOAS_ALLOC failed: \(rc)")
        return cmd.u32(ABI.IOASAlloc.outIOASID)
    }

    func bind(_ name: String) -> UInt32 {
        guard let device = platform.device(named: name) else { fatalError("no device \(name)") }
        do { return try file.context.bind(device) } catch { fatalError("bind \(name): \(error)") }
    }

    /// Maps `length` bytes of fresh client memory at `iova` (fixed) or anywhere; returns (va, iova).
    func map(ioas: UInt32, length: UInt64, iova: UInt64? = nil, flags: UInt32 = 6) -> (UInt64, UInt64) {
        let va = space.map(length: length)
        var cmd = Cmd(ABI.IOASMap.size)
            .set32(ABI.IOASMap.flags, flags | (iova != nil ? 1 : 0)).set32(ABI.IOASMap.ioasID, ioas)
            .set64(ABI.IOASMap.userVA, va).set64(ABI.IOASMap.length, length).set64(ABI.IOASMap.iova, iova ?? 0)
        let rc = call(IOMMURequest.ioasMap, &cmd)
        #expect(rc == 0, "IOAS_MAP failed: \(rc)")
        return (va, cmd.u64(ABI.IOASMap.iova))
    }

    func setCompat(_ ioas: UInt32) {
        let rc = call(IOMMURequest.vfioIOAS, Cmd(ABI.VFIOIOAS.size).set32(ABI.VFIOIOAS.ioasID, ioas)
            .set16(ABI.VFIOIOAS.op, IOMMUConstants.vfioIOASSet))
        #expect(rc == 0)
    }

    var pinned: UInt64 { platform.ledger.totalPinnedPages }
}

final class LineSink: Sendable {
    private let state = Mutex<[String]>([])
    func append(_ line: String) { state.withLock { $0.append(line) } }
    var lines: [String] { state.withLock { $0 } }
}

/// Command bytes with the size field set, and little-endian field setters.
struct Cmd: Equatable {
    var bytes: [UInt8]

    /// A zeroed struct of `size` bytes whose size field says `size` (or `sizeField`).
    init(_ size: Int, sizeField: UInt32? = nil, buffer: Int? = nil) {
        bytes = [UInt8](repeating: 0, count: max(size, buffer ?? 0))
        if size >= 4 { setRaw(0, UInt64(sizeField ?? UInt32(size)), 4) }
    }

    init(raw: [UInt8]) { bytes = raw }

    private mutating func setRaw(_ offset: Int, _ value: UInt64, _ width: Int) {
        for i in 0..<width { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
    private func getRaw(_ offset: Int, _ width: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<width { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    func set8(_ o: Int, _ v: UInt8) -> Cmd { var c = self; c.bytes[o] = v; return c }
    func set16(_ o: Int, _ v: UInt16) -> Cmd { var c = self; c.setRaw(o, UInt64(v), 2); return c }
    func set32(_ o: Int, _ v: UInt32) -> Cmd { var c = self; c.setRaw(o, UInt64(v), 4); return c }
    func set64(_ o: Int, _ v: UInt64) -> Cmd { var c = self; c.setRaw(o, v, 8); return c }
    func u8(_ o: Int) -> UInt8 { bytes[o] }
    func u16(_ o: Int) -> UInt16 { UInt16(getRaw(o, 2)) }
    func u32(_ o: Int) -> UInt32 { UInt32(getRaw(o, 4)) }
    func u64(_ o: Int) -> UInt64 { getRaw(o, 8) }
}

/// -errno as the ioctl returns it.
func err(_ e: LinuxErrno) -> Int64 { -Int64(e.rawValue) }

func name(_ rc: Int64) -> String {
    rc >= 0 ? "\(rc)" : LinuxErrno(rawValue: Int32(-rc)).name
}

/// SplitMix64: a small seedable generator, so a failing seed replays.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
    mutating func chance(_ percent: UInt64) -> Bool { below(100) < percent }
}
