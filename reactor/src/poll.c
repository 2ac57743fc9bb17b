/*
** reactor/src/poll.c — watching a descriptor the program owns: a callback
** when it becomes readable, writable or disconnected.
**
** The program keeps the descriptor (the watcher never closes it) and may
** change the events watched or stop.  The watcher belongs to the worker
** that started it (worker 0 from other threads); start, change and stop
** are ops run there in the order asked, so only that owner touches the
** libuv handle, and the callback runs there as a transaction.  What epoll
** would refuse (regular files, directories) ame_poll_start() refuses at
** once with -EPERM; a descriptor that libuv still refuses on the owner
** leaves a dead handle, logged, that ame_poll_stop() or the reactor's stop
** frees.
*/
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>

struct ame_poll {
  ame_handle_t h;
  uv_poll_t p;
  ame_poll_cb cb;
  int fd;
  int events;      /* what to watch first */
  int init_failed; /* libuv refused the fd: dead until stopped */
};

static int to_uv(int ev) {
  return ((ev & AME_READABLE) ? UV_READABLE : 0) |
         ((ev & AME_WRITABLE) ? UV_WRITABLE : 0) |
         ((ev & AME_DISCONNECT) ? UV_DISCONNECT : 0);
}

static void poll_cb(uv_poll_t *up, int status, int events) {
  ame_poll_t *p = up->data;
  struct worker *w = p->h.w;
  int ev = ((events & UV_READABLE) ? AME_READABLE : 0) |
           ((events & UV_WRITABLE) ? AME_WRITABLE : 0) |
           ((events & UV_DISCONNECT) ? AME_DISCONNECT : 0);
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, p->h.name ? p->h.name : "poll");
    rc = p->cb(w->tx, p, status, ev);
  }
  ame__cb_done(w, &p->h, "poll callback", rc);
}

static void poll_stop_h(ame_handle_t *h) {
  ame_poll_t *p = (ame_poll_t *)h;
  if (p->init_failed) { /* never a libuv handle: just let it go */
    p->init_failed = 0;
    h->state = HS_CLOSED;
    ame__handle_unlink(h);
    ame__handle_unref(h);
    return;
  }
  /* uv_close() stops the watcher (uv_poll_stop() first would only repeat
  ** its epoll_ctl). */
  ame__close_uv(h, (uv_handle_t *)&p->p);
}

/* Owner thread: watch ev on an open watcher (none: stop watching). */
static void poll_watch(ame_poll_t *p, int ev) {
  if (ev)
    uv_poll_start(&p->p, to_uv(ev), poll_cb);
  else
    uv_poll_stop(&p->p);
}

static int op_poll_start(struct op *op) {
  ame_poll_t *p = (ame_poll_t *)op->h;
  struct worker *w = p->h.w;
  if (p->h.state != HS_NEW) return 0;
  int rc = uv_poll_init(&w->loop, &p->p, p->fd);
  if (rc != 0) {
    /* The program still holds the pointer: keep the handle (dead) until
    ** ame_poll_stop() or the reactor's stop. */
    ame__log(p->h.r, "watching fd %d: %s", p->fd, uv_strerror(rc));
    p->init_failed = 1;
    p->h.state = HS_CLOSING;
    ame__handle_link(&p->h);
    return 0;
  }
  p->p.data = p;
  p->h.state = HS_OPEN;
  ame__handle_link(&p->h);
  if (w->stopping) {
    poll_stop_h(&p->h);
    return 0;
  }
  poll_watch(p, p->events);
  return 0;
}

static int op_poll_change(struct op *op) {
  ame_poll_t *p = (ame_poll_t *)op->h;
  if (p->h.state == HS_OPEN) poll_watch(p, (int)op->b);
  return 0;
}

int ame_poll_start(ame_reactor_t *r, int fd, int events, ame_poll_cb cb,
                   void *data, ame_poll_t **out) {
  if (r == NULL || fd < 0 || cb == NULL || out == NULL) return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  /* What epoll would refuse, refused here, where the caller sees it. */
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return -EPERM;
  ame_poll_t *p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  struct worker *w = ame__current() && ame__current()->r == r
                         ? ame__current()
                         : &r->workers[0];
  ame__handle_init(&p->h, H_POLL, r, w, data);
  p->h.on_stop = poll_stop_h;
  p->cb = cb;
  p->fd = fd;
  p->events = events;
  int rc = ame__handle_start(&p->h, op_poll_start, NULL, NULL);
  if (rc) {
    free(p);
    return rc;
  }
  *out = p;
  return 0;
}

int ame_poll_change(ame_poll_t *p, int events) {
  if (p == NULL) return -EINVAL;
  struct op *op = ame__op_new(op_poll_change, &p->h, NULL, 0);
  if (op == NULL) return -ENOMEM;
  op->b = (uint64_t)events;
  return ame__op_submit(op);
}

void ame_poll_stop(ame_poll_t *p) { ame__handle_stop(&p->h); }
