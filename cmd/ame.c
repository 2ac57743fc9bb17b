/*
** cmd/ame.c — main() of the `ame` command: dispatches to its
** subcommands.
**
**   ame load URL [...]   HTTP/1.1 load generator (load/, docs/load.md)
**   ame run ...          run a Twisted program on the ame reactor, in one
**                        process or N supervised workers (run/,
**                        docs/multicore.md)
**   ame twistd ...       twistd with the ame reactor (run/)
**   ame help [COMMAND]   list the subcommands, or a subcommand's help
**
** Each subcommand is built only where what it needs is found
** (cmd/meson.build): `ame load` needs http-parser, `ame run` and `ame
** twistd` need python3-embed; neither needs the other's.
*/
#include "load/load.h"
#include "run/run.h"

#include <stdio.h>
#include <string.h>

#ifndef AME_VERSION
#define AME_VERSION "dev"
#endif

#ifdef AME_HAVE_LOAD
#define AME_LOAD_MAIN ame_load_main
#else
#define AME_LOAD_MAIN NULL
#endif
#ifdef AME_HAVE_RUN
#define AME_RUN_MAIN ame_run_main
#define AME_TWISTD_MAIN ame_twistd_main
#else
#define AME_RUN_MAIN NULL
#define AME_TWISTD_MAIN NULL
#endif

static const struct command {
  const char *name;
  const char *summary;
  int (*main)(int argc, char **argv); /* NULL: not in this build */
  const char *needs;                  /* what a build needs to have it */
} commands[] = {
    {"load", "HTTP/1.1 load generator on the ame reactor", AME_LOAD_MAIN,
     "http-parser"},
    {"run", "run a Twisted program on the ame reactor", AME_RUN_MAIN,
     "python3-embed"},
    {"twistd", "twistd with the ame reactor installed", AME_TWISTD_MAIN,
     "python3-embed"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f, "usage: ame COMMAND [ARGS...]\n\n"
             "ame runs event-driven programs on a multi-core reactor whose "
             "callbacks are\ntransactions.  Commands:\n\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(f, "  %-8s %s%s\n", commands[i].name, commands[i].summary,
            commands[i].main ? "" : " (not in this build)");
  fprintf(f, "  %-8s %s\n\n", "help", "this list, or 'ame help COMMAND'");
  fprintf(f, "'ame COMMAND --help' describes a command.  ame --version "
             "prints the version.\n");
}

static const struct command *find(const char *name) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0) return &commands[i];
  return NULL;
}

/* Run cmd with argv[0] = its name; 2 if this build lacks it. */
static int run(const struct command *cmd, int argc, char **argv) {
  if (cmd->main == NULL) {
    fprintf(stderr, "ame %s: not in this build (it needs %s)\n", cmd->name,
            cmd->needs);
    return 2;
  }
  return cmd->main(argc, argv);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *name = argv[1];
  if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(name, "--version") == 0) {
    printf("ame %s\n", AME_VERSION);
    return 0;
  }
  if (strcmp(name, "help") == 0) {
    if (argc < 3) {
      usage(stdout);
      return 0;
    }
    const struct command *cmd = find(argv[2]);
    if (cmd == NULL) {
      fprintf(stderr, "ame: no command '%s'; 'ame help' lists them\n",
              argv[2]);
      return 2;
    }
    char *args[] = {argv[2], "--help", NULL};
    return run(cmd, 2, args);
  }
  const struct command *cmd = find(name);
  if (cmd == NULL) {
    fprintf(stderr, "ame: no command '%s'; 'ame help' lists them\n", name);
    return 2;
  }
  return run(cmd, argc - 1, argv + 1);
}
