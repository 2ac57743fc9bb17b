/*
** bindings/ame/transport.c — fast TCP streams: the C half of ame.reactor's
** TCP transports (ame.reactor.Server and Client).
**
** A Twisted TCP transport on EPollReactor reads with socket.recv() in
** doRead, buffers write() in Python lists and sends in doWrite, all on the
** reactor's one thread, with two epoll_ctl calls per request-response.
** Here the socket belongs to the C worker while the transport is attached:
**
**   reading   The worker keeps the fd's poll armed for reading while
**             Python reads (startReading), recv()s into the stream's
**             input buffer (reactor/src/streambuf.h, the buffers the
**             reactor's own streams use) and puts the stream on the
**             core's ready list.
**             wait() takes the list and calls protocol.dataReceived(data)
**             itself, in C (the fast path).  EOF, errors, and exceptions
**             or return values of dataReceived go back to Python (doRead,
**             reactor._ameReadFailed), which does what Twisted does.
**             At most AME_ICAP bytes wait unread: then the worker stops
**             reading until Python has taken them.
**   writing   Stream.write (C) copies the bytes into the stream's output
**             queue; the next flush (once per wait(), batched over every
**             stream) splices it to the worker's side, which the worker
**             takes and sends (writev), waiting for POLLOUT when the
**             kernel buffer is full.  Python
**             asks to be told when everything is sent (addWriter: drained
**             events, for loseConnection, producers and half-close); then
**             doWrite runs Twisted's end-of-buffer logic.
**
** So the socket calls run on the worker without the GIL; the Python thread
** runs only Python callbacks.  TLS can run there too (_ameStartTLS, the
** "TLS in C" section below, tls.c): then the worker encrypts what the
** queues hold and decrypts into the inbound buffer.  What is not a hot
** path stays Twisted's own code: connecting, closing, Twisted's own TLS
** where it applies (its records go through FileDescriptor.write into the
** same C buffer), producers, half-close.
**
** The Stream type is a base class of the Python transports: the attributes
** write() consults on every call (protocol, connected, _writeDisconnected,
** TLS, producer) are C fields behind data descriptors, so that Twisted's
** code setting them (self.connected = 1, del self.protocol, ...) works
** unchanged.
**
** One descriptor per connection: the worker polls, reads, sends and
** accepts on Python's own fd (the socket's fileno()), never a dup of it,
** so that a process fits as many connections as Twisted's own reactors
** under the same RLIMIT_NOFILE.  Then the fd must stay open while the
** worker may still use it: once closed, its number is reused by the next
** socket, and a late recv/send/accept would hit another connection, a
** late poll change would make libuv abort.  The worker runs the streams'
** callbacks and applies one at a time on its one thread, so at the apply
** after a detach it has finished whatever it was doing with the fd.  A
** closing connection hands its fd over (_ameDetachClose): the worker, at
** that apply, stops the poll and closes the fd; Python does not wait.
** _ameDetach, after which Python closes the fd itself (listening ports,
** a child's output pipes), waits (without the GIL) for that apply
** (ame__core_sync), as a close does for listeners and in inline mode.  A
** stream the worker never took up needs neither: when it does, it sees
** the detach before anything else.  A stream whose TLS is C's closes as
** any other: it holds a reference of its own to the SSL object
** (ame__tls_init), so pyOpenSSL may free its Connection while the worker
** or the handshake pool still uses it.
** A transport collected while attached detaches in its finalizer
** (tp_finalize), which runs before its __dict__, and with it the socket,
** is cleared.
*/
#include "binding.h"
#include "shared.h"
#include "sockio.h"    /* reactor/src: the socket calls */
#include "streambuf.h" /* reactor/src: the buffers the reactor's streams
                          use too */
#include "tls.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define AME_RECV_SIZE 65536 /* one recv(), as Twisted's bufferSize */
#define AME_ICAP 65536      /* stop reading above this much unread data */

/* A connection the worker accepted for a listening stream, waiting in its
** inbound buffer for Python (Port.doRead) to take it. */
struct accepted {
  int fd;
  socklen_t len;
  struct sockaddr_storage addr;
};

typedef struct {
  PyObject_HEAD
  PyObject *core;       /* the CoreObject f belongs to, or NULL */
  struct fconn *f;      /* NULL when not attached */
  int pyfd;             /* the fd it was attached for (Python's) */
  int listener;         /* attached as a listening socket */
  PyObject *protocol;   /* NULL: no attribute (del transport.protocol) */
  PyObject *connected;
  PyObject *write_disconnected;
  PyObject *tls;
  PyObject *producer;
  PyObject *streaming;  /* streamingProducer */
  Py_ssize_t buffer_size; /* bufferSize */
  PyObject *buffer_size_obj;
  /* The log context last pushed for this stream's callbacks. */
  PyObject *ctx_lp, *ctx_base, *ctx_push;
  /* TLS in C: the pyOpenSSL Connection whose SSL object the worker uses
  ** (under a reference of its own: f->tls), and, once detached, what the
  ** worker last published (_ameTLSInfo). */
  PyObject *tls_conn;
  PyObject *tls_owner; /* told of the handshake (_ameHandshakeDone) */
  int tls_shut_called;
  int tls_c; /* TLS was switched on in C: write() takes plaintext, even
                with the TLS attribute set (startTLS sets it) */
  int tls_done;
  int tls_failed;
  struct ame__tls tls_rec;
} StreamObject;

static PyObject *str_dataReceived, *str_ameSlowWrite, *str_ameSlowWriteSeq;
static PyObject *str_logPrefix, *str_system, *str_ameBufferFull;
static PyObject *str_ameHandshakeDone;

/* ------------------------------------------------------------------------
** The log context.  Twisted calls doRead inside log.callWithLogger(
** transport, ...), so that what dataReceived logs carries the transport's
** logPrefix() as its "system".  The same, in C: push {ILogContext:
** {..., "system": prefix}} on this thread's ContextTracker around the call
** (twisted.python.context: callWithContext appends to .contexts and pops).
*/

static PyObject *ctx_module, *ilog_key;

/* This thread's ContextTracker's list of contexts (new reference), or NULL
** with an exception set. */
static PyObject *context_list(void) {
  if (ctx_module == NULL) {
    PyObject *log = PyImport_ImportModule("twisted.python.log");
    if (log == NULL) return NULL;
    ilog_key = PyObject_GetAttrString(log, "ILogContext");
    Py_DECREF(log);
    if (ilog_key == NULL) return NULL;
    ctx_module = PyImport_ImportModule("twisted.python.context");
    if (ctx_module == NULL) return NULL;
  }
  PyObject *tracker = PyObject_GetAttrString(ctx_module, "theContextTracker");
  if (tracker == NULL) return NULL;
  PyObject *ct = tracker;
  if (PyObject_HasAttrString(tracker, "currentContext")) {
    ct = PyObject_CallMethod(tracker, "currentContext", NULL);
    Py_DECREF(tracker);
    if (ct == NULL) return NULL;
  }
  PyObject *l = PyObject_GetAttrString(ct, "contexts");
  Py_DECREF(ct);
  if (l != NULL && !PyList_Check(l)) {
    Py_DECREF(l);
    PyErr_SetString(PyExc_TypeError, "ContextTracker.contexts is not a list");
    return NULL;
  }
  return l;
}

/* Push the log context of stream s on contexts.  Return 0 or -1. */
static int push_log_context(StreamObject *s, PyObject *contexts) {
  PyObject *lp = PyObject_CallMethodNoArgs((PyObject *)s, str_logPrefix);
  if (lp == NULL) { /* as log.callWithLogger */
    PyErr_Clear();
    lp = PyUnicode_FromString("(buggy logPrefix method)");
    if (lp == NULL) return -1;
  }
  PyObject *base = NULL;
  for (Py_ssize_t i = PyList_GET_SIZE(contexts) - 1; i >= 0 && !base; i--) {
    PyObject *d = PyList_GET_ITEM(contexts, i);
    if (PyDict_Check(d)) base = PyDict_GetItemWithError(d, ilog_key);
    if (base == NULL && PyErr_Occurred()) {
      Py_DECREF(lp);
      return -1;
    }
  }
  if (s->ctx_push == NULL || s->ctx_base != base ||
      (s->ctx_lp != lp &&
       PyObject_RichCompareBool(s->ctx_lp, lp, Py_EQ) != 1)) {
    PyErr_Clear();
    PyObject *nc = base && PyDict_Check(base) ? PyDict_Copy(base) : PyDict_New();
    PyObject *push = PyDict_New();
    if (nc == NULL || push == NULL ||
        PyDict_SetItem(nc, str_system, lp) < 0 ||
        PyDict_SetItem(push, ilog_key, nc) < 0) {
      Py_XDECREF(nc);
      Py_XDECREF(push);
      Py_DECREF(lp);
      return -1;
    }
    Py_DECREF(nc);
    Py_XSETREF(s->ctx_push, push);
    Py_XSETREF(s->ctx_lp, Py_NewRef(lp));
    Py_XSETREF(s->ctx_base, Py_XNewRef(base));
  }
  Py_DECREF(lp);
  return PyList_Append(contexts, s->ctx_push);
}

static void pop_log_context(PyObject *contexts) {
  Py_ssize_t n = PyList_GET_SIZE(contexts);
  if (n > 0) PyList_SetSlice(contexts, n - 1, n, NULL);
}

/* ------------------------------------------------------------------------
** Shared state (lock held where said).
*/

/* Lock held.  Drop a reference; free f at the last. */
/* Close the accepted connections nobody took (a listener's inbound
** buffer). */
static void close_accepted(struct fconn *f) {
  if (!f->listener) return;
  const char *p = ame__ibuf_data(&f->in);
  for (size_t off = 0; off + sizeof(struct accepted) <= f->in.len;
       off += sizeof(struct accepted)) {
    struct accepted a;
    memcpy(&a, p + off, sizeof a);
    close(a.fd);
  }
  ame__ibuf_consume(&f->in, f->in.len);
}

/* Close a connection's fd as Twisted's _closeSocket does: plainly, after
** shutting both directions down, or so that the close sends a reset. */
enum { CLOSE_PLAIN = 1, CLOSE_SHUTDOWN, CLOSE_RESET };

static void close_socket(int fd, int how) {
  if (how == CLOSE_RESET) {
    struct linger l = {1, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  } else if (how == CLOSE_SHUTDOWN) {
    (void)shutdown(fd, SHUT_RDWR);
  }
  close(fd);
}

/* Free f's buffers and f. */
static void fconn_free(struct fconn *f) {
  /* Given up by Python, never reached by the worker (the core closed). */
  if (f->close_fd && f->fd >= 0) close_socket(f->fd, f->close_fd);
  close_accepted(f);
  ame__ibuf_free(&f->in);
  ame__oq_clear(&f->out);
  ame__oq_clear(&f->ready);
  ame__oq_clear(&f->wq);
  ame__ibuf_free(&f->tls_early);
  ame__ibuf_free(&f->tls_held);
  ame__oq_clear(&f->tplain);
  if (f->tls) ame__tls_release(f->tls);
  free(f->tls);
  free(f);
}

static void fconn_unref(struct fconn *f) {
  if (--f->refs > 0) return;
  fconn_free(f);
}

/* Lock held. */
static void mark_fdirty(struct core *c, struct fconn *f) {
  if (f->dirty) return;
  f->dirty = 1;
  f->refs++;
  f->next_dirty = c->fdirty;
  c->fdirty = f;
}

/* Lock held, Python thread.  Note that f was written to: the next flush
** releases what it holds to the worker. */
static void mark_pending(struct core *c, struct fconn *f) {
  if (f->pending) return;
  f->pending = 1;
  f->refs++;
  f->next_pending = c->fpending;
  c->fpending = f;
}

void ame__fconn_flush_pending(struct core *c) {
  if (c->fpending == NULL) return;
  pthread_mutex_lock(&c->lock);
  struct fconn *f = c->fpending;
  c->fpending = NULL;
  while (f) {
    struct fconn *next = f->next_pending;
    f->pending = 0;
    ame__oq_splice(&f->ready, &f->out);
    if (f->tls_shut_out) { /* after what was just spliced */
      f->tls_shut_out = 0;
      f->tls_shut_ready = 1;
    }
    if (!f->detach) mark_fdirty(c, f);
    fconn_unref(f); /* the pending list's reference */
    f = next;
  }
  pthread_mutex_unlock(&c->lock);
}

/* Lock held.  Return 1 if the Python thread must be woken (after the lock
** is released: ame__signal_efd). */
static int fready_push(struct core *c, struct fconn *f) {
  if (f->queued_ready) return 0;
  f->queued_ready = 1;
  f->refs++;
  f->next_ready = NULL;
  if (c->fready_tail)
    c->fready_tail->next_ready = f;
  else
    c->fready_head = f;
  c->fready_tail = f;
  if (!c->py_waiting) return 0;
  c->py_waiting = 0; /* one wake-up per sleep */
  return 1;
}

/* The worker is about to poll: wake the Python thread once for everything
** this loop iteration put on the ready list (not once per connection: on
** a shared core, each wake-up would preempt the worker for one request). */
int ame__before_poll(void *arg) {
  struct core *c = arg;
  if (!c->polled) ame__core_polled(c); /* the first poll: Core() returns */
  if (c->wake_pending) {
    c->wake_pending = 0;
    ame__signal_efd(c);
  }
  return ame__catch_up_step(c);
}

/* ------------------------------------------------------------------------
** The worker side.
*/

static int fpoll_cb(ame_tx_t *tx, ame_poll_t *p, int status, int events);

/* Worker.  Bring f's poll in line with what it needs: reading while Python
** reads and the inbound buffer has room, writing while output waits. */
static void fupdate(struct core *c, struct fconn *f) {
  pthread_mutex_lock(&c->lock);
  int mask = 0;
  if (!f->detach) {
    /* While a handshake step runs in the pool, what arrives is held: up
    ** to AME_ICAP, and nothing after the end of the input (else a peer
    ** that closed keeps the fd readable and the worker spinning). */
    int held = f->tls && f->tls->busy &&
               (f->tls_held_end || f->tls_held.len >= AME_ICAP);
    if (f->want_read && !f->eof && !f->rerr && !held &&
        f->in.len < (f->listener ? 256 * sizeof(struct accepted) : AME_ICAP))
      mask |= AME_READABLE;
    if (f->wq.head && !f->werr) mask |= AME_WRITABLE;
  }
  pthread_mutex_unlock(&c->lock);
  if (mask == f->armed) return;
  ame__worker_armed(c);
  if (f->poll == NULL) {
    ame_poll_t *p = NULL;
    int rc = ame_poll_start(c->r, f->fd, mask, fpoll_cb, f, &p);
    if (rc != 0) {
      /* Not watchable (closed under us): report it as a read error. */
      pthread_mutex_lock(&c->lock);
      f->rerr = -rc;
      int sig = fready_push(c, f);
      pthread_mutex_unlock(&c->lock);
      c->wake_pending |= sig;
      return;
    }
    ame_handle_set_name(p, "python tcp stream");
    f->poll = p;
  } else {
    ame_poll_change(f->poll, mask);
  }
  f->armed = mask;
}

static void do_send(struct core *c, struct fconn *f);
static void tls_recv(struct core *c, struct fconn *f, ssize_t n, int have);

/* Worker.  recv() once into the inbound buffer. */
static void do_recv(struct core *c, struct fconn *f) {
  ssize_t n = ame__sock_recv(f->fd, f->pipe, c->scratch, AME_RECV_SIZE);
  if (n == -EAGAIN) return;
  int err = n < 0 ? (int)-n : 0;
  pthread_mutex_lock(&c->lock);
  if (f->tls) { /* TLS is on: the bytes are records */
    pthread_mutex_unlock(&c->lock);
    tls_recv(c, f, n, 1);
    return;
  }
  int sig = 0;
  if (!f->detach) {
    if (n > 0) {
      if (ame__ibuf_append(&f->in, c->scratch, (size_t)n) != 0)
        f->rerr = ENOMEM;
      c->n_reads++;
      c->n_bytes_in += (uint64_t)n;
    } else if (n == 0) {
      f->eof = 1;
    } else {
      f->rerr = err;
    }
    if (f->want_read) sig = fready_push(c, f);
  }
  pthread_mutex_unlock(&c->lock);
  c->wake_pending |= sig; /* signalled in ame__before_poll */
}

/* ------------------------------------------------------------------------
** TLS in C, the worker's side (the OpenSSL calls are tls.c's).  Each
** group of OpenSSL calls on a connection is made holding its SSL object's
** lock (tls.h), and nothing else: the core's lock is taken only after it
** is released, and nothing is waited for under it.  Python takes it for
** every call it makes on the object (_ame.tls_locked: getHandle()'s proxy,
** getPeerCertificate(), negotiatedProtocol, the server name's check).
*/

/* Take t's SSL lock.  The worker and the pool wait for it as they are;
** a thread holding the GIL (inline mode, where the worker is the Python
** thread) waits without it: the holder may be another Python thread,
** which needs the GIL to finish its call. */
static void tls_lock(struct ame__tls *t) {
  if (pthread_mutex_trylock(t->lock) == 0) return;
  if (PyGILState_Check()) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(t->lock);
    Py_END_ALLOW_THREADS
  } else {
    pthread_mutex_lock(t->lock);
  }
}

static void tls_unlock(struct ame__tls *t) { pthread_mutex_unlock(t->lock); }

/* Lock held.  The TLS connection failed (the record in *f->tls is final):
** drop what waits to be encrypted and whatever Python writes from now on;
** what OpenSSL wrote (an alert) is still sent.  Python meets the error as
** a read error (or end of file, if the peer closed) and asks _ameTLSInfo
** for the reason. */
static void tls_failed(struct core *c, struct fconn *f, int eof) {
  if (f->tls_failed) return;
  f->tls_failed = 1;
  c->n_tls_failures++;
  ame__oq_clear(&f->out);
  ame__oq_clear(&f->ready);
  f->tls_shut_out = f->tls_shut_ready = 0;
  if (f->tls_shut_owed) { /* no close_notify will be written now */
    f->tls_shut_owed = 0;
    f->queued -= 1;
  }
  f->dropping = 1;
  if (eof)
    f->eof = 1;
  else if (!f->rerr)
    f->rerr = EPROTO;
}

/* Worker.  Publish one step of OpenSSL's work on f: r (ame__tls_advance's
** mask), the plaintext it produced, oom (out of memory on the way), end
** (how the input ended with this step: 0 not, 1 end of file, -errno).
** Then send what OpenSSL wrote in answer (handshake records, alerts,
** close_notify). */
static void tls_publish(struct core *c, struct fconn *f, int r,
                        ame__ibuf_t *plain, int oom, int end) {
  pthread_mutex_lock(&c->lock);
  int sig = 0;
  if (!f->detach) {
    if (plain->len) {
      if (f->in.len == 0 && f->in.p == NULL)
        ame__ibuf_take(plain, &f->in);
      else if (ame__ibuf_append(&f->in, ame__ibuf_data(plain), plain->len))
        f->rerr = ENOMEM;
    }
    if (r & AME_TLS_HANDSHAKEN) {
      f->tls_done = 1;
      f->tls_news = 1;
      c->n_tls_handshakes++;
      sig |= fready_push(c, f);
    }
    if (oom) {
      f->rerr = ENOMEM;
    } else if (r & AME_TLS_FAILED) {
      tls_failed(c, f, end == 1);
      if (end < 0) f->rerr = -end;
    } else if (end == 1) {
      f->eof = 1;
    } else if (end < 0) {
      f->rerr = -end;
    }
    if (r & AME_TLS_CLOSED) {
      f->eof = 1;
      if (f->tls->hs) f->tls_peer_closed = 1;
    }
    if (f->want_read) sig |= fready_push(c, f);
  }
  pthread_mutex_unlock(&c->lock);
  ame__ibuf_free(plain);
  c->wake_pending |= sig;
  do_send(c, f);
}

/* A handshake step for the pool (thread mode): the worker hands over f's
** SSL object (tls->busy) until the step is published back on it. */
struct tls_job {
  struct tls_job *next;
  struct fconn *f;   /* a reference, released when done */
  int end;           /* as tls_publish's */
  int r, oom;
  ame__ibuf_t plain;
  ame__oqueue_t out; /* what OpenSSL wrote */
  size_t out_bytes;
};

static void tls_step(struct core *c, struct fconn *f, int end);

/* Worker, at the commit of the call the pool posted: the step is over. */
static void tls_job_done(void *arg) {
  struct tls_job *job = arg;
  struct fconn *f = job->f;
  struct core *c = f->c;
  f->tls->busy = 0;
  pthread_mutex_lock(&c->lock);
  int detached = f->detach;
  if (!detached) f->queued += job->out_bytes;
  pthread_mutex_unlock(&c->lock);
  if (detached) {
    /* Python let go: drop it all (f's reference frees the SSL object
    ** if it is the last). */
    ame__ibuf_free(&job->plain);
    ame__oq_clear(&job->out);
    ame__ibuf_free(&f->tls_held);
    pthread_mutex_lock(&c->lock);
    fconn_unref(f);
    pthread_mutex_unlock(&c->lock);
    free(job);
    return;
  }
  ame__oq_splice(&f->wq, &job->out);
  tls_publish(c, f, job->r, &job->plain, job->oom, job->end);
  /* What arrived meanwhile. */
  int end = f->tls_held_end;
  f->tls_held_end = 0;
  if (f->tls_held.len || end) {
    int oom = 0;
    tls_lock(f->tls);
    if (f->tls_held.len)
      oom = ame__tls_feed(f->tls, ame__ibuf_data(&f->tls_held),
                          f->tls_held.len) != 0;
    if (end) ame__tls_input_ended(f->tls);
    tls_unlock(f->tls);
    ame__ibuf_free(&f->tls_held);
    if (oom) {
      ame__ibuf_t none = {0};
      tls_publish(c, f, 0, &none, 1, end);
    } else {
      tls_step(c, f, end);
    }
  }
  fupdate(c, f);
  pthread_mutex_lock(&c->lock);
  fconn_unref(f); /* the job's reference */
  pthread_mutex_unlock(&c->lock);
  free(job);
}

static int tls_job_call(ame_tx_t *tx, void *arg) {
  return ame_tx_on_commit(tx, tls_job_done, arg);
}

/* A thread of the handshake pool. */
static void *tls_pool_main(void *arg) {
  struct core *c = arg;
  pthread_setname_np(pthread_self(), "ame-tls");
  char *buf = malloc(AME_RECV_SIZE);
  pthread_mutex_lock(&c->lock);
  for (;;) {
    while (!c->hs_stop && c->hs_head == NULL)
      pthread_cond_wait(&c->hs_cond, &c->lock);
    struct tls_job *job = c->hs_head;
    if (job == NULL) break; /* stopping, nothing left (steps still queued
                               run first: each holds a stream) */
    c->hs_head = job->next;
    if (c->hs_head == NULL) c->hs_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    struct ame__tls *t = job->f->tls;
    if (buf == NULL) {
      job->oom = 1;
    } else {
      tls_lock(t);
      job->r = ame__tls_advance(t, &job->plain, buf, AME_RECV_SIZE);
      if ((job->r & AME_TLS_CLOSED) && !t->hs) ame__tls_shutdown(t);
      job->oom = ame__tls_output(t, &job->out, buf, AME_RECV_SIZE,
                                 &job->out_bytes) != 0;
      tls_unlock(t);
    }
    if (ame_reactor_call(c->r, tls_job_call, job) != 0) {
      /* The reactor is stopping: nobody publishes it. */
      ame__ibuf_free(&job->plain);
      ame__oq_clear(&job->out);
      pthread_mutex_lock(&c->lock);
      fconn_unref(job->f);
      pthread_mutex_unlock(&c->lock);
      free(job);
    }
    pthread_mutex_lock(&c->lock);
  }
  pthread_mutex_unlock(&c->lock);
  free(buf);
  return NULL;
}

/* Python thread (the first TLS stream of a thread-mode core): start the
** handshake pool, a thread per CPU the process may use.  Return 0 or
** -errno (then handshakes stay on the worker). */
static int tls_pool_start(struct core *c) {
  if (c->hs_nthreads || c->inline_mode) return 0;
  unsigned n = ame_cpu_count();
  if (n < 1) n = 1;
  if (n > 8) n = 8;
  c->hs_threads = calloc(n, sizeof *c->hs_threads);
  if (c->hs_threads == NULL) return -ENOMEM;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay Python's */
  int rc = 0;
  unsigned started = 0;
  for (; started < n; started++) {
    rc = pthread_create(&c->hs_threads[started], NULL, tls_pool_main, c);
    if (rc != 0) break;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_mutex_lock(&c->lock);
  c->hs_nthreads = (int)started;
  pthread_mutex_unlock(&c->lock);
  return started ? 0 : -rc;
}

/* Python thread (without the GIL: a thread may be in a handshake step),
** or the core's free.  Steps still queued run first; from here on the
** worker runs them itself until tls_pool_start starts a pool again. */
void ame__tls_pool_stop(struct core *c) {
  if (c->hs_nthreads == 0) return;
  pthread_mutex_lock(&c->lock);
  c->hs_stop = 1;
  pthread_cond_broadcast(&c->hs_cond);
  pthread_mutex_unlock(&c->lock);
  for (int i = 0; i < c->hs_nthreads; i++) pthread_join(c->hs_threads[i], NULL);
  free(c->hs_threads);
  c->hs_threads = NULL;
  pthread_mutex_lock(&c->lock);
  c->hs_nthreads = 0;
  c->hs_stop = 0;
  pthread_mutex_unlock(&c->lock);
}

/* Worker.  Run OpenSSL on what was fed to f (end: as tls_publish's): a
** handshake step with a public-key operation in it (most of a
** millisecond: ame__tls_heavy) goes to the pool where there is one; the
** rest runs here, where a round trip through the pool would cost more
** than the step (a server's last step: the client's Finished, often with
** the first request behind it). */
static void tls_step(struct core *c, struct fconn *f, int end) {
  struct ame__tls *t = f->tls;
  tls_lock(t);
  if (!t->hs && !t->failed && ame__tls_heavy(t)) {
    tls_unlock(t);
    struct tls_job *job = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->hs_nthreads > 0 && !c->hs_stop && !f->detach &&
        (job = calloc(1, sizeof *job)) != NULL) {
      job->f = f;
      job->end = end;
      c->n_tls_pool_steps++;
      f->refs++;
      t->busy = 1;
      if (c->hs_tail)
        c->hs_tail->next = job;
      else
        c->hs_head = job;
      c->hs_tail = job;
      pthread_cond_signal(&c->hs_cond);
    }
    pthread_mutex_unlock(&c->lock);
    if (job) return;
    tls_lock(t); /* no pool: the step runs here */
  }
  ame__ibuf_t plain = {0};
  int r = ame__tls_advance(t, &plain, c->tls_buf, AME_RECV_SIZE);
  /* The peer's close_notify.  Mid-handshake it is answered here; after
  ** it, Python answers (_ameTLSShutdown) once it has read the plaintext
  ** that came before and written its reply, as Twisted's TLS does. */
  if ((r & AME_TLS_CLOSED) && !t->hs) ame__tls_shutdown(t);
  tls_unlock(t);
  tls_publish(c, f, r, &plain, 0, end);
}

/* Worker.  What recv() returned under TLS (have: n is bytes in c->scratch,
** 0 for end of file or -errno; else nothing new) goes through OpenSSL,
** after any bytes read before TLS was switched on: the handshake advances,
** plaintext goes to f->in, and what OpenSSL wrote in answer is sent.
** While a handshake step runs in the pool, what arrives is held. */
static void tls_recv(struct core *c, struct fconn *f, ssize_t n, int have) {
  struct ame__tls *t = f->tls;
  ame__ibuf_t early = {0};
  pthread_mutex_lock(&c->lock);
  int detached = f->detach;
  if (f->tls_early.len) ame__ibuf_take(&f->tls_early, &early);
  if (!detached && have && n > 0) {
    c->n_reads++;
    c->n_bytes_in += (uint64_t)n;
  }
  pthread_mutex_unlock(&c->lock);
  if (detached) {
    ame__ibuf_free(&early);
    return;
  }
  int end = !have || n > 0 ? 0 : n == 0 ? 1 : (int)n;
  int oom = 0;
  if (t->busy) {
    if (early.len)
      oom |= ame__ibuf_append(&f->tls_held, ame__ibuf_data(&early),
                              early.len) != 0;
    if (have && n > 0)
      oom |= ame__ibuf_append(&f->tls_held, c->scratch, (size_t)n) != 0;
    if (end) f->tls_held_end = end;
    ame__ibuf_free(&early);
    if (oom) f->tls_held_end = -ENOMEM;
    return;
  }
  tls_lock(t);
  if (early.len)
    oom |= ame__tls_feed(t, ame__ibuf_data(&early), early.len) != 0;
  if (have && n > 0)
    oom |= ame__tls_feed(t, c->scratch, (size_t)n) != 0;
  else if (end)
    ame__tls_input_ended(t);
  tls_unlock(t);
  ame__ibuf_free(&early);
  if (oom) {
    ame__ibuf_t none = {0};
    tls_publish(c, f, 0, &none, 1, end);
    return;
  }
  tls_step(c, f, end);
}

/* Worker, from do_send.  Encrypt the plaintext taken from ready once the
** handshake is done, then close_notify if Python asked for it; put the
** records in f->wq.  hold (f->tls_hold): Python has not yet checked the
** server's name, so only what OpenSSL wrote on its own (the handshake's
** records) goes out: as Twisted's TLS, which checks it inside
** do_handshake, nothing the program wrote reaches a server that fails the
** check. */
static void tls_seal(struct core *c, struct fconn *f, int shut, int hold) {
  struct ame__tls *t = f->tls;
  size_t took = 0;
  int fail = 0, wait = 0;
  if (shut) t->shut_asked = 1;
  if (t->busy) return; /* the pool has the SSL object: after the step */
  tls_lock(t);
  if (t->hs && !t->failed && !hold) {
    struct ame__chunk *ch;
    while ((ch = f->tplain.head) != NULL) {
      size_t len = ch->len - ch->off, n;
      int rc = ame__tls_encrypt(t, ch->data + ch->off, len, &n);
      took += n;
      if (rc != 0) {
        fail = rc < 0;
        wait = rc > 0; /* the rest after the peer's next records */
        ame__oq_consume(&f->tplain, n);
        break;
      }
      ame__oq_consume(&f->tplain, len);
    }
    if (!fail && !wait && t->shut_asked && !t->shut) ame__tls_shutdown(t);
  }
  size_t added = 0;
  int oom = ame__tls_output(t, &f->wq, c->tls_buf, AME_RECV_SIZE, &added);
  tls_unlock(t);
  pthread_mutex_lock(&c->lock);
  if (fail || oom || t->failed) {
    if (oom && !t->failed) {
      t->failed = 1;
      t->ekind = AME_TLS_ESYSCALL;
      t->eno = ENOMEM;
    }
    ame__oq_clear(&f->tplain);
    if (!f->detach) {
      int sig = !f->tls_failed && f->want_read;
      tls_failed(c, f, 0);
      if (sig) c->wake_pending |= fready_push(c, f);
    }
    f->queued = f->wq.bytes;
    f->tls_shut_owed = 0;
  } else {
    f->queued = f->queued + added - took;
    if (t->shut && f->tls_shut_owed) { /* written (now or before) */
      f->tls_shut_owed = 0;
      f->queued -= 1;
    }
  }
  pthread_mutex_unlock(&c->lock);
}

/* Worker.  Send what is queued until done or the kernel buffer is full. */
static void do_send(struct core *c, struct fconn *f) {
  size_t sent = 0;
  int err = 0;
  pthread_mutex_lock(&c->lock);
  int detached = f->detach;
  struct ame__tls *t = f->tls;
  int shut = 0, hold = f->tls_hold;
  /* Take what was flushed, never what a callback is still writing (out:
  ** the next flush releases it). */
  if (!detached && !f->werr) {
    if (t) {
      ame__oq_splice(&f->tplain, &f->ready);
      shut = f->tls_shut_ready;
      f->tls_shut_ready = 0;
    } else {
      ame__oq_splice(&f->wq, &f->ready);
    }
  }
  pthread_mutex_unlock(&c->lock);
  if (detached) return; /* closed by Python: send nothing more */
  if (t) tls_seal(c, f, shut, hold);
  if (f->wq.head) {
    int rc = ame__oq_flush(&f->wq, f->fd, &sent);
    if (rc < 0 && rc != -EAGAIN) err = -rc;
  }
  pthread_mutex_lock(&c->lock);
  int sig = 0;
  f->queued -= sent;
  c->n_sends += sent > 0;
  c->n_bytes_out += sent;
  if (err) {
    f->werr = err;
    ame__oq_clear(&f->wq);
    ame__oq_clear(&f->ready);
    ame__oq_clear(&f->out);
    f->queued = 0;
  }
  /* Drained, if Python asked; failed, always: Twisted's write() starts
  ** writing, so its doWrite meets the error and loses the connection even
  ** when nobody reads it (reading paused, or ended by a half-close). */
  if (!f->detach && (err || (f->queued == 0 && f->want_drain))) {
    f->drained = 1;
    sig = fready_push(c, f);
  }
  pthread_mutex_unlock(&c->lock);
  c->wake_pending |= sig;
}

/* A listening stream's accept batch (do_accept). */
struct accepting {
  struct core *c;
  struct fconn *f;
  int sig;      /* wake the Python thread */
  int detached; /* Python let go of the listener meanwhile */
};

/* Worker.  Put connection fd in the listener's inbound buffer.  Return
** nonzero to stop accepting: detached, out of memory, or the buffer full
** until Python takes some. */
static int take_accepted(void *arg, int fd, const struct sockaddr_storage *sa,
                         socklen_t len) {
  struct accepting *x = arg;
  struct core *c = x->c;
  struct fconn *f = x->f;
  struct accepted a = {.fd = fd, .len = len};
  memcpy(&a.addr, sa, len <= sizeof a.addr ? len : sizeof a.addr);
  pthread_mutex_lock(&c->lock);
  if (f->detach) {
    close(fd);
    pthread_mutex_unlock(&c->lock);
    x->detached = 1;
    return 1;
  }
  int stop = 0;
  if (ame__ibuf_append(&f->in, &a, sizeof a) != 0) {
    close(fd);
    f->rerr = ENOMEM;
    stop = 1;
  } else {
    c->n_accepted++;
  }
  if (f->want_read) x->sig |= fready_push(c, f);
  stop |= f->in.len >= 256 * sizeof(struct accepted);
  pthread_mutex_unlock(&c->lock);
  return stop;
}

/* Worker.  Accept a batch of connections on a listening stream into its
** inbound buffer (sockio.h's loop, as the reactor's listeners).  An error
** other than "none left" stops accepting here (fupdate) until Python has
** met it with Twisted's own accept() (which knows how to recover from
** EMFILE). */
static void do_accept(struct core *c, struct fconn *f) {
  struct accepting x = {.c = c, .f = f};
  int rc = ame__sock_accept_batch(f->fd, AME__ACCEPT_BATCH, 1, take_accepted,
                                  &x);
  if (x.detached) return;
  if (rc < 0) {
    pthread_mutex_lock(&c->lock);
    if (f->detach) {
      pthread_mutex_unlock(&c->lock);
      return;
    }
    f->rerr = -rc;
    if (f->want_read) x.sig |= fready_push(c, f);
    pthread_mutex_unlock(&c->lock);
  }
  c->wake_pending |= x.sig;
}

/* Commit handler of fpoll_cb: on the worker, outside the transaction. */
static void fdeliver(void *arg) {
  struct fconn *f = arg;
  struct core *c = f->c;
  if (f->poll == NULL) return;
  int ev = f->cb_status < 0 ? AME_READABLE | AME_WRITABLE : f->cb_events;
  /* On an error (EPOLLERR) libuv stopped the watch: start it again if
  ** still needed (recv/send below find the error, or data still queued). */
  if (f->cb_status < 0) f->armed = -1;
  if (f->listener) {
    do_accept(c, f);
  } else {
    if (ev & AME_WRITABLE) do_send(c, f);
    if (ev & (AME_READABLE | AME_DISCONNECT)) do_recv(c, f);
  }
  fupdate(c, f);
}

static int fpoll_cb(ame_tx_t *tx, ame_poll_t *p, int status, int events) {
  struct fconn *f = ame_handle_data(p);
  ame__worker_busy(f->c);
  f->cb_status = status;
  f->cb_events = events;
  return ame_tx_on_commit(tx, fdeliver, f);
}

void ame__fconn_apply_all(struct core *c) {
  pthread_mutex_lock(&c->lock);
  struct fconn *f = c->fdirty;
  c->fdirty = NULL;
  pthread_mutex_unlock(&c->lock);
  while (f) {
    pthread_mutex_lock(&c->lock);
    struct fconn *next = f->next_dirty;
    f->dirty = 0;
    int detach = f->detach;
    struct ame__tls *t = f->tls;
    f->seen = 1;
    pthread_mutex_unlock(&c->lock);
    if (detach) {
      /* Python's fd: let go of it.  Python closes it, or gave it up for
      ** this thread to close now that nothing here uses it. */
      int fd = f->fd;
      if (f->poll) ame_poll_stop(f->poll);
      f->poll = NULL;
      f->armed = 0;
      f->fd = -1;
      pthread_mutex_lock(&c->lock);
      close_accepted(f);
      int how = f->close_fd;
      f->close_fd = 0;
      pthread_mutex_unlock(&c->lock);
      if (how && fd >= 0) close_socket(fd, how);
    } else {
      /* TLS just switched on: bytes read before, or a client's hello. */
      if (t && !t->busy && !t->hs && !t->failed) tls_recv(c, f, 0, 0);
      if (!f->listener) do_send(c, f);
      fupdate(c, f);
    }
    pthread_mutex_lock(&c->lock);
    fconn_unref(f); /* the dirty list's reference */
    pthread_mutex_unlock(&c->lock);
    f = next;
  }
}

void ame__fconn_free_all(struct core *c) {
  struct fconn *f = c->fready_head;
  c->fready_head = c->fready_tail = NULL;
  while (f) {
    struct fconn *next = f->next_ready;
    fconn_unref(f);
    f = next;
  }
  f = c->fdirty;
  c->fdirty = NULL;
  while (f) {
    struct fconn *next = f->next_dirty;
    fconn_unref(f);
    f = next;
  }
  f = c->fpending;
  c->fpending = NULL;
  while (f) {
    struct fconn *next = f->next_pending;
    fconn_unref(f);
    f = next;
  }
}

/* ------------------------------------------------------------------------
** The Python thread: dispatch.
*/

struct entry {
  struct fconn *f;
  PyObject *owner;  /* strong */
  ame__ibuf_t in;   /* data taken (empty: none) */
  int rd, wr;       /* slow events for doRead / doWrite */
  int hs;           /* the TLS handshake completed: tell the protocol */
};

/* The batch a dispatch works on lives on its own stack (or heap): a
** callback may run the reactor again (reactor.iterate() inside
** dataReceived), which dispatches again. */
#define AME_ENTS_STACK 32

/* Lock held.  Put data taken (in) back in front of f's inbound buffer. */
static void ibuf_putback(struct fconn *f, ame__ibuf_t *in) {
  if (ame__ibuf_putback(&f->in, in) != 0) f->rerr = ENOMEM;
}

static int append_event(PyObject *events, PyObject *owner, int ev) {
  PyObject *t = Py_BuildValue("(Oi)", owner, ev);
  if (t == NULL) return -1;
  int rc = PyList_Append(events, t);
  Py_DECREF(t);
  return rc;
}

/* r: what a callback of the stream's protocol returned (NULL: it raised).
** Anything but None goes to Python (reactor._ameReadFailed), which does
** what Twisted does; r is released. */
static void read_failed(struct core *c, PyObject *owner, PyObject *r) {
  if (r == Py_None) {
    Py_DECREF(r);
    return;
  }
  PyObject *exc = NULL;
  if (r == NULL) {
    PyObject *type, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc && tb) PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (exc == NULL) exc = Py_NewRef(Py_None);
    r = Py_NewRef(Py_None);
  }
  PyObject *x = PyObject_CallFunctionObjArgs(
      c->on_read_error, owner, exc ? exc : r, exc ? Py_True : Py_False, NULL);
  if (x == NULL) PyErr_WriteUnraisable(c->on_read_error);
  Py_XDECREF(x);
  Py_XDECREF(exc);
  Py_DECREF(r);
}

int ame__fconn_dispatch(struct core *c, PyObject *events) {
  struct entry stack_ents[AME_ENTS_STACK];
  struct entry *ents = stack_ents;
  pthread_mutex_lock(&c->lock);
  size_t n = 0;
  for (struct fconn *f = c->fready_head; f; f = f->next_ready) n++;
  if (n > AME_ENTS_STACK) {
    ents = malloc(n * sizeof *ents);
    if (ents == NULL) {
      pthread_mutex_unlock(&c->lock);
      PyErr_NoMemory();
      return -1;
    }
  }
  struct fconn *f = c->fready_head;
  c->fready_head = c->fready_tail = NULL;
  for (size_t i = 0; i < n; i++, f = f->next_ready) {
    struct entry *e = &ents[i];
    memset(e, 0, sizeof *e);
    e->f = f; /* takes over the ready list's reference */
    f->queued_ready = 0;
    if (f->owner == NULL || f->detach) continue;
    e->owner = f->owner;
    Py_INCREF(e->owner);
    if (f->listener) { /* Port.doRead takes the connections */
      e->rd = f->want_read && (f->in.len || f->rerr);
      continue;
    }
    e->hs = f->tls_news;
    f->tls_news = 0;
    if (f->want_read) {
      if (f->in.len) {
        int was_full = f->in.len >= AME_ICAP;
        ame__ibuf_take(&f->in, &e->in);
        if (was_full) mark_fdirty(c, f); /* read again */
      }
      e->rd = f->eof || f->rerr;
    }
    if (f->drained || f->werr) {
      e->wr = f->want_drain || f->werr;
      f->drained = 0;
    }
  }
  pthread_mutex_unlock(&c->lock);

  int rc = 0;
  PyObject *contexts = NULL;
  for (size_t i = 0; i < n; i++) {
    struct entry *e = &ents[i];
    f = e->f;
    if (e->owner && e->hs && rc == 0) {
      /* Before the first data, as Twisted's TLS tells the protocol. */
      StreamObject *s = (StreamObject *)e->owner;
      PyObject *target = s->tls_owner ? s->tls_owner : s->protocol;
      e->hs = 0; /* told (or nobody to tell) */
      if (s->f == f && target) {
        PyObject *proto = Py_NewRef(target);
        PyObject *r = PyObject_CallMethodNoArgs(proto, str_ameHandshakeDone);
        Py_DECREF(proto);
        read_failed(c, e->owner, r);
      }
    }
    if (e->owner && e->in.len && rc == 0 && contexts == NULL &&
        (contexts = context_list()) == NULL)
      rc = -1;
    if (e->owner && e->in.len && rc == 0) {
      StreamObject *s = (StreamObject *)e->owner;
      PyObject *data = PyBytes_FromStringAndSize(ame__ibuf_data(&e->in),
                                                 (Py_ssize_t)e->in.len);
      if (data == NULL) {
        rc = -1;
      } else if (s->f == f && f->want_read && s->protocol) {
        PyObject *proto = s->protocol;
        Py_INCREF(proto);
        PyObject *r = NULL;
        if (push_log_context(s, contexts) == 0) {
          r = PyObject_CallMethodOneArg(proto, str_dataReceived, data);
          pop_log_context(contexts);
        }
        Py_DECREF(proto);
        read_failed(c, e->owner, r);
        ame__ibuf_free(&e->in);
      }
      Py_XDECREF(data);
    }
    if (e->owner && rc == 0) {
      StreamObject *s = (StreamObject *)e->owner;
      if (e->rd && s->f == f && f->want_read &&
          append_event(events, e->owner, AME_READABLE) < 0)
        rc = -1;
      if (e->wr && s->f == f && append_event(events, e->owner, AME_WRITABLE) < 0)
        rc = -1;
    }
    pthread_mutex_lock(&c->lock);
    /* Not delivered (reading stopped meanwhile, or an error earlier in
    ** the batch): keep it for the next dispatch.  The handshake's news
    ** too: data must not reach the protocol before it (a client's name
    ** check runs there). */
    int again = 0;
    if (e->hs && !f->detach) {
      f->tls_news = 1;
      again = 1;
    }
    if (e->in.len) {
      if (!f->detach) {
        ibuf_putback(f, &e->in);
        again |= f->want_read;
      } else {
        ame__ibuf_free(&e->in);
      }
    }
    if (again && fready_push(c, f)) ame__signal_efd(c);
    fconn_unref(f);
    pthread_mutex_unlock(&c->lock);
    Py_XDECREF(e->owner);
  }
  Py_XDECREF(contexts);
  if (ents != stack_ents) free(ents);
  return rc;
}

/* ------------------------------------------------------------------------
** The Stream type.
*/

/* self->f if its core still runs; else let f go (the core was closed, or
** made before fork(): its worker is gone) and return NULL. */
static struct fconn *live_f(StreamObject *self) {
  struct fconn *f = self->f;
  if (f == NULL) return NULL;
  CoreObject *co = (CoreObject *)self->core;
  if (co && co->c == f->c && ame__core_live(f->c)) return f;
  self->f = NULL;
  fconn_free(f); /* f->fd is Python's: it closes it */
  Py_CLEAR(self->core);
  return NULL;
}

/* Detach from the worker (see the opening comment).  close_how 0: return
** once the worker no longer uses the fd, which Python then closes.
** Otherwise (CLOSE_*) Python gave the fd up: it is closed here at once if
** the worker never took the stream up; else the worker closes it once it
** lets go, without a wait here, except for listeners and inline mode,
** which wait and close here. */
static void stream_detach(StreamObject *self, int close_how) {
  struct fconn *f = live_f(self);
  if (f == NULL) return;
  self->f = NULL;
  struct core *c = f->c;
  int fd = self->pyfd;
  pthread_mutex_lock(&c->lock);
  int sync = f->seen;
  if (close_how && sync && !f->listener && !c->inline_mode) {
    f->close_fd = close_how; /* the worker's, once it lets go */
    close_how = 0;
    sync = 0;
  }
  if (f->counted) c->n_open--;
  if (f->tls) {
    c->n_tls_open--;
    self->tls_done = f->tls_done;
    self->tls_failed = f->tls_failed;
    if (f->tls_failed) self->tls_rec = *f->tls; /* final once published */
  }
  f->detach = 1;
  f->owner = NULL;
  f->want_read = f->want_drain = 0;
  ame__oq_clear(&f->out);
  ame__oq_clear(&f->ready);
  mark_fdirty(c, f);
  fconn_unref(f); /* the Python object's reference */
  pthread_mutex_unlock(&c->lock);
  if (sync) {
    /* The core stays alive meanwhile: self->core is released after. */
    int rc = ame__core_sync(c);
    if (rc != 0)
      fprintf(stderr, "ame._ame: detaching fd %d: %s\n", self->pyfd,
              strerror(-rc));
  }
  if (close_how && fd >= 0) close_socket(fd, close_how);
  Py_CLEAR(self->core);
  /* The worker and a handshake step still in the pool use the SSL object
  ** through f->tls's own reference (ame__tls_init), not pyOpenSSL's. */
  Py_CLEAR(self->tls_conn);
  Py_CLEAR(self->tls_owner);
}

PyDoc_STRVAR(attach_doc,
"_ameAttach(core, fd, listener=False, pipe=False)\n--\n\n"
"Hand fd's I/O to core's worker: from now on write() and reading go\n"
"through C; for a listening socket (listener), the worker accepts; for\n"
"a pipe (pipe: read() rather than recv()), it only reads.\n"
"Detach with _ameDetach() before closing fd.");

static PyObject *Stream_attach(StreamObject *self, PyObject *args) {
  PyObject *core;
  int fd, listener = 0, pipe = 0;
  if (!PyArg_ParseTuple(args, "Oi|pp:_ameAttach", &core, &fd, &listener,
                        &pipe))
    return NULL;
  if (fd < 0) return ame__set_error(-EBADF);
  CoreObject *co = (CoreObject *)core;
  if (co->c == NULL || !ame__core_live(co->c)) {
    PyErr_SetString(PyExc_RuntimeError, "the ame reactor core is not usable");
    return NULL;
  }
  if (live_f(self)) {
    if (self->f->c == co->c) Py_RETURN_NONE;
    stream_detach(self, 0);
  }
  struct core *c = co->c;
  if (c->scratch == NULL) {
    /* Allocated here, used only by the worker (which reads it after the
    ** apply that the lock orders after this). */
    c->scratch = malloc(AME_RECV_SIZE);
    if (c->scratch == NULL) return PyErr_NoMemory();
  }
  struct fconn *f = calloc(1, sizeof *f);
  if (f == NULL) return PyErr_NoMemory();
  /* The worker uses fd itself: detaching waits until it let go. */
  f->c = c;
  f->fd = fd;
  f->listener = listener;
  f->pipe = pipe;
  self->pyfd = fd;
  self->listener = listener;
  f->refs = 1;
  f->owner = (PyObject *)self;
  f->counted = !listener && !pipe;
  if (f->counted) {
    pthread_mutex_lock(&c->lock);
    c->n_open++;
    pthread_mutex_unlock(&c->lock);
  }
  self->f = f;
  Py_INCREF(core);
  Py_XSETREF(self->core, core);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(start_tls_doc,
"_ameStartTLS(connection, ssl, tls_method, plain_verify=False, "
"quiet_info=False, owner=None)\n--\n\n"
"Switch TLS on in C: from now on the worker runs the handshake and the\n"
"record layer on the SSL object at address ssl (connection's: a\n"
"pyOpenSSL Connection over memory BIOs, its accept or connect state\n"
"set; kept alive until the stream detaches), what the protocol gets is\n"
"plaintext and write() takes plaintext.  tls_method: what TLS_method()\n"
"returns to pyOpenSSL (ValueError unless it is what it returns here:\n"
"the same libssl).  owner's _ameHandshakeDone() (default: the\n"
"protocol's) is called once the handshake completes, before any data.  plain_verify: the\n"
"connection's verify callback only returns OpenSSL's own verdict (as\n"
"Twisted's CertificateOptions' does): verify without it, in C.\n"
"quiet_info: the context's info callback is not called for this\n"
"connection (what it did is done in Python around the handshake: a\n"
"client's check of the server's name); then what is written waits,\n"
"unencrypted, after the handshake until _ameTLSRelease().");

static PyObject *Stream_startTLS(StreamObject *self, PyObject *args) {
  PyObject *conn;
  unsigned long long ssl, fn;
  int plain_verify = 0, quiet_info = 0;
  PyObject *owner = NULL;
  if (!PyArg_ParseTuple(args, "OKK|ppO:_ameStartTLS", &conn, &ssl, &fn,
                        &plain_verify, &quiet_info, &owner))
    return NULL;
  struct fconn *f = live_f(self);
  if (f == NULL || f->listener || f->pipe) {
    PyErr_SetString(PyExc_RuntimeError, "not an attached connection");
    return NULL;
  }
  if (!ame__tls_same_library((uintptr_t)fn)) {
    PyErr_SetString(PyExc_ValueError,
                    "pyOpenSSL uses another libssl than ame's");
    return NULL;
  }
  if (self->tls_conn != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "TLS is on already");
    return NULL;
  }
  struct core *c = f->c;
  /* startTLS on an established connection: what was written before
  ** leaves as plaintext, ahead of the first record.  The worker takes it
  ** (out, then ready, into wq) before TLS is on. */
  pthread_mutex_lock(&c->lock);
  int unsent = f->out.head != NULL || f->ready.head != NULL;
  pthread_mutex_unlock(&c->lock);
  if (unsent) {
    ame__fconn_flush_pending(c);
    int rc = ame__core_sync(c);
    if (rc != 0) return ame__set_error(rc);
    f = live_f(self); /* the sync ran without the GIL */
    if (f == NULL || self->tls_conn != NULL) {
      PyErr_SetString(PyExc_RuntimeError, "the stream changed meanwhile");
      return NULL;
    }
  }
  if (c->tls_buf == NULL) {
    /* Used only by the worker, after the apply the lock orders after
    ** this (as c->scratch). */
    c->tls_buf = malloc(AME_RECV_SIZE);
    if (c->tls_buf == NULL) return PyErr_NoMemory();
  }
  if (tls_pool_start(c) != 0 && c->hs_nthreads == 0)
    PyErr_Clear(); /* no pool: handshakes run on the worker */
  struct ame__tls *t = malloc(sizeof *t);
  if (t == NULL) return PyErr_NoMemory();
  if (ame__tls_init(t, (uintptr_t)ssl) != 0) {
    free(t);
    PyErr_SetString(PyExc_ValueError, "the SSL object has no memory BIOs");
    return NULL;
  }
  if (plain_verify) ame__tls_plain_verify(t);
  if (quiet_info) ame__tls_quiet_info(t);
  self->tls_conn = Py_NewRef(conn);
  Py_XSETREF(self->tls_owner, Py_XNewRef(owner));
  self->tls_c = 1;
  pthread_mutex_lock(&c->lock);
  f->tls = t;
  f->tls_hold = quiet_info;
  /* Anything read so far is records: the worker feeds it first. */
  if (f->in.len) ame__ibuf_take(&f->in, &f->tls_early);
  c->n_tls_open++;
  mark_fdirty(c, f);
  pthread_mutex_unlock(&c->lock);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(tls_shutdown_doc,
"_ameTLSShutdown()\n--\n\n"
"TLS in C: send close_notify after everything written so far (once the\n"
"handshake is done).  Until it is written the stream is not drained.");

static PyObject *Stream_tlsShutdown(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  if (f == NULL || self->tls_conn == NULL || self->tls_shut_called)
    Py_RETURN_NONE;
  self->tls_shut_called = 1;
  struct core *c = f->c;
  pthread_mutex_lock(&c->lock);
  if (!f->tls_failed && !f->dropping) {
    f->tls_shut_out = 1;
    f->tls_shut_owed = 1;
    f->queued += 1; /* close_notify: not drained until it is written */
    mark_pending(c, f);
  }
  pthread_mutex_unlock(&c->lock);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(tls_release_doc,
"_ameTLSRelease()\n--\n\n"
"TLS in C, a client started with quiet_info: the server's name passed\n"
"Python's check; encrypt and send what was written (held since the\n"
"handshake), and everything after it.");

static PyObject *Stream_tlsRelease(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  if (f == NULL || self->tls_conn == NULL) Py_RETURN_NONE;
  struct core *c = f->c;
  pthread_mutex_lock(&c->lock);
  if (f->tls_hold) {
    f->tls_hold = 0;
    if (!f->detach) mark_fdirty(c, f); /* the worker seals what waits */
  }
  pthread_mutex_unlock(&c->lock);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(tls_info_doc,
"_ameTLSInfo()\n--\n\n"
"TLS in C: (handshake completed, error, peer closed), error being None\n"
"or why the connection failed, as pyOpenSSL would raise it: ('ssl',\n"
"[(lib, func, reason), ...]) for SSL.Error, ('syscall', errno) for\n"
"SSL.SysCallError, ('eof',) for SysCallError(-1, 'Unexpected EOF');\n"
"peer closed: if the end of input is the peer's close_notify, not yet\n"
"answered (_ameTLSShutdown answers it), the TLS protocol to tell\n"
"(_ameCloseNotify), else None.  After the stream detached: what the\n"
"worker had published by then (peer closed: None).");

static PyObject *Stream_tlsInfo(StreamObject *self, PyObject *unused) {
  (void)unused;
  int done = self->tls_done, failed = self->tls_failed, closed = 0;
  struct ame__tls rec = self->tls_rec;
  struct fconn *f = live_f(self);
  if (f && f->tls) {
    pthread_mutex_lock(&f->c->lock);
    done = f->tls_done;
    failed = f->tls_failed;
    closed = f->tls_peer_closed && !failed;
    if (failed) rec = *f->tls;
    pthread_mutex_unlock(&f->c->lock);
  }
  PyObject *err;
  if (!failed) {
    err = Py_NewRef(Py_None);
  } else if (rec.ekind == AME_TLS_ESSL) {
    PyObject *l = PyList_New(rec.ncodes);
    if (l == NULL) return NULL;
    for (int i = 0; i < rec.ncodes; i++) {
      const char *lib, *func, *reason;
      ame__tls_error_strings(rec.codes[i], &lib, &func, &reason);
      PyObject *tup = Py_BuildValue("(sss)", lib, func, reason);
      if (tup == NULL) {
        Py_DECREF(l);
        return NULL;
      }
      PyList_SET_ITEM(l, i, tup);
    }
    err = Py_BuildValue("(sN)", "ssl", l);
  } else if (rec.ekind == AME_TLS_ESYSCALL) {
    err = Py_BuildValue("(si)", "syscall", rec.eno);
  } else {
    err = Py_BuildValue("(s)", "eof");
  }
  if (err == NULL) return NULL;
  PyObject *owner = closed && self->tls_owner ? self->tls_owner : Py_None;
  return Py_BuildValue("(ONO)", done ? Py_True : Py_False, err, owner);
}

static PyObject *Stream_discard(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  if (f) {
    pthread_mutex_lock(&f->c->lock);
    f->queued -= f->out.bytes + f->ready.bytes;
    ame__oq_clear(&f->out);
    ame__oq_clear(&f->ready);
    f->dropping = 1;
    pthread_mutex_unlock(&f->c->lock);
  }
  Py_RETURN_NONE;
}

PyObject *ame__sockaddr_tuple(const struct sockaddr *sa, socklen_t len) {
  char host[INET6_ADDRSTRLEN];
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
    return Py_BuildValue("(si)", host, ntohs(sin->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    return Py_BuildValue("(siII)", host, ntohs(s6->sin6_port),
                         (unsigned)ntohl(s6->sin6_flowinfo),
                         (unsigned)s6->sin6_scope_id);
  }
  return Py_BuildValue("(iy#)", sa->sa_family, (const char *)sa,
                       (Py_ssize_t)len);
}

PyDoc_STRVAR(accept_doc,
"_ameAcceptOne()\n--\n\n"
"A listening stream: the next connection the worker accepted, as\n"
"(fd, address); else the errno of the accept() that failed (the worker\n"
"accepts again after _ameRequeue()); else None.");

static PyObject *Stream_acceptOne(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  if (f == NULL || !f->listener) Py_RETURN_NONE;
  struct core *c = f->c;
  pthread_mutex_lock(&c->lock);
  if (f->in.len >= sizeof(struct accepted)) {
    int was_full = f->in.len >= 256 * sizeof(struct accepted);
    struct accepted a;
    memcpy(&a, ame__ibuf_data(&f->in), sizeof a);
    ame__ibuf_consume(&f->in, sizeof a);
    if (was_full) mark_fdirty(c, f);
    pthread_mutex_unlock(&c->lock);
    PyObject *addr = ame__sockaddr_tuple((const struct sockaddr *)&a.addr,
                                         a.len);
    if (addr == NULL) {
      close(a.fd);
      return NULL;
    }
    return Py_BuildValue("(iN)", a.fd, addr);
  }
  int err = f->rerr; /* cleared by _ameRequeue, after doRead */
  pthread_mutex_unlock(&c->lock);
  if (err) return PyLong_FromLong(err);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(requeue_doc,
"_ameRequeue()\n--\n\n"
"A listening stream, after Port.doRead: accept again after an error; if\n"
"accepted connections are left (Twisted's accept loop stopped early),\n"
"deliver it again at the next wait().");

static PyObject *Stream_requeue(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  if (f && f->listener) {
    pthread_mutex_lock(&f->c->lock);
    if (f->rerr) {
      f->rerr = 0;
      mark_fdirty(f->c, f);
    }
    if (f->want_read && f->in.len) fready_push(f->c, f);
    pthread_mutex_unlock(&f->c->lock);
  }
  Py_RETURN_NONE;
}

static PyObject *Stream_detach(StreamObject *self, PyObject *unused) {
  (void)unused;
  stream_detach(self, 0);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(detach_close_doc,
"_ameDetachClose(orderly, shutdown=True)\n--\n\n"
"Detach and close the fd the stream was attached for, which the caller\n"
"gave up (socket.detach()), as Twisted's _closeSocket: orderly, after\n"
"shutdown(SHUT_RDWR) if shutdown is true; otherwise with SO_LINGER 0 (a\n"
"reset).  Without waiting for the worker\n"
"where it may still use the fd: it closes it once it let go.\n"
"RuntimeError if the stream is not attached (the fd is the caller's).");

static PyObject *Stream_detachClose(StreamObject *self, PyObject *args) {
  int orderly, down = 1;
  if (!PyArg_ParseTuple(args, "p|p:_ameDetachClose", &orderly, &down))
    return NULL;
  if (live_f(self) == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "not attached");
    return NULL;
  }
  stream_detach(self, !orderly ? CLOSE_RESET
                      : down   ? CLOSE_SHUTDOWN
                               : CLOSE_PLAIN);
  Py_RETURN_NONE;
}

/* Set want_read / want_drain. */
static PyObject *set_want(StreamObject *self, PyObject *arg, int drain) {
  int on = PyObject_IsTrue(arg);
  if (on < 0) return NULL;
  struct fconn *f = live_f(self);
  if (f == NULL) Py_RETURN_NONE;
  struct core *c = f->c;
  int sig = 0;
  pthread_mutex_lock(&c->lock);
  if (drain) {
    f->want_drain = on;
    /* Nothing left to send: drained at once. */
    if (on && (f->queued == 0 || f->werr)) {
      f->drained = 1;
      sig = fready_push(c, f);
    }
  } else if (f->want_read != on) {
    f->want_read = on;
    mark_fdirty(c, f);
    if (on && (f->in.len || f->eof || f->rerr)) sig = fready_push(c, f);
  }
  pthread_mutex_unlock(&c->lock);
  if (sig) ame__signal_efd(c);
  Py_RETURN_NONE;
}

static PyObject *Stream_setRead(StreamObject *self, PyObject *arg) {
  return set_want(self, arg, 0);
}

static PyObject *Stream_setDrain(StreamObject *self, PyObject *arg) {
  return set_want(self, arg, 1);
}

PyDoc_STRVAR(read_doc,
"_ameRead()\n--\n\n"
"Take what the worker read: bytes (data), b'' (end of file), an int\n"
"(errno of a failed recv) or None (nothing, or not reading).");

static PyObject *Stream_read(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  if (f == NULL) Py_RETURN_NONE;
  struct core *c = f->c;
  pthread_mutex_lock(&c->lock);
  if (!f->want_read) {
    pthread_mutex_unlock(&c->lock);
    Py_RETURN_NONE;
  }
  if (f->in.len) {
    ame__ibuf_t in;
    int was_full = f->in.len >= AME_ICAP;
    ame__ibuf_take(&f->in, &in);
    if (was_full) mark_fdirty(c, f);
    pthread_mutex_unlock(&c->lock);
    PyObject *b = PyBytes_FromStringAndSize(ame__ibuf_data(&in),
                                            (Py_ssize_t)in.len);
    pthread_mutex_lock(&c->lock);
    if (b == NULL && self->f == f)
      ibuf_putback(f, &in);
    else
      ame__ibuf_free(&in);
    pthread_mutex_unlock(&c->lock);
    return b;
  }
  int eof = f->eof, err = f->rerr;
  pthread_mutex_unlock(&c->lock);
  if (err) return PyLong_FromLong(err);
  if (eof) return PyBytes_FromStringAndSize(NULL, 0);
  Py_RETURN_NONE;
}

/* Append data to the outbound buffer and mark the stream for the next
** flush.  Return 0 or -1 (MemoryError set). */
static int stream_send(StreamObject *self, const char *p, size_t n) {
  struct fconn *f = self->f;
  struct core *c = f->c;
  pthread_mutex_lock(&c->lock);
  if (f->werr || f->dropping) { /* failing or aborted: drop, as Twisted */
    pthread_mutex_unlock(&c->lock);
    return 0;
  }
  if (ame__oq_append(&f->out, p, n) != 0) {
    pthread_mutex_unlock(&c->lock);
    PyErr_NoMemory();
    return -1;
  }
  f->queued += n;
  c->n_writes++;
  mark_pending(c, f);
  pthread_mutex_unlock(&c->lock);
  return 0;
}

/* stream_send for each bytes of seq (a list or tuple of bytes), under one
** lock. */
static int stream_sendv(StreamObject *self, PyObject *seq) {
  struct fconn *f = self->f;
  struct core *c = f->c;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  size_t total = 0;
  pthread_mutex_lock(&c->lock);
  if (f->werr || f->dropping) {
    pthread_mutex_unlock(&c->lock);
    return 0;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
    size_t len = (size_t)PyBytes_GET_SIZE(b);
    if (ame__oq_append(&f->out, PyBytes_AS_STRING(b), len) != 0) {
      f->queued += total;
      mark_pending(c, f);
      pthread_mutex_unlock(&c->lock);
      PyErr_NoMemory();
      return -1;
    }
    total += len;
  }
  if (total) {
    f->queued += total;
    c->n_writes++;
    mark_pending(c, f);
  }
  pthread_mutex_unlock(&c->lock);
  return 0;
}

PyDoc_STRVAR(send_doc,
"_ameSend(data)\n--\n\n"
"Queue bytes for the worker to send, whatever the transport's state.");

static PyObject *Stream_send(StreamObject *self, PyObject *data) {
  Py_buffer v;
  if (PyObject_GetBuffer(data, &v, PyBUF_SIMPLE) < 0) return NULL;
  int rc = 0;
  if (live_f(self) && v.len > 0) rc = stream_send(self, v.buf, (size_t)v.len);
  PyBuffer_Release(&v);
  if (rc) return NULL;
  Py_RETURN_NONE;
}

static PyObject *Stream_queued(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  size_t q = 0;
  if (f) {
    pthread_mutex_lock(&f->c->lock);
    q = f->queued;
    pthread_mutex_unlock(&f->c->lock);
  }
  return PyLong_FromSize_t(q);
}

PyDoc_STRVAR(wstate_doc,
"_ameWriteState()\n--\n\n"
"(errno of a failed send or 0, bytes queued and not yet sent).");

static PyObject *Stream_wstate(StreamObject *self, PyObject *unused) {
  (void)unused;
  struct fconn *f = live_f(self);
  size_t q = 0;
  int err = 0;
  if (f) {
    pthread_mutex_lock(&f->c->lock);
    q = f->queued;
    err = f->werr;
    pthread_mutex_unlock(&f->c->lock);
  }
  return Py_BuildValue("(in)", err, (Py_ssize_t)q);
}

/* The checks FileDescriptor.write makes before buffering: 1 to buffer in C,
** 0 to drop (also once TLS in C was asked for close_notify, as Twisted's
** TLS drops writes after loseConnection), -1 to take the Python path
** (Twisted's TLS, a pull producer, not attached).  With a streaming
** producer (twisted.web registers the HTTPChannel), writes stay in C;
** after_write() pauses it when full. */
static int write_mode(StreamObject *self) {
  if (self->tls_shut_called) return 0; /* TLS in C: after close_notify */
  if (self->tls_c) {
    /* C encrypts (also after startTLS, which sets TLS): never back to
    ** Python's TLS layer, which would write here again.  Detached, the
    ** connection is gone: dropped, as Twisted drops it then. */
    if (live_f(self) == NULL) return 0;
  } else if (self->tls != Py_False && PyObject_IsTrue(self->tls) != 0) {
    return -1;
  }
  if (live_f(self) == NULL) return -1;
  if (self->producer != Py_None &&
      (self->streaming == Py_False || PyObject_IsTrue(self->streaming) != 1))
    return -1;
  int conn = PyObject_IsTrue(self->connected);
  if (conn <= 0) return conn < 0 ? -1 : 0;
  int wd = self->write_disconnected == Py_False
               ? 0
               : PyObject_IsTrue(self->write_disconnected);
  if (wd != 0) return wd < 0 ? -1 : 0;
  return 1;
}

/* After buffering in C: with a streaming producer registered and more than
** bufferSize queued, do what FileDescriptor.write does then (pause the
** producer, and ask for doWrite once drained, which resumes it). */
static PyObject *after_write(StreamObject *self) {
  if (self->producer == Py_None) Py_RETURN_NONE;
  struct fconn *f = self->f;
  pthread_mutex_lock(&f->c->lock);
  size_t q = f->queued;
  pthread_mutex_unlock(&f->c->lock);
  if ((Py_ssize_t)q <= self->buffer_size) Py_RETURN_NONE;
  return PyObject_CallMethodNoArgs((PyObject *)self, str_ameBufferFull);
}

PyDoc_STRVAR(write_doc,
"write(data)\n--\n\n"
"Buffer data (bytes) to be sent; as Twisted's transport.write().");

/* TLS in C: the plaintext a write of data (not bytes) stands for, as
** Twisted's TLSMemoryBIOProtocol takes it: str is refused, any other
** bytes-like object is sent (pyOpenSSL's send).  A new reference, or NULL
** with TypeError set. */
static PyObject *tls_plaintext(PyObject *data) {
  if (PyUnicode_Check(data)) {
    PyErr_SetString(PyExc_TypeError,
                    "Must write bytes to a TLS transport, not str.");
    return NULL;
  }
  if (!PyObject_CheckBuffer(data)) {
    PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%s'",
                 Py_TYPE(data)->tp_name);
    return NULL;
  }
  return PyBytes_FromObject(data);
}

static PyObject *Stream_write(StreamObject *self, PyObject *data) {
  /* Inside ame.atomic: once it commits (shared.c). */
  int deferred = amepy_shared_defer_method((PyObject *)self, "write", data);
  if (deferred) return deferred < 0 ? NULL : Py_NewRef(Py_None);
  if (self->tls_c && !PyBytes_Check(data)) {
    /* Not Twisted's own write path, which would take it for records or
    ** refuse what TLS accepts. */
    PyObject *b = tls_plaintext(data);
    if (b == NULL) return NULL;
    PyObject *r = Stream_write(self, b);
    Py_DECREF(b);
    return r;
  }
  int mode = PyBytes_Check(data) ? write_mode(self) : -1;
  if (mode < 0) {
    PyErr_Clear();
    return PyObject_CallMethodOneArg((PyObject *)self, str_ameSlowWrite, data);
  }
  if (mode == 0 || PyBytes_GET_SIZE(data) == 0) Py_RETURN_NONE;
  if (stream_send(self, PyBytes_AS_STRING(data),
                  (size_t)PyBytes_GET_SIZE(data)) < 0)
    return NULL;
  return after_write(self);
}

PyDoc_STRVAR(writeseq_doc,
"writeSequence(iovec)\n--\n\n"
"Buffer each bytes of iovec; as Twisted's transport.writeSequence().");

static PyObject *Stream_writeSequence(StreamObject *self, PyObject *iovec) {
  int deferred =
      amepy_shared_defer_method((PyObject *)self, "writeSequence", iovec);
  if (deferred) return deferred < 0 ? NULL : Py_NewRef(Py_None);
  int mode = PyList_CheckExact(iovec) || PyTuple_CheckExact(iovec)
                 ? write_mode(self)
                 : -1;
  PyObject *seq = NULL;
  /* The items' types are checked whatever the state, as Twisted's
  ** writeSequence checks them before it looks at connected: a str raises
  ** TypeError (on the Python path) even where bytes would be dropped. */
  if (mode >= 0) {
    seq = PySequence_Fast(iovec, "");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n && mode >= 0; i++)
      if (!PyBytes_Check(PySequence_Fast_GET_ITEM(seq, i))) mode = -1;
  }
  if (mode < 0 && self->tls_c) {
    /* As Twisted's TLS: one write of the items joined (bytes-like ones;
    ** str refused). */
    PyErr_Clear();
    Py_XDECREF(seq);
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL) return NULL;
    PyObject *joined = PyObject_CallMethod(empty, "join", "O", iovec);
    Py_DECREF(empty);
    if (joined == NULL) return NULL;
    PyObject *r = Stream_write(self, joined);
    Py_DECREF(joined);
    return r;
  }
  if (mode < 0) {
    PyErr_Clear();
    Py_XDECREF(seq);
    return PyObject_CallMethodOneArg((PyObject *)self, str_ameSlowWriteSeq,
                                     iovec);
  }
  if (mode > 0 && stream_sendv(self, seq) < 0) {
    Py_DECREF(seq);
    return NULL;
  }
  Py_XDECREF(seq);
  if (mode > 0) return after_write(self);
  Py_RETURN_NONE;
}

/* Data descriptors for the attributes write() reads. */
#define FIELD_GETSET(name, field, dflt)                                       \
  static PyObject *get_##name(StreamObject *self, void *cl) {               \
    (void)cl;                                                               \
    return Py_NewRef(self->field);                                          \
  }                                                                         \
  static int set_##name(StreamObject *self, PyObject *v, void *cl) {        \
    (void)cl;                                                               \
    Py_XSETREF(self->field, Py_NewRef(v ? v : (dflt)));                     \
    return 0;                                                               \
  }

static PyObject *zero;
FIELD_GETSET(connected, connected, zero)
FIELD_GETSET(writeDisconnected, write_disconnected, Py_False)
FIELD_GETSET(tls, tls, Py_False)
FIELD_GETSET(producer, producer, Py_None)
FIELD_GETSET(streaming, streaming, Py_False)

static PyObject *get_bufsize(StreamObject *self, void *cl) {
  (void)cl;
  return Py_NewRef(self->buffer_size_obj);
}

static int set_bufsize(StreamObject *self, PyObject *v, void *cl) {
  (void)cl;
  if (v == NULL) {
    PyErr_SetString(PyExc_AttributeError, "bufferSize cannot be deleted");
    return -1;
  }
  Py_ssize_t n = PyNumber_AsSsize_t(v, PyExc_OverflowError);
  if (n == -1 && PyErr_Occurred()) return -1;
  self->buffer_size = n;
  Py_XSETREF(self->buffer_size_obj, Py_NewRef(v));
  return 0;
}

static PyObject *get_protocol(StreamObject *self, void *cl) {
  (void)cl;
  if (self->protocol == NULL) {
    PyErr_SetString(PyExc_AttributeError, "protocol");
    return NULL;
  }
  return Py_NewRef(self->protocol);
}

static int set_protocol(StreamObject *self, PyObject *v, void *cl) {
  (void)cl;
  if (v == NULL && self->protocol == NULL) {
    PyErr_SetString(PyExc_AttributeError, "protocol");
    return -1;
  }
  Py_XSETREF(self->protocol, Py_XNewRef(v));
  return 0;
}

static PyObject *get_fd(StreamObject *self, void *cl) {
  (void)cl;
  return PyLong_FromLong(live_f(self) ? self->pyfd : -1);
}

static PyObject *get_listener(StreamObject *self, void *cl) {
  (void)cl;
  return PyBool_FromLong(self->listener);
}

static PyObject *get_fast(StreamObject *self, void *cl) {
  (void)cl;
  return PyBool_FromLong(live_f(self) != NULL);
}

static PyGetSetDef Stream_getset[] = {
    {"protocol", (getter)get_protocol, (setter)set_protocol, NULL, NULL},
    {"connected", (getter)get_connected, (setter)set_connected, NULL, NULL},
    {"_writeDisconnected", (getter)get_writeDisconnected,
     (setter)set_writeDisconnected, NULL, NULL},
    {"TLS", (getter)get_tls, (setter)set_tls, NULL, NULL},
    {"producer", (getter)get_producer, (setter)set_producer, NULL, NULL},
    {"streamingProducer", (getter)get_streaming, (setter)set_streaming, NULL,
     NULL},
    {"bufferSize", (getter)get_bufsize, (setter)set_bufsize, NULL, NULL},
    {"_ameFast", (getter)get_fast, NULL,
     "True while the stream's I/O is the C worker's.", NULL},
    {"_ameFd", (getter)get_fd, NULL,
     "The fd the stream is attached for, or -1.", NULL},
    {"_ameListener", (getter)get_listener, NULL,
     "True if it was attached as a listening socket.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Stream_methods[] = {
    {"write", (PyCFunction)Stream_write, METH_O, write_doc},
    {"writeSequence", (PyCFunction)Stream_writeSequence, METH_O, writeseq_doc},
    {"_ameAttach", (PyCFunction)Stream_attach, METH_VARARGS, attach_doc},
    {"_ameDetachClose", (PyCFunction)Stream_detachClose, METH_VARARGS,
     detach_close_doc},
    {"_ameDetach", (PyCFunction)Stream_detach, METH_NOARGS,
     "Stop the worker's I/O on the fd (before closing it)."},
    {"_ameDiscard", (PyCFunction)Stream_discard, METH_NOARGS,
     "Drop what write() queued and the worker has not taken yet, and\n"
     "every later write() (abortConnection)."},
    {"_ameAcceptOne", (PyCFunction)Stream_acceptOne, METH_NOARGS, accept_doc},
    {"_ameRequeue", (PyCFunction)Stream_requeue, METH_NOARGS, requeue_doc},
    {"_ameSetRead", (PyCFunction)Stream_setRead, METH_O,
     "Start (True) or stop reading."},
    {"_ameSetDrain", (PyCFunction)Stream_setDrain, METH_O,
     "Ask (True) for a WRITABLE event once everything is sent."},
    {"_ameRead", (PyCFunction)Stream_read, METH_NOARGS, read_doc},
    {"_ameSend", (PyCFunction)Stream_send, METH_O, send_doc},
    {"_ameQueued", (PyCFunction)Stream_queued, METH_NOARGS,
     "Bytes written and not yet sent."},
    {"_ameWriteState", (PyCFunction)Stream_wstate, METH_NOARGS, wstate_doc},
    {"_ameStartTLS", (PyCFunction)Stream_startTLS, METH_VARARGS,
     start_tls_doc},
    {"_ameTLSShutdown", (PyCFunction)Stream_tlsShutdown, METH_NOARGS,
     tls_shutdown_doc},
    {"_ameTLSRelease", (PyCFunction)Stream_tlsRelease, METH_NOARGS,
     tls_release_doc},
    {"_ameTLSInfo", (PyCFunction)Stream_tlsInfo, METH_NOARGS, tls_info_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *Stream_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  (void)args;
  (void)kw;
  StreamObject *self = (StreamObject *)type->tp_alloc(type, 0);
  if (self == NULL) return NULL;
  self->connected = Py_NewRef(zero);
  self->write_disconnected = Py_NewRef(Py_False);
  self->tls = Py_NewRef(Py_False);
  self->producer = Py_NewRef(Py_None);
  self->streaming = Py_NewRef(Py_False);
  self->buffer_size = 65536; /* FileDescriptor.bufferSize */
  self->buffer_size_obj = PyLong_FromSsize_t(self->buffer_size);
  if (self->buffer_size_obj == NULL) {
    Py_DECREF(self);
    return NULL;
  }
  return (PyObject *)self;
}

static int Stream_traverse(StreamObject *self, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->core);
  Py_VISIT(self->protocol);
  Py_VISIT(self->connected);
  Py_VISIT(self->write_disconnected);
  Py_VISIT(self->tls);
  Py_VISIT(self->producer);
  Py_VISIT(self->streaming);
  Py_VISIT(self->ctx_lp);
  Py_VISIT(self->ctx_base);
  Py_VISIT(self->ctx_push);
  Py_VISIT(self->tls_conn);
  Py_VISIT(self->tls_owner);
  return 0;
}

static int Stream_clear(StreamObject *self) {
  Py_CLEAR(self->protocol);
  Py_CLEAR(self->producer);
  Py_CLEAR(self->connected);
  Py_CLEAR(self->write_disconnected);
  Py_CLEAR(self->tls);
  Py_CLEAR(self->streaming);
  Py_CLEAR(self->buffer_size_obj);
  Py_CLEAR(self->ctx_lp);
  Py_CLEAR(self->ctx_base);
  Py_CLEAR(self->ctx_push);
  if (self->f == NULL) Py_CLEAR(self->tls_conn); /* else: at detach */
  Py_CLEAR(self->tls_owner);
  return 0;
}

/* Before a collected transport's __dict__ (and the socket in it, which
** closes the fd) is cleared: detach. */
static void Stream_finalize(PyObject *self) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  stream_detach((StreamObject *)self, 0);
  PyErr_Restore(type, value, tb);
}

static void Stream_dealloc(StreamObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  stream_detach(self, 0);
  Py_CLEAR(self->core);
  Stream_clear(self);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

PyDoc_STRVAR(Stream_doc,
"Stream()\n--\n\n"
"The C base of ame.reactor's TCP transports: write() and reading in C,\n"
"on the core's worker.  See bindings/ame/transport.c.");

static PyType_Slot Stream_slots[] = {
    {Py_tp_new, Stream_new},
    {Py_tp_dealloc, Stream_dealloc},
    {Py_tp_finalize, Stream_finalize},
    {Py_tp_traverse, Stream_traverse},
    {Py_tp_clear, Stream_clear},
    {Py_tp_methods, Stream_methods},
    {Py_tp_getset, Stream_getset},
    {Py_tp_doc, (void *)Stream_doc},
    {0, NULL},
};

static PyType_Spec Stream_spec = {
    .name = "ame._ame.Stream",
    .basicsize = sizeof(StreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Stream_slots,
};

int ame__stream_init_type(PyObject *m, ame_state *st) {
  if (zero == NULL) zero = PyLong_FromLong(0);
  if (str_dataReceived == NULL)
    str_dataReceived = PyUnicode_InternFromString("dataReceived");
  if (str_ameSlowWrite == NULL)
    str_ameSlowWrite = PyUnicode_InternFromString("_ameSlowWrite");
  if (str_ameSlowWriteSeq == NULL)
    str_ameSlowWriteSeq = PyUnicode_InternFromString("_ameSlowWriteSequence");
  if (str_logPrefix == NULL)
    str_logPrefix = PyUnicode_InternFromString("logPrefix");
  if (str_system == NULL) str_system = PyUnicode_InternFromString("system");
  if (str_ameBufferFull == NULL)
    str_ameBufferFull = PyUnicode_InternFromString("_ameBufferFull");
  if (str_ameBufferFull == NULL) return -1;
  if (str_ameHandshakeDone == NULL)
    str_ameHandshakeDone = PyUnicode_InternFromString("_ameHandshakeDone");
  if (str_ameHandshakeDone == NULL) return -1;
  if (str_logPrefix == NULL || str_system == NULL) return -1;
  if (zero == NULL || str_dataReceived == NULL || str_ameSlowWrite == NULL ||
      str_ameSlowWriteSeq == NULL)
    return -1;
  st->stream_type =
      (PyTypeObject *)PyType_FromModuleAndSpec(m, &Stream_spec, NULL);
  if (st->stream_type == NULL) return -1;
  return PyModule_AddType(m, st->stream_type);
}

/* ------------------------------------------------------------------------
** Module functions for TLS in C (ame.reactor's _CTLSFactory).
*/

PyObject *ame__py_tls_library(PyObject *m, PyObject *arg) {
  (void)m;
  unsigned long long method = PyLong_AsUnsignedLongLong(arg);
  if (method == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  return PyBool_FromLong(ame__tls_same_library((uintptr_t)method));
}

PyObject *ame__py_tls_locked(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  Py_ssize_t n = PyTuple_GET_SIZE(args);
  if (n < 2) {
    PyErr_SetString(PyExc_TypeError,
                    "tls_locked(ssl, fn, *args, **kwargs): too few arguments");
    return NULL;
  }
  PyObject *addr = PyTuple_GET_ITEM(args, 0);
  unsigned long long ssl = PyLong_AsUnsignedLongLong(addr);
  if (ssl == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  PyObject *rest = PyTuple_GetSlice(args, 2, n);
  if (rest == NULL) return NULL;
  pthread_mutex_t *lock = ame__tls_lock_of((uintptr_t)ssl);
  int gc = 0;
  if (lock != NULL) {
    /* Without the GIL, which the holder (the worker never, another Python
    ** thread maybe) may need to finish. */
    if (pthread_mutex_trylock(lock) != 0) {
      Py_BEGIN_ALLOW_THREADS
      pthread_mutex_lock(lock);
      Py_END_ALLOW_THREADS
    }
    /* No collection under the lock: a finalizer it runs may wait for the
    ** worker (a stream's detach), which may be waiting for this lock. */
    gc = PyGC_Disable();
  }
  PyObject *r = PyObject_Call(PyTuple_GET_ITEM(args, 1), rest, kw);
  if (lock != NULL) {
    if (gc) PyGC_Enable();
    pthread_mutex_unlock(lock);
  }
  Py_DECREF(rest);
  return r;
}

PyObject *ame__py_tls_alpn(PyObject *m, PyObject *args) {
  (void)m;
  unsigned long long ssl;
  Py_buffer wire;
  int set_ctx;
  if (!PyArg_ParseTuple(args, "Ky*p:tls_alpn", &ssl, &wire, &set_ctx))
    return NULL;
  int rc = ame__tls_set_alpn((uintptr_t)ssl, wire.buf, (size_t)wire.len,
                             set_ctx);
  PyBuffer_Release(&wire);
  if (rc == -ENOMEM) return PyErr_NoMemory();
  if (rc != 0) {
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the ALPN list");
    return NULL;
  }
  Py_RETURN_NONE;
}
