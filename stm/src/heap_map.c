/*
** stm/src/heap_map.c — transactional containers in the shared heap: hash
** maps from byte strings to byte strings (which also make the heap's
** directory of named roots), FIFO queues, counters and append-only logs.
**
** Everything is ordinary transactional code over heap words, plus blobs
** for the keys and values (ame/heap.h): a lookup reads a few words through
** the STM and copies a blob; an update writes a few words and fills a new
** blob.  The layouts avoid words that every operation would write, so that
** transactions on different keys from different processes do not
** conflict:
**
**   map      a hash trie: a node is 64 slots indexed by 6 bits of the
**            key's 64-bit hash (SipHash-1-3, keyed per heap so that keys
**            cannot be chosen to collide); a slot holds a chain of up to
**            CHAIN entries or a child node (tagged pointer, low bit 1).
**            A chain that grows past CHAIN moves into a new child: no
**            rehash of the whole map, ever.  The count is split into
**            LANES words, one cache line each, chosen by slot.
**   queue    a singly linked list with head and tail: producers write the
**            tail, consumers the head; they meet only when it is short.
**   counter  LANES words, one cache line each, chosen by slot: adding
**            conflicts with nobody; reading sums them.
**   log      an append-only list with sequence numbers: appends serialise
**            on the tail, so sequence order is commit order.
*/
#include "heap.h"

#include <errno.h>
#include <stdlib.h>

#define LD(tx, a) ame__load_w((tx), (const uintptr_t *)(a))
#define ST(tx, a, v) ame_store_word_tx((tx), (uintptr_t *)(a), (uintptr_t)(v))

#define FANOUT 64
#define BITS 6
#define CHAIN 8          /* entries a slot holds before it splits */
#define LANES 16         /* count and counter lanes */
#define LANE_WORDS 8     /* a lane per 64-byte granule */
#define KEY_STACK 256    /* keys up to this compare without malloc */

/* ------------------------------------------------------------------------
** SipHash-1-3 (Aumasson and Bernstein), the per-heap keyed hash.
*/

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                             \
  do {                                                                       \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                   \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                   \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                \
  } while (0)

uint64_t ame__heap_hash(const struct ame__heap_hdr *h, const void *p,
                        size_t len) {
  const unsigned char *in = p;
  uint64_t k0 = h->seed[0], k1 = h->seed[1];
  uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
  uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
  uint64_t b = (uint64_t)len << 56;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t m;
    memcpy(&m, in + i, 8);
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t t = 0;
  memcpy(&t, in + i, len - i);
  b |= t;
  v3 ^= b;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static struct ame__heap_hdr *hdr(void) { return ame__heap->hdr; }

static unsigned lane_of(ame_tx_t *tx) {
  return ame__slot_of(tx)->tx.slot % LANES;
}

/* ------------------------------------------------------------------------
** Maps.
*/

struct ame_hmap {
  uintptr_t root;              /* the top node */
  uintptr_t tag;               /* the caller's tag for its blocks */
  uintptr_t owner;             /* ... and owner word */
  uintptr_t gen;               /* bumped by every removal (ame_hmap_gen) */
  uintptr_t pad[LANE_WORDS - 4];
  uintptr_t count[LANES * LANE_WORDS]; /* lane i: count[i * LANE_WORDS] */
};

struct entry {
  uintptr_t next;              /* the next entry in the chain */
  uintptr_t hash;
  uintptr_t klen, vlen;
  void *key, *val;             /* blobs (each referenced by this word), or,
                                  up to INLINE bytes, the bytes themselves */
};

/* Keys and values of up to INLINE bytes live in the entry's word itself:
** no blob to allocate, free or copy (a counter's value is one). */
#define INLINE 8

/* Read the bytes of a key or value of `have` bytes whose word is *ref. */
static size_t ref_get(ame_tx_t *tx, void *const *ref, size_t have, void *buf,
                      size_t len) {
  if (len > have) len = have;
  if (have <= INLINE) {
    uintptr_t w = LD(tx, ref);
    memcpy(buf, &w, len);
    return len;
  }
  return ame_heap_blob_get(tx, ref, buf, len);
}

/* Store len bytes as the word *ref's key or value, whose old length was
** old (0: none). */
static int ref_set(ame_tx_t *tx, void **ref, size_t old, const void *p,
                   size_t len, unsigned tag, uint64_t owner) {
  void *prev = old > INLINE ? ame_load_ptr_tx(tx, ref) : NULL;
  if (len <= INLINE) {
    uintptr_t w = 0;
    memcpy(&w, p, len);
    ST(tx, ref, w);
  } else {
    void *b = ame_heap_blob_new(tx, p, len, tag, owner);
    if (b == NULL) return -ENOSPC;
    ame_store_ptr_tx(tx, ref, b);
  }
  if (prev) ame_heap_free(tx, prev);
  return 0;
}

static uintptr_t new_node(ame_tx_t *tx, unsigned tag, uint64_t owner) {
  uintptr_t *n = ame_heap_alloc(tx, FANOUT * sizeof(uintptr_t), tag, owner);
  if (n == NULL) return 0;
  for (unsigned i = 0; i < FANOUT; i++) ST(tx, &n[i], 0);
  return (uintptr_t)n;
}

ame_hmap_t *ame_hmap_new(ame_tx_t *tx, unsigned tag, uint64_t owner) {
  ame_hmap_t *m = ame_heap_alloc(tx, sizeof *m, tag, owner);
  if (m == NULL) return NULL;
  uintptr_t root = new_node(tx, tag, owner);
  if (root == 0) {
    ame_heap_free(tx, m);
    return NULL;
  }
  ST(tx, &m->root, root);
  ST(tx, &m->tag, tag);
  ST(tx, &m->owner, owner);
  ST(tx, &m->gen, 0);
  for (unsigned i = 0; i < LANES; i++) ST(tx, &m->count[i * LANE_WORDS], 0);
  return m;
}

/* Does entry e hold key (len bytes, hash h)? */
static int key_equal(ame_tx_t *tx, struct entry *e, uint64_t h,
                     const void *key, size_t len) {
  if (LD(tx, &e->hash) != h || LD(tx, &e->klen) != len) return 0;
  unsigned char stack[KEY_STACK];
  unsigned char *buf = len <= sizeof stack ? stack : malloc(len);
  if (buf == NULL) {
    fprintf(stderr, "ame: out of memory comparing a key\n");
    abort();
  }
  size_t got = ref_get(tx, &e->key, len, buf, len);
  int eq = got == len && memcmp(buf, key, len) == 0;
  if (buf != stack) free(buf);
  return eq;
}

/* Find key: return its entry and set *link to the word that points to it
** (a trie slot or the previous entry's next), or return NULL and set
** *link to the slot the key's chain hangs from, *depth to its level. */
static struct entry *find(ame_tx_t *tx, ame_hmap_t *m, uint64_t h,
                          const void *key, size_t len, uintptr_t **link,
                          unsigned *depth) {
  uintptr_t *node = (uintptr_t *)LD(tx, &m->root);
  unsigned shift = 0;
  for (;;) {
    uintptr_t *slot = &node[(h >> shift) & (FANOUT - 1)];
    uintptr_t w = LD(tx, slot);
    if (w & 1) {
      node = (uintptr_t *)(w - 1);
      shift += BITS;
      continue;
    }
    if (depth) *depth = shift / BITS;
    uintptr_t *prev = slot;
    for (struct entry *e = (struct entry *)w; e;
         prev = &e->next, e = (struct entry *)LD(tx, &e->next)) {
      if (key_equal(tx, e, h, key, len)) {
        if (link) *link = prev;
        return e;
      }
    }
    if (link) *link = slot;
    return NULL;
  }
}

void *ame_hmap_find(ame_tx_t *tx, ame_hmap_t *m, const void *key,
                    size_t len) {
  uint64_t h = ame__heap_hash(hdr(), key, len);
  return find(tx, m, h, key, len, NULL, NULL);
}

size_t ame_hmap_entry_klen(ame_tx_t *tx, const void *e) {
  return LD(tx, &((const struct entry *)e)->klen);
}

size_t ame_hmap_entry_vlen(ame_tx_t *tx, const void *e) {
  return LD(tx, &((const struct entry *)e)->vlen);
}

size_t ame_hmap_entry_key(ame_tx_t *tx, const void *e, void *buf,
                          size_t len) {
  return ref_get(tx, (void *const *)&((const struct entry *)e)->key,
                 ame_hmap_entry_klen(tx, e), buf, len);
}

size_t ame_hmap_entry_value(ame_tx_t *tx, const void *e, void *buf,
                            size_t len) {
  return ref_get(tx, (void *const *)&((const struct entry *)e)->val,
                 ame_hmap_entry_vlen(tx, e), buf, len);
}

int ame_hmap_entry_set(ame_tx_t *tx, ame_hmap_t *m, void *entry,
                       const void *val, size_t vlen) {
  struct entry *e = entry;
  size_t old = LD(tx, &e->vlen);
  unsigned tag = 0;
  uint64_t owner = 0;
  if (vlen > INLINE) { /* a blob: its block carries the map's tag */
    tag = (unsigned)LD(tx, &m->tag);
    owner = LD(tx, &m->owner);
  }
  if (ref_set(tx, &e->val, old, val, vlen, tag, owner) < 0) return -ENOSPC;
  if (old != vlen) ST(tx, &e->vlen, vlen);
  return 0;
}

uint64_t ame_hmap_gen(ame_tx_t *tx, ame_hmap_t *m) {
  return LD(tx, &m->gen);
}

static void count_add(ame_tx_t *tx, ame_hmap_t *m, intptr_t d) {
  uintptr_t *c = &m->count[lane_of(tx) * LANE_WORDS];
  ST(tx, c, LD(tx, c) + (uintptr_t)d);
}

size_t ame_hmap_len(ame_tx_t *tx, ame_hmap_t *m) {
  uintptr_t n = 0;
  for (unsigned i = 0; i < LANES; i++) n += LD(tx, &m->count[i * LANE_WORDS]);
  return (size_t)n;
}

/* The chain at *slot has grown past CHAIN: move it into a child node
** indexed by the next BITS of each entry's hash. */
static int split(ame_tx_t *tx, ame_hmap_t *m, uintptr_t *slot,
                 unsigned shift) {
  uintptr_t child = new_node(tx, (unsigned)LD(tx, &m->tag), LD(tx, &m->owner));
  if (child == 0) return -ENOSPC;
  uintptr_t *c = (uintptr_t *)child;
  struct entry *e = (struct entry *)LD(tx, slot);
  while (e) {
    struct entry *next = (struct entry *)LD(tx, &e->next);
    uintptr_t *to = &c[(LD(tx, &e->hash) >> shift) & (FANOUT - 1)];
    ST(tx, &e->next, LD(tx, to));
    ST(tx, to, e);
    e = next;
  }
  ST(tx, slot, child | 1);
  return 0;
}

/* Add key (hash h, not in the map; find() set link and depth) with val:
** return its entry, or NULL (-ENOSPC, nothing added). */
static struct entry *insert(ame_tx_t *tx, ame_hmap_t *m, uint64_t h,
                            const void *key, size_t klen, const void *val,
                            size_t vlen, uintptr_t *link, unsigned depth,
                            unsigned tag, uint64_t owner) {
  struct entry *n = ame_heap_alloc(tx, sizeof *n, tag, owner);
  if (n == NULL) return NULL;
  if (ref_set(tx, &n->key, 0, key, klen, tag, owner) < 0) {
    ame_heap_free(tx, n); /* the transaction may go on (the caller says) */
    return NULL;
  }
  if (ref_set(tx, &n->val, 0, val, vlen, tag, owner) < 0) {
    if (klen > INLINE) ame_heap_free(tx, ame_load_ptr_tx(tx, &n->key));
    ame_heap_free(tx, n);
    return NULL;
  }
  ST(tx, &n->hash, h);
  ST(tx, &n->klen, klen);
  ST(tx, &n->vlen, vlen);
  /* Prepend to the chain, then split it if it grew too long. */
  ST(tx, &n->next, LD(tx, link));
  ST(tx, link, n);
  count_add(tx, m, 1);
  unsigned len = 0;
  for (struct entry *x = n; x && len <= CHAIN;
       x = (struct entry *)LD(tx, &x->next))
    len++;
  if (len > CHAIN && (depth + 1) * BITS < 64 &&
      split(tx, m, link, (depth + 1) * BITS) < 0)
    return NULL; /* split fails only for want of room; n stays, in a chain */
  return n;
}

int ame_hmap_put(ame_tx_t *tx, ame_hmap_t *m, const void *key, size_t klen,
                 const void *val, size_t vlen, int flags) {
  uint64_t h = ame__heap_hash(hdr(), key, klen);
  uintptr_t *link;
  unsigned depth;
  struct entry *e = find(tx, m, h, key, klen, &link, &depth);
  unsigned tag = (unsigned)LD(tx, &m->tag);
  uint64_t owner = LD(tx, &m->owner);
  if (e) {
    if (flags & AME_HMAP_IF_ABSENT) return 1;
    size_t old = LD(tx, &e->vlen);
    if (ref_set(tx, &e->val, old, val, vlen, tag, owner) < 0) return -ENOSPC;
    if (old != vlen) ST(tx, &e->vlen, vlen);
    return 1;
  }
  if (flags & AME_HMAP_IF_PRESENT) return 0;
  return insert(tx, m, h, key, klen, val, vlen, link, depth, tag, owner)
             ? 0
             : -ENOSPC;
}

void *ame_hmap_find_or_add(ame_tx_t *tx, ame_hmap_t *m, const void *key,
                           size_t klen, const void *val, size_t vlen,
                           int *added) {
  uint64_t h = ame__heap_hash(hdr(), key, klen);
  uintptr_t *link;
  unsigned depth;
  struct entry *e = find(tx, m, h, key, klen, &link, &depth);
  *added = e == NULL;
  if (e) return e;
  return insert(tx, m, h, key, klen, val, vlen, link, depth,
                (unsigned)LD(tx, &m->tag), LD(tx, &m->owner));
}

/* Free an entry and its blobs (overwriting their references first). */
static void free_entry(ame_tx_t *tx, struct entry *e) {
  void *k = LD(tx, &e->klen) > INLINE ? ame_load_ptr_tx(tx, &e->key) : NULL;
  void *v = LD(tx, &e->vlen) > INLINE ? ame_load_ptr_tx(tx, &e->val) : NULL;
  ame_store_ptr_tx(tx, &e->key, NULL);
  ame_store_ptr_tx(tx, &e->val, NULL);
  if (k) ame_heap_free(tx, k);
  if (v) ame_heap_free(tx, v);
  ame_heap_free(tx, e);
}

int ame_hmap_del(ame_tx_t *tx, ame_hmap_t *m, const void *key, size_t len) {
  uint64_t h = ame__heap_hash(hdr(), key, len);
  uintptr_t *link;
  struct entry *e = find(tx, m, h, key, len, &link, NULL);
  if (e == NULL) return 0;
  ST(tx, link, LD(tx, &e->next));
  free_entry(tx, e);
  count_add(tx, m, -1);
  ST(tx, &m->gen, LD(tx, &m->gen) + 1);
  return 1;
}

/* Call fn on every entry of the subtree at node (depth-first). */
/* Entries fetched ahead by walk() (ame_prefetch_tx): a walk visits entries
** scattered over the heap, and one cache miss after another (the entry's
** line and its orec) made up most of a large map's snapshot. */
#define AHEAD 8

/* Fetch the blob of e's key, if it has one, with e itself fetched a while
** ago.  Its words are peeked at, not loaded (a hint needs no snapshot: a
** stale or torn value only fetches the wrong line). */
static void prefetch_key(ame_tx_t *tx, struct entry *e) {
  if (__atomic_load_n(&e->klen, __ATOMIC_RELAXED) > INLINE)
    ame__prefetch(tx, __atomic_load_n(&e->key, __ATOMIC_RELAXED));
}

static int walk(ame_tx_t *tx, uintptr_t *node,
                int (*fn)(ame_tx_t *, void *, void *), void *arg) {
  /* The slots first (fn does not change the map), so that the chains a
  ** few slots on can be fetched while this one's are visited. */
  uintptr_t w[FANOUT];
  for (unsigned i = 0; i < FANOUT; i++) {
    w[i] = LD(tx, &node[i]);
    if (i < AHEAD && w[i] && !(w[i] & 1)) ame__prefetch(tx, (void *)w[i]);
  }
  for (unsigned i = 0; i < FANOUT; i++) {
    if (i + AHEAD < FANOUT && w[i + AHEAD] && !(w[i + AHEAD] & 1))
      ame__prefetch(tx, (void *)w[i + AHEAD]);
    if (i + AHEAD / 2 < FANOUT && w[i + AHEAD / 2] && !(w[i + AHEAD / 2] & 1))
      prefetch_key(tx, (struct entry *)w[i + AHEAD / 2]);
    if (w[i] & 1) {
      int rc = walk(tx, (uintptr_t *)(w[i] - 1), fn, arg);
      if (rc) return rc;
      continue;
    }
    for (struct entry *e = (struct entry *)w[i]; e;) {
      struct entry *next = (struct entry *)LD(tx, &e->next);
      if (next) ame__prefetch(tx, next);
      int rc = fn(tx, e, arg);
      if (rc) return rc;
      e = next;
    }
  }
  return 0;
}

int ame_hmap_foreach(ame_tx_t *tx, ame_hmap_t *m,
                     int (*fn)(ame_tx_t *tx, void *entry, void *arg),
                     void *arg) {
  return walk(tx, (uintptr_t *)LD(tx, &m->root), fn, arg);
}

static int free_one_entry(ame_tx_t *tx, void *e, void *arg) {
  (void)arg;
  free_entry(tx, e);
  return 0;
}

static void free_nodes(ame_tx_t *tx, uintptr_t *node, int self) {
  for (unsigned i = 0; i < FANOUT; i++) {
    uintptr_t w = LD(tx, &node[i]);
    if (w & 1) free_nodes(tx, (uintptr_t *)(w - 1), 1);
    ST(tx, &node[i], 0);
  }
  if (self) ame_heap_free(tx, node);
}

/* ------------------------------------------------------------------------
** Garbage: what clear and destroy make unreachable is not freed in their
** transaction (a large map would need a write log as large), but put on
** the heap's garbage list in it, and freed by ame_heap_collect() in
** transactions of bounded size.  Being on the list is as durable as any
** other write: a process that dies collecting leaves the rest there.
*/

enum { G_NODE = 1, G_ITEMS = 2, G_RECORDS = 3 };

struct gcell {
  uintptr_t next;
  uintptr_t kind;              /* G_* */
  uintptr_t ptr;               /* a trie node, or the first of a chain */
};

static int add_garbage(ame_tx_t *tx, unsigned kind, uintptr_t ptr) {
  if (ptr == 0) return 0;
  struct gcell *g = ame_heap_alloc(tx, sizeof *g, AME_HEAP_TAG_GARBAGE, 0);
  if (g == NULL) return -ENOSPC;
  ST(tx, &g->kind, kind);
  ST(tx, &g->ptr, ptr);
  ST(tx, &g->next, LD(tx, &hdr()->garbage));
  ST(tx, &hdr()->garbage, g);
  return 0;
}

/* Free a chain of list cells whose blob reference is word `blob` of each
** (items: 2, records: 3), at most `budget` of them; return the rest. */
static uintptr_t free_chain(ame_tx_t *tx, uintptr_t c, unsigned blob,
                            unsigned budget) {
  while (c && budget--) {
    uintptr_t next = LD(tx, c);
    void **ref = (void **)(c + blob * sizeof(uintptr_t));
    void *b = ame_load_ptr_tx(tx, ref);
    ame_store_ptr_tx(tx, ref, NULL);
    if (b) ame_heap_free(tx, b);
    ame_heap_free(tx, (void *)c);
    c = next;
  }
  return c;
}

/* One step of collection: the first garbage cell, a node's worth or
** GC_BUDGET list cells.  Return 1 if there was something. */
#define GC_BUDGET 256
static int collect_step(ame_tx_t *tx) {
  struct gcell *g = (struct gcell *)LD(tx, &hdr()->garbage);
  if (g == NULL) return 0;
  unsigned kind = (unsigned)LD(tx, &g->kind);
  uintptr_t ptr = LD(tx, &g->ptr);
  if (kind == G_NODE) {
    uintptr_t *node = (uintptr_t *)ptr;
    for (unsigned i = 0; i < FANOUT; i++) {
      uintptr_t w = LD(tx, &node[i]);
      if (w & 1) {
        add_garbage(tx, G_NODE, w - 1); /* a cell less than it frees */
      } else {
        for (struct entry *e = (struct entry *)w; e;) {
          struct entry *next = (struct entry *)LD(tx, &e->next);
          free_entry(tx, e);
          e = next;
        }
      }
    }
    ame_heap_free(tx, node);
    ptr = 0;
  } else {
    ptr = free_chain(tx, ptr, kind == G_ITEMS ? 2 : 3, GC_BUDGET);
  }
  if (ptr) {
    ST(tx, &g->ptr, ptr);
  } else {
    /* g may no longer be first: a child node was pushed above it. */
    uintptr_t *link = &hdr()->garbage;
    while (LD(tx, link) != (uintptr_t)g) link = (uintptr_t *)LD(tx, link);
    ST(tx, link, LD(tx, &g->next));
    ame_heap_free(tx, g);
  }
  return 1;
}

/* One collection transaction; return 1 if it found garbage. */
static int collect_once(ame_tx_t *tx) {
  volatile int more = 0;
  AME_ATOMIC(tx) { more = collect_step(tx); }
  return more;
}

int ame_heap_collect(ame_heap_t *heap, unsigned steps) {
  ame_tx_t *tx = ame_heap_self(heap);
  if (tx == NULL || ame_tx_depth(tx) > 0) return -EINVAL;
  while (steps-- && LOAD(&heap->hdr->garbage) != 0)
    if (!collect_once(tx)) break;
  return LOAD(&heap->hdr->garbage) != 0;
}

void ame_hmap_clear(ame_tx_t *tx, ame_hmap_t *m) {
  uintptr_t old = LD(tx, &m->root);
  uintptr_t root = new_node(tx, (unsigned)LD(tx, &m->tag), LD(tx, &m->owner));
  if (root == 0 || add_garbage(tx, G_NODE, old) != 0) {
    /* No room for a new root or the list's cell: free it all here (it may
    ** not fit the write log; then the transaction is given up). */
    if (root) ame_heap_free(tx, (void *)root);
    walk(tx, (uintptr_t *)old, free_one_entry, NULL);
    free_nodes(tx, (uintptr_t *)old, 0);
    root = old;
  }
  ST(tx, &m->root, root);
  for (unsigned i = 0; i < LANES; i++) ST(tx, &m->count[i * LANE_WORDS], 0);
  ST(tx, &m->gen, LD(tx, &m->gen) + 1);
}

void ame_hmap_destroy(ame_tx_t *tx, ame_hmap_t *m) {
  uintptr_t root = LD(tx, &m->root);
  if (add_garbage(tx, G_NODE, root) != 0) {
    walk(tx, (uintptr_t *)root, free_one_entry, NULL);
    free_nodes(tx, (uintptr_t *)root, 1);
  }
  ame_heap_free(tx, m);
}

/* ------------------------------------------------------------------------
** The directory of named roots: a map whose values are (type, pointer).
*/

static ame_hmap_t *roots(ame_tx_t *tx) {
  return (ame_hmap_t *)LD(tx, &hdr()->roots);
}

int ame_heap_root_get(ame_tx_t *tx, const void *name, size_t len,
                      unsigned *type, void **ptr) {
  ame_hmap_t *r = roots(tx);
  if (r == NULL || len == 0 || len > 255) return 0;
  struct entry *e = ame_hmap_find(tx, r, name, len);
  if (e == NULL) return 0;
  uintptr_t v[2] = {0, 0};
  ame_hmap_entry_value(tx, e, v, sizeof v);
  if (type) *type = (unsigned)v[0];
  if (ptr) *ptr = (void *)v[1];
  return 1;
}

int ame_heap_root_set(ame_tx_t *tx, const void *name, size_t len,
                      unsigned type, void *ptr) {
  if (len == 0 || len > 255) return -EINVAL;
  ame_hmap_t *r = roots(tx);
  if (r == NULL) {
    r = ame_hmap_new(tx, AME_HEAP_TAG_ROOTS, 0);
    if (r == NULL) return -ENOSPC;
    ST(tx, &hdr()->roots, r);
  }
  uintptr_t v[2] = {type, (uintptr_t)ptr};
  int rc = ame_hmap_put(tx, r, name, len, v, sizeof v, 0);
  return rc < 0 ? rc : 0;
}

int ame_heap_root_del(ame_tx_t *tx, const void *name, size_t len) {
  ame_hmap_t *r = roots(tx);
  if (r == NULL || len == 0 || len > 255) return 0;
  return ame_hmap_del(tx, r, name, len);
}

/* ------------------------------------------------------------------------
** Queues.
*/

struct ame_hqueue {
  uintptr_t head, tail;        /* items */
  uintptr_t tag, owner;
  uintptr_t pad[LANE_WORDS - 4];
  uintptr_t count[LANES * LANE_WORDS];
};

struct item {
  uintptr_t next;
  uintptr_t len;
  void *val;                   /* a blob */
};

ame_hqueue_t *ame_hqueue_new(ame_tx_t *tx, unsigned tag, uint64_t owner) {
  ame_hqueue_t *q = ame_heap_alloc(tx, sizeof *q, tag, owner);
  if (q == NULL) return NULL;
  ST(tx, &q->head, 0);
  ST(tx, &q->tail, 0);
  ST(tx, &q->tag, tag);
  ST(tx, &q->owner, owner);
  for (unsigned i = 0; i < LANES; i++) ST(tx, &q->count[i * LANE_WORDS], 0);
  return q;
}

int ame_hqueue_push(ame_tx_t *tx, ame_hqueue_t *q, const void *val,
                    size_t len) {
  unsigned tag = (unsigned)LD(tx, &q->tag);
  uint64_t owner = LD(tx, &q->owner);
  struct item *it = ame_heap_alloc(tx, sizeof *it, tag, owner);
  void *b = it ? ame_heap_blob_new(tx, val, len, tag, owner) : NULL;
  if (it == NULL || b == NULL) {
    if (it) ame_heap_free(tx, it);
    return -ENOSPC;
  }
  ST(tx, &it->next, 0);
  ST(tx, &it->len, len);
  ame_store_ptr_tx(tx, &it->val, b);
  uintptr_t tail = LD(tx, &q->tail);
  if (tail)
    ST(tx, &((struct item *)tail)->next, it);
  else
    ST(tx, &q->head, it);
  ST(tx, &q->tail, it);
  uintptr_t *c = &q->count[lane_of(tx) * LANE_WORDS];
  ST(tx, c, LD(tx, c) + 1);
  return 0;
}

void *ame_hqueue_peek(ame_tx_t *tx, ame_hqueue_t *q, size_t *len) {
  struct item *it = (struct item *)LD(tx, &q->head);
  if (it && len) *len = LD(tx, &it->len);
  return it;
}

size_t ame_hqueue_item_value(ame_tx_t *tx, const void *item, void *buf,
                             size_t len) {
  size_t have = LD(tx, &((const struct item *)item)->len);
  if (len > have) len = have;
  return ame_heap_blob_get(tx, (void *const *)&((const struct item *)item)->val,
                           buf, len);
}

void ame_hqueue_drop(ame_tx_t *tx, ame_hqueue_t *q) {
  struct item *it = (struct item *)LD(tx, &q->head);
  if (it == NULL) return;
  uintptr_t next = LD(tx, &it->next);
  ST(tx, &q->head, next);
  if (next == 0) ST(tx, &q->tail, 0);
  void *b = ame_load_ptr_tx(tx, &it->val);
  ame_store_ptr_tx(tx, &it->val, NULL);
  if (b) ame_heap_free(tx, b);
  ame_heap_free(tx, it);
  uintptr_t *c = &q->count[lane_of(tx) * LANE_WORDS];
  ST(tx, c, LD(tx, c) - 1);
}

size_t ame_hqueue_len(ame_tx_t *tx, ame_hqueue_t *q) {
  uintptr_t n = 0;
  for (unsigned i = 0; i < LANES; i++) n += LD(tx, &q->count[i * LANE_WORDS]);
  return (size_t)n;
}

void ame_hqueue_destroy(ame_tx_t *tx, ame_hqueue_t *q) {
  uintptr_t head = LD(tx, &q->head);
  if (add_garbage(tx, G_ITEMS, head) != 0)
    while (LD(tx, &q->head)) ame_hqueue_drop(tx, q);
  ame_heap_free(tx, q);
}

/* ------------------------------------------------------------------------
** Counters.
*/

struct ame_hcounter {
  uintptr_t lane[LANES * LANE_WORDS];
};

ame_hcounter_t *ame_hcounter_new(ame_tx_t *tx, unsigned tag,
                                 uint64_t owner) {
  ame_hcounter_t *c = ame_heap_alloc(tx, sizeof *c, tag, owner);
  if (c == NULL) return NULL;
  for (unsigned i = 0; i < LANES; i++) ST(tx, &c->lane[i * LANE_WORDS], 0);
  return c;
}

void ame_hcounter_add(ame_tx_t *tx, ame_hcounter_t *c, int64_t d) {
  uintptr_t *w = &c->lane[lane_of(tx) * LANE_WORDS];
  ST(tx, w, LD(tx, w) + (uintptr_t)d);
}

int64_t ame_hcounter_get(ame_tx_t *tx, ame_hcounter_t *c) {
  uintptr_t n = 0;
  for (unsigned i = 0; i < LANES; i++) n += LD(tx, &c->lane[i * LANE_WORDS]);
  return (int64_t)n;
}

void ame_hcounter_set(ame_tx_t *tx, ame_hcounter_t *c, int64_t v) {
  unsigned mine = lane_of(tx);
  for (unsigned i = 0; i < LANES; i++)
    ST(tx, &c->lane[i * LANE_WORDS], i == mine ? (uintptr_t)v : 0);
}

/* ------------------------------------------------------------------------
** Append-only logs.
*/

struct ame_hlog {
  uintptr_t head, tail;        /* records, oldest first */
  uintptr_t next_seq;          /* the sequence number of the next append */
  uintptr_t tag, owner;
};

struct record {
  uintptr_t next;
  uintptr_t seq;
  uintptr_t len;
  void *val;
};

ame_hlog_t *ame_hlog_new(ame_tx_t *tx, unsigned tag, uint64_t owner) {
  ame_hlog_t *l = ame_heap_alloc(tx, sizeof *l, tag, owner);
  if (l == NULL) return NULL;
  ST(tx, &l->head, 0);
  ST(tx, &l->tail, 0);
  ST(tx, &l->next_seq, 1);
  ST(tx, &l->tag, tag);
  ST(tx, &l->owner, owner);
  return l;
}

int64_t ame_hlog_append(ame_tx_t *tx, ame_hlog_t *l, const void *val,
                        size_t len) {
  unsigned tag = (unsigned)LD(tx, &l->tag);
  uint64_t owner = LD(tx, &l->owner);
  struct record *r = ame_heap_alloc(tx, sizeof *r, tag, owner);
  void *b = r ? ame_heap_blob_new(tx, val, len, tag, owner) : NULL;
  if (r == NULL || b == NULL) {
    if (r) ame_heap_free(tx, r);
    return -ENOSPC;
  }
  uintptr_t seq = LD(tx, &l->next_seq);
  ST(tx, &l->next_seq, seq + 1);
  ST(tx, &r->next, 0);
  ST(tx, &r->seq, seq);
  ST(tx, &r->len, len);
  ame_store_ptr_tx(tx, &r->val, b);
  uintptr_t tail = LD(tx, &l->tail);
  if (tail)
    ST(tx, &((struct record *)tail)->next, r);
  else
    ST(tx, &l->head, r);
  ST(tx, &l->tail, r);
  return (int64_t)seq;
}

uint64_t ame_hlog_next_seq(ame_tx_t *tx, ame_hlog_t *l) {
  return LD(tx, &l->next_seq);
}

void *ame_hlog_first(ame_tx_t *tx, ame_hlog_t *l, uint64_t after) {
  struct record *r = (struct record *)LD(tx, &l->head);
  while (r && LD(tx, &r->seq) <= after) r = (struct record *)LD(tx, &r->next);
  return r;
}

void *ame_hlog_next(ame_tx_t *tx, const void *rec) {
  return (void *)LD(tx, &((const struct record *)rec)->next);
}

uint64_t ame_hlog_record_seq(ame_tx_t *tx, const void *rec) {
  return LD(tx, &((const struct record *)rec)->seq);
}

size_t ame_hlog_record_len(ame_tx_t *tx, const void *rec) {
  return LD(tx, &((const struct record *)rec)->len);
}

size_t ame_hlog_record_value(ame_tx_t *tx, const void *rec, void *buf,
                             size_t len) {
  size_t have = ame_hlog_record_len(tx, rec);
  if (len > have) len = have;
  return ame_heap_blob_get(
      tx, (void *const *)&((const struct record *)rec)->val, buf, len);
}

size_t ame_hlog_trim(ame_tx_t *tx, ame_hlog_t *l, uint64_t upto) {
  size_t n = 0;
  struct record *r;
  while ((r = (struct record *)LD(tx, &l->head)) && LD(tx, &r->seq) <= upto) {
    uintptr_t next = LD(tx, &r->next);
    ST(tx, &l->head, next);
    if (next == 0) ST(tx, &l->tail, 0);
    void *b = ame_load_ptr_tx(tx, &r->val);
    ame_store_ptr_tx(tx, &r->val, NULL);
    if (b) ame_heap_free(tx, b);
    ame_heap_free(tx, r);
    n++;
  }
  return n;
}

void ame_hlog_destroy(ame_tx_t *tx, ame_hlog_t *l) {
  uintptr_t head = LD(tx, &l->head);
  if (add_garbage(tx, G_RECORDS, head) != 0) ame_hlog_trim(tx, l, UINT64_MAX);
  ame_heap_free(tx, l);
}
