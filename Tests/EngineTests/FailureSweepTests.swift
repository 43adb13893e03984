// The fail_nth sweep (tools/testing/selftests/iommu/iommufd_fail_nth.c, without debugfs): a
// scenario is run with the n-th failure point failing, for n = 1, 2, 3 … until a run completes
// without consuming the injection. Every failing run must fail cleanly: exactly one call throws
// (ENOMEM), that call changes nothing observable, and closing the context leaves no object and
// no pinned page.

import Testing
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

/// The observable state of a context, compared before and after a failing call.
struct ContextSnapshot: Equatable {
    var objects: [ObjectInfo]
    var areas: [UInt32: [IOVARange]]
    var ranges: [UInt32: [IOVARange]]
    var pinned: UInt64

    init(_ h: Harness) {
        objects = h.ctx.objects()
        areas = [:]
        ranges = [:]
        for o in objects where o.kind == .ioas {
            areas[o.id] = (try? h.ctx.areas(ioas: o.id))?.map { IOVARange(first: $0.iova, last: $0.last) }
            ranges[o.id] = (try? h.ctx.iovaRanges(ioas: o.id))?.ranges
        }
        pinned = h.platform.ledger.totalPinnedPages
    }
}

/// One run of a scenario, recording which call failed.
final class SweepRun {
    let h: Harness
    var failedCalls: [(name: String, error: IOMMUError)] = []
    var completed = false
    var unchangedByFailure = true

    init(failures: FailureInjector) throws {
        h = Harness(machine: try TestMachines.engineTest(), failures: failures)
    }

    /// Runs one engine call; if it fails, checks that it changed nothing.
    func call<T>(_ name: String, _ body: () throws(IOMMUError) -> T) throws(IOMMUError) -> T {
        let before = ContextSnapshot(h)
        do {
            return try body()
        } catch {
            failedCalls.append((name, error))
            if ContextSnapshot(h) != before { unchangedByFailure = false }
            throw error
        }
    }
}

enum SweepScenario: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// Maps first (lazy), then a device, a dirty-tracking HWPT, a copy, an access pin, unmaps.
    case mapThenAttach
    /// A domain first, so every map pins and fills at once; two IOMMUs, two IOAS.
    case attachThenMap

    var testDescription: String { rawValue }

    func run(_ r: SweepRun) throws(IOMMUError) {
        let ctx = r.h.ctx
        let space = r.h.space
        // User memory is process state, not engine state: made before anything can fail.
        let b0 = space.map(length: 16 * pageSize), b1 = space.map(length: 8 * pageSize)
        let b2 = space.map(length: 8 * pageSize)
        let mdev0 = r.h.platform.device(named: "mdev0")!, mdev1 = r.h.platform.device(named: "mdev1")!
        let vdev0 = r.h.platform.device(named: "vdev0")!
        let base = Mock.apertureStart

        switch self {
        case .mapThenAttach:
            let ioas = try r.call("IOAS_ALLOC") { () throws(IOMMUError) in try ctx.allocIOAS() }
            let ioas2 = try r.call("IOAS_ALLOC 2") { () throws(IOMMUError) in try ctx.allocIOAS() }
            // Keep automatic IOVAs inside the mock aperture, as the selftest does.
            try r.call("ALLOW_IOVAS") { () throws(IOMMUError) in
                try ctx.allowIOVAs(ioas: ioas, [IOVARange(first: Mock.apertureStart, last: Mock.apertureLast)])
            }
            _ = try r.call("MAP b0") { () throws(IOMMUError) in
                try ctx.map(ioas: ioas, userVA: b0, length: 16 * pageSize, iova: base, permissions: rw)
            }
            let autoIOVA = try r.call("MAP b1 auto") { () throws(IOMMUError) in
                try ctx.map(ioas: ioas, userVA: b1, length: 8 * pageSize, permissions: .read)
            }
            _ = try r.call("MAP b2") { () throws(IOMMUError) in
                try ctx.map(ioas: ioas, userVA: b2, length: 8 * pageSize, iova: base + 0x10_0000, permissions: rw)
            }
            let dev = try r.call("BIND") { () throws(IOMMUError) in try ctx.bind(mdev0) }
            let hwpt = try r.call("ATTACH") { () throws(IOMMUError) in try ctx.attach(device: dev, to: ioas) }
            let dirty = try r.call("HWPT_ALLOC dirty") { () throws(IOMMUError) in
                try ctx.allocHWPT(device: dev, ioas: ioas, flags: .dirtyTracking)
            }
            try r.call("SET_DIRTY_TRACKING") { () throws(IOMMUError) in try ctx.setDirtyTracking(hwpt: dirty, enabled: true) }
            _ = try r.call("COPY") { () throws(IOMMUError) in
                try ctx.copy(from: ioas, srcIOVA: base, length: 16 * pageSize, to: ioas2, dstIOVA: base, permissions: rw)
            }
            let access = try r.call("ACCESS create") { () throws(IOMMUError) in
                try ctx.createAccess(ioas: ioas, needsPinPages: true)
            }
            _ = try r.call("ACCESS pin") { () throws(IOMMUError) in
                try ctx.accessPinPages(access, iova: autoIOVA, length: 2 * pageSize, writable: false)
            }
            var byte: UInt8 = 0
            try r.call("ACCESS rw") { () throws(IOMMUError) in
                try ctx.accessReadWrite(access, iova: base + 0x10_0000, buffer: &byte, count: 1, write: true)
            }
            _ = try r.call("UNMAP b1") { () throws(IOMMUError) in try ctx.unmap(ioas: ioas, iova: autoIOVA, length: 8 * pageSize) }
            try r.call("DETACH") { () throws(IOMMUError) in try ctx.detach(device: dev) }
            _ = hwpt
            _ = try r.call("UNMAP all") { () throws(IOMMUError) in try ctx.unmap(ioas: ioas2, iova: 0, length: .max) }

        case .attachThenMap:
            let ioas = try r.call("IOAS_ALLOC") { () throws(IOMMUError) in try ctx.allocIOAS() }
            let dev = try r.call("BIND mdev0") { () throws(IOMMUError) in try ctx.bind(mdev0) }
            let vdev = try r.call("BIND vdev0") { () throws(IOMMUError) in try ctx.bind(vdev0) }
            _ = try r.call("ATTACH mdev0") { () throws(IOMMUError) in try ctx.attach(device: dev, to: ioas) }
            _ = try r.call("ATTACH vdev0") { () throws(IOMMUError) in try ctx.attach(device: vdev, to: ioas) }
            _ = try r.call("MAP b0") { () throws(IOMMUError) in
                try ctx.map(ioas: ioas, userVA: b0, length: 16 * pageSize, iova: base, permissions: rw)
            }
            let auto = try r.call("MAP b1 auto") { () throws(IOMMUError) in
                try ctx.map(ioas: ioas, userVA: b1, length: 8 * pageSize, permissions: rw)
            }
            let ioas2 = try r.call("IOAS_ALLOC 2") { () throws(IOMMUError) in try ctx.allocIOAS() }
            let dev2 = try r.call("BIND mdev1") { () throws(IOMMUError) in try ctx.bind(mdev1) }
            _ = try r.call("ATTACH mdev1") { () throws(IOMMUError) in try ctx.attach(device: dev2, to: ioas2) }
            _ = try r.call("COPY") { () throws(IOMMUError) in
                try ctx.copy(from: ioas, srcIOVA: auto, length: 8 * pageSize, to: ioas2, dstIOVA: nil, permissions: .read)
            }
            _ = try r.call("MAP b2") { () throws(IOMMUError) in
                try ctx.map(ioas: ioas2, userVA: b2, length: 8 * pageSize, iova: base + 0x20_0000, permissions: rw)
            }
            let dirty = try r.call("HWPT_ALLOC dirty") { () throws(IOMMUError) in
                try ctx.allocHWPT(device: dev2, ioas: ioas2, flags: .dirtyTracking)
            }
            _ = try r.call("REPLACE to dirty HWPT") { () throws(IOMMUError) in try ctx.attach(device: dev2, to: dirty) }
            let access = try r.call("ACCESS create") { () throws(IOMMUError) in
                try ctx.createAccess(ioas: ioas2, needsPinPages: true)
            }
            _ = try r.call("ACCESS pin") { () throws(IOMMUError) in
                try ctx.accessPinPages(access, iova: base + 0x20_0000, length: 4 * pageSize, writable: true)
            }
            _ = try r.call("UNMAP b2") { () throws(IOMMUError) in
                try ctx.unmap(ioas: ioas2, iova: base + 0x20_0000, length: 8 * pageSize)
            }
            try r.call("UNBIND vdev0") { () throws(IOMMUError) in try ctx.unbind(device: vdev) }
        }
        r.completed = true
    }
}

@Suite("fail_nth sweep")
struct FailureSweepTests {
    @Test("every failure point fails cleanly", arguments: SweepScenario.allCases)
    func sweep(_ scenario: SweepScenario) throws {
        var points = 0
        var sites: [String: Int] = [:]
        var n = 1
        while n <= 2000 {
            let failures = FailureInjector()
            let r = try SweepRun(failures: failures)
            failures.failNth(n)
            var thrown: IOMMUError?
            do { try scenario.run(r) } catch { thrown = error }
            let fired = failures.didFire
            failures.disarm()
            let label = "\(scenario) fail_nth=\(n)"
            if !fired {
                #expect(thrown == nil, "\(label): the run failed without an injected failure: \(String(describing: thrown))")
                #expect(r.completed, "\(label)")
                r.h.ctx.close()
                #expect(r.h.platform.ledger.totalPinnedPages == 0, "\(label): pins after close")
                #expect(r.h.ctx.objects().isEmpty, "\(label)")
                break
            }
            points += 1
            sites[failures.firedSite, default: 0] += 1
            // Exactly one call failed, with the injected ENOMEM, and it changed nothing.
            #expect(r.failedCalls.count == 1, "\(label): calls that threw: \(r.failedCalls.map(\.name))")
            #expect(thrown != nil, "\(label): the injection at \(failures.firedSite) fired but no call failed")
            if let thrown {
                #expect(thrown.errno == .ENOMEM, "\(label): \(r.failedCalls.first?.name ?? "?") threw \(thrown) (injected at \(failures.firedSite))")
            }
            #expect(r.unchangedByFailure, "\(label): \(r.failedCalls.first?.name ?? "?") failed at \(failures.firedSite) but changed state")
            // Teardown leaves nothing, and the devices are free for the next user.
            r.h.ctx.close()
            #expect(r.h.platform.ledger.totalPinnedPages == 0, "\(label): \(r.h.platform.ledger.totalPinnedPages) pages still pinned after close")
            #expect(r.h.ctx.objects().isEmpty, "\(label): objects after close")
            let next = r.h.openContext()
            #expect(throws: Never.self, "\(label): mdev0 still claimed after close") {
                _ = try next.bind(r.h.platform.device(named: "mdev0")!)
            }
            next.close()
            n += 1
        }
        print("SWEEP \(scenario): \(points) points \(sites)")
        #expect(n <= 2000, "the sweep never reached a run without an injection")
        #expect(points >= 10, "only \(points) failure points in \(scenario): \(sites)")
        // The sweep reached the engine's main resource points.
        for site in ["object.alloc", "pages.pin", "pages.account", "area.alloc", "domain.alloc"] {
            #expect(sites[site] != nil, "\(scenario): no failure injected at \(site): \(sites)")
        }
    }
}
