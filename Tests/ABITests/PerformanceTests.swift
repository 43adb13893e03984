// Dispatch cost with a user-memory seam as cheap as the in-process interposer's (plain
// copies of host memory): reports ns per ioctl. The bound is loose (debug builds, shared CI
// machines); run `swift test -c release --filter PerformanceTests` for real figures.

import Testing
import IOMMUABI
import IOMMUEngine
import ProcessMemory
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// User memory that is this process's memory: pointers are host addresses.
final class DirectUserMemory: UserMemoryAccess {
    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool {
        guard let p = UnsafeRawPointer(bitPattern: UInt(uptr)) else { return false }
        destination.copyMemory(from: p, byteCount: count)
        return true
    }
    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        guard let p = UnsafeMutableRawPointer(bitPattern: UInt(uptr)) else { return false }
        p.copyMemory(from: source, byteCount: count)
        return true
    }
}

func nanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

@Suite("Performance")
struct PerformanceTests {
    @Test func dispatchCost() {
        let space = SimulatedAddressSpace()
        let platform = Platform(machine: ABITestMachine.make(), physicalMemory: space)
        let file = IOMMUFDFile(platform: platform, memory: space, user: DirectUserMemory(), broker: TestBroker(),
                               options: ABIOptions())
        defer { file.release() }
        _ = file.context
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        let arg = UInt64(UInt(bitPattern: buffer))
        func measure(_ request: UInt32, _ setup: (StructBytes) -> Void, expect: Int64) -> Double {
            let iterations = 20_000
            let b = StructBytes(buffer)
            setup(b)
            #expect(file.ioctl(UInt(request), arg) == expect)
            let start = nanoseconds()
            for _ in 0..<iterations {
                setup(b)
                _ = file.ioctl(UInt(request), arg)
            }
            return Double(nanoseconds() - start) / Double(iterations)
        }
        var ioas: UInt32 = 0
        _ = measure(IOMMURequest.ioasAlloc, { $0.set32(0, 12); $0.set32(4, 0) }, expect: 0)
        ioas = StructBytes(buffer).u32(8)
        let destroy = measure(IOMMURequest.destroy, { $0.set32(0, 8); $0.set32(4, 0) }, expect: err(.ENOENT))
        let ranges = measure(IOMMURequest.ioasIOVARanges, { b in
            b.set32(0, 32); b.set32(4, ioas); b.set32(8, 0); b.set32(12, 0); b.set64(16, 0)
        }, expect: err(.EMSGSIZE))
        let option = measure(IOMMURequest.option, { b in
            b.set32(0, 24); b.set32(4, 1); b.set16(8, 1); b.set16(10, 0); b.set32(12, ioas)
        }, expect: 0)
        let version = measure(VFIORequest.getAPIVersion, { _ in }, expect: 0)
        print("ns/ioctl: DESTROY(ENOENT) \(destroy), IOVA_RANGES \(ranges), OPTION(GET) \(option), VFIO_GET_API_VERSION \(version)")
        #expect(destroy < 50_000 && ranges < 50_000 && option < 50_000)
    }
}
