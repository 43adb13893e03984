#ifndef UIOMMU_WIRE_H
#define UIOMMU_WIRE_H
/*
 * The wire between the interposer in client mode and `uiommufd serve`.
 *
 * Topology. A client's open("/dev/iommu") connects a SOCK_SEQPACKET socket to the server's
 * listening socket: that connected socket *is* the iommufd descriptor handed to the program,
 * and the server makes one iommufd context per connection. fork, exec (without close-on-exec)
 * and SCM_RIGHTS therefore share the context for free, and the server sees the context's last
 * close as the connection's hang-up, exactly when the kernel would release the file.
 *
 * Because several processes may hold one connection, no reply ever travels on it (a reply could
 * be read by the wrong process). Instead each process that uses a connection opens its own
 * *channel*: it creates a socketpair, sends one end on the connection in a HELLO message
 * (SCM_RIGHTS), and from then on sends requests and reads replies on the other end. The
 * server knows the process behind a channel from SO_PEERCRED of the socketpair (the kernel
 * records the creator), never from anything the client writes, and reaches that process's
 * memory with process_vm_readv/writev.
 *
 * Messages (one per datagram, little-endian host layout; both ends run on one host):
 *   client → server   struct uiommu_wire_request, then `length` payload bytes
 *   server → client   struct uiommu_wire_reply, then `length` payload bytes
 * While a request is served the server may call back (CB_* replies) and the client answers
 * each with a CALLBACK_RESULT request before the final REPLY arrives.
 *
 * A connection serves one file: an iommufd context (the default, as it is made when the server
 * accepts the connection), or — when its first message is VFIO_OPEN — a VFIO device file
 * (/dev/vfio/devices/vfioN) of the server's platform, so that VFIO_DEVICE_BIND_IOMMUFD can name
 * a served iommufd. The two first messages, IDENTIFY and VFIO_OPEN, are answered on the
 * connection itself: only the opener holds it then. The server then queues one more readiness
 * message (op 0), which keeps the descriptor poll-readable as the kernel's files without a poll
 * method are.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

enum uiommu_wire_op {
    /* On a connection: attach a channel (its server end travels as SCM_RIGHTS). */
    UIOMMU_WIRE_HELLO = 1,
    /* On a connection, as its first message: report the server's state (for tools and tests);
     * the reply comes back on the connection itself. */
    UIOMMU_WIRE_STATUS = 2,
    /* On an iommufd connection, as its first message: the connection's own client end travels
     * as SCM_RIGHTS, so the server knows its (st_dev, st_ino) and can tell which context a
     * descriptor names when a VFIO device is bound to it (the first claim of an identity wins). */
    UIOMMU_WIRE_IDENTIFY = 3,
    /* On a fresh connection, as its first message: this connection is an open of
     * /dev/vfio/devices/vfio<request> with open flags `argument`. Reply: 0 (aux = major << 32 |
     * minor of the character device) or -errno. */
    UIOMMU_WIRE_VFIO_OPEN = 4,
    /* On a fresh connection, as its first message: hold VFIO group `request` open in the
     * server while the connection lives. Group files stay in the client process; this only
     * makes a group file and the served device cdevs of its devices exclude each other
     * (EBUSY), as on Linux. Reply: 0 or -errno. */
    UIOMMU_WIRE_VFIO_GROUP_OPEN = 5,

    /* On a channel. */
    UIOMMU_WIRE_IOCTL = 16,          /* request = ioctl number, argument = raw third argument,
                                        payload = the bytes at `argument` the client could read
                                        (a prefix of the struct; may be empty) */
    UIOMMU_WIRE_AUX_READ = 17,       /* request = aux id, argument = count */
    UIOMMU_WIRE_AUX_WRITE = 18,      /* request = aux id, payload = the bytes */
    UIOMMU_WIRE_AUX_CLOSED = 19,     /* request = aux id: a descriptor of it was closed */
    UIOMMU_WIRE_CLOSED = 20,         /* this process closed its last descriptor of the file */
    UIOMMU_WIRE_EXITING = 21,        /* this process is exiting: keep its pinned pages */
    UIOMMU_WIRE_CALLBACK_RESULT = 22,/* value = the answer (fd number or -errno); for
                                        CB_GET_FD the descriptor travels as SCM_RIGHTS */

    /* On a channel of a VFIO device connection (IOCTL, CLOSED and EXITING work as above). */
    UIOMMU_WIRE_VFIO_RW = 32,        /* request = 1 write / 0 read, argument = file offset,
                                        value = count (read; at most UIOMMU_WIRE_PAYLOAD_MAX),
                                        payload = the bytes (write). Reply: bytes done or -errno,
                                        payload = the bytes read */
    UIOMMU_WIRE_VFIO_MMAP = 33,      /* request = length, argument = file offset, value = 1 for
                                        MAP_SHARED: vfio_pci_core_mmap's checks. Reply: the BAR
                                        (>= 0) or -errno, aux = offset in the BAR */
    UIOMMU_WIRE_VFIO_MMIO = 34,      /* request = bar | width << 8 | write << 16, argument =
                                        offset in the BAR, value = the value stored. Reply:
                                        0, aux = the value loaded */
    UIOMMU_WIRE_VFIO_MAP_RETAIN = 35,/* a BAR mapping (piece) now holds the device file, as the
                                        kernel's vma does */
    UIOMMU_WIRE_VFIO_MAP_RELEASE = 36,/* ... and no longer does */

    /* Server → client. */
    UIOMMU_WIRE_REPLY = 64,          /* result = return value or -errno */
    UIOMMU_WIRE_CB_INSTALL_FD = 65,  /* a descriptor travels as SCM_RIGHTS: install it as an
                                        auxiliary file with id `aux`; answer its number */
    UIOMMU_WIRE_CB_GET_FD = 66,      /* send back (SCM_RIGHTS) the file behind the client's
                                        descriptor number `result`, or -EBADF */
};

struct uiommu_wire_request {
    uint32_t op;
    uint32_t length;      /* payload bytes after this header */
    uint64_t request;
    uint64_t argument;
    int64_t value;
};

struct uiommu_wire_reply {
    uint32_t op;
    uint32_t length;      /* payload bytes after this header */
    int64_t result;
    uint64_t aux;         /* CB_INSTALL_FD: the auxiliary file's id; AUX_READ: 1 if still readable;
                             HELLO: 1 if the connection is a VFIO device (see above for others) */
    uint64_t reserved;
};

/* The largest payload either side sends (ioctl struct prefixes, aux records, status text). */
#define UIOMMU_WIRE_PAYLOAD_MAX 65536u
/* How much of an ioctl's struct the client sends along (the server reads the rest itself). */
#define UIOMMU_WIRE_INLINE_MAX 4096u

/* sendmsg of header + payload with an optional descriptor (fd < 0: none); MSG_NOSIGNAL,
 * retried on EINTR. Returns 0 or -errno. */
int uiommu_wire_send(int socket, const void *header, size_t header_length,
                     const void *payload, size_t payload_length, int fd);
/* recvmsg of one message into `buffer` (close-on-exec for a received descriptor, stored in
 * *fd or -1; extra descriptors are closed). Returns the length, 0 at end of stream, or -errno
 * (-EMSGSIZE if the message did not fit). Retried on EINTR. */
ssize_t uiommu_wire_receive(int socket, void *buffer, size_t size, int *fd);
/* SO_PEERCRED of a connected UNIX socket. Returns 0 or -errno. */
int uiommu_wire_peer(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid);
/* poll(POLLRDHUP|POLLHUP) with a zero timeout: 1 if every peer descriptor is closed. */
int uiommu_wire_hung_up(int socket);
/* accept4(SOCK_CLOEXEC); -errno on failure. */
int uiommu_wire_accept(int listener);

/* Another process's memory (process_vm_readv/writev, one range): bytes copied, or -errno. */
ssize_t uiommu_process_read(pid_t pid, void *local, uint64_t remote, size_t count);
ssize_t uiommu_process_write(pid_t pid, const void *local, uint64_t remote, size_t count);
/* RLIMIT_MEMLOCK (soft) of `pid` in bytes (prlimit); UINT64_MAX when unlimited or unknown. */
uint64_t uiommu_process_memlock_limit(pid_t pid);

#ifdef __cplusplus
}
#endif
#endif
