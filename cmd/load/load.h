/*
** cmd/load/load.h — `ame load`, the HTTP/1.1 load generator of the
** `ame` command (cmd/load/; internal.h says which file does what;
** docs/load.md).
*/
#ifndef AME_CMD_LOAD_H
#define AME_CMD_LOAD_H

/* Run `ame load` with argv[0] = "load".  Return the exit status: 0 when
** the run got responses, 1 when nothing succeeded (no connection, or no
** response), 2 on a usage error. */
int ame_load_main(int argc, char **argv);

#endif /* AME_CMD_LOAD_H */
