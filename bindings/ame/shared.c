/*
** bindings/ame/shared.c — the C side of ame.shared: named dicts, counters,
** queues and channels in the shared transactional heap (ame/heap.h), the
** codec that turns Python values into the bytes they are stored as, and
** ame.atomic, which runs a Python function as one transaction over them.
** Policy that needs Python or Twisted (blocking waits, waking reactors,
** subscriptions) is in ame/shared.py; this file gives it one C call per
** transaction.
**
** The heap.  One per process (ame_heap_current()), found at first use:
** adopted from $AME_SHARED_HEAP (the address, in hex, of a heap that the
** `ame` command mapped before Python started), or else created anonymous,
** $AME_SHARED_SIZE bytes, shared with the processes forked afterwards.
** Each thread that touches a shared object enters the heap once
** (ame_heap_enter: a slot and a descriptor of its own) and leaves it when
** the thread ends (a pthread key's destructor).  A forked child forgets
** its parent's slots (a pthread_atfork handler; _after_fork, which
** ame/shared.py calls from os.register_at_fork, also drops an atomic block
** the fork happened in).
**
** A shared object is a small header in the heap (struct shobj: its kind,
** its container, the processes watching it) reached from the heap's
** directory of named roots, whose type field records the kind; the Python
** object caches the header's and the container's addresses, which never
** change (named objects are never destroyed).
**
** Transactions and Python frames.  An abort longjmps to the jmp_buf the
** engine was given, and that must never unwind a Python frame.  So every
** operation runs its transactional part, which touches no Python object,
** as a body (body_*) under a driver that owns the setjmp:
**   - outside ame.atomic, run_single() begins, runs the body, commits, and
**     runs it again on abort: one C call, one transaction;
**   - inside, run_nested() points the running transaction's restart at a
**     jmp_buf of its own for the length of the body; an abort there marks
**     the thread's attempt doomed and raises _Conflict (a BaseException
**     that ordinary `except Exception` does not catch), and every later
**     operation in that attempt raises it again.  atomic() (the driver of
**     the whole block, whose frame holds the block's setjmp for commit)
**     sees the doom when the function returns or raises, and runs it
**     again from the start.
** Values are encoded before the transaction (so a bad one is a TypeError
** before anything is written) and decoded after the body (copies made
** inside it, from blobs the engine validated).
**
** The interpreter lock.  A transaction may wait: for a lock held by a
** transaction of another thread of this process that is running Python
** code in an atomic block (it needs the GIL to go on), or for the
** irrevocability ticket such a block holds.  So bodies run without the GIL
** whenever another thread of this process has entered the heap, and every
** attempt after an abort runs without it; a process with one thread using
** shared objects (a reactor's) keeps it on the fast path.
**
** Deferred effects.  Inside ame.atomic, after_commit() and the reactor's
** hooks (amepy_shared_defer_method: TCP writes in transport.c; callLater
** in timers.c, callFromThread and stop in reactor.py) queue (callable, args, kwargs) on the thread's
** state; atomic() runs them, in order, once the transaction has
** committed, and drops them when an attempt aborts.
**
** The conflict report.  A single operation that aborts counts against its
** own object and key.  Inside atomic, each operation notes what it touched
** (the object, the key, the map entry's address); an abort is matched by
** its address (ame_tx_last_cause) against those entries, then against the
** objects' headers and containers, then against the operation running at
** the time.  Counts are this process's (stats()).
**
** Process-wide state (the heap, the hooks, the conflict table) is kept in
** statics, as in timers.c: it describes the process, not a module object.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ame/heap.h"

#include "shared.h"
#include "shared_codec.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
** Process-wide state.
*/

enum { KIND_DICT = 1, KIND_COUNTER = 2, KIND_QUEUE = 3, KIND_CHANNEL = 4 };
static const char *const kind_names[] = {"?", "dict", "counter", "queue",
                                         "channel"};

/* The type codes in the heap's root directory ("sh" + kind), and the tags
** of the blocks each kind allocates (for the heap's own accounting). */
#define ROOT_TYPE(kind) (0x73680000u | (unsigned)(kind))
enum { TAG_DICT = 16, TAG_COUNTER = 17, TAG_QUEUE = 18, TAG_CHANNEL = 19,
       TAG_META = 20 };

/* A shared object's header in the heap (every word transactional). */
struct shobj {
  uintptr_t kind;       /* KIND_* */
  uintptr_t impl;       /* the container (ame_hmap_t *, ...) */
  uintptr_t watchers;   /* ame_hmap_t *: process socket name -> cursor
                           (channels) or nothing (queues); 0 until the
                           first watcher */
  uintptr_t nwatchers;  /* entries in watchers */
  uintptr_t wversion;   /* bumped whenever a watcher comes or goes */
};

static ame_heap_t *heap;        /* GIL: this process's heap, once found */
static unsigned heap_epoch;     /* GIL: bumped when _use_heap replaces it */
static unsigned enter_gen;      /* GIL: bumped at fork: slots are stale */
static pid_t heap_pid;          /* the process whose slots those are */
static int heap_threads;        /* atomic: threads of this process with a
                                   slot (bodies drop the GIL when > 1) */
static pthread_key_t ts_key;    /* its destructor leaves the heap */

static PyObject *Conflict;      /* _ame._Conflict */
static PyObject *queue_empty;   /* queue.Empty */
static PyObject *notify_hook;   /* ame.shared._notify(obj, version) */
static PyObject *wait_hook;     /* ame.shared._wait(obj, timeout, seen) */
static PyObject *conflict_table;/* (name, kind, key bytes | None) -> n */
static PyTypeObject *dict_type, *counter_type, *queue_type, *channel_type;
static PyObject *empty_marker;  /* _ame._EMPTY: what _take() returns */

/* ------------------------------------------------------------------------
** Threads.
*/

enum { DOOM_NONE = 0, DOOM_ABORTED, DOOM_FULL, DOOM_WAIT };

/* What an operation inside atomic touched, for the conflict report. */
struct touch {
  PyObject *obj;            /* the shared object (a reference) */
  uintptr_t entry;          /* the map entry, or 0 */
  size_t esize;             /* its size */
  size_t koff, klen;        /* its key in tstate.tkeys (klen 0: none) */
};

/* What an attempt of ame.atomic took from a queue (values it found) less
** what it put there: when a get finds the queue empty, this is how many
** values its snapshot had, so that the wait ends when more than that are
** in, not at once because the rollback put back what the attempt took. */
struct qnet {
  const void *obj;          /* the queue (ShObject.obj) */
  long n;
};

struct tstate {
  ame_tx_t *tx;             /* this thread's descriptor, or NULL */
  unsigned gen;             /* enter_gen when it was taken */
  int depth;                /* ame.atomic nesting */
  int doomed;               /* DOOM_*: the current attempt is over */
  int collect;              /* a clear() ran: collect after commit */
  int wait_expired;         /* DOOM_WAIT timed out: blocking gets of the
                               next attempt do not wait */
  PyObject *wait_obj;       /* DOOM_WAIT: the queue, and the time left */
  PyObject *wait_timeout;
  PyObject *deadlines;      /* ame.atomic: a blocking get's deadline
                               (monotonic seconds, a float) by (queue,
                               the take's number in its attempt), kept
                               across the block's attempts, or NULL */
  unsigned takes;           /* takes from queues by the running attempt */
  struct qnet *qnet;        /* the running attempt's values taken less
                               values put, by queue (qnet_add) */
  size_t nqnet, cqnet;
  long wait_seen;           /* DOOM_WAIT: qnet of the queue waited for */
  PyObject *deferred;       /* list of (callable, args, kwargs) or NULL */
  PyObject *rollback;       /* list of callables to call if the attempt
                               is rolled back, or NULL */
  struct amepy_buf kbuf;          /* the key being looked up */
  struct amepy_buf ibuf;          /* a value going in */
  struct amepy_buf obuf;          /* values coming out */
  struct amepy_buf tkeys;         /* keys of the touches */
  struct amepy_buf pend;          /* dict.add: entries this attempt found,
                                     kept by key once it commits */
  struct touch *touch;      /* this attempt's touches */
  size_t ntouch, ctouch;
  uint64_t attempt;         /* the running attempt's serial (attempts) */
  PyObject *made;           /* list of the objects this attempt created,
                               or NULL (see made_confirm) */
};

/* Serials of ame.atomic attempts, process-wide (GIL): an object created
** inside an attempt is that attempt's until it commits. */
static uint64_t attempts;
#define MADE_DEAD UINT64_MAX /* ShObject.made_in: its attempt aborted */

/* initial-exec, as libame's (stm/src/internal.h: AME__TLS) */
static _Thread_local struct tstate *tls_ts
    __attribute__((tls_model("initial-exec")));

/* The thread ends: leave the heap (no GIL here; nothing of Python). */
static void ts_destroy(void *arg) {
  struct tstate *ts = arg;
  if (ts->tx && ts->gen == __atomic_load_n(&enter_gen, __ATOMIC_RELAXED)) {
    ame_heap_exit(heap);
    __atomic_sub_fetch(&heap_threads, 1, __ATOMIC_RELAXED);
  }
  amepy_buf_free(&ts->kbuf);
  amepy_buf_free(&ts->ibuf);
  amepy_buf_free(&ts->obuf);
  amepy_buf_free(&ts->tkeys);
  amepy_buf_free(&ts->pend);
  free(ts->touch);
  free(ts->qnet);
  if (tls_ts == ts) tls_ts = NULL;
  free(ts);
}

static PyObject *heap_error(const char *what, int err) {
  if (err == -ENOMEM) return PyErr_NoMemory();
  PyErr_Format(PyExc_OSError, "ame.shared: %s: %s", what,
               ame_heap_strerror(err));
  return NULL;
}

/* Parse $AME_SHARED_SIZE: bytes, with an optional K, M or G (binary),
** from AME_HEAP_MIN_SIZE to AME_HEAP_MAX_SIZE. */
static int parse_size(const char *s, size_t *out) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -1; /* strtoull takes signs, spaces */
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || errno) return -1;
  unsigned shift = 0;
  switch (*end) {
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  }
  if ((*end == 'b' || *end == 'B') && shift) end++;
  if (*end != '\0' || v > (SIZE_MAX >> shift)) return -1;
  *out = (size_t)v << shift;
  return *out < AME_HEAP_MIN_SIZE || *out > AME_HEAP_MAX_SIZE ? -1 : 0;
}

/* Say why $AME_SHARED_HEAP (addr) could not be adopted (rc). */
static void heap_adopt_error(const char *addr, int rc) {
  if (rc == -ENOENT || rc == -EINVAL) /* nothing mapped, or not a page */
    PyErr_Format(PyExc_OSError,
                 "ame.shared: AME_SHARED_HEAP=%s: no heap is mapped at "
                 "that address in this process (the ame command sets it "
                 "for its workers; unset it to make a heap here)",
                 addr);
  else
    PyErr_Format(PyExc_OSError,
                 "ame.shared: the heap at AME_SHARED_HEAP=%s: %s", addr,
                 ame_heap_strerror(rc));
}

/* The process's heap: adopted from $AME_SHARED_HEAP, or created anonymous
** at first use.  Return NULL with an exception set if that fails. */
static ame_heap_t *heap_get(void) {
  if (heap) return heap;
  ame_heap_t *h = ame_heap_current();
  if (h == NULL) {
    const char *addr = getenv("AME_SHARED_HEAP");
    if (addr && *addr) {
      char *end;
      errno = 0;
      unsigned long long a = strtoull(addr, &end, 16);
      if (!isxdigit((unsigned char)*addr) || errno || *end || a == 0) {
        PyErr_Format(PyExc_ValueError,
                     "ame.shared: AME_SHARED_HEAP=%s is not an address in "
                     "hex",
                     addr);
        return NULL;
      }
      int rc = ame_heap_adopt((void *)(uintptr_t)a, &h);
      if (rc != 0) {
        heap_adopt_error(addr, rc);
        return NULL;
      }
    } else {
      ame_heap_config_t cfg = {0};
      const char *size = getenv("AME_SHARED_SIZE");
      if (size && *size && parse_size(size, &cfg.size) < 0) {
        PyErr_Format(PyExc_ValueError,
                     "ame.shared: AME_SHARED_SIZE=%s is not a size of 4M "
                     "to 47G (bytes, with K, M or G; default 256M)",
                     size);
        return NULL;
      }
      const char *name = getenv("AME_SHARED_NAME");
      int rc;
      if (name && *name) {
        /* A named heap that unrelated processes share: open it, or make
        ** it if nobody has.  One that another process is still making
        ** reads as not a heap for a moment: try again for a second. */
        for (int tries = 0;; tries++) {
          rc = ame_heap_open(name, &h);
          if (rc == -ENOENT) {
            rc = ame_heap_create(name, &cfg, &h);
            if (rc == -EEXIST) continue;
          }
          if (rc != -EPROTO || tries >= 1000) break;
          Py_BEGIN_ALLOW_THREADS
          usleep(1000);
          Py_END_ALLOW_THREADS
        }
        if (rc != 0) {
          PyErr_Format(PyExc_OSError,
                       "ame.shared: the heap AME_SHARED_NAME=%s "
                       "(/dev/shm/%s): %s",
                       name, name, ame_heap_strerror(rc));
          return NULL;
        }
      } else {
        rc = ame_heap_create(NULL, &cfg, &h);
        if (rc != 0) return (ame_heap_t *)heap_error("creating the heap", rc);
      }
    }
  }
  heap = h;
  heap_pid = getpid();
  heap_epoch++;
  return heap;
}

/* The calling thread's state, with a descriptor on the heap.  GIL held.
** Return NULL with an exception set. */
static struct tstate *ts_slow(void) {
  if (heap_get() == NULL) return NULL;
  struct tstate *ts = tls_ts;
  if (ts == NULL) {
    ts = calloc(1, sizeof *ts);
    if (ts == NULL) return (struct tstate *)PyErr_NoMemory();
    if (pthread_setspecific(ts_key, ts) != 0) {
      free(ts);
      return (struct tstate *)PyErr_NoMemory();
    }
    tls_ts = ts;
  }
  if (ts->tx == NULL || ts->gen != enter_gen) {
    /* A stale descriptor (the parent's, before fork) is not ours to
    ** leave. */
    ts->tx = ame_heap_enter(heap);
    if (ts->tx == NULL) {
      ame_heap_stats_t st;
      ame_heap_stats(heap, &st);
      PyErr_Format(PyExc_RuntimeError,
                   "ame.shared: every participant slot of the shared heap "
                   "is taken (%u threads over all processes)",
                   st.slots_max);
      return NULL;
    }
    ts->gen = enter_gen;
    __atomic_add_fetch(&heap_threads, 1, __ATOMIC_RELAXED);
  }
  return ts;
}

static inline struct tstate *ts_get(void) {
  struct tstate *ts = tls_ts;
  if (ts && ts->tx && ts->gen == enter_gen && heap) return ts;
  return ts_slow();
}

int amepy_shared_in_atomic(void) {
  struct tstate *ts = tls_ts;
  return ts != NULL && ts->depth > 0;
}

/* Queue callable(*args, **kwargs) on ts to run after commit. */
static int defer_call(struct tstate *ts, PyObject *callable, PyObject *args,
                      PyObject *kwargs) {
  if (ts->deferred == NULL && (ts->deferred = PyList_New(0)) == NULL)
    return -1;
  PyObject *t = PyTuple_Pack(3, callable, args ? args : Py_None,
                             kwargs ? kwargs : Py_None);
  if (t == NULL) return -1;
  int rc = PyList_Append(ts->deferred, t);
  Py_DECREF(t);
  return rc;
}

int amepy_shared_defer_method(PyObject *obj, const char *name,
                              PyObject *arg) {
  struct tstate *ts = tls_ts;
  if (ts == NULL || ts->depth == 0) return 0;
  PyObject *fn = PyObject_GetAttrString(obj, name);
  if (fn == NULL) return -1;
  PyObject *a = PyList_Check(arg) ? PyList_AsTuple(arg) : Py_NewRef(arg);
  PyObject *args = a ? PyTuple_Pack(1, a) : NULL;
  int rc = args ? defer_call(ts, fn, args, NULL) : -1;
  Py_XDECREF(args);
  Py_XDECREF(a);
  Py_DECREF(fn);
  return rc < 0 ? -1 : 1;
}

PyObject *amepy_shared_call_method(PyObject *obj, const char *name,
                                   PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
  PyObject *fn = PyObject_GetAttrString(obj, name);
  if (fn == NULL) return NULL;
  PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, kwnames);
  Py_DECREF(fn);
  return r;
}

/* ------------------------------------------------------------------------
** Python objects for shared objects.
*/

typedef struct {
  PyObject_HEAD
  struct shobj *obj;        /* the header in the heap */
  void *impl;               /* its container */
  size_t osize, isize;      /* their block sizes (conflict report) */
  unsigned epoch;           /* heap_epoch it was opened in */
  uint64_t made_in;         /* 0: in the heap for good; else the serial of
                               the attempt that created it (usable by that
                               attempt only until it commits), or
                               MADE_DEAD: that attempt was rolled back */
  int kind;
  PyObject *name;           /* str */
  struct ecache *ec;        /* dict.add's entries by key, or NULL */
} ShObject;

/* ------------------------------------------------------------------------
** Entries by key, for dict.add (Counts.update): a private hash table per
** dict, from a key's encoding to its map entry, valid while the map's
** removal count (ame_hmap_gen) is the one it was filled at.  A count whose
** entry is known is a read and a store of the entry's value word, without
** the lookup through the trie (and its reads in the transaction's log).
** An entry goes in only once the transaction that found or added it has
** committed (tstate.pend until then): one found by an attempt that is
** rolled back may be one that attempt inserted, and freed by the rollback.
** GIL.
*/

/* The table is an index of 32-bit words (0: free; else the entry's number
** + 1 in the low ECACHE_BITS, the hash's high bits above them, so that a
** probe past another key rarely reads its entry) over a dense array of
** entries, each with its key's encoding inline when short: a hit reads
** one index word and one entry, both packed closer than Python's own dict
** of the same keys, which the caller's counting already has in cache. */
#define ECACHE_BITS 17
#define ECACHE_MAX (1u << ECACHE_BITS) /* entries kept at most */
#define ECACHE_INLINE 16               /* key bytes kept in the entry */

struct eslot {
  Py_hash_t h;
  void *entry;
  uint32_t klen, koff;      /* koff: in keys, if klen > ECACHE_INLINE */
  char key[ECACHE_INLINE];
};

struct ecache {
  uint64_t gen;             /* the map's ame_hmap_gen its entries are of */
  uint32_t *index;
  size_t mask;              /* index words - 1 */
  size_t n, cap;            /* entries used, allocated */
  struct eslot *slot;
  struct amepy_buf keys;    /* keys longer than ECACHE_INLINE */
};

static void ecache_free(struct ecache *ec) {
  if (ec == NULL) return;
  free(ec->index);
  free(ec->slot);
  amepy_buf_free(&ec->keys);
  free(ec);
}

static uint32_t etag(Py_hash_t h) {
  return (uint32_t)((uint64_t)h >> (64 - (32 - ECACHE_BITS)))
         << ECACHE_BITS;
}

static const char *ekey(const struct ecache *ec, const struct eslot *e) {
  return e->klen <= ECACHE_INLINE ? e->key : ec->keys.p + e->koff;
}

/* The index word at which key (hash h) is, or the free one it would go
** to. */
static size_t ecache_find(const struct ecache *ec, Py_hash_t h, const char *k,
                          size_t kl) {
  uint32_t tag = etag(h);
  for (size_t i = (size_t)h & ec->mask;; i = (i + 1) & ec->mask) {
    uint32_t x = ec->index[i];
    if (x == 0) return i;
    if ((x & ~(ECACHE_MAX - 1)) != tag) continue;
    const struct eslot *e = &ec->slot[(x & (ECACHE_MAX - 1)) - 1];
    if (e->h == h && e->klen == kl && memcmp(ekey(ec, e), k, kl) == 0)
      return i;
  }
}

static void *ecache_get(const struct ecache *ec, Py_hash_t h, const char *k,
                        size_t kl) {
  uint32_t x = ec->index[ecache_find(ec, h, k, kl)];
  return x ? ec->slot[(x & (ECACHE_MAX - 1)) - 1].entry : NULL;
}

/* Start over, empty, for entries of generation gen.  Return 0 or -1. */
static int ecache_reset(struct ecache *ec, uint64_t gen, size_t slots) {
  uint32_t *t = calloc(slots, sizeof *t);
  if (t == NULL) return -1;
  free(ec->index);
  ec->index = t;
  ec->mask = slots - 1;
  ec->n = 0;
  ec->keys.len = 0;
  ec->gen = gen;
  return 0;
}

static void ecache_put(struct ecache *ec, Py_hash_t h, const char *k,
                       size_t kl, void *entry) {
  if (kl > UINT32_MAX) return;
  size_t i = ecache_find(ec, h, k, kl);
  if (ec->index[i]) {
    ec->slot[(ec->index[i] & (ECACHE_MAX - 1)) - 1].entry = entry;
    return;
  }
  if (ec->n + 1 >= ECACHE_MAX) return;
  if (ec->n == ec->cap) {
    size_t cap = ec->cap ? 2 * ec->cap : 512;
    struct eslot *t = realloc(ec->slot, cap * sizeof *t);
    if (t == NULL) return;
    ec->slot = t;
    ec->cap = cap;
  }
  if (2 * (ec->n + 1) > ec->mask + 1) {
    /* Grow: twice the index words, the same entries. */
    size_t slots = 2 * (ec->mask + 1);
    uint32_t *t = calloc(slots, sizeof *t);
    if (t == NULL) return;
    for (size_t j = 0; j <= ec->mask; j++) {
      uint32_t x = ec->index[j];
      if (x == 0) continue;
      size_t at = (size_t)ec->slot[(x & (ECACHE_MAX - 1)) - 1].h & (slots - 1);
      while (t[at]) at = (at + 1) & (slots - 1);
      t[at] = x;
    }
    free(ec->index);
    ec->index = t;
    ec->mask = slots - 1;
    i = ecache_find(ec, h, k, kl);
  }
  struct eslot *e = &ec->slot[ec->n];
  *e = (struct eslot){.h = h, .entry = entry, .klen = (uint32_t)kl};
  if (kl <= ECACHE_INLINE) {
    memcpy(e->key, k, kl);
  } else {
    if (ec->keys.len > UINT32_MAX - kl) return;
    e->koff = (uint32_t)ec->keys.len;
    if (amepy_buf_put(&ec->keys, k, kl) < 0) return;
  }
  ec->n++;
  ec->index[i] = etag(h) | (uint32_t)ec->n;
}

/* One entry found by the running attempt: [ShObject *][uint64_t gen]
** [Py_hash_t][void *entry][size_t klen][key].  No GIL needed. */
static int pend_add(struct amepy_buf *b, void *obj, uint64_t gen,
                    Py_hash_t h, void *entry, const char *k, size_t kl) {
  if (amepy_buf_room(b, sizeof obj + sizeof gen + sizeof h + sizeof entry +
                            sizeof kl + kl) < 0)
    return -1;
  char *p = b->p + b->len;
  memcpy(p, &obj, sizeof obj), p += sizeof obj;
  memcpy(p, &gen, sizeof gen), p += sizeof gen;
  memcpy(p, &h, sizeof h), p += sizeof h;
  memcpy(p, &entry, sizeof entry), p += sizeof entry;
  memcpy(p, &kl, sizeof kl), p += sizeof kl;
  memcpy(p, k, kl);
  b->len = (size_t)(p + kl - b->p);
  return 0;
}

/* The attempt committed: keep what it found, in the objects that are
** sure to be alive: self (the caller's, outside ame.atomic), or one the
** attempt's touches hold (inside it, until touch_clear). */
static void pend_commit(struct tstate *ts, ShObject *self) {
  const char *p = ts->pend.p, *end = p + ts->pend.len;
  ShObject *alive = self;
  while (p < end) {
    ShObject *obj;
    uint64_t gen;
    Py_hash_t h;
    void *entry;
    size_t kl;
    memcpy(&obj, p, sizeof obj), p += sizeof obj;
    memcpy(&gen, p, sizeof gen), p += sizeof gen;
    memcpy(&h, p, sizeof h), p += sizeof h;
    memcpy(&entry, p, sizeof entry), p += sizeof entry;
    memcpy(&kl, p, sizeof kl), p += sizeof kl;
    const char *k = p;
    p += kl;
    if (obj != alive) {
      size_t i = 0;
      while (i < ts->ntouch && ts->touch[i].obj != (PyObject *)obj) i++;
      if (i == ts->ntouch) continue;
      alive = obj;
    }
    struct ecache *ec = obj->ec;
    if (ec == NULL) {
      ec = obj->ec = calloc(1, sizeof *ec);
      if (ec == NULL || ecache_reset(ec, gen, 1024) < 0) {
        ecache_free(ec);
        obj->ec = NULL;
        continue;
      }
    } else if (ec->gen != gen && ecache_reset(ec, gen, 1024) < 0) {
      continue;
    }
    ecache_put(ec, h, k, kl, entry);
  }
  ts->pend.len = 0;
}

/* ------------------------------------------------------------------------
** The conflict report.
*/

static int is_conflict(ame_abort_cause_t c) {
  return c == AME_ABORT_READ_LOCKED || c == AME_ABORT_WRITE_LOCKED ||
         c == AME_ABORT_VALIDATE || c == AME_ABORT_COMMIT ||
         c == AME_ABORT_KILLED;
}


/* Count n conflicts against (obj, key) (obj NULL: not known).  GIL held;
** a failure here is dropped: the report must not make anything fail. */
static void count_conflicts(ShObject *obj, const char *key, size_t klen,
                            uint64_t n) {
  if (n == 0 || conflict_table == NULL) return;
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  PyObject *k = obj && klen ? PyBytes_FromStringAndSize(key, (Py_ssize_t)klen)
                            : Py_NewRef(Py_None);
  PyObject *id = k ? Py_BuildValue("(OsN)", obj ? obj->name : Py_None,
                                   kind_names[obj ? obj->kind : 0], k)
                   : NULL;
  if (id) {
    PyObject *old = PyDict_GetItemWithError(conflict_table, id);
    unsigned long long c = old ? PyLong_AsUnsignedLongLong(old) : 0;
    PyObject *nv = PyLong_FromUnsignedLongLong(c + n);
    if (nv) PyDict_SetItem(conflict_table, id, nv);
    Py_XDECREF(nv);
    Py_DECREF(id);
  }
  PyErr_Clear();
  PyErr_Restore(et, ev, etb);
}

/* Note what an operation inside atomic touches (before its body runs).
** Return its index, or -1 if it could not be noted (out of memory: the
** report loses it, nothing else does). */
static long touch_add(struct tstate *ts, ShObject *obj, const char *key,
                      size_t klen) {
  if (obj == NULL) return -1;
  if (ts->ntouch == ts->ctouch) {
    size_t c = ts->ctouch ? 2 * ts->ctouch : 16;
    struct touch *t = realloc(ts->touch, c * sizeof *t);
    if (t == NULL) return -1;
    ts->touch = t;
    ts->ctouch = c;
  }
  size_t koff = ts->tkeys.len;
  if (klen && amepy_buf_put(&ts->tkeys, key, klen) < 0) return -1;
  struct touch *t = &ts->touch[ts->ntouch];
  t->obj = Py_NewRef((PyObject *)obj);
  t->entry = 0;
  t->esize = 0;
  t->koff = koff;
  t->klen = klen;
  return (long)ts->ntouch++;
}

static void touch_clear(struct tstate *ts) {
  for (size_t i = 0; i < ts->ntouch; i++) Py_DECREF(ts->touch[i].obj);
  ts->ntouch = 0;
  ts->tkeys.len = 0;
}

static int in_range(uintptr_t a, const void *base, size_t size) {
  return base && a >= (uintptr_t)base && a < (uintptr_t)base + size;
}

/* An attempt inside atomic aborted (in_op: while an operation's body ran,
** the last touch): count the conflict against what it touched. */
static void note_abort(struct tstate *ts, int in_op) {
  uintptr_t a = 0;
  ame_abort_cause_t cause = ame_tx_last_cause(ts->tx, &a);
  if (!is_conflict(cause)) return;
  for (size_t i = ts->ntouch; i-- > 0;) {
    struct touch *t = &ts->touch[i];
    if (t->entry && a >= t->entry && a < t->entry + t->esize) {
      count_conflicts((ShObject *)t->obj, ts->tkeys.p + t->koff, t->klen, 1);
      return;
    }
  }
  for (size_t i = ts->ntouch; i-- > 0;) {
    ShObject *o = (ShObject *)ts->touch[i].obj;
    if (in_range(a, o->obj, o->osize) || in_range(a, o->impl, o->isize)) {
      count_conflicts(o, NULL, 0, 1);
      return;
    }
  }
  if (ts->ntouch == 0) {
    count_conflicts(NULL, NULL, 0, 1);
    return;
  }
  struct touch *last = &ts->touch[ts->ntouch - 1];
  if (in_op && (cause == AME_ABORT_READ_LOCKED ||
                cause == AME_ABORT_WRITE_LOCKED)) {
    /* Met a lock on a word the running operation wanted. */
    count_conflicts((ShObject *)last->obj, ts->tkeys.p + last->koff,
                    last->klen, 1);
    return;
  }
  for (size_t i = 0; i < ts->ntouch; i++)
    if (ts->touch[i].obj != last->obj) {
      count_conflicts(NULL, NULL, 0, 1);
      return;
    }
  count_conflicts((ShObject *)last->obj, NULL, 0, 1);
}

/* ------------------------------------------------------------------------
** Running a body as a transaction (see the top of the file).
*/

/* One operation: inputs, outputs.  Bodies read only C fields. */
struct op {
  ShObject *self;
  struct tstate *ts;
  const char *k;            /* in: the encoded key (or a name, an address) */
  size_t kl;
  const char *v;            /* in: the encoded value */
  size_t vl;
  int64_t n;                /* in/out: a number (counter, count, limit) */
  uint64_t u;               /* in/out: another (cursor, version) */
  int flags;                /* in/out */
  int found;                /* out */
  void *p1, *p2;            /* out: pointers (opening) */
  size_t s1, s2;            /* out: sizes */
  uintptr_t entry;          /* out: the map entry touched, if known */
  size_t esize;
  unsigned conflicts;       /* out (single): attempts lost to conflicts */
};

typedef int (*body_fn)(ame_tx_t *tx, struct op *op);

#define RC_CAPACITY (-E2BIG)
#define RC_NOT_INT (-EDOM)   /* dict.add: a value that is not an int */

static int raise_rc(int rc) {
  if (rc == -ENOSPC) {
    ame_heap_stats_t st;
    ame_heap_stats(heap, &st);
    PyErr_Format(PyExc_MemoryError,
                 "ame.shared: the shared heap is full (%llu of %llu bytes "
                 "in use); give it more with --shared-size or "
                 "AME_SHARED_SIZE",
                 (unsigned long long)st.used, (unsigned long long)st.arena);
  } else if (rc == RC_NOT_INT) {
    PyErr_SetString(PyExc_TypeError,
                    "ame.shared: dict.add: a key's value is not an int (or "
                    "the sum leaves 64 bits)");
  } else if (rc == RC_CAPACITY) {
    PyErr_SetString(PyExc_MemoryError,
                    "ame.shared: one transaction wrote more words than a "
                    "participant's write log holds; split it into smaller "
                    "ones");
  } else if (rc == -ENOMEM) {
    PyErr_NoMemory();
  } else {
    heap_error("operation failed", rc);
  }
  return -1;
}

static int raise_doomed(void) {
  PyErr_SetString(Conflict,
                  "ame.shared: this attempt of an atomic block was aborted "
                  "by a conflict; ame.atomic runs it again");
  return -1;
}

static int threads_many(void) {
  return __atomic_load_n(&heap_threads, __ATOMIC_RELAXED) > 1;
}

/* Collect what clear() left, outside any transaction. */
static void collect_all(void) {
  Py_BEGIN_ALLOW_THREADS
  while (ame_heap_collect(heap, 64) == 1) {
  }
  Py_END_ALLOW_THREADS
}

/* Outside atomic: one transaction, run again until it commits.  Return 0
** or a negative error (no exception set). */
static int run_single(struct tstate *ts, struct op *op, body_fn body,
                      const char *site) {
  ame_tx_t *tx = ts->tx;
  PyThreadState *volatile save = NULL;
  volatile int collected = 0, rc = 0;
  jmp_buf env;
  if (threads_many()) save = PyEval_SaveThread();
  for (;;) {
    if (setjmp(env) != 0) {
      uintptr_t a;
      ame_abort_cause_t cause = ame_tx_last_cause(tx, &a);
      if (cause == AME_ABORT_CAPACITY) {
        ame_tx_cancel(tx);
        rc = RC_CAPACITY;
        break;
      }
      if (is_conflict(cause)) op->conflicts++;
      /* From now on it may wait (for a ticket, for locks): without the
      ** GIL, which their holders may need. */
      if (save == NULL) save = PyEval_SaveThread();
      continue;
    }
    ame_tx_begin(tx, &env, site);
    rc = body(tx, op);
    if (rc < 0) {
      ame_tx_cancel(tx);
      if (rc == -ENOSPC && !collected) {
        /* Garbage of a clear() may be what fills it. */
        collected = 1;
        while (ame_heap_collect(heap, 64) == 1) {
        }
        continue;
      }
      break;
    }
    ame_tx_commit(tx);
    break;
  }
  if (save) PyEval_RestoreThread(save);
  return rc;
}

/* Inside atomic: the body joins the running attempt.  Return 0, or -1
** with an exception set (_Conflict when the attempt is over). */
static int run_nested(struct tstate *ts, struct op *op, body_fn body) {
  if (ts->doomed) return raise_doomed();
  ame_tx_t *tx = ts->tx;
  long t = touch_add(ts, op->self, op->k,
                     op->self && op->self->kind == KIND_DICT ? op->kl : 0);
  jmp_buf env;
  jmp_buf *old = ame_tx_set_env(tx, &env);
  PyThreadState *volatile save = NULL;
  if (threads_many()) save = PyEval_SaveThread();
  if (setjmp(env) != 0) {
    /* The attempt is over (rolled back); atomic() runs it again. */
    if (save) PyEval_RestoreThread(save);
    ts->doomed = DOOM_ABORTED;
    note_abort(ts, 1);
    return raise_doomed();
  }
  int rc = body(tx, op);
  ame_tx_set_env(tx, old);
  if (save) PyEval_RestoreThread(save);
  if (t >= 0 && op->entry) {
    ts->touch[t].entry = op->entry;
    ts->touch[t].esize = op->esize;
  }
  if (rc == -ENOSPC) {
    /* Still running: atomic() cancels it, collects, and tries once
    ** more. */
    ts->doomed = DOOM_FULL;
    return raise_doomed();
  }
  return rc < 0 ? raise_rc(rc) : 0;
}

/* Run body for a shared object's operation, inside or outside atomic.
** Return 0, or -1 with an exception set. */
static int run_op(struct tstate *ts, struct op *op, body_fn body,
                  const char *site) {
  op->ts = ts;
  if (ts->depth > 0) return run_nested(ts, op, body);
  int rc = run_single(ts, op, body, site);
  if (op->conflicts) /* op->k is a key for dicts only */
    count_conflicts(op->self, op->k,
                    op->self && op->self->kind == KIND_DICT ? op->kl : 0,
                    op->conflicts);
  return rc < 0 ? raise_rc(rc) : 0;
}

/* ------------------------------------------------------------------------
** Bodies: the transactional part of each operation (no Python here).
*/

#define LD(tx, a) ame_load_word_tx((tx), (const uintptr_t *)(a))
#define ST(tx, a, v) ame_store_word_tx((tx), (uintptr_t *)(a), (uintptr_t)(v))

/* Copy entry e's value into the thread's output buffer. */
static int copy_value(ame_tx_t *tx, struct tstate *ts, void *e) {
  size_t n = ame_hmap_entry_vlen(tx, e);
  ts->obuf.len = 0;
  if (amepy_buf_room(&ts->obuf, n) < 0) return -ENOMEM;
  ts->obuf.len = ame_hmap_entry_value(tx, e, ts->obuf.p, n);
  return 0;
}

/* Find op's key; note the entry for the conflict report. */
static void *find_key(ame_tx_t *tx, struct op *op) {
  void *e = ame_hmap_find(tx, op->self->impl, op->k, op->kl);
  op->entry = (uintptr_t)e;
  if (e && op->ts->depth) op->esize = ame_heap_size(tx, e);
  return e;
}

static int body_get(ame_tx_t *tx, struct op *op) {
  void *e = find_key(tx, op);
  op->found = e != NULL;
  return e ? copy_value(tx, op->ts, e) : 0;
}

static int body_contains(ame_tx_t *tx, struct op *op) {
  op->found = find_key(tx, op) != NULL;
  return 0;
}

static int body_set(ame_tx_t *tx, struct op *op) {
  if (op->ts->depth) find_key(tx, op);
  int rc = ame_hmap_put(tx, op->self->impl, op->k, op->kl, op->v, op->vl, 0);
  return rc < 0 ? rc : 0;
}

static int body_del(ame_tx_t *tx, struct op *op) {
  if (op->ts->depth) find_key(tx, op);
  op->found = ame_hmap_del(tx, op->self->impl, op->k, op->kl);
  return 0;
}

static int body_pop(ame_tx_t *tx, struct op *op) {
  void *e = find_key(tx, op);
  op->found = e != NULL;
  if (e == NULL) return 0;
  int rc = copy_value(tx, op->ts, e);
  if (rc < 0) return rc;
  ame_hmap_del(tx, op->self->impl, op->k, op->kl);
  return 0;
}

static int body_setdefault(ame_tx_t *tx, struct op *op) {
  void *e = find_key(tx, op);
  op->found = e != NULL;
  if (e) return copy_value(tx, op->ts, e);
  int rc = ame_hmap_put(tx, op->self->impl, op->k, op->kl, op->v, op->vl,
                        AME_HMAP_IF_ABSENT);
  return rc < 0 ? rc : 0;
}

static int body_len(ame_tx_t *tx, struct op *op) {
  op->n = (int64_t)ame_hmap_len(tx, op->self->impl);
  return 0;
}

/* op->v: pairs, each [size_t klen][key][size_t vlen][value]. */
static int body_update(ame_tx_t *tx, struct op *op) {
  const char *p = op->v, *end = op->v + op->vl;
  while (p < end) {
    size_t kl, vl;
    memcpy(&kl, p, sizeof kl);
    const char *k = p + sizeof kl;
    memcpy(&vl, k + kl, sizeof vl);
    const char *v = k + kl + sizeof vl;
    int rc = ame_hmap_put(tx, op->self->impl, k, kl, v, vl, 0);
    if (rc < 0) return rc;
    p = v + vl;
  }
  return 0;
}

/* body_add's records are [size_t kl][key: kl bytes][int64_t delta]
** [void *entry (NULL: not cached)][Py_hash_t hash] (add_delta writes
** them).  Prefetch the entry of the record at p; return the next. */
#define ADD_AHEAD 8
static const char *add_prefetch(ame_tx_t *tx, const char *p) {
  size_t kl;
  void *e;
  memcpy(&kl, p, sizeof kl);
  p += sizeof kl + kl + sizeof(int64_t);
  memcpy(&e, p, sizeof e);
  if (e) ame__prefetch(tx, e);
  return p + sizeof e + sizeof(Py_hash_t);
}

/* v as ame.shared encodes an int (C_INT, zigzag varint) into buf (room
** for 11 bytes); return its length. */
static size_t int_encode(unsigned char *buf, int64_t v) {
  uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
  size_t n = 0;
  buf[n++] = AMEPY_C_INT;
  do {
    unsigned char c = z & 0x7f;
    z >>= 7;
    buf[n++] = (unsigned char)(c | (z ? 0x80 : 0));
  } while (z);
  return n;
}

/* The int of 64 bits that entry e holds, plus d, in *sum; RC_NOT_INT if
** it holds another value or the sum leaves 64 bits.  buf: room for 11
** bytes. */
static int add_sum(ame_tx_t *tx, void *e, int64_t d, unsigned char *buf,
                   int64_t *sum) {
  size_t n = ame_hmap_entry_vlen(tx, e);
  if (n < 2 || n > 11) return RC_NOT_INT;
  ame_hmap_entry_value(tx, e, buf, n);
  if (buf[0] != AMEPY_C_INT) return RC_NOT_INT;
  uint64_t z = 0;
  for (size_t i = 1, shift = 0; i < n && shift < 64; i++, shift += 7)
    z |= (uint64_t)(buf[i] & 0x7f) << shift;
  int64_t cur = (int64_t)((z >> 1) ^ (0 - (z & 1)));
  return __builtin_add_overflow(cur, d, sum) ? RC_NOT_INT : 0;
}

/* Read one of body_add's records at p; return the next. */
static const char *add_record(const char *p, const char **k, size_t *kl,
                              int64_t *d, void **e, Py_hash_t *h) {
  memcpy(kl, p, sizeof *kl);
  *k = p + sizeof *kl;
  p = *k + *kl;
  memcpy(d, p, sizeof *d), p += sizeof *d;
  memcpy(e, p, sizeof *e), p += sizeof *e;
  memcpy(h, p, sizeof *h), p += sizeof *h;
  return p;
}

/* Inside ame.atomic, before body_add writes anything: find each key
** the cache did not give, its entry (or NULL: absent) stored in its record
** for the pass that adds,
** and check that every key present holds an int that its delta keeps
** within 64 bits.  A TypeError then leaves the attempt as it was: the
** caller may catch it and go on, where outside ame.atomic the
** transaction is simply cancelled.  Return 0 or RC_NOT_INT. */
static int add_check(ame_tx_t *tx, struct op *op, int cached, uint64_t gen) {
  struct tstate *ts = op->ts;
  char *p = (char *)op->v, *end = p + op->vl;
  while (p < end) {
    const char *k;
    size_t kl;
    int64_t d, sum;
    void *e;
    Py_hash_t h;
    char *next = (char *)add_record(p, &k, &kl, &d, &e, &h);
    if (!cached || e == NULL) { /* not in the cache: look it up */
      e = ame_hmap_find(tx, op->self->impl, k, kl);
      memcpy(next - sizeof h - sizeof e, &e, sizeof e);
      if (e && h != -1 && pend_add(&ts->pend, op->self, gen, h, e, k, kl) < 0)
        return -ENOMEM;
    }
    unsigned char buf[16];
    if (e && add_sum(tx, e, d, buf, &sum) < 0) return RC_NOT_INT;
    p = next;
  }
  return 0;
}

/* op->v: pairs, each [size_t klen][key][int64 delta][void *entry]
** [Py_hash_t hash]: add delta to each key's value, an int of 64 bits (0
** when absent), in the codec's form (a C_INT tag, then the zigzag varint).
** entry is the key's entry from the dict's ecache (or NULL), good if the
** map's generation is still op->u (op->flags: there is a cache); an entry
** found through the map goes to ts->pend (hash -1: not kept).  Inside
** ame.atomic, add_check() runs first.  (Two records of one key — keys
** that Python keeps apart and that encode alike — are each checked
** against the value before the add: a sum that leaves 64 bits only once
** both are added still fails half-way.) */
static int body_add(ame_tx_t *tx, struct op *op) {
  ame_hmap_t *m = op->self->impl;
  struct tstate *ts = op->ts;
  if (ts->depth == 0) ts->pend.len = 0; /* a single op's earlier attempt */
  uint64_t gen = ame_hmap_gen(tx, m);
  int cached = op->flags && gen == op->u;
  if (ts->depth) {
    int rc = add_check(tx, op, cached, gen);
    if (rc < 0) return rc;
  }
  /* Entries in the records: the cache's, or those add_check found (NULL
  ** there: the key is absent). */
  int known = cached || ts->depth;
  const char *p = op->v, *end = op->v + op->vl;
  /* The cached entries ADD_AHEAD keys on are fetched ahead, so that the
  ** cache misses of their lines and orecs overlap (ame_prefetch_tx). */
  const char *ahead = known ? p : end;
  for (unsigned i = 0; i < ADD_AHEAD && ahead < end; i++)
    ahead = add_prefetch(tx, ahead);
  while (p < end) {
    if (ahead < end) ahead = add_prefetch(tx, ahead);
    const char *k;
    size_t kl;
    int64_t d, sum;
    void *e;
    Py_hash_t h;
    p = add_record(p, &k, &kl, &d, &e, &h);
    if (!known) e = NULL;
    unsigned char buf[16];
    if (e == NULL) {
      /* One lookup, which adds the key with d when it is absent. */
      int added;
      e = ame_hmap_find_or_add(tx, m, k, kl, buf, int_encode(buf, d), &added);
      if (e == NULL) return -ENOSPC;
      if (h != -1 && pend_add(&ts->pend, op->self, gen, h, e, k, kl) < 0)
        return -ENOMEM;
      if (added) continue;
    }
    if (add_sum(tx, e, d, buf, &sum) < 0) return RC_NOT_INT;
    /* Set the entry's value in place (one lookup per key, or none). */
    int rc = ame_hmap_entry_set(tx, m, e, buf, int_encode(buf, sum));
    if (rc < 0) return rc;
  }
  return 0;
}

static int body_clear(ame_tx_t *tx, struct op *op) {
  ame_hmap_clear(tx, op->self->impl);
  return 0;
}

/* Snapshots: op->flags says what to copy (1 keys, 2 values); each entry
** goes to obuf as [size_t len][bytes] per part. */
static int snap_part(struct amepy_buf *b, ame_tx_t *tx, void *e, int value) {
  size_t n = value ? ame_hmap_entry_vlen(tx, e) : ame_hmap_entry_klen(tx, e);
  if (amepy_buf_room(b, sizeof n + n) < 0) return -ENOMEM;
  char *at = b->p + b->len + sizeof n;
  n = value ? ame_hmap_entry_value(tx, e, at, n)
            : ame_hmap_entry_key(tx, e, at, n);
  memcpy(b->p + b->len, &n, sizeof n);
  b->len += sizeof n + n;
  return 0;
}

static int snap_entry(ame_tx_t *tx, void *e, void *arg) {
  struct op *op = arg;
  struct amepy_buf *b = &op->ts->obuf;
  if ((op->flags & 1) && snap_part(b, tx, e, 0) < 0) return -ENOMEM;
  if ((op->flags & 2) && snap_part(b, tx, e, 1) < 0) return -ENOMEM;
  op->n++;
  return op->found && op->n >= 1 ? 1 : 0; /* found set: the first only */
}

static int body_snapshot(ame_tx_t *tx, struct op *op) {
  op->ts->obuf.len = 0;
  op->n = 0;
  int rc = ame_hmap_foreach(tx, op->self->impl, snap_entry, op);
  return rc < 0 ? rc : 0;
}

/* popitem: the first entry found, copied (key, value) and removed. */
static int body_popitem(ame_tx_t *tx, struct op *op) {
  op->flags = 3;
  op->found = 1; /* stop at the first */
  int rc = body_snapshot(tx, op);
  if (rc < 0) return rc;
  op->found = op->n > 0;
  if (op->found) {
    size_t kl;
    memcpy(&kl, op->ts->obuf.p, sizeof kl);
    ame_hmap_del(tx, op->self->impl, op->ts->obuf.p + sizeof kl, kl);
  }
  return 0;
}

static int body_counter_add(ame_tx_t *tx, struct op *op) {
  ame_hcounter_add(tx, op->self->impl, op->n);
  return 0;
}

static int body_counter_get(ame_tx_t *tx, struct op *op) {
  op->n = ame_hcounter_get(tx, op->self->impl);
  return 0;
}

static int body_counter_set(ame_tx_t *tx, struct op *op) {
  ame_hcounter_set(tx, op->self->impl, op->n);
  return 0;
}

/* The watchers of an object: op->k is a process's socket name. */
static int watch_add(ame_tx_t *tx, struct op *op, uint64_t cursor) {
  struct shobj *o = op->self->obj;
  ame_hmap_t *w = (ame_hmap_t *)LD(tx, &o->watchers);
  if (w == NULL) {
    w = ame_hmap_new(tx, TAG_META, 0);
    if (w == NULL) return -ENOSPC;
    ST(tx, &o->watchers, w);
  }
  int rc = ame_hmap_put(tx, w, op->k, op->kl, &cursor, sizeof cursor, 0);
  if (rc < 0) return rc;
  if (rc == 0) {
    ST(tx, &o->nwatchers, LD(tx, &o->nwatchers) + 1);
    ST(tx, &o->wversion, LD(tx, &o->wversion) + 1);
  }
  return 0;
}

static int body_watch(ame_tx_t *tx, struct op *op) {
  return watch_add(tx, op, 0);
}

static int body_unwatch(ame_tx_t *tx, struct op *op) {
  struct shobj *o = op->self->obj;
  ame_hmap_t *w = (ame_hmap_t *)LD(tx, &o->watchers);
  op->found = w ? ame_hmap_del(tx, w, op->k, op->kl) : 0;
  if (op->found) {
    ST(tx, &o->nwatchers, LD(tx, &o->nwatchers) - 1);
    ST(tx, &o->wversion, LD(tx, &o->wversion) + 1);
  }
  return 0;
}

/* The watchers' names, as [size_t len][name] in obuf; op->u: version. */
static int body_watchers(ame_tx_t *tx, struct op *op) {
  struct shobj *o = op->self->obj;
  ame_hmap_t *w = (ame_hmap_t *)LD(tx, &o->watchers);
  op->u = LD(tx, &o->wversion);
  op->ts->obuf.len = 0;
  op->n = 0;
  op->flags = 1;
  op->found = 0;
  int rc = w ? ame_hmap_foreach(tx, w, snap_entry, op) : 0;
  return rc < 0 ? rc : 0;
}

static void read_watchers(ame_tx_t *tx, struct op *op) {
  struct shobj *o = op->self->obj;
  op->found = (int)LD(tx, &o->nwatchers);
  op->u = LD(tx, &o->wversion);
}

static int body_put(ame_tx_t *tx, struct op *op) {
  int rc = ame_hqueue_push(tx, op->self->impl, op->v, op->vl);
  if (rc < 0) return rc;
  read_watchers(tx, op);
  return 0;
}

/* Take the head of the queue into obuf (found), or else, given a name
** (op->kl), watch the queue under it. */
static int body_take(ame_tx_t *tx, struct op *op) {
  size_t n = 0;
  void *it = ame_hqueue_peek(tx, op->self->impl, &n);
  op->found = it != NULL;
  if (it == NULL) return op->kl ? watch_add(tx, op, 0) : 0;
  struct amepy_buf *b = &op->ts->obuf;
  b->len = 0;
  if (amepy_buf_room(b, n) < 0) return -ENOMEM;
  b->len = ame_hqueue_item_value(tx, it, b->p, n);
  ame_hqueue_drop(tx, op->self->impl);
  return 0;
}

static int body_qlen(ame_tx_t *tx, struct op *op) {
  op->n = (int64_t)ame_hqueue_len(tx, op->self->impl);
  return 0;
}

/* Publish: a record in the log.  Nobody subscribed: nobody can ever read
** it (a subscriber starts after the log's end), so trim it at once. */
static int body_publish(ame_tx_t *tx, struct op *op) {
  int64_t seq = ame_hlog_append(tx, op->self->impl, op->v, op->vl);
  if (seq < 0) return (int)seq;
  op->n = seq;
  read_watchers(tx, op);
  if (op->found == 0) ame_hlog_trim(tx, op->self->impl, (uint64_t)seq);
  return 0;
}

/* Subscribe the process named op->k from the log's end; op->u: the
** cursor (the last record it will not see). */
static int body_register(ame_tx_t *tx, struct op *op) {
  op->u = ame_hlog_next_seq(tx, op->self->impl) - 1;
  return watch_add(tx, op, op->u);
}

/* Read up to op->n records after cursor op->u into obuf, as [u64 seq]
** [size_t len][bytes] each, and move the process's cursor past them.
** Out: op->n records, op->flags 1 if more follow, op->found 1 if the
** process is still subscribed. */
static int body_read(ame_tx_t *tx, struct op *op) {
  struct amepy_buf *b = &op->ts->obuf;
  b->len = 0;
  int64_t max = op->n, count = 0;
  uint64_t last = op->u;
  void *r = ame_hlog_first(tx, op->self->impl, op->u);
  for (; r && count < max; r = ame_hlog_next(tx, r), count++) {
    uint64_t seq = ame_hlog_record_seq(tx, r);
    size_t n = ame_hlog_record_len(tx, r);
    if (amepy_buf_room(b, sizeof seq + sizeof n + n) < 0) return -ENOMEM;
    char *at = b->p + b->len;
    n = ame_hlog_record_value(tx, r, at + sizeof seq + sizeof n, n);
    memcpy(at, &seq, sizeof seq);
    memcpy(at + sizeof seq, &n, sizeof n);
    b->len += sizeof seq + sizeof n + n;
    last = seq;
  }
  op->n = count;
  op->flags = r != NULL;
  ame_hmap_t *w = (ame_hmap_t *)LD(tx, &op->self->obj->watchers);
  int rc = 0;
  if (w && count)
    rc = ame_hmap_put(tx, w, op->k, op->kl, &last, sizeof last,
                      AME_HMAP_IF_PRESENT);
  else if (w)
    rc = ame_hmap_find(tx, w, op->k, op->kl) != NULL;
  if (rc < 0) return rc;
  op->found = rc == 1;
  return 0;
}

static int min_cursor(ame_tx_t *tx, void *e, void *arg) {
  uint64_t c = 0, *min = arg;
  ame_hmap_entry_value(tx, e, &c, sizeof c);
  if (c < *min) *min = c;
  return 0;
}

/* Drop the records every subscriber has read; op->n: how many. */
static int body_trim(ame_tx_t *tx, struct op *op) {
  ame_hlog_t *l = op->self->impl;
  uint64_t min = ame_hlog_next_seq(tx, l) - 1;
  ame_hmap_t *w = (ame_hmap_t *)LD(tx, &op->self->obj->watchers);
  if (w) ame_hmap_foreach(tx, w, min_cursor, &min);
  op->n = (int64_t)ame_hlog_trim(tx, l, min);
  return 0;
}

static int body_seq(ame_tx_t *tx, struct op *op) {
  op->n = (int64_t)ame_hlog_next_seq(tx, op->self->impl) - 1;
  return 0;
}

/* A 48-bit owner word for an object's blocks: a hash of its name. */
static uint64_t name_owner(const char *p, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h & 0xffffffffffffull;
}

/* Look the name op->k up, or create it as kind op->flags.  Out: found,
** u (the root's type), p1 (the header), p2 (the container), s1, s2 (their
** sizes). */
static int body_open(ame_tx_t *tx, struct op *op) {
  unsigned type = 0;
  void *ptr = NULL;
  int kind = op->flags;
  op->found = ame_heap_root_get(tx, op->k, op->kl, &type, &ptr);
  op->u = type;
  struct shobj *o = ptr;
  if (!op->found) {
    uint64_t owner = name_owner(op->k, op->kl);
    unsigned tag = TAG_DICT + (unsigned)kind - KIND_DICT;
    o = ame_heap_alloc(tx, sizeof *o, TAG_META, owner);
    if (o == NULL) return -ENOSPC;
    void *impl = kind == KIND_DICT      ? (void *)ame_hmap_new(tx, tag, owner)
                 : kind == KIND_COUNTER ? (void *)ame_hcounter_new(tx, tag, owner)
                 : kind == KIND_QUEUE   ? (void *)ame_hqueue_new(tx, tag, owner)
                                        : (void *)ame_hlog_new(tx, tag, owner);
    if (impl == NULL) return -ENOSPC;
    ST(tx, &o->kind, kind);
    ST(tx, &o->impl, impl);
    ST(tx, &o->watchers, 0);
    ST(tx, &o->nwatchers, 0);
    ST(tx, &o->wversion, 0);
    int rc = ame_heap_root_set(tx, op->k, op->kl, ROOT_TYPE(kind), o);
    if (rc < 0) return rc;
    op->u = ROOT_TYPE(kind);
  } else if (type != ROOT_TYPE(kind)) {
    return 0;
  }
  op->p1 = o;
  op->p2 = (void *)LD(tx, &o->impl);
  op->s1 = ame_heap_size(tx, o);
  op->s2 = ame_heap_size(tx, op->p2);
  return 0;
}

static int body_abort(ame_tx_t *tx, struct op *op) {
  (void)op;
  ame_tx_abort(tx);
}

/* ------------------------------------------------------------------------
** The objects' methods.
*/

/* The thread's state, checking that obj belongs to the current heap. */
static struct tstate *obj_ts(ShObject *self) {
  struct tstate *ts = ts_get();
  if (ts == NULL) return NULL;
  if (self->epoch != heap_epoch) {
    PyErr_Format(PyExc_RuntimeError,
                 "ame.shared: %R belongs to a heap this process no longer "
                 "uses",
                 self->name);
    return NULL;
  }
  if (self->made_in != 0 &&
      (self->made_in == MADE_DEAD || ts->depth == 0 ||
       ts->attempt != self->made_in)) {
    PyErr_Format(PyExc_RuntimeError,
                 "ame.shared: %R was created by an ame.atomic attempt that %s; "
                 "open it again (ame.shared.%s(name))",
                 self->name,
                 self->made_in == MADE_DEAD ? "was rolled back"
                                            : "has not committed",
                 kind_names[self->kind]);
    return NULL;
  }
  return ts;
}

/* Check a method's positional arguments (min..max).  Return 1, or 0
** with TypeError set. */
static int check_nargs(const char *name, Py_ssize_t n, Py_ssize_t min,
                       Py_ssize_t max) {
  if (n >= min && n <= max) return 1;
  PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
               name, min, max, n);
  return 0;
}

static PyObject *key_error(PyObject *key) {
  PyObject *t = PyTuple_Pack(1, key);
  if (t) {
    PyErr_SetObject(PyExc_KeyError, t);
    Py_DECREF(t);
  }
  return NULL;
}

static PyObject *out_value(struct tstate *ts) {
  return amepy_decode(ts->obuf.p, ts->obuf.len);
}

/* Encode o into b from empty. */
static int encode_into(struct amepy_buf *b, PyObject *o, int key) {
  b->len = 0;
  return amepy_encode(b, o, key);
}

/* Start an operation on key: encode it.  Return 0 or -1. */
static int op_key(struct op *op, struct tstate *ts, ShObject *self,
                  PyObject *key) {
  if (encode_into(&ts->kbuf, key, 1) < 0) return -1;
  op->self = self;
  op->k = ts->kbuf.p;
  op->kl = ts->kbuf.len;
  return 0;
}

static int op_value(struct op *op, struct tstate *ts, PyObject *value) {
  if (encode_into(&ts->ibuf, value, 0) < 0) return -1;
  op->v = ts->ibuf.p;
  op->vl = ts->ibuf.len;
  return 0;
}

static PyObject *Dict_subscript(ShObject *self, PyObject *key) {
  struct tstate *ts = obj_ts(self);
  struct op op = {0};
  if (ts == NULL || op_key(&op, ts, self, key) < 0 ||
      run_op(ts, &op, body_get, "ame.shared.dict.get") < 0)
    return NULL;
  return op.found ? out_value(ts) : key_error(key);
}

static int Dict_ass_subscript(ShObject *self, PyObject *key, PyObject *value) {
  struct tstate *ts = obj_ts(self);
  struct op op = {0};
  if (ts == NULL || op_key(&op, ts, self, key) < 0) return -1;
  if (value == NULL) {
    if (run_op(ts, &op, body_del, "ame.shared.dict.del") < 0) return -1;
    if (!op.found) {
      key_error(key);
      return -1;
    }
    return 0;
  }
  if (op_value(&op, ts, value) < 0) return -1;
  return run_op(ts, &op, body_set, "ame.shared.dict.set");
}

static Py_ssize_t Dict_length(ShObject *self) {
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_len, "ame.shared.dict.len") < 0)
    return -1;
  return (Py_ssize_t)op.n;
}

static int Dict_contains(ShObject *self, PyObject *key) {
  struct tstate *ts = obj_ts(self);
  struct op op = {0};
  if (ts == NULL || op_key(&op, ts, self, key) < 0 ||
      run_op(ts, &op, body_contains, "ame.shared.dict.contains") < 0)
    return -1;
  return op.found;
}

static PyObject *Dict_get(ShObject *self, PyObject *const *args,
                          Py_ssize_t nargs) {
  if (!check_nargs("get", nargs, 1, 2)) return NULL;
  struct tstate *ts = obj_ts(self);
  struct op op = {0};
  if (ts == NULL || op_key(&op, ts, self, args[0]) < 0 ||
      run_op(ts, &op, body_get, "ame.shared.dict.get") < 0)
    return NULL;
  if (op.found) return out_value(ts);
  return Py_NewRef(nargs > 1 ? args[1] : Py_None);
}

static PyObject *Dict_setdefault(ShObject *self, PyObject *const *args,
                                 Py_ssize_t nargs) {
  if (!check_nargs("setdefault", nargs, 1, 2)) return NULL;
  PyObject *dflt = nargs > 1 ? args[1] : Py_None;
  struct tstate *ts = obj_ts(self);
  struct op op = {0};
  if (ts == NULL || op_key(&op, ts, self, args[0]) < 0 ||
      op_value(&op, ts, dflt) < 0 ||
      run_op(ts, &op, body_setdefault, "ame.shared.dict.setdefault") < 0)
    return NULL;
  return op.found ? out_value(ts) : Py_NewRef(dflt);
}

static PyObject *Dict_pop(ShObject *self, PyObject *const *args,
                          Py_ssize_t nargs) {
  if (!check_nargs("pop", nargs, 1, 2)) return NULL;
  struct tstate *ts = obj_ts(self);
  struct op op = {0};
  if (ts == NULL || op_key(&op, ts, self, args[0]) < 0 ||
      run_op(ts, &op, body_pop, "ame.shared.dict.pop") < 0)
    return NULL;
  if (op.found) return out_value(ts);
  if (nargs > 1) return Py_NewRef(args[1]);
  return key_error(args[0]);
}

/* A list from a snapshot in obuf (what: 1 keys, 2 values, 3 pairs). */
static PyObject *snapshot_list(struct tstate *ts, int what, size_t count) {
  PyObject *list = PyList_New((Py_ssize_t)count);
  if (list == NULL) return NULL;
  const char *p = ts->obuf.p;
  for (size_t i = 0; i < count; i++) {
    PyObject *part[2] = {NULL, NULL};
    for (int j = 0; j < 2; j++) {
      if (!(what & (1 << j))) continue;
      size_t n;
      memcpy(&n, p, sizeof n);
      part[j] = amepy_decode(p + sizeof n, n);
      p += sizeof n + n;
      if (part[j] == NULL) {
        Py_XDECREF(part[0]);
        Py_DECREF(list);
        return NULL;
      }
    }
    PyObject *item = what == 3 ? PyTuple_Pack(2, part[0], part[1])
                               : Py_NewRef(part[what == 1 ? 0 : 1]);
    Py_XDECREF(part[0]);
    Py_XDECREF(part[1]);
    if (item == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, item);
  }
  return list;
}

static PyObject *snapshot(ShObject *self, int what) {
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self, .flags = what};
  if (ts == NULL || run_op(ts, &op, body_snapshot, "ame.shared.dict.items") < 0)
    return NULL;
  return snapshot_list(ts, what, (size_t)op.n);
}

static PyObject *Dict_keys(ShObject *self, PyObject *unused) {
  (void)unused;
  return snapshot(self, 1);
}

static PyObject *Dict_values(ShObject *self, PyObject *unused) {
  (void)unused;
  return snapshot(self, 2);
}

static PyObject *Dict_items(ShObject *self, PyObject *unused) {
  (void)unused;
  return snapshot(self, 3);
}

/* _add_to(total): add each (key, value) of a snapshot to the dict total,
** as total[key] = total.get(key, 0) + value (ame.shared.Counts sums its
** lanes this way, without a list of pairs in between). */
static PyObject *Dict_add_to(ShObject *self, PyObject *total) {
  if (!PyDict_Check(total)) {
    PyErr_SetString(PyExc_TypeError, "ame.shared: _add_to needs a dict");
    return NULL;
  }
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self, .flags = 3};
  if (ts == NULL || run_op(ts, &op, body_snapshot, "ame.shared.dict.items") < 0)
    return NULL;
  PyObject *zero = PyLong_FromLong(0);
  if (zero == NULL) return NULL;
  const char *p = ts->obuf.p;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < (size_t)op.n; i++) {
    size_t kn, vn;
    memcpy(&kn, p, sizeof kn);
    PyObject *k = amepy_decode(p + sizeof kn, kn);
    p += sizeof kn + kn;
    memcpy(&vn, p, sizeof vn);
    PyObject *v = k ? amepy_decode(p + sizeof vn, vn) : NULL;
    p += sizeof vn + vn;
    /* A key total does not have yet takes one lookup (an int is its own
    ** 0 + v; anything else is added to 0, as for the others).  It is new
    ** if total grew: the value found may be v itself (a small int). */
    Py_ssize_t had = PyDict_GET_SIZE(total);
    PyObject *cur = v ? PyDict_SetDefault(total, k, v) : NULL;
    int fresh = cur && PyDict_GET_SIZE(total) != had;
    int done = fresh && PyLong_CheckExact(v);
    PyObject *sum = cur && !done ? PyNumber_Add(fresh ? zero : cur, v) : NULL;
    rc = cur == NULL ? -1 : done ? 0 : sum ? PyDict_SetItem(total, k, sum) : -1;
    Py_XDECREF(sum);
    Py_XDECREF(v);
    Py_XDECREF(k);
  }
  Py_DECREF(zero);
  if (rc < 0) return NULL;
  Py_RETURN_NONE;
}

static PyObject *Dict_iter(ShObject *self) {
  PyObject *keys = snapshot(self, 1);
  if (keys == NULL) return NULL;
  PyObject *it = PyObject_GetIter(keys);
  Py_DECREF(keys);
  return it;
}

static PyObject *Dict_copy(ShObject *self, PyObject *unused) {
  (void)unused;
  PyObject *items = snapshot(self, 3);
  if (items == NULL) return NULL;
  PyObject *d = PyDict_New();
  for (Py_ssize_t i = 0; d && i < PyList_GET_SIZE(items); i++) {
    PyObject *kv = PyList_GET_ITEM(items, i);
    if (PyDict_SetItem(d, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1)) < 0)
      Py_CLEAR(d);
  }
  Py_DECREF(items);
  return d;
}

/* == and != as collections.abc.Mapping's: equal to any mapping (a dict,
** another shared dict, anything registered as a Mapping) whose items, as a
** plain dict, equal this one's (a snapshot: one transaction, or the
** block's); anything else is NotImplemented (identity).  No order. */
static PyObject *Dict_richcompare(PyObject *self, PyObject *other, int op) {
  static PyObject *mapping_abc; /* collections.abc.Mapping */
  if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
  int shared = PyObject_TypeCheck(other, dict_type);
  if (!shared && !PyDict_Check(other)) {
    if (mapping_abc == NULL) {
      PyObject *abc = PyImport_ImportModule("collections.abc");
      if (abc == NULL) return NULL;
      mapping_abc = PyObject_GetAttrString(abc, "Mapping");
      Py_DECREF(abc);
      if (mapping_abc == NULL) return NULL;
    }
    int is = PyObject_IsInstance(other, mapping_abc);
    if (is < 0) return NULL;
    if (!is) Py_RETURN_NOTIMPLEMENTED;
  }
  PyObject *mine = Dict_copy((ShObject *)self, NULL), *theirs = NULL;
  if (mine == NULL) return NULL;
  if (shared) {
    theirs = Dict_copy((ShObject *)other, NULL);
  } else if (PyDict_Check(other)) {
    theirs = Py_NewRef(other);
  } else { /* dict(other.items()), as Mapping.__eq__ */
    PyObject *items = PyObject_CallMethod(other, "items", NULL);
    if (items != NULL && (theirs = PyDict_New()) != NULL &&
        PyDict_MergeFromSeq2(theirs, items, 1) < 0)
      Py_CLEAR(theirs);
    Py_XDECREF(items);
  }
  PyObject *r = theirs ? PyObject_RichCompare(mine, theirs, op) : NULL;
  Py_DECREF(mine);
  Py_XDECREF(theirs);
  return r;
}

static PyObject *Dict_popitem(ShObject *self, PyObject *unused) {
  (void)unused;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_popitem, "ame.shared.dict.popitem") < 0)
    return NULL;
  if (!op.found) {
    PyErr_SetString(PyExc_KeyError, "popitem(): shared dict is empty");
    return NULL;
  }
  PyObject *items = snapshot_list(ts, 3, 1);
  if (items == NULL) return NULL;
  PyObject *kv = Py_NewRef(PyList_GET_ITEM(items, 0));
  Py_DECREF(items);
  return kv;
}

/* Append one encoded (key, value) pair to b, as body_update reads it. */
static int add_pair(struct amepy_buf *b, struct amepy_buf *scratch, PyObject *k,
                    PyObject *v) {
  if (encode_into(scratch, k, 1) < 0) return -1;
  size_t kl = scratch->len;
  if (amepy_buf_put(b, &kl, sizeof kl) < 0 ||
      amepy_buf_put(b, scratch->p, kl) < 0)
    return PyErr_NoMemory(), -1;
  size_t at = b->len;
  if (amepy_buf_put(b, &kl, sizeof kl) < 0) return PyErr_NoMemory(), -1;
  size_t before = b->len;
  if (amepy_encode(b, v, 0) < 0) return -1;
  size_t vl = b->len - before;
  memcpy(b->p + at, &vl, sizeof vl);
  return 0;
}

static int add_pairs_from(struct amepy_buf *b, struct amepy_buf *scratch, PyObject *src) {
  if (PyDict_Check(src)) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    /* Encoding runs no Python code: the dict cannot change under us. */
    while (PyDict_Next(src, &pos, &k, &v))
      if (add_pair(b, scratch, k, v) < 0) return -1;
    return 0;
  }
  PyObject *items = NULL;
  int has_keys = PyObject_HasAttrString(src, "keys");
  if (has_keys) {
    items = PyMapping_Items(src);
  } else {
    items = PySequence_List(src);
  }
  if (items == NULL) return -1;
  int rc = 0;
  for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(items); i++) {
    PyObject *kv = PySequence_Fast(PyList_GET_ITEM(items, i),
                                   "ame.shared: update() needs (key, value) "
                                   "pairs");
    if (kv == NULL) {
      rc = -1;
      break;
    }
    if (PySequence_Fast_GET_SIZE(kv) != 2) {
      PyErr_Format(PyExc_ValueError,
                   "ame.shared: update() sequence element #%zd has length "
                   "%zd; 2 is required",
                   i, PySequence_Fast_GET_SIZE(kv));
      rc = -1;
    } else {
      rc = add_pair(b, scratch, PySequence_Fast_GET_ITEM(kv, 0),
                    PySequence_Fast_GET_ITEM(kv, 1));
    }
    Py_DECREF(kv);
  }
  Py_DECREF(items);
  return rc;
}

static PyObject *Dict_update(ShObject *self, PyObject *args, PyObject *kw) {
  PyObject *src = NULL;
  if (!PyArg_UnpackTuple(args, "update", 0, 1, &src)) return NULL;
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  /* Everything is encoded before the transaction: a bad key or value is
  ** a TypeError with nothing written.  Into buffers of this call's own,
  ** not the thread's ibuf and kbuf: collecting the pairs runs the
  ** caller's code (an iterator, items()), which may itself use shared
  ** objects, and so those buffers. */
  struct amepy_buf pairs = {0}, scratch = {0};
  PyObject *rc = NULL;
  if ((src && add_pairs_from(&pairs, &scratch, src) < 0) ||
      (kw && add_pairs_from(&pairs, &scratch, kw) < 0))
    goto done;
  struct op op = {.self = self, .v = pairs.p, .vl = pairs.len};
  if (run_op(ts, &op, body_update, "ame.shared.dict.update") < 0) goto done;
  rc = Py_NewRef(Py_None);
done:
  amepy_buf_free(&pairs);
  amepy_buf_free(&scratch);
  return rc;
}

/* One (key, delta) pair for add: the key encoded, the delta an int of 64
** bits.  The key is encoded in place, after room for its length; its
** cached entry is left NULL, for ecache_fill. */
static int add_delta(struct amepy_buf *b, PyObject *k, PyObject *v) {
  if (!PyLong_Check(v)) {
    PyErr_Format(PyExc_TypeError, "ame.shared: dict.add: %R is not an int",
                 v);
    return -1;
  }
  int overflow = 0;
  long long d = PyLong_AsLongLongAndOverflow(v, &overflow);
  if (overflow) {
    PyErr_SetString(PyExc_OverflowError,
                    "ame.shared: dict.add: an amount beyond 64 bits");
    return -1;
  }
  if (d == -1 && PyErr_Occurred()) return -1;
  size_t at = b->len;
  if (amepy_buf_room(b, sizeof(size_t)) < 0) return PyErr_NoMemory(), -1;
  b->len += sizeof(size_t);
  if (amepy_encode(b, k, 1) < 0) {
    b->len = at;
    return -1;
  }
  size_t kl = b->len - at - sizeof kl;
  int64_t d64 = (int64_t)d;
  /* Only keys whose hash runs no Python code are cached (hash -1: not
  ** cached). */
  Py_hash_t h = -1;
  if (PyUnicode_CheckExact(k) || PyLong_CheckExact(k) ||
      PyBytes_CheckExact(k)) {
    h = PyObject_Hash(k);
    if (h == -1) PyErr_Clear();
  }
  void *e = NULL;
  if (amepy_buf_room(b, sizeof d64 + sizeof e + sizeof h) < 0) {
    b->len = at;
    return PyErr_NoMemory(), -1;
  }
  char *o = b->p + b->len;
  memcpy(b->p + at, &kl, sizeof kl);
  memcpy(o, &d64, sizeof d64);
  memcpy(o + sizeof d64, &e, sizeof e);
  memcpy(o + sizeof d64 + sizeof e, &h, sizeof h);
  b->len += sizeof d64 + sizeof e + sizeof h;
  return 0;
}

/* The fields of add_delta's record at p: [size_t kl][key][int64_t delta]
** [void *entry][Py_hash_t hash]. */
static size_t rec_klen(const char *p) {
  size_t kl;
  memcpy(&kl, p, sizeof kl);
  return kl;
}

static Py_hash_t rec_hash(const char *p) {
  Py_hash_t h;
  memcpy(&h, p + sizeof(size_t) + rec_klen(p) + sizeof(int64_t) +
                 sizeof(void *),
         sizeof h);
  return h;
}

static const char *rec_next(const char *p) {
  return p + sizeof(size_t) + rec_klen(p) + sizeof(int64_t) + sizeof(void *) +
         sizeof(Py_hash_t);
}

/* Set the cached entry of each record in b: the lookups run in a pipeline,
** the index word fetched 2 * EC_AHEAD keys ahead and the entry it names
** EC_AHEAD ahead, so that their cache misses overlap (a large dict's
** cache is several hundred KiB, and its keys come in no useful order). */
#define EC_AHEAD 8
static void ecache_fill(const struct ecache *ec, struct amepy_buf *b) {
  const char *p = b->p, *end = b->p + b->len, *mid = p, *far = p;
  for (unsigned i = 0; i < 2 * EC_AHEAD && far < end; i++) {
    Py_hash_t h = rec_hash(far);
    if (h != -1) __builtin_prefetch(&ec->index[(size_t)h & ec->mask]);
    far = rec_next(far);
    if (i < EC_AHEAD) mid = rec_next(mid);
  }
  while (p < end) {
    if (far < end) {
      Py_hash_t h = rec_hash(far);
      if (h != -1) __builtin_prefetch(&ec->index[(size_t)h & ec->mask]);
      far = rec_next(far);
    }
    if (mid < end) {
      Py_hash_t h = rec_hash(mid);
      uint32_t x = h != -1 ? ec->index[(size_t)h & ec->mask] : 0;
      if (x) __builtin_prefetch(&ec->slot[(x & (ECACHE_MAX - 1)) - 1]);
      mid = rec_next(mid);
    }
    Py_hash_t h = rec_hash(p);
    size_t kl = rec_klen(p);
    if (h != -1) {
      void *e = ecache_get(ec, h, p + sizeof kl, kl);
      memcpy((char *)p + sizeof kl + kl + sizeof(int64_t), &e, sizeof e);
    }
    p = rec_next(p);
  }
}

/* add(key, n=1) or add(mapping): add to int values, in one transaction. */
static PyObject *Dict_add(ShObject *self, PyObject *args) {
  PyObject *what, *n = NULL;
  if (!PyArg_UnpackTuple(args, "add", 1, 2, &what, &n)) return NULL;
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  ts->ibuf.len = 0;
  if (PyDict_Check(what) && n == NULL) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(what, &pos, &k, &v))
      if (add_delta(&ts->ibuf, k, v) < 0) return NULL;
  } else {
    PyObject *one = PyLong_FromLong(1);
    int rc = add_delta(&ts->ibuf, what, n ? n : one);
    Py_DECREF(one);
    if (rc < 0) return NULL;
  }
  if (self->ec) ecache_fill(self->ec, &ts->ibuf);
  struct op op = {.self = self, .v = ts->ibuf.p, .vl = ts->ibuf.len,
                  .flags = self->ec != NULL,
                  .u = self->ec ? self->ec->gen : 0};
  if (run_op(ts, &op, body_add, "ame.shared.dict.add") < 0) {
    if (ts->depth == 0) ts->pend.len = 0;
    return NULL;
  }
  if (ts->depth == 0) pend_commit(ts, self);
  Py_RETURN_NONE;
}

/* _shared_lane(): this thread's lane (0..15): the heap slot it has, modulo
** 16, as the striped counters choose. */
static PyObject *shared_lane(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  struct tstate *ts = ts_get();
  if (ts == NULL) return NULL;
  return PyLong_FromUnsignedLong(ame_heap_slot(ts->tx) % 16);
}

static PyObject *Dict_clear(ShObject *self, PyObject *unused) {
  (void)unused;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_clear, "ame.shared.dict.clear") < 0)
    return NULL;
  if (ts->depth)
    ts->collect = 1;
  else
    collect_all();
  Py_RETURN_NONE;
}

static PyObject *Sh_repr(ShObject *self) {
  return PyUnicode_FromFormat("<ame.shared.%s %R>", kind_names[self->kind],
                              self->name);
}

static PyObject *Sh_get_name(ShObject *self, void *closure) {
  (void)closure;
  return Py_NewRef(self->name);
}

static void Sh_dealloc(ShObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  ecache_free(self->ec);
  Py_XDECREF(self->name);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

/* The watchers, for every kind that has them. */
static PyObject *Sh_watch(ShObject *self, PyObject *addr) {
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  char *p;
  Py_ssize_t n;
  if (PyBytes_AsStringAndSize(addr, &p, &n) < 0) return NULL;
  struct op op = {.self = self, .k = p, .kl = (size_t)n};
  if (run_op(ts, &op, body_watch, "ame.shared.watch") < 0) return NULL;
  Py_RETURN_NONE;
}

static PyObject *Sh_unwatch(ShObject *self, PyObject *addr) {
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  char *p;
  Py_ssize_t n;
  if (PyBytes_AsStringAndSize(addr, &p, &n) < 0) return NULL;
  struct op op = {.self = self, .k = p, .kl = (size_t)n};
  if (run_op(ts, &op, body_unwatch, "ame.shared.unwatch") < 0) return NULL;
  return PyBool_FromLong(op.found);
}

static PyObject *Sh_watchers(ShObject *self, PyObject *unused) {
  (void)unused;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_watchers, "ame.shared.watchers") < 0)
    return NULL;
  PyObject *list = PyList_New((Py_ssize_t)op.n);
  const char *p = ts->obuf.p;
  for (Py_ssize_t i = 0; list && i < op.n; i++) {
    size_t n;
    memcpy(&n, p, sizeof n);
    PyObject *b = PyBytes_FromStringAndSize(p + sizeof n, (Py_ssize_t)n);
    p += sizeof n + n;
    if (b == NULL)
      Py_CLEAR(list);
    else
      PyList_SET_ITEM(list, i, b);
  }
  if (list == NULL) return NULL;
  return Py_BuildValue("(KN)", (unsigned long long)op.u, list);
}

/* After a commit that added to a watched queue or channel: tell the
** watchers (ame.shared._notify sends them a datagram).  Inside atomic,
** once it commits. */
static int notify(struct tstate *ts, ShObject *self, struct op *op) {
  if (op->found == 0 || notify_hook == NULL) return 0;
  PyObject *v = PyLong_FromUnsignedLongLong(op->u);
  if (v == NULL) return -1;
  PyObject *args = PyTuple_Pack(2, (PyObject *)self, v);
  Py_DECREF(v);
  if (args == NULL) return -1;
  int rc;
  if (ts->depth) {
    rc = defer_call(ts, notify_hook, args, NULL);
  } else {
    PyObject *r = PyObject_Call(notify_hook, args, NULL);
    rc = r ? 0 : -1;
    Py_XDECREF(r);
  }
  Py_DECREF(args);
  return rc;
}

/* Counters. */

static PyObject *Counter_add(ShObject *self, PyObject *const *args,
                             Py_ssize_t nargs) {
  if (!check_nargs("add", nargs, 0, 1)) return NULL;
  long long n = 1;
  if (nargs) {
    n = PyLong_AsLongLong(args[0]);
    if (n == -1 && PyErr_Occurred()) return NULL;
  }
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self, .n = n};
  if (ts == NULL || run_op(ts, &op, body_counter_add, "ame.shared.counter.add") < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Counter_value(ShObject *self, void *closure) {
  (void)closure;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_counter_get, "ame.shared.counter.get") < 0)
    return NULL;
  return PyLong_FromLongLong(op.n);
}

static int Counter_set_value(ShObject *self, PyObject *v, void *closure) {
  (void)closure;
  if (v == NULL) {
    PyErr_SetString(PyExc_AttributeError, "a counter's value cannot be deleted");
    return -1;
  }
  long long n = PyLong_AsLongLong(v);
  if (n == -1 && PyErr_Occurred()) return -1;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self, .n = n};
  if (ts == NULL) return -1;
  return run_op(ts, &op, body_counter_set, "ame.shared.counter.set");
}

static PyObject *Counter_int(ShObject *self) {
  return Counter_value(self, NULL);
}

static PyObject *counter_inplace(PyObject *a, PyObject *b, int sign) {
  if (!PyObject_TypeCheck(a, counter_type) || !PyLong_Check(b))
    Py_RETURN_NOTIMPLEMENTED;
  ShObject *self = (ShObject *)a;
  int overflow = 0;
  long long n = PyLong_AsLongLongAndOverflow(b, &overflow);
  if (n == -1 && PyErr_Occurred()) return NULL;
  if (overflow || (sign < 0 && n == LLONG_MIN)) {
    PyErr_SetString(PyExc_OverflowError,
                    "ame.shared: a counter adds 64-bit integers");
    return NULL;
  }
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self, .n = sign * n};
  if (ts == NULL || run_op(ts, &op, body_counter_add, "ame.shared.counter.add") < 0)
    return NULL;
  return Py_NewRef(a);
}

static PyObject *Counter_iadd(PyObject *a, PyObject *b) {
  return counter_inplace(a, b, 1);
}

static PyObject *Counter_isub(PyObject *a, PyObject *b) {
  return counter_inplace(a, b, -1);
}

/* Queues. */

/* Inside ame.atomic: the running attempt's qnet entry for q, or NULL. */
static struct qnet *qnet_find(struct tstate *ts, const void *q) {
  for (size_t i = 0; i < ts->nqnet; i++)
    if (ts->qnet[i].obj == q) return &ts->qnet[i];
  return NULL;
}

/* Inside ame.atomic: the running attempt took (d = 1) or put (d = -1) a
** value of self.  Return 0, or -1 with an exception set. */
static int qnet_add(struct tstate *ts, ShObject *self, long d) {
  if (ts->depth == 0) return 0;
  struct qnet *e = qnet_find(ts, self->obj);
  if (e == NULL) {
    if (ts->nqnet == ts->cqnet) {
      size_t c = ts->cqnet ? 2 * ts->cqnet : 4;
      struct qnet *n = realloc(ts->qnet, c * sizeof *n);
      if (n == NULL) return PyErr_NoMemory(), -1;
      ts->qnet = n;
      ts->cqnet = c;
    }
    e = &ts->qnet[ts->nqnet++];
    *e = (struct qnet){.obj = self->obj, .n = 0};
  }
  e->n += d;
  return 0;
}

static PyObject *Queue_put(ShObject *self, PyObject *value) {
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || op_value(&op, ts, value) < 0 ||
      run_op(ts, &op, body_put, "ame.shared.queue.put") < 0 ||
      qnet_add(ts, self, -1) < 0 || notify(ts, self, &op) < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *queue_take(ShObject *self, PyObject *addr, int raise) {
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  if (ts->depth > 0) ts->takes++; /* (shared_wait's deadlines) */
  struct op op = {.self = self};
  if (addr) {
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(addr, &p, &n) < 0) return NULL;
    op.k = p;
    op.kl = (size_t)n;
  }
  if (run_op(ts, &op, body_take, "ame.shared.queue.get") < 0) return NULL;
  if (op.found) return qnet_add(ts, self, 1) < 0 ? NULL : out_value(ts);
  if (raise) {
    PyErr_SetNone(queue_empty);
    return NULL;
  }
  return Py_NewRef(empty_marker);
}

static PyObject *Queue_get_nowait(ShObject *self, PyObject *unused) {
  (void)unused;
  return queue_take(self, NULL, 1);
}

static PyObject *Queue_take(ShObject *self, PyObject *unused) {
  (void)unused;
  return queue_take(self, NULL, 0);
}

static PyObject *Queue_take_or_watch(ShObject *self, PyObject *addr) {
  return queue_take(self, addr, 0);
}

static Py_ssize_t Queue_length(ShObject *self) {
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_qlen, "ame.shared.queue.len") < 0)
    return -1;
  return (Py_ssize_t)op.n;
}

/* Channels. */

static PyObject *Channel_publish(ShObject *self, PyObject *value) {
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || op_value(&op, ts, value) < 0 ||
      run_op(ts, &op, body_publish, "ame.shared.channel.publish") < 0 ||
      notify(ts, self, &op) < 0)
    return NULL;
  return PyLong_FromLongLong(op.n);
}

static PyObject *Channel_register(ShObject *self, PyObject *addr) {
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  char *p;
  Py_ssize_t n;
  if (PyBytes_AsStringAndSize(addr, &p, &n) < 0) return NULL;
  struct op op = {.self = self, .k = p, .kl = (size_t)n};
  if (run_op(ts, &op, body_register, "ame.shared.channel.subscribe") < 0)
    return NULL;
  return PyLong_FromUnsignedLongLong(op.u);
}

static PyObject *Channel_read(ShObject *self, PyObject *args) {
  PyObject *addr;
  unsigned long long cursor;
  Py_ssize_t max;
  if (!PyArg_ParseTuple(args, "SKn:_read", &addr, &cursor, &max)) return NULL;
  struct tstate *ts = obj_ts(self);
  if (ts == NULL) return NULL;
  struct op op = {.self = self, .k = PyBytes_AS_STRING(addr),
                  .kl = (size_t)PyBytes_GET_SIZE(addr), .u = cursor,
                  .n = max > 0 ? max : 1};
  if (run_op(ts, &op, body_read, "ame.shared.channel.read") < 0) return NULL;
  PyObject *list = PyList_New((Py_ssize_t)op.n);
  const char *p = ts->obuf.p;
  for (Py_ssize_t i = 0; list && i < op.n; i++) {
    uint64_t seq;
    size_t n;
    memcpy(&seq, p, sizeof seq);
    memcpy(&n, p + sizeof seq, sizeof n);
    PyObject *v = amepy_decode(p + sizeof seq + sizeof n, n);
    p += sizeof seq + sizeof n + n;
    PyObject *t = v ? Py_BuildValue("(KN)", (unsigned long long)seq, v) : NULL;
    if (t == NULL)
      Py_CLEAR(list);
    else
      PyList_SET_ITEM(list, i, t);
  }
  if (list == NULL) return NULL;
  return Py_BuildValue("(NOO)", list, op.flags ? Py_True : Py_False,
                       op.found ? Py_True : Py_False);
}

static PyObject *Channel_trim(ShObject *self, PyObject *unused) {
  (void)unused;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_trim, "ame.shared.channel.trim") < 0)
    return NULL;
  return PyLong_FromLongLong(op.n);
}

static PyObject *Channel_seq(ShObject *self, void *closure) {
  (void)closure;
  struct tstate *ts = obj_ts(self);
  struct op op = {.self = self};
  if (ts == NULL || run_op(ts, &op, body_seq, "ame.shared.channel.seq") < 0)
    return NULL;
  return PyLong_FromLongLong(op.n);
}

/* ------------------------------------------------------------------------
** ame.atomic.
*/

/* The objects the attempt created: in the heap for good once it commits
** (ok), gone when it is rolled back. */
static void made_settle(struct tstate *ts, int ok) {
  PyObject *l = ts->made;
  ts->made = NULL;
  if (l == NULL) return;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++)
    ((ShObject *)PyList_GET_ITEM(l, i))->made_in = ok ? 0 : MADE_DEAD;
  Py_DECREF(l);
}

/* An attempt is over: drop what it queued and noted, and call what asked
** to know (_shared_on_rollback), with the exception that ends the attempt,
** if any, kept aside; theirs go to sys.unraisablehook. */
static void attempt_discard(struct tstate *ts) {
  ts->pend.len = 0;
  made_settle(ts, 0);
  Py_CLEAR(ts->deferred);
  touch_clear(ts);
  ts->collect = 0;
  PyObject *l = ts->rollback;
  ts->rollback = NULL;
  if (l == NULL) return;
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(l); i++) {
    PyObject *fn = PyList_GET_ITEM(l, i);
    PyObject *r = PyObject_CallNoArgs(fn);
    if (r == NULL) PyErr_WriteUnraisable(fn);
    Py_XDECREF(r);
  }
  Py_DECREF(l);
  PyErr_Restore(et, ev, etb);
}

/* Run the calls queued by a committed transaction, in order.  They all
** run; the first exception is kept and raised (the others go to
** sys.unraisablehook).  Return 0 or -1. */
static int run_deferred(PyObject *list) {
  PyObject *et = NULL, *ev = NULL, *etb = NULL;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
    PyObject *t = PyList_GET_ITEM(list, i);
    PyObject *fn = PyTuple_GET_ITEM(t, 0), *args = PyTuple_GET_ITEM(t, 1);
    PyObject *kw = PyTuple_GET_ITEM(t, 2);
    PyObject *r = args == Py_None && kw == Py_None
                      ? PyObject_CallNoArgs(fn)
                      : PyObject_Call(fn, args == Py_None ? NULL : args,
                                      kw == Py_None ? NULL : kw);
    if (r) {
      Py_DECREF(r);
    } else if (et == NULL) {
      PyErr_Fetch(&et, &ev, &etb);
    } else {
      PyErr_WriteUnraisable(fn);
    }
  }
  if (et == NULL) return 0;
  PyErr_Restore(et, ev, etb);
  return -1;
}

/* The outermost ame.atomic: run fn until an attempt commits. */
static PyObject *atomic_run(struct tstate *ts, PyObject *fn,
                            PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
  ame_tx_t *tx = ts->tx;
  jmp_buf env;
  volatile int rerun = 0, full = 0;
  PyObject *volatile result = NULL;
  ts->wait_expired = 0;
  Py_CLEAR(ts->deadlines); /* a timeout counts from this call's waits */
  for (;;) {
    if (setjmp(env) != 0) {
      /* Aborted at commit. */
      PyObject *r = result;
      result = NULL;
      Py_XDECREF(r);
      note_abort(ts, 0);
      attempt_discard(ts);
      rerun = 1;
      continue;
    }
    if (rerun || threads_many()) {
      /* Beginning may wait for the irrevocability ticket, which another
      ** thread of this process may hold while it runs Python. */
      PyThreadState *save = PyEval_SaveThread();
      ame_tx_begin(tx, &env, "ame.atomic");
      PyEval_RestoreThread(save);
    } else {
      ame_tx_begin(tx, &env, "ame.atomic");
    }
    ts->depth = 1;
    ts->doomed = DOOM_NONE;
    ts->takes = 0;
    ts->nqnet = 0;
    ts->attempt = ++attempts;
    PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, kwnames);
    ts->depth = 0;
    ts->wait_expired = 0;
    int doom = ts->doomed;
    ts->doomed = DOOM_NONE;
    if (doom != DOOM_NONE) {
      /* Whatever fn returned or raised, the attempt did not count. */
      Py_XDECREF(r);
      PyErr_Clear();
      if (doom == DOOM_ABORTED) {
        uintptr_t a;
        int capacity = ame_tx_last_cause(tx, &a) == AME_ABORT_CAPACITY;
        attempt_discard(ts);
        if (capacity) {
          ame_tx_cancel(tx);
          raise_rc(RC_CAPACITY);
          return NULL;
        }
        rerun = 1;
        continue;
      }
      ame_tx_cancel(tx); /* DOOM_FULL, DOOM_WAIT: the attempt still ran */
      attempt_discard(ts);
      if (doom == DOOM_FULL) {
        if (full) {
          raise_rc(-ENOSPC);
          return NULL;
        }
        full = 1;
        collect_all();
        rerun = 1;
        continue;
      }
      /* DOOM_WAIT: wait for the queue (ame.shared._wait) to have more
      ** values than the attempt's snapshot had, then run it again; if the
      ** wait timed out, its get() raises queue.Empty. */
      PyObject *q = ts->wait_obj, *timeout = ts->wait_timeout;
      ts->wait_obj = ts->wait_timeout = NULL;
      PyObject *seen = PyLong_FromLong(ts->wait_seen);
      PyObject *w = wait_hook && seen ? PyObject_CallFunctionObjArgs(
                                            wait_hook, q, timeout, seen,
                                            NULL)
                                      : NULL;
      Py_XDECREF(seen);
      Py_XDECREF(q);
      Py_XDECREF(timeout);
      if (w == NULL) {
        if (!PyErr_Occurred())
          PyErr_SetString(PyExc_RuntimeError, "ame.shared: no wait hook");
        return NULL;
      }
      int ok = PyObject_IsTrue(w);
      Py_DECREF(w);
      if (ok < 0) return NULL;
      ts->wait_expired = !ok;
      continue;
    }
    if (r == NULL) {
      ame_tx_cancel(tx);
      attempt_discard(ts);
      return NULL;
    }
    result = r;
    ame_tx_commit(tx);
    break;
  }
  PyObject *r = result;
  made_settle(ts, 1);
  Py_CLEAR(ts->rollback);
  pend_commit(ts, NULL);
  touch_clear(ts);
  if (ts->collect) {
    ts->collect = 0;
    collect_all();
  }
  PyObject *d = ts->deferred;
  ts->deferred = NULL;
  if (d) {
    if (run_deferred(d) < 0) Py_CLEAR(r);
    Py_DECREF(d);
  }
  return r;
}

PyDoc_STRVAR(atomic_doc,
"atomic(fn, *args, **kwargs)\n--\n\n"
"Run fn(*args, **kwargs) as one transaction over shared objects and\n"
"return its result.  On a conflict the attempt is rolled back and fn runs\n"
"again; an exception from fn rolls it back and propagates.  Reactor calls\n"
"and after_commit() calls made inside run once, after the commit.  Inside\n"
"another atomic block it joins it (flat nesting).");

static PyObject *shared_atomic(PyObject *m, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames) {
  (void)m;
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "atomic() needs a function to run");
    return NULL;
  }
  struct tstate *ts = ts_get();
  if (ts == NULL) return NULL;
  if (ts->depth > 0) {
    if (ts->doomed) return raise_doomed(), NULL;
    ts->depth++;
    PyObject *r = PyObject_Vectorcall(args[0], args + 1, (size_t)nargs - 1,
                                      kwnames);
    ts->depth--;
    return r;
  }
  return atomic_run(ts, args[0], args + 1, nargs - 1, kwnames);
}

PyDoc_STRVAR(after_commit_doc,
"after_commit(fn, *args, **kwargs)\n--\n\n"
"Inside ame.atomic: call fn(*args, **kwargs) once the transaction has\n"
"committed (never for an attempt that aborts), after the calls queued\n"
"before it.  Outside: call it now.");

static PyObject *shared_after_commit(PyObject *m, PyObject *args,
                                     PyObject *kw) {
  (void)m;
  Py_ssize_t n = PyTuple_GET_SIZE(args);
  if (n < 1) {
    PyErr_SetString(PyExc_TypeError, "after_commit() needs a function");
    return NULL;
  }
  PyObject *fn = PyTuple_GET_ITEM(args, 0);
  PyObject *rest = PyTuple_GetSlice(args, 1, n);
  if (rest == NULL) return NULL;
  struct tstate *ts = tls_ts;
  PyObject *r;
  if (ts && ts->depth > 0) {
    PyObject *kwc = kw && PyDict_GET_SIZE(kw) ? PyDict_Copy(kw) : NULL;
    int rc = kw && PyDict_GET_SIZE(kw) && kwc == NULL
                 ? -1
                 : defer_call(ts, fn, rest, kwc);
    Py_XDECREF(kwc);
    r = rc < 0 ? NULL : Py_NewRef(Py_None);
  } else {
    r = PyObject_Call(fn, rest, kw);
  }
  Py_DECREF(rest);
  return r;
}

/* Inside ame.atomic: call fn() if the running attempt is rolled back
** (a conflict, or an exception out of the block), once it is over;
** never if it commits.  Outside: nothing.  For stand-ins of effects
** deferred to the commit (reactor.py's _AtomicDelayedCall). */
static PyObject *shared_on_rollback(PyObject *m, PyObject *fn) {
  (void)m;
  struct tstate *ts = tls_ts;
  if (ts == NULL || ts->depth == 0) Py_RETURN_NONE;
  if (ts->rollback == NULL && (ts->rollback = PyList_New(0)) == NULL)
    return NULL;
  if (PyList_Append(ts->rollback, fn) < 0) return NULL;
  Py_RETURN_NONE;
}

static PyObject *shared_in_atomic(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  return PyBool_FromLong(amepy_shared_in_atomic());
}

/* The time a blocking get inside atomic (the attempt's last take, from q)
** may still wait, as a float (None: no timeout): timeout seconds from the
** first time this get waited in this ame.atomic call, whichever attempt
** that was, so that reruns (a conflict, a value another participant took
** first) do not start it again.  The get is told apart from the block's
** others by its queue and its number among the attempt's takes.  Return
** a new reference, or NULL with an exception set. */
static PyObject *deadline_left(struct tstate *ts, PyObject *q,
                               PyObject *timeout) {
  if (timeout == Py_None) return Py_NewRef(Py_None);
  double t = PyFloat_AsDouble(timeout);
  if (t == -1.0 && PyErr_Occurred()) return NULL;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now); /* time.monotonic()'s clock */
  double at = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
  if (ts->deadlines == NULL && (ts->deadlines = PyDict_New()) == NULL)
    return NULL;
  PyObject *key = Py_BuildValue("(NI)",
                                PyLong_FromVoidPtr(((ShObject *)q)->obj),
                                ts->takes);
  if (key == NULL) return NULL;
  PyObject *deadline = PyDict_GetItemWithError(ts->deadlines, key);
  double end;
  if (deadline != NULL) {
    end = PyFloat_AS_DOUBLE(deadline);
  } else if (PyErr_Occurred()) {
    Py_DECREF(key);
    return NULL;
  } else {
    end = at + t;
    PyObject *f = PyFloat_FromDouble(end);
    int rc = f ? PyDict_SetItem(ts->deadlines, key, f) : -1;
    Py_XDECREF(f);
    Py_DECREF(key);
    return rc < 0 ? NULL : PyFloat_FromDouble(t); /* the first wait */
  }
  Py_DECREF(key);
  return PyFloat_FromDouble(end - at);
}

/* Inside atomic, a blocking get found the queue empty: end the attempt;
** atomic() waits for the queue and runs fn again.  If the last wait timed
** out, raise queue.Empty instead. */
static PyObject *shared_wait(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *q, *timeout;
  if (!PyArg_ParseTuple(args, "OO:_wait", &q, &timeout)) return NULL;
  struct tstate *ts = tls_ts;
  if (ts == NULL || ts->depth == 0) {
    PyErr_SetString(PyExc_RuntimeError, "_wait outside ame.atomic");
    return NULL;
  }
  if (ts->doomed) return raise_doomed(), NULL;
  if (ts->wait_expired) {
    PyErr_SetNone(queue_empty);
    return NULL;
  }
  PyObject *left = deadline_left(ts, q, timeout);
  if (left == NULL) return NULL;
  if (left != Py_None && PyFloat_AS_DOUBLE(left) <= 0) {
    Py_DECREF(left);
    PyErr_SetNone(queue_empty);
    return NULL;
  }
  struct qnet *e = PyObject_TypeCheck(q, queue_type)
                       ? qnet_find(ts, ((ShObject *)q)->obj)
                       : NULL;
  Py_XSETREF(ts->wait_obj, Py_NewRef(q));
  Py_XSETREF(ts->wait_timeout, left);
  ts->wait_seen = e ? e->n : 0;
  ts->doomed = DOOM_WAIT;
  return raise_doomed(), NULL;
}

/* Test hook: abort the running attempt of an atomic block (as a conflict
** would), so that it runs again. */
static PyObject *shared_abort(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  struct tstate *ts = tls_ts;
  if (ts == NULL || ts->depth == 0) {
    PyErr_SetString(PyExc_RuntimeError, "_abort outside ame.atomic");
    return NULL;
  }
  struct op op = {0};
  run_op(ts, &op, body_abort, "ame.shared._abort");
  return NULL;
}

/* ------------------------------------------------------------------------
** Opening objects, the heap, statistics.
*/

static PyObject *shared_open(PyObject *m, PyObject *args) {
  (void)m;
  PyTypeObject *cls;
  PyObject *name;
  if (!PyArg_ParseTuple(args, "O!U:_open", &PyType_Type, &cls, &name))
    return NULL;
  int kind = PyType_IsSubtype(cls, dict_type)      ? KIND_DICT
             : PyType_IsSubtype(cls, counter_type) ? KIND_COUNTER
             : PyType_IsSubtype(cls, queue_type)   ? KIND_QUEUE
             : PyType_IsSubtype(cls, channel_type) ? KIND_CHANNEL
                                                   : 0;
  if (kind == 0) {
    PyErr_SetString(PyExc_TypeError, "_open: not a shared object type");
    return NULL;
  }
  Py_ssize_t n;
  const char *p = PyUnicode_AsUTF8AndSize(name, &n);
  if (p == NULL) return NULL;
  if (n == 0 || n > 255) {
    PyErr_Format(PyExc_ValueError,
                 "ame.shared: a name is 1 to 255 bytes of UTF-8, not %zd", n);
    return NULL;
  }
  struct tstate *ts = ts_get();
  if (ts == NULL) return NULL;
  struct op op = {.k = p, .kl = (size_t)n, .flags = kind};
  if (run_op(ts, &op, body_open, "ame.shared.open") < 0) return NULL;
  if (op.u != ROOT_TYPE(kind)) {
    unsigned other = (unsigned)op.u;
    if ((other & 0xffff0000u) == ROOT_TYPE(0) && (other & 0xffff) >= 1 &&
        (other & 0xffff) <= 4)
      PyErr_Format(PyExc_TypeError, "ame.shared: %R is a %s, not a %s", name,
                   kind_names[other & 0xffff], kind_names[kind]);
    else
      PyErr_Format(PyExc_TypeError,
                   "ame.shared: %R names something else in the shared heap "
                   "(type code 0x%x), not a %s",
                   name, other, kind_names[kind]);
    return NULL;
  }
  ShObject *o = (ShObject *)cls->tp_alloc(cls, 0);
  if (o == NULL) return NULL;
  o->obj = op.p1;
  o->impl = op.p2;
  o->osize = op.s1;
  o->isize = op.s2;
  o->epoch = heap_epoch;
  o->kind = kind;
  o->name = Py_NewRef(name);
  if (ts->depth > 0) {
    /* Opened by the running attempt, which may have created it (or found
    ** what an earlier open of the same attempt created): the attempt's own
    ** until it commits (a rolled-back attempt frees what it created). */
    if (ts->made == NULL && (ts->made = PyList_New(0)) == NULL) {
      Py_DECREF(o);
      return NULL;
    }
    if (PyList_Append(ts->made, (PyObject *)o) < 0) {
      Py_DECREF(o);
      return NULL;
    }
    o->made_in = ts->attempt;
  }
  return (PyObject *)o;
}

static int set_u64(PyObject *d, const char *k, uint64_t v) {
  PyObject *o = PyLong_FromUnsignedLongLong(v);
  if (o == NULL) return -1;
  int rc = PyDict_SetItemString(d, k, o);
  Py_DECREF(o);
  return rc;
}

static PyObject *shared_stats(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (heap_get() == NULL) return NULL;
  ame_heap_stats_t st;
  ame_heap_stats(heap, &st);
  PyObject *d = PyDict_New(), *causes = PyDict_New(), *h = PyDict_New();
  if (d == NULL || causes == NULL || h == NULL) goto fail;
  for (int c = 0; c < AME_ABORT__COUNT; c++)
    if (set_u64(causes, ame_abort_cause_name((ame_abort_cause_t)c),
                st.tx.aborts_by_cause[c]) < 0)
      goto fail;
  if (set_u64(d, "commits", st.tx.commits) < 0 ||
      set_u64(d, "commits_ro", st.tx.commits_ro) < 0 ||
      set_u64(d, "aborts", st.tx.aborts) < 0 ||
      PyDict_SetItemString(d, "aborts_by_cause", causes) < 0 ||
      set_u64(d, "irrevocable", st.tx.irrevocable) < 0 ||
      set_u64(d, "escalations", st.tx.escalations) < 0 ||
      set_u64(d, "max_attempts", st.tx.max_attempts) < 0 ||
      set_u64(h, "mapped", st.size) < 0 || set_u64(h, "arena", st.arena) < 0 ||
      set_u64(h, "used", (uint64_t)(st.used < 0 ? 0 : st.used)) < 0 ||
      set_u64(h, "top", st.top) < 0 ||
      set_u64(h, "slots_max", st.slots_max) < 0 ||
      set_u64(h, "slots_live", st.slots_live) < 0 ||
      set_u64(h, "recoveries", st.recoveries) < 0 ||
      set_u64(h, "recovered_commits", st.recovered_commits) < 0 ||
      set_u64(h, "clock", st.clock) < 0 ||
      PyDict_SetItemString(d, "heap", h) < 0 ||
      PyDict_SetItemString(d, "conflicts_raw", conflict_table) < 0)
    goto fail;
  Py_DECREF(causes);
  Py_DECREF(h);
  return d;
fail:
  Py_XDECREF(d);
  Py_XDECREF(causes);
  Py_XDECREF(h);
  return NULL;
}

static PyObject *shared_decode_key(PyObject *m, PyObject *b) {
  (void)m;
  char *p;
  Py_ssize_t n;
  if (PyBytes_AsStringAndSize(b, &p, &n) < 0) return NULL;
  return amepy_decode(p, (size_t)n);
}

static PyObject *shared_encode(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *o;
  int key = 0;
  if (!PyArg_ParseTuple(args, "O|p:_encode", &o, &key)) return NULL;
  struct amepy_buf b = {0};
  if (amepy_encode(&b, o, key) < 0) {
    amepy_buf_free(&b);
    return NULL;
  }
  PyObject *r = PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.len);
  amepy_buf_free(&b);
  return r;
}

/* In a child just forked (pthread_atfork, for every fork however made):
** the parent's slots are the parent's.  Only what is async-signal-safe:
** the Python side of an atomic block forked inside is dropped by
** _after_fork, from os.register_at_fork. */
static void atfork_child(void) {
  if (heap == NULL || heap_pid == getpid()) return;
  heap_pid = getpid();
  ame_heap_after_fork_child(heap);
  /* Atomic: a thread of the parent that ended without a join read it in
  ** ts_destroy(), without the GIL. */
  __atomic_add_fetch(&enter_gen, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&heap_threads, 0, __ATOMIC_RELAXED);
  struct tstate *ts = tls_ts;
  if (ts) {
    ts->tx = NULL;
    ts->depth = 0;
    ts->doomed = DOOM_NONE;
  }
}

static PyObject *shared_after_fork(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  atfork_child(); /* done already if fork() ran the handlers */
  struct tstate *ts = tls_ts;
  if (ts) {
    /* A fork inside ame.atomic: the child does not go on with it. */
    ts->depth = 0;
    ts->doomed = DOOM_NONE;
    attempt_discard(ts);
    Py_CLEAR(ts->wait_obj);
    Py_CLEAR(ts->wait_timeout);
    Py_CLEAR(ts->deadlines);
  }
  Py_RETURN_NONE;
}

/* Tests and the lead's supervisor: use a named heap (create it, or open
** it), or forget the heap.  Only with no other thread in it. */
static PyObject *shared_use_heap(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"name", "size", "create", NULL};
  const char *name = NULL;
  Py_ssize_t size = 0;
  int create = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|znp:_use_heap", kwlist, &name,
                                   &size, &create))
    return NULL;
  struct tstate *ts = tls_ts;
  if (ts && ts->depth) {
    PyErr_SetString(PyExc_RuntimeError, "_use_heap inside ame.atomic");
    return NULL;
  }
  if (heap) {
    if (__atomic_load_n(&heap_threads, __ATOMIC_RELAXED) >
        (ts && ts->tx && ts->gen == enter_gen ? 1 : 0)) {
      PyErr_SetString(PyExc_RuntimeError,
                      "_use_heap: other threads use the heap");
      return NULL;
    }
    if (ts && ts->tx && ts->gen == enter_gen) {
      ame_heap_exit(heap);
      __atomic_sub_fetch(&heap_threads, 1, __ATOMIC_RELAXED);
    }
    if (ts) ts->tx = NULL;
    ame_heap_close(heap);
    heap = NULL;
    heap_epoch++;
  }
  ame_heap_t *h = NULL;
  if (name) {
    ame_heap_config_t cfg = {.size = (size_t)size};
    int rc = create ? ame_heap_create(name, &cfg, &h) : ame_heap_open(name, &h);
    if (rc != 0) {
      PyErr_Format(PyExc_OSError, "ame.shared: the heap %s: %s", name,
                   ame_heap_strerror(rc));
      return NULL;
    }
    heap = h;
    heap_pid = getpid();
    heap_epoch++;
  }
  Py_RETURN_NONE;
}

/* _shared_leave(): the calling thread leaves the heap, if it is in it
** and not inside ame.atomic (its next use enters again).  At the
** interpreter's exit, for the main thread, whose pthread key destructor
** (ts_destroy) never runs: its slot would stay taken until someone found
** the process dead. */
static PyObject *shared_leave(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  struct tstate *ts = tls_ts;
  if (heap && ts && ts->tx && ts->gen == enter_gen && ts->depth == 0) {
    ame_heap_exit(heap);
    __atomic_sub_fetch(&heap_threads, 1, __ATOMIC_RELAXED);
    ts->tx = NULL;
  }
  Py_RETURN_NONE;
}

/* _shared_recover_pid(pid): process pid, which this process reaped, has
** died: give back what its threads held in the heap (their locks, a
** write-back they had decided).  Return how many slots were recovered. */
static PyObject *shared_recover_pid(PyObject *m, PyObject *arg) {
  (void)m;
  long pid = PyLong_AsLong(arg);
  if (pid == -1 && PyErr_Occurred()) return NULL;
  if (heap_get() == NULL) return NULL;
  int n;
  Py_BEGIN_ALLOW_THREADS
  n = ame_heap_recover_pid(heap, (pid_t)pid);
  Py_END_ALLOW_THREADS
  return PyLong_FromLong(n);
}

static PyObject *shared_heap_info(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (heap_get() == NULL) return NULL;
  return Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)ame_heap_base(heap),
                       (Py_ssize_t)ame_heap_mapped(heap));
}

static PyObject *shared_unlink(PyObject *m, PyObject *arg) {
  (void)m;
  const char *name = PyUnicode_AsUTF8(arg);
  if (name == NULL) return NULL;
  int rc = ame_heap_unlink(name);
  if (rc != 0 && rc != -ENOENT) return heap_error(name, rc);
  Py_RETURN_NONE;
}

static PyObject *shared_set_hooks(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *n, *w;
  if (!PyArg_ParseTuple(args, "OO:_set_hooks", &n, &w)) return NULL;
  Py_XSETREF(notify_hook, Py_NewRef(n));
  Py_XSETREF(wait_hook, Py_NewRef(w));
  Py_RETURN_NONE;
}

static PyMethodDef shared_functions[] = {
    {"atomic", (PyCFunction)(void (*)(void))shared_atomic,
     METH_FASTCALL | METH_KEYWORDS, atomic_doc},
    {"after_commit", (PyCFunction)(void (*)(void))shared_after_commit,
     METH_VARARGS | METH_KEYWORDS, after_commit_doc},
    {"_shared_in_atomic", shared_in_atomic, METH_NOARGS, NULL},
    {"_shared_on_rollback", shared_on_rollback, METH_O, NULL},
    {"_shared_wait", shared_wait, METH_VARARGS, NULL},
    {"_shared_abort", shared_abort, METH_NOARGS, NULL},
    {"_shared_open", shared_open, METH_VARARGS, NULL},
    {"_shared_stats", shared_stats, METH_NOARGS, NULL},
    {"_shared_decode", shared_decode_key, METH_O, NULL},
    {"_shared_encode", shared_encode, METH_VARARGS, NULL},
    {"_shared_after_fork", shared_after_fork, METH_NOARGS, NULL},
    {"_shared_use_heap", (PyCFunction)(void (*)(void))shared_use_heap,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_shared_heap_info", shared_heap_info, METH_NOARGS, NULL},
    {"_shared_recover_pid", shared_recover_pid, METH_O, NULL},
    {"_shared_leave", shared_leave, METH_NOARGS, NULL},
    {"_shared_lane", shared_lane, METH_NOARGS, NULL},
    {"_shared_unlink", shared_unlink, METH_O, NULL},
    {"_shared_set_hooks", shared_set_hooks, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------
** Types.
*/

static PyGetSetDef Sh_getset[] = {
    {"name", (getter)Sh_get_name, NULL, "The object's name.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Dict_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Dict_get, METH_FASTCALL,
     "get(key, default=None): the value for key (a copy), or default."},
    {"setdefault", (PyCFunction)(void (*)(void))Dict_setdefault,
     METH_FASTCALL,
     "setdefault(key, default=None): the value for key; if absent, store\n"
     "default and return it."},
    {"pop", (PyCFunction)(void (*)(void))Dict_pop, METH_FASTCALL,
     "pop(key[, default]): remove key and return its value."},
    {"popitem", (PyCFunction)Dict_popitem, METH_NOARGS,
     "popitem(): remove and return some (key, value) pair (no order)."},
    {"update", (PyCFunction)(void (*)(void))Dict_update,
     METH_VARARGS | METH_KEYWORDS,
     "update([other], **kw): store every pair, in one transaction."},
    {"clear", (PyCFunction)Dict_clear, METH_NOARGS, "clear(): remove all."},
    {"add", (PyCFunction)Dict_add, METH_VARARGS,
     "add(key, n=1) or add(mapping): add n (or each mapping value) to the\n"
     "key's int value (0 if absent), in one transaction."},
    {"keys", (PyCFunction)Dict_keys, METH_NOARGS,
     "keys(): a list of the keys, copied in one transaction."},
    {"values", (PyCFunction)Dict_values, METH_NOARGS,
     "values(): a list of the values, copied in one transaction."},
    {"_add_to", (PyCFunction)Dict_add_to, METH_O,
     "_add_to(total): total[k] = total.get(k, 0) + v for each pair (for\n"
     "ame.shared.Counts)."},
    {"items", (PyCFunction)Dict_items, METH_NOARGS,
     "items(): a list of (key, value), copied in one transaction."},
    {"copy", (PyCFunction)Dict_copy, METH_NOARGS,
     "copy(): a plain dict of the contents, copied in one transaction."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Dict_slots[] = {
    {Py_tp_dealloc, Sh_dealloc},
    {Py_tp_repr, Sh_repr},
    {Py_tp_getset, Sh_getset},
    {Py_tp_methods, Dict_methods},
    {Py_tp_iter, Dict_iter},
    {Py_tp_richcompare, Dict_richcompare},
    {Py_mp_subscript, Dict_subscript},
    {Py_mp_ass_subscript, Dict_ass_subscript},
    {Py_mp_length, Dict_length},
    {Py_sq_contains, Dict_contains},
    {Py_tp_doc, "A dict in the shared heap (ame.shared.dict(name))."},
    {0, NULL},
};

static PyMethodDef Counter_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Counter_add, METH_FASTCALL,
     "add(n=1): add n; conflicts with no other add."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Counter_getset[] = {
    {"name", (getter)Sh_get_name, NULL, "The object's name.", NULL},
    {"value", (getter)Counter_value, (setter)Counter_set_value,
     "The sum (reading it conflicts with every add).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Counter_slots[] = {
    {Py_tp_dealloc, Sh_dealloc},
    {Py_tp_repr, Sh_repr},
    {Py_tp_getset, Counter_getset},
    {Py_tp_methods, Counter_methods},
    {Py_nb_int, Counter_int},
    {Py_nb_index, Counter_int},
    {Py_nb_inplace_add, Counter_iadd},
    {Py_nb_inplace_subtract, Counter_isub},
    {Py_tp_doc, "A 64-bit counter in the shared heap (ame.shared.counter)."},
    {0, NULL},
};

static PyMethodDef Queue_methods[] = {
    {"put", (PyCFunction)Queue_put, METH_O, "put(value): append value."},
    {"put_nowait", (PyCFunction)Queue_put, METH_O, "put_nowait(value): put."},
    {"get_nowait", (PyCFunction)Queue_get_nowait, METH_NOARGS,
     "get_nowait(): remove and return the first value, or raise\n"
     "queue.Empty."},
    {"_take", (PyCFunction)Queue_take, METH_NOARGS, NULL},
    {"_take_or_watch", (PyCFunction)Queue_take_or_watch, METH_O, NULL},
    {"_watch", (PyCFunction)Sh_watch, METH_O, NULL},
    {"_unwatch", (PyCFunction)Sh_unwatch, METH_O, NULL},
    {"_watchers", (PyCFunction)Sh_watchers, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Queue_slots[] = {
    {Py_tp_dealloc, Sh_dealloc},
    {Py_tp_repr, Sh_repr},
    {Py_tp_getset, Sh_getset},
    {Py_tp_methods, Queue_methods},
    {Py_mp_length, Queue_length},
    {Py_tp_doc, "The C base of ame.shared.Queue."},
    {0, NULL},
};

static PyMethodDef Channel_methods[] = {
    {"publish", (PyCFunction)Channel_publish, METH_O, NULL},
    {"_register", (PyCFunction)Channel_register, METH_O, NULL},
    {"_unregister", (PyCFunction)Sh_unwatch, METH_O, NULL},
    {"_read", (PyCFunction)Channel_read, METH_VARARGS, NULL},
    {"_trim", (PyCFunction)Channel_trim, METH_NOARGS, NULL},
    {"_unwatch", (PyCFunction)Sh_unwatch, METH_O, NULL},
    {"_watchers", (PyCFunction)Sh_watchers, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Channel_getset[] = {
    {"name", (getter)Sh_get_name, NULL, "The object's name.", NULL},
    {"seq", (getter)Channel_seq, NULL,
     "The number of the last message published (0: none yet).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Channel_slots[] = {
    {Py_tp_dealloc, Sh_dealloc},
    {Py_tp_repr, Sh_repr},
    {Py_tp_getset, Channel_getset},
    {Py_tp_methods, Channel_methods},
    {Py_tp_doc, "The C base of ame.shared.Channel."},
    {0, NULL},
};

#define SH_SPEC(cname, slot_table)                                           \
  {                                                                          \
    .name = "ame._ame." cname, .basicsize = sizeof(ShObject),                \
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE |                      \
             Py_TPFLAGS_DISALLOW_INSTANTIATION,                              \
    .slots = slot_table,                                                     \
  }

static PyType_Spec Dict_spec = SH_SPEC("SharedDict", Dict_slots);
static PyType_Spec Counter_spec = SH_SPEC("SharedCounter", Counter_slots);
static PyType_Spec Queue_spec = SH_SPEC("SharedQueue", Queue_slots);
static PyType_Spec Channel_spec = SH_SPEC("SharedChannel", Channel_slots);

static void ts_key_make(void) {
  pthread_key_create(&ts_key, ts_destroy);
  pthread_atfork(NULL, NULL, atfork_child);
}

static int add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **out) {
  PyTypeObject *t = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec, NULL);
  if (t == NULL) return -1;
  Py_XSETREF(*out, t);
  return PyModule_AddType(m, t);
}

int amepy_shared_init(PyObject *m) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, ts_key_make);
  if (add_type(m, &Dict_spec, &dict_type) < 0 ||
      add_type(m, &Counter_spec, &counter_type) < 0 ||
      add_type(m, &Queue_spec, &queue_type) < 0 ||
      add_type(m, &Channel_spec, &channel_type) < 0)
    return -1;
  if (Conflict == NULL) {
    Conflict = PyErr_NewExceptionWithDoc(
        "ame._ame._Conflict",
        "Raised inside ame.atomic when the running attempt has been "
        "aborted; ame.atomic catches it and runs the block again.  A\n"
        "BaseException, so that `except Exception` does not swallow it.",
        PyExc_BaseException, NULL);
    if (Conflict == NULL) return -1;
  }
  if (PyModule_AddObjectRef(m, "_Conflict", Conflict) < 0) return -1;
  if (empty_marker == NULL) {
    empty_marker = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (empty_marker == NULL) return -1;
  }
  if (PyModule_AddObjectRef(m, "_EMPTY", empty_marker) < 0) return -1;
  if (conflict_table == NULL && (conflict_table = PyDict_New()) == NULL)
    return -1;
  if (queue_empty == NULL) {
    PyObject *q = PyImport_ImportModule("queue");
    if (q == NULL) return -1;
    queue_empty = PyObject_GetAttrString(q, "Empty");
    Py_DECREF(q);
    if (queue_empty == NULL) return -1;
  }
  if (amepy_codec_init() < 0) return -1;
  return PyModule_AddFunctions(m, shared_functions);
}
