/*
** bench/stamp/tinystm/stm.h — STAMP's STM interface on TinySTM.
**
** The same macros as bench/stamp/ame/stm.h, on TinySTM's own API with
** explicit descriptors (stm_load_tx, stm_store_tx), as bench/tm.h's
** tinystm variant uses it; floats through TinySTM's wrappers
** (stm_load_float, stm_store_float).  Built against a TinySTM tree built
** outside this repository with its default configuration.
*/
#ifndef AME_BENCH_STAMP_STM_H
#define AME_BENCH_STAMP_STM_H

#include <setjmp.h>
#include <stdint.h>

#include <stm.h>
#include <mod_mem.h>
#include <wrappers.h>

#define STM_THREAD_T struct stm_tx
#define STM_SELF tiny_stamp_self_
#define STM_STARTUP() (stm_init(), mod_mem_init(0))
#define STM_SHUTDOWN() stm_exit()
#define STM_NEW_THREAD() stm_init_thread()
#define STM_INIT_THREAD(t, id) ((void)(t), (void)(id))
#define STM_FREE_THREAD(t) stm_exit_thread_tx(t)
#define STM_MALLOC(size) stm_malloc_tx(STM_SELF, (size))
#define STM_FREE(ptr) stm_free_tx(STM_SELF, (ptr), 0)
#define STM_RESTART() stm_abort_tx(STM_SELF, 0)

#define STM_BEGIN_WR()                                                  \
  {                                                                     \
    sigjmp_buf *tiny_stamp_env_ = stm_start_tx(STM_SELF, (stm_tx_attr_t)0); \
    sigsetjmp(*tiny_stamp_env_, 0);
#define STM_BEGIN_RD() STM_BEGIN_WR()
#define STM_END()            \
    stm_commit_tx(STM_SELF); \
  }

#define STM_READ(var) \
  ((long)stm_load_tx(STM_SELF, (volatile stm_word_t *)(void *)&(var)))
#define STM_READ_P(var) \
  ((void *)stm_load_tx(STM_SELF, (volatile stm_word_t *)(void *)&(var)))
#define STM_READ_F(var) stm_load_float((volatile float *)&(var))
#define STM_WRITE(var, val)                                           \
  stm_store_tx(STM_SELF, (volatile stm_word_t *)(void *)&(var),       \
               (stm_word_t)(val))
#define STM_WRITE_P(var, val) STM_WRITE(var, val)
#define STM_WRITE_F(var, val) stm_store_float((volatile float *)&(var), (val))
#define STM_LOCAL_WRITE(var, val) ({ var = val; var; })
#define STM_LOCAL_WRITE_P(var, val) ({ var = val; var; })
#define STM_LOCAL_WRITE_F(var, val) ({ var = val; var; })

#endif /* AME_BENCH_STAMP_STM_H */
