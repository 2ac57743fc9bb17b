/*
** bindings/ame/_ame.c — ame._ame, the CPython extension under ame.reactor.
**
** It owns one C reactor (ame/reactor.h) per Core object, runs it on a
** thread of its own (ame_reactor_run), and gives Python what a Twisted
** PosixReactorBase needs: watching file descriptors, waiting for their
** events with the interpreter lock released, and a waker.  Policy
** (Twisted's interfaces) lives in ame/reactor.py; this file only moves
** readiness from the workers to the Python thread.
**
** How an event travels.  Each watched fd has one struct watch, kept for the
** Core's life.  The Python thread states what it wants (watch()); changes
** are applied on the worker by a posted call (apply_cb), which starts,
** changes or stops the fd's ame_poll.  When the poll fires, poll_cb (a
** transaction on the worker) registers deliver() to run at its commit;
** deliver disarms the poll, puts the watch on the ready list and signals
** the eventfd that wait() sleeps on.  wait() takes the ready list; the fds
** it returned stay disarmed until the next wait(), i.e. until Python has
** dispatched them.  This is EPOLLONESHOT by hand: uv_poll is
** level-triggered, and a worker must not spin on a readable fd while the
** Python thread has not read it yet.
**
** The direct check.  At the start of each wait(), the fds that would now
** have to be (re-)armed — those returned last time and those whose watch
** changed — are first checked by the Python thread itself with one
** non-blocking poll().  The ready ones are returned at once (no worker
** round trip: a connection that keeps being readable or writable never
** leaves the Python thread, as under epoll), and only the others are
** handed to the worker to arm.  This also gives wait(0) epoll's meaning
** for them: what is ready now is reported now.
**
** The catch-up.  In thread mode the worker may not yet have taken an
** event the kernel has already reported (it is busy, or has not been
** scheduled since).  wait(0) (Twisted's iterate(0): trial's janitor)
** must still return it, as epoll_wait(0) would: it first makes sure the
** worker has polled after the wait() began.  (reactor.py passes
** catch_up=False for the loop's own iterations while calls are due: a
** callLater(0) loop would wait for the worker at every turn.)  The cheap
** case: no watch change is waiting to be applied (ours, or the worker's
** on libuv's queue, which libuv applies at its next poll), the worker sits
** in its poll (it has run no binding callback since its last before_poll)
** and its epoll fd is not readable (level-triggered: an fd the worker has
** been told of and not handled keeps it readable), so nothing is in
** flight.  Otherwise wait(0) waits (GIL released) until this wait()'s
** flush has been applied, then until the worker's before_poll has run
** twice more, the second time after a poll that began after that:
** before_poll makes the poll non-blocking while a catch-up waits, and a
** no-op posted call wakes a worker asleep in an older one.  A wait with a
** timeout needs none: it sleeps until the worker reports.
**
** Python callbacks never run on the workers and never touch the STM: they
** all run on the thread that calls wait(), under the GIL, one at a time
** (an irrevocable transaction each, by construction).  The workers only run
** C: poll callbacks and posted calls.
**
** One worker.  The Core runs the C reactor with exactly one worker.  Then
** a posted call, every poll and every op run on that one thread, so
** removal can be made synchronous (flush() with wait set): when the Python
** thread stops watching an fd the worker holds a poll for, armed or not,
** it waits until the worker has closed the poll, before Twisted closes the
** fd.  libuv calls abort() if epoll_ctl fails on an fd closed under an
** armed poll, and closing a poll handle takes its fd number out of epoll,
** which after the fd's close is another descriptor's: this is not
** optional.  With several workers a poll may belong to another worker than
** the posted call, its ops are queued to that worker's inbox, and nothing
** tells us when they ran; see docs/twisted.md.
**
** Locking.  c->lock guards every field of struct watch marked "lock", the
** ready and dirty lists and the sequence numbers.  Fields marked "py" are
** the Python thread's (GIL); fields marked "worker" are the worker's.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ame/reactor.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
** State.
*/

#include "binding.h"
#include "shared.h"
#include "timers.h"

/* Bumped in the child at every fork() (pthread_atfork): process-wide, not
** module state, because it is a fact about the process. */
static unsigned fork_gen;
static void atfork_child(void) { fork_gen++; }

/* One function turns error codes into exceptions. */
static PyObject *set_error(int err) {
  if (err == -ENOMEM) return PyErr_NoMemory();
  errno = err < 0 ? -err : err;
  return PyErr_SetFromErrno(PyExc_OSError);
}

/* ------------------------------------------------------------------------
** The worker side.
*/

/* Can fd be watched with epoll?  Return 0 or -errno (-EPERM for regular
** files and other fds epoll refuses, -EBADF for closed ones). */
static int check_fd(int epfd, int fd) {
  struct epoll_event e = {.events = EPOLLIN};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) != 0) return -errno;
  epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &e);
  return 0;
}

/* Lock held.  Put w on the ready list; return 1 if the list was empty. */
static int ready_push(struct core *c, struct watch *w) {
  if (w->queued) return 0;
  w->queued = 1;
  w->next_ready = NULL;
  int was_empty = c->ready_head == NULL;
  if (c->ready_tail)
    c->ready_tail->next_ready = w;
  else
    c->ready_head = w;
  c->ready_tail = w;
  return was_empty;
}

static void signal_efd(struct core *c) {
  uint64_t one = 1;
  ssize_t n;
  do n = write(c->efd, &one, sizeof one);
  while (n < 0 && errno == EINTR);
}

/* The worker side's wake-up.  Inline, the worker side runs inside wait()
** on the Python thread, which looks at the ready lists after each step. */
static void worker_signal(struct core *c) {
  if (!c->inline_mode) signal_efd(c);
}

void ame__signal_efd(struct core *c) { worker_signal(c); }
PyObject *ame__set_error(int err) { return set_error(err); }

/* The events an fd has now, as epoll would report them (for the error path,
** where libuv gives a status and no events). */
static int probe(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
  int n;
  do n = poll(&p, 1, 0);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return AME_DISCONNECT;
  int ev = ((p.revents & POLLIN) ? AME_READABLE : 0) |
           ((p.revents & POLLOUT) ? AME_WRITABLE : 0) |
           ((p.revents & (POLLHUP | POLLERR | POLLNVAL)) ? AME_DISCONNECT : 0);
  return ev ? ev : AME_DISCONNECT;
}

/* Commit handler of poll_cb, on the worker, outside the transaction. */
static void deliver(void *arg) {
  struct watch *w = arg;
  struct core *c = w->c;
  ame_poll_t *p = w->cb_poll;
  int ev = w->cb_status < 0 ? probe(w->fd) : w->cb_events;
  int signal = 0;
  pthread_mutex_lock(&c->lock);
  if (w->poll == p) {
    /* Disarm: the Python thread re-arms after it has dispatched the
    ** event.  Outside a transaction, on the owner, this acts at once. */
    ame_poll_change(p, 0);
    w->armed = 0;
    if (w->want && ev) {
      w->fired |= ev;
      signal = ready_push(c, w);
      c->n_events++;
    }
  }
  pthread_mutex_unlock(&c->lock);
  if (signal) worker_signal(c);
}

/* The poll fired: a transaction on the worker.  Everything with an effect
** happens in deliver(), at commit. */
static int poll_cb(ame_tx_t *tx, ame_poll_t *p, int status, int events) {
  struct watch *w = ame_handle_data(p);
  ame__worker_busy(w->c);
  w->cb_poll = p;
  w->cb_status = status;
  w->cb_events = events;
  return ame_tx_on_commit(tx, deliver, w);
}

/* Lock held.  Start a poll for w with events ev.  Return 0, or -errno if
** the fd cannot be watched (then w has no poll). */
static int start_poll(struct core *c, struct watch *w, int ev) {
  int rc = check_fd(c->checkfd_w, w->fd);
  if (rc != 0) return rc;
  /* uv_poll_init makes the fd non-blocking; epoll does not, and the flag
  ** belongs to the open file (shared with other processes): restore it. */
  int fl = fcntl(w->fd, F_GETFL);
  ame_poll_t *p = NULL;
  rc = ame_poll_start(c->r, w->fd, ev, poll_cb, w, &p);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(w->fd, F_SETFL, fl);
  if (rc != 0) return rc;
  ame_handle_set_name(p, "python fd watch");
  w->poll = p;
  c->n_watch_polls++;
  ame__worker_armed(c);
  w->armed = ev;
  return 0;
}

/* Lock held.  Bring w's poll in line with what Python wants. */
static void apply_one(struct core *c, struct watch *w) {
  int target = w->consumed ? 0 : w->want;
  if (w->poll && (w->want == 0 || w->fresh)) {
    ame_poll_stop(w->poll);
    w->poll = NULL;
    w->armed = 0;
    c->n_watch_polls--;
  }
  w->fresh = 0;
  if (target == 0) {
    if (w->poll && w->armed) {
      ame_poll_change(w->poll, 0);
      w->armed = 0;
    }
    return;
  }
  if (w->poll == NULL) {
    if (start_poll(c, w, target) != 0) {
      /* Closed under us (Python did not remove it first): report it, so
      ** that Twisted finds out from fileno() or the read. */
      w->fired |= AME_DISCONNECT;
      if (ready_push(c, w)) worker_signal(c);
    }
  } else if (w->armed != target) {
    ame_poll_change(w->poll, target);
    ame__worker_armed(c);
    w->armed = target;
  }
}

/* Commit handler of apply_cb: apply every dirty watch, on the worker and
** outside any transaction, so the poll ops run at once (one worker). */
static void apply_now(void *arg) {
  struct core *c = arg;
  pthread_mutex_lock(&c->lock);
  c->job_pending = 0;
  uint64_t seq = c->req_seq;
  struct watch *w = c->dirty_head;
  c->dirty_head = NULL;
  while (w) {
    struct watch *next = w->next_dirty;
    w->dirty = 0;
    apply_one(c, w);
    w = next;
  }
  pthread_mutex_unlock(&c->lock);
  /* The fast streams (transport.c): sends, poll changes, detaches. */
  ame__fconn_apply_all(c);
  pthread_mutex_lock(&c->lock);
  c->done_seq = seq;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

static int apply_cb(ame_tx_t *tx, void *arg) {
  ame__worker_busy(arg);
  return ame_tx_on_commit(tx, apply_now, arg);
}

/* Worker.  Its loop is up (or has ended): Core() stops waiting. */
void ame__core_polled(struct core *c) {
  pthread_mutex_lock(&c->lock);
  c->polled = 1;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

static void *run_thread(void *arg) {
  struct core *c = arg;
  /* Named, as the handshake pool's threads are (ame-tls), so that the
  ** C side's CPU shows apart from Python's in top -H and /proc. */
  pthread_setname_np(pthread_self(), "ame-io");
  int rc = ame_reactor_run(c->r);
  if (rc != 0)
    fprintf(stderr, "ame._ame: ame_reactor_run: %s\n", strerror(-rc));
  if (!c->polled) ame__core_polled(c);
  return NULL;
}

/* ------------------------------------------------------------------------
** The Python side (GIL held unless said otherwise).
*/

/* Lock held.  Mark w for the next apply. */
static void mark_dirty(struct core *c, struct watch *w) {
  if (w->dirty) return;
  w->dirty = 1;
  w->next_dirty = c->dirty_head;
  c->dirty_head = w;
}

static int post_apply(struct core *c, int wait);

/* Post an apply if there is something to apply.  If wait is set, block
** (without the GIL) until it has run.  Return 0 or a negative error. */
static int flush(struct core *c, int wait) {
  /* What callbacks wrote becomes the worker's to send, except at a
  ** barrier (watch(fd, 0) inside a callback): a response still being
  ** written must not leave in pieces (with Nagle, a piece waits for the
  ** peer's delayed ACK, up to 40 ms). */
  if (!wait) ame__fconn_flush_pending(c);
  pthread_mutex_lock(&c->lock);
  int idle = c->dirty_head == NULL && c->fdirty == NULL;
  pthread_mutex_unlock(&c->lock);
  return idle ? 0 : post_apply(c, wait);
}

int ame__core_sync(struct core *c) { return post_apply(c, 1); }

/* Post an apply (even with nothing dirty).  If wait is set, block (without
** the GIL) until an apply that started after this call has finished. */
static int post_apply(struct core *c, int wait) {
  pthread_mutex_lock(&c->lock);
  uint64_t my = ++c->req_seq;
  if (c->inline_mode) {
    /* This thread is the worker: apply at once (with the GIL: a few
    ** epoll_ctl and send calls, as EPollReactor makes them). */
    c->n_flushes++;
    pthread_mutex_unlock(&c->lock);
    apply_now(c);
    return 0;
  }
  int post = !c->job_pending;
  c->job_pending = 1;
  c->n_flushes += post;
  c->n_barriers += wait;
  pthread_mutex_unlock(&c->lock);
  if (post) {
    int rc = ame_reactor_call(c->r, apply_cb, c);
    if (rc != 0) {
      pthread_mutex_lock(&c->lock);
      c->job_pending = 0;
      pthread_mutex_unlock(&c->lock);
      return rc;
    }
  }
  if (wait) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->lock);
    while (c->done_seq < my) pthread_cond_wait(&c->cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
    Py_END_ALLOW_THREADS
  }
  return 0;
}

int ame__core_live(struct core *c) { return c->fork_gen == fork_gen; }

/* Put w on the list of fds the next wait() checks directly. */
static void check_push(struct core *c, struct watch *w) {
  if (w->checking) return;
  w->checking = 1;
  w->next_check = c->check;
  c->check = w;
}

/* What poll() says of an fd, in our events, as epoll would report it for
** want: hang-up and error always, in/out when wanted.  A closed fd
** (POLLNVAL) is reported as DISCONNECT rather than re-armed: re-arming a
** closed fd makes libuv abort(). */
static int revents_to_ev(short re, int want) {
  return ((re & POLLIN) && (want & AME_READABLE) ? AME_READABLE : 0) |
         ((re & POLLOUT) && (want & AME_WRITABLE) ? AME_WRITABLE : 0) |
         ((re & (POLLHUP | POLLERR | POLLNVAL)) ? AME_DISCONNECT : 0);
}

/* Make room for n more (fd, events) pairs in c->ev.  Return 0 or -1. */
static int ev_reserve(struct core *c, size_t n) {
  if (c->nev + n <= c->evcap) return 0;
  size_t cap = c->evcap ? c->evcap : 64;
  while (cap < c->nev + n) cap *= 2;
  int *e = realloc(c->ev, cap * 2 * sizeof *e);
  if (e == NULL) return -1;
  c->ev = e;
  c->evcap = cap;
  return 0;
}

/* The start of wait(): check directly the fds returned by the last wait()
** and those changed since; the ready ones go to c->ev (they stay
** disarmed, marked consumed), the others are handed to the worker to arm.
** Return 0 or -ENOMEM. */
static int direct_check(struct core *c) {
  size_t n = 0;
  for (struct watch *w = c->check; w; w = w->next_check) n++;
  if (n == 0) return 0;
  if (n > c->npfds) {
    struct pollfd *p = realloc(c->pfds, n * sizeof *p);
    if (p) c->pfds = p;
    struct watch **pw = realloc(c->pw, n * sizeof *pw);
    if (pw) c->pw = pw;
    if (p == NULL || pw == NULL) return -ENOMEM;
    c->npfds = n;
  }
  if (ev_reserve(c, n) != 0) return -ENOMEM;
  /* want is written only by this thread: reading it needs no lock. */
  size_t k = 0;
  struct watch *w = c->check;
  c->check = NULL;
  while (w) {
    struct watch *next = w->next_check;
    w->checking = 0;
    c->pw[k] = w;
    c->pfds[k].fd = w->want ? w->fd : -1; /* -1: poll() skips it */
    c->pfds[k].events = ((w->want & AME_READABLE) ? POLLIN : 0) |
                        ((w->want & AME_WRITABLE) ? POLLOUT : 0);
    c->pfds[k].revents = 0;
    k++;
    w = next;
  }
  int rc;
  do rc = poll(c->pfds, k, 0);
  while (rc < 0 && errno == EINTR);
  pthread_mutex_lock(&c->lock);
  for (size_t i = 0; i < k; i++) {
    w = c->pw[i];
    int ev = rc > 0 && w->want ? revents_to_ev(c->pfds[i].revents, w->want)
                               : 0;
    /* What the worker reported before is older than this check: drop it
    ** (an fd that is not ready is re-armed below; level-triggered, the
    ** worker reports it again if it became ready meanwhile). */
    w->fired = 0;
    w->consumed = ev != 0; /* returned: keep it disarmed until next time */
    if (ev) {
      c->ev[2 * c->nev] = w->fd;
      c->ev[2 * c->nev + 1] = ev;
      c->nev++;
      c->n_direct++;
      check_push(c, w);
    }
    mark_dirty(c, w);
  }
  pthread_mutex_unlock(&c->lock);
  return 0;
}

static struct watch *get_watch(struct core *c, int fd) {
  if (fd >= c->ntab) {
    int n = c->ntab ? c->ntab : 64;
    while (n <= fd) n *= 2;
    struct watch **t = realloc(c->tab, (size_t)n * sizeof *t);
    if (t == NULL) return NULL;
    memset(t + c->ntab, 0, (size_t)(n - c->ntab) * sizeof *t);
    c->tab = t;
    c->ntab = n;
  }
  if (c->tab[fd] == NULL) {
    struct watch *w = calloc(1, sizeof *w);
    if (w == NULL) return NULL;
    w->c = c;
    w->fd = fd;
    c->tab[fd] = w;
  }
  return c->tab[fd];
}

static void core_free(struct core *c) {
  ame__tls_pool_stop(c);
  if (c->r) ame_reactor_free(c->r);
  ame__fconn_free_all(c);
  ame__gai_free_all(c);
  free(c->scratch);
  free(c->tls_buf);
  Py_CLEAR(c->on_read_error);
  free(c->pfds);
  free(c->pw);
  free(c->ev);
  for (int i = 0; i < c->ntab; i++) free(c->tab[i]);
  free(c->tab);
  if (c->efd >= 0) close(c->efd);
  if (c->checkfd >= 0) close(c->checkfd);
  if (c->checkfd_w >= 0) close(c->checkfd_w);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->cond);
  pthread_cond_destroy(&c->hs_cond);
  free(c);
}

/* Stop the C reactor and free everything (idempotent). */
static void core_close(CoreObject *self) {
  struct core *c = self->c;
  if (c == NULL) return;
  self->c = NULL;
  if (c->fork_gen != fork_gen) return; /* forked child: no thread to stop */
  if (c->inline_mode && c->attached) {
    /* Only the thread that steps the reactor can stop it (ame_reactor_free
    ** steps it to the end).  Dropped on another thread, it is left as it
    ** is, like a core in a forked child. */
    if (!pthread_equal(c->owner, pthread_self())) return;
    ame_reactor_t *r = c->r;
    c->r = NULL;
    Py_BEGIN_ALLOW_THREADS
    ame_reactor_free(r);
    Py_END_ALLOW_THREADS
  } else if (c->started) {
    ame_reactor_stop(c->r);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(c->thread, NULL);
    Py_END_ALLOW_THREADS
  }
  core_free(c);
}

static PyObject *Core_new(PyTypeObject *type, PyObject *args,
                          PyObject *kw) {
  static char *kwlist[] = {"workers", "io", NULL};
  unsigned workers = 1;
  const char *io = "thread";
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|Is:Core", kwlist, &workers,
                                   &io))
    return NULL;
  int inl = strcmp(io, "inline") == 0;
  if (!inl && strcmp(io, "thread") != 0) {
    PyErr_Format(PyExc_ValueError, "io must be 'thread' or 'inline', not '%s'",
                 io);
    return NULL;
  }
  if (workers != 1) {
    PyErr_SetString(PyExc_ValueError,
                    "the Python reactor runs one C worker (see "
                    "docs/twisted.md)");
    return NULL;
  }
  CoreObject *self = (CoreObject *)type->tp_alloc(type, 0);
  if (self == NULL) return NULL;
  struct core *c = calloc(1, sizeof *c);
  if (c == NULL) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  c->efd = c->checkfd = c->checkfd_w = -1;
  c->fork_gen = fork_gen;
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->hs_cond, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_cond_init(&c->cond, &ca);
  pthread_condattr_destroy(&ca);
  self->c = c;
  c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  c->checkfd = epoll_create1(EPOLL_CLOEXEC);
  c->checkfd_w = epoll_create1(EPOLL_CLOEXEC);
  if (c->efd < 0 || c->checkfd < 0 || c->checkfd_w < 0) {
    set_error(-errno);
    Py_DECREF(self);
    return NULL;
  }
  ame_reactor_config_t cfg = {.workers = workers,
                              .before_poll = ame__before_poll,
                              .before_poll_arg = c};
  int rc = ame_reactor_new(&c->r, &cfg);
  if (rc != 0) {
    c->r = NULL;
    set_error(rc);
    Py_DECREF(self);
    return NULL;
  }
  if (inl) {
    /* Attached by the first wait(): the thread that runs the loop, which
    ** need not be the one that made the reactor (a program may set up in
    ** one thread and run the reactor in another). */
    c->inline_mode = 1;
    return (PyObject *)self;
  }
  /* The workers block every signal, so that signals reach the Python
  ** thread (and interrupt its wait) rather than a worker. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&c->thread, NULL, run_thread, c);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    set_error(-rc);
    Py_DECREF(self);
    return NULL;
  }
  c->started = 1;
  /* Return once the worker is in its loop, idle: not while it still sets
  ** up (allocating), which a fork() right after Core() would catch half
  ** done in an allocator without fork handlers (GCC's ASan runtime: the
  ** child hangs in malloc; Twisted's test_spawnProcessEarlyIsReaped). */
  Py_BEGIN_ALLOW_THREADS
  pthread_mutex_lock(&c->lock);
  while (!c->polled) pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  Py_END_ALLOW_THREADS
  return (PyObject *)self;
}

/* The core holds reactor._ameReadFailed, and the reactor the core: a cycle
** the collector must be able to see and break. */
static int Core_traverse(CoreObject *self, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(self));
  if (self->c) Py_VISIT(self->c->on_read_error);
  return 0;
}

static int Core_clear(CoreObject *self) {
  if (self->c) Py_CLEAR(self->c->on_read_error);
  return 0;
}

static void Core_dealloc(CoreObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  core_close(self);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

static struct core *live(CoreObject *self) {
  if (self->c == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "the ame reactor core is closed");
    return NULL;
  }
  if (self->c->fork_gen != fork_gen) {
    PyErr_SetString(PyExc_RuntimeError,
                    "the ame reactor core was created before fork(); its "
                    "worker thread does not exist in this process");
    return NULL;
  }
  if (self->c->inline_mode && self->c->attached &&
      !pthread_equal(self->c->owner, pthread_self())) {
    PyErr_SetString(PyExc_RuntimeError,
                    "this ame reactor core runs inline on another thread");
    return NULL;
  }
  return self->c;
}

PyDoc_STRVAR(watch_doc,
"watch(fd, events)\n--\n\n"
"Watch fd for events (READABLE | WRITABLE); 0 stops watching it.  Raise\n"
"OSError (EPERM, EBADF, ...) if a new fd cannot be watched.  Stopping\n"
"returns once the worker no longer watches the fd, so it may be closed.");

static PyObject *Core_watch(CoreObject *self, PyObject *args) {
  int fd, ev;
  if (!PyArg_ParseTuple(args, "ii:watch", &fd, &ev)) return NULL;
  struct core *c = live(self);
  if (c == NULL) return NULL;
  if (fd < 0) return set_error(-EBADF);
  ev &= AME_READABLE | AME_WRITABLE;
  if (fd >= c->ntab || c->tab[fd] == NULL) {
    if (ev == 0) Py_RETURN_NONE;
  }
  struct watch *w = get_watch(c, fd);
  if (w == NULL) return PyErr_NoMemory();
  pthread_mutex_lock(&c->lock);
  int old = w->want;
  pthread_mutex_unlock(&c->lock);
  if (old == ev) Py_RETURN_NONE;
  if (old == 0) {
    int rc = check_fd(c->checkfd, fd); /* epoll's errors, at once */
    if (rc != 0) return set_error(rc);
  }
  pthread_mutex_lock(&c->lock);
  w->want = ev;
  if (old == 0) w->fresh = 1;
  /* Twisted closes an fd right after it stops watching it: while the
  ** worker holds a poll for it, wait until the worker has let it go.
  ** Armed or not: a disarmed poll is out of epoll, but libuv's close of
  ** its handle removes the fd from epoll again, by number, and the
  ** number is the next descriptor's once the program closed this one. */
  int barrier = ev == 0 && w->poll != NULL;
  if (ev == 0) mark_dirty(c, w); /* armed or not: the apply stops it */
  pthread_mutex_unlock(&c->lock);
  if (ev != 0) check_push(c, w);
  if (barrier) {
    int rc = flush(c, 1);
    if (rc != 0) return set_error(rc);
  }
  Py_RETURN_NONE;
}

/* Worker, in before_poll (lock not held). */
int ame__catch_up_step(struct core *c) {
  if (c->inline_mode) return 0;
  pthread_mutex_lock(&c->lock);
  c->iters++;
  __atomic_store_n(&c->in_poll, 1, __ATOMIC_SEQ_CST);
  int again = 0;
  if (c->catch_target != 0) {
    if (c->iters >= c->catch_target) {
      c->catch_target = 0;
      pthread_cond_broadcast(&c->cond);
    } else {
      again = 1;
    }
  }
  pthread_mutex_unlock(&c->lock);
  return again;
}

static int noop_cb(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  return 0;
}

/* Thread mode, the start of wait(0): make the worker take every event the
** kernel has reported so far (see "The catch-up" above).  Return 0 or a
** negative error. */
static int catch_up(struct core *c) {
  pthread_mutex_lock(&c->lock);
  uint64_t v = c->iters, my = c->req_seq;
  int pending = c->done_seq < my;
  uint64_t armed = __atomic_load_n(&c->arm_iter, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&c->lock);
  /* Idle: no change of ours is waiting to be applied, none the worker made
  ** can still be on libuv's queue (libuv applies poll changes at its next
  ** poll: the one after the next before_poll), the worker has run no
  ** callback since it came to poll, and its epoll fd has nothing. */
  if (!pending && v >= armed + 2 &&
      __atomic_load_n(&c->in_poll, __ATOMIC_SEQ_CST)) {
    struct pollfd p = {.fd = ame_reactor_fd(c->r), .events = POLLIN};
    int n;
    do n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n == 0 && __atomic_load_n(&c->in_poll, __ATOMIC_SEQ_CST)) {
      pthread_mutex_lock(&c->lock);
      int idle = c->iters == v;
      pthread_mutex_unlock(&c->lock);
      if (idle) return 0;
    }
  }
  c->n_catchups++;
  /* A stopped worker never comes back: give up after a second (the
  ** events then come in a later wait, as before). */
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 1;
  int rc = 0;
  Py_BEGIN_ALLOW_THREADS
  pthread_mutex_lock(&c->lock);
  /* What this wait() flushed first (a poll started: the fd of a new
  ** connection), then two of the worker's before_polls: the second comes
  ** after a poll that began after the changes were applied. */
  int ok = 1;
  while (ok && c->done_seq < my)
    ok = pthread_cond_timedwait(&c->cond, &c->lock, &dl) == 0;
  uint64_t target = c->iters + 2;
  if (c->catch_target < target) c->catch_target = target;
  int asleep = __atomic_load_n(&c->in_poll, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&c->lock);
  /* It may be blocked in a poll that began before catch_target was set. */
  if (ok && asleep) rc = ame_reactor_call(c->r, noop_cb, NULL);
  pthread_mutex_lock(&c->lock);
  while (ok && rc == 0 && c->iters < target)
    ok = pthread_cond_timedwait(&c->cond, &c->lock, &dl) == 0;
  pthread_mutex_unlock(&c->lock);
  Py_END_ALLOW_THREADS
  return rc;
}

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Inline wait: step the reactor on this thread (its callbacks fill the
** ready lists, with the GIL held: they are C, and short) until something
** is ready for Python, wake() was called, a signal arrived or timeout
** (seconds; < 0: forever) has passed.  Between steps, sleep in poll() on
** the reactor's fd and the eventfd with the GIL released; a signal ends
** the sleep with EINTR, and Python's handlers run at once, as under
** EPollReactor.  Return 0, or -1 with an exception set. */
static int step_wait(struct core *c, double timeout) {
  double deadline = timeout > 0 ? mono_now() + timeout : 0;
  int woken = 0;
  for (;;) {
    int t;
    int rc = ame_reactor_step(c->r, &t);
    if (rc < 0) {
      set_error(rc);
      return -1;
    }
    pthread_mutex_lock(&c->lock);
    int have = c->ready_head != NULL || c->nev > 0 ||
               c->fready_head != NULL || c->gai_head != NULL;
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 || have || woken || timeout == 0) return 0;
    int ms = t;
    if (timeout > 0) {
      double left = deadline - mono_now();
      if (left <= 0) return 0;
      double lms = ceil(left * 1e3);
      if (lms > 1e9) lms = 1e9;
      if (ms < 0 || lms < ms) ms = (int)lms;
    }
    struct pollfd p[2] = {{.fd = ame_reactor_fd(c->r), .events = POLLIN},
                          {.fd = c->efd, .events = POLLIN}};
    int n, err;
    Py_BEGIN_ALLOW_THREADS
    n = poll(p, 2, ms);
    err = errno;
    Py_END_ALLOW_THREADS
    if (n < 0 && err == EINTR) return PyErr_CheckSignals() < 0 ? -1 : 0;
    if (n < 0) {
      set_error(-err);
      return -1;
    }
    if (p[1].revents) {
      uint64_t v;
      if (read(c->efd, &v, sizeof v) < 0) (void)0; /* EAGAIN: raced */
      woken = 1; /* one more step, then return */
    }
  }
}

PyDoc_STRVAR(wait_doc,
"wait(timeout, catch_up=True)\n--\n\n"
"Apply pending watch changes, then wait up to timeout seconds (None:\n"
"forever) for events or wake(), with the GIL released.  Return a list of\n"
"(fd, events); events may include DISCONNECT (hang-up or error).  In\n"
"thread mode, wait(0) first catches up with the worker (what the kernel\n"
"reported before it is returned by it) unless catch_up is false.");

static PyObject *Core_wait(CoreObject *self, PyObject *const *args,
                           Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 2) {
    PyErr_Format(PyExc_TypeError, "wait() takes 1 or 2 arguments (%zd given)",
                 nargs);
    return NULL;
  }
  PyObject *arg = args[0];
  int want_catch_up = 1;
  if (nargs > 1 && (want_catch_up = PyObject_IsTrue(args[1])) < 0)
    return NULL;
  struct core *c = live(self);
  if (c == NULL) return NULL;
  double timeout = -1;
  if (arg != Py_None) {
    timeout = PyFloat_AsDouble(arg);
    if (timeout == -1 && PyErr_Occurred()) return NULL;
    if (timeout < 0 || isnan(timeout)) timeout = 0;
  }
  if (c->inline_mode && !c->attached) {
    /* The first wait(): this thread runs the loop from now on.  Ops asked
    ** for before (listening, watching) wait in the reactor's inbox and run
    ** at the first step. */
    int rc = ame_reactor_attach(c->r);
    if (rc != 0) return set_error(rc);
    c->attached = 1;
    c->owner = pthread_self();
  }
  /* The fds returned last time have been dispatched: they (and the fds
  ** changed since) are checked here, and armed on the worker if not
  ** ready.  No Python object is made while c->lock is held (a GC run could
  ** re-enter watch() on this core). */
  c->nev = 0;
  int rc = direct_check(c);
  if (rc == 0) rc = flush(c, 0);
  if (rc == 0 && !c->inline_mode && timeout == 0 && want_catch_up)
    rc = catch_up(c);
  if (rc != 0) return set_error(rc);
  if (c->inline_mode) {
    if (step_wait(c, timeout) < 0) return NULL;
    goto collect;
  }
  pthread_mutex_lock(&c->lock);
  int have = c->ready_head != NULL || c->nev > 0 || c->fready_head != NULL ||
             c->gai_head != NULL;
  if (!have && timeout != 0) c->py_waiting = 1;
  pthread_mutex_unlock(&c->lock);

  if (!have && timeout != 0) {
    struct timespec ts, *tsp = NULL;
    if (timeout > 0) {
      if (timeout > 1e9) timeout = 1e9;
      ts.tv_sec = (time_t)timeout;
      ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
      tsp = &ts;
    }
    struct pollfd p = {.fd = c->efd, .events = POLLIN};
    int n, err;
    Py_BEGIN_ALLOW_THREADS
    n = ppoll(&p, 1, tsp, NULL);
    err = errno;
    Py_END_ALLOW_THREADS
    pthread_mutex_lock(&c->lock);
    c->py_waiting = 0;
    pthread_mutex_unlock(&c->lock);
    if (n < 0 && err == EINTR) {
      if (PyErr_CheckSignals() < 0) return NULL;
    } else if (n < 0) {
      return set_error(-err);
    }
    if (n > 0) {
      uint64_t v;
      if (read(c->efd, &v, sizeof v) < 0) (void)0; /* EAGAIN: raced */
    }
  }

collect:
  pthread_mutex_lock(&c->lock);
  size_t nready = 0;
  for (struct watch *w = c->ready_head; w; w = w->next_ready) nready++;
  if (ev_reserve(c, nready) != 0) {
    pthread_mutex_unlock(&c->lock);
    return PyErr_NoMemory(); /* the ready list stays for the next call */
  }
  struct watch *w = c->ready_head;
  c->ready_head = c->ready_tail = NULL;
  while (w) {
    struct watch *next = w->next_ready;
    int ev = w->fired & (w->want | AME_DISCONNECT);
    w->fired = 0;
    w->queued = 0;
    /* Already consumed: the direct check returned it in this call. */
    if (w->consumed || w->want == 0) ev = 0;
    if (ev) {
      w->consumed = 1;
      c->ev[2 * c->nev] = w->fd;
      c->ev[2 * c->nev + 1] = ev;
      c->nev++;
    }
    /* Delivered means disarmed: the next wait() checks it, then re-arms. */
    check_push(c, w);
    w = next;
  }
  /* Looked at under the lock: the worker and the resolver's threads push
  ** onto these lists (what they push after this is for the next wait(),
  ** which they wake). */
  int resolved = c->gai_head != NULL, streams = c->fready_head != NULL;
  pthread_mutex_unlock(&c->lock);

  PyObject *list = PyList_New((Py_ssize_t)c->nev);
  if (list == NULL) return NULL;
  for (size_t i = 0; i < c->nev; i++) {
    PyObject *t = Py_BuildValue("(ii)", c->ev[2 * i], c->ev[2 * i + 1]);
    if (t == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, t);
  }
  /* The fast streams: their data goes to dataReceived here; what Python
  ** must handle is appended to the list.  Then what the callbacks wrote
  ** goes to the worker at once. */
  if (resolved) ame__gai_dispatch(c);
  if (streams && c->on_read_error != NULL) {
    if (ame__fconn_dispatch(c, list) < 0) {
      Py_DECREF(list);
      return NULL;
    }
    rc = flush(c, 0);
    if (rc != 0) {
      Py_DECREF(list);
      return set_error(rc);
    }
  }
  return list;
}

PyDoc_STRVAR(handlers_doc,
"set_handlers(on_read_error)\n--\n\n"
"on_read_error(transport, value, raised) is called when a fast stream's\n"
"dataReceived raised (value: the exception, raised True) or returned\n"
"something other than None (raised False).  Fast streams' data is\n"
"delivered only once this is set.");

static PyObject *Core_set_handlers(CoreObject *self, PyObject *arg) {
  struct core *c = live(self);
  if (c == NULL) return NULL;
  if (!PyCallable_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "on_read_error must be callable");
    return NULL;
  }
  Py_XSETREF(c->on_read_error, Py_NewRef(arg));
  Py_RETURN_NONE;
}

PyDoc_STRVAR(gai_doc,
"getaddrinfo(host, port, family, socktype, callback)\n--\n\n"
"Resolve host (str or None) and port (int or str) on the C reactor\n"
"(libuv's getaddrinfo off the Python thread).  A later wait() calls\n"
"callback(list) with entries shaped as socket.getaddrinfo's, or\n"
"callback((code, message)) if it failed.");

static PyObject *Core_getaddrinfo(CoreObject *self, PyObject *args) {
  const char *host;
  PyObject *port, *callback;
  int family, socktype;
  if (!PyArg_ParseTuple(args, "zOiiO:getaddrinfo", &host, &port, &family,
                        &socktype, &callback))
    return NULL;
  struct core *c = live(self);
  if (c == NULL) return NULL;
  if (!PyCallable_Check(callback)) {
    PyErr_SetString(PyExc_TypeError, "callback must be callable");
    return NULL;
  }
  PyObject *ps = port == Py_None ? NULL : PyObject_Str(port);
  if (port != Py_None && ps == NULL) return NULL;
  const char *service = ps ? PyUnicode_AsUTF8(ps) : NULL;
  if (ps && service == NULL) {
    Py_DECREF(ps);
    return NULL;
  }
  int rc = host || service
               ? ame__getaddrinfo(c, host, service, family, socktype, callback)
               : -EINVAL;
  Py_XDECREF(ps);
  if (rc != 0) return set_error(rc);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(wake_doc,
"wake()\n--\n\n"
"Make a wait() in progress (or the next one) return.  Thread-safe.");

static PyObject *Core_wake(CoreObject *self, PyObject *unused) {
  (void)unused;
  struct core *c = self->c;
  if (c) signal_efd(c);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(stats_doc,
"stats()\n--\n\n"
"The C reactor's counters (ame_reactor_stats) and the binding's, as a\n"
"dict.");

static int set_u64(PyObject *d, const char *k, uint64_t v) {
  PyObject *o = PyLong_FromUnsignedLongLong(v);
  if (o == NULL) return -1;
  int rc = PyDict_SetItemString(d, k, o);
  Py_DECREF(o);
  return rc;
}

static PyObject *Core_stats(CoreObject *self, PyObject *unused) {
  (void)unused;
  struct core *c = live(self);
  if (c == NULL) return NULL;
  ame_reactor_stats_t s;
  ame_reactor_stats(c->r, &s);
  ame_stats_t tm;
  ame_stats_total(&tm);
  unsigned nw = ame_reactor_workers(c->r);
  pthread_mutex_lock(&c->lock);
  uint64_t fl = c->n_flushes, ba = c->n_barriers, ev = c->n_events;
  uint64_t wp = c->n_watch_polls;
  uint64_t nr = c->n_reads, ns = c->n_sends, nw_ = c->n_writes;
  uint64_t na = c->n_accepted, no = c->n_open;
  uint64_t bi = c->n_bytes_in, bo = c->n_bytes_out;
  uint64_t to = c->n_tls_open, th = c->n_tls_handshakes,
           tf = c->n_tls_failures, tp = c->n_tls_pool_steps;
  pthread_mutex_unlock(&c->lock);
  PyObject *d = PyDict_New();
  if (d == NULL) return NULL;
  PyObject *per = PyList_New(0);
  if (per == NULL) goto fail;
  for (unsigned i = 0; i < nw && i < 64; i++) {
    PyObject *o = PyLong_FromUnsignedLongLong(s.per_worker_callbacks[i]);
    if (o == NULL || PyList_Append(per, o) < 0) {
      Py_XDECREF(o);
      Py_DECREF(per);
      goto fail;
    }
    Py_DECREF(o);
  }
  int bad = PyDict_SetItemString(d, "per_worker_callbacks", per) < 0;
  Py_DECREF(per);
  if (bad || set_u64(d, "workers", nw) || set_u64(d, "callbacks", s.callbacks) ||
      set_u64(d, "failures", s.failures) || set_u64(d, "stolen", s.stolen) ||
      set_u64(d, "accepted", s.accepted) ||
      set_u64(d, "accept_errors", s.accept_errors) ||
      set_u64(d, "streams_open", s.streams_open) ||
      set_u64(d, "fd_events", ev) || set_u64(d, "direct_events", c->n_direct) || set_u64(d, "catchups", c->n_catchups) ||
      set_u64(d, "watch_flushes", fl) ||
      set_u64(d, "watch_barriers", ba) || set_u64(d, "watch_polls", wp) ||
      set_u64(d, "stream_reads", nr) ||
      set_u64(d, "stream_sends", ns) || set_u64(d, "stream_writes", nw_) ||
      set_u64(d, "stream_accepted", na) || set_u64(d, "stream_open", no) ||
      set_u64(d, "bytes_received", bi) || set_u64(d, "bytes_sent", bo) ||
      set_u64(d, "tls_c_open", to) || set_u64(d, "tls_c_handshakes", th) ||
      set_u64(d, "tls_c_failures", tf) ||
      set_u64(d, "tls_c_pool_steps", tp) ||
      set_u64(d, "stm_commits", tm.commits) ||
      set_u64(d, "stm_aborts", tm.aborts) ||
      set_u64(d, "stm_irrevocable", tm.irrevocable))
    goto fail;
  return d;
fail:
  Py_DECREF(d);
  return NULL;
}

PyDoc_STRVAR(report_doc,
"report()\n--\n\n"
"The C reactor's report (ame_reactor_report): its counters and the STM\n"
"conflict report (totals, aborts by cause, the most conflicted words with\n"
"their labels and call sites), as a str.");

static PyObject *Core_report(CoreObject *self, PyObject *unused) {
  (void)unused;
  struct core *c = live(self);
  if (c == NULL) return NULL;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) return set_error(-errno);
  ame_reactor_report(c->r, f);
  fclose(f);
  PyObject *r = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)len, "replace");
  free(buf);
  return r;
}

PyDoc_STRVAR(close_doc,
"close()\n--\n\n"
"Stop the C reactor, join its thread and free it.  Idempotent; also done\n"
"when the object is collected.");

static PyObject *Core_close(CoreObject *self, PyObject *unused) {
  (void)unused;
  core_close(self);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(pool_stop_doc,
"tls_pool_stop()\n--\n\n"
"End the TLS handshake pool's threads (after the steps queued for them);\n"
"the next TLS stream starts them again.  AMEReactor calls it when run()\n"
"returns.  Nothing to do (as for close()) on a closed core, or on one\n"
"made before fork(), whose threads this process does not have.");

static PyObject *Core_tls_pool_stop(CoreObject *self, PyObject *unused) {
  (void)unused;
  struct core *c = self->c;
  if (c == NULL || c->fork_gen != fork_gen) Py_RETURN_NONE;
  Py_BEGIN_ALLOW_THREADS
  ame__tls_pool_stop(c);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

static PyObject *Core_get_closed(CoreObject *self, void *closure) {
  (void)closure;
  return PyBool_FromLong(self->c == NULL);
}

static PyMethodDef Core_methods[] = {
    {"watch", (PyCFunction)Core_watch, METH_VARARGS, watch_doc},
    {"wait", (PyCFunction)(void (*)(void))Core_wait, METH_FASTCALL,
     wait_doc},
    {"wake", (PyCFunction)Core_wake, METH_NOARGS, wake_doc},
    {"set_handlers", (PyCFunction)Core_set_handlers, METH_O, handlers_doc},
    {"getaddrinfo", (PyCFunction)Core_getaddrinfo, METH_VARARGS, gai_doc},
    {"stats", (PyCFunction)Core_stats, METH_NOARGS, stats_doc},
    {"close", (PyCFunction)Core_close, METH_NOARGS, close_doc},
    {"tls_pool_stop", (PyCFunction)Core_tls_pool_stop, METH_NOARGS,
     pool_stop_doc},
    {"report", (PyCFunction)Core_report, METH_NOARGS, report_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *Core_get_io(CoreObject *self, void *closure) {
  (void)closure;
  return PyUnicode_FromString(self->c && self->c->inline_mode ? "inline"
                                                              : "thread");
}

static PyGetSetDef Core_getset[] = {
    {"closed", (getter)Core_get_closed, NULL, "True once close() ran.", NULL},
    {"io", (getter)Core_get_io, NULL,
     "'thread' (a C worker thread does the I/O) or 'inline' (wait() steps\n"
     "the C reactor on the calling thread).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Core_doc,
"Core(workers=1, io='thread')\n--\n\n"
"One ame C reactor, with fd watching and a wait() for the Python thread.\n"
"io='thread': the reactor runs on a thread of its own; io='inline': no\n"
"thread, wait() steps it on the thread that first calls wait() (which must\n"
"then be the only thread to use it).  See ame.reactor.AMEReactor.");

static PyType_Slot Core_slots[] = {
    {Py_tp_new, Core_new},
    {Py_tp_dealloc, Core_dealloc},
    {Py_tp_traverse, Core_traverse},
    {Py_tp_clear, Core_clear},
    {Py_tp_methods, Core_methods},
    {Py_tp_getset, Core_getset},
    {Py_tp_doc, (void *)Core_doc},
    {0, NULL},
};

static PyType_Spec Core_spec = {
    .name = "ame._ame.Core",
    .basicsize = sizeof(CoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Core_slots,
};

/* ------------------------------------------------------------------------
** The module.
*/

static void register_atfork(void) {
  pthread_atfork(NULL, NULL, atfork_child);
}

static int module_exec(PyObject *m) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_atfork);
  ame_state *st = PyModule_GetState(m);
  st->core_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Core_spec,
                                                           NULL);
  if (st->core_type == NULL) return -1;
  if (PyModule_AddType(m, st->core_type) < 0) return -1;
  if (ame__stream_init_type(m, st) < 0) return -1;
  if (ame__timers_init(m) < 0) return -1;
  if (amepy_shared_init(m) < 0) return -1;
  if (PyModule_AddIntConstant(m, "READABLE", AME_READABLE) < 0 ||
      PyModule_AddIntConstant(m, "WRITABLE", AME_WRITABLE) < 0 ||
      PyModule_AddIntConstant(m, "DISCONNECT", AME_DISCONNECT) < 0)
    return -1;
  return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  ame_state *st = PyModule_GetState(m);
  Py_VISIT(st->core_type);
  Py_VISIT(st->stream_type);
  return 0;
}

static int module_clear(PyObject *m) {
  ame_state *st = PyModule_GetState(m);
  Py_CLEAR(st->core_type);
  Py_CLEAR(st->stream_type);
  return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

PyDoc_STRVAR(cpu_count_doc,
"cpu_count() -> int\n\n"
"How many CPUs this process can use: those of its affinity mask, lowered\n"
"to its cgroups' CPU quota, rounded up (ame_cpu_count()).");

static PyObject *module_cpu_count(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  return PyLong_FromUnsignedLong(ame_cpu_count());
}

PyDoc_STRVAR(tls_library_doc,
"tls_library(method) -> bool\n\n"
"Whether method (the address TLS_method() returns to pyOpenSSL) is what\n"
"it returns here: pyOpenSSL's SSL objects are then usable by ame's TLS\n"
"in C (the same libssl).");

PyDoc_STRVAR(tls_alpn_doc,
"tls_alpn(ssl, wire, set_ctx)\n\n"
"ALPN in C for the SSL object at address ssl (before its handshake): the\n"
"server picks the first of wire's protocols (length-prefixed, in its\n"
"order of preference) that the client offers.  set_ctx: install that\n"
"selection on ssl's context (once per context).");

PyDoc_STRVAR(tls_locked_doc,
"tls_locked(ssl, fn, *args, **kwargs)\n\n"
"fn(*args, **kwargs), holding the lock of the SSL object at address ssl\n"
"if its TLS was handed to C (the lock the worker holds around its own\n"
"OpenSSL calls on it; taken without the GIL): how Python calls OpenSSL\n"
"on a live connection.  The caller keeps the object alive (holds its\n"
"pyOpenSSL Connection).");

static PyMethodDef module_methods[] = {
    {"cpu_count", module_cpu_count, METH_NOARGS, cpu_count_doc},
    {"tls_library", ame__py_tls_library, METH_O, tls_library_doc},
    {"tls_alpn", ame__py_tls_alpn, METH_VARARGS, tls_alpn_doc},
    {"tls_locked", (PyCFunction)(void (*)(void))ame__py_tls_locked,
     METH_VARARGS | METH_KEYWORDS, tls_locked_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"ame._ame: the C side of ame.reactor (fd watching on ame's C reactor).");

static struct PyModuleDef ame_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ame._ame",
    .m_doc = module_doc,
    .m_size = sizeof(ame_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__ame(void) { return PyModuleDef_Init(&ame_module); }
