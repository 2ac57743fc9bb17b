/*
** cmd/run/opts.c — the command lines of `ame run` and `ame twistd`
** (opts.h): the options, their checks (a bad value is one line and exit
** status 2) and the --help texts.  `ame run` uses getopt_long; `ame
** twistd` takes only its own leading long options and hands the rest to
** twistd, so one table (OPTS) serves both.
*/
#include "opts.h"

#include "ame/heap.h"
#include "ame/stm.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef AME_PYTHON
#define AME_PYTHON "/usr/bin/python3"
#endif

int ame_parse_size(const char *s, size_t *out) {
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

int ame_parse_shared_size(const char *s, size_t *out) {
  size_t n;
  if (ame_parse_size(s, &n) < 0 || n < AME_HEAP_MIN_SIZE ||
      n > AME_HEAP_MAX_SIZE)
    return -1;
  *out = n;
  return 0;
}

int ame_run_supervised(const struct opts *o) {
  return o->workers > 1 || o->max_requests || o->max_rss || o->metrics;
}

/* Seconds: >= 0, at most a day. */
static int parse_seconds(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !isfinite(v) || v < 0 || v > 86400)
    return -1;
  *out = v;
  return 0;
}

/* A count: 0..max. */
static int parse_count(const char *s, uint64_t max, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end || errno || v > max) return -1;
  *out = v;
  return 0;
}

static int parse_workers(const char *s, unsigned *out) {
  if (strcmp(s, "auto") == 0) {
    unsigned n = ame_cpu_count();
    *out = n > AME_RUN_MAX_WORKERS ? AME_RUN_MAX_WORKERS : n;
    return 0;
  }
  uint64_t v;
  if (parse_count(s, AME_RUN_MAX_WORKERS, &v) < 0 || v < 1) return -1;
  *out = (unsigned)v;
  return 0;
}

/* The options both commands take: name, what the value must be. */
enum { O_WORKERS = 'w', O_GRACE = 'g', O_SOCKETS = 's', O_IO = 'i',
       O_SHARED = 'S', O_TIMEOUT = 't', O_MAXREQ = 'R', O_JITTER = 'J',
       O_MAXRSS = 'M', O_METRICS = 'X', O_PIDFILE = 'P' };

static const struct {
  const char *name;
  int key;
  const char *want; /* the usage error: "--NAME wants WANT, not 'VALUE'" */
} OPTS[] = {
    {"workers", O_WORKERS, "a number from 1 to 1024 or 'auto'"},
    {"grace", O_GRACE, "seconds (>= 0)"},
    {"sockets", O_SOCKETS, "'reuseport' or 'shared'"},
    {"io", O_IO, "'thread', 'inline' or 'auto'"},
    {"shared-size", O_SHARED, "bytes, 4M to 47G (e.g. 256M, 2G)"},
    {"timeout", O_TIMEOUT, "seconds (>= 0; 0: no heartbeat check)"},
    {"max-requests", O_MAXREQ, "a number of requests (0: no limit)"},
    {"max-requests-jitter", O_JITTER, "a number of requests"},
    {"max-rss", O_MAXRSS, "MiB (a whole number; 0: no limit)"},
    {"metrics", O_METRICS, "HOST:PORT (e.g. 127.0.0.1:9100)"},
    {"pid-file", O_PIDFILE, "a file name"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

/* Print a usage error and return 2. */
static int usage_error(const char *cmd, const char *fmt, const char *arg) {
  fprintf(stderr, "ame %s: ", cmd);
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'ame %s --help'.\n", cmd);
  return 2;
}

/* Set option key from val.  Return -1, or 2 after a usage error. */
static int set_opt(const char *cmd, int key, const char *val, struct opts *o) {
  int bad = 0;
  uint64_t v;
  switch (key) {
  case O_WORKERS: bad = parse_workers(val, &o->workers); break;
  case O_GRACE: bad = parse_seconds(val, &o->grace_s); break;
  case O_TIMEOUT: bad = parse_seconds(val, &o->timeout_s); break;
  case O_SOCKETS:
    bad = strcmp(val, "reuseport") != 0 && strcmp(val, "shared") != 0;
    if (!bad) o->sockets = val;
    break;
  case O_IO:
    bad = strcmp(val, "thread") != 0 && strcmp(val, "inline") != 0 &&
          strcmp(val, "auto") != 0;
    if (!bad) o->io = val;
    break;
  case O_SHARED:
    bad = ame_parse_shared_size(val, &o->shared_size) < 0;
    break;
  case O_MAXREQ:
    bad = parse_count(val, (uint64_t)1 << 50, &o->max_requests);
    break;
  case O_JITTER:
    bad = parse_count(val, (uint64_t)1 << 50, &o->max_requests_jitter);
    o->jitter_set = 1;
    break;
  case O_MAXRSS:
    bad = parse_count(val, (uint64_t)1 << 30, &v);
    if (!bad) o->max_rss = v << 20;
    break;
  case O_METRICS:
    bad = strchr(val, ':') == NULL || val[strlen(val) - 1] == ':';
    o->metrics = val;
    break;
  case O_PIDFILE:
    bad = *val == '\0';
    o->pid_file = val;
    break;
  }
  if (!bad) return -1;
  for (unsigned k = 0; k < NOPTS; k++)
    if (OPTS[k].key == key) {
      char fmt[160];
      snprintf(fmt, sizeof fmt, "--%s wants %s, not '%%s'", OPTS[k].name,
               OPTS[k].want);
      return usage_error(cmd, fmt, val);
    }
  return 2;
}

static void defaults(struct opts *o, const char *cmd, const char *mode) {
  memset(o, 0, sizeof *o);
  o->cmd = cmd;
  o->mode = mode;
  o->workers = 1;
  o->grace_s = AME_RUN_DEFAULT_GRACE_S;
  o->timeout_s = AME_RUN_DEFAULT_TIMEOUT_S;
  o->sockets = "reuseport";
  o->io = "auto";
}

/* Checks across options, after parsing.  Return -1 or 2. */
static int finish(const char *cmd, struct opts *o) {
  if (o->max_requests && !o->jitter_set)
    o->max_requests_jitter = o->max_requests / 10;
  if (o->jitter_set && !o->max_requests)
    return usage_error(cmd, "%s", "--max-requests-jitter needs "
                                  "--max-requests");
  return -1;
}

/* The supervisor's options, for both --help texts. */
#define SUP_HELP                                                            \
"      --timeout SECONDS  a worker whose reactor loop has not run for this\n" \
"                        long is hung: it is killed (its Python traceback\n" \
"                        printed) and replaced (default %g; 0: never);\n"    \
"                        a reload's setup gets as long (0: 60 s)\n"          \
"      --max-requests N  replace a worker gracefully once it has served N\n" \
"                        HTTP requests, plus a random 0..JITTER (0: never)\n"\
"      --max-requests-jitter JITTER  (default N/10)\n"                        \
"      --max-rss MIB     replace a worker gracefully once its resident\n"    \
"                        memory passes MIB MiB (0: never)\n"                 \
"      --metrics HOST:PORT\n"                                                \
"                        serve the workers' counters: /metrics (Prometheus\n"\
"                        text), / (a live page), /data.json\n"               \
"      --pid-file FILE   write the supervisor's pid to FILE (removed at\n"   \
"                        exit; refused while FILE names a live process)\n"

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
"                        by the workers (K, M, G suffixes; 4M to 47G;\n"
"                        default AME_SHARED_SIZE, else 256M); memory is\n"
"                        used only as objects fill it\n"
SUP_HELP
"  -m MODULE             run a module as a script (the rest are its args)\n"
"  -v, --verbose         after a setup error's one line, print the traceback\n"
"  -h, --help            this help\n"
"\n"
"At start the soft limit on open descriptors (RLIMIT_NOFILE) is raised to\n"
"the hard limit, as nginx's worker_rlimit_nofile and Go's runtime do: a\n"
"server under the usual soft limit of 1024 runs out of descriptors long\n"
"before it runs out of anything else.\n"
"\n"
"--workers 1 (the default) is one process: exactly ame.reactor.install()\n"
"followed by the program; --max-requests, --max-rss or --metrics make it a\n"
"supervisor of one worker instead.\n"
"\n"
"--workers N > 1: the program's setup (everything before reactor.run()) runs\n"
"once.  At reactor.run() the process becomes a supervisor and forks N\n"
"workers; each runs the reactor on the listening sockets the setup created\n"
"(see --sockets).  The supervisor runs no Python code and never accepts.\n"
"  - It waits until every worker's reactor runs; a worker that fails before\n"
"    then stops them all (exit 1: no half-started service).\n"
"  - It restarts a worker that dies, after a back-off (0.1 s, doubling up to\n"
"    10 s while the worker keeps dying within 10 s of its start), and logs\n"
"    'ame run: worker 2 (pid 1234) died (signal 9); restarting in 0.1 s'.\n"
"  - SIGINT, SIGTERM: each worker stops accepting, lets the requests in\n"
"    flight finish (at most --grace seconds), then exits; a second signal\n"
"    kills the workers at once.\n"
"  - SIGHUP: reload.  The program runs again from the start in a new\n"
"    process (changed files are read again) and takes over the listening\n"
"    sockets; a new worker starts beside each old one, and once every new\n"
"    one serves, the old ones stop gracefully: no connection is refused or\n"
"    dropped.  A program that fails to start leaves the old workers\n"
"    serving (its error is printed).\n"
"  - SIGTTIN, SIGTTOU: one worker more, one fewer (never fewer than one).\n"
"  - SIGUSR1, SIGUSR2: passed on to every worker when the program handles\n"
"    them (twistd reopens its log on USR1), else they end the supervisor.\n"
"  - Each line a worker writes to stdout or stderr gets the prefix '[wN] '.\n"
"  - If the supervisor dies (even by SIGKILL), each worker gets SIGTERM and\n"
"    ends within --grace + 5 s whatever it is doing.\n"
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
"already in use included, also one that another 'ame run' serves), or a\n"
"program that returns without calling reactor.run() print one line, 'ame\n"
"run: PROGRAM: ...', and exit 1; so does a --pid-file that cannot be\n"
"written or a --metrics address in use; nothing is left running.\n"
"sys.exit(N) exits N.  Usage errors exit 2.\n"
"\n"
"Outside an installed ame, Python must find the ame package: in a build\n"
"tree, PYTHONPATH=BUILDDIR/bindings:bindings.  See docs/multicore.md.\n",
          AME_RUN_DEFAULT_GRACE_S, AME_RUN_DEFAULT_TIMEOUT_S);
}

static void twistd_usage(FILE *f) {
  fprintf(f,
"usage: ame twistd [--workers N|auto] [SUPERVISOR OPTIONS] [--verbose] [--]\n"
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
SUP_HELP
"  --verbose          print the traceback of a setup error\n"
"  --help             this help\n"
"\n"
"With --workers N > 1 the supervisor of 'ame run' applies (see 'ame run\n"
"--help', including the per-worker state limit, SIGHUP and the rest): the\n"
"listeners that twistd's services open before reactor.run() are shared by\n"
"the workers.  That covers strports and endpoint services ('web --listen\n"
"tcp:8080', '--port'), internet.TCPServer and the like (they listen in\n"
"privilegedStartService).  With -n (--nodaemon) the supervisor stays in\n"
"the foreground and twistd's log goes to stdout, prefixed per worker.\n"
"Daemonized (no -n), the daemon is the supervisor: --pidfile holds its pid\n"
"and it removes the file when it exits; its own messages (restarts) go to\n"
"its stderr, which twistd points at /dev/null, and SIGHUP cannot reload\n"
"(the program would have to daemonize again), so prefer -n under a\n"
"process manager.\n",
          AME_RUN_DEFAULT_GRACE_S, AME_RUN_DEFAULT_TIMEOUT_S);
}

int ame_run_parse(int argc, char **argv, struct opts *o) {
  defaults(o, "ame run", "path");
  struct option longopts[NOPTS + 3];
  for (unsigned k = 0; k < NOPTS; k++)
    longopts[k] = (struct option){OPTS[k].name, required_argument, NULL,
                                  OPTS[k].key};
  longopts[NOPTS] = (struct option){"verbose", no_argument, NULL, 'v'};
  longopts[NOPTS + 1] = (struct option){"help", no_argument, NULL, 'h'};
  longopts[NOPTS + 2] = (struct option){NULL, 0, NULL, 0};
  int ch;
  opterr = 0;
  optind = 1;
  /* '+': options end at the program; -m ends them too (below). */
  while ((ch = getopt_long(argc, argv, "+:w:m:vh", longopts, NULL)) != -1) {
    int r = -1;
    switch (ch) {
    case 'm':
      o->mode = "module";
      o->target = optarg;
      break;
    case 'v': o->verbose = 1; break;
    case 'h': run_usage(stdout); return 0;
    case ':':
      return usage_error("run", "%s needs a value", argv[optind - 1]);
    case '?': /* optopt: the letter, for a short option (maybe in a
              ** cluster such as -vx); 0 for a long one */
      if (optopt > 0 && optopt < 128) {
        char name[3] = {'-', (char)optopt, '\0'};
        return usage_error("run", "unknown option '%s'", name);
      }
      return usage_error("run", "unknown option '%s'", argv[optind - 1]);
    default: r = set_opt("run", ch, optarg, o);
    }
    if (r >= 0) return r;
    if (o->target) break; /* -m MODULE: the rest is the module's */
  }
  if (o->target == NULL) {
    if (optind >= argc)
      return usage_error("run", "%s", "which program? (ame run PROGRAM.py)");
    o->target = argv[optind++];
    if (*o->target == '\0')
      return usage_error("run", "%s", "the program's name is empty");
  } else if (*o->target == '\0') {
    return usage_error("run", "%s", "-m wants a module name");
  }
  o->args = argv + optind;
  o->nargs = argc - optind;
  return finish("run", o);
}

int ame_twistd_parse(int argc, char **argv, struct opts *o) {
  defaults(o, "ame twistd", "twistd");
  /* Only our own leading long options; the first other argument starts
  ** twistd's (getopt would reject twistd's options). */
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      twistd_usage(stdout);
      return 0;
    } else if (strcmp(a, "--verbose") == 0) {
      o->verbose = 1;
      continue;
    }
    int key = 0;
    const char *val = NULL;
    for (unsigned k = 0; k < NOPTS && !key; k++) {
      size_t n = strlen(OPTS[k].name);
      if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, OPTS[k].name, n) == 0 &&
          (a[2 + n] == '\0' || a[2 + n] == '=')) {
        key = OPTS[k].key;
        val = a[2 + n] == '=' ? a + 3 + n : NULL;
      }
    }
    if (!key) break;
    if (val == NULL) {
      if (i + 1 >= argc) return usage_error("twistd", "%s needs a value", a);
      val = argv[++i];
    }
    int r = set_opt("twistd", key, val, o);
    if (r >= 0) return r;
  }
  o->args = argv + i;
  o->nargs = argc - i;
  return finish("twistd", o);
}
