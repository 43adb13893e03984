// libFuzzer entry points. One input = one fresh IOMMUFDFile over the fixed world: bind the
// devices, run the program, release everything, then check the invariants. A violated
// invariant is a fatalError, which libFuzzer reports as a crash and saves.
//
// Environment:
//   UIOMMUFD_FUZZ_TRACE=1          print every ioctl (the ABI trace) and pseudo-op to stderr
//   UIOMMUFD_FUZZ_WRITE_CORPUS=DIR write the seed programs (Seeds.swift) to DIR and exit

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import IOMMUABI
import IOMMUEngine
import IOMMUHardware
import ProcessMemory
import UIOMMUBase

nonisolated(unsafe) private var theWorld: World?

// SwiftPM links executables with `--defsym main=<module>_main` (so tests can call into them),
// which would hide libFuzzer's own main. So this module has that entry point and hands over to
// libFuzzer's driver, which parses the usual command line and calls the two functions below.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("uiommufd_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector) { data, size in fuzzerTestOneInput(data, size) }
}
nonisolated(unsafe) private var tracing = false

@Sendable private func stderrLine(_ s: String) {
    var line = s
    line += "\n"
    line.withUTF8 { buffer in _ = write(2, buffer.baseAddress, buffer.count) }
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<CInt>,
                             _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    if let dir = getenv("UIOMMUFD_FUZZ_WRITE_CORPUS") {
        let path = String(cString: dir)
        let count = Seeds.write(to: path)
        stderrLine("wrote \(count) seed programs to \(path)")
        exit(0)
    }
    if let t = getenv("UIOMMUFD_FUZZ_TRACE"), t.pointee != 0, t.pointee != 0x30 { tracing = true }
    theWorld = World()
    theWorld!.resetMemory(all: true)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    if theWorld == nil { theWorld = World(); theWorld!.resetMemory(all: true) }
    let world = theWorld!
    let log: (@Sendable (String) -> Void)? = tracing ? stderrLine : nil
    runInput(world, UnsafeRawBufferPointer(start: data.map(UnsafeRawPointer.init), count: data == nil ? 0 : size), log: log)
    return 0
}

/// One input, start to finish.
func runInput(_ world: World, _ bytes: UnsafeRawBufferPointer, log: (@Sendable (String) -> Void)?) {
    var r = Reader(bytes)
    let h0 = r.u8(), h1 = r.u8(), h2 = r.u8()

    var options = ABIOptions(selftestOps: true)
    options.canSetRlimitMode = h0 & 2 != 0
    options.pinPolicy = h0 & 4 != 0 ? PinPolicy(memlockLimit: 16 * 4096, privileged: false) : .unlimited
    if let log {
        options.trace = { line in log(line) }
    } else if h0 & 1 != 0 {
        options.trace = { _ in }
    }
    world.broker.reset()
    let file = IOMMUFDFile(platform: world.platform, memory: world.space, user: world.user,
                           broker: world.broker, options: options)
    var files = [file]
    if h2 & 2 != 0 {
        files.append(IOMMUFDFile(platform: world.platform, memory: world.space, user: world.user,
                                 broker: world.broker, options: options))
    }
    var runner = ProgramRunner(world: world, reader: r, files: files, log: log)

    // The devices, bound as VFIO_DEVICE_BIND_IOMMUFD would (the previous input must have let go).
    var toBind = [0]
    if h0 & 0x80 == 0 { toBind.append(1) }
    if h0 & 0x08 != 0 { toBind.append(2) }
    if h0 & 0x10 != 0 { toBind.append(3) }
    if h0 & 0x20 != 0 { toBind.append(4) }
    for i in toBind {
        let device = world.devices[i]
        do throws(IOMMUError) {
            let id = try file.context.bind(device)
            runner.bound.append((id, device))
            runner.everBound.append(device)
            log?("# bind(\(device.spec.name)) = \(id)")
        } catch {
            fatalError("FUZZ: bind \(device.spec.name) at the start of an input failed: \(error) (the previous input did not release it)")
        }
    }
    if h0 & 0x40 != 0 {
        log?("# fail_nth \(Int(h1) + 1)")
        file.context.failures.failNth(Int(h1) + 1)
    }

    runner.run()

    for f in files { f.context.failures.disarm() }
    runner.checkDomainsMirrorAreas()

    // The end of the process: every descriptor closes.
    let devices = runner.everBound
    let mapped = runner.mappedIOVAs.map(\.iova)
    if h2 & 1 != 0 {
        for f in files { f.release() }
        for (_, aux) in world.broker.installed { aux.release() }
    } else {
        for (_, aux) in world.broker.installed { aux.release() }
        for f in files.reversed() { f.release() }
    }
    world.broker.reset()
    checkInvariants(world, files, devices: devices, mapped: mapped)
    world.resetMemory(all: false)
}

/// What must hold once the file and every fd are closed.
func checkInvariants(_ world: World, _ files: [IOMMUFDFile], devices: [PlatformDevice], mapped: [UInt64]) {
    for file in files {
        let objects = file.context.objects()
        if !objects.isEmpty {
            fatalError("FUZZ: \(objects.count) objects alive after release: \(objects.map { "\($0.id) \($0.kind)" })")
        }
    }
    let ledger = world.platform.ledger
    let owner = world.space.owner
    let pinned = ledger.totalPinnedPages
    let lockedUser = ledger.lockedPages(uid: owner.uid)
    let lockedProcess = ledger.lockedPages(pid: owner.pid)
    let pinnedProcess = ledger.pinnedPages(pid: owner.pid)
    if pinned != 0 || lockedUser != 0 || lockedProcess != 0 || pinnedProcess != 0 {
        fatalError("FUZZ: pages still accounted after release: total pinned \(pinned), user locked \(lockedUser), process locked \(lockedProcess), process pinned \(pinnedProcess)")
    }
    for (physical, length) in world.physicalRanges {
        if let (page, count) = ledger.physicalPins.mismatches(physical: physical, length: length, expected: 0).first {
            fatalError("FUZZ: physical page 0x\(String(page, radix: 16)) still has \(count) pin(s) after release")
        }
    }
    // No device (mock devices included) may still translate through a domain of the file.
    for device in world.platform.devices where !world.baselineContexts.contains(device.index) {
        if let domain = device.unit.context(requester: device.spec.address) {
            fatalError("FUZZ: \(device.spec.name) still has a domain (\(domain)) after release")
        }
    }
    for device in devices {
        var byte: UInt8 = 0
        for iova in mapped {
            do throws(DMAFault) {
                try world.platform.dmaRead(device: device, iova: iova, into: &byte, count: 1)
                fatalError("FUZZ: \(device.spec.name) can still DMA to IOVA 0x\(String(iova, radix: 16)) after release")
            } catch {
                // Blocked, as it must be.
            }
        }
    }
}
