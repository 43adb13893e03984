// The DMA engine device model (`model=dma-engine`): copies memory to memory through its IOMMU.
//
// BAR0 registers (4- or 8-byte accesses where a register is 8 bytes wide):
//   0x00 RO  identification 0x444d4131 ("DMA1")
//   0x08 RW  source IOVA            (8 bytes)
//   0x10 RW  destination IOVA       (8 bytes)
//   0x18 RW  length in bytes        (8 bytes)
//   0x20 RW  control: bit 0 start (self-clearing), bit 1 interrupt on completion
//   0x24 RW1C status: bit 0 busy (RO), bit 1 done, bit 2 error
//   0x28 RO  fault IOVA of the last error (8 bytes)
//   0x30 RO  bytes copied by the last transfer (8 bytes)
// A transfer runs during the write that starts it, in 4 KiB bursts (read, then write), and
// stops at the first fault: status reports error, 0x28 the IOVA, 0x30 how far it got, the IOMMU
// logs the fault, and the PCI status register shows Received Master Abort. Completion (or an
// error) raises MSI/MSI-X vector 0, or INTx when neither is enabled (cleared by writing the
// status bits back).

import UIOMMUBase

public final class DMAEngineDevice: PCIFunction, @unchecked Sendable {
    public static let identification: UInt32 = 0x444d_4131
    public static let controlStart: UInt32 = 1 << 0
    public static let controlInterrupt: UInt32 = 1 << 1
    public static let statusBusy: UInt32 = 1 << 0
    public static let statusDone: UInt32 = 1 << 1
    public static let statusError: UInt32 = 1 << 2

    private var source: UInt64 = 0
    private var destination: UInt64 = 0
    private var length: UInt64 = 0
    private var control: UInt32 = 0
    private var status: UInt32 = 0
    private var faultIOVA: UInt64 = 0
    private var copied: UInt64 = 0

    public init(spec: PCIDeviceSpec) {
        var layout = Layout()
        layout.msiVectors = 1
        layout.msixVectors = 4
        super.init(spec: spec, layout: layout)
    }

    public override func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        let allOnes: UInt64 = width >= 8 ? .max : (1 << (8 * UInt64(width))) - 1
        guard bar == 0, width == 4 || width == 8, offset & 3 == 0 else { return allOnes }
        let value: UInt64
        switch offset {
        case 0x00: value = UInt64(Self.identification)
        case 0x08: value = source
        case 0x0c: value = source >> 32
        case 0x10: value = destination
        case 0x14: value = destination >> 32
        case 0x18: value = length
        case 0x1c: value = length >> 32
        case 0x20: value = UInt64(control)
        case 0x24: value = UInt64(status)
        case 0x28: value = faultIOVA
        case 0x2c: value = faultIOVA >> 32
        case 0x30: value = copied
        case 0x34: value = copied >> 32
        default: value = 0
        }
        return value & allOnes
    }

    public override func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        guard bar == 0, width == 4 || width == 8, offset & 3 == 0 else { return }
        func merge(_ register: inout UInt64, high: Bool) {
            if width == 8 { register = value; return }
            let v = value & 0xffff_ffff
            register = high ? (register & 0xffff_ffff) | v << 32 : (register & ~0xffff_ffff) | v
        }
        switch offset {
        case 0x08, 0x0c: merge(&source, high: offset == 0x0c)
        case 0x10, 0x14: merge(&destination, high: offset == 0x14)
        case 0x18, 0x1c: merge(&length, high: offset == 0x1c)
        case 0x20:
            control = UInt32(truncatingIfNeeded: value) & (Self.controlStart | Self.controlInterrupt)
            if control & Self.controlStart != 0 { run() }
        case 0x24:
            status &= ~(UInt32(truncatingIfNeeded: value) & (Self.statusDone | Self.statusError))
            if status & (Self.statusDone | Self.statusError) == 0 && !msiEnabledLocked && !msixEnabledLocked {
                setLine(false)
            }
        default:
            break
        }
    }

    public override func resetState() {
        source = 0; destination = 0; length = 0; control = 0; status = 0; faultIOVA = 0; copied = 0
    }

    private func run() {
        status = Self.statusBusy
        copied = 0
        let burst = 4096
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: burst, alignment: 64)
        defer { buffer.deallocate() }
        var failed = false
        while copied < length {
            let n = Int(min(UInt64(burst), length - copied))
            if let error = dmaRead(iova: source &+ copied, into: buffer, count: n)
                ?? dmaWrite(iova: destination &+ copied, from: buffer, count: n) {
                if case .fault(let f) = error { faultIOVA = f.iova }
                failed = true
                break
            }
            copied += UInt64(n)
        }
        status = failed ? Self.statusError : Self.statusDone
        control &= ~Self.controlStart
        if control & Self.controlInterrupt != 0 {
            if !signalMessage(vector: 0) && !msiEnabledLocked && !msixEnabledLocked { setLine(true) }
        }
    }
}
