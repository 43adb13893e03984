// The trace format, concurrency, and a bounded random fuzz of the whole ioctl surface.

import Testing
import IOMMUABI
import IOMMUEngine
import UIOMMUBase
import Synchronization

@Suite("Trace")
struct TraceTests {
    @Test func lines() {
        let h = ABIHarness(trace: true)
        let ioas = h.allocIOAS()
        let va = h.space.map(length: 0x10000)
        let map = Cmd(40).set32(ABI.IOASMap.flags, 7).set32(ABI.IOASMap.ioasID, ioas).set64(ABI.IOASMap.userVA, va)
            .set64(ABI.IOASMap.length, 0x10000).set64(ABI.IOASMap.iova, 0x100000)
        _ = h.call(IOMMURequest.ioasMap, map)
        _ = h.call(IOMMURequest.ioasMap, map)
        _ = h.file.ioctl(0x3bff, 0)
        _ = h.file.ioctl(UInt(VFIORequest.checkExtension), 3)
        _ = h.call(IOMMURequest.destroy, Cmd(8, sizeField: 7))
        let lines = h.lines
        #expect(lines.count == 6)
        #expect(lines[0] == "IOMMU_IOAS_ALLOC {flags=0x0} = 0 => {out_ioas_id=1}")
        let hexVA = String(va, radix: 16)
        #expect(lines[1] == "IOMMU_IOAS_MAP {flags=FIXED_IOVA|WRITEABLE|READABLE, ioas_id=1, user_va=0x\(hexVA), length=0x10000, iova=0x100000} = 0 => {iova=0x100000}")
        #expect(lines[2].hasPrefix("IOMMU_IOAS_MAP {flags=FIXED_IOVA|WRITEABLE|READABLE, ioas_id=1, user_va=0x\(hexVA), length=0x10000, iova=0x100000} = -1 EEXIST ("))
        #expect(lines[3] == "ioctl(0x3bff) = -1 ENOTTY")
        #expect(lines[4] == "VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU) = 1")
        #expect(lines[5] == "IOMMU_DESTROY = -1 EINVAL (size 7 is below the minimum 8)")
    }

    @Test func vfioStructsAndReserved() {
        let h = ABIHarness(trace: true)
        _ = h.call(IOMMURequest.ioasMap, Cmd(40).set32(ABI.IOASMap.reserved, 2))
        _ = h.call(VFIORequest.iommuMapDMA, Cmd(32).set32(4, 3))
        _ = h.call(IOMMURequest.ioasAlloc, Cmd(16))
        let lines = h.lines
        #expect(lines[0] == "IOMMU_IOAS_MAP {flags=0, ioas_id=0, __reserved=0x2, user_va=0x0, length=0x0, iova=0x0} = -1 EOPNOTSUPP (__reserved is not zero)")
        #expect(lines[1] == "VFIO_IOMMU_MAP_DMA {argsz=32, flags=READ|WRITE, vaddr=0x0, iova=0x0, size=0x0} = -1 ENODEV (no compatibility IOAS)")
        #expect(lines[2] == "IOMMU_IOAS_ALLOC {size=16, flags=0x0} = 0 => {out_ioas_id=1}")
    }

    @Test func faultsAndHoles() {
        let h = ABIHarness(selftest: true, trace: true)
        _ = h.file.ioctl(UInt(IOMMURequest.destroy), 0)
        _ = h.file.ioctl(0x3b95, 0)
        _ = h.call(0x3b95, Cmd(8))
        _ = h.call(IOMMURequest.destroy, Cmd(9).set8(8, 1))
        _ = h.file.ioctl(UInt(VFIORequest.iommuDirtyPages), 0)
        _ = h.call(IOMMURequest.option, Cmd(24).set32(ABI.Option.optionID, 1).set16(ABI.Option.op, 1).set32(ABI.Option.objectID, 7))
        #expect(h.lines == [
            "IOMMU_DESTROY = -1 EFAULT (cannot read the size at 0x0)",
            "ioctl(0x3b95) = -1 EFAULT (cannot read the size at 0x0)",
            "ioctl(0x3b95) = -1 ENOTTY",
            "IOMMU_DESTROY = -1 E2BIG (non-zero bytes past the 8-byte struct)",
            "VFIO_IOMMU_DIRTY_PAGES = -1 ENOTTY",
            "IOMMU_OPTION {option_id=HUGE_PAGES, op=GET, object_id=7, val64=0} = -1 ENOENT (no IOAS with ID 7)",
        ])
    }
}

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

@Suite("Robustness")
struct RobustnessTests {
    @Test func concurrentClients() async {
        let h = ABIHarness()
        let ioas = h.allocIOAS()
        let dev = h.bind("mdev0")
        _ = try? h.file.context.attach(device: dev, to: ioas)
        let failures = Counter()
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    let va = h.space.map(length: 0x4000)
                    let iova = 0x100_0000 + UInt64(t) * 0x10_0000
                    for _ in 0..<200 {
                        let map = Cmd(40).set32(ABI.IOASMap.flags, 7).set32(ABI.IOASMap.ioasID, ioas)
                            .set64(ABI.IOASMap.userVA, va).set64(ABI.IOASMap.length, 0x4000).set64(ABI.IOASMap.iova, iova)
                        let unmap = Cmd(24).set32(ABI.IOASUnmap.ioasID, ioas).set64(ABI.IOASUnmap.iova, iova)
                            .set64(ABI.IOASUnmap.length, 0x4000)
                        if h.call(IOMMURequest.ioasMap, map) != 0 { failures.value.add(1, ordering: .relaxed) }
                        if h.call(IOMMURequest.ioasUnmap, unmap) != 0 { failures.value.add(1, ordering: .relaxed) }
                        _ = h.file.ioctl(UInt(VFIORequest.checkExtension), 4)
                    }
                }
            }
        }
        #expect(failures.value.load(ordering: .relaxed) == 0)
        #expect(h.pinned == 0)
        h.file.release()
    }

    static let validErrnos: Set<Int32> = [
        LinuxErrno.EPERM, .ENOENT, .EFAULT, .E2BIG, .EBADF, .ENOMEM, .EBUSY, .EEXIST, .ENODEV, .EINVAL, .ENOTTY,
        .EOVERFLOW, .EMSGSIZE, .EOPNOTSUPP, .EADDRINUSE, .ENOSPC,
    ].reduce(into: Set<Int32>()) { $0.insert($1.rawValue) }

    @Test(arguments: [UInt64(1), 2, 3, 4])
    func fuzz(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let h = ABIHarness(selftest: seed % 2 == 0, trace: seed == 3, canSetRlimitMode: seed == 4)
        // Some state to reach deep paths: IOASes, a bound and attached device, mapped memory.
        let ioas = h.allocIOAS()
        _ = h.allocIOAS()
        let dev = h.bind("mdev0")
        _ = h.bind("vdev0")
        _ = try? h.file.context.attach(device: dev, to: ioas)
        let fd = h.broker.addFile(TestFile(space: h.space, size: 0x10000))
        let buffers = (0..<4).map { _ in h.space.map(length: 0x8000) }
        let holes = (0..<2).map { _ -> UInt64 in
            let va = h.space.map(length: 0x2000)
            h.space.unmap(va: va + 0x1000, length: 0x1000)
            return va + 0x1000 - 24
        }
        let table = IOMMUIoctls.table
        let vfio: [UInt32] = [0x3b64, 0x3b65, 0x3b66, 0x3b70, 0x3b71, 0x3b72, 0x3b75]
        func pointer() -> UInt64 {
            switch rng.below(10) {
            case 0: return 0
            case 1: return holes[Int(rng.below(2))]
            case 2: return rng.next()
            default: return buffers[Int(rng.below(4))] + rng.below(0x7000)
            }
        }
        func value(_ width: Int) -> UInt64 {
            switch rng.below(8) {
            case 0: return 0
            case 1: return rng.below(6)                        // small IDs
            case 2: return UInt64(fd)
            case 3: return pointer()
            case 4: return 0x100_0000 + rng.below(64) * 0x800  // mock-aperture IOVAs
            case 5: return rng.below(0x10) * 0x1000            // lengths
            case 6: return UInt64.max >> (rng.below(64))
            default: return rng.next() & (width == 8 ? .max : 0xffff_ffff)
            }
        }
        for _ in 0..<1500 {
            var request: UInt32
            var size: Int
            switch rng.below(10) {
            case 0: request = 0x3b00 | UInt32(rng.below(256)); size = Int(rng.below(96))
            case 1: request = vfio[Int(rng.below(UInt64(vfio.count)))]; size = 32
            default:
                let op = table[Int(rng.below(UInt64(table.count)))]
                request = op.request
                size = rng.chance(80) ? op.size : Int(rng.below(UInt64(op.size) + 16))
            }
            var cmd = Cmd(max(size, 4), sizeField: UInt32(size), buffer: 96)
            // Fill fields with plausible or random values.
            var offset = 4
            while offset + 8 <= cmd.bytes.count {
                if rng.chance(50) {
                    cmd = cmd.set64(offset, value(8))
                } else {
                    cmd = cmd.set32(offset, UInt32(truncatingIfNeeded: value(4))).set32(offset + 4, UInt32(truncatingIfNeeded: value(4)))
                }
                offset += 8
            }
            if rng.chance(70) { cmd = cmd.set32(0, UInt32(size)) }
            if rng.chance(50), cmd.bytes.count > 12 { cmd = cmd.set32(12, 0) }   // __reserved often zero
            let rc: Int64
            if rng.chance(5) {
                rc = h.file.ioctl(UInt(request), pointer())
            } else if request == 0x3b65 || request == 0x3b66 {
                rc = h.file.ioctl(UInt(request), rng.below(12))
            } else {
                rc = h.call(request, &cmd)
            }
            #expect(rc >= 0 || Self.validErrnos.contains(Int32(-rc)),
                    "request 0x\(String(request, radix: 16)) returned \(rc)")
        }
        // As at process exit: the descriptors the calls handed out (fault queues) close too;
        // each holds the iommufd open until it does.
        for fd in h.broker.openAuxiliary { h.broker.close(fd) }
        h.file.release()
        #expect(h.file.context.objects().isEmpty)
        #expect(h.pinned == 0, "pins left after release")
        if seed == 3 { #expect(h.lines.count >= 1500) }
    }
}
