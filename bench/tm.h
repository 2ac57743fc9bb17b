/*
** bench/tm.h — one vocabulary for transactional code, four implementations.
**
** The benchmark data structures (in bench/intset/ and bench/bank.h) are
** written once against the macros below; the variant is chosen at compile
** time by defining exactly one of
**
**     TM_AME    ame's STM (ame/stm.h): AME_ATOMIC, ame_load_*_tx, ...
**     TM_ITM    GCC's libitm: __transaction_atomic, built with -fgnu-tm
**               (with TM_ITM_AME also defined: the same objects, linked
**               against libame-itm instead of libitm; TM_NAME "ame-itm")
**     TM_TINYSTM  TinySTM (its own API, stm.h and mod_mem.h, statically
**               linked from a TinySTM tree built outside this repository
**               with its default configuration; meson -Dtinystm=DIR)
**     TM_MUTEX  one process-wide pthread mutex around every transaction
**     TM_SEQ    no synchronisation at all (one thread only)
**
** If none is defined, TM_AME is assumed (that is what the test suite uses).
**
** The vocabulary:
**
**     tm_tx_t                  the per-thread transaction context
**     TM_STARTUP()             once in main, before any thread enters
**     TM_SHUTDOWN()            once in main, after every thread left
**     TM_THREAD_ENTER()        register the calling thread, return its
**                              tm_tx_t * (NULL on failure)
**     TM_THREAD_EXIT(tx)       unregister it
**     TM_ATOMIC(tx) { ... }    run the block as one transaction
**     TM_LOAD_PTR(tx, &p)      transactional load of a pointer word
**     TM_STORE_PTR(tx, &p, v)  transactional store of a pointer word
**     TM_LOAD_WORD(tx, &w)     ... of a uintptr_t word
**     TM_STORE_WORD(tx, &w, v)
**     TM_MALLOC(tx, n)         allocate inside a transaction
**     TM_FREE(tx, p, n)        free p (n bytes) when the transaction commits
**     TM_SAFE                  marks a function called inside transactions
**                              (transaction_safe under -fgnu-tm)
**     TM_VOLATILE              qualifies a local that the block assigns and
**                              code after the block reads (volatile under
**                              ame's setjmp; libitm forbids volatile there)
**     TM_NAME                  "ame", "itm", "ame-itm", "tinystm", "mutex"
**                              or "seq"
**
** Rules for code inside TM_ATOMIC, so that it means the same under every
** variant:
**   - Leave the block only by falling off its end: no return, goto, break or
**     continue that leaves it (the mutex variant would keep its lock; ame
**     forbids return and goto).  Calling functions that return is fine.
**   - Under ame the block is re-run from the top after an abort (setjmp/
**     longjmp).  A local declared outside the block and assigned inside it
**     must be assigned on every attempt before it is read, and be declared
**     TM_VOLATILE if it is read after the block (see ame/stm.h).
**   - Every shared word is a uintptr_t or a pointer and is read and written
**     with TM_LOAD_* / TM_STORE_* only.  Memory from TM_MALLOC that is not
**     yet reachable by other threads may be initialised with plain stores
**     (it is published by the transactional store that links it in).
**   - Functions called in the block are static inline and TM_SAFE.
**   - Do not nest TM_ATOMIC blocks: ame and libitm would flatten them, but
**     the mutex variant would deadlock.  Compose with the *_in forms.
*/
#ifndef AME_BENCH_TM_H
#define AME_BENCH_TM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if !defined(TM_AME) && !defined(TM_ITM) && !defined(TM_TINYSTM) && \
    !defined(TM_MUTEX) && !defined(TM_SEQ)
#define TM_AME 1
#endif
#if defined(TM_AME) + defined(TM_ITM) + defined(TM_TINYSTM) + \
        defined(TM_MUTEX) + defined(TM_SEQ) != 1
#error "define exactly one of TM_AME, TM_ITM, TM_TINYSTM, TM_MUTEX, TM_SEQ"
#endif

/* ------------------------------------------------------------------------
** ame's STM.
*/
#if defined(TM_AME)
#include <errno.h>

#include "ame/stm.h"

typedef ame_tx_t tm_tx_t;

#define TM_NAME "ame"
#define TM_SAFE
#define TM_VOLATILE volatile
#define TM_STARTUP() tm__ame_startup()
#define TM_SHUTDOWN() ame_stm_shutdown()
#define TM_THREAD_ENTER() ame_thread_enter()
#define TM_THREAD_EXIT(tx) ((void)(tx), ame_thread_exit())
#define TM_ATOMIC(tx) AME_ATOMIC(tx)
#define TM_LOAD_PTR(tx, a) ame_load_ptr_tx((tx), (void *const *)(a))
#define TM_STORE_PTR(tx, a, v) \
  ame_store_ptr_tx((tx), (void **)(a), (void *)(v))
/* ame_load_ptr_tx goes through the inlined fast path (AME_STM_INLINE). */
#define TM_LOAD_WORD(tx, a) \
  ((uintptr_t)ame_load_ptr_tx((tx), (void *const *)(a)))
#define TM_STORE_WORD(tx, a, v) ame_store_word_tx((tx), (a), (v))
#define TM_MALLOC(tx, n) ame_tx_malloc((tx), (n))
#define TM_FREE(tx, p, n) ame_tx_free((tx), (p), (n))

/* Return 0 if the STM is ready (initialised now or before). */
static inline int tm__ame_startup(void) {
  int rc = ame_stm_init(NULL);
  return rc == -EALREADY ? 0 : rc;
}

/* ------------------------------------------------------------------------
** GCC libitm (-fgnu-tm).  Plain loads and stores inside the atomic block
** are instrumented by the compiler; malloc and free are transaction-safe.
*/
#elif defined(TM_ITM)

typedef struct tm_tx {
  int unused;
} tm_tx_t;

#if defined(TM_ITM_AME)
#include "ame/stm.h" /* the statistics and the conflict report */
#define TM_NAME "ame-itm"
#else
#define TM_NAME "itm"
#endif
#define TM_SAFE __attribute__((transaction_safe))
#define TM_ATOMIC(tx) \
  if ((void)(tx), 0) { \
  } else               \
    __transaction_atomic

/* ------------------------------------------------------------------------
** TinySTM, through its own API with explicit descriptors (stm_load_tx,
** stm_store_tx: calls into libstm.a, as its own benchmarks make them), in
** the configuration its Makefile builds by default (write-back with
** encounter-time locking, the "suicide" contention manager, no epoch GC:
** a block freed in a transaction goes back to malloc when it commits).  A
** transaction that aborts restarts at the sigsetjmp() below, like ame's.
** The attempts each thread started are counted here (TinySTM's default
** build keeps no statistics), so that aborts = attempts - commits.
*/
#elif defined(TM_TINYSTM)
#include <setjmp.h>
#include <stm.h>
#include <mod_mem.h>

typedef struct stm_tx tm_tx_t;

/* Attempts started by this thread, and by threads that left. */
static _Thread_local uint64_t tm__tiny_attempts;
static uint64_t tm__tiny_total __attribute__((unused));

static inline int tm__tiny_startup(void) {
  stm_init();
  mod_mem_init(0);
  return 0;
}

static inline void tm__tiny_thread_exit(tm_tx_t *tx) {
  __atomic_add_fetch(&tm__tiny_total, tm__tiny_attempts, __ATOMIC_RELAXED);
  tm__tiny_attempts = 0;
  stm_exit_thread_tx(tx);
}

#define TM_NAME "tinystm"
#define TM_SAFE
#define TM_VOLATILE volatile
#define TM_STARTUP() tm__tiny_startup()
#define TM_SHUTDOWN() stm_exit()
#define TM_THREAD_ENTER() stm_init_thread()
#define TM_THREAD_EXIT(tx) tm__tiny_thread_exit(tx)
/* Start (an abort jumps back to the sigsetjmp and runs the body again),
** run the body, commit (the for's increment).  Not nested here, so
** stm_start_tx always returns an environment. */
#define TM_ATOMIC(tx)                                                     \
  for (sigjmp_buf *tm__env_ = stm_start_tx((tx), (stm_tx_attr_t)0);      \
       tm__env_ != NULL; tm__env_ = (stm_commit_tx(tx), NULL))            \
    switch (sigsetjmp(*tm__env_, 0))                                      \
    default:                                                              \
      if (tm__tiny_attempts++, 0) {                                       \
      } else
#define TM_LOAD_PTR(tx, a) \
  ((void *)stm_load_tx((tx), (volatile stm_word_t *)(void *)(a)))
#define TM_STORE_PTR(tx, a, v) \
  stm_store_tx((tx), (volatile stm_word_t *)(void *)(a), (stm_word_t)(v))
#define TM_LOAD_WORD(tx, a) \
  ((uintptr_t)stm_load_tx((tx), (volatile stm_word_t *)(a)))
#define TM_STORE_WORD(tx, a, v) \
  stm_store_tx((tx), (volatile stm_word_t *)(a), (stm_word_t)(v))
#define TM_MALLOC(tx, n) stm_malloc_tx((tx), (n))
#define TM_FREE(tx, p, n) stm_free_tx((tx), (p), (n))

/* ------------------------------------------------------------------------
** One global mutex.
*/
#elif defined(TM_MUTEX)
#include <pthread.h>

typedef struct tm_tx {
  int unused;
} tm_tx_t;

static pthread_mutex_t tm__lock __attribute__((unused)) =
    PTHREAD_MUTEX_INITIALIZER;

#define TM_NAME "mutex"
#define TM_SAFE
/* Lock, run the block once, unlock (the for's increment). */
#define TM_ATOMIC(tx)                                                   \
  for (int tm__once_ = ((void)(tx), pthread_mutex_lock(&tm__lock), 1); \
       tm__once_; tm__once_ = (pthread_mutex_unlock(&tm__lock), 0))

/* ------------------------------------------------------------------------
** Sequential: no synchronisation.
*/
#elif defined(TM_SEQ)
typedef struct tm_tx {
  int unused;
} tm_tx_t;

#define TM_NAME "seq"
#define TM_SAFE
#define TM_ATOMIC(tx) \
  if ((void)(tx), 0) { \
  } else
#endif

/* ------------------------------------------------------------------------
** What the three variants without an STM share: plain loads and stores.
*/
#if !defined(TM_AME) && !defined(TM_TINYSTM)
/* The calling thread's (empty) context. */
static inline tm_tx_t *tm__self(void) {
  static _Thread_local tm_tx_t self;
  return &self;
}
#define TM_VOLATILE
#define TM_STARTUP() 0
#define TM_SHUTDOWN() ((void)0)
#define TM_THREAD_ENTER() tm__self()
#define TM_THREAD_EXIT(tx) ((void)(tx))
#define TM_LOAD_PTR(tx, a) ((void)(tx), *(a))
#define TM_STORE_PTR(tx, a, v) ((void)(tx), (void)(*(a) = (v)))
#define TM_LOAD_WORD(tx, a) ((void)(tx), *(a))
#define TM_STORE_WORD(tx, a, v) ((void)(tx), (void)(*(a) = (v)))
#define TM_MALLOC(tx, n) ((void)(tx), malloc(n))
#define TM_FREE(tx, p, n) ((void)(tx), (void)(n), free(p))
#endif

#endif /* AME_BENCH_TM_H */
