// The seam between the ABI layer and the front end that owns file descriptors.
//
// The ABI layer turns ioctl argument bytes into engine calls and back, with the kernel's size
// rule and errno. It never touches a file descriptor or a raw pointer itself: user memory is
// reached through `UserMemoryAccess` (copy_from_user / copy_to_user), and the few objects that
// the kernel hands out as file descriptors (selftest access objects, fault queues, vEVENTQs)
// are installed through a `FileDescriptorBroker`. The interposer implements both; tests
// implement them over a simulated address space.

import UIOMMUBase
public import ProcessMemory
public import IOMMUEngine

/// copy_from_user / copy_to_user for the calling process.
public protocol UserMemoryAccess: AnyObject, Sendable {
    /// Copies `count` bytes at user address `uptr` into `destination`; false means EFAULT
    /// (unmapped, or NULL). Must never crash on a bad address.
    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool
    /// Copies `count` bytes from `source` to user address `uptr`; false means EFAULT.
    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool
}

/// A file the ABI layer hands out as a file descriptor (the kernel's anon-inode files).
public protocol AuxiliaryFile: AnyObject, Sendable {
    /// read(2): returns bytes read or -errno.
    func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Int
    /// write(2): returns bytes written or -errno.
    func write(from buffer: UnsafeRawPointer, count: Int) -> Int
    /// True if a read would not block (poll's POLLIN).
    var isReadable: Bool { get }
    /// The last descriptor for the file closed.
    func release()
}

/// What the ABI layer needs from whoever owns the file descriptors.
public protocol FileDescriptorBroker: AnyObject, Sendable {
    /// Installs a new descriptor whose read/write/poll/close reach `file`; returns the fd
    /// number or -errno.
    func install(_ file: any AuxiliaryFile) -> Int32
    /// The memory behind descriptor `fd` for IOMMU_IOAS_MAP_FILE (a memfd), or nil if `fd` is
    /// not a descriptor of a mappable file (EBADF).
    func fileMemory(fd: Int32) -> (any PinnableMemory)?
    /// The auxiliary file behind descriptor `fd` if it is one this broker installed and it is
    /// still open (the kernel's fget(fd) and f_op check, e.g. for the selftest's access fds).
    func auxiliaryFile(fd: Int32) -> (any AuxiliaryFile)?
}

public extension FileDescriptorBroker {
    /// Brokers that hand out no auxiliary files find none.
    func auxiliaryFile(fd: Int32) -> (any AuxiliaryFile)? { nil }
}

/// How an iommufd file behaves.
public struct ABIOptions: Sendable {
    /// Serve IOMMU_TEST_CMD (the kernel has it only with CONFIG_IOMMUFD_TEST).
    public var selftestOps: Bool
    /// Receives one decoded line per ioctl (strace-like), if set.
    public var trace: (@Sendable (String) -> Void)?
    /// The caller's RLIMIT_MEMLOCK and capabilities.
    public var pinPolicy: PinPolicy
    /// CAP_SYS_RESOURCE (IOMMU_OPTION RLIMIT_MODE needs it).
    public var canSetRlimitMode: Bool

    public init(selftestOps: Bool = false, trace: (@Sendable (String) -> Void)? = nil,
                pinPolicy: PinPolicy = PinPolicy(), canSetRlimitMode: Bool = false) {
        self.selftestOps = selftestOps; self.trace = trace
        self.pinPolicy = pinPolicy; self.canSetRlimitMode = canSetRlimitMode
    }
}
