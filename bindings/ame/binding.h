/*
** bindings/ame/binding.h — what _ame.c (the core: fd watching, wait()) and
** transport.c (fast TCP streams) share.  Internal to the extension.
*/
#ifndef AME_BINDING_H
#define AME_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ame/reactor.h"
#include "streambuf.h" /* reactor/src: the buffers of fast streams */

#include <pthread.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
  PyTypeObject *core_type;
  PyTypeObject *stream_type;
} ame_state;

struct core;

struct watch {
  struct core *c;
  int fd;
  /* lock */
  int want;                 /* events Python wants (AME_READABLE|...) */
  int fresh;                /* a new registration: start a new poll */
  int consumed;             /* returned by wait(): keep disarmed until the
                               next wait() */
  int armed;                /* events the poll was last started with; 0 when
                               disarmed or stopped */
  int fired;                /* events delivered and not yet taken */
  int queued;               /* on the ready list */
  int dirty;                /* on the dirty list */
  ame_poll_t *poll;         /* the live poll or NULL (changed by apply) */
  struct watch *next_ready;
  struct watch *next_dirty;
  /* worker: what the last poll callback saw, for deliver() */
  ame_poll_t *cb_poll;
  int cb_status, cb_events;
  /* py */
  int checking;             /* on the check list */
  struct watch *next_check; /* fds to check at the next wait() */
};

struct core {
  ame_reactor_t *r;
  pthread_t thread;         /* runs ame_reactor_run */
  int started;              /* thread is running (py) */
  int polled;               /* lock (written by the worker): its loop is
                               up, or ame_reactor_run has returned */
  int inline_mode;          /* no thread: wait() steps the reactor on the
                               Python thread (ame_reactor_attach) */
  int attached;             /* inline: the first wait() attached owner */
  pthread_t owner;          /* inline: the thread that attached */
  unsigned fork_gen;        /* fork_gen when created: a forked child has
                               no worker thread and must not use it */
  int efd;                  /* eventfd: wait() sleeps on it */
  int checkfd;              /* private epolls: can this fd be watched? */
  int checkfd_w;            /* (checkfd: Python thread; checkfd_w: worker) */
  pthread_mutex_t lock;
  pthread_cond_t cond;      /* done_seq advanced, or polled set */
  struct watch *ready_head, *ready_tail; /* lock */
  struct watch *dirty_head;              /* lock */
  uint64_t req_seq;         /* lock: flushes asked for */
  uint64_t done_seq;        /* lock: flushes applied */
  int job_pending;          /* lock: an apply call is posted, not started */
  struct watch **tab;       /* py: watches by fd */
  int ntab;
  struct watch *check;      /* py: fds to check directly at the next
                               wait(): returned by the last one, or
                               changed since */
  struct pollfd *pfds;      /* py: buffer for the direct check */
  struct watch **pw;
  size_t npfds;
  int *ev;                  /* py: (fd, events) pairs wait() returns */
  size_t nev, evcap;
  uint64_t n_flushes;       /* counters (lock) */
  uint64_t n_barriers;
  uint64_t n_events;
  uint64_t n_watch_polls;   /* lock: watches with a poll (w->poll) */
  uint64_t n_direct;        /* py: events found by the direct check */
  /* Fast streams (transport.c). */
  struct fconn *fready_head, *fready_tail; /* lock: streams with news */
  struct fconn *fdirty;     /* lock: streams the worker must look at */
  struct fconn *fpending;   /* py: streams written since the last flush */
  int py_waiting;           /* lock: the Python thread sleeps in wait() */
  PyObject *on_read_error;  /* py: reactor._ameReadFailed */
  char *scratch;            /* worker: recv buffer */
  int wake_pending;         /* worker: signal efd before polling */
  /* The catch-up (thread mode, wait(0)): see _ame.c. */
  uint64_t iters;           /* lock: the worker's before_poll calls */
  uint64_t catch_target;    /* lock: wait(0) waits for iters >= this */
  uint64_t arm_iter;        /* atomic: iters when the worker last started
                               or changed a poll */
  int in_poll;              /* atomic: the worker has run no binding
                               callback since its last before_poll */
  uint64_t n_catchups;      /* py: wait(0)s that waited for the worker */
  struct gai_query *gai_head, *gai_tail; /* lock: answered DNS queries */
  uint64_t n_reads, n_sends, n_writes; /* lock */
  uint64_t n_accepted;      /* lock: connections the worker accepted for
                               fast listening streams */
  uint64_t n_open;          /* lock: fast connection streams attached */
  uint64_t n_bytes_in, n_bytes_out; /* lock: bytes recv()ed and sent */
  uint64_t n_tls_open;      /* lock: streams whose TLS is C's */
  uint64_t n_tls_handshakes; /* lock: handshakes completed in C */
  uint64_t n_tls_failures;  /* lock: TLS connections ended by an error */
  uint64_t n_tls_pool_steps; /* lock: handshake steps run by the pool */
  char *tls_buf;            /* worker: decrypt/encrypt scratch */
  /* The handshake pool (thread mode; transport.c): threads that run the
  ** handshake steps of TLS streams, off the worker. */
  pthread_t *hs_threads;
  int hs_nthreads;          /* lock (written by the Python thread) */
  int hs_stop;              /* lock */
  struct tls_job *hs_head, *hs_tail; /* lock: steps waiting */
  pthread_cond_t hs_cond;   /* a step is waiting, or stop */
};

typedef struct {
  PyObject_HEAD
  struct core *c;
} CoreObject;

/* A fast stream's shared state (transport.c).  Fields marked "lock" are
** guarded by c->lock, "py" belong to the Python thread, "worker" to the
** worker.  Freed when refs drops to 0: one reference is the Python
** object's (until it detaches), one the ready list's (while queued). */
struct fconn {
  struct core *c;
  int fd;                   /* Python's own (the socket's fileno()); -1
                               once the worker let go of it */
  int refs;                 /* lock */
  PyObject *owner;          /* lock: the Stream (borrowed); NULL once it
                               detached */
  int want_read;            /* lock: Python reads (startReading) */
  int want_drain;           /* lock: Python wants a drained event */
  int detach;               /* lock: Python detached: the worker lets go */
  int close_fd;             /* lock: ... and closes fd, which Python gave
                               up (_ameDetachClose): how (transport.c's
                               CLOSE_*), or 0 */
  /* Inbound, filled by the worker, taken by Python (streambuf.h). */
  ame__ibuf_t in;           /* lock: bytes (a listener: struct accepted
                               records) */
  int eof;                  /* lock: the peer closed (recv returned 0) */
  int rerr;                 /* lock: recv failed: errno */
  /* Outbound, appended by Python, sent by the worker: three queues
  ** (streambuf.h), chunks spliced from one to the next without copying. */
  ame__oqueue_t out;        /* lock: written since the last flush: a
                               callback may still be writing, so the
                               worker never sends from it */
  ame__oqueue_t ready;      /* lock: flushed (end of a dispatch), for the
                               worker to take */
  int pending;              /* py: on c's pending list */
  struct fconn *next_pending; /* py */
  size_t queued;            /* lock: bytes written and not yet sent */
  int werr;                 /* lock: send failed: errno */
  int dropping;             /* lock: aborted: write() drops its data */
  int pipe;                 /* not a socket: read() rather than recv() */
  int listener;             /* a listening socket: the worker accept()s,
                               ibuf holds struct accepted records */
  int counted;              /* a connection, counted in c->n_open while
                               attached */
  int drained;              /* lock: a drained event is to be delivered */
  int queued_ready;         /* lock: on c's ready list */
  int dirty;                /* lock: on c's dirty list */
  int seen;                 /* lock: the worker took it off the dirty list
                               once: it may poll or use fd */
  struct fconn *next_ready, *next_dirty; /* lock */
  /* worker */
  ame_poll_t *poll;
  int armed;
  ame__oqueue_t wq;         /* taken from ready, being sent (under TLS:
                               records) */
  int cb_status, cb_events;
  /* TLS in C (tls.h): the worker encrypts what Python writes and decrypts
  ** what arrives; in and the queues above hold plaintext, wq records.
  ** queued counts both: plaintext not yet encrypted and records not yet
  ** sent (and one for a close_notify asked for and not yet written). */
  struct ame__tls *tls;     /* lock to set (once), then worker; NULL: none */
  ame__ibuf_t tls_early;    /* lock: bytes read before TLS was switched on:
                               records, for the worker to feed first */
  int tls_news;             /* lock: the handshake completed; Python has
                               not been told */
  int tls_done;             /* lock: the handshake completed (published) */
  int tls_failed;           /* lock: the worker's record in *tls is final */
  int tls_shut_out;         /* lock: close_notify asked for, after what out
                               holds */
  int tls_shut_ready;       /* lock: ..., after what ready holds */
  int tls_shut_owed;        /* lock: queued counts one for it until our
                               close_notify is written (or never will be) */
  int tls_peer_closed;      /* lock: the peer's close_notify came after the
                               handshake; ours waits for Python (it answers
                               after what it writes in reply, as Twisted) */
  int tls_hold;             /* lock: a client whose server name Python
                               checks after the handshake: nothing written
                               is encrypted (nor close_notify) until the
                               check passed (_ameTLSRelease) */
  ame__oqueue_t tplain;     /* worker: plaintext taken from ready, waiting
                               for the handshake */
  ame__ibuf_t tls_held;     /* worker: records that arrived meanwhile */
  int tls_held_end;         /* worker: ... and how the input ended */
};

/* transport.c: an IPv4/IPv6 address as the socket module gives it
** ((host, port) or (host, port, flowinfo, scope_id)). */
PyObject *ame__sockaddr_tuple(const struct sockaddr *sa, socklen_t len);

/* _ame.c.  From the worker side: wake the Python thread's wait() (a
** no-op inline, where wait() itself steps the reactor). */
void ame__signal_efd(struct core *c);
PyObject *ame__set_error(int err);
int ame__core_live(struct core *c);
/* Python thread.  Return once the worker has finished everything it was
** doing with the streams' fds and has applied what is dirty now (a posted
** apply, waited for without the GIL; inline, run at once).  Return 0 or a
** negative error. */
int ame__core_sync(struct core *c);

/* transport.c */
int ame__stream_init_type(PyObject *m, ame_state *st);
/* Stop the handshake pool's threads (before the reactor is freed). */
void ame__tls_pool_stop(struct core *c);
/* _ame.tls_library(method), _ame.tls_alpn(ssl, wire, set_ctx) and
** _ame.tls_locked(ssl, fn, *args, **kwargs): see _ame.c's docs. */
PyObject *ame__py_tls_library(PyObject *m, PyObject *arg);
PyObject *ame__py_tls_alpn(PyObject *m, PyObject *args);
PyObject *ame__py_tls_locked(PyObject *m, PyObject *args, PyObject *kw);
/* Worker, from the core's apply: serve every dirty stream. */
void ame__fconn_apply_all(struct core *c);
/* Python thread, in wait(), after the sleep: take the streams with news,
** call dataReceived for the data (the fast path) and append to *events
** (a list) (stream, READABLE|WRITABLE) for what Python's doRead/doWrite
** must see.  Return 0, or -1 with an exception set. */
int ame__fconn_dispatch(struct core *c, PyObject *events);
/* The reactor's before_poll hook: wakes Python once per iteration, and
** advances the catch-up (returns nonzero: poll again without blocking). */
int ame__before_poll(void *arg);
void ame__core_polled(struct core *c);
/* Worker, in before_poll: count the iteration, end a catch-up that is
** done; nonzero while one is under way (_ame.c). */
int ame__catch_up_step(struct core *c);
/* Worker: it started or changed a poll (libuv applies it at its next
** poll). */
static inline void ame__worker_armed(struct core *c) {
  __atomic_store_n(&c->arm_iter, c->iters, __ATOMIC_SEQ_CST);
}
/* Worker: a binding callback starts (the worker is no longer idle). */
static inline void ame__worker_busy(struct core *c) {
  __atomic_store_n(&c->in_poll, 0, __ATOMIC_SEQ_CST);
}
/* resolve.c: getaddrinfo on the reactor.  callback(list) gets the answer
** in socket.getaddrinfo's shape, or callback((code, message)) a failure.
** Return 0 or a negative error (then callback is never called). */
int ame__getaddrinfo(struct core *c, const char *host, const char *service,
                     int family, int socktype, PyObject *callback);
/* Python thread, in wait(): deliver the answered queries. */
void ame__gai_dispatch(struct core *c);
void ame__gai_free_all(struct core *c);
/* Python thread, in flush(): release what was written since the last
** flush to the worker (the streams go on the dirty list). */
void ame__fconn_flush_pending(struct core *c);
/* Free what the streams of a closed core left behind (no worker). */
void ame__fconn_free_all(struct core *c);

#endif
