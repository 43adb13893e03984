// IOMMU group computation: which endpoint functions the IOMMU cannot isolate from each other.
//
// This follows the reasoning of Linux's PCI grouping (pci_device_group and the PCI ACS helpers),
// written from the rules, not from the code:
//
// 1. Requester-ID aliasing. A PCIe-to-PCI bridge forwards the DMA of the conventional devices
//    behind it under its own requester ID, and devices on a shared conventional bus can reach each
//    other anyway. So a function on a conventional bus always joins the group of the bridge
//    above it, and through it that of the topmost bridge of the conventional subtree.
// 2. ACS on the path. Walking from a function toward the root, the first bridge whose whole path
//    to the root complex isolates (see `PCINode.acsIsolates`) stops the walk; every bridge passed
//    before that is a point below which peer-to-peer DMA can bypass the IOMMU, and the function
//    joins the group of the highest such bridge. The bridge itself is in that group too (Linux puts
//    bridges in groups), which is why every device below it ends up together.
// 3. Multifunction devices. Where the walk stopped, if that function is part of a multifunction
//    device and lacks ACS, it joins every other function of the same slot that lacks ACS: functions
//    of one device may talk to each other internally without ever reaching a port.
// 4. Everything else (a root-complex integrated endpoint, a single-function endpoint below ports
//    that all isolate) is a group by itself.
//
// Linux applies these rules device by device as they are discovered and joins an existing group
// when it finds one; a union-find over all functions (bridges included) gives the same partition
// without depending on discovery order. Groups without endpoints (a port alone) are dropped: only
// endpoint functions are described to user space. Device-specific ACS quirks and explicit DMA-alias
// quirks are not modelled; a machine file states the ACS a port really provides instead.

import UIOMMUBase

/// Computes the groups of a PCI tree. `topology` must be in `MachineDescription.topology` order
/// and `devices` sorted by address, with `PCINode.deviceIndex` linking the two.
struct PCIGroupSolver {
    let topology: [PCINode]
    let devices: [PCIDeviceSpec]

    /// The topology index of each device.
    private let nodeOfDevice: [Int: Int]

    init(topology: [PCINode], devices: [PCIDeviceSpec]) {
        self.topology = topology
        self.devices = devices
        var map: [Int: Int] = [:]
        for (index, node) in topology.enumerated() {
            if let d = node.deviceIndex { map[d] = index }
        }
        nodeOfDevice = map
    }

    private struct Event {
        var node: Int
        var key: String
        var text: String
    }

    /// Returns the groups, numbered in device-address order, and each device's group index.
    func solve() -> (groups: [IOMMUGroupSpec], groupOfDevice: [Int]) {
        var parent = Array(topology.indices)
        func find(_ x: Int) -> Int {
            var root = x
            while parent[root] != root { root = parent[root] }
            var y = x
            while parent[y] != root { let next = parent[y]; parent[y] = root; y = next }
            return root
        }
        var events: [Event] = []
        func union(_ a: Int, _ b: Int, key: String, text: String) {
            let ra = find(a), rb = find(b)
            if ra != rb { parent[max(ra, rb)] = min(ra, rb) }
            events.append(Event(node: a, key: key, text: text))
        }

        for index in topology.indices where topology[index].kind != .hostBridge {
            let node = topology[index]
            guard let up = node.parent else { continue }
            let upNode = topology[up]

            // Rule 1: a function on a conventional bus takes its bridge's requester ID.
            if upNode.kind == .pcieToPCIBridge || upNode.kind == .pciBridge {
                let top = topConventionalBridge(above: index)
                union(index, up, key: "alias:\(top)", text: aliasReason(bridge: top))
                continue
            }

            // Rule 2: walk up while the path to the root complex does not isolate.
            var point = index
            var bridge: Int? = up
            while let b = bridge, topology[b].kind != .hostBridge {
                if acsPathIsolates(from: b) { break }
                point = b
                bridge = topology[b].parent
            }
            if point != index {
                union(index, point, key: "acs:\(point)", text: acsReason(culprit: point))
            }

            // Rule 3: functions of one multifunction device without ACS.
            let stop = topology[point]
            if stop.isMultifunction && !stop.acsIsolates {
                let peers = slotSiblings(of: point).filter { !topology[$0].acsIsolates }
                if peers.count > 1 {
                    let text = multifunctionReason(slotOf: point, functions: peers)
                    for peer in peers where peer != point {
                        union(point, peer, key: "mf:\(slotKey(point))", text: text)
                    }
                }
            }
        }

        // Number the classes that contain endpoints in the address order of their first device.
        var groupOfRoot: [Int: Int] = [:]
        var members: [[Int]] = []
        var roots: [Int] = []
        var groupOfDevice = Array(repeating: -1, count: devices.count)
        for deviceIndex in devices.indices {
            guard let nodeIndex = nodeOfDevice[deviceIndex] else { continue }
            let root = find(nodeIndex)
            let id: Int
            if let existing = groupOfRoot[root] {
                id = existing
            } else {
                id = members.count
                groupOfRoot[root] = id
                members.append([])
                roots.append(root)
            }
            members[id].append(deviceIndex)
            groupOfDevice[deviceIndex] = id
        }

        // Bucket the events by class once: a per-group scan would be quadratic on big machines.
        var eventsOfRoot: [Int: [Event]] = [:]
        for event in events { eventsOfRoot[find(event.node), default: []].append(event) }

        var groups: [IOMMUGroupSpec] = []
        for (id, root) in roots.enumerated() {
            var seen: Set<String> = []
            var texts: [String] = []
            for event in eventsOfRoot[root] ?? [] where !seen.contains(event.key) {
                seen.insert(event.key)
                texts.append(event.text)
            }
            let reason: String
            if texts.isEmpty, let only = members[id].first {
                reason = isolatedReason(deviceIndex: only)
            } else {
                reason = texts.joined(separator: "; ")
            }
            groups.append(IOMMUGroupSpec(id: id, devices: members[id], reason: reason))
        }
        return (groups, groupOfDevice)
    }

    // MARK: Topology questions

    /// Whether `start` and every function above it up to the root bus isolate (Linux's
    /// pci_acs_path_enabled to the root).
    private func acsPathIsolates(from start: Int) -> Bool {
        var current = start
        while true {
            let node = topology[current]
            if !node.acsIsolates { return false }
            guard let up = node.parent, topology[up].kind != .hostBridge else { return true }
            current = up
        }
    }

    /// The other functions in the same slot (same bus, same device number), including `index`.
    private func slotSiblings(of index: Int) -> [Int] {
        let node = topology[index]
        guard let up = node.parent, let address = node.address else { return [index] }
        return topology[up].children.filter { topology[$0].address?.device == address.device }
    }

    private func slotKey(_ index: Int) -> String {
        topology[index].address?.slotDescription ?? topology[index].name
    }

    /// The highest PCIe-to-PCI or PCI bridge in the unbroken chain of such bridges above `index`.
    private func topConventionalBridge(above index: Int) -> Int {
        var top = topology[index].parent ?? index
        while let up = topology[top].parent,
              topology[up].kind == .pcieToPCIBridge || topology[up].kind == .pciBridge {
            top = up
        }
        return top
    }

    private func label(_ index: Int) -> String {
        let node = topology[index]
        let place = node.address.map { " (\($0))" } ?? ""
        return "\(node.kind.displayName) \(node.name)\(place)"
    }

    // MARK: Reasons, in plain words

    private func aliasReason(bridge: Int) -> String {
        if topology[bridge].kind == .pcieToPCIBridge {
            return "conventional PCI behind \(label(bridge)): the bridge forwards their DMA under "
                + "its own requester ID, so the IOMMU cannot tell them apart"
        }
        return "conventional PCI behind \(label(bridge)): devices on a shared PCI bus can reach "
            + "each other without the IOMMU and their DMA may carry the bridge's requester ID"
    }

    private func acsReason(culprit: Int) -> String {
        let node = topology[culprit]
        let acs = node.acs.isEmpty ? "has no ACS" : "lacks full ACS (missing \(node.acs.missing))"
        let mf = node.kind == .switchUpstreamPort ? " and is multifunction" : ""
        return "below \(label(culprit)), which \(acs)\(mf): DMA below it can go peer-to-peer "
            + "without passing the IOMMU, so the port and everything below it form one group"
    }

    private func multifunctionReason(slotOf index: Int, functions: [Int]) -> String {
        let names = functions.map { topology[$0].name }.joined(separator: ", ")
        return "functions \(names) of multifunction device \(slotKey(index)) lack ACS: they can "
            + "reach each other inside the device without passing the IOMMU"
    }

    private func isolatedReason(deviceIndex: Int) -> String {
        guard let index = nodeOfDevice[deviceIndex] else { return "isolated" }
        let node = topology[index]
        let mf = node.isMultifunction ? "; it is one function of a multifunction device, with ACS" : ""
        switch node.endpointKind {
        case .rootComplexIntegrated:
            return "root-complex integrated endpoint: no port or bridge lies between it and the "
                + "IOMMU, so it is isolated by itself\(mf)"
        default:
            var ports: [String] = []
            var up = node.parent
            while let u = up, topology[u].kind != .hostBridge {
                if topology[u].kind == .rootPort || topology[u].kind == .switchDownstreamPort {
                    ports.append(topology[u].name)
                }
                up = topology[u].parent
            }
            return "isolated: every port between it and the root complex (\(ports.joined(separator: ", "))) "
                + "has ACS, so its DMA always passes the IOMMU\(mf)"
        }
    }
}
