// How a kernel would log a DMA fault (dmesg), for tools that show faults as they happen.

extension DMAFault {
    /// The line Linux's driver for `unit` prints for this fault, e.g. for VT-d:
    ///   DMAR: [DMA Read NO_PASID] Request device [00:10.0] fault addr 0x300000 [fault reason 0x06] PTE Read access is not set
    public func kernelLogLine(unit: IOMMUUnitSpec) -> String {
        let device = String(requester.description.dropFirst(5))   // "00:10.0"
        let address = "0x" + String(iova, radix: 16)
        switch unit.kind {
        case .intelVTd:
            let (code, text): (Int, String) = switch reason {
            case .blocked: (0x02, "Present bit in context entry is clear")
            case .outsideAperture: (0x04, "Access beyond MGAW")
            case .notPresent, .permission, .memoryError:
                write ? (0x05, "PTE Write access is not set") : (0x06, "PTE Read access is not set")
            }
            let pasidText = pasid.map { "PASID \($0)" } ?? "NO_PASID"
            let hex = String(code, radix: 16)
            return "DMAR: [DMA \(write ? "Write" : "Read") \(pasidText)] Request device [\(device)] fault addr \(address) "
                + "[fault reason 0x\(hex.count < 2 ? "0" + hex : hex)] \(text)"
        case .amdVi:
            return "AMD-Vi: Event logged [IO_PAGE_FAULT domain=? address=\(address) flags=0x00\(write ? "20" : "00")] device \(device)"
        case .armSMMUv3, .selftestMock:
            return "\(unit.name): \(write ? "write" : "read") fault at \(address) from \(device): \(reason.rawValue)"
        }
    }
}
