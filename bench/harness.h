/*
** bench/harness.h — what the benchmark drivers share: a per-thread
** xorshift random-number generator, the timed run (start barrier, stop
** flag, per-thread end time), the STM statistics in a variant-neutral form
** and a minimal JSON line writer.  Include bench/tm.h's variant selection
** first.  Everything here is static: one driver per executable.
*/
#ifndef AME_BENCH_HARNESS_H
#define AME_BENCH_HARNESS_H

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tm.h"

/* ---- random numbers ------------------------------------------------------ */

/* Spread a seed over 64 bits (splitmix64), never returning 0. */
static inline uint64_t bench_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + (stream + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return z != 0 ? z : 1;
}

/* xorshift64*: state must be nonzero. */
static inline uint64_t bench_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545f4914f6cdd1dull;
}

/* ---- time ---------------------------------------------------------------- */

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- the timed run ------------------------------------------------------- */

/* One worker.  The driver embeds it first in its own per-thread struct. */
typedef struct bench_thread {
  pthread_t thread;
  unsigned id;     /* 0 .. nthreads-1 */
  uint64_t rng;    /* this thread's generator state */
  uint64_t ops;    /* operations completed */
  uint64_t end_ns; /* when it saw the stop flag */
  int failed;      /* nonzero: it could not run (message printed) */
} bench_thread_t;

static atomic_int bench__stop;
static pthread_barrier_t bench__barrier;
static uint64_t bench__start_ns;

/* Called by each worker once ready (ok: it could register): wait until all
** are, then return 1 to run, or 0 if this worker must quit at once. */
static inline int bench_ready(bench_thread_t *w, int ok) {
  if (!ok) {
    fprintf(stderr, "bench: thread %u could not register\n", w->id);
    w->failed = 1;
  }
  pthread_barrier_wait(&bench__barrier);
  return ok;
}

static inline int bench_running(void) {
  return !atomic_load_explicit(&bench__stop, memory_order_relaxed);
}

/* Called by each worker after its loop. */
static inline void bench_done(bench_thread_t *w) { w->end_ns = bench_now_ns(); }

/* Start nthreads workers fn(&threads[i]) (threads is an array of structs of
** `stride` bytes, each starting with a bench_thread_t whose id and rng this
** sets), let them run for duration_ms, stop and join them.  Return the
** measured seconds (start to the last worker's stop), or -1 on failure. */
static inline double bench_run(void *threads, size_t stride, unsigned nthreads,
                               unsigned duration_ms, uint64_t seed,
                               void *(*fn)(void *)) {
  atomic_store(&bench__stop, 0);
  if (pthread_barrier_init(&bench__barrier, NULL, nthreads + 1) != 0)
    return -1;
  for (unsigned i = 0; i < nthreads; i++) {
    bench_thread_t *w = (bench_thread_t *)((char *)threads + i * stride);
    w->id = i;
    w->rng = bench_seed(seed, i + 1);
    if (pthread_create(&w->thread, NULL, fn, w) != 0) {
      fprintf(stderr, "bench: cannot start thread %u\n", i);
      exit(2);
    }
  }
  pthread_barrier_wait(&bench__barrier);
  bench__start_ns = bench_now_ns();
  struct timespec d = {duration_ms / 1000,
                       (long)(duration_ms % 1000) * 1000000L};
  while (nanosleep(&d, &d) != 0)
    ;
  atomic_store(&bench__stop, 1);
  uint64_t end = bench__start_ns;
  int failed = 0;
  for (unsigned i = 0; i < nthreads; i++) {
    bench_thread_t *w = (bench_thread_t *)((char *)threads + i * stride);
    pthread_join(w->thread, NULL);
    if (w->end_ns > end)
      end = w->end_ns;
    failed |= w->failed;
  }
  pthread_barrier_destroy(&bench__barrier);
  return failed ? -1 : (double)(end - bench__start_ns) / 1e9;
}

/* ---- statistics ---------------------------------------------------------- */

/* The STM's own counts where the variant has them (ame, and ame-itm,
** whose transactions are ame's), else what is
** known: with a lock or no synchronisation every transaction commits once
** and never aborts; libitm does not say how often it aborted. */
typedef struct bench_stats {
  int known;             /* 1 if commits/aborts come from the STM */
  uint64_t commits;
  int64_t aborts;        /* -1: unknown */
  uint64_t irrevocable;  /* ame only */
  uint64_t escalations;  /* ame only */
  uint64_t max_attempts; /* ame only */
} bench_stats_t;

/* Forget what the set-up phase counted (ame). */
static inline void bench_stats_reset(void) {
#if defined(TM_AME) || defined(TM_ITM_AME)
  ame_stats_reset();
#elif defined(TM_TINYSTM)
  __atomic_store_n(&tm__tiny_total, 0, __ATOMIC_RELAXED);
#endif
}

/* Fill *s; txs is how many transactions the workers ran. */
static inline void bench_stats(bench_stats_t *s, uint64_t txs) {
  memset(s, 0, sizeof *s);
  (void)txs;
#if defined(TM_AME) || defined(TM_ITM_AME)
  ame_stats_t a;
  ame_stats_total(&a);
  s->known = 1;
  s->commits = a.commits;
  s->aborts = (int64_t)a.aborts;
  s->irrevocable = a.irrevocable;
  s->escalations = a.escalations;
  s->max_attempts = a.max_attempts;
#elif defined(TM_ITM)
  s->commits = txs;
  s->aborts = -1;
#elif defined(TM_TINYSTM)
  /* Attempts the workers started (counted by tm.h), less their commits. */
  s->known = 1;
  s->commits = txs;
  s->aborts = (int64_t)(__atomic_load_n(&tm__tiny_total, __ATOMIC_RELAXED) -
                        txs);
#else
  s->commits = txs;
  s->aborts = 0;
#endif
}

/* Print the conflict report (ame) to stderr. */
static inline void bench_report(void) {
#if defined(TM_AME) || defined(TM_ITM_AME)
  ame_conflict_report(stderr, 10);
#endif
}

/* ---- one JSON object on one line ---------------------------------------- */

typedef struct bench_json {
  int n; /* fields written so far */
} bench_json_t;

static inline void bench_json_key(bench_json_t *j, const char *key) {
  printf("%s\"%s\": ", j->n++ ? ", " : "{", key);
}

static inline void bench_json_str(bench_json_t *j, const char *key,
                                  const char *v) {
  bench_json_key(j, key);
  printf("\"%s\"", v);
}

static inline void bench_json_u64(bench_json_t *j, const char *key,
                                  uint64_t v) {
  bench_json_key(j, key);
  printf("%" PRIu64, v);
}

static inline void bench_json_dbl(bench_json_t *j, const char *key, double v) {
  bench_json_key(j, key);
  printf("%.6g", v);
}

static inline void bench_json_bool(bench_json_t *j, const char *key, int v) {
  bench_json_key(j, key);
  printf("%s", v ? "true" : "false");
}

static inline void bench_json_null(bench_json_t *j, const char *key) {
  bench_json_key(j, key);
  printf("null");
}

/* The statistics fields every driver prints. */
static inline void bench_json_stats(bench_json_t *j, const bench_stats_t *s) {
  bench_json_u64(j, "commits", s->commits);
  if (s->aborts < 0) {
    bench_json_null(j, "aborts");
    bench_json_null(j, "aborts_per_commit");
  } else {
    bench_json_u64(j, "aborts", (uint64_t)s->aborts);
    bench_json_dbl(j, "aborts_per_commit",
                   s->commits ? (double)s->aborts / (double)s->commits : 0.0);
  }
  if (s->known) {
    bench_json_u64(j, "irrevocable", s->irrevocable);
    bench_json_u64(j, "escalations", s->escalations);
    bench_json_u64(j, "max_attempts", s->max_attempts);
  }
}

static inline void bench_json_end(bench_json_t *j) {
  printf("%s}\n", j->n ? "" : "{");
  fflush(stdout);
}

/* Parse an unsigned decimal option value within [lo, hi] or exit(2). */
static inline uint64_t bench_arg(const char *opt, const char *s, uint64_t lo,
                                 uint64_t hi) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "bench: bad value for -%s: '%s' (want %" PRIu64
                    "..%" PRIu64 ")\n",
            opt, s, lo, hi);
    exit(2);
  }
  return (uint64_t)v;
}

#endif /* AME_BENCH_HARNESS_H */
