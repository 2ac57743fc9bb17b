/*
** examples/c/fuzz_http.c — a libFuzzer target for the HTTP example's
** request handling (http_app.c): arbitrary bytes, split into arbitrary
** reads, go through the same code the server runs in on_data.
**
** Each input is fed to two connections, each with its own shared state:
** A commits every read at its first attempt, B has every read's
** transaction aborted once or twice before it commits (as a conflict on the
** shared state would).  The fuzzer checks that
**  - nothing crashes, leaks or trips ASan/UBSan;
**  - A's output is well-formed: a sequence of HTTP/1.1 responses with a
**    status line, valid header lines, a Content-Length that matches the
**    body (left out for HEAD), "Connection: close" exactly on the last
**    response before the connection closes, and nothing after it;
**  - B's output and results are byte for byte A's: a re-run after an abort
**    leaves no trace (the per-connection state is restored, the shared
**    state rolled back).
** The read sizes come from a hash of the input, so any raw HTTP request is
** a useful seed (fuzz_http_corpus/), and mutations change the split too.
**
**   examples/c/fuzz.sh SECONDS        (clang, libFuzzer, ASan, UBSan)
**
** Built with -DFUZZ_REPLAY_MAIN (the meson build does this with any
** compiler) it gets a main() instead: it runs the files named on its
** command line, then --random N inputs made of HTTP-ish tokens; the test
** suite runs it so that the checks hold without clang.
*/
#include "http_app.h"

#include <ame/stm.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "fuzz_http: %s:%d: check failed: %s\n", __FILE__,    \
              __LINE__, #cond);                                            \
      abort();                                                             \
    }                                                                      \
  } while (0)

/* What the trace hook reported for one response. */
struct resp {
  int status, head, closing;
  size_t body_len;
};

struct trace {
  struct resp r[16384];
  size_t n;
};

static struct trace trace_a, trace_b;
static unsigned long statuses[600]; /* responses seen, by status */

static void trace_cb(void *arg, int status, int head, size_t body_len,
                     int closing) {
  struct trace *t = arg;
  if (t == &trace_a && status >= 0 && status < 600) statuses[status]++;
  CHECK(t->n < sizeof t->r / sizeof t->r[0]);
  t->r[t->n++] = (struct resp){status, head, closing, body_len};
}

static uint64_t mix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int is_tchar(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
         (ch >= '0' && ch <= '9') || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Check that o[0..len) is exactly the responses t announced, well-formed;
** closing: the feed returned HTTP_CLOSE for the first time. */
static void check_output(const char *o, size_t len, const struct trace *t,
                         int closing) {
  size_t i = 0;
  for (size_t k = 0; k < t->n; k++) {
    const struct resp *r = &t->r[k];
    /* Status line. */
    CHECK(len - i >= 15 && memcmp(o + i, "HTTP/1.1 ", 9) == 0);
    i += 9;
    int status = 0;
    for (int d = 0; d < 3; d++) {
      CHECK(o[i] >= '0' && o[i] <= '9');
      status = status * 10 + (o[i++] - '0');
    }
    CHECK(status == r->status && status >= 200 && status <= 599);
    CHECK(o[i++] == ' ');
    while (i < len && o[i] != '\r') CHECK(o[i] >= ' ' && o[i++] < 0x7f);
    CHECK(len - i >= 2 && o[i] == '\r' && o[i + 1] == '\n');
    i += 2;
    /* Header lines up to the empty line. */
    long clen = -1;
    int close_hdr = 0;
    for (;;) {
      CHECK(len - i >= 2);
      if (o[i] == '\r' && o[i + 1] == '\n') {
        i += 2;
        break;
      }
      size_t name = i;
      while (i < len && is_tchar(o[i])) i++;
      CHECK(i > name && len - i >= 2 && o[i] == ':' && o[i + 1] == ' ');
      size_t nlen = i - name;
      i += 2;
      size_t value = i;
      while (i < len && o[i] != '\r') CHECK(o[i] >= ' ' && o[i++] < 0x7f);
      CHECK(len - i >= 2 && o[i + 1] == '\n');
      if (nlen == 14 && strncasecmp(o + name, "Content-Length", 14) == 0) {
        CHECK(clen == -1);
        clen = strtol(o + value, NULL, 10);
      }
      if (nlen == 10 && strncasecmp(o + name, "Connection", 10) == 0 &&
          i - value == 5 && memcmp(o + value, "close", 5) == 0)
        close_hdr = 1;
      i += 2;
    }
    CHECK(clen >= 0 && (size_t)clen == r->body_len);
    CHECK(close_hdr == r->closing);
    /* Only the last response may close, and only if the feed said so. */
    CHECK(!r->closing || (k == t->n - 1 && closing));
    if (!r->head) {
      CHECK(len - i >= (size_t)clen);
      i += (size_t)clen;
    }
  }
  CHECK(i == len);
  /* A connection closes after an answer (never silently, the first time). */
  CHECK(!closing || (t->n > 0 && t->r[t->n - 1].closing));
}

static char *out_a;      /* a copy of A's output */
static size_t out_a_cap;

/* Feed the same read to a (committed at once) and b (aborted `aborts`
** times first), check a's output and that b's is the same.  closed: a
** feed returned HTTP_CLOSE before.  Return what the feed returned. */
static int feed_both(ame_tx_t *tx, http_conn_t *a, http_conn_t *b,
                     const char *in, size_t n, unsigned aborts, int closed) {
  volatile int rc_a = 0, rc_b = 0;
  AME_ATOMIC(tx) {
    trace_a.n = 0;
    rc_a = http_conn_feed(tx, a, in, n);
  }
  size_t la, lb;
  const char *oa = http_conn_output(a, &la);
  CHECK(rc_a == HTTP_KEEP || rc_a == HTTP_CLOSE);
  if (la > out_a_cap) {
    out_a_cap = la * 2;
    out_a = realloc(out_a, out_a_cap);
    CHECK(out_a != NULL);
  }
  if (la) memcpy(out_a, oa, la);
  check_output(out_a, la, &trace_a, rc_a == HTTP_CLOSE && !closed);
  CHECK(!closed || la == 0);

  AME_ATOMIC(tx) {
    trace_b.n = 0;
    rc_b = http_conn_feed(tx, b, in, n);
    if (ame_tx_attempt(tx) < aborts) ame_tx_abort(tx);
  }
  const char *ob = http_conn_output(b, &lb);
  CHECK(rc_b == rc_a && lb == la && (la == 0 || memcmp(ob, out_a, la) == 0));
  CHECK(trace_b.n == trace_a.n);
  for (size_t k = 0; k < trace_a.n; k++)
    CHECK(trace_b.r[k].status == trace_a.r[k].status &&
          trace_b.r[k].head == trace_a.r[k].head &&
          trace_b.r[k].closing == trace_a.r[k].closing &&
          trace_b.r[k].body_len == trace_a.r[k].body_len);
  return rc_a;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static ame_tx_t *tx;
  if (tx == NULL) {
    tx = ame_thread_enter();
    CHECK(tx != NULL);
    http_app_init();
  }
  uint64_t seed = 1469598103934665603ull;
  for (size_t i = 0; i < size; i++) seed = (seed ^ data[i]) * 1099511628211ull;

  http_shared_t *sa = http_shared_new(2), *sb = http_shared_new(2);
  CHECK(sa && sb);
  http_conn_t *volatile a = NULL, *volatile b = NULL;
  AME_ATOMIC(tx) {
    a = http_conn_new(tx, sa, 0);
    b = http_conn_new(tx, sb, 1);
  }
  CHECK(a && b);
  http_conn_set_trace(a, trace_cb, &trace_a);
  http_conn_set_trace(b, trace_cb, &trace_b);

  const char *in = (const char *)data;
  size_t off = 0;
  int closed = 0;
  while (off < size) {
    /* Mostly small reads, sometimes everything left. */
    uint64_t r = mix(&seed);
    size_t n = r % 4 == 0 ? size - off : 1 + (size_t)(r >> 8) % 64;
    if (n > size - off) n = size - off;
    int rc = feed_both(tx, a, b, in + off, n, 1 + (unsigned)(r >> 40) % 2,
                       closed);
    closed |= rc == HTTP_CLOSE;
    off += n;
  }

  AME_ATOMIC(tx) {
    http_conn_free(tx, a);
    http_conn_free(tx, b);
  }
  http_shared_free(sa);
  http_shared_free(sb);
  ame_thread_idle(tx); /* reclaim the deferred frees now */
  return 0;
}

#ifdef FUZZ_REPLAY_MAIN
/* Random inputs: a few requests built from these pieces, then now and
** then a byte changed, dropped or repeated many times. */
static const char *const methods[] = {
    "GET", "GET", "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS",
    "CONNECT", "BREW", "PATCH", "get", "",
};
static const char *const targets[] = {
    "/", "/hello", "/stats", "/cache/a", "/cache/b?x=1", "/cache/",
    "/nope", "*", "http://h/cache/a", "h:443", "/%00\"\\", "",
};
static const char *const versions[] = {
    " HTTP/1.1\r\n", " HTTP/1.1\r\n", " HTTP/1.0\r\n", " HTTP/2.0\r\n",
    "\r\n", " HTTP/1.1\n", " HTTP/1.x\r\n",
};
static const char *const headers[] = {
    "Host: x\r\n", "Connection: close\r\n", "Connection: keep-alive\r\n",
    "Content-Length: 5\r\n", "Content-Length: 99999\r\n",
    "Content-Length: x\r\n", "Transfer-Encoding: chunked\r\n",
    "Upgrade: websocket\r\nConnection: upgrade\r\n", "X: y\r\n",
    "bad header\r\n", " folded\r\n",
};
static const char *const bodies[] = {
    "", "", "hello", "5\r\nhello\r\n0\r\n\r\n", "ffffffffffffffffff\r\n",
    "1\r\n", "0\r\n\r\n",
};

#define PICK(a) (a)[mix(&seed) % (sizeof(a) / sizeof *(a))]

static size_t put(uint8_t *buf, size_t n, size_t cap, const char *s) {
  size_t len = strlen(s);
  if (len > cap - n) len = cap - n;
  memcpy(buf + n, s, len);
  return n + len;
}

/* Build one random input in buf; return its length. */
static size_t random_input(uint8_t *buf, size_t cap, uint64_t seed) {
  size_t n = 0;
  unsigned requests = 1 + (unsigned)(mix(&seed) % 8);
  for (unsigned k = 0; k < requests; k++) {
    n = put(buf, n, cap, PICK(methods));
    n = put(buf, n, cap, " ");
    n = put(buf, n, cap, PICK(targets));
    if (mix(&seed) % 16 == 0) { /* a long target */
      size_t len = (size_t)(mix(&seed) % 3000);
      if (len > cap - n) len = cap - n;
      memset(buf + n, 'u', len);
      n += len;
    }
    n = put(buf, n, cap, PICK(versions));
    unsigned nh = (unsigned)(mix(&seed) % 4);
    for (unsigned h = 0; h < nh; h++) n = put(buf, n, cap, PICK(headers));
    if (mix(&seed) % 16 == 0) { /* a long header */
      size_t len = (size_t)(mix(&seed) % 12000);
      n = put(buf, n, cap, "X-Long: ");
      if (len > cap - n) len = cap - n;
      memset(buf + n, 'v', len);
      n += len;
      n = put(buf, n, cap, "\r\n");
    }
    n = put(buf, n, cap, "\r\n");
    n = put(buf, n, cap, PICK(bodies));
  }
  unsigned edits = mix(&seed) % 3 == 0 ? 1 + (unsigned)(mix(&seed) % 3) : 0;
  for (unsigned e = 0; e < edits && n > 0; e++) {
    size_t at = (size_t)(mix(&seed) % n);
    switch (mix(&seed) % 3) {
    case 0: buf[at] = (uint8_t)mix(&seed); break;
    case 1: memmove(buf + at, buf + at + 1, n - at - 1); n--; break;
    case 2: n = at; break;
    }
  }
  return n;
}

static void run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    exit(1);
  }
  static uint8_t buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  LLVMFuzzerTestOneInput(buf, n);
}

int main(int argc, char **argv) {
  unsigned long random = 0, files = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--random") == 0 && i + 1 < argc) {
      random = strtoul(argv[++i], NULL, 10);
    } else {
      run_file(argv[i]);
      files++;
    }
  }
  static uint8_t buf[64 * 1024];
  for (unsigned long k = 0; k < random; k++)
    LLVMFuzzerTestOneInput(buf, random_input(buf, sizeof buf, k));
  free(out_a);
  printf("fuzz_http: %lu files and %lu random inputs checked; responses:",
         files, random);
  for (int st = 0; st < 600; st++)
    if (statuses[st]) printf(" %d x%lu", st, statuses[st]);
  printf("\n");
  ame_thread_exit();
  ame_stm_shutdown();
  return 0;
}
#endif
