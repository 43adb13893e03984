import IOMMUHardware
import ProcessMemory
import UIOMMUBase

// Shared fixtures for the hardware tests. Bit positions are written here as literals on
// purpose: the tests check the formats against the documented layouts, not against the
// constants the implementation uses.

let KiB: UInt64 = 1 << 10
let MiB: UInt64 = 1 << 20
let GiB: UInt64 = 1 << 30

enum Units {
    /// Like the default machine's dmar0: 48-bit, 4K/2M/1G, snoop control, dirty tracking, nesting.
    static func vtd48(name: String = "dmar0", coherent: Bool = true, dirty: Bool = true,
                      pages: UInt64 = IOMMUUnitSpec.x86PageSizes) -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .intelVTd, format: .vtdSecondStage, pageSizes: pages,
                      aperture: IOVARange(first: 0, last: (1 << 48) - 1), enforcesCacheCoherency: coherent,
                      dirtyTracking: dirty, nesting: true, pasidWidth: 20, reservedRegions: [])
    }

    /// Like dmar1: 39-bit, 4K/2M, no snoop control, no dirty tracking, no PASID.
    static func vtd39(name: String = "dmar1") -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .intelVTd, format: .vtdSecondStage, pageSizes: (1 << 12) | (1 << 21),
                      aperture: IOVARange(first: 0, last: (1 << 39) - 1), enforcesCacheCoherency: false,
                      dirtyTracking: false, nesting: false, pasidWidth: 0, reservedRegions: [])
    }

    static func amd(name: String = "ivhd0") -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .amdVi, format: .amdV1, pageSizes: IOMMUUnitSpec.x86PageSizes,
                      aperture: IOVARange(first: 0, last: (1 << 48) - 1), enforcesCacheCoherency: true,
                      dirtyTracking: true, nesting: false, pasidWidth: 16, reservedRegions: [])
    }

    static func mock(name: String = "mock0") -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .selftestMock, format: .mock, pageSizes: 2048,
                      aperture: MockPageTable.defaultAperture, enforcesCacheCoherency: true,
                      dirtyTracking: true, nesting: true, pasidWidth: 20, reservedRegions: [])
    }
}

/// Reads entry `index` of the 4 KiB table at host address `table`.
func entry(_ table: UInt64, _ index: Int) -> UInt64 {
    UnsafePointer<UInt64>(bitPattern: UInt(table))!.advanced(by: index).pointee
}

/// Index of `iova` at `level` for a format with `granuleShift` and 9 bits per level.
func index(_ iova: UInt64, level: Int, granuleShift: Int = 12) -> Int {
    Int((iova >> UInt64(granuleShift + 9 * (level - 1))) & 511)
}

/// Walks raw table memory from `root` down to the entry mapping `iova`, following table
/// pointers with `isTable` and `address`, and returns the raw entries seen from the root down.
func rawWalk(root: UInt64, levels: Int, iova: UInt64, granuleShift: Int = 12,
             isTable: (UInt64, Int) -> Bool, address: (UInt64) -> UInt64) -> [UInt64] {
    var seen: [UInt64] = []
    var table = root
    var level = levels
    while level >= 1 {
        let e = entry(table, index(iova, level: level, granuleShift: granuleShift))
        seen.append(e)
        guard level > 1, isTable(e, level) else { break }
        table = address(e)
        level -= 1
    }
    return seen
}

/// Deterministic generator for randomized tests (SplitMix64), so a failure reproduces.
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
}

/// The physical runs behind `[va, va + length)` of `space`.
func physicalRuns(_ space: SimulatedAddressSpace, va: UInt64, length: UInt64) throws -> [PhysicalRun] {
    var runs: [PhysicalRun] = []
    try space.resolve(offset: va, length: length, writable: true) { runs.append($0) }
    return runs
}

func requester(_ bus: UInt8, _ device: UInt8, _ function: UInt8 = 0) -> PCIAddress {
    PCIAddress(bus: bus, device: device, function: function)
}

/// The errno `body` throws, or nil if it does not throw (or throws something else).
func errnoOf(_ body: () throws -> Void) -> LinuxErrno? {
    do {
        try body()
        return nil
    } catch let error as IOMMUError {
        return error.errno
    } catch {
        return nil
    }
}
