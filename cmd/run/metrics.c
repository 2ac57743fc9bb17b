/*
** cmd/run/metrics.c — the supervisor's metrics server (metrics.h).
**
** Per worker (slot): requests served (counter, over every process that
** served the slot), requests/s (a gauge: between its last two heartbeats,
** rate.h) and the busy fraction (a gauge: the last second), RSS, restarts
** and why, the reactor's counters and the STM's commits, aborts and
** hottest conflicts (page.h), and the state of the process serving it.
** Busy is the CPU time of the worker's main thread (the one that runs
** Python) over wall time, from /proc: 1.0 is a worker whose Python thread
** never waits.
*/
#include "metrics.h"

#include "output.h"
#include "sup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 16
#define REQ_MAX 4096      /* request bytes read (the rest is ignored) */
#define CONN_TIMEOUT_S 10 /* a connection that takes longer is dropped */

#define S ame_sup

struct conn {
  int fd;              /* -1: free */
  char req[REQ_MAX];
  size_t len;
  char *out;           /* the response, once the request is complete */
  size_t olen, opos;
  double deadline;
};

static struct conn C[MAX_CONNS];
static int nconns_init;

static const char *const COUNTER_NAMES[] = {
#define AME_PAGE_NAME(name, help) #name,
    AME_PAGE_COUNTERS(AME_PAGE_NAME)
#undef AME_PAGE_NAME
};
static const char *const COUNTER_HELP[] = {
#define AME_PAGE_HELP(name, help) help,
    AME_PAGE_COUNTERS(AME_PAGE_HELP)
#undef AME_PAGE_HELP
};

static void init_conns(void) {
  if (nconns_init) return;
  for (int k = 0; k < MAX_CONNS; k++) C[k].fd = -1;
  nconns_init = 1;
}

int ame_metrics_listen(const char *hostport, char *err, size_t errsize) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  if (colon == NULL || colon[1] == '\0' ||
      (size_t)(colon - hostport) >= sizeof host) {
    snprintf(err, errsize, "--metrics wants HOST:PORT, not '%s'", hostport);
    return -1;
  }
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  char *h = host;
  size_t hl = strlen(h);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
    h[hl - 1] = '\0';
    h++;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *ai;
  int rc = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai);
  if (rc != 0) {
    snprintf(err, errsize, "--metrics %s: %s", hostport, gai_strerror(rc));
    return -1;
  }
  /* No host: every address, IPv4 and IPv6 on one socket where the
  ** machine has IPv6 (the IPv6 wildcard first, taking IPv4 too), else the
  ** IPv4 wildcard. */
  int all = *h == '\0', fd = -1, e = 0;
  for (int pass = all ? 0 : 1; pass < 2 && fd < 0; pass++) {
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
      if (pass == 0 && a->ai_family != AF_INET6) continue;
      fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
      if (fd < 0) {
        e = errno;
        continue;
      }
      int one = 1, zero = 0;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (all && a->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
      if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0)
        break;
      e = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(ai);
  if (fd < 0)
    snprintf(err, errsize, "--metrics %s: %s", hostport, strerror(e));
  return fd;
}

size_t ame_metrics_count(void) {
  if (S.cfg->metrics_fd < 0) return 0;
  init_conns();
  return 1 + MAX_CONNS;
}

void ame_metrics_pollfds(struct pollfd *pfds) {
  if (S.cfg->metrics_fd < 0) return;
  int full = 1;
  for (int k = 0; k < MAX_CONNS; k++) {
    struct conn *c = &C[k];
    pfds[1 + k] = (struct pollfd){.fd = c->fd,
                                  .events = c->out ? POLLOUT : POLLIN};
    if (c->fd < 0) full = 0;
  }
  /* When every connection is taken, new ones wait in the backlog. */
  pfds[0] = (struct pollfd){.fd = full ? -1 : S.cfg->metrics_fd,
                            .events = POLLIN};
}

/* ---- a growable buffer ----------------------------------------------- */

struct buf {
  char *p;
  size_t len, cap;
  int oom;
};

static void bprintf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < room) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap ? b->cap * 2 : 8192;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
}

/* s as a JSON string. */
static void bjson(struct buf *b, const char *s) {
  bprintf(b, "\"");
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      bprintf(b, "\\%c", ch);
    else if (ch < 0x20)
      bprintf(b, "\\u%04x", ch);
    else
      bprintf(b, "%c", ch);
  }
  bprintf(b, "\"");
}

static const char *state_name(int slot) {
  const struct sup_slot *sl = &S.s[slot];
  if (sl->cur < 0) return sl->restart_at > 0 ? "restarting" : "down";
  switch (S.p[sl->cur].state) {
  case P_STARTING: return "starting";
  case P_READY: return sl->next >= 0 ? "handing over" : "serving";
  case P_STOPPING: return "stopping";
  case P_HUNG: return "hung";
  default: return "down";
  }
}

static double last(const float *ring, unsigned hlen, unsigned hpos) {
  if (ring == NULL || hlen == 0) return 0;
  return ring[(hpos + AME_SUP_HISTORY - 1) % AME_SUP_HISTORY];
}

/* ---- the answers ----------------------------------------------------- */

static void prometheus(struct buf *b, double now) {
  bprintf(b, "# HELP ame_workers Worker processes configured.\n"
             "# TYPE ame_workers gauge\name_workers %u\n", S.nslots);
  bprintf(b, "# HELP ame_generation The program run new workers come "
             "from (0: the first; +1 per reload).\n"
             "# TYPE ame_generation gauge\name_generation %u\n", S.gen);
  bprintf(b, "# HELP ame_reloads_total Reloads completed.\n"
             "# TYPE ame_reloads_total counter\name_reloads_total %u\n",
          S.reloads);
  bprintf(b, "# HELP ame_reload_failures_total Reloads that failed (the "
             "old workers went on).\n# TYPE ame_reload_failures_total "
             "counter\name_reload_failures_total %u\n", S.reload_failures);
  bprintf(b, "# HELP ame_uptime_seconds Seconds since the supervisor "
             "started.\n# TYPE ame_uptime_seconds gauge\n"
             "ame_uptime_seconds %.1f\n", now - S.start_time);
  struct {
    const char *name, *type, *help;
  } per[] = {
      {"ame_worker_up", "gauge", "1 while a process serves the worker."},
      {"ame_worker_pid", "gauge", "The pid of the process serving it."},
      {"ame_worker_requests_per_second", "gauge",
       "Requests served per second between the last two heartbeats."},
      {"ame_worker_busy_ratio", "gauge",
       "CPU time of the worker's Python thread over the last second."},
      {"ame_worker_rss_bytes", "gauge", "Resident memory."},
      {"ame_worker_restarts_total", "counter",
       "Processes of this worker that ended and were replaced."},
      {"ame_worker_hung_total", "counter",
       "Processes killed for a missed heartbeat (--timeout)."},
      {"ame_worker_recycled_total", "counter",
       "Processes replaced at --max-requests or --max-rss."},
  };
  for (unsigned m = 0; m < sizeof per / sizeof per[0]; m++) {
    bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", per[m].name, per[m].help,
            per[m].name, per[m].type);
    for (unsigned s = 1; s <= S.nslots; s++) {
      const struct sup_slot *sl = &S.s[s];
      const struct sup_proc *p = sl->cur >= 0 ? &S.p[sl->cur] : NULL;
      double v = 0;
      switch (m) {
      case 0: v = p && p->state == P_READY; break;
      case 1: v = p ? p->pid : 0; break;
      case 2: v = last(sl->rate, sl->hlen, sl->hpos); break;
      case 3: v = p ? p->busy : 0; break;
      case 4: v = p ? (double)p->rss : 0; break;
      case 5: v = sl->restarts; break;
      case 6: v = sl->hung; break;
      case 7: v = sl->recycled; break;
      }
      bprintf(b, "%s{worker=\"%u\"} %.15g\n", per[m].name, s, v);
    }
  }
  for (unsigned k = 0; k < AME_PAGE_NCOUNTERS; k++) {
    /* Every one is a counter but connections open, a gauge. */
    int gauge = k == AME_PAGE_open;
    const char *sfx = gauge ? "" : "_total";
    bprintf(b, "# HELP ame_worker_%s%s %s.\n# TYPE ame_worker_%s%s %s\n",
            COUNTER_NAMES[k], sfx, COUNTER_HELP[k], COUNTER_NAMES[k], sfx,
            gauge ? "gauge" : "counter");
    for (unsigned s = 1; s <= S.nslots; s++) {
      uint64_t v[AME_PAGE_NCOUNTERS];
      ame_sup_counters(s, v);
      bprintf(b, "ame_worker_%s%s{worker=\"%u\"} %llu\n",
              COUNTER_NAMES[k], sfx, s, (unsigned long long)v[k]);
    }
  }
}

static void json(struct buf *b, double now) {
  bprintf(b, "{\"workers\":%u,\"generation\":%u,\"reloads\":%u,"
             "\"uptime\":%.1f,\"slots\":[", S.nslots, S.gen, S.reloads,
          now - S.start_time);
  for (unsigned s = 1; s <= S.nslots; s++) {
    const struct sup_slot *sl = &S.s[s];
    const struct sup_proc *p = sl->cur >= 0 ? &S.p[sl->cur] : NULL;
    bprintf(b, "%s{\"id\":%u,\"pid\":%d,\"state\":\"%s\",\"busy\":%.3f,"
               "\"rss\":%llu,\"restarts\":%u,\"hung\":%u,\"recycled\":%u,"
               "\"why\":", s > 1 ? "," : "", s, p ? (int)p->pid : 0,
            state_name((int)s), p ? p->busy : 0.0,
            (unsigned long long)(p ? p->rss : 0), sl->restarts, sl->hung,
            sl->recycled);
    bjson(b, sl->why);
    bprintf(b, ",\"counters\":{");
    uint64_t v[AME_PAGE_NCOUNTERS];
    ame_sup_counters(s, v);
    for (unsigned k = 0; k < AME_PAGE_NCOUNTERS; k++)
      bprintf(b, "%s\"%s\":%llu", k ? "," : "", COUNTER_NAMES[k],
              (unsigned long long)v[k]);
    char text[AME_PAGE_TEXT];
    text[0] = '\0';
    if (sl->cur >= 0) ame_page_text((unsigned)sl->cur, text, sizeof text);
    bprintf(b, "},\"conflicts\":");
    bjson(b, text);
    bprintf(b, ",\"rate\":[");
    for (unsigned h = 0; h < sl->hlen; h++) {
      unsigned at = (sl->hpos + AME_SUP_HISTORY - sl->hlen + h) %
                    AME_SUP_HISTORY;
      bprintf(b, "%s%.1f", h ? "," : "", sl->rate[at]);
    }
    bprintf(b, "],\"busy_history\":[");
    for (unsigned h = 0; h < sl->hlen; h++) {
      unsigned at = (sl->hpos + AME_SUP_HISTORY - sl->hlen + h) %
                    AME_SUP_HISTORY;
      bprintf(b, "%s%.3f", h ? "," : "", sl->busy[at]);
    }
    bprintf(b, "]}");
  }
  bprintf(b, "]}\n");
}

/* Make c's response to its request. */
static void respond(struct conn *c, double now) {
  struct buf body = {0};
  const char *status = "200 OK", *type = "text/plain; charset=utf-8";
  char method[8] = "", path[128] = "";
  c->req[c->len < REQ_MAX ? c->len : REQ_MAX - 1] = '\0';
  if (sscanf(c->req, "%7s %127s", method, path) != 2) {
    status = "400 Bad Request";
    bprintf(&body, "bad request\n");
  } else if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    status = "405 Method Not Allowed";
    bprintf(&body, "GET only\n");
  } else if (strcmp(path, "/metrics") == 0) {
    type = "text/plain; version=0.0.4; charset=utf-8";
    prometheus(&body, now);
  } else if (strcmp(path, "/data.json") == 0) {
    type = "application/json";
    json(&body, now);
  } else if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0) {
    type = "text/html; charset=utf-8";
    bprintf(&body, "%s", ame_metrics_html);
  } else {
    status = "404 Not Found";
    bprintf(&body, "not found: try /, /metrics or /data.json\n");
  }
  if (body.oom) {
    free(body.p);
    body = (struct buf){0};
    status = "503 Service Unavailable";
  }
  struct buf out = {0};
  bprintf(&out, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
          status, type, body.len);
  if (strcmp(method, "HEAD") != 0 && body.len)
    bprintf(&out, "%.*s", (int)body.len, body.p);
  free(body.p);
  c->out = out.p;
  c->olen = out.oom ? 0 : out.len;
  c->opos = 0;
}

static void conn_close(struct conn *c) {
  close(c->fd);
  free(c->out);
  c->fd = -1;
  c->out = NULL;
  c->len = 0;
}

void ame_metrics_handle(const struct pollfd *pfds, size_t n, double now) {
  if (S.cfg->metrics_fd < 0 || n == 0) return;
  if (pfds[0].revents & POLLIN)
    for (int k = 0; k < MAX_CONNS; k++) {
      if (C[k].fd >= 0) continue;
      int fd = accept4(S.cfg->metrics_fd, NULL, NULL,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;
      C[k] = (struct conn){.fd = fd, .deadline = now + CONN_TIMEOUT_S};
    }
  for (int k = 0; k < MAX_CONNS; k++) {
    struct conn *c = &C[k];
    if (c->fd < 0) continue;
    if (now > c->deadline) {
      conn_close(c);
      continue;
    }
    if (pfds[1 + k].fd != c->fd || !pfds[1 + k].revents) continue;
    if (c->out == NULL) {
      ssize_t r = read(c->fd, c->req + c->len, REQ_MAX - 1 - c->len);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        conn_close(c);
        continue;
      }
      c->len += (size_t)r;
      c->req[c->len] = '\0';
      if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n") ||
          c->len >= REQ_MAX - 1)
        respond(c, now);
    }
    if (c->out) {
      ssize_t w = send(c->fd, c->out + c->opos, c->olen - c->opos,
                       MSG_NOSIGNAL);
      if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (w < 0) {
        conn_close(c);
        continue;
      }
      c->opos += (size_t)w;
      if (c->opos == c->olen) conn_close(c);
    }
  }
}

/* ---- sampling -------------------------------------------------------- */

/* Read utime + stime of pid's main thread and its RSS.  Return 0 or -1. */
static int proc_sample(pid_t pid, uint64_t *ticks, uint64_t *rss) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  if (p == NULL) return -1;
  /* After ") ": state(3) ... utime(14) stime(15). */
  unsigned long long ut = 0, st = 0;
  int field = 2;
  for (p++; *p && field < 15; p++)
    if (*p == ' ') {
      field++;
      if (field == 14) ut = strtoull(p + 1, NULL, 10);
      if (field == 15) st = strtoull(p + 1, NULL, 10);
    }
  *ticks = ut + st;
  snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  unsigned long long size = 0, res = 0;
  if (sscanf(buf, "%llu %llu", &size, &res) != 2) return -1;
  *rss = res * (uint64_t)sysconf(_SC_PAGESIZE);
  return 0;
}

void ame_metrics_sample(double now) {
  static long hz;
  if (hz == 0) hz = sysconf(_SC_CLK_TCK);
  for (unsigned i = 0; i < AME_SUP_PROCS; i++) {
    struct sup_proc *p = &S.p[i];
    if (p->state == P_FREE) continue;
    uint64_t ticks, rss;
    if (proc_sample(p->pid, &ticks, &rss) < 0) continue;
    if (p->cpu_at > 0 && now > p->cpu_at)
      p->busy = (double)(ticks - p->cpu_ticks) / (double)hz /
                (now - p->cpu_at);
    p->cpu_ticks = ticks;
    p->cpu_at = now;
    p->rss = rss;
  }
  for (unsigned s = 1; s <= S.nslots; s++) {
    struct sup_slot *sl = &S.s[s];
    if (sl->rate == NULL) {
      sl->rate = calloc(AME_SUP_HISTORY, sizeof *sl->rate);
      sl->busy = calloc(AME_SUP_HISTORY, sizeof *sl->busy);
      if (sl->rate == NULL || sl->busy == NULL) {
        free(sl->rate);
        free(sl->busy);
        sl->rate = sl->busy = NULL;
        continue;
      }
    }
    uint64_t v[AME_PAGE_NCOUNTERS];
    double at = ame_sup_counters(s, v);
    sl->rate[sl->hpos] =
        ame_rate_sample(&sl->req_rate, v[AME_PAGE_requests], at, now);
    sl->busy[sl->hpos] = sl->cur >= 0 ? (float)S.p[sl->cur].busy : 0;
    sl->hpos = (sl->hpos + 1) % AME_SUP_HISTORY;
    if (sl->hlen < AME_SUP_HISTORY) sl->hlen++;
  }
}

void ame_metrics_forget(void) {
  if (nconns_init)
    for (int k = 0; k < MAX_CONNS; k++)
      if (C[k].fd >= 0) conn_close(&C[k]);
  nconns_init = 0;
  if (S.cfg && S.cfg->metrics_fd >= 0) close(S.cfg->metrics_fd);
}
