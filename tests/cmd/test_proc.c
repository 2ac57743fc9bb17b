/*
** tests/cmd/test_proc.c — which children the supervisor may take for
** stray workers (cmd/run/proc.h): named as a worker, and not exiting.
**
**   test-proc    run every case; exit 0 if all pass
*/
#include "proc.h"
#include "task.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* A child that names itself `name`, says so on a pipe, then either exits
** at once (exit_now) or waits until its parent kills it. */
static pid_t child_named(const char *name, int exit_now) {
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    if (write(p[1], "x", 1) != 1) _exit(2);
    if (exit_now) _exit(0);
    for (;;) pause();
  }
  close(p[1]);
  char c;
  ASSERT(read(p[0], &c, 1) == 1);
  close(p[0]);
  return pid;
}

static void reap_child(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  ASSERT(waitpid(pid, &st, 0) == pid);
}

/* Running children named "ame" and "ame-zygote" are workers; any other
** name is not. */
static void test_names(void) {
  pid_t w = child_named("ame", 0), z = child_named("ame-zygote", 0),
        other = child_named("amex", 0), prefix = child_named("am", 0);
  ASSERT(ame_proc_live_worker(w));
  ASSERT(ame_proc_live_worker(z));
  ASSERT(!ame_proc_live_worker(other));
  ASSERT(!ame_proc_live_worker(prefix));
  ASSERT(!ame_proc_live_worker(getpid())); /* test-proc */
  reap_child(w);
  reap_child(z);
  reap_child(other);
  reap_child(prefix);
}

/* A worker that exited and is not reaped yet (a zombie: still a child,
** still named "ame") is no stray; nor is a pid that is gone. */
static void test_exited(void) {
  pid_t pid = child_named("ame", 1);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  /* Wait until it has exited, leaving it unreaped. */
  ASSERT(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0);
  ASSERT_EQ((int)si.si_pid, (int)pid);
  ASSERT(!ame_proc_live_worker(pid));
  int st;
  ASSERT(waitpid(pid, &st, 0) == pid);
  ASSERT(!ame_proc_live_worker(pid));
}

int main(void) {
  test_names();
  test_exited();
  printf("ok: stray workers from /proc\n");
  return 0;
}
