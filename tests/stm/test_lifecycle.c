/*
** tests/stm/test_lifecycle.c — library and thread lifecycle: ame_stm_init,
** ame_stm_shutdown, ame_thread_enter/exit, ame_self, ame_thread_idle,
** ame_strerror, and the asserts that catch misuse in debug builds.
*/
#include "stm-test.h"

#include "../../stm/src/internal.h" /* ame_tx's logs */

#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

TEST_IMPL(init_shutdown) {
  ame_stm_config_t cfg = {0};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  ASSERT_EQ(ame_stm_init(&cfg), -EALREADY);
  ASSERT_EQ(ame_stm_init(&cfg), -EALREADY);
  ame_stm_shutdown();

  /* Initialised again after a shutdown, with another configuration, and
  ** used: three rounds, each leaving nothing behind (LeakSanitizer). */
  for (unsigned round = 0; round < 3; round++) {
    ame_stm_config_t c = {.orec_bits = 8 + round * 4, .max_threads = 8,
                          .escalate_after = 4};
    ASSERT_EQ(ame_stm_init(&c), 0);
    ASSERT_EQ(ame_stm_init(&c), -EALREADY);
    ame_tx_t *tx = enter();
    static uintptr_t w;
    w = 0;
    for (int i = 0; i < 100; i++)
      tx_add(tx, &w, 1);
    ASSERT_EQ(tx_get(tx, &w), 100);
    /* Something pending reclamation at shutdown is freed by it. */
    void *p = malloc(64);
    ASSERT_NOT_NULL(p);
    AME_ATOMIC(tx) { ame_tx_free(tx, p, 0); }
    leave_and_shutdown();
  }
}

struct occupant {
  atomic_int entered;   /* 1: enter succeeded, -1: it returned NULL */
  atomic_int release;   /* set by the test: exit now */
  atomic_int done;      /* set after ame_thread_exit() */
};

static void *occupant_main(void *arg) {
  struct occupant *o = arg;
  ame_tx_t *tx = ame_thread_enter();
  if (tx == NULL) {
    atomic_store(&o->entered, -1);
    return NULL;
  }
  atomic_store(&o->entered, 1);
  static uintptr_t w;
  tx_add(tx, &w, 1);
  while (!atomic_load(&o->release))
    sched_yield();
  ame_thread_exit();
  atomic_store(&o->done, 1);
  return NULL;
}

struct aliasing_worker {
  uintptr_t *words;     /* 8 words, all sharing very few orecs */
  unsigned iters;
};

static void *aliasing_main(void *arg) {
  struct aliasing_worker *a = arg;
  ame_tx_t *tx = enter();
  for (unsigned i = 0; i < a->iters; i++) {
    AME_ATOMIC(tx) {
      for (unsigned k = 0; k < 8; k++)
        ame_store_word_tx(tx, &a->words[k],
                          ame_load_word_tx(tx, &a->words[k]) + k + 1);
    }
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(init_config) {
  /* max_threads bounds the threads registered at once; a slot comes back
  ** when its thread exits. */
  ame_stm_config_t cfg = {.orec_bits = 4, .max_threads = 2};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  ame_tx_t *tx = enter();

  struct occupant a = {0}, b = {0}, c = {0};
  pthread_t ta, tb, tc;
  thread_start(&ta, occupant_main, &a);
  ASSERT_WAIT(atomic_load(&a.entered) != 0, 5000);
  ASSERT_EQ(atomic_load(&a.entered), 1);

  thread_start(&tb, occupant_main, &b); /* the table is full */
  thread_join(tb);
  ASSERT_EQ(atomic_load(&b.entered), -1);
  ASSERT_PTR_EQ(ame_self(), tx);

  atomic_store(&a.release, 1);
  thread_join(ta);
  ASSERT_EQ(atomic_load(&a.done), 1);

  thread_start(&tc, occupant_main, &c); /* a's slot is free again */
  ASSERT_WAIT(atomic_load(&c.entered) != 0, 5000);
  ASSERT_EQ(atomic_load(&c.entered), 1);
  atomic_store(&c.release, 1);
  thread_join(tc);

  /* orec_bits = 4: 16 orecs for the whole address space, so words alias
  ** all the time.  Transactions stay correct, only slower. */
  static uintptr_t words[8];
  struct aliasing_worker w = {.words = words, .iters = 20000};
  pthread_t tw;
  thread_start(&tw, aliasing_main, &w);
  aliasing_main(&w);  /* the main thread is the second worker (its enter
                         and exit there nest inside ours) */
  thread_join(tw);
  ASSERT_PTR_EQ(ame_self(), tx);
  for (unsigned k = 0; k < 8; k++)
    ASSERT_EQ(tx_get(tx, &words[k]), 2 * 20000 * (k + 1));
  leave_and_shutdown();
}

/* fork() while other threads register and leave: the child has only the
** forking thread, which registers (as the binding's new worker thread does
** in a child that twistd daemonized) and must not wait forever for the
** registry lock that another thread held at the fork. */
static atomic_int churn_stop;

static void *churn_main(void *arg) {
  (void)arg;
  while (!atomic_load(&churn_stop)) {
    if (ame_thread_enter() != NULL) ame_thread_exit();
  }
  return NULL;
}

TEST_IMPL(fork_while_registering) {
  ASSERT_EQ(ame_stm_init(NULL), 0);
  atomic_store(&churn_stop, 0);
  pthread_t t[2];
  for (int i = 0; i < 2; i++) thread_start(&t[i], churn_main, NULL);
  int forks = 0, bad = 0, status = 0;
  for (; forks < 200 && !bad; forks++) {
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      alarm(5); /* a child that waits forever dies of SIGALRM */
      ame_tx_t *tx = ame_thread_enter();
      if (tx == NULL) _exit(2);
      static uintptr_t w;
      if (tx_add(tx, &w, 1) != 1) _exit(3);
      ame_thread_exit();
      _exit(0);
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    bad = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  }
  atomic_store(&churn_stop, 1);
  for (int i = 0; i < 2; i++) thread_join(t[i]);
  if (bad)
    AME_TEST_FAIL_("fork %d: the child %s %d", forks,
         WIFSIGNALED(status) ? "died of signal" : "exited",
         WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
  ame_stm_shutdown();
}

/* fork() while another thread is inside an irrevocable transaction: the
** child has no such thread, so nothing of the child may wait for it: not
** a privatization or ame_quiesce() (its start stays published there), not
** irrevocability (its ticket is never passed on there), and reclamation
** must not keep blocks for it. */
static atomic_int inside_go, inside_stop;
static uintptr_t inside_word; /* locked by that transaction: left alone */

static void *inside_main(void *arg) {
  (void)arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    ame_tx_irrevocable(tx);
    ame_store_word_tx(tx, &inside_word, 1);
    atomic_store(&inside_go, 1);
    while (!atomic_load(&inside_stop)) sleep_ms(1);
  }
  ame_thread_exit();
  return NULL;
}

static int fork_child_work(int what) {
  ame_tx_t *tx = ame_thread_enter();
  if (tx == NULL) return 2;
  static uintptr_t w;
  switch (what) {
  case 0: /* privatization */
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, &w, 1);
      ame_tx_privatize(tx);
    }
    ame_quiesce(tx);
    break;
  case 1: /* irrevocability */
    AME_ATOMIC(tx) {
      ame_tx_irrevocable(tx);
      ame_store_word_tx(tx, &w, 2);
    }
    break;
  case 2: { /* reclamation */
    uintptr_t *p = NULL;
    AME_ATOMIC(tx) {
      p = ame_tx_malloc(tx, 16);
      ame_tx_free(tx, p, 16);
    }
    AME_ATOMIC(tx) { ame_store_word_tx(tx, &w, 3); }
    ame_thread_idle(tx);
    ame_stats_t st;
    ame_stats_thread(tx, &st);
    if (st.frees_pending != 0) return 4;
    break;
  }
  }
  if (tx_get(tx, &w) == 0) return 3;
  ame_thread_exit();
  return 0;
}

TEST_IMPL(fork_inside_transaction) {
  ASSERT_EQ(ame_stm_init(NULL), 0);
  pthread_t t;
  thread_start(&t, inside_main, NULL);
  ASSERT_WAIT(atomic_load(&inside_go), 5000);
  int status = 0;
  for (int what = 0; what < 3; what++) {
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      alarm(5); /* a child that waits forever dies of SIGALRM */
      _exit(fork_child_work(what));
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      AME_TEST_FAIL_("case %d: the child %s %d", what,
                     WIFSIGNALED(status) ? "died of signal" : "exited",
                     WIFSIGNALED(status) ? WTERMSIG(status)
                                         : WEXITSTATUS(status));
  }
  atomic_store(&inside_stop, 1);
  thread_join(t);
  ame_stm_shutdown();
}

struct self_probe {
  ame_tx_t *main_tx;    /* the main thread's descriptor */
  ame_tx_t *seen_before;/* ame_self() before entering */
  ame_tx_t *mine;       /* what ame_thread_enter() returned */
  ame_tx_t *seen_after; /* ame_self() after exiting */
};

static void *self_probe_main(void *arg) {
  struct self_probe *p = arg;
  p->seen_before = ame_self();
  p->mine = ame_thread_enter();
  ASSERT_NOT_NULL(p->mine);
  ASSERT_PTR_EQ(ame_self(), p->mine);
  ASSERT_PTR_NE(p->mine, p->main_tx);
  static uintptr_t w;
  tx_add(p->mine, &w, 1);
  ame_thread_exit();
  p->seen_after = ame_self();
  return NULL;
}

TEST_IMPL(thread_enter_exit) {
  ASSERT_NULL(ame_self());
  ame_tx_t *tx = ame_thread_enter();
  ASSERT_NOT_NULL(tx);
  ASSERT_PTR_EQ(ame_self(), tx);

  /* Entering again gives the same descriptor and counts a reference. */
  ASSERT_PTR_EQ(ame_thread_enter(), tx);
  ASSERT_PTR_EQ(ame_thread_enter(), tx);
  ame_thread_exit();
  ASSERT_PTR_EQ(ame_self(), tx);
  ame_thread_exit();
  ASSERT_PTR_EQ(ame_self(), tx);
  static uintptr_t w;
  ASSERT_EQ(tx_add(tx, &w, 5), 5);  /* still usable */

  /* Another thread gets a descriptor of its own. */
  struct self_probe p = {.main_tx = tx, .seen_before = tx, .seen_after = tx};
  pthread_t t;
  thread_start(&t, self_probe_main, &p);
  thread_join(t);
  ASSERT_NULL(p.seen_before);
  ASSERT_NULL(p.seen_after);
  ASSERT_NOT_NULL(p.mine);

  ame_thread_exit();          /* the last reference */
  ASSERT_NULL(ame_self());

  /* A thread may register again after leaving. */
  tx = enter();
  ASSERT_EQ(tx_add(tx, &w, 1), 6);
  leave_and_shutdown();
}

/* One thread of descriptor_lines: the words its transaction reads and
** writes, and what it found wrong with its descriptor and logs. */
struct lines_probe {
  uintptr_t words[3 * 2048] __attribute__((aligned(64)));
  uintptr_t shared;   /* a block not alone in its lines, or 0 */
  const char *what;   /* what is wrong, or NULL */
};

/* Whether the block at p has its cache lines to itself: it starts on a
** line, and malloc gave it every byte up to the end of its last line. */
static int own_lines(const void *p, size_t size) {
  size_t lines = (size + AME__CACHELINE - 1) & ~(size_t)(AME__CACHELINE - 1);
  return (uintptr_t)p % AME__CACHELINE == 0 &&
         malloc_usable_size((void *)p) >= lines;
}

static void *lines_main(void *arg) {
  struct lines_probe *p = arg;
  ame_tx_t *tx = ame_thread_enter();
  if (tx == NULL) {
    p->what = "ame_thread_enter() failed";
    return NULL;
  }
  /* One transaction that outgrows the first read log (4096 entries) and
  ** the first write-log chunk (256: here a store in each of 300
  ** granules), so that both logs grow. */
  AME_ATOMIC(tx) {
    uintptr_t sum = 0;
    for (size_t i = 0; i < 3 * 2048; i++)
      sum += ame_load_word_tx(tx, &p->words[i]);
    for (size_t i = 0; i < 300; i++)
      ame_store_word_tx(tx, &p->words[8 * i], sum + i);
  }
  struct {
    const void *p;
    size_t size;
    const char *what;
  } blocks[] = {
      {tx, sizeof *tx, "the descriptor shares a cache line"},
      {tx->r_base, (size_t)(tx->h.r_end - tx->r_base) * sizeof *tx->r_base,
       "the read log shares a cache line"},
      {tx->w_first, sizeof *tx->w_first,
       "the first write-log chunk shares a cache line"},
      {tx->w_first->next, sizeof *tx->w_first,
       "a second write-log chunk shares a cache line (or none)"},
  };
  if (tx->h.r_end - tx->r_base <= 4096)
    p->what = "the read log did not grow";
  for (size_t i = 0; p->what == NULL && i < sizeof blocks / sizeof blocks[0];
       i++) {
    if (blocks[i].p == NULL || !own_lines(blocks[i].p, blocks[i].size)) {
      p->shared = (uintptr_t)blocks[i].p;
      p->what = blocks[i].what;
      break;
    }
  }
  ame_thread_exit();
  return NULL;
}

/* A thread's descriptor and logs have their cache lines to themselves:
** its stores on every load and every start must not take away a line
** that other threads read on every transaction (the root of a tree
** allocated just before the first descriptor: false sharing that made
** read-only transactions on two threads barely faster than on one). */
TEST_IMPL(descriptor_lines) {
  ame_stm_config_t cfg = {.max_threads = 16};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  enum { N = 4 };
  static struct lines_probe probes[N];
  pthread_t t[N];
  for (int i = 0; i < N; i++)
    thread_start(&t[i], lines_main, &probes[i]);
  for (int i = 0; i < N; i++)
    thread_join(t[i]);
  for (int i = 0; i < N; i++) {
    if (probes[i].what != NULL)
      fprintf(stderr, "thread %d: %s (%#lx)\n", i, probes[i].what,
              (unsigned long)probes[i].shared);
    ASSERT_NULL(probes[i].what);
  }
  ame_stm_shutdown();
}

TEST_IMPL(thread_enter_auto_init) {
  for (int round = 0; round < 2; round++) {
    ame_tx_t *tx = ame_thread_enter(); /* initialises with the defaults */
    ASSERT_NOT_NULL(tx);
    ame_stm_config_t cfg = {0};
    ASSERT_EQ(ame_stm_init(&cfg), -EALREADY);
    static uintptr_t w;
    w = 0;
    ASSERT_EQ(tx_add(tx, &w, 3), 3);
    leave_and_shutdown();
  }
}

struct idler {
  int call_idle;        /* call ame_thread_idle() before blocking */
  atomic_int blocked;   /* it is registered and blocked */
  atomic_int release;   /* set by the test */
  uintptr_t *counter;   /* shared word it increments after release */
};

static void *idler_main(void *arg) {
  struct idler *d = arg;
  ame_tx_t *tx = enter();
  tx_add(tx, d->counter, 1);
  if (d->call_idle)
    ame_thread_idle(tx);
  atomic_store(&d->blocked, 1);
  while (!atomic_load(&d->release))
    sleep_ms(1);
  tx_add(tx, d->counter, 1);  /* still works after being idle */
  ame_thread_exit();
  return NULL;
}

struct quiescer {
  atomic_int done;
};

static void *quiescer_main(void *arg) {
  struct quiescer *q = arg;
  ame_tx_t *tx = enter();
  ame_quiesce(tx);
  atomic_store(&q->done, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(thread_idle) {
  ame_tx_t *tx = enter();
  static uintptr_t counter;

  /* ame_thread_idle() outside a transaction, then transactions again. */
  ame_thread_idle(tx);
  ame_thread_idle(tx);
  ASSERT_EQ(tx_add(tx, &counter, 1), 1);

  struct idler idle = {.call_idle = 1, .counter = &counter};
  struct idler quiet = {.call_idle = 0, .counter = &counter};
  pthread_t ti, tq;
  thread_start(&ti, idler_main, &idle);
  thread_start(&tq, idler_main, &quiet);
  ASSERT_WAIT(atomic_load(&idle.blocked) && atomic_load(&quiet.blocked), 5000);

  /* Neither blocked thread is running a transaction: a quiescence fence
  ** must not wait for them, from this thread or another. */
  ame_quiesce(tx);
  struct quiescer q = {0};
  pthread_t tqu;
  thread_start(&tqu, quiescer_main, &q);
  ASSERT_WAIT(atomic_load(&q.done), 5000);
  thread_join(tqu);

  /* Reclamation does not wait for the idle thread.  (The other blocked
  ** thread did not say it was idle, so its reclamation may wait.) */
  atomic_store(&quiet.release, 1);
  thread_join(tq);
  ame_stats_t before, after;
  ame_stats_total(&before);
  enum { M = 4000 }; /* a scan each time 1024 more are pending */
  for (int i = 0; i < M; i++) {
    void *p = malloc(128);
    ASSERT_NOT_NULL(p);
    AME_ATOMIC(tx) { ame_tx_free(tx, p, 0); }
  }
  ame_stats_total(&after);
  ASSERT_GE(after.frees_done, before.frees_done + M / 2);

  atomic_store(&idle.release, 1);
  thread_join(ti);
  ASSERT_EQ(tx_get(tx, &counter), 5);
  leave_and_shutdown();
}

TEST_IMPL(strerror) {
  const char *nomem = ame_strerror(-ENOMEM);
  const char *inval = ame_strerror(-EINVAL);
  const char *already = ame_strerror(-EALREADY);
  const char *unknown = ame_strerror(-987654);
  ASSERT_NOT_NULL(nomem);
  ASSERT_NOT_NULL(inval);
  ASSERT_NOT_NULL(already);
  ASSERT_NOT_NULL(unknown);
  ASSERT_GT(strlen(nomem), 0);
  ASSERT_GT(strlen(inval), 0);
  ASSERT_GT(strlen(already), 0);
  ASSERT_GT(strlen(unknown), 0);
  ASSERT(strcmp(nomem, inval) != 0);
  ASSERT(strcmp(nomem, already) != 0);
  ASSERT(strcmp(inval, already) != 0);
  ASSERT(strcmp(unknown, nomem) != 0);
  ASSERT(strcmp(unknown, inval) != 0);
  ASSERT(strcmp(unknown, already) != 0);
  /* Works without the STM initialised, and is stable. */
  ASSERT_PTR_EQ(ame_strerror(-ENOMEM), nomem);
}

/* ------------------------------------------------------------------------
** Misuse is caught by assert() in debug builds: each case runs in a forked
** child that must die of SIGABRT.
*/

__attribute__((unused)) static void expect_abort(const char *what, void (*fn)(void)) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    fn();
    fprintf(stderr, "misuse '%s' was not caught\n", what);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT))
    fprintf(stderr, "misuse '%s': child status 0x%x\n", what, status);
  ASSERT(WIFSIGNALED(status));
  ASSERT_EQ(WTERMSIG(status), SIGABRT);
}

static uintptr_t misuse_word;

__attribute__((unused)) static void misuse_load_outside(void) {
  ame_tx_t *tx = enter();
  (void)ame_load_word_tx(tx, &misuse_word);
}

/* The same after a transaction ran (the inlined fast path then finds a
** snapshot in the descriptor). */
__attribute__((unused)) static void misuse_load_after_tx(void) {
  ame_tx_t *tx = enter();
  (void)tx_get(tx, &misuse_word);  /* read-only: the word's version stays
                                      within the descriptor's snapshot */
  (void)ame_load_word_tx(tx, &misuse_word);
}

__attribute__((unused)) static void misuse_store_outside(void) {
  ame_tx_t *tx = enter();
  ame_store_word_tx(tx, &misuse_word, 1);
}

__attribute__((unused)) static void misuse_retry_irrevocable(void) {
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    (void)ame_load_word_tx(tx, &misuse_word);
    ame_tx_irrevocable(tx);
    ame_retry(tx);
  }
}

__attribute__((unused)) static void *wrong_thread_main(void *arg) {
  ame_tx_t *other = arg;
  ame_thread_enter();
  AME_ATOMIC(other) { ame_store_word_tx(other, &misuse_word, 1); }
  return NULL;
}

__attribute__((unused)) static void misuse_wrong_thread(void) {
  ame_tx_t *tx = enter();
  pthread_t t;
  thread_start(&t, wrong_thread_main, tx);
  thread_join(t);
}

TEST_IMPL(misuse_asserts) {
#ifdef NDEBUG
  TEST_SKIP("assertions are compiled out (NDEBUG)");
#else
  expect_abort("load outside a transaction", misuse_load_outside);
  expect_abort("load outside a transaction, after one",
               misuse_load_after_tx);
  expect_abort("store outside a transaction", misuse_store_outside);
  expect_abort("ame_retry() in an irrevocable transaction",
               misuse_retry_irrevocable);
  expect_abort("a descriptor used by another thread", misuse_wrong_thread);
#endif
}
