/*
** reactor/src/misc.c — timers, UDP, signals, name resolution and fd
** watches: the handles whose callbacks are not stream events.
**
** Timer callbacks are jobs on their worker's ordered timer queue: they run
** one at a time in the order the loop fired them (deadline, then start
** order), on the owner or on an idle worker that takes the queue's head.
*/
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Close a handle's libuv handle on its owner, then drop the open ref. */
static void closed_cb(uv_handle_t *hd) {
  ame_handle_t *h = hd->data;
  h->state = HS_CLOSED;
  ame__handle_unlink(h);
  ame__handle_unref(h);
}

static void close_uv(ame_handle_t *h, uv_handle_t *hd) {
  if (h->state != HS_OPEN) return;
  h->state = HS_CLOSING;
  uv_close(hd, closed_cb);
}

/* ------------------------------------------------------------------------
** Timers.
*/

enum { T_ACTIVE, T_FIRING, T_DONE, T_CANCELLED };

struct ame_timer {
  ame_handle_t h;
  uv_timer_t t;
  ame_timer_cb cb;
  uint64_t timeout, repeat;
  int tstate; /* atomic */
};

static void timer_stop(ame_handle_t *h) {
  ame_timer_t *t = (ame_timer_t *)h;
  STORE(&t->tstate, T_CANCELLED);
  close_uv(h, (uv_handle_t *)&t->t);
}

static int op_timer_close(struct op *op) {
  timer_stop(op->h);
  return 0;
}

static int timer_job(ame_tx_t *tx, void *arg, struct job *job) {
  (void)job;
  ame_timer_t *t = arg;
  struct worker *w = ame__current();
  if (LOAD(&t->tstate) == T_CANCELLED) return 0;
  volatile int rc = 0;
  AME_ATOMIC(tx) {
    ame_tx_set_site(tx, t->h.name ? t->h.name : "timer");
    rc = t->cb(tx, t);
  }
  ame__cb_done(w, &t->h, "timer callback", rc);
  if (t->repeat == 0) {
    STORE(&t->tstate, T_DONE);
    struct op *op = ame__op_new(op_timer_close, &t->h, NULL, 0);
    if (op) ame__op_submit(op);
  }
  return rc;
}

static void timer_fire(uv_timer_t *ut) {
  ame_timer_t *t = ut->data;
  int expect = T_ACTIVE;
  if (t->repeat == 0 &&
      !__atomic_compare_exchange_n(&t->tstate, &expect, T_FIRING, 0,
                                   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
    return;
  if (t->repeat && LOAD(&t->tstate) != T_ACTIVE) return;
  struct job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    ame__log(t->h.r, "out of memory firing a timer");
    return;
  }
  job->fn = timer_job;
  job->arg = t;
  job->h = &t->h;
  ame__handle_ref(&t->h);
  if (ame__job_push(t->h.w, &t->h.w->timers, job) != 0) {
    ame__handle_unref(&t->h);
    free(job);
  }
}

static int op_timer_start(struct op *op) {
  ame_timer_t *t = (ame_timer_t *)op->h;
  struct worker *w = t->h.w;
  if (t->h.state != HS_NEW) return 0;
  uv_timer_init(&w->loop, &t->t);
  t->t.data = t;
  t->h.state = HS_OPEN;
  ame__handle_link(&t->h);
  if (w->stopping || LOAD(&t->tstate) == T_CANCELLED) {
    timer_stop(&t->h);
    return 0;
  }
  uv_timer_start(&t->t, timer_fire, t->timeout, t->repeat);
  return 0;
}

int ame_timer_start(ame_reactor_t *r, uint64_t timeout_ms,
                    uint64_t repeat_ms, ame_timer_cb cb, void *data,
                    ame_timer_t **out) {
  if (r == NULL || cb == NULL) return -EINVAL;
  ame_timer_t *t = calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  struct worker *w = ame__current() && ame__current()->r == r
                         ? ame__current()
                         : &r->workers[0];
  ame__handle_init(&t->h, H_TIMER, r, w, data);
  t->h.on_stop = timer_stop;
  t->cb = cb;
  t->timeout = timeout_ms;
  t->repeat = repeat_ms;
  struct op *op = ame__op_new(op_timer_start, &t->h, NULL, 0);
  if (op == NULL) {
    free(t);
    return -ENOMEM;
  }
  int rc = ame__publish(op, NULL, NULL);
  if (rc) {
    op->h = NULL;
    free(op);
    free(t);
    return rc;
  }
  if (out) *out = t;
  return 0;
}

static void cancel_now(void *arg) {
  ame_timer_t *t = arg;
  int expect = T_ACTIVE;
  if (!__atomic_compare_exchange_n(&t->tstate, &expect, T_CANCELLED, 0,
                                   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
    return;
  struct op *op = ame__op_new(op_timer_close, &t->h, NULL, 0);
  if (op) ame__op_submit(op);
}

int ame_timer_cancel(ame_timer_t *t) {
  if (t == NULL) return -EINVAL;
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    if (LOAD(&t->tstate) != T_ACTIVE) return -ENOENT;
    return ame_tx_on_commit(tx, cancel_now, t);
  }
  if (LOAD(&t->tstate) != T_ACTIVE) return -ENOENT;
  cancel_now(t);
  return 0;
}

/* ------------------------------------------------------------------------
** UDP.
*/

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
  close_uv(h, (uv_handle_t *)&u->u);
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
  struct op *op = ame__op_new(op_udp_start, &u->h, NULL, 0);
  if (op == NULL || (rc = ame__publish(op, udp_undo, u)) != 0) {
    if (op) {
      op->h = NULL;
      free(op);
    }
    udp_undo(u);
    free(u);
    return rc ? rc : -ENOMEM;
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

int ame_udp_membership(ame_udp_t *u, const char *group, const char *iface,
                       int join) {
  if (u == NULL || group == NULL) return -EINVAL;
  struct in_addr g4, i4 = {htonl(INADDR_ANY)};
  struct in6_addr g6;
  if (inet_pton(AF_INET, group, &g4) == 1) {
    if (iface && inet_pton(AF_INET, iface, &i4) != 1) return -EINVAL;
    struct ip_mreq m = {g4, i4};
    return setsockopt(u->fd, IPPROTO_IP,
                      join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &m,
                      sizeof m) == 0
               ? 0
               : -errno;
  }
  if (inet_pton(AF_INET6, group, &g6) == 1) {
    struct ipv6_mreq m = {.ipv6mr_multiaddr = g6};
    if (iface) m.ipv6mr_interface = if_nametoindex(iface);
    return setsockopt(u->fd, IPPROTO_IPV6,
                      join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP, &m,
                      sizeof m) == 0
               ? 0
               : -errno;
  }
  return -EINVAL;
}

static int op_udp_close(struct op *op) {
  udp_stop(op->h);
  return 0;
}

void ame_udp_close(ame_udp_t *u) {
  struct op *op = ame__op_new(op_udp_close, &u->h, NULL, 0);
  if (op) ame__op_submit(op);
}

/* ------------------------------------------------------------------------
** Signals.
*/

struct ame_signal {
  ame_handle_t h;
  uv_signal_t s;
  ame_signal_cb cb;
  int signum;
};

static void signal_cb(uv_signal_t *us, int signum) {
  ame_signal_t *s = us->data;
  struct worker *w = s->h.w;
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, s->h.name ? s->h.name : "signal");
    rc = s->cb(w->tx, s, signum);
  }
  ame__cb_done(w, &s->h, "signal callback", rc);
}

static void signal_stop_h(ame_handle_t *h) {
  ame_signal_t *s = (ame_signal_t *)h;
  if (h->state == HS_OPEN) uv_signal_stop(&s->s);
  close_uv(h, (uv_handle_t *)&s->s);
}

static int op_signal_start(struct op *op) {
  ame_signal_t *s = (ame_signal_t *)op->h;
  struct worker *w = s->h.w;
  if (s->h.state != HS_NEW) return 0;
  uv_signal_init(&w->loop, &s->s);
  s->s.data = s;
  s->h.state = HS_OPEN;
  ame__handle_link(&s->h);
  int rc = w->stopping ? 0 : uv_signal_start(&s->s, signal_cb, s->signum);
  if (rc != 0 || w->stopping) {
    if (rc) ame__log(s->h.r, "signal %d: %s", s->signum, uv_strerror(rc));
    signal_stop_h(&s->h);
  } else {
    /* A signal watcher alone does not keep the reactor running. */
    uv_unref((uv_handle_t *)&s->s);
  }
  return 0;
}

int ame_signal_start(ame_reactor_t *r, int signum, ame_signal_cb cb,
                     void *data, ame_signal_t **out) {
  if (r == NULL || cb == NULL || signum <= 0 || signum >= 65) return -EINVAL;
  ame_signal_t *s = calloc(1, sizeof *s);
  if (s == NULL) return -ENOMEM;
  ame__handle_init(&s->h, H_SIGNAL, r, &r->workers[0], data);
  s->h.on_stop = signal_stop_h;
  s->cb = cb;
  s->signum = signum;
  struct op *op = ame__op_new(op_signal_start, &s->h, NULL, 0);
  int rc = op ? ame__publish(op, NULL, NULL) : -ENOMEM;
  if (rc) {
    if (op) {
      op->h = NULL;
      free(op);
    }
    free(s);
    return rc;
  }
  if (out) *out = s;
  return 0;
}

static int op_signal_stop(struct op *op) {
  signal_stop_h(op->h);
  return 0;
}

void ame_signal_stop(ame_signal_t *s) {
  struct op *op = ame__op_new(op_signal_stop, &s->h, NULL, 0);
  if (op) ame__op_submit(op);
}

/* ------------------------------------------------------------------------
** Name resolution.
*/

struct resolve {
  uv_getaddrinfo_t req;
  ame_reactor_t *r;
  ame_resolve_cb cb;
  void *data;
  char *host, *service;
  struct addrinfo hints;
  int has_hints;
};

static void resolve_free(struct resolve *q) {
  free(q->host);
  free(q->service);
  free(q);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct resolve *q = req->data;
  struct worker *w = ame__current();
  volatile int rc = 0;
  if (!LOAD(&q->r->quiet)) {
    AME_ATOMIC(w->tx) {
      ame_tx_set_site(w->tx, "resolve");
      rc = q->cb(w->tx, status, res, q->data);
    }
  }
  ame__cb_done(w, NULL, "resolve callback", rc);
  uv_freeaddrinfo(res);
  resolve_free(q);
}

static int op_resolve(struct op *op) {
  struct resolve *q = op->p;
  struct worker *w = op->w;
  q->req.data = q;
  int rc = uv_getaddrinfo(&w->loop, &q->req, resolved, q->host, q->service,
                          q->has_hints ? &q->hints : NULL);
  if (rc != 0) {
    volatile int rc2 = 0;
    if (!LOAD(&q->r->quiet)) {
      AME_ATOMIC(w->tx) { rc2 = q->cb(w->tx, rc, NULL, q->data); }
    }
    ame__cb_done(w, NULL, "resolve callback", rc2);
    resolve_free(q);
  }
  return 0;
}

static void resolve_undo(void *arg) { resolve_free(arg); }

int ame_resolve(ame_reactor_t *r, const char *host, const char *service,
                const struct addrinfo *hints, ame_resolve_cb cb, void *data) {
  if (r == NULL || cb == NULL || (host == NULL && service == NULL))
    return -EINVAL;
  struct resolve *q = calloc(1, sizeof *q);
  if (q == NULL) return -ENOMEM;
  q->r = r;
  q->cb = cb;
  q->data = data;
  q->host = host ? strdup(host) : NULL;
  q->service = service ? strdup(service) : NULL;
  if (hints) {
    q->hints = *hints;
    q->hints.ai_addr = NULL;
    q->hints.ai_canonname = NULL;
    q->hints.ai_next = NULL;
    q->has_hints = 1;
  }
  struct op *op = ame__op_new(op_resolve, NULL, ame__home(r), 0);
  if (op == NULL || (host && !q->host) || (service && !q->service)) {
    free(op);
    resolve_free(q);
    return -ENOMEM;
  }
  op->p = q;
  int rc = ame__publish(op, resolve_undo, q);
  if (rc) {
    free(op);
    resolve_free(q);
  }
  return rc;
}

/* ------------------------------------------------------------------------
** Watching file descriptors.
*/

struct ame_poll {
  ame_handle_t h;
  uv_poll_t p;
  ame_poll_cb cb;
  int fd;
  int events;
  int init_failed; /* libuv refused the fd: dead until stopped */
};

static int to_uv(int ev) {
  return ((ev & AME_READABLE) ? UV_READABLE : 0) |
         ((ev & AME_WRITABLE) ? UV_WRITABLE : 0) |
         ((ev & AME_DISCONNECT) ? UV_DISCONNECT : 0);
}

static void poll_cb(uv_poll_t *up, int status, int events) {
  ame_poll_t *p = up->data;
  struct worker *w = p->h.w;
  int ev = ((events & UV_READABLE) ? AME_READABLE : 0) |
           ((events & UV_WRITABLE) ? AME_WRITABLE : 0) |
           ((events & UV_DISCONNECT) ? AME_DISCONNECT : 0);
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, p->h.name ? p->h.name : "poll");
    rc = p->cb(w->tx, p, status, ev);
  }
  ame__cb_done(w, &p->h, "poll callback", rc);
}

static void poll_stop_h(ame_handle_t *h) {
  ame_poll_t *p = (ame_poll_t *)h;
  if (p->init_failed) { /* never a libuv handle: just let it go */
    p->init_failed = 0;
    h->state = HS_CLOSED;
    ame__handle_unlink(h);
    ame__handle_unref(h);
    return;
  }
  if (h->state == HS_OPEN) uv_poll_stop(&p->p);
  close_uv(h, (uv_handle_t *)&p->p);
}

static int op_poll(struct op *op) {
  ame_poll_t *p = (ame_poll_t *)op->h;
  struct worker *w = p->h.w;
  if (op->a == 0) { /* start */
    if (p->h.state != HS_NEW) return 0;
    int rc = uv_poll_init(&w->loop, &p->p, p->fd);
    if (rc != 0) {
      /* The program still holds the pointer: keep the handle (dead) until
      ** ame_poll_stop() or the reactor's stop. */
      ame__log(p->h.r, "watching fd %d: %s", p->fd, uv_strerror(rc));
      p->init_failed = 1;
      p->h.state = HS_CLOSING;
      ame__handle_link(&p->h);
      return 0;
    }
    p->p.data = p;
    p->h.state = HS_OPEN;
    ame__handle_link(&p->h);
    if (w->stopping) {
      poll_stop_h(&p->h);
      return 0;
    }
  }
  if (p->h.state != HS_OPEN) return 0;
  int ev = (int)op->b;
  if (ev)
    uv_poll_start(&p->p, to_uv(ev), poll_cb);
  else
    uv_poll_stop(&p->p);
  return 0;
}

int ame_poll_start(ame_reactor_t *r, int fd, int events, ame_poll_cb cb,
                   void *data, ame_poll_t **out) {
  if (r == NULL || fd < 0 || cb == NULL || out == NULL) return -EINVAL;
  /* What epoll would refuse, refused here, where the caller sees it. */
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return -EPERM;
  ame_poll_t *p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  struct worker *w = ame__current() && ame__current()->r == r
                         ? ame__current()
                         : &r->workers[0];
  ame__handle_init(&p->h, H_POLL, r, w, data);
  p->h.on_stop = poll_stop_h;
  p->cb = cb;
  p->fd = fd;
  p->events = events;
  struct op *op = ame__op_new(op_poll, &p->h, NULL, 0);
  if (op == NULL) {
    free(p);
    return -ENOMEM;
  }
  op->a = 0;
  op->b = (uint64_t)events;
  int rc = ame__publish(op, NULL, NULL);
  if (rc) {
    op->h = NULL;
    free(op);
    free(p);
    return rc;
  }
  *out = p;
  return 0;
}

int ame_poll_change(ame_poll_t *p, int events) {
  if (p == NULL) return -EINVAL;
  struct op *op = ame__op_new(op_poll, &p->h, NULL, 0);
  if (op == NULL) return -ENOMEM;
  op->a = 1;
  op->b = (uint64_t)events;
  return ame__op_submit(op);
}

static int op_poll_stop(struct op *op) {
  poll_stop_h(op->h);
  return 0;
}

void ame_poll_stop(ame_poll_t *p) {
  struct op *op = ame__op_new(op_poll_stop, &p->h, NULL, 0);
  if (op) ame__op_submit(op);
}
