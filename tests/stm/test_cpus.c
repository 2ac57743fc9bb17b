/*
** tests/stm/test_cpus.c — ame_cpu_count(): the affinity mask lowered to the
** cgroup CPU quota.  The quota reader is run against fake /proc/self/cgroup,
** /proc/self/mountinfo and cgroup file systems in a temporary directory
** (cgroup v2, v1's cpu controller, both, a container's view, files missing
** or malformed), through the library's internal entry points (stm/src/
** internal.h, linked from the static library).
*/
#include "stm-test.h"

#include <errno.h>
#include <ftw.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* stm/src/internal.h */
double ame__cpu_quota(const char *cgroup, const char *mountinfo,
                      const char *prefix);
unsigned ame__cpu_count_with(unsigned affinity, double quota);

static char root[64];

/* Write text to root/rel, making the directories on the way. */
static void put(const char *rel, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  for (char *p = path + strlen(root) + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    ASSERT(mkdir(path, 0700) == 0 || errno == EEXIST);
    *p = '/';
  }
  FILE *f = fopen(path, "w");
  ASSERT_NOT_NULL(f);
  ASSERT_EQ(fputs(text, f) >= 0, 1);
  ASSERT_EQ(fclose(f), 0);
}

static double quota(void) {
  char cg[128], mi[128];
  snprintf(cg, sizeof cg, "%s/proc/cgroup", root);
  snprintf(mi, sizeof mi, "%s/proc/mountinfo", root);
  return ame__cpu_quota(cg, mi, root);
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void fresh_root(void) {
  if (root[0]) nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  strcpy(root, "/tmp/ame-cpus-XXXXXX");
  ASSERT_NOT_NULL(mkdtemp(root));
}

static void drop_root(void) {
  nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  root[0] = '\0';
}

#define MOUNT_V2 "30 20 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
#define MOUNT_V1_CPU \
  "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
#define MOUNT_V1_MEM \
  "26 20 0:23 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory\n"

TEST_IMPL(cpus_count_rounding) {
  ASSERT_EQ(ame__cpu_count_with(8, 0), 8);     /* no quota */
  ASSERT_EQ(ame__cpu_count_with(8, 1.5), 2);   /* rounded up */
  ASSERT_EQ(ame__cpu_count_with(8, 2.0), 2);   /* exactly 2 */
  ASSERT_EQ(ame__cpu_count_with(8, 0.25), 1);  /* at least one */
  ASSERT_EQ(ame__cpu_count_with(2, 4.0), 2);   /* the mask is smaller */
  ASSERT_EQ(ame__cpu_count_with(0, 0), 1);
  ASSERT_EQ(ame__cpu_count_with(64, 1e12), 64);
}

TEST_IMPL(cpus_count_here) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  unsigned n = ame_cpu_count();
  ASSERT_GE(n, 1);
  ASSERT_LE(n, (unsigned)CPU_COUNT(&set));
  /* Narrowing the mask narrows the count (the quota cannot raise it). */
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) {
      CPU_SET(c, &one);
      break;
    }
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  unsigned narrowed = ame_cpu_count();
  ASSERT_EQ(sched_setaffinity(0, sizeof set, &set), 0);
  ASSERT_EQ(narrowed, 1);
  ASSERT_EQ(ame_cpu_count(), n);
}

TEST_IMPL(cpus_quota_v2) {
  fresh_root();
  put("proc/cgroup", "0::/app.slice/web.service\n");
  put("proc/mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" MOUNT_V2);
  /* No cpu.max anywhere: no quota. */
  ASSERT_DOUBLE_EQ(quota(), 0);
  /* "max": no quota either. */
  put("sys/fs/cgroup/app.slice/web.service/cpu.max", "max 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  /* The parent's quota applies to the child. */
  put("sys/fs/cgroup/app.slice/cpu.max", "150000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 1.5);
  /* The smallest along the path wins. */
  put("sys/fs/cgroup/app.slice/web.service/cpu.max", "50000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 0.5);
  ASSERT_EQ(ame__cpu_count_with(16, quota()), 1);
  /* The root's file counts too. */
  put("sys/fs/cgroup/app.slice/web.service/cpu.max", "max 100000\n");
  put("sys/fs/cgroup/cpu.max", "100000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 1.0);
  drop_root();
}

TEST_IMPL(cpus_quota_v1) {
  fresh_root();
  put("proc/cgroup",
      "12:memory:/docker/abc\n"
      "4:cpu,cpuacct:/docker/abc\n"
      "1:name=systemd:/docker/abc\n");
  put("proc/mountinfo", MOUNT_V1_MEM MOUNT_V1_CPU);
  put("sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us", "-1\n");
  put("sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  put("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n");
  put("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  ASSERT_DOUBLE_EQ(quota(), 2.5);
  ASSERT_EQ(ame__cpu_count_with(16, quota()), 3);
  /* -1: none. */
  put("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  /* The memory hierarchy's files are not the cpu controller's. */
  put("sys/fs/cgroup/memory/docker/abc/cpu.cfs_quota_us", "10000\n");
  put("sys/fs/cgroup/memory/docker/abc/cpu.cfs_period_us", "100000\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  drop_root();
}

TEST_IMPL(cpus_quota_both) {
  /* A hybrid system (v1 cpu controller and a v2 hierarchy): the smaller. */
  fresh_root();
  put("proc/cgroup", "4:cpu,cpuacct:/job\n0::/job\n");
  put("proc/mountinfo",
      MOUNT_V1_CPU
      "31 20 0:27 / /sys/fs/cgroup/unified rw shared:5 - cgroup2 cgroup2 rw\n");
  put("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "300000\n");
  put("sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n");
  ASSERT_DOUBLE_EQ(quota(), 3.0);
  put("sys/fs/cgroup/unified/job/cpu.max", "200000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 2.0);
  drop_root();
}

TEST_IMPL(cpus_quota_container) {
  /* A container without a cgroup namespace: /proc/self/cgroup names the
  ** host's path, and the container's own cgroup is mounted (root
  ** /docker/abc) at /sys/fs/cgroup. */
  fresh_root();
  put("proc/cgroup", "0::/docker/abc\n");
  put("proc/mountinfo",
      "40 30 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup "
      "rw\n");
  put("sys/fs/cgroup/cpu.max", "150000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 1.5);
  /* A cgroup outside what is mounted cannot be read: no quota. */
  put("proc/cgroup", "0::/other\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  /* /docker/abcdef is not below /docker/abc. */
  put("proc/cgroup", "0::/docker/abcdef\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  /* With a cgroup namespace: root "/" and path "/". */
  put("proc/cgroup", "0::/\n");
  put("proc/mountinfo",
      "40 30 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
  ASSERT_DOUBLE_EQ(quota(), 1.5);
  drop_root();
}

TEST_IMPL(cpus_quota_escaped_mount) {
  /* mountinfo escapes a space in a mount point as \040. */
  fresh_root();
  put("proc/cgroup", "0::/a\n");
  put("proc/mountinfo",
      "30 20 0:26 / /cg\\040root rw - cgroup2 cgroup2 rw\n");
  put("cg root/a/cpu.max", "400000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 4.0);
  drop_root();
}

TEST_IMPL(cpus_quota_bad_files) {
  /* Nothing readable, or nothing that parses: no quota, never an error. */
  fresh_root();
  ASSERT_DOUBLE_EQ(quota(), 0); /* no files at all */
  put("proc/cgroup", "0::/a\n");
  ASSERT_DOUBLE_EQ(quota(), 0); /* no mountinfo */
  put("proc/mountinfo", "garbage\n\n30 20 0:26 / /x rw\n" MOUNT_V2);
  put("sys/fs/cgroup/a/cpu.max", "lots 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  put("sys/fs/cgroup/a/cpu.max", "100000 0\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  put("sys/fs/cgroup/a/cpu.max", "-5 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  put("sys/fs/cgroup/a/cpu.max", "");
  ASSERT_DOUBLE_EQ(quota(), 0);
  put("proc/cgroup", "no colons here\n");
  put("sys/fs/cgroup/a/cpu.max", "100000 100000\n");
  ASSERT_DOUBLE_EQ(quota(), 0);
  put("proc/cgroup", "0::/a\n");
  ASSERT_DOUBLE_EQ(quota(), 1.0); /* and the same tree, well formed */
  drop_root();
}
