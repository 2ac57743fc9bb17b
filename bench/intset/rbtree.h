/*
** bench/intset/rbtree.h — a red-black tree of integer keys (an "intset"),
** written once against bench/tm.h.
**
** The classic algorithm (Cormen et al.) with NULL leaves and parent
** pointers; removal of a node with two children moves its successor's key
** into it and unlinks the successor.  The root's colour is written only
** when it changes, so that inserts that do not rebalance up to the root do
** not all conflict on it.  Include bench/tm.h's variant selection first.
**
** Transactional operations (any thread that did TM_THREAD_ENTER):
**     int rbtree_contains(tm_tx_t *tx, rbtree_t *t, uintptr_t key)
**     int rbtree_add(tm_tx_t *tx, rbtree_t *t, uintptr_t key)
**     int rbtree_remove(tm_tx_t *tx, rbtree_t *t, uintptr_t key)
**   Each runs one transaction and returns 1 if the key was found / added /
**   removed, 0 if not, and rbtree_add returns -1 if memory ran out.  The
**   *_in forms do the same inside a transaction the caller runs.
**
** Non-transactional (only while no transaction runs on the tree):
**     void   rbtree_init(rbtree_t *t)
**     void   rbtree_destroy(rbtree_t *t)
**     size_t rbtree_size(const rbtree_t *t)
**     int    rbtree_check(const rbtree_t *t)
**              0 if the keys are in strict binary-search-tree order, every
**              parent pointer matches, the root is black, no red node has a
**              red child and every path has the same number of black nodes
**     void   rbtree_foreach(const rbtree_t *t,
**                           void (*fn)(uintptr_t, void *), void *arg)
**              keys in increasing order
*/
#ifndef AME_BENCH_RBTREE_H
#define AME_BENCH_RBTREE_H

#include "../tm.h"

#define RBTREE_RED ((uintptr_t)0)
#define RBTREE_BLACK ((uintptr_t)1)

/* The fields a lookup reads come first (ame logs reads per 64-byte orec
** granule, so a lookup step tends to log one entry). */
typedef struct rbtree_node {
  uintptr_t key;               /* changes only when a removal moves a key */
  struct rbtree_node *left;    /* smaller keys */
  struct rbtree_node *right;   /* larger keys */
  struct rbtree_node *parent;  /* NULL at the root */
  uintptr_t color;             /* RBTREE_RED or RBTREE_BLACK */
} rbtree_node_t;

typedef struct rbtree {
  rbtree_node_t *root; /* NULL when empty */
} rbtree_t;

/* ---- field access -------------------------------------------------------- */

static inline TM_SAFE rbtree_node_t *rbtree__ld(tm_tx_t *tx,
                                                rbtree_node_t **p) {
  return TM_LOAD_PTR(tx, p);
}

static inline TM_SAFE void rbtree__st(tm_tx_t *tx, rbtree_node_t **p,
                                      rbtree_node_t *v) {
  TM_STORE_PTR(tx, p, v);
}

static inline TM_SAFE uintptr_t rbtree__color(tm_tx_t *tx, rbtree_node_t *n) {
  return TM_LOAD_WORD(tx, &n->color);
}

static inline TM_SAFE void rbtree__paint(tm_tx_t *tx, rbtree_node_t *n,
                                         uintptr_t c) {
  TM_STORE_WORD(tx, &n->color, c);
}

/* NULL leaves are black. */
static inline TM_SAFE int rbtree__is_black(tm_tx_t *tx, rbtree_node_t *n) {
  return n == NULL || rbtree__color(tx, n) == RBTREE_BLACK;
}

/* Make x's right child y take x's place; x becomes y's left child. */
static inline TM_SAFE void rbtree__rotate_left(tm_tx_t *tx, rbtree_t *t,
                                               rbtree_node_t *x) {
  rbtree_node_t *y = rbtree__ld(tx, &x->right);
  rbtree_node_t *b = rbtree__ld(tx, &y->left);
  rbtree_node_t *p = rbtree__ld(tx, &x->parent);
  rbtree__st(tx, &x->right, b);
  if (b != NULL)
    rbtree__st(tx, &b->parent, x);
  rbtree__st(tx, &y->parent, p);
  if (p == NULL)
    rbtree__st(tx, &t->root, y);
  else if (rbtree__ld(tx, &p->left) == x)
    rbtree__st(tx, &p->left, y);
  else
    rbtree__st(tx, &p->right, y);
  rbtree__st(tx, &y->left, x);
  rbtree__st(tx, &x->parent, y);
}

/* The mirror image: x's left child takes x's place. */
static inline TM_SAFE void rbtree__rotate_right(tm_tx_t *tx, rbtree_t *t,
                                                rbtree_node_t *x) {
  rbtree_node_t *y = rbtree__ld(tx, &x->left);
  rbtree_node_t *b = rbtree__ld(tx, &y->right);
  rbtree_node_t *p = rbtree__ld(tx, &x->parent);
  rbtree__st(tx, &x->left, b);
  if (b != NULL)
    rbtree__st(tx, &b->parent, x);
  rbtree__st(tx, &y->parent, p);
  if (p == NULL)
    rbtree__st(tx, &t->root, y);
  else if (rbtree__ld(tx, &p->right) == x)
    rbtree__st(tx, &p->right, y);
  else
    rbtree__st(tx, &p->left, y);
  rbtree__st(tx, &y->right, x);
  rbtree__st(tx, &x->parent, y);
}

/* Make the root black, writing only if it is not already. */
static inline TM_SAFE void rbtree__blacken(tm_tx_t *tx, rbtree_node_t *n) {
  if (n != NULL && rbtree__color(tx, n) != RBTREE_BLACK)
    rbtree__paint(tx, n, RBTREE_BLACK);
}

/* Restore the red-black properties after red node z was linked in. */
static inline TM_SAFE void rbtree__insert_fixup(tm_tx_t *tx, rbtree_t *t,
                                                rbtree_node_t *z) {
  rbtree_node_t *p;
  while ((p = rbtree__ld(tx, &z->parent)) != NULL &&
         rbtree__color(tx, p) == RBTREE_RED) {
    rbtree_node_t *g = rbtree__ld(tx, &p->parent); /* p is red: not root */
    if (p == rbtree__ld(tx, &g->left)) {
      rbtree_node_t *u = rbtree__ld(tx, &g->right);
      if (!rbtree__is_black(tx, u)) {
        rbtree__paint(tx, p, RBTREE_BLACK);
        rbtree__paint(tx, u, RBTREE_BLACK);
        rbtree__paint(tx, g, RBTREE_RED);
        z = g;
      } else {
        if (z == rbtree__ld(tx, &p->right)) {
          z = p;
          rbtree__rotate_left(tx, t, z);
          p = rbtree__ld(tx, &z->parent);
        }
        rbtree__paint(tx, p, RBTREE_BLACK);
        rbtree__paint(tx, g, RBTREE_RED);
        rbtree__rotate_right(tx, t, g);
      }
    } else {
      rbtree_node_t *u = rbtree__ld(tx, &g->left);
      if (!rbtree__is_black(tx, u)) {
        rbtree__paint(tx, p, RBTREE_BLACK);
        rbtree__paint(tx, u, RBTREE_BLACK);
        rbtree__paint(tx, g, RBTREE_RED);
        z = g;
      } else {
        if (z == rbtree__ld(tx, &p->left)) {
          z = p;
          rbtree__rotate_right(tx, t, z);
          p = rbtree__ld(tx, &z->parent);
        }
        rbtree__paint(tx, p, RBTREE_BLACK);
        rbtree__paint(tx, g, RBTREE_RED);
        rbtree__rotate_left(tx, t, g);
      }
    }
  }
  rbtree__blacken(tx, rbtree__ld(tx, &t->root));
}

/* Restore the red-black properties after a black node was unlinked; x (maybe
** NULL) took its place under parent xp (NULL if x is the root). */
static inline TM_SAFE void rbtree__remove_fixup(tm_tx_t *tx, rbtree_t *t,
                                                rbtree_node_t *x,
                                                rbtree_node_t *xp) {
  while (xp != NULL && rbtree__is_black(tx, x)) {
    if (x == rbtree__ld(tx, &xp->left)) {
      /* x is "doubly black", so its sibling w exists. */
      rbtree_node_t *w = rbtree__ld(tx, &xp->right);
      if (rbtree__color(tx, w) == RBTREE_RED) {
        rbtree__paint(tx, w, RBTREE_BLACK);
        rbtree__paint(tx, xp, RBTREE_RED);
        rbtree__rotate_left(tx, t, xp);
        w = rbtree__ld(tx, &xp->right);
      }
      rbtree_node_t *wl = rbtree__ld(tx, &w->left);
      rbtree_node_t *wr = rbtree__ld(tx, &w->right);
      if (rbtree__is_black(tx, wl) && rbtree__is_black(tx, wr)) {
        rbtree__paint(tx, w, RBTREE_RED);
        x = xp;
        xp = rbtree__ld(tx, &x->parent);
      } else {
        if (rbtree__is_black(tx, wr)) {
          rbtree__paint(tx, wl, RBTREE_BLACK);
          rbtree__paint(tx, w, RBTREE_RED);
          rbtree__rotate_right(tx, t, w);
          w = rbtree__ld(tx, &xp->right);
          wr = rbtree__ld(tx, &w->right);
        }
        rbtree__paint(tx, w, rbtree__color(tx, xp));
        rbtree__paint(tx, xp, RBTREE_BLACK);
        rbtree__paint(tx, wr, RBTREE_BLACK);
        rbtree__rotate_left(tx, t, xp);
        x = rbtree__ld(tx, &t->root);
        xp = NULL;
      }
    } else {
      rbtree_node_t *w = rbtree__ld(tx, &xp->left);
      if (rbtree__color(tx, w) == RBTREE_RED) {
        rbtree__paint(tx, w, RBTREE_BLACK);
        rbtree__paint(tx, xp, RBTREE_RED);
        rbtree__rotate_right(tx, t, xp);
        w = rbtree__ld(tx, &xp->left);
      }
      rbtree_node_t *wl = rbtree__ld(tx, &w->left);
      rbtree_node_t *wr = rbtree__ld(tx, &w->right);
      if (rbtree__is_black(tx, wl) && rbtree__is_black(tx, wr)) {
        rbtree__paint(tx, w, RBTREE_RED);
        x = xp;
        xp = rbtree__ld(tx, &x->parent);
      } else {
        if (rbtree__is_black(tx, wl)) {
          rbtree__paint(tx, wr, RBTREE_BLACK);
          rbtree__paint(tx, w, RBTREE_RED);
          rbtree__rotate_left(tx, t, w);
          w = rbtree__ld(tx, &xp->left);
          wl = rbtree__ld(tx, &w->left);
        }
        rbtree__paint(tx, w, rbtree__color(tx, xp));
        rbtree__paint(tx, xp, RBTREE_BLACK);
        rbtree__paint(tx, wl, RBTREE_BLACK);
        rbtree__rotate_right(tx, t, xp);
        x = rbtree__ld(tx, &t->root);
        xp = NULL;
      }
    }
  }
  rbtree__blacken(tx, x);
}

/* ---- operations ---------------------------------------------------------- */

static inline void rbtree_init(rbtree_t *t) { t->root = NULL; }

static inline void rbtree__free(rbtree_node_t *n) {
  while (n != NULL) {
    rbtree__free(n->left);
    rbtree_node_t *r = n->right;
    free(n);
    n = r;
  }
}

static inline void rbtree_destroy(rbtree_t *t) {
  rbtree__free(t->root);
  t->root = NULL;
}

static inline TM_SAFE int rbtree_contains_in(tm_tx_t *tx, rbtree_t *t,
                                             uintptr_t key) {
  rbtree_node_t *n = rbtree__ld(tx, &t->root);
  while (n != NULL) {
    uintptr_t k = TM_LOAD_WORD(tx, &n->key);
    if (key == k)
      return 1;
    n = rbtree__ld(tx, key < k ? &n->left : &n->right);
  }
  return 0;
}

static inline TM_SAFE int rbtree_add_in(tm_tx_t *tx, rbtree_t *t,
                                        uintptr_t key) {
  rbtree_node_t *y = NULL, *x = rbtree__ld(tx, &t->root);
  int left = 0;
  while (x != NULL) {
    uintptr_t k = TM_LOAD_WORD(tx, &x->key);
    if (key == k)
      return 0;
    y = x;
    left = key < k;
    x = rbtree__ld(tx, left ? &x->left : &x->right);
  }
  rbtree_node_t *z = TM_MALLOC(tx, sizeof *z);
  if (z == NULL)
    return -1;
  z->key = key; /* not yet reachable: plain stores */
  z->left = NULL;
  z->right = NULL;
  z->parent = y;
  z->color = RBTREE_RED;
  if (y == NULL)
    rbtree__st(tx, &t->root, z);
  else
    rbtree__st(tx, left ? &y->left : &y->right, z);
  rbtree__insert_fixup(tx, t, z);
  return 1;
}

static inline TM_SAFE int rbtree_remove_in(tm_tx_t *tx, rbtree_t *t,
                                           uintptr_t key) {
  rbtree_node_t *z = rbtree__ld(tx, &t->root);
  while (z != NULL) {
    uintptr_t k = TM_LOAD_WORD(tx, &z->key);
    if (key == k)
      break;
    z = rbtree__ld(tx, key < k ? &z->left : &z->right);
  }
  if (z == NULL)
    return 0;
  /* y: the node to unlink (z, or z's successor); x: its only child. */
  rbtree_node_t *zl = rbtree__ld(tx, &z->left);
  rbtree_node_t *zr = rbtree__ld(tx, &z->right);
  rbtree_node_t *y, *x;
  if (zl == NULL || zr == NULL) {
    y = z;
    x = zl != NULL ? zl : zr;
  } else {
    rbtree_node_t *l;
    y = zr;
    while ((l = rbtree__ld(tx, &y->left)) != NULL)
      y = l;
    x = rbtree__ld(tx, &y->right);
  }
  rbtree_node_t *xp = rbtree__ld(tx, &y->parent);
  if (x != NULL)
    rbtree__st(tx, &x->parent, xp);
  if (xp == NULL)
    rbtree__st(tx, &t->root, x);
  else if (rbtree__ld(tx, &xp->left) == y)
    rbtree__st(tx, &xp->left, x);
  else
    rbtree__st(tx, &xp->right, x);
  if (y != z)
    TM_STORE_WORD(tx, &z->key, TM_LOAD_WORD(tx, &y->key));
  if (rbtree__color(tx, y) == RBTREE_BLACK)
    rbtree__remove_fixup(tx, t, x, xp);
  TM_FREE(tx, y, sizeof *y);
  return 1;
}

static inline int rbtree_contains(tm_tx_t *tx, rbtree_t *t, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = rbtree_contains_in(tx, t, key); }
  return r;
}

static inline int rbtree_add(tm_tx_t *tx, rbtree_t *t, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = rbtree_add_in(tx, t, key); }
  return r;
}

static inline int rbtree_remove(tm_tx_t *tx, rbtree_t *t, uintptr_t key) {
  TM_VOLATILE int r = 0;
  TM_ATOMIC(tx) { r = rbtree_remove_in(tx, t, key); }
  return r;
}

/* ---- validation and enumeration (non-transactional) ---------------------- */

static inline size_t rbtree__count(const rbtree_node_t *n) {
  size_t c = 0;
  for (; n != NULL; n = n->right)
    c += 1 + rbtree__count(n->left);
  return c;
}

static inline size_t rbtree_size(const rbtree_t *t) {
  return rbtree__count(t->root);
}

/* Return the black height of the subtree at n (whose parent must be parent
** and whose keys must lie strictly between the bounds that are set), or -1
** if it breaks a rule.  depth guards against cycles. */
static inline int rbtree__check_node(const rbtree_node_t *n,
                                     const rbtree_node_t *parent, int has_lo,
                                     uintptr_t lo, int has_hi, uintptr_t hi,
                                     int depth) {
  if (n == NULL)
    return 1;
  if (depth > 128 || n->parent != parent)
    return -1;
  if ((has_lo && n->key <= lo) || (has_hi && n->key >= hi))
    return -1;
  if (n->color != RBTREE_RED && n->color != RBTREE_BLACK)
    return -1;
  if (n->color == RBTREE_RED &&
      ((n->left != NULL && n->left->color == RBTREE_RED) ||
       (n->right != NULL && n->right->color == RBTREE_RED)))
    return -1;
  int lh = rbtree__check_node(n->left, n, has_lo, lo, 1, n->key, depth + 1);
  int rh = rbtree__check_node(n->right, n, 1, n->key, has_hi, hi, depth + 1);
  if (lh < 0 || rh < 0 || lh != rh)
    return -1;
  return lh + (n->color == RBTREE_BLACK);
}

static inline int rbtree_check(const rbtree_t *t) {
  if (t->root != NULL && t->root->color != RBTREE_BLACK)
    return -1;
  return rbtree__check_node(t->root, NULL, 0, 0, 0, 0, 0) < 0 ? -1 : 0;
}

static inline void rbtree__walk(const rbtree_node_t *n,
                                void (*fn)(uintptr_t key, void *arg),
                                void *arg) {
  for (; n != NULL; n = n->right) {
    rbtree__walk(n->left, fn, arg);
    fn(n->key, arg);
  }
}

static inline void rbtree_foreach(const rbtree_t *t,
                                  void (*fn)(uintptr_t key, void *arg),
                                  void *arg) {
  rbtree__walk(t->root, fn, arg);
}

#endif /* AME_BENCH_RBTREE_H */
