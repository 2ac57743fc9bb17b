/*
** tests/stm/test_stress.c — randomised multi-threaded stress: a million
** counter increments, bank transfers with audits, and opacity (no
** transaction, not even one that will abort, sees an inconsistent state:
** equal pairs are seen equal, a ring being rearranged is always a ring).
** Durations come from $AME_STRESS_MS (task.h).
*/
#include "stm-test.h"

/* ------------------------------------------------------------------------
** Counter: 1,000,000 increments of one word over 4 threads, two with the
** _tx forms, two with the short forms on ame_self(); plus a second word
** incremented only every 16th time, so that transactions differ.
*/
enum { COUNTER_TOTAL = 1000000, COUNTER_THREADS = 4 };

struct counter_state {
  struct gate gate;
  uintptr_t count;
  _Alignas(64) uintptr_t sixteenth;
};

struct counter_worker {
  struct counter_state *s;
  unsigned id;
};

static void *counter_main(void *arg) {
  struct counter_worker *w = arg;
  struct counter_state *s = w->s;
  ame_tx_t *tx = enter();
  gate_wait(&s->gate);
  const unsigned n = COUNTER_TOTAL / COUNTER_THREADS;
  for (unsigned i = 0; i < n; i++) {
    if (w->id % 2 == 0) {
      AME_ATOMIC(tx) {
        ame_store_word_tx(tx, &s->count, ame_load_word_tx(tx, &s->count) + 1);
        if (i % 16 == 0)
          ame_store_word_tx(tx, &s->sixteenth,
                            ame_load_word_tx(tx, &s->sixteenth) + 1);
      }
    } else {
      AME_ATOMIC(tx) {
        ame_store_word(&s->count, ame_load_word(&s->count) + 1);
        if (i % 16 == 0)
          ame_store_word(&s->sixteenth, ame_load_word(&s->sixteenth) + 1);
      }
    }
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stress_counter) {
  enter();
  static struct counter_state s;
  struct counter_worker w[COUNTER_THREADS];
  pthread_t th[COUNTER_THREADS];
  for (unsigned i = 0; i < COUNTER_THREADS; i++) {
    w[i] = (struct counter_worker){&s, i};
    thread_start(&th[i], counter_main, &w[i]);
  }
  gate_open(&s.gate, COUNTER_THREADS);
  for (unsigned i = 0; i < COUNTER_THREADS; i++)
    thread_join(th[i]);
  ASSERT_EQ(s.count, COUNTER_TOTAL);
  ASSERT_EQ(s.sixteenth,
            COUNTER_THREADS * ((COUNTER_TOTAL / COUNTER_THREADS + 15) / 16));
  ame_stats_t tot;
  ame_stats_total(&tot);
  ASSERT_GE(tot.commits, COUNTER_TOTAL);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Bank: transfers that never overdraw, audits that must always see the
** opening total and no negative balance.
*/
enum { BANK_THREADS = 4, BANK_INIT = 1000 };

struct bank_state {
  struct gate gate;
  unsigned naccounts;
  int64_t *acc;
  atomic_ulong transfers, refused, audits;
};

static void *bank_main(void *arg) {
  struct bank_state *b = arg;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(31 + (unsigned)(uintptr_t)pthread_self());
  const int64_t total = (int64_t)b->naccounts * BANK_INIT;
  unsigned long transfers = 0, refused = 0, audits = 0;
  gate_wait(&b->gate);
  while (!atomic_load(&b->gate.stop)) {
    unsigned op = (unsigned)rnd_below(&rs, 10);
    if (op == 0) {
      /* Audit: a consistent snapshot, every time. */
      AME_ATOMIC(tx) {
        int64_t sum = 0;
        for (unsigned i = 0; i < b->naccounts; i++) {
          int64_t v = ame_load_i64_tx(tx, &b->acc[i]);
          ASSERT_GE(v, 0);
          sum += v;
        }
        ASSERT_EQ(sum, total);
      }
      audits++;
      continue;
    }
    unsigned from = (unsigned)rnd_below(&rs, b->naccounts);
    unsigned to = (unsigned)rnd_below(&rs, b->naccounts);
    int64_t amount = 1 + (int64_t)rnd_below(&rs, 2 * BANK_INIT);
    int yield = op == 1;
    volatile int done = 0;
    AME_ATOMIC(tx) {
      done = 0;
      int64_t f = ame_load_i64_tx(tx, &b->acc[from]);
      ASSERT_GE(f, 0);
      if (f >= amount && from != to) {
        ame_store_i64_tx(tx, &b->acc[from], f - amount);
        if (yield)
          sched_yield();  /* hold the lock a while */
        int64_t t = ame_load_i64_tx(tx, &b->acc[to]);
        ASSERT_GE(t, 0);
        ame_store_i64_tx(tx, &b->acc[to], t + amount);
        done = 1;
      }
    }
    if (done)
      transfers++;
    else
      refused++;
  }
  atomic_fetch_add(&b->transfers, transfers);
  atomic_fetch_add(&b->refused, refused);
  atomic_fetch_add(&b->audits, audits);
  ame_thread_exit();
  return NULL;
}

/* A thread that only audits, with a pause in the middle of each. */
static void *auditor_main(void *arg) {
  struct bank_state *b = arg;
  ame_tx_t *tx = enter();
  const int64_t total = (int64_t)b->naccounts * BANK_INIT;
  unsigned long audits = 0;
  gate_wait(&b->gate);
  while (!atomic_load(&b->gate.stop)) {
    AME_ATOMIC(tx) {
      int64_t sum = 0;
      for (unsigned i = 0; i < b->naccounts; i++) {
        if (i == b->naccounts / 2)
          sched_yield();
        int64_t v = ame_load_i64_tx(tx, &b->acc[i]);
        ASSERT_GE(v, 0);
        sum += v;
      }
      ASSERT_EQ(sum, total);
    }
    audits++;
  }
  atomic_fetch_add(&b->audits, audits);
  ame_thread_exit();
  return NULL;
}

static void bank_run(unsigned naccounts) {
  enter();
  static struct bank_state b;
  b.naccounts = naccounts;
  b.acc = calloc(naccounts, sizeof *b.acc);
  ASSERT_NOT_NULL(b.acc);
  for (unsigned i = 0; i < naccounts; i++)
    b.acc[i] = BANK_INIT;
  pthread_t th[BANK_THREADS + 1];
  for (int i = 0; i < BANK_THREADS; i++)
    thread_start(&th[i], bank_main, &b);
  thread_start(&th[BANK_THREADS], auditor_main, &b);
  gate_open(&b.gate, BANK_THREADS + 1);
  sleep_ms(stress_ms());
  atomic_store(&b.gate.stop, 1);
  for (int i = 0; i <= BANK_THREADS; i++)
    thread_join(th[i]);
  int64_t sum = 0;
  for (unsigned i = 0; i < naccounts; i++) {
    ASSERT_GE(b.acc[i], 0);
    sum += b.acc[i];
  }
  ASSERT_EQ(sum, (int64_t)naccounts * BANK_INIT);
  ASSERT_GT(atomic_load(&b.transfers), 0);
  ASSERT_GT(atomic_load(&b.audits), 0);
  printf("bank(%u accounts): %lu transfers, %lu refused, %lu audits\n",
         naccounts, atomic_load(&b.transfers), atomic_load(&b.refused),
         atomic_load(&b.audits));
  free(b.acc);
  leave_and_shutdown();
}

TEST_IMPL(stress_bank) { bank_run(256); }

TEST_IMPL(stress_bank_hot) { bank_run(4); }

/* ------------------------------------------------------------------------
** Opacity with equal pairs: writers keep x[p] == y[p] (writing them in
** either order, with a pause between); readers assert equality inside the
** transaction, right after reading, whether the attempt commits or not.
*/
enum { PAIRS = 4, OPACITY_THREADS = 4 };

struct pair {
  _Alignas(64) uintptr_t x;
  _Alignas(64) uintptr_t y;
};

struct opacity_state {
  struct gate gate;
  struct pair pair[PAIRS];
  uintptr_t scratch[OPACITY_THREADS];
  atomic_ulong checks, writes;
};

struct opacity_worker {
  struct opacity_state *s;
  unsigned id;
};

static void *opacity_main(void *arg) {
  struct opacity_worker *w = arg;
  struct opacity_state *s = w->s;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(57 + w->id);
  unsigned long checks = 0, writes = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    unsigned p = (unsigned)rnd_below(&rs, PAIRS);
    unsigned q = (unsigned)rnd_below(&rs, PAIRS);
    unsigned op = (unsigned)rnd_below(&rs, 8);
    struct pair *a = &s->pair[p], *b = &s->pair[q];
    if (w->id < 2) {
      /* Writer: bump a pair, x first or y first. */
      AME_ATOMIC(tx) {
        if (op & 1) {
          uintptr_t k = ame_load_word_tx(tx, &a->x) + 1;
          ame_store_word_tx(tx, &a->x, k);
          if (op & 2)
            sched_yield();
          ame_store_word_tx(tx, &a->y, k);
        } else {
          uintptr_t k = ame_load_word_tx(tx, &a->y) + 1;
          ame_store_word_tx(tx, &a->y, k);
          if (op & 2)
            sched_yield();
          ame_store_word_tx(tx, &a->x, k);
        }
        if (op & 4) {  /* and a second pair in the same transaction */
          uintptr_t k = ame_load_word_tx(tx, &b->x) + 1;
          ame_store_word_tx(tx, &b->x, k);
          ame_store_word_tx(tx, &b->y, k);
        }
      }
      writes++;
    } else {
      /* Reader: x then y (or y then x), sometimes a pause between, and
      ** sometimes an update in the same transaction. */
      AME_ATOMIC(tx) {
        uintptr_t vx, vy;
        if (op & 1) {
          vx = ame_load_word_tx(tx, &a->x);
          if (op & 2)
            sched_yield();
          vy = ame_load_word_tx(tx, &a->y);
        } else {
          vy = ame_load_word_tx(tx, &a->y);
          if (op & 2)
            sched_yield();
          vx = ame_load_word_tx(tx, &a->x);
        }
        ASSERT_EQ(vx, vy);
        if (op & 4) {
          ame_store_word_tx(tx, &s->scratch[w->id], vx);
          uintptr_t bx = ame_load_word_tx(tx, &b->x);
          uintptr_t by = ame_load_word_tx(tx, &b->y);
          ASSERT_EQ(bx, by);
        }
      }
      checks++;
    }
  }
  atomic_fetch_add(&s->checks, checks);
  atomic_fetch_add(&s->writes, writes);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stress_opacity) {
  enter();
  static struct opacity_state s;
  struct opacity_worker w[OPACITY_THREADS];
  pthread_t th[OPACITY_THREADS];
  for (unsigned i = 0; i < OPACITY_THREADS; i++) {
    w[i] = (struct opacity_worker){&s, i};
    thread_start(&th[i], opacity_main, &w[i]);
  }
  gate_open(&s.gate, OPACITY_THREADS);
  sleep_ms(stress_ms());
  atomic_store(&s.gate.stop, 1);
  for (unsigned i = 0; i < OPACITY_THREADS; i++)
    thread_join(th[i]);
  uintptr_t bumps = 0;
  for (int p = 0; p < PAIRS; p++) {
    ASSERT_EQ(s.pair[p].x, s.pair[p].y);
    bumps += s.pair[p].x;
  }
  ASSERT_GT(atomic_load(&s.checks), 0);
  ASSERT_GT(atomic_load(&s.writes), 0);
  ASSERT_GE(bumps, atomic_load(&s.writes));  /* one or two per write */
  ASSERT_LE(bumps, 2 * atomic_load(&s.writes));
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Zombie loop: a singly linked ring of RING nodes that writers rearrange by
** swapping two neighbours (p->a->b->q becomes p->b->a->q, written in an
** order where a torn view has a->b->a, a cycle that never returns).
** Readers walk the ring from a fixed node with a guard: a consistent
** snapshot returns to the start after exactly RING steps, visiting each
** node once.
*/
enum { RING = 16, RING_THREADS = 4 };

struct rnode {
  struct rnode *next;
  uintptr_t id;
  uintptr_t pad[2];         /* one node per 32-byte granule */
};

struct ring_state {
  struct gate gate;
  struct rnode node[RING];
  atomic_ulong walks, swaps;
};

struct ring_worker {
  struct ring_state *s;
  unsigned id;
};

static void *ring_main(void *arg) {
  struct ring_worker *w = arg;
  struct ring_state *s = w->s;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(91 + w->id);
  unsigned long walks = 0, swaps = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    unsigned pick = (unsigned)rnd_below(&rs, RING);
    int pause = rnd_below(&rs, 4) == 0;
    if (w->id < 2) {
      struct rnode *p = &s->node[pick];
      AME_ATOMIC(tx) {
        struct rnode *a = ame_load_ptr_tx(tx, (void **)&p->next);
        struct rnode *b = ame_load_ptr_tx(tx, (void **)&a->next);
        struct rnode *q = ame_load_ptr_tx(tx, (void **)&b->next);
        ame_store_ptr_tx(tx, (void **)&p->next, b);
        ame_store_ptr_tx(tx, (void **)&b->next, a);
        if (pause)
          sched_yield();
        ame_store_ptr_tx(tx, (void **)&a->next, q);
      }
      swaps++;
    } else {
      struct rnode *start = &s->node[pick];
      AME_ATOMIC(tx) {
        uint32_t seen = 0;
        unsigned steps = 0;
        struct rnode *n = start;
        do {
          uintptr_t id = ame_load_word_tx(tx, &n->id);
          ASSERT_LT(id, RING);
          ASSERT_EQ(seen & (1u << id), 0);  /* each node once */
          seen |= 1u << id;
          n = ame_load_ptr_tx(tx, (void **)&n->next);
          ASSERT_NOT_NULL(n);
          steps++;
          ASSERT_LE(steps, RING);  /* the guard: never loop */
          if (pause && steps == RING / 2)
            sched_yield();
        } while (n != start);
        ASSERT_EQ(steps, RING);
        ASSERT_EQ(seen, (1u << RING) - 1);
      }
      walks++;
    }
  }
  atomic_fetch_add(&s->walks, walks);
  atomic_fetch_add(&s->swaps, swaps);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stress_opacity_zombie_ring) {
  enter();
  static struct ring_state s;
  for (int i = 0; i < RING; i++) {
    s.node[i].id = (uintptr_t)i;
    s.node[i].next = &s.node[(i + 1) % RING];
  }
  struct ring_worker w[RING_THREADS];
  pthread_t th[RING_THREADS];
  for (unsigned i = 0; i < RING_THREADS; i++) {
    w[i] = (struct ring_worker){&s, i};
    thread_start(&th[i], ring_main, &w[i]);
  }
  gate_open(&s.gate, RING_THREADS);
  sleep_ms(stress_ms());
  atomic_store(&s.gate.stop, 1);
  for (unsigned i = 0; i < RING_THREADS; i++)
    thread_join(th[i]);
  ASSERT_GT(atomic_load(&s.walks), 0);
  ASSERT_GT(atomic_load(&s.swaps), 0);
  /* Still one ring of all the nodes. */
  uint32_t seen = 0;
  unsigned steps = 0;
  struct rnode *n = &s.node[0];
  do {
    seen |= 1u << n->id;
    n = n->next;
    steps++;
    ASSERT_LE(steps, RING);
  } while (n != &s.node[0]);
  ASSERT_EQ(seen, (1u << RING) - 1);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Write skew: pairs (x, y) with the invariant x + y >= 1 ("one of the two
** is on call").  A transaction reads both and clears its own side only if
** both are set, or sets its side again; two of them clearing different
** sides of the same pair concurrently would break the invariant unless
** commit-time validation catches the read that the other overwrote.
*/
enum { SKEW_PAIRS = 2, SKEW_THREADS = 4 };

struct skew_state {
  struct gate gate;
  struct {
    _Alignas(64) uintptr_t x;  /* x and y under different orecs */
    _Alignas(64) uintptr_t y;
  } pair[SKEW_PAIRS];
  atomic_ulong clears;
};

struct skew_worker {
  struct skew_state *s;
  unsigned id;
};

static void *skew_main(void *arg) {
  struct skew_worker *w = arg;
  struct skew_state *s = w->s;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(200 + w->id);
  unsigned long clears = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    unsigned p = (unsigned)rnd_below(&rs, SKEW_PAIRS);
    int mine_is_x = (w->id + (unsigned)rnd_below(&rs, 2)) % 2 == 0;
    int pause = rnd_below(&rs, 2) == 0;
    uintptr_t *mine = mine_is_x ? &s->pair[p].x : &s->pair[p].y;
    uintptr_t *other = mine_is_x ? &s->pair[p].y : &s->pair[p].x;
    volatile int cleared = 0;
    AME_ATOMIC(tx) {
      cleared = 0;
      uintptr_t a = ame_load_word_tx(tx, mine);
      uintptr_t b = ame_load_word_tx(tx, other);
      ASSERT_GE(a + b, 1);  /* the invariant, in every snapshot */
      if (pause)
        sched_yield();
      if (a + b == 2) {
        ame_store_word_tx(tx, mine, 0);
        cleared = 1;
      } else if (a == 0) {
        ame_store_word_tx(tx, mine, 1);
      }
    }
    clears += (unsigned long)cleared;
  }
  atomic_fetch_add(&s->clears, clears);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stress_write_skew) {
  enter();
  static struct skew_state s;
  for (int p = 0; p < SKEW_PAIRS; p++)
    s.pair[p].x = s.pair[p].y = 1;
  struct skew_worker w[SKEW_THREADS];
  pthread_t th[SKEW_THREADS];
  for (unsigned i = 0; i < SKEW_THREADS; i++) {
    w[i] = (struct skew_worker){&s, i};
    thread_start(&th[i], skew_main, &w[i]);
  }
  gate_open(&s.gate, SKEW_THREADS);
  sleep_ms(stress_ms());
  atomic_store(&s.gate.stop, 1);
  for (unsigned i = 0; i < SKEW_THREADS; i++)
    thread_join(th[i]);
  for (int p = 0; p < SKEW_PAIRS; p++)
    ASSERT_GE(s.pair[p].x + s.pair[p].y, 1);
  ASSERT_GT(atomic_load(&s.clears), 0);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Large read sets: readers sum 50,000 words, one per 32-byte granule (a
** read log far beyond its first allocation), while writers move units
** between random words; every attempt must see the conserved total.
*/
enum { BIG_WORDS = 50000, BIG_STRIDE = 4, BIG_INIT = 3 };

struct big_state {
  struct gate gate;
  uintptr_t *w;               /* BIG_WORDS * BIG_STRIDE words; every 4th */
  atomic_ulong sums, moves;
};

struct big_worker {
  struct big_state *s;
  unsigned id;
};

static void *big_main(void *arg) {
  struct big_worker *bw = arg;
  struct big_state *s = bw->s;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(300 + bw->id);
  unsigned long sums = 0, moves = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    if (bw->id == 0) {
      AME_ATOMIC(tx) {
        uintptr_t sum = 0;
        for (unsigned i = 0; i < BIG_WORDS; i++)
          sum += ame_load_word_tx(tx, &s->w[i * BIG_STRIDE]);
        ASSERT_EQ(sum, (uintptr_t)BIG_WORDS * BIG_INIT);
      }
      sums++;
    } else {
      unsigned i = (unsigned)rnd_below(&rs, BIG_WORDS) * BIG_STRIDE;
      unsigned j = (unsigned)rnd_below(&rs, BIG_WORDS) * BIG_STRIDE;
      AME_ATOMIC(tx) {
        uintptr_t a = ame_load_word_tx(tx, &s->w[i]);
        if (a > 0 && i != j) {
          ame_store_word_tx(tx, &s->w[i], a - 1);
          ame_store_word_tx(tx, &s->w[j], ame_load_word_tx(tx, &s->w[j]) + 1);
        }
      }
      moves++;
      if (moves % 64 == 0)
        sched_yield();  /* let the reader get somewhere */
    }
  }
  atomic_fetch_add(&s->sums, sums);
  atomic_fetch_add(&s->moves, moves);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stress_large_read_set) {
  enter();
  static struct big_state s;
  s.w = calloc((size_t)BIG_WORDS * BIG_STRIDE, sizeof *s.w);
  ASSERT_NOT_NULL(s.w);
  for (unsigned i = 0; i < BIG_WORDS; i++)
    s.w[i * BIG_STRIDE] = BIG_INIT;
  enum { NT = 3 };
  struct big_worker w[NT];
  pthread_t th[NT];
  for (unsigned i = 0; i < NT; i++) {
    w[i] = (struct big_worker){&s, i};
    thread_start(&th[i], big_main, &w[i]);
  }
  gate_open(&s.gate, NT);
  sleep_ms(stress_ms());
  atomic_store(&s.gate.stop, 1);
  for (unsigned i = 0; i < NT; i++)
    thread_join(th[i]);
  uintptr_t sum = 0;
  for (unsigned i = 0; i < BIG_WORDS; i++)
    sum += s.w[i * BIG_STRIDE];
  ASSERT_EQ(sum, (uintptr_t)BIG_WORDS * BIG_INIT);
  ASSERT_GT(atomic_load(&s.sums), 0);
  ASSERT_GT(atomic_load(&s.moves), 0);
  free(s.w);
  leave_and_shutdown();
}
