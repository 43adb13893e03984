// Builds a validated MachineDescription from declarations, one at a time, in the order a machine
// file states them. The parser and the programmatic constructors share it, so every machine is
// checked by the same rules whatever it came from; each rule is checked where the offending
// declaration is known, so the error can name its line.

import UIOMMUBase

/// A machine file (or programmatic description) that cannot describe a real machine.
public struct MachineFileError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The file name as given to `parse` ("machine.cfg").
    public var file: String
    /// The 1-based line of the problem; 0 when it concerns the whole file.
    public var line: Int
    /// What is wrong, in words that say how to fix it.
    public var message: String

    public init(file: String, line: Int, message: String) {
        self.file = file; self.line = line; self.message = message
    }

    /// "machine.cfg:12: unknown iommu 'dmar9' (known: dmar0, dmar1)", the compiler convention
    /// editors understand.
    public var description: String {
        line > 0 ? "\(file):\(line): \(message)" : "\(file): \(message)"
    }
}

/// The properties of an endpoint function, as declared.
struct EndpointRequest {
    var vendorID: UInt16
    var deviceID: UInt16
    var classCode: UInt32
    var barSizes: [UInt64] = []
    var model: DeviceModel = .generic
    var driver: String? = "vfio-pci"
    var pasidWidth: Int = 0
    var supportsPageFaults: Bool = false
}

/// One node declaration. Numbers are `Int` so out-of-range values reach validation instead of
/// trapping in a narrowing conversion.
struct NodeRequest {
    var name: String
    var kind: PCINode.Kind
    /// The parent's name; ignored for a host bridge.
    var parent: String?
    /// Host bridge only: its segment and root bus number.
    var segment: Int = 0
    var rootBus: Int = 0
    var device: Int = 0
    var function: Int = 0
    /// Bridges and ports: the bus number they open.
    var secondaryBus: Int?
    var acs: ACSControls = []
    var iommu: String?
    var endpoint: EndpointRequest?
}

struct MachineAssembler {
    let fileName: String
    var machineName: String?
    /// Names declared further down the file, so "unknown" can say "declared later".
    var laterDeclarations: [String: (line: Int, isIOMMU: Bool)] = [:]

    private(set) var iommus: [IOMMUUnitSpec] = []
    private var iommuLines: [String: Int] = [:]

    private struct Draft {
        var request: NodeRequest
        var line: Int
        var parent: Int?
        var segment: UInt16
        var address: PCIAddress?
        var secondaryBus: UInt8?
    }
    private var drafts: [Draft] = []
    private var draftByName: [String: Int] = [:]
    private var addressOwner: [PCIAddress: Int] = [:]
    private struct BusKey: Hashable { var segment: UInt16; var bus: UInt8 }
    private var busOwner: [BusKey: Int] = [:]

    init(fileName: String) { self.fileName = fileName }

    func error(_ line: Int, _ message: String) -> MachineFileError {
        MachineFileError(file: fileName, line: line, message: message)
    }

    // MARK: Names

    /// Names are what users type on command lines, so they are kept to letters, digits, '.', '_'
    /// and '-', starting with a letter, at most 32 characters.
    static func isValidName(_ name: some StringProtocol) -> Bool {
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= 32,
              ("a"..."z").contains(first) || ("A"..."Z").contains(first)
        else { return false }
        return name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
                || $0 == "." || $0 == "_" || $0 == "-"
        }
    }

    static func listing(_ names: [String], none: String = "none declared") -> String {
        if names.isEmpty { return none }
        let shown = names.prefix(12).joined(separator: ", ")
        return names.count > 12 ? "\(shown), … \(names.count - 12) more" : shown
    }

    private func checkNewName(_ name: String, line: Int) throws(MachineFileError) {
        guard Self.isValidName(name) else {
            throw error(line, "bad name '\(name)': use letters, digits, '.', '_' or '-', starting "
                + "with a letter, at most 32 characters")
        }
        if let previous = iommuLines[name] {
            throw error(line, "duplicate name '\(name)': already used by iommu on line \(previous)")
        }
        if let previous = draftByName[name] {
            let d = drafts[previous]
            throw error(line, "duplicate name '\(name)': already used by \(d.request.kind.rawValue) "
                + "on line \(d.line)")
        }
    }

    private func unknown(_ what: String, _ name: String, known: [String], line: Int) -> MachineFileError {
        if let later = laterDeclarations[name], later.line > line, later.isIOMMU == (what == "iommu") {
            return error(line, "\(what) '\(name)' is declared later, on line \(later.line); declare "
                + "it before it is used")
        }
        return error(line, "unknown \(what) '\(name)' (known: \(Self.listing(known)))")
    }

    // MARK: IOMMU units

    /// The page-table formats each kind of IOMMU can walk.
    static func formats(for kind: IOMMUKind) -> [PageTableFormat] {
        switch kind {
        case .intelVTd: [.vtdSecondStage]
        case .amdVi: [.amdV1]
        case .armSMMUv3: [.armLPAE]
        case .selftestMock: [.mock]
        }
    }

    mutating func addIOMMU(_ spec: IOMMUUnitSpec, line: Int) throws(MachineFileError) {
        try checkNewName(spec.name, line: line)
        let allowed = Self.formats(for: spec.kind)
        guard allowed.contains(spec.format) else {
            throw error(line, "format '\(spec.format.rawValue)' is not a page-table format of "
                + "\(spec.kind.rawValue) (use \(allowed.map(\.rawValue).joined(separator: " or ")))")
        }
        guard spec.pageSizes != 0 else { throw error(line, "no page sizes given") }
        let smallest = spec.pageSizes.lowestSetBitValue
        // The aperture is cut into pages, so it must begin and end on a page boundary.
        guard spec.aperture.first.isAligned(to: smallest),
              spec.aperture.last == .max || (spec.aperture.last &+ 1).isAligned(to: smallest)
        else {
            throw error(line, "aperture \(spec.aperture) does not start and end on a boundary of "
                + "the smallest page size (\(MachineFormatting.size(smallest)))")
        }
        guard (0...20).contains(spec.pasidWidth) else {
            throw error(line, "PASID width \(spec.pasidWidth) out of range 0-20")
        }
        iommuLines[spec.name] = line
        var clean = spec
        clean.reservedRegions = []
        iommus.append(clean)
        for region in spec.reservedRegions {
            try addReservedRegion(region, to: spec.name, line: line)
        }
    }

    mutating func addReservedRegion(_ region: ReservedRegion, to iommu: String,
                                    line: Int) throws(MachineFileError) {
        guard let index = iommus.firstIndex(where: { $0.name == iommu }) else {
            throw unknown("iommu", iommu, known: iommus.map(\.name), line: line)
        }
        if let clash = iommus[index].reservedRegions.first(where: { $0.range.overlaps(region.range) }) {
            throw error(line, "reserved region \(region.range) overlaps the \(clash.kind.rawValue) "
                + "region \(clash.range) already reserved on \(iommu)")
        }
        iommus[index].reservedRegions.append(region)
    }

    // MARK: PCI nodes

    /// Which parents each kind of node may sit below, and why the others are impossible.
    private static func allowedParents(of kind: PCINode.Kind) -> [PCINode.Kind] {
        switch kind {
        case .hostBridge: []
        case .rootPort: [.hostBridge]
        case .switchUpstreamPort: [.rootPort, .switchDownstreamPort]
        case .switchDownstreamPort: [.switchUpstreamPort]
        case .pcieToPCIBridge: [.hostBridge, .rootPort, .switchDownstreamPort]
        case .pciBridge: [.hostBridge, .pcieToPCIBridge, .pciBridge]
        case .endpoint: [.hostBridge, .rootPort, .switchDownstreamPort, .pcieToPCIBridge, .pciBridge]
        }
    }

    private static func placementHint(parent: PCINode.Kind) -> String {
        switch parent {
        case .hostBridge: "a root bus holds root ports, integrated devices and bridges"
        case .rootPort, .switchDownstreamPort:
            "a PCIe link holds one device, a switch or a PCIe-to-PCI bridge"
        case .switchUpstreamPort: "a switch's internal bus holds only its downstream ports"
        case .pcieToPCIBridge, .pciBridge:
            "a conventional PCI bus holds only devices and pci-bridges"
        case .endpoint: "a device opens no bus"
        }
    }

    mutating func addNode(_ request: NodeRequest, line: Int) throws(MachineFileError) {
        try checkNewName(request.name, line: line)
        let kindWord = request.kind.rawValue

        if let iommu = request.iommu, !iommus.contains(where: { $0.name == iommu }) {
            throw unknown("iommu", iommu, known: iommus.map(\.name), line: line)
        }

        var draft = Draft(request: request, line: line, parent: nil, segment: 0, address: nil,
                          secondaryBus: nil)

        if request.kind == .hostBridge {
            guard (0...0xffff).contains(request.segment) else {
                throw error(line, "segment \(request.segment) out of range 0-0xffff")
            }
            guard (0...255).contains(request.rootBus) else {
                throw error(line, "bus \(request.rootBus) out of range 0-255")
            }
            draft.segment = UInt16(request.segment)
            draft.secondaryBus = UInt8(request.rootBus)
        } else {
            guard let parentName = request.parent else {
                throw error(line, "\(kindWord) '\(request.name)' needs at=<parent>")
            }
            guard let parentIndex = draftByName[parentName] else {
                if iommuLines[parentName] != nil {
                    throw error(line, "at='\(parentName)' names an iommu; at= names the bridge, "
                        + "port or host bridge above this \(kindWord)")
                }
                throw unknown("parent", parentName, known: drafts.filter { $0.request.kind.opensBus }
                    .map(\.request.name), line: line)
            }
            let parent = drafts[parentIndex]
            let allowed = Self.allowedParents(of: request.kind)
            guard allowed.contains(parent.request.kind) else {
                throw error(line, "\(kindWord) '\(request.name)' cannot sit below "
                    + "\(parent.request.kind.rawValue) '\(parentName)': "
                    + Self.placementHint(parent: parent.request.kind))
            }
            guard (0...31).contains(request.device) else {
                throw error(line, "device number \(request.device) out of range 0-31")
            }
            guard (0...7).contains(request.function) else {
                throw error(line, "function \(request.function) out of range 0-7 "
                    + "(a PCI device has at most 8 functions)")
            }
            // Linux scans only device 0 behind a PCIe port: a link has one device at the far end.
            if (parent.request.kind == .rootPort || parent.request.kind == .switchDownstreamPort)
                && request.device != 0 {
                throw error(line, "\(kindWord) '\(request.name)' is on the PCIe link below "
                    + "'\(parentName)', where only device number 0 exists (got dev=\(request.device))")
            }
            guard let bus = parent.secondaryBus,
                  let address = PCIAddress(checkedSegment: parent.segment, bus: bus,
                                           device: UInt8(request.device),
                                           function: UInt8(request.function))
            else { throw error(line, "internal: parent '\(parentName)' opens no bus") }
            if let owner = addressOwner[address] {
                throw error(line, "address \(address) is already used by '\(drafts[owner].request.name)' "
                    + "(line \(drafts[owner].line))")
            }
            draft.parent = parentIndex
            draft.segment = parent.segment
            draft.address = address

            if request.kind.opensBus {
                guard let secondary = request.secondaryBus else {
                    throw error(line, "\(kindWord) '\(request.name)' needs secondary=<bus number> "
                        + "(the bus it opens)")
                }
                guard (0...255).contains(secondary) else {
                    throw error(line, "secondary bus \(secondary) out of range 0-255")
                }
                // Enumeration numbers buses depth first, so a bridge's bus is always above the
                // bus it sits on.
                guard secondary > Int(bus) else {
                    throw error(line, "secondary bus \(MachineFormatting.hex2(secondary)) of "
                        + "'\(request.name)' must be greater than the bus it sits on "
                        + "(\(MachineFormatting.hex2(Int(bus))))")
                }
                draft.secondaryBus = UInt8(secondary)
            }
        }

        if let bus = draft.secondaryBus {
            let key = BusKey(segment: draft.segment, bus: bus)
            if let owner = busOwner[key] {
                throw error(line, "bus \(MachineFormatting.hex2(Int(bus))) of segment "
                    + "\(draft.segment) is already opened by '\(drafts[owner].request.name)' "
                    + "(line \(drafts[owner].line))")
            }
            busOwner[key] = drafts.count
        }

        if let endpoint = request.endpoint {
            guard endpoint.vendorID != 0xffff else {
                throw error(line, "vendor id 0xffff means 'no device' on PCI; use a real vendor id")
            }
            guard endpoint.classCode <= 0xff_ffff else {
                throw error(line, "class code 0x\(String(endpoint.classCode, radix: 16)) is wider "
                    + "than 24 bits")
            }
            guard endpoint.barSizes.count <= 6 else {
                throw error(line, "\(endpoint.barSizes.count) BARs given; a PCI function has at most 6")
            }
            for (bar, size) in endpoint.barSizes.enumerated() where size != 0 && !size.isPowerOfTwo {
                throw error(line, "BAR\(bar) size \(size) is not a power of two")
            }
            guard (0...20).contains(endpoint.pasidWidth) else {
                throw error(line, "PASID width \(endpoint.pasidWidth) out of range 0-20")
            }
        }
        if let address = draft.address { addressOwner[address] = drafts.count }
        draftByName[request.name] = drafts.count
        drafts.append(draft)
    }

    // MARK: Finishing

    /// Whole-machine checks, group computation and the canonical ordering.
    func finish() throws(MachineFileError) -> MachineDescription {
        var children = Array(repeating: [Int](), count: drafts.count)
        for (index, draft) in drafts.enumerated() {
            if let p = draft.parent { children[p].append(index) }
        }
        // Only host bridges lack an address, and they are never children.
        let nowhere = PCIAddress(bus: 0, device: 0, function: 0)
        for index in children.indices {
            children[index].sort { (drafts[$0].address ?? nowhere) < (drafts[$1].address ?? nowhere) }
        }

        // Function 0 must exist: enumeration probes function 0 and looks further only if it is
        // there and says it is multifunction.
        for draft in drafts {
            guard let address = draft.address, address.function != 0, let p = draft.parent else { continue }
            let hasZero = children[p].contains {
                drafts[$0].address?.device == address.device && drafts[$0].address?.function == 0
            }
            if !hasZero {
                throw error(draft.line, "'\(draft.request.name)' is function \(address.function) of "
                    + "\(address.slotDescription), which has no function 0: PCI finds a device only "
                    + "through its function 0")
            }
        }

        // Bus ranges: a bridge forwards one contiguous range [secondary, subordinate], so the
        // buses of different subtrees must not interleave.
        var subordinate = drafts.map { $0.secondaryBus }
        for index in drafts.indices.reversed() {   // children are declared after their parents
            guard let mine = subordinate[index], let p = drafts[index].parent,
                  let theirs = subordinate[p] else { continue }
            subordinate[p] = max(theirs, mine)
        }
        func isDescendant(_ x: Int, of ancestor: Int) -> Bool {
            var current = drafts[x].parent
            while let c = current {
                if c == ancestor { return true }
                current = drafts[c].parent
            }
            return false
        }
        var openersBySegment: [UInt16: [Int]] = [:]   // at most 256 per segment: one per bus
        for (index, draft) in drafts.enumerated() where draft.secondaryBus != nil {
            openersBySegment[draft.segment, default: []].append(index)
        }
        for (b, bridge) in drafts.enumerated() {
            guard let low = bridge.secondaryBus, let high = subordinate[b], high > low else { continue }
            for c in openersBySegment[bridge.segment] ?? [] where c != b {
                let other = drafts[c]
                guard let bus = other.secondaryBus, bus >= low, bus <= high,
                      !isDescendant(c, of: b) else { continue }
                throw error(other.line, "bus \(MachineFormatting.hex2(Int(bus))) of "
                    + "'\(other.request.name)' falls inside the bus range "
                    + "\(MachineFormatting.hex2(Int(low)))-\(MachineFormatting.hex2(Int(high))) of "
                    + "'\(bridge.request.name)' (line \(bridge.line)), which is not above it; "
                    + "number the buses of each subtree contiguously")
            }
        }

        // The effective IOMMU of each node: its own, or the nearest one above.
        var effectiveIOMMU: [String?] = []
        for draft in drafts {
            effectiveIOMMU.append(draft.request.iommu ?? draft.parent.flatMap { effectiveIOMMU[$0] })
        }
        for (index, draft) in drafts.enumerated() where draft.request.kind == .endpoint {
            if effectiveIOMMU[index] == nil {
                throw error(draft.line, "device '\(draft.request.name)' is behind no IOMMU: give it "
                    + "iommu=<unit> or set iommu= on a port or host bridge above it (known: "
                    + "\(Self.listing(iommus.map(\.name))))")
            }
        }

        // Canonical order: host bridges by (segment, root bus), then depth first.
        let roots = drafts.indices.filter { drafts[$0].parent == nil }.sorted {
            (drafts[$0].segment, drafts[$0].secondaryBus ?? 0) < (drafts[$1].segment, drafts[$1].secondaryBus ?? 0)
        }
        var order: [Int] = []
        var stack = roots.reversed() as [Int]
        while let next = stack.popLast() {
            order.append(next)
            stack.append(contentsOf: children[next].reversed())
        }
        var canonical = Array(repeating: 0, count: drafts.count)
        for (position, index) in order.enumerated() { canonical[index] = position }

        // Devices sorted by address.
        let endpoints = drafts.indices.filter { drafts[$0].request.kind == .endpoint }
            .sorted { (drafts[$0].address ?? nowhere) < (drafts[$1].address ?? nowhere) }
        var deviceIndexOfDraft: [Int: Int] = [:]
        var devices: [PCIDeviceSpec] = []
        for index in endpoints {
            let draft = drafts[index]
            guard let e = draft.request.endpoint, let address = draft.address,
                  let iommu = effectiveIOMMU[index] else { continue }
            deviceIndexOfDraft[index] = devices.count
            devices.append(PCIDeviceSpec(
                name: draft.request.name, address: address, vendorID: e.vendorID,
                deviceID: e.deviceID, classCode: e.classCode, iommu: iommu,
                pasidWidth: e.pasidWidth, supportsPageFaults: e.supportsPageFaults,
                barSizes: e.barSizes, model: e.model, driver: e.driver, group: -1))
        }

        var nodes: [PCINode] = []
        for index in order {
            let draft = drafts[index]
            let kind = draft.request.kind
            var endpointKind: PCINode.EndpointKind?
            if kind == .endpoint, let p = draft.parent {
                switch drafts[p].request.kind {
                case .hostBridge: endpointKind = .rootComplexIntegrated
                case .pcieToPCIBridge, .pciBridge: endpointKind = .conventional
                default: endpointKind = .pcie
                }
            }
            let multifunction: Bool
            if let address = draft.address, let p = draft.parent {
                multifunction = children[p].contains {
                    $0 != index && drafts[$0].address?.device == address.device
                }
            } else {
                multifunction = false
            }
            nodes.append(PCINode(
                name: draft.request.name, kind: kind, segment: draft.segment,
                address: draft.address, secondaryBus: draft.secondaryBus,
                subordinateBus: subordinate[index], acs: draft.request.acs,
                iommu: effectiveIOMMU[index], parent: draft.parent.map { canonical[$0] },
                children: children[index].map { canonical[$0] },
                deviceIndex: deviceIndexOfDraft[index], endpointKind: endpointKind,
                isMultifunction: multifunction))
        }

        let (groups, groupOfDevice) = PCIGroupSolver(topology: nodes, devices: devices).solve()
        for index in devices.indices { devices[index].group = groupOfDevice[index] }

        // A group is one requester-ID space seen by one IOMMU; members behind different units
        // would mean the topology and the IOMMU assignment contradict each other.
        for group in groups {
            guard let first = group.devices.first else { continue }
            let unit = devices[first].iommu
            for member in group.devices.dropFirst() where devices[member].iommu != unit {
                let line = endpoints.first { deviceIndexOfDraft[$0] == member }.map { drafts[$0].line } ?? 0
                throw error(line, "device '\(devices[member].name)' is behind iommu "
                    + "'\(devices[member].iommu)' but shares group \(group.id) with "
                    + "'\(devices[first].name)' behind '\(unit)'; the members of a group sit behind "
                    + "one IOMMU, so set iommu= on the port or bridge above them instead")
            }
        }

        return MachineDescription(name: machineName ?? Self.stem(of: fileName), iommus: iommus,
                                  topology: nodes, devices: devices, groups: groups)
    }

    /// "examples/vtd-server.machine" → "vtd-server".
    static func stem(of fileName: String) -> String {
        let base = fileName.split(separator: "/").last.map(String.init) ?? fileName
        if let dot = base.lastIndex(of: "."), dot != base.startIndex {
            return String(base[..<dot])
        }
        return base.isEmpty ? "machine" : base
    }
}

extension MachineDescription {
    /// A machine built in code: every device becomes a root-complex integrated endpoint with ACS
    /// on the root bus named by its address, so each is a group by itself. This is the shape
    /// tests of the engine usually want (N independent devices behind some IOMMU units) without a
    /// PCI tree to write. The same validation as for a machine file applies; errors name
    /// `<name>` as the file and line 0.
    public init(name: String, iommus: [IOMMUUnitSpec],
                isolatedDevices: [PCIDeviceSpec]) throws(MachineFileError) {
        var assembler = MachineAssembler(fileName: "<\(name)>")
        assembler.machineName = name
        for unit in iommus { try assembler.addIOMMU(unit, line: 0) }
        var hostBridges: Set<String> = []
        for device in isolatedDevices.sorted(by: { $0.address < $1.address }) {
            let host = "host-\(MachineFormatting.padded(device.address.segment, 4))-"
                + MachineFormatting.padded(device.address.bus, 2)
            if !hostBridges.contains(host) {
                hostBridges.insert(host)
                var bridge = NodeRequest(name: host, kind: .hostBridge)
                bridge.segment = Int(device.address.segment)
                bridge.rootBus = Int(device.address.bus)
                try assembler.addNode(bridge, line: 0)
            }
            var node = NodeRequest(name: device.name, kind: .endpoint, parent: host)
            node.device = Int(device.address.device)
            node.function = Int(device.address.function)
            node.acs = .isolating
            node.iommu = device.iommu
            node.endpoint = EndpointRequest(
                vendorID: device.vendorID, deviceID: device.deviceID, classCode: device.classCode,
                barSizes: device.barSizes, model: device.model, driver: device.driver,
                pasidWidth: device.pasidWidth, supportsPageFaults: device.supportsPageFaults)
            try assembler.addNode(node, line: 0)
        }
        self = try assembler.finish()
    }
}
