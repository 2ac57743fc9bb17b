/*
** tests/stm/stm-test.h — helpers shared by the STM tests (test_*.c).
**
** Small transactions that read or write one word, and a start/stop gate for
** groups of threads.  Everything here goes through the public API only.
*/
#ifndef AME_TESTS_STM_TEST_H
#define AME_TESTS_STM_TEST_H

#include "task.h"

#include <ame/stm.h>

/* Read *addr in a transaction of its own. */
static inline uintptr_t tx_get(ame_tx_t *tx, const uintptr_t *addr) {
  volatile uintptr_t v = 0;  /* set in the block, read after it */
  AME_ATOMIC(tx) { v = ame_load_word_tx(tx, addr); }
  return v;
}

/* Write *addr in a transaction of its own. */
static inline void tx_set(ame_tx_t *tx, uintptr_t *addr, uintptr_t v) {
  AME_ATOMIC(tx) { ame_store_word_tx(tx, addr, v); }
}

/* Add d to *addr in a transaction of its own; return the new value. */
static inline uintptr_t tx_add(ame_tx_t *tx, uintptr_t *addr, uintptr_t d) {
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) {
    v = ame_load_word_tx(tx, addr) + d;
    ame_store_word_tx(tx, addr, v);
  }
  return v;
}

/* *d = *after - *before for every counter (max_attempts and frees_pending,
** which are not counters, are taken from *after).  A descriptor may have
** served an earlier thread, so tests compare a thread's statistics with
** what they were when it started. */
static inline void stats_delta(ame_stats_t *d, const ame_stats_t *after,
                               const ame_stats_t *before) {
  d->commits = after->commits - before->commits;
  d->commits_ro = after->commits_ro - before->commits_ro;
  d->aborts = after->aborts - before->aborts;
  for (int c = 0; c < AME_ABORT__COUNT; c++)
    d->aborts_by_cause[c] =
        after->aborts_by_cause[c] - before->aborts_by_cause[c];
  d->retries = after->retries - before->retries;
  d->irrevocable = after->irrevocable - before->irrevocable;
  d->escalations = after->escalations - before->escalations;
  d->extensions = after->extensions - before->extensions;
  d->max_attempts = after->max_attempts;
  d->frees_pending = after->frees_pending;
  d->frees_done = after->frees_done - before->frees_done;
}

/* Register the calling thread; fail the test if that is impossible. */
static inline ame_tx_t *enter(void) {
  ame_tx_t *tx = ame_thread_enter();
  ASSERT_NOT_NULL(tx);
  ASSERT_PTR_EQ(ame_self(), tx);
  return tx;
}

/* Leave and shut the STM down: the last thing a test does. */
static inline void leave_and_shutdown(void) {
  ame_thread_exit();
  ASSERT_NULL(ame_self());
  ame_stm_shutdown();
}

/* A gate: worker threads wait at it until the test opens it, so that they
** all start together; `stop` tells them to finish. */
struct gate {
  atomic_int ready;   /* threads that have reached the gate */
  atomic_int go;      /* set once to let them through */
  atomic_int stop;    /* set once to make them finish */
};

static inline void gate_wait(struct gate *g) {
  atomic_fetch_add(&g->ready, 1);
  while (!atomic_load(&g->go))
    sched_yield();
}

/* Open the gate once n threads wait at it. */
static inline void gate_open(struct gate *g, int n) {
  ASSERT_WAIT(atomic_load(&g->ready) >= n, 10000);
  atomic_store(&g->go, 1);
}

#endif /* AME_TESTS_STM_TEST_H */
