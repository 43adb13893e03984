import UIOMMUBase

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

extension PCIAddress {
    /// An address from numbers that came from outside (a file, a command line): nil instead of a
    /// trap when the device or function number is out of range.
    public init?(checkedSegment segment: UInt16, bus: UInt8, device: UInt8, function: UInt8) {
        guard device < 32, function < 8 else { return nil }
        self.init(segment: segment, bus: bus, device: device, function: function)
    }

    /// Parses the sysfs / lspci spellings "0000:03:00.1" and "03:00.1" (hex; segment 0 if
    /// omitted). Nil for anything else, never a trap.
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3 else { return nil }
        // Digits only: the standard library's integer parser would also take a sign ("+1").
        func hex(_ s: some StringProtocol, maxDigits: Int) -> UInt16? {
            guard !s.isEmpty, s.count <= maxDigits,
                  s.allSatisfy({ $0.isASCII && $0.isHexDigit }) else { return nil }
            return UInt16(s, radix: 16)
        }
        var segment: UInt16 = 0
        if parts.count == 3 {
            guard let s = hex(parts[0], maxDigits: 4) else { return nil }
            segment = s
        }
        let devfn = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
        guard devfn.count == 2, let bus = hex(parts[parts.count - 2], maxDigits: 2),
              let device = hex(devfn[0], maxDigits: 2), let function = hex(devfn[1], maxDigits: 1)
        else { return nil }
        self.init(checkedSegment: segment, bus: UInt8(truncatingIfNeeded: bus),
                  device: UInt8(truncatingIfNeeded: device), function: UInt8(truncatingIfNeeded: function))
    }

    /// "03:00.1": the address without its segment, as lspci prints it on single-segment machines.
    public var shortDescription: String {
        String(description.dropFirst(5))
    }

    /// "0000:03:00": the slot (device) without its function.
    var slotDescription: String { String(description.dropLast(2)) }
}

/// A whole simulated machine: its IOMMU units, its PCI tree, the endpoint functions in it and
/// the IOMMU groups those functions fall into.
///
/// Built by `MachineDescription.parse(_:fileName:)` from a machine file, or taken ready-made as
/// `MachineDescription.default`. Immutable: groups are computed once from the topology, so the
/// properties are `let` to keep them consistent with it.
public struct MachineDescription: Hashable, Sendable {
    /// A short name ("default", "vtd-server").
    public let name: String
    /// The IOMMU units, in declaration order.
    public let iommus: [IOMMUUnitSpec]
    /// The PCI tree, depth first: host bridges in (segment, root bus) order, each followed by its
    /// subtree, children in address order. `PCINode.parent` / `children` index into this array.
    public let topology: [PCINode]
    /// Every endpoint function, sorted by address. `PCIDeviceSpec.group` indexes `groups`.
    public let devices: [PCIDeviceSpec]
    /// The IOMMU groups, `groups[i].id == i`, numbered in the address order of their first device.
    public let groups: [IOMMUGroupSpec]

    init(name: String, iommus: [IOMMUUnitSpec], topology: [PCINode], devices: [PCIDeviceSpec],
         groups: [IOMMUGroupSpec]) {
        self.name = name; self.iommus = iommus; self.topology = topology
        self.devices = devices; self.groups = groups
    }

    // MARK: Lookups

    /// The device called `name` ("nic0.1"), if any.
    public func device(named name: String) -> PCIDeviceSpec? {
        deviceIndex(named: name).map { devices[$0] }
    }

    /// The index in `devices` of the device called `name`.
    public func deviceIndex(named name: String) -> Int? {
        devices.firstIndex { $0.name == name }
    }

    /// The endpoint function at `address`, if any.
    public func device(at address: PCIAddress) -> PCIDeviceSpec? {
        deviceIndex(at: address).map { devices[$0] }
    }

    /// The index in `devices` of the function at `address` (binary search: devices are sorted).
    public func deviceIndex(at address: PCIAddress) -> Int? {
        var lo = 0, hi = devices.count
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if devices[mid].address < address { lo = mid + 1 } else { hi = mid }
        }
        return lo < devices.count && devices[lo].address == address ? lo : nil
    }

    /// The IOMMU unit called `name`.
    public func iommu(named name: String) -> IOMMUUnitSpec? {
        iommus.first { $0.name == name }
    }

    /// The IOMMU unit that translates `device`'s DMA.
    public func iommu(of device: PCIDeviceSpec) -> IOMMUUnitSpec? {
        iommu(named: device.iommu)
    }

    /// The group `device` belongs to.
    public func group(of device: PCIDeviceSpec) -> IOMMUGroupSpec? {
        groups.indices.contains(device.group) ? groups[device.group] : nil
    }

    /// The group of the device called `name`.
    public func group(ofDevice name: String) -> IOMMUGroupSpec? {
        device(named: name).flatMap { group(of: $0) }
    }

    /// The group numbered `id`.
    public func group(id: Int) -> IOMMUGroupSpec? {
        groups.indices.contains(id) ? groups[id] : nil
    }

    /// The member devices of `group`.
    public func members(of group: IOMMUGroupSpec) -> [PCIDeviceSpec] {
        group.devices.compactMap { devices.indices.contains($0) ? devices[$0] : nil }
    }

    /// The IOMMU unit all members of `group` sit behind (they always share one).
    public func iommu(ofGroup group: IOMMUGroupSpec) -> IOMMUUnitSpec? {
        members(of: group).first.flatMap { iommu(of: $0) }
    }

    /// The topology node called `name` (a port, a bridge or a device).
    public func node(named name: String) -> PCINode? {
        topology.first { $0.name == name }
    }

    /// The topology node of `device`.
    public func node(of device: PCIDeviceSpec) -> PCINode? {
        topology.first { $0.kind == .endpoint && $0.name == device.name }
    }

    // MARK: Viability

    /// A device is usable by user space only when VFIO owns it or nothing does: a host driver
    /// doing DMA inside a group would share the group's address space with user space.
    public static func driverAllowsUserSpace(_ driver: String?) -> Bool {
        driver == nil || driver == "vfio-pci"
    }

    /// True if every member of `group` is bound to vfio-pci or to no driver (the VFIO rule for a
    /// viable group).
    public func isViable(_ group: IOMMUGroupSpec) -> Bool {
        members(of: group).allSatisfy { Self.driverAllowsUserSpace($0.driver) }
    }

    /// The members that make `group` not viable (bound to a host driver).
    public func blockingDevices(in group: IOMMUGroupSpec) -> [PCIDeviceSpec] {
        members(of: group).filter { !Self.driverAllowsUserSpace($0.driver) }
    }
}
