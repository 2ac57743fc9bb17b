/*
** bench/intset_bench.c — the intset benchmark: a set of integer keys (red-
** black tree, skip list, hash set or sorted linked list) filled to an
** initial size, then hammered by threads that look up, add and remove
** random keys for a fixed time.
**
** Compiled four times from the same source (TM_AME, TM_ITM, TM_MUTEX,
** TM_SEQ; see bench/tm.h).  Updates are half adds, half removes of random
** keys in [1, range], so with range = 2 x initial the size stays about
** stable.  At the end it checks the structure (its *_check function) and
** that its size equals initial + successful adds - successful removes,
** prints one JSON line, and exits 1 if either check failed (2 on bad usage).
*/
#include <errno.h>
#include <getopt.h>

#include "harness.h"
#include "intset/hashset.h"
#include "intset/linkedlist.h"
#include "intset/rbtree.h"
#include "intset/skiplist.h"

enum set_kind { SET_RBTREE, SET_SKIPLIST, SET_HASHSET, SET_LIST };
static const char *const set_names[] = {"rbtree", "skiplist", "hashset",
                                        "list"};

/* The set under test (one of them is used). */
static enum set_kind g_kind;
static rbtree_t g_rbtree;
static skiplist_t g_skiplist;
static hashset_t g_hashset;
static list_t g_list;

/* Parameters of the run. */
static uint64_t g_range;   /* keys are in [1, range] */
static unsigned g_update;  /* percent of operations that are updates */

/* The operations are kept out of line so that the transaction begin (a
** setjmp, or libitm's returns-twice call) is not inlined into the worker
** loop, whose counters would otherwise be at risk of clobbering. */
#define SET_OP __attribute__((noinline))

static SET_OP int set_contains(tm_tx_t *tx, uintptr_t key) {
  switch (g_kind) {
  case SET_RBTREE: return rbtree_contains(tx, &g_rbtree, key);
  case SET_SKIPLIST: return skiplist_contains(tx, &g_skiplist, key);
  case SET_HASHSET: return hashset_contains(tx, &g_hashset, key);
  case SET_LIST: return list_contains(tx, &g_list, key);
  }
  return -1;
}

static SET_OP int set_add(tm_tx_t *tx, uintptr_t key) {
  switch (g_kind) {
  case SET_RBTREE: return rbtree_add(tx, &g_rbtree, key);
  case SET_SKIPLIST: return skiplist_add(tx, &g_skiplist, key);
  case SET_HASHSET: return hashset_add(tx, &g_hashset, key);
  case SET_LIST: return list_add(tx, &g_list, key);
  }
  return -1;
}

static SET_OP int set_remove(tm_tx_t *tx, uintptr_t key) {
  switch (g_kind) {
  case SET_RBTREE: return rbtree_remove(tx, &g_rbtree, key);
  case SET_SKIPLIST: return skiplist_remove(tx, &g_skiplist, key);
  case SET_HASHSET: return hashset_remove(tx, &g_hashset, key);
  case SET_LIST: return list_remove(tx, &g_list, key);
  }
  return -1;
}

static int set_check(void) {
  switch (g_kind) {
  case SET_RBTREE: return rbtree_check(&g_rbtree);
  case SET_SKIPLIST: return skiplist_check(&g_skiplist);
  case SET_HASHSET: return hashset_check(&g_hashset);
  case SET_LIST: return list_check(&g_list);
  }
  return -1;
}

static size_t set_size(void) {
  switch (g_kind) {
  case SET_RBTREE: return rbtree_size(&g_rbtree);
  case SET_SKIPLIST: return skiplist_size(&g_skiplist);
  case SET_HASHSET: return hashset_size(&g_hashset);
  case SET_LIST: return list_size(&g_list);
  }
  return 0;
}

static void set_destroy(void) {
  switch (g_kind) {
  case SET_RBTREE: rbtree_destroy(&g_rbtree); break;
  case SET_SKIPLIST: skiplist_destroy(&g_skiplist); break;
  case SET_HASHSET: hashset_destroy(&g_hashset); break;
  case SET_LIST: list_destroy(&g_list); break;
  }
}

/* One worker and what it counted. */
typedef struct worker {
  bench_thread_t t;   /* must be first */
  uint64_t adds;      /* successful adds */
  uint64_t removes;   /* successful removes */
  uint64_t found;     /* successful lookups */
  char pad[64];       /* keep workers off each other's cache lines */
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  tm_tx_t *tx = TM_THREAD_ENTER();
  if (!bench_ready(&w->t, tx != NULL))
    return NULL;
  uint64_t ops = 0, adds = 0, removes = 0, found = 0;
  const unsigned upd = g_update;
  while (bench_running()) {
    uint64_t r = bench_rand(&w->t.rng);
    unsigned op = (unsigned)(r & 0xffff) % 200; /* [0,u): add, [u,2u): rm */
    uintptr_t key = (uintptr_t)((r >> 16) % g_range) + 1;
    int rc;
    if (op < upd) {
      rc = set_add(tx, key);
      adds += rc == 1;
    } else if (op < 2 * upd) {
      rc = set_remove(tx, key);
      removes += rc == 1;
    } else {
      rc = set_contains(tx, key);
      found += rc == 1;
    }
    if (rc < 0) {
      fprintf(stderr, "bench: out of memory\n");
      w->t.failed = 1;
      break;
    }
    ops++;
  }
  bench_done(&w->t);
  w->t.ops = ops;
  w->adds = adds;
  w->removes = removes;
  w->found = found;
  TM_THREAD_EXIT(tx);
  return NULL;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-intset-" TM_NAME " [options]\n"
          "  -s rbtree|skiplist|hashset|list  structure (rbtree)\n"
          "  -i N   initial size (4096)\n"
          "  -r N   key range: keys are 1..N (2 x initial)\n"
          "  -u P   percent updates, half adds, half removes (20)\n"
          "  -t N   threads (1)%s\n"
          "  -d MS  duration in milliseconds (1000)\n"
          "  -S N   random seed (1)\n"
          "  -b N   hash set buckets (initial size)\n"
          "  -v     print the STM's conflict report to stderr (ame)\n"
          "Prints one JSON line; exits 1 if the structure is invalid or its\n"
          "size disagrees with the successful adds and removes.\n",
#if defined(TM_SEQ)
          " (this variant: 1 only)"
#else
          ""
#endif
  );
}

int main(int argc, char **argv) {
  uint64_t initial = 4096, range = 0, update = 20, threads = 1;
  uint64_t duration = 1000, seed = 1, buckets = 0;
  int verbose = 0, c;
  g_kind = SET_RBTREE;
  while ((c = getopt(argc, argv, "s:i:r:u:t:d:S:b:vh")) != -1) {
    switch (c) {
    case 's': {
      size_t k, n = sizeof set_names / sizeof set_names[0];
      for (k = 0; k < n && strcmp(optarg, set_names[k]) != 0; k++)
        ;
      if (k == n) {
        fprintf(stderr, "bench: unknown structure '%s'\n", optarg);
        return 2;
      }
      g_kind = (enum set_kind)k;
      break;
    }
    case 'i': initial = bench_arg("i", optarg, 0, (uint64_t)1 << 32); break;
    case 'r': range = bench_arg("r", optarg, 1, (uint64_t)1 << 40); break;
    case 'u': update = bench_arg("u", optarg, 0, 100); break;
    case 't': threads = bench_arg("t", optarg, 1, 1024); break;
    case 'd': duration = bench_arg("d", optarg, 1, 3600000); break;
    case 'S': seed = bench_arg("S", optarg, 0, UINT64_MAX); break;
    case 'b': buckets = bench_arg("b", optarg, 1, (uint64_t)1 << 32); break;
    case 'v': verbose = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  if (range == 0)
    range = initial > 0 ? 2 * initial : 1;
  if (initial > range) {
    fprintf(stderr, "bench: initial size %" PRIu64 " > key range %" PRIu64
                    "\n", initial, range);
    return 2;
  }
#if defined(TM_SEQ)
  if (threads != 1) {
    fprintf(stderr, "bench: the seq variant runs 1 thread only\n");
    return 2;
  }
#endif
  g_range = range;
  g_update = (unsigned)update;

  int rc = TM_STARTUP();
  if (rc != 0) {
    fprintf(stderr, "bench: cannot start the TM (%d)\n", rc);
    return 2;
  }
  switch (g_kind) {
  case SET_RBTREE: rbtree_init(&g_rbtree); rc = 0; break;
  case SET_SKIPLIST:
    rc = skiplist_init(&g_skiplist,
                       (size_t)(initial > range / 2 ? initial : range / 2));
    break;
  case SET_HASHSET:
    rc = hashset_init(&g_hashset, (size_t)(buckets ? buckets : initial));
    break;
  case SET_LIST: list_init(&g_list); rc = 0; break;
  }
  if (rc != 0) {
    fprintf(stderr, "bench: out of memory\n");
    return 2;
  }

  /* Fill with `initial` distinct random keys, in transactions like the
  ** workers' (so that ame sees the same memory it will run on). */
  tm_tx_t *tx = TM_THREAD_ENTER();
  if (tx == NULL) {
    fprintf(stderr, "bench: cannot register the main thread\n");
    return 2;
  }
  uint64_t rng = bench_seed(seed, 0);
  for (uint64_t n = 0; n < initial;) {
    uintptr_t key = (uintptr_t)(bench_rand(&rng) % range) + 1;
    int r = set_add(tx, key);
    if (r < 0) {
      fprintf(stderr, "bench: out of memory\n");
      return 2;
    }
    n += (uint64_t)r;
  }
  TM_THREAD_EXIT(tx);
  bench_stats_reset();

  worker_t *ws = calloc(threads, sizeof *ws);
  if (ws == NULL) {
    fprintf(stderr, "bench: out of memory\n");
    return 2;
  }
  double secs = bench_run(ws, sizeof *ws, (unsigned)threads,
                          (unsigned)duration, seed, worker_main);
  if (secs < 0)
    return 2;

  uint64_t ops = 0, adds = 0, removes = 0, found = 0;
  for (unsigned i = 0; i < threads; i++) {
    ops += ws[i].t.ops;
    adds += ws[i].adds;
    removes += ws[i].removes;
    found += ws[i].found;
  }
  bench_stats_t st;
  bench_stats(&st, ops);
  int valid = set_check() == 0;
  size_t size = valid ? set_size() : 0;
  uint64_t expected = initial + adds - removes;
  int size_ok = valid && size == expected;

  bench_json_t j = {0};
  bench_json_str(&j, "bench", "intset");
  bench_json_str(&j, "variant", TM_NAME);
  bench_json_str(&j, "structure", set_names[g_kind]);
  bench_json_u64(&j, "threads", threads);
  bench_json_u64(&j, "initial", initial);
  bench_json_u64(&j, "range", range);
  bench_json_u64(&j, "update_pct", update);
  bench_json_u64(&j, "duration_ms", duration);
  bench_json_u64(&j, "seed", seed);
  bench_json_dbl(&j, "seconds", secs);
  bench_json_u64(&j, "ops", ops);
  bench_json_dbl(&j, "ops_per_s", secs > 0 ? (double)ops / secs : 0.0);
  bench_json_u64(&j, "adds", adds);
  bench_json_u64(&j, "removes", removes);
  bench_json_u64(&j, "found", found);
  bench_json_stats(&j, &st);
  bench_json_u64(&j, "final_size", size);
  bench_json_u64(&j, "expected_size", expected);
  bench_json_bool(&j, "valid", valid);
  bench_json_bool(&j, "size_ok", size_ok);
  bench_json_end(&j);

  if (verbose)
    bench_report();
  if (!valid)
    fprintf(stderr, "bench: FAILED: the %s is not structurally valid\n",
            set_names[g_kind]);
  else if (!size_ok)
    fprintf(stderr,
            "bench: FAILED: size %zu != initial %" PRIu64 " + adds %" PRIu64
            " - removes %" PRIu64 "\n",
            size, initial, adds, removes);

  set_destroy();
  free(ws);
  TM_SHUTDOWN();
  return valid && size_ok ? 0 : 1;
}
