/*
** tests/runner.c — the test runner: one test per process, libuv-style.
**
**   run-stm-tests <name>   run one test in this process; exit 0 if it passed
**   run-stm-tests --list   print every test name, one a line
**   run-stm-tests          run every test, each in a child process of its
**                          own with its time limit, and print TAP output
**
** meson registers one test() per name (tests/meson.build), so `meson test`
** uses the first form; the last is for running the suite by hand.
**
** The same file builds every runner: compiled with AME_REACTOR_RUNNER
** defined it is run-reactor-tests, whose list is reactor/list.h; with
** AME_ITM_RUNNER, run-itm-tests (itm/list.h).
*/
#include "task.h"

#if defined(AME_REACTOR_RUNNER)
#include "reactor/list.h"
#define AME_TESTS AME_REACTOR_TESTS
#elif defined(AME_ITM_RUNNER)
#include "itm/list.h"
#define AME_TESTS AME_ITM_TESTS
#else
#include "stm/list.h"
#define AME_TESTS AME_STM_TESTS
#endif

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Sanitizer defaults for this binary (the environment still overrides
** them): tests ask for impossible sizes and expect NULL, not a report. */
#if defined(AME_TEST_ASAN)
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "allocator_may_return_null=1";
}
#endif
#if defined(AME_TEST_TSAN)
const char *__tsan_default_options(void);
const char *__tsan_default_options(void) {
  return "allocator_may_return_null=1";
}
#endif

#define X(name, timeout) TEST_IMPL(name);
AME_TESTS(X)
#undef X

struct test_entry {
  const char *name;   /* the test's name, as in the list */
  void (*fn)(void);   /* its body */
  unsigned timeout_s; /* its time limit when run by the runner itself */
};

static const struct test_entry tests[] = {
#define X(name, timeout) {#name, test_##name, timeout},
    AME_TESTS(X)
#undef X
};

#define NTESTS (sizeof tests / sizeof tests[0])

static const struct test_entry *find_test(const char *name) {
  for (size_t i = 0; i < NTESTS; i++)
    if (strcmp(tests[i].name, name) == 0)
      return &tests[i];
  return NULL;
}

/* Run test t in a child process; return 0 if it passed, 77 if it was
** skipped, -1 if it failed. */
static int run_child(const char *self, const struct test_entry *t) {
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return -1;
  }
  if (pid == 0) {
    execl(self, self, t->name, (char *)NULL);
    perror("execl");
    _exit(127);
  }
  uint64_t deadline = now_ms() + (uint64_t)t->timeout_s * 1000u * slow_factor();
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid)
      break;
    if (r < 0 && errno != EINTR) {
      perror("waitpid");
      return -1;
    }
    if (now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      fprintf(stderr, "# %s: timed out after %u s\n", t->name,
              t->timeout_s * slow_factor());
      return -1;
    }
    sleep_ms(5);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
    return 77;
  if (WIFSIGNALED(status))
    fprintf(stderr, "# %s: killed by signal %d\n", t->name, WTERMSIG(status));
  else
    fprintf(stderr, "# %s: exit status %d\n", t->name, WEXITSTATUS(status));
  return -1;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--list") == 0) {
    for (size_t i = 0; i < NTESTS; i++)
      printf("%s\n", tests[i].name);
    return 0;
  }
  if (argc == 2) {
    const struct test_entry *t = find_test(argv[1]);
    if (t == NULL) {
      fprintf(stderr, "%s: no test named '%s' (try --list)\n", argv[0],
              argv[1]);
      return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    t->fn();
    printf("ok %s\n", t->name);
    return 0;
  }
  if (argc != 1) {
    fprintf(stderr, "usage: %s [--list | test-name]\n", argv[0]);
    return 2;
  }
  /* Every test, each in its own process. */
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    perror("readlink /proc/self/exe");
    return 2;
  }
  self[n] = '\0';
  int failed = 0;
  printf("1..%zu\n", NTESTS);
  for (size_t i = 0; i < NTESTS; i++) {
    uint64_t t0 = now_ms();
    int r = run_child(self, &tests[i]);
    printf("%s %zu - %s%s (%" PRIu64 " ms)\n",
           r == 0 || r == 77 ? "ok" : "not ok", i + 1, tests[i].name,
           r == 77 ? " # SKIP" : "", now_ms() - t0);
    fflush(stdout);
    failed += r != 0 && r != 77;
  }
  printf("# %d of %zu failed\n", failed, NTESTS);
  return failed ? 1 : 0;
}
