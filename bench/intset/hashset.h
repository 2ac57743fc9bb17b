/*
** bench/intset/hashset.h — a fixed-size chained hash set of integer keys
** (an "intset"), written once against bench/tm.h.
**
** The bucket array never grows; each bucket is a sorted chain from
** bench/intset/linkedlist.h, so operations on different buckets touch
** disjoint words.  Include bench/tm.h's variant selection first.
**
** Transactional operations (any thread that did TM_THREAD_ENTER):
**     int hashset_contains(tm_tx_t *tx, hashset_t *h, uintptr_t key)
**     int hashset_add(tm_tx_t *tx, hashset_t *h, uintptr_t key)
**     int hashset_remove(tm_tx_t *tx, hashset_t *h, uintptr_t key)
**   Each runs one transaction and returns 1 if the key was found / added /
**   removed, 0 if not, and hashset_add returns -1 if memory ran out.  The
**   *_in forms do the same inside a transaction the caller runs.
**
** Non-transactional (only while no transaction runs on the set):
**     int    hashset_init(hashset_t *h, size_t nbuckets)
**              nbuckets is rounded up to a power of two (0: 1024); return
**              0 or -1 if memory ran out
**     void   hashset_destroy(hashset_t *h)
**     size_t hashset_size(const hashset_t *h)
**     int    hashset_check(const hashset_t *h)
**              0 if every key is in the bucket its hash names and every
**              chain strictly increases (so no key appears twice)
**     void   hashset_foreach(const hashset_t *h,
**                            void (*fn)(uintptr_t, void *), void *arg)
**              keys in bucket order
*/
#ifndef AME_BENCH_HASHSET_H
#define AME_BENCH_HASHSET_H

#include "linkedlist.h"

typedef struct hashset {
  list_node_t **buckets; /* nbuckets chain heads; the array never changes */
  uintptr_t mask;        /* nbuckets - 1 */
} hashset_t;

/* The bucket of key: a 64-bit mixer (so that consecutive keys spread). */
static inline TM_SAFE uintptr_t hashset__bucket(const hashset_t *h,
                                                uintptr_t key) {
  uint64_t x = key;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (uintptr_t)x & h->mask;
}

static inline int hashset_init(hashset_t *h, size_t nbuckets) {
  size_t n = 1;
  if (nbuckets == 0)
    nbuckets = 1024;
  while (n < nbuckets)
    n <<= 1;
  h->buckets = calloc(n, sizeof *h->buckets);
  h->mask = n - 1;
  return h->buckets != NULL ? 0 : -1;
}

static inline void hashset_destroy(hashset_t *h) {
  for (uintptr_t i = 0; i <= h->mask; i++)
    list__chain_free(&h->buckets[i]);
  free(h->buckets);
  h->buckets = NULL;
}

static inline TM_SAFE int hashset_contains_in(tm_tx_t *tx, hashset_t *h,
                                              uintptr_t key) {
  return list__chain_contains(tx, &h->buckets[hashset__bucket(h, key)], key);
}

static inline TM_SAFE int hashset_add_in(tm_tx_t *tx, hashset_t *h,
                                         uintptr_t key) {
  return list__chain_add(tx, &h->buckets[hashset__bucket(h, key)], key);
}

static inline TM_SAFE int hashset_remove_in(tm_tx_t *tx, hashset_t *h,
                                            uintptr_t key) {
  return list__chain_remove(tx, &h->buckets[hashset__bucket(h, key)], key);
}

static inline int hashset_contains(tm_tx_t *tx, hashset_t *h, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = hashset_contains_in(tx, h, key); }
  return r;
}

static inline int hashset_add(tm_tx_t *tx, hashset_t *h, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = hashset_add_in(tx, h, key); }
  return r;
}

static inline int hashset_remove(tm_tx_t *tx, hashset_t *h, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = hashset_remove_in(tx, h, key); }
  return r;
}

static inline size_t hashset_size(const hashset_t *h) {
  size_t n = 0;
  for (uintptr_t i = 0; i <= h->mask; i++)
    for (const list_node_t *c = h->buckets[i]; c != NULL; c = c->next)
      n++;
  return n;
}

struct hashset__where {
  const hashset_t *h;
  uintptr_t bucket;
};

static inline int hashset__in_bucket(uintptr_t key, const void *arg) {
  const struct hashset__where *w = arg;
  return hashset__bucket(w->h, key) == w->bucket;
}

static inline int hashset_check(const hashset_t *h) {
  size_t n = 0;
  if (h->buckets == NULL || (h->mask & (h->mask + 1)) != 0)
    return -1;
  for (uintptr_t i = 0; i <= h->mask; i++) {
    struct hashset__where w = {h, i};
    if (list__chain_check(&h->buckets[i], hashset__in_bucket, &w, &n) != 0)
      return -1;
  }
  return 0;
}

static inline void hashset_foreach(const hashset_t *h,
                                   void (*fn)(uintptr_t key, void *arg),
                                   void *arg) {
  for (uintptr_t i = 0; i <= h->mask; i++)
    for (const list_node_t *c = h->buckets[i]; c != NULL; c = c->next)
      fn(c->key, arg);
}

#endif /* AME_BENCH_HASHSET_H */
