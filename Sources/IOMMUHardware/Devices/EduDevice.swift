// A device register-compatible with QEMU's `edu` teaching device (docs/specs/edu.rst in
// QEMU): PCI 1234:11e8, conventional PCI, one 1 MiB memory BAR, INTx pin A and a one-vector
// 64-bit MSI capability. Programs written for QEMU's edu run unchanged against it.
//
// BAR0 registers (accesses below 0x80 must be 4 bytes, from 0x80 4 or 8 bytes; any other
// access reads all ones and writes nothing):
//   0x00 RO  identification 0x010000ed (version 1.0)
//   0x04 RW  liveness: reads back the bitwise NOT of what was written
//   0x08 RW  factorial: a write starts computing the factorial of the value (32-bit,
//            wrapping), unless a computation is running; read the result
//   0x20 RW  status: bit 0 computing (RO), bit 7 raise interrupt 0x1 when a factorial is done
//   0x24 RO  interrupt status
//   0x60 WO  raise interrupt: OR the value into the interrupt status
//   0x64 WO  acknowledge interrupt: clear the value's bits from the interrupt status
//   0x80 RW  DMA source, 0x88 DMA destination, 0x90 DMA count (ignored while a DMA runs)
//   0x98 RW  DMA command: bit 0 start, bit 1 direction (0: RAM → device buffer, 1: device
//            buffer → RAM), bit 2 raise interrupt 0x100 when done
// The device's 4 KiB DMA buffer sits at device address 0x40000 (reached by DMA only, not
// through the BAR). RAM addresses are IOVAs, clamped to the DMA mask (28 bits by default, as
// QEMU's `dma_mask`).
//
// Where this model differs from QEMU's, it is because QEMU's behaviour depends on timing:
// QEMU computes the factorial in a thread and runs a DMA 100 ms after the command; here both
// complete during the register write, so a program that polls the status or command register
// sees them done at its first read (a correct program works with both). An interrupt is
// raised exactly as QEMU does: MSI vector 0 when the function's MSI capability is enabled,
// otherwise the INTx line, held until the interrupt status is acknowledged to zero.
//
// DMA goes through the function's DMA port, so the IOMMU translates it. A transfer whose IOVA
// is not mapped (or mapped without the needed permission) stops at the fault: the IOMMU logs a
// DMAR-style fault record, the command register's start bit clears, and the PCI status register
// shows Received Master Abort (QEMU's edu ignores DMA errors; a real device would see the
// Unsupported Request completion). A transfer that does not fit the device buffer is refused
// (QEMU only logs it). The completion interrupt is raised in every case, as QEMU does.

import UIOMMUBase

public final class EduDevice: PCIFunction, @unchecked Sendable {
    public static let identification: UInt32 = 0x0100_00ed
    public static let bufferAddress: UInt64 = 0x40000
    public static let bufferSize = 4096
    public static let factorialInterrupt: UInt32 = 0x001
    public static let dmaInterrupt: UInt32 = 0x100
    public static let statusComputing: UInt32 = 0x01
    public static let statusIRQFactorial: UInt32 = 0x80
    public static let dmaStart: UInt64 = 0x1
    public static let dmaToRAM: UInt64 = 0x2
    public static let dmaIRQ: UInt64 = 0x4

    /// The DMA mask RAM addresses are clamped to (QEMU's `dma_mask` property).
    public var dmaMask: UInt64 {
        get { lock.withLock { mask } }
        set { lock.withLock { mask = newValue } }
    }

    private var mask: UInt64 = (1 << 28) - 1
    private var liveness: UInt32 = 0
    private var factorial: UInt32 = 0
    private var status: UInt32 = 0
    private var irqStatus: UInt32 = 0
    private var dmaSource: UInt64 = 0
    private var dmaDestination: UInt64 = 0
    private var dmaCount: UInt64 = 0
    private var dmaCommand: UInt64 = 0
    private var buffer = [UInt8](repeating: 0, count: EduDevice.bufferSize)
    /// Transfers refused because they do not fit the device buffer.
    public private(set) var rangeErrors = 0

    public init(spec: PCIDeviceSpec) {
        var layout = Layout()
        layout.revision = 0x10
        layout.subsystemVendorID = 0x1af4     // QEMU's default subsystem IDs
        layout.subsystemID = 0x1100
        layout.express = false
        layout.msiVectors = 1
        super.init(spec: spec, layout: layout)
    }

    /// The device's DMA buffer (for tests and tools).
    public var bufferContents: [UInt8] { lock.withLock { buffer } }

    /// The interrupt status register.
    public var interruptStatus: UInt32 { lock.withLock { irqStatus } }

    public override func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        let allOnes: UInt64 = width >= 8 ? .max : (1 << (8 * UInt64(width))) - 1
        guard bar == 0, valid(offset, width) else { return allOnes }
        let value: UInt64
        switch offset {
        case 0x00: value = UInt64(Self.identification)
        case 0x04: value = UInt64(liveness)
        case 0x08: value = UInt64(factorial)
        case 0x20: value = UInt64(status)
        case 0x24: value = UInt64(irqStatus)
        case 0x80: value = dmaSource
        case 0x88: value = dmaDestination
        case 0x90: value = dmaCount
        case 0x98: value = dmaCommand
        default: value = .max
        }
        return value & allOnes
    }

    public override func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        guard bar == 0, valid(offset, width) else { return }
        switch offset {
        case 0x04:
            liveness = ~UInt32(truncatingIfNeeded: value)
        case 0x08:
            guard status & Self.statusComputing == 0 else { return }
            var n = UInt32(truncatingIfNeeded: value)
            var result: UInt32 = 1
            while n > 0 { result &*= n; n -= 1 }
            factorial = result
            if status & Self.statusIRQFactorial != 0 { raise(Self.factorialInterrupt) }
        case 0x20:
            if UInt32(truncatingIfNeeded: value) & Self.statusIRQFactorial != 0 {
                status |= Self.statusIRQFactorial
            } else {
                status &= ~Self.statusIRQFactorial
            }
        case 0x60:
            raise(UInt32(truncatingIfNeeded: value))
        case 0x64:
            lower(UInt32(truncatingIfNeeded: value))
        case 0x80:
            if dmaCommand & Self.dmaStart == 0 { dmaSource = value }
        case 0x88:
            if dmaCommand & Self.dmaStart == 0 { dmaDestination = value }
        case 0x90:
            if dmaCommand & Self.dmaStart == 0 { dmaCount = value }
        case 0x98:
            guard value & Self.dmaStart != 0, dmaCommand & Self.dmaStart == 0 else { return }
            dmaCommand = value
            runDMA()
        default:
            break
        }
    }

    public override func resetState() {
        liveness = 0; factorial = 0; status = 0; irqStatus = 0
        dmaSource = 0; dmaDestination = 0; dmaCount = 0; dmaCommand = 0
        buffer = [UInt8](repeating: 0, count: Self.bufferSize)
    }

    public override func configChanged(_ offset: Int, width: Int) {
        // Enabling MSI while an interrupt is pending: QEMU's edu keeps the level on INTx until
        // the status is acknowledged; nothing to do here.
    }

    private func valid(_ offset: UInt64, _ width: Int) -> Bool {
        offset < 0x80 ? width == 4 : (width == 4 || width == 8)
    }

    private func raise(_ value: UInt32) {
        irqStatus |= value
        guard irqStatus != 0 else { return }
        if msiEnabledLocked {
            signalMessage(vector: 0)
        } else {
            setLine(true)
        }
    }

    private func lower(_ value: UInt32) {
        irqStatus &= ~value
        if irqStatus == 0 && !msiEnabledLocked { setLine(false) }
    }

    private func runDMA() {
        let toRAM = dmaCommand & Self.dmaToRAM != 0
        let deviceAddress = toRAM ? dmaSource : dmaDestination
        let count = dmaCount
        let (end, overflow) = deviceAddress.addingReportingOverflow(count)
        if overflow || deviceAddress < Self.bufferAddress || end > Self.bufferAddress + UInt64(Self.bufferSize) {
            rangeErrors += 1
        } else if count > 0 {
            let start = Int(deviceAddress - Self.bufferAddress)
            let n = Int(count)
            buffer.withUnsafeMutableBytes { raw in
                let p = raw.baseAddress! + start
                if toRAM {
                    _ = dmaWrite(iova: dmaDestination & mask, from: p, count: n)
                } else {
                    // A read that faults part-way leaves the buffer as far as it was filled.
                    _ = dmaRead(iova: dmaSource & mask, into: p, count: n)
                }
            }
        }
        dmaCommand &= ~Self.dmaStart
        if dmaCommand & Self.dmaIRQ != 0 { raise(Self.dmaInterrupt) }
    }
}
