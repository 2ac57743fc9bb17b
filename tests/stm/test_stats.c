/*
** tests/stm/test_stats.c — statistics (per thread and total, by abort
** cause, reset), ame_abort_cause_name, ame_label, ame_conflicts and
** ame_conflict_report.
**
** Conflicts are forced deterministically: the main thread ("A") holds a
** lock on a word inside an open transaction while a helper thread ("B")
** runs into it; A lets go only once B has restarted, and B's restart waits
** for A's commit, so each round is exactly one conflict abort of B.
*/
#include "stm-test.h"

static uint64_t cause_sum(const ame_stats_t *s) {
  uint64_t n = 0;
  for (int c = 0; c < AME_ABORT__COUNT; c++)
    n += s->aborts_by_cause[c];
  return n;
}

static int run_store(ame_tx_t *tx, void *arg) {
  ame_store_word_tx(tx, arg, 1);
  return 0;
}

struct counts_thread {
  ame_stats_t st;
};

static void *counts_main(void *arg) {
  struct counts_thread *c = arg;
  ame_tx_t *tx = enter();
  ame_stats_t st0, st1;
  ame_stats_thread(tx, &st0);
  static uintptr_t w[4];
  for (int i = 0; i < 5; i++)  /* 5 writing transactions */
    tx_add(tx, &w[0], 1);
  for (int i = 0; i < 3; i++)  /* 3 read-only ones */
    (void)tx_get(tx, &w[1]);
  AME_ATOMIC(tx) {}            /* an empty one is read-only too */
  AME_ATOMIC(tx) {             /* nested blocks are one transaction */
    AME_ATOMIC(tx) {
      AME_ATOMIC(tx) { ame_store_word_tx(tx, &w[2], 1); }
    }
  }
  ame_tx_run(tx, run_store, &w[3]);  /* and so is ame_tx_run */
  ame_stats_thread(tx, &st1);
  stats_delta(&c->st, &st1, &st0);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stats_commits) {
  struct counts_thread c;
  pthread_t t;
  thread_start(&t, counts_main, &c);  /* the process's first descriptor */
  thread_join(t);
  ASSERT_EQ(c.st.commits, 11);
  ASSERT_EQ(c.st.commits_ro, 4);
  ASSERT_EQ(c.st.aborts, 0);
  ASSERT_EQ(cause_sum(&c.st), 0);
  ASSERT_EQ(c.st.retries, 0);
  ASSERT_EQ(c.st.irrevocable, 0);
  ASSERT_EQ(c.st.escalations, 0);
  ASSERT_EQ(c.st.max_attempts, 1);  /* every transaction needed 1 attempt */

  /* The main thread, after aborts: max_attempts counts the last attempt. */
  ame_tx_t *tx = enter();
  ame_stats_t s, s0, s1;
  ame_stats_thread(tx, &s0);
  AME_ATOMIC(tx) {
    if (ame_tx_attempt(tx) < 3)
      ame_tx_abort(tx);
  }
  ame_stats_thread(tx, &s1);
  stats_delta(&s, &s1, &s0);
  ASSERT_EQ(s.commits, 1);
  ASSERT_EQ(s.commits_ro, 1);
  ASSERT_EQ(s.aborts, 3);
  ASSERT_EQ(s.max_attempts, 4);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Explicit and retry aborts.
*/
struct retrier {
  uintptr_t flag;
  atomic_int waiting;
  ame_stats_t st;
};

static void *retrier_main(void *arg) {
  struct retrier *r = arg;
  ame_tx_t *tx = enter();
  ame_stats_t st0, st1;
  ame_stats_thread(tx, &st0);
  AME_ATOMIC(tx) {
    if (ame_load_word_tx(tx, &r->flag) == 0) {
      atomic_store(&r->waiting, 1);
      ame_retry(tx);
    }
  }
  ame_stats_thread(tx, &st1);
  stats_delta(&r->st, &st1, &st0);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stats_aborts_by_cause) {
  ame_tx_t *tx = enter();
  ame_stats_t s0, s1, s;
  ame_stats_thread(tx, &s0);
  static uintptr_t w;
  for (int i = 0; i < 4; i++) {
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, &w, (uintptr_t)i);
      if (ame_tx_attempt(tx) < 2)
        ame_tx_abort(tx);
    }
  }
  ame_stats_thread(tx, &s1);
  stats_delta(&s, &s1, &s0);
  ASSERT_EQ(s.commits, 4);
  ASSERT_EQ(s.aborts, 8);
  ASSERT_EQ(s.aborts_by_cause[AME_ABORT_EXPLICIT], 8);
  ASSERT_EQ(cause_sum(&s), 8);
  ASSERT_EQ(s.max_attempts, 3);

  static struct retrier r;
  pthread_t t;
  thread_start(&t, retrier_main, &r);
  ASSERT_WAIT(atomic_load(&r.waiting), 5000);
  sleep_ms(50);
  tx_set(tx, &r.flag, 1);
  thread_join(t);
  ASSERT_EQ(r.st.commits, 1);
  ASSERT_GE(r.st.retries, 1);
  ASSERT_GE(r.st.aborts_by_cause[AME_ABORT_RETRY], 1);
  ASSERT_EQ(r.st.aborts_by_cause[AME_ABORT_EXPLICIT], 0);
  ASSERT_EQ(cause_sum(&r.st), r.st.aborts);
  ASSERT_EQ(r.st.aborts, r.st.aborts_by_cause[AME_ABORT_RETRY]);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** Forced conflicts.
*/
enum b_mode {
  B_READ,      /* B reads the word A holds locked */
  B_WRITE,     /* B writes it */
  B_VALIDATE,  /* B reads x, A commits x and y, B reads y */
  B_COMMIT,    /* B reads x and writes z, A commits x, B commits */
  B_KILLED,    /* B holds x locked; an irrevocable A needs it */
};

struct conflict {
  enum b_mode mode;
  uintptr_t *target;        /* the word fought over ("x") */
  uintptr_t *second;        /* "y" */
  uintptr_t *scratch;       /* "z" */
  const char *b_site;       /* B's ame_tx_set_site, or NULL */
  atomic_int a_ready;       /* A holds its lock / has read */
  atomic_int a_done;        /* A has committed */
  atomic_int a_trying;      /* irrevocable A goes for B's lock */
  atomic_int b_ready;       /* B has locked / read */
  atomic_int b_tries;
  ame_stats_t st;           /* B's statistics at its end */
  int b_line;               /* the line of B's AME_ATOMIC */
};

static void *b_main(void *arg) {
  struct conflict *c = arg;
  ame_tx_t *tx = enter();
  ame_stats_t st0, st1;
  ame_stats_thread(tx, &st0);
  if (c->mode == B_READ || c->mode == B_WRITE)
    ASSERT_WAIT(atomic_load(&c->a_ready), 5000);
  AME_ATOMIC(tx) { c->b_line = __LINE__;
    if (c->b_site != NULL)
      ame_tx_set_site(tx, c->b_site);
    atomic_fetch_add(&c->b_tries, 1);
    int first = ame_tx_attempt(tx) == 0;
    if (!first)
      WAIT_UNTIL(atomic_load(&c->a_done), 5000);
    switch (c->mode) {
    case B_READ:
      (void)ame_load_word_tx(tx, c->target);
      break;
    case B_WRITE:
      ame_store_word_tx(tx, c->target, 77);
      break;
    case B_VALIDATE: {
      uintptr_t x = ame_load_word_tx(tx, c->target);
      if (first) {
        atomic_store(&c->b_ready, 1);
        WAIT_UNTIL(atomic_load(&c->a_done), 5000);
      }
      uintptr_t y = ame_load_word_tx(tx, c->second);
      ASSERT_EQ(x, y);  /* opacity: never a mix of before and after */
      break;
    }
    case B_COMMIT: {
      uintptr_t x = ame_load_word_tx(tx, c->target);
      ame_store_word_tx(tx, c->scratch, x);
      if (first) {
        atomic_store(&c->b_ready, 1);
        WAIT_UNTIL(atomic_load(&c->a_done), 5000);
      }
      break;
    }
    case B_KILLED:
      ame_store_word_tx(tx, c->target, 5);
      if (first) {
        atomic_store(&c->b_ready, 1);
        WAIT_UNTIL(atomic_load(&c->a_trying), 5000);
        sleep_ms(50 * slow_factor());  /* A reaches our lock meanwhile */
        (void)ame_load_word_tx(tx, c->scratch);
      }
      break;
    }
  }
  ame_stats_thread(tx, &st1);
  stats_delta(&c->st, &st1, &st0);
  ame_thread_exit();
  return NULL;
}

/* Play A against a new B in the given mode; B's statistics end up in
** c->st. */
static void conflict_round(ame_tx_t *tx, struct conflict *c) {
  atomic_store(&c->a_ready, 0);
  atomic_store(&c->a_done, 0);
  atomic_store(&c->a_trying, 0);
  atomic_store(&c->b_ready, 0);
  atomic_store(&c->b_tries, 0);
  pthread_t t;
  thread_start(&t, b_main, c);
  switch (c->mode) {
  case B_READ:
  case B_WRITE:
    AME_ATOMIC(tx) {
      ame_tx_set_site(tx, "holder-site");
      ame_store_word_tx(tx, c->target, ame_load_word_tx(tx, c->target) + 1);
      if (ame_tx_attempt(tx) == 0) {
        atomic_store(&c->a_ready, 1);
        WAIT_UNTIL(atomic_load(&c->b_tries) >= 2, 1000);
      }
    }
    break;
  case B_VALIDATE:
  case B_COMMIT:
    ASSERT_WAIT(atomic_load(&c->b_ready), 5000);
    AME_ATOMIC(tx) {
      ame_tx_set_site(tx, "holder-site");
      uintptr_t v = ame_load_word_tx(tx, c->target) + 1;
      ame_store_word_tx(tx, c->target, v);
      ame_store_word_tx(tx, c->second, v);
    }
    break;
  case B_KILLED:
    ASSERT_WAIT(atomic_load(&c->b_ready), 5000);
    AME_ATOMIC(tx) {
      ame_tx_irrevocable(tx);
      atomic_store(&c->a_trying, 1);
      ame_store_word_tx(tx, c->target, 6);
    }
    break;
  }
  atomic_store(&c->a_done, 1);
  thread_join(t);
  ASSERT_EQ(cause_sum(&c->st), c->st.aborts);
  ASSERT_EQ(c->st.commits, 1);
}

TEST_IMPL(stats_conflict_causes) {
  ame_tx_t *tx = enter();
  /* In different orecs (which cover aligned 32-byte granules). */
  static _Alignas(64) uintptr_t x;
  static _Alignas(64) uintptr_t y;
  static _Alignas(64) uintptr_t z;
  static struct conflict c = {.target = &x, .second = &y, .scratch = &z};

  c.mode = B_READ;
  conflict_round(tx, &c);
  ASSERT_GE(c.st.aborts_by_cause[AME_ABORT_READ_LOCKED], 1);

  c.mode = B_WRITE;
  conflict_round(tx, &c);
  ASSERT_GE(c.st.aborts_by_cause[AME_ABORT_WRITE_LOCKED], 1);

  c.mode = B_VALIDATE;
  tx_set(tx, &y, tx_get(tx, &x));
  conflict_round(tx, &c);
  ASSERT_EQ(c.st.aborts, 1);
  ASSERT_EQ(c.st.aborts_by_cause[AME_ABORT_VALIDATE], 1);

  c.mode = B_COMMIT;
  conflict_round(tx, &c);
  ASSERT_EQ(c.st.aborts, 1);
  ASSERT_EQ(c.st.aborts_by_cause[AME_ABORT_COMMIT], 1);

  c.mode = B_KILLED;
  conflict_round(tx, &c);
  ASSERT_GE(c.st.aborts_by_cause[AME_ABORT_KILLED], 1);
  ASSERT_EQ(tx_get(tx, &x), 5);  /* B, killed, ran again after A */

  /* The totals include B's threads, which have all left. */
  ame_stats_t tot;
  ame_stats_total(&tot);
  ASSERT_GE(tot.aborts, 4);
  ASSERT_GE(tot.aborts_by_cause[AME_ABORT_READ_LOCKED], 1);
  ASSERT_GE(tot.aborts_by_cause[AME_ABORT_WRITE_LOCKED], 1);
  ASSERT_GE(tot.aborts_by_cause[AME_ABORT_VALIDATE], 1);
  ASSERT_GE(tot.aborts_by_cause[AME_ABORT_COMMIT], 1);
  ASSERT_GE(tot.aborts_by_cause[AME_ABORT_KILLED], 1);
  ASSERT_EQ(cause_sum(&tot), tot.aborts);
  leave_and_shutdown();
}

TEST_IMPL(stats_irrevocable) {
  ame_tx_t *tx = enter();
  ame_stats_t s0, s1, s;
  ame_stats_thread(tx, &s0);
  static uintptr_t w;
  for (int i = 0; i < 3; i++) {
    AME_ATOMIC(tx) {
      ame_tx_irrevocable(tx);
      ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) + 1);
    }
  }
  AME_ATOMIC(tx) { ame_tx_irrevocable(tx); }  /* read-only irrevocable */
  ame_stats_thread(tx, &s1);
  stats_delta(&s, &s1, &s0);
  ASSERT_EQ(s.irrevocable, 4);
  ASSERT_EQ(s.escalations, 0);  /* all asked for, none forced */
  ASSERT_EQ(s.commits, 4);
  ASSERT_EQ(s.aborts, 0);
  ame_stats_t tot;
  ame_stats_total(&tot);
  ASSERT_GE(tot.irrevocable, 4);
  leave_and_shutdown();
}

struct committer {
  unsigned n;
  uintptr_t *word;
};

static void *committer_main(void *arg) {
  struct committer *c = arg;
  ame_tx_t *tx = enter();
  for (unsigned i = 0; i < c->n; i++)
    tx_add(tx, c->word, 1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stats_total_reset) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  ame_stats_reset();
  /* Three threads that commit 100 each and leave, plus 7 of ours. */
  struct committer c = {100, &w};
  pthread_t t[3];
  for (int i = 0; i < 3; i++)
    thread_start(&t[i], committer_main, &c);
  for (int i = 0; i < 3; i++)
    thread_join(t[i]);
  for (int i = 0; i < 7; i++)
    tx_add(tx, &w, 1);
  ame_stats_t tot;
  ame_stats_total(&tot);
  ASSERT_EQ(tot.commits, 307);
  ASSERT_EQ(tot.commits_ro, 0);
  ASSERT_EQ(w, 307);

  /* Make a conflict so that the table has something to reset. */
  static struct conflict cf;
  static _Alignas(64) uintptr_t x;
  cf.target = &x;
  cf.mode = B_READ;
  conflict_round(tx, &cf);
  ame_conflict_t out[4];
  ASSERT_GE(ame_conflicts(out, 4), 1);

  ame_stats_reset();
  ame_stats_total(&tot);
  ASSERT_EQ(tot.commits, 0);
  ASSERT_EQ(tot.commits_ro, 0);
  ASSERT_EQ(tot.aborts, 0);
  ASSERT_EQ(cause_sum(&tot), 0);
  ASSERT_EQ(tot.irrevocable, 0);
  ASSERT_EQ(ame_conflicts(out, 4), 0);
  /* The same word conflicts again: its slot is claimed anew, and the
  ** next reset (a reset clears the table only if a slot was claimed
  ** since the last one) empties it again. */
  ame_stats_reset();
  conflict_round(tx, &cf);
  ASSERT_EQ(ame_conflicts(out, 4), 1);
  ASSERT_EQ(out[0].addr, (uintptr_t)&x);
  ame_stats_reset();
  ASSERT_EQ(ame_conflicts(out, 4), 0);

  for (int i = 0; i < 5; i++)
    tx_add(tx, &w, 1);
  ame_stats_total(&tot);
  ASSERT_EQ(tot.commits, 5);
  leave_and_shutdown();
}

/* ame_stats_reset() beside a thread that frees and reclaims: pending
** frees are a level, which a reset must leave as its owner keeps it. */
static atomic_int pending_stop;

static void *pending_main(void *arg) {
  ame_stats_t *out = arg;
  ame_tx_t *tx = enter();
  while (!atomic_load(&pending_stop)) {
    AME_ATOMIC(tx) {
      void *p = ame_tx_malloc(tx, 16);
      ame_tx_free(tx, p, 16);
    }
    ame_thread_idle(tx); /* nothing else runs: it is reclaimed */
  }
  ame_stats_thread(tx, out);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stats_reset_keeps_pending) {
  ame_tx_t *tx = enter();
  static ame_stats_t st;
  pthread_t t;
  thread_start(&t, pending_main, &st);
  for (int i = 0; i < 200000; i++) ame_stats_reset();
  atomic_store(&pending_stop, 1);
  thread_join(t);
  ASSERT_EQ(st.frees_pending, 0);
  (void)tx;
  leave_and_shutdown();
}

/* ame_stats_reset() beside a thread that commits: after the reset its
** commit count is what it committed since, not what it had before. */
static atomic_int counting_stop;
static atomic_ulong counting_done;  /* commits the thread saw return */
static ame_tx_t *counting_tx;

static void *counting_main(void *arg) {
  (void)arg;
  ame_tx_t *tx = enter();
  static _Alignas(64) uintptr_t w;
  counting_tx = tx;
  atomic_store(&counting_done, 1);
  while (!atomic_load(&counting_stop)) {
    tx_add(tx, &w, 1);
    atomic_fetch_add(&counting_done, 1);
  }
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(stats_reset_while_counting) {
  ame_tx_t *tx = enter();
  pthread_t t;
  thread_start(&t, counting_main, NULL);
  ASSERT_WAIT(atomic_load(&counting_done) > 1000, 5000);
  unsigned long worst = 0;
  for (int i = 0; i < 100000; i++) {
    unsigned long d0 = atomic_load(&counting_done);
    ame_stats_reset();
    ame_stats_t st;
    ame_stats_thread(counting_tx, &st);
    unsigned long d1 = atomic_load(&counting_done);
    /* One commit may have counted itself but not yet returned. */
    unsigned long over = st.commits > d1 - d0 + 1 ? st.commits : 0;
    if (over > worst) worst = over;
  }
  atomic_store(&counting_stop, 1);
  thread_join(t);
  ASSERT_EQ(worst, 0);
  (void)tx;
  leave_and_shutdown();
}

TEST_IMPL(abort_cause_name) {
  ASSERT_STR_EQ(ame_abort_cause_name(AME_ABORT_READ_LOCKED), "read-locked");
  for (int a = 0; a < AME_ABORT__COUNT; a++) {
    const char *na = ame_abort_cause_name((ame_abort_cause_t)a);
    ASSERT_NOT_NULL(na);
    ASSERT_GT(strlen(na), 0);
    for (int b = 0; b < a; b++)
      ASSERT(strcmp(na, ame_abort_cause_name((ame_abort_cause_t)b)) != 0);
  }
}

TEST_IMPL(label_errors) {
  enter();
  static uintptr_t w[4];
  ASSERT_EQ(ame_label(w, sizeof w, "four words"), 0);
  ASSERT_EQ(ame_label(&w[1], sizeof w[1], "one inside"), 0);
  ASSERT_EQ(ame_label(w, sizeof w, "renamed"), 0);
  ASSERT_EQ(ame_label(w, 0, "empty"), -EINVAL);
  ASSERT_EQ(ame_label(w, sizeof w, NULL), -EINVAL);
  leave_and_shutdown();
}

/* ------------------------------------------------------------------------
** The conflict report: a labelled hot word (6 forced conflicts) and a
** labelled cold one (2), each conflict one abort of B.
*/
struct labelled {
  uintptr_t pad[2];
  uintptr_t word;           /* the one fought over */
  uintptr_t more;
};

static _Alignas(64) struct labelled hot;
static _Alignas(64) struct labelled cold;

TEST_IMPL(conflict_report) {
  ame_tx_t *tx = enter();
  ASSERT_EQ(ame_label(&hot, sizeof hot, "hot-counter"), 0);
  char name[32];
  snprintf(name, sizeof name, "%s", "cold-word");
  ASSERT_EQ(ame_label(&cold, sizeof cold, name), 0);
  memset(name, 'X', sizeof name - 1);  /* the label was copied */

  static struct conflict c;
  c.mode = B_READ;
  c.target = &hot.word;
  c.b_site = NULL;  /* AME_ATOMIC's "file:line" */
  for (int i = 0; i < 6; i++) {
    conflict_round(tx, &c);
    ASSERT_EQ(c.st.aborts, 1);
  }
  int hot_line = c.b_line;
  c.target = &cold.word;
  c.b_site = "cold-site";
  for (int i = 0; i < 2; i++) {
    conflict_round(tx, &c);
    ASSERT_EQ(c.st.aborts, 1);
  }

  char hot_site[64];
  snprintf(hot_site, sizeof hot_site, "test_stats.c:%d", hot_line);

  ame_conflict_t out[8];
  size_t n = ame_conflicts(out, 8);
  ASSERT_GE(n, 2);
  ASSERT_EQ(ame_conflicts(out, 1), 1);  /* at most n */
  n = ame_conflicts(out, 8);
  for (size_t i = 1; i < n; i++)
    ASSERT_GE(out[i - 1].count, out[i].count);  /* hottest first */

  ASSERT_STR_EQ(out[0].label, "hot-counter");
  ASSERT_EQ(out[0].count, 6);
  ASSERT_EQ(out[0].label_base, (uintptr_t)&hot);
  ASSERT_GE(out[0].addr, (uintptr_t)&hot);
  ASSERT_LT(out[0].addr, (uintptr_t)&hot + sizeof hot);
  ASSERT_EQ(out[0].cause, AME_ABORT_READ_LOCKED);
  ASSERT_STR_CONTAINS(out[0].site, hot_site);
  if (out[0].other_site != NULL)
    ASSERT_STR_EQ(out[0].other_site, "holder-site");

  ASSERT_STR_EQ(out[1].label, "cold-word");
  ASSERT_EQ(out[1].count, 2);
  ASSERT_EQ(out[1].label_base, (uintptr_t)&cold);
  ASSERT_STR_EQ(out[1].site, "cold-site");

  /* The same in words. */
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ASSERT_NOT_NULL(f);
  int lines = ame_conflict_report(f, 10);
  ASSERT_EQ(fclose(f), 0);
  ASSERT_NOT_NULL(text);
  ASSERT_GE(lines, 2);
  ASSERT_LE(lines, 10);
  const char *h = strstr(text, "hot-counter");
  const char *k = strstr(text, "cold-word");
  if (h == NULL || k == NULL || h > k)
    fprintf(stderr, "report:\n%s\n", text);
  ASSERT_NOT_NULL(h);
  ASSERT_NOT_NULL(k);
  ASSERT(h < k);  /* the hot spot comes first */
  ASSERT_STR_CONTAINS(text, hot_site);
  ASSERT_STR_CONTAINS(text, "cold-site");
  ASSERT_STR_CONTAINS(text, ame_abort_cause_name(AME_ABORT_READ_LOCKED));
  ASSERT(strstr(text, "XXXX") == NULL);
  free(text);

  /* top = 1: one conflict line, the hot one. */
  text = NULL;
  f = open_memstream(&text, &len);
  ASSERT_NOT_NULL(f);
  ASSERT_EQ(ame_conflict_report(f, 1), 1);
  ASSERT_EQ(fclose(f), 0);
  ASSERT_STR_CONTAINS(text, "hot-counter");
  ASSERT(strstr(text, "cold-word") == NULL);
  free(text);

  /* And to a real file. */
  FILE *tf = tmpfile();
  ASSERT_NOT_NULL(tf);
  ASSERT_GE(ame_conflict_report(tf, 5), 2);
  ASSERT_GT(ftell(tf), 0);
  fclose(tf);
  leave_and_shutdown();
}
