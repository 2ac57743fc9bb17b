/*
** cmd/run/run.h — `ame run` and `ame twistd`: a Twisted program on
** the ame reactor, in one process or in N supervised worker processes
** (cmd/run/run.c; docs/multicore.md).
*/
#ifndef AME_CMD_RUN_H
#define AME_CMD_RUN_H

/* Run `ame run` with argv[0] = "run".  Return the exit status: the
** program's (0 when it ends normally), 1 for an error (one line on
** stderr), 2 for a usage error.  A worker process returns its own status
** the same way; the supervisor of --workers N exits from inside. */
int ame_run_main(int argc, char **argv);

/* Run `ame twistd` with argv[0] = "twistd"; the same statuses. */
int ame_twistd_main(int argc, char **argv);

#endif /* AME_CMD_RUN_H */
