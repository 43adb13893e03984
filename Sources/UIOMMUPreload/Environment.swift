// The UIOMMUFD_* environment variables (see Runtime.swift).

import CUIOMMUInterpose
#if canImport(Glibc)
import Glibc
#endif

struct Environment {
    var machinePath: String?
    var selftest: Bool
    var tracePath: String?
    var leaks: Bool
    var safeUserAccess: Bool
    /// UIOMMUFD_GRANT_CAP=ipc_lock,sys_resource: capabilities the simulated kernel treats the
    /// program as holding although the process lacks them (CI containers drop them).
    var grantIPCLock: Bool
    var grantSysResource: Bool

    init() {
        func value(_ name: String) -> String? {
            guard let p = getenv(name) else { return nil }
            let s = String(cString: p)
            return s.isEmpty ? nil : s
        }
        func flag(_ name: String) -> Bool {
            guard let v = value(name) else { return false }
            return v != "0" && v != "no" && v != "false"
        }
        machinePath = value("UIOMMUFD_MACHINE")
        selftest = flag("UIOMMUFD_SELFTEST")
        tracePath = value("UIOMMUFD_TRACE")
        leaks = flag("UIOMMUFD_LEAKS")
        safeUserAccess = value("UIOMMUFD_UACCESS") == "safe"
        let granted = (value("UIOMMUFD_GRANT_CAP") ?? "").split(separator: ",").map { $0.lowercased() }
        grantIPCLock = granted.contains("ipc_lock") || granted.contains("cap_ipc_lock")
        grantSysResource = granted.contains("sys_resource") || granted.contains("cap_sys_resource")
    }

    /// Where trace lines go: a write(2) per line to stderr or to a file opened for appending.
    func traceSink() -> (@Sendable (String) -> Void)? {
        guard let tracePath else { return nil }
        let fd: Int32
        if tracePath == "stderr" || tracePath == "-" {
            fd = 2
        } else {
            let opened = Glibc.open(tracePath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard opened >= 0 else {
                diagnostic("uiommufd: UIOMMUFD_TRACE=\(tracePath): \(String(cString: strerror(errno))); not tracing")
                return nil
            }
            // Out of the way of the program's own low descriptor numbers.
            let high = fcntl(opened, F_DUPFD_CLOEXEC, 900)
            if high >= 0 { _ = Glibc.close(opened); fd = high } else { fd = opened }
        }
        let pid = getpid()
        return { line in
            var text = "[uiommufd \(pid)] "
            text.append(line)
            text.append("\n")
            text.withUTF8 { _ = uiommu_raw_write_all(fd, $0.baseAddress, $0.count) }
        }
    }
}
