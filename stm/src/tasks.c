/*
** stm/src/tasks.c — the thread-less task API: PyPy's transaction.add() and
** transaction.run() in C.
**
** A queue of (function, argument) pairs; ame_tasks_run() starts worker
** threads that pop tasks and run each as one transaction until the queue is
** empty and no task is running (a running task may still add more).  A task
** added inside a transaction joins the queue in a commit handler, so an
** aborted attempt adds nothing.  The queue itself is a mutex and a condition
** variable: tasks are whole transactions, so the queue is not the hot path.
*/
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

struct task {
  ame_task_fn fn;
  void *arg;
  struct task *next;
};

struct ame_tasks {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct task *head, *tail; /* FIFO of ready tasks */
  unsigned running;         /* tasks being executed now */
  int busy;                 /* ame_tasks_run() in progress */
  uint64_t done;            /* atomic: tasks committed in the last run */
};

/* A task added inside a transaction, waiting for its commit. */
struct pending {
  ame_tasks_t *q;
  struct task *t;
};

ame_tasks_t *ame_tasks_new(void) {
  ame_tasks_t *q = calloc(1, sizeof *q);
  if (q == NULL) return NULL;
  pthread_mutex_init(&q->lock, NULL);
  pthread_cond_init(&q->cond, NULL);
  return q;
}

void ame_tasks_free(ame_tasks_t *q) {
  if (q == NULL) return;
  assert(!q->busy && "ame_tasks_free while running");
  struct task *t = q->head;
  while (t) {
    struct task *next = t->next;
    free(t);
    t = next;
  }
  pthread_cond_destroy(&q->cond);
  pthread_mutex_destroy(&q->lock);
  free(q);
}

static void push(ame_tasks_t *q, struct task *t) {
  t->next = NULL;
  pthread_mutex_lock(&q->lock);
  if (q->tail)
    q->tail->next = t;
  else
    q->head = t;
  q->tail = t;
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&q->lock);
}

static void pending_commit(void *arg) {
  struct pending *p = arg;
  push(p->q, p->t);
  free(p);
}

static void pending_abort(void *arg) {
  struct pending *p = arg;
  free(p->t);
  free(p);
}

int ame_tasks_add(ame_tasks_t *q, ame_tx_t *tx, ame_task_fn fn, void *arg) {
  if (q == NULL || fn == NULL) return -EINVAL;
  struct task *t = malloc(sizeof *t);
  if (t == NULL) return -ENOMEM;
  t->fn = fn;
  t->arg = arg;
  if (tx == NULL || ame_tx_depth(tx) == 0) {
    push(q, t);
    return 0;
  }
  struct pending *p = malloc(sizeof *p);
  if (p == NULL) {
    free(t);
    return -ENOMEM;
  }
  p->q = q;
  p->t = t;
  /* Registered together: exactly one of the two runs for this attempt. */
  if (ame_tx_on_commit(tx, pending_commit, p) != 0) {
    free(t);
    free(p);
    return -ENOMEM;
  }
  if (ame_tx_on_abort(tx, pending_abort, p) != 0) {
    tx->on_commit.n--; /* take the commit handler back */
    free(t);
    free(p);
    return -ENOMEM;
  }
  return 0;
}

/* Run tasks until the run is over.  Return 0, or -1 if the thread could
** not register (then it ran none). */
static int worker(ame_tasks_t *q) {
  ame_tx_t *tx = ame_thread_enter();
  if (tx == NULL) return -1;
  pthread_mutex_lock(&q->lock);
  for (;;) {
    while (q->head == NULL && q->running > 0)
      pthread_cond_wait(&q->cond, &q->lock);
    if (q->head == NULL) break; /* empty and nothing running: done */
    struct task *t = q->head;
    q->head = t->next;
    if (q->head == NULL) q->tail = NULL;
    q->running++;
    pthread_mutex_unlock(&q->lock);
    AME_ATOMIC(tx) { t->fn(tx, t->arg); }
    free(t);
    __atomic_add_fetch(&q->done, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&q->lock);
    q->running--;
    if (q->running == 0 && q->head == NULL) pthread_cond_broadcast(&q->cond);
  }
  pthread_cond_broadcast(&q->cond);
  pthread_mutex_unlock(&q->lock);
  ame_thread_idle(tx);
  ame_thread_exit();
  return 0;
}

static void *worker_main(void *arg) {
  return worker(arg) == 0 ? arg : NULL;
}

int ame_tasks_run(ame_tasks_t *q, unsigned nthreads) {
  if (q == NULL) return -EINVAL;
  ame_tx_t *me = ame_self();
  if (me && ame_tx_depth(me) > 0) return -EINVAL;
  if (nthreads == 0) nthreads = ame_cpu_count();
  pthread_mutex_lock(&q->lock);
  if (q->busy) {
    pthread_mutex_unlock(&q->lock);
    return -EALREADY;
  }
  q->busy = 1;
  pthread_mutex_unlock(&q->lock);
  STORE(&q->done, 0);
  pthread_t *th = calloc(nthreads, sizeof *th);
  unsigned started = 0;
  if (th) {
    for (unsigned i = 1; i < nthreads; i++)
      if (pthread_create(&th[started], NULL, worker_main, q) == 0) started++;
  }
  /* The calling thread is one of the workers. */
  int worked = worker(q) == 0;
  for (unsigned i = 0; i < started; i++) {
    void *r = NULL;
    pthread_join(th[i], &r);
    if (r) worked = 1;
  }
  free(th);
  pthread_mutex_lock(&q->lock);
  q->busy = 0;
  /* None registered (the thread table is full): nothing ran, and the
  ** tasks stay queued for a later run. */
  int rc = !worked && q->head ? -ENOSPC : 0;
  pthread_mutex_unlock(&q->lock);
  return rc;
}

uint64_t ame_tasks_done(const ame_tasks_t *q) {
  return q ? LOAD(&q->done) : 0;
}
