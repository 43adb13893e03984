// swift-tools-version: 6.1
//
// uiommufd — the Linux iommufd system (/dev/iommu) in user space.
//
// Layers (dependencies point down only; see README "Architecture"):
//   uiommufd (CLI) → UIOMMUCommands → IOMMUFD (public Swift API) → IOMMUEngine
//   → IOMMUHardware → ProcessMemory → UIOMMUBase
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "uiommufd",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "IOMMUFD", targets: ["IOMMUFD"]),
        // The ABI layer on its own (bytes in, bytes out): for front ends and the benchmarks.
        .library(name: "IOMMUABI", targets: ["IOMMUABI"]),
        .executable(name: "uiommufd", targets: ["uiommufd"]),
        // The LD_PRELOAD interposer (Swift stdlib linked statically, loads into any C program).
        .library(name: "uiommufd-preload", type: .dynamic, targets: ["UIOMMUPreload"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // Linux errno, checked IOVA arithmetic, failure injection. No syscalls.
        .target(name: "UIOMMUBase", swiftSettings: strict),
        // How the engine reaches user memory: this process, or a simulated one.
        .target(name: "ProcessMemory", dependencies: ["UIOMMUBase"], swiftSettings: strict),
        // Simulated machines: IOMMU units, page-table formats, IOTLB, PCI topology, groups.
        .target(name: "IOMMUHardware", dependencies: ["UIOMMUBase", "ProcessMemory"], swiftSettings: strict),
        // The iommufd object model. Makes no syscalls.
        .target(name: "IOMMUEngine", dependencies: ["UIOMMUBase", "ProcessMemory", "IOMMUHardware"],
                swiftSettings: strict),
        // The Linux ABI: ioctl numbers, struct layouts, the size rule, errno; VFIO compat and
        // the selftest command set. The only place that knows struct layouts.
        .target(name: "IOMMUABI", dependencies: ["UIOMMUBase", "ProcessMemory", "IOMMUHardware", "IOMMUEngine"],
                swiftSettings: strict),
        // The interposer's C half: symbol interposition and the fd table. Linked only into
        // the preload library (it replaces open/ioctl/close for whoever links it).
        .target(name: "CUIOMMUInterpose", dependencies: ["CUIOMMUWire"]),
        // The client/server wire of `uiommufd serve` (message layouts, SCM_RIGHTS helpers),
        // shared by the interposer's client mode and the server.
        .target(name: "CUIOMMUWire"),
        // `uiommufd serve`: iommufd contexts shared by client processes over a UNIX socket.
        .target(name: "IOMMUServer", dependencies: ["CUIOMMUWire", "IOMMUABI", "IOMMUEngine", "IOMMUHardware", "ProcessMemory", "UIOMMUBase"],
                swiftSettings: strict),
        // The interposer's Swift half: the entry points the C half calls.
        .target(name: "UIOMMUPreload", dependencies: ["CUIOMMUInterpose", "IOMMUABI", "IOMMUEngine", "ProcessMemory", "IOMMUHardware", "UIOMMUBase"],
                swiftSettings: strict,
                // The Swift runtime goes inside the .so (no libswift*.so needed by the host program),
                // and the .so's references to its own symbols bind to itself (-Bsymbolic), so a host
                // program that exports the same Swift modules cannot replace them.
                linkerSettings: [.unsafeFlags(["-static-stdlib", "-Xlinker", "-Bsymbolic"])]),
        // Public typed Swift API over a back end (the engine today; the kernel later).
        .target(name: "IOMMUFD", dependencies: ["UIOMMUBase", "ProcessMemory", "IOMMUHardware", "IOMMUEngine"],
                swiftSettings: strict),
        // The CLI's command tree, as a library so tests can drive it end to end.
        .target(name: "UIOMMUCommands", dependencies: [
            "IOMMUFD", "IOMMUServer",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: strict),
        .executableTarget(name: "uiommufd", dependencies: ["UIOMMUCommands"], swiftSettings: strict),

        .testTarget(name: "BaseTests", dependencies: ["UIOMMUBase", "ProcessMemory"]),
        .testTarget(name: "ProcessMemoryTests", dependencies: ["UIOMMUBase", "ProcessMemory"]),
        .testTarget(name: "HardwareTests", dependencies: ["IOMMUHardware", "ProcessMemory", "UIOMMUBase"]),
        .testTarget(name: "EngineTests", dependencies: ["IOMMUEngine", "IOMMUHardware", "ProcessMemory", "UIOMMUBase"]),
        .testTarget(name: "IOMMUFDTests", dependencies: ["IOMMUFD"]),
        .testTarget(name: "ABITests", dependencies: ["IOMMUABI", "IOMMUEngine", "IOMMUHardware", "ProcessMemory", "UIOMMUBase"]),
        .testTarget(name: "CommandTests", dependencies: ["UIOMMUCommands"]),
        .testTarget(name: "ServerTests", dependencies: ["IOMMUServer", "CUIOMMUWire"]),
    ],
    swiftLanguageModes: [.v6]
)
