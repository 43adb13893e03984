// Nested HWPT_ALLOC, HWPT_INVALIDATE, FAULT_QUEUE_ALLOC and the fault queue descriptor through
// IOMMUFDFile.ioctl, with the struct bytes in client memory as a C program passes them, and
// the selftest ops that go with them (MD_CHECK_IOTLB, TRIGGER_IOPF) — the kernel selftest's
// alloc_hwpt_nested sequence and the copy rules of driver data.

import Testing
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import UIOMMUBase

@Suite("Nesting and fault queues (ABI)")
struct NestingABITests {
    typealias R = IOMMURequest
    typealias A = ABI.HWPTAlloc
    typealias I = ABI.HWPTInvalidate
    typealias T = ABI.TestCmd
    static let iotlbDefault: UInt32 = 0xbad_beef

    struct Setup {
        let h: ABIHarness
        let ioas: UInt32
        let stdev: UInt32
        let idev: UInt32
        let parent: UInt32
        /// 4 bytes of IOMMU_HWPT_DATA_SELFTEST (iotlb = default) in client memory.
        let data: UInt64
    }

    static func setUp() -> Setup {
        let h = ABIHarness(selftest: true)
        let ioas = h.allocIOAS()
        let (stdev, _, idev) = SelftestOpsTests.mockDomain(h, ioas)
        var cmd = Cmd(A.size).set32(A.devID, idev).set32(A.ptID, ioas).set32(A.flags, IOMMUConstants.hwptAllocNestParent)
        #expect(h.call(R.hwptAlloc, &cmd) == 0)
        let data = h.alloc(4096)
        h.poke(data, [0xef, 0xbe, 0xad, 0x0b])
        return Setup(h: h, ioas: ioas, stdev: stdev, idev: idev, parent: cmd.u32(A.outHWPTID), data: data)
    }

    static func nestedCmd(_ s: Setup, pt: UInt32? = nil, type: UInt32 = 0xdead, length: UInt32 = 4,
                          uptr: UInt64? = nil, flags: UInt32 = 0, fault: UInt32 = 0) -> Cmd {
        Cmd(A.size).set32(A.devID, s.idev).set32(A.ptID, pt ?? s.parent).set32(A.flags, flags)
            .set32(A.dataType, type).set32(A.dataLen, length).set64(A.dataUptr, uptr ?? s.data).set32(A.faultID, fault)
    }

    static func allocNested(_ s: Setup, flags: UInt32 = 0, fault: UInt32 = 0) -> UInt32 {
        var cmd = nestedCmd(s, flags: flags, fault: fault)
        #expect(s.h.call(R.hwptAlloc, &cmd) == 0)
        return cmd.u32(A.outHWPTID)
    }

    static func checkIOTLB(_ h: ABIHarness, _ hwpt: UInt32, _ entry: UInt32, _ value: UInt32) -> Int64 {
        h.call(R.testCmd, SelftestOpsTests.op(.mdCheckIOTLB, hwpt).set32(T.CheckIOTLB.id, entry).set32(T.CheckIOTLB.iotlb, value))
    }

    static func replace(_ h: ABIHarness, _ stdev: UInt32, _ pt: UInt32) -> Int64 {
        h.call(R.testCmd, SelftestOpsTests.op(.mockDomainReplace, stdev).set32(T.MockDomainReplace.ptID, pt))
    }

    @Test func nestedAllocationErrnos() {
        let s = Self.setUp()
        let h = s.h
        var plain = Cmd(A.size).set32(A.devID, s.idev).set32(A.ptID, s.ioas)
        #expect(h.call(R.hwptAlloc, &plain) == 0)
        // In the selftest's order: NONE with data (EINVAL), an unknown type (EOPNOTSUPP), too
        // short (EINVAL), NULL data (EFAULT), NEST_PARENT on a nested HWPT (EOPNOTSUPP), a
        // parent that is not one (EINVAL).
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, type: 0)) == err(.EINVAL))
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, type: 0xdead + 1)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, length: 3)) == err(.EINVAL))
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, uptr: 0)) == err(.EFAULT))
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, flags: IOMMUConstants.hwptAllocNestParent)) == err(.EOPNOTSUPP))
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, pt: plain.u32(A.outHWPTID))) == err(.EINVAL))
        // Longer than the driver's struct: EINVAL (iommu_copy_struct_from_user), even if zero.
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, length: 8)) == err(.EINVAL))
        // Unreadable data after a readable start: EFAULT.
        let edge = h.alloc(4096) + 4096 - 2
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, uptr: edge)) == err(.EFAULT))
        #expect(h.file.context.objects().filter { $0.kind == .hwptNested }.isEmpty)
        // Success: every mock IOTLB entry holds the data's value.
        let nested = Self.allocNested(s)
        for k: UInt32 in 0...3 { #expect(Self.checkIOTLB(h, nested, k, Self.iotlbDefault) == 0) }
        #expect(Self.checkIOTLB(h, nested, 4, Self.iotlbDefault) == err(.EINVAL))
        #expect(Self.checkIOTLB(h, nested, 0, 0) == err(.EINVAL))
        #expect(Self.checkIOTLB(h, s.parent, 0, Self.iotlbDefault) == err(.ENOENT))
        // A nested HWPT on a nested HWPT: EINVAL. The parent is held.
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, pt: nested)) == err(.EINVAL))
        #expect(SelftestOpsTests.destroy(h, s.parent) == err(.EBUSY))
        // FAULT_ID_VALID with no such fault: ENOENT, and the HWPT is not left behind.
        let count = h.file.context.objects().count
        #expect(h.call(R.hwptAlloc, Self.nestedCmd(s, flags: IOMMUConstants.hwptFaultIDValid, fault: .max)) == err(.ENOENT))
        #expect(h.file.context.objects().count == count)
    }

    /// HWPT_INVALIDATE of `reqs` ((flags, iotlb_id) pairs) on `hwpt`: (rc, entry_num after).
    static func invalidate(_ h: ABIHarness, _ hwpt: UInt32, _ reqs: [(UInt32, UInt32)], type: UInt32 = 0xdead_beef,
                           entryLen: UInt32 = 8, entryNum: UInt32? = nil, uptr: UInt64? = nil) -> (Int64, UInt32) {
        let array = h.alloc(4096)
        var bytes: [UInt8] = []
        for (f, id) in reqs {
            for v in [f, id] { bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        }
        if !bytes.isEmpty { h.poke(array, bytes) }
        var cmd = Cmd(I.size).set32(I.hwptID, hwpt).set64(I.dataUptr, uptr ?? array).set32(I.dataType, type)
            .set32(I.entryLen, entryLen).set32(I.entryNum, entryNum ?? UInt32(reqs.count))
        let rc = h.call(R.hwptInvalidate, &cmd)
        return (rc, cmd.u32(I.entryNum))
    }

    @Test func invalidationAsTheSelftestDrivesIt() {
        let s = Self.setUp()
        let h = s.h
        let n0 = Self.allocNested(s), n1 = Self.allocNested(s)
        // A paging HWPT: EINVAL under the v6.13+ uAPI (the 6.12 test expected ENOENT); nothing done.
        #expect(Self.invalidate(h, s.parent, [(0, 0)]) == (err(.EINVAL), 0))
        #expect(Self.invalidate(h, 999, [(0, 0)]) == (err(.ENOENT), 0))
        // An empty array checks the data type.
        #expect(Self.invalidate(h, n0, []) == (0, 0))
        #expect(Self.invalidate(h, n0, [], type: 0xdad_beef) == (err(.EINVAL), 0))
        #expect(Self.invalidate(h, n0, [(0, 0)], type: 0xdad_beef) == (err(.EINVAL), 0))
        // Entry sizes: above the struct (EINVAL), below its first version (EINVAL), zero (EINVAL).
        #expect(Self.invalidate(h, n0, [(0, 0), (0, 0)], entryLen: 9, entryNum: 1) == (err(.EINVAL), 0))
        #expect(Self.invalidate(h, n0, [(0, 0)], entryLen: 1) == (err(.EINVAL), 0))
        #expect(Self.invalidate(h, n0, [(0, 0)], entryLen: 0) == (err(.EINVAL), 0))
        #expect(Self.invalidate(h, n0, [], entryNum: 1, uptr: 0) == (err(.EINVAL), 0))
        // Bad flags (EOPNOTSUPP), a bad iotlb_id (EINVAL).
        #expect(Self.invalidate(h, n0, [(0xffff_ffff, 0)]) == (err(.EOPNOTSUPP), 0))
        #expect(Self.invalidate(h, n0, [(0, 4)]) == (err(.EINVAL), 0))
        // The first done, the second refused: entry_num says 1.
        #expect(Self.invalidate(h, n0, [(0, 0), (0xffff_ffff, 1)]) == (err(.EOPNOTSUPP), 1))
        #expect(Self.invalidate(h, n0, [(0, 0), (0, 4)]) == (err(.EINVAL), 1))
        #expect(Self.checkIOTLB(h, n0, 0, 0) == 0)
        for k: UInt32 in 1...3 { #expect(Self.checkIOTLB(h, n0, k, Self.iotlbDefault) == 0) }
        #expect(Self.invalidate(h, n0, [(0, 1)]) == (0, 1))
        #expect(Self.invalidate(h, n0, [(0, 2), (0, 3)]) == (0, 2))
        for k: UInt32 in 0...3 { #expect(Self.checkIOTLB(h, n0, k, 0) == 0) }
        #expect(Self.invalidate(h, n1, [(1, 0)]) == (0, 1))
        for k: UInt32 in 0...3 { #expect(Self.checkIOTLB(h, n1, k, 0) == 0) }
        // A request past the readable array: EFAULT after the readable ones.
        let edge = h.alloc(4096) + 4096 - 8
        h.poke(edge, [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(Self.invalidate(h, n1, [], entryNum: 2, uptr: edge) == (err(.EFAULT), 1))
        // Shorter entries than the struct's first version never work; __reserved is EOPNOTSUPP.
        var reserved = Cmd(I.size).set32(I.hwptID, n0).set32(I.reserved, 1).set32(I.entryNum, 5)
        #expect(h.call(R.hwptInvalidate, &reserved) == err(.EOPNOTSUPP))
        #expect(reserved.u32(I.entryNum) == 0)
    }

    /// FAULT_QUEUE_ALLOC: (fault_id, fault fd).
    static func allocFault(_ h: ABIHarness) -> (UInt32, Int32) {
        var cmd = Cmd(ABI.FaultAlloc.size)
        #expect(h.call(R.faultQueueAlloc, &cmd) == 0)
        return (cmd.u32(ABI.FaultAlloc.outFaultID), Int32(bitPattern: cmd.u32(ABI.FaultAlloc.outFaultFD)))
    }

    static func trigger(_ h: ABIHarness, _ idev: UInt32, pasid: UInt32 = 1) -> Int64 {
        h.call(R.testCmd, SelftestOpsTests.op(.triggerIOPF).set32(T.TriggerIOPF.devID, idev).set32(T.TriggerIOPF.pasid, pasid)
            .set32(T.TriggerIOPF.grpid, 2).set32(T.TriggerIOPF.perm, 3).set64(T.TriggerIOPF.addr, 0xdead_beaf))
    }

    static func read(_ file: any AuxiliaryFile, _ count: Int) -> (Int, [UInt8]) {
        var buffer = [UInt8](repeating: 0xcc, count: max(count, 1))
        let n = buffer.withUnsafeMutableBytes { file.read(into: $0.baseAddress!, count: count) }
        return (n, buffer)
    }

    static func write(_ file: any AuxiliaryFile, _ responses: [(UInt32, UInt32)], extra: Int = 0) -> Int {
        var bytes: [UInt8] = []
        for (cookie, code) in responses {
            for v in [cookie, code] { bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        }
        bytes += [UInt8](repeating: 0, count: extra)
        return bytes.withUnsafeBytes { file.write(from: $0.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, count: bytes.count) }
    }

    @Test func faultQueueDescriptor() {
        let s = Self.setUp()
        let h = s.h
        #expect(h.call(R.faultQueueAlloc, Cmd(16).set32(ABI.FaultAlloc.flags, 1)) == err(.EOPNOTSUPP))
        let (faultID, fd) = Self.allocFault(h)
        #expect(faultID != 0 && fd >= 0)
        #expect(h.file.context.objectKind(faultID) == .fault)
        guard let file = h.broker.auxiliaryFile(fd: fd) else { Issue.record("no fault fd"); return }
        let iopf = Self.allocNested(s, flags: IOMMUConstants.hwptFaultIDValid, fault: faultID)
        #expect(Self.replace(h, s.stdev, iopf) == 0)
        #expect(SelftestOpsTests.destroy(h, iopf) == err(.EBUSY))
        // Nothing queued: a read of whole records returns 0 and never blocks; a partial record
        // size is ESPIPE.
        #expect(!file.isReadable)
        #expect(Self.read(file, 40).0 == 0)
        #expect(Self.read(file, 39).0 == -Int(LinuxErrno(rawValue: 29).rawValue))
        // TRIGGER_IOPF lands in the queue; the record carries the request and a cookie.
        #expect(Self.trigger(h, s.idev) == 0)
        #expect(file.isReadable)
        #expect(Self.read(file, 0).0 == 0)
        let (n, bytes) = Self.read(file, 80)
        #expect(n == 40)
        let r = Cmd(raw: Array(bytes[0..<40]))
        typealias P = ABI.HWPTPgFault
        #expect(r.u32(P.flags) == 3 && r.u32(P.devID) == s.idev && r.u32(P.pasid) == 1 && r.u32(P.grpid) == 2)
        #expect(r.u32(P.perm) == 3 && r.u32(P.reserved) == 0 && r.u64(P.addr) == 0xdead_beaf && r.u32(P.length) == 0)
        let cookie = r.u32(P.cookie)
        #expect(cookie == 1)
        #expect(bytes[40] == 0xcc)                        // nothing past the record
        #expect(!file.isReadable)
        // Responses: partial record ESPIPE, bad code / unknown cookie EINVAL, the good one
        // counts, and what follows a bad one is not taken.
        #expect(Self.write(file, [], extra: 4) == -29)
        #expect(Self.write(file, [(cookie, 2)]) == -Int(LinuxErrno.EINVAL.rawValue))
        #expect(Self.write(file, [(cookie + 1, 0)]) == -Int(LinuxErrno.EINVAL.rawValue))
        #expect(Self.write(file, [(cookie, 0), (cookie, 0)]) == 8)
        // A device on a HWPT without a queue: the request is dropped, not an error.
        #expect(Self.replace(h, s.stdev, s.parent) == 0)
        #expect(Self.trigger(h, s.idev) == 0)
        #expect(!file.isReadable)
        // The queue is held by the HWPT and the descriptor; closing the descriptor keeps the
        // object until DESTROY.
        #expect(SelftestOpsTests.destroy(h, faultID) == err(.EBUSY))
        #expect(SelftestOpsTests.destroy(h, iopf) == 0)
        #expect(SelftestOpsTests.destroy(h, faultID) == err(.EBUSY))
        #expect(h.broker.close(fd))
        #expect(SelftestOpsTests.destroy(h, faultID) == 0)
    }

    @Test func replaceAwayAnswersPendingRequests() {
        let s = Self.setUp()
        let h = s.h
        let (faultID, fd) = Self.allocFault(h)
        let file = h.broker.auxiliaryFile(fd: fd)!
        let iopf = Self.allocNested(s, flags: IOMMUConstants.hwptFaultIDValid, fault: faultID)
        #expect(Self.replace(h, s.stdev, iopf) == 0)
        #expect(Self.trigger(h, s.idev) == 0)
        #expect(Self.trigger(h, s.idev, pasid: 0) == 0)         // no PASID: the RID's HWPT takes it too
        // Read one group (room for one record), leave the other queued.
        let (n, bytes) = Self.read(file, 40)
        #expect(n == 40 && Cmd(raw: Array(bytes[0..<40])).u32(ABI.HWPTPgFault.flags) == 3)
        #expect(file.isReadable)
        // Replacing the device away answers both on its behalf: nothing to read, the cookie dead.
        #expect(Self.replace(h, s.stdev, s.ioas) == 0)
        #expect(!file.isReadable)
        #expect(Self.write(file, [(1, 0)]) == -Int(LinuxErrno.EINVAL.rawValue))
        // The iommufd stays open while the descriptor does; closing both tears everything down.
        h.file.release()
        #expect(h.file.context.objectKind(faultID) == .fault)
        #expect(h.broker.close(fd))
        #expect(h.file.context.objects().isEmpty)
    }
}
