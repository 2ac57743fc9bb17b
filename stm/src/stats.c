/*
** stm/src/stats.c — statistics and the conflict report.
**
** Every abort caused by a conflict is attributed to one word (the word whose
** lock was met, or the read that validation found overwritten) and noted in
** a fixed-size, lock-free table keyed by address.  Reports sort that table,
** attach the names given with ame_label() and the call sites of the aborting
** and the lock-holding transactions.  Only aborts pay for this.
*/
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define SLOTS 4096 /* conflict table size (power of two) */
#define PROBES 16

struct slot {
  uintptr_t key;          /* atomic: addr | 1, 0 when free */
  uint64_t count;         /* atomic */
  const char *site;       /* atomic: latest aborting site */
  const char *other_site; /* atomic: latest lock holder's site */
  int cause;              /* atomic: latest cause */
};

static struct slot table[SLOTS];
static uint64_t dropped; /* atomic: notes that found no slot */
/* atomic: a slot was claimed or a note dropped since the last reset, which
** then clears the table; otherwise it has nothing to clear (a note that
** matches a slot already claimed finds it claimed since, or cleared and
** claims it anew), and a reset costs one exchange, not a pass over every
** slot. */
static int dirty;

struct label {
  uintptr_t base;
  size_t size;
  char *name;
};
static pthread_mutex_t label_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ame__vec labels; /* struct label */

void ame__conflict_note(uintptr_t addr, ame_abort_cause_t cause,
                        const char *site, const char *other_site) {
  uintptr_t key = addr | 1;
  size_t h = (size_t)((key * (uintptr_t)0x9E3779B97F4A7C15ull) >> 52);
  for (unsigned p = 0; p < PROBES; p++) {
    struct slot *s = &table[(h + p) & (SLOTS - 1)];
    uintptr_t k = LOAD_ACQ(&s->key);
    if (k == 0) {
      uintptr_t zero = 0;
      if (__atomic_compare_exchange_n(&s->key, &zero, key, 0,
                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        k = key;
        STORE_REL(&dirty, 1);
      } else
        k = zero;
    }
    if (k != key) continue;
    __atomic_add_fetch(&s->count, 1, __ATOMIC_RELAXED);
    STORE(&s->site, site);
    if (other_site) STORE(&s->other_site, other_site);
    STORE(&s->cause, (int)cause);
    return;
  }
  __atomic_add_fetch(&dropped, 1, __ATOMIC_RELAXED);
  STORE_REL(&dirty, 1);
}

/* Every slot, and the dropped count, back to empty. */
static void conflicts_clear(void) {
  for (size_t i = 0; i < SLOTS; i++) {
    STORE(&table[i].count, 0);
    STORE(&table[i].site, NULL);
    STORE(&table[i].other_site, NULL);
    STORE_REL(&table[i].key, 0);
  }
  STORE(&dropped, 0);
}

/* A claim whose flag this exchange misses is concurrent with the reset:
** its slot is left for the next one, which the flag still asks for. */
void ame__conflicts_reset(void) {
  if (__atomic_exchange_n(&dirty, 0, __ATOMIC_ACQ_REL)) conflicts_clear();
}

void ame__stats_shutdown(void) {
  STORE(&dirty, 0);
  conflicts_clear();
  pthread_mutex_lock(&label_lock);
  struct label *lb = labels.items;
  for (size_t i = 0; i < labels.n; i++) free(lb[i].name);
  ame__vec_free(&labels);
  pthread_mutex_unlock(&label_lock);
}

int ame_label(const void *addr, size_t size, const char *name) {
  if (addr == NULL || size == 0 || name == NULL) return -EINVAL;
  struct label l = {(uintptr_t)addr, size, strdup(name)};
  if (l.name == NULL) return -ENOMEM;
  pthread_mutex_lock(&label_lock);
  int rc = ame__vec_push(&labels, &l, sizeof l);
  pthread_mutex_unlock(&label_lock);
  if (rc) free(l.name);
  return rc;
}

/* The newest label covering addr (call with label_lock held). */
static const struct label *label_of(uintptr_t addr) {
  struct label *lb = labels.items;
  for (size_t i = labels.n; i-- > 0;)
    if (addr >= lb[i].base && addr - lb[i].base < lb[i].size) return &lb[i];
  return NULL;
}

static int by_count(const void *a, const void *b) {
  const ame_conflict_t *x = a, *y = b;
  return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

size_t ame_conflicts(ame_conflict_t *out, size_t n) {
  ame_conflict_t *all = malloc(SLOTS * sizeof *all);
  if (all == NULL) return 0;
  size_t m = 0;
  for (size_t i = 0; i < SLOTS; i++) {
    uintptr_t k = LOAD_ACQ(&table[i].key);
    uint64_t c = LOAD(&table[i].count);
    if (k == 0 || c == 0) continue;
    all[m].addr = k & ~(uintptr_t)1;
    all[m].count = c;
    all[m].site = LOAD(&table[i].site);
    all[m].other_site = LOAD(&table[i].other_site);
    all[m].cause = (ame_abort_cause_t)LOAD(&table[i].cause);
    all[m].label = NULL;
    all[m].label_base = 0;
    m++;
  }
  qsort(all, m, sizeof *all, by_count);
  if (m > n) m = n;
  pthread_mutex_lock(&label_lock);
  for (size_t i = 0; i < m; i++) {
    const struct label *l = label_of(all[i].addr);
    if (l) {
      all[i].label = l->name; /* valid until shutdown */
      all[i].label_base = l->base;
    }
  }
  pthread_mutex_unlock(&label_lock);
  if (m) memcpy(out, all, m * sizeof *all);
  free(all);
  return m;
}

/* The counters of ame_stats_t (all but max_attempts and frees_pending),
** by offset. */
#define COUNTERS(X)                                                           \
  X(commits) X(commits_ro) X(aborts) X(retries) X(irrevocable)               \
  X(escalations) X(extensions) X(frees_done)

/* Statistics are written by their owner alone, with a plain load and
** store (no locked instruction on its commits).  So a reset cannot zero
** them: an owner between its load and its store would put back the count
** it loaded.  Instead a reset records each descriptor of the process's
** domain's counts (ame__G.stats_base, by slot), and readers subtract
** them.  A base is loaded (acquire) before the counts: a count read after
** it is no older than the count the reset read for it (release). */
static const ame_stats_t *base_of(const ame_tx_t *tx) {
  if (tx->dom != &ame__G.dom || ame__G.stats_base == NULL) return NULL;
  return &ame__G.stats_base[tx->slot];
}

/* Add tx's statistics since the last reset (base b, NULL: none) to *to. */
static void add_stats(ame_stats_t *to, const ame_tx_t *tx,
                      const ame_stats_t *b) {
  const ame_stats_t *from = &tx->stats;
  ame_stats_t base = {0};
  if (b) {
#define X(f) base.f = LOAD_ACQ(&b->f);
    COUNTERS(X)
#undef X
    for (int i = 0; i < AME_ABORT__COUNT; i++)
      base.aborts_by_cause[i] = LOAD_ACQ(&b->aborts_by_cause[i]);
  }
#define X(f) to->f += LOAD(&from->f) - base.f;
  COUNTERS(X)
#undef X
  for (int i = 0; i < AME_ABORT__COUNT; i++)
    to->aborts_by_cause[i] +=
        LOAD(&from->aborts_by_cause[i]) - base.aborts_by_cause[i];
  uint64_t ma = LOAD(&from->max_attempts);
  if (ma > to->max_attempts) to->max_attempts = ma;
  to->frees_pending += LOAD(&from->frees_pending);
}

void ame_stats_thread(const ame_tx_t *tx, ame_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (tx) add_stats(out, tx, base_of(tx));
}

/* A heap slot's descriptor, which has no base, and which another thread
** may be setting up (its dom is not read). */
void ame__stats_heap(const ame_tx_t *tx, ame_stats_t *out) {
  memset(out, 0, sizeof *out);
  add_stats(out, tx, NULL);
}

void ame_stats_total(ame_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (!LOAD_ACQ(&ame__G.initialised)) return;
  unsigned n = LOAD_ACQ(&ame__G.dom.n_slots);
  for (unsigned i = 0; i < n; i++) {
    ame_tx_t *t = __atomic_load_n(&ame__G.dom.threads[i], __ATOMIC_ACQUIRE);
    if (t)
      add_stats(out, t, ame__G.stats_base ? &ame__G.stats_base[i] : NULL);
  }
  pthread_mutex_lock(&ame__G.reg_lock);
  out->frees_pending += ame__G.orphan_stats.frees_pending;
  out->frees_done += ame__G.orphan_stats.frees_done;
  pthread_mutex_unlock(&ame__G.reg_lock);
}

void ame_stats_reset(void) {
  pthread_mutex_lock(&ame__G.reg_lock);
  if (ame__G.initialised) {
    unsigned n = LOAD_ACQ(&ame__G.dom.n_slots);
    for (unsigned i = 0; i < n; i++) {
      ame_tx_t *t = __atomic_load_n(&ame__G.dom.threads[i], __ATOMIC_ACQUIRE);
      if (t == NULL) continue;
      const ame_stats_t *s = &t->stats;
      ame_stats_t *b = &ame__G.stats_base[t->slot];
#define X(f) STORE_REL(&b->f, LOAD(&s->f));
      COUNTERS(X)
#undef X
      for (int c = 0; c < AME_ABORT__COUNT; c++)
        STORE_REL(&b->aborts_by_cause[c], LOAD(&s->aborts_by_cause[c]));
      /* Not a count: the most attempts from here on.  (An owner's store
      ** that this zero meets is of an attempt count it saw now.)  Pending
      ** frees are a level, left to their owner. */
      STORE(&t->stats.max_attempts, 0);
    }
    ame__G.orphan_stats.frees_done = 0;
  }
  pthread_mutex_unlock(&ame__G.reg_lock);
  ame__conflicts_reset();
}

const char *ame_abort_cause_name(ame_abort_cause_t cause) {
  switch (cause) {
  case AME_ABORT_READ_LOCKED: return "read-locked";
  case AME_ABORT_WRITE_LOCKED: return "write-locked";
  case AME_ABORT_VALIDATE: return "validate";
  case AME_ABORT_COMMIT: return "commit";
  case AME_ABORT_KILLED: return "killed";
  case AME_ABORT_EXPLICIT: return "explicit";
  case AME_ABORT_RETRY: return "retry";
  case AME_ABORT_IRREVOCABLE: return "irrevocable";
  case AME_ABORT_CAPACITY: return "capacity";
  case AME_ABORT__COUNT: break;
  }
  return "unknown";
}

int ame_conflict_report(FILE *f, size_t top) {
  ame_stats_t s;
  ame_stats_total(&s);
  uint64_t conflicts = 0;
  for (int c = AME_ABORT_READ_LOCKED; c <= AME_ABORT_KILLED; c++)
    conflicts += s.aborts_by_cause[c];
  fprintf(f, "ame STM report\n");
  fprintf(f, "  commits %llu (read-only %llu), aborts %llu (%.4f per commit, "
             "%llu from conflicts), retries %llu\n",
          (unsigned long long)s.commits, (unsigned long long)s.commits_ro,
          (unsigned long long)s.aborts,
          s.commits ? (double)s.aborts / (double)s.commits : 0.0,
          (unsigned long long)conflicts, (unsigned long long)s.retries);
  fprintf(f, "  irrevocable %llu (forced by contention %llu), snapshot "
             "extensions %llu, most attempts %llu\n",
          (unsigned long long)s.irrevocable,
          (unsigned long long)s.escalations,
          (unsigned long long)s.extensions,
          (unsigned long long)s.max_attempts);
  fprintf(f, "  aborts by cause:");
  for (int c = 0; c < AME_ABORT__COUNT; c++)
    fprintf(f, " %s %llu", ame_abort_cause_name((ame_abort_cause_t)c),
            (unsigned long long)s.aborts_by_cause[c]);
  fprintf(f, "\n");
  if (top == 0) return 0;
  ame_conflict_t *c = malloc(top * sizeof *c);
  if (c == NULL) return 0;
  size_t n = ame_conflicts(c, top);
  if (n == 0) {
    fprintf(f, "  no conflicts recorded\n");
  } else {
    fprintf(f, "  hottest conflicts (aborts, cause, word, label, aborting "
               "site <- lock holder):\n");
    for (size_t i = 0; i < n; i++) {
      char where[160];
      if (c[i].label)
        snprintf(where, sizeof where, "%s+%llu", c[i].label,
                 (unsigned long long)(c[i].addr - c[i].label_base));
      else
        snprintf(where, sizeof where, "-");
      fprintf(f, "  %10llu  %-12s %#-18llx %-24s %s%s%s\n",
              (unsigned long long)c[i].count,
              ame_abort_cause_name(c[i].cause), (unsigned long long)c[i].addr,
              where, c[i].site ? c[i].site : "?",
              c[i].other_site ? " <- " : "",
              c[i].other_site ? c[i].other_site : "");
    }
  }
  uint64_t d = LOAD(&dropped);
  if (d) fprintf(f, "  (%llu conflicts not attributed: table full)\n",
                 (unsigned long long)d);
  free(c);
  return (int)n;
}
