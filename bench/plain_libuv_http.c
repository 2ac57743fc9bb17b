/*
** bench/plain_libuv_http.c — the baseline of the HTTP benchmark: a minimal
** single-threaded libuv server that answers every HTTP/1.1 request on a
** keep-alive connection with the same fixed hello-world response.  No STM,
** no reactor, no parsing beyond finding where requests end: each "\r\n\r\n"
** in the byte stream ends one request (bodies are not supported; wrk's GETs
** have none), and the responses to all the requests that ended in one read
** go out in one uv_write.  It is what a careful hand-written libuv server
** costs per request, to compare the ame reactor's CPU per request with.
**
**   plain-libuv-http [PORT=8080] [HOST=127.0.0.1]
**
** Prints "plain-libuv-http: listening on HOST:PORT" once it accepts, and
** runs until killed (SIGINT/SIGTERM: it prints the number of requests
** answered and exits 0).  Exit status 1 if it cannot listen, 2 on bad
** usage.
*/
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

/* The response: the same bytes as the ame HTTP example (examples/c/http.c). */
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 14\r\n"
                               "\r\n"
                               "Hello, world!\n";
#define RESPONSE_LEN (sizeof RESPONSE - 1)

#define READBUF_SIZE 65536
#define MAX_BATCH 1024 /* responses per uv_write; more ends in several */

typedef struct conn {
  uv_tcp_t tcp;      /* first: the handle's address is the conn's */
  unsigned matched;  /* bytes of "\r\n\r\n" matched at the end of the data */
} conn_t;

static uv_loop_t *loop;
static char readbuf[READBUF_SIZE]; /* one read at a time: one thread */
static uint64_t answered;          /* requests answered */

static void close_cb(uv_handle_t *h) { free(h); }

/* uv_write() copies the buffer descriptors (not the bytes, which are the
** static RESPONSE), so a request is all a queued write needs. */
static void write_cb(uv_write_t *req, int status) {
  (void)status; /* an error shows up as a read error too */
  free(req);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(readbuf, sizeof readbuf);
}

/* Count the request ends in data, carrying a partial "\r\n\r\n" over from
** the previous read in *matched. */
static size_t count_requests(unsigned *matched, const char *data,
                             size_t len) {
  static const char END[4] = {'\r', '\n', '\r', '\n'};
  unsigned m = *matched;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    char c = data[i];
    if (c == END[m]) {
      if (++m == 4) {
        n++;
        m = 0;
      }
    } else {
      m = c == '\r' ? 1 : 0;
    }
  }
  *matched = m;
  return n;
}

/* Queue n responses on c.  Return 0 or a libuv error. */
static int respond(conn_t *c, size_t n) {
  while (n > 0) {
    size_t k = n < MAX_BATCH ? n : MAX_BATCH;
    uv_buf_t bufs[MAX_BATCH];
    for (size_t i = 0; i < k; i++)
      bufs[i] = uv_buf_init((char *)RESPONSE, RESPONSE_LEN);
    /* Most writes complete at once: try that before allocating a request. */
    int done = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)k);
    size_t skip = done > 0 ? (size_t)done : 0;
    if (done < 0 && done != UV_EAGAIN) return done;
    if (skip < k * RESPONSE_LEN) {
      /* Queue what is left: the tail of one response, then whole ones. */
      size_t first = skip / RESPONSE_LEN, off = skip % RESPONSE_LEN;
      uv_write_t *req = malloc(sizeof *req);
      if (req == NULL) return UV_ENOMEM;
      bufs[first].base += off;
      bufs[first].len -= off;
      int rc = uv_write(req, (uv_stream_t *)&c->tcp, bufs + first,
                        (unsigned)(k - first), write_cb);
      if (rc != 0) {
        free(req);
        return rc;
      }
    }
    answered += k;
    n -= k;
  }
  return 0;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = (conn_t *)s;
  if (nread < 0) {
    uv_close((uv_handle_t *)s, close_cb);
    return;
  }
  size_t n = count_requests(&c->matched, buf->base, (size_t)nread);
  if (n > 0 && respond(c, n) != 0) uv_close((uv_handle_t *)s, close_cb);
}

static void connection_cb(uv_stream_t *server, int status) {
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  uv_tcp_init(loop, &c->tcp);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, close_cb);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
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
    fprintf(stderr, "usage: plain-libuv-http [PORT=8080] [HOST=127.0.0.1]\n");
    return 2;
  }
  if (argc > 1) {
    char *end;
    long p = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || p < 0 || p > 65535) {
      fprintf(stderr, "plain-libuv-http: bad port '%s'\n", argv[1]);
      return 2;
    }
    port = (int)p;
  }
  if (argc > 2) host = argv[2];
  loop = uv_default_loop();
  struct sockaddr_in addr;
  uv_tcp_t server;
  int rc = uv_ip4_addr(host, port, &addr);
  if (rc == 0) rc = uv_tcp_init(loop, &server);
  if (rc == 0) rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&server, 1024, connection_cb);
  if (rc != 0) {
    fprintf(stderr, "plain-libuv-http: cannot listen on %s:%d: %s\n", host,
            port, uv_strerror(rc));
    return 1;
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &blen);
  printf("plain-libuv-http: listening on %s:%d\n", host,
         ntohs(((struct sockaddr_in *)&bound)->sin_port));
  fflush(stdout);
  uv_signal_t sigint, sigterm;
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigint, signal_cb, SIGINT);
  uv_signal_start(&sigterm, signal_cb, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  printf("plain-libuv-http: %llu requests answered\n",
         (unsigned long long)answered);
  return 0;
}
