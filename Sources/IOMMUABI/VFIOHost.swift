// The seam between the VFIO files of the ABI layer and the front end that owns descriptors.
//
// VFIO ioctls name other files by descriptor number: VFIO_DEVICE_BIND_IOMMUFD and
// VFIO_GROUP_SET_CONTAINER take an iommufd (or a /dev/vfio/vfio container, which is an iommufd
// here as with the kernel's IOMMUFD_VFIO_CONTAINER), VFIO_DEVICE_SET_IRQS takes eventfds, and
// VFIO_GROUP_GET_DEVICE_FD returns a new descriptor. The ABI layer never touches a descriptor;
// the front end resolves and installs them through this protocol (the interposer through its
// fd table, tests through doubles).

public import UIOMMUBase

/// A Linux errno as a Swift error (for `Result`).
public struct VFIOError: Error, Hashable, Sendable {
    public var errno: LinuxErrno
    public init(_ errno: LinuxErrno) { self.errno = errno }
}

/// What a descriptor number turned out to be.
public enum DescriptorLookup<File> {
    /// One of ours, of the wanted kind.
    case file(File)
    /// An open descriptor of some other file (the kernel's f_op check fails: EBADFD or EINVAL).
    case otherFile
    /// Not an open descriptor (EBADF).
    case notOpen
}

/// An eventfd the kernel keeps a reference to (eventfd_ctx): signalling adds 1 to its counter.
public protocol EventNotifier: AnyObject, Sendable {
    func signal()
}

/// What VFIO needs from whoever owns the descriptors.
public protocol VFIOHost: AnyObject, Sendable {
    /// The iommufd open on `fd` (from /dev/iommu or /dev/vfio/vfio).
    func iommufd(fd: Int32) -> DescriptorLookup<IOMMUFDFile>
    /// A reference to the eventfd open on `fd` (eventfd_ctx_fdget): EBADF if `fd` is not open,
    /// EINVAL if it is not an eventfd. The reference stays valid after the program closes `fd`.
    func eventNotifier(fd: Int32) -> Result<any EventNotifier, VFIOError>
    /// The VFIO group file open on `fd` (VFIO_DEVICE_PCI_HOT_RESET names groups by descriptor).
    func groupFile(fd: Int32) -> DescriptorLookup<VFIOGroupFile>
    /// Installs a new descriptor (O_RDWR | O_CLOEXEC) for a device file opened through a group;
    /// returns the fd or -errno. On success the front end owns a reference to `file` and calls
    /// `release()` when its last descriptor closes.
    func installDevice(_ file: VFIODeviceFile) -> Int32
}
