// The VFIO type1 container ioctls served on an iommufd fd (drivers/iommu/iommufd/vfio_compat.c).
//
// Like the kernel's, this is a client of the core: every call resolves the compatibility IOAS
// (set with IOMMU_VFIO_IOAS; ENODEV without one) and uses the engine's public IOAS operations.
// VFIO structs carry `argsz` instead of `size` and have their own rules: the first fields are
// read whole (EFAULT), argsz below them is EINVAL, unknown flags are EINVAL.

import UIOMMUBase
import IOMMUHardware
import IOMMUEngine

extension IOMMUFDFile {
    /// iommufd_vfio_ioctl: any request that is not an iommufd command.
    func vfioIoctl(_ cmd: UInt32, _ arg: UInt64, _ trace: TraceRecord?) -> Int64 {
        switch cmd {
        case VFIORequest.getAPIVersion:
            trace?.name = "VFIO_GET_API_VERSION"
            return VFIOConstants.apiVersion
        case VFIORequest.checkExtension:
            trace?.name = "VFIO_CHECK_EXTENSION"
            trace?.argument = TraceRecord.enumName(arg, VFIOConstants.extensionNames)
            return vfioCheckExtension(arg, trace)
        case VFIORequest.setIOMMU:
            trace?.name = "VFIO_SET_IOMMU"
            trace?.argument = TraceRecord.enumName(arg, VFIOConstants.extensionNames)
            return vfioSetIOMMU(arg, trace)
        case VFIORequest.iommuGetInfo:
            trace?.name = "VFIO_IOMMU_GET_INFO"
            trace?.layout = ABI.VFIOType1Info.layout
            return vfioGetInfo(arg, trace)
        case VFIORequest.iommuMapDMA:
            trace?.name = "VFIO_IOMMU_MAP_DMA"
            trace?.layout = ABI.VFIODMAMap.layout
            return vfioMapDMA(arg, trace)
        case VFIORequest.iommuUnmapDMA:
            trace?.name = "VFIO_IOMMU_UNMAP_DMA"
            trace?.layout = ABI.VFIODMAUnmap.layout
            return vfioUnmapDMA(arg, trace)
        default:
            // VFIO_IOMMU_DIRTY_PAGES (obsoleted by HWPT dirty tracking), the SPAPR
            // ENABLE/DISABLE, group and device ioctls, and everything else.
            switch cmd {
            case VFIORequest.iommuDirtyPages: trace?.name = "VFIO_IOMMU_DIRTY_PAGES"
            case VFIORequest.iommuEnable: trace?.name = "VFIO_IOMMU_ENABLE"
            case VFIORequest.iommuDisable: trace?.name = "VFIO_IOMMU_DISABLE"
            default: break
            }
            return -Int64(LinuxErrno.ENOTTY.rawValue)
        }
    }

    private static func errno(_ e: LinuxErrno, _ trace: TraceRecord?, _ why: @autoclosure () -> String) -> Int64 {
        if let trace { trace.reason = why() }
        return -Int64(e.rawValue)
    }

    private static func errno(_ error: IOMMUError, _ trace: TraceRecord?) -> Int64 {
        if let trace { trace.reason = error.reason.isEmpty ? error.operation : error.reason }
        return -Int64(error.errno.rawValue)
    }

    // MARK: VFIO_CHECK_EXTENSION

    func vfioCheckExtension(_ type: UInt64, _ trace: TraceRecord?) -> Int64 {
        switch type {
        case VFIOConstants.type1IOMMU, VFIOConstants.type1v2IOMMU, VFIOConstants.unmapAll:
            return 1
        case VFIOConstants.noIOMMU:
            return 0        // as a kernel without CONFIG_VFIO_NOIOMMU
        case VFIOConstants.dmaCCIOMMU:
            // 1 only if every paging HWPT of the compat IOAS enforces cache coherency.
            guard let ioas = compatIOAS() else { return Self.errno(.ENODEV, trace, "no compatibility IOAS") }
            return CompatQueries.allCoherent(ioas, in: context) ? 1 : 0
        default:
            // The reserved nesting type, VFIO_UPDATE_VADDR (not implementable safely), SPAPR, EEH…
            return 0
        }
    }

    // MARK: VFIO_SET_IOMMU

    func vfioSetIOMMU(_ type: UInt64, _ trace: TraceRecord?) -> Int64 {
        guard type == VFIOConstants.type1IOMMU || type == VFIOConstants.type1v2IOMMU else {
            return Self.errno(.EINVAL, trace, "only VFIO_TYPE1_IOMMU and VFIO_TYPE1v2_IOMMU")
        }
        guard let ioas = compatIOAS() else { return Self.errno(.ENODEV, trace, "no compatibility IOAS") }
        // Type1 (v1) may unmap inside a mapping: emulated by mapping with PAGE_SIZE only.
        if type == VFIOConstants.type1IOMMU {
            do throws(IOMMUError) {
                try context.setHugePages(ioas: ioas, false)
            } catch {
                return Self.errno(error, trace)
            }
        }
        return 0
    }

    // MARK: VFIO_IOMMU_GET_INFO

    func vfioGetInfo(_ arg: UInt64, _ trace: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOType1Info
        var storage: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &storage) { raw -> Int64 in
            let info = StructBytes(raw.baseAddress!)
            guard user.copyFromUser(info.base, arg, L.minSize) else {
                return Self.errno(.EFAULT, trace, "cannot read the struct")
            }
            trace?.captureInput(info, userSize: nil, size: L.size)
            let argsz = info.u32(L.argsz)
            guard argsz >= UInt32(L.minSize) else { return Self.errno(.EINVAL, trace, "argsz \(argsz) < \(L.minSize)") }
            let minsz = min(Int(argsz), L.size)
            guard let ioas = compatIOAS() else { return Self.errno(.ENODEV, trace, "no compatibility IOAS") }
            let report: IOVARanges
            do throws(IOMMUError) {
                report = try context.iovaRanges(ioas: ioas)
            } catch {
                return Self.errno(error, trace)
            }
            info.set32(L.flags, L.flagPgsizes)
            info.set64(L.iovaPgsizes, CompatQueries.pageSizes(of: ioas, alignment: report.alignment, in: context))
            info.set32(L.capOffset, 0)

            // The capability chain: DMA_AVAIL, then IOVA_RANGE, each 8-byte aligned, written
            // only as far as argsz reaches; each header's `next` is patched when the next
            // capability's start is inside argsz.
            var total = UInt64(L.size)
            var lastCap: UInt64? = nil
            for index in 0..<2 {
                let avail = UInt64(argsz) > total ? UInt64(argsz) - total : 0
                let cur = arg &+ total
                let size: Int64 = index == 0
                    ? fillDMAAvail(at: cur, avail: avail)
                    : fillIOVARanges(report.ranges, at: cur, avail: avail)
                if size < 0 { return Self.errno(.EFAULT, trace, "the capability chain is not writable") }
                let aligned = (UInt64(size) + 7) & ~7
                if let lastCap, UInt64(argsz) >= total {
                    var next = UInt32(truncatingIfNeeded: total).littleEndian
                    guard user.copyToUser(lastCap &+ UInt64(ABI.VFIOCapHeader.next), &next, 4) else {
                        return Self.errno(.EFAULT, trace, "cannot link the capability chain")
                    }
                }
                lastCap = cur
                total += aligned
            }
            if UInt64(argsz) >= total { info.set32(L.capOffset, UInt32(L.size)) }
            info.set32(L.argsz, UInt32(truncatingIfNeeded: total))
            info.set32(L.flags, L.flagPgsizes | L.flagCaps)
            guard user.copyToUser(arg, info.base, minsz) else { return Self.errno(.EFAULT, trace, "cannot write the struct back") }
            trace?.captureOutput(info)
            return 0
        }
    }

    /// VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: written if it fits; its size, or -EFAULT.
    private func fillDMAAvail(at uptr: UInt64, avail: UInt64) -> Int64 {
        typealias L = ABI.VFIOCapDMAAvail
        if avail >= UInt64(L.size) {
            var cap: (UInt64, UInt32) = (0, 0)
            let ok = withUnsafeMutableBytes(of: &cap) { raw -> Bool in
                let c = StructBytes(raw.baseAddress!)
                c.set16(ABI.VFIOCapHeader.id, L.id)
                c.set16(ABI.VFIOCapHeader.version, L.version)
                c.set32(ABI.VFIOCapHeader.next, 0)
                // iommufd's limit comes from the memory cgroup; it reports U32_MAX.
                c.set32(L.avail, UInt32.max)
                return user.copyToUser(uptr, c.base, L.size)
            }
            if !ok { return -Int64(LinuxErrno.EFAULT.rawValue) }
        }
        return Int64(L.size)
    }

    /// VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: each range written if it fits, the header if the
    /// whole capability fits; its size, or -EFAULT.
    private func fillIOVARanges(_ ranges: [IOVARange], at uptr: UInt64, avail: UInt64) -> Int64 {
        typealias L = ABI.VFIOCapIOVARange
        var n: UInt64 = 0
        for range in ranges {
            if avail >= UInt64(L.headerSize) + UInt64(L.rangeSize) * (n + 1) {
                var element = (range.first.littleEndian, range.last.littleEndian)
                guard user.copyToUser(uptr &+ UInt64(L.ranges) &+ n &* UInt64(L.rangeSize), &element, L.rangeSize) else {
                    return -Int64(LinuxErrno.EFAULT.rawValue)
                }
            }
            n += 1
        }
        let size = UInt64(L.headerSize) + UInt64(L.rangeSize) * n
        if avail >= size {
            var header: (UInt64, UInt64) = (0, 0)
            let ok = withUnsafeMutableBytes(of: &header) { raw -> Bool in
                let c = StructBytes(raw.baseAddress!)
                c.set16(ABI.VFIOCapHeader.id, L.id)
                c.set16(ABI.VFIOCapHeader.version, L.version)
                c.set32(ABI.VFIOCapHeader.next, 0)
                c.set32(L.nrIOVAs, UInt32(truncatingIfNeeded: n))
                return user.copyToUser(uptr, c.base, L.headerSize)
            }
            if !ok { return -Int64(LinuxErrno.EFAULT.rawValue) }
        }
        return Int64(size)
    }

    // MARK: VFIO_IOMMU_MAP_DMA

    func vfioMapDMA(_ arg: UInt64, _ trace: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIODMAMap
        var storage: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &storage) { raw -> Int64 in
            let m = StructBytes(raw.baseAddress!)
            guard user.copyFromUser(m.base, arg, L.size) else { return Self.errno(.EFAULT, trace, "cannot read the struct") }
            trace?.captureInput(m, userSize: nil, size: L.size)
            let flags = m.u32(L.flags)
            guard m.u32(L.argsz) >= UInt32(L.size), flags & ~(L.flagRead | L.flagWrite) == 0 else {
                return Self.errno(.EINVAL, trace, "argsz below \(L.size) or flags other than READ|WRITE")
            }
            guard let ioas = compatIOAS() else { return Self.errno(.ENODEV, trace, "no compatibility IOAS") }
            var permissions: MapPermissions = []
            if flags & L.flagRead != 0 { permissions.insert(.read) }
            if flags & L.flagWrite != 0 { permissions.insert(.write) }
            do throws(IOMMUError) {
                _ = try context.map(ioas: ioas, userVA: m.u64(L.vaddr), length: m.u64(L.length), iova: m.u64(L.iova),
                                    permissions: permissions, caller: callerMemory)
            } catch {
                return Self.errno(error, trace)
            }
            return 0
        }
    }

    // MARK: VFIO_IOMMU_UNMAP_DMA

    func vfioUnmapDMA(_ arg: UInt64, _ trace: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIODMAUnmap
        var storage: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &storage) { raw -> Int64 in
            let u = StructBytes(raw.baseAddress!)
            guard user.copyFromUser(u.base, arg, L.size) else { return Self.errno(.EFAULT, trace, "cannot read the struct") }
            trace?.captureInput(u, userSize: nil, size: L.size)
            let flags = u.u32(L.flags)
            // GET_DIRTY_BITMAP is obsoleted by HWPT dirty tracking; VADDR cannot be done safely.
            guard u.u32(L.argsz) >= UInt32(L.size), flags & ~L.flagAll == 0 else {
                return Self.errno(.EINVAL, trace, "argsz below \(L.size) or flags other than ALL")
            }
            guard let ioas = compatIOAS() else { return Self.errno(.ENODEV, trace, "no compatibility IOAS") }
            let iova = u.u64(L.iova), size = u.u64(L.length)
            var rc: Int64 = 0
            var unmapped: UInt64 = 0
            if flags & L.flagAll != 0 {
                guard iova == 0, size == 0 else { return Self.errno(.EINVAL, trace, "UNMAP_ALL needs iova and size 0") }
                do throws(IOMMUError) {
                    unmapped = try context.unmap(ioas: ioas, iova: 0, length: .max)
                } catch {
                    rc = Self.errno(error, trace)
                }
            } else {
                do throws(IOMMUError) {
                    if try !context.hugePages(ioas: ioas) {
                        // Type1 v1: cut areas at both ends so an unmap inside a mapping works.
                        let cuts = iova != 0 ? [iova &+ size &- 1, iova &- 1] : [iova &+ size &- 1]
                        try context.cutAreas(ioas: ioas, at: cuts)
                    }
                } catch {
                    return Self.errno(error, trace)
                }
                var partial: UInt64 = 0
                // An unmap of a range where nothing is mapped succeeds with size 0 (kernels
                // since late 2025, also in 6.12.y stable); IOMMU_IOAS_UNMAP still says ENOENT.
                let (last, wraps) = iova.addingReportingOverflow(size &- 1)
                if size != 0, !wraps, (try? context.hasArea(ioas: ioas, first: iova, last: last)) == false {
                    u.set64(L.length, 0)
                    guard user.copyToUser(arg, u.base, L.size) else { return Self.errno(.EFAULT, trace, "cannot write size back") }
                    trace?.captureOutput(u)
                    return 0
                }
                do throws(IOMMUError) {
                    unmapped = try context.unmap(ioas: ioas, iova: iova, length: size, unmappedBeforeError: &partial)
                    // (0, U64_MAX) is "everything" to the engine but an ordinary range here:
                    // nothing inside it is ENOENT.
                    if iova == 0 && size == .max && unmapped == 0 {
                        rc = Self.errno(.ENOENT, trace, "nothing mapped")
                    }
                } catch {
                    // What was unmapped before the failing area is written back, as in Linux.
                    unmapped = partial
                    rc = Self.errno(error, trace)
                }
            }
            // The size is written back on success and on an unmap failure alike.
            u.set64(L.length, unmapped)
            guard user.copyToUser(arg, u.base, L.size) else { return Self.errno(.EFAULT, trace, "cannot write size back") }
            if rc == 0 { trace?.captureOutput(u) }
            return rc
        }
    }
}

/// What the compat layer asks the engine about the compat IOAS's HWPTs.
enum CompatQueries {
    /// VFIO_DMA_CC_IOMMU: every HWPT of the IOAS enforces cache coherency.
    static func allCoherent(_ ioas: UInt32, in context: IOMMUFDContext) -> Bool {
        ((try? context.hwpts(ioas: ioas)) ?? []).allSatisfy(\.enforcesCacheCoherency)
    }

    /// iommufd_get_pagesizes: the page sizes every domain of the IOAS supports, with the
    /// sub-PAGE_SIZE sizes folded into PAGE_SIZE, and at least the IOVA alignment.
    static func pageSizes(of ioas: UInt32, alignment: UInt64, in context: IOMMUFDContext) -> UInt64 {
        var bitmap = UInt64.max
        for hwpt in (try? context.hwpts(ioas: ioas)) ?? [] { bitmap &= hwpt.pageSizes }
        let page: UInt64 = 4096
        if bitmap & (page - 1) != 0 {
            bitmap &= ~(page - 1)
            bitmap |= page
        }
        return max(bitmap, alignment)
    }
}
