// The ABI layer's seams (Sources/IOMMUABI/FrontEnd.swift) for one client process of the server.
//
// User memory is the client's, reached with process_vm_readv/writev on the pid the kernel gave
// us for the channel. The ioctl's struct usually arrives with the request (the client copies
// what it can read), so the common command costs no extra system call to read; writes always
// go to the client's memory at once, so EFAULT on a read-only struct is exactly the kernel's.
// File descriptors live in the client: installing one, or looking one up, is a call back to it
// over the channel while its request waits.

import CUIOMMUWire
import IOMMUABI
import ProcessMemory
import UIOMMUBase
#if canImport(Glibc)
import Glibc
#endif

/// copy_from_user / copy_to_user in the client process.
final class ChannelUserMemory: UserMemoryAccess, @unchecked Sendable {
    let pid: Int32
    /// The bytes the client sent with the current request, which were at `windowStart`.
    private var windowStart: UInt64 = 0
    private var windowLength = 0
    private let window = UnsafeMutableRawPointer.allocate(byteCount: Int(UIOMMU_WIRE_INLINE_MAX), alignment: 16)

    init(pid: Int32) { self.pid = pid }
    deinit { window.deallocate() }

    /// Installs the request's inline bytes (called by the channel's thread only).
    func setWindow(start: UInt64, bytes: UnsafeRawBufferPointer) {
        windowStart = start
        windowLength = min(bytes.count, Int(UIOMMU_WIRE_INLINE_MAX))
        if windowLength > 0, let base = bytes.baseAddress { window.copyMemory(from: base, byteCount: windowLength) }
    }

    func clearWindow() { windowLength = 0 }

    /// Offset of `[uptr, uptr + count)` in the window, if it lies inside.
    private func windowOffset(_ uptr: UInt64, _ count: Int) -> Int? {
        guard windowLength > 0, uptr >= windowStart else { return nil }
        let offset = uptr - windowStart
        guard offset <= UInt64(windowLength), UInt64(count) <= UInt64(windowLength) - offset else { return nil }
        return Int(offset)
    }

    private static func badRange(_ uptr: UInt64, _ count: Int) -> Bool {
        count < 0 || uptr == 0 || uptr.addingReportingOverflow(UInt64(count)).overflow
    }

    func copyFromUser(_ destination: UnsafeMutableRawPointer, _ uptr: UInt64, _ count: Int) -> Bool {
        if count == 0 { return true }
        if Self.badRange(uptr, count) { return false }
        if let offset = windowOffset(uptr, count) {
            destination.copyMemory(from: window + offset, byteCount: count)
            return true
        }
        return uiommu_process_read(pid, destination, uptr, count) == count
    }

    func copyToUser(_ uptr: UInt64, _ source: UnsafeRawPointer, _ count: Int) -> Bool {
        if count == 0 { return true }
        if Self.badRange(uptr, count) { return false }
        guard uiommu_process_write(pid, source, uptr, count) == count else { return false }
        // Later reads of the same struct in this call must see what was written.
        if windowLength > 0 {
            let start = max(uptr, windowStart), end = min(uptr + UInt64(count), windowStart + UInt64(windowLength))
            if start < end {
                (window + Int(start - windowStart)).copyMemory(from: source + Int(start - uptr), byteCount: Int(end - start))
            }
        }
        return true
    }
}

/// Descriptors in the client, through call-backs on the channel.
final class ChannelBroker: FileDescriptorBroker, @unchecked Sendable {
    unowned let channel: ContextChannel
    init(channel: ContextChannel) { self.channel = channel }

    func install(_ file: any AuxiliaryFile) -> Int32 {
        channel.installAuxiliary(file)
    }

    func fileMemory(fd: Int32) -> (any PinnableMemory)? {
        guard let received = channel.fetchDescriptor(fd) else { return nil }
        defer { close(received) }
        // A server-side mapping of the client's memfd: the same pages, which outlive the
        // client as pinned pages do.
        return FileMemory(fd: received, owner: MemoryOwner(pid: channel.pid, uid: channel.uid))
    }

    func auxiliaryFile(fd: Int32) -> (any AuxiliaryFile)? {
        guard let received = channel.fetchDescriptor(fd) else { return nil }
        defer { close(received) }
        var st = stat()
        guard fstat(received, &st) == 0 else { return nil }
        return channel.context.auxiliary(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
    }
}
