/*
** tests/task.h — assertions and small helpers shared by ame's C tests.
**
** Every test runs in its own process (see runner.c), so a failed assertion
** simply prints where and why, then calls abort(): the runner, or meson,
** reports the test as failed.  The ASSERT_* comparison macros print both
** operands, the way libuv's test macros do, so a failure in a stress test
** says what was seen, not only that something was wrong.
**
** The helpers cover what the stress tests need over and over: a stress
** duration taken from the environment, a monotonic clock, a per-thread
** random generator, thread creation that cannot fail silently, and bounded
** spin-waits (a test that waits for another thread never hangs: it fails).
*/
#ifndef AME_TESTS_TASK_H
#define AME_TESTS_TASK_H

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------
** Test declaration.  A test is a function `void test_<name>(void)`; it
** passes by returning and fails by abort()ing.
*/
#define TEST_IMPL(name) void test_##name(void)

/* Skip the running test (meson counts exit status 77 as skipped). */
#define TEST_SKIP(...)                                                        \
  do {                                                                        \
    printf("skip %s: ", __func__);                                            \
    printf(__VA_ARGS__);                                                      \
    printf("\n");                                                             \
    fflush(stdout);                                                           \
    exit(77);                                                                 \
  } while (0)

/* ------------------------------------------------------------------------
** Assertions.
*/

#define AME_TEST_FAIL_(...)                                                   \
  do {                                                                        \
    fflush(stdout);                                                           \
    fprintf(stderr, "Assertion failed in %s:%d (%s): ", __FILE__, __LINE__,   \
            __func__);                                                        \
    fprintf(stderr, __VA_ARGS__);                                             \
    fputc('\n', stderr);                                                      \
    fflush(stderr);                                                           \
    abort();                                                                  \
  } while (0)

#define ASSERT(expr)                                                          \
  do {                                                                        \
    if (!(expr))                                                              \
      AME_TEST_FAIL_("%s", #expr);                                            \
  } while (0)

/* Integer comparisons.  Each operand is evaluated once and converted to 64
** bits; the pair is compared (and printed) as signed if either operand has
** a signed type, else as unsigned.  Pointers use ASSERT_PTR_* and doubles
** ASSERT_DOUBLE_EQ below. */
#define AME_IS_SIGNED_(x)                                                     \
  _Generic((x), char: 1, signed char: 1, short: 1, int: 1, long: 1,           \
           long long: 1, default: 0)

#define AME_ASSERT_CMP_(a, op, b, sa, sb)                                     \
  do {                                                                        \
    const int ame_signed_ = AME_IS_SIGNED_(a) || AME_IS_SIGNED_(b);           \
    /* volatile: no -Wclobbered after AME_ATOMIC in the same function */     \
    const volatile uint64_t ame_a_ = (uint64_t)(a);                           \
    const volatile uint64_t ame_b_ = (uint64_t)(b);                           \
    int ame_ok_ = ame_signed_ ? (int64_t)ame_a_ op (int64_t)ame_b_            \
                              : ame_a_ op ame_b_;                             \
    if (!ame_ok_) {                                                           \
      if (ame_signed_)                                                        \
        AME_TEST_FAIL_("%s %s %s (%" PRId64 " %s %" PRId64 ")", sa, #op, sb,  \
                       (int64_t)ame_a_, #op, (int64_t)ame_b_);                \
      else                                                                    \
        AME_TEST_FAIL_("%s %s %s (%" PRIu64 " %s %" PRIu64                    \
                       ", hex 0x%" PRIx64 " %s 0x%" PRIx64 ")",               \
                       sa, #op, sb, (uint64_t)ame_a_, #op, (uint64_t)ame_b_,  \
                       (uint64_t)ame_a_, #op, (uint64_t)ame_b_);              \
    }                                                                         \
  } while (0)

#define ASSERT_EQ(a, b) AME_ASSERT_CMP_(a, ==, b, #a, #b)
#define ASSERT_NE(a, b) AME_ASSERT_CMP_(a, !=, b, #a, #b)
#define ASSERT_LT(a, b) AME_ASSERT_CMP_(a, <, b, #a, #b)
#define ASSERT_LE(a, b) AME_ASSERT_CMP_(a, <=, b, #a, #b)
#define ASSERT_GT(a, b) AME_ASSERT_CMP_(a, >, b, #a, #b)
#define ASSERT_GE(a, b) AME_ASSERT_CMP_(a, >=, b, #a, #b)

#define AME_ASSERT_PTR_CMP_(a, op, b, sa, sb)                                 \
  do {                                                                        \
    const void *volatile ame_pa_ = (const void *)(a);                         \
    const void *volatile ame_pb_ = (const void *)(b);                         \
    if (!(ame_pa_ op ame_pb_))                                                \
      AME_TEST_FAIL_("%s %s %s (%p %s %p)", sa, #op, sb,                     \
                     (const void *)ame_pa_, #op, (const void *)ame_pb_);      \
  } while (0)

#define ASSERT_PTR_EQ(a, b) AME_ASSERT_PTR_CMP_(a, ==, b, #a, #b)
#define ASSERT_PTR_NE(a, b) AME_ASSERT_PTR_CMP_(a, !=, b, #a, #b)
#define ASSERT_NULL(a) AME_ASSERT_PTR_CMP_(a, ==, NULL, #a, "NULL")
#define ASSERT_NOT_NULL(a) AME_ASSERT_PTR_CMP_(a, !=, NULL, #a, "NULL")

#define ASSERT_DOUBLE_EQ(a, b)                                                \
  do {                                                                        \
    double ame_da_ = (a), ame_db_ = (b);                                      \
    if (!(ame_da_ == ame_db_))                                                \
      AME_TEST_FAIL_("%s == %s (%.17g == %.17g)", #a, #b, ame_da_, ame_db_);  \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                   \
  do {                                                                        \
    const char *ame_sa_ = (a), *ame_sb_ = (b);                                \
    if (ame_sa_ == NULL || ame_sb_ == NULL || strcmp(ame_sa_, ame_sb_) != 0)  \
      AME_TEST_FAIL_("%s == %s (\"%s\" == \"%s\")", #a, #b,                  \
                     ame_sa_ ? ame_sa_ : "(null)",                            \
                     ame_sb_ ? ame_sb_ : "(null)");                           \
  } while (0)

/* Assert that string a contains string b. */
#define ASSERT_STR_CONTAINS(a, b)                                             \
  do {                                                                        \
    const char *ame_sa_ = (a), *ame_sb_ = (b);                                \
    if (ame_sa_ == NULL || ame_sb_ == NULL ||                                 \
        strstr(ame_sa_, ame_sb_) == NULL)                                     \
      AME_TEST_FAIL_("%s contains %s (\"%s\" does not contain \"%s\")", #a,   \
                     #b, ame_sa_ ? ame_sa_ : "(null)",                        \
                     ame_sb_ ? ame_sb_ : "(null)");                           \
  } while (0)

/* ------------------------------------------------------------------------
** Sanitizer detection (gcc defines __SANITIZE_*__, clang has __has_feature).
*/
#if defined(__SANITIZE_ADDRESS__)
#define AME_TEST_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define AME_TEST_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AME_TEST_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define AME_TEST_TSAN 1
#endif
#endif

/* ------------------------------------------------------------------------
** Time, durations, randomness.
*/

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t now_ms(void) { return now_ns() / 1000000u; }

static inline void sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000,
                        .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* How long a randomised stress test runs: $AME_STRESS_MS, else
** $AME_STRESS_MS_DEFAULT (which tests/meson.build lowers in sanitizer
** builds), else 1500 ms. */
static inline unsigned stress_ms(void) {
  const char *names[] = {"AME_STRESS_MS", "AME_STRESS_MS_DEFAULT"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *s = getenv(names[i]);
    if (s != NULL && *s != '\0') {
      long v = strtol(s, NULL, 10);
      if (v > 0)
        return (unsigned)v;
    }
  }
  return 1500;
}

/* A multiplier for deadlines that are not the point of a test (waits for
** another thread to get somewhere): $AME_TEST_SLOW, default 1, larger under
** sanitizers. */
static inline unsigned slow_factor(void) {
  const char *s = getenv("AME_TEST_SLOW");
  if (s != NULL && *s != '\0') {
    long v = strtol(s, NULL, 10);
    if (v > 0)
      return (unsigned)v;
  }
#if defined(AME_TEST_TSAN)
  return 10;
#elif defined(AME_TEST_ASAN)
  return 3;
#else
  return 1;
#endif
}

/* xorshift64*: a tiny per-thread generator (the state must be nonzero). */
static inline uint64_t rnd_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* Not inlined: gcc's -Wclobbered flags its local in callers with setjmp. */
__attribute__((noinline, unused)) static uint64_t rnd_seed(unsigned id) {
  uint64_t s = 0x9E3779B97F4A7C15ULL * (id + 1) ^ now_ns();
  return s ? s : 1;
}

/* Uniform in [0, n). */
static inline uint64_t rnd_below(uint64_t *s, uint64_t n) {
  return rnd_next(s) % n;
}

/* ------------------------------------------------------------------------
** Threads and waiting.
*/

static inline void thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
  int r = pthread_create(t, NULL, fn, arg);
  ASSERT_EQ(r, 0);
}

static inline void thread_join(pthread_t t) {
  int r = pthread_join(t, NULL);
  ASSERT_EQ(r, 0);
}

/* Spin (yielding) until cond holds or ms milliseconds (times the slow
** factor) have passed; evaluate to the final value of cond. */
#define WAIT_UNTIL(cond, ms)                                                  \
  ({                                                                          \
    uint64_t ame_dl_ = now_ms() + (uint64_t)(ms) * slow_factor();             \
    int ame_c_;                                                               \
    while (!(ame_c_ = !!(cond)) && now_ms() < ame_dl_)                        \
      sched_yield();                                                          \
    ame_c_;                                                                   \
  })

/* Assert that cond becomes true within ms milliseconds (times the slow
** factor). */
#define ASSERT_WAIT(cond, ms)                                                 \
  do {                                                                        \
    if (!WAIT_UNTIL(cond, ms))                                                \
      AME_TEST_FAIL_("%s did not become true within %u ms", #cond,            \
                     (unsigned)(ms) * slow_factor());                         \
  } while (0)

/* A watchdog: if the test is still running after `seconds` (times the slow
** factor), say what it was waiting for and abort, rather than leave it to
** the runner's time limit to kill it without a word. */
struct ame_watchdog_ {
  unsigned seconds;
  const char *what;
};

static void *ame_watchdog_main_(void *arg) {
  struct ame_watchdog_ *w = arg;
  sleep_ms(w->seconds * 1000u * slow_factor());
  fprintf(stderr, "watchdog: %s: not done after %u s\n", w->what,
          w->seconds * slow_factor());
  abort();
  return NULL;
}

static inline void watchdog_start(unsigned seconds, const char *what) {
  static struct ame_watchdog_ w;
  w.seconds = seconds;
  w.what = what;
  pthread_t t;
  thread_start(&t, ame_watchdog_main_, &w);
  pthread_detach(t);
}

/* ------------------------------------------------------------------------
** Heap accounting: bytes the C allocator has handed out and not had back.
** Used to show that memory an aborted attempt allocated was freed, in every
** build (LeakSanitizer only looks at exit).
*/
#if defined(AME_TEST_ASAN) || defined(AME_TEST_TSAN)
/* From the sanitizers' allocator interface (its header is not installed
** with every compiler). */
size_t __sanitizer_get_current_allocated_bytes(void);
static inline size_t heap_in_use(void) {
  return __sanitizer_get_current_allocated_bytes();
}
#else
#include <malloc.h>
static inline size_t heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}
#endif

#endif /* AME_TESTS_TASK_H */
