// HWPT_NESTED: a user-managed stage-1 domain on top of a nesting-parent HWPT_PAGING (stage 2).
//
// IOMMU_HWPT_ALLOC with pt_id = a paging HWPT allocated with IOMMU_HWPT_ALLOC_NEST_PARENT makes
// one from driver-specific data (for the selftest mock: IOMMU_HWPT_DATA_SELFTEST). The nested
// HWPT holds its parent (DESTROY of the parent: EBUSY while a nested child exists), and, with
// IOMMU_HWPT_FAULT_ID_VALID, its FAULT object. Devices attach to it like to any HWPT, and
// hold it while attached. The user keeps the stage-1 caches coherent with IOMMU_HWPT_INVALIDATE,
// which the engine hands to the driver's cache_invalidate_user. A nested HWPT allocated with a
// vIOMMU as pt_id (VIOMMU.swift) holds the vIOMMU instead of the parent, and a device attaches
// to it only with a vDEVICE on that vIOMMU.

public import UIOMMUBase
public import IOMMUHardware

/// The driver-specific data of IOMMU_HWPT_ALLOC (data_type, data_len, data_uptr), decoded when
/// the driver reads it: `decode` applies the uAPI struct's copy rules and may fail (EOPNOTSUPP
/// for a data type the driver lacks, EINVAL for a bad length, EFAULT for unreadable data).
public struct HWPTUserData {
    public var decode: () throws(IOMMUError) -> NestedDomainConfig
    public init(decode: @escaping () throws(IOMMUError) -> NestedDomainConfig) { self.decode = decode }
}

final class HWPTNested: HWPT {
    let parent: HWPTPaging
    let domain: NestedDomain
    /// The vIOMMU it was allocated on (which it holds, rather than the parent).
    let viommu: VIOMMU?

    init(parent: HWPTPaging, domain: NestedDomain, flags: HWPTAllocFlags, viommu: VIOMMU? = nil) {
        self.parent = parent; self.domain = domain; self.viommu = viommu
        super.init(kind: .hwptNested, flags: flags)
    }

    override func teardown(_ context: IOMMUFDContext) {
        if let viommu { viommu.holders -= 1 } else { parent.holders -= 1 }
        releaseFault()
    }

    override var summary: String {
        "nested \(domain.kind.rawValue) domain on HWPT \(parent.id)" + (fault.map { ", faults to FAULT \($0.id)" } ?? "")
    }
}

/// What HWPT_INVALIDATE did: requests handled before the first error, and that error.
public struct InvalidationResult: Sendable {
    public var done: UInt32
    public var error: IOMMUError?
}

extension IOMMUFDContext {
    /// iommufd_hwpt_nested_alloc + the driver's domain_alloc_nested. Holds `parent` on success.
    func makeHWPTNested(for device: BoundDevice, parent: HWPTPaging, flags: HWPTAllocFlags,
                        userData: HWPTUserData?) throws(IOMMUError) -> HWPTNested {
        let unit = device.unit.spec
        guard flags.isSubset(of: [.faultIDValid, .pasid]) else {
            throw IOMMUError(.EOPNOTSUPP, "flags 0x\(String(flags.rawValue, radix: 16)) are not for a nested HWPT")
        }
        guard let userData else { throw IOMMUError(.EOPNOTSUPP, "a nested HWPT needs driver data") }
        guard unit.nesting else { throw IOMMUError(.EOPNOTSUPP, "\(unit.name) has no nested domains") }
        if parent.autoDomain || !parent.flags.contains(.nestParent) || parent.domain.kind != unit.kind {
            throw IOMMUError(.EINVAL, "HWPT \(parent.id) is not a nesting parent for \(unit.name)")
        }
        try failures.check("domain.alloc")
        let domain = try NestedDomain.make(unit: unit, parent: parent.domain, pasidFlag: flags.contains(.pasid),
                                           otherFlags: false, config: userData.decode)
        parent.holders += 1
        return HWPTNested(parent: parent, domain: domain, flags: flags)
    }

    /// iommufd_viommu_alloc_hwpt_nested + the vIOMMU driver's alloc_domain_nested: flags other
    /// than FAULT_ID_VALID and PASID, or no data, EOPNOTSUPP; the driver gets the flags without
    /// FAULT_ID_VALID. Holds `viommu`.
    func makeHWPTNested(on viommu: VIOMMU, flags: HWPTAllocFlags, userData: HWPTUserData?) throws(IOMMUError) -> HWPTNested {
        guard flags.isSubset(of: [.faultIDValid, .pasid]) else {
            throw IOMMUError(.EOPNOTSUPP, "flags 0x\(String(flags.rawValue, radix: 16)) are not for a nested HWPT")
        }
        guard let userData else { throw IOMMUError(.EOPNOTSUPP, "a nested HWPT needs driver data") }
        try failures.check("domain.alloc")
        let domain = try NestedDomain.make(unit: viommu.unit.spec, parent: viommu.parent.domain,
                                           pasidFlag: flags.contains(.pasid), otherFlags: false,
                                           config: userData.decode)
        viommu.holders += 1
        return HWPTNested(parent: viommu.parent, domain: domain, flags: flags, viommu: viommu)
    }

    /// IOMMU_HWPT_INVALIDATE on object `id`: a nested HWPT passes the requests to its driver
    /// (`entry(i)` reads request i), a vIOMMU to its driver (`readAll()` reads the whole array,
    /// as iommu_copy_struct_from_full_user_array does). Errors: ENOENT (no object), EINVAL
    /// (neither a nested HWPT nor a vIOMMU), EOPNOTSUPP (a driver without user cache
    /// invalidation), and the driver's per-request errors with the count done before them.
    public func invalidateHWPT(_ id: UInt32, type: NestedInvalidationType, count: UInt32,
                               viommuType: VIOMMUInvalidationType = .other(0),
                               readAll: () throws(IOMMUError) -> [VIOMMUInvalidation] = { [] },
                               entry: (UInt32) throws(IOMMUError) -> NestedInvalidation) -> InvalidationResult {
        lock.withLock { () -> InvalidationResult in
            do throws(IOMMUError) {
                try checkOpen()
            } catch {
                return InvalidationResult(done: 0, error: error)
            }
            guard let object = table.get(id) else {
                return InvalidationResult(done: 0, error: IOMMUError(.ENOENT, "no object \(id)"))
            }
            if let viommu = object as? VIOMMU {
                return invalidateVIOMMU(viommu, type: viommuType, count: count, read: readAll)
            }
            guard let nested = object as? HWPTNested else {
                return InvalidationResult(done: 0, error: IOMMUError(.EINVAL, "\(object.kind.rawValue) \(id) is neither a nested HWPT nor a vIOMMU"))
            }
            guard let (done, error) = nested.domain.invalidate(type: type, count: count, entry: entry) else {
                return InvalidationResult(done: 0, error: IOMMUError(.EOPNOTSUPP, "the driver has no user cache invalidation"))
            }
            return InvalidationResult(done: done, error: error)
        }
    }

    /// The selftest mock IOTLB of nested HWPT `hwptID` (get_md_pagetable_nested): ENOENT if it
    /// is not a nested HWPT, EINVAL if its domain is not the mock's.
    public func mockNestedIOTLB(hwpt hwptID: UInt32) throws(IOMMUError) -> [UInt32] {
        try lock.withLock { () throws(IOMMUError) -> [UInt32] in
            try checkOpen()
            let nested = try lookup(hwptID, as: HWPTNested.self, "nested HWPT")
            guard let mock = nested.domain as? MockNestedDomain else {
                throw IOMMUError(.EINVAL, "HWPT \(hwptID) is not a mock nested domain")
            }
            return mock.iotlb
        }
    }

    /// The parent HWPT of nested HWPT `hwptID` (ENOENT if it is not one).
    public func nestedParent(hwpt hwptID: UInt32) throws(IOMMUError) -> UInt32 {
        try lock.withLock { () throws(IOMMUError) -> UInt32 in
            try checkOpen()
            return try lookup(hwptID, as: HWPTNested.self, "nested HWPT").parent.id
        }
    }
}
