/*
** stm/src/internal.h — the STM's private declarations: the descriptor, the
** global state, and the helpers shared by stm.c, stats.c and tasks.c.
** Internal non-static names start with ame__.
*/
#ifndef AME_STM_INTERNAL_H
#define AME_STM_INTERNAL_H

#ifndef AME_STM_INLINE
#define AME_STM_INLINE
#endif
#include "ame/stm.h"

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>

#define AME__LIKELY(x) __builtin_expect(!!(x), 1)
#define AME__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define AME__CACHELINE 64
#define AME__IDLE UINTPTR_MAX /* ame_tx.active between transactions */

/* Relaxed atomic helpers; every word shared between threads goes through
** them so that the sanitizers see the intended synchronisation. */
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* A statistics counter written only by its owner, read by anyone. */
#define STAT_INC(tx, field) STAT_ADD(tx, field, 1)
#define STAT_ADD(tx, field, n) \
  STORE(&(tx)->stats.field, LOAD(&(tx)->stats.field) + (n))

/* One write-log entry.  The first entry made for an orec (the head) holds
** the lock; later entries for other words under the same orec are chained
** from it. */
struct ame__wentry {
  uintptr_t addr;            /* the word (8-aligned) */
  uintptr_t value;           /* the new bytes (under mask) */
  uintptr_t mask;            /* bytes written: ~0, one 32-bit half, or 0
                                for a lock taken without a write */
  uintptr_t version;         /* head: the orec's value before locking */
  uintptr_t *orec;           /* the orec covering addr */
  struct ame__wentry *next;  /* next entry under the same orec */
  struct ame_tx *tx;         /* the owner; constant for a chunk's life (a
                                heap log stores it again, the same value,
                                at each use: atomically, as a load that
                                saw an old lock may be reading it) */
  uintptr_t head;            /* nonzero if this entry holds the lock; 2
                                if memory under it may also have been
                                written outside the STM (ame__tx_claim):
                                then an abort (or recovery of an undecided
                                attempt) releases it with a new version,
                                not the one it had */
};

/* The write log is a list of chunks, so that it grows without moving the
** entries that locked orecs point to (and so never forces an abort). */
#define AME__WCHUNK 256
struct ame__wchunk {
  struct ame__wentry e[AME__WCHUNK];
  struct ame__wchunk *next;
};

/* The library's thread-local variables: initial-exec, an offset from the
** thread pointer, not a __tls_get_addr() call per access.  The Python
** extension links libame in and is loaded by dlopen(); glibc then places
** these few dozen bytes in the static TLS it keeps spare for such modules.
** (As dynamic TLS, GCC 12's thread sanitizer crashed in its
** __tls_get_addr() interceptor on the extension's block.) */
#define AME__TLS __thread __attribute__((tls_model("initial-exec")))

/* A growable array of (function, argument) or pointers. */
struct ame__handler {
  void (*fn)(void *);
  void *arg;
};
struct ame__vec {
  void *items;
  size_t n, cap;
};

/* An ame_tx_save() record: size bytes at addr, saved at offset. */
struct ame__undo {
  void *addr;
  size_t size, offset;
};

/* A deferred free, reclaimable once every running transaction started at or
** after ts. */
struct ame__limbo {
  void *ptr;
  uintptr_t ts;
};

/* Reclaimed blocks of one size kept for the thread's next ame_tx_malloc
** (stm.c, "Recycling"). */
#define AME__RECYCLE_CLASSES 4
struct ame__recycle {
  size_t usable; /* malloc_usable_size() of each block */
  void *head;    /* a list through each block's first word, newest first */
  size_t n;
};

struct ame_tx {
  struct ame__txhot h;         /* must stay first: the inline loads */
  struct ame__dom *dom;        /* the domain it belongs to */
  /* -- write log */
  struct ame__wchunk *w_first; /* first chunk (kept across transactions) */
  struct ame__wchunk *w_chunk; /* chunk being filled */
  struct ame__wchunk *w_end;   /* heap: the end of its fixed, contiguous
                                  log (NULL: a growing private one) */
  char *w_saved;               /* atomic; heap: the bytes saved at the log's
                                  end start here (w_end: none; stm.c,
                                  ame__tx_save_shared) */
  unsigned w_i;                /* next free index in w_chunk */
  size_t w_n;                  /* entries in this attempt */
  /* -- read log */
  struct ame__rentry *r_base;
  /* -- state */
  unsigned nesting;            /* 0 outside, 1 in the outermost */
  unsigned attempt;            /* aborts of the current transaction */
  unsigned conflicts;          /* ... of which conflicts (escalation) */
  int irr_user;                /* the program asked for irrevocability */
  uintptr_t hold;              /* atomic: the finished transaction's start,
                                  published while its handlers run: what
                                  it could reach stays allocated (IDLE:
                                  none); quiescence ignores it */
  struct ame__vec retry_set;   /* ame__rentry: what ame_retry() waits on */
  struct ame__vec undo;        /* ame__undo: ame_tx_save() records */
  struct ame__vec undo_bytes;  /* char: the saved bytes */
  int irrevocable;             /* this attempt is irrevocable */
  int want_irrevocable;        /* restart irrevocable (keeps the token) */
  int privatize;               /* quiesce after commit */
  int has_token;               /* holds the irrevocability token */
  int killed;                  /* atomic: an irrevocable tx wants us out */
  int slow;                    /* commit() takes commit_full(): set where
                                  what commit_plain() tests turns true */
  int light;                   /* its starts take the light fence (the
                                  process's domain, with membarrier) */
  jmp_buf *env;                /* where an abort restarts */
  void (*resume)(ame_tx_t *);  /* if set, called instead of longjmp(env)
                                  (ame__tx_enter: the GCC TM ABI) */
  int explicit_env;            /* begun by ame_tx_begin() (a binding) */
  ame_abort_cause_t last_cause;/* of the last abort */
  uintptr_t last_addr;         /* ... and the word it concerned, or 0 */
  int pid;                     /* heap: the owner's process */
  uintptr_t stuck_lock;        /* heap: a ticket holder ahead of us ... */
  uint64_t stuck_since;        /* ... since (ms) */
  struct ame_tx *watch;        /* the owner of a lock a load met, whose
                                  attempt the backoff watches ... */
  uint64_t watch_ends;         /* ... its attempts_ended() then */
  uint64_t backoffs;           /* random backoffs drawn after aborts
                                  (the tests of the contention manager) */
  uintptr_t *met_orec;         /* heap: a lock met (orec, value) ... */
  uintptr_t met_lock;
  uint64_t met_since;          /* ... first met then (ms) */
  const char *site;            /* atomic: call site for reports */
  uintptr_t active;            /* atomic: snapshot ts while running, IDLE */
  uint64_t rng;                /* backoff randomness */
  uintptr_t seen;              /* the newest clock value this thread saw */
  unsigned starts;             /* attempts started (snapshot refresh) */
  /* -- per-attempt logs */
  struct ame__vec allocs;      /* void*: freed on abort */
  struct ame__vec frees;       /* void*: deferred on commit */
  struct ame__vec on_commit;   /* ame__handler */
  struct ame__vec on_abort;    /* ame__handler */
  /* -- reclamation */
  struct ame__vec limbo;       /* ame__limbo, oldest first */
  unsigned scanned_at;         /* `starts` at the last reclamation scan */
  struct ame__recycle recycle[AME__RECYCLE_CLASSES]; /* stm.c */
  /* -- registry */
  unsigned slot;               /* index in the thread table */
  unsigned refs;               /* ame_thread_enter() nesting */
  int in_use;                  /* atomic */
  /* owner writes, anyone reads (atomics); on lines of their own, so that
  ** a reader (a backoff's watch: stm.c) takes none the owner writes
  ** while a transaction runs */
  ame_stats_t stats __attribute__((aligned(AME__CACHELINE)));
};

/* A domain: the clock, orecs, irrevocability token, retry futex and
** table of descriptors that a set of transactions shares.  A process has
** its private domain (ame__G.dom, for ame_thread_enter()'s descriptors);
** a shared heap (heap.c) has one in its header, in memory mapped at the
** same address by every process that uses it, so every field, pointers
** included, means the same in all of them.  Each descriptor belongs to
** one domain for life (ame_tx.dom). */
struct ame__dom {
  uintptr_t clock __attribute__((aligned(AME__CACHELINE))); /* commit ts */
  char pad0[AME__CACHELINE - sizeof(uintptr_t)];
  uint32_t retry_seq __attribute__((aligned(AME__CACHELINE))); /* futex */
  uint32_t retry_waiters;
  char pad1[AME__CACHELINE - 2 * sizeof(uint32_t)];
  uintptr_t irr_next __attribute__((aligned(AME__CACHELINE))); /* tickets */
  uintptr_t irr_serving;
  char pad2[AME__CACHELINE - 2 * sizeof(uintptr_t)];
  /* read-mostly */
  uintptr_t *orecs __attribute__((aligned(AME__CACHELINE)));
  uintptr_t orec_bias;         /* ame__orec_of(): see stm_inline.h */
  uintptr_t orec_mask;
  unsigned escalate_after;
  unsigned max_threads;
  unsigned n_slots;            /* atomic: high-water mark of threads[] */
  ame_tx_t **threads;          /* atomic pointers; never freed while up */
  int shared;                  /* process-shared: shared futexes; a
                                  descriptor's owner may die (heap.c) */
  struct ame_heap *heap;       /* the shared heap, or NULL */
};

/* Process-wide state. */
struct ame__global {
  struct ame__dom dom;         /* the private domain */
  int initialised;
  pthread_mutex_t reg_lock;    /* registry, orphans */
  struct ame__vec orphans;     /* ame__limbo left by exited threads */
  ame_stats_t orphan_stats;    /* reclamation counts of orphans */
  ame_stats_t *stats_base;     /* atomic: by slot, each descriptor's counts
                                  at the last ame_stats_reset() (stats.c) */
  int membarrier;              /* atomic: the private domain's fences are
                                  asymmetric (stm.c: fence_heavy()) */
  uint64_t membarriers;        /* atomic: membarrier calls fence_heavy()
                                  made (for the tests) */
  uint64_t retry_sleeps;       /* atomic: futex waits in ame_retry() (for
                                  the tests) */
};
extern struct ame__global ame__G;

/* An acquire fence: orders the loads before it (of data read outside the
** STM's load protocol, such as a blob copy) before the loads after it
** (validation).  The thread sanitizer does not model fences (gcc refuses
** them under -fsanitize=thread), and needs none here: the data words are
** all atomic. */
static inline void ame__fence_acquire(void) {
#if !defined(__SANITIZE_THREAD__)
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
#endif
}

/* A release fence: orders the orec locks taken so far before the stores
** that follow outside the STM's store protocol (a commit's write-back: the
** writer's half of the seqlock; a blob's words after its allocation's
** locks).  A compiler barrier on x86.  Omitted under the thread sanitizer
** for the same reasons as ame__fence_acquire. */
static inline void ame__fence_release(void) {
#if !defined(__SANITIZE_THREAD__)
  __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
}

/* Wake every thread waiting in ame_retry() on domain d (a commit or a
** recovery may have changed what they read): bump d->retry_seq and wake
** its futex, process-shared for a heap's domain (stm.c). */
void ame__retry_wake(struct ame__dom *d);

/* Bind a descriptor to domain d (its hot part keeps the orec table). */
static inline void ame__tx_init_domain(ame_tx_t *tx, struct ame__dom *d) {
  tx->dom = d;
  tx->h.orecs = d->orecs;
  tx->h.orec_bias = d->orec_bias;
  tx->h.orec_mask = d->orec_mask;
}

/* Heap descriptors (stm.c; heap.c places them in the heap's slots).
** ame__tx_setup() makes *tx, whose memory a previous owner (perhaps a
** process now dead) may have left in any state, a fresh descriptor of
** domain d with the given write log; 0 or -ENOMEM.  ame__tx_teardown()
** frees its private parts.  ame__tx_recover() finishes or undoes the
** transaction of a descriptor whose owner died (status: its slot's commit
** status) and releases its locks; return 1 if it finished a write-back. */
extern AME__TLS ame_tx_t *ame__heap_self;
int ame__tx_setup(ame_tx_t *tx, struct ame__dom *d, unsigned slot,
                  struct ame__wchunk *log, size_t chunks, int pid);
void ame__tx_teardown(ame_tx_t *tx);
int ame__tx_recover(ame_tx_t *tx, uintptr_t status);
/* Abort unless the word at addr, which the transaction read (or wrote),
** is unchanged since: O(1), where ame_tx_validate() checks every read. */
void ame__tx_check_word(ame_tx_t *tx, const void *addr);
/* ame__tx_claim: stm.h. */
/* ame_stats_thread() of a heap slot's descriptor (no reset base; its
** domain pointer, which a thread entering the slot sets, is not read). */
void ame__stats_heap(const ame_tx_t *tx, ame_stats_t *out);
/* Save the n words at p, which the running heap transaction holds
** claimed (ame__tx_claim) and is about to write outside the STM, at the
** end of its write log, in the heap: an abort puts them back, and so does
** a recoverer (ame__tx_recover) if the process dies before the commit is
** decided, each before the locks go.  The copy is complete and recorded
** when this returns, before the caller's first write in place (kill the
** process at any instruction: either nothing was written there yet, or a
** recoverer finds the copy).  A copy that does not fit beside the log's
** entries is a full log (the transaction fails as when its writes
** outgrow the log). */
void ame__tx_save_shared(ame_tx_t *tx, const uintptr_t *p, size_t n);
/* The running transaction has just written the n words at p outside the
** STM (a heap's blob, heap_alloc.c): any store it buffered to one of them
** takes the value memory holds now, so that its write-back (or a
** recoverer's redo) leaves them as they are, and each granule whose lock
** it holds is claimed (ame__tx_claim), since no abort undoes the bytes.
** Granules it holds no lock on are not touched: one load of the orec
** each. */
void ame__tx_overwritten(ame_tx_t *tx, const uintptr_t *p, size_t n);

/* Vectors (stm.c). */
int ame__vec_push(struct ame__vec *v, const void *item, size_t size);
void ame__vec_free(struct ame__vec *v);

/* The conflict table (stats.c). */
void ame__conflict_note(uintptr_t addr, ame_abort_cause_t cause,
                        const char *site, const char *other_site);
void ame__conflicts_reset(void);
void ame__stats_shutdown(void);

/* Blocks in the calling thread's recycle lists, and the membarrier calls
** and ame_retry() futex waits made so far (stm.c; for the tests). */
size_t ame__recycled(const ame_tx_t *tx);
uint64_t ame__membarriers(void);
uint64_t ame__retry_sleeps(void);

/* cpus.c: the smallest CPU quota (in CPUs; 0 for none) of the cgroups that
** the cgroup file (/proc/self/cgroup) names, found through the mountinfo
** file, with prefix before every mount point ("" on a real system); and
** the count ame_cpu_count() gives for an affinity mask of affinity CPUs
** and that quota. */
double ame__cpu_quota(const char *cgroup, const char *mountinfo,
                      const char *prefix);
unsigned ame__cpu_count_with(unsigned affinity, double quota);

#endif /* AME_STM_INTERNAL_H */
