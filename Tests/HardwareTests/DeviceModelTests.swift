import Testing
import IOMMUHardware
import ProcessMemory
import Synchronization
import UIOMMUBase

/// Records what a function signals.
final class RecordingSink: PCIInterruptSink, @unchecked Sendable {
    let state = Mutex<(messages: [Int], lines: [Bool])>(([], []))
    func message(vector: Int, msix: Bool) { state.withLock { $0.messages.append(msix ? 1000 + vector : vector) } }
    func line(asserted: Bool) { state.withLock { $0.lines.append(asserted) } }
    var messages: [Int] { state.withLock { $0.messages } }
    var lines: [Bool] { state.withLock { $0.lines } }
}

/// One device behind a VT-d unit, with a domain over a simulated address space.
struct DeviceRig {
    let space = SimulatedAddressSpace()
    let unit: IOMMUUnit
    let domain: IOMMUDomain
    let function: PCIFunction
    let sink = RecordingSink()

    init(_ model: DeviceModel = .edu, bars: [UInt64] = [1 << 20], dirty: Bool = false,
         id: (UInt16, UInt16) = (0x1234, 0x11e8)) throws {
        unit = IOMMUUnit(spec: Units.vtd48())
        domain = try IOMMUDomain(unit: unit.spec, options: .init(dirtyTrackingCapable: dirty))
        let spec = PCIDeviceSpec(name: "dev0", address: requester(0, 0x10), vendorID: id.0, deviceID: id.1,
                                 classCode: 0x00ff00, iommu: "dmar0", barSizes: bars, model: model)
        function = PCIFunction.make(spec)
        function.dma = IOMMUDMAPort(unit: unit, requester: spec.address, memory: space)
        function.interruptSink = sink
        unit.setContext(requester: spec.address, domain: domain)
    }

    /// Maps `length` bytes of fresh client memory at `iova`; returns the client VA.
    func map(iova: UInt64, length: UInt64, permissions: IOPermissions = [.read, .write]) throws -> UInt64 {
        let va = space.map(length: length)
        var offset: UInt64 = 0
        try space.resolve(offset: va, length: length, writable: true) { (run) throws(IOMMUError) in
            try domain.map(iova: iova + offset, physical: run.physical, length: run.length,
                           permissions: permissions, maxLeafSize: 4096)
            offset += run.length
        }
        return va
    }

    func poke(_ va: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { space.pointer(va: va)!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    func peek(_ va: UInt64, _ count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: space.pointer(va: va)!, count: count))
    }

    func r32(_ offset: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: function.barRead(0, offset: offset, width: 4)) }
    func w32(_ offset: UInt64, _ v: UInt32) { function.barWrite(0, offset: offset, width: 4, UInt64(v)) }
    func w64(_ offset: UInt64, _ v: UInt64) { function.barWrite(0, offset: offset, width: 8, v) }
    func command(_ bits: UInt16) { function.configWrite(PCIConfig.command, width: 2, UInt32(bits)) }
    var status: UInt16 { UInt16(function.configRead(PCIConfig.status, width: 2)) }
}

@Suite struct ConfigSpaceTests {
    @Test func eduHeaderAsQEMUBuildsIt() throws {
        let f = try DeviceRig().function
        #expect(f.configRead(0, width: 4) == 0x11e8_1234)
        #expect(f.configRead(PCIConfig.revisionID, width: 1) == 0x10)
        #expect(f.configRead(PCIConfig.classCode, width: 1) == 0x00 && f.configRead(0x0a, width: 2) == 0x00ff)
        #expect(f.configRead(PCIConfig.headerType, width: 1) == 0)
        #expect(f.configRead(PCIConfig.subsystemVendorID, width: 4) == 0x1100_1af4)
        #expect(f.configRead(PCIConfig.interruptPin, width: 1) == 1)
        #expect(f.config.size == 256, "conventional PCI")
        // The capability list: MSI at 0x40, 64-bit, one vector, nothing after it.
        #expect(f.configRead(PCIConfig.status, width: 2) & UInt32(PCIConfig.statusCapabilityList) != 0)
        #expect(f.configRead(PCIConfig.capabilitiesPointer, width: 1) == 0x40)
        #expect(f.configRead(0x40, width: 1) == UInt32(PCIConfig.capMSI) && f.configRead(0x41, width: 1) == 0)
        #expect(f.configRead(0x42, width: 2) == UInt32(PCIConfig.msiControl64Bit))
        #expect(f.msiCapability == 0x40 && f.msixCapability == nil && f.expressCapability == nil)
        #expect(f.msiVectorsCapable == 1)
        #expect(!f.supportsReset, "QEMU's edu has no reset method")
        // Past the end of conventional config space: all ones.
        #expect(f.configRead(0x100, width: 4) == 0xffff_ffff)
    }

    @Test func barSizingReadOnlyAndRW1CBits() throws {
        let rig = try DeviceRig(.generic, bars: [16 << 10, 0, 32, 256 << 20], id: (0x8086, 0x10fb))
        let f = rig.function
        // Memory BAR0, 16 KiB: write all ones, read the size mask.
        f.configWrite(PCIConfig.bar0, width: 4, 0xffff_ffff)
        #expect(f.configRead(PCIConfig.bar0, width: 4) == 0xffff_c000)
        f.configWrite(PCIConfig.bar0, width: 4, 0xfebf_0000)
        #expect(f.configRead(PCIConfig.bar0, width: 4) == 0xfebf_0000)
        // No BAR1: reads 0 whatever is written.
        f.configWrite(PCIConfig.bar0 + 4, width: 4, 0xffff_ffff)
        #expect(f.configRead(PCIConfig.bar0 + 4, width: 4) == 0)
        // An I/O BAR of 32 bytes: bit 0 set, size mask in the rest.
        f.configWrite(PCIConfig.bar0 + 8, width: 4, 0xffff_ffff)
        #expect(f.configRead(PCIConfig.bar0 + 8, width: 4) == 0xffff_ffe1)
        f.configWrite(PCIConfig.bar0 + 12, width: 4, 0xffff_ffff)
        #expect(f.configRead(PCIConfig.bar0 + 12, width: 4) == 0xf000_0000)
        // IDs are read-only.
        f.configWrite(0, width: 4, 0)
        #expect(f.configRead(0, width: 4) == 0x10fb_8086)
        // Command: only the implemented bits stick.
        f.configWrite(PCIConfig.command, width: 2, 0xffff)
        #expect(f.configRead(PCIConfig.command, width: 2) == 0x0547)
        // Status: error bits are write-1-to-clear; the capability bit is read-only.
        let rig2 = try DeviceRig()
        rig2.command(PCIConfig.commandBusMaster)
        rig2.w64(0x80, 0x9000_0000 & ((1 << 28) - 1))
        rig2.w64(0x88, EduDevice.bufferAddress)
        rig2.w64(0x90, 8)
        rig2.w64(0x98, EduDevice.dmaStart)         // unmapped IOVA: master abort
        #expect(rig2.status & PCIConfig.statusReceivedMasterAbort != 0)
        rig2.function.configWrite(PCIConfig.status, width: 2, 0)
        #expect(rig2.status & PCIConfig.statusReceivedMasterAbort != 0, "writing 0 clears nothing")
        rig2.function.configWrite(PCIConfig.status, width: 2, UInt32(PCIConfig.statusReceivedMasterAbort | PCIConfig.statusCapabilityList))
        #expect(rig2.status & PCIConfig.statusReceivedMasterAbort == 0)
        #expect(rig2.status & PCIConfig.statusCapabilityList != 0)
    }

    @Test func genericFunctionIsExpressWithMSIAndMSIX() throws {
        let rig = try DeviceRig(.generic, bars: [16 << 10], id: (0x144d, 0xa808))
        let f = rig.function
        #expect(f.config.size == 4096)
        #expect(f.expressCapability == 0x40 && f.supportsReset)
        #expect(f.msiCapability != nil && f.msiVectorsCapable == 4)
        let x = try #require(f.msixCapability)
        #expect(f.configRead(x + 2, width: 2) & 0x7ff == 7, "8 vectors")
        #expect(f.configRead(x + 4, width: 4) == 0x2000, "table in BAR0 at 8 KiB")
        #expect(f.configRead(x + 8, width: 4) == 0x3000, "PBA at 12 KiB")
        // The rest of BAR0 is memory-like.
        f.barWrite(0, offset: 0x100, width: 8, 0x1122_3344_5566_7788)
        #expect(f.barRead(0, offset: 0x104, width: 4) == 0x1122_3344)
        #expect(f.barRead(0, offset: 0x4000, width: 4) == 0xffff_ffff, "past the BAR")
        // MSI-X: entries come out of reset masked; enabling and unmasking delivers.
        f.configWrite(x + 2, width: 2, UInt32(PCIConfig.msixControlEnable))
        #expect(f.msixEnabled)
        f.lock.withLock { _ = f.signalMessage(vector: 3) }
        #expect(rig.sink.messages.isEmpty)
        f.barWrite(0, offset: 0x2000 + 3 * 16 + 12, width: 4, 0)
        f.lock.withLock { _ = f.signalMessage(vector: 3) }
        #expect(rig.sink.messages == [1003])
        // FLR through the PCIe device control register resets everything.
        f.configWrite(0x40 + PCIConfig.expDeviceControl, width: 2, UInt32(PCIConfig.expDeviceControlInitiateFLR))
        #expect(!f.msixEnabled && f.barRead(0, offset: 0x100, width: 8) == 0)
        #expect(f.configRead(0x40 + PCIConfig.expDeviceControl, width: 2) & 0x8000 == 0)
    }
}

@Suite struct EduDeviceTests {
    @Test func identLivenessFactorial() throws {
        let rig = try DeviceRig()
        #expect(rig.r32(0x00) == 0x0100_00ed)
        rig.w32(0x04, 0x1234_5678)
        #expect(rig.r32(0x04) == ~UInt32(0x1234_5678))
        rig.w32(0x08, 5)
        #expect(rig.r32(0x20) & 1 == 0, "done before the next access")
        #expect(rig.r32(0x08) == 120)
        rig.w32(0x08, 12)
        #expect(rig.r32(0x08) == 479_001_600)
        rig.w32(0x08, 13)
        #expect(rig.r32(0x08) == 1_932_053_504, "32-bit wrapping, as QEMU's uint32_t")
        // Wrong access sizes: all ones, no effect.
        #expect(rig.function.barRead(0, offset: 0x00, width: 2) == 0xffff)
        #expect(rig.function.barRead(0, offset: 0x00, width: 8) == .max)
        rig.function.barWrite(0, offset: 0x04, width: 8, 0)
        #expect(rig.r32(0x04) == ~UInt32(0x1234_5678))
        // Unknown registers and the DMA buffer itself are not readable through the BAR.
        #expect(rig.r32(0x0c) == 0xffff_ffff)
        #expect(rig.r32(0x40000) == 0xffff_ffff)
    }

    @Test func interruptsFollowMSIEnable() throws {
        let rig = try DeviceRig()
        let f = rig.function
        // INTx (MSI disabled): the line stays up until the status is acknowledged to zero.
        rig.w32(0x60, 0x5)
        #expect(rig.r32(0x24) == 0x5)
        #expect(rig.sink.lines == [true])
        #expect(rig.status & PCIConfig.statusInterrupt != 0)
        rig.w32(0x64, 0x1)
        #expect(rig.sink.lines == [true])
        rig.w32(0x64, 0x4)
        #expect(rig.sink.lines == [true, false] && rig.r32(0x24) == 0)
        // INTx disable in the command register gates delivery.
        rig.command(PCIConfig.commandINTxDisable)
        rig.w32(0x60, 0x2)
        #expect(rig.sink.lines == [true, false])
        rig.command(0)
        #expect(rig.sink.lines == [true, false, true], "enabling INTx again delivers the pending level")
        rig.w32(0x64, 0x2)
        #expect(rig.sink.lines == [true, false, true, false])
        // The factorial interrupt (status bit 7) with MSI enabled: vector 0, no line.
        f.configWrite(0x42, width: 2, 1)
        #expect(f.msiEnabled)
        rig.w32(0x20, 0x80)
        #expect(rig.r32(0x20) == 0x80)
        rig.w32(0x08, 4)
        #expect(rig.sink.messages == [0])
        #expect(rig.r32(0x24) == EduDevice.factorialInterrupt)
        rig.w32(0x64, EduDevice.factorialInterrupt)
        #expect(rig.sink.lines.count == 4, "MSI mode never touches the line")
    }

    @Test func dmaBothDirectionsThroughTheIOMMU() throws {
        let rig = try DeviceRig(dirty: true)
        try rig.domain.setDirtyTracking(true)
        let src = try rig.map(iova: 0x10_0000, length: 4096)
        let dst = try rig.map(iova: 0x20_0000, length: 4096)
        let pattern = (0..<100).map { UInt8($0 * 7 & 0xff) }
        rig.poke(src, pattern)
        // Bus mastering off: the device issues nothing.
        rig.w64(0x80, 0x10_0000); rig.w64(0x88, EduDevice.bufferAddress); rig.w64(0x90, 100)
        rig.w32(0x98, 1)
        #expect(rig.function.dmaErrors.last == .busMasterDisabled)
        #expect(rig.unit.faultCount == 0)
        #expect(EduDevice.self == type(of: rig.function) && (rig.function as! EduDevice).bufferContents.prefix(100).allSatisfy { $0 == 0 })

        rig.command(PCIConfig.commandMemory | PCIConfig.commandBusMaster)
        rig.function.configWrite(0x42, width: 2, 1)     // MSI on
        rig.w32(0x98, UInt32(EduDevice.dmaStart | EduDevice.dmaIRQ))
        #expect(rig.r32(0x98) & 1 == 0)
        #expect(Array((rig.function as! EduDevice).bufferContents.prefix(100)) == pattern)
        #expect(rig.sink.messages == [0] && rig.r32(0x24) == EduDevice.dmaInterrupt)
        rig.w32(0x64, EduDevice.dmaInterrupt)

        // Device → RAM at dst + 100 (the spec's example), 8-byte register writes.
        rig.w64(0x80, EduDevice.bufferAddress)
        rig.w64(0x88, 0x20_0000 + 100)
        rig.w64(0x90, 100)
        rig.w64(0x98, EduDevice.dmaStart | EduDevice.dmaToRAM | EduDevice.dmaIRQ)
        #expect(rig.peek(dst + 100, 100) == pattern)
        #expect(rig.peek(dst, 100).allSatisfy { $0 == 0 })
        #expect(rig.sink.messages == [0, 0])
        // The write set the dirty bit of the destination page only.
        var dirty: [UInt64] = []
        rig.domain.readAndClearDirty(iova: 0x10_0000, length: 0x20_0000, clear: true) { leaf, _ in dirty.append(leaf) }
        #expect(dirty == [0x20_0000])
        #expect(rig.unit.faultCount == 0)
        #expect(rig.status & PCIConfig.statusReceivedMasterAbort == 0)
    }

    @Test func dmaToUnmappedOrReadOnlyIOVAIsStopped() throws {
        let rig = try DeviceRig()
        rig.command(PCIConfig.commandBusMaster)
        let ro = try rig.map(iova: 0x30_0000, length: 4096, permissions: .read)
        rig.poke(ro, [1, 2, 3, 4])
        // Device → RAM into a read-only mapping: a permission fault, memory unchanged.
        rig.w64(0x80, EduDevice.bufferAddress); rig.w64(0x88, 0x30_0000); rig.w64(0x90, 4)
        rig.w64(0x98, EduDevice.dmaStart | EduDevice.dmaToRAM | EduDevice.dmaIRQ)
        #expect(rig.peek(ro, 4) == [1, 2, 3, 4])
        #expect(rig.unit.faultLog.last?.reason == .permission && rig.unit.faultLog.last?.write == true)
        #expect(rig.status & PCIConfig.statusReceivedMasterAbort != 0)
        #expect(rig.r32(0x98) & 1 == 0, "the command completes (with an error)")
        #expect(rig.sink.lines == [true], "the completion interrupt is raised as QEMU does")
        // RAM → device from an IOVA nobody mapped: not-present, logged DMAR-style.
        rig.w64(0x80, 0x40_0000); rig.w64(0x88, EduDevice.bufferAddress)
        rig.w64(0x98, EduDevice.dmaStart)
        let fault = try #require(rig.unit.faultLog.last)
        #expect(fault.reason == .notPresent && !fault.write && fault.iova == 0x40_0000)
        #expect(fault.requester == PCIAddress(bus: 0, device: 0x10, function: 0))
        #expect("\(fault)".contains("DMA read fault from 0000:00:10.0 at 0x400000: not-present"))
        if case .fault(let f)? = rig.function.dmaErrors.last { #expect(f.reason == .notPresent) } else { Issue.record("no fault") }
        // Out of the device buffer: refused by the device, nothing reaches the bus.
        let faults = rig.unit.faultCount
        rig.w64(0x88, EduDevice.bufferAddress + 4000); rig.w64(0x90, 200)
        rig.w64(0x98, EduDevice.dmaStart)
        #expect((rig.function as! EduDevice).rangeErrors == 1 && rig.unit.faultCount == faults)
    }

    @Test func dmaAddressesAreClampedToTheMask() throws {
        let rig = try DeviceRig()
        rig.command(PCIConfig.commandBusMaster)
        let va = try rig.map(iova: 0x10_0000, length: 4096)
        rig.poke(va, [9, 9, 9])
        rig.w64(0x80, (1 << 40) | 0x10_0000)          // clamped to 28 bits: 0x100000
        rig.w64(0x88, EduDevice.bufferAddress); rig.w64(0x90, 3)
        rig.w64(0x98, EduDevice.dmaStart)
        #expect(Array((rig.function as! EduDevice).bufferContents.prefix(3)) == [9, 9, 9])
        // Registers written while a DMA runs are ignored; start without bit 0 does nothing.
        rig.w64(0x98, EduDevice.dmaToRAM)
        #expect(rig.function.barRead(0, offset: 0x98, width: 8) == EduDevice.dmaStart & 0)
    }
}

@Suite struct DMAEngineDeviceTests {
    @Test func copiesAndStopsAtTheFirstFault() throws {
        let rig = try DeviceRig(.dmaEngine, bars: [16 << 10], id: (0x8086, 0x2021))
        rig.command(PCIConfig.commandBusMaster)
        #expect(rig.r32(0) == DMAEngineDevice.identification)
        let src = try rig.map(iova: 0x1_0000, length: 8192)
        let dst = try rig.map(iova: 0x2_0000, length: 4096)
        let bytes = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        rig.poke(src, bytes)
        rig.w64(0x08, 0x1_0000); rig.w64(0x10, 0x2_0000); rig.w64(0x18, 4096)
        rig.w32(0x20, DMAEngineDevice.controlStart | DMAEngineDevice.controlInterrupt)
        #expect(rig.r32(0x24) == DMAEngineDevice.statusDone)
        #expect(rig.peek(dst, 4096) == Array(bytes.prefix(4096)))
        #expect(rig.sink.lines == [true])
        rig.w32(0x24, DMAEngineDevice.statusDone)
        #expect(rig.sink.lines == [true, false])
        // 8 KiB into a 4 KiB window: the second burst faults at 0x21000.
        rig.w64(0x18, 8192)
        rig.w32(0x20, DMAEngineDevice.controlStart)
        #expect(rig.r32(0x24) == DMAEngineDevice.statusError)
        #expect(rig.function.barRead(0, offset: 0x28, width: 8) == 0x2_1000)
        #expect(rig.function.barRead(0, offset: 0x30, width: 8) == 4096)
        #expect(rig.unit.faultLog.last?.iova == 0x2_1000)
    }
}

@Suite struct FaultMessageTests {
    @Test func dmarLinesAsLinuxPrintsThem() {
        let dev = PCIAddress(bus: 0, device: 0x10, function: 0)
        let read = DMAFault(requester: dev, pasid: nil, iova: 0x300000, write: false, reason: .notPresent)
        #expect(read.kernelLogLine(unit: Units.vtd48())
                == "DMAR: [DMA Read NO_PASID] Request device [00:10.0] fault addr 0x300000 [fault reason 0x06] PTE Read access is not set")
        let write = DMAFault(requester: dev, pasid: 3, iova: 0x1000, write: true, reason: .permission)
        #expect(write.kernelLogLine(unit: Units.vtd48())
                == "DMAR: [DMA Write PASID 3] Request device [00:10.0] fault addr 0x1000 [fault reason 0x05] PTE Write access is not set")
        let blocked = DMAFault(requester: dev, pasid: nil, iova: 0, write: false, reason: .blocked)
        #expect(blocked.kernelLogLine(unit: Units.vtd48()).contains("[fault reason 0x02] Present bit in context entry is clear"))
        #expect(read.kernelLogLine(unit: Units.amd()).hasPrefix("AMD-Vi: Event logged [IO_PAGE_FAULT"))
    }
}
