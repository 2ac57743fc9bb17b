/*
** cmd/load/conn.c — a connection slot of `ame load`: the callbacks of its
** reactor streams, the response parser, and --rate's schedule
** (internal.h has the run's shape and who may touch what).
**
** How data travels.  ld_reconnect() opens a stream for a slot; on_open
** sends the first request (or, with https://, hands the stream to the TLS
** seam, which sends it once its handshake is done).  on_data feeds the
** bytes to http-parser (ld_plain_data(); with https://, ld_tls_data()
** decrypts them first and calls ld_plain_data() after the callback
** commits); on_message_complete records the final response (an interim
** 1xx is skipped) in the worker's results (ld_stats_t) and the next
** request goes out at once (ld_send_now()) or, with --rate, when its slot
** is due (schedule(), then rate_cb on a timer).  A response to no
** request, or bytes the parser refuses, count a parse error and abort the
** stream.  on_close counts what the stream's end means (a read, write,
** timeout or TLS error, or a request abandoned at the stop) and connects
** the slot again, after RECONNECT_MS if the connect itself failed; when
** every slot's first connect fails before any opened, the run ends
** (ld_run.g.fatal_error).
**
** Every callback here is a transaction: it undo-logs the slot's owned
** part and its worker's counters (save_conn()) before changing them, and
** touches the shared part only through STM words and atomics.
*/
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define RECONNECT_MS 50 /* wait after a failed connect */

static const ame_stream_cbs_t conn_cbs;

/* Undo-log what a stream callback of c may change: the slot's owned part
** and its worker's counters.  Return 0 or -ENOMEM. */
static int save_conn(ame_tx_t *tx, ld_conn_t *c, ld_stats_t *ws) {
  int rc = ame_tx_save(tx, c, LD_CONN_OWNED_SIZE);
  if (rc == 0) rc = ame_tx_save(tx, ws, LD_STATS_COUNTERS_SIZE);
  return rc;
}

int ld_reconnect(ld_conn_t *c) {
  ame_stream_t *s;
  return ame_tcp_connect(ld_run.r, ld_run.addr, ld_run.port, &conn_cbs, c,
                         &s);
}

/* The time is published before the draining flag is read: see
** internal.h. */
int ld_send_now(ld_conn_t *c, ame_stream_t *s, ld_stats_t *ws,
                uint64_t now) {
  LD_STORE_SC(&c->inflight_since, now ? now : 1);
  if (LD_LOAD_SC(&ld_run.draining)) {
    ld_set_idle(c);
    ame_stream_close(s);
    return 0;
  }
  int rc = ld_run.tls ? ld_tls_write_request(c, s)
                      : ame_stream_write(s, ld_run.request,
                                         ld_run.request_len);
  if (rc < 0) {
    ld_set_idle(c);
    ld_bump(&ws->errors[LD_ERR_WRITE], 1);
    ame_stream_abort(s);
  }
  return 0;
}

static int rate_cb(ame_tx_t *tx, ame_timer_t *t);

/* --rate: send c's current request (due at c->intended_ns) now if it is
** due within a millisecond, else start a timer for it.  A request due at
** or after the deadline is never sent, even before the housekeeper has
** seen the deadline: the slot stays idle (its stream open) until the
** stop. */
static int schedule(ld_conn_t *c, ame_stream_t *s, ld_stats_t *ws,
                    uint64_t now) {
  if (c->intended_ns >= ld_run.start_ns + ld_run.duration_ns) {
    ld_set_idle(c);
    return 0;
  }
  if (c->intended_ns <= now + 1000000) return ld_send_now(c, s, ws, now);
  ld_set_idle(c);
  if (LD_LOAD_SC(&ld_run.draining)) {
    ame_stream_close(s);
    return 0;
  }
  uint64_t ms = (c->intended_ns - now) / 1000000; /* early rather than late */
  uintptr_t d = ((uintptr_t)c->index << 32) | c->epoch;
  int rc = ame_timer_start(ld_run.r, ms, 0, rate_cb, (void *)d, NULL);
  return rc == -ESHUTDOWN ? 0 : rc; /* the stop is under way: no more */
}

/* A --rate timer's request, sent once its transaction commits. */
struct rate_send {
  ld_conn_t *c;
  ame_stream_t *s; /* kept alive until the commit handlers return */
  uint32_t epoch;  /* s's generation */
};

/* Take back the time `since` that a --rate send published on c, unless
** something else has been stored there since (the next stream's). */
static void unpublish(ld_conn_t *c, uint64_t since) {
  __atomic_compare_exchange_n(&c->inflight_since, &since, 0, 0,
                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* After rate_cb commits: publish the time, then (as ld_send_now) read the
** draining flag, then write.  The time is visible only from here, never
** from an attempt that aborts.  on_close may have committed since rate_cb
** did (it runs on the stream's worker, this on any): closed_commit stores
** closed_epoch before it clears the time, and this reads closed_epoch
** after publishing it, so either the clear comes after the publication
** or this sees the close and takes the time back. */
static void rate_send_commit(void *arg) {
  struct rate_send *r = arg;
  ld_conn_t *c = r->c;
  uint64_t now = ld_now_ns();
  if (now == 0) now = 1;
  LD_STORE_SC(&c->inflight_since, now);
  if (LD_LOAD_SC(&ld_run.draining) ||
      (uint32_t)LD_LOAD_SC(&c->closed_epoch) != r->epoch ||
      ame_stream_write(r->s, ld_run.request, ld_run.request_len) < 0)
    unpublish(c, now); /* a closing stream: its on_close reconnects */
  free(r);
}

/* A --rate timer: write the request on the slot's stream, once this
** commits, if it is still the stream that asked.  Runs on any worker, so
** it touches only the slot's shared part. */
static int rate_cb(ame_tx_t *tx, ame_timer_t *t) {
  uintptr_t d = (uintptr_t)ame_handle_data(t);
  ld_conn_t *c = &ld_run.conns[d >> 32];
  if (LD_LOAD_SC(&ld_run.draining)) return 0;
  if ((uint32_t)ame_load_word_tx(tx, &c->epoch_w) != (uint32_t)d) return 0;
  ame_stream_t *s = ame_load_ptr_tx(tx, (void *const *)&c->stream_w);
  if (s == NULL) return 0;
  struct rate_send *r = malloc(sizeof *r);
  if (r == NULL) return -ENOMEM;
  *r = (struct rate_send){.c = c, .s = s, .epoch = (uint32_t)d};
  int rc = ame_tx_on_commit(tx, rate_send_commit, r);
  if (rc) {
    free(r);
    return rc;
  }
  /* An abort drops the commit handler: free r then. */
  return ame_tx_on_abort(tx, free, r);
}

/* Is p's response an interim one (1xx but 101, RFC 9110 15.2), which
** the final response to the same request follows? */
static int interim(const http_parser *p) {
  return p->status_code / 100 == 1 && p->status_code != 101;
}

/* http-parser: one response is complete.  Record it, unless it is an
** interim response (100 Continue, 103 Early Hints): then keep waiting for
** the final one. */
static int on_message_complete(http_parser *p) {
  ld_conn_t *c = p->data;
  if (interim(p)) return 0;
  uint64_t since = LD_LOAD(&c->inflight_since);
  if (c->completed || since == 0) {
    c->bad = 1; /* a response to no request */
    return 1;
  }
  uint64_t now = ld_now_ns();
  uint64_t start = since;
  if (ld_run.rate > 0 && c->intended_ns < since) start = c->intended_ns;
  uint64_t lat = now > start ? now - start : 0;
  ld_stats_t *ws = c->ws;
  hist_t *h = &ws->hist;
  unsigned code = p->status_code;
  uint64_t *st = code < LD_NSTATUS ? &ws->status[code] : &ws->status_other;
  /* (c->tx is NULL where https responses are read: after the callback's
  ** commit, in the TLS code, where nothing is undone.) */
  if (c->tx && (ame_tx_save(c->tx, &h->count, HIST_SUMMARY_SIZE) ||
                ame_tx_save(c->tx, &h->counts[hist_index(h, lat)],
                            sizeof(uint64_t)) ||
                ame_tx_save(c->tx, st, sizeof *st))) {
    c->bad = -ENOMEM;
    return 1;
  }
  hist_record(h, lat);
  (*st)++;
  ld_bump(&ws->requests, 1);
  c->completed = 1;
  c->keep_alive = http_should_keep_alive(p);
  /* --rate: the slot's next request is due one interval after this one,
  ** on this connection or, if the response closes it, on the next. */
  if (ld_run.rate > 0) c->intended_ns += ld_run.interval_ns;
  return 0;
}

/* http-parser: a response to HEAD, a 204 and a 304 have no body,
** whatever their headers say (1: "no body follows"; RFC 9110 6.4.1). */
static int on_headers_complete(http_parser *p) {
  return ld_run.head || p->status_code == 204 || p->status_code == 304;
}

static const http_parser_settings parser_settings = {
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/* A protocol error on s: count it and start over on a new connection. */
static int protocol_error(ld_conn_t *c, ame_stream_t *s, ld_stats_t *ws) {
  ld_set_idle(c);
  ld_bump(&ws->errors[LD_ERR_PARSE], 1);
  ame_stream_abort(s);
  return 0;
}

static int on_open(ame_tx_t *tx, ame_stream_t *s) {
  ld_conn_t *c = ame_handle_data(s);
  ld_stats_t *ws = &ld_run.ws[ame_stream_worker(s)];
  int rc = save_conn(tx, c, ws);
  if (rc) return rc;
  ame_store_ptr_tx(tx, (void **)&c->stream_w, s);
  if (ame_load_word_tx(tx, &ld_run.g.opened_ever) == 0)
    ame_store_word_tx(tx, &ld_run.g.opened_ever, 1);
  c->open = 1;
  c->attempted = 1;
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  ame_stream_nodelay(s, 1);
  if (ld_run.tls) return ld_tls_open(tx, c); /* the handshake first */
  uint64_t now = ld_now_ns();
  return ld_run.rate > 0 ? schedule(c, s, ws, now)
                         : ld_send_now(c, s, ws, now);
}

int ld_plain_data(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                  ld_stats_t *ws, const char *data, size_t len) {
  c->tx = tx;
  c->ws = ws;
  c->completed = 0;
  c->bad = 0;
  size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
  if (c->bad < 0) return c->bad;
  if (c->bad || HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || n != len)
    return protocol_error(c, s, ws), 1;
  if (!c->completed) return 0;
  if (!c->keep_alive) {
    ld_set_idle(c);
    ame_stream_close(s); /* on_close connects again */
    return 1;
  }
  uint64_t now = ld_now_ns();
  if (ld_run.rate <= 0) return ld_send_now(c, s, ws, now);
  return schedule(c, s, ws, now);
}

static int on_data(ame_tx_t *tx, ame_stream_t *s, const char *data,
                   size_t len) {
  ld_conn_t *c = ame_handle_data(s);
  ld_stats_t *ws = &ld_run.ws[ame_stream_worker(s)];
  int rc = save_conn(tx, c, ws);
  if (rc) return rc;
  ws->bytes += len;
  if (ld_run.tls) return ld_tls_data(tx, c, s, data, len);
  rc = ld_plain_data(tx, c, s, ws, data, len);
  return rc < 0 ? rc : 0;
}

int ld_plain_eof(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                 ld_stats_t *ws) {
  c->tx = tx;
  c->ws = ws;
  c->completed = 0;
  c->bad = 0;
  /* A response whose body runs to EOF ends here; one cut short stays in
  ** flight and on_close counts a read error. */
  http_parser_execute(&c->parser, &parser_settings, NULL, 0);
  if (c->bad < 0) return c->bad;
  if (c->completed) ld_set_idle(c);
  ame_stream_close(s);
  return 0;
}

static int on_eof(ame_tx_t *tx, ame_stream_t *s) {
  ld_conn_t *c = ame_handle_data(s);
  ld_stats_t *ws = &ld_run.ws[ame_stream_worker(s)];
  int rc = save_conn(tx, c, ws);
  if (rc) return rc;
  return ld_plain_eof(tx, c, s, ws);
}

/* After on_close commits: the slot's stream is closed (closed_epoch, for a
** --rate send that committed before this: rate_send_commit) and has
** nothing in flight. */
static void closed_commit(void *arg) {
  ld_conn_t *c = arg;
  LD_STORE_SC(&c->closed_epoch, c->epoch);
  ld_set_idle(c);
}

/* A slot's wait after a failed connect is over.  The slot has no stream,
** so nothing else touches it meanwhile. */
static int reconnect_cb(ame_tx_t *tx, ame_timer_t *t) {
  (void)tx;
  if (LD_LOAD_SC(&ld_run.draining) || LD_LOAD_SC(&ld_run.stopped)) return 0;
  return ld_reconnect(ame_handle_data(t));
}

static void on_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  ld_conn_t *c = ame_handle_data(s);
  ld_stats_t *ws = &ld_run.ws[ame_stream_worker(s)];
  if (save_conn(tx, c, ws) || ame_tx_on_commit(tx, closed_commit, c)) return;
  struct ld_tls *t = c->tls;
  if (t) { /* freed once this commits (no handler of it runs later) */
    if (ld_tls_release(tx, t) != 0) return;
    c->tls = NULL;
  }
  uint64_t since = LD_LOAD(&c->inflight_since);
  int stopped = LD_LOAD_SC(&ld_run.stopped);
  int draining = LD_LOAD_SC(&ld_run.draining);
  if (c->open) {
    c->open = 0;
    int timed_out = LD_LOAD(&c->timed_out) == (uint64_t)c->epoch + 1;
    c->epoch++;
    ame_store_ptr_tx(tx, (void **)&c->stream_w, NULL);
    ame_store_word_tx(tx, &c->epoch_w, c->epoch);
    /* https: a stream that ends during its handshake is a TLS error. */
    int handshaking = t && since && !stopped && ld_tls_lost(t, timed_out);
    if (timed_out)
      ld_bump(&ws->errors[handshaking ? LD_ERR_TLS : LD_ERR_TIMEOUT], 1);
    else if (since && stopped)
      ld_bump(&ws->abandoned, 1);
    else if (since)
      ld_bump(&ws->errors[handshaking        ? LD_ERR_TLS
                          : status == -EPIPE ? LD_ERR_WRITE
                                             : LD_ERR_READ],
              1);
    else if (status < 0 && !stopped)
      ld_bump(&ws->errors[LD_ERR_READ], 1);
    if (since && ld_run.rate > 0) c->intended_ns += ld_run.interval_ns;
    /* (-ESHUTDOWN: the reactor's stop took effect since we looked.) */
    int rc = !draining && !stopped ? ld_reconnect(c) : 0;
    if (rc != 0 && rc != -ESHUTDOWN) ld_bump(&ws->errors[LD_ERR_CONNECT], 1);
    return;
  }
  /* The connect failed (or the stop came first). */
  if (stopped || status >= 0) return;
  ld_bump(&ws->errors[LD_ERR_CONNECT], 1);
  int first = !c->attempted;
  c->attempted = 1;
  if (first && ame_load_word_tx(tx, &ld_run.g.opened_ever) == 0) {
    uintptr_t n = ame_load_word_tx(tx, &ld_run.g.initial_failures) + 1;
    ame_store_word_tx(tx, &ld_run.g.initial_failures, n);
    if (n == ld_run.nconns) { /* every first connect failed: give up */
      ame_store_word_tx(tx, &ld_run.g.fatal_error, (uintptr_t)-status);
      ld_begin_stop(tx);
      return;
    }
  }
  if (!draining)
    ame_timer_start(ld_run.r, RECONNECT_MS, 0, reconnect_cb, c, NULL);
}

static const ame_stream_cbs_t conn_cbs = {
    .on_open = on_open,
    .on_data = on_data,
    .on_eof = on_eof,
    .on_close = on_close,
};
