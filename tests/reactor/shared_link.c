/*
** tests/reactor/shared_link.c — a program linked the way an installed one
** is: against libame-reactor.so and libame.so, through the public headers
** alone (no AME_STM_INLINE, no internals).  meson runs it as the test
** reactor:shared_link.
**
** It checks what the two shared libraries promise together:
**  - libame-reactor.so exports its API and none of its internals (ame__*);
**  - it carries no STM of its own: every STM function looked up through it
**    is libame.so's (a copy inside it would put a second set of the STM's
**    hidden globals in the process, used by whichever copy's code runs);
**  - the program runs the reactor and transactions of its own (a task run
**    by ame_tasks_run, which only libame has) on that STM: the statistics
**    count both, and both updates of one word land.
*/
#include "task.h"

#include <ame/reactor.h>

#include <dlfcn.h>

static uintptr_t g_word; /* transactional */
static ame_reactor_t *g_r;

static int call_cb(ame_tx_t *tx, void *arg) {
  (void)arg;
  ame_store_word_tx(tx, &g_word, ame_load_word_tx(tx, &g_word) + 1);
  ame_reactor_stop(g_r);
  return 0;
}

static void task_cb(ame_tx_t *tx, void *arg) {
  (void)arg;
  ame_store_word_tx(tx, &g_word, ame_load_word_tx(tx, &g_word) + 1);
}

static void check_exports(void) {
  void *reactor = dlopen("libame-reactor.so.0", RTLD_NOW | RTLD_NOLOAD);
  void *stm = dlopen("libame.so.0", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NOT_NULL(reactor);
  ASSERT_NOT_NULL(stm);
  /* The API is the reactor's own. */
  static const char *const api[] = {"ame_reactor_new", "ame_stream_write",
                                    "ame_timer_start", "ame_poll_start",
                                    "ame_spawn"};
  for (size_t i = 0; i < sizeof api / sizeof *api; i++) {
    ASSERT_NOT_NULL(dlsym(reactor, api[i]));
    ASSERT_NULL(dlsym(stm, api[i]));
  }
  /* Internals stay inside. */
  static const char *const internal[] = {
      "ame__current", "ame__handle_unref", "ame__op_new",  "ame__op_submit",
      "ame__publish", "ame__log",          "ame__job_push", "ame__close_uv",
      "ame__stream_adopt_fd"};
  for (size_t i = 0; i < sizeof internal / sizeof *internal; i++)
    if (dlsym(reactor, internal[i]) != NULL)
      AME_TEST_FAIL_("libame-reactor.so exports %s", internal[i]);
  /* A lookup through the reactor finds the STM in libame.so: the reactor
  ** defines none of it (dlsym searches the object, then what it needs). */
  static const char *const stm_api[] = {
      "ame_thread_enter", "ame_tx_on_commit", "ame_tx_free",
      "ame_stats_total",  "ame_self",         "ame__frame_begin"};
  for (size_t i = 0; i < sizeof stm_api / sizeof *stm_api; i++) {
    void *via_reactor = dlsym(reactor, stm_api[i]);
    void *in_stm = dlsym(stm, stm_api[i]);
    ASSERT_NOT_NULL(in_stm);
    if (via_reactor != in_stm)
      AME_TEST_FAIL_("%s: libame-reactor.so has a copy of its own",
                     stm_api[i]);
  }
  dlclose(reactor);
  dlclose(stm);
}

int main(void) {
  check_exports();

  ame_stats_t s0, s1, s2;
  ame_stats_total(&s0);
  ame_reactor_config_t cfg = {.workers = 2};
  ASSERT_EQ(ame_reactor_new(&g_r, &cfg), 0);
  ASSERT_EQ(ame_reactor_call(g_r, call_cb, NULL), 0);
  ASSERT_EQ(ame_reactor_run(g_r), 0);
  ame_reactor_free(g_r);
  ame_stats_total(&s1);
  ASSERT_GT(s1.commits, s0.commits); /* the reactor's callback */

  ame_tasks_t *q = ame_tasks_new();
  ASSERT_NOT_NULL(q);
  ASSERT_EQ(ame_tasks_add(q, NULL, task_cb, NULL), 0);
  ASSERT_EQ(ame_tasks_run(q, 1), 0);
  ASSERT_EQ(ame_tasks_done(q), 1);
  ame_tasks_free(q);
  ame_stats_total(&s2);
  ASSERT_GT(s2.commits, s1.commits); /* the task, on the same STM */

  ame_tx_t *tx = ame_thread_enter();
  ASSERT_NOT_NULL(tx);
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) { v = ame_load_word_tx(tx, &g_word); }
  ame_thread_exit();
  ASSERT_EQ(v, 2);
  ame_stm_shutdown();
  printf("ok: libame-reactor.so exports its API only and shares libame.so's "
         "STM\n");
  return 0;
}
