/*
** reactor/src/internal.h — the reactor's private structures.
**
** Three kinds of work move between threads:
**  - ops: effects on a handle (write, close, timer start, ...), executed on
**    the thread of the worker that owns the handle.  Inside a transaction an
**    op is queued by a commit handler (and dropped by an abort handler).
**    A worker runs its ops in the order they were submitted: one submitted
**    on the owner's own thread runs at once only if none waits in the
**    inbox.  Ops that reach a worker after its loop has ended (at stop) are
**    run by the thread that ran the reactor, in stopping mode.
**  - jobs: callbacks not bound to a stream (timer callbacks, posted calls,
**    tasks), which any worker may run; ordered queues let only one of their
**    jobs run at a time, so their order is kept.
**  - libuv callbacks: everything a stream does, always on its owner.
**
** Handles are reference-counted: one reference while open, one per op in
** flight.  When the count reaches zero the memory goes back through the STM's
** deferred free, so a transaction on another worker that still holds a
** pointer to the handle (read from shared data before the close committed)
** can never touch freed memory.
*/
#ifndef AME_REACTOR_INTERNAL_H
#define AME_REACTOR_INTERNAL_H

#ifndef AME_STM_INLINE
#define AME_STM_INLINE
#endif
#include "ame/reactor.h"
#include "streambuf.h"

#include <pthread.h>
#include <signal.h>
#include <uv.h>

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD(p, n) __atomic_add_fetch((p), (n), __ATOMIC_ACQ_REL)
#define SUB(p, n) __atomic_sub_fetch((p), (n), __ATOMIC_ACQ_REL)

enum htype { H_STREAM, H_LISTENER, H_TIMER, H_UDP, H_PROCESS, H_POLL,
             H_SIGNAL };
enum hstate { HS_NEW, HS_OPEN, HS_CLOSING, HS_CLOSED };

struct worker;

struct ame_handle {
  int type;                  /* enum htype */
  int state;                 /* enum hstate; owner thread only */
  ame_reactor_t *r;
  struct worker *w;          /* the owner */
  void *data;                /* atomic: the user's pointer */
  const char *name;          /* atomic: site name for reports */
  unsigned refs;             /* atomic: open + ops in flight */
  struct ame_handle *prev, *next; /* owner's list of live handles */
  void (*on_stop)(struct ame_handle *h); /* graceful-stop action */
};

/* An effect on a handle, executed on its owner's thread.  run() returns 1
** if it kept the op, else the op is freed. */
struct op {
  int (*run)(struct op *op);
  struct op *next;
  ame_handle_t *h;           /* target (holds a reference) or NULL */
  struct worker *w;          /* where to run */
  uint64_t a, b;             /* arguments */
  void *p;
  struct sockaddr_storage sa;/* for UDP sends */
  size_t len;                /* payload length */
  char data[];               /* payload */
};

/* A callback any worker may run. */
struct job {
  int (*fn)(ame_tx_t *tx, void *arg, struct job *job);
  void *arg;
  ame_handle_t *h;           /* a timer (holds a reference), or NULL */
  struct job *next;
  uint64_t user_fn;          /* ame_call_fn for calls and tasks */
  const char *what;          /* "posted call" or "task", for the log */
};

struct jobq {
  struct job *head, *tail;
  int ordered;               /* run one at a time, in order */
  int in_flight;             /* an ordered job is running */
};

struct worker {
  ame_reactor_t *r;
  unsigned id;
  uv_loop_t loop;
  uv_async_t async;          /* inbox, jobs, stop */
  uv_idle_t idle;            /* keeps polling non-blocking while jobs wait */
  uv_prepare_t prepare;      /* marks the worker idle before it blocks */
  uv_check_t check;          /* runs jobs after poll */
  uv_timer_t drain_timer;    /* graceful stop: give up on flushing */
  pthread_mutex_t lock;      /* inbox and queues */
  struct op *inbox_head;      /* ops for this worker (lock; atomic) */
  struct op *inbox_tail;
  int draining;              /* owner thread: drain_inbox is running */
  struct jobq timers;        /* ordered: this worker's timer callbacks */
  struct jobq tasks;         /* unordered */
  uv_thread_t thread;
  pthread_t owner;           /* attached: the thread that steps the loop */
  int attached;              /* ame_reactor_attach() made owner the worker */
  ame_tx_t *tx;
  char *readbuf;             /* one read at a time per worker */
  int stopping;              /* owner thread: stop has begun here */
  int idle_marked;           /* atomic: counted in r->idle */
  ame_handle_t *handles;     /* live handles owned here */
  unsigned nstreams;         /* atomic: open streams (balancing) */
  uint64_t callbacks;        /* atomic counters */
  uint64_t failures;
  uint64_t stolen;
};

struct ame_reactor {
  unsigned nworkers;
  struct worker *workers;
  size_t high, low;
  unsigned drain_timeout_ms;
  int report_on_stop;
  int (*before_poll)(void *);   /* ame_reactor_config_t's hook, or NULL */
  void *before_poll_arg;
  FILE *log;
  int running;               /* atomic */
  sigset_t attach_mask;      /* attached: the owner's mask before attach */
  int stopping;              /* atomic */
  int quiet;                 /* atomic: being freed, call nobody back */
  unsigned idle;             /* atomic: workers blocked with nothing to do */
  unsigned next_worker;      /* atomic: round-robin tie-break */
  pthread_mutex_t calls_lock;
  struct jobq calls;         /* ordered: ame_reactor_call() */
  uint64_t accepted;         /* atomic */
  uint64_t accept_errors;    /* atomic */
};

/* Nonzero once ame_reactor_stop() has taken effect, for good (a reactor
** runs once): the calls that make a handle or a request then refuse with
** -ESHUTDOWN and make nothing, as ame_reactor_call() does.  Any thread.
** One that passed the check as the stop took effect on another thread
** makes what the stop closes (stopping mode). */
static inline int ame__stopped(const ame_reactor_t *r) {
  return LOAD(&r->stopping);
}

/* The worker the calling thread is, or NULL. */
struct worker *ame__current(void);

/* Whether a handle owned by w may be opened at once by the caller rather
** than by an op at commit: outside a transaction, on w's own thread, or
** before the reactor runs (the setup thread is then the only one that
** touches the loops).  Spawns and signal watchers do, so that a child
** exists and a signal is caught when the call returns. */
static inline int ame__open_now(const ame_reactor_t *r,
                                const struct worker *w) {
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) return 0;
  return ame__current() == w || !LOAD(&r->running);
}

/* Handles. */
void ame__handle_init(ame_handle_t *h, int type, ame_reactor_t *r,
                      struct worker *w, void *data);
void ame__handle_link(ame_handle_t *h);
void ame__handle_unlink(ame_handle_t *h);
void ame__handle_ref(ame_handle_t *h);
int ame__handle_tryref(ame_handle_t *h);
void ame__handle_unref(ame_handle_t *h);

/* Ops: allocate (with len payload bytes; NULL if memory ran out or the
** handle is dead), then submit: at commit inside a transaction, at once
** outside.  Return 0 or -ENOMEM. */
struct op *ame__op_new(int (*run)(struct op *), ame_handle_t *h,
                       struct worker *w, size_t len);
int ame__op_submit(struct op *op);

/* Submit op, which makes the new handle op->h live (or does the work of a
** request with no handle), like ame__op_submit.  If the transaction's
** attempt aborts instead, undo(arg) (may be NULL) releases what the handle
** holds besides its memory (descriptors, strings), then the op and the
** handle's open reference are dropped.  Return 0 or -ENOMEM (then nothing
** was registered and the caller disposes of op and handle). */
int ame__publish(struct op *op, void (*undo)(void *), void *arg);

/* The shape most handle kinds share: made by the calling thread, started
** by an op on the owner, stopped by an op, closed on the owner.
**
** ame__handle_start: make the new handle h live by running start(op) on
** its owner, through ame__publish (undo(arg), which may be NULL, if the
** attempt aborts).  Return 0, or -ENOMEM: then nothing was registered, and
** the caller frees h and what it holds as if it had never been published.
**
** ame__handle_stop: run h->on_stop on h's owner (at commit inside a
** transaction, at once outside), for kinds whose stop and close are the
** same (timers, UDP, signals, polls).  Nothing happens if memory ran out
** or h is already dead.
**
** ame__close_uv (owner thread): close hd, the one libuv handle of h, if h
** is open; once closed, h is unlinked and its open reference dropped.
** hd->data must be h. */
int ame__handle_start(ame_handle_t *h, int (*start)(struct op *),
                      void (*undo)(void *), void *arg);
void ame__handle_stop(ame_handle_t *h);
void ame__close_uv(ame_handle_t *h, uv_handle_t *hd);

/* Jobs. */
int ame__job_push(struct worker *w, struct jobq *q, struct job *job);

/* Choose a worker for a new stream (fewest open, round-robin on ties). */
struct worker *ame__pick_worker(ame_reactor_t *r);

/* The worker to own a handle made by the calling thread. */
struct worker *ame__home(ame_reactor_t *r);

/* Log a failure. */
void ame__log(ame_reactor_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Note a callback's result: count it, log a failure. */
void ame__cb_done(struct worker *w, ame_handle_t *h, const char *what,
                  int rc);

enum { K_TCP, K_UNIX };        /* a TCP socket; a Unix one (or socketpair) */

/* Bytes one read takes at most (the worker's readbuf). */
#define AME__READBUF_SIZE 65536

struct ame_stream {
  ame_handle_t h;
  uv_poll_t poll;              /* on sock, from the open on */
  int polling;                 /* UV_READABLE | UV_WRITABLE watched now */
  int kind;                    /* K_TCP or K_UNIX */
  int sock;                    /* owner: the socket, ours (-1 before) */
  const ame_stream_cbs_t *cbs;
  ame__oqueue_t out;           /* owner: bytes the socket did not take yet */
  size_t queued;               /* atomic: out.bytes, for any thread */
  size_t high, low;            /* atomic: watermarks */
  int opened;                  /* handed to the program (on_close due) */
  ame_handle_t *holds;         /* a reference it keeps until it closes:
                                  a child's stdio on its process, or NULL */
  int write_only;              /* a child's stdin: never read */
  int paused_user;             /* ame_stream_pause() */
  int paused_wm;               /* over the high watermark */
  int eof;                     /* the peer's EOF was read */
  int connected;               /* open, or its connect completed */
  int want_close;              /* close once flushed */
  int lingering;               /* flushed and shut down: reading to the
                                  peer's EOF, discarding, before the close */
  uv_timer_t *linger;          /* checks the lingering (malloc'd), or
                                  NULL */
  uint64_t linger_end;         /* loop time the lingering ends at */
  int want_shutdown;           /* shut down writing once flushed */
  int shut_done;
  int closing_status;          /* status to give on_close */
  int fd;                      /* atomic: sock once connected, for
                                  accessors */
  struct sockaddr_storage peer;/* for connect */
  char *path;                  /* Unix connect path */
};

/* Streams (stream.c). */
int ame__stream_adopt_fd(struct worker *w, int fd, int is_unix,
                         const ame_stream_cbs_t *cbs, void *data,
                         ame_stream_t **out, int call_open);
void ame__stream_stop(ame_handle_t *h);
/* A stream for a child's stdio: new (a socket pair: the stream's end, in
** *out, and *child_fd, blocking and close-on-exec, for uv_spawn to give
** the child; the caller closes it after the spawn; return 0, or the
** error that stopped it: socketpair's -EMFILE, -ENFILE, ..., or -ENOMEM),
** then opened once the child runs (read: on_data for what the child
** writes; else its stdin, never read; return 0, or a libuv error: then
** the stream is gone), or discarded if it did not. */
int ame__pipe_new(struct worker *w, const ame_stream_cbs_t *cbs, void *data,
                  ame_stream_t **out, int *child_fd);
int ame__pipe_opened(ame_stream_t *s, int read);
void ame__pipe_discard(ame_stream_t *s);
void ame__streams_abort_all(struct worker *w);

/* Parse a numeric host and port into sa.  Return 0 or -EINVAL. */
int ame__parse_addr(const char *host, int port, struct sockaddr_storage *sa);

#endif /* AME_REACTOR_INTERNAL_H */
