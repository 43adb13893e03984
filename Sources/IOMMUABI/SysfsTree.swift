// The sysfs entries and device nodes a VMM reads to find a device, rendered from the running
// machine: what /sys/bus/pci/devices, /sys/kernel/iommu_groups, /sys/bus/pci/drivers,
// /sys/class/vfio-dev and /dev/vfio look like on a Linux host with this machine's devices,
// IOMMU groups and drivers. The interposer materializes it (Sources/CUIOMMUInterpose/sysfs.c).
//
// Layout (links are relative, as sysfs makes them):
//   /sys/devices/pci0000:00/0000:00:10.0/           one directory per function (flat per root bus)
//       vendor device subsystem_vendor subsystem_device class revision   "0x1234\n" …
//       irq numa_node enable driver_override resource config uevent
//       iommu_group -> ../../../kernel/iommu_groups/N
//       iommu -> ../../virtual/iommu/dmar0                  (the unit; /sys/class/iommu/dmar0 too)
//       driver -> ../../../bus/pci/drivers/vfio-pci           (when bound)
//       subsystem -> ../../../bus/pci
//       vfio-dev/vfio0/dev "237:0\n", uevent                  (when bound to vfio-pci)
//   /sys/bus/pci/devices/0000:00:10.0 -> ../../../devices/pci0000:00/0000:00:10.0
//   /sys/bus/pci/drivers/vfio-pci/0000:00:10.0 -> ../../../../devices/pci0000:00/0000:00:10.0
//   /sys/kernel/iommu_groups/N/devices/0000:00:10.0 -> ../../../../devices/pci0000:00/0000:00:10.0
//   /sys/kernel/iommu_groups/N/reserved_regions     "0x00000000fee00000 0x00000000feefffff msi\n"
//   /sys/kernel/iommu_groups/N/type                 "DMA\n"
//   /sys/class/vfio-dev/vfio0 -> ../../devices/pci0000:00/0000:00:10.0/vfio-dev/vfio0
//   /dev/vfio/vfio, /dev/vfio/<group>, /dev/vfio/devices/vfioN   character devices

import IOMMUEngine
import IOMMUHardware

/// One entry of the rendered tree.
public struct SysfsNode: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case directory
        case file([UInt8])
        case symlink(String)
        case characterDevice(major: UInt32, minor: UInt32)
    }
    /// Absolute path as a program sees it ("/sys/bus/pci/devices/0000:00:10.0/vendor").
    public var path: String
    public var kind: Kind

    public init(path: String, kind: Kind) { self.path = path; self.kind = kind }

    static func text(_ path: String, _ s: String) -> SysfsNode { SysfsNode(path: path, kind: .file(Array(s.utf8))) }
}

public enum SysfsTree {
    /// A number for the tree's format: a change of the rendering must change it.
    public static let formatVersion = 2

    /// Every entry for `vfio`'s platform, parents before children.
    public static func nodes(_ vfio: VFIOSubsystem) -> [SysfsNode] {
        var out: [SysfsNode] = []
        var dirs = Set<String>()
        func dir(_ path: String) {
            var prefix = ""
            for part in path.split(separator: "/") {
                prefix += "/" + part
                if dirs.insert(prefix).inserted { out.append(SysfsNode(path: prefix, kind: .directory)) }
            }
        }
        func file(_ path: String, _ text: String) { out.append(.text(path, text)) }
        func link(_ path: String, _ target: String) { out.append(SysfsNode(path: path, kind: .symlink(target))) }
        func hex(_ v: UInt64, _ digits: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, digits - s.count)) + s
        }

        let platform = vfio.platform
        dir("/sys/bus/pci/devices")
        dir("/sys/bus/pci/drivers/vfio-pci")
        dir("/sys/kernel/iommu_groups")
        dir("/sys/class/vfio-dev")
        dir("/dev/vfio/devices")
        out.append(SysfsNode(path: "/dev/vfio/vfio",
                             kind: .characterDevice(major: VFIOSubsystem.containerMajor, minor: VFIOSubsystem.containerMinor)))
        for unit in platform.units {
            dir("/sys/devices/virtual/iommu/\(unit.name)")
            dir("/sys/class/iommu")
            link("/sys/class/iommu/\(unit.name)", "../../devices/virtual/iommu/\(unit.name)")
        }
        var groups = Set<Int>()
        for device in platform.devices {
            guard let f = device.hardware else { continue }
            let spec = device.spec
            let bdf = spec.address.description
            let rootBus = "pci\(hex(UInt64(spec.address.segment), 4)):\(hex(UInt64(platform.rootBus(of: spec)), 2))"
            let base = "/sys/devices/\(rootBus)/\(bdf)"
            dir(base)
            file(base + "/vendor", "0x\(hex(UInt64(spec.vendorID), 4))\n")
            file(base + "/device", "0x\(hex(UInt64(spec.deviceID), 4))\n")
            file(base + "/subsystem_vendor", "0x\(hex(UInt64(f.configRead(PCIConfig.subsystemVendorID, width: 2)), 4))\n")
            file(base + "/subsystem_device", "0x\(hex(UInt64(f.configRead(PCIConfig.subsystemID, width: 2)), 4))\n")
            file(base + "/class", "0x\(hex(UInt64(spec.classCode), 6))\n")
            file(base + "/revision", "0x\(hex(UInt64(f.configRead(PCIConfig.revisionID, width: 1)), 2))\n")
            file(base + "/irq", "0\n")
            file(base + "/numa_node", "-1\n")
            file(base + "/enable", "0\n")
            file(base + "/driver_override", "(null)\n")
            file(base + "/local_cpulist", "0-\(max(0, 1))\n")
            var resource = ""
            for i in 0..<13 {
                if i < 6, let bar = f.bars[i] {
                    let start = f.barAddress(i)
                    var flags: UInt64 = bar.kind == .io ? 0x100 : 0x200
                    flags |= 0x40000                                    // IORESOURCE_SIZEALIGN
                    if bar.prefetchable { flags |= 0x2000 }
                    if bar.kind == .memory64 { flags |= 0x100000 }
                    resource += "0x\(hex(start, 16)) 0x\(hex(start + bar.size - 1, 16)) 0x\(hex(flags, 16))\n"
                } else {
                    resource += "0x\(hex(0, 16)) 0x\(hex(0, 16)) 0x\(hex(0, 16))\n"
                }
            }
            file(base + "/resource", resource)
            let config = (0..<f.config.size).map { UInt8(truncatingIfNeeded: f.configRead($0, width: 1)) }
            out.append(SysfsNode(path: base + "/config", kind: .file(config)))
            var uevent = "PCI_CLASS=\(String(spec.classCode, radix: 16, uppercase: true))\n"
            uevent += "PCI_ID=\(hex(UInt64(spec.vendorID), 4).uppercased()):\(hex(UInt64(spec.deviceID), 4).uppercased())\n"
            uevent += "PCI_SLOT_NAME=\(bdf)\n"
            if let driver = device.driver { uevent = "DRIVER=\(driver)\n" + uevent }
            file(base + "/uevent", uevent)
            link(base + "/iommu_group", "../../../kernel/iommu_groups/\(device.group)")
            link(base + "/iommu", "../../virtual/iommu/\(device.unit.name)")
            link(base + "/subsystem", "../../../bus/pci")
            link("/sys/bus/pci/devices/\(bdf)", "../../../devices/\(rootBus)/\(bdf)")
            if let driver = device.driver {
                dir("/sys/bus/pci/drivers/\(driver)")
                link(base + "/driver", "../../../bus/pci/drivers/\(driver)")
                link("/sys/bus/pci/drivers/\(driver)/\(bdf)", "../../../../devices/\(rootBus)/\(bdf)")
            }
            if let v = vfio.devices.first(where: { $0.platformDevice === device }) {
                let node = "\(base)/vfio-dev/\(v.name)"
                dir(node)
                file(node + "/dev", "\(VFIOSubsystem.deviceMajor):\(v.index)\n")
                file(node + "/uevent", "MAJOR=\(VFIOSubsystem.deviceMajor)\nMINOR=\(v.index)\nDEVNAME=vfio/devices/\(v.name)\n")
                link("/sys/class/vfio-dev/\(v.name)", "../../devices/\(rootBus)/\(bdf)/vfio-dev/\(v.name)")
                out.append(SysfsNode(path: "/dev/vfio/devices/\(v.name)",
                                     kind: .characterDevice(major: VFIOSubsystem.deviceMajor, minor: UInt32(v.index))))
            }
            let g = "/sys/kernel/iommu_groups/\(device.group)"
            if groups.insert(device.group).inserted {
                dir(g + "/devices")
                var regions = ""
                for r in device.unit.spec.reservedRegions.sorted(by: { $0.range.first < $1.range.first }) {
                    regions += "0x\(hex(r.range.first, 16)) 0x\(hex(r.range.last, 16)) \(r.kind.rawValue)\n"
                }
                file(g + "/reserved_regions", regions)
                file(g + "/type", "DMA\n")
            }
            link("\(g)/devices/\(bdf)", "../../../../devices/\(rootBus)/\(bdf)")
        }
        for group in vfio.groups {
            out.append(SysfsNode(path: "/dev/vfio/\(group.id)",
                                 kind: .characterDevice(major: VFIOSubsystem.groupMajor, minor: UInt32(group.minor))))
        }
        return out
    }

    /// A short stable digest of `nodes` (FNV-1a, 64-bit), naming the materialized tree.
    public static func digest(_ nodes: [SysfsNode]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ bytes: some Sequence<UInt8>) { for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 } }
        mix("v\(formatVersion)".utf8)
        for n in nodes {
            mix(n.path.utf8); mix([0])
            switch n.kind {
            case .directory: mix([1])
            case .file(let b): mix([2]); mix(b)
            case .symlink(let t): mix([3]); mix(t.utf8)
            case .characterDevice(let major, let minor): mix([4]); mix("\(major):\(minor)".utf8)
            }
            mix([0])
        }
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

extension Platform {
    /// The root bus number of the host bridge above `spec` (for the /sys/devices/pciSSSS:BB name,
    /// and: a device on it has no bridge above it to reset).
    func rootBus(of spec: PCIDeviceSpec) -> UInt8 {
        var index = machine.topology.firstIndex { $0.kind == .endpoint && $0.name == spec.name }
        while let i = index, let parent = machine.topology[i].parent { index = parent }
        if let i = index, let bus = machine.topology[i].secondaryBus { return bus }
        return 0
    }
}
