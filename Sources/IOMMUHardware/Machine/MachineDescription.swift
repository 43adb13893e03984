public import UIOMMUBase

/// A PCI function address: segment, bus, device (0–31), function (0–7).
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var segment: UInt16
    public var bus: UInt8
    public var device: UInt8
    public var function: UInt8

    public init(segment: UInt16 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8)
        self.segment = segment; self.bus = bus; self.device = device; self.function = function
    }

    /// The 16-bit requester ID the IOMMU sees on the bus (bus:devfn).
    public var requesterID: UInt16 { UInt16(bus) << 8 | UInt16(device) << 3 | UInt16(function) }

    public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
        (a.segment, a.bus, a.device, a.function) < (b.segment, b.bus, b.device, b.function)
    }

    private static func hex(_ v: some BinaryInteger, _ width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// "0000:00:1f.0", as sysfs spells it.
    public var description: String {
        "\(Self.hex(segment, 4)):\(Self.hex(bus, 2)):\(Self.hex(device, 2)).\(function)"
    }
}

/// What a simulated device does when driven (its behaviour model).
public enum DeviceModel: String, Hashable, Sendable, CaseIterable {
    /// No behaviour beyond config space.
    case generic
    /// A DMA engine a client can program to copy memory through the IOMMU.
    case dmaEngine = "dma-engine"
    /// Register-compatible with QEMU's `edu` teaching device (PCI 1234:11e8).
    case edu
}

/// One PCI endpoint function as the machine describes it.
public struct PCIDeviceSpec: Hashable, Sendable {
    /// A short unique name ("nic0.0", "dma0").
    public var name: String
    public var address: PCIAddress
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var classCode: UInt32
    /// The name of the IOMMU unit that translates this device's DMA.
    public var iommu: String
    /// PASID width in bits the device supports (0: not PASID capable).
    public var pasidWidth: Int
    /// Supports page requests (PRI / IOPF): faults can be reported to a fault queue.
    public var supportsPageFaults: Bool
    /// BAR sizes in bytes, index = BAR number; 0 = not implemented.
    public var barSizes: [UInt64]
    public var model: DeviceModel
    /// The driver bound at boot: "vfio-pci", a host driver name, or nil (no driver).
    public var driver: String?
    /// Index into `MachineDescription.groups`, filled in by group computation.
    public var group: Int

    public init(name: String, address: PCIAddress, vendorID: UInt16, deviceID: UInt16,
                classCode: UInt32, iommu: String, pasidWidth: Int = 0,
                supportsPageFaults: Bool = false, barSizes: [UInt64] = [],
                model: DeviceModel = .generic, driver: String? = "vfio-pci", group: Int = -1) {
        self.name = name; self.address = address; self.vendorID = vendorID; self.deviceID = deviceID
        self.classCode = classCode; self.iommu = iommu; self.pasidWidth = pasidWidth
        self.supportsPageFaults = supportsPageFaults; self.barSizes = barSizes; self.model = model
        self.driver = driver; self.group = group
    }
}

/// An IOMMU group: the smallest set of devices the IOMMU can isolate from each other.
public struct IOMMUGroupSpec: Hashable, Sendable {
    /// The group number (as in /sys/kernel/iommu_groups/N).
    public var id: Int
    /// Indexes into `MachineDescription.devices`.
    public var devices: [Int]
    /// Why these devices share a group (e.g. "multifunction device without ACS").
    public var reason: String
    public init(id: Int, devices: [Int], reason: String) {
        self.id = id; self.devices = devices; self.reason = reason
    }
}
