/*
** examples/c/chat.c — a line-based chat server: every line a client sends
** goes to every other connected client.  The set of clients is a doubly
** linked list in STM words that callbacks on any worker add to (on_open),
** remove from (on_close) and walk (to broadcast) — the classic program
** that needs a lock around the client list, written without one.  Nick
** names show the other classic race: "/nick NAME" checks that no one else
** has NAME and takes it, atomically, though two workers may try at once.
**
** Commands: /nick NAME (1-24 printable characters), /who (how many are
** here, and who), /quit.  A client that does not read misses the lines
** sent while over 256 KiB wait for it.  SIGINT or SIGTERM stops the server;
** it then prints its totals and the reactor's report.
**
**   build/examples/c/chat [-p PORT] [-w WORKERS]   (PORT 7001; 0 picks one)
**   nc localhost 7001       (in several terminals)
*/
#include "parse_num.h"
#include "stop_signals.h"

#include <ame/reactor.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 1024 /* longer lines are cut into pieces */
#define MAX_NICK 24
#define MAX_BACKLOG (256 * 1024) /* bytes queued to a client beyond which
                                    lines to it are dropped */

/* A member of the room.  Shared: next, prev and nick are STM words; s is
** immutable. */
struct client {
  ame_stream_t *s;
  struct client *prev, *next;
  char *nick; /* an immutable string, replaced whole by /nick */
};

/* The room: STM words. */
static struct {
  struct client *head;
  uintptr_t count;    /* clients in the list */
  uintptr_t joined;   /* clients ever joined (names guests) */
  uintptr_t lines;    /* lines broadcast */
  uintptr_t delivered;/* lines written to a client */
  uintptr_t dropped;  /* lines not written: the client was not reading */
} room;

/* A connection's own state, touched by its callbacks alone: the partial
** line, and whether it has quit.  A callback can still be re-run after a
** conflict on the room, so on_data saves them at the start of each attempt
** and an abort handler puts them back. */
struct conn {
  struct client *client;
  size_t len, saved_len;
  int quit, saved_quit; /* sent /quit: what follows is ignored */
  char line[MAX_LINE];
  char saved[MAX_LINE];
};

static void conn_restore(void *arg) {
  struct conn *c = arg;
  c->len = c->saved_len;
  c->quit = c->saved_quit;
  memcpy(c->line, c->saved, c->len);
}

/* Allocate a copy of the string s (n bytes) in tx. */
static char *tx_strndup(ame_tx_t *tx, const char *s, size_t n) {
  char *p = ame_tx_malloc(tx, n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

static void add(ame_tx_t *tx, uintptr_t *w, intptr_t n) {
  ame_store_word_tx(tx, w, ame_load_word_tx(tx, w) + (uintptr_t)n);
}

/* Write msg to every client but `except` (NULL: to all).  A client with
** more than MAX_BACKLOG bytes still queued misses the line: one that does
** not read would otherwise make the server keep every line for it, without
** bound (a stream's high watermark pauses only its own reading). */
static int broadcast(ame_tx_t *tx, struct client *except, const char *msg,
                     size_t len) {
  uintptr_t n = 0, dropped = 0;
  for (struct client *c = ame_load_ptr_tx(tx, (void **)&room.head); c;
       c = ame_load_ptr_tx(tx, (void **)&c->next)) {
    if (c == except) continue;
    if (ame_stream_write_queue(c->s) > MAX_BACKLOG) {
      dropped++;
      continue;
    }
    int rc = ame_stream_write(c->s, msg, len);
    if (rc == -ENOMEM) return rc;
    n++;
  }
  add(tx, &room.delivered, (intptr_t)n);
  if (dropped) add(tx, &room.dropped, (intptr_t)dropped);
  return 0;
}

/* Write a formatted line to one stream. */
static int tell(ame_stream_t *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int tell(ame_stream_t *s, const char *fmt, ...) {
  char buf[MAX_LINE + 128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return -EINVAL;
  return ame_stream_write(s, buf, (size_t)n < sizeof buf ? (size_t)n
                                                         : sizeof buf - 1);
}

static int on_open(ame_tx_t *tx, ame_stream_t *s) {
  /* Every attempt sets the handle's data: a re-run leaves no pointer to
  ** blocks that the abort freed. */
  struct conn *conn = ame_tx_malloc(tx, sizeof *conn);
  struct client *me = ame_tx_malloc(tx, sizeof *me);
  ame_handle_set_data(s, conn);
  uintptr_t id = ame_load_word_tx(tx, &room.joined) + 1;
  char name[32];
  int n = snprintf(name, sizeof name, "guest%lu", (unsigned long)id);
  char *nick = tx_strndup(tx, name, (size_t)n);
  if (conn == NULL || me == NULL || nick == NULL) {
    /* The transaction still commits: give back what was allocated. */
    if (conn) ame_tx_free(tx, conn, 0);
    if (me) ame_tx_free(tx, me, 0);
    if (nick) ame_tx_free(tx, nick, 0);
    ame_handle_set_data(s, NULL);
    return -ENOMEM;
  }
  conn->client = me;
  conn->len = conn->saved_len = 0;
  conn->quit = conn->saved_quit = 0;

  /* Fresh blocks: plain stores until the list store publishes them. */
  struct client *head = ame_load_ptr_tx(tx, (void **)&room.head);
  me->s = s;
  me->prev = NULL;
  me->next = head;
  me->nick = nick;
  if (head) ame_store_ptr_tx(tx, (void **)&head->prev, me);
  ame_store_ptr_tx(tx, (void **)&room.head, me);
  ame_store_word_tx(tx, &room.joined, id);
  add(tx, &room.count, 1);

  char msg[64];
  n = snprintf(msg, sizeof msg, "* %s joined\n", nick);
  int rc = broadcast(tx, me, msg, (size_t)n);
  if (rc == 0)
    rc = tell(s, "* welcome, %s: %lu here; commands: /nick NAME, /who, "
                 "/quit\n",
              nick, (unsigned long)ame_load_word_tx(tx, &room.count));
  return rc;
}

static int valid_nick(const char *s, size_t n) {
  if (n == 0 || n > MAX_NICK) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] >= 0x7f) return 0;
  return 1;
}

/* "/nick NAME": take NAME if no one else has it (checked and set in the
** same transaction, so two clients can never both get it). */
static int cmd_nick(ame_tx_t *tx, struct client *me, const char *name,
                    size_t n) {
  if (!valid_nick(name, n))
    return tell(me->s, "* usage: /nick NAME (1-%d printable characters, no "
                       "spaces)\n",
                MAX_NICK);
  for (struct client *c = ame_load_ptr_tx(tx, (void **)&room.head); c;
       c = ame_load_ptr_tx(tx, (void **)&c->next)) {
    const char *other = ame_load_ptr_tx(tx, (void **)&c->nick);
    if (c != me && strlen(other) == n && memcmp(other, name, n) == 0)
      return tell(me->s, "* %.*s is taken\n", (int)n, name);
  }
  char *old = ame_load_ptr_tx(tx, (void **)&me->nick);
  char *nick = tx_strndup(tx, name, n);
  if (nick == NULL) return -ENOMEM;
  ame_store_ptr_tx(tx, (void **)&me->nick, nick);
  char msg[2 * MAX_NICK + 64];
  int len = snprintf(msg, sizeof msg, "* %.*s is now known as %s\n",
                     MAX_NICK, old, nick);
  ame_tx_free(tx, old, 0);
  int rc = broadcast(tx, me, msg, (size_t)len);
  return rc ? rc : tell(me->s, "* you are now %s\n", nick);
}

/* "/who": the count and the names, from one consistent snapshot. */
static int cmd_who(ame_tx_t *tx, struct client *me) {
  char msg[MAX_LINE + 64];
  size_t len = (size_t)snprintf(
      msg, sizeof msg, "* %lu here:",
      (unsigned long)ame_load_word_tx(tx, &room.count));
  for (struct client *c = ame_load_ptr_tx(tx, (void **)&room.head); c;
       c = ame_load_ptr_tx(tx, (void **)&c->next)) {
    const char *nick = ame_load_ptr_tx(tx, (void **)&c->nick);
    if (len + MAX_NICK + 8 >= sizeof msg) {
      len += (size_t)snprintf(msg + len, sizeof msg - len, " ...");
      break;
    }
    len += (size_t)snprintf(msg + len, sizeof msg - len, " %s%s", nick,
                            c == me ? " (you)" : "");
  }
  msg[len++] = '\n';
  return ame_stream_write(me->s, msg, len);
}

/* Handle one line: return 0, 1 after /quit, or a negative error. */
static int handle_line(ame_tx_t *tx, struct conn *conn, const char *line,
                       size_t n) {
  struct client *me = conn->client;
  if (n > 0 && line[n - 1] == '\r') n--;
  if (n == 0) return 0;
  if (n == 4 && memcmp(line, "/who", 4) == 0) return cmd_who(tx, me);
  if (n >= 5 && memcmp(line, "/nick", 5) == 0 && (n == 5 || line[5] == ' '))
    return n == 5 ? cmd_nick(tx, me, "", 0)
                  : cmd_nick(tx, me, line + 6, n - 6);
  if (n == 5 && memcmp(line, "/quit", 5) == 0) {
    int rc = tell(me->s, "* bye\n");
    ame_stream_close(me->s);
    return rc < 0 ? rc : 1;
  }
  if (line[0] == '/')
    return tell(me->s, "* unknown command; try /nick NAME, /who, /quit\n");
  char msg[MAX_NICK + MAX_LINE + 8];
  const char *nick = ame_load_ptr_tx(tx, (void **)&me->nick);
  int len = snprintf(msg, sizeof msg, "<%s> %.*s\n", nick, (int)n, line);
  add(tx, &room.lines, 1);
  return broadcast(tx, me, msg, (size_t)len);
}

static int on_data(ame_tx_t *tx, ame_stream_t *s, const char *data,
                   size_t len) {
  struct conn *conn = ame_handle_data(s);
  if (conn == NULL) return -EINVAL;
  /* Until the close has flushed "* bye", the stream still reads. */
  if (conn->quit) return 0;
  conn->saved_len = conn->len;
  conn->saved_quit = conn->quit;
  memcpy(conn->saved, conn->line, conn->len);
  if (ame_tx_on_abort(tx, conn_restore, conn) != 0) return -ENOMEM;
  while (len > 0) {
    const char *nl = memchr(data, '\n', len);
    size_t take = nl ? (size_t)(nl - data) : len;
    size_t room_left = MAX_LINE - conn->len;
    if (take >= room_left) { /* too long: cut it here */
      take = room_left;
      nl = NULL;
    }
    memcpy(conn->line + conn->len, data, take);
    conn->len += take;
    data += take;
    len -= take;
    if (nl || conn->len == MAX_LINE) {
      if (nl) { /* skip the newline */
        data++;
        len--;
      }
      int rc = handle_line(tx, conn, conn->line, conn->len);
      conn->len = 0;
      if (rc < 0) return rc;
      if (rc == 1) { /* /quit: the rest of this read is not sent */
        conn->quit = 1;
        return 0;
      }
    }
  }
  return 0;
}

static void on_close(ame_tx_t *tx, ame_stream_t *s, int status) {
  (void)status;
  struct conn *conn = ame_handle_data(s);
  if (conn == NULL) return;
  struct client *me = conn->client;
  struct client *prev = ame_load_ptr_tx(tx, (void **)&me->prev);
  struct client *next = ame_load_ptr_tx(tx, (void **)&me->next);
  if (prev)
    ame_store_ptr_tx(tx, (void **)&prev->next, next);
  else
    ame_store_ptr_tx(tx, (void **)&room.head, next);
  if (next) ame_store_ptr_tx(tx, (void **)&next->prev, prev);
  add(tx, &room.count, -1);
  char *nick = ame_load_ptr_tx(tx, (void **)&me->nick);
  char msg[MAX_NICK + 32];
  int n = snprintf(msg, sizeof msg, "* %.*s left\n", MAX_NICK, nick);
  broadcast(tx, NULL, msg, (size_t)n);
  /* Freed once no transaction that may still hold them is running; the
  ** size locks the client's words, so a transaction that still walks
  ** through it conflicts with this one. */
  ame_tx_free(tx, nick, 0);
  ame_tx_free(tx, me, sizeof *me);
  ame_tx_free(tx, conn, 0);
}

static const ame_stream_cbs_t chat_cbs = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
};

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"port", required_argument, NULL, 'p'},
      {"workers", required_argument, NULL, 'w'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  unsigned long port = 7001, workers = 0;
  int ch;
  while ((ch = getopt_long(argc, argv, "p:w:h", opts, NULL)) != -1) {
    if ((ch == 'p' && parse_num(optarg, 65535, &port) == 0) ||
        (ch == 'w' && parse_num(optarg, UINT_MAX, &workers) == 0))
      continue;
    fprintf(ch == 'h' ? stdout : stderr,
            "usage: chat [-p PORT] [-w WORKERS]\n");
    return ch == 'h' ? 0 : 2;
  }
  ame_reactor_config_t cfg = {.workers = (unsigned)workers};
  ame_reactor_t *r;
  int rc = ame_reactor_new(&r, &cfg);
  if (rc != 0) {
    fprintf(stderr, "chat: %s\n", ame_strerror(rc));
    return 1;
  }
  ame_listener_t *l;
  rc = ame_tcp_listen(r, "0.0.0.0", (int)port, 0, 0, &chat_cbs, NULL, &l);
  if (rc != 0) {
    fprintf(stderr, "chat: cannot listen on port %lu: %s\n", port,
            ame_strerror(rc));
    ame_reactor_free(r);
    return 1;
  }
  if (stop_on_signals(r, "chat") != 0) {
    ame_reactor_free(r);
    return 1;
  }
  printf("chat: listening on port %d with %u workers\n",
         ame_listener_port(l), ame_reactor_workers(r));
  fflush(stdout);

  rc = ame_reactor_run(r);

  /* Every worker has stopped: plain reads are safe now. */
  printf("chat: %lu clients joined, %lu lines broadcast, %lu delivered, %lu "
         "dropped, %lu still listed\n",
         (unsigned long)room.joined, (unsigned long)room.lines,
         (unsigned long)room.delivered, (unsigned long)room.dropped,
         (unsigned long)room.count);
  ame_reactor_report(r, stdout);
  ame_reactor_free(r);
  ame_stm_shutdown();
  return rc == 0 ? 0 : 1;
}
