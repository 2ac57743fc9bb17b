/*
** reactor/src/timer.c — timers: a callback after a delay, once or every
** repeat_ms.
**
** ame_timer_start() makes the handle on the calling worker (worker 0 from
** other threads) and, at commit, an op starts its libuv timer there; only
** that owner touches the libuv timer.  When it fires, the callback is not
** run at once: it becomes a job on the owner's ordered timer queue, so
** that callbacks run one at a time in the order the loop fired them
** (deadline, then start order), on the owner or on an idle worker that
** takes the queue's head.  The one field other threads touch is tstate:
** a cancel (at commit) moves it from active to cancelled, and a one-shot
** timer's firing from active to firing, each by compare-and-swap, so
** exactly one of them wins; a job that finds the timer cancelled does not
** call back.  A one-shot timer closes itself after its callback, unless
** the program holds its pointer (ame_timer_start's out): then it stays
** open, done and idle, so that a later ame_timer_cancel() can answer
** -ENOENT from live memory, until that cancel (which closes it) or the
** reactor's stop.  held says whether that pointer is still out: the first
** cancel to commit takes it back.
*/
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

enum { T_ACTIVE, T_FIRING, T_DONE, T_CANCELLED };

struct ame_timer {
  ame_handle_t h;
  uv_timer_t t;
  ame_timer_cb cb;
  uint64_t timeout, repeat;
  int tstate; /* atomic */
  int held;   /* atomic: the program holds the pointer (not cancelled) */
};

/* Owner thread: close t.  An active timer becomes cancelled; one whose
** callback is due (firing) still calls back: its job holds a reference. */
static void timer_stop(ame_handle_t *h) {
  ame_timer_t *t = (ame_timer_t *)h;
  int expect = T_ACTIVE;
  __atomic_compare_exchange_n(&t->tstate, &expect, T_CANCELLED, 0,
                              __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
  ame__close_uv(h, (uv_handle_t *)&t->t);
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
    if (!LOAD(&t->held)) ame__handle_stop(&t->h);
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
  if (ame__stopped(r)) return -ESHUTDOWN;
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
  t->held = out != NULL;
  int rc = ame__handle_start(&t->h, op_timer_start, NULL, NULL);
  if (rc) {
    free(t);
    return rc;
  }
  if (out) *out = t;
  return 0;
}

/* Cancel t if it is active, and take the program's pointer back: close t
** if it was cancelled here or is a held one-shot that fired (or fires
** now: its job still calls back, and closes nothing once done). */
static void cancel_now(void *arg) {
  ame_timer_t *t = arg;
  int expect = T_ACTIVE;
  int held = __atomic_exchange_n(&t->held, 0, __ATOMIC_ACQ_REL);
  if (__atomic_compare_exchange_n(&t->tstate, &expect, T_CANCELLED, 0,
                                  __ATOMIC_ACQ_REL, __ATOMIC_RELAXED) ||
      held)
    ame__handle_stop(&t->h);
}

int ame_timer_cancel(ame_timer_t *t) {
  if (t == NULL) return -EINVAL;
  int rc = LOAD(&t->tstate) == T_ACTIVE ? 0 : -ENOENT;
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    if (rc == 0 || LOAD(&t->held)) {
      int e = ame_tx_on_commit(tx, cancel_now, t);
      if (e != 0) return e;
    }
    return rc;
  }
  cancel_now(t);
  return rc;
}
