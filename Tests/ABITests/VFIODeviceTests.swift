// VFIO device, group and container files against the default machine: the cdev flow
// (BIND/ATTACH/DETACH), region info and access, interrupts, the edu device's DMA through the
// IOMMU, the legacy group + container flow, and the seed scenarios (viability, reserved-region
// collision on hot-add, cache coherency and domain sharing, one iommufd for two groups).

import Testing
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase
import Synchronization

final class TestNotifier: EventNotifier, @unchecked Sendable {
    private let count = Mutex(0)
    func signal() { count.withLock { $0 += 1 } }
    /// Reads and clears the counter, as read(2) of an eventfd does.
    func take() -> Int { count.withLock { let n = $0; $0 = 0; return n } }
}

final class TestVFIOHost: VFIOHost, @unchecked Sendable {
    struct State {
        var next: Int32 = 10
        var iommufds: [Int32: IOMMUFDFile] = [:]
        var eventfds: [Int32: TestNotifier] = [:]
        var devices: [Int32: VFIODeviceFile] = [:]
        var groupFiles: [Int32: VFIOGroupFile] = [:]
        var others: Set<Int32> = []
    }
    let state = Mutex(State())

    func add(iommufd file: IOMMUFDFile) -> Int32 { state.withLock { s in defer { s.next += 1 }; s.iommufds[s.next] = file; return s.next } }
    func eventfd() -> (Int32, TestNotifier) {
        let n = TestNotifier()
        return state.withLock { s in defer { s.next += 1 }; s.eventfds[s.next] = n; return (s.next, n) }
    }
    func plainFile() -> Int32 { state.withLock { s in defer { s.next += 1 }; s.others.insert(s.next); return s.next } }
    func closeIOMMUFD(_ fd: Int32) { state.withLock { $0.iommufds.removeValue(forKey: fd) }?.release() }
    func closeDevice(_ fd: Int32) { state.withLock { $0.devices.removeValue(forKey: fd) }?.release() }

    func iommufd(fd: Int32) -> DescriptorLookup<IOMMUFDFile> {
        state.withLock { s in
            if let f = s.iommufds[fd] { return .file(f) }
            if s.eventfds[fd] != nil || s.devices[fd] != nil || s.others.contains(fd) { return .otherFile }
            return .notOpen
        }
    }

    func eventNotifier(fd: Int32) -> Result<any EventNotifier, VFIOError> {
        state.withLock { s in
            if let n = s.eventfds[fd] { return .success(n) }
            if s.iommufds[fd] != nil || s.devices[fd] != nil || s.others.contains(fd) { return .failure(VFIOError(.EINVAL)) }
            return .failure(VFIOError(.EBADF))
        }
    }

    var groups: [Int32: VFIOGroupFile] { state.withLock { $0.groupFiles } }
    func add(group: VFIOGroupFile) -> Int32 { state.withLock { s in defer { s.next += 1 }; s.groupFiles[s.next] = group; return s.next } }

    func groupFile(fd: Int32) -> DescriptorLookup<VFIOGroupFile> {
        state.withLock { s in
            if let g = s.groupFiles[fd] { return .file(g) }
            if s.iommufds[fd] != nil || s.eventfds[fd] != nil || s.devices[fd] != nil || s.others.contains(fd) { return .otherFile }
            return .notOpen
        }
    }

    func installDevice(_ file: VFIODeviceFile) -> Int32 {
        state.withLock { s in defer { s.next += 1 }; s.devices[s.next] = file; return s.next }
    }

    func device(fd: Int32) -> VFIODeviceFile? { state.withLock { $0.devices[fd] } }
}

/// One simulated process on the default machine with VFIO.
final class VFIOHarness: @unchecked Sendable {
    let space = SimulatedAddressSpace()
    let platform: Platform
    let user: TestUserMemory
    let host = TestVFIOHost()
    let vfio: VFIOSubsystem
    let lines = LineSink()

    init(trace: Bool = false) {
        platform = Platform(machine: .default, physicalMemory: space)
        user = TestUserMemory(space)
        let sink = lines
        let traceSink: (@Sendable (String) -> Void)? = trace ? { @Sendable (line: String) in sink.append(line) } : nil
        vfio = VFIOSubsystem(platform: platform, host: host, user: user, trace: traceSink)
    }

    /// open("/dev/iommu") (or /dev/vfio/vfio with `container`).
    func openIOMMUFD(container: Bool = false) -> (fd: Int32, file: IOMMUFDFile) {
        let file = IOMMUFDFile(platform: platform, memory: space, user: user, broker: TestBroker(),
                               options: ABIOptions(pinPolicy: .unlimited))
        if container { VFIOSubsystem.configureContainer(file) }
        return (host.add(iommufd: file), file)
    }

    func device(_ name: String) -> VFIOPCIDevice {
        guard let d = vfio.devices.first(where: { $0.platformDevice.spec.name == name }) else { fatalError("no vfio device \(name)") }
        return d
    }

    func group(of name: String) -> VFIOGroup { device(name).group }

    /// Places `cmd` in client memory, runs `ioctl`, reads the struct back.
    @discardableResult
    func call(_ ioctl: (UInt, UInt64) -> Int64, _ request: UInt32, _ cmd: inout Cmd) -> Int64 {
        let length = UInt64(max(4096, (cmd.bytes.count + 4095) & ~4095))
        let va = space.map(length: length)
        cmd.bytes.withUnsafeBytes { space.pointer(va: va)!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let rc = ioctl(UInt(request), va)
        cmd.bytes = Array(UnsafeRawBufferPointer(start: space.pointer(va: va)!, count: cmd.bytes.count))
        space.unmap(va: va, length: length)
        return rc
    }

    func call(_ ioctl: (UInt, UInt64) -> Int64, _ request: UInt32, _ cmd: Cmd) -> Int64 {
        var c = cmd
        return call(ioctl, request, &c)
    }

    func bind(_ file: VFIODeviceFile, iommufd fd: Int32) -> (Int64, UInt32) {
        var c = Cmd(ABI.VFIOBindIOMMUFD.minSize).set32(ABI.VFIOBindIOMMUFD.iommufd, UInt32(bitPattern: fd))
        let rc = call(file.ioctl, VFIODeviceRequest.bindIOMMUFD, &c)
        return (rc, c.u32(ABI.VFIOBindIOMMUFD.outDevID))
    }

    func attach(_ file: VFIODeviceFile, _ pt: UInt32) -> (Int64, UInt32) {
        var c = Cmd(ABI.VFIOAttachIOMMUFDPT.minSize).set32(ABI.VFIOAttachIOMMUFDPT.ptID, pt)
        let rc = call(file.ioctl, VFIODeviceRequest.attachIOMMUFDPT, &c)
        return (rc, c.u32(ABI.VFIOAttachIOMMUFDPT.ptID))
    }

    /// IOAS_MAP of fresh client memory at a fixed IOVA; returns the VA.
    func map(_ iommufd: IOMMUFDFile, ioas: UInt32, iova: UInt64, length: UInt64 = 4096, writable: Bool = true) -> UInt64 {
        let va = space.map(length: length)
        do {
            _ = try iommufd.context.map(ioas: ioas, userVA: va, length: length, iova: iova,
                                        permissions: writable ? [.read, .write] : [.read])
        } catch { Issue.record("map failed: \(error)") }
        return va
    }

    func region(_ file: VFIODeviceFile, _ index: UInt32) -> (rc: Int64, flags: UInt32, size: UInt64, offset: UInt64, cmd: Cmd) {
        var c = Cmd(ABI.VFIORegionInfo.size).set32(ABI.VFIORegionInfo.index, index)
        let rc = call(file.ioctl, VFIODeviceRequest.getRegionInfo, &c)
        return (rc, c.u32(ABI.VFIORegionInfo.flags), c.u64(ABI.VFIORegionInfo.regionSize), c.u64(ABI.VFIORegionInfo.offset), c)
    }

    func irqInfo(_ file: VFIODeviceFile, _ index: UInt32) -> (rc: Int64, flags: UInt32, count: UInt32) {
        var c = Cmd(ABI.VFIOIRQInfo.size).set32(ABI.VFIOIRQInfo.index, index)
        let rc = call(file.ioctl, VFIODeviceRequest.getIRQInfo, &c)
        return (rc, c.u32(ABI.VFIOIRQInfo.flags), c.u32(ABI.VFIOIRQInfo.count))
    }

    /// SET_IRQS with eventfds.
    func setIRQs(_ file: VFIODeviceFile, index: UInt32, start: UInt32 = 0, fds: [Int32], action: UInt32 = ABI.VFIOIRQSet.actionTrigger) -> Int64 {
        var c = Cmd(20 + 4 * fds.count, sizeField: UInt32(20 + 4 * fds.count))
            .set32(4, ABI.VFIOIRQSet.dataEventfd | action).set32(8, index).set32(12, start).set32(16, UInt32(fds.count))
        for (i, fd) in fds.enumerated() { c = c.set32(20 + 4 * i, UInt32(bitPattern: fd)) }
        return call(file.ioctl, VFIODeviceRequest.setIRQs, &c)
    }

    func setIRQsNone(_ file: VFIODeviceFile, index: UInt32, start: UInt32 = 0, count: UInt32, action: UInt32) -> Int64 {
        call(file.ioctl, VFIODeviceRequest.setIRQs, Cmd(20).set32(4, ABI.VFIOIRQSet.dataNone | action)
            .set32(8, index).set32(12, start).set32(16, count))
    }

    // Region access through the file, as pread/pwrite.
    func read32(_ file: VFIODeviceFile, region: UInt32, _ offset: UInt64) -> UInt32 {
        var v: UInt32 = 0
        let rc = file.access(offset: Int64(VFIOPCI.offset(ofRegion: region) + offset), buffer: &v, count: 4, write: false)
        #expect(rc == 4)
        return v
    }

    func write32(_ file: VFIODeviceFile, region: UInt32, _ offset: UInt64, _ value: UInt32) {
        var v = value
        #expect(file.access(offset: Int64(VFIOPCI.offset(ofRegion: region) + offset), buffer: &v, count: 4, write: true) == 4)
    }

    func write64(_ file: VFIODeviceFile, region: UInt32, _ offset: UInt64, _ value: UInt64) {
        var v = value
        #expect(file.access(offset: Int64(VFIOPCI.offset(ofRegion: region) + offset), buffer: &v, count: 8, write: true) == 8)
    }

    func peek(_ va: UInt64, _ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: space.pointer(va: va)!, count: n)) }
    func poke(_ va: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { space.pointer(va: va)!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
}

@Suite("VFIO device files")
struct VFIODeviceTests {
    typealias R = VFIODeviceRequest

    @Test func registrationFollowsDriversAndAddresses() {
        let h = VFIOHarness()
        // Bound to vfio-pci, in address order: edu0 (00:10.0) first; usb0 (xhci_hcd) and
        // eth0 (e1000) are not VFIO devices, but serial0 (vfio-pci) in eth0's group is.
        #expect(h.vfio.devices.first?.platformDevice.spec.name == "edu0")
        #expect(h.vfio.devices.first?.name == "vfio0")
        let names = h.vfio.devices.map(\.platformDevice.spec.name)
        #expect(!names.contains("usb0") && !names.contains("eth0") && names.contains("serial0"))
        #expect(h.vfio.device(named: "vfio0") === h.vfio.devices[0] && h.vfio.device(named: "vfio01") == nil)
        let nic = h.group(of: "nic0.0")
        #expect(nic === h.group(of: "nic0.1") && nic.devices.count == 2)
        #expect(h.vfio.groups.map(\.minor) == Array(0..<h.vfio.groups.count))
    }

    @Test func cdevBindRulesAndInfo() {
        let h = VFIOHarness()
        let (ifd, iommufd) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        // Nothing but BIND before BIND.
        #expect(h.call(edu.ioctl, R.getInfo, Cmd(24, sizeField: 24)) == err(.EINVAL))
        var v: UInt32 = 0
        #expect(edu.access(offset: 0x700_0000_0000, buffer: &v, count: 4, write: false) == err(.EINVAL))
        #expect(h.call(edu.ioctl, R.bindIOMMUFD, Cmd(16, sizeField: 15).set32(8, UInt32(ifd))) == err(.EINVAL))
        #expect(h.call(edu.ioctl, R.bindIOMMUFD, Cmd(16).set32(4, 2).set32(8, UInt32(ifd))) == err(.EINVAL))
        #expect(h.call(edu.ioctl, R.bindIOMMUFD, Cmd(16).set32(8, UInt32(bitPattern: -1))) == err(.EINVAL))
        #expect(h.bind(edu, iommufd: 99).0 == err(.EBADF))
        let (efd, _) = h.host.eventfd()
        #expect(h.bind(edu, iommufd: efd).0 == -77, "EBADFD: not an iommufd")
        #expect(edu.ioctl(UInt(R.bindIOMMUFD), 0) == err(.EFAULT))
        let (rc, devid) = h.bind(edu, iommufd: ifd)
        #expect(rc == 0 && devid != 0)
        #expect(iommufd.context.objectKind(devid) == .device)
        #expect(h.bind(edu, iommufd: ifd).0 == err(.EINVAL), "bound twice")
        // A second cdev file of the same device cannot bind while the first holds it.
        let again = h.vfio.openDevice(h.device("edu0"))
        #expect(h.bind(again, iommufd: ifd).0 == err(.EINVAL))
        again.release()

        var info = Cmd(24)
        #expect(h.call(edu.ioctl, R.getInfo, &info) == 0)
        #expect(info.u32(4) == ABI.VFIODeviceInfo.flagPCI, "edu has no reset method, like QEMU's")
        #expect(info.u32(8) == 9 && info.u32(12) == 5 && info.u32(16) == 0)
        #expect(h.call(edu.ioctl, R.getInfo, Cmd(24, sizeField: 15)) == err(.EINVAL))

        let bar0 = h.region(edu, 0)
        #expect(bar0.rc == 0 && bar0.size == 1 << 20 && bar0.offset == 0 && bar0.flags == 7)
        #expect(h.region(edu, 1).rc == 0 && h.region(edu, 1).size == 0 && h.region(edu, 1).flags == 0)
        let config = h.region(edu, 7)
        #expect(config.size == 256 && config.offset == 7 << 40 && config.flags == 3)
        #expect(h.region(edu, 6).size == 0)
        #expect(h.region(edu, 8).rc == err(.EINVAL) && h.region(edu, 9).rc == err(.EINVAL))

        let intx = h.irqInfo(edu, 0)
        #expect(intx.rc == 0 && intx.count == 1 && intx.flags == 0x7)
        let msi = h.irqInfo(edu, 1)
        #expect(msi.count == 1 && msi.flags == 0x9)
        #expect(h.irqInfo(edu, 2).count == 0)
        #expect(h.irqInfo(edu, 3).rc == err(.EINVAL), "conventional PCI: no error interrupt")
        #expect(h.irqInfo(edu, 4).count == 1)
        #expect(h.irqInfo(edu, 5).rc == err(.EINVAL))
        #expect(h.call(edu.ioctl, R.reset, Cmd(4)) == err(.EINVAL))
        #expect(h.call(edu.ioctl, R.feature, Cmd(8).set32(4, 1 << 16 | 1)) == err(.ENOTTY))
        #expect(h.call(edu.ioctl, R.feature, Cmd(8).set32(4, 3 << 16)) == err(.EINVAL))
        #expect(h.call(edu.ioctl, 0x3b99, Cmd(8)) == err(.ENOTTY))

        // Closing the file unbinds; the DEVICE object goes; the device can be bound again.
        edu.release()
        #expect(iommufd.context.objectKind(devid) == nil)
        let third = h.vfio.openDevice(h.device("edu0"))
        #expect(h.bind(third, iommufd: ifd).0 == 0)
        third.release()
    }

    @Test func configSpaceThroughTheRegion() {
        let h = VFIOHarness()
        let (ifd, _) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        #expect(h.bind(edu, iommufd: ifd).0 == 0)
        #expect(h.read32(edu, region: 7, 0) == 0x11e8_1234)
        #expect(h.read32(edu, region: 7, 8) == 0x00ff_0010, "class 0x00ff00, revision 0x10")
        // Memory decode was enabled when the device was opened, bus mastering was not.
        let command = h.read32(edu, region: 7, 4) & 0xffff
        #expect(command & 0x2 != 0 && command & 0x4 == 0)
        // BAR sizing through the region.
        h.write32(edu, region: 7, 0x10, 0xffff_ffff)
        #expect(h.read32(edu, region: 7, 0x10) == 0xfff0_0000)
        // Past the end of config space: EFAULT, as vfio_config_do_rw.
        var buf = [UInt8](repeating: 0, count: 8)
        #expect(edu.access(offset: Int64(7 << 40 | 252), buffer: &buf, count: 8, write: false) == err(.EFAULT))
        #expect(edu.access(offset: Int64(7 << 40), buffer: &buf, count: 7, write: false) == 7)
        // MSI registers are virtualized: the program's enable bit never reaches the device.
        h.write32(edu, region: 7, 0x40, 0x0001_0000)
        #expect(h.read32(edu, region: 7, 0x40) >> 16 & 1 == 1)
        #expect(!h.device("edu0").function.msiEnabled)
        edu.release()
    }

    @Test func eduDMAThroughTheIOMMUWithMSI() {
        let h = VFIOHarness()
        let (ifd, iommufd) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        let (_, devid) = h.bind(edu, iommufd: ifd)
        let ioas = try! iommufd.context.allocIOAS()
        let (arc, hwpt) = h.attach(edu, ioas)
        #expect(arc == 0 && hwpt != ioas && iommufd.context.objectKind(hwpt) == .hwptPaging)
        #expect(h.attach(edu, 999).0 == err(.ENOENT))
        #expect(h.call(edu.ioctl, R.attachIOMMUFDPT, Cmd(12, sizeField: 11)) == err(.EINVAL))
        #expect(h.call(edu.ioctl, R.attachIOMMUFDPT, Cmd(16).set32(4, 1)) == err(.EOPNOTSUPP))
        let src = h.map(iommufd, ioas: ioas, iova: 0x10_0000)
        let dst = h.map(iommufd, ioas: ioas, iova: 0x20_0000)
        let pattern = (0..<256).map { UInt8(255 - $0) }
        h.poke(src, pattern)
        let (efd, note) = h.host.eventfd()
        #expect(h.setIRQs(edu, index: 1, fds: [efd]) == 0)
        #expect(h.device("edu0").interruptMode == "MSI x1" && h.device("edu0").function.msiEnabled)
        // ident, liveness, factorial through the BAR region.
        #expect(h.read32(edu, region: 0, 0) == 0x0100_00ed)
        h.write32(edu, region: 0, 4, 0xf0f0_f0f0)
        #expect(h.read32(edu, region: 0, 4) == 0x0f0f_0f0f)
        h.write32(edu, region: 0, 8, 10)
        #expect(h.read32(edu, region: 0, 8) == 3_628_800)
        // Bus master on, RAM → device → RAM.
        let cmd = h.read32(edu, region: 7, 4) & 0xffff
        h.write32(edu, region: 7, 4, cmd | 0x4)
        h.write64(edu, region: 0, 0x80, 0x10_0000)
        h.write64(edu, region: 0, 0x88, 0x40000)
        h.write64(edu, region: 0, 0x90, 256)
        h.write64(edu, region: 0, 0x98, 0x5)
        #expect(note.take() == 1)
        #expect(h.read32(edu, region: 0, 0x24) == 0x100)
        h.write32(edu, region: 0, 0x64, 0x100)
        h.write64(edu, region: 0, 0x80, 0x40000)
        h.write64(edu, region: 0, 0x88, 0x20_0000)
        h.write64(edu, region: 0, 0x98, 0x7)
        #expect(note.take() == 1)
        #expect(h.peek(dst, 256) == pattern)
        // DETACH blocks the device's DMA: the next transfer faults and nothing is written.
        #expect(h.call(edu.ioctl, R.detachIOMMUFDPT, Cmd(8)) == 0)
        #expect(h.call(edu.ioctl, R.detachIOMMUFDPT, Cmd(8)) == 0, "detaching twice is fine")
        h.poke(dst, [UInt8](repeating: 0, count: 256))
        h.write64(edu, region: 0, 0x98, 0x3)
        #expect(h.peek(dst, 4) == [0, 0, 0, 0])
        #expect(h.device("edu0").platformDevice.unit.faultLog.last?.reason == .blocked)
        #expect(h.read32(edu, region: 7, 4) >> 16 & 0x2000 != 0, "Received Master Abort")
        // Re-attach (replace is tested with HWPTs below) and a DMA to an unmapped IOVA stops.
        #expect(h.attach(edu, ioas).0 == 0)
        h.write32(edu, region: 7, 4, 0x2000_0000 | (h.read32(edu, region: 7, 4) & 0xffff))
        h.write64(edu, region: 0, 0x88, 0x30_0000)
        h.write64(edu, region: 0, 0x98, 0x3)
        let fault = h.device("edu0").platformDevice.unit.faultLog.last
        #expect(fault?.reason == .notPresent && fault?.iova == 0x30_0000 && fault?.write == true)
        // MSI off, INTx on: edu's interrupt becomes the line, automasked until unmasked.
        #expect(h.setIRQsNone(edu, index: 1, count: 0, action: ABI.VFIOIRQSet.actionTrigger) == 0)
        #expect(h.device("edu0").interruptMode == "none" && !h.device("edu0").function.msiEnabled)
        let (ifd2, line) = h.host.eventfd()
        #expect(h.setIRQs(edu, index: 1, fds: [ifd2]) == 0)
        #expect(h.setIRQs(edu, index: 0, fds: [ifd2]) == err(.EINVAL), "MSI is on: INTx cannot be enabled")
        #expect(h.setIRQsNone(edu, index: 1, count: 0, action: ABI.VFIOIRQSet.actionTrigger) == 0)
        #expect(h.setIRQs(edu, index: 0, fds: [ifd2]) == 0)
        _ = line.take()
        h.write32(edu, region: 0, 0x60, 0x1)
        h.write32(edu, region: 0, 0x60, 0x2)
        #expect(line.take() == 1, "automasked after the first")
        h.write32(edu, region: 0, 0x64, 0x3)
        h.write32(edu, region: 0, 0x60, 0x4)
        #expect(line.take() == 0, "still masked")
        #expect(h.setIRQsNone(edu, index: 0, count: 1, action: ABI.VFIOIRQSet.actionUnmask) == 0)
        #expect(line.take() == 1, "unmasking with the line up fires again")
        #expect(h.setIRQs(edu, index: 1, fds: [99]) == err(.EINVAL), "INTx is on")
        #expect(h.setIRQsNone(edu, index: 0, count: 0, action: ABI.VFIOIRQSet.actionTrigger) == 0)
        #expect(h.setIRQs(edu, index: 1, fds: [99]) == err(.EBADF))
        #expect(h.setIRQs(edu, index: 1, fds: [ifd]) == err(.EINVAL), "an iommufd is not an eventfd")
        #expect(h.setIRQs(edu, index: 1, start: 1, fds: [ifd2]) == err(.EINVAL), "one MSI vector only")
        #expect(h.setIRQsNone(edu, index: 1, count: 1, action: ABI.VFIOIRQSet.actionMask) == err(.ENOTTY))
        edu.release()
        #expect(iommufd.context.objectKind(devid) == nil && iommufd.context.objectKind(hwpt) == nil)
        #expect(!h.device("edu0").function.busMasterEnabled, "closing clears bus mastering")
    }

    @Test func replaceResetAndMSIX() throws {
        let h = VFIOHarness()
        let (ifd, iommufd) = h.openIOMMUFD()
        let nvme = h.vfio.openDevice(h.device("nvme0"))
        let (_, devid) = h.bind(nvme, iommufd: ifd)
        let ioas = try iommufd.context.allocIOAS()
        let a = try iommufd.context.allocHWPT(device: devid, ioas: ioas, flags: [])
        let b = try iommufd.context.allocHWPT(device: devid, ioas: ioas, flags: [])
        #expect(h.attach(nvme, a).1 == a)
        #expect(h.attach(nvme, b).1 == b, "replace")
        #expect(try iommufd.context.attachedHWPT(device: devid) == b)
        var info = Cmd(24)
        #expect(h.call(nvme.ioctl, R.getInfo, &info) == 0)
        #expect(info.u32(4) == ABI.VFIODeviceInfo.flagPCI | ABI.VFIODeviceInfo.flagReset)
        #expect(h.region(nvme, 7).size == 4096, "PCI Express")
        #expect(h.irqInfo(nvme, 3).count == 1)
        // The BAR with the MSI-X table says it is mmappable anyway (MSIX_MAPPABLE).
        let bar = h.region(nvme, 0)
        #expect(bar.flags == 0xf && bar.cmd.u32(0) == 40 && bar.cmd.u32(12) == 0, "argsz grown, caps not written")
        var big = Cmd(40, sizeField: 40).set32(8, 0)
        #expect(h.call(nvme.ioctl, R.getRegionInfo, &big) == 0)
        #expect(big.u32(12) == 32 && big.u16(32) == 3 && big.u16(34) == 1)
        // The MSI-X table reads as 0xff through read(2); the rest of the BAR is memory-like.
        #expect(h.read32(nvme, region: 0, 0x2000) == 0xffff_ffff)
        h.write32(nvme, region: 0, 0x100, 0xabcd)
        #expect(h.read32(nvme, region: 0, 0x100) == 0xabcd)
        // Memory decode off: EIO.
        let command = h.read32(nvme, region: 7, 4) & 0xffff
        h.write32(nvme, region: 7, 4, command & ~2)
        var v: UInt32 = 0
        #expect(nvme.access(offset: 0x100, buffer: &v, count: 4, write: false) == err(.EIO))
        h.write32(nvme, region: 7, 4, command | 4)
        // MSI-X with 3 vectors; loopback triggers reach the eventfds.
        let fds = (0..<3).map { _ in h.host.eventfd() }
        #expect(h.setIRQs(nvme, index: 2, fds: fds.map(\.0)) == 0)
        #expect(h.device("nvme0").function.msixEnabled)
        #expect(h.setIRQsNone(nvme, index: 2, start: 1, count: 2, action: ABI.VFIOIRQSet.actionTrigger) == 0)
        #expect(fds.map { $0.1.take() } == [0, 1, 1])
        // RESET: device state is gone, config state (command, BARs) and MSI-X come back.
        #expect(h.call(nvme.ioctl, R.reset, Cmd(4)) == 0)
        #expect(h.read32(nvme, region: 0, 0x100) == 0)
        #expect(h.read32(nvme, region: 7, 4) & 0x6 == 0x6)
        #expect(h.device("nvme0").function.msixEnabled)
        nvme.release()
    }

    @Test func hotResetInfoAndReset() throws {
        let h = VFIOHarness()
        let (ifd, _) = h.openIOMMUFD()
        // edu sits on the root bus: no bus to reset (ENODEV), as QEMU's edu on q35.
        let edu = h.vfio.openDevice(h.device("edu0"))
        _ = h.bind(edu, iommufd: ifd)
        #expect(h.call(edu.ioctl, R.getPCIHotResetInfo, Cmd(12, sizeField: 12)) == err(.ENODEV))
        // The NIC's two functions share bus 3: a bus reset affects both.
        let f0 = h.vfio.openDevice(h.device("nic0.0"))
        let (_, id0) = h.bind(f0, iommufd: ifd)
        var small = Cmd(12, sizeField: 12)
        #expect(h.call(f0.ioctl, R.getPCIHotResetInfo, &small) == err(.ENOSPC))
        #expect(small.u32(8) == 2)
        var info = Cmd(28, sizeField: 28)
        #expect(h.call(f0.ioctl, R.getPCIHotResetInfo, &info) == 0)
        #expect(info.u32(4) == ABI.VFIOHotResetInfo.flagDevID, "nic0.1 is not bound: not owned")
        #expect(info.u32(12) == id0 && info.u32(20) == ABI.VFIOHotResetInfo.devidNotOwned)
        #expect(info.u8(18) == 3 && info.u8(19) == 0 && info.u8(26) == 3 && info.u8(27) == 1, "bus 3, devfn 00.0 and 00.1")
        #expect(h.call(f0.ioctl, R.pciHotReset, Cmd(12)) == err(.EPERM))
        let f1 = h.vfio.openDevice(h.device("nic0.1"))
        let (_, id1) = h.bind(f1, iommufd: ifd)
        #expect(h.call(f0.ioctl, R.getPCIHotResetInfo, &info) == 0)
        #expect(info.u32(4) == ABI.VFIOHotResetInfo.flagDevID | ABI.VFIOHotResetInfo.flagDevIDOwned)
        #expect(info.u32(20) == id1)
        h.write32(f0, region: 0, 0x10, 0x1234)
        #expect(h.call(f0.ioctl, R.pciHotReset, Cmd(12).set32(8, 1)) == err(.EINVAL), "cdev: no group fds")
        #expect(h.call(f0.ioctl, R.pciHotReset, Cmd(12)) == 0)
        #expect(h.read32(f0, region: 0, 0x10) == 0)
        f0.release(); f1.release()
    }

    @Test func legacyGroupAndContainer() throws {
        let h = VFIOHarness()
        let (cfd, container) = h.openIOMMUFD(container: true)
        let group = h.group(of: "edu0")
        let gfile = try h.vfio.openGroup(group).get()
        #expect(throws: VFIOError.self) { try h.vfio.openGroup(group).get() }
        var status = Cmd(8)
        #expect(h.call(gfile.ioctl, R.groupGetStatus, &status) == 0)
        #expect(status.u32(4) == ABI.VFIOGroupStatus.flagViable)
        #expect(h.call(gfile.ioctl, R.groupGetStatus, Cmd(8, sizeField: 7)) == err(.EINVAL))
        // GET_DEVICE_FD needs a container.
        #expect(h.call(gfile.ioctl, R.groupGetDeviceFD, Cmd(raw: Array("0000:00:10.0".utf8) + [0])) == err(.EINVAL))
        #expect(h.call(gfile.ioctl, R.groupSetContainer, Cmd(raw: [99, 0, 0, 0])) == err(.EBADF))
        let plain = h.host.plainFile()
        #expect(h.call(gfile.ioctl, R.groupSetContainer, Cmd(raw: [UInt8(plain), 0, 0, 0])) == -77)
        #expect(h.call(gfile.ioctl, R.groupUnsetContainer, Cmd(4)) == err(.EINVAL))
        #expect(h.call(gfile.ioctl, R.groupSetContainer, Cmd(raw: [UInt8(cfd), 0, 0, 0])) == 0)
        #expect(h.call(gfile.ioctl, R.groupSetContainer, Cmd(raw: [UInt8(cfd), 0, 0, 0])) == err(.EINVAL))
        #expect(h.call(gfile.ioctl, R.groupGetStatus, &status) == 0)
        #expect(status.u32(4) == ABI.VFIOGroupStatus.flagViable | ABI.VFIOGroupStatus.flagContainerSet)
        let compat = try #require(container.context.vfioCompatIOAS)
        #expect(container.context.rlimitMode == .process, "/dev/vfio/vfio charges the process")
        // The container's type1 ioctls.
        #expect(container.ioctl(UInt(VFIORequest.setIOMMU), 3) == 0)
        let va = h.space.map(length: 8192)
        var map = Cmd(32).set32(4, 3).set64(8, va).set64(16, 0x10_0000).set64(24, 8192)
        #expect(h.call(container.ioctl, VFIORequest.iommuMapDMA, &map) == 0)
        // A device file by name; a wrong name is ENODEV; a cdev bind of a member is EBUSY.
        #expect(h.call(gfile.ioctl, R.groupGetDeviceFD, Cmd(raw: Array("0000:00:11.0".utf8) + [0])) == err(.ENODEV))
        #expect(h.call(gfile.ioctl, R.groupGetDeviceFD, Cmd(raw: [UInt8](repeating: 0x41, count: 4096))) == err(.EINVAL))
        let dfd = h.call(gfile.ioctl, R.groupGetDeviceFD, Cmd(raw: Array("0000:00:10.0".utf8) + [0]))
        #expect(dfd > 0)
        let dev = try #require(h.host.device(fd: Int32(dfd)))
        let cdev = h.vfio.openDevice(h.device("edu0"))
        let (ifd, _) = h.openIOMMUFD()
        #expect(h.bind(cdev, iommufd: ifd).0 == err(.EBUSY))
        #expect(h.bind(dev, iommufd: ifd).0 == err(.EINVAL), "BIND is for cdev files")
        #expect(h.call(dev.ioctl, R.attachIOMMUFDPT, Cmd(12)) == err(.ENOTTY), "ATTACH is for cdev files")
        // The device is attached to the compat IOAS: DMA reaches what MAP_DMA mapped.
        #expect(try container.context.hwpts(ioas: compat).count == 1)
        h.poke(va, [7, 7, 7, 7])
        h.write32(dev, region: 7, 4, (h.read32(dev, region: 7, 4) & 0xffff) | 4)
        h.write64(dev, region: 0, 0x80, 0x10_0000)
        h.write64(dev, region: 0, 0x88, 0x40000)
        h.write64(dev, region: 0, 0x90, 4)
        h.write64(dev, region: 0, 0x98, 1)
        h.write64(dev, region: 0, 0x80, 0x40000)
        h.write64(dev, region: 0, 0x88, 0x10_1000)
        h.write64(dev, region: 0, 0x98, 3)
        #expect(h.peek(va + 4096, 4) == [7, 7, 7, 7])
        // Closing: the device, then the group (the group file lives while the device file does).
        h.host.closeDevice(Int32(dfd))
        gfile.release()
        #expect(try container.context.hwpts(ioas: compat).isEmpty)
        #expect(h.bind(cdev, iommufd: ifd).0 == 0, "the group is closed: cdev works again")
        #expect(throws: VFIOError.self) { try h.vfio.openGroup(group).get() }
        cdev.release()
        let again = try h.vfio.openGroup(group).get()
        again.release()
    }

    @Test func seedNotViableGroup() throws {
        // eth0 (driven by e1000) and serial0 (vfio-pci) share a group behind a PCIe-to-PCI bridge.
        let h = VFIOHarness()
        let group = h.group(of: "serial0")
        #expect(group.devices.map(\.platformDevice.spec.name) == ["serial0"])
        let gfile = try h.vfio.openGroup(group).get()
        var status = Cmd(8)
        #expect(h.call(gfile.ioctl, R.groupGetStatus, &status) == 0)
        #expect(status.u32(4) == 0, "not viable")
        let (cfd, _) = h.openIOMMUFD(container: true)
        #expect(h.call(gfile.ioctl, R.groupSetContainer, Cmd(raw: [UInt8(cfd), 0, 0, 0])) == 0)
        #expect(h.call(gfile.ioctl, R.groupGetDeviceFD, Cmd(raw: Array("0000:07:02.0".utf8) + [0])) == err(.EPERM))
        gfile.release()
        let (ifd, _) = h.openIOMMUFD()
        let serial = h.vfio.openDevice(h.device("serial0"))
        #expect(h.bind(serial, iommufd: ifd).0 == err(.EPERM))
        serial.release()
    }

    @Test func seedReservedRegionCollisionOnHotAdd() throws {
        // dma0 sits behind dmar1, whose firmware keeps [0xe0000000, 0xe00fffff] (an RMRR).
        let h = VFIOHarness()
        let (ifd, iommufd) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        _ = h.bind(edu, iommufd: ifd)
        let ioas = try iommufd.context.allocIOAS()
        #expect(h.attach(edu, ioas).0 == 0)
        _ = h.map(iommufd, ioas: ioas, iova: 0xe000_0000, length: 0x10000)
        let before = try iommufd.context.iovaRanges(ioas: ioas).ranges
        let dma = h.vfio.openDevice(h.device("dma0"))
        let (_, dmaID) = h.bind(dma, iommufd: ifd)
        #expect(h.attach(dma, ioas).0 == err(.EADDRINUSE))
        #expect(try iommufd.context.attachedHWPT(device: dmaID) == nil)
        #expect(try iommufd.context.iovaRanges(ioas: ioas).ranges == before, "nothing changed")
        #expect(try iommufd.context.hasArea(ioas: ioas, first: 0xe000_0000, last: 0xe000_ffff))
        _ = try iommufd.context.unmap(ioas: ioas, iova: 0xe000_0000, length: 0x10000)
        #expect(h.attach(dma, ioas).0 == 0)
        // Usable ranges are the complement of both units' holes.
        let ranges = try iommufd.context.iovaRanges(ioas: ioas).ranges
        #expect(!ranges.contains { $0.first <= 0xe000_0000 && $0.last >= 0xe000_0000 })
        #expect(!ranges.contains { $0.first <= 0xfee0_0000 && $0.last >= 0xfee0_0000 })
        #expect(ranges.contains { $0.first == 0xe010_0000 })
        dma.release()
        edu.release()
    }

    @Test func seedCoherencyAndSharedIOMMUFD() throws {
        let h = VFIOHarness()
        // One iommufd, devices of two groups behind the same unit: one shared domain.
        let (ifd, iommufd) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        let nvme = h.vfio.openDevice(h.device("nvme0"))
        _ = h.bind(edu, iommufd: ifd)
        _ = h.bind(nvme, iommufd: ifd)
        #expect(h.group(of: "edu0") !== h.group(of: "nvme0"))
        let ioas = try iommufd.context.allocIOAS()
        let a = h.attach(edu, ioas).1, b = h.attach(nvme, ioas).1
        #expect(a == b)
        // A device behind dmar1 (no snoop control) cannot use the enforcing domain.
        let dma = h.vfio.openDevice(h.device("dma0"))
        _ = h.bind(dma, iommufd: ifd)
        let c = h.attach(dma, ioas).1
        #expect(c != a)
        let hwpts = try iommufd.context.hwpts(ioas: ioas)
        #expect(hwpts.count == 2 && hwpts.filter(\.enforcesCacheCoherency).count == 1)
        for f in [edu, nvme, dma] { f.release() }

        // The same through one container: DMA_CC goes to 0 when dma0's group joins.
        let (cfd, container) = h.openIOMMUFD(container: true)
        let g1 = try h.vfio.openGroup(h.group(of: "edu0")).get()
        let g2 = try h.vfio.openGroup(h.group(of: "dma0")).get()
        #expect(h.call(g1.ioctl, R.groupSetContainer, Cmd(raw: [UInt8(cfd), 0, 0, 0])) == 0)
        #expect(h.call(g2.ioctl, R.groupSetContainer, Cmd(raw: [UInt8(cfd), 0, 0, 0])) == 0)
        #expect(container.ioctl(UInt(VFIORequest.setIOMMU), 3) == 0)
        let d1 = h.call(g1.ioctl, R.groupGetDeviceFD, Cmd(raw: Array("0000:00:10.0".utf8) + [0]))
        #expect(d1 > 0)
        #expect(container.ioctl(UInt(VFIORequest.checkExtension), 4) == 1)
        let d2 = h.call(g2.ioctl, R.groupGetDeviceFD, Cmd(raw: Array("0000:05:00.0".utf8) + [0]))
        #expect(d2 > 0)
        #expect(container.ioctl(UInt(VFIORequest.checkExtension), 4) == 0)
        h.host.closeDevice(Int32(d1)); h.host.closeDevice(Int32(d2))
        g1.release(); g2.release()
    }

    @Test func iommufdOutlivesItsDescriptorWhileADeviceIsBound() throws {
        let h = VFIOHarness()
        let (ifd, iommufd) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        let (_, devid) = h.bind(edu, iommufd: ifd)
        h.host.closeIOMMUFD(ifd)
        #expect(iommufd.context.objectKind(devid) == .device, "the device keeps the context")
        edu.release()
        #expect(iommufd.context.objects().isEmpty)
        #expect(throws: IOMMUError.self) { try iommufd.context.allocIOAS() }
    }

    @Test func traceLines() {
        let h = VFIOHarness(trace: true)
        let (ifd, _) = h.openIOMMUFD()
        let edu = h.vfio.openDevice(h.device("edu0"))
        _ = h.bind(edu, iommufd: ifd)
        _ = h.region(edu, 7)
        #expect(h.lines.lines.first?.hasPrefix("VFIO_DEVICE_BIND_IOMMUFD {argsz=16, flags=0, iommufd=\(ifd)} = 0 => {out_devid=") == true)
        #expect(h.lines.lines.last?.contains("VFIO_DEVICE_GET_REGION_INFO") == true)
        #expect(h.lines.lines.last?.contains("flags=READ|WRITE") == true)
        edu.release()
    }
}
