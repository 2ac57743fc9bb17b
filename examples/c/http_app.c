/*
** examples/c/http_app.c — request parsing, routing and the transactional
** shared state of the HTTP example (see http_app.h).
**
** Shared state lives in STM words: hash tables whose bucket heads, counters
** and cache values are loaded and stored with ame_load_*_tx /
** ame_store_*_tx.  Entries are allocated with ame_tx_malloc() and never
** unlinked, so their `next` pointers and keys are written once, before the
** entry is published by a transactional store of the bucket head, and read
** plainly after that.  A cache value is an immutable block: a PUT stores a
** new block and hands the old one to ame_tx_free(), which returns it to
** malloc only once no transaction that may still read it is running.
**
** Hit counters are striped: each path has one counter per worker, each on
** its own 64-byte cache line (two of the 32-byte granules the STM detects
** conflicts in, and no line shared between CPUs), so two
** workers counting the same path never conflict; /stats adds the stripes up
** in one transaction and so sees an exact, consistent total.
*/
#include "http_app.h"

#include <errno.h>
#include <http_parser.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRAIN 64           /* a cache line: whole STM conflict granules */
#define HIT_BUCKETS 256    /* power of two */
#define CACHE_BUCKETS 256  /* power of two */
#define COMPUTE_ROUNDS 100000

/* ------------------------------------------------------------------------
** Shared state.
*/

/* One STM word alone on its granule. */
typedef struct padded_word {
  uintptr_t v;
  char pad[GRAIN - sizeof(uintptr_t)];
} padded_word;

/* A path's hit counters.  Layout of the block: this header, then one
** GRAIN-sized slot per stripe (the counter is its first word), then the
** key. */
struct hit_entry {
  struct hit_entry *next; /* immutable once published */
  size_t len;             /* key length; immutable */
};

/* An immutable block of bytes (a cache value). */
struct blob {
  size_t len;
  char data[];
};

struct cache_entry {
  struct cache_entry *next; /* immutable once published */
  struct blob *value;       /* STM word: NULL after DELETE */
  size_t klen;              /* immutable */
  char key[];               /* immutable */
};

struct http_shared {
  padded_word npaths;          /* STM: entries in the hit table */
  padded_word cache_entries;   /* STM: entries in the cache */
  padded_word cache_computed;  /* STM */
  padded_word cache_sets;      /* STM */
  unsigned stripes;            /* immutable */
  struct hit_entry **hits;     /* HIT_BUCKETS STM words */
  struct hit_entry *other;     /* "(other)": paths over the limit */
  struct cache_entry **cache;  /* CACHE_BUCKETS STM words */
};

static uint64_t hash_bytes(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 1099511628211ull;
  }
  return h;
}

static uintptr_t *hit_stripe(const http_shared_t *sh, struct hit_entry *e,
                             unsigned i) {
  return (uintptr_t *)(void *)((char *)e + GRAIN * (1 + i % sh->stripes));
}

static char *hit_key(const http_shared_t *sh, struct hit_entry *e) {
  return (char *)e + GRAIN * (1 + sh->stripes);
}

static size_t hit_size(const http_shared_t *sh, size_t len) {
  return GRAIN * (1 + sh->stripes) + len + 1;
}

/* Fill a fresh (unpublished) hit entry. */
static void hit_init(const http_shared_t *sh, struct hit_entry *e,
                     struct hit_entry *next, const char *key, size_t len) {
  memset(e, 0, GRAIN * (1 + sh->stripes));
  e->next = next;
  e->len = len;
  memcpy(hit_key(sh, e), key, len);
  hit_key(sh, e)[len] = '\0';
}

static struct hit_entry **hit_bucket(http_shared_t *sh, const char *key,
                                     size_t len) {
  return &sh->hits[hash_bytes(key, len) & (HIT_BUCKETS - 1)];
}

void http_app_init(void) { http_parser_set_max_header_size(HTTP_MAX_HEADER); }

http_shared_t *http_shared_new(unsigned stripes) {
  size_t size = (sizeof(http_shared_t) + GRAIN - 1) / GRAIN * GRAIN;
  http_shared_t *sh = aligned_alloc(GRAIN, size);
  if (sh == NULL) return NULL;
  memset(sh, 0, size);
  sh->stripes = stripes ? stripes : 1;
  sh->hits = calloc(HIT_BUCKETS, sizeof *sh->hits);
  sh->cache = calloc(CACHE_BUCKETS, sizeof *sh->cache);
  sh->other = malloc(hit_size(sh, 7));
  if (sh->hits == NULL || sh->cache == NULL || sh->other == NULL) {
    http_shared_free(sh);
    return NULL;
  }
  hit_init(sh, sh->other, NULL, "(other)", 7);
  return sh;
}

void http_shared_free(http_shared_t *sh) {
  if (sh == NULL) return;
  for (unsigned i = 0; sh->hits && i < HIT_BUCKETS; i++) {
    struct hit_entry *e = sh->hits[i];
    while (e) {
      struct hit_entry *next = e->next;
      free(e);
      e = next;
    }
  }
  for (unsigned i = 0; sh->cache && i < CACHE_BUCKETS; i++) {
    struct cache_entry *e = sh->cache[i];
    while (e) {
      struct cache_entry *next = e->next;
      free(e->value);
      free(e);
      e = next;
    }
  }
  free(sh->hits);
  free(sh->cache);
  free(sh->other);
  free(sh);
}

static uint64_t hit_sum_plain(const http_shared_t *sh, struct hit_entry *e) {
  uint64_t n = 0;
  for (unsigned i = 0; i < sh->stripes; i++) n += *hit_stripe(sh, e, i);
  return n;
}

void http_shared_totals(http_shared_t *sh, http_totals_t *out) {
  memset(out, 0, sizeof *out);
  for (unsigned i = 0; i < HIT_BUCKETS; i++)
    for (struct hit_entry *e = sh->hits[i]; e; e = e->next)
      out->requests += hit_sum_plain(sh, e);
  out->requests += hit_sum_plain(sh, sh->other);
  out->paths = sh->npaths.v;
  out->cache_entries = sh->cache_entries.v;
  out->cache_computed = sh->cache_computed.v;
  out->cache_sets = sh->cache_sets.v;
}

/* Count one request for path on stripe, in tx.  A path not seen before is
** added (while fewer than HTTP_MAX_PATHS are), else counted as "(other)". */
static void count_hit(ame_tx_t *tx, http_shared_t *sh, unsigned stripe,
                      const char *path, size_t len) {
  struct hit_entry **b = hit_bucket(sh, path, len);
  struct hit_entry *first = ame_load_ptr_tx(tx, (void **)b), *e;
  for (e = first; e; e = e->next)
    if (e->len == len && memcmp(hit_key(sh, e), path, len) == 0) break;
  if (e == NULL) {
    uintptr_t n = ame_load_word_tx(tx, &sh->npaths.v);
    if (n < HTTP_MAX_PATHS) e = ame_tx_malloc(tx, hit_size(sh, len));
    if (e) {
      hit_init(sh, e, first, path, len);
      ame_store_ptr_tx(tx, (void **)b, e);
      ame_store_word_tx(tx, &sh->npaths.v, n + 1);
    } else {
      e = sh->other;
    }
  }
  uintptr_t *w = hit_stripe(sh, e, stripe);
  ame_store_word_tx(tx, w, ame_load_word_tx(tx, w) + 1);
}

static struct cache_entry *cache_find(ame_tx_t *tx, http_shared_t *sh,
                                      const char *key, size_t klen,
                                      struct cache_entry ***bucket,
                                      struct cache_entry **first) {
  *bucket = &sh->cache[hash_bytes(key, klen) & (CACHE_BUCKETS - 1)];
  *first = ame_load_ptr_tx(tx, (void **)*bucket);
  for (struct cache_entry *e = *first; e; e = e->next)
    if (e->klen == klen && memcmp(e->key, key, klen) == 0) return e;
  return NULL;
}

/* Add an entry for key with value v, in tx.  Return it, or NULL if the
** cache is full or memory ran out. */
static struct cache_entry *cache_insert(ame_tx_t *tx, http_shared_t *sh,
                                        struct cache_entry **bucket,
                                        struct cache_entry *first,
                                        const char *key, size_t klen,
                                        struct blob *v) {
  uintptr_t n = ame_load_word_tx(tx, &sh->cache_entries.v);
  if (n >= HTTP_MAX_CACHE) return NULL;
  struct cache_entry *e = ame_tx_malloc(tx, sizeof *e + klen);
  if (e == NULL) return NULL;
  e->next = first;
  e->value = v;
  e->klen = klen;
  memcpy(e->key, key, klen);
  ame_store_ptr_tx(tx, (void **)bucket, e);
  ame_store_word_tx(tx, &sh->cache_entries.v, n + 1);
  return e;
}

static struct blob *blob_new(ame_tx_t *tx, const char *data, size_t len) {
  struct blob *b = ame_tx_malloc(tx, sizeof *b + len);
  if (b == NULL) return NULL;
  b->len = len;
  memcpy(b->data, data, len);
  return b;
}

/* The "expensive" value of a key that nobody stored: a hash of it, mixed
** COMPUTE_ROUNDS times.  Computed once per key: two workers that miss at
** the same moment both compute it, but only one insert commits, and the
** other's re-run finds the value. */
static struct blob *compute_value(ame_tx_t *tx, const char *key,
                                  size_t klen) {
  uint64_t h = hash_bytes(key, klen);
  for (unsigned i = 0; i < COMPUTE_ROUNDS; i++) {
    h += 0x9E3779B97F4A7C15ull;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
  }
  char text[32];
  int n = snprintf(text, sizeof text, "%016llx\n", (unsigned long long)h);
  return blob_new(tx, text, (size_t)n);
}

static void stm_add(ame_tx_t *tx, uintptr_t *w, uintptr_t n) {
  ame_store_word_tx(tx, w, ame_load_word_tx(tx, w) + n);
}

/* ------------------------------------------------------------------------
** Connections.
*/

struct buf {
  char *p;
  size_t len, cap;
};

/* Room for n more bytes.  Return 0 or -ENOMEM. */
static int buf_reserve(struct buf *b, size_t n) {
  if (b->cap - b->len >= n) return 0;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap - b->len < n) cap *= 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) return -ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_add(struct buf *b, const void *data, size_t n) {
  if (buf_reserve(b, n) != 0) return -ENOMEM;
  memcpy(b->p + b->len, data, n);
  b->len += n;
  return 0;
}

static int buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int buf_printf(struct buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || buf_reserve(b, (size_t)n + 1) != 0) return -ENOMEM;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

/* What feeding bytes changes: saved at the start of each attempt, put back
** by an abort handler (with the url and body bytes, see save()). */
struct conn_state {
  http_parser parser;
  size_t url_len;   /* bytes of the request target so far */
  size_t body_len;  /* bytes of the body so far */
  int in_message;   /* a request has begun and not completed */
  int head;         /* ... and its method, parsed whole, is HEAD */
  int err;          /* status chosen by a parser callback that stopped it */
  int done;         /* closing: ignore further input */
};

struct http_conn {
  struct conn_state st;
  struct conn_state saved;   /* st at the start of this attempt */
  char *saved_bytes;         /* url and body bytes carried over (lazy) */
  http_shared_t *sh;
  unsigned stripe;
  ame_tx_t *tx;              /* during http_conn_feed() */
  struct buf out;            /* responses of the current feed */
  struct buf scratch;        /* response bodies being built */
  http_trace_fn trace;
  void *trace_arg;
  char url[HTTP_MAX_URL];
  char body[HTTP_MAX_BODY];
};

/* Save the state at the start of an attempt.  The url and body bytes are
** copied only when a request spans reads (they may be overwritten by the
** next request in this attempt); the common case copies the small state
** alone.  Return 0 or -ENOMEM. */
static int save(http_conn_t *c) {
  c->saved = c->st;
  if (c->st.url_len + c->st.body_len == 0) return 0;
  if (c->saved_bytes == NULL &&
      (c->saved_bytes = malloc(HTTP_MAX_URL + HTTP_MAX_BODY)) == NULL)
    return -ENOMEM;
  memcpy(c->saved_bytes, c->url, c->st.url_len);
  memcpy(c->saved_bytes + HTTP_MAX_URL, c->body, c->st.body_len);
  return 0;
}

/* Abort handler: put the state back as save() found it. */
static void restore(void *arg) {
  http_conn_t *c = arg;
  c->st = c->saved;
  if (c->st.url_len + c->st.body_len == 0) return;
  memcpy(c->url, c->saved_bytes, c->st.url_len);
  memcpy(c->body, c->saved_bytes + HTTP_MAX_URL, c->st.body_len);
}

static int on_message_begin(http_parser *p) {
  http_conn_t *c = p->data;
  c->st.url_len = c->st.body_len = 0;
  c->st.err = 0;
  c->st.in_message = 1;
  c->st.head = 0;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  /* The target follows the method: the method is whole now (while it is
  ** read, p->method is a guess from its first letters). */
  c->st.head = p->method == HTTP_HEAD;
  if (n > HTTP_MAX_URL - c->st.url_len) {
    c->st.err = 414;
    return 1;
  }
  memcpy(c->url + c->st.url_len, at, n);
  c->st.url_len += n;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  http_conn_t *c = p->data;
  if (p->content_length != ULLONG_MAX && p->content_length > HTTP_MAX_BODY) {
    c->st.err = 413;
    return -1; /* anything but 0, 1, 2 stops the parser */
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  http_conn_t *c = p->data;
  if (n > HTTP_MAX_BODY - c->st.body_len) {
    c->st.err = 413;
    return 1;
  }
  memcpy(c->body + c->st.body_len, at, n);
  c->st.body_len += n;
  return 0;
}

/* A request is complete: pause, so that http_parser_execute() returns
** right after it and the request is handled outside the parser. */
static int on_message_complete(http_parser *p) {
  http_conn_t *c = p->data;
  c->st.in_message = 0;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

http_conn_t *http_conn_new(ame_tx_t *tx, http_shared_t *sh, unsigned stripe) {
  http_conn_t *c = ame_tx_malloc(tx, sizeof *c);
  if (c == NULL) return NULL;
  memset(c, 0, offsetof(http_conn_t, url));
  http_parser_init(&c->st.parser, HTTP_REQUEST);
  c->st.parser.data = c;
  c->sh = sh;
  c->stripe = stripe;
  return c;
}

void http_conn_free(ame_tx_t *tx, http_conn_t *c) {
  if (c == NULL) return;
  if (c->out.p) ame_tx_free(tx, c->out.p, 0);
  if (c->scratch.p) ame_tx_free(tx, c->scratch.p, 0);
  if (c->saved_bytes) ame_tx_free(tx, c->saved_bytes, 0);
  ame_tx_free(tx, c, 0);
}

const char *http_conn_output(const http_conn_t *c, size_t *len) {
  *len = c->out.len;
  return c->out.p;
}

void http_conn_set_trace(http_conn_t *c, http_trace_fn fn, void *arg) {
  c->trace = fn;
  c->trace_arg = arg;
}

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 400: return "Bad Request";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 507: return "Insufficient Storage";
  default: return "Unknown";
  }
}

/* Append a response.  head: leave the body out (HEAD).  keep: the
** connection stays open (else "Connection: close").  extra: more header
** lines, each ending in CRLF (or ""). */
static int respond(http_conn_t *c, int status, const char *ctype,
                   const char *extra, const char *body, size_t blen,
                   int head, int keep) {
  const http_parser *p = &c->st.parser;
  const char *conn = !keep ? "Connection: close\r\n"
                     : p->http_major == 1 && p->http_minor == 0
                         ? "Connection: keep-alive\r\n"
                         : "";
  if (buf_printf(&c->out,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\n%s%s\r\n",
                 status, reason(status), ctype, blen, extra, conn) != 0)
    return -ENOMEM;
  if (!head && buf_add(&c->out, body, blen) != 0) return -ENOMEM;
  if (c->trace) c->trace(c->trace_arg, status, head, blen, !keep);
  return keep ? HTTP_KEEP : HTTP_CLOSE;
}

/* A short text/plain response whose body is the reason phrase. */
static int respond_status(http_conn_t *c, int status, const char *extra,
                          int head, int keep) {
  char body[64];
  int n = snprintf(body, sizeof body, "%s\n", reason(status));
  return respond(c, status, "text/plain", extra, body, (size_t)n, head,
                 keep);
}

static const char hello_response[] = "HTTP/1.1 200 OK\r\n"
                                     "Content-Type: text/plain\r\n"
                                     "Content-Length: 14\r\n"
                                     "\r\n"
                                     "Hello, world!\n";

static int is_hello(const char *path, size_t len) {
  return (len == 1 && path[0] == '/') ||
         (len == 6 && memcmp(path, "/hello", 6) == 0);
}

/* Append s as a JSON string. */
static int json_string(struct buf *b, const char *s, size_t n) {
  if (buf_reserve(b, n * 6 + 2) != 0) return -ENOMEM;
  char *o = b->p + b->len;
  *o++ = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      *o++ = '\\';
      *o++ = (char)ch;
    } else if (ch < 0x20 || ch >= 0x7f) {
      o += sprintf(o, "\\u%04x", ch);
    } else {
      *o++ = (char)ch;
    }
  }
  *o++ = '"';
  b->len = (size_t)(o - b->p);
  return 0;
}

/* GET /stats: every counter, read in one transaction (a consistent
** snapshot), as JSON. */
static int stats(http_conn_t *c, int head, int keep) {
  ame_tx_t *tx = c->tx;
  http_shared_t *sh = c->sh;
  struct buf *b = &c->scratch;
  uint64_t total = 0;
  int first = 1;
  b->len = 0;
  if (buf_add(b, "{\"paths\":{", 10) != 0) return -ENOMEM;
  for (unsigned i = 0; i <= HIT_BUCKETS; i++) {
    /* Every bucket's chain, then "(other)". */
    struct hit_entry *e = i < HIT_BUCKETS
                              ? ame_load_ptr_tx(tx, (void **)&sh->hits[i])
                              : sh->other;
    for (; e; e = e == sh->other ? NULL : e->next) {
      uint64_t n = 0;
      for (unsigned s = 0; s < sh->stripes; s++)
        n += ame_load_word_tx(tx, hit_stripe(sh, e, s));
      if (n == 0) continue;
      total += n;
      if (!first && buf_add(b, ",", 1) != 0) return -ENOMEM;
      first = 0;
      if (json_string(b, hit_key(sh, e), e->len) != 0 ||
          buf_printf(b, ":%llu", (unsigned long long)n) != 0)
        return -ENOMEM;
    }
  }
  if (buf_printf(b,
                 "},\"requests\":%llu,\"paths_counted\":%llu,"
                 "\"cache\":{\"entries\":%llu,\"computed\":%llu,"
                 "\"sets\":%llu}}\n",
                 (unsigned long long)total,
                 (unsigned long long)ame_load_word_tx(tx, &sh->npaths.v),
                 (unsigned long long)ame_load_word_tx(tx,
                                                      &sh->cache_entries.v),
                 (unsigned long long)ame_load_word_tx(tx,
                                                      &sh->cache_computed.v),
                 (unsigned long long)ame_load_word_tx(tx, &sh->cache_sets.v)) !=
      0)
    return -ENOMEM;
  return respond(c, 200, "application/json", "", b->p, b->len, head, keep);
}

/* /cache/<key>. */
static int cache(http_conn_t *c, unsigned method, const char *key,
                 size_t klen, int keep) {
  ame_tx_t *tx = c->tx;
  http_shared_t *sh = c->sh;
  int head = method == HTTP_HEAD;
  if (klen > HTTP_MAX_KEY) return respond_status(c, 414, "", head, 0);
  struct cache_entry **bucket, *first;
  struct cache_entry *e = cache_find(tx, sh, key, klen, &bucket, &first);
  struct blob *v = e ? ame_load_ptr_tx(tx, (void **)&e->value) : NULL;
  switch (method) {
  case HTTP_GET:
  case HTTP_HEAD:
    if (v == NULL) {
      if ((v = compute_value(tx, key, klen)) == NULL) return -ENOMEM;
      if (e)
        ame_store_ptr_tx(tx, (void **)&e->value, v);
      else if (cache_insert(tx, sh, bucket, first, key, klen, v) == NULL)
        return respond_status(c, 507, "", head, keep);
      stm_add(tx, &sh->cache_computed.v, 1);
    }
    return respond(c, 200, "text/plain", "", v->data, v->len, head, keep);
  case HTTP_PUT:
  case HTTP_POST: {
    struct blob *nv = blob_new(tx, c->body, c->st.body_len);
    if (nv == NULL) return -ENOMEM;
    if (e) {
      ame_store_ptr_tx(tx, (void **)&e->value, nv);
      if (v) ame_tx_free(tx, v, 0);
    } else if (cache_insert(tx, sh, bucket, first, key, klen, nv) == NULL) {
      return respond_status(c, 507, "", 0, keep);
    }
    stm_add(tx, &sh->cache_sets.v, 1);
    return respond(c, e && v ? 200 : 201, "text/plain", "", "stored\n", 7, 0,
                   keep);
  }
  case HTTP_DELETE:
    if (v == NULL) return respond_status(c, 404, "", 0, keep);
    ame_store_ptr_tx(tx, (void **)&e->value, NULL);
    ame_tx_free(tx, v, 0);
    return respond(c, 200, "text/plain", "", "deleted\n", 8, 0, keep);
  }
  return respond_status(c, 405, "Allow: GET, HEAD, PUT, POST, DELETE\r\n",
                        head, keep);
}

/* Handle the request just parsed; return HTTP_KEEP, HTTP_CLOSE or
** -ENOMEM. */
static int handle(http_conn_t *c) {
  const http_parser *p = &c->st.parser;
  unsigned m = p->method;
  int keep = http_should_keep_alive(p) && !p->upgrade;
  int head = m == HTTP_HEAD;
  const char *url = c->url;
  size_t ulen = c->st.url_len;

  /* The hello path, which the HTTP benchmark measures: no copying, a fixed
  ** response. */
  if (m == HTTP_GET && keep && p->http_major == 1 && p->http_minor == 1 &&
      is_hello(url, ulen)) {
    count_hit(c->tx, c->sh, c->stripe, url, ulen);
    if (buf_add(&c->out, hello_response, sizeof hello_response - 1) != 0)
      return -ENOMEM;
    if (c->trace) c->trace(c->trace_arg, 200, 0, 14, 0);
    return HTTP_KEEP;
  }

  if (m == HTTP_CONNECT)
    return respond_status(c, 405, "Allow: GET, HEAD, PUT, POST, DELETE\r\n",
                          0, 0);

  /* The path: the target up to '?' or '#' (origin form), or the path of
  ** an absolute URL. */
  const char *path = NULL;
  size_t plen = 0;
  if (ulen > 0 && url[0] == '/') {
    path = url;
    while (plen < ulen && url[plen] != '?' && url[plen] != '#') plen++;
  } else if (ulen == 1 && url[0] == '*') {
    path = url;
    plen = 1;
  } else {
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, ulen, 0, &u) == 0 &&
        (u.field_set & (1 << UF_PATH))) {
      path = url + u.field_data[UF_PATH].off;
      plen = u.field_data[UF_PATH].len;
    }
  }
  if (path == NULL) return respond_status(c, 400, "", head, 0);
  count_hit(c->tx, c->sh, c->stripe, path, plen);

  int known = m == HTTP_GET || m == HTTP_HEAD || m == HTTP_PUT ||
              m == HTTP_POST || m == HTTP_DELETE;
  if (!known)
    return respond_status(c, 405, "Allow: GET, HEAD, PUT, POST, DELETE\r\n",
                          head, keep);
  if (is_hello(path, plen)) {
    if (m != HTTP_GET && m != HTTP_HEAD)
      return respond_status(c, 405, "Allow: GET, HEAD\r\n", 0, keep);
    return respond(c, 200, "text/plain", "", "Hello, world!\n", 14, head,
                   keep);
  }
  if (plen == 6 && memcmp(path, "/stats", 6) == 0) {
    if (m != HTTP_GET && m != HTTP_HEAD)
      return respond_status(c, 405, "Allow: GET, HEAD\r\n", 0, keep);
    return stats(c, head, keep);
  }
  if (plen > 7 && memcmp(path, "/cache/", 7) == 0)
    return cache(c, m, path + 7, plen - 7, keep);
  return respond_status(c, 404, "", head, keep);
}

static int is_tchar(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
         (ch >= '0' && ch <= '9') || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Does s (n bytes) start with a complete, well-formed request line
** (after optional empty lines)?  Used to tell an unknown method (501) from
** garbage (400). */
static int request_line_ok(const char *s, size_t n) {
  size_t i = 0, j;
  while (i < n && (s[i] == '\r' || s[i] == '\n')) i++;
  for (j = i; j < n && is_tchar(s[j]); j++) {
  }
  if (j == i || j >= n || s[j] != ' ') return 0; /* method SP */
  i = ++j;
  while (j < n && s[j] > ' ' && s[j] < 0x7f) j++;
  if (j == i || j >= n || s[j] != ' ') return 0; /* target SP */
  j++;
  if (n - j < 9 || memcmp(s + j, "HTTP/", 5) != 0 || s[j + 5] < '0' ||
      s[j + 5] > '9' || s[j + 6] != '.' || s[j + 7] < '0' || s[j + 7] > '9')
    return 0;
  j += 8;
  return s[j] == '\n' || (s[j] == '\r' && j + 1 < n && s[j + 1] == '\n');
}

/* The status for a request the parser rejected.  msg: the bytes from where
** the rejected request began, or NULL if it began in an earlier read. */
static int error_status(http_conn_t *c, enum http_errno e, const char *msg,
                        size_t n) {
  if (c->st.err &&
      (e == HPE_CB_url || e == HPE_CB_body || e == HPE_CB_headers_complete))
    return c->st.err;
  if (e == HPE_HEADER_OVERFLOW) return 431;
  if (e == HPE_INVALID_METHOD && msg && request_line_ok(msg, n)) return 501;
  return 400;
}

int http_conn_feed(ame_tx_t *tx, http_conn_t *c, const char *data,
                   size_t len) {
  c->out.len = 0;
  if (save(c) != 0 || ame_tx_on_abort(tx, restore, c) != 0) return -ENOMEM;
  if (c->st.done) return HTTP_CLOSE;
  c->tx = tx;
  http_parser *p = &c->st.parser;
  size_t off = 0;
  int rc = HTTP_KEEP;
  while (off < len && rc == HTTP_KEEP) {
    int fresh = !c->st.in_message;
    size_t start = off;
    off += http_parser_execute(p, &settings, data + off, len - off);
    enum http_errno e = HTTP_PARSER_ERRNO(p);
    if (e == HPE_PAUSED) {
      http_parser_pause(p, 0);
      /* Pipelined requests cost a few bytes each and may ask for a large
      ** response (/stats): past HTTP_MAX_OUTPUT, the rest of the read is
      ** not served, else a few KiB of input could make gigabytes of
      ** output before the stream's high watermark pauses its reading. */
      rc = c->out.len < HTTP_MAX_OUTPUT
               ? handle(c)
               : respond_status(c, 503, "", p->method == HTTP_HEAD, 0);
      c->st.url_len = c->st.body_len = 0; /* nothing for save() to copy */
    } else if (e != HPE_OK) {
      int status = error_status(c, e, fresh ? data + start : NULL,
                                len - start);
      /* A HEAD request's error has no body either (RFC 9110, 9.3.2). */
      rc = respond_status(c, status, "", c->st.head, 0);
    } else if (off < len) {
      rc = HTTP_CLOSE; /* cannot happen: the parser stopped for no reason */
    }
  }
  if (rc == HTTP_CLOSE) c->st.done = 1;
  c->tx = NULL;
  return rc;
}
