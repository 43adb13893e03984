public import UIOMMUBase

// The kernel selftest's mock IOMMU (drivers/iommu/iommufd/selftest.c) as one more hardware
// model: what its driver reports and accepts. Its page table is MockPageTable; its devices
// sit on a bus of their own (the engine's mock bus creates them on demand for
// IOMMU_TEST_OP_MOCK_DOMAIN).

public extension IOMMUUnitSpec {
    /// The selftest's mock IOMMU: 2 KiB pages over [MOCK_APERTURE_START, MOCK_APERTURE_LAST],
    /// dirty tracking (per device, unless MOCK_FLAGS_DEVICE_NO_DIRTY), nesting parents, PASIDs
    /// up to MOCK_PASID_WIDTH bits (per device, with MOCK_FLAGS_DEVICE_PASID), no reserved
    /// regions, and no forced snooping (it reports IOMMU_CAP_CACHE_COHERENCY, not
    /// IOMMU_CAP_ENFORCE_CACHE_COHERENCY).
    static func selftestMock(name: String = "iommufd_selftest_iommu") -> IOMMUUnitSpec {
        IOMMUUnitSpec(name: name, kind: .selftestMock, format: .mock, pageSizes: MockPageTable.ioPageSize,
                      aperture: MockPageTable.defaultAperture, enforcesCacheCoherency: false,
                      dirtyTracking: true, nesting: true, pasidWidth: 20, reservedRegions: [])
    }
}

public extension IOMMUKind {
    /// Whether the driver's paging-domain allocation accepts IOMMU_HWPT_FAULT_ID_VALID (an
    /// IOPF-capable paging domain). The mock's domain_alloc_paging_flags refuses every flag but
    /// NEST_PARENT, DIRTY_TRACKING and PASID, with EOPNOTSUPP.
    var pagingDomainsTakeFaults: Bool { self != .selftestMock }
}

/// The selftest mock's nested domain (mock_iommu_domain_nested): no stage-1 table, an IOTLB of
/// `iotlbCount` values set from IOMMU_HWPT_DATA_SELFTEST and cleared (to 0) by invalidation.
public final class MockNestedDomain: NestedDomain, @unchecked Sendable {
    /// MOCK_NESTED_DOMAIN_IOTLB_NUM and _ID_MAX.
    public static let iotlbCount = 4
    public static let iotlbIDMax: UInt32 = 3
    /// IOMMU_TEST_INVALIDATE_FLAG_ALL.
    public static let invalidateAll: UInt32 = 1 << 0

    private let lock = Lock()
    private var entries: [UInt32]

    init(parent: IOMMUDomain, otherFlags: Bool, config: () throws(IOMMUError) -> NestedDomainConfig) throws(IOMMUError) {
        // The mock driver takes only IOMMU_HWPT_ALLOC_PASID, and a paging parent of its own.
        if otherFlags { throw IOMMUError(.EOPNOTSUPP, "the mock nested domain takes no such flags") }
        guard parent.kind == .selftestMock else { throw IOMMUError(.EINVAL, "the parent is not a mock domain") }
        switch try config() {
        case .selftest(let iotlb):
            entries = Array(repeating: iotlb, count: Self.iotlbCount)
        }
        super.init(kind: .selftestMock, parent: parent)
    }

    /// The IOTLB values, entry 0 first.
    public var iotlb: [UInt32] { lock.withLock { entries } }

    override public func invalidate(type: NestedInvalidationType, count: UInt32,
                                    entry: (UInt32) throws(IOMMUError) -> NestedInvalidation) -> (done: UInt32, error: IOMMUError?)? {
        guard type == .selftest else {
            return (0, IOMMUError(.EINVAL, "invalidation data type is not IOMMU_HWPT_INVALIDATE_DATA_SELFTEST"))
        }
        var done: UInt32 = 0
        while done < count {
            let request: NestedInvalidation
            do throws(IOMMUError) {
                request = try entry(done)
            } catch {
                return (done, error)
            }
            switch request {
            case .selftest(let flags, let id):
                if flags & ~Self.invalidateAll != 0 {
                    return (done, IOMMUError(.EOPNOTSUPP, "request \(done): unknown flags 0x\(String(flags, radix: 16))"))
                }
                if id > Self.iotlbIDMax {
                    return (done, IOMMUError(.EINVAL, "request \(done): iotlb_id \(id) > \(Self.iotlbIDMax)"))
                }
                lock.withLock {
                    if flags & Self.invalidateAll != 0 {
                        for k in entries.indices { entries[k] = 0 }
                    } else {
                        entries[Int(id)] = 0
                    }
                }
            }
            done += 1
        }
        return (done, nil)
    }
}

public extension IOMMUKind {
    /// The driver lets user space own the PASID table (ops->user_pasid_table): a page request
    /// with a PASID no PASID attachment claims goes to the nested domain of the RID.
    var userPASIDTable: Bool { self == .selftestMock || self == .armSMMUv3 }
}

// MARK: - The mock's vIOMMU (IOMMU_VIOMMU_TYPE_SELFTEST)

/// The per-device cache of a mock device (the selftest's mock_dev cache entries): every entry
/// starts at `defaultValue` and a vIOMMU invalidation clears it to 0.
public final class MockDeviceCache: @unchecked Sendable {
    /// MOCK_DEV_CACHE_NUM and MOCK_DEV_CACHE_ID_MAX.
    public static let count = 4
    public static let idMax: UInt32 = 3
    /// IOMMU_TEST_DEV_CACHE_DEFAULT.
    public static let defaultValue: UInt32 = 0xbaddad

    private let lock = Lock()
    private var entries = Array(repeating: MockDeviceCache.defaultValue, count: MockDeviceCache.count)

    public init() {}

    /// The entries, entry 0 first.
    public var values: [UInt32] { lock.withLock { entries } }

    /// Clears entry `id`, or all of them.
    public func invalidate(all: Bool, id: UInt32) {
        lock.withLock {
            if all {
                for k in entries.indices { entries[k] = 0 }
            } else if Int(id) < entries.count {
                entries[Int(id)] = 0
            }
        }
    }
}

/// One request of a vIOMMU cache invalidation, decoded by the ABI layer.
public enum VIOMMUInvalidation: Hashable, Sendable {
    /// IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: `flags` (bit 0: all entries), the vDEVICE's
    /// virtual ID, the cache entry.
    case selftest(flags: UInt32, vdevID: UInt32, cacheID: UInt32)
}

/// The data type of a vIOMMU HWPT_INVALIDATE array, as the driver sees it.
public enum VIOMMUInvalidationType: Hashable, Sendable {
    case selftest
    case other(UInt32)
}

/// What an IOMMU driver offers for vIOMMUs (get_viommu_size / viommu_init and the vIOMMU
/// ops). Only the selftest mock has one here.
public struct VIOMMUDriver: Sendable {
    /// The vIOMMU type the driver allocates (IOMMU_VIOMMU_TYPE_*).
    public var type: UInt32
    /// The vEVENT type its devices report (IOMMU_VEVENTQ_TYPE_*).
    public var eventType: UInt32
    /// Bytes of the mmap region viommu_init exports when given driver data (0: none).
    public var mmapLength: UInt64

    /// The driver of `kind` for vIOMMU type `type`, or nil (EOPNOTSUPP).
    public static func of(_ kind: IOMMUKind, type: UInt32) -> VIOMMUDriver? {
        guard kind == .selftestMock, type == MockVIOMMU.type else { return nil }
        return VIOMMUDriver(type: type, eventType: MockVIOMMU.eventType, mmapLength: MockVIOMMU.mmapLength)
    }
}

/// The mock vIOMMU (mock_viommu): a loopback page the user can read back, and cache
/// invalidation of the devices its vDEVICEs name.
public enum MockVIOMMU {
    /// IOMMU_VIOMMU_TYPE_SELFTEST and IOMMU_VEVENTQ_TYPE_SELFTEST.
    public static let type: UInt32 = 0xdead_beef
    public static let eventType: UInt32 = 0xbeef_beef
    /// Two 4 KiB pages.
    public static let mmapLength: UInt64 = 2 * 4096
    public static let invalidateAll: UInt32 = 1 << 0

    /// mock_viommu_cache_invalidate over requests the ABI layer already read in full:
    /// requests in order; unknown flags EOPNOTSUPP, a cache entry past the last or a virtual
    /// ID without a vDEVICE EINVAL. Returns the count done and the error that stopped it.
    public static func invalidate(_ requests: [VIOMMUInvalidation],
                                  cache: (UInt64) -> MockDeviceCache?) -> (done: UInt32, error: IOMMUError?) {
        var done: UInt32 = 0
        for request in requests {
            switch request {
            case .selftest(let flags, let vdevID, let cacheID):
                if flags & ~invalidateAll != 0 {
                    return (done, IOMMUError(.EOPNOTSUPP, "request \(done): unknown flags 0x\(String(flags, radix: 16))"))
                }
                if cacheID > MockDeviceCache.idMax {
                    return (done, IOMMUError(.EINVAL, "request \(done): cache_id \(cacheID) > \(MockDeviceCache.idMax)"))
                }
                guard let target = cache(UInt64(vdevID)) else {
                    return (done, IOMMUError(.EINVAL, "request \(done): no vDEVICE with virtual ID 0x\(String(vdevID, radix: 16))"))
                }
                target.invalidate(all: flags & invalidateAll != 0, id: cacheID)
            }
            done += 1
        }
        return (done, nil)
    }
}
