// The seed corpus: meaningful ioctl sequences written in the program format of Program.swift
// (the encoder below mirrors its decoder). `UIOMMUFD_FUZZ_WRITE_CORPUS=DIR uiommufd-fuzz`
// writes them (Fuzz/make-corpus.sh); the result is committed as Fuzz/corpus/.
//
// IDs in seeds follow the engine's rule (lowest free from 1): the devices bound at the start
// are 1 (nvme0) and 2 (dma0), so the first IOAS is 3.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import IOMMUABI

/// A value as `ProgramRunner.value` decodes it.
indirect enum V {
    case zero
    case small(UInt8)
    case ptr(P)
    case iova(UInt8, UInt8)           // base index, step (bit 7: 2 MiB steps)
    case len(L)
    case boundary(UInt8)
    case raw(UInt64)
    case id(UInt8)
    case fd(UInt8)                    // index into Values.fds: 0 = memfd A (50), 1 = memfd B (51)
    case flags(UInt8)
    case pageShift(UInt8)
    case count(UInt8)
}

/// A pointer as `ProgramRunner.pointer` decodes it.
enum P {
    case null
    case slot(UInt8)                  // array slot 0-15
    case page(UInt8, UInt8)           // span page 0-31 (16 RW, 4 RO, 4 unmapped, 8 RW), offset × 16
    case huge(UInt8, UInt8)           // 2 MiB region page, offset × 16
    case boundary(UInt8, UInt8)       // end of mapping i, minus n bytes
    case memfd(UInt16)
    case raw(UInt64)
    case kernel(UInt16)
}

/// A length as `ProgramRunner.length` decodes it.
enum L {
    case pages(UInt8)                 // 1 …
    case huge(UInt8)                  // 2 MiB × 1 …
    case bytes(UInt16)
    case zero, max, four
    case raw(UInt64)
}

enum SizeMode {
    case full, min
    case belowMin(UInt8)
    case zeroTail(UInt8)              // 8 × (1 …) zero bytes past the struct
    case nonzeroTail(UInt8, UInt8, UInt8)
    case raw(UInt32)
}

enum Place {
    case slot(UInt8)                  // struct area 0-3
    case roStraddle(UInt8)            // starts n bytes before the read-only page
    case gapStraddle(UInt8)           // starts n bytes before the unmapped pages
    case ro
    case ptr(P)
}

/// A struct field for the encoder: offset, width (4 or 8), value.
typealias F = (Int, Int, V)

struct ProgramBuilder {
    var bytes: [UInt8]

    /// Which iommufd the next operations go to (with header h2 bit 1: two files).
    var file: UInt8 = 0

    init(_ h0: UInt8 = 0, _ h1: UInt8 = 0, _ h2: UInt8 = 0) { bytes = [h0, h1, h2] }

    /// An operation byte.
    mutating func opcode(_ x: UInt8) { b(x | file << 4) }

    mutating func b(_ x: UInt8) { bytes.append(x) }
    mutating func le(_ v: UInt64, _ n: Int) { for i in 0..<n { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }

    mutating func value(_ v: V) {
        switch v {
        case .zero: b(0)
        case .small(let x): b(1); b(x)
        case .ptr(let p): b(2); pointer(p)
        case .iova(let i, let s): b(3); b(i); b(s)
        case .len(let l): b(4); length(l)
        case .boundary(let i): b(5); b(i)
        case .raw(let x): b(6); le(x, 8)
        case .id(let x): b(7); b(x)
        case .fd(let x): b(8); b(x)
        case .flags(let x): b(9); b(x)
        case .pageShift(let x): b(10); b(x)
        case .count(let x): b(11); b(x)
        }
    }

    mutating func pointer(_ p: P) {
        switch p {
        case .null: b(0)
        case .slot(let s): b(1); b(s)
        case .page(let p, let o): b(2); b(p); b(o)
        case .huge(let p, let o): b(3); b(p); b(o)
        case .boundary(let i, let n): b(4); b(i); b(n)
        case .memfd(let o): b(5); le(UInt64(o), 2)
        case .raw(let x): b(6); le(x, 8)
        case .kernel(let x): b(7); le(UInt64(x), 2)
        }
    }

    mutating func length(_ l: L) {
        switch l {
        case .pages(let n): b(0); b(n &- 1)
        case .huge(let n): b(1); b(n &- 1)
        case .bytes(let x): b(2); le(UInt64(x), 2)
        case .zero: b(3)
        case .max: b(4)
        case .four: b(5)
        case .raw(let x): b(6); le(x, 8)
        }
    }

    mutating func size(_ s: SizeMode) {
        switch s {
        case .full: b(0)
        case .min: b(3)
        case .belowMin(let k): b(4); b(k)
        case .zeroTail(let k): b(5); b(k &- 1)
        case .nonzeroTail(let k, let pos, let x): b(6); b(k &- 1); b(pos); b(x)
        case .raw(let x): b(7); le(UInt64(x), 4)
        }
    }

    mutating func place(_ p: Place) {
        switch p {
        case .slot(let i): b(i & 3)
        case .roStraddle(let n): b(4); b(n)
        case .gapStraddle(let n): b(5); b(n)
        case .ro: b(6)
        case .ptr(let q): b(7); pointer(q)
        }
    }

    /// The struct words after the size field (`fields` at offsets ≥ 4).
    mutating func words(_ structSize: Int, _ fields: [F], skipFirst: Bool = false) {
        func at(_ o: Int) -> F? { fields.first { $0.0 == o } }
        if !skipFirst { value(at(4)?.2 ?? .zero) }
        var o = 8
        let total = max(8, (structSize + 7) & ~7)
        while o + 8 <= total {
            if let f = at(o), f.1 == 8 {
                b(0); value(f.2)
            } else {
                b(1); value(at(o)?.2 ?? .zero); value(at(o + 4)?.2 ?? .zero)
            }
            o += 8
        }
    }

    static func tableIndex(_ request: UInt32) -> UInt8 {
        guard let i = IOMMUIoctls.table.firstIndex(where: { $0.request == request }) else { fatalError("no request 0x\(String(request, radix: 16))") }
        return UInt8(i)
    }

    /// An iommufd ioctl of the table.
    mutating func ioctl(_ request: UInt32, _ fields: [F], size: SizeMode = .full, place: Place = .slot(0)) {
        opcode(0); b(Self.tableIndex(request)); self.size(size)
        let structSize = IOMMUIoctls.table.first { $0.request == request }!.size
        words(structSize, fields)
        self.place(place)
    }

    /// IOMMU_TEST_CMD with `op`.
    mutating func test(_ op: UInt8, _ fields: [F], size: SizeMode = .full, place: Place = .slot(1)) {
        opcode(8); b(op); self.size(size)
        words(ABI.TestCmd.size, fields, skipFirst: true)
        self.place(place)
    }

    /// A VFIO ioctl: sub 0 version, 1 check extension, 2 set IOMMU, 6-8 dirty/enable/disable.
    mutating func vfioSimple(_ sub: UInt8, _ arg: UInt8) { opcode(9); b(sub); b(arg) }

    /// A VFIO struct ioctl: sub 3 GET_INFO, 4 MAP_DMA, 5 UNMAP_DMA. argszMode 0 = the struct size,
    /// 4 = struct + 8 × extra.
    mutating func vfioStruct(_ sub: UInt8, argsz: (UInt8, UInt8?), _ fields: [F], size: Int, place: Place = .slot(2)) {
        opcode(9); b(sub); b(argsz.0); if let x = argsz.1 { b(x) }
        words(size, fields)
        self.place(place)
    }

    mutating func raw(_ kind: UInt8, _ request: UInt64, size: UInt8, _ fields: [F], place: Place = .slot(3)) {
        opcode(10); b(kind)
        switch kind % 4 {
        case 0: b(UInt8(truncatingIfNeeded: request))
        case 1: le(request, 4)
        case 2: le(request, 8)
        default: b(UInt8(truncatingIfNeeded: request)); b(UInt8(truncatingIfNeeded: request >> 16))
        }
        b(size); b(0)
        words(Int(size), fields)
        b(0); self.place(place)
    }

    /// An iommu_iova_range array in slot `slot`: (start, length) pairs.
    mutating func ranges(slot: UInt8, _ ranges: [(V, L)]) {
        opcode(11); b(1); b(slot); b(UInt8(ranges.count))
        for (start, len) in ranges {
            guard case .iova(let i, let s) = start else { fatalError("ranges take .iova starts") }
            b(i); b(s); b(0); length(len)
        }
    }

    mutating func memBytes(slot: UInt8, offset: UInt16, _ data: [UInt8]) {
        opcode(11); b(0); b(slot); le(UInt64(offset), 2); b(UInt8(data.count)); bytes += data
    }

    mutating func pattern(slot: UInt8, _ byte: UInt8, count: UInt16) { opcode(11); b(2); b(slot); b(byte); le(UInt64(count), 2) }

    mutating func attach(_ dev: UInt8, _ pt: UInt8) { opcode(12); b(0); b(dev); b(pt) }
    mutating func detach(_ dev: UInt8) { opcode(12); b(1); b(dev) }
    mutating func unbind(_ dev: UInt8) { opcode(12); b(2); b(dev) }
    mutating func bind(_ index: UInt8) { opcode(12); b(3); b(index) }

    /// DMA by bound device `dev` (index into the bound list) at iova (base, step) + 8 × off.
    mutating func dma(_ dev: UInt8, write: Bool, iova: (UInt8, UInt8), off: UInt8 = 0, count: UInt16, pasid: UInt16? = nil) {
        opcode(13); b(dev); b((write ? 1 : 0) | (pasid != nil ? 2 : 0))
        if let pasid { le(UInt64(pasid), 2) }
        b(iova.0); b(iova.1); b(off); le(UInt64(count &- 1), 2)
    }

    mutating func aux(_ sel: UInt8, _ index: UInt8, _ extra: [UInt8] = []) { opcode(14); b(sel); b(index); bytes += extra }
    mutating func failNth(_ n: UInt8) { opcode(15); b(n &- 1) }
}

// MARK: Shorthands for common commands

/// IOVA base indexes of Values.iovaBases.
enum IB {
    static let zero: UInt8 = 0, k4: UInt8 = 1, m1: UInt8 = 2, m2: UInt8 = 3, m16: UInt8 = 4, g1: UInt8 = 5
    static let belowRMRR: UInt8 = 6, rmrr: UInt8 = 7, belowMSI: UInt8 = 8, msi: UInt8 = 9, g4: UInt8 = 10
    static let top39: UInt8 = 11, bit39: UInt8 = 12, top48: UInt8 = 13, bit48: UInt8 = 14, last: UInt8 = 15
}

typealias R = IOMMURequest
typealias C = ABI

extension ProgramBuilder {
    mutating func allocIOAS(place: Place = .slot(0)) { ioctl(R.ioasAlloc, [], place: place) }
    mutating func map(_ ioas: UInt8, flags: UInt8 = 7, va: P, _ len: L, iova: V = .iova(IB.m1, 0), place: Place = .slot(0)) {
        ioctl(R.ioasMap, [(C.IOASMap.flags, 4, .flags(flags)), (C.IOASMap.ioasID, 4, .id(ioas)),
                          (C.IOASMap.userVA, 8, .ptr(va)), (C.IOASMap.length, 8, .len(len)), (C.IOASMap.iova, 8, iova)],
              place: place)
    }
    mutating func unmap(_ ioas: UInt8, iova: V, _ len: L) {
        ioctl(R.ioasUnmap, [(C.IOASUnmap.ioasID, 4, .id(ioas)), (C.IOASUnmap.iova, 8, iova), (C.IOASUnmap.length, 8, .len(len))])
    }
    mutating func destroy(_ id: UInt8) { ioctl(R.destroy, [(C.Destroy.id, 4, .id(id))]) }
    mutating func iovaRanges(_ ioas: UInt8, capacity: UInt8, slot: P = .slot(0), place: Place = .slot(0)) {
        ioctl(R.ioasIOVARanges, [(C.IOASIOVARanges.ioasID, 4, .id(ioas)), (C.IOASIOVARanges.numIOVAs, 4, .count(capacity)),
                                 (C.IOASIOVARanges.allowedIOVAs, 8, .ptr(slot))], place: place)
    }
    mutating func hwptAlloc(dev: UInt8, pt: UInt8, flags: UInt8 = 0, dataType: V = .zero, dataLen: V = .zero, data: V = .zero) {
        ioctl(R.hwptAlloc, [(C.HWPTAlloc.flags, 4, .flags(flags)), (C.HWPTAlloc.devID, 4, .id(dev)), (C.HWPTAlloc.ptID, 4, .id(pt)),
                            (C.HWPTAlloc.dataType, 4, dataType), (C.HWPTAlloc.dataLen, 4, dataLen), (C.HWPTAlloc.dataUptr, 8, data)])
    }
    mutating func setDirty(_ hwpt: UInt8, _ enable: Bool) {
        ioctl(R.hwptSetDirtyTracking, [(C.HWPTSetDirtyTracking.flags, 4, .flags(enable ? 1 : 0)), (C.HWPTSetDirtyTracking.hwptID, 4, .id(hwpt))])
    }
    mutating func getDirty(_ hwpt: UInt8, flags: UInt8 = 0, iova: V, _ len: L, pageShift: UInt8 = 12, data: P) {
        ioctl(R.hwptGetDirtyBitmap, [(C.HWPTGetDirtyBitmap.hwptID, 4, .id(hwpt)), (C.HWPTGetDirtyBitmap.flags, 4, .flags(flags)),
                                     (C.HWPTGetDirtyBitmap.iova, 8, iova), (C.HWPTGetDirtyBitmap.length, 8, .len(len)),
                                     (C.HWPTGetDirtyBitmap.pageSize, 8, .pageShift(pageShift)), (C.HWPTGetDirtyBitmap.data, 8, .ptr(data))])
    }
    mutating func hwInfo(dev: UInt8, flags: UInt8 = 0, dataLen: UInt8, data: P, type: V = .zero) {
        ioctl(R.getHWInfo, [(C.HWInfo.flags, 4, .flags(flags)), (C.HWInfo.devID, 4, .id(dev)), (C.HWInfo.dataLen, 4, .small(dataLen)),
                            (C.HWInfo.dataUptr, 8, .ptr(data)), (C.HWInfo.inDataType, 4, type)])
    }
    mutating func option(id: UInt8, op: UInt8, object: UInt8, value: V = .zero) {
        // option_id at 4; op (u16) and __reserved (u16) share the u32 at 8.
        ioctl(R.option, [(C.Option.optionID, 4, .small(id)), (C.Option.op, 4, .small(op)), (C.Option.objectID, 4, .id(object)),
                         (C.Option.val64, 8, value)])
    }
    mutating func vfioIOAS(_ op: UInt8, ioas: UInt8) {
        ioctl(R.vfioIOAS, [(C.VFIOIOAS.ioasID, 4, .id(ioas)), (C.VFIOIOAS.op, 4, .small(op))])
    }
}

enum Seeds {
    static var all: [(String, [UInt8])] {
        var seeds: [(String, [UInt8])] = []
        func add(_ name: String, _ h0: UInt8 = 0, _ h1: UInt8 = 0, _ h2: UInt8 = 0, _ body: (inout ProgramBuilder) -> Void) {
            var p = ProgramBuilder(h0, h1, h2)
            body(&p)
            seeds.append((name, p.bytes))
        }

        add("ioas-map-unmap") { p in
            p.allocIOAS()
            p.map(3, va: .page(24, 0), .pages(4), iova: .iova(IB.m1, 0))
            p.map(3, va: .page(24, 0), .pages(4), iova: .iova(IB.m1, 2))       // EEXIST
            p.unmap(3, iova: .iova(IB.m1, 0), .pages(4))
            p.unmap(3, iova: .iova(IB.m1, 0), .pages(4))                        // ENOENT
            p.destroy(3)
        }
        add("ioas-map-auto-iova-ranges") { p in
            p.allocIOAS()
            p.map(3, flags: 6, va: .page(0, 0), .pages(8), iova: .zero)
            p.map(3, flags: 4, va: .page(16, 0), .pages(2), iova: .zero)         // read-only memory, READABLE
            p.map(3, flags: 6, va: .page(16, 0), .pages(2), iova: .zero)         // EFAULT once pinned
            p.iovaRanges(3, capacity: 8, slot: .slot(0))
            p.iovaRanges(3, capacity: 0, slot: .null)                           // EMSGSIZE
            p.iovaRanges(3, capacity: 4, slot: .page(16, 0))                    // read-only array
        }
        add("attach-map-dma") { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.map(3, va: .page(24, 0), .pages(8), iova: .iova(IB.m1, 0))
            p.dma(0, write: true, iova: (IB.m1, 0), count: 4096)
            p.dma(0, write: false, iova: (IB.m1, 1), off: 3, count: 8000)
            p.dma(0, write: true, iova: (IB.m1, 9), count: 16)                   // not present
            p.unmap(3, iova: .zero, .max)
            p.dma(0, write: false, iova: (IB.m1, 0), count: 16)
        }
        add("hwpt-dirty-bitmap") { p in
            p.allocIOAS()
            p.hwptAlloc(dev: 1, pt: 3, flags: 2)                                 // HWPT 4
            p.attach(1, 4)
            p.map(3, va: .page(24, 0), .pages(8), iova: .iova(IB.m1, 0))
            p.setDirty(4, true)
            p.dma(0, write: true, iova: (IB.m1, 1), count: 4096)
            p.dma(0, write: true, iova: (IB.m1, 5), off: 9, count: 300)
            p.getDirty(4, flags: 1, iova: .iova(IB.m1, 0), .pages(8), data: .slot(1))
            p.getDirty(4, iova: .iova(IB.m1, 0), .pages(8), data: .slot(1))
            p.getDirty(4, iova: .iova(IB.m1, 0), .pages(8), pageShift: 13, data: .boundary(0, 1))
            p.getDirty(4, iova: .iova(IB.m1, 0), .pages(8), data: .page(16, 0))   // read-only bitmap
            p.setDirty(4, false)
            p.destroy(4)                                                          // EBUSY: attached
        }
        add("hwpt-dirty-huge") { p in
            p.allocIOAS()
            p.hwptAlloc(dev: 1, pt: 3, flags: 2)
            p.attach(1, 4)
            p.map(3, va: .huge(0, 0), .huge(1), iova: .iova(IB.m2, 0))
            p.setDirty(4, true)
            p.dma(0, write: true, iova: (IB.m2, 7), count: 8192)
            p.getDirty(4, iova: .iova(IB.m2, 0), .huge(1), data: .slot(2))
            p.getDirty(4, iova: .iova(IB.m2, 0), .huge(1), pageShift: 21, data: .slot(2))
            p.getDirty(4, iova: .iova(IB.m2, 0), .raw(UInt64.max - 0x1fffff), data: .slot(2))
        }
        add("hwpt-alloc-variants") { p in
            p.allocIOAS()
            p.hwptAlloc(dev: 1, pt: 3, flags: 1)                                 // NEST_PARENT
            p.hwptAlloc(dev: 2, pt: 3, flags: 2)                                 // dma0: no dirty tracking
            p.hwptAlloc(dev: 1, pt: 3, flags: 0x10)
            p.hwptAlloc(dev: 1, pt: 4, flags: 0)                                 // on a HWPT: EOPNOTSUPP
            p.hwptAlloc(dev: 1, pt: 3, dataType: .raw(0xdead), dataLen: .small(8), data: .ptr(.slot(3)))
            p.hwptAlloc(dev: 1, pt: 3, flags: 4)                                 // FAULT_ID_VALID
            p.hwptAlloc(dev: 9, pt: 3)
            p.attach(2, 3)
            p.attach(1, 4)
        }
        add("allow-iovas") { p in
            p.allocIOAS()
            p.ranges(slot: 2, [(.iova(IB.m1, 0), .pages(16)), (.iova(IB.m16, 0), .huge(2))])
            p.ioctl(R.ioasAllowIOVAs, [(C.IOASAllowIOVAs.ioasID, 4, .id(3)), (C.IOASAllowIOVAs.numIOVAs, 4, .count(2)),
                                       (C.IOASAllowIOVAs.allowedIOVAs, 8, .ptr(.slot(2)))])
            p.map(3, flags: 6, va: .page(0, 0), .pages(4), iova: .zero)
            p.iovaRanges(3, capacity: 8)
            p.ranges(slot: 3, [(.iova(IB.m1, 0), .pages(16)), (.iova(IB.m1, 4), .pages(1))])   // overlap
            p.ioctl(R.ioasAllowIOVAs, [(C.IOASAllowIOVAs.ioasID, 4, .id(3)), (C.IOASAllowIOVAs.numIOVAs, 4, .count(2)),
                                       (C.IOASAllowIOVAs.allowedIOVAs, 8, .ptr(.slot(3)))])
            p.ioctl(R.ioasAllowIOVAs, [(C.IOASAllowIOVAs.ioasID, 4, .id(3)), (C.IOASAllowIOVAs.numIOVAs, 4, .count(31)),
                                       (C.IOASAllowIOVAs.allowedIOVAs, 8, .ptr(.boundary(1, 32)))])
        }
        add("ioas-copy") { p in
            p.allocIOAS()
            p.allocIOAS()
            p.attach(1, 4)
            p.map(3, va: .page(0, 0), .pages(8), iova: .iova(IB.m1, 0))
            p.ioctl(R.ioasCopy, [(C.IOASCopy.flags, 4, .flags(7)), (C.IOASCopy.dstIOASID, 4, .id(4)), (C.IOASCopy.srcIOASID, 4, .id(3)),
                                 (C.IOASCopy.length, 8, .len(.pages(4))), (C.IOASCopy.dstIOVA, 8, .iova(IB.m16, 0)),
                                 (C.IOASCopy.srcIOVA, 8, .iova(IB.m1, 2))])
            p.ioctl(R.ioasCopy, [(C.IOASCopy.flags, 4, .flags(6)), (C.IOASCopy.dstIOASID, 4, .id(4)), (C.IOASCopy.srcIOASID, 4, .id(3)),
                                 (C.IOASCopy.length, 8, .len(.pages(8))), (C.IOASCopy.srcIOVA, 8, .iova(IB.m1, 0))])
            p.dma(0, write: true, iova: (IB.m16, 1), count: 64)
            p.unmap(3, iova: .zero, .max)
            p.dma(0, write: false, iova: (IB.m16, 1), count: 64)
        }
        add("map-file") { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.ioctl(R.ioasMapFile, [(C.IOASMapFile.flags, 4, .flags(7)), (C.IOASMapFile.ioasID, 4, .id(3)), (C.IOASMapFile.fd, 4, .fd(0)),
                                    (C.IOASMapFile.start, 8, .zero), (C.IOASMapFile.length, 8, .len(.pages(4))),
                                    (C.IOASMapFile.iova, 8, .iova(IB.m1, 0))])
            p.ioctl(R.ioasMapFile, [(C.IOASMapFile.flags, 4, .flags(6)), (C.IOASMapFile.ioasID, 4, .id(3)), (C.IOASMapFile.fd, 4, .fd(1)),
                                    (C.IOASMapFile.start, 8, .len(.pages(1))), (C.IOASMapFile.length, 8, .len(.pages(2)))])
            p.ioctl(R.ioasMapFile, [(C.IOASMapFile.flags, 4, .flags(6)), (C.IOASMapFile.ioasID, 4, .id(3)), (C.IOASMapFile.fd, 4, .fd(2)),
                                    (C.IOASMapFile.length, 8, .len(.pages(1)))])
            p.dma(0, write: true, iova: (IB.m1, 1), count: 100)
            p.ioctl(R.ioasChangeProcess, [])
            p.unmap(3, iova: .iova(IB.m1, 0), .pages(4))
        }
        add("options", 0x02) { p in
            p.option(id: 0, op: 1, object: 0)
            p.option(id: 0, op: 0, object: 0, value: .small(1))
            p.allocIOAS()
            p.option(id: 1, op: 1, object: 3)
            p.option(id: 1, op: 0, object: 3, value: .small(0))
            p.map(3, va: .huge(0, 0), .huge(1), iova: .iova(IB.m2, 0))
            p.option(id: 1, op: 0, object: 3, value: .small(1))
            p.option(id: 0, op: 0, object: 0, value: .small(0))                 // EBUSY
            p.option(id: 2, op: 0, object: 3)
        }
        add("vfio-compat") { p in
            p.allocIOAS()
            p.vfioSimple(0, 0)
            p.vfioSimple(1, 3)
            p.vfioSimple(2, 3)                                                   // ENODEV
            p.vfioIOAS(1, ioas: 3)
            p.vfioIOAS(0, ioas: 0)
            p.vfioSimple(2, 3)
            p.vfioSimple(1, 4)
            p.attach(1, 3)
            p.vfioStruct(3, argsz: (4, 40), [], size: C.VFIOType1Info.size, place: .ptr(.slot(4)))
            p.vfioStruct(3, argsz: (0, nil), [], size: C.VFIOType1Info.size)
            p.vfioStruct(4, argsz: (0, nil), [(C.VFIODMAMap.flags, 4, .flags(3)), (C.VFIODMAMap.vaddr, 8, .ptr(.page(24, 0))),
                                              (C.VFIODMAMap.iova, 8, .iova(IB.m1, 0)), (C.VFIODMAMap.length, 8, .len(.pages(4)))],
                         size: C.VFIODMAMap.size)
            p.vfioStruct(5, argsz: (0, nil), [(C.VFIODMAUnmap.iova, 8, .iova(IB.m1, 1)), (C.VFIODMAUnmap.length, 8, .len(.pages(1)))],
                         size: C.VFIODMAUnmap.size)
            p.vfioStruct(5, argsz: (0, nil), [(C.VFIODMAUnmap.iova, 8, .iova(IB.m1, 0)), (C.VFIODMAUnmap.length, 8, .len(.pages(4)))],
                         size: C.VFIODMAUnmap.size)
            p.vfioStruct(5, argsz: (0, nil), [(C.VFIODMAUnmap.flags, 4, .flags(2))], size: C.VFIODMAUnmap.size)
            p.vfioSimple(6, 0)
            p.vfioIOAS(2, ioas: 0)
            p.vfioIOAS(0, ioas: 0)
        }
        add("vfio-type1-v1") { p in
            p.allocIOAS()
            p.vfioIOAS(1, ioas: 3)
            p.vfioSimple(2, 1)
            p.vfioStruct(4, argsz: (0, nil), [(C.VFIODMAMap.flags, 4, .flags(3)), (C.VFIODMAMap.vaddr, 8, .ptr(.page(0, 0))),
                                              (C.VFIODMAMap.iova, 8, .iova(IB.m1, 0)), (C.VFIODMAMap.length, 8, .len(.pages(8)))],
                         size: C.VFIODMAMap.size)
            p.attach(2, 3)
            p.vfioStruct(5, argsz: (0, nil), [(C.VFIODMAUnmap.iova, 8, .iova(IB.m1, 3)), (C.VFIODMAUnmap.length, 8, .len(.pages(2)))],
                         size: C.VFIODMAUnmap.size)
            p.vfioStruct(3, argsz: (4, 30), [], size: C.VFIOType1Info.size)
            p.vfioStruct(5, argsz: (0, nil), [(C.VFIODMAUnmap.iova, 8, .zero), (C.VFIODMAUnmap.length, 8, .len(.max))],
                         size: C.VFIODMAUnmap.size)
        }
        add("hw-info") { p in
            p.hwInfo(dev: 1, dataLen: 64, data: .slot(5))
            p.hwInfo(dev: 2, dataLen: 8, data: .slot(5))
            p.hwInfo(dev: 1, flags: 1, dataLen: 24, data: .slot(5), type: .small(1))
            p.hwInfo(dev: 1, flags: 1, dataLen: 24, data: .slot(5), type: .small(2))   // EOPNOTSUPP
            p.hwInfo(dev: 1, dataLen: 200, data: .boundary(1, 40))                     // clear_user into the gap
            p.hwInfo(dev: 1, dataLen: 0, data: .null)
            p.ioctl(R.getHWInfo, [(C.HWInfo.devID, 4, .id(1))], size: .min)
        }
        add("hw-info-pasid", 0x20) { p in
            p.hwInfo(dev: 3, dataLen: 64, data: .slot(6))
            p.allocIOAS()
            p.attach(3, 4)
            p.map(4, va: .page(0, 0), .pages(2), iova: .iova(IB.m1, 0))
            p.dma(2, write: true, iova: (IB.m1, 0), count: 64, pasid: 5)
            p.test(18, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.PASIDAttach.pasid, 4, .small(5)), (C.TestCmd.PASIDAttach.ptID, 4, .id(4))])
            p.test(21, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.PASIDCheck.pasid, 4, .small(5)), (C.TestCmd.PASIDCheck.hwptID, 4, .id(5))])
            p.test(20, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.PASIDDetach.pasid, 4, .small(5))])
        }
        add("destroy-busy") { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.destroy(3)
            p.destroy(4)
            p.destroy(1)
            p.detach(1)
            p.destroy(4)
            p.destroy(3)
            p.destroy(3)
            p.destroy(0)
        }
        add("nic-group", 0x18) { p in
            p.allocIOAS()                                                         // 5
            p.allocIOAS()                                                         // 6
            p.attach(3, 5)
            p.attach(4, 6)                                                        // a group shares one domain
            p.attach(4, 5)
            p.map(5, va: .page(0, 0), .pages(4), iova: .iova(IB.m1, 0))
            p.dma(2, write: true, iova: (IB.m1, 0), count: 32)
            p.dma(3, write: false, iova: (IB.m1, 0), count: 32)
            p.unbind(3)
            p.bind(2)
        }
        add("dma0-reserved") { p in
            p.allocIOAS()
            p.attach(2, 3)
            p.iovaRanges(3, capacity: 8)
            p.map(3, va: .page(0, 0), .pages(1), iova: .iova(IB.rmrr, 0))      // RMRR: EADDRINUSE
            p.map(3, va: .page(0, 0), .pages(1), iova: .iova(IB.msi, 0))       // MSI window
            p.map(3, va: .page(0, 0), .pages(1), iova: .iova(IB.top39, 0x81))  // past 39 bits
            p.map(3, va: .page(0, 0), .huge(1), iova: .iova(IB.top39, 0))
            p.attach(1, 3)
            p.vfioIOAS(1, ioas: 3)
            p.vfioSimple(1, 4)                                                    // DMA_CC: not all coherent
        }
        add("unmodeled") { p in
            p.allocIOAS()
            p.ioctl(R.hwptInvalidate, [(C.HWPTInvalidate.hwptID, 4, .id(3)), (C.HWPTInvalidate.dataUptr, 8, .ptr(.slot(7))),
                                       (C.HWPTInvalidate.entryLen, 4, .small(16)), (C.HWPTInvalidate.entryNum, 4, .small(2))])
            p.ioctl(R.hwptInvalidate, [(C.HWPTInvalidate.hwptID, 4, .id(9)), (C.HWPTInvalidate.entryNum, 4, .small(2))])
            p.ioctl(R.faultQueueAlloc, [])
            p.ioctl(R.viommuAlloc, [(C.VIOMMUAlloc.type, 4, .small(1)), (C.VIOMMUAlloc.devID, 4, .id(1)), (C.VIOMMUAlloc.hwptID, 4, .id(3))])
            p.ioctl(R.vdeviceAlloc, [(C.VDeviceAlloc.viommuID, 4, .id(5)), (C.VDeviceAlloc.devID, 4, .id(1))])
            p.ioctl(R.veventqAlloc, [(C.VEventQAlloc.type, 4, .small(1)), (C.VEventQAlloc.veventqDepth, 4, .small(4))])
            p.ioctl(R.hwQueueAlloc, [(C.HWQueueAlloc.type, 4, .small(1)), (C.HWQueueAlloc.length, 8, .len(.max)),
                                     (C.HWQueueAlloc.nestingParentIOVA, 8, .iova(IB.last, 0))])
            p.map(3, va: .page(0, 0), .pages(1))
            p.ioctl(R.ioasChangeProcess, [])                                       // EINVAL: a user map exists
        }
        add("size-rule") { p in
            p.ioctl(R.ioasAlloc, [], size: .min)
            p.ioctl(R.ioasAlloc, [], size: .belowMin(0))
            p.ioctl(R.ioasAlloc, [], size: .zeroTail(2))
            p.ioctl(R.ioasAlloc, [], size: .nonzeroTail(2, 9, 1))
            p.ioctl(R.ioasAlloc, [], size: .raw(0x10_0000))
            p.ioctl(R.ioasAlloc, [], size: .raw(0xffff_ffff))
            p.ioctl(R.ioasAlloc, [], place: .ro)                                   // cannot write out_ioas_id
            p.ioctl(R.ioasAlloc, [], place: .roStraddle(6))
            p.ioctl(R.ioasAlloc, [], place: .gapStraddle(6))
            p.ioctl(R.ioasAlloc, [], place: .ptr(.null))
            p.ioctl(R.ioasAlloc, [], place: .ptr(.kernel(1)))
            p.ioctl(R.destroy, [(C.Destroy.id, 4, .id(1))], size: .zeroTail(4), place: .gapStraddle(12))
            p.ioctl(R.hwptAlloc, [(C.HWPTAlloc.devID, 4, .id(1)), (C.HWPTAlloc.ptID, 4, .id(3))], size: .min)
        }
        add("write-back-faults") { p in
            p.allocIOAS()
            p.map(3, va: .page(0, 0), .pages(1), iova: .zero, place: .ro)          // mapped, EFAULT
            p.map(3, flags: 6, va: .page(1, 0), .pages(1), iova: .zero, place: .roStraddle(8))
            p.unmap(3, iova: .zero, .max)
            p.hwptAlloc(dev: 1, pt: 3)
            p.ioctl(R.hwptAlloc, [(C.HWPTAlloc.devID, 4, .id(1)), (C.HWPTAlloc.ptID, 4, .id(3))], place: .ro)
            p.iovaRanges(3, capacity: 2, place: .ro)
            p.option(id: 1, op: 1, object: 3)
            p.ioctl(R.option, [(C.Option.optionID, 4, .small(1)), (C.Option.op, 4, .small(1)), (C.Option.objectID, 4, .id(3))], place: .ro)
        }
        add("memlock-limit", 0x04) { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.map(3, va: .page(0, 0), .pages(16), iova: .iova(IB.m1, 0))
            p.map(3, va: .page(24, 0), .pages(8), iova: .iova(IB.m16, 0))         // over the limit
            p.map(3, va: .huge(0, 0), .huge(1), iova: .iova(IB.m2, 0x81))
            p.unmap(3, iova: .zero, .max)
            p.map(3, va: .page(24, 0), .pages(8), iova: .iova(IB.m16, 0))
        }
        add("trace-everything", 0x01) { p in
            p.allocIOAS()
            p.map(3, va: .page(0, 0), .pages(2))
            p.unmap(3, iova: .iova(IB.m1, 0), .pages(2))
            p.hwInfo(dev: 1, dataLen: 24, data: .slot(5))
            p.hwptAlloc(dev: 1, pt: 3, flags: 3)
            p.option(id: 1, op: 1, object: 3)
            p.vfioIOAS(1, ioas: 3)
            p.vfioStruct(3, argsz: (4, 20), [], size: C.VFIOType1Info.size)
            p.vfioSimple(1, 9)
            p.raw(0, 0x95, size: 8, [])
            p.test(2, [(C.TestCmd.id, 4, .id(3))])
            p.ioctl(R.destroy, [(C.Destroy.id, 4, .raw(0xdead))])
        }
        add("raw-noise") { p in
            p.raw(0, 0x80, size: 8, [(C.Destroy.id, 4, .id(1))])
            p.raw(1, 0xc004_3b81, size: 12, [])
            p.raw(2, 0xffff_ffff_0000_3b81, size: 12, [])
            p.raw(3, 0x05, size: 40, [])
            p.raw(0, 0x64, size: 4, [])
            p.raw(0, 0xa0, size: 72, [(4, 4, .small(2))])
        }
        // Selftest accesses: CREATE_ACCESS returns fd 100 (the first auxiliary fd of an input);
        // the access ops take that fd as `id`.
        add("selftest-access") { p in
            p.allocIOAS()
            p.allocIOAS()
            p.map(3, va: .page(0, 0), .pages(4), iova: .iova(IB.m16, 0))
            p.test(5, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.CreateAccess.flags, 4, .small(1))])
            p.test(7, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.AccessPages.iova, 8, .iova(IB.m16, 0)),
                       (C.TestCmd.AccessPages.length, 8, .len(.pages(2))), (C.TestCmd.AccessPages.uptr, 8, .ptr(.page(0, 0)))])
            p.test(7, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.AccessPages.flags, 4, .flags(1)),
                       (C.TestCmd.AccessPages.iova, 8, .iova(IB.m16, 1)), (C.TestCmd.AccessPages.length, 8, .len(.bytes(0x1800))),
                       (C.TestCmd.AccessPages.uptr, 8, .ptr(.page(1, 0)))])
            p.test(8, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.AccessRW.iova, 8, .iova(IB.m16, 1)),
                       (C.TestCmd.AccessRW.length, 8, .len(.bytes(100))), (C.TestCmd.AccessRW.uptr, 8, .ptr(.slot(8))),
                       (C.TestCmd.AccessRW.flags, 4, .flags(1))])
            p.test(8, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.AccessRW.iova, 8, .iova(IB.m16, 0)),
                       (C.TestCmd.AccessRW.length, 8, .len(.bytes(5000))), (C.TestCmd.AccessRW.uptr, 8, .ptr(.slot(9))),
                       (C.TestCmd.AccessRW.flags, 4, .flags(4))])
            p.test(4, [(C.TestCmd.CheckRefs.length, 8, .len(.pages(2))), (C.TestCmd.CheckRefs.uptr, 8, .ptr(.page(0, 0))),
                       (C.TestCmd.CheckRefs.refs, 4, .small(2))])
            p.test(6, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.DestroyAccessPages.accessPagesID, 4, .small(0))])
            p.unmap(3, iova: .iova(IB.m16, 0), .pages(4))                         // the access is told
            p.aux(0, 0, [16, 0])
            p.aux(1, 0, [4, 1, 2, 3, 4])
            p.aux(2, 0)
            p.test(11, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.AccessReplaceIOAS.ioasID, 4, .id(4))])
            p.test(6, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.DestroyAccessPages.accessPagesID, 4, .small(1))])
            p.aux(3, 0)
            p.test(8, [(C.TestCmd.id, 4, .small(100))])                              // EBADFD: closed
        }
        // MOCK_DOMAIN on IOAS 3: SELFTEST object 4, DEVICE 5 (a mock device, 2 KiB pages), HWPT 6.
        add("selftest-mock-domain") { p in
            p.allocIOAS()
            p.test(2, [(C.TestCmd.id, 4, .id(3))])
            p.test(1, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.AddReserved.start, 8, .iova(IB.m1, 0)),
                       (C.TestCmd.AddReserved.length, 8, .len(.pages(16)))])
            p.map(3, va: .page(0, 0), .pages(4), iova: .iova(IB.m16, 0))
            p.map(3, va: .page(0, 0), .pages(1), iova: .iova(IB.m1, 1))            // reserved
            p.test(3, [(C.TestCmd.id, 4, .id(6)), (C.TestCmd.CheckMap.iova, 8, .iova(IB.m16, 0)),
                       (C.TestCmd.CheckMap.length, 8, .len(.pages(4))), (C.TestCmd.CheckMap.uptr, 8, .ptr(.page(0, 0)))])
            p.test(4, [(C.TestCmd.CheckRefs.length, 8, .len(.pages(4))), (C.TestCmd.CheckRefs.uptr, 8, .ptr(.page(0, 0))),
                       (C.TestCmd.CheckRefs.refs, 4, .small(1))])
            p.dma(2, write: true, iova: (IB.m16, 1), count: 3000)
            p.allocIOAS()                                                           // 7
            p.test(10, [(C.TestCmd.id, 4, .id(4)), (C.TestCmd.MockDomainReplace.ptID, 4, .id(7))])
            p.test(12, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.MockDomainFlags.devFlags, 4, .flags(3))])
            p.test(9, [(C.TestCmd.MemoryLimit.limit, 4, .small(12))])
            p.map(3, va: .huge(0, 0), .huge(1), iova: .iova(IB.m16, 0x81))
            p.test(16, [(C.TestCmd.id, 4, .id(5)), (C.TestCmd.CheckDevCache.cache, 4, .raw(0xbaddad))])
            p.test(15, [(C.TestCmd.TriggerIOPF.devID, 4, .id(5)), (C.TestCmd.TriggerIOPF.addr, 8, .iova(IB.m16, 0))])
            p.test(17, [(C.TestCmd.TriggerVEvent.devID, 4, .id(5))])
            p.test(14, [(C.TestCmd.id, 4, .id(6)), (C.TestCmd.CheckIOTLB.iotlb, 4, .small(0))])
            p.test(18, [(C.TestCmd.id, 4, .id(4)), (C.TestCmd.PASIDAttach.pasid, 4, .small(1)), (C.TestCmd.PASIDAttach.ptID, 4, .id(3))])
            p.destroy(4)
            p.test(0, [])
            p.test(23, [], size: .min)
            p.test(2, [(C.TestCmd.id, 4, .id(3))], size: .belowMin(0))
        }
        // Dirty tracking on a mock domain: HWPT_ALLOC with DIRTY_TRACKING for the mock device,
        // MOCK_DOMAIN_REPLACE onto it, the DIRTY op sets bits, GET_DIRTY_BITMAP reads them.
        add("selftest-dirty") { p in
            p.allocIOAS()
            p.test(2, [(C.TestCmd.id, 4, .id(3))])                                // 4, 5 (device), 6
            p.hwptAlloc(dev: 5, pt: 3, flags: 2)                                   // 7
            p.test(10, [(C.TestCmd.id, 4, .id(4)), (C.TestCmd.MockDomainReplace.ptID, 4, .id(7))])
            p.map(3, va: .page(0, 0), .pages(8), iova: .iova(IB.m16, 0))
            p.setDirty(7, true)
            p.pattern(slot: 10, 0x55, count: 8)
            p.test(13, [(C.TestCmd.id, 4, .id(7)), (C.TestCmd.Dirty.iova, 8, .iova(IB.m16, 0)), (C.TestCmd.Dirty.length, 8, .len(.pages(8))),
                        (C.TestCmd.Dirty.pageSize, 8, .pageShift(11)), (C.TestCmd.Dirty.uptr, 8, .ptr(.slot(10)))])
            p.getDirty(7, flags: 1, iova: .iova(IB.m16, 0), .pages(8), pageShift: 11, data: .slot(11))
            p.getDirty(7, iova: .iova(IB.m16, 0), .pages(8), data: .slot(11))
            p.getDirty(7, iova: .iova(IB.m16, 0), .pages(8), pageShift: 11, data: .slot(12))
            p.test(13, [(C.TestCmd.id, 4, .id(7)), (C.TestCmd.Dirty.iova, 8, .iova(IB.m16, 0)), (C.TestCmd.Dirty.length, 8, .len(.pages(8))),
                        (C.TestCmd.Dirty.pageSize, 8, .pageShift(12)), (C.TestCmd.Dirty.uptr, 8, .ptr(.boundary(1, 1)))])
            p.setDirty(7, false)
            p.test(12, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.MockDomainFlags.devFlags, 4, .flags(1))])   // no-dirty device
            p.hwptAlloc(dev: 9, pt: 3, flags: 2)
        }
        // Two iommufds on one machine: a device bound in one is EBUSY in the other; the same
        // user pages are pinned by both (counted twice); each closes on its own.
        add("two-files", 0x08, 0, 0x02) { p in
            p.allocIOAS()                                                          // file 0: IOAS 4
            p.attach(1, 4)
            p.map(4, va: .page(0, 0), .pages(4), iova: .iova(IB.m1, 0))
            p.file = 1
            p.bind(0)                                                              // nvme0: EBUSY
            p.bind(3)                                                              // nic0.1: group owned by file 0
            p.bind(4)                                                              // pasid0 → 1
            p.allocIOAS()                                                          // 2
            p.attach(1, 2)
            p.map(2, va: .page(0, 0), .pages(4), iova: .iova(IB.m16, 0))
            p.dma(2, write: true, iova: (IB.m16, 1), count: 64)
            p.test(4, [(C.TestCmd.CheckRefs.length, 8, .len(.pages(4))), (C.TestCmd.CheckRefs.uptr, 8, .ptr(.page(0, 0))),
                       (C.TestCmd.CheckRefs.refs, 4, .small(2))])
            p.test(2, [(C.TestCmd.id, 4, .id(2))])
            p.file = 0
            p.unmap(4, iova: .zero, .max)
            p.test(4, [(C.TestCmd.CheckRefs.length, 8, .len(.pages(4))), (C.TestCmd.CheckRefs.uptr, 8, .ptr(.page(0, 0))),
                       (C.TestCmd.CheckRefs.refs, 4, .small(1))])
            p.destroy(3)
        }
        add("unbind-rebind") { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.map(3, va: .page(0, 0), .pages(2), iova: .iova(IB.m1, 0))
            p.unbind(1)
            p.bind(0)
            p.bind(0)                                                              // EBUSY: already bound
            p.bind(5)                                                              // usb0: not viable
            p.attach(4, 3)
            p.dma(2, write: true, iova: (IB.m1, 0), count: 64)
        }
        // Failure injection over a scenario that allocates, pins, grows page tables and tracks
        // dirty bits: each seed fails a different resource check.
        for n: UInt8 in [1, 2, 3, 4, 6, 9, 14] {
            add("fail-nth-\(n)", 0x40, n - 1) { p in
                p.allocIOAS()
                p.attach(1, 3)
                p.map(3, va: .page(0, 0), .pages(8), iova: .iova(IB.m1, 0))
                p.hwptAlloc(dev: 1, pt: 3, flags: 2)
                p.map(3, va: .huge(0, 0), .huge(1), iova: .iova(IB.m2, 0x81))
                p.attach(1, 5)
                p.allocIOAS()
                p.ioctl(R.ioasCopy, [(C.IOASCopy.flags, 4, .flags(6)), (C.IOASCopy.dstIOASID, 4, .id(6)), (C.IOASCopy.srcIOASID, 4, .id(3)),
                                     (C.IOASCopy.length, 8, .len(.pages(8))), (C.IOASCopy.srcIOVA, 8, .iova(IB.m1, 0))])
                p.unmap(3, iova: .zero, .max)
            }
        }
        add("fail-nth-mid-program") { p in
            p.allocIOAS()
            p.map(3, va: .page(0, 0), .pages(8), iova: .iova(IB.m1, 0))
            p.failNth(2)
            p.attach(1, 3)
            p.failNth(1)
            p.attach(2, 3)
            p.failNth(3)
            p.ioctl(R.ioasMapFile, [(C.IOASMapFile.flags, 4, .flags(7)), (C.IOASMapFile.ioasID, 4, .id(3)), (C.IOASMapFile.fd, 4, .fd(0)),
                                    (C.IOASMapFile.length, 8, .len(.pages(16))), (C.IOASMapFile.iova, 8, .iova(IB.m16, 0))])
        }
        add("release-order", 0x00, 0, 0x01) { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.map(3, va: .page(0, 0), .pages(2), iova: .iova(IB.m1, 0))
            p.test(5, [(C.TestCmd.id, 4, .id(3)), (C.TestCmd.CreateAccess.flags, 4, .small(1))])
            p.test(7, [(C.TestCmd.id, 4, .small(100)), (C.TestCmd.AccessPages.iova, 8, .iova(IB.m1, 0)),
                       (C.TestCmd.AccessPages.length, 8, .len(.pages(1))), (C.TestCmd.AccessPages.uptr, 8, .ptr(.page(0, 0)))])
        }
        add("huge-vtd-leaves") { p in
            p.allocIOAS()
            p.attach(1, 3)
            p.map(3, va: .huge(0, 0), .huge(1), iova: .iova(IB.g1, 0x80))
            p.dma(0, write: true, iova: (IB.g1, 0x81), off: 255, count: 8192)
            p.unmap(3, iova: .iova(IB.g1, 0x80), .pages(1))                      // ENOENT: partial
            p.map(3, va: .huge(1, 0), .pages(4), iova: .iova(IB.g1, 0x82))
            p.ioctl(R.ioasCopy, [(C.IOASCopy.flags, 4, .flags(7)), (C.IOASCopy.dstIOASID, 4, .id(3)), (C.IOASCopy.srcIOASID, 4, .id(3)),
                                 (C.IOASCopy.length, 8, .len(.huge(1))), (C.IOASCopy.dstIOVA, 8, .iova(IB.g4, 0)),
                                 (C.IOASCopy.srcIOVA, 8, .iova(IB.g1, 0x80))])
            p.unmap(3, iova: .zero, .max)
        }
        add("boundaries") { p in
            p.allocIOAS()
            p.map(3, va: .raw(0xffff_ffff_ffff_f000), .pages(2), iova: .iova(IB.last, 0))
            p.map(3, va: .page(0, 0), .max, iova: .zero)
            p.map(3, va: .page(0, 0), .raw(1 << 63), iova: .iova(IB.last, 0))
            p.map(3, va: .page(0, 0), .pages(1), iova: .boundary(0))
            p.map(3, flags: 7, va: .page(0, 1), .bytes(100), iova: .iova(IB.m1, 0))
            p.unmap(3, iova: .iova(IB.last, 0), .max)
            p.unmap(3, iova: .boundary(1), .four)
            p.getDirty(3, iova: .iova(IB.last, 0), .max, pageShift: 63, data: .raw(1))
            p.iovaRanges(3, capacity: 31, slot: .raw(0xffff_ffff_ffff_fff0))
        }
        return seeds
    }

    /// Writes every seed as DIR/NAME; returns how many.
    static func write(to directory: String) -> Int {
        var n = 0
        for (name, bytes) in all {
            let path = directory + "/" + name
            guard let f = fopen(path, "wb") else { fatalError("cannot write \(path)") }
            _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, bytes.count, f) }
            fclose(f)
            n += 1
        }
        return n
    }
}
