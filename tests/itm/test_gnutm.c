/*
** tests/itm/test_gnutm.c — programs written with GCC's transactional
** memory extension (compiled with -fgnu-tm) running on libame-itm:
** every type the compiler instruments, transaction_safe functions,
** __transaction_cancel with nesting, __transaction_relaxed around an
** unsafe call (serial mode), indirect calls through the clone tables,
** threads sharing words with byte- and int-sized fields, and user actions
** with transactions of their own.
*/
#include "itm-test.h"

#include <complex.h>

#if !defined(AME_ITM_GNUTM)
/* Built without -fgnu-tm (a sanitizer build: tests/itm/meson.build). */
#define GNUTM_SKIP(name)                                                     \
  TEST_IMPL(name) { TEST_SKIP("built without -fgnu-tm (sanitizer)"); }
GNUTM_SKIP(gnutm_types)
GNUTM_SKIP(gnutm_cancel_nested)
GNUTM_SKIP(gnutm_relaxed_serial)
GNUTM_SKIP(gnutm_indirect_calls)
GNUTM_SKIP(gnutm_bytes_concurrent)
GNUTM_SKIP(gnutm_counter_concurrent)
GNUTM_SKIP(gnutm_user_actions)
GNUTM_SKIP(gnutm_stack_shared)
GNUTM_SKIP(gnutm_stack_copy_shared)
#else

struct mixed {
  char c;
  short s;
  int i;
  long l;
  float f;
  double d;
  long double e;
  double _Complex cd;
  char name[13];
};
static struct mixed gm;

static __attribute__((transaction_safe)) void fill(struct mixed *m, int k) {
  m->c = (char)k;
  m->s = (short)(k * 2);
  m->i = k * 3;
  m->l = (long)k * 4;
  m->f = (float)k / 2;
  m->d = (double)k / 4;
  m->e = (long double)k / 8;
  m->cd = k + 1.0 * I;
  memcpy(m->name, "transactions", 13);
  m->name[0] = (char)('a' + k);
}

TEST_IMPL(gnutm_types) {
  __transaction_atomic { fill(&gm, 5); }
  ASSERT_EQ(gm.c, 5);
  ASSERT_EQ(gm.s, 10);
  ASSERT_EQ(gm.i, 15);
  ASSERT_EQ(gm.l, 20);
  ASSERT(gm.f == 2.5f);
  ASSERT(gm.d == 1.25);
  ASSERT(gm.e == 0.625L);
  ASSERT(gm.cd == 5 + 1.0 * I);
  ASSERT_STR_EQ(gm.name, "fransactions");
  struct mixed copy;
  __transaction_atomic {
    gm.i += gm.s + gm.c;
    copy = gm; /* a transactional memcpy */
  }
  ASSERT_EQ(gm.i, 30);
  ASSERT_EQ(memcmp(&copy, &gm, sizeof copy), 0);
  ame_stats_t st;
  ame_stats_thread(ame_self(), &st);
  ASSERT(st.commits >= 2); /* they were ame transactions */
}

static long acct[2] = {100, 0};

TEST_IMPL(gnutm_cancel_nested) {
  int cancelled = 1;
  __transaction_atomic {
    acct[0] -= 30;
    acct[1] += 30;
    if (acct[0] < 1000) __transaction_cancel;
    cancelled = 0;
  }
  ASSERT_EQ(cancelled, 1);
  ASSERT_EQ(acct[0], 100);
  ASSERT_EQ(acct[1], 0);
  /* Nested: the inner commit is part of the outer transaction; an outer
  ** cancel from inside the inner one undoes both. */
  __transaction_atomic {
    acct[0] -= 10;
    __transaction_atomic { acct[1] += 10; }
  }
  ASSERT_EQ(acct[0], 90);
  ASSERT_EQ(acct[1], 10);
  __transaction_atomic [[outer]] {
    acct[0] -= 10;
    __transaction_atomic {
      acct[1] += 10;
      if (acct[1] > 0) __transaction_cancel [[outer]];
    }
  }
  ASSERT_EQ(acct[0], 90);
  ASSERT_EQ(acct[1], 10);
}

static char logbuf[64];

/* Not transaction_safe: the compiler runs it uninstrumented, after the
** switch to serial irrevocable mode. */
static void unsafe_log(int k) {
  snprintf(logbuf, sizeof logbuf, "k=%d", k);
}

TEST_IMPL(gnutm_relaxed_serial) {
  static int counter;
  __transaction_relaxed {
    counter++;
    unsafe_log(counter);
  }
  ASSERT_EQ(counter, 1);
  ASSERT_STR_EQ(logbuf, "k=1");
  __transaction_relaxed {
    unsafe_log(counter); /* only uninstrumented code: serial from start */
  }
  ASSERT_STR_EQ(logbuf, "k=1");
}

__attribute__((transaction_safe)) static int add_one(int x) {
  return x + 1;
}
__attribute__((transaction_safe)) static int twice(int x) { return 2 * x; }
typedef int safe_fn_t(int) __attribute__((transaction_safe));
static safe_fn_t *ops[2] = {add_one, twice};
static int results[2];

TEST_IMPL(gnutm_indirect_calls) {
  /* Calls through pointers to transaction_safe functions find their
  ** clones in the table the program registered at start. */
  __transaction_atomic {
    for (int k = 0; k < 2; k++) results[k] = ops[k](results[k] + 10);
  }
  ASSERT_EQ(results[0], 11);
  ASSERT_EQ(results[1], 20);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
}

/* Threads updating their own char and int fields of shared words. */
enum { GT_THREADS = 4, GT_ROUNDS = 20000 };
static struct {
  char c[GT_THREADS];
  short s[GT_THREADS];
  int i[GT_THREADS];
} __attribute__((aligned(8))) gfields;
static long gcounter;
static struct gate gt_gate;

static void *gt_bytes(void *arg) {
  int me = (int)(uintptr_t)arg;
  gate_wait(&gt_gate);
  for (int r = 0; r < GT_ROUNDS; r++) {
    __transaction_atomic {
      gfields.c[me]++;
      gfields.s[me] += 2;
      gfields.i[me] += 3;
    }
  }
  return NULL;
}

TEST_IMPL(gnutm_bytes_concurrent) {
  gate_init(&gt_gate);
  pthread_t th[GT_THREADS];
  for (int k = 0; k < GT_THREADS; k++)
    spawn(&th[k], gt_bytes, (void *)(uintptr_t)k);
  gate_open(&gt_gate);
  for (int k = 0; k < GT_THREADS; k++) thread_join(th[k]);
  for (int k = 0; k < GT_THREADS; k++) {
    ASSERT_EQ(gfields.c[k], (char)GT_ROUNDS);
    ASSERT_EQ(gfields.s[k], (short)(2 * GT_ROUNDS));
    ASSERT_EQ(gfields.i[k], 3 * GT_ROUNDS);
  }
}

static void *gt_counter(void *arg) {
  (void)arg;
  gate_wait(&gt_gate);
  for (int r = 0; r < GT_ROUNDS; r++) {
    __transaction_atomic { gcounter++; }
  }
  return NULL;
}

TEST_IMPL(gnutm_counter_concurrent) {
  gate_init(&gt_gate);
  pthread_t th[GT_THREADS];
  for (int k = 0; k < GT_THREADS; k++) spawn(&th[k], gt_counter, NULL);
  gate_open(&gt_gate);
  for (int k = 0; k < GT_THREADS; k++) thread_join(th[k]);
  ASSERT_EQ(gcounter, (long)GT_THREADS * GT_ROUNDS);
}
/* Objects on a thread's stack are written through (itm.h), yet another
** thread may reach them through a pointer: a counter in this test's frame,
** and a non-main thread's __thread counter (in its stack's range).  The
** owning thread adds 1, reads a few shared words, adds 1 again; the
** others add 2 to what they read and write those shared words (so the
** owner's transactions abort often).  No transaction may read the odd value
** between the owner's two additions (it was never committed), and no
** addition may be lost. */
enum { GS_ROUNDS = 20000 };
static struct gate gs_gate;
static atomic_int gs_done, gs_odd;
static long *_Atomic gs_tls_ptr;
static __thread long gs_tls;
static long gs_tls_final, gs_spread[8], gs_sink;

/* p, as a pointer the compiler cannot see through. */
static long *gs_opaque(long *p) {
  __asm__("" : "+r"(p));
  return p;
}

static void *gs_bump(void *arg) {
  long *c = arg;
  gate_wait(&gs_gate);
  for (int r = 0; r < GS_ROUNDS; r++) {
    long v = 0;
    __transaction_atomic {
      v = *c;
      *c = v + 2;
      gs_spread[r & 7]++; /* the owner reads these: it aborts often */
    }
    if (v & 1) atomic_fetch_add(&gs_odd, 1);
  }
  atomic_fetch_add(&gs_done, 1);
  return NULL;
}

/* The owner's rounds on its own c. */
static void gs_own(long *c) {
  for (int r = 0; r < GS_ROUNDS; r++) {
    __transaction_atomic {
      (*c)++;
      long sum = 0;
      for (int k = 0; k < 8; k++) sum += gs_spread[k];
      gs_sink = sum;
      (*c)++;
    }
  }
}

static void *gs_owner(void *arg) {
  (void)arg;
  atomic_store(&gs_tls_ptr, &gs_tls);
  gate_wait(&gs_gate);
  gs_own(gs_opaque(&gs_tls));
  while (atomic_load(&gs_done) < GT_THREADS) sched_yield();
  gs_tls_final = gs_tls;
  return NULL;
}

TEST_IMPL(gnutm_stack_shared) {
  /* A lost update needs an owner's abort to land between another
  ** thread's read and commit: a few rounds make it near certain. */
  for (int rep = 0; rep < 4; rep++) {
    long counter = 0;
    pthread_t th[GT_THREADS], owner;
    gate_init(&gs_gate);
    for (int k = 0; k < GT_THREADS; k++)
      spawn(&th[k], gs_bump, gs_opaque(&counter));
    gate_open(&gs_gate);
    gs_own(gs_opaque(&counter));
    for (int k = 0; k < GT_THREADS; k++) thread_join(th[k]);
    ASSERT_EQ(atomic_load(&gs_odd), 0);
    ASSERT_EQ(counter, (long)(GT_THREADS + 1) * 2 * GS_ROUNDS);

    gate_init(&gs_gate);
    atomic_store(&gs_done, 0);
    atomic_store(&gs_tls_ptr, NULL);
    spawn(&owner, gs_owner, NULL);
    while (atomic_load(&gs_tls_ptr) == NULL) sched_yield();
    for (int k = 0; k < GT_THREADS; k++)
      spawn(&th[k], gs_bump, atomic_load(&gs_tls_ptr));
    gate_open(&gs_gate);
    for (int k = 0; k < GT_THREADS; k++) thread_join(th[k]);
    thread_join(owner);
    ASSERT_EQ(atomic_load(&gs_odd), 0);
    ASSERT_EQ(gs_tls_final, (long)(GT_THREADS + 1) * 2 * GS_ROUNDS);
  }
}

/* A struct copy (_ITM_memcpy/_ITM_memmove) reads, as the loads do,
** through the STM what lies on the thread's stack above the transaction's
** own frames, which another thread may write through a pointer.  The main
** thread copies a struct of its frame, waits (inside the transaction) for
** another thread to commit new values to every field, then reads a field:
** the copy and that read must agree, so the first attempt aborts and the
** second sees the new values (a copy read plainly missed the conflict:
** the old copy with the new field). */
enum { SC_WORDS = 32 }; /* 256 bytes: copied by _ITM_memcpy/_ITM_memmove */
struct sc_words { /* granules of its own: the copy's (claimed: written
                  ** through) are not the original's, which the writer
                  ** must be able to lock while the copier waits */
  _Alignas(64) long v[SC_WORDS];
};
static struct sc_words *_Atomic sc_shared;
static atomic_int sc_attempts, sc_copied, sc_written;

static void *sc_writer(void *arg) {
  (void)arg;
  while (!atomic_load(&sc_copied)) sched_yield();
  struct sc_words *p = atomic_load(&sc_shared);
  __transaction_atomic {
    for (int k = 0; k < SC_WORDS; k++) p->v[k]++;
  }
  atomic_store(&sc_written, 1);
  return NULL;
}

/* Count an attempt; on the first, let the writer commit and wait for it. */
static __attribute__((transaction_pure)) void sc_attempt(void) {
  if (atomic_fetch_add(&sc_attempts, 1) != 0) return;
  atomic_store(&sc_copied, 1);
  while (!atomic_load(&sc_written)) sched_yield();
}

/* How many of w's words differ from v (out of line: the whole copy is
** made, by a copy barrier, not only the words a caller would read). */
static __attribute__((noinline)) int sc_differ(const struct sc_words *w,
                                               long v) {
  int n = 0;
  for (int k = 0; k < SC_WORDS; k++) n += w->v[k] != v;
  return n;
}

TEST_IMPL(gnutm_stack_copy_shared) {
  struct sc_words mine = {{0}}, copy;
  long last = -1;
  atomic_store(&sc_shared, &mine);
  pthread_t t;
  spawn(&t, sc_writer, NULL);
  struct sc_words *p = atomic_load(&sc_shared);
  __transaction_atomic {
    copy = *p;
    sc_attempt();
    last = p->v[SC_WORDS - 1];
  }
  thread_join(t);
  ASSERT_EQ(last, 1);
  ASSERT_EQ(sc_differ(&copy, last), 0);
  ASSERT_EQ(atomic_load(&sc_attempts), 2);
}

/* User actions from the compiler's instrumentation: undo actions run
** newest first on __transaction_cancel; a commit action runs a
** __transaction_atomic that cancels and a __transaction_relaxed of its own
** (outermost transactions: the one that registered it is over); and a
** __transaction_relaxed block (serial) has a commit action that waits for
** another thread's transaction. */
static char ua_order[8];
static int ua_n, ua_x, ua_y, ua_runs;
static long ua_v;
static void ua_record(void *arg) { ua_order[ua_n++] = (char)(uintptr_t)arg; }
static void ua_cancel(void *arg) {
  (void)arg;
  __transaction_atomic {
    ua_y = 1;
    if (ua_y) __transaction_cancel;
  }
  __transaction_relaxed { unsafe_log(ua_y); }
}
static void *ua_other(void *arg) {
  (void)arg;
  __transaction_atomic { ua_v++; }
  return NULL;
}
static void ua_wait_other(void *arg) {
  (void)arg;
  pthread_t th;
  spawn(&th, ua_other, NULL);
  thread_join(th);
}

TEST_IMPL(gnutm_user_actions) {
  watchdog_start(20, "transactions inside user actions");
  __transaction_atomic {
    ua_x = 1;
    _ITM_addUserUndoAction(ua_record, (void *)'A');
    _ITM_addUserUndoAction(ua_record, (void *)'B');
    _ITM_addUserUndoAction(ua_record, (void *)'C');
    if (ua_x) __transaction_cancel;
  }
  ASSERT_STR_EQ(ua_order, "CBA");
  ASSERT_EQ(ua_x, 0);
  __transaction_atomic {
    ua_runs++;
    ua_x++;
    _ITM_addUserCommitAction(ua_cancel, 1, NULL);
    _ITM_addUserCommitAction(ua_record, 1, (void *)'z');
  }
  ASSERT_EQ(ua_runs, 1);
  ASSERT_EQ(ua_x, 1);
  ASSERT_EQ(ua_y, 0);
  ASSERT_STR_EQ(logbuf, "k=0");
  ASSERT_STR_EQ(ua_order, "CBAz");
  __transaction_relaxed {
    _ITM_addUserCommitAction(ua_wait_other, 1, NULL);
    unsafe_log(2);
  }
  ASSERT_EQ(ua_v, 1);
  ASSERT_STR_EQ(logbuf, "k=2");
}
#endif /* AME_ITM_GNUTM */
