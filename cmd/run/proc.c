/*
** cmd/run/proc.c — a process's name and state from /proc (proc.h).
*/
#include "proc.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The kernel's PF_EXITING (include/linux/sched.h; not in its uapi), which
** /proc/PID/stat shows in its ninth field, the task's flags. */
#define PROC_EXITING 0x00000004ul

int ame_proc_live_worker(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  /* "PID (NAME) STATE PPID PGRP SESSION TTY TPGID FLAGS ...": the name
  ** may hold anything, ")" too, so it ends at the last ")". */
  char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');
  if (open_paren == NULL || close_paren == NULL || close_paren < open_paren)
    return 0;
  size_t len = (size_t)(close_paren - open_paren - 1);
  const char *name = open_paren + 1;
  if (!(len == 3 && memcmp(name, "ame", 3) == 0) &&
      !(len == 10 && memcmp(name, "ame-zygote", 10) == 0))
    return 0;
  char state;
  unsigned long flags;
  if (sscanf(close_paren + 1, " %c %*d %*d %*d %*d %*d %lu", &state,
             &flags) != 2)
    return 0;
  return state != 'Z' && state != 'X' && !(flags & PROC_EXITING);
}
