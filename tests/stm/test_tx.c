/*
** tests/stm/test_tx.c — the transaction itself: AME_ATOMIC (commit on
** fall-through, break and continue; flat nesting), ame_tx_depth,
** ame_tx_attempt, ame_tx_abort, ame_tx_run, ame_tx_set_site, and commit
** and abort handlers.
*/
#include "stm-test.h"

TEST_IMPL(atomic_commit_fallthrough) {
  ame_tx_t *tx = enter();
  static uintptr_t a, b;
  ASSERT_EQ(ame_tx_depth(tx), 0);
  AME_ATOMIC(tx) {
    ASSERT_EQ(ame_tx_depth(tx), 1);
    ame_store_word_tx(tx, &a, 1);
    ame_store_word_tx(tx, &b, ame_load_word_tx(tx, &a) + 1);
  }
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT_EQ(a, 1);
  ASSERT_EQ(b, 2);
  /* Many transactions in a row, each seeing the last one's result. */
  for (uintptr_t k = 0; k < 1000; k++)
    ASSERT_EQ(tx_add(tx, &a, 1), k + 2);
  /* A read-only transaction commits too. */
  volatile uintptr_t seen = 0;
  AME_ATOMIC(tx) { seen = ame_load_word_tx(tx, &a) + ame_load_word_tx(tx, &b); }
  ASSERT_EQ(seen, 1001 + 2);
  /* An empty one. */
  AME_ATOMIC(tx) {}
  ASSERT_EQ(ame_tx_depth(tx), 0);
  leave_and_shutdown();
}

TEST_IMPL(atomic_break_continue) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  volatile int after = 0;

  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &w, 1);
    if (ame_load_word_tx(tx, &w) == 1)
      break;
    ame_store_word_tx(tx, &w, 2);
    after = 1;
  }
  ASSERT_EQ(after, 0);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT_EQ(w, 1);

  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &w, 3);
    if (ame_load_word_tx(tx, &w) == 3)
      continue;
    ame_store_word_tx(tx, &w, 4);
    after = 1;
  }
  ASSERT_EQ(after, 0);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT_EQ(w, 3);

  /* break inside a user loop in the block leaves only that loop. */
  AME_ATOMIC(tx) {
    for (int i = 0; i < 10; i++) {
      if (i == 5)
        break;
      ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) + 1);
    }
    ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) * 10);
  }
  ASSERT_EQ(w, 80);

  /* The block in a loop of the caller's: break commits the transaction,
  ** not the caller's loop. */
  volatile int loops = 0;
  for (volatile int i = 0; i < 3; i++) {
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) + 1);
      break;
    }
    loops++;
  }
  ASSERT_EQ(loops, 3);
  ASSERT_EQ(w, 83);
  leave_and_shutdown();
}

TEST_IMPL(atomic_nesting_depth) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  AME_ATOMIC(tx) {
    ASSERT_EQ(ame_tx_depth(tx), 1);
    ame_store_word_tx(tx, &w, 1);
    AME_ATOMIC(tx) {
      ASSERT_EQ(ame_tx_depth(tx), 2);
      ASSERT_EQ(ame_load_word_tx(tx, &w), 1);  /* sees the outer's write */
      ame_store_word_tx(tx, &w, 2);
      AME_ATOMIC(tx) {
        ASSERT_EQ(ame_tx_depth(tx), 3);
        ame_store_word_tx(tx, &w, 3);
      }
      ASSERT_EQ(ame_tx_depth(tx), 2);
    }
    ASSERT_EQ(ame_tx_depth(tx), 1);
    ASSERT_EQ(ame_load_word_tx(tx, &w), 3);
    /* The inner blocks only joined: nothing is committed yet.  A later
    ** abort of the outer transaction would discard the inner writes. */
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, &w, 4);
      break;  /* leaves the inner block only */
    }
    ASSERT_EQ(ame_tx_depth(tx), 1);
    ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) + 1);
  }
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT_EQ(w, 5);
  leave_and_shutdown();
}

TEST_IMPL(atomic_nested_abort_restarts_outer) {
  ame_tx_t *tx = enter();
  static uintptr_t w, v;
  volatile int outer_runs = 0, inner_runs = 0, after_inner = 0;
  AME_ATOMIC(tx) {
    outer_runs++;
    ame_store_word_tx(tx, &w, (uintptr_t)outer_runs * 100);
    AME_ATOMIC(tx) {
      inner_runs++;
      ame_store_word_tx(tx, &v, (uintptr_t)inner_runs);
      if (outer_runs == 1)
        ame_tx_abort(tx);  /* restarts the outermost block */
    }
    after_inner++;
    ASSERT_EQ(ame_tx_depth(tx), 1);
  }
  ASSERT_EQ(outer_runs, 2);
  ASSERT_EQ(inner_runs, 2);
  ASSERT_EQ(after_inner, 1);
  ASSERT_EQ(w, 200);
  ASSERT_EQ(v, 2);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  leave_and_shutdown();
}

TEST_IMPL(tx_attempt_counts) {
  ame_tx_t *tx = enter();
  volatile unsigned runs = 0;
  AME_ATOMIC(tx) {
    ASSERT_EQ(ame_tx_attempt(tx), runs);
    runs++;
    AME_ATOMIC(tx) {
      ASSERT_EQ(ame_tx_attempt(tx), runs - 1);  /* the outer's count */
    }
    if (runs < 4)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(runs, 4);
  /* A fresh transaction starts again at 0. */
  volatile int fresh = -1;
  AME_ATOMIC(tx) { fresh = (int)ame_tx_attempt(tx); }
  ASSERT_EQ(fresh, 0);
  leave_and_shutdown();
}

/* ame_tx_save: private data changed with plain stores is put back when the
** attempt aborts (newest save first), and kept when it commits. */
TEST_IMPL(tx_save_restores) {
  ame_tx_t *tx = enter();
  struct priv {
    int count;
    char buf[16];
  };
  static struct priv p = {1, "start"};
  static uintptr_t shared;
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    /* Every attempt sees the state as it was before the transaction. */
    ASSERT_EQ(p.count, 1);
    ASSERT_STR_EQ(p.buf, "start");
    ASSERT_EQ(ame_tx_save(tx, &p, sizeof p), 0);
    p.count++;
    strcpy(p.buf, "middle");
    /* A second save of part of it: restored first, then the whole. */
    ASSERT_EQ(ame_tx_save(tx, &p.count, sizeof p.count), 0);
    p.count += 10;
    ame_store_word_tx(tx, &shared, ame_load_word_tx(tx, &shared) + 1);
    if (attempts < 3)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 3);
  ASSERT_EQ(p.count, 12);
  ASSERT_STR_EQ(p.buf, "middle");
  ASSERT_EQ(shared, 1);

  /* A commit forgets the log: a later transaction's abort does not bring
  ** back what the committed one saved. */
  attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ASSERT_EQ(p.count, 12);
    ASSERT_EQ(ame_tx_save(tx, &p, 0), 0);  /* size 0: nothing to do */
    if (attempts == 1)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(p.count, 12);
  leave_and_shutdown();
}

TEST_IMPL(tx_abort_discards) {
  ame_tx_t *tx = enter();
  static uintptr_t a = 10, b = 20;
  static uint32_t h[2] = {1, 2};
  static double d = 1.5;
  volatile int attempts = 0;
  volatile uintptr_t seen_a = 0;
  AME_ATOMIC(tx) {
    attempts++;
    /* Every attempt starts from the committed state. */
    ASSERT_EQ(ame_load_word_tx(tx, &a), 10);
    ASSERT_EQ(ame_load_word_tx(tx, &b), 20);
    ASSERT_EQ(ame_load_u32_tx(tx, &h[0]), 1);
    ASSERT_DOUBLE_EQ(ame_load_double_tx(tx, &d), 1.5);
    if (attempts == 1) {
      ame_store_word_tx(tx, &a, 11);
      ame_store_word_tx(tx, &b, 21);
      ame_store_u32_tx(tx, &h[0], 111);
      ame_store_double_tx(tx, &d, -1.0);
      ame_tx_abort(tx);
    }
    seen_a = ame_load_word_tx(tx, &a);
    ame_store_word_tx(tx, &b, 22);
  }
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(seen_a, 10);
  ASSERT_EQ(a, 10);
  ASSERT_EQ(b, 22);
  ASSERT_EQ(h[0], 1);
  ASSERT_EQ(h[1], 2);
  ASSERT_DOUBLE_EQ(d, 1.5);

  /* Several aborts in a row, each discarding its own writes. */
  attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ASSERT_EQ(ame_load_word_tx(tx, &b), 22);
    ame_store_word_tx(tx, &b, 1000 + (uintptr_t)attempts);
    if (attempts < 10)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 10);
  ASSERT_EQ(b, 1010);
  leave_and_shutdown();
}

static uintptr_t run_word;

static int run_add(ame_tx_t *tx, void *arg) {
  uintptr_t d = (uintptr_t)arg;
  ASSERT_GE(ame_tx_depth(tx), 1);
  uintptr_t v = ame_load_word_tx(tx, &run_word) + d;
  ame_store_word_tx(tx, &run_word, v);
  return (int)v;
}

static int run_abort_once(ame_tx_t *tx, void *arg) {
  int *calls = arg;  /* not rolled back: counts every attempt */
  (*calls)++;
  ame_store_word_tx(tx, &run_word, 1000 + (uintptr_t)*calls);
  if (ame_tx_attempt(tx) == 0)
    ame_tx_abort(tx);
  return 42 + (int)ame_tx_attempt(tx);
}

TEST_IMPL(tx_run_returns) {
  ame_tx_t *tx = enter();
  ASSERT_EQ(ame_tx_run(tx, run_add, (void *)(uintptr_t)5), 5);
  ASSERT_EQ(ame_tx_run(tx, run_add, (void *)(uintptr_t)7), 12);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT_EQ(run_word, 12);
  /* What the committed run returned, not an aborted one. */
  int calls = 0;
  ASSERT_EQ(ame_tx_run(tx, run_abort_once, &calls), 43);
  ASSERT_EQ(calls, 2);
  ASSERT_EQ(run_word, 1002);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  leave_and_shutdown();
}

static int run_nested_inner(ame_tx_t *tx, void *arg) {
  (void)arg;
  ASSERT_EQ(ame_tx_depth(tx), 2);
  ame_store_word_tx(tx, &run_word, ame_load_word_tx(tx, &run_word) + 1);
  return 7;
}

static int run_nested_outer(ame_tx_t *tx, void *arg) {
  int *attempts = arg;
  (*attempts)++;
  ASSERT_EQ(ame_tx_depth(tx), 1);
  int r = ame_tx_run(tx, run_nested_inner, NULL);
  ASSERT_EQ(r, 7);
  ASSERT_EQ(ame_tx_depth(tx), 1);
  if (*attempts == 1)
    ame_tx_abort(tx);  /* discards the inner run's write too */
  return r * 2;
}

TEST_IMPL(tx_run_nests) {
  ame_tx_t *tx = enter();
  run_word = 0;
  int attempts = 0;
  ASSERT_EQ(ame_tx_run(tx, run_nested_outer, &attempts), 14);
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(run_word, 1);

  /* ame_tx_run inside AME_ATOMIC joins it; an abort in it restarts the
  ** block. */
  volatile int block_runs = 0;
  volatile int got = 0;
  AME_ATOMIC(tx) {
    block_runs++;
    got = ame_tx_run(tx, run_add, (void *)(uintptr_t)10);
    ASSERT_EQ(ame_tx_depth(tx), 1);
    if (block_runs == 1)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(block_runs, 2);
  ASSERT_EQ(got, 11);
  ASSERT_EQ(run_word, 11);
  leave_and_shutdown();
}

TEST_IMPL(tx_set_site) {
  /* The site shows in conflict reports (see test_stats.c); here: it can
  ** be set at any depth, any number of times, and does not disturb the
  ** transaction. */
  ame_tx_t *tx = enter();
  static uintptr_t w;
  AME_ATOMIC(tx) {
    ame_tx_set_site(tx, "tx_set_site:outer");
    ame_store_word_tx(tx, &w, 1);
    AME_ATOMIC(tx) { ame_tx_set_site(tx, "tx_set_site:inner"); }
    ame_tx_set_site(tx, "tx_set_site:again");
  }
  ASSERT_EQ(w, 1);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Handlers.  Each appends a code to a log; the log is plain memory of this
** thread (handlers run outside the transaction, on the committing thread).
*/

struct hlog {
  int codes[64];
  int n;
  ame_tx_t *tx;   /* the thread's descriptor, to check the depth */
};

static struct hlog hl;

static void hlog_add(int code) {
  ASSERT_LT(hl.n, 64);
  hl.codes[hl.n++] = code;
}

static void handler(void *arg) {
  ASSERT_EQ(ame_tx_depth(hl.tx), 0);  /* outside the transaction */
  hlog_add((int)(intptr_t)arg);
}

static void expect_log(const int *codes, int n) {
  if (hl.n != n) {
    fprintf(stderr, "log:");
    for (int i = 0; i < hl.n; i++)
      fprintf(stderr, " %d", hl.codes[i]);
    fprintf(stderr, "\n");
  }
  ASSERT_EQ(hl.n, n);
  for (int i = 0; i < n; i++)
    ASSERT_EQ(hl.codes[i], codes[i]);
}

#define H(code) ((void *)(intptr_t)(code))

TEST_IMPL(handlers_commit_order) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  hl.tx = tx;
  hl.n = 0;
  AME_ATOMIC(tx) {
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(1)), 0);
    ame_store_word_tx(tx, &w, 1);
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(2)), 0);
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(3)), 0);
    ASSERT_EQ(ame_tx_on_abort(tx, handler, H(-1)), 0);  /* never runs */
    hlog_add(0);  /* the body runs before any handler */
  }
  static const int e1[] = {0, 1, 2, 3};
  expect_log(e1, 4);

  /* Exactly once: a later transaction runs none of them again. */
  AME_ATOMIC(tx) { ame_store_word_tx(tx, &w, 2); }
  expect_log(e1, 4);

  /* Read-only transactions run their handlers too; many handlers. */
  hl.n = 0;
  AME_ATOMIC(tx) {
    (void)ame_load_word_tx(tx, &w);
    for (int i = 0; i < 50; i++)
      ASSERT_EQ(ame_tx_on_commit(tx, handler, H(100 + i)), 0);
  }
  ASSERT_EQ(hl.n, 50);
  for (int i = 0; i < 50; i++)
    ASSERT_EQ(hl.codes[i], 100 + i);
  leave_and_shutdown();
}

TEST_IMPL(handlers_abort_order) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  hl.tx = tx;
  hl.n = 0;
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    hlog_add(attempts * 10);  /* marks each attempt's start */
    ame_store_word_tx(tx, &w, (uintptr_t)attempts);
    if (attempts == 1) {
      ASSERT_EQ(ame_tx_on_abort(tx, handler, H(11)), 0);
      ASSERT_EQ(ame_tx_on_commit(tx, handler, H(-1)), 0); /* discarded */
      ASSERT_EQ(ame_tx_on_abort(tx, handler, H(12)), 0);
      ame_tx_abort(tx);
    }
    if (attempts == 2) {
      ASSERT_EQ(ame_tx_on_abort(tx, handler, H(21)), 0);
      ame_tx_abort(tx);
    }
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(31)), 0);
    ASSERT_EQ(ame_tx_on_abort(tx, handler, H(-2)), 0);  /* discarded */
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(32)), 0);
  }
  static const int e[] = {10, 11, 12, 20, 21, 30, 31, 32};
  expect_log(e, 8);
  ASSERT_EQ(w, 3);
  leave_and_shutdown();
}

TEST_IMPL(handlers_nested) {
  /* Handlers registered in a nested block belong to the outermost
  ** transaction: they run after it commits, not when the inner block
  ** ends, and they are discarded with the outer attempt. */
  ame_tx_t *tx = enter();
  hl.tx = tx;
  hl.n = 0;
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(1)), 0);
    AME_ATOMIC(tx) {
      ASSERT_EQ(ame_tx_on_commit(tx, handler, H(2)), 0);
      ASSERT_EQ(ame_tx_on_abort(tx, handler, H(attempts == 1 ? 5 : -1)), 0);
    }
    ASSERT_EQ(hl.n, attempts == 1 ? 0 : 1);  /* nothing ran at inner end */
    if (attempts == 1)
      ame_tx_abort(tx);
    ASSERT_EQ(ame_tx_on_commit(tx, handler, H(3)), 0);
  }
  static const int e[] = {5, 1, 2, 3};
  expect_log(e, 4);
  leave_and_shutdown();
}

/* A commit handler may run transactions of its own (it runs outside the
** transaction that registered it). */
static uintptr_t handler_word;

static void handler_tx(void *arg) {
  ame_tx_t *tx = arg;
  ASSERT_EQ(ame_tx_depth(tx), 0);
  /* It sees the committed state of the transaction that registered it. */
  AME_ATOMIC(tx) {
    uintptr_t v = ame_load_word_tx(tx, &handler_word);
    ASSERT_EQ(v % 2, 1);
    ame_store_word_tx(tx, &handler_word, v + 1);
  }
  hlog_add((int)handler_word);
}

TEST_IMPL(handlers_run_transactions) {
  ame_tx_t *tx = enter();
  hl.tx = tx;
  hl.n = 0;
  for (int i = 0; i < 3; i++) {
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, &handler_word,
                        ame_load_word_tx(tx, &handler_word) + 1);
      ASSERT_EQ(ame_tx_on_commit(tx, handler_tx, tx), 0);
    }
  }
  static const int e[] = {2, 4, 6};
  expect_log(e, 3);
  ASSERT_EQ(handler_word, 6);
  leave_and_shutdown();
}

/* An abort handler may run transactions too: they commit on their own (and
** leave no lock behind), even though the aborted transaction restarts right
** after. */
static uintptr_t abort_handler_word;

static void abort_handler_tx(void *arg) {
  ame_tx_t *tx = arg;
  ASSERT_EQ(ame_tx_depth(tx), 0);
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &abort_handler_word,
                      ame_load_word_tx(tx, &abort_handler_word) + 1);
  }
  ASSERT_EQ(ame_tx_depth(tx), 0);
}

static void *bump_abort_handler_word(void *arg) {
  atomic_int *done = arg;
  ame_tx_t *tx = enter();
  tx_add(tx, &abort_handler_word, 10);
  atomic_store(done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(handlers_abort_run_transactions) {
  ame_tx_t *tx = enter();
  static uintptr_t other;
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ame_store_word_tx(tx, &other, (uintptr_t)attempts);
    if (attempts == 1) {
      ASSERT_EQ(ame_tx_on_abort(tx, abort_handler_tx, tx), 0);
      ame_tx_abort(tx);
    }
  }
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(other, 2);
  ASSERT_EQ(tx_get(tx, &abort_handler_word), 1);  /* the handler's commit */
  /* Nothing stays locked: another thread can write the word. */
  static atomic_int done;
  pthread_t t;
  thread_start(&t, bump_abort_handler_word, &done);
  ASSERT_WAIT(atomic_load(&done), 5000);
  thread_join(t);
  ASSERT_EQ(tx_get(tx, &abort_handler_word), 11);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** The explicit API (ame_tx_begin ... ame_tx_cancel, for bindings): a
** transaction that the contention manager made irrevocable is cancelled
** like any other (rolled back, its ticket handed on).  The conflicts are
** forced as in retry_after_escalation: a helper commits a change to w
** between the victim's read of it and its read of w2.
*/
struct esc_cancel {
  _Alignas(64) uintptr_t w;
  _Alignas(64) uintptr_t w2;
  _Alignas(64) uintptr_t out;    /* the victim writes it; cancelled */
  atomic_int req, ack, stop, irr_req, irr_done;
};

static void *esc_cancel_bumper(void *arg) {
  struct esc_cancel *e = arg;
  ame_tx_t *tx = enter();
  while (!atomic_load(&e->stop)) {
    if (atomic_load(&e->irr_req) && !atomic_load(&e->irr_done)) {
      AME_ATOMIC(tx) { ame_tx_irrevocable(tx); }
      atomic_store(&e->irr_done, 1);
    }
    int r = atomic_load(&e->req);
    if (r != atomic_load(&e->ack)) {
      AME_ATOMIC(tx) {
        ame_store_word_tx(tx, &e->w, ame_load_word_tx(tx, &e->w) + 1);
        ame_store_word_tx(tx, &e->w2, ame_load_word_tx(tx, &e->w2) + 1);
      }
      atomic_store(&e->ack, r);
    } else {
      sched_yield();
    }
  }
  ame_thread_exit();
  return NULL;
}

/* The victim's body: write out, read w, and until the contention manager
** makes the attempt irrevocable, have the bumper change w and abort on
** the read of w2. */
static void esc_conflict(ame_tx_t *tx, struct esc_cancel *e) {
  ame_store_word_tx(tx, &e->out, 7);
  (void)ame_load_word_tx(tx, &e->w);
  if (!ame_tx_is_irrevocable(tx)) {
    int r = atomic_fetch_add(&e->req, 1) + 1;
    ASSERT_WAIT(atomic_load(&e->ack) == r, 5000);
    (void)ame_load_word_tx(tx, &e->w2); /* aborts: w changed */
    AME_TEST_FAIL_("the read of w2 did not abort");
  }
}

TEST_IMPL(tx_cancel_escalated) {
  ame_stm_config_t cfg = {.escalate_after = 2};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  ame_tx_t *tx = enter();
  static struct esc_cancel e;
  pthread_t tb;
  thread_start(&tb, esc_cancel_bumper, &e);
  static jmp_buf env;
  static volatile int attempts;
  attempts = 0;
  setjmp(env);
  ASSERT_LT(attempts, 10);
  attempts++;
  ame_tx_begin(tx, &env, "tx_cancel_escalated");
  esc_conflict(tx, &e);
  ASSERT_EQ(attempts, 3);  /* two conflicts, then irrevocable */
  ame_tx_cancel(tx);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT(!ame_tx_is_irrevocable(tx));
  ASSERT_EQ(e.out, 0);  /* rolled back */
  /* The ticket was handed on: another thread can become irrevocable (it
  ** would wait forever otherwise), and so can this one; the next
  ** transaction here starts revocable. */
  atomic_store(&e.irr_req, 1);
  ASSERT_WAIT(atomic_load(&e.irr_done), 5000);
  atomic_store(&e.stop, 1);
  thread_join(tb);
  volatile int irr = 1;
  AME_ATOMIC(tx) {
    irr = ame_tx_is_irrevocable(tx);
    ASSERT_EQ(ame_tx_irrevocable(tx), 0);
    ame_store_word_tx(tx, &e.out, 8);
  }
  ASSERT_EQ(irr, 0);
  ASSERT_EQ(e.out, 8);
  leave_and_shutdown();
}

/* ame_tx_abort in a transaction that the contention manager made
** irrevocable (the program did not ask: nothing told it not to abort).
** The attempt is rolled back, its abort handler runs without the ticket
** (a transaction there may turn irrevocable itself), and the transaction
** runs again, irrevocable from its start as before the abort. */
static ame_tx_t *esc_abort_tx;
static volatile int esc_abort_handler_irr = -1;

static void esc_abort_handler(void *arg) {
  uintptr_t *w = arg;
  volatile int irr = -1;
  AME_ATOMIC(esc_abort_tx) {
    ame_tx_irrevocable(esc_abort_tx);
    irr = ame_tx_is_irrevocable(esc_abort_tx);
    ame_store_word_tx(esc_abort_tx, w, 5);
  }
  esc_abort_handler_irr = irr;
}

TEST_IMPL(tx_abort_escalated) {
  ame_stm_config_t cfg = {.escalate_after = 2};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  ame_tx_t *tx = enter();
  esc_abort_tx = tx;
  static struct esc_cancel e;
  static _Alignas(64) uintptr_t h;
  pthread_t tb;
  thread_start(&tb, esc_cancel_bumper, &e);
  static volatile int attempts, aborted;
  volatile int irr_at_end = 0;
  AME_ATOMIC(tx) {
    ASSERT_LT(attempts, 10);
    attempts++;
    esc_conflict(tx, &e);
    if (!aborted) {
      aborted = 1;
      ASSERT_EQ(ame_tx_on_abort(tx, esc_abort_handler, &h), 0);
      ame_tx_abort(tx);
    }
    irr_at_end = ame_tx_is_irrevocable(tx);
  }
  ASSERT_EQ(attempts, 4); /* two conflicts, irrevocable, aborted, again */
  ASSERT_EQ(irr_at_end, 1);
  ASSERT_EQ(esc_abort_handler_irr, 1);
  ASSERT_EQ(h, 5);
  ASSERT_EQ(e.out, 7);
  /* The ticket was handed on: another thread can become irrevocable. */
  atomic_store(&e.irr_req, 1);
  ASSERT_WAIT(atomic_load(&e.irr_done), 5000);
  atomic_store(&e.stop, 1);
  thread_join(tb);
  leave_and_shutdown();
}

/* ame_tx_last_cause() after an abort whose handler ran a transaction that
** aborted too: the cause (and word) are the transaction's own, which a
** binding reads after the abort to decide (AME_ABORT_CAPACITY: give up)
** and to count the conflict against what it touched. */
static _Alignas(64) uintptr_t cause_w;

static void *cause_bump(void *arg) {
  (void)arg;
  ame_tx_t *tx = enter();
  tx_add(tx, &cause_w, 1);
  ame_thread_exit();
  return NULL;
}

static void cause_handler(void *arg) {
  ame_tx_t *tx = arg;
  volatile int tries = 0;
  AME_ATOMIC(tx) {
    if (tries++ == 0) ame_tx_abort(tx); /* its own, explicit abort */
  }
}

TEST_IMPL(handlers_keep_last_cause) {
  ame_tx_t *tx = enter();
  static jmp_buf env;
  static volatile int attempts;
  attempts = 0;
  if (setjmp(env) != 0) {
    uintptr_t a = 1;
    ASSERT_EQ(ame_tx_last_cause(tx, &a), AME_ABORT_VALIDATE);
    ASSERT_EQ(a, (uintptr_t)&cause_w);
  }
  attempts++;
  ASSERT_LE(attempts, 2);
  ame_tx_begin(tx, &env, "handlers_keep_last_cause");
  (void)ame_load_word_tx(tx, &cause_w);
  if (attempts == 1) {
    ASSERT_EQ(ame_tx_on_abort(tx, cause_handler, tx), 0);
    pthread_t t;
    thread_start(&t, cause_bump, NULL);
    thread_join(t);
    ame_tx_validate(tx); /* aborts: cause_w changed */
    AME_TEST_FAIL_("validation did not abort");
  }
  ame_tx_commit(tx);
  ASSERT_EQ(attempts, 2);
  leave_and_shutdown();
}
