import Testing
import IOMMUHardware
import ProcessMemory
import Synchronization
import UIOMMUBase

@Suite struct IOMMUUnitTests {
    let dev = requester(0, 3)

    func fault(_ r: Result<IOTranslation, DMAFault>) -> DMAFault.Reason? {
        if case .failure(let f) = r { return f.reason }
        return nil
    }

    @Test func contextsBlockByDefaultAndFollowPASIDs() throws {
        let unit = IOMMUUnit(spec: Units.vtd48())
        let a = try IOMMUDomain(unit: unit.spec)
        let b = try IOMMUDomain(unit: unit.spec)
        try a.map(iova: 0x1000, physical: 0xA000, length: 4096, permissions: .read, maxLeafSize: .max)
        try b.map(iova: 0x1000, physical: 0xB000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(fault(unit.translate(requester: dev, iova: 0x1000, write: false)) == .blocked)
        #expect(unit.setContext(requester: dev, domain: a) == nil)
        #expect(unit.setContext(requester: dev, pasid: 7, domain: b) == nil)
        #expect(unit.context(requester: dev) === a)
        #expect(unit.context(requester: dev, pasid: 7) === b)
        #expect(unit.context(requester: dev, pasid: 8) == nil)
        #expect(unit.context(requester: requester(0, 3, 1)) == nil, "another function of the device")
        #expect(unit.context(requester: PCIAddress(segment: 1, bus: 0, device: 3, function: 0)) == nil)
        // Same IOVA, two domains: the IOTLB keeps them apart by domain tag.
        for _ in 0..<3 {
            #expect(try unit.translate(requester: dev, iova: 0x1010, write: false).get().physical == 0xA010)
            #expect(try unit.translate(requester: dev, pasid: 7, iova: 0x1010, write: false).get().physical == 0xB010)
        }
        #expect(fault(unit.translate(requester: dev, pasid: 8, iova: 0x1000, write: false)) == .blocked)
        // Switching the RID context to b is seen at once.
        #expect(unit.setContext(requester: dev, domain: b) === a)
        #expect(try unit.translate(requester: dev, iova: 0x1010, write: false).get().physical == 0xB010)
        #expect(unit.setContext(requester: dev, pasid: 7, domain: nil) === b)
        #expect(unit.context(requester: dev, pasid: 7) == nil)
        #expect(unit.setContext(requester: dev, domain: nil) === b)
        #expect(fault(unit.translate(requester: dev, iova: 0x1000, write: false)) == .blocked)

        #expect(unit.contextError(pasid: 1 << 20, domain: a)?.errno == .EINVAL)
        #expect(unit.contextError(pasid: (1 << 20) - 1, domain: a) == nil)
        let narrow = IOMMUUnit(spec: Units.vtd39())
        #expect(narrow.contextError(pasid: 0, domain: nil)?.errno == .EINVAL, "no PASID support")
        #expect(narrow.contextError(pasid: nil, domain: a)?.errno == .EINVAL, "48-bit domain")
    }

    @Test func iotlbHitsMissesAndInvalidationAfterUnmap() throws {
        let unit = IOMMUUnit(spec: Units.vtd48())
        let d = try IOMMUDomain(unit: unit.spec)
        unit.setContext(requester: dev, domain: d)
        try d.map(iova: 0x4000, physical: 0x9000, length: 4096, permissions: [.read, .write], maxLeafSize: .max)

        #expect(try unit.translate(requester: dev, iova: 0x4008, write: false).get().physical == 0x9008)
        var s = unit.iotlb.statistics
        #expect(s.misses == 1 && s.hits == 0 && s.fills == 1)
        #expect(try unit.translate(requester: dev, iova: 0x4FFF, write: true).get().physical == 0x9FFF)
        s = unit.iotlb.statistics
        #expect(s.hits == 1 && s.misses == 1, "a write hit without dirty tracking needs no walk")

        // The translation is cached; after unmap it must still fault.
        d.unmap(iova: 0x4000, length: 4096)
        #expect(fault(unit.translate(requester: dev, iova: 0x4008, write: false)) == .notPresent)
        s = unit.iotlb.statistics
        #expect(s.invalidatedMisses == 1)
        #expect(s.hits == 1)

        // Remapped elsewhere: the new translation, not the cached one.
        try d.map(iova: 0x4000, physical: 0x7000, length: 4096, permissions: .read, maxLeafSize: .max)
        #expect(try unit.translate(requester: dev, iova: 0x4008, write: false).get().physical == 0x7008)
        #expect(fault(unit.translate(requester: dev, iova: 0x4008, write: true)) == .permission, "write to read-only, hit")

        // invalidateAll makes the next lookup miss.
        let before = unit.iotlb.statistics
        unit.iotlb.invalidateAll()
        #expect(try unit.translate(requester: dev, iova: 0x4008, write: false).get().physical == 0x7008)
        let after = unit.iotlb.statistics
        #expect(after.globalInvalidations == 1)
        #expect(after.invalidatedMisses == before.invalidatedMisses + 1)
        #expect(after.hits == before.hits)
    }

    @Test func faultsOfEveryKind() throws {
        let unit = IOMMUUnit(spec: Units.vtd39())
        let d = try IOMMUDomain(unit: unit.spec)
        unit.setContext(requester: dev, domain: d)
        try d.map(iova: 0, physical: 0x1000, length: 4096, permissions: .read, maxLeafSize: .max)
        try d.map(iova: 4096, physical: 0x2000, length: 4096, permissions: .write, maxLeafSize: .max)
        #expect(fault(unit.translate(requester: dev, iova: 0, write: true)) == .permission, "miss path")
        #expect(fault(unit.translate(requester: dev, iova: 4096, write: false)) == .permission, "write-only page")
        #expect(fault(unit.translate(requester: dev, iova: 8192, write: false)) == .notPresent)
        #expect(fault(unit.translate(requester: dev, iova: 1 << 39, write: false)) == .outsideAperture)
        #expect(fault(unit.translate(requester: dev, iova: .max, write: false)) == .outsideAperture)
        #expect(fault(unit.translate(requester: requester(9, 9), iova: 0, write: false)) == .blocked)
        let log = unit.faultLog
        #expect(log.map(\.reason) == [.permission, .permission, .notPresent, .outsideAperture, .outsideAperture, .blocked])
        #expect(log[0] == DMAFault(requester: dev, pasid: nil, iova: 0, write: true, reason: .permission))
        #expect(unit.faultCount == 6)
        // A permission fault records no A/D bits.
        #expect(d.translate(iova: 0)?.dirty == false)
    }

    @Test func faultLogIsBoundedAndHandlerSeesEveryFault() {
        let unit = IOMMUUnit(spec: Units.vtd48(), faultLogCapacity: 4)
        let seen = Shared<[UInt64]>([])
        unit.faultHandler = { f in seen.withLock { $0.append(f.iova) } }
        for i in 0..<10 { _ = unit.translate(requester: dev, iova: UInt64(i), write: false) }
        #expect(unit.faultLog.map(\.iova) == [6, 7, 8, 9])
        #expect(unit.faultCount == 10)
        #expect(seen.withLock { $0 } == Array(0..<10))
        unit.clearFaultLog()
        #expect(unit.faultLog.isEmpty)
        _ = unit.translate(requester: dev, iova: 42, write: false)
        #expect(unit.faultLog.map(\.iova) == [42])
        unit.faultHandler = nil
        _ = unit.translate(requester: dev, iova: 43, write: false)
        #expect(seen.withLock { $0.count } == 11)
    }

    @Test func dirtyBitsFromDMAAndTheCachedDirtyState() throws {
        let unit = IOMMUUnit(spec: Units.vtd48())
        let d = try IOMMUDomain(unit: unit.spec, options: .init(dirtyTrackingCapable: true))
        unit.setContext(requester: dev, domain: d)
        try d.map(iova: 0, physical: 0x10000, length: 4 * 4096, permissions: [.read, .write], maxLeafSize: .max)
        try d.setDirtyTracking(true)

        // A read fills the IOTLB without D; the write that follows must walk to set D.
        _ = try unit.translate(requester: dev, iova: 0, write: false).get()
        #expect(d.translate(iova: 0)?.dirty == false)
        let w = try unit.translate(requester: dev, iova: 8, write: true).get()
        #expect(w.dirty)
        #expect(d.translate(iova: 0)?.dirty == true)
        // Now the entry knows D is set: a write hit needs no walk.
        let hits = unit.iotlb.statistics.hits
        _ = try unit.translate(requester: dev, iova: 16, write: true).get()
        #expect(unit.iotlb.statistics.hits == hits + 1)

        // Harvest-and-clear invalidates, so the next write sets D again.
        var dirty: [UInt64] = []
        d.readAndClearDirty(iova: 0, length: 4 * 4096, clear: true) { iova, _ in dirty.append(iova) }
        #expect(dirty == [0])
        #expect(d.translate(iova: 0)?.dirty == false)
        _ = try unit.translate(requester: dev, iova: 24, write: true).get()
        #expect(d.translate(iova: 0)?.dirty == true, "a cached 'dirty known' entry would have lost this write")

        // Tracking off: writes leave D alone (enabled again later, the IOTLB must not pretend).
        try d.setDirtyTracking(false)
        d.readAndClearDirty(iova: 0, length: .max, clear: true) { _, _ in }
        _ = try unit.translate(requester: dev, iova: 4096, write: true).get()
        #expect(d.translate(iova: 4096)?.dirty == false)
        try d.setDirtyTracking(true)
        _ = try unit.translate(requester: dev, iova: 4096, write: true).get()
        #expect(d.translate(iova: 4096)?.dirty == true)
    }

    @Test func dmaAcrossLeafBoundariesThroughSimulatedMemory() throws {
        let space = SimulatedAddressSpace()
        let unit = IOMMUUnit(spec: Units.vtd48())
        let d = try IOMMUDomain(unit: unit.spec, options: .init(dirtyTrackingCapable: true))
        unit.setContext(requester: dev, domain: d)
        try d.setDirtyTracking(true)

        // Four 4 KiB user pages mapped to IOVAs in reverse order, then a 2 MiB huge page.
        let va = space.map(length: 4 * 4096)
        let pages = try physicalRuns(space, va: va, length: 4 * 4096)
        #expect(pages.count == 1)
        let base: UInt64 = 0x20_0000
        for i in 0..<4 {
            try d.map(iova: base + UInt64(i) * 4096, physical: pages[0].physical + UInt64(3 - i) * 4096,
                      length: 4096, permissions: [.read, .write], maxLeafSize: .max)
        }
        let hugeVA = space.map(length: 2 * MiB, backingPageSize: 2 * MiB)
        let huge = try physicalRuns(space, va: hugeVA, length: 2 * MiB)
        let hugeIOVA = base + 2 * MiB
        try d.map(iova: hugeIOVA, physical: huge[0].physical, length: 2 * MiB, permissions: [.read, .write],
                  maxLeafSize: 2 * MiB)
        #expect(d.translate(iova: hugeIOVA)?.leafSize == 2 * MiB)

        // Write 10000 bytes starting 100 bytes into IOVA page 0.
        let count = 10_000
        let source = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 8)
        defer { source.deallocate() }
        for i in 0..<count { source.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ 1), toByteOffset: i, as: UInt8.self) }
        try unit.dmaWrite(requester: dev, iova: base + 100, from: source, count: count, memory: space)
        // IOVA page k lives in user page 3 - k.
        func userByte(_ iovaOffset: Int) -> UInt8 {
            let page = iovaOffset / 4096, within = iovaOffset % 4096
            return space.pointer(va: va + UInt64(3 - page) * 4096 + UInt64(within))!.load(as: UInt8.self)
        }
        var mismatches = 0
        for i in 0..<count where userByte(100 + i) != UInt8(truncatingIfNeeded: i &* 7 &+ 1) { mismatches += 1 }
        #expect(mismatches == 0)
        #expect(userByte(99) == 0)
        #expect(userByte(100 + count) == 0)

        // Read it back through the IOMMU.
        let back = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 8)
        defer { back.deallocate() }
        try unit.dmaRead(requester: dev, iova: base + 100, into: back, count: count, memory: space)
        #expect(memcmpEqual(source, back, count))

        // Dirty pages: IOVA pages 0, 1, 2 (100 + 10000 bytes), not 3.
        var dirty: [UInt64] = []
        d.readAndClearDirty(iova: base, length: 4 * 4096, clear: true) { iova, _ in dirty.append(iova) }
        #expect(dirty == [base, base + 4096, base + 2 * 4096])

        // Across the 4K run's end into the 2 MiB leaf (not contiguous physically).
        let cross = base + 4 * 4096 - 10
        #expect(d.translate(iova: cross + 10) == nil, "a hole between the run and the huge page")
        #expect(throws: DMAFault.self) {
            try unit.dmaWrite(requester: dev, iova: cross, from: source, count: 20, memory: space)
        }
        try unit.dmaWrite(requester: dev, iova: hugeIOVA + 2 * MiB - 5000, from: source, count: 5000, memory: space)
        #expect(space.pointer(va: hugeVA + 2 * MiB - 5000)!.load(as: UInt8.self) == 1)
        #expect(throws: DMAFault.self) {
            try unit.dmaRead(requester: dev, iova: hugeIOVA + 2 * MiB - 1, into: back, count: 2, memory: space)
        }

        // A DMA after unmap faults even though its translation was cached.
        try unit.dmaRead(requester: dev, iova: base, into: back, count: 64, memory: space)
        try unit.dmaRead(requester: dev, iova: base, into: back, count: 64, memory: space)
        d.unmap(iova: base, length: 4096)
        do {
            try unit.dmaRead(requester: dev, iova: base, into: back, count: 64, memory: space)
            Issue.record("DMA after unmap succeeded")
        } catch {
            #expect(error.reason == .notPresent)
            #expect(error.iova == base)
        }
        // Zero and negative counts are no-ops.
        try unit.dmaRead(requester: dev, iova: 0xDEAD_0000, into: back, count: 0, memory: space)
        try unit.dmaWrite(requester: dev, iova: 0xDEAD_0000, from: source, count: -5, memory: space)
    }

    @Test func dmaToUnbackedPhysicalIsABusErrorNotAnIOMMUFault() throws {
        let space = SimulatedAddressSpace()
        let unit = IOMMUUnit(spec: Units.vtd48())
        let d = try IOMMUDomain(unit: unit.spec)
        unit.setContext(requester: dev, domain: d)
        try d.map(iova: 0, physical: 0x1000, length: 4096, permissions: .read, maxLeafSize: .max)
        var byte: UInt8 = 0
        do {
            try unit.dmaRead(requester: dev, iova: 0, into: &byte, count: 1, memory: space)
            Issue.record("read of unbacked memory succeeded")
        } catch {
            #expect(error.reason == .memoryError)
        }
        #expect(unit.faultCount == 0)
    }

    @Test func mockUnitTranslatesTwoKiBPages() throws {
        let unit = IOMMUUnit(spec: Units.mock())
        let d = try IOMMUDomain(unit: unit.spec)
        unit.setContext(requester: dev, domain: d)
        let start: UInt64 = 1 << 24
        try d.map(iova: start, physical: 0x10_0000, length: 2048, permissions: .read, maxLeafSize: .max)
        try d.map(iova: start + 2048, physical: 0x30_0000, length: 2048, permissions: .read, maxLeafSize: .max)
        #expect(try unit.translate(requester: dev, iova: start + 2047, write: false).get().physical == 0x10_07FF)
        #expect(try unit.translate(requester: dev, iova: start + 2048, write: false).get().physical == 0x30_0000)
        #expect(try unit.translate(requester: dev, iova: start + 2047, write: false).get().physical == 0x10_07FF)
        #expect(unit.iotlb.statistics.hits == 1)
        #expect(fault(unit.translate(requester: dev, iova: start - 1, write: false)) == .outsideAperture)
    }

    @Test func concurrentTranslationWhileMappingAndUnmapping() async throws {
        let unit = IOMMUUnit(spec: Units.vtd48(), iotlbEntries: 64)
        let d = try IOMMUDomain(unit: unit.spec, options: .init(dirtyTrackingCapable: true))
        try d.setDirtyTracking(true)
        let devices = (0..<4).map { requester(1, UInt8($0)) }
        for r in devices { unit.setContext(requester: r, domain: d) }
        // Stable pages always translate to their own physical page.
        try d.map(iova: 0, physical: 0x100_0000, length: 256 * 4096, permissions: [.read, .write], maxLeafSize: .max)
        let wrong = Shared<Int>(0)
        await withTaskGroup(of: Void.self) { group in
            for r in devices {
                group.addTask {
                    var rng = SplitMix64(seed: UInt64(r.requesterID))
                    for _ in 0..<20_000 {
                        let page = rng.next() % 512
                        let result = unit.translate(requester: r, iova: page * 4096 + 8, write: rng.next() & 1 == 0)
                        if page < 256 {
                            if (try? result.get().physical) != 0x100_0000 + page * 4096 + 8 {
                                wrong.withLock { $0 += 1 }
                            }
                        } else if case .success(let t) = result, t.physical != 0x200_0000 + page * 4096 + 8 {
                            wrong.withLock { $0 += 1 }
                        }
                    }
                }
            }
            group.addTask {
                for _ in 0..<500 {
                    try? d.map(iova: 256 * 4096, physical: 0x200_0000 + 256 * 4096, length: 256 * 4096,
                               permissions: .read, maxLeafSize: .max)
                    d.unmap(iova: 256 * 4096, length: 256 * 4096)
                    d.readAndClearDirty(iova: 0, length: .max, clear: true) { _, _ in }
                }
            }
        }
        #expect(wrong.withLock { $0 } == 0)
        // After the last unmap nothing above page 256 translates, cached or not.
        for r in devices {
            #expect(fault(unit.translate(requester: r, iova: 300 * 4096, write: false)) == .notPresent)
        }
    }
}

func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    for i in 0..<count where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
        return false
    }
    return true
}

/// A mutex-protected value that escaping closures can share.
final class Shared<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    init(_ value: T) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout T) -> R) -> R { mutex.withLock { body(&$0) } }
}
