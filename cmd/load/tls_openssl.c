/*
** cmd/load/tls_openssl.c — https:// for `ame load` with OpenSSL: the TLS
** seam of internal.h, built where the build finds OpenSSL's libssl.
**
** How data travels.  Each stream has an OpenSSL client (struct ld_tls)
** over two memory BIOs: the reactor's bytes go in, what OpenSSL wants sent
** comes out and is written to the stream.  OpenSSL's state cannot be
** undone, so it is never touched inside a transaction: the stream's
** callbacks (conn.c) hand the work to commit handlers (tls_open_commit,
** tls_data_commit, tls_free_commit), which run once, after the callback
** committed, on the stream's worker, in order.  There the response bytes
** go through ld_plain_data() with no transaction (nothing to undo), and
** requests are written with ame_stream_write(), which outside a
** transaction acts at once.  Like wrk, the server's certificate is not
** verified; the server name is sent (SNI) when the URL's host is a name.
** --rate is refused with https (its timers may run on another worker than
** the stream's).
**
** Failures.  A failed handshake counts a `tls` error and the slot
** connects again; the first error's text is kept (ld_run.tls_error).  When
** no handshake has ever completed and as many have failed as there are
** connections, the server does not speak TLS (or not ours): the run ends
** with ld_run.tls_fatal set, and the report says why in one line.
*/
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ld_tls {
  SSL *ssl;
  BIO *rbio, *wbio; /* network side: bytes received, bytes to send */
  int handshaken;
  int failed;       /* tls_fail() counted it */
  const char *lost; /* the stream closed during the handshake: why */
};

/* Bytes received, on their way from on_data to tls_data_commit. */
struct tls_chunk {
  ld_conn_t *c;
  ame_stream_t *s;
  size_t len;
  char data[];
};

/* The client for the whole run: set up before the reactor starts, then
** only read (the counters: atomics). */
static struct {
  SSL_CTX *ctx;
  char sni[256];     /* the server name sent, or "" */
  int ok_ever;       /* atomic: some TLS handshake completed */
  unsigned failures; /* atomic: handshakes failed before that */
  int error_set;     /* atomic: ld_run.tls_error is set */
} client;

const char *ld_tls_unsupported(void) { return NULL; }

int ld_tls_setup(const ld_run_t *ld) {
  memset(&client, 0, sizeof client);
  client.ctx = SSL_CTX_new(TLS_client_method());
  if (client.ctx == NULL ||
      !SSL_CTX_set_min_proto_version(client.ctx, TLS1_2_VERSION)) {
    fprintf(stderr, "ame load: cannot set up TLS: %s\n",
            ERR_reason_error_string(ERR_get_error()));
    return -1;
  }
  SSL_CTX_set_verify(client.ctx, SSL_VERIFY_NONE, NULL);
  unsigned char addr[16];
  if (inet_pton(AF_INET, ld->host, addr) != 1 &&
      inet_pton(AF_INET6, ld->host, addr) != 1)
    snprintf(client.sni, sizeof client.sni, "%s", ld->host);
  return 0;
}

void ld_tls_free(void) {
  SSL_CTX_free(client.ctx);
  client.ctx = NULL;
}

static void tls_conn_free(struct ld_tls *t) {
  if (t == NULL) return;
  SSL_free(t->ssl); /* and its BIOs */
  free(t);
}

static struct ld_tls *tls_conn_new(void) {
  struct ld_tls *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->ssl = SSL_new(client.ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    return NULL;
  }
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  SSL_set_connect_state(t->ssl);
  if (client.sni[0]) SSL_set_tlsext_host_name(t->ssl, client.sni);
  return t;
}

/* Write what OpenSSL has to send to s.  Return 0 or -errno. */
static int tls_flush(struct ld_tls *t, ame_stream_t *s) {
  char buf[16384];
  int n;
  while ((n = BIO_read(t->wbio, buf, (int)sizeof buf)) > 0) {
    int rc = ame_stream_write(s, buf, (size_t)n);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Keep the first TLS error's text for the final message. */
static void tls_note_error(const char *what) {
  unsigned long e = ERR_peek_last_error();
  if (__atomic_exchange_n(&client.error_set, 1, __ATOMIC_SEQ_CST) == 0) {
    char reason[200] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    snprintf(ld_run.tls_error, sizeof ld_run.tls_error, "%s%s%s", what,
             reason[0] ? ": " : "", reason);
  }
  ERR_clear_error();
}

/* A handshake failed.  When none has ever completed and as many have
** failed as there are connections, the run ends (the server does not
** speak TLS, or not ours). */
static void tls_count_failure(const char *what) {
  tls_note_error(what);
  if (!LD_LOAD_SC(&client.ok_ever) &&
      __atomic_add_fetch(&client.failures, 1, __ATOMIC_SEQ_CST) >=
          ld_run.nconns &&
      __atomic_exchange_n(&ld_run.tls_fatal, 1, __ATOMIC_SEQ_CST) == 0) {
    ld_stop_commit(NULL);
    ame_reactor_stop(ld_run.r);
  }
}

/* A TLS failure on s: count it, and start over on a new connection. */
static void tls_fail(ld_conn_t *c, ame_stream_t *s, ld_stats_t *ws,
                     const char *what) {
  ld_set_idle(c);
  ld_bump(&ws->errors[LD_ERR_TLS], 1);
  if (c->tls) c->tls->failed = 1;
  tls_count_failure(what);
  ame_stream_abort(s);
}

int ld_tls_lost(struct ld_tls *t, int timed_out) {
  if (t->handshaken) return 0;
  if (!t->failed)
    t->lost = timed_out ? "the TLS handshake timed out"
                        : "the server closed the connection during the TLS "
                          "handshake";
  return 1;
}

int ld_tls_write_request(ld_conn_t *c, ame_stream_t *s) {
  struct ld_tls *t = c->tls;
  if (t == NULL ||
      SSL_write(t->ssl, ld_run.request, (int)ld_run.request_len) <= 0) {
    tls_note_error("TLS write failed");
    return -EPIPE;
  }
  return tls_flush(t, s);
}

/* Go on with the handshake; once it is done, send the first request.
** Return 0 if the stream goes on, 1 if it is being closed. */
static int tls_handshake(ld_conn_t *c, ame_stream_t *s, ld_stats_t *ws) {
  struct ld_tls *t = c->tls;
  int r = SSL_do_handshake(t->ssl);
  if (r == 1) {
    t->handshaken = 1;
    LD_STORE_SC(&client.ok_ever, 1);
    if (tls_flush(t, s) < 0) return 1; /* closing: on_close reconnects */
    ld_set_idle(c);
    ld_send_now(c, s, ws, ld_now_ns());
    return 0;
  }
  if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ)
    return tls_flush(t, s) < 0;
  tls_fail(c, s, ws, "TLS handshake failed");
  return 1;
}

/* After on_open committed: a new TLS client for c's stream, and the
** handshake's first message.  The handshake counts as a request in
** flight, so --timeout applies to it. */
static void tls_open_commit(void *arg) {
  ld_conn_t *c = arg;
  ame_stream_t *s = (ame_stream_t *)LD_LOAD(&c->stream_w);
  if (s == NULL) return;
  ld_stats_t *ws = &ld_run.ws[ame_stream_worker(s)];
  if (LD_LOAD_SC(&ld_run.draining)) {
    ame_stream_close(s);
    return;
  }
  c->tls = tls_conn_new();
  if (c->tls == NULL) {
    tls_fail(c, s, ws, "out of memory");
    return;
  }
  LD_STORE_SC(&c->inflight_since, ld_now_ns());
  tls_handshake(c, s, ws);
}

int ld_tls_open(ame_tx_t *tx, ld_conn_t *c) {
  return ame_tx_on_commit(tx, tls_open_commit, c) != 0 ? -ENOMEM : 0;
}

/* After on_data committed: decrypt what came, and handle the plaintext. */
static void tls_data_commit(void *arg) {
  struct tls_chunk *k = arg;
  ld_conn_t *c = k->c;
  ame_stream_t *s = k->s;
  struct ld_tls *t = c->tls;
  ld_stats_t *ws = &ld_run.ws[ame_stream_worker(s)];
  int in = t ? BIO_write(t->rbio, k->data, (int)k->len) : 0;
  int whole = t && in == (int)k->len;
  free(k);
  if (!whole) {
    if (t) tls_fail(c, s, ws, "out of memory");
    return;
  }
  if (!t->handshaken && (tls_handshake(c, s, ws) || !t->handshaken)) return;
  char buf[16384];
  for (;;) {
    int n = SSL_read(t->ssl, buf, (int)sizeof buf);
    if (n > 0) {
      int rc = ld_plain_data(NULL, c, s, ws, buf, (size_t)n);
      if (rc < 0) {
        ld_set_idle(c);
        ld_bump(&ws->errors[LD_ERR_READ], 1);
        ame_stream_abort(s);
      }
      if (rc != 0) return;
      continue;
    }
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify: the server is done */
      ld_plain_eof(NULL, c, s, ws); /* (cannot fail without a tx) */
      return;
    }
    tls_fail(c, s, ws, "TLS read failed");
    return;
  }
  if (tls_flush(t, s) < 0) ame_stream_abort(s);
}

/* Copy the bytes for tls_data_commit. */
int ld_tls_data(ame_tx_t *tx, ld_conn_t *c, ame_stream_t *s,
                const char *data, size_t len) {
  struct tls_chunk *k = malloc(sizeof *k + len);
  if (k == NULL) return -ENOMEM;
  k->c = c;
  k->s = s;
  k->len = len;
  memcpy(k->data, data, len);
  if (ame_tx_on_abort(tx, free, k) != 0) {
    free(k);
    return -ENOMEM;
  }
  return ame_tx_on_commit(tx, tls_data_commit, k) != 0 ? -ENOMEM : 0;
}

/* After on_close committed. */
static void tls_free_commit(void *arg) {
  struct ld_tls *t = arg;
  if (t->lost) tls_count_failure(t->lost);
  tls_conn_free(t);
}

int ld_tls_release(ame_tx_t *tx, struct ld_tls *t) {
  return ame_tx_on_commit(tx, tls_free_commit, t) != 0 ? -ENOMEM : 0;
}
