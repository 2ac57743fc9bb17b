/*
** stm/src/heap_alloc.c — the shared heap's allocator, and blobs.
**
** Every word of the allocator's state — spans' headers and free lists, the
** free runs, the arena's top, the per-slot words, block headers — is read
** and written through the STM, inside the allocating or freeing
** transaction.  So an allocation is exactly as durable as the transaction
** that made it: an attempt that aborts, or a process killed anywhere in
** here, allocated and freed nothing (recovery redoes or undoes the whole
** transaction), and no separate crash protocol is needed.
**
** Memory:
**   span    64 KiB holding blocks of one size class of one pool: a 64-byte
**           header (its own granule: class, free list, live count, carving
**           point, state), then the blocks.  A slot allocates from one span
**           per class (slot->span[]), so slots rarely meet; a free puts the
**           block back on its span's list.  A span nobody allocates from
**           that has room is on its class's partial list; one whose last
**           block is freed becomes a free run again, for any class, pool or
**           large block.
**   run     free pages: emptied spans, freed large blocks, and what a
**           slot's reserve gave back, in one address-ordered list that
**           merges neighbours.  Large blocks (over 32,720 bytes) are page
**           runs, first fit.
**   top     the arena not yet handed out.  Spans are taken from a slot's
**           reserve, refilled from the top a 128th of the arena (at most
**           2 MiB) the first time and twice the last refill after that (up
**           to a 16th of the arena, at most 16 MiB), so that slots rarely
**           write the one top word: a long transaction that wrote it is
**           re-run if another slot took arena meanwhile, and slots that
**           allocate at the same pace refill at about the same moment.
** An allocation tries, in order: its slot's span, a partial span of its
** class, a free run, the reserve, the top; and when all of that fails,
** takes back what other slots hold (their spans, reserves and deferred
** frees: `reclaim`) and tries again.  So it fails only if no span of its
** class has a free block and no free run or unreserved arena fits: the
** free memory it cannot use is then free blocks inside spans that still
** hold live blocks of other classes (at most 64 KiB per such span), page
** runs too short, and what its own attempt freed.
**
** Two pools:
**   transactional  blocks read and written through the STM (map entries,
**                  nodes).
**   blob           immutable byte strings filled directly, outside the
**                  write log (ame_heap_blob_new), and read by copy and
**                  validation (ame_heap_blob_read + ame_tx_validate).
** Memory moves between them through the free runs.  A run remembers
** whether it may hold a transactional block's words (`clean` if not):
** before such memory is written outside the STM, the allocating
** transaction claims every granule of it (ame__tx_claim: the granule takes
** a new version when the lock goes, on commit, abort or recovery alike,
** since no abort undoes the bytes), so a zombie reader of the old block
** meets a newer version there and aborts instead of reading bytes the STM
** never saw.  Blob allocations prefer clean runs.
**
** A blob's bytes are written outside the write log, so memory freed by an
** attempt must never be written as a blob by that same attempt: if it
** aborted, the free would be undone and the block's committed contents
** overwritten.  So blob frees, large frees and spans emptied by an attempt
** wait on the slot's `fresh` list until a later attempt (the one that
** freed them committed: an aborted one's writes to the list were undone
** with it) or another slot's reclaim gives them back.  Transactional small
** blocks go back to their span at once (they are only ever written
** through the STM), and a span they empty waits on `fresh` like the rest.
** An attempt also puts on the free runs memory that earlier attempts
** freed (settle() and reclaim(): a span settle() empties, a deferred
** large block) and merges runs (insert_run()).  What the committed state
** keeps in that memory still matters (a live span's header and free
** links, a deferred block's link on its slot's list, the header of a
** run merged away), and only the log knows this attempt changed it.  So
** once an attempt has put anything on the free runs (runs_by), each of
** its blobs first claims every granule it covers (readers meet the locks
** and abort) and saves the bytes there at the end of its write log, in
** the heap (ame__tx_save_shared): an abort puts them back before the
** locks go, and so does the recoverer of a process that dies in such an
** attempt before its commit is decided.  And a blob may lie over words
** this attempt wrote through the log (a span's or a run's header); the
** write-back at commit would put those words back over its bytes, so
** ame_heap_blob_new() makes such buffered stores hold the bytes it wrote
** (ame__tx_overwritten).
**
** A block: a 16-byte header (word 0: size — for a small block its offset
** in its span, the class giving its size —, class, pool, tag; word 1: the
** owner word while allocated, the next free block while free), then the
** caller's bytes.
*/
#include "heap.h"

#include <errno.h>
#include <stdlib.h>

#define NC AME__HEAP_NCLASS
#define HDR AME__HEAP_HDR
#define SPAN AME__HEAP_SPAN
#define PAGE AME__HEAP_PAGE
#define SPAN_HDR 64        /* a span's header: its first granule */
#define GRAIN 64           /* bytes under one orec in a heap (heap.c) */

/* Header word 0. */
#define H_TAG(w) ((unsigned)((w) & 0xff))
#define H_BLOB ((uintptr_t)1 << 8)   /* blob; on a free run: clean */
#define H_LARGE ((uintptr_t)1 << 9)  /* large block or free run */
#define H_FREE ((uintptr_t)1 << 10)
#define H_CLASS(w) ((unsigned)(((w) >> 11) & 0x3f))
#define H_SIZE(w) ((size_t)((w) >> 17)) /* large: bytes - HDR; small: the
                                           block's offset in its span */
#define H_MAKE(size, cls, blob, large, tag)                                  \
  (((uintptr_t)(size) << 17) | ((uintptr_t)(cls) << 11) |                   \
   ((blob) ? H_BLOB : 0) | ((large) ? H_LARGE : 0) | ((uintptr_t)(tag)&0xff))

/* A span's header: the word of field f of span sp. */
#define SW(sp, f) ((uintptr_t *)((sp) + 8 * (f)))
enum {
  S_CLASS,   /* pool/class index i */
  S_FREE,    /* free blocks, a list through word 1 */
  S_LIVE,    /* blocks handed out and not given back */
  S_CARVE,   /* the next block never handed out */
  S_STATE,   /* SPAN_* */
  S_NEXT,    /* the partial list */
  S_PREV,
  S_FREED,   /* the attempt that last gave a block back (attempt_id) */
};
enum { SPAN_FULL = 0, SPAN_OWNED = 1, SPAN_PARTIAL = 2 };

#define LD(tx, a) ame_load_word_tx((tx), (const uintptr_t *)(a))
#define ST(tx, a, v) ame_store_word_tx((tx), (uintptr_t *)(a), (uintptr_t)(v))

/* User capacities of the small classes (the block is 16 bytes more); the
** last is half a span less its header. */
static const uint32_t class_cap[NC] = {
    16,    32,    48,    64,    80,    96,    112,   128,   160,   192,
    224,   256,   320,   384,   448,   512,   640,   768,   896,   1024,
    1280,  1536,  1792,  2048,  2560,  3072,  3584,  4096,  5120,  6144,
    7168,  8192,  10240, 12288, 14336, 16384, 20480, 24576, 28672,
    (SPAN - SPAN_HDR) / 2 - HDR};

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

/* The usable bytes of the block whose header word 0 is w (0 for a word
** that is no small block's: a zombie may read anything). */
static size_t block_cap(uintptr_t w) {
  if (w & H_LARGE) return H_SIZE(w);
  return H_CLASS(w) < NC ? class_cap[H_CLASS(w)] : 0;
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

/* The running attempt, as a span's S_FREED records it. */
static uintptr_t attempt_id(const ame_tx_t *tx) {
  return ((uintptr_t)tx->slot + 1) << 32 | tx->starts;
}

/* The attempt (attempt_id) that last put memory on the free runs, on
** this thread: while it runs, its blobs claim and save what they cover
** (top of the file). */
static AME__TLS uintptr_t runs_by;

/* Add n to the slot's byte count (two's complement). */
static void count(ame_tx_t *tx, struct ame__slot *s, intptr_t n) {
  ST(tx, &s->used, LD(tx, &s->used) + (uintptr_t)n);
}

/* ------------------------------------------------------------------------
** Free runs.
*/

/* Put [b, b + bytes) on the free runs, in address order, merging with the
** runs on either side (clean only if both are). */
static void insert_run(ame_tx_t *tx, uintptr_t b, size_t bytes, int clean) {
  struct ame__heap_hdr *h = hdr_of(tx);
  uintptr_t *link = &h->runs;
  runs_by = attempt_id(tx);
  uintptr_t prev = 0, r = LD(tx, link);
  while (r && r < b) {
    prev = r;
    link = (uintptr_t *)(r + 8);
    r = LD(tx, link);
  }
  if (r && b + bytes == r) { /* merge the next run into this one */
    uintptr_t w = LD(tx, r);
    bytes += H_SIZE(w) + HDR;
    clean = clean && (w & H_BLOB);
    r = LD(tx, r + 8);
  }
  if (prev) {
    uintptr_t w = LD(tx, prev);
    if (prev + H_SIZE(w) + HDR == b) { /* into the previous */
      size_t pbytes = H_SIZE(w) + HDR + bytes;
      clean = clean && (w & H_BLOB);
      ST(tx, prev, H_MAKE(pbytes - HDR, 0, clean, 1, 0) | H_FREE);
      ST(tx, prev + 8, r);
      return;
    }
  }
  ST(tx, b, H_MAKE(bytes - HDR, 0, clean, 1, 0) | H_FREE);
  ST(tx, b + 8, r);
  ST(tx, link, b);
}

/* Take *bytes (pages) from the free runs: the first that fits among those
** whose cleanliness is `prefer`, else (unless `only`) the first that
** fits; set *clean, and *bytes to what was taken (a run less than a page
** longer is taken whole).  Return it, or 0. */
static uintptr_t take_run(ame_tx_t *tx, size_t *bytes, int prefer, int only,
                          int *clean) {
  struct ame__heap_hdr *h = hdr_of(tx);
  uintptr_t *link = &h->runs, *other = NULL, r;
  for (r = LD(tx, link); r; link = (uintptr_t *)(r + 8), r = LD(tx, link)) {
    uintptr_t w = LD(tx, r);
    if (H_SIZE(w) + HDR < *bytes) continue;
    if (((w & H_BLOB) != 0) == prefer) break;
    if (other == NULL) other = link;
  }
  if (r == 0 && other && !only) r = LD(tx, link = other);
  if (r == 0) return 0;
  uintptr_t w = LD(tx, r);
  size_t have = H_SIZE(w) + HDR;
  int c = (w & H_BLOB) != 0;
  if (have - *bytes >= PAGE) { /* split: keep the tail free */
    uintptr_t rest = r + *bytes;
    ST(tx, rest, H_MAKE(have - *bytes - HDR, 0, c, 1, 0) | H_FREE);
    ST(tx, rest + 8, LD(tx, r + 8));
    ST(tx, link, rest);
  } else {
    *bytes = have;
    ST(tx, link, LD(tx, r + 8));
  }
  *clean = c;
  return r;
}

/* Before writing [b, b + bytes) outside the STM: claim every granule, so
** that a transaction that read a word there when it held a transactional
** block sees it change (see the top of the file). */
static void claim(ame_tx_t *tx, uintptr_t b, size_t bytes) {
  for (uintptr_t g = b & ~(uintptr_t)(GRAIN - 1); g < b + bytes; g += GRAIN)
    ame__tx_claim(tx, (uintptr_t *)g);
}

/* ------------------------------------------------------------------------
** Deferred frees.
*/

static void span_give(ame_tx_t *tx, uintptr_t b, uintptr_t w, int now);

/* Give back what slot k deferred, if the attempt that deferred it is over
** (for another slot, the list as this transaction reads it holds only
** committed attempts' frees). */
static void settle(ame_tx_t *tx, struct ame__slot *k) {
  uintptr_t b = LD(tx, &k->fresh);
  if (b == 0) return;
  if (k == ame__slot_of(tx) && LD(tx, &k->fresh_attempt) == tx->starts)
    return;
  ST(tx, &k->fresh, 0);
  while (b) {
    uintptr_t next = LD(tx, b + 8);
    uintptr_t w = LD(tx, b);
    if (w & H_LARGE)
      insert_run(tx, b, H_SIZE(w) + HDR, (w & H_BLOB) != 0);
    else
      span_give(tx, b, w, 0);
    b = next;
  }
}

/* Put block or run b (its header word 0 written, H_FREE set) on the
** slot's fresh list, for a later attempt. */
static void defer(ame_tx_t *tx, struct ame__slot *s, uintptr_t b) {
  settle(tx, s);
  ST(tx, &s->fresh_attempt, tx->starts);
  ST(tx, b + 8, LD(tx, &s->fresh));
  ST(tx, &s->fresh, b);
}

/* ------------------------------------------------------------------------
** Spans.
*/

static uintptr_t span_bsize(unsigned i) { return class_cap[i % NC] + HDR; }

/* The end of span sp's last block. */
static uintptr_t span_end(uintptr_t sp, unsigned i) {
  uintptr_t bsize = span_bsize(i);
  return sp + SPAN_HDR + (SPAN - SPAN_HDR) / bsize * bsize;
}

static void list_span(ame_tx_t *tx, uintptr_t sp, unsigned i) {
  struct ame__heap_hdr *h = hdr_of(tx);
  uintptr_t head = LD(tx, &h->partial[i]);
  ST(tx, SW(sp, S_NEXT), head);
  ST(tx, SW(sp, S_PREV), 0);
  if (head) ST(tx, SW(head, S_PREV), sp);
  ST(tx, &h->partial[i], sp);
  ST(tx, SW(sp, S_STATE), SPAN_PARTIAL);
}

static void unlist_span(ame_tx_t *tx, uintptr_t sp, unsigned i) {
  struct ame__heap_hdr *h = hdr_of(tx);
  uintptr_t next = LD(tx, SW(sp, S_NEXT)), prev = LD(tx, SW(sp, S_PREV));
  if (prev)
    ST(tx, SW(prev, S_NEXT), next);
  else
    ST(tx, &h->partial[i], next);
  if (next) ST(tx, SW(next, S_PREV), prev);
}

/* Span sp holds no live block: make it a free run (clean if it held
** blobs), now, or, if the running attempt gave its last blocks back,
** after it. */
static void release_span(ame_tx_t *tx, uintptr_t sp, unsigned i) {
  int clean = i >= NC;
  if (LD(tx, SW(sp, S_FREED)) == attempt_id(tx)) {
    ST(tx, sp, H_MAKE(SPAN - HDR, 0, clean, 1, 0) | H_FREE);
    defer(tx, ame__slot_of(tx), sp);
  } else {
    insert_run(tx, sp, SPAN, clean);
  }
}

/* A span no slot allocates from any more (sp was slot k's for class i):
** released if empty, listed if it has room, else left alone. */
static void detach(ame_tx_t *tx, struct ame__slot *k, unsigned i,
                   uintptr_t sp) {
  ST(tx, &k->span[i], 0);
  if (LD(tx, SW(sp, S_LIVE)) == 0) {
    release_span(tx, sp, i);
  } else if (LD(tx, SW(sp, S_FREE)) != 0 ||
             LD(tx, SW(sp, S_CARVE)) < span_end(sp, i)) {
    list_span(tx, sp, i);
  } else {
    ST(tx, SW(sp, S_STATE), SPAN_FULL);
  }
}

/* Block b (header word 0 w) goes back to its span; now: freed by the
** running attempt (else by an earlier one, settled). */
static void span_give(ame_tx_t *tx, uintptr_t b, uintptr_t w, int now) {
  uintptr_t sp = b - H_SIZE(w);
  if (!(w & H_FREE)) ST(tx, b, w | H_FREE);
  ST(tx, b + 8, LD(tx, SW(sp, S_FREE)));
  ST(tx, SW(sp, S_FREE), b);
  uintptr_t live = LD(tx, SW(sp, S_LIVE)) - 1;
  ST(tx, SW(sp, S_LIVE), live);
  if (now) ST(tx, SW(sp, S_FREED), attempt_id(tx));
  uintptr_t state = LD(tx, SW(sp, S_STATE));
  if (state == SPAN_OWNED) return; /* its slot finds it there */
  unsigned i = (unsigned)LD(tx, SW(sp, S_CLASS));
  if (live == 0) {
    if (state == SPAN_PARTIAL) unlist_span(tx, sp, i);
    release_span(tx, sp, i);
  } else if (state == SPAN_FULL) {
    list_span(tx, sp, i);
  }
}

/* A block of span sp (class index i), or 0 if it is full. */
static uintptr_t span_take(ame_tx_t *tx, uintptr_t sp, unsigned i) {
  uintptr_t b = LD(tx, SW(sp, S_FREE));
  if (b) {
    ST(tx, SW(sp, S_FREE), LD(tx, b + 8));
  } else {
    b = LD(tx, SW(sp, S_CARVE));
    uintptr_t bsize = span_bsize(i);
    if (b + bsize > span_end(sp, i)) return 0;
    ST(tx, SW(sp, S_CARVE), b + bsize);
  }
  ST(tx, SW(sp, S_LIVE), LD(tx, SW(sp, S_LIVE)) + 1);
  return b;
}

/* Spans a slot takes from the arena's top at its first refill: a 128th of
** the arena, at least one span, at most 32 (2 MiB); and at most, after
** doubling at each refill: a 16th, at most 256 (16 MiB). */
static uintptr_t reserve_bytes(const struct ame__heap_hdr *h, unsigned frac,
                               uintptr_t most) {
  uintptr_t spans = h->arena_size / frac / SPAN;
  if (spans < 1) spans = 1;
  if (spans > most) spans = most;
  return spans * SPAN;
}

/* A span's worth of the slot's reserve, refilled from the arena's top when
** empty; 0 if the top has less than a span. */
static uintptr_t from_reserve(ame_tx_t *tx, struct ame__heap_hdr *h,
                              struct ame__slot *s) {
  uintptr_t top = LD(tx, &s->reserve), rend = LD(tx, &s->reserve_end);
  if (top == 0 || top + SPAN > rend) {
    /* Reserves are whole spans: nothing is left of the old one. */
    uintptr_t want = LD(tx, &s->reserve_next);
    if (want == 0) want = reserve_bytes(h, 128, 32);
    uintptr_t most = reserve_bytes(h, 16, 256);
    ST(tx, &s->reserve_next, 2 * want < most ? 2 * want : most);
    top = LD(tx, &h->top);
    if (top + want > arena_end(h)) want = SPAN;
    if (top + want > arena_end(h)) return 0;
    ST(tx, &h->top, top + want);
    rend = top + want;
    ST(tx, &s->reserve_end, rend);
  }
  ST(tx, &s->reserve, top + SPAN);
  return top;
}

/* Take back what the slots hold and the allocation of pool/class want (or
** of a large block: want >= 2 * NC) could use: deferred frees of
** attempts that committed, reserves, the empty spans slots allocate from
** and the spans of class want (listed or released like any other), and
** the top's last pages.  Everything free is then a free run, a listed
** span, or the running attempt's own frees.  The last resort before
** "full": it writes other slots' words, so they conflict with it. */
static void reclaim(ame_tx_t *tx, struct ame__heap_hdr *h, unsigned want) {
  struct ame__slot *slots = ame__heap_slots(h);
  uintptr_t top = LD(tx, &h->top);
  if (top < arena_end(h)) {
    insert_run(tx, top, arena_end(h) - top, 1);
    ST(tx, &h->top, arena_end(h));
  }
  for (unsigned k = 0; k < h->max_slots; k++) {
    struct ame__slot *s = &slots[k];
    settle(tx, s);
    uintptr_t r = LD(tx, &s->reserve), rend = LD(tx, &s->reserve_end);
    if (r && r < rend) {
      insert_run(tx, r, rend - r, 1);
      ST(tx, &s->reserve, 0);
      ST(tx, &s->reserve_end, 0);
    }
    if (LD(tx, &s->reserve_next)) ST(tx, &s->reserve_next, 0);
    for (unsigned i = 0; i < 2 * NC; i++) {
      uintptr_t sp = LD(tx, &s->span[i]);
      if (sp && (i == want || LD(tx, SW(sp, S_LIVE)) == 0))
        detach(tx, s, i, sp);
    }
  }
}

/* A new span for pool/class i, owned by slot s: from the free runs (for
** blobs clean ones first: another costs a claim of its 1,024 granules,
** amortised over the span's blocks), the reserve, or the top.  Return it,
** or 0 if none is left. */
static uintptr_t new_span(ame_tx_t *tx, struct ame__heap_hdr *h,
                          struct ame__slot *s, unsigned i) {
  int blob = i >= NC, clean = 1;
  size_t bytes = SPAN;
  settle(tx, s);
  uintptr_t sp = take_run(tx, &bytes, blob, 0, &clean);
  if (sp == 0) sp = from_reserve(tx, h, s);
  if (sp == 0) return 0;
  if (blob && !clean) claim(tx, sp, SPAN);
  ST(tx, SW(sp, S_CLASS), i);
  ST(tx, SW(sp, S_FREE), 0);
  ST(tx, SW(sp, S_LIVE), 0);
  ST(tx, SW(sp, S_CARVE), sp + SPAN_HDR);
  ST(tx, SW(sp, S_STATE), SPAN_OWNED);
  ST(tx, SW(sp, S_NEXT), 0);
  ST(tx, SW(sp, S_PREV), 0);
  ST(tx, SW(sp, S_FREED), 0);
  ST(tx, &s->span[i], sp);
  return sp;
}

/* Make slot s allocate pool/class i from a partial span, if there is one;
** return it, or 0. */
static uintptr_t adopt_partial(ame_tx_t *tx, struct ame__heap_hdr *h,
                               struct ame__slot *s, unsigned i) {
  uintptr_t sp = LD(tx, &h->partial[i]);
  if (sp == 0) return 0;
  unlist_span(tx, sp, i);
  ST(tx, SW(sp, S_STATE), SPAN_OWNED);
  ST(tx, &s->span[i], sp);
  return sp;
}

static void *alloc_small(ame_tx_t *tx, size_t size, int blob, unsigned tag,
                         uint64_t owner) {
  struct ame__heap_hdr *h = hdr_of(tx);
  struct ame__slot *s = ame__slot_of(tx);
  unsigned cls = class_of(size);
  unsigned i = (blob ? NC : 0) + cls;
  uintptr_t sp = LD(tx, &s->span[i]), b = 0;
  if (sp) b = span_take(tx, sp, i);
  for (int round = 0; b == 0; round++) {
    if (sp) detach(tx, s, i, sp);
    sp = adopt_partial(tx, h, s, i);
    if (sp == 0) sp = new_span(tx, h, s, i);
    if (sp == 0) {
      if (round) return NULL;
      reclaim(tx, h, i);
      continue;
    }
    b = span_take(tx, sp, i);
    assert(b && "a partial or new span without room");
  }
  ST(tx, b, H_MAKE(b - sp, cls, blob, 0, tag));
  ST(tx, b + 8, owner);
  count(tx, s, (intptr_t)(class_cap[cls] + HDR));
  return (void *)(b + HDR);
}

/* Large blocks: page runs, first fit from the free runs, else the top (for
** blobs: clean runs, the top, then the other runs, whose claim costs a
** log entry per 64 bytes). */
static void *alloc_large(ame_tx_t *tx, size_t size, int blob, unsigned tag,
                         uint64_t owner) {
  struct ame__heap_hdr *h = hdr_of(tx);
  struct ame__slot *s = ame__slot_of(tx);
  if (size > arena_end(h) - arena_start(h)) return NULL;
  size_t bytes = (size + HDR + PAGE - 1) & ~(size_t)(PAGE - 1);
  int clean = 1;
  settle(tx, s);
  uintptr_t b = 0;
  for (int round = 0; b == 0; round++) {
    size_t want = bytes;
    b = take_run(tx, &want, blob, blob, &clean);
    if (b == 0) {
      uintptr_t top = LD(tx, &h->top);
      if (top + bytes <= arena_end(h)) {
        ST(tx, &h->top, top + bytes);
        b = top;
        clean = 1;
        break;
      }
    }
    if (b == 0 && blob) b = take_run(tx, &want, 1, 0, &clean);
    if (b) {
      bytes = want;
      break;
    }
    if (round) return NULL;
    reclaim(tx, h, 2 * NC);
  }
  if (blob && !clean) claim(tx, b, bytes);
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
  return alloc_large(tx, size, blob, tag, owner);
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
  count(tx, s, -(intptr_t)(block_cap(w) + HDR));
  if ((w & H_LARGE) || (w & H_BLOB)) {
    /* Not to be written as a blob by this attempt (top of the file). */
    ST(tx, b, w | H_FREE);
    defer(tx, s, b);
    return;
  }
  span_give(tx, b, w, 1);
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
  return block_cap(LD(tx, (uintptr_t)p - HDR));
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
  ** will be thrown away by its validation), the last word zero-padded,
  ** after a release fence: a transactional reader that sees one of these
  ** words sees the locks claim() took on memory that held transactional
  ** blocks (its load of the word is an acquire, its orec check after). */
  const unsigned char *src = data;
  size_t words = len / 8;
  if (runs_by == attempt_id(tx)) {
    /* The attempt put memory on the free runs: what the committed state
    ** keeps here goes back if it does not commit, by its abort or by its
    ** recoverer (saved in the heap, complete before the first word
    ** below is written). */
    size_t bytes = ((len + 7) / 8) * 8;
    claim(tx, (uintptr_t)p, bytes);
    ame__tx_save_shared(tx, p, bytes / 8);
  }
  ame__fence_release();
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
  /* Words of these that this attempt logged earlier, as the allocator's
  ** (top of the file), now hold the blob's. */
  ame__tx_overwritten(tx, p, (len + 7) / 8);
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
  size_t cap = block_cap(LD(tx, b));
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
