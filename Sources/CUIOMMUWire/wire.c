/* Socket helpers of the client/server wire (see include/uiommu_wire.h). They exist in C because
 * the control-message macros (CMSG_*) do not cross into Swift. */
#define _GNU_SOURCE
#include "uiommu_wire.h"
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int uiommu_wire_send(int sock, const void *header, size_t header_length,
                     const void *payload, size_t payload_length, int fd) {
    struct iovec iov[2] = { { (void *)header, header_length }, { (void *)payload, payload_length } };
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = payload_length ? 2 : 1;
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0) return (size_t)n == header_length + payload_length ? 0 : -EMSGSIZE;
        if (errno != EINTR) return -errno;
    }
}

ssize_t uiommu_wire_receive(int sock, void *buffer, size_t size, int *fd) {
    union { struct cmsghdr align; char bytes[CMSG_SPACE(4 * sizeof(int))]; } control;
    struct iovec iov = { buffer, size };
    struct msghdr msg;
    if (fd) *fd = -1;
    for (;;) {
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        int kept = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int received;
                memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
                if (kept < 0 && fd) kept = received; else close(received);
            }
        }
        if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
            if (kept >= 0) close(kept);
            return -EMSGSIZE;
        }
        if (fd) *fd = kept;
        return n;
    }
}

int uiommu_wire_peer(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t length = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) return -errno;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int uiommu_wire_hung_up(int sock) {
    struct pollfd p = { .fd = sock, .events = POLLRDHUP };
    int n = poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0;
}

int uiommu_wire_accept(int listener) {
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

ssize_t uiommu_process_read(pid_t pid, void *local, uint64_t remote, size_t count) {
    struct iovec l = { local, count };
    struct iovec r = { (void *)(uintptr_t)remote, count };
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    return n >= 0 ? n : -errno;
}

ssize_t uiommu_process_write(pid_t pid, const void *local, uint64_t remote, size_t count) {
    struct iovec l = { (void *)local, count };
    struct iovec r = { (void *)(uintptr_t)remote, count };
    ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
    return n >= 0 ? n : -errno;
}

uint64_t uiommu_process_memlock_limit(pid_t pid) {
    struct rlimit limit;
    if (prlimit(pid, RLIMIT_MEMLOCK, NULL, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
    return (uint64_t)limit.rlim_cur;
}
