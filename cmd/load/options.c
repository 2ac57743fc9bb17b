/*
** cmd/load/options.c — the command line of `ame load`: the options, the
** URL, the request (docs/load.md has the usage).
**
** How data travels.  ld_options() reads argv with getopt_long into the
** run's settings (ld_run_t: connections, duration, threads, rate, timeout,
** method, --json, progress), splits the URL (parse_url: scheme, host,
** port, path), takes the one body (--body, or --body-file read whole, at
** most 64 MiB) and builds the one request every connection sends
** (build_request), with the -H headers and Content-Length.  Nothing here
** touches the network or the reactor.  A bad value is a usage error: one
** line on stderr naming the option and the value, a hint to --help, exit
** status 2 (an unreadable --body-file: exit 1).  https:// in a build
** without TLS is a usage error too, with the TLS seam's reason
** (ld_tls_unsupported()).
*/
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_CONNS 1000000
#define MAX_THREADS 256
#define MAX_BODY ((size_t)64 << 20)
#define MAX_DURATION_NS 864000e9 /* 10 days: -d, --timeout, and --rate's
                                    interval */

static void usage(FILE *f) {
  fprintf(f,
          "usage: ame load URL [-c CONNECTIONS] [-d DURATION] [-t THREADS]\n"
          "                    [--rate R] [--timeout T] [-H HEADER]... "
          "[--json] [--progress]\n"
          "                    [-m METHOD] [-b BODY | --body-file FILE]\n"
          "\n"
          "An HTTP/1.1 load generator on the ame reactor: CONNECTIONS "
          "keep-alive\n"
          "connections send GET URL (or METHOD URL with BODY) one request "
          "at a time,\nfor DURATION.\n"
          "\n"
          "  URL                    http[s]://HOST[:PORT][/PATH][?QUERY] "
          "(HOST: a name,\n"
          "                         IPv4 or [IPv6]; https: TLS, the "
          "certificate not\n"
          "                         verified, as wrk)\n"
          "  -c, --connections N    connections (default 10)\n"
          "  -d, --duration D       how long: 10s, 500ms, 1m, 1h; a bare "
          "number is\n"
          "                         seconds (default 10s)\n"
          "  -t, --threads N        worker threads (default: one per CPU it "
          "may use)\n"
          "  -r, --rate R           requests per second over all "
          "connections, on a\n"
          "                         fixed schedule; latency counts from "
          "each request's\n"
          "                         due time (no coordinated omission)\n"
          "      --timeout T        a request unanswered for T is an error "
          "(default 2s)\n"
          "  -H, --header 'N: V'    add a request header (repeatable)\n"
          "  -m, --method M         request method (default GET; HEAD "
          "responses are\n"
          "                         read without a body)\n"
          "  -b, --body DATA        send DATA as every request's body "
          "(Content-Length\n"
          "                         is set; give Content-Type with -H)\n"
          "      --body-file FILE   the same, with FILE's bytes (at most "
          "64 MiB)\n"
          "      --json             print the results as JSON\n"
          "      --progress         print progress every second on stderr "
          "(default:\n"
          "                         when stderr is a terminal)\n"
          "      --no-progress      never print progress\n"
          "  -h, --help             this help\n"
          "\n"
          "Exit status: 0 when responses came back, 1 when nothing "
          "succeeded, 2 on\na usage error.\n");
}

/* Print a usage error and return 2. */
static int usage_error(const char *fmt, const char *arg) {
  fputs("ame load: ", stderr);
  fprintf(stderr, fmt, arg);
  fputs("\nTry 'ame load --help'.\n", stderr);
  return 2;
}

/* Parse a duration ("10s", "500ms", "1m", "1.5h", "250us"; a bare number is
** seconds) into nanoseconds.  Return 0, or -1 if it is not a positive
** duration of at most 10 days. */
static int load_parse_duration(const char *s, uint64_t *ns) {
  static const struct {
    const char *unit;
    double scale;
  } units[] = {{"ns", 1},       {"us", 1e3},         {"ms", 1e6},
               {"s", 1e9},      {"", 1e9},           {"m", 60e9},
               {"min", 60e9},   {"h", 3600e9}};
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno || !isfinite(v) || v <= 0) return -1;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(end, units[i].unit) == 0) {
      double d = v * units[i].scale;
      if (d < 1 || d > MAX_DURATION_NS) return -1;
      *ns = (uint64_t)d;
      return 0;
    }
  }
  return -1;
}

/* Parse an unsigned number in [lo, hi].  Return 0 or -1. */
static int parse_uint(const char *s, unsigned long lo, unsigned long hi,
                      unsigned *out) {
  char *end;
  errno = 0;
  if (*s == '-' || *s == '+') return -1;
  unsigned long v = strtoul(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) return -1;
  *out = (unsigned)v;
  return 0;
}

typedef struct url {
  int tls;             /* https:// */
  char host[256];      /* without brackets */
  char authority[300]; /* host[:port] as written: the Host header */
  int port;
  const char *path;    /* from the first '/' or '?' (points into the URL) */
} url_t;

/* Split an http:// URL.  Return NULL or a message saying what is wrong. */
static const char *parse_url(const char *s, url_t *u) {
  const char *p = strstr(s, "://");
  u->tls = 0;
  if (p) {
    if ((size_t)(p - s) == 5 && strncasecmp(s, "https", 5) == 0) {
      const char *no_tls = ld_tls_unsupported();
      if (no_tls) return no_tls;
      u->tls = 1;
    } else if ((size_t)(p - s) != 4 || strncasecmp(s, "http", 4) != 0) {
      return "the URL must start with http:// or https://";
    }
    p += 3;
  } else {
    p = s;
  }
  size_t alen = strcspn(p, "/?#");
  if (alen == 0) return "the URL has no host";
  if (alen >= sizeof u->authority) return "the URL's host is too long";
  memcpy(u->authority, p, alen);
  u->authority[alen] = '\0';
  if (strchr(u->authority, '@')) return "user:password@ is not supported";
  const char *path = p + alen;
  u->path = *path == '/' ? path : NULL; /* "?q" and "" get a '/' added */
  const char *a = u->authority, *colon;
  size_t hlen;
  if (*a == '[') {
    const char *rb = strchr(a, ']');
    if (rb == NULL) return "unbalanced [ in the URL's host";
    hlen = (size_t)(rb - a - 1);
    if (hlen >= sizeof u->host) return "the URL's host is too long";
    memcpy(u->host, a + 1, hlen);
    colon = rb[1] == ':' ? rb + 1 : NULL;
    if (rb[1] != ':' && rb[1] != '\0') return "bad characters after ]";
  } else {
    colon = strrchr(a, ':');
    hlen = colon ? (size_t)(colon - a) : alen;
    if (colon && strchr(a, ':') != colon)
      return "an IPv6 address in a URL goes in brackets: http://[::1]:80/";
    if (hlen >= sizeof u->host) return "the URL's host is too long";
    memcpy(u->host, a, hlen);
  }
  u->host[hlen] = '\0';
  if (hlen == 0) return "the URL has no host";
  u->port = u->tls ? 443 : 80;
  if (colon) {
    unsigned port;
    if (parse_uint(colon + 1, 1, 65535, &port) != 0)
      return "the URL's port must be a number from 1 to 65535";
    u->port = (int)port;
  }
  return NULL;
}

/* Does header line h ("Name: value") have the name `name` (any case)? */
static int header_is(const char *h, const char *name) {
  size_t n = strlen(name);
  return strncasecmp(h, name, n) == 0 && (h[n] == ':' || h[n] == ' ');
}

/* Build the request for u (and the extra headers, and the body) into a new
** string.  A GET is nearly as small as wrk's (wrk sends the request line
** and Host; this adds Connection: keep-alive unless -H gives a Connection
** header), so that both tools cost
** the server about the same; -H adds the rest.  Content-Length goes with
** a body, and with POST, PUT and PATCH even without one (RFC 9110 8.6)
** unless -H gives one (ld_options() refuses that with a body). */
static char *build_request(const url_t *u, const char *query,
                           const char *method, char **headers,
                           size_t nheaders, const char *body, size_t body_len,
                           int has_body, size_t *len) {
  size_t cap = 320 + strlen(method) + strlen(u->authority) +
               (u->path ? strlen(u->path) : 0) + (query ? strlen(query) : 0) +
               body_len;
  for (size_t i = 0; i < nheaders; i++) cap += strlen(headers[i]) + 2;
  char *req = malloc(cap);
  if (req == NULL) return NULL;
  const char *target = u->path ? u->path : (query ? query : "");
  int tlen = (int)strcspn(target, "#"); /* a fragment is not sent */
  /* -H 'Connection: close' (a new connection per request, as with wrk)
  ** replaces the default rather than following it: a server reads the
  ** first of two.  So do -H Host and -H Content-Length (two Host or
  ** Content-Length headers make a request a server must refuse). */
  int own_connection = 0, own_host = 0, own_length = 0;
  for (size_t i = 0; i < nheaders; i++) {
    own_connection |= header_is(headers[i], "Connection");
    own_host |= header_is(headers[i], "Host");
    own_length |= header_is(headers[i], "Content-Length");
  }
  int n = snprintf(req, cap, "%s %s%.*s HTTP/1.1\r\n%s%s%s%s", method,
                   u->path ? "" : "/", tlen, target,
                   own_host ? "" : "Host: ", own_host ? "" : u->authority,
                   own_host ? "" : "\r\n",
                   own_connection ? "" : "Connection: keep-alive\r\n");
  size_t off = (size_t)n;
  for (size_t i = 0; i < nheaders; i++)
    off += (size_t)snprintf(req + off, cap - off, "%s\r\n", headers[i]);
  if (has_body || (!own_length && (strcmp(method, "POST") == 0 ||
                                   strcmp(method, "PUT") == 0 ||
                                   strcmp(method, "PATCH") == 0)))
    off += (size_t)snprintf(req + off, cap - off, "Content-Length: %zu\r\n",
                            body_len);
  off += (size_t)snprintf(req + off, cap - off, "\r\n");
  if (body_len) memcpy(req + off, body, body_len);
  *len = off + body_len;
  return req;
}

/* Is m an HTTP method name (a token, RFC 9110 5.6.2, of 1..32 chars)? */
static int valid_method(const char *m) {
  size_t n = strlen(m);
  if (n == 0 || n > 32) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)m[i]) && !strchr("!#$%&'*+-.^_`|~", m[i]))
      return 0;
  return 1;
}


/* Read all of path into a new buffer (*len bytes).  Return it, or NULL
** after one line on stderr. */
static char *read_body_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "ame load: --body-file %s: %s\n", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
    if (n == cap) {
      if (cap > MAX_BODY) break;
      char *nb = realloc(buf, cap * 2);
      if (nb == NULL) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  int err = ferror(f) ? errno : 0;
  fclose(f);
  if (buf == NULL) {
    fprintf(stderr, "ame load: --body-file %s: out of memory\n", path);
    return NULL;
  }
  if (err || n > MAX_BODY) {
    fprintf(stderr, "ame load: --body-file %s: %s\n", path,
            err ? strerror(err) : "larger than 64 MiB");
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

int ld_options(ld_run_t *ld, int argc, char **argv) {
  enum { OPT_RATE = 256, OPT_TIMEOUT, OPT_JSON, OPT_PROGRESS, OPT_NOPROGRESS,
         OPT_SELFTEST, OPT_BODY_FILE };
  static const struct option opts[] = {
      {"connections", required_argument, NULL, 'c'},
      {"duration", required_argument, NULL, 'd'},
      {"threads", required_argument, NULL, 't'},
      {"rate", required_argument, NULL, 'r'},
      {"timeout", required_argument, NULL, OPT_TIMEOUT},
      {"header", required_argument, NULL, 'H'},
      {"method", required_argument, NULL, 'm'},
      {"body", required_argument, NULL, 'b'},
      {"body-file", required_argument, NULL, OPT_BODY_FILE},
      {"json", no_argument, NULL, OPT_JSON},
      {"progress", no_argument, NULL, OPT_PROGRESS},
      {"no-progress", no_argument, NULL, OPT_NOPROGRESS},
      {"help", no_argument, NULL, 'h'},
      {"selftest-hist", no_argument, NULL, OPT_SELFTEST},
      {NULL, 0, NULL, 0},
  };
  ld->nconns = 10;
  ld->duration_ns = 10000000000ull;
  ld->timeout_ns = 2000000000ull;
  ld->nworkers = ame_cpu_count();
  if (ld->nworkers > MAX_THREADS) ld->nworkers = MAX_THREADS;
  int progress = -1; /* -1: when stderr is a terminal */
  const char *body = NULL, *body_file = NULL;
  ld->method = "GET";
  char **headers = calloc((size_t)argc + 1, sizeof *headers);
  size_t nheaders = 0;
  if (headers == NULL) {
    fprintf(stderr, "ame load: out of memory\n");
    return 1;
  }
  int ch, status = 0;
  opterr = 0;
  optind = 1;
  while (status == 0 &&
         (ch = getopt_long(argc, argv, ":c:d:t:r:H:m:b:h", opts, NULL)) != -1) {
    switch (ch) {
    case 'c':
      if (parse_uint(optarg, 1, MAX_CONNS, &ld->nconns) != 0)
        status = usage_error("-c wants a number of connections from 1 to "
                             "1000000, not '%s'", optarg);
      break;
    case 'd':
      if (load_parse_duration(optarg, &ld->duration_ns) != 0)
        status = usage_error("-d wants a duration such as 10s, 500ms or 1m, "
                             "not '%s'", optarg);
      break;
    case 't':
      if (parse_uint(optarg, 1, MAX_THREADS, &ld->nworkers) != 0)
        status = usage_error("-t wants a number of threads from 1 to 256, "
                             "not '%s'", optarg);
      break;
    case 'r': {
      char *end;
      errno = 0;
      ld->rate = strtod(optarg, &end);
      if (end == optarg || *end || errno || !isfinite(ld->rate) ||
          ld->rate <= 0 || ld->rate > 1e9)
        status = usage_error("--rate wants requests per second (a positive "
                             "number), not '%s'", optarg);
      break;
    }
    case OPT_TIMEOUT:
      if (load_parse_duration(optarg, &ld->timeout_ns) != 0)
        status = usage_error("--timeout wants a duration such as 2s, not "
                             "'%s'", optarg);
      break;
    case 'H':
      if (strchr(optarg, ':') == NULL || strpbrk(optarg, "\r\n"))
        status = usage_error("-H wants 'Name: value', not '%s'", optarg);
      else
        headers[nheaders++] = optarg;
      break;
    case 'm':
      if (!valid_method(optarg))
        status = usage_error("-m wants a method name such as POST (letters, "
                             "digits, !#$%%&'*+-.^_`|~), not '%s'", optarg);
      else
        ld->method = optarg;
      break;
    case 'b':
      if (body || body_file)
        status = usage_error("%s", "give one body: --body or --body-file, "
                                   "once");
      else if (strlen(optarg) > MAX_BODY)
        status = usage_error("%s", "--body is longer than 64 MiB");
      else
        body = optarg;
      break;
    case OPT_BODY_FILE:
      if (body || body_file)
        status = usage_error("%s", "give one body: --body or --body-file, "
                                   "once");
      else
        body_file = optarg;
      break;
    case OPT_JSON: ld->json = 1; break;
    case OPT_PROGRESS: progress = 1; break;
    case OPT_NOPROGRESS: progress = 0; break;
    case OPT_SELFTEST: {
      int fails = hist_selftest();
      printf("hist selftest: %s\n", fails ? "FAILED" : "ok");
      free(headers);
      return fails ? 1 : 0;
    }
    case 'h':
      usage(stdout);
      free(headers);
      return 0;
    case ':':
      status = usage_error("%s needs a value", argv[optind - 1]);
      break;
    default: {
      /* A short option inside a cluster (-Xh) is named by optopt: optind
      ** has not moved past its argument yet. */
      char shortopt[3] = {'-', (char)optopt, '\0'};
      status = usage_error("unknown option '%s'",
                           optopt ? shortopt : argv[optind - 1]);
      break;
    }
    }
  }
  url_t u;
  if (status == 0 && optind != argc - 1)
    status = usage_error("%s", optind >= argc ? "which URL? (ame load URL)"
                                              : "give exactly one URL");
  const char *msg = status == 0 ? parse_url(argv[optind], &u) : NULL;
  if (msg) status = usage_error("%s", msg);
  if (status != 0) {
    free(headers);
    return status;
  }
  for (size_t i = 0; status == 0 && i < nheaders; i++)
    if (header_is(headers[i], "Transfer-Encoding"))
      status = usage_error("-H '%s': ame load sends a body with "
                           "Content-Length, never chunked", headers[i]);
    else if ((body || body_file) && header_is(headers[i], "Content-Length"))
      status = usage_error("-H '%s': ame load sets Content-Length from the "
                           "body", headers[i]);
  if (status != 0) {
    free(headers);
    return status;
  }
  char *file_body = NULL;
  if (body_file) {
    file_body = read_body_file(body_file, &ld->body_len);
    if (file_body == NULL) {
      free(headers);
      return 1;
    }
    body = file_body;
  } else if (body) {
    ld->body_len = strlen(body);
  }
  ld->has_body = body != NULL;
  ld->head = strcmp(ld->method, "HEAD") == 0;
  ld->tls = u.tls;
  if (ld->tls && ld->rate > 0) {
    free(headers);
    free(file_body);
    return usage_error("%s", "--rate is not supported with https:// yet");
  }
  /* One connection's slots are c/R apart; that must fit in a uint64_t of
  ** nanoseconds, and a run cannot last longer anyway. */
  if (ld->rate > 0 && 1e9 * ld->nconns / ld->rate > MAX_DURATION_NS) {
    char msg[160];
    snprintf(msg, sizeof msg, "--rate %g is too low for %u connection%s: "
             "more than 10 days between one connection's requests",
             ld->rate, ld->nconns, ld->nconns == 1 ? "" : "s");
    free(headers);
    free(file_body);
    return usage_error("%s", msg);
  }
  ld->url = argv[optind];
  memcpy(ld->host, u.host, sizeof ld->host);
  ld->port = u.port;
  if (ld->nworkers > ld->nconns) ld->nworkers = ld->nconns;
  if (ld->rate > 0)
    ld->interval_ns = (uint64_t)(1e9 * ld->nconns / ld->rate);
  ld->tty = isatty(STDERR_FILENO);
  ld->progress = progress < 0 ? ld->tty : progress;
  if (!ld->progress) ld->tty = 0;
  /* The query, if the URL has one before its fragment. */
  const char *q = strpbrk(argv[optind], "?#");
  if (q && *q == '#') q = NULL;
  ld->request = build_request(&u, u.path ? NULL : q, ld->method, headers,
                              nheaders, body, ld->body_len, ld->has_body,
                              &ld->request_len);
  free(headers);
  free(file_body);
  if (ld->request == NULL) {
    fprintf(stderr, "ame load: out of memory\n");
    return 1;
  }
  return -1;
}
