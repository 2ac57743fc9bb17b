/*
** cmd/run/page.c — the supervisor's shared page of worker entries, and
** what a worker process sets up for itself (page.h).
**
** The orphan deadline.  A worker's parent is the supervisor.  If the
** supervisor dies (SIGKILL, a crash), PR_SET_PDEATHSIG sends the worker
** ORPHAN_SIG; its handler (async-signal-safe) arms a POSIX timer, made at
** the worker's start, that delivers SIGKILL deadline_s later, and sends the
** worker SIGTERM, which starts its graceful stop.  A worker stuck in a
** Python loop never gets to run that stop; the timer ends it all the same,
** so no worker outlives its supervisor by more than the deadline, and none
** keeps serving a port that a restarted service binds again.
*/
#include "page.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* Sent by the kernel to a worker whose supervisor died.  A real-time
** signal that neither CPython nor Twisted uses. */
#define ORPHAN_SIG (SIGRTMAX - 1)

static ame_page_entry_t *page;  /* AME_PAGE_ENTRIES entries, or NULL */
static ame_page_entry_t *mine;  /* in a worker: its entry */
static timer_t orphan_timer;
static struct itimerspec orphan_its;

int ame_page_create(void) {
  size_t size = AME_PAGE_ENTRIES * sizeof(ame_page_entry_t);
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return -errno;
  page = p;
  return 0;
}

ame_page_entry_t *ame_page_entry(unsigned i) {
  if (page == NULL || i >= AME_PAGE_ENTRIES) return NULL;
  return &page[i];
}

void ame_page_reset(unsigned i, uint64_t max_requests) {
  ame_page_entry_t *e = ame_page_entry(i);
  if (e == NULL) return;
  atomic_store_explicit(&e->beat_ns, 0, memory_order_relaxed);
  for (unsigned k = 0; k < AME_PAGE_NCOUNTERS; k++)
    atomic_store_explicit(&e->c[k], 0, memory_order_relaxed);
  atomic_store_explicit(&e->recycle, 0, memory_order_relaxed);
  atomic_store_explicit(&e->seq, 0, memory_order_relaxed);
  e->max_requests = max_requests;
  atomic_store_explicit(&e->text[0], 0, memory_order_relaxed);
}

void ame_page_text(unsigned i, char *buf, size_t size) {
  ame_page_entry_t *e = ame_page_entry(i);
  buf[0] = '\0';
  if (e == NULL || size == 0) return;
  size_t n = size - 1 < AME_PAGE_TEXT - 1 ? size - 1 : AME_PAGE_TEXT - 1;
  for (int tries = 0; tries < 100; tries++) {
    uint32_t s0 = atomic_load_explicit(&e->seq, memory_order_acquire);
    if (s0 & 1) continue;
    for (size_t w = 0; w * 8 < n; w++) {
      uint64_t v = atomic_load_explicit(&e->text[w], memory_order_relaxed);
      size_t k = n - w * 8 < 8 ? n - w * 8 : 8;
      memcpy(buf + w * 8, &v, k);
    }
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&e->seq, memory_order_relaxed) == s0) {
      buf[n] = '\0';
      return;
    }
  }
  buf[0] = '\0';
}

/* ---- in a worker ----------------------------------------------------- */

static void on_orphan(int signo) {
  (void)signo;
  int saved = errno;
  timer_settime(orphan_timer, 0, &orphan_its, NULL);
  kill(getpid(), SIGTERM);
  errno = saved;
}

int ame_page_worker_setup(unsigned entry, int supervisor_pid,
                          double deadline_s) {
  mine = ame_page_entry(entry);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_SIGNAL;
  sev.sigev_signo = SIGKILL;
  orphan_its.it_value.tv_sec = (time_t)deadline_s;
  orphan_its.it_value.tv_nsec =
      (long)((deadline_s - (double)(time_t)deadline_s) * 1e9);
  if (orphan_its.it_value.tv_sec == 0 && orphan_its.it_value.tv_nsec == 0)
    orphan_its.it_value.tv_nsec = 1;
  if (timer_create(CLOCK_MONOTONIC, &sev, &orphan_timer) == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_orphan;
    sigemptyset(&sa.sa_mask);
    sigaction(ORPHAN_SIG, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, ORPHAN_SIG);
  } else {
    /* No timer (cannot happen on Linux): a plain SIGKILL at once. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
  }
  if (getppid() != supervisor_pid) return -1; /* gone before prctl */
  return 0;
}

uint64_t ame_page_max_requests(void) {
  return mine ? mine->max_requests : 0;
}

void ame_page_tick(const uint64_t *counters, unsigned n, const char *text,
                   int recycle) {
  if (mine == NULL) return;
  for (unsigned k = 0; k < n && k < AME_PAGE_NCOUNTERS; k++)
    atomic_store_explicit(&mine->c[k], counters[k], memory_order_relaxed);
  if (text) {
    uint32_t s = atomic_load_explicit(&mine->seq, memory_order_relaxed);
    atomic_store_explicit(&mine->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    char tmp[AME_PAGE_TEXT];
    memset(tmp, 0, sizeof tmp);
    memcpy(tmp, text, strnlen(text, AME_PAGE_TEXT - 1));
    for (size_t w = 0; w < AME_PAGE_TEXT / 8; w++) {
      uint64_t v;
      memcpy(&v, tmp + w * 8, 8);
      atomic_store_explicit(&mine->text[w], v, memory_order_relaxed);
    }
    atomic_store_explicit(&mine->seq, s + 2, memory_order_release);
  }
  if (recycle) atomic_store_explicit(&mine->recycle, 1, memory_order_relaxed);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  if (now == 0) now = 1;
  atomic_store_explicit(&mine->beat_ns, now, memory_order_release);
}
