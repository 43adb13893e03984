// The VFIO device and group struct layouts, pinned to the documented ABI.

import Testing
import IOMMUABI

@Suite("VFIO layouts")
struct VFIOLayoutTests {
    func offsets(_ layout: ABIStructLayout) -> [String: Int] {
        Dictionary(uniqueKeysWithValues: layout.fields.map { ($0.name, $0.offset) })
    }

    @Test func requestNumbers() {
        typealias R = VFIODeviceRequest
        // _IO(';', 100 + n)
        let expected: [(UInt32, Int)] = [
            (R.groupGetStatus, 3), (R.groupSetContainer, 4), (R.groupUnsetContainer, 5), (R.groupGetDeviceFD, 6),
            (R.getInfo, 7), (R.getRegionInfo, 8), (R.getIRQInfo, 9), (R.setIRQs, 10), (R.reset, 11),
            (R.getPCIHotResetInfo, 12), (R.pciHotReset, 13), (R.ioeventfd, 16), (R.feature, 17),
            (R.bindIOMMUFD, 18), (R.attachIOMMUFDPT, 19), (R.detachIOMMUFDPT, 20),
        ]
        for (request, n) in expected { #expect(request == 0x3b00 | UInt32(100 + n)) }
        #expect(VFIOPCI.offset(ofRegion: 7) == 0x700_0000_0000)
        #expect(VFIOPCI.region(ofOffset: 0x500_0000_1234) == 5)
    }

    @Test func groupStatus() {
        typealias L = ABI.VFIOGroupStatus
        #expect(L.size == 8 && L.minSize == 8)
        #expect(offsets(L.layout) == ["argsz": 0, "flags": 4])
        #expect(L.flagViable == 1 && L.flagContainerSet == 2)
    }

    @Test func deviceInfo() {
        typealias L = ABI.VFIODeviceInfo
        #expect(L.size == 24 && L.minSize == 16)
        #expect(offsets(L.layout) == ["argsz": 0, "flags": 4, "num_regions": 8, "num_irqs": 12, "cap_offset": 16])
        #expect(L.flagReset == 1 && L.flagPCI == 2 && L.flagCaps == 0x80)
    }

    @Test func regionInfo() {
        typealias L = ABI.VFIORegionInfo
        #expect(L.size == 32 && L.minSize == 32)
        #expect(offsets(L.layout) == ["argsz": 0, "flags": 4, "index": 8, "cap_offset": 12, "size": 16, "offset": 24])
        #expect(L.layout.field("size")?.width == 8 && L.layout.field("offset")?.width == 8)
        #expect(L.flagRead == 1 && L.flagWrite == 2 && L.flagMmap == 4 && L.flagCaps == 8)
        #expect(ABI.VFIORegionCap.msixMappableID == 3 && ABI.VFIORegionCap.headerSize == 8)
    }

    @Test func irqInfoAndSet() {
        #expect(ABI.VFIOIRQInfo.size == 16 && ABI.VFIOIRQInfo.minSize == 16)
        #expect(offsets(ABI.VFIOIRQInfo.layout) == ["argsz": 0, "flags": 4, "index": 8, "count": 12])
        typealias S = ABI.VFIOIRQSet
        #expect(S.size == 20 && S.minSize == 20 && S.data == 20)
        #expect(offsets(S.layout) == ["argsz": 0, "flags": 4, "index": 8, "start": 12, "count": 16])
        #expect(S.dataNone == 1 && S.dataBool == 2 && S.dataEventfd == 4)
        #expect(S.actionMask == 8 && S.actionUnmask == 16 && S.actionTrigger == 32)
        #expect(VFIOPCI.intxIRQIndex == 0 && VFIOPCI.msiIRQIndex == 1 && VFIOPCI.msixIRQIndex == 2
                && VFIOPCI.errIRQIndex == 3 && VFIOPCI.reqIRQIndex == 4 && VFIOPCI.numIRQs == 5)
    }

    @Test func iommufdBindAttachDetach() {
        typealias B = ABI.VFIOBindIOMMUFD
        #expect(B.size == 24 && B.minSize == 16)
        #expect(offsets(B.layout) == ["argsz": 0, "flags": 4, "iommufd": 8, "out_devid": 12])
        #expect(B.tokenUUIDPtr == 16)
        typealias A = ABI.VFIOAttachIOMMUFDPT
        #expect(A.size == 16 && A.minSize == 12 && A.pasid == 12)
        #expect(offsets(A.layout) == ["argsz": 0, "flags": 4, "pt_id": 8])
        typealias D = ABI.VFIODetachIOMMUFDPT
        #expect(D.size == 12 && D.minSize == 8 && D.pasid == 8)
        #expect(ABI.VFIODeviceFeature.size == 8 && ABI.VFIODeviceFeature.probe == 1 << 18)
    }
}
