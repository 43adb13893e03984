import Synchronization

/// The kernel's fail_nth idea without debugfs: every point in the engine that can fail for want
/// of a resource (allocation, pin, page-table growth) asks the injector first.
///
/// Arm it with `failNth(n)`: the n-th check from then on fails (and only that one), so a test
/// can sweep a scenario failing at point 1, 2, 3 … until a run finishes without consuming the
/// injection. Disarmed, a check costs one relaxed atomic load.
public final class FailureInjector: Sendable {
    private let remaining = Atomic<Int>(0)     // 0 = disarmed; n = fail the n-th check
    private let fired = Atomic<Bool>(false)
    private let lastSite = Mutex<String>("")

    public init() {}

    /// Fails the `n`-th check from now (n ≥ 1). `n == 0` disarms.
    public func failNth(_ n: Int) {
        fired.store(false, ordering: .relaxed)
        remaining.store(max(0, n), ordering: .sequentiallyConsistent)
    }

    public func disarm() { remaining.store(0, ordering: .sequentiallyConsistent) }

    /// True once the armed failure was delivered.
    public var didFire: Bool { fired.load(ordering: .sequentiallyConsistent) }

    /// The site name of the failure that fired last.
    public var firedSite: String { lastSite.withLock { $0 } }

    /// Asks whether the point `site` should fail now. Call once per real failure point.
    @inline(__always)
    public func shouldFail(_ site: StaticString) -> Bool {
        if remaining.load(ordering: .relaxed) == 0 { return false }
        return slowCheck(site)
    }

    @inline(never)
    private func slowCheck(_ site: StaticString) -> Bool {
        while true {
            let current = remaining.load(ordering: .sequentiallyConsistent)
            if current == 0 { return false }
            let next = current - 1
            if remaining.compareExchange(expected: current, desired: next,
                                         ordering: .sequentiallyConsistent).exchanged {
                if next == 0 {
                    fired.store(true, ordering: .sequentiallyConsistent)
                    lastSite.withLock { $0 = "\(site)" }
                    return true
                }
                return false
            }
        }
    }

    /// Throws ENOMEM if the point `site` should fail now.
    @inline(__always)
    public func check(_ site: StaticString, _ errno: LinuxErrno = .ENOMEM) throws(IOMMUError) {
        if shouldFail(site) { throw IOMMUError(errno, "injected failure at \(site)") }
    }
}
