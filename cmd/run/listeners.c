/*
** cmd/run/listeners.c — the workers' listening sockets, owned by the
** supervisor (listeners.h).
**
** A sibling is a TCP socket of the primary's family, with SO_REUSEADDR
** and SO_REUSEPORT (and the primary's IPV6_V6ONLY), bound to the
** primary's address and listening with its backlog; non-blocking and
** close-on-exec like the sockets Twisted makes.  The kernel spreads new
** connections over the primary and the siblings (the SO_REUSEPORT group)
** by a hash of their addresses.  The group is the service's own: the
** primary was bound before it was made SO_REUSEPORT (the Python half,
** _supervisor.py), so another program cannot bind the address.
*/
#include "listeners.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SLOTS 1025 /* slot ids 1..1024 */

static struct lst {
  int primary;     /* Python's socket, slot 1's */
  int backlog;
  int can_share;   /* a TCP socket with SO_REUSEPORT: siblings possible */
  int *sib;        /* MAX_SLOTS entries: slot -> sibling fd, -1 none */
} L[AME_LST_MAX];
static unsigned nl;
static int reuse;

int ame_lst_init(const int *fds, const int *backlogs, unsigned n,
                 int reuseport) {
  nl = 0;
  reuse = reuseport;
  for (unsigned p = 0; p < n && p < AME_LST_MAX; p++) {
    struct lst *l = &L[nl];
    l->primary = fds[p];
    l->backlog = backlogs[p] > 0 ? backlogs[p] : 50;
    int type = 0, rp = 0;
    socklen_t len = sizeof type;
    getsockopt(fds[p], SOL_SOCKET, SO_TYPE, &type, &len);
    len = sizeof rp;
    getsockopt(fds[p], SOL_SOCKET, SO_REUSEPORT, &rp, &len);
    struct sockaddr_storage ss;
    len = sizeof ss;
    int fam = getsockname(fds[p], (struct sockaddr *)&ss, &len) == 0
                  ? ss.ss_family : AF_UNSPEC;
    l->can_share = type == SOCK_STREAM && rp &&
                   (fam == AF_INET || fam == AF_INET6);
    l->sib = malloc(MAX_SLOTS * sizeof *l->sib);
    if (l->sib == NULL) return -ENOMEM;
    for (unsigned s = 0; s < MAX_SLOTS; s++) l->sib[s] = -1;
    nl++;
  }
  return 0;
}

unsigned ame_lst_count(void) { return nl; }

int ame_lst_primary(unsigned p) { return p < nl ? L[p].primary : -1; }

/* Make a sibling of l.  Return its fd or -errno. */
static int make_sibling(const struct lst *l) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(l->primary, (struct sockaddr *)&ss, &len) < 0)
    return -errno;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  if (fd < 0) return -errno;
  int one = 1, v6only = 0;
  socklen_t vlen = sizeof v6only;
  if (ss.ss_family == AF_INET6 &&
      getsockopt(l->primary, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vlen) ==
          0)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
      bind(fd, (struct sockaddr *)&ss, len) < 0 ||
      listen(fd, l->backlog) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

int ame_lst_slot_fd(unsigned p, unsigned slot) {
  if (p >= nl) return -EINVAL;
  struct lst *l = &L[p];
  if (slot <= 1 || slot >= MAX_SLOTS || !reuse || !l->can_share)
    return l->primary;
  if (l->sib[slot] < 0) {
    int fd = make_sibling(l);
    if (fd < 0) return fd;
    l->sib[slot] = fd;
  }
  return l->sib[slot];
}

unsigned ame_lst_slot_fds(unsigned slot, int *fds, int *err) {
  *err = 0;
  for (unsigned p = 0; p < nl; p++) {
    if (L[p].primary < 0) { /* dropped by a reload: none */
      fds[p] = -1;
      continue;
    }
    int fd = ame_lst_slot_fd(p, slot);
    if (fd < 0) {
      *err = -fd;
      fd = L[p].primary;
    }
    fds[p] = fd;
  }
  return nl;
}

void ame_lst_drop_slot(unsigned slot) {
  if (slot >= MAX_SLOTS) return;
  for (unsigned p = 0; p < nl; p++)
    if (L[p].sib[slot] >= 0) {
      close(L[p].sib[slot]);
      L[p].sib[slot] = -1;
    }
}

void ame_lst_drop(unsigned p) {
  if (p >= nl || L[p].primary < 0) return;
  for (unsigned s = 0; s < MAX_SLOTS; s++)
    if (L[p].sib[s] >= 0) {
      close(L[p].sib[s]);
      L[p].sib[s] = -1;
    }
  close(L[p].primary);
  L[p].primary = -1;
}

void ame_lst_worker(unsigned slot, const int *targets) {
  for (unsigned p = 0; p < nl; p++) {
    int target = targets ? targets[p] : L[p].primary;
    int fd = ame_lst_slot_fd(p, slot);
    if (target >= 0 && fd >= 0 && fd != target) dup2(fd, target);
  }
  ame_lst_close_siblings();
}

void ame_lst_close_siblings(void) {
  for (unsigned p = 0; p < nl; p++) {
    for (unsigned s = 0; s < MAX_SLOTS; s++)
      if (L[p].sib[s] >= 0) close(L[p].sib[s]);
    free(L[p].sib);
  }
  nl = 0;
}
