// swift-tools-version: 6.1
//
// The coverage-guided fuzzer of the ABI layer (issue 3 item 7). A package of its own so the
// root build is not affected: it depends on the root package by path and is built only by
// Fuzz/run.sh, with libFuzzer (and AddressSanitizer):
//
//   cd Fuzz && swift build -c release --scratch-path ../.build-fuzz --product uiommufd-fuzz \
//       -Xswiftc -sanitize=fuzzer,address
//   ../.build-fuzz/release/uiommufd-fuzz corpus/          (libFuzzer's usual command line)
//
// The target has no `main`: libFuzzer's main calls LLVMFuzzerTestOneInput (hence
// -parse-as-library). Fuzz/README.md describes the input format and the invariants.
import PackageDescription

let package = Package(
    name: "uiommufd-fuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "uiommufd-fuzz", targets: ["uiommufd-fuzz"]),
    ],
    dependencies: [
        .package(name: "uiommufd", path: ".."),
    ],
    targets: [
        // Imports IOMMUEngine, IOMMUHardware, ProcessMemory and UIOMMUBase too: they are
        // built as dependencies of the IOMMUABI product (the root exports no product for them).
        .executableTarget(
            name: "uiommufd-fuzz",
            dependencies: [.product(name: "IOMMUABI", package: "uiommufd")],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
