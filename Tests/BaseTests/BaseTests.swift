import Testing
import UIOMMUBase
import ProcessMemory

@Suite struct IOVATests {
    @Test func rangeFromStartAndLengthChecksOverflow() throws {
        let r = try IOVARange(start: 0x1000, length: 0x2000)
        #expect(r.first == 0x1000 && r.last == 0x2fff && r.length == 0x2000)
        #expect(throws: IOMMUError(.EOVERFLOW, "iova + length overflows")) { try IOVARange(start: .max, length: 2) }
        #expect(throws: IOMMUError(.EINVAL, "zero length")) { try IOVARange(start: 0, length: 0) }
        #expect(IOVARange.all.length == .max)
        #expect(try IOVARange(start: .max, length: 1).last == .max)
    }

    @Test func alignmentHelpersNeverTrap() {
        #expect(UInt64(0x1001).alignedUp(to: 0x1000) == 0x2000)
        #expect(UInt64.max.alignedUp(to: 0x1000) == nil)
        #expect(UInt64(0x3000).lowestSetBitValue == 0x1000)
        #expect(UInt64(0).lowestSetBitValue == 1 << 63)
        #expect(UInt64(0x1000).isPowerOfTwo && !UInt64(0x3000).isPowerOfTwo && !UInt64(0).isPowerOfTwo)
    }

    @Test func intersections() {
        let a = IOVARange(first: 0, last: 99), b = IOVARange(first: 50, last: 150)
        #expect(a.intersection(b) == IOVARange(first: 50, last: 99))
        #expect(a.overlaps(b) && !a.contains(b))
        #expect(a.intersection(IOVARange(first: 100, last: 200)) == nil)
    }
}

@Suite struct FailureInjectionTests {
    @Test func failsExactlyTheNthCheck() {
        let f = FailureInjector()
        #expect(!f.shouldFail("a"))
        f.failNth(3)
        #expect(!f.shouldFail("a"))
        #expect(!f.shouldFail("b"))
        #expect(f.shouldFail("c"))
        #expect(f.didFire && f.firedSite == "c")
        #expect(!f.shouldFail("d"))
    }

    @Test func checkThrowsENOMEM() {
        let f = FailureInjector()
        f.failNth(1)
        #expect(throws: IOMMUError.self) { try f.check("x") }
    }

    @Test func errnoNames() {
        #expect(LinuxErrno.EADDRINUSE.name == "EADDRINUSE" && LinuxErrno.EADDRINUSE.rawValue == 98)
        #expect(LinuxErrno(rawValue: 999).name == "E999")
        #expect("\(IOMMUError(.EEXIST, "overlap", operation: "IOAS_MAP"))" == "IOAS_MAP: EEXIST (overlap)")
    }
}

@Suite struct SimulatedMemoryTests {
    @Test func resolveGivesRunsAndEFAULTForHoles() throws {
        let space = SimulatedAddressSpace()
        let va = space.map(length: 16384)
        var runs: [PhysicalRun] = []
        try space.resolve(offset: va, length: 16384, writable: true) { runs.append($0) }
        #expect(runs.count == 1 && runs[0].length == 16384)
        space.unmap(va: va + 4096, length: 4096)
        #expect(throws: IOMMUError.self) {
            try space.resolve(offset: va, length: 16384, writable: false) { _ in }
        }
        let ro = space.map(length: 4096, writable: false)
        #expect(throws: IOMMUError.self) { try space.resolve(offset: ro, length: 4096, writable: true) { _ in } }
        try space.resolve(offset: ro, length: 4096, writable: false) { _ in }
    }

    @Test func userCopiesCrossPages() throws {
        let space = SimulatedAddressSpace()
        let va = space.map(length: 8192)
        let bytes: [UInt8] = Array(0..<100)
        try bytes.withUnsafeBytes { try space.writeUser(offset: va + 4050, from: $0.baseAddress!, count: 100) }
        var back = [UInt8](repeating: 0, count: 100)
        try back.withUnsafeMutableBytes { try space.readUser(offset: va + 4050, into: $0.baseAddress!, count: 100) }
        #expect(back == bytes)
        #expect(space.pointer(va: va + 4096)!.load(as: UInt8.self) == 46)
    }

    @Test func localProcessMemoryRefusesUnmappedPages() throws {
        let memory = LocalProcessMemory()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        let va = UInt64(UInt(bitPattern: buffer))
        var total: UInt64 = 0
        try memory.resolve(offset: va, length: 8192, writable: true) { total += $0.length }
        #expect(total == 8192)
        #expect(throws: IOMMUError.self) { try memory.resolve(offset: 0x1000, length: 4096, writable: false) { _ in } }
    }
}
