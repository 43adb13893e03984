// The object table: one ID space for every kind, lowest free ID first (XA_FLAGS_ALLOC1), IDs
// reused after destroy (including objects destroyed automatically or never finished), holders
// that make DESTROY fail with EBUSY, and close() tearing the graph down leaves first.

import Testing
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

@Suite("object table")
struct ObjectTableTests {
    @Test func idsAreLowestFreeAcrossKinds() throws {
        let h = try Harness.mock()
        var ids: [UInt32] = []
        for _ in 0..<5 { ids.append(try h.ctx.allocIOAS()) }
        #expect(ids == [1, 2, 3, 4, 5])
        try h.ctx.destroy(4)
        try h.ctx.destroy(2)
        #expect(try h.ctx.allocIOAS() == 2)
        #expect(try h.bind("mdev0") == 4, "a DEVICE takes the next lowest free ID")
        #expect(try h.ctx.createAccess(ioas: 1, needsPinPages: false) == 6)
        try h.ctx.destroy(5)
        try h.ctx.destroyAccess(6)
        #expect(try h.ctx.allocIOAS() == 5)
        #expect(try h.ctx.allocIOAS() == 6)
        #expect(try h.ctx.allocIOAS() == 7)
        #expect(h.ctx.objects().map(\.id) == [1, 2, 3, 4, 5, 6, 7])
        #expect(h.ctx.objects().map(\.kind) == [.ioas, .ioas, .ioas, .device, .ioas, .ioas, .ioas])
    }

    @Test func freedIDsAreReusedInAscendingOrder() throws {
        let h = try Harness.mock()
        for _ in 0..<10 { _ = try h.ctx.allocIOAS() }
        for id: UInt32 in [9, 3, 7, 1, 10] { try h.ctx.destroy(id) }
        var got: [UInt32] = []
        for _ in 0..<6 { got.append(try h.ctx.allocIOAS()) }
        #expect(got == [1, 3, 7, 9, 10, 11])
    }

    @Test func automaticHWPTsAndFailedCreationsGiveTheirIDBack() throws {
        let h = Harness.defaultMachine()
        let ioas = try h.ctx.allocIOAS()          // 1
        let dev = try h.bind("nvme0")              // 2
        let hwpt = try h.ctx.attach(device: dev, to: ioas)
        #expect(hwpt == 3)
        try h.ctx.detach(device: dev)              // the automatic HWPT goes with its last device
        #expect(h.ctx.objects().map(\.id) == [1, 2])
        #expect(try h.ctx.allocIOAS() == 3)
        try h.ctx.destroy(3)
        // A failed attach (MSI window mapped) must not keep the HWPT's ID.
        let va = h.buffer(pages: 1)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: msiWindow.first, permissions: rw)
        expectErrno(.EADDRINUSE) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(try h.ctx.allocIOAS() == 3)
    }

    @Test func holdersCountHWPTsAccessesAndDevices() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let d0 = try h.bind("mdev0"), d1 = try h.bind("mdev1"), d2 = try h.bind("mdev2")
        #expect(h.holders(ioas) == 0)
        let auto = try h.ctx.attach(device: d0, to: ioas)
        #expect(try h.ctx.attach(device: d1, to: ioas) == auto, "same IOMMU: one automatic domain")
        let explicit = try h.ctx.allocHWPT(device: d2, ioas: ioas)
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: false)
        #expect(h.holders(ioas) == 3, "two HWPTs and one access hold the IOAS")
        #expect(h.holders(auto) == 2, "two attached devices hold the automatic HWPT")
        #expect(h.holders(explicit) == 0)
        #expect(h.holders(d0) == 1, "the binding driver holds the DEVICE")
        #expect(h.holders(access) == 1, "the creating driver holds the ACCESS")
        _ = try h.ctx.attach(device: d2, to: explicit)
        #expect(h.holders(explicit) == 1)
        // Replace d1 onto the explicit HWPT: holders move.
        #expect(try h.ctx.attach(device: d1, to: explicit) == explicit)
        #expect(h.holders(auto) == 1 && h.holders(explicit) == 2)
        try h.ctx.detach(device: d0)
        #expect(h.ctx.objects().first { $0.id == auto } == nil, "the last device took the automatic HWPT with it")
        #expect(h.holders(ioas) == 2)
        try h.ctx.destroyAccess(access)
        #expect(h.holders(ioas) == 1)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(explicit) }
        try h.ctx.unbind(device: d1)
        try h.ctx.unbind(device: d2)
        #expect(h.holders(explicit) == 0)
        try h.ctx.destroy(explicit)
        try h.ctx.destroy(ioas)
        #expect(h.ctx.objects().map(\.kind) == [.device])
    }

    @Test func unbindOfAnAttachedDeviceDetachesIt() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let va = h.buffer(pages: 2)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: Mock.apertureStart, permissions: rw)
        _ = try h.ctx.attach(device: dev, to: ioas)
        #expect(h.pinned == 2)
        try h.ctx.unbind(device: dev)
        #expect(h.ctx.objects().map(\.kind) == [.ioas])
        #expect(h.pinned == 0)
        #expect(try h.ctx.iovaRanges(ioas: ioas).ranges == [IOVARange.all])
        // The group went back to the host: another context can take it.
        let other = h.openContext()
        _ = try other.bind(try h.device("mdev0"))
    }

    @Test func closeTearsDownLeavesFirstAndReleasesEverything() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS(), ioas2 = try h.ctx.allocIOAS()
        let d0 = try h.bind("mdev0"), d1 = try h.bind("mdev1"), v0 = try h.bind("vdev0")
        let va = h.buffer(pages: 16)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 8 * pageSize, iova: Mock.apertureStart, permissions: rw)
        _ = try h.ctx.map(ioas: ioas, userVA: va + 8 * pageSize, length: 8 * pageSize, iova: Mock.apertureStart + 0x10_0000,
                          permissions: .read)
        let explicit = try h.ctx.allocHWPT(device: d0, ioas: ioas, flags: .dirtyTracking)
        _ = try h.ctx.attach(device: d0, to: explicit)
        _ = try h.ctx.attach(device: v0, to: ioas)
        _ = try h.ctx.copy(from: ioas, srcIOVA: Mock.apertureStart, length: 8 * pageSize, to: ioas2,
                           dstIOVA: Mock.apertureStart, permissions: rw)
        _ = try h.ctx.attach(device: d1, to: ioas2)
        let recorder = UnmapRecorder()
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true, unmapHandler: recorder.handler)
        _ = try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: 4 * pageSize, writable: true)
        #expect(h.pinned == 16)
        #expect(h.ctx.objects().count == 9)   // 2 IOAS, 3 DEVICE, 3 HWPT, 1 ACCESS

        h.ctx.close()
        #expect(h.ctx.objects().isEmpty)
        #expect(h.pinned == 0)
        #expect(h.platform.ledger.pinnedPages(pid: h.space.owner.pid) == 0)
        #expect(h.platform.ledger.lockedPages(uid: h.space.owner.uid) == 0)
        // The access went before its IOAS's areas did: it was never told to unmap.
        #expect(recorder.calls.isEmpty)
        // Every device went back: a new context can bind them all.
        let next = h.openContext()
        for name in ["mdev0", "mdev1", "vdev0"] {
            let dev = try h.device(name)
            #expect(throws: Never.self, "\(name) still claimed") { _ = try next.bind(dev) }
        }
        // A closed context refuses everything, and closing again is harmless.
        expectErrno(.EBADF) { () throws(IOMMUError) in try h.ctx.allocIOAS() }
        expectErrno(.EBADF) { () throws(IOMMUError) in try h.ctx.destroy(ioas) }
        h.ctx.close()
        #expect(h.ctx.objects().isEmpty)
    }

    @Test func closeOfAContextDoesNotTouchAnotherContext() throws {
        let h = try Harness.mock()
        let other = h.openContext()
        let va = h.buffer(pages: 4)
        let ioasA = try h.ctx.allocIOAS(), ioasB = try other.allocIOAS()
        #expect(ioasA == 1 && ioasB == 1, "each context has its own ID space")
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioasA)
        _ = try other.attach(device: try h.bind("mdev1", to: other), to: ioasB)
        _ = try h.ctx.map(ioas: ioasA, userVA: va, length: 4 * pageSize, iova: Mock.apertureStart, permissions: rw)
        _ = try other.map(ioas: ioasB, userVA: va, length: 2 * pageSize, iova: Mock.apertureStart, permissions: rw)
        #expect(h.pinned == 6, "pins are per mapping, host-wide")
        h.ctx.close()
        #expect(h.pinned == 2)
        #expect(other.objects().count == 3)
        #expect(try other.areas(ioas: ioasB).count == 1)
        other.close()
        #expect(h.pinned == 0)
    }
}
