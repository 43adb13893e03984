import Testing
@testable import UIOMMUCommands

/// `uiommufd run`: option parsing and the environment the program gets. (The run itself —
/// spawning programs under the preload library — is exercised by tests/conformance/run.sh.)
@Suite struct RunCommandTests {
    @Test func parsesOptionsUpToTheProgram() throws {
        let r = try RunInvocation.parse(["--machine", "m.cfg", "--trace", "--leaks", "--selftest-ops", "--", "prog", "-x", "--leaks"])
        #expect(r.machine == "m.cfg")
        #expect(r.trace == "stderr")
        #expect(r.leaks && r.selftestOps)
        #expect(r.program == ["prog", "-x", "--leaks"])
    }

    @Test func traceTakesAnOptionalFile() throws {
        #expect(try RunInvocation.parse(["--trace=/tmp/t.log", "prog"]).trace == "/tmp/t.log")
        #expect(try RunInvocation.parse(["--trace=", "prog"]).trace == "stderr")
        #expect(try RunInvocation.parse(["--machine=x.cfg", "prog"]).machine == "x.cfg")
        #expect(try RunInvocation.parse(["prog"]).trace == nil)
        // Without "--", the first word that is not an option starts the program.
        #expect(try RunInvocation.parse(["--leaks", "prog", "--trace"]).program == ["prog", "--trace"])
    }

    @Test func mistakesAreOneLine() {
        for words in [[], ["--leaks"], ["--"], ["--machine"], ["--frobnicate", "prog"], ["--machine=", "prog"]] {
            do {
                _ = try RunInvocation.parse(words)
                Issue.record("\(words) parsed")
            } catch {
                #expect(error.description.hasPrefix("run: "))
                #expect(!error.description.contains("\n"))
            }
        }
    }

    @Test func environmentPrependsThePreloadAndSetsTheVariables() throws {
        let r = try RunInvocation.parse(["--machine", "cfg/m.cfg", "--trace=out.log", "--leaks", "prog"])
        let env = r.environment(base: ["PATH=/bin", "LD_PRELOAD=/other.so", "UIOMMUFD_SELFTEST=1", "UIOMMUFD_TRACE=old"],
                                preload: "/build/libuiommufd-preload.so", workingDirectory: "/work")
        #expect(env.contains("PATH=/bin"))
        #expect(env.contains("LD_PRELOAD=/build/libuiommufd-preload.so:/other.so"))
        #expect(env.contains("UIOMMUFD_MACHINE=/work/cfg/m.cfg"))
        #expect(env.contains("UIOMMUFD_TRACE=/work/out.log"))
        #expect(env.contains("UIOMMUFD_LEAKS=1"))
        // Settings the command line does not ask for are removed, not inherited.
        #expect(!env.contains { $0.hasPrefix("UIOMMUFD_SELFTEST=") })
        #expect(env.filter { $0.hasPrefix("LD_PRELOAD=") }.count == 1)
    }

    @Test func environmentWithoutAnExistingPreload() throws {
        let r = try RunInvocation.parse(["--trace", "prog"])
        let env = r.environment(base: [], preload: "/p.so", workingDirectory: "/")
        #expect(env.sorted() == ["LD_PRELOAD=/p.so", "UIOMMUFD_TRACE=stderr"])
        // The library is not listed twice when it is preloaded already.
        let again = r.environment(base: ["LD_PRELOAD=/p.so /q.so"], preload: "/p.so", workingDirectory: "/")
        #expect(again.contains("LD_PRELOAD=/p.so:/q.so"))
    }

    @Test func rootCommandKnowsRun() throws {
        let command = try RootCommand.parseAsRoot(["run", "--leaks", "--", "true"])
        let run = try #require(command as? RunCommand)
        #expect(run.words.contains("true"))
    }
}
