/*
** tests/stm/test_heap.c — the shared heap (ame/heap.h): creating and
** opening (and refusing what is not a heap), the allocator (sizes, blobs,
** rollback, a full heap, merging of large blocks), the containers, and
** transactions from several processes at once (a counter incremented
** from four processes ends exact; ame_retry wakes across processes).
** Crashes are tests/stm/test_heap_crash.c's.
*/
#include "stm-test.h"

#include <ame/heap.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A heap name unique to this process. */
static const char *heap_name(char *buf, size_t n, const char *what) {
  snprintf(buf, n, "ame-test-%s-%d", what, (int)getpid());
  return buf;
}

/* Run fn in a forked child with the heap; return its exit status (a
** failed assertion there aborts it: a signal, which fails the test). */
static int in_child(ame_heap_t *h, int (*fn)(ame_heap_t *h, void *arg),
                    void *arg) {
  fflush(NULL);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ame_heap_after_fork_child(h);
    _exit(fn(h, arg));
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  if (!WIFEXITED(st))
    AME_TEST_FAIL_("child died with signal %d", WTERMSIG(st));
  return WEXITSTATUS(st);
}

static int64_t used_now(ame_heap_t *h) {
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  return st.used;
}

/* ------------------------------------------------------------------------
** Creating and opening.
*/

static int open_taken(ame_heap_t *h, void *arg) {
  const char *name = arg;
  /* Unmap the inherited heap, put something else at its address, and
  ** try to open it there. */
  void *addr = ame_heap_base(h);
  ame_heap_close(h);
  void *m = mmap(addr, 4096, PROT_READ,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (m != addr) return 3;
  ame_heap_t *h2 = NULL;
  int rc = ame_heap_open(name, &h2);
  return rc == -EADDRINUSE ? 0 : 4;
}

static int open_and_bump(ame_heap_t *h, void *arg) {
  const char *name = arg;
  ame_heap_close(h);
  ame_heap_t *h2 = NULL;
  int rc = ame_heap_open(name, &h2);
  if (rc != 0) return 10 + (-rc % 100);
  ame_tx_t *tx = ame_heap_enter(h2);
  if (tx == NULL) return 5;
  volatile int found = 0;
  AME_ATOMIC(tx) {
    uintptr_t *w = NULL;
    unsigned type = 0;
    found = ame_heap_root_get(tx, "word", 4, &type, (void **)&w);
    if (found && type == 42)
      ame_store_word_tx(tx, w, ame_load_word_tx(tx, w) + 1);
  }
  ame_heap_exit(h2);
  ame_heap_close(h2);
  return found ? 0 : 6;
}

TEST_IMPL(heap_create_open) {
  char name[64];
  heap_name(name, sizeof name, "open");
  ame_heap_unlink(name);
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 8};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(name, &cfg, &h), 0);
  ASSERT_PTR_EQ(ame_heap_current(), h);
  ame_heap_t *h2 = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h2), -EBUSY); /* one at a time */
  ASSERT_EQ(ame_heap_open(name, &h2), -EBUSY);
  ame_tx_t *tx = ame_heap_enter(h);
  ASSERT_NOT_NULL(tx);
  ASSERT_PTR_EQ(ame_heap_enter(h), tx);  /* a reference more */
  ame_heap_exit(h);
  ASSERT_PTR_EQ(ame_heap_self(h), tx);
  ASSERT_PTR_EQ(ame_tx_heap(tx), h);
  static uintptr_t *volatile word;
  AME_ATOMIC(tx) {
    word = ame_heap_alloc(tx, 8, 16, 0);
    ame_store_word_tx(tx, word, 7);
    ASSERT_EQ(ame_heap_root_set(tx, "word", 4, 42, word), 0);
  }
  (void)word;
  ame_heap_exit(h);
  ASSERT_NULL(ame_heap_self(h));
  /* Another process opens it by name and changes the word. */
  ASSERT_EQ(in_child(h, open_and_bump, name), 0);
  tx = ame_heap_enter(h);
  ASSERT_EQ(tx_get(tx, word), 8);
  ame_heap_exit(h);
  /* Where its address is taken, opening is refused. */
  ASSERT_EQ(in_child(h, open_taken, name), 0);
  ame_heap_close(h);
  ASSERT_NULL(ame_heap_current());
  ASSERT_EQ(ame_heap_unlink(name), 0);
  ASSERT_EQ(ame_heap_open(name, &h2), -ENOENT);
}

/* Files in /dev/shm that are not heaps are refused, not crashed on; so
** are bad names and a size over the limit. */
TEST_IMPL(heap_open_refuses) {
  char name[64], path[128];
  heap_name(name, sizeof name, "bad");
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_open("no/slash", &h), -EINVAL);
  ASSERT_EQ(ame_heap_open("", &h), -EINVAL);
  ASSERT_EQ(ame_heap_create("bad name", NULL, &h), -EINVAL);
  /* Over AME_HEAP_MAX_SIZE (ame__orec_of's fold needs a table of at most
  ** 2^31 orecs), and so over what its table would cover. */
  ame_heap_config_t huge = {.size = AME_HEAP_MAX_SIZE + 1};
  ASSERT_EQ(ame_heap_create(NULL, &huge, &h), -EINVAL);
  huge.size = (size_t)48 << 30;
  ASSERT_EQ(ame_heap_create(NULL, &huge, &h), -EINVAL);
  /* Empty, short, garbage, and a real heap with one byte changed. */
  static const char garbage[8192] = "this is not an ame heap";
  size_t sizes[] = {0, 100, sizeof garbage};
  for (unsigned i = 0; i < 3; i++) {
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, garbage, sizes[i]), (ssize_t)sizes[i]);
    close(fd);
    ASSERT_EQ(ame_heap_open(name, &h), -EPROTO);
    unlink(path);
  }
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  ASSERT_EQ(ame_heap_create(name, &cfg, &h), 0);
  ame_heap_close(h);
  int fd = open(path, O_RDWR);
  ASSERT_GE(fd, 0);
  char c;
  ASSERT_EQ(pread(fd, &c, 1, 40), 1);  /* inside the layout fields */
  c ^= 1;
  ASSERT_EQ(pwrite(fd, &c, 1, 40), 1);
  ASSERT_EQ(ame_heap_open(name, &h), -EPROTO);
  c ^= 1;
  ASSERT_EQ(pwrite(fd, &c, 1, 40), 1);
  ASSERT_EQ(ftruncate(fd, 1 << 20), 0);  /* truncated */
  ASSERT_EQ(ame_heap_open(name, &h), -EPROTO);
  close(fd);
  ASSERT_EQ(ame_heap_unlink(name), 0);
  ASSERT_NULL(ame_heap_current());
  ASSERT_STR_EQ(ame_heap_strerror(-EPROTO), "not an ame heap, or a corrupt one");
}

/* Run this test again in a new program (/proc/self/exe) without address
** randomization, as role (AME_TEST_ROLE) on the heap called name; return
** its exit status. */
static int run_role(const char *role, const char *name) {
  fflush(NULL);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("AME_TEST_ROLE", role, 1);
    setenv("AME_TEST_HEAP", name, 1);
    if (personality(ADDR_NO_RANDOMIZE) == -1) _exit(77);
    execl("/proc/self/exe", "run-stm-tests", "heap_named_address",
          (char *)NULL);
    _exit(3);
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  if (!WIFEXITED(st))
    AME_TEST_FAIL_("%s died with signal %d", role, WTERMSIG(st));
  return WEXITSTATUS(st);
}

/* Unrelated processes open a named heap, wherever their own mappings
** happen to lie.  Without randomization two runs of one program lay out
** their mappings alike: the opener first maps as much as the heap spans
** where the kernel chooses, which is where the creator's kernel would have
** put the heap; the heap must not be there. */
TEST_IMPL(heap_named_address) {
  const char *role = getenv("AME_TEST_ROLE");
  const char *name = getenv("AME_TEST_HEAP");
  ame_heap_config_t cfg = {.size = 8 << 20};
  if (role && strcmp(role, "create") == 0) {
    ame_heap_t *h = NULL;
    int rc = ame_heap_create(name, &cfg, &h);
    if (rc != 0) exit(10 + (-rc % 100));
    ame_heap_close(h);
    exit(0);
  }
  if (role && strcmp(role, "open") == 0) {
    char path[128];
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    if (stat(path, &st) != 0) exit(4);
    void *m = mmap(NULL, (size_t)st.st_size, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) exit(4);
    ame_heap_t *h = NULL;
    int rc = ame_heap_open(name, &h);
    if (rc != 0) exit(10 + (-rc % 100));
    ame_tx_t *tx = ame_heap_enter(h);
    if (tx == NULL) exit(5);
    ame_heap_exit(h);
    ame_heap_close(h);
    exit(0);
  }
#if defined(AME_TEST_TSAN)
  TEST_SKIP("ThreadSanitizer drops the heap's address hint");
#endif
  char buf[64];
  name = heap_name(buf, sizeof buf, "named");
  ame_heap_unlink(name);
  int made = run_role("create", name);
  if (made == 77) TEST_SKIP("personality(ADDR_NO_RANDOMIZE) is refused here");
  ASSERT_EQ(made, 0);
  int rc = run_role("open", name);
  ame_heap_unlink(name);
  ASSERT_EQ(rc, 0); /* 10 + EADDRINUSE % 100 (108): the address was taken */
}

/* ------------------------------------------------------------------------
** The allocator.
*/

/* Conflict granules: 32 bytes in the process's own domain, 64 in a heap
** (both halves of a 64-byte granule under one orec, so that a claim costs
** one log entry per 64 bytes), and every granule of a heap block under an
** orec of its own. */
static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

TEST_IMPL(heap_granules) {
  ame_tx_t *ptx = enter();
  const struct ame__txhot *ph = (const struct ame__txhot *)ptx;
  static _Alignas(64) uintptr_t w[16];
  ASSERT_PTR_EQ(ame__orec_of(ph, (uintptr_t)&w[0]),
                ame__orec_of(ph, (uintptr_t)&w[3]));
  ASSERT(ame__orec_of(ph, (uintptr_t)&w[0]) !=
         ame__orec_of(ph, (uintptr_t)&w[4]));
  ame_thread_exit();

  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  const struct ame__txhot *hh = (const struct ame__txhot *)tx;
  enum { BYTES = 1 << 20, N = BYTES / 64 };
  static char *volatile blk;
  AME_ATOMIC(tx) { blk = ame_heap_alloc(tx, BYTES + 64, 16, 0); }
  ASSERT_NOT_NULL(blk);
  uintptr_t a = ((uintptr_t)blk + 63) & ~(uintptr_t)63;
  uintptr_t *orecs = malloc(N * sizeof *orecs);
  ASSERT_NOT_NULL(orecs);
  for (size_t i = 0; i < N; i++) {
    uintptr_t g = a + 64 * i;
    ASSERT_PTR_EQ(ame__orec_of(hh, g), ame__orec_of(hh, g + 32));
    ASSERT_PTR_EQ(ame__orec_of(hh, g), ame__orec_of(hh, g + 56));
    orecs[i] = (uintptr_t)ame__orec_of(hh, g);
  }
  qsort(orecs, N, sizeof *orecs, cmp_ptr);
  for (size_t i = 1; i < N; i++) ASSERT(orecs[i] != orecs[i - 1]);
  free(orecs);
  AME_ATOMIC(tx) { ame_heap_free(tx, blk); }
  ame_heap_exit(h);
  ame_heap_close(h);
  ame_stm_shutdown();
}

TEST_IMPL(heap_alloc) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  int64_t base = used_now(h);
  /* Large blocks merge when freed, so a big one fits again (first, while
  ** nothing else is carved between them). */
  static void *volatile big[3];
  AME_ATOMIC(tx) {
    for (int i = 0; i < 3; i++) big[i] = ame_heap_alloc(tx, 1 << 20, 16, 0);
  }
  AME_ATOMIC(tx) {
    ame_heap_free(tx, big[1]);
    ame_heap_free(tx, big[0]);
    ame_heap_free(tx, big[2]);
  }
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  uint64_t top = st.top;
  AME_ATOMIC(tx) { big[0] = ame_heap_alloc(tx, 3 << 20, 16, 0); }
  ASSERT_NOT_NULL(big[0]);
  ame_heap_stats(h, &st);
  ASSERT_EQ(st.top, top);  /* reused the merged run, took nothing new */
  AME_ATOMIC(tx) { ame_heap_free(tx, big[0]); }
  /* Every size class and some large sizes: usable size, tag, owner. */
  static void *volatile blocks[64];
  static const size_t sizes[] = {1, 8, 16, 17, 100, 1000, 4096, 30000,
                                 32752, 32753, 100000, 1 << 20};
  const unsigned n = sizeof sizes / sizeof sizes[0];
  AME_ATOMIC(tx) {
    for (unsigned i = 0; i < n; i++) {
      blocks[i] = ame_heap_alloc(tx, sizes[i], 20 + i, 1000 + i);
      ASSERT_NOT_NULL(blocks[i]);
      ASSERT_GE(ame_heap_size(tx, blocks[i]), sizes[i]);
      ASSERT_EQ(ame_heap_tag(tx, blocks[i]), 20 + i);
      ASSERT_EQ(ame_heap_owner(tx, blocks[i]), 1000 + i);
      ASSERT_EQ(((uintptr_t)blocks[i]) & 7, 0);
    }
  }
  ASSERT_GT(used_now(h), base);
  AME_ATOMIC(tx) {
    for (unsigned i = 0; i < n; i++) ame_heap_free(tx, blocks[i]);
  }
  ASSERT_EQ(used_now(h), base);
  /* An attempt that aborts allocated nothing. */
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    void *p = ame_heap_alloc(tx, 500, 16, 0);
    ASSERT_NOT_NULL(p);
    if (++attempts == 1) ame_tx_abort(tx);
    ame_heap_free(tx, p);
  }
  ASSERT_EQ(attempts, 2);
  ASSERT_EQ(used_now(h), base);
  /* Blobs: copied in directly, read back by reference. */
  static void *volatile ref;
  char data[3000];
  for (unsigned i = 0; i < sizeof data; i++) data[i] = (char)(i * 7);
  static uintptr_t *volatile cell;
  AME_ATOMIC(tx) {
    cell = ame_heap_alloc(tx, 8, 16, 0);
    ame_store_ptr_tx(tx, (void **)cell,
                     ame_heap_blob_new(tx, data, sizeof data, 17, 5));
  }
  ref = (void *)cell;
  char back[4000];
  volatile size_t got = 0;
  AME_ATOMIC(tx) { got = ame_heap_blob_get(tx, (void *const *)ref, back, sizeof back); }
  ASSERT_GE(got, sizeof data);
  ASSERT_EQ(memcmp(back, data, sizeof data), 0);
  AME_ATOMIC(tx) {
    ame_heap_free(tx, ame_load_ptr_tx(tx, (void **)cell));
    ame_store_ptr_tx(tx, (void **)cell, NULL);
    ame_heap_free(tx, cell);
  }
  ASSERT_EQ(used_now(h), base);
  /* Full: NULL, and the transaction goes on (and commits). */
  static void *volatile held[64];
  volatile int nheld = 0, got_null = 0;
  AME_ATOMIC(tx) {
    nheld = 0;
    got_null = 0;
    for (int i = 0; i < 64; i++) {
      void *p = ame_heap_alloc(tx, 1 << 20, 16, 0);
      if (p == NULL) {
        got_null = 1;
        break;
      }
      held[nheld++] = p;
    }
  }
  ASSERT(got_null);
  ASSERT_GE(nheld, 5);   /* an 8 MiB arena holds several */
  ASSERT_LE(nheld, 8);
  AME_ATOMIC(tx) {
    for (int i = 0; i < nheld; i++) ame_heap_free(tx, held[i]);
  }
  ASSERT_EQ(used_now(h), base);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A slot that keeps taking new spans refills its reserve from the top
** twice as much each time, so it writes the one top word (which every
** other slot's refill conflicts on) a few times, not once per few spans:
** here 1,472 KiB of arena in 5 refills (64, 128, 256, 512, 512 KiB, for
** an 8 MiB heap), where one 64 KiB span at a time took 23. */
TEST_IMPL(heap_reserve_grows) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  uint64_t top = st.top;
  unsigned refills = 0;
  static void *volatile held[46];
  for (unsigned i = 0; i < 46; i++) { /* two blocks a span: 23 spans */
    AME_ATOMIC(tx) { held[i] = ame_heap_alloc(tx, 30000, 16, 0); }
    ASSERT_NOT_NULL(held[i]);
    ame_heap_stats(h, &st);
    if (st.top != top) refills++;
    top = st.top;
  }
  ASSERT_GE(refills, 4);
  ASSERT_LE(refills, 6);
  AME_ATOMIC(tx) {
    for (unsigned i = 0; i < 46; i++) ame_heap_free(tx, held[i]);
  }
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ------------------------------------------------------------------------
** Containers.
*/

static int count_entry(ame_tx_t *tx, void *e, void *arg) {
  (void)tx;
  (void)e;
  (*(size_t *)arg)++;
  return 0;
}

TEST_IMPL(heap_map) {
  ame_heap_config_t cfg = {.size = 32 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  int64_t base = used_now(h);
  static ame_hmap_t *volatile m;
  AME_ATOMIC(tx) { m = ame_hmap_new(tx, 16, 9); }
  const int N = 20000;
  for (int i = 0; i < N; i++) {
    char k[32], v[64];
    int kl = snprintf(k, sizeof k, "key-%d", i);
    int vl = snprintf(v, sizeof v, "value %d %s", i, i % 3 ? "" : "long");
    volatile int rc = -1;
    AME_ATOMIC(tx) { rc = ame_hmap_put(tx, m, k, kl, v, vl, 0); }
    ASSERT_EQ(rc, 0);
  }
  volatile size_t len = 0, seen = 0;
  AME_ATOMIC(tx) {
    len = ame_hmap_len(tx, m);
    seen = 0;
    ame_hmap_foreach(tx, m, count_entry, (void *)&seen);
  }
  ASSERT_EQ(len, (size_t)N);
  ASSERT_EQ(seen, (size_t)N);
  /* Every key reads back its value; a missing key is NULL. */
  for (int i = 0; i < N; i += 7) {
    char k[32], v[64], back[64];
    int kl = snprintf(k, sizeof k, "key-%d", i);
    int vl = snprintf(v, sizeof v, "value %d %s", i, i % 3 ? "" : "long");
    volatile size_t got = 0, vlen = 0, klen = 0;
    AME_ATOMIC(tx) {
      void *e = ame_hmap_find(tx, m, k, kl);
      ASSERT_NOT_NULL(e);
      vlen = ame_hmap_entry_vlen(tx, e);
      klen = ame_hmap_entry_klen(tx, e);
      got = ame_hmap_entry_value(tx, e, back, sizeof back);
    }
    ASSERT_EQ(vlen, (size_t)vl);
    ASSERT_EQ(klen, (size_t)kl);
    ASSERT_EQ(got, (size_t)vl);
    ASSERT_EQ(memcmp(back, v, vl), 0);
  }
  AME_ATOMIC(tx) { ASSERT_NULL(ame_hmap_find(tx, m, "nope", 4)); }
  /* Replace, only-if-absent, only-if-present, delete. */
  volatile int r1 = 0, r2 = 0, r3 = 0, r4 = 0, r5 = 0;
  AME_ATOMIC(tx) {
    r1 = ame_hmap_put(tx, m, "key-5", 5, "new", 3, 0);
    r2 = ame_hmap_put(tx, m, "key-6", 5, "x", 1, AME_HMAP_IF_ABSENT);
    r3 = ame_hmap_put(tx, m, "fresh", 5, "x", 1, AME_HMAP_IF_PRESENT);
    r4 = ame_hmap_del(tx, m, "key-7", 5);
    r5 = ame_hmap_del(tx, m, "key-7", 5);
  }
  ASSERT_EQ(r1, 1);
  ASSERT_EQ(r2, 1);
  ASSERT_EQ(r3, 0);
  ASSERT_EQ(r4, 1);
  ASSERT_EQ(r5, 0);
  char back[16];
  volatile size_t got = 0;
  AME_ATOMIC(tx) {
    got = ame_hmap_entry_value(tx, ame_hmap_find(tx, m, "key-5", 5), back,
                               sizeof back);
    ASSERT_NULL(ame_hmap_find(tx, m, "fresh", 5));
    len = ame_hmap_len(tx, m);
  }
  ASSERT_EQ(got, 3);
  ASSERT_EQ(memcmp(back, "new", 3), 0);
  ASSERT_EQ(len, (size_t)N - 1);
  /* Set found entries' values in place: inline to a blob and back (the
  ** blob freed, which the byte count at the end checks), and a rolled
  ** back set leaves the old value. */
  const char *vals[] = {"a blob of more than eight bytes", "tiny", "",
                        "another value longer than a word"};
  for (int i = 0; i < 4; i++) {
    volatile int rc = -1;
    volatile size_t n = 0;
    AME_ATOMIC(tx) {
      void *e = ame_hmap_find(tx, m, "key-5", 5);
      ASSERT_NOT_NULL(e);
      rc = ame_hmap_entry_set(tx, m, e, vals[i], strlen(vals[i]));
      n = ame_hmap_entry_value(tx, ame_hmap_find(tx, m, "key-5", 5), back,
                               sizeof back);
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(n, strlen(vals[i]) < sizeof back ? strlen(vals[i])
                                               : sizeof back);
    ASSERT_EQ(memcmp(back, vals[i], n), 0);
  }
  static volatile int tries;
  tries = 0;
  AME_ATOMIC(tx) {
    if (tries++ == 0) {
      ame_hmap_entry_set(tx, m, ame_hmap_find(tx, m, "key-5", 5), "x", 1);
      ame_tx_abort(tx);
    }
    got = ame_hmap_entry_value(tx, ame_hmap_find(tx, m, "key-5", 5), back,
                               sizeof back);
  }
  ASSERT_EQ(got, sizeof back);
  ASSERT_EQ(memcmp(back, vals[3], sizeof back), 0);
  AME_ATOMIC(tx) { len = ame_hmap_len(tx, m); }
  ASSERT_EQ(len, (size_t)N - 1);
  /* The generation counts removals only: puts and sets leave it. */
  volatile uint64_t g0 = 0, g1 = 0, g2 = 0, g3 = 0;
  AME_ATOMIC(tx) { g0 = ame_hmap_gen(tx, m); }
  AME_ATOMIC(tx) {
    ame_hmap_put(tx, m, "gen-a", 5, "1", 1, 0);
    ame_hmap_put(tx, m, "key-9", 5, "2", 1, 0);
    g1 = ame_hmap_gen(tx, m);
  }
  AME_ATOMIC(tx) {
    ame_hmap_del(tx, m, "gen-a", 5);
    ame_hmap_del(tx, m, "gen-a", 5); /* absent: no change */
    g2 = ame_hmap_gen(tx, m);
  }
  static ame_hmap_t *volatile m2;
  AME_ATOMIC(tx) {
    m2 = ame_hmap_new(tx, 16, 9);
    ame_hmap_put(tx, m2, "k", 1, "v", 1, 0);
  }
  AME_ATOMIC(tx) {
    ame_hmap_clear(tx, m2);
    g3 = ame_hmap_gen(tx, m2);
    ame_hmap_destroy(tx, m2);
  }
  ASSERT_EQ(g1, g0);
  ASSERT_EQ(g2, g0 + 1);
  ASSERT_EQ(g3, 1);
  /* find_or_add: a present key's entry, its value kept; an absent key
  ** added once with the value given, then found; one added by an attempt
  ** that is rolled back is not there. */
  static void *volatile fe[4];
  volatile int added[4] = {-1, -1, -1, -1};
  tries = 0;
  AME_ATOMIC(tx) {
    fe[0] = ame_hmap_find_or_add(tx, m, "key-9", 5, "zz", 2, (int *)&added[0]);
    fe[1] = ame_hmap_find_or_add(tx, m, "both", 4, "v1", 2, (int *)&added[1]);
    fe[2] = ame_hmap_find_or_add(tx, m, "both", 4, "v2", 2, (int *)&added[2]);
    if (tries++ == 0) {
      ame_hmap_find_or_add(tx, m, "rolled", 6, "r", 1, (int *)&added[3]);
      ame_tx_abort(tx);
    }
  }
  ASSERT_EQ(added[0], 0);
  ASSERT_EQ(added[1], 1);
  ASSERT_EQ(added[2], 0);
  ASSERT_EQ(added[3], 1);
  ASSERT(fe[1] == fe[2]);
  AME_ATOMIC(tx) {
    ASSERT(ame_hmap_find(tx, m, "key-9", 5) == fe[0]);
    got = ame_hmap_entry_value(tx, fe[0], back, sizeof back);
    ASSERT_EQ(got, 1);
    ASSERT_EQ(memcmp(back, "2", 1), 0);
    ASSERT(ame_hmap_find(tx, m, "both", 4) == fe[1]);
    got = ame_hmap_entry_value(tx, fe[1], back, sizeof back);
    ASSERT_EQ(got, 2);
    ASSERT_EQ(memcmp(back, "v1", 2), 0);
    ASSERT_NULL(ame_hmap_find(tx, m, "rolled", 6));
    len = ame_hmap_len(tx, m);
  }
  ASSERT_EQ(len, (size_t)N);  /* N - 1, and "both" */
  AME_ATOMIC(tx) { ame_hmap_del(tx, m, "both", 4); }
  /* Delete half, in transactions of 100. */
  for (int i = 0; i < N; i += 200) {
    AME_ATOMIC(tx) {
      for (int j = i; j < i + 200; j += 2) {
        char k[32];
        int kl = snprintf(k, sizeof k, "key-%d", j);
        ame_hmap_del(tx, m, k, kl);
      }
    }
  }
  AME_ATOMIC(tx) { len = ame_hmap_len(tx, m); }
  ASSERT_EQ(len, (size_t)N / 2 - 1);  /* the odd keys but key-7 */
  /* Destroying, then collecting, gives back every byte. */
  AME_ATOMIC(tx) { ame_hmap_destroy(tx, m); }
  ASSERT_GT(used_now(h), base);
  while (ame_heap_collect(h, 10) == 1) {
  }
  ASSERT_EQ(ame_heap_collect(h, 10), 0);
  ASSERT_EQ(used_now(h), base);
  ame_heap_exit(h);
  ame_heap_close(h);
}

TEST_IMPL(heap_queue_counter_log) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  int64_t base = used_now(h);
  static ame_hqueue_t *volatile q;
  static ame_hcounter_t *volatile c;
  static ame_hlog_t *volatile l;
  AME_ATOMIC(tx) {
    q = ame_hqueue_new(tx, 16, 0);
    c = ame_hcounter_new(tx, 16, 0);
    l = ame_hlog_new(tx, 16, 0);
  }
  for (int i = 0; i < 100; i++) {
    char v[16];
    int n = snprintf(v, sizeof v, "item %d", i);
    AME_ATOMIC(tx) {
      ASSERT_EQ(ame_hqueue_push(tx, q, v, n), 0);
      ame_hcounter_add(tx, c, i);
      ASSERT_EQ(ame_hlog_append(tx, l, v, n), i + 1);
    }
  }
  volatile size_t qlen = 0;
  volatile int64_t sum = 0;
  AME_ATOMIC(tx) {
    qlen = ame_hqueue_len(tx, q);
    sum = ame_hcounter_get(tx, c);
  }
  ASSERT_EQ(qlen, 100);
  ASSERT_EQ(sum, 99 * 100 / 2);
  /* FIFO order. */
  for (int i = 0; i < 100; i++) {
    char want[16], got[16];
    int n = snprintf(want, sizeof want, "item %d", i);
    volatile size_t len = 0, copied = 0;
    AME_ATOMIC(tx) {
      void *it = ame_hqueue_peek(tx, q, (size_t *)&len);
      ASSERT_NOT_NULL(it);
      copied = ame_hqueue_item_value(tx, it, got, sizeof got);
      ame_hqueue_drop(tx, q);
    }
    ASSERT_EQ(len, (size_t)n);
    ASSERT_EQ(copied, (size_t)n);
    ASSERT_EQ(memcmp(got, want, n), 0);
  }
  AME_ATOMIC(tx) { ASSERT_NULL(ame_hqueue_peek(tx, q, NULL)); }
  /* The log: records after a number, in order; trimming. */
  volatile uint64_t first = 0, count = 0;
  AME_ATOMIC(tx) {
    count = 0;
    void *r = ame_hlog_first(tx, l, 90);
    first = r ? ame_hlog_record_seq(tx, r) : 0;
    for (; r; r = ame_hlog_next(tx, r)) count++;
  }
  ASSERT_EQ(first, 91);
  ASSERT_EQ(count, 10);
  AME_ATOMIC(tx) { ASSERT_EQ(ame_hlog_trim(tx, l, 50), 50); }
  AME_ATOMIC(tx) {
    first = ame_hlog_record_seq(tx, ame_hlog_first(tx, l, 0));
    ame_hcounter_set(tx, c, 5);
    sum = ame_hcounter_get(tx, c);
  }
  ASSERT_EQ(first, 51);
  ASSERT_EQ(sum, 5);
  AME_ATOMIC(tx) {
    ame_hqueue_destroy(tx, q);
    ame_hlog_destroy(tx, l);
    ame_heap_free(tx, c);
  }
  while (ame_heap_collect(h, 10) == 1) {
  }
  ASSERT_EQ(used_now(h), base);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ------------------------------------------------------------------------
** Several processes.
*/

struct procs {
  uintptr_t *word;       /* incremented by plain transactions */
  ame_hcounter_t *counter;
  ame_hmap_t *map;       /* each process its own keys */
  int id, rounds;
};

static int increment_main(ame_heap_t *h, void *arg) {
  struct procs *p = arg;
  ame_tx_t *tx = ame_heap_enter(h);
  if (tx == NULL) return 2;
  for (int i = 0; i < p->rounds; i++) {
    char k[32];
    int kl = snprintf(k, sizeof k, "p%d-%d", p->id, i % 64);
    AME_ATOMIC(tx) {
      ame_store_word_tx(tx, p->word, ame_load_word_tx(tx, p->word) + 1);
      ame_hcounter_add(tx, p->counter, 2);
      ame_hmap_put(tx, p->map, k, kl, &i, sizeof i, 0);
    }
  }
  ame_heap_exit(h);
  return 0;
}

TEST_IMPL(heap_processes) {
  ame_heap_config_t cfg = {.size = 16 << 20, .max_slots = 16};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static struct procs p;
  AME_ATOMIC(tx) {
    p.word = ame_heap_alloc(tx, 8, 16, 0);
    ame_store_word_tx(tx, p.word, 0);
    p.counter = ame_hcounter_new(tx, 16, 0);
    p.map = ame_hmap_new(tx, 16, 0);
  }
  ame_heap_exit(h);
  p.rounds = 20000 / (int)slow_factor();
  enum { NPROC = 4 };
  pid_t pids[NPROC];
  fflush(NULL);
  for (int i = 0; i < NPROC; i++) {
    p.id = i;
    pids[i] = fork();
    ASSERT_GE(pids[i], 0);
    if (pids[i] == 0) {
      ame_heap_after_fork_child(h);
      _exit(increment_main(h, &p));
    }
  }
  for (int i = 0; i < NPROC; i++) {
    int st = 0;
    ASSERT_EQ(waitpid(pids[i], &st, 0), pids[i]);
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  tx = ame_heap_enter(h);
  volatile uintptr_t w = 0;
  volatile int64_t c = 0;
  volatile size_t n = 0;
  AME_ATOMIC(tx) {
    w = ame_load_word_tx(tx, p.word);
    c = ame_hcounter_get(tx, p.counter);
    n = ame_hmap_len(tx, p.map);
  }
  ASSERT_EQ(w, (uintptr_t)NPROC * p.rounds);
  ASSERT_EQ(c, (int64_t)2 * NPROC * p.rounds);
  ASSERT_EQ(n, (size_t)NPROC * 64);
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  printf("heap_processes: %llu commits, %llu aborts\n",
         (unsigned long long)st.tx.commits, (unsigned long long)st.tx.aborts);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ame_retry in one process wakes when another commits. */
static int retry_waiter(ame_heap_t *h, void *arg) {
  uintptr_t *flag = arg;
  ame_tx_t *tx = ame_heap_enter(h);
  volatile uintptr_t v = 0;
  AME_ATOMIC(tx) {
    v = ame_load_word_tx(tx, flag);
    if (v == 0) ame_retry(tx);
  }
  ame_heap_exit(h);
  return v == 5 ? 0 : 1;
}

TEST_IMPL(heap_retry_processes) {
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static uintptr_t *volatile flag;
  AME_ATOMIC(tx) {
    flag = ame_heap_alloc(tx, 8, 16, 0);
    ame_store_word_tx(tx, flag, 0);
  }
  fflush(NULL);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ame_heap_after_fork_child(h);
    _exit(retry_waiter(h, flag));
  }
  sleep_ms(100);  /* let it wait (correct either way) */
  tx_set(tx, flag, 5);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A second copy of the library in the same process (the `ame` command's
** own beside Python's ame._ame) adopts the heap the first one created and
** sees the same state. */
TEST_IMPL(heap_adopt) {
  const char *lib = getenv("AME_TEST_LIBAME");
  if (lib == NULL || access(lib, R_OK) != 0)
    TEST_SKIP("AME_TEST_LIBAME (the shared libame) not given");
  void *dl = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NOT_NULL(dl);
  int (*adopt)(void *, ame_heap_t **) = (int (*)(void *, ame_heap_t **))
      dlsym(dl, "ame_heap_adopt");
  ame_tx_t *(*enter)(ame_heap_t *) = (ame_tx_t * (*)(ame_heap_t *))
      dlsym(dl, "ame_heap_enter");
  void (*leave)(ame_heap_t *) = (void (*)(ame_heap_t *))dlsym(dl,
                                                             "ame_heap_exit");
  int (*root_get)(ame_tx_t *, const void *, size_t, unsigned *, void **) =
      (int (*)(ame_tx_t *, const void *, size_t, unsigned *, void **))dlsym(
          dl, "ame_heap_root_get");
  ASSERT(adopt && enter && leave && root_get);
  ASSERT_PTR_NE((void *)adopt, (void *)ame_heap_adopt); /* another copy */
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static uintptr_t *volatile w;
  AME_ATOMIC(tx) {
    w = ame_heap_alloc(tx, 8, 16, 0);
    ame_store_word_tx(tx, w, 1234);
    ame_heap_root_set(tx, "w", 1, 3, w);
  }
  ame_heap_exit(h);
  ame_heap_t *h2 = NULL;
  ASSERT_EQ(adopt((void *)0x1000, &h2), -ENOENT);
  ASSERT_EQ(adopt(ame_heap_base(h), &h2), 0);
  ame_tx_t *tx2 = enter(h2);
  ASSERT_NOT_NULL(tx2);
  /* The other copy's transactions, through its own functions. */
  uintptr_t (*load)(ame_tx_t *, const uintptr_t *) =
      (uintptr_t(*)(ame_tx_t *, const uintptr_t *))dlsym(dl,
                                                        "ame_load_word_tx");
  void (*begin)(ame_tx_t *, jmp_buf *, const char *) =
      (void (*)(ame_tx_t *, jmp_buf *, const char *))dlsym(dl, "ame_tx_begin");
  void (*commit)(ame_tx_t *) = (void (*)(ame_tx_t *))dlsym(dl, "ame_tx_commit");
  ASSERT(load && begin && commit);
  jmp_buf env;
  volatile uintptr_t v = 0;
  volatile unsigned type = 0;
  if (setjmp(env) == 0) {
    begin(tx2, &env, "adopt");
    void *p = NULL;
    unsigned t = 0;
    ASSERT_EQ(root_get(tx2, "w", 1, &t, &p), 1);
    type = t;
    v = load(tx2, p);
    commit(tx2);
  } else {
    AME_TEST_FAIL_("a lone transaction aborted");
  }
  ASSERT_EQ(type, 3);
  ASSERT_EQ(v, 1234);
  leave(h2);
  /* The other copy's handle (closing an adopted heap leaves it mapped). */
  void (*close2)(ame_heap_t *) = (void (*)(ame_heap_t *))dlsym(dl,
                                                              "ame_heap_close");
  ASSERT(close2);
  close2(h2);
  ame_heap_close(h);
  dlclose(dl);
}

/* A thread that ends inside a transaction, holding a lock, without
** leaving the heap: its process lives on, but the slot is the thread's,
** so a thread that meets the lock finds it gone and recovers the slot. */
static uintptr_t *volatile orphan_word;

static void *die_inside(void *arg) {
  ame_heap_t *h = arg;
  ame_tx_t *tx = ame_heap_enter(h);
  AME_ATOMIC(tx) {
    ame_store_word_tx(tx, orphan_word, 99);
    pthread_exit(NULL); /* with the lock held and the attempt open */
  }
  return NULL;
}

TEST_IMPL(heap_thread_dies) {
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  AME_ATOMIC(tx) {
    orphan_word = ame_heap_alloc(tx, 8, 16, 0);
    ame_store_word_tx(tx, orphan_word, 1);
  }
  pthread_t t;
  thread_start(&t, die_inside, h);
  thread_join(t);
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  ASSERT_EQ(st.slots_live, 2);  /* the dead thread's, still taken */
  watchdog_start(20, "a write to a word a dead thread locked");
  tx_set(tx, orphan_word, 5);
  ASSERT_EQ(tx_get(tx, orphan_word), 5);
  ame_heap_stats(h, &st);
  ASSERT_EQ(st.recoveries, 1);
  ASSERT_EQ(st.slots_live, 1);
  char msg[128];
  ASSERT_EQ(ame_heap_verify(h, msg, sizeof msg), 0);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A commit killed once decided, before its write-back: recovery writes
** back every byte it buffered, those of a byte-masked store too (the
** engine's own barrier for the GCC TM ABI's byte and unaligned stores). */
static uintptr_t *bytes_word;

static void die_when_decided(const char *phase) {
  if (strcmp(phase, "validated") == 0) raise(SIGKILL);
}

TEST_IMPL(heap_recover_bytes) {
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  AME_ATOMIC(tx) {
    bytes_word = ame_heap_alloc(tx, 16, 16, 0);
    ame_store_word_tx(tx, &bytes_word[0], 0x1111111111111111ull);
    ame_store_word_tx(tx, &bytes_word[1], 1);
  }
  fflush(NULL);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ame_heap_after_fork_child(h);
    ame_heap_set_phase_hook(die_when_decided);
    ame_tx_t *c = ame_heap_enter(h);
    if (c == NULL) _exit(5);
    AME_ATOMIC(c) {
      ame__store_masked(c, &bytes_word[0], 0xab00, 0xff00); /* byte 1 */
      ame__store_masked(c, &bytes_word[0], 0xcd00000000000000ull,
                        0xff00000000000000ull);             /* byte 7 */
      ame_store_word_tx(c, &bytes_word[1], 7);
    }
    _exit(6); /* not reached: the hook kills it */
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  ASSERT_EQ(ame_heap_recover_pid(h, pid), 1);
  ame_heap_stats_t hs;
  ame_heap_stats(h, &hs);
  ASSERT_EQ(hs.recovered_commits, 1);
  ASSERT_EQ(tx_get(tx, &bytes_word[1]), 7);
  ASSERT_EQ(tx_get(tx, &bytes_word[0]), 0xcd1111111111ab11ull);
  char msg[128];
  ASSERT_EQ(ame_heap_verify(h, msg, sizeof msg), 0);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* Taking a slot while another participant checks the heap: a slot is
** never judged dead while its live owner is taking it (the check saw it
** LIVE before its owner's identity was written and recovered it, which
** then let a second thread take the same slot). */
struct churn {
  ame_heap_t *h;
  atomic_int stop;
  atomic_long rounds;
};

static void *churn_enter(void *arg) {
  struct churn *c = arg;
  while (!atomic_load(&c->stop)) {
    ame_tx_t *tx = ame_heap_enter(c->h);
    ASSERT_NOT_NULL(tx);
    ame_heap_exit(c->h);
    atomic_fetch_add(&c->rounds, 1);
  }
  return NULL;
}

static void *churn_check(void *arg) {
  struct churn *c = arg;
  while (!atomic_load(&c->stop)) ame_heap_check(c->h);
  return NULL;
}

TEST_IMPL(heap_enter_while_checked) {
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  struct churn c = {.stop = 0, .rounds = 0};
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &c.h), 0);
  pthread_t t[3];
  thread_start(&t[0], churn_enter, &c);
  thread_start(&t[1], churn_enter, &c);
  thread_start(&t[2], churn_check, &c);
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += 2;
  for (;;) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > until.tv_sec ||
        (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
      break;
    ame_heap_stats_t st;
    ame_heap_stats(c.h, &st);
    if (st.recoveries != 0) break;
    usleep(1000);
  }
  atomic_store(&c.stop, 1);
  for (int i = 0; i < 3; i++) thread_join(t[i]);
  ame_heap_stats_t st;
  ame_heap_stats(c.h, &st);
  ASSERT_GT(atomic_load(&c.rounds), 1000);
  ASSERT_EQ(st.recoveries, 0);   /* nobody died */
  ASSERT_EQ(st.slots_live, 0);
  char msg[128];
  ASSERT_EQ(ame_heap_verify(c.h, msg, sizeof msg), 0);
  ame_heap_close(c.h);
}

/* ------------------------------------------------------------------------
** A binding's transaction (ame_tx_begin) that outgrows its write log
** after the contention manager made it irrevocable still aborts with
** AME_ABORT_CAPACITY, rolled back, rather than ending the process.  The
** conflicts that escalate it are forced as in tx_cancel_escalated.
*/
struct cap_esc {
  ame_heap_t *h;
  uintptr_t *w, *w2;     /* heap words the bumper changes */
  atomic_int req, ack, stop;
};

static void *cap_bumper(void *arg) {
  struct cap_esc *c = arg;
  ame_tx_t *tx = ame_heap_enter(c->h);
  ASSERT_NOT_NULL(tx);
  while (!atomic_load(&c->stop)) {
    int r = atomic_load(&c->req);
    if (r != atomic_load(&c->ack)) {
      AME_ATOMIC(tx) {
        ame_store_word_tx(tx, c->w, ame_load_word_tx(tx, c->w) + 1);
        ame_store_word_tx(tx, c->w2, ame_load_word_tx(tx, c->w2) + 1);
      }
      atomic_store(&c->ack, r);
    } else {
      sched_yield();
    }
  }
  ame_heap_exit(c->h);
  return NULL;
}

TEST_IMPL(heap_capacity_escalated) {
  ame_heap_config_t cfg = {.size = 16 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  enum { NWORDS = 300000 };  /* more than a slot's write log holds */
  static uintptr_t *volatile big;
  static struct cap_esc c;
  c.h = h;
  AME_ATOMIC(tx) {
    big = ame_heap_alloc(tx, NWORDS * sizeof(uintptr_t), 16, 0);
    ASSERT_NOT_NULL(big);
    c.w = ame_heap_alloc(tx, 64, 16, 0);
    c.w2 = ame_heap_alloc(tx, 64, 16, 0);
    ame_store_word_tx(tx, c.w, 0);
    ame_store_word_tx(tx, c.w2, 0);
  }
  pthread_t tb;
  thread_start(&tb, cap_bumper, &c);
  static jmp_buf env;
  static volatile int attempts, irrevocable;
  attempts = 0;
  irrevocable = 0;
  if (setjmp(env) != 0) {
    uintptr_t addr = 1;
    ame_abort_cause_t cause = ame_tx_last_cause(tx, &addr);
    if (cause != AME_ABORT_CAPACITY) {
      ASSERT_LT(attempts, 40);
      goto again;
    }
    ASSERT(irrevocable);
    ASSERT_EQ(ame_tx_depth(tx), 0);
    ame_tx_cancel(tx);
    goto done;
  }
again:
  attempts++;
  ame_tx_begin(tx, &env, "heap_capacity_escalated");
  (void)ame_load_word_tx(tx, c.w);
  if (!ame_tx_is_irrevocable(tx)) {
    int r = atomic_fetch_add(&c.req, 1) + 1;
    ASSERT_WAIT(atomic_load(&c.ack) == r, 5000);
    (void)ame_load_word_tx(tx, c.w2); /* aborts: w changed */
    AME_TEST_FAIL_("the read of w2 did not abort");
  }
  irrevocable = 1;
  for (unsigned i = 0; i < NWORDS; i++) ame_store_word_tx(tx, &big[i], 1);
  AME_TEST_FAIL_("the write log did not fill");
done:
  atomic_store(&c.stop, 1);
  thread_join(tb);
  /* Nothing of it was written; the next transaction runs normally. */
  volatile uintptr_t sum = 0;
  AME_ATOMIC(tx) {
    sum = 0;
    for (unsigned i = 0; i < NWORDS; i += 997) sum += ame_load_word_tx(tx, &big[i]);
    ame_store_word_tx(tx, &big[0], 5);
  }
  ASSERT_EQ(sum, 0);
  ASSERT_EQ(tx_get(tx, &big[0]), 5);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ------------------------------------------------------------------------
** A binding's transaction whose write log fills while ame_tx_irrevocable()
** locks what it read (a lock without a write takes a log entry) aborts
** with AME_ABORT_CAPACITY having handed on the irrevocability ticket it
** took for that: its abort handlers run without it, and the next
** transaction to want it gets it.
*/
static void irr_cap_handler(void *arg) { (*(volatile int *)arg)++; }

TEST_IMPL(heap_irrevocable_capacity) {
  enum { NREAD = 300000 }; /* granules read: more than a write log holds */
  ame_heap_config_t cfg = {.size = 64 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static uintptr_t *volatile big, *volatile w;
  AME_ATOMIC(tx) {
    big = ame_heap_alloc(tx, (size_t)NREAD * 64, 64, 0);
    w = ame_heap_alloc(tx, 64, 16, 0);
    ASSERT_NOT_NULL(big);
    ASSERT_NOT_NULL(w);
    ame_store_word_tx(tx, w, 0);
  }
  static jmp_buf env;
  static volatile int handled, attempts;
  handled = attempts = 0;
  if (setjmp(env) != 0) {
    ASSERT_EQ(ame_tx_last_cause(tx, NULL), AME_ABORT_CAPACITY);
    ASSERT_EQ(handled, 1);
    ame_tx_cancel(tx);
    goto done;
  }
  ASSERT_EQ(attempts++, 0);
  ame_tx_begin(tx, &env, "heap_irrevocable_capacity");
  ASSERT_EQ(ame_tx_on_abort(tx, irr_cap_handler, (void *)&handled), 0);
  ame_store_word_tx(tx, w, 1); /* holds a lock: the ticket's queue */
  for (size_t i = 0; i < NREAD; i++) (void)ame_load_word_tx(tx, &big[8 * i]);
  ame_tx_irrevocable(tx);
  AME_TEST_FAIL_("the write log did not fill");
done:
  /* Nothing written; the ticket is free: an irrevocable transaction runs. */
  AME_ATOMIC(tx) {
    ame_tx_irrevocable(tx);
    ame_store_word_tx(tx, w, ame_load_word_tx(tx, w) + 2);
  }
  ASSERT_EQ(tx_get(tx, w), 2);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ------------------------------------------------------------------------
** The slots' write logs are most of a heap's mapping (16 MiB a slot): they
** take memory only where transactions wrote, not at creation.
*/
static long rss_shmem_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  ASSERT_NOT_NULL(f);
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "RssShmem: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

TEST_IMPL(heap_logs_lazy) {
  long before = rss_shmem_kb();
  ASSERT_GE(before, 0);
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, NULL, &h), 0);  /* 128 slots */
  ASSERT_GT(ame_heap_mapped(h), (size_t)2 << 30);
  ASSERT_LT(rss_shmem_kb() - before, 64 * 1024);
  /* Transactions longer than a chunk of the log, in successive owners of
  ** the same slot (the chunks linked by the first serve the second). */
  static uintptr_t *volatile words;
  ame_tx_t *tx = ame_heap_enter(h);
  AME_ATOMIC(tx) { words = ame_heap_alloc(tx, 5000 * sizeof(uintptr_t), 16, 0); }
  for (int round = 1; round <= 3; round++) {
    AME_ATOMIC(tx) {
      for (unsigned i = 0; i < 5000; i++) ame_store_word_tx(tx, &words[i], round);
    }
    ame_heap_exit(h);
    tx = ame_heap_enter(h);
  }
  volatile uintptr_t sum = 0;
  AME_ATOMIC(tx) {
    sum = 0;
    for (unsigned i = 0; i < 5000; i++) sum += ame_load_word_tx(tx, &words[i]);
  }
  ASSERT_EQ(sum, 3 * 5000);
  ASSERT_LT(rss_shmem_kb() - before, 64 * 1024);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ------------------------------------------------------------------------
** A blob freed by an attempt is not handed out again by that attempt:
** blobs are filled outside the write log, so if the attempt aborts (and
** its free is undone) the committed blob would be overwritten.  Small and
** large blobs; then a later attempt does reuse them.
*/
TEST_IMPL(heap_blob_reuse_abort) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static char big[100000], big2[100000];
  memset(big, 'b', sizeof big);
  memset(big2, 'X', sizeof big2);
  static ame_hmap_t *volatile m;
  AME_ATOMIC(tx) {
    m = ame_hmap_new(tx, 16, 0);
    ASSERT_EQ(ame_hmap_put(tx, m, "k", 1, "before", 6, 0), 0);
    ASSERT_EQ(ame_hmap_put(tx, m, "big", 3, big, sizeof big, 0), 0);
  }
  int64_t used = used_now(h);
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    if (++attempts == 1) {
      /* Frees the old blobs, then allocates blobs of their sizes. */
      ame_hmap_put(tx, m, "k", 1, "after!", 6, 0);
      ame_hmap_put(tx, m, "n", 1, "XXXXXX", 6, 0);
      ame_hmap_put(tx, m, "big", 3, big2, sizeof big2, 0);
      ame_hmap_put(tx, m, "big2", 4, big2, sizeof big2, 0);
      ame_tx_abort(tx);
    }
  }
  ASSERT_EQ(attempts, 2);
  static char back[100000];
  volatile size_t n1 = 0, n2 = 0;
  AME_ATOMIC(tx) {
    n1 = ame_hmap_entry_value(tx, ame_hmap_find(tx, m, "k", 1), back, 16);
    ASSERT_EQ(memcmp(back, "before", 6), 0);
    n2 = ame_hmap_entry_value(tx, ame_hmap_find(tx, m, "big", 3), back,
                              sizeof back);
  }
  ASSERT_EQ(n1, 6);
  ASSERT_EQ(n2, sizeof big);
  ASSERT_EQ(memcmp(back, big, sizeof big), 0);
  ASSERT_EQ(used_now(h), used);
  /* Committed frees are reused by later transactions: replacing the same
  ** values many times does not grow the heap. */
  for (int i = 0; i < 200; i++) {
    AME_ATOMIC(tx) {
      ame_hmap_put(tx, m, "k", 1, i % 2 ? "before" : "after!", 6, 0);
      ame_hmap_put(tx, m, "big", 3, i % 2 ? big : big2, sizeof big, 0);
    }
  }
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  ASSERT_LT(st.top, (uint64_t)2 << 20);
  ASSERT_EQ(used_now(h), used);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* ------------------------------------------------------------------------
** Reuse: memory freed is found again by every later allocation, whatever
** its size class or pool and whoever freed it.
*/

/* Allocate blocks of `size` (blobs if blob) until `bytes` are taken, a few
** hundred per transaction; put them in p and return how many (a NULL from
** the allocator fails the test). */
static size_t fill(ame_tx_t *tx, void **p, size_t size, int blob,
                   size_t bytes) {
  static char data[200000];
  size_t n = 0;
  while (n * (size + 16) < bytes) {
    volatile size_t k = n;
    volatile int full = 0;
    AME_ATOMIC(tx) {
      k = n;
      full = 0;
      for (int j = 0; j < 256 && k * (size + 16) < bytes; j++) {
        void *b = blob ? ame_heap_blob_new(tx, data, size, 7, k)
                       : ame_heap_alloc(tx, size, 7, k);
        if (b == NULL) {
          full = 1;
          break;
        }
        p[k++] = b;
      }
    }
    if (full) {
      ame_heap_stats_t st;
      ame_heap_stats(ame_tx_heap(tx), &st);
      AME_TEST_FAIL_("heap full after %zu blocks of %zu bytes (%s): used "
                     "%lld of %llu, carved %llu",
                     (size_t)k, size, blob ? "blob" : "transactional",
                     (long long)st.used, (unsigned long long)st.arena,
                     (unsigned long long)st.top);
    }
    n = k;
  }
  return n;
}

static void free_all(ame_tx_t *tx, void **p, size_t n) {
  for (size_t i = 0; i < n; i += 256) {
    AME_ATOMIC(tx) {
      for (size_t j = i; j < n && j < i + 256; j++) ame_heap_free(tx, p[j]);
    }
  }
}

/* Rounds that each fill three quarters of the arena with blocks of one
** kind (a size class of either pool, or large blocks), then free them:
** every round fits, and after ten the arena has been handed out about
** eight times over. */
TEST_IMPL(heap_reuse_across_classes) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  int64_t base = used_now(h);
  size_t bytes = st.arena / 4 * 3;
  void **p = malloc(bytes / 32 * sizeof *p);
  ASSERT_NOT_NULL(p);
  static const struct { size_t size; int blob; } kinds[] = {
      {24, 0}, {24, 1}, {3000, 0}, {100, 1}, {100000, 0},
      {20000, 1}, {40, 0}, {150000, 1}, {1000, 0}, {16, 1}};
  for (size_t r = 0; r < sizeof kinds / sizeof kinds[0]; r++) {
    size_t n = fill(tx, p, kinds[r].size, kinds[r].blob, bytes);
    free_all(tx, p, n);
  }
  ASSERT_EQ(used_now(h), base);
  free(p);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* Another participant's frees. */
struct frees {
  ame_heap_t *h;
  void **p;
  size_t n;
};

static void *free_in_one(void *arg) {
  struct frees *f = arg;
  ame_tx_t *tx = ame_heap_enter(f->h);
  ASSERT_NOT_NULL(tx);
  AME_ATOMIC(tx) {
    for (size_t i = 0; i < f->n; i++) ame_heap_free(tx, f->p[i]);
  }
  ame_heap_exit(f->h);
  return NULL;
}

/* The heap filled with small blobs, another participant frees 2,000 of
** them in one transaction; then 70,000 attempts (each rolled back, so each
** finds the same free blocks) allocate one: every attempt gets one,
** whatever its number (blocks a running attempt freed itself are the only
** ones it may not take, and these are not). */
TEST_IMPL(heap_reuse_other_slot) {
  ame_heap_config_t cfg = {.size = 4 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  size_t cap = st.arena / 40;
  void **p = malloc(cap * sizeof *p);
  ASSERT_NOT_NULL(p);
  /* Fill: blobs of 24 bytes until the allocator says no. */
  size_t n = 0;
  for (volatile int full = 0; !full;) {
    volatile size_t k = n;
    AME_ATOMIC(tx) {
      k = n;
      for (int j = 0; j < 256; j++) {
        void *b = ame_heap_blob_new(tx, "twenty-four bytes, fixed", 24, 7, 0);
        if (b == NULL) {
          full = 1;
          break;
        }
        ASSERT_LT(k, cap);
        p[k++] = b;
      }
    }
    n = k;
  }
  ASSERT_GT(n, 2000);
  struct frees f = {h, p + n - 2000, 2000};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, free_in_one, &f), 0);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  static void *volatile got;
  AME_ATOMIC(tx) {
    got = ame_heap_blob_new(tx, "twenty-four bytes, fixed", 24, 7, 0);
  }
  ASSERT_NOT_NULL(got);
  volatile unsigned attempts = 0, nulls = 0;
  AME_ATOMIC(tx) {
    if (ame_heap_blob_new(tx, "twenty-four bytes, fixed", 24, 7, 0) == NULL)
      nulls++;
    if (++attempts < 70000) ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 70000);
  ASSERT_EQ(nulls, 0);
  free(p);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A participant that allocated and freed a little, then left (once all
** of them had done so: each holds a slot of its own). */
static pthread_barrier_t leave_together;

static void *touch_and_leave(void *arg) {
  ame_heap_t *h = arg;
  ame_tx_t *tx = ame_heap_enter(h);
  ASSERT_NOT_NULL(tx);
  static __thread void *volatile b;
  AME_ATOMIC(tx) { b = ame_heap_alloc(tx, 100, 7, 0); }
  ASSERT_NOT_NULL(b);
  AME_ATOMIC(tx) { ame_heap_free(tx, b); }
  AME_ATOMIC(tx) { b = ame_heap_blob_new(tx, "x", 1, 7, 0); }
  ASSERT_NOT_NULL(b);
  AME_ATOMIC(tx) { ame_heap_free(tx, b); }
  pthread_barrier_wait(&leave_together);
  ame_heap_exit(h);
  return NULL;
}

/* What slots hold without using it (the arena they reserved, the spans
** they allocated from, frees they deferred) serves others: 31 threads
** each take a slot, allocate and free a block of each pool, and leave;
** then 1 MiB blocks fill the arena to within 1 MiB of its end. */
TEST_IMPL(heap_reuse_slot_leftovers) {
  ame_heap_config_t cfg = {.size = 64 << 20, .max_slots = 32};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  pthread_t t[31];
  ASSERT_EQ(pthread_barrier_init(&leave_together, NULL, 31), 0);
  for (int i = 0; i < 31; i++)
    ASSERT_EQ(pthread_create(&t[i], NULL, touch_and_leave, h), 0);
  for (int i = 0; i < 31; i++) ASSERT_EQ(pthread_join(t[i], NULL), 0);
  pthread_barrier_destroy(&leave_together);
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  uint64_t carved = st.top;
  ASSERT_GE(carved, (uint64_t)31 << 19); /* each took a reserve */
  static void *volatile got;
  size_t n = 0;
  for (;;) {
    AME_ATOMIC(tx) { got = ame_heap_alloc(tx, 1 << 20, 7, 0); }
    if (got == NULL) break;
    n++;
  }
  ame_heap_stats(h, &st);
  printf("%zu blocks of 1 MiB; used %lld of %llu (%llu carved before)\n", n,
         (long long)st.used, (unsigned long long)st.arena,
         (unsigned long long)carved);
  ASSERT_GE((uint64_t)st.used + (1 << 20) + 4096 * 2, st.arena);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A transaction still reading a block that another frees, whose memory an
** aborted attempt then fills with a blob. */
struct stale {
  ame_heap_t *h;
  uintptr_t **root;             /* -> the block, or NULL once freed */
  atomic_int step;              /* 1: read once; 2: memory rewritten */
  uintptr_t first, second;      /* what attempt 1 read, twice */
  int attempts;
};

static void *read_stale(void *arg) {
  struct stale *s = arg;
  ame_tx_t *tx = ame_heap_enter(s->h);
  ASSERT_NOT_NULL(tx);
  AME_ATOMIC(tx) {
    int attempt = ++s->attempts;
    uintptr_t *p = ame_load_ptr_tx(tx, (void **)s->root);
    if (p) {
      uintptr_t v = ame_load_word_tx(tx, &p[100]);
      if (attempt == 1) {
        s->first = v;
        atomic_store(&s->step, 1);
        while (atomic_load(&s->step) != 2) sched_yield();
      }
      /* Memory a blob overwrote must not read as consistent. */
      v = ame_load_word_tx(tx, &p[100]);
      if (attempt == 1) s->second = v;
    }
  }
  ame_heap_exit(s->h);
  return NULL;
}

/* A large transactional block is freed while another transaction reads
** it; an attempt that takes its memory for a blob (so writes it outside
** the STM) aborts.  The reader must not go on with what the blob wrote:
** its next read there aborts it (the claimed memory took a new version,
** though the attempt that claimed it aborted), and its next attempt finds
** the block gone. */
TEST_IMPL(heap_blob_over_freed_block) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  ame_heap_t *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, &h), 0);
  ame_tx_t *tx = ame_heap_enter(h);
  static uintptr_t **volatile root;
  static uintptr_t *volatile block;
  AME_ATOMIC(tx) {
    root = ame_heap_alloc(tx, sizeof *root, 7, 0);
    uintptr_t *p = block = ame_heap_alloc(tx, 100000, 7, 0);
    for (int i = 0; i < 200; i++) ame_store_word_tx(tx, &p[i], 0x1111);
    ame_store_ptr_tx(tx, (void **)root, p);
  }
  /* The rest of the arena taken: the blob below can only go where the
  ** block was. */
  ame_heap_stats_t st;
  ame_heap_stats(h, &st);
  AME_ATOMIC(tx) {
    ASSERT_NOT_NULL(ame_heap_alloc(tx, st.arena - st.top - 16, 7, 0));
  }
  static struct stale s;
  s.h = h;
  s.root = root;
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, read_stale, &s), 0);
  while (atomic_load(&s.step) != 1) sched_yield();
  AME_ATOMIC(tx) {
    uintptr_t *p = ame_load_ptr_tx(tx, (void **)root);
    ame_store_ptr_tx(tx, (void **)root, NULL);
    ame_heap_free(tx, p);
  }
  static char junk[100000];
  memset(junk, 0xab, sizeof junk);
  volatile int attempts = 0;
  static void *volatile b;
  AME_ATOMIC(tx) {
    if (++attempts == 1) {
      b = ame_heap_blob_new(tx, junk, sizeof junk, 7, 0);
      ame_tx_abort(tx);
    }
  }
  ASSERT_PTR_EQ(b, (void *)block); /* the freed block's memory, reused */
  atomic_store(&s.step, 2);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(s.first, 0x1111);
  ASSERT_EQ(s.attempts, 2);     /* the stale attempt did not commit */
  ASSERT_EQ(s.second, 0);       /* nor read on after the blob's bytes */
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A new test heap (*h, entered: *tx) with 13 blobs of 5,000 bytes, each
** its own transaction's, in ss_p (ss_small's bytes, all 's'): 12 fill a
** span, the 13th starts another; then the first span's 12 freed, one per
** transaction: each free waits for the next transaction, which gives it
** back; the last waits still. */
static char ss_small[5000];
static void *volatile ss_p[13];

static void settled_span_heap(ame_heap_t **h, ame_tx_t **tx) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, h), 0);
  ame_tx_t *t = *tx = ame_heap_enter(*h);
  memset(ss_small, 's', sizeof ss_small);
  for (int i = 0; i < 13; i++) {
    AME_ATOMIC(t) {
      ss_p[i] = ame_heap_blob_new(t, ss_small, sizeof ss_small, 7, 0);
    }
    ASSERT_NOT_NULL(ss_p[i]);
  }
  for (int i = 0; i < 12; i++) AME_ATOMIC(t) { ame_heap_free(t, ss_p[i]); }
}

/* ------------------------------------------------------------------------
** A blob over memory that its own attempt wrote through the STM: the
** attempt that allocates it first gives back what earlier attempts freed
** (settle), and emptying a span that way rewrites the span's header and
** its blocks' headers through the write log before the span becomes a
** free run; the blob then takes that run.  Its bytes, written in place,
** must not be overwritten by those logged words at commit: a large blob
** over the whole span, and small blobs of another class carved from it
** (500 of them reach the last freed block's header, at 56,560).
*/
static void blob_over_settled_span(size_t size, int count) {
  ame_heap_t *h;
  ame_tx_t *tx;
  settled_span_heap(&h, &tx);
  static char data[40000];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (char)('a' + i % 23);
  static void *volatile b[500];
  ASSERT_LE(count, 500);
  AME_ATOMIC(tx) {
    for (int i = 0; i < count; i++)
      b[i] = ame_heap_blob_new(tx, data, size, 7, 0);
  }
  /* The first blob took the span the last free emptied (a large blob
  ** from its start, a small one after a new span header). */
  char *span = (char *)ss_p[0] - 16 - 64;
  ASSERT_PTR_EQ(b[0], span + (size > 32720 ? 16 : 16 + 64));
  static char back[40000];
  for (int i = 0; i < count; i++) {
    ASSERT_NOT_NULL(b[i]);
    volatile size_t n = 0;
    memset(back, 0, sizeof back);
    AME_ATOMIC(tx) {
      void *ref = b[i];
      n = ame_heap_blob_get(tx, &ref, back, size);
    }
    ASSERT_EQ(n, size);
    for (size_t j = 0; j < size; j += 8)
      if (memcmp(back + j, data + j, size - j < 8 ? size - j : 8) != 0)
        AME_TEST_FAIL_("blob %d of %zu bytes: bytes %zu.. differ", i, size,
                       j);
  }
  ame_heap_exit(h);
  ame_heap_close(h);
}

TEST_IMPL(heap_blob_over_settled_span) {
  blob_over_settled_span(40000, 1);
  blob_over_settled_span(100, 500);
}

/* ------------------------------------------------------------------------
** The same, but the attempt that allocates the blob aborts once after
** writing it.  Its writes through the log are undone; its blob's bytes,
** written in place, are not: they must lie only where the committed state
** keeps nothing, never over the span that settle() emptied (a live span
** with free blocks, in the committed state) nor over a run's header that
** insert_run() merged away.  After the abort and the commit, the heap
** must still work: blobs of the classes concerned (and transactional
** blocks) are allocated, read back and freed, many times, without
** meeting each other's bytes.
*/

/* Allocate n blobs of size bytes (blob k's bytes say k), one transaction
** per 16, read them all back, then free them: a corrupt span or run
** crashes, or hands out memory twice and the bytes differ. */
static void churn_blobs(ame_tx_t *tx, size_t size, int n) {
  static char data[70000], back[70000];
  static void *volatile q[200];
  static int k; /* not a loop's own: AddressSanitizer's scope check
                   ** misfired on one in these blocks */
  ASSERT_LE(size, sizeof data);
  ASSERT_LE(n, 200);
  for (int i = 0; i < n; i += 16) {
    AME_ATOMIC(tx) {
      for (k = i; k < n && k < i + 16; k++) {
        memset(data, 'A' + k % 50, size);
        memcpy(data, &k, sizeof k);
        q[k] = ame_heap_blob_new(tx, data, size, 7, 0);
        ASSERT_NOT_NULL(q[k]);
        void **t = ame_heap_alloc(tx, 40, 7, 0); /* a transactional one */
        ASSERT_NOT_NULL(t);
        ame_store_ptr_tx(tx, t, q[k]);
        ame_heap_free(tx, t);
      }
    }
  }
  for (k = 0; k < n; k++) {
    volatile size_t got = 0;
    AME_ATOMIC(tx) {
      void *ref = q[k];
      got = ame_heap_blob_get(tx, &ref, back, size);
    }
    ASSERT_EQ(got, size);
    memset(data, 'A' + k % 50, size);
    memcpy(data, &k, sizeof k);
    if (memcmp(back, data, size) != 0)
      AME_TEST_FAIL_("blob %d of %zu bytes: its bytes changed", k, size);
  }
  for (int i = 0; i < n; i += 16) {
    AME_ATOMIC(tx) {
      for (k = i; k < n && k < i + 16; k++) ame_heap_free(tx, q[k]);
    }
  }
}

/* What a test heap must still do after the abort: blobs of the classes
** that met the blob (5,000 and 100 bytes, large ones) and of others. */
static void heap_still_works(ame_heap_t *h, ame_tx_t *tx, int64_t used) {
  for (int round = 0; round < 3; round++) {
    churn_blobs(tx, 5000, 40);
    churn_blobs(tx, 100, 200);
    churn_blobs(tx, 40000, 20);
    churn_blobs(tx, 70000, 10);
    churn_blobs(tx, 1000, 100);
  }
  AME_ATOMIC(tx) { (void)tx; } /* settles the last frees */
  ASSERT_EQ(used_now(h), used);
}

static void blob_aborted_over_settled_span(size_t size, int count) {
  ame_heap_t *h;
  ame_tx_t *tx;
  settled_span_heap(&h, &tx); /* the 13th blob (in the next span) kept */
  int64_t used = used_now(h);
  static char data[40000];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (char)('a' + i % 23);
  static void *volatile b[500];
  ASSERT_LE(count, 500);
  volatile int attempts = 0;
  AME_ATOMIC(tx) {
    for (int i = 0; i < count; i++) {
      b[i] = ame_heap_blob_new(tx, data, size, 7, 0);
      ASSERT_NOT_NULL(b[i]);
    }
    if (++attempts == 1) ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 2);
  static char back[40000];
  for (int i = 0; i < count; i++) {
    volatile size_t n = 0;
    AME_ATOMIC(tx) {
      void *ref = b[i];
      n = ame_heap_blob_get(tx, &ref, back, size);
    }
    ASSERT_EQ(n, size);
    if (memcmp(back, data, size) != 0)
      AME_TEST_FAIL_("blob %d of %zu bytes: its bytes differ", i, size);
  }
  /* The 13th small blob, never freed. */
  AME_ATOMIC(tx) {
    void *ref = ss_p[12];
    ASSERT_EQ(ame_heap_blob_get(tx, &ref, back, sizeof ss_small),
              sizeof ss_small);
  }
  ASSERT_EQ(memcmp(back, ss_small, sizeof ss_small), 0);
  AME_ATOMIC(tx) {
    for (int i = 0; i < count; i++) ame_heap_free(tx, b[i]);
  }
  heap_still_works(h, tx, used);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* A new test heap (*h, entered: *tx) with two neighbouring large blobs
** freed one transaction apart: the second attempt gives the first back as
** a free run, the third the second, merged into it; a blob of both their
** sizes (80,000 bytes) then takes the merged run, over the second's
** header (which the committed state keeps on the slot's list of deferred
** frees). */
static void merged_run_heap(ame_heap_t **h, ame_tx_t **tx) {
  ame_heap_config_t cfg = {.size = 8 << 20, .max_slots = 4};
  *h = NULL;
  ASSERT_EQ(ame_heap_create(NULL, &cfg, h), 0);
  ame_tx_t *t = *tx = ame_heap_enter(*h);
  static char big[40000];
  memset(big, 'L', sizeof big);
  static void *volatile l1, *volatile l2;
  AME_ATOMIC(t) {
    l1 = ame_heap_blob_new(t, big, 40000, 7, 0);
    l2 = ame_heap_blob_new(t, big, 40000, 7, 0);
  }
  ASSERT_PTR_EQ(l2, (char *)l1 + 40960); /* 10 pages each */
  AME_ATOMIC(t) { ame_heap_free(t, l1); }
  AME_ATOMIC(t) { ame_heap_free(t, l2); }
}

/* The merged run's case, the attempt aborting once after its blob. */
static void blob_aborted_over_merged_run(void) {
  ame_heap_t *h;
  ame_tx_t *tx;
  merged_run_heap(&h, &tx);
  int64_t used = used_now(h);
  static char big[80000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 23);
  volatile int attempts = 0;
  static void *volatile b;
  AME_ATOMIC(tx) {
    b = ame_heap_blob_new(tx, big, 80000, 7, 0);
    ASSERT_NOT_NULL(b);
    if (++attempts == 1) ame_tx_abort(tx);
  }
  ASSERT_EQ(attempts, 2);
  static char back[80000];
  AME_ATOMIC(tx) {
    void *ref = b;
    ASSERT_EQ(ame_heap_blob_get(tx, &ref, back, sizeof back), sizeof back);
  }
  ASSERT_EQ(memcmp(back, big, sizeof big), 0);
  AME_ATOMIC(tx) { ame_heap_free(tx, b); }
  heap_still_works(h, tx, used);
  ame_heap_exit(h);
  ame_heap_close(h);
}

TEST_IMPL(heap_blob_aborted_over_settled) {
  blob_aborted_over_settled_span(40000, 1);
  blob_aborted_over_settled_span(100, 500);
  blob_aborted_over_merged_run();
}

/* ------------------------------------------------------------------------
** The same once more, but the process dies in that attempt, after its
** blobs and before its commit: no abort runs, and the recoverer (here the
** parent, through ame_heap_recover_pid) must put back what the blobs
** covered before it releases the dead attempt's locks, or the committed
** span, deferred block or merged run keeps the blobs' bytes.  Then a
** commit killed once decided (the blobs are the committed state, and stay
** so), and a recoverer killed once it put the bytes back (the next one
** does it again).
*/

static void **killed_b; /* the dying child's blobs (shared with it) */

static void die_when_restored(const char *phase) {
  if (strcmp(phase, "restored") == 0) raise(SIGKILL);
}

/* The parent has left the heap (its slot 0 keeps its deferred frees).  A
** child takes slot 0 and, in one attempt, allocates count blobs of size
** bytes of data; it dies before its commit, or (decided) once its commit
** is decided.  Return its pid (reaped, not recovered). */
static pid_t blobs_then_die(ame_heap_t *h, const char *data, size_t size,
                            int count, int decided) {
  fflush(NULL);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ame_heap_after_fork_child(h);
    if (decided) ame_heap_set_phase_hook(die_when_decided);
    ame_tx_t *c = ame_heap_enter(h);
    if (c == NULL || ame_heap_slot(c) != 0) _exit(5);
    AME_ATOMIC(c) {
      for (int i = 0; i < count; i++) {
        killed_b[i] = ame_heap_blob_new(c, data, size, 7, 0);
        if (killed_b[i] == NULL) _exit(6);
      }
      if (!decided) raise(SIGKILL);
    }
    _exit(7); /* not reached */
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
    AME_TEST_FAIL_("the child ended with status %#x", st);
  return pid;
}

/* Recover the dead child's slot: first (twice) in a child killed once the
** bytes are back, then here. */
static void recover_child(ame_heap_t *h, pid_t dead, int recoverer_dies) {
  if (recoverer_dies) {
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ame_heap_after_fork_child(h);
      ame_heap_set_phase_hook(die_when_restored);
      ame_heap_recover_pid(h, dead);
      _exit(8); /* not reached */
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
      AME_TEST_FAIL_("the recoverer ended with status %#x", st);
  }
  ASSERT_EQ(ame_heap_recover_pid(h, dead), 1);
  char msg[128];
  if (ame_heap_verify(h, msg, sizeof msg) != 0)
    AME_TEST_FAIL_("ame_heap_verify: %s", msg);
}

/* The settled span's case (mode 0: the attempt dies before its commit; 1:
** its recoverer dies too; 2: it dies once its commit is decided). */
static void blob_killed_over_settled_span(size_t size, int count, int mode) {
  ame_heap_t *h;
  ame_tx_t *tx;
  settled_span_heap(&h, &tx); /* the 13th blob (in the next span) kept */
  int64_t used = used_now(h);
  ame_heap_exit(h);
  static char data[40000];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (char)('a' + i % 23);
  ASSERT_LE(count, 500);
  pid_t dead = blobs_then_die(h, data, size, count, mode == 2);
  recover_child(h, dead, mode == 1);
  tx = ame_heap_enter(h);
  ASSERT_NOT_NULL(tx);
  static char back[40000];
  if (mode == 2) { /* committed: the blobs are there */
    for (int i = 0; i < count; i++) {
      volatile size_t n = 0;
      AME_ATOMIC(tx) {
        void *ref = killed_b[i];
        n = ame_heap_blob_get(tx, &ref, back, size);
      }
      ASSERT_EQ(n, size);
      if (memcmp(back, data, size) != 0)
        AME_TEST_FAIL_("blob %d of %zu bytes: its bytes differ", i, size);
    }
    AME_ATOMIC(tx) {
      for (int i = 0; i < count; i++) ame_heap_free(tx, killed_b[i]);
    }
  }
  /* The 13th small blob, never freed. */
  AME_ATOMIC(tx) {
    void *ref = ss_p[12];
    ASSERT_EQ(ame_heap_blob_get(tx, &ref, back, sizeof ss_small),
              sizeof ss_small);
  }
  ASSERT_EQ(memcmp(back, ss_small, sizeof ss_small), 0);
  heap_still_works(h, tx, used);
  ame_heap_exit(h);
  ame_heap_close(h);
}

/* The merged run's case (modes as above). */
static void blob_killed_over_merged_run(int mode) {
  ame_heap_t *h;
  ame_tx_t *tx;
  merged_run_heap(&h, &tx);
  int64_t used = used_now(h);
  ame_heap_exit(h);
  static char big[80000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 23);
  pid_t dead = blobs_then_die(h, big, sizeof big, 1, mode == 2);
  recover_child(h, dead, mode == 1);
  tx = ame_heap_enter(h);
  ASSERT_NOT_NULL(tx);
  if (mode == 2) {
    static char back[80000];
    AME_ATOMIC(tx) {
      void *ref = killed_b[0];
      ASSERT_EQ(ame_heap_blob_get(tx, &ref, back, sizeof back), sizeof back);
    }
    ASSERT_EQ(memcmp(back, big, sizeof big), 0);
    AME_ATOMIC(tx) { ame_heap_free(tx, killed_b[0]); }
  }
  heap_still_works(h, tx, used);
  ame_heap_exit(h);
  ame_heap_close(h);
}

TEST_IMPL(heap_blob_killed_over_settled) {
  killed_b = mmap(NULL, 500 * sizeof *killed_b, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT(killed_b != MAP_FAILED);
  for (int mode = 0; mode < 3; mode++) {
    blob_killed_over_settled_span(40000, 1, mode);
    blob_killed_over_settled_span(100, 500, mode);
    blob_killed_over_merged_run(mode);
  }
  munmap(killed_b, 500 * sizeof *killed_b);
}
