/*
** reactor/src/udp.c — UDP sockets: each datagram received is a callback,
** each send an effect carried out at commit.
**
** ame_udp_bind() makes and binds the socket at once, on the calling
** thread, so that a bind error and the port come back directly; at commit
** an op hands it to the owner's loop (the calling worker, else round-robin),
** and an attempt that aborts closes it instead.  Only the owner touches
** the libuv handle: it reads each datagram into the worker's one read
** buffer and runs the callback as a transaction there.  A send is an op
** with the datagram copied in; the owner sends it at once, and queues it
** in libuv only when the socket would block.  The descriptor and the port
** are fixed at bind, so any thread may read them (ame_udp_fd,
** ame_udp_port).  A group membership change is made on the descriptor at
** once outside a transaction; inside one it is an op, as a send is, so
** that an attempt that aborts changes nothing.
*/
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ame_udp {
  ame_handle_t h;
  uv_udp_t u;
  ame_udp_recv_cb cb;
  int fd;
  int port;
};

static void udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  struct worker *w = h->loop->data;
  buf->base = w->readbuf;
  buf->len = 65536;
}

static void udp_recv(uv_udp_t *uu, ssize_t n, const uv_buf_t *buf,
                     const struct sockaddr *from, unsigned flags) {
  ame_udp_t *u = uu->data;
  struct worker *w = u->h.w;
  (void)flags;
  if (n < 0) {
    ame__log(u->h.r, "udp receive: %s", uv_strerror((int)n));
    return;
  }
  if (from == NULL) return; /* nothing more to read */
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, u->h.name ? u->h.name : "udp");
    rc = u->cb(w->tx, u, buf->base, (size_t)n, from);
  }
  ame__cb_done(w, &u->h, "udp callback", rc);
}

static void udp_stop(ame_handle_t *h) {
  ame_udp_t *u = (ame_udp_t *)h;
  if (h->state == HS_OPEN) uv_udp_recv_stop(&u->u);
  ame__close_uv(h, (uv_handle_t *)&u->u);
}

static int op_udp_start(struct op *op) {
  ame_udp_t *u = (ame_udp_t *)op->h;
  struct worker *w = u->h.w;
  if (u->h.state != HS_NEW) return 0;
  uv_udp_init(&w->loop, &u->u);
  u->u.data = u;
  u->h.state = HS_OPEN;
  ame__handle_link(&u->h);
  int rc = uv_udp_open(&u->u, u->fd);
  if (rc == 0 && !w->stopping)
    rc = uv_udp_recv_start(&u->u, udp_alloc, udp_recv);
  if (rc != 0 || w->stopping) {
    if (rc) ame__log(u->h.r, "udp start: %s", uv_strerror(rc));
    udp_stop(&u->h);
  }
  return 0;
}

static void udp_undo(void *arg) {
  ame_udp_t *u = arg;
  close(u->fd);
  u->fd = -1;
}

int ame_udp_bind(ame_reactor_t *r, const char *host, int port, int flags,
                 ame_udp_recv_cb cb, void *data, ame_udp_t **out) {
  if (r == NULL || cb == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_storage sa;
  int rc = ame__parse_addr(host, port, &sa);
  if (rc) return rc;
  int fd = socket(sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  if (flags & AME_TCP_REUSEPORT) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  }
  socklen_t len = sa.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                           : sizeof(struct sockaddr_in);
  if (bind(fd, (struct sockaddr *)&sa, len) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  ame_udp_t *u = calloc(1, sizeof *u);
  if (u == NULL) {
    close(fd);
    return -ENOMEM;
  }
  ame__handle_init(&u->h, H_UDP, r, ame__home(r), data);
  u->h.on_stop = udp_stop;
  u->cb = cb;
  u->fd = fd;
  struct sockaddr_storage got;
  len = sizeof got;
  getsockname(fd, (struct sockaddr *)&got, &len);
  u->port = ntohs(got.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *)&got)->sin6_port
                      : ((struct sockaddr_in *)&got)->sin_port);
  rc = ame__handle_start(&u->h, op_udp_start, udp_undo, u);
  if (rc) {
    udp_undo(u);
    free(u);
    return rc;
  }
  *out = u;
  return 0;
}

static void udp_sent(uv_udp_send_t *req, int status) {
  struct op *op = req->data;
  if (status < 0 && status != UV_ECANCELED)
    ame__log(op->h->r, "udp send: %s", uv_strerror(status));
  free(req);
  ame_handle_t *h = op->h;
  free(op);
  ame__handle_unref(h);
}

static int op_udp_send(struct op *op) {
  ame_udp_t *u = (ame_udp_t *)op->h;
  if (u->h.state != HS_OPEN) return 0;
  uv_buf_t b = uv_buf_init(op->data, (unsigned)op->len);
  const struct sockaddr *to = (const struct sockaddr *)&op->sa;
  int n = uv_udp_try_send(&u->u, &b, 1, to);
  if (n >= 0) return 0;
  if (n != UV_EAGAIN) {
    ame__log(u->h.r, "udp send: %s", uv_strerror(n));
    return 0;
  }
  uv_udp_send_t *req = malloc(sizeof *req);
  if (req == NULL) return 0;
  req->data = op;
  if (uv_udp_send(req, &u->u, &b, 1, to, udp_sent) != 0) {
    free(req);
    return 0;
  }
  return 1;
}

int ame_udp_send(ame_udp_t *u, const struct sockaddr *to, const void *data,
                 size_t len) {
  if (u == NULL || to == NULL || (data == NULL && len)) return -EINVAL;
  if (len > 65507) return -EMSGSIZE;
  struct op *op = ame__op_new(op_udp_send, &u->h, NULL, len);
  if (op == NULL) return -ENOMEM;
  memset(&op->sa, 0, sizeof op->sa);
  memcpy(&op->sa, to,
         to->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in));
  if (len) memcpy(op->data, data, len);
  return ame__op_submit(op);
}

int ame_udp_port(const ame_udp_t *u) { return u->port; }
int ame_udp_fd(const ame_udp_t *u) { return u->fd; }

/* The membership change asked for by a transaction that committed, on
** the owner: a socket closed meanwhile is left alone (its descriptor may
** be another's by now); a failure is logged, the caller having had 0. */
static int op_membership(struct op *op) {
  ame_udp_t *u = (ame_udp_t *)op->h;
  if (u->h.state != HS_OPEN && u->h.state != HS_NEW) return 0;
  if (setsockopt(u->fd, (int)op->a, (int)op->b, op->data,
                 (socklen_t)op->len) != 0)
    ame__log(u->h.r, "udp membership: %s", strerror(errno));
  return 0;
}

int ame_udp_membership(ame_udp_t *u, const char *group, const char *iface,
                       int join) {
  if (u == NULL || group == NULL) return -EINVAL;
  struct in_addr g4, i4 = {htonl(INADDR_ANY)};
  struct in6_addr g6;
  struct ip_mreq m4;
  struct ipv6_mreq m6;
  int level, name;
  const void *m;
  socklen_t len;
  if (inet_pton(AF_INET, group, &g4) == 1) {
    if (iface && inet_pton(AF_INET, iface, &i4) != 1) return -EINVAL;
    m4 = (struct ip_mreq){g4, i4};
    level = IPPROTO_IP;
    name = join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP;
    m = &m4;
    len = sizeof m4;
  } else if (inet_pton(AF_INET6, group, &g6) == 1) {
    m6 = (struct ipv6_mreq){.ipv6mr_multiaddr = g6};
    if (iface) m6.ipv6mr_interface = if_nametoindex(iface);
    level = IPPROTO_IPV6;
    name = join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP;
    m = &m6;
    len = sizeof m6;
  } else {
    return -EINVAL;
  }
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    struct op *op = ame__op_new(op_membership, &u->h, NULL, len);
    if (op == NULL) return LOAD(&u->h.refs) == 0 ? -EBADF : -ENOMEM;
    op->a = (uint64_t)level;
    op->b = (uint64_t)name;
    memcpy(op->data, m, len);
    return ame__op_submit(op);
  }
  return setsockopt(u->fd, level, name, m, len) == 0 ? 0 : -errno;
}

void ame_udp_close(ame_udp_t *u) { ame__handle_stop(&u->h); }
