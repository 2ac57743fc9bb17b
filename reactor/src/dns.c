/*
** reactor/src/dns.c — name resolution (getaddrinfo) that blocks no worker.
**
** ame_resolve() is a request, not a handle: the program gets nothing to
** hold or cancel.  At commit an op on a worker (the calling one, else
** round-robin) asks libuv, which runs getaddrinfo on its thread pool and
** brings the answer back to that worker's loop; the callback runs there
** as a transaction (with the error, if libuv refused the request), then
** the request and the answer are freed.  The host, service and hints are
** copied, so the caller's may go at once.  Once the reactor is being
** freed (quiet), the answer is dropped without calling back.
**
** libuv reports getaddrinfo's errors as its own UV_EAI_* numbers (-3000
** and below), which are no errno values; the callback gets the errno value
** that says the same (errno_of), as ame/reactor.h promises.
*/
#include "internal.h"

#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

struct resolve {
  uv_getaddrinfo_t req;
  ame_reactor_t *r;
  ame_resolve_cb cb;
  void *data;
  char *host, *service;
  struct addrinfo hints;
  int has_hints;
};

static void resolve_free(struct resolve *q) {
  free(q->host);
  free(q->service);
  free(q);
}

/* The negative errno value for a status of uv_getaddrinfo: a UV_EAI_*
** code mapped as ame_resolve()'s contract says, anything else (0, an
** errno value: libuv turns EAI_SYSTEM into the errno) unchanged. */
static int errno_of(int status) {
  switch (status) {
  case UV_EAI_NONAME:     /* the name, or the service, does not exist */
  case UV_EAI_NODATA:     /* it exists, with no address */
  case UV_EAI_ADDRFAMILY: /* ... with no address of the family asked */
  case UV_EAI_SERVICE:    /* no such service for the socket type */
    return -ENOENT;
  case UV_EAI_AGAIN: return -EAGAIN;
  case UV_EAI_MEMORY: return -ENOMEM;
  case UV_EAI_FAIL: return -EIO;
  case UV_EAI_FAMILY: return -EAFNOSUPPORT;
  case UV_EAI_SOCKTYPE: return -ESOCKTNOSUPPORT;
  case UV_EAI_PROTOCOL: return -EPROTONOSUPPORT;
  case UV_EAI_BADFLAGS:
  case UV_EAI_BADHINTS:
    return -EINVAL;
  case UV_EAI_OVERFLOW: return -EOVERFLOW;
  case UV_EAI_CANCELED: return -ECANCELED;
  default:
    /* Another UV_EAI_* (none is known today): a failure all the same. */
    return status <= UV_EAI_ADDRFAMILY && status >= UV_EAI_PROTOCOL
               ? -EIO
               : status;
  }
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct resolve *q = req->data;
  struct worker *w = ame__current();
  volatile int rc = 0;
  if (!LOAD(&q->r->quiet)) {
    AME_ATOMIC(w->tx) {
      ame_tx_set_site(w->tx, "resolve");
      rc = q->cb(w->tx, errno_of(status), res, q->data);
    }
  }
  ame__cb_done(w, NULL, "resolve callback", rc);
  uv_freeaddrinfo(res);
  resolve_free(q);
}

static int op_resolve(struct op *op) {
  struct resolve *q = op->p;
  struct worker *w = op->w;
  q->req.data = q;
  int rc = uv_getaddrinfo(&w->loop, &q->req, resolved, q->host, q->service,
                          q->has_hints ? &q->hints : NULL);
  if (rc != 0) {
    volatile int rc2 = 0;
    if (!LOAD(&q->r->quiet)) {
      AME_ATOMIC(w->tx) { rc2 = q->cb(w->tx, errno_of(rc), NULL, q->data); }
    }
    ame__cb_done(w, NULL, "resolve callback", rc2);
    resolve_free(q);
  }
  return 0;
}

static void resolve_undo(void *arg) { resolve_free(arg); }

int ame_resolve(ame_reactor_t *r, const char *host, const char *service,
                const struct addrinfo *hints, ame_resolve_cb cb, void *data) {
  if (r == NULL || cb == NULL || (host == NULL && service == NULL))
    return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  struct resolve *q = calloc(1, sizeof *q);
  if (q == NULL) return -ENOMEM;
  q->r = r;
  q->cb = cb;
  q->data = data;
  q->host = host ? strdup(host) : NULL;
  q->service = service ? strdup(service) : NULL;
  if (hints) {
    q->hints = *hints;
    q->hints.ai_addr = NULL;
    q->hints.ai_canonname = NULL;
    q->hints.ai_next = NULL;
    q->has_hints = 1;
  }
  struct op *op = ame__op_new(op_resolve, NULL, ame__home(r), 0);
  if (op == NULL || (host && !q->host) || (service && !q->service)) {
    free(op);
    resolve_free(q);
    return -ENOMEM;
  }
  op->p = q;
  int rc = ame__publish(op, resolve_undo, q);
  if (rc) {
    free(op);
    resolve_free(q);
  }
  return rc;
}
