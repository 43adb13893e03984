// The host's VFIO subsystem for one platform (drivers/vfio/vfio_main.c and group.c, with the
// vfio-pci driver bound): which devices vfio-pci drives, their groups, and the files open on
// them. Created once per process by the front end; every open of /dev/vfio/devices/vfioN,
// /dev/vfio/<group> and every VFIO_GROUP_GET_DEVICE_FD goes through it.
//
// Numbering, as Linux assigns it: vfio-pci devices are vfio0, vfio1, … in the order they were
// bound (address order at boot here), each a character device of the "vfio-dev" region
// (major `deviceMajor`, minor = index); a group gets a /dev/vfio/<iommu group number> node
// (major `groupMajor`, minor in registration order) when its first device is bound to vfio-pci.
// /dev/vfio/vfio is the iommufd-backed container (misc 10:196, IOMMUFD_VFIO_CONTAINER).
//
// Locking: one lock (`lock`) serialises every open, close, bind and container change — the
// kernel's group_lock and dev_set lock, merged; engine calls happen under it (the engine never
// calls back into VFIO). Interrupt state has its own lock per device (see VFIODevice.swift).

import UIOMMUBase
public import IOMMUEngine
public import IOMMUHardware

/// The VFIO side of one IOMMU group.
public final class VFIOGroup: @unchecked Sendable {
    /// The IOMMU group number (/dev/vfio/<id>, /sys/kernel/iommu_groups/<id>).
    public let id: Int
    /// The minor number of /dev/vfio/<id>.
    public let minor: Int
    /// Members bound to vfio-pci.
    public internal(set) var devices: [VFIOPCIDevice] = []
    // Under the subsystem lock:
    /// The open group file (a group can be opened once).
    var openedFile: VFIOGroupFile?
    /// The container or iommufd set with VFIO_GROUP_SET_CONTAINER.
    var iommufd: IOMMUFDFile?
    /// Devices of the group bound through their cdev (they block the group file).
    var cdevOpenCount = 0

    init(id: Int, minor: Int) { self.id = id; self.minor = minor }
}

public final class VFIOSubsystem: @unchecked Sendable {
    /// "vfio-dev" character devices (/dev/vfio/devices/vfioN). Linux allocates the major
    /// dynamically; this is the number this machine reports.
    public static let deviceMajor: UInt32 = 237
    /// VFIO group character devices (/dev/vfio/<group>).
    public static let groupMajor: UInt32 = 238
    /// /dev/vfio/vfio: misc device 10, VFIO_MINOR.
    public static let containerMajor: UInt32 = 10
    public static let containerMinor: UInt32 = 196

    public let platform: Platform
    public let host: any VFIOHost
    public let user: any UserMemoryAccess
    public let trace: (@Sendable (String) -> Void)?
    /// vfio-pci devices by index (vfioN).
    public let devices: [VFIOPCIDevice]
    /// Groups with at least one vfio-pci member, by minor.
    public let groups: [VFIOGroup]

    let lock = Lock()

    public init(platform: Platform, host: any VFIOHost, user: any UserMemoryAccess,
                trace: (@Sendable (String) -> Void)? = nil) {
        self.platform = platform
        self.host = host
        self.user = user
        self.trace = trace
        var devices: [VFIOPCIDevice] = []
        var groups: [VFIOGroup] = []
        var byID: [Int: VFIOGroup] = [:]
        for device in platform.devices where device.driver == "vfio-pci" {
            guard let hardware = device.hardware else { continue }
            let group: VFIOGroup
            if let g = byID[device.group] {
                group = g
            } else {
                group = VFIOGroup(id: device.group, minor: groups.count)
                byID[device.group] = group
                groups.append(group)
            }
            let v = VFIOPCIDevice(index: devices.count, device: device, function: hardware, group: group)
            group.devices.append(v)
            devices.append(v)
        }
        self.devices = devices
        self.groups = groups
    }

    /// The device called `name` ("vfio3").
    public func device(named name: String) -> VFIOPCIDevice? {
        guard name.hasPrefix("vfio"), let n = Int(name.dropFirst(4)), String(n) == name.dropFirst(4),
              devices.indices.contains(n) else { return nil }
        return devices[n]
    }

    /// The device at PCI address `address`.
    public func device(at address: PCIAddress) -> VFIOPCIDevice? {
        devices.first { $0.platformDevice.spec.address == address }
    }

    /// The group numbered `id` (its /dev/vfio/<id> node).
    public func group(id: Int) -> VFIOGroup? { groups.first { $0.id == id } }

    // MARK: Opening

    /// open() of /dev/vfio/devices/vfioN (vfio_device_fops_cdev_open): always succeeds for a
    /// registered device; access comes with VFIO_DEVICE_BIND_IOMMUFD.
    public func openDevice(_ device: VFIOPCIDevice) -> VFIODeviceFile {
        VFIODeviceFile(subsystem: self, device: device, groupFile: nil)
    }

    /// open() of /dev/vfio/<group> (vfio_group_fops_open): EBUSY if the group is open already
    /// or one of its devices is bound through its cdev.
    public func openGroup(_ group: VFIOGroup) -> Result<VFIOGroupFile, VFIOError> {
        lock.withLock {
            if group.devices.isEmpty { return .failure(VFIOError(.ENODEV)) }
            if group.cdevOpenCount > 0 || group.openedFile != nil { return .failure(VFIOError(.EBUSY)) }
            let file = VFIOGroupFile(subsystem: self, group: group)
            group.openedFile = file
            return .success(file)
        }
    }

    /// open() of /dev/vfio/vfio: an iommufd that accounts pinned pages to the process, as the
    /// kernel's iommufd-provided container does.
    public static func makeContainer(_ file: IOMMUFDFile) {
        try? file.context.setRlimitMode(.process, privileged: true)
    }

    // MARK: Trace

    func traceLine(_ name: String, _ record: TraceRecord?, _ result: Int64, cmd: UInt32) {
        guard let trace, let record else { return }
        if record.name == nil { record.name = name }
        trace(record.line(cmd: cmd, result: result))
    }
}
