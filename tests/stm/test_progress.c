/*
** tests/stm/test_progress.c — contention management and progress: a long
** transaction commits while short writers hammer what it reads (escalating
** to irrevocability if it must), escalation happens after exactly
** escalate_after consecutive aborts, a load that met a lock waits out a
** long owner's attempt instead of running into it again, and snapshot
** extension lets a reader go on past unrelated commits (and stops it at
** related ones), after which a short attempt backs off from its
** transaction's second conflict on and a long reader runs again at once.
*/
#include "stm-test.h"
#include "../../stm/src/internal.h" /* ame_tx.backoffs */

#include <sys/resource.h>

/* ------------------------------------------------------------------------
** 2000 accounts; short writers move one unit between two random accounts
** (the sum is conserved); the long transaction reads all of them, checks
** the sum on every attempt (opacity), and writes one word.
*/
enum { NACC = 2000, ACC_INIT = 100, NWRITERS = 3, LONG_COMMITS = 5 };

struct long_state {
  struct gate gate;
  uintptr_t acc[NACC];
  uintptr_t result;
  atomic_ulong writer_commits;
};

static void *short_writer_main(void *arg) {
  struct long_state *s = arg;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(7 + (unsigned)(uintptr_t)pthread_self());
  unsigned long commits = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    unsigned i = (unsigned)rnd_below(&rs, NACC);
    unsigned j = (unsigned)rnd_below(&rs, NACC);
    AME_ATOMIC(tx) {
      uintptr_t a = ame_load_word_tx(tx, &s->acc[i]);
      if (a > 0 && i != j) {
        ame_store_word_tx(tx, &s->acc[i], a - 1);
        ame_store_word_tx(tx, &s->acc[j], ame_load_word_tx(tx, &s->acc[j]) + 1);
      }
    }
    commits++;
  }
  atomic_fetch_add(&s->writer_commits, commits);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(progress_long_reader) {
  ame_stm_config_t cfg = {0};  /* escalate_after: the default, 16 */
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  watchdog_start(40, "the long transaction never committed 5 times");
  ame_tx_t *tx = enter();
  static struct long_state s;
  for (int i = 0; i < NACC; i++)
    s.acc[i] = ACC_INIT;
  pthread_t th[NWRITERS];
  for (int i = 0; i < NWRITERS; i++)
    thread_start(&th[i], short_writer_main, &s);
  gate_open(&s.gate, NWRITERS);
  sleep_ms(20);  /* let the writers get going */

  uint64_t t0 = now_ms();
  uint64_t deadline = t0 + (uint64_t)30000 * slow_factor();
  unsigned commits = 0;
  volatile unsigned most_attempts = 0;
  while (commits < LONG_COMMITS || now_ms() < t0 + stress_ms()) {
    ASSERT_LT(now_ms(), deadline);  /* it must get through */
    AME_ATOMIC(tx) {
      uintptr_t sum = 0;
      for (int i = 0; i < NACC; i++) {
        sum += ame_load_word_tx(tx, &s.acc[i]);
        if (i % 256 == 255)
          sched_yield();  /* make it long: the writers get in */
      }
      ASSERT_EQ(sum, (uintptr_t)NACC * ACC_INIT);
      ame_store_word_tx(tx, &s.result, ame_load_word_tx(tx, &s.result) + 1);
      if (ame_tx_attempt(tx) + 1 > most_attempts)
        most_attempts = ame_tx_attempt(tx) + 1;
      /* Contention management: after 16 aborts in a row it turns
      ** irrevocable, which may cost one more restart. */
      ASSERT_LE(ame_tx_attempt(tx), 16 + 1);
    }
    commits++;
  }
  atomic_store(&s.gate.stop, 1);
  for (int i = 0; i < NWRITERS; i++)
    thread_join(th[i]);

  ASSERT_GE(commits, LONG_COMMITS);
  ASSERT_EQ(s.result, commits);
  uintptr_t sum = 0;
  for (int i = 0; i < NACC; i++)
    sum += s.acc[i];
  ASSERT_EQ(sum, (uintptr_t)NACC * ACC_INIT);
  ASSERT_GT(atomic_load(&s.writer_commits), 0);

  ame_stats_t st;
  ame_stats_thread(tx, &st);
  ASSERT_EQ(st.commits, commits);
  ASSERT_EQ(st.max_attempts, most_attempts);
  if (st.max_attempts > 16)
    ASSERT_GE(st.escalations, 1);
  if (st.escalations > 0)
    ASSERT_GE(st.irrevocable, st.escalations);
  printf("long reader: %u commits, %" PRIu64 " aborts, max %" PRIu64
         " attempts, %" PRIu64 " escalations; writers %lu commits\n",
         commits, st.aborts, st.max_attempts, st.escalations,
         atomic_load(&s.writer_commits));
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Escalation, made deterministic: every attempt of the victim reads w, has
** a helper commit a change to w and w2, and reads w2 (newer than its
** snapshot: the extension finds w changed and the attempt aborts).  Once
** the contention manager makes the victim irrevocable the helper is not
** asked and the victim commits.
*/
enum { ESCALATE = 4 };

struct escalation {
  uintptr_t w;
  _Alignas(64) uintptr_t w2;
  atomic_int req, ack, stop;
};

static void *bumper_main(void *arg) {
  struct escalation *e = arg;
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

TEST_IMPL(progress_escalation) {
  ame_stm_config_t cfg = {.escalate_after = ESCALATE};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  watchdog_start(20, "the victim never escalated and committed");
  ame_tx_t *tx = enter();
  static struct escalation e;
  pthread_t t;
  thread_start(&t, bumper_main, &e);
  for (int round = 1; round <= 3; round++) {
    volatile int attempts = 0;
    volatile int irrevocable_from = -1;
    AME_ATOMIC(tx) {
      attempts++;
      if (ame_tx_is_irrevocable(tx) && irrevocable_from < 0)
        irrevocable_from = (int)ame_tx_attempt(tx);
      (void)ame_load_word_tx(tx, &e.w);
      if (!ame_tx_is_irrevocable(tx)) {
        int r = atomic_fetch_add(&e.req, 1) + 1;
        ASSERT_WAIT(atomic_load(&e.ack) == r, 5000);
        (void)ame_load_word_tx(tx, &e.w2);  /* newer: extend, fail, abort */
        ASSERT(0 && "the attempt should have aborted");
      }
      ame_store_word_tx(tx, &e.w2, ame_load_word_tx(tx, &e.w2) + 1);
    }
    ASSERT_EQ(irrevocable_from, ESCALATE);
    ASSERT_EQ(attempts, ESCALATE + 1);
    ame_stats_t st;
    ame_stats_thread(tx, &st);
    ASSERT_EQ(st.escalations, (uint64_t)round);
    ASSERT_EQ(st.irrevocable, (uint64_t)round);
    ASSERT_EQ(st.aborts, (uint64_t)round * ESCALATE);
    ASSERT_EQ(st.aborts_by_cause[AME_ABORT_VALIDATE],
              (uint64_t)round * ESCALATE);
    ASSERT_EQ(st.max_attempts, ESCALATE + 1);
  }
  atomic_store(&e.stop, 1);
  thread_join(t);
  ASSERT_EQ(e.w, 3 * ESCALATE);           /* one bump per aborted attempt */
  ASSERT_EQ(e.w2, 3 * ESCALATE + 3);      /* and the victims' own writes */
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** The backoff watches the owner of the lock a load met.  The owner O
** writes w and, still in its attempt, waits for the reader R to abort on
** w, then holds on for HOLD_PAUSES pauses and notes how often R has
** aborted by then.  R's backoff after a first conflict is under 32 pauses;
** it then waits on for O's attempt to end (up to 4096 pauses) instead of
** running into the lock again, so it has aborted once.  Without the watch
** it has aborted two times or more: each backoff of a few dozen pauses runs
** it into the lock again.
**
** A trial in which O lost its CPU while it held w (an involuntary context
** switch of its thread, as a machine busy with other work makes likely)
** proves nothing: R rightly gives up waiting, aborts again, and after
** escalate_after aborts runs irrevocable, kills O's attempt and reads w
** before O's commit.  Such a trial is not counted; the case asks for one
** trial of up to TRIALS in which O kept its CPU and R aborted once.
*/
enum { HOLD_PAUSES = 1024, TRIALS = 200 };

struct watched {
  _Alignas(64) uintptr_t w;
  ame_tx_t *reader;
  uint64_t aborts_before;   /* R's aborts before the trial */
  atomic_int holding;
  uint64_t aborts_held;     /* R's aborts while O held w */
  int preempted;            /* O lost its CPU meanwhile */
};

static uint64_t aborts_of(const ame_tx_t *tx) {
  ame_stats_t st;
  ame_stats_thread(tx, &st);
  return st.aborts;
}

static long involuntary_switches(void) {
  struct rusage ru;
  ASSERT_EQ(getrusage(RUSAGE_THREAD, &ru), 0);
  return ru.ru_nivcsw;
}

static void pause_once(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  __asm__ __volatile__("" ::: "memory");
#endif
}

static void *watched_owner(void *arg) {
  struct watched *f = arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, &f->w, ame_load_word_tx(tx, &f->w) + 1);
    if (!atomic_load(&f->holding)) {  /* the first attempt only */
      long switches = involuntary_switches();
      atomic_store(&f->holding, 1);
      /* Spin, not yield: a yield on a busy machine gives the CPU away. */
      uint64_t deadline = now_ms() + 5000 * slow_factor();
      while (aborts_of(f->reader) == f->aborts_before)
        ASSERT(now_ms() < deadline && "the reader never met the lock");
      for (unsigned i = 0; i < HOLD_PAUSES; i++) pause_once();
      f->aborts_held = aborts_of(f->reader) - f->aborts_before;
      f->preempted = involuntary_switches() != switches;
    }
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(backoff_watches_owner) {
  watchdog_start(60, "a trial never ended");
  ame_tx_t *tx = enter();
  static struct watched f;
  f.reader = tx;
  int once = 0, counted = 0;
  for (int trial = 0; trial < TRIALS && !once; trial++) {
    ame_stats_t before, after;
    ame_stats_thread(tx, &before);
    f.aborts_before = before.aborts;
    atomic_store(&f.holding, 0);
    pthread_t t;
    thread_start(&t, watched_owner, &f);
    ASSERT_WAIT(atomic_load(&f.holding), 5000);
    volatile uintptr_t seen = 0;
    AME_ATOMIC(tx) { seen = ame_load_word_tx(tx, &f.w); }
    thread_join(t);
    ame_stats_thread(tx, &after);
    ASSERT_EQ(f.w, (uintptr_t)trial + 1);   /* O committed once a trial */
    ASSERT_GE(f.aborts_held, 1);
    if (seen == (uintptr_t)trial) {
      /* R read w before O's commit: only by running irrevocable, which
      ** killed O's attempt (O then committed after R). */
      ASSERT_EQ(after.escalations, before.escalations + 1);
    } else {
      ASSERT_EQ(seen, (uintptr_t)trial + 1);  /* it read O's commit */
    }
    if (f.preempted) continue;
    counted++;
    once = f.aborts_held == 1 && seen == (uintptr_t)trial + 1;
  }
  if (!once)
    fprintf(stderr, "%d of %d trials with the owner on its CPU\n", counted,
            TRIALS);
  ASSERT(once && "the reader ran into the held lock again in every trial");
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Snapshot extension.  A reads x; B commits; A reads y, which B's commit
** made newer than A's snapshot.
*/
struct ext {
  _Alignas(64) uintptr_t x;
  _Alignas(64) uintptr_t y;
  atomic_int a_read;
  atomic_int b_done;
  int b_writes_x;           /* B changes x too: the extension must fail */
};

static void *ext_b_main(void *arg) {
  struct ext *e = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&e->a_read), 5000);
  AME_ATOMIC(tx) {
    uintptr_t v = ame_load_word_tx(tx, &e->y) + 1;
    ame_store_word_tx(tx, &e->y, v);
    if (e->b_writes_x)
      ame_store_word_tx(tx, &e->x, v);
  }
  atomic_store(&e->b_done, 1);
  ame_thread_exit();
  return NULL;
}

static void extension_case(int b_writes_x) {
  ame_tx_t *tx = enter();
  static struct ext e;
  e.b_writes_x = b_writes_x;
  e.x = e.y = 5;
  pthread_t t;
  thread_start(&t, ext_b_main, &e);
  volatile int attempts = 0;
  volatile uintptr_t sx = 0, sy = 0;
  AME_ATOMIC(tx) {
    attempts++;
    sx = ame_load_word_tx(tx, &e.x);
    if (attempts == 1) {
      atomic_store(&e.a_read, 1);
      ASSERT_WAIT(atomic_load(&e.b_done), 5000);
    }
    sy = ame_load_word_tx(tx, &e.y);
    if (b_writes_x)
      ASSERT_EQ(sx, sy);  /* never old x with new y */
  }
  thread_join(t);
  ame_stats_t st;
  ame_stats_thread(tx, &st);
  if (b_writes_x) {
    ASSERT_EQ(attempts, 2);
    ASSERT_EQ(sx, 6);
    ASSERT_EQ(sy, 6);
    ASSERT_EQ(st.aborts, 1);
    ASSERT_EQ(st.aborts_by_cause[AME_ABORT_VALIDATE], 1);
  } else {
    ASSERT_EQ(attempts, 1);  /* extended, not aborted */
    ASSERT_EQ(sx, 5);
    ASSERT_EQ(sy, 6);
    ASSERT_EQ(st.aborts, 0);
    ASSERT_GE(st.extensions, 1);
  }
  leave_and_shutdown();
}

TEST_IMPL(snapshot_extension) { extension_case(0); }

TEST_IMPL(snapshot_extension_fails) { extension_case(1); }

/* ------------------------------------------------------------------------
** After its snapshot fails, a short attempt backs off from the
** transaction's second conflict on, and a long reader runs again at once.
** In each of its first `aborts` attempts, A reads x, then n more words; B
** commits x and y; A's read of y extends the snapshot, which finds x
** changed: a validation abort after 1 + n reads.
*/
enum { LONG_READS = 500 };

/* What A reads between x and y. */
static _Alignas(64) uintptr_t more_words[LONG_READS];

/* Run the case with n more reads; return the random backoffs A drew. */
static uint64_t reader_case(ame_tx_t *tx, struct ext *e, int n,
                            int aborts) {
  ame_stats_t before, after;
  ame_stats_thread(tx, &before);
  uint64_t backoffs = tx->backoffs;
  volatile int attempts = 0;
  volatile uintptr_t sx = 0, sy = 0;
  AME_ATOMIC(tx) {
    attempts++;
    sx = ame_load_word_tx(tx, &e->x);
    for (int i = 0; i < n; i++) (void)ame_load_word_tx(tx, &more_words[i]);
    if (attempts <= aborts) {
      atomic_store(&e->a_read, 0);
      atomic_store(&e->b_done, 0);
      pthread_t t;
      thread_start(&t, ext_b_main, e);
      atomic_store(&e->a_read, 1);
      ASSERT_WAIT(atomic_load(&e->b_done), 5000);
      thread_join(t);
    }
    sy = ame_load_word_tx(tx, &e->y);
    ASSERT_EQ(sx, sy);  /* never the old x with the new y */
  }
  ame_stats_thread(tx, &after);
  ASSERT_EQ(attempts, aborts + 1);
  ASSERT_EQ(after.aborts - before.aborts, (uint64_t)aborts);
  ASSERT_EQ(after.aborts_by_cause[AME_ABORT_VALIDATE] -
                before.aborts_by_cause[AME_ABORT_VALIDATE],
            (uint64_t)aborts);
  return tx->backoffs - backoffs;
}

TEST_IMPL(backoff_policy) {
  ame_tx_t *tx = enter();
  static struct ext e = {.b_writes_x = 1};
  ASSERT_EQ(reader_case(tx, &e, 0, 1), 0);          /* first: none */
  ASSERT_EQ(reader_case(tx, &e, 0, 2), 1);          /* second: one */
  ASSERT_EQ(reader_case(tx, &e, LONG_READS, 2), 0); /* long: none */
  ASSERT_EQ(reader_case(tx, &e, 2, 3), 2);
  ASSERT_EQ(e.x, 8);
  ASSERT_EQ(e.y, 8);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Opacity when a write locks an orec that changed after the snapshot.  A
** reads x; B commits new values to x and to words under the orec that A
** then writes; A's write takes that orec, and A reads another word under
** it.  A must not go on with the old x and the new word: the write (or the
** read after it) has to validate or abort.  Case 1: x is under that same
** orec; case 2: it is under another one.
*/
struct granule {
  _Alignas(32) uintptr_t a;   /* 32 bytes: the words of one orec */
  uintptr_t b;
  uintptr_t c;
  uintptr_t d;
};

struct lock_newer {
  struct granule g1;
  _Alignas(64) struct granule g2;
  int same_orec;            /* case 1: x is g2.a; case 2: x is g1.a */
  atomic_int a_read, b_done;
};

static void *lock_newer_b(void *arg) {
  struct lock_newer *s = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&s->a_read), 5000);
  AME_ATOMIC(tx) {
    uintptr_t v = ame_load_word_tx(tx, &s->g1.a) + 1;
    ame_store_word_tx(tx, &s->g1.a, v);
    ame_store_word_tx(tx, &s->g2.a, v);
    ame_store_word_tx(tx, &s->g2.b, v);
  }
  atomic_store(&s->b_done, 1);
  ame_thread_exit();
  return NULL;
}

static void lock_newer_case(ame_tx_t *tx, struct lock_newer *s, int same) {
  s->same_orec = same;
  atomic_store(&s->a_read, 0);
  atomic_store(&s->b_done, 0);
  pthread_t t;
  thread_start(&t, lock_newer_b, s);
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    uintptr_t x = ame_load_word_tx(tx, same ? &s->g2.a : &s->g1.a);
    if (attempts == 1) {
      atomic_store(&s->a_read, 1);
      ASSERT_WAIT(atomic_load(&s->b_done), 5000);
    }
    ame_store_word_tx(tx, &s->g2.c, x);      /* locks g2's orec */
    uintptr_t y = ame_load_word_tx(tx, &s->g2.b);
    ASSERT_EQ(x, y);  /* never the old x with the new y */
  }
  thread_join(t);
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(s->g2.c, s->g2.b);
}

TEST_IMPL(opacity_write_lock_newer) {
  ame_tx_t *tx = enter();
  static struct lock_newer s;
  lock_newer_case(tx, &s, 1);
  lock_newer_case(tx, &s, 0);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** A claimed granule (ame__tx_claim: bytes written in place, under the
** lock, outside the STM) has a new version once its lock goes, even when
** the attempt that claimed it is rolled back, and even when its version
** before was the clock's latest value (its writer was the last commit):
** a reader that loaded the orec, then the bytes written in place, then
** the orec again must not find it unchanged.  A reads x; B claims x,
** writes it in place and cancels (its undo log puts x back); A's
** validation must then fail, and A run again.
*/
struct claim_aba {
  _Alignas(64) uintptr_t x;
  atomic_int a_read, b_done;
};

static void claim_and_cancel(ame_tx_t *tx, uintptr_t *x) {
  jmp_buf env;
  if (setjmp(env) != 0) return; /* not expected: nothing aborts B */
  ame_tx_begin(tx, &env, "claim_and_cancel");
  ASSERT_EQ(ame_tx_save(tx, x, sizeof *x), 0);
  ame__tx_claim(tx, x);
  __atomic_store_n(x, 666, __ATOMIC_RELAXED);
  ame_tx_cancel(tx);
}

static void *claim_aba_b(void *arg) {
  struct claim_aba *s = arg;
  ame_tx_t *tx = enter();
  ASSERT_WAIT(atomic_load(&s->a_read), 5000);
  claim_and_cancel(tx, &s->x);
  ASSERT_EQ(__atomic_load_n(&s->x, __ATOMIC_RELAXED), 100);
  atomic_store(&s->b_done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(claim_abort_new_version) {
  ame_tx_t *tx = enter();
  static struct claim_aba s;
  tx_set(tx, &s.x, 100); /* the last commit: x's version is the clock's */
  pthread_t t;
  thread_start(&t, claim_aba_b, &s);
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    attempts++;
    ASSERT_EQ(ame_load_word_tx(tx, &s.x), 100);
    if (attempts == 1) {
      atomic_store(&s.a_read, 1);
      ASSERT_WAIT(atomic_load(&s.b_done), 5000);
      ame_tx_validate(tx); /* x's granule changed: aborts, runs again */
    }
  }
  thread_join(t);
  ASSERT_EQ(attempts, 2);
  leave_and_shutdown();
}
