/*
** tests/stm/list.h — the one list of ame's STM tests.
**
** Each X(name, timeout) line declares one test: the function test_<name>()
** (written with TEST_IMPL(name) in one of the test_*.c files) and its
** time limit in seconds.  runner.c builds its table from this list, and
** tests/meson.build reads the same lines to register one meson test per
** name, so a test is declared here and nowhere else.  Keep one entry per
** line, in the form X(name, seconds) — meson parses it.
*/
#ifndef AME_TESTS_TEST_LIST_H
#define AME_TESTS_TEST_LIST_H

#define AME_STM_TESTS(X)                                                      \
  /* lifecycle: test_lifecycle.c */                                           \
  X(init_shutdown, 10)                                                        \
  X(init_config, 30)                                                          \
  X(thread_enter_exit, 10)                                                    \
  X(thread_enter_auto_init, 10)                                               \
  X(fork_while_registering, 60)                                               \
  X(fork_inside_transaction, 30)                                              \
  X(descriptor_lines, 10)                                                     \
  X(thread_idle, 20)                                                          \
  X(strerror, 10)                                                             \
  X(misuse_asserts, 20)                                                       \
  /* loads and stores: test_access.c */                                       \
  X(load_store_word, 10)                                                      \
  X(load_store_ptr, 10)                                                       \
  X(load_store_u64_i64, 10)                                                   \
  X(load_store_u32_i32, 10)                                                   \
  X(load_store_u32_halves, 10)                                                \
  X(load_store_mixed_width, 10)                                               \
  X(load_store_double, 10)                                                    \
  X(load_store_float, 10)                                                     \
  /* libame-itm's entry points: test_hooks.c */                               \
  X(hook_enter_resume, 10)                                                    \
  X(hook_store_masked, 10)                                                    \
  X(self_forms, 10)                                                           \
  X(read_after_write, 10)                                                     \
  X(writes_invisible_before_commit, 20)                                       \
  X(prefetch_reads_nothing, 20)                                              \
  X(orecs_far_apart, 30)                                                      \
  X(orecs_keep_order, 10)                                                     \
  /* transactions: test_tx.c */                                               \
  X(atomic_commit_fallthrough, 10)                                            \
  X(atomic_break_continue, 10)                                                \
  X(atomic_nesting_depth, 10)                                                 \
  X(atomic_nested_abort_restarts_outer, 10)                                   \
  X(tx_attempt_counts, 10)                                                    \
  X(tx_abort_discards, 10)                                                    \
  X(tx_save_restores, 10)                                                     \
  X(tx_run_returns, 10)                                                       \
  X(tx_run_nests, 10)                                                         \
  X(tx_set_site, 10)                                                          \
  X(tx_cancel_escalated, 20)                                                  \
  X(tx_abort_escalated, 20)                                                   \
  X(handlers_commit_order, 10)                                                \
  X(handlers_abort_order, 10)                                                 \
  X(handlers_nested, 10)                                                      \
  X(handlers_run_transactions, 10)                                            \
  X(handlers_abort_run_transactions, 20)                                      \
  X(handlers_keep_last_cause, 20)                                             \
  /* what handlers may do: test_handlers.c */                                 \
  X(handlers_privatize_two_threads, 30)                                       \
  X(handlers_quiesce_two_threads, 30)                                         \
  X(handlers_retry_in_handler, 30)                                            \
  X(handlers_abort_escalate_killed, 30)                                       \
  /* allocation: test_alloc.c */                                              \
  X(tx_malloc_commit, 10)                                                     \
  X(tx_malloc_abort_frees, 20)                                                \
  X(tx_calloc, 10)                                                            \
  X(tx_free_abort_noop, 10)                                                   \
  X(tx_free_commit_reclaims, 20)                                              \
  X(tx_malloc_free_same_tx, 10)                                               \
  X(tx_free_thread_exit, 20)                                                  \
  X(tx_free_size_conflicts, 20)                                               \
  X(tx_free_recycles, 10)                                                     \
  X(tx_free_recycle_waits, 20)                                                \
  X(tx_free_scan_reads_starts, 60)                                            \
  /* irrevocability: test_irrevocable.c */                                    \
  X(irrevocable_basic, 10)                                                    \
  X(irrevocable_nested, 10)                                                   \
  X(irrevocable_under_contention, 60)                                         \
  X(irrevocable_exclusive, 60)                                                \
  /* retry: test_retry.c */                                                   \
  X(retry_blocks_until_change, 20)                                            \
  X(retry_read_nothing, 20)                                                   \
  X(retry_long_wait_sleeps, 20)                                               \
  X(retry_read_under_own_lock, 20)                                            \
  X(retry_queue_1p1c, 60)                                                     \
  X(retry_queue_2p2c, 60)                                                     \
  X(retry_after_escalation, 30)                                               \
  /* privatization: test_privatize.c */                                       \
  X(privatize_basic, 10)                                                      \
  X(quiesce_waits_for_running, 20)                                            \
  X(privatize_waits_for_running, 20)                                          \
  X(privatize_readonly_waits, 20)                                             \
  X(stress_privatize_list, 60)                                                \
  X(stress_deferred_free_list, 60)                                            \
  /* statistics: test_stats.c */                                              \
  X(stats_commits, 10)                                                        \
  X(stats_aborts_by_cause, 20)                                                \
  X(stats_conflict_causes, 20)                                                \
  X(stats_irrevocable, 20)                                                    \
  X(stats_total_reset, 20)                                                    \
  X(stats_reset_keeps_pending, 30)                                            \
  X(stats_reset_while_counting, 30)                                           \
  X(abort_cause_name, 10)                                                     \
  X(label_errors, 10)                                                         \
  X(conflict_report, 30)                                                      \
  /* tasks: test_tasks.c */                                                   \
  X(tasks_counter, 30)                                                        \
  X(tasks_tree, 30)                                                           \
  X(tasks_add_in_aborted_tx, 30)                                              \
  X(tasks_unregistered_caller, 30)                                            \
  X(tasks_rerun, 30)                                                          \
  X(tasks_no_thread_slot, 30)                                                 \
  /* ame_cpu_count: test_cpus.c */                                            \
  X(cpus_count_rounding, 10)                                                  \
  X(cpus_count_here, 10)                                                      \
  X(cpus_quota_v2, 10)                                                        \
  X(cpus_quota_v1, 10)                                                        \
  X(cpus_quota_both, 10)                                                      \
  X(cpus_quota_container, 10)                                                 \
  X(cpus_quota_escaped_mount, 10)                                             \
  X(cpus_quota_bad_files, 10)                                                 \
  /* progress and contention management: test_progress.c */                   \
  X(progress_long_reader, 120)                                                \
  X(progress_escalation, 60)                                                  \
  X(backoff_watches_owner, 60)                                                \
  X(snapshot_extension, 20)                                                   \
  X(snapshot_extension_fails, 20)                                             \
  X(backoff_policy, 20)                                                       \
  X(opacity_write_lock_newer, 20)                                             \
  X(claim_abort_new_version, 20)                                              \
  /* the shared heap: test_heap.c */                                          \
  X(heap_create_open, 30)                                                     \
  X(heap_open_refuses, 20)                                                    \
  X(heap_named_address, 30)                                                   \
  X(heap_alloc, 30)                                                           \
  X(heap_reserve_grows, 30)                                                   \
  X(heap_map, 60)                                                             \
  X(heap_queue_counter_log, 20)                                               \
  X(heap_processes, 60)                                                       \
  X(heap_retry_processes, 20)                                                 \
  X(heap_adopt, 20)                                                           \
  X(heap_thread_dies, 30)                                                     \
  X(heap_recover_bytes, 30)                                                   \
  X(heap_enter_while_checked, 30)                                             \
  X(heap_crash, 120)                                                          \
  X(heap_crash_peer, 300)                                                     \
  X(heap_capacity_escalated, 60)                                              \
  X(heap_irrevocable_capacity, 60)                                            \
  X(heap_logs_lazy, 30)                                                       \
  X(heap_blob_reuse_abort, 30)                                                \
  X(heap_reuse_across_classes, 60)                                            \
  X(heap_granules, 30)                                                        \
  X(heap_reuse_other_slot, 60)                                                \
  X(heap_reuse_slot_leftovers, 60)                                            \
  X(heap_blob_over_freed_block, 30)                                           \
  X(heap_blob_over_settled_span, 30)                                          \
  X(heap_blob_aborted_over_settled, 30)                                       \
  X(heap_blob_killed_over_settled, 60)                                        \
  /* randomised stress: test_stress.c */                                      \
  X(stress_counter, 120)                                                      \
  X(stress_bank, 60)                                                          \
  X(stress_bank_hot, 60)                                                      \
  X(stress_opacity, 60)                                                       \
  X(stress_opacity_zombie_ring, 60)                                           \
  X(stress_write_skew, 60)                                                    \
  X(stress_large_read_set, 60)                                                \
  /* concurrent integer sets from bench/intset: test_intset.c */              \
  X(intset_linkedlist, 90)                                                    \
  X(intset_skiplist, 90)                                                      \
  X(intset_hashset, 90)                                                       \
  X(intset_rbtree, 90)

#endif /* AME_TESTS_TEST_LIST_H */
