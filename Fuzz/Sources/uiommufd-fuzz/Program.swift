// An input is a program: a header, then operations until the bytes run out. Every byte
// string is a valid program (reads past the end give 0), so libFuzzer's mutations always
// mean something. The format (Fuzz/README.md has it as a table; Seeds.swift writes it):
//
//   header  h0 h1 h2
//     h0 bit0 trace (options.trace set: the trace formatter runs), bit1 CAP_SYS_RESOURCE,
//        bit2 RLIMIT_MEMLOCK of 16 pages (else unlimited), bit3/4/5 also bind nic0.0/nic0.1/
//        pasid0, bit6 arm failure injection (fail_nth = h1 + 1), bit7 do not bind dma0
//     h2 bit0 release the iommufd before the auxiliary fds (else after), bit1 open a second
//        iommufd (no devices bound at the start): bit 4 of each operation byte picks the file
//   op      o = byte % 16, then its operands:
//     0-7   IOCTL      cmd, size mode, placement, struct words
//     8     TEST_CMD   test op, size mode, placement, struct words (request fixed to 0x3ba0)
//     9     VFIO       sub (version, check/set extension, GET_INFO, MAP_DMA, UNMAP_DMA, others)
//     10    RAW        request (noise), placement, size, words
//     11    MEMORY     write bytes / an iommu_iova_range array / a pattern into user memory
//     12    ENGINE     attach, detach, unbind, bind (what VFIO device fds would do)
//     13    DMA        a device reads or writes through its IOMMU (sets dirty bits)
//     14    AUX        read / write / poll / close an fd the ABI layer installed
//     15    FAILNTH    arm failure injection now (fail the n-th resource check)
//
// A struct is built word by word (8 bytes): a selector byte says one u64 value or two u32
// values, each drawn by `value` (zero, small, pointer, IOVA, length, boundary, raw, ID, fd,
// flags, page size, count).
//
// What must hold while a program runs (a violation is a fatalError) is under "Oracles" below;
// what must hold after it is in Entry.swift. Fuzz/README.md lists both.

import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

/// Reads the input; past the end every read is 0.
struct Reader {
    let bytes: UnsafeRawBufferPointer
    var position = 0
    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var atEnd: Bool { position >= bytes.count }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    /// Up to `n` bytes (fewer at the end).
    mutating func take(_ n: Int) -> [UInt8] {
        let k = max(0, min(n, bytes.count - position))
        defer { position += k }
        return Array(bytes[position..<position + k])
    }
}

/// Value tables shared by the decoder and the seed encoder.
enum Values {
    static let iovaBases: [UInt64] = [
        0, 0x1000, 0x10_0000, 0x20_0000, 0x100_0000, 0x4000_0000, 0xdfff_f000, 0xe000_0000,
        0xfedf_f000, 0xfee0_0000, 0x1_0000_0000, 0x7f_ffe0_0000, 0x80_0000_0000, 0xffff_ffe0_0000,
        0x1_0000_0000_0000, 0xffff_ffff_ffff_f000,
    ]
    static let boundaries: [UInt64] = [
        .max, .max - 1, 1 << 63, 0xffff_ffff, 0x8000_0000, 1 << 32, 0xffff_ffff_ffff_f000, 0x7fff_ffff_ffff_ffff,
    ]
    static let fds: [UInt64] = [UInt64(Layout.memfdAFD), UInt64(Layout.memfdBFD), 100, 101, 0xffff_ffff, 0, 1]
    /// Noise requests for table slots past the real table (cmd byte % 32 >= table count).
    static let noiseRequests: [UInt] = [
        0x3b95, 0x3b9f, 0x3ba1, 0x3b7f, 0x3c85, 0x1_3b85, 0xc028_3b85, 0x0b85, 0x3b00, 0x3bff,
    ]
    /// Value kinds (selector & 15).
    enum Kind: UInt8 {
        case zero = 0, small, pointer, iova, length, boundary, raw, id, fd, flags, pageSize, count
    }
}

/// Little-endian loads from struct bytes (0 past the end).
func load32(_ b: [UInt8], _ o: Int) -> UInt32 {
    guard o + 4 <= b.count else { return 0 }
    return (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) }
}
func load64(_ b: [UInt8], _ o: Int) -> UInt64 {
    guard o + 8 <= b.count else { return 0 }
    return (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) }
}

/// What an ioctl may return: ≥ 0, or -errno with a Linux errno (1 … 133, EHWPOISON).
func validResult(_ rc: Int64) -> Bool {
    rc >= -133
}

/// Runs one program against a fresh IOMMUFDFile.
struct ProgramRunner {
    let world: World
    var r: Reader
    /// The open iommufd files (a second one when the header asks: two contexts sharing the
    /// machine, the ledger and the devices' groups); operations go to `files[current]`.
    let files: [IOMMUFDFile]
    var current = 0
    var file: IOMMUFDFile { files[current] }
    let log: (@Sendable (String) -> Void)?
    /// Device IDs the engine gave, and which platform device each is.
    var boundPerFile: [[(id: UInt32, device: PlatformDevice)]]
    /// The devices bound to the current file.
    var bound: [(id: UInt32, device: PlatformDevice)] {
        get { boundPerFile[current] }
        set { boundPerFile[current] = newValue }
    }
    /// Devices bound to any file (DMA may come from any of them).
    var allBound: [(id: UInt32, device: PlatformDevice)] { boundPerFile.flatMap { $0 } }
    /// IOVAs successfully mapped (IOAS_MAP / MAP_FILE / COPY written back), with their IOAS,
    /// for the checks after an unmap and after release.
    var mappedIOVAs: [(ioas: UInt32, iova: UInt64)] = []
    /// What each successful map said: IOAS, IOVA, length → user VA (or the memfd's VA). The
    /// area checks compare page tables with it. Forgotten by unmaps and IOAS destruction.
    struct Record { var ioas: UInt32; var iova: UInt64; var length: UInt64; var va: UInt64 }
    var recordsPerFile: [[Record]]
    var records: [Record] {
        get { recordsPerFile[current] }
        set { recordsPerFile[current] = newValue }
    }
    /// Every device bound during the input (the release check looks at all of them).
    var everBound: [PlatformDevice] = []
    static let maxOps = 256

    init(world: World, reader: Reader, files: [IOMMUFDFile], log: (@Sendable (String) -> Void)?) {
        self.world = world; self.r = reader; self.files = files; self.log = log
        boundPerFile = files.map { _ in [] }
        recordsPerFile = files.map { _ in [] }
    }

    // MARK: Generators

    mutating func value(_ width: Int) -> UInt64 {
        let sel = r.u8()
        let v: UInt64
        switch Values.Kind(rawValue: sel & 15) {
        case .zero: v = 0
        case .small: v = UInt64(r.u8())
        case .pointer: v = pointer()
        case .iova: v = iova()
        case .length: v = length()
        case .boundary: v = Values.boundaries[Int(r.u8()) % Values.boundaries.count]
        case .id: v = UInt64(r.u8() % 16)
        case .fd: v = Values.fds[Int(r.u8()) % Values.fds.count]
        case .flags: v = UInt64(r.u8())
        case .pageSize: v = 1 << UInt64(r.u8() % 64)
        case .count: v = UInt64(r.u8() % 32)
        case .raw, .none: v = r.u64()
        }
        return width == 8 ? v : v & 0xffff_ffff
    }

    mutating func pointer() -> UInt64 {
        switch r.u8() % 8 {
        case 0: return 0
        case 1: return Layout.arraySlot(Int(r.u8()))
        case 2:
            let page = UInt64(r.u8()) % Layout.spanPages
            return Layout.rwBase + page * 4096 + UInt64(r.u8()) * 16
        case 3:
            let page = UInt64(r.u8()) % 512
            return Layout.hugeBase + page * 4096 + UInt64(r.u8()) * 16
        case 4:
            let end = Layout.boundaries[Int(r.u8()) % Layout.boundaries.count]
            return end - UInt64(r.u8())
        case 5: return Layout.memfdABase + UInt64(r.u16()) % Layout.memfdASize
        case 6: return r.u64()
        default: return 0xffff_8000_0000_0000 &+ UInt64(r.u16()) &* 4096
        }
    }

    mutating func iova() -> UInt64 {
        let base = Values.iovaBases[Int(r.u8()) % Values.iovaBases.count]
        let step = r.u8()
        return step & 0x80 != 0 ? base &+ UInt64(step & 0x7f) &* 0x20_0000 : base &+ UInt64(step) &* 0x1000
    }

    mutating func length() -> UInt64 {
        switch r.u8() % 8 {
        case 0: return (UInt64(r.u8()) + 1) * 0x1000
        case 1: return (UInt64(r.u8() % 4) + 1) * 0x20_0000
        case 2: return UInt64(r.u16())
        case 3: return 0
        case 4: return .max
        case 5: return 1 << 32
        case 6: return r.u64()
        default: return (UInt64(r.u8()) + 1) * 0x1000 - 1
        }
    }

    /// Where the struct goes: the struct area, straddling RW→RO or RW→unmapped, read-only,
    /// or any pointer.
    mutating func placement(_ length: Int) -> UInt64 {
        let sel = r.u8() % 8
        switch sel {
        case 0, 1, 2, 3: return Layout.structSlot(Int(sel))
        case 4: return Layout.roBase - UInt64(Int(r.u8()) % (length + 1))
        case 5: return Layout.gapBase - UInt64(Int(r.u8()) % (length + 1))
        case 6: return Layout.roBase + 0x100
        default: return pointer()
        }
    }

    /// The size field for a table command with (min, size).
    mutating func userSize(min minSize: Int, size: Int) -> (UInt32, tail: [UInt8]) {
        switch r.u8() % 8 {
        case 0, 1, 2: return (UInt32(size), [])
        case 3: return (UInt32(minSize), [])
        case 4: return (UInt32(max(0, minSize - 1 - Int(r.u8() % 4))), [])
        case 5:
            let extra = 8 * (Int(r.u8() % 4) + 1)
            return (UInt32(size + extra), [UInt8](repeating: 0, count: extra))
        case 6:
            let extra = 8 * (Int(r.u8() % 4) + 1)
            var tail = [UInt8](repeating: 0, count: extra)
            tail[Int(r.u8()) % extra] = r.u8() | 1
            return (UInt32(size + extra), tail)
        default: return (r.u32(), [])
        }
    }

    /// `count` bytes of struct: word 0 is the size (or argsz) and one u32 value, then words.
    mutating func structBytes(size count: Int, first: UInt32, opOverride: UInt32? = nil) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: max(8, (count + 7) & ~7))
        func put(_ offset: Int, _ v: UInt64, _ width: Int) {
            for i in 0..<width { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }
        put(0, UInt64(first), 4)
        put(4, opOverride.map(UInt64.init) ?? value(4), 4)
        var offset = 8
        while offset + 8 <= bytes.count {
            if r.u8() & 1 == 0 {
                put(offset, value(8), 8)
            } else {
                put(offset, value(4), 4)
                put(offset + 4, value(4), 4)
            }
            offset += 8
        }
        return Array(bytes.prefix(count))
    }

    // MARK: Operations

    mutating func run() {
        var ops = 0
        while !r.atEnd && ops < Self.maxOps {
            ops += 1
            let byte = r.u8()
            // Operations that may change mappings are followed by the area check.
            let mayRemap = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12].contains(byte % 16)
            if files.count > 1 {
                let next = Int(byte >> 4) & 1
                if next != current { log?("# file \(next)") }
                current = next
            }
            switch byte % 16 {
            case 0...7: tableIoctl(testOp: nil)
            case 8: tableIoctl(testOp: UInt32(r.u8() % 24))
            case 9: vfio()
            case 10: rawIoctl()
            case 11: memory()
            case 12: engine()
            case 13: dma()
            case 14: aux()
            default:
                let n = Int(r.u8()) + 1
                log?("# fail_nth \(n)")
                file.context.failures.failNth(n)
            }
            if mayRemap { checkDomainsMirrorAreasOfCurrentFile() }
        }
    }

    mutating func issue(_ request: UInt, _ arg: UInt64, _ what: String) -> Int64 {
        let rc = file.ioctl(request, arg)
        if log != nil && file.options.trace == nil { log?("ioctl(0x\(String(request, radix: 16)), 0x\(String(arg, radix: 16))) = \(rc)") }
        guard validResult(rc) else {
            fatalError("FUZZ: \(what) request 0x\(String(request, radix: 16)) returned \(rc), not ≥ 0 or -errno")
        }
        return rc
    }

    mutating func tableIoctl(testOp: UInt32?) {
        let table = world.table
        let request: UInt
        let minSize: Int, size: Int
        if let _ = testOp {
            request = UInt(IOMMURequest.testCmd)
            minSize = ABI.TestCmd.minSize; size = ABI.TestCmd.size
        } else {
            let idx = Int(r.u8() % 32)
            if idx < table.count {
                request = UInt(table[idx].request); minSize = table[idx].minSize; size = table[idx].size
            } else {
                request = Values.noiseRequests[(idx - table.count) % Values.noiseRequests.count]
                minSize = 8; size = 40
            }
        }
        let (userSize, tail) = userSize(min: minSize, size: size)
        var bytes = structBytes(size: size, first: userSize, opOverride: testOp)
        bytes += tail
        let arg = placement(bytes.count)
        bytes.withUnsafeBytes { world.poke(arg, $0) }
        let dirtyProbe = UInt32(truncatingIfNeeded: request) == IOMMURequest.hwptGetDirtyBitmap ? probeDirty(bytes) : nil
        // ACCESS_RW writes user memory through the engine, past FuzzUserMemory: zero it all after.
        if UInt32(truncatingIfNeeded: request) == IOMMURequest.testCmd { world.user.hugeDirty = true }
        let rc = issue(request, arg, "IOCTL")
        if UInt32(truncatingIfNeeded: request) == IOMMURequest.ioasUnmap, bytes.count >= ABI.IOASUnmap.size {
            // Whatever the result: a failed unmap may have removed areas before the one it met.
            let (ioas, iova, length) = (load32(bytes, ABI.IOASUnmap.ioasID), load64(bytes, ABI.IOASUnmap.iova),
                                        load64(bytes, ABI.IOASUnmap.length))
            forget(ioas: ioas, iova: iova, length: length, all: iova == 0 && length == .max)
        }
        if rc == 0 { checkResult(UInt32(truncatingIfNeeded: request), arg, input: bytes) }
        if rc == 0, let dirtyProbe { checkDirtyBitmap(dirtyProbe) }
        if let log, rc >= 0, testOp != nil {
            // The trace shows no union: print its words as they came back.
            var words = [UInt32](repeating: 0, count: 12)
            if world.user.copyFromUser(&words, arg &+ 16, 48) {
                log("#   test cmd union out: " + words.map { "0x" + String($0, radix: 16) }.joined(separator: " "))
            }
        }
    }

    // MARK: Oracles

    /// After a successful IOAS_MAP / MAP_FILE / COPY / UNMAP: what the page tables and the
    /// devices see must be what the call said. A map is checked in every paging HWPT of the
    /// IOAS (software walk: the IOVA translates to the memory behind the user VA or file
    /// offset, with the permissions asked for) and by a DMA read of each device attached to
    /// one (same bytes as the memory); an unmap by walks and DMA reads that must now fail
    /// (a stale IOTLB entry would let the DMA through).
    mutating func checkResult(_ request: UInt32, _ arg: UInt64, input: [UInt8]) {
        func u32(_ o: Int) -> UInt32 {
            guard o + 4 <= input.count else { return 0 }
            return (0..<4).reduce(0) { $0 | UInt32(input[o + $1]) << (8 * UInt32($1)) }
        }
        func u64(_ o: Int) -> UInt64 {
            guard o + 8 <= input.count else { return 0 }
            return (0..<8).reduce(0) { $0 | UInt64(input[o + $1]) << (8 * UInt64($1)) }
        }
        func output64(_ o: Int) -> UInt64? {
            var v: UInt64 = 0
            return world.user.copyFromUser(&v, arg &+ UInt64(o), 8) ? UInt64(littleEndian: v) : nil
        }
        switch request {
        case IOMMURequest.ioasMap:
            typealias L = ABI.IOASMap
            guard let iova = output64(L.iova) else { return }
            checkMapped(ioas: u32(L.ioasID), iova: iova, length: u64(L.length), flags: u32(L.flags),
                        va: u64(L.userVA), what: "IOAS_MAP")
        case IOMMURequest.ioasMapFile:
            typealias L = ABI.IOASMapFile
            guard let iova = output64(L.iova) else { return }
            let fd = Int32(bitPattern: u32(L.fd))
            let base = fd == Layout.memfdAFD ? Layout.memfdABase : fd == Layout.memfdBFD ? Layout.memfdBBase : nil
            guard let base else { fatalError("FUZZ: IOAS_MAP_FILE of fd \(fd) succeeded") }
            checkMapped(ioas: u32(L.ioasID), iova: iova, length: u64(L.length), flags: u32(L.flags),
                        va: base &+ u64(L.start), what: "IOAS_MAP_FILE")
        case IOMMURequest.ioasCopy:
            typealias L = ABI.IOASCopy
            guard let iova = output64(L.dstIOVA) else { return }
            note(ioas: u32(L.dstIOASID), iova: iova)
            let src = u64(L.srcIOVA), length = u64(L.length)
            if length > 0, let r = record(ioas: u32(L.srcIOASID), containing: src), length - 1 <= r.length - 1 - (src - r.iova) {
                remember(Record(ioas: u32(L.dstIOASID), iova: iova, length: length, va: r.va &+ (src - r.iova)))
            }
        case IOMMURequest.destroy:
            let id = u32(ABI.Destroy.id)
            records.removeAll { $0.ioas == id }
        case IOMMURequest.ioasIOVARanges:
            typealias L = ABI.IOASIOVARanges
            var n: UInt32 = 0
            guard world.user.copyFromUser(&n, arg &+ UInt64(L.numIOVAs), 4) else { return }
            let count = Int(min(UInt32(littleEndian: n), u32(L.numIOVAs), 64))
            // An array that overlaps the struct is overwritten by the struct's write-back.
            let array = u64(L.allowedIOVAs)
            guard array >= arg &+ UInt64(L.size) || array &+ UInt64(count) * 16 <= arg else { return }
            var previous: UInt64? = nil
            for i in 0..<count {
                var range = (UInt64(0), UInt64(0))
                guard world.user.copyFromUser(&range, u64(L.allowedIOVAs) &+ UInt64(i) * 16, 16) else { return }
                let (start, last) = (UInt64(littleEndian: range.0), UInt64(littleEndian: range.1))
                if start > last || (previous.map { start <= $0 } ?? false) {
                    fatalError("FUZZ: IOAS_IOVA_RANGES range \(i) [0x\(String(start, radix: 16)), 0x\(String(last, radix: 16))] is empty or overlaps the one before")
                }
                previous = last
            }
        case IOMMURequest.ioasUnmap:
            typealias L = ABI.IOASUnmap
            guard let unmapped = output64(L.length), unmapped > 0 else { return }
            checkUnmapped(ioas: u32(L.ioasID), iova: u64(L.iova), length: u64(L.length))
        default:
            return
        }
    }

    /// Before a GET_DIRTY_BITMAP: which of up to 32 sampled bits must come back set (their
    /// IOVA's leaf is dirty in the page table now).
    struct DirtyProbe {
        var hwpt: UInt32, noClear: Bool, bitmap: UInt64
        var dirty: [(bit: UInt64, iova: UInt64)]
    }

    func probeDirty(_ input: [UInt8]) -> DirtyProbe? {
        typealias L = ABI.HWPTGetDirtyBitmap
        guard input.count >= L.size else { return nil }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(input[o + $1]) << (8 * UInt64($1)) } }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(input[o + $1]) << (8 * UInt32($1)) } }
        let hwpt = u32(L.hwptID), iova = u64(L.iova), length = u64(L.length), pageSize = u64(L.pageSize)
        guard pageSize.nonzeroBitCount == 1, length >= pageSize, !iova.addingReportingOverflow(length).overflow else { return nil }
        let bits = length / pageSize
        let samples = min(bits, 32)
        var dirty: [(UInt64, UInt64)] = []
        for k in 0..<samples {
            let bit = k * (bits / samples)
            let probe = iova + bit * pageSize
            let t: IOTranslation?
            do { t = try file.context.translate(hwpt: hwpt, iova: probe) } catch { return nil }
            if let t, t.dirty { dirty.append((bit, probe)) }
        }
        return DirtyProbe(hwpt: hwpt, noClear: u32(L.flags) & IOMMUConstants.getDirtyBitmapNoClear != 0,
                          bitmap: u64(L.data), dirty: dirty)
    }

    /// After a successful GET_DIRTY_BITMAP: every sampled dirty leaf has its bit set, and is
    /// clean in the page table unless NO_CLEAR.
    func checkDirtyBitmap(_ probe: DirtyProbe) {
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        for (bit, iova) in probe.dirty {
            var byte: UInt8 = 0
            guard world.user.copyFromUser(&byte, probe.bitmap &+ bit / 8, 1) else {
                fatalError("FUZZ: GET_DIRTY_BITMAP succeeded but its bitmap byte \(bit / 8) is unreadable")
            }
            if byte & (1 << UInt8(bit % 8)) == 0 {
                fatalError("FUZZ: GET_DIRTY_BITMAP of HWPT \(probe.hwpt) left bit \(bit) clear, but the leaf at \(hex(iova)) was dirty")
            }
            if !probe.noClear, let t = try? file.context.translate(hwpt: probe.hwpt, iova: iova), t.dirty {
                fatalError("FUZZ: GET_DIRTY_BITMAP of HWPT \(probe.hwpt) without NO_CLEAR left the leaf at \(hex(iova)) dirty")
            }
        }
    }

    mutating func remember(_ record: Record) {
        guard record.length > 0, !record.iova.addingReportingOverflow(record.length - 1).overflow,
              records.count < 64 else { return }
        records.append(record)
    }

    /// Forgets what was mapped in [iova, iova + length) of `ioas` (everything for length 0
    /// with iova 0, as IOAS_UNMAP's "all" and VFIO's UNMAP_ALL mean).
    mutating func forget(ioas: UInt32, iova: UInt64, length: UInt64, all: Bool = false) {
        let last = length == 0 ? iova : iova &+ (length - 1)
        let wraps = last < iova
        records.removeAll { r in
            guard r.ioas == ioas else { return false }
            if all || wraps { return true }
            return r.iova <= last && iova <= r.iova + (r.length - 1)
        }
    }

    func record(ioas: UInt32, containing iova: UInt64) -> Record? {
        records.last { $0.ioas == ioas && $0.iova <= iova && iova - $0.iova < $0.length }
    }

    mutating func note(ioas: UInt32, iova: UInt64) {
        if mappedIOVAs.count < 32 { mappedIOVAs.append((ioas, iova)) }
    }

    /// (HWPT IDs of the IOAS, devices attached to one of them).
    func attachments(ioas: UInt32) -> ([UInt32], [PlatformDevice]) {
        guard let hwpts = try? file.context.hwpts(ioas: ioas) else { return ([], []) }
        let ids = hwpts.map(\.id)
        var devices: [PlatformDevice] = []
        for (id, device) in bound {
            if let attached = try? file.context.attachedHWPT(device: id), ids.contains(attached) {
                devices.append(device)
            }
        }
        return (ids, devices)
    }

    mutating func checkMapped(ioas: UInt32, iova: UInt64, length: UInt64, flags: UInt32, va: UInt64, what: String) {
        note(ioas: ioas, iova: iova)
        remember(Record(ioas: ioas, iova: iova, length: length, va: va))
        guard length > 0 else { return }
        let (hwpts, devices) = attachments(ioas: ioas)
        var wanted: IOPermissions = []
        if flags & IOMMUConstants.mapReadable != 0 { wanted.insert(.read) }
        if flags & IOMMUConstants.mapWriteable != 0 { wanted.insert(.write) }
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        for offset in Set([0, length - 1, length / 2]) {
            guard let host = world.space.pointer(va: va &+ offset) else { continue }   // checked by the pin
            let physical = UInt64(UInt(bitPattern: host))
            for h in hwpts {
                guard let t = try? file.context.translate(hwpt: h, iova: iova &+ offset) else {
                    fatalError("FUZZ: after \(what) at \(hex(iova)) length \(hex(length)), HWPT \(h) does not translate \(hex(iova &+ offset))")
                }
                if t.physical != physical || !t.permissions.isSuperset(of: wanted) {
                    fatalError("FUZZ: after \(what), HWPT \(h) maps \(hex(iova &+ offset)) to \(hex(t.physical)) \(t.permissions), not user VA \(hex(va &+ offset)) (\(hex(physical))) \(wanted)")
                }
            }
        }
        guard wanted.contains(.read) else { return }
        let count = Int(min(length, 64))
        var expected = [UInt8](repeating: 0, count: count)
        guard world.user.copyFromUser(&expected, va, count) else { return }
        for device in devices {
            var seen = [UInt8](repeating: 0, count: count)
            do throws(DMAFault) {
                try world.platform.dmaRead(device: device, iova: iova, into: &seen, count: count)
            } catch {
                fatalError("FUZZ: after \(what) at \(hex(iova)), \(device.spec.name) cannot read it: \(error)")
            }
            if seen != expected {
                fatalError("FUZZ: after \(what), \(device.spec.name) reads other bytes at \(hex(iova)) than user VA \(hex(va)) holds")
            }
        }
    }

    /// At the end of a program: every area of every IOAS is mapped in every paging HWPT of
    /// that IOAS (first and last byte), with at least the area's permissions and the same
    /// physical address in all of them, and a device attached there can read a readable one.
    mutating func checkDomainsMirrorAreas() {
        for i in files.indices {
            current = i
            checkDomainsMirrorAreasOfCurrentFile()
        }
    }

    func checkDomainsMirrorAreasOfCurrentFile() {
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        for object in file.context.objects() where object.kind == .ioas {
            guard let areas = try? file.context.areas(ioas: object.id) else { continue }
            let (hwpts, devices) = attachments(ioas: object.id)
            guard !hwpts.isEmpty else { continue }
            for area in areas.prefix(32) {
                for probe in Set([area.iova, area.last]) {
                    var physical: UInt64? = nil
                    if let r = record(ioas: object.id, containing: probe), let host = world.space.pointer(va: r.va &+ (probe - r.iova)) {
                        physical = UInt64(UInt(bitPattern: host))
                    }
                    for h in hwpts {
                        guard let t = try? file.context.translate(hwpt: h, iova: probe) else {
                            fatalError("FUZZ: area [\(hex(area.iova)), \(hex(area.last))] of IOAS \(object.id) is not mapped at \(hex(probe)) in HWPT \(h)")
                        }
                        if !t.permissions.isSuperset(of: area.permissions) {
                            fatalError("FUZZ: HWPT \(h) maps \(hex(probe)) \(t.permissions), the area of IOAS \(object.id) is \(area.permissions)")
                        }
                        if let physical, physical != t.physical {
                            fatalError("FUZZ: HWPT \(h) of IOAS \(object.id) maps \(hex(probe)) to \(hex(t.physical)), not \(hex(physical)) (the mapped memory, or another HWPT's answer)")
                        }
                        physical = t.physical
                    }
                    guard area.permissions.contains(.read) else { continue }
                    for device in devices {
                        var byte: UInt8 = 0
                        do throws(DMAFault) {
                            try world.platform.dmaRead(device: device, iova: probe, into: &byte, count: 1)
                        } catch {
                            fatalError("FUZZ: \(device.spec.name) cannot read \(hex(probe)) of a mapped area of IOAS \(object.id): \(error)")
                        }
                    }
                }
            }
        }
    }

    func checkUnmapped(ioas: UInt32, iova: UInt64, length: UInt64) {
        let (hwpts, devices) = attachments(ioas: ioas)
        let last = length == 0 ? iova : iova &+ (length - 1)
        let probes = [iova] + mappedIOVAs.filter { $0.ioas == ioas && $0.iova >= iova && $0.iova <= last && last >= iova }.map(\.iova)
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        for probe in probes {
            for h in hwpts {
                if let t = try? file.context.translate(hwpt: h, iova: probe) {
                    fatalError("FUZZ: after IOAS_UNMAP of \(hex(iova)) length \(hex(length)), HWPT \(h) still maps \(hex(probe)) to \(hex(t.physical))")
                }
            }
            for device in devices {
                var byte: UInt8 = 0
                do throws(DMAFault) {
                    try world.platform.dmaRead(device: device, iova: probe, into: &byte, count: 1)
                    fatalError("FUZZ: after IOAS_UNMAP of \(hex(iova)) length \(hex(length)), \(device.spec.name) still reads \(hex(probe))")
                } catch {
                    // Not present, as it must be.
                }
            }
        }
    }

    mutating func vfio() {
        switch r.u8() % 9 {
        case 0: _ = issue(UInt(VFIORequest.getAPIVersion), pointer(), "VFIO_GET_API_VERSION")
        case 1: _ = issue(UInt(VFIORequest.checkExtension), UInt64(r.u8() % 12), "VFIO_CHECK_EXTENSION")
        case 2: _ = issue(UInt(VFIORequest.setIOMMU), UInt64(r.u8() % 12), "VFIO_SET_IOMMU")
        case 3: vfioStruct(VFIORequest.iommuGetInfo, size: ABI.VFIOType1Info.size)
        case 4: vfioStruct(VFIORequest.iommuMapDMA, size: ABI.VFIODMAMap.size)
        case 5: vfioStruct(VFIORequest.iommuUnmapDMA, size: ABI.VFIODMAUnmap.size)
        case 6: _ = issue(UInt(VFIORequest.iommuDirtyPages), pointer(), "VFIO_IOMMU_DIRTY_PAGES")
        case 7: _ = issue(UInt(VFIORequest.iommuEnable), pointer(), "VFIO_IOMMU_ENABLE")
        default: _ = issue(UInt(VFIORequest.iommuDisable), pointer(), "VFIO_IOMMU_DISABLE")
        }
    }

    mutating func vfioStruct(_ request: UInt32, size: Int) {
        let argsz: UInt32
        switch r.u8() % 8 {
        case 0, 1, 2: argsz = UInt32(size)
        case 3: argsz = UInt32(r.u8())
        case 4: argsz = UInt32(size + 8 * Int(r.u8() % 64))   // room for the capability chain
        case 5: argsz = 16
        case 6: argsz = 0
        default: argsz = r.u32()
        }
        let bytes = structBytes(size: size, first: argsz)
        let arg = placement(bytes.count)
        bytes.withUnsafeBytes { world.poke(arg, $0) }
        let rc = issue(UInt(request), arg, "VFIO")
        guard let compat = file.context.vfioCompatIOAS else { return }
        switch request {
        case VFIORequest.iommuMapDMA where rc == 0:
            typealias L = ABI.VFIODMAMap
            let flags = load32(bytes, L.flags)
            let mapFlags = (flags & L.flagRead != 0 ? IOMMUConstants.mapReadable : 0)
                | (flags & L.flagWrite != 0 ? IOMMUConstants.mapWriteable : 0)
            checkMapped(ioas: compat, iova: load64(bytes, L.iova), length: load64(bytes, L.length), flags: mapFlags,
                        va: load64(bytes, L.vaddr), what: "VFIO_IOMMU_MAP_DMA")
        case VFIORequest.iommuUnmapDMA:
            typealias L = ABI.VFIODMAUnmap
            let iova = load64(bytes, L.iova), length = load64(bytes, L.length)
            let all = load32(bytes, L.flags) & L.flagAll != 0
            forget(ioas: compat, iova: iova, length: length, all: all || (iova == 0 && length == .max))
            var unmapped: UInt64 = 0
            if rc == 0, !all, world.user.copyFromUser(&unmapped, arg &+ UInt64(L.length), 8), unmapped != 0 {
                checkUnmapped(ioas: compat, iova: iova, length: length)
            }
        default:
            break
        }
    }

    mutating func rawIoctl() {
        var request: UInt
        switch r.u8() % 4 {
        case 0: request = 0x3b00 | UInt(r.u8())
        case 1: request = UInt(r.u32())
        case 2: request = UInt(r.u64())
        default: request = UInt(0x3b80 + UInt32(r.u8() % 0x30)) | UInt(r.u8()) << 16
        }
        let size = Int(r.u8() % 96)
        let first = r.u8() & 1 == 0 ? UInt32(size) : r.u32()
        let bytes = structBytes(size: size, first: first)
        let arg = r.u8() & 1 == 0 ? placement(bytes.count) : pointer()
        bytes.withUnsafeBytes { world.poke(arg, $0) }
        if UInt32(truncatingIfNeeded: request) == IOMMURequest.testCmd { world.user.hugeDirty = true }
        _ = issue(request, arg, "RAW")
    }

    mutating func memory() {
        switch r.u8() % 4 {
        case 0:
            let va = Layout.arraySlot(Int(r.u8())) + UInt64(r.u16()) % Layout.slotSize
            let data = r.take(Int(r.u8() % 65))
            data.withUnsafeBytes { world.poke(va, $0) }
        case 1:
            // An iommu_iova_range array: n × {start, last}.
            let va = Layout.arraySlot(Int(r.u8()))
            let n = Int(r.u8() % 9)
            var bytes: [UInt8] = []
            for _ in 0..<n {
                let start = iova()
                let last = r.u8() & 1 == 0 ? start &+ length() &- 1 : iova()
                for v in [start, last] { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
            }
            bytes.withUnsafeBytes { world.poke(va, $0) }
            log?("# iova ranges at 0x\(String(va, radix: 16)): \(n)")
        case 2:
            let va = Layout.arraySlot(Int(r.u8()))
            let pattern = [UInt8](repeating: r.u8(), count: Int(r.u16()) % Int(Layout.slotSize) + 1)
            pattern.withUnsafeBytes { world.poke(va, $0) }
        default:
            let va = pointer()
            let data = r.take(Int(r.u8() % 65))
            data.withUnsafeBytes { world.poke(va, $0) }
        }
    }

    mutating func engine() {
        let context = file.context
        switch r.u8() % 4 {
        case 0:
            let dev = UInt32(r.u8() % 8), pt = UInt32(r.u8() % 16)
            let result = Result { () throws(IOMMUError) in try context.attach(device: dev, to: pt) }
            log?("# attach(device: \(dev), to: \(pt)) = \(result)")
        case 1:
            let dev = UInt32(r.u8() % 8)
            let result = Result { () throws(IOMMUError) in try context.detach(device: dev) }
            log?("# detach(device: \(dev)) = \(result)")
        case 2:
            let dev = UInt32(r.u8() % 8)
            let result = Result { () throws(IOMMUError) in try context.unbind(device: dev) }
            if case .success = result { bound.removeAll { $0.id == dev } }
            log?("# unbind(device: \(dev)) = \(result)")
        default:
            let device = world.devices[Int(r.u8()) % world.devices.count]
            let result = Result { () throws(IOMMUError) in try context.bind(device) }
            if case .success(let id) = result { bound.append((id, device)); everBound.append(device) }
            log?("# bind(\(device.spec.name)) = \(result)")
        }
    }

    mutating func dma() {
        let which = Int(r.u8())
        let flags = r.u8()
        let pasid: UInt32? = flags & 2 != 0 ? UInt32(r.u16()) : nil
        let iova = iova() &+ UInt64(r.u8()) * 8
        let count = Int(r.u16() % 8192) + 1
        let devices = allBound
        guard !devices.isEmpty else { return }
        let device = devices[which % devices.count].device
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: flags | 0x5a, count: count)
        let result: Result<Void, DMAFault>
        if flags & 1 != 0 {
            world.user.hugeDirty = true
            result = Result { () throws(DMAFault) in
                try world.platform.dmaWrite(device: device, pasid: pasid, iova: iova, from: buffer, count: count)
            }
        } else {
            result = Result { () throws(DMAFault) in
                try world.platform.dmaRead(device: device, pasid: pasid, iova: iova, into: buffer, count: count)
            }
        }
        log?("# dma \(flags & 1 != 0 ? "write" : "read") \(device.spec.name) iova=0x\(String(iova, radix: 16)) count=\(count) = \(result)")
    }

    mutating func aux() {
        // Operands first, so the rest of the program decodes the same whatever the state.
        let sel = r.u8() % 4
        let index = Int(r.u8())
        let count = sel == 0 ? Int(r.u16() % 4096) : 0
        let data = sel == 1 ? r.take(Int(r.u8())) : []
        guard !world.broker.installed.isEmpty else { return }
        let slot = index % world.broker.installed.count
        let file = world.broker.installed[slot].file
        switch sel {
        case 0:
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(1, count), alignment: 16)
            defer { buffer.deallocate() }
            let n = file.read(into: buffer, count: count)
            log?("# aux read fd \(world.broker.installed[slot].fd) count=\(count) = \(n)")
            if n > count { fatalError("FUZZ: aux read returned \(n) > \(count)") }
        case 1:
            let n = data.withUnsafeBytes { file.write(from: $0.baseAddress ?? UnsafeRawPointer(bitPattern: 16)!, count: data.count) }
            log?("# aux write fd \(world.broker.installed[slot].fd) count=\(data.count) = \(n)")
            if n > data.count { fatalError("FUZZ: aux write returned \(n) > \(data.count)") }
        case 2:
            _ = file.isReadable
        default:
            log?("# aux close fd \(world.broker.installed[slot].fd)")
            world.broker.installed.remove(at: slot)
            file.release()
        }
    }
}
