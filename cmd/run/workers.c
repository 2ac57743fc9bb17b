/*
** cmd/run/workers.c — the supervisor's worker processes: forking one
** (from the supervisor itself, or from a reload's zygote), a slot's
** restart back-off, replacements that take over from the process they
** replace, and the counters summed over a slot's processes
** (sup_internal.h).  On the supervisor's one thread.
*/
#include "listeners.h"
#include "metrics.h"
#include "output.h"
#include "reload.h"
#include "sup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S ame_sup

unsigned ame_sup_live(void) {
  unsigned n = 0;
  for (unsigned i = 0; i < AME_SUP_PROCS; i++) n += S.p[i].state != P_FREE;
  return n;
}

double ame_sup_counters(unsigned slot, uint64_t *out) {
  uint64_t latest = 0;
  memcpy(out, S.s[slot].done, sizeof S.s[slot].done);
  for (unsigned i = 0; i < AME_SUP_PROCS; i++) {
    if (S.p[i].state == P_FREE || S.p[i].slot != slot) continue;
    ame_page_entry_t *e = ame_page_entry(i);
    /* The beat first: it is stored after the counters (release), so these
    ** loads see that tick's counters or a later one's. */
    uint64_t beat = atomic_load_explicit(&e->beat_ns, memory_order_acquire);
    if (beat > latest) latest = beat;
    for (unsigned k = 0; k < AME_PAGE_NCOUNTERS; k++)
      out[k] += atomic_load_explicit(&e->c[k], memory_order_relaxed);
  }
  return (double)latest / 1e9;
}

/* ---- forking --------------------------------------------------------- */

/* In a new worker: put the caller's signal handlers back and close
** everything of the supervisor's. */
static void child_setup(void) {
  ame_sup_child_signals();
  ame_out_forget();
  ame_sup_release();
}

void ame_sup_release(void) {
  ame_metrics_forget();
  ame_reload_forget();
  for (unsigned s = 0; s <= AME_SUP_MAX_WORKERS; s++) {
    free(S.s[s].rate);
    free(S.s[s].busy);
  }
  free(S.s);
  S.s = NULL;
}

/* How long to wait before restarting slot sl (its process just ended). */
double ame_sup_backoff(struct sup_slot *sl, double started, double now) {
  if (sl->backoff == 0 || now - started >= AME_SUP_BACKOFF_RESET_S)
    sl->backoff = AME_SUP_BACKOFF_MIN_S;
  else if ((sl->backoff *= 2) > AME_SUP_BACKOFF_MAX_S)
    sl->backoff = AME_SUP_BACKOFF_MAX_S;
  return sl->backoff;
}

/* Fork a worker process for slot from generation gen.  Return its record's
** index in the supervisor, -1 if it could not be forked (logged), or -2 in
** the new worker (S.child_slot is its id). */
int ame_sup_fork(unsigned slot, unsigned gen, double now) {
  int i = -1;
  for (unsigned k = 0; k < AME_SUP_PROCS; k++)
    if (S.p[k].state == P_FREE) {
      i = (int)k;
      break;
    }
  int out[2] = {-1, -1}, err[2] = {-1, -1}, e = EAGAIN;
  int fds[AME_LST_MAX], lerr;
  unsigned nfds = ame_lst_slot_fds(slot, fds, &lerr);
  if (lerr)
    ame_sup_say("worker %u: cannot make a listening socket of its own "
                "(%s); it shares worker 1's", slot, strerror(lerr));
  if (i < 0) goto fail;
  if (ame_out_reserve(1) < 0) {
    e = ENOMEM;
    goto fail;
  }
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    e = errno;
    goto fail;
  }
  uint64_t maxreq = 0;
  if (S.cfg->max_requests) {
    maxreq = S.cfg->max_requests;
    if (S.cfg->max_requests_jitter)
      maxreq += (uint64_t)random() % (S.cfg->max_requests_jitter + 1);
  }
  ame_page_reset((unsigned)i, maxreq);
  pid_t pid;
  if (gen > 0) {
    pid = ame_reload_fork(gen, slot, (unsigned)i, out[1], err[1], fds, nfds);
    if (pid < 0) e = -pid;
  } else {
    sigset_t block, prev;
    sigfillset(&block);
    sigprocmask(SIG_BLOCK, &block, &prev);
    if (S.cfg->before_fork) S.cfg->before_fork(S.cfg->data);
    pid = fork();
    if (pid == 0) {
      if (S.cfg->after_fork_child) S.cfg->after_fork_child(S.cfg->data);
      pid_t self = S.self;
      sigset_t mask = S.old_mask;
      double deadline = S.cfg->grace_s + AME_SUP_KILL_SLACK_S;
      child_setup();
      /* fds 0-2 are open (ame_supervise), so the pipes are above 2. */
      dup2(out[1], 1);
      dup2(err[1], 2);
      close(out[0]), close(out[1]), close(err[0]), close(err[1]);
      ame_lst_worker(slot, NULL);
      int orphan = ame_page_worker_setup((unsigned)i, self, deadline) < 0;
      /* Stop signals wait until the worker can handle them. */
      sigaddset(&mask, SIGINT);
      sigaddset(&mask, SIGTERM);
      sigprocmask(SIG_SETMASK, &mask, NULL);
      if (orphan) kill(getpid(), SIGTERM); /* the supervisor is gone */
      S.child_slot = (int)slot;
      return -2;
    }
    e = errno;
    if (S.cfg->after_fork_parent) S.cfg->after_fork_parent(S.cfg->data);
    sigprocmask(SIG_SETMASK, &prev, NULL);
  }
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(out[0]);
    close(err[0]);
    out[0] = err[0] = -1;
    goto fail;
  }
  S.p[i] = (struct sup_proc){.state = P_STARTING, .pid = pid, .slot = slot,
                             .gen = gen, .started = now};
  ame_out_add(out[0], 1, slot);
  ame_out_add(err[0], 2, slot);
  if (gen > 0)
    ame_sup_say("worker %u started (pid %d, generation %u)", slot, (int)pid,
                gen);
  else
    ame_sup_say("worker %u started (pid %d)", slot, (int)pid);
  return i;
fail:
  for (int k = 0; k < 2; k++) {
    if (out[k] >= 0) close(out[k]);
    if (err[k] >= 0) close(err[k]);
  }
  ame_sup_say("cannot start worker %u: %s", slot,
              i < 0 ? "too many worker processes" : strerror(e));
  return -1;
}

/* Start slot's process (a first start or a restart).  Return as
** fork_proc, having scheduled a retry after a failure. */
int ame_sup_start_slot(unsigned slot, double now) {
  struct sup_slot *sl = &S.s[slot];
  sl->restart_at = 0;
  int i = ame_sup_fork(slot, S.gen, now);
  if (i >= 0) sl->cur = i;
  if (i == -1) {
    double d = ame_sup_backoff(sl, now, now);
    sl->restart_at = now + d;
    ame_sup_say("worker %u: trying again in %g s", slot, d);
  }
  return i;
}

/* Ask process i to stop gracefully (SIGTERM); kill it if it has not
** stopped grace + slack seconds from now. */
void ame_sup_stop_proc(int i, double now) {
  struct sup_proc *p = &S.p[i];
  if (p->state == P_STOPPING || p->state == P_HUNG) return;
  p->state = P_STOPPING;
  p->deadline = now + S.cfg->grace_s + AME_SUP_KILL_SLACK_S;
  kill(p->pid, SIGTERM);
}

/* Start a replacement for slot's process from generation gen (recycling,
** reload).  Return as fork_proc. */
int ame_sup_replace(unsigned slot, unsigned gen, double now) {
  struct sup_slot *sl = &S.s[slot];
  if (sl->next >= 0) ame_sup_stop_proc(sl->next, now);
  sl->next = -1;
  int i = ame_sup_fork(slot, gen, now);
  if (i >= 0) sl->next = i;
  return i;
}

/* Slot's replacement serves: it takes over, the old one stops. */
void ame_sup_take_over(unsigned slot, double now) {
  struct sup_slot *sl = &S.s[slot];
  if (sl->next < 0) return;
  if (sl->cur >= 0) ame_sup_stop_proc(sl->cur, now);
  sl->cur = sl->next;
  sl->next = -1;
}

/* Is process i serving (has its reactor sent a heartbeat)? */
int ame_sup_ready(int i) {
  ame_page_entry_t *e = ame_page_entry((unsigned)i);
  return e && atomic_load_explicit(&e->beat_ns, memory_order_acquire) != 0;
}

