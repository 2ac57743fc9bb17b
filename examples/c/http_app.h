/*
** examples/c/http_app.h — the HTTP example's request handling, kept apart
** from the reactor so that the server (http.c) and the fuzz target
** (fuzz_http.c) run the very same code.
**
** Two kinds of state:
**  - shared state (http_shared_t): per-path hit counters and a small cache,
**    held in STM words and read and written only inside transactions, so
**    that every worker may serve every request without a lock;
**  - per-connection state (http_conn_t): the HTTP parser and the request
**    being read, owned by one stream alone and touched only by its
**    callbacks.  Its callbacks may still be re-run (a conflict on the shared
**    state aborts the attempt), so http_conn_feed() saves what it changes at
**    the start of each attempt and an abort handler puts it back: a re-run
**    parses the same bytes from the same state.
*/
#ifndef EXAMPLES_HTTP_APP_H
#define EXAMPLES_HTTP_APP_H

#include <ame/stm.h>

#include <stddef.h>
#include <stdint.h>

typedef struct http_shared http_shared_t;
typedef struct http_conn http_conn_t;

/* Limits.  A request whose header block is longer than HTTP_MAX_HEADER
** bytes gets 431, a longer target 414, a longer body 413. */
#define HTTP_MAX_HEADER 8192
#define HTTP_MAX_URL 2048
#define HTTP_MAX_BODY 4096
#define HTTP_MAX_KEY 128     /* /cache/<key> */
#define HTTP_MAX_PATHS 1024  /* distinct paths counted; later ones count as
                                "(other)" */
#define HTTP_MAX_CACHE 1024  /* cache entries */
#define HTTP_MAX_OUTPUT (1 << 20) /* responses to one read: a request read
                                     after this many bytes of them gets 503
                                     and the connection closes */

/* Process-wide setup (the parser's header limit).  Call once, before any
** other function here. */
void http_app_init(void);

/* Create the shared state, outside any transaction.  stripes: how many
** copies of each hit counter to keep (one per worker, so that workers
** counting the same path do not conflict; /stats adds them up).  Return
** NULL if memory ran out. */
http_shared_t *http_shared_new(unsigned stripes);

/* Free it, outside any transaction, once no transaction can use it. */
void http_shared_free(http_shared_t *sh);

/* Totals for the final report (outside any transaction, nothing running). */
typedef struct http_totals {
  uint64_t requests;      /* requests counted, over all paths */
  uint64_t paths;         /* distinct paths */
  uint64_t cache_entries; /* keys ever stored (deleted ones included) */
  uint64_t cache_computed;/* values computed on a GET miss */
  uint64_t cache_sets;    /* PUT / POST */
} http_totals_t;
void http_shared_totals(http_shared_t *sh, http_totals_t *out);

/* Create a connection's state inside transaction tx (freed again if the
** attempt aborts).  stripe: which copy of the counters its requests add to
** (its worker's index).  Return NULL if memory ran out. */
http_conn_t *http_conn_new(ame_tx_t *tx, http_shared_t *sh, unsigned stripe);

/* Free it inside transaction tx (at commit). */
void http_conn_free(ame_tx_t *tx, http_conn_t *c);

/* Feed len bytes read from the connection, inside transaction tx; at most
** once per transaction.  Responses to every request completed by these
** bytes are appended, in order, to the connection's output (emptied first;
** see http_conn_output).  Return HTTP_KEEP, HTTP_CLOSE (send the output,
** then close: Connection: close, HTTP/1.0, a malformed request, answered
** with an error status, or a request met once the responses before it
** passed HTTP_MAX_OUTPUT bytes, answered 503 unhandled), or -ENOMEM.
** After HTTP_CLOSE, later bytes are ignored. */
enum { HTTP_KEEP = 0, HTTP_CLOSE = 1 };
int http_conn_feed(ame_tx_t *tx, http_conn_t *c, const char *data,
                   size_t len);

/* The output of the last http_conn_feed(): valid until the next call. */
const char *http_conn_output(const http_conn_t *c, size_t *len);

/* Testing hook: fn(arg, status, head_only, body_len, closing) is called for
** every response appended to the output, in order (head_only: the body is
** left out, as for HEAD). */
typedef void (*http_trace_fn)(void *arg, int status, int head_only,
                              size_t body_len, int closing);
void http_conn_set_trace(http_conn_t *c, http_trace_fn fn, void *arg);

#endif /* EXAMPLES_HTTP_APP_H */
