/*
 * Client mode: /dev/iommu served by `uiommufd serve` (see Sources/CUIOMMUWire/include/
 * uiommu_wire.h for the wire and why it is shaped so).
 *
 * With UIOMMUFD_SERVER=PATH in the environment, open("/dev/iommu") connects to the server's
 * socket at PATH and hands the program the connected socket as its iommufd. Everything the
 * kernel would do with the file happens in the server: this file only forwards. No Swift code
 * runs in a client process.
 *
 * Per process and file, calls go over a private channel (a socketpair whose other end was sent
 * to the server on the connection), opened on first use; a forked child notices that the
 * channel belongs to its parent (pid) and opens its own. One call at a time per channel (a
 * mutex): the server executes each ioctl atomically anyway.
 *
 * A descriptor this process did not open itself (inherited across exec, received over
 * SCM_RIGHTS) is adopted on its first iommufd ioctl: if it is a socket connected to the
 * server's path, it becomes an owned iommufd here too.
 *
 * Auxiliary files (the selftest's access objects, fault queues) are sockets too: the server
 * keeps one end (it sees the last close anywhere as a hang-up) and makes ours readable when
 * the file has something to read, so poll works unchanged; read/write are forwarded.
 *
 * VFIO device cdevs (/dev/vfio/devices/vfioN) are served the same way, so that
 * VFIO_DEVICE_BIND_IOMMUFD can name a served iommufd: the connection's first message says which
 * device, and the connection is the device's descriptor. ioctls, region reads and writes, and
 * each access through a BAR mapping (mmio.c keeps its PROT_NONE trap and forwards what it
 * decodes) are calls on the channel. Group files and /dev/vfio/vfio stay in this process.
 */
#include "internal.h"
#include "uiommu_interpose.h"
#include "uiommu_wire.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

struct remote_file {
    pthread_mutex_t lock;
    pid_t channel_pid;        /* the process that opened `channel` */
    int channel;              /* -1: none yet in this process */
    int connection_hint;      /* a descriptor of the connection, checked before use */
    dev_t dev;                /* the connection socket's identity */
    ino_t ino;
    int access;               /* O_RDONLY / O_WRONLY / O_RDWR of the open (a socket is always
                                 O_RDWR underneath; F_GETFL and read/write report this) */
    int device;               /* a VFIO device file (else an iommufd); an adopted descriptor
                                 learns it from HELLO's reply */
    off_t position;           /* read/write without an offset (a socket has no file position;
                                 kept per process) */
    struct remote_file *next; /* all files of this process (for the exit notice) */
};

struct remote_aux {
    struct handle *file_handle;   /* a reference on the iommufd's handle (the kernel's access
                                     holds the context) */
    uint64_t id;
};

static pthread_once_t config_once = PTHREAD_ONCE_INIT;
static struct sockaddr_un server_address;
static socklen_t server_address_length;
static int client_mode;
static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;
static struct remote_file *files;

static void notify_exit(void);

/* fork while another thread holds the list's lock would leave the child's copy locked forever
 * (its exit notice takes it). */
static void files_lock_prepare(void) { pthread_mutex_lock(&files_lock); }
static void files_lock_release(void) { pthread_mutex_unlock(&files_lock); }

static void read_config(void) {
    const char *path = getenv("UIOMMUFD_SERVER");
    if (!path || !*path || strlen(path) >= sizeof server_address.sun_path) return;
    memset(&server_address, 0, sizeof server_address);
    server_address.sun_family = AF_UNIX;
    strcpy(server_address.sun_path, path);
    server_address_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    client_mode = 1;
    atexit(notify_exit);
    pthread_atfork(files_lock_prepare, files_lock_release, files_lock_release);
}

int client_mode_enabled(void) {
    pthread_once(&config_once, read_config);
    return client_mode;
}

/* ---- files ------------------------------------------------------------------------------------ */

static struct remote_file *remote_file_new(int fd, int access) {
    struct remote_file *rf = calloc(1, sizeof *rf);
    if (!rf) return NULL;
    pthread_mutex_init(&rf->lock, NULL);
    rf->channel = -1;
    rf->access = access;
    rf->connection_hint = fd;
    struct stat st;
    if (real_fstatat(fd, "", &st, AT_EMPTY_PATH) == 0) { rf->dev = st.st_dev; rf->ino = st.st_ino; }
    pthread_mutex_lock(&files_lock);
    rf->next = files;
    files = rf;
    pthread_mutex_unlock(&files_lock);
    return rf;
}

static void remote_file_free(struct remote_file *rf) {
    pthread_mutex_lock(&files_lock);
    for (struct remote_file **p = &files; *p; p = &(*p)->next)
        if (*p == rf) { *p = rf->next; break; }
    pthread_mutex_unlock(&files_lock);
    free(rf);
}

/* Whether descriptor `fd` is (still) the connection of `rf`. */
static int is_connection(struct remote_file *rf, int fd) {
    struct stat st;
    return fd >= 0 && real_fstatat(fd, "", &st, AT_EMPTY_PATH) == 0 && st.st_dev == rf->dev && st.st_ino == rf->ino;
}

/* Opens this process's channel for `rf` through its connection descriptor `fd`. Call with the
 * file's lock held. Returns 0 or -errno. */
static int open_channel(struct remote_file *rf, int fd) {
    pid_t me = getpid();
    if (rf->channel >= 0 && rf->channel_pid == me) return 0;
    if (rf->channel >= 0) { real_close(rf->channel); rf->channel = -1; }   /* the parent's */
    if (!is_connection(rf, fd)) fd = rf->connection_hint;
    if (!is_connection(rf, fd)) return -EBADF;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return -errno;
    /* The server reaches our memory with process_vm_readv: let it past Yama's ptrace scope. */
    int32_t server_pid; uint32_t uid, gid;
    if (uiommu_wire_peer(fd, &server_pid, &uid, &gid) == 0 && server_pid > 0)
        prctl(PR_SET_PTRACER, (unsigned long)server_pid, 0, 0, 0);
    struct uiommu_wire_request hello = { .op = UIOMMU_WIRE_HELLO };
    int r = uiommu_wire_send(fd, &hello, sizeof hello, NULL, 0, pair[1]);
    real_close(pair[1]);
    if (r == 0) {
        struct uiommu_wire_reply reply;
        ssize_t n = uiommu_wire_receive(pair[0], &reply, sizeof reply, NULL);
        if (n != (ssize_t)sizeof reply || reply.op != UIOMMU_WIRE_REPLY) r = n < 0 ? (int)n : -ECONNRESET;
        else if (reply.result < 0) r = (int)reply.result;
        else rf->device = reply.aux == 1;
    }
    if (r != 0) { real_close(pair[0]); return r == -EPIPE ? -EBADF : r; }
    /* Out of the way of the program's own low descriptor numbers. */
    int high = real_fcntl(pair[0], F_DUPFD_CLOEXEC, (void *)(long)900);
    if (high >= 0) { real_close(pair[0]); pair[0] = high; }
    rf->channel = pair[0];
    rf->channel_pid = me;
    rf->connection_hint = fd;
    return 0;
}

/* ---- calls ------------------------------------------------------------------------------------- */

static int answer(int channel, int64_t value, int fd) {
    struct uiommu_wire_request result = { .op = UIOMMU_WIRE_CALLBACK_RESULT, .value = value };
    return uiommu_wire_send(channel, &result, sizeof result, NULL, 0, fd);
}

static int install_aux(struct handle *file_handle, int fd, uint64_t id);

/* A callback from the server while our request runs. Returns 0 or -errno (broken channel). */
static int serve_callback(struct handle *file_handle, int channel, const struct uiommu_wire_reply *cb, int received) {
    if (cb->op == UIOMMU_WIRE_CB_INSTALL_FD) {
        int fd = received < 0 ? -EBADF : install_aux(file_handle, received, cb->aux);
        if (fd < 0 && received >= 0) real_close(received);
        return answer(channel, fd, -1);
    }
    if (received >= 0) real_close(received);
    if (cb->op == UIOMMU_WIRE_CB_GET_FD) {
        int fd = cb->result >= 0 && cb->result <= INT32_MAX ? (int)cb->result : -1;
        if (fd < 0 || real_fcntl(fd, F_GETFD, NULL) < 0) return answer(channel, -EBADF, -1);
        return answer(channel, 0, fd);
    }
    return answer(channel, -EINVAL, -1);
}

/* Sends one request and waits for its reply, serving callbacks meanwhile. `out`/`out_size`
 * receive the reply's payload. Returns the result (>= 0 or -errno); *reply_aux gets `aux`. */
static int64_t call(struct handle *file_handle, int connection_fd, const struct uiommu_wire_request *request,
                    const void *payload, size_t payload_length, void *out, size_t out_size, size_t *out_length,
                    uint64_t *reply_aux) {
    struct remote_file *rf = file_handle->object;
    pthread_mutex_lock(&rf->lock);
    int64_t result = open_channel(rf, connection_fd);
    if (result == 0) result = uiommu_wire_send(rf->channel, request, sizeof *request, payload, payload_length, -1);
    /* Replies to ioctls carry no payload: a small buffer on the stack; a read's reply may carry
     * up to `out_size` bytes. */
    char small[256];
    size_t capacity = sizeof(struct uiommu_wire_reply) + out_size;
    char *message = capacity <= sizeof small ? small : malloc(capacity);
    if (!message) result = -ENOMEM;
    while (result == 0) {
        int received = -1;
        ssize_t n = uiommu_wire_receive(rf->channel, message, capacity <= sizeof small ? sizeof small : capacity, &received);
        if (n < (ssize_t)sizeof(struct uiommu_wire_reply)) {
            if (received >= 0) real_close(received);
            result = n < 0 ? n : -ECONNRESET;   /* the server went away */
            break;
        }
        struct uiommu_wire_reply reply;
        memcpy(&reply, message, sizeof reply);
        size_t length = (size_t)n - sizeof reply;
        if (reply.op != UIOMMU_WIRE_REPLY) {
            result = serve_callback(file_handle, rf->channel, &reply, received);
            continue;
        }
        if (received >= 0) real_close(received);
        if (out_length) *out_length = 0;
        if (out && length) {
            size_t copy = length < out_size ? length : out_size;
            memcpy(out, message + sizeof reply, copy);
            if (out_length) *out_length = copy;
        }
        if (reply_aux) *reply_aux = reply.aux;
        result = reply.result;
        break;
    }
    if (message != small) free(message);
    if (result == -ECONNRESET || result == -EPIPE) {
        /* A dead server: the channel is useless; the next call will try a new one. */
        if (rf->channel >= 0 && rf->channel_pid == getpid()) { real_close(rf->channel); rf->channel = -1; }
        result = -EIO;
    }
    pthread_mutex_unlock(&rf->lock);
    return result;
}

int client_ioctl(struct handle *h, int fd, unsigned long request, unsigned long arg) {
    /* Send the struct along when we can read it: the iommufd and VFIO structs start with their
     * size (argsz). A prefix that cannot be read is simply not sent; the server then reads
     * the user memory itself and answers EFAULT exactly where the kernel would. */
    char inline_bytes[UIOMMU_WIRE_INLINE_MAX];
    size_t inline_length = 0;
    uint32_t size = 0;
    if (uiommu_copy_from_user(&size, arg, sizeof size) == 0) {
        size_t want = size < sizeof size ? sizeof size : size;
        if (want > sizeof inline_bytes) want = sizeof inline_bytes;
        if (uiommu_copy_from_user(inline_bytes, arg, want) == 0) inline_length = want;
        else { memcpy(inline_bytes, &size, sizeof size); inline_length = sizeof size; }
    }
    struct uiommu_wire_request r = { .op = UIOMMU_WIRE_IOCTL, .length = (uint32_t)inline_length,
                                     .request = request, .argument = arg };
    return (int)call(h, fd, &r, inline_bytes, inline_length, NULL, 0, NULL, NULL);
}

/* ---- open, adopt, release ------------------------------------------------------------------------ */

static struct handle *attach(int fd, int access) {
    struct remote_file *rf = remote_file_new(fd, access);
    if (!rf) return NULL;
    struct handle *h = handle_new(HANDLE_REMOTE, rf);
    if (!h) { remote_file_free(rf); return NULL; }
    install_owned(fd, h);
    return h;
}

/* Connects a new connection to the server (the open's flags on the socket); -1 with errno. */
static int connect_server(int flags) {
    /* The device node's answers (see owned_memfd). */
    if (flags & O_PATH) { errno = ENXIO; return -1; }
    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) { errno = EEXIST; return -1; }
    if (flags & O_DIRECTORY) { errno = ENOTDIR; return -1; }
    int type = SOCK_SEQPACKET | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0) | ((flags & O_NONBLOCK) ? SOCK_NONBLOCK : 0);
    int fd = socket(AF_UNIX, type, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&server_address, server_address_length) != 0) {
        /* No server: as if the device node did not exist; its socket's mode: EACCES. */
        int e = errno == EACCES || errno == EPERM ? EACCES : ENOENT;
        real_close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Waits (up to 10 s) for the connection to be readable; 0, or -ENODEV if the server hung up
 * or did not answer. */
static int wait_readable(int fd) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int n;
    while ((n = poll(&p, 1, 10000)) < 0 && errno == EINTR) {}
    if (n <= 0 || (p.revents & (POLLHUP | POLLERR)) || !(p.revents & POLLIN)) return -ENODEV;
    return 0;
}

/* The connection's first message (IDENTIFY, VFIO_OPEN), sent with the connection's own
 * descriptor, and its answer, which the server sends on the connection (only we hold it yet).
 * Readiness messages (op 0) before the answer are consumed; the one the server queues after it
 * is waited for and left, so the descriptor polls readable. Returns the result (*aux: the
 * reply's aux) or -errno. */
static int64_t first_exchange(int fd, const struct uiommu_wire_request *request, uint64_t *aux) {
    int r = uiommu_wire_send(fd, request, sizeof *request, NULL, 0, fd);
    if (r != 0) return -ENODEV;
    for (;;) {
        if (wait_readable(fd) != 0) return -ENODEV;
        struct uiommu_wire_reply reply;
        ssize_t n = uiommu_wire_receive(fd, &reply, sizeof reply, NULL);
        if (n == -EAGAIN) continue;
        if (n != (ssize_t)sizeof reply) return -ENODEV;
        if (reply.op != UIOMMU_WIRE_REPLY) continue;
        if (reply.result >= 0 && wait_readable(fd) != 0) return -ENODEV;
        if (aux) *aux = reply.aux;
        return reply.result;
    }
}

int client_open(int flags) {
    int saved = errno;
    int fd = connect_server(flags);
    if (fd < 0) return -1;
    /* Tell the server which socket is the clients' end of this context, so that a VFIO
     * device's BIND_IOMMUFD naming it can be recognised. Its answer also means the server has
     * taken the connection. */
    struct uiommu_wire_request identify = { .op = UIOMMU_WIRE_IDENTIFY };
    if (first_exchange(fd, &identify, NULL) < 0) { real_close(fd); errno = ENODEV; return -1; }
    if (!attach(fd, flags & O_ACCMODE)) { real_close(fd); errno = ENOMEM; return -1; }
    errno = saved;
    return fd;
}

int client_vfio_open(unsigned index, int flags, dev_t *rdev) {
    int saved = errno;
    int fd = connect_server(flags);
    if (fd < 0) return -1;
    struct uiommu_wire_request open_ = { .op = UIOMMU_WIRE_VFIO_OPEN, .request = index, .argument = (uint64_t)(unsigned)flags };
    uint64_t numbers = 0;
    int64_t r = first_exchange(fd, &open_, &numbers);
    if (r < 0) { real_close(fd); errno = r < -4095 ? ENODEV : (int)-r; return -1; }
    struct handle *h = attach(fd, flags & O_ACCMODE);
    if (!h) { real_close(fd); errno = ENOMEM; return -1; }
    ((struct remote_file *)h->object)->device = 1;
    *rdev = makedev((unsigned)(numbers >> 32), (unsigned)(numbers & 0xffffffffu));
    h->rdev = *rdev;
    errno = saved;
    return fd;
}

int client_adopt(int fd) {
    if (!client_mode_enabled()) return 0;
    struct sockaddr_un peer;
    socklen_t length = sizeof peer;
    int saved = errno;
    memset(&peer, 0, sizeof peer);
    int ok = getpeername(fd, (struct sockaddr *)&peer, &length) == 0 && peer.sun_family == AF_UNIX
             && length == server_address_length
             && memcmp(peer.sun_path, server_address.sun_path, length - offsetof(struct sockaddr_un, sun_path)) == 0;
    int type = 0;
    socklen_t tl = sizeof type;
    ok = ok && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_SEQPACKET;
    errno = saved;
    if (!ok || slot_get(fd)) return 0;
    return attach(fd, O_RDWR) != NULL;
}

int client_access_mode(struct handle *h) {
    return ((struct remote_file *)h->object)->access;
}

void *client_vfio_group_claim(unsigned id, int *error) {
    int fd = connect_server(O_CLOEXEC);
    if (fd < 0) { *error = errno == ENOENT ? ENODEV : errno; return NULL; }
    struct uiommu_wire_request claim = { .op = UIOMMU_WIRE_VFIO_GROUP_OPEN, .request = id };
    int64_t r = first_exchange(fd, &claim, NULL);
    if (r < 0) { real_close(fd); *error = r < -4095 ? ENODEV : (int)-r; return NULL; }
    int high = real_fcntl(fd, F_DUPFD_CLOEXEC, (void *)(long)900);
    if (high >= 0) { real_close(fd); fd = high; }
    /* A channel now, so that the release can be synchronous (CLOSED) as for the other files. */
    struct remote_file *rf = remote_file_new(fd, O_RDWR);
    if (!rf) { real_close(fd); *error = ENOMEM; return NULL; }
    pthread_mutex_lock(&rf->lock);
    int e = open_channel(rf, fd);
    pthread_mutex_unlock(&rf->lock);
    if (e != 0) { real_close(fd); remote_file_free(rf); *error = -e; return NULL; }
    return rf;
}

void client_vfio_group_unclaim(void *claim) {
    struct remote_file *rf = claim;
    /* Close the connection first: if that was its last descriptor anywhere, CLOSED finds it
     * hung up and the server releases the group before answering. */
    if (is_connection(rf, rf->connection_hint)) real_close(rf->connection_hint);
    client_release(rf);
}

int client_is_device(struct handle *h) {
    return ((struct remote_file *)h->object)->device;
}

/* ---- VFIO device files ------------------------------------------------------------------------ */

#define RW_CHUNK UIOMMU_WIRE_PAYLOAD_MAX

ssize_t client_vfio_rw(struct handle *h, int fd, int op, const struct iovec *iov, int iovcnt, off_t offset) {
    struct remote_file *rf = h->object;
    if (iovcnt < 0 || iovcnt > IOV_MAX) return -EINVAL;
    int positioned = offset >= 0;
    off_t pos = positioned ? offset : rf->position;
    ssize_t total = 0;
    char *bounce = malloc(RW_CHUNK);
    if (!bounce) return -ENOMEM;
    for (int i = 0; i < iovcnt; i++) {
        size_t left = iov[i].iov_len;
        char *user = iov[i].iov_base;
        while (left > 0) {
            size_t n = left < RW_CHUNK ? left : RW_CHUNK;
            int64_t r;
            if (op == 1) {
                if (uiommu_copy_from_user(bounce, (uint64_t)(uintptr_t)user, n) != 0) {
                    r = -EFAULT;
                } else {
                    struct uiommu_wire_request q = { .op = UIOMMU_WIRE_VFIO_RW, .length = (uint32_t)n, .request = 1,
                                                     .argument = (uint64_t)(pos + total) };
                    r = call(h, fd, &q, bounce, n, NULL, 0, NULL, NULL);
                }
            } else {
                struct uiommu_wire_request q = { .op = UIOMMU_WIRE_VFIO_RW, .request = 0,
                                                 .argument = (uint64_t)(pos + total), .value = (int64_t)n };
                size_t got = 0;
                r = call(h, fd, &q, NULL, 0, bounce, n, &got, NULL);
                if (r > (int64_t)got) r = (int64_t)got;   /* never more than arrived */
                if (r > 0 && uiommu_copy_to_user((uint64_t)(uintptr_t)user, bounce, (size_t)r) != 0) r = -EFAULT;
            }
            if (r < 0) {
                if (total == 0) { free(bounce); return (ssize_t)r; }
                goto done;
            }
            total += r;
            if ((size_t)r < n) goto done;
            left -= n;
            user += n;
        }
    }
done:
    free(bounce);
    if (!positioned && total > 0) rf->position = pos + total;
    return total;
}

int64_t client_vfio_mmap(struct handle *h, int fd, size_t length, int shared, off_t offset, int32_t *bar, uint64_t *start) {
    struct uiommu_wire_request q = { .op = UIOMMU_WIRE_VFIO_MMAP, .request = length, .argument = (uint64_t)offset,
                                     .value = shared ? 1 : 0 };
    uint64_t aux = 0;
    int64_t r = call(h, fd, &q, NULL, 0, NULL, 0, NULL, &aux);
    if (r < 0) return r;
    if (r > 5) return -EIO;   /* a BAR index is 0-5 */
    *bar = (int32_t)r;
    *start = aux;
    return 0;
}

uint64_t client_vfio_mmio(struct handle *h, int32_t bar, uint64_t offset, int32_t width, int32_t write, uint64_t value) {
    struct uiommu_wire_request q = { .op = UIOMMU_WIRE_VFIO_MMIO,
                                     .request = (uint64_t)(uint32_t)bar | (uint64_t)(uint32_t)width << 8 | (uint64_t)(write ? 1 : 0) << 16,
                                     .argument = offset, .value = (int64_t)value };
    uint64_t aux = 0;
    int64_t r = call(h, -1, &q, NULL, 0, NULL, 0, NULL, &aux);
    /* A load that failed (the server gone) reads all ones, as a master abort. */
    if (r < 0) return write ? 0 : ~(uint64_t)0;
    return aux;
}

int client_vfio_map_retain(struct handle *h, int fd) {
    struct uiommu_wire_request q = { .op = UIOMMU_WIRE_VFIO_MAP_RETAIN };
    return (int)call(h, fd, &q, NULL, 0, NULL, 0, NULL, NULL);
}

void client_vfio_map_release(struct handle *h) {
    struct uiommu_wire_request q = { .op = UIOMMU_WIRE_VFIO_MAP_RELEASE };
    (void)call(h, -1, &q, NULL, 0, NULL, 0, NULL, NULL);
}

void client_release(void *object) {
    struct remote_file *rf = object;
    pthread_mutex_lock(&rf->lock);
    if (rf->channel >= 0 && rf->channel_pid == getpid()) {
        /* Our last descriptor is closed: if it was the last anywhere, the server releases the
         * context before answering, so close() is synchronous as the kernel's release is. */
        struct uiommu_wire_request r = { .op = UIOMMU_WIRE_CLOSED };
        if (uiommu_wire_send(rf->channel, &r, sizeof r, NULL, 0, -1) == 0) {
            struct uiommu_wire_reply reply;
            (void)uiommu_wire_receive(rf->channel, &reply, sizeof reply, NULL);
        }
        real_close(rf->channel);
    }
    rf->channel = -1;
    pthread_mutex_unlock(&rf->lock);
    remote_file_free(rf);
}

/* atexit: before our address space goes away, the server copies the pages it has pinned from
 * it, so they outlive us as pinned pages do on Linux. One notice covers every file. */
static void notify_exit(void) {
    int saved = errno;
    pid_t me = getpid();
    pthread_mutex_lock(&files_lock);
    for (struct remote_file *rf = files; rf; rf = rf->next) {
        pthread_mutex_lock(&rf->lock);
        int sent = 0;
        if (rf->channel >= 0 && rf->channel_pid == me) {
            struct uiommu_wire_request r = { .op = UIOMMU_WIRE_EXITING };
            if (uiommu_wire_send(rf->channel, &r, sizeof r, NULL, 0, -1) == 0) {
                struct uiommu_wire_reply reply;
                sent = uiommu_wire_receive(rf->channel, &reply, sizeof reply, NULL) > 0;
            }
        }
        pthread_mutex_unlock(&rf->lock);
        if (sent) break;
    }
    pthread_mutex_unlock(&files_lock);
    errno = saved;
}

/* ---- auxiliary files ------------------------------------------------------------------------------ */

static int install_aux(struct handle *file_handle, int fd, uint64_t id) {
    struct remote_aux *aux = calloc(1, sizeof *aux);
    if (!aux) return -ENOMEM;
    if (!handle_ref_if_alive(file_handle)) { free(aux); return -EBADF; }
    aux->file_handle = file_handle;
    aux->id = id;
    struct handle *h = handle_new(HANDLE_REMOTE_AUX, aux);
    if (!h) { handle_unref(file_handle); free(aux); return -ENOMEM; }
    install_owned(fd, h);
    return fd;
}

/* Drains the readiness bytes the server queued on our end (it re-signals if still readable). */
static void drain(int fd) {
    char bytes[64];
    int saved = errno;
    while (recv(fd, bytes, sizeof bytes, MSG_DONTWAIT) > 0) {}
    errno = saved;
}

ssize_t client_aux_rw(struct handle *h, int fd, int op, void *buffer, size_t count) {
    struct remote_aux *aux = h->object;
    /* A multiple of the fault queue's 40-byte records, as in-process (interpose.c). */
    if (count > UIOMMU_WIRE_PAYLOAD_MAX) count = UIOMMU_WIRE_PAYLOAD_MAX - UIOMMU_WIRE_PAYLOAD_MAX % 40;
    if (op == 0) {
        struct uiommu_wire_request r = { .op = UIOMMU_WIRE_AUX_READ, .request = aux->id, .argument = count };
        char *bounce = malloc(count ? count : 1);
        if (!bounce) return -ENOMEM;
        /* The server cannot put events back if the copy to the user fails: with something to
         * read (our end is readable), check first that the buffer is writable. */
        struct pollfd ready = { .fd = fd, .events = POLLIN };
        if (count && poll(&ready, 1, 0) == 1
            && (uiommu_copy_from_user(bounce, (uint64_t)(uintptr_t)buffer, count) != 0
                || uiommu_copy_to_user((uint64_t)(uintptr_t)buffer, bounce, count) != 0)) {
            free(bounce);
            return -EFAULT;
        }
        size_t got = 0;
        uint64_t readable = 1;
        int64_t n = call(aux->file_handle, -1, &r, NULL, 0, bounce, count, &got, &readable);
        if (!readable) drain(fd);
        if (n > 0 && uiommu_copy_to_user((uint64_t)(uintptr_t)buffer, bounce, got < (size_t)n ? got : (size_t)n) != 0) n = -EFAULT;
        free(bounce);
        return (ssize_t)n;
    }
    char *bounce = malloc(count ? count : 1);
    if (!bounce) return -ENOMEM;
    int64_t n;
    if (uiommu_copy_from_user(bounce, (uint64_t)(uintptr_t)buffer, count) != 0) {
        n = -EFAULT;
    } else {
        struct uiommu_wire_request r = { .op = UIOMMU_WIRE_AUX_WRITE, .length = (uint32_t)count, .request = aux->id };
        n = call(aux->file_handle, -1, &r, bounce, count, NULL, 0, NULL, NULL);
    }
    free(bounce);
    return (ssize_t)n;
}

void client_aux_release(void *object) {
    struct remote_aux *aux = object;
    /* Our last descriptor of it is closed; if no process holds one any more, the server
     * releases the file (the selftest destroys an access object by closing its fd). */
    struct uiommu_wire_request r = { .op = UIOMMU_WIRE_AUX_CLOSED, .request = aux->id };
    (void)call(aux->file_handle, -1, &r, NULL, 0, NULL, 0, NULL, NULL);
    handle_unref(aux->file_handle);
    free(aux);
}
