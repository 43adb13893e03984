import Testing
import UIOMMUBase
import ProcessMemory
#if canImport(Glibc)
import Glibc
#endif

/// FileMemory: a shared-memory file as pinnable memory for IOMMU_IOAS_MAP_FILE.
@Suite struct FileMemoryTests {
    /// A tmpfs file of `pages` pages under /dev/shm, unlinked; the caller closes it.
    func shmFile(pages: Int, flags: Int32 = O_RDWR) throws -> Int32 {
        let path = "/dev/shm/uiommufd-filememory-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        let fd = open(path, flags | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        unlink(path)
        try #require(ftruncate(fd, off_t(pages * 4096)) == 0)
        return fd
    }

    @Test func mapsTheWholeFileShared() throws {
        let fd = try shmFile(pages: 4)
        defer { close(fd) }
        let memory = try #require(FileMemory(fd: fd))
        #expect(memory.fileSize == 4 * 4096)
        var runs: [PhysicalRun] = []
        try memory.resolve(offset: 4096, length: 8192, writable: true) { runs.append($0) }
        #expect(runs.count == 1 && runs[0].length == 8192 && runs[0].backingPageSize == 4096)
        // A DMA write through the "physical" address is visible in the file.
        var bytes: [UInt8] = [1, 2, 3, 4]
        try memory.write(physical: runs[0].physical + 10, from: &bytes, count: 4)
        var back = [UInt8](repeating: 0, count: 4)
        #expect(pread(fd, &back, 4, 4096 + 10) == 4)
        #expect(back == [1, 2, 3, 4])
        // And what the program writes is what the device reads.
        let written: [UInt8] = [9, 8, 7]
        #expect(pwrite(fd, written, 3, 4096) == 3)
        var seen = [UInt8](repeating: 0, count: 3)
        try memory.read(physical: runs[0].physical, into: &seen, count: 3)
        #expect(seen == [9, 8, 7])
    }

    @Test func rangesPastTheEndAreRefused() throws {
        let fd = try shmFile(pages: 2)
        defer { close(fd) }
        let memory = try #require(FileMemory(fd: fd))
        #expect(throws: IOMMUError.self) { try memory.resolve(offset: 4096, length: 8192, writable: false) { _ in } }
        #expect(throws: IOMMUError.self) { try memory.resolve(offset: .max - 4095, length: 8192, writable: false) { _ in } }
        var b: UInt8 = 0
        #expect(throws: IOMMUError.self) { try memory.read(physical: 0x1000, into: &b, count: 1) }
    }

    @Test func readOnlyFilesCannotBePinnedWritable() throws {
        let fd = try shmFile(pages: 1)
        defer { close(fd) }
        let ro = open("/proc/self/fd/\(fd)", O_RDONLY | O_CLOEXEC)
        try #require(ro >= 0)
        defer { close(ro) }
        let memory = try #require(FileMemory(fd: ro))
        try memory.resolve(offset: 0, length: 4096, writable: false) { _ in }
        #expect(throws: IOMMUError.self) { try memory.resolve(offset: 0, length: 4096, writable: true) { _ in } }
    }

    @Test func emptyFilesHaveASizeButNoPages() throws {
        let fd = try shmFile(pages: 0)
        defer { close(fd) }
        let memory = try #require(FileMemory(fd: fd))
        #expect(memory.fileSize == 0)
        #expect(throws: IOMMUError.self) { try memory.resolve(offset: 0, length: 4096, writable: false) { _ in } }
    }

    @Test func onlySharedMemoryFilesAndOpenDescriptors() throws {
        #expect(FileMemory(fd: -1) == nil)
        #expect(FileMemory(fd: 987_654) == nil)
        let regular = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)   // not shmem
        defer { close(regular) }
        #expect(FileMemory(fd: regular) == nil)
        var p: [Int32] = [0, 0]
        try #require(pipe(&p) == 0)
        defer { close(p[0]); close(p[1]) }
        #expect(FileMemory(fd: p[0]) == nil)
    }
}
