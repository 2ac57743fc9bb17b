/*
** reactor/src/stream.c — streams (TCP, Unix sockets, child stdio) and
** listeners.
**
** A stream is a socket watched by a uv_poll on the worker that owns it,
** for its whole life, so its callbacks run one at a time and in event
** order.  It reads and writes itself, with the socket calls of sockio.h,
** and what it cannot send at once waits in its output queue (streambuf.h,
** the module the Python binding's streams buffer with too).  Reading:
** readable, recv() into the worker's buffer (up to 32 times while reads
** fill it) and hand each read to on_data.  Writing: a write asked for
** inside a callback becomes an op that runs after the commit; on the owner
** it sends at once if nothing waits, and queues the rest, which POLLOUT
** flushes with writev.  The bytes queued are counted; over the high
** watermark the stream stops reading until the queue falls under the low
** one, so a peer that sends faster than it reads cannot make the process
** buffer without bound.  The stream owns its fd: closed when the stream
** closes (a reset sets SO_LINGER 0 first), one descriptor per connection.
** A close asked for lingers: once the queue is flushed the stream shuts
** down its writing side and reads on, discarding, and closes its fd only
** at the peer's EOF, or once the peer has acknowledged every byte (the
** socket's send queue is empty) with no input waiting, or at the drain
** timeout.  Closing a socket with unread input makes the kernel send a
** reset instead of a FIN, and a reset throws away what the peer has not
** received yet: the end of what was written.
** A child's stdin, stdout and stderr are streams over a socket pair whose
** other end the child inherits.
**
** A listener accepts on its own socket with a uv_poll on its worker (one
** per worker with SO_REUSEPORT) and hands each new socket to the worker
** with the fewest open streams.  accept() failing for lack of descriptors
** (EMFILE, ENFILE) or memory pauses accepting for a while, then retries;
** the pending connections wait in the kernel's backlog meanwhile.
*/
#include "internal.h"
#include "sockio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define ACCEPT_RETRY_MS 100   /* pause after EMFILE and friends */
#define READS_PER_EVENT 32    /* reads per readiness while they fill the
                                 buffer, as libuv's streams */
#define LINGER_CHECK_MS 10    /* a lingering stream looks at its send
                                 queue this often */

struct ame_listener {
  ame_handle_t h;
  struct ame_listener *group;  /* the first of a REUSEPORT group */
  struct ame_listener *next_in_group;
  int fd;
  int is_unix;
  char *path;                  /* Unix: unlinked at close */
  const ame_stream_cbs_t *cbs;
  uv_poll_t poll;
  uv_timer_t retry;
  int polling;
  uint64_t last_log;           /* loop time of the last EMFILE log line */
  int port;
  int inits;                   /* uv handles to close */
};

/* ------------------------------------------------------------------------
** Running stream callbacks.
*/

static void stream_close(ame_stream_t *s, int status, int reset);

/* Duplicate fd for a handle of ours (close-on-exec, non-blocking).  Return
** the new descriptor or -errno. */
static int fcntl_dup(int fd) {
  int n = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (n < 0) return -errno;
  int fl = fcntl(n, F_GETFL);
  if (fl < 0 || fcntl(n, F_SETFL, fl | O_NONBLOCK) != 0) {
    int e = -errno;
    close(n);
    return e;
  }
  return n;
}

static void stream_failed(ame_stream_t *s, int rc) {
  if (rc < 0) stream_close(s, rc, 1);
}

static int cb_open(ame_stream_t *s) {
  struct worker *w = s->h.w;
  if (s->cbs->on_open == NULL) return 0;
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, s->h.name ? s->h.name : "on_open");
    rc = s->cbs->on_open(w->tx, s);
  }
  ame__cb_done(w, &s->h, "on_open", rc);
  return rc;
}

static int cb_data(ame_stream_t *s, const char *data, size_t len) {
  struct worker *w = s->h.w;
  if (s->cbs->on_data == NULL) return 0;
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, s->h.name ? s->h.name : "on_data");
    rc = s->cbs->on_data(w->tx, s, data, len);
  }
  ame__cb_done(w, &s->h, "on_data", rc);
  return rc;
}

static int cb_simple(ame_stream_t *s, int (*fn)(ame_tx_t *, ame_stream_t *),
                     const char *what) {
  struct worker *w = s->h.w;
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, s->h.name ? s->h.name : what);
    rc = fn(w->tx, s);
  }
  ame__cb_done(w, &s->h, what, rc);
  return rc;
}

static void cb_close(ame_stream_t *s, int status) {
  struct worker *w = s->h.w;
  if (s->cbs->on_close == NULL || LOAD(&s->h.r->quiet)) return;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, s->h.name ? s->h.name : "on_close");
    s->cbs->on_close(w->tx, s, status);
  }
  ame__cb_done(w, &s->h, "on_close", 0);
}

/* ------------------------------------------------------------------------
** The poll.
*/

static void poll_cb(uv_poll_t *p, int status, int events);

/* Whether s reads now.  (After the peer's EOF there is nothing more to
** read: reading again would report the EOF again.)  A lingering stream
** reads whatever its program asked, to find the EOF. */
static int wants_read(const ame_stream_t *s) {
  if (s->h.state != HS_OPEN || s->eof || s->write_only) return 0;
  return s->lingering ||
         (!s->paused_user && !s->paused_wm && !s->want_close);
}

/* Owner thread.  Watch for what s needs: writable while connecting or
** while output waits, readable while it reads. */
static void update_poll(ame_stream_t *s) {
  if (s->h.state != HS_OPEN) return;
  int ev = 0;
  if (!s->connected) {
    ev = UV_WRITABLE;
  } else {
    if (wants_read(s)) ev |= UV_READABLE;
    if (s->out.head) ev |= UV_WRITABLE;
  }
  if (ev == s->polling) return;
  int rc = ev ? uv_poll_start(&s->poll, ev, poll_cb) : uv_poll_stop(&s->poll);
  if (rc != 0) {
    stream_close(s, rc, 0);
    return;
  }
  s->polling = ev;
}

/* ------------------------------------------------------------------------
** Closing.
*/

static void linger_closed(uv_handle_t *hd) { free(hd); }

static void close_cb(uv_handle_t *hd) {
  ame_stream_t *s = hd->data;
  s->h.state = HS_CLOSED;
  ame__handle_unlink(&s->h);
  SUB(&s->h.w->nstreams, 1);
  if (s->opened) cb_close(s, s->closing_status);
  free(s->path);
  s->path = NULL;
  if (s->holds != NULL) ame__handle_unref(s->holds);
  s->holds = NULL;
  ame__handle_unref(&s->h);
}

/* Owner thread.  Close now, dropping what is queued (reset: a TCP RST). */
static void stream_close(ame_stream_t *s, int status, int reset) {
  if (s->h.state != HS_OPEN) return;
  s->h.state = HS_CLOSING;
  s->closing_status = status;
  ame__oq_clear(&s->out);
  STORE(&s->queued, 0);
  if (s->linger != NULL) {
    uv_close((uv_handle_t *)s->linger, linger_closed);
    s->linger = NULL;
  }
  uv_close((uv_handle_t *)&s->poll, close_cb); /* stops watching the fd */
  if (reset && s->kind == K_TCP) {
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(s->sock, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  /* The accessors answer -EBADF from here on, not for the next socket to
  ** get this descriptor's number (on_close and other threads may ask). */
  STORE(&s->fd, -1);
  close(s->sock);
}

static void do_read(ame_stream_t *s);

/* Every LINGER_CHECK_MS while s lingers: close at the deadline, or once
** the peer has every byte (SIOCOUTQ: TCP's unacknowledged bytes, a Unix
** socket's bytes its peer has not read) and the input is drained.  A
** close then sends no reset (nothing unread), and the peer keeps what it
** received even if what it sends later is answered by one. */
static void linger_cb(uv_timer_t *t) {
  ame_stream_t *s = t->data;
  if (uv_now(t->loop) >= s->linger_end) {
    stream_close(s, 0, 0);
    return;
  }
  int outq = 0;
  if (ioctl(s->sock, SIOCOUTQ, &outq) != 0 || outq != 0) return;
  do_read(s); /* to EAGAIN (it closes at the EOF) */
  if (s->h.state == HS_OPEN) stream_close(s, 0, 0);
}

/* Owner thread: s's queue is flushed and its close was asked for.  Close
** at once if nothing more can arrive (the peer's EOF was read, a connect
** is under way, or s never reads); else shut down writing (the peer gets
** a FIN after the last byte) and linger: read, discarding, until the
** peer's EOF (do_read closes), an error, or linger_cb closes. */
static void close_flushed(ame_stream_t *s) {
  if (s->lingering) return;
  if (s->eof || !s->connected || s->write_only) {
    stream_close(s, 0, 0);
    return;
  }
  uv_timer_t *t = malloc(sizeof *t);
  if (t == NULL || uv_timer_init(&s->h.w->loop, t) != 0) {
    free(t);
    stream_close(s, 0, 0);
    return;
  }
  t->data = s;
  s->linger_end = uv_now(t->loop) + s->h.r->drain_timeout_ms;
  uv_timer_start(t, linger_cb, LINGER_CHECK_MS, LINGER_CHECK_MS);
  s->linger = t;
  s->lingering = 1;
  if (!s->shut_done) {
    s->shut_done = 1;
    shutdown(s->sock, SHUT_WR);
  }
  update_poll(s);
}

/* Called when the output queue may have emptied. */
static void flushed(ame_stream_t *s) {
  if (s->out.head != NULL || s->h.state != HS_OPEN) return;
  if (s->want_close) {
    close_flushed(s);
  } else if (s->want_shutdown && !s->shut_done) {
    if (!s->connected) return; /* after the connect (connect_done) */
    s->want_shutdown = 0;
    s->shut_done = 1;
    shutdown(s->sock, SHUT_WR);
  }
}

/* ------------------------------------------------------------------------
** Reading.
*/

static void got_eof(ame_stream_t *s) {
  s->eof = 1;
  if (s->cbs->on_eof) {
    stream_failed(s, cb_simple(s, s->cbs->on_eof, "on_eof"));
  } else {
    s->want_close = 1;
    flushed(s);
  }
}

/* Owner thread: s is readable.  A lingering stream discards what it
** reads and closes at the EOF. */
static void do_read(ame_stream_t *s) {
  char *buf = s->h.w->readbuf;
  for (int i = 0; i < READS_PER_EVENT && wants_read(s); i++) {
    ssize_t n = ame__sock_recv(s->sock, 0, buf, AME__READBUF_SIZE);
    if (n == -EAGAIN) return;
    if (n == 0 && s->lingering) {
      stream_close(s, 0, 0);
      return;
    }
    if (n == 0) {
      got_eof(s);
      return;
    }
    if (n < 0) {
      stream_close(s, (int)n, 0);
      return;
    }
    if (!s->lingering) stream_failed(s, cb_data(s, buf, (size_t)n));
    if ((size_t)n < AME__READBUF_SIZE) return; /* the socket is empty */
  }
}

/* ------------------------------------------------------------------------
** Writing.
*/

/* Owner thread: the queue shrank (or was flushed). */
static void sent_some(ame_stream_t *s) {
  STORE(&s->queued, s->out.bytes);
  if (s->paused_wm && s->out.bytes <= LOAD(&s->low)) {
    s->paused_wm = 0;
    if (s->cbs->on_drain)
      stream_failed(s, cb_simple(s, s->cbs->on_drain, "on_drain"));
  }
  flushed(s);
}

/* Owner thread: s is writable. */
static void do_write(ame_stream_t *s) {
  if (s->out.head == NULL) return;
  int rc = ame__oq_flush(&s->out, s->sock, NULL);
  if (rc < 0 && rc != -EAGAIN) {
    stream_close(s, rc, 0);
    return;
  }
  sent_some(s);
}

static int op_write(struct op *op) {
  ame_stream_t *s = (ame_stream_t *)op->h;
  if (s->h.state != HS_OPEN || s->lingering) return 0;
  const char *p = op->data;
  size_t n = op->len;
  if (s->out.head == NULL && s->connected) {
    ssize_t k = ame__sock_send(s->sock, p, n);
    if (k == (ssize_t)n) return 0;
    if (k < 0 && k != -EAGAIN) {
      stream_close(s, (int)k, 0);
      return 0;
    }
    if (k > 0) {
      p += k;
      n -= (size_t)k;
    }
  }
  if (ame__oq_append(&s->out, p, n) != 0) {
    stream_close(s, -ENOMEM, 0);
    return 0;
  }
  STORE(&s->queued, s->out.bytes);
  if (!s->paused_wm && s->out.bytes > LOAD(&s->high)) s->paused_wm = 1;
  update_poll(s);
  return 0;
}

int ame_stream_write(ame_stream_t *s, const void *data, size_t len) {
  if (s == NULL || (data == NULL && len)) return -EINVAL;
  if (len == 0) return 0;
  if (len > UINT32_MAX) return -EINVAL;
  struct op *op = ame__op_new(op_write, &s->h, NULL, len);
  if (op == NULL) return LOAD(&s->h.refs) == 0 ? -EPIPE : -ENOMEM;
  memcpy(op->data, data, len);
  return ame__op_submit(op);
}

/* ------------------------------------------------------------------------
** Events.
*/

/* Owner thread: a connecting stream's socket is writable, or failed. */
static void connect_done(ame_stream_t *s) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(s->sock, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == EINPROGRESS) return;
  if (err) {
    stream_close(s, -err, 0);
    return;
  }
  STORE(&s->fd, s->sock);
  s->connected = 1;
  update_poll(s);
  stream_failed(s, cb_open(s));
  if (s->h.state == HS_OPEN) flushed(s); /* a shutdown asked for meanwhile */
}

static void poll_cb(uv_poll_t *p, int status, int events) {
  ame_stream_t *s = p->data;
  if (s->h.state != HS_OPEN) return;
  if (status < 0) {
    /* POLLERR: libuv stopped the watch.  The reads and sends below meet
    ** the socket's error; else it is restarted. */
    s->polling = 0;
    events = UV_READABLE | UV_WRITABLE;
  }
  if (!s->connected) {
    connect_done(s);
    if (s->h.state == HS_OPEN) update_poll(s);
    return;
  }
  if (events & (UV_READABLE | UV_DISCONNECT)) do_read(s);
  if (s->h.state == HS_OPEN && (events & UV_WRITABLE)) do_write(s);
  if (s->h.state == HS_OPEN && status < 0) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->sock, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err) {
      stream_close(s, -err, 0);
      return;
    }
  }
  update_poll(s);
}

/* ------------------------------------------------------------------------
** Control ops.
*/

enum { C_CLOSE, C_ABORT, C_SHUTDOWN, C_PAUSE, C_RESUME, C_NODELAY };

static int op_control(struct op *op) {
  ame_stream_t *s = (ame_stream_t *)op->h;
  if (s->h.state != HS_OPEN) return 0;
  switch (op->a) {
  case C_CLOSE:
    s->want_close = 1;
    flushed(s);
    break;
  case C_ABORT: stream_close(s, 0, 1); break;
  case C_SHUTDOWN:
    s->want_shutdown = 1;
    flushed(s);
    break;
  case C_PAUSE: s->paused_user = 1; break;
  case C_RESUME: s->paused_user = 0; break;
  case C_NODELAY:
    if (s->kind == K_TCP) {
      int on = (int)op->b;
      setsockopt(s->sock, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    break;
  }
  update_poll(s);
  return 0;
}

static int control(ame_stream_t *s, int what, uint64_t arg) {
  if (s == NULL) return -EINVAL;
  struct op *op = ame__op_new(op_control, &s->h, NULL, 0);
  if (op == NULL) return LOAD(&s->h.refs) == 0 ? -EPIPE : -ENOMEM;
  op->a = (uint64_t)what;
  op->b = arg;
  return ame__op_submit(op);
}

void ame_stream_close(ame_stream_t *s) { control(s, C_CLOSE, 0); }
void ame_stream_abort(ame_stream_t *s) { control(s, C_ABORT, 0); }
void ame_stream_shutdown(ame_stream_t *s) { control(s, C_SHUTDOWN, 0); }
void ame_stream_pause(ame_stream_t *s) { control(s, C_PAUSE, 0); }
void ame_stream_resume(ame_stream_t *s) { control(s, C_RESUME, 0); }
int ame_stream_nodelay(ame_stream_t *s, int on) {
  return control(s, C_NODELAY, (uint64_t)(on != 0));
}

size_t ame_stream_write_queue(const ame_stream_t *s) {
  return LOAD(&s->queued);
}

/* Any thread: the owner reads them at its next write or flush. */
static void set_watermarks(ame_stream_t *s, size_t high, size_t low) {
  if (high == 0) high = LOAD(&s->high);
  if (low == 0) low = LOAD(&s->low);
  if (low > high) low = high;
  STORE(&s->high, high);
  STORE(&s->low, low);
}

static int op_watermarks(struct op *op) {
  set_watermarks((ame_stream_t *)op->h, (size_t)op->a, (size_t)op->b);
  return 0;
}

/* Inside a transaction an op, as the other effects: set at commit (after
** the ops asked before it, before those asked after), never by an attempt
** that aborts. */
void ame_stream_set_watermarks(ame_stream_t *s, size_t high, size_t low) {
  if (s == NULL) return;
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    struct op *op = ame__op_new(op_watermarks, &s->h, NULL, 0);
    if (op == NULL) return; /* closed and gone, or out of memory */
    op->a = (uint64_t)high;
    op->b = (uint64_t)low;
    ame__op_submit(op);
    return;
  }
  set_watermarks(s, high, low);
}

int ame_stream_fd(const ame_stream_t *s) { return LOAD(&s->fd); }

int ame_stream_peername(const ame_stream_t *s, struct sockaddr_storage *sa) {
  socklen_t len = sizeof *sa;
  memset(sa, 0, sizeof *sa);
  return getpeername(LOAD(&s->fd), (struct sockaddr *)sa, &len) == 0 ? 0
                                                                  : -errno;
}

int ame_stream_sockname(const ame_stream_t *s, struct sockaddr_storage *sa) {
  socklen_t len = sizeof *sa;
  memset(sa, 0, sizeof *sa);
  return getsockname(LOAD(&s->fd), (struct sockaddr *)sa, &len) == 0 ? 0
                                                                  : -errno;
}

unsigned ame_stream_worker(const ame_stream_t *s) { return s->h.w->id; }

/* Graceful stop: flush, then close. */
void ame__stream_stop(ame_handle_t *h) {
  ame_stream_t *s = (ame_stream_t *)h;
  if (s->h.state != HS_OPEN) return;
  s->want_close = 1;
  update_poll(s);
  flushed(s);
}

/* The drain timeout passed: close whatever is still open, resetting the
** streams whose writes did not flush.  A lingering one has flushed and
** sent its FIN: it closes as its own linger timer would. */
void ame__streams_abort_all(struct worker *w) {
  ame_handle_t *h = w->handles;
  while (h) {
    ame_handle_t *next = h->next;
    ame_stream_t *s = (ame_stream_t *)h;
    if (h->type == H_STREAM) {
      if (s->lingering) stream_close(s, 0, 0);
      else stream_close(s, -ETIMEDOUT, 1);
    }
    h = next;
  }
}

/* ------------------------------------------------------------------------
** Creating streams.
*/

static ame_stream_t *stream_new(ame_reactor_t *r, struct worker *w, int kind,
                                const ame_stream_cbs_t *cbs, void *data) {
  ame_stream_t *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  ame__handle_init(&s->h, H_STREAM, r, w, data);
  s->h.on_stop = ame__stream_stop;
  s->kind = kind;
  s->cbs = cbs;
  s->high = r->high;
  s->low = r->low;
  s->fd = -1;
  s->sock = -1;
  s->poll.data = s;
  return s;
}

/* Owner thread: watch socket fd (non-blocking) for s, which owns it from
** now on, and make s live (not reading yet: update_poll).  connected: fd
** is connected (else a connect is under way).  Return 0, or a libuv error:
** then s is still HS_NEW and fd is the caller's. */
static int stream_open_fd(ame_stream_t *s, int fd, int connected) {
  struct worker *w = s->h.w;
  int rc = uv_poll_init_socket(&w->loop, &s->poll, fd);
  if (rc != 0) return rc;
  s->poll.data = s;
  s->sock = fd;
  if (connected) STORE(&s->fd, fd);
  s->connected = connected;
  s->h.state = HS_OPEN;
  ame__handle_link(&s->h);
  ADD(&w->nstreams, 1);
  return 0;
}

/* Free a stream that never went live. */
static void stream_discard(ame_stream_t *s) {
  free(s->path);
  free(s);
}

int ame__stream_adopt_fd(struct worker *w, int fd, int is_unix,
                         const ame_stream_cbs_t *cbs, void *data,
                         ame_stream_t **out, int call_open) {
  ame_stream_t *s = stream_new(w->r, w, is_unix ? K_UNIX : K_TCP, cbs, data);
  if (s == NULL) return -ENOMEM;
  int rc = stream_open_fd(s, fd, 1);
  if (rc != 0) {
    stream_discard(s);
    return rc;
  }
  if (out) *out = s;
  if (w->stopping) {
    stream_close(s, -ESHUTDOWN, 1);
    return 0;
  }
  s->opened = 1;
  update_poll(s);
  if (call_open) stream_failed(s, cb_open(s));
  return 0;
}

/* ------------------------------------------------------------------------
** Listeners.
*/

int ame__parse_addr(const char *host, int port, struct sockaddr_storage *sa) {
  memset(sa, 0, sizeof *sa);
  if (port < 0 || port > 65535 || host == NULL) return -EINVAL;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)sa) == 0) return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)sa) == 0) return 0;
  return -EINVAL;
}

struct adopt {
  int fd;
  int is_unix;
  const ame_stream_cbs_t *cbs;
  void *data;
};

static int op_adopt(struct op *op) {
  struct adopt *a = op->p;
  struct worker *w = op->w;
  int rc = ame__stream_adopt_fd(w, a->fd, a->is_unix, a->cbs, a->data, NULL,
                                1);
  if (rc != 0) {
    ame__log(w->r, "worker %u: cannot set up an accepted connection: %s",
             w->id, uv_strerror(rc));
    close(a->fd);
  }
  free(a);
  return 0;
}

static void listener_poll_cb(uv_poll_t *p, int status, int events);

static void retry_cb(uv_timer_t *t) {
  ame_listener_t *l = t->data;
  if (l->h.state == HS_OPEN && !l->polling &&
      uv_poll_start(&l->poll, UV_READABLE, listener_poll_cb) == 0)
    l->polling = 1;
}

/* Hand connection fd, accepted by l, to a worker: l's own, or (a lone
** listener) the one with the fewest open streams.  Return nonzero once l
** is no longer open (a callback run from here, on_open, may close it). */
static int listener_take(void *arg, int fd, const struct sockaddr_storage *sa,
                         socklen_t len) {
  ame_listener_t *l = arg;
  ame_reactor_t *r = l->h.r;
  struct worker *w = l->h.w;
  (void)sa;
  (void)len;
  ADD(&r->accepted, 1);
  /* A member of a REUSEPORT group (the first one too) keeps what it
  ** accepts: the kernel spreads the connections over the group. */
  struct worker *to = l->group != l || l->next_in_group != NULL ||
                              r->nworkers == 1
                          ? w
                          : ame__pick_worker(r);
  if (to == w) {
    int rc = ame__stream_adopt_fd(w, fd, l->is_unix, l->cbs,
                                  ame_handle_data(l->group), NULL, 1);
    if (rc != 0) {
      ame__log(r, "worker %u: cannot set up a connection: %s", w->id,
               uv_strerror(rc));
      close(fd);
    }
    return l->h.state != HS_OPEN;
  }
  struct adopt *a = malloc(sizeof *a);
  struct op *op = a ? ame__op_new(op_adopt, NULL, to, 0) : NULL;
  if (op == NULL) {
    free(a);
    close(fd);
    return 0;
  }
  a->fd = fd;
  a->is_unix = l->is_unix;
  a->cbs = l->cbs;
  a->data = ame_handle_data(l->group);
  op->p = a;
  ame__op_submit(op);
  return 0;
}

static void listener_poll_cb(uv_poll_t *p, int status, int events) {
  ame_listener_t *l = p->data;
  ame_reactor_t *r = l->h.r;
  struct worker *w = l->h.w;
  (void)events;
  if (status < 0 || l->h.state != HS_OPEN) return;
  int e = -ame__sock_accept_batch(l->fd, AME__ACCEPT_BATCH, 0, listener_take,
                                  l);
  if (e <= 0) return; /* none left, or a batch taken (or l closed) */
  ADD(&r->accept_errors, 1);
  if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
    /* Out of descriptors or memory: stop accepting for a while; the
    ** kernel keeps the backlog.  Logged at most once a second per
    ** listener. */
    uint64_t now = uv_now(&w->loop);
    if (l->last_log == 0 || now - l->last_log >= 1000) {
      l->last_log = now;
      ame__log(r, "accept: %s; pausing accepts for %d ms", strerror(e),
               ACCEPT_RETRY_MS);
    }
    uv_poll_stop(&l->poll);
    l->polling = 0;
    uv_timer_start(&l->retry, retry_cb, ACCEPT_RETRY_MS, 0);
    return;
  }
  ame__log(r, "accept: %s", strerror(e));
}

/* Close a listener's socket (and remove its Unix socket file). */
static void listener_release(ame_listener_t *l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (l->path && l->group == l) unlink(l->path);
  free(l->path);
  l->path = NULL;
}

static void listener_closed(uv_handle_t *hd) {
  ame_listener_t *l = hd->data;
  if (--l->inits > 0) return;
  listener_release(l);
  l->h.state = HS_CLOSED;
  ame__handle_unlink(&l->h);
  /* A member of a REUSEPORT group holds a reference on the group's first
  ** listener (whose data it hands to each stream): drop it. */
  if (l->group != l) ame__handle_unref(&l->group->h);
  ame__handle_unref(&l->h);
}

static void listener_stop(ame_handle_t *h) {
  ame_listener_t *l = (ame_listener_t *)h;
  if (l->h.state != HS_OPEN) return;
  l->h.state = HS_CLOSING;
  uv_close((uv_handle_t *)&l->poll, listener_closed);
  uv_close((uv_handle_t *)&l->retry, listener_closed);
}

static int op_listener_close(struct op *op) {
  listener_stop(op->h);
  return 0;
}

static int op_listener_start(struct op *op) {
  ame_listener_t *l = (ame_listener_t *)op->h;
  struct worker *w = l->h.w;
  if (l->h.state != HS_NEW) return 0;
  uv_poll_init(&w->loop, &l->poll, l->fd);
  uv_timer_init(&w->loop, &l->retry);
  uv_unref((uv_handle_t *)&l->retry);
  l->poll.data = l->retry.data = l;
  l->inits = 2;
  l->h.state = HS_OPEN;
  ame__handle_link(&l->h);
  if (w->stopping) {
    listener_stop(&l->h);
    return 0;
  }
  if (uv_poll_start(&l->poll, UV_READABLE, listener_poll_cb) == 0)
    l->polling = 1;
  return 0;
}

/* Free a group that never went live and that nothing else refers to. */
static void listener_abort(void *arg) {
  ame_listener_t *l = arg;
  while (l) {
    ame_listener_t *next = l->next_in_group;
    listener_release(l);
    free(l);
    l = next;
  }
}

/* The attempt that listened aborted: close the sockets and drop the
** references (an op on the listener asked for in the same attempt may
** still hold one; the last reference frees it). */
static void listener_undo(void *arg) {
  ame_listener_t *first = arg;
  ame_listener_t *l = first->next_in_group;
  while (l) {
    ame_listener_t *next = l->next_in_group;
    listener_release(l);
    ame__handle_unref(&first->h);
    ame__handle_unref(&l->h);
    l = next;
  }
  listener_release(first);
  ame__handle_unref(&first->h);
}

static void listener_commit(void *arg) {
  ame_listener_t *l = arg;
  while (l) {
    ame_listener_t *next = l->next_in_group;
    struct op *op = ame__op_new(op_listener_start, &l->h, NULL, 0);
    if (op) ame__op_submit(op);
    l = next;
  }
}

static int listener_new(ame_reactor_t *r, struct worker *w, int fd,
                        int is_unix, const ame_stream_cbs_t *cbs, void *data,
                        ame_listener_t **out) {
  ame_listener_t *l = calloc(1, sizeof *l);
  if (l == NULL) return -ENOMEM;
  ame__handle_init(&l->h, H_LISTENER, r, w, data);
  l->h.on_stop = listener_stop;
  l->group = l;
  l->fd = fd;
  l->is_unix = is_unix;
  l->cbs = cbs;
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  if (!is_unix && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    l->port = ntohs(sa.ss_family == AF_INET6
                        ? ((struct sockaddr_in6 *)&sa)->sin6_port
                        : ((struct sockaddr_in *)&sa)->sin_port);
  *out = l;
  return 0;
}

/* Make the group live: at commit in a transaction, now otherwise. */
static int listener_publish(ame_listener_t *first) {
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    if (ame_tx_on_abort(tx, listener_undo, first) != 0) return -ENOMEM;
    if (ame_tx_on_commit(tx, listener_commit, first) != 0) ame_tx_abort(tx);
    return 0;
  }
  listener_commit(first);
  return 0;
}

static int tcp_socket(const struct sockaddr_storage *sa, int flags,
                      int backlog, int reuseport) {
  int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  if (sa->ss_family == AF_INET6) {
    int v6only = (flags & AME_TCP_IPV6ONLY) != 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  }
  socklen_t len = sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
  if (bind(fd, (const struct sockaddr *)sa, len) != 0 ||
      listen(fd, backlog > 0 ? backlog : 511) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  return fd;
}

int ame_tcp_listen(ame_reactor_t *r, const char *host, int port, int flags,
                   int backlog, const ame_stream_cbs_t *cbs, void *data,
                   ame_listener_t **out) {
  if (r == NULL || cbs == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_storage sa;
  int rc = ame__parse_addr(host, port, &sa);
  if (rc) return rc;
  int reuse = (flags & AME_TCP_REUSEPORT) && r->nworkers > 1;
  ame_listener_t *first = NULL, *prev = NULL;
  unsigned n = reuse ? r->nworkers : 1;
  for (unsigned i = 0; i < n; i++) {
    int fd = tcp_socket(&sa, flags, backlog, reuse);
    if (fd < 0) {
      listener_abort(first);
      return fd;
    }
    if (i == 0 && port == 0 && reuse) {
      /* Every member must bind the port the first one got. */
      struct sockaddr_storage got;
      socklen_t len = sizeof got;
      getsockname(fd, (struct sockaddr *)&got, &len);
      port = ntohs(sa.ss_family == AF_INET6
                       ? ((struct sockaddr_in6 *)&got)->sin6_port
                       : ((struct sockaddr_in *)&got)->sin_port);
      ame__parse_addr(host, port, &sa);
    }
    ame_listener_t *l;
    struct worker *w = reuse ? &r->workers[i] : ame__home(r);
    rc = listener_new(r, w, fd, 0, cbs, data, &l);
    if (rc) {
      close(fd);
      listener_abort(first);
      return rc;
    }
    if (first == NULL) first = l;
    else ame__handle_ref(&first->h); /* dropped when l is closed */
    l->group = first;
    if (prev) prev->next_in_group = l;
    prev = l;
  }
  rc = listener_publish(first);
  if (rc) {
    listener_abort(first);
    return rc;
  }
  *out = first;
  return 0;
}

int ame_unix_listen(ame_reactor_t *r, const char *path, int backlog,
                    const ame_stream_cbs_t *cbs, void *data,
                    ame_listener_t **out) {
  if (r == NULL || path == NULL || cbs == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sun.sun_path) return -ENAMETOOLONG;
  strcpy(sun.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0 ||
      listen(fd, backlog > 0 ? backlog : 511) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  ame_listener_t *l = NULL;
  int rc = listener_new(r, ame__home(r), fd, 1, cbs, data, &l);
  if (rc == 0 && (l->path = strdup(path)) == NULL) rc = -ENOMEM;
  if (rc == 0) rc = listener_publish(l);
  if (rc) {
    if (l) listener_abort(l);
    else {
      close(fd);
      unlink(path);
    }
    return rc;
  }
  *out = l;
  return 0;
}

int ame_listen_fd(ame_reactor_t *r, int fd, const ame_stream_cbs_t *cbs,
                  void *data, ame_listener_t **out) {
  if (r == NULL || fd < 0 || cbs == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  int accepting = 0;
  socklen_t alen = sizeof accepting;
  if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) return -errno;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &alen) != 0)
    return -errno;
  if (!accepting) return -EINVAL;
  int nfd = fcntl_dup(fd);
  if (nfd < 0) return nfd;
  ame_listener_t *l;
  int rc = listener_new(r, ame__home(r), nfd, sa.ss_family == AF_UNIX, cbs,
                        data, &l);
  if (rc == 0 && (rc = listener_publish(l)) != 0) {
    listener_abort(l); /* closes nfd */
    return rc;
  }
  if (rc) {
    close(nfd);
    return rc;
  }
  *out = l;
  return 0;
}

int ame_listener_port(const ame_listener_t *l) { return l->port; }

int ame_listener_sockname(const ame_listener_t *l,
                          struct sockaddr_storage *sa) {
  socklen_t len = sizeof *sa;
  memset(sa, 0, sizeof *sa);
  return getsockname(l->fd, (struct sockaddr *)sa, &len) == 0 ? 0 : -errno;
}

void ame_listener_close(ame_listener_t *l) {
  /* Read each next link before submitting the member's close: outside a
  ** transaction the op may run, and free the member, at once. */
  for (ame_listener_t *m = l, *next; m; m = next) {
    next = m->next_in_group;
    struct op *op = ame__op_new(op_listener_close, &m->h, NULL, 0);
    if (op) ame__op_submit(op);
  }
}

/* ------------------------------------------------------------------------
** Connecting and adopting.
*/

static int op_connect(struct op *op) {
  ame_stream_t *s = (ame_stream_t *)op->h;
  struct worker *w = s->h.w;
  if (s->h.state != HS_NEW) return 0;
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  const struct sockaddr *sa = (const struct sockaddr *)&s->peer;
  socklen_t len;
  if (s->kind == K_UNIX) {
    strcpy(sun.sun_path, s->path); /* its length was checked */
    sa = (const struct sockaddr *)&sun;
    len = sizeof sun;
  } else {
    len = s->peer.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                        : sizeof(struct sockaddr_in);
  }
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  int rc = fd < 0 ? -errno : stream_open_fd(s, fd, 0);
  if (rc != 0) {
    /* Not live: report and free. */
    if (fd >= 0) close(fd);
    s->h.state = HS_CLOSED;
    cb_close(s, rc);
    ame__handle_unref(&s->h);
    return 0;
  }
  if (w->stopping) {
    stream_close(s, -ESHUTDOWN, 0);
    return 0;
  }
  while ((rc = connect(fd, sa, len)) != 0 && errno == EINTR) {
  }
  /* Connected at once (Unix) or under way: writable once it is done. */
  if (rc != 0 && errno != EINPROGRESS) {
    stream_close(s, -errno, 0);
    return 0;
  }
  update_poll(s);
  return 0;
}

/* A connect asked for in an attempt that aborted: nothing was handed to
** the program after all. */
static void connect_undo(void *arg) {
  ame_stream_t *s = arg;
  s->opened = 0;
  free(s->path);
  s->path = NULL;
}

static int start_connect(ame_reactor_t *r, ame_stream_t *s,
                         ame_stream_t **out) {
  (void)r;
  s->opened = 1; /* handed to the program: on_close is due */
  int rc = ame__handle_start(&s->h, op_connect, connect_undo, s);
  if (rc != 0) {
    stream_discard(s);
    return rc;
  }
  *out = s;
  return 0;
}

int ame_tcp_connect(ame_reactor_t *r, const char *host, int port,
                    const ame_stream_cbs_t *cbs, void *data,
                    ame_stream_t **out) {
  if (r == NULL || cbs == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_storage sa;
  int rc = ame__parse_addr(host, port, &sa);
  if (rc) return rc;
  ame_stream_t *s = stream_new(r, ame__pick_worker(r), K_TCP, cbs, data);
  if (s == NULL) return -ENOMEM;
  s->peer = sa;
  return start_connect(r, s, out);
}

int ame_unix_connect(ame_reactor_t *r, const char *path,
                     const ame_stream_cbs_t *cbs, void *data,
                     ame_stream_t **out) {
  if (r == NULL || path == NULL || cbs == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_un sun;
  if (strlen(path) >= sizeof sun.sun_path) return -ENAMETOOLONG;
  ame_stream_t *s = stream_new(r, ame__pick_worker(r), K_UNIX, cbs, data);
  if (s == NULL) return -ENOMEM;
  if ((s->path = strdup(path)) == NULL) {
    free(s);
    return -ENOMEM;
  }
  return start_connect(r, s, out);
}

static int op_adopt_stream(struct op *op) {
  ame_stream_t *s = (ame_stream_t *)op->h;
  if (s->h.state != HS_NEW) return 0;
  int fd = (int)op->a;
  int rc = stream_open_fd(s, fd, 1);
  if (rc != 0) {
    close(fd);
    cb_close(s, rc);
    s->h.state = HS_CLOSED;
    ame__handle_unref(&s->h);
    return 0;
  }
  if (s->h.w->stopping) {
    stream_close(s, -ESHUTDOWN, 1);
    return 0;
  }
  update_poll(s);
  stream_failed(s, cb_open(s));
  return 0;
}

/* An adopt asked for in an attempt that aborted: close our duplicate. */
static void adopt_undo(void *arg) {
  struct op *op = arg;
  ame_stream_t *s = (ame_stream_t *)op->h;
  s->opened = 0;
  close((int)op->a);
}

int ame_stream_adopt(ame_reactor_t *r, int fd, const ame_stream_cbs_t *cbs,
                     void *data, ame_stream_t **out) {
  if (r == NULL || fd < 0 || cbs == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) return -errno;
  int nfd = fcntl_dup(fd);
  if (nfd < 0) return nfd;
  ame_stream_t *s = stream_new(r, ame__pick_worker(r),
                               sa.ss_family == AF_UNIX ? K_UNIX : K_TCP, cbs,
                               data);
  if (s == NULL) {
    close(nfd);
    return -ENOMEM;
  }
  s->opened = 1;
  struct op *op = ame__op_new(op_adopt_stream, &s->h, NULL, 0);
  if (op == NULL) {
    close(nfd);
    free(s);
    return -ENOMEM;
  }
  op->a = (uint64_t)nfd;
  int rc = ame__publish(op, adopt_undo, op);
  if (rc != 0) {
    op->h = NULL;
    free(op);
    close(nfd);
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

/* ------------------------------------------------------------------------
** Child stdio (process.c): a stream over one end of a socket pair (as
** libuv's UV_CREATE_PIPE makes), the other end the child's.
*/

int ame__pipe_new(struct worker *w, const ame_stream_cbs_t *cbs, void *data,
                  ame_stream_t **out, int *child_fd) {
  static const ame_stream_cbs_t none;
  int sv[2];
  /* Both ends blocking (the child's must be); ours is made non-blocking
  ** by uv_poll_init once the child runs. */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return -errno; /* -EMFILE, -ENFILE, ... */
  ame_stream_t *s = stream_new(w->r, w, K_UNIX, cbs ? cbs : &none, data);
  if (s == NULL) {
    close(sv[0]);
    close(sv[1]);
    return -ENOMEM;
  }
  s->sock = sv[0];
  *child_fd = sv[1];
  *out = s;
  return 0;
}

void ame__pipe_discard(ame_stream_t *s) {
  close(s->sock);
  stream_discard(s);
}

int ame__pipe_opened(ame_stream_t *s, int read) {
  int fd = s->sock;
  int rc = stream_open_fd(s, fd, 1);
  if (rc != 0) {
    ame__pipe_discard(s);
    return rc;
  }
  s->opened = 1;
  s->write_only = !read;
  update_poll(s);
  return 0;
}
