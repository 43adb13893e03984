/// A Linux errno value (x86-64 / generic numbering).
///
/// The engine never calls into libc, so it cannot use the platform's `errno.h`; these are the
/// Linux numbers, which are what the ioctl ABI returns on every Linux architecture we target.
public struct LinuxErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = LinuxErrno(rawValue: 1)
    public static let ENOENT = LinuxErrno(rawValue: 2)
    public static let ESRCH = LinuxErrno(rawValue: 3)
    public static let EINTR = LinuxErrno(rawValue: 4)
    public static let EIO = LinuxErrno(rawValue: 5)
    public static let ENXIO = LinuxErrno(rawValue: 6)
    public static let E2BIG = LinuxErrno(rawValue: 7)
    public static let EBADF = LinuxErrno(rawValue: 9)
    public static let EAGAIN = LinuxErrno(rawValue: 11)
    public static let ENOMEM = LinuxErrno(rawValue: 12)
    public static let EACCES = LinuxErrno(rawValue: 13)
    public static let EFAULT = LinuxErrno(rawValue: 14)
    public static let EBUSY = LinuxErrno(rawValue: 16)
    public static let EEXIST = LinuxErrno(rawValue: 17)
    public static let ENODEV = LinuxErrno(rawValue: 19)
    public static let EINVAL = LinuxErrno(rawValue: 22)
    public static let ENOSPC = LinuxErrno(rawValue: 28)
    public static let ENOTTY = LinuxErrno(rawValue: 25)
    public static let ERANGE = LinuxErrno(rawValue: 34)
    public static let EOVERFLOW = LinuxErrno(rawValue: 75)
    public static let EBADE = LinuxErrno(rawValue: 52)
    public static let EMSGSIZE = LinuxErrno(rawValue: 90)
    public static let EOPNOTSUPP = LinuxErrno(rawValue: 95)
    public static let EADDRINUSE = LinuxErrno(rawValue: 98)
    public static let ETIMEDOUT = LinuxErrno(rawValue: 110)

    private static let names: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG",
        9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY",
        17: "EEXIST", 19: "ENODEV", 22: "EINVAL", 25: "ENOTTY", 28: "ENOSPC", 34: "ERANGE",
        52: "EBADE", 75: "EOVERFLOW", 90: "EMSGSIZE", 95: "EOPNOTSUPP", 98: "EADDRINUSE",
        110: "ETIMEDOUT",
    ]

    /// The C spelling, e.g. `"EINVAL"`, or `"E<n>"` for numbers we have no name for.
    public var name: String { Self.names[rawValue] ?? "E\(rawValue)" }
    public var description: String { name }
}

/// The error every engine and API operation throws: a Linux errno, the operation that failed,
/// and a human-readable reason.
///
/// The errno is the contract (it is what the kernel would return); `reason` is for people.
public struct IOMMUError: Error, Hashable, Sendable, CustomStringConvertible {
    public var errno: LinuxErrno
    public var operation: String
    public var reason: String

    public init(_ errno: LinuxErrno, _ reason: String = "", operation: String = "") {
        self.errno = errno
        self.reason = reason
        self.operation = operation
    }

    /// A copy that names `operation` if none was named yet.
    public func during(_ operation: String) -> IOMMUError {
        var copy = self
        if copy.operation.isEmpty { copy.operation = operation }
        return copy
    }

    public var description: String {
        let head = operation.isEmpty ? errno.name : "\(operation): \(errno.name)"
        return reason.isEmpty ? head : "\(head) (\(reason))"
    }
}
