// The kernel selftest's objects on the engine's real machinery (drivers/iommu/iommufd/
// selftest.c): mock devices behind the mock IOMMU, and the SELFTEST object that wraps one
// device binding.
//
// IOMMU_TEST_OP_MOCK_DOMAIN creates a device on a bus of its own (the mock bus), binds it to
// the context exactly as VFIO_DEVICE_BIND_IOMMUFD binds a PCI function (a DEVICE object whose
// driver holds it, a singleton group claimed for the context), and attaches it like any
// device (an automatic HWPT_PAGING with a mock page table, or a given HWPT). The SELFTEST
// object stands for the test driver: destroying it detaches and unbinds the device, which
// returns to the bus for the next MOCK_DOMAIN (the kernel reuses the mock device number the
// same way). Nothing else in the engine knows these devices are mocks: dirty tracking, huge
// IOVA pages and PASIDs come from the device's quirks and the mock unit's description.

public import UIOMMUBase
public import IOMMUHardware

/// The IDs MOCK_DOMAIN returns.
public struct MockDeviceIDs: Hashable, Sendable {
    /// The SELFTEST object (destroy it to unbind the device).
    public var stdev: UInt32
    /// The HWPT the device was attached to.
    public var hwpt: UInt32
    /// The DEVICE object (the binding).
    public var idev: UInt32
}

/// The SELFTEST object: the test driver's hold on one mock device binding.
final class SelftestDevice: EngineObject {
    /// The binding, once MOCK_DOMAIN has finished.
    var device: BoundDevice?

    init() { super.init(kind: .selftest) }

    /// iommufd_selftest_destroy: detach, unbind (the device goes back to the mock bus).
    override func teardown(_ context: IOMMUFDContext) {
        guard let idev = device, context.table.get(idev.id) === idev else { return }
        if idev.hwpt != nil { context.detachLocked(idev) }
        if idev.boundByDriver {
            idev.boundByDriver = false
            idev.holders -= 1
        }
        if idev.holders == 0 { context.remove(idev) }
    }

    override var summary: String {
        device.map { "mock device \($0.device.spec.name), DEVICE \($0.id)" } ?? "being created"
    }
}

/// The selftest's mock bus: the mock IOMMU unit of a platform and the mock devices behind it.
enum MockBus {
    /// Serialises picking a free mock device with binding it (outermost lock: taken before
    /// any context or platform lock, never while one is held).
    static let lock = Lock()
    static let namePrefix = "iommufd_mock"
    /// The PCI segment mock devices live on (none of the machine's).
    static let segment: UInt16 = 0xfffe

    /// The machine's mock IOMMU if it has one, else the one the selftest adds.
    static func unit(of platform: Platform) -> IOMMUUnit {
        if let unit = platform.units.first(where: { $0.spec.kind == .selftestMock }) { return unit }
        return platform.addUnit(.selftestMock())
    }

    /// A mock device with these properties that no context has bound, made if there is none.
    /// Call with `lock` held.
    static func freeDevice(on platform: Platform, quirks: DeviceQuirks, pasidWidth: Int) -> PlatformDevice {
        let unit = unit(of: platform)
        let mocks = platform.devices.filter { $0.unit === unit && $0.spec.name.hasPrefix(namePrefix) }
        if let free = mocks.first(where: { d in
            d.quirks == quirks && d.spec.pasidWidth == pasidWidth && platform.lock.withLock { d.boundBy == nil }
        }) {
            return free
        }
        let n = mocks.count
        let address = PCIAddress(segment: segment, bus: UInt8(truncatingIfNeeded: n >> 8),
                                 device: UInt8((n >> 3) & 31), function: UInt8(n & 7))
        let spec = PCIDeviceSpec(name: "\(namePrefix)\(n)", address: address, vendorID: 0,
                                 deviceID: UInt16(truncatingIfNeeded: n), classCode: 0xff0000,
                                 iommu: unit.name, pasidWidth: pasidWidth, supportsPageFaults: true,
                                 driver: "vfio-pci")
        return platform.hotAdd(spec, quirks: quirks)
    }
}

extension IOMMUFDContext {
    /// IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS): a new mock device (with `quirks`, and PASID support
    /// of the mock unit's width if `pasid`), bound to this context and attached to `ptID` (an
    /// IOAS: its automatic domain; or a HWPT). All or nothing: a failed attach unbinds.
    public func createMockDevice(attachTo ptID: UInt32, quirks: DeviceQuirks = [],
                                 pasid: Bool = false) throws(IOMMUError) -> MockDeviceIDs {
        do throws(IOMMUError) {
            // The kernel's order: the SELFTEST object, the device, its binding, the attach.
            // Until it is finished the object has no binding: destroying it (or closing the
            // context) meanwhile removes it, and the finish below then undoes the rest.
            let stdev = SelftestDevice()
            let stdevID = try lock.withLock { () throws(IOMMUError) -> UInt32 in
                try checkOpen()
                return try install(stdev)
            }
            var idevID: UInt32 = 0
            do throws(IOMMUError) {
                let pasidWidth = pasid ? MockBus.unit(of: platform).spec.pasidWidth : 0
                idevID = try MockBus.lock.withLock { () throws(IOMMUError) -> UInt32 in
                    let device = MockBus.freeDevice(on: platform, quirks: quirks, pasidWidth: pasidWidth)
                    return try bind(device)
                }
                let hwptID = try attach(device: idevID, to: ptID)
                try lock.withLock { () throws(IOMMUError) in
                    try checkOpen()
                    guard table.get(stdevID) === stdev else {
                        throw IOMMUError(.ENOENT, "selftest object \(stdevID) was destroyed while being created")
                    }
                    stdev.device = try device(idevID)
                }
                return MockDeviceIDs(stdev: stdevID, hwpt: hwptID, idev: idevID)
            } catch {
                if idevID != 0 { try? unbind(device: idevID) }
                lock.withLock {
                    if table.get(stdevID) === stdev { remove(stdev) }
                }
                throw error
            }
        } catch {
            throw error.during("MOCK_DOMAIN")
        }
    }

    /// The DEVICE ID of SELFTEST object `stdevID` (ENOENT if it is not one).
    public func mockDeviceBinding(_ stdevID: UInt32) throws(IOMMUError) -> UInt32 {
        try lock.withLock { () throws(IOMMUError) -> UInt32 in
            try checkOpen()
            let stdev = try lookup(stdevID, as: SelftestDevice.self, "selftest object")
            guard let device = stdev.device else { throw IOMMUError(.ENOENT, "selftest object \(stdevID) is being created") }
            return device.id
        }
    }

    /// IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: attaches the mock device of `stdevID` to `ptID`
    /// (replacing its attachment atomically); returns the HWPT now in use.
    public func replaceMockDevice(_ stdevID: UInt32, with ptID: UInt32) throws(IOMMUError) -> UInt32 {
        let idevID = try mockDeviceBinding(stdevID)
        return try attach(device: idevID, to: ptID)
    }

    /// Whether DEVICE `deviceID` is a mock device (ENOENT if there is no such DEVICE).
    public func isMockDevice(_ deviceID: UInt32) throws(IOMMUError) -> Bool {
        try lock.withLock { () throws(IOMMUError) -> Bool in
            try checkOpen()
            let device = try self.device(deviceID)
            return device.unit.spec.kind == .selftestMock && device.device.spec.name.hasPrefix(MockBus.namePrefix)
        }
    }

    /// Runs `body` on the mock page-table domain of paging HWPT `hwptID`, under the context
    /// lock (the selftest's get_md_pagetable): ENOENT if `hwptID` is not a paging HWPT,
    /// EINVAL if its domain is not the mock format. `body` must not call into the context.
    public func withMockDomain<R>(hwpt hwptID: UInt32,
                                  _ body: (IOMMUDomain) throws(IOMMUError) -> R) throws(IOMMUError) -> R {
        try lock.withLock { () throws(IOMMUError) -> R in
            try checkOpen()
            let hwpt = try hwptPaging(hwptID)
            guard hwpt.domain.format == .mock else {
                throw IOMMUError(.EINVAL, "HWPT \(hwptID) is not a mock domain")
            }
            return try body(hwpt.domain)
        }
    }
}
