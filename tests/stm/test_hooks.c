/*
** tests/stm/test_hooks.c — the engine's entry points for libame-itm (GCC's
** TM ABI, itm/): transactions begun with ame__tx_enter() restart by
** calling their resume function instead of longjmp, join (flat nesting)
** and commit with ame__tx_leave(); ame__store_masked() writes exactly the
** bytes of its mask, alone or beside 32-bit and word stores.
*/
#include "stm-test.h"

static jmp_buf resume_env;
static int resumed;
static ame_tx_t *resumed_tx;
static unsigned resumed_depth;

static void resume_here(ame_tx_t *tx) {
  resumed++;
  resumed_tx = tx;
  resumed_depth = ame_tx_depth(tx);
  longjmp(resume_env, 1);
}

TEST_IMPL(hook_enter_resume) {
  ame_tx_t *tx = enter();
  static uintptr_t w;
  resumed = 0;
  if (setjmp(resume_env) == 0) {
    ASSERT_EQ(ame__tx_enter(tx, resume_here, "hooks"), 1);
    ame_store_word_tx(tx, &w, 7);
    ASSERT_EQ(ame__tx_enter(tx, NULL, NULL), 2); /* joins */
    ame_tx_abort(tx);
  }
  /* The abort rolled back and called resume_here at depth 0. */
  ASSERT_EQ(resumed, 1);
  ASSERT_PTR_EQ(resumed_tx, tx);
  ASSERT_EQ(resumed_depth, 0);
  ASSERT_EQ(w, 0);
  /* The next attempt: the abort is counted; leave joins, then commits. */
  ASSERT_EQ(ame__tx_enter(tx, resume_here, "hooks"), 1);
  ASSERT_EQ(ame_tx_attempt(tx), 1);
  ame_store_word_tx(tx, &w, 8);
  ame__tx_enter(tx, NULL, NULL);
  AME_ATOMIC(tx) { /* an AME_ATOMIC block joins it too */
    ASSERT_EQ(ame_tx_depth(tx), 3);
    ame_store_word_tx(tx, &w, ame_load_word_tx(tx, &w) + 1);
  }
  ASSERT_EQ(ame__tx_leave(tx), 1);
  ASSERT_EQ(ame_tx_depth(tx), 1);
  ASSERT_EQ(w, 0);
  ASSERT_EQ(ame__tx_leave(tx), 0);
  ASSERT_EQ(ame_tx_depth(tx), 0);
  ASSERT_EQ(w, 9);
  /* A later AME_ATOMIC restarts by longjmp, not through the old resume. */
  volatile int runs = 0;
  AME_ATOMIC(tx) {
    if (++runs == 1) ame_tx_abort(tx);
    ame_store_word_tx(tx, &w, 10);
  }
  ASSERT_EQ(runs, 2);
  ASSERT_EQ(resumed, 1);
  ASSERT_EQ(w, 10);
  ame_stats_t st;
  ame_stats_thread(tx, &st);
  ASSERT_EQ(st.aborts_by_cause[AME_ABORT_EXPLICIT], 2);
  leave_and_shutdown();
}

TEST_IMPL(hook_store_masked) {
  ame_tx_t *tx = enter();
  static uintptr_t w[2];
  w[0] = 0x1111111111111111ull;
  w[1] = 0x2222222222222222ull;
  AME_ATOMIC(tx) {
    ame__store_masked(tx, &w[0], 0xab00, 0xff00);           /* byte 1 */
    ame__store_masked(tx, &w[0], 0xcdef000000000000ull,
                      0xffff000000000000ull);                /* bytes 6-7 */
    ame__store_masked(tx, &w[1], 0, 0);                      /* nothing */
    /* Reads merge the buffered bytes over memory's, word and 32-bit. */
    ASSERT_EQ(ame_load_word_tx(tx, &w[0]), 0xcdef11111111ab11ull);
    ASSERT_EQ(ame_load_u32_tx(tx, (uint32_t *)&w[0]), 0x1111ab11u);
    ASSERT_EQ(ame_load_u32_tx(tx, (uint32_t *)&w[0] + 1), 0xcdef1111u);
    ASSERT_EQ(w[0], 0x1111111111111111ull); /* nothing written yet */
  }
  ASSERT_EQ(w[0], 0xcdef11111111ab11ull);
  ASSERT_EQ(w[1], 0x2222222222222222ull);
  /* Bytes on top of a 32-bit store and under a later word store. */
  AME_ATOMIC(tx) {
    ame_store_u32_tx(tx, (uint32_t *)&w[1], 0x33333333u);
    ame__store_masked(tx, &w[1], 0x4400000000ull, 0xff00000000ull);
    ASSERT_EQ(ame_load_word_tx(tx, &w[1]), 0x2222224433333333ull);
  }
  ASSERT_EQ(w[1], 0x2222224433333333ull);
  AME_ATOMIC(tx) {
    ame__store_masked(tx, &w[1], 0x55, 0xff);
    ame_store_word_tx(tx, &w[1], 7);
  }
  ASSERT_EQ(w[1], 7);
  leave_and_shutdown();
}
