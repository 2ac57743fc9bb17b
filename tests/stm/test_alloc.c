/*
** tests/stm/test_alloc.c — transactional allocation: ame_tx_malloc and
** ame_tx_calloc (freed when the attempt aborts), ame_tx_free (nothing on
** abort; deferred reclamation on commit, counted in the statistics, handed
** on at thread exit), ame_tx_free with a size locking the block, and the
** recycling of reclaimed small blocks by the thread's next allocations.
**
** Leaks are checked two ways: heap_in_use() (task.h) during the test, in
** every build, and LeakSanitizer at exit in the ASan build.
*/
#include "stm-test.h"

/* stm/src/internal.h: blocks in the calling thread's recycle lists, and
** the membarrier calls the STM made. */
size_t ame__recycled(const ame_tx_t *tx);
uint64_t ame__membarriers(void);

/* Reclaimed small blocks are recycled, except under AddressSanitizer,
** which must see each free (stm.c, "Recycling"). */
#if defined(__SANITIZE_ADDRESS__)
#define RECYCLES 0
#else
#define RECYCLES 1
#endif

/* The heap may move by this much for reasons of its own (logs growing). */
#define HEAP_SLACK (1u << 20)

static uint64_t frees_done(void) {
  ame_stats_t s;
  ame_stats_total(&s);
  return s.frees_done;
}

static uint64_t frees_pending(void) {
  ame_stats_t s;
  ame_stats_total(&s);
  return s.frees_pending;
}

/* Leave and register again: the thread's deferred frees are reclaimed at
** its exit, or handed to the process-wide list (ame/stm.h); with no other
** thread running a transaction, nothing can stop them being freed now.
** Return the new descriptor. */
static ame_tx_t *exit_and_enter(void) {
  ame_thread_exit();
  ASSERT_NULL(ame_self());
  return enter();
}

/* Run small transactions and quiescence fences for about ms milliseconds:
** time for a wrongly deferred free to happen. */
static void churn(ame_tx_t *tx, unsigned ms) {
  static uintptr_t scratch;
  uint64_t end = now_ms() + ms;
  while (now_ms() < end) {
    for (int i = 0; i < 100; i++)
      tx_add(tx, &scratch, 1);
    ame_quiesce(tx);
  }
}

static uintptr_t shared_ptr_word;

TEST_IMPL(tx_malloc_commit) {
  ame_tx_t *tx = enter();
  char *volatile p = NULL;
  char *volatile q = NULL;
  AME_ATOMIC(tx) {
    p = ame_tx_malloc(tx, 100);
    q = ame_tx_malloc(tx, 1 << 16);
    ASSERT_NOT_NULL(p);
    ASSERT_NOT_NULL(q);
    memset(p, 'p', 100);    /* private until published: plain stores */
    memset(q, 'q', 1 << 16);
    ame_store_ptr_tx(tx, (void **)&shared_ptr_word, p);
  }
  /* Committed memory belongs to the program: readable, writable. */
  for (int i = 0; i < 100; i++)
    ASSERT_EQ(p[i], 'p');
  for (int i = 0; i < 1 << 16; i++)
    ASSERT_EQ(q[i], 'q');
  ASSERT_PTR_EQ((void *)shared_ptr_word, p);
  /* It came from the C allocator: free() takes it back... */
  free(q);
  /* ...and so does ame_tx_free() in a later transaction. */
  AME_ATOMIC(tx) {
    void *r = ame_load_ptr_tx(tx, (void **)&shared_ptr_word);
    ame_store_ptr_tx(tx, (void **)&shared_ptr_word, NULL);
    ame_tx_free(tx, r, 100);
  }
  leave_and_shutdown();
}

TEST_IMPL(tx_malloc_abort_frees) {
  ame_tx_t *volatile tx = enter();
  static uintptr_t w;
  /* Warm up (logs and tables reach their working size). */
  for (int i = 0; i < 100; i++)
    AME_ATOMIC(tx) {
      void *p = ame_tx_malloc(tx, 64);
      ASSERT_NOT_NULL(p);
      if (ame_tx_attempt(tx) == 0)
        ame_tx_abort(tx);
      ame_tx_free(tx, p, 0);
    }
  tx = exit_and_enter();
  size_t before = heap_in_use();

  /* 2000 transactions, each allocating 16 KiB in an attempt that aborts
  ** and nothing in the attempt that commits: 32 MiB if leaked. */
  volatile unsigned aborted = 0;
  for (volatile int i = 0; i < 2000; i++) {
    AME_ATOMIC(tx) {
      if (ame_tx_attempt(tx) == 0) {
        for (int k = 0; k < 4; k++) {
          char *p = ame_tx_malloc(tx, 4096);
          ASSERT_NOT_NULL(p);
          memset(p, k, 4096);
          ame_store_word_tx(tx, &w, (uintptr_t)p);  /* as if published */
        }
        aborted++;
        ame_tx_abort(tx);
      }
      ame_store_word_tx(tx, &w, 0);
    }
  }
  ASSERT_EQ(aborted, 2000);
  size_t after = heap_in_use();
  ASSERT_LT(after, before + HEAP_SLACK);
  ASSERT_EQ(w, 0);
  leave_and_shutdown();
}

TEST_IMPL(tx_calloc) {
  ame_tx_t *tx = enter();
  uintptr_t *volatile p = NULL;
  AME_ATOMIC(tx) {
    p = ame_tx_calloc(tx, 1000, sizeof(uintptr_t));
    ASSERT_NOT_NULL(p);
    for (int i = 0; i < 1000; i++)
      ASSERT_EQ(p[i], 0);
  }
  free(p);

  /* calloc in aborted attempts is freed too. */
  size_t before = heap_in_use();
  for (int i = 0; i < 1000; i++) {
    AME_ATOMIC(tx) {
      if (ame_tx_attempt(tx) == 0) {
        char *c = ame_tx_calloc(tx, 512, 32);
        ASSERT_NOT_NULL(c);
        ASSERT_EQ(c[512 * 32 - 1], 0);
        ame_tx_abort(tx);
      }
    }
  }
  ASSERT_LT(heap_in_use(), before + HEAP_SLACK);

  /* Impossible sizes give NULL and the transaction goes on. */
  volatile int went_on = 0;
  AME_ATOMIC(tx) {
    ASSERT_NULL(ame_tx_calloc(tx, SIZE_MAX / 2, 4));  /* overflows */
    ASSERT_NULL(ame_tx_malloc(tx, SIZE_MAX - 4096));
    went_on = 1;
  }
  ASSERT_EQ(went_on, 1);
  leave_and_shutdown();
}

TEST_IMPL(tx_free_abort_noop) {
  ame_tx_t *tx = enter();
  enum { BIG = 4 << 20 };  /* mmapped by malloc: its free shows in the heap */
  char *p = malloc(BIG);
  ASSERT_NOT_NULL(p);
  memset(p, 1, BIG);
  size_t before = heap_in_use();
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    if (attempts == 1) {
      ame_tx_free(tx, p, 0);
      ame_tx_abort(tx);
    }
    if (attempts == 2) {
      ame_tx_free(tx, p, 256);  /* with a size: the locks go with the abort */
      ame_tx_abort(tx);
    }
  }
  ASSERT_EQ(attempts, 3);
  /* Give any wrongly deferred free every chance to happen. */
  churn(tx, 200);
  ASSERT_GT(heap_in_use() + BIG / 2, before);  /* not given back */
  ASSERT_EQ(frees_pending(), 0);
  /* Still ours (ASan reports a use after free here otherwise). */
  memset(p, 2, BIG);
  ASSERT_EQ(p[BIG - 1], 2);
  /* The words the aborted attempt locked are usable by transactions. */
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, (uintptr_t *)(void *)p, 5);
  }
  ASSERT_EQ(*(uintptr_t *)(void *)p, 5);
  free(p);  /* and freed exactly once (ASan: no double free) */
  leave_and_shutdown();
}

TEST_IMPL(tx_free_commit_reclaims) {
  ame_tx_t *tx = enter();
  enum { N = 100, SZ = 64 << 10 };
  void *blocks[N];
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(SZ);
    ASSERT_NOT_NULL(blocks[i]);
    memset(blocks[i], i, SZ);
  }
  uint64_t done0 = frees_done();
  AME_ATOMIC(tx) {
    for (int i = 0; i < N; i++)
      ame_tx_free(tx, blocks[i], i % 2 ? SZ : 0);
  }
  /* (Measured after the commit: freeing with a size grew the write log.) */
  size_t before = heap_in_use();
  ASSERT_EQ(frees_pending() + frees_done(), done0 + N);
  /* Reclaimed at thread exit at the latest. */
  tx = exit_and_enter();
  ASSERT_EQ(frees_done(), done0 + N);
  ASSERT_EQ(frees_pending(), 0);
  /* 6.4 MiB went back to the allocator. */
  ASSERT_LT(heap_in_use() + (size_t)N * SZ - HEAP_SLACK, before);

  /* Many transactions each freeing a block: the pending frees stay bounded
  ** (most are reclaimed while the thread runs, with nothing in the way;
  ** a scan each time the limbo passes a multiple of 1024 blocks). */
  uint64_t done1 = frees_done();
  enum { M = 8000 };
  for (volatile int i = 0; i < M; i++) {
    void *p = malloc(64);
    ASSERT_NOT_NULL(p);
    AME_ATOMIC(tx) { ame_tx_free(tx, p, 0); }
    ASSERT_LE(frees_pending(), M / 4);
  }
  ASSERT_GE(frees_done(), done1 + M / 2);
  /* A thread's own count is part of the total. */
  ame_stats_t mine;
  ame_stats_thread(tx, &mine);
  ASSERT_LE(mine.frees_done, frees_done());
  leave_and_shutdown();
}

TEST_IMPL(tx_malloc_free_same_tx) {
  ame_tx_t *tx = enter();
  uint64_t done0 = frees_done();
  /* Committed: allocated and freed in one transaction, reclaimed once. */
  for (int i = 0; i < 10; i++) {
    AME_ATOMIC(tx) {
      void *p = ame_tx_malloc(tx, 1000);
      ASSERT_NOT_NULL(p);
      ame_tx_free(tx, p, i % 2 ? 1000 : 0);
    }
  }
  tx = exit_and_enter();
  ASSERT_EQ(frees_done(), done0 + 10);
  /* Aborted: the abort frees the block; the ame_tx_free has no effect (a
  ** double free here is reported by ASan, and by glibc otherwise). */
  size_t before = heap_in_use();
  uint64_t done1 = frees_done();
  for (volatile int i = 0; i < 500; i++) {
    AME_ATOMIC(tx) {
      if (ame_tx_attempt(tx) == 0) {
        void *p = ame_tx_malloc(tx, 8192);
        ASSERT_NOT_NULL(p);
        ame_tx_free(tx, p, i % 2 ? 8192 : 0);
        ame_tx_abort(tx);
      }
    }
  }
  churn(tx, 200);  /* nothing should be pending */
  ASSERT_EQ(frees_done(), done1);
  ASSERT_EQ(frees_pending(), 0);
  ASSERT_LT(heap_in_use(), before + HEAP_SLACK);
  leave_and_shutdown();
}

struct exiting_freer {
  void *blocks[10];
};

static void *exiting_freer_main(void *arg) {
  struct exiting_freer *f = arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    for (int i = 0; i < 10; i++)  /* with a size: a writing transaction */
      ame_tx_free(tx, f->blocks[i], 256);
  }
  ame_thread_exit();  /* right away: its deferred frees are handed on */
  return NULL;
}

/* Run the freeing thread to its exit while this thread holds a
** transaction open that started before the free committed: the exiting
** thread cannot reclaim the blocks, and hands them on. */
static void free_in_exiting_thread(ame_tx_t *tx, struct exiting_freer *f) {
  static uintptr_t w;
  volatile int spawned = 0;
  AME_ATOMIC(tx) {
    (void)ame_load_word_tx(tx, &w);
    if (!spawned) {
      spawned = 1;
      pthread_t t;
      thread_start(&t, exiting_freer_main, f);
      thread_join(t);
      ASSERT_GE(frees_pending(), 10);  /* we may still reach them */
    }
  }
}

TEST_IMPL(tx_free_thread_exit) {
  ame_tx_t *tx = enter();
  /* Round 1: handed on at the freeing thread's exit, reclaimed later by a
  ** thread that is still here (at its exit, at the latest). */
  uint64_t done0 = frees_done();
  struct exiting_freer f;
  for (int i = 0; i < 10; i++)
    ASSERT_NOT_NULL(f.blocks[i] = malloc(256));
  free_in_exiting_thread(tx, &f);
  tx = exit_and_enter();
  ASSERT_EQ(frees_done(), done0 + 10);
  ASSERT_EQ(frees_pending(), 0);

  /* Round 2: left pending at shutdown, which frees them (LeakSanitizer
  ** checks at exit in the ASan build). */
  for (int i = 0; i < 10; i++)
    ASSERT_NOT_NULL(f.blocks[i] = malloc(256));
  free_in_exiting_thread(tx, &f);
  leave_and_shutdown();
}

/* ame_tx_free(p, size) locks the block's words as if written: while the
** freeing transaction is open, another transaction cannot read them.  The
** freeing attempt then aborts, so the block is never really freed and the
** reader can never touch freed memory. */
struct size_lock {
  uintptr_t *block;          /* 8 words */
  atomic_int holding;        /* the freer holds the locks */
  atomic_int released;       /* the freer is about to abort */
  atomic_int reader_tries;
  atomic_int passed_early;   /* reads of the block done while held */
  atomic_int reader_done;
};

static void *size_lock_reader(void *arg) {
  struct size_lock *s = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&s->holding), 5000);
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) {
    atomic_fetch_add(&s->reader_tries, 1);
    v = ame_load_word_tx(tx, &s->block[3]);
    if (!atomic_load(&s->released))
      atomic_fetch_add(&s->passed_early, 1);
  }
  ASSERT_EQ(v, 33);
  atomic_store(&s->reader_done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(tx_free_size_conflicts) {
  ame_tx_t *tx = enter();
  static struct size_lock s;
  s.block = malloc(8 * sizeof(uintptr_t));
  ASSERT_NOT_NULL(s.block);
  for (int i = 0; i < 8; i++)
    s.block[i] = (uintptr_t)i * 11;
  pthread_t t;
  thread_start(&t, size_lock_reader, &s);
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    if (attempts == 1) {
      ame_tx_free(tx, s.block, 8 * sizeof(uintptr_t));
      atomic_store(&s.holding, 1);
      WAIT_UNTIL(atomic_load(&s.reader_tries) >= 3, 1000);
      atomic_store(&s.released, 1);
      ame_tx_abort(tx);
    }
  }
  thread_join(t);
  ASSERT_EQ(atomic_load(&s.reader_done), 1);
  ASSERT_EQ(atomic_load(&s.passed_early), 0);
  free(s.block);
  leave_and_shutdown();
}

/* Reclaimed small blocks go to the thread's recycle lists, and its next
** allocations that fit take them back; a large block goes to malloc.  At
** the thread's exit the lists are given back. */
TEST_IMPL(tx_free_recycles) {
  ame_tx_t *tx = enter();
  enum { N = 100 };
  static void *blocks[N];
  static uintptr_t root;
  AME_ATOMIC(tx) {
    for (int i = 0; i < N; i++) {
      blocks[i] = ame_tx_malloc(tx, 48);
      ASSERT_NOT_NULL(blocks[i]);
    }
    ame_store_word_tx(tx, &root, (uintptr_t)blocks[0]); /* published */
  }
  void *big = malloc(4096);
  ASSERT_NOT_NULL(big);
  size_t before = ame__recycled(tx);
  AME_ATOMIC(tx) {
    for (int i = 0; i < N; i++)
      ame_tx_free(tx, blocks[i], i % 2 ? 48 : 0);
    ame_tx_free(tx, big, 0);
    ame_store_word_tx(tx, &root, 0);
  }
  ame_quiesce(tx); /* nothing else runs: all of it is reclaimed */
  ASSERT_EQ(frees_pending(), 0);
  ASSERT_EQ(ame__recycled(tx), before + (RECYCLES ? N : 0));
  /* The next allocations that they fit are the same blocks, newest
  ** first (the first one a smaller size), then malloc's again. */
  static void *again[N + 1];
  AME_ATOMIC(tx) {
    again[0] = ame_tx_malloc(tx, 40);
    for (int i = 1; i <= N; i++) again[i] = ame_tx_malloc(tx, 48);
    for (int i = 0; i <= N; i++) ASSERT_NOT_NULL(again[i]);
  }
  int same = 0;
  for (int i = 0; i <= N; i++)
    for (int k = 0; k < N; k++)
      same += again[i] == blocks[k];
  if (RECYCLES) {
    ASSERT_EQ(same, N);
    ASSERT_PTR_EQ(again[0], blocks[N - 1]);
    ASSERT_PTR_EQ(again[N - 1], blocks[0]);
    ASSERT_EQ(ame__recycled(tx), before);
  }
  /* Usable memory: written whole, then freed for good. */
  for (int i = 0; i <= N; i++) memset(again[i], 0x5a, 40);
  AME_ATOMIC(tx) {
    for (int i = 0; i <= N; i++) ame_tx_free(tx, again[i], 0);
  }
  ame_quiesce(tx);
  /* At the thread's exit the lists go back to malloc. */
  tx = exit_and_enter();
  ASSERT_EQ(ame__recycled(tx), 0);
  ASSERT_EQ(frees_pending(), 0);
  leave_and_shutdown();
}

/* A block is recycled only once no transaction can reach it: while one
** that started before the free committed is still running, reclamation
** keeps it and no allocation gets it back. */
struct recycle_reader {
  atomic_int inside; /* the reader's transaction runs */
  atomic_int go;     /* let it commit */
  atomic_int done;
};

static uintptr_t recycle_word;

static void *recycle_reader_main(void *arg) {
  struct recycle_reader *r = arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    (void)ame_load_word_tx(tx, &recycle_word);
    atomic_store(&r->inside, 1);
    ASSERT_WAIT(atomic_load(&r->go), 10000);
  }
  atomic_store(&r->done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(tx_free_recycle_waits) {
  ame_tx_t *tx = enter();
  void *volatile b = NULL;
  AME_ATOMIC(tx) {
    b = ame_tx_malloc(tx, 48);
    ASSERT_NOT_NULL(b);
    ame_store_word_tx(tx, &recycle_word, (uintptr_t)b);
  }
  static struct recycle_reader r;
  pthread_t t;
  thread_start(&t, recycle_reader_main, &r);
  ASSERT_WAIT(atomic_load(&r.inside), 5000);
  /* The reader may still hold b: free it now. */
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &recycle_word, 0);
    ame_tx_free(tx, b, 48);
  }
  size_t before = ame__recycled(tx);
  for (int round = 0; round < 20; round++) {
    ame_thread_idle(tx); /* a reclamation scan */
    ASSERT_EQ(ame__recycled(tx), before);
    ASSERT_GE(frees_pending(), 1);
    AME_ATOMIC(tx) {
      for (int i = 0; i < 50; i++) {
        void *p = ame_tx_malloc(tx, 48);
        ASSERT_NOT_NULL(p);
        ASSERT_PTR_NE(p, b);
        ame_tx_free(tx, p, 0);
      }
    }
  }
  atomic_store(&r.go, 1);
  thread_join(t);
  ASSERT_EQ(atomic_load(&r.done), 1);
  /* Now nothing can reach it: reclaimed, and recycled. */
  ame_quiesce(tx);
  ASSERT_EQ(frees_pending(), 0);
  if (RECYCLES) {
    ASSERT_GE(ame__recycled(tx), before + 1);
    int found = 0;
    static void *got[2000];
    size_t n = ame__recycled(tx);
    ASSERT_LE(n, 2000);
    AME_ATOMIC(tx) {
      found = 0;
      for (size_t i = 0; i < n; i++) {
        got[i] = ame_tx_malloc(tx, 48);
        found += got[i] == b;
      }
    }
    ASSERT_EQ(found, 1);
    AME_ATOMIC(tx) {
      for (size_t i = 0; i < n; i++) ame_tx_free(tx, got[i], 0);
    }
  }
  leave_and_shutdown();
}

/* A reclamation scan while the other threads run transactions reads the
** starts they published and needs no membarrier (stm.c, oldest_seen()):
** blocks freed before those starts are reclaimed by a scan that makes no
** membarrier call.  (Where the STM's fences are symmetric, without the
** private expedited membarrier or under ThreadSanitizer, there is none to
** save.)  That the scan frees nothing a running transaction may still
** reach, also without the membarrier, is tx_free_recycle_waits. */
struct busy_reader {
  atomic_int running;
  atomic_int stop;
};

static uintptr_t busy_word;

static void *busy_reader_main(void *arg) {
  struct busy_reader *r = arg;
  ame_tx_t *tx = enter();
  atomic_store(&r->running, 1);
  while (!atomic_load(&r->stop)) (void)tx_add(tx, &busy_word, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(tx_free_scan_reads_starts) {
  ame_tx_t *tx = enter();
  uint64_t mb = ame__membarriers();
  ame_quiesce(tx); /* a fence_heavy(): a membarrier, where there is one */
  if (ame__membarriers() == mb) {
    leave_and_shutdown();
    TEST_SKIP("the STM's fences are symmetric here: no membarrier to save");
  }
  static struct busy_reader r;
  pthread_t t;
  thread_start(&t, busy_reader_main, &r);
  ASSERT_WAIT(atomic_load(&r.running), 5000);
  /* Until a scan reclaims without a membarrier: the reader may be
  ** preempted between two transactions (then the scan takes the
  ** membarrier) or in one older than the free (then it reclaims nothing
  ** yet). */
  int seen = 0, scans = 0;
  uint64_t end = now_ms() + 20000 * slow_factor();
  while (!seen && now_ms() < end) {
    void *volatile b = NULL;
    AME_ATOMIC(tx) {
      b = ame_tx_malloc(tx, 32);
      ASSERT_NOT_NULL(b);
    }
    AME_ATOMIC(tx) { ame_tx_free(tx, b, 0); }
    uint64_t done = frees_done();
    mb = ame__membarriers();
    ame_thread_idle(tx);
    scans++;
    seen = frees_done() > done && ame__membarriers() == mb;
  }
  atomic_store(&r.stop, 1);
  thread_join(t);
  if (!seen)
    AME_TEST_FAIL_("no scan of %d reclaimed without a membarrier", scans);
  ame_quiesce(tx);
  ASSERT_EQ(frees_pending(), 0);
  leave_and_shutdown();
}
