// HWPT_PAGING: a hardware page table (an IOMMU domain) that mirrors an IOAS.
//
// Two ways in: automatically, when a device attaches to an IOAS (one domain per IOAS per
// compatible IOMMU, reused by later devices when compatible, freed with its last device); or
// explicitly with IOMMU_HWPT_ALLOC (kept until DESTROY). Either way the HWPT holds its IOAS,
// and every attached device holds the HWPT.

public import UIOMMUBase
public import IOMMUHardware

/// IOMMU_HWPT_ALLOC flags.
public struct HWPTAllocFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let nestParent = HWPTAllocFlags(rawValue: 1 << 0)
    public static let dirtyTracking = HWPTAllocFlags(rawValue: 1 << 1)
    public static let faultIDValid = HWPTAllocFlags(rawValue: 1 << 2)
    public static let pasid = HWPTAllocFlags(rawValue: 1 << 3)
}

/// What HWPT_PAGING and HWPT_NESTED share (the kernel's iommufd_hw_pagetable): devices attach
/// to either, and either may deliver its page requests to a FAULT object it holds.
class HWPT: EngineObject {
    let flags: HWPTAllocFlags
    /// The fault queue page requests through this HWPT go to (IOMMU_HWPT_FAULT_ID_VALID).
    var fault: FaultQueue?

    init(kind: ObjectKind, flags: HWPTAllocFlags) {
        self.flags = flags
        super.init(kind: kind)
    }

    /// The IOAS whose reserved regions an attached device must respect: a paging HWPT's own;
    /// none for a nested HWPT (its IOVAs are the user's stage-1 addresses).
    var reservingIOAS: IOAS? { nil }

    /// The domain a device attached to this HWPT translates through, as the hardware context
    /// entry holds it (nil: DMA blocked).
    var contextDomain: IOMMUDomain? { nil }

    /// Drops the fault queue, answering its pending requests of this HWPT (as destroy does).
    func releaseFault() {
        guard let fault else { return }
        fault.dropGroups { $0.hwpt === self }
        fault.holders -= 1
        self.fault = nil
    }
}

final class HWPTPaging: HWPT {
    let ioas: IOAS
    let domain: IOMMUDomain
    /// Created by an attach to an IOAS; destroyed when its last device detaches.
    let autoDomain: Bool
    /// Devices (groups) attached through this HWPT.
    var attachedGroups = 0

    init(ioas: IOAS, domain: IOMMUDomain, flags: HWPTAllocFlags, autoDomain: Bool) {
        self.ioas = ioas; self.domain = domain; self.autoDomain = autoDomain
        super.init(kind: .hwptPaging, flags: flags)
    }

    override var reservingIOAS: IOAS? { ioas }
    override var contextDomain: IOMMUDomain? { domain }

    override func teardown(_ context: IOMMUFDContext) {
        ioas.iopt.removeDomain(self)
        ioas.holders -= 1
        releaseFault()
    }

    override var summary: String {
        "\(domain.format.rawValue) domain #\(domain.id) of IOAS \(ioas.id)"
            + (autoDomain ? ", auto" : "") + (domain.enforcesCacheCoherency ? ", coherent" : "")
    }
}

/// A paging HWPT as `hwpts(ioas:)` reports it.
public struct HWPTInfo: Hashable, Sendable {
    public var id: UInt32
    public var ioas: UInt32
    /// Created by an attach (freed with its last device) rather than by HWPT_ALLOC.
    public var autoDomain: Bool
    public var format: PageTableFormat
    public var pageSizes: UInt64
    public var enforcesCacheCoherency: Bool
    /// Allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING.
    public var dirtyTracking: Bool
    public var nestParent: Bool
}

/// What IOMMU_GET_HW_INFO reports for a device.
public struct HWInfo: Hashable, Sendable {
    public var kind: IOMMUKind
    /// IOMMU_HW_CAP_* bits (DIRTY_TRACKING = 1, PCI_PASID_EXEC = 2, PCI_PASID_PRIV = 4).
    public var capabilities: UInt64
    /// log2 of the number of PASIDs the device can use (0: none).
    public var maxPASIDLog2: UInt8
    public var unit: IOMMUUnitSpec
}

extension IOMMUFDContext {
    func hwptPaging(_ id: UInt32) throws(IOMMUError) -> HWPTPaging {
        try lookup(id, as: HWPTPaging.self, "paging HWPT")
    }

    /// Creates a domain for `device`'s IOMMU and adds it to `ioas` (filling it with every area).
    func makeHWPTPaging(for device: BoundDevice, ioas: IOAS, flags: HWPTAllocFlags,
                        autoDomain: Bool) throws(IOMMUError) -> HWPTPaging {
        let unit = device.unit.spec
        let known: HWPTAllocFlags = [.nestParent, .dirtyTracking, .faultIDValid, .pasid]
        guard flags.isSubset(of: known) else { throw IOMMUError(.EOPNOTSUPP, "unknown HWPT flags") }
        if flags.contains(.nestParent) && !unit.nesting {
            throw IOMMUError(.EOPNOTSUPP, "\(unit.name) cannot be a nesting parent")
        }
        if flags.contains(.dirtyTracking) && !device.device.dirtyCapable {
            throw IOMMUError(.EOPNOTSUPP, "\(device.device.spec.name) cannot track dirty pages through \(unit.name)")
        }
        if flags.contains(.faultIDValid) && !unit.kind.pagingDomainsTakeFaults {
            throw IOMMUError(.EOPNOTSUPP, "\(unit.name)'s paging domains take no fault queue")
        }
        try failures.check("domain.alloc")
        let domain = try IOMMUDomain(
            unit: unit,
            options: IOMMUDomain.Options(enforceCacheCoherency: device.enforcesCacheCoherency,
                                         dirtyTrackingCapable: flags.contains(.dirtyTracking),
                                         nestParent: flags.contains(.nestParent),
                                         allowHugeIOVA: device.spec.allowsHugeIOVA),
            failures: failures)
        let hwpt = HWPTPaging(ioas: ioas, domain: domain, flags: flags, autoDomain: autoDomain)
        try ioas.iopt.addDomain(hwpt, failures: failures)
        ioas.holders += 1
        return hwpt
    }

    /// IOMMU_HWPT_ALLOC of a paging HWPT on `ioas` for `device`'s IOMMU.
    public func allocHWPT(device deviceID: UInt32, ioas ioasID: UInt32,
                          flags: HWPTAllocFlags = []) throws(IOMMUError) -> UInt32 {
        try allocHWPT(device: deviceID, pt: ioasID, flags: flags)
    }

    /// IOMMU_HWPT_ALLOC: a paging HWPT when `ptID` is an IOAS (no user data), a nested HWPT
    /// when it is a nesting-parent paging HWPT (`userData` is the driver's data, decoded when
    /// the driver reads it). With `.faultIDValid` the HWPT delivers page requests to FAULT
    /// `faultID`. Errors in the kernel's order: the device (ENOENT), a `ptID` that is no object
    /// (EINVAL), the allocation (flags and data: EOPNOTSUPP; parent: EINVAL), then `faultID`
    /// (ENOENT).
    public func allocHWPT(device deviceID: UInt32, pt ptID: UInt32, flags: HWPTAllocFlags,
                          faultID: UInt32 = 0, userData: HWPTUserData? = nil) throws(IOMMUError) -> UInt32 {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> UInt32 in
                try checkOpen()
                let device = try self.device(deviceID)
                guard let object = table.get(ptID) else { throw IOMMUError(.EINVAL, "no object \(ptID)") }
                let hwpt: HWPT
                switch object {
                case let ioas as IOAS:
                    if userData != nil {
                        throw IOMMUError(.EOPNOTSUPP, "a paging HWPT takes no driver data")
                    }
                    hwpt = try makeHWPTPaging(for: device, ioas: ioas, flags: flags, autoDomain: false)
                case let parent as HWPTPaging:
                    hwpt = try makeHWPTNested(for: device, parent: parent, flags: flags, userData: userData)
                case let viommu as VIOMMU:
                    hwpt = try makeHWPTNested(on: viommu, flags: flags, userData: userData)
                default:
                    throw IOMMUError(.EINVAL, "pt_id \(ptID) is neither an IOAS, a paging HWPT nor a vIOMMU")
                }
                do throws(IOMMUError) {
                    if flags.contains(.faultIDValid) {
                        let fault = try lookup(faultID, as: FaultQueue.self, "fault queue")
                        hwpt.fault = fault
                        fault.holders += 1
                    }
                    return try install(hwpt)
                } catch {
                    hwpt.teardown(self)
                    throw error
                }
            }
        } catch {
            throw error.during("HWPT_ALLOC")
        }
    }

    /// IOMMU_HWPT_SET_DIRTY_TRACKING. Enabling first clears stale dirty bits.
    public func setDirtyTracking(hwpt hwptID: UInt32, enabled: Bool) throws(IOMMUError) {
        do throws(IOMMUError) {
            try lock.withLock { () throws(IOMMUError) in
                try checkOpen()
                let hwpt = try hwptPaging(hwptID)
                guard hwpt.flags.contains(.dirtyTracking) else {
                    throw IOMMUError(.EOPNOTSUPP, "HWPT was not allocated with DIRTY_TRACKING")
                }
                if enabled && !hwpt.domain.dirtyTrackingEnabled {
                    hwpt.domain.readAndClearDirty(iova: 0, length: .max, clear: true) { _, _ in }
                }
                try hwpt.domain.setDirtyTracking(enabled)
            }
        } catch {
            throw error.during("HWPT_SET_DIRTY_TRACKING")
        }
    }

    /// IOMMU_HWPT_GET_DIRTY_BITMAP: calls `setBits(firstBit, count)` for each run of dirty
    /// `pageSize` granules of `[iova, iova + length)` (bit 0 is `iova`), and clears the dirty
    /// bits unless `clear` is false. The range must be mapped, and aligned to the IOAS alignment
    /// and to `pageSize` (a power of two).
    public func readDirty(hwpt hwptID: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64,
                          clear: Bool, setBits: (UInt64, UInt64) -> Void) throws(IOMMUError) {
        try dirtyBitmap(hwpt: hwptID, iova: iova, length: length, pageSize: pageSize, clear: clear,
                        walk: true, setBits: setBits)
    }

    /// Checks a GET_DIRTY_BITMAP request (every errno readDirty would give) without reading
    /// or clearing anything, so a caller can validate its bitmap buffer before any bit is lost.
    public func checkDirtyRequest(hwpt hwptID: UInt32, iova: UInt64, length: UInt64,
                                  pageSize: UInt64) throws(IOMMUError) {
        try dirtyBitmap(hwpt: hwptID, iova: iova, length: length, pageSize: pageSize, clear: false,
                        walk: false) { _, _ in }
    }

    private func dirtyBitmap(hwpt hwptID: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64,
                             clear: Bool, walk: Bool, setBits: (UInt64, UInt64) -> Void) throws(IOMMUError) {
        do throws(IOMMUError) {
            try lock.withLock { () throws(IOMMUError) in
                try checkOpen()
                let hwpt = try hwptPaging(hwptID)
                guard hwpt.flags.contains(.dirtyTracking) else {
                    throw IOMMUError(.EOPNOTSUPP, "HWPT was not allocated with DIRTY_TRACKING")
                }
                let iopt = hwpt.ioas.iopt
                guard length != 0 else { throw IOMMUError(.EINVAL, "zero length") }
                let (last, overflow) = iova.addingReportingOverflow(length - 1)
                guard !overflow else { throw IOMMUError(.EOVERFLOW, "iova + length overflows") }
                let align = iopt.iovaAlignment
                guard iova.isAligned(to: align), (last &+ 1).isAligned(to: align) else {
                    throw IOMMUError(.EINVAL, "range not aligned to the IOAS alignment")
                }
                guard pageSize.isPowerOfTwo else { throw IOMMUError(.EINVAL, "page_size not a power of two") }
                guard iova.isAligned(to: pageSize), (last &+ 1).isAligned(to: pageSize) else {
                    throw IOMMUError(.EINVAL, "range not aligned to page_size")
                }
                // The range must be covered by contiguous areas.
                var cursor = iova
                while true {
                    guard let area = iopt.areas.area(containing: cursor) else {
                        throw IOMMUError(.EINVAL, "0x\(String(cursor, radix: 16)) is not mapped")
                    }
                    if area.last >= last { break }
                    cursor = area.last + 1
                }
                guard walk else { return }
                let shift = UInt64(pageSize.trailingZeroBitCount)
                hwpt.domain.readAndClearDirty(iova: iova, length: length, clear: clear) { leafIOVA, leafSize in
                    let s = max(leafIOVA, iova)
                    let e = min(leafIOVA &+ (leafSize - 1), last)
                    guard s <= e else { return }
                    let firstBit = (s - iova) >> shift
                    let lastBit = (e - iova) >> shift
                    setBits(firstBit, lastBit - firstBit + 1)
                }
            }
        } catch {
            throw error.during("HWPT_GET_DIRTY_BITMAP")
        }
    }

    /// The paging HWPTs that mirror an IOAS.
    public func hwpts(ioas ioasID: UInt32) throws(IOMMUError) -> [HWPTInfo] {
        try lock.withLock { () throws(IOMMUError) -> [HWPTInfo] in
            try checkOpen()
            return try self.ioas(ioasID).iopt.domains.map { h in
                HWPTInfo(id: h.id, ioas: ioasID, autoDomain: h.autoDomain, format: h.domain.format,
                         pageSizes: h.domain.pageSizes, enforcesCacheCoherency: h.domain.enforcesCacheCoherency,
                         dirtyTracking: h.flags.contains(.dirtyTracking), nestParent: h.flags.contains(.nestParent))
            }
        }
    }

    /// Translates `iova` through a HWPT's page table (software walk).
    public func translate(hwpt hwptID: UInt32, iova: UInt64) throws(IOMMUError) -> IOTranslation? {
        try lock.withLock { () throws(IOMMUError) -> IOTranslation? in
            try checkOpen()
            return try hwptPaging(hwptID).domain.translate(iova: iova)
        }
    }

    /// Marks the leaf mapping `iova` dirty (IOMMU_TEST_OP_DIRTY). Needs tracking enabled.
    public func markDirty(hwpt hwptID: UInt32, iova: UInt64) throws(IOMMUError) -> Bool {
        try lock.withLock { () throws(IOMMUError) -> Bool in
            try checkOpen()
            let hwpt = try hwptPaging(hwptID)
            guard hwpt.domain.dirtyTrackingEnabled else { throw IOMMUError(.EINVAL, "dirty tracking is off") }
            return hwpt.domain.markDirty(iova: iova)
        }
    }
}
