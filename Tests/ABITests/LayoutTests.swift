// Layout tests: every struct's size and every field's offset and width, against numbers
// written here from the ABI (x86-64 / arm64 Linux, natural alignment, __aligned_u64 on 8).
// They are deliberately independent of the constants in Layouts.swift, so a wrong constant
// there fails here.

import Testing
import IOMMUABI

/// (name, offset, width) of every field, in order.
typealias Expected = [(String, Int, Int)]

func checkLayout(_ layout: ABIStructLayout, size: Int, _ expected: Expected,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(layout.size == size, "\(layout.name) size", sourceLocation: sourceLocation)
    let actual = layout.fields.map { ($0.name, $0.offset, $0.width) }
    #expect(actual.count == expected.count, "\(layout.name): \(actual.count) fields, expected \(expected.count)",
            sourceLocation: sourceLocation)
    for (a, e) in zip(actual, expected) {
        #expect(a.0 == e.0 && a.1 == e.1 && a.2 == e.2,
                "\(layout.name).\(e.0): got \(a.0)@\(a.1)/\(a.2), expected @\(e.1)/\(e.2)", sourceLocation: sourceLocation)
    }
    // Fields never overlap, are naturally aligned, and stay inside the struct.
    var end = 0
    for f in layout.fields {
        #expect(f.offset >= end, "\(layout.name).\(f.name) overlaps", sourceLocation: sourceLocation)
        #expect(f.offset % f.width == 0, "\(layout.name).\(f.name) misaligned", sourceLocation: sourceLocation)
        end = f.offset + f.width
    }
    #expect(end <= size, "\(layout.name) fields run past the struct", sourceLocation: sourceLocation)
}

@Suite("Struct layouts")
struct LayoutTests {
    @Test func destroy() {
        checkLayout(ABI.Destroy.layout, size: 8, [("size", 0, 4), ("id", 4, 4)])
        #expect(ABI.Destroy.id == 4)
    }

    @Test func ioasAlloc() {
        checkLayout(ABI.IOASAlloc.layout, size: 12, [("size", 0, 4), ("flags", 4, 4), ("out_ioas_id", 8, 4)])
        #expect(ABI.IOASAlloc.flags == 4 && ABI.IOASAlloc.outIOASID == 8)
    }

    @Test func iovaRange() {
        checkLayout(ABI.IOVARangeElement.layout, size: 16, [("start", 0, 8), ("last", 8, 8)])
    }

    @Test func allowIOVAs() {
        checkLayout(ABI.IOASAllowIOVAs.layout, size: 24, [
            ("size", 0, 4), ("ioas_id", 4, 4), ("num_iovas", 8, 4), ("__reserved", 12, 4), ("allowed_iovas", 16, 8),
        ])
        #expect(ABI.IOASAllowIOVAs.ioasID == 4 && ABI.IOASAllowIOVAs.numIOVAs == 8)
        #expect(ABI.IOASAllowIOVAs.reserved == 12 && ABI.IOASAllowIOVAs.allowedIOVAs == 16)
    }

    @Test func copy() {
        checkLayout(ABI.IOASCopy.layout, size: 40, [
            ("size", 0, 4), ("flags", 4, 4), ("dst_ioas_id", 8, 4), ("src_ioas_id", 12, 4),
            ("length", 16, 8), ("dst_iova", 24, 8), ("src_iova", 32, 8),
        ])
        #expect(ABI.IOASCopy.dstIOASID == 8 && ABI.IOASCopy.srcIOASID == 12 && ABI.IOASCopy.length == 16)
        #expect(ABI.IOASCopy.dstIOVA == 24 && ABI.IOASCopy.srcIOVA == 32)
    }

    @Test func iovaRanges() {
        checkLayout(ABI.IOASIOVARanges.layout, size: 32, [
            ("size", 0, 4), ("ioas_id", 4, 4), ("num_iovas", 8, 4), ("__reserved", 12, 4),
            ("allowed_iovas", 16, 8), ("out_iova_alignment", 24, 8),
        ])
        #expect(ABI.IOASIOVARanges.outIOVAAlignment == 24)
    }

    @Test func map() {
        checkLayout(ABI.IOASMap.layout, size: 40, [
            ("size", 0, 4), ("flags", 4, 4), ("ioas_id", 8, 4), ("__reserved", 12, 4),
            ("user_va", 16, 8), ("length", 24, 8), ("iova", 32, 8),
        ])
        #expect(ABI.IOASMap.flags == 4 && ABI.IOASMap.ioasID == 8 && ABI.IOASMap.reserved == 12)
        #expect(ABI.IOASMap.userVA == 16 && ABI.IOASMap.length == 24 && ABI.IOASMap.iova == 32)
    }

    @Test func mapFile() {
        checkLayout(ABI.IOASMapFile.layout, size: 40, [
            ("size", 0, 4), ("flags", 4, 4), ("ioas_id", 8, 4), ("fd", 12, 4),
            ("start", 16, 8), ("length", 24, 8), ("iova", 32, 8),
        ])
        #expect(ABI.IOASMapFile.fd == 12 && ABI.IOASMapFile.start == 16 && ABI.IOASMapFile.iova == 32)
    }

    @Test func unmap() {
        checkLayout(ABI.IOASUnmap.layout, size: 24, [("size", 0, 4), ("ioas_id", 4, 4), ("iova", 8, 8), ("length", 16, 8)])
        #expect(ABI.IOASUnmap.iova == 8 && ABI.IOASUnmap.length == 16)
    }

    @Test func option() {
        checkLayout(ABI.Option.layout, size: 24, [
            ("size", 0, 4), ("option_id", 4, 4), ("op", 8, 2), ("__reserved", 10, 2), ("object_id", 12, 4), ("val64", 16, 8),
        ])
        #expect(ABI.Option.op == 8 && ABI.Option.reserved == 10 && ABI.Option.objectID == 12 && ABI.Option.val64 == 16)
    }

    @Test func vfioIOAS() {
        checkLayout(ABI.VFIOIOAS.layout, size: 12, [("size", 0, 4), ("ioas_id", 4, 4), ("op", 8, 2), ("__reserved", 10, 2)])
    }

    @Test func hwptAlloc() {
        checkLayout(ABI.HWPTAlloc.layout, size: 48, [
            ("size", 0, 4), ("flags", 4, 4), ("dev_id", 8, 4), ("pt_id", 12, 4), ("out_hwpt_id", 16, 4),
            ("__reserved", 20, 4), ("data_type", 24, 4), ("data_len", 28, 4), ("data_uptr", 32, 8),
            ("fault_id", 40, 4), ("__reserved2", 44, 4),
        ])
        #expect(ABI.HWPTAlloc.faultID == 40 && ABI.HWPTAlloc.dataUptr == 32 && ABI.HWPTAlloc.outHWPTID == 16)
    }

    @Test func hwInfo() {
        checkLayout(ABI.HWInfo.layout, size: 40, [
            ("size", 0, 4), ("flags", 4, 4), ("dev_id", 8, 4), ("data_len", 12, 4), ("data_uptr", 16, 8),
            ("in_data_type", 24, 4), ("out_max_pasid_log2", 28, 1),
            ("__reserved[0]", 29, 1), ("__reserved[1]", 30, 1), ("__reserved[2]", 31, 1),
            ("out_capabilities", 32, 8),
        ])
        #expect(ABI.HWInfo.outDataType == 24 && ABI.HWInfo.inDataType == 24)
        #expect(ABI.HWInfo.outMaxPASIDLog2 == 28 && ABI.HWInfo.reserved == 29 && ABI.HWInfo.outCapabilities == 32)
    }

    @Test func dirtyTracking() {
        checkLayout(ABI.HWPTSetDirtyTracking.layout, size: 16, [
            ("size", 0, 4), ("flags", 4, 4), ("hwpt_id", 8, 4), ("__reserved", 12, 4),
        ])
        checkLayout(ABI.HWPTGetDirtyBitmap.layout, size: 48, [
            ("size", 0, 4), ("hwpt_id", 4, 4), ("flags", 8, 4), ("__reserved", 12, 4),
            ("iova", 16, 8), ("length", 24, 8), ("page_size", 32, 8), ("data", 40, 8),
        ])
    }

    @Test func invalidate() {
        checkLayout(ABI.HWPTInvalidate.layout, size: 32, [
            ("size", 0, 4), ("hwpt_id", 4, 4), ("data_uptr", 8, 8), ("data_type", 16, 4),
            ("entry_len", 20, 4), ("entry_num", 24, 4), ("__reserved", 28, 4),
        ])
    }

    @Test func newerObjects() {
        checkLayout(ABI.FaultAlloc.layout, size: 16, [
            ("size", 0, 4), ("flags", 4, 4), ("out_fault_id", 8, 4), ("out_fault_fd", 12, 4),
        ])
        checkLayout(ABI.VIOMMUAlloc.layout, size: 40, [
            ("size", 0, 4), ("flags", 4, 4), ("type", 8, 4), ("dev_id", 12, 4), ("hwpt_id", 16, 4),
            ("out_viommu_id", 20, 4), ("data_len", 24, 4), ("__reserved", 28, 4), ("data_uptr", 32, 8),
        ])
        checkLayout(ABI.VDeviceAlloc.layout, size: 24, [
            ("size", 0, 4), ("viommu_id", 4, 4), ("dev_id", 8, 4), ("out_vdevice_id", 12, 4), ("virt_id", 16, 8),
        ])
        checkLayout(ABI.IOASChangeProcess.layout, size: 8, [("size", 0, 4), ("__reserved", 4, 4)])
        checkLayout(ABI.VEventQAlloc.layout, size: 32, [
            ("size", 0, 4), ("flags", 4, 4), ("viommu_id", 8, 4), ("type", 12, 4), ("veventq_depth", 16, 4),
            ("out_veventq_id", 20, 4), ("out_veventq_fd", 24, 4), ("__reserved", 28, 4),
        ])
        checkLayout(ABI.HWQueueAlloc.layout, size: 40, [
            ("size", 0, 4), ("flags", 4, 4), ("viommu_id", 8, 4), ("type", 12, 4), ("index", 16, 4),
            ("out_hw_queue_id", 20, 4), ("nesting_parent_iova", 24, 8), ("length", 32, 8),
        ])
    }

    @Test func driverData() {
        checkLayout(ABI.HWInfoVTd.layout, size: 24, [("flags", 0, 4), ("__reserved", 4, 4), ("cap_reg", 8, 8), ("ecap_reg", 16, 8)])
        checkLayout(ABI.HWInfoARMSMMUv3.layout, size: 40, [
            ("flags", 0, 4), ("__reserved", 4, 4), ("idr[0]", 8, 4), ("idr[1]", 12, 4), ("idr[2]", 16, 4),
            ("idr[3]", 20, 4), ("idr[4]", 24, 4), ("idr[5]", 28, 4), ("iidr", 32, 4), ("aidr", 36, 4),
        ])
        checkLayout(ABI.HWInfoSelftest.layout, size: 8, [("flags", 0, 4), ("test_reg", 4, 4)])
    }

    @Test func faultQueueRecords() {
        checkLayout(ABI.HWPTPgFault.layout, size: 40, [
            ("flags", 0, 4), ("dev_id", 4, 4), ("pasid", 8, 4), ("grpid", 12, 4), ("perm", 16, 4),
            ("__reserved", 20, 4), ("addr", 24, 8), ("length", 32, 4), ("cookie", 36, 4),
        ])
        #expect(ABI.HWPTPgFault.addr == 24 && ABI.HWPTPgFault.cookie == 36)
        checkLayout(ABI.HWPTPageResponse.layout, size: 8, [("cookie", 0, 4), ("code", 4, 4)])
        #expect(ABI.HWPTPageResponse.cookie == 0 && ABI.HWPTPageResponse.code == 4)
    }

    @Test func viommuDriverData() {
        checkLayout(ABI.VIOMMUSelftest.layout, size: 24,
                    [("in_data", 0, 4), ("out_data", 4, 4), ("out_mmap_offset", 8, 8), ("out_mmap_length", 16, 8)])
        #expect(ABI.VIOMMUSelftest.minSize == 8)
        checkLayout(ABI.VIOMMUInvalidateSelftest.layout, size: 12, [("flags", 0, 4), ("vdev_id", 4, 4), ("cache_id", 8, 4)])
        checkLayout(ABI.VEventHeader.layout, size: 8, [("flags", 0, 4), ("sequence", 4, 4)])
        checkLayout(ABI.VIOMMUEventSelftest.layout, size: 4, [("virt_id", 0, 4)])
        #expect(IOMMUConstants.viommuTypeSelftest == 0xdead_beef && IOMMUConstants.veventqTypeSelftest == 0xbeef_beef)
        #expect(IOMMUConstants.viommuInvalidateDataSelftest == 0xdead_beef)
        #expect(ABI.TestCmd.TriggerVEvent.devID == 16 && ABI.TestCmd.CheckDevCache.cache == 20)
    }

    @Test func selftestNestingData() {
        checkLayout(ABI.HWPTSelftest.layout, size: 4, [("iotlb", 0, 4)])
        #expect(ABI.HWPTSelftest.minSize == 4)
        checkLayout(ABI.HWPTInvalidateSelftest.layout, size: 8, [("flags", 0, 4), ("iotlb_id", 4, 4)])
        #expect(ABI.HWPTInvalidateSelftest.minSize == 8 && ABI.HWPTInvalidateSelftest.iotlbID == 4)
        #expect(IOMMUConstants.hwptDataSelftest == 0xdead && IOMMUConstants.invalidateDataSelftest == 0xdead_beef)
        #expect(ABI.TestCmd.CheckIOTLB.id == 16 && ABI.TestCmd.CheckIOTLB.iotlb == 20)
        #expect(ABI.TestCmd.TriggerIOPF.devID == 16 && ABI.TestCmd.TriggerIOPF.pasid == 20)
        #expect(ABI.TestCmd.TriggerIOPF.grpid == 24 && ABI.TestCmd.TriggerIOPF.perm == 28)
    }

    @Test func testCmd() {
        checkLayout(ABI.TestCmd.layout, size: 72, [
            ("size", 0, 4), ("op", 4, 4), ("id", 8, 4), ("__reserved", 12, 4), ("last", 64, 4),
        ])
        #expect(ABI.TestCmd.minSize == 68)
        // The union starts at 16; its widest member (dirty) ends at 64.
        #expect(ABI.TestCmd.union == 16)
        #expect(ABI.TestCmd.Dirty.flags == 16 && ABI.TestCmd.Dirty.iova == 24 && ABI.TestCmd.Dirty.length == 32)
        #expect(ABI.TestCmd.Dirty.pageSize == 40 && ABI.TestCmd.Dirty.uptr == 48 && ABI.TestCmd.Dirty.outNrDirty == 56)
        #expect(ABI.TestCmd.AccessPages.flags == 16 && ABI.TestCmd.AccessPages.outAccessPagesID == 20)
        #expect(ABI.TestCmd.AccessPages.iova == 24 && ABI.TestCmd.AccessPages.length == 32 && ABI.TestCmd.AccessPages.uptr == 40)
        #expect(ABI.TestCmd.AccessRW.iova == 16 && ABI.TestCmd.AccessRW.flags == 40)
        #expect(ABI.TestCmd.CheckRefs.length == 16 && ABI.TestCmd.CheckRefs.uptr == 24 && ABI.TestCmd.CheckRefs.refs == 32)
        #expect(ABI.TestCmd.MockDomainFlags.devFlags == 28 && ABI.TestCmd.TriggerIOPF.addr == 32)
        #expect(ABI.TestCmd.AddReserved.start == 16 && ABI.TestCmd.AddReserved.length == 24)
        #expect(ABI.TestCmd.CreateAccess.outAccessFD == 16 && ABI.TestCmd.CreateAccess.flags == 20)
    }

    @Test func vfioType1() {
        checkLayout(ABI.VFIOType1Info.layout, size: 24, [
            ("argsz", 0, 4), ("flags", 4, 4), ("iova_pgsizes", 8, 8), ("cap_offset", 16, 4), ("pad", 20, 4),
        ])
        #expect(ABI.VFIOType1Info.minSize == 16)
        checkLayout(ABI.VFIOCapHeader.layout, size: 8, [("id", 0, 2), ("version", 2, 2), ("next", 4, 4)])
        checkLayout(ABI.VFIOCapIOVARange.layout, size: 16, [
            ("header.id", 0, 2), ("header.version", 2, 2), ("header.next", 4, 4), ("nr_iovas", 8, 4), ("reserved", 12, 4),
        ])
        #expect(ABI.VFIOCapIOVARange.ranges == 16 && ABI.VFIOCapIOVARange.rangeSize == 16)
        #expect(ABI.VFIOCapIOVARange.id == 1 && ABI.VFIOCapIOVARange.version == 1)
        checkLayout(ABI.VFIOCapDMAAvail.layout, size: 12, [
            ("header.id", 0, 2), ("header.version", 2, 2), ("header.next", 4, 4), ("avail", 8, 4),
        ])
        #expect(ABI.VFIOCapDMAAvail.id == 3)
        checkLayout(ABI.VFIODMAMap.layout, size: 32, [
            ("argsz", 0, 4), ("flags", 4, 4), ("vaddr", 8, 8), ("iova", 16, 8), ("size", 24, 8),
        ])
        checkLayout(ABI.VFIODMAUnmap.layout, size: 24, [("argsz", 0, 4), ("flags", 4, 4), ("iova", 8, 8), ("size", 16, 8)])
    }

    @Test func byteAccessIsLittleEndian() {
        var raw = [UInt8](repeating: 0, count: 16)
        raw.withUnsafeMutableBytes { buffer in
            let b = StructBytes(buffer.baseAddress!)
            b.set64(1, 0x0102_0304_0506_0708)      // unaligned on purpose
            b.set16(12, 0xa1b2)
        }
        #expect(raw[1] == 0x08 && raw[8] == 0x01 && raw[12] == 0xb2 && raw[13] == 0xa1)
        raw.withUnsafeMutableBytes { buffer in
            let b = StructBytes(buffer.baseAddress!)
            #expect(b.u64(1) == 0x0102_0304_0506_0708 && b.u32(1) == 0x0506_0708 && b.u16(12) == 0xa1b2)
        }
    }
}

/// The dispatch table against the uAPI: number, minimum (offsetofend of the last mandatory
/// field) and full size.
@Suite("Dispatch table")
struct TableTests {
    static let expected: [(UInt32, String, Int, Int)] = [
        (0x3b80, "IOMMU_DESTROY", 8, 8),
        (0x3b81, "IOMMU_IOAS_ALLOC", 12, 12),
        (0x3b82, "IOMMU_IOAS_ALLOW_IOVAS", 24, 24),
        (0x3b83, "IOMMU_IOAS_COPY", 40, 40),
        (0x3b84, "IOMMU_IOAS_IOVA_RANGES", 32, 32),
        (0x3b85, "IOMMU_IOAS_MAP", 40, 40),
        (0x3b86, "IOMMU_IOAS_UNMAP", 24, 24),
        (0x3b87, "IOMMU_OPTION", 24, 24),
        (0x3b88, "IOMMU_VFIO_IOAS", 12, 12),
        (0x3b89, "IOMMU_HWPT_ALLOC", 24, 48),
        (0x3b8a, "IOMMU_GET_HW_INFO", 32, 40),
        (0x3b8b, "IOMMU_HWPT_SET_DIRTY_TRACKING", 16, 16),
        (0x3b8c, "IOMMU_HWPT_GET_DIRTY_BITMAP", 48, 48),
        (0x3b8d, "IOMMU_HWPT_INVALIDATE", 32, 32),
        (0x3b8e, "IOMMU_FAULT_QUEUE_ALLOC", 16, 16),
        (0x3b8f, "IOMMU_IOAS_MAP_FILE", 40, 40),
        (0x3b90, "IOMMU_VIOMMU_ALLOC", 24, 40),
        (0x3b91, "IOMMU_VDEVICE_ALLOC", 24, 24),
        (0x3b92, "IOMMU_IOAS_CHANGE_PROCESS", 8, 8),
        (0x3b93, "IOMMU_VEVENTQ_ALLOC", 28, 32),
        (0x3b94, "IOMMU_HW_QUEUE_ALLOC", 40, 40),
        (0x3ba0, "IOMMU_TEST_CMD", 68, 72),
    ]

    @Test func everyIoctl() {
        let table = IOMMUIoctls.table
        #expect(table.count == Self.expected.count)
        for (row, e) in zip(table, Self.expected) {
            #expect(row.request == e.0 && row.name == e.1 && row.minSize == e.2 && row.size == e.3,
                    "\(row.name) 0x\(String(row.request, radix: 16)) min \(row.minSize) size \(row.size); expected \(e)")
        }
    }
}
