// The fixed world every input runs in: one simulated process (a SimulatedAddressSpace with a
// fixed layout of mapped, read-only and unmapped pages), one Platform (the default machine),
// the user-memory access and fd broker the ABI layer needs. Built once per process; each input
// gets a fresh IOMMUFDFile over it and must leave it as it found it (the invariants).

import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

/// The simulated client's address space. Every address is fixed, so an input means the same
/// thing in every run:
///
///     0x7000_0000  RW   16 pages   pages 0-3: command structs; pages 8-15: 16 array slots of 2 KiB
///     0x7001_0000  RO    4 pages   (a struct here can be read but not written back)
///     0x7001_4000  --    4 pages   unmapped (EFAULT)
///     0x7001_8000  RW    8 pages
///     0x7020_0000  RW    2 MiB     one 2 MiB backing page (huge-page pinning, 2M leaves)
///     0x7040_0000  RW   16 pages   memfd A (fd 50) — file offsets map here
///     0x7041_0000  RW    2 pages   memfd B (fd 51)
enum Layout {
    static let rwBase: UInt64 = 0x7000_0000
    static let rwPages: UInt64 = 16
    static let roBase: UInt64 = 0x7001_0000
    static let roPages: UInt64 = 4
    static let gapBase: UInt64 = 0x7001_4000
    static let gapPages: UInt64 = 4
    static let rw2Base: UInt64 = 0x7001_8000
    static let rw2Pages: UInt64 = 8
    static let hugeBase: UInt64 = 0x7020_0000
    static let hugeSize: UInt64 = 0x20_0000
    static let memfdABase: UInt64 = 0x7040_0000
    static let memfdASize: UInt64 = 0x1_0000
    static let memfdBBase: UInt64 = 0x7041_0000
    static let memfdBSize: UInt64 = 0x2000
    static let memfdAFD: Int32 = 50
    static let memfdBFD: Int32 = 51

    /// Where command structs go (placement 0-3).
    static func structSlot(_ i: Int) -> UInt64 { rwBase + UInt64(i & 3) * 0x400 }
    /// 16 slots of 2 KiB for arrays, bitmaps and hw_info data.
    static let slotBase: UInt64 = rwBase + 0x8000
    static let slotSize: UInt64 = 0x800
    static func arraySlot(_ i: Int) -> UInt64 { slotBase + UInt64(i & 15) * slotSize }
    /// The first paged span (RW, RO, gap, RW2): 32 pages from rwBase.
    static let spanPages: UInt64 = 32
    /// Ends of mappings, for pointers that straddle them.
    static let boundaries: [UInt64] = [roBase, gapBase, rw2Base + rw2Pages * 4096, hugeBase + hugeSize]
}

/// copy_from_user / copy_to_user over the simulated space: never crashes on a bad address.
/// Remembers whether anything was written to the 2 MiB region (so only then is it zeroed).
final class FuzzUserMemory: UserMemoryAccess, @unchecked Sendable {
    let space: SimulatedAddressSpace
    var hugeDirty = false
    init(_ space: SimulatedAddressSpace) { self.space = space }

    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool {
        guard count > 0 else { return true }
        guard uptr != 0, count >= 0 else { return false }
        do { try space.readUser(offset: uptr, into: destination, count: count) } catch { return false }
        return true
    }

    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        guard count > 0 else { return true }
        guard uptr != 0, count >= 0 else { return false }
        noteWrite(uptr, UInt64(count))
        do { try space.writeUser(offset: uptr, from: source, count: count) } catch { return false }
        return true
    }

    func noteWrite(_ va: UInt64, _ count: UInt64) {
        let (end, o) = va.addingReportingOverflow(count)
        if o || (va < Layout.hugeBase + Layout.hugeSize && end > Layout.hugeBase) { hugeDirty = true }
    }
}

/// A memfd stand-in: a fixed mapping of the simulated space, addressed by file offset.
final class FuzzFile: PinnableMemory, @unchecked Sendable {
    let space: SimulatedAddressSpace
    let base: UInt64
    let size: UInt64
    init(space: SimulatedAddressSpace, base: UInt64, size: UInt64) {
        self.space = space; self.base = base; self.size = size
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

/// The fd broker: two memfds at fixed numbers; auxiliary files get 100, 101, … per input and
/// are released ("closed") at the end of the input.
final class FuzzBroker: FileDescriptorBroker, @unchecked Sendable {
    let files: [Int32: FuzzFile]
    var installed: [(fd: Int32, file: any AuxiliaryFile)] = []
    var nextFD: Int32 = 100

    init(files: [Int32: FuzzFile]) { self.files = files }

    func install(_ file: any AuxiliaryFile) -> Int32 {
        defer { nextFD += 1 }
        installed.append((nextFD, file))
        return nextFD
    }

    func fileMemory(fd: Int32) -> (any PinnableMemory)? { files[fd] }

    /// An installed file still open (the selftest's access fds are looked up this way).
    func auxiliaryFile(fd: Int32) -> (any AuxiliaryFile)? { installed.first { $0.fd == fd }?.file }

    func reset() { installed.removeAll(); nextFD = 100 }
}

/// Devices an input may bind, by index (the first two are bound unless the header says not).
enum FuzzDevices {
    /// nvme0: dmar0 (48-bit, coherent, dirty tracking, 2M/1G); dma0: dmar1 (39-bit, not
    /// coherent, no dirty tracking, RMRR); nic0.0/nic0.1: one group of two; pasid0: PASID/PRI;
    /// usb0 and eth0: groups a host driver makes non-viable (EPERM); gpu0.
    static let names = ["nvme0", "dma0", "nic0.0", "nic0.1", "pasid0", "usb0", "eth0", "gpu0"]
}

final class World: @unchecked Sendable {
    let space: SimulatedAddressSpace
    let platform: Platform
    let user: FuzzUserMemory
    let broker: FuzzBroker
    let devices: [PlatformDevice]
    /// Devices whose IOMMU context entry is set by the machine itself (none on the default
    /// machine); every other device must be blocked between inputs.
    let baselineContexts: Set<Int>
    /// Requests of the dispatch table, in table order (IOMMUIoctls.table).
    let table: [(request: UInt32, name: String, minSize: Int, size: Int)]

    init() {
        let space = SimulatedAddressSpace()
        space.map(length: Layout.rwPages * 4096, at: Layout.rwBase)
        space.map(length: Layout.roPages * 4096, at: Layout.roBase, writable: false)
        space.map(length: Layout.rw2Pages * 4096, at: Layout.rw2Base)
        space.map(length: Layout.hugeSize, at: Layout.hugeBase, backingPageSize: Layout.hugeSize)
        space.map(length: Layout.memfdASize, at: Layout.memfdABase)
        space.map(length: Layout.memfdBSize, at: Layout.memfdBBase)
        self.space = space
        let platform = Platform(machine: .default, physicalMemory: space)
        self.platform = platform
        user = FuzzUserMemory(space)
        broker = FuzzBroker(files: [
            Layout.memfdAFD: FuzzFile(space: space, base: Layout.memfdABase, size: Layout.memfdASize),
            Layout.memfdBFD: FuzzFile(space: space, base: Layout.memfdBBase, size: Layout.memfdBSize),
        ])
        devices = FuzzDevices.names.map { name in
            guard let d = platform.device(named: name) else { fatalError("default machine has no \(name)") }
            return d
        }
        table = IOMMUIoctls.table
        baselineContexts = Set(platform.devices.filter { $0.unit.context(requester: $0.spec.address) != nil }.map(\.index))
    }

    /// The host (physical) ranges of the client's memory, for the per-page pin counts.
    var physicalRanges: [(UInt64, UInt64)] {
        [(Layout.rwBase, Layout.rwPages * 4096), (Layout.roBase, Layout.roPages * 4096),
         (Layout.rw2Base, Layout.rw2Pages * 4096), (Layout.hugeBase, Layout.hugeSize),
         (Layout.memfdABase, Layout.memfdASize), (Layout.memfdBBase, Layout.memfdBSize)].map { va, length in
            (UInt64(UInt(bitPattern: space.pointer(va: va)!)), length)
        }
    }

    /// Zeroes user memory (the 2 MiB page only if something may have written it).
    func resetMemory(all: Bool) {
        func zero(_ va: UInt64, _ length: UInt64) {
            guard let p = space.pointer(va: va) else { fatalError("layout page 0x\(String(va, radix: 16)) unmapped") }
            p.initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
        }
        zero(Layout.rwBase, Layout.rwPages * 4096)
        zero(Layout.roBase, Layout.roPages * 4096)
        zero(Layout.rw2Base, Layout.rw2Pages * 4096)
        zero(Layout.memfdABase, Layout.memfdASize)
        zero(Layout.memfdBBase, Layout.memfdBSize)
        if all || user.hugeDirty { zero(Layout.hugeBase, Layout.hugeSize) }
        user.hugeDirty = false
        for unit in platform.units { unit.clearFaultLog() }
    }

    /// Writes `bytes` at `va` through host pointers, page by page, whatever the protection
    /// (the program set the memory up before protecting it); bytes that fall on unmapped
    /// pages are dropped.
    func poke(_ va: UInt64, _ bytes: UnsafeRawBufferPointer) {
        var done = 0
        while done < bytes.count {
            let address = va &+ UInt64(done)
            let n = min(bytes.count - done, Int(4096 - (address & 4095)))
            if address >= va, let p = space.pointer(va: address) {   // no wrap past 2^64
                p.copyMemory(from: bytes.baseAddress! + done, byteCount: n)
                user.noteWrite(address, UInt64(n))
            }
            done += n
        }
    }
}
