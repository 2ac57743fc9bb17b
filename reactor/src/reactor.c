/*
** reactor/src/reactor.c — workers, ops, jobs, handles, run and stop.
**
** Each worker is a thread running its own libuv loop.  Its async handle is
** the only way in from other threads: it drains the inbox of ops and wakes
** the worker to run jobs.  Jobs run from the check phase (after polling),
** a bounded batch at a time; a worker with nothing of its own steals jobs
** from the others before it blocks, and workers that are blocked are woken
** when work appears that they could take.
*/
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JOB_BATCH 64       /* jobs per loop iteration before polling again */

/* initial-exec, as libame's (stm/src/internal.h: AME__TLS) */
static __thread struct worker *current
    __attribute__((tls_model("initial-exec")));

struct worker *ame__current(void) { return current; }

void ame__log(ame_reactor_t *r, const char *fmt, ...) {
  FILE *f = r && r->log ? r->log : stderr;
  /* (Also keeps gcc 12 with UBSan from warning of a null format.) */
  if (fmt == NULL) return;
  va_list ap;
  va_start(ap, fmt);
  flockfile(f);
  fputs("ame: ", f);
  vfprintf(f, fmt, ap);
  fputc('\n', f);
  funlockfile(f);
  fflush(f);
  va_end(ap);
}

/* ------------------------------------------------------------------------
** Handles.
*/

void ame__handle_init(ame_handle_t *h, int type, ame_reactor_t *r,
                      struct worker *w, void *data) {
  h->type = type;
  h->state = HS_NEW;
  h->r = r;
  h->w = w;
  h->data = data;
  h->name = NULL;
  h->refs = 1; /* the "open" reference, dropped when closed */
  h->prev = h->next = NULL;
  h->on_stop = NULL;
}

/* Owner thread (or before run): track a live handle for graceful stop. */
static void maybe_finish(struct worker *w);

void ame__handle_link(ame_handle_t *h) {
  struct worker *w = h->w;
  h->prev = NULL;
  h->next = w->handles;
  if (w->handles) w->handles->prev = h;
  w->handles = h;
}

void ame__handle_unlink(ame_handle_t *h) {
  struct worker *w = h->w;
  if (h->prev)
    h->prev->next = h->next;
  else if (w->handles == h)
    w->handles = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
  if (w->stopping && w->handles == NULL) maybe_finish(w);
}

void ame__handle_ref(ame_handle_t *h) { ADD(&h->refs, 1); }

/* Take a reference unless the handle is already dead (count 0: its memory
** is only still there because a transaction that found the pointer in
** shared data is running; that transaction will abort).  Return 1 if a
** reference was taken. */
int ame__handle_tryref(ame_handle_t *h) {
  unsigned n = LOAD(&h->refs);
  while (n != 0)
    if (__atomic_compare_exchange_n(&h->refs, &n, n + 1, 1, __ATOMIC_ACQ_REL,
                                    __ATOMIC_RELAXED))
      return 1;
  return 0;
}

/* Drop a reference; the last one frees the handle once no transaction
** that may still hold a pointer to it is running. */
void ame__handle_unref(ame_handle_t *h) {
  if (SUB(&h->refs, 1) != 0) return;
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) == 0) {
    AME_ATOMIC(tx) { ame_tx_free(tx, h, 0); }
  } else if (tx) {
    /* Inside a transaction (an abort handler): free when it ends. */
    ame_tx_free(tx, h, 0);
  } else {
    ame_quiesce(NULL);
    free(h);
  }
}

void *ame_handle_data(const void *handle) {
  return LOAD(&((const ame_handle_t *)handle)->data);
}

void ame_handle_set_data(void *handle, void *data) {
  STORE(&((ame_handle_t *)handle)->data, data);
}

void ame_handle_set_name(void *handle, const char *name) {
  STORE(&((ame_handle_t *)handle)->name, name);
}

/* ------------------------------------------------------------------------
** Ops.
*/

struct op *ame__op_new(int (*run)(struct op *), ame_handle_t *h,
                       struct worker *w, size_t len) {
  struct op *op = malloc(sizeof *op + len);
  if (op == NULL) return NULL;
  op->run = run;
  op->next = NULL;
  op->h = h;
  op->w = w ? w : h->w;
  op->a = op->b = 0;
  op->p = NULL;
  op->len = len;
  if (h && !ame__handle_tryref(h)) {
    free(op);
    return NULL;
  }
  return op;
}

static void op_free(struct op *op) {
  ame_handle_t *h = op->h;
  free(op);
  if (h) ame__handle_unref(h);
}

static void op_run(struct op *op) {
  if (!op->run(op)) op_free(op);
}

static void wake(struct worker *w) { uv_async_send(&w->async); }

static void inbox_push(struct worker *w, struct op *op) {
  op->next = NULL;
  pthread_mutex_lock(&w->lock);
  if (w->inbox_tail)
    w->inbox_tail->next = op;
  else
    STORE(&w->inbox_head, op);
  w->inbox_tail = op;
  pthread_mutex_unlock(&w->lock);
}

static void drain_inbox(struct worker *w);

/* Run op on its worker.  On the worker's own thread it runs at once,
** unless ops queued earlier (from other threads, or before the reactor
** ran) still wait in the inbox, or the worker is running them now: then
** it queues behind them, so that ops on a handle run in the order they
** were asked for (a bind before the send that follows it). */
static void op_dispatch(void *arg) {
  struct op *op = arg;
  struct worker *w = op->w;
  /* The thread an embedding program attached (ame_reactor_attach) is w's
  ** between steps too: its ops run at once, with w current meanwhile. */
  struct worker *saved = current;
  if (saved != w && w->attached && pthread_equal(w->owner, pthread_self()))
    current = w;
  if (current == w) {
    if (!w->draining && LOAD(&w->inbox_head) == NULL) {
      op_run(op);
    } else {
      inbox_push(w, op);
      if (!w->draining) drain_inbox(w);
    }
    current = saved;
    return;
  }
  inbox_push(w, op);
  wake(w);
}

static void op_discard(void *arg) { op_free(arg); }

int ame__op_submit(struct op *op) {
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    /* The abort handler first: if the commit handler cannot be
    ** registered, aborting the attempt frees the op. */
    if (ame_tx_on_abort(tx, op_discard, op) != 0) {
      op_free(op);
      return -ENOMEM;
    }
    if (ame_tx_on_commit(tx, op_dispatch, op) != 0) ame_tx_abort(tx);
    return 0;
  }
  op_dispatch(op);
  return 0;
}

/* Make a handle live at commit (or now), undoing its setup on abort. */
struct pub {
  struct op *op;
  void (*undo)(void *);
  void *arg;
};

static void pub_commit(void *arg) {
  struct pub *p = arg;
  ame__op_submit(p->op);
  free(p);
}

/* The attempt that made the handle aborted.  Ops on the handle asked for
** later in the same attempt (a write after a connect) hold references and
** are dropped by abort handlers that run after this one, so the handle's
** memory is not freed here: its open reference and the op's are dropped,
** and the last reference frees it. */
static void pub_abort(void *arg) {
  struct pub *p = arg;
  ame_handle_t *h = p->op->h;
  if (p->undo) p->undo(p->arg);
  op_free(p->op);
  if (h) ame__handle_unref(h);
  free(p);
}

int ame__publish(struct op *op, void (*undo)(void *), void *arg) {
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    struct pub *p = malloc(sizeof *p);
    if (p == NULL) return -ENOMEM;
    p->op = op;
    p->undo = undo;
    p->arg = arg;
    /* The abort handler first: if the commit handler cannot be
    ** registered, aborting the attempt disposes of everything. */
    if (ame_tx_on_abort(tx, pub_abort, p) != 0) {
      free(p);
      return -ENOMEM;
    }
    if (ame_tx_on_commit(tx, pub_commit, p) != 0) ame_tx_abort(tx);
    return 0;
  }
  return ame__op_submit(op);
}

/* ------------------------------------------------------------------------
** The shape handle kinds share: started by an op on the owner, stopped by
** an op, closed on the owner (internal.h).
*/

int ame__handle_start(ame_handle_t *h, int (*start)(struct op *),
                      void (*undo)(void *), void *arg) {
  struct op *op = ame__op_new(start, h, NULL, 0);
  if (op == NULL) return -ENOMEM;
  int rc = ame__publish(op, undo, arg);
  if (rc != 0) {
    /* Never registered: the op's reference goes with the handle, which
    ** the caller frees whole. */
    op->h = NULL;
    free(op);
  }
  return rc;
}

static int op_stop(struct op *op) {
  assert(op->h->on_stop != NULL);
  op->h->on_stop(op->h);
  return 0;
}

void ame__handle_stop(ame_handle_t *h) {
  struct op *op = ame__op_new(op_stop, h, NULL, 0);
  if (op) ame__op_submit(op);
}

static void uv_closed_cb(uv_handle_t *hd) {
  ame_handle_t *h = hd->data;
  h->state = HS_CLOSED;
  ame__handle_unlink(h);
  ame__handle_unref(h);
}

void ame__close_uv(ame_handle_t *h, uv_handle_t *hd) {
  if (h->state != HS_OPEN) return;
  h->state = HS_CLOSING;
  uv_close(hd, uv_closed_cb);
}

/* Owner thread: run the inbox's ops in order, one at a time (an op asked
** for by a callback that one of them runs queues behind the rest). */
static void drain_inbox(struct worker *w) {
  if (w->draining) return;
  w->draining = 1;
  for (;;) {
    pthread_mutex_lock(&w->lock);
    struct op *op = w->inbox_head;
    if (op) {
      STORE(&w->inbox_head, op->next);
      if (op->next == NULL) w->inbox_tail = NULL;
    }
    pthread_mutex_unlock(&w->lock);
    if (op == NULL) break;
    op_run(op);
  }
  w->draining = 0;
}

/* ------------------------------------------------------------------------
** Jobs.
*/

static void q_push(struct jobq *q, struct job *job) {
  job->next = NULL;
  if (q->tail)
    q->tail->next = job;
  else
    q->head = job;
  q->tail = job;
}

/* Take the next runnable job from q (lock held), or NULL. */
static struct job *q_take(struct jobq *q) {
  struct job *job = q->head;
  if (job == NULL || (q->ordered && q->in_flight)) return NULL;
  q->head = job->next;
  if (q->head == NULL) q->tail = NULL;
  if (q->ordered) q->in_flight = 1;
  return job;
}

/* Wake one worker that is blocked with nothing to do, if any. */
static void wake_idle(ame_reactor_t *r, struct worker *except) {
  if (LOAD(&r->idle) == 0) return;
  for (unsigned i = 0; i < r->nworkers; i++) {
    struct worker *w = &r->workers[i];
    if (w != except && LOAD(&w->idle_marked)) {
      wake(w);
      return;
    }
  }
}

int ame__job_push(struct worker *w, struct jobq *q, struct job *job) {
  ame_reactor_t *r = w->r;
  if (LOAD(&r->stopping)) return -ESHUTDOWN;
  pthread_mutex_t *lock = q == &r->calls ? &r->calls_lock : &w->lock;
  pthread_mutex_lock(lock);
  q_push(q, job);
  pthread_mutex_unlock(lock);
  if (current != w) wake(w);
  wake_idle(r, w);
  return 0;
}

static void job_free(struct job *job) {
  if (job->h) ame__handle_unref(job->h);
  free(job);
}

/* Run one job as a transaction on worker w.  It came from queue q, guarded
** by lock, of worker owner (NULL for the reactor's calls). */
static void job_run(struct worker *w, struct jobq *q, pthread_mutex_t *lock,
                    struct worker *owner, struct job *job) {
  job->fn(w->tx, job->arg, job);
  if (q->ordered) {
    pthread_mutex_lock(lock);
    q->in_flight = 0;
    int more = q->head != NULL;
    pthread_mutex_unlock(lock);
    /* Someone else's ordered queue has more: let its owner (or an idle
    ** worker) continue it while we go back to our own work. */
    if (more && owner != w) wake(owner ? owner : &w->r->workers[0]);
  }
  job_free(job);
}

/* Try our own queues, then the reactor's calls, then steal. */
static int run_jobs(struct worker *w, unsigned budget) {
  ame_reactor_t *r = w->r;
  unsigned ran = 0;
  /* Once the reactor is stopping, no job starts (begin_stop drops them). */
  while (ran < budget && !w->stopping && !LOAD(&r->stopping)) {
    struct job *job = NULL;
    struct jobq *q = NULL;
    pthread_mutex_t *lock = &w->lock;
    struct worker *owner = w;
    pthread_mutex_lock(&w->lock);
    if ((job = q_take(&w->timers))) q = &w->timers;
    else if ((job = q_take(&w->tasks))) q = &w->tasks;
    pthread_mutex_unlock(&w->lock);
    if (job == NULL) {
      pthread_mutex_lock(&r->calls_lock);
      if ((job = q_take(&r->calls))) {
        q = &r->calls;
        lock = &r->calls_lock;
        owner = NULL;
      }
      pthread_mutex_unlock(&r->calls_lock);
    }
    for (unsigned k = 1; job == NULL && k < r->nworkers; k++) {
      struct worker *v = &r->workers[(w->id + k) % r->nworkers];
      if (pthread_mutex_trylock(&v->lock) != 0) continue;
      if ((job = q_take(&v->tasks))) q = &v->tasks;
      else if ((job = q_take(&v->timers))) q = &v->timers;
      pthread_mutex_unlock(&v->lock);
      if (job) {
        lock = &v->lock;
        owner = v;
        ADD(&w->stolen, 1);
      }
    }
    if (job == NULL) break;
    job_run(w, q, lock, owner, job);
    ran++;
  }
  return (int)ran;
}

static int has_jobs(struct worker *w) {
  ame_reactor_t *r = w->r;
  pthread_mutex_lock(&w->lock);
  int mine = (w->timers.head && !w->timers.in_flight) || w->tasks.head ||
             w->inbox_head;
  pthread_mutex_unlock(&w->lock);
  if (mine) return 1;
  pthread_mutex_lock(&r->calls_lock);
  int calls = r->calls.head && !r->calls.in_flight;
  pthread_mutex_unlock(&r->calls_lock);
  return calls;
}

/* ------------------------------------------------------------------------
** The worker loop.
*/

static void begin_stop(struct worker *w);
static void run_here(struct worker *w);
static void run_leftovers(ame_reactor_t *r);

static void async_cb(uv_async_t *a) {
  struct worker *w = a->data;
  drain_inbox(w);
  /* Acquire: pairs with stop_now()'s release, so what the stopping thread
  ** did before (read a handle this stop may close and free) comes first. */
  if (LOAD_ACQ(&w->r->stopping) && !w->stopping) begin_stop(w);
}

static void idle_cb(uv_idle_t *i) { (void)i; }

static void check_cb(uv_check_t *c) {
  struct worker *w = c->data;
  if (LOAD(&w->idle_marked)) {
    STORE(&w->idle_marked, 0);
    SUB(&w->r->idle, 1);
  }
  run_jobs(w, JOB_BATCH);
  if (has_jobs(w))
    uv_idle_start(&w->idle, idle_cb);
  else
    uv_idle_stop(&w->idle);
}

static void prepare_cb(uv_prepare_t *p) {
  struct worker *w = p->data;
  int again = w->r->before_poll ? w->r->before_poll(w->r->before_poll_arg)
                                : 0;
  if (w->stopping) return;
  /* About to poll: steal something first rather than block. */
  if (run_jobs(w, JOB_BATCH) > 0 || has_jobs(w) || again) {
    uv_idle_start(&w->idle, idle_cb);
    return;
  }
  uv_idle_stop(&w->idle);
  if (!LOAD(&w->idle_marked)) {
    STORE(&w->idle_marked, 1);
    ADD(&w->r->idle, 1);
  }
  ame_thread_idle(w->tx);
}

/* A write to a connection the peer has closed raises SIGPIPE in the
** writing thread (libuv writes with write(2)), whose default action ends
** the process.  Workers block it instead, so that the write fails with
** EPIPE and only that stream closes.  On the way out, the SIGPIPEs our
** writes left pending are discarded and the thread's mask restored. */
static void sigpipe_block(sigset_t *old) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, old);
}

static void sigpipe_restore(const sigset_t *old) {
  if (!sigismember(old, SIGPIPE)) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
    }
  }
  pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Make the calling thread worker w: SIGPIPE blocked (saved in *mask),
** registered with the STM. */
static void worker_enter(struct worker *w, sigset_t *mask) {
  sigpipe_block(mask);
  current = w;
  w->tx = ame_thread_enter();
  if (w->tx == NULL) {
    ame__log(w->r, "worker %u: cannot register with the STM", w->id);
    abort();
  }
}

/* Undo worker_enter() once w's loop has ended. */
static void worker_leave(struct worker *w, sigset_t *mask) {
  ame_thread_idle(w->tx);
  ame_thread_exit();
  w->tx = NULL;
  current = NULL;
  sigpipe_restore(mask);
}

static void worker_loop(struct worker *w) {
  sigset_t mask;
  worker_enter(w, &mask);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  if (LOAD(&w->idle_marked)) {
    STORE(&w->idle_marked, 0);
    SUB(&w->r->idle, 1);
  }
  worker_leave(w, &mask);
}

/* A worker thread of its own (worker 0 runs on ame_reactor_run's caller,
** whose name is the caller's), named for top -H, perf and /proc/PID/task:
** its CPU shows apart from the program's own threads. */
static void worker_main(void *arg) {
  pthread_setname_np(pthread_self(), "ame-worker");
  worker_loop(arg);
}

/* ------------------------------------------------------------------------
** Graceful stop.
*/

static void close_internal(struct worker *w) {
  uv_close((uv_handle_t *)&w->async, NULL);
  uv_close((uv_handle_t *)&w->idle, NULL);
  uv_close((uv_handle_t *)&w->prepare, NULL);
  uv_close((uv_handle_t *)&w->check, NULL);
  uv_close((uv_handle_t *)&w->drain_timer, NULL);
}

static void drop_jobs(struct jobq *q) {
  struct job *job = q->head;
  q->head = q->tail = NULL;
  while (job) {
    struct job *next = job->next;
    job_free(job);
    job = next;
  }
}

static void drain_timeout_cb(uv_timer_t *t) {
  struct worker *w = t->data;
  ame__streams_abort_all(w);
}

static void stop_check_cb(uv_check_t *c) {
  struct worker *w = c->data;
  drain_inbox(w);
  maybe_finish(w);
}

static void maybe_finish(struct worker *w) {
  if (w->handles == NULL && !uv_is_closing((uv_handle_t *)&w->async)) {
    uv_timer_stop(&w->drain_timer);
    close_internal(w);
  }
}

static void begin_stop(struct worker *w) {
  w->stopping = 1;
  pthread_mutex_lock(&w->lock);
  drop_jobs(&w->timers);
  drop_jobs(&w->tasks);
  pthread_mutex_unlock(&w->lock);
  if (w->id == 0) {
    pthread_mutex_lock(&w->r->calls_lock);
    drop_jobs(&w->r->calls);
    pthread_mutex_unlock(&w->r->calls_lock);
  }
  /* Ask every live handle to stop; streams flush first. */
  ame_handle_t *h = w->handles;
  while (h) {
    ame_handle_t *next = h->next;
    if (h->on_stop) h->on_stop(h);
    h = next;
  }
  uv_idle_stop(&w->idle);
  uv_check_stop(&w->check);
  uv_check_start(&w->check, stop_check_cb);
  uv_timer_start(&w->drain_timer, drain_timeout_cb, w->r->drain_timeout_ms,
                 0);
  uv_unref((uv_handle_t *)&w->drain_timer);
  /* Nothing open: done (else the last handle to close finishes). */
  maybe_finish(w);
}

/* ------------------------------------------------------------------------
** The reactor.
*/

int ame_reactor_new(ame_reactor_t **out, const ame_reactor_config_t *cfg) {
  if (out == NULL) return -EINVAL;
  *out = NULL;
  ame_reactor_t *r = calloc(1, sizeof *r);
  if (r == NULL) return -ENOMEM;
  unsigned n = cfg && cfg->workers ? cfg->workers : 0;
  if (n == 0) n = ame_cpu_count();
  if (n > 1024) {
    free(r);
    return -EINVAL;
  }
  r->nworkers = n;
  r->high = cfg && cfg->high_watermark ? cfg->high_watermark : 1u << 20;
  r->low = cfg && cfg->low_watermark ? cfg->low_watermark : 256u << 10;
  if (r->low > r->high) r->low = r->high;
  r->drain_timeout_ms =
      cfg && cfg->drain_timeout_ms ? cfg->drain_timeout_ms : 5000;
  r->report_on_stop = cfg ? cfg->report_on_stop : 0;
  r->before_poll = cfg ? cfg->before_poll : NULL;
  r->before_poll_arg = cfg ? cfg->before_poll_arg : NULL;
  r->log = cfg && cfg->log ? cfg->log : stderr;
  r->calls.ordered = 1;
  pthread_mutex_init(&r->calls_lock, NULL);
  r->workers = calloc(n, sizeof *r->workers);
  if (r->workers == NULL) {
    free(r);
    return -ENOMEM;
  }
  int rc = 0;
  unsigned i;
  for (i = 0; i < n; i++) {
    struct worker *w = &r->workers[i];
    w->r = r;
    w->id = i;
    w->timers.ordered = 1;
    w->readbuf = malloc(AME__READBUF_SIZE);
    if (w->readbuf == NULL) {
      rc = -ENOMEM;
      break;
    }
    if ((rc = uv_loop_init(&w->loop)) != 0) {
      free(w->readbuf);
      break;
    }
    pthread_mutex_init(&w->lock, NULL);
    uv_async_init(&w->loop, &w->async, async_cb);
    uv_idle_init(&w->loop, &w->idle);
    uv_prepare_init(&w->loop, &w->prepare);
    uv_check_init(&w->loop, &w->check);
    uv_timer_init(&w->loop, &w->drain_timer);
    w->async.data = w->idle.data = w->prepare.data = w->check.data = w;
    w->drain_timer.data = w;
    w->loop.data = w;
    uv_prepare_start(&w->prepare, prepare_cb);
    uv_check_start(&w->check, check_cb);
    /* Internal handles do not keep the loop alive; user handles and the
    ** async (until stop) do. */
    uv_unref((uv_handle_t *)&w->prepare);
    uv_unref((uv_handle_t *)&w->check);
  }
  if (rc != 0) {
    r->nworkers = i;
    ame_reactor_free(r);
    return rc;
  }
  *out = r;
  return 0;
}

unsigned ame_reactor_workers(const ame_reactor_t *r) { return r->nworkers; }

int ame_reactor_current_worker(const ame_reactor_t *r) {
  return current && current->r == r ? (int)current->id : -1;
}

uint64_t ame_reactor_now(ame_reactor_t *r) {
  struct worker *w = current && current->r == r ? current : &r->workers[0];
  return uv_now(&w->loop);
}

/* Run worker w's loop on the calling thread until it has stopped: for a
** worker whose thread did not start, for a reactor freed without having
** run, and for ops left over after the loop ended. */
static void run_here(struct worker *w) {
  sigset_t mask;
  worker_enter(w, &mask);
  if (!w->stopping) begin_stop(w);
  drain_inbox(w);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  worker_leave(w, &mask);
}

/* Once every worker's loop has ended, ops may still wait in inboxes: a
** connection that one worker's listener accepted and handed to a worker
** that had already stopped, a write or close asked for by a callback on a
** worker that stopped later.  Run them now, on this thread, in stopping
** mode (what they open is closed at once), until none is left. */
static void run_leftovers(ame_reactor_t *r) {
  for (int more = 1; more;) {
    more = 0;
    for (unsigned i = 0; i < r->nworkers; i++) {
      struct worker *w = &r->workers[i];
      pthread_mutex_lock(&w->lock);
      int any = w->inbox_head != NULL;
      pthread_mutex_unlock(&w->lock);
      if (any) {
        run_here(w);
        more = 1;
      }
    }
  }
}

int ame_reactor_run(ame_reactor_t *r) {
  if (r == NULL) return -EINVAL;
  int expected = 0;
  if (!__atomic_compare_exchange_n(&r->running, &expected, 1, 0,
                                   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
    return -EALREADY;
  unsigned started = 1;
  for (unsigned i = 1; i < r->nworkers; i++) {
    if (uv_thread_create(&r->workers[i].thread, worker_main,
                         &r->workers[i]) != 0) {
      ame__log(r, "cannot start worker %u; running with %u", i, started);
      break;
    }
    started++;
  }
  worker_loop(&r->workers[0]);
  for (unsigned i = 1; i < started; i++) uv_thread_join(&r->workers[i].thread);
  /* Workers that could not start: their loops are stopped with the rest. */
  for (unsigned i = started; i < r->nworkers; i++)
    run_here(&r->workers[i]);
  run_leftovers(r);
  if (r->report_on_stop) ame_reactor_report(r, r->log);
  STORE(&r->running, 0);
  return 0;
}

/* ------------------------------------------------------------------------
** Embedding: the caller's thread steps worker 0's loop.
*/

int ame_reactor_attach(ame_reactor_t *r) {
  if (r == NULL || r->nworkers != 1) return -EINVAL;
  int expected = 0;
  if (!__atomic_compare_exchange_n(&r->running, &expected, 1, 0,
                                   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
    return -EALREADY;
  struct worker *w = &r->workers[0];
  struct worker *saved = current;
  worker_enter(w, &r->attach_mask);
  current = saved; /* w is current only while it steps or runs an op */
  w->owner = pthread_self();
  w->attached = 1;
  return 0;
}

static int attached_here(const ame_reactor_t *r) {
  return r->nworkers == 1 && r->workers[0].attached &&
         pthread_equal(r->workers[0].owner, pthread_self());
}

int ame_reactor_step(ame_reactor_t *r, int *timeout_ms) {
  if (r == NULL || !attached_here(r)) return -EINVAL;
  struct worker *w = &r->workers[0];
  struct worker *saved = current;
  current = w;
  int alive = uv_run(&w->loop, UV_RUN_NOWAIT);
  if (alive) {
    current = saved;
    if (timeout_ms) *timeout_ms = uv_backend_timeout(&w->loop);
    return 1;
  }
  /* The loop has ended (stop completed): what ame_reactor_run() does once
  ** its loops have ended. */
  if (LOAD(&w->idle_marked)) {
    STORE(&w->idle_marked, 0);
    SUB(&r->idle, 1);
  }
  w->attached = 0;
  worker_leave(w, &r->attach_mask);
  run_leftovers(r);
  if (r->report_on_stop) ame_reactor_report(r, r->log);
  current = saved;
  STORE(&r->running, 0);
  if (timeout_ms) *timeout_ms = -1;
  return 0;
}

int ame_reactor_fd(const ame_reactor_t *r) {
  return r ? uv_backend_fd(&r->workers[0].loop) : -EINVAL;
}

/* ame_reactor_free() of an attached reactor that still runs. */
static void step_to_end(ame_reactor_t *r) {
  ame_reactor_stop(r);
  int t;
  while (ame_reactor_step(r, &t) > 0) {
    if (t == 0) continue;
    struct pollfd p = {.fd = ame_reactor_fd(r), .events = POLLIN};
    poll(&p, 1, t);
  }
}

static void stop_now(void *arg) {
  ame_reactor_t *r = arg;
  int expected = 0;
  if (!__atomic_compare_exchange_n(&r->stopping, &expected, 1, 0,
                                   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
    return;
  for (unsigned i = 0; i < r->nworkers; i++) wake(&r->workers[i]);
}

void ame_reactor_stop(ame_reactor_t *r) {
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    if (ame_tx_on_commit(tx, stop_now, r) == 0) return;
  }
  stop_now(r);
}

/* Free the ops still in a worker's inbox without running them. */
static void drain_inbox_free(struct worker *w) {
  struct op *op = w->inbox_head;
  STORE(&w->inbox_head, NULL);
  w->inbox_tail = NULL;
  while (op) {
    struct op *next = op->next;
    op_free(op);
    op = next;
  }
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void ame_reactor_free(ame_reactor_t *r) {
  if (r == NULL) return;
  if (r->nworkers == 1 && r->workers[0].attached) {
    assert(attached_here(r) && "ame_reactor_free off the attached thread");
    step_to_end(r);
  }
  assert(!LOAD(&r->running) && "ame_reactor_free while running");
  /* A reactor that never ran (or never stopped) still has ops in its
  ** inboxes (listens, connects, timers asked for before ame_reactor_run)
  ** and handles made at once (children spawned before it): stop each
  ** worker here, so that they are all closed and freed, without calling
  ** the program back. */
  STORE(&r->quiet, 1);
  STORE(&r->stopping, 1);
  for (unsigned i = 0; i < r->nworkers; i++)
    if (!uv_is_closing((uv_handle_t *)&r->workers[i].async))
      run_here(&r->workers[i]);
  run_leftovers(r);
  for (unsigned i = 0; i < r->nworkers; i++) {
    struct worker *w = &r->workers[i];
    drain_inbox_free(w);
    drop_jobs(&w->timers);
    drop_jobs(&w->tasks);
    /* Handles never run: close them without callbacks. */
    uv_walk(&w->loop, close_walk_cb, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    ame_handle_t *h = w->handles;
    while (h) {
      ame_handle_t *next = h->next;
      free(h);
      h = next;
    }
    uv_loop_close(&w->loop);
    pthread_mutex_destroy(&w->lock);
    free(w->readbuf);
  }
  drop_jobs(&r->calls);
  pthread_mutex_destroy(&r->calls_lock);
  free(r->workers);
  free(r);
}

/* ------------------------------------------------------------------------
** Calls and tasks.
*/

static int call_job(ame_tx_t *tx, void *arg, struct job *job) {
  struct worker *w = ame__current();
  ame_call_fn fn = (ame_call_fn)(uintptr_t)job->user_fn;
  volatile int rc = 0;
  AME_ATOMIC(tx) {
    ame_tx_set_site(tx, job->what);
    rc = fn(tx, arg);
  }
  ame__cb_done(w, NULL, job->what, rc);
  return rc;
}

struct post {
  ame_reactor_t *r;
  struct job *job;
  int task;
};

static int push_post(ame_reactor_t *r, struct job *job, int task) {
  if (task) {
    struct worker *w = ame__home(r);
    return ame__job_push(w, &w->tasks, job);
  }
  return ame__job_push(&r->workers[0], &r->calls, job);
}

static void post_now(void *arg) {
  struct post *p = arg;
  if (push_post(p->r, p->job, p->task) != 0) free(p->job);
  free(p);
}

static void post_drop(void *arg) {
  struct post *p = arg;
  free(p->job);
  free(p);
}

static int post(ame_reactor_t *r, ame_call_fn fn, void *arg, int task) {
  if (r == NULL || fn == NULL) return -EINVAL;
  if (LOAD(&r->stopping)) return -ESHUTDOWN;
  struct job *job = calloc(1, sizeof *job);
  if (job == NULL) return -ENOMEM;
  job->fn = call_job;
  job->what = task ? "task" : "posted call";
  job->arg = arg;
  job->user_fn = (uint64_t)(uintptr_t)fn;
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    struct post *p = malloc(sizeof *p);
    if (p == NULL) {
      free(job);
      return -ENOMEM;
    }
    p->r = r;
    p->job = job;
    p->task = task;
    if (ame_tx_on_commit(tx, post_now, p) != 0) {
      free(job);
      free(p);
      return -ENOMEM;
    }
    if (ame_tx_on_abort(tx, post_drop, p) != 0) ame_tx_abort(tx);
    return 0;
  }
  int rc = push_post(r, job, task);
  if (rc != 0) free(job);
  return rc;
}

int ame_reactor_call(ame_reactor_t *r, ame_call_fn fn, void *arg) {
  return post(r, fn, arg, 0);
}

int ame_reactor_task(ame_reactor_t *r, ame_call_fn fn, void *arg) {
  return post(r, fn, arg, 1);
}

struct worker *ame__home(ame_reactor_t *r) {
  if (current && current->r == r) return current;
  unsigned i = ADD(&r->next_worker, 1) % r->nworkers;
  return &r->workers[i];
}

struct worker *ame__pick_worker(ame_reactor_t *r) {
  unsigned start = ADD(&r->next_worker, 1) % r->nworkers;
  struct worker *best = &r->workers[start];
  unsigned best_n = LOAD(&best->nstreams);
  for (unsigned k = 1; k < r->nworkers; k++) {
    struct worker *w = &r->workers[(start + k) % r->nworkers];
    unsigned n = LOAD(&w->nstreams);
    if (n < best_n) {
      best = w;
      best_n = n;
    }
  }
  return best;
}

void ame__cb_done(struct worker *w, ame_handle_t *h, const char *what,
                  int rc) {
  if (w == NULL) return;
  ADD(&w->callbacks, 1);
  if (rc >= 0) return;
  ADD(&w->failures, 1);
  const char *name = h ? LOAD(&h->name) : NULL;
  ame__log(w->r, "worker %u: %s%s%s failed: %s", w->id, name ? name : "",
           name ? " " : "", what, uv_strerror(rc));
}

/* ------------------------------------------------------------------------
** Statistics.
*/

void ame_reactor_stats(const ame_reactor_t *r, ame_reactor_stats_t *out) {
  memset(out, 0, sizeof *out);
  for (unsigned i = 0; i < r->nworkers; i++) {
    const struct worker *w = &r->workers[i];
    uint64_t c = LOAD(&w->callbacks);
    out->callbacks += c;
    out->failures += LOAD(&w->failures);
    out->stolen += LOAD(&w->stolen);
    out->streams_open += LOAD(&w->nstreams);
    if (i < 64) out->per_worker_callbacks[i] = c;
  }
  out->accepted = LOAD(&r->accepted);
  out->accept_errors = LOAD(&r->accept_errors);
}

void ame_reactor_report(ame_reactor_t *r, FILE *f) {
  ame_reactor_stats_t s;
  ame_reactor_stats(r, &s);
  fprintf(f, "ame reactor: %u workers, %llu callbacks (%llu failed, %llu "
             "run by another worker), %llu accepted (%llu accept errors)\n",
          r->nworkers, (unsigned long long)s.callbacks,
          (unsigned long long)s.failures, (unsigned long long)s.stolen,
          (unsigned long long)s.accepted,
          (unsigned long long)s.accept_errors);
  fprintf(f, "  callbacks per worker:");
  for (unsigned i = 0; i < r->nworkers && i < 64; i++)
    fprintf(f, " %llu", (unsigned long long)s.per_worker_callbacks[i]);
  fprintf(f, "\n");
  ame_conflict_report(f, 10);
}
