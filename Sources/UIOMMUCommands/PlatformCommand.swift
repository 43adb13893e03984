import ArgumentParser
import IOMMUFD

/// `uiommufd platform`: the machine — IOMMUs, PCI tree, groups, reserved regions.
struct PlatformCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "platform",
        abstract: "Show the simulated machine: IOMMU units, PCI tree, groups, reserved regions.")

    @Option(name: .long, help: "A machine description file (default: the built-in machine).")
    var machine: String?

    @Flag(name: .long, help: "Print JSON instead of text.")
    var json = false

    func run() throws {
        let description = try loadMachine(machine)
        print(json ? description.renderJSON() : description.renderText(), terminator: "")
    }
}
