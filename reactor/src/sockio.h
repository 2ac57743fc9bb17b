/*
** reactor/src/sockio.h — the socket calls of the C streams, which all work
** on a raw fd: the reactor's streams and listeners (stream.c, with
** streambuf.c's flush) and the Python binding's TCP streams
** (bindings/ame/transport.c): the accept loop, reads and writes.
** Internal: not part of ame/reactor.h, and static inline, so nothing here
** is a symbol of libame-reactor and the hot paths pay no call.
**
** Both kinds of stream watch a socket with a uv_poll and call these
** themselves: the reactor's streams own their fd, the binding's use
** Python's; what they buffer between readiness events is streambuf.h
** (docs/twisted.md, "One stream layer").
**
** Error convention: a negative errno, never errno itself; EINTR is retried
** here, and "would block" is -EAGAIN whatever the kernel said (EAGAIN,
** EWOULDBLOCK, ENOBUFS for a full send buffer).
*/
#ifndef AME_SOCKIO_H
#define AME_SOCKIO_H

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* accept4() one connection from listening socket lfd, non-blocking and
** close-on-exec; sa and len (may be NULL) get the peer's address.  Return
** the new fd; -EAGAIN when none is left; -ECONNABORTED when this one is
** gone but others may follow (as Twisted: a peer that went away before we
** took it, EPROTO, and EPERM from a firewall rule, are not errors of the
** listener: go on accepting); or another -errno, an error of the listener
** (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) that should pause accepting. */
static inline int ame__sock_accept(int lfd, struct sockaddr_storage *sa,
                                   socklen_t *len) {
  for (;;) {
    int fd = accept4(lfd, (struct sockaddr *)sa, len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) return -EAGAIN;
    if (e == ECONNABORTED || e == EPROTO || e == EPERM) return -ECONNABORTED;
    return -e;
  }
}

/* Accepts per readiness: how many connections one readable event of a
** listening socket takes at most before the loop serves others. */
#define AME__ACCEPT_BATCH 64

/* What ame__sock_accept_batch hands each connection to: take owns fd from
** then on; sa and len are the peer's address (sa NULL unless asked for).
** Return 0 to go on accepting, nonzero to stop. */
typedef int (*ame__accept_take)(void *arg, int fd,
                                const struct sockaddr_storage *sa,
                                socklen_t len);

/* Accept up to max connections from listening socket lfd, each handed to
** take(arg, ...), with the peer's address if want_addr.  A connection gone
** before it was taken (-ECONNABORTED of ame__sock_accept) is skipped and
** counts against max.  Return 0 once none is left (-EAGAIN), 1 if it
** stopped (max taken, or take said so: more may be waiting), or the
** listener's own error (a -errno: EMFILE, ENFILE, ENOBUFS, ENOMEM, ...),
** on which the caller pauses accepting. */
static inline int ame__sock_accept_batch(int lfd, int max, int want_addr,
                                         ame__accept_take take, void *arg) {
  for (int i = 0; i < max; i++) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int fd = ame__sock_accept(lfd, want_addr ? &sa : NULL,
                              want_addr ? &len : NULL);
    if (fd == -EAGAIN) return 0;
    if (fd == -ECONNABORTED) continue; /* not the listener's error */
    if (fd < 0) return fd;
    if (take(arg, fd, want_addr ? &sa : NULL, want_addr ? len : 0)) return 1;
  }
  return 1;
}

/* Read once without blocking: recv(), or read() for a pipe (is_pipe).
** Return the bytes read (> 0), 0 at end of stream, -EAGAIN when nothing is
** there, or another -errno. */
static inline ssize_t ame__sock_recv(int fd, int is_pipe, void *buf,
                                     size_t n) {
  for (;;) {
    ssize_t r = is_pipe ? read(fd, buf, n) : recv(fd, buf, n, MSG_DONTWAIT);
    if (r >= 0) return r;
    int e = errno;
    if (e == EINTR) continue;
    return e == EAGAIN || e == EWOULDBLOCK ? -EAGAIN : -e;
  }
}

/* Send once without blocking and without SIGPIPE.  Return the bytes sent
** (> 0, possibly fewer than n), -EAGAIN when the kernel's buffer is full,
** or another -errno (-EPIPE for a send that took nothing). */
static inline ssize_t ame__sock_send(int fd, const void *p, size_t n) {
  for (;;) {
    ssize_t r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r > 0) return r;
    if (r == 0) return n == 0 ? 0 : -EPIPE;
    int e = errno;
    if (e == EINTR) continue;
    return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS ? -EAGAIN : -e;
  }
}

/* ame__sock_send for iovcnt buffers at once (sendmsg). */
static inline ssize_t ame__sock_sendv(int fd, struct iovec *iov,
                                      int iovcnt) {
  struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
  for (;;) {
    ssize_t r = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r > 0) return r;
    if (r == 0) return -EPIPE;
    int e = errno;
    if (e == EINTR) continue;
    return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS ? -EAGAIN : -e;
  }
}

#endif
