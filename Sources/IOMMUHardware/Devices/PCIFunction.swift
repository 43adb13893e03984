// A simulated PCI function: configuration space, BARs with behaviour, interrupts and DMA.
//
// The base class owns what every function has: the configuration space with its hardware
// semantics, the BAR registers (sizing works as on hardware), interrupt delivery (MSI, MSI-X
// or INTx, chosen by the function's own capability state, as a device does), and a DMA port
// through which every bus-master access goes. Subclasses give the BARs behaviour
// (`EduDevice`, `DMAEngineDevice`); the base behaviour is memory-like storage.
//
// Who talks to a function:
//  - the platform gives it a `DMAPort` (its requester ID behind its IOMMU unit), so a device's
//    DMA is translated by the IOMMU with the domain's permissions, A/D bits and IOTLB, and a
//    fault is logged by the unit;
//  - a host driver (VFIO in this project) reads and writes config space and BARs, and installs
//    a `PCIInterruptSink` to receive interrupts.
//
// Locking: one lock per function guards its config space and state. The sink is called with
// that lock held, so a sink must never call back into the function (VFIO's does not: it only
// signals eventfds).

public import UIOMMUBase
public import ProcessMemory

/// The bus side of a device's DMA: reads and writes at IOVAs through its IOMMU.
public protocol DMAPort: AnyObject, Sendable {
    func read(iova: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(DMAFault)
    func write(iova: UInt64, from source: UnsafeRawPointer, count: Int) throws(DMAFault)
}

/// A DMA port through an IOMMU unit: the requester's context entry picks the domain.
public final class IOMMUDMAPort: DMAPort, @unchecked Sendable {
    public let unit: IOMMUUnit
    public let requester: PCIAddress
    public let memory: any PhysicalMemory

    public init(unit: IOMMUUnit, requester: PCIAddress, memory: any PhysicalMemory) {
        self.unit = unit; self.requester = requester; self.memory = memory
    }

    public func read(iova: UInt64, into destination: UnsafeMutableRawPointer, count: Int) throws(DMAFault) {
        try unit.dmaRead(requester: requester, iova: iova, into: destination, count: count, memory: memory)
    }

    public func write(iova: UInt64, from source: UnsafeRawPointer, count: Int) throws(DMAFault) {
        try unit.dmaWrite(requester: requester, iova: iova, from: source, count: count, memory: memory)
    }
}

/// Where a function's interrupts go (the host's interrupt handling for it).
public protocol PCIInterruptSink: AnyObject, Sendable {
    /// MSI vector `vector` was signalled (`msix`: through the MSI-X table).
    func message(vector: Int, msix: Bool)
    /// The INTx line changed level.
    func line(asserted: Bool)
}

/// Why a device's DMA did not happen.
public enum DeviceDMAError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Bus mastering is disabled in the command register: the device issues no DMA.
    case busMasterDisabled
    /// The IOMMU (or the memory behind it) refused the access.
    case fault(DMAFault)

    public var description: String {
        switch self {
        case .busMasterDisabled: "bus mastering is disabled"
        case .fault(let f): f.description
        }
    }
}

/// A PCI function of the simulated machine.
open class PCIFunction: @unchecked Sendable {
    public let spec: PCIDeviceSpec
    /// The BARs by index (nil: not implemented, or the upper half of a 64-bit BAR).
    public let bars: [PCIBAR?]
    /// Guards `config` and every subclass's state.
    public let lock = Lock()
    /// Configuration space; use only with `lock` held (the accessors below take it).
    public let config: PCIConfigSpace
    public let msiCapability: Int?
    public let msixCapability: Int?
    public let expressCapability: Int?
    /// MSI-X vectors and where the table and PBA live (BAR, offset).
    public let msixVectors: Int
    public let msixTable: (bar: Int, offset: UInt64)?
    public let msixPBA: (bar: Int, offset: UInt64)?

    private var _dma: (any DMAPort)?
    private var _sink: (any PCIInterruptSink)?
    private var intxLevel = false
    /// The level last reported to the sink (the line after the command register's disable).
    private var deliveredLevel = false
    private var msixEntries: [UInt8]
    /// Sparse storage for memory-like BARs: (bar, page) → bytes.
    private var pages: [Int: [UInt8]] = [:]
    /// Every DMA the function attempted that did not complete, most recent last (at most 64).
    public private(set) var dmaErrors: [DeviceDMAError] = []

    /// Options for the configuration space a subclass wants.
    public struct Layout: Sendable {
        public var revision: UInt8 = 0x01
        public var subsystemVendorID: UInt16? = nil
        public var subsystemID: UInt16? = nil
        /// PCI Express (4 KiB config space, a PCIe capability with FLR) or conventional PCI.
        public var express = true
        public var interruptPin: UInt8 = 1
        /// MSI vectors (a power of two, 0 = no MSI capability), 64-bit addressing.
        public var msiVectors = 1
        public var msiPerVectorMask = false
        /// MSI-X vectors (0 = none); the table goes in the last memory BAR of at least 8 KiB.
        public var msixVectors = 0
        public init() {}
    }

    public init(spec: PCIDeviceSpec, layout: Layout = Layout()) {
        self.spec = spec
        var bars = [PCIBAR?](repeating: nil, count: 6)
        var i = 0
        while i < min(6, spec.barSizes.count) {
            let size = spec.barSizes[i]
            if size != 0 {
                if size <= 256 {
                    // PCI I/O BARs are at most 256 bytes; every memory BAR here is larger.
                    bars[i] = PCIBAR(size: max(size, 4), kind: .io)
                } else if size > 0x8000_0000 && i < 5 && (i + 1 >= spec.barSizes.count || spec.barSizes[i + 1] == 0) {
                    bars[i] = PCIBAR(size: size, kind: .memory64, prefetchable: true)
                    i += 1
                } else {
                    bars[i] = PCIBAR(size: max(size, 16), kind: .memory32)
                }
            }
            i += 1
        }
        self.bars = bars

        let space = PCIConfigSpace(size: layout.express ? PCIConfig.expressSize : PCIConfig.conventionalSize)
        space.define(PCIConfig.vendorID, width: 2, value: UInt32(spec.vendorID))
        space.define(PCIConfig.deviceID, width: 2, value: UInt32(spec.deviceID))
        let commandMask = UInt32(PCIConfig.commandIO | PCIConfig.commandMemory | PCIConfig.commandBusMaster
                                 | PCIConfig.commandParity | PCIConfig.commandSERR | PCIConfig.commandINTxDisable)
        space.define(PCIConfig.command, width: 2, value: 0, writable: commandMask)
        let statusW1C = UInt32(PCIConfig.statusMasterDataParityError | PCIConfig.statusSignaledTargetAbort
                               | PCIConfig.statusReceivedTargetAbort | PCIConfig.statusReceivedMasterAbort
                               | PCIConfig.statusSignaledSystemError | PCIConfig.statusDetectedParityError)
        space.define(PCIConfig.status, width: 2, value: 0, clearable: statusW1C)
        space.define(PCIConfig.revisionID, width: 1, value: UInt32(layout.revision))
        space.define(PCIConfig.classCode, width: 3, value: spec.classCode)
        space.define(PCIConfig.cacheLineSize, width: 1, value: 0, writable: 0xff)
        space.define(PCIConfig.latencyTimer, width: 1, value: 0, writable: layout.express ? 0 : 0xff)
        for (n, bar) in bars.enumerated() {
            guard let bar else { continue }
            let offset = PCIConfig.bar0 + 4 * n
            let sizeMask = ~(bar.size - 1)
            space.define(offset, width: 4, value: bar.flags,
                         writable: UInt32(truncatingIfNeeded: sizeMask) & (bar.kind == .io ? ~3 : ~15))
            if bar.kind == .memory64 {
                space.define(offset + 4, width: 4, value: 0, writable: UInt32(truncatingIfNeeded: sizeMask >> 32))
            }
        }
        space.define(PCIConfig.subsystemVendorID, width: 2, value: UInt32(layout.subsystemVendorID ?? spec.vendorID))
        space.define(PCIConfig.subsystemID, width: 2, value: UInt32(layout.subsystemID ?? spec.deviceID))
        space.define(PCIConfig.interruptLine, width: 1, value: 0xff, writable: 0xff)
        space.define(PCIConfig.interruptPin, width: 1, value: UInt32(layout.interruptPin))

        var express: Int?
        if layout.express {
            let e = space.addCapability(PCIConfig.capPCIExpress, length: PCIConfig.expLength)
            // Version 2; an endpoint, or a root-complex integrated endpoint on a root bus.
            let type: UInt32 = spec.address.bus == 0 ? 9 : 0
            space.define(e + PCIConfig.expCapabilities, width: 2, value: 2 | type << 4)
            space.define(e + PCIConfig.expDeviceCapabilities, width: 4, value: PCIConfig.expDeviceCapabilitiesFLR)
            space.define(e + PCIConfig.expDeviceControl, width: 2, value: 0x2810, writable: 0xfcff)
            space.define(e + PCIConfig.expDeviceStatus, width: 2, value: 0, clearable: 0x000f)
            express = e
        }
        var msi: Int?
        if layout.msiVectors > 0 {
            let vectors = max(1, layout.msiVectors)
            let log2 = UInt16(Int.bitWidth - 1 - min(vectors, 32).leadingZeroBitCount)
            let length = layout.msiPerVectorMask ? 24 : 14
            let m = space.addCapability(PCIConfig.capMSI, length: length)
            var control = PCIConfig.msiControl64Bit | log2 << PCIConfig.msiControlMultipleCapableShift
            if layout.msiPerVectorMask { control |= PCIConfig.msiControlPerVectorMask }
            space.define(m + PCIConfig.msiControl, width: 2, value: UInt32(control),
                         writable: UInt32(PCIConfig.msiControlEnable | 7 << PCIConfig.msiControlMultipleEnableShift))
            space.define(m + PCIConfig.msiAddressLow, width: 4, value: 0, writable: 0xffff_fffc)
            space.define(m + PCIConfig.msiAddressHigh, width: 4, value: 0, writable: 0xffff_ffff)
            space.define(m + PCIConfig.msiData64, width: 2, value: 0, writable: 0xffff)
            if layout.msiPerVectorMask {
                space.define(m + 16, width: 4, value: 0, writable: vectors >= 32 ? 0xffff_ffff : (1 << UInt32(vectors)) - 1)
            }
            msi = m
        }
        var msix: Int?
        var table: (Int, UInt64)?
        var pba: (Int, UInt64)?
        var msixCount = 0
        if layout.msixVectors > 0,
           let bar = bars.indices.last(where: { bars[$0].map { $0.isMemory && $0.size >= 8192 } ?? false }) {
            msixCount = min(layout.msixVectors, 2048)
            let size = bars[bar]!.size
            table = (bar, size / 2)
            pba = (bar, size / 2 + size / 4)
            let x = space.addCapability(PCIConfig.capMSIX, length: 12)
            space.define(x + PCIConfig.msixControl, width: 2, value: UInt32(msixCount - 1),
                         writable: UInt32(PCIConfig.msixControlEnable | PCIConfig.msixControlFunctionMask))
            space.define(x + PCIConfig.msixTable, width: 4, value: UInt32(truncatingIfNeeded: size / 2) | UInt32(bar))
            space.define(x + PCIConfig.msixPBA, width: 4, value: UInt32(truncatingIfNeeded: size / 2 + size / 4) | UInt32(bar))
            msix = x
        }
        self.config = space
        self.msiCapability = msi
        self.msixCapability = msix
        self.expressCapability = express
        self.msixVectors = msixCount
        self.msixTable = table
        self.msixPBA = pba
        self.msixEntries = Self.resetMSIXTable(msixCount)
        self.resetValues = space.snapshot()
    }

    private static func resetMSIXTable(_ count: Int) -> [UInt8] {
        var t = [UInt8](repeating: 0, count: count * PCIConfig.msixEntrySize)
        for v in 0..<count { t[v * PCIConfig.msixEntrySize + PCIConfig.msixEntryVectorControl] = 1 }   // masked
        return t
    }

    /// The configuration space as it comes out of reset.
    private let resetValues: [UInt8]

    // MARK: Connections

    /// The platform's DMA port for this function (its requester ID behind its IOMMU).
    public var dma: (any DMAPort)? {
        get { lock.withLock { _dma } }
        set { lock.withLock { _dma = newValue } }
    }

    /// The host's interrupt handling for this function (nil: interrupts go nowhere).
    public var interruptSink: (any PCIInterruptSink)? {
        get { lock.withLock { _sink } }
        set { lock.withLock { _sink = newValue } }
    }

    // MARK: The host's view

    /// A configuration read (1, 2 or 4 bytes).
    public func configRead(_ offset: Int, width: Int) -> UInt32 {
        lock.withLock { config.read(offset, width: width) }
    }

    /// A configuration write (1, 2 or 4 bytes), with the hardware's side effects.
    public func configWrite(_ offset: Int, width: Int, _ value: UInt32) {
        lock.withLock {
            let before = config.load16(PCIConfig.command)
            config.write(offset, width: width, value)
            if let e = expressCapability, offset <= e + PCIConfig.expDeviceControl + 1,
               offset + width > e + PCIConfig.expDeviceControl + 1,
               config.load16(e + PCIConfig.expDeviceControl) & PCIConfig.expDeviceControlInitiateFLR != 0 {
                resetLocked()
                return
            }
            let after = config.load16(PCIConfig.command)
            if (before ^ after) & PCIConfig.commandINTxDisable != 0 { deliverLine() }
            configChanged(offset, width: width)
        }
    }

    /// The RW bits of a configuration register (for a host that virtualizes some registers).
    public func configWriteMask(_ offset: Int, width: Int) -> UInt32 {
        lock.withLock { config.writeMask(offset, width: width) }
    }

    /// A read of `width` (1, 2, 4 or 8) bytes at `offset` in BAR `bar`.
    public func barRead(_ bar: Int, offset: UInt64, width: Int) -> UInt64 {
        lock.withLock {
            guard bars.indices.contains(bar), let b = bars[bar], offset < b.size, offset + UInt64(width) <= b.size else {
                return width >= 8 ? .max : (1 << (8 * UInt64(width))) - 1
            }
            if let table = msixTable, table.bar == bar, offset >= table.offset,
               offset < table.offset + UInt64(msixEntries.count) {
                return loadBytes(msixEntries, Int(offset - table.offset), width)
            }
            if let pba = msixPBA, pba.bar == bar, offset >= pba.offset, offset < pba.offset + UInt64((msixVectors + 63) / 64 * 8) {
                return 0
            }
            return mmioRead(bar: bar, offset: offset, width: width)
        }
    }

    /// A write of `width` (1, 2, 4 or 8) bytes at `offset` in BAR `bar`.
    public func barWrite(_ bar: Int, offset: UInt64, width: Int, _ value: UInt64) {
        lock.withLock {
            guard bars.indices.contains(bar), let b = bars[bar], offset < b.size, offset + UInt64(width) <= b.size else { return }
            if let table = msixTable, table.bar == bar, offset >= table.offset,
               offset < table.offset + UInt64(msixEntries.count) {
                storeBytes(&msixEntries, Int(offset - table.offset), width, value)
                return
            }
            if let pba = msixPBA, pba.bar == bar, offset >= pba.offset, offset < pba.offset + UInt64((msixVectors + 63) / 64 * 8) {
                return
            }
            mmioWrite(bar: bar, offset: offset, width: width, value: value)
        }
    }

    /// Firmware's BAR assignment: programs BAR `index` with `address` (aligned to its size).
    public func assignBAR(_ index: Int, address: UInt64) {
        lock.withLock {
            guard bars.indices.contains(index), let bar = bars[index] else { return }
            let offset = PCIConfig.bar0 + 4 * index
            config.store32(offset, UInt32(truncatingIfNeeded: address) & ~(bar.kind == .io ? 3 : 15) | bar.flags)
            if bar.kind == .memory64 { config.store32(offset + 4, UInt32(truncatingIfNeeded: address >> 32)) }
        }
    }

    /// The address BAR `index` decodes (0 if unassigned or not implemented).
    public func barAddress(_ index: Int) -> UInt64 {
        lock.withLock {
            guard bars.indices.contains(index), let bar = bars[index] else { return 0 }
            let offset = PCIConfig.bar0 + 4 * index
            var a = UInt64(config.load32(offset) & (bar.kind == .io ? ~3 : ~15))
            if bar.kind == .memory64 { a |= UInt64(config.load32(offset + 4)) << 32 }
            return a
        }
    }

    /// Function-level reset: configuration space and device state back to power-on values.
    public func reset() {
        lock.withLock { resetLocked() }
    }

    /// Whether the function supports function-level reset (a PCIe capability with FLR).
    public var supportsReset: Bool { expressCapability != nil }

    /// The INTx line level the function drives (before the command register's disable bit).
    public var intxAsserted: Bool { lock.withLock { intxLevel } }

    /// MSI or MSI-X as enabled in the function's own capability registers (what the host
    /// driver programmed).
    public var msiEnabled: Bool { lock.withLock { msiEnabledLocked } }
    public var msixEnabled: Bool { lock.withLock { msixEnabledLocked } }

    /// The number of MSI vectors the capability offers (0 without MSI).
    public var msiVectorsCapable: Int {
        guard let m = msiCapability else { return 0 }
        let control = configRead(m + PCIConfig.msiControl, width: 2)
        return 1 << Int((control >> 1) & 7)
    }

    /// Bus-master enable.
    public var busMasterEnabled: Bool { lock.withLock { busMasterLocked } }

    /// Memory space enable.
    public var memoryEnabled: Bool { lock.withLock { config.load16(PCIConfig.command) & PCIConfig.commandMemory != 0 } }

    // MARK: For subclasses (call with `lock` held)

    public var msiEnabledLocked: Bool {
        guard let m = msiCapability else { return false }
        return config.load16(m + PCIConfig.msiControl) & PCIConfig.msiControlEnable != 0
    }

    public var msixEnabledLocked: Bool {
        guard let x = msixCapability else { return false }
        return config.load16(x + PCIConfig.msixControl) & PCIConfig.msixControlEnable != 0
    }

    public var busMasterLocked: Bool { config.load16(PCIConfig.command) & PCIConfig.commandBusMaster != 0 }

    /// Signals an MSI-X or MSI vector, whichever the function has enabled (MSI-X first, as a
    /// device with both enabled never happens). False if neither is enabled (the message is
    /// not sent) or the vector is masked.
    @discardableResult
    public func signalMessage(vector: Int) -> Bool {
        if msixEnabledLocked, let x = msixCapability {
            guard vector >= 0, vector < msixVectors else { return false }
            if config.load16(x + PCIConfig.msixControl) & PCIConfig.msixControlFunctionMask != 0 { return false }
            if msixEntries[vector * PCIConfig.msixEntrySize + PCIConfig.msixEntryVectorControl] & 1 != 0 { return false }
            _sink?.message(vector: vector, msix: true)
            return true
        }
        if msiEnabledLocked, let m = msiCapability {
            let control = config.load16(m + PCIConfig.msiControl)
            let enabled = 1 << Int((control >> PCIConfig.msiControlMultipleEnableShift) & 7)
            guard vector >= 0, vector < enabled else { return false }
            if control & PCIConfig.msiControlPerVectorMask != 0, config.load32(m + 16) >> UInt32(vector) & 1 != 0 {
                return false
            }
            _sink?.message(vector: vector, msix: false)
            return true
        }
        return false
    }

    /// Drives the INTx line (level-triggered). The status register's interrupt bit follows the
    /// line; delivery is gated by the command register's INTx-disable bit.
    public func setLine(_ asserted: Bool) {
        guard config.load8(PCIConfig.interruptPin) != 0, asserted != intxLevel else { return }
        intxLevel = asserted
        if asserted { config.setBits16(PCIConfig.status, PCIConfig.statusInterrupt) }
        else { config.clearBits16(PCIConfig.status, PCIConfig.statusInterrupt) }
        deliverLine()
    }

    private func deliverLine() {
        let disabled = config.load16(PCIConfig.command) & PCIConfig.commandINTxDisable != 0
        let level = intxLevel && !disabled
        guard level != deliveredLevel else { return }
        deliveredLevel = level
        _sink?.line(asserted: level)
    }

    /// A bus-master read. A failure is recorded (`dmaErrors`) and, for an IOMMU fault, the
    /// status register's Received Master Abort bit is set, as for an Unsupported Request
    /// completion.
    public func dmaRead(iova: UInt64, into destination: UnsafeMutableRawPointer, count: Int) -> DeviceDMAError? {
        guard busMasterLocked else { return recordDMA(.busMasterDisabled) }
        guard let port = _dma else { return recordDMA(.busMasterDisabled) }
        do throws(DMAFault) {
            try port.read(iova: iova, into: destination, count: count)
            return nil
        } catch {
            return recordDMA(.fault(error))
        }
    }

    /// A bus-master write; failures as for `dmaRead`.
    public func dmaWrite(iova: UInt64, from source: UnsafeRawPointer, count: Int) -> DeviceDMAError? {
        guard busMasterLocked else { return recordDMA(.busMasterDisabled) }
        guard let port = _dma else { return recordDMA(.busMasterDisabled) }
        do throws(DMAFault) {
            try port.write(iova: iova, from: source, count: count)
            return nil
        } catch {
            return recordDMA(.fault(error))
        }
    }

    private func recordDMA(_ error: DeviceDMAError) -> DeviceDMAError {
        if case .fault = error { config.setBits16(PCIConfig.status, PCIConfig.statusReceivedMasterAbort) }
        dmaErrors.append(error)
        if dmaErrors.count > 64 { dmaErrors.removeFirst(dmaErrors.count - 64) }
        return error
    }

    private func resetLocked() {
        config.restore(resetValues)
        msixEntries = Self.resetMSIXTable(msixVectors)
        intxLevel = false
        deliverLine()
        resetState()
    }

    // MARK: Overridable behaviour (called with `lock` held)

    /// A BAR read. Default: memory-like storage, zero until written.
    open func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        let page = Int(offset >> 12)
        guard let bytes = pages[bar << 40 | page] else { return 0 }
        let o = Int(offset & 0xfff)
        if o + width <= 4096 { return loadBytes(bytes, o, width) }
        var v: UInt64 = 0
        for i in 0..<width { v |= UInt64(mmioByte(bar: bar, offset: offset + UInt64(i))) << (8 * UInt64(i)) }
        return v
    }

    private func mmioByte(bar: Int, offset: UInt64) -> UInt8 {
        pages[bar << 40 | Int(offset >> 12)]?[Int(offset & 0xfff)] ?? 0
    }

    /// A BAR write. Default: memory-like storage.
    open func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        for i in 0..<width {
            let a = offset + UInt64(i)
            let key = bar << 40 | Int(a >> 12)
            if pages[key] == nil { pages[key] = [UInt8](repeating: 0, count: 4096) }
            pages[key]![Int(a & 0xfff)] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))
        }
    }

    /// Device state back to power-on values (the config space is reset by the caller).
    open func resetState() {
        pages.removeAll()
    }

    /// A configuration register changed (after the write).
    open func configChanged(_ offset: Int, width: Int) {}
}

extension PCIConfigSpace {
    func snapshot() -> [UInt8] { (0..<size).map { load8($0) } }
    func restore(_ bytes: [UInt8]) { for (i, b) in bytes.enumerated() { store8(i, b) } }
}

@inline(__always)
func loadBytes(_ bytes: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<width where offset + i < bytes.count { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
    return v
}

@inline(__always)
func storeBytes(_ bytes: inout [UInt8], _ offset: Int, _ width: Int, _ value: UInt64) {
    for i in 0..<width where offset + i < bytes.count { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
}

extension PCIFunction {
    /// The behaviour model for `spec` (its `model` field), not yet connected to a DMA port.
    public static func make(_ spec: PCIDeviceSpec) -> PCIFunction {
        switch spec.model {
        case .edu: EduDevice(spec: spec)
        case .dmaEngine: DMAEngineDevice(spec: spec)
        case .generic:
            {
                var layout = Layout()
                layout.msiVectors = 4
                layout.msiPerVectorMask = true
                layout.msixVectors = 8
                return PCIFunction(spec: spec, layout: layout)
            }()
        }
    }
}
