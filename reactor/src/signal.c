/*
** reactor/src/signal.c — signal watchers: a callback each time the process
** receives a signal.
**
** Every watcher belongs to worker 0, whichever thread starts it, and only
** that worker touches its libuv signal handle.  libuv's own handler turns
** the signal into an event on that loop, where the callback runs as a
** transaction.  A watcher alone does not keep the reactor running.
**
** When the signal is caught: a watcher started outside a transaction
** before the reactor runs, or on worker 0 itself, catches it when
** ame_signal_start returns — a server that says "listening" after
** starting its SIGTERM watcher can be stopped gracefully from then on,
** though its loops have not run yet (the signal waits in libuv's pipe).
** One started inside a transaction catches it once worker 0 has run the
** op that the commit sends it.
*/
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

struct ame_signal {
  ame_handle_t h;
  uv_signal_t s;
  ame_signal_cb cb;
  int signum;
};

static void signal_cb(uv_signal_t *us, int signum) {
  ame_signal_t *s = us->data;
  struct worker *w = s->h.w;
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, s->h.name ? s->h.name : "signal");
    rc = s->cb(w->tx, s, signum);
  }
  ame__cb_done(w, &s->h, "signal callback", rc);
}

static void signal_stop_h(ame_handle_t *h) {
  ame_signal_t *s = (ame_signal_t *)h;
  if (h->state == HS_OPEN) uv_signal_stop(&s->s);
  ame__close_uv(h, (uv_handle_t *)&s->s);
}

/* Worker 0's thread, or the setup thread before the reactor runs: open
** s's libuv handle and catch the signal.  Return 0 or libuv's error (the
** handle is then closing, and freed once closed). */
static int signal_open(ame_signal_t *s) {
  struct worker *w = s->h.w;
  uv_signal_init(&w->loop, &s->s);
  s->s.data = s;
  s->h.state = HS_OPEN;
  ame__handle_link(&s->h);
  int rc = w->stopping ? 0 : uv_signal_start(&s->s, signal_cb, s->signum);
  if (rc != 0 || w->stopping) {
    signal_stop_h(&s->h);
  } else {
    /* A signal watcher alone does not keep the reactor running. */
    uv_unref((uv_handle_t *)&s->s);
  }
  return rc;
}

static int op_signal_start(struct op *op) {
  ame_signal_t *s = (ame_signal_t *)op->h;
  if (s->h.state != HS_NEW) return 0;
  int rc = signal_open(s);
  if (rc) ame__log(s->h.r, "signal %d: %s", s->signum, uv_strerror(rc));
  return 0;
}

int ame_signal_start(ame_reactor_t *r, int signum, ame_signal_cb cb,
                     void *data, ame_signal_t **out) {
  if (r == NULL || cb == NULL || signum <= 0 || signum >= 65) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  ame_signal_t *s = calloc(1, sizeof *s);
  if (s == NULL) return -ENOMEM;
  ame__handle_init(&s->h, H_SIGNAL, r, &r->workers[0], data);
  s->h.on_stop = signal_stop_h;
  s->cb = cb;
  s->signum = signum;
  if (ame__open_now(r, s->h.w)) {
    int rc = signal_open(s);
    if (rc) return rc; /* s is freed once its handle has closed */
    if (out) *out = s;
    return 0;
  }
  int rc = ame__handle_start(&s->h, op_signal_start, NULL, NULL);
  if (rc) {
    free(s);
    return rc;
  }
  if (out) *out = s;
  return 0;
}

void ame_signal_stop(ame_signal_t *s) { ame__handle_stop(&s->h); }
