/*
** cmd/run/run.c — `ame run` and `ame twistd`: run an unmodified
** Twisted program on the ame reactor, in one process or as the supervisor
** of N worker processes that share the listening sockets the program's
** setup created (docs/multicore.md).
**
** The command embeds CPython (the public embedding API only).  Python is
** configured as Debian's /usr/bin/python3 (AME_PYTHON) would be — its
** prefix, its dist-packages, PYTHONPATH and the other environment
** variables — so the program sees what `python3 program.py` sees.  The
** Python half lives in the ame package (bindings/ame/_supervisor.py): it
** installs the ame reactor, wraps `reactor.run` and runs the program with
** runpy, and turns setup errors into one line.  This file starts the
** process (the descriptor limit, the pid file, the metrics socket, and for
** a supervisor the shared heap, the page and the reload template, all
** before Python), starts Python, calls `ame._supervisor.main()`, and
** provides the built-in module `_ame_run`, whose `supervise()` forks the
** workers at `reactor.run()` and runs the supervisor (supervise.c) without
** ever returning to Python in the supervisor.  The options are opts.c's.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "run.h"
#include "ame/heap.h"
#include "ame/stm.h"
#include "listeners.h"
#include "metrics.h"
#include "opts.h"
#include "page.h"
#include "reload.h"
#include "supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef AME_PYTHON
#define AME_PYTHON "/usr/bin/python3"
#endif

#define DEFAULT_SHARED_SIZE ((size_t)256 << 20)

/* The heap the workers share (ame.shared), made before they are forked. */
static ame_heap_t *shared_heap;

/* The options, for _ame_run.supervise() (and a reload's candidate). */
static struct opts run_opts;

/* Made before Python: the metrics socket (-1: none), the reload template's
** socket (-1: none). */
static int metrics_fd = -1, template_fd = -1;

/* The pid file, and the process that may remove it. */
static pid_t pid_file_owner;

/* ------------------------------------------------------------------------
** The built-in module _ame_run.
*/

static void before_fork(void *data) {
  (void)data;
  PyOS_BeforeFork();
}

static void after_fork_parent(void *data) {
  (void)data;
  PyOS_AfterFork_Parent();
}

static void after_fork_child(void *data) {
  (void)data;
  PyOS_AfterFork_Child();
}

/* A worker (or, in the reload template, a zygote) is gone: give back what
** it held in the shared heap at once (its locks, a write-back it had
** decided), before anyone waits for it. */
static void worker_exited(void *data, int pid) {
  (void)data;
  if (shared_heap) ame_heap_recover_pid(shared_heap, pid);
}

static void write_pid_file(void);

PyDoc_STRVAR(supervise_doc,
"supervise(workers, grace, remove_at_exit=None, listeners=())\n--\n\n"
"Fork `workers` worker processes and supervise them (ame run --workers).\n"
"Return (id, count) in each worker, which then runs the reactor: its\n"
"worker id (1..count) and the configured workers when it was forked\n"
"(SIGTTIN and SIGTTOU change the count).  Never return in the\n"
"supervisor: it exits once every worker has.  A worker that dies is\n"
"replaced by a new fork of the supervisor, which returns here with the\n"
"same id.  listeners: (fd, backlog) of each\n"
"TCP listening socket the program made (each worker gets its slot's own:\n"
"cmd/run/listeners.h).  The supervisor removes the file remove_at_exit\n"
"(twistd's pid file) when it exits.  In a reload's candidate, become the\n"
"zygote instead (cmd/run/reload.h).  Raise OSError if the supervisor\n"
"cannot be set up.  Call with no other thread running.");

static PyObject *run_supervise(PyObject *mod, PyObject *args) {
  (void)mod;
  unsigned workers;
  double grace;
  const char *remove_at_exit = NULL;
  PyObject *lst = NULL;
  if (!PyArg_ParseTuple(args, "Id|zO:supervise", &workers, &grace,
                        &remove_at_exit, &lst))
    return NULL;
  if (workers < 1 || workers > AME_RUN_MAX_WORKERS || !(grace >= 0)) {
    PyErr_SetString(PyExc_ValueError, "workers 1..1024, grace >= 0");
    return NULL;
  }
  int fds[AME_LST_MAX], backlogs[AME_LST_MAX];
  unsigned n = 0;
  PyObject *seq = lst ? PySequence_Fast(lst, "listeners: a sequence") : NULL;
  if (lst && seq == NULL) return NULL;
  for (Py_ssize_t k = 0; seq && k < PySequence_Fast_GET_SIZE(seq); k++) {
    if (n == AME_LST_MAX) break; /* the rest stay shared */
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "ii", &fds[n],
                          &backlogs[n])) {
      Py_DECREF(seq);
      return NULL;
    }
    n++;
  }
  Py_XDECREF(seq);
  double deadline = grace + AME_SUP_KILL_SLACK_S;
  unsigned ninh;
  if (ame_reload_inherited(&ninh)) {
    int r = ame_reload_zygote(fds, n, deadline, before_fork,
                              after_fork_parent, after_fork_child, NULL);
    if (r > 0) return Py_BuildValue("(iI)", r, ame_reload_workers());
    errno = -r;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  if (ame_lst_init(fds, backlogs, n, strcmp(run_opts.sockets, "reuseport")
                                          == 0) < 0)
    return PyErr_NoMemory();
  write_pid_file(); /* twistd may have daemonized: the pid is ours now */
  ame_sup_config_t cfg = {
      .workers = workers,
      .grace_s = grace,
      .timeout_s = run_opts.timeout_s,
      .max_requests = run_opts.max_requests,
      .max_requests_jitter = run_opts.max_requests_jitter,
      .max_rss = run_opts.max_rss,
      .metrics_fd = metrics_fd,
      .reload_fd = template_fd,
      .name = run_opts.cmd,
      .before_fork = before_fork,
      .after_fork_parent = after_fork_parent,
      .after_fork_child = after_fork_child,
      .worker_exited = worker_exited,
  };
  int status;
  int r = ame_supervise(&cfg, &status);
  if (r > 0) return Py_BuildValue("(iI)", r, ame_sup_workers());
  if (r < 0) {
    errno = -r;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  /* The supervisor is done.  Nothing of the program may run here again
  ** (no atexit handlers, no finalizers): they belong to the workers. */
  if (remove_at_exit) unlink(remove_at_exit);
  if (run_opts.pid_file && pid_file_owner == getpid())
    unlink(run_opts.pid_file);
  fflush(NULL);
  _exit(status);
}

PyDoc_STRVAR(tick_doc,
"tick(counters, text=None, recycle=False)\n--\n\n"
"In a worker: the heartbeat.  Record the worker's counters (a tuple in\n"
"cmd/run/page.h's AME_PAGE_COUNTERS order), the text of its hottest STM\n"
"conflicts (None: unchanged), whether it asks to be replaced (it reached\n"
"its request limit), and that its reactor runs, now.");

static PyObject *run_tick(PyObject *mod, PyObject *args) {
  (void)mod;
  PyObject *counters;
  const char *text = NULL;
  int recycle = 0;
  if (!PyArg_ParseTuple(args, "O!|zp:tick", &PyTuple_Type, &counters, &text,
                        &recycle))
    return NULL;
  uint64_t c[AME_PAGE_NCOUNTERS];
  unsigned n = 0;
  for (; n < AME_PAGE_NCOUNTERS && n < PyTuple_GET_SIZE(counters); n++) {
    c[n] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(counters, n));
    if (c[n] == (uint64_t)-1 && PyErr_Occurred()) return NULL;
  }
  ame_page_tick(c, n, text, recycle);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(max_requests_doc,
"max_requests()\n--\n\n"
"In a worker: the number of requests after which it asks to be replaced\n"
"(--max-requests plus its jitter), or 0.");

static PyObject *run_max_requests(PyObject *mod, PyObject *unused) {
  (void)mod;
  (void)unused;
  return PyLong_FromUnsignedLongLong(ame_page_max_requests());
}

PyDoc_STRVAR(inherited_doc,
"inherited()\n--\n\n"
"In a reload's candidate: the listening sockets (fds) of the running\n"
"service, for the program's setup to adopt by address; else None.");

static PyObject *run_inherited(PyObject *mod, PyObject *unused) {
  (void)mod;
  (void)unused;
  unsigned n;
  const int *fds = ame_reload_inherited(&n);
  if (fds == NULL) Py_RETURN_NONE;
  PyObject *l = PyList_New(n);
  for (unsigned k = 0; l && k < n; k++) {
    PyObject *v = PyLong_FromLong(fds[k]);
    if (v == NULL) {
      Py_CLEAR(l);
      break;
    }
    PyList_SET_ITEM(l, k, v);
  }
  return l;
}

static PyMethodDef run_methods[] = {
    {"supervise", run_supervise, METH_VARARGS, supervise_doc},
    {"tick", run_tick, METH_VARARGS, tick_doc},
    {"max_requests", run_max_requests, METH_NOARGS, max_requests_doc},
    {"inherited", run_inherited, METH_NOARGS, inherited_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot run_slots[] = {
    {0, NULL},
};

static struct PyModuleDef run_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_ame_run",
    .m_doc = "The C half of `ame run`: the worker supervisor "
             "(cmd/run/run.c).",
    .m_size = 0,
    .m_methods = run_methods,
    .m_slots = run_slots,
};

static PyObject *PyInit__ame_run(void) { return PyModuleDef_Init(&run_module); }

/* ------------------------------------------------------------------------
** Python.
*/

/* Print the pending Python exception as "CMD: what: Type: message" (one
** line) and clear it. */
static void print_exception(const char *cmd, const char *what) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  const char *tname = type ? ((PyTypeObject *)type)->tp_name : "Error";
  const char *dot = strrchr(tname, '.');
  if (dot) tname = dot + 1;
  PyObject *s = value ? PyObject_Str(value) : NULL;
  const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
  if (msg == NULL) PyErr_Clear();
  fprintf(stderr, "%s: %s: %s%s%s\n", cmd, what, tname, msg && *msg ? ": " : "",
          msg ? msg : "");
  Py_XDECREF(s);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
}

/* --io auto: inline (no C I/O thread per worker) when the workers alone
** fill the CPUs this process may run on (one worker on one CPU too, as
** AMEReactor's own auto): an I/O thread per worker would then only add
** thread switches.  Otherwise each worker keeps its thread, which takes
** the socket work off the Python thread's core. */
static const char *resolve_io(const struct opts *o) {
  if (strcmp(o->io, "auto") != 0) return o->io;
  return o->workers >= ame_cpu_count() ? "inline" : "thread";
}

/* With a supervisor, make the heap the workers share (ame.shared) now,
** before Python and before any fork, and tell Python where it is
** (AME_SHARED_HEAP); in one process, ame.shared makes its own when first
** used, of the size AME_SHARED_SIZE says.  Return 0, or 1 after printing
** why not. */
static int make_shared_heap(const struct opts *o) {
  size_t size = o->shared_size;
  const char *env = getenv("AME_SHARED_SIZE");
  if (size == 0 && env && *env && ame_parse_shared_size(env, &size) < 0) {
    fprintf(stderr, "%s: AME_SHARED_SIZE wants bytes, 4M to 47G (e.g. "
                    "256M, 2G), not '%s'\n", o->cmd, env);
    return 1;
  }
  if (size == 0) size = DEFAULT_SHARED_SIZE;
  char buf[32];
  snprintf(buf, sizeof buf, "%zu", size);
  setenv("AME_SHARED_SIZE", buf, 1);
  if (!ame_run_supervised(o)) return 0;
  ame_heap_config_t cfg = {.size = size};
  int rc = ame_heap_create(NULL, &cfg, &shared_heap);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot make the shared heap (%zu bytes): %s\n",
            o->cmd, size, ame_heap_strerror(rc));
    return 1;
  }
  snprintf(buf, sizeof buf, "%lx", (unsigned long)(uintptr_t)
           ame_heap_base(shared_heap));
  setenv("AME_SHARED_HEAP", buf, 1);
  return 0;
}

/* Start Python as AME_PYTHON, run ame._supervisor.main() with o, finish
** Python, and return the exit status. */
static int run_python(const struct opts *o) {
  if (PyImport_AppendInittab("_ame_run", PyInit__ame_run) < 0) {
    fprintf(stderr, "%s: cannot register the _ame_run module\n", o->cmd);
    return 1;
  }
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.parse_argv = 0;
  /* sys.argv until the program's is set (by ame._supervisor). */
  char *argv0[] = {(char *)(o->target ? o->target : "twistd")};
  PyStatus st =
      PyConfig_SetBytesString(&config, &config.program_name, AME_PYTHON);
  if (!PyStatus_Exception(st)) st = PyConfig_SetBytesArgv(&config, 1, argv0);
  if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    if (PyStatus_IsExit(st)) return st.exitcode;
    fprintf(stderr, "%s: cannot start Python (%s): %s\n", o->cmd, AME_PYTHON,
            st.err_msg ? st.err_msg : "unknown error");
    return 1;
  }

  int status = 1;
  PyObject *mod = PyImport_ImportModule("ame._supervisor");
  if (mod == NULL) {
    print_exception(o->cmd, "cannot import the ame package (install ame, or "
                            "set PYTHONPATH)");
    goto done;
  }
  PyObject *args = PyList_New(o->nargs);
  for (int i = 0; args && i < o->nargs; i++) {
    PyObject *a = PyUnicode_DecodeFSDefault(o->args[i]);
    if (a == NULL) {
      Py_CLEAR(args);
      break;
    }
    PyList_SET_ITEM(args, i, a);
  }
  PyObject *r = NULL;
  if (args)
    r = PyObject_CallMethod(mod, "main", "ssssOIdssiid", o->cmd, o->mode,
                            o->target ? o->target : "", AME_PYTHON, args,
                            o->workers, o->grace_s, o->sockets,
                            resolve_io(o), o->verbose, ame_run_supervised(o),
                            o->timeout_s);
  Py_XDECREF(args);
  Py_DECREF(mod);
  if (r == NULL) {
    /* main() handles the program's exceptions; this is its own failure. */
    print_exception(o->cmd, "internal error");
  } else {
    status = (int)PyLong_AsLong(r);
    if (status == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      status = 1;
    }
    Py_DECREF(r);
  }
done:
  if (Py_FinalizeEx() < 0 && status == 0) status = 120; /* as python does */
  return status;
}

/* ------------------------------------------------------------------------
** The process, before Python.
*/

/* Raise the soft descriptor limit to the hard one (nginx's
** worker_rlimit_nofile, Go's runtime): a worker under the usual 1024
** holds about half the connections Twisted's own reactor holds. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* (Re)write the pid file with this process's pid; the first call checks
** that no live process holds it.  Return 0, or 1 after printing why not. */
static int pid_file(const struct opts *o, int first) {
  const char *path = o->pid_file;
  if (path == NULL) return 0;
  if (first) {
    FILE *f = fopen(path, "r");
    long other = 0;
    if (f) {
      if (fscanf(f, "%ld", &other) != 1) other = 0;
      fclose(f);
    }
    if (other > 0 && other != (long)getpid() &&
        (kill((pid_t)other, 0) == 0 || errno == EPERM)) {
      fprintf(stderr, "%s: --pid-file %s: already running as pid %ld\n",
              o->cmd, path, other);
      return 1;
    }
  }
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, buf, (size_t)n) != n) {
    fprintf(stderr, "%s: --pid-file %s: %s\n", o->cmd, path,
            strerror(errno));
    if (fd >= 0) close(fd);
    return 1;
  }
  close(fd);
  pid_file_owner = getpid();
  return 0;
}

static void write_pid_file(void) {
  if (run_opts.pid_file && pid_file_owner != getpid())
    pid_file(&run_opts, 0);
}

/* In a reload's candidate (a child of the template): run the program
** afresh; it becomes the zygote at reactor.run() (_ame_run.supervise). */
static void candidate_main(void *data) {
  const struct opts *o = data;
  fflush(NULL);
  _exit(run_python(o));
}

/* Run o: the process set-up, then Python.  Return the exit status. */
static int run_main(struct opts *o) {
  run_opts = *o;
  raise_nofile();
  int sup = ame_run_supervised(o);
  if (pid_file(o, 1) != 0) return 1;
  if (make_shared_heap(o) != 0) goto fail;
  if (sup) {
    /* The template first: it must hold nothing but the heap and the page
    ** (it ends when template_fd closes). */
    int rc = ame_page_create();
    if (rc == 0) rc = template_fd = ame_reload_template(candidate_main,
                                                        worker_exited,
                                                        &run_opts);
    if (rc < 0) {
      fprintf(stderr, "%s: cannot set up the supervisor: %s\n", o->cmd,
              strerror(-rc));
      goto fail;
    }
  }
  if (sup && o->metrics) {
    char err[256];
    metrics_fd = ame_metrics_listen(o->metrics, err, sizeof err);
    if (metrics_fd < 0) {
      fprintf(stderr, "%s: %s\n", o->cmd, err);
      goto fail;
    }
  }
  int status = run_python(o);
  /* One process, or the program ended before reactor.run(). */
  if (o->pid_file && pid_file_owner == getpid()) unlink(o->pid_file);
  return status;
fail:
  if (o->pid_file && pid_file_owner == getpid()) unlink(o->pid_file);
  if (template_fd >= 0) close(template_fd);
  return 1;
}

int ame_run_main(int argc, char **argv) {
  struct opts o;
  int r = ame_run_parse(argc, argv, &o);
  return r >= 0 ? r : run_main(&o);
}

int ame_twistd_main(int argc, char **argv) {
  struct opts o;
  int r = ame_twistd_parse(argc, argv, &o);
  return r >= 0 ? r : run_main(&o);
}
