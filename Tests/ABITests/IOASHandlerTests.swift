// Success and errno paths of DESTROY, IOAS_*, OPTION and VFIO_IOAS through the ioctl ABI.

import Testing
import IOMMUABI
import IOMMUEngine
import UIOMMUBase

@Suite("IOAS ioctls")
struct IOASHandlerTests {
    typealias R = IOMMURequest

    @Test func allocAndDestroy() {
        let h = ABIHarness()
        #expect(h.call(R.ioasAlloc, Cmd(12).set32(ABI.IOASAlloc.flags, 1)) == err(.EOPNOTSUPP))
        #expect(h.allocIOAS() == 1)
        #expect(h.allocIOAS() == 2)
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, 0)) == err(.ENOENT))
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, 1)) == 0)
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, 1)) == err(.ENOENT))
        #expect(h.allocIOAS() == 1)        // lowest free ID again
        // An IOAS with an attached device is busy; the device itself is held by its driver.
        let dev = h.bind("mdev0")
        _ = try? h.file.context.attach(device: dev, to: 1)
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, 1)) == err(.EBUSY))
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, dev)) == err(.EBUSY))
    }

    @Test func allocWithUnwritableStructLeavesNoObject() {
        let h = ABIHarness()
        let va = h.alloc(4096, writable: false)
        // Read-only memory still reads: put the struct there through the host pointer.
        h.poke(va, [12, 0, 0, 0])
        #expect(h.file.ioctl(UInt(R.ioasAlloc), va) == err(.EFAULT))
        #expect(h.file.context.objects().isEmpty)
    }

    @Test func mapAndUnmap() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let va = h.space.map(length: 0x10000)
        func map(_ flags: UInt32, iova: UInt64, length: UInt64 = 0x10000, reserved: UInt32 = 0, ioasID: UInt32? = nil,
                 userVA: UInt64? = nil) -> (Int64, Cmd) {
            var cmd = Cmd(40).set32(ABI.IOASMap.flags, flags).set32(ABI.IOASMap.ioasID, ioasID ?? ioas)
                .set32(ABI.IOASMap.reserved, reserved).set64(ABI.IOASMap.userVA, userVA ?? va)
                .set64(ABI.IOASMap.length, length).set64(ABI.IOASMap.iova, iova)
            let rc = h.call(R.ioasMap, &cmd)
            return (rc, cmd)
        }
        #expect(map(7, iova: 0x100000).0 == 0)
        #expect(map(7, iova: 0x108000).0 == err(.EEXIST))
        #expect(map(8 | 7, iova: 0x200000).0 == err(.EOPNOTSUPP))
        #expect(map(7, iova: 0x200000, reserved: 1).0 == err(.EOPNOTSUPP))
        #expect(map(7, iova: .max).0 == err(.EOVERFLOW))
        #expect(map(7, iova: 0x200000, length: .max).0 == err(.EOVERFLOW))
        // Without FIXED_IOVA the input iova is still checked for overflow.
        #expect(map(6, iova: .max).0 == err(.EOVERFLOW))
        #expect(map(1, iova: 0x200000).0 == err(.EINVAL))
        #expect(map(7, iova: 0x200000, ioasID: 99).0 == err(.ENOENT))
        // Kernel-chosen IOVA, returned in iova.
        let (rc, cmd) = map(6, iova: 0)
        #expect(rc == 0)
        let auto = cmd.u64(ABI.IOASMap.iova)
        #expect(auto != 0 && (auto >= 0x110000 || auto &+ 0x10000 <= 0x100000))
        // Without a domain pages are pinned lazily: an unmapped VA is accepted, as in Linux…
        #expect(map(7, iova: 0x300000, userVA: 0x1000).0 == 0)
        #expect(h.call(R.ioasUnmap, Cmd(24).set32(ABI.IOASUnmap.ioasID, ioas).set64(ABI.IOASUnmap.iova, 0x300000)
            .set64(ABI.IOASUnmap.length, 0x10000)) == 0)

        // UNMAP writes back the length unmapped.
        var unmap = Cmd(24).set32(ABI.IOASUnmap.ioasID, ioas).set64(ABI.IOASUnmap.iova, 0x100000)
            .set64(ABI.IOASUnmap.length, 0x10000)
        #expect(h.call(R.ioasUnmap, &unmap) == 0)
        #expect(unmap.u64(ABI.IOASUnmap.length) == 0x10000)
        #expect(h.call(R.ioasUnmap, unmap.set64(ABI.IOASUnmap.length, 0x10000)) == err(.ENOENT))
        #expect(h.call(R.ioasUnmap, unmap.set32(ABI.IOASUnmap.ioasID, 77)) == err(.ENOENT))
        #expect(h.call(R.ioasUnmap, unmap.set64(ABI.IOASUnmap.iova, .max)) == err(.EOVERFLOW))
        // 0 / U64_MAX unmaps everything.
        var all = Cmd(24).set32(ABI.IOASUnmap.ioasID, ioas).set64(ABI.IOASUnmap.length, .max)
        #expect(h.call(R.ioasUnmap, &all) == 0)
        #expect(all.u64(ABI.IOASUnmap.length) == 0x10000)
        all = all.set64(ABI.IOASUnmap.length, .max)
        #expect(h.call(R.ioasUnmap, &all) == 0)
        #expect(all.u64(ABI.IOASUnmap.length) == 0)
    }

    @Test func mapPinsThroughADomain() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let dev = h.bind("mdev0")
        _ = try? h.file.context.attach(device: dev, to: ioas)
        let va = h.space.map(length: 0x4000)
        let cmd = Cmd(40).set32(ABI.IOASMap.flags, 7).set32(ABI.IOASMap.ioasID, ioas)
            .set64(ABI.IOASMap.length, 0x4000).set64(ABI.IOASMap.iova, 0x100_0000)
        // …but with a domain the pages are pinned at once: EFAULT, nothing left behind.
        #expect(h.call(R.ioasMap, cmd.set64(ABI.IOASMap.userVA, 0x1000)) == err(.EFAULT))
        #expect(h.pinned == 0)
        #expect(h.call(R.ioasMap, cmd.set64(ABI.IOASMap.userVA, va)) == 0)
        #expect(h.pinned == 4)
        // The mock domain's aperture starts at 16 MiB: below it is reserved.
        #expect(h.call(R.ioasMap, cmd.set64(ABI.IOASMap.userVA, va).set64(ABI.IOASMap.iova, 0x10000)) != 0)
        h.file.release()
        #expect(h.pinned == 0)
    }

    @Test func copy() {
        let h = ABIHarness()
        let a = h.allocIOAS(), b = h.allocIOAS()
        _ = h.map(ioas: a, length: 0x4000, iova: 0x10000)
        var cmd = Cmd(40).set32(ABI.IOASCopy.flags, 7).set32(ABI.IOASCopy.srcIOASID, a).set32(ABI.IOASCopy.dstIOASID, b)
            .set64(ABI.IOASCopy.length, 0x4000).set64(ABI.IOASCopy.srcIOVA, 0x10000).set64(ABI.IOASCopy.dstIOVA, 0x50000)
        #expect(h.call(R.ioasCopy, &cmd) == 0)
        #expect(cmd.u64(ABI.IOASCopy.dstIOVA) == 0x50000)
        #expect(h.call(R.ioasCopy, cmd.set32(ABI.IOASCopy.flags, 6)) == 0)   // allocated IOVA
        #expect(h.call(R.ioasCopy, cmd.set32(ABI.IOASCopy.flags, 0x17)) == err(.EOPNOTSUPP))
        #expect(h.call(R.ioasCopy, cmd.set64(ABI.IOASCopy.dstIOVA, .max).set32(ABI.IOASCopy.flags, 6)) == err(.EOVERFLOW))
        #expect(h.call(R.ioasCopy, cmd.set32(ABI.IOASCopy.flags, 1)) == err(.EINVAL))
        #expect(h.call(R.ioasCopy, cmd.set32(ABI.IOASCopy.srcIOASID, 9)) == err(.ENOENT))
        #expect(h.call(R.ioasCopy, cmd.set32(ABI.IOASCopy.dstIOASID, 9).set64(ABI.IOASCopy.dstIOVA, 0x90000)) == err(.ENOENT))
        #expect(h.call(R.ioasCopy, cmd.set64(ABI.IOASCopy.srcIOVA, 0x20000)) == err(.ENOENT))
    }

    @Test func iovaRanges() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let array = h.alloc(64 * 16)
        var cmd = Cmd(32).set32(ABI.IOASIOVARanges.ioasID, ioas).set64(ABI.IOASIOVARanges.allowedIOVAs, array)
        // A fresh IOAS: one range, [0, U64_MAX], alignment 1; with no room, EMSGSIZE and the count.
        #expect(h.call(R.ioasIOVARanges, &cmd) == err(.EMSGSIZE))
        #expect(cmd.u32(ABI.IOASIOVARanges.numIOVAs) == 1)
        cmd = cmd.set32(ABI.IOASIOVARanges.numIOVAs, 1)
        #expect(h.call(R.ioasIOVARanges, &cmd) == 0)
        #expect(cmd.u64(ABI.IOASIOVARanges.outIOVAAlignment) == 1)
        let first = Cmd(raw: h.peek(array, 16))
        #expect(first.u64(0) == 0 && first.u64(8) == .max)
        // A VT-d device with the MSI window and 39 address bits splits and narrows them.
        let dev = h.bind("vdev0")
        _ = try? h.file.context.attach(device: dev, to: ioas)
        cmd = cmd.set32(ABI.IOASIOVARanges.numIOVAs, 1)
        #expect(h.call(R.ioasIOVARanges, &cmd) == err(.EMSGSIZE))
        #expect(cmd.u32(ABI.IOASIOVARanges.numIOVAs) == 2)
        cmd = cmd.set32(ABI.IOASIOVARanges.numIOVAs, 64)
        #expect(h.call(R.ioasIOVARanges, &cmd) == 0)
        #expect(cmd.u32(ABI.IOASIOVARanges.numIOVAs) == 2)
        #expect(cmd.u64(ABI.IOASIOVARanges.outIOVAAlignment) == 4096)
        let ranges = Cmd(raw: h.peek(array, 32))
        #expect(ranges.u64(0) == 0 && ranges.u64(8) == 0xfedf_ffff)
        #expect(ranges.u64(16) == 0xfef0_0000 && ranges.u64(24) == (1 << 39) - 1)
        // Errors.
        #expect(h.call(R.ioasIOVARanges, cmd.set32(ABI.IOASIOVARanges.reserved, 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.ioasIOVARanges, cmd.set32(ABI.IOASIOVARanges.ioasID, 99)) == err(.ENOENT))
        #expect(h.call(R.ioasIOVARanges, cmd.set64(ABI.IOASIOVARanges.allowedIOVAs, 16)) == err(.EFAULT))
    }

    @Test func allowIOVAs() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let array = h.alloc(4096)
        func allow(_ ranges: [(UInt64, UInt64)], count: UInt32? = nil, ioasID: UInt32? = nil, uptr: UInt64? = nil) -> Int64 {
            var raw = Cmd(max(16, ranges.count * 16))
            for (i, r) in ranges.enumerated() { raw = raw.set64(16 * i, r.0).set64(16 * i + 8, r.1) }
            h.poke(array, raw.bytes)
            return h.call(R.ioasAllowIOVAs, Cmd(24).set32(ABI.IOASAllowIOVAs.ioasID, ioasID ?? ioas)
                .set32(ABI.IOASAllowIOVAs.numIOVAs, count ?? UInt32(ranges.count))
                .set64(ABI.IOASAllowIOVAs.allowedIOVAs, uptr ?? array))
        }
        #expect(allow([(0x10000, 0x1ffff), (0x40000, 0x4ffff)]) == 0)
        #expect(allow([]) == 0)
        #expect(allow([(0x2000, 0x1000)]) == err(.EINVAL))
        #expect(allow([(0x1000, 0x1000)]) == err(.EINVAL))
        #expect(allow([(0x10000, 0x1ffff), (0x1f000, 0x2ffff)]) == err(.EINVAL))
        #expect(allow([(0x10000, 0x1ffff)], ioasID: 42) == err(.ENOENT))
        h.poke(array + 4096 - 16, Cmd(16).set64(0, 0x10000).set64(8, 0x1ffff).bytes)
        #expect(allow([], count: 2, uptr: array + 4096 - 16) == err(.EFAULT))
        // An invalid range before the unreadable one is found first.
        h.poke(array + 4096 - 16, Cmd(16).set64(0, 5).set64(8, 1).bytes)
        #expect(allow([], count: 2, uptr: array + 4096 - 16) == err(.EINVAL))
        #expect(h.call(R.ioasAllowIOVAs, Cmd(24).set32(ABI.IOASAllowIOVAs.ioasID, ioas).set32(ABI.IOASAllowIOVAs.reserved, 1))
                == err(.EOPNOTSUPP))
        // Allowed ranges cannot meet a reserved one (the MSI window of an attached VT-d device).
        let dev = h.bind("vdev0")
        _ = try? h.file.context.attach(device: dev, to: ioas)
        #expect(allow([(0xfe00_0000, 0xfeff_ffff)]) == err(.EADDRINUSE))
        let many = (0..<5000).map { (UInt64($0) << 16, UInt64($0) << 16 | 0xfff) }
        var raw = Cmd(5000 * 16)
        for (i, r) in many.enumerated() { raw = raw.set64(16 * i, r.0).set64(16 * i + 8, r.1) }
        let big = h.alloc(5000 * 16)
        h.poke(big, raw.bytes)
        #expect(allow([], count: 5000, uptr: big) == err(.ENOMEM))
        #expect(allow([], count: 4096, uptr: big) == 0)
    }

    @Test func mapFile() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let fd = h.broker.addFile(TestFile(space: h.space, size: 0x8000))
        func mapFile(flags: UInt32 = 7, fd: Int32, start: UInt64 = 0, length: UInt64 = 0x4000, iova: UInt64 = 0x40000,
                     ioasID: UInt32? = nil) -> (Int64, Cmd) {
            var cmd = Cmd(40).set32(ABI.IOASMapFile.flags, flags).set32(ABI.IOASMapFile.ioasID, ioasID ?? ioas)
                .set32(ABI.IOASMapFile.fd, UInt32(bitPattern: fd)).set64(ABI.IOASMapFile.start, start)
                .set64(ABI.IOASMapFile.length, length).set64(ABI.IOASMapFile.iova, iova)
            let rc = h.call(R.ioasMapFile, &cmd)
            return (rc, cmd)
        }
        #expect(mapFile(fd: fd).0 == 0)
        let (rc, cmd) = mapFile(flags: 6, fd: fd, start: 0x4000)
        #expect(rc == 0 && cmd.u64(ABI.IOASMapFile.iova) != 0x40000)
        #expect(mapFile(fd: 3).0 == err(.EBADF))
        #expect(mapFile(fd: -1).0 == err(.EBADF))
        // The IOAS is looked up before the fd.
        #expect(mapFile(fd: 3, ioasID: 50).0 == err(.ENOENT))
        #expect(mapFile(flags: 0x10, fd: fd).0 == err(.EOPNOTSUPP))
        #expect(mapFile(fd: fd, length: .max).0 == err(.EOVERFLOW))
        #expect(mapFile(flags: 1, fd: fd).0 == err(.EINVAL))
        #expect(mapFile(fd: fd, start: 0x6000, iova: 0x80000).0 == err(.EINVAL))     // beyond EOF
    }

    @Test func options() {
        let h = ABIHarness(canSetRlimitMode: false)
        func option(_ id: UInt32, op: UInt16, object: UInt32 = 0, value: UInt64 = 0, reserved: UInt16 = 0) -> (Int64, UInt64) {
            var cmd = Cmd(24).set32(ABI.Option.optionID, id).set16(ABI.Option.op, op).set32(ABI.Option.objectID, object)
                .set64(ABI.Option.val64, value).set16(ABI.Option.reserved, reserved)
            let rc = h.call(R.option, &cmd)
            return (rc, cmd.u64(ABI.Option.val64))
        }
        #expect(option(0, op: 1) == (0, 0))
        #expect(option(0, op: 0, value: 1).0 == err(.EPERM))
        #expect(option(0, op: 0, value: 7).0 == err(.EPERM))       // privilege before the value
        #expect(option(0, op: 1, object: 3).0 == err(.EOPNOTSUPP))
        #expect(option(0, op: 2).0 == err(.EOPNOTSUPP))
        #expect(option(2, op: 1).0 == err(.EOPNOTSUPP))
        #expect(option(0, op: 1, reserved: 1).0 == err(.EOPNOTSUPP))

        let root = ABIHarness(canSetRlimitMode: true)
        func rootOption(_ op: UInt16, _ value: UInt64) -> (Int64, UInt64) {
            var cmd = Cmd(24).set16(ABI.Option.op, op).set64(ABI.Option.val64, value)
            let rc = root.call(R.option, &cmd)
            return (rc, cmd.u64(ABI.Option.val64))
        }
        #expect(rootOption(0, 2).0 == err(.EINVAL))
        #expect(rootOption(0, 1).0 == 0)
        #expect(rootOption(1, 0) == (0, 1))
        _ = root.allocIOAS()
        #expect(rootOption(0, 0).0 == err(.EBUSY))
        #expect(rootOption(0, 9).0 == err(.EBUSY))                // emptiness before the value

        // HUGE_PAGES, per IOAS.
        let ioas = h.allocIOAS()
        #expect(option(1, op: 1, object: ioas) == (0, 1))
        #expect(option(1, op: 0, object: ioas, value: 0).0 == 0)
        #expect(option(1, op: 1, object: ioas) == (0, 0))
        #expect(option(1, op: 0, object: ioas, value: 2).0 == err(.EINVAL))
        #expect(option(1, op: 3, object: ioas).0 == err(.EOPNOTSUPP))
        #expect(option(1, op: 1, object: 99).0 == err(.ENOENT))
        #expect(option(1, op: 3, object: 99).0 == err(.ENOENT))   // the IOAS first
    }

    @Test func optionWritesBackOnlyVal64() {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let va = h.alloc(64)
        let cmd = Cmd(24).set32(ABI.Option.optionID, 1).set16(ABI.Option.op, 1).set32(ABI.Option.objectID, ioas)
        h.poke(va, cmd.bytes)
        #expect(h.file.ioctl(UInt(R.option), va) == 0)
        let after = Cmd(raw: h.peek(va, 24))
        #expect(after.u64(ABI.Option.val64) == 1)
        #expect(Array(after.bytes[0..<16]) == Array(cmd.bytes[0..<16]))
    }

    @Test func vfioIOAS() {
        let h = ABIHarness()
        func vfio(_ op: UInt16, _ id: UInt32 = 0, reserved: UInt16 = 0) -> (Int64, UInt32) {
            var cmd = Cmd(12).set16(ABI.VFIOIOAS.op, op).set32(ABI.VFIOIOAS.ioasID, id).set16(ABI.VFIOIOAS.reserved, reserved)
            let rc = h.call(R.vfioIOAS, &cmd)
            return (rc, cmd.u32(ABI.VFIOIOAS.ioasID))
        }
        #expect(vfio(0).0 == err(.ENODEV))
        #expect(vfio(1, 5).0 == err(.ENOENT))
        let ioas = h.allocIOAS()
        #expect(vfio(1, ioas).0 == 0)
        #expect(vfio(0) == (0, ioas))
        #expect(vfio(2).0 == 0)
        #expect(vfio(0).0 == err(.ENODEV))
        #expect(vfio(3).0 == err(.EOPNOTSUPP))
        #expect(vfio(0, reserved: 1).0 == err(.EOPNOTSUPP))
        // Destroying the compat IOAS clears it, and a new IOAS with the same ID is not it.
        #expect(vfio(1, ioas).0 == 0)
        #expect(h.call(R.destroy, Cmd(8).set32(ABI.Destroy.id, ioas)) == 0)
        #expect(vfio(0).0 == err(.ENODEV))
        #expect(h.allocIOAS() == ioas)
        #expect(vfio(0).0 == err(.ENODEV))
    }
}
