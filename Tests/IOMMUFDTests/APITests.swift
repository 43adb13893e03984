import Testing
import IOMMUFD

/// The Swift API as a user writes it (the README example), over the emulator.
@Suite struct APITests {
    let memory = SimulatedAddressSpace()
    let platform: Platform
    let context: IOMMUContext

    init() {
        platform = Platform(machine: .default, physicalMemory: memory)
        context = IOMMUContext.emulated(platform: platform, memory: memory)
    }

    func dmaDeviceName() throws -> String {
        try #require(platform.devices.first { $0.spec.model == .dmaEngine && $0.driver == "vfio-pci" }).spec.name
    }

    @Test func readmeExampleMapsAttachesAndTranslates() throws {
        let va = memory.map(length: 1 << 20)
        let ioas = try context.makeIOAS()
        let iova = try ioas.map(userVA: va, length: 1 << 20, permissions: [.read, .write])
        let device = try context.bind(.name(try dmaDeviceName()))
        let hwpt = try device.attach(to: ioas)
        let translation = try #require(try context.engine!.translate(hwpt: hwpt.id, iova: iova + 0x1234))
        let expected = UInt64(UInt(bitPattern: memory.pointer(va: va + 0x1234)))
        #expect(translation.physical == expected)
        #expect(translation.permissions == [.read, .write])
        #expect(try ioas.unmapAll() == 1 << 20)
        try device.detach()
        try device.unbind()
        try ioas.destroy()
        #expect(context.engine!.objects().isEmpty)
        #expect(platform.ledger.totalPinnedPages == 0)
    }

    @Test func errorsCarryErrnoAndOperation() throws {
        let ioas = try context.makeIOAS()
        let va = memory.map(length: 8192)
        try ioas.map(userVA: va, length: 8192, at: 0x10000)
        do {
            try ioas.map(userVA: va, length: 4096, at: 0x11000)
            Issue.record("overlapping fixed map succeeded")
        } catch {
            #expect(error.errno == .EEXIST)
            #expect(error.operation == "IOAS_MAP")
        }
        do {
            try context.destroy(id: 99)
            Issue.record("destroy of an unknown ID succeeded")
        } catch {
            #expect(error.errno == .ENOENT)
        }
    }

    @Test func dmaThroughTheAPIAndDirtyBitmap() throws {
        let name = try #require(platform.devices.first {
            $0.unit.spec.dirtyTracking && $0.driver == "vfio-pci" && platform.groupMembers($0.group).count == 1
        }).spec.name
        let device = try context.bind(.name(name))
        let ioas = try context.makeIOAS()
        let va = memory.map(length: 64 * 1024)
        let iova = try ioas.map(userVA: va, length: 64 * 1024)
        let hwpt = try device.allocHWPT(on: ioas, flags: [.dirtyTracking])
        try device.attach(to: hwpt)
        try hwpt.setDirtyTracking(true)
        let platformDevice = try #require(platform.device(named: name))
        var word: UInt64 = 0x1122334455667788
        try platform.dmaWrite(device: platformDevice, iova: iova + 3 * 4096 + 8, from: &word, count: 8)
        #expect(memory.pointer(va: va + 3 * 4096 + 8)!.load(as: UInt64.self) == 0x1122334455667788)
        let bitmap = try hwpt.dirtyBitmap(iova: iova, length: 64 * 1024)
        #expect(bitmap == [1 << 3])
        #expect(try hwpt.dirtyBitmap(iova: iova, length: 64 * 1024) == [0])
        context.close()
        #expect(platform.ledger.totalPinnedPages == 0)
    }
}
