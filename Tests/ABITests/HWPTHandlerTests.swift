// HWPT_ALLOC, GET_HW_INFO, dirty tracking, and the features answered as unsupported.

import Testing
import IOMMUABI
import IOMMUEngine
import UIOMMUBase

@Suite("HWPT and device ioctls")
struct HWPTHandlerTests {
    typealias R = IOMMURequest
    typealias A = ABI.HWPTAlloc

    @Test func hwptAlloc() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let dev = h.bind("mdev0")
        let base = Cmd(48).set32(A.devID, dev).set32(A.ptID, ioas)
        var cmd = base
        #expect(h.call(R.hwptAlloc, &cmd) == 0)
        let hwpt = cmd.u32(A.outHWPTID)
        #expect(hwpt > ioas)
        #expect(h.call(R.hwptAlloc, base.set32(A.reserved, 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptAlloc, base.set32(A.dataLen, 4)) == err(.EINVAL))          // NONE with data
        #expect(h.call(R.hwptAlloc, base.set32(A.dataType, 1)) == err(.EINVAL))         // type without data
        #expect(h.call(R.hwptAlloc, base.set32(A.devID, 77)) == err(.ENOENT))
        #expect(h.call(R.hwptAlloc, base.set32(A.devID, ioas)) == err(.ENOENT))          // not a device
        #expect(h.call(R.hwptAlloc, base.set32(A.ptID, 77)) == err(.EINVAL))            // pt lookup fails: EINVAL
        #expect(h.call(R.hwptAlloc, base.set32(A.ptID, dev)) == err(.EINVAL))           // neither IOAS nor HWPT
        // Nesting on a HWPT that is not a nesting parent: EINVAL; without driver data EOPNOTSUPP.
        #expect(h.call(R.hwptAlloc, base.set32(A.ptID, hwpt).set32(A.dataType, 0xdead).set32(A.dataLen, 4)) == err(.EINVAL))
        #expect(h.call(R.hwptAlloc, base.set32(A.ptID, hwpt)) == err(.EOPNOTSUPP))
        // Paging HWPTs take no driver data.
        #expect(h.call(R.hwptAlloc, base.set32(A.dataType, 1).set32(A.dataLen, 24)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptAlloc, base.set32(A.flags, 0x10)) == err(.EOPNOTSUPP))
        // FAULT_ID_VALID: the mock driver takes no fault queue on a paging domain (EOPNOTSUPP);
        // through VT-d fault_id 1 (the IOAS) is no FAULT object, and the HWPT is aborted (ENOENT).
        let before = h.file.context.objects().count
        #expect(h.call(R.hwptAlloc, base.set32(A.flags, IOMMUConstants.hwptFaultIDValid).set32(A.faultID, 1)) == err(.EOPNOTSUPP))
        let vtd = h.bind("vdev0")
        let vtdBefore = h.file.context.objects().count
        #expect(h.call(R.hwptAlloc, base.set32(A.devID, vtd).set32(A.flags, IOMMUConstants.hwptFaultIDValid).set32(A.faultID, 1)) == err(.ENOENT))
        #expect(h.file.context.objects().count == vtdBefore)
        #expect(vtdBefore == before + 1)
        // Dirty tracking needs a capable IOMMU.
        #expect(h.call(R.hwptAlloc, base.set32(A.flags, 2)) == 0)
        let plain = h.bind("vdev1")
        #expect(h.call(R.hwptAlloc, base.set32(A.devID, plain).set32(A.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptAlloc, base.set32(A.devID, plain).set32(A.flags, 1)) == err(.EOPNOTSUPP)) // cannot nest
        // The HWPT holds its IOAS.
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, ioas)) == err(.EBUSY))
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, hwpt)) == 0)
    }

    @Test func hwInfoMock() {
        let h = ABIHarness()
        let dev = h.bind("mdev0")
        let data = h.alloc(64)
        h.poke(data, [UInt8](repeating: 0xcc, count: 64))
        var cmd = Cmd(40).set32(ABI.HWInfo.devID, dev).set32(ABI.HWInfo.dataLen, 16).set64(ABI.HWInfo.dataUptr, data)
            .set32(ABI.HWInfo.inDataType, 0x1234)             // ignored without FLAG_INPUT_TYPE
        #expect(h.call(R.getHWInfo, &cmd) == 0)
        #expect(cmd.u32(ABI.HWInfo.outDataType) == 0xfeed_beef)
        #expect(cmd.u32(ABI.HWInfo.dataLen) == 8)
        #expect(cmd.u64(ABI.HWInfo.outCapabilities) == 1)       // DIRTY_TRACKING
        #expect(cmd.u8(ABI.HWInfo.outMaxPASIDLog2) == 20)
        let out = Cmd(raw: h.peek(data, 64))
        #expect(out.u32(0) == 0 && out.u32(4) == 0xdead_beef)
        #expect(out.u64(8) == 0)                                 // the tail of the user's 16 bytes is zeroed
        #expect(out.bytes[16...].allSatisfy { $0 == 0xcc })      // and nothing past it is touched

        // A shorter buffer gets a prefix; the full length is still reported.
        h.poke(data, [UInt8](repeating: 0xcc, count: 64))
        var short = cmd.set32(ABI.HWInfo.dataLen, 4)
        #expect(h.call(R.getHWInfo, &short) == 0)
        #expect(short.u32(ABI.HWInfo.dataLen) == 8)
        #expect(h.peek(data, 8) == [0, 0, 0, 0, 0xcc, 0xcc, 0xcc, 0xcc])
        // data_len 0 with no buffer at all is fine.
        #expect(h.call(R.getHWInfo, cmd.set32(ABI.HWInfo.dataLen, 0).set64(ABI.HWInfo.dataUptr, 0)) == 0)
        // Input type: the driver's own or DEFAULT, else EOPNOTSUPP.
        let input = cmd.set32(ABI.HWInfo.flags, 1)
        #expect(h.call(R.getHWInfo, input.set32(ABI.HWInfo.inDataType, 0xfeed_beef)) == 0)
        #expect(h.call(R.getHWInfo, input.set32(ABI.HWInfo.inDataType, 0)) == 0)
        #expect(h.call(R.getHWInfo, input.set32(ABI.HWInfo.inDataType, 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.getHWInfo, cmd.set32(ABI.HWInfo.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.getHWInfo, cmd.set8(ABI.HWInfo.reserved + 2, 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.getHWInfo, cmd.set32(ABI.HWInfo.devID, 99)) == err(.ENOENT))
        #expect(h.call(R.getHWInfo, cmd.set64(ABI.HWInfo.dataUptr, 0x10)) == err(.EFAULT))
        // The zero fill of a big buffer is bounded and faults where the buffer ends.
        #expect(h.call(R.getHWInfo, cmd.set32(ABI.HWInfo.dataLen, 0xffff_ffff)) == err(.EFAULT))
    }

    @Test func hwInfoVTdAndAMD() {
        let h = ABIHarness()
        let data = h.alloc(64)
        func info(_ name: String) -> (Cmd, Cmd) {
            var cmd = Cmd(40).set32(ABI.HWInfo.devID, h.bind(name)).set32(ABI.HWInfo.dataLen, 64).set64(ABI.HWInfo.dataUptr, data)
            #expect(h.call(R.getHWInfo, &cmd) == 0)
            return (cmd, Cmd(raw: h.peek(data, 64)))
        }
        let (coherent, cregs) = info("vdev0")
        #expect(coherent.u32(ABI.HWInfo.outDataType) == 1 && coherent.u32(ABI.HWInfo.dataLen) == 24)
        #expect(coherent.u64(ABI.HWInfo.outCapabilities) == 1)
        let ecap = cregs.u64(ABI.HWInfoVTd.ecapReg), cap = cregs.u64(ABI.HWInfoVTd.capReg)
        #expect(ecap & (1 << 7) != 0, "SC: the unit forces snooping")
        #expect(ecap & (1 << 45) != 0, "SSADS: second-stage dirty bits")
        #expect((cap >> 16) & 0x3f == 38, "MGAW: 39 bits")
        #expect((cap >> 8) & 0x1f == 0b0010, "SAGAW: 3-level")
        #expect(cap & (1 << 34) != 0 && cap & (1 << 35) == 0, "SLLPS: 2M, no 1G")
        #expect(cregs.bytes[24...].allSatisfy { $0 == 0 })
        let (plain, pregs) = info("vdev1")
        #expect(plain.u64(ABI.HWInfo.outCapabilities) == 0)
        #expect(pregs.u64(ABI.HWInfoVTd.ecapReg) & (1 << 7) == 0 && pregs.u64(ABI.HWInfoVTd.ecapReg) & (1 << 45) == 0)
        #expect((pregs.u64(ABI.HWInfoVTd.capReg) >> 16) & 0x3f == 47)
        // AMD (v6.17): no driver data, type DEFAULT; an input type is ignored.
        let (amd, _) = info("adev0")
        #expect(amd.u32(ABI.HWInfo.outDataType) == 0 && amd.u32(ABI.HWInfo.dataLen) == 0)
        #expect(h.call(R.getHWInfo, amd.set32(ABI.HWInfo.flags, 1).set32(ABI.HWInfo.inDataType, 4)) == 0)
    }

    /// A mock device attached to a dirty-tracking HWPT with `length` bytes mapped at 16 MiB.
    func dirtySetup(_ h: ABIHarness, length: UInt64) -> (hwpt: UInt32, iova: UInt64) {
        let ioas = h.allocIOAS()
        let dev = h.bind("mdev0")
        var alloc = Cmd(48).set32(A.devID, dev).set32(A.ptID, ioas).set32(A.flags, IOMMUConstants.hwptAllocDirtyTracking)
        #expect(h.call(R.hwptAlloc, &alloc) == 0)
        let hwpt = alloc.u32(A.outHWPTID)
        #expect((try? h.file.context.attach(device: dev, to: hwpt)) == hwpt)
        _ = h.map(ioas: ioas, length: length, iova: 0x100_0000)
        return (hwpt, 0x100_0000)
    }

    @Test func setDirtyTracking() {
        let h = ABIHarness()
        let (hwpt, _) = dirtySetup(h, length: 0x4000)
        let cmd = Cmd(16).set32(ABI.HWPTSetDirtyTracking.hwptID, hwpt)
        #expect(h.call(R.hwptSetDirtyTracking, cmd.set32(ABI.HWPTSetDirtyTracking.flags, 1)) == 0)
        #expect(h.call(R.hwptSetDirtyTracking, cmd) == 0)
        #expect(h.call(R.hwptSetDirtyTracking, cmd.set32(ABI.HWPTSetDirtyTracking.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptSetDirtyTracking, cmd.set32(ABI.HWPTSetDirtyTracking.hwptID, 99)) == err(.ENOENT))
        // The kernel does not check __reserved here.
        #expect(h.call(R.hwptSetDirtyTracking, cmd.set32(ABI.HWPTSetDirtyTracking.reserved, 5)) == 0)
        // A HWPT allocated without DIRTY_TRACKING has no dirty ops.
        var plain = Cmd(48).set32(A.devID, 2).set32(A.ptID, 1)
        #expect(h.call(R.hwptAlloc, &plain) == 0)
        #expect(h.call(R.hwptSetDirtyTracking, Cmd(16).set32(ABI.HWPTSetDirtyTracking.hwptID, plain.u32(A.outHWPTID))
            .set32(ABI.HWPTSetDirtyTracking.flags, 1)) == err(.EOPNOTSUPP))
    }

    @Test func dirtyBitmap() {
        let h = ABIHarness()
        let (hwpt, iova) = dirtySetup(h, length: 0x10000)       // 32 mock pages of 2 KiB
        #expect(h.call(R.hwptSetDirtyTracking, Cmd(16).set32(ABI.HWPTSetDirtyTracking.hwptID, hwpt).set32(4, 1)) == 0)
        for page: UInt64 in [0, 5, 31] { #expect((try? h.file.context.markDirty(hwpt: hwpt, iova: iova + page * 2048)) == true) }
        let bitmap = h.alloc(64)
        // An unaligned bitmap whose other bits must survive (the kernel only sets bits).
        let at = bitmap + 3
        h.poke(at, [0, 0b0100_0000, 0, 0])
        let get = Cmd(48).set32(ABI.HWPTGetDirtyBitmap.hwptID, hwpt).set64(ABI.HWPTGetDirtyBitmap.iova, iova)
            .set64(ABI.HWPTGetDirtyBitmap.length, 0x10000).set64(ABI.HWPTGetDirtyBitmap.pageSize, 2048)
            .set64(ABI.HWPTGetDirtyBitmap.data, at)
        #expect(h.call(R.hwptGetDirtyBitmap, get.set32(ABI.HWPTGetDirtyBitmap.flags, 1)) == 0)   // NO_CLEAR
        #expect(h.peek(at, 5) == [0b0010_0001, 0b0100_0000, 0, 0b1000_0000, 0])
        h.poke(at, [0, 0, 0, 0])
        #expect(h.call(R.hwptGetDirtyBitmap, get) == 0)
        #expect(h.peek(at, 4) == [0b0010_0001, 0, 0, 0b1000_0000])
        h.poke(at, [0, 0, 0, 0])
        #expect(h.call(R.hwptGetDirtyBitmap, get) == 0)          // cleared by the previous read
        #expect(h.peek(at, 4) == [0, 0, 0, 0])
        // A 4 KiB page size folds two mock pages into one bit.
        _ = try? h.file.context.markDirty(hwpt: hwpt, iova: iova + 3 * 2048)
        #expect(h.call(R.hwptGetDirtyBitmap, get.set64(ABI.HWPTGetDirtyBitmap.pageSize, 4096)) == 0)
        #expect(h.peek(at, 2) == [0b0000_0010, 0])
        // Errors, in the kernel's order.
        #expect(h.call(R.hwptGetDirtyBitmap, get.set32(ABI.HWPTGetDirtyBitmap.flags, 2)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptGetDirtyBitmap, get.set32(ABI.HWPTGetDirtyBitmap.reserved, 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptGetDirtyBitmap, get.set32(ABI.HWPTGetDirtyBitmap.hwptID, 99)) == err(.ENOENT))
        #expect(h.call(R.hwptGetDirtyBitmap, get.set64(ABI.HWPTGetDirtyBitmap.length, .max)) == err(.EOVERFLOW))
        #expect(h.call(R.hwptGetDirtyBitmap, get.set64(ABI.HWPTGetDirtyBitmap.iova, iova + 1)) == err(.EINVAL))
        #expect(h.call(R.hwptGetDirtyBitmap, get.set64(ABI.HWPTGetDirtyBitmap.length, 0x20000)) == err(.EINVAL))   // unmapped tail
        // An unwritable bitmap.
        _ = try? h.file.context.markDirty(hwpt: hwpt, iova: iova)
        let readOnly = h.alloc(4096, writable: false)
        #expect(h.call(R.hwptGetDirtyBitmap, get.set64(ABI.HWPTGetDirtyBitmap.data, readOnly)) == err(.EFAULT))
        #expect(h.call(R.hwptGetDirtyBitmap, get.set64(ABI.HWPTGetDirtyBitmap.data, 0)) == err(.EFAULT))
        // The failed reads lost nothing: the dirty bit is still there.
        h.poke(at, [0])
        #expect(h.call(R.hwptGetDirtyBitmap, get) == 0)
        #expect(h.peek(at, 1) == [1])
    }

    @Test func largeDirtyBitmap() {
        // 80 MiB in 2 KiB pages: 40960 bits, 5120 bitmap bytes, more than one 4 KiB window.
        let h = ABIHarness()
        let length: UInt64 = 80 << 20
        let (hwpt, iova) = dirtySetup(h, length: length)
        #expect(h.call(R.hwptSetDirtyTracking, Cmd(16).set32(ABI.HWPTSetDirtyTracking.hwptID, hwpt).set32(4, 1)) == 0)
        let bits: [UInt64] = [0, 1, 7, 8, 32767, 32768, 33000, 40959]
        for bit in bits { _ = try? h.file.context.markDirty(hwpt: hwpt, iova: iova + bit * 2048) }
        let bytes = 5120
        let buffer = h.alloc(bytes + 4096)
        let at = buffer + 4096 - 5                    // crosses page boundaries, unaligned
        var cmd = Cmd(48).set32(ABI.HWPTGetDirtyBitmap.hwptID, hwpt).set64(ABI.HWPTGetDirtyBitmap.iova, iova)
            .set64(ABI.HWPTGetDirtyBitmap.length, length).set64(ABI.HWPTGetDirtyBitmap.pageSize, 2048)
            .set64(ABI.HWPTGetDirtyBitmap.data, at)
        #expect(h.call(R.hwptGetDirtyBitmap, &cmd) == 0)
        let got = h.peek(at, bytes)
        var expected = [UInt8](repeating: 0, count: bytes)
        for bit in bits { expected[Int(bit / 8)] |= 1 << (bit % 8) }
        #expect(got == expected)
        // Nothing written past the bitmap.
        #expect(h.peek(at + UInt64(bytes), 4) == [0, 0, 0, 0])
        h.file.release()
        #expect(h.pinned == 0)
    }

    @Test func unsupportedFeatures() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let dev = h.bind("mdev0")
        var hwptCmd = Cmd(48).set32(A.devID, dev).set32(A.ptID, ioas).set32(A.flags, 1)
        #expect(h.call(R.hwptAlloc, &hwptCmd) == 0)
        let parent = hwptCmd.u32(A.outHWPTID)

        // HWPT_INVALIDATE: entry_num is written back (0) on every path.
        var inv = Cmd(32).set32(ABI.HWPTInvalidate.hwptID, 55).set32(ABI.HWPTInvalidate.entryNum, 3)
            .set64(ABI.HWPTInvalidate.dataUptr, 0x1000).set32(ABI.HWPTInvalidate.entryLen, 8)
        #expect(h.call(R.hwptInvalidate, &inv) == err(.ENOENT))
        #expect(inv.u32(ABI.HWPTInvalidate.entryNum) == 0)
        #expect(h.call(R.hwptInvalidate, inv.set32(ABI.HWPTInvalidate.hwptID, parent).set32(ABI.HWPTInvalidate.entryNum, 1))
                == err(.EINVAL))
        #expect(h.call(R.hwptInvalidate, inv.set32(ABI.HWPTInvalidate.reserved, 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptInvalidate, inv.set32(ABI.HWPTInvalidate.entryNum, 1).set32(ABI.HWPTInvalidate.entryLen, 0))
                == err(.EINVAL))

        #expect(h.call(R.faultQueueAlloc, Cmd(16).set32(ABI.FaultAlloc.flags, 1)) == err(.EOPNOTSUPP))

        let viommu = Cmd(40).set32(ABI.VIOMMUAlloc.type, 1).set32(ABI.VIOMMUAlloc.devID, dev).set32(ABI.VIOMMUAlloc.hwptID, parent)
        #expect(h.call(R.viommuAlloc, viommu) == err(.EOPNOTSUPP))
        #expect(h.call(R.viommuAlloc, viommu.set32(ABI.VIOMMUAlloc.type, 0)) == err(.EOPNOTSUPP))
        #expect(h.call(R.viommuAlloc, viommu.set32(ABI.VIOMMUAlloc.devID, 99)) == err(.ENOENT))
        #expect(h.call(R.viommuAlloc, viommu.set32(ABI.VIOMMUAlloc.hwptID, 99)) == err(.EOPNOTSUPP))

        #expect(h.call(R.vdeviceAlloc, Cmd(24).set32(ABI.VDeviceAlloc.devID, dev)) == err(.ENOENT))

        let veventq = Cmd(32).set32(ABI.VEventQAlloc.type, 1).set32(ABI.VEventQAlloc.veventqDepth, 8)
        #expect(h.call(R.veventqAlloc, veventq) == err(.ENOENT))
        #expect(h.call(R.veventqAlloc, veventq.set32(ABI.VEventQAlloc.veventqDepth, 0)) == err(.EINVAL))
        #expect(h.call(R.veventqAlloc, veventq.set32(ABI.VEventQAlloc.type, 0)) == err(.EOPNOTSUPP))
        #expect(h.call(R.veventqAlloc, veventq.set32(ABI.VEventQAlloc.reserved, 1)) == err(.EOPNOTSUPP))

        let queue = Cmd(40).set32(ABI.HWQueueAlloc.type, 1).set64(ABI.HWQueueAlloc.length, 0x1000)
        #expect(h.call(R.hwQueueAlloc, queue) == err(.ENOENT))
        #expect(h.call(R.hwQueueAlloc, queue.set64(ABI.HWQueueAlloc.length, 0)) == err(.EINVAL))
        #expect(h.call(R.hwQueueAlloc, queue.set64(ABI.HWQueueAlloc.nestingParentIOVA, .max)) == err(.EOVERFLOW))
        #expect(h.call(R.hwQueueAlloc, queue.set32(ABI.HWQueueAlloc.flags, 1)) == err(.EOPNOTSUPP))

        #expect(h.call(R.ioasChangeProcess, Cmd(8).set32(ABI.IOASChangeProcess.reserved, 1)) == err(.EOPNOTSUPP))
        #expect(h.broker.fileMemory(fd: 0) == nil)
    }

    /// IOMMU_IOAS_CHANGE_PROCESS: fine with no maps (or file maps only), EINVAL once a
    /// user-address map exists.
    @Test func changeProcess() {
        let h = ABIHarness()
        #expect(h.call(R.ioasChangeProcess, Cmd(8)) == 0)
        let ioas = h.allocIOAS()
        let va = h.space.map(length: 0x4000)
        let map = Cmd(40).set32(ABI.IOASMap.flags, 7).set32(ABI.IOASMap.ioasID, ioas)
            .set64(ABI.IOASMap.userVA, va).set64(ABI.IOASMap.length, 0x4000).set64(ABI.IOASMap.iova, 0x100_0000)
        #expect(h.call(R.ioasMap, map) == 0)
        #expect(h.call(R.ioasChangeProcess, Cmd(8)) == err(.EINVAL))
    }
}
