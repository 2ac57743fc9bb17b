/*
** tests/itm/list.h — the one list of libame-itm's tests (GCC's
** transactional memory ABI on ame), in the form of tests/stm/list.h.
** test_abi.c calls the _ITM_* functions directly; test_gnutm.c is
** compiled with -fgnu-tm and uses __transaction_atomic.
*/
#ifndef AME_TESTS_ITM_LIST_H
#define AME_TESTS_ITM_LIST_H

#define AME_ITM_TESTS(X)                                                      \
  /* the ABI called directly: test_abi.c */                                   \
  X(itm_begin_commit, 10)                                                     \
  X(itm_loads_stores, 10)                                                     \
  X(itm_unaligned, 10)                                                        \
  X(itm_abort_restores, 10)                                                   \
  X(itm_bytes_concurrent, 60)                                                 \
  X(itm_memcpy_memmove_memset, 10)                                            \
  X(itm_log, 10)                                                              \
  X(itm_cancel_and_actions, 10)                                               \
  X(itm_retry, 10)                                                            \
  X(itm_irrevocable, 10)                                                      \
  X(itm_serial_excludes, 60)                                                  \
  X(itm_nested, 10)                                                           \
  X(itm_inside_ame_atomic, 10)                                                \
  X(itm_malloc_free, 10)                                                      \
  X(itm_cxx_operators, 10)                                                    \
  X(itm_clone_tables, 10)                                                     \
  X(itm_stats_and_site, 30)                                                   \
  X(itm_site_table, 10)                                                       \
  X(itm_refused, 10)                                                          \
  X(itm_undo_order, 10)                                                       \
  X(itm_serial_commit_action, 30)                                             \
  X(itm_actions_begin_transactions, 30)                                       \
  /* __transaction_atomic programs: test_gnutm.c */                           \
  X(gnutm_types, 10)                                                          \
  X(gnutm_cancel_nested, 10)                                                  \
  X(gnutm_relaxed_serial, 10)                                                 \
  X(gnutm_indirect_calls, 10)                                                 \
  X(gnutm_bytes_concurrent, 60)                                               \
  X(gnutm_counter_concurrent, 60)                                             \
  X(gnutm_user_actions, 30)                                                   \
  X(gnutm_stack_shared, 60)                                                   \
  X(gnutm_stack_copy_shared, 30)

#endif /* AME_TESTS_ITM_LIST_H */
