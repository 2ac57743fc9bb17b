/*
** tests/reactor-test-list.h — the one list of ame's reactor tests.
**
** Each X(name, timeout) line declares one test: the function test_<name>()
** (written with TEST_IMPL(name) in one of the test-reactor-*.c files) and
** its time limit in seconds.  runner.c, built as run-reactor-tests, makes
** its table from this list, and tests/meson.build reads the same lines to
** register one meson test per name in the suite 'reactor'.  Keep one entry
** per line, in the form X(name, seconds) — meson parses it.
*/
#ifndef AME_TESTS_REACTOR_TEST_LIST_H
#define AME_TESTS_REACTOR_TEST_LIST_H

#define AME_REACTOR_TESTS(X)                                                  \
  /* AME semantics: test-reactor-semantics.c */                               \
  X(counter_tasks_2, 30)                                                      \
  X(counter_tasks_4, 30)                                                      \
  X(stream_conflicts, 30)                                                     \
  X(stream_order, 30)                                                         \
  X(effects_deferred, 20)                                                     \
  X(effects_aborted_handles, 20)                                              \
  /* timers: test-reactor-timer.c */                                          \
  X(timer_order, 20)                                                          \
  X(timer_ties, 20)                                                           \
  X(timer_repeat_cancel, 20)                                                  \
  X(timer_cancel_answers, 20)                                                 \
  X(timer_cancel_aborted, 20)

#endif /* AME_TESTS_REACTOR_TEST_LIST_H */
