// VFIO device files: the vfio-pci driver of one device (VFIOPCIDevice) and each file open on
// it (VFIODeviceFile) — drivers/vfio/vfio_main.c's device fops, device_cdev.c's BIND/ATTACH/
// DETACH, and vfio_pci_core.c / vfio_pci_config.c / vfio_pci_intrs.c / vfio_pci_rdwr.c.
//
// A file is either a cdev file (/dev/vfio/devices/vfioN: nothing works but
// VFIO_DEVICE_BIND_IOMMUFD until it succeeds) or a group file's child (VFIO_GROUP_GET_DEVICE_FD:
// bound to the group's container when it is created). The device's regions are reached at
// file offsets `index << 40`: BARs 0–5, ROM 6, config space 7 (VGA 8 does not exist here).
//
// Config space goes to the device's own (simulated hardware) config space, except the MSI and
// MSI-X capabilities' control, address and data, which VFIO virtualizes as the kernel does: the
// device's real MSI state is what VFIO_DEVICE_SET_IRQS programs, and a program's writes to those
// registers only change the copy it reads back.
//
// Interrupts: the device's function delivers to this driver (PCIInterruptSink); MSI/MSI-X
// vectors signal their eventfds, INTx signals and automasks until VFIO_IRQ_SET_ACTION_UNMASK.
// The sink is called with the function's lock held, so the interrupt state has a lock of its own
// (`irqLock`) that is never held while calling into the function.

import UIOMMUBase
public import IOMMUEngine
public import IOMMUHardware

/// The vfio-pci driver instance of one device.
public final class VFIOPCIDevice: PCIInterruptSink, @unchecked Sendable {
    public let index: Int
    public let platformDevice: PlatformDevice
    public let function: PCIFunction
    public unowned let group: VFIOGroup
    /// "vfio3".
    public var name: String { "vfio\(index)" }
    /// The PCI address, as sysfs and VFIO_GROUP_GET_DEVICE_FD spell it.
    public var pciName: String { platformDevice.spec.address.description }

    // Under the subsystem lock:
    var openCount = 0
    /// The iommufd the device is bound to (iommufd_device) and its DEVICE ID.
    var iommufd: IOMMUFDFile?
    var devid: UInt32 = 0
    var attached = false

    // Interrupts, under `irqLock`.
    enum IRQType { case none, intx, msi, msix }
    let irqLock = Lock()
    var irqType = IRQType.none
    var vectors: [(any EventNotifier)?] = []
    var intxTrigger: (any EventNotifier)?
    var intxMasked = false
    var errTrigger: (any EventNotifier)?
    var reqTrigger: (any EventNotifier)?
    /// The program's view of the MSI / MSI-X capability registers (vconfig).
    var msiShadow: [UInt8] = []
    var msixControlShadow: UInt16 = 0

    init(index: Int, device: PlatformDevice, function: PCIFunction, group: VFIOGroup) {
        self.index = index
        self.platformDevice = device
        self.function = function
        self.group = group
    }

    /// The device's current configuration of interrupts (for tests and tools).
    public var interruptMode: String {
        irqLock.withLock {
            switch irqType {
            case .none: "none"
            case .intx: "INTx"
            case .msi: "MSI x\(vectors.count)"
            case .msix: "MSI-X x\(vectors.count)"
            }
        }
    }

    // MARK: PCIInterruptSink (called with the function's lock held)

    public func message(vector: Int, msix: Bool) {
        let notifier: (any EventNotifier)? = irqLock.withLock {
            guard irqType == (msix ? .msix : .msi), vector >= 0, vector < vectors.count else { return nil }
            return vectors[vector]
        }
        notifier?.signal()
    }

    public func line(asserted: Bool) {
        guard asserted else { return }
        let notifier: (any EventNotifier)? = irqLock.withLock {
            guard irqType == .intx, !intxMasked else { return nil }
            intxMasked = true          // automasked until the program unmasks
            return intxTrigger
        }
        notifier?.signal()
    }

    // MARK: open_device / close_device (vfio_pci_core_enable / _disable)

    /// The first open: reset the function if it can be, enable its decoders, take over its
    /// interrupts, and start the program's view of the MSI registers.
    func enable() {
        if function.supportsReset { resetPreservingConfig() }
        var command = UInt16(function.configRead(PCIConfig.command, width: 2))
        if function.bars.contains(where: { $0?.isMemory == true }) { command |= PCIConfig.commandMemory }
        if function.bars.contains(where: { $0?.kind == .io }) { command |= PCIConfig.commandIO }
        function.configWrite(PCIConfig.command, width: 2, UInt32(command))
        function.interruptSink = self
        irqLock.withLock {
            irqType = .none; vectors = []; intxTrigger = nil; intxMasked = false
            errTrigger = nil; reqTrigger = nil
            if let m = function.msiCapability {
                let length = PCIConfigSpace.length(ofCapability: PCIConfig.capMSI, at: m, in: function.config)
                msiShadow = (0..<length).map { UInt8(function.configRead(m + $0, width: 1)) }
                msiShadow[PCIConfig.msiControl] &= ~UInt8(PCIConfig.msiControlEnable)
            }
            if let x = function.msixCapability {
                msixControlShadow = UInt16(function.configRead(x + PCIConfig.msixControl, width: 2))
                    & ~(PCIConfig.msixControlEnable | PCIConfig.msixControlFunctionMask)
            }
        }
    }

    /// The last close: interrupts off, bus mastering off, reset.
    func disable() {
        disableInterrupts()
        let command = UInt16(function.configRead(PCIConfig.command, width: 2)) & ~PCIConfig.commandBusMaster
        function.configWrite(PCIConfig.command, width: 2, UInt32(command))
        if function.supportsReset { resetPreservingConfig() }
        function.interruptSink = nil
    }

    /// A function-level reset with the configuration header saved before and restored after, as
    /// pci_try_reset_function does (a reset clears the BARs and the command register).
    func resetPreservingConfig() {
        let f = function
        let header = stride(from: 0x04, to: 0x40, by: 4).map { ($0, f.configRead($0, width: 4)) }
        f.reset()
        for (offset, value) in header.reversed() {
            // The status half of the command dword is not written back (its error bits are
            // write-1-to-clear).
            f.configWrite(offset, width: offset == PCIConfig.command ? 2 : 4, offset == PCIConfig.command ? value & 0xffff : value)
        }
    }

    func disableInterrupts() {
        let previous: IRQType = irqLock.withLock {
            let t = irqType
            irqType = .none; vectors = []; intxTrigger = nil; intxMasked = false
            return t
        }
        switch previous {
        case .msi: setHardwareMSI(enabled: false, vectors: 0)
        case .msix: setHardwareMSIX(enabled: false, vectors: 0)
        default: break
        }
    }

    /// Programs the function's MSI capability (the host kernel's pci_alloc_irq_vectors).
    func setHardwareMSI(enabled: Bool, vectors: Int) {
        guard let m = function.msiCapability else { return }
        var control = UInt16(function.configRead(m + PCIConfig.msiControl, width: 2))
        control &= ~(PCIConfig.msiControlEnable | 7 << PCIConfig.msiControlMultipleEnableShift)
        if enabled {
            var log2: UInt16 = 0
            while (1 << log2) < vectors { log2 += 1 }
            control |= PCIConfig.msiControlEnable | log2 << PCIConfig.msiControlMultipleEnableShift
            function.configWrite(m + PCIConfig.msiAddressLow, width: 4, 0xfee0_0000)
        }
        function.configWrite(m + PCIConfig.msiControl, width: 2, UInt32(control))
    }

    /// Programs the function's MSI-X capability and unmasks the vectors in use.
    func setHardwareMSIX(enabled: Bool, vectors: Int) {
        guard let x = function.msixCapability, let table = function.msixTable else { return }
        for v in 0..<function.msixVectors {
            let offset = table.offset + UInt64(v * PCIConfig.msixEntrySize + PCIConfig.msixEntryVectorControl)
            function.barWrite(table.bar, offset: offset, width: 4, enabled && v < vectors ? 0 : 1)
        }
        var control = UInt16(function.configRead(x + PCIConfig.msixControl, width: 2))
        control &= ~(PCIConfig.msixControlEnable | PCIConfig.msixControlFunctionMask)
        if enabled { control |= PCIConfig.msixControlEnable }
        function.configWrite(x + PCIConfig.msixControl, width: 2, UInt32(control))
    }

    // MARK: Interrupt counts (vfio_pci_get_irq_count)

    func irqCount(_ index: UInt32) -> Int {
        switch index {
        case VFIOPCI.intxIRQIndex: function.configRead(PCIConfig.interruptPin, width: 1) != 0 ? 1 : 0
        case VFIOPCI.msiIRQIndex: function.msiCapability != nil ? function.msiVectorsCapable : 0
        case VFIOPCI.msixIRQIndex: function.msixVectors
        case VFIOPCI.errIRQIndex: function.expressCapability != nil ? 1 : 0
        case VFIOPCI.reqIRQIndex: 1
        default: 0
        }
    }

    // MARK: Config space with the MSI registers virtualized

    /// Which bytes of config space the program sees from the shadow.
    private func shadowRange(_ offset: Int) -> (start: Int, kind: Int)? {
        if let m = function.msiCapability, offset >= m + PCIConfig.msiControl, offset < m + msiShadowCount {
            return (m, 0)
        }
        if let x = function.msixCapability, offset >= x + PCIConfig.msixControl, offset < x + PCIConfig.msixControl + 2 {
            return (x + PCIConfig.msixControl, 1)
        }
        return nil
    }

    private var msiShadowCount: Int { irqLock.withLock { msiShadow.count } }

    func configRead(_ offset: Int, width: Int) -> UInt32 {
        if shadowRange(offset) == nil && shadowRange(offset + width - 1) == nil {
            return function.configRead(offset, width: width)
        }
        var value: UInt32 = 0
        for i in 0..<width {
            let o = offset + i
            let byte: UInt32
            if let r = shadowRange(o) {
                byte = irqLock.withLock {
                    r.kind == 0 ? UInt32(msiShadow[o - r.start]) : UInt32(UInt8(truncatingIfNeeded: msixControlShadow >> (8 * UInt16(o - r.start))))
                }
            } else {
                byte = function.configRead(o, width: 1)
            }
            value |= byte << (8 * UInt32(i))
        }
        return value
    }

    func configWrite(_ offset: Int, width: Int, _ value: UInt32) {
        if shadowRange(offset) == nil && shadowRange(offset + width - 1) == nil {
            function.configWrite(offset, width: width, value)
            return
        }
        for i in 0..<width {
            let o = offset + i
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            if let r = shadowRange(o) {
                let mask = UInt8(truncatingIfNeeded: function.configWriteMask(o, width: 1))
                irqLock.withLock {
                    if r.kind == 0 {
                        msiShadow[o - r.start] = (msiShadow[o - r.start] & ~mask) | (byte & mask)
                    } else {
                        let shift = 8 * UInt16(o - r.start)
                        let m16 = UInt16(mask) << shift
                        msixControlShadow = (msixControlShadow & ~m16) | (UInt16(byte) << shift & m16)
                    }
                }
            } else {
                function.configWrite(o, width: 1, UInt32(byte))
            }
        }
    }
}

/// One open file of a VFIO device.
public final class VFIODeviceFile: @unchecked Sendable {
    public let device: VFIOPCIDevice
    let subsystem: VFIOSubsystem
    /// The group file this device file came from (nil: a cdev file).
    let groupFile: VFIOGroupFile?
    // Under the subsystem lock:
    var accessGranted = false
    var released = false
    /// Opened by VFIO_GROUP_GET_DEVICE_FD (it holds a reference on its group file).
    var openedThroughGroup = false

    init(subsystem: VFIOSubsystem, device: VFIOPCIDevice, groupFile: VFIOGroupFile?) {
        self.subsystem = subsystem
        self.device = device
        self.groupFile = groupFile
    }

    /// st_rdev of the file: the cdev's numbers (a group-opened device file is an anonymous
    /// inode in Linux; it reports the same numbers here).
    public var deviceNumber: (major: UInt32, minor: UInt32) { (VFIOSubsystem.deviceMajor, UInt32(device.index)) }

    var user: any UserMemoryAccess { subsystem.user }

    private var granted: Bool { subsystem.lock.withLock { accessGranted } }

    // MARK: Opening through a group (vfio_df_group_open)

    /// Binds the device to the group's container and attaches it to the compatibility IOAS.
    func openThroughGroup(_ group: VFIOGroup) -> LinuxErrno? {
        // The subsystem lock is held by the caller.
        guard let iommufd = group.iommufd else { return .EINVAL }
        if device.openCount == 0 {
            guard iommufd.retainUser() else { return .EBADF }
            do throws(IOMMUError) {
                let devid = try iommufd.context.bind(device.platformDevice)
                device.iommufd = iommufd
                device.devid = devid
                device.enable()
                guard let ioas = iommufd.context.vfioCompatIOAS else { throw IOMMUError(.ENODEV, "no compatibility IOAS") }
                _ = try iommufd.context.attach(device: devid, to: ioas)
                device.attached = true
            } catch {
                if device.iommufd != nil {
                    device.disable()
                    try? iommufd.context.unbind(device: device.devid)
                    device.iommufd = nil
                }
                iommufd.release()
                return error.errno
            }
        }
        device.openCount += 1
        accessGranted = true
        openedThroughGroup = true
        return nil
    }

    // MARK: ioctl

    /// ioctl(2) on the device file; ≥ 0 or -errno.
    public func ioctl(_ request: UInt, _ arg: UInt64) -> Int64 {
        let cmd = UInt32(truncatingIfNeeded: request)
        let record = subsystem.trace != nil ? TraceRecord() : nil
        let result = dispatch(cmd, arg, record)
        subsystem.traceLine(VFIODeviceRequest.names[cmd] ?? "ioctl(0x\(String(cmd, radix: 16)))", record, result, cmd: cmd)
        return result
    }

    private func fail(_ e: LinuxErrno, _ record: TraceRecord?, _ why: @autoclosure () -> String) -> Int64 {
        if let record { record.reason = why() }
        return -Int64(e.rawValue)
    }

    private func fail(_ error: IOMMUError, _ record: TraceRecord?) -> Int64 {
        if let record { record.reason = error.reason.isEmpty ? error.operation : error.reason }
        return -Int64(error.errno.rawValue)
    }

    /// Reads `count` bytes of the argument struct into a zeroed buffer of `size` bytes.
    private func withStruct(_ arg: UInt64, read count: Int, size: Int, _ body: (StructBytes) -> Int64) -> Int64 {
        withUnsafeTemporaryAllocation(byteCount: max(size, 8), alignment: 8) { raw -> Int64 in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            let s = StructBytes(raw.baseAddress!)
            guard user.copyFromUser(s.base, arg, count) else { return -Int64(LinuxErrno.EFAULT.rawValue) }
            return body(s)
        }
    }

    func dispatch(_ cmd: UInt32, _ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias R = VFIODeviceRequest
        if cmd == R.bindIOMMUFD { return bind(arg, record) }
        guard granted else { return fail(.EINVAL, record, "the device file is not bound (VFIO_DEVICE_BIND_IOMMUFD first)") }
        if groupFile == nil {
            if cmd == R.attachIOMMUFDPT { return attach(arg, record) }
            if cmd == R.detachIOMMUFDPT { return detach(arg, record) }
        }
        switch cmd {
        case R.getInfo: return getInfo(arg, record)
        case R.getRegionInfo: return getRegionInfo(arg, record)
        case R.getIRQInfo: return getIRQInfo(arg, record)
        case R.setIRQs: return setIRQs(arg, record)
        case R.reset:
            guard device.function.supportsReset else { return fail(.EINVAL, record, "the device has no reset method") }
            resetDevice()
            return 0
        case R.feature: return feature(arg, record)
        case R.getPCIHotResetInfo: return hotResetInfo(arg, record)
        case R.pciHotReset: return hotReset(arg, record)
        default:
            return fail(.ENOTTY, record, "not a vfio-pci ioctl")
        }
    }

    // MARK: BIND / ATTACH / DETACH (device_cdev.c)

    private func bind(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOBindIOMMUFD
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let argsz = s.u32(L.argsz), flags = s.u32(L.flags), fd = s.i32(L.iommufd)
            guard argsz >= UInt32(L.minSize), flags & ~L.flagToken == 0, fd >= 0 else {
                return fail(.EINVAL, record, "argsz, flags or iommufd invalid")
            }
            if flags & L.flagToken != 0 {
                guard argsz >= UInt32(L.size) else { return fail(.EINVAL, record, "TOKEN needs the 24-byte struct") }
                var token: (UInt64, UInt64, UInt64) = (0, 0, 0)
                guard user.copyFromUser(&token.0, arg + UInt64(L.tokenUUIDPtr), 8),
                      user.copyFromUser(&token.1, token.0, 16) else { return fail(.EFAULT, record, "token unreadable") }
            }
            guard groupFile == nil else { return fail(.EINVAL, record, "BIND_IOMMUFD is for cdev files only") }
            let lookup = subsystem.host.iommufd(fd: fd)
            let rc: Int64 = subsystem.lock.withLock {
                let group = device.group
                if group.openedFile != nil { return fail(.EBUSY, record, "group \(group.id) is open through /dev/vfio/\(group.id)") }
                if accessGranted { return fail(.EINVAL, record, "already bound") }
                let iommufd: IOMMUFDFile
                switch lookup {
                case .file(let f): iommufd = f
                case .otherFile: return fail(LinuxErrno(rawValue: 77), record, "fd \(fd) is not an iommufd")   // EBADFD
                case .notOpen: return fail(.EBADF, record, "fd \(fd) is not open")
                }
                if device.openCount != 0 { return fail(.EINVAL, record, "\(device.name) is already open") }
                guard iommufd.retainUser() else { return fail(.EBADF, record, "the iommufd is closing") }
                let devid: UInt32
                do throws(IOMMUError) {
                    devid = try iommufd.context.bind(device.platformDevice)
                } catch {
                    iommufd.release()
                    return fail(error, record)
                }
                device.iommufd = iommufd
                device.devid = devid
                device.openCount = 1
                device.attached = false
                device.enable()
                group.cdevOpenCount += 1
                s.set32(L.outDevID, devid)
                guard user.copyToUser(arg + UInt64(L.outDevID), s.base + L.outDevID, 4) else {
                    closeLocked()
                    group.cdevOpenCount -= 1
                    return fail(.EFAULT, record, "cannot write out_devid")
                }
                accessGranted = true
                return 0
            }
            if rc == 0 { record?.captureOutput(s) }
            return rc
        }
    }

    private func attach(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOAttachIOMMUFDPT
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let flags = s.u32(L.flags)
            guard s.u32(L.argsz) >= UInt32(L.minSize), flags & ~L.flagPASID == 0 else {
                return fail(.EINVAL, record, "argsz or flags invalid")
            }
            if flags & L.flagPASID != 0 { return fail(.EOPNOTSUPP, record, "PASID attach is not supported") }
            let pt = s.u32(L.ptID)
            let rc: Int64 = subsystem.lock.withLock {
                guard let iommufd = device.iommufd else { return fail(.EINVAL, record, "not bound") }
                do throws(IOMMUError) {
                    let hwpt = try iommufd.context.attach(device: device.devid, to: pt)
                    device.attached = true
                    s.set32(L.ptID, hwpt)
                } catch {
                    return fail(error, record)
                }
                guard user.copyToUser(arg + UInt64(L.ptID), s.base + L.ptID, 4) else {
                    try? iommufd.context.detach(device: device.devid)
                    device.attached = false
                    return fail(.EFAULT, record, "cannot write pt_id")
                }
                return 0
            }
            if rc == 0 { record?.captureOutput(s) }
            return rc
        }
    }

    private func detach(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIODetachIOMMUFDPT
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let flags = s.u32(L.flags)
            guard s.u32(L.argsz) >= UInt32(L.minSize), flags & ~L.flagPASID == 0 else {
                return fail(.EINVAL, record, "argsz or flags invalid")
            }
            if flags & L.flagPASID != 0 { return fail(.EOPNOTSUPP, record, "PASID detach is not supported") }
            subsystem.lock.withLock {
                guard let iommufd = device.iommufd, device.attached else { return }
                try? iommufd.context.detach(device: device.devid)
                device.attached = false
            }
            return 0
        }
    }

    // MARK: Information

    private func getInfo(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIODeviceInfo
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let argsz = s.u32(L.argsz)
            guard argsz >= UInt32(L.minSize) else { return fail(.EINVAL, record, "argsz \(argsz) < \(L.minSize)") }
            var flags = L.flagPCI
            if device.function.supportsReset { flags |= L.flagReset }
            s.set32(L.flags, flags)
            s.set32(L.numRegions, VFIOPCI.numRegions)
            s.set32(L.numIRQs, VFIOPCI.numIRQs)
            s.set32(L.capOffset, 0)
            guard user.copyToUser(arg, s.base, min(Int(argsz), L.size)) else { return fail(.EFAULT, record, "cannot write back") }
            record?.captureOutput(s)
            return 0
        }
    }

    /// The size, flags and mmap-ability of region `index`, or nil if it does not exist.
    func region(_ index: UInt32) -> (size: UInt64, flags: UInt32)? {
        typealias L = ABI.VFIORegionInfo
        switch index {
        case 0..<6:
            guard let bar = device.function.bars[Int(index)] else { return (0, 0) }
            return (bar.size, L.flagRead | L.flagWrite | (bar.isMemory ? L.flagMmap : 0))
        case VFIOPCI.romRegionIndex:
            return (0, 0)
        case VFIOPCI.configRegionIndex:
            return (UInt64(device.function.config.size), L.flagRead | L.flagWrite)
        default:
            return nil
        }
    }

    private func getRegionInfo(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIORegionInfo
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let argsz = s.u32(L.argsz), index = s.u32(L.index)
            guard argsz >= UInt32(L.minSize) else { return fail(.EINVAL, record, "argsz \(argsz) < \(L.minSize)") }
            guard let r = region(index) else { return fail(.EINVAL, record, "no region \(index)") }
            var flags = r.flags
            // The BAR holding the MSI-X table says it may be mmapped anyway (interrupt remapping
            // protects the table): the MSIX_MAPPABLE capability.
            var capSize = 0
            if index < 6, flags & L.flagMmap != 0, device.function.msixTable?.bar == Int(index) { capSize = ABI.VFIORegionCap.headerSize }
            s.set32(L.capOffset, 0)
            if capSize > 0 {
                flags |= L.flagCaps
                if argsz < UInt32(L.size + capSize) {
                    s.set32(L.argsz, UInt32(L.size + capSize))
                } else {
                    var header: UInt64 = UInt64(ABI.VFIORegionCap.msixMappableID) | 1 << 16
                    guard user.copyToUser(arg + UInt64(L.size), &header, 8) else { return fail(.EFAULT, record, "cannot write the capability") }
                    s.set32(L.capOffset, UInt32(L.size))
                }
            }
            s.set32(L.flags, flags)
            s.set64(L.regionSize, r.size)
            s.set64(L.offset, VFIOPCI.offset(ofRegion: index))
            guard user.copyToUser(arg, s.base, L.minSize) else { return fail(.EFAULT, record, "cannot write back") }
            record?.captureOutput(s)
            return 0
        }
    }

    private func getIRQInfo(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOIRQInfo
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let index = s.u32(L.index)
            guard s.u32(L.argsz) >= UInt32(L.minSize), index < VFIOPCI.numIRQs else {
                return fail(.EINVAL, record, "argsz or index invalid")
            }
            if index == VFIOPCI.errIRQIndex && device.function.expressCapability == nil {
                return fail(.EINVAL, record, "no error interrupt on a conventional PCI device")
            }
            var flags = L.flagEventfd
            if index == VFIOPCI.intxIRQIndex { flags |= L.flagMaskable | L.flagAutomasked } else { flags |= L.flagNoresize }
            s.set32(L.flags, flags)
            s.set32(L.count, UInt32(device.irqCount(index)))
            guard user.copyToUser(arg, s.base, L.minSize) else { return fail(.EFAULT, record, "cannot write back") }
            record?.captureOutput(s)
            return 0
        }
    }

    private func feature(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIODeviceFeature
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let flags = s.u32(L.flags)
            guard s.u32(L.argsz) >= UInt32(L.minSize), flags & ~(L.featureMask | L.get | L.set | L.probe) == 0 else {
                return fail(.EINVAL, record, "argsz or flags invalid")
            }
            if flags & L.probe == 0 && flags & L.get != 0 && flags & L.set != 0 {
                return fail(.EINVAL, record, "GET and SET together without PROBE")
            }
            return fail(.ENOTTY, record, "feature \(flags & L.featureMask) is not supported (no migration, no low-power states)")
        }
    }

    // MARK: Bus reset (GET_PCI_HOT_RESET_INFO / PCI_HOT_RESET)

    /// The functions a secondary bus reset of the device's bus affects, or nil when the device
    /// sits on a root bus (no bridge above it to reset: ENODEV, as for QEMU's edu).
    private func busResetScope() -> [PlatformDevice]? {
        let me = device.platformDevice.spec.address
        guard me.bus != subsystem.platform.rootBus(of: device.platformDevice.spec) else { return nil }
        return subsystem.platform.devices.filter { $0.spec.address.segment == me.segment && $0.spec.address.bus == me.bus }
    }

    private func hotResetInfo(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOHotResetInfo
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let argsz = s.u32(L.argsz)
            guard argsz >= UInt32(L.minSize) else { return fail(.EINVAL, record, "argsz below 12") }
            guard let scope = busResetScope() else { return fail(.ENODEV, record, "no slot or bus reset for a device on a root bus") }
            let capacity = (Int(argsz) - L.size) / L.deviceSize
            s.set32(L.flags, 0)
            s.set32(L.count, UInt32(scope.count))
            guard scope.count <= capacity else {
                _ = user.copyToUser(arg, s.base, L.minSize)
                return fail(.ENOSPC, record, "room for \(capacity) of \(scope.count) devices")
            }
            let (cdev, iommufd) = subsystem.lock.withLock { (groupFile == nil, device.iommufd) }
            var flags: UInt32 = cdev ? L.flagDevID | L.flagDevIDOwned : 0
            var entries = [UInt8](repeating: 0, count: scope.count * L.deviceSize)
            for (i, d) in scope.enumerated() {
                var id = UInt32(d.group)
                if cdev {
                    let bound = subsystem.devices.first { $0.platformDevice === d }
                    let sameContext = subsystem.lock.withLock { bound?.iommufd != nil && bound?.iommufd === iommufd }
                    if let bound, sameContext {
                        id = subsystem.lock.withLock { bound.devid }
                    } else {
                        id = L.devidNotOwned
                        flags &= ~L.flagDevIDOwned
                    }
                }
                let o = i * L.deviceSize
                for k in 0..<4 { entries[o + k] = UInt8(truncatingIfNeeded: id >> (8 * UInt32(k))) }
                entries[o + 4] = UInt8(truncatingIfNeeded: d.spec.address.segment)
                entries[o + 5] = UInt8(truncatingIfNeeded: d.spec.address.segment >> 8)
                entries[o + 6] = d.spec.address.bus
                entries[o + 7] = d.spec.address.device << 3 | d.spec.address.function
            }
            let ok = entries.withUnsafeBytes { user.copyToUser(arg + UInt64(L.devices), $0.baseAddress!, $0.count) }
            guard ok else { return fail(.EFAULT, record, "cannot write the devices") }
            s.set32(L.flags, flags)
            guard user.copyToUser(arg, s.base, L.minSize) else { return fail(.EFAULT, record, "cannot write back") }
            record?.captureOutput(s)
            return 0
        }
    }

    private func hotReset(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOHotReset
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let argsz = s.u32(L.argsz), count = s.u32(L.count)
            guard argsz >= UInt32(L.minSize), s.u32(L.flags) == 0 else { return fail(.EINVAL, record, "argsz or flags invalid") }
            guard let scope = busResetScope() else { return fail(.ENODEV, record, "no slot or bus reset for a device on a root bus") }
            let cdev = groupFile == nil
            // A cdev file proves ownership through its iommufd (count 0); a group file by
            // passing every affected group's descriptor.
            guard (count == 0) == cdev else { return fail(.EINVAL, record, cdev ? "cdev files pass no group fds" : "group fds needed") }
            var groups = Set<Int>()
            if !cdev {
                guard count <= 4096, UInt64(argsz) - UInt64(L.minSize) >= UInt64(count) * 4 else {
                    return fail(.EINVAL, record, "argsz too small for \(count) fds")
                }
                for i in 0..<Int(count) {
                    var fd: Int32 = 0
                    guard user.copyFromUser(&fd, arg + UInt64(L.groupFDs + 4 * i), 4) else { return fail(.EFAULT, record, "fds unreadable") }
                    switch subsystem.host.groupFile(fd: fd) {
                    case .file(let g): groups.insert(g.group.id)
                    case .otherFile: return fail(.EINVAL, record, "fd \(fd) is not a VFIO group")
                    case .notOpen: return fail(.EBADF, record, "fd \(fd) is not open")
                    }
                }
            }
            let iommufd = subsystem.lock.withLock { device.iommufd }
            for d in scope {
                if cdev {
                    let bound = subsystem.devices.first { $0.platformDevice === d }
                    let owned = subsystem.lock.withLock { bound?.iommufd != nil && bound?.iommufd === iommufd }
                    guard owned else { return fail(.EPERM, record, "\(d.spec.address) is not bound to this iommufd") }
                } else if !groups.contains(d.group) {
                    return fail(.EPERM, record, "group \(d.group) of \(d.spec.address) was not passed")
                }
            }
            for d in scope {
                if let v = subsystem.devices.first(where: { $0.platformDevice === d }), subsystem.lock.withLock({ v.openCount > 0 }) {
                    v.resetPreservingConfig()
                } else {
                    d.hardware?.reset()
                }
            }
            return 0
        }
    }

    // MARK: SET_IRQS (vfio_pci_set_irqs_ioctl)

    private func setIRQs(_ arg: UInt64, _ record: TraceRecord?) -> Int64 {
        typealias L = ABI.VFIOIRQSet
        record?.layout = L.layout
        return withStruct(arg, read: L.minSize, size: L.size) { s -> Int64 in
            record?.captureInput(s, userSize: nil, size: L.size)
            let argsz = s.u32(L.argsz), flags = s.u32(L.flags), index = s.u32(L.index)
            let start = s.u32(L.start), count = s.u32(L.count)
            guard argsz >= UInt32(L.minSize), index < VFIOPCI.numIRQs, count < UInt32.max - start,
                  flags & ~(L.dataTypeMask | L.actionTypeMask) == 0 else {
                return fail(.EINVAL, record, "argsz, index, count or flags invalid")
            }
            let max = UInt32(device.irqCount(index))
            guard start < max, start + count <= max else { return fail(.EINVAL, record, "start/count beyond \(max) interrupt(s)") }
            let elementSize: Int
            switch flags & L.dataTypeMask {
            case L.dataNone: elementSize = 0
            case L.dataBool: elementSize = 1
            case L.dataEventfd: elementSize = 4
            default: return fail(.EINVAL, record, "exactly one DATA_ type")
            }
            var data = [UInt8](repeating: 0, count: elementSize * Int(count))
            if elementSize > 0 {
                guard UInt64(argsz) - UInt64(L.minSize) >= UInt64(data.count) else { return fail(.EINVAL, record, "argsz too small for the data") }
                if !data.isEmpty {
                    let ok = data.withUnsafeMutableBytes { user.copyFromUser($0.baseAddress!, arg + UInt64(L.data), $0.count) }
                    guard ok else { return fail(.EFAULT, record, "data unreadable") }
                }
            }
            let action = flags & L.actionTypeMask
            let e: LinuxErrno?
            switch (index, action) {
            case (VFIOPCI.intxIRQIndex, L.actionMask): e = intxMask(start, count, flags, data, mask: true)
            case (VFIOPCI.intxIRQIndex, L.actionUnmask): e = intxMask(start, count, flags, data, mask: false)
            case (VFIOPCI.intxIRQIndex, L.actionTrigger): e = intxTrigger(start, count, flags, data)
            case (VFIOPCI.msiIRQIndex, L.actionTrigger): e = msiTrigger(.msi, start, count, flags, data)
            case (VFIOPCI.msixIRQIndex, L.actionTrigger): e = msiTrigger(.msix, start, count, flags, data)
            case (VFIOPCI.errIRQIndex, L.actionTrigger): e = singleTrigger(\.errTrigger, start, count, flags, data)
            case (VFIOPCI.reqIRQIndex, L.actionTrigger): e = singleTrigger(\.reqTrigger, start, count, flags, data)
            default: return fail(.ENOTTY, record, "no such action for this index")
            }
            if let e { return fail(e, record, "") }
            return 0
        }
    }

    private static func int32s(_ data: [UInt8]) -> [Int32] {
        stride(from: 0, to: data.count, by: 4).map { (i: Int) -> Int32 in
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(data[i + k]) << (8 * UInt32(k)) }
            return Int32(bitPattern: v)
        }
    }

    private func notifier(_ fd: Int32) -> Result<any EventNotifier, VFIOError> { subsystem.host.eventNotifier(fd: fd) }

    private func intxMask(_ start: UInt32, _ count: UInt32, _ flags: UInt32, _ data: [UInt8], mask: Bool) -> LinuxErrno? {
        typealias L = ABI.VFIOIRQSet
        let isINTx = device.irqLock.withLock { device.irqType == .intx }
        guard isINTx, start == 0, count == 1 else { return .EINVAL }
        if flags & L.dataEventfd != 0 {
            // Masking or unmasking through an eventfd (irqfd) needs an in-kernel waiter.
            return mask ? .ENOTTY : (Self.int32s(data).first ?? -1) >= 0 ? .ENOTTY : nil
        }
        if flags & L.dataBool != 0 && data.first == 0 { return nil }
        if mask {
            device.irqLock.withLock { device.intxMasked = true }
        } else {
            device.irqLock.withLock { device.intxMasked = false }
            // A level still asserted fires again at once.
            if device.function.intxAsserted { device.line(asserted: true) }
        }
        return nil
    }

    private func intxTrigger(_ start: UInt32, _ count: UInt32, _ flags: UInt32, _ data: [UInt8]) -> LinuxErrno? {
        typealias L = ABI.VFIOIRQSet
        let type = device.irqLock.withLock { device.irqType }
        if type == .intx && count == 0 && flags & L.dataNone != 0 {
            device.disableInterrupts()
            return nil
        }
        guard type == .intx || type == .none, start == 0, count == 1 else { return .EINVAL }
        if flags & L.dataEventfd != 0 {
            let fd = Self.int32s(data)[0]
            var trigger: (any EventNotifier)?
            if fd >= 0 {
                switch notifier(fd) {
                case .success(let n): trigger = n
                case .failure(let e): return e.errno
                }
            }
            device.irqLock.withLock {
                if device.irqType == .none { device.intxMasked = false }
                device.irqType = .intx
                device.intxTrigger = trigger
            }
            if device.function.intxAsserted { device.line(asserted: true) }
            return nil
        }
        guard type == .intx else { return .EINVAL }
        if flags & L.dataBool != 0 && data.first == 0 { return nil }
        // Loopback: signal without masking.
        device.irqLock.withLock { device.intxTrigger }?.signal()
        return nil
    }

    private func msiTrigger(_ kind: VFIOPCIDevice.IRQType, _ start: UInt32, _ count: UInt32, _ flags: UInt32,
                            _ data: [UInt8]) -> LinuxErrno? {
        typealias L = ABI.VFIOIRQSet
        let type = device.irqLock.withLock { device.irqType }
        if type == kind && count == 0 && flags & L.dataNone != 0 {
            device.disableInterrupts()
            return nil
        }
        guard type == kind || type == .none else { return .EINVAL }
        if flags & L.dataEventfd != 0 {
            let fds = Self.int32s(data)
            var resolved: [(any EventNotifier)?] = []
            for fd in fds {
                if fd < 0 { resolved.append(nil); continue }
                switch notifier(fd) {
                case .success(let n): resolved.append(n)
                case .failure(let e):
                    // Nothing of this call takes effect (a fresh enable stays disabled).
                    return e.errno
                }
            }
            let enabling = type == .none
            if !enabling, device.irqLock.withLock({ Int(start + count) > device.vectors.count }) { return .EINVAL }
            device.irqLock.withLock {
                if enabling {
                    device.irqType = kind
                    device.vectors = Array(repeating: nil, count: Int(start + count))
                }
                for (i, n) in resolved.enumerated() where Int(start) + i < device.vectors.count {
                    device.vectors[Int(start) + i] = n
                }
            }
            if enabling {
                let n = Int(start + count)
                if kind == .msi { device.setHardwareMSI(enabled: true, vectors: n) } else { device.setHardwareMSIX(enabled: true, vectors: n) }
            }
            return nil
        }
        guard type == kind else { return .EINVAL }
        let signals: [(any EventNotifier)?] = device.irqLock.withLock {
            (Int(start)..<Int(start + count)).map { i -> (any EventNotifier)? in
                guard i < device.vectors.count else { return nil }
                if flags & L.dataBool != 0 && data[i - Int(start)] == 0 { return nil }
                return device.vectors[i]
            }
        }
        for n in signals { n?.signal() }
        return nil
    }

    private func singleTrigger(_ slot: ReferenceWritableKeyPath<VFIOPCIDevice, (any EventNotifier)?>, _ start: UInt32,
                               _ count: UInt32, _ flags: UInt32, _ data: [UInt8]) -> LinuxErrno? {
        typealias L = ABI.VFIOIRQSet
        guard start == 0, count <= 1 else { return .EINVAL }
        if flags & L.dataNone != 0 {
            let current = device.irqLock.withLock { device[keyPath: slot] }
            guard let current else { return .EINVAL }
            if count > 0 { current.signal() } else { device.irqLock.withLock { device[keyPath: slot] = nil } }
            return nil
        }
        guard count > 0 else { return .EINVAL }
        if flags & L.dataBool != 0 {
            if data[0] != 0 { device.irqLock.withLock { device[keyPath: slot] }?.signal() }
            return nil
        }
        let fd = Self.int32s(data)[0]
        if fd == -1 { device.irqLock.withLock { device[keyPath: slot] = nil }; return nil }
        guard fd >= 0 else { return .EINVAL }
        switch notifier(fd) {
        case .success(let n): device.irqLock.withLock { device[keyPath: slot] = n }
        case .failure(let e): return e.errno
        }
        return nil
    }

    // MARK: RESET

    /// VFIO_DEVICE_RESET: a function-level reset with the config state saved and restored around
    /// it (pci_try_reset_function), and the interrupt programming restored.
    func resetDevice() {
        device.resetPreservingConfig()
        let (type, n) = device.irqLock.withLock { (device.irqType, device.vectors.count) }
        switch type {
        case .msi: device.setHardwareMSI(enabled: true, vectors: n)
        case .msix: device.setHardwareMSIX(enabled: true, vectors: n)
        default: break
        }
    }

    // MARK: read / write of regions (vfio_pci_rw)

    /// pread(2)/pwrite(2) at `offset`: `count` bytes between the region and `buffer` (the
    /// front end's memory). Returns bytes done or -errno.
    public func access(offset: Int64, buffer: UnsafeMutableRawPointer, count: Int, write: Bool) -> Int64 {
        guard granted else { return -Int64(LinuxErrno.EINVAL.rawValue) }
        guard offset >= 0 else { return -Int64(LinuxErrno.EINVAL.rawValue) }
        let index = VFIOPCI.region(ofOffset: UInt64(offset))
        let position = UInt64(offset) & VFIOPCI.offsetMask
        guard index < VFIOPCI.numRegions else { return -Int64(LinuxErrno.EINVAL.rawValue) }
        switch index {
        case VFIOPCI.configRegionIndex:
            return configAccess(position, buffer, count, write)
        case 0..<6:
            return barAccess(Int(index), position, buffer, count, write)
        default:
            // No ROM and no VGA region on these devices.
            return -Int64(LinuxErrno.EINVAL.rawValue)
        }
    }

    private func configAccess(_ position: UInt64, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ write: Bool) -> Int64 {
        let size = UInt64(device.function.config.size)
        guard position < size, UInt64(count) <= size - position else { return -Int64(LinuxErrno.EFAULT.rawValue) }
        var done = 0
        var pos = Int(position)
        while done < count {
            let left = count - done
            let width = left >= 4 && pos % 4 == 0 ? 4 : (left >= 2 && pos % 2 == 0 ? 2 : 1)
            if write {
                var v: UInt32 = 0
                for i in 0..<width { v |= UInt32(buffer.load(fromByteOffset: done + i, as: UInt8.self)) << (8 * UInt32(i)) }
                device.configWrite(pos, width: width, v)
            } else {
                let v = device.configRead(pos, width: width)
                for i in 0..<width { buffer.storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))), toByteOffset: done + i, as: UInt8.self) }
            }
            done += width
            pos += width
        }
        return Int64(done)
    }

    private func barAccess(_ bar: Int, _ position: UInt64, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ write: Bool) -> Int64 {
        let f = device.function
        guard let b = f.bars[bar] else { return -Int64(LinuxErrno.EINVAL.rawValue) }
        guard position < b.size else { return -Int64(LinuxErrno.EINVAL.rawValue) }
        let n = Int(min(UInt64(count), b.size - position))
        if b.isMemory && !f.memoryEnabled { return -Int64(LinuxErrno.EIO.rawValue) }
        // The MSI-X table is not reachable by read/write (reads give 0xff, writes are dropped).
        var xStart = UInt64.max, xEnd = UInt64.max
        if let t = f.msixTable, t.bar == bar { xStart = t.offset; xEnd = t.offset + UInt64(f.msixVectors * PCIConfig.msixEntrySize) }
        var done = 0
        var off = position
        while done < n {
            let left = UInt64(n - done)
            let fillable = off < xStart ? min(left, xStart - off) : (off >= xEnd ? left : 0)
            if fillable == 0 {
                let filled = Int(min(left, xEnd - off))
                if !write { (buffer + done).initializeMemory(as: UInt8.self, repeating: 0xff, count: filled) }
                done += filled
                off += UInt64(filled)
                continue
            }
            let width = fillable >= 8 && off % 8 == 0 ? 8 : (fillable >= 4 && off % 4 == 0 ? 4 : (fillable >= 2 && off % 2 == 0 ? 2 : 1))
            if write {
                var v: UInt64 = 0
                for i in 0..<width { v |= UInt64(buffer.load(fromByteOffset: done + i, as: UInt8.self)) << (8 * UInt64(i)) }
                f.barWrite(bar, offset: off, width: width, v)
            } else {
                let v = f.barRead(bar, offset: off, width: width)
                for i in 0..<width { buffer.storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))), toByteOffset: done + i, as: UInt8.self) }
            }
            done += width
            off += UInt64(width)
        }
        return Int64(done)
    }

    // MARK: mmap (vfio_pci_core_mmap) and the accesses through a mapping

    /// Checks an mmap of `length` bytes at file `offset`; on success the BAR and the offset in
    /// it where the mapping starts. The front end then maps the range so that each access
    /// reaches `mmio(bar:offset:width:write:value:)`.
    public func mmapRegion(length: UInt64, offset: UInt64, shared: Bool) -> Result<(bar: Int, start: UInt64), VFIOError> {
        guard granted else { return .failure(VFIOError(.EINVAL)) }
        let index = VFIOPCI.region(ofOffset: offset)
        guard index < VFIOPCI.numRegions, shared, index < VFIOPCI.romRegionIndex else { return .failure(VFIOError(.EINVAL)) }
        guard let bar = device.function.bars[Int(index)], bar.isMemory else { return .failure(VFIOError(.EINVAL)) }
        let start = offset & VFIOPCI.offsetMask
        let physical = (bar.size + 4095) & ~4095
        let (end, overflow) = start.addingReportingOverflow(length)
        guard !overflow, end <= physical else { return .failure(VFIOError(.EINVAL)) }
        return .success((Int(index), start))
    }

    /// One load or store through a BAR mapping: memory-space disabled gives all ones and drops
    /// writes (the kernel would fault the mapping with SIGBUS).
    public func mmio(bar: Int, offset: UInt64, width: Int, write: Bool, value: UInt64) -> UInt64 {
        let f = device.function
        guard f.memoryEnabled else { return write ? 0 : (width >= 8 ? .max : (1 << (8 * UInt64(width))) - 1) }
        if write {
            f.barWrite(bar, offset: offset, width: width, value)
            return 0
        }
        return f.barRead(bar, offset: offset, width: width)
    }

    // MARK: release

    /// The last descriptor of the file closed (vfio_device_fops_release).
    public func release() {
        let first: Bool = subsystem.lock.withLock {
            guard !released else { return false }
            released = true
            guard accessGranted else { return true }
            accessGranted = false
            closeLocked()
            if groupFile == nil { device.group.cdevOpenCount -= 1 }
            return true
        }
        // A device file made by GET_DEVICE_FD holds its group file until it goes.
        if first, groupFile != nil, openedThroughGroup { groupFile?.release() }
    }

    /// vfio_df_close: the last close disables the device and unbinds it from its iommufd.
    private func closeLocked() {
        device.openCount -= 1
        guard device.openCount == 0 else { return }
        device.disable()
        if let iommufd = device.iommufd {
            if device.attached { try? iommufd.context.detach(device: device.devid) }
            try? iommufd.context.unbind(device: device.devid)
            device.iommufd = nil
            device.attached = false
            iommufd.release()
        }
    }
}
