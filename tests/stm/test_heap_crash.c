/*
** tests/stm/test_heap_crash.c — crash injection on the shared heap.
**
** Worker processes move money between accounts in the heap, each transfer
** one transaction that also records its number in the worker's own log,
** allocates a note for the destination account and frees the one it
** replaces (so the allocator is inside every transaction).  After each
** commit the worker acknowledges the transfer's number on a pipe: that is
** the promise made to a client.  The test kills workers with SIGKILL, at
** random moments and inside each phase of the commit (the heap's phase
** hook: holding locks, decided, written back, released), recovers them,
** starts new ones, and checks after every recovery, in a transaction of
** its own while the other workers keep running:
**   - the total is what it was (no transfer half-applied),
**   - every acknowledged transfer is in its worker's log (no committed
**     transfer lost),
**   - no ownership record is held by a free or dead slot
**     (ame_heap_verify),
**   - the bytes allocated are the baseline: one note per account (the
**     dead attempt's allocation was reclaimed).
** In the `peer` variant nobody calls ame_heap_recover_pid: the surviving
** workers must find the dead owner of the locks they meet and recover it
** themselves.
**
** AME_HEAP_KILLS sets the number of kills (default 200; `meson test
** heap_crash_stress` runs 10,000).  Recovery times are printed.
*/
#include "stm-test.h"

#include <ame/heap.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NACC 32
#define NWORK 3
#define INITIAL 1000
#define HEAP_SIZE ((size_t)64 << 20)

struct bank {
  uintptr_t acct[NACC * 8];     /* one account per 64-byte granule */
  void *note[NACC];             /* a blob per account (its reference) */
  ame_hlog_t *done[NWORK];      /* transfer numbers each worker slot did */
};

/* What the parent tells a worker through memory outside the heap. */
struct control {
  int plan;                     /* round << 8 | phase: in that round a
                                   worker dies at that phase (1..4 the
                                   hook's phases; 0 none) */
  int die_permille;             /* chance of dying at it */
  int dead_round;               /* the last round a worker died in */
  int entered[NWORK];           /* each worker's pid once it holds a slot */
};

static struct bank *bank;
static struct control *ctl;
static uint64_t rng_state;

static const char *const phases[] = {NULL, "locked", "validated",
                                     "writeback", "released"};

static void phase_hook(const char *phase) {
  /* The round and its phase in one word: a worker that read the plan of a
  ** round that is over finds that round's death taken (with two words, a
  ** worker could read the phase of a round just before the parent ended
  ** it, and die in the next round too: two deaths in one round, the
  ** second one recovered before the parent looked for it). */
  int plan = __atomic_load_n(&ctl->plan, __ATOMIC_SEQ_CST);
  int p = plan & 0xff, round = plan >> 8;
  if (p == 0 || strcmp(phase, phases[p]) != 0) return;
  if (rnd_below(&rng_state, 1000) >=
      (uint64_t)__atomic_load_n(&ctl->die_permille, __ATOMIC_RELAXED))
    return;
  int dead = __atomic_load_n(&ctl->dead_round, __ATOMIC_SEQ_CST);
  if (dead < round &&
      __atomic_compare_exchange_n(&ctl->dead_round, &dead, round, 0,
                                  __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
    raise(SIGKILL); /* one death per round */
}

static int64_t used_bytes(ame_heap_t *h) {
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  return st.used;
}

/* The heap filled up: say how. */
static void full(ame_heap_t *h) {
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  fprintf(stderr, "worker %d: heap full: used %lld of %llu, carved %llu\n",
          (int)getpid(), (long long)st.used, (unsigned long long)st.arena,
          (unsigned long long)st.top);
  abort();
}

/* The parent's bookkeeping (acknowledgements, ids seen: tens of MiB by
** the end) lives in mappings that fork() does not pass on: a worker
** needs none of it, and the parent, which forks a worker after every
** kill, would otherwise copy its page tables each time and then fault on
** every page it writes (copy-on-write). */
static void *grow(void *p, size_t old, size_t size) {
  void *q = p ? mremap(p, old, size, MREMAP_MAYMOVE)
              : mmap(NULL, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT(q != MAP_FAILED);
  ASSERT_EQ(madvise(q, size, MADV_DONTFORK), 0);
  return q;
}

static void release(void *p, size_t size) {
  if (p) munmap(p, size);
}

/* A worker: transfers forever, acknowledging each on fd. */
static void worker(ame_heap_t *h, int index, int fd) {
  ame_heap_after_fork_child(h);
  ame_heap_set_phase_hook(phase_hook);
  rng_state = rnd_seed((unsigned)getpid());
  ame_tx_t *tx = ame_heap_enter(h);
  if (tx == NULL) _exit(3);
  __atomic_store_n(&ctl->entered[index], (int)getpid(), __ATOMIC_RELEASE);
  for (uint64_t n = 1;; n++) {
    uint64_t id = ((uint64_t)getpid() << 32) | n;
    unsigned a = (unsigned)rnd_below(&rng_state, NACC);
    unsigned b = (unsigned)rnd_below(&rng_state, NACC);
    uintptr_t amount = rnd_below(&rng_state, 50);
    char text[24] = {0}; /* fixed size: one note's bytes never change */
    snprintf(text, sizeof text, "%llx->%u", (unsigned long long)id, b);
    const size_t tl = sizeof text;
    AME_ATOMIC(tx) {
      uintptr_t va = ame_load_word_tx(tx, &bank->acct[a * 8]);
      uintptr_t vb = ame_load_word_tx(tx, &bank->acct[b * 8]);
      if (a != b && va >= amount) {
        ame_store_word_tx(tx, &bank->acct[a * 8], va - amount);
        ame_store_word_tx(tx, &bank->acct[b * 8], vb + amount);
      }
      void *nb = ame_heap_blob_new(tx, text, tl, 20, id);
      if (nb == NULL) full(h);
      void *old = ame_load_ptr_tx(tx, &bank->note[b]);
      ame_store_ptr_tx(tx, &bank->note[b], nb);
      if (old) ame_heap_free(tx, old);
      ame_hlog_t *log = ame_load_ptr_tx(tx, (void **)&bank->done[index]);
      if (ame_hlog_append(tx, log, &id, sizeof id) < 0) full(h);
    }
    if (write(fd, &id, sizeof id) != (ssize_t)sizeof id) _exit(4);
  }
}

/* Acknowledgements read so far, per worker index. */
struct acks {
  uint64_t *ids;
  size_t n, cap;
  size_t total;                 /* checked and forgotten */
};

static void ack_add(struct acks *a, uint64_t id) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? 2 * a->cap : 1024;
    a->ids = grow(a->ids, a->cap * sizeof *a->ids, cap * sizeof *a->ids);
    a->cap = cap;
  }
  a->ids[a->n++] = id;
}

/* Drain what fd holds now (non-blocking). */
static void drain(int fd, struct acks *a) {
  uint64_t buf[256];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) break;
    ASSERT_EQ(r % 8, 0);
    for (ssize_t i = 0; i < r / 8; i++) ack_add(a, buf[i]);
  }
}

/* The transfers found in the logs so far (the check trims the logs as it
** goes, so that they stay short): an open-addressing set of ids. */
static struct {
  uint64_t *slot;
  size_t n, cap;
} seen;

/* The slot to probe first: the product's high bits (the ids of different
** workers differ in their high half, and their low halves repeat). */
static size_t seen_hash(uint64_t id) {
  unsigned bits = (unsigned)__builtin_ctzll(seen.cap);
  return (size_t)((id * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static void seen_add(uint64_t id) {
  if (2 * (seen.n + 1) > seen.cap) {
    size_t cap = seen.cap ? 2 * seen.cap : 1 << 16;
    uint64_t *old = seen.slot;
    size_t oldcap = seen.cap;
    seen.slot = grow(NULL, 0, cap * sizeof *seen.slot); /* zeroed */
    seen.cap = cap;
    seen.n = 0;
    for (size_t i = 0; i < oldcap; i++)
      if (old[i]) seen_add(old[i]);
    release(old, oldcap * sizeof *old);
  }
  size_t i = seen_hash(id);
  while (seen.slot[i] && seen.slot[i] != id) i = (i + 1) & (seen.cap - 1);
  if (!seen.slot[i]) {
    seen.slot[i] = id;
    seen.n++;
  }
}

static int seen_has(uint64_t id) {
  if (seen.cap == 0) return 0;
  size_t i = seen_hash(id);
  while (seen.slot[i]) {
    if (seen.slot[i] == id) return 1;
    i = (i + 1) & (seen.cap - 1);
  }
  return 0;
}

/* The ids logged (copied out), and how many. */
static struct {
  uint64_t *ids;
  size_t n, cap;
} logged;

/* Drop the records up to upto, a thousand per transaction (a check's
** worth would not fit one write log). */
static void trim(ame_tx_t *tx, ame_hlog_t *log, uint64_t upto) {
  for (;;) {
    volatile size_t n = 0;
    AME_ATOMIC(tx) {
      void *r = ame_hlog_first(tx, log, 0);
      uint64_t first = r ? ame_hlog_record_seq(tx, r) : upto + 1;
      uint64_t to = first + 1000 < upto ? first + 1000 : upto;
      n = first <= upto ? ame_hlog_trim(tx, log, to) : 0;
    }
    if (n == 0) break;
  }
}

/* Append to logged the ids of log's records after `after` up to `last`
** and trim them, a thousand records per transaction: the check's snapshot
** (below) may cover many records, and a transaction that the contention
** manager makes irrevocable locks all it reads, in its write log.  The
** records up to last stay as they are until the parent trims them. */
static void collect_ids(ame_tx_t *tx, ame_hlog_t *log, uint64_t after,
                        uint64_t last) {
  while (after < last) {
    volatile size_t start = logged.n;
    volatile uint64_t upto = after;
    AME_ATOMIC(tx) {
      logged.n = start;
      upto = after;
      for (void *r = ame_hlog_first(tx, log, after);
           r && upto < last && logged.n - start < 1000;
           r = ame_hlog_next(tx, r)) {
        uint64_t id = 0;
        ame_hlog_record_value(tx, r, &id, sizeof id);
        upto = ame_hlog_record_seq(tx, r);
        if (logged.n == logged.cap) {
          size_t cap = logged.cap ? 2 * logged.cap : 4096;
          logged.ids = grow(logged.ids, logged.cap * sizeof *logged.ids,
                            cap * sizeof *logged.ids);
          logged.cap = cap;
        }
        logged.ids[logged.n++] = id;
      }
    }
    ASSERT_GT(upto, after); /* the records up to last are there */
    after = upto;
    trim(tx, log, upto); /* the next chunk starts at the head */
  }
}

/* The invariants, in one transaction of the parent's.  The bytes
** allocated must be base plus per_record for each transfer logged. */
static void check(ame_heap_t *h, ame_tx_t *tx, struct acks *acks,
                  int64_t base, int64_t per_record, int verify) {
  volatile uintptr_t total = 0;
  volatile int64_t used = 0;
  volatile uint64_t records = 0;
  static uint64_t first[NWORK], last[NWORK];
  static ame_hlog_t *logs[NWORK];
  /* One snapshot: the total, the bytes allocated, and each log's range of
  ** records (numbered without gaps; trimming drops a prefix). */
  AME_ATOMIC(tx) {
    total = 0;
    records = 0;
    for (unsigned i = 0; i < NACC; i++)
      total += ame_load_word_tx(tx, &bank->acct[i * 8]);
    used = ame_heap_used_tx(tx);
    for (int w = 0; w < NWORK; w++) {
      logs[w] = ame_load_ptr_tx(tx, (void **)&bank->done[w]);
      last[w] = ame_hlog_next_seq(tx, logs[w]) - 1;
      void *r = ame_hlog_first(tx, logs[w], 0);
      first[w] = r ? ame_hlog_record_seq(tx, r) : last[w] + 1;
      records += last[w] + 1 - first[w];
    }
  }
  logged.n = 0;
  for (int w = 0; w < NWORK; w++) {
    collect_ids(tx, logs[w], first[w] - 1, last[w]);
  }
  ASSERT_EQ(total, (uintptr_t)NACC * INITIAL);
  ASSERT_EQ(logged.n, records);
  /* The base and the records the logs held then (the trims above freed
  ** them since, and the base includes no record). */
  ASSERT_EQ(used, base + (int64_t)records * per_record);
  for (size_t i = 0; i < logged.n; i++) seen_add(logged.ids[i]);
  char msg[160];
  int bad = verify ? ame_heap_verify(h, msg, sizeof msg) : 0;
  if (bad) AME_TEST_FAIL_("ame_heap_verify: %d problems: %s", bad, msg);
  /* Every acknowledgement read so far names a logged transfer. */
  for (int w = 0; w < NWORK; w++) {
    for (size_t i = 0; i < acks[w].n; i++)
      if (!seen_has(acks[w].ids[i]))
        AME_TEST_FAIL_("transfer %llx was acknowledged and is lost",
                       (unsigned long long)acks[w].ids[i]);
    acks[w].total += acks[w].n;
    acks[w].n = 0;
  }
}

static pid_t spawn(ame_heap_t *h, int index, int *fd) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  fflush(NULL);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(p[0]);
    worker(h, index, p[1]);
  }
  close(p[1]);
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  *fd = p[0];
  return pid;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

static void crash(int peer) {
  ctl = mmap(NULL, sizeof *ctl, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT(ctl != MAP_FAILED);
  const char *env = getenv("AME_HEAP_KILLS");
  unsigned kills = env ? (unsigned)atoi(env) : 200;
  ame_heap_config_t cfg = {.size = HEAP_SIZE, .max_slots = 32};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static struct bank *volatile b;
  AME_ATOMIC(tx) {
    b = ame_heap_alloc(tx, sizeof *b, 16, 0);
    for (unsigned i = 0; i < NACC; i++) {
      ame_store_word_tx(tx, &b->acct[i * 8], INITIAL);
      char text[24] = "-";
      ame_store_ptr_tx(tx, &b->note[i],
                       ame_heap_blob_new(tx, text, sizeof text, 20, 0));
    }
    for (int w = 0; w < NWORK; w++)
      ame_store_ptr_tx(tx, (void **)&b->done[w], ame_hlog_new(tx, 21, 0));
  }
  bank = b;
  /* Notes are replaced one for one; the logs grow by a record per
  ** transfer, whose bytes a scratch log measures. */
  volatile int64_t base = 0, per_record = 0, before = 0;
  static ame_hlog_t *volatile scratch;
  AME_ATOMIC(tx) { scratch = ame_hlog_new(tx, 21, 0); }
  AME_ATOMIC(tx) { before = ame_heap_used_tx(tx); }
  AME_ATOMIC(tx) {
    uint64_t id = 1;
    ame_hlog_append(tx, scratch, &id, sizeof id);
  }
  AME_ATOMIC(tx) {
    per_record = ame_heap_used_tx(tx) - before;
    ame_hlog_destroy(tx, scratch);
  }
  while (ame_heap_collect(h, 10) == 1) {
  }
  AME_ATOMIC(tx) { base = ame_heap_used_tx(tx); }
  ASSERT_GT(per_record, 0);
  struct acks acks[NWORK];
  memset(acks, 0, sizeof acks);
  pid_t pids[NWORK];
  int fds[NWORK];
  for (int w = 0; w < NWORK; w++) pids[w] = spawn(h, w, &fds[w]);
  uint64_t rs = rnd_seed(1);
  double *times = calloc(kills, sizeof *times);
  ASSERT_NOT_NULL(times);
  unsigned by_phase[5] = {0}, peer_recovered = 0;
  /* Kills of workers that held a slot: each must be recovered.  (A kill
  ** at a random moment may come before a new worker has entered the heap,
  ** or while it enters: then there is no participant to recover.) */
  unsigned participants = 0;
  watchdog_start(peer ? 600 : 300, "crash injection");
  for (unsigned k = 0; k < kills; k++) {
    int w = (int)rnd_below(&rs, NWORK);
    int phase = (int)rnd_below(&rs, 5); /* 0: at a random moment */
    /* The recoveries so far, counted before any worker may die in this
    ** round: a worker dies at its commit's phase as soon as the plan is
    ** out, and the survivors may have recovered it before the parent
    ** looks (counted after the plan, that recovery could be in the count
    ** already, and the wait below for one more would never end). */
    ame_heap_stats_t s0;
    ame_heap_stats(h, &s0);
    uint64_t recoveries = s0.recoveries;
    __atomic_store_n(&ctl->die_permille, 200, __ATOMIC_RELAXED);
    __atomic_store_n(&ctl->plan, (int)(k + 1) << 8 | phase, __ATOMIC_SEQ_CST);
    /* Every fourth round the parent is slow to look, as on a loaded
    ** machine: the death, and its recovery, may be over by then. */
    if (k % 4 == 3) sleep_ms(20);
    int st = 0;
    pid_t got;
    if (phase == 0) {
      for (int x = 0; x < NWORK; x++) drain(fds[x], &acks[x]);
      sleep_ms(1 + rnd_below(&rs, 4));
      kill(pids[w], SIGKILL);
      got = waitpid(pids[w], &st, 0);
    } else {
      /* Some worker dies at that phase by itself (keep their pipes
      ** drained meanwhile: a worker blocked on a full pipe commits
      ** nothing). */
      while ((got = waitpid(-1, &st, WNOHANG)) == 0) {
        for (int x = 0; x < NWORK; x++) drain(fds[x], &acks[x]);
        sleep_ms(1);
      }
      for (w = 0; w < NWORK && pids[w] != got; w++) {
      }
      ASSERT_LT(w, NWORK);
    }
    __atomic_store_n(&ctl->plan, (int)(k + 1) << 8, __ATOMIC_SEQ_CST);
    ASSERT_EQ(got, pids[w]);
    participants +=
        __atomic_load_n(&ctl->entered[w], __ATOMIC_ACQUIRE) == (int)got;
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
      AME_TEST_FAIL_("worker %d ended with status %#x", w, st);
    by_phase[phase]++;
    uint64_t t0 = now_ns();
    if (peer) {
      /* The survivors find the dead owner of the locks they meet.  Killed
      ** inside a commit holding locks (phases 1-3), it holds some that
      ** they will meet (accounts, notes): wait for that however long it
      ** takes (a failure is the watchdog's).  Killed elsewhere, it may
      ** hold nothing they need: give them a moment, then check. */
      uint64_t deadline = now_ms() + 100 * slow_factor();
      uint64_t next_check = now_ms() + 10;
      ame_heap_stats_t s1;
      for (;;) {
        ame_heap_stats(h, &s1);
        if (s1.recoveries > recoveries) break;
        if ((phase == 0 || phase == 4) && now_ms() > deadline) break;
        /* A survivor that died (crashed: nobody else dies in a round)
        ** would leave the wait to the watchdog, without a word. */
        int st2 = 0;
        pid_t other = waitpid(-1, &st2, WNOHANG);
        if (other > 0)
          AME_TEST_FAIL_("worker %d ended with status %#x while the "
                         "survivors recovered %d", (int)other, st2, (int)got);
        for (int x = 0; x < NWORK; x++)
          if (x != w) drain(fds[x], &acks[x]);
        if (now_ms() >= next_check && used_bytes(h) > (int64_t)(HEAP_SIZE / 4)) {
          /* Keep the logs short meanwhile (the dead slot's locks are
          ** still held: no ame_heap_verify yet).  Rarely: the check
          ** conflicts with every transfer. */
          check(h, tx, acks, base, per_record, 0);
        }
        if (now_ms() >= next_check) next_check = now_ms() + 10;
        sched_yield();
      }
      if (s1.recoveries > recoveries)
        peer_recovered++;
      else
        ame_heap_check(h);
    } else {
      ASSERT_GE(ame_heap_recover_pid(h, got), 0);
    }
    times[k] = (double)(now_ns() - t0) / 1e6;
    if (getenv("AME_HEAP_CRASH_VERBOSE")) {
      ame_heap_stats_t sv;
      ame_heap_stats(h, &sv);
      printf("kill %u: phase %d, %.3f ms, used %lld, carved %llu\n", k,
             phase, times[k], (long long)sv.used,
             (unsigned long long)sv.top);
      fflush(stdout);
    }
    drain(fds[w], &acks[w]);
    close(fds[w]);
    /* Everything the dead one acknowledged must be there; so must the
    ** others' so far. */
    for (int x = 0; x < NWORK; x++)
      if (x != w) drain(fds[x], &acks[x]);
    uint64_t c0 = now_ns();
    check(h, tx, acks, base, per_record, 1);
    if (getenv("AME_HEAP_CRASH_VERBOSE"))
      printf("  check %.3f ms, %zu ids seen\n", (double)(now_ns() - c0) / 1e6,
             seen.n), fflush(stdout);
    pids[w] = spawn(h, w, &fds[w]);
  }
  for (int w = 0; w < NWORK; w++) {
    kill(pids[w], SIGKILL);
    waitpid(pids[w], NULL, 0);
    ame_heap_recover_pid(h, pids[w]);
    drain(fds[w], &acks[w]);
    close(fds[w]);
  }
  qsort(times, kills, sizeof *times, cmp_double);
  size_t total_acks = 0;
  for (int w = 0; w < NWORK; w++) total_acks += acks[w].total + acks[w].n;
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  printf("%s: %u kills (random %u, locked %u, validated %u, writeback %u, "
         "released %u; %u of them holding a slot), %zu transfers "
         "acknowledged, %llu recoveries (%llu finished a commit)\n",
         peer ? "heap_crash_peer" : "heap_crash", kills, by_phase[0],
         by_phase[1], by_phase[2], by_phase[3], by_phase[4], participants,
         total_acks,
         (unsigned long long)st.recoveries,
         (unsigned long long)st.recovered_commits);
  if (peer)
    printf("recovered by a surviving worker: %u of %u (the rest held "
           "nothing the others met; ame_heap_check did them)\n",
           peer_recovered, kills);
  printf("recovery time, ms: p50 %.3f p99 %.3f max %.3f\n",
         times[kills / 2], times[kills * 99 / 100], times[kills - 1]);
  ASSERT_GE(st.recoveries, participants);
  ASSERT_GE(participants, kills / 2); /* most kills hit a participant */
  for (int w = 0; w < NWORK; w++)
    release(acks[w].ids, acks[w].cap * sizeof *acks[w].ids);
  release(seen.slot, seen.cap * sizeof *seen.slot);
  release(logged.ids, logged.cap * sizeof *logged.ids);
  memset(&seen, 0, sizeof seen);
  memset(&logged, 0, sizeof logged);
  free(times);
  ame_heap_exit(h);
  ame_heap_close(h);
}

TEST_IMPL(heap_crash) { crash(0); }
TEST_IMPL(heap_crash_peer) { crash(1); }
