// B7 (one ioctl through the interposer) and B9 (VFIO type1 compat MAP_DMA / UNMAP_DMA).
//
// Both need the ABI layer (Sources/IOMMUABI: IOMMUFDFile.ioctl(request, arg)). The package
// manifest adds it as a dependency when the root package exports an `IOMMUABI` library
// product; until then `canImport(IOMMUABI)` is false and these rows say "not measured yet".
// The reference of B7 (a real ioctl syscall) is measured either way, so the row shows what
// the interposer will be held to.
//
// With the ABI layer, B9 runs entirely in-process through IOMMUFDFile (compat MAP_DMA/UNMAP_DMA
// against native IOAS_MAP/IOAS_UNMAP on the same file, same range, a VT-d domain attached),
// and B7 measures the in-process half of the interposer path: IOMMUFDFile.ioctl of
// IOAS_IOVA_RANGES, called the way the interposer's entry point calls it. The C half of the
// interposer (LD_PRELOAD, fd lookup, the call into Swift) is not in that number.

import CBenchReference
import IOMMUFD
#if canImport(Glibc)
import Glibc
#endif
#if canImport(IOMMUABI)
import IOMMUABI
#endif

/// Median ns of one real ioctl on /dev/null (ENOTTY): B7's reference.
func realIoctlNS(_ n: Int, fd: Int32) -> Double { Double(cb_ioctl_loop(fd, n)) / Double(n) }

/// Compiles interposer/NAME.c (a plain C program) into a temporary executable and returns its
/// path (the caller unlinks it).
func compileInterposerProgram(_ name: String, id: String) throws -> String {
    let source = (parentDirectory("\(#filePath)") ?? ".") + "/../../interposer/\(name).c"
    guard access(source, R_OK) == 0 else { throw BenchError("\(id): cannot read \(source)") }
    let exe = "/tmp/uiommufd-bench-\(name)-\(getpid())"
    let compile = try shell("cc -O2 -o \(quote(exe)) \(quote(source)) 2>&1")
    guard compile.status == 0 else { throw BenchError("\(id): cc failed: \(compile.output)") }
    return exe
}

/// A word for /bin/sh.
func quote(_ s: String) -> String { "'" + s.replacingOccurrences("'", "'\\''") + "'" }

/// B7 through the real interposer: compiles interposer/b7_ioctl.c (plain C) and runs it with
/// LD_PRELOAD=`preload`; it interleaves IOMMU_OPTION get, IOAS_IOVA_RANGES and a real ioctl on
/// /dev/null per repetition and prints ns per ioctl.
func runB7Interposer(_ cfg: Config, preload: String) throws -> [ResultRow] {
    guard access(preload, R_OK) == 0 else { throw BenchError("B7: no preload library at \(preload)") }
    let exe = try compileInterposerProgram("b7_ioctl", id: "B7")
    defer { unlink(exe) }
    let reps = cfg.quick ? 5 : 21
    let n = cfg.quick ? 20_000 : 100_000
    log("B7: IOMMU_OPTION get and IOAS_IOVA_RANGES through LD_PRELOAD=\(preload) vs a real ioctl on /dev/null (\(reps) reps)")
    let run = try shell("LD_PRELOAD=\(quote(preload)) \(quote(exe)) \(reps) \(n) 2>&1")
    guard run.status == 0 else { throw BenchError("B7: the interposed program failed: \(run.output)") }
    var option: [Double] = [], ranges: [Double] = [], null: [Double] = []
    for line in run.output.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count == 8, f[0] == "rep", let o = Double(f[3]), let r = Double(f[5]), let z = Double(f[7]) else { continue }
        option.append(o); ranges.append(r); null.append(z)
    }
    guard option.count == reps else { throw BenchError("B7: unexpected output: \(run.output)") }
    func measured(_ ours: [Double]) -> Measured {
        Measured(ours: median(ours), reference: median(null), ratio: median(zip(ours, null).map { $0 / $1 }),
                 oursAll: ours, referenceAll: null)
    }
    let note = "C program (interposer/b7_ioctl.c) under LD_PRELOAD=\(preload); \(reps) interleaved repetitions of \(n) ioctls; IOAS with nothing attached"
    return [
        ResultRow(id: "B7", benchmark: "IOMMU_OPTION get through the interposer (LD_PRELOAD)", unit: "ns/ioctl",
                  reference: "real ioctl on /dev/null (ENOTTY)", goal: 0.5, measured: measured(option), notes: [note]),
        ResultRow(id: "B7", benchmark: "IOAS_IOVA_RANGES through the interposer (LD_PRELOAD)", unit: "ns/ioctl",
                  reference: "real ioctl on /dev/null (ENOTTY)", goal: 0.5, measured: measured(ranges)),
    ]
}

/// B14, server mode: compiles interposer/b14_shared.c (plain C) and runs it under
/// `uiommufd run --shared`; it interleaves IOMMU_OPTION gets served by the server with round
/// trips of the same message sizes to a forked echo process over a SOCK_SEQPACKET socketpair.
func runB14Shared(_ cfg: Config, uiommufd: String) throws -> [ResultRow] {
    guard access(uiommufd, X_OK) == 0 else { throw BenchError("B14: no uiommufd at \(uiommufd)") }
    let exe = try compileInterposerProgram("b14_shared", id: "B14")
    defer { unlink(exe) }
    let reps = cfg.quick ? 5 : 21
    let n = cfg.quick ? 2_000 : 20_000
    log("B14: IOMMU_OPTION get through `uiommufd run --shared` vs a plain UNIX-socket round trip (\(reps) reps)")
    let run = try shell("\(quote(uiommufd)) run --shared -- \(quote(exe)) \(reps) \(n) 2>&1")
    guard run.status == 0 else { throw BenchError("B14: the program failed: \(run.output)") }
    var shared: [Double] = [], socket: [Double] = []
    for line in run.output.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count == 6, f[0] == "rep", let a = Double(f[3]), let b = Double(f[5]) else { continue }
        shared.append(a); socket.append(b)
    }
    guard shared.count == reps else { throw BenchError("B14: unexpected output: \(run.output)") }
    let measured = Measured(ours: median(shared), reference: median(socket),
                            ratio: median(zip(shared, socket).map { $0 / $1 }), oursAll: shared, referenceAll: socket)
    return [ResultRow(id: "B14", benchmark: "IOMMU_OPTION get in server mode (uiommufd run --shared)", unit: "ns/ioctl",
                      reference: "UNIX-socket round trip to a forked echo process (same sizes)", goal: 2.0,
                      measured: measured,
                      notes: ["C program (interposer/b14_shared.c) under \(uiommufd) run --shared; \(reps) interleaved repetitions of \(n) round trips"])]
}

/// Runs `command` with /bin/sh and returns its exit status and output.
func shell(_ command: String) throws -> (status: Int32, output: String) {
    guard let f = popen(command, "r") else { throw BenchError("popen failed") }
    var out = ""
    var buf = [CChar](repeating: 0, count: 4096)
    while fgets(&buf, 4096, f) != nil { out += stringFromCBuffer(buf) }
    let status = pclose(f)
    return ((status >> 8) & 0xff, out)
}

#if canImport(IOMMUABI)

/// copy_from_user / copy_to_user for our own in-process structs.
final class DirectUserMemory: UserMemoryAccess, @unchecked Sendable {
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

final class NoFileDescriptors: FileDescriptorBroker, @unchecked Sendable {
    func install(_ file: any AuxiliaryFile) -> Int32 { -95 }
    func fileMemory(fd: Int32) -> (any PinnableMemory)? { nil }
}

/// Raw ioctl argument structs, laid out as include/uapi/linux/{iommufd,vfio}.h say.
enum Req {
    static let ioasAlloc: UInt = 0x3b81
    static let ioasIOVARanges: UInt = 0x3b84
    static let ioasMap: UInt = 0x3b85
    static let ioasUnmap: UInt = 0x3b86
    static let option: UInt = 0x3b87
    static let vfioIOAS: UInt = 0x3b88
    static let vfioSetIOMMU: UInt = 0x3b66
    static let vfioMapDMA: UInt = 0x3b71
    static let vfioUnmapDMA: UInt = 0x3b72
}

struct ABIRig {
    let file: IOMMUFDFile
    let ioas: UInt32
    let device: PlatformDevice

    init(memory: LocalProcessMemory) throws {
        let platform = Platform(machine: .default, physicalMemory: memory)
        let f = IOMMUFDFile(platform: platform, memory: memory, user: DirectUserMemory(), broker: NoFileDescriptors(),
                            options: ABIOptions(pinPolicy: .unlimited))
        // IOMMU_IOAS_ALLOC { u32 size; u32 flags; u32 out_ioas_id }
        var alloc: (UInt32, UInt32, UInt32) = (12, 0, 0)
        let rc = withUnsafeMutableBytes(of: &alloc) { f.ioctl(Req.ioasAlloc, UInt64(UInt(bitPattern: $0.baseAddress))) }
        guard rc == 0 else { throw BenchError("IOAS_ALLOC: \(rc)") }
        let id = alloc.2
        // IOMMU_VFIO_IOAS { u32 size; u32 ioas_id; u16 op (SET = 1); u16 reserved }
        var set: (UInt32, UInt32, UInt16, UInt16) = (12, id, 1, 0)
        let rc2 = withUnsafeMutableBytes(of: &set) { f.ioctl(Req.vfioIOAS, UInt64(UInt(bitPattern: $0.baseAddress))) }
        guard rc2 == 0 else { throw BenchError("IOMMU_VFIO_IOAS SET: \(rc2)") }
        // VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU = 3): integer argument.
        let rc3 = f.ioctl(Req.vfioSetIOMMU, 3)
        guard rc3 == 0 else { throw BenchError("VFIO_SET_IOMMU: \(rc3)") }
        guard let d = platform.device(named: "gpu0") else { throw BenchError("no gpu0") }
        // The VFIO device cdev is not part of the iommufd file: bind and attach through the engine.
        let dev = try f.context.bind(d)
        _ = try f.context.attach(device: dev, to: id)
        file = f
        ioas = id
        device = d
    }

    @inline(__always) func call(_ request: UInt, _ p: UnsafeMutableRawPointer) -> Int64 {
        file.ioctl(request, UInt64(UInt(bitPattern: p)))
    }
}

func runB9(_ cfg: Config) throws -> [ResultRow] {
    let bytes: UInt64 = cfg.quick ? 16 * MiB : 256 * MiB
    let buffer = try HostMapping.populated4K(bytes)
    let rig = try ABIRig(memory: LocalProcessMemory())
    defer { rig.file.release() }
    let iova: UInt64 = 1 << 36
    // vfio_iommu_type1_dma_map { u32 argsz; u32 flags (READ 1 | WRITE 2); u64 vaddr; u64 iova; u64 size }
    var dmaMap: (UInt32, UInt32, UInt64, UInt64, UInt64) = (32, 3, buffer.address, iova, bytes)
    // vfio_iommu_type1_dma_unmap { u32 argsz; u32 flags; u64 iova; u64 size }
    var dmaUnmap: (UInt32, UInt32, UInt64, UInt64) = (24, 0, iova, bytes)
    // iommu_ioas_map { u32 size; u32 flags (FIXED 1 | WRITEABLE 2 | READABLE 4); u32 ioas_id; u32 rsvd; u64 user_va; u64 length; u64 iova }
    var ioasMap: (UInt32, UInt32, UInt32, UInt32, UInt64, UInt64, UInt64) = (40, 7, rig.ioas, 0, buffer.address, bytes, iova)
    // iommu_ioas_unmap { u32 size; u32 ioas_id; u64 iova; u64 length }
    var ioasUnmap: (UInt32, UInt32, UInt64, UInt64) = (24, rig.ioas, iova, bytes)
    func check(_ rc: Int64, _ what: String) throws { if rc < 0 { throw BenchError("B9: \(what) returned \(rc)") } }
    log("B9: VFIO_IOMMU_MAP_DMA/UNMAP_DMA vs IOAS_MAP/IOAS_UNMAP of \(formatBytes(Double(bytes))) through IOMMUFDFile.ioctl")
    let m = try interleave(reps: cfg.reps, ours: {
        var rc: Int64 = 0
        let a = timeNS { rc = withUnsafeMutableBytes(of: &dmaMap) { rig.call(Req.vfioMapDMA, $0.baseAddress!) } }
        try check(rc, "MAP_DMA")
        dmaUnmap.3 = bytes
        let b = timeNS { rc = withUnsafeMutableBytes(of: &dmaUnmap) { rig.call(Req.vfioUnmapDMA, $0.baseAddress!) } }
        try check(rc, "UNMAP_DMA")
        return [a, b]
    }, reference: {
        var rc: Int64 = 0
        let a = timeNS { rc = withUnsafeMutableBytes(of: &ioasMap) { rig.call(Req.ioasMap, $0.baseAddress!) } }
        try check(rc, "IOAS_MAP")
        let b = timeNS { rc = withUnsafeMutableBytes(of: &ioasUnmap) { rig.call(Req.ioasUnmap, $0.baseAddress!) } }
        try check(rc, "IOAS_UNMAP")
        return [a, b]
    })
    let size = formatBytes(Double(bytes))
    return [
        ResultRow(id: "B9", benchmark: "VFIO_IOMMU_MAP_DMA \(size) populated 4K via the compat path", unit: "ns/call",
                  reference: "native IOAS_MAP, same range, same file", goal: 1.2, measured: m[0],
                  notes: ["in-process IOMMUFDFile.ioctl, VT-d domain attached (type1v2)"]),
        ResultRow(id: "B9", benchmark: "VFIO_IOMMU_UNMAP_DMA \(size) via the compat path", unit: "ns/call",
                  reference: "native IOAS_UNMAP, same range, same file", goal: 1.2, measured: m[1]),
    ]
}

func runB7(_ cfg: Config) throws -> [ResultRow] {
    let fd = open("/dev/null", O_RDWR)
    guard fd >= 0 else { throw BenchError("open /dev/null") }
    defer { close(fd) }
    let rig = try ABIRig(memory: LocalProcessMemory())
    defer { rig.file.release() }
    // A second IOAS with nothing attached, as the LD_PRELOAD program (which cannot attach a
    // device yet) sees it: one usable range.
    var alloc: (UInt32, UInt32, UInt32) = (12, 0, 0)
    guard withUnsafeMutableBytes(of: &alloc, { rig.call(Req.ioasAlloc, $0.baseAddress!) }) == 0 else {
        throw BenchError("B7: IOAS_ALLOC failed")
    }
    // iommu_ioas_iova_ranges { u32 size; u32 ioas_id; u32 num_iovas; u32 rsvd; u64 allowed_iovas; u64 out_iova_alignment }
    let ranges = UnsafeMutableRawPointer.allocate(byteCount: 16 * 16, alignment: 8)
    defer { ranges.deallocate() }
    var arg: (UInt32, UInt32, UInt32, UInt32, UInt64, UInt64) = (32, alloc.2, 16, 0, UInt64(UInt(bitPattern: ranges)), 0)
    // iommu_option { u32 size; u32 option_id (RLIMIT_MODE 0); u16 op (GET 1); u16 rsvd; u32 object_id; u64 val64 }
    var option: (UInt32, UInt32, UInt16, UInt16, UInt32, UInt64) = (24, 0, 1, 0, 0, 0)
    let n = cfg.quick ? 20_000 : 200_000
    log("B7: IOAS_IOVA_RANGES and IOMMU_OPTION get through IOMMUFDFile.ioctl (in-process) vs a real ioctl on /dev/null")
    let m = try interleave(reps: cfg.cheapReps, ours: {
        var bad = 0
        let ranges = timeNS {
            withUnsafeMutableBytes(of: &arg) { p in
                for _ in 0..<n {
                    p.storeBytes(of: UInt32(16), toByteOffset: 8, as: UInt32.self)
                    if rig.call(Req.ioasIOVARanges, p.baseAddress!) != 0 { bad += 1 }
                }
            }
        }
        let opt = timeNS {
            withUnsafeMutableBytes(of: &option) { p in
                for _ in 0..<n where rig.call(Req.option, p.baseAddress!) != 0 { bad += 1 }
            }
        }
        if bad != 0 { throw BenchError("B7: \(bad) ioctls failed") }
        return [ranges / Double(n), opt / Double(n)]
    }, reference: { let r = realIoctlNS(n, fd: fd); return [r, r] })
    let note = "in-process diagnostic: the C interposer's share (symbol interposition, fd table, call into Swift) is not included (see the LD_PRELOAD rows, --preload)"
    return [ResultRow(id: "B7", benchmark: "IOAS_IOVA_RANGES via IOMMUFDFile.ioctl, no LD_PRELOAD",
                      unit: "ns/ioctl", reference: "real ioctl on /dev/null (ENOTTY)", goal: 0.5, measured: m[0],
                      notes: [note]),
            ResultRow(id: "B7", benchmark: "IOMMU_OPTION get (RLIMIT_MODE) via IOMMUFDFile.ioctl, no LD_PRELOAD",
                      unit: "ns/ioctl", reference: "real ioctl on /dev/null (ENOTTY)", goal: 0.5, measured: m[1])]
}

#else

func runB7(_ cfg: Config) throws -> [ResultRow] {
    let fd = open("/dev/null", O_RDWR)
    guard fd >= 0 else { throw BenchError("open /dev/null") }
    defer { close(fd) }
    let n = cfg.quick ? 20_000 : 200_000
    let samples = (0..<max(3, cfg.reps)).map { _ in realIoctlNS(n, fd: fd) }
    return [.pending(id: "B7", benchmark: "one ioctl through the interposer (IOAS_IOVA_RANGES)", unit: "ns/ioctl",
                     reference: "real ioctl on /dev/null (ENOTTY)", goal: 0.5,
                     reason: "needs an IOMMUABI library product (IOMMUFDFile) + libuiommufd-preload.so",
                     referenceValue: median(samples))]
}

func runB9(_ cfg: Config) throws -> [ResultRow] {
    [.pending(id: "B9", benchmark: "VFIO_IOMMU_MAP_DMA + UNMAP_DMA via the compat path", unit: "ns/call",
              reference: "native IOAS_MAP + IOAS_UNMAP, same range", goal: 1.2,
              reason: "needs an IOMMUABI library product (IOMMUFDFile with the VFIO type1 compat ioctls)")]
}

#endif
