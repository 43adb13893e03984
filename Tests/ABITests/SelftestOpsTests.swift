// IOMMU_TEST_CMD through IOMMUFDFile.ioctl, as the kernel selftest issues it: the mock domain
// ops on the engine's mock IOMMU, the per-page pin counts, the access objects behind their
// descriptors, dirty injection, and the answers of the ops whose feature is not modelled.

import Testing
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import UIOMMUBase

@Suite("Selftest ops (IOMMU_TEST_CMD)")
struct SelftestOpsTests {
    typealias R = IOMMURequest
    typealias T = ABI.TestCmd
    typealias C = SelftestConstants

    static func op(_ op: SelftestOp, _ id: UInt32 = 0) -> Cmd {
        Cmd(T.size).set32(T.op, op.rawValue).set32(T.id, id)
    }

    /// MOCK_DOMAIN on `pt`: (stdev, hwpt, idev).
    static func mockDomain(_ h: ABIHarness, _ pt: UInt32, flags: UInt32? = nil) -> (UInt32, UInt32, UInt32) {
        var cmd = flags.map { op(.mockDomainFlags, pt).set32(T.MockDomainFlags.devFlags, $0) } ?? op(.mockDomain, pt)
        let rc = h.call(R.testCmd, &cmd)
        #expect(rc == 0, "MOCK_DOMAIN: \(name(rc))")
        return (cmd.u32(T.MockDomain.outStdevID), cmd.u32(T.MockDomain.outHWPTID), cmd.u32(T.MockDomain.outIdevID))
    }

    static func destroy(_ h: ABIHarness, _ id: UInt32) -> Int64 {
        h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, id))
    }

    static func checkRefs(_ h: ABIHarness, _ va: UInt64, _ length: UInt64, _ refs: UInt32) -> Int64 {
        h.call(R.testCmd, op(.mdCheckRefs).set64(T.CheckRefs.uptr, va).set64(T.CheckRefs.length, length)
            .set32(T.CheckRefs.refs, refs))
    }

    static func checkMap(_ h: ABIHarness, _ hwpt: UInt32, _ iova: UInt64, _ length: UInt64, _ va: UInt64) -> Int64 {
        h.call(R.testCmd, op(.mdCheckMap, hwpt).set64(T.CheckMap.iova, iova).set64(T.CheckMap.length, length)
            .set64(T.CheckMap.uptr, va))
    }

    static func unmap(_ h: ABIHarness, _ ioas: UInt32, _ iova: UInt64, _ length: UInt64) -> Int64 {
        h.call(R.ioasUnmap, Cmd(ABI.IOASUnmap.size).set32(ABI.IOASUnmap.ioasID, ioas)
            .set64(ABI.IOASUnmap.iova, iova).set64(ABI.IOASUnmap.length, length))
    }

    static func createAccess(_ h: ABIHarness, _ ioas: UInt32, pin: Bool) -> Int32 {
        var cmd = op(.createAccess, ioas).set32(T.CreateAccess.flags, pin ? C.accessCreateNeedsPinPages : 0)
        let rc = h.call(R.testCmd, &cmd)
        #expect(rc == 0, "CREATE_ACCESS: \(name(rc))")
        return Int32(bitPattern: cmd.u32(T.CreateAccess.outAccessFD))
    }

    // MARK: Mock devices

    @Test func mockDomainBindsAttachesAndUnbinds() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let (stdev, hwpt, idev) = Self.mockDomain(h, ioas)
        #expect(Set([ioas, stdev, hwpt, idev]).count == 4)
        #expect(h.file.context.objectKind(stdev) == .selftest)
        #expect(h.file.context.objectKind(idev) == .device)
        #expect(h.file.context.objectKind(hwpt) == .hwptPaging)
        // The test driver holds the binding, the device holds the HWPT, the HWPT its IOAS.
        #expect(Self.destroy(h, idev) == err(.EBUSY))
        #expect(Self.destroy(h, hwpt) == err(.EBUSY))
        #expect(Self.destroy(h, ioas) == err(.EBUSY))
        // The mock domain is the mock IOMMU's: 2 KiB alignment, the mock aperture.
        let ranges = try? h.file.context.iovaRanges(ioas: ioas)
        #expect(ranges?.alignment == 2048)
        #expect(ranges?.ranges == [IOVARange(first: C.apertureStart, last: C.apertureLast)])
        // A second device reuses the automatic domain; one straight onto the HWPT works too.
        let (stdev2, hwpt2, _) = Self.mockDomain(h, ioas)
        #expect(hwpt2 == hwpt)
        let (stdev3, hwpt3, _) = Self.mockDomain(h, hwpt)
        #expect(hwpt3 == hwpt)
        // Destroying the SELFTEST objects unbinds; the last one frees the automatic HWPT.
        #expect(Self.destroy(h, stdev) == 0)
        #expect(h.file.context.objectKind(idev) == nil)
        #expect(Self.destroy(h, stdev2) == 0)
        #expect(Self.destroy(h, stdev3) == 0)
        #expect(h.file.context.objectKind(hwpt) == nil)
        #expect(Self.destroy(h, ioas) == 0)
        #expect(h.file.context.objects().isEmpty)
    }

    @Test func mockDomainErrors() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        #expect(h.call(R.testCmd, Self.op(.mockDomain, 0)) == err(.ENOENT))
        #expect(h.call(R.testCmd, Self.op(.mockDomain, 99)) == err(.ENOENT))
        #expect(h.call(R.testCmd, Self.op(.mockDomainFlags, ioas).set32(T.MockDomainFlags.devFlags, 8)) == err(.EINVAL))
        // A failed MOCK_DOMAIN leaves nothing behind (not even the SELFTEST object).
        #expect(h.file.context.objects().map(\.id) == [ioas])
        let (_, _, idev) = Self.mockDomain(h, ioas)
        #expect(h.call(R.testCmd, Self.op(.mockDomain, idev)) == err(.EINVAL))   // a DEVICE is no pt
        #expect(h.file.context.objects().count == 4)
    }

    @Test func mockDeviceFlags() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let info = { (idev: UInt32) -> Cmd in
            var cmd = Cmd(ABI.HWInfo.size).set32(ABI.HWInfo.devID, idev)
            #expect(h.call(R.getHWInfo, &cmd) == 0)
            return cmd
        }
        let (_, _, plain) = Self.mockDomain(h, ioas)
        #expect(info(plain).u8(ABI.HWInfo.outMaxPASIDLog2) == 0)
        #expect(info(plain).u64(ABI.HWInfo.outCapabilities) & 1 == 1)
        #expect(info(plain).u32(ABI.HWInfo.outDataType) == IOMMUConstants.hwInfoTypeSelftest)
        let (_, _, pasid) = Self.mockDomain(h, ioas, flags: C.devicePASID)
        #expect(info(pasid).u8(ABI.HWInfo.outMaxPASIDLog2) == 20)
        let (_, _, noDirty) = Self.mockDomain(h, ioas, flags: C.deviceNoDirty)
        #expect(info(noDirty).u64(ABI.HWInfo.outCapabilities) & 1 == 0)
        // enforce_dirty: no dirty-tracking HWPT for it, and it cannot join one.
        let alloc = Cmd(ABI.HWPTAlloc.size).set32(ABI.HWPTAlloc.ptID, ioas).set32(ABI.HWPTAlloc.flags, 2)
        #expect(h.call(R.hwptAlloc, alloc.set32(ABI.HWPTAlloc.devID, noDirty)) == err(.EOPNOTSUPP))
        var dirtyHWPT = alloc.set32(ABI.HWPTAlloc.devID, plain)
        #expect(h.call(R.hwptAlloc, &dirtyHWPT) == 0)
        let dirty = dirtyHWPT.u32(ABI.HWPTAlloc.outHWPTID)
        #expect(h.call(R.testCmd, Self.op(.mockDomainFlags, dirty).set32(T.MockDomainFlags.devFlags, C.deviceNoDirty)) == err(.EINVAL))
        // HUGE_IOVA: the device's domains may use 1 MiB leaves; a plain device's may not.
        let hugeIOAS = h.allocIOAS()
        let (_, hugeHWPT, _) = Self.mockDomain(h, hugeIOAS, flags: C.deviceHugeIOVA)
        let hugeInfo = (try? h.file.context.hwpts(ioas: hugeIOAS)) ?? []
        #expect(hugeInfo.map(\.id) == [hugeHWPT])
        #expect(hugeInfo.first.map { $0.pageSizes & (1 << 20) != 0 } == true)
        #expect(((try? h.file.context.hwpts(ioas: ioas)) ?? []).allSatisfy { $0.pageSizes & (1 << 20) == 0 })
    }

    @Test func mockDomainReplace() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS(), other = h.allocIOAS()
        let (stdev, hwpt, idev) = Self.mockDomain(h, ioas)
        var cmd = Self.op(.mockDomainReplace, stdev).set32(T.MockDomainReplace.ptID, other)
        #expect(h.call(R.testCmd, &cmd) == 0)
        let newHWPT = cmd.u32(T.MockDomainReplace.ptID)
        #expect(newHWPT != hwpt && newHWPT != 0)
        #expect((try? h.file.context.attachedHWPT(device: idev)) == newHWPT)
        // The old automatic HWPT went with its last device.
        #expect(h.call(R.testCmd, Self.op(.mockDomainReplace, stdev).set32(T.MockDomainReplace.ptID, hwpt)) == err(.ENOENT))
        // Only SELFTEST objects can be replaced.
        #expect(h.call(R.testCmd, Self.op(.mockDomainReplace, idev).set32(T.MockDomainReplace.ptID, ioas)) == err(.ENOENT))
        #expect(h.call(R.testCmd, Self.op(.mockDomainReplace, stdev).set32(T.MockDomainReplace.ptID, ioas)) == 0)
        #expect(Self.destroy(h, other) == 0)
    }

    // MARK: Checks

    @Test func checkMapComparesFrames() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let (_, hwpt, _) = Self.mockDomain(h, ioas)
        let (va, iova) = h.map(ioas: ioas, length: 0x4000)
        #expect(Self.checkMap(h, hwpt, iova, 0x4000, va) == 0)
        #expect(Self.checkMap(h, hwpt, iova + 0x800, 0x1000, va + 0x800) == 0)    // 2 KiB granular
        #expect(Self.checkMap(h, hwpt, iova, 0x4000, va + 0x800) == err(.EINVAL))  // other pages
        // Page by page, as the kernel walks: a mismatch before an unmapped user page is EINVAL,
        // a match then an unmapped user page is EFAULT (the user page is looked up first).
        let next = va + 0x4000
        #expect(h.space.pointer(va: next) == nil, "the test needs the page after the buffer unmapped")
        #expect(Self.checkMap(h, hwpt, iova, 0x1000, va + 0x3800) == err(.EINVAL))
        #expect(Self.checkMap(h, hwpt, iova + 0x3800, 0x1000, va + 0x3800) == err(.EFAULT))
        let (other, _) = h.map(ioas: ioas, length: 0x1000)
        #expect(Self.checkMap(h, hwpt, iova, 0x1000, other) == err(.EINVAL))
        #expect(Self.checkMap(h, hwpt, iova + 0x100, 0x800, va + 0x100) == err(.EINVAL))  // misaligned
        #expect(Self.checkMap(h, hwpt, iova + 0x8000_0000, 0x800, va) == err(.EINVAL))    // not mapped
        #expect(Self.checkMap(h, ioas, iova, 0x800, va) == err(.ENOENT))                 // not a HWPT
        #expect(Self.checkMap(h, hwpt, iova, 0x1000, 0x7000_0000_0000) == err(.EFAULT))   // no user page
        // A VT-d domain is no mock domain.
        let vtd = h.bind("vdev0")
        var alloc = Cmd(ABI.HWPTAlloc.size).set32(ABI.HWPTAlloc.devID, vtd).set32(ABI.HWPTAlloc.ptID, h.allocIOAS())
        #expect(h.call(R.hwptAlloc, &alloc) == 0)
        #expect(Self.checkMap(h, alloc.u32(ABI.HWPTAlloc.outHWPTID), 0, 0x800, va) == err(.EINVAL))
    }

    @Test func checkRefsCountsPinsOfEveryContext() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let va = h.space.map(length: 0x4000)
        let map = { (ioas: UInt32, file: IOMMUFDFile) -> UInt64? in
            try? file.context.map(ioas: ioas, userVA: va, length: 0x4000, iova: C.apertureStart, permissions: [.read, .write])
        }
        #expect(Self.checkRefs(h, va, 0x4000, 0) == 0)
        // Mapped but pinned by nothing: still 0 (pinning is lazy).
        let iova = map(ioas, h.file)
        #expect(iova != nil)
        #expect(Self.checkRefs(h, va, 0x4000, 0) == 0)
        _ = Self.mockDomain(h, ioas)
        #expect(Self.checkRefs(h, va, 0x4000, 1) == 0)
        #expect(Self.checkRefs(h, va, 0x4000, 0) == err(.EIO))
        // A second domain on the same IOAS shares the pin.
        _ = Self.mockDomain(h, ioas)
        #expect(Self.checkRefs(h, va, 0x4000, 1) == 0)
        // Another open of /dev/iommu on the same host, pinning the same pages: 2.
        let other = IOMMUFDFile(platform: h.platform, memory: h.space, user: h.user, broker: TestBroker(),
                                options: ABIOptions(selftestOps: true, pinPolicy: .unlimited))
        let ioas2 = (try? other.context.allocIOAS()) ?? 0
        #expect(map(ioas2, other) != nil)
        _ = try? other.context.createMockDevice(attachTo: ioas2)
        #expect(Self.checkRefs(h, va, 0x4000, 2) == 0)
        #expect(Self.checkRefs(h, va + 0x1000, 0x1000, 2) == 0)
        other.release()
        #expect(Self.checkRefs(h, va, 0x4000, 1) == 0)
        #expect(Self.unmap(h, ioas, iova ?? 0, 0x4000) == 0)
        #expect(Self.checkRefs(h, va, 0x4000, 0) == 0)
        #expect(Self.checkRefs(h, va + 1, 0x1000, 0) == err(.EINVAL))
        #expect(Self.checkRefs(h, va, 0x800, 0) == err(.EINVAL))
        #expect(Self.checkRefs(h, 0x7000_0000_0000, 0x1000, 0) == err(.EFAULT))
    }

    // MARK: Accesses

    @Test func accessPagesPinsAndUnmapUnpins() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let fd = Self.createAccess(h, ioas, pin: true)
        #expect(h.broker.openAuxiliary == [fd])
        let (va, iova) = h.map(ioas: ioas, length: 0x4000)
        var pin = Self.op(.accessPages, UInt32(bitPattern: fd)).set64(T.AccessPages.iova, iova)
            .set64(T.AccessPages.length, 0x2000).set64(T.AccessPages.uptr, va)
        #expect(h.call(R.testCmd, &pin) == 0)
        #expect(pin.u32(T.AccessPages.outAccessPagesID) == 0)       // items count from 0
        #expect(Self.checkRefs(h, va, 0x2000, 1) == 0)
        #expect(Self.checkRefs(h, va + 0x2000, 0x2000, 0) == 0)
        var second = pin
        #expect(h.call(R.testCmd, &second) == 0)
        #expect(second.u32(T.AccessPages.outAccessPagesID) == 1)
        #expect(Self.checkRefs(h, va, 0x2000, 1) == 0)               // one pin per page, two users
        // Wrong uptr: the pinned pages are not the pages there.
        #expect(h.call(R.testCmd, pin.set64(T.AccessPages.uptr, va + 0x1000)) == err(.EBADE))
        let destroyPages = { (item: UInt32) in
            h.call(R.testCmd, Self.op(.destroyAccessPages, UInt32(bitPattern: fd)).set32(T.DestroyAccessPages.accessPagesID, item))
        }
        #expect(destroyPages(0) == 0)
        #expect(destroyPages(0) == err(.ENOENT))
        #expect(Self.checkRefs(h, va, 0x2000, 1) == 0)
        // Unmapping the IOVA unpins item 1 behind the test's back.
        #expect(Self.unmap(h, ioas, iova, 0x4000) == 0)
        #expect(Self.checkRefs(h, va, 0x4000, 0) == 0)
        #expect(destroyPages(1) == err(.ENOENT))
        // Errors.
        #expect(h.call(R.testCmd, pin.set32(T.AccessPages.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.testCmd, pin.set64(T.AccessPages.length, (16 << 20) + 1)) == err(.ENOMEM))
        #expect(h.call(R.testCmd, pin.set32(T.id, 12345)) == err(LinuxErrno(rawValue: 77)))   // EBADFD
        #expect(h.call(R.testCmd, pin) == err(.ENOENT))                                       // unmapped
        // Closing the descriptor destroys the access; then the IOAS can go.
        #expect(Self.destroy(h, ioas) == err(.EBUSY))
        #expect(h.broker.close(fd))
        #expect(Self.destroy(h, ioas) == 0)
        #expect(h.file.context.objects().isEmpty)
    }

    @Test func accessHoldsTheIOMMUFDOpen() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let fd = Self.createAccess(h, ioas, pin: true)
        let (va, iova) = h.map(ioas: ioas, length: 0x2000)
        #expect(h.call(R.testCmd, Self.op(.accessPages, UInt32(bitPattern: fd)).set64(T.AccessPages.iova, iova)
            .set64(T.AccessPages.length, 0x2000).set64(T.AccessPages.uptr, va)) == 0)
        // The last iommufd descriptor closes: the access keeps the context and its pins.
        h.file.release()
        #expect(h.file.context.objects().map(\.kind) == [.ioas, .access])
        #expect(h.pinned == 2)
        // Closing the access descriptor lets everything go.
        #expect(h.broker.close(fd))
        #expect(h.file.context.objects().isEmpty)
        #expect(h.pinned == 0)
    }

    @Test func accessWithoutPinOpsAndReplace() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS(), other = h.allocIOAS()
        #expect(h.call(R.testCmd, Self.op(.createAccess, ioas).set32(T.CreateAccess.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.testCmd, Self.op(.createAccess, 77)) == err(.ENOENT))
        let fd = Self.createAccess(h, ioas, pin: false)
        let (va, iova) = h.map(ioas: ioas, length: 0x2000)
        #expect(h.call(R.testCmd, Self.op(.accessPages, UInt32(bitPattern: fd)).set64(T.AccessPages.iova, iova)
            .set64(T.AccessPages.length, 0x1000).set64(T.AccessPages.uptr, va)) == err(.EOPNOTSUPP))
        // ACCESS_REPLACE_IOAS moves it: the old IOAS is free to go.
        #expect(h.call(R.testCmd, Self.op(.accessReplaceIOAS, UInt32(bitPattern: fd)).set32(T.AccessReplaceIOAS.ioasID, other)) == 0)
        #expect(Self.destroy(h, other) == err(.EBUSY))
        #expect(Self.unmap(h, ioas, iova, 0x2000) == 0)
        #expect(Self.destroy(h, ioas) == 0)
        #expect(h.broker.close(fd))
        #expect(Self.destroy(h, other) == 0)
    }

    @Test func accessReadWrite() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let fd = UInt32(bitPattern: Self.createAccess(h, ioas, pin: false))
        let (va, iova) = h.map(ioas: ioas, length: 0x2000)
        let buffer = h.alloc(64)
        h.poke(buffer, Array(0..<64))
        let rw = Self.op(.accessRW, fd).set64(T.AccessRW.iova, iova + 0xff0).set64(T.AccessRW.length, 64)
            .set64(T.AccessRW.uptr, buffer)
        // A write crossing the page boundary lands in the mapped memory ...
        #expect(h.call(R.testCmd, rw.set32(T.AccessRW.flags, C.accessRWWrite)) == 0)
        #expect(h.peek(va + 0xff0, 64) == Array(0..<64))
        // ... and a read (slow path too) brings it back.
        h.poke(buffer, [UInt8](repeating: 0, count: 64))
        #expect(h.call(R.testCmd, rw.set32(T.AccessRW.flags, C.accessRWSlowPath)) == 0)
        #expect(h.peek(buffer, 64) == Array(0..<64))
        #expect(h.call(R.testCmd, rw.set32(T.AccessRW.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.testCmd, rw.set64(T.AccessRW.length, (16 << 20) + 1)) == err(.ENOMEM))
        #expect(h.call(R.testCmd, rw.set64(T.AccessRW.iova, iova + 0x2000)) == err(.ENOENT))
        #expect(h.call(R.testCmd, rw.set64(T.AccessRW.uptr, 0)) == err(.EFAULT))
        #expect(h.call(R.testCmd, rw.set32(T.id, 3)) == err(LinuxErrno(rawValue: 77)))
        #expect(h.broker.close(Int32(bitPattern: fd)))
    }

    // MARK: Dirty tracking

    @Test func dirtyMarksMappedPages() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let (_, _, idev) = Self.mockDomain(h, ioas)
        let (_, iova) = h.map(ioas: ioas, length: 0x4000, iova: C.apertureStart)
        var alloc = Cmd(ABI.HWPTAlloc.size).set32(ABI.HWPTAlloc.devID, idev).set32(ABI.HWPTAlloc.ptID, ioas)
            .set32(ABI.HWPTAlloc.flags, IOMMUConstants.hwptAllocDirtyTracking)
        #expect(h.call(R.hwptAlloc, &alloc) == 0)
        let hwpt = alloc.u32(ABI.HWPTAlloc.outHWPTID)
        let bitmap = h.alloc(8)
        h.poke(bitmap, [0b1010_0101, 0, 0, 0, 0, 0, 0, 0])
        let dirty = Self.op(.dirty, hwpt).set64(T.Dirty.iova, iova).set64(T.Dirty.length, 0x8000)
            .set64(T.Dirty.pageSize, 2048).set64(T.Dirty.uptr, bitmap)
        // Tracking off: EINVAL.
        #expect(h.call(R.testCmd, dirty) == err(.EINVAL))
        #expect(h.call(R.hwptSetDirtyTracking, Cmd(ABI.HWPTSetDirtyTracking.size)
            .set32(ABI.HWPTSetDirtyTracking.hwptID, hwpt).set32(ABI.HWPTSetDirtyTracking.flags, 1)) == 0)
        var cmd = dirty
        #expect(h.call(R.testCmd, &cmd) == 0)
        #expect(cmd.u64(T.Dirty.outNrDirty) == 4)          // bits 0, 2, 5, 7: all mapped
        // Bits past the mapping (the 16 KiB is 8 IO pages; the range is 16) count nothing.
        h.poke(bitmap, [0, 0xff, 0, 0, 0, 0, 0, 0])
        cmd = dirty
        #expect(h.call(R.testCmd, &cmd) == 0)
        #expect(cmd.u64(T.Dirty.outNrDirty) == 0)
        // GET_DIRTY_BITMAP reads back what was injected.
        let out = h.alloc(8)
        #expect(h.call(R.hwptGetDirtyBitmap, Cmd(ABI.HWPTGetDirtyBitmap.size).set32(ABI.HWPTGetDirtyBitmap.hwptID, hwpt)
            .set64(ABI.HWPTGetDirtyBitmap.iova, iova).set64(ABI.HWPTGetDirtyBitmap.length, 0x4000)
            .set64(ABI.HWPTGetDirtyBitmap.pageSize, 2048).set64(ABI.HWPTGetDirtyBitmap.data, out)) == 0)
        #expect(h.peek(out, 1) == [0b1010_0101])
        // Errors, in the kernel's order.
        #expect(h.call(R.testCmd, dirty.set64(T.Dirty.pageSize, 0)) == err(.EINVAL))
        #expect(h.call(R.testCmd, dirty.set64(T.Dirty.iova, iova + 1)) == err(.EINVAL))
        #expect(h.call(R.testCmd, dirty.set64(T.Dirty.uptr, 0)) == err(.EINVAL))
        #expect(h.call(R.testCmd, dirty.set64(T.Dirty.length, 2048 * ((16 << 20) * 8 + 1))) == err(.EOVERFLOW))
        #expect(h.call(R.testCmd, dirty.set32(T.id, ioas)) == err(.ENOENT))
        #expect(h.call(R.testCmd, dirty.set64(T.Dirty.uptr, 0x7000_0000_0000)) == err(.EFAULT))
    }

    // MARK: The rest

    @Test func reservedLimitAndUnmodelledOps() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let reserve = Self.op(.addReserved, ioas).set64(T.AddReserved.start, 0x10000).set64(T.AddReserved.length, 0x1000)
        #expect(h.call(R.testCmd, reserve) == 0)
        #expect((try? h.file.context.iovaRanges(ioas: ioas))?.ranges.count == 2)
        #expect(h.call(R.testCmd, reserve.set64(T.AddReserved.length, 0)) == err(.EINVAL))
        #expect(h.call(R.testCmd, reserve.set64(T.AddReserved.start, .max)) == err(.EOVERFLOW))
        #expect(h.call(R.testCmd, reserve.set32(T.id, 55)) == err(.ENOENT))
        let (_, iova) = h.map(ioas: ioas, length: 0x1000, iova: 0x40000)
        #expect(h.call(R.testCmd, reserve.set64(T.AddReserved.start, iova)) == err(.EADDRINUSE))

        #expect(h.call(R.testCmd, Self.op(.setTempMemoryLimit).set32(T.MemoryLimit.limit, 11)) == err(.EINVAL))
        #expect(h.call(R.testCmd, Self.op(.setTempMemoryLimit).set32(T.MemoryLimit.limit, 16)) == 0)

        let (stdev, hwpt, idev) = Self.mockDomain(h, h.allocIOAS())
        // MD_CHECK_IOTLB looks `id` up as a nested HWPT: a paging one is not (ENOENT).
        #expect(h.call(R.testCmd, Self.op(.mdCheckIOTLB, hwpt)) == err(.ENOENT))
        // An IOPF from a device on a HWPT without a fault queue is dropped; the op succeeds.
        #expect(h.call(R.testCmd, Self.op(.triggerIOPF).set32(T.TriggerIOPF.devID, idev)) == 0)
        #expect(h.call(R.testCmd, Self.op(.triggerIOPF).set32(T.TriggerIOPF.devID, stdev)) == err(.ENOENT))
        let vtd = h.bind("vdev0")
        #expect(h.call(R.testCmd, Self.op(.triggerIOPF).set32(T.TriggerIOPF.devID, vtd)) == 0)
        // Device caches keep their default.
        let cache = Self.op(.devCheckCache, idev).set32(T.CheckDevCache.cache, C.devCacheDefault)
        #expect(h.call(R.testCmd, cache) == 0)
        #expect(h.call(R.testCmd, cache.set32(T.CheckDevCache.id, 3)) == 0)
        #expect(h.call(R.testCmd, cache.set32(T.CheckDevCache.id, 4)) == err(.EINVAL))
        #expect(h.call(R.testCmd, cache.set32(T.CheckDevCache.cache, 0)) == err(.EINVAL))
        #expect(h.call(R.testCmd, cache.set32(T.id, 99)) == err(.ENOENT))
        // No vIOMMU, no vDEVICE.
        #expect(h.call(R.testCmd, Self.op(.triggerVEvent).set32(T.TriggerVEvent.devID, idev)) == err(.ENOENT))
        // PASID attachment is not modelled.
        for op in [SelftestOp.pasidAttach, .pasidReplace, .pasidDetach, .pasidCheckHWPT] {
            #expect(h.call(R.testCmd, Self.op(op, stdev)) == err(.EOPNOTSUPP))
        }
    }

    @Test func closeTearsEverythingDown() {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let (va, _) = h.map(ioas: ioas, length: 0x3000, iova: C.apertureStart)
        _ = Self.mockDomain(h, ioas)
        _ = Self.mockDomain(h, ioas, flags: C.deviceHugeIOVA)
        #expect(Self.checkRefs(h, va, 0x3000, 1) == 0)
        let devices = h.platform.devices.count
        h.file.release()
        #expect(h.pinned == 0)
        // The selftest teardown's check, through a new open of /dev/iommu: nothing pinned.
        let fresh = IOMMUFDFile(platform: h.platform, memory: h.space, user: h.user, broker: TestBroker(),
                                options: ABIOptions(selftestOps: true, pinPolicy: .unlimited))
        let check = { (refs: UInt32) -> Int64 in
            let cmd = Self.op(.mdCheckRefs).set64(T.CheckRefs.uptr, va).set64(T.CheckRefs.length, 0x3000)
                .set32(T.CheckRefs.refs, refs)
            let at = h.alloc(T.size)
            h.poke(at, cmd.bytes)
            return fresh.ioctl(UInt(R.testCmd), at)
        }
        #expect(check(0) == 0)
        #expect(check(1) == err(.EIO))
        // The mock devices went back to the bus: new ones reuse them.
        let ioas2 = (try? fresh.context.allocIOAS()) ?? 0
        #expect((try? fresh.context.createMockDevice(attachTo: ioas2)) != nil)
        #expect((try? fresh.context.createMockDevice(attachTo: ioas2, quirks: [.hugeIOVA])) != nil)
        #expect(h.platform.devices.count == devices)
        fresh.release()
    }
}
