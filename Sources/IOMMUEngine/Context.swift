// The context: one open /dev/iommu (the kernel's iommufd_ctx).
//
// Locking: one lock per context guards the object table and every object in it. Operations
// are short (a map of 4 GiB is a few page-table fills), so a single lock keeps the object
// graph simple and every operation atomic; cross-context state (device ownership, the pin
// ledger, the IOMMU units) has its own locks, always taken after the context lock.

public import UIOMMUBase
public import ProcessMemory
public import IOMMUHardware

/// One iommufd context: the objects created through one open of /dev/iommu.
public final class IOMMUFDContext: @unchecked Sendable {
    public let platform: Platform
    /// The memory of the process that issues the calls (user VAs in IOAS_MAP refer to it).
    public let memory: any PinnableMemory
    /// The caller's RLIMIT_MEMLOCK and privilege, for pin accounting.
    public var pinPolicy: PinPolicy {
        get { lock.withLock { _pinPolicy } }
        set { lock.withLock { _pinPolicy = newValue } }
    }
    /// Failure injection for every resource point in this context's operations.
    public let failures: FailureInjector

    let lock = Lock()
    var table = ObjectTable()
    var accountMode: AccountMode = .user
    var _pinPolicy: PinPolicy
    /// Pages processed per batch when pinning (IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT).
    var temporaryMemoryLimitPages: UInt64 = 65536
    /// The IOAS the VFIO type1 compatibility ioctls act on (IOMMU_VFIO_IOAS).
    var vfioCompatIOASID: UInt32?
    private(set) var isClosed = false

    public init(platform: Platform, memory: any PinnableMemory, pinPolicy: PinPolicy = PinPolicy(),
                failures: FailureInjector = FailureInjector()) {
        self.platform = platform
        self.memory = memory
        self._pinPolicy = pinPolicy
        self.failures = failures
    }

    deinit {
        close()
    }

    // MARK: Object table helpers (call with the lock held)

    func install(_ object: EngineObject) throws(IOMMUError) -> UInt32 {
        try failures.check("object.alloc")
        return try table.insert(object)
    }

    /// The object `id` of type `T`, or ENOENT.
    func lookup<T: EngineObject>(_ id: UInt32, as type: T.Type, _ what: String) throws(IOMMUError) -> T {
        guard let object = table.get(id) as? T else {
            throw IOMMUError(.ENOENT, "no \(what) with ID \(id)")
        }
        return object
    }

    /// Removes an object that has no holders and releases what it holds.
    func remove(_ object: EngineObject) {
        precondition(object.holders == 0, "removing a held object")
        if object.kind == .ioas && vfioCompatIOASID == object.id { vfioCompatIOASID = nil }
        table.remove(object.id)
        object.teardown(self)
    }

    func checkOpen() throws(IOMMUError) {
        if isClosed { throw IOMMUError(.EBADF, "the context is closed") }
    }

    // MARK: Public object operations

    /// IOMMU_DESTROY: destroys any object by ID. ENOENT for an unknown ID, EBUSY while anything
    /// holds the object.
    public func destroy(_ id: UInt32) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            guard let object = table.get(id), !(object is Tombstone) else { throw IOMMUError(.ENOENT, "no object with ID \(id)") }
            guard object.holders == 0 else {
                throw IOMMUError(.EBUSY, "\(object.kind) \(id) is in use (\(object.holders) holder(s))")
            }
            remove(object)
        }
    }

    /// The kind of object `id`, or nil if there is none.
    public func objectKind(_ id: UInt32) -> ObjectKind? {
        lock.withLock { table.get(id).flatMap { $0 is Tombstone ? nil : $0.kind } }
    }

    /// The IOAS the VFIO type1 compatibility ioctls act on (IOMMU_VFIO_IOAS); cleared when
    /// that IOAS is destroyed.
    public var vfioCompatIOAS: UInt32? { lock.withLock { vfioCompatIOASID } }

    /// IOMMU_VFIO_IOAS SET (an IOAS ID; ENOENT otherwise) or CLEAR (nil).
    public func setVFIOCompatIOAS(_ id: UInt32?) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            if let id { _ = try ioas(id) }
            vfioCompatIOASID = id
        }
    }

    /// Every object in the table, by ID.
    public func objects() -> [ObjectInfo] {
        lock.withLock {
            table.objects.values.filter { !($0 is Tombstone) }.sorted { $0.id < $1.id }.map {
                ObjectInfo(id: $0.id, kind: $0.kind, holders: $0.holders, summary: $0.summary)
            }
        }
    }

    /// Closes the context: unbinds devices and accesses (as their drivers would on release),
    /// then destroys every object, leaves first, synchronously.
    public func close() {
        lock.withLock {
            guard !isClosed else { return }
            // Driver-held objects first: their drivers let go when the context goes.
            for object in table.objects.values.sorted(by: { $0.id < $1.id }) {
                if let device = object as? BoundDevice, device.boundByDriver {
                    device.boundByDriver = false
                    device.holders -= 1
                }
                if let access = object as? Access, access.heldByDriver {
                    access.heldByDriver = false
                    access.holders -= 1
                }
                if let fault = object as? FaultQueue, fault.heldByFile {
                    fault.heldByFile = false
                    fault.holders -= 1
                }
                if let queue = object as? VEventQueue, queue.heldByFile {
                    queue.heldByFile = false
                    queue.holders -= 1
                }
            }
            // Leaves first: repeatedly remove everything nothing holds.
            while !table.isEmpty {
                let leaves = table.objects.values.filter { $0.holders == 0 }.sorted { $0.id > $1.id }
                precondition(!leaves.isEmpty, "object graph has a cycle")
                for object in leaves where table.get(object.id) === object && object.holders == 0 {
                    remove(object)
                }
            }
            isClosed = true
        }
    }

    // MARK: Options

    /// IOMMU_OPTION RLIMIT_MODE get.
    public var rlimitMode: AccountMode { lock.withLock { accountMode } }

    /// IOMMU_OPTION RLIMIT_MODE set: needs privilege (EPERM) and an empty context (EBUSY).
    public func setRlimitMode(_ mode: AccountMode, privileged: Bool) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            guard privileged else { throw IOMMUError(.EPERM, "RLIMIT_MODE needs CAP_SYS_RESOURCE") }
            guard table.isEmpty else { throw IOMMUError(.EBUSY, "objects exist") }
            accountMode = mode
        }
    }

    /// IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: the batch size of pin operations, in pages
    /// (at least 12, as the kernel requires).
    public func setTemporaryMemoryLimit(pages: UInt64) throws(IOMMUError) {
        guard pages >= 12 else { throw IOMMUError(.EINVAL, "limit below 12 pages") }
        lock.withLock { temporaryMemoryLimitPages = pages }
    }

    /// Pages this context's objects keep pinned right now.
    public var pinnedPages: UInt64 {
        lock.withLock {
            var seen = Set<ObjectIdentifier>()
            var total: UInt64 = 0
            for case let ioas as IOAS in table.objects.values {
                for area in ioas.iopt.areas.all(in: 0, .max) where seen.insert(ObjectIdentifier(area.pages)).inserted {
                    total += area.pages.pinnedPageCount
                }
            }
            return total
        }
    }
}
