// Pinned-page accounting, as the kernel charges iommufd pins.
//
// IOMMU_OPTION_RLIMIT_MODE selects, per context, whom a pin is charged to:
//  - user mode (0, the default): the user's locked_vm, limited by RLIMIT_MEMLOCK;
//  - process mode (1): the process's (mm's) locked_vm, limited by RLIMIT_MEMLOCK.
// Either way the process's pinned_vm (VmPin in /proc/PID/status) grows too. A privileged
// caller (CAP_IPC_LOCK) is not limited. The ledger is host-wide: two contexts of the same user
// share one budget, as they share one user_struct in Linux.

public import UIOMMUBase
public import ProcessMemory

/// How pins are charged (IOMMU_OPTION_RLIMIT_MODE).
public enum AccountMode: UInt64, Sendable, CustomStringConvertible {
    /// Charge the user's locked_vm (the default).
    case user = 0
    /// Charge the process's locked_vm.
    case process = 1
    public var description: String { self == .user ? "user" : "process" }
}

/// The limits of the process that maps memory: its RLIMIT_MEMLOCK and whether it holds
/// CAP_IPC_LOCK. Supplied by the front end (the engine makes no system calls).
public struct PinPolicy: Hashable, Sendable {
    /// RLIMIT_MEMLOCK in bytes; `UInt64.max` for unlimited.
    public var memlockLimit: UInt64
    /// CAP_IPC_LOCK: pins are counted but never refused.
    public var privileged: Bool
    public init(memlockLimit: UInt64 = .max, privileged: Bool = false) {
        self.memlockLimit = memlockLimit; self.privileged = privileged
    }
    /// No limit at all.
    public static let unlimited = PinPolicy(memlockLimit: .max, privileged: true)
}

/// Whom one Pages object charges.
struct PinAccount: Hashable {
    var owner: MemoryOwner
    var mode: AccountMode
    var policy: PinPolicy
}

/// Host-wide pinned-page counters (the kernel's user_struct::locked_vm, mm::locked_vm and
/// mm::pinned_vm), in pages.
public final class PinLedger: @unchecked Sendable {
    private let lock = Lock()
    private var userLocked: [UInt32: UInt64] = [:]
    private var processLocked: [Int32: UInt64] = [:]
    private var processPinned: [Int32: UInt64] = [:]
    private var total: UInt64 = 0
    /// Pin counts per physical page, host-wide (PinRegistry.swift; off until started).
    public let physicalPins = PhysicalPinCounter()

    public init() {}

    func charge(pages: UInt64, to account: PinAccount) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            let limit = account.policy.memlockLimit / hostPageSize
            switch account.mode {
            case .user:
                let current = userLocked[account.owner.uid, default: 0]
                if !account.policy.privileged && (pages > limit || current > limit - pages) {
                    throw IOMMUError(.ENOMEM, "RLIMIT_MEMLOCK of user \(account.owner.uid) exceeded")
                }
                userLocked[account.owner.uid] = current + pages
            case .process:
                let current = processLocked[account.owner.pid, default: 0]
                if !account.policy.privileged && (pages > limit || current > limit - pages) {
                    throw IOMMUError(.ENOMEM, "RLIMIT_MEMLOCK of process \(account.owner.pid) exceeded")
                }
                processLocked[account.owner.pid] = current + pages
            }
            processPinned[account.owner.pid, default: 0] += pages
            total += pages
        }
    }

    func uncharge(pages: UInt64, from account: PinAccount) {
        lock.withLock {
            switch account.mode {
            case .user: Self.subtract(&userLocked, account.owner.uid, pages)
            case .process: Self.subtract(&processLocked, account.owner.pid, pages)
            }
            Self.subtract(&processPinned, account.owner.pid, pages)
            total -= pages
        }
    }

    private static func subtract<K: Hashable>(_ d: inout [K: UInt64], _ k: K, _ n: UInt64) {
        let v = d[k, default: 0]
        precondition(v >= n, "pin ledger underflow")
        d[k] = v == n ? nil : v - n
    }

    /// Pages pinned host-wide, by every context.
    public var totalPinnedPages: UInt64 { lock.withLock { total } }
    /// VmPin of a process, in pages.
    public func pinnedPages(pid: Int32) -> UInt64 { lock.withLock { processPinned[pid, default: 0] } }
    /// VmLck contribution of a process (process mode), in pages.
    public func lockedPages(pid: Int32) -> UInt64 { lock.withLock { processLocked[pid, default: 0] } }
    /// locked_vm of a user (user mode), in pages.
    public func lockedPages(uid: UInt32) -> UInt64 { lock.withLock { userLocked[uid, default: 0] } }
}
