/*
** examples/c/wordcount.c — counting words in parallel with the thread-less
** task API (ame_tasks_*): no threads, no locks in the program, and still
** every core busy.
**
** The text is cut into chunks at word boundaries.  One task per chunk
** counts its words into a table of its own (memory no other task sees, so
** this transaction never conflicts) and then adds a merge task, which adds
** those counts into one shared hash table in STM words.  Merge tasks that
** touch the same word conflict and one of them is re-run; the result is
** that of running the tasks one at a time.  --check counts the words again
** sequentially and compares every count.
**
** A word is a run of ASCII letters (compared without case), digits,
** apostrophes or bytes >= 0x80 (so UTF-8 words stay whole).
**
**   build/examples/c/wordcount [-t THREADS] [-n TOP] [-c CHUNK_KB] [--check]
**                              [FILE | -g WORDS]
**       no FILE: a generated text of WORDS words (default 1000000)
*/
#include <ame/stm.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHARED_BUCKETS (1u << 16) /* power of two */
#define LOCAL_SLOTS 1024          /* initial size of a chunk's table */

/* ------------------------------------------------------------------------
** The shared table: bucket heads and counts are STM words; an entry's
** other fields are written before it is published and never change.  Words
** point into the text, which outlives every task.
*/

struct entry {
  struct entry *next; /* immutable once published */
  const char *word;   /* immutable */
  size_t len;         /* immutable */
  uintptr_t count;    /* STM */
};

static struct entry **shared; /* SHARED_BUCKETS STM words */

static uint64_t hash_word(const char *w, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)w[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* Add n to word's count in the shared table, in tx. */
static void shared_add(ame_tx_t *tx, const char *w, size_t len, uint64_t h,
                       uintptr_t n) {
  struct entry **b = &shared[h & (SHARED_BUCKETS - 1)];
  struct entry *first = ame_load_ptr_tx(tx, (void **)b);
  for (struct entry *e = first; e; e = e->next) {
    if (e->len == len && memcmp(e->word, w, len) == 0) {
      ame_store_word_tx(tx, &e->count, ame_load_word_tx(tx, &e->count) + n);
      return;
    }
  }
  struct entry *e = ame_tx_malloc(tx, sizeof *e);
  if (e == NULL) {
    fprintf(stderr, "wordcount: out of memory\n");
    exit(1);
  }
  e->next = first;
  e->word = w;
  e->len = len;
  e->count = n;
  ame_store_ptr_tx(tx, (void **)b, e);
}

/* ------------------------------------------------------------------------
** A chunk's own table: open addressing, private to the task that fills it
** and then to the task that merges it.
*/

struct slot {
  const char *word; /* NULL: empty */
  size_t len;
  uint64_t hash;
  uintptr_t count;
};

struct local {
  struct slot *slots;
  size_t cap, used;
};

static int is_word_byte(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '\'' || ch >= 0x80;
}

static void lower(char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] >= 'A' && p[i] <= 'Z') p[i] = (char)(p[i] - 'A' + 'a');
}

/* The slot of word w (hash h) in a table with a free slot: its own, or
** the free one where it goes. */
static struct slot *local_find(struct slot *slots, size_t cap, const char *w,
                               size_t len, uint64_t h) {
  size_t i = (size_t)h & (cap - 1);
  while (slots[i].word && !(slots[i].hash == h && slots[i].len == len &&
                            memcmp(slots[i].word, w, len) == 0))
    i = (i + 1) & (cap - 1);
  return &slots[i];
}

/* Add n to w's count in a table with a free slot.  Return 1 if w was new,
** else 0. */
static int local_put(struct slot *slots, size_t cap, const char *w,
                     size_t len, uint64_t h, uintptr_t n) {
  struct slot *s = local_find(slots, cap, w, len, h);
  if (s->word) {
    s->count += n;
    return 0;
  }
  *s = (struct slot){w, len, h, n};
  return 1;
}

/* Double t's size with slots from alloc (zeroed); release the old ones with
** release.  Return 0 or -ENOMEM. */
static int local_grow(struct local *t, void *(*alloc)(void *, size_t),
                      void (*release)(void *, void *), void *ctx) {
  struct slot *bigger = alloc(ctx, 2 * t->cap * sizeof *bigger);
  if (bigger == NULL) return -ENOMEM;
  for (size_t k = 0; k < t->cap; k++)
    if (t->slots[k].word)
      local_put(bigger, 2 * t->cap, t->slots[k].word, t->slots[k].len,
                t->slots[k].hash, t->slots[k].count);
  release(ctx, t->slots);
  t->slots = bigger;
  t->cap *= 2;
  return 0;
}

/* Count the words of text[0..n) into t (already allocated), growing it at
** half full.  Return 0 or -ENOMEM. */
static int count_words(struct local *t, const char *text, size_t n,
                       void *(*alloc)(void *, size_t),
                       void (*release)(void *, void *), void *ctx) {
  size_t i = 0;
  while (i < n) {
    while (i < n && !is_word_byte((unsigned char)text[i])) i++;
    size_t start = i;
    while (i < n && is_word_byte((unsigned char)text[i])) i++;
    if (i == start) break;
    if (2 * (t->used + 1) > t->cap && local_grow(t, alloc, release, ctx))
      return -ENOMEM;
    t->used += (size_t)local_put(t->slots, t->cap, text + start, i - start,
                                 hash_word(text + start, i - start), 1);
  }
  return 0;
}

/* Allocators for count_words: the transaction's (a task), or malloc's.
** (malloc and memset rather than calloc: calloc maps fresh pages to the
** zero page, and the first write to each then costs a copy-on-write fault
** whose TLB shootdown interrupts every other thread of the process.) */
static void *tx_alloc(void *tx, size_t size) {
  void *p = ame_tx_malloc(tx, size);
  return p ? memset(p, 0, size) : NULL;
}
static void tx_release(void *tx, void *p) { ame_tx_free(tx, p, 0); }
static void *plain_alloc(void *ctx, size_t size) {
  (void)ctx;
  return calloc(1, size);
}
static void plain_release(void *ctx, void *p) {
  (void)ctx;
  free(p);
}

/* Count the words of text[0..n) into t, whose blocks come from tx (an
** abort frees them). */
static int local_count(ame_tx_t *tx, struct local *t, const char *text,
                       size_t n) {
  t->cap = LOCAL_SLOTS;
  t->used = 0;
  t->slots = tx_alloc(tx, t->cap * sizeof *t->slots);
  if (t->slots == NULL) return -ENOMEM;
  return count_words(t, text, n, tx_alloc, tx_release, tx);
}

/* ------------------------------------------------------------------------
** The tasks.
*/

/* The shared table's buckets are split into PARTS ranges; a merge task
** adds one chunk's words of one range.  Merges of different ranges touch
** different buckets and entries, so they never conflict; only merges of
** the same range (from different chunks) may. */
#define PARTS 16
#define PART_OF(h) (((h) & (SHARED_BUCKETS - 1)) / (SHARED_BUCKETS / PARTS))

struct chunk;
struct merge {
  struct chunk *c;
  unsigned part;
};

struct chunk {
  char *text;                /* this chunk's part of the text */
  size_t len;
  ame_tasks_t *q;
  struct slot *words;        /* its counts, grouped by range */
  size_t start[PARTS + 1];   /* range p is words[start[p] .. start[p+1]) */
  struct merge merges[PARTS];/* the merge tasks' arguments */
};

static void merge_task(ame_tx_t *tx, void *arg) {
  struct merge *m = arg;
  struct chunk *c = m->c;
  for (size_t k = c->start[m->part]; k < c->start[m->part + 1]; k++) {
    struct slot *s = &c->words[k];
    shared_add(tx, s->word, s->len, s->hash, s->count);
  }
}

/* Count one chunk, group its words by range and, on commit, queue one merge
** task per range.  It touches only the chunk's own memory (lower-casing is
** idempotent, so a re-run may redo it) and hence never conflicts. */
static void out_of_memory(void) {
  fprintf(stderr, "wordcount: out of memory\n");
  exit(1);
}

static void count_task(ame_tx_t *tx, void *arg) {
  struct chunk *c = arg;
  struct local t;
  lower(c->text, c->len);
  if (local_count(tx, &t, c->text, c->len) != 0) out_of_memory();
  /* Group the words by range: count, sum up, place. */
  size_t at[PARTS] = {0};
  for (size_t k = 0; k < t.cap; k++)
    if (t.slots[k].word) at[PART_OF(t.slots[k].hash)]++;
  c->start[0] = 0;
  for (unsigned p = 0; p < PARTS; p++) {
    c->start[p + 1] = c->start[p] + at[p];
    at[p] = c->start[p];
  }
  c->words = ame_tx_malloc(tx, (t.used + 1) * sizeof *c->words);
  if (c->words == NULL) out_of_memory();
  for (size_t k = 0; k < t.cap; k++)
    if (t.slots[k].word) c->words[at[PART_OF(t.slots[k].hash)]++] = t.slots[k];
  ame_tx_free(tx, t.slots, 0);
  for (unsigned p = 0; p < PARTS; p++) {
    c->merges[p] = (struct merge){c, p};
    if (ame_tasks_add(c->q, tx, merge_task, &c->merges[p]) != 0)
      out_of_memory();
  }
}

/* ------------------------------------------------------------------------
** The sequential count (--check) and the text.
*/

/* Count text[0..n) sequentially into a fresh table (plain malloc); its
** slots are NULL if memory ran out. */
static struct local seq_count(const char *text, size_t n) {
  struct local t = {calloc(LOCAL_SLOTS, sizeof(struct slot)), LOCAL_SLOTS, 0};
  if (t.slots &&
      count_words(&t, text, n, plain_alloc, plain_release, NULL) != 0) {
    free(t.slots);
    t.slots = NULL;
  }
  return t;
}

static uint64_t rng(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* A text of nwords words drawn from a made-up vocabulary with a skewed
** (roughly Zipf) distribution, some capitalised, with punctuation and
** line breaks.  Return it (malloc) and set *len. */
static char *generate(size_t nwords, size_t *len) {
  static const char *const syl[] = {"ka", "lo", "mi", "ne", "ru", "sa",
                                    "te", "vi", "zo", "an", "el", "or",
                                    "qu", "ish", "ent", "th"};
  enum { VOCAB = 20000 };
  size_t cap = nwords * 16 + 1, n = 0;
  char *text = malloc(cap);
  if (text == NULL) return NULL;
  uint64_t seed = 12345;
  for (size_t w = 0; w < nwords; w++) {
    double u = (double)(rng(&seed) >> 11) / 9007199254740992.0;
    unsigned idx = (unsigned)(VOCAB * u * u * u); /* skewed to small */
    /* The word for idx: its base-16 digits as syllables. */
    size_t start = n;
    unsigned v = idx;
    do {
      const char *s = syl[v % 16];
      while (*s) text[n++] = *s++;
      v /= 16;
    } while (v);
    if (rng(&seed) % 10 == 0) text[start] = (char)(text[start] - 'a' + 'A');
    uint64_t r = rng(&seed) % 24;
    text[n++] = r == 0 ? '.' : r == 1 ? ',' : ' ';
    if (r < 2 || rng(&seed) % 12 == 0) text[n++] = r == 0 ? '\n' : ' ';
  }
  text[n] = '\0';
  *len = n;
  return text;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *text = malloc(cap);
  while (text) {
    n += fread(text + n, 1, cap - n, f);
    if (n < cap) break;
    char *bigger = realloc(text, cap *= 2);
    if (bigger == NULL) free(text);
    text = bigger;
  }
  int err = ferror(f);
  fclose(f);
  if (text == NULL || err) {
    free(text);
    return NULL;
  }
  *len = n;
  return text;
}

/* ------------------------------------------------------------------------
** Results.
*/

struct result {
  const char *word;
  size_t len;
  uintptr_t count;
};

static int by_count(const void *a, const void *b) {
  const struct result *x = a, *y = b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->word, y->word, n);
  return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Copy the shared table into an array, in one transaction.  Return it
** (malloc) and set *n, or NULL. */
static struct result *collect(ame_tx_t *tx, size_t *n) {
  struct result *volatile out = NULL;
  volatile size_t count = 0;
  AME_ATOMIC(tx) {
    size_t k = 0, cap = 1024;
    struct result *res = ame_tx_malloc(tx, cap * sizeof *res);
    for (unsigned b = 0; res && b < SHARED_BUCKETS; b++) {
      for (struct entry *e = ame_load_ptr_tx(tx, (void **)&shared[b]); e;
           e = e->next) {
        if (k == cap) {
          struct result *bigger = ame_tx_malloc(tx, 2 * cap * sizeof *res);
          if (bigger == NULL) break;
          memcpy(bigger, res, cap * sizeof *res);
          ame_tx_free(tx, res, 0);
          res = bigger;
          cap *= 2;
        }
        res[k++] = (struct result){e->word, e->len,
                                   ame_load_word_tx(tx, &e->count)};
      }
    }
    out = res;
    count = k;
  }
  *n = count;
  return out;
}

/* Free what collect() returned. */
static void release(ame_tx_t *tx, struct result *res) {
  AME_ATOMIC(tx) { ame_tx_free(tx, res, 0); }
}

static void free_shared(void) {
  for (unsigned b = 0; b < SHARED_BUCKETS; b++) {
    struct entry *e = shared[b];
    while (e) {
      struct entry *next = e->next;
      free(e);
      e = next;
    }
  }
  free(shared);
}

static double ms_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) * 1e3 +
         (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Parse s, a whole decimal number from min to max, into *out.  Return 0,
** or -1 if s is not one (a sign, other characters, or out of range). */
static int parse_num(const char *s, size_t min, size_t max, size_t *out) {
  if (*s < '0' || *s > '9') return -1; /* strtoull takes "-1" */
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) return -1;
  *out = (size_t)v;
  return 0;
}

static void usage(FILE *f) {
  fprintf(f, "usage: wordcount [-t THREADS] [-n TOP] [-c CHUNK_KB] "
             "[--check] [FILE | -g WORDS]\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"threads", required_argument, NULL, 't'},
      {"top", required_argument, NULL, 'n'},
      {"chunk", required_argument, NULL, 'c'},
      {"generate", required_argument, NULL, 'g'},
      {"check", no_argument, NULL, 'C'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  unsigned threads = 0, top = 10;
  size_t chunk_kb = 64, nwords = 1000000, num = 0;
  int check = 0, bad = 0, ch;
  while ((ch = getopt_long(argc, argv, "t:n:c:g:h", opts, NULL)) != -1) {
    switch (ch) {
    /* The limits keep CHUNK_KB * 1024 (added to an offset) and the
    ** generated text's WORDS * 16 + 1 bytes from wrapping. */
    case 't': bad |= parse_num(optarg, 0, 4096, &num); threads = (unsigned)num;
      break;
    case 'n': bad |= parse_num(optarg, 0, UINT_MAX, &num); top = (unsigned)num;
      break;
    case 'c': bad |= parse_num(optarg, 1, (size_t)1 << 30, &chunk_kb); break;
    case 'g': bad |= parse_num(optarg, 0, (SIZE_MAX - 1) / 16, &nwords); break;
    case 'C': check = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind + 1 < argc || bad) {
    usage(stderr);
    return 2;
  }

  size_t len;
  char *text = optind < argc ? read_file(argv[optind], &len)
                             : generate(nwords, &len);
  if (text == NULL) {
    perror(optind < argc ? argv[optind] : "wordcount");
    return 1;
  }
  /* A copy for --check: the tasks lower-case the text in place. */
  char *copy = check ? malloc(len + 1) : NULL;
  if (check) {
    if (copy == NULL) return 1;
    memcpy(copy, text, len);
    lower(copy, len);
  }

  /* Cut the text into chunks that end between words. */
  size_t max_chunks = len / (chunk_kb * 1024) + 2, nchunks = 0;
  struct chunk *chunks = calloc(max_chunks, sizeof *chunks);
  shared = calloc(SHARED_BUCKETS, sizeof *shared);
  ame_tasks_t *q = ame_tasks_new();
  ame_tx_t *tx = ame_thread_enter();
  if (chunks == NULL || shared == NULL || q == NULL || tx == NULL) {
    fprintf(stderr, "wordcount: out of memory\n");
    return 1;
  }
  for (size_t off = 0; off < len;) {
    size_t end = off + chunk_kb * 1024 < len ? off + chunk_kb * 1024 : len;
    while (end < len && is_word_byte((unsigned char)text[end])) end++;
    chunks[nchunks].text = text + off;
    chunks[nchunks].len = end - off;
    chunks[nchunks].q = q;
    if (ame_tasks_add(q, NULL, count_task, &chunks[nchunks]) != 0)
      out_of_memory();
    nchunks++;
    off = end;
  }

  ame_stats_reset();
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = ame_tasks_run(q, threads);
  double ms = ms_since(&t0);
  if (rc != 0) {
    fprintf(stderr, "wordcount: %s\n", ame_strerror(rc));
    return 1;
  }
  ame_stats_t st;
  ame_stats_total(&st);

  size_t ndistinct;
  struct result *res = collect(tx, &ndistinct);
  if (res == NULL) {
    fprintf(stderr, "wordcount: out of memory\n");
    return 1;
  }
  qsort(res, ndistinct, sizeof *res, by_count);
  uint64_t total = 0;
  for (size_t i = 0; i < ndistinct; i++) total += res[i].count;
  printf("wordcount: %llu words, %zu distinct, %zu chunk%s of %zu KiB, ",
         (unsigned long long)total, ndistinct, nchunks, nchunks == 1 ? "" : "s",
         chunk_kb);
  if (threads)
    printf("%u thread%s: %.1f ms\n", threads, threads == 1 ? "" : "s", ms);
  else
    printf("one thread per core: %.1f ms\n", ms);
  for (size_t i = 0; i < top && i < ndistinct; i++)
    printf("%10lu  %.*s\n", (unsigned long)res[i].count, (int)res[i].len,
           res[i].word);
  printf("stm: %llu commits, %llu aborts, %llu irrevocable, %llu tasks\n",
         (unsigned long long)st.commits, (unsigned long long)st.aborts,
         (unsigned long long)st.irrevocable,
         (unsigned long long)ame_tasks_done(q));

  int status = 0;
  if (check) {
    /* Every word the sequential count finds, with the same count, and no
    ** other word. */
    struct local seq = seq_count(copy, len);
    if (seq.slots == NULL) {
      fprintf(stderr, "wordcount: out of memory\n");
      return 1;
    }
    size_t bad = 0;
    uint64_t seq_total = 0;
    struct local par = {NULL, 1, 0};
    while (par.cap < 2 * ndistinct + 2) par.cap *= 2;
    if ((par.slots = calloc(par.cap, sizeof(struct slot))) == NULL) return 1;
    for (size_t i = 0; i < ndistinct; i++)
      local_put(par.slots, par.cap, res[i].word, res[i].len,
                hash_word(res[i].word, res[i].len), res[i].count);
    for (size_t k = 0; k < seq.cap; k++) {
      struct slot *s = &seq.slots[k];
      if (s->word == NULL) continue;
      seq_total += s->count;
      struct slot *p = local_find(par.slots, par.cap, s->word, s->len,
                                  s->hash);
      if (p->word == NULL || p->count != s->count) {
        if (bad++ < 5)
          fprintf(stderr, "check: '%.*s': %lu sequentially, %lu in "
                          "parallel\n",
                  (int)s->len, s->word, (unsigned long)s->count,
                  (unsigned long)(p->word ? p->count : 0));
      }
    }
    if (seq.used != ndistinct || seq_total != total) bad++;
    if (bad) {
      printf("check: FAILED (%zu differences; sequential: %llu words, %zu "
             "distinct)\n",
             bad, (unsigned long long)seq_total, seq.used);
      status = 1;
    } else {
      printf("check: ok (the sequential count agrees: %llu words, %zu "
             "distinct)\n",
             (unsigned long long)seq_total, seq.used);
    }
    free(seq.slots);
    free(par.slots);
  }

  release(tx, res);
  ame_thread_exit();
  ame_tasks_free(q);
  free_shared();
  for (size_t i = 0; i < nchunks; i++) free(chunks[i].words);
  free(chunks);
  free(copy);
  free(text);
  ame_stm_shutdown();
  return status;
}
