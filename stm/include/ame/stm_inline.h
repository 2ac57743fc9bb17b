/*
** ame/stm_inline.h — the inlined fast path of transactional loads.
**
** Included by ame/stm.h when AME_STM_INLINE is defined (as liburcu's
** _LGPL_SOURCE does for its read side).  The layouts below are internal to
** the library and change between versions: code built with AME_STM_INLINE
** must be rebuilt with the library it links.  Nothing here is API.
**
** The protocol (see docs/stm.md): an orec is a word; even values are the
** commit timestamp of the last writer shifted left by one, odd values are a
** pointer to the owner's write-log entry with bit 0 set.  A load reads the
** orec, the data word, and the orec again; if the orec was unlocked,
** unchanged and no newer than the transaction's snapshot, the value belongs
** to the snapshot and the load is logged.  Anything else takes the slow path
** (own write, lock held by another, snapshot extension, full read log).
*/
#ifndef AME_STM_INLINE_H
#define AME_STM_INLINE_H

#include <stdint.h>

/* log2 of the bytes covered by one orec: 32-byte granules, as TinySTM's
** default (docs/stm.md says why not 64). */
#define AME__GRAIN_SHIFT 5

/* How far ame__orec_of folds a granule number onto itself: 2^20 granules
** (32 MiB, half the span of a malloc arena) apart.  A constant, not the
** table's own log2, so that each load's orec takes a shift by an
** immediate (one micro-op) where a shift by a register read from the
** descriptor costs a load and, on Intel cores, three micro-ops: about 6%
** of a red-black tree lookup at one thread. */
#define AME__FOLD_SHIFT 20

/* Where the fold lands: on the granule number's bits from 9 up, so that
** the 512 orecs of each 4 KiB page of the table keep their order. */
#define AME__FOLD_AT 9

/* One read-log entry: the word read and the orec value seen. */
struct ame__rentry {
  uintptr_t addr;    /* the word read (its orec is recomputed) */
  uintptr_t version; /* the orec's (even) value when read */
};

/* The hot part of a descriptor; struct ame_tx starts with it. */
struct ame__txhot {
  uintptr_t snapshot;          /* versions <= this are in the snapshot
                                  (0 when irrevocable: all take slow path) */
  struct ame__rentry *r_cur;   /* next free read-log entry */
  struct ame__rentry *r_end;   /* end of the read log */
  /* The domain's ownership records and how an address finds its own
  ** (ame__orec_of): the process's domain folds granule numbers onto its
  ** table; a shared heap maps each granule of its region to an orec of
  ** its own (bias: the region's start), so that transactions on
  ** different words of the heap never share one. */
  uintptr_t *orecs;
  uintptr_t orec_bias;
  uintptr_t orec_mask;         /* number of orecs - 1 */
};

AME_EXTERN uintptr_t ame__load_slow(ame_tx_t *tx, const uintptr_t *addr);

/* The orec covering addr: its granule number g, with its bits from
** AME__FOLD_SHIFT up folded onto its bits from AME__FOLD_AT up (XOR), so
** that the same offsets in different threads' malloc arenas, which differ
** only in high address bits, do not collide (with the default table of 2^20
** orecs, two words a multiple of 32 MiB apart share one only if that
** multiple is one of 2^11: 64 GiB), while a run of granules keeps a run of
** orecs, 8 to a cache line, in address order within each 4 KiB page of the
** table, as TinySTM's lock array keeps them.  The order matters: a walk
** through memory in address order then walks the table in address order
** too, which the hardware's stream prefetcher follows; XORed onto the low
** bits, the fold would permute the lines of each page (STAMP's yada: 4%
** slower at one thread).  In a heap g counts from the region's start and is
** below the table's size 2^k for every address in the region; the fold then
** changes only bits below 20 (k <= 31: heap.c), which it reads from bit 20
** up, so it is one-to-one on [0, 2^k) and each granule has an orec of its
** own (a heap's mask has bit 0 clear, so that both halves of a 64-byte
** granule share one, heap.c; the mask keeps an address outside the region,
** which a heap transaction must not touch, inside the table).  Not a
** multiplicative hash: that would scatter neighbours' orecs over the table
** and put a multiply on each load's dependency chain. */
static inline uintptr_t *ame__orec_of(const struct ame__txhot *h,
                                      uintptr_t addr) {
  uintptr_t g = (addr - h->orec_bias) >> AME__GRAIN_SHIFT;
  return &h->orecs[(g ^ ((g >> AME__FOLD_SHIFT) << AME__FOLD_AT)) &
                   h->orec_mask];
}

/* Log a load of word, its orec seen at l.  Every load is logged, also
** one under the same orec as the last: skipping those takes a branch
** that a search through a tree mispredicts about as often as it takes,
** or, without the branch, puts the last orec's address on each load's
** dependency chain; both cost more than the longer log (TinySTM does
** not skip them either).  Return 0, or -1 if the log is full (then
** nothing is logged: the slow path grows it). */
static inline int ame__log_read(struct ame__txhot *h, uintptr_t word,
                                uintptr_t l) {
  struct ame__rentry *e = h->r_cur;
  if (__builtin_expect(e == h->r_end, 0)) return -1;
  e->addr = word;
  e->version = l;
  h->r_cur = e + 1;
  return 0;
}

static inline uintptr_t ame__load_w(ame_tx_t *tx, const uintptr_t *a) {
  struct ame__txhot *h = (struct ame__txhot *)tx;
  uintptr_t *o = ame__orec_of(h, (uintptr_t)a);
  uintptr_t l = __atomic_load_n(o, __ATOMIC_ACQUIRE);
  if (__builtin_expect(!(l & 1) && l <= h->snapshot, 1)) {
    uintptr_t v = __atomic_load_n(a, __ATOMIC_ACQUIRE);
    if (__builtin_expect(__atomic_load_n(o, __ATOMIC_RELAXED) == l, 1)) {
      if (__builtin_expect(ame__log_read(h, (uintptr_t)a, l) != 0, 0))
        return ame__load_slow(tx, a);
      return v;
    }
  }
  return ame__load_slow(tx, a);
}

/* ame_prefetch_tx, inlined. */
static inline void ame__prefetch(ame_tx_t *tx, const void *a) {
  const struct ame__txhot *h = (const struct ame__txhot *)tx;
  __builtin_prefetch(a, 0, 3);
  __builtin_prefetch(ame__orec_of(h, (uintptr_t)a), 0, 3);
}

#endif /* AME_STM_INLINE_H */
