/*
** stm/src/heap_alloc.c — the shared heap's allocator, and blobs.
**
** Every word of the allocator's state — free lists, carving pointers, the
** arena's top, the per-slot byte counts, block headers — is read and
** written through the STM, inside the allocating or freeing transaction.
** So an allocation is exactly as durable as the transaction that made it:
** an attempt that aborts, or a process killed anywhere in here, allocated
** and freed nothing (recovery redoes or undoes the whole transaction), and
** no separate crash protocol is needed.
**
** Conflicts are kept off the common path by giving each slot (participant)
** its own free lists and carving span per size class; only a slot whose
** lists are empty touches the global ones (a batch at a time) or its own
** reserve of arena, which it refills from the arena's top several 64 KiB
** spans at a time (a 128th of the arena, at most 2 MiB), and a slot whose
** lists grow long gives them back in one splice.  The top is a word every
** slot may write, so a long transaction that wrote it (a task filling a
** large dict) would be re-run whenever another slot took arena meanwhile;
** the reserve makes that rare.  A reserve belongs to the slot, not to its
** owner: a slot's next owner (after a death too) carves on from it.
**
** Two pools that never exchange memory:
**   transactional  blocks read and written through the STM (map entries,
**                  nodes).  Their words are only ever written by
**                  transactions, so a zombie that still holds a pointer
**                  to a freed block sees new versions on anything reused.
**   blob           immutable byte strings filled directly, outside the
**                  write log (ame_heap_blob_new), and read by copy and
**                  validation (ame_heap_blob_read + ame_tx_validate).
**                  Keeping them apart means a transactional reader never
**                  meets bytes that were written without the STM.
**
** A blob's bytes are written outside the write log, so a blob block must
** never be handed out by the attempt that freed it: if that attempt
** aborted, the free would be undone and the block's committed contents
** overwritten.  So a small blob block freed by an attempt carries the
** attempt's stamp (16 bits of tx->starts) in the high bits of its free
** list link, and allocation passes over the blocks that carry the running
** attempt's stamp (a block with an older stamp equal by chance is only
** passed over, never wrongly taken).  Large blob frees wait on the slot's
** fresh_large list, stamped likewise, until a later attempt moves them to
** the free list (the attempt that freed them committed: an aborted one's
** writes to the lists were undone with it).
**
** A block: a 16-byte header (word 0: capacity, class, pool, tag; word 1:
** the owner word while allocated, the next free block while free), then
** the caller's bytes.  Small blocks (up to 32 KiB) come in size classes
** carved from 64 KiB spans; larger ones are page runs from a first-fit,
** address-ordered free list that merges neighbours.
*/
#include "heap.h"

#include <errno.h>
#include <stdlib.h>

#define NC AME__HEAP_NCLASS
#define HDR AME__HEAP_HDR
#define SPILL 256          /* blocks a slot's class list keeps */
#define BATCH 16           /* blocks taken from a global list at once */

#define SKIP_MAX 8         /* stamped blocks an allocation passes over */

/* A small free block's link word (word 1): the next block, and the stamp
** of the attempt that freed it (blobs) in the high 16 bits. */
#define L_PTR ((((uintptr_t)1) << 48) - 1)
#define L_NEXT(w) ((w)&L_PTR)
#define L_STAMP(w) ((w) & ~L_PTR)

/* The running attempt's stamp. */
static uintptr_t stamp_of(const ame_tx_t *tx) {
  return (uintptr_t)(tx->starts & 0xffff) << 48;
}

static void settle_large(ame_tx_t *tx, struct ame__slot *s);

/* Header word 0. */
#define H_TAG(w) ((unsigned)((w) & 0xff))
#define H_BLOB ((uintptr_t)1 << 8)
#define H_LARGE ((uintptr_t)1 << 9)
#define H_FREE ((uintptr_t)1 << 10)
#define H_CLASS(w) ((unsigned)(((w) >> 11) & 0x3f))
#define H_CAP(w) ((size_t)((w) >> 17))
#define H_MAKE(cap, cls, blob, large, tag)                                   \
  (((uintptr_t)(cap) << 17) | ((uintptr_t)(cls) << 11) |                    \
   ((blob) ? H_BLOB : 0) | ((large) ? H_LARGE : 0) | ((uintptr_t)(tag)&0xff))

#define LD(tx, a) ame_load_word_tx((tx), (const uintptr_t *)(a))
#define ST(tx, a, v) ame_store_word_tx((tx), (uintptr_t *)(a), (uintptr_t)(v))

/* User capacities of the small classes (the block is 16 bytes more). */
static const uint32_t class_cap[NC] = {
    16,    32,    48,    64,    80,    96,    112,   128,   160,   192,
    224,   256,   320,   384,   448,   512,   640,   768,   896,   1024,
    1280,  1536,  1792,  2048,  2560,  3072,  3584,  4096,  5120,  6144,
    7168,  8192,  10240, 12288, 14336, 16384, 20480, 24576, 28672, 32752};

static unsigned class_of(size_t size) {
  unsigned lo = 0, hi = NC - 1;
  while (lo < hi) {
    unsigned mid = (lo + hi) / 2;
    if (class_cap[mid] >= size)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

static struct ame__heap_hdr *hdr_of(ame_tx_t *tx) {
  (void)tx;
  return ame__heap->hdr;
}

static uintptr_t arena_start(const struct ame__heap_hdr *h) {
  return h->base + h->off_arena;
}

static uintptr_t arena_end(const struct ame__heap_hdr *h) {
  return h->base + h->off_arena + h->arena_size;
}

void ame__heap_alloc_init(struct ame__heap_hdr *h) {
  h->top = arena_start(h);
}

/* Add n to the slot's byte count (two's complement). */
static void count(ame_tx_t *tx, struct ame__slot *s, intptr_t n) {
  ST(tx, &s->used, LD(tx, &s->used) + (uintptr_t)n);
}

/* Move up to BATCH blocks of pool/class i from the global list to the
** slot's list.  Return how many. */
static uintptr_t take_global(ame_tx_t *tx, struct ame__heap_hdr *h,
                             struct ame__slot *s, unsigned i) {
  uintptr_t first = LD(tx, &h->class_free[i]);
  if (first == 0) return 0;
  uintptr_t last = first, n = 1, w;
  while (n < BATCH && L_NEXT(w = LD(tx, last + 8)) != 0) {
    last = L_NEXT(w);
    n++;
  }
  w = LD(tx, last + 8);
  ST(tx, &h->class_free[i], L_NEXT(w));
  ST(tx, last + 8, L_STAMP(w) | LD(tx, &s->cache[i]));
  ST(tx, &s->cache[i], first);
  ST(tx, &s->cached[i], LD(tx, &s->cached[i]) + n);
  return n;
}

/* Take a block of pool/class i off the slot's list, passing over (up to
** SKIP_MAX) blob blocks the running attempt freed.  Return it, or 0. */
static uintptr_t pop_cache(ame_tx_t *tx, struct ame__slot *s, unsigned i) {
  uintptr_t *link = &s->cache[i];
  uintptr_t lw = LD(tx, link);
  uintptr_t now = i >= NC ? stamp_of(tx) : ~(uintptr_t)0;
  for (unsigned skipped = 0; L_NEXT(lw) != 0; skipped++) {
    uintptr_t b = L_NEXT(lw);
    uintptr_t w = LD(tx, b + 8);
    if (L_STAMP(w) != now) {
      ST(tx, link, L_STAMP(lw) | L_NEXT(w));
      ST(tx, &s->cached[i], LD(tx, &s->cached[i]) - 1);
      return b;
    }
    if (skipped == SKIP_MAX) break;
    link = (uintptr_t *)(b + 8);
    lw = w;
  }
  return 0;
}

/* Spans a slot takes from the arena's top at once: a 128th of the arena,
** at least one span, at most 32 (2 MiB). */
static uintptr_t reserve_bytes(const struct ame__heap_hdr *h) {
  uintptr_t spans = h->arena_size / 128 / AME__HEAP_SPAN;
  if (spans < 1) spans = 1;
  if (spans > 32) spans = 32;
  return spans * AME__HEAP_SPAN;
}

/* A fresh span for pool/class i from the slot's reserve, refilled from
** the arena's top when empty; return its first block, or 0 if the arena
** is full. */
static uintptr_t new_span(ame_tx_t *tx, struct ame__heap_hdr *h,
                          struct ame__slot *s, unsigned i, size_t bsize) {
  uintptr_t top = LD(tx, &s->reserve), rend = LD(tx, &s->reserve_end);
  if (top == 0 || top + AME__HEAP_SPAN > rend) {
    /* Reserves are whole spans: nothing is left of the old one. */
    uintptr_t want = reserve_bytes(h);
    top = LD(tx, &h->top);
    if (top + want > arena_end(h)) want = AME__HEAP_SPAN;
    if (top + want > arena_end(h)) return 0;
    ST(tx, &h->top, top + want);
    rend = top + want;
    ST(tx, &s->reserve_end, rend);
  }
  ST(tx, &s->reserve, top + AME__HEAP_SPAN);
  uintptr_t end = top + AME__HEAP_SPAN - AME__HEAP_SPAN % bsize;
  ST(tx, &s->carve[i], top + bsize);
  ST(tx, &s->carve_end[i], end);
  return top;
}

static void *alloc_small(ame_tx_t *tx, size_t size, int blob, unsigned tag,
                         uint64_t owner) {
  struct ame__heap_hdr *h = hdr_of(tx);
  struct ame__slot *s = ame__slot_of(tx);
  unsigned cls = class_of(size);
  unsigned i = (blob ? NC : 0) + cls;
  size_t bsize = class_cap[cls] + HDR;
  uintptr_t b = pop_cache(tx, s, i);
  if (b == 0) {
    uintptr_t c = LD(tx, &s->carve[i]);
    if (c && c < LD(tx, &s->carve_end[i])) {
      ST(tx, &s->carve[i], c + bsize);
      b = c;
    } else {
      if (take_global(tx, h, s, i)) b = pop_cache(tx, s, i);
      if (b == 0) b = new_span(tx, h, s, i, bsize);
      if (b == 0) return NULL;
    }
  }
  ST(tx, b, H_MAKE(class_cap[cls], cls, blob, 0, tag));
  ST(tx, b + 8, owner);
  count(tx, s, (intptr_t)bsize);
  return (void *)(b + HDR);
}

/* Large blocks: page runs, first fit from the pool's address-ordered free
** list (a free run's header: word 0 its bytes, word 1 the next run). */
static void *alloc_large(ame_tx_t *tx, size_t size, int blob, unsigned tag,
                         uint64_t owner) {
  struct ame__heap_hdr *h = hdr_of(tx);
  struct ame__slot *s = ame__slot_of(tx);
  if (size > arena_end(h) - arena_start(h)) return NULL;
  size_t bytes = (size + HDR + AME__HEAP_PAGE - 1) & ~(size_t)(AME__HEAP_PAGE - 1);
  uintptr_t *link = &h->large_free[blob ? 1 : 0];
  uintptr_t b = 0;
  for (uintptr_t r = LD(tx, link); r; link = (uintptr_t *)(r + 8),
                 r = LD(tx, link)) {
    size_t have = H_CAP(LD(tx, r)) + HDR;
    if (have < bytes) continue;
    if (have - bytes >= AME__HEAP_PAGE) { /* split: keep the tail free */
      uintptr_t rest = r + bytes;
      ST(tx, rest, H_MAKE(have - bytes - HDR, 0, blob, 1, 0) | H_FREE);
      ST(tx, rest + 8, LD(tx, r + 8));
      ST(tx, link, rest);
    } else {
      bytes = have;
      ST(tx, link, LD(tx, r + 8));
    }
    b = r;
    break;
  }
  if (b == 0) {
    uintptr_t top = LD(tx, &h->top);
    if (top + bytes > arena_end(h)) return NULL;
    ST(tx, &h->top, top + bytes);
    b = top;
  }
  ST(tx, b, H_MAKE(bytes - HDR, 0, blob, 1, tag));
  ST(tx, b + 8, owner);
  count(tx, s, (intptr_t)bytes);
  return (void *)(b + HDR);
}

static void *heap_alloc(ame_tx_t *tx, size_t size, int blob, unsigned tag,
                        uint64_t owner) {
  assert(tx->nesting > 0 && tx->dom->shared && "heap allocation outside a "
                                               "heap transaction");
  if (size == 0) size = 8;
  if (size <= class_cap[NC - 1]) return alloc_small(tx, size, blob, tag, owner);
  if (blob) settle_large(tx, ame__slot_of(tx));
  return alloc_large(tx, size, blob, tag, owner);
}

/* Put large block b (header word w) on its pool's free list. */
static void insert_large(ame_tx_t *tx, uintptr_t b, uintptr_t w) {
  struct ame__heap_hdr *h = hdr_of(tx);
  int blob = (w & H_BLOB) != 0;
  size_t bytes = H_CAP(w) + HDR;
  /* Insert in address order, merging with the runs on either side. */
  uintptr_t *link = &h->large_free[blob];
  uintptr_t prev = 0, r = LD(tx, link);
  while (r && r < b) {
    prev = r;
    link = (uintptr_t *)(r + 8);
    r = LD(tx, link);
  }
  if (r && b + bytes == r) { /* merge the next run into this one */
    bytes += H_CAP(LD(tx, r)) + HDR;
    r = LD(tx, r + 8);
  }
  if (prev && prev + H_CAP(LD(tx, prev)) + HDR == b) { /* into the previous */
    size_t pbytes = H_CAP(LD(tx, prev)) + HDR + bytes;
    ST(tx, prev, H_MAKE(pbytes - HDR, 0, blob, 1, 0) | H_FREE);
    ST(tx, prev + 8, r);
    return;
  }
  ST(tx, b, H_MAKE(bytes - HDR, 0, blob, 1, 0) | H_FREE);
  ST(tx, b + 8, r);
  ST(tx, link, b);
}

/* Put small block b of pool/class i on the slot's free list, its link
** carrying stamp; spill the list to the global one when it grows long. */
static void insert_small(ame_tx_t *tx, struct ame__slot *s, unsigned i,
                         uintptr_t b, uintptr_t stamp) {
  struct ame__heap_hdr *h = hdr_of(tx);
  ST(tx, b + 8, stamp | LD(tx, &s->cache[i]));
  ST(tx, &s->cache[i], b);
  uintptr_t n = LD(tx, &s->cached[i]) + 1;
  if (n <= SPILL) {
    ST(tx, &s->cached[i], n);
    return;
  }
  /* Too many: splice the whole list onto the global one. */
  uintptr_t last = b, w;
  while (L_NEXT(w = LD(tx, last + 8)) != 0) last = L_NEXT(w);
  ST(tx, last + 8, L_STAMP(w) | LD(tx, &h->class_free[i]));
  ST(tx, &h->class_free[i], b);
  ST(tx, &s->cache[i], 0);
  ST(tx, &s->cached[i], 0);
}

/* Before a large blob allocation or free: if the large blob blocks
** waiting on fresh_large were freed by an earlier attempt, it committed:
** put them on the free list. */
static void settle_large(ame_tx_t *tx, struct ame__slot *s) {
  uintptr_t b = LD(tx, &s->fresh_large);
  if (b == 0 || LD(tx, &s->fresh_attempt) == tx->starts) return;
  ST(tx, &s->fresh_large, 0);
  while (b) {
    uintptr_t next = LD(tx, b + 8);
    insert_large(tx, b, LD(tx, b) & ~H_FREE);
    b = next;
  }
}

static void heap_free(ame_tx_t *tx, void *p) {
  assert(tx->nesting > 0 && tx->dom->shared && "heap free outside a heap "
                                               "transaction");
  if (p == NULL) return;
  struct ame__heap_hdr *h = hdr_of(tx);
  uintptr_t b = (uintptr_t)p - HDR;
  if (b < arena_start(h) || b >= arena_end(h) || (b & 7)) {
    fprintf(stderr, "ame: ame_heap_free(%p): not a heap block\n", p);
    abort();
  }
  uintptr_t w = LD(tx, b);
  if (w & H_FREE) {
    fprintf(stderr, "ame: ame_heap_free(%p): freed twice\n", p);
    abort();
  }
  struct ame__slot *s = ame__slot_of(tx);
  unsigned cls = H_CLASS(w);
  count(tx, s, -(intptr_t)((w & H_LARGE) ? H_CAP(w) + HDR
                                         : class_cap[cls] + HDR));
  if ((w & H_BLOB) && (w & H_LARGE)) {
    /* Not reusable before a later attempt (see the top of the file). */
    settle_large(tx, s);
    ST(tx, &s->fresh_attempt, tx->starts);
    ST(tx, b, w | H_FREE);
    ST(tx, b + 8, LD(tx, &s->fresh_large));
    ST(tx, &s->fresh_large, b);
    return;
  }
  if (w & H_LARGE) {
    insert_large(tx, b, w);
    return;
  }
  ST(tx, b, w | H_FREE);
  insert_small(tx, s, ((w & H_BLOB) ? NC : 0) + cls, b,
               (w & H_BLOB) ? stamp_of(tx) : 0);
}

/* ------------------------------------------------------------------------
** The public forms.
*/

void *ame__heap_tx_malloc(ame_tx_t *tx, size_t size) {
  return heap_alloc(tx, size, 0, 0, 0);
}

void ame__heap_tx_free(ame_tx_t *tx, void *p) { heap_free(tx, p); }

void *ame_heap_alloc(ame_tx_t *tx, size_t size, unsigned tag,
                     uint64_t owner) {
  return heap_alloc(tx, size, 0, tag, owner & 0xffffffffffffull);
}

void ame_heap_free(ame_tx_t *tx, void *p) { heap_free(tx, p); }

size_t ame_heap_size(ame_tx_t *tx, const void *p) {
  return H_CAP(LD(tx, (uintptr_t)p - HDR));
}

unsigned ame_heap_tag(ame_tx_t *tx, const void *p) {
  return H_TAG(LD(tx, (uintptr_t)p - HDR));
}

uint64_t ame_heap_owner(ame_tx_t *tx, const void *p) {
  return LD(tx, (uintptr_t)p - HDR + 8);
}

void *ame_heap_blob_new(ame_tx_t *tx, const void *data, size_t len,
                        unsigned tag, uint64_t owner) {
  uintptr_t *p = heap_alloc(tx, len, 1, tag, owner & 0xffffffffffffull);
  if (p == NULL) return NULL;
  /* Word by word (relaxed atomics: a zombie's copy may race with us and
  ** will be thrown away by its validation), the last word zero-padded. */
  const unsigned char *src = data;
  size_t words = len / 8;
  for (size_t i = 0; i < words; i++) {
    uintptr_t w;
    memcpy(&w, src + i * 8, 8);
    __atomic_store_n(&p[i], w, __ATOMIC_RELAXED);
  }
  if (len % 8) {
    uintptr_t w = 0;
    memcpy(&w, src + words * 8, len % 8);
    __atomic_store_n(&p[words], w, __ATOMIC_RELAXED);
  }
  return p;
}

size_t ame_heap_blob_get(ame_tx_t *tx, void *const *ref, void *buf,
                         size_t len) {
  struct ame__heap_hdr *h = hdr_of(tx);
  const uintptr_t *blob = ame_load_ptr_tx(tx, ref);
  uintptr_t b = (uintptr_t)blob - HDR;
  if (blob == NULL) return 0;
  if (b < arena_start(h) || b + HDR > arena_end(h) || (b & 7)) {
    /* Only a zombie reads a pointer like that: make it abort. */
    ame_tx_validate(tx);
    fprintf(stderr, "ame: ame_heap_blob_get: %p is not a heap block\n",
            (void *)blob);
    abort();
  }
  size_t cap = H_CAP(LD(tx, b));
  if (len > cap) len = cap;
  if ((uintptr_t)blob + len > arena_end(h))
    len = arena_end(h) - (uintptr_t)blob;
  unsigned char *dst = buf;
  size_t words = len / 8;
  for (size_t i = 0; i < words; i++) {
    uintptr_t w = __atomic_load_n(&blob[i], __ATOMIC_RELAXED);
    memcpy(dst + i * 8, &w, 8);
  }
  if (len % 8) {
    uintptr_t w = __atomic_load_n(&blob[words], __ATOMIC_RELAXED);
    memcpy(dst + words * 8, &w, len % 8);
  }
  /* The copy before the check: if the blob was freed (and perhaps
  ** reused) since *ref was read, *ref was overwritten by then. */
  ame__fence_acquire();
  ame__tx_check_word(tx, ref);
  return len;
}
