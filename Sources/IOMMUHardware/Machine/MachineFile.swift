// The machine file: a human-written description of a simulated machine.
//
// One declaration per line, no indentation rules, `#` starts a comment. A line is a keyword,
// a name, then `key=value` words (values contain no spaces). Declarations are read top to
// bottom and a name must be declared before it is used, which matches how one reads a PCI tree
// (host bridge, then its ports, then what is below them) and lets every error name the line that
// is wrong. The full grammar is in `MachineDescription.machineFileFormat`.

import UIOMMUBase

extension MachineDescription {
    /// Parses a machine file. `fileName` is used in error messages and, when the file has no
    /// `machine` line, as the machine's name (without directory and extension).
    ///
    /// Never traps on bad input: every problem is a `MachineFileError` naming the line.
    public static func parse(_ text: String, fileName: String) throws(MachineFileError) -> MachineDescription {
        var parser = MachineFileParser(fileName: fileName)
        return try parser.parse(text)
    }

    /// The machine in the machine-file format. Parsing it gives back an equal description, so
    /// this is how a machine is saved, and how `uiommufd platform` can show a file to start from.
    public func renderMachineFile() -> String {
        MachineFileWriter(machine: self).render()
    }

    /// A description of the machine-file format, for `--help` texts and the README.
    public static let machineFileFormat: String = """
        Machine files: one declaration per line; '#' starts a comment; words are separated by
        spaces; a name must be declared before it is used (parents before children). Numbers are
        decimal or 0x-hex; sizes may end in K, M, G, T, P, E (powers of 1024); ranges are
        FIRST-LAST (inclusive) or FIRST+SIZE. Names: letters, digits, '.', '_', '-', starting with
        a letter. Every error names the file and line.

          machine NAME
          iommu NAME kind=intel-vtd|amd-vi|arm-smmuv3|selftest-mock
                format=vtd-ss|amd-v1|arm-lpae|mock   (must suit the kind)
                width=BITS | aperture=RANGE           pages=SIZE,...  (e.g. 4K,2M,1G)
                [coherent=yes|no] [dirty=yes|no] [nesting=yes|no] [pasid=0-20]
          reserve IOMMU msi|direct|reserved RANGE
          host-bridge NAME [segment=N] [bus=N] [iommu=UNIT]
          root-port NAME at=HOST-BRIDGE dev=N [fn=N] secondary=BUS acs=ACS [iommu=UNIT]
          switch NAME at=PORT [fn=N] secondary=BUS [acs=ACS] [iommu=UNIT]
          downstream-port NAME at=SWITCH dev=N [fn=N] secondary=BUS acs=ACS [iommu=UNIT]
          pcie-pci-bridge NAME at=PORT|HOST-BRIDGE [dev=N] [fn=N] secondary=BUS [iommu=UNIT]
          pci-bridge NAME at=BRIDGE|HOST-BRIDGE [dev=N] [fn=N] secondary=BUS [iommu=UNIT]
          device NAME at=PARENT [dev=N] [fn=N] id=VVVV:DDDD [class=CCSSPP] [bars=SIZE,...]
                 [model=generic|dma-engine|edu] [driver=vfio-pci|none|HOST-DRIVER]
                 [pasid=0-20] [pri=yes|no] [acs=ACS] [iommu=UNIT]

        ACS is yes (all of SV, RR, CR, UF), no, or a comma list of sv,rr,cr,uf; only all four
        isolate. secondary= is the bus a bridge opens and must be above the bus it sits on. dev
        and fn default to 0; below a root or downstream port only dev=0 exists; a slot needs its
        function 0. id and class are hex (class defaults to ff0000). bars lists BAR0..BAR5 sizes
        (0 = unused). iommu= is inherited from the nearest port or host bridge above. driver
        defaults to vfio-pci; a group is usable by user space only if every member is bound to
        vfio-pci or none. coherent, dirty and nesting default to no, pasid to 0.
        """
}

struct MachineFileParser {
    private var assembler: MachineAssembler
    private var machineLine: Int?

    init(fileName: String) { assembler = MachineAssembler(fileName: fileName) }

    /// A line split into words, with its 1-based number.
    private struct Line {
        var number: Int
        var words: [Substring]
    }

    private static let nodeKeywords: [String: PCINode.Kind] = Dictionary(
        uniqueKeysWithValues: PCINode.Kind.allCases.map { ($0.rawValue, $0) })
    private static let keywords = ["machine", "iommu", "reserve"] + PCINode.Kind.allCases.map(\.rawValue)

    mutating func parse(_ text: String) throws(MachineFileError) -> MachineDescription {
        var lines: [Line] = []
        // Split on every line break, "\r\n" included: Swift treats "\r\n" as one Character,
        // so splitting on "\n" alone would turn a CRLF file into a single line.
        let rawLines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0.isNewline })
        for (index, raw) in rawLines.enumerated() {
            let content = raw.firstIndex(of: "#").map { raw[..<$0] } ?? raw[...]
            let words = content.split(whereSeparator: { $0.isWhitespace })
            if !words.isEmpty { lines.append(Line(number: index + 1, words: words)) }
        }
        // Remember where every name is declared, so that a use before the declaration can say so.
        var later: [String: (line: Int, isIOMMU: Bool)] = [:]
        for line in lines where line.words.count >= 2 {
            let keyword = String(line.words[0])
            if keyword == "iommu" || Self.nodeKeywords[keyword] != nil {
                let name = String(line.words[1])
                if later[name] == nil { later[name] = (line.number, keyword == "iommu") }
            }
        }
        assembler.laterDeclarations = later

        for line in lines { try parseLine(line) }
        return try assembler.finish()
    }

    private func error(_ line: Int, _ message: String) -> MachineFileError {
        assembler.error(line, message)
    }

    private mutating func parseLine(_ line: Line) throws(MachineFileError) {
        let keyword = String(line.words[0])
        switch keyword {
        case "machine":
            guard line.words.count == 2 else {
                throw error(line.number, "write 'machine NAME' (one name, no spaces)")
            }
            if let previous = machineLine {
                throw error(line.number, "machine name already given on line \(previous)")
            }
            machineLine = line.number
            assembler.machineName = String(line.words[1])
        case "iommu":
            try parseIOMMU(line)
        case "reserve":
            try parseReserve(line)
        default:
            guard let kind = Self.nodeKeywords[keyword] else {
                throw error(line.number, "unknown keyword '\(keyword)' (known: "
                    + Self.keywords.joined(separator: ", ") + ")")
            }
            try parseNode(line, kind: kind)
        }
    }

    // MARK: Words

    /// The `key=value` words of a line, checked against the keys the keyword accepts.
    private struct Fields {
        var line: Int
        var what: String
        var values: [String: Substring] = [:]
    }

    private func fields(_ line: Line, from start: Int, allowed: [String],
                        what: String) throws(MachineFileError) -> Fields {
        var result = Fields(line: line.number, what: what)
        for word in line.words.dropFirst(start) {
            guard let equals = word.firstIndex(of: "=") else {
                throw error(line.number, "expected key=value, found '\(word)'")
            }
            let key = String(word[..<equals])
            let value = word[word.index(after: equals)...]
            guard allowed.contains(key) else {
                throw error(line.number, "unknown key '\(key)' for \(what) (known: "
                    + allowed.joined(separator: ", ") + ")")
            }
            guard result.values[key] == nil else {
                throw error(line.number, "key '\(key)' given twice")
            }
            guard !value.isEmpty else { throw error(line.number, "empty value for '\(key)='") }
            result.values[key] = value
        }
        return result
    }

    private func required(_ f: Fields, _ key: String, _ hint: String) throws(MachineFileError) -> Substring {
        guard let value = f.values[key] else {
            throw error(f.line, "\(f.what) needs \(key)=\(hint)")
        }
        return value
    }

    private func name(_ line: Line, what: String) throws(MachineFileError) -> String {
        guard line.words.count >= 2, !line.words[1].contains("=") else {
            throw error(line.number, "\(what) needs a name: '\(line.words[0]) NAME key=value …'")
        }
        return String(line.words[1])
    }

    private func integer(_ f: Fields, _ key: String) throws(MachineFileError) -> Int? {
        guard let text = f.values[key] else { return nil }
        guard let value = MachineFormatting.parseInteger(text), value <= UInt64(Int.max) else {
            let looksHex = text.contains { $0.isHexDigit && !$0.isNumber }
                && text.allSatisfy(\.isHexDigit)
            let hint = looksHex ? " (write hexadecimal with 0x, e.g. 0x\(text))" : ""
            throw error(f.line, "bad number '\(text)' for \(key)=\(hint)")
        }
        return Int(value)
    }

    private func boolean(_ f: Fields, _ key: String) throws(MachineFileError) -> Bool? {
        guard let text = f.values[key] else { return nil }
        switch text.lowercased() {
        case "yes", "true", "on": return true
        case "no", "false", "off": return false
        default: throw error(f.line, "bad value '\(text)' for \(key)= (use yes or no)")
        }
    }

    private func sizeList(_ f: Fields, _ key: String) throws(MachineFileError) -> [UInt64]? {
        guard let text = f.values[key] else { return nil }
        var sizes: [UInt64] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let size = MachineFormatting.parseSize(item) else {
                throw error(f.line, "bad size '\(item)' in \(key)= (e.g. 4K, 2M, 0x1000)")
            }
            sizes.append(size)
        }
        return sizes
    }

    private func range(_ text: Substring, line: Int, what: String) throws(MachineFileError) -> IOVARange {
        let example = "write FIRST-LAST or FIRST+SIZE, e.g. 0xfee00000-0xfeefffff"
        if let dash = text.firstIndex(of: "-") {
            guard let first = MachineFormatting.parseSize(text[..<dash]),
                  let last = MachineFormatting.parseSize(text[text.index(after: dash)...])
            else { throw error(line, "bad \(what) '\(text)' (\(example))") }
            guard first <= last else {
                throw error(line, "\(what) '\(text)' ends before it starts")
            }
            return IOVARange(first: first, last: last)
        }
        if let plus = text.firstIndex(of: "+") {
            guard let first = MachineFormatting.parseSize(text[..<plus]),
                  let size = MachineFormatting.parseSize(text[text.index(after: plus)...])
            else { throw error(line, "bad \(what) '\(text)' (\(example))") }
            do {
                return try IOVARange(start: first, length: size)
            } catch {
                throw self.error(line, "\(what) '\(text)' is "
                    + (size == 0 ? "empty" : "past the end of the 64-bit address space"))
            }
        }
        throw error(line, "bad \(what) '\(text)' (\(example))")
    }

    private func acs(_ f: Fields) throws(MachineFileError) -> ACSControls? {
        guard let text = f.values["acs"] else { return nil }
        switch text.lowercased() {
        case "yes", "all": return .isolating
        case "no", "none": return []
        default:
            var controls: ACSControls = []
            for item in text.lowercased().split(separator: ",", omittingEmptySubsequences: false) {
                guard let control = ACSControls.spellings.first(where: { $0.1 == item }) else {
                    throw error(f.line, "bad ACS control '\(item)' (use yes, no, or a list of "
                        + "sv, rr, cr, uf)")
                }
                controls.insert(control.0)
            }
            return controls
        }
    }

    // MARK: Declarations

    private mutating func parseIOMMU(_ line: Line) throws(MachineFileError) {
        let unitName = try name(line, what: "iommu")
        let f = try fields(line, from: 2, allowed: [
            "kind", "format", "width", "aperture", "pages", "coherent", "dirty", "nesting", "pasid",
        ], what: "iommu '\(unitName)'")

        let kindText = try required(f, "kind", IOMMUKind.allCases.map(\.rawValue).joined(separator: "|"))
        guard let kind = IOMMUKind(rawValue: String(kindText)) else {
            throw error(line.number, "unknown iommu kind '\(kindText)' (known: "
                + IOMMUKind.allCases.map(\.rawValue).joined(separator: ", ") + ")")
        }
        let formatText = try required(f, "format", MachineAssembler.formats(for: kind).map(\.rawValue)
            .joined(separator: "|"))
        guard let format = PageTableFormat(rawValue: String(formatText)) else {
            throw error(line.number, "unknown page-table format '\(formatText)' (known: "
                + PageTableFormat.allCases.map(\.rawValue).joined(separator: ", ") + ")")
        }

        let aperture: IOVARange
        switch (try integer(f, "width"), f.values["aperture"]) {
        case (let width?, nil):
            guard (12...64).contains(width) else {
                throw error(line.number, "width=\(width) out of range 12-64 (address bits)")
            }
            aperture = IOVARange(first: 0, last: width == 64 ? .max : (1 << UInt64(width)) - 1)
        case (nil, let text?):
            aperture = try range(text, line: line.number, what: "aperture")
        case (.some, .some):
            throw error(line.number, "give width= or aperture=, not both")
        case (nil, nil):
            throw error(line.number, "iommu '\(unitName)' needs width=BITS or aperture=FIRST-LAST")
        }

        guard let pageList = try sizeList(f, "pages") else {
            throw error(line.number, "iommu '\(unitName)' needs pages=SIZES (e.g. pages=4K,2M,1G)")
        }
        var pages: UInt64 = 0
        for size in pageList {
            guard size.isPowerOfTwo, size >= 1024 else {
                throw error(line.number, "page size \(MachineFormatting.size(size)) is not a power "
                    + "of two of at least 1K")
            }
            guard pages & size == 0 else {
                throw error(line.number, "page size \(MachineFormatting.size(size)) listed twice")
            }
            pages |= size
        }

        let pasid = try integer(f, "pasid") ?? 0
        let spec = IOMMUUnitSpec(
            name: unitName, kind: kind, format: format, pageSizes: pages, aperture: aperture,
            enforcesCacheCoherency: try boolean(f, "coherent") ?? false,
            dirtyTracking: try boolean(f, "dirty") ?? false,
            nesting: try boolean(f, "nesting") ?? false,
            pasidWidth: pasid, reservedRegions: [])
        try assembler.addIOMMU(spec, line: line.number)
    }

    private mutating func parseReserve(_ line: Line) throws(MachineFileError) {
        guard line.words.count == 4 else {
            throw error(line.number, "write 'reserve IOMMU KIND FIRST-LAST', e.g. "
                + "'reserve dmar0 msi 0xfee00000-0xfeefffff'")
        }
        let kindText = line.words[2]
        guard let kind = ReservedRegion.Kind(rawValue: String(kindText)) else {
            throw error(line.number, "unknown reserved-region kind '\(kindText)' (known: msi, "
                + "direct, reserved)")
        }
        let region = try range(line.words[3], line: line.number, what: "range")
        try assembler.addReservedRegion(ReservedRegion(range: region, kind: kind),
                                        to: String(line.words[1]), line: line.number)
    }

    private mutating func parseNode(_ line: Line, kind: PCINode.Kind) throws(MachineFileError) {
        let nodeName = try name(line, what: kind.rawValue)
        let what = "\(kind.rawValue) '\(nodeName)'"
        let placed = ["at", "dev", "fn", "iommu"]
        let allowed: [String]
        switch kind {
        case .hostBridge: allowed = ["segment", "bus", "iommu"]
        case .rootPort, .switchUpstreamPort, .switchDownstreamPort:
            allowed = placed + ["secondary", "acs"]
        case .pcieToPCIBridge, .pciBridge: allowed = placed + ["secondary"]
        case .endpoint:
            allowed = placed + ["id", "class", "bars", "model", "driver", "pasid", "pri", "acs"]
        }
        let f: Fields
        do {
            f = try fields(line, from: 2, allowed: allowed, what: what)
        } catch {
            if kind == .pcieToPCIBridge || kind == .pciBridge,
               line.words.dropFirst(2).contains(where: { $0.hasPrefix("acs=") }) {
                throw self.error(line.number, "acs= does not apply to a \(kind.displayName): its "
                    + "secondary side is conventional PCI, which has no ACS")
            }
            throw error
        }

        var request = NodeRequest(name: nodeName, kind: kind)
        request.iommu = f.values["iommu"].map(String.init)
        if kind == .hostBridge {
            request.segment = try integer(f, "segment") ?? 0
            request.rootBus = try integer(f, "bus") ?? 0
            try assembler.addNode(request, line: line.number)
            return
        }
        request.parent = String(try required(f, "at", "PARENT"))
        request.device = try integer(f, "dev") ?? 0
        request.function = try integer(f, "fn") ?? 0
        if kind.opensBus {
            request.secondaryBus = try integer(f, "secondary")
        }
        if kind == .rootPort || kind == .switchDownstreamPort, f.values["acs"] == nil {
            // A port's ACS decides the isolation of everything below it: make the file say it.
            throw error(line.number, "\(what) needs acs=yes|no|sv,rr,cr,uf (a port's ACS decides "
                + "whether the devices below it are isolated)")
        }
        request.acs = try acs(f) ?? []

        if kind == .endpoint {
            let idText = try required(f, "id", "VVVV:DDDD")
            let parts = idText.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, parts.allSatisfy({ (1...4).contains($0.count) }),
                  let vendor = MachineFormatting.parseHex(parts[0]),
                  let device = MachineFormatting.parseHex(parts[1])
            else {
                throw error(line.number, "bad id '\(idText)' (write vendor:device in hex, "
                    + "e.g. 144d:a808)")
            }
            // Four hex digits at most, so the narrowing cannot fail.
            var endpoint = EndpointRequest(vendorID: UInt16(truncatingIfNeeded: vendor),
                                           deviceID: UInt16(truncatingIfNeeded: device),
                                           classCode: 0xff0000)
            if let classText = f.values["class"] {
                let digits = classText.hasPrefix("0x") || classText.hasPrefix("0X")
                    ? classText.dropFirst(2) : classText
                guard digits.count <= 6, let code = MachineFormatting.parseHex(digits) else {
                    throw error(line.number, "bad class '\(classText)' (24-bit hex: base class, "
                        + "subclass, programming interface, e.g. 0x010802)")
                }
                endpoint.classCode = UInt32(truncatingIfNeeded: code)   // at most 6 hex digits
            }
            endpoint.barSizes = try sizeList(f, "bars") ?? []
            if let modelText = f.values["model"] {
                guard let model = DeviceModel(rawValue: String(modelText)) else {
                    throw error(line.number, "unknown model '\(modelText)' (known: "
                        + DeviceModel.allCases.map(\.rawValue).joined(separator: ", ") + ")")
                }
                endpoint.model = model
            }
            if let driver = f.values["driver"] {
                endpoint.driver = driver == "none" ? nil : String(driver)
            }
            endpoint.pasidWidth = try integer(f, "pasid") ?? 0
            endpoint.supportsPageFaults = try boolean(f, "pri") ?? false
            request.endpoint = endpoint
        }
        try assembler.addNode(request, line: line.number)
    }
}

/// Writes a MachineDescription back in the machine-file format.
struct MachineFileWriter {
    let machine: MachineDescription

    func render() -> String {
        var out = "# uiommufd machine file\n"
        let name = String(machine.name.map { $0.isWhitespace || $0 == "#" ? "-" : $0 })
        out += "machine \(name.isEmpty ? "machine" : name)\n\n"
        for unit in machine.iommus {
            out += iommuLine(unit) + "\n"
            for region in unit.reservedRegions {
                out += "reserve \(unit.name) \(region.kind.rawValue) "
                    + "\(MachineFormatting.hex(region.range.first))-\(MachineFormatting.hex(region.range.last))\n"
            }
        }
        for node in machine.topology {
            if node.kind == .hostBridge { out += "\n" }
            out += nodeLine(node) + "\n"
        }
        return out
    }

    private func yesNo(_ value: Bool) -> String { value ? "yes" : "no" }

    private func iommuLine(_ unit: IOMMUUnitSpec) -> String {
        var words = ["iommu", unit.name, "kind=\(unit.kind.rawValue)", "format=\(unit.format.rawValue)"]
        if let width = MachineFormatting.width(of: unit.aperture) {
            words.append("width=\(width)")
        } else {
            words.append("aperture=\(MachineFormatting.hex(unit.aperture.first))-"
                + MachineFormatting.hex(unit.aperture.last))
        }
        words.append("pages=" + MachineFormatting.pageSizes(unit.pageSizes).joined(separator: ","))
        words.append("coherent=\(yesNo(unit.enforcesCacheCoherency))")
        words.append("dirty=\(yesNo(unit.dirtyTracking))")
        words.append("nesting=\(yesNo(unit.nesting))")
        words.append("pasid=\(unit.pasidWidth)")
        return words.joined(separator: " ")
    }

    private func acsValue(_ acs: ACSControls) -> String {
        if acs.isIsolating { return "yes" }
        if acs.isEmpty { return "no" }
        return ACSControls.spellings.filter { acs.contains($0.0) }.map(\.1).joined(separator: ",")
    }

    private func nodeLine(_ node: PCINode) -> String {
        var words = [node.kind.rawValue, node.name]
        let parent = node.parent.map { machine.topology[$0] }
        if node.kind == .hostBridge {
            words.append("segment=\(node.segment)")
            words.append("bus=\(MachineFormatting.hex2(Int(node.secondaryBus ?? 0)))")
        } else if let parent, let address = node.address {
            words.append("at=\(parent.name)")
            words.append("dev=\(MachineFormatting.hex2(Int(address.device)))")
            words.append("fn=\(address.function)")
        }
        if node.kind != .hostBridge, node.kind.opensBus, let bus = node.secondaryBus {
            words.append("secondary=\(MachineFormatting.hex2(Int(bus)))")
        }
        switch node.kind {
        case .rootPort, .switchDownstreamPort, .switchUpstreamPort:
            words.append("acs=\(acsValue(node.acs))")
        case .endpoint where !node.acs.isEmpty:
            words.append("acs=\(acsValue(node.acs))")
        default: break
        }
        if let unit = node.iommu, unit != parent?.iommu {
            words.append("iommu=\(unit)")
        }
        if let index = node.deviceIndex, machine.devices.indices.contains(index) {
            let d = machine.devices[index]
            words.append("id=\(MachineFormatting.padded(d.vendorID, 4)):\(MachineFormatting.padded(d.deviceID, 4))")
            words.append("class=0x\(MachineFormatting.padded(d.classCode, 6))")
            if !d.barSizes.isEmpty {
                words.append("bars=" + d.barSizes.map(MachineFormatting.size).joined(separator: ","))
            }
            if d.model != .generic { words.append("model=\(d.model.rawValue)") }
            words.append("driver=\(d.driver ?? "none")")
            if d.pasidWidth != 0 { words.append("pasid=\(d.pasidWidth)") }
            if d.supportsPageFaults { words.append("pri=yes") }
        }
        return words.joined(separator: " ")
    }
}
