import Testing
@testable import UIOMMUCommands
import IOMMUFD

@Suite struct CommandTests {
    @Test func demoRunsTheWholeStoryAndLeavesNothing() throws {
        var lines: [String] = []
        let summary = try Demo(machine: .default) { lines.append($0) }.run()
        #expect(summary.bytesCopiedByDMA > 0)
        #expect(summary.faultsStopped == 2)
        #expect(summary.domainsCreated == 2)
        #expect(summary.refusals.count >= 3)
        #expect(summary.pinnedAtEnd == 0)
        #expect(summary.objectsAtEnd == 0)
        #expect(lines.last?.hasPrefix("Summary:") == true)
        #expect(lines.contains { $0.contains("EADDRINUSE") })
    }

    @Test func platformCommandParsesOptions() throws {
        let command = try RootCommand.parseAsRoot(["platform", "--json"])
        #expect(command is PlatformCommand)
        #expect((command as? PlatformCommand)?.json == true)
    }

    @Test func machineFileErrorsAreOneClearLine() throws {
        do {
            _ = try loadMachine("/nonexistent/machine.cfg")
            Issue.record("loading a missing file succeeded")
        } catch {
            let text = "\(error)"
            #expect(text.contains("/nonexistent/machine.cfg"))
            #expect(!text.contains("\n"))
        }
    }
}
