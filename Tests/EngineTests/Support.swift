// Shared helpers for the engine tests: machines, a harness (platform + simulated process +
// context), errno assertions, and a seeded deterministic RNG.

import Testing
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

// MARK: Machines

enum TestMachines {
    /// A small machine for the engine tests: the kernel selftest's mock IOMMU (2 KiB pages,
    /// aperture 16 MiB … 2 GiB − 1, no reserved regions) with three singleton-group devices,
    /// and a 39-bit VT-d unit with the x86 MSI window reserved, with one device.
    static let engineTestText = """
        machine enginetest
        iommu mock0 kind=selftest-mock format=mock aperture=0x1000000-0x7fffffff pages=2K coherent=no dirty=yes nesting=yes pasid=20
        iommu dmar0 kind=intel-vtd format=vtd-ss width=39 pages=4K,2M coherent=yes dirty=yes nesting=yes pasid=0
        reserve dmar0 msi 0xfee00000-0xfeefffff
        host-bridge pci0 segment=0 bus=0x00 iommu=mock0
        device mdev0 at=pci0 dev=0x01 id=1234:0001 class=0x088000
        device mdev1 at=pci0 dev=0x02 id=1234:0002 class=0x088000
        device mdev2 at=pci0 dev=0x03 id=1234:0003 class=0x088000
        device vdev0 at=pci0 dev=0x04 id=8086:0001 class=0x088000 iommu=dmar0
        device vdev1 at=pci0 dev=0x05 id=8086:0002 class=0x088000 iommu=dmar0
        """

    static func engineTest() throws -> MachineDescription {
        try MachineDescription.parse(engineTestText, fileName: "enginetest")
    }

    static var defaultMachine: MachineDescription { MachineDescription.default }
}

/// The mock IOMMU's constants (MOCK_APERTURE_START/LAST, MOCK_IO_PAGE_SIZE).
enum Mock {
    static let apertureStart: UInt64 = 1 << 24
    static let apertureLast: UInt64 = (1 << 31) - 1
    static let pageSize: UInt64 = 2048
}

let pageSize: UInt64 = 4096
let msiWindow = IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)

// MARK: Harness

/// One simulated host: a platform over a machine, one simulated client process, and one
/// context (more can be opened on the same platform).
final class Harness {
    let machine: MachineDescription
    let platform: Platform
    let space: SimulatedAddressSpace
    let ctx: IOMMUFDContext

    init(machine: MachineDescription, pinPolicy: PinPolicy = .unlimited,
         failures: FailureInjector = FailureInjector(),
         space: SimulatedAddressSpace = SimulatedAddressSpace()) {
        self.machine = machine
        self.space = space
        platform = Platform(machine: machine, physicalMemory: space)
        ctx = IOMMUFDContext(platform: platform, memory: space, pinPolicy: pinPolicy, failures: failures)
    }

    /// The engine-test machine (mock IOMMU + small VT-d).
    static func mock(pinPolicy: PinPolicy = .unlimited,
                     failures: FailureInjector = FailureInjector()) throws -> Harness {
        Harness(machine: try TestMachines.engineTest(), pinPolicy: pinPolicy, failures: failures)
    }

    /// The default machine (dmar0 coherent, dmar1 not, MSI window on both).
    static func defaultMachine(pinPolicy: PinPolicy = .unlimited) -> Harness {
        Harness(machine: TestMachines.defaultMachine, pinPolicy: pinPolicy)
    }

    /// Another context on the same platform (another open of /dev/iommu), by the same process.
    func openContext(pinPolicy: PinPolicy = .unlimited) -> IOMMUFDContext {
        IOMMUFDContext(platform: platform, memory: space, pinPolicy: pinPolicy)
    }

    func device(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> PlatformDevice {
        try #require(platform.device(named: name), "no device \(name) in \(machine.name)",
                     sourceLocation: sourceLocation)
    }

    /// Binds device `name` to `context` (default: the harness context).
    func bind(_ name: String, to context: IOMMUFDContext? = nil) throws -> UInt32 {
        try (context ?? ctx).bind(device(name))
    }

    /// Maps `pages` pages of zeroed user memory, optionally filled with a byte pattern.
    func buffer(pages: Int, writable: Bool = true, fill: UInt8? = nil) -> UInt64 {
        let length = UInt64(pages) * pageSize
        let va = space.map(length: length, writable: writable)
        if let fill, let p = space.pointer(va: va) {
            p.initializeMemory(as: UInt8.self, repeating: fill, count: Int(length))
        }
        return va
    }

    /// The host ("physical") address behind a user VA that is currently mapped.
    func physical(_ va: UInt64) -> UInt64? {
        space.pointer(va: va).map { UInt64(UInt(bitPattern: $0)) }
    }

    var pinned: UInt64 { platform.ledger.totalPinnedPages }

    func objectKinds() -> [ObjectKind] { ctx.objects().map(\.kind) }
    func count(_ kind: ObjectKind) -> Int { ctx.objects().filter { $0.kind == kind }.count }
    func holders(_ id: UInt32) -> Int? { ctx.objects().first { $0.id == id }?.holders }
}

// MARK: errno assertions

/// Runs `body` and expects it to throw an `IOMMUError` with `expected` errno.
@discardableResult
func expectErrno<T>(_ expected: LinuxErrno, _ comment: @autoclosure () -> String = "",
                    sourceLocation: SourceLocation = #_sourceLocation,
                    _ body: () throws(IOMMUError) -> T) -> IOMMUError? {
    do {
        let value = try body()
        let note = comment()
        let message = "expected \(expected.name) but the call succeeded (returned \(value))" + (note.isEmpty ? "" : ": " + note)
        Issue.record("\(message)", sourceLocation: sourceLocation)
        return nil
    } catch {
        let note = comment()
        let message = "\(error)" + (note.isEmpty ? "" : ": " + note)
        #expect(error.errno == expected, "\(message)", sourceLocation: sourceLocation)
        return error
    }
}

/// Runs `body`, recording an issue (with the errno) if it throws; returns its value or nil.
@discardableResult
func expectOK<T>(_ comment: @autoclosure () -> String = "", sourceLocation: SourceLocation = #_sourceLocation,
                 _ body: () throws(IOMMUError) -> T) -> T? {
    do {
        return try body()
    } catch {
        let note = comment()
        let message = "unexpected \(error)" + (note.isEmpty ? "" : ": " + note)
        Issue.record("\(message)", sourceLocation: sourceLocation)
        return nil
    }
}

let rw: IOPermissions = [.read, .write]

/// A snapshot of the observable state of one IOAS, for "nothing changed" checks.
struct IOASSnapshot: Equatable, CustomStringConvertible {
    var areas: [IOVARange]
    var permissions: [IOPermissions]
    var ranges: [IOVARange]
    var alignment: UInt64

    init(_ ctx: IOMMUFDContext, _ ioas: UInt32) throws {
        let a = try ctx.areas(ioas: ioas)
        areas = a.map { IOVARange(first: $0.iova, last: $0.last) }
        permissions = a.map(\.permissions)
        let r = try ctx.iovaRanges(ioas: ioas)
        ranges = r.ranges
        alignment = r.alignment
    }

    var description: String { "areas \(areas) ranges \(ranges) align \(alignment)" }
}

// MARK: Deterministic randomness

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable generator. Deterministic on
/// every platform, so a failing seed replays exactly.
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

    /// Uniform in 0..<n (n > 0); the modulo bias is irrelevant for testing.
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
    /// Uniform in 0..<count (count > 0), for indexes.
    mutating func index(_ count: Int) -> Int { Int(next() % UInt64(count)) }
    /// Uniform in lo...hi.
    mutating func inRange(_ lo: UInt64, _ hi: UInt64) -> UInt64 {
        hi &- lo == .max ? next() : lo + below(hi - lo + 1)
    }
    /// True with probability `percent`/100.
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[index(items.count)] }
}
