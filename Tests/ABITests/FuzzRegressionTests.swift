// What the coverage-guided fuzzer of the ABI layer (Fuzz/, `Fuzz/run.sh`) found, as plain
// tests: each crash it finds is minimized, kept in Fuzz/regressions/, and written here as the
// same ioctl sequence through IOMMUFDFile.ioctl, so `swift test` catches it without libFuzzer.
// A test for a bug that is not fixed yet says `// FUZZ BUG:` and what is wrong.
//
// So far (about 70 minutes, 4.1 million programs, with ASan) the fuzzer found no crash and no
// broken invariant in the ABI layer or the engine. The test below pins down the one situation
// its seeds exercise that no other suite does: two iommufds on one machine.

import Testing
import IOMMUABI
import IOMMUEngine
import ProcessMemory
import UIOMMUBase

@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    /// Issues `cmd` on `file` the way ABIHarness.call does for its own file.
    func call(_ h: ABIHarness, _ file: IOMMUFDFile, _ request: UInt32, _ cmd: inout Cmd) -> Int64 {
        let va = h.alloc(cmd.bytes.count)
        h.poke(va, cmd.bytes)
        let rc = file.ioctl(UInt(request), va)
        cmd.bytes = h.peek(va, cmd.bytes.count)
        return rc
    }

    /// IOMMU_TEST_OP_MD_CHECK_REFS: every page of [va, va + length) is pinned `refs` times.
    func checkRefs(_ h: ABIHarness, _ file: IOMMUFDFile, va: UInt64, length: UInt64, refs: UInt32) -> Int64 {
        var cmd = Cmd(ABI.TestCmd.size).set32(ABI.TestCmd.op, SelftestOp.mdCheckRefs.rawValue)
            .set64(ABI.TestCmd.CheckRefs.length, length).set64(ABI.TestCmd.CheckRefs.uptr, va)
            .set32(ABI.TestCmd.CheckRefs.refs, refs)
        return call(h, file, IOMMURequest.testCmd, &cmd)
    }

    /// The fuzzer's `two-files` seed: a device bound in one iommufd cannot be bound in another,
    /// the same user pages mapped by both are pinned twice, and each file lets go of its own
    /// pins when it closes.
    @Test func twoFilesOnOneMachine() {
        let h = ABIHarness(selftest: true)
        let second = IOMMUFDFile(platform: h.platform, memory: h.space, user: h.user, broker: h.broker,
                                 options: ABIOptions(selftestOps: true, pinPolicy: .unlimited))
        let length: UInt64 = 0x4000

        // File 1: vdev0 attached to an IOAS that maps four pages.
        let dev0 = h.bind("vdev0")
        let ioas1 = h.allocIOAS()
        #expect((try? h.file.context.attach(device: dev0, to: ioas1)) != nil)
        let (va, _) = h.map(ioas: ioas1, length: length, iova: 0x10_0000)
        #expect(checkRefs(h, h.file, va: va, length: length, refs: 1) == 0)

        // File 2: vdev0 is taken; vdev1 maps the same pages elsewhere.
        guard let vdev0 = h.platform.device(named: "vdev0"), let vdev1 = h.platform.device(named: "vdev1") else {
            Issue.record("no vdev0 / vdev1")
            return
        }
        #expect(throws: IOMMUError.self) { try second.context.bind(vdev0) }
        let dev1: UInt32
        do { dev1 = try second.context.bind(vdev1) } catch {
            Issue.record("bind vdev1 in the second file: \(error)")
            return
        }
        var alloc = Cmd(ABI.IOASAlloc.size)
        #expect(call(h, second, IOMMURequest.ioasAlloc, &alloc) == 0)
        let ioas2 = alloc.u32(ABI.IOASAlloc.outIOASID)
        #expect((try? second.context.attach(device: dev1, to: ioas2)) != nil)
        var map = Cmd(ABI.IOASMap.size).set32(ABI.IOASMap.flags, 7).set32(ABI.IOASMap.ioasID, ioas2)
            .set64(ABI.IOASMap.userVA, va).set64(ABI.IOASMap.length, length).set64(ABI.IOASMap.iova, 0x100_0000)
        #expect(call(h, second, IOMMURequest.ioasMap, &map) == 0)
        #expect(checkRefs(h, second, va: va, length: length, refs: 2) == 0)
        #expect(checkRefs(h, h.file, va: va, length: length, refs: 2) == 0)

        // Closing the second file drops its pins only.
        second.release()
        #expect(second.context.objects().isEmpty)
        #expect(checkRefs(h, h.file, va: va, length: length, refs: 1) == 0)
        #expect(h.pinned == length / 4096)

        h.file.release()
        #expect(h.file.context.objects().isEmpty)
        #expect(h.pinned == 0)
    }
}
