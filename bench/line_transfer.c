/*
** bench/line_transfer.c — what moving one cache line between two CPUs
** costs on this machine now (bench-line-transfer).
**
** Two threads, pinned to the first two CPUs this process may run on, hand a
** counter on one 64-byte line back and forth: each waits until the counter
** is its turn, then bumps it.  One handoff is one line transfer (the
** writer's store must invalidate the reader's copy, the reader's load must
** fetch it).  Prints one JSON line:
**
**     {"cpus": [0, 1], "handoffs": N, "ns_per_transfer": T,
**      "runs_ns": [t1, t2, t3]}
**
** T is the median of three runs of N handoffs each.  An STM's two-thread
** figure depends on this number (every write another thread then reads
** costs it), and under a hypervisor it changes while the machine runs:
** bench/stm_bench.py measures it around every multi-thread run.
**
**     bench-line-transfer [-n HANDOFFS]   (default 200000)
**
** Exit status 0; 2 on a usage error or when fewer than 2 CPUs are allowed.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The counter, alone on its line. */
static struct {
  _Alignas(64) _Atomic long turn;
  char pad[64 - sizeof(long)];
} g;

struct side {
  int cpu;
  long first; /* 0 or 1: which turns are this side's */
  long n;     /* handoffs in all */
};

static int pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *play(void *arg) {
  struct side *s = arg;
  if (pin(s->cpu) != 0) return (void *)1;
  for (long t = s->first; t < s->n; t += 2) {
    while (atomic_load_explicit(&g.turn, memory_order_acquire) != t)
      ;
    atomic_store_explicit(&g.turn, t + 1, memory_order_release);
  }
  return NULL;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  long n = 200000;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
      char *end;
      n = strtol(argv[++i], &end, 10);
      if (*end || n < 2 || n > 1000000000L) {
        fprintf(stderr, "bench-line-transfer: -n: 2..1e9 handoffs\n");
        return 2;
      }
    } else {
      fprintf(stderr, "usage: bench-line-transfer [-n HANDOFFS]\n");
      return 2;
    }
  }
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
    perror("bench-line-transfer: sched_getaffinity");
    return 2;
  }
  int cpus[2], found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; c++)
    if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
  if (found < 2) {
    fprintf(stderr, "bench-line-transfer: needs 2 CPUs, may use %d\n", found);
    return 2;
  }
  double runs[3];
  for (int r = 0; r < 3; r++) {
    atomic_store(&g.turn, 0);
    struct side a = {cpus[0], 0, n}, b = {cpus[1], 1, n};
    pthread_t ta, tb;
    void *ra, *rb;
    double t0 = now_ns();
    if (pthread_create(&ta, NULL, play, &a) != 0 ||
        pthread_create(&tb, NULL, play, &b) != 0) {
      fprintf(stderr, "bench-line-transfer: cannot start threads\n");
      return 2;
    }
    pthread_join(ta, &ra);
    pthread_join(tb, &rb);
    if (ra != NULL || rb != NULL) {
      fprintf(stderr, "bench-line-transfer: cannot pin to CPUs %d, %d\n",
              cpus[0], cpus[1]);
      return 2;
    }
    /* Thread start-up is in the time too: about 0.1% at the default n. */
    runs[r] = (now_ns() - t0) / n;
  }
  double sorted[3];
  memcpy(sorted, runs, sizeof runs);
  qsort(sorted, 3, sizeof sorted[0], cmp_double);
  printf("{\"cpus\": [%d, %d], \"handoffs\": %ld, \"ns_per_transfer\": %.1f, "
         "\"runs_ns\": [%.1f, %.1f, %.1f]}\n",
         cpus[0], cpus[1], n, sorted[1], runs[0], runs[1], runs[2]);
  return 0;
}
