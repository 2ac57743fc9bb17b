/*
** stm/src/cpus.c — ame_cpu_count(): how many CPUs this process can use.
**
** The CPUs of the affinity mask (taskset, cpusets), lowered to the CPU
** quota of the process's cgroups, rounded up: a container started with
** `docker run --cpus=2` on a 16-core host may run on all 16 cores but gets
** two cores' worth of time, and 16 workers there only take turns and get
** throttled.  The quota is the smallest over the process's cgroup and its
** ancestors, in cgroup v2 (cpu.max: "QUOTA PERIOD" or "max PERIOD") and in
** cgroup v1's cpu controller (cpu.cfs_quota_us, -1 for none, over
** cpu.cfs_period_us).  Where the cgroup files cannot be read the quota is
** taken as none: the count is never made smaller by an error.
**
** The files are found as the kernel describes them: /proc/self/cgroup gives
** the process's cgroup path in each hierarchy, /proc/self/mountinfo where
** each hierarchy is mounted and which part of it (the mount's root; in a
** container with its own cgroup namespace that is "/").  This is what
** Go's runtime and the JDK do; libuv's uv_available_parallelism() reads
** only the affinity mask in Debian 12's libuv (1.44).
*/
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

/* One mount of a cgroup hierarchy: its mount point and the hierarchy path
** that appears there. */
struct cg_mount {
  char point[512];
  char root[512];
};

/* Undo mountinfo's octal escapes (\040 for a space, ...) in place. */
static void unescape(char *s) {
  char *o = s;
  for (char *i = s; *i; i++) {
    if (i[0] == '\\' && i[1] >= '0' && i[1] <= '3' && i[2] >= '0' &&
        i[2] <= '7' && i[3] >= '0' && i[3] <= '7') {
      *o++ = (char)((i[1] - '0') * 64 + (i[2] - '0') * 8 + (i[3] - '0'));
      i += 3;
    } else {
      *o++ = *i;
    }
  }
  *o = '\0';
}

/* Is word an item of the comma-separated list? */
static int in_list(const char *list, const char *word) {
  size_t n = strlen(word);
  for (const char *p = list; p && *p;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && strncmp(p, word, n) == 0) return 1;
    p = end ? end + 1 : NULL;
  }
  return 0;
}

/* Find the mount of cgroup v2 (v1 == 0) or of v1's cpu controller (v1 ==
** 1) in the mountinfo file.  Return 0, or -1 if there is none. */
static int find_mount(const char *mountinfo, int v1, struct cg_mount *m) {
  FILE *f = fopen(mountinfo, "re");
  if (f == NULL) return -1;
  char line[4096];
  int found = -1;
  while (found < 0 && fgets(line, sizeof line, f)) {
    /* id parent major:minor root point options [optional...] - type src
    ** superoptions */
    char *save = NULL, *field[6], *t = NULL;
    int n = 0;
    while (n < 6 && (t = strtok_r(n ? NULL : line, " \n", &save)))
      field[n++] = t;
    if (n < 6) continue;
    /* Optional fields up to the separator. */
    while ((t = strtok_r(NULL, " \n", &save)) && strcmp(t, "-") != 0) {
    }
    if (t == NULL) continue;
    char *type = strtok_r(NULL, " \n", &save);
    char *src = strtok_r(NULL, " \n", &save);
    char *super = strtok_r(NULL, " \n", &save);
    (void)src;
    if (type == NULL) continue;
    int match = v1 ? strcmp(type, "cgroup") == 0 && super &&
                         in_list(super, "cpu")
                   : strcmp(type, "cgroup2") == 0;
    if (!match || strlen(field[3]) >= sizeof m->root ||
        strlen(field[4]) >= sizeof m->point)
      continue;
    strcpy(m->root, field[3]);
    strcpy(m->point, field[4]);
    unescape(m->root);
    unescape(m->point);
    found = 0;
  }
  fclose(f);
  return found;
}

/* The process's path in cgroup v2 (v1 == 0) or in v1's cpu hierarchy,
** from the cgroup file, into out.  Return 0 or -1. */
static int cgroup_path(const char *cgroup, int v1, char *out, size_t size) {
  FILE *f = fopen(cgroup, "re");
  if (f == NULL) return -1;
  char line[4096];
  int found = -1;
  while (found < 0 && fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *c1 = strchr(line, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (c2 == NULL) continue;
    *c2 = '\0';
    const char *controllers = c1 + 1, *path = c2 + 1;
    int match = v1 ? in_list(controllers, "cpu")
                   : strncmp(line, "0:", 2) == 0 && *controllers == '\0';
    if (match && strlen(path) < size) {
      strcpy(out, path);
      found = 0;
    }
  }
  fclose(f);
  return found;
}

/* Read the first line of path into buf.  Return 0 or -1. */
static int read_line(const char *path, char *buf, size_t size) {
  FILE *f = fopen(path, "re");
  if (f == NULL) return -1;
  int ok = fgets(buf, (int)size, f) != NULL;
  fclose(f);
  return ok ? 0 : -1;
}

/* The quota (CPUs, > 0) set in directory dir, or 0 for none. */
static double quota_in(const char *dir, int v1) {
  char path[1100], a[64], b[64];
  if (!v1) {
    snprintf(path, sizeof path, "%s/cpu.max", dir);
    if (read_line(path, a, sizeof a) != 0) return 0;
    char q[32];
    long long period;
    if (sscanf(a, "%31s %lld", q, &period) != 2 || period <= 0) return 0;
    if (strcmp(q, "max") == 0) return 0;
    char *end;
    long long quota = strtoll(q, &end, 10);
    return *end == '\0' && quota > 0 ? (double)quota / (double)period : 0;
  }
  snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
  if (read_line(path, a, sizeof a) != 0) return 0;
  snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
  if (read_line(path, b, sizeof b) != 0) return 0;
  long long quota = strtoll(a, NULL, 10), period = strtoll(b, NULL, 10);
  return quota > 0 && period > 0 ? (double)quota / (double)period : 0;
}

/* The smallest quota over the process's cgroup and its ancestors in one
** hierarchy, or 0 for none. */
static double hierarchy_quota(const char *cgroup, const char *mountinfo,
                              const char *prefix, int v1) {
  struct cg_mount m;
  char path[512];
  if (find_mount(mountinfo, v1, &m) != 0 ||
      cgroup_path(cgroup, v1, path, sizeof path) != 0)
    return 0;
  /* The part of path below the mount's root; a cgroup outside what is
  ** mounted here cannot be read. */
  size_t rl = strcmp(m.root, "/") == 0 ? 0 : strlen(m.root);
  if (strncmp(path, m.root, rl) != 0 || (path[rl] != '/' && path[rl] != '\0'))
    return 0;
  char dir[1024], top[1024];
  int n = snprintf(top, sizeof top, "%s%s", prefix, m.point);
  if (n < 0 || (size_t)n >= sizeof top) return 0;
  n = snprintf(dir, sizeof dir, "%s%s", top, path + rl);
  if (n < 0 || (size_t)n >= sizeof dir) return 0;
  size_t tl = strlen(top);
  while (tl > 1 && top[tl - 1] == '/') top[--tl] = '\0';
  double best = 0;
  for (;;) {
    size_t dl = strlen(dir);
    while (dl > tl && dir[dl - 1] == '/') dir[--dl] = '\0';
    double q = quota_in(dir, v1);
    if (q > 0 && (best == 0 || q < best)) best = q;
    if (dl <= tl) break;
    char *slash = strrchr(dir, '/');
    if (slash == NULL || (size_t)(slash - dir) < tl) break;
    *slash = '\0';
  }
  return best;
}

double ame__cpu_quota(const char *cgroup, const char *mountinfo,
                      const char *prefix) {
  double q2 = hierarchy_quota(cgroup, mountinfo, prefix, 0);
  double q1 = hierarchy_quota(cgroup, mountinfo, prefix, 1);
  if (q1 > 0 && (q2 == 0 || q1 < q2)) return q1;
  return q2;
}

unsigned ame__cpu_count_with(unsigned affinity, double quota) {
  unsigned n = affinity ? affinity : 1;
  if (quota > 0) {
    /* Rounded up (1.5 CPUs of time: 2 workers), at least 1. */
    double c = quota < 65536 ? quota : 65536;
    unsigned up = (unsigned)c;
    if ((double)up < c - 1e-9) up++;
    if (up < 1) up = 1;
    if (up < n) n = up;
  }
  return n;
}

unsigned ame_cpu_count(void) {
  long n = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0) n = 1;
  if (n > 65536) n = 65536;
  return ame__cpu_count_with(
      (unsigned)n,
      ame__cpu_quota("/proc/self/cgroup", "/proc/self/mountinfo", ""));
}
