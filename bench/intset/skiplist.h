/*
** bench/intset/skiplist.h — a skip list of integer keys (an "intset"),
** written once against bench/tm.h.
**
** A node's height is a function of its key (a hash with geometric
** distribution, p = 1/2), so operations need no random-number state and an
** aborted attempt re-runs identically.  The number of levels is fixed at
** init from a size hint.  Include bench/tm.h's variant selection first.
**
** Transactional operations (any thread that did TM_THREAD_ENTER):
**     int skiplist_contains(tm_tx_t *tx, skiplist_t *s, uintptr_t key)
**     int skiplist_add(tm_tx_t *tx, skiplist_t *s, uintptr_t key)
**     int skiplist_remove(tm_tx_t *tx, skiplist_t *s, uintptr_t key)
**   Each runs one transaction and returns 1 if the key was found / added /
**   removed, 0 if not, and skiplist_add returns -1 if memory ran out.  The
**   *_in forms do the same inside a transaction the caller runs.
**
** Non-transactional (only while no transaction runs on the list):
**     int    skiplist_init(skiplist_t *s, size_t size_hint)
**              levels = ceil(log2(size_hint)) + 1, within [4, 32];
**              return 0 or -1 if memory ran out
**     void   skiplist_destroy(skiplist_t *s)
**     size_t skiplist_size(const skiplist_t *s)
**     int    skiplist_check(const skiplist_t *s)
**              0 if every level strictly increases, every node's height is
**              within [1, levels], every level is a sublist of the level
**              below it, and a node is on level i exactly if its height
**              is > i
**     void   skiplist_foreach(const skiplist_t *s,
**                             void (*fn)(uintptr_t, void *), void *arg)
**              keys in increasing order
*/
#ifndef AME_BENCH_SKIPLIST_H
#define AME_BENCH_SKIPLIST_H

#include "../tm.h"

#define SKIPLIST_MAX_LEVELS 32

typedef struct skiplist_node {
  uintptr_t key;                 /* never changes while linked */
  uintptr_t height;              /* levels it is on: next[0..height-1] */
  struct skiplist_node *next[];  /* successor on each level */
} skiplist_node_t;

typedef struct skiplist {
  skiplist_node_t *head; /* sentinel (no key), `levels` high; constant */
  uintptr_t levels;      /* constant after init */
} skiplist_t;

/* The height of key's node: 1 + trailing zeros of a hash, capped. */
static inline TM_SAFE uintptr_t skiplist__height(const skiplist_t *s,
                                                 uintptr_t key) {
  uint64_t x = key + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  x |= 1ull << (s->levels - 1);
  return 1 + (uintptr_t)__builtin_ctzll(x);
}

static inline int skiplist_init(skiplist_t *s, size_t size_hint) {
  uintptr_t levels = 1;
  while (levels < SKIPLIST_MAX_LEVELS &&
         ((size_t)1 << (levels - 1)) < size_hint)
    levels++;
  if (levels < 4)
    levels = 4;
  s->levels = levels;
  s->head = calloc(1, sizeof *s->head + levels * sizeof(skiplist_node_t *));
  if (s->head == NULL)
    return -1;
  s->head->height = levels;
  return 0;
}

static inline void skiplist_destroy(skiplist_t *s) {
  skiplist_node_t *n = s->head;
  while (n != NULL) {
    skiplist_node_t *next = n->next[0];
    free(n);
    n = next;
  }
  s->head = NULL;
}

/* Find, on every level, the last node with a key < key (preds) and its
** successor (succs).  Return the level-0 successor (the first node with a
** key >= key, or NULL) and store its key, or 0, in *kp.  With preds NULL,
** stop as soon as a node with key == key is met. */
static inline TM_SAFE skiplist_node_t *
skiplist__find(tm_tx_t *tx, skiplist_t *s, uintptr_t key,
               skiplist_node_t **preds, skiplist_node_t **succs,
               uintptr_t *kp) {
  skiplist_node_t *pred = s->head, *cur = NULL;
  skiplist_node_t *known = NULL; /* the last node whose key we loaded */
  uintptr_t known_key = 0, k = 0;
  for (int i = (int)s->levels - 1; i >= 0; i--) {
    cur = TM_LOAD_PTR(tx, &pred->next[i]);
    while (cur != NULL) {
      if (cur == known) {
        k = known_key; /* met again one level down: no second load */
      } else {
        k = TM_LOAD_WORD(tx, &cur->key);
        known = cur;
        known_key = k;
      }
      if (k >= key)
        break;
      pred = cur;
      cur = TM_LOAD_PTR(tx, &cur->next[i]);
    }
    if (preds != NULL) {
      preds[i] = pred;
      succs[i] = cur;
    } else if (cur != NULL && k == key) {
      break;
    }
  }
  *kp = cur != NULL ? k : 0;
  return cur;
}

static inline TM_SAFE int skiplist_contains_in(tm_tx_t *tx, skiplist_t *s,
                                               uintptr_t key) {
  uintptr_t k;
  skiplist_node_t *n = skiplist__find(tx, s, key, NULL, NULL, &k);
  return n != NULL && k == key;
}

static inline TM_SAFE int skiplist_add_in(tm_tx_t *tx, skiplist_t *s,
                                          uintptr_t key) {
  skiplist_node_t *preds[SKIPLIST_MAX_LEVELS], *succs[SKIPLIST_MAX_LEVELS];
  uintptr_t k;
  skiplist_node_t *n = skiplist__find(tx, s, key, preds, succs, &k);
  if (n != NULL && k == key)
    return 0;
  uintptr_t h = skiplist__height(s, key);
  n = TM_MALLOC(tx, sizeof *n + h * sizeof(skiplist_node_t *));
  if (n == NULL)
    return -1;
  n->key = key; /* not yet reachable: plain stores */
  n->height = h;
  for (uintptr_t i = 0; i < h; i++)
    n->next[i] = succs[i];
  for (uintptr_t i = 0; i < h; i++)
    TM_STORE_PTR(tx, &preds[i]->next[i], n);
  return 1;
}

static inline TM_SAFE int skiplist_remove_in(tm_tx_t *tx, skiplist_t *s,
                                             uintptr_t key) {
  skiplist_node_t *preds[SKIPLIST_MAX_LEVELS], *succs[SKIPLIST_MAX_LEVELS];
  uintptr_t k;
  skiplist_node_t *n = skiplist__find(tx, s, key, preds, succs, &k);
  if (n == NULL || k != key)
    return 0;
  uintptr_t h = TM_LOAD_WORD(tx, &n->height);
  /* On every level below its height, n is preds[i]'s successor. */
  for (uintptr_t i = 0; i < h; i++)
    TM_STORE_PTR(tx, &preds[i]->next[i], TM_LOAD_PTR(tx, &n->next[i]));
  TM_FREE(tx, n, sizeof *n + h * sizeof(skiplist_node_t *));
  return 1;
}

static inline int skiplist_contains(tm_tx_t *tx, skiplist_t *s,
                                    uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = skiplist_contains_in(tx, s, key); }
  return r;
}

static inline int skiplist_add(tm_tx_t *tx, skiplist_t *s, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = skiplist_add_in(tx, s, key); }
  return r;
}

static inline int skiplist_remove(tm_tx_t *tx, skiplist_t *s, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = skiplist_remove_in(tx, s, key); }
  return r;
}

static inline size_t skiplist_size(const skiplist_t *s) {
  size_t n = 0;
  for (const skiplist_node_t *c = s->head->next[0]; c != NULL; c = c->next[0])
    n++;
  return n;
}

static inline int skiplist_check(const skiplist_t *s) {
  size_t want[SKIPLIST_MAX_LEVELS] = {0}; /* level-0 nodes taller than i */
  if (s->head == NULL || s->levels < 1 || s->levels > SKIPLIST_MAX_LEVELS ||
      s->head->height != s->levels)
    return -1;
  for (uintptr_t i = 0; i < s->levels; i++) {
    /* below walks level i-1 alongside level i (sublist check). */
    const skiplist_node_t *below = i > 0 ? s->head->next[i - 1] : NULL;
    size_t count = 0;
    for (const skiplist_node_t *c = s->head->next[i]; c != NULL;
         c = c->next[i]) {
      if (c->height <= i || c->height > s->levels)
        return -1;
      if (c->next[i] != NULL && c->next[i]->key <= c->key)
        return -1; /* not strictly increasing (this also rules out cycles) */
      if (i == 0) {
        for (uintptr_t l = 0; l < c->height; l++)
          want[l]++;
      } else {
        while (below != NULL && below != c && below->key < c->key)
          below = below->next[i - 1];
        if (below != c)
          return -1; /* c is on level i but not on level i-1 */
      }
      count++;
    }
    if (count != want[i])
      return -1; /* a node is missing from a level below its height */
  }
  return 0;
}

static inline void skiplist_foreach(const skiplist_t *s,
                                    void (*fn)(uintptr_t key, void *arg),
                                    void *arg) {
  for (const skiplist_node_t *c = s->head->next[0]; c != NULL; c = c->next[0])
    fn(c->key, arg);
}

#endif /* AME_BENCH_SKIPLIST_H */
