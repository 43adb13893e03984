// The entry points the C half calls (declared in Sources/CUIOMMUInterpose/core.h). Each runs
// inside the C half's gate and returns >= 0 or -errno; none may trap on client input.

import CUIOMMUInterpose
import IOMMUABI

@_cdecl("uiommu_core_open")
func coreOpen(_ flags: Int32, _ error: UnsafeMutablePointer<Int32>) -> UnsafeMutableRawPointer? {
    guard case .success(let runtime) = PreloadRuntime.shared else {
        error.pointee = 19   // ENODEV: no usable machine
        return nil
    }
    return Unmanaged.passRetained(runtime.openFile()).toOpaque()
}

@_cdecl("uiommu_core_ioctl")
func coreIoctl(_ object: UnsafeMutableRawPointer, _ request: UInt64, _ argument: UInt64) -> Int64 {
    let entry = Unmanaged<OpenFile>.fromOpaque(object).takeUnretainedValue()
    let result = entry.file.ioctl(UInt(request), argument)
    if uiommu_aux_count() > 0, case .success(let runtime) = PreloadRuntime.shared {
        runtime.syncAllReadiness()
    }
    return result
}

@_cdecl("uiommu_core_mmap")
func coreMmap(_ object: UnsafeMutableRawPointer, _ length: UInt64, _ protection: Int32, _ flags: Int32,
              _ offset: Int64) -> Int64 {
    // No mmap regions yet (the vIOMMU's is future work): the kernel's answer for a file
    // without an mmap method.
    -19   // ENODEV
}

@_cdecl("uiommu_core_release")
func coreRelease(_ object: UnsafeMutableRawPointer) {
    let entry = Unmanaged<OpenFile>.fromOpaque(object).takeRetainedValue()
    entry.file.release()
    if case .success(let runtime) = PreloadRuntime.shared { runtime.closed(entry) }
}

@_cdecl("uiommu_core_aux_read")
func coreAuxRead(_ object: UnsafeMutableRawPointer, _ buffer: UnsafeMutableRawPointer, _ count: UInt64) -> Int64 {
    let entry = Unmanaged<AuxFile>.fromOpaque(object).takeUnretainedValue()
    let result = entry.file.read(into: buffer, count: Int(clamping: count))
    entry.syncReadiness()
    return Int64(result)
}

@_cdecl("uiommu_core_aux_write")
func coreAuxWrite(_ object: UnsafeMutableRawPointer, _ buffer: UnsafeRawPointer, _ count: UInt64) -> Int64 {
    let entry = Unmanaged<AuxFile>.fromOpaque(object).takeUnretainedValue()
    let result = entry.file.write(from: buffer, count: Int(clamping: count))
    if case .success(let runtime) = PreloadRuntime.shared { runtime.syncAllReadiness() }
    return Int64(result)
}

@_cdecl("uiommu_core_aux_release")
func coreAuxRelease(_ object: UnsafeMutableRawPointer) {
    let entry = Unmanaged<AuxFile>.fromOpaque(object).takeRetainedValue()
    entry.handle = nil
    if case .success(let runtime) = PreloadRuntime.shared { runtime.removed(entry) }
    entry.file.release()
}

@_cdecl("uiommu_core_exit_report")
func coreExitReport() {
    guard case .success(let runtime) = PreloadRuntime.shared else { return }
    for line in runtime.leakReport() { diagnostic(line) }
}
