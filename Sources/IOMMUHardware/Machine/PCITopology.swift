// The PCI tree of a simulated machine: host bridges (one root bus each), root ports, PCIe
// switches, PCIe-to-PCI bridges, conventional PCI bridges and endpoint functions.
//
// Only what decides IOMMU isolation is modelled: which function sits where, whether its bus is
// PCIe or conventional PCI, and which ACS controls each port enables. Bus numbers are explicit so
// that the addresses a user sees in `uiommufd platform` are the ones they wrote.

import UIOMMUBase

/// The Access Control Services controls that matter for IOMMU isolation.
///
/// Linux requires all four (its REQ_ACS_FLAGS) before it trusts a port to keep peer-to-peer DMA
/// from bypassing the IOMMU; any subset is as good as none for grouping.
public struct ACSControls: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// SV: the port checks that a requester ID really belongs below it.
    public static let sourceValidation = ACSControls(rawValue: 1 << 0)
    /// RR: peer-to-peer requests are redirected upstream, through the IOMMU.
    public static let requestRedirect = ACSControls(rawValue: 1 << 1)
    /// CR: peer-to-peer completions are redirected upstream too.
    public static let completionRedirect = ACSControls(rawValue: 1 << 2)
    /// UF: requests that came back down are forwarded upstream again instead of to a peer.
    public static let upstreamForwarding = ACSControls(rawValue: 1 << 3)

    /// The set a port needs to isolate the devices below it.
    public static let isolating: ACSControls = [
        .sourceValidation, .requestRedirect, .completionRedirect, .upstreamForwarding,
    ]

    /// True when every control needed for isolation is enabled.
    public var isIsolating: Bool { isSuperset(of: .isolating) }

    /// The isolating controls that are not enabled.
    public var missing: ACSControls { ACSControls.isolating.subtracting(self) }

    /// The short names in a fixed order, as the machine file spells them: sv, rr, cr, uf.
    static let spellings: [(ACSControls, String)] = [
        (.sourceValidation, "sv"), (.requestRedirect, "rr"),
        (.completionRedirect, "cr"), (.upstreamForwarding, "uf"),
    ]

    /// "SV RR CR UF", or "none".
    public var description: String {
        let names = Self.spellings.filter { contains($0.0) }.map { $0.1.uppercased() }
        return names.isEmpty ? "none" : names.joined(separator: " ")
    }
}

/// One node of the PCI tree.
public struct PCINode: Hashable, Sendable {
    /// What the node is. The raw value is the keyword of the machine file.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        /// A host bridge / root complex: opens the root bus of a segment. Has no function itself.
        case hostBridge = "host-bridge"
        /// A PCIe root port on a root bus; opens one PCIe link.
        case rootPort = "root-port"
        /// The upstream port of a PCIe switch; opens the switch's internal bus.
        case switchUpstreamPort = "switch"
        /// A downstream port of a PCIe switch; opens one PCIe link.
        case switchDownstreamPort = "downstream-port"
        /// A PCIe-to-PCI(-X) bridge; opens a conventional PCI bus.
        case pcieToPCIBridge = "pcie-pci-bridge"
        /// A conventional PCI-to-PCI bridge; opens a conventional PCI bus.
        case pciBridge = "pci-bridge"
        /// An endpoint function (a device a driver binds to).
        case endpoint = "device"

        /// Whether the node opens a bus below it.
        public var opensBus: Bool { self != .endpoint }

        /// Words for people ("root port", "PCIe-to-PCI bridge").
        public var displayName: String {
            switch self {
            case .hostBridge: "host bridge"
            case .rootPort: "root port"
            case .switchUpstreamPort: "switch upstream port"
            case .switchDownstreamPort: "switch downstream port"
            case .pcieToPCIBridge: "PCIe-to-PCI bridge"
            case .pciBridge: "PCI bridge"
            case .endpoint: "device"
            }
        }
    }

    /// Where an endpoint sits, which decides how the kernel reasons about its isolation.
    public enum EndpointKind: String, Hashable, Sendable {
        /// A root-complex integrated endpoint (directly on a root bus).
        case rootComplexIntegrated = "rciep"
        /// A PCIe endpoint below a root port or switch downstream port.
        case pcie
        /// A conventional PCI device below a PCIe-to-PCI or PCI bridge.
        case conventional
    }

    public var name: String
    public var kind: Kind
    /// The PCI segment (domain) the node lives in.
    public var segment: UInt16
    /// The function's address; nil for a host bridge, which has none in this model.
    public var address: PCIAddress?
    /// The bus this node opens: the root bus of a host bridge, the secondary bus of a bridge or
    /// port; nil for an endpoint.
    public var secondaryBus: UInt8?
    /// The highest bus number below this node (what the bridge's subordinate register holds).
    public var subordinateBus: UInt8?
    /// The ACS controls this function enables (empty if it has no ACS capability).
    public var acs: ACSControls
    /// The IOMMU unit that translates DMA from below this node (inherited unless overridden).
    public var iommu: String?
    /// Index of the parent in `MachineDescription.topology`; nil for a host bridge.
    public var parent: Int?
    /// Indexes of the children in `MachineDescription.topology`, in address order.
    public var children: [Int]
    /// For an endpoint, its index in `MachineDescription.devices`.
    public var deviceIndex: Int?
    /// For an endpoint, where it sits.
    public var endpointKind: EndpointKind?
    /// True if the function's slot holds more than one function (a multifunction device).
    public var isMultifunction: Bool

    public init(name: String, kind: Kind, segment: UInt16, address: PCIAddress?,
                secondaryBus: UInt8?, subordinateBus: UInt8?, acs: ACSControls, iommu: String?,
                parent: Int?, children: [Int], deviceIndex: Int?, endpointKind: EndpointKind?,
                isMultifunction: Bool) {
        self.name = name; self.kind = kind; self.segment = segment; self.address = address
        self.secondaryBus = secondaryBus; self.subordinateBus = subordinateBus; self.acs = acs
        self.iommu = iommu; self.parent = parent; self.children = children
        self.deviceIndex = deviceIndex; self.endpointKind = endpointKind
        self.isMultifunction = isMultifunction
    }

    /// True if the function sits on a conventional PCI bus (no ACS, shared bus).
    public var isConventional: Bool {
        kind == .pciBridge || endpointKind == .conventional
    }

    /// Whether the kernel would treat this function as isolating peer-to-peer traffic (the
    /// question Linux's pci_acs_enabled answers with REQ_ACS_FLAGS):
    /// - conventional PCI and PCIe-to-PCI bridges: never (a shared bus has no ACS);
    /// - root ports and switch downstream ports: only with all isolating controls;
    /// - endpoints and switch upstream ports: ACS only matters when they are multifunction,
    ///   since a single function has no peer inside its own device.
    public var acsIsolates: Bool {
        switch kind {
        case .hostBridge: return true
        case .pcieToPCIBridge, .pciBridge: return false
        case .rootPort, .switchDownstreamPort: return acs.isIsolating
        case .switchUpstreamPort: return isMultifunction ? acs.isIsolating : true
        case .endpoint:
            if isConventional { return false }
            return isMultifunction ? acs.isIsolating : true
        }
    }
}
