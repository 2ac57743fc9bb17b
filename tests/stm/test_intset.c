/*
** tests/stm/test_intset.c — the benchmark integer sets of bench/intset/
** (linked list, skip list, hash set, red-black tree), built on ame's STM
** through bench/tm.h, hammered by 4 threads.
**
** Every thread logs, per key, how many of its adds and removes succeeded
** (single operations, and pairs composed into one transaction with the
** *_in forms).  At the end the structure must pass its own *_check, and for
** every key: initially-present + successful adds - successful removes is 0
** or 1 and equals the key's final membership.  A lost update, a torn
** structure or a phantom success breaks that.
*/
#include "stm-test.h"

#define TM_AME 1
#include "../bench/intset/hashset.h"
#include "../bench/intset/linkedlist.h"
#include "../bench/intset/rbtree.h"
#include "../bench/intset/skiplist.h"

enum { INTSET_THREADS = 4 };

/* One integer set behind function pointers. */
struct intset_ops {
  const char *name;
  int (*add)(ame_tx_t *, void *, uintptr_t);
  int (*remove)(ame_tx_t *, void *, uintptr_t);
  int (*contains)(ame_tx_t *, void *, uintptr_t);
  int (*add_in)(ame_tx_t *, void *, uintptr_t);
  int (*remove_in)(ame_tx_t *, void *, uintptr_t);
  int (*contains_in)(ame_tx_t *, void *, uintptr_t);
  int (*check)(const void *);
  size_t (*size)(const void *);
  void (*foreach)(const void *, void (*)(uintptr_t, void *), void *);
};

#define INTSET_OPS(prefix, type)                                              \
  static int prefix##_w_add(ame_tx_t *tx, void *s, uintptr_t k) {             \
    return prefix##_add(tx, (type *)s, k);                                    \
  }                                                                           \
  static int prefix##_w_remove(ame_tx_t *tx, void *s, uintptr_t k) {          \
    return prefix##_remove(tx, (type *)s, k);                                 \
  }                                                                           \
  static int prefix##_w_contains(ame_tx_t *tx, void *s, uintptr_t k) {        \
    return prefix##_contains(tx, (type *)s, k);                               \
  }                                                                           \
  static int prefix##_w_add_in(ame_tx_t *tx, void *s, uintptr_t k) {          \
    return prefix##_add_in(tx, (type *)s, k);                                 \
  }                                                                           \
  static int prefix##_w_remove_in(ame_tx_t *tx, void *s, uintptr_t k) {       \
    return prefix##_remove_in(tx, (type *)s, k);                              \
  }                                                                           \
  static int prefix##_w_contains_in(ame_tx_t *tx, void *s, uintptr_t k) {     \
    return prefix##_contains_in(tx, (type *)s, k);                            \
  }                                                                           \
  static int prefix##_w_check(const void *s) {                                \
    return prefix##_check((const type *)s);                                   \
  }                                                                           \
  static size_t prefix##_w_size(const void *s) {                              \
    return prefix##_size((const type *)s);                                    \
  }                                                                           \
  static void prefix##_w_foreach(const void *s,                               \
                                 void (*fn)(uintptr_t, void *), void *arg) {  \
    prefix##_foreach((const type *)s, fn, arg);                               \
  }                                                                           \
  static const struct intset_ops prefix##_ops = {                             \
      #prefix,                                                                \
      prefix##_w_add,                                                         \
      prefix##_w_remove,                                                      \
      prefix##_w_contains,                                                    \
      prefix##_w_add_in,                                                      \
      prefix##_w_remove_in,                                                   \
      prefix##_w_contains_in,                                                 \
      prefix##_w_check,                                                       \
      prefix##_w_size,                                                        \
      prefix##_w_foreach,                                                     \
  };

INTSET_OPS(list, list_t)
INTSET_OPS(skiplist, skiplist_t)
INTSET_OPS(hashset, hashset_t)
INTSET_OPS(rbtree, rbtree_t)

struct intset_run {
  struct gate gate;
  const struct intset_ops *ops;
  void *set;
  uintptr_t nkeys;          /* keys are 1..nkeys */
  unsigned char *initial;   /* initial[k]: k was in the set at the start */
};

struct intset_worker {
  struct intset_run *r;
  unsigned id;
  uint32_t *adds;           /* adds[k]: this thread's successful adds of k */
  uint32_t *removes;        /* removes[k]: ... removes */
  unsigned long ops, composed;
};

static void *intset_worker_main(void *arg) {
  struct intset_worker *w = arg;
  struct intset_run *r = w->r;
  const struct intset_ops *ops = r->ops;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(123 + w->id);
  gate_wait(&r->gate);
  while (!atomic_load(&r->gate.stop)) {
    uintptr_t k = 1 + rnd_below(&rs, r->nkeys);
    unsigned op = (unsigned)rnd_below(&rs, 20);
    if (op < 8) {
      int res = ops->add(tx, r->set, k);
      ASSERT_GE(res, 0);
      w->adds[k] += (uint32_t)res;
    } else if (op < 16) {
      int res = ops->remove(tx, r->set, k);
      ASSERT_GE(res, 0);
      w->removes[k] += (uint32_t)res;
    } else if (op < 18) {
      ASSERT_GE(ops->contains(tx, r->set, k), 0);
    } else {
      /* Move: remove k and add k2 in one transaction, and check within it
      ** that both took effect. */
      uintptr_t k2 = 1 + rnd_below(&rs, r->nkeys);
      volatile int removed = 0, added = 0;
      AME_ATOMIC(tx) {
        removed = ops->remove_in(tx, r->set, k);
        ASSERT_EQ(ops->contains_in(tx, r->set, k), 0);
        added = removed ? ops->add_in(tx, r->set, k2) : 0;
        ASSERT_GE(added, 0);
        if (removed)
          ASSERT_EQ(ops->contains_in(tx, r->set, k2), 1);
      }
      w->removes[k] += (uint32_t)removed;
      w->adds[k2] += (uint32_t)added;
      w->composed++;
    }
    w->ops++;
  }
  ame_thread_exit();
  return NULL;
}

struct membership {
  unsigned char *member;    /* member[k]: k is in the final set */
  uintptr_t nkeys;
};

static void mark_member(uintptr_t key, void *arg) {
  struct membership *m = arg;
  ASSERT_GE(key, 1);
  ASSERT_LE(key, m->nkeys);
  ASSERT_EQ(m->member[key], 0);  /* no key twice */
  m->member[key] = 1;
}

static void intset_stress(const struct intset_ops *ops, void *set,
                          uintptr_t nkeys) {
  ame_tx_t *tx = enter();
  static struct intset_run r;
  r.ops = ops;
  r.set = set;
  r.nkeys = nkeys;
  r.initial = calloc(nkeys + 1, 1);
  ASSERT_NOT_NULL(r.initial);
  /* Half the keys, at random, through the transactional API. */
  uint64_t rs = rnd_seed(5);
  for (uintptr_t k = 1; k <= nkeys; k++) {
    if (rnd_below(&rs, 2)) {
      ASSERT_EQ(ops->add(tx, set, k), 1);
      r.initial[k] = 1;
    }
  }
  ASSERT_EQ(ops->check(set), 0);

  struct intset_worker w[INTSET_THREADS];
  pthread_t th[INTSET_THREADS];
  for (unsigned i = 0; i < INTSET_THREADS; i++) {
    w[i] = (struct intset_worker){.r = &r, .id = i};
    w[i].adds = calloc(nkeys + 1, sizeof *w[i].adds);
    w[i].removes = calloc(nkeys + 1, sizeof *w[i].removes);
    ASSERT_NOT_NULL(w[i].adds);
    ASSERT_NOT_NULL(w[i].removes);
    thread_start(&th[i], intset_worker_main, &w[i]);
  }
  gate_open(&r.gate, INTSET_THREADS);
  sleep_ms(stress_ms());
  atomic_store(&r.gate.stop, 1);
  for (unsigned i = 0; i < INTSET_THREADS; i++)
    thread_join(th[i]);

  ASSERT_EQ(ops->check(set), 0);
  struct membership m = {calloc(nkeys + 1, 1), nkeys};
  ASSERT_NOT_NULL(m.member);
  ops->foreach(set, mark_member, &m);
  size_t members = 0;
  unsigned long total_ops = 0, composed = 0;
  for (uintptr_t k = 1; k <= nkeys; k++) {
    int64_t n = r.initial[k];
    for (unsigned i = 0; i < INTSET_THREADS; i++)
      n += (int64_t)w[i].adds[k] - (int64_t)w[i].removes[k];
    if (n != m.member[k])
      fprintf(stderr, "%s: key %" PRIuPTR ": initial %d, replayed %" PRId64
              ", member %d\n", ops->name, k, r.initial[k], n, m.member[k]);
    ASSERT_GE(n, 0);
    ASSERT_LE(n, 1);
    ASSERT_EQ(n, m.member[k]);
    members += m.member[k];
  }
  ASSERT_EQ(ops->size(set), members);
  for (unsigned i = 0; i < INTSET_THREADS; i++) {
    total_ops += w[i].ops;
    composed += w[i].composed;
    free(w[i].adds);
    free(w[i].removes);
  }
  ASSERT_GT(total_ops, 0);
  ame_stats_t tot;
  ame_stats_total(&tot);
  printf("%s: %lu operations (%lu composed), %zu keys at the end, "
         "%" PRIu64 " commits, %" PRIu64 " aborts\n",
         ops->name, total_ops, composed, members, tot.commits, tot.aborts);
  free(m.member);
  free(r.initial);
  leave_and_shutdown();
}

TEST_IMPL(intset_linkedlist) {
  list_t l;
  list_init(&l);
  intset_stress(&list_ops, &l, 128);
  list_destroy(&l);
}

TEST_IMPL(intset_skiplist) {
  skiplist_t s;
  ASSERT_EQ(skiplist_init(&s, 1024), 0);
  intset_stress(&skiplist_ops, &s, 1024);
  skiplist_destroy(&s);
}

TEST_IMPL(intset_hashset) {
  hashset_t h;
  ASSERT_EQ(hashset_init(&h, 64), 0);  /* chains of ~8: real conflicts */
  intset_stress(&hashset_ops, &h, 1024);
  hashset_destroy(&h);
}

TEST_IMPL(intset_rbtree) {
  rbtree_t t;
  rbtree_init(&t);
  intset_stress(&rbtree_ops, &t, 1024);
  rbtree_destroy(&t);
}
