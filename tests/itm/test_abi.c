/*
** tests/itm/test_abi.c — libame-itm's ABI called directly, as compiled
** code calls it: every load/store family at every size and variant
** (aligned and not), undo logging, the memory functions with overlaps,
** cancel with undo and commit actions, retry, the irrevocable switch and
** serial mode, nesting, allocation (C++'s operator clones too), the clone
** tables, ame's statistics and conflict sites, the order of user actions
** and transactions begun inside them, and the refusal of what is not
** supported.  Sub-word stores from threads that share words must all
** survive.
*/
#include "itm-test.h"

#include <complex.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

char *run_expect_abort(void (*fn)(void), int *aborted) {
  int fd[2];
  ASSERT_EQ(pipe(fd), 0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    dup2(fd[1], 2);
    close(fd[0]);
    signal(SIGABRT, SIG_DFL);
    fn();
    _exit(0);
  }
  close(fd[1]);
  static char buf[4096];
  size_t n = 0;
  ssize_t r;
  while (n < sizeof buf - 1 &&
         (r = read(fd[0], buf + n, sizeof buf - 1 - n)) > 0)
    n += (size_t)r;
  buf[n] = 0;
  close(fd[0]);
  int status;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  *aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  return buf;
}

TEST_IMPL(itm_begin_commit) {
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
  ASSERT_EQ(_ITM_getTransactionId(), 1);
  ASSERT(_ITM_versionCompatible(90));
  ASSERT(!_ITM_versionCompatible(91));
  ASSERT(strstr(_ITM_libraryVersion(), "ame-itm") != NULL);
  static uint64_t w;
  uint32_t a = ITM_BEGIN();
  ASSERT_EQ(a, a_runInstrumentedCode | a_saveLiveVariables);
  ASSERT_EQ(_ITM_inTransaction(), inRetryableTransaction);
  uint64_t id = _ITM_getTransactionId();
  ASSERT(id > 1);
  ASSERT_EQ(_ITM_getTransactionId(), id);
  ASSERT_EQ(ame_tx_depth(ame_self()), 1);
  _ITM_WU8(&w, 42);
  ASSERT_EQ(w, 0); /* buffered until the commit */
  _ITM_commitTransaction();
  ASSERT_EQ(w, 42);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
  ASSERT_EQ(ame_tx_depth(ame_self()), 0);
  ITM_BEGIN();
  ASSERT(_ITM_getTransactionId() != id);
  _ITM_commitTransaction();
}

/* One value of every type through every variant, at an aligned address
** inside a buffer whose other bytes must stay as they were. */
struct all {
  uint8_t u1;
  uint8_t pad1;
  uint16_t u2;
  uint32_t u4;
  uint64_t u8;
  float f;
  float pad2;
  double d;
  long double e;
  itm_cf cf;
  itm_cd cd;
  itm_ce ce;
  itm_m64 m64;
  itm_m128 m128;
};

#define CHECK_TYPE(T, type, field, v1, v2, v3, EQ)                           \
  do {                                                                       \
    type r_;                                                                 \
    ITM_BEGIN();                                                             \
    _ITM_W##T(&s.field, v1);                                                 \
    r_ = _ITM_R##T(&s.field);                                                \
    ASSERT(EQ(r_, v1));                                                      \
    r_ = _ITM_RaW##T(&s.field);                                              \
    ASSERT(EQ(r_, v1));                                                      \
    _ITM_WaW##T(&s.field, v2);                                               \
    r_ = _ITM_RaR##T(&s.field);                                              \
    ASSERT(EQ(r_, v2));                                                      \
    r_ = _ITM_RfW##T(&s.field);                                              \
    ASSERT(EQ(r_, v2));                                                      \
    _ITM_WaR##T(&s.field, v3);                                               \
    r_ = _ITM_R##T(&s.field);                                                \
    ASSERT(EQ(r_, v3));                                                      \
    _ITM_commitTransaction();                                                \
    r_ = s.field;                                                            \
    ASSERT(EQ(r_, v3));                                                      \
  } while (0)
#define EQ_PLAIN(a, b) ((a) == (b))
#define EQ_VEC(a, b) (memcmp(&(a), &(b), sizeof(a)) == 0)
/* x87 long doubles: only the 10 value bytes are defined. */
static int eq_e(long double a, long double b) { return a == b; }
#define EQ_E(a, b) eq_e((a), (b))
#define EQ_CE(a, b) (eq_e(creall(a), creall(b)) && eq_e(cimagl(a), cimagl(b)))

TEST_IMPL(itm_loads_stores) {
  static struct all s;
  static struct all before;
  memset(&s, 0xa5, sizeof s);
  CHECK_TYPE(U1, uint8_t, u1, 1, 0xff, 0x5a, EQ_PLAIN);
  CHECK_TYPE(U2, uint16_t, u2, 2, 0xffff, 0x1234, EQ_PLAIN);
  CHECK_TYPE(U4, uint32_t, u4, 3, 0xffffffffu, 0xdeadbeefu, EQ_PLAIN);
  CHECK_TYPE(U8, uint64_t, u8, 4, UINT64_MAX, 0x0123456789abcdefull, EQ_PLAIN);
  CHECK_TYPE(F, float, f, 1.5f, -2.25f, 3e30f, EQ_PLAIN);
  CHECK_TYPE(D, double, d, 1.5, -2.25, 3e300, EQ_PLAIN);
  CHECK_TYPE(E, long double, e, 1.5L, -2.25L, 1e4000L, EQ_E);
  CHECK_TYPE(CF, itm_cf, cf, 1.0f + 2.0f * I, -3.0f, 4.0f * I, EQ_PLAIN);
  CHECK_TYPE(CD, itm_cd, cd, 1.0 + 2.0 * I, -3.0, 4.0 * I, EQ_PLAIN);
  CHECK_TYPE(CE, itm_ce, ce, 1.0L + 2.0L * I, -3.0L, 4.0L * I, EQ_CE);
  itm_m64 a64 = {1, 2}, b64 = {-1, 7}, c64 = {9, 9};
  CHECK_TYPE(M64, itm_m64, m64, a64, b64, c64, EQ_VEC);
  itm_m128 a128 = {1, 2, 3, 4}, b128 = {-1, 7, 0, 1}, c128 = {9, 9, 9, 9};
  CHECK_TYPE(M128, itm_m128, m128, a128, b128, c128, EQ_VEC);
  /* The padding between the fields was never written. */
  ASSERT_EQ(s.pad1, 0xa5);
  uint32_t pad2;
  memcpy(&pad2, &s.pad2, 4);
  ASSERT_EQ(pad2, 0xa5a5a5a5u);
  /* A byte store leaves the rest of its word alone, committed or not. */
  memcpy(&before, &s, sizeof s);
  ITM_BEGIN();
  _ITM_WU1(&s.u1, 0x11);
  ASSERT_EQ(_ITM_RU2(&s.u2), before.u2);
  ASSERT_EQ(_ITM_RU4(&s.u4), before.u4);
  ASSERT_EQ(_ITM_RU8((const uint64_t *)(void *)&s), (before.u8 & 0) |
            (((uint64_t)before.u4 << 32) | ((uint64_t)before.u2 << 16) |
             ((uint64_t)before.pad1 << 8) | 0x11));
  _ITM_commitTransaction();
  ASSERT_EQ(s.u1, 0x11);
  ASSERT_EQ(s.pad1, before.pad1);
  ASSERT_EQ(s.u2, before.u2);
  ASSERT_EQ(s.u4, before.u4);
}

TEST_IMPL(itm_unaligned) {
  /* Values at every offset of a buffer, across word boundaries. */
  static unsigned char buf[64] __attribute__((aligned(8)));
  for (unsigned off = 0; off < 16; off++) {
    memset(buf, 0x77, sizeof buf);
    uint16_t v2 = (uint16_t)(0x0102 + off);
    uint32_t v4 = 0x0a0b0c0du + off;
    uint64_t v8 = 0x1122334455667788ull + off;
    double d = 1.25 + off;
    ITM_BEGIN();
    _ITM_WU2((uint16_t *)(void *)(buf + off), v2);
    _ITM_WU4((uint32_t *)(void *)(buf + 16 + off), v4);
    _ITM_WU8((uint64_t *)(void *)(buf + 32 + off), v8);
    ASSERT_EQ(_ITM_RU2((uint16_t *)(void *)(buf + off)), v2);
    ASSERT_EQ(_ITM_RU4((uint32_t *)(void *)(buf + 16 + off)), v4);
    ASSERT_EQ(_ITM_RU8((uint64_t *)(void *)(buf + 32 + off)), v8);
    _ITM_commitTransaction();
    uint16_t g2;
    uint32_t g4;
    uint64_t g8;
    memcpy(&g2, buf + off, 2);
    memcpy(&g4, buf + 16 + off, 4);
    memcpy(&g8, buf + 32 + off, 8);
    ASSERT_EQ(g2, v2);
    ASSERT_EQ(g4, v4);
    ASSERT_EQ(g8, v8);
    for (unsigned i = 0; i < sizeof buf; i++) {
      int written = (i >= off && i < off + 2) ||
                    (i >= 16 + off && i < 16 + off + 4) ||
                    (i >= 32 + off && i < 32 + off + 8);
      if (!written) ASSERT_EQ(buf[i], 0x77);
    }
    ITM_BEGIN();
    _ITM_WD((double *)(void *)(buf + 48 + (off & 7)), d);
    ASSERT(_ITM_RD((double *)(void *)(buf + 48 + (off & 7))) == d);
    _ITM_commitTransaction();
    double gd;
    memcpy(&gd, buf + 48 + (off & 7), 8);
    ASSERT(gd == d);
  }
}

/* A cancelled transaction's stores of every width leave no trace. */
TEST_IMPL(itm_abort_restores) {
  static unsigned char buf[32] __attribute__((aligned(8)));
  memset(buf, 0x33, sizeof buf);
  static volatile int attempts;
  attempts = 0;
  uint32_t a = ITM_BEGIN();
  attempts++;
  if (!(a & a_abortTransaction)) {
    _ITM_WU1(buf + 1, 1);
    _ITM_WU2((uint16_t *)(void *)(buf + 3), 2);
    _ITM_WU4((uint32_t *)(void *)(buf + 6), 3);
    _ITM_WU8((uint64_t *)(void *)(buf + 16), 4);
    _ITM_memsetW(buf + 24, 0, 8);
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_EQ(a, a_abortTransaction | a_restoreLiveVariables);
  ASSERT_EQ(attempts, 2);
  for (unsigned i = 0; i < sizeof buf; i++) ASSERT_EQ(buf[i], 0x33);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
}

/* Threads that share words, each storing only its own bytes (1-, 2- and
** unaligned 4-byte fields): if a sub-word store wrote back or merged a
** neighbour's bytes, a neighbour's increment would be lost. */
enum { BYTES_THREADS = 4, BYTES_ROUNDS = 20000 };
struct shared_words {
  uint8_t b[BYTES_THREADS];            /* word 0: one byte each */
  uint16_t h[BYTES_THREADS];           /* word 1: two bytes each */
  unsigned char u[BYTES_THREADS * 4 + 8]; /* words 2-4: unaligned u32s */
} __attribute__((aligned(8)));
static struct shared_words sw;
static struct gate bytes_gate;

static void *bytes_worker(void *arg) {
  unsigned me = (unsigned)(uintptr_t)arg;
  gate_wait(&bytes_gate);
  uint32_t *u = (uint32_t *)(void *)(sw.u + 3 + 4 * me);
  for (unsigned i = 0; i < BYTES_ROUNDS; i++) {
    ITM_BEGIN();
    _ITM_WU1(&sw.b[me], (uint8_t)(_ITM_RU1(&sw.b[me]) + 1));
    _ITM_WU2(&sw.h[me], (uint16_t)(_ITM_RU2(&sw.h[me]) + 1));
    _ITM_WU4(u, _ITM_RU4(u) + 1);
    _ITM_commitTransaction();
  }
  return NULL;
}

TEST_IMPL(itm_bytes_concurrent) {
  memset(&sw, 0, sizeof sw);
  gate_init(&bytes_gate);
  pthread_t th[BYTES_THREADS];
  for (unsigned i = 0; i < BYTES_THREADS; i++)
    spawn(&th[i], bytes_worker, (void *)(uintptr_t)i);
  gate_open(&bytes_gate);
  for (unsigned i = 0; i < BYTES_THREADS; i++) pthread_join(th[i], NULL);
  for (unsigned i = 0; i < BYTES_THREADS; i++) {
    uint32_t u;
    memcpy(&u, sw.u + 3 + 4 * i, 4);
    ASSERT_EQ(sw.b[i], (uint8_t)BYTES_ROUNDS);
    ASSERT_EQ(sw.h[i], (uint16_t)BYTES_ROUNDS);
    ASSERT_EQ(u, BYTES_ROUNDS);
  }
  ASSERT_EQ(sw.u[0] | sw.u[1] | sw.u[2], 0);
}

typedef void (*copy_fn)(void *, const void *, size_t);
static unsigned char src[1000], dst[1000], ref[1000];

/* Each case is a function of its own: _ITM_beginTransaction returns twice,
** and the loop counters around it would need to be volatile. */
__attribute__((noinline)) static void copy_case(copy_fn fn, int rt, int wt,
                                                size_t off, unsigned seed) {
  size_t n = 700 - off; /* more than one chunk, unaligned both ends */
  for (int i = 0; i < 1000; i++) {
    src[i] = (unsigned char)(i * 7 + seed);
    dst[i] = 0xee;
  }
  /* A transactional source is read after a buffered write to it. */
  ITM_BEGIN();
  if (rt) _ITM_WU1(&src[off + 5], 0x99);
  fn(dst + 1 + off, src + off, n);
  if (wt) ASSERT_EQ(_ITM_RU1(dst + 1 + off + 5), rt ? 0x99 : src[off + 5]);
  _ITM_commitTransaction();
  for (int i = 0; i < 1000; i++) {
    unsigned char want = 0xee;
    if ((size_t)i >= 1 + off && (size_t)i < 1 + off + n)
      want = src[i - 1];
    if (dst[i] != want)
      AME_TEST_FAIL_("case %u off %zu: dst[%d] = %d, want %d", seed, off, i,
                     dst[i], want);
  }
}

/* memmove with overlap through the STM, in one direction. */
__attribute__((noinline)) static void move_case(size_t from, size_t to) {
  size_t n = 600;
  for (int i = 0; i < 1000; i++) ref[i] = src[i] = (unsigned char)(i * 13);
  memmove(ref + to, ref + from, n);
  ITM_BEGIN();
  _ITM_memmoveRtWt(src + to, src + from, n);
  ASSERT_EQ(_ITM_RU1(src + to + 17), ref[to + 17]);
  _ITM_commitTransaction();
  ASSERT_EQ(memcmp(src, ref, sizeof src), 0);
}

__attribute__((noinline)) static void set_case(void (*fn)(void *, int, size_t),
                                               int c) {
  memset(dst, 1, sizeof dst);
  ITM_BEGIN();
  fn(dst + 3, c, 600);
  ASSERT_EQ(_ITM_RU8((const uint64_t *)(void *)(dst + 8)),
            0x0101010101010101ull * (uint64_t)c);
  _ITM_commitTransaction();
  for (int i = 0; i < 1000; i++)
    ASSERT_EQ(dst[i], (i >= 3 && i < 603) ? c : 1);
}

TEST_IMPL(itm_memcpy_memmove_memset) {
  static const struct {
    copy_fn fn;
    int rt, wt;
  } copies[] = {
      {_ITM_memcpyRnWt, 0, 1},     {_ITM_memcpyRnWtaR, 0, 1},
      {_ITM_memcpyRnWtaW, 0, 1},   {_ITM_memcpyRtWn, 1, 0},
      {_ITM_memcpyRtWt, 1, 1},     {_ITM_memcpyRtWtaR, 1, 1},
      {_ITM_memcpyRtWtaW, 1, 1},   {_ITM_memcpyRtaRWn, 1, 0},
      {_ITM_memcpyRtaRWt, 1, 1},   {_ITM_memcpyRtaRWtaR, 1, 1},
      {_ITM_memcpyRtaRWtaW, 1, 1}, {_ITM_memcpyRtaWWn, 1, 0},
      {_ITM_memcpyRtaWWt, 1, 1},   {_ITM_memcpyRtaWWtaR, 1, 1},
      {_ITM_memcpyRtaWWtaW, 1, 1}, {_ITM_memmoveRnWt, 0, 1},
      {_ITM_memmoveRnWtaR, 0, 1},  {_ITM_memmoveRnWtaW, 0, 1},
      {_ITM_memmoveRtWn, 1, 0},    {_ITM_memmoveRtWt, 1, 1},
      {_ITM_memmoveRtWtaR, 1, 1},  {_ITM_memmoveRtWtaW, 1, 1},
      {_ITM_memmoveRtaRWn, 1, 0},  {_ITM_memmoveRtaRWt, 1, 1},
      {_ITM_memmoveRtaRWtaR, 1, 1}, {_ITM_memmoveRtaRWtaW, 1, 1},
      {_ITM_memmoveRtaWWn, 1, 0},  {_ITM_memmoveRtaWWt, 1, 1},
      {_ITM_memmoveRtaWWtaR, 1, 1}, {_ITM_memmoveRtaWWtaW, 1, 1},
  };
  for (size_t c = 0; c < sizeof copies / sizeof copies[0]; c++)
    for (size_t off = 0; off < 9; off += 3)
      copy_case(copies[c].fn, copies[c].rt, copies[c].wt, off, (unsigned)c);
  move_case(300, 3); /* forwards */
  move_case(3, 300); /* backwards */
  set_case(_ITM_memsetW, 0x5c);
  set_case(_ITM_memsetWaR, 0x5d);
  set_case(_ITM_memsetWaW, 0x5e);
}

/* _ITM_L*: thread-owned data changed with plain stores is put back by an
** abort. */
TEST_IMPL(itm_log) {
  static uint8_t u1 = 1;
  static uint16_t u2 = 2;
  static uint32_t u4 = 4;
  static uint64_t u8 = 8;
  static double d = 1.5;
  static long double e = 2.5L;
  static itm_cd cd = 1.0;
  static char blob[37] = "thirty-seven bytes, give or take one";
  volatile uint32_t a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    _ITM_LU1(&u1);
    _ITM_LU2(&u2);
    _ITM_LU4(&u4);
    _ITM_LU8(&u8);
    _ITM_LD(&d);
    _ITM_LE(&e);
    _ITM_LCD(&cd);
    _ITM_LB(blob, sizeof blob);
    u1 = 0, u2 = 0, u4 = 0, u8 = 0, d = 0, e = 0, cd = 0;
    memset(blob, 0, sizeof blob);
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_EQ(u1, 1);
  ASSERT_EQ(u2, 2);
  ASSERT_EQ(u4, 4);
  ASSERT_EQ(u8, 8);
  ASSERT(d == 1.5);
  ASSERT(e == 2.5L);
  ASSERT(cd == 1.0);
  ASSERT_STR_EQ(blob, "thirty-seven bytes, give or take one");
}

static int undo_ran, commit_ran;
static void on_undo(void *arg) { undo_ran += (int)(uintptr_t)arg; }
static void on_commit(void *arg) { commit_ran += (int)(uintptr_t)arg; }

TEST_IMPL(itm_cancel_and_actions) {
  static uint64_t w = 5;
  uint32_t a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    _ITM_addUserUndoAction(on_undo, (void *)1);
    _ITM_addUserCommitAction(on_commit, 1, (void *)10);
    _ITM_WU8(&w, 6);
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_EQ(w, 5);
  ASSERT_EQ(undo_ran, 1);
  ASSERT_EQ(commit_ran, 0);
  ITM_BEGIN();
  _ITM_addUserUndoAction(on_undo, (void *)1);
  _ITM_addUserCommitAction(on_commit, 1, (void *)10);
  _ITM_WU8(&w, 7);
  _ITM_commitTransaction();
  ASSERT_EQ(w, 7);
  ASSERT_EQ(undo_ran, 1);
  ASSERT_EQ(commit_ran, 10);
}

/* userRetry rolls back and runs the transaction again. */
TEST_IMPL(itm_retry) {
  static uint64_t w;
  static volatile int runs;
  runs = 0;
  uint32_t a = ITM_BEGIN();
  runs++;
  ASSERT(!(a & a_abortTransaction));
  ASSERT_EQ(_ITM_RU8(&w), 0); /* the first run's write was undone */
  _ITM_WU8(&w, (uint64_t)runs);
  if (runs < 3) {
    _ITM_addUserUndoAction(on_undo, (void *)100);
    _ITM_abortTransaction(userRetry);
  }
  _ITM_commitTransaction();
  ASSERT_EQ(runs, 3);
  ASSERT_EQ(w, 3);
  ASSERT_EQ(undo_ran, 200);
}

/* The switch to irrevocable runs the transaction again in serial,
** irrevocable mode from its start; it commits once. */
TEST_IMPL(itm_irrevocable) {
  static uint64_t w;
  static volatile int runs;
  ame_stats_t before, after;
  runs = 0;
  ITM_BEGIN(); /* registers the thread */
  _ITM_commitTransaction();
  ame_stats_thread(ame_self(), &before);
  ITM_BEGIN();
  runs++;
  _ITM_WU8(&w, _ITM_RU8(&w) + 1);
  _ITM_changeTransactionMode(modeSerialIrrevocable);
  ASSERT_EQ(_ITM_inTransaction(), inIrrevocableTransaction);
  _ITM_changeTransactionMode(modeSerialIrrevocable); /* again: no-op */
  _ITM_WU8(&w, _ITM_RU8(&w) + 1);
  _ITM_commitTransaction();
  ame_stats_thread(ame_self(), &after);
  ASSERT_EQ(runs, 2);
  ASSERT_EQ(w, 2);
  ASSERT_EQ(after.commits - before.commits, 1);
  ASSERT_EQ(after.irrevocable - before.irrevocable, 1);
}

/* While one thread runs serial (uninstrumented code), no other ABI
** transaction runs: a counter the serial one changes with plain stores
** is never seen half-updated. */
static uint64_t ser_a, ser_b;
static struct gate ser_gate;
static void *ser_reader(void *arg) {
  (void)arg;
  gate_wait(&ser_gate);
  while (!gate_stopped(&ser_gate)) {
    ITM_BEGIN();
    uint64_t a = _ITM_RU8(&ser_a), b = _ITM_RU8(&ser_b);
    _ITM_commitTransaction();
    ASSERT_EQ(a, b);
  }
  return NULL;
}

TEST_IMPL(itm_serial_excludes) {
  gate_init(&ser_gate);
  pthread_t th;
  spawn(&th, ser_reader, NULL);
  gate_open(&ser_gate);
  for (int i = 0; i < 2000; i++) {
    uint32_t a = _ITM_beginTransaction(pr_uninstrumentedCode);
    ASSERT_EQ(a & (a_runUninstrumentedCode | a_runInstrumentedCode),
              a_runUninstrumentedCode);
    ASSERT_EQ(_ITM_inTransaction(), inIrrevocableTransaction);
    __atomic_store_n(&ser_a, ser_a + 1, __ATOMIC_RELAXED);
    for (volatile int k = 0; k < 50; k++) {
    }
    __atomic_store_n(&ser_b, ser_b + 1, __ATOMIC_RELAXED);
    _ITM_commitTransaction();
  }
  gate_stop(&ser_gate);
  pthread_join(th, NULL);
  ASSERT_EQ(ser_a, 2000);
}

TEST_IMPL(itm_nested) {
  static uint64_t w;
  ITM_BEGIN();
  _ITM_WU8(&w, 1);
  uint32_t a = ITM_BEGIN();
  ASSERT_EQ(a, a_runInstrumentedCode);
  ASSERT_EQ(ame_tx_depth(ame_self()), 2);
  _ITM_WU8(&w, _ITM_RU8(&w) + 1);
  _ITM_commitTransaction();
  ASSERT_EQ(w, 0); /* the inner commit only left the inner level */
  ASSERT_EQ(ame_tx_depth(ame_self()), 1);
  _ITM_commitTransaction();
  ASSERT_EQ(w, 2);
  /* An outer abort from inside a nested transaction rolls back both. */
  volatile int runs = 0;
  a = ITM_BEGIN();
  runs++;
  if (!(a & a_abortTransaction)) {
    _ITM_WU8(&w, 10);
    ITM_BEGIN();
    _ITM_WU8(&w, 11);
    _ITM_abortTransaction(userAbort | outerAbort);
  }
  ASSERT_EQ(runs, 2);
  ASSERT_EQ(w, 2);
  ASSERT_EQ(ame_tx_depth(ame_self()), 0);
}

/* An ABI transaction inside an AME_ATOMIC block joins it: its stores
** commit with the block, and a retry from inside restarts the block. */
__attribute__((noinline)) static void abi_add(uint64_t *w, uint64_t d,
                                              int retry) {
  ITM_BEGIN();
  ASSERT_EQ(ame_tx_depth(ame_self()), 2);
  _ITM_WU8(w, _ITM_RU8(w) + d);
  if (retry) _ITM_abortTransaction(userRetry);
  _ITM_commitTransaction();
}

TEST_IMPL(itm_inside_ame_atomic) {
  ame_tx_t *tx = ame_thread_enter();
  ASSERT_NOT_NULL(tx);
  static uint64_t w;
  volatile int runs = 0;
  AME_ATOMIC(tx) {
    runs++;
    abi_add(&w, 5, runs == 1);
    ASSERT_EQ(ame_tx_depth(tx), 1);
    ASSERT_EQ(w, 0); /* still buffered: the block has not committed */
  }
  ASSERT_EQ(runs, 2);
  ASSERT_EQ(w, 5);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
  /* Afterwards the thread's ABI transactions are its own again. */
  uint32_t a = ITM_BEGIN();
  ASSERT_EQ(a, a_runInstrumentedCode | a_saveLiveVariables);
  _ITM_WU8(&w, 6);
  _ITM_commitTransaction();
  ASSERT_EQ(w, 6);
  ame_thread_exit();
}

TEST_IMPL(itm_malloc_free) {
  static uint64_t *volatile keep;
  uint32_t a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    uint64_t *p = _ITM_malloc(64);
    ASSERT_NOT_NULL(p);
    uint64_t *z = _ITM_calloc(4, 8);
    ASSERT_NOT_NULL(z);
    ASSERT_EQ(z[3], 0);
    _ITM_abortTransaction(userAbort); /* both freed (LeakSanitizer) */
  }
  ITM_BEGIN();
  keep = _ITM_malloc(64);
  _ITM_WU8(keep, 99);
  _ITM_commitTransaction();
  ASSERT_EQ(*keep, 99);
  ITM_BEGIN();
  _ITM_free(keep);
  _ITM_commitTransaction();
  ame_thread_idle(ame_self()); /* the deferred free happens */
  void *p = _ITM_malloc(8); /* outside a transaction: plain malloc */
  _ITM_free(p);
}

/* This program's own C++ operators (it has no libstdc++): operator
** new(size_t), new[], delete(void *), delete[], by their mangled names,
** counting the blocks alive and the deletes.  libame-itm's clones call
** them; since they are not libstdc++'s, a committed delete runs from a
** commit handler after ame_quiesce().  The nothrow new is absent. */
static atomic_long cxx_live, cxx_deletes;
void *_Znwm(size_t n) {
  atomic_fetch_add(&cxx_live, 1);
  return malloc(n ? n : 1);
}
void *_Znam(size_t n) { return _Znwm(n); }
void _ZdlPv(void *p) {
  if (p == NULL) return;
  atomic_fetch_sub(&cxx_live, 1);
  atomic_fetch_add(&cxx_deletes, 1);
  free(p);
}
void _ZdaPv(void *p) { _ZdlPv(p); }

TEST_IMPL(itm_cxx_operators) {
  static void *volatile keep, *volatile arr;
  /* Aborted: the blocks the attempt made are deleted. */
  uint32_t a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    ASSERT_NOT_NULL(_ZGTtnwm(24));
    ASSERT_NOT_NULL(_ZGTtnam(40));
    ASSERT_EQ(atomic_load(&cxx_live), 2);
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_EQ(atomic_load(&cxx_live), 0);
  ASSERT_EQ(atomic_load(&cxx_deletes), 2);
  /* Committed: made in one transaction, stored through the STM. */
  ITM_BEGIN();
  keep = _ZGTtnwm(sizeof(uint64_t));
  arr = _ZGTtnam(4 * sizeof(uint64_t));
  _ITM_WU8((uint64_t *)keep, 77);
  _ITM_commitTransaction();
  ASSERT_EQ(*(uint64_t *)keep, 77);
  ASSERT_EQ(atomic_load(&cxx_live), 2);
  /* A delete in an attempt that aborts has no effect. */
  a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    _ZGTtdlPvm(keep, sizeof(uint64_t));
    _ZGTtdaPv(arr);
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_EQ(atomic_load(&cxx_live), 2);
  ASSERT_EQ(atomic_load(&cxx_deletes), 2);
  /* A delete in one that commits happens at the commit. */
  ITM_BEGIN();
  _ZGTtdlPvm(keep, sizeof(uint64_t));
  _ZGTtdaPv(arr);
  _ZGTtdlPv(NULL);
  ASSERT_EQ(atomic_load(&cxx_live), 2);
  _ITM_commitTransaction();
  ASSERT_EQ(atomic_load(&cxx_live), 0);
  ASSERT_EQ(atomic_load(&cxx_deletes), 4);
  /* Made and deleted in one transaction. */
  ITM_BEGIN();
  _ZGTtdlPv(_ZGTtnwm(16));
  _ITM_commitTransaction();
  ASSERT_EQ(atomic_load(&cxx_live), 0);
  /* Outside a transaction the clones are the operators. */
  void *p = _ZGTtnwm(8);
  ASSERT_EQ(atomic_load(&cxx_live), 1);
  _ZGTtdlPv(p);
  ASSERT_EQ(atomic_load(&cxx_live), 0);
}

static int plain_fn(int x) { return x + 1; }
static int clone_fn(int x) { return x + 100; }
/* A function in no clone table (this file is compiled with -fgnu-tm, so
** its own functions may have clones). */
#define NO_CLONE ((void *)getppid)

TEST_IMPL(itm_clone_tables) {
  static void *table[2] = {(void *)plain_fn, (void *)clone_fn};
  static volatile int runs;
  _ITM_registerTMCloneTable(table, 1);
  ITM_BEGIN();
  runs++;
  int (*f)(int) = (int (*)(int))_ITM_getTMCloneSafe((void *)plain_fn);
  ASSERT_EQ(f(1), 101);
  f = (int (*)(int))_ITM_getTMCloneOrIrrevocable((void *)plain_fn);
  ASSERT_EQ(f(1), 101);
  ASSERT_EQ(_ITM_inTransaction(), runs == 1 ? inRetryableTransaction
                                            : inIrrevocableTransaction);
  /* No clone: the original, run irrevocably (the transaction restarts
  ** serial once, and comes back here). */
  ASSERT_PTR_EQ(_ITM_getTMCloneOrIrrevocable(NO_CLONE), NO_CLONE);
  ASSERT_EQ(_ITM_inTransaction(), inIrrevocableTransaction);
  _ITM_commitTransaction();
  ASSERT_EQ(runs, 2);
  _ITM_deregisterTMCloneTable(table);
  ITM_BEGIN();
  f = (int (*)(int))_ITM_getTMCloneOrIrrevocable((void *)plain_fn);
  ASSERT_EQ(f(1), 2); /* the table is gone */
  _ITM_commitTransaction();
}

/* ame's statistics count ABI transactions, and conflict reports name them
** by the caller of _ITM_beginTransaction. */
static uint64_t hot;
static struct gate stats_gate;
static atomic_uint_fast64_t bumps;
__attribute__((noinline)) static void bump_hot(void) {
  ITM_BEGIN();
  uint64_t v = _ITM_RU8(&hot);
  for (volatile int k = 0; k < 100; k++) {
  }
  _ITM_WU8(&hot, v + 1);
  _ITM_commitTransaction();
}
static void *stats_worker(void *arg) {
  (void)arg;
  gate_wait(&stats_gate);
  while (!gate_stopped(&stats_gate)) {
    bump_hot();
    atomic_fetch_add(&bumps, 1);
  }
  return NULL;
}

TEST_IMPL(itm_stats_and_site) {
  ame_stats_reset();
  gate_init(&stats_gate);
  pthread_t th[2];
  for (int i = 0; i < 2; i++) spawn(&th[i], stats_worker, NULL);
  gate_open(&stats_gate);
  /* Until the two have conflicted a few times (or give up: skip). */
  ame_conflict_t c[4];
  size_t n = 0;
  for (int ms = 0; ms < 10000 && (n == 0 || c[0].count < 10); ms += 10) {
    sleep_ms(10);
    n = ame_conflicts(c, 4);
  }
  gate_stop(&stats_gate);
  for (int i = 0; i < 2; i++) thread_join(th[i]);
  ASSERT_EQ(hot, atomic_load(&bumps));
  ame_stats_t st;
  ame_stats_total(&st);
  ASSERT(st.commits >= hot);
  if (n == 0) TEST_SKIP("the two threads never conflicted");
  n = ame_conflicts(c, 4);
  ASSERT_PTR_EQ((void *)c[0].addr, &hot);
  ASSERT_NOT_NULL(c[0].site);
  /* "[run-itm-tests+0x...]" (a static function has no dynamic symbol). */
  if (strstr(c[0].site, "run-itm-tests+0x") == NULL)
    AME_TEST_FAIL_("site \"%s\"", c[0].site);
}

/* libame-itm's call-site table (itm.c, internal). */
const char *ame_itm__site_name(uintptr_t rip);
unsigned ame_itm__site_slot(uintptr_t rip);

enum { SITES = 40 };
static uintptr_t site_rips[SITES];
static const char *site_names[SITES];

static void *site_lookups(void *arg) {
  (void)arg;
  for (int i = SITES - 1; i >= 0; i--)
    if (ame_itm__site_name(site_rips[i]) != site_names[i]) return (void *)1;
  return NULL;
}

/* Return addresses whose lookups start at one slot of the table fill its
** probe run, and the rest go to the list behind it: each still gets its
** own name, the same pointer at every lookup, from any thread. */
TEST_IMPL(itm_site_table) {
  /* Addresses in the first pages, where nothing is mapped: dladdr() names
  ** no object, so each name is "[0xADDR]". */
  unsigned slot = ame_itm__site_slot(16);
  int n = 0;
  for (uintptr_t rip = 16; n < SITES && rip < 65536 * 1024; rip += 16)
    if (ame_itm__site_slot(rip) == slot) site_rips[n++] = rip;
  ASSERT_EQ(n, SITES);
  for (int i = 0; i < SITES; i++) {
    site_names[i] = ame_itm__site_name(site_rips[i]);
    char want[32];
    snprintf(want, sizeof want, "[0x%lx]", (unsigned long)site_rips[i]);
    ASSERT_NOT_NULL(site_names[i]);
    if (strcmp(site_names[i], want) != 0)
      AME_TEST_FAIL_("site %d: \"%s\", not \"%s\"", i, site_names[i], want);
  }
  for (int i = 0; i < SITES; i++)
    ASSERT_PTR_EQ(ame_itm__site_name(site_rips[i]), site_names[i]);
  pthread_t th;
  spawn(&th, site_lookups, NULL);
  void *bad = (void *)1;
  ASSERT_EQ(pthread_join(th, &bad), 0);
  ASSERT_PTR_EQ(bad, NULL);
}

static void call_cxa_throw(void) { _ITM_cxa_throw(NULL, NULL, NULL); }
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
static void nothrow_new_missing(void) {
  ITM_BEGIN();
  _ZGTtnwmRKSt9nothrow_t(8, NULL);
}
#endif
static void cancel_nested(void) {
  ITM_BEGIN();
  ITM_BEGIN();
  _ITM_abortTransaction(userAbort);
}
static void cancel_irrevocable(void) {
  ITM_BEGIN();
  _ITM_changeTransactionMode(modeSerialIrrevocable);
  _ITM_abortTransaction(userAbort);
}
static void cancel_inside_ame_atomic(void) {
  ame_tx_t *tx = ame_thread_enter();
  AME_ATOMIC(tx) {
    ITM_BEGIN();
    _ITM_abortTransaction(userAbort);
  }
}
/* Going serial inside an AME_ATOMIC block: uninstrumented code would read
** memory the block has buffered writes to (refused). */
static void irrevocable_inside_ame_atomic(void) {
  ame_tx_t *tx = ame_thread_enter();
  AME_ATOMIC(tx) {
    ITM_BEGIN();
    _ITM_changeTransactionMode(modeSerialIrrevocable);
    _ITM_commitTransaction();
  }
}
static void no_clone_inside_ame_atomic(void) {
  ame_tx_t *tx = ame_thread_enter();
  AME_ATOMIC(tx) {
    ITM_BEGIN();
    _ITM_getTMCloneOrIrrevocable(NO_CLONE);
    _ITM_commitTransaction();
  }
}
static void safe_without_clone(void) {
  ITM_BEGIN();
  _ITM_getTMCloneSafe(NO_CLONE);
}

/* Barriers on a thread that never began a transaction (a fresh one: the
** forked child's main thread may have run some). */
static void on_fresh_thread(void *(*fn)(void *)) {
  pthread_t th;
  ASSERT_EQ(pthread_create(&th, NULL, fn, NULL), 0);
  pthread_join(th, NULL);
}
static uint64_t stray[4];
static void *stray_ru8(void *arg) {
  (void)arg;
  stray[0] = _ITM_RU8(&stray[1]);
  return NULL;
}
static void *stray_rar_u4(void *arg) {
  (void)arg;
  stray[0] = _ITM_RaRU4((uint32_t *)&stray[1] + 1);
  return NULL;
}
static void *stray_ru1(void *arg) {
  (void)arg;
  stray[0] = _ITM_RU1((uint8_t *)&stray[1] + 3);
  return NULL;
}
static void *stray_rd_unaligned(void *arg) {
  (void)arg;
  stray[0] = (uint64_t)_ITM_RD((double *)(void *)((char *)&stray[1] + 4));
  return NULL;
}
static void *stray_wu8(void *arg) {
  (void)arg;
  _ITM_WU8(&stray[1], 1);
  return NULL;
}
static void load_outside_u8(void) { on_fresh_thread(stray_ru8); }
static void load_outside_u4(void) { on_fresh_thread(stray_rar_u4); }
static void load_outside_u1(void) { on_fresh_thread(stray_ru1); }
static void load_outside_unaligned(void) {
  on_fresh_thread(stray_rd_unaligned);
}
static void store_outside(void) { on_fresh_thread(stray_wu8); }

TEST_IMPL(itm_refused) {
  static const struct {
    void (*fn)(void);
    const char *msg;
  } cases[] = {
      {call_cxa_throw, "ame-itm: _ITM_cxa_throw: C++ exceptions"},
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
      /* (The sanitizers' runtimes define every operator new.) */
      {nothrow_new_missing,
       "ame-itm: _ZGTtnwmRKSt9nothrow_t (operator new, nothrow): the program "
       "has no _ZnwmRKSt9nothrow_t (no libstdc++)"},
#endif
      {cancel_nested, "ame-itm: _ITM_abortTransaction: __transaction_cancel "
                      "of a nested transaction"},
      {cancel_irrevocable, "ame-itm: _ITM_abortTransaction: an irrevocable"},
      {safe_without_clone, "ame-itm: _ITM_getTMCloneSafe: no transactional"},
      {cancel_inside_ame_atomic, "ame-itm: _ITM_abortTransaction: cannot "
                                 "cancel a transaction begun by ame's own"},
      {irrevocable_inside_ame_atomic,
       "ame-itm: _ITM_changeTransactionMode: cannot go serial inside a "
       "transaction begun by ame's own API"},
      {no_clone_inside_ame_atomic,
       "ame-itm: _ITM_getTMCloneOrIrrevocable: cannot go serial inside a "
       "transaction begun by ame's own API"},
      {load_outside_u8, "ame-itm: _ITM_RU8 called outside a transaction"},
      {load_outside_u4, "ame-itm: _ITM_RaRU4 called outside a transaction"},
      {load_outside_u1, "ame-itm: _ITM_RU1 called outside a transaction"},
      {load_outside_unaligned,
       "ame-itm: _ITM_RD called outside a transaction"},
      {store_outside, "ame-itm: _ITM_WU8 called outside a transaction"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int aborted = 0;
    char *err = run_expect_abort(cases[i].fn, &aborted);
    if (!aborted) AME_TEST_FAIL_("case %zu did not abort: %s", i, err);
    if (strstr(err, cases[i].msg) == NULL)
      AME_TEST_FAIL_("expected \"%s\" in: %s", cases[i].msg, err);
  }
}

/* ------------------------------------------------------------------------
** User actions: their order, serial mode, and transactions begun inside
** them.
*/

static char act_order[16];
static unsigned act_n;
static void record(void *arg) {
  if (act_n < sizeof act_order - 1) act_order[act_n++] = (char)(uintptr_t)arg;
  act_order[act_n] = 0;
}
static void record_reset(void) {
  act_n = 0;
  act_order[0] = 0;
}

/* Undo actions run newest first, commit actions oldest first (libitm's
** order), whether the attempt is cancelled or retried. */
TEST_IMPL(itm_undo_order) {
  static volatile int runs;
  record_reset();
  uint32_t a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    _ITM_addUserUndoAction(record, (void *)'A');
    _ITM_addUserUndoAction(record, (void *)'B');
    _ITM_addUserCommitAction(record, 1, (void *)'x');
    _ITM_addUserUndoAction(record, (void *)'C');
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_STR_EQ(act_order, "CBA");
  record_reset();
  runs = 0;
  ITM_BEGIN();
  runs++;
  _ITM_addUserUndoAction(record, (void *)'a');
  _ITM_addUserCommitAction(record, 1, (void *)'A');
  _ITM_addUserUndoAction(record, (void *)'b');
  _ITM_addUserCommitAction(record, 1, (void *)'B');
  if (runs == 1) _ITM_abortTransaction(userRetry);
  _ITM_addUserCommitAction(record, 1, (void *)'C');
  _ITM_commitTransaction();
  ASSERT_EQ(runs, 2);
  ASSERT_STR_EQ(act_order, "baABC");
}

/* A serial transaction's commit actions run once serial mode is given
** back: this one waits for a thread whose transaction cannot start while
** a thread holds serial mode. */
static uint64_t sca_v;
static void *sca_other(void *arg) {
  (void)arg;
  ITM_BEGIN();
  _ITM_WU8(&sca_v, _ITM_RU8(&sca_v) + 1);
  _ITM_commitTransaction();
  return NULL;
}
static void sca_action(void *arg) {
  (void)arg;
  pthread_t th;
  spawn(&th, sca_other, NULL);
  thread_join(th);
}

TEST_IMPL(itm_serial_commit_action) {
  watchdog_start(20, "a serial transaction's commit action waits for a "
                     "transaction on another thread");
  uint32_t a = _ITM_beginTransaction(pr_uninstrumentedCode);
  ASSERT(a & a_runUninstrumentedCode);
  _ITM_addUserCommitAction(sca_action, 1, NULL);
  _ITM_commitTransaction();
  ASSERT_EQ(sca_v, 1);
  /* Serial by the switch midway: the attempt that registered the action
  ** first is rolled back, so it runs once. */
  ITM_BEGIN();
  _ITM_addUserCommitAction(sca_action, 1, NULL);
  _ITM_changeTransactionMode(modeSerialIrrevocable);
  _ITM_commitTransaction();
  ASSERT_EQ(sca_v, 2);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
}

/* Transactions begun inside commit and undo actions are transactions of
** their own (the one that registered the actions is over): they cancel,
** conflict and run again, or go serial, and the transaction that ran the
** actions then carries on from its own checkpoint. */
static uint64_t ia_w, ia_y;
static volatile int inner_runs;

/* Make the calling thread's transaction, which read *w, conflict: another
** thread commits a write to it. */
static void *bump_other(void *arg) {
  uint64_t *w = arg;
  ITM_BEGIN();
  _ITM_WU8(w, _ITM_RU8(w) + 1000);
  _ITM_commitTransaction();
  return NULL;
}
static void conflict_on(uint64_t *w) {
  pthread_t th;
  spawn(&th, bump_other, w);
  thread_join(th);
}

/* An inner transaction that cancels itself. */
static void act_cancel(void *arg) {
  uint32_t a = ITM_BEGIN();
  if (!(a & a_abortTransaction)) {
    _ITM_WU8(&ia_y, 1);
    _ITM_abortTransaction(userAbort);
  }
  ASSERT_EQ(a, a_abortTransaction | a_restoreLiveVariables);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
  record(arg);
}
/* One that conflicts once and runs again. */
static void act_conflict(void *arg) {
  inner_runs = 0;
  ITM_BEGIN();
  inner_runs++;
  uint64_t v = _ITM_RU8(&ia_w);
  if (inner_runs == 1) conflict_on(&ia_w);
  _ITM_WU8(&ia_w, v + 1);
  _ITM_commitTransaction();
  ASSERT_EQ(inner_runs, 2);
  record(arg);
}
/* One in serial mode. */
static void act_serial(void *arg) {
  uint32_t a = _ITM_beginTransaction(pr_uninstrumentedCode);
  ASSERT(a & a_runUninstrumentedCode);
  ASSERT_EQ(_ITM_inTransaction(), inIrrevocableTransaction);
  ia_y += 10;
  _ITM_commitTransaction();
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
  record(arg);
}

TEST_IMPL(itm_actions_begin_transactions) {
  static volatile int runs, after;
  watchdog_start(20, "transactions begun inside user actions");
  /* Commit actions. */
  record_reset();
  ITM_BEGIN();
  runs++;
  _ITM_addUserCommitAction(act_cancel, 1, (void *)'c');
  _ITM_addUserCommitAction(act_conflict, 1, (void *)'k');
  _ITM_addUserCommitAction(act_serial, 1, (void *)'s');
  _ITM_addUserCommitAction(record, 1, (void *)'.');
  _ITM_commitTransaction();
  after++;
  ASSERT_EQ(runs, 1);
  ASSERT_EQ(after, 1);
  ASSERT_STR_EQ(act_order, "cks.");
  ASSERT_EQ(ia_w, 1001);
  ASSERT_EQ(ia_y, 10);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
  /* Undo actions of a cancelled transaction (newest first). */
  record_reset();
  runs = 0;
  after = 0;
  uint32_t a = ITM_BEGIN();
  runs++;
  if (!(a & a_abortTransaction)) {
    _ITM_addUserUndoAction(record, (void *)'.');
    _ITM_addUserUndoAction(act_serial, (void *)'s');
    _ITM_addUserUndoAction(act_conflict, (void *)'k');
    _ITM_addUserUndoAction(act_cancel, (void *)'c');
    _ITM_WU8(&ia_w, 5);
    _ITM_abortTransaction(userAbort);
  }
  after++;
  ASSERT_EQ(a, a_abortTransaction | a_restoreLiveVariables);
  ASSERT_EQ(runs, 2);
  ASSERT_EQ(after, 1);
  ASSERT_STR_EQ(act_order, "cks.");
  ASSERT_EQ(ia_w, 2002);
  ASSERT_EQ(ia_y, 20);
  /* Undo actions of an attempt that conflicted: the transaction runs
  ** again from its own checkpoint. */
  record_reset();
  runs = 0;
  ITM_BEGIN();
  runs++;
  uint64_t v = _ITM_RU8(&ia_y);
  if (runs == 1) {
    _ITM_addUserUndoAction(act_cancel, (void *)'c');
    _ITM_addUserUndoAction(act_serial, (void *)'s');
    conflict_on(&ia_y);
  }
  _ITM_WU8(&ia_y, v + 1);
  _ITM_commitTransaction();
  ASSERT_EQ(runs, 2);
  ASSERT_STR_EQ(act_order, "sc");
  ASSERT_EQ(ia_y, 20 + 1000 + 10 + 1);
  ASSERT_EQ(_ITM_inTransaction(), outsideTransaction);
}
