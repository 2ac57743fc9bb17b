/*
** stm/src/heap.h — the shared heap's layout and what heap.c (region,
** participants, recovery), heap_alloc.c (allocator, blobs), heap_map.c
** (hash maps, the root directory) and the engine (stm.c) share.
**
** The region, mapped at the same address by every process:
**
**   header   struct ame__heap_hdr: identity and layout (checked on open),
**            the domain (clock, ticket, retry futex, orec table pointer),
**            the allocator's global words, the root directory, counters
**   table    the descriptor table the engine's scans walk
**   slots    struct ame__slot[max_slots]: a participant each: identity
**            (pid, thread, start time, incarnation), commit status, its
**            allocator words, and its descriptor (struct ame_tx)
**   orecs    the domain's ownership records: one per 64-byte granule of
**            everything above and the arena (a direct map, no hashing)
**   arena    the allocator's memory
**   logs     each slot's write log, fixed at creation (pages are only
**            backed once touched)
**
** Who writes what: a slot's descriptor, status and log are written by
** its owner thread only, and by a recoverer once the owner is dead; the
** allocator's words, the root directory and everything in the arena only
** by transactions; identity and state words by compare-and-swap.
*/
#ifndef AME_STM_HEAP_H
#define AME_STM_HEAP_H

#include "internal.h"
#include "ame/heap.h"

#define AME__HEAP_MAGIC "AMEHEAP\0"
#define AME__HEAP_VERSION 14
#define AME__HEAP_NCLASS 40          /* small size classes */
#define AME__HEAP_SPAN 65536         /* a small class's unit of arena */
#define AME__HEAP_PAGE 4096          /* granule of large blocks */
#define AME__HEAP_HDR 16             /* bytes of a block's header */

/* Slot states. */
enum { SLOT_FREE = 0, SLOT_LIVE = 1, SLOT_RECOVERING = 2 };

/* Ticket states (irrevocability across processes). */
enum { TICKET_NONE = 0, TICKET_WAITING = 1, TICKET_HOLDING = 2,
       TICKET_ABANDONED = 3 };

struct ame__slot {
  uint32_t state;              /* atomic: SLOT_* */
  int32_t pid;                 /* atomic: the owner's process; 0 when the
                                  slot is free and nobody is taking it */
  int32_t tid;                 /* the owner thread (written before the
                                  state turns LIVE) */
  uint64_t start;              /* its start time (clock ticks since boot,
                                  /proc/TID/stat field 22) */
  uint64_t incarnation;        /* counts the slot's owners */
  uint64_t recoverer;          /* atomic: who is recovering the slot, one
                                  word taken by compare-and-swap (from 0,
                                  or from a recoverer that died):
                                  rec_id(tid, start); 0: nobody */
  uint64_t pad0;
  uintptr_t status;            /* atomic: (ts << 1) | 1 once the current
                                  commit is decided (write-back may be
                                  unfinished), else 0 */
  uintptr_t ticket;            /* atomic: the ticket taken (TICKET_*) */
  uint32_t ticket_state;       /* atomic */
  uint32_t retry_waiting;      /* atomic: counted in retry_waiters */
  /* The allocator's per-slot words (transactional; heap_alloc.c).  The
  ** span each pool and class allocates from (index pool *
  ** AME__HEAP_NCLASS + class), or 0. */
  uintptr_t span[2 * AME__HEAP_NCLASS];
  /* What an attempt freed that it must not hand out again itself (small
  ** blobs, large blocks, spans it emptied), a list, and that attempt
  ** (tx.starts): given back by a later attempt. */
  uintptr_t fresh;
  uintptr_t fresh_attempt;
  /* The slot's reserve of arena (transactional): spans are taken from
  ** [reserve, reserve_end), which is taken from the arena's top several
  ** spans at a time, so that slots allocating at once rarely write the one
  ** top word; a full heap takes it back (heap_alloc.c: from_reserve,
  ** reclaim). */
  uintptr_t reserve;
  uintptr_t reserve_end;
  uintptr_t used;              /* bytes allocated minus freed by this
                                  slot's transactions (two's complement) */
  uintptr_t reserve_next;      /* bytes of the next refill of the reserve
                                  (0: the first size; heap_alloc.c) */
  struct ame_tx tx __attribute__((aligned(AME__CACHELINE)));
};

struct ame__heap_hdr {
  char magic[8];
  uint32_t version;
  uint32_t hdr_size;           /* sizeof(struct ame__heap_hdr) */
  uint64_t size;               /* bytes mapped */
  uint64_t base;               /* the address it is mapped at */
  uint32_t max_slots;
  uint32_t orec_bits;
  uint64_t log_entries;        /* write-log entries per slot */
  uint64_t off_table, off_orecs, off_slots, off_logs, off_arena;
  uint64_t arena_size;
  uint64_t slot_size;          /* sizeof(struct ame__slot) */
  uint64_t seed[2];            /* key of the maps' hash (random) */
  uint64_t check;              /* hash of the fields above */
  uint32_t ready;              /* atomic: initialised */
  uint32_t pad;
  struct ame__dom dom;         /* the domain (cache-aligned inside) */
  /* Allocator (transactional words). */
  uintptr_t top __attribute__((aligned(AME__CACHELINE))); /* uncarved */
  uintptr_t top_pad[AME__CACHELINE / sizeof(uintptr_t) - 1]; /* top alone
                                  in its granule (its own orec) */
  uintptr_t partial[2 * AME__HEAP_NCLASS]; /* spans of each pool and
                                  class with room, owned by no slot: a
                                  doubly linked list */
  uintptr_t runs;              /* free page runs (emptied spans, large
                                  blocks), a list in address order */
  uintptr_t roots;             /* the root directory (a map), or 0 */
  uintptr_t garbage;           /* unreachable structures to free, a list
                                  (heap_map.c: ame_heap_collect) */
  /* Counters (atomic). */
  uint64_t recoveries __attribute__((aligned(AME__CACHELINE)));
  uint64_t recovered_commits;
  uint64_t incarnations;
};

struct ame_heap {
  struct ame__heap_hdr *hdr;   /* == the region's base */
  size_t size;
  int named;
  int adopted;                 /* mapped by someone else (ame_heap_adopt) */
  char name[208];
};

/* The process's heap (one at a time). */
extern struct ame_heap *ame__heap;

static inline struct ame__slot *ame__heap_slots(const struct ame__heap_hdr *h) {
  return (struct ame__slot *)((char *)h + h->off_slots);
}

/* The slot a heap descriptor lives in. */
static inline struct ame__slot *ame__slot_of(ame_tx_t *tx) {
  return (struct ame__slot *)((char *)tx - offsetof(struct ame__slot, tx));
}

/* heap.c, for the engine (stm.c).  A heap descriptor met a lock of owner
** (another heap descriptor) that has stayed for a while: if owner's
** process is dead, recover its slot and return 1 (the caller tries
** again); else 0. */
int ame__heap_owner_dead(ame_tx_t *tx, ame_tx_t *owner);
/* The irrevocability ticket across processes. */
void ame__heap_token_acquire(ame_tx_t *tx);
void ame__heap_token_release(ame_tx_t *tx);
uintptr_t ame__heap_ticket_take(ame_tx_t *tx);
int ame__heap_ticket_served(ame_tx_t *tx, uintptr_t ticket);
/* A commit phase (for the test hook). */
extern void (*ame__heap_phase_hook)(const char *phase);

/* heap_alloc.c */
void ame__heap_alloc_init(struct ame__heap_hdr *h);
void *ame__heap_tx_malloc(ame_tx_t *tx, size_t size);
void ame__heap_tx_free(ame_tx_t *tx, void *p);

/* heap_map.c: the maps' hash. */
uint64_t ame__heap_hash(const struct ame__heap_hdr *h, const void *p,
                        size_t len);

#endif /* AME_STM_HEAP_H */
