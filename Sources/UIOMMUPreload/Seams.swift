// The ABI layer's seams (Sources/IOMMUABI/FrontEnd.swift) implemented for this process.

import CUIOMMUInterpose
import IOMMUABI
import ProcessMemory
#if canImport(Glibc)
import Glibc
#endif

/// copy_from_user / copy_to_user: memcpy under the C half's SIGSEGV/SIGBUS guard, so a bad
/// pointer is EFAULT and never a crash (or process_vm_readv/writev with UIOMMUFD_UACCESS=safe).
final class GuardedUserMemory: UserMemoryAccess, @unchecked Sendable {
    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool {
        count >= 0 && uiommu_copy_from_user(destination, uptr, count) == 0
    }

    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        count >= 0 && uiommu_copy_to_user(uptr, source, count) == 0
    }
}

/// Installs auxiliary files as real descriptors (eventfds whose read/write/close the C half
/// routes here) and resolves memfds for IOMMU_IOAS_MAP_FILE.
final class PreloadBroker: FileDescriptorBroker, @unchecked Sendable {
    func install(_ file: any AuxiliaryFile) -> Int32 {
        guard case .success(let runtime) = PreloadRuntime.shared else { return -19 }   // ENODEV
        let entry = AuxFile(file: file)
        let object = Unmanaged.passRetained(entry).toOpaque()
        var handle: UnsafeMutableRawPointer?
        let fd = uiommu_aux_install(object, &handle)
        guard fd >= 0 else {
            Unmanaged<AuxFile>.fromOpaque(object).release()
            return fd
        }
        entry.handle = handle
        runtime.added(entry)
        entry.syncReadiness()
        return fd
    }

    func auxiliaryFile(fd: Int32) -> (any AuxiliaryFile)? {
        guard fd >= 0, uiommu_fd_kind(fd) == Int32(UIOMMU_FD_AUX),
              case .success(let runtime) = PreloadRuntime.shared else { return nil }
        return runtime.auxFile(fd: fd)?.file
    }

    func fileMemory(fd: Int32) -> (any PinnableMemory)? {
        // Our own descriptors are memfds too, but not files anyone can map.
        guard fd >= 0, uiommu_fd_kind(fd) == Int32(UIOMMU_FD_NONE) else { return nil }
        return FileMemory(fd: fd)
    }
}
