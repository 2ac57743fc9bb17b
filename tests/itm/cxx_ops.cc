/*
** tests/itm/cxx_ops.cc — test_cxx.cc's own global operator new and
** delete (AME_TEST_REPLACE_OPS): malloc and free, counting the blocks
** alive.  Compiled without -fgnu-tm, as an allocator's code is, so that
** the transactional clones are libame-itm's, calling these.
*/
#include <atomic>
#include <cstdlib>
#include <new>

static std::atomic<long> live{0};

long test_cxx_live() { return live.load(); }

void *operator new(std::size_t n) {
  void *p = std::malloc(n ? n : 1);
  if (p == nullptr) throw std::bad_alloc();
  live.fetch_add(1);
  return p;
}
void *operator new[](std::size_t n) { return operator new(n); }
void operator delete(void *p) noexcept {
  if (p == nullptr) return;
  live.fetch_sub(1);
  std::free(p);
}
void operator delete[](void *p) noexcept { operator delete(p); }
void operator delete(void *p, std::size_t) noexcept { operator delete(p); }
void operator delete[](void *p, std::size_t) noexcept { operator delete(p); }
