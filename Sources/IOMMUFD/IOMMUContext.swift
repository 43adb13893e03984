/// One iommufd: the owner of I/O address spaces, page tables and bound devices.
///
/// Create one over the emulator with ``IOMMUContext/emulated(platform:memory:pinPolicy:)``.
/// Every method throws ``IOMMUError``, which carries the Linux errno the kernel would return,
/// the operation, and a reason. Handles (``IOAS``, ``HWPT``, ``Device``) are small values that
/// name an object of this context by its ID; they stay valid until the object is destroyed.
///
/// ```swift
/// let context = IOMMUContext.emulated(platform: Platform(machine: .default, physicalMemory: memory),
///                                     memory: memory)
/// let ioas = try context.makeIOAS()
/// let iova = try ioas.map(userVA: va, length: 1 << 20, permissions: [.read, .write])
/// let device = try context.bind(.name("nvme0"))
/// let hwpt = try device.attach(to: ioas)
/// ```
public final class IOMMUContext: Sendable {
    public let backend: any IOMMUBackend

    public init(backend: any IOMMUBackend) { self.backend = backend }

    /// A context on the emulator: `memory` is the caller's memory (user VAs refer to it).
    public static func emulated(platform: Platform, memory: any PinnableMemory,
                                pinPolicy: PinPolicy = PinPolicy()) -> IOMMUContext {
        IOMMUContext(backend: IOMMUFDContext(platform: platform, memory: memory, pinPolicy: pinPolicy))
    }

    /// The engine behind an emulated context, for inspection (nil for other back ends).
    public var engine: IOMMUFDContext? { backend as? IOMMUFDContext }

    /// IOMMU_IOAS_ALLOC.
    public func makeIOAS() throws(IOMMUError) -> IOAS {
        IOAS(context: self, id: try backend.allocIOAS())
    }

    /// Binds a device (VFIO_DEVICE_BIND_IOMMUFD): its group becomes DMA-blocked and owned by
    /// this context. EPERM if the group is not viable, ENODEV if there is no such device.
    public func bind(_ device: DeviceSelector) throws(IOMMUError) -> Device {
        Device(context: self, id: try backend.bindDevice(device))
    }

    /// IOMMU_DESTROY of any object by ID.
    public func destroy(id: UInt32) throws(IOMMUError) { try backend.destroy(id) }

    /// Closes the context: everything it owns is destroyed and every pin released.
    public func close() { backend.close() }
}
