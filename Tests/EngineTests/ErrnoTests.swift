// One test per errno path of the object model and the IOAS/HWPT/DEVICE/ACCESS operations
// (reference/uapi-notes.md §2, checked against drivers/iommu/iommufd/*.c). Each failing call is
// also checked to leave nothing behind: no object, no area, no pin, no attachment.

import Testing
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

/// Records the calls of an access's unmap handler.
final class UnmapRecorder: @unchecked Sendable {
    private let lock = Lock()
    private var _calls: [(UInt64, UInt64)] = []
    var calls: [(UInt64, UInt64)] { lock.withLock { _calls } }
    var handler: @Sendable (UInt64, UInt64) -> Void {
        { [self] iova, length in lock.withLock { _calls.append((iova, length)) } }
    }
}

@Suite("errno paths: DESTROY and object IDs")
struct DestroyErrnoTests {
    @Test func destroyOfZeroUnknownAndDestroyedIDIsENOENT() throws {
        let h = try Harness.mock()
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(0) }
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(12345) }
        let ioas = try h.ctx.allocIOAS()
        try h.ctx.destroy(ioas)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(ioas) }
        #expect(h.ctx.objects().isEmpty)
    }

    @Test func destroyOfIOASHeldByHWPTIsEBUSY() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let hwpt = try h.ctx.allocHWPT(device: dev, ioas: ioas)
        #expect(h.holders(ioas) == 1)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(ioas) }
        #expect(h.count(.ioas) == 1 && h.count(.hwptPaging) == 1)
        // An explicitly allocated HWPT nobody uses can go; then the IOAS can.
        try h.ctx.destroy(hwpt)
        #expect(h.holders(ioas) == 0)
        try h.ctx.destroy(ioas)
        #expect(h.ctx.objects().map(\.kind) == [.device])
    }

    @Test func destroyOfAttachedAutoHWPTIsEBUSY() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let hwpt = try h.ctx.attach(device: dev, to: ioas)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(hwpt) }
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(ioas) }
        #expect(try h.ctx.attachedHWPT(device: dev) == hwpt)
        // The automatic HWPT goes away with its last device.
        try h.ctx.detach(device: dev)
        #expect(h.count(.hwptPaging) == 0)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(hwpt) }
        try h.ctx.destroy(ioas)
    }

    @Test func destroyOfAttachedExplicitHWPTIsEBUSY() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let hwpt = try h.ctx.allocHWPT(device: dev, ioas: ioas)
        #expect(try h.ctx.attach(device: dev, to: hwpt) == hwpt)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(hwpt) }
        try h.ctx.detach(device: dev)
        // Explicit HWPTs outlive their devices.
        #expect(h.count(.hwptPaging) == 1)
        try h.ctx.destroy(hwpt)
    }

    @Test func destroyOfBoundDeviceIsEBUSY() throws {
        let h = try Harness.mock()
        let dev = try h.bind("mdev0")
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(dev) }
        #expect(h.count(.device) == 1)
        try h.ctx.unbind(device: dev)
        #expect(h.ctx.objects().isEmpty)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.destroy(dev) }
    }

    @Test func destroyOfIOASWithAccessIsEBUSY() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: false)
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.destroy(ioas) }
        expectErrno(.EBUSY, "the creating driver holds the access") { () throws(IOMMUError) in try h.ctx.destroy(access) }
        try h.ctx.destroyAccess(access)
        try h.ctx.destroy(ioas)
        #expect(h.ctx.objects().isEmpty)
    }

    @Test func idsAreLowestFreeAndReused() throws {
        let h = try Harness.mock()
        let a = try h.ctx.allocIOAS(), b = try h.ctx.allocIOAS(), c = try h.ctx.allocIOAS()
        #expect([a, b, c] == [1, 2, 3])
        try h.ctx.destroy(b)
        #expect(try h.ctx.allocIOAS() == 2)
        try h.ctx.destroy(a)
        try h.ctx.destroy(c)
        // Any kind takes the lowest free ID.
        #expect(try h.bind("mdev0") == 1)
        #expect(try h.ctx.allocIOAS() == 3)
        #expect(try h.ctx.allocIOAS() == 4)
    }
}

@Suite("errno paths: IOAS_MAP / UNMAP / COPY / IOVA_RANGES / ALLOW / OPTION")
struct MapErrnoTests {
    @Test func mapArgumentErrors() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 4)
        expectErrno(.EINVAL, "no permission") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: Mock.apertureStart, permissions: [])
        }
        expectErrno(.EINVAL, "zero length") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 0, iova: Mock.apertureStart, permissions: rw)
        }
        expectErrno(.EINVAL, "zero length, automatic IOVA") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 0, permissions: rw)
        }
        expectErrno(.EOVERFLOW, "iova == U64_MAX") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: .max, permissions: rw)
        }
        expectErrno(.EOVERFLOW, "length == U64_MAX") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: .max, iova: Mock.apertureStart, permissions: rw)
        }
        expectErrno(.EOVERFLOW, "iova + length wraps") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: .max - pageSize + 1, permissions: rw)
        }
        expectErrno(.EOVERFLOW, "user_va + length wraps") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: .max - pageSize + 1, length: 2 * pageSize, iova: Mock.apertureStart, permissions: rw)
        }
        expectErrno(.EOVERFLOW, "automatic IOVA for a length >= U64_MAX/2") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 1 << 63, permissions: rw)
        }
        #expect(try h.ctx.areas(ioas: ioas).isEmpty)
        expectErrno(.ENOENT, "no such IOAS") { () throws(IOMMUError) in
            try h.ctx.map(ioas: 99, userVA: va, length: pageSize, iova: Mock.apertureStart, permissions: rw)
        }
    }

    @Test func fixedIOVAOverAnAreaIsEEXIST() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 8)
        let base = Mock.apertureStart
        try #require(try h.ctx.map(ioas: ioas, userVA: va, length: 4 * pageSize, iova: base, permissions: rw) == base)
        for (iova, length, what) in [(base, 4 * pageSize, "same range"),
                                     (base + pageSize, pageSize, "inside"),
                                     (base - pageSize, 2 * pageSize, "overlaps the start"),
                                     (base + 3 * pageSize, 2 * pageSize, "overlaps the end"),
                                     (base - pageSize, 6 * pageSize, "superset"),
                                     (base + 4 * pageSize - 1, 1, "last byte")] {
            expectErrno(.EEXIST, what) { () throws(IOMMUError) in
                try h.ctx.map(ioas: ioas, userVA: va, length: length, iova: iova, permissions: rw)
            }
        }
        // Adjacent on both sides is fine.
        #expect(try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: base - pageSize, permissions: .read) == base - pageSize)
        #expect(try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: base + 4 * pageSize, permissions: .read) == base + 4 * pageSize)
        #expect(try h.ctx.areas(ioas: ioas).count == 3)
    }

    @Test func fixedIOVAOverAReservedRangeIsEINVAL() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 4)
        try h.ctx.addReserved(ioas: ioas, IOVARange(first: 0x10_0000, last: 0x10_ffff))
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: 0x10_ffff & ~(pageSize - 1), permissions: rw)
        }
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: 0xf_f000, permissions: rw)
        }
        #expect(try h.ctx.areas(ioas: ioas).isEmpty)
        // Automatic placement avoids it: only [0xf8000, 0xfffff] and [0x110000, 0x117fff] are
        // allowed, and a 32 KiB map fits only in the second.
        try h.ctx.allowIOVAs(ioas: ioas, [IOVARange(first: 0xf_8000, last: 0xf_ffff), IOVARange(first: 0x11_0000, last: 0x11_ffff)])
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: 0xf_8000, permissions: rw)
        let va8 = h.buffer(pages: 8)
        #expect(try h.ctx.map(ioas: ioas, userVA: va8, length: 8 * pageSize, permissions: rw) == 0x11_0000)
    }

    /// iopt_alloc_iova walks the allowed ranges with interval_tree_for_each_span, which merges
    /// adjacent ranges into one span: an automatic IOVA may straddle two adjacent allowed ranges.
    @Test func automaticIOVASpansAdjacentAllowedRanges() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 48)
        var uptr = va
        while uptr & 0xffff != 0x8000 { uptr += pageSize }     // alignment min(64 KiB, 32 KiB)
        try h.ctx.allowIOVAs(ioas: ioas, [IOVARange(first: 0x1_8000, last: 0x1_ffff),
                                          IOVARange(first: 0x2_0000, last: 0x2_7fff)])
        // Neither range alone holds 64 KiB; together they do, at 0x18000.
        // Adjacent allowed ranges form one span for the allocator (the kernel's span
        // iterator), so a map that fits only across both lands at 0x18000.
        #expect(try h.ctx.map(ioas: ioas, userVA: uptr, length: 0x1_0000, permissions: rw) == 0x1_8000)
    }

    @Test func misalignedWithADomainIsEINVAL() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas)
        #expect(try h.ctx.iovaRanges(ioas: ioas).alignment == Mock.pageSize)
        let va = h.buffer(pages: 4)
        let base = Mock.apertureStart
        expectErrno(.EINVAL, "iova") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: Mock.pageSize, iova: base + 1024, permissions: rw)
        }
        expectErrno(.EINVAL, "length") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 1024, iova: base, permissions: rw)
        }
        expectErrno(.EINVAL, "user address") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va + 1024, length: Mock.pageSize, iova: base, permissions: rw)
        }
        expectErrno(.EINVAL, "length, automatic IOVA") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 3000, permissions: rw)
        }
        // 2 KiB granularity is fine for the mock, including a half-page user offset.
        #expect(try h.ctx.map(ioas: ioas, userVA: va + Mock.pageSize, length: Mock.pageSize, iova: base, permissions: rw) == base)
        #expect(h.pinned == 1)

        // A VT-d domain needs 4 KiB.
        let d = Harness.defaultMachine()
        let ioas2 = try d.ctx.allocIOAS()
        _ = try d.ctx.attach(device: try d.bind("nvme0"), to: ioas2)
        let va2 = d.buffer(pages: 4)
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            try d.ctx.map(ioas: ioas2, userVA: va2, length: pageSize, iova: 0x10_0800, permissions: rw)
        }
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            try d.ctx.map(ioas: ioas2, userVA: va2 + Mock.pageSize, length: pageSize, iova: 0x10_0000, permissions: rw)
        }
        #expect(try d.ctx.areas(ioas: ioas2).isEmpty)
        #expect(d.pinned == 0)
    }

    @Test func unmappedUserMemoryWithADomainIsEFAULTAndLeavesNothing() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let hwpt = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas)
        let va = h.buffer(pages: 8, fill: 0x5a)
        h.space.unmap(va: va + 3 * pageSize, length: pageSize)   // a hole half-way
        expectErrno(.EFAULT, "hole half-way") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 8 * pageSize, iova: Mock.apertureStart, permissions: rw)
        }
        expectErrno(.EFAULT, "hole at the first page") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va + 3 * pageSize, length: 2 * pageSize, permissions: rw)
        }
        #expect(try h.ctx.areas(ioas: ioas).isEmpty)
        #expect(h.pinned == 0 && h.ctx.pinnedPages == 0)
        #expect(try h.ctx.translate(hwpt: hwpt, iova: Mock.apertureStart) == nil)
        // The mapped part alone works.
        #expect(try h.ctx.map(ioas: ioas, userVA: va, length: 3 * pageSize, iova: Mock.apertureStart, permissions: rw) == Mock.apertureStart)
        #expect(h.pinned == 3)
        let t = try #require(try h.ctx.translate(hwpt: hwpt, iova: Mock.apertureStart + pageSize + 8))
        #expect(t.physical == h.physical(va + pageSize + 8))
        #expect(t.permissions == rw)
    }

    @Test func readOnlyUserMemoryMappedWriteableIsEFAULTWithADomain() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas)
        let va = h.buffer(pages: 2, writable: false)
        expectErrno(.EFAULT) { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: Mock.apertureStart, permissions: rw)
        }
        #expect(try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: Mock.apertureStart, permissions: .read) == Mock.apertureStart)
        #expect(h.pinned == 2)
    }

    @Test func unmappedUserMemoryIsLazyWithoutADomainAndTheAttachFailsCleanly() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let va = h.buffer(pages: 8)
        h.space.unmap(va: va + 5 * pageSize, length: pageSize)
        let iova = try h.ctx.map(ioas: ioas, userVA: va, length: 8 * pageSize, iova: Mock.apertureStart, permissions: rw)
        #expect(iova == Mock.apertureStart)
        #expect(h.pinned == 0)
        let before = try IOASSnapshot(h.ctx, ioas)
        let objectsBefore = h.ctx.objects()
        expectErrno(.EFAULT) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(try IOASSnapshot(h.ctx, ioas) == before)
        #expect(h.ctx.objects() == objectsBefore, "no HWPT left behind")
        #expect(try h.ctx.attachedHWPT(device: dev) == nil)
        #expect(h.pinned == 0 && h.ctx.pinnedPages == 0)
        // Without the bad area the same attach works.
        #expect(try h.ctx.unmap(ioas: ioas, iova: iova, length: 8 * pageSize) == 8 * pageSize)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 5 * pageSize, iova: Mock.apertureStart, permissions: rw)
        let hwpt = try h.ctx.attach(device: dev, to: ioas)
        #expect(try h.ctx.attachedHWPT(device: dev) == hwpt)
        #expect(h.pinned == 5)
    }

    @Test func forkGoneAttachAfterExitIsEFAULT() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let va = h.buffer(pages: 4)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 4 * pageSize, iova: Mock.apertureStart, permissions: rw)
        h.space.exit()
        expectErrno(.EFAULT) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(h.count(.hwptPaging) == 0)
        #expect(try h.ctx.attachedHWPT(device: dev) == nil)
        #expect(h.pinned == 0)
        // The area is still there (lazy) and can be unmapped.
        #expect(try h.ctx.unmap(ioas: ioas, iova: 0, length: .max) == 4 * pageSize)
    }

    @Test func forkPresentPinnedBeforeExitStillFillsMoreDomains() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let vdev = try h.bind("vdev0")
        let va = h.buffer(pages: 4, fill: 0xa5)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 4 * pageSize, iova: Mock.apertureStart, permissions: rw)
        let hwpt1 = try h.ctx.attach(device: dev, to: ioas)
        #expect(h.pinned == 4)
        let expected = try (0..<8).map { k in
            try #require(try h.ctx.translate(hwpt: hwpt1, iova: Mock.apertureStart + UInt64(k) * Mock.pageSize)).physical
        }
        h.space.exit()
        // A second domain of the same IOMMU (HWPT_ALLOC) and one of another IOMMU both fill
        // from the pinned pages.
        let hwpt2 = try h.ctx.allocHWPT(device: dev, ioas: ioas)
        let hwpt3 = try h.ctx.attach(device: vdev, to: ioas)
        #expect(Set([hwpt1, hwpt2, hwpt3]).count == 3)
        for hwpt in [hwpt2, hwpt3] {
            for k in 0..<8 {
                let t = try h.ctx.translate(hwpt: hwpt, iova: Mock.apertureStart + UInt64(k) * Mock.pageSize)
                #expect(t?.physical == expected[k], "HWPT \(hwpt) page \(k)")
            }
        }
        #expect(h.pinned == 4, "one pin per page, whatever the number of domains")
        // But new memory cannot be pinned any more.
        expectErrno(.EFAULT) { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: Mock.apertureStart + 0x10_0000, permissions: rw)
        }
        // A copy of pinned pages into an IOAS with a domain needs no new pin.
        let ioas2 = try h.ctx.allocIOAS()
        _ = try h.ctx.attach(device: try h.bind("mdev1"), to: ioas2)
        #expect(try h.ctx.copy(from: ioas, srcIOVA: Mock.apertureStart, length: 4 * pageSize, to: ioas2,
                                dstIOVA: Mock.apertureStart, permissions: rw) == Mock.apertureStart)
        #expect(h.pinned == 4)
    }

    @Test func partialUnmapIsENOENTAndEarlierAreasStayUnmapped() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 8)
        let base = Mock.apertureStart
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: base, permissions: rw)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: base + 2 * pageSize, permissions: rw)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: base + 8 * pageSize, permissions: rw)
        expectErrno(.ENOENT, "splits the first area") { () throws(IOMMUError) in
            try h.ctx.unmap(ioas: ioas, iova: base + pageSize, length: pageSize)
        }
        #expect(try h.ctx.areas(ioas: ioas).count == 3)
        // [base, base+3 pages) covers area 1 and half of area 2: area 1 goes, then ENOENT.
        expectErrno(.ENOENT, "splits the second area") { () throws(IOMMUError) in
            try h.ctx.unmap(ioas: ioas, iova: base, length: 3 * pageSize)
        }
        #expect(try h.ctx.areas(ioas: ioas).map(\.iova) == [base + 2 * pageSize, base + 8 * pageSize])
        expectErrno(.ENOENT, "nothing mapped there") { () throws(IOMMUError) in
            try h.ctx.unmap(ioas: ioas, iova: base + 0x10_0000, length: pageSize)
        }
        expectErrno(.EINVAL, "zero length") { () throws(IOMMUError) in try h.ctx.unmap(ioas: ioas, iova: base, length: 0) }
        expectErrno(.EOVERFLOW) { () throws(IOMMUError) in try h.ctx.unmap(ioas: ioas, iova: .max, length: 1) }
        expectErrno(.EOVERFLOW) { () throws(IOMMUError) in try h.ctx.unmap(ioas: ioas, iova: 1, length: .max) }
        expectErrno(.EOVERFLOW) { () throws(IOMMUError) in try h.ctx.unmap(ioas: ioas, iova: .max - 10, length: 20) }
        // A superset covering both remaining areas and the gap unmaps both.
        #expect(try h.ctx.unmap(ioas: ioas, iova: base, length: 16 * pageSize) == 4 * pageSize)
        // Unmap-all of nothing succeeds with 0 bytes.
        #expect(try h.ctx.unmap(ioas: ioas, iova: 0, length: .max) == 0)
    }

    @Test func copyErrors() throws {
        let h = try Harness.mock()
        let src = try h.ctx.allocIOAS(), dst = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 8)
        let ro = h.buffer(pages: 2, writable: false)
        let base = Mock.apertureStart
        _ = try h.ctx.map(ioas: src, userVA: va, length: 4 * pageSize, iova: base, permissions: rw)
        _ = try h.ctx.map(ioas: src, userVA: va + 4 * pageSize, length: 4 * pageSize, iova: base + 4 * pageSize, permissions: rw)
        _ = try h.ctx.map(ioas: src, userVA: ro, length: 2 * pageSize, iova: base + 16 * pageSize, permissions: .read)
        expectErrno(.ENOENT, "source not mapped") { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base + 8 * pageSize, length: pageSize, to: dst, dstIOVA: base, permissions: rw)
        }
        expectErrno(.ENOENT, "source has a gap") { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base, length: 18 * pageSize, to: dst, dstIOVA: base, permissions: rw)
        }
        expectErrno(.EINVAL, "zero length") { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base, length: 0, to: dst, dstIOVA: base, permissions: rw)
        }
        expectErrno(.EINVAL, "no permission") { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base, length: pageSize, to: dst, dstIOVA: base, permissions: [])
        }
        expectErrno(.EOVERFLOW) { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: .max, length: pageSize, to: dst, dstIOVA: base, permissions: rw)
        }
        expectErrno(.EPERM, "write over read-only pages") { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base + 16 * pageSize, length: 2 * pageSize, to: dst, dstIOVA: base, permissions: rw)
        }
        expectErrno(.ENOENT, "no such destination") { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base, length: pageSize, to: 77, dstIOVA: base, permissions: rw)
        }
        #expect(try h.ctx.areas(ioas: dst).isEmpty)
        // Two adjacent source areas copy as one range (into two areas), and a sub-range works.
        #expect(try h.ctx.copy(from: src, srcIOVA: base, length: 8 * pageSize, to: dst, dstIOVA: base, permissions: rw) == base)
        #expect(try h.ctx.areas(ioas: dst).map(\.iova) == [base, base + 4 * pageSize])
        expectErrno(.EEXIST) { () throws(IOMMUError) in
            try h.ctx.copy(from: src, srcIOVA: base + pageSize, length: pageSize, to: dst, dstIOVA: base, permissions: .read)
        }
        #expect(try h.ctx.copy(from: src, srcIOVA: base + pageSize, length: pageSize, to: dst,
                                dstIOVA: base + 0x10_0000, permissions: .read) == base + 0x10_0000)
    }

    @Test func iovaRangesAreSplitByReservedRanges() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        var r = try h.ctx.iovaRanges(ioas: ioas)
        #expect(r.ranges == [IOVARange.all] && r.alignment == 1)
        try h.ctx.addReserved(ioas: ioas, IOVARange(first: 0x1_0000, last: 0x1_ffff))
        r = try h.ctx.iovaRanges(ioas: ioas)
        #expect(r.ranges == [IOVARange(first: 0, last: 0xffff), IOVARange(first: 0x2_0000, last: .max)])
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas)
        r = try h.ctx.iovaRanges(ioas: ioas)
        #expect(r.ranges == [IOVARange(first: Mock.apertureStart, last: Mock.apertureLast)])
        #expect(r.alignment == Mock.pageSize)
        try h.ctx.addReserved(ioas: ioas, IOVARange(first: 0x110_0000, last: 0x11f_ffff))
        r = try h.ctx.iovaRanges(ioas: ioas)
        #expect(r.ranges == [IOVARange(first: Mock.apertureStart, last: 0x10f_ffff),
                             IOVARange(first: 0x120_0000, last: Mock.apertureLast)])

        // Default machine: one IOAS used by a dmar0 and a dmar1 device — the MSI window, the
        // RMRR of dmar1 and the 39-bit aperture of dmar1 all split it.
        let d = Harness.defaultMachine()
        let ioas2 = try d.ctx.allocIOAS()
        _ = try d.ctx.attach(device: try d.bind("nvme0"), to: ioas2)
        r = try d.ctx.iovaRanges(ioas: ioas2)
        #expect(r.ranges == [IOVARange(first: 0, last: 0xfedf_ffff), IOVARange(first: 0xfef0_0000, last: (1 << 48) - 1)])
        #expect(r.alignment == pageSize)
        _ = try d.ctx.attach(device: try d.bind("dma0"), to: ioas2)
        r = try d.ctx.iovaRanges(ioas: ioas2)
        #expect(r.ranges == [IOVARange(first: 0, last: 0xdfff_ffff), IOVARange(first: 0xe010_0000, last: 0xfedf_ffff),
                             IOVARange(first: 0xfef0_0000, last: (1 << 39) - 1)])
    }

    @Test func allowAndReserveMeetIsEADDRINUSEBothWays() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let allowed = IOVARange(first: 0x100_0000, last: 0x1ff_ffff)
        try h.ctx.allowIOVAs(ioas: ioas, [allowed])
        expectErrno(.EADDRINUSE, "reserve inside an allowed range") { () throws(IOMMUError) in
            try h.ctx.addReserved(ioas: ioas, IOVARange(first: 0x1ff_f000, last: 0x200_0fff))
        }
        try h.ctx.allowIOVAs(ioas: ioas, [])
        try h.ctx.addReserved(ioas: ioas, IOVARange(first: 0x1ff_f000, last: 0x200_0fff))
        expectErrno(.EADDRINUSE, "allow over a reserved range") { () throws(IOMMUError) in
            try h.ctx.allowIOVAs(ioas: ioas, [IOVARange(first: 0x300_0000, last: 0x3ff_ffff), allowed])
        }
        // The failed allow changed nothing: any IOVA still allowed.
        let va = h.buffer(pages: 1)
        #expect(try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: 0x500_0000, permissions: rw) == 0x500_0000)
        expectErrno(.EADDRINUSE, "reserve over an area") { () throws(IOMMUError) in
            try h.ctx.addReserved(ioas: ioas, IOVARange(first: 0x500_0fff, last: 0x500_1fff))
        }
        expectErrno(.EINVAL, "start == last") { () throws(IOMMUError) in
            try h.ctx.allowIOVAs(ioas: ioas, [IOVARange(first: 0x600_0000, last: 0x600_0000)])
        }
        expectErrno(.EINVAL, "overlapping ranges") { () throws(IOMMUError) in
            try h.ctx.allowIOVAs(ioas: ioas, [IOVARange(first: 0x600_0000, last: 0x6ff_ffff),
                                              IOVARange(first: 0x6ff_f000, last: 0x7ff_ffff)])
        }
        // An attach that would reserve inside an allowed range fails: the mock aperture starts
        // at 16 MiB, so allowing [1 MiB, 2 MiB) blocks it.
        try h.ctx.allowIOVAs(ioas: ioas, [IOVARange(first: 0x10_0000, last: 0x1f_ffff)])
        let dev = try h.bind("mdev0")
        expectErrno(.EADDRINUSE) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(h.count(.hwptPaging) == 0)
        #expect(try h.ctx.attachedHWPT(device: dev) == nil)
    }

    @Test func hugePagesOption() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        #expect(try h.ctx.hugePages(ioas: ioas))
        let va = h.buffer(pages: 4)
        // A 2 KiB-aligned area does not conform to PAGE_SIZE alignment.
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: Mock.pageSize, iova: Mock.apertureStart + Mock.pageSize, permissions: rw)
        expectErrno(.EADDRINUSE) { () throws(IOMMUError) in try h.ctx.setHugePages(ioas: ioas, false) }
        #expect(try h.ctx.hugePages(ioas: ioas), "unchanged after the failure")
        #expect(try h.ctx.iovaRanges(ioas: ioas).alignment == 1)
        _ = try h.ctx.unmap(ioas: ioas, iova: 0, length: .max)
        try h.ctx.setHugePages(ioas: ioas, false)
        #expect(try !h.ctx.hugePages(ioas: ioas))
        #expect(try h.ctx.iovaRanges(ioas: ioas).alignment == pageSize)
        try h.ctx.setHugePages(ioas: ioas, true)
        #expect(try h.ctx.iovaRanges(ioas: ioas).alignment == 1)

        // With a domain that has mappings it cannot be turned off.
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: Mock.apertureStart, permissions: rw)
        expectErrno(.EINVAL) { () throws(IOMMUError) in try h.ctx.setHugePages(ioas: ioas, false) }
        #expect(try h.ctx.hugePages(ioas: ioas))
        expectErrno(.ENOENT, "not an IOAS") { () throws(IOMMUError) in try h.ctx.setHugePages(ioas: 42, false) }
    }

    @Test func rlimitModeNeedsPrivilegeAndAnEmptyContext() throws {
        let h = try Harness.mock()
        #expect(h.ctx.rlimitMode == .user)
        expectErrno(.EPERM) { () throws(IOMMUError) in try h.ctx.setRlimitMode(.process, privileged: false) }
        let ioas = try h.ctx.allocIOAS()
        expectErrno(.EBUSY) { () throws(IOMMUError) in try h.ctx.setRlimitMode(.process, privileged: true) }
        expectErrno(.EPERM, "privilege is checked first") { () throws(IOMMUError) in
            try h.ctx.setRlimitMode(.process, privileged: false)
        }
        #expect(h.ctx.rlimitMode == .user)
        try h.ctx.destroy(ioas)
        try h.ctx.setRlimitMode(.process, privileged: true)
        #expect(h.ctx.rlimitMode == .process)
        // Process mode charges the process's locked_vm.
        let ioas2 = try h.ctx.allocIOAS()
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas2)
        let va = h.buffer(pages: 3)
        _ = try h.ctx.map(ioas: ioas2, userVA: va, length: 3 * pageSize, iova: Mock.apertureStart, permissions: rw)
        #expect(h.platform.ledger.lockedPages(pid: h.space.owner.pid) == 3)
        #expect(h.platform.ledger.lockedPages(uid: h.space.owner.uid) == 0)
        #expect(h.platform.ledger.pinnedPages(pid: h.space.owner.pid) == 3)
    }

    @Test func memlockLimitExceededIsENOMEMAndPinsNothing() throws {
        let limit = PinPolicy(memlockLimit: 4 * pageSize, privileged: false)
        let h = try Harness.mock(pinPolicy: limit)
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        let va = h.buffer(pages: 8)
        // Lazily mapped: no charge until something pins.
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 8 * pageSize, iova: Mock.apertureStart, permissions: rw)
        let before = try IOASSnapshot(h.ctx, ioas)
        expectErrno(.ENOMEM, "attach pins 8 pages > 4") { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(try IOASSnapshot(h.ctx, ioas) == before)
        #expect(h.count(.hwptPaging) == 0)
        #expect(h.pinned == 0 && h.platform.ledger.lockedPages(uid: h.space.owner.uid) == 0)
        _ = try h.ctx.unmap(ioas: ioas, iova: 0, length: .max)
        _ = try h.ctx.attach(device: dev, to: ioas)
        expectErrno(.ENOMEM, "map pins 8 pages > 4") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: 8 * pageSize, iova: Mock.apertureStart, permissions: rw)
        }
        #expect(try h.ctx.areas(ioas: ioas).isEmpty)
        #expect(h.pinned == 0)
        #expect(try h.ctx.map(ioas: ioas, userVA: va, length: 4 * pageSize, iova: Mock.apertureStart, permissions: rw) == Mock.apertureStart)
        #expect(h.pinned == 4)
        expectErrno(.ENOMEM, "one page over") { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va + 4 * pageSize, length: pageSize, iova: Mock.apertureStart + 0x10_0000, permissions: rw)
        }
        #expect(h.pinned == 4)
        #expect(try h.ctx.areas(ioas: ioas).count == 1)
        // The same user's other context shares the budget.
        let other = h.openContext(pinPolicy: limit)
        let ioas2 = try other.allocIOAS()
        _ = try other.attach(device: try h.bind("mdev1", to: other), to: ioas2)
        expectErrno(.ENOMEM) { () throws(IOMMUError) in
            try other.map(ioas: ioas2, userVA: va, length: pageSize, iova: Mock.apertureStart, permissions: rw)
        }
        // Privilege (CAP_IPC_LOCK) lifts the limit.
        h.ctx.pinPolicy = PinPolicy(memlockLimit: 4 * pageSize, privileged: true)
        _ = try h.ctx.map(ioas: ioas, userVA: va + 4 * pageSize, length: 4 * pageSize, iova: Mock.apertureStart + 0x10_0000, permissions: rw)
        #expect(h.pinned == 8)
    }
}

@Suite("errno paths: devices, groups, attach")
struct DeviceErrnoTests {
    @Test func bindingADeviceOfAGroupWithAHostDriverIsEPERM() throws {
        let h = Harness.defaultMachine()
        let serial = try h.device("serial0"), eth = try h.device("eth0"), usb = try h.device("usb0")
        // serial0 is bound to vfio-pci, but eth0 in its group is driven by e1000.
        expectErrno(.EPERM) { () throws(IOMMUError) in try h.ctx.bind(serial) }
        expectErrno(.ENODEV, "eth0 itself is not bound to vfio-pci") { () throws(IOMMUError) in try h.ctx.bind(eth) }
        expectErrno(.ENODEV, "usb0 has a host driver") { () throws(IOMMUError) in try h.ctx.bind(usb) }
        #expect(h.ctx.objects().isEmpty)
        // Unbinding the host driver makes the group viable.
        try h.platform.setDriver("vfio-pci", for: eth)
        _ = try h.ctx.bind(serial)
    }

    @Test func bindingIntoAGroupOwnedByAnotherContextIsEPERM() throws {
        let h = Harness.defaultMachine()
        let other = h.openContext()
        let nic0 = try h.device("nic0.0"), nic1 = try h.device("nic0.1")
        _ = try h.ctx.bind(nic0)
        expectErrno(.EPERM) { () throws(IOMMUError) in try other.bind(nic1) }
        expectErrno(.EBUSY, "already bound") { () throws(IOMMUError) in try other.bind(nic0) }
        #expect(other.objects().isEmpty)
        // The same context may bind the rest of its group.
        _ = try h.bind("nic0.1")
        // Closing the owner releases the group.
        h.ctx.close()
        _ = try other.bind(nic1)
        _ = try other.bind(nic0)
        #expect(other.objects().count == 2)
    }

    @Test func aDeviceOfAnIncompatibleIOMMUGetsItsOwnAutoDomain() throws {
        let h = Harness.defaultMachine()
        let ioas = try h.ctx.allocIOAS()
        let nvme = try h.bind("nvme0"), gpu = try h.bind("gpu0"), dma = try h.bind("dma0")
        let a = try h.ctx.attach(device: nvme, to: ioas)
        #expect(try h.ctx.attach(device: gpu, to: ioas) == a, "same IOMMU: the automatic domain is shared")
        let b = try h.ctx.attach(device: dma, to: ioas)
        #expect(a != b, "dmar1 cannot force snooping: it cannot use dmar0's coherent domain")
        #expect(h.count(.hwptPaging) == 2)
        let objects = h.ctx.objects()
        #expect(objects.first { $0.id == a }?.summary.contains("coherent") == true)
        #expect(objects.first { $0.id == b }?.summary.contains("coherent") == false)
        // Both domains mirror the IOAS.
        let va = h.buffer(pages: 2)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: 0x10_0000, permissions: rw)
        #expect(try h.ctx.translate(hwpt: a, iova: 0x10_0000)?.physical == h.physical(va))
        #expect(try h.ctx.translate(hwpt: b, iova: 0x10_1000)?.physical == h.physical(va + pageSize))
        #expect(h.pinned == 2)
    }

    /// hw_pagetable.c (iommufd_hwpt_paging_alloc): "a HWPT (non-CC) created for a device
    /// (non-CC) can be later reused by another device (either non-CC or CC)" — and dmar0 can walk
    /// a domain made for dmar1 (smaller aperture, same page sizes, no snoop forcing).
    @Test func aNonCoherentAutoDomainIsReusedByACoherentDevice() throws {
        let h = Harness.defaultMachine()
        let ioas = try h.ctx.allocIOAS()
        let dma = try h.bind("dma0"), nvme = try h.bind("nvme0")
        let a = try h.ctx.attach(device: dma, to: ioas)
        let b = try h.ctx.attach(device: nvme, to: ioas)
        // Coherency is fixed when a domain is allocated: current kernels reuse a non-coherent
        // HWPT for a coherent device (the pre-6.7 rule tried to upgrade it instead).
        #expect(a == b)
    }

    @Test func attachWithAMappedReservedRegionIsEADDRINUSEAndChangesNothing() throws {
        let h = Harness.defaultMachine()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("nvme0")
        let va = h.buffer(pages: 2)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: 0x10_0000, permissions: rw)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: msiWindow.first + 0x8_0000, permissions: rw)
        let before = try IOASSnapshot(h.ctx, ioas)
        let objects = h.ctx.objects()
        expectErrno(.EADDRINUSE) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(try IOASSnapshot(h.ctx, ioas) == before)
        #expect(h.ctx.objects() == objects)
        #expect(try h.ctx.attachedHWPT(device: dev) == nil)
        #expect(h.pinned == 0)
        // Unmapped, the attach works and the window becomes unmappable.
        _ = try h.ctx.unmap(ioas: ioas, iova: msiWindow.first + 0x8_0000, length: pageSize)
        _ = try h.ctx.attach(device: dev, to: ioas)
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: msiWindow.first, permissions: rw)
        }
        #expect(h.pinned == 1)
    }

    /// In the kernel the device's reserved regions are enforced before the new domain is
    /// filled (iommufd_hwpt_paging_alloc with immediate_attach calls
    /// iommufd_hw_pagetable_attach before iopt_table_add_domain), so an IOAS that has both an
    /// area in the MSI window and an unpinnable area fails with EADDRINUSE, not EFAULT.
    @Test func reservedRegionCollisionIsReportedBeforeUnpinnableMemory() throws {
        let h = Harness.defaultMachine()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("nvme0")
        let va = h.buffer(pages: 2)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: pageSize, iova: msiWindow.first, permissions: rw)
        h.space.unmap(va: va, length: 2 * pageSize)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: 2 * pageSize, iova: 0x10_0000, permissions: rw)
        // An automatic domain reserves the device's regions before it pins and fills
        // anything, so the collision (EADDRINUSE) wins over the unpinnable memory (EFAULT).
        expectErrno(.EADDRINUSE) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: ioas) }
        #expect(h.count(.hwptPaging) == 0)
    }

    @Test func attachErrorsOnBadIDs() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let dev = try h.bind("mdev0")
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: 99) }
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.attach(device: 99, to: ioas) }
        expectErrno(.EINVAL, "a DEVICE is not a page table") { () throws(IOMMUError) in try h.ctx.attach(device: dev, to: dev) }
        // iommufd_hwpt_alloc: a pt_id that names no object is EINVAL, not ENOENT.
        expectErrno(.EINVAL, "no object for HWPT_ALLOC's pt_id") { () throws(IOMMUError) in try h.ctx.allocHWPT(device: dev, ioas: 99) }
        let d = Harness.defaultMachine()
        let dma = try d.bind("dma0"), dIOAS = try d.ctx.allocIOAS()
        expectErrno(.EOPNOTSUPP, "dirty tracking on a unit without it") { () throws(IOMMUError) in
            try d.ctx.allocHWPT(device: dma, ioas: dIOAS, flags: .dirtyTracking)
        }
        #expect(d.count(.hwptPaging) == 0)
        #expect(h.count(.hwptPaging) == 0)
    }
}

@Suite("errno paths: ACCESS objects")
struct AccessErrnoTests {
    /// A mock host with one IOAS and `pages` pages of patterned memory mapped at the aperture start.
    static func setUp(pages: Int = 4, permissions: IOPermissions = rw) throws -> (Harness, UInt32, UInt64) {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: pages)
        let p = try #require(h.space.pointer(va: va))
        for i in 0..<(pages * Int(pageSize)) { p.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ 3), toByteOffset: i, as: UInt8.self) }
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: UInt64(pages) * pageSize, iova: Mock.apertureStart, permissions: permissions)
        return (h, ioas, va)
    }

    @Test func pinPagesThenUnmapNotifiesAndDropsThePins() throws {
        let (h, ioas, va) = try Self.setUp()
        let recorder = UnmapRecorder()
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true, unmapHandler: recorder.handler)
        let pin = try h.ctx.accessPinPages(access, iova: Mock.apertureStart + pageSize, length: 2 * pageSize, writable: true)
        #expect(pin.runs.reduce(0) { $0 + $1.length } == 2 * pageSize)
        #expect(pin.runs.first?.physical == h.physical(va + pageSize))
        #expect(h.pinned == 2 && h.ctx.pinnedPages == 2)
        #expect(try h.ctx.accessPinCount(access) == 1)
        #expect(try h.ctx.unmap(ioas: ioas, iova: Mock.apertureStart, length: 4 * pageSize) == 4 * pageSize)
        #expect(recorder.calls.count == 1)
        #expect(recorder.calls.first.map { $0.0 == Mock.apertureStart && $0.1 == 4 * pageSize } == true)
        #expect(try h.ctx.accessPinCount(access) == 0)
        #expect(h.pinned == 0)
        expectErrno(.ENOENT, "the pin went with the unmap") { () throws(IOMMUError) in try h.ctx.accessUnpin(access, pinID: pin.pinID) }
        // Unmapping an area the access did not pin does not bother it.
        let va2 = h.buffer(pages: 1)
        _ = try h.ctx.map(ioas: ioas, userVA: va2, length: pageSize, iova: Mock.apertureStart, permissions: rw)
        _ = try h.ctx.unmap(ioas: ioas, iova: 0, length: .max)
        #expect(recorder.calls.count == 1)
    }

    @Test func pinAndUnpinShareWithDomains() throws {
        let (h, ioas, _) = try Self.setUp()
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        let pin = try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: 2 * pageSize, writable: false)
        _ = try h.ctx.attach(device: try h.bind("mdev0"), to: ioas)
        #expect(h.pinned == 4, "a page pinned by an access and a domain is pinned once")
        try h.ctx.accessUnpin(access, pinID: pin.pinID)
        #expect(h.pinned == 4)
        expectErrno(.ENOENT) { () throws(IOMMUError) in try h.ctx.accessUnpin(access, pinID: pin.pinID) }
    }

    @Test func accessNeedingPinPagesRaisesTheAlignment() throws {
        let h = try Harness.mock()
        let ioas = try h.ctx.allocIOAS()
        let va = h.buffer(pages: 2)
        _ = try h.ctx.map(ioas: ioas, userVA: va, length: Mock.pageSize, iova: Mock.apertureStart, permissions: rw)
        expectErrno(.EADDRINUSE, "a 2 KiB area does not conform to PAGE_SIZE") { () throws(IOMMUError) in
            try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        }
        #expect(h.count(.access) == 0)
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: false)
        #expect(try h.ctx.iovaRanges(ioas: ioas).alignment == 1)
        expectErrno(.EOPNOTSUPP, "no pin support") { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: Mock.pageSize, writable: false)
        }
    }

    @Test func readWriteThroughUnpinnedAndPinnedAreas() throws {
        let (h, ioas, va) = try Self.setUp()
        let user = try #require(h.space.pointer(va: va))
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        let n = 300
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
        defer { buffer.deallocate() }
        // Unpinned (lazy) area: read straddling a page boundary.
        let offset = Int(pageSize) - 100
        try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + UInt64(offset), buffer: buffer, count: n, write: false)
        #expect((0..<n).allSatisfy { buffer.load(fromByteOffset: $0, as: UInt8.self) == user.load(fromByteOffset: offset + $0, as: UInt8.self) })
        buffer.initializeMemory(as: UInt8.self, repeating: 0xee, count: n)
        try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + UInt64(offset), buffer: buffer, count: n, write: true)
        #expect((0..<n).allSatisfy { user.load(fromByteOffset: offset + $0, as: UInt8.self) == 0xee })
        #expect(h.pinned == 0, "rw does not pin")
        // Pinned area: the same through the pinned pages.
        _ = try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: 4 * pageSize, writable: true)
        buffer.initializeMemory(as: UInt8.self, repeating: 0x42, count: n)
        try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 3 * pageSize, buffer: buffer, count: n, write: true)
        #expect((0..<n).allSatisfy { user.load(fromByteOffset: 3 * Int(pageSize) + $0, as: UInt8.self) == 0x42 })
        user.storeBytes(of: 0x99, toByteOffset: 3 * Int(pageSize) + 7, as: UInt8.self)
        try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 3 * pageSize, buffer: buffer, count: n, write: false)
        #expect(buffer.load(fromByteOffset: 7, as: UInt8.self) == 0x99)
        // Across two adjacent areas.
        let va2 = h.buffer(pages: 1, fill: 0x17)
        _ = try h.ctx.map(ioas: ioas, userVA: va2, length: pageSize, iova: Mock.apertureStart + 4 * pageSize, permissions: rw)
        try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 4 * pageSize - 10, buffer: buffer, count: 20, write: false)
        #expect(buffer.load(fromByteOffset: 15, as: UInt8.self) == 0x17)
    }

    @Test func writingAReadOnlyAreaIsEPERM() throws {
        let (h, ioas, va) = try Self.setUp(permissions: .read)
        let user = try #require(h.space.pointer(va: va))
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        var byte: UInt8 = 0xcc
        expectErrno(.EPERM) { () throws(IOMMUError) in
            try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 5, buffer: &byte, count: 1, write: true)
        }
        #expect(user.load(fromByteOffset: 5, as: UInt8.self) != 0xcc)
        expectErrno(.EPERM) { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: pageSize, writable: true)
        }
        #expect(h.pinned == 0)
        try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 5, buffer: &byte, count: 1, write: false)
        #expect(byte == user.load(fromByteOffset: 5, as: UInt8.self))
        _ = try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: pageSize, writable: false)
        #expect(h.pinned == 1)
    }

    /// device.c check_area_prot(): without IOMMUFD_ACCESS_RW_WRITE the area needs IOMMU_READ,
    /// for iommufd_access_rw and iommufd_access_pin_pages alike.
    @Test func readingAWriteOnlyAreaIsEPERM() throws {
        let (h, ioas, _) = try Self.setUp(permissions: .write)
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        var byte: UInt8 = 0
        // check_area_prot: reads (and read-only pins) need READABLE, writes WRITEABLE.
        expectErrno(.EPERM, "access_rw read") { () throws(IOMMUError) in
            try h.ctx.accessReadWrite(access, iova: Mock.apertureStart, buffer: &byte, count: 1, write: false)
        }
        expectErrno(.EPERM, "pin for reading") { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: Mock.apertureStart, length: pageSize, writable: false)
        }
        #expect(h.pinned == 0)
    }

    /// device.c iopt_area_contig_is_aligned(): iommufd_access_pin_pages needs the start byte to
    /// be page aligned (EINVAL otherwise).
    @Test func pinningFromTheMiddleOfAPageIsEINVAL() throws {
        let (h, ioas, _) = try Self.setUp()
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        // iopt_area_contig_is_aligned: a pin starts on a page boundary (and every area but
        // the last ends on one).
        expectErrno(.EINVAL) { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: Mock.apertureStart + 100, length: pageSize, writable: false)
        }
        #expect(h.pinned == 0)
        #expect(try h.ctx.accessPinCount(access) == 0)
    }

    @Test func holesAreENOENT() throws {
        let (h, ioas, _) = try Self.setUp()
        let va2 = h.buffer(pages: 1)
        _ = try h.ctx.map(ioas: ioas, userVA: va2, length: pageSize, iova: Mock.apertureStart + 5 * pageSize, permissions: rw)
        let access = try h.ctx.createAccess(ioas: ioas, needsPinPages: true)
        var bytes = [UInt8](repeating: 0, count: 64)
        expectErrno(.ENOENT, "nothing mapped") { () throws(IOMMUError) in
            try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 0x10_0000, buffer: &bytes, count: 8, write: false)
        }
        expectErrno(.ENOENT, "range runs into the gap") { () throws(IOMMUError) in
            try h.ctx.accessReadWrite(access, iova: Mock.apertureStart + 4 * pageSize - 8, buffer: &bytes, count: 16, write: false)
        }
        expectErrno(.ENOENT, "pin across the gap") { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: Mock.apertureStart + 3 * pageSize, length: 3 * pageSize, writable: false)
        }
        expectErrno(.ENOENT, "pin of nothing") { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: Mock.apertureStart - pageSize, length: pageSize, writable: false)
        }
        #expect(h.pinned == 0, "a failed pin leaves no partial pin")
        expectErrno(.EINVAL, "zero length") { () throws(IOMMUError) in
            try h.ctx.accessReadWrite(access, iova: Mock.apertureStart, buffer: &bytes, count: 0, write: false)
        }
        expectErrno(.EOVERFLOW) { () throws(IOMMUError) in
            try h.ctx.accessPinPages(access, iova: .max - 10, length: pageSize, writable: false)
        }
    }
}
