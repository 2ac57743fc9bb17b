/*
** stm/src/heap.c — the shared heap's region, its participants and their
** recovery (heap.h has the layout; ame/heap.h the contract).
**
** A participant is a thread of some process holding a slot: the slot says
** who it is (pid and the process's start time, which together name one
** process for the life of the system; a pid alone may be reused) and holds
** its descriptor, whose write log lives in the heap too.  Everything a
** transaction changes in the heap goes through that log (redo logging,
** ame/stm.h's engine), and the commit records its decision in the slot
** (`status`) before it writes back.  So when a process dies, whatever
** instruction it was at, its slots say all there is to do: if a commit was
** decided, finish its write-back; if not, put back the bytes it saved
** before writing a blob in place (heap_alloc.c; they lie at the end of
** its write log); in any case give back the orecs it still locks (the
** engine's ame__tx_recover), its place in the irrevocability queue, and
** the slot.  What its transactions allocated was allocated
** transactionally (heap_alloc.c) and goes away with the attempt.
**
** A slot belongs to a thread: its identity is the thread's id and start
** time (and the process's pid, for ame_heap_recover_pid).
**
** Who recovers: the supervisor that reaped the process
** (ame_heap_recover_pid), anyone that checks (ame_heap_check), and any
** participant that has been kept waiting by a lock or the irrevocability
** queue for a couple of milliseconds and finds the holder's process gone.
** Recovery is idempotent and claimed by compare-and-swap on the slot's
** state, so that two recoverers never run it at once, and a recoverer that
** dies half-way is replaced by the next.
**
** Taking a free slot is two steps, so that a slot is never LIVE without
** its owner's identity: a compare-and-swap of its pid from 0 to the
** taker's (which alone may then write the slot), the identity, and only
** then the state LIVE (release).  A recoverer therefore judges a LIVE
** slot by a complete identity, never a half-written one; a FREE slot
** whose pid is not 0 is being taken, and is given back (pid 0) only if
** that process is gone (a taker killed between the two steps).  Leaving
** or recovering a slot sets it FREE first and its pid to 0 last.
*/
#include "heap.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SIZE ((size_t)256 << 20)
#define DEFAULT_SLOTS 128
#define MAX_SLOTS 1024
#define LOG_ENTRIES 262144  /* write-log entries per slot (16 MiB) */
#define PAGE 4096
#define LIVENESS_MS 2       /* a waiter looks at a holder's process after */

struct ame_heap *ame__heap;
void (*ame__heap_phase_hook)(const char *phase);

static inline uintptr_t round_up(uintptr_t x, uintptr_t a) {
  return (x + a - 1) & ~(a - 1);
}

/* ------------------------------------------------------------------------
** Processes: who is alive.
*/

/* The start time of process pid (field 22 of /proc/pid/stat, clock ticks
** since boot), and in *state its state letter; 0 if it does not exist. */
static uint64_t proc_start(pid_t pid, char *state) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  /* The command name may hold spaces and parentheses: skip to the last
  ** ')', then field 3 (state) ... field 22 (starttime). */
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] != ' ') return 0;
  p += 2;
  if (state) *state = *p;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (p == NULL) return 0;
    p++;
  }
  return strtoull(p, NULL, 10);
}

/* The start time of thread tid if it runs, else 0.  /proc/TID names any
** thread, not only a process's first; a zombie is dead: it runs no more
** instructions. */
static uint64_t running_start(pid_t tid) {
  if (tid <= 0) return 0;
  char state = 0;
  uint64_t s = proc_start(tid, &state);
  return state == 'Z' || state == 'X' || state == 'x' ? 0 : s;
}

/* Is the thread (tid, start) alive? */
static int proc_alive(pid_t pid, uint64_t start) {
  uint64_t s = running_start(pid);
  return s != 0 && s == start;
}

static AME__TLS int my_tid_cache;
static AME__TLS uint64_t my_start_cache;

/* The calling thread's identity: its thread id and start time (a slot is
** a thread's, so that a thread that ends without ame_heap_exit is seen to
** be gone even while its process runs). */
static void my_identity(int *tid, uint64_t *start) {
  int t = (int)syscall(SYS_gettid);
  if (my_tid_cache != t) { /* first use, or a fork */
    my_tid_cache = t;
    my_start_cache = proc_start(t, NULL);
  }
  *tid = my_tid_cache;
  *start = my_start_cache;
}

/* ------------------------------------------------------------------------
** The region.
*/

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
  return h;
}

/* The hash of the header's identity and layout fields. */
static uint64_t hdr_check(const struct ame__heap_hdr *h) {
  return fnv(h, offsetof(struct ame__heap_hdr, check), 0xcbf29ce484222325ull);
}

struct layout {
  size_t size, off_table, off_orecs, off_slots, off_logs, off_arena, arena;
  unsigned slots, orec_bits;
  size_t log_entries, log_bytes;
};

/* The layout for an arena of `arena` bytes and `slots` slots:
**
**   header, descriptor table, slots, orecs, arena | write logs
**
** The orecs map every 64-byte granule of what is before the logs (all a
** transaction may touch) to an orec of its own, so that transactions on
** different words never conflict by sharing one; they take memory only
** where used, as do the logs (most of the mapping).  The table has a word
** per 32-byte granule (ame__orec_of's shift is the process's) and the
** domain's mask has bit 0 clear, so both halves of a 64-byte granule take
** the even word: a 64-byte granule keeps a heap's claims (heap_alloc.c)
** at one log entry per 64 bytes. */
static int plan(size_t arena, unsigned slots, struct layout *L) {
  memset(L, 0, sizeof *L);
  if (arena < AME_HEAP_MIN_SIZE || arena > AME_HEAP_MAX_SIZE || slots == 0 ||
      slots > MAX_SLOTS)
    return -EINVAL;
  L->arena = arena = round_up(arena, PAGE);
  L->slots = slots;
  L->log_entries = LOG_ENTRIES;
  L->log_bytes = round_up(LOG_ENTRIES / AME__WCHUNK *
                              sizeof(struct ame__wchunk), PAGE);
  size_t off = round_up(sizeof(struct ame__heap_hdr), 64);
  L->off_table = off; /* the descriptor table: a pointer per slot */
  off = round_up(off + (size_t)slots * sizeof(ame_tx_t *), PAGE);
  L->off_slots = off;
  off = round_up(off + (size_t)slots * sizeof(struct ame__slot), PAGE);
  L->off_orecs = off;
  /* The smallest power of two of orecs that covers itself and the rest. */
  unsigned bits = 10;
  while (((size_t)1 << bits << AME__GRAIN_SHIFT) <
         off + ((size_t)1 << bits) * sizeof(uintptr_t) + arena)
    bits++;
  /* ame__orec_of's fold is one-to-one on tables of up to 2^31 orecs,
  ** which AME_HEAP_MAX_SIZE keeps to (with room for the metadata). */
  assert(bits <= 31);
  L->orec_bits = bits;
  off = round_up(off + ((size_t)1 << bits) * sizeof(uintptr_t), PAGE);
  L->off_arena = off;
  off += arena;
  L->off_logs = off;
  off += (size_t)slots * L->log_bytes;
  L->size = off;
  return 0;
}

/* Slot i's write log. */
static struct ame__wchunk *slot_log(const struct ame__heap_hdr *h,
                                    unsigned i) {
  size_t bytes = round_up(h->log_entries / AME__WCHUNK *
                              sizeof(struct ame__wchunk), PAGE);
  return (struct ame__wchunk *)((char *)h + h->off_logs + (size_t)i * bytes);
}

static int valid_name(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > 200) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return name[0] != '.';
}

static void init_region(struct ame__heap_hdr *h, const struct layout *L,
                        uintptr_t base) {
  memcpy(h->magic, AME__HEAP_MAGIC, 8);
  h->version = AME__HEAP_VERSION;
  h->hdr_size = sizeof *h;
  h->size = L->size;
  h->base = base;
  h->max_slots = L->slots;
  h->orec_bits = L->orec_bits;
  h->log_entries = L->log_entries;
  h->off_table = L->off_table;
  h->off_orecs = L->off_orecs;
  h->off_slots = L->off_slots;
  h->off_logs = L->off_logs;
  h->off_arena = L->off_arena;
  h->arena_size = L->arena;
  h->slot_size = sizeof(struct ame__slot);
  if (getrandom(h->seed, sizeof h->seed, 0) != (ssize_t)sizeof h->seed) {
    h->seed[0] = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    h->seed[1] = (uint64_t)(uintptr_t)h ^ 0x9E3779B97F4A7C15ull;
  }
  h->check = hdr_check(h);

  /* Orecs start at 0 (unlocked, version 0: older than any snapshot), as
  ** a fresh mapping is, so they need no writing; nor do the write logs,
  ** whose chunks are linked as their owner first uses them.  Only what
  ** is not zero is written here: the region takes memory where used. */
  struct ame__dom *d = &h->dom;
  uintptr_t *orecs = (uintptr_t *)((char *)h + L->off_orecs);
  d->clock = 1;
  d->orecs = orecs;
  d->orec_bias = base;
  d->orec_mask = (((uintptr_t)1 << L->orec_bits) - 1) & ~(uintptr_t)1;
  d->escalate_after = 16;
  d->max_threads = L->slots;
  d->shared = 1;
  d->heap = NULL; /* per process: see ame_tx_heap() */
  /* The descriptor table the engine's scans walk: every slot's
  ** descriptor, fixed (the same pointers in every process). */
  struct ame__slot *slots = ame__heap_slots(h);
  ame_tx_t **table = (ame_tx_t **)((char *)h + L->off_table);
  d->threads = table;
  d->n_slots = L->slots;
  for (unsigned i = 0; i < L->slots; i++) {
    struct ame__slot *s = &slots[i];
    table[i] = &s->tx;
    s->tx.active = AME__IDLE;
    s->tx.hold = AME__IDLE;
  }
  ame__heap_alloc_init(h);
}

static int attach(struct ame__heap_hdr *hdr, size_t size, const char *name,
                  ame_heap_t **out) {
  struct ame_heap *heap = calloc(1, sizeof *heap);
  if (heap == NULL) return -ENOMEM;
  heap->hdr = hdr;
  heap->size = size;
  if (name) {
    heap->named = 1;
    snprintf(heap->name, sizeof heap->name, "%s", name);
  }
  ame__heap = heap;
  *out = heap;
  return 0;
}

/* Where a named heap goes when the caller names no address.  The kernel
** puts a mapping just below the process's libraries, whose place ASLR
** draws anew in every process: an unrelated process that opens the heap
** would find that range taken by its own libraries or arenas about once in
** a few hundred tries.  So ask for a random 1 GiB-aligned place in
** [32 TiB, 48 TiB), which the kernel hands out to nobody on its own (the
** mmap area is near the top, the program and its brk near 85 TiB on x86-64
** and arm64 with 48-bit addresses, and ASan's shadow ends below 17 TiB).
** A hint only: where it is taken or out of reach, the kernel picks, as for
** an anonymous heap (and ThreadSanitizer, which keeps its own ranges,
** always drops it). */
static uintptr_t named_hint(size_t size) {
  const uintptr_t lo = (uintptr_t)32 << 40, span = (uintptr_t)16 << 40;
  if (sizeof(uintptr_t) < 8 || size >= span / 2) return 0;
  uint64_t r = 0;
  if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
    r = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
  uintptr_t slots = (span - round_up(size, (uintptr_t)1 << 30)) >> 30;
  return lo + ((uintptr_t)(r % slots) << 30);
}

int ame_heap_create(const char *name, const ame_heap_config_t *cfg,
                    ame_heap_t **out) {
  if (ame__heap) return -EBUSY;
  size_t size = cfg && cfg->size ? cfg->size : DEFAULT_SIZE;
  unsigned slots = cfg && cfg->max_slots ? cfg->max_slots : DEFAULT_SLOTS;
  uintptr_t want = cfg ? cfg->address : 0;
  if (want & (PAGE - 1)) return -EINVAL;
  if (name && !valid_name(name)) return -EINVAL;
  struct layout L;
  if (plan(size, slots, &L) != 0) return -EINVAL;
  int fd = -1;
  int flags = MAP_SHARED | MAP_NORESERVE;
  if (want) flags |= MAP_FIXED_NOREPLACE;
  if (name) {
    char path[256];
    snprintf(path, sizeof path, "/%s", name);
    fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)L.size) != 0) {
      int e = -errno;
      close(fd);
      shm_unlink(path);
      return e;
    }
  } else {
    flags |= MAP_ANONYMOUS;
  }
  void *at = want ? (void *)want : name ? (void *)named_hint(L.size) : NULL;
  void *p = mmap(at, L.size, PROT_READ | PROT_WRITE, flags, fd, 0);
  int err = p == MAP_FAILED ? -errno : 0;
  if (err == 0 && want && (uintptr_t)p != want) {
    munmap(p, L.size);
    err = -EADDRINUSE;
  }
  if (err == -EEXIST) err = -EADDRINUSE;
  if (err) {
    if (fd >= 0) {
      char path[256];
      snprintf(path, sizeof path, "/%s", name);
      shm_unlink(path);
      close(fd);
    }
    return err;
  }
  if (fd >= 0) close(fd);
  struct ame__heap_hdr *h = p;
  init_region(h, &L, (uintptr_t)p);
  STORE_REL(&h->ready, 1);
  int rc = attach(h, L.size, name, out);
  if (rc != 0) munmap(p, L.size);
  return rc;
}

int ame_heap_open(const char *name, ame_heap_t **out) {
  if (ame__heap) return -EBUSY;
  if (name == NULL || !valid_name(name)) return -EINVAL;
  char path[256];
  snprintf(path, sizeof path, "/%s", name);
  int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct stat st;
  struct ame__heap_hdr hdr;
  int err = 0;
  if (fstat(fd, &st) != 0) {
    err = -errno;
  } else if ((size_t)st.st_size < sizeof hdr ||
             pread(fd, &hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
    err = -EPROTO;
  } else if (memcmp(hdr.magic, AME__HEAP_MAGIC, 8) != 0 ||
             hdr.version != AME__HEAP_VERSION ||
             hdr.hdr_size != sizeof hdr || hdr.check != hdr_check(&hdr) ||
             hdr.size != (uint64_t)st.st_size ||
             hdr.slot_size != sizeof(struct ame__slot) ||
             (hdr.base & (PAGE - 1)) || hdr.max_slots == 0 ||
             hdr.max_slots > MAX_SLOTS) {
    err = -EPROTO;
  } else {
    struct layout L;
    if (plan(hdr.arena_size, hdr.max_slots, &L) != 0 || L.size != hdr.size ||
        L.off_arena != hdr.off_arena || L.off_logs != hdr.off_logs ||
        L.off_slots != hdr.off_slots || L.off_orecs != hdr.off_orecs ||
        L.off_table != hdr.off_table || L.log_entries != hdr.log_entries ||
        L.orec_bits != hdr.orec_bits || L.arena != hdr.arena_size)
      err = -EPROTO;
  }
  if (err) {
    close(fd);
    return err;
  }
  void *p = mmap((void *)hdr.base, hdr.size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
  err = p == MAP_FAILED ? -errno : 0;
  close(fd);
  if (err == -EEXIST) err = -EADDRINUSE;
  if (err == 0 && (uintptr_t)p != hdr.base) {
    munmap(p, hdr.size);
    err = -EADDRINUSE; /* a kernel without MAP_FIXED_NOREPLACE */
  }
  if (err) return err;
  struct ame__heap_hdr *h = p;
  if (!LOAD_ACQ(&h->ready)) {
    munmap(p, hdr.size);
    return -EPROTO;
  }
  int rc = attach(h, hdr.size, name, out);
  if (rc != 0) {
    munmap(p, hdr.size);
    return rc;
  }
  /* Processes that used it may have died since: recover their slots now
  ** rather than when someone first waits for them. */
  ame_heap_check(*out);
  return 0;
}

int ame_heap_adopt(void *base, ame_heap_t **out) {
  if (ame__heap) return ame__heap->hdr == base ? (*out = ame__heap, 0) : -EBUSY;
  if (base == NULL || ((uintptr_t)base & (PAGE - 1))) return -EINVAL;
  /* Is a page mapped there?  (msync says ENOMEM if not.) */
  if (msync(base, PAGE, MS_ASYNC) != 0) return -ENOENT;
  struct ame__heap_hdr *h = base;
  if (memcmp(h->magic, AME__HEAP_MAGIC, 8) != 0 ||
      h->version != AME__HEAP_VERSION || h->hdr_size != sizeof *h ||
      h->check != hdr_check(h) || h->base != (uint64_t)(uintptr_t)base ||
      !LOAD_ACQ(&h->ready))
    return -EPROTO;
  if (msync((char *)base + h->size - PAGE, PAGE, MS_ASYNC) != 0)
    return -EPROTO; /* not all of it is mapped */
  int rc = attach(h, h->size, NULL, out);
  if (rc == 0) (*out)->adopted = 1;
  return rc;
}

void ame_heap_close(ame_heap_t *heap) {
  if (heap == NULL) return;
  assert(ame__heap_self == NULL && "ame_heap_close with threads entered");
  if (!heap->adopted) munmap(heap->hdr, heap->size);
  if (ame__heap == heap) ame__heap = NULL;
  free(heap);
}

int ame_heap_unlink(const char *name) {
  if (name == NULL || !valid_name(name)) return -EINVAL;
  char path[256];
  snprintf(path, sizeof path, "/%s", name);
  return shm_unlink(path) == 0 ? 0 : -errno;
}

ame_heap_t *ame_heap_current(void) { return ame__heap; }

void *ame_heap_base(const ame_heap_t *heap) { return heap->hdr; }

size_t ame_heap_mapped(const ame_heap_t *heap) { return heap->size; }

void ame_heap_after_fork_child(ame_heap_t *heap) {
  (void)heap;
  ame__heap_self = NULL; /* the parent's slot is the parent's */
  my_tid_cache = 0;
}

unsigned ame_heap_slot(const ame_tx_t *tx) { return tx->slot; }

ame_heap_t *ame_tx_heap(const ame_tx_t *tx) {
  return tx && tx->dom->shared ? ame__heap : NULL;
}

/* ------------------------------------------------------------------------
** Participants.
*/

ame_tx_t *ame_heap_enter(ame_heap_t *heap) {
  if (ame__heap_self) {
    ame__heap_self->refs++;
    return ame__heap_self;
  }
  struct ame__heap_hdr *h = heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  int tid, pid = (int)getpid();
  uint64_t start;
  my_identity(&tid, &start);
  for (int round = 0; round < 2; round++) {
    for (unsigned i = 0; i < h->max_slots; i++) {
      struct ame__slot *s = &slots[i];
      int32_t none = 0;
      if (LOAD(&s->state) != SLOT_FREE || LOAD(&s->pid) != 0 ||
          !__atomic_compare_exchange_n(&s->pid, &none, pid, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        continue;
      if (LOAD_ACQ(&s->state) != SLOT_FREE) {
        /* Its recoverer has not given it back yet (state FREE comes
        ** before pid 0 there, so this is only a stale read). */
        STORE_REL(&s->pid, 0);
        continue;
      }
      /* The slot is ours: the identity, then LIVE (release), so that a
      ** recoverer that sees LIVE sees who owns it. */
      STORE(&s->tid, tid);
      STORE(&s->start, start);
      STORE_REL(&s->incarnation, __atomic_add_fetch(&h->incarnations, 1,
                                                    __ATOMIC_RELAXED));
      STORE(&s->status, 0);
      STORE(&s->ticket, 0);
      STORE(&s->ticket_state, TICKET_NONE);
      STORE_REL(&s->state, SLOT_LIVE);
      if (ame__tx_setup(&s->tx, &h->dom, i, slot_log(h, i),
                        h->log_entries / AME__WCHUNK, pid) != 0) {
        STORE_REL(&s->state, SLOT_FREE);
        STORE_REL(&s->pid, 0);
        return NULL;
      }
      ame__heap_self = &s->tx;
      return &s->tx;
    }
    /* Full: perhaps some slot's owner died unnoticed. */
    if (ame_heap_check(heap) == 0) break;
  }
  return NULL;
}

void ame_heap_exit(ame_heap_t *heap) {
  (void)heap;
  ame_tx_t *tx = ame__heap_self;
  if (tx == NULL) return;
  assert(tx->nesting == 0 && "ame_heap_exit inside a transaction");
  if (--tx->refs > 0) return;
  struct ame__slot *s = ame__slot_of(tx);
  ame__tx_teardown(tx);
  STORE_REL(&s->state, SLOT_FREE);
  STORE_REL(&s->pid, 0);
  ame__heap_self = NULL;
}

ame_tx_t *ame_heap_self(const ame_heap_t *heap) {
  (void)heap;
  return ame__heap_self;
}

/* ------------------------------------------------------------------------
** Recovery.
*/

/* A recoverer's identity in one word: its thread id and the low 32 bits
** of its start time (ticks since boot: they wrap after 497 days at 100 Hz,
** and a reused thread id with the same low bits is still the same one
** only if the kernel reused the id within the same tick). */
static uint64_t rec_id(int tid, uint64_t start) {
  return ((uint64_t)(uint32_t)tid << 32) | (uint32_t)start;
}

/* Is the recoverer r (rec_id) alive? */
static int rec_alive(uint64_t r) {
  uint64_t s = running_start((pid_t)(r >> 32));
  return s != 0 && (uint32_t)s == (uint32_t)r;
}

/* Whether the owner of slot s is known dead: its identity read as one
** owner's (the incarnation and the state LIVE the same before and after:
** a new owner writes its identity before its incarnation and then LIVE,
** and only into a slot that was FREE), and that thread gone. */
static int owner_known_dead(struct ame__slot *s) {
  uint64_t inc = LOAD_ACQ(&s->incarnation);
  if (LOAD_ACQ(&s->state) != SLOT_LIVE) return 0;
  int32_t tid = LOAD_ACQ(&s->tid);
  uint64_t start = LOAD_ACQ(&s->start);
  if (LOAD_ACQ(&s->state) != SLOT_LIVE || LOAD_ACQ(&s->incarnation) != inc)
    return 0;
  return !proc_alive(tid, start);
}

/* Recover slot s if its owner is dead.  Return 1 if this call did it, 0
** if there was nothing to do or another recoverer has it.
**
** One recoverer at a time: the slot's recoverer word is taken by one
** compare-and-swap, from 0 or from a recoverer found dead, and only then
** is the slot looked at again.  (An identity written in two words beside
** the state could be read half old and half new: a second recoverer then
** judged the first one dead and recovered alongside it, and the slower of
** the two reset the descriptor and freed the slot under a new owner that
** had entered in between.)  While the word is ours, a slot whose owner is
** dead cannot change hands: it leaves that owner only through FREE, which
** only its recoverer sets. */
static int recover_slot(struct ame__heap_hdr *h, struct ame__slot *s) {
  int me;
  uint64_t my_start;
  my_identity(&me, &my_start);
  uint32_t st = LOAD_ACQ(&s->state);
  if (st == SLOT_FREE) {
    /* Being taken (pid set, not yet LIVE): give it back only if the
    ** taker is gone.  By its pid alone: a reused pid only delays this. */
    int32_t taker = LOAD_ACQ(&s->pid);
    if (taker != 0 && kill(taker, 0) != 0 && errno == ESRCH &&
        LOAD_ACQ(&s->state) == SLOT_FREE)
      __atomic_compare_exchange_n(&s->pid, &taker, 0, 0, __ATOMIC_ACQ_REL,
                                  __ATOMIC_RELAXED);
    return 0;
  }
  if (st == SLOT_LIVE && !owner_known_dead(s)) return 0;
  uint64_t mine = rec_id(me, my_start);
  uint64_t r = LOAD_ACQ(&s->recoverer);
  for (;;) {
    if (r != 0 && r != mine && rec_alive(r)) return 0; /* someone is at it */
    if (__atomic_compare_exchange_n(&s->recoverer, &r, mine, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      break;
  }
  /* Ours.  Look again: a recoverer before us may have finished, and the
  ** slot have a new, live owner. */
  st = LOAD_ACQ(&s->state);
  if (st != SLOT_RECOVERING && !(st == SLOT_LIVE && owner_known_dead(s))) {
    STORE_REL(&s->recoverer, 0);
    return 0;
  }
  /* LIVE with a dead owner, or RECOVERING by one that died half-way
  ** (each step below is idempotent: start again). */
  STORE_REL(&s->state, SLOT_RECOVERING);
  ame_tx_t *tx = &s->tx;
  uintptr_t status = LOAD_ACQ(&s->status);
  int finished = ame__tx_recover(tx, status);
  /* A thread of this process that ended without leaving: its descriptor's
  ** private memory (read log, vectors) is this process's to free. */
  if (LOAD(&s->pid) == (int32_t)getpid()) ame__tx_teardown(tx);
  /* The irrevocability queue: leave it. */
  STORE(&s->ticket, 0);
  STORE_REL(&s->ticket_state, TICKET_NONE);
  if (LOAD(&s->retry_waiting)) {
    __atomic_sub_fetch(&h->dom.retry_waiters, 1, __ATOMIC_SEQ_CST);
    STORE(&s->retry_waiting, 0);
  }
  STORE(&s->status, 0);
  STORE(&tx->in_use, 0);
  __atomic_add_fetch(&h->recoveries, 1, __ATOMIC_RELAXED);
  if (finished) __atomic_add_fetch(&h->recovered_commits, 1, __ATOMIC_RELAXED);
  /* Wake whoever waits in ame_retry: the write-back may have changed what
  ** they read. */
  ame__retry_wake(&h->dom);
  STORE_REL(&s->state, SLOT_FREE);
  STORE_REL(&s->pid, 0);
  STORE_REL(&s->recoverer, 0);
  return 1;
}

int ame_heap_recover_pid(ame_heap_t *heap, pid_t pid) {
  struct ame__heap_hdr *h = heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  int n = 0;
  for (unsigned i = 0; i < h->max_slots; i++)
    if (LOAD(&slots[i].pid) == pid) n += recover_slot(h, &slots[i]);
  return n;
}

int ame_heap_check(ame_heap_t *heap) {
  struct ame__heap_hdr *h = heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  int n = 0;
  for (unsigned i = 0; i < h->max_slots; i++)
    if (LOAD(&slots[i].state) != SLOT_FREE || LOAD(&slots[i].pid) != 0)
      n += recover_slot(h, &slots[i]);
  return n;
}

int ame__heap_owner_dead(ame_tx_t *tx, ame_tx_t *owner) {
  struct ame__heap_hdr *h = ame__heap->hdr;
  (void)tx;
  struct ame__slot *s = ame__slot_of(owner);
  if (LOAD_ACQ(&s->state) == SLOT_FREE) return 1; /* already recovered */
  return recover_slot(h, s);
}

/* ------------------------------------------------------------------------
** The irrevocability token across processes: Lamport's bakery over the
** slots (FIFO by ticket number, ties by slot), so that a participant that
** dies holding or awaiting the token cannot wedge it: recovery clears its
** number.  Irrevocable transactions are rare (escalation after repeated
** aborts), so a scan of the slots per step costs nothing that matters.
*/

uintptr_t ame__heap_ticket_take(ame_tx_t *tx) {
  struct ame__heap_hdr *h = ame__heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  struct ame__slot *me = ame__slot_of(tx);
  __atomic_store_n(&me->ticket_state, TICKET_WAITING, __ATOMIC_SEQ_CST);
  uintptr_t max = 0;
  for (unsigned i = 0; i < h->max_slots; i++) {
    uintptr_t t = __atomic_load_n(&slots[i].ticket, __ATOMIC_SEQ_CST);
    if (t > max) max = t;
  }
  __atomic_store_n(&me->ticket, max + 1, __ATOMIC_SEQ_CST);
  __atomic_store_n(&me->ticket_state, TICKET_HOLDING, __ATOMIC_SEQ_CST);
  return max + 1;
}

int ame__heap_ticket_served(ame_tx_t *tx, uintptr_t ticket) {
  struct ame__heap_hdr *h = ame__heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  struct ame__slot *me = ame__slot_of(tx);
  unsigned mine = (unsigned)(me - slots);
  for (unsigned i = 0; i < h->max_slots; i++) {
    if (i == mine) continue;
    struct ame__slot *s = &slots[i];
    uint32_t choosing = __atomic_load_n(&s->ticket_state, __ATOMIC_SEQ_CST);
    uintptr_t t = __atomic_load_n(&s->ticket, __ATOMIC_SEQ_CST);
    if (choosing == TICKET_WAITING ||
        (t != 0 && (t < ticket || (t == ticket && i < mine)))) {
      /* Ahead of us (or choosing).  If that has lasted, is it alive? */
      uint64_t now = 0;
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
      now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
      if (tx->stuck_lock != (uintptr_t)s + 1) {
        tx->stuck_lock = (uintptr_t)s + 1;
        tx->stuck_since = now;
      } else if (now - tx->stuck_since >= LIVENESS_MS) {
        tx->stuck_since = now;
        recover_slot(h, s);
      }
      return 0;
    }
  }
  return 1;
}

void ame__heap_token_release(ame_tx_t *tx) {
  struct ame__slot *me = ame__slot_of(tx);
  __atomic_store_n(&me->ticket, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&me->ticket_state, TICKET_NONE, __ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------------------
** Statistics and errors.
*/

void ame_heap_stats(ame_heap_t *heap, ame_heap_stats_t *out) {
  struct ame__heap_hdr *h = heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  memset(out, 0, sizeof *out);
  out->size = h->size;
  out->arena = h->arena_size;
  out->slots_max = h->max_slots;
  out->top = LOAD(&h->top) - (h->base + h->off_arena);
  out->recoveries = LOAD(&h->recoveries);
  out->recovered_commits = LOAD(&h->recovered_commits);
  out->clock = LOAD(&h->dom.clock);
  for (unsigned i = 0; i < h->max_slots; i++) {
    struct ame__slot *s = &slots[i];
    if (LOAD(&s->state) != SLOT_FREE) out->slots_live++;
    out->used += (int64_t)LOAD(&s->used);
    ame_stats_t st;
    ame__stats_heap(&s->tx, &st);
    out->tx.commits += st.commits;
    out->tx.commits_ro += st.commits_ro;
    out->tx.aborts += st.aborts;
    for (int c = 0; c < AME_ABORT__COUNT; c++)
      out->tx.aborts_by_cause[c] += st.aborts_by_cause[c];
    out->tx.retries += st.retries;
    out->tx.irrevocable += st.irrevocable;
    out->tx.escalations += st.escalations;
    out->tx.extensions += st.extensions;
    if (st.max_attempts > out->tx.max_attempts)
      out->tx.max_attempts = st.max_attempts;
  }
}

int64_t ame_heap_used_tx(ame_tx_t *tx) {
  struct ame__heap_hdr *h = ame__heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  uintptr_t sum = 0;
  for (unsigned i = 0; i < h->max_slots; i++)
    sum += ame_load_word_tx(tx, &slots[i].used);
  return (int64_t)sum;
}

int ame_heap_verify(ame_heap_t *heap, char *msg, size_t len) {
  struct ame__heap_hdr *h = heap->hdr;
  struct ame__slot *slots = ame__heap_slots(h);
  uintptr_t *orecs = h->dom.orecs;
  size_t n = (size_t)1 << h->orec_bits;
  int bad = 0;
  if (msg && len) msg[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    uintptr_t l = LOAD_ACQ(&orecs[i]);
    if (!(l & 1)) continue;
    struct ame__wentry *e = (struct ame__wentry *)(l & ~(uintptr_t)1);
    ame_tx_t *owner = LOAD(&e->tx);
    struct ame__slot *s = ame__slot_of(owner);
    unsigned k = (unsigned)(s - slots);
    if (k >= h->max_slots) {
      if (!bad && msg) snprintf(msg, len, "orec %zu: owner outside the slots", i);
      bad++;
      continue;
    }
    uint32_t st = LOAD_ACQ(&s->state);
    int alive = st != SLOT_FREE && proc_alive(LOAD(&s->tid), LOAD(&s->start));
    if (!alive && LOAD_ACQ(&orecs[i]) == l) { /* still held: not a race */
      if (!bad && msg)
        snprintf(msg, len, "orec %zu held by slot %u (%s, pid %d)", i, k,
                 st == SLOT_FREE ? "free" : "dead", (int)LOAD(&s->pid));
      bad++;
    }
  }
  for (unsigned i = 0; i < h->max_slots; i++) {
    struct ame__slot *s = &slots[i];
    if (LOAD_ACQ(&s->state) == SLOT_FREE && LOAD(&s->ticket) != 0) {
      if (!bad && msg) snprintf(msg, len, "free slot %u holds a ticket", i);
      bad++;
    }
  }
  return bad;
}

const char *ame_heap_strerror(int err) {
  switch (err) {
  case -EPROTO: return "not an ame heap, or a corrupt one";
  case -EADDRINUSE: return "the heap's address is taken in this process";
  case -ENOSPC: return "the heap is full";
  case -EBUSY: return "this process has a heap open already";
  default: return ame_strerror(err);
  }
}

void ame_heap_set_phase_hook(void (*hook)(const char *phase)) {
  ame__heap_phase_hook = hook;
}
