// swift-tools-version: 6.1
//
// uiommufd benchmark suite (issue 5). A package of its own so the root package's default test
// build stays lean: it depends on the root package by path and is always built in release.
//
//   cd Benchmarks && swift build -c release --scratch-path ../.build-bench
//   ../.build-bench/release/uiommufd-bench --help      (or ./quick.sh, ./full.sh)
//
// Targets:
//   CBenchReference  the yardsticks: plain C reference loops (radix fill/clear/walk/harvest,
//                    hash lookup, binary search, memcpy, a real ioctl), compiled with -O2 so
//                    they do not move with Swift compiler versions; plus small system helpers
//   uiommufd-bench   the benchmarks, the report table, CSV and the SVG plot
import PackageDescription
#if canImport(Foundation)
import Foundation
#endif

/// B7 and B9 need the ABI layer (IOMMUFDFile). It is wired in as soon as the root package
/// exports it as a library product named IOMMUABI; until then those rows say "not measured yet".
let rootExportsABI: Bool = {
    #if canImport(Foundation)
    let root = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent()
        .appendingPathComponent("Package.swift")
    guard let text = try? String(contentsOf: root, encoding: .utf8) else { return false }
    return text.contains(#".library(name: "IOMMUABI""#)
    #else
    return false
    #endif
}()

var benchDependencies: [Target.Dependency] = [
    "CBenchReference",
    .product(name: "IOMMUFD", package: "uiommufd"),
]
if rootExportsABI { benchDependencies.append(.product(name: "IOMMUABI", package: "uiommufd")) }

let package = Package(
    name: "uiommufd-benchmarks",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "uiommufd-bench", targets: ["uiommufd-bench"]),
    ],
    dependencies: [
        .package(name: "uiommufd", path: ".."),
    ],
    targets: [
        .target(
            name: "CBenchReference",
            cSettings: [.unsafeFlags(["-O2"])]
        ),
        .executableTarget(
            name: "uiommufd-bench",
            dependencies: benchDependencies,
            swiftSettings: [.unsafeFlags(["-O"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
