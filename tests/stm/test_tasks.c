/*
** tests/stm/test_tasks.c — the thread-less task API: ame_tasks_new,
** ame_tasks_add, ame_tasks_run, ame_tasks_done, ame_tasks_free.  Every task
** runs as one transaction; tasks may add tasks (only if their transaction
** commits); the outcome is that of some serial order.
*/
#include "stm-test.h"

static uintptr_t counter;
static ame_tasks_t *queue;

static void inc_task(ame_tx_t *tx, void *arg) {
  (void)arg;
  ASSERT_NOT_NULL(tx);
  ASSERT_PTR_EQ(ame_self(), tx);
  ASSERT_GE(ame_tx_depth(tx), 1);  /* inside its transaction */
  ame_store_word_tx(tx, &counter, ame_load_word_tx(tx, &counter) + 1);
}

TEST_IMPL(tasks_counter) {
  ame_tx_t *tx = enter();
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  const unsigned threads[] = {1, 2, 4};
  uintptr_t expect = 0;
  for (unsigned r = 0; r < 3; r++) {
    enum { N = 5000 };
    for (int i = 0; i < N; i++)  /* outside a transaction: added now */
      ASSERT_EQ(ame_tasks_add(queue, tx, inc_task, NULL), 0);
    ASSERT_EQ(ame_tasks_run(queue, threads[r]), 0);
    expect += N;
    ASSERT_EQ(ame_tasks_done(queue), N);
    ASSERT_EQ(tx_get(tx, &counter), expect);
  }
  ame_tasks_free(queue);
  leave_and_shutdown();
}

/* A binary tree of tasks: each adds two children until depth D. */
enum { TREE_DEPTH = 11 };  /* 2^12 - 1 = 4095 tasks */

static void tree_task(ame_tx_t *tx, void *arg) {
  uintptr_t depth = (uintptr_t)arg;
  ame_store_word_tx(tx, &counter, ame_load_word_tx(tx, &counter) + 1);
  if (depth < TREE_DEPTH) {
    ASSERT_EQ(ame_tasks_add(queue, tx, tree_task, (void *)(depth + 1)), 0);
    ASSERT_EQ(ame_tasks_add(queue, tx, tree_task, (void *)(depth + 1)), 0);
  }
}

TEST_IMPL(tasks_tree) {
  ame_tx_t *tx = enter();
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  const unsigned threads[] = {1, 2, 4};
  const uintptr_t n = (1u << (TREE_DEPTH + 1)) - 1;
  for (unsigned r = 0; r < 3; r++) {
    tx_set(tx, &counter, 0);
    ASSERT_EQ(ame_tasks_add(queue, NULL, tree_task, (void *)(uintptr_t)0), 0);
    ASSERT_EQ(ame_tasks_run(queue, threads[r]), 0);
    ASSERT_EQ(ame_tasks_done(queue), n);
    ASSERT_EQ(tx_get(tx, &counter), n);
  }
  ame_tasks_free(queue);
  leave_and_shutdown();
}

/* A parent adds a child, then its first attempt aborts (explicitly, or on
** a conflict with the other parents): the child of an aborted attempt is
** never added. */
static uintptr_t parents, children;

static void child_task(ame_tx_t *tx, void *arg) {
  (void)arg;
  ame_store_word_tx(tx, &children, ame_load_word_tx(tx, &children) + 1);
}

static void parent_task(ame_tx_t *tx, void *arg) {
  (void)arg;
  ASSERT_EQ(ame_tasks_add(queue, tx, child_task, NULL), 0);
  ame_store_word_tx(tx, &parents, ame_load_word_tx(tx, &parents) + 1);
  if (ame_tx_attempt(tx) == 0)
    ame_tx_abort(tx);
  ASSERT_EQ(ame_tasks_add(queue, tx, child_task, NULL), 0);
}

TEST_IMPL(tasks_add_in_aborted_tx) {
  ame_tx_t *tx = enter();
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  enum { P = 500 };
  const unsigned threads[] = {1, 2, 4};
  for (unsigned r = 0; r < 3; r++) {
    tx_set(tx, &parents, 0);
    tx_set(tx, &children, 0);
    for (int i = 0; i < P; i++)
      ASSERT_EQ(ame_tasks_add(queue, tx, parent_task, NULL), 0);
    ASSERT_EQ(ame_tasks_run(queue, threads[r]), 0);
    ASSERT_EQ(ame_tasks_done(queue), 3 * P);  /* P parents, 2P children */
    ASSERT_EQ(tx_get(tx, &parents), P);
    ASSERT_EQ(tx_get(tx, &children), 2 * P);
  }

  /* From an ordinary transaction of this thread: added at its commit only,
  ** once for the attempt that committed. */
  volatile int attempts = 0;
  tx_set(tx, &children, 0);
  AME_ATOMIC(tx) {
    attempts++;
    ASSERT_EQ(ame_tasks_add(queue, tx, child_task, NULL), 0);
    if (attempts < 3)
      ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 3);
  ASSERT_EQ(tx_get(tx, &children), 0);  /* not run yet: only queued */
  ASSERT_EQ(ame_tasks_run(queue, 2), 0);
  ASSERT_EQ(ame_tasks_done(queue), 1);
  ASSERT_EQ(tx_get(tx, &children), 1);
  ame_tasks_free(queue);
  leave_and_shutdown();
}

TEST_IMPL(tasks_unregistered_caller) {
  /* The calling thread never registered; ame_tasks_run registers what it
  ** needs and leaves the caller as it found it. */
  ASSERT_NULL(ame_self());
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  for (int i = 0; i < 3000; i++)
    ASSERT_EQ(ame_tasks_add(queue, NULL, inc_task, NULL), 0);
  ASSERT_EQ(ame_tasks_run(queue, 2), 0);
  ASSERT_EQ(ame_tasks_done(queue), 3000);
  ASSERT_NULL(ame_self());
  ASSERT_EQ(counter, 3000);  /* every worker has ended: plain read */
  ame_tasks_free(queue);
  ame_stm_shutdown();
}

TEST_IMPL(tasks_rerun) {
  ame_tx_t *tx = enter();
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  ASSERT_EQ(ame_tasks_done(queue), 0);
  ASSERT_EQ(ame_tasks_run(queue, 2), 0);  /* empty: returns at once */
  ASSERT_EQ(ame_tasks_done(queue), 0);
  for (int i = 0; i < 100; i++)
    ASSERT_EQ(ame_tasks_add(queue, tx, inc_task, NULL), 0);
  ASSERT_EQ(ame_tasks_run(queue, 0), 0);  /* one thread per CPU */
  ASSERT_EQ(ame_tasks_done(queue), 100);
  for (int i = 0; i < 7; i++)
    ASSERT_EQ(ame_tasks_add(queue, tx, inc_task, NULL), 0);
  ASSERT_EQ(ame_tasks_run(queue, 4), 0);
  ASSERT_EQ(ame_tasks_done(queue), 7);    /* the last run only */
  ASSERT_EQ(tx_get(tx, &counter), 107);
  ame_tasks_free(queue);
  /* A queue freed with tasks still in it frees them (LeakSanitizer). */
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  for (int i = 0; i < 10; i++)
    ASSERT_EQ(ame_tasks_add(queue, tx, inc_task, NULL), 0);
  ame_tasks_free(queue);
  leave_and_shutdown();
}

/* No thread can register (the thread table is full and the caller is not
** in it): the run cannot run a task, and says so; the tasks stay queued
** for a run that can. */
static atomic_int slot_taken, slot_release;

static void *slot_holder(void *arg) {
  (void)arg;
  ame_tx_t *tx = enter();
  (void)tx;
  atomic_store(&slot_taken, 1);
  while (!atomic_load(&slot_release)) sleep_ms(1);
  ame_thread_exit();
  return NULL;
}

TEST_IMPL(tasks_no_thread_slot) {
  ame_stm_config_t cfg = {.max_threads = 1};
  ASSERT_EQ(ame_stm_init(&cfg), 0);
  pthread_t t;
  thread_start(&t, slot_holder, NULL);
  ASSERT_WAIT(atomic_load(&slot_taken), 5000);
  ASSERT_NULL(ame_thread_enter()); /* the table is full */
  counter = 0;
  queue = ame_tasks_new();
  ASSERT_NOT_NULL(queue);
  for (int i = 0; i < 5; i++)
    ASSERT_EQ(ame_tasks_add(queue, NULL, inc_task, NULL), 0);
  ASSERT_EQ(ame_tasks_run(queue, 2), -ENOSPC);
  ASSERT_EQ(ame_tasks_done(queue), 0);
  atomic_store(&slot_release, 1);
  thread_join(t);
  ASSERT_EQ(ame_tasks_run(queue, 2), 0); /* they were kept */
  ASSERT_EQ(ame_tasks_done(queue), 5);
  ASSERT_EQ(counter, 5);
  ame_tasks_free(queue);
  ame_stm_shutdown();
}
