/*
** itm/src/itm.c — GCC's transactional memory ABI (libitm's _ITM_*
** entry points, the Intel TM ABI) on ame's STM: transactions, their
** modes, user actions, allocation (C++'s operator new and delete too), the
** clone tables and the version and query functions.  The loads, stores,
** logging and memory functions are in barriers.c; _ITM_beginTransaction
** itself is begin_x86_64.S.
**
** An ABI transaction is an ame transaction begun with ame__tx_enter(),
** whose restart point is the register checkpoint _ITM_beginTransaction
** took instead of a jmp_buf: when ame aborts an attempt it calls
** itm_resume(), which begins the next attempt and returns from
** _ITM_beginTransaction once more.  Nesting is flat (ame's).
**
** Serial mode.  Code that the compiler did not instrument (a transaction
** that always goes irrevocable, or one that calls an unsafe function after
** _ITM_changeTransactionMode) reads and writes memory directly, so it must
** run with no other ABI transaction in flight: it takes the serial lock,
** which makes later ABI transactions wait at their start and waits for the
** running ones to end (ame_quiesce), and runs as an irrevocable ame
** transaction.  A transaction that asks for it midway is rolled back and
** restarted in serial mode.  Transactions run through ame's own API do not
** take part (see docs/stm.md).
*/
#include "itm.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uintptr_t nobody_orec = 1; /* locked */
struct ame__txhot ame_itm__nobody = {.orecs = &nobody_orec};

__thread struct itm_thread ame_itm__self
    __attribute__((tls_model("initial-exec"))) = {
        .ld = (ame_tx_t *)&ame_itm__nobody};

/* begin_x86_64.S. */
uint32_t ame_itm__begin(uint32_t props, const struct ame_itm_checkpoint *cp)
    __attribute__((visibility("hidden")));
void ame_itm__restore(const struct ame_itm_checkpoint *cp, uint32_t actions)
    __attribute__((noreturn, visibility("hidden")));

#if defined(__SANITIZE_ADDRESS__)
void __asan_handle_no_return(void);
#endif
#if defined(__SANITIZE_THREAD__)
/* The jump back to the checkpoint skips the exits of the functions it
** leaves, which TSan counts on its shadow stack: pop them. */
uintptr_t __tsan_testonly_shadow_stack_current_size(void);
void __tsan_func_exit(void);
#endif

void ame_itm__fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("ame-itm: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ------------------------------------------------------------------------
** Threads: registered with ame on their first transaction, unregistered
** when they exit.
*/

static pthread_key_t thread_key;
static pthread_once_t thread_once = PTHREAD_ONCE_INIT;

static void thread_gone(void *arg) {
  (void)arg;
  if (ame_itm__self.tx) {
    ame_itm__self.tx = NULL;
    ame_itm__self.ld = (ame_tx_t *)&ame_itm__nobody;
    ame_thread_exit();
  }
  free(ame_itm__self.undo);
  ame_itm__self.undo = NULL;
  ame_itm__self.undo_n = ame_itm__self.undo_cap = 0;
}

static void make_key(void) {
  if (pthread_key_create(&thread_key, thread_gone) != 0)
    ame_itm__fatal("pthread_key_create failed");
}

static ame_tx_t *thread_setup(struct itm_thread *t) {
  ame_tx_t *tx = ame_thread_enter();
  if (tx == NULL)
    ame_itm__fatal("_ITM_beginTransaction: ame_thread_enter failed (too "
                   "many threads, or out of memory)");
  pthread_once(&thread_once, make_key);
  pthread_setspecific(thread_key, t);
  pthread_attr_t attr;
  void *lo;
  size_t len;
  if (pthread_getattr_np(pthread_self(), &attr) != 0 ||
      pthread_attr_getstack(&attr, &lo, &len) != 0)
    ame_itm__fatal("_ITM_beginTransaction: cannot find the thread's stack");
  pthread_attr_destroy(&attr);
  t->stack_lo = (uintptr_t)lo;
  t->stack_len = len;
  t->tx = tx;
  t->ld = tx;
  return tx;
}

void ame_itm__stack_log(struct itm_thread *t, void *p, size_t n) {
  uintptr_t a = (uintptr_t)p, end = a + n;
  if (end <= t->keep_sp) return;
  if (a < t->keep_sp) a = t->keep_sp;
  /* Above the transaction's own frames the object may be another
  ** thread's to reach through a pointer (a counter on main's stack, a
  ** non-main thread's __thread data): claim its words first, so that
  ** other transactions conflict with the write, the bytes saved are the
  ** last committed ones, and an abort restores them before it lets the
  ** orecs go. */
  for (uintptr_t w = a & ~(uintptr_t)7; w < end; w += 8)
    ame__tx_claim(t->tx, (uintptr_t *)w);
  if (ame_tx_save(t->tx, (void *)a, end - a) != 0)
    ame_itm__fatal("out of memory logging a stack write");
}

/* ------------------------------------------------------------------------
** Call sites: "function+0xoff [object+0xoff]" for a return address, kept
** for the life of the process (conflict reports point at them).  Each
** transaction names its site, so the names are found in a table that the
** threads read without a lock: open addressing on the return address,
** SITE_PROBES slots from its hash, entries added under sites_lock and
** never removed.  An entry's name is written before its address (release),
** so a reader that sees the address (acquire) sees the name.  A program
** with more sites than fit keeps the rest in a list searched under the
** lock.
*/

#define SITE_SLOTS 4096 /* a power of two */
#define SITE_PROBES 16
_Static_assert(SITE_PROBES < 40, "tests/itm/test_abi.c (itm_site_table) "
               "overflows a probe run with 40 sites");
static struct {
  uintptr_t rip; /* atomic; 0: free */
  const char *name;
} site_tab[SITE_SLOTS];

struct site {
  uintptr_t rip;
  struct site *next;
  char name[];
};
static struct site *site_overflow;
static pthread_mutex_t sites_lock = PTHREAD_MUTEX_INITIALIZER;

/* The slot of rip's first probe. */
unsigned ame_itm__site_slot(uintptr_t rip) {
  return (unsigned)((rip * 0x9e3779b97f4a7c15ull) >> 52) & (SITE_SLOTS - 1);
}

/* "function+0xoff [object+0xoff]" for rip, into buf. */
static void site_name(uintptr_t rip, char *buf, size_t size) {
  Dl_info info;
  if (dladdr((void *)rip, &info) && info.dli_fname) {
    const char *obj = strrchr(info.dli_fname, '/');
    obj = obj ? obj + 1 : info.dli_fname;
    uintptr_t off = rip - (uintptr_t)info.dli_fbase;
    if (info.dli_sname)
      snprintf(buf, size, "%s+0x%lx [%s+0x%lx]", info.dli_sname,
               (unsigned long)(rip - (uintptr_t)info.dli_saddr), obj,
               (unsigned long)off);
    else
      snprintf(buf, size, "[%s+0x%lx]", obj, (unsigned long)off);
  } else {
    snprintf(buf, size, "[0x%lx]", (unsigned long)rip);
  }
}

/* The name for rip when site_find() did not find it: looked up again, and
** made and entered, under the lock. */
static __attribute__((noinline)) const char *site_lookup(uintptr_t rip) {
  pthread_mutex_lock(&sites_lock);
  const char *name = NULL;
  unsigned i = ame_itm__site_slot(rip), p;
  for (p = 0; p < SITE_PROBES; p++, i = (i + 1) & (SITE_SLOTS - 1)) {
    uintptr_t r = __atomic_load_n(&site_tab[i].rip, __ATOMIC_RELAXED);
    if (r == rip) name = site_tab[i].name;
    if (r == rip || r == 0) break;
  }
  struct site *s = NULL;
  if (name == NULL)
    for (s = site_overflow; s && s->rip != rip; s = s->next) continue;
  if (name == NULL && s == NULL) {
    char buf[256];
    site_name(rip, buf, sizeof buf);
    size_t n = strlen(buf) + 1;
    s = malloc(sizeof *s + n);
    if (s == NULL) {
      pthread_mutex_unlock(&sites_lock);
      return "ame-itm (no memory for the site name)";
    }
    s->rip = rip;
    memcpy(s->name, buf, n);
    if (p < SITE_PROBES) { /* slot i is free */
      s->next = NULL;
      site_tab[i].name = s->name;
      __atomic_store_n(&site_tab[i].rip, rip, __ATOMIC_RELEASE);
    } else {
      s->next = site_overflow;
      site_overflow = s;
    }
  }
  if (name == NULL) name = s->name;
  pthread_mutex_unlock(&sites_lock);
  return name;
}

/* The name for rip: the table's entry when there (no lock, no stack frame
** on that path). */
static inline const char *site_find(uintptr_t rip) {
  unsigned i = ame_itm__site_slot(rip);
  for (unsigned p = 0; p < SITE_PROBES; p++, i = (i + 1) & (SITE_SLOTS - 1)) {
    uintptr_t r = __atomic_load_n(&site_tab[i].rip, __ATOMIC_ACQUIRE);
    if (ITM_LIKELY(r == rip)) return site_tab[i].name;
    if (r == 0) break;
  }
  return site_lookup(rip);
}

const char *ame_itm__site_name(uintptr_t rip) { return site_find(rip); }

/* Name the transaction's call site (t->site) for the return address rip. */
static inline void site_of(struct itm_thread *t, uintptr_t rip) {
  t->site = site_find(rip);
}

/* ------------------------------------------------------------------------
** Serial mode (see the top of the file).
*/

static int serial_flag; /* atomic: a thread holds or wants serial mode */
static pthread_mutex_t serial_lock = PTHREAD_MUTEX_INITIALIZER;

static void serial_take(struct itm_thread *t) {
  pthread_mutex_lock(&serial_lock);
  __atomic_store_n(&serial_flag, 1, __ATOMIC_SEQ_CST);
  ame_quiesce(t->tx); /* every transaction running now ends */
  t->serial = 1;
}

static void serial_release(struct itm_thread *t) {
  t->serial = 0;
  t->want_serial = 0;
  __atomic_store_n(&serial_flag, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&serial_lock);
}

/* Wait while another thread holds serial mode (outside a transaction). */
static void serial_wait(void) {
  pthread_mutex_lock(&serial_lock);
  pthread_mutex_unlock(&serial_lock);
}

/* ------------------------------------------------------------------------
** Begin, restart, commit.
*/

static void itm_resume(ame_tx_t *tx) __attribute__((noreturn));

/* Begin an attempt of the outermost transaction; return the actions for
** its code.  restore: a restart (live variables come back).  Inside a
** transaction of ame's own API (an AME_ATOMIC block), join it instead. */
static uint32_t start(struct itm_thread *t, ame_tx_t *tx, int restore) {
  uint32_t props = t->props;
  t->cap_len = 0;
  /* Uninstrumented code only, or a restart asked for serial mode. */
  if (!(props & pr_instrumentedCode) || t->want_serial) {
    if (!t->serial) serial_take(t);
    ame__tx_enter(tx, itm_resume, t->site);
    ame_tx_irrevocable(tx);
    t->owner = 1;
    uint32_t a = restore ? a_restoreLiveVariables : a_saveLiveVariables;
    return a | ((props & pr_uninstrumentedCode) ? a_runUninstrumentedCode
                                                : a_runInstrumentedCode);
  }
  for (;;) {
    if (ITM_UNLIKELY(ame__tx_enter(tx, itm_resume, t->site) > 1))
      return a_runInstrumentedCode; /* joined ame's own: not the owner */
    /* ame published the start behind a fence (a compiler barrier where
    ** ame_quiesce()'s membarrier makes it a full one: stm.c); serial_take()
    ** sets the flag before it waits for running transactions (Dekker). */
    if (ITM_LIKELY(!__atomic_load_n(&serial_flag, __ATOMIC_SEQ_CST))) break;
    ame_tx_cancel(tx);
    serial_wait();
  }
  t->owner = 1;
  return a_runInstrumentedCode |
         (restore ? a_restoreLiveVariables : a_saveLiveVariables);
}

/* Return to the checkpoint with actions a (never returns). */
static void jump_back(struct itm_thread *t, uint32_t a)
    __attribute__((noreturn));
static void jump_back(struct itm_thread *t, uint32_t a) {
#if defined(__SANITIZE_THREAD__)
  for (uintptr_t n = __tsan_testonly_shadow_stack_current_size();
       n > t->tsan_depth; n--)
    __tsan_func_exit();
#endif
#if defined(__SANITIZE_ADDRESS__)
  __asan_handle_no_return();
#endif
  ame_itm__restore(&t->cp, a);
}

/* ame's restart point for ABI transactions: the attempt was rolled back
** (and its abort handlers run); begin the next one and go back to the
** checkpoint. */
static void itm_resume(ame_tx_t *tx) {
  struct itm_thread *t = &ame_itm__self;
  t->id = 0;
  t->user_irrevocable = 0;
  jump_back(t, start(t, tx, 1));
}

/* The outermost transaction's state, from its checkpoint. */
static inline void outer_setup(struct itm_thread *t, uint32_t props,
                               const struct ame_itm_checkpoint *cp,
                               uintptr_t tsan_depth) {
  t->cp = *cp;
  t->keep_sp = cp->rsp;
  t->props = props;
  t->id = 0;
  t->user_irrevocable = 0;
  t->want_serial = 0;
#if defined(__SANITIZE_THREAD__)
  t->tsan_depth = tsan_depth;
#else
  (void)tsan_depth;
#endif
  site_of(t, cp->rip);
}

/* ame_itm__begin's cases other than the common one: the thread's first
** transaction, nesting, uninstrumented code. */
static __attribute__((noinline)) uint32_t begin_other(
    struct itm_thread *t, uint32_t props,
    const struct ame_itm_checkpoint *cp, uintptr_t tsan_depth) {
  ame_tx_t *tx = t->tx;
  if (tx == NULL) tx = thread_setup(t);
  if (t->owner) {
    /* Nested in our own transaction: joins it (flat).  Code that is only
    ** uninstrumented needs serial mode, which the outermost one must have
    ** from its start. */
    if (!(props & pr_instrumentedCode) && !t->serial) {
      if (ame_tx_is_irrevocable(tx) && t->user_irrevocable)
        ame_itm__fatal("_ITM_beginTransaction: an irrevocable transaction "
                       "cannot restart in serial mode");
      t->want_serial = 1;
      ame_tx_cancel(tx);
      jump_back(t, start(t, tx, 1));
    }
    ame__tx_enter(tx, NULL, NULL);
    return (t->serial && (props & pr_uninstrumentedCode))
               ? a_runUninstrumentedCode
               : a_runInstrumentedCode;
  }
  if (ITM_UNLIKELY(!(props & pr_instrumentedCode)) && ame_tx_depth(tx) > 0)
    ame_itm__fatal("_ITM_beginTransaction: an uninstrumented nested "
                   "transaction inside a transaction begun by ame's own "
                   "API cannot go serial");
  /* The outermost transaction, or one nested in an AME_ATOMIC block
  ** (start() joins that; the checkpoint is then unused, and keep_sp
  ** still marks the frames that die if the block restarts). */
  outer_setup(t, props, cp, tsan_depth);
  return start(t, tx, 0);
}

uint32_t ame_itm__begin(uint32_t props,
                        const struct ame_itm_checkpoint *cp) {
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = t->tx;
  uintptr_t tsan_depth = 0;
#if defined(__SANITIZE_THREAD__)
  /* This function's own entry is on the shadow stack: not the caller's. */
  tsan_depth = __tsan_testonly_shadow_stack_current_size() - 1;
#endif
  if (ITM_UNLIKELY(tx == NULL || t->owner || !(props & pr_instrumentedCode)))
    return begin_other(t, props, cp, tsan_depth);
  /* The common case, start()'s first pass inline: the outermost
  ** transaction of instrumented code. */
  outer_setup(t, props, cp, tsan_depth);
  t->cap_len = 0;
  unsigned depth = ame__tx_enter(tx, itm_resume, t->site);
  if (ITM_UNLIKELY(depth > 1))
    return a_runInstrumentedCode; /* joined ame's own: not the owner */
  /* As in start(): ame published the start behind a fence that
  ** serial_take()'s ame_quiesce() makes a full one. */
  if (ITM_UNLIKELY(__atomic_load_n(&serial_flag, __ATOMIC_SEQ_CST))) {
    ame_tx_cancel(tx);
    serial_wait();
    return start(t, tx, 0);
  }
  t->owner = 1;
  return a_runInstrumentedCode | a_saveLiveVariables;
}

/* Leave one level; after the outermost commit, give serial mode back. */
ITM_EXPORT void _ITM_commitTransaction(void) {
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx("_ITM_commitTransaction");
  if (ame__tx_leave(tx) == 0) {
    t->owner = 0;
    if (t->serial) serial_release(t);
  }
}

ITM_EXPORT void _ITM_commitTransactionEH(void *exc_ptr) {
  (void)exc_ptr;
  ame_itm__fatal("_ITM_commitTransactionEH: C++ exceptions leaving a "
                 "transaction are not supported");
}

ITM_EXPORT void _ITM_abortTransaction(_ITM_abortReason reason) {
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx("_ITM_abortTransaction");
  if (ame_tx_depth(tx) == 0)
    ame_itm__fatal("_ITM_abortTransaction called outside a transaction");
  if (t->user_irrevocable || t->serial)
    ame_itm__fatal("_ITM_abortTransaction: an irrevocable transaction "
                   "cannot abort");
  if (reason & userRetry) {
    /* Roll back and run it again (from the outermost checkpoint). */
    if (!t->owner) ame_tx_abort(tx);
    ame_tx_cancel(tx);
    jump_back(t, start(t, tx, 1));
  }
  if (!(reason & userAbort))
    ame_itm__fatal("_ITM_abortTransaction: reason %d is not supported",
                   (int)reason);
  if (!t->owner)
    ame_itm__fatal("_ITM_abortTransaction: cannot cancel a transaction "
                   "begun by ame's own API");
  if (ame_tx_depth(tx) > 1 && !(reason & outerAbort))
    ame_itm__fatal("_ITM_abortTransaction: __transaction_cancel of a "
                   "nested transaction (closed nesting) is not supported; "
                   "nesting is flat: use __transaction_cancel [[outer]]");
  /* Roll back everything (flat nesting: the outermost transaction), run
  ** the undo actions, and leave at the outermost checkpoint. */
  ame_tx_cancel(tx);
  t->owner = 0;
  jump_back(t, a_abortTransaction | a_restoreLiveVariables);
}

/* Go serial and irrevocable for the code that follows, which may touch
** memory directly (fn: the ABI call that asked). */
static void go_serial(const char *fn) {
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx(fn);
  if (t->serial) { /* already serial and irrevocable */
    t->user_irrevocable = 1;
    return;
  }
  if (!t->owner) {
    if (ame_tx_depth(tx) == 0)
      ame_itm__fatal("%s called outside a transaction", fn);
    /* Joined to an AME_ATOMIC block, whose writes are buffered: the
    ** uninstrumented code would read memory without them, and the block
    ** cannot be restarted serial from here. */
    ame_itm__fatal("%s: cannot go serial inside a transaction begun by "
                   "ame's own API (AME_ATOMIC): uninstrumented code would "
                   "not see the transaction's writes", fn);
  }
  /* The code that follows may touch memory directly: run the whole
  ** transaction again, serial and irrevocable from its start. */
  t->want_serial = 1;
  ame_tx_cancel(tx);
  t->id = 0;
  jump_back(t, start(t, tx, 1));
}

ITM_EXPORT void _ITM_changeTransactionMode(_ITM_transactionState mode) {
  if (mode != modeSerialIrrevocable)
    ame_itm__fatal("_ITM_changeTransactionMode: mode %d is not supported",
                   (int)mode);
  go_serial("_ITM_changeTransactionMode");
}

/* ------------------------------------------------------------------------
** User actions.  ame runs commit and abort handlers oldest first, once
** the attempt is over, with the thread between transactions.  The ABI
** (libitm) wants more: undo actions run newest first, a serial
** transaction gives serial mode back before its commit actions run (one
** may wait for a thread that starts a transaction), and a transaction
** begun inside an action is an outermost one of its own.  So an attempt's
** first action registers two handlers of the library's own, ahead of the
** user's: on commit, actions_commit() runs first and ends the ABI
** transaction; on abort, actions_abort() runs the undo actions, kept
** here, newest first.  One of the two runs at the end of every attempt,
** which is what resets t->acts.
*/

static void actions_commit(void *arg) {
  struct itm_thread *t = arg;
  t->acts = 0;
  t->undo_n = 0;
  t->owner = 0;
  if (t->serial) serial_release(t);
}

/* The aborted attempt restarts, or leaves, from its checkpoint after the
** undo actions: a transaction begun in one overwrites the thread's
** transaction state, which is saved around them. */
static void actions_abort(void *arg) {
  struct itm_thread *t = arg;
  struct ame_itm_checkpoint cp = t->cp;
  uint32_t props = t->props;
  int owner = t->owner, want_serial = t->want_serial;
  int user_irrevocable = t->user_irrevocable;
  _ITM_transactionId_t id = t->id;
  const char *site = t->site;
  uintptr_t tsan_depth = t->tsan_depth, keep_sp = t->keep_sp;
  uintptr_t cap_lo = t->cap_lo, cap_len = t->cap_len;
  /* Detach the list, so that the actions' transactions have their own. */
  struct itm_action *undo = t->undo;
  size_t n = t->undo_n, cap = t->undo_cap;
  t->undo = NULL;
  t->undo_n = t->undo_cap = 0;
  t->acts = 0;
  t->owner = 0;
  while (n > 0) {
    n--;
    undo[n].fn(undo[n].arg);
  }
  t->cp = cp;
  t->props = props;
  t->owner = owner;
  t->want_serial = want_serial;
  t->user_irrevocable = user_irrevocable;
  t->id = id;
  t->site = site;
  t->tsan_depth = tsan_depth;
  t->keep_sp = keep_sp;
  t->cap_lo = cap_lo;
  t->cap_len = cap_len;
  t->acts = 0;
  if (t->undo == NULL) {
    t->undo = undo;
    t->undo_cap = cap;
  } else {
    free(undo);
  }
}

/* Before the attempt's first user action (fn: the ABI call). */
static void actions_arm(struct itm_thread *t, ame_tx_t *tx, const char *fn) {
  if (ame_tx_depth(tx) == 0)
    ame_itm__fatal("%s called outside a transaction", fn);
  if (t->acts) return;
  if (ame_tx_on_commit(tx, actions_commit, t) != 0 ||
      ame_tx_on_abort(tx, actions_abort, t) != 0)
    ame_itm__fatal("%s: out of memory", fn);
  t->acts = 1;
}

/* Run fn(arg) if the attempt commits (what: the ABI call, for messages). */
static void commit_push(struct itm_thread *t, ame_tx_t *tx,
                        _ITM_userCommitFunction fn, void *arg,
                        const char *what) {
  actions_arm(t, tx, what);
  if (ame_tx_on_commit(tx, fn, arg) != 0)
    ame_itm__fatal("%s: out of memory", what);
}

ITM_EXPORT void _ITM_addUserCommitAction(_ITM_userCommitFunction fn,
                                         _ITM_transactionId_t resuming,
                                         void *arg) {
  (void)resuming;
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx("_ITM_addUserCommitAction");
  commit_push(t, tx, fn, arg, "_ITM_addUserCommitAction");
}

/* Run fn(arg) if the attempt aborts (what: the ABI call, for messages). */
static void undo_push(struct itm_thread *t, ame_tx_t *tx,
                      _ITM_userUndoFunction fn, void *arg, const char *what) {
  actions_arm(t, tx, what);
  if (t->undo_n == t->undo_cap) {
    size_t cap = t->undo_cap ? 2 * t->undo_cap : 8;
    struct itm_action *a = realloc(t->undo, cap * sizeof *a);
    if (a == NULL) ame_itm__fatal("%s: out of memory", what);
    t->undo = a;
    t->undo_cap = cap;
  }
  t->undo[t->undo_n++] = (struct itm_action){fn, arg};
}

ITM_EXPORT void _ITM_addUserUndoAction(_ITM_userUndoFunction fn, void *arg) {
  struct itm_thread *t = &ame_itm__self;
  ame_tx_t *tx = itm_tx("_ITM_addUserUndoAction");
  undo_push(t, tx, fn, arg, "_ITM_addUserUndoAction");
}

/* ------------------------------------------------------------------------
** Queries and versions.
*/

ITM_EXPORT _ITM_howExecuting _ITM_inTransaction(void) {
  ame_tx_t *tx = ame_itm__self.tx;
  if (tx == NULL || ame_tx_depth(tx) == 0) return outsideTransaction;
  return ame_tx_is_irrevocable(tx) ? inIrrevocableTransaction
                                   : inRetryableTransaction;
}

ITM_EXPORT _ITM_transactionId_t _ITM_getTransactionId(void) {
  static _ITM_transactionId_t next = _ITM_noTransactionId + 1;
  struct itm_thread *t = &ame_itm__self;
  if (t->tx == NULL || ame_tx_depth(t->tx) == 0) return _ITM_noTransactionId;
  if (t->id == 0) t->id = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
  return t->id;
}

ITM_EXPORT int _ITM_versionCompatible(int version) {
  return version == ITM_VERSION_NO;
}

ITM_EXPORT const char *_ITM_libraryVersion(void) {
  return "ame-itm " AME_ITM_VERSION " (GCC TM ABI 0.90)";
}

ITM_EXPORT void _ITM_error(const _ITM_srcLocation *loc, int code) {
  ame_itm__fatal("_ITM_error: error %d at %s", code,
                 loc && loc->psource ? loc->psource : "(unknown)");
}

/* ------------------------------------------------------------------------
** Allocation: ame's transactional malloc and free.
*/

/* Remember the block as the attempt's latest (itm_captured()). */
static void *captured(struct itm_thread *t, void *p, size_t size) {
  if (p) {
    t->cap_lo = (uintptr_t)p;
    t->cap_len = size;
  }
  return p;
}

/* Outside any transaction (the thread's, or one of ame's own API). */
static int outside(const struct itm_thread *t) {
  return t->tx == NULL || (!t->owner && ame_tx_depth(t->tx) == 0);
}

ITM_EXPORT void *_ITM_malloc(size_t size) {
  struct itm_thread *t = &ame_itm__self;
  if (outside(t)) return malloc(size);
  return captured(t, ame_tx_malloc(t->tx, size), size);
}

ITM_EXPORT void *_ITM_calloc(size_t n, size_t size) {
  struct itm_thread *t = &ame_itm__self;
  if (outside(t)) return calloc(n, size);
  void *p = ame_tx_calloc(t->tx, n, size);
  return p ? captured(t, p, n * size) : NULL;
}

/* Free ptr (from malloc) at the commit, once no transaction can reach it. */
static void tx_free(struct itm_thread *t, void *ptr) {
  if ((uintptr_t)ptr == t->cap_lo) t->cap_len = 0;
  ame_tx_free(t->tx, ptr, 0);
}

ITM_EXPORT void _ITM_free(void *ptr) {
  struct itm_thread *t = &ame_itm__self;
  if (ptr == NULL) return;
  if (outside(t)) {
    free(ptr);
    return;
  }
  tx_free(t, ptr);
}

/* ------------------------------------------------------------------------
** C++'s operator new and delete in transactions: the transactional clones
** that g++ -fgnu-tm calls (_ZGTt + the operator's mangled name), as libitm
** exports them.  A clone of new calls the program's own operator new (any
** replacement of it included) and deletes the block again if the attempt
** aborts.  A clone of delete takes effect only if the attempt commits, and
** only once no transaction that may still hold the pointer is running:
** with libstdc++'s own operators (whose delete is free()) through ame's
** deferred frees, as _ITM_free; with a program's replacement, by a commit
** handler that waits for the running transactions (ame_quiesce) and then
** calls it.  The operators are weak references: a C program that never
** calls a clone needs no libstdc++.  (size_t is unsigned long, mangled m,
** on x86-64, the only target of this library.)
*/

typedef struct nothrow_t nothrow_t; /* std::nothrow_t, only by reference */
extern void *_Znwm(size_t) __attribute__((weak));
extern void *_Znam(size_t) __attribute__((weak));
extern void *_ZnwmRKSt9nothrow_t(size_t, const nothrow_t *)
    __attribute__((weak));
extern void *_ZnamRKSt9nothrow_t(size_t, const nothrow_t *)
    __attribute__((weak));
extern void _ZdlPv(void *) __attribute__((weak));
extern void _ZdaPv(void *) __attribute__((weak));
extern void _ZdlPvm(void *, size_t) __attribute__((weak));
extern void _ZdlPvRKSt9nothrow_t(void *, const nothrow_t *)
    __attribute__((weak));
extern void _ZdaPvRKSt9nothrow_t(void *, const nothrow_t *)
    __attribute__((weak));
extern void _ZdlPvmRKSt9nothrow_t(void *, size_t, const nothrow_t *)
    __attribute__((weak));

/* A clone is called only by C++ code, which brings libstdc++ (or its own
** operators): fatal, naming the clone, if the operator is missing. */
#define CXX_NEED(op, what)                                                 \
  do {                                                                     \
    if (op == NULL)                                                        \
      ame_itm__fatal("%s: the program has no " #op " (no libstdc++)",     \
                     what);                                                \
  } while (0)

/* Whether every operator the clones call is libstdc++'s own, whose new is
** malloc() and delete free() (0 or 1 once known; -1 before). */
static int cxx_std_ops = -1;

static int in_libstdcxx(uintptr_t fn) {
  Dl_info info;
  return fn == 0 || (dladdr((void *)fn, &info) && info.dli_fname &&
                     strstr(info.dli_fname, "/libstdc++.so"));
}

static int cxx_ops_are_std(void) {
  int std = __atomic_load_n(&cxx_std_ops, __ATOMIC_RELAXED);
  if (std < 0) {
    uintptr_t ops[] = {
        (uintptr_t)_Znwm,   (uintptr_t)_Znam,
        (uintptr_t)_ZnwmRKSt9nothrow_t, (uintptr_t)_ZnamRKSt9nothrow_t,
        (uintptr_t)_ZdlPv,  (uintptr_t)_ZdaPv,
        (uintptr_t)_ZdlPvm, (uintptr_t)_ZdlPvRKSt9nothrow_t,
        (uintptr_t)_ZdaPvRKSt9nothrow_t, (uintptr_t)_ZdlPvmRKSt9nothrow_t};
    std = 1;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
      std &= in_libstdcxx(ops[i]);
    __atomic_store_n(&cxx_std_ops, std, __ATOMIC_RELAXED);
  }
  return std;
}

/* p: a block of size bytes from the program's operator new, which undo
** (its delete) gives back if the attempt aborts. */
static void *cxx_new(void *p, size_t size, void (*undo)(void *),
                     const char *what) {
  struct itm_thread *t = &ame_itm__self;
  if (p == NULL || outside(t)) return p;
  CXX_NEED(undo, what);
  undo_push(t, t->tx, undo, p, what);
  return captured(t, p, size);
}

/* Commit handlers: the program's delete, once the transactions that may
** still hold the pointer have ended. */
static void cxx_delete_later(void *p) {
  ame_quiesce(ame_itm__self.tx);
  _ZdlPv(p);
}
static void cxx_delete_array_later(void *p) {
  ame_quiesce(ame_itm__self.tx);
  _ZdaPv(p);
}

/* delete p (single: 1 for delete, 0 for delete[]) in the transaction;
** at once outside one. */
static void cxx_delete(void *p, int single, const char *what) {
  struct itm_thread *t = &ame_itm__self;
  void (*op)(void *) = single ? _ZdlPv : _ZdaPv;
  CXX_NEED(op, what);
  if (p == NULL) return;
  if (outside(t)) {
    op(p);
    return;
  }
  if (cxx_ops_are_std()) {
    tx_free(t, p);
    return;
  }
  if ((uintptr_t)p == t->cap_lo) t->cap_len = 0;
  commit_push(t, t->tx, single ? cxx_delete_later : cxx_delete_array_later,
              p, what);
}

ITM_EXPORT void *_ZGTtnwm(size_t size) {
  static const char what[] = "_ZGTtnwm (operator new)";
  CXX_NEED(_Znwm, what);
  return cxx_new(_Znwm(size), size, _ZdlPv, what);
}

ITM_EXPORT void *_ZGTtnam(size_t size) {
  static const char what[] = "_ZGTtnam (operator new[])";
  CXX_NEED(_Znam, what);
  return cxx_new(_Znam(size), size, _ZdaPv, what);
}

ITM_EXPORT void *_ZGTtnwmRKSt9nothrow_t(size_t size, const nothrow_t *nt) {
  static const char what[] = "_ZGTtnwmRKSt9nothrow_t (operator new, nothrow)";
  CXX_NEED(_ZnwmRKSt9nothrow_t, what);
  return cxx_new(_ZnwmRKSt9nothrow_t(size, nt), size, _ZdlPv, what);
}

ITM_EXPORT void *_ZGTtnamRKSt9nothrow_t(size_t size, const nothrow_t *nt) {
  static const char what[] =
      "_ZGTtnamRKSt9nothrow_t (operator new[], nothrow)";
  CXX_NEED(_ZnamRKSt9nothrow_t, what);
  return cxx_new(_ZnamRKSt9nothrow_t(size, nt), size, _ZdaPv, what);
}

ITM_EXPORT void _ZGTtdlPv(void *p) {
  cxx_delete(p, 1, "_ZGTtdlPv (operator delete)");
}

ITM_EXPORT void _ZGTtdaPv(void *p) {
  cxx_delete(p, 0, "_ZGTtdaPv (operator delete[])");
}

/* The sized and nothrow deletes end as the plain ones: any block from
** operator new may be given to operator delete(void *). */
ITM_EXPORT void _ZGTtdlPvm(void *p, size_t size) {
  (void)size;
  cxx_delete(p, 1, "_ZGTtdlPvm (operator delete, sized)");
}

ITM_EXPORT void _ZGTtdlPvmRKSt9nothrow_t(void *p, size_t size,
                                         const nothrow_t *nt) {
  (void)size, (void)nt;
  cxx_delete(p, 1, "_ZGTtdlPvmRKSt9nothrow_t (operator delete, sized)");
}

ITM_EXPORT void _ZGTtdlPvRKSt9nothrow_t(void *p, const nothrow_t *nt) {
  (void)nt;
  cxx_delete(p, 1, "_ZGTtdlPvRKSt9nothrow_t (operator delete, nothrow)");
}

ITM_EXPORT void _ZGTtdaPvRKSt9nothrow_t(void *p, const nothrow_t *nt) {
  (void)nt;
  cxx_delete(p, 0, "_ZGTtdaPvRKSt9nothrow_t (operator delete[], nothrow)");
}

ITM_EXPORT void _ITM_dropReferences(void *ptr, size_t size) {
  (void)ptr;
  (void)size;
  ame_itm__fatal("_ITM_dropReferences is not supported");
}

/* ------------------------------------------------------------------------
** The clone tables: (original, transactional clone) pairs that each
** object compiled with -fgnu-tm registers from its constructor, for
** indirect calls inside transactions.
*/

struct clone_pair {
  void *orig, *clone;
};
struct clone_table {
  const void *key;          /* the address the object registered */
  struct clone_pair *pairs; /* sorted by orig */
  size_t n;
  struct clone_table *next;
};
static struct clone_table *clone_tables;
static pthread_rwlock_t clone_lock = PTHREAD_RWLOCK_INITIALIZER;

static int pair_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const struct clone_pair *)a)->orig;
  uintptr_t y = (uintptr_t)((const struct clone_pair *)b)->orig;
  return x < y ? -1 : x > y;
}

ITM_EXPORT void _ITM_registerTMCloneTable(void *table, size_t n) {
  struct clone_table *ct = malloc(sizeof *ct);
  struct clone_pair *p = malloc((n ? n : 1) * sizeof *p);
  if (ct == NULL || p == NULL)
    ame_itm__fatal("_ITM_registerTMCloneTable: out of memory");
  memcpy(p, table, n * sizeof *p);
  qsort(p, n, sizeof *p, pair_cmp);
  ct->key = table;
  ct->pairs = p;
  ct->n = n;
  pthread_rwlock_wrlock(&clone_lock);
  ct->next = clone_tables;
  clone_tables = ct;
  pthread_rwlock_unlock(&clone_lock);
}

ITM_EXPORT void _ITM_deregisterTMCloneTable(void *table) {
  pthread_rwlock_wrlock(&clone_lock);
  for (struct clone_table **pp = &clone_tables; *pp; pp = &(*pp)->next) {
    if ((*pp)->key == table) {
      struct clone_table *ct = *pp;
      *pp = ct->next;
      free(ct->pairs);
      free(ct);
      break;
    }
  }
  pthread_rwlock_unlock(&clone_lock);
}

static void *find_clone(void *fn) {
  void *found = NULL;
  struct clone_pair key = {fn, NULL};
  pthread_rwlock_rdlock(&clone_lock);
  for (struct clone_table *ct = clone_tables; ct && !found; ct = ct->next) {
    struct clone_pair *p =
        bsearch(&key, ct->pairs, ct->n, sizeof key, pair_cmp);
    if (p) found = p->clone;
  }
  pthread_rwlock_unlock(&clone_lock);
  return found;
}

ITM_EXPORT void *_ITM_getTMCloneOrIrrevocable(void *fn) {
  void *clone = find_clone(fn);
  if (clone) return clone;
  /* No clone: the original runs uninstrumented, so go serial. */
  go_serial("_ITM_getTMCloneOrIrrevocable");
  return fn;
}

ITM_EXPORT void *_ITM_getTMCloneSafe(void *fn) {
  void *clone = find_clone(fn);
  if (clone == NULL)
    ame_itm__fatal("_ITM_getTMCloneSafe: no transactional clone of %p "
                   "(an indirect call to a function that is not "
                   "transaction_safe)", fn);
  return clone;
}

/* ------------------------------------------------------------------------
** C++ exceptions in transactions: refused.
*/

#define REFUSE_CXA(ret, name, params, ...)                                  \
  ITM_EXPORT ret name params {                                              \
    __VA_ARGS__;                                                            \
    ame_itm__fatal(#name ": C++ exceptions inside transactions are not "    \
                   "supported");                                            \
  }
REFUSE_CXA(void *, _ITM_cxa_allocate_exception, (size_t size), (void)size)
REFUSE_CXA(void, _ITM_cxa_free_exception, (void *exc), (void)exc)
REFUSE_CXA(void, _ITM_cxa_throw, (void *obj, void *tinfo, void *dest),
           (void)obj, (void)tinfo, (void)dest)
REFUSE_CXA(void *, _ITM_cxa_begin_catch, (void *exc), (void)exc)
REFUSE_CXA(void, _ITM_cxa_end_catch, (void), (void)0)
