/*
** bench/plain_poll_http.c — plain-libuv-http (bench/plain_libuv_http.c)
** with the other way of buffering a TCP stream: the same single-threaded
** libuv server, the same requests and responses, but each connection is a
** uv_poll_t on the raw fd rather than a uv_tcp_t.  It accepts, reads and
** sends with the socket calls of reactor/src/sockio.h (the accept loop of
** the reactor's and the binding's listeners, recv and send without
** blocking) and buffers its output itself: the responses to the requests
** that ended in one read are copied into the connection's buffer and sent
** from it, and what the kernel does not take waits for POLLOUT.  That is
** how ame's streams work, the reactor's (reactor/src/stream.c) and the
** Python binding's (bindings/ame/transport.c), with their buffering in
** reactor/src/streambuf.h; libuv's uv_tcp_t leaves reading and buffering
** to libuv (uv_read_start, uv_try_write, uv_write).  Set against
** plain-libuv-http in bench/reactor_bench.py, it measures what one way
** costs against the other, with nothing else in between.
**
**   plain-poll-http [PORT=8080] [HOST=127.0.0.1]
**
** Prints "plain-poll-http: listening on HOST:PORT" once it accepts, and
** runs until killed (SIGINT/SIGTERM: it prints the number of requests
** answered and exits 0).  Exit status 1 if it cannot listen, 2 on bad
** usage.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "sockio.h"

/* The response: the same bytes as plain-libuv-http and the ame HTTP
** example. */
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 14\r\n"
                               "\r\n"
                               "Hello, world!\n";
#define RESPONSE_LEN (sizeof RESPONSE - 1)

#define READBUF_SIZE 65536

typedef struct conn {
  uv_poll_t poll;    /* first: the handle's address is the conn's */
  int fd;
  int watching;      /* UV_READABLE, | UV_WRITABLE while output waits */
  unsigned matched;  /* bytes of "\r\n\r\n" matched at the end of the data */
  char *out;         /* output not yet sent: out[off, len) */
  size_t off, len, cap;
} conn_t;

static uv_loop_t *loop;
static char readbuf[READBUF_SIZE]; /* one read at a time: one thread */
static uint64_t answered;          /* requests answered */

static void close_cb(uv_handle_t *h) {
  conn_t *c = (conn_t *)h;
  free(c->out);
  free(c);
}

static void conn_close(conn_t *c) {
  close(c->fd);
  uv_close((uv_handle_t *)&c->poll, close_cb);
}

/* Count the request ends in data, carrying a partial "\r\n\r\n" over from
** the previous read in *matched (as plain-libuv-http). */
static size_t count_requests(unsigned *matched, const char *data,
                             size_t len) {
  static const char END[4] = {'\r', '\n', '\r', '\n'};
  unsigned m = *matched;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    char ch = data[i];
    if (ch == END[m]) {
      if (++m == 4) {
        n++;
        m = 0;
      }
    } else {
      m = ch == '\r' ? 1 : 0;
    }
  }
  *matched = m;
  return n;
}

/* Append n responses to c's output.  Return 0 or -1 (out of memory). */
static int respond(conn_t *c, size_t n) {
  size_t need = c->len + n * RESPONSE_LEN;
  if (need > c->cap) {
    size_t cap = c->cap ? c->cap : 512;
    while (cap < need) cap *= 2;
    char *b = realloc(c->out, cap);
    if (b == NULL) return -1;
    c->out = b;
    c->cap = cap;
  }
  for (size_t i = 0; i < n; i++, c->len += RESPONSE_LEN)
    memcpy(c->out + c->len, RESPONSE, RESPONSE_LEN);
  answered += n;
  return 0;
}

static void conn_cb(uv_poll_t *p, int status, int events);

/* Send c's output until done or the kernel's buffer is full, and watch for
** POLLOUT while some is left.  Return 0, or -1 if c was closed. */
static int flush(conn_t *c) {
  while (c->off < c->len) {
    ssize_t n = ame__sock_send(c->fd, c->out + c->off, c->len - c->off);
    if (n == -EAGAIN) break;
    if (n < 0) {
      conn_close(c);
      return -1;
    }
    c->off += (size_t)n;
  }
  if (c->off == c->len) c->off = c->len = 0;
  int want = UV_READABLE | (c->len ? UV_WRITABLE : 0);
  if (want != c->watching && uv_poll_start(&c->poll, want, conn_cb) == 0)
    c->watching = want;
  return 0;
}

static void conn_cb(uv_poll_t *p, int status, int events) {
  conn_t *c = (conn_t *)p;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (events & (UV_READABLE | UV_DISCONNECT)) {
    ssize_t n = ame__sock_recv(c->fd, 0, readbuf, sizeof readbuf);
    if (n == 0 || (n < 0 && n != -EAGAIN)) {
      conn_close(c);
      return;
    }
    size_t k = n > 0 ? count_requests(&c->matched, readbuf, (size_t)n) : 0;
    if (k > 0 && respond(c, k) != 0) {
      conn_close(c);
      return;
    }
  }
  flush(c);
}

/* The accept loop's take: a connection to serve. */
static int take(void *arg, int fd, const struct sockaddr_storage *sa,
                socklen_t len) {
  (void)arg;
  (void)sa;
  (void)len;
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL || uv_poll_init(loop, &c->poll, fd) != 0) {
    free(c);
    close(fd);
    return 0;
  }
  c->fd = fd;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (uv_poll_start(&c->poll, UV_READABLE, conn_cb) != 0) {
    conn_close(c);
    return 0;
  }
  c->watching = UV_READABLE;
  return 0;
}

static int listen_fd;

static void listen_cb(uv_poll_t *p, int status, int events) {
  (void)p;
  (void)events;
  if (status == 0)
    ame__sock_accept_batch(listen_fd, AME__ACCEPT_BATCH, 0, take, NULL);
}

static void signal_cb(uv_signal_t *sig, int signum) {
  (void)signum;
  (void)sig;
  uv_stop(loop);
}

int main(int argc, char **argv) {
  int port = 8080;
  const char *host = "127.0.0.1";
  if (argc > 3) {
    fprintf(stderr, "usage: plain-poll-http [PORT=8080] [HOST=127.0.0.1]\n");
    return 2;
  }
  if (argc > 1) {
    char *end;
    long p = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || p < 0 || p > 65535) {
      fprintf(stderr, "plain-poll-http: bad port '%s'\n", argv[1]);
      return 2;
    }
    port = (int)p;
  }
  if (argc > 2) host = argv[2];
  loop = uv_default_loop();
  struct sockaddr_in addr;
  int rc = uv_ip4_addr(host, port, &addr);
  int one = 1;
  listen_fd = rc == 0 ? socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK |
                                            SOCK_CLOEXEC, 0)
                      : -1;
  if (listen_fd < 0 ||
      setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      bind(listen_fd, (const struct sockaddr *)&addr, sizeof addr) ||
      listen(listen_fd, 1024)) {
    fprintf(stderr, "plain-poll-http: cannot listen on %s:%d: %s\n", host,
            port, rc ? uv_strerror(rc) : strerror(errno));
    return 1;
  }
  uv_poll_t listener;
  struct sockaddr_in bound;
  socklen_t blen = sizeof bound;
  getsockname(listen_fd, (struct sockaddr *)&bound, &blen);
  if (uv_poll_init(loop, &listener, listen_fd) != 0 ||
      uv_poll_start(&listener, UV_READABLE, listen_cb) != 0) {
    fprintf(stderr, "plain-poll-http: cannot watch the listening socket\n");
    return 1;
  }
  printf("plain-poll-http: listening on %s:%d\n", host,
         ntohs(bound.sin_port));
  fflush(stdout);
  uv_signal_t sigint, sigterm;
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigint, signal_cb, SIGINT);
  uv_signal_start(&sigterm, signal_cb, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  printf("plain-poll-http: %llu requests answered\n",
         (unsigned long long)answered);
  return 0;
}
