// DEVICE objects: a device bound to a context, and attach / replace / detach.
//
// Binding (VFIO_DEVICE_BIND_IOMMUFD) claims the device's group for this context, which puts
// every device of the group into the DMA-blocked state. Attaching works per group, as the
// hardware does: the first device of a group to attach programs the whole group's context
// entries; the others of the group must attach to the same HWPT (EINVAL otherwise).
//
// Attaching to an IOAS picks a domain: an existing automatic domain of that IOAS if it is
// compatible with the device's IOMMU (format, aperture, cache-coherency enforcement, dirty
// tracking), otherwise a new one. An attach also reserves the device IOMMU's reserved regions
// (MSI window, RMRR) in the IOAS: if one is already mapped, the attach fails with EADDRINUSE
// and changes nothing (seed 003).

public import UIOMMUBase
public import IOMMUHardware

final class BoundDevice: EngineObject {
    let device: PlatformDevice
    /// The binding driver holds the object until unbind, so DESTROY gives EBUSY.
    var boundByDriver = true
    var hwpt: HWPT?
    /// Page requests received before the last one of their group (the kernel's iopf partial
    /// list), at most `maxPartialPageRequests`.
    var partialPageRequests: [PageRequest] = []
    static let maxPartialPageRequests = 256
    /// Its vDEVICE, if any (one per device).
    var vdevice: VDevice?
    /// The selftest mock device's cache (mock devices only; fresh with each binding, as the
    /// kernel creates a new mock device for each MOCK_DOMAIN).
    let mockCache: MockDeviceCache?
    /// The vIOMMU and virtual ID the device reports events under: set when it attaches to a
    /// nested HWPT of a vIOMMU, cleared when it attaches elsewhere (the mock driver's attach).
    var eventVIOMMU: VIOMMU?
    var eventVirtID: UInt64 = 0

    init(device: PlatformDevice) {
        self.device = device
        self.mockCache = device.unit.spec.kind == .selftestMock ? MockDeviceCache() : nil
        super.init(kind: .device)
        holders = 1
    }

    var unit: IOMMUUnit { device.unit }
    var spec: PlatformDevice { device }
    var group: Int { device.group }
    /// IOMMU_CAP_ENFORCE_CACHE_COHERENCY of the device's IOMMU.
    var enforcesCacheCoherency: Bool { device.unit.spec.enforcesCacheCoherency }

    override func teardown(_ context: IOMMUFDContext) {
        if hwpt != nil { context.detachLocked(self) }
        if let vdevice { context.tombstone(vdevice) }
        eventVIOMMU = nil
        context.platform.release(device, owner: ObjectIdentifier(context))
    }

    override var summary: String {
        "\(device.spec.name) \(device.spec.address)" + (hwpt.map { ", attached to HWPT \($0.id)" } ?? "")
    }
}

extension IOMMUFDContext {
    func device(_ id: UInt32) throws(IOMMUError) -> BoundDevice {
        try lookup(id, as: BoundDevice.self, "device")
    }

    /// Binds a device to this context (VFIO_DEVICE_BIND_IOMMUFD) and returns its DEVICE ID.
    public func bind(_ device: PlatformDevice) throws(IOMMUError) -> UInt32 {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> UInt32 in
                try checkOpen()
                try failures.check("device.bind")
                try platform.claim(device, owner: ObjectIdentifier(self))
                let bound = BoundDevice(device: device)
                do throws(IOMMUError) {
                    return try install(bound)
                } catch {
                    platform.release(device, owner: ObjectIdentifier(self))
                    throw error
                }
            }
        } catch {
            throw error.during("BIND")
        }
    }

    /// Unbinds a device (the VFIO device fd closes): detaches it and destroys the DEVICE.
    public func unbind(device deviceID: UInt32) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let device = try self.device(deviceID)
            guard device.boundByDriver else { throw IOMMUError(.ENOENT, "device \(deviceID) is not bound") }
            device.boundByDriver = false
            device.holders -= 1
            if device.holders == 0 { remove(device) }
        }
    }

    /// Attaches a device to an IOAS (automatic domain), a paging HWPT or a nested HWPT,
    /// replacing the current attachment atomically if there is one. Returns the HWPT ID now in
    /// use.
    public func attach(device deviceID: UInt32, to ptID: UInt32) throws(IOMMUError) -> UInt32 {
        do throws(IOMMUError) {
            return try lock.withLock { () throws(IOMMUError) -> UInt32 in
                try checkOpen()
                let device = try self.device(deviceID)
                guard let object = table.get(ptID) else { throw IOMMUError(.ENOENT, "no object \(ptID)") }
                let hwpt: HWPT
                switch object {
                case let ioas as IOAS:
                    hwpt = try autoDomain(for: device, ioas: ioas)
                case let existing as HWPT:
                    try change(device, to: existing)
                    hwpt = existing
                default:
                    throw IOMMUError(.EINVAL, "\(object.kind) \(ptID) cannot be attached to")
                }
                return hwpt.id
            }
        } catch {
            throw error.during("ATTACH")
        }
    }

    /// Detaches a device back to the blocking state (VFIO_DEVICE_DETACH_IOMMUFD_PT).
    public func detach(device deviceID: UInt32) throws(IOMMUError) {
        try lock.withLock { () throws(IOMMUError) in
            try checkOpen()
            let device = try self.device(deviceID)
            guard device.hwpt != nil else { throw IOMMUError(.EINVAL, "device \(deviceID) is not attached") }
            detachLocked(device)
        }
    }

    /// The HWPT a device is attached to, if any.
    public func attachedHWPT(device deviceID: UInt32) throws(IOMMUError) -> UInt32? {
        try lock.withLock { () throws(IOMMUError) -> UInt32? in
            try checkOpen()
            return try self.device(deviceID).hwpt?.id
        }
    }

    /// IOMMU_GET_HW_INFO.
    public func hwInfo(device deviceID: UInt32) throws(IOMMUError) -> HWInfo {
        try lock.withLock { () throws(IOMMUError) -> HWInfo in
            try checkOpen()
            let device = try self.device(deviceID)
            let spec = device.unit.spec
            var caps: UInt64 = 0
            if device.device.dirtyCapable { caps |= 1 }
            let pasidWidth = min(spec.pasidWidth, device.device.spec.pasidWidth)
            return HWInfo(kind: spec.kind, capabilities: caps, maxPASIDLog2: UInt8(clamping: pasidWidth), unit: spec)
        }
    }

    // MARK: Internals (lock held)

    /// Devices of this context in the same group as `device`, attached somewhere.
    private func attachedGroupPeers(of device: BoundDevice) -> [BoundDevice] {
        table.objects.values.compactMap { $0 as? BoundDevice }
            .filter { $0.group == device.group && $0.hwpt != nil && $0 !== device }
    }

    /// EINVAL unless `device` can use `hwpt`'s domain.
    private func checkCompatible(_ device: BoundDevice, _ hwpt: HWPT) throws(IOMMUError) {
        if let nested = hwpt as? HWPTNested {
            // The driver's own nested domain, over a parent its IOMMU can walk.
            guard nested.domain.kind == device.unit.spec.kind else {
                throw IOMMUError(.EINVAL, "nested HWPT \(hwpt.id) belongs to another IOMMU driver")
            }
            if let error = nested.parent.domain.attachError(to: device.unit.spec) { throw error }
            if let viommu = nested.viommu, device.vdevice?.viommu !== viommu {
                // The driver looks up the device's virtual ID on the vIOMMU.
                throw IOMMUError(.ENOENT, "DEVICE \(device.id) has no vDEVICE on vIOMMU \(viommu.id)")
            }
            return
        }
        guard let paging = hwpt as? HWPTPaging else { throw IOMMUError(.EINVAL, "HWPT \(hwpt.id) cannot be attached to") }
        if let error = paging.domain.attachError(to: device.unit.spec) { throw error }
        if hwpt.flags.contains(.dirtyTracking) && !device.device.dirtyCapable {
            throw IOMMUError(.EINVAL, "\(device.device.spec.name) cannot track dirty pages")
        }
        // Cache coherency is decided when a domain is allocated (by the allocating device's
        // IOMMU) and never changed: a non-enforcing domain may be reused by any device, an
        // enforcing one only through IOMMUs that can snoop (attachError says so).
    }

    /// Reserves `device`'s IOMMU reserved regions in `iopt` (owner: the device). All or nothing.
    private func reserveRegions(of device: BoundDevice, in iopt: IOPagetable) throws(IOMMUError) {
        let owner = ReservationOwner.device(ObjectIdentifier(device))
        do throws(IOMMUError) {
            for region in device.unit.spec.reservedRegions {
                try iopt.reserve(region.range, owner: owner, failures: failures)
            }
        } catch {
            iopt.removeReservations(owner: owner)
            throw error
        }
    }

    private func programGroup(_ device: BoundDevice, domain: IOMMUDomain?) {
        for member in platform.groupMembers(device.group) {
            member.unit.setContext(requester: member.spec.address, pasid: nil, domain: domain)
        }
    }

    /// Attaches (or replaces) `device` to `hwpt`. All or nothing. `reservedAlready`: the
    /// device's regions were reserved in the new IOAS by the caller. Reserved regions apply to
    /// paging HWPTs only (a nested HWPT's IOVAs are the user's stage-1 addresses). Leaving a
    /// HWPT with a fault queue answers the device's pending page requests there (INVALID).
    func change(_ device: BoundDevice, to hwpt: HWPT, reservedAlready: Bool = false) throws(IOMMUError) {
        if device.hwpt === hwpt { return }
        let peers = attachedGroupPeers(of: device)
        if device.hwpt == nil, let peer = peers.first, peer.hwpt !== hwpt {
            // Group members share one attachment; a new member cannot go elsewhere.
            throw IOMMUError(.EINVAL, "group \(device.group) is attached to HWPT \(peer.hwpt!.id)")
        }
        try checkCompatible(device, hwpt)
        // A replace moves the whole group; a first attach moves only this device.
        let moving = device.hwpt == nil ? [device] : [device] + peers
        // Reserve in the new IOAS first, so a collision leaves everything as it was.
        var reserved: [BoundDevice] = []
        if let newIOAS = hwpt.reservingIOAS {
            for d in moving where d.hwpt?.reservingIOAS !== newIOAS && !(reservedAlready && d === device) {
                do throws(IOMMUError) {
                    try reserveRegions(of: d, in: newIOAS.iopt)
                } catch {
                    for r in reserved { newIOAS.iopt.removeReservations(owner: .device(ObjectIdentifier(r))) }
                    throw error
                }
                reserved.append(d)
            }
        }
        // Nothing can fail from here on: switch the hardware, then the bookkeeping.
        programGroup(device, domain: hwpt.contextDomain)
        var previous: [HWPT] = []
        for d in moving {
            if let old = d.hwpt {
                old.holders -= 1
                if let oldIOAS = old.reservingIOAS, oldIOAS !== hwpt.reservingIOAS {
                    oldIOAS.iopt.removeReservations(owner: .device(ObjectIdentifier(d)))
                }
                old.fault?.dropGroups { $0.device === d && $0.hwpt === old }
                if !previous.contains(where: { $0 === old }) { previous.append(old) }
            }
            d.hwpt = hwpt
            hwpt.holders += 1
            d.eventVIOMMU = (hwpt as? HWPTNested)?.viommu
            d.eventVirtID = d.eventVIOMMU != nil && d.vdevice?.viommu === d.eventVIOMMU ? d.vdevice!.virtID : 0
        }
        for old in previous { destroyIfUnusedAuto(old) }
    }

    func detachLocked(_ device: BoundDevice) {
        guard let hwpt = device.hwpt else { return }
        device.hwpt = nil
        hwpt.holders -= 1
        device.eventVIOMMU = nil
        device.eventVirtID = 0
        hwpt.reservingIOAS?.iopt.removeReservations(owner: .device(ObjectIdentifier(device)))
        hwpt.fault?.dropGroups { $0.device === device && $0.hwpt === hwpt }
        if attachedGroupPeers(of: device).isEmpty { programGroup(device, domain: nil) }
        destroyIfUnusedAuto(hwpt)
    }

    private func destroyIfUnusedAuto(_ hwpt: HWPT) {
        guard let paging = hwpt as? HWPTPaging else { return }
        if paging.autoDomain && paging.holders == 0 && table.get(paging.id) === paging { remove(paging) }
    }

    /// iommufd_device_auto_get_domain: reuse a compatible automatic domain of `ioas`, or make one.
    private func autoDomain(for device: BoundDevice, ioas: IOAS) throws(IOMMUError) -> HWPTPaging {
        for hwpt in ioas.iopt.domains where hwpt.autoDomain {
            do throws(IOMMUError) {
                try change(device, to: hwpt)
                return hwpt
            } catch where error.errno == .EINVAL {
                continue   // incompatible: try the next one
            }
        }
        // As Linux does for an automatic domain: reserve the device's regions first (so a
        // collision reports EADDRINUSE before any page is pinned), then build and fill it.
        let reserving = device.hwpt?.reservingIOAS !== ioas
        if reserving { try reserveRegions(of: device, in: ioas.iopt) }
        let hwpt: HWPTPaging
        do throws(IOMMUError) {
            hwpt = try makeHWPTPaging(for: device, ioas: ioas, flags: [], autoDomain: true)
        } catch {
            if reserving { ioas.iopt.removeReservations(owner: .device(ObjectIdentifier(device))) }
            throw error
        }
        do throws(IOMMUError) {
            _ = try install(hwpt)
            try change(device, to: hwpt, reservedAlready: reserving)
        } catch {
            if reserving { ioas.iopt.removeReservations(owner: .device(ObjectIdentifier(device))) }
            if table.get(hwpt.id) === hwpt { remove(hwpt) } else {
                ioas.iopt.removeDomain(hwpt)
                ioas.holders -= 1
            }
            throw error
        }
        return hwpt
    }
}
