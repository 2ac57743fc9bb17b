/*
** bindings/ame/tls.c — the OpenSSL half of TLS in C for the binding's
** fast streams (see tls.h).  Everything here runs on the stream's worker
** or a thread of the handshake pool, holding the SSL object's lock, except
** ame__tls_init and ame__tls_set_alpn (the Python thread, before the
** worker has the object), ame__tls_release (a reference dropped) and
** ame__tls_error_strings (any thread: OpenSSL's string tables).
**
** OpenSSL's error queue is per thread: each call below starts with it
** empty and leaves it empty, so that one connection's error never shows
** up as another's.  Errors are recorded the way pyOpenSSL raises them
** (Connection._raise_ssl_error), so that the Python side reports the same
** exception Twisted's own TLS would have.
*/
#include "tls.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

int ame__tls_same_library(uintptr_t method) {
  /* TLS_method() is a static object of the library that answers. */
  return method != 0 && method == (uintptr_t)TLS_method();
}

/* Nonzero if no session ticket that server connection s sends can ever
** resume a session: its tickets are stateful (SSL_OP_NO_TICKET: under TLS
** 1.3 a ticket then only names a session in the server's cache) and its
** context keeps no sessions (no server cache, no external one).  That is
** Twisted's CertificateOptions by default (enableSessions=False), on which
** OpenSSL would still make, send and forget two tickets per connection. */
static int tickets_dead(SSL *s) {
  SSL_CTX *ctx = SSL_get_SSL_CTX(s);
  return (SSL_get_options(s) & SSL_OP_NO_TICKET) &&
         !(SSL_CTX_get_session_cache_mode(ctx) & SSL_SESS_CACHE_SERVER) &&
         SSL_CTX_sess_get_get_cb(ctx) == NULL &&
         SSL_CTX_sess_get_new_cb(ctx) == NULL;
}

/* ------------------------------------------------------------------------
** The lock of an SSL object: a recursive mutex in the object's ex_data,
** so that it lives exactly as long as the object, which whoever takes it
** holds a reference to (the worker through t, Python through pyOpenSSL's
** Connection).
*/

static int lock_index = -1; /* set once, under the GIL */

static void lock_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                      long argl, void *argp) {
  (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
  if (ptr == NULL) return;
  pthread_mutex_destroy(ptr);
  free(ptr);
}

/* Python thread.  The lock of s, made if it has none.  NULL: no memory. */
static pthread_mutex_t *lock_attach(SSL *s) {
  if (lock_index < 0) {
    lock_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, lock_free);
    if (lock_index < 0) return NULL;
  }
  pthread_mutex_t *m = SSL_get_ex_data(s, lock_index);
  if (m != NULL) return m;
  pthread_mutexattr_t a;
  if ((m = malloc(sizeof *m)) == NULL) return NULL;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  int rc = pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  if (rc != 0) {
    free(m);
    return NULL;
  }
  if (!SSL_set_ex_data(s, lock_index, m)) {
    pthread_mutex_destroy(m);
    free(m);
    ERR_clear_error();
    return NULL;
  }
  return m;
}

pthread_mutex_t *ame__tls_lock_of(uintptr_t ssl) {
  if (lock_index < 0 || ssl == 0) return NULL;
  return SSL_get_ex_data((SSL *)ssl, lock_index);
}

int ame__tls_init(struct ame__tls *t, uintptr_t ssl) {
  SSL *s = (SSL *)ssl;
  memset(t, 0, sizeof *t);
  BIO *r = SSL_get_rbio(s), *w = SSL_get_wbio(s);
  if (r == NULL || w == NULL || r == w || BIO_method_type(r) != BIO_TYPE_MEM ||
      BIO_method_type(w) != BIO_TYPE_MEM)
    return -1;
  if ((t->lock = lock_attach(s)) == NULL) return -1;
  if (!SSL_up_ref(s)) return -1;
  t->ssl = s;
  t->rbio = r;
  t->wbio = w;
  t->server = SSL_is_server(s);
  if (t->server && tickets_dead(s)) SSL_set_num_tickets(s, 0);
  /* A write that waited (ame__tls_encrypt returning 1) is retried from
  ** the stream's queue, which may have grown meanwhile. */
  SSL_set_mode(s, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return 0;
}

void ame__tls_release(struct ame__tls *t) {
  SSL_free((SSL *)t->ssl); /* our reference: pyOpenSSL may hold another */
  t->ssl = NULL;
}

void ame__tls_plain_verify(struct ame__tls *t) {
  SSL *s = (SSL *)t->ssl;
  SSL_set_verify(s, SSL_get_verify_mode(s), NULL);
}

static void no_info(const SSL *s, int where, int ret) {
  (void)s, (void)where, (void)ret;
}

void ame__tls_quiet_info(struct ame__tls *t) {
  /* A connection's own callback wins over its context's (NULL would
  ** not: then the context's is called). */
  SSL_set_info_callback((SSL *)t->ssl, no_info);
}

int ame__tls_feed(struct ame__tls *t, const void *p, size_t n) {
  while (n > 0) {
    int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
    int w = BIO_write((BIO *)t->rbio, p, chunk);
    if (w <= 0) {
      ERR_clear_error();
      return -ENOMEM;
    }
    p = (const char *)p + w;
    n -= (size_t)w;
  }
  return 0;
}

void ame__tls_input_ended(struct ame__tls *t) {
  /* A memory BIO with no data then reads as end of file. */
  BIO_set_mem_eof_return((BIO *)t->rbio, 0);
}

int ame__tls_heavy(const struct ame__tls *t) {
  SSL *s = (SSL *)t->ssl;
  if (!t->server) return 1;
  char *p;
  long n = BIO_get_mem_data((BIO *)t->rbio, &p);
  if (n <= 0) return 0; /* nothing to read: the step only asks for more */
  if ((SSL_get_verify_mode(s) & SSL_VERIFY_PEER) ||
      SSL_get_state(s) == TLS_ST_BEFORE) /* no whole ClientHello yet */
    return 1;
  /* Is it a plaintext handshake record (type 22) whose first message is
  ** a ClientHello (1) or a ClientKeyExchange (16)?  (Bytes of a record
  ** OpenSSL has begun to read may come first: then the answer is only
  ** less exact.) */
  return n >= 6 && p[0] == 22 && (p[5] == 1 || p[5] == 16);
}

/* Record why the SSL call that returned rc failed, as pyOpenSSL would
** raise it; return the SSL_get_error() code. */
static int record(struct ame__tls *t, int rc) {
  int e = SSL_get_error((SSL *)t->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
      e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_NONE) {
    ERR_clear_error();
    return e;
  }
  t->failed = 1;
  if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    /* Memory BIOs have no errno: pyOpenSSL says "Unexpected EOF". */
    t->ekind = AME_TLS_EEOF;
    return e;
  }
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
  /* OpenSSL 3 reports an end of file without close_notify so; pyOpenSSL
  ** still raises it as the EOF above. */
  if (e == SSL_ERROR_SSL &&
      ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    ERR_clear_error();
    t->ekind = AME_TLS_EEOF;
    return e;
  }
#endif
  t->ekind = AME_TLS_ESSL;
  t->ncodes = 0;
  unsigned long code;
  while ((code = ERR_get_error()) != 0)
    if (t->ncodes < AME_TLS_MAX_CODES) t->codes[t->ncodes++] = code;
  return e;
}

/* The SSL call that failed found the end of the input without
** close_notify (AME_TLS_EEOF): drop what it wrote to the write BIO, which
** held keep bytes before it (OpenSSL 3 queues a fatal alert there).
** Twisted's TLS learns of that end only once the transport is lost, so it
** never sends it; nor do we. */
static void quiet_eof(struct ame__tls *t, size_t keep) {
  BIO *w = (BIO *)t->wbio;
  char *p, *copy = NULL;
  if (t->ekind != AME_TLS_EEOF) return;
  long n = BIO_get_mem_data(w, &p);
  if (n <= 0 || (size_t)n <= keep || keep > (1u << 30)) return;
  if (keep > 0) {
    copy = malloc(keep);
    if (copy == NULL) return; /* the alert goes out: no records lost */
    memcpy(copy, p, keep);
  }
  (void)BIO_reset(w); /* a writable memory BIO: now empty */
  if (keep > 0) (void)BIO_write(w, copy, (int)keep);
  free(copy);
  ERR_clear_error();
}

int ame__tls_advance(struct ame__tls *t, ame__ibuf_t *plain, char *buf,
                     size_t cap) {
  SSL *s = (SSL *)t->ssl;
  int out = 0;
  if (t->failed) return 0;
  ERR_clear_error();
  if (!t->hs) {
    size_t keep = BIO_ctrl_pending((BIO *)t->wbio);
    int rc = SSL_do_handshake(s);
    if (rc != 1) {
      int e = record(t, rc);
      if (t->failed) {
        quiet_eof(t, keep);
        return AME_TLS_FAILED;
      }
      if (e == SSL_ERROR_ZERO_RETURN) {
        t->closed = 1;
        return AME_TLS_CLOSED;
      }
      return 0; /* wants more bytes */
    }
    t->hs = 1;
    out |= AME_TLS_HANDSHAKEN;
  }
  while (!t->closed) {
    size_t keep = BIO_ctrl_pending((BIO *)t->wbio);
    int rc = SSL_read(s, buf, cap > (1u << 30) ? 1 << 30 : (int)cap);
    if (rc > 0) {
      if (ame__ibuf_append(plain, buf, (size_t)rc) != 0) {
        t->failed = 1;
        t->ekind = AME_TLS_ESYSCALL;
        t->eno = ENOMEM;
        return out | AME_TLS_FAILED;
      }
      continue;
    }
    int e = record(t, rc);
    if (t->failed) {
      quiet_eof(t, keep);
      return out | AME_TLS_FAILED;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
      t->closed = 1;
      out |= AME_TLS_CLOSED;
    }
    break;
  }
  return out;
}

int ame__tls_encrypt(struct ame__tls *t, const void *p, size_t n,
                     size_t *took) {
  *took = 0;
  if (t->failed) return -1;
  ERR_clear_error();
  while (n > 0) {
    int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
    int rc = SSL_write((SSL *)t->ssl, p, chunk);
    if (rc <= 0) {
      int e = record(t, rc);
      /* Memory BIOs take everything, so only a handshake under way (the
      ** peer asked for a TLS 1.2 renegotiation) waits: for its records,
      ** as Twisted's TLS keeps the bytes until its next read. */
      if (!t->failed && (e == SSL_ERROR_WANT_READ ||
                         e == SSL_ERROR_WANT_WRITE))
        return 1;
      if (!t->failed) { /* no progress possible: a protocol error here */
        t->failed = 1;
        t->ekind = AME_TLS_EEOF;
      }
      return -1;
    }
    p = (const char *)p + rc;
    n -= (size_t)rc;
    *took += (size_t)rc;
  }
  return 0;
}

void ame__tls_shutdown(struct ame__tls *t) {
  if (t->shut || t->failed) return;
  t->shut = 1;
  ERR_clear_error();
  (void)SSL_shutdown((SSL *)t->ssl); /* writes close_notify to wbio */
  ERR_clear_error();
}

int ame__tls_output(struct ame__tls *t, ame__oqueue_t *q, char *buf,
                    size_t cap, size_t *added) {
  BIO *w = (BIO *)t->wbio;
  *added = 0;
  int chunk = cap > (1u << 30) ? 1 << 30 : (int)cap;
  while (BIO_ctrl_pending(w) > 0) {
    int n = BIO_read(w, buf, chunk);
    if (n <= 0) break;
    if (ame__oq_append(q, buf, (size_t)n) != 0) {
      ERR_clear_error();
      return -ENOMEM;
    }
    *added += (size_t)n;
  }
  ERR_clear_error();
  return 0;
}

void ame__tls_error_strings(unsigned long code, const char **lib,
                            const char **func, const char **reason) {
  const char *l = ERR_lib_error_string(code);
  const char *r = ERR_reason_error_string(code);
  *lib = l ? l : "";
  *func = ""; /* OpenSSL 3 keeps no function names (pyOpenSSL gets "") */
  *reason = r ? r : "";
}

/* ------------------------------------------------------------------------
** ALPN.  Twisted chooses the protocol in a Python callback on the
** context; for a connection whose TLS is C's, the choice is made here, in
** the same way (the server's order of preference, first match wins), from
** the list the connection carries in its ex_data.
*/

static int alpn_index = -1; /* set once, under the GIL */

static void alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                      long argl, void *argp) {
  (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
  free(ptr);
}

/* The list: a size_t length, then the wire format (length-prefixed).  A
** connection without a list negotiates nothing; one whose list has
** nothing in common with the client's fails the handshake
** (no_application_protocol), as Twisted's callback makes it fail. */
static int alpn_select(SSL *s, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  (void)arg;
  const unsigned char *mine =
      alpn_index < 0 ? NULL : SSL_get_ex_data(s, alpn_index);
  if (mine == NULL) return SSL_TLSEXT_ERR_NOACK;
  size_t n;
  memcpy(&n, mine, sizeof n);
  const unsigned char *w = mine + sizeof n;
  for (size_t i = 0; i < n; i += 1 + (size_t)w[i]) {
    unsigned pl = w[i];
    for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
      if (in[j] == pl && j + 1 + pl <= inlen &&
          memcmp(in + j + 1, w + i + 1, pl) == 0) {
        *out = in + j + 1;
        *outlen = (unsigned char)pl;
        return SSL_TLSEXT_ERR_OK;
      }
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

int ame__tls_set_alpn(uintptr_t ssl, const unsigned char *wire, size_t n,
                      int set_ctx) {
  SSL *s = (SSL *)ssl;
  if (alpn_index < 0) {
    alpn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, alpn_free);
    if (alpn_index < 0) return -1;
  }
  unsigned char *copy = malloc(sizeof n + n);
  if (copy == NULL) return -ENOMEM;
  memcpy(copy, &n, sizeof n);
  memcpy(copy + sizeof n, wire, n);
  free(SSL_get_ex_data(s, alpn_index));
  if (!SSL_set_ex_data(s, alpn_index, copy)) {
    free(copy);
    return -1;
  }
  if (set_ctx) SSL_CTX_set_alpn_select_cb(SSL_get_SSL_CTX(s), alpn_select, NULL);
  return 0;
}
