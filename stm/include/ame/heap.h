/*
** ame/heap.h — a transactional heap shared by processes, on ame's STM.
**
** A heap is a memory region that several processes map at the same
** address, holding its own STM domain (clock, ownership records, a table of
** participants with their write logs), a crash-safe allocator and a
** directory of named roots.  Transactions over it are ame's ordinary
** transactions (ame/stm.h: AME_ATOMIC, ame_load_*_tx, ame_store_*_tx,
** retry, irrevocability, handlers, statistics) run on a descriptor from
** ame_heap_enter() instead of ame_thread_enter(): the same engine, with the
** same guarantees (opacity; the outcome of some serial order), across
** processes.  Pointers into the heap mean the same in every process.
**
** Two ways to share one:
**   - ame_heap_create(NULL, ...) makes an anonymous heap; processes forked
**     afterwards inherit it (this is how `ame run --workers N` shares state
**     between its workers).
**   - ame_heap_create("name", ...) makes /dev/shm/name, which unrelated
**     processes open with ame_heap_open("name"); it is mapped at the
**     address recorded in its header, and refused (-EADDRINUSE) where that
**     address is taken in the opening process.  Unless told an address,
**     the creator maps it at a random place in a range the kernel gives
**     nobody on its own (32-48 TiB), not where the kernel would put it:
**     below the libraries, whose place ASLR draws anew in each process.
** A process has at most one heap open at a time.
**
** Crash safety.  A participant may die at any instruction (SIGKILL):
** inside a transaction, holding ownership records, writing back, inside
** the allocator.  Its slot is recovered by ame_heap_recover_pid() (a
** supervisor that reaped it) or by any participant that meets one of its
** ownership records, or waits for its irrevocability ticket, and finds it
** dead (pid and start time, so a reused pid is not mistaken for it).
** Recovery finishes the write-back of a transaction that had committed and
** undoes one that had not, so every committed transaction is wholly
** visible and no uncommitted one at all; it releases every ownership record
** and the ticket; allocations of the dead attempt were transactional and
** vanish with it.  docs/shared.md gives the argument.
**
** What a heap transaction may touch: words in the heap, accessed through
** the STM (ame_load_*_tx / ame_store_*_tx on the heap's descriptor), and
** immutable blobs (ame_heap_blob_*), written once before they are
** published and read with a copy that the transaction then checks.
** ame_tx_malloc()/ame_tx_free() on a heap descriptor allocate in the heap
** (see ame_heap_alloc()).  Process-private memory must not be accessed by
** a heap transaction except through ame_tx_save() (it is undone on abort,
** and is not recovered after a crash, which ends the process anyway).
**
** Errors are negative errno values; ame_heap_strerror() names the heap's
** own (-EPROTO: not an ame heap or a corrupt one; -EADDRINUSE: its address
** is taken here; -ENOSPC: full).
*/
#ifndef AME_HEAP_H
#define AME_HEAP_H

#include "ame/stm.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ame_heap ame_heap_t;

/* ------------------------------------------------------------------------
** Creating, opening, closing.
*/

/* The least and the most bytes a heap's allocator manages (the most: its
** orec table holds 2^31 words at most, ame/stm_inline.h). */
#define AME_HEAP_MIN_SIZE ((size_t)4 << 20)
#define AME_HEAP_MAX_SIZE ((size_t)47 << 30)

typedef struct ame_heap_config {
  size_t size;          /* bytes the allocator manages (0: 256 MiB; from
                           AME_HEAP_MIN_SIZE to AME_HEAP_MAX_SIZE, 4 MiB
                           to 47 GiB); the mapping is larger by the
                           metadata, mostly write logs backed by memory
                           only where touched */
  uintptr_t address;    /* where to map it (0: a named heap at a random
                           place in 32-48 TiB, an anonymous one where the
                           kernel puts it) */
  unsigned max_slots;   /* participants (threads, over all processes) at
                           once (0: 128; at most 1024) */
} ame_heap_config_t;

/* Create a heap: anonymous (name NULL; shared with processes forked
** later) or /dev/shm/name (name: [A-Za-z0-9._-]{1,200}; the file must not
** exist).  Return 0 and set *out, or -EEXIST, -EINVAL, -ENOMEM,
** -EADDRINUSE, or another -errno from the system. */
AME_EXTERN int ame_heap_create(const char *name, const ame_heap_config_t *cfg,
                               ame_heap_t **out);

/* Open the heap /dev/shm/name at the address its header records.  Return
** 0 and set *out, -ENOENT, -EPROTO (not an ame heap, another layout
** version, or inconsistent), -EADDRINUSE (its address is taken in this
** process), -EBUSY (this process has a heap open), or another -errno. */
AME_EXTERN int ame_heap_open(const char *name, ame_heap_t **out);

/* Use a heap that is already mapped in this process at base (inherited
** from a parent that created it, or created by another copy of this
** library in the process, such as the `ame` command's before Python
** loads ame._ame).  Return 0 and set *out, -ENOENT (nothing mapped
** there), -EPROTO (not a heap, or not all of it mapped), -EBUSY (another
** heap is open).  Closing an adopted heap leaves it mapped. */
AME_EXTERN int ame_heap_adopt(void *base, ame_heap_t **out);

/* Unmap the heap from this process.  Every thread must have left it
** (ame_heap_exit).  The heap itself lives on while others map it (and, if
** named, until ame_heap_unlink). */
AME_EXTERN void ame_heap_close(ame_heap_t *h);

/* Remove /dev/shm/name (processes that map it keep it).  Return 0 or
** -errno. */
AME_EXTERN int ame_heap_unlink(const char *name);

/* Where the heap is mapped, and how many bytes. */
AME_EXTERN void *ame_heap_base(const ame_heap_t *h);
AME_EXTERN size_t ame_heap_mapped(const ame_heap_t *h);

/* The heap this process has open, or NULL. */
AME_EXTERN ame_heap_t *ame_heap_current(void);

/* Forget, in a child process just forked, that the parent's threads had
** entered the heap (their slots belong to the parent).  The heap stays
** mapped and open.  Call it first thing in the child. */
AME_EXTERN void ame_heap_after_fork_child(ame_heap_t *h);

/* ------------------------------------------------------------------------
** Participants.
*/

/* Register the calling thread with the heap and return its descriptor, or
** NULL (every slot is taken; see ame_heap_stats().slots_max).  Entering
** again returns the same descriptor and counts a reference.  The
** descriptor is used with ame/stm.h's transactions like any other. */
AME_EXTERN ame_tx_t *ame_heap_enter(ame_heap_t *h);

/* Leave (one reference); the last one frees the slot. */
AME_EXTERN void ame_heap_exit(ame_heap_t *h);

/* The calling thread's descriptor on h, or NULL. */
AME_EXTERN ame_tx_t *ame_heap_self(const ame_heap_t *h);

/* The index of a heap descriptor's slot (0 .. slots_max - 1): stable while
** its thread stays entered, and the same for no two live participants (the
** striped containers choose their lane by it). */
AME_EXTERN unsigned ame_heap_slot(const ame_tx_t *tx);

/* The heap a descriptor belongs to, or NULL for a process-private one. */
AME_EXTERN ame_heap_t *ame_tx_heap(const ame_tx_t *tx);

/* ------------------------------------------------------------------------
** Death and recovery.
*/

/* Recover every slot of process pid, which has died (a supervisor calls
** this after waitpid()).  Return the number of slots recovered. */
AME_EXTERN int ame_heap_recover_pid(ame_heap_t *h, pid_t pid);

/* Look at every slot and recover those whose process has died.  Return
** the number recovered. */
AME_EXTERN int ame_heap_check(ame_heap_t *h);

/* ------------------------------------------------------------------------
** Allocation.  Inside a transaction on a heap descriptor.  Memory comes
** from the heap; an attempt that aborts (or dies) allocated nothing; a
** block freed by an attempt that commits may be reused by the next
** transaction (nothing outside the STM reads heap memory).  Each block
** carries a tag (the caller's: what kind of object it is, for the
** conflict report) and a 48-bit owner word.
*/

/* Allocate size bytes (8-aligned), tagged.  Return NULL if the heap is
** full (the transaction goes on; see -ENOSPC): no 64 KiB span of the
** block's size class has a free block and no free run of the arena fits
** it, after taking back what other participants hold unused.  The free
** memory that cannot serve it is then free blocks in spans that also hold
** live blocks of other classes, free runs shorter than it, and blocks its
** own attempt freed (a blob never reuses those). */
AME_EXTERN void *ame_heap_alloc(ame_tx_t *tx, size_t size, unsigned tag,
                                uint64_t owner);

/* Free a block from ame_heap_alloc() (or a blob). */
AME_EXTERN void ame_heap_free(ame_tx_t *tx, void *p);

/* The usable size of a block, its tag and owner word (transactional). */
AME_EXTERN size_t ame_heap_size(ame_tx_t *tx, const void *p);
AME_EXTERN unsigned ame_heap_tag(ame_tx_t *tx, const void *p);
AME_EXTERN uint64_t ame_heap_owner(ame_tx_t *tx, const void *p);

/* Blobs: immutable byte strings, each referenced by exactly one word in
** the heap (its reference), which transactions read and write like any
** other.  ame_heap_blob_new() allocates a block and copies len bytes into
** it directly, not through the write log (nobody can reach the block
** before the transaction commits a reference to it), so a large value
** costs one log entry, not one per word (one per 64 bytes where it lands
** in memory that last held transactional blocks: the allocator claims
** that memory, so that a zombie reader of the old blocks aborts); store
** the result in its reference.  Its bytes never change after that.  ame_heap_blob_get()
** reads *ref (transactionally), copies up to len bytes of the blob into
** buf, then checks that *ref is unchanged, aborting if not: the copy is
** the blob as of the transaction's snapshot.  It returns the bytes copied
** (len clamped to the block), 0 for a NULL reference.  To free a blob, a
** transaction overwrites its reference and calls ame_heap_free() on it, in
** that order or the other, in the same transaction. */
AME_EXTERN void *ame_heap_blob_new(ame_tx_t *tx, const void *data, size_t len,
                                   unsigned tag, uint64_t owner);
AME_EXTERN size_t ame_heap_blob_get(ame_tx_t *tx, void *const *ref,
                                    void *buf, size_t len);

/* ------------------------------------------------------------------------
** Named roots: a directory from names (byte strings up to 255 bytes) to a
** (type, pointer) pair, transactional.
*/

/* Look name up.  Return 1 and set *type and *ptr, or 0 if absent. */
AME_EXTERN int ame_heap_root_get(ame_tx_t *tx, const void *name, size_t len,
                                 unsigned *type, void **ptr);

/* Set (or replace) name.  Return 0, -ENOSPC (heap full) or -EINVAL (name
** too long or empty). */
AME_EXTERN int ame_heap_root_set(ame_tx_t *tx, const void *name, size_t len,
                                 unsigned type, void *ptr);

/* Remove name.  Return 1 if it was there, else 0. */
AME_EXTERN int ame_heap_root_del(ame_tx_t *tx, const void *name, size_t len);

/* Tags the library uses for its own blocks (callers use 16 and up). */
enum { AME_HEAP_TAG_NONE = 0, AME_HEAP_TAG_ROOTS = 1,
       AME_HEAP_TAG_GARBAGE = 2 };

/* Clearing or destroying a container makes its contents unreachable in
** the transaction that does it, and leaves freeing them to
** ame_heap_collect(), outside any transaction, in transactions of bounded
** size (a large container would not fit one write log).  It runs up to
** `steps` of them on the calling thread's descriptor and returns 1 if
** garbage is left, 0 if none, -EINVAL inside a transaction or without a
** descriptor.  Garbage left by a process that died is collected by the
** next caller. */
AME_EXTERN int ame_heap_collect(ame_heap_t *h, unsigned steps);

/* ------------------------------------------------------------------------
** Containers in the heap, for bindings and C programs.  Every function
** runs inside a transaction on a heap descriptor and is an ordinary part
** of it.  Keys and values are byte strings (copied in as blobs).  Each
** container's blocks carry the tag and owner word given at creation.
** Functions that allocate return -ENOSPC when the heap is full (the
** transaction goes on; the caller decides).  The layouts keep operations
** on different keys, and additions to a counter, free of conflicts
** (docs/shared.md).
*/

typedef struct ame_hmap ame_hmap_t;       /* bytes -> bytes */
typedef struct ame_hqueue ame_hqueue_t;   /* FIFO of byte strings */
typedef struct ame_hcounter ame_hcounter_t; /* a 64-bit sum */
typedef struct ame_hlog ame_hlog_t;       /* append-only, numbered */

enum { AME_HMAP_IF_ABSENT = 1, AME_HMAP_IF_PRESENT = 2 };

/* Maps.  ame_hmap_put() returns 0 if it added the key, 1 if the key was
** there (its value is replaced, unless AME_HMAP_IF_ABSENT), or -ENOSPC
** (with AME_HMAP_IF_PRESENT and the key absent, 0 and nothing added).
** ame_hmap_find() returns the key's entry (valid in this transaction) or
** NULL; the entry_* functions read its lengths and copy its bytes (as
** ame_heap_blob_get()); ame_hmap_entry_set() replaces the value of an
** entry that ame_hmap_find() returned in this transaction (0, or -ENOSPC
** with the old value kept): a read-modify-write of one key with one
** lookup.  ame_hmap_gen() returns the map's removal count: entries are
** never moved, and freed only by ame_hmap_del() and ame_hmap_clear(),
** which bump it; so while it reads the same, an entry found by a committed
** transaction is still the map's entry for its key (a caller may keep
** entries by key, outside the heap, and skip the lookups).  Reading it
** conflicts with every removal.  ame_hmap_foreach() calls fn on every entry
** (stopping at, and returning, the first nonzero result); fn must not
** change the map. */
AME_EXTERN ame_hmap_t *ame_hmap_new(ame_tx_t *tx, unsigned tag,
                                    uint64_t owner);
AME_EXTERN void *ame_hmap_find(ame_tx_t *tx, ame_hmap_t *m, const void *key,
                               size_t len);
AME_EXTERN size_t ame_hmap_entry_klen(ame_tx_t *tx, const void *entry);
AME_EXTERN size_t ame_hmap_entry_vlen(ame_tx_t *tx, const void *entry);
AME_EXTERN size_t ame_hmap_entry_key(ame_tx_t *tx, const void *entry,
                                     void *buf, size_t len);
AME_EXTERN size_t ame_hmap_entry_value(ame_tx_t *tx, const void *entry,
                                       void *buf, size_t len);
AME_EXTERN int ame_hmap_entry_set(ame_tx_t *tx, ame_hmap_t *m, void *entry,
                                  const void *val, size_t vlen);
AME_EXTERN uint64_t ame_hmap_gen(ame_tx_t *tx, ame_hmap_t *m);
AME_EXTERN int ame_hmap_put(ame_tx_t *tx, ame_hmap_t *m, const void *key,
                            size_t klen, const void *val, size_t vlen,
                            int flags);
/* The key's entry, found, or added with val (then *added is 1): one lookup
** where ame_hmap_find() then ame_hmap_put() take two.  NULL: -ENOSPC. */
AME_EXTERN void *ame_hmap_find_or_add(ame_tx_t *tx, ame_hmap_t *m,
                                      const void *key, size_t klen,
                                      const void *val, size_t vlen,
                                      int *added);
AME_EXTERN int ame_hmap_del(ame_tx_t *tx, ame_hmap_t *m, const void *key,
                            size_t len);
AME_EXTERN size_t ame_hmap_len(ame_tx_t *tx, ame_hmap_t *m);
AME_EXTERN int ame_hmap_foreach(ame_tx_t *tx, ame_hmap_t *m,
                                int (*fn)(ame_tx_t *tx, void *entry,
                                          void *arg),
                                void *arg);
AME_EXTERN void ame_hmap_clear(ame_tx_t *tx, ame_hmap_t *m);
AME_EXTERN void ame_hmap_destroy(ame_tx_t *tx, ame_hmap_t *m);

/* Queues: push at the tail, peek/drop at the head. */
AME_EXTERN ame_hqueue_t *ame_hqueue_new(ame_tx_t *tx, unsigned tag,
                                        uint64_t owner);
AME_EXTERN int ame_hqueue_push(ame_tx_t *tx, ame_hqueue_t *q, const void *val,
                               size_t len);
AME_EXTERN void *ame_hqueue_peek(ame_tx_t *tx, ame_hqueue_t *q, size_t *len);
AME_EXTERN size_t ame_hqueue_item_value(ame_tx_t *tx, const void *item,
                                        void *buf, size_t len);
AME_EXTERN void ame_hqueue_drop(ame_tx_t *tx, ame_hqueue_t *q);
AME_EXTERN size_t ame_hqueue_len(ame_tx_t *tx, ame_hqueue_t *q);
AME_EXTERN void ame_hqueue_destroy(ame_tx_t *tx, ame_hqueue_t *q);

/* Counters: adding conflicts with no other participant's adding. */
AME_EXTERN ame_hcounter_t *ame_hcounter_new(ame_tx_t *tx, unsigned tag,
                                            uint64_t owner);
AME_EXTERN void ame_hcounter_add(ame_tx_t *tx, ame_hcounter_t *c, int64_t d);
AME_EXTERN int64_t ame_hcounter_get(ame_tx_t *tx, ame_hcounter_t *c);
AME_EXTERN void ame_hcounter_set(ame_tx_t *tx, ame_hcounter_t *c, int64_t v);

/* Logs: records numbered 1, 2, ... in commit order.  ame_hlog_first()
** returns the oldest record numbered above `after` (or NULL);
** ame_hlog_trim() drops the records numbered up to `upto`. */
AME_EXTERN ame_hlog_t *ame_hlog_new(ame_tx_t *tx, unsigned tag,
                                    uint64_t owner);
AME_EXTERN int64_t ame_hlog_append(ame_tx_t *tx, ame_hlog_t *l,
                                   const void *val, size_t len);
AME_EXTERN uint64_t ame_hlog_next_seq(ame_tx_t *tx, ame_hlog_t *l);
AME_EXTERN void *ame_hlog_first(ame_tx_t *tx, ame_hlog_t *l, uint64_t after);
AME_EXTERN void *ame_hlog_next(ame_tx_t *tx, const void *rec);
AME_EXTERN uint64_t ame_hlog_record_seq(ame_tx_t *tx, const void *rec);
AME_EXTERN size_t ame_hlog_record_len(ame_tx_t *tx, const void *rec);
AME_EXTERN size_t ame_hlog_record_value(ame_tx_t *tx, const void *rec,
                                        void *buf, size_t len);
AME_EXTERN size_t ame_hlog_trim(ame_tx_t *tx, ame_hlog_t *l, uint64_t upto);
AME_EXTERN void ame_hlog_destroy(ame_tx_t *tx, ame_hlog_t *l);

/* ------------------------------------------------------------------------
** Statistics.
*/

typedef struct ame_heap_stats {
  uint64_t size;           /* bytes mapped */
  uint64_t arena;          /* bytes the allocator manages */
  int64_t used;            /* bytes in allocated blocks (headers included;
                              garbage not yet collected counts) */
  uint64_t top;            /* arena bytes ever carved (high-water mark) */
  unsigned slots_max;      /* slots in the table */
  unsigned slots_live;     /* slots in use now */
  uint64_t recoveries;     /* slots recovered after their process died */
  uint64_t recovered_commits; /* ... of which finished a committed write-back */
  uint64_t clock;          /* the domain's commit clock */
  ame_stats_t tx;          /* transaction statistics over every slot that
                              ever ran (summed), as ame_stats_total() */
} ame_heap_stats_t;

AME_EXTERN void ame_heap_stats(ame_heap_t *h, ame_heap_stats_t *out);

/* Inside a transaction: the bytes allocated (ame_heap_stats().used) as of
** its snapshot. */
AME_EXTERN int64_t ame_heap_used_tx(ame_tx_t *tx);

/* A diagnostic: look for ownership records held by a slot that is free or
** whose process is dead, and irrevocability tickets held by free slots.
** Return how many (0: none); describe the first in msg.  Safe while others
** run (a record that changes while looked at is not counted). */
AME_EXTERN int ame_heap_verify(ame_heap_t *h, char *msg, size_t len);

/* The message for a negative error code from this header. */
AME_EXTERN const char *ame_heap_strerror(int err);

/* Test hook: if set, called by a heap descriptor's commit at each named
** phase ("locked", "validated", "writeback", "released"), and by an abort
** or a recovery once it has put back the bytes that the attempt's blobs
** covered ("restored"), so that a test can kill the process there.  Not
** for production use. */
AME_EXTERN void ame_heap_set_phase_hook(void (*hook)(const char *phase));

#ifdef __cplusplus
}
#endif
#endif /* AME_HEAP_H */
