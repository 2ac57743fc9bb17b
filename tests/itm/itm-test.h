/*
** tests/itm/itm-test.h — the ABI's declarations (GCC's libitm.h, the parts
** the tests call) and helpers shared by libame-itm's tests.
*/
#ifndef AME_TESTS_ITM_TEST_H
#define AME_TESTS_ITM_TEST_H

#include "task.h"

#include <ame/stm.h>
#include <stdbool.h>

#define ITM_PURE __attribute__((transaction_pure))

enum {
  userAbort = 1,
  userRetry = 2,
  outerAbort = 16,
};
enum { modeSerialIrrevocable = 0 };
enum {
  outsideTransaction = 0,
  inRetryableTransaction,
  inIrrevocableTransaction
};
enum {
  pr_instrumentedCode = 0x0001,
  pr_uninstrumentedCode = 0x0002,
  pr_hasNoAbort = 0x0008,
};
enum {
  a_runInstrumentedCode = 0x01,
  a_runUninstrumentedCode = 0x02,
  a_saveLiveVariables = 0x04,
  a_restoreLiveVariables = 0x08,
  a_abortTransaction = 0x10,
};

typedef float _Complex itm_cf;
typedef double _Complex itm_cd;
typedef long double _Complex itm_ce;
typedef int itm_m64 __attribute__((vector_size(8), may_alias));
typedef float itm_m128 __attribute__((vector_size(16), may_alias));

uint32_t _ITM_beginTransaction(uint32_t, ...) __attribute__((returns_twice));
void _ITM_commitTransaction(void) ITM_PURE;
void _ITM_abortTransaction(int) ITM_PURE __attribute__((noreturn));
void _ITM_changeTransactionMode(int) ITM_PURE;
int _ITM_inTransaction(void) ITM_PURE;
uint64_t _ITM_getTransactionId(void) ITM_PURE;
int _ITM_versionCompatible(int) ITM_PURE;
const char *_ITM_libraryVersion(void) ITM_PURE;
void _ITM_addUserCommitAction(void (*)(void *), uint64_t, void *) ITM_PURE;
void _ITM_addUserUndoAction(void (*)(void *), void *) ITM_PURE;
void *_ITM_malloc(size_t) ITM_PURE;
void *_ITM_calloc(size_t, size_t) ITM_PURE;
void _ITM_free(void *) ITM_PURE;
void _ITM_registerTMCloneTable(void *, size_t);
void _ITM_deregisterTMCloneTable(void *);
void *_ITM_getTMCloneOrIrrevocable(void *) ITM_PURE;
void *_ITM_getTMCloneSafe(void *) ITM_PURE;
void _ITM_LB(const void *, size_t) ITM_PURE;
void _ITM_cxa_throw(void *, void *, void *);
/* C++'s operators' transactional clones (size_t is mangled m). */
void *_ZGTtnwm(size_t) ITM_PURE;
void *_ZGTtnam(size_t) ITM_PURE;
void *_ZGTtnwmRKSt9nothrow_t(size_t, const void *) ITM_PURE;
void _ZGTtdlPv(void *) ITM_PURE;
void _ZGTtdaPv(void *) ITM_PURE;
void _ZGTtdlPvm(void *, size_t) ITM_PURE;

#define ITM_DECL(T, type)                                                   \
  type _ITM_R##T(const type *) ITM_PURE;                                    \
  type _ITM_RaR##T(const type *) ITM_PURE;                                  \
  type _ITM_RaW##T(const type *) ITM_PURE;                                  \
  type _ITM_RfW##T(const type *) ITM_PURE;                                  \
  void _ITM_W##T(type *, type) ITM_PURE;                                    \
  void _ITM_WaR##T(type *, type) ITM_PURE;                                  \
  void _ITM_WaW##T(type *, type) ITM_PURE;                                  \
  void _ITM_L##T(const type *) ITM_PURE;
ITM_DECL(U1, uint8_t)
ITM_DECL(U2, uint16_t)
ITM_DECL(U4, uint32_t)
ITM_DECL(U8, uint64_t)
ITM_DECL(F, float)
ITM_DECL(D, double)
ITM_DECL(E, long double)
ITM_DECL(CF, itm_cf)
ITM_DECL(CD, itm_cd)
ITM_DECL(CE, itm_ce)
ITM_DECL(M64, itm_m64)
ITM_DECL(M128, itm_m128)

#define ITM_COPY_DECL(NAME)                                                 \
  void _ITM_memcpy##NAME(void *, const void *, size_t) ITM_PURE;            \
  void _ITM_memmove##NAME(void *, const void *, size_t) ITM_PURE;
ITM_COPY_DECL(RnWt)
ITM_COPY_DECL(RnWtaR)
ITM_COPY_DECL(RnWtaW)
ITM_COPY_DECL(RtWn)
ITM_COPY_DECL(RtWt)
ITM_COPY_DECL(RtWtaR)
ITM_COPY_DECL(RtWtaW)
ITM_COPY_DECL(RtaRWn)
ITM_COPY_DECL(RtaRWt)
ITM_COPY_DECL(RtaRWtaR)
ITM_COPY_DECL(RtaRWtaW)
ITM_COPY_DECL(RtaWWn)
ITM_COPY_DECL(RtaWWt)
ITM_COPY_DECL(RtaWWtaR)
ITM_COPY_DECL(RtaWWtaW)
void _ITM_memsetW(void *, int, size_t) ITM_PURE;
void _ITM_memsetWaR(void *, int, size_t) ITM_PURE;
void _ITM_memsetWaW(void *, int, size_t) ITM_PURE;

/* Begin an instrumented transaction (returns twice, like setjmp: locals
** changed inside and read after an abort must be volatile). */
#define ITM_BEGIN() _ITM_beginTransaction(pr_instrumentedCode)

/* A start gate and stop flag for groups of threads. */
struct gate {
  atomic_int go, stop;
};
static inline void gate_init(struct gate *g) {
  atomic_store(&g->go, 0);
  atomic_store(&g->stop, 0);
}
static inline void gate_wait(struct gate *g) {
  while (!atomic_load(&g->go)) sched_yield();
}
static inline void gate_open(struct gate *g) { atomic_store(&g->go, 1); }
static inline void gate_stop(struct gate *g) { atomic_store(&g->stop, 1); }
static inline int gate_stopped(struct gate *g) {
  return atomic_load(&g->stop);
}
#define spawn thread_start

/* Run fn (fork) and return what it wrote to stderr, and whether it died
** of SIGABRT: for the refused functions. */
char *run_expect_abort(void (*fn)(void), int *aborted);

#endif /* AME_TESTS_ITM_TEST_H */
