// The machine uiommufd simulates when given no machine file (DESIGN.md §4).
//
// It is written in the machine-file format and parsed, so the format is exercised on every run
// and the machine reads the same in `uiommufd platform` as here. Each part is there to show one of
// the seed documents' concerns:
//
// - groups (seed 000): a multifunction NIC without ACS (one group of two), singleton groups on
//   root ports with ACS, integrated endpoints, and a PCIe-to-PCI bridge whose two conventional
//   devices share a group that a host driver makes unusable for user space;
// - reserved regions (seed 003): the x86 MSI doorbell window on both units, an RMRR-style direct
//   range for the USB controller's firmware, and a 39-bit unit whose usable IOVA space ends early;
// - cache coherency (seed 004): dmar0 can block no-snoop DMA, dmar1 cannot (like the VT-d unit
//   dedicated to integrated devices on many Intel client parts), with a DMA engine behind it;
// - PASID / page faults: one accelerator with a 20-bit PASID and PRI behind the unit that has them.

import UIOMMUBase

extension MachineDescription {
    /// The default machine in the machine-file format.
    public static let defaultMachineText: String = """
        # uiommufd default machine: an Intel VT-d host with two remapping units.
        machine default

        # dmar0 covers the whole PCI hierarchy: 48-bit, snoop control, dirty tracking, nesting,
        # scalable mode with 20-bit PASIDs.
        iommu dmar0 kind=intel-vtd format=vtd-ss width=48 pages=4K,2M,1G coherent=yes dirty=yes nesting=yes pasid=20
        reserve dmar0 msi 0xfee00000-0xfeefffff

        # dmar1 covers the USB controller and root port 1c: only 39 address bits, no snoop
        # control (no-snoop DMA cannot be blocked), no dirty tracking, no PASID.
        iommu dmar1 kind=intel-vtd format=vtd-ss width=39 pages=4K,2M coherent=no dirty=no nesting=no pasid=0
        reserve dmar1 msi 0xfee00000-0xfeefffff
        # RMRR: firmware keeps DMA-ing to this buffer for legacy USB keyboard emulation.
        reserve dmar1 direct 0xe0000000-0xe00fffff

        host-bridge pci0 segment=0 bus=0x00 iommu=dmar0

        # Root ports with ACS: each device below one is a group by itself.
        root-port rp1 at=pci0 dev=0x01 secondary=0x01 acs=yes
        device nvme0 at=rp1 id=144d:a808 class=0x010802 bars=16K

        root-port rp2 at=pci0 dev=0x02 secondary=0x02 acs=yes
        device gpu0 at=rp2 id=10de:1eb8 class=0x030200 bars=16M,256M,0,32M

        # An 82599-style dual-port NIC: two functions, no ACS, so one group for both.
        root-port rp3 at=pci0 dev=0x03 secondary=0x03 acs=yes
        device nic0.0 at=rp3 fn=0 id=8086:10fb class=0x020000 bars=512K,0,32,0,16K
        device nic0.1 at=rp3 fn=1 id=8086:10fb class=0x020000 bars=512K,0,32,0,16K

        # A DSA-style accelerator: shared virtual memory through PASIDs, page requests (PRI).
        root-port rp4 at=pci0 dev=0x04 secondary=0x04 acs=yes
        device pasid0 at=rp4 id=8086:0b25 class=0x088000 bars=64K,0,128K pasid=20 pri=yes

        # Root-complex integrated endpoints: isolated by themselves.
        device edu0 at=pci0 dev=0x10 id=1234:11e8 class=0x00ff00 bars=1M model=edu
        device usb0 at=pci0 dev=0x14 id=8086:a36d class=0x0c0330 bars=64K driver=xhci_hcd iommu=dmar1

        # A DMA engine behind the unit that cannot enforce cache coherency.
        root-port rp5 at=pci0 dev=0x1c secondary=0x05 acs=yes iommu=dmar1
        device dma0 at=rp5 id=8086:2021 class=0x088000 bars=16K model=dma-engine

        # A PCIe-to-PCI bridge: conventional devices behind it share one group, and the host
        # e1000 driver on eth0 keeps that group from user space.
        root-port rp6 at=pci0 dev=0x1d secondary=0x06 acs=yes
        pcie-pci-bridge pcibr0 at=rp6 secondary=0x07
        device eth0 at=pcibr0 dev=0x01 id=8086:100e class=0x020000 bars=128K,64 driver=e1000
        device serial0 at=pcibr0 dev=0x02 id=9710:9865 class=0x070002 bars=8,0,0,0,4K
        """

    /// The machine simulated when none is given: parsed from `defaultMachineText`.
    public static let `default`: MachineDescription = {
        do {
            return try parse(defaultMachineText, fileName: "<default machine>")
        } catch {
            // The text is a constant of this module and a test parses it, so this cannot be
            // reached by anything a user does; stopping loudly beats simulating a wrong machine.
            fatalError("the embedded default machine does not parse: \(error)")
        }
    }()
}
