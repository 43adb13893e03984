// What `uiommufd platform` prints: the machine for people (renderText) and for programs
// (renderJSON). Both are built here, next to the data, so the CLI stays a thin shell and tests can
// check the output without running it.

import UIOMMUBase

extension MachineDescription {
    /// A human-readable report: IOMMU units and their capabilities, the PCI tree with ACS marks,
    /// and the IOMMU groups with why they are what they are and whether user space can use them.
    public func renderText() -> String {
        MachineTextRenderer(machine: self).render()
    }

    /// The same facts as JSON (UTF-8, two-space indentation, keys in a fixed order). Addresses,
    /// IDs and IOVAs are hex strings, because JSON numbers lose precision above 2^53.
    public func renderJSON() -> String {
        var out = ""
        MachineJSON.write(MachineJSONBuilder(machine: self).document(), to: &out, indent: 0)
        out += "\n"
        return out
    }
}

// MARK: - Text

struct MachineTextRenderer {
    let machine: MachineDescription
    private let width = 100

    func render() -> String {
        var out: [String] = []
        let m = machine
        out.append("Machine \(m.name): \(plural(m.iommus.count, "IOMMU unit")), "
            + "\(plural(m.devices.count, "device")), \(plural(m.groups.count, "IOMMU group"))")
        out.append("")
        out.append("IOMMU units")
        if m.iommus.isEmpty { out.append("  (none)") }
        for unit in m.iommus { out.append(contentsOf: iommuLines(unit)) }
        out.append("")
        out.append("PCI topology   [ACS] = isolating ACS (SV RR CR UF); [no ACS]; [ACS partial: …]")
        if m.topology.isEmpty { out.append("  (empty)") }
        for (index, node) in m.topology.enumerated() where node.kind == .hostBridge {
            out.append(contentsOf: treeLines(index))
        }
        out.append("")
        out.append("IOMMU groups   viable = every member bound to vfio-pci or to no driver")
        if m.groups.isEmpty { out.append("  (none)") }
        for group in m.groups { out.append(contentsOf: groupLines(group)) }
        return out.joined(separator: "\n") + "\n"
    }

    private func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    /// Wraps `text` at word boundaries to fit `width`, every line starting with `indent`.
    private func wrap(_ text: String, indent: String) -> [String] {
        var lines: [String] = []
        var current = indent
        for word in text.split(separator: " ") {
            if current.count > indent.count && current.count + 1 + word.count > width {
                lines.append(current)
                current = indent
            }
            current += (current.count > indent.count ? " " : "") + word
        }
        if current.count > indent.count { lines.append(current) }
        return lines
    }

    private func range(_ r: IOVARange) -> String {
        "\(MachineFormatting.hex(r.first))-\(MachineFormatting.hex(r.last))"
    }

    private func iommuLines(_ unit: IOMMUUnitSpec) -> [String] {
        var lines = ["  \(unit.name): \(unit.kind.rawValue), page-table format \(unit.format.rawValue)"]
        func row(_ label: String, _ value: String) { lines.append("      " + pad(label, 16) + value) }
        let size = MachineFormatting.humanSize(unit.aperture.length)
        let bits = MachineFormatting.width(of: unit.aperture).map { "\($0)-bit, " } ?? ""
        row("aperture", "\(range(unit.aperture)) (\(bits)\(size))")
        row("page sizes", MachineFormatting.pageSizes(unit.pageSizes).joined(separator: " "))
        row("cache coherency", unit.enforcesCacheCoherency
            ? "enforced (can block no-snoop DMA)"
            : "NOT enforced (no-snoop DMA bypasses CPU caches; a VM needs WBINVD emulation)")
        row("dirty tracking", unit.dirtyTracking ? "yes" : "no")
        row("nesting", unit.nesting ? "yes (can be a stage-2 parent)" : "no")
        row("PASID", unit.pasidWidth > 0 ? "\(unit.pasidWidth) bits" : "no")
        if unit.reservedRegions.isEmpty {
            row("reserved", "none")
        }
        for (i, region) in unit.reservedRegions.enumerated() {
            let what: String
            switch region.kind {
            case .msi: what = "MSI doorbell window, never mappable"
            case .direct: what = "firmware direct-mapped range (RMRR), kept identity-mapped"
            case .reserved: what = "reserved hole, never mappable"
            }
            row(i == 0 ? "reserved" : "", "\(pad(range(region.range), 24)) \(pad(region.kind.rawValue, 9))"
                + "\(MachineFormatting.humanSize(region.range.length)), \(what)")
        }
        let users = machine.devices.filter { $0.iommu == unit.name }.map(\.name)
        row("devices", users.isEmpty ? "none" : users.joined(separator: ", "))
        return lines
    }

    private func acsMark(_ node: PCINode) -> String {
        switch node.kind {
        case .rootPort, .switchDownstreamPort:
            break
        case .switchUpstreamPort, .endpoint:
            // ACS only counts on these when they are multifunction; don't clutter the others.
            guard node.isMultifunction, !node.isConventional else { return "" }
        case .hostBridge, .pcieToPCIBridge, .pciBridge:
            return ""
        }
        if node.acs.isIsolating { return " [ACS]" }
        if node.acs.isEmpty { return " [no ACS]" }
        return " [ACS partial: \(node.acs), missing \(node.acs.missing)]"
    }

    private func treeLines(_ root: Int) -> [String] {
        let host = machine.topology[root]
        var lines = ["  \(host.name): host bridge, segment \(MachineFormatting.padded(host.segment, 4)), "
            + "root bus \(MachineFormatting.padded(host.secondaryBus ?? 0, 2))"
            + (host.iommu.map { ", IOMMU \($0)" } ?? "")]
        func walk(_ index: Int, prefix: String) {
            let children = machine.topology[index].children
            for (position, child) in children.enumerated() {
                let last = position == children.count - 1
                lines.append("  " + prefix + (last ? "└─ " : "├─ ") + nodeText(child))
                walk(child, prefix: prefix + (last ? "   " : "│  "))
            }
        }
        walk(root, prefix: "")
        return lines
    }

    private func nodeText(_ index: Int) -> String {
        let node = machine.topology[index]
        let parentIOMMU = node.parent.flatMap { machine.topology[$0].iommu }
        let iommuNote = node.iommu != nil && node.iommu != parentIOMMU ? "  IOMMU \(node.iommu ?? "")" : ""
        let address = node.address?.description ?? ""
        if let deviceIndex = node.deviceIndex, machine.devices.indices.contains(deviceIndex) {
            let d = machine.devices[deviceIndex]
            var parts = ["\(address) \(pad(d.name, 8))",
                         "\(MachineFormatting.padded(d.vendorID, 4)):\(MachineFormatting.padded(d.deviceID, 4))",
                         "class \(MachineFormatting.padded(d.classCode, 6))",
                         "driver \(d.driver ?? "none")", "group \(d.group)"]
            let mark = acsMark(node)
            if !mark.isEmpty { parts.append(String(mark.dropFirst())) }
            switch node.endpointKind {
            case .rootComplexIntegrated: parts.append("integrated")
            case .conventional: parts.append("conventional PCI")
            default: break
            }
            if d.model != .generic { parts.append("model \(d.model.rawValue)") }
            if d.pasidWidth > 0 {
                parts.append("PASID \(d.pasidWidth)" + (d.supportsPageFaults ? " + PRI" : ""))
            } else if d.supportsPageFaults {
                parts.append("PRI")
            }
            let bars = d.barSizes.enumerated().filter { $0.element != 0 }
                .map { "\($0.offset):\(MachineFormatting.size($0.element))" }
            if !bars.isEmpty { parts.append("BARs " + bars.joined(separator: " ")) }
            return parts.joined(separator: "  ") + iommuNote
        }
        var text = "\(address) \(node.name): \(node.kind.displayName)\(acsMark(node))"
        if let secondary = node.secondaryBus {
            let sub = node.subordinateBus ?? secondary
            text += sub > secondary
                ? " → buses \(MachineFormatting.padded(secondary, 2))-\(MachineFormatting.padded(sub, 2))"
                : " → bus \(MachineFormatting.padded(secondary, 2))"
            if node.kind == .pcieToPCIBridge || node.kind == .pciBridge { text += " (conventional PCI)" }
        }
        return text + iommuNote
    }

    private func groupLines(_ group: IOMMUGroupSpec) -> [String] {
        let members = machine.members(of: group)
        let unit = members.first?.iommu ?? "?"
        let viable = machine.isViable(group)
        let names = members.map { "\($0.name) (\($0.address))" }.joined(separator: ", ")
        var lines = ["  group \(pad(String(group.id), 3)) \(pad(unit, 6)) \(viable ? "viable    " : "NOT viable") "
            + names]
        lines.append(contentsOf: wrap("why: " + group.reason, indent: "      "))
        if !viable {
            let blockers = machine.blockingDevices(in: group)
                .map { "\($0.name) is bound to host driver \($0.driver ?? "")" }
                .joined(separator: ", ")
            lines.append(contentsOf: wrap("not usable by user space: \(blockers); VFIO needs every "
                + "member of a group bound to vfio-pci or to no driver", indent: "      "))
        }
        return lines
    }
}

// MARK: - JSON

/// A minimal JSON value: enough to write the machine with a stable key order.
enum MachineJSON {
    case string(String)
    case int(Int)
    case bool(Bool)
    case null
    case array([MachineJSON])
    case object([(String, MachineJSON)])

    static func write(_ value: MachineJSON, to out: inout String, indent: Int) {
        let inner = String(repeating: "  ", count: indent + 1)
        let outer = String(repeating: "  ", count: indent)
        switch value {
        case .string(let s): writeString(s, to: &out)
        case .int(let i): out += String(i)
        case .bool(let b): out += b ? "true" : "false"
        case .null: out += "null"
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            // Arrays of scalars stay on one line; they are short (page sizes, BARs).
            if items.allSatisfy({ $0.isScalar }) {
                out += "["
                for (i, item) in items.enumerated() {
                    if i > 0 { out += ", " }
                    write(item, to: &out, indent: indent)
                }
                out += "]"
                return
            }
            out += "[\n"
            for (i, item) in items.enumerated() {
                out += inner
                write(item, to: &out, indent: indent + 1)
                out += i == items.count - 1 ? "\n" : ",\n"
            }
            out += outer + "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{\n"
            for (i, (key, item)) in members.enumerated() {
                out += inner
                writeString(key, to: &out)
                out += ": "
                write(item, to: &out, indent: indent + 1)
                out += i == members.count - 1 ? "\n" : ",\n"
            }
            out += outer + "}"
        }
    }

    private var isScalar: Bool {
        switch self {
        case .array, .object: false
        default: true
        }
    }

    /// RFC 8259 string escaping: quote, backslash and every control character.
    static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    out += "\\u" + MachineFormatting.padded(scalar.value, 4)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

struct MachineJSONBuilder {
    let machine: MachineDescription

    private func hex(_ v: UInt64) -> MachineJSON { .string(MachineFormatting.hex(v)) }
    private func range(_ r: IOVARange) -> MachineJSON {
        .object([("first", hex(r.first)), ("last", hex(r.last))])
    }

    func document() -> MachineJSON {
        let roots = machine.topology.indices.filter { machine.topology[$0].kind == .hostBridge }
        return .object([
            ("name", .string(machine.name)),
            ("iommus", .array(machine.iommus.map(iommu))),
            ("topology", .array(roots.map(node))),
            ("devices", .array(machine.devices.map(device))),
            ("groups", .array(machine.groups.map(group))),
        ])
    }

    private func iommu(_ u: IOMMUUnitSpec) -> MachineJSON {
        .object([
            ("name", .string(u.name)),
            ("kind", .string(u.kind.rawValue)),
            ("format", .string(u.format.rawValue)),
            ("pageSizes", .array(MachineFormatting.pageSizes(u.pageSizes).map { .string($0) })),
            ("pageSizeBitmap", hex(u.pageSizes)),
            ("aperture", range(u.aperture)),
            ("enforcesCacheCoherency", .bool(u.enforcesCacheCoherency)),
            ("dirtyTracking", .bool(u.dirtyTracking)),
            ("nesting", .bool(u.nesting)),
            ("pasidWidth", .int(u.pasidWidth)),
            ("reservedRegions", .array(u.reservedRegions.map {
                .object([("kind", .string($0.kind.rawValue)), ("first", hex($0.range.first)),
                         ("last", hex($0.range.last))])
            })),
        ])
    }

    private func acs(_ a: ACSControls) -> MachineJSON {
        .array(ACSControls.spellings.filter { a.contains($0.0) }.map { .string($0.1) })
    }

    private func node(_ index: Int) -> MachineJSON {
        let n = machine.topology[index]
        var members: [(String, MachineJSON)] = [
            ("name", .string(n.name)),
            ("kind", .string(n.kind.rawValue)),
            ("segment", .int(Int(n.segment))),
            ("address", n.address.map { .string($0.description) } ?? .null),
        ]
        if let bus = n.secondaryBus {
            members.append(("secondaryBus", .int(Int(bus))))
            members.append(("subordinateBus", .int(Int(n.subordinateBus ?? bus))))
        }
        members.append(("acs", acs(n.acs)))
        members.append(("acsIsolates", .bool(n.acsIsolates)))
        members.append(("multifunction", .bool(n.isMultifunction)))
        members.append(("iommu", n.iommu.map { .string($0) } ?? .null))
        if let kind = n.endpointKind { members.append(("endpointKind", .string(kind.rawValue))) }
        if let d = n.deviceIndex, machine.devices.indices.contains(d) {
            members.append(("device", .string(machine.devices[d].name)))
        }
        if n.kind != .endpoint {
            members.append(("children", .array(n.children.map(node))))
        }
        return .object(members)
    }

    private func device(_ d: PCIDeviceSpec) -> MachineJSON {
        .object([
            ("name", .string(d.name)),
            ("address", .string(d.address.description)),
            ("vendorID", .string("0x" + MachineFormatting.padded(d.vendorID, 4))),
            ("deviceID", .string("0x" + MachineFormatting.padded(d.deviceID, 4))),
            ("classCode", .string("0x" + MachineFormatting.padded(d.classCode, 6))),
            ("iommu", .string(d.iommu)),
            ("group", .int(d.group)),
            ("driver", d.driver.map { .string($0) } ?? .null),
            ("model", .string(d.model.rawValue)),
            ("pasidWidth", .int(d.pasidWidth)),
            ("supportsPageFaults", .bool(d.supportsPageFaults)),
            ("barSizes", .array(d.barSizes.map { hex($0) })),
        ])
    }

    private func group(_ g: IOMMUGroupSpec) -> MachineJSON {
        let members = machine.members(of: g)
        return .object([
            ("id", .int(g.id)),
            ("iommu", members.first.map { .string($0.iommu) } ?? .null),
            ("devices", .array(members.map { .string($0.name) })),
            ("viable", .bool(machine.isViable(g))),
            ("blockedBy", .array(machine.blockingDevices(in: g).map { .string($0.name) })),
            ("reason", .string(g.reason)),
        ])
    }
}
