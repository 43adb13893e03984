public import ArgumentParser
import IOMMUFD

/// `uiommufd`: the command-line front end.
public struct RootCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "uiommufd",
        abstract: "The Linux iommufd system (/dev/iommu) and VFIO, in user space.",
        discussion: """
        Runs IOMMU-using programs with no IOMMU hardware: a simulated machine (IOMMU units, \
        PCI topology, groups, devices that do DMA) and the iommufd object model as Linux has it.
        """,
        subcommands: [DemoCommand.self, PlatformCommand.self, RunCommand.self, ServeCommand.self],
        defaultSubcommand: nil)

    public init() {}
}

/// Loads a machine from `--machine FILE`, or the embedded default machine.
func loadMachine(_ path: String?) throws -> MachineDescription {
    guard let path else { return MachineDescription.default }
    let text = try readTextFile(path)
    do {
        return try MachineDescription.parse(text, fileName: path)
    } catch {
        throw CLIError(error.description)
    }
}

/// An error the tool reports as one line (never a stack trace).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
