// PCI configuration space of one function, with the hardware's write semantics.
//
// Every byte has a value, a mask of the bits software may write (RW) and a mask of the bits a
// write of 1 clears (RW1C); every other bit is read-only. That is enough to express the
// standard header (read-only IDs, the command register, the RW1C error bits of the status
// register), BAR sizing (the low address bits of a BAR are read-only zero, so writing all
// ones and reading back gives the size mask), and the capabilities this project's devices
// have (MSI, MSI-X, PCI Express). Offsets, widths and bit positions are facts of the PCI
// Local Bus and PCI Express specifications.
//
// Not thread-safe: the owning `PCIFunction` serialises access under its lock.

import UIOMMUBase

/// Register offsets and bits of the type 0 configuration header and the capabilities used here.
public enum PCIConfig {
    public static let vendorID = 0x00
    public static let deviceID = 0x02
    public static let command = 0x04
    public static let status = 0x06
    public static let revisionID = 0x08
    public static let classCode = 0x09          // 3 bytes: prog-if, subclass, base class
    public static let cacheLineSize = 0x0c
    public static let latencyTimer = 0x0d
    public static let headerType = 0x0e
    public static let bar0 = 0x10               // six 32-bit BARs, 0x10 … 0x24
    public static let subsystemVendorID = 0x2c
    public static let subsystemID = 0x2e
    public static let romAddress = 0x30
    public static let capabilitiesPointer = 0x34
    public static let interruptLine = 0x3c
    public static let interruptPin = 0x3d

    /// Command register bits.
    public static let commandIO: UInt16 = 1 << 0
    public static let commandMemory: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2
    public static let commandParity: UInt16 = 1 << 6
    public static let commandSERR: UInt16 = 1 << 8
    public static let commandINTxDisable: UInt16 = 1 << 10

    /// Status register bits.
    public static let statusInterrupt: UInt16 = 1 << 3
    public static let statusCapabilityList: UInt16 = 1 << 4
    public static let statusMasterDataParityError: UInt16 = 1 << 8
    public static let statusSignaledTargetAbort: UInt16 = 1 << 11
    public static let statusReceivedTargetAbort: UInt16 = 1 << 12
    public static let statusReceivedMasterAbort: UInt16 = 1 << 13
    public static let statusSignaledSystemError: UInt16 = 1 << 14
    public static let statusDetectedParityError: UInt16 = 1 << 15

    /// BAR low bits.
    public static let barIOSpace: UInt32 = 1 << 0
    public static let barMemory64: UInt32 = 2 << 1
    public static let barPrefetchable: UInt32 = 1 << 3

    /// Capability IDs.
    public static let capPowerManagement: UInt8 = 0x01
    public static let capMSI: UInt8 = 0x05
    public static let capPCIExpress: UInt8 = 0x10
    public static let capMSIX: UInt8 = 0x11

    /// MSI capability: offsets from the capability and the message control bits.
    public static let msiControl = 2
    public static let msiAddressLow = 4
    public static let msiAddressHigh = 8
    public static let msiData64 = 12
    public static let msiData32 = 8
    public static let msiControlEnable: UInt16 = 1 << 0
    public static let msiControlMultipleCapableShift: UInt16 = 1       // bits 3:1
    public static let msiControlMultipleEnableShift: UInt16 = 4        // bits 6:4
    public static let msiControl64Bit: UInt16 = 1 << 7
    public static let msiControlPerVectorMask: UInt16 = 1 << 8

    /// MSI-X capability.
    public static let msixControl = 2
    public static let msixTable = 4
    public static let msixPBA = 8
    public static let msixControlTableSizeMask: UInt16 = 0x07ff
    public static let msixControlFunctionMask: UInt16 = 1 << 14
    public static let msixControlEnable: UInt16 = 1 << 15
    public static let msixEntrySize = 16
    public static let msixEntryVectorControl = 12

    /// PCI Express capability (version 2).
    public static let expCapabilities = 2
    public static let expDeviceCapabilities = 4
    public static let expDeviceControl = 8
    public static let expDeviceStatus = 10
    public static let expDeviceCapabilitiesFLR: UInt32 = 1 << 28
    public static let expDeviceControlInitiateFLR: UInt16 = 1 << 15
    public static let expLength = 0x3c

    /// The size of conventional and of PCI Express configuration space.
    public static let conventionalSize = 256
    public static let expressSize = 4096
}

/// One BAR of a function.
public struct PCIBAR: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case memory32
        case memory64
        case io
    }
    public var size: UInt64
    public var kind: Kind
    public var prefetchable: Bool

    public init(size: UInt64, kind: Kind, prefetchable: Bool = false) {
        self.size = size; self.kind = kind; self.prefetchable = prefetchable
    }

    public var isMemory: Bool { kind != .io }

    /// The read-only low bits of the BAR register.
    var flags: UInt32 {
        switch kind {
        case .io: PCIConfig.barIOSpace
        case .memory32: prefetchable ? PCIConfig.barPrefetchable : 0
        case .memory64: PCIConfig.barMemory64 | (prefetchable ? PCIConfig.barPrefetchable : 0)
        }
    }
}

/// A function's configuration space: bytes plus per-bit write semantics.
public final class PCIConfigSpace: @unchecked Sendable {
    /// 256 (conventional PCI) or 4096 (PCI Express) bytes.
    public let size: Int
    private var data: [UInt8]
    private var writable: [UInt8]
    private var clearable: [UInt8]
    /// Where the next capability goes (capabilities are appended from 0x40, dword aligned).
    private var nextCapability = 0x40
    private var lastCapability: Int?

    public init(size: Int) {
        precondition(size == PCIConfig.conventionalSize || size == PCIConfig.expressSize)
        self.size = size
        data = [UInt8](repeating: 0, count: size)
        writable = [UInt8](repeating: 0, count: size)
        clearable = [UInt8](repeating: 0, count: size)
    }

    // MARK: Software access (the bus: what a CPU config read or write does)

    /// A config read of 1, 2 or 4 bytes. Reads past the end give all ones, as a bus does.
    public func read(_ offset: Int, width: Int) -> UInt32 {
        guard offset >= 0, width > 0, offset + width <= size else { return width >= 4 ? .max : (1 << (8 * UInt32(width))) - 1 }
        var v: UInt32 = 0
        for i in 0..<width { v |= UInt32(data[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    /// A config write of 1, 2 or 4 bytes: RW bits take the value, RW1C bits written as 1
    /// clear, everything else stays.
    public func write(_ offset: Int, width: Int, _ value: UInt32) {
        guard offset >= 0, width > 0, offset + width <= size else { return }
        for i in 0..<width {
            let b = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            let o = offset + i
            var d = data[o]
            d = (d & ~writable[o]) | (b & writable[o])
            d &= ~(b & clearable[o])
            data[o] = d
        }
    }

    /// The RW bits of `width` bytes at `offset`.
    public func writeMask(_ offset: Int, width: Int) -> UInt32 {
        guard offset >= 0, width > 0, offset + width <= size else { return 0 }
        var v: UInt32 = 0
        for i in 0..<width { v |= UInt32(writable[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    // MARK: Hardware access (the device itself: no masks)

    public func load8(_ offset: Int) -> UInt8 { data[offset] }
    public func load16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read(offset, width: 2)) }
    public func load32(_ offset: Int) -> UInt32 { read(offset, width: 4) }

    public func store8(_ offset: Int, _ value: UInt8) { data[offset] = value }
    public func store16(_ offset: Int, _ value: UInt16) {
        data[offset] = UInt8(truncatingIfNeeded: value)
        data[offset + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }
    public func store32(_ offset: Int, _ value: UInt32) {
        for i in 0..<4 { data[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }

    /// Sets bits in a hardware-owned register (e.g. a status bit the device raises).
    public func setBits16(_ offset: Int, _ bits: UInt16) { store16(offset, load16(offset) | bits) }
    public func clearBits16(_ offset: Int, _ bits: UInt16) { store16(offset, load16(offset) & ~bits) }

    // MARK: Building

    /// Defines a register: its reset value and which bits are RW and RW1C.
    public func define(_ offset: Int, width: Int, value: UInt32, writable w: UInt32 = 0, clearable c: UInt32 = 0) {
        for i in 0..<width {
            let shift = 8 * UInt32(i)
            data[offset + i] = UInt8(truncatingIfNeeded: value >> shift)
            writable[offset + i] = UInt8(truncatingIfNeeded: w >> shift)
            clearable[offset + i] = UInt8(truncatingIfNeeded: c >> shift)
        }
    }

    /// Appends a capability of `length` bytes with `id` to the list and returns its offset.
    @discardableResult
    public func addCapability(_ id: UInt8, length: Int) -> Int {
        let offset = nextCapability
        precondition(offset + length <= PCIConfig.conventionalSize, "capabilities overflow the header")
        data[offset] = id
        data[offset + 1] = 0
        if let last = lastCapability {
            data[last + 1] = UInt8(offset)
        } else {
            data[PCIConfig.capabilitiesPointer] = UInt8(offset)
            setBits16(PCIConfig.status, PCIConfig.statusCapabilityList)
        }
        lastCapability = offset
        nextCapability = (offset + length + 3) & ~3
        return offset
    }

    /// The offset of the first capability with `id`, walking the list as software does.
    public func capability(_ id: UInt8) -> Int? {
        var offset = Int(data[PCIConfig.capabilitiesPointer]) & ~3
        var steps = 0
        while offset >= 0x40, offset < PCIConfig.conventionalSize - 1, steps < 48 {
            if data[offset] == id { return offset }
            offset = Int(data[offset + 1]) & ~3
            steps += 1
        }
        return nil
    }

    /// The capability that covers `offset`, with its length, if any (for the capability
    /// lengths this model builds).
    public func capabilityCovering(_ offset: Int) -> (id: UInt8, start: Int, length: Int)? {
        var cap = Int(data[PCIConfig.capabilitiesPointer]) & ~3
        var steps = 0
        while cap >= 0x40, cap < PCIConfig.conventionalSize - 1, steps < 48 {
            let id = data[cap]
            let length = Self.length(ofCapability: id, at: cap, in: self)
            if offset >= cap && offset < cap + length { return (id, cap, length) }
            cap = Int(data[cap + 1]) & ~3
            steps += 1
        }
        return nil
    }

    public static func length(ofCapability id: UInt8, at offset: Int, in space: PCIConfigSpace) -> Int {
        switch id {
        case PCIConfig.capMSI:
            let control = space.load16(offset + PCIConfig.msiControl)
            var n = control & PCIConfig.msiControl64Bit != 0 ? 14 : 10
            if control & PCIConfig.msiControlPerVectorMask != 0 { n += 10 }
            return n
        case PCIConfig.capMSIX: return 12
        case PCIConfig.capPCIExpress: return PCIConfig.expLength
        case PCIConfig.capPowerManagement: return 8
        default: return 4
        }
    }
}
