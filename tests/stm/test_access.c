/*
** tests/stm/test_access.c — transactional loads and stores of every width
** and type in ame/stm.h, read-after-write inside a transaction, 32-bit
** halves of one word, isolation of uncommitted writes, words at the
** same offset of distant regions under orecs of their own, and runs of
** granules under runs of orecs in address order.
*/
#include "stm-test.h"

#include "../../stm/src/internal.h" /* the descriptor's orec mapping */

#include <math.h>
#include <sys/mman.h>

TEST_IMPL(load_store_word) {
  ame_tx_t *tx = enter();
  static uintptr_t w[4];
  const uintptr_t vals[4] = {0, 1, UINTPTR_MAX,
                             (uintptr_t)0x8000000000000001ULL};
  AME_ATOMIC(tx) {
    for (int i = 0; i < 4; i++)
      ame_store_word_tx(tx, &w[i], vals[i]);
    for (int i = 0; i < 4; i++)
      ASSERT_EQ(ame_load_word_tx(tx, &w[i]), vals[i]);
  }
  for (int i = 0; i < 4; i++) {
    ASSERT_EQ(w[i], vals[i]);               /* written back by the commit */
    ASSERT_EQ(tx_get(tx, &w[i]), vals[i]);  /* and read by a new transaction */
  }
  leave_and_shutdown();
}

TEST_IMPL(load_store_ptr) {
  ame_tx_t *tx = enter();
  static int target;
  static void *p = &target;
  AME_ATOMIC(tx) {
    ASSERT_PTR_EQ(ame_load_ptr_tx(tx, &p), &target);
    ame_store_ptr_tx(tx, &p, NULL);
    ASSERT_NULL(ame_load_ptr_tx(tx, &p));
  }
  ASSERT_NULL(p);
  AME_ATOMIC(tx) { ame_store_ptr_tx(tx, &p, (void *)&p); }
  void *volatile seen = NULL;
  AME_ATOMIC(tx) { seen = ame_load_ptr_tx(tx, &p); }
  ASSERT_PTR_EQ(seen, &p);
  leave_and_shutdown();
}

TEST_IMPL(load_store_u64_i64) {
  ame_tx_t *tx = enter();
  static uint64_t u;
  static int64_t i;
  AME_ATOMIC(tx) {
    ame_store_u64_tx(tx, &u, UINT64_MAX);
    ame_store_i64_tx(tx, &i, INT64_MIN);
  }
  ASSERT_EQ(u, UINT64_MAX);
  ASSERT_EQ(i, INT64_MIN);
  volatile uint64_t su = 0;
  volatile int64_t si = 0;
  AME_ATOMIC(tx) {
    su = ame_load_u64_tx(tx, &u);
    si = ame_load_i64_tx(tx, &i);
    ame_store_i64_tx(tx, &i, -1);
    ASSERT_EQ(ame_load_i64_tx(tx, &i), -1);
    ame_store_u64_tx(tx, &u, 0x0123456789abcdefULL);
  }
  ASSERT_EQ(su, UINT64_MAX);
  ASSERT_EQ(si, INT64_MIN);
  ASSERT_EQ(i, -1);
  ASSERT_EQ(u, 0x0123456789abcdefULL);
  leave_and_shutdown();
}

TEST_IMPL(load_store_u32_i32) {
  ame_tx_t *tx = enter();
  static uint32_t u;
  static int32_t i;
  AME_ATOMIC(tx) {
    ame_store_u32_tx(tx, &u, UINT32_MAX);
    ame_store_i32_tx(tx, &i, INT32_MIN);
    ASSERT_EQ(ame_load_u32_tx(tx, &u), UINT32_MAX);
    ASSERT_EQ(ame_load_i32_tx(tx, &i), INT32_MIN);
  }
  ASSERT_EQ(u, UINT32_MAX);
  ASSERT_EQ(i, INT32_MIN);
  volatile int32_t si = 0;
  AME_ATOMIC(tx) {
    ame_store_i32_tx(tx, &i, -7);
    si = ame_load_i32_tx(tx, &i);  /* sign survives the round trip */
  }
  ASSERT_EQ(si, -7);
  ASSERT_EQ(i, -7);
  leave_and_shutdown();
}

/* Two 32-bit halves of one 64-bit word. */
struct halves {
  _Alignas(8) uint32_t lo;
  uint32_t hi;
};

struct half_worker {
  struct halves *h;
  int which;        /* 0: increment lo, 1: increment hi */
  unsigned iters;
};

static void *half_worker_main(void *arg) {
  struct half_worker *w = arg;
  ame_tx_t *tx = enter();
  uint32_t *p = w->which ? &w->h->hi : &w->h->lo;
  for (unsigned n = 0; n < w->iters; n++) {
    AME_ATOMIC(tx) { ame_store_u32_tx(tx, p, ame_load_u32_tx(tx, p) + 1); }
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(load_store_u32_halves) {
  ame_tx_t *tx = enter();
  static struct halves h;

  /* Across transactions: writing one half keeps the other. */
  AME_ATOMIC(tx) { ame_store_u32_tx(tx, &h.lo, 0x11111111u); }
  AME_ATOMIC(tx) { ame_store_u32_tx(tx, &h.hi, 0x22222222u); }
  ASSERT_EQ(h.lo, 0x11111111u);
  ASSERT_EQ(h.hi, 0x22222222u);

  /* In one transaction: both halves written separately, then read. */
  AME_ATOMIC(tx) {
    ame_store_u32_tx(tx, &h.hi, 0xdeadbeefu);
    ASSERT_EQ(ame_load_u32_tx(tx, &h.lo), 0x11111111u);
    ame_store_u32_tx(tx, &h.lo, 0xcafef00du);
    ASSERT_EQ(ame_load_u32_tx(tx, &h.hi), 0xdeadbeefu);
    ASSERT_EQ(ame_load_u32_tx(tx, &h.lo), 0xcafef00du);
    ame_store_u32_tx(tx, &h.hi, 0x33333333u);  /* overwrite one half again */
    ASSERT_EQ(ame_load_u32_tx(tx, &h.lo), 0xcafef00du);
  }
  ASSERT_EQ(h.lo, 0xcafef00du);
  ASSERT_EQ(h.hi, 0x33333333u);

  /* An aborted attempt's half-word store leaves both halves alone. */
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ame_store_u32_tx(tx, &h.lo, 0x44444444u);
    if (attempts == 1)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(h.lo, 0x44444444u);
  ASSERT_EQ(h.hi, 0x33333333u);

  /* Concurrently: one thread counts in each half of the same word. */
  h.lo = h.hi = 0;
  const unsigned iters = 50000;
  struct half_worker wl = {&h, 0, iters}, wh = {&h, 1, iters};
  pthread_t tl, th;
  thread_start(&tl, half_worker_main, &wl);
  thread_start(&th, half_worker_main, &wh);
  thread_join(tl);
  thread_join(th);
  ASSERT_EQ(h.lo, iters);
  ASSERT_EQ(h.hi, iters);
  leave_and_shutdown();
}

/* A word written as a whole and read by halves in the same transaction,
** and the other way round: the transaction sees its own writes whatever
** the width it reads them with. */
union word_halves {
  uintptr_t w;
  uint32_t h[2];
};

TEST_IMPL(load_store_mixed_width) {
  ame_tx_t *tx = enter();
  static union word_halves u;
  u.w = 0;
  AME_ATOMIC(tx) {
    ame_store_u32_tx(tx, &u.h[1], 0xabcd0123u);
    union word_halves exp = {.w = 0};
    exp.h[1] = 0xabcd0123u;
    ASSERT_EQ(ame_load_word_tx(tx, &u.w), exp.w);
    ame_store_word_tx(tx, &u.w, 0x0102030405060708ULL);
    exp.w = 0x0102030405060708ULL;
    ASSERT_EQ(ame_load_u32_tx(tx, &u.h[0]), exp.h[0]);
    ASSERT_EQ(ame_load_u32_tx(tx, &u.h[1]), exp.h[1]);
    ame_store_u32_tx(tx, &u.h[0], 0xffffffffu);
    exp.h[0] = 0xffffffffu;
    ASSERT_EQ(ame_load_word_tx(tx, &u.w), exp.w);
  }
  union word_halves exp = {.w = 0x0102030405060708ULL};
  exp.h[0] = 0xffffffffu;
  ASSERT_EQ(u.w, exp.w);
  ASSERT_EQ(tx_get(tx, &u.w), exp.w);
  leave_and_shutdown();
}

TEST_IMPL(load_store_double) {
  ame_tx_t *tx = enter();
  static double d[5];
  const double vals[5] = {3.25, -0.0, 1e308, -2.5e-310, INFINITY};
  AME_ATOMIC(tx) {
    for (int i = 0; i < 5; i++)
      ame_store_double_tx(tx, &d[i], vals[i]);
    for (int i = 0; i < 5; i++)
      ASSERT(memcmp(&(double){ame_load_double_tx(tx, &d[i])}, &vals[i],
                    sizeof(double)) == 0);
  }
  for (int i = 0; i < 5; i++)
    ASSERT(memcmp(&d[i], &vals[i], sizeof(double)) == 0);  /* bit for bit */
  ASSERT(signbit(d[1]));
  /* A NaN keeps its payload bits. */
  static double nan_slot;
  double nan_in = nan("0x5a5a");
  volatile double nan_out = 0;
  AME_ATOMIC(tx) {
    ame_store_double_tx(tx, &nan_slot, nan_in);
  }
  AME_ATOMIC(tx) { nan_out = ame_load_double_tx(tx, &nan_slot); }
  double out = nan_out;
  ASSERT(isnan(out));
  ASSERT(memcmp(&nan_in, &out, sizeof(double)) == 0);
  leave_and_shutdown();
}

/* Floats: bit for bit (-0.0, a NaN's payload), each a 32-bit access that
** leaves the other float of its word as it was, in the log and in memory. */
TEST_IMPL(load_store_float) {
  ame_tx_t *tx = enter();
  static union {
    uint64_t w;
    float f[2];
  } u;
  const float vals[4] = {3.25f, -0.0f, 3.4e38f, -1.5e-45f};
  for (int i = 0; i < 4; i++) {
    int k = i & 1;
    u.f[!k] = 7.5f;
    AME_ATOMIC(tx) {
      ame_store_float_tx(tx, &u.f[k], vals[i]);
      ASSERT(memcmp(&(float){ame_load_float_tx(tx, &u.f[k])}, &vals[i],
                    sizeof(float)) == 0);
      ASSERT(ame_load_float_tx(tx, &u.f[!k]) == 7.5f);
    }
    ASSERT(memcmp(&u.f[k], &vals[i], sizeof(float)) == 0);
    ASSERT(u.f[!k] == 7.5f);
  }
  static float nan_slot;
  float nan_in = nanf("0x2a5a");
  AME_ATOMIC(tx) { ame_store_float(&nan_slot, nan_in); }
  volatile float nan_out = 0;
  AME_ATOMIC(tx) { nan_out = ame_load_float(&nan_slot); }
  float out = nan_out;
  ASSERT(isnan(out));
  ASSERT(memcmp(&nan_in, &out, sizeof(float)) == 0);
  leave_and_shutdown();
}

/* The short forms, on ame_self(). */
TEST_IMPL(self_forms) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  static void *p;
  static uint64_t u64;
  static int64_t i64;
  static uint32_t u32[2];
  static int32_t i32[2];
  static double d;
  AME_ATOMIC(tx) {
    ame_store_word(&w, 7);
    ame_store_ptr(&p, &w);
    ame_store_u64(&u64, 1ULL << 63);
    ame_store_i64(&i64, -5);
    ame_store_u32(&u32[1], 9);
    ame_store_i32(&i32[0], -9);
    ame_store_double(&d, 0.5);
    ASSERT_EQ(ame_load_word(&w), 7);
    ASSERT_PTR_EQ(ame_load_ptr(&p), &w);
    ASSERT_EQ(ame_load_u64(&u64), 1ULL << 63);
    ASSERT_EQ(ame_load_i64(&i64), -5);
    ASSERT_EQ(ame_load_u32(&u32[1]), 9);
    ASSERT_EQ(ame_load_u32(&u32[0]), 0);
    ASSERT_EQ(ame_load_i32(&i32[0]), -9);
    ASSERT_DOUBLE_EQ(ame_load_double(&d), 0.5);
  }
  ASSERT_EQ(w, 7);
  ASSERT_PTR_EQ(p, &w);
  ASSERT_EQ(u64, 1ULL << 63);
  ASSERT_EQ(i64, -5);
  ASSERT_EQ(u32[1], 9);
  ASSERT_EQ(i32[0], -9);
  ASSERT_DOUBLE_EQ(d, 0.5);
  leave_and_shutdown();
}

TEST_IMPL(read_after_write) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  AME_ATOMIC(tx) {
    for (uintptr_t k = 1; k <= 100; k++) {
      ame_store_word_tx(tx, &w, k);
      ASSERT_EQ(ame_load_word_tx(tx, &w), k);
    }
  }
  ASSERT_EQ(w, 100);

  /* A large write set (the log has to grow, maybe restarting larger): every
  ** word reads back its own value, and all are committed. */
  enum { N = 20000 };
  uintptr_t *a = calloc(N, sizeof *a);
  ASSERT_NOT_NULL(a);
  AME_ATOMIC(tx) {
    for (uintptr_t k = 0; k < N; k++)
      ame_store_word_tx(tx, &a[k], k * 3 + 1);
    for (uintptr_t k = 0; k < N; k++)
      ASSERT_EQ(ame_load_word_tx(tx, &a[k]), k * 3 + 1);
    for (uintptr_t k = 0; k < N; k += 2)
      ame_store_word_tx(tx, &a[k], ame_load_word_tx(tx, &a[k]) + 1);
  }
  for (uintptr_t k = 0; k < N; k++)
    ASSERT_EQ(a[k], k * 3 + 1 + (k % 2 == 0));
  free(a);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** A store is invisible to other threads until its transaction commits.
** The writer stores inside a transaction, then holds the transaction open
** until the reader has tried to read the word a few times; the reader may
** see the old value or wait, but never the new value while the writer has
** not reached its commit.
*/

struct invisible {
  uintptr_t x;                /* the word */
  atomic_int stored;          /* the writer has stored, not committed */
  atomic_int committing;      /* the writer leaves its block now */
  atomic_int reader_tries;    /* the reader's attempts at reading x */
  atomic_int old_seen;        /* times the reader saw the old value */
  atomic_int new_seen_early;  /* times it saw the new one too early */
};

static void *invisible_reader(void *arg) {
  struct invisible *s = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&s->stored), 5000);
  for (;;) {
    volatile uintptr_t v = 0;
    AME_ATOMIC(tx) {
      atomic_fetch_add(&s->reader_tries, 1);
      v = ame_load_word_tx(tx, &s->x);
      if (v == 1 && !atomic_load(&s->committing))
        atomic_fetch_add(&s->new_seen_early, 1);
    }
    if (v == 1)
      break;
    atomic_fetch_add(&s->old_seen, 1);
    ASSERT_EQ(v, 0);
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(writes_invisible_before_commit) {
  ame_tx_t *tx = enter();
  static struct invisible s;
  pthread_t t;
  thread_start(&t, invisible_reader, &s);
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &s.x, 1);
    ASSERT_EQ(ame_load_word_tx(tx, &s.x), 1);
    atomic_store(&s.stored, 1);
    /* Hold the write uncommitted while the reader tries (a few tries: it may
    ** abort on our lock, or read the old value and commit). */
    int first = ame_tx_attempt(tx) == 0;
    if (first)
      WAIT_UNTIL(atomic_load(&s.reader_tries) >= 3, 2000);
    atomic_store(&s.committing, 1);
  }
  thread_join(t);
  ASSERT_EQ(atomic_load(&s.new_seen_early), 0);
  ASSERT_GE(atomic_load(&s.reader_tries), 1);
  ASSERT_EQ(s.x, 1);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** ame_prefetch_tx is a hint: it reads nothing into the transaction.  A word
** only prefetched, then changed by another thread's commit, does not make
** the prefetching transaction run again (a logged read of it would); any
** address, even NULL, is harmless.
*/
struct prefetched {
  uintptr_t w, out;
  atomic_int go, done;
};

static void *prefetch_writer(void *arg) {
  struct prefetched *p = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&p->go), 5000);
  AME_ATOMIC(tx) { ame_store_word_tx(tx, &p->w, 7); }
  atomic_store(&p->done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(prefetch_reads_nothing) {
  ame_tx_t *tx = enter();
  static struct prefetched p;
  pthread_t t;
  thread_start(&t, prefetch_writer, &p);
  static volatile int attempts;
  AME_ATOMIC(tx) {
    attempts++;
    ame_prefetch_tx(tx, &p.w);
    ame_prefetch_tx(tx, NULL);
    if (attempts == 1) {
      atomic_store(&p.go, 1);
      WAIT_UNTIL(atomic_load(&p.done), 5000);
    }
    ame_store_word_tx(tx, &p.out, 1);
  }
  thread_join(t);
  ASSERT_EQ(attempts, 1);
  ASSERT_EQ(p.w, 7);
  ASSERT_EQ(p.out, 1);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Words at the same offset in regions far apart (as in two threads' malloc
** arenas, 64 MiB-aligned: their addresses differ only in high bits) have
** orecs of their own: a transaction holding one word's lock does not stop
** another thread's transaction on the other.  The holder waits up to 5 s
** for the other to commit; if they shared an orec the other could not
** commit before the holder does.
*/
struct far {
  uintptr_t *x, *y;
  atomic_int held;     /* the holder has locked x */
  atomic_int done;     /* the other has committed y */
};

static void *far_writer(void *arg) {
  struct far *f = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&f->held), 5000);
  AME_ATOMIC(tx) { ame_store_word_tx(tx, f->y, 2); }
  atomic_store(&f->done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(orecs_far_apart) {
  ame_tx_t *tx = enter();
  const size_t mib = (size_t)1 << 20;
  static const size_t dist[] = {64, 128, 192, 1024, 4096};
  size_t len = 4096 * mib + 4096;
  char *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT(base != MAP_FAILED);
  /* An address 64 MiB-aligned, plus an offset, as in an arena. */
  uintptr_t a = ((uintptr_t)base + 64 * mib - 1) & ~(uintptr_t)(64 * mib - 1);
  size_t room = (size_t)((uintptr_t)base + len - a);
  for (size_t i = 0; i < sizeof dist / sizeof dist[0]; i++) {
    if (dist[i] * mib + 4096 > room) continue;
    static struct far f;
    f.x = (uintptr_t *)(a + 0x1240);
    f.y = (uintptr_t *)(a + dist[i] * mib + 0x1240);
    atomic_store(&f.held, 0);
    atomic_store(&f.done, 0);
    pthread_t t;
    thread_start(&t, far_writer, &f);
    static volatile int waited_out;
    waited_out = 0;
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, f.x, 1);
      atomic_store(&f.held, 1);
      if (ame_tx_attempt(tx) == 0 && !WAIT_UNTIL(atomic_load(&f.done), 5000))
        waited_out = 1;
    }
    thread_join(t);
    if (waited_out)
      AME_TEST_FAIL_("words %zu MiB apart share an orec", dist[i]);
    ASSERT_EQ(*f.x, 1);
    ASSERT_EQ(*f.y, 2);
  }
  ASSERT_EQ(munmap(base, len), 0);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** A run of granules has its orecs in address order within each 4 KiB page
** of the table, wherever in the address space it lies: a walk through
** memory then walks the table in order, as the hardware's prefetcher
** expects (stm_inline.h).  Computed, not dereferenced: the addresses are
** those of a main malloc arena and of a thread's arena on x86-64 Linux,
** one with bits 25 to 42 (those the fold reads) all set, and one with
** none of them set.
*/
TEST_IMPL(orecs_keep_order) {
  ame_tx_t *tx = enter();
  const struct ame__txhot *h = &tx->h;
  static const uintptr_t at[] = {0x55a7287a0000u, 0x7f3a4c000000u,
                                 0x7f3a4c001240u, (uintptr_t)0x7ffffff0000u,
                                 0x1000u};
  const uintptr_t per_page = 4096 / sizeof(uintptr_t); /* orecs */
  const uintptr_t span = per_page << AME__GRAIN_SHIFT; /* their bytes */
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    uintptr_t run = at[i] & ~(span - 1);
    uintptr_t *first = ame__orec_of(h, run);
    ASSERT_EQ((uintptr_t)(first - h->orecs) % per_page, 0);
    for (uintptr_t k = 1; k < per_page; k++) {
      uintptr_t *o = ame__orec_of(h, run + (k << AME__GRAIN_SHIFT) + 8);
      if (o != first + k)
        AME_TEST_FAIL_("granule %lu of the run at %#lx: orec %ld, not %lu",
                       (unsigned long)k, (unsigned long)run,
                       (long)(o - first), (unsigned long)k);
    }
  }
  leave_and_shutdown();
}
