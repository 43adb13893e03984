// The VFIO type1 container ioctls on an iommufd fd (vfio_compat.c), including the kernel
// selftest's GET_INFO walk over every argsz.

import Testing
import IOMMUABI
import IOMMUEngine
import UIOMMUBase

@Suite("VFIO compatibility")
struct VFIOCompatTests {
    typealias V = VFIORequest

    @Test func versionAndExtensions() {
        let h = ABIHarness()
        #expect(h.file.ioctl(UInt(V.getAPIVersion), 0) == 0)
        #expect(h.file.ioctl(UInt(V.getAPIVersion), 0xdead_beef) == 0)
        for (ext, answer) in [(UInt64(1), Int64(1)), (3, 1), (9, 1), (8, 0), (6, 0), (10, 0), (2, 0), (7, 0), (5, 0), (0, 0), (.max, 0)] {
            #expect(h.file.ioctl(UInt(V.checkExtension), ext) == answer, "extension \(ext)")
        }
        // DMA_CC asks the compat IOAS.
        #expect(h.file.ioctl(UInt(V.checkExtension), 4) == err(.ENODEV))
        let ioas = h.allocIOAS()
        h.setCompat(ioas)
        #expect(h.file.ioctl(UInt(V.checkExtension), 4) == 1)             // no HWPT: vacuously coherent
        let coherent = h.bind("vdev0")
        _ = try? h.file.context.attach(device: coherent, to: ioas)
        #expect(h.file.ioctl(UInt(V.checkExtension), 4) == 1)
        let plain = h.bind("vdev1")
        _ = try? h.file.context.attach(device: plain, to: ioas)
        #expect(h.file.ioctl(UInt(V.checkExtension), 4) == 0)
    }

    @Test func setIOMMU() {
        let h = ABIHarness()
        #expect(h.file.ioctl(UInt(V.setIOMMU), 3) == err(.ENODEV))
        #expect(h.file.ioctl(UInt(V.setIOMMU), 2) == err(.EINVAL))
        #expect(h.file.ioctl(UInt(V.setIOMMU), 8) == err(.EINVAL))
        let ioas = h.allocIOAS()
        h.setCompat(ioas)
        #expect(h.file.ioctl(UInt(V.setIOMMU), 3) == 0)
        #expect((try? h.file.context.hugePages(ioas: ioas)) == true)
        // Type1 v1 turns large pages off.
        #expect(h.file.ioctl(UInt(V.setIOMMU), 1) == 0)
        #expect((try? h.file.context.hugePages(ioas: ioas)) == false)
    }

    @Test func noCompatIOAS() {
        let h = ABIHarness()
        var info = Cmd(24, sizeField: 24)
        #expect(h.call(V.iommuGetInfo, &info) == err(.ENODEV))
        #expect(h.call(V.iommuMapDMA, Cmd(32).set32(4, 3)) == err(.ENODEV))
        #expect(h.call(V.iommuUnmapDMA, Cmd(24)) == err(.ENODEV))
        // argsz and flags are checked first.
        #expect(h.call(V.iommuGetInfo, Cmd(24, sizeField: 15)) == err(.EINVAL))
        #expect(h.call(V.iommuMapDMA, Cmd(32, sizeField: 31)) == err(.EINVAL))
        #expect(h.call(V.iommuMapDMA, Cmd(32).set32(4, 4)) == err(.EINVAL))
        #expect(h.call(V.iommuUnmapDMA, Cmd(24).set32(4, 1)) == err(.EINVAL))
        #expect(h.call(V.iommuUnmapDMA, Cmd(24).set32(4, 4)) == err(.EINVAL))
        #expect(h.call(V.iommuUnmapDMA, Cmd(24, sizeField: 23)) == err(.EINVAL))
        for request in [V.iommuGetInfo, V.iommuMapDMA, V.iommuUnmapDMA] {
            #expect(h.file.ioctl(UInt(request), 0) == err(.EFAULT))
        }
        for request in [V.iommuDirtyPages, V.iommuEnable, V.iommuDisable, 0x3b67, 0x3b68, 0x3b6a, 0x3b76] {
            #expect(h.file.ioctl(UInt(request), 0) == err(.ENOTTY))
        }
    }

    /// The compat IOAS with a VT-d device: two usable ranges around the MSI window.
    func compatWithDevice(_ h: ABIHarness) -> UInt32 {
        let ioas = h.allocIOAS()
        h.setCompat(ioas)
        let dev = h.bind("vdev0")
        _ = try? h.file.context.attach(device: dev, to: ioas)
        return ioas
    }

    @Test func getInfoFull() {
        let h = ABIHarness()
        _ = compatWithDevice(h)
        let total = 24 + 16 + (16 + 2 * 16)
        var cmd = Cmd(24, sizeField: 256, buffer: 256)
        #expect(h.call(V.iommuGetInfo, &cmd) == 0)
        typealias I = ABI.VFIOType1Info
        #expect(cmd.u32(I.argsz) == UInt32(total))
        #expect(cmd.u32(I.flags) == 3)                          // PGSIZES | CAPS
        #expect(cmd.u64(I.iovaPgsizes) == (1 << 12 | 1 << 21))  // the VT-d unit: 4K and 2M
        #expect(cmd.u32(I.capOffset) == 24)
        // DMA_AVAIL at 24, linked to IOVA_RANGE at 40.
        #expect(cmd.u16(24) == 3 && cmd.u16(26) == 1 && cmd.u32(28) == 40 && cmd.u32(32) == UInt32.max)
        #expect(cmd.u16(40) == 1 && cmd.u16(42) == 1 && cmd.u32(44) == 0 && cmd.u32(48) == 2)
        #expect(cmd.u64(56) == 0 && cmd.u64(64) == 0xfedf_ffff)
        #expect(cmd.u64(72) == 0xfef0_0000 && cmd.u64(80) == (1 << 39) - 1)
        #expect(cmd.bytes[total...].allSatisfy { $0 == 0 })
    }

    @Test func getInfoArgszWalk() {
        // As the kernel selftest does: every argsz from 16 to the total gives a consistent
        // answer, and nothing is ever written at or past argsz (a canary guards it).
        let h = ABIHarness()
        _ = compatWithDevice(h)
        let total = 24 + 16 + 48
        let canary: UInt8 = 0xa5
        for argsz in 16...(total + 8) {
            let va = h.alloc(512)
            var bytes = [UInt8](repeating: canary, count: 512)
            for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: argsz >> (8 * i)) }
            h.poke(va, bytes)
            #expect(h.file.ioctl(UInt(V.iommuGetInfo), va) == 0, "argsz \(argsz)")
            let out = Cmd(raw: h.peek(va, 512))
            #expect(out.bytes[argsz...].allSatisfy { $0 == canary }, "argsz \(argsz): written past argsz")
            #expect(out.u32(0) == UInt32(total), "argsz \(argsz)")
            if argsz >= 24 {
                #expect(out.u32(16) == (argsz >= total ? 24 : 0), "argsz \(argsz): cap_offset")
            }
            if argsz >= 36 {
                // The DMA_AVAIL capability fits; its next is set once the second one starts inside argsz.
                #expect(out.u16(24) == 3 && out.u32(32) == UInt32.max, "argsz \(argsz)")
                #expect(out.u32(28) == (argsz >= 40 ? 40 : 0), "argsz \(argsz): next")
            }
            if argsz >= total {
                #expect(out.u16(40) == 1 && out.u32(48) == 2, "argsz \(argsz)")
            } else if argsz >= 40 + 16 + 16 {
                // Ranges that fit are written, the header is not.
                #expect(out.u64(56) == 0 && out.u64(64) == 0xfedf_ffff, "argsz \(argsz)")
                #expect(out.bytes[40..<56].allSatisfy { $0 == canary }, "argsz \(argsz): early header")
            }
            h.space.unmap(va: va, length: 4096)
        }
    }

    @Test func mapAndUnmapDMA() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        h.setCompat(ioas)
        let va = h.space.map(length: 0x4000)
        let map = Cmd(32).set32(ABI.VFIODMAMap.flags, 3).set64(ABI.VFIODMAMap.vaddr, va)
            .set64(ABI.VFIODMAMap.iova, 0x10000).set64(ABI.VFIODMAMap.length, 0x4000)
        #expect(h.call(V.iommuMapDMA, map) == 0)
        #expect(h.call(V.iommuMapDMA, map) == err(.EEXIST))
        #expect(h.call(V.iommuMapDMA, map.set32(ABI.VFIODMAMap.flags, 0).set64(ABI.VFIODMAMap.iova, 0x80000)) == err(.EINVAL))
        // Type1 v2: unmapping half a mapping is refused; the size written back is 0.
        var unmap = Cmd(24).set64(ABI.VFIODMAUnmap.iova, 0x10000).set64(ABI.VFIODMAUnmap.length, 0x1000)
        #expect(h.call(V.iommuUnmapDMA, &unmap) == err(.ENOENT))
        #expect(unmap.u64(ABI.VFIODMAUnmap.length) == 0)
        unmap = unmap.set64(ABI.VFIODMAUnmap.length, 0x4000)
        #expect(h.call(V.iommuUnmapDMA, &unmap) == 0)
        #expect(unmap.u64(ABI.VFIODMAUnmap.length) == 0x4000)
        // UNMAP_ALL.
        #expect(h.call(V.iommuMapDMA, map) == 0)
        #expect(h.call(V.iommuUnmapDMA, Cmd(24).set32(4, 2).set64(ABI.VFIODMAUnmap.iova, 0x10000)) == err(.EINVAL))
        var all = Cmd(24).set32(4, 2)
        #expect(h.call(V.iommuUnmapDMA, &all) == 0)
        #expect(all.u64(ABI.VFIODMAUnmap.length) == 0x4000)
        // The size written back is now non-zero: UNMAP_ALL with a size is EINVAL.
        #expect(h.call(V.iommuUnmapDMA, &all) == err(.EINVAL))
        all = all.set64(ABI.VFIODMAUnmap.length, 0)
        #expect(h.call(V.iommuUnmapDMA, &all) == 0)
        #expect(all.u64(ABI.VFIODMAUnmap.length) == 0)
    }

    @Test func type1v1CutsAreas() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        h.setCompat(ioas)
        #expect(h.file.ioctl(UInt(V.setIOMMU), 1) == 0)
        let va = h.space.map(length: 0x4000)
        let map = Cmd(32).set32(ABI.VFIODMAMap.flags, 3).set64(ABI.VFIODMAMap.vaddr, va)
            .set64(ABI.VFIODMAMap.iova, 0x10000).set64(ABI.VFIODMAMap.length, 0x4000)
        #expect(h.call(V.iommuMapDMA, map) == 0)
        // The middle page goes; the two sides stay mapped.
        var unmap = Cmd(24).set64(ABI.VFIODMAUnmap.iova, 0x11000).set64(ABI.VFIODMAUnmap.length, 0x1000)
        #expect(h.call(V.iommuUnmapDMA, &unmap) == 0)
        #expect(unmap.u64(ABI.VFIODMAUnmap.length) == 0x1000)
        let areas = (try? h.file.context.areas(ioas: ioas)) ?? []
        #expect(areas.map(\.iova) == [0x10000, 0x12000])
        #expect(areas.map(\.last) == [0x10fff, 0x13fff])
        // From IOVA 0 only the end is cut.
        let low = Cmd(32).set32(ABI.VFIODMAMap.flags, 3).set64(ABI.VFIODMAMap.vaddr, va)
            .set64(ABI.VFIODMAMap.iova, 0).set64(ABI.VFIODMAMap.length, 0x2000)
        #expect(h.call(V.iommuMapDMA, low) == 0)
        var head = Cmd(24).set64(ABI.VFIODMAUnmap.length, 0x1000)
        #expect(h.call(V.iommuUnmapDMA, &head) == 0)
        #expect(head.u64(ABI.VFIODMAUnmap.length) == 0x1000)
    }
}
