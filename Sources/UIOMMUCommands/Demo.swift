// The main job: a narrated run through the seeds' story on the embedded default machine.
import ArgumentParser
//
// Each step uses only the public Swift API (IOMMUContext and its handles) plus the platform's
// DMA entry points, checks what it claims, and records facts for the closing summary.

public import IOMMUFD

/// What the demo established, for the summary and for tests.
public struct DemoSummary: Sendable {
    public var steps = 0
    public var bytesCopiedByDMA = 0
    public var faultsStopped = 0
    public var refusals: [String] = []
    public var domainsCreated = 0
    public var pinnedAtEnd: UInt64 = 0
    public var objectsAtEnd = 0
}

/// Runs the demo, writing narration through `say`.
public struct Demo {
    public let machine: MachineDescription
    let say: (String) -> Void

    public init(machine: MachineDescription, say: @escaping (String) -> Void) {
        self.machine = machine
        self.say = say
    }

    private func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
    private func size(_ v: UInt64) -> String {
        if v >= 1 << 30 && v % (1 << 30) == 0 { return "\(v >> 30) GiB" }
        if v >= 1 << 20 && v % (1 << 20) == 0 { return "\(v >> 20) MiB" }
        if v >= 1 << 10 && v % (1 << 10) == 0 { return "\(v >> 10) KiB" }
        return "\(v) B"
    }

    private func step(_ summary: inout DemoSummary, _ title: String) {
        summary.steps += 1
        say("")
        say("[\(summary.steps)] \(title)")
    }

    private func ranges(_ r: IOVARanges) -> String {
        r.ranges.map { "[\(hex($0.first)), \(hex($0.last))]" }.joined(separator: " ") + "  (alignment \(r.alignment))"
    }

    /// A page-aligned, zeroed buffer of this process's memory; freed by the caller.
    private func buffer(_ length: Int) -> UnsafeMutableRawBufferPointer {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 1 << 21)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        return b
    }

    public func run() throws -> DemoSummary {
        var summary = DemoSummary()
        let memory = LocalProcessMemory()
        let platform = Platform(machine: machine, physicalMemory: memory)
        let devices = platform.devices

        say("uiommufd demo — the iommufd story on the built-in machine \"\(machine.name)\"")
        say("(this process's own memory is mapped; devices DMA into it through simulated IOMMUs)")

        // 1. The machine.
        step(&summary, "The machine: IOMMU units and groups")
        for unit in platform.units {
            let s = unit.spec
            say("  \(s.name): \(s.kind.rawValue), \(s.format.rawValue) page tables, aperture \(s.aperture), "
                + (s.enforcesCacheCoherency ? "enforces cache coherency" : "cannot force snooping")
                + (s.dirtyTracking ? ", dirty tracking" : ""))
            for r in s.reservedRegions { say("      reserves \(r.range) (\(r.kind.rawValue))") }
        }
        var groupIDs: [Int] = []
        for d in devices where !groupIDs.contains(d.group) { groupIDs.append(d.group) }
        for g in groupIDs {
            let members = platform.groupMembers(g)
            let names = members.map { "\($0.spec.name)" + ($0.driver.map { "[\($0)]" } ?? "") }
            say("  group \(g): \(names.joined(separator: ", "))" + (platform.isViable(group: g) ? "" : "  — not viable for user space"))
        }

        guard let dmaDevice = devices.first(where: { $0.spec.model == .dmaEngine && $0.driver == "vfio-pci" }),
              let coherent = devices.first(where: { $0.unit.spec.enforcesCacheCoherency && $0.unit.spec.dirtyTracking
                                                   && $0.driver == "vfio-pci" && platform.groupMembers($0.group).count == 1 })
        else {
            throw CLIError("the machine needs a DMA engine device and a device behind a coherent, dirty-tracking IOMMU")
        }

        let context = IOMMUContext.emulated(platform: platform, memory: memory)
        defer { context.close() }

        // 2. Groups are all or nothing.
        step(&summary, "Binding a device claims its whole group (seed 000)")
        if let shared = groupIDs.first(where: { platform.groupMembers($0).count > 1 && platform.isViable(group: $0) }) {
            let members = platform.groupMembers(shared)
            let first = try context.bind(.name(members[0].spec.name))
            say("  bound \(members[0].spec.name) → DEVICE \(first.id); group \(shared) (\(members.map(\.spec.name).joined(separator: ", "))) is now DMA-blocked and owned by this iommufd")
            let other = IOMMUContext.emulated(platform: platform, memory: memory)
            do {
                _ = try other.bind(.name(members[1].spec.name))
                throw CLIError("a second iommufd could bind into an owned group")
            } catch let error as IOMMUError {
                say("  a second iommufd binding \(members[1].spec.name) is refused: \(error.errno) (\(error.reason))")
                summary.refusals.append("group owned by another iommufd: \(error.errno)")
            }
            other.close()
            try first.unbind()
            say("  unbound \(members[0].spec.name); the group returns to the host")
        }
        if let blocked = groupIDs.first(where: { g in
               !platform.isViable(group: g) && platform.groupMembers(g).contains { $0.driver == "vfio-pci" } }),
           let candidate = platform.groupMembers(blocked).first(where: { $0.driver == "vfio-pci" }) {
            do {
                _ = try context.bind(.name(candidate.spec.name))
                throw CLIError("a device of a non-viable group could be bound")
            } catch let error as IOMMUError {
                say("  binding \(candidate.spec.name) fails: \(error.errno) — \(error.reason)")
                summary.refusals.append("non-viable group: \(error.errno)")
            }
        }

        // 3. Map memory: nothing is pinned until a page table needs it.
        step(&summary, "An IOAS and two buffers of this process, mapped lazily")
        let ioas = try context.makeIOAS()
        say("  IOAS \(ioas.id): usable IOVA \(ranges(try ioas.iovaRanges()))")
        let length = 64 * 1024
        let source = buffer(length), target = buffer(length)
        defer { source.deallocate(); target.deallocate() }
        for i in 0..<length { source[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
        let srcIOVA = try ioas.map(UnsafeRawBufferPointer(source), permissions: [.read])
        let dstIOVA = try ioas.map(UnsafeRawBufferPointer(target), permissions: [.read, .write])
        say("  mapped \(size(UInt64(length))) read-only at IOVA \(hex(srcIOVA)) and \(size(UInt64(length))) read-write at \(hex(dstIOVA))")
        say("  pages pinned so far: \(context.engine!.pinnedPages) (no device, no page table, nothing to pin)")

        // 4. A coherent device attaches first: its domain enforces snooping.
        step(&summary, "Attach \(coherent.spec.name) (behind \(coherent.unit.spec.name)): an automatic domain")
        let nvme = try context.bind(.name(coherent.spec.name))
        let nvmeHWPT = try nvme.attach(to: ioas)
        summary.domainsCreated += 1
        say("  DEVICE \(nvme.id) attached through HWPT \(nvmeHWPT.id), which enforces cache coherency; pinned pages now \(context.engine!.pinnedPages)")
        say("  usable IOVA narrowed by the IOMMU's reserved regions: \(ranges(try ioas.iovaRanges()))")

        // 5. Cache coherency (seed 004): a snoop-forcing domain cannot serve a non-snooping IOMMU.
        step(&summary, "Attach \(dmaDevice.spec.name) (behind \(dmaDevice.unit.spec.name)) to the same IOAS (seed 004)")
        let dma = try context.bind(.name(dmaDevice.spec.name))
        let dmaHWPT = try dma.attach(to: ioas)
        if dmaHWPT.id != nvmeHWPT.id { summary.domainsCreated += 1 }
        say("  \(dmaDevice.spec.name) got HWPT \(dmaHWPT.id)" + (dmaHWPT.id == nvmeHWPT.id ? " (shared)"
            : ": \(dmaDevice.unit.spec.name) cannot force snooping, so it cannot use HWPT \(nvmeHWPT.id)'s coherent domain; a second, non-coherent domain mirrors the same IOAS"))
        for object in context.engine!.objects() where object.kind == .hwptPaging { say("    \(object)") }
        say("  usable IOVA is now the intersection of both IOMMUs' limits: \(ranges(try ioas.iovaRanges()))")

        // 6. DMA through the page tables.
        step(&summary, "The DMA engine copies \(size(UInt64(length))) from \(hex(srcIOVA)) to \(hex(dstIOVA)) through the IOMMU")
        try platform.dmaCopy(device: dmaDevice, from: srcIOVA, to: dstIOVA, length: length)
        let equal = (0..<length).allSatisfy { source[$0] == target[$0] }
        guard equal else { throw CLIError("DMA copy produced different data") }
        summary.bytesCopiedByDMA += length
        if let t = try context.engine!.translate(hwpt: dmaHWPT.id, iova: dstIOVA) {
            say("  translation of \(hex(dstIOVA)): physical \(hex(t.physical)), \(t.permissions), \(size(t.leafSize)) leaf")
        }
        say("  the target buffer now holds the source's bytes: verified all \(length)")

        // 7. Isolation: what is not mapped, or not writable, is stopped.
        step(&summary, "DMA outside the mappings is stopped")
        var one: UInt8 = 0xAA
        do {
            try platform.dmaWrite(device: dmaDevice, iova: srcIOVA, from: &one, count: 1)
            throw CLIError("a write to a read-only mapping went through")
        } catch let fault as DMAFault {
            say("  write to the read-only source: \(fault)")
            summary.faultsStopped += 1
        }
        do {
            try platform.dmaWrite(device: dmaDevice, iova: 0x7000_0000, from: &one, count: 1)
            throw CLIError("a write to an unmapped IOVA went through")
        } catch let fault as DMAFault {
            say("  write to unmapped IOVA 0x70000000: \(fault)")
            summary.faultsStopped += 1
        }

        // 8. Reserved regions and hot-plug (seed 003).
        step(&summary, "A reserved region collides with a mapping (seed 003)")
        let msi = coherent.unit.spec.reservedRegions.first { $0.kind == .msi }
        if let msi {
            let other = try context.makeIOAS()
            let probe = buffer(4096)
            defer { probe.deallocate() }
            try other.map(UnsafeRawBufferPointer(probe), at: msi.range.first, permissions: [.read, .write])
            let before = try other.iovaRanges()
            do {
                try nvme.attach(to: other)
                throw CLIError("an attach over a mapped MSI window succeeded")
            } catch let error as IOMMUError {
                say("  IOAS \(other.id) maps \(hex(msi.range.first)); moving \(coherent.spec.name) there fails: \(error.errno) (\(error.reason))")
                summary.refusals.append("reserved region already mapped: \(error.errno)")
            }
            let after = try other.iovaRanges()
            say("  nothing changed: \(coherent.spec.name) still uses HWPT \(try context.engine!.attachedHWPT(device: nvme.id) ?? 0), IOAS \(other.id) ranges \(before == after ? "unchanged" : "CHANGED")")
            try other.unmapAll()
            try other.destroy()
        }

        // 9. Dirty tracking for live migration.
        step(&summary, "Dirty tracking on an explicitly allocated HWPT")
        let tracked = try nvme.allocHWPT(on: ioas, flags: [.dirtyTracking])
        try nvme.attach(to: tracked)
        try tracked.setDirtyTracking(true)
        let bytes = buffer(4096 * 3)
        defer { bytes.deallocate() }
        bytes.initializeMemory(as: UInt8.self, repeating: 0x5A)
        try platform.dmaWrite(device: coherent, iova: dstIOVA + 8192, from: bytes.baseAddress!, count: bytes.count)
        let bitmap = try tracked.dirtyBitmap(iova: dstIOVA, length: UInt64(length))
        let dirtyPages = bitmap.reduce(0) { $0 + $1.nonzeroBitCount }
        say("  \(coherent.spec.name) wrote 12 KiB at \(hex(dstIOVA + 8192)); dirty bitmap of the target: \(dirtyPages) page(s) — word 0 = \(hex(bitmap.first ?? 0))")
        let again = try tracked.dirtyBitmap(iova: dstIOVA, length: UInt64(length))
        say("  read again after clearing: \(again.reduce(0) { $0 + $1.nonzeroBitCount }) dirty page(s)")

        // 10. Teardown.
        step(&summary, "Unmap, detach, unbind, close")
        let unmapped = try ioas.unmapAll()
        say("  unmapped \(size(unmapped)); pinned pages now \(context.engine!.pinnedPages)")
        try nvme.detach()
        try tracked.destroy()
        try dma.detach()
        try nvme.unbind()
        try dma.unbind()
        try ioas.destroy()
        summary.objectsAtEnd = context.engine!.objects().count
        context.close()
        summary.pinnedAtEnd = platform.ledger.totalPinnedPages
        say("  objects left: \(summary.objectsAtEnd); pages pinned host-wide: \(summary.pinnedAtEnd)")

        say("")
        say("Summary: \(summary.steps) steps; \(summary.domainsCreated) automatic domain(s); "
            + "\(summary.bytesCopiedByDMA) bytes copied by DMA; \(summary.faultsStopped) DMA faults stopped; "
            + "\(summary.refusals.count) refusals (\(summary.refusals.joined(separator: "; "))); "
            + "\(summary.objectsAtEnd) objects and \(summary.pinnedAtEnd) pinned pages left.")
        return summary
    }
}

/// `uiommufd demo`.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Narrated run through the iommufd story on the built-in machine.")

    @Option(name: .long, help: "A machine description file (default: the built-in machine).")
    var machine: String?

    func run() throws {
        let description = try loadMachine(machine)
        do {
            _ = try Demo(machine: description) { print($0) }.run()
        } catch let error as IOMMUError {
            throw CLIError("demo failed: \(error)")
        } catch let fault as DMAFault {
            throw CLIError("demo failed: unexpected DMA fault \(fault)")
        }
    }
}
