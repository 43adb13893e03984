// The extensible-struct rule of main.c, for every command in the table (the kernel
// selftest's cmd_length, cmd_fail and cmd_ex_fail, extended to every ioctl).

import Testing
import IOMMUABI
import UIOMMUBase

@Suite("Size rule")
struct SizeRuleTests {
    static var commands: [(request: UInt32, name: String, minSize: Int, size: Int)] { IOMMUIoctls.table }

    @Test(arguments: IOMMUIoctls.table.map(\.request))
    func belowMinimumIsEINVAL(_ request: UInt32) {
        let h = ABIHarness(selftest: true)
        let op = Self.commands.first { $0.request == request }!
        // As the selftest does: a 0xff byte right after the short struct must not matter.
        var cmd = Cmd(op.minSize - 1, buffer: op.size + 8)
        cmd.bytes[op.minSize - 1] = 0xff
        #expect(h.call(request, &cmd) == err(.EINVAL), "\(op.name)")
    }

    @Test(arguments: IOMMUIoctls.table.map(\.request))
    func nonZeroTailIsE2BIG(_ request: UInt32) {
        let h = ABIHarness(selftest: true)
        let op = Self.commands.first { $0.request == request }!
        var cmd = Cmd(op.size + 1)
        cmd.bytes[op.size] = 0xaa
        #expect(h.call(request, &cmd) == err(.E2BIG), "\(op.name)")
        // Far past the struct, across a page: still E2BIG.
        var big = Cmd(op.size + 5000)
        big.bytes[op.size + 4999] = 1
        #expect(h.call(request, &big) == err(.E2BIG), "\(op.name)")
    }

    @Test(arguments: IOMMUIoctls.table.map(\.request))
    func zeroTailBehavesLikeFullSize(_ request: UInt32) {
        let op = Self.commands.first { $0.request == request }!
        let a = ABIHarness(selftest: true), b = ABIHarness(selftest: true)
        var exact = Cmd(op.size)
        var longer = Cmd(op.size + 1)
        let rcExact = a.call(request, &exact)
        let rcLonger = b.call(request, &longer)
        #expect(rcExact == rcLonger, "\(op.name): \(name(rcExact)) vs \(name(rcLonger))")
        // What was written back is the same (never past the kernel's struct).
        #expect(Array(longer.bytes[4..<op.size]) == Array(exact.bytes[4..<op.size]), "\(op.name)")
        #expect(longer.bytes[op.size] == 0)
    }

    @Test(arguments: IOMMUIoctls.table.map(\.request))
    func badPointerIsEFAULT(_ request: UInt32) {
        let h = ABIHarness(selftest: true)
        #expect(h.file.ioctl(UInt(request), 0) == err(.EFAULT))
        let va = h.alloc(4096)
        h.space.unmap(va: va, length: 4096)
        #expect(h.file.ioctl(UInt(request), va) == err(.EFAULT))
        // The size readable but the struct not: EFAULT too.
        let op = Self.commands.first { $0.request == request }!
        let two = h.alloc(8192)
        h.space.unmap(va: two + 4096, length: 4096)
        let at = two + 4096 - 4
        h.poke(at, [UInt8(op.size), 0, 0, 0])
        #expect(h.file.ioctl(UInt(request), at) == err(.EFAULT))
    }

    @Test func unreadableTailIsEFAULT() {
        let h = ABIHarness()
        let two = h.alloc(8192)
        h.space.unmap(va: two + 4096, length: 4096)
        let at = two + 4096 - 8               // DESTROY's 8 bytes fit, the tail does not
        h.poke(at, [16, 0, 0, 0, 0, 0, 0, 0])
        #expect(h.file.ioctl(UInt(IOMMURequest.destroy), at) == err(.EFAULT))
        // A non-zero byte before the hole is found first: E2BIG, as check_zeroed_user does.
        let three = h.alloc(8192)
        h.space.unmap(va: three + 4096, length: 4096)
        let at2 = three + 4096 - 12
        h.poke(at2, [0x00, 0x10, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0])   // size 4096, tail starts non-zero
        #expect(h.file.ioctl(UInt(IOMMURequest.destroy), at2) == err(.E2BIG))
    }

    @Test func hugeSizeIsBounded() {
        // A 4 GiB size over a small zero buffer: EFAULT at the end of the mapping, no 4 GiB buffer.
        let h = ABIHarness()
        let va = h.alloc(16384)
        h.poke(va, [0xff, 0xff, 0xff, 0xff])
        #expect(h.file.ioctl(UInt(IOMMURequest.destroy), va) == err(.EFAULT))
    }

    @Test func unknownNumbers() {
        let h = ABIHarness(selftest: true)
        let va = h.alloc(64)
        h.poke(va, [64])
        // A hole inside the table (selftest build: 0x95 … 0x9f): the size is read, then ENOTTY.
        for nr: UInt32 in 0x95...0x9f {
            #expect(h.file.ioctl(UInt(0x3b00 | nr), va) == err(.ENOTTY))
            #expect(h.file.ioctl(UInt(0x3b00 | nr), 0) == err(.EFAULT))
        }
        // Past the table, and below it (VFIO space): ENOTTY without reading anything.
        for request: UInt32 in [0x3ba1, 0x3bff, 0x3b00, 0x3b63, 0x3b67, 0x3b7f] {
            #expect(h.file.ioctl(UInt(request), 0) == err(.ENOTTY), "0x\(String(request, radix: 16))")
        }
        // Right nr, wrong type or direction bits: not the table's number.
        #expect(h.file.ioctl(0x4180, va) == err(.ENOTTY))
        #expect(h.file.ioctl(0xc018_3b80, va) == err(.ENOTTY))
        // The kernel's cmd is 32 bits: a long request's upper half is dropped.
        var cmd = Cmd(8)
        #expect(h.callRaw(0x1_0000_3b80, &cmd) == err(.ENOENT))
    }

    @Test func selftestCommandNeedsTheOption() {
        let off = ABIHarness(selftest: false)
        // Without CONFIG_IOMMUFD_TEST the table ends at 0x94: 0xa0 is an unknown VFIO ioctl.
        #expect(off.file.ioctl(UInt(IOMMURequest.testCmd), 0) == err(.ENOTTY))
        #expect(off.call(IOMMURequest.testCmd, Cmd(72).set32(4, 1)) == err(.ENOTTY))
        #expect(off.file.ioctl(0x3b95, 0) == err(.ENOTTY))
        let on = ABIHarness(selftest: true)
        // Op 1 (ADD_RESERVED) runs and refuses its zero length; an unknown op is EOPNOTSUPP.
        #expect(on.call(IOMMURequest.testCmd, Cmd(72).set32(ABI.TestCmd.op, 1)) == err(.EINVAL))
        #expect(on.call(IOMMURequest.testCmd, Cmd(72).set32(ABI.TestCmd.op, 999)) == err(.EOPNOTSUPP))
        #expect(on.call(IOMMURequest.testCmd, Cmd(68).set32(ABI.TestCmd.op, 1)) == err(.EINVAL))
        #expect(on.call(IOMMURequest.testCmd, Cmd(67).set32(ABI.TestCmd.op, 1)) == err(.EINVAL))
    }

    @Test func shortStructIsZeroExtended() {
        // IOMMU_HWPT_ALLOC at its 6.6 size (24): data_type/len/uptr and fault_id read as 0.
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let dev = h.bind("mdev0")
        var cmd = Cmd(24).set32(ABI.HWPTAlloc.devID, dev).set32(ABI.HWPTAlloc.ptID, ioas)
        #expect(h.call(IOMMURequest.hwptAlloc, &cmd) == 0)
        #expect(cmd.u32(ABI.HWPTAlloc.outHWPTID) != 0)
        // GET_HW_INFO at 32 bytes: out_capabilities is not written (min(size, sizeof)).
        var info = Cmd(32, buffer: 40).set32(ABI.HWInfo.devID, dev)
        info = info.set64(32, 0x5a5a_5a5a_5a5a_5a5a)
        #expect(h.call(IOMMURequest.getHWInfo, &info) == 0)
        #expect(info.u64(32) == 0x5a5a_5a5a_5a5a_5a5a)
        #expect(info.u32(ABI.HWInfo.outDataType) == IOMMUConstants.hwInfoTypeSelftest)
    }
}
