/*
** bench/intset/linkedlist.h — a sorted singly linked list of integer keys
** (an "intset"), written once against bench/tm.h.
**
** Include bench/tm.h's variant selection first (define TM_AME, TM_ITM,
** TM_MUTEX or TM_SEQ, or nothing for ame).  Every function is static inline.
**
** Transactional operations (any thread that did TM_THREAD_ENTER):
**     int list_contains(tm_tx_t *tx, list_t *l, uintptr_t key)
**     int list_add(tm_tx_t *tx, list_t *l, uintptr_t key)
**     int list_remove(tm_tx_t *tx, list_t *l, uintptr_t key)
**   Each runs one transaction and returns 1 if the key was found / added /
**   removed, 0 if not (already present / absent), and list_add returns -1
**   if memory ran out.  The *_in forms (list_contains_in, ...) do the same
**   inside a transaction the caller runs (TM_ATOMIC), so that several
**   operations compose into one.
**
** Non-transactional (only while no transaction runs on the list):
**     void   list_init(list_t *l)
**     void   list_destroy(list_t *l)           frees every node
**     size_t list_size(const list_t *l)
**     int    list_check(const list_t *l)       0 if keys strictly increase
**     void   list_foreach(const list_t *l, void (*fn)(uintptr_t, void *),
**                         void *arg)           keys in increasing order
**
** Layout: no sentinel; the list is a word pointing to the first node.  The
** chain functions (list__seek, list__chain_*) work on any such word and are
** shared with bench/intset/hashset.h, whose buckets are sorted chains.
*/
#ifndef AME_BENCH_LINKEDLIST_H
#define AME_BENCH_LINKEDLIST_H

#include "../tm.h"

typedef struct list_node {
  uintptr_t key;          /* never changes while the node is linked */
  struct list_node *next; /* next node, larger key; NULL at the end */
} list_node_t;

typedef struct list {
  list_node_t *head; /* first (smallest) node or NULL */
} list_t;

/* Find the first node with a key >= key in the chain that *head starts.
** Store in *linkp the word that points to it and in *kp its key (0 if
** there is none).  Return the node or NULL. */
static inline TM_SAFE list_node_t *list__seek(tm_tx_t *tx, list_node_t **head,
                                              uintptr_t key,
                                              list_node_t ***linkp,
                                              uintptr_t *kp) {
  list_node_t **link = head;
  list_node_t *cur = TM_LOAD_PTR(tx, link);
  uintptr_t k = 0;
  while (cur != NULL) {
    k = TM_LOAD_WORD(tx, &cur->key);
    if (k >= key)
      break;
    link = &cur->next;
    cur = TM_LOAD_PTR(tx, link);
  }
  *linkp = link;
  *kp = k;
  return cur;
}

static inline TM_SAFE int list__chain_contains(tm_tx_t *tx, list_node_t **head,
                                               uintptr_t key) {
  list_node_t **link;
  uintptr_t k;
  list_node_t *cur = list__seek(tx, head, key, &link, &k);
  return cur != NULL && k == key;
}

static inline TM_SAFE int list__chain_add(tm_tx_t *tx, list_node_t **head,
                                          uintptr_t key) {
  list_node_t **link;
  uintptr_t k;
  list_node_t *cur = list__seek(tx, head, key, &link, &k);
  if (cur != NULL && k == key)
    return 0;
  list_node_t *n = TM_MALLOC(tx, sizeof *n);
  if (n == NULL)
    return -1;
  n->key = key; /* not yet reachable: plain stores */
  n->next = cur;
  TM_STORE_PTR(tx, link, n);
  return 1;
}

static inline TM_SAFE int list__chain_remove(tm_tx_t *tx, list_node_t **head,
                                             uintptr_t key) {
  list_node_t **link;
  uintptr_t k;
  list_node_t *cur = list__seek(tx, head, key, &link, &k);
  if (cur == NULL || k != key)
    return 0;
  list_node_t *next = TM_LOAD_PTR(tx, &cur->next);
  TM_STORE_PTR(tx, link, next);
  TM_FREE(tx, cur, sizeof *cur);
  return 1;
}

/* Return 0 if the chain's keys strictly increase and every key satisfies
** ok(key, arg) (ok may be NULL); count its nodes into *n. */
static inline int list__chain_check(list_node_t *const *head,
                                    int (*ok)(uintptr_t, const void *),
                                    const void *arg, size_t *n) {
  const list_node_t *cur = *head;
  size_t count = 0;
  for (; cur != NULL; cur = cur->next) {
    if (cur->next != NULL && cur->next->key <= cur->key)
      return -1;
    if (ok != NULL && !ok(cur->key, arg))
      return -1;
    count++;
  }
  *n += count;
  return 0;
}

static inline void list__chain_free(list_node_t **head) {
  list_node_t *cur = *head;
  while (cur != NULL) {
    list_node_t *next = cur->next;
    free(cur);
    cur = next;
  }
  *head = NULL;
}

/* ---- the list as an intset ---------------------------------------------- */

static inline void list_init(list_t *l) { l->head = NULL; }

static inline void list_destroy(list_t *l) { list__chain_free(&l->head); }

static inline TM_SAFE int list_contains_in(tm_tx_t *tx, list_t *l,
                                           uintptr_t key) {
  return list__chain_contains(tx, &l->head, key);
}

static inline TM_SAFE int list_add_in(tm_tx_t *tx, list_t *l, uintptr_t key) {
  return list__chain_add(tx, &l->head, key);
}

static inline TM_SAFE int list_remove_in(tm_tx_t *tx, list_t *l,
                                         uintptr_t key) {
  return list__chain_remove(tx, &l->head, key);
}

static inline int list_contains(tm_tx_t *tx, list_t *l, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = list_contains_in(tx, l, key); }
  return r;
}

static inline int list_add(tm_tx_t *tx, list_t *l, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = list_add_in(tx, l, key); }
  return r;
}

static inline int list_remove(tm_tx_t *tx, list_t *l, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = list_remove_in(tx, l, key); }
  return r;
}

static inline size_t list_size(const list_t *l) {
  size_t n = 0;
  for (const list_node_t *cur = l->head; cur != NULL; cur = cur->next)
    n++;
  return n;
}

static inline int list_check(const list_t *l) {
  size_t n = 0;
  return list__chain_check(&l->head, NULL, NULL, &n);
}

static inline void list_foreach(const list_t *l,
                                void (*fn)(uintptr_t key, void *arg),
                                void *arg) {
  for (const list_node_t *cur = l->head; cur != NULL; cur = cur->next)
    fn(cur->key, arg);
}

#endif /* AME_BENCH_LINKEDLIST_H */
