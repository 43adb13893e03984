// The platform: the running simulated machine that every context shares, as every open
// /dev/iommu on one host shares the same IOMMUs, devices and groups.
//
// It owns the runtime IOMMU units (context entries, IOTLBs, fault logs), each device's driver
// binding, and each group's DMA ownership. A group is all or nothing (seed 000): it can be
// claimed for user space only while no device in it is driven by a host driver, and once one
// context claims it, no other context can.

public import UIOMMUBase
public import ProcessMemory
public import IOMMUHardware

/// Device quirks that the selftest's mock devices can have (MOCK_FLAGS_DEVICE_*).
public struct DeviceQuirks: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The device cannot take part in dirty tracking.
    public static let noDirty = DeviceQuirks(rawValue: 1 << 0)
    /// Domains for this device may use huge IOVA pages (the mock's 1 MiB pages).
    public static let hugeIOVA = DeviceQuirks(rawValue: 1 << 1)
}

/// A device of the running machine.
public final class PlatformDevice: @unchecked Sendable {
    public let index: Int
    public let spec: PCIDeviceSpec
    public let unit: IOMMUUnit
    public let group: Int
    public let quirks: DeviceQuirks
    /// The bound driver: "vfio-pci", a host driver, or nil.
    public internal(set) var driver: String?
    /// The context that has bound this device, if any.
    var boundBy: ObjectIdentifier?
    /// The device's behaviour: config space, BARs, interrupts; its DMA goes through `unit`
    /// (set by the platform when the device is added).
    public internal(set) var hardware: PCIFunction?

    init(index: Int, spec: PCIDeviceSpec, unit: IOMMUUnit, group: Int, quirks: DeviceQuirks) {
        self.index = index; self.spec = spec; self.unit = unit; self.group = group
        self.quirks = quirks; self.driver = spec.driver
    }

    var allowsHugeIOVA: Bool { quirks.contains(.hugeIOVA) }
    /// The device's IOMMU can track dirty pages for it.
    public var dirtyCapable: Bool { unit.spec.dirtyTracking && !quirks.contains(.noDirty) }
}

/// The running machine shared by all contexts.
public final class Platform: @unchecked Sendable {
    public let machine: MachineDescription
    /// Memory that device DMA reaches by physical address.
    public let physicalMemory: any PhysicalMemory
    /// Host-wide pinned-page accounting.
    public let ledger = PinLedger()

    let lock = Lock()
    private var unitsByName: [String: IOMMUUnit] = [:]
    private var _devices: [PlatformDevice] = []
    private var groupMembers: [Int: [Int]] = [:]
    /// Group → (owning context, number of its devices bound).
    private var groupOwner: [Int: (owner: ObjectIdentifier, count: Int)] = [:]
    private var nextGroupID: Int

    public init(machine: MachineDescription, physicalMemory: any PhysicalMemory) {
        self.machine = machine
        self.physicalMemory = physicalMemory
        for spec in machine.iommus { unitsByName[spec.name] = IOMMUUnit(spec: spec) }
        nextGroupID = (machine.groups.map(\.id).max() ?? -1) + 1
        for spec in machine.devices {
            let group = spec.group >= 0 && spec.group < machine.groups.count ? machine.groups[spec.group].id : allocateGroupID()
            addDeviceLocked(spec, group: group, quirks: [])
        }
    }

    private func allocateGroupID() -> Int {
        defer { nextGroupID += 1 }
        return nextGroupID
    }

    @discardableResult
    private func addDeviceLocked(_ spec: PCIDeviceSpec, group: Int, quirks: DeviceQuirks) -> PlatformDevice {
        guard let unit = unitsByName[spec.iommu] else {
            preconditionFailure("device \(spec.name) names unknown IOMMU \(spec.iommu)")
        }
        let device = PlatformDevice(index: _devices.count, spec: spec, unit: unit, group: group, quirks: quirks)
        let hardware = PCIFunction.make(spec)
        hardware.dma = IOMMUDMAPort(unit: unit, requester: spec.address, memory: physicalMemory)
        assignResources(hardware)
        device.hardware = hardware
        _devices.append(device)
        groupMembers[group, default: []].append(device.index)
        return device
    }

    /// Firmware's resource assignment: each BAR gets a naturally aligned address, 32-bit memory
    /// from 0xc0000000, 64-bit memory from 0x8000000000, I/O from 0x1000.
    private var nextMemory32: UInt64 = 0xc000_0000
    private var nextMemory64: UInt64 = 0x80_0000_0000
    private var nextIO: UInt64 = 0x1000

    private func assignResources(_ function: PCIFunction) {
        for (index, bar) in function.bars.enumerated() {
            guard let bar else { continue }
            func take(_ cursor: inout UInt64) -> UInt64 {
                let a = (cursor + bar.size - 1) & ~(bar.size - 1)
                cursor = a + bar.size
                return a
            }
            let address: UInt64
            switch bar.kind {
            case .io: address = take(&nextIO)
            case .memory32: address = take(&nextMemory32)
            case .memory64: address = take(&nextMemory64)
            }
            function.assignBAR(index, address: address)
        }
    }

    /// Every device, in index order.
    public var devices: [PlatformDevice] { lock.withLock { _devices } }

    public func unit(named name: String) -> IOMMUUnit? { lock.withLock { unitsByName[name] } }
    public var units: [IOMMUUnit] { lock.withLock { machine.iommus.compactMap { unitsByName[$0.name] } } }

    /// Adds an IOMMU unit the machine file does not describe (the selftest's mock IOMMU), or
    /// returns the unit already called `spec.name`. Devices reach it through `hotAdd`.
    @discardableResult
    public func addUnit(_ spec: IOMMUUnitSpec) -> IOMMUUnit {
        lock.withLock {
            if let unit = unitsByName[spec.name] { return unit }
            let unit = IOMMUUnit(spec: spec)
            unitsByName[spec.name] = unit
            return unit
        }
    }

    public func device(named name: String) -> PlatformDevice? {
        lock.withLock { _devices.first { $0.spec.name == name } }
    }

    public func device(at address: PCIAddress) -> PlatformDevice? {
        lock.withLock { _devices.first { $0.spec.address == address } }
    }

    /// Members of group `id`.
    public func groupMembers(_ id: Int) -> [PlatformDevice] {
        lock.withLock { (groupMembers[id] ?? []).map { _devices[$0] } }
    }

    /// A group is viable for user space when every member is bound to vfio-pci or to nothing.
    public func isViable(group id: Int) -> Bool {
        groupMembers(id).allSatisfy { $0.driver == nil || $0.driver == "vfio-pci" }
    }

    /// Whether the group's DMA is owned by someone: a host driver bound to a member, or a
    /// context that claimed it (iommu_group_dma_owner_claimed). VFIO reports a group viable
    /// only when it is not.
    public func dmaOwnerClaimed(group id: Int) -> Bool {
        lock.withLock {
            groupOwner[id] != nil || (groupMembers[id] ?? []).contains {
                _devices[$0].driver != nil && _devices[$0].driver != "vfio-pci"
            }
        }
    }

    /// Hot-plugs a device in a new singleton group (or `group`), like a PCI hot-add.
    @discardableResult
    public func hotAdd(_ spec: PCIDeviceSpec, group: Int? = nil, quirks: DeviceQuirks = []) -> PlatformDevice {
        lock.withLock {
            addDeviceLocked(spec, group: group ?? allocateGroupID(), quirks: quirks)
        }
    }

    /// Binds a driver to a device (driver_override + bind). EBUSY while a context has it bound.
    public func setDriver(_ driver: String?, for device: PlatformDevice) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            guard device.boundBy == nil else { throw IOMMUError(.EBUSY, "\(device.spec.name) is in use by user space") }
            if let driver, driver != "vfio-pci", groupOwner[device.group] != nil {
                throw IOMMUError(.EBUSY, "group \(device.group) is owned by user space")
            }
            device.driver = driver
        }
    }

    /// Claims `device` for context `owner` (iommu_device_claim_dma_owner): ENODEV unless the
    /// device is bound to vfio-pci, EBUSY if it is bound already, EPERM if its group is driven
    /// by a host driver or owned by another context. The first claim puts the whole group into
    /// the DMA-blocked state.
    func claim(_ device: PlatformDevice, owner: ObjectIdentifier) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            guard device.driver == "vfio-pci" else {
                throw IOMMUError(.ENODEV, "\(device.spec.name) is not bound to vfio-pci")
            }
            guard device.boundBy == nil else { throw IOMMUError(.EBUSY, "\(device.spec.name) is already bound") }
            let members = (groupMembers[device.group] ?? []).map { _devices[$0] }
            if let current = groupOwner[device.group] {
                guard current.owner == owner else {
                    throw IOMMUError(.EPERM, "group \(device.group) is owned by another context")
                }
                groupOwner[device.group] = (owner, current.count + 1)
            } else {
                if let driven = members.first(where: { $0.driver != nil && $0.driver != "vfio-pci" }) {
                    throw IOMMUError(.EPERM, "group \(device.group) is not viable: \(driven.spec.name) is driven by \(driven.driver!)")
                }
                groupOwner[device.group] = (owner, 1)
                for m in members { m.unit.setContext(requester: m.spec.address, pasid: nil, domain: nil) }
            }
            device.boundBy = owner
        }
    }

    /// Releases a claim; the last release of a group returns it to the host.
    func release(_ device: PlatformDevice, owner: ObjectIdentifier) {
        lock.withLock {
            guard device.boundBy == owner else { return }
            device.boundBy = nil
            if let current = groupOwner[device.group] {
                groupOwner[device.group] = current.count > 1 ? (owner, current.count - 1) : nil
            }
        }
    }

    // MARK: DMA

    /// A device reads `count` bytes at `iova` through its IOMMU (a bus-master read).
    public func dmaRead(device: PlatformDevice, pasid: UInt32? = nil, iova: UInt64,
                        into buffer: UnsafeMutableRawPointer, count: Int) throws(DMAFault) {
        try device.unit.dmaRead(requester: device.spec.address, pasid: pasid, iova: iova,
                                into: buffer, count: count, memory: physicalMemory)
    }

    /// A device writes `count` bytes at `iova` through its IOMMU (a bus-master write).
    public func dmaWrite(device: PlatformDevice, pasid: UInt32? = nil, iova: UInt64,
                         from buffer: UnsafeRawPointer, count: Int) throws(DMAFault) {
        try device.unit.dmaWrite(requester: device.spec.address, pasid: pasid, iova: iova,
                                 from: buffer, count: count, memory: physicalMemory)
    }

    /// The DMA engine model: copies `length` bytes from `source` to `destination` IOVA through
    /// the device's IOMMU, in 4 KiB bursts. Stops at the first fault.
    public func dmaCopy(device: PlatformDevice, from source: UInt64, to destination: UInt64,
                        length: Int) throws(DMAFault) {
        let burst = 4096
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: burst, alignment: 64)
        defer { buffer.deallocate() }
        var done = 0
        while done < length {
            let n = min(burst, length - done)
            try dmaRead(device: device, iova: source &+ UInt64(done), into: buffer, count: n)
            try dmaWrite(device: device, iova: destination &+ UInt64(done), from: buffer, count: n)
            done += n
        }
    }
}
