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
** runpy, and turns setup errors into one line.  This file parses the
** command line, starts Python, calls `ame._supervisor.main()`, and
** provides the built-in module `_ame_run`, whose `supervise()` forks the
** workers at `reactor.run()` and runs the supervisor (supervise.c) without
** ever returning to Python in the supervisor.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "run.h"
#include "ame/heap.h"
#include "ame/stm.h"
#include "supervise.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef AME_PYTHON
#define AME_PYTHON "/usr/bin/python3"
#endif

#define MAX_WORKERS 1024
#define DEFAULT_GRACE_S 10.0

struct opts {
  const char *cmd;    /* "ame run" or "ame twistd": the prefix of messages */
  const char *mode;   /* "path", "module" or "twistd" */
  const char *target; /* the program, the module, or NULL (twistd) */
  char **args;        /* the program's arguments */
  int nargs;
  unsigned workers;
  double grace_s;
  const char *sockets; /* "reuseport" or "shared" */
  const char *io;      /* "thread", "inline" or "auto" */
  size_t shared_size;  /* the shared heap's bytes (0: AME_SHARED_SIZE or
                          the default) */
  int verbose;
};

#define DEFAULT_SHARED_SIZE ((size_t)256 << 20)

/* The heap the workers share (ame.shared), made before they are forked. */
static ame_heap_t *shared_heap;

/* The prefix of the supervisor's log lines, for _ame_run.supervise(). */
static const char *run_cmd = "ame run";

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

/* A worker is gone: give back what it held in the shared heap at once
** (its locks, a write-back it had decided), before anyone waits for it. */
static void worker_exited(void *data, int pid) {
  (void)data;
  if (shared_heap) ame_heap_recover_pid(shared_heap, pid);
}

PyDoc_STRVAR(supervise_doc,
"supervise(workers, grace, remove_at_exit=None)\n--\n\n"
"Fork `workers` worker processes and supervise them (ame run --workers).\n"
"Return the worker id (1..workers) in each worker, which then runs the\n"
"reactor.  Never return in the supervisor: it exits once every worker\n"
"has.  A worker that dies is replaced by a new fork of the supervisor,\n"
"which returns here with the same id.  The supervisor removes the file\n"
"remove_at_exit (twistd's pid file) when it exits.  Raise OSError if the\n"
"supervisor cannot be set up.  Call with no other thread running.");

static PyObject *run_supervise(PyObject *mod, PyObject *args) {
  (void)mod;
  unsigned workers;
  double grace;
  const char *remove_at_exit = NULL;
  if (!PyArg_ParseTuple(args, "Id|z:supervise", &workers, &grace,
                        &remove_at_exit))
    return NULL;
  if (workers < 1 || workers > MAX_WORKERS || !(grace >= 0)) {
    PyErr_SetString(PyExc_ValueError, "workers 1..1024, grace >= 0");
    return NULL;
  }
  ame_sup_config_t cfg = {
      .workers = workers,
      .grace_s = grace,
      .name = run_cmd,
      .before_fork = before_fork,
      .after_fork_parent = after_fork_parent,
      .after_fork_child = after_fork_child,
      .worker_exited = worker_exited,
  };
  int status;
  int r = ame_supervise(&cfg, &status);
  if (r > 0) return PyLong_FromLong(r);
  if (r < 0) {
    errno = -r;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  /* The supervisor is done.  Nothing of the program may run here again
  ** (no atexit handlers, no finalizers): they belong to the workers. */
  if (remove_at_exit) unlink(remove_at_exit);
  fflush(NULL);
  _exit(status);
}

static PyMethodDef run_methods[] = {
    {"supervise", run_supervise, METH_VARARGS, supervise_doc},
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

/* Parse a size: bytes, or with a K, M or G suffix (powers of 1024).
** Return 0 or -1. */
static int parse_size(const char *s, size_t *out) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -1;
  unsigned long long v = strtoull(s, &end, 10);
  unsigned shift = 0;
  if (*end == 'K' || *end == 'k') shift = 10, end++;
  else if (*end == 'M' || *end == 'm') shift = 20, end++;
  else if (*end == 'G' || *end == 'g') shift = 30, end++;
  if (*end || errno || v == 0 || v > (1ull << 46) >> shift) return -1;
  *out = (size_t)(v << shift);
  return 0;
}

/* With workers, make the heap they share (ame.shared) now, before Python
** and before any fork, and tell Python where it is (AME_SHARED_HEAP); in
** one process, ame.shared makes its own when first used, of the size
** AME_SHARED_SIZE says.  Return 0, or 1 after printing why not. */
static int make_shared_heap(const struct opts *o) {
  size_t size = o->shared_size;
  const char *env = getenv("AME_SHARED_SIZE");
  if (size == 0 && env && *env && parse_size(env, &size) < 0) {
    fprintf(stderr, "%s: AME_SHARED_SIZE wants bytes (e.g. 256M), not "
                    "'%s'\n", o->cmd, env);
    return 1;
  }
  if (size == 0) size = DEFAULT_SHARED_SIZE;
  char buf[32];
  snprintf(buf, sizeof buf, "%zu", size);
  setenv("AME_SHARED_SIZE", buf, 1);
  if (o->workers < 2) return 0;
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
  run_cmd = o->cmd;
  if (make_shared_heap(o) != 0) return 1;
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
    r = PyObject_CallMethod(mod, "main", "ssssOIdssi", o->cmd, o->mode,
                            o->target ? o->target : "", AME_PYTHON, args,
                            o->workers, o->grace_s, o->sockets,
                            resolve_io(o), o->verbose);
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
** Command lines.
*/

static void run_usage(FILE *f) {
  fprintf(f,
"usage: ame run [--workers N|auto] [OPTIONS] [--] PROGRAM.py [ARGS...]\n"
"       ame run [--workers N|auto] [OPTIONS] -m MODULE [ARGS...]\n"
"\n"
"Run an unmodified Twisted program on the ame reactor.  The reactor is\n"
"installed before the program imports anything; then the program runs as\n"
"'" AME_PYTHON " PROGRAM.py ARGS...' (or '-m MODULE ARGS...') would: same\n"
"sys.argv, sys.path[0] the program's directory (the current one for -m),\n"
"same packages (PYTHONPATH is honoured).\n"
"\n"
"  -w, --workers N|auto  worker processes: N, or auto: one per CPU this\n"
"                        process may use (its affinity mask, lowered to its\n"
"                        cgroup's CPU quota) (default 1)\n"
"      --grace SECONDS   at a graceful stop, how long a worker waits for its\n"
"                        connections to finish (default %g)\n"
"      --sockets reuseport|shared\n"
"                        how workers share TCP listeners: each its own\n"
"                        SO_REUSEPORT socket (the default: connections\n"
"                        spread evenly by a hash), or the setup's socket,\n"
"                        accepted by whichever worker is free (with few\n"
"                        long-lived connections this can leave a worker\n"
"                        with none; see docs/multicore.md)\n"
"      --io thread|inline|auto\n"
"                        thread: each process has a C thread that does the\n"
"                        socket I/O beside the Python thread; inline: no\n"
"                        such thread, the Python thread steps the C\n"
"                        reactor itself; auto (the default): inline when\n"
"                        the workers fill the CPUs this process may use\n"
"                        (workers >= CPUs), else thread\n"
"      --shared-size BYTES\n"
"                        the heap that ame.shared's objects live in, shared\n"
"                        by the workers (K, M, G suffixes; default\n"
"                        AME_SHARED_SIZE, else 256M); memory is used only\n"
"                        as objects fill it\n"
"  -m MODULE             run a module as a script (the rest are its args)\n"
"  -v, --verbose         after a setup error's one line, print the traceback\n"
"  -h, --help            this help\n"
"\n"
"--workers 1 (the default) is one process: exactly ame.reactor.install()\n"
"followed by the program.\n"
"\n"
"--workers N > 1: the program's setup (everything before reactor.run()) runs\n"
"once.  At reactor.run() the process becomes a supervisor and forks N\n"
"workers; each runs the reactor on the listening sockets the setup created,\n"
"which all workers share (the kernel spreads the connections, see\n"
"--sockets).  The\n"
"supervisor runs no Python code and never accepts.  It\n"
"  - restarts a worker that dies, after a back-off (0.1 s, doubling up to\n"
"    10 s while the worker keeps dying within 10 s of its start), and logs\n"
"    'ame run: worker 2 (pid 1234) died (signal 9); restarting in 0.1 s';\n"
"  - forwards SIGINT and SIGTERM: each worker stops accepting, lets the\n"
"    requests in flight finish (at most --grace seconds), then exits; a\n"
"    second signal kills the workers at once;\n"
"  - prefixes each line a worker writes to stdout or stderr with '[wN] '.\n"
"Workers see AME_WORKER=N (1..N) and AME_WORKERS in their environment.  A\n"
"worker that exits with status 0 on its own is not restarted.  Exit status:\n"
"0 when every worker ended cleanly, 1 otherwise.\n"
"\n"
"PER-WORKER STATE: each worker is a separate process with its own copy of\n"
"the program's Python state as it was at reactor.run().  Counters, caches,\n"
"sessions kept in Python objects are per worker and diverge; state that\n"
"the workers share belongs in ame.shared's objects (dict, counter, queue,\n"
"channel; docs/shared.md), which live in a heap made before the workers\n"
"are forked: every worker sees every change, each ame.atomic block is one\n"
"transaction, and a worker that dies leaves them consistent.  Listeners\n"
"created after reactor.run() (callWhenRunning, task.react) are made by\n"
"each worker on its own and are not shared.\n"
"\n"
"Errors: a missing file, a syntax error, an exception during setup (a port\n"
"already in use included), or a program that returns without calling\n"
"reactor.run() print one line, 'ame run: PROGRAM: ...', and exit 1; nothing\n"
"is left running.  sys.exit(N) exits N.  Usage errors exit 2.\n"
"\n"
"Outside an installed ame, Python must find the ame package: in a build\n"
"tree, PYTHONPATH=BUILDDIR/bindings:bindings.  See docs/multicore.md.\n",
          DEFAULT_GRACE_S);
}

static void twistd_usage(FILE *f) {
  fprintf(f,
"usage: ame twistd [--workers N|auto] [--grace SECONDS] [--sockets MODE]\n"
"                  [--io MODE] [--shared-size BYTES] [--verbose] [--]\n"
"                  [TWISTD-OPTIONS] SUBCOMMAND [OPTIONS...]\n"
"\n"
"Run twistd (twisted.scripts.twistd) with the ame reactor installed: the\n"
"same as 'twistd --reactor=ame ...', with the reactor preset.  A\n"
"'--reactor=ame' or '-r ame' among the arguments is dropped; any other\n"
"reactor is an error.  'ame twistd -- --help' shows twistd's own options.\n"
"\n"
"  --workers N|auto   worker processes (default 1), as for 'ame run'\n"
"  --grace SECONDS    graceful-stop limit per worker (default %g)\n"
"  --sockets reuseport|shared   as for 'ame run'\n"
"  --io thread|inline|auto      as for 'ame run'\n"
"  --shared-size BYTES          as for 'ame run'\n"
"  --verbose          print the traceback of a setup error\n"
"  --help             this help\n"
"\n"
"With --workers N > 1 the supervisor of 'ame run' applies (see 'ame run\n"
"--help', including the per-worker state limit): the listeners that\n"
"twistd's services open before reactor.run() are shared by the workers.\n"
"That covers strports and endpoint services ('web --listen tcp:8080',\n"
"'--port'), internet.TCPServer and the like (they listen in\n"
"privilegedStartService).  With -n (--nodaemon) the supervisor stays in\n"
"the foreground and twistd's log goes to stdout, prefixed per worker.\n"
"Daemonized (no -n), the daemon is the supervisor: --pidfile holds its pid\n"
"and it removes the file when it exits; its own messages (restarts) go to\n"
"its stderr, which twistd points at /dev/null, so prefer -n under a\n"
"process manager.\n",
          DEFAULT_GRACE_S);
}

/* Print a usage error and return 2. */
static int usage_error(const char *cmd, const char *fmt, const char *arg) {
  fprintf(stderr, "ame %s: ", cmd);
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'ame %s --help'.\n", cmd);
  return 2;
}

/* Parse --workers: N in 1..MAX_WORKERS or "auto".  Return 0 or -1. */
static int parse_workers(const char *s, unsigned *out) {
  if (strcmp(s, "auto") == 0) {
    unsigned n = ame_cpu_count();
    *out = n > MAX_WORKERS ? MAX_WORKERS : n;
    return 0;
  }
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -1;
  unsigned long v = strtoul(s, &end, 10);
  if (*end || errno || v < 1 || v > MAX_WORKERS) return -1;
  *out = (unsigned)v;
  return 0;
}

/* Parse --grace: seconds, >= 0, at most a day.  Return 0 or -1. */
static int parse_grace(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !isfinite(v) || v < 0 || v > 86400)
    return -1;
  *out = v;
  return 0;
}

/* Parse --io.  Return 0 or -1. */
static int parse_io(const char *s, const char **out) {
  if (strcmp(s, "thread") == 0 || strcmp(s, "inline") == 0 ||
      strcmp(s, "auto") == 0) {
    *out = s;
    return 0;
  }
  return -1;
}

/* Parse --sockets.  Return 0 or -1. */
static int parse_sockets(const char *s, const char **out) {
  if (strcmp(s, "reuseport") == 0 || strcmp(s, "shared") == 0) {
    *out = s;
    return 0;
  }
  return -1;
}

int ame_run_main(int argc, char **argv) {
  struct opts o = {.cmd = "ame run", .mode = "path", .workers = 1,
                   .grace_s = DEFAULT_GRACE_S, .sockets = "reuseport",
                   .io = "auto"};
  static const struct option longopts[] = {
      {"workers", required_argument, NULL, 'w'},
      {"grace", required_argument, NULL, 'g'},
      {"sockets", required_argument, NULL, 's'},
      {"io", required_argument, NULL, 'i'},
      {"shared-size", required_argument, NULL, 'S'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  int ch;
  opterr = 0;
  optind = 1;
  /* '+': options end at the program; -m ends them too (below). */
  while ((ch = getopt_long(argc, argv, "+:w:m:vh", longopts, NULL)) != -1) {
    switch (ch) {
    case 'w':
      if (parse_workers(optarg, &o.workers) < 0)
        return usage_error("run", "--workers wants a number from 1 to 1024 "
                                  "or 'auto', not '%s'", optarg);
      break;
    case 'g':
      if (parse_grace(optarg, &o.grace_s) < 0)
        return usage_error("run", "--grace wants seconds (>= 0), not '%s'",
                           optarg);
      break;
    case 's':
      if (parse_sockets(optarg, &o.sockets) < 0)
        return usage_error("run", "--sockets wants 'reuseport' or 'shared', "
                                  "not '%s'", optarg);
      break;
    case 'i':
      if (parse_io(optarg, &o.io) < 0)
        return usage_error("run", "--io wants 'thread', 'inline' or 'auto', "
                                  "not '%s'", optarg);
      break;
    case 'S':
      if (parse_size(optarg, &o.shared_size) < 0 ||
          o.shared_size < ((size_t)4 << 20))
        return usage_error("run", "--shared-size wants bytes, at least 4M "
                                  "(e.g. 256M, 2G), not '%s'", optarg);
      break;
    case 'm':
      o.mode = "module";
      o.target = optarg;
      break;
    case 'v':
      o.verbose = 1;
      break;
    case 'h':
      run_usage(stdout);
      return 0;
    case ':':
      return usage_error("run", "%s needs a value", argv[optind - 1]);
    default:
      return usage_error("run", "unknown option '%s'", argv[optind - 1]);
    }
    if (o.target) break; /* -m MODULE: the rest is the module's */
  }
  if (o.target == NULL) {
    if (optind >= argc)
      return usage_error("run", "%s", "which program? (ame run PROGRAM.py)");
    o.target = argv[optind++];
    if (*o.target == '\0')
      return usage_error("run", "%s", "the program's name is empty");
  } else if (*o.target == '\0') {
    return usage_error("run", "%s", "-m wants a module name");
  }
  o.args = argv + optind;
  o.nargs = argc - optind;
  return run_python(&o);
}

int ame_twistd_main(int argc, char **argv) {
  struct opts o = {.cmd = "ame twistd", .mode = "twistd", .workers = 1,
                   .grace_s = DEFAULT_GRACE_S, .sockets = "reuseport",
                   .io = "auto"};
  /* Only our own leading long options; the first other argument starts
  ** twistd's (getopt would reject twistd's options). */
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    int takes = 0; /* 1: --workers, 2: --grace, 3: --sockets, 4: --io,
                      5: --shared-size */
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      twistd_usage(stdout);
      return 0;
    } else if (strcmp(a, "--verbose") == 0) {
      o.verbose = 1;
      continue;
    } else if (strncmp(a, "--workers", 9) == 0 && (a[9] == '\0' ||
                                                   a[9] == '=')) {
      takes = 1;
      val = a[9] == '=' ? a + 10 : NULL;
    } else if (strncmp(a, "--grace", 7) == 0 && (a[7] == '\0' ||
                                                 a[7] == '=')) {
      takes = 2;
      val = a[7] == '=' ? a + 8 : NULL;
    } else if (strncmp(a, "--sockets", 9) == 0 && (a[9] == '\0' ||
                                                   a[9] == '=')) {
      takes = 3;
      val = a[9] == '=' ? a + 10 : NULL;
    } else if (strncmp(a, "--io", 4) == 0 && (a[4] == '\0' || a[4] == '=')) {
      takes = 4;
      val = a[4] == '=' ? a + 5 : NULL;
    } else if (strncmp(a, "--shared-size", 13) == 0 &&
               (a[13] == '\0' || a[13] == '=')) {
      takes = 5;
      val = a[13] == '=' ? a + 14 : NULL;
    } else {
      break;
    }
    if (val == NULL) {
      if (i + 1 >= argc)
        return usage_error("twistd", "%s needs a value", a);
      val = argv[++i];
    }
    if (takes == 1 && parse_workers(val, &o.workers) < 0)
      return usage_error("twistd", "--workers wants a number from 1 to 1024 "
                                   "or 'auto', not '%s'", val);
    if (takes == 2 && parse_grace(val, &o.grace_s) < 0)
      return usage_error("twistd", "--grace wants seconds (>= 0), not '%s'",
                         val);
    if (takes == 3 && parse_sockets(val, &o.sockets) < 0)
      return usage_error("twistd", "--sockets wants 'reuseport' or 'shared', "
                                   "not '%s'", val);
    if (takes == 4 && parse_io(val, &o.io) < 0)
      return usage_error("twistd", "--io wants 'thread', 'inline' or 'auto', "
                                   "not '%s'", val);
    if (takes == 5 && (parse_size(val, &o.shared_size) < 0 ||
                       o.shared_size < ((size_t)4 << 20)))
      return usage_error("twistd", "--shared-size wants bytes, at least 4M "
                                   "(e.g. 256M, 2G), not '%s'", val);
  }
  o.args = argv + i;
  o.nargs = argc - i;
  return run_python(&o);
}
