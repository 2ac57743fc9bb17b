"""
A twisted.web server for the supervisor tests (tests/cmd/test_supervisor.py).

    sup_web.py PORT [STATE_DIR]     (PORT 0: the kernel picks; printed)

Setup prints "listening on PORT" (to stdout, before the workers exist).
With STATE_DIR, setup reads STATE_DIR/version (the program's "code
version": a reload runs setup again and must see a new one) and raises
RuntimeError if STATE_DIR/broken exists (a reload of a broken program);
while STATE_DIR/hang_setup exists, setup never ends (it sleeps); while
STATE_DIR/extra exists (it holds a port), setup listens on that
port too.
If STATE_DIR/fail_worker exists at setup (it holds a worker id N), worker
N of that run of the program waits, as its reactor starts (before it
serves), until STATE_DIR/fail_now exists, then exits with status 3: a
reload that fails after its other workers started, when the test says.
With SUP_FAIL_WORKER=N in the environment, worker N exits with status 3 as its
reactor starts (a failed start).  SUP_INTERFACE is the interface it
listens on (default 127.0.0.1).  With SUP_IGNORE_ABRT, SIGABRT is
ignored (a hung worker lives until the supervisor's SIGKILL).  With
SUP_LATE_PORT=P, each worker also listens on port P once its reactor
runs (a listener of its own).  Paths:

    /        "hello\\n"
    /hang    never answers: the handler loops in Python forever (first,
             with SUP_MARK_DIR set, it makes the file SUP_MARK_DIR/hung-PID)
    /slow    "slow\\n" 1 s later
    /grow    keeps 200 MiB in this process, then "grown\\n"
    /count   this process's served count so far (this request included)
    /sigblk  the blocked-signal masks (SigBlk, hex) of this process and of
             a child it starts: "SELF CHILD"

Every response carries X-Worker (AME_WORKER), X-Workers (AME_WORKERS),
X-Worker-Pid, X-Version,
X-Nofile (the soft RLIMIT_NOFILE) and X-Heap: AME_SHARED_HEAP (where the
supervisor made the heap the workers share) and whether this process has
memory mapped there ("ADDR mapped").  At shutdown each process prints
"served N requests" (stdout).
"""
import os
import resource
import signal
import subprocess
import sys
import time

from twisted.internet import reactor, task
from twisted.web import resource as web, server

state = sys.argv[2] if len(sys.argv) > 2 else None
version = "0"
if state:
    with open(os.path.join(state, "version")) as f:
        version = f.read().strip()
    if os.path.exists(os.path.join(state, "broken")):
        raise RuntimeError("broken on purpose")
    if os.path.exists(os.path.join(state, "hang_setup")):
        time.sleep(3600)  # a setup that never ends (a connect, say)
fail_worker = None
if state and os.path.exists(os.path.join(state, "fail_worker")):
    with open(os.path.join(state, "fail_worker")) as f:
        fail_worker = f.read().strip()

served = [0]
kept = []


class Root(web.Resource):
    isLeaf = True

    def render_GET(self, request):
        served[0] += 1
        request.setHeader(b"x-worker", os.environ.get("AME_WORKER", "-")
                          .encode())
        request.setHeader(b"x-workers", os.environ.get("AME_WORKERS", "-")
                          .encode())
        request.setHeader(b"x-worker-pid", str(os.getpid()).encode())
        request.setHeader(b"x-version", version.encode())
        request.setHeader(b"x-nofile", str(resource.getrlimit(
            resource.RLIMIT_NOFILE)[0]).encode())
        request.setHeader(b"x-heap", heap_mapped().encode())
        if request.path == b"/hang":
            hang_forever()
        if request.path == b"/grow":
            kept.append(b"g" * (200 << 20))
            return b"grown\n"
        if request.path == b"/count":
            return b"%d\n" % served[0]
        if request.path == b"/sigblk":
            child = subprocess.run(["grep", "SigBlk", "/proc/self/status"],
                                   capture_output=True, text=True).stdout
            return ("%s %s\n" % (sigblk(open("/proc/self/status")),
                                 sigblk(child.splitlines()))).encode()
        if request.path == b"/slow":
            def later():
                request.write(b"slow\n")
                request.finish()
            task.deferLater(reactor, 1.0, later)
            return server.NOT_DONE_YET
        return b"hello\n"


def heap_mapped():
    addr = os.environ.get("AME_SHARED_HEAP")
    if not addr:
        return "none"
    a = int(addr, 16)
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= a < hi:
                return "%s mapped" % addr
    return "%s not mapped" % addr


def sigblk(lines):
    for line in lines:
        if line.startswith("SigBlk:"):
            return line.split()[1]
    return "?"


def hang_forever():
    mark = os.environ.get("SUP_MARK_DIR")
    if mark:
        open(os.path.join(mark, "hung-%d" % os.getpid()), "w").close()
    while True:
        pass


def fail_at_start():
    if os.environ.get("AME_WORKER") == os.environ.get("SUP_FAIL_WORKER"):
        print("worker %s fails at start on purpose"
              % os.environ.get("AME_WORKER"), flush=True)
        os._exit(3)


def fail_when_told():
    if os.environ.get("AME_WORKER") != fail_worker:
        return
    mark = os.path.join(state, "fail_now")
    deadline = time.monotonic() + 120
    while not os.path.exists(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("worker %s fails on purpose" % fail_worker, flush=True)
    os._exit(3)


def bye():
    print("served %d requests" % served[0], flush=True)


if os.environ.get("SUP_IGNORE_ABRT"):
    # A library's crash hook: SIGABRT does not end the process.
    signal.signal(signal.SIGABRT, lambda *a: None)
site = server.Site(Root())
site.noisy = False
p = reactor.listenTCP(int(sys.argv[1]), site,
                      interface=os.environ.get("SUP_INTERFACE", "127.0.0.1"))
print("listening on %d" % p.getHost().port, flush=True)
if os.environ.get("SUP_FAIL_WORKER"):
    reactor.callWhenRunning(fail_at_start)
if fail_worker:
    reactor.callWhenRunning(fail_when_told)
if state and os.path.exists(os.path.join(state, "extra")):
    # A second listener, while STATE_DIR/extra names its port.
    with open(os.path.join(state, "extra")) as f:
        reactor.listenTCP(int(f.read()), site, interface="127.0.0.1")
if os.environ.get("SUP_LATE_PORT"):
    # A listener each worker opens on its own, after reactor.run().
    reactor.callWhenRunning(reactor.listenTCP, int(os.environ[
        "SUP_LATE_PORT"]), site, interface="127.0.0.1")
reactor.addSystemEventTrigger("after", "shutdown", bye)
reactor.run()
