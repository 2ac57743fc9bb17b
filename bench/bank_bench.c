/*
** bench/bank_bench.c — the bank benchmark: threads move money between
** random accounts (a transfer: two reads, two writes), and now and then
** read every account in one transaction to check the total (a long read-only
** transaction that conflicts with every concurrent transfer).  The rest of
** the operations read one account.
**
** Compiled four times from the same source (TM_AME, TM_ITM, TM_MUTEX,
** TM_SEQ; see bench/tm.h).  Every in-run total must equal the opening total,
** and so must the final plain sum; otherwise it reports a failure and exits
** 1 (2 on bad usage).  Prints one JSON line.
*/
#include <getopt.h>

#include "bank.h"
#include "harness.h"

static bank_t g_bank;
static unsigned g_transfer_pct; /* percent transfers */
static unsigned g_check_pct;    /* percent read-all balance checks */

/* Out of line, like the intset's operations (see intset_bench.c). */
#define BANK_OP __attribute__((noinline))

static BANK_OP void op_transfer(tm_tx_t *tx, uintptr_t from, uintptr_t to,
                                uintptr_t amount) {
  bank_transfer(tx, &g_bank, from, to, amount);
}

static BANK_OP uintptr_t op_total(tm_tx_t *tx) {
  return bank_total(tx, &g_bank);
}

static BANK_OP uintptr_t op_balance(tm_tx_t *tx, uintptr_t i) {
  return bank_balance(tx, &g_bank, i);
}

typedef struct worker {
  bench_thread_t t;    /* must be first */
  uint64_t transfers;  /* transfers done */
  uint64_t checks;     /* balance checks done */
  uint64_t bad_checks; /* ... that saw a wrong total */
  uint64_t reads;      /* single-account reads done */
  uintptr_t sink;      /* keeps the reads from being optimised away */
  char pad[64];
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  tm_tx_t *tx = TM_THREAD_ENTER();
  if (!bench_ready(&w->t, tx != NULL))
    return NULL;
  const uintptr_t n = g_bank.n, expected = bank_expected(&g_bank);
  uint64_t ops = 0, transfers = 0, checks = 0, bad = 0, reads = 0;
  uintptr_t sink = 0;
  while (bench_running()) {
    uint64_t r = bench_rand(&w->t.rng);
    unsigned op = (unsigned)(r & 0xffff) % 100;
    if (op < g_transfer_pct) {
      uintptr_t from = (uintptr_t)((r >> 16) % n);
      uintptr_t to = (uintptr_t)((r >> 40) % (n - 1));
      to += to >= from; /* distinct accounts */
      op_transfer(tx, from, to, 1 + (uintptr_t)((r >> 8) & 63));
      transfers++;
    } else if (op < g_transfer_pct + g_check_pct) {
      bad += op_total(tx) != expected;
      checks++;
    } else {
      sink += op_balance(tx, (uintptr_t)((r >> 16) % n));
      reads++;
    }
    ops++;
  }
  bench_done(&w->t);
  w->t.ops = ops;
  w->transfers = transfers;
  w->checks = checks;
  w->bad_checks = bad;
  w->reads = reads;
  w->sink = sink;
  TM_THREAD_EXIT(tx);
  return NULL;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-bank-" TM_NAME " [options]\n"
          "  -a N   accounts (1024)\n"
          "  -T P   percent transfers (90)\n"
          "  -c P   percent balance checks reading every account (10);\n"
          "         the remaining operations read one account\n"
          "  -t N   threads (1)%s\n"
          "  -d MS  duration in milliseconds (1000)\n"
          "  -S N   random seed (1)\n"
          "  -v     print the STM's conflict report to stderr (ame)\n"
          "Prints one JSON line; exits 1 if money was not conserved.\n",
#if defined(TM_SEQ)
          " (this variant: 1 only)"
#else
          ""
#endif
  );
}

int main(int argc, char **argv) {
  uint64_t accounts = 1024, transfer = 90, check = 10, threads = 1;
  uint64_t duration = 1000, seed = 1;
  const uintptr_t opening = 1000;
  int verbose = 0, c;
  while ((c = getopt(argc, argv, "a:T:c:t:d:S:vh")) != -1) {
    switch (c) {
    case 'a': accounts = bench_arg("a", optarg, 2, (uint64_t)1 << 32); break;
    case 'T': transfer = bench_arg("T", optarg, 0, 100); break;
    case 'c': check = bench_arg("c", optarg, 0, 100); break;
    case 't': threads = bench_arg("t", optarg, 1, 1024); break;
    case 'd': duration = bench_arg("d", optarg, 1, 3600000); break;
    case 'S': seed = bench_arg("S", optarg, 0, UINT64_MAX); break;
    case 'v': verbose = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  if (transfer + check > 100) {
    fprintf(stderr, "bench: -T + -c must not exceed 100\n");
    return 2;
  }
#if defined(TM_SEQ)
  if (threads != 1) {
    fprintf(stderr, "bench: the seq variant runs 1 thread only\n");
    return 2;
  }
#endif
  g_transfer_pct = (unsigned)transfer;
  g_check_pct = (unsigned)check;

  int rc = TM_STARTUP();
  if (rc != 0) {
    fprintf(stderr, "bench: cannot start the TM (%d)\n", rc);
    return 2;
  }
  if (bank_init(&g_bank, (uintptr_t)accounts, opening) != 0) {
    fprintf(stderr, "bench: out of memory\n");
    return 2;
  }
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

  uint64_t ops = 0, transfers = 0, checks = 0, bad = 0, reads = 0;
  for (unsigned i = 0; i < threads; i++) {
    ops += ws[i].t.ops;
    transfers += ws[i].transfers;
    checks += ws[i].checks;
    bad += ws[i].bad_checks;
    reads += ws[i].reads;
  }
  bench_stats_t st;
  bench_stats(&st, ops);
  int conserved = bank_check(&g_bank) == 0;
  int ok = conserved && bad == 0;

  bench_json_t j = {0};
  bench_json_str(&j, "bench", "bank");
  bench_json_str(&j, "variant", TM_NAME);
  bench_json_str(&j, "structure", "bank");
  bench_json_u64(&j, "threads", threads);
  bench_json_u64(&j, "accounts", accounts);
  bench_json_u64(&j, "transfer_pct", transfer);
  bench_json_u64(&j, "check_pct", check);
  bench_json_u64(&j, "duration_ms", duration);
  bench_json_u64(&j, "seed", seed);
  bench_json_dbl(&j, "seconds", secs);
  bench_json_u64(&j, "ops", ops);
  bench_json_dbl(&j, "ops_per_s", secs > 0 ? (double)ops / secs : 0.0);
  bench_json_u64(&j, "transfers", transfers);
  bench_json_u64(&j, "checks", checks);
  bench_json_u64(&j, "reads", reads);
  bench_json_stats(&j, &st);
  bench_json_u64(&j, "bad_checks", bad);
  bench_json_bool(&j, "conserved", conserved);
  bench_json_bool(&j, "valid", ok);
  bench_json_end(&j);

  if (verbose)
    bench_report();
  if (!conserved)
    fprintf(stderr, "bench: FAILED: final total %" PRIuPTR " != %" PRIuPTR
                    "\n", bank_sum(&g_bank), bank_expected(&g_bank));
  if (bad != 0)
    fprintf(stderr, "bench: FAILED: %" PRIu64 " balance checks saw a wrong "
                    "total\n", bad);

  bank_destroy(&g_bank);
  free(ws);
  TM_SHUTDOWN();
  return ok ? 0 : 1;
}
