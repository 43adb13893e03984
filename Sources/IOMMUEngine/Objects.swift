// The object table: every user-visible object of one context, by ID.
//
// IDs are the lowest free integer from 1 (the kernel's xarray with XA_FLAGS_ALLOC1), so an ID
// is reused after destroy. Each object counts its long-term holders — other objects or drivers
// that keep it alive (an HWPT holds its IOAS, a nested HWPT its parent HWPT or its vIOMMU, a
// HWPT allocated with IOMMU_HWPT_FAULT_ID_VALID its FAULT, an attached device holds its HWPT,
// the binding driver holds the DEVICE, a fault queue's or vEVENTQ's descriptor its object, a
// vIOMMU its parent HWPT, a vDEVICE or vEVENTQ its vIOMMU). DESTROY works on any kind and gives
// EBUSY while holders remain; a tombstone (the ID of a vDEVICE its device's unbind destroyed)
// gives ENOENT and keeps its ID until the context closes.

public import UIOMMUBase

/// The kinds of user-visible object (enum iommufd_object_type).
public enum ObjectKind: String, Sendable, CaseIterable {
    case ioas = "IOAS"
    case hwptPaging = "HWPT_PAGING"
    case hwptNested = "HWPT_NESTED"
    case device = "DEVICE"
    case access = "ACCESS"
    case fault = "FAULT"
    case viommu = "VIOMMU"
    case vdevice = "VDEVICE"
    case veventq = "VEVENTQ"
    case hwQueue = "HW_QUEUE"
    /// The selftest's wrapper around a mock device binding.
    case selftest = "SELFTEST"
}

/// What a snapshot of the object table reports about one object.
public struct ObjectInfo: Hashable, Sendable, CustomStringConvertible {
    public var id: UInt32
    public var kind: ObjectKind
    public var holders: Int
    public var summary: String
    public var description: String { "\(kind.rawValue) \(id)\(summary.isEmpty ? "" : " (\(summary))")" }
}

/// Base class of every object in the table.
class EngineObject {
    let kind: ObjectKind
    /// 0 until the object is in the table.
    var id: UInt32 = 0
    /// Long-term references held by other objects or by a driver.
    var holders = 0

    init(kind: ObjectKind) { self.kind = kind }

    /// Releases whatever this object holds. Called once, under the context lock, after the
    /// object left the table. Never fails.
    func teardown(_ context: IOMMUFDContext) {}

    /// One-line description for listings.
    var summary: String { "" }
}

/// ID → object, with lowest-free ID allocation.
struct ObjectTable {
    private(set) var objects: [UInt32: EngineObject] = [:]
    /// Freed IDs below `next`, sorted descending so the lowest is `last`.
    private var freeIDs: [UInt32] = []
    private var next: UInt32 = 1

    /// The largest ID (the kernel's xa_limit_31b: 1 … INT_MAX).
    static let maxID = UInt32(Int32.max)

    mutating func insert(_ object: EngineObject) throws(IOMMUError) -> UInt32 {
        let id: UInt32
        if let free = freeIDs.popLast() {
            id = free
        } else {
            guard next <= Self.maxID else { throw IOMMUError(.ENOSPC, "object IDs exhausted") }
            id = next
            next += 1
        }
        object.id = id
        objects[id] = object
        return id
    }

    mutating func remove(_ id: UInt32) {
        guard objects.removeValue(forKey: id) != nil else { return }
        if id == next - 1 {
            next -= 1
            // Fold freed IDs that now sit at the top back into `next`.
            while let top = freeIDs.first, top == next - 1 {
                freeIDs.removeFirst()
                next -= 1
            }
        } else {
            // Keep descending order.
            var lo = 0, hi = freeIDs.count
            while lo < hi { let mid = (lo + hi) >> 1; if freeIDs[mid] > id { lo = mid + 1 } else { hi = mid } }
            freeIDs.insert(id, at: lo)
        }
    }

    func get(_ id: UInt32) -> EngineObject? { objects[id] }

    /// Puts `object` under the ID `id` already has (a tombstone in place of a destroyed object).
    mutating func replace(_ id: UInt32, with object: EngineObject) {
        guard objects[id] != nil else { return }
        object.id = id
        objects[id] = object
    }

    var isEmpty: Bool { objects.isEmpty }
    var count: Int { objects.count }
}
