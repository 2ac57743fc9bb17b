/*
** stm/src/stm.c — the STM engine: descriptors, loads and stores, commit,
** abort, irrevocability, retry, contention management and reclamation.
**
** Design (docs/stm.md has the measurements behind it): time-based, word
** granularity, in the TinySTM "write-back, encounter-time locking" family
** with LSA snapshot extension.
**
**  - A global clock counts commits.  A transaction's snapshot starts at the
**    clock's value and is extended (after validating every read) when it
**    meets a newer version, so reads are always consistent (opacity).
**  - A write locks the word's orec at once (CAS to a pointer to the write-log
**    entry) and buffers the value; commit takes a timestamp from the clock,
**    validates the reads if anyone committed since the snapshot, writes the
**    values back and releases the orecs with the new version.
**  - A conflict with a lock held by another transaction waits a little, then
**    aborts the one that met it; one holding locks itself waits only for a
**    younger owner (wait-die).  Aborts back off exponentially; after
**    `escalate_after` aborts in a row the transaction restarts irrevocable.
**  - An irrevocable transaction holds a ticket lock (one at a time, FIFO)
**    and locks everything it reads as well as what it writes, so it can
**    never be invalidated; others keep running and abort when they meet its
**    locks.  It waits for locks others hold (and asks them to abort).
**  - Each running transaction publishes its start timestamp (`active`).  A
**    block freed by a transaction that committed at ts is handed back to
**    malloc once every thread is idle or started at or after ts; the same
**    test on `active` alone makes the privatization fence.  While a
**    thread runs commit or abort handlers it is between transactions
**    (`active` is idle, so nobody's quiescence waits for it), but it
**    publishes the finished transaction's start as `hold`, which keeps
**    what that transaction could reach allocated until the handlers
**    return (reclamation takes the older of `active` and `hold`).
**    Handlers never hold or wait for the irrevocability ticket.
**
** Memory ordering (C11; x86 needs none of the fences below as
** instructions, weakly ordered CPUs need all of them):
**  - Orecs and data words form a seqlock: a reader loads the orec
**    (acquire), the word (acquire) and the orec again; a writer locks the
**    orec (CAS), issues a release fence before writing back the words (so
**    a reader that sees a new word also sees the orec locked or newer on
**    its second load), and unlocks with a release store of the new
**    version.
**  - Publishing `active` and reading shared data is a store-load pattern
**    against the reclaimer's (and privatizer's) commit-then-scan: both
**    sides separate the store from the loads with a sequentially
**    consistent fence.  In the process's own domain, where the kernel
**    offers it, the fence is asymmetric (C++'s proposed
**    asymmetric_thread_fence_light/_heavy, liburcu's membarrier flavour):
**    a transaction's start has only a compiler barrier after its store
**    (fence_light()), and the rarer side, the reclaimer's or privatizer's
**    scan, issues membarrier(PRIVATE_EXPEDITED) (fence_heavy()), which
**    makes every thread of the process run a full barrier, so that each
**    light fence acts as a sequentially consistent one.  A reclamation
**    scan needs it only where the starts it reads cannot decide
**    (oldest_seen()).  The same pair orders a writer's write-back before
**    its look for ame_retry() waiters (light, retry_fence()) against a
**    waiter's count before its check of what it read (heavy).  A shared
**    heap's domain (other processes' threads too) keeps the symmetric
**    fences.
*/
#include "internal.h"
#include "heap.h"

#include <assert.h>
#include <errno.h>
#include <sched.h>
#include <limits.h>
#include <malloc.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct ame__global ame__G = {.reg_lock = PTHREAD_MUTEX_INITIALIZER};

static AME__TLS ame_tx_t *self;
AME__TLS ame_tx_t *ame__heap_self; /* the thread's descriptor on the heap */

#define DEFAULT_OREC_BITS 20
#define DEFAULT_MAX_THREADS 1024
#define DEFAULT_ESCALATE 16
#define READ_LOG_INIT 4096
#define SEEN_SPINS 64       /* pauses a scan waits for a thread between
                               transactions to start its next */
#define LIMBO_SCAN 1024     /* a reclamation scan each time a thread's
                               deferred frees pass a multiple of this */
#define LIMBO_PERIOD 65536  /* ... and when this many starts passed
                               since its last scan while it has any (a
                               scan's fence can cost a membarrier:
                               microseconds, and an interrupt of every
                               CPU that runs one of its threads) */
#define CONFLICT_SPINS 256  /* pauses a store waits on a held lock */
/* After a load met a lock (backoff()): the owner is watched every
** WATCH_EVERY pauses; an attempt of its that ends WATCH_LONG pauses or
** more after the abort was a long one; the watch lasts up to WATCH_MAX. */
#define WATCH_EVERY 4
#define WATCH_LONG 64
#define WATCH_MAX 4096
#define SNAPSHOT_REFRESH 16 /* starts between two reads of the clock */
#define LONG_READER 64      /* an attempt whose snapshot failed after more
                               reads than this runs again without a
                               backoff (abort_tx) */
#define RETRY_BACKSTOP_NS 1000000L /* ame_retry's first futex timeout ... */
#define RETRY_BACKSTOP_MAX_NS 64000000L /* ... doubling up to this */
#define VERSION0 2          /* initial orec value: version of ts 1 */
#define STUCK_MS 2          /* heap: a lock held this long may be a dead
                               process's */

#define IS_LOCKED(l) ((l) & 1)
#define LOCK_ENTRY(l) ((struct ame__wentry *)((l) & ~(uintptr_t)1))
#define MASK_ALL (~(uintptr_t)0)
#define MASK_LO ((uintptr_t)0xffffffffu)
#define MASK_HI (MASK_LO << 32)

static void rollback(ame_tx_t *tx, ame_abort_cause_t cause, uintptr_t addr,
                     const char *other_site);
static void abort_handlers(ame_tx_t *tx);
static void restart(ame_tx_t *tx) __attribute__((noreturn));
static void release_token(ame_tx_t *tx);
static void abort_tx(ame_tx_t *tx, ame_abort_cause_t cause, uintptr_t addr,
                     const char *other_site) __attribute__((noreturn));
static void reclaim(ame_tx_t *tx, int force);
static void recycle_drain(ame_tx_t *tx);
static inline void commit(ame_tx_t *tx);
static void end_tx(ame_tx_t *tx);
static uintptr_t validate(ame_tx_t *tx);
static void log_full(ame_tx_t *tx);
static void wait_reclaimable(ame_tx_t *tx, uintptr_t ts);
static void undo_restore(ame_tx_t *tx);
static void saved_restore(ame_tx_t *tx);

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  __asm__ __volatile__("" ::: "memory");
#endif
}

/* A sequentially consistent fence: C11's atomic_thread_fence(seq_cst).
** On x86-64 a locked no-op on the top of the stack is the same full fence
** (x86-TSO) at less cost than mfence, as the Linux kernel's smp_mb() does.
** The thread sanitizer does not model fences (gcc refuses them under
** -fsanitize=thread): there a seq_cst read-modify-write stands in. */
static inline void fence_sc(void) {
#if defined(__SANITIZE_THREAD__)
  static uintptr_t dummy;
  __atomic_fetch_add(&dummy, 0, __ATOMIC_SEQ_CST);
#elif defined(__x86_64__)
  __asm__ __volatile__("lock; orq $0, (%%rsp)" ::: "memory", "cc");
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* Store v to *p (release), then a sequentially consistent fence: the
** first half of the store-load pattern that publishes a transaction's
** start.  On x86-64 one xchg is both (a locked instruction is a full fence
** under x86-TSO, and as a seq_cst read-modify-write it keeps the compiler
** from hoisting later loads above it), the same cost as a plain seq_cst
** store there; elsewhere it is the C11 store and fence. */
static inline void store_fence_sc(uintptr_t *p, uintptr_t v) {
#if defined(__x86_64__) || defined(__SANITIZE_THREAD__)
  (void)__atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
#else
  STORE_REL(p, v);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* The asymmetric fence (see the top of this file).  fence_light() follows
** the store that publishes a start when ame__G.membarrier is set: a
** compiler barrier, which the heavy side's membarrier makes a full fence
** on whichever CPU runs the thread.  fence_heavy(d) precedes a scan of
** d's published starts. */
static inline void fence_light(void) {
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static void fence_heavy(struct ame__dom *d) {
#if !defined(__SANITIZE_THREAD__)
  if (d == &ame__G.dom && LOAD(&ame__G.membarrier)) {
    __atomic_add_fetch(&ame__G.membarriers, 1, __ATOMIC_RELAXED);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
      return;
    /* Not registered (a process forked from one that was): register and
    ** try again; without it the light fences order nothing. */
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0,
                0) == 0 &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
      return;
    fprintf(stderr, "ame: membarrier failed after it was registered\n");
    abort();
  }
#else
  (void)d;
#endif
  fence_sc();
}

/* Between a writer's write-back and its look at d->retry_waiters: the
** committer's half of a store-load pattern whose other half is
** ame_retry()'s (count itself a waiter, fence_heavy(), check its reads),
** so that either the waiter sees the new versions or the committer sees
** the waiter.  Light where the transaction's starts are. */
static inline void retry_fence(const ame_tx_t *tx) {
#if !defined(__SANITIZE_THREAD__)
  if (AME__LIKELY(tx->light)) {
    fence_light();
    return;
  }
#endif
  (void)tx;
  fence_sc();
}

/* Whether this process can use the asymmetric fence: membarrier's private
** expedited command, registered now.  AME_STM_MEMBARRIER=0 turns it off
** (every start then has its locked instruction).  Never under the thread
** sanitizer, which models neither side. */
static int membarrier_setup(void) {
#if !defined(__SANITIZE_THREAD__)
  const char *env = getenv("AME_STM_MEMBARRIER");
  if (env && strcmp(env, "0") == 0) return 0;
  long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (q < 0 || !(q & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return 0;
  return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0,
                 0) == 0;
#else
  return 0;
#endif
}

static inline uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* ------------------------------------------------------------------------
** Vectors.
*/

/* Append size bytes at item to v.  Return 0 or -ENOMEM. */
int ame__vec_push(struct ame__vec *v, const void *item, size_t size) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 16;
    void *p = realloc(v->items, cap * size);
    if (p == NULL) return -ENOMEM;
    v->items = p;
    v->cap = cap;
  }
  memcpy((char *)v->items + v->n * size, item, size);
  v->n++;
  return 0;
}

void ame__vec_free(struct ame__vec *v) {
  free(v->items);
  v->items = NULL;
  v->n = v->cap = 0;
}

/* ------------------------------------------------------------------------
** Lifecycle.
*/

/* The private domain's orec table.  A working set spread over the address
** space (several threads' malloc arenas, stacks, mappings) has its orecs
** on as many pages of the table as it has runs of granules: with 4 KiB
** pages, TLB misses.  So a table of 2 MiB or more is aligned to 2 MiB and
** asked to be backed by huge pages (transparent huge pages in their
** "madvise" or "always" mode; elsewhere the advice is ignored, and so is
** its failure); a smaller one is aligned to a cache line, so that a run
** of 8 orecs is one line.  Freed with free(). */
#define OREC_ALIGN ((size_t)2 << 20)
static uintptr_t *orecs_alloc(size_t n) {
  void *p = NULL;
  size_t bytes = n * sizeof(uintptr_t);
  if (posix_memalign(&p, bytes < OREC_ALIGN ? AME__CACHELINE : OREC_ALIGN,
                     bytes) != 0)
    return NULL;
  if (bytes >= OREC_ALIGN) (void)madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

/* fork().  The child has only the forking thread: a registry lock that
** another thread held at the fork (entering, leaving, summing statistics)
** would stay held there for good, and the child's first thread to register
** (the binding's new worker in a child that twistd daemonized) would wait
** for it forever.  So the fork waits for the lock, and both processes
** release it after.
**
** The other threads' transactions in flight at the fork never end in the
** child.  Their descriptors stay taken and what they locked stays locked
** (docs/stm.md), but nothing else may wait for them there: their starts
** are withdrawn (a privatization or ame_quiesce() would wait for them
** forever, and reclamation would keep every block freed after them), the
** irrevocability queue is emptied (a ticket they held or waited for is
** never passed on; the forking thread, outside a transaction, holds and
** awaits none), and so is the count of threads in ame_retry() (every
** commit would make a futex call to wake nobody). */
static void fork_prepare(void) { pthread_mutex_lock(&ame__G.reg_lock); }
static void fork_release(void) { pthread_mutex_unlock(&ame__G.reg_lock); }
static void fork_child(void) {
  struct ame__dom *d = &ame__G.dom;
  if (LOAD(&ame__G.initialised)) {
    unsigned n = LOAD(&d->n_slots);
    for (unsigned i = 0; i < n; i++) {
      ame_tx_t *t = d->threads[i];
      if (t == NULL || t == self) continue;
      STORE(&t->active, AME__IDLE);
      STORE(&t->hold, AME__IDLE);
    }
    if (self == NULL || !self->has_token)
      STORE(&d->irr_serving, LOAD(&d->irr_next));
    STORE(&d->retry_waiters, 0);
  }
  pthread_mutex_unlock(&ame__G.reg_lock);
}
static void fork_handlers(void) {
  (void)pthread_atfork(fork_prepare, fork_release, fork_child);
}

int ame_stm_init(const ame_stm_config_t *cfg) {
  static pthread_once_t forks = PTHREAD_ONCE_INIT;
  (void)pthread_once(&forks, fork_handlers);
  pthread_mutex_lock(&ame__G.reg_lock);
  if (ame__G.initialised) {
    pthread_mutex_unlock(&ame__G.reg_lock);
    return -EALREADY;
  }
  unsigned bits = cfg && cfg->orec_bits ? cfg->orec_bits : DEFAULT_OREC_BITS;
  const char *env = getenv("AME_STM_OREC_BITS");
  if ((cfg == NULL || cfg->orec_bits == 0) && env && *env)
    bits = (unsigned)strtoul(env, NULL, 10);
  unsigned maxt =
      cfg && cfg->max_threads ? cfg->max_threads : DEFAULT_MAX_THREADS;
  if (bits < 4 || bits > 28) {
    pthread_mutex_unlock(&ame__G.reg_lock);
    return -EINVAL;
  }
  size_t n = (size_t)1 << bits;
  uintptr_t *orecs = orecs_alloc(n);
  ame_tx_t **threads = calloc(maxt, sizeof *threads);
  ame_stats_t *base = calloc(maxt, sizeof *base);
  if (orecs == NULL || threads == NULL || base == NULL) {
    free(orecs);
    free(threads);
    free(base);
    pthread_mutex_unlock(&ame__G.reg_lock);
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++) orecs[i] = VERSION0;
  struct ame__dom *d = &ame__G.dom;
  d->orecs = orecs;
  d->orec_bias = 0;
  d->orec_mask = ((uintptr_t)1 << bits) - 1;
  STORE(&d->clock, 1);
  d->escalate_after =
      cfg && cfg->escalate_after ? cfg->escalate_after : DEFAULT_ESCALATE;
  d->max_threads = maxt;
  d->threads = threads;
  d->shared = 0;
  d->heap = NULL;
  STORE(&d->n_slots, 0);
  STORE(&d->irr_next, 0);
  STORE(&d->irr_serving, 0);
  memset(&ame__G.orphan_stats, 0, sizeof ame__G.orphan_stats);
  ame__G.stats_base = base;
  STORE(&ame__G.membarrier, membarrier_setup());
  STORE_REL(&ame__G.initialised, 1);
  pthread_mutex_unlock(&ame__G.reg_lock);
  return 0;
}

static void free_descriptor(ame_tx_t *tx) {
  struct ame__wchunk *c = tx->w_first;
  while (c) {
    struct ame__wchunk *next = c->next;
    free(c);
    c = next;
  }
  struct ame__limbo *lb = tx->limbo.items;
  for (size_t i = 0; i < tx->limbo.n; i++) free(lb[i].ptr);
  recycle_drain(tx);
  free(tx->r_base);
  ame__vec_free(&tx->allocs);
  ame__vec_free(&tx->frees);
  ame__vec_free(&tx->on_commit);
  ame__vec_free(&tx->on_abort);
  ame__vec_free(&tx->limbo);
  ame__vec_free(&tx->retry_set);
  ame__vec_free(&tx->undo);
  ame__vec_free(&tx->undo_bytes);
  free(tx);
}

void ame_stm_shutdown(void) {
  pthread_mutex_lock(&ame__G.reg_lock);
  if (!ame__G.initialised) {
    pthread_mutex_unlock(&ame__G.reg_lock);
    return;
  }
  struct ame__dom *d = &ame__G.dom;
  unsigned n = LOAD(&d->n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *tx = d->threads[i];
    if (tx == NULL) continue;
    assert(!LOAD(&tx->in_use) && "ame_stm_shutdown with threads registered");
    free_descriptor(tx);
  }
  struct ame__limbo *lb = ame__G.orphans.items;
  for (size_t i = 0; i < ame__G.orphans.n; i++) free(lb[i].ptr);
  ame__vec_free(&ame__G.orphans);
  free(d->threads);
  free(d->orecs);
  free(ame__G.stats_base);
  d->threads = NULL;
  d->orecs = NULL;
  ame__G.stats_base = NULL;
  ame__stats_shutdown();
  STORE_REL(&ame__G.initialised, 0);
  pthread_mutex_unlock(&ame__G.reg_lock);
}

/* Memory (uninitialised, as malloc's) for what one thread writes on
** every transaction (its descriptor, its read and write logs), in cache
** lines of its own: malloc would put the block's first and last lines
** beside other blocks, which other threads may read on every transaction
** (a data structure's root, allocated just before the first descriptor).
** Each store to the descriptor would then take that line from them.
** Freed with free(). */
static void *alloc_lines(size_t size) {
  void *p = NULL;
  size = (size + AME__CACHELINE - 1) & ~(size_t)(AME__CACHELINE - 1);
  return posix_memalign(&p, AME__CACHELINE, size) == 0 ? p : NULL;
}

static ame_tx_t *new_descriptor(unsigned slot) {
  ame_tx_t *tx = alloc_lines(sizeof *tx);
  if (tx == NULL) return NULL;
  memset(tx, 0, sizeof *tx);
  tx->r_base = alloc_lines(READ_LOG_INIT * sizeof *tx->r_base);
  tx->w_first = alloc_lines(sizeof *tx->w_first);
  if (tx->r_base == NULL || tx->w_first == NULL) {
    free(tx->r_base);
    free(tx->w_first);
    free(tx);
    return NULL;
  }
  tx->w_first->next = NULL;
  for (unsigned i = 0; i < AME__WCHUNK; i++) tx->w_first->e[i].tx = tx;
  tx->h.r_cur = tx->r_base;
  tx->h.r_end = tx->r_base + READ_LOG_INIT;
  ame__tx_init_domain(tx, &ame__G.dom);
  tx->slot = slot;
  tx->starts = SNAPSHOT_REFRESH - 1;
  tx->active = AME__IDLE;
  tx->hold = AME__IDLE;
  tx->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)slot * 0xBF58476D1CE4E5B9ull);
  return tx;
}

ame_tx_t *ame_thread_enter(void) {
  if (self) {
    self->refs++;
    return self;
  }
  if (!LOAD_ACQ(&ame__G.initialised)) {
    int rc = ame_stm_init(NULL);
    if (rc != 0 && rc != -EALREADY) return NULL;
  }
  pthread_mutex_lock(&ame__G.reg_lock);
  ame_tx_t *tx = NULL;
  struct ame__dom *d = &ame__G.dom;
  unsigned n = LOAD(&d->n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *t = d->threads[i];
    if (t && !LOAD(&t->in_use)) {
      tx = t;
      break;
    }
  }
  if (tx == NULL && n < d->max_threads) {
    tx = new_descriptor(n);
    if (tx) {
      __atomic_store_n(&d->threads[n], tx, __ATOMIC_RELEASE);
      STORE_REL(&d->n_slots, n + 1);
    }
  }
  if (tx) {
    STORE(&tx->in_use, 1);
    tx->refs = 1;
    tx->light = LOAD(&ame__G.membarrier);
    self = tx;
  }
  pthread_mutex_unlock(&ame__G.reg_lock);
  /* Against a reclaimer's scan without the heavy fence (oldest_seen()):
  ** the descriptor taken before any load of this thread's transactions. */
  fence_sc();
  return tx;
}

void ame_thread_exit(void) {
  ame_tx_t *tx = self;
  if (tx == NULL) return;
  assert(tx->nesting == 0 && "ame_thread_exit inside a transaction");
  if (--tx->refs > 0) return;
  reclaim(tx, 1);
  pthread_mutex_lock(&ame__G.reg_lock);
  /* Whatever is still pending goes to the process-wide list. */
  struct ame__limbo *lb = tx->limbo.items;
  for (size_t i = 0; i < tx->limbo.n; i++) {
    if (ame__vec_push(&ame__G.orphans, &lb[i], sizeof lb[i]) != 0) {
      /* Out of memory: wait until it is safe and free it ourselves. */
      wait_reclaimable(tx, lb[i].ts);
      free(lb[i].ptr);
      STAT_INC(tx, frees_done);
      STAT_ADD(tx, frees_pending, (uint64_t)-1);
      continue;
    }
    STAT_ADD(tx, frees_pending, (uint64_t)-1);
    ame__G.orphan_stats.frees_pending++;
  }
  tx->limbo.n = 0;
  recycle_drain(tx);
  STORE(&tx->in_use, 0);
  pthread_mutex_unlock(&ame__G.reg_lock);
  self = NULL;
}

ame_tx_t *ame_self(void) { return self; }

/* ------------------------------------------------------------------------
** Reclamation and quiescence.
*/

/* The oldest start timestamp that any thread still needs: of a running
** transaction (`active`) or of one whose handlers are running (`hold`);
** IDLE if none.  Called after fence_heavy().  Both are read with acquire:
** every store to them is a release, so what a transaction or handler did
** before its thread moved on happens before the caller frees anything.
** A thread moves its start from `active` to `hold` by storing `hold`
** first and then `active`, so that a reader that sees the second store
** also sees the first. */
static uintptr_t oldest_active(struct ame__dom *d) {
  uintptr_t min = AME__IDLE;
  unsigned n = LOAD_ACQ(&d->n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *t = __atomic_load_n(&d->threads[i], __ATOMIC_ACQUIRE);
    if (t == NULL) continue;
    uintptr_t a = LOAD_ACQ(&t->active);
    uintptr_t h = LOAD_ACQ(&t->hold);
    if (a < min) min = a;
    if (h < min) min = h;
  }
  return min;
}

/* oldest_active() without the heavy fence, where the starts that the
** other threads have published decide it alone; 0 where they do not, and
** the caller takes the fence.  A start seen in another thread's `active`
** bounds what that thread can be running, however stale the load: its
** starts only grow, and a transaction whose start is at or after a
** free's commit timestamp read the clock at or after that commit's
** increment (its start is a clock value it loaded with acquire, or its
** own commit's), so it synchronized with the freeing commit and meets the
** orecs that unlinked the block locked or newer.  What a stale load can
** hide is a start made since the thread was seen between transactions
** (AME__IDLE): only then does the scan need the membarrier.  A thread
** between two transactions is there for a moment, so the scan waits up
** to SEEN_SPINS pauses for its next start first.  A descriptor the scan
** does not see in use cannot hide an older transaction either: a thread
** runs a full fence after it takes its descriptor and before its first
** start (ame_thread_enter), and the scan one before it reads the
** descriptors, so that one of the two sees the other's store (the
** descriptor taken, or the unlinking writer's locks).  Only the process's
** own domain, and only where the heavy fence is a membarrier (elsewhere it
** is a locked instruction, no dearer than this). */
static uintptr_t oldest_seen(ame_tx_t *tx) {
  struct ame__dom *d = tx->dom;
  if (d != &ame__G.dom || !LOAD(&ame__G.membarrier)) return 0;
  fence_sc();
  uintptr_t min = AME__IDLE;
  unsigned n = LOAD_ACQ(&d->n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *t = __atomic_load_n(&d->threads[i], __ATOMIC_ACQUIRE);
    if (t == NULL || (t != tx && !LOAD_ACQ(&t->in_use))) continue;
    uintptr_t a = LOAD_ACQ(&t->active);
    for (unsigned k = 0; a == AME__IDLE && t != tx && k < SEEN_SPINS; k++) {
      cpu_relax();
      a = LOAD_ACQ(&t->active);
    }
    if (a == AME__IDLE && t != tx) return 0;
    uintptr_t h = LOAD_ACQ(&t->hold);
    if (a < min) min = a;
    if (h < min) min = h;
  }
  return min; /* 0, a start of 0 seen: not decided, take the fence */
}

/* Whether LIMBO_PERIOD starts passed since the thread's last scan. */
static inline int scan_overdue(const ame_tx_t *tx) {
  return tx->starts - tx->scanned_at >= LIMBO_PERIOD;
}

/* ------------------------------------------------------------------------
** Recycling.  A small block that reclaim() finds no transaction can reach
** any more goes on its thread's recycle list for its size instead of back
** to malloc, and the thread's next ame_tx_malloc of a size it fits takes
** it (newest first).  Data structures under updates free and allocate
** nodes of one size all the time, and reclamation finds them in batches
** (LIMBO_SCAN): given to free(), a batch overflows glibc's per-thread
** cache and goes to the arena, under its lock for blocks that another
** thread allocated, and later mallocs take it back out of there.  A list
** holds one size (malloc_usable_size) and at most RECYCLE_LIST_BYTES; the
** rest is freed, and so is the whole at the thread's exit.  A recycled
** block is exactly as unreachable as a freed one.  Not under
** AddressSanitizer, whose quarantine must see each free to report a use
** after it.
*/

#define RECYCLE_MAX_BLOCK 256      /* bytes: larger blocks are freed */
#define RECYCLE_LIST_BYTES 65536   /* per list: above a batch of nodes */
#define RECYCLE_SLACK 32           /* bytes a request may leave unused */

/* The newest block of a list that has one. */
static inline void *recycle_pop(struct ame__recycle *r) {
  void *p = r->head;
  r->head = *(void **)p;
  r->n--;
  return p;
}

#if defined(__SANITIZE_ADDRESS__)
static void recycle_put(ame_tx_t *tx, void *p) {
  (void)tx;
  free(p);
}
static inline void *recycle_get(ame_tx_t *tx, size_t size) {
  (void)tx;
  return malloc(size ? size : 1);
}
#else
static void recycle_put(ame_tx_t *tx, void *p) {
  size_t u = malloc_usable_size(p);
  struct ame__recycle *rc = tx->recycle, *to = NULL;
  if (u >= sizeof(void *) && u <= RECYCLE_MAX_BLOCK) {
    /* u's list, if it has room; else the first empty one, if u has none */
    for (unsigned i = 0; i < AME__RECYCLE_CLASSES; i++) {
      if (rc[i].n == 0) {
        if (to == NULL) to = &rc[i];
      } else if (rc[i].usable == u) {
        to = (rc[i].n + 1) * u <= RECYCLE_LIST_BYTES ? &rc[i] : NULL;
        break;
      }
    }
  }
  if (to == NULL) {
    free(p);
    return;
  }
  if (to->n == 0) {
    to->usable = u;
    to->head = NULL;
  }
  *(void **)p = to->head;
  to->head = p;
  to->n++;
}

static inline void *recycle_get(ame_tx_t *tx, size_t size) {
  struct ame__recycle *rc = tx->recycle;
  for (unsigned i = 0; i < AME__RECYCLE_CLASSES; i++) {
    if (rc[i].n && rc[i].usable >= size &&
        rc[i].usable - size < RECYCLE_SLACK)
      return recycle_pop(&rc[i]);
  }
  return malloc(size ? size : 1);
}
#endif

/* Give the thread's recycled blocks back to malloc. */
static void recycle_drain(ame_tx_t *tx) {
  for (unsigned i = 0; i < AME__RECYCLE_CLASSES; i++) {
    while (tx->recycle[i].n) free(recycle_pop(&tx->recycle[i]));
  }
}

uint64_t ame__membarriers(void) {
  return __atomic_load_n(&ame__G.membarriers, __ATOMIC_RELAXED);
}

uint64_t ame__retry_sleeps(void) {
  return __atomic_load_n(&ame__G.retry_sleeps, __ATOMIC_RELAXED);
}

size_t ame__recycled(const ame_tx_t *tx) {
  size_t n = 0;
  for (unsigned i = 0; i < AME__RECYCLE_CLASSES; i++) n += tx->recycle[i].n;
  return n;
}

/* Free (recycle) this thread's deferred blocks that no running transaction
** can reach any more; with force, also try the orphans of exited threads. */
static void reclaim(ame_tx_t *tx, int force) {
  /* The orphans, only if there are some and nobody else is at them. */
  int orphans = force && tx->dom == &ame__G.dom &&
                pthread_mutex_trylock(&ame__G.reg_lock) == 0;
  if (orphans && ame__G.orphans.n == 0) {
    pthread_mutex_unlock(&ame__G.reg_lock);
    orphans = 0;
  }
  if (tx->limbo.n == 0 && !orphans) return; /* no fence for nothing */
  tx->scanned_at = tx->starts;
  uintptr_t oldest = orphans ? 0 : oldest_seen(tx);
  if (oldest == 0) {
    fence_heavy(tx->dom);
    oldest = oldest_active(tx->dom);
  }
  struct ame__limbo *lb = tx->limbo.items;
  size_t i = 0;
  while (i < tx->limbo.n && lb[i].ts <= oldest) {
    recycle_put(tx, lb[i].ptr);
    i++;
  }
  if (i) {
    memmove(lb, lb + i, (tx->limbo.n - i) * sizeof *lb);
    tx->limbo.n -= i;
    STAT_ADD(tx, frees_done, i);
    STAT_ADD(tx, frees_pending, (uint64_t)0 - i);
  }
  if (orphans) {
    struct ame__limbo *ob = ame__G.orphans.items;
    size_t j = 0, k = 0;
    for (; j < ame__G.orphans.n; j++) {
      if (ob[j].ts <= oldest) {
        free(ob[j].ptr);
        ame__G.orphan_stats.frees_done++;
        ame__G.orphan_stats.frees_pending--;
      } else {
        ob[k++] = ob[j];
      }
    }
    ame__G.orphans.n = k;
    pthread_mutex_unlock(&ame__G.reg_lock);
  }
}

/* Wait until every transaction that started before ts has ended.  Only
** `active` counts: a thread running handlers is between transactions, and
** its handlers may themselves be waiting for this thread.  The loads are
** acquire (the ends of transactions are release stores): what a
** transaction that ran read happens before what the caller does next. */
static void quiesce_before(struct ame__dom *d, ame_tx_t *tx, uintptr_t ts) {
  fence_heavy(d);
  unsigned n = LOAD_ACQ(&d->n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *t = __atomic_load_n(&d->threads[i], __ATOMIC_ACQUIRE);
    if (t == NULL || t == tx) continue;
    unsigned spins = 0;
    while (LOAD_ACQ(&t->active) < ts) {
      if (++spins < 1024)
        cpu_relax();
      else
        sched_yield();
    }
  }
}

/* Wait until nothing another thread still needs (a running transaction,
** or one whose handlers run) started before ts: the blocking form of
** reclaim()'s test, for when a deferred free cannot be recorded (out of
** memory). */
static void wait_reclaimable(ame_tx_t *tx, uintptr_t ts) {
  struct ame__dom *d = tx->dom;
  fence_heavy(d);
  unsigned n = LOAD_ACQ(&d->n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *t = __atomic_load_n(&d->threads[i], __ATOMIC_ACQUIRE);
    if (t == NULL || t == tx) continue;
    unsigned spins = 0;
    while (LOAD_ACQ(&t->active) < ts || LOAD_ACQ(&t->hold) < ts) {
      if (++spins < 1024)
        cpu_relax();
      else
        sched_yield();
    }
  }
}

void ame_quiesce(ame_tx_t *tx) {
  assert(tx == NULL || tx->nesting == 0);
  assert((tx == NULL || !tx->dom->shared) && "ame_quiesce in a shared heap");
  struct ame__dom *d = tx ? tx->dom : &ame__G.dom;
  quiesce_before(d, tx, LOAD_ACQ(&d->clock) + 1);
  if (tx) reclaim(tx, 0); /* everything older is safe now */
}

void ame_thread_idle(ame_tx_t *tx) {
  assert(tx && tx->nesting == 0);
  reclaim(tx, 1);
}

/* ------------------------------------------------------------------------
** Starting and ending attempts.
*/

/* The irrevocability token.  In a private domain a FIFO ticket lock; in a
** heap the bakery over its slots (heap.c), which a dead holder or waiter
** cannot wedge.  token_take() queues, token_served() says whether it is
** our turn (without waiting), token_pass() hands the token on. */
static uintptr_t token_take(ame_tx_t *tx) {
  if (tx->dom->shared) return ame__heap_ticket_take(tx);
  return __atomic_fetch_add(&tx->dom->irr_next, 1, __ATOMIC_ACQ_REL);
}

static int token_served(ame_tx_t *tx, uintptr_t ticket) {
  if (tx->dom->shared) return ame__heap_ticket_served(tx, ticket);
  return LOAD_ACQ(&tx->dom->irr_serving) == ticket;
}

static void token_pass(ame_tx_t *tx) {
  if (tx->dom->shared)
    ame__heap_token_release(tx);
  else
    STORE_REL(&tx->dom->irr_serving, LOAD(&tx->dom->irr_serving) + 1);
}

static void token_wait(ame_tx_t *tx, uintptr_t ticket) {
  unsigned spins = 0;
  while (!token_served(tx, ticket)) {
    if (++spins < 256)
      cpu_relax();
    else
      sched_yield();
  }
}

static void acquire_token(ame_tx_t *tx) {
  if (tx->has_token) return;
  token_wait(tx, token_take(tx));
  tx->has_token = 1;
  tx->slow = 1;
}

static void release_token(ame_tx_t *tx) {
  if (!tx->has_token) return;
  tx->has_token = 0;
  token_pass(tx);
}

/* Start an attempt of the outermost transaction.  Inlined into its two
** callers: a short transaction's start is mostly this. */
static inline __attribute__((always_inline)) void
begin_attempt(ame_tx_t *tx) {
  tx->h.r_cur = tx->r_base;
  tx->w_chunk = tx->w_first;
  tx->w_i = 0;
  tx->w_n = 0;
  tx->privatize = 0;
  STORE(&tx->killed, 0);
  /* Irrevocable from the start only if asked (an attempt that turns
  ** irrevocable later drops the flag when it ends, commit or abort). */
  assert((tx->want_irrevocable || !tx->irrevocable) &&
         "irrevocable at a start not asked to be");
  int irrevocable = 0;
  if (tx->want_irrevocable) {
    acquire_token(tx);
    STORE(&tx->irrevocable, 1);
    tx->slow = 1;
    irrevocable = 1;
  }
  /* Any clock value read before the start is a valid snapshot (a writer
  ** whose timestamp it covers held its locks since before taking that
  ** timestamp), so most starts reuse the last value seen and leave the
  ** clock's cache line alone; reads of newer versions extend the snapshot.
  ** Every SNAPSHOT_REFRESH-th start reads the clock, so that `active`
  ** never lags far behind (it holds back reclamation); a descriptor's
  ** `starts` begins at SNAPSHOT_REFRESH - 1, so that its first start
  ** reads it too. */
  uintptr_t now;
  if (++tx->starts % SNAPSHOT_REFRESH == 0)
    now = tx->seen = LOAD_ACQ(&tx->dom->clock);
  else
    now = tx->seen;
  /* Publish the start before the first read: the reclaimer and the
  ** privatizer read `active` after their commit, behind a fence of their
  ** own (store-load on both sides; asymmetric in the process's own
  ** domain where membarrier works: see the top of this file). */
#if !defined(__SANITIZE_THREAD__)
  if (AME__LIKELY(tx->light)) {
    STORE_REL(&tx->active, now);
    fence_light();
  } else {
    store_fence_sc(&tx->active, now);
  }
#else
  store_fence_sc(&tx->active, now);
#endif
  tx->h.snapshot = irrevocable ? 0 : now << 1;
}

int ame__frame_begin(struct ame__frame *f, const char *site) {
  ame_tx_t *tx = f->tx;
  assert(tx != NULL && (tx == self || tx == ame__heap_self) &&
         "descriptor used by another thread");
  if (tx->nesting > 0 && tx->env != f->env) {
    tx->nesting++; /* flat nesting: join the outer transaction */
    return 0;
  }
  tx->env = f->env;
  tx->resume = NULL;
  tx->nesting = 1;
  tx->explicit_env = 0;
  STORE(&tx->site, site);
  begin_attempt(tx);
  return 0;
}

/* ------------------------------------------------------------------------
** Transactions begun and ended by explicit calls (language bindings).
*/

/* Begin the outermost transaction of an explicit caller: an abort
** restarts it by longjmp to env, or (env NULL) by calling resume. */
static void begin_explicit(ame_tx_t *tx, jmp_buf *env,
                           void (*resume)(ame_tx_t *), const char *site) {
  tx->env = env;
  tx->resume = resume;
  tx->nesting = 1;
  tx->explicit_env = 1;
  STORE(&tx->site, site);
  begin_attempt(tx);
}

void ame_tx_begin(ame_tx_t *tx, jmp_buf *env, const char *site) {
  assert(tx != NULL && (tx == self || tx == ame__heap_self) &&
         "descriptor used by another thread");
  assert(tx->nesting == 0 && "ame_tx_begin inside a transaction");
  begin_explicit(tx, env, NULL, site);
}

unsigned ame__tx_enter(ame_tx_t *tx, void (*resume)(ame_tx_t *),
                       const char *site) {
  assert(tx != NULL && (tx == self || tx == ame__heap_self) &&
         "descriptor used by another thread");
  if (tx->nesting > 0) return ++tx->nesting; /* flat nesting */
  begin_explicit(tx, NULL, resume, site);
  return 1;
}

unsigned ame__tx_leave(ame_tx_t *tx) {
  assert(tx->nesting > 0 && "ame__tx_leave outside a transaction");
  if (tx->nesting > 1) return --tx->nesting;
  commit(tx);
  tx->explicit_env = 0;
  return 0;
}

jmp_buf *ame_tx_set_env(ame_tx_t *tx, jmp_buf *env) {
  assert(tx->nesting > 0 && "ame_tx_set_env outside a transaction");
  jmp_buf *old = tx->env;
  tx->env = env;
  return old;
}

void ame_tx_commit(ame_tx_t *tx) {
  assert(tx->nesting == 1 && tx->explicit_env &&
         "ame_tx_commit without ame_tx_begin");
  commit(tx);
  tx->explicit_env = 0;
}

void ame_tx_cancel(ame_tx_t *tx) {
  if (tx->nesting > 0) {
    /* One the contention manager made irrevocable can still be rolled
    ** back (nothing is written back before commit); one the program made
    ** irrevocable promised not to be. */
    assert(!tx->irr_user && "ame_tx_cancel of an irrevocable transaction");
    rollback(tx, AME_ABORT_EXPLICIT, 0, NULL);
    release_token(tx);
    abort_handlers(tx);
  }
  end_tx(tx);
  tx->attempt = 0;
  tx->explicit_env = 0;
}

ame_abort_cause_t ame_tx_last_cause(const ame_tx_t *tx, uintptr_t *addr) {
  if (addr) *addr = tx->last_addr;
  return tx->last_cause;
}

void ame__tx_check_word(ame_tx_t *tx, const void *addr) {
  uintptr_t *o = ame__orec_of(&tx->h, (uintptr_t)addr);
  uintptr_t l = LOAD_ACQ(o);
  if (IS_LOCKED(l)) {
    if (LOAD(&LOCK_ENTRY(l)->tx) == tx) return; /* ours: read or written */
    abort_tx(tx, AME_ABORT_VALIDATE, (uintptr_t)addr, NULL);
  }
  /* Versions only grow, and every read was at or below the snapshot. */
  if (!tx->irrevocable && l > tx->h.snapshot)
    abort_tx(tx, AME_ABORT_VALIDATE, (uintptr_t)addr, NULL);
}

void ame_tx_validate(ame_tx_t *tx) {
  assert(tx->nesting > 0 && "ame_tx_validate outside a transaction");
  if (tx->irrevocable) return; /* it holds what it read */
  uintptr_t bad = validate(tx);
  if (bad) abort_tx(tx, AME_ABORT_VALIDATE, bad, NULL);
}

/* End the attempt's publication of its start: `active` goes idle.  If
** handlers are about to run (keep != 0), the start moves to `hold` first,
** so that no reader sees neither (see oldest_active()).  Return the hold
** to restore once the handlers are done. */
static uintptr_t unpublish(ame_tx_t *tx, int keep) {
  uintptr_t prev = tx->hold;
  uintptr_t start = LOAD(&tx->active);
  if (keep && start < prev) STORE_REL(&tx->hold, start);
  STORE_REL(&tx->active, AME__IDLE);
  return prev;
}

/* Run the handlers in v outside the transaction (depth 0; they may run
** transactions of their own, which may privatize, quiesce, retry or turn
** irrevocable).  The caller has moved the transaction's start to `hold`
** (unpublish()), so that memory the transaction could reach is not
** reclaimed under them, and holds no irrevocability ticket.  The state of
** the transaction being aborted (restart point, attempt count,
** escalation, the cause of its abort) is kept across. */
static void run_handlers(ame_tx_t *tx, struct ame__vec *v) {
  if (v->n == 0) return;
  assert(!tx->has_token && "handlers run with the irrevocability token");
  /* Detach, so that handlers' transactions have their own lists. */
  struct ame__vec mine = *v;
  memset(v, 0, sizeof *v);
  jmp_buf *env = tx->env;
  void (*resume)(ame_tx_t *) = tx->resume;
  unsigned nesting = tx->nesting, attempt = tx->attempt;
  unsigned conflicts = tx->conflicts;
  int want = tx->want_irrevocable;
  const char *site = LOAD(&tx->site);
  ame_abort_cause_t cause = tx->last_cause; /* for ame_tx_last_cause() */
  uintptr_t cause_addr = tx->last_addr;
  tx->nesting = 0;
  tx->attempt = 0;
  tx->conflicts = 0;
  tx->want_irrevocable = 0;
  struct ame__handler *h = mine.items;
  for (size_t i = 0; i < mine.n; i++) h[i].fn(h[i].arg);
  tx->env = env;
  tx->resume = resume;
  tx->nesting = nesting;
  tx->attempt = attempt;
  tx->conflicts = conflicts;
  tx->want_irrevocable = want;
  tx->slow = 1; /* what the handlers' commits left, for this one's state */
  STORE(&tx->site, site);
  tx->last_cause = cause;
  tx->last_addr = cause_addr;
  if (v->items == NULL) {
    *v = mine;
    v->n = 0;
  } else {
    ame__vec_free(&mine);
  }
}

/* The transaction is over (committed or given up); reset per-attempt state
** that outlives the attempt's rollback.  `active` is left to the caller. */
static void end_tx(ame_tx_t *tx) {
  tx->nesting = 0;
  /* No snapshot outside a transaction: a stray load takes the slow path,
  ** which asserts, instead of appending to the read log. */
  tx->h.snapshot = 0;
  STORE(&tx->irrevocable, 0);
  tx->irr_user = 0;
  tx->want_irrevocable = 0;
  tx->conflicts = 0;
  release_token(tx);
}

/* ------------------------------------------------------------------------
** Validation and snapshot extension.
*/

/* Check that every logged read still holds.  Return 0 if so, else the
** address of a read that was overwritten. */
static uintptr_t validate(ame_tx_t *tx) {
  for (struct ame__rentry *r = tx->r_base; r < tx->h.r_cur; r++) {
    uintptr_t l = LOAD_ACQ(ame__orec_of(&tx->h, r->addr));
    if (l == r->version) continue;
    if (IS_LOCKED(l)) {
      struct ame__wentry *e = LOCK_ENTRY(l);
      if (LOAD(&e->tx) == tx && e->version == r->version) continue;
    }
    return r->addr ? r->addr : 1;
  }
  return 0;
}

/* Move the snapshot to now.  Return 0 or the address that failed. */
static uintptr_t extend(ame_tx_t *tx) {
  uintptr_t now = LOAD_ACQ(&tx->dom->clock);
  uintptr_t bad = validate(tx);
  if (bad) return bad;
  tx->h.snapshot = now << 1;
  tx->seen = now;
  STAT_INC(tx, extensions);
  return 0;
}

/* ------------------------------------------------------------------------
** Contention management.
*/

/* We met a lock on addr held by entry e of another transaction.  Wait a
** little for it to go; return once it has (the caller retries), or abort.
** An irrevocable transaction waits for as long as it takes. */
/* The site of the transaction that owns a lock, for the report: NULL if
** the owner is in another process (its pointer means nothing here). */
static const char *owner_site(const ame_tx_t *tx, ame_tx_t *owner) {
  if (tx->dom->shared && LOAD(&owner->pid) != tx->pid) return NULL;
  return LOAD(&owner->site);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* In a heap: we met lock l on orec.  A lock that has stood for STUCK_MS
** may be a dead process's: then see whether its owner died (heap.c
** recovers the slot, which releases the lock) and return 1 if it did.
** The lock followed is the first one met that still stands, whatever
** other locks are met meanwhile (conflicts with live owners come and go
** between meetings of a dead one's; forgetting it at each of them could
** leave it standing indefinitely), and its owner is looked up when it is
** checked.  So a thread checks a process's liveness (a read of /proc) at
** most once per STUCK_MS, and only for a lock that stood that long. */
static int stuck_on(ame_tx_t *tx, uintptr_t *orec, uintptr_t l) {
  uint64_t now = mono_ms();
  if (tx->met_orec == NULL || LOAD(tx->met_orec) != tx->met_lock) {
    tx->met_orec = orec;   /* nothing followed, or it went: follow this */
    tx->met_lock = l;
    tx->met_since = now;
    return 0;
  }
  if (now - tx->met_since < STUCK_MS) return 0;
  /* It has stood: whose is it?  (The entry lies in a slot's write log,
  ** mapped for as long as the heap is.) */
  ame_tx_t *owner = LOAD(&LOCK_ENTRY(tx->met_lock)->tx);
  tx->met_orec = NULL;
  return ame__heap_owner_dead(tx, owner);
}

/* How many attempts tx has ended, committed or aborted: the owner writes
** it as each ends; anyone may read it. */
static inline uint64_t attempts_ended(const ame_tx_t *tx) {
  return LOAD(&tx->stats.commits) + LOAD(&tx->stats.aborts);
}

static void on_conflict(ame_tx_t *tx, uintptr_t *orec, uintptr_t l,
                        uintptr_t addr, ame_abort_cause_t cause) {
  ame_tx_t *owner = LOAD(&LOCK_ENTRY(l)->tx);
  if (tx->irrevocable) {
    STORE(&owner->killed, 1);
    unsigned spins = 0;
    while (LOAD_ACQ(orec) == l) {
      if (++spins < 512) {
        cpu_relax();
      } else {
        STORE(&owner->killed, 1);
        sched_yield();
        if (tx->dom->shared && stuck_on(tx, orec, l)) return;
      }
    }
    return;
  }
  /* An irrevocable transaction waits for a lock of ours: give way now.
  ** (Waiting here for a lock that comes and goes, as the loops of our
  ** callers would, may never end: its owners keep retrying, and the
  ** irrevocable one keeps waiting for us.) */
  if (LOAD(&tx->killed)) abort_tx(tx, AME_ABORT_KILLED, addr, NULL);
  /* A load that meets a lock gives way at once (abort, back off, run
  ** again), as TinySTM's default policy does.  Waiting there made
  ** transactions that update the same few hot words slower on two
  ** threads than on one: each in turn waited out the other's commit,
  ** where an aborted one runs its other reads again meanwhile.
  ** A store that meets a lock waits for a revocable owner to go, unless
  ** that could close a cycle: a transaction that holds locks itself
  ** waits only for a younger owner (a later start; between equal starts,
  ** the higher descriptor address) and gives way at once to an older one
  ** (wait-die), so that two writers never spin on each other's locks
  ** until both give up.  One that holds nothing cannot be waited for, and
  ** waits. */
  int wait = cause != AME_ABORT_READ_LOCKED && !LOAD(&owner->irrevocable);
  if (wait && tx->w_n) {
    uintptr_t mine = LOAD(&tx->active), theirs = LOAD(&owner->active);
    wait = theirs > mine ||
           (theirs == mine && (uintptr_t)owner > (uintptr_t)tx);
  }
  if (wait) {
    for (unsigned i = 0; i < CONFLICT_SPINS; i++) {
      cpu_relax();
      if (LOAD_ACQ(orec) != l) return;
      if (LOAD(&tx->killed)) break;
    }
  }
  if (tx->dom->shared && stuck_on(tx, orec, l)) return;
  if (cause == AME_ABORT_READ_LOCKED) {
    /* Watch the owner during the backoff, from its count now: unless the
    ** lock has gone meanwhile, when that attempt's end may be counted
    ** already.  (The count may run ahead of the lock's release all the
    ** same; then the watch waits for the owner's next attempt to end, at
    ** most WATCH_MAX pauses: it only decides when to run again.) */
    tx->watch_ends = attempts_ended(owner);
    tx->watch = LOAD_ACQ(orec) == l ? owner : NULL;
  }
  abort_tx(tx, cause, addr, owner_site(tx, owner));
}

/* Back off after an abort.
**
** After a load met a lock, watch its owner first (its count of ended
** attempts; on_conflict).  An attempt that ends WATCH_LONG pauses or more
** into the watch was a long one, and what it wrote is likely free for
** good: run again at once, rather than sit out a backoff that may be
** thousands of pauses past the end (yada's refinements, which hold their
** locks for some hundreds of pauses).  One that ends sooner was short,
** and the owner's next may take the same word at once: sit out the rest
** of the backoff, if any (below).  If the backoff runs out while the
** attempt still runs, wait on for its end (instead of running into the
** lock and aborting again), up to WATCH_MAX pauses in all.  Reading the
** owner's count, on a line of its own that the owner writes only when an
** attempt ends, costs the owner nothing while it runs.
**
** Then a random wait, from a transaction's second conflict abort on, whose
** range doubles with each (16 << conflicts pauses, up to 4096): two
** threads that meet again and again on a few hot words (the hot bank) take
** turns.  A first conflict draws none: most are chance meetings of
** transactions that will not meet again, and a wait of up to 32 pauses
** after each of those cost STAMP's intruder, whose threads meet now and
** then on its queues and its map of fragments, about 5% of its time at
** two threads. */
static void backoff(ame_tx_t *tx) {
  uint64_t i = 0;
  ame_tx_t *owner = tx->watch;
  if (owner) {
    tx->watch = NULL;
    for (; i < WATCH_MAX; i++) {
      cpu_relax();
      if (i % WATCH_EVERY == WATCH_EVERY - 1 &&
          attempts_ended(owner) != tx->watch_ends) {
        if (i + 1 >= WATCH_LONG) return;
        break;
      }
    }
  }
  if (tx->conflicts < 2) return;
  tx->backoffs++;
  unsigned shift = tx->conflicts < 8 ? tx->conflicts : 8;
  uint64_t spins = xorshift(&tx->rng) & ((16u << shift) - 1);
  for (; i < spins; i++) cpu_relax();
}

/* ------------------------------------------------------------------------
** Loads.
*/

/* Find the entry for addr in the chain that starts at e (a lock's head
** entry), or return NULL with *tail set to the chain's last entry, after
** which a store links a new one. */
static inline struct ame__wentry *chain_find_tail(struct ame__wentry *e,
                                                  uintptr_t addr,
                                                  struct ame__wentry **tail) {
  for (;; e = e->next) {
    if (e->addr == addr) return e;
    if (e->next == NULL) break;
  }
  *tail = e;
  return NULL;
}

/* The entry for addr in the chain that starts at head, or NULL. */
static inline struct ame__wentry *chain_find(struct ame__wentry *head,
                                             uintptr_t addr) {
  struct ame__wentry *tail;
  return chain_find_tail(head, addr, &tail);
}

/* Read a word whose orec we hold: our buffered bytes over memory's. */
static uintptr_t read_own(struct ame__wentry *head, const uintptr_t *a) {
  struct ame__wentry *e = chain_find(head, (uintptr_t)a);
  if (e && e->mask == MASK_ALL) return e->value;
  uintptr_t mem = __atomic_load_n(a, __ATOMIC_ACQUIRE);
  if (e == NULL) return mem;
  return (mem & ~e->mask) | (e->value & e->mask);
}

static struct ame__wentry *new_entry(ame_tx_t *tx) {
  if (AME__UNLIKELY(tx->w_end != NULL)) {
    /* A heap descriptor's log: contiguous chunks, fixed in size, whose
    ** links and owner fields are written as they are first used (so
    ** that a heap's logs take memory only where touched). */
    if (tx->w_i == AME__WCHUNK) {
      struct ame__wchunk *next = tx->w_chunk + 1;
      /* Full, or bytes saved at its end (ame__tx_save_shared) are
      ** there. */
      if ((char *)(next + 1) > tx->w_saved) log_full(tx);
      tx->w_chunk->next = next;
      tx->w_chunk = next;
      tx->w_i = 0;
    }
    tx->w_n++;
    struct ame__wentry *e = &tx->w_chunk->e[tx->w_i++];
    STORE(&e->tx, tx);
    return e;
  }
  if (tx->w_i == AME__WCHUNK) {
    if (tx->w_chunk->next == NULL) {
      struct ame__wchunk *c = alloc_lines(sizeof *c);
      if (c == NULL) {
        fprintf(stderr, "ame: out of memory growing a write log\n");
        abort();
      }
      c->next = NULL;
      for (unsigned i = 0; i < AME__WCHUNK; i++) c->e[i].tx = tx;
      tx->w_chunk->next = c;
    }
    tx->w_chunk = tx->w_chunk->next;
    tx->w_i = 0;
  }
  tx->w_n++;
  return &tx->w_chunk->e[tx->w_i++];
}

/* A heap descriptor's write log is fixed at the heap's creation (it must
** be in the heap, for recovery).  A transaction that outgrows it cannot
** succeed by running again: abort it for good. */
static void log_full(ame_tx_t *tx) {
  if (tx->explicit_env && !tx->irr_user) {
    /* A binding's transaction: the caller sees AME_ABORT_CAPACITY and
    ** gives up (ame_tx_cancel). */
    if (!tx->irrevocable && !tx->has_token)
      abort_tx(tx, AME_ABORT_CAPACITY, 0, NULL);
    /* Made irrevocable by the contention manager, not by the program, or
    ** becoming so (ame_tx_irrevocable() locking what it read, the ticket
    ** taken): nothing is written back before commit, so it can still be
    ** rolled back (as ame_retry does), and the ticket handed on before
    ** the abort handlers run. */
    rollback(tx, AME_ABORT_CAPACITY, 0, NULL);
    release_token(tx);
    abort_handlers(tx);
    restart(tx);
  }
  fprintf(stderr, "ame: a shared-heap transaction wrote more than %zu "
                  "words (its write log is full); giving up\n", tx->w_n);
  abort();
}

/* Undo new_entry() (a lost CAS). */
static void drop_entry(ame_tx_t *tx) {
  tx->w_i--;
  tx->w_n--;
}

/* Irrevocable: lock the orec of a (if we do not hold it) and return the head
** entry.  Never fails; waits for other owners to go. */
/* Fill e as the head entry of orec o (whose value before locking is l)
** for the word at a: value under mask (0, 0: a lock taken without a
** write).  The caller then swaps the lock in. */
static inline void head_entry(struct ame__wentry *e, uintptr_t a,
                              uintptr_t value, uintptr_t mask, uintptr_t l,
                              uintptr_t *o) {
  e->addr = a;
  e->value = value;
  e->mask = mask;
  e->version = l;
  e->orec = o;
  e->next = NULL;
  e->head = 1;
}

static struct ame__wentry *irr_lock(ame_tx_t *tx, uintptr_t a) {
  uintptr_t *o = ame__orec_of(&tx->h, a);
  for (;;) {
    uintptr_t l = LOAD_ACQ(o);
    if (IS_LOCKED(l)) {
      struct ame__wentry *h = LOCK_ENTRY(l);
      if (LOAD(&h->tx) == tx) return h;
      on_conflict(tx, o, l, a, AME_ABORT_READ_LOCKED);
      continue;
    }
    struct ame__wentry *e = new_entry(tx);
    head_entry(e, a, 0, 0, l, o);
    if (__atomic_compare_exchange_n(o, &l, (uintptr_t)e | 1, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
      return e;
    drop_entry(tx);
  }
}

static void log_read(ame_tx_t *tx, const uintptr_t *a, uintptr_t l) {
  if (tx->h.r_cur == tx->h.r_end) {
    size_t n = (size_t)(tx->h.r_end - tx->r_base);
    struct ame__rentry *r = alloc_lines(2 * n * sizeof *r);
    if (r == NULL) {
      fprintf(stderr, "ame: out of memory growing a read log\n");
      abort();
    }
    memcpy(r, tx->r_base, n * sizeof *r);
    free(tx->r_base);
    tx->r_base = r;
    tx->h.r_cur = r + n;
    tx->h.r_end = r + 2 * n;
  }
  tx->h.r_cur->addr = (uintptr_t)a;
  tx->h.r_cur->version = l;
  tx->h.r_cur++;
}

uintptr_t ame__load_slow(ame_tx_t *tx, const uintptr_t *a) {
  assert(tx->nesting > 0 && "transactional load outside a transaction");
  assert(((uintptr_t)a & 7) == 0 && "unaligned transactional load");
  if (tx->irrevocable) return read_own(irr_lock(tx, (uintptr_t)a), a);
  uintptr_t *o = ame__orec_of(&tx->h, (uintptr_t)a);
  for (;;) {
    uintptr_t l = LOAD_ACQ(o);
    if (IS_LOCKED(l)) {
      struct ame__wentry *h = LOCK_ENTRY(l);
      if (LOAD(&h->tx) == tx) return read_own(h, a);
      on_conflict(tx, o, l, (uintptr_t)a, AME_ABORT_READ_LOCKED);
      continue;
    }
    uintptr_t v = __atomic_load_n(a, __ATOMIC_ACQUIRE);
    if (LOAD(o) != l) continue;
    if (l > tx->h.snapshot) {
      uintptr_t bad = extend(tx);
      if (bad) abort_tx(tx, AME_ABORT_VALIDATE, bad, NULL);
      if (LOAD_ACQ(o) != l) continue; /* changed again meanwhile */
    }
    log_read(tx, a, l);
    return v;
  }
}

uintptr_t ame_load_word_tx(ame_tx_t *tx, const uintptr_t *addr) {
  return ame__load_w(tx, addr);
}

void ame_prefetch_tx(ame_tx_t *tx, const void *addr) {
  ame__prefetch(tx, addr);
}

uint32_t ame_load_u32_tx(ame_tx_t *tx, const uint32_t *addr) {
  uintptr_t word = (uintptr_t)addr & ~(uintptr_t)7;
  unsigned shift = ((uintptr_t)addr & 4) ? 32 : 0;
  assert(((uintptr_t)addr & 3) == 0 && "unaligned transactional load");
  /* The same protocol as a word load, on the containing word's orec, but
  ** reading only our 4 bytes from memory (they may be all there is). */
  uintptr_t *o = ame__orec_of(&tx->h, word);
  uintptr_t l = LOAD_ACQ(o);
  if (AME__LIKELY(!IS_LOCKED(l) && l <= tx->h.snapshot)) {
    uint32_t v = __atomic_load_n(addr, __ATOMIC_ACQUIRE);
    if (AME__LIKELY(LOAD(o) == l)) {
      log_read(tx, (const uintptr_t *)word, l);
      return v;
    }
  }
  if (tx->irrevocable || IS_LOCKED(l)) {
    /* Go through the word path for our own writes and for conflicts. */
    struct ame__wentry *h = NULL;
    if (tx->irrevocable) {
      h = irr_lock(tx, word);
    } else if (LOAD(&LOCK_ENTRY(l)->tx) == tx) {
      h = LOCK_ENTRY(l);
    }
    if (h) {
      struct ame__wentry *e = chain_find(h, word);
      uintptr_t m = MASK_LO << shift;
      uint32_t mem = __atomic_load_n(addr, __ATOMIC_ACQUIRE);
      if (e == NULL || (e->mask & m) == 0) return mem;
      uintptr_t w = ((uintptr_t)mem << shift) & ~e->mask;
      return (uint32_t)((w | (e->value & e->mask)) >> shift);
    }
  }
  for (;;) {
    l = LOAD_ACQ(o);
    if (IS_LOCKED(l)) {
      if (LOAD(&LOCK_ENTRY(l)->tx) == tx) return ame_load_u32_tx(tx, addr);
      on_conflict(tx, o, l, word, AME_ABORT_READ_LOCKED);
      continue;
    }
    uint32_t v = __atomic_load_n(addr, __ATOMIC_ACQUIRE);
    if (LOAD(o) != l) continue;
    if (l > tx->h.snapshot) {
      uintptr_t bad = extend(tx);
      if (bad) abort_tx(tx, AME_ABORT_VALIDATE, bad, NULL);
      if (LOAD_ACQ(o) != l) continue;
    }
    log_read(tx, (const uintptr_t *)word, l);
    return v;
  }
}

/* ------------------------------------------------------------------------
** Stores.
*/

/* Buffer (v & mask) into e, an entry already logged for its word. */
static inline void merge_entry(struct ame__wentry *e, uintptr_t v,
                               uintptr_t mask) {
  e->value = (e->value & ~mask) | (v & mask);
  e->mask |= mask;
}

/* Fill e, a new entry, for (v & mask) at the word a under orec o, and link
** it after t, the last entry of o's chain, whose lock we hold: a chain
** keeps the order of the log, so that its last entry is the last of its
** orec's in the log (write_back_release_run). */
static inline void link_entry(struct ame__wentry *t, struct ame__wentry *e,
                              uintptr_t a, uintptr_t v, uintptr_t mask,
                              uintptr_t *o) {
  e->addr = a;
  e->value = v & mask;
  e->mask = mask;
  e->version = 0;
  e->orec = o;
  e->head = 0;
  e->next = NULL;
  t->next = e;
}

/* store_masked()'s every case: an orec we hold, one held by another,
** one newer than the snapshot, an irrevocable transaction, a heap's log,
** a full chunk, a lost compare-and-swap. */
static __attribute__((noinline)) void store_slow(ame_tx_t *tx, uintptr_t a,
                                                 uintptr_t v, uintptr_t mask) {
  assert(tx->nesting > 0 && "transactional store outside a transaction");
  uintptr_t *o = ame__orec_of(&tx->h, a);
  if (AME__UNLIKELY(LOAD(&tx->killed)) && !tx->irrevocable)
    abort_tx(tx, AME_ABORT_KILLED, a, NULL);
  for (;;) {
    uintptr_t l = LOAD_ACQ(o);
    if (IS_LOCKED(l)) {
      struct ame__wentry *h = LOCK_ENTRY(l);
      if (LOAD(&h->tx) != tx) {
        on_conflict(tx, o, l, a, AME_ABORT_WRITE_LOCKED);
        continue;
      }
      struct ame__wentry *t = NULL, *e = chain_find_tail(h, a, &t);
      if (e)
        merge_entry(e, v, mask);
      else
        link_entry(t, new_entry(tx), a, v, mask, o);
      return;
    }
    if (tx->irrevocable) {
      irr_lock(tx, a);
      continue;
    }
    if (l > tx->h.snapshot) {
      /* Newer than our snapshot: once locked, reads under this orec see
      ** memory as it is now, so the snapshot must reach this version
      ** first (or earlier reads of the same orec would disagree). */
      uintptr_t bad = extend(tx);
      if (bad) abort_tx(tx, AME_ABORT_VALIDATE, bad, NULL);
      continue;
    }
    struct ame__wentry *e = new_entry(tx);
    head_entry(e, a, v & mask, mask, l, o);
    if (__atomic_compare_exchange_n(o, &l, (uintptr_t)e | 1, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
      return;
    drop_entry(tx);
  }
}

/* Buffer (value & mask) for the word at a, locking its orec.  Inline here
** the common cases, with room in the private log's chunk and the
** transaction not killed: a first write under an orec (free, in the
** snapshot; snapshot is 0 outside a transaction and when irrevocable, so
** those take the slow path), and a write under an orec we already hold
** (a few accounts or fields in one granule). */
static inline void store_masked(ame_tx_t *tx, uintptr_t a, uintptr_t v,
                                uintptr_t mask) {
  uintptr_t *o = ame__orec_of(&tx->h, a);
  uintptr_t l = LOAD_ACQ(o);
  if (AME__LIKELY(tx->w_i < AME__WCHUNK && tx->w_end == NULL &&
                  !LOAD(&tx->killed))) {
    if (AME__LIKELY(!IS_LOCKED(l) && l <= tx->h.snapshot)) {
      /* The entry is filled after the swap: another thread that meets
      ** the lock reads only its tx, set when the chunk was made (a
      ** heap's entries, which a recoverer reads, take store_slow), and
      ** on x86 the swap's locked instruction then waits for fewer stores
      ** to drain (hot bank at one thread: 2% more transfers). */
      struct ame__wentry *e = &tx->w_chunk->e[tx->w_i];
      uintptr_t seen = l;
      if (AME__LIKELY(__atomic_compare_exchange_n(o, &l, (uintptr_t)e | 1, 0,
                                                  __ATOMIC_ACQ_REL,
                                                  __ATOMIC_RELAXED))) {
        head_entry(e, a, v & mask, mask, seen, o);
        tx->w_i++;
        tx->w_n++;
        return;
      }
    } else if (IS_LOCKED(l) && LOAD(&LOCK_ENTRY(l)->tx) == tx) {
      struct ame__wentry *t = NULL;
      struct ame__wentry *old = chain_find_tail(LOCK_ENTRY(l), a, &t);
      if (old) {
        merge_entry(old, v, mask);
      } else {
        link_entry(t, &tx->w_chunk->e[tx->w_i], a, v, mask, o);
        tx->w_i++;
        tx->w_n++;
      }
      return;
    }
  }
  store_slow(tx, a, v, mask);
}

void ame_store_word_tx(ame_tx_t *tx, uintptr_t *addr, uintptr_t v) {
  assert(((uintptr_t)addr & 7) == 0 && "unaligned transactional store");
  store_masked(tx, (uintptr_t)addr, v, MASK_ALL);
}

void ame__store_masked(ame_tx_t *tx, uintptr_t *addr, uintptr_t v,
                       uintptr_t mask) {
  assert(((uintptr_t)addr & 7) == 0 && "unaligned transactional store");
  if (mask) store_masked(tx, (uintptr_t)addr, v, mask);
}

void ame__tx_claim(ame_tx_t *tx, uintptr_t *addr) {
  assert(((uintptr_t)addr & 7) == 0 && "unaligned transactional claim");
  /* An entry with an empty mask: write-back and recovery store nothing
  ** for it.  Its orec's head entry (this one, or an earlier store's) is
  ** marked so that even an abort releases the orec with a new version:
  ** the caller writes under it outside the STM, which no abort undoes. */
  store_masked(tx, (uintptr_t)addr, 0, 0);
  uintptr_t l = LOAD(ame__orec_of(&tx->h, (uintptr_t)addr));
  assert(IS_LOCKED(l) && LOAD(&LOCK_ENTRY(l)->tx) == tx);
  LOCK_ENTRY(l)->head = 2;
}

void ame__tx_overwritten(ame_tx_t *tx, const uintptr_t *p, size_t n) {
  uintptr_t a = (uintptr_t)p, end = a + 8 * n;
  uintptr_t grain = (uintptr_t)1 << AME__GRAIN_SHIFT;
  assert((a & 7) == 0 && "unaligned words written outside the STM");
  for (uintptr_t g = a & ~(grain - 1); g < end; g += grain) {
    uintptr_t l = LOAD_ACQ(ame__orec_of(&tx->h, g));
    if (!IS_LOCKED(l) || LOAD(&LOCK_ENTRY(l)->tx) != tx) continue;
    /* The chain holds every entry under the orec (for other granules
    ** too, where the orec table folds): those in [a, end) only. */
    for (struct ame__wentry *e = LOCK_ENTRY(l); e; e = e->next) {
      if (e->addr < a || e->addr >= end || e->mask == 0) continue;
      e->value = LOAD((uintptr_t *)e->addr);
      e->mask = MASK_ALL;
    }
    LOCK_ENTRY(l)->head = 2;
  }
}

void ame_store_u32_tx(ame_tx_t *tx, uint32_t *addr, uint32_t v) {
  assert(((uintptr_t)addr & 3) == 0 && "unaligned transactional store");
  unsigned shift = ((uintptr_t)addr & 4) ? 32 : 0;
  store_masked(tx, (uintptr_t)addr & ~(uintptr_t)7, (uintptr_t)v << shift,
               MASK_LO << shift);
}

/* ------------------------------------------------------------------------
** Iterating the write log.
*/

/* Write back the buffered bytes of one entry. */
static inline void write_entry(const struct ame__wentry *e) {
  uintptr_t *p = (uintptr_t *)e->addr;
  if (e->mask == MASK_ALL) {
    STORE(p, e->value);
  } else if (e->mask == MASK_LO) {
    STORE((uint32_t *)p, (uint32_t)e->value);
  } else if (e->mask == MASK_HI) {
    STORE((uint32_t *)p + 1, (uint32_t)(e->value >> 32));
  } else if (e->mask != 0) {
    /* Bytes (ame__store_masked): exactly those under the mask. */
    uint8_t *b = (uint8_t *)p;
    for (unsigned i = 0; i < 8; i++)
      if ((e->mask >> (8 * i)) & 0xff)
        STORE(&b[i], (uint8_t)(e->value >> (8 * i)));
  }
}

static void write_back(ame_tx_t *tx) {
  for (struct ame__wchunk *c = tx->w_first;; c = c->next) {
    struct ame__wentry *end = c == tx->w_chunk ? c->e + tx->w_i
                                               : c->e + AME__WCHUNK;
    for (struct ame__wentry *e = c->e; e < end; e++) write_entry(e);
    if (c == tx->w_chunk) break;
  }
}

/* A private domain's commit: write back and release in one pass over the
** log, in its order.  An orec's chain keeps the log's order (link_entry),
** so the last entry of a chain comes after every other entry under its
** orec: the orec is released (release store of `version`) there, once all
** its words are written; a reader that sees the new version and extends
** its snapshot to it sees them all, and meets the orecs not yet released
** still locked.  (A heap's commit keeps the two passes, write_back() then
** release_locks(): its recovery and crash tests name the phase between.) */
static inline void write_back_release_run(struct ame__wentry *e,
                                          const struct ame__wentry *end,
                                          uintptr_t version) {
  for (; e < end; e++) {
    write_entry(e);
    if (e->next == NULL) STORE_REL(e->orec, version);
  }
}

static inline __attribute__((always_inline)) void
write_back_release(ame_tx_t *tx, uintptr_t version) {
  struct ame__wchunk *c = tx->w_first;
  for (; c != tx->w_chunk; c = c->next)
    write_back_release_run(c->e, c->e + AME__WCHUNK, version);
  write_back_release_run(c->e, c->e + tx->w_i, version);
}

/* The version a claimed granule (head 2: written outside the STM,
** ame__tx_claim) takes when its lock goes without a commit: a tick of the
** clock of its own, so strictly newer than the version it had.  (The
** clock's value as it stands may be that very version, when the granule's
** last writer was the last commit: released at it again, the orec would
** hide from a reader that loaded it, then the bytes written in place,
** then it again, that anything happened in between.)  *bump: 0 until the
** first is taken, then shared by the others. */
static uintptr_t claim_version(struct ame__dom *d, uintptr_t *bump) {
  if (*bump == 0)
    *bump = __atomic_add_fetch(&d->clock, 1, __ATOMIC_ACQ_REL) << 1;
  return *bump;
}

/* Set every orec we hold to `version` (or back to its old version if
** version is 0, claimed granules to a new one). */
static void release_locks(ame_tx_t *tx, uintptr_t version) {
  if (tx->w_n == 0) return;
  uintptr_t bump = 0;
  for (struct ame__wchunk *c = tx->w_first;; c = c->next) {
    struct ame__wentry *end = c == tx->w_chunk ? c->e + tx->w_i
                                               : c->e + AME__WCHUNK;
    for (struct ame__wentry *e = c->e; e < end; e++)
      if (e->head)
        STORE_REL(e->orec, version        ? version
                           : e->head == 2 ? claim_version(tx->dom, &bump)
                                          : e->version);
    if (c == tx->w_chunk) break;
  }
}

/* ------------------------------------------------------------------------
** Abort.
*/

/* Undo the attempt: release locks, free its allocations, drop its commit
** handlers and frees, count it.  Its start stays published and its abort
** handlers are left for abort_handlers(), which the caller runs once it
** holds and awaits no irrevocability ticket.  Does not jump. */
static void rollback(ame_tx_t *tx, ame_abort_cause_t cause, uintptr_t addr,
                     const char *other_site) {
  /* Saved bytes first, while the orecs are still held: words written
  ** outside the STM under a claim (ame__tx_claim) must hold their old
  ** bytes again before a reader can see the orec free. */
  if (tx->undo.n) undo_restore(tx);
  if (tx->w_saved != (char *)tx->w_end) saved_restore(tx);
  release_locks(tx, 0);
  void **al = tx->allocs.items;
  for (size_t i = 0; i < tx->allocs.n; i++) free(al[i]);
  tx->allocs.n = 0;
  tx->frees.n = 0;
  tx->on_commit.n = 0;
  STAT_INC(tx, aborts);
  STAT_INC(tx, aborts_by_cause[cause]);
  tx->last_cause = cause;
  tx->last_addr = addr;
  int conflict = cause != AME_ABORT_EXPLICIT && cause != AME_ABORT_RETRY &&
                 cause != AME_ABORT_CAPACITY;
  if (conflict && cause != AME_ABORT_IRREVOCABLE)
    ame__conflict_note(addr, cause, LOAD(&tx->site), other_site);
  tx->attempt++;
  if (conflict) tx->conflicts++;
  tx->slow = 1;
  if (tx->attempt + 1 > LOAD(&tx->stats.max_attempts))
    STORE(&tx->stats.max_attempts, (uint64_t)tx->attempt + 1);
  if (tx->irrevocable) { /* an escalated transaction given up by retry */
    STORE(&tx->irrevocable, 0);
    tx->h.snapshot = 0;
  }
}

/* After rollback(): the attempt is over; run its abort handlers (if any)
** with its start held, then publish nothing. */
static void abort_handlers(ame_tx_t *tx) {
  uintptr_t prev_hold = unpublish(tx, tx->on_abort.n != 0);
  if (tx->on_abort.n) run_handlers(tx, &tx->on_abort);
  tx->on_abort.n = 0;
  STORE_REL(&tx->hold, prev_hold);
}

/* Restart the outermost transaction (after rollback). */
static void restart(ame_tx_t *tx) __attribute__((noreturn));
static void restart(ame_tx_t *tx) {
  tx->nesting = 0;
  if (tx->resume) tx->resume(tx);
  longjmp(*tx->env, 1);
}

/* Abort the attempt, back off and run again.  A snapshot that failed
** (validation, at a read or at commit) lost to writers that changed what
** it read: nothing it waits for gives it back.  A short attempt backs off
** all the same, as after any conflict (backoff(): from the transaction's
** second conflict on), so that threads updating the same few hot words
** take turns (the hot bank); a long reader runs again at once.  Its own
** reads outlast any backoff that could help it, the writers go on
** committing meanwhile, and what gets it through is a next attempt or,
** after escalate_after conflicts, irrevocability.  (The bank's balance
** checks, which read every account while transfers commit, spent a third
** of their thread's time in backoff at two threads.) */
static void abort_tx(ame_tx_t *tx, ame_abort_cause_t cause, uintptr_t addr,
                     const char *other_site) {
  assert(!tx->irrevocable && "an irrevocable transaction cannot abort");
  int long_reader = (cause == AME_ABORT_VALIDATE ||
                     cause == AME_ABORT_COMMIT) &&
                    tx->h.r_cur - tx->r_base > LONG_READER;
  rollback(tx, cause, addr, other_site);
  abort_handlers(tx);
  if (tx->conflicts >= tx->dom->escalate_after && !tx->want_irrevocable) {
    tx->slow = 1;
    tx->want_irrevocable = 1;
    STAT_INC(tx, escalations);
  }
  if (tx->want_irrevocable || long_reader)
    tx->watch = NULL; /* no backoff (to watch in) */
  else
    backoff(tx);
  restart(tx);
}

void ame_tx_abort(ame_tx_t *tx) {
  assert(tx->nesting > 0 && "ame_tx_abort outside a transaction");
  /* One the contention manager made irrevocable can still be rolled back
  ** (nothing is written back before commit), as ame_tx_cancel does: its
  ** ticket goes before the handlers, and the restart takes it again. */
  assert(!tx->irr_user && "an irrevocable transaction cannot abort");
  rollback(tx, AME_ABORT_EXPLICIT, 0, NULL);
  release_token(tx);
  abort_handlers(tx);
  restart(tx);
}

/* ------------------------------------------------------------------------
** Commit.
*/

/* Whether the attempt has nothing to do at commit but the commit itself:
** no handlers, frees, allocations, saved bytes, privatization,
** irrevocability or earlier aborts.  What commit() tests is ame_tx.slow,
** set wherever one of these becomes true and recomputed at the end of
** commit_full(): one load where this is a dozen. */
static inline int commit_plain(const ame_tx_t *tx) {
  return !tx->irrevocable && !tx->want_irrevocable && !tx->has_token &&
         !tx->privatize &&
         (tx->frees.n | tx->allocs.n | tx->on_commit.n | tx->on_abort.n |
          tx->undo.n | tx->attempt | tx->conflicts) == 0;
}

/* A plain writer's commit in the process's own domain: take its
** timestamp, validate if needed, write back and release.  Out of line, so
** that commit() below, inlined into its callers, stays small. */
static void commit_writes(ame_tx_t *tx) {
  if (LOAD(&tx->killed)) abort_tx(tx, AME_ABORT_KILLED, 0, NULL);
  struct ame__dom *d = tx->dom;
  uintptr_t ts = __atomic_add_fetch(&d->clock, 1, __ATOMIC_ACQ_REL);
  if ((ts - 1) << 1 != tx->h.snapshot) {
    uintptr_t bad = validate(tx);
    if (bad) abort_tx(tx, AME_ABORT_COMMIT, bad, NULL);
  }
  ame__fence_release(); /* the locks taken before the words written back */
  write_back_release(tx, ts << 1);
  tx->seen = ts;
  retry_fence(tx);
  if (LOAD(&d->retry_waiters)) ame__retry_wake(d);
}

static void commit_full(ame_tx_t *tx);

/* Commit the outermost transaction.  The common case, with nothing to do
** but commit (no handlers, frees, allocations, saved bytes, privatization,
** irrevocability, earlier aborts), stays short and inline, so that a
** reader's commit is a few stores and saves no registers: a reader has
** nothing to do, a writer in the process's own domain takes the few steps
** of commit_writes().  Everything else, and a heap's writers, whose commit
** records its phases for recovery, take commit_full(). */
static inline __attribute__((always_inline)) void commit(ame_tx_t *tx) {
  assert((tx->slow || commit_plain(tx)) && "ame_tx.slow not set");
  if (AME__UNLIKELY(tx->slow || (tx->w_n && tx->dom->shared))) {
    commit_full(tx);
    return;
  }
  if (tx->w_n == 0)
    STAT_INC(tx, commits_ro);
  else
    commit_writes(tx);
  STAT_INC(tx, commits);
  if (AME__UNLIKELY(LOAD(&tx->stats.max_attempts) == 0))
    STORE(&tx->stats.max_attempts, 1);
  tx->nesting = 0;
  tx->h.snapshot = 0;
  tx->irr_user = 0;
  STORE_REL(&tx->active, AME__IDLE);
  if (AME__UNLIKELY(tx->limbo.n) && scan_overdue(tx)) reclaim(tx, 0);
}

static void commit_full(ame_tx_t *tx) {
  uintptr_t ts = 0;
  if (tx->w_n == 0) {
    STAT_INC(tx, commits_ro);
  } else {
    if (!tx->irrevocable && LOAD(&tx->killed))
      abort_tx(tx, AME_ABORT_KILLED, 0, NULL);
    struct ame__slot *slot = tx->dom->shared ? ame__slot_of(tx) : NULL;
    if (slot && ame__heap_phase_hook) ame__heap_phase_hook("locked");
    ts = __atomic_add_fetch(&tx->dom->clock, 1, __ATOMIC_ACQ_REL);
    if (!tx->irrevocable && (ts - 1) << 1 != tx->h.snapshot) {
      uintptr_t bad = validate(tx);
      if (bad) abort_tx(tx, AME_ABORT_COMMIT, bad, NULL);
    }
    if (slot) {
      /* Decided: from here a recoverer finishes the write-back. */
      STORE_REL(&slot->status, (ts << 1) | 1);
      /* Then the bytes saved at the log's end are no longer to be put
      ** back (a recoverer that finds the commit decided ignores them). */
      if (tx->w_saved != (char *)tx->w_end)
        STORE_REL(&tx->w_saved, (char *)tx->w_end);
      if (ame__heap_phase_hook) ame__heap_phase_hook("validated");
    }
    ame__fence_release(); /* the locks taken before the words written back */
    if (slot) {
      write_back(tx);
      if (ame__heap_phase_hook) ame__heap_phase_hook("writeback");
      release_locks(tx, ts << 1);
    } else {
      write_back_release(tx, ts << 1);
    }
    if (slot) {
      STORE_REL(&slot->status, 0);
      if (ame__heap_phase_hook) ame__heap_phase_hook("released");
    }
    tx->seen = ts;
  }
  STAT_INC(tx, commits);
  if (tx->irrevocable) STAT_INC(tx, irrevocable);
  if (tx->attempt + 1 > LOAD(&tx->stats.max_attempts))
    STORE(&tx->stats.max_attempts, (uint64_t)tx->attempt + 1);
  int privatize = tx->privatize;
  tx->allocs.n = 0;
  tx->on_abort.n = 0;
  tx->undo.n = 0;
  tx->undo_bytes.n = 0;
  tx->attempt = 0;
  end_tx(tx);
  /* The transaction is over: nobody's quiescence waits for this thread
  ** from here on (not even while it privatizes below, or runs handlers
  ** that do), while its start stays held for the handlers. */
  uintptr_t prev_hold = unpublish(tx, tx->on_commit.n != 0);
  size_t limbo0 = tx->limbo.n;
  if (tx->frees.n) {
    void **fp = tx->frees.items;
    for (size_t i = 0; i < tx->frees.n; i++) {
      struct ame__limbo lb = {fp[i], ts ? ts : LOAD_ACQ(&tx->dom->clock)};
      if (ame__vec_push(&tx->limbo, &lb, sizeof lb) != 0) {
        wait_reclaimable(tx, lb.ts);
        free(lb.ptr);
        STAT_INC(tx, frees_done);
        continue;
      }
      STAT_INC(tx, frees_pending);
    }
    tx->frees.n = 0;
  }
  if (privatize) /* a read-only one privatizes by agreement: same wait */
    quiesce_before(tx->dom, tx, ts ? ts : LOAD_ACQ(&tx->dom->clock) + 1);
  if (ts) {
    retry_fence(tx);
    if (LOAD(&tx->dom->retry_waiters)) ame__retry_wake(tx->dom);
  }
  if (tx->on_commit.n) run_handlers(tx, &tx->on_commit);
  tx->on_commit.n = 0;
  STORE_REL(&tx->hold, prev_hold);
  /* Scan limbo each time it grows past a multiple of LIMBO_SCAN, and when
  ** LIMBO_PERIOD starts passed without a scan, so that a few blocks freed
  ** by a long-lived thread do not wait for its exit.  (Not at every
  ** commit while it stays large: while an old transaction runs elsewhere,
  ** each scan would free nothing and still cost its fence.) */
  if (tx->limbo.n && (tx->limbo.n / LIMBO_SCAN != limbo0 / LIMBO_SCAN ||
                      scan_overdue(tx)))
    reclaim(tx, 0);
  tx->slow = !commit_plain(tx);
}

int ame__frame_next(struct ame__frame *f) {
  if (f->state == 0) {
    f->state = 1;
    return 1;
  }
  ame_tx_t *tx = f->tx;
  assert(tx->nesting > 0);
  if (tx->nesting > 1) {
    tx->nesting--;
    return 0;
  }
  commit(tx);
  return 0;
}

int ame_tx_run(ame_tx_t *tx, int (*fn)(ame_tx_t *, void *), void *arg) {
  if (tx->nesting > 0) { /* flat nesting: join, one level deeper */
    tx->nesting++;
    int r = fn(tx, arg);
    tx->nesting--;
    return r;
  }
  volatile int result = 0;
  jmp_buf env;
  for (struct ame__frame f = {tx, 0, &env}; ame__frame_next(&f);)
    switch (setjmp(env))
    default:
      if (ame__frame_begin(&f, NULL)) {
      } else {
        result = fn(tx, arg);
      }
  return result;
}

/* ------------------------------------------------------------------------
** Irrevocability.
*/

int ame_tx_irrevocable(ame_tx_t *tx) {
  assert(tx->nesting > 0 && "ame_tx_irrevocable outside a transaction");
  if (tx->irrevocable) {
    tx->irr_user = 1;
    return 0;
  }
  /* Wait for the token; while we hold locks, an irrevocable transaction may
  ** be waiting for them, so give them up if asked. */
  if (tx->w_n > 0 && !tx->has_token) {
    uintptr_t ticket = token_take(tx);
    unsigned spins = 0;
    while (!token_served(tx, ticket)) {
      if (LOAD(&tx->killed)) {
        /* Give up our locks at once, then our place in the queue: wait
        ** for the ticket and pass it on (abort handlers, which may run
        ** transactions that want the token too, must not run while it
        ** is ours or awaited), and start again irrevocable. */
        rollback(tx, AME_ABORT_KILLED, 0, NULL);
        token_wait(tx, ticket);
        tx->slow = 1;
        tx->has_token = 1;
        release_token(tx);
        abort_handlers(tx);
        tx->slow = 1;
        tx->want_irrevocable = 1;
        restart(tx);
      }
      /* As token_wait(): with more threads than CPUs, the holders ahead
      ** of us may need this one to finish. */
      if (++spins < 256)
        cpu_relax();
      else
        sched_yield();
    }
    tx->slow = 1;
    tx->has_token = 1;
  } else {
    acquire_token(tx);
  }
  /* Lock what we read so far; if any of it changed, restart irrevocable. */
  for (struct ame__rentry *r = tx->r_base; r < tx->h.r_cur; r++) {
    uintptr_t *o = ame__orec_of(&tx->h, r->addr);
    for (;;) {
      uintptr_t l = LOAD_ACQ(o);
      if (IS_LOCKED(l)) {
        struct ame__wentry *h = LOCK_ENTRY(l);
        if (LOAD(&h->tx) == tx && h->version == r->version) break;
        goto changed;
      }
      if (l != r->version) goto changed;
      struct ame__wentry *e = new_entry(tx);
      head_entry(e, r->addr, 0, 0, l, o); /* a lock without a write */
      if (__atomic_compare_exchange_n(o, &l, (uintptr_t)e | 1, 0,
                                      __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        break;
      drop_entry(tx);
    }
  }
  tx->slow = 1;
  STORE(&tx->irrevocable, 1);
  tx->irr_user = 1;
  tx->h.snapshot = 0;
  return 0;
changed:
  rollback(tx, AME_ABORT_IRREVOCABLE, 0, NULL);
  release_token(tx); /* taken again at the restart, after the handlers */
  abort_handlers(tx);
  tx->slow = 1;
  tx->want_irrevocable = 1;
  restart(tx);
}

int ame_tx_is_irrevocable(const ame_tx_t *tx) {
  return tx->nesting > 0 && tx->irrevocable;
}

unsigned ame_tx_depth(const ame_tx_t *tx) { return tx->nesting; }

unsigned ame_tx_attempt(const ame_tx_t *tx) { return tx->attempt; }

void ame_tx_set_site(ame_tx_t *tx, const char *site) { STORE(&tx->site, site); }

/* ------------------------------------------------------------------------
** Retry.
*/

void ame__retry_wake(struct ame__dom *d) {
  __atomic_add_fetch(&d->retry_seq, 1, __ATOMIC_RELEASE);
  syscall(SYS_futex, &d->retry_seq, d->shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE,
          INT_MAX, NULL, NULL, 0);
}

static int futex_wait(uint32_t *word, uint32_t val, long ns, int shared) {
  struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
  return (int)syscall(SYS_futex, word,
                      shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, val, &ts,
                      NULL, 0);
}

void ame_retry(ame_tx_t *tx) {
  assert(tx->nesting > 0 && "ame_retry outside a transaction");
  assert(!tx->irr_user && "ame_retry in an irrevocable transaction");
  /* Keep what we read: abort handlers may run transactions that reuse the
  ** read log.  The read log holds the reads under orecs free when read;
  ** a read under an orec the transaction held (it wrote to that granule
  ** first: read_own()) is not logged, so each held orec's version before
  ** the lock goes in too (with no logged read, the set stays empty: any
  ** commit wakes it, which covers those reads).  An irrevocable
  ** transaction (escalated by contention, never one the program made
  ** irrevocable) logs no reads: it locked what it read, so its lock
  ** entries are all there is. */
  size_t n = 0;
  struct ame__dom *d = tx->dom;
  uintptr_t clock0 = LOAD_ACQ(&d->clock);
  int held = tx->irrevocable || tx->h.r_cur != tx->r_base;
  for (struct ame__wchunk *c = tx->w_first; c && held && tx->w_n;
       c = c->next) {
    struct ame__wentry *end = c == tx->w_chunk ? c->e + tx->w_i
                                               : c->e + AME__WCHUNK;
    for (struct ame__wentry *e = c->e; e < end; e++) {
      if (!e->head) continue;
      struct ame__rentry r = {e->addr, e->version};
      if (ame__vec_push(&tx->retry_set, &r, sizeof r) == 0) n++;
    }
    if (c == tx->w_chunk) break;
  }
  if (!tx->irrevocable) {
    for (struct ame__rentry *r = tx->r_base; r < tx->h.r_cur; r++)
      if (ame__vec_push(&tx->retry_set, r, sizeof *r) == 0) n++;
  }
  rollback(tx, AME_ABORT_RETRY, 0, NULL);
  STAT_INC(tx, retries);
  /* Waiting is not contention: start over with no escalation. */
  release_token(tx);
  /* Detach the set: the abort handlers may run transactions that retry. */
  struct ame__vec set = tx->retry_set;
  memset(&tx->retry_set, 0, sizeof tx->retry_set);
  abort_handlers(tx);
  tx->want_irrevocable = 0;
  tx->conflicts = 0;
  __atomic_add_fetch(&d->retry_waiters, 1, __ATOMIC_SEQ_CST);
  if (d->shared) STORE(&ame__slot_of(tx)->retry_waiting, 1);
  /* The heavy side of retry_fence(): a commit that wrote what we read
  ** either finished its write-back before this (the checks below see it)
  ** or reads the count after it (and wakes us). */
  fence_heavy(d);
  long backstop = RETRY_BACKSTOP_NS;
  for (;;) {
    uint32_t seq = __atomic_load_n(&d->retry_seq, __ATOMIC_SEQ_CST);
    int changed = 0;
    if (n == 0) {
      changed = LOAD_ACQ(&d->clock) != clock0;
    } else {
      for (size_t i = 0; i < n && !changed; i++) {
        struct ame__rentry *r = &((struct ame__rentry *)set.items)[i];
        if (LOAD_ACQ(ame__orec_of(&tx->h, r->addr)) != r->version)
          changed = 1;
      }
    }
    if (changed) break;
    /* The timeout is a backstop only: every commit that changes what we
    ** read sees our count (retry_fence()) and wakes us.  It doubles while
    ** nothing changes, so that a long wait costs a few wake-ups a second,
    ** not a thousand. */
    __atomic_add_fetch(&ame__G.retry_sleeps, 1, __ATOMIC_RELAXED);
    futex_wait(&d->retry_seq, seq, backstop, d->shared);
    if (backstop < RETRY_BACKSTOP_MAX_NS) backstop *= 2;
  }
  if (d->shared) STORE(&ame__slot_of(tx)->retry_waiting, 0);
  __atomic_sub_fetch(&d->retry_waiters, 1, __ATOMIC_SEQ_CST);
  if (tx->retry_set.items == NULL) {
    tx->retry_set = set;
    tx->retry_set.n = 0;
  } else {
    ame__vec_free(&set);
  }
  restart(tx);
}

/* ------------------------------------------------------------------------
** Handlers, privatization, allocation.
*/

int ame_tx_on_commit(ame_tx_t *tx, void (*fn)(void *), void *arg) {
  assert(tx->nesting > 0 && "ame_tx_on_commit outside a transaction");
  struct ame__handler h = {fn, arg};
  tx->slow = 1;
  return ame__vec_push(&tx->on_commit, &h, sizeof h);
}

int ame_tx_on_abort(ame_tx_t *tx, void (*fn)(void *), void *arg) {
  assert(tx->nesting > 0 && "ame_tx_on_abort outside a transaction");
  struct ame__handler h = {fn, arg};
  tx->slow = 1;
  return ame__vec_push(&tx->on_abort, &h, sizeof h);
}

int ame_tx_save(ame_tx_t *tx, void *addr, size_t size) {
  assert(tx->nesting > 0 && "ame_tx_save outside a transaction");
  if (size == 0) return 0;
  struct ame__vec *b = &tx->undo_bytes;
  if (b->n + size > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + size) cap *= 2;
    void *p = realloc(b->items, cap);
    if (p == NULL) return -ENOMEM;
    b->items = p;
    b->cap = cap;
  }
  struct ame__undo u = {addr, size, b->n};
  tx->slow = 1;
  if (ame__vec_push(&tx->undo, &u, sizeof u) != 0) return -ENOMEM;
  memcpy((char *)b->items + b->n, addr, size);
  b->n += size;
  return 0;
}

/* Put back what ame_tx_save() recorded, newest first, and forget it. */
static void undo_restore(ame_tx_t *tx) {
  struct ame__undo *u = tx->undo.items;
  for (size_t i = tx->undo.n; i-- > 0;)
    memcpy(u[i].addr, (char *)tx->undo_bytes.items + u[i].offset, u[i].size);
  tx->undo.n = 0;
  tx->undo_bytes.n = 0;
}

/* Bytes saved in a heap's write log (ame__tx_save_shared): records that
** grow down from the log's end (w_end) towards its entries, the newest
** lowest, w_saved the newest's first word.  A record: the address and
** the number of words, then the words.  Only the owner writes them, and
** w_saved moves (release) only once the record below it is complete: a
** recoverer reads the records of a dead owner from w_saved up. */
void ame__tx_save_shared(ame_tx_t *tx, const uintptr_t *p, size_t n) {
  assert(tx->w_end != NULL && "ame__tx_save_shared outside a heap");
  size_t bytes = (n + 2) * sizeof(uintptr_t);
  char *low = tx->w_saved;
  if ((size_t)(low - (char *)(tx->w_chunk + 1)) < bytes) log_full(tx);
  uintptr_t *r = (uintptr_t *)(low - bytes);
  r[0] = (uintptr_t)p;
  r[1] = n;
  for (size_t i = 0; i < n; i++) r[2 + i] = LOAD(&p[i]);
  STORE_REL(&tx->w_saved, (char *)r);
  /* The caller's writes at p come after this store in the program as
  ** compiled (a kill stops a thread between two of its instructions, and
  ** what it stored before is there for the recoverer). */
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Put back the words saved in the heap's write log of tx (its owner's
** abort, or a recoverer's, the owner dead), newest first, and forget
** them: w_saved goes back to w_end only once they are back, so that a
** recoverer that dies half-way leaves them to the next one (putting them
** back twice does no harm: the claimed granules are still locked).  A
** record that would run past the log's end (a descriptor that was never
** set up) ends the walk. */
static void saved_restore(ame_tx_t *tx) {
  char *end = (char *)tx->w_end, *at = LOAD_ACQ(&tx->w_saved);
  if (at >= (char *)tx->w_first && at < end) {
    while ((size_t)(end - at) >= 2 * sizeof(uintptr_t)) {
      uintptr_t *r = (uintptr_t *)at;
      uintptr_t *p = (uintptr_t *)r[0];
      size_t n = r[1];
      if (n > (size_t)(end - at) / sizeof(uintptr_t) - 2) break;
      for (size_t i = 0; i < n; i++) STORE(&p[i], r[2 + i]);
      at += (n + 2) * sizeof(uintptr_t);
    }
    if (tx->dom->shared && ame__heap_phase_hook)
      ame__heap_phase_hook("restored");
  }
  STORE_REL(&tx->w_saved, end);
}

void ame_tx_privatize(ame_tx_t *tx) {
  assert(tx->nesting > 0 && "ame_tx_privatize outside a transaction");
  assert(!tx->dom->shared && "privatization in a shared heap");
  tx->slow = 1;
  tx->privatize = 1;
}

void *ame_tx_malloc(ame_tx_t *tx, size_t size) {
  assert(tx->nesting > 0 && "ame_tx_malloc outside a transaction");
  if (tx->dom->shared) return ame__heap_tx_malloc(tx, size);
  void *p = recycle_get(tx, size);
  tx->slow = 1;
  if (p && ame__vec_push(&tx->allocs, &p, sizeof p) != 0) {
    free(p);
    return NULL;
  }
  return p;
}

void *ame_tx_calloc(ame_tx_t *tx, size_t n, size_t size) {
  assert(tx->nesting > 0 && "ame_tx_calloc outside a transaction");
  if (tx->dom->shared) {
    if (size && n > SIZE_MAX / size) return NULL;
    uintptr_t *p = ame__heap_tx_malloc(tx, n * size);
    if (p == NULL) return NULL;
    for (size_t i = 0; i < (n * size + 7) / 8; i++)
      ame_store_word_tx(tx, &p[i], 0);
    return p;
  }
  void *p = calloc(n ? n : 1, size ? size : 1);
  tx->slow = 1;
  if (p && ame__vec_push(&tx->allocs, &p, sizeof p) != 0) {
    free(p);
    return NULL;
  }
  return p;
}

void ame_tx_free(ame_tx_t *tx, void *ptr, size_t size) {
  assert(tx->nesting > 0 && "ame_tx_free outside a transaction");
  if (ptr == NULL) return;
  if (tx->dom->shared) {
    ame__heap_tx_free(tx, ptr);
    return;
  }
  if (size) {
    /* Lock every granule of the block, as a write would. */
    uintptr_t g = (uintptr_t)1 << AME__GRAIN_SHIFT;
    uintptr_t a = (uintptr_t)ptr & ~(g - 1);
    uintptr_t end = (uintptr_t)ptr + size;
    for (; a < end; a += g) store_masked(tx, a, 0, 0);
  }
  tx->slow = 1;
  if (ame__vec_push(&tx->frees, &ptr, sizeof ptr) != 0) {
    fprintf(stderr, "ame: out of memory logging a free\n");
    abort();
  }
}

const char *ame_strerror(int err) {
  switch (err) {
  case 0: return "success";
  case -ENOMEM: return "out of memory";
  case -EINVAL: return "invalid argument";
  case -EALREADY: return "already initialised";
  case -EAGAIN: return "resource temporarily unavailable";
  case -ENOSPC: return "no free slot (too many threads)";
  default: return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
  }
}

/* ------------------------------------------------------------------------
** Heap descriptors (heap.c places them in the heap's slots).
*/

int ame__tx_setup(ame_tx_t *tx, struct ame__dom *d, unsigned slot,
                  struct ame__wchunk *log, size_t chunks, int pid) {
  /* Everything a previous owner (perhaps another process) left is
  ** meaningless now, private pointers first; but not the statistics,
  ** which the slot keeps over its owners and any thread may be reading
  ** (ame_heap_stats: atomics, so they are not written here at all). */
  size_t st = offsetof(ame_tx_t, stats), st_end = st + sizeof tx->stats;
  memset(tx, 0, st);
  memset((char *)tx + st_end, 0, sizeof *tx - st_end);
  tx->r_base = alloc_lines(READ_LOG_INIT * sizeof *tx->r_base);
  if (tx->r_base == NULL) return -ENOMEM;
  tx->h.r_cur = tx->r_base;
  tx->h.r_end = tx->r_base + READ_LOG_INIT;
  ame__tx_init_domain(tx, d);
  tx->w_first = log;
  tx->w_chunk = log;
  tx->w_end = log + chunks;
  STORE(&tx->w_saved, (char *)tx->w_end); /* nothing saved (a recoverer
                                             checks it lies in the log) */
  tx->slot = slot;
  tx->starts = SNAPSHOT_REFRESH - 1;
  tx->pid = pid;
  STORE(&tx->active, AME__IDLE);
  STORE(&tx->hold, AME__IDLE);
  tx->rng = 0x9E3779B97F4A7C15ull ^
            ((uint64_t)(slot + 1) * 0xBF58476D1CE4E5B9ull) ^ (uint64_t)pid;
  STORE(&tx->in_use, 1);
  tx->refs = 1;
  return 0;
}

void ame__tx_teardown(ame_tx_t *tx) {
  free(tx->r_base);
  ame__vec_free(&tx->allocs);
  ame__vec_free(&tx->frees);
  ame__vec_free(&tx->on_commit);
  ame__vec_free(&tx->on_abort);
  ame__vec_free(&tx->limbo);
  ame__vec_free(&tx->retry_set);
  ame__vec_free(&tx->undo);
  ame__vec_free(&tx->undo_bytes);
  tx->r_base = NULL;
  STORE(&tx->in_use, 0);
}

int ame__tx_recover(ame_tx_t *tx, uintptr_t status) {
  /* The owner is dead: nothing of its descriptor changes under us.  Its
  ** current attempt's log runs from w_first to (w_chunk, w_i); an entry
  ** holds a lock only if its orec still points at it (the owner may have
  ** died between filling an entry and its compare-and-swap, or after
  ** releasing some locks of a commit). */
  uintptr_t version = (status & 1) ? (status >> 1) << 1 : 0;
  if (tx->w_first == NULL || tx->w_chunk == NULL) return 0;
  /* Bytes it saved before writing outside the STM: undecided, they go
  ** back, while its locks still keep everyone else out; decided, the
  ** commit keeps what was written. */
  if (LOAD_ACQ(&tx->w_saved) != (char *)tx->w_end) {
    if (version)
      STORE_REL(&tx->w_saved, (char *)tx->w_end);
    else
      saved_restore(tx);
  }
  if (version) {
    /* A decided commit: redo the write-back of every word whose orec is
    ** still ours (those released were written back before the release
    ** began).  A chained entry's orec points at its chain's head. */
    for (struct ame__wchunk *c = tx->w_first;; c = c->next) {
      struct ame__wentry *end = c == tx->w_chunk ? c->e + tx->w_i
                                                 : c->e + AME__WCHUNK;
      for (struct ame__wentry *e = c->e; e < end; e++) {
        uintptr_t l = LOAD_ACQ(e->orec);
        if (!IS_LOCKED(l) || LOAD(&LOCK_ENTRY(l)->tx) != tx) continue;
        write_entry(e); /* as the commit's write-back: exactly its bytes */
      }
      if (c == tx->w_chunk || c + 1 == tx->w_end) break;
    }
  }
  ame__fence_release();
  uintptr_t bump = 0;
  for (struct ame__wchunk *c = tx->w_first;; c = c->next) {
    struct ame__wentry *end = c == tx->w_chunk ? c->e + tx->w_i
                                               : c->e + AME__WCHUNK;
    for (struct ame__wentry *e = c->e; e < end; e++) {
      if (!e->head) continue;
      uintptr_t mine = (uintptr_t)e | 1;
      uintptr_t l = mine;
      /* Undecided: the old version, or for a claimed granule (head 2,
      ** written outside the STM) a new one, as release_locks gives. */
      if (LOAD_ACQ(e->orec) != mine) continue;
      uintptr_t v = version        ? version
                    : e->head == 2 ? claim_version(tx->dom, &bump)
                                   : e->version;
      __atomic_compare_exchange_n(e->orec, &l, v, 0, __ATOMIC_ACQ_REL,
                                  __ATOMIC_RELAXED);
    }
    if (c == tx->w_chunk || c + 1 == tx->w_end) break;
  }
  tx->w_chunk = tx->w_first;
  tx->w_i = 0;
  tx->w_n = 0;
  STORE(&tx->killed, 0);
  STORE(&tx->irrevocable, 0);
  STORE_REL(&tx->active, AME__IDLE);
  STORE_REL(&tx->hold, AME__IDLE);
  return version != 0;
}
