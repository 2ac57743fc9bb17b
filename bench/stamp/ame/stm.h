/*
** bench/stamp/ame/stm.h — STAMP's STM interface on ame.
**
** STAMP (the Stanford transactional applications, fetched and built
** outside this repository: bench/README.md) reaches its STM through the
** TL2-style STM_* macros of a header named stm.h, which its lib/tm.h
** includes when built with -DSTM.  This is that header for ame: one
** descriptor per thread (STM_SELF, declared by TM_THREAD_ENTER), a
** transaction from STM_BEGIN_WR() to STM_END() restarting at a setjmp in
** its own scope, word loads and stores through ame's API (the inlined
** load path: build with -DAME_STM_INLINE), floats as 32-bit accesses
** (ame_load_float_tx).
*/
#ifndef AME_BENCH_STAMP_STM_H
#define AME_BENCH_STAMP_STM_H

#include <setjmp.h>
#include <stdint.h>

#include "ame/stm.h"

#define STM_THREAD_T ame_tx_t
#define STM_SELF ame_stamp_self_
#define STM_STARTUP() ame_stm_init(NULL)
#define STM_SHUTDOWN() ame_stm_shutdown()
#define STM_NEW_THREAD() ame_thread_enter()
#define STM_INIT_THREAD(t, id) ((void)(t), (void)(id))
#define STM_FREE_THREAD(t) ((void)(t), ame_thread_exit())
#define STM_MALLOC(size) ame_tx_malloc(STM_SELF, (size))
#define STM_FREE(ptr) ame_tx_free(STM_SELF, (ptr), 0)
#define STM_RESTART() ame_tx_abort(STM_SELF)

#define STM_BEGIN_WR()                                                   \
  {                                                                      \
    jmp_buf ame_stamp_env_;                                              \
    setjmp(ame_stamp_env_);                                              \
    ame_tx_begin(STM_SELF, &ame_stamp_env_, __FILE__ ":" AME__STR(__LINE__));
#define STM_BEGIN_RD() STM_BEGIN_WR()
#define STM_END()           \
    ame_tx_commit(STM_SELF); \
  }

#define STM_READ(var) \
  ((long)ame_load_i64_tx(STM_SELF, (const int64_t *)(const void *)&(var)))
#define STM_READ_P(var) \
  ame_load_ptr_tx(STM_SELF, (void *const *)(const void *)&(var))
#define STM_READ_F(var) ame_load_float_tx(STM_SELF, &(var))
#define STM_WRITE(var, val)                                        \
  ame_store_word_tx(STM_SELF, (uintptr_t *)(void *)&(var),         \
                    (uintptr_t)(val))
#define STM_WRITE_P(var, val) \
  ame_store_ptr_tx(STM_SELF, (void **)(void *)&(var), (void *)(val))
#define STM_WRITE_F(var, val) ame_store_float_tx(STM_SELF, &(var), (val))
#define STM_LOCAL_WRITE(var, val) ({ var = val; var; })
#define STM_LOCAL_WRITE_P(var, val) ({ var = val; var; })
#define STM_LOCAL_WRITE_F(var, val) ({ var = val; var; })

#endif /* AME_BENCH_STAMP_STM_H */
