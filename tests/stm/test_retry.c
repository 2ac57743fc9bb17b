/*
** tests/stm/test_retry.c — ame_retry: a transaction that waits for a
** change blocks (does not spin) and wakes when another thread commits one;
** bounded queues built on it move every item exactly once, in order.
*/
#include "stm-test.h"

#include <sys/resource.h>

uint64_t ame__retry_sleeps(void);

/* CPU time (user + system) this process has used, in milliseconds. */
static uint64_t cpu_ms(void) {
  struct rusage ru;
  ASSERT_EQ(getrusage(RUSAGE_SELF, &ru), 0);
  return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
         (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

struct waiter {
  uintptr_t flag;           /* what the consumer waits on */
  _Alignas(64) uintptr_t unrelated; /* written by the test, not read by
                                       it (in another orec granule) */
  atomic_int tries;         /* the consumer's attempts */
  atomic_int done;
  uintptr_t got;            /* the value it finally read */
  unsigned attempt_at_end;  /* ame_tx_attempt() in the committed run */
  ame_stats_t stats;        /* its statistics at the end */
  int read_nothing;         /* variant: retry without reading anything */
};

static void *waiter_main(void *arg) {
  struct waiter *w = arg;
  ame_tx_t *tx = enter();
  volatile uintptr_t v = 0;
  volatile unsigned att = 0;
  AME_ATOMIC(tx) {
    int tries = atomic_fetch_add(&w->tries, 1) + 1;
    if (w->read_nothing) {
      if (tries == 1)
        ame_retry(tx);
      v = 1;
    } else {
      v = ame_load_word_tx(tx, &w->flag);
      if (v == 0)
        ame_retry(tx);
    }
    att = ame_tx_attempt(tx);
  }
  w->got = v;
  w->attempt_at_end = att;
  ame_stats_thread(tx, &w->stats);
  atomic_store(&w->done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(retry_blocks_until_change) {
  ame_tx_t *tx = enter();
  static struct waiter w;
  pthread_t t;
  thread_start(&t, waiter_main, &w);
  ASSERT_WAIT(atomic_load(&w.tries) >= 1, 5000);

  /* Blocked: a retry that re-ran the block would make thousands of
  ** attempts here, and one that spun waiting would burn a core. */
  uint64_t cpu0 = cpu_ms(), t0 = now_ms();
  sleep_ms(300);
  uint64_t cpu = cpu_ms() - cpu0, wall = now_ms() - t0;
  ASSERT_EQ(atomic_load(&w.done), 0);
  ASSERT_LE(atomic_load(&w.tries), 3);
  ASSERT_LT(cpu * 3, wall);  /* under a third of one core */

  /* Commits that do not touch what it read may wake it, but it must block
  ** again. */
  for (int i = 0; i < 5; i++) {
    tx_add(tx, &w.unrelated, 1);
    sleep_ms(20);
  }
  sleep_ms(100);
  ASSERT_EQ(atomic_load(&w.done), 0);
  ASSERT_LE(atomic_load(&w.tries), 3 + 5);

  /* The change it waits for wakes it. */
  tx_set(tx, &w.flag, 7);
  ASSERT_WAIT(atomic_load(&w.done), 5000);
  thread_join(t);
  ASSERT_EQ(w.got, 7);
  ASSERT_GE(w.attempt_at_end, 1);
  ASSERT_GE(w.stats.retries, 1);
  ASSERT_GE(w.stats.aborts_by_cause[AME_ABORT_RETRY], 1);
  ASSERT_EQ(w.stats.commits, 1);
  leave_and_shutdown();
}

/* A long wait sleeps on: the futex timeout behind the wake-ups (a
** backstop) grows while nothing changes, so that a waiter blocked for
** half a second wakes a dozen times, not once a millisecond. */
TEST_IMPL(retry_long_wait_sleeps) {
  ame_tx_t *tx = enter();
  static struct waiter w;
  pthread_t t;
  thread_start(&t, waiter_main, &w);
  ASSERT_WAIT(atomic_load(&w.tries) >= 1, 5000);
  uint64_t sleeps0 = ame__retry_sleeps();
  sleep_ms(500);
  uint64_t sleeps = ame__retry_sleeps() - sleeps0;
  ASSERT_EQ(atomic_load(&w.done), 0);
  ASSERT_LE(sleeps, 40);
  tx_set(tx, &w.flag, 3); /* and the change still wakes it */
  ASSERT_WAIT(atomic_load(&w.done), 5000);
  thread_join(t);
  ASSERT_EQ(w.got, 3);
  leave_and_shutdown();
}

TEST_IMPL(retry_read_nothing) {
  ame_tx_t *tx = enter();
  static struct waiter w = {.read_nothing = 1};
  static uintptr_t any;
  pthread_t t;
  thread_start(&t, waiter_main, &w);
  ASSERT_WAIT(atomic_load(&w.tries) >= 1, 5000);
  sleep_ms(200);
  ASSERT_EQ(atomic_load(&w.done), 0);  /* nothing committed yet */
  ASSERT_EQ(atomic_load(&w.tries), 1);
  tx_add(tx, &any, 1);                 /* any commit wakes it */
  ASSERT_WAIT(atomic_load(&w.done), 5000);
  thread_join(t);
  ASSERT_EQ(w.got, 1);
  ASSERT_EQ(atomic_load(&w.tries), 2);
  ASSERT_EQ(w.stats.retries, 1);
  /* A retry is an abort: the run after it is not the first attempt. */
  ASSERT_EQ(w.attempt_at_end, 1);
  leave_and_shutdown();
}

/* A word read under an orec the transaction holds (it wrote another word
** of the same granule first) is read from memory and its buffer, not
** logged as a read: the retry must still wake when it changes. */
struct own_lock {
  _Alignas(64) uintptr_t mine;  /* written by the waiter ... */
  uintptr_t flag;               /* ... and this, in the same granule, read */
  _Alignas(64) uintptr_t other; /* read first, in a granule of its own */
  atomic_int tries;
  atomic_int done;
  uintptr_t got;
};

static void *own_lock_main(void *arg) {
  struct own_lock *w = arg;
  ame_tx_t *tx = enter();
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) {
    atomic_fetch_add(&w->tries, 1);
    (void)ame_load_word_tx(tx, &w->other);
    ame_store_word_tx(tx, &w->mine, 1);
    v = ame_load_word_tx(tx, &w->flag);
    if (v == 0)
      ame_retry(tx);
  }
  w->got = v;
  atomic_store(&w->done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(retry_read_under_own_lock) {
  ame_tx_t *tx = enter();
  static struct own_lock w;
  pthread_t t;
  thread_start(&t, own_lock_main, &w);
  ASSERT_WAIT(atomic_load(&w.tries) >= 1, 5000);
  sleep_ms(100);
  ASSERT_EQ(atomic_load(&w.done), 0);
  tx_set(tx, &w.flag, 7);
  ASSERT_WAIT(atomic_load(&w.done), 5000);
  thread_join(t);
  ASSERT_EQ(w.got, 7);
  ASSERT_EQ(w.mine, 1);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** A bounded FIFO queue in transactional memory; producers retry while it is
** full, consumers while it is empty (no condition variables anywhere).
*/
enum { QCAP = 4 };

struct queue {
  uintptr_t head;           /* next slot to take */
  uintptr_t tail;           /* next slot to fill */
  uintptr_t slot[QCAP];
  uintptr_t consumed;       /* items taken, all consumers */
  uintptr_t total;          /* items that will be produced, all producers */
};

static void q_put(ame_tx_t *tx, struct queue *q, uintptr_t item) {
  AME_ATOMIC(tx) {
    uintptr_t h = ame_load_word_tx(tx, &q->head);
    uintptr_t t = ame_load_word_tx(tx, &q->tail);
    ASSERT_LE(t - h, QCAP);
    if (t - h == QCAP)
      ame_retry(tx);
    ame_store_word_tx(tx, &q->slot[t % QCAP], item);
    ame_store_word_tx(tx, &q->tail, t + 1);
  }
}

/* Take an item into *item; return 0 once everything has been consumed. */
static int q_take(ame_tx_t *tx, struct queue *q, uintptr_t *item) {
  volatile int got = 0;
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) {
    got = 0;
    uintptr_t h = ame_load_word_tx(tx, &q->head);
    uintptr_t t = ame_load_word_tx(tx, &q->tail);
    ASSERT_LE(h, t);
    if (h == t) {
      if (ame_load_word_tx(tx, &q->consumed) == ame_load_word_tx(tx, &q->total))
        break;  /* all done: commit and leave */
      ame_retry(tx);
    }
    v = ame_load_word_tx(tx, &q->slot[h % QCAP]);
    ame_store_word_tx(tx, &q->head, h + 1);
    ame_store_word_tx(tx, &q->consumed, ame_load_word_tx(tx, &q->consumed) + 1);
    got = 1;
  }
  *item = v;
  return got;
}

#define MAXP 2
#define ITEM(p, seq) (((uintptr_t)(p) << 40) | (uintptr_t)(seq))
#define ITEM_P(it) ((unsigned)((it) >> 40))
#define ITEM_SEQ(it) ((it) & ((1ULL << 40) - 1))

struct qrun {
  struct queue q;
  unsigned nprod, ncons;
  uintptr_t n_per_producer;
  atomic_uchar *seen[MAXP];  /* seen[p][seq]: times item (p, seq) arrived */
  atomic_ulong received;
};

struct qworker {
  struct qrun *r;
  unsigned id;
};

static void *producer_main(void *arg) {
  struct qworker *w = arg;
  ame_tx_t *tx = enter();
  for (uintptr_t s = 0; s < w->r->n_per_producer; s++)
    q_put(tx, &w->r->q, ITEM(w->id, s));
  ame_thread_exit();
  return NULL;
}

static void *consumer_main(void *arg) {
  struct qworker *w = arg;
  struct qrun *r = w->r;
  ame_tx_t *tx = enter();
  uintptr_t last[MAXP];  /* the last seq this consumer got from each */
  int any[MAXP] = {0};
  uintptr_t item;
  unsigned long mine = 0;
  while (q_take(tx, &r->q, &item)) {
    unsigned p = ITEM_P(item);
    uintptr_t s = ITEM_SEQ(item);
    ASSERT_LT(p, r->nprod);
    ASSERT_LT(s, r->n_per_producer);
    if (r->ncons == 1)
      ASSERT_EQ(s, any[p] ? last[p] + 1 : 0);  /* exactly in order */
    else if (any[p])
      ASSERT_GT(s, last[p]);                   /* FIFO per producer */
    last[p] = s;
    any[p] = 1;
    ASSERT_EQ(atomic_fetch_add(&r->seen[p][s], 1), 0);  /* exactly once */
    mine++;
  }
  atomic_fetch_add(&r->received, mine);
  ame_thread_exit();
  return NULL;
}

static void run_queue(unsigned nprod, unsigned ncons) {
  enter();
  static struct qrun r;
  r.nprod = nprod;
  r.ncons = ncons;
  r.n_per_producer = stress_ms() * 10 / nprod;
  r.q.total = r.n_per_producer * nprod;
  for (unsigned p = 0; p < nprod; p++) {
    r.seen[p] = calloc(r.n_per_producer, sizeof(atomic_uchar));
    ASSERT_NOT_NULL(r.seen[p]);
  }
  struct qworker w[2 * MAXP];
  pthread_t th[2 * MAXP];
  unsigned n = 0;
  for (unsigned i = 0; i < ncons; i++, n++) {
    w[n] = (struct qworker){&r, i};
    thread_start(&th[n], consumer_main, &w[n]);
  }
  for (unsigned i = 0; i < nprod; i++, n++) {
    w[n] = (struct qworker){&r, i};
    thread_start(&th[n], producer_main, &w[n]);
  }
  for (unsigned i = 0; i < n; i++)
    thread_join(th[i]);
  ASSERT_EQ(atomic_load(&r.received), r.q.total);
  ASSERT_EQ(r.q.consumed, r.q.total);
  ASSERT_EQ(r.q.head, r.q.tail);
  ASSERT_EQ(r.q.tail, r.q.total);
  for (unsigned p = 0; p < nprod; p++) {
    for (uintptr_t s = 0; s < r.n_per_producer; s++)
      ASSERT_EQ(atomic_load(&r.seen[p][s]), 1);
    free(r.seen[p]);
  }
  leave_and_shutdown();
}

TEST_IMPL(retry_queue_1p1c) { run_queue(1, 1); }

TEST_IMPL(retry_queue_2p2c) { run_queue(2, 2); }

/* ------------------------------------------------------------------------
** ame_retry in a transaction that the contention manager made irrevocable
** (the program never asked for irrevocability): it must still wait and
** run again, not trip the "no retry when irrevocable" assertion.  The
** conflicts are forced as in progress_escalation: a helper commits a change
** to w and w2 between the victim's reads of them.
*/
struct esc_retry {
  uintptr_t flag;
  _Alignas(64) uintptr_t scratch;  /* each attempt adds 1; one commits */
  _Alignas(64) uintptr_t w;
  _Alignas(64) uintptr_t w2;
  atomic_int req, ack, stop, waiting;
};

static void *esc_bumper_main(void *arg) {
  struct esc_retry *e = arg;
  ame_tx_t *tx = enter();
  while (!atomic_load(&e->stop)) {
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

static void *esc_setter_main(void *arg) {
  struct esc_retry *e = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&e->waiting), 10000);
  sleep_ms(50);
  tx_set(tx, &e->flag, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(retry_after_escalation) {
  ame_stm_config_t cfg = {.escalate_after = 2};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  ame_tx_t *tx = enter();
  static struct esc_retry e;
  pthread_t tb, ts;
  thread_start(&tb, esc_bumper_main, &e);
  thread_start(&ts, esc_setter_main, &e);
  volatile uintptr_t got = 0;
  AME_ATOMIC(tx) {
    uintptr_t v = ame_load_word_tx(tx, &e.flag);
    ame_store_word_tx(tx, &e.scratch, ame_load_word_tx(tx, &e.scratch) + 1);
    (void)ame_load_word_tx(tx, &e.w);
    if (!ame_tx_is_irrevocable(tx) && v == 0) {
      int r = atomic_fetch_add(&e.req, 1) + 1;
      ASSERT_WAIT(atomic_load(&e.ack) == r, 5000);
      (void)ame_load_word_tx(tx, &e.w2);  /* aborts: w changed */
    }
    if (v == 0) {
      atomic_store(&e.waiting, 1);
      ame_retry(tx);
    }
    got = v;
  }
  ASSERT_EQ(got, 1);
  ASSERT_EQ(e.scratch, 1);  /* the aborted and retried attempts left none */
  atomic_store(&e.stop, 1);
  thread_join(tb);
  thread_join(ts);
  leave_and_shutdown();
}
