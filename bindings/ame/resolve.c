/*
** bindings/ame/resolve.c — getaddrinfo on the C reactor, for ame.reactor's
** name resolver (IReactorPluggableNameResolver).
**
** Twisted's default resolver (GAIResolver) runs socket.getaddrinfo on a
** thread of the reactor's Python thread pool.  Here Core.getaddrinfo()
** hands the query to ame_resolve (libuv's getaddrinfo on its own thread
** pool, started from the worker); its callback, a transaction on the
** worker, copies the answer at commit into a completion for the Python
** thread, which wait() delivers: callback(list) with the entries in
** socket.getaddrinfo's shape, or callback(OSError) on failure.
*/
#include "binding.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* One answer entry, copied out of the addrinfo list. */
struct gai_entry {
  int family, socktype, protocol;
  socklen_t addrlen;
  struct sockaddr_storage addr;
  char *canonname;
};

/* A query: made by the Python thread, answered on the worker, delivered
** (and freed) by the Python thread. */
struct gai_query {
  struct core *c;
  PyObject *callback;       /* py: owned reference */
  int status;               /* worker: 0 or a negative errno value */
  const struct addrinfo *res; /* worker: valid during the callback only */
  struct gai_entry *entries;
  size_t n;
  struct gai_query *next;   /* lock: the core's done list */
};

/* Commit handler of gai_cb: copy the answer, queue it for Python. */
static void gai_done(void *arg) {
  struct gai_query *q = arg;
  struct core *c = q->c;
  size_t n = 0;
  for (const struct addrinfo *a = q->res; a; a = a->ai_next) n++;
  q->entries = n ? calloc(n, sizeof *q->entries) : NULL;
  if (n && q->entries == NULL) {
    q->status = -ENOMEM;
    n = 0;
  }
  size_t i = 0;
  for (const struct addrinfo *a = q->res; a && i < n; a = a->ai_next) {
    struct gai_entry *e = &q->entries[i];
    if (a->ai_addrlen > sizeof e->addr) continue;
    e->family = a->ai_family;
    e->socktype = a->ai_socktype;
    e->protocol = a->ai_protocol;
    e->addrlen = a->ai_addrlen;
    memcpy(&e->addr, a->ai_addr, a->ai_addrlen);
    e->canonname = a->ai_canonname ? strdup(a->ai_canonname) : NULL;
    i++;
  }
  q->n = i;
  q->res = NULL;
  pthread_mutex_lock(&c->lock);
  q->next = NULL;
  if (c->gai_tail)
    c->gai_tail->next = q;
  else
    c->gai_head = q;
  c->gai_tail = q;
  if (c->py_waiting) {
    c->py_waiting = 0;
    c->wake_pending = 1; /* signalled in ame__before_poll */
  }
  pthread_mutex_unlock(&c->lock);
}

static int gai_cb(ame_tx_t *tx, int status, const struct addrinfo *res,
                  void *data) {
  struct gai_query *q = data;
  ame__worker_busy(q->c);
  q->status = status;
  q->res = res;
  return ame_tx_on_commit(tx, gai_done, q);
}

static void gai_free(struct gai_query *q) {
  for (size_t i = 0; i < q->n; i++) free(q->entries[i].canonname);
  free(q->entries);
  free(q);
}

int ame__getaddrinfo(struct core *c, const char *host, const char *service,
                     int family, int socktype, PyObject *callback) {
  struct gai_query *q = calloc(1, sizeof *q);
  if (q == NULL) return -ENOMEM;
  q->c = c;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  hints.ai_socktype = socktype;
  int rc = ame_resolve(c->r, host, service, &hints, gai_cb, q);
  if (rc != 0) {
    free(q);
    return rc;
  }
  q->callback = Py_NewRef(callback);
  return 0;
}

/* The answer as a Python object: a list, or an OSError for a failure. */
static PyObject *gai_result(const struct gai_query *q) {
  if (q->status < 0) {
    int st = q->status;
    /* ame_resolve gives an errno value (-ENOENT: no such name); the
    ** message is what getaddrinfo would say (socket.gaierror is an
    ** OSError). */
    const char *msg = st == -ENOMEM ? "out of memory" : "name resolution failed";
    return Py_BuildValue("(is)", st, msg);
  }
  PyObject *list = PyList_New((Py_ssize_t)q->n);
  if (list == NULL) return NULL;
  for (size_t i = 0; i < q->n; i++) {
    const struct gai_entry *e = &q->entries[i];
    PyObject *sa =
        ame__sockaddr_tuple((const struct sockaddr *)&e->addr, e->addrlen);
    PyObject *t = sa ? Py_BuildValue("(iiisN)", e->family, e->socktype,
                                     e->protocol,
                                     e->canonname ? e->canonname : "", sa)
                     : NULL;
    if (t == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, t);
  }
  return list;
}

void ame__gai_dispatch(struct core *c) {
  pthread_mutex_lock(&c->lock);
  struct gai_query *q = c->gai_head;
  c->gai_head = c->gai_tail = NULL;
  pthread_mutex_unlock(&c->lock);
  while (q) {
    struct gai_query *next = q->next;
    PyObject *res = gai_result(q);
    if (res == NULL) {
      /* Out of memory building it: tell the caller so. */
      PyErr_Clear();
      res = Py_BuildValue("(is)", -ENOMEM, "out of memory");
    }
    if (res != NULL) {
      PyObject *r = PyObject_CallOneArg(q->callback, res);
      if (r == NULL) PyErr_WriteUnraisable(q->callback);
      Py_XDECREF(r);
      Py_DECREF(res);
    } else {
      PyErr_WriteUnraisable(q->callback);
    }
    Py_DECREF(q->callback);
    gai_free(q);
    q = next;
  }
}

void ame__gai_free_all(struct core *c) {
  struct gai_query *q = c->gai_head;
  c->gai_head = c->gai_tail = NULL;
  while (q) {
    struct gai_query *next = q->next;
    Py_XDECREF(q->callback);
    gai_free(q);
    q = next;
  }
}
