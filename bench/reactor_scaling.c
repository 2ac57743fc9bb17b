/*
** bench/reactor_scaling.c — in-process scaling of the ame reactor, no
** network: M independent events, each one an ame_reactor_task() and so one
** transaction on whichever worker is free.  An event does W units of CPU
** work (a deterministic xorshift chain, about 0.65 us per unit on the
** 2-core reference machine), then a few transactional accesses: four reads
** of a shared read-only table, an increment of one counter and a store of
** its result into its own slot.
** With probability p (chosen per event from the seed, so the same events
** every run) the counter it increments is the one shared hot word, otherwise
** the counter in its own slot; slots are cache-line separated.  The events
** are posted before the reactor runs (spread round-robin over the workers'
** queues, idle workers steal) and the run ends when the M-th commits.
**
**   bench-reactor-scaling [-t workers=1] [-n events=100000] [-w units=10]
**       [-p conflict%=0] [-e] [-S seed=1] [-m reactor|plain] [-v]
**
** -e ("early") reads the counter before the work and writes it after, so
** that every hot event's whole run is its conflict window; by default the
** counter is read and written at the end, as a callback that computes and
** then publishes would.  -m plain runs the same events in a loop on one
** thread with plain loads and stores (no reactor, no STM): the baseline of
** the per-event overhead.  -v writes the reactor's and the STM's report to
** stderr.
**
** Prints one JSON line.  After the run every count is checked: the hot word
** must equal the number of hot events, every other event's slot counter
** must be 1 (a hot event's 0), and a sample of the stored results must
** match a recomputation.  Exit status 0, 1 if a check failed (or the reactor
** failed), 2 on bad usage.
*/
#include <getopt.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <ame/reactor.h>

#include "harness.h"

#define TABLE_WORDS 8
#define ITERS_PER_UNIT 400 /* xorshift steps per work unit */
#define SAMPLE_CHECKS 1000 /* results recomputed after the run */

/* One event's own data, alone on its cache line. */
typedef struct slot {
  uintptr_t count;  /* incremented by the event if it is not hot */
  uintptr_t result; /* what its work computed (plus the table reads) */
  char pad[64 - 2 * sizeof(uintptr_t)];
} __attribute__((aligned(64))) slot_t;

typedef struct hot {
  uintptr_t count; /* incremented by every hot event */
  char pad[64 - sizeof(uintptr_t)];
} __attribute__((aligned(64))) hot_t;

static slot_t *g_slots;       /* g_events slots */
static hot_t g_hot;           /* the shared hot word */
static uintptr_t g_table[TABLE_WORDS] __attribute__((aligned(64)));
static uint64_t g_events;     /* M */
static unsigned g_units;      /* W */
static uint64_t g_hot_limit;  /* event is hot if its draw < this (of 2^32) */
static uint64_t g_seed;
static int g_early;           /* -e */
static ame_reactor_t *g_reactor;
static uint64_t g_done;       /* atomic: events committed */
static uint64_t g_end_ns;     /* atomic: when the last one committed */
static uint64_t g_end_cpu_ns; /* the process's CPU time then */

/* CPU time used by the whole process (every thread), in nanoseconds. */
static uint64_t process_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The CPU work: a dependent chain of xorshift steps, which the compiler can
** neither vectorise nor shorten.  Never returns 0 for a nonzero x. */
static __attribute__((noinline)) uint64_t work(uint64_t x, unsigned units) {
  for (unsigned u = 0; u < units; u++) {
    for (unsigned k = 0; k < ITERS_PER_UNIT; k++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
    }
  }
  return x;
}

static inline uint64_t event_input(uint64_t i) { return bench_seed(g_seed, i); }

static inline int event_is_hot(uint64_t i) {
  return (bench_seed(g_seed ^ 0x5bd1e995u, i) >> 32) < g_hot_limit;
}

static inline uintptr_t *event_counter(uint64_t i) {
  return event_is_hot(i) ? &g_hot.count : &g_slots[i].count;
}

/* Called after an event's transaction committed (outside it). */
static void event_committed(void *arg) {
  (void)arg;
  if (__atomic_add_fetch(&g_done, 1, __ATOMIC_ACQ_REL) == g_events) {
    __atomic_store_n(&g_end_cpu_ns, process_cpu_ns(), __ATOMIC_RELAXED);
    __atomic_store_n(&g_end_ns, bench_now_ns(), __ATOMIC_RELEASE);
    ame_reactor_stop(g_reactor);
  }
}

/* One event, as a reactor task (one transaction). */
static int event_cb(ame_tx_t *tx, void *arg) {
  uint64_t i = (uint64_t)(uintptr_t)arg;
  uintptr_t *counter = event_counter(i);
  uintptr_t c = 0;
  if (g_early) c = ame_load_word_tx(tx, counter);
  uint64_t x = work(event_input(i), g_units);
  for (unsigned k = 0; k < 4; k++)
    x += ame_load_word_tx(tx, &g_table[(i + k) % TABLE_WORDS]);
  if (!g_early) c = ame_load_word_tx(tx, counter);
  ame_store_word_tx(tx, counter, c + 1);
  ame_store_word_tx(tx, &g_slots[i].result, (uintptr_t)x);
  return ame_tx_on_commit(tx, event_committed, NULL);
}

/* The same event without reactor or STM (-m plain). */
static void event_plain(uint64_t i) {
  uintptr_t *counter = event_counter(i);
  uint64_t x = work(event_input(i), g_units);
  for (unsigned k = 0; k < 4; k++)
    x += *(volatile uintptr_t *)&g_table[(i + k) % TABLE_WORDS];
  *counter += 1;
  g_slots[i].result = (uintptr_t)x;
}

static uint64_t expected_result(uint64_t i) {
  uint64_t x = work(event_input(i), g_units);
  for (unsigned k = 0; k < 4; k++) x += g_table[(i + k) % TABLE_WORDS];
  return x;
}

/* Microseconds one event's work takes on this thread: the best of five
** short batches (the least disturbed). */
static double calibrate_us(void) {
  double best = 0;
  uint64_t sink = 0;
  for (int rep = 0; rep < 5; rep++) {
    uint64_t t0 = bench_now_ns();
    for (int k = 0; k < 200; k++) sink += work((uint64_t)k + 1, g_units);
    double us = (double)(bench_now_ns() - t0) / 1e3 / 200;
    if (rep == 0 || us < best) best = us;
  }
  if (sink == 42) fprintf(stderr, " ");
  return best;
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench-reactor-scaling [-t workers=1] [-n events=100000] "
          "[-w units=10]\n"
          "           [-p conflict%%=0] [-e] [-S seed=1] [-m reactor|plain] "
          "[-v]\n");
  exit(2);
}

int main(int argc, char **argv) {
  unsigned workers = 1;
  double conflict_pct = 0;
  int plain = 0, verbose = 0, opt;
  g_events = 100000;
  g_units = 10;
  g_seed = 1;
  while ((opt = getopt(argc, argv, "t:n:w:p:eS:m:vh")) != -1) {
    switch (opt) {
    case 't': workers = (unsigned)bench_arg("t", optarg, 1, 1024); break;
    case 'n': g_events = bench_arg("n", optarg, 1, 100000000); break;
    case 'w': g_units = (unsigned)bench_arg("w", optarg, 0, 1000000); break;
    case 'p': {
      char *end;
      conflict_pct = strtod(optarg, &end);
      if (*optarg == '\0' || *end != '\0' || !(conflict_pct >= 0) ||
          conflict_pct > 100) {
        fprintf(stderr, "bench: bad value for -p: '%s' (want 0..100)\n",
                optarg);
        exit(2);
      }
      break;
    }
    case 'e': g_early = 1; break;
    case 'S': g_seed = bench_arg("S", optarg, 0, UINT64_MAX); break;
    case 'm':
      if (strcmp(optarg, "plain") == 0) plain = 1;
      else if (strcmp(optarg, "reactor") != 0) usage();
      break;
    case 'v': verbose = 1; break;
    default: usage();
    }
  }
  if (optind != argc) usage();
  if (plain && workers != 1) {
    fprintf(stderr, "bench: -m plain runs on 1 thread only\n");
    exit(2);
  }
  g_hot_limit = (uint64_t)(conflict_pct / 100.0 * 4294967296.0);
  g_slots = aligned_alloc(64, g_events * sizeof *g_slots);
  if (g_slots == NULL) {
    fprintf(stderr, "bench: out of memory\n");
    exit(2);
  }
  memset(g_slots, 0, g_events * sizeof *g_slots);
  for (unsigned k = 0; k < TABLE_WORDS; k++)
    g_table[k] = (uintptr_t)bench_seed(g_seed, 1000000 + k);
  uint64_t hot_events = 0;
  for (uint64_t i = 0; i < g_events; i++) hot_events += event_is_hot(i);
  double event_us = calibrate_us();

  double seconds, cpu_seconds;
  ame_stats_t st;
  ame_reactor_stats_t rs;
  memset(&st, 0, sizeof st);
  memset(&rs, 0, sizeof rs);
  int failed = 0;
  if (plain) {
    uint64_t c0 = process_cpu_ns(), t0 = bench_now_ns();
    for (uint64_t i = 0; i < g_events; i++) event_plain(i);
    seconds = (double)(bench_now_ns() - t0) / 1e9;
    cpu_seconds = (double)(process_cpu_ns() - c0) / 1e9;
    st.commits = g_events;
  } else {
    ame_stm_init(NULL);
    ame_reactor_config_t cfg = {.workers = workers};
    int rc = ame_reactor_new(&g_reactor, &cfg);
    if (rc != 0) {
      fprintf(stderr, "bench: ame_reactor_new: %s\n", ame_strerror(rc));
      exit(1);
    }
    for (uint64_t i = 0; i < g_events; i++) {
      rc = ame_reactor_task(g_reactor, event_cb, (void *)(uintptr_t)i);
      if (rc != 0) {
        fprintf(stderr, "bench: ame_reactor_task: %s\n", ame_strerror(rc));
        exit(1);
      }
    }
    ame_stats_reset();
    uint64_t c0 = process_cpu_ns(), t0 = bench_now_ns();
    rc = ame_reactor_run(g_reactor);
    uint64_t t1 = __atomic_load_n(&g_end_ns, __ATOMIC_ACQUIRE);
    uint64_t c1 = __atomic_load_n(&g_end_cpu_ns, __ATOMIC_RELAXED);
    if (rc != 0) {
      fprintf(stderr, "bench: ame_reactor_run: %s\n", ame_strerror(rc));
      failed = 1;
    }
    if (t1 == 0) { /* never finished: the checks will say so */
      t1 = bench_now_ns();
      c1 = process_cpu_ns();
    }
    seconds = (double)(t1 - t0) / 1e9;
    cpu_seconds = (double)(c1 - c0) / 1e9;
    ame_stats_total(&st);
    ame_reactor_stats(g_reactor, &rs);
    if (verbose) ame_reactor_report(g_reactor, stderr);
    ame_reactor_free(g_reactor);
  }

  /* The checks: every count exact, a sample of the results recomputed. */
  uint64_t bad_slots = 0, bad_results = 0;
  for (uint64_t i = 0; i < g_events; i++)
    bad_slots += g_slots[i].count != (event_is_hot(i) ? 0u : 1u);
  uint64_t step = g_events / SAMPLE_CHECKS ? g_events / SAMPLE_CHECKS : 1;
  for (uint64_t i = 0; i < g_events; i += step)
    bad_results += g_slots[i].result != (uintptr_t)expected_result(i);
  uint64_t done = plain ? g_events : __atomic_load_n(&g_done, __ATOMIC_ACQUIRE);
  int hot_ok = g_hot.count == hot_events;
  int ok = !failed && hot_ok && bad_slots == 0 && bad_results == 0 &&
           done == g_events && (plain || rs.callbacks == g_events) &&
           rs.failures == 0;
  if (!ok)
    fprintf(stderr,
            "bench: CHECK FAILED: hot %" PRIu64 " (want %" PRIu64 "), %" PRIu64
            " bad slot counts, %" PRIu64 " bad results, %" PRIu64
            " events committed of %" PRIu64 ", %" PRIu64 " callbacks, %" PRIu64
            " failed\n",
            (uint64_t)g_hot.count, hot_events, bad_slots, bad_results, done,
            g_events, rs.callbacks, rs.failures);

  bench_json_t j = {0};
  bench_json_str(&j, "bench", "reactor-scaling");
  bench_json_str(&j, "mode", plain ? "plain" : "reactor");
  bench_json_u64(&j, "workers", workers);
  bench_json_u64(&j, "events", g_events);
  bench_json_u64(&j, "work_units", g_units);
  bench_json_dbl(&j, "event_work_us", event_us);
  bench_json_dbl(&j, "conflict_pct", conflict_pct);
  bench_json_str(&j, "access", g_early ? "early" : "late");
  bench_json_u64(&j, "seed", g_seed);
  bench_json_u64(&j, "hot_events", hot_events);
  bench_json_dbl(&j, "seconds", seconds);
  bench_json_dbl(&j, "events_per_s", seconds > 0 ? g_events / seconds : 0);
  bench_json_dbl(&j, "cpu_seconds", cpu_seconds);
  bench_json_dbl(&j, "cpu_us_per_event", cpu_seconds * 1e6 / g_events);
  bench_json_dbl(&j, "cpus_used", seconds > 0 ? cpu_seconds / seconds : 0);
  /* Few CPUs used with many involuntary switches: the machine was busy;
  ** with many voluntary ones: the workers blocked. */
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  bench_json_u64(&j, "voluntary_switches", (uint64_t)ru.ru_nvcsw);
  bench_json_u64(&j, "involuntary_switches", (uint64_t)ru.ru_nivcsw);
  bench_json_u64(&j, "commits", st.commits);
  bench_json_u64(&j, "aborts", st.aborts);
  bench_json_dbl(&j, "aborts_per_commit",
                 st.commits ? (double)st.aborts / (double)st.commits : 0.0);
  bench_json_u64(&j, "irrevocable", st.irrevocable);
  bench_json_u64(&j, "escalations", st.escalations);
  bench_json_u64(&j, "max_attempts", st.max_attempts);
  bench_json_u64(&j, "callbacks", plain ? g_events : rs.callbacks);
  bench_json_u64(&j, "stolen", rs.stolen);
  bench_json_key(&j, "per_worker");
  printf("[");
  for (unsigned w = 0; w < workers && w < 64; w++)
    printf("%s%" PRIu64, w ? ", " : "", plain ? g_events
                                              : rs.per_worker_callbacks[w]);
  printf("]");
  bench_json_u64(&j, "hot_count", g_hot.count);
  bench_json_bool(&j, "hot_ok", hot_ok);
  bench_json_u64(&j, "bad_slots", bad_slots);
  bench_json_u64(&j, "bad_results", bad_results);
  bench_json_bool(&j, "valid", ok);
  bench_json_end(&j);
  free(g_slots);
  return ok ? 0 : 1;
}
