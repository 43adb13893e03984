// The driver data of IOMMU_GET_HW_INFO, per IOMMU kind: what each kernel driver's hw_info
// callback reports, made from the unit's description.
//
//  - Intel VT-d (type 1): struct iommu_hw_info_vtd {flags, cap_reg, ecap_reg}. The registers
//    are synthesised from the unit spec with the VT-d architecture's bit positions (Capability
//    Register: ND, SAGAW, MGAW, FRO, SLLPS, PSI, NFR, MAMV, DWD/DRD; Extended Capability
//    Register: C, QI, DT, IR, EIM, PT, SC, IRO, MHMV, NEST, PSS/PASID, SMTS, SLTS/FLTS,
//    SLADS/SSADS, SMPWCS), so a VMM that decodes them sees what the unit can do: SC set iff the
//    unit forces snooping, SSADS iff it tracks dirty bits, PASID/PSS from its PASID width.
//  - ARM SMMUv3 (type 2): struct iommu_hw_info_arm_smmuv3 {flags, idr[6], iidr, aidr}, with
//    IDR0/IDR5 synthesised (stage 1 and 2, AArch64 tables, COHACC, HTTU, OAS, 4K granule).
//  - The kernel selftest's mock (type 0xfeedbeef): {flags 0, test_reg 0xdeadbeef}.
//  - AMD-Vi: the v6.17 AMD driver has no hw_info callback: type DEFAULT, no data (an input
//    type is then ignored, as the kernel ignores it without a callback).
// A driver with a callback answers EOPNOTSUPP when asked (FLAG_INPUT_TYPE) for a type other
// than DEFAULT or its own.

import IOMMUHardware
import IOMMUEngine

enum HWInfoData {
    /// The largest driver struct (iommu_hw_info_arm_smmuv3).
    static let maxSize = 40

    /// Fills `data` for `info`; returns (type, length), or nil for EOPNOTSUPP.
    static func fill(_ data: StructBytes, for info: HWInfo, requested: UInt32) -> (UInt32, Int)? {
        data.base.initializeMemory(as: UInt8.self, repeating: 0, count: maxSize)
        let unit = info.unit
        switch unit.kind {
        case .intelVTd:
            guard requested == IOMMUConstants.hwInfoTypeDefault || requested == IOMMUConstants.hwInfoTypeIntelVTd else { return nil }
            data.set32(ABI.HWInfoVTd.flags, 0)
            data.set64(ABI.HWInfoVTd.capReg, vtdCapabilityRegister(unit))
            data.set64(ABI.HWInfoVTd.ecapReg, vtdExtendedCapabilityRegister(unit))
            return (IOMMUConstants.hwInfoTypeIntelVTd, ABI.HWInfoVTd.size)
        case .armSMMUv3:
            guard requested == IOMMUConstants.hwInfoTypeDefault || requested == IOMMUConstants.hwInfoTypeARMSMMUv3 else { return nil }
            let idr = smmuIDRs(unit)
            for (i, value) in idr.enumerated() { data.set32(ABI.HWInfoARMSMMUv3.idr + 4 * i, value) }
            data.set32(ABI.HWInfoARMSMMUv3.iidr, 0x0000_043b)   // implementer 0x43b (Arm), rev 0
            data.set32(ABI.HWInfoARMSMMUv3.aidr, 0x1)            // SMMUv3.1
            return (IOMMUConstants.hwInfoTypeARMSMMUv3, ABI.HWInfoARMSMMUv3.size)
        case .selftestMock:
            guard requested == IOMMUConstants.hwInfoTypeDefault || requested == IOMMUConstants.hwInfoTypeSelftest else { return nil }
            data.set32(ABI.HWInfoSelftest.flags, 0)
            data.set32(ABI.HWInfoSelftest.testReg, ABI.HWInfoSelftest.testRegValue)
            return (IOMMUConstants.hwInfoTypeSelftest, ABI.HWInfoSelftest.size)
        case .amdVi:
            return (IOMMUConstants.hwInfoTypeDefault, 0)
        }
    }

    /// Input address width the unit translates (bits).
    static func addressWidth(_ unit: IOMMUUnitSpec) -> Int {
        max(12, 64 - unit.aperture.last.leadingZeroBitCount)
    }

    /// VT-d Capability Register.
    static func vtdCapabilityRegister(_ unit: IOMMUUnitSpec) -> UInt64 {
        let width = addressWidth(unit)
        var cap: UInt64 = 6                                   // ND: 64K domains
        // SAGAW: 39-bit 3-level (bit 1), 48-bit 4-level (bit 2), 57-bit 5-level (bit 3).
        let sagaw: UInt64 = width <= 39 ? 0b0010 : width <= 48 ? 0b0110 : 0b1110
        cap |= sagaw << 8
        cap |= UInt64(width - 1) << 16                        // MGAW
        cap |= UInt64(1) << 22                                // ZLR
        cap |= UInt64(0x400 / 16) << 24                       // FRO: fault records at 0x400
        if unit.pageSizes & (1 << 21) != 0 { cap |= UInt64(1) << 34 }   // SLLPS: 2 MiB
        if unit.pageSizes & (1 << 30) != 0 { cap |= UInt64(1) << 35 }   // SLLPS: 1 GiB
        cap |= UInt64(1) << 39                                // PSI
        cap |= UInt64(7) << 40                                // NFR: 8 fault records
        cap |= UInt64(0x3f) << 48                             // MAMV
        cap |= UInt64(1) << 54 | UInt64(1) << 55              // DWD, DRD
        if unit.pageSizes & (1 << 30) != 0 { cap |= UInt64(1) << 56 }   // FL1GP
        return cap
    }

    /// VT-d Extended Capability Register.
    static func vtdExtendedCapabilityRegister(_ unit: IOMMUUnitSpec) -> UInt64 {
        var ecap: UInt64 = 0
        ecap |= 1 << 0                                        // C: page-walk coherency
        ecap |= 1 << 1                                        // QI
        ecap |= 1 << 2                                        // DT: device TLBs
        ecap |= 1 << 3 | 1 << 4                               // IR, EIM
        ecap |= 1 << 6                                        // PT
        if unit.enforcesCacheCoherency { ecap |= 1 << 7 }     // SC: snoop control
        ecap |= UInt64(0x500 / 16) << 8                       // IRO: IOTLB registers at 0x500
        ecap |= UInt64(0xf) << 20                             // MHMV
        if unit.nesting { ecap |= 1 << 26 }                   // NEST
        if unit.pasidWidth > 0 {
            ecap |= UInt64(unit.pasidWidth - 1) << 35         // PSS
            ecap |= 1 << 40                                   // PASID
            ecap |= 1 << 29                                   // PRS
        }
        ecap |= 1 << 43                                       // SMTS: scalable mode
        if unit.dirtyTracking { ecap |= 1 << 45 }             // SLADS/SSADS: second-stage A/D
        ecap |= 1 << 46                                       // SLTS
        if unit.nesting { ecap |= 1 << 47 }                   // FLTS
        ecap |= 1 << 48                                       // SMPWCS
        return ecap
    }

    /// SMMUv3 IDR0…IDR5.
    static func smmuIDRs(_ unit: IOMMUUnitSpec) -> [UInt32] {
        var idr0: UInt32 = 0
        idr0 |= 1 << 0 | 1 << 1                               // S2P, S1P
        idr0 |= 2 << 2                                        // TTF: AArch64
        if unit.enforcesCacheCoherency { idr0 |= 1 << 4 }     // COHACC
        if unit.dirtyTracking { idr0 |= 2 << 6 }              // HTTU: access and dirty
        idr0 |= 1 << 12                                       // ASID16
        if unit.pasidWidth > 0 { idr0 |= 1 << 16 }            // PRI
        idr0 |= 1 << 18                                       // VMID16
        idr0 |= 1 << 27                                       // ST_LEVEL: 2-level stream table
        let idr1: UInt32 = UInt32(min(unit.pasidWidth, 20)) << 6 | 16   // SSIDSIZE, SIDSIZE
        let width = addressWidth(unit)
        let oas: UInt32 = width <= 32 ? 0 : width <= 36 ? 1 : width <= 40 ? 2 : width <= 42 ? 3 : width <= 44 ? 4 : 5
        var idr5: UInt32 = oas | 1 << 4                        // OAS, GRAN4K
        if unit.pageSizes & (1 << 16) != 0 { idr5 |= 1 << 6 } // GRAN64K
        return [idr0, idr1, 0, 0, 0, idr5]
    }
}
