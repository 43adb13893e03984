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
 */
#include "internal.h"
#include "uiommu_interpose.h"
#include "uiommu_wire.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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

int client_open(int flags) {
    /* The device node's answers (see owned_memfd). */
    if (flags & O_PATH) { errno = ENXIO; return -1; }
    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) { errno = EEXIST; return -1; }
    if (flags & O_DIRECTORY) { errno = ENOTDIR; return -1; }
    int saved = errno;
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
    /* The server greets each connection with one message that stays queued (we never read
     * the connection), so poll/select see the iommufd readable as the kernel's file without a
     * poll method is. Wait for it: it also means the server has taken the connection. */
    struct pollfd greeting = { .fd = fd, .events = POLLIN };
    while (poll(&greeting, 1, 10000) < 0 && errno == EINTR) {}
    if (greeting.revents & (POLLHUP | POLLERR)) { real_close(fd); errno = ENODEV; return -1; }
    if (!attach(fd, flags & O_ACCMODE)) { real_close(fd); errno = ENOMEM; return -1; }
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
