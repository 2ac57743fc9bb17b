/*
** tests/stm/test_privatize.c — ame_tx_privatize and ame_quiesce: after a
** privatizing commit (or a fence) no transaction that could still see the
** memory is running, so plain loads, stores and free() on it are safe; and
** deferred frees (ame_tx_free) never free memory a running transaction can
** still reach.  The stress tests are meant for the ASan and TSan builds too:
** a use after free or a race there is a failure.
*/
#include "stm-test.h"

TEST_IMPL(privatize_basic) {
  ame_tx_t *tx = enter();
  static uintptr_t *shared;
  uintptr_t *block = malloc(4 * sizeof *block);
  ASSERT_NOT_NULL(block);
  /* Publish, then privatize again. */
  AME_ATOMIC(tx) {
    for (int i = 0; i < 4; i++)
      ame_store_word_tx(tx, &block[i], (uintptr_t)i);
    ame_store_ptr_tx(tx, (void **)&shared, block);
  }
  volatile int attempts = 0;
  uintptr_t *volatile mine = NULL;
  AME_ATOMIC(tx) {
    attempts++;
    ame_tx_privatize(tx);
    if (attempts == 1)
      ame_tx_abort(tx);  /* a privatizing attempt may abort like any other */
    mine = ame_load_ptr_tx(tx, (void **)&shared);
    ame_store_ptr_tx(tx, (void **)&shared, NULL);
  }
  ASSERT_EQ(attempts, 2);
  ASSERT_PTR_EQ(mine, block);
  for (int i = 0; i < 4; i++) {
    ASSERT_EQ(mine[i], (uintptr_t)i);  /* plain access from now on */
    mine[i] = 100;
  }
  /* A read-only privatizing transaction, and fences, in one thread. */
  AME_ATOMIC(tx) {
    ame_tx_privatize(tx);
    ASSERT_NULL(ame_load_ptr_tx(tx, (void **)&shared));
  }
  ame_quiesce(tx);
  ame_quiesce(tx);
  free(mine);
  leave_and_shutdown();
}

/* A transaction held open by a helper thread until the test releases it. */
struct holder {
  uintptr_t x;
  atomic_int inside;        /* the holder's transaction is running */
  atomic_int release;       /* set by the test */
  atomic_int ending;        /* the holder's last statement in the block */
  atomic_int fence_done;    /* the fence (or privatizing commit) returned */
  atomic_int ending_at_fence; /* `ending` as seen when the fence returned */
  int privatize;            /* fence by a privatizing commit, not quiesce:
                               1 a writing one, 2 a read-only one */
};

static void *holder_main(void *arg) {
  struct holder *h = arg;
  ame_tx_t *tx = enter();
  AME_ATOMIC(tx) {
    (void)ame_load_word_tx(tx, &h->x);
    atomic_store(&h->inside, 1);
    if (ame_tx_attempt(tx) == 0)
      WAIT_UNTIL(atomic_load(&h->release), 10000);
    atomic_store(&h->ending, 1);
  }
  ame_thread_exit();
  return NULL;
}

static void *fencer_main(void *arg) {
  struct holder *h = arg;
  static uintptr_t y;
  ame_tx_t *tx = enter();
  if (h->privatize == 1) {
    AME_ATOMIC(tx) {
      ame_tx_privatize(tx);
      ame_store_word_tx(tx, &y, 1);
    }
  } else if (h->privatize == 2) {
    /* Privatization by agreement: the memory became private through an
    ** earlier commit (here: the test's own), and this transaction only
    ** reads that it is so. */
    AME_ATOMIC(tx) {
      ame_tx_privatize(tx);
      (void)ame_load_word_tx(tx, &y);
    }
  } else {
    ame_quiesce(tx);
  }
  atomic_store(&h->ending_at_fence, atomic_load(&h->ending));
  atomic_store(&h->fence_done, 1);
  ame_thread_exit();
  return NULL;
}

static void fence_waits(int privatize) {
  enter();
  static struct holder h;
  h.privatize = privatize;
  pthread_t th, tf;
  thread_start(&th, holder_main, &h);
  ASSERT_WAIT(atomic_load(&h.inside), 5000);
  thread_start(&tf, fencer_main, &h);
  sleep_ms(300);
  ASSERT_EQ(atomic_load(&h.fence_done), 0);  /* still waiting for it */
  atomic_store(&h.release, 1);
  ASSERT_WAIT(atomic_load(&h.fence_done), 5000);
  ASSERT_EQ(atomic_load(&h.ending_at_fence), 1);
  thread_join(th);
  thread_join(tf);
  leave_and_shutdown();
}

TEST_IMPL(quiesce_waits_for_running) { fence_waits(0); }

TEST_IMPL(privatize_waits_for_running) { fence_waits(1); }

TEST_IMPL(privatize_readonly_waits) { fence_waits(2); }

/* ------------------------------------------------------------------------
** A shared singly linked list.  Traversers walk it transactionally, check
** every node is live, and count hits in nodes; removers unlink nodes and
** either privatize them (then check, poison and free() them with plain
** accesses) or give them to ame_tx_free.  The transaction that removes a
** node also inserts a new one, so every transaction sees the same length.
** Hits are conserved: those counted in committed traversals equal those
** found in removed nodes plus those left in the list at the end.
*/
#define LIVE 0x11FE11FE11FE11FEULL
#define DEAD 0xDEADDEADDEADDEADULL
enum { LIST_LEN = 32 };

struct lnode {
  uintptr_t magic;          /* LIVE while reachable, DEAD once private */
  uintptr_t hits;           /* incremented by traversers */
  struct lnode *next;
};

struct list_state {
  struct gate gate;
  struct lnode *head;
  uintptr_t removed_hits;   /* transactional (ame_tx_free variant) */
  atomic_ulong private_hits;/* found in privatized nodes */
  atomic_ulong counted_hits;/* committed by traversers */
  atomic_ulong removals;
  atomic_ulong traversals;
  int use_tx_free;          /* the remover's variant */
};

static struct lnode *new_node(void) {
  struct lnode *n = malloc(sizeof *n);
  ASSERT_NOT_NULL(n);
  n->magic = LIVE;
  n->hits = 0;
  n->next = NULL;
  return n;
}

static void *traverser_main(void *arg) {
  struct list_state *s = arg;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed((unsigned)(uintptr_t)pthread_self());
  unsigned long hits = 0, walks = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    unsigned every = 1 + (unsigned)rnd_below(&rs, 8);
    int slow = rnd_below(&rs, 4) == 0;  /* pause on the way */
    volatile unsigned added = 0;
    AME_ATOMIC(tx) {
      added = 0;
      unsigned len = 0;
      for (struct lnode *n = ame_load_ptr_tx(tx, (void **)&s->head); n != NULL;
           n = ame_load_ptr_tx(tx, (void **)&n->next)) {
        ASSERT_EQ(ame_load_word_tx(tx, &n->magic), LIVE);
        if (slow && len % 8 == 4)
          sched_yield();  /* holding n: the remover may take it now */
        ASSERT_EQ(ame_load_word_tx(tx, &n->magic), LIVE);
        if (++len % every == 0) {
          ame_store_word_tx(tx, &n->hits, ame_load_word_tx(tx, &n->hits) + 1);
          added++;
        }
        ASSERT_LE(len, LIST_LEN);
      }
      ASSERT_EQ(len, LIST_LEN);
    }
    hits += added;
    walks++;
  }
  atomic_fetch_add(&s->counted_hits, hits);
  atomic_fetch_add(&s->traversals, walks);
  ame_thread_exit();
  return NULL;
}

static void *remover_main(void *arg) {
  struct list_state *s = arg;
  ame_tx_t *tx = enter();
  uint64_t rs = rnd_seed(1000 + (unsigned)(uintptr_t)pthread_self());
  unsigned long removals = 0;
  gate_wait(&s->gate);
  while (!atomic_load(&s->gate.stop)) {
    unsigned pos = (unsigned)rnd_below(&rs, LIST_LEN);
    struct lnode *volatile victim = NULL;
    struct lnode *volatile fresh = s->use_tx_free ? NULL : new_node();
    AME_ATOMIC(tx) {
      if (!s->use_tx_free)
        ame_tx_privatize(tx);
      struct lnode **link = &s->head;
      for (unsigned i = 0; i < pos; i++) {
        struct lnode *n = ame_load_ptr_tx(tx, (void **)link);
        ASSERT_NOT_NULL(n);
        link = &n->next;
      }
      struct lnode *n = ame_load_ptr_tx(tx, (void **)link);
      ASSERT_NOT_NULL(n);
      ame_store_ptr_tx(tx, (void **)link,
                       ame_load_ptr_tx(tx, (void **)&n->next));
      victim = n;
      if (!s->use_tx_free) {
        /* Insert the fresh node (published by the commit). */
        ame_store_ptr_tx(tx, (void **)&fresh->next,
                         ame_load_ptr_tx(tx, (void **)&s->head));
        ame_store_ptr_tx(tx, (void **)&s->head, fresh);
      } else {
        /* Account for its hits, free it at commit, insert a new node. */
        ame_store_word_tx(tx, &s->removed_hits,
                          ame_load_word_tx(tx, &s->removed_hits) +
                              ame_load_word_tx(tx, &n->hits));
        ame_tx_free(tx, n, (pos & 1) ? sizeof *n : 0);
        struct lnode *m = ame_tx_malloc(tx, sizeof *m);
        ASSERT_NOT_NULL(m);
        m->magic = LIVE;  /* private until the commit publishes it */
        m->hits = 0;
        m->next = ame_load_ptr_tx(tx, (void **)&s->head);
        ame_store_ptr_tx(tx, (void **)&s->head, m);
      }
    }
    if (!s->use_tx_free) {
      /* The node is ours now: plain accesses, no transaction.  Poison it
      ** at once (a transaction still reading it would see DEAD), check
      ** that no late write-back lands on it, then free it. */
      struct lnode *n = victim;
      ASSERT_EQ(n->magic, LIVE);
      uintptr_t h = n->hits;
      n->magic = DEAD;
      n->next = (struct lnode *)(uintptr_t)DEAD;
      for (int i = 0; i < 3; i++) {
        sched_yield();
        ASSERT_EQ(n->hits, h);
        ASSERT_EQ(n->magic, DEAD);
      }
      n->hits = DEAD;
      atomic_fetch_add(&s->private_hits, h);
      free(n);
    }
    removals++;
  }
  atomic_fetch_add(&s->removals, removals);
  ame_thread_exit();
  return NULL;
}

static void list_stress(int use_tx_free, unsigned ntrav, unsigned nrem) {
  enter();
  static struct list_state s;
  s.use_tx_free = use_tx_free;
  for (int i = 0; i < LIST_LEN; i++) {
    struct lnode *n = new_node();
    n->next = s.head;
    s.head = n;
  }
  pthread_t th[8];
  unsigned nt = 0;
  for (unsigned i = 0; i < ntrav; i++)
    thread_start(&th[nt++], traverser_main, &s);
  for (unsigned i = 0; i < nrem; i++)
    thread_start(&th[nt++], remover_main, &s);
  gate_open(&s.gate, (int)nt);
  sleep_ms(stress_ms());
  atomic_store(&s.gate.stop, 1);
  for (unsigned i = 0; i < nt; i++)
    thread_join(th[i]);

  ASSERT_GT(atomic_load(&s.removals), 0);
  ASSERT_GT(atomic_load(&s.traversals), 0);
  uintptr_t in_list = 0;
  unsigned len = 0;
  for (struct lnode *n = s.head, *next; n != NULL; n = next) {
    ASSERT_EQ(n->magic, LIVE);
    in_list += n->hits;
    next = n->next;
    free(n);
    len++;
  }
  ASSERT_EQ(len, LIST_LEN);
  ASSERT_EQ(atomic_load(&s.counted_hits),
            in_list + atomic_load(&s.private_hits) + s.removed_hits);
  leave_and_shutdown();
}

TEST_IMPL(stress_privatize_list) { list_stress(0, 3, 1); }

TEST_IMPL(stress_deferred_free_list) { list_stress(1, 2, 2); }
