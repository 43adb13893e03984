// One open file of /dev/iommu: the ioctl entry point of the ABI layer.

import UIOMMUBase
public import ProcessMemory
import IOMMUHardware
public import IOMMUEngine

/// One open file description of /dev/iommu (the kernel's `struct file` + `iommufd_ctx`).
///
/// `ioctl` takes the raw request number and third argument and returns what the system call
/// returns: a value ≥ 0, or `-errno`. Safe to call from many threads at once: the engine
/// context serialises every operation; this file keeps no state of its own.
public final class IOMMUFDFile: @unchecked Sendable {
    /// The engine context behind this file.
    public let context: IOMMUFDContext
    /// copy_from_user / copy_to_user of the calling process.
    public let user: any UserMemoryAccess
    /// Installs auxiliary fds; resolves memfds for IOMMU_IOAS_MAP_FILE.
    public let broker: any FileDescriptorBroker
    public let options: ABIOptions
    /// The address space of the process making the calls through this file object: user VAs
    /// of IOAS_MAP and of the selftest's checks refer to it (the kernel's current->mm). The
    /// context's own memory, except for views of a shared context (`init(sharing:…)`).
    public let callerMemory: any PinnableMemory
    /// The file that owns the context (self, or the file a view shares).
    private let primary: IOMMUFDFile?

    /// Entries of the dispatch table in use: 0x80…0x94, plus the selftest hole and
    /// IOMMU_TEST_CMD (0xa0) when the selftest ops are served, as with CONFIG_IOMMUFD_TEST.
    let tableCount: Int

    public init(platform: Platform, memory: any PinnableMemory, user: any UserMemoryAccess,
                broker: any FileDescriptorBroker, options: ABIOptions) {
        self.context = IOMMUFDContext(platform: platform, memory: memory, pinPolicy: options.pinPolicy)
        self.user = user
        self.broker = broker
        self.options = options
        self.callerMemory = memory
        self.primary = nil
        self.tableCount = options.selftestOps ? IoctlTable.countWithSelftest : IoctlTable.countWithoutSelftest
        // IOMMU_TEST_OP_MD_CHECK_REFS reads per-page pin counts, which are kept only on demand.
        if options.selftestOps { platform.ledger.physicalPins.startTracking() }
    }

    /// A view of `file`'s context for another process that shares it (server mode: a forked
    /// child, or a process that received the descriptor over SCM_RIGHTS): the same objects,
    /// that process's memory and user-memory access. A view holds no reference of its own
    /// (`retainUser`/`release` act on the shared file).
    public init(sharing file: IOMMUFDFile, memory: any PinnableMemory, user: any UserMemoryAccess,
                broker: any FileDescriptorBroker, options: ABIOptions) {
        let owner = file.primary ?? file
        self.context = owner.context
        self.user = user
        self.broker = broker
        self.options = options
        self.callerMemory = memory
        self.primary = owner
        self.tableCount = owner.tableCount
    }

    /// Holders of the file: its descriptors (one reference for all of them, dropped by the
    /// front end at the last close) plus each VFIO device or group bound to it, as the kernel's
    /// iommufd_ctx_get does. The context closes when the last goes.
    private let usersLock = Lock()
    private var users = 1

    /// Takes a reference for a VFIO device or group; false if the file is already closed.
    public func retainUser() -> Bool {
        if let primary { return primary.retainUser() }
        return usersLock.withLock {
            guard users > 0 else { return false }
            users += 1
            return true
        }
    }

    /// Drops a reference; the last one destroys every object (iommufd_fops_release).
    public func release() {
        if let primary { primary.release(); return }
        let last = usersLock.withLock { () -> Bool in
            users -= 1
            return users == 0
        }
        if last { context.close() }
    }

    /// ioctl(2) on this file. `arg` is the raw third argument: a user pointer for iommufd
    /// commands, an integer for VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU, ignored for
    /// VFIO_GET_API_VERSION. Returns ≥ 0, or -errno.
    public func ioctl(_ request: UInt, _ arg: UInt64) -> Int64 {
        // The kernel's `cmd` is an unsigned int: the upper half of a long request is dropped.
        let cmd = UInt32(truncatingIfNeeded: request)
        guard let trace = options.trace else { return dispatch(cmd, arg, nil) }
        let record = TraceRecord()
        let result = dispatch(cmd, arg, record)
        trace(record.line(cmd: cmd, result: result))
        return result
    }

    // MARK: VFIO compatibility IOAS

    /// The compat IOAS (the kernel's ictx->vfio_ioas, kept by the engine, which clears it when
    /// that IOAS is destroyed); nil means ENODEV.
    func compatIOAS() -> UInt32? { context.vfioCompatIOAS }

    func setCompatIOAS(_ id: UInt32?) throws(IOMMUError) { try context.setVFIOCompatIOAS(id) }

    /// IOMMU_DESTROY.
    func destroyObject(_ id: UInt32) throws(IOMMUError) { try context.destroy(id) }
}
