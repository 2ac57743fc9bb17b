/*
** itm/src/itm.h — libame-itm's private declarations: the ABI's types and
** constants (GCC's libitm.h, the Intel TM ABI), the per-thread state, and
** the helpers shared by itm.c and barriers.c.  Internal names start with
** ame_itm__ or itm_.
*/
#ifndef AME_ITM_INTERNAL_H
#define AME_ITM_INTERNAL_H

#include <ame/stm.h>

#include <stddef.h>
#include <stdint.h>

#define ITM_EXPORT __attribute__((visibility("default")))
#define ITM_LIKELY(x) __builtin_expect(!!(x), 1)
#define ITM_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* The ABI's enumerations (values fixed by the ABI). */
typedef enum {
  userAbort = 1,
  userRetry = 2,
  TMConflict = 4,
  exceptionBlockAbort = 8,
  outerAbort = 16
} _ITM_abortReason;

typedef enum { modeSerialIrrevocable } _ITM_transactionState;

typedef enum {
  outsideTransaction = 0,
  inRetryableTransaction,
  inIrrevocableTransaction
} _ITM_howExecuting;

enum {
  pr_instrumentedCode = 0x0001,
  pr_uninstrumentedCode = 0x0002,
  pr_hasNoAbort = 0x0008,
  pr_doesGoIrrevocable = 0x0040,
};

enum {
  a_runInstrumentedCode = 0x01,
  a_runUninstrumentedCode = 0x02,
  a_saveLiveVariables = 0x04,
  a_restoreLiveVariables = 0x08,
  a_abortTransaction = 0x10,
};

typedef struct {
  uint32_t reserved_1;
  uint32_t flags;
  uint32_t reserved_2;
  uint32_t reserved_3;
  const char *psource;
} _ITM_srcLocation;

typedef void (*_ITM_userUndoFunction)(void *);
typedef void (*_ITM_userCommitFunction)(void *);
typedef uint64_t _ITM_transactionId_t;
#define _ITM_noTransactionId 1
#define ITM_VERSION_NO 90

/* The register checkpoint _ITM_beginTransaction takes (begin_x86_64.S
** writes and reads this layout). */
struct ame_itm_checkpoint {
  uintptr_t rsp, rbx, rbp, r12, r13, r14, r15, rip;
};

/* A user undo action (_ITM_addUserUndoAction). */
struct itm_action {
  _ITM_userUndoFunction fn;
  void *arg;
};

/* A calling thread's state. */
struct itm_thread {
  ame_tx_t *tx;                  /* its ame descriptor (NULL: not yet) */
  ame_tx_t *ld;                  /* the load barriers' descriptor: tx, or
                                    ame_itm__nobody while tx is NULL */
  struct ame_itm_checkpoint cp;  /* the outermost transaction's restart */
  uint32_t props;                /* ... and its code properties */
  int owner;                     /* the outermost transaction is the ABI's
                                    (not an AME_ATOMIC block it joined) */
  int serial;                    /* holds serial mode */
  int want_serial;               /* restart in serial mode */
  int user_irrevocable;          /* _ITM_changeTransactionMode was called */
  _ITM_transactionId_t id;       /* 0 until _ITM_getTransactionId asks */
  const char *site;              /* the outermost transaction's */
  uintptr_t tsan_depth;          /* TSan: shadow stack depth at begin */
  uintptr_t stack_lo, stack_len; /* the thread's stack */
  uintptr_t keep_sp;             /* stack below this is the transaction's
                                    own (dead after an abort) */
  uintptr_t cap_lo, cap_len;     /* the block the attempt allocated last */
  int acts;                      /* the attempt registered the library's
                                    own commit and abort handlers (itm.c,
                                    "User actions") */
  struct itm_action *undo;       /* the attempt's undo actions, oldest
                                    first (run newest first) */
  size_t undo_n, undo_cap;
};
extern __thread struct itm_thread ame_itm__self
    __attribute__((tls_model("initial-exec")));

/* The load barriers' descriptor of a thread without one: its only orec
** is locked, so that every load takes the barrier's slow path, which
** reports the misuse (a load barrier outside any transaction) without a
** test of its own on the fast path. */
extern struct ame__txhot ame_itm__nobody;

/* Call sites (itm.c): the name for the return address rip, made at its
** first lookup and kept for the life of the process (the same pointer for
** the same rip, from any thread), and the slot of the table its lookup
** starts at (the tests fill a probe run). */
const char *ame_itm__site_name(uintptr_t rip);
unsigned ame_itm__site_slot(uintptr_t rip);

/* Print "ame-itm: <what>" and abort the process (the ABI call named in
** what is not supported, or is misused). */
void ame_itm__fatal(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

/* The calling thread's descriptor, for a barrier (which the compiler
** emits only inside transactions): fatal, naming fn, on a thread that
** never began one.  A barrier on a registered thread outside a
** transaction is caught by ame's own asserts. */
static inline ame_tx_t *itm_tx(const char *fn) {
  ame_tx_t *tx = ame_itm__self.tx;
  if (ITM_UNLIKELY(tx == NULL))
    ame_itm__fatal("%s called outside a transaction", fn);
  return tx;
}

/* The thread's own stack: the store barriers write it directly (the
** compiler may read with plain loads what it wrote through a barrier).
** What lies above the transaction's frames is live after an abort and may
** be reached by other threads through a pointer: its words are claimed
** and undo-logged first (ame_itm__stack_log).  Bytes below keep_sp belong
** to frames of the transaction itself, dead after an abort and nobody
** else's, so are neither. */
static inline int itm_on_stack(const struct itm_thread *t, const void *p) {
  return (uintptr_t)p - t->stack_lo < t->stack_len;
}
void ame_itm__stack_log(struct itm_thread *t, void *p, size_t n);

/* Memory the current attempt allocated (the last block) is reachable by no
** other transaction until the attempt commits, and is freed if it aborts:
** stores to it need neither locks nor logs.  (Loads of it go through the
** STM, which reads memory for words it has not buffered.) */
static inline int itm_captured(const struct itm_thread *t, const void *p,
                               size_t n) {
  uintptr_t off = (uintptr_t)p - t->cap_lo;
  return off < t->cap_len && off + n <= t->cap_len;
}

/* Transactional copies of n bytes at any alignment (barriers.c): src read
** through the STM into dst, or src written through the STM at dst. */
void ame_itm__load_bytes(ame_tx_t *tx, void *dst, const void *src, size_t n);
void ame_itm__store_bytes(ame_tx_t *tx, void *dst, const void *src,
                          size_t n);

#endif /* AME_ITM_INTERNAL_H */
