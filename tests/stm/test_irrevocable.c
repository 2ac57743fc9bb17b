/*
** tests/stm/test_irrevocable.c — ame_tx_irrevocable and
** ame_tx_is_irrevocable: an irrevocable transaction never aborts once the
** call has returned, commits while others hammer the same words, and only
** one runs at a time.
*/
#include "stm-test.h"

static int handler_ran;

static void mark_handler(void *arg) {
  (void)arg;
  handler_ran++;
}

TEST_IMPL(irrevocable_basic) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  volatile int after_call = 0;
  ASSERT(!ame_tx_is_irrevocable(tx));
  AME_ATOMIC(tx) {
    ASSERT(!ame_tx_is_irrevocable(tx));
    ame_store_word_tx(tx, &w, 1);
    ASSERT_EQ(ame_tx_irrevocable(tx), 0);
    after_call++;
    ASSERT(ame_tx_is_irrevocable(tx));
    ASSERT_EQ(ame_load_word_tx(tx, &w), 1);  /* its write survived */
    ame_store_word_tx(tx, &w, 2);
    ASSERT_EQ(ame_tx_irrevocable(tx), 0);    /* again: no effect */
    ASSERT(ame_tx_is_irrevocable(tx));
    ASSERT_EQ(ame_tx_on_commit(tx, mark_handler, NULL), 0);
  }
  ASSERT_EQ(after_call, 1);
  ASSERT_EQ(handler_ran, 1);
  ASSERT(!ame_tx_is_irrevocable(tx));
  ASSERT_EQ(w, 2);
  /* The next transaction is revocable again, and can abort. */
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    ASSERT(!ame_tx_is_irrevocable(tx));
    if (++attempts == 1)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 2);
  ame_stats_t st;
  ame_stats_thread(tx, &st);
  ASSERT_EQ(st.irrevocable, 1);
  ASSERT_EQ(st.escalations, 0);
  leave_and_shutdown();
}

TEST_IMPL(irrevocable_nested) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  volatile int attempts = 0, after = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ame_store_word_tx(tx, &w, 10);
    if (attempts == 1)
      ame_tx_abort(tx);  /* a revocable attempt first */
    AME_ATOMIC(tx) {
      ASSERT_EQ(ame_tx_irrevocable(tx), 0);
      ASSERT(ame_tx_is_irrevocable(tx));
      ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) + 1);
    }
    after++;
    ASSERT(ame_tx_is_irrevocable(tx));  /* the whole transaction is */
    ASSERT_EQ(ame_tx_depth(tx), 1);
  }
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(after, 1);
  ASSERT_EQ(w, 11);
  ASSERT(!ame_tx_is_irrevocable(tx));
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Irrevocable transactions against hammering writers.  The hammers add 1 to
** all of NW words per transaction (so the words stay equal); the main thread
** runs irrevocable transactions that add 1000 to all of them, after reading
** them all (and checking they are equal).
*/
enum { NW = 8 };

struct hammer_state {
  uintptr_t words[NW];
  atomic_int stop;
  atomic_ulong hammer_commits;
};

static void *hammer_main(void *arg) {
  struct hammer_state *s = arg;
  ame_tx_t *tx = enter();
  unsigned long commits = 0;
  while (!atomic_load(&s->stop)) {
    AME_ATOMIC(tx) {
      uintptr_t first = ame_load_word_tx(tx, &s->words[0]);
      for (int i = 0; i < NW; i++) {
        uintptr_t v = ame_load_word_tx(tx, &s->words[i]);
        ASSERT_EQ(v, first);
        ame_store_word_tx(tx, &s->words[i], v + 1);
      }
    }
    commits++;
  }
  atomic_fetch_add(&s->hammer_commits, commits);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(irrevocable_under_contention) {
  ame_tx_t *tx = enter();
  static struct hammer_state s;
  enum { NH = 3 };
  pthread_t th[NH];
  for (int i = 0; i < NH; i++)
    thread_start(&th[i], hammer_main, &s);

  uint64_t end = now_ms() + stress_ms();
  unsigned long irrevocable_txs = 0;
  while (now_ms() < end || irrevocable_txs < 20) {
    volatile int after_call = 0;
    AME_ATOMIC(tx) {
      uintptr_t first = ame_load_word_tx(tx, &s.words[0]);
      ASSERT_EQ(ame_tx_irrevocable(tx), 0);
      /* From here on the attempt must run to commit exactly once. */
      after_call++;
      ASSERT_EQ(after_call, 1);
      ASSERT(ame_tx_is_irrevocable(tx));
      unsigned att = ame_tx_attempt(tx);
      first = ame_load_word_tx(tx, &s.words[0]);
      for (int rep = 0; rep < 50; rep++) {  /* long enough to be hit */
        for (int i = 0; i < NW; i++)
          ASSERT_EQ(ame_load_word_tx(tx, &s.words[i]), first);
        sched_yield();
        ASSERT_EQ(ame_tx_attempt(tx), att);
      }
      for (int i = 0; i < NW; i++)
        ame_store_word_tx(tx, &s.words[i],
                          ame_load_word_tx(tx, &s.words[i]) + 1000);
      ASSERT_EQ(ame_tx_attempt(tx), att);
    }
    ASSERT_EQ(after_call, 1);
    irrevocable_txs++;
  }
  atomic_store(&s.stop, 1);
  for (int i = 0; i < NH; i++)
    thread_join(th[i]);

  uintptr_t expect = atomic_load(&s.hammer_commits) + irrevocable_txs * 1000;
  for (int i = 0; i < NW; i++)
    ASSERT_EQ(s.words[i], expect);
  ame_stats_t st;
  ame_stats_thread(tx, &st);
  ASSERT_GE(st.irrevocable, irrevocable_txs);
  ASSERT_EQ(st.commits, irrevocable_txs);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** At most one irrevocable transaction at a time: each thread counts itself
** in and out of a plain atomic counter while irrevocable.
*/
struct exclusive_state {
  struct gate gate;
  atomic_int inside;        /* threads inside an irrevocable section */
  atomic_int max_inside;
  atomic_ulong sections;    /* irrevocable sections run */
  uintptr_t shared;         /* incremented transactionally in each */
  uintptr_t other[16];      /* touched by revocable transactions */
};

static void *exclusive_main(void *arg) {
  struct exclusive_state *s = arg;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed((unsigned)(uintptr_t)pthread_self());
  gate_wait(&s->gate);
  unsigned long mine = 0;
  while (!atomic_load(&s->gate.stop)) {
    unsigned kind = (unsigned)rnd_below(&rs, 4);
    if (kind == 0) {
      /* A revocable transaction in between. */
      unsigned i = (unsigned)rnd_below(&rs, 16);
      AME_ATOMIC(tx) {
        ame_store_word_tx(tx, &s->other[i],
                          ame_load_word_tx(tx, &s->other[i]) + 1);
      }
      continue;
    }
    volatile int entered = 0;
    AME_ATOMIC(tx) {
      if (kind == 1)  /* read and write something before the switch */
        ame_store_word_tx(tx, &s->other[0],
                          ame_load_word_tx(tx, &s->other[0]) + 1);
      ame_tx_irrevocable(tx);
      ASSERT_EQ(entered, 0);
      entered = 1;
      int n = atomic_fetch_add(&s->inside, 1) + 1;
      ASSERT_EQ(n, 1);
      int m = atomic_load(&s->max_inside);
      if (n > m)
        atomic_store(&s->max_inside, n);
      ame_store_word_tx(tx, &s->shared, ame_load_word_tx(tx, &s->shared) + 1);
      if (kind == 3)
        sched_yield();  /* let the others try to get in */
      ASSERT_EQ(atomic_load(&s->inside), 1);
      atomic_fetch_sub(&s->inside, 1);
    }
    mine++;
  }
  atomic_fetch_add(&s->sections, mine);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(irrevocable_exclusive) {
  enter();
  static struct exclusive_state s;
  enum { NT = 4 };
  pthread_t th[NT];
  for (int i = 0; i < NT; i++)
    thread_start(&th[i], exclusive_main, &s);
  gate_open(&s.gate, NT);
  sleep_ms(stress_ms());
  atomic_store(&s.gate.stop, 1);
  for (int i = 0; i < NT; i++)
    thread_join(th[i]);
  ASSERT_EQ(atomic_load(&s.max_inside), 1);
  ASSERT_GT(atomic_load(&s.sections), 0);
  ASSERT_EQ(s.shared, atomic_load(&s.sections));
  ame_stats_t tot;
  ame_stats_total(&tot);
  ASSERT_GE(tot.irrevocable, atomic_load(&s.sections));
  leave_and_shutdown();
}
