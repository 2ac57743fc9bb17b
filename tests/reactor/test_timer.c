/*
** tests/reactor/test_timer.c — timers: callbacks in deadline order, ties in
** the order started (even when idle workers take them); repeating timers
** and their cancellation; ame_timer_cancel's answers, after a one-shot
** fired too; a cancel asked for in an attempt that aborts cancels nothing.
*/
#include "reactor-test.h"

static ame_reactor_t *g_r;

/* A transactional log of small numbers. */
enum { LOG_MAX = 256 };
static uintptr_t g_log[LOG_MAX];
static uintptr_t g_log_n;

static void log_add(ame_tx_t *tx, uintptr_t v) {
  uintptr_t n = ame_load_word_tx(tx, &g_log_n);
  ASSERT_LT(n, LOG_MAX);
  ame_store_word_tx(tx, &g_log[n], v);
  ame_store_word_tx(tx, &g_log_n, n + 1);
}

/* ------------------------------------------------------------------------
** Order: timers started by one callback on one worker fire by deadline,
** ties first-come.
*/

static const uint64_t order_ms[] = {30, 10, 20, 10, 0, 10, 20, 0, 30, 5};
enum { NORDER = sizeof order_ms / sizeof order_ms[0] };
static atomic_int g_order_worker; /* the worker that started them */

static int order_cb(ame_tx_t *tx, ame_timer_t *t) {
  uintptr_t id = (uintptr_t)ame_handle_data(t);
  log_add(tx, id);
  if (ame_load_word_tx(tx, &g_log_n) == NORDER)
    ame_reactor_stop(g_r);
  return 0;
}

static int order_start(ame_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  atomic_store(&g_order_worker, ame_reactor_current_worker(g_r));
  for (uintptr_t i = 0; i < NORDER; i++)
    ASSERT_EQ(ame_timer_start(g_r, order_ms[i], 0, order_cb, (void *)i, NULL),
              0);
  return 0;
}

TEST_IMPL(timer_order) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  g_log_n = 0;
  ASSERT_EQ(ame_reactor_call(g_r, order_start, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(g_log_n, NORDER);
  /* Expected: by deadline, ties by index (the order started). */
  uintptr_t k = 0;
  for (uint64_t d = 0; d <= 30; d++)
    for (uintptr_t i = 0; i < NORDER; i++)
      if (order_ms[i] == d) {
        ASSERT_EQ(g_log[k], i);
        k++;
      }
  ASSERT_EQ(k, NORDER);
  ASSERT_GE(atomic_load(&g_order_worker), 0);
  rt_finish(g_r, fds);
}

/* Many ties, started before the reactor runs (they belong to worker 0),
** on four workers that are otherwise idle and take each other's work: the
** callbacks still run one at a time, in the order started. */
enum { NTIES = 200 };
static atomic_int g_ties_running;

static int ties_cb(ame_tx_t *tx, ame_timer_t *t) {
  ASSERT_EQ(atomic_fetch_add(&g_ties_running, 1), 0);
  uintptr_t id = (uintptr_t)ame_handle_data(t);
  uintptr_t n = ame_load_word_tx(tx, &g_log_n);
  ASSERT_EQ(n, id); /* in order */
  ame_store_word_tx(tx, &g_log_n, n + 1);
  if (n + 1 == NTIES)
    ame_reactor_stop(g_r);
  for (volatile int i = 0; i < 1000; i++) {
  }
  atomic_fetch_sub(&g_ties_running, 1);
  return 0;
}

TEST_IMPL(timer_ties) {
  int fds = fd_baseline();
  g_r = rt_new(4, NULL);
  g_log_n = 0;
  for (uintptr_t i = 0; i < NTIES; i++)
    ASSERT_EQ(ame_timer_start(g_r, 5, 0, ties_cb, (void *)i, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(g_log_n, NTIES);
  ame_reactor_stats_t st;
  ame_reactor_stats(g_r, &st);
  ASSERT_EQ(st.callbacks, NTIES);
  printf("# %" PRIu64 " of %d timer callbacks run by another worker\n",
         st.stolen, NTIES);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A repeating timer fires until it cancels itself, then never again.
*/

static ame_timer_t *g_rep;
static uintptr_t g_rep_count;
static atomic_int g_rep_fired;

static void rep_commit(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_rep_fired, 1);
}

static int rep_end_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  ASSERT_EQ(ame_load_word_tx(tx, &g_rep_count), 5);
  ame_reactor_stop(g_r);
  return 0;
}

static int rep_cb(ame_tx_t *tx, ame_timer_t *t) {
  ASSERT_PTR_EQ(t, g_rep);
  ASSERT_EQ(ame_tx_on_commit(tx, rep_commit, NULL), 0);
  uintptr_t n = tx_inc(tx, &g_rep_count);
  ASSERT_LE(n, 5);
  if (n == 5) {
    /* Inside a transaction: takes effect at commit. */
    ASSERT_EQ(ame_timer_cancel(t), 0);
    /* 60 ms of silence, then the end. */
    ASSERT_EQ(ame_timer_start(g_r, 60, 0, rep_end_cb, NULL, NULL), 0);
  }
  return 0;
}

TEST_IMPL(timer_repeat_cancel) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  g_rep_count = 0;
  ASSERT_EQ(ame_timer_start(g_r, 2, 2, rep_cb, NULL, &g_rep), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(g_rep_count, 5);
  ASSERT_EQ(atomic_load(&g_rep_fired), 5);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** ame_timer_cancel's answers.
*/

static atomic_int g_fired, g_never;
static atomic_int g_cancel_in_cb = 1, g_cancel_after_cb = 1;

static int never_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx;
  (void)t;
  atomic_fetch_add(&g_never, 1);
  return 0;
}

/* After the one-shot's transaction committed, outside any transaction
** (its handle is still valid while its job is being finished). */
static void cancel_after(void *arg) {
  atomic_store(&g_cancel_after_cb, ame_timer_cancel(arg));
}

static int stop_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx;
  (void)t;
  ame_reactor_stop(g_r);
  return 0;
}

static int oneshot_cb(ame_tx_t *tx, ame_timer_t *t) {
  atomic_fetch_add(&g_fired, 1);
  /* It fired: nothing left to cancel. */
  atomic_store(&g_cancel_in_cb, ame_timer_cancel(t));
  ASSERT_EQ(ame_tx_on_commit(tx, cancel_after, t), 0);
  ASSERT_EQ(ame_timer_start(g_r, 20, 0, stop_cb, NULL, NULL), 0);
  return 0;
}

TEST_IMPL(timer_cancel_answers) {
  int fds = fd_baseline();
  g_r = rt_new(2, NULL);
  atomic_store(&g_fired, 0);
  atomic_store(&g_never, 0);
  ASSERT_EQ(ame_timer_cancel(NULL), -EINVAL);
  /* Cancelled before it could fire: 0, then -ENOENT. */
  ame_timer_t *t;
  ASSERT_EQ(ame_timer_start(g_r, 1, 0, never_cb, NULL, &t), 0);
  ASSERT_EQ(ame_timer_cancel(t), 0);
  ASSERT_EQ(ame_timer_cancel(t), -ENOENT);
  ame_timer_t *rep;
  ASSERT_EQ(ame_timer_start(g_r, 1, 1, never_cb, NULL, &rep), 0);
  ASSERT_EQ(ame_timer_cancel(rep), 0);
  ASSERT_EQ(ame_timer_cancel(rep), -ENOENT);
  ASSERT_EQ(ame_timer_start(g_r, 0, 0, NULL, NULL, &t), -EINVAL);
  /* A one-shot that fires. */
  ASSERT_EQ(ame_timer_start(g_r, 5, 0, oneshot_cb, NULL, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(atomic_load(&g_fired), 1);
  ASSERT_EQ(atomic_load(&g_never), 0);
  ASSERT_EQ(atomic_load(&g_cancel_in_cb), -ENOENT);
  ASSERT_EQ(atomic_load(&g_cancel_after_cb), -ENOENT);
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A cancel asked for in an attempt that aborts does not cancel; one in an
** attempt that commits does.
*/

static ame_timer_t *g_victim, *g_victim2;
static atomic_int g_victim_fired, g_victim2_fired, g_cancel_attempts;

static int victim_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx;
  atomic_fetch_add(t == g_victim ? &g_victim_fired : &g_victim2_fired, 1);
  return 0;
}

static int cancel_call(ame_tx_t *tx, void *arg) {
  (void)arg;
  atomic_fetch_add(&g_cancel_attempts, 1);
  if (ame_tx_attempt(tx) < 2) {
    ASSERT_EQ(ame_timer_cancel(g_victim), 0);
    ame_tx_abort(tx); /* two attempts cancel it, and abort */
  }
  return 0; /* the one that commits does not */
}

static int cancel_call_commit(ame_tx_t *tx, void *arg) {
  (void)arg;
  if (ame_tx_attempt(tx) == 0) {
    ASSERT_EQ(ame_timer_cancel(g_victim2), 0);
    ame_tx_abort(tx);
  }
  ASSERT_EQ(ame_timer_cancel(g_victim2), 0);
  return 0;
}

TEST_IMPL(timer_cancel_aborted) {
  int fds = fd_baseline();
  /* One worker: the posted calls run (in order, in the loop's first
  ** pass) before the timers could fire, whatever the machine's speed. */
  g_r = rt_new(1, NULL);
  ASSERT_EQ(ame_timer_start(g_r, 40, 0, victim_cb, NULL, &g_victim), 0);
  ASSERT_EQ(ame_timer_start(g_r, 40, 0, victim_cb, NULL, &g_victim2), 0);
  ASSERT_EQ(ame_timer_start(g_r, 100, 0, stop_cb, NULL, NULL), 0);
  ASSERT_EQ(ame_reactor_call(g_r, cancel_call, NULL), 0);
  ASSERT_EQ(ame_reactor_call(g_r, cancel_call_commit, NULL), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(atomic_load(&g_cancel_attempts), 3);
  ASSERT_EQ(atomic_load(&g_victim_fired), 1);  /* not cancelled */
  ASSERT_EQ(atomic_load(&g_victim2_fired), 0); /* cancelled */
  rt_finish(g_r, fds);
}

/* ------------------------------------------------------------------------
** A one-shot whose pointer the program kept stays valid after it fired,
** until the program cancels it: the cancel answers -ENOENT (from live
** memory: ASan checks), in a transaction too, and frees it once; one never
** cancelled is freed at the stop (LeakSanitizer checks).
*/

static ame_timer_t *g_cf_t, *g_cf_kept;
static atomic_int g_cf_fired, g_cf_attempts, g_cf_rc0, g_cf_rc1;
static atomic_int g_cf_data_ok;

static int cf_cancel_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)t;
  atomic_fetch_add(&g_cf_attempts, 1);
  atomic_store(&g_cf_data_ok, ame_handle_data(g_cf_t) == (void *)&g_cf_t);
  int rc = ame_timer_cancel(g_cf_t);
  if (ame_tx_attempt(tx) == 0) {
    atomic_store(&g_cf_rc0, rc);
    ame_tx_abort(tx); /* the release happens once, at the commit */
  }
  atomic_store(&g_cf_rc1, rc);
  ASSERT_EQ(ame_timer_start(g_r, 20, 0, stop_cb, NULL, NULL), 0);
  return 0;
}

static int cf_fired_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx;
  ASSERT_PTR_EQ(t, g_cf_t);
  atomic_fetch_add(&g_cf_fired, 1);
  /* Later, once this callback's job has ended and the loop has gone
  ** round (the one-shot used to be closed and freed by then). */
  ASSERT_EQ(ame_timer_start(g_r, 20, 0, cf_cancel_cb, NULL, NULL), 0);
  return 0;
}

TEST_IMPL(timer_cancel_fired) {
  int fds = fd_baseline();
  g_r = rt_new(1, NULL);
  ASSERT_EQ(ame_timer_start(g_r, 1, 0, cf_fired_cb, &g_cf_t, &g_cf_t), 0);
  /* Fires, and is never cancelled: freed at the stop. */
  ASSERT_EQ(ame_timer_start(g_r, 1, 0, never_cb, NULL, &g_cf_kept), 0);
  struct rt rt;
  rt_start(&rt, g_r);
  rt_wait(&rt, 10000);
  ASSERT_EQ(atomic_load(&g_cf_fired), 1);
  ASSERT_EQ(atomic_load(&g_cf_attempts), 2);
  ASSERT_EQ(atomic_load(&g_cf_data_ok), 1);
  ASSERT_EQ(atomic_load(&g_cf_rc0), -ENOENT);
  ASSERT_EQ(atomic_load(&g_cf_rc1), -ENOENT);
  rt_finish(g_r, fds);
}
