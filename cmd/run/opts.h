/*
** cmd/run/opts.h — the command lines of `ame run` and `ame twistd`
** (opts.c): what they parse into, for run.c.
*/
#ifndef AME_CMD_OPTS_H
#define AME_CMD_OPTS_H

#include <stddef.h>
#include <stdint.h>

#define AME_RUN_MAX_WORKERS 1024
#define AME_RUN_DEFAULT_GRACE_S 10.0
#define AME_RUN_DEFAULT_TIMEOUT_S 30.0

struct opts {
  const char *cmd;    /* "ame run" or "ame twistd": the prefix of messages */
  const char *mode;   /* "path", "module" or "twistd" */
  const char *target; /* the program, the module, or NULL (twistd) */
  char **args;        /* the program's arguments */
  int nargs;
  unsigned workers;
  double grace_s;
  double timeout_s;   /* heartbeat timeout (0: off) */
  uint64_t max_requests, max_requests_jitter;
  int jitter_set;     /* --max-requests-jitter was given */
  uint64_t max_rss;   /* bytes (0: off) */
  const char *metrics; /* HOST:PORT, or NULL */
  const char *pid_file;
  const char *sockets; /* "reuseport" or "shared" */
  const char *io;      /* "thread", "inline" or "auto" */
  size_t shared_size;  /* the shared heap's bytes (0: AME_SHARED_SIZE or
                          the default) */
  int verbose;
};

/* Parse `ame run ...` (argv[0] = "run") or `ame twistd ...` into o.
** Return -1 to go on, or the exit status (0 after --help; 2 after a usage
** error, printed). */
int ame_run_parse(int argc, char **argv, struct opts *o);
int ame_twistd_parse(int argc, char **argv, struct opts *o);

/* Parse a size: bytes, or with a K, M or G suffix (powers of 1024).
** Return 0 or -1. */
int ame_parse_size(const char *s, size_t *out);

/* Parse the shared heap's size (--shared-size, AME_SHARED_SIZE): a size
** from AME_HEAP_MIN_SIZE to AME_HEAP_MAX_SIZE.  Return 0 or -1. */
int ame_parse_shared_size(const char *s, size_t *out);

/* Does o run a supervisor (worker processes), even for one worker? */
int ame_run_supervised(const struct opts *o);

#endif /* AME_CMD_OPTS_H */
