/*
** tests/stm/test_handlers.c — what commit and abort handlers may do: run
** transactions that privatize, call ame_quiesce(), wait in ame_retry() or
** turn irrevocable, on several threads at once, without waiting for each
** other.  Handlers run outside the transaction: a thread in a handler must
** not look, to another thread's quiescence, like a transaction still
** running, and must hold no irrevocability ticket.
**
** Each test would deadlock if that went wrong; a watchdog turns a deadlock
** into a failure that says which wait did not end.
*/
#include "stm-test.h"

/* ------------------------------------------------------------------------
** Two threads, each in a commit handler, each fencing (a privatizing
** transaction, or ame_quiesce) while the other is still in its handler.
*/

struct pair {
  atomic_int in_handler;     /* threads that reached their handler */
  atomic_int done;           /* threads whose handler returned */
  int use_quiesce;           /* fence with ame_quiesce, not privatization */
  uintptr_t words[2];        /* one per thread, written by the handlers */
};

struct pair_arg {
  struct pair *p;
  int id;
};

static void fence_handler(void *arg) {
  struct pair_arg *a = arg;
  struct pair *p = a->p;
  ame_tx_t *tx = ame_self();
  /* Both threads are in their handlers before either fences. */
  atomic_fetch_add(&p->in_handler, 1);
  ASSERT_WAIT(atomic_load(&p->in_handler) == 2, 10000);
  if (p->use_quiesce) {
    ame_quiesce(tx);
  } else {
    AME_ATOMIC(tx) {
      ame_tx_privatize(tx);
      ame_store_word_tx(tx, &p->words[a->id], 1);
    }
  }
  atomic_fetch_add(&p->done, 1);
}

static void *fence_main(void *arg) {
  struct pair_arg *a = arg;
  static uintptr_t touched[2];
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &touched[a->id], 1);
    ASSERT_EQ(ame_tx_on_commit(tx, fence_handler, a), 0);
  }
  ame_thread_exit();
  return NULL;
}

static void two_handlers_fence(int use_quiesce) {
  static struct pair p;
  memset(&p, 0, sizeof p);
  p.use_quiesce = use_quiesce;
  watchdog_start(20, use_quiesce ? "two handlers calling ame_quiesce"
                                 : "two handlers privatizing");
  struct pair_arg args[2] = {{&p, 0}, {&p, 1}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) thread_start(&t[i], fence_main, &args[i]);
  ASSERT_WAIT(atomic_load(&p.done) == 2, 10000);
  for (int i = 0; i < 2; i++) thread_join(t[i]);
  if (!use_quiesce) {
    ASSERT_EQ(p.words[0], 1);
    ASSERT_EQ(p.words[1], 1);
  }
  ame_stm_shutdown();
}

TEST_IMPL(handlers_privatize_two_threads) { two_handlers_fence(0); }
TEST_IMPL(handlers_quiesce_two_threads) { two_handlers_fence(1); }

/* ------------------------------------------------------------------------
** A commit handler that waits in ame_retry() for a word that another thread
** sets only after a privatizing transaction of its own has committed (and
** so after its quiescence has ended).
*/

static struct {
  uintptr_t flag;            /* set by the other thread: the wait ends */
  uintptr_t x, y;
  atomic_int in_handler;
  atomic_int privatized;     /* the other thread's privatizing commit */
  atomic_int handler_done;
  volatile int waits;        /* attempts of the handler's transaction */
} rh;

static void retry_handler(void *arg) {
  (void)arg;
  ame_tx_t *tx = ame_self();
  atomic_store(&rh.in_handler, 1);
  AME_ATOMIC(tx) {
    rh.waits++;
    if (ame_load_word_tx(tx, &rh.flag) == 0) ame_retry(tx);
  }
  atomic_store(&rh.handler_done, 1);
}

static void *retry_waiter_main(void *arg) {
  (void)arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &rh.x, 1);
    ASSERT_EQ(ame_tx_on_commit(tx, retry_handler, NULL), 0);
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(handlers_retry_in_handler) {
  watchdog_start(20, "a privatizing commit while another thread's commit "
                     "handler waits in ame_retry");
  ame_tx_t *tx = enter();
  pthread_t t;
  thread_start(&t, retry_waiter_main, NULL);
  ASSERT_WAIT(atomic_load(&rh.in_handler), 10000);
  AME_ATOMIC(tx) {
    ame_tx_privatize(tx);
    ame_store_word_tx(tx, &rh.y, 1);
  }
  atomic_store(&rh.privatized, 1);
  tx_set(tx, &rh.flag, 1);
  ASSERT_WAIT(atomic_load(&rh.handler_done), 10000);
  thread_join(t);
  ASSERT_GE(rh.waits, 2);  /* it did wait, then saw the flag */
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** ame_tx_irrevocable()'s killed path: A holds a lock and waits for the
** irrevocability token, which B holds; B then needs A's lock and asks A to
** abort.  A's abort handler runs a transaction that turns irrevocable: it
** must get the token in its turn, not wait behind A's own unserved ticket.
*/

static struct {
  uintptr_t x;               /* the word both write */
  uintptr_t y;               /* written by A's abort handler, irrevocably */
  atomic_int b_has_token;
  atomic_int a_locked;
  atomic_int b_done;
  atomic_int handler_runs;
  volatile int a_attempts;
  ame_stats_t a_before, a_after;
} ke;

static void escalating_abort_handler(void *arg) {
  (void)arg;
  ame_tx_t *tx = ame_self();
  atomic_fetch_add(&ke.handler_runs, 1);
  AME_ATOMIC(tx) {
    ame_tx_irrevocable(tx);
    ame_store_word_tx(tx, &ke.y, ame_load_word_tx(tx, &ke.y) + 1);
  }
}

static void *killer_main(void *arg) {
  (void)arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    ame_tx_irrevocable(tx);
    atomic_store(&ke.b_has_token, 1);
    ASSERT_WAIT(atomic_load(&ke.a_locked), 10000);
    /* A holds x's lock: as an irrevocable transaction we ask it to go. */
    ame_store_word_tx(tx, &ke.x, 100);
  }
  atomic_store(&ke.b_done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(handlers_abort_escalate_killed) {
  watchdog_start(20, "an abort handler turning irrevocable after "
                     "ame_tx_irrevocable was killed");
  ame_tx_t *tx = enter();
  ame_stats_thread(tx, &ke.a_before);
  pthread_t t;
  thread_start(&t, killer_main, NULL);
  ASSERT_WAIT(atomic_load(&ke.b_has_token), 10000);
  AME_ATOMIC(tx) {
    ke.a_attempts++;
    if (ke.a_attempts == 1)
      ASSERT_EQ(ame_tx_on_abort(tx, escalating_abort_handler, NULL), 0);
    ame_store_word_tx(tx, &ke.x, ame_load_word_tx(tx, &ke.x) + 1);
    atomic_store(&ke.a_locked, 1);
    ame_tx_irrevocable(tx);
  }
  ame_stats_thread(tx, &ke.a_after);
  ASSERT_WAIT(atomic_load(&ke.b_done), 10000);
  thread_join(t);
  ame_stats_t d;
  stats_delta(&d, &ke.a_after, &ke.a_before);
  ASSERT_GE(d.aborts_by_cause[AME_ABORT_KILLED], 1);
  ASSERT_EQ(atomic_load(&ke.handler_runs), 1);
  ASSERT_EQ(tx_get(tx, &ke.y), 1);
  ASSERT_EQ(tx_get(tx, &ke.x), 101);  /* B's 100, then A's increment */
  leave_and_shutdown();
}
