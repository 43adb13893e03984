// Tests of the machine description: group computation rule by rule, the default machine, the
// machine-file parser and its errors, the example files, and the text and JSON renderings.

import Foundation
import Testing
@testable import IOMMUHardware
import UIOMMUBase

// MARK: - Helpers

/// Two units and a host bridge, so each test writes only the topology it is about.
private let preamble = """
    iommu u0 kind=intel-vtd format=vtd-ss width=48 pages=4K,2M,1G coherent=yes
    iommu u1 kind=intel-vtd format=vtd-ss width=39 pages=4K,2M
    host-bridge pci0 iommu=u0
    """
private let preambleLines = 3

private func machine(_ body: String) throws(MachineFileError) -> MachineDescription {
    try MachineDescription.parse(preamble + "\n" + body, fileName: "test.machine")
}

/// The groups as lists of member names, in group-id order.
private func groupNames(_ m: MachineDescription) -> [[String]] {
    m.groups.map { m.members(of: $0).map(\.name) }
}

/// Parses `body` after the preamble and returns the error, or nil if it parsed.
private func parseError(_ body: String) -> MachineFileError? {
    do {
        _ = try machine(body)
        return nil
    } catch {
        return error
    }
}

private func examplePath(_ name: String) -> String {
    // Tests/HardwareTests/MachineTests.swift → <package>/examples/<name>
    let here = URL(fileURLWithPath: #filePath)
    return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("examples").appendingPathComponent(name).path
}

private func loadExample(_ name: String) throws -> MachineDescription {
    let text = try String(contentsOfFile: examplePath(name), encoding: .utf8)
    return try MachineDescription.parse(text, fileName: name)
}

// MARK: - Group computation, rule by rule

@Suite struct MachineGroupRules {
    @Test func rootPortsWithACSGiveSingletonGroups() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            device a at=rp1 id=1111:0001
            root-port rp2 at=pci0 dev=2 secondary=2 acs=yes
            device b at=rp2 id=1111:0002
            """)
        #expect(groupNames(m) == [["a"], ["b"]])
        #expect(m.groups[0].reason.contains("isolated"))
        #expect(m.groups[0].reason.contains("rp1"))
    }

    @Test func rootPortWithoutACSGroupsEverythingBelowIt() throws {
        // The switch ports have ACS, but the root port above them does not.
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=no
            switch sw at=rp1 secondary=2
            downstream-port p0 at=sw dev=0 secondary=3 acs=yes
            device a at=p0 id=1111:0001
            downstream-port p1 at=sw dev=1 secondary=4 acs=yes
            device b at=p1 id=1111:0002
            root-port rp2 at=pci0 dev=2 secondary=5 acs=yes
            device c at=rp2 id=1111:0003
            """)
        #expect(groupNames(m) == [["a", "b"], ["c"]])
        #expect(m.groups[0].reason.contains("root port rp1"))
        #expect(m.groups[0].reason.contains("has no ACS"))
    }

    @Test func partialACSIsNoACS() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=sv,rr,cr
            switch sw at=rp1 secondary=2
            downstream-port p0 at=sw dev=0 secondary=3 acs=yes
            device a at=p0 id=1111:0001
            downstream-port p1 at=sw dev=1 secondary=4 acs=yes
            device b at=p1 id=1111:0002
            """)
        #expect(groupNames(m) == [["a", "b"]])
        #expect(m.groups[0].reason.contains("missing UF"))
    }

    @Test func multifunctionWithoutACSSharesAGroup() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            device f0 at=rp1 fn=0 id=8086:10fb
            device f1 at=rp1 fn=1 id=8086:10fb
            """)
        #expect(groupNames(m) == [["f0", "f1"]])
        #expect(m.groups[0].reason.contains("multifunction device 0000:01:00"))
    }

    @Test func multifunctionWithACSIsIsolatedPerFunction() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            device f0 at=rp1 fn=0 id=8086:10fb acs=yes
            device f1 at=rp1 fn=1 id=8086:10fb acs=yes
            """)
        #expect(groupNames(m) == [["f0"], ["f1"]])
    }

    @Test func multifunctionWithMixedACS() throws {
        // A function with ACS is isolated; those without share a group among themselves.
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            device f0 at=rp1 fn=0 id=8086:10fb acs=yes
            device f1 at=rp1 fn=1 id=8086:10fb
            device f2 at=rp1 fn=2 id=8086:10fb
            """)
        #expect(groupNames(m) == [["f0"], ["f1", "f2"]])
    }

    @Test func conventionalDevicesBehindPCIeToPCIBridgeShareAGroup() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            pcie-pci-bridge br at=rp1 secondary=2
            device a at=br dev=1 id=1111:0001
            device b at=br dev=2 id=1111:0002 acs=yes
            pci-bridge br2 at=br dev=3 secondary=3
            device c at=br2 dev=0 id=1111:0003
            root-port rp2 at=pci0 dev=2 secondary=4 acs=yes
            device d at=rp2 id=1111:0004
            """)
        // ACS on a conventional device means nothing: the bus is shared.
        #expect(groupNames(m) == [["a", "b", "c"], ["d"]])
        #expect(m.groups[0].reason.contains("PCIe-to-PCI bridge br"))
        #expect(m.groups[0].reason.contains("requester ID"))
        #expect(m.node(named: "a")?.endpointKind == .conventional)
    }

    @Test func conventionalBridgeOnRootBus() throws {
        let m = try machine("""
            pci-bridge legacy at=pci0 dev=0x1e secondary=1
            device a at=legacy dev=1 id=1111:0001
            device b at=legacy dev=2 id=1111:0002
            """)
        #expect(groupNames(m) == [["a", "b"]])
        #expect(m.groups[0].reason.contains("PCI bridge legacy"))
    }

    @Test func downstreamPortWithoutACSGroupsItsSubtreeOnly() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            switch sw at=rp1 secondary=2
            downstream-port p0 at=sw dev=0 secondary=3 acs=no
            device g0 at=p0 fn=0 id=10de:0001 acs=yes
            device g1 at=p0 fn=1 id=10de:0002 acs=yes
            downstream-port p1 at=sw dev=1 secondary=4 acs=no
            device lone at=p1 id=1111:0001
            downstream-port p2 at=sw dev=2 secondary=5 acs=yes
            device iso at=p2 id=1111:0002
            """)
        // The GPU's functions have ACS, but the port above them does not.
        #expect(groupNames(m) == [["g0", "g1"], ["lone"], ["iso"]])
        #expect(m.groups[0].reason.contains("switch downstream port p0"))
        #expect(m.groups[1].reason.contains("switch downstream port p1"))
        #expect(m.groups[2].reason.contains("isolated"))
        #expect(m.groups[2].reason.contains("p2, rp1"))
    }

    @Test func nestedSwitchBelowDownstreamPortWithoutACS() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            switch sw at=rp1 secondary=2
            downstream-port p0 at=sw dev=0 secondary=3 acs=no
            switch inner at=p0 secondary=4
            downstream-port q0 at=inner dev=0 secondary=5 acs=yes
            device a at=q0 id=1111:0001
            downstream-port q1 at=inner dev=1 secondary=6 acs=yes
            device b at=q1 id=1111:0002
            """)
        #expect(groupNames(m) == [["a", "b"]])
    }

    @Test func singleFunctionSwitchUpstreamPortNeedsNoACS() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            switch sw at=rp1 secondary=2 acs=no
            downstream-port p0 at=sw dev=0 secondary=3 acs=yes
            device a at=p0 id=1111:0001
            downstream-port p1 at=sw dev=1 secondary=4 acs=yes
            device b at=p1 id=1111:0002
            """)
        #expect(groupNames(m) == [["a"], ["b"]])
    }

    @Test func multifunctionSwitchUpstreamPortWithoutACS() throws {
        // A switch with an integrated endpoint function next to its upstream port.
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            switch sw at=rp1 fn=0 secondary=2
            device mgmt at=rp1 fn=1 id=10b5:0001
            downstream-port p0 at=sw dev=0 secondary=3 acs=yes
            device a at=p0 id=1111:0001
            downstream-port p1 at=sw dev=1 secondary=4 acs=yes
            device b at=p1 id=1111:0002
            """)
        #expect(groupNames(m) == [["mgmt", "a", "b"]])
        #expect(m.groups[0].reason.contains("is multifunction"))
    }

    @Test func rootComplexIntegratedEndpoints() throws {
        let m = try machine("""
            device solo at=pci0 dev=2 id=1111:0001
            device mf0 at=pci0 dev=3 fn=0 id=1111:0002
            device mf1 at=pci0 dev=3 fn=1 id=1111:0002
            device acs0 at=pci0 dev=4 fn=0 id=1111:0003 acs=yes
            device acs1 at=pci0 dev=4 fn=1 id=1111:0003 acs=yes
            """)
        #expect(groupNames(m) == [["solo"], ["mf0", "mf1"], ["acs0"], ["acs1"]])
        #expect(m.groups[0].reason.contains("root-complex integrated endpoint"))
        #expect(m.node(named: "solo")?.endpointKind == .rootComplexIntegrated)
    }

    @Test func multifunctionRootPortsWithoutACSShareTheirSubtrees() throws {
        // Like Intel PCH root ports 1c.0 / 1c.1 without ACS.
        let m = try machine("""
            root-port rpa at=pci0 dev=0x1c fn=0 secondary=1 acs=no
            device a at=rpa id=1111:0001
            root-port rpb at=pci0 dev=0x1c fn=1 secondary=2 acs=no
            device b at=rpb id=1111:0002
            root-port rpc at=pci0 dev=0x1c fn=2 secondary=3 acs=yes
            device c at=rpc id=1111:0003
            """)
        #expect(groupNames(m) == [["a", "b"], ["c"]])
    }

    @Test func groupsAreNumberedInDeviceAddressOrder() throws {
        // Declared in reverse order; numbered by address.
        let m = try machine("""
            root-port rp2 at=pci0 dev=2 secondary=2 acs=yes
            device late at=rp2 id=1111:0002
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            device early at=rp1 id=1111:0001
            device integrated at=pci0 dev=0x10 id=1111:0003
            """)
        #expect(m.devices.map(\.name) == ["integrated", "early", "late"])
        #expect(m.devices.map(\.group) == [0, 1, 2])
        for (i, g) in m.groups.enumerated() { #expect(g.id == i) }
        // The topology is canonical: host bridge, then children in address order.
        #expect(m.topology.map(\.name) == ["pci0", "rp1", "early", "rp2", "late", "integrated"])
    }

    @Test func iommuIsInheritedAndCanBeOverridden() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes iommu=u1
            device a at=rp1 id=1111:0001
            device b at=pci0 dev=2 id=1111:0002
            device c at=pci0 dev=3 id=1111:0003 iommu=u1
            """)
        #expect(m.device(named: "a")?.iommu == "u1")
        #expect(m.device(named: "b")?.iommu == "u0")
        #expect(m.device(named: "c")?.iommu == "u1")
    }

    @Test func viability() throws {
        let m = try machine("""
            root-port rp1 at=pci0 dev=1 secondary=1 acs=yes
            pcie-pci-bridge br at=rp1 secondary=2
            device host at=br dev=1 id=8086:100e driver=e1000
            device user at=br dev=2 id=1111:0002
            device free at=pci0 dev=2 id=1111:0003 driver=none
            """)
        let shared = try #require(m.group(ofDevice: "user"))
        #expect(!m.isViable(shared))
        #expect(m.blockingDevices(in: shared).map(\.name) == ["host"])
        #expect(m.isViable(try #require(m.group(ofDevice: "free"))))
        #expect(m.device(named: "free")?.driver == nil)
    }
}

// MARK: - The default machine

@Suite struct DefaultMachineTests {
    @Test func defaultTextParses() throws {
        let parsed = try MachineDescription.parse(MachineDescription.defaultMachineText,
                                                  fileName: "default.machine")
        #expect(parsed == MachineDescription.default)
        #expect(parsed.name == "default")
    }

    @Test func units() throws {
        let m = MachineDescription.default
        #expect(m.iommus.map(\.name) == ["dmar0", "dmar1"])
        let d0 = try #require(m.iommu(named: "dmar0"))
        #expect(d0.kind == .intelVTd && d0.format == .vtdSecondStage)
        #expect(d0.aperture == IOVARange(first: 0, last: (1 << 48) - 1))
        #expect(d0.pageSizes == IOMMUUnitSpec.x86PageSizes)
        #expect(d0.enforcesCacheCoherency && d0.dirtyTracking && d0.nesting)
        #expect(d0.pasidWidth == 20)
        #expect(d0.reservedRegions == [ReservedRegion(range: IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff), kind: .msi)])

        let d1 = try #require(m.iommu(named: "dmar1"))
        #expect(d1.aperture == IOVARange(first: 0, last: (1 << 39) - 1))
        #expect(d1.pageSizes == (1 << 12) | (1 << 21))
        #expect(!d1.enforcesCacheCoherency && !d1.dirtyTracking && !d1.nesting)
        #expect(d1.pasidWidth == 0)
        #expect(d1.reservedRegions.contains(ReservedRegion(range: IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff), kind: .msi)))
        #expect(d1.reservedRegions.contains(ReservedRegion(range: IOVARange(first: 0xe000_0000, last: 0xe00f_ffff), kind: .direct)))
    }

    @Test func groups() throws {
        let m = MachineDescription.default
        #expect(groupNames(m) == [
            ["edu0"], ["usb0"], ["nvme0"], ["gpu0"], ["nic0.0", "nic0.1"], ["pasid0"], ["dma0"],
            ["eth0", "serial0"],
        ])
        let viable = m.groups.map { m.isViable($0) }
        #expect(viable == [true, false, true, true, true, true, true, false])
        #expect(m.group(ofDevice: "nic0.0")?.reason.contains("multifunction") == true)
        #expect(m.group(ofDevice: "eth0")?.reason.contains("PCIe-to-PCI bridge") == true)
        #expect(m.group(ofDevice: "edu0")?.reason.contains("integrated") == true)
        // Every group sits behind one unit.
        for g in m.groups {
            #expect(Set(m.members(of: g).map(\.iommu)).count == 1)
        }
    }

    @Test func devices() throws {
        let m = MachineDescription.default
        #expect(m.devices.map(\.address) == m.devices.map(\.address).sorted())
        let nic0 = try #require(m.device(named: "nic0.0")), nic1 = try #require(m.device(named: "nic0.1"))
        #expect(nic0.vendorID == 0x8086 && nic1.vendorID == 0x8086)
        #expect(nic0.address.function == 0 && nic1.address.function == 1)
        #expect(nic0.driver == "vfio-pci" && nic1.driver == "vfio-pci")

        let nvme = try #require(m.device(named: "nvme0"))
        #expect(nvme.vendorID == 0x144d && nvme.deviceID == 0xa808 && nvme.classCode == 0x010802)

        let pasid = try #require(m.device(named: "pasid0"))
        #expect(pasid.pasidWidth == 20 && pasid.supportsPageFaults && pasid.iommu == "dmar0")

        let dma = try #require(m.device(named: "dma0"))
        #expect(dma.model == .dmaEngine && dma.iommu == "dmar1")
        #expect(m.iommu(of: dma)?.enforcesCacheCoherency == false)

        let edu = try #require(m.device(named: "edu0"))
        #expect(edu.model == .edu && edu.vendorID == 0x1234 && edu.deviceID == 0x11e8)
        #expect(edu.barSizes.first == 1 << 20 && edu.iommu == "dmar0")

        #expect(m.device(named: "eth0")?.driver == "e1000")
        #expect(m.device(named: "usb0")?.iommu == "dmar1")
    }

    @Test func lookups() throws {
        let m = MachineDescription.default
        let address = try #require(PCIAddress(parsing: "0000:03:00.1"))
        #expect(m.device(at: address)?.name == "nic0.1")
        #expect(m.device(at: try #require(PCIAddress(parsing: "03:00.0")))?.name == "nic0.0")
        #expect(m.device(at: try #require(PCIAddress(parsing: "0000:03:00.2"))) == nil)
        #expect(m.device(named: "nope") == nil)
        #expect(m.iommu(named: "dmar9") == nil)
        #expect(m.group(ofDevice: "nope") == nil)
        #expect(m.group(id: 99) == nil)
        #expect(m.group(ofDevice: "nic0.1")?.devices.count == 2)
        #expect(m.node(named: "rp3")?.kind == .rootPort)
        #expect(m.node(named: "pcibr0")?.kind == .pcieToPCIBridge)
        let g = try #require(m.group(ofDevice: "dma0"))
        #expect(m.iommu(ofGroup: g)?.name == "dmar1")
    }

    @Test func addressParsingRejectsGarbage() {
        for bad in ["", "0000:00:20.0", "00:1f.8", "zz:00.0", "0:0:0:0.0", "00:00", "00:00.", "12345:00:00.0",
                    "00:000.0", "100:00.0"] {
            #expect(PCIAddress(parsing: bad) == nil, "\(bad)")
        }
        #expect(PCIAddress(parsing: "0001:80:1f.7") == PCIAddress(segment: 1, bus: 0x80, device: 0x1f, function: 7))
    }
}

// MARK: - Machine-file errors

@Suite struct MachineFileErrors {
    /// (body, line within body, expected fragment of the message)
    static let cases: [(String, Int, String)] = [
        ("bogus x", 1, "unknown keyword 'bogus'"),
        ("device a at=pci0 id=1111:0001 colour=red", 1, "unknown key 'colour'"),
        ("device a at=pci0 id=1111:0001 id=1111:0002", 1, "key 'id' given twice"),
        ("device a at=pci0 id=1111:0001 iommu=", 1, "empty value"),
        ("device a at=pci0 id=1111:0001 stray", 1, "expected key=value, found 'stray'"),
        ("device a at=pci0 id=1111:0001\ndevice a at=pci0 dev=2 id=1111:0002", 2, "duplicate name 'a'"),
        ("device u0 at=pci0 id=1111:0001", 1, "duplicate name 'u0': already used by iommu on line 1"),
        ("device a at=pci0 id=1111:0001\ndevice b at=pci0 id=1111:0002", 2, "address 0000:00:00.0 is already used by 'a' (line \(preambleLines + 1))"),
        ("device a at=nowhere id=1111:0001", 1, "unknown parent 'nowhere'"),
        ("device a at=rp9 id=1111:0001\nroot-port rp9 at=pci0 dev=1 secondary=1 acs=yes", 1, "declared later, on line \(preambleLines + 2)"),
        ("device a at=u0 id=1111:0001", 1, "names an iommu"),
        ("device a at=pci0 id=1111:0001 iommu=dmar9", 1, "unknown iommu 'dmar9' (known: u0, u1)"),
        ("device a at=pci0 dev=1 fn=8 id=1111:0001", 1, "function 8 out of range 0-7"),
        ("device a at=pci0 dev=32 id=1111:0001", 1, "device number 32 out of range 0-31"),
        ("device a at=pci0 dev=1c id=1111:0001", 1, "write hexadecimal with 0x, e.g. 0x1c"),
        ("device a at=pci0 dev=99999999999999999999999 id=1111:0001", 1, "bad number"),
        ("device a at=pci0 dev=-1 id=1111:0001", 1, "bad number '-1'"),
        ("device a at=pci0 id=11110001", 1, "bad id '11110001'"),
        ("device a at=pci0 id=ffff:0001", 1, "vendor id 0xffff"),
        ("device a at=pci0 id=1111:0001 class=0x1000000", 1, "bad class"),
        ("device a at=pci0 id=1111:0001 bars=1K,2K,4K,8K,16K,32K,64K", 1, "at most 6"),
        ("device a at=pci0 id=1111:0001 bars=3K", 1, "BAR0 size 3072 is not a power of two"),
        ("device a at=pci0 id=1111:0001 bars=16Q", 1, "bad size '16Q'"),
        ("device a at=pci0 id=1111:0001 bars=99999999E", 1, "bad size"),
        ("device a at=pci0 id=1111:0001 model=toaster", 1, "unknown model 'toaster' (known: generic, dma-engine, edu)"),
        ("device a at=pci0 id=1111:0001 pasid=21", 1, "PASID width 21 out of range 0-20"),
        ("device a at=pci0 id=1111:0001 pri=maybe", 1, "bad value 'maybe' for pri= (use yes or no)"),
        ("device a id=1111:0001", 1, "needs at=PARENT"),
        ("device a at=pci0", 1, "needs id=VVVV:DDDD"),
        ("device 9a at=pci0 id=1111:0001", 1, "bad name '9a'"),
        ("device", 1, "needs a name"),
        ("root-port rp1 at=pci0 dev=1 secondary=1", 1, "needs acs="),
        ("root-port rp1 at=pci0 dev=1 acs=yes", 1, "needs secondary="),
        ("root-port rp1 at=pci0 dev=1 secondary=1 acs=maybe", 1, "bad ACS control 'maybe'"),
        ("root-port rp1 at=pci0 dev=1 secondary=0 acs=yes", 1, "must be greater than the bus it sits on"),
        ("root-port rp1 at=pci0 dev=1 secondary=256 acs=yes", 1, "secondary bus 256 out of range"),
        ("root-port rp1 at=pci0 dev=1 secondary=1 acs=yes\nroot-port rp2 at=pci0 dev=2 secondary=1 acs=yes", 2, "bus 0x01 of segment 0 is already opened by 'rp1'"),
        ("root-port rp1 at=pci0 dev=1 secondary=1 acs=yes\ndevice a at=rp1 dev=1 id=1111:0001", 2, "only device number 0 exists"),
        ("root-port rp1 at=pci0 dev=1 secondary=1 acs=yes\nroot-port rp2 at=rp1 secondary=2 acs=yes", 2, "cannot sit below root-port 'rp1'"),
        ("root-port rp1 at=pci0 dev=1 secondary=1 acs=yes\nswitch sw at=rp1 secondary=2\ndevice a at=sw id=1111:0001", 3, "a switch's internal bus holds only its downstream ports"),
        ("device a at=pci0 id=1111:0001\ndevice b at=a id=1111:0002", 2, "a device opens no bus"),
        ("pcie-pci-bridge br at=pci0 dev=1 secondary=1\nroot-port rp at=br secondary=2 acs=yes", 2, "cannot sit below"),
        ("pcie-pci-bridge br at=pci0 dev=1 secondary=1 acs=yes", 1, "acs= does not apply to a PCIe-to-PCI bridge"),
        ("device a at=pci0 dev=1 fn=1 id=1111:0001", 1, "has no function 0"),
        ("root-port rp1 at=pci0 dev=1 secondary=1 acs=yes\nswitch sw at=rp1 secondary=3\nroot-port rp2 at=pci0 dev=2 secondary=2 acs=yes", 3, "bus 0x02 of 'rp2' falls inside the bus range 0x01-0x03 of 'rp1'"),
        ("host-bridge pci1 segment=0 bus=0", 1, "bus 0x00 of segment 0 is already opened by 'pci0'"),
        ("host-bridge pci1 segment=70000", 1, "segment 70000 out of range"),
        ("host-bridge pci1 bus=0x10\ndevice a at=pci1 id=1111:0001", 2, "behind no IOMMU"),
        ("pcie-pci-bridge br at=pci0 dev=1 secondary=1\ndevice a at=br id=1111:0001\ndevice b at=br dev=1 id=1111:0002 iommu=u1", 3, "shares group 0"),
        ("iommu u2 kind=intel-vtd format=amd-v1 width=48 pages=4K", 1, "not a page-table format of intel-vtd (use vtd-ss)"),
        ("iommu u2 kind=cray format=vtd-ss width=48 pages=4K", 1, "unknown iommu kind 'cray'"),
        ("iommu u2 kind=intel-vtd format=vtd-xx width=48 pages=4K", 1, "unknown page-table format 'vtd-xx'"),
        ("iommu u2 kind=intel-vtd format=vtd-ss pages=4K", 1, "needs width=BITS or aperture="),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48 aperture=0-0xfff pages=4K", 1, "not both"),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=65 pages=4K", 1, "width=65 out of range 12-64"),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48", 1, "needs pages="),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48 pages=3K", 1, "not a power of two"),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48 pages=4K,4K", 1, "listed twice"),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48 pages=4K pasid=99", 1, "PASID width 99"),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48 pages=4K coherent=perhaps", 1, "bad value 'perhaps' for coherent="),
        ("iommu u2 kind=selftest-mock format=mock aperture=0x1000000-0x7fffffff pages=512", 1, "page size 512 is not a power of two of at least 1K"),
        ("device a at=pci0 id=1111:0001 iommu=rp1\nroot-port rp1 at=pci0 dev=1 secondary=1 acs=yes", 1, "unknown iommu 'rp1'"),
        ("iommu u2 kind=intel-vtd format=vtd-ss aperture=0x10-0x7fffffff pages=4K", 1, "boundary of the smallest page size (4K)"),
        ("iommu u2 kind=intel-vtd format=vtd-ss aperture=0x2000-0x1000 pages=4K", 1, "ends before it starts"),
        ("iommu u2 kind=intel-vtd format=vtd-ss width=48 pages=4K\niommu u2 kind=intel-vtd format=vtd-ss width=48 pages=4K", 2, "duplicate name 'u2'"),
        ("reserve dmar9 msi 0xfee00000-0xfeefffff", 1, "unknown iommu 'dmar9' (known: u0, u1)"),
        ("reserve u0 msi", 1, "write 'reserve IOMMU KIND FIRST-LAST'"),
        ("reserve u0 mmio 0x0-0x1", 1, "unknown reserved-region kind 'mmio'"),
        ("reserve u0 msi 0xfeefffff-0xfee00000", 1, "ends before it starts"),
        ("reserve u0 msi 0xfee00000", 1, "bad range"),
        ("reserve u0 msi 0xfee00000-", 1, "bad range"),
        ("reserve u0 msi 0x10+0", 1, "is empty"),
        ("reserve u0 msi 0xffffffffffffffff+2", 1, "past the end of the 64-bit address space"),
        ("reserve u0 msi 0xfee00000-0xfeefffff\nreserve u0 direct 0xfeef0000+64K", 2, "overlaps the msi region"),
        ("machine a b", 1, "write 'machine NAME'"),
        ("machine a\nmachine b", 2, "machine name already given on line \(preambleLines + 1)"),
    ]

    @Test(arguments: cases.indices)
    func malformedInputNamesFileAndLine(_ index: Int) {
        let (body, line, fragment) = Self.cases[index]
        guard let error = parseError(body) else {
            Issue.record("case \(index) parsed but should fail: \(body)")
            return
        }
        #expect(error.file == "test.machine")
        #expect(error.line == line + preambleLines, "case \(index): \(error)")
        #expect(error.message.contains(fragment), "case \(index): \(error)")
        #expect(error.description.hasPrefix("test.machine:\(line + preambleLines): "))
    }

    @Test func theExampleMessageFromTheBrief() {
        var text = """
            iommu dmar0 kind=intel-vtd format=vtd-ss width=48 pages=4K
            iommu dmar1 kind=intel-vtd format=vtd-ss width=39 pages=4K
            host-bridge pci0
            """
        text += String(repeating: "\n# filler", count: 8)
        text += "\ndevice nvme0 at=pci0 id=144d:a808 iommu=dmar9\n"
        #expect(throws: MachineFileError(file: "machine.cfg", line: 12,
                                         message: "unknown iommu 'dmar9' (known: dmar0, dmar1)")) {
            try MachineDescription.parse(text, fileName: "machine.cfg")
        }
        #expect(MachineFileError(file: "machine.cfg", line: 12, message: "unknown iommu 'dmar9' (known: dmar0, dmar1)")
            .description == "machine.cfg:12: unknown iommu 'dmar9' (known: dmar0, dmar1)")
    }

    @Test func emptyAndCommentOnlyFilesGiveEmptyMachines() throws {
        let m = try MachineDescription.parse("# nothing\n\n   \t\n", fileName: "dir/empty.machine")
        #expect(m.name == "empty")
        #expect(m.devices.isEmpty && m.groups.isEmpty && m.iommus.isEmpty)
        #expect(!m.renderText().isEmpty)
    }

    @Test func numberSpellings() throws {
        let m = try MachineDescription.parse("""
            iommu u kind=selftest-mock format=mock aperture=0x1000000+2032M pages=2K
            reserve u reserved 16M-0x1ffffff
            iommu w kind=arm-smmuv3 format=arm-lpae width=64 pages=4K,64K,512M
            host-bridge h segment=0x1 bus=0x20 iommu=u
            device d at=h dev=0x1f fn=7 id=abc:1 class=ff bars=1_024,0x1000,2M driver=none
            device d0 at=h dev=0x1f fn=0 id=abc:1\r
            """, fileName: "numbers.machine")
        let u = try #require(m.iommu(named: "u"))
        #expect(u.aperture == IOVARange(first: 0x100_0000, last: 0x7fff_ffff))
        #expect(u.reservedRegions.first?.range == IOVARange(first: 16 << 20, last: 0x1ff_ffff))
        #expect(m.iommu(named: "w")?.aperture == IOVARange.all)
        let d = try #require(m.device(named: "d"))
        #expect(d.address == PCIAddress(segment: 1, bus: 0x20, device: 0x1f, function: 7))
        #expect(d.vendorID == 0xabc && d.deviceID == 1 && d.classCode == 0xff)
        #expect(d.barSizes == [1024, 4096, 2 << 20])
        #expect(d.driver == nil)
    }

    @Test func crlfAndOtherLineBreaks() throws {
        // "\r\n" is a single Character in Swift; a CRLF file must still be read line by line.
        let text = preamble.split(separator: "\n").joined(separator: "\r\n")
            + "\r\ndevice a at=pci0 id=1:1\r\ndevice b at=pci0 id=1:1 colour=red\r\n"
        let error = try #require(throws: MachineFileError.self) {
            try MachineDescription.parse(text, fileName: "crlf.machine")
        }
        #expect(error.line == preambleLines + 2)
        #expect(error.message.contains("unknown key 'colour'"))
    }

    @Test func signsAreNotNumbers() {
        for body in ["device a at=pci0 id=+1:1", "device a at=pci0 id=1:1 class=+ff",
                     "device a at=pci0 dev=0x+1 id=1:1", "device a at=pci0 dev=+1 id=1:1",
                     "reserve u0 msi 0x+1-0x2"] {
            #expect(parseError(body) != nil, "\(body)")
        }
    }

    @Test func programmaticMachine() throws {
        let unit = IOMMUUnitSpec(name: "mock", kind: .selftestMock, format: .mock, pageSizes: 1 << 11,
                                 aperture: IOVARange(first: 1 << 24, last: (1 << 31) - 1),
                                 enforcesCacheCoherency: true, dirtyTracking: true, nesting: true,
                                 pasidWidth: 20, reservedRegions: [])
        let devices = [
            PCIDeviceSpec(name: "m1", address: PCIAddress(bus: 0, device: 2, function: 0),
                          vendorID: 1, deviceID: 2, classCode: 0, iommu: "mock"),
            PCIDeviceSpec(name: "m0", address: PCIAddress(bus: 0, device: 1, function: 0),
                          vendorID: 1, deviceID: 2, classCode: 0, iommu: "mock"),
            PCIDeviceSpec(name: "m2", address: PCIAddress(bus: 0, device: 1, function: 1),
                          vendorID: 1, deviceID: 2, classCode: 0, iommu: "mock"),
        ]
        let m = try MachineDescription(name: "mock", iommus: [unit], isolatedDevices: devices)
        #expect(groupNames(m) == [["m0"], ["m2"], ["m1"]])
        #expect(try MachineDescription.parse(m.renderMachineFile(), fileName: "x") == m)

        var bad = devices
        bad[0].iommu = "nope"
        #expect(throws: MachineFileError.self) {
            try MachineDescription(name: "mock", iommus: [unit], isolatedDevices: bad)
        }
    }
}

// MARK: - Round trips and example files

@Suite struct MachineFileRoundTrip {
    @Test func defaultRoundTrips() throws {
        let m = MachineDescription.default
        let text = m.renderMachineFile()
        let again = try MachineDescription.parse(text, fileName: "again.machine")
        #expect(again == m)
        #expect(again.renderMachineFile() == text)
    }

    @Test(arguments: ["vtd-server.machine", "smmuv3-arm.machine", "amd-server.machine"])
    func examplesRoundTrip(_ name: String) throws {
        let m = try loadExample(name)
        #expect(try MachineDescription.parse(m.renderMachineFile(), fileName: name) == m)
        #expect(m.name == String(name.dropLast(".machine".count)))
    }

    @Test func vtdServer() throws {
        let m = try loadExample("vtd-server.machine")
        #expect(groupNames(m) == [
            ["ioat0.0"], ["ioat0.1"], ["lpc0", "sata0", "smbus0"], ["nvme0"],
            ["nic0.0", "nic0.1", "nic0.2", "nic0.3"], ["nvme1"], ["nvme2"],
            ["gpu0.0", "gpu0.1"], ["fpga0"], ["nvme3"], ["nic1"],
        ])
        #expect(m.groups.filter { !m.isViable($0) }.map(\.id) == [2])
        #expect(m.group(ofDevice: "gpu0.0")?.reason.contains("sw1p0") == true)
        #expect(m.group(ofDevice: "fpga0")?.reason.contains("sw1p1") == true)
        #expect(m.device(named: "nic1")?.iommu == "dmar1")
        #expect(m.device(named: "nic1")?.address.description == "0000:86:00.0")
    }

    @Test func smmuv3Arm() throws {
        let m = try loadExample("smmuv3-arm.machine")
        let smmu = try #require(m.iommu(named: "smmu0"))
        #expect(smmu.kind == .armSMMUv3 && smmu.format == .armLPAE)
        #expect(smmu.aperture == IOVARange(first: 0, last: (1 << 48) - 1))
        #expect(smmu.reservedRegions == [ReservedRegion(range: IOVARange(first: 0x800_0000, last: 0x80f_ffff), kind: .msi)])
        #expect(m.iommu(named: "smmu1")?.reservedRegions == smmu.reservedRegions)
        #expect(groupNames(m) == [["nvme0"], ["nic0", "accel0"], ["dma0"], ["gpu0"]])
        #expect(m.device(named: "gpu0")?.address.segment == 1)
        #expect(m.group(ofDevice: "dma0")?.reason.contains("missing RR") == true)
    }

    @Test func amdServer() throws {
        let m = try loadExample("amd-server.machine")
        let ivhd = try #require(m.iommu(named: "ivhd0"))
        #expect(ivhd.kind == .amdVi && ivhd.format == .amdV1)
        #expect(ivhd.reservedRegions.contains(ReservedRegion(range: IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff), kind: .msi)))
        #expect(ivhd.reservedRegions.contains(ReservedRegion(range: IOVARange(first: 0xfd_0000_0000, last: 0xff_ffff_ffff), kind: .reserved)))
        #expect(groupNames(m) == [
            ["smbus0", "lpc0"], ["nvme0"], ["gpu0.0", "gpu0.1"], ["nic0"], ["usb0"], ["eth0"],
            ["serial0", "parport0"],
        ])
        #expect(m.groups.map { m.isViable($0) } == [false, true, true, true, false, false, true])
        let bridged = try #require(m.group(ofDevice: "serial0"))
        #expect(bridged.reason.contains("PCIe-to-PCI bridge pcibr0"))
        #expect(bridged.reason.contains("fch0p2"))
    }

    /// Mutated machine files must parse or fail with an error, never trap; whatever parses must
    /// render and round-trip.
    @Test func mutatedInputNeverTraps() throws {
        var rng = SplitMix(seed: 0x5eed)
        let base = Array(MachineDescription.defaultMachineText.unicodeScalars)
        let inserts: [String] = ["=", "#", "0x", "-", "+", ",", "\n", " ", "9", "ffff", "é", "\u{0}",
                                 "acs=no", "fn=7", "dev=31", "K", "G", "E", ":", ".", "\"", "\\"]
        var parsed = 0
        for _ in 0..<1500 {
            var scalars = base
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let at = Int(rng.next() % UInt64(scalars.count))
                switch rng.next() % 3 {
                case 0:
                    let n = min(scalars.count - at, Int(rng.next() % 6) + 1)
                    scalars.removeSubrange(at..<(at + n))
                case 1:
                    let s = inserts[Int(rng.next() % UInt64(inserts.count))]
                    scalars.insert(contentsOf: s.unicodeScalars, at: at)
                default:
                    let other = Int(rng.next() % UInt64(scalars.count))
                    scalars.swapAt(at, other)
                }
                if scalars.isEmpty { scalars = base }
            }
            var text = ""
            text.unicodeScalars.append(contentsOf: scalars)
            guard let m = try? MachineDescription.parse(text, fileName: "fuzz") else { continue }
            parsed += 1
            _ = m.renderText()
            #expect(JSONChecker.isValid(m.renderJSON()))
            #expect(try MachineDescription.parse(m.renderMachineFile(), fileName: "fuzz2") == m)
        }
        #expect(parsed > 100)
    }

    /// Lines of random words from the format's vocabulary: errors, never traps.
    @Test func randomLinesNeverTrap() {
        var rng = SplitMix(seed: 42)
        let words = ["iommu", "reserve", "device", "root-port", "switch", "downstream-port",
                     "pcie-pci-bridge", "pci-bridge", "host-bridge", "machine", "u0", "u1", "pci0",
                     "x", "at=pci0", "at=x", "dev=0x1f", "fn=7", "fn=8", "secondary=0xff",
                     "secondary=1", "acs=yes", "acs=sv,rr", "id=1:1", "id=ffff:1", "class=0xffffff",
                     "bars=16E", "bars=1,2,4", "width=64", "width=12", "pages=4K", "pages=1K,2K",
                     "kind=intel-vtd", "format=vtd-ss", "aperture=0-0xffffffffffffffff",
                     "msi", "direct", "0x0-0xffffffffffffffff", "0xffffffffffffffff+1", "=", "#",
                     "segment=65535", "bus=255", "iommu=u0", "iommu=u1", "pasid=20", "pri=yes"]
        for _ in 0..<3000 {
            var text = preamble
            for _ in 0..<(1 + rng.next() % 5) {
                text += "\n"
                for _ in 0..<(1 + rng.next() % 7) {
                    text += words[Int(rng.next() % UInt64(words.count))] + " "
                }
            }
            if let m = try? MachineDescription.parse(text, fileName: "random") {
                _ = m.renderText()
                _ = m.renderJSON()
            }
        }
    }
}

// MARK: - Rendering

@Suite struct MachineRenderingTests {
    @Test func textContainsTheKeyFacts() {
        let text = MachineDescription.default.renderText()
        for fact in [
            "Machine default", "2 IOMMU units", "10 devices", "8 IOMMU groups",
            "dmar0: intel-vtd, page-table format vtd-ss",
            "0x0-0xffffffffffff (48-bit, 256 TiB)", "0x0-0x7fffffffff (39-bit, 512 GiB)",
            "4K 2M 1G", "enforced (can block no-snoop DMA)", "NOT enforced",
            "20 bits", "0xfee00000-0xfeefffff", "msi", "0xe0000000-0xe00fffff", "direct",
            "0000:00:03.0 rp3: root port [ACS] → bus 03",
            "0000:03:00.1", "nic0.1", "8086:10fb", "class 020000", "driver vfio-pci",
            "pcibr0: PCIe-to-PCI bridge → bus 07 (conventional PCI)",
            "driver e1000", "model edu", "model dma-engine", "PASID 20 + PRI", "BARs 0:1M",
            "group 4", "NOT viable", "eth0 is bound to host driver e1000",
            "multifunction device 0000:03:00",
        ] {
            #expect(text.contains(fact), "missing: \(fact)")
        }
        // Every line fits a wide terminal, except tree lines which carry a device's facts.
        #expect(!text.contains("\t"))
    }

    @Test func textOfPartialACS() throws {
        let text = try loadExample("smmuv3-arm.machine").renderText()
        #expect(text.contains("[ACS partial: SV CR UF, missing RR]"))
        #expect(text.contains("[no ACS]"))
        #expect(text.contains("segment 0001"))
    }

    @Test func jsonIsValidAndHasTheFacts() throws {
        let json = MachineDescription.default.renderJSON()
        let value = try #require(JSONChecker.parse(json))
        guard case .object(let top) = value else { Issue.record("not an object"); return }
        #expect(top.map(\.0) == ["name", "iommus", "topology", "devices", "groups"])
        #expect(json.contains("\"name\": \"dmar1\""))
        #expect(json.contains("\"enforcesCacheCoherency\": false"))
        #expect(json.contains("\"first\": \"0xfee00000\""))
        #expect(json.contains("\"driver\": \"e1000\""))
        #expect(json.contains("\"viable\": false"))
        // Stable: rendering twice gives the same bytes.
        #expect(json == MachineDescription.default.renderJSON())
    }

    @Test func jsonEscapesStrings() throws {
        let m = try MachineDescription.parse("""
            machine we"ird\\name
            iommu u kind=intel-vtd format=vtd-ss width=48 pages=4K
            host-bridge h iommu=u
            device d at=h id=1:1 driver=dr"v\\x\u{01}é
            """, fileName: "esc")
        let json = m.renderJSON()
        #expect(JSONChecker.isValid(json))
        #expect(json.contains(#""name": "we\"ird\\name""#))
        #expect(json.contains(#""driver": "dr\"v\\x\u0001é""#))
        guard case .object(let top)? = JSONChecker.parse(json), case .string(let name)? = top.first?.1 else {
            Issue.record("bad JSON"); return
        }
        #expect(name == "we\"ird\\name")
    }

    @Test func formatDescriptionMentionsEveryKeyword() {
        for keyword in ["machine", "iommu", "reserve"] + PCINode.Kind.allCases.map(\.rawValue) {
            #expect(MachineDescription.machineFileFormat.contains(keyword))
        }
    }
}

// MARK: - Test utilities

/// A deterministic PRNG so the mutation test is reproducible.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// A strict RFC 8259 parser, small enough to trust, to check the hand-written JSON.
private enum JSONChecker {
    indirect enum Value: Equatable {
        case string(String), number(String), bool(Bool), null
        case array([Value])
        case object([(String, Value)])
        static func == (a: Value, b: Value) -> Bool {
            switch (a, b) {
            case (.string(let x), .string(let y)), (.number(let x), .number(let y)): x == y
            case (.bool(let x), .bool(let y)): x == y
            case (.null, .null): true
            case (.array(let x), .array(let y)): x == y
            case (.object(let x), .object(let y)): x.map(\.0) == y.map(\.0) && x.map(\.1) == y.map(\.1)
            default: false
            }
        }
    }

    static func isValid(_ text: String) -> Bool { parse(text) != nil }

    static func parse(_ text: String) -> Value? {
        var p = Parser(bytes: Array(text.utf8))
        guard let v = p.value() else { return nil }
        p.skipSpace()
        return p.i == p.bytes.count ? v : nil
    }

    private struct Parser {
        let bytes: [UInt8]
        var i = 0
        mutating func skipSpace() {
            while i < bytes.count, [0x20, 0x0a, 0x0d, 0x09].contains(bytes[i]) { i += 1 }
        }
        mutating func literal(_ s: String) -> Bool {
            let u = Array(s.utf8)
            guard i + u.count <= bytes.count, Array(bytes[i..<(i + u.count)]) == u else { return false }
            i += u.count
            return true
        }
        mutating func value() -> Value? {
            skipSpace()
            guard i < bytes.count else { return nil }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                i += 1
                var members: [(String, Value)] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                while true {
                    skipSpace()
                    guard let key = string() else { return nil }
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
                    i += 1
                    guard let v = value() else { return nil }
                    members.append((key, v))
                    skipSpace()
                    guard i < bytes.count else { return nil }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                    return nil
                }
            case UInt8(ascii: "["):
                i += 1
                var items: [Value] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                while true {
                    guard let v = value() else { return nil }
                    items.append(v)
                    skipSpace()
                    guard i < bytes.count else { return nil }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                    return nil
                }
            case UInt8(ascii: "\""):
                return string().map { .string($0) }
            case UInt8(ascii: "t"): return literal("true") ? .bool(true) : nil
            case UInt8(ascii: "f"): return literal("false") ? .bool(false) : nil
            case UInt8(ascii: "n"): return literal("null") ? .null : nil
            default:
                let start = i
                if bytes[i] == UInt8(ascii: "-") { i += 1 }
                let digitsStart = i
                while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
                guard i > digitsStart else { return nil }
                if bytes[digitsStart] == UInt8(ascii: "0") && i - digitsStart > 1 { return nil }
                return .number(String(decoding: bytes[start..<i], as: UTF8.self))
            }
        }
        mutating func string() -> String? {
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { return nil }
            i += 1
            var out: [UInt8] = []
            while i < bytes.count {
                let b = bytes[i]
                i += 1
                switch b {
                case UInt8(ascii: "\""): return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard i < bytes.count else { return nil }
                    let e = bytes[i]
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5c)
                    case UInt8(ascii: "/"): out.append(0x2f)
                    case UInt8(ascii: "n"): out.append(0x0a)
                    case UInt8(ascii: "r"): out.append(0x0d)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0c)
                    case UInt8(ascii: "u"):
                        guard i + 4 <= bytes.count,
                              let code = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16),
                              let scalar = Unicode.Scalar(code) else { return nil }
                        i += 4
                        out.append(contentsOf: Array(String(Character(scalar)).utf8))
                    default: return nil
                    }
                default:
                    if b < 0x20 { return nil }   // raw control characters are not allowed
                    out.append(b)
                }
            }
            return nil
        }
    }
}
