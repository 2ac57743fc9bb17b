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

/* log2 of the bytes covered by one orec (64-byte granules: one cache line;
** docs/stm.md has the measurements behind the choice). */
#define AME__GRAIN_SHIFT 6

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
  uintptr_t last_orec;         /* address of the orec of the last logged
                                  read (an integer, so that storing it
                                  does not alias the orec table) */
  /* The domain's ownership records and how an address finds its own
  ** (ame__orec_of): the process's domain folds granule numbers onto its
  ** table; a shared heap maps each granule of its region to an orec of
  ** its own (bias: the region's start), so that transactions on
  ** different words of the heap never share one. */
  uintptr_t *orecs;
  uintptr_t orec_bias;
  uintptr_t orec_mask;         /* number of orecs - 1 */
  unsigned shift;              /* log2 of the number of orecs */
};

AME_EXTERN uintptr_t ame__load_slow(ame_tx_t *tx, const uintptr_t *addr);

/* The orec covering addr: its granule number g, with the bits above the
** table's folded onto it (XOR), so that the same offsets in different
** threads' malloc arenas, which differ only in high address bits, do not
** collide, while a run of granules keeps a run of orecs, 8 to a cache
** line, as TinySTM's lock array does.  In a heap g counts from the
** region's start and is below the table's size for every address in the
** region, so it is the granule's own orec (the mask keeps an address
** outside it, which a heap transaction must not touch, inside the table).
** Not a multiplicative hash: that would scatter neighbours' orecs over the
** table and put a multiply on each load's dependency chain. */
static inline uintptr_t *ame__orec_of(const struct ame__txhot *h,
                                      uintptr_t addr) {
  uintptr_t g = (addr - h->orec_bias) >> AME__GRAIN_SHIFT;
  return &h->orecs[(g ^ (g >> h->shift)) & h->orec_mask];
}

static inline uintptr_t ame__load_w(ame_tx_t *tx, const uintptr_t *a) {
  struct ame__txhot *h = (struct ame__txhot *)tx;
  uintptr_t *o = ame__orec_of(h, (uintptr_t)a);
  uintptr_t l = __atomic_load_n(o, __ATOMIC_ACQUIRE);
  if (__builtin_expect(!(l & 1) && l <= h->snapshot, 1)) {
    uintptr_t v = __atomic_load_n(a, __ATOMIC_ACQUIRE);
    if (__builtin_expect(__atomic_load_n(o, __ATOMIC_RELAXED) == l, 1)) {
      if ((uintptr_t)o != h->last_orec) {
        if (__builtin_expect(h->r_cur == h->r_end, 0))
          return ame__load_slow(tx, a);
        h->r_cur->addr = (uintptr_t)a;
        h->r_cur->version = l;
        h->r_cur++;
        h->last_orec = (uintptr_t)o;
      }
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
