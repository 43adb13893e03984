// The seam between the typed API and whatever implements /dev/iommu.
//
// Every call is expressed in iommufd's own terms (object IDs, IOVAs, flags), so a back end is
// a thin translation: the emulator's engine context conforms directly; a kernel back end will
// issue the ioctls on a real /dev/iommu fd and needs nothing else from this module.

@_exported public import UIOMMUBase
@_exported public import ProcessMemory
@_exported public import IOMMUHardware
@_exported public import IOMMUEngine

/// A device to bind, named the way the back end can find it.
public enum DeviceSelector: Hashable, Sendable, CustomStringConvertible {
    /// The machine's name for the device ("nvme0").
    case name(String)
    /// Its PCI address.
    case address(PCIAddress)
    public var description: String {
        switch self {
        case .name(let n): return n
        case .address(let a): return a.description
        }
    }
}

/// What implements iommufd for an `IOMMUContext`.
public protocol IOMMUBackend: AnyObject, Sendable {
    func allocIOAS() throws(IOMMUError) -> UInt32
    func destroy(_ id: UInt32) throws(IOMMUError)
    func map(ioas: UInt32, userVA: UInt64, length: UInt64, iova: UInt64?, permissions: IOPermissions) throws(IOMMUError) -> UInt64
    func unmap(ioas: UInt32, iova: UInt64, length: UInt64) throws(IOMMUError) -> UInt64
    func copy(from: UInt32, srcIOVA: UInt64, length: UInt64, to: UInt32, dstIOVA: UInt64?, permissions: IOPermissions) throws(IOMMUError) -> UInt64
    func allowIOVAs(ioas: UInt32, _ ranges: [IOVARange]) throws(IOMMUError)
    func iovaRanges(ioas: UInt32) throws(IOMMUError) -> IOVARanges
    func hugePages(ioas: UInt32) throws(IOMMUError) -> Bool
    func setHugePages(ioas: UInt32, _ enabled: Bool) throws(IOMMUError)
    func bindDevice(_ selector: DeviceSelector) throws(IOMMUError) -> UInt32
    func unbind(device: UInt32) throws(IOMMUError)
    func attach(device: UInt32, to pt: UInt32) throws(IOMMUError) -> UInt32
    func detach(device: UInt32) throws(IOMMUError)
    func hwInfo(device: UInt32) throws(IOMMUError) -> HWInfo
    func allocHWPT(device: UInt32, ioas: UInt32, flags: HWPTAllocFlags) throws(IOMMUError) -> UInt32
    func setDirtyTracking(hwpt: UInt32, enabled: Bool) throws(IOMMUError)
    func readDirty(hwpt: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64, clear: Bool,
                   setBits: (UInt64, UInt64) -> Void) throws(IOMMUError)
    func close()
}

extension IOMMUFDContext: IOMMUBackend {
    public func bindDevice(_ selector: DeviceSelector) throws(IOMMUError) -> UInt32 {
        let found: PlatformDevice?
        switch selector {
        case .name(let n): found = platform.device(named: n)
        case .address(let a): found = platform.device(at: a)
        }
        guard let device = found else { throw IOMMUError(.ENODEV, "no device \(selector)", operation: "BIND") }
        return try bind(device)
    }
}
