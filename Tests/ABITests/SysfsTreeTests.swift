// The sysfs tree rendered for the default machine: what a VMM reads to find a device.

import Testing
import IOMMUABI
import IOMMUEngine
import IOMMUHardware

@Suite("sysfs tree")
struct SysfsTreeTests {
    func text(_ nodes: [SysfsNode], _ path: String) -> String? {
        guard let n = nodes.first(where: { $0.path == path }), case .file(let bytes) = n.kind else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    func link(_ nodes: [SysfsNode], _ path: String) -> String? {
        guard let n = nodes.first(where: { $0.path == path }), case .symlink(let t) = n.kind else { return nil }
        return t
    }

    @Test func eduAsAVMMFindsIt() throws {
        let h = VFIOHarness()
        let nodes = SysfsTree.nodes(h.vfio)
        let edu = "/sys/devices/pci0000:00/0000:00:10.0"
        #expect(link(nodes, "/sys/bus/pci/devices/0000:00:10.0") == "../../../devices/pci0000:00/0000:00:10.0")
        #expect(text(nodes, edu + "/vendor") == "0x1234\n" && text(nodes, edu + "/device") == "0x11e8\n")
        #expect(text(nodes, edu + "/class") == "0x00ff00\n" && text(nodes, edu + "/revision") == "0x10\n")
        let group = h.device("edu0").group.id
        #expect(link(nodes, edu + "/iommu_group") == "../../../kernel/iommu_groups/\(group)")
        #expect(link(nodes, edu + "/iommu") == "../../virtual/iommu/dmar0")
        #expect(link(nodes, edu + "/driver") == "../../../bus/pci/drivers/vfio-pci")
        #expect(text(nodes, edu + "/vfio-dev/vfio0/dev") == "237:0\n")
        #expect(link(nodes, "/sys/class/vfio-dev/vfio0") == "../../devices/pci0000:00/0000:00:10.0/vfio-dev/vfio0")
        #expect(link(nodes, "/sys/kernel/iommu_groups/\(group)/devices/0000:00:10.0")
                == "../../../../devices/pci0000:00/0000:00:10.0")
        #expect(text(nodes, "/sys/kernel/iommu_groups/\(group)/reserved_regions") == "0x00000000fee00000 0x00000000feefffff msi\n")
        // BAR0: 1 MiB of 32-bit memory at the address firmware assigned (also in the BAR register).
        let resource = try #require(text(nodes, edu + "/resource")).split(separator: "\n")
        #expect(resource.count == 13)
        let bar0 = resource[0].split(separator: " ").map { UInt64($0.dropFirst(2), radix: 16)! }
        #expect(bar0[1] - bar0[0] + 1 == 1 << 20 && bar0[2] == 0x40200)
        #expect(UInt64(h.device("edu0").function.configRead(0x10, width: 4)) == bar0[0])
        // Device nodes with the numbers sysfs gives.
        #expect(nodes.contains(SysfsNode(path: "/dev/vfio/devices/vfio0", kind: .characterDevice(major: 237, minor: 0))))
        #expect(nodes.contains(SysfsNode(path: "/dev/vfio/vfio", kind: .characterDevice(major: 10, minor: 196))))
        #expect(nodes.contains(SysfsNode(path: "/dev/vfio/\(group)", kind: .characterDevice(major: 238, minor: 0))))
    }

    @Test func hostDriversAndGroupsWithoutVFIO() {
        let h = VFIOHarness()
        let nodes = SysfsTree.nodes(h.vfio)
        let usb = "/sys/devices/pci0000:00/0000:00:14.0"
        #expect(link(nodes, usb + "/driver") == "../../../bus/pci/drivers/xhci_hcd")
        #expect(!nodes.contains { $0.path.hasPrefix(usb + "/vfio-dev") })
        let usbGroup = h.platform.device(named: "usb0")!.group
        #expect(!nodes.contains { $0.path == "/dev/vfio/\(usbGroup)" }, "no vfio-pci member: no group node")
        #expect(text(nodes, "/sys/kernel/iommu_groups/\(usbGroup)/reserved_regions")
                == "0x00000000e0000000 0x00000000e00fffff direct\n0x00000000fee00000 0x00000000feefffff msi\n")
        // Paths are unique and parents come first.
        var seen = Set<String>()
        for n in nodes {
            #expect(seen.insert(n.path).inserted, "\(n.path) twice")
            let parent = String(n.path[..<n.path.lastIndex(of: "/")!])
            #expect(parent.isEmpty || seen.contains(parent), "\(n.path) before its parent")
        }
        #expect(SysfsTree.digest(nodes) == SysfsTree.digest(SysfsTree.nodes(VFIOHarness().vfio)))
    }
}
