/*
** ame/stm.h — the public interface of ame's software transactional memory.
**
** A word-based STM for C in the TL2/LSA/TinySTM family: a global version
** clock, a table of ownership records (orecs), encounter-time locking
** with write-back (redo log), and snapshot extension on reads.  Every read is
** validated against the transaction's snapshot, so a running transaction
** never observes an inconsistent state, even one that will abort (opacity).
**
** Threads.  A thread registers with ame_thread_enter() before it runs any
** transaction and leaves with ame_thread_exit().  The descriptor returned by
** ame_thread_enter() belongs to that thread; no other thread may use it.
** Every operation exists in two forms, like TinySTM's stm_load/stm_load_tx:
** one taking the descriptor (ame_load_word_tx) and one using the calling
** thread's own (ame_load_word).
**
** Transactions.
**
**     AME_ATOMIC(tx) {
**         uintptr_t v = ame_load_word_tx(tx, &a);
**         ame_store_word_tx(tx, &b, v + 1);
**     }
**
** The block is restarted (via longjmp) when the transaction aborts, and
** committed when control leaves the block normally (falling off the end,
** `break` or `continue`).  Do not `return`, `goto` or `longjmp` out of the
** block.  Local variables that are declared outside the block, modified
** inside it and read after an abort must be `volatile` (the usual setjmp
** rule), or simply be assigned afresh in each attempt.  (gcc's
** -Wclobbered, part of -Wextra, warns about such variables, and sometimes
** about ones that are safe; code that follows the rule may turn it off.)  Nesting is flat: an
** inner AME_ATOMIC joins the outer transaction and an abort restarts the
** outermost.  ame_tx_run() is the same as a function call for code that
** prefers an explicit callback to a macro.
**
** Memory.  Memory from ame_tx_malloc() in an attempt that aborts is freed by
** the abort.  Memory given to ame_tx_free() in an attempt that commits is
** handed back to the C allocator (or, if small, to the thread's own later
** ame_tx_malloc calls) only once no transaction that may still hold a
** pointer to it is running (quiescence on the version clock); in an attempt
** that aborts, ame_tx_free() has no effect.  (A block freed by a
** transaction that wrote nothing is timestamped when it commits: it must
** have been made unreachable by an earlier commit.)  Words that are accessed
** transactionally by one thread must be accessed transactionally, or through
** privatization (ame_tx_privatize()), by every thread.
**
** Errors are negative errno values (-ENOMEM, -EINVAL, ...); ame_strerror()
** names them.  Misuse (a load outside a transaction, a descriptor used by the
** wrong thread) is caught by assert() in debug builds.
*/
#ifndef AME_STM_H
#define AME_STM_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(AME_BUILDING_LIBRARY)
#define AME_EXTERN __attribute__((visibility("default")))
#else
#define AME_EXTERN
#endif

/* The calling thread's transaction descriptor (opaque to users). */
typedef struct ame_tx ame_tx_t;

/* ------------------------------------------------------------------------
** Library and thread lifecycle.
*/

/* Process-wide configuration; zero fields take the defaults. */
typedef struct ame_stm_config {
  unsigned orec_bits;     /* log2 of the number of orecs (default 20) */
  unsigned max_threads;   /* registered threads at once (default 1024) */
  unsigned escalate_after;/* consecutive aborts before a transaction turns
                             irrevocable (default 16; 0 means default) */
} ame_stm_config_t;

/* Initialise the STM.  Return 0, -EALREADY if it was already initialised
** (the configuration is then ignored), -EINVAL if orec_bits is outside
** [4, 28], or -ENOMEM.  ame_thread_enter() calls
** it with the defaults if nobody did. */
AME_EXTERN int ame_stm_init(const ame_stm_config_t *cfg);

/* Free every global resource.  All threads must have left.  Memory whose
** reclamation was still pending is freed.  The STM may be initialised again
** afterwards. */
AME_EXTERN void ame_stm_shutdown(void);

/* Register the calling thread and return its descriptor, or NULL if the
** table of threads is full or memory ran out.  Calling it again on a
** registered thread returns the same descriptor (and counts a reference;
** each enter needs one exit). */
AME_EXTERN ame_tx_t *ame_thread_enter(void);

/* Unregister the calling thread.  Deferred frees it still holds are handed
** to the process-wide list, to be reclaimed by other threads or at
** shutdown. */
AME_EXTERN void ame_thread_exit(void);

/* The calling thread's descriptor, or NULL if it is not registered. */
AME_EXTERN ame_tx_t *ame_self(void);

/* Say that the calling thread will run no transaction for a while (it is
** about to block): hand back now whatever of its deferred frees is safe to
** reclaim.  Other threads' reclamation and privatization never wait for a
** thread that is between transactions, so only this thread's own deferred
** frees need it.  Never call it inside a transaction. */
AME_EXTERN void ame_thread_idle(ame_tx_t *tx);

/* ------------------------------------------------------------------------
** Transactions.
*/

/* Why an attempt aborted (statistics and the conflict report). */
typedef enum ame_abort_cause {
  AME_ABORT_READ_LOCKED,  /* a read met a location locked by another tx */
  AME_ABORT_WRITE_LOCKED, /* a write met a location locked by another tx */
  AME_ABORT_VALIDATE,     /* snapshot extension found a read overwritten */
  AME_ABORT_COMMIT,       /* commit-time validation failed */
  AME_ABORT_KILLED,       /* an irrevocable transaction needed our locks */
  AME_ABORT_EXPLICIT,     /* ame_tx_abort() */
  AME_ABORT_RETRY,        /* ame_retry(): waiting for a change */
  AME_ABORT_IRREVOCABLE,  /* restarted to run irrevocable from the start */
  AME_ABORT_CAPACITY,     /* a shared heap's write log is full: given up */
  AME_ABORT__COUNT
} ame_abort_cause_t;

/* Run fn(tx, arg) as one transaction, re-running it on conflict; return what
** the committed run returned.  Inside a transaction it joins it (flat
** nesting). */
AME_EXTERN int ame_tx_run(ame_tx_t *tx, int (*fn)(ame_tx_t *tx, void *arg),
                          void *arg);

/* Abort the current attempt and run the transaction again.  Not allowed
** after ame_tx_irrevocable() (assert); a transaction that the contention
** manager made irrevocable may abort, and runs again irrevocable. */
AME_EXTERN void ame_tx_abort(ame_tx_t *tx) __attribute__((noreturn));

/* Abort the current attempt and block until some location that it read has
** been changed by a committed transaction, then run it again
** (Haskell-style retry).  If it read nothing, it waits for any commit.  Not
** allowed in an irrevocable transaction (assert). */
AME_EXTERN void ame_retry(ame_tx_t *tx) __attribute__((noreturn));

/* Make the current transaction irrevocable: from the return on it can no
** longer abort, and no other irrevocable transaction runs until it ends.
** Other (revocable) transactions keep running; those that touch what it
** reads or writes are the ones that abort.  The attempt may be aborted once
** (and restarted directly in irrevocable mode) if what it read so far was
** overwritten.  Return 0. */
AME_EXTERN int ame_tx_irrevocable(ame_tx_t *tx);

/* Transactions begun and ended by explicit calls, for language bindings
** whose transaction body cannot be a C block (Python's ame.atomic).
**
** ame_tx_begin(tx, env, site) starts the outermost transaction (not
** inside one); from then on an abort rolls the attempt back and longjmps
** to *env (the attempt is over: call ame_tx_begin again to run it again,
** or ame_tx_cancel to give up).  The jmp_buf must stay valid while it is
** the restart point: a binding that returns to its caller between two
** operations of one transaction sets a fresh one around each C call with
** ame_tx_set_env (which returns the previous).  ame_tx_commit(tx) commits
** (or aborts, longjmping to *env).  ame_tx_cancel(tx), inside the
** transaction, rolls it back and ends it (its abort handlers run); after
** an abort, it forgets the attempts (escalation, the irrevocability token
** an escalation took).  A transaction that the contention manager made
** irrevocable can still be cancelled (and still aborts with
** AME_ABORT_CAPACITY); one that called ame_tx_irrevocable() cannot.
** ame_tx_last_cause() says why the last attempt aborted (and sets *addr
** to the word concerned, or 0): AME_ABORT_CAPACITY means running it again
** cannot succeed.
** ame_tx_validate() checks every read so far and aborts if one was
** overwritten (e.g. before trusting data read outside the STM, such as a
** heap blob; ame/heap.h). */
AME_EXTERN void ame_tx_begin(ame_tx_t *tx, jmp_buf *env, const char *site);
AME_EXTERN jmp_buf *ame_tx_set_env(ame_tx_t *tx, jmp_buf *env);
AME_EXTERN void ame_tx_commit(ame_tx_t *tx);
AME_EXTERN void ame_tx_cancel(ame_tx_t *tx);
AME_EXTERN ame_abort_cause_t ame_tx_last_cause(const ame_tx_t *tx,
                                               uintptr_t *addr);
AME_EXTERN void ame_tx_validate(ame_tx_t *tx);

/* Return nonzero if the current transaction is irrevocable. */
AME_EXTERN int ame_tx_is_irrevocable(const ame_tx_t *tx);

/* Return the nesting depth: 0 outside a transaction, 1 in the outermost. */
AME_EXTERN unsigned ame_tx_depth(const ame_tx_t *tx);

/* Return how many times the current transaction has aborted so far (0 on
** its first attempt). */
AME_EXTERN unsigned ame_tx_attempt(const ame_tx_t *tx);

/* Name the current transaction's call site in conflict reports.  The string
** is not copied and must outlive the STM (a literal).  AME_ATOMIC sets it to
** "file:line" at each outermost start. */
AME_EXTERN void ame_tx_set_site(ame_tx_t *tx, const char *site);

/* Register fn(arg) to run after the current transaction commits (commit
** handler) or after the current attempt aborts (abort handler), outside the
** transaction, in registration order.  Handlers belong to one attempt: an
** abort discards the attempt's commit handlers, a commit discards its abort
** handlers.  An abort handler runs once the attempt has been undone (its
** locks released, its ame_tx_save() bytes restored, its ame_tx_malloc()
** blocks freed).  Handlers of either kind may run transactions of their
** own, and those may privatize, call ame_quiesce(), wait in ame_retry() or
** turn irrevocable: while handlers run, the thread is between
** transactions (no other thread's quiescence or privatization waits for
** it) and holds no irrevocability ticket.  Memory that the finished
** attempt could reach stays allocated until its handlers return (deferred
** frees on every thread wait for them).  Return 0 or -ENOMEM. */
AME_EXTERN int ame_tx_on_commit(ame_tx_t *tx, void (*fn)(void *arg),
                                void *arg);
AME_EXTERN int ame_tx_on_abort(ame_tx_t *tx, void (*fn)(void *arg),
                               void *arg);

/* Say that the current transaction privatizes memory (makes it unreachable
** by other transactions in order to use it without the STM).  After it
** commits, the commit waits until no transaction that could still be reading
** that memory is running, so that plain loads and stores on it are safe. */
AME_EXTERN void ame_tx_privatize(ame_tx_t *tx);

/* Undo-log [addr, addr+size): data the calling thread owns alone (a
** connection's parser state, a thread-local buffer) that the transaction
** will change with plain stores.  The bytes are copied now; if the attempt
** aborts they are copied back (newest first) before it is re-run, so a
** re-run starts from the same state.  Cheaper than transactional stores
** for data no other thread reads.  Return 0 or -ENOMEM. */
AME_EXTERN int ame_tx_save(ame_tx_t *tx, void *addr, size_t size);

/* Outside a transaction: wait until every transaction running now has
** ended (a privatization fence).  A thread running commit or abort
** handlers is between transactions: it is not waited for. */
AME_EXTERN void ame_quiesce(ame_tx_t *tx);

/* ------------------------------------------------------------------------
** Transactional allocation.
*/

/* Allocate size bytes inside a transaction.  Freed again if the attempt
** aborts.  Return NULL if malloc fails (the transaction goes on). */
AME_EXTERN void *ame_tx_malloc(ame_tx_t *tx, size_t size);
AME_EXTERN void *ame_tx_calloc(ame_tx_t *tx, size_t n, size_t size);

/* Free ptr if, and when, the transaction commits; nothing happens if it
** aborts.  The block is returned to malloc only once every transaction that
** was running at the commit has ended (a small one may first serve one of
** the thread's later ame_tx_malloc calls: docs/stm.md, "Memory reclamation
** and privatization").  If size is nonzero, the block's
** words are also locked as if written, so that a concurrent transaction
** that still accesses the block conflicts with this one.  ptr may have been
** allocated outside a transaction or by ame_tx_malloc() in this one. */
AME_EXTERN void ame_tx_free(ame_tx_t *tx, void *ptr, size_t size);

/* ------------------------------------------------------------------------
** Statistics and the conflict report.
*/

typedef struct ame_stats {
  uint64_t commits;       /* committed transactions (outermost) */
  uint64_t commits_ro;    /* ... of which wrote nothing */
  uint64_t aborts;        /* aborted attempts, all causes */
  uint64_t aborts_by_cause[AME_ABORT__COUNT];
  uint64_t retries;       /* ame_retry() waits */
  uint64_t irrevocable;   /* transactions that became irrevocable */
  uint64_t escalations;   /* ... of which the contention manager forced */
  uint64_t extensions;    /* successful snapshot extensions */
  uint64_t max_attempts;  /* most attempts one transaction needed */
  uint64_t frees_pending; /* deferred frees not yet reclaimed */
  uint64_t frees_done;    /* deferred frees reclaimed */
} ame_stats_t;

/* Fill *out with the statistics of one thread's descriptor.  Descriptors
** are recycled: a thread that registers after another left may get its
** descriptor, and its counts go on from there (take a snapshot first to
** measure one thread's share).  Counts go back to zero only with
** ame_stats_reset(). */
AME_EXTERN void ame_stats_thread(const ame_tx_t *tx, ame_stats_t *out);

/* Fill *out with the totals over every thread that ever registered. */
AME_EXTERN void ame_stats_total(ame_stats_t *out);

/* Zero all statistics and the conflict table. */
AME_EXTERN void ame_stats_reset(void);

/* The name of an abort cause ("read-locked", ...). */
AME_EXTERN const char *ame_abort_cause_name(ame_abort_cause_t cause);

/* Give the memory [addr, addr+size) a name for conflict reports.  The
** string is copied.  Return 0, -ENOMEM or -EINVAL. */
AME_EXTERN int ame_label(const void *addr, size_t size, const char *name);

/* One line of the conflict report. */
typedef struct ame_conflict {
  uintptr_t addr;         /* the word involved (first seen at that orec) */
  const char *label;      /* its ame_label() name, or NULL */
  uintptr_t label_base;   /* where that labelled range starts */
  const char *site;       /* the aborting transaction's site, or NULL */
  const char *other_site; /* the site holding the lock, when known */
  ame_abort_cause_t cause;/* the most recent cause seen there */
  uint64_t count;         /* aborts attributed to it */
} ame_conflict_t;

/* Copy the (at most n) hottest conflicts, most aborts first, into out and
** return how many were copied. */
AME_EXTERN size_t ame_conflicts(ame_conflict_t *out, size_t n);

/* Write a human-readable report (totals, aborts by cause, the top conflicts
** with labels and sites) to f.  Return the number of conflict lines. */
AME_EXTERN int ame_conflict_report(FILE *f, size_t top);

/* The message for a negative errno-style code returned by this library. */
AME_EXTERN const char *ame_strerror(int err);

/* ------------------------------------------------------------------------
** The thread-less task API (PyPy's transaction.add / transaction.run).
*/

typedef struct ame_tasks ame_tasks_t;
typedef void (*ame_task_fn)(ame_tx_t *tx, void *arg);

/* Create an empty task queue, or return NULL if memory ran out. */
AME_EXTERN ame_tasks_t *ame_tasks_new(void);

/* Free the queue.  It must not be running. */
AME_EXTERN void ame_tasks_free(ame_tasks_t *q);

/* Add a task: fn(tx, arg) will run as one transaction.  Called inside a
** transaction (tx != NULL and in a transaction), the task is added only if
** and when that transaction commits.  Return 0 or -ENOMEM. */
AME_EXTERN int ame_tasks_add(ame_tasks_t *q, ame_tx_t *tx, ame_task_fn fn,
                             void *arg);

/* Run the queued tasks on nthreads threads (0: ame_cpu_count(); the
** calling thread is one of them) until the queue is empty and no task is
** running; tasks may add tasks.  The outcome is that of running the tasks one
** at a time in some order.  If fewer threads can be started, the run goes on
** with those.  Return 0, -EINVAL (called inside a transaction), -EALREADY
** (this queue is already running) or -ENOSPC (no thread could register,
** ame_thread_enter: no task ran, and the tasks stay queued). */
AME_EXTERN int ame_tasks_run(ame_tasks_t *q, unsigned nthreads);

/* How many tasks ran to commit in the last ame_tasks_run(). */
AME_EXTERN uint64_t ame_tasks_done(const ame_tasks_t *q);

/* How many CPUs this process can use: those of its affinity mask, lowered
** to the CPU quota of its cgroups (v2 cpu.max, v1 cpu.cfs_quota_us, the
** smallest over its cgroup and their ancestors), rounded up; at least 1.
** "One per CPU" means this everywhere in ame: ame_tasks_run(q, 0), the
** reactor's default workers, `ame run --workers auto`, `ame load`. */
AME_EXTERN unsigned ame_cpu_count(void);

/* ------------------------------------------------------------------------
** Transactional loads and stores.  Addresses must be naturally aligned.
** The _tx forms take the descriptor; the short forms use ame_self().
** With AME_STM_INLINE defined before this header, the loads are inlined
** (the library's own hot users build that way); otherwise they are calls.
*/

AME_EXTERN uintptr_t ame_load_word_tx(ame_tx_t *tx, const uintptr_t *addr);
AME_EXTERN void ame_store_word_tx(ame_tx_t *tx, uintptr_t *addr, uintptr_t v);
AME_EXTERN uint32_t ame_load_u32_tx(ame_tx_t *tx, const uint32_t *addr);
AME_EXTERN void ame_store_u32_tx(ame_tx_t *tx, uint32_t *addr, uint32_t v);

/* A hint that the transaction will load the word at addr soon: start
** bringing it and its ownership record into the cache.  Nothing else
** happens (no read is logged, nothing is validated; any address is
** harmless).  A walk over many scattered entries issues it some entries
** ahead, so that their cache misses overlap instead of following one
** another. */
AME_EXTERN void ame_prefetch_tx(ame_tx_t *tx, const void *addr);

/* ------------------------------------------------------------------------
** Internals the macros and inline functions need.  Not part of the API.
*/

struct ame__frame {
  ame_tx_t *tx;
  int state;
  jmp_buf *env;
};
AME_EXTERN int ame__frame_next(struct ame__frame *f);
AME_EXTERN int ame__frame_begin(struct ame__frame *f, const char *site);

/* For libame-itm (GCC's transactional memory ABI, itm/), whose restart
** point is a register checkpoint rather than a jmp_buf.  ame__tx_enter
** begins the outermost transaction (like ame_tx_begin) with an abort
** calling resume(tx), which must not return, instead of longjmp; inside a
** transaction it joins it one level deeper (flat nesting).  It returns the
** depth.  ame__tx_leave leaves one level and commits at the outermost
** (an abort there calls resume); it returns the depth left.  ame__store_masked buffers the bytes of
** v selected by mask (any byte mask) into the aligned word at addr; the
** other bytes of the word are neither read nor written. */
AME_EXTERN unsigned ame__tx_enter(ame_tx_t *tx, void (*resume)(ame_tx_t *tx),
                                  const char *site);
AME_EXTERN unsigned ame__tx_leave(ame_tx_t *tx);
AME_EXTERN void ame__store_masked(ame_tx_t *tx, uintptr_t *addr,
                                  uintptr_t v, uintptr_t mask);
/* Lock the orec of the aligned word at addr as a store would, writing
** nothing, and give the granule a new version when the lock is released,
** whether the attempt commits or not: a reader with an older snapshot
** that meets it then aborts.  For memory the caller writes outside the
** STM while the transaction runs: a heap's allocator (heap_alloc.c), and
** libame-itm's stores to the thread's own stack, which ame_tx_save
** undo-logs (an abort restores those bytes before it releases the
** orecs). */
AME_EXTERN void ame__tx_claim(ame_tx_t *tx, uintptr_t *addr);

#define AME__STR2(x) #x
#define AME__STR(x) AME__STR2(x)

/* Run the statement that follows as one transaction on descriptor tx.
** (The jmp_buf is declared without an initialiser: zeroing it would cost
** more than the rest of a short transaction's start.  The first pass of
** the inner loop is decided inline; ame__frame_next, called once the body
** is done, commits.) */
#define AME_ATOMIC(tx)                                                       \
  for (jmp_buf ame__env_, *ame__envp_ = &ame__env_; ame__envp_;              \
       ame__envp_ = NULL)                                                    \
    for (struct ame__frame ame__fr_ = {(tx), 0, ame__envp_};                 \
         ame__fr_.state ? ame__frame_next(&ame__fr_) : (ame__fr_.state = 1);) \
      switch (setjmp(ame__env_))                                             \
      default:                                                               \
        if (ame__frame_begin(&ame__fr_, __FILE__ ":" AME__STR(__LINE__))) { \
        } else

#ifdef AME_STM_INLINE
#include "ame/stm_inline.h"
#else
static inline uintptr_t ame__load_w(ame_tx_t *tx, const uintptr_t *a) {
  return ame_load_word_tx(tx, a);
}
static inline void ame__prefetch(ame_tx_t *tx, const void *a) {
  ame_prefetch_tx(tx, a);
}
#endif

/* Typed helpers: pointers, 64- and 32-bit integers, doubles, floats (a
** float is a 32-bit access: the other half of its word is neither read
** nor written). */
static inline void *ame_load_ptr_tx(ame_tx_t *tx, void *const *addr) {
  return (void *)ame__load_w(tx, (const uintptr_t *)addr);
}
static inline void ame_store_ptr_tx(ame_tx_t *tx, void **addr, void *v) {
  ame_store_word_tx(tx, (uintptr_t *)addr, (uintptr_t)v);
}
static inline uint64_t ame_load_u64_tx(ame_tx_t *tx, const uint64_t *addr) {
  return (uint64_t)ame__load_w(tx, (const uintptr_t *)addr);
}
static inline void ame_store_u64_tx(ame_tx_t *tx, uint64_t *addr, uint64_t v) {
  ame_store_word_tx(tx, (uintptr_t *)addr, (uintptr_t)v);
}
static inline int64_t ame_load_i64_tx(ame_tx_t *tx, const int64_t *addr) {
  return (int64_t)ame__load_w(tx, (const uintptr_t *)addr);
}
static inline void ame_store_i64_tx(ame_tx_t *tx, int64_t *addr, int64_t v) {
  ame_store_word_tx(tx, (uintptr_t *)addr, (uintptr_t)v);
}
static inline int32_t ame_load_i32_tx(ame_tx_t *tx, const int32_t *addr) {
  return (int32_t)ame_load_u32_tx(tx, (const uint32_t *)addr);
}
static inline void ame_store_i32_tx(ame_tx_t *tx, int32_t *addr, int32_t v) {
  ame_store_u32_tx(tx, (uint32_t *)addr, (uint32_t)v);
}
static inline double ame_load_double_tx(ame_tx_t *tx, const double *addr) {
  uintptr_t w = ame__load_w(tx, (const uintptr_t *)(const void *)addr);
  double d;
  memcpy(&d, &w, sizeof d);
  return d;
}
static inline void ame_store_double_tx(ame_tx_t *tx, double *addr, double v) {
  uintptr_t w;
  memcpy(&w, &v, sizeof w);
  ame_store_word_tx(tx, (uintptr_t *)(void *)addr, w);
}
static inline float ame_load_float_tx(ame_tx_t *tx, const float *addr) {
  union { uint32_t w; float f; } u = {
      ame_load_u32_tx(tx, (const uint32_t *)(const void *)addr)};
  return u.f;
}
static inline void ame_store_float_tx(ame_tx_t *tx, float *addr, float v) {
  union { float f; uint32_t w; } u = {v};
  ame_store_u32_tx(tx, (uint32_t *)(void *)addr, u.w);
}
#ifdef __cplusplus
#define AME__STATIC_ASSERT static_assert
#else
#define AME__STATIC_ASSERT _Static_assert
#endif
AME__STATIC_ASSERT(sizeof(uintptr_t) == 8, "ame needs 64-bit words");
AME__STATIC_ASSERT(sizeof(float) == sizeof(uint32_t), "float is 32 bits");
AME__STATIC_ASSERT(sizeof(double) == sizeof(uintptr_t), "double is one word");

/* The same on the calling thread's descriptor. */
#define ame_load_word(a) ame_load_word_tx(ame_self(), (a))
#define ame_store_word(a, v) ame_store_word_tx(ame_self(), (a), (v))
#define ame_load_ptr(a) ame_load_ptr_tx(ame_self(), (a))
#define ame_store_ptr(a, v) ame_store_ptr_tx(ame_self(), (a), (v))
#define ame_load_u64(a) ame_load_u64_tx(ame_self(), (a))
#define ame_store_u64(a, v) ame_store_u64_tx(ame_self(), (a), (v))
#define ame_load_i64(a) ame_load_i64_tx(ame_self(), (a))
#define ame_store_i64(a, v) ame_store_i64_tx(ame_self(), (a), (v))
#define ame_load_u32(a) ame_load_u32_tx(ame_self(), (a))
#define ame_store_u32(a, v) ame_store_u32_tx(ame_self(), (a), (v))
#define ame_load_i32(a) ame_load_i32_tx(ame_self(), (a))
#define ame_store_i32(a, v) ame_store_i32_tx(ame_self(), (a), (v))
#define ame_load_double(a) ame_load_double_tx(ame_self(), (a))
#define ame_store_double(a, v) ame_store_double_tx(ame_self(), (a), (v))
#define ame_load_float(a) ame_load_float_tx(ame_self(), (a))
#define ame_store_float(a, v) ame_store_float_tx(ame_self(), (a), (v))

#ifdef __cplusplus
}
#endif
#endif /* AME_STM_H */
