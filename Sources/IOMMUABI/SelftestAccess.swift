// The selftest's access objects (selftest.c's selftest_access): an iommufd_access on an IOAS,
// handed to user space as a file descriptor ("[iommufd_test_staccess]"). The descriptor number
// is the access's name in later test ops; closing the last descriptor destroys the access.
// ACCESS_PAGES pins are kept as numbered items (from 0, as the kernel numbers them); an unmap
// of their IOVA unpins them behind the test's back, so DESTROY_ACCESS_PAGES then finds none.
// Like the kernel's access (iommufd_access_create takes a context reference), the file holds
// the iommufd open: closing the iommufd descriptor first leaves every object alive until the
// access descriptor closes too.

import UIOMMUBase
import IOMMUEngine

final class SelftestAccessFile: AuxiliaryFile, @unchecked Sendable {
    struct Item {
        var id: UInt32
        var iova: UInt64
        var length: UInt64
        /// The engine's pin behind the item.
        var pin: UInt32
    }

    /// The iommufd the access belongs to; the access holds one of its users.
    let iommufd: IOMMUFDFile
    var context: IOMMUFDContext { iommufd.context }
    let needsPinPages: Bool
    /// The engine's ACCESS object (set once created).
    private(set) var accessID: UInt32 = 0

    private let lock = Lock()
    private var items: [Item] = []
    private var nextID: UInt32 = 0

    private var holdsUser = false

    init(iommufd: IOMMUFDFile, needsPinPages: Bool) {
        self.iommufd = iommufd
        self.needsPinPages = needsPinPages
    }

    /// Creates the engine access on `ioasID` (iommufd_access_create + attach) and takes a
    /// user of the iommufd.
    func create(ioas ioasID: UInt32) throws(IOMMUError) {
        accessID = try context.createAccess(ioas: ioasID, needsPinPages: needsPinPages) { [weak self] iova, length in
            self?.unmapped(iova: iova, length: length)
        }
        holdsUser = iommufd.retainUser()
    }

    // MARK: AuxiliaryFile (an anon-inode file with only a release method)

    func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Int { -Int(LinuxErrno.EINVAL.rawValue) }
    func write(from buffer: UnsafeRawPointer, count: Int) -> Int { -Int(LinuxErrno.EINVAL.rawValue) }
    var isReadable: Bool { false }

    /// The last descriptor closed: every item is unpinned and the access destroyed (its
    /// teardown drops the pins). After the iommufd itself closed there is nothing left to do.
    func release() {
        lock.withLock { items.removeAll() }
        guard accessID != 0 else { return }
        try? context.destroyAccess(accessID)
        if holdsUser {
            holdsUser = false
            iommufd.release()
        }
    }

    // MARK: Items

    /// The access ops' unmap callback: the engine is unmapping `[iova, iova + length)` and has
    /// dropped the pins inside it; forget their items. Runs under the context lock.
    private func unmapped(iova: UInt64, length: UInt64) {
        let last = iova &+ (length &- 1)
        lock.withLock {
            items.removeAll { item in !(iova > item.iova &+ (item.length &- 1) || last < item.iova) }
        }
    }

    /// Records a pin; returns its item number.
    func addItem(iova: UInt64, length: UInt64, pin: UInt32) -> UInt32 {
        lock.withLock {
            let id = nextID
            nextID &+= 1
            items.append(Item(id: id, iova: iova, length: length, pin: pin))
            return id
        }
    }

    /// DESTROY_ACCESS_PAGES: unpins item `id`; ENOENT if there is none (any more).
    func destroyItem(_ id: UInt32) throws(IOMMUError) {
        let item: Item? = lock.withLock {
            guard let k = items.firstIndex(where: { $0.id == id }) else { return nil }
            return items.remove(at: k)
        }
        guard let item else { throw IOMMUError(.ENOENT, "access \(accessID) has no pages item \(id)") }
        do throws(IOMMUError) {
            try context.accessUnpin(accessID, pinID: item.pin)
        } catch where error.errno == .ENOENT {
            // Unpinned by an unmap between the lookup and now: the item is gone either way.
            throw IOMMUError(.ENOENT, "access \(accessID) has no pages item \(id)")
        }
    }
}
