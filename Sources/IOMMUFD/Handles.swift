/// An I/O address space: IOVA → user memory, mirrored into every attached page table.
public struct IOAS: Hashable, Sendable {
    public let context: IOMMUContext
    /// The object ID (out_ioas_id).
    public let id: UInt32

    public static func == (a: IOAS, b: IOAS) -> Bool { a.context === b.context && a.id == b.id }
    public func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(context)); h.combine(id) }

    /// IOMMU_IOAS_MAP: maps `length` bytes at `userVA`, at `iova` if given (FIXED_IOVA) or at
    /// an IOVA the IOAS picks. Returns the IOVA.
    @discardableResult
    public func map(userVA: UInt64, length: UInt64, at iova: UInt64? = nil,
                    permissions: IOPermissions = [.read, .write]) throws(IOMMUError) -> UInt64 {
        try context.backend.map(ioas: id, userVA: userVA, length: length, iova: iova, permissions: permissions)
    }

    /// Maps a buffer of this process's memory.
    @discardableResult
    public func map(_ buffer: UnsafeRawBufferPointer, at iova: UInt64? = nil,
                    permissions: IOPermissions = [.read, .write]) throws(IOMMUError) -> UInt64 {
        let va = UInt64(UInt(bitPattern: buffer.baseAddress))
        return try map(userVA: va, length: UInt64(buffer.count), at: iova, permissions: permissions)
    }

    /// IOMMU_IOAS_UNMAP of whole areas inside `[iova, iova + length)`; returns bytes unmapped.
    @discardableResult
    public func unmap(iova: UInt64, length: UInt64) throws(IOMMUError) -> UInt64 {
        try context.backend.unmap(ioas: id, iova: iova, length: length)
    }

    /// Unmaps everything (iova 0, length UINT64_MAX).
    @discardableResult
    public func unmapAll() throws(IOMMUError) -> UInt64 {
        try context.backend.unmap(ioas: id, iova: 0, length: .max)
    }

    /// IOMMU_IOAS_COPY from another IOAS's range into this one, sharing the pinned pages.
    @discardableResult
    public func copy(from source: IOAS, iova srcIOVA: UInt64, length: UInt64, to iova: UInt64? = nil,
                     permissions: IOPermissions = [.read, .write]) throws(IOMMUError) -> UInt64 {
        try context.backend.copy(from: source.id, srcIOVA: srcIOVA, length: length, to: id,
                                 dstIOVA: iova, permissions: permissions)
    }

    /// IOMMU_IOAS_ALLOW_IOVAS: only these ranges are used for automatic IOVA allocation.
    public func allow(_ ranges: [IOVARange]) throws(IOMMUError) { try context.backend.allowIOVAs(ioas: id, ranges) }

    /// IOMMU_IOAS_IOVA_RANGES: usable ranges and the required alignment.
    public func iovaRanges() throws(IOMMUError) -> IOVARanges { try context.backend.iovaRanges(ioas: id) }

    /// IOMMU_OPTION HUGE_PAGES.
    public func hugePages() throws(IOMMUError) -> Bool { try context.backend.hugePages(ioas: id) }
    public func setHugePages(_ enabled: Bool) throws(IOMMUError) { try context.backend.setHugePages(ioas: id, enabled) }

    /// IOMMU_DESTROY.
    public func destroy() throws(IOMMUError) { try context.backend.destroy(id) }
}

/// A hardware page table (HWPT_PAGING) mirroring an IOAS.
public struct HWPT: Hashable, Sendable {
    public let context: IOMMUContext
    public let id: UInt32

    public static func == (a: HWPT, b: HWPT) -> Bool { a.context === b.context && a.id == b.id }
    public func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(context)); h.combine(id) }

    /// IOMMU_HWPT_SET_DIRTY_TRACKING.
    public func setDirtyTracking(_ enabled: Bool) throws(IOMMUError) {
        try context.backend.setDirtyTracking(hwpt: id, enabled: enabled)
    }

    /// IOMMU_HWPT_GET_DIRTY_BITMAP: one bit per `pageSize` of `[iova, iova + length)`, as
    /// 64-bit words (bit 0 of word 0 is `iova`). Clears the dirty bits unless `clear` is false.
    public func dirtyBitmap(iova: UInt64, length: UInt64, pageSize: UInt64 = 4096,
                            clear: Bool = true) throws(IOMMUError) -> [UInt64] {
        let bits = length / max(pageSize, 1)
        var words = [UInt64](repeating: 0, count: Int(min((bits + 63) / 64, UInt64(Int.max))))
        try context.backend.readDirty(hwpt: id, iova: iova, length: length, pageSize: pageSize, clear: clear) { first, count in
            var b = first
            let end = first + count
            while b < end {
                words[Int(b / 64)] |= 1 << (b % 64)
                b += 1
            }
        }
        return words
    }

    /// IOMMU_DESTROY.
    public func destroy() throws(IOMMUError) { try context.backend.destroy(id) }
}

/// A device bound to a context (an iommufd DEVICE object).
public struct Device: Hashable, Sendable {
    public let context: IOMMUContext
    public let id: UInt32

    public static func == (a: Device, b: Device) -> Bool { a.context === b.context && a.id == b.id }
    public func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(context)); h.combine(id) }

    /// Attaches to an IOAS through an automatic domain (or replaces the current attachment).
    @discardableResult
    public func attach(to ioas: IOAS) throws(IOMMUError) -> HWPT {
        HWPT(context: context, id: try context.backend.attach(device: id, to: ioas.id))
    }

    /// Attaches to a HWPT (or replaces the current attachment atomically).
    public func attach(to hwpt: HWPT) throws(IOMMUError) {
        _ = try context.backend.attach(device: id, to: hwpt.id)
    }

    /// Detaches to the DMA-blocked state.
    public func detach() throws(IOMMUError) { try context.backend.detach(device: id) }

    /// IOMMU_GET_HW_INFO.
    public func hwInfo() throws(IOMMUError) -> HWInfo { try context.backend.hwInfo(device: id) }

    /// IOMMU_HWPT_ALLOC of a paging HWPT on `ioas` for this device's IOMMU.
    public func allocHWPT(on ioas: IOAS, flags: HWPTAllocFlags = []) throws(IOMMUError) -> HWPT {
        HWPT(context: context, id: try context.backend.allocHWPT(device: id, ioas: ioas.id, flags: flags))
    }

    /// Unbinds the device (closes its VFIO device file).
    public func unbind() throws(IOMMUError) { try context.backend.unbind(device: id) }
}
