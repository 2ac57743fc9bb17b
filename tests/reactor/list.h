/*
** tests/reactor/list.h — the one list of ame's reactor tests.
**
** Each X(name, timeout) line declares one test: the function test_<name>()
** (written with TEST_IMPL(name) in one of the test_*.c files) and
** its time limit in seconds.  runner.c, built as run-reactor-tests, makes
** its table from this list, and tests/meson.build reads the same lines to
** register one meson test per name in the suite 'reactor'.  Keep one entry
** per line, in the form X(name, seconds) — meson parses it.
*/
#ifndef AME_TESTS_REACTOR_TEST_LIST_H
#define AME_TESTS_REACTOR_TEST_LIST_H

#define AME_REACTOR_TESTS(X)                                                  \
  /* AME semantics: test_semantics.c */                                       \
  X(counter_tasks_2, 30)                                                      \
  X(counter_tasks_4, 30)                                                      \
  X(conflict_rerun_once, 20)                                                  \
  X(stream_conflicts, 30)                                                     \
  X(stream_order, 30)                                                         \
  X(effects_deferred, 20)                                                     \
  X(effects_aborted_handles, 20)                                              \
  X(broadcast, 30)                                                            \
  /* timers: test_timer.c */                                                  \
  X(timer_order, 20)                                                          \
  X(timer_ties, 20)                                                           \
  X(timer_repeat_cancel, 20)                                                  \
  X(timer_cancel_answers, 20)                                                 \
  X(timer_cancel_aborted, 20)                                                 \
  X(timer_cancel_fired, 20)                                                   \
  /* streams and listeners: test_tcp.c */                                     \
  X(tcp_listen_errors, 20)                                                    \
  X(tcp_connect_refused, 20)                                                  \
  X(tcp_ipv4_ipv6, 20)                                                        \
  X(tcp_reuseport, 20)                                                        \
  X(tcp_reuseport_close, 30)                                                  \
  X(unix_stream, 20)                                                          \
  X(listen_fd_adopt, 20)                                                      \
  X(sockio, 20)                                                               \
  X(streambuf, 20)                                                            \
  X(stream_pause_resume, 20)                                                  \
  X(stream_shutdown, 20)                                                      \
  X(stream_watermarks, 30)                                                    \
  X(stream_watermarks_deferred, 20)                                           \
  X(stream_large_write, 60)                                                   \
  X(stream_close_kinds, 20)                                                   \
  X(stream_close_linger, 30)                                                  \
  X(stream_eof_once, 20)                                                      \
  X(connect_then_shutdown, 20)                                                \
  /* other handles: test_misc.c */                                            \
  X(udp_send_recv, 20)                                                        \
  X(udp_multicast, 20)                                                        \
  X(udp_membership_deferred, 20)                                              \
  X(signal_usr1, 20)                                                          \
  X(signal_before_run, 20)                                                    \
  X(resolve, 30)                                                              \
  X(resolve_errors, 20)                                                       \
  X(poll_pipe, 20)                                                            \
  X(call_foreign_threads, 30)                                                 \
  X(before_poll_hook, 20)                                                     \
  X(attach_step, 20)                                                          \
  X(attach_free, 20)                                                          \
  X(stats_report, 20)                                                         \
  X(reactor_lifecycle, 20)                                                    \
  /* child processes: test_process.c */                                       \
  X(spawn_echo_cat, 20)                                                       \
  X(spawn_errors_kill, 20)                                                    \
  X(spawn_kill_deferred, 20)                                                  \
  X(spawn_stdio_outlives_exit, 20)                                            \
  X(spawn_emfile, 20)                                                         \
  /* faults: test_faults.c */                                                 \
  X(accept_emfile, 30)                                                        \
  X(peer_gone, 20)                                                            \
  X(slow_reader, 30)                                                          \
  X(callback_error, 20)                                                       \
  X(stop_flushes_writes, 30)                                                  \
  X(stop_drain_timeout, 20)                                                   \
  X(free_without_run, 20)                                                     \
  X(stop_before_run, 20)                                                      \
  X(stopped_refuses, 20)

#endif /* AME_TESTS_REACTOR_TEST_LIST_H */
