/*
** reactor/src/process.c — child processes with stdin/stdout/stderr pipes
** (streams over socket pairs: stream.c).
**
** uv_spawn must run on the thread of the loop that will own the child, so
** ame_spawn() spawns at once when called on that thread (or before the
** reactor runs) and reports errors directly; from a transaction the spawn
** happens at commit and a failure shows as on_exit with status -errno.
*/
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ame_process {
  ame_handle_t h;
  uv_process_t p;
  ame_process_options_t opts;  /* copied; strings below */
  char **args, **env;
  char *file, *cwd;
  ame_stream_t *stdio[3];      /* owner thread, while spawning */
  ame_stream_t *published[3];  /* atomic: the same once the child runs */
  int pid;                     /* atomic */
  int exited;                  /* atomic */
};

static char **copy_vec(char **v) {
  if (v == NULL) return NULL;
  size_t n = 0;
  while (v[n]) n++;
  char **c = calloc(n + 1, sizeof *c);
  if (c == NULL) return NULL;
  for (size_t i = 0; i < n; i++)
    if ((c[i] = strdup(v[i])) == NULL) {
      while (i--) free(c[i]);
      free(c);
      return NULL;
    }
  return c;
}

static void free_vec(char **v) {
  if (v == NULL) return;
  for (size_t i = 0; v[i]; i++) free(v[i]);
  free(v);
}

static void process_free_strings(ame_process_t *p) {
  free_vec(p->args);
  free_vec(p->env);
  free(p->file);
  free(p->cwd);
  p->args = p->env = NULL;
  p->file = p->cwd = NULL;
}

static void process_closed(uv_handle_t *hd) {
  ame_process_t *p = hd->data;
  p->h.state = HS_CLOSED;
  ame__handle_unlink(&p->h);
  process_free_strings(p);
  ame__handle_unref(&p->h);
}

static void report_exit(ame_process_t *p, int64_t status, int sig) {
  struct worker *w = p->h.w;
  STORE(&p->exited, 1);
  if (p->opts.on_exit == NULL || LOAD(&p->h.r->quiet)) return;
  volatile int rc = 0;
  AME_ATOMIC(w->tx) {
    ame_tx_set_site(w->tx, p->h.name ? p->h.name : "on_exit");
    rc = p->opts.on_exit(w->tx, p, status, sig);
  }
  ame__cb_done(w, &p->h, "on_exit", rc);
}

static void exit_cb(uv_process_t *up, int64_t status, int sig) {
  ame_process_t *p = up->data;
  report_exit(p, status, sig);
  if (p->h.state == HS_OPEN) {
    p->h.state = HS_CLOSING;
    uv_close((uv_handle_t *)&p->p, process_closed);
  }
}

/* Graceful stop: the child keeps running (as with Twisted); we stop
** watching it. */
static void process_stop(ame_handle_t *h) {
  ame_process_t *p = (ame_process_t *)h;
  if (p->h.state != HS_OPEN) return;
  p->h.state = HS_CLOSING;
  uv_close((uv_handle_t *)&p->p, process_closed);
}

/* The handle of a child that could not be started has closed. */
static void spawn_failed_closed(uv_handle_t *hd) {
  ame_process_t *p = hd->data;
  p->h.state = HS_CLOSED;
  process_free_strings(p);
  ame__handle_unref(&p->h);
}

/* On the owner's thread: start the child.  Return 0, or a libuv error.
** After an error the handle is either still HS_NEW (nothing was set up:
** the caller disposes of it) or HS_CLOSING (uv_spawn failed: it is freed,
** its open reference dropped, once closed; the caller must not free it). */
static int do_spawn(ame_process_t *p) {
  struct worker *w = p->h.w;
  const ame_process_options_t *o = &p->opts;
  uv_stdio_container_t io[3];
  memset(io, 0, sizeof io);
  const ame_stream_cbs_t *cbs[3] = {NULL, o->stdout_cbs, o->stderr_cbs};
  int want[3] = {o->pipe_stdin, o->stdout_cbs != NULL, o->stderr_cbs != NULL};
  int child_fd[3] = {-1, -1, -1}; /* the child's ends of the stdio pairs */
  for (int i = 0; i < 3; i++) {
    if (!want[i]) {
      io[i].flags = i == 0 ? UV_IGNORE : UV_INHERIT_FD;
      io[i].data.fd = i;
      continue;
    }
    /* Its error is what happened (-EMFILE for a full descriptor table),
    ** not folded into -ENOMEM. */
    int rc = ame__pipe_new(w, cbs[i], o->data, &p->stdio[i], &child_fd[i]);
    if (rc != 0) {
      for (int k = 0; k < i; k++)
        if (p->stdio[k]) {
          ame__pipe_discard(p->stdio[k]);
          close(child_fd[k]);
        }
      memset(p->stdio, 0, sizeof p->stdio);
      return rc;
    }
    io[i].flags = UV_INHERIT_FD;
    io[i].data.fd = child_fd[i];
  }
  uv_process_options_t uo;
  memset(&uo, 0, sizeof uo);
  uo.file = p->file;
  uo.args = p->args;
  uo.env = p->env;
  uo.cwd = p->cwd;
  uo.exit_cb = exit_cb;
  uo.stdio = io;
  uo.stdio_count = 3;
  p->p.data = p;
  int rc = uv_spawn(&w->loop, &p->p, &uo);
  for (int i = 0; i < 3; i++)
    if (child_fd[i] >= 0) close(child_fd[i]); /* the child has its own */
  if (rc != 0) {
    for (int i = 0; i < 3; i++)
      if (p->stdio[i]) ame__pipe_discard(p->stdio[i]);
    memset(p->stdio, 0, sizeof p->stdio);
    /* uv_spawn initialised the handle even on failure, so it is on the
    ** loop's list until closed: the handle (and the open reference) goes
    ** in the close callback, not before. */
    p->h.state = HS_CLOSING;
    uv_close((uv_handle_t *)&p->p, spawn_failed_closed);
    return rc;
  }
  STORE(&p->pid, p->p.pid);
  p->h.state = HS_OPEN;
  ame__handle_link(&p->h);
  for (int i = 0; i < 3; i++) {
    if (p->stdio[i] && ame__pipe_opened(p->stdio[i], i != 0) != 0)
      p->stdio[i] = NULL; /* (cannot be watched: gone) */
    /* The process lives as long as each of its stdio streams: their
    ** callbacks may use it (ame_process_stdio, _pid) after its exit. */
    if (p->stdio[i]) {
      ame__handle_ref(&p->h);
      p->stdio[i]->holds = &p->h;
    }
  }
  /* Published for other threads (ame_process_stdio) once they are live. */
  for (int i = 0; i < 3; i++) STORE(&p->published[i], p->stdio[i]);
  return 0;
}

static int op_spawn(struct op *op) {
  ame_process_t *p = (ame_process_t *)op->h;
  if (p->h.state != HS_NEW) return 0;
  if (p->h.w->stopping) {
    report_exit(p, UV_ESHUTDOWN, 0);
    p->h.state = HS_CLOSED;
    process_free_strings(p);
    ame__handle_unref(&p->h);
    return 0;
  }
  int rc = do_spawn(p);
  if (rc != 0) {
    report_exit(p, rc, 0);
    if (p->h.state == HS_NEW) {
      p->h.state = HS_CLOSED;
      process_free_strings(p);
      ame__handle_unref(&p->h);
    }
  }
  return 0;
}

static void spawn_undo(void *arg) {
  ame_process_t *p = arg;
  process_free_strings(p);
  free(p);
}

/* The spawn was asked for in an attempt that aborted. */
static void spawn_abort(void *arg) { process_free_strings(arg); }

int ame_spawn(ame_reactor_t *r, const ame_process_options_t *opts,
              ame_process_t **out) {
  if (r == NULL || opts == NULL || opts->file == NULL || opts->args == NULL ||
      out == NULL)
    return -EINVAL;
  if (ame__stopped(r)) return -ESHUTDOWN;
  ame_process_t *p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  struct worker *cur = ame__current();
  struct worker *w = cur && cur->r == r ? cur : &r->workers[0];
  ame__handle_init(&p->h, H_PROCESS, r, w, opts->data);
  p->h.on_stop = process_stop;
  p->opts = *opts;
  p->file = strdup(opts->file);
  p->args = copy_vec(opts->args);
  p->env = copy_vec(opts->env);
  p->cwd = opts->cwd ? strdup(opts->cwd) : NULL;
  if (!p->file || !p->args || (opts->env && !p->env) ||
      (opts->cwd && !p->cwd)) {
    spawn_undo(p);
    return -ENOMEM;
  }
  if (ame__open_now(r, w)) {
    int rc = do_spawn(p);
    if (rc != 0) {
      if (p->h.state == HS_NEW) spawn_undo(p); /* else freed once closed */
      return rc;
    }
    *out = p;
    return 0;
  }
  int rc = ame__handle_start(&p->h, op_spawn, spawn_abort, p);
  if (rc != 0) {
    spawn_undo(p);
    return rc;
  }
  *out = p;
  return 0;
}

int ame_process_pid(const ame_process_t *p) { return LOAD(&p->pid); }

ame_stream_t *ame_process_stdio(ame_process_t *p, int fd) {
  return fd >= 0 && fd < 3 ? LOAD(&p->published[fd]) : NULL;
}

/* The kill asked for by a transaction that committed, on the owner: the
** child may have exited (and been reaped) meanwhile. */
static int op_kill(struct op *op) {
  ame_process_t *p = (ame_process_t *)op->h;
  if (p->h.state == HS_OPEN && !LOAD(&p->exited))
    uv_kill(LOAD(&p->pid), (int)op->a);
  return 0;
}

int ame_process_kill(ame_process_t *p, int signum) {
  if (p == NULL) return -EINVAL;
  int pid = LOAD(&p->pid);
  if (pid <= 0 || LOAD(&p->exited)) return -ESRCH;
  ame_tx_t *tx = ame_self();
  if (tx && ame_tx_depth(tx) > 0) {
    /* An effect like the others: at commit, once (the op holds a
    ** reference), never for an attempt that aborts. */
    if (signum < 0 || signum >= NSIG) return -EINVAL;
    struct op *op = ame__op_new(op_kill, &p->h, NULL, 0);
    if (op == NULL) return -ENOMEM;
    op->a = (uint64_t)signum;
    return ame__op_submit(op);
  }
  return uv_kill(pid, signum);
}
