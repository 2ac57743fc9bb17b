/*
** bindings/ame/tls.h — TLS in C for the binding's fast streams: the
** OpenSSL half (tls.c), which knows nothing of Python or the stream's
** queues.  transport.c drives it on the worker.
**
** A stream's TLS runs on an SSL object that pyOpenSSL made (a
** Connection over two memory BIOs, from the program's own Context), so
** that everything Twisted and the program read from it (peer certificate,
** ALPN, cipher) is OpenSSL's own answer.  The worker drives the SSL object
** from the moment it is handed over until the stream detaches, and the
** Python thread calls it too (getHandle(), getPeerCertificate(), ...).
** OpenSSL's SSL objects are not thread-safe, so each one handed over gets
** a lock of its own (ame__tls_init), which lives as long as the object:
** every OpenSSL call on it, by the worker, the handshake pool or Python,
** is made holding that lock (the worker's and the pool's in
** transport.c, Python's through _ame.tls_locked).  It is held around
** OpenSSL calls only, never while waiting for anything else.
*/
#ifndef AME_BINDING_TLS_H
#define AME_BINDING_TLS_H

#include "streambuf.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* What went wrong, as pyOpenSSL would have raised it. */
enum {
  AME_TLS_OK = 0,
  AME_TLS_ESSL,     /* SSL.Error(OpenSSL's error queue: codes) */
  AME_TLS_ESYSCALL, /* SSL.SysCallError(eno, ...) */
  AME_TLS_EEOF,     /* SSL.SysCallError(-1, "Unexpected EOF") */
};

#define AME_TLS_MAX_CODES 8

struct ame__tls {
  void *ssl;      /* SSL *: pyOpenSSL's, kept alive by the Stream */
  pthread_mutex_t *lock; /* the SSL object's (ame__tls_lock_of) */
  void *rbio;     /* its memory BIOs: bytes received, bytes to send */
  void *wbio;
  int server;     /* accepting side */
  int hs;         /* the handshake completed */
  int closed;     /* the peer's close_notify arrived */
  int busy;       /* a handshake step runs in the pool: the worker leaves
                     the object alone */
  int shut_asked; /* write our close_notify once the plaintext is out */
  int shut;       /* our close_notify is written */
  int failed;     /* an error ended it: see ekind */
  int ekind;      /* AME_TLS_* */
  int eno;        /* AME_TLS_ESYSCALL: errno */
  int ncodes;
  unsigned long codes[AME_TLS_MAX_CODES]; /* AME_TLS_ESSL: ERR codes */
};

/* Results of ame__tls_advance (a mask). */
#define AME_TLS_HANDSHAKEN 1 /* this call completed the handshake */
#define AME_TLS_CLOSED 2     /* the peer's close_notify arrived */
#define AME_TLS_FAILED 4     /* an error ended the connection */

/* Nonzero if method is what TLS_method() returns here (a static object of
** libssl): then the SSL objects that pyOpenSSL makes come from the same
** libssl as ours.  (A function's address would not do: cffi hands out
** wrappers.) */
int ame__tls_same_library(uintptr_t method);

/* Take over ssl (an SSL * over memory BIOs, its accept or connect state
** set), with a reference of t's own (SSL_up_ref), so that the SSL object
** and its BIOs outlive pyOpenSSL's Connection for as long as the worker
** or the handshake pool may use them, and give it its lock (t->lock).  A
** server connection whose session tickets could never resume a session
** (stateful tickets, no session cache: Twisted's default) is set to send
** none.  Python thread, before anything else uses t.  Return 0, or -1 if
** it has no memory BIOs or no memory for the lock (then t holds
** nothing). */
int ame__tls_init(struct ame__tls *t, uintptr_t ssl);

/* The lock of ssl (an SSL *, alive), or NULL if ame__tls_init never took
** it over.  A recursive mutex: a thread that holds it may take it again
** (Python, from a callback OpenSSL makes inside a call under it; inline
** mode, whose worker is the Python thread).  It is freed with the SSL
** object, by SSL_free's last reference, when nobody can hold it. */
pthread_mutex_t *ame__tls_lock_of(uintptr_t ssl);

/* Drop t's reference to its SSL object (any thread, once no other uses t:
** the last reference frees it). */
void ame__tls_release(struct ame__tls *t);

/* Verify the peer's certificate (as the verify mode says) with no
** callback: OpenSSL's own verdict, which is all that the callback Twisted
** installs returns. */
void ame__tls_plain_verify(struct ame__tls *t);

/* Call no info callback for this connection (its context's is Python). */
void ame__tls_quiet_info(struct ame__tls *t);

/* Bytes received from the peer.  Return 0 or -ENOMEM. */
int ame__tls_feed(struct ame__tls *t, const void *p, size_t n);

/* The peer closed the TCP connection (or it failed): no more bytes. */
void ame__tls_input_ended(struct ame__tls *t);

/* Nonzero if the next handshake step (on the bytes fed) may cost a
** public-key operation, which is what the handshake pool is for: any
** step of a client; a server's step on a ClientHello (also the second one
** after a HelloRetryRequest) or on TLS 1.2's ClientKeyExchange, and every
** step of a server that asks for the peer's certificate.  The rest (a
** TLS 1.3 server checking the client's Finished, a server with nothing
** to read) is a few hashes at most. */
int ame__tls_heavy(const struct ame__tls *t);

/* Run the handshake as far as the bytes fed allow, then decrypt what
** arrived into plain (appended).  buf (cap bytes) is scratch.  Return a
** mask of AME_TLS_* results; on AME_TLS_FAILED, t says why.  An end of
** the input without close_notify (AME_TLS_EEOF) leaves nothing new to
** send: no alert, as under Twisted's TLS. */
int ame__tls_advance(struct ame__tls *t, ame__ibuf_t *plain, char *buf,
                     size_t cap);

/* Encrypt n bytes (the handshake complete).  Return 0 (all taken), -1
** (failed), or 1: OpenSSL takes no more until the peer's next records (a
** TLS 1.2 renegotiation in progress), *took bytes taken so far; write the
** rest after the next ame__tls_advance. */
int ame__tls_encrypt(struct ame__tls *t, const void *p, size_t n,
                     size_t *took);

/* Write our close_notify (once). */
void ame__tls_shutdown(struct ame__tls *t);

/* Move what OpenSSL wants sent to q; *added gets its bytes.  Return 0 or
** -ENOMEM. */
int ame__tls_output(struct ame__tls *t, ame__oqueue_t *q, char *buf,
                    size_t cap, size_t *added);

/* The text of one error code: OpenSSL's library, function and reason
** strings ("" where it has none). */
void ame__tls_error_strings(unsigned long code, const char **lib,
                            const char **func, const char **reason);

/* ALPN for ssl (any thread that owns it, before its handshake): the
** server picks from wire (the protocols in its order of preference, each
** prefixed with its length), in C.  set_ctx: also install the C selection
** on ssl's context (once per context: the worker may be reading it). */
int ame__tls_set_alpn(uintptr_t ssl, const unsigned char *wire, size_t n,
                      int set_ctx);

#endif /* AME_BINDING_TLS_H */
