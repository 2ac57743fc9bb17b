/*
** tests/itm/test_cxx.cc — C++ on libame-itm: operator new, new[], delete
** and delete[] inside __transaction_atomic (g++ -fgnu-tm calls their
** transactional clones, _ZGTtnwm and the rest).  Four threads push onto
** and pop from one shared stack of nodes made with new and freed with
** delete, make and free arrays inside one transaction, and cancel
** transactions that made a node.  Checked after the threads end: the
** stack holds pushes - pops nodes, and every block is accounted for.
**
** Built twice (tests/itm/meson.build):
**   - with libstdc++'s operators: each committed delete went to ame's
**     deferred frees (ame_stats: frees done + pending = committed
**     deletes);
**   - with AME_TEST_REPLACE_OPS and cxx_ops.cc (compiled without
**     -fgnu-tm, as an allocator's code is), the program's own counting
**     operators:
**     the blocks alive at the end are exactly the stack's nodes (a
**     cancelled or aborted transaction's node was deleted, a committed
**     delete called the program's operator once).
** Both include ame/stm.h with AME_STM_INLINE: the header compiles as C++.
** Exit 0 if every check holds; 1 with a message otherwise.
*/
#include <cstdio>
#include <cstdlib>
#include <new>
#include <pthread.h>

#include "ame/stm.h"

#ifdef AME_TEST_REPLACE_OPS
long test_cxx_live();  /* cxx_ops.cc: blocks its operators hold */
#endif

namespace {

struct Node {
  long value;
  Node *next;
};

Node *top;
long pushes, pops, deletes; /* committed: nodes and arrays deleted */

const int kThreads = 4;
const int kRounds = 20000;

int failures;

void check(bool ok, const char *what, long got, long want) {
  std::printf("%s  %s: %ld (%ld)\n", ok ? "ok  " : "FAIL", what, got, want);
  if (!ok) failures++;
}

/* One round: its own frame, so that the caller's loop state is not live
** across _ITM_beginTransaction (which returns twice). */
__attribute__((noinline)) void round(int i, unsigned r) {
  if (r % 11 == 0) {
    /* A node made, then the transaction cancelled: it must not stay. */
    __transaction_atomic {
      Node *n = new Node;
      n->value = i;
      n->next = top;
      top = n;
      __transaction_cancel;
    }
  } else if (r % 7 == 0) {
    /* An array made and freed in one transaction. */
    __transaction_atomic {
      long *a = new long[16];
      for (int k = 0; k < 16; k++) a[k] = k + i;
      delete[] a;
      deletes++;
    }
  } else if (r & 1) {
    __transaction_atomic {
      Node *n = new Node;
      n->value = i;
      n->next = top;
      top = n;
      pushes++;
    }
  } else {
    __transaction_atomic {
      Node *n = top;
      if (n != nullptr) {
        top = n->next;
        delete n;
        pops++;
        deletes++;
      }
    }
  }
}

void *worker(void *arg) {
  unsigned seed = (unsigned)(long)arg * 2654435761u + 1;
  for (int i = 0; i < kRounds; i++) {
    seed = seed * 1103515245u + 12345u;
    round(i, seed >> 16);
  }
  return nullptr;
}

}  // namespace

int main() {
#ifdef AME_TEST_REPLACE_OPS
  long live0 = test_cxx_live();
#endif
  pthread_t t[kThreads];
  for (long i = 0; i < kThreads; i++)
    if (pthread_create(&t[i], nullptr, worker, (void *)i) != 0) {
      std::perror("pthread_create");
      return 1;
    }
  for (int i = 0; i < kThreads; i++) pthread_join(t[i], nullptr);

  long nodes = 0;
  for (Node *n = top; n != nullptr; n = n->next) nodes++;
  check(nodes == pushes - pops, "nodes on the stack = pushes - pops", nodes,
        pushes - pops);
  check(pops > 0 && deletes > pops, "pops and array deletes committed",
        deletes, pops);
  ame_stats_t s;
  ame_stats_total(&s);
  check(s.aborts > 0, "aborted attempts (conflicts and cancels)",
        (long)s.aborts, 1);
#ifdef AME_TEST_REPLACE_OPS
  long alive = test_cxx_live() - live0;
  check(alive == nodes,
        "blocks alive = the stack's nodes (program's own operators)", alive,
        nodes);
#else
  check((long)(s.frees_done + s.frees_pending) == deletes,
        "deferred frees = committed deletes (libstdc++'s operators)",
        (long)(s.frees_done + s.frees_pending), deletes);
#endif
  while (top != nullptr) {
    Node *n = top;
    top = n->next;
    delete n;
  }
  return failures ? 1 : 0;
}
