#!/usr/bin/python3
"""tests/cmd/test_supervisor.py — the supervisor of `ame run` end to end
(suite 'run'): what it does beyond starting and restarting workers.

    test_supervisor.py AME [CASE...]      (all cases when none is named)

AME is the built `ame` program; PYTHONPATH must find the `ame` package.
The program run is tests/cmd/run_apps/sup_web.py.  Cases:

  options   bad values of the supervisor's options exit 2 with one line;
            --help says the descriptor limit is raised
  hung      a worker stuck in a Python loop (GET /hang) with --timeout 2:
            the supervisor says it is hung, its traceback (the looping
            function) is printed, a new worker takes its slot and serves;
            a SIGTERM while a hung worker that ignores SIGABRT waits for
            its SIGKILL (--grace 30): only that one is killed, exit 0
  orphan    SIGKILL to the supervisor while a worker is stuck in Python
            (--timeout 0, --grace 1): every worker is gone within grace +
            5 s + margin, and a new `ame run` on the same port answers all
            of 40 requests
  inuse     a second `ame run` (2 workers, then 1) on the port a running
            one serves fails with "Address already in use", exit 1,
            nothing of it left; the first still serves; a port each
            worker opens after reactor.run() is served by both
  nofile    under a soft descriptor limit of 256 and a hard one of 4096,
            the workers run with 4096
  pidfile   --pid-file holds the supervisor's pid while it runs and is
            removed at the end; one that cannot be written, or that names
            a live process, is refused (exit 1, nothing left running)
  startfail a worker that fails as its reactor starts (before its first
            heartbeat) stops the service: exit 1, nothing left running
  resize    SIGTTIN adds worker 3 (which serves, with AME_WORKERS=3, as
            do the 3 workers of a reload then), SIGTTOU twice leaves one
            worker, a third SIGTTOU is refused: process counts checked
  reload    under `ame load`, SIGHUP with a new program version: the new
            workers serve the new version, the old ones are gone, load
            sees no error and no non-2xx, the new workers map the
            same shared heap and have SIGHUP unblocked (and so do their
            children); a broken program's reload fails
            and the old workers go on; a storm of 10 SIGHUPs under load
            ends with exactly 2 workers of the last version, no error
  stray     a reload's worker whose start the supervisor gave up on (the
            zygote answers after 10 s): the reload fails, the old workers
            go on, and the supervisor stops the worker no record holds
  rehup     SIGHUPs during reloads (the zygote answers each fork 1.5 s
            late): one while the supervisor waits for a fork's answer
            does not fail that fork, and the reload it asked for follows;
            one during a reload that then fails (its worker 2 exits before
            serving, after worker 1 started) runs the program again, and
            the failed attempt's worker 1, stopped, does not fail the new
            attempt: it ends with exactly 2 workers of the last version
  zygote    after a reload, its zygote dies (SIGKILL): the supervisor
            says so and runs the program again; a worker then killed is
            restarted from the new zygote; the template dies: the zygote
            lives on and forks a killed worker; that zygote dies too (no
            reload can run now): a killed worker is forked by the
            supervisor (the first version), and no zygote is taken for a
            stray worker
  rehost    a program that listens on interface="localhost" reloads: the
            new program adopts the socket bound to 127.0.0.1
  ephemeral a program that listens with listenTCP(0) six times
            (run_apps/ephemeral.py) reloads twice: each listener answers
            on the port it had at first
  dropped   after a reload drops one of two listeners, a worker killed
            and a worker added (SIGTTIN) start and serve with no word of
            the dropped listener
  slowstart a reload whose setup never ends (--timeout 2): it fails
            after 2 s, the candidate is killed, the old workers serve, and
            the next reload serves
  recycle   --max-requests 40 under `ame load`: workers are replaced (with
            each old one's count at least 40), no error, no non-2xx;
            --max-rss 150 and GET /grow (200 MiB): that worker is replaced
  metrics   --metrics: /metrics (Prometheus text), /data.json and the page
            (/); after 100 requests (one connection each), the per-worker
            request counters equal the workers' own counts, 100 connections
            were accepted, none is open, bytes in and out are counted; a
            worker SIGKILLed while it holds a connection: restarts 1, why
            'signal 9', connections open back to 0; a --metrics address
            in use is refused
  page      the live page (/) in a headless browser (Debian's chromium;
            skipped, exit 77, where there is none): examples/python/web.py
            with 2 workers; after the page's script ran, its table has a
            row per worker (its pid, serving) and its summary and plots
            were drawn; read again while `ame load` runs, the requests
            served grew and the requests/s shown are above 0

Every case checks that nothing it started is left running.  Timings decide
nothing: every wait is bounded and fails loudly.
"""
import html.parser
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_run as T  # noqa: E402
from test_run import (TIMEOUT, Server, check, http_get, run_ame,  # noqa
                      session_procs, wait_workers_serving)

APP = 'sup_web.py'


def comm(pid):
    try:
        with open('/proc/%d/comm' % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def worker_procs(srv):
    """Pids of the session's worker processes (named 'ame', not the
    supervisor, nor its template and zygote)."""
    return sorted(p for p in session_procs(srv.p.pid)
                  if p != srv.p.pid and comm(p) == 'ame')


def wait_until(cond, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    return cond()


def start(args, env=None, cwd=T.APPS, **kw):
    srv = Server(T.os.path.abspath(AME), args, env=env, cwd=cwd, **kw)
    return srv


def serving(srv, n, what):
    port = srv.port()
    ok = check(port is not None and
               srv.wait_line('err', r'%d worker\(s\) serving' % n),
               '%s: %d workers serving' % (what, n))
    return port if ok else None


def load_bg(port, seconds, conns=16, path='/'):
    """`ame load` in a thread; .result is its JSON."""
    class L(threading.Thread):
        result = None

        def run(self):
            p = subprocess.run([AME, 'load', 'http://127.0.0.1:%d%s'
                                % (port, path), '-c', str(conns), '-d',
                                '%gs' % seconds, '--json', '--no-progress'],
                               capture_output=True, text=True, timeout=120)
            try:
                self.result = json.loads(p.stdout)
            except ValueError:
                print('  load: %s %s' % (p.stdout, p.stderr))
    t = L()
    t.start()
    return t


def load_errors(res):
    """(socket errors, non-2xx, requests) of an `ame load` JSON."""
    if res is None:
        return None, None, 0
    n_err = res.get('errors', {}).get('total')
    statuses = res.get('status', {})
    non2xx = sum(v for k, v in statuses.items() if not k.startswith('2'))
    return n_err, non2xx, res.get('requests', 0)


# ---- cases ---------------------------------------------------------------

def case_options(ame):
    for args in (['run', '--timeout', '-1', 'x.py'],
                 ['run', '--timeout', 'soon', 'x.py'],
                 ['run', '--max-requests', 'many', 'x.py'],
                 ['run', '--max-requests', '-5', 'x.py'],
                 ['run', '--max-requests-jitter', '5', 'x.py'],
                 ['run', '--max-rss', '1.5', 'x.py'],
                 ['run', '--metrics', 'nocolon', 'x.py'],
                 ['run', '--metrics', 'host:', 'x.py'],
                 ['run', '--pid-file', '', 'x.py'],
                 ['twistd', '--timeout', 'x'],
                 ['twistd', '--max-rss']):
        rc, out, err = run_ame(ame, args)
        check(rc == 2 and len(err.strip().splitlines()) == 2 and not out,
              'ame %s: exit %d (2), says %r'
              % (' '.join(args), rc, err.strip().split('\n')[0]))
    rc, out, err = run_ame(ame, ['run', '--help'])
    for word in ('--timeout', '--max-requests', '--max-rss', '--metrics',
                 '--pid-file', 'SIGHUP', 'SIGTTIN', 'RLIMIT_NOFILE'):
        check(word in out, 'ame run --help mentions %s' % word)


def case_hung(ame):
    srv = start(['run', '--workers', '2', '--timeout', '2', APP, '0'])
    port = serving(srv, 2, '--timeout 2')
    if port is None:
        return srv.stop(signal.SIGKILL)
    seen = wait_workers_serving(port, [1, 2])
    hung = {}

    def hang():
        try:
            http_get(port, '/hang', timeout=60)
        except OSError as e:
            hung['end'] = repr(e)
    t = threading.Thread(target=hang, daemon=True)
    t.start()
    m = srv.wait_line('err', r'worker (\d) \(pid (\d+)\) is hung: no '
                      r'heartbeat for', timeout=30)
    if not check(m, 'the supervisor says a worker is hung'):
        srv.dump()
        return srv.stop(signal.SIGKILL)
    wid, pid = int(m.group(1)), int(m.group(2))
    check(seen.get(wid) == pid, 'it is the worker that took /hang '
          '(%s %s)' % (wid, pid))
    check(srv.wait_line('err', r'\[w%d\] .*in hang_forever' % wid),
          'its Python traceback names the looping function')
    check(srv.wait_line('err', r'worker %d \(pid %d\) was hung and is gone'
                        % (wid, pid)), 'it is killed')
    again = wait_workers_serving(port, [1, 2])
    check(sorted(again) == [1, 2] and again[wid] != pid,
          'a new worker %d serves: %s' % (wid, again))
    t.join(TIMEOUT)
    check('end' in hung, 'the hung request ended (%s)' % hung.get('end'))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)

    # SIGTERM while a hung worker that survives SIGABRT awaits its SIGKILL:
    # it alone is killed; the other stops gracefully (--grace 30).
    srv = start(['run', '--workers', '2', '--timeout', '2', '--grace', '30',
                 APP, '0'], env={'SUP_IGNORE_ABRT': '1'})
    port = serving(srv, 2, '--timeout 2 --grace 30')
    if port is None:
        return srv.stop(signal.SIGKILL)
    wait_workers_serving(port, [1, 2])
    t = threading.Thread(target=hang, daemon=True)
    t.start()
    m = srv.wait_line('err', r'worker (\d) \(pid (\d+)\) is hung: no '
                      r'heartbeat for', timeout=30)
    if not check(m, 'the supervisor says a worker is hung'):
        return srv.stop(signal.SIGKILL)
    at = len(srv.err)
    rc = srv.stop()
    said = '\n'.join(srv.err[at:])
    term = said.find('SIGTERM: stopping 2 worker')
    check(term >= 0 and 'is gone' not in said[:term],
          'the SIGTERM came before the hung worker was killed: %r'
          % said[:200])
    check('killing 2 worker' not in said and 'grace period' not in said,
          'the workers were not killed as past the grace period: %r'
          % said[-300:])
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def case_orphan(ame):
    mark = T.scratch_dir()
    srv = start(['run', '--workers', '2', '--timeout', '0', '--grace', '1',
                 APP, '0'], env={'SUP_MARK_DIR': mark})
    port = serving(srv, 2, 'orphan')
    if port is None:
        return srv.stop(signal.SIGKILL)
    seen = wait_workers_serving(port, [1, 2])
    t = threading.Thread(target=_quiet, args=(port, '/hang'), daemon=True)
    t.start()
    stuck = wait_until(lambda: os.listdir(mark))
    check(stuck, 'one worker is stuck in Python (%s)' % stuck)
    os.kill(srv.p.pid, signal.SIGKILL)
    srv.p.wait()
    # grace 1 + the worker's own 5 s deadline, and a margin.
    left = wait_until(lambda: not session_procs(srv.p.pid), 20)
    check(left, 'every worker ended after the supervisor was killed '
          '(left: %s)' % session_procs(srv.p.pid))
    for pid in session_procs(srv.p.pid):
        os.kill(pid, signal.SIGKILL)
    srv2 = start(['run', '--workers', '2', APP, str(port)])
    if serving(srv2, 2, 'a new service on the same port'):
        ok = 0
        for _ in range(40):
            try:
                status, h, body = http_get(port, timeout=5)
                ok += status == 200 and h['x-worker-pid'] not in \
                    map(str, seen.values())
            except OSError:
                pass
        check(ok == 40, 'the new service answers %d of 40 requests' % ok)
    srv2.stop()


def _quiet(port, path):
    try:
        http_get(port, path, timeout=60)
    except OSError:
        pass


def case_inuse(ame):
    late = free_port()
    srv = start(['run', '--workers', '2', APP, '0'],
                env={'SUP_LATE_PORT': str(late)})
    port = serving(srv, 2, 'first service')
    if port is None:
        return srv.stop(signal.SIGKILL)
    seen = wait_workers_serving(late, [1, 2])
    check(sorted(seen) == [1, 2], 'a port each worker opens after '
          'reactor.run() is served by both: %s' % seen)
    for workers in ('2', '1'):
        rc, out, err = run_ame(ame, ['run', '--workers', workers, APP,
                                     str(port)])
        check(rc == 1 and 'Address already in use' in err and
              len(err.strip().splitlines()) == 1,
              'a second ame run --workers %s on port %d: exit %s (1), %r'
              % (workers, port, rc, err.strip()))
    seen = wait_workers_serving(port, [1, 2])
    check(sorted(seen) == [1, 2], 'the first still serves: %s' % seen)
    check(srv.stop() == 0, 'SIGTERM: exit 0')


def case_nofile(ame):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        print('SKIP: the hard descriptor limit is %d (< 4096)' % hard)
        return 'skip'

    def limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
    p = subprocess.Popen([AME, 'run', '--workers', '2', APP, '0'],
                         cwd=T.APPS, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True, preexec_fn=limits)
    line = p.stdout.readline()
    m = re.search(r'listening on (\d+)', line)
    if check(m, 'listening'):
        port = int(m.group(1))
        seen = {}
        for _ in range(200):
            try:
                status, h, body = http_get(port, timeout=5)
                seen[h['x-worker']] = h['x-nofile']
            except OSError:
                time.sleep(0.05)
            if len(seen) == 2:
                break
        check(seen == {'1': '4096', '2': '4096'},
              'the workers run with the hard limit as the soft one: %s'
              % seen)
    os.kill(p.pid, signal.SIGTERM)
    p.wait(TIMEOUT)
    T.check_nothing_left(p.pid, 'nofile')


def case_pidfile(ame):
    d = T.scratch_dir()
    path = os.path.join(d, 'ame.pid')
    srv = start(['run', '--workers', '2', '--pid-file', path, APP, '0'])
    if serving(srv, 2, '--pid-file'):
        with open(path) as f:
            check(f.read().strip() == str(srv.p.pid),
                  'the pid file holds the supervisor pid')
        rc, out, err = run_ame(ame, ['run', '--workers', '2', '--pid-file',
                                     path, APP, '0'])
        check(rc == 1 and 'already running' in err and
              len(err.strip().splitlines()) == 1,
              'a second one with that pid file is refused: %s %r'
              % (rc, err.strip()))
    check(srv.stop() == 0, 'SIGTERM: exit 0')
    check(not os.path.exists(path), 'the pid file is removed at the end')
    bad = os.path.join(d, 'no', 'such', 'dir', 'ame.pid')
    for workers in ('2', '1'):
        rc, out, err = run_ame(ame, ['run', '--workers', workers,
                                     '--pid-file', bad, APP, '0'])
        check(rc == 1 and len(err.strip().splitlines()) == 1 and
              '--pid-file' in err and 'No such file' in err,
              'a pid file that cannot be written (--workers %s): exit %s '
              '(1), %r' % (workers, rc, err.strip()))


def case_startfail(ame):
    srv = start(['run', '--workers', '2', APP, '0'],
                env={'SUP_FAIL_WORKER': '2'})
    try:
        rc = srv.p.wait(TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 1, 'a worker failing at start ends the service: exit %s (1)'
          % rc)
    check(srv.wait_line('err', r'worker 2 \(pid \d+\) failed to start '
                        r'\(exit status 3\); stopping'),
          'the supervisor says which worker failed, and how')
    srv.stop()  # checks that nothing is left


def _counts(port, n):
    """{worker id: its AME_WORKERS} of n workers."""
    seen = {}
    for _ in range(100):
        status, h, body = http_get(port, timeout=5)
        seen[h['x-worker']] = h['x-workers']
        if len(seen) == n:
            break
    return seen


def case_resize(ame):
    srv = start(['run', '--workers', '2', APP, '0'])
    port = serving(srv, 2, 'resize')
    if port is None:
        return srv.stop(signal.SIGKILL)
    os.kill(srv.p.pid, signal.SIGTTIN)
    check(srv.wait_line('err', r'SIGTTIN: 3 workers'), 'SIGTTIN: 3 workers')
    seen = wait_workers_serving(port, [1, 2, 3])
    check(sorted(seen) == [1, 2, 3], 'worker 3 serves: %s' % seen)
    counts = _counts(port, 3)
    check(counts.get('3') == '3', 'worker 3 has AME_WORKERS=3: %s' % counts)
    # A reload's workers get the count as it is now, too.
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload: generation 1 serves \(3 worker'),
          'SIGHUP: generation 1 serves')
    # The old generation may answer what its sockets had queued until it
    # has gone: ask once only the new one is left.
    check(wait_until(lambda: len(worker_procs(srv)) == 3),
          '3 worker processes (%s)' % worker_procs(srv))
    counts = _counts(port, 3)
    check(counts == {'1': '3', '2': '3', '3': '3'},
          'the new workers have AME_WORKERS=3: %s' % counts)
    for n in (2, 1):
        os.kill(srv.p.pid, signal.SIGTTOU)
        check(srv.wait_line('err', r'SIGTTOU: %d workers? \(stopping worker '
                            r'%d\)' % (n, n + 1)), 'SIGTTOU: %d' % n)
        check(wait_until(lambda: len(worker_procs(srv)) == n),
              '%d worker process(es) (%s)' % (n, worker_procs(srv)))
    os.kill(srv.p.pid, signal.SIGTTOU)
    check(srv.wait_line('err', r'SIGTTOU: 1 worker left; not removing it'),
          'a third SIGTTOU is refused')
    ok = sum(http_get(port, timeout=5)[0] == 200 for _ in range(20))
    check(ok == 20 and len(worker_procs(srv)) == 1,
          'one worker serves all of 20 requests (%d)' % ok)
    check(srv.stop() == 0, 'SIGTERM: exit 0')


def case_reload(ame):
    d = T.scratch_dir()
    with open(os.path.join(d, 'version'), 'w') as f:
        f.write('1\n')
    srv = start(['run', '--workers', '2', APP, '0', d])
    port = serving(srv, 2, 'reload')
    if port is None:
        return srv.stop(signal.SIGKILL)
    old = wait_workers_serving(port, [1, 2])
    heap0 = http_get(port, timeout=5)[1]['x-heap']
    lt = load_bg(port, 4)
    time.sleep(1)  # under load (the load's length decides nothing)
    with open(os.path.join(d, 'version'), 'w') as f:
        f.write('2\n')
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload: generation 1 serves \(2 '
                        r'worker'), 'SIGHUP: generation 1 serves')
    lt.join(60)
    e, non2xx, n = load_errors(lt.result)
    check(e == 0 and non2xx == 0 and n > 0,
          'a reload under load: %s requests, %s errors, %s non-2xx'
          % (n, e, non2xx))
    gone = wait_until(lambda: not any(T.os.path.exists('/proc/%d' % p)
                                      and comm(p) == 'ame'
                                      for p in old.values()))
    check(gone, 'the old workers are gone')
    versions = _versions(port)
    check(versions == {'1': '2', '2': '2'},
          'both workers run the new version: %s' % versions)
    masks = _sigblk(port)
    check(len(masks) == 4 and not any(
        int(m, 16) & 1 << (signal.SIGHUP - 1) for m in masks.values()),
        'SIGHUP is not blocked in the new workers, nor in their children: '
        '%s' % masks)
    heaps = {http_get(port, timeout=5)[1]['x-heap'] for _ in range(10)}
    check(len(heaps) == 1 and heaps.pop().endswith(' mapped') and
          heap0.endswith(' mapped') and heap0 in _heaps(port),
          'the new workers map the same shared heap (%s)' % heap0)
    check(len(worker_procs(srv)) == 2, '2 worker processes')

    # A broken program: the reload fails, the old workers go on.
    now = wait_workers_serving(port, [1, 2])
    open(os.path.join(d, 'broken'), 'w').close()
    start_at = len(srv.err)
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'RuntimeError: broken on purpose',
                        start=start_at), "the new program's error is shown")
    check(srv.wait_line('err', r'reload failed: .*the old workers go on',
                        start=start_at), 'the supervisor says it failed')
    check(wait_workers_serving(port, [1, 2]) == now,
          'the same workers serve on')
    os.unlink(os.path.join(d, 'broken'))

    # A storm of SIGHUPs under load.
    with open(os.path.join(d, 'version'), 'w') as f:
        f.write('3\n')
    lt = load_bg(port, 6)
    time.sleep(1)
    for _ in range(10):
        os.kill(srv.p.pid, signal.SIGHUP)
        time.sleep(0.1)
    lt.join(60)
    e, non2xx, n = load_errors(lt.result)
    check(e == 0 and non2xx == 0 and n > 0,
          '10 SIGHUPs under load: %s requests, %s errors, %s non-2xx'
          % (n, e, non2xx))
    settled = wait_until(lambda: _versions(port) == {'1': '3', '2': '3'} and
                         len(worker_procs(srv)) == 2 and
                         'STARTING' not in _reload_state(srv), 30)
    check(settled, 'it ends with exactly 2 workers of version 3: %s, %s'
          % (_versions(port), worker_procs(srv)))
    if not settled:  # what the supervisor said, for the diagnosis
        print('\n'.join('   | ' + line for line in srv.err[-60:]))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def _sigblk(port):
    """{worker id: "SELF CHILD" masks} of GET /sigblk, as SELF and CHILD."""
    masks = {}
    for _ in range(60):
        status, h, body = http_get(port, '/sigblk', timeout=5)
        for k, m in enumerate(body.decode().split()):
            masks['%s/%s' % (h['x-worker'], ('self', 'child')[k])] = m
        if len(masks) == 4:
            break
    return masks


def _heaps(port):
    return {http_get(port, timeout=5)[1]['x-heap'] for _ in range(10)}


def case_stray(ame):
    """A reload's worker whose start the supervisor gave up on (its zygote
    answered after ame_reload_fork's 10 s) is not left serving unseen: the
    supervisor finds the worker process no record holds and stops it."""
    d = T.scratch_dir()
    with open(os.path.join(d, 'version'), 'w') as f:
        f.write('1\n')
    srv = start(['run', '--workers', '2', APP, '0', d],
                env={'AME_TEST_ZYGOTE_REPLY_MS': '11000'})
    port = serving(srv, 2, 'stray')
    if port is None:
        return srv.stop(signal.SIGKILL)
    first = worker_procs(srv)
    with open(os.path.join(d, 'version'), 'w') as f:
        f.write('2\n')
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'cannot start worker 1: Connection timed '
                        r'out', timeout=40), 'the late zygote: given up on')
    check(srv.wait_line('err', r'reload failed: cannot start the new '
                        r'workers; the old workers go on', timeout=10),
          'the reload failed, the old workers go on')
    check(srv.wait_line('err', r'a worker process no record here holds '
                        r'\(pid \d+', timeout=15),
          'the supervisor found the worker it gave up on')
    settled = wait_until(lambda: worker_procs(srv) == first, 30)
    check(settled, 'the old worker processes alone again: %s (%s)'
          % (worker_procs(srv), first))
    check(_versions(port) == {'1': '1', '2': '1'}, 'the old version serves')
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def case_rehup(ame):
    d = T.scratch_dir()
    put = _put_in(d)
    put('version', '1')
    srv = start(['run', '--workers', '2', APP, '0', d],
                env={'AME_TEST_ZYGOTE_REPLY_MS': '1500'})
    port = serving(srv, 2, 'rehup')
    if port is None:
        return srv.stop(signal.SIGKILL)
    # A SIGHUP while the supervisor waits 1.5 s for worker 2's fork.
    put('version', '2')
    at = len(srv.err)
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'worker 1 started \(pid \d+, generation 1\)',
                        start=at), 'reload 1: worker 1 started')
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload: generation 1 serves', start=at),
          'a SIGHUP during a fork: generation 1 serves')
    check(srv.wait_line('err', r'reload: generation 2 serves', start=at),
          'the reload it asked for follows: generation 2 serves')
    said = '\n'.join(srv.err[at:])
    check('cannot start' not in said and 'reload failed' not in said,
          'no fork given up on, no reload failed')
    check(wait_until(lambda: _versions(port) == {'1': '2', '2': '2'}),
          'both workers run version 2: %s' % _versions(port))

    # A SIGHUP during a reload that fails after its worker 1 started.
    put('fail_worker', '2')
    put('version', '3')
    at = len(srv.err)
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'worker 2 started \(pid \d+, generation 3\)',
                        start=at), 'reload 3: its worker 2 started')
    os.unlink(os.path.join(d, 'fail_worker'))
    put('version', '4')
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'a reload is under way; another one '
                        r'follows it', start=at), 'the next one waits')
    put('fail_now', '')
    check(srv.wait_line('err', r'reload failed: worker 2 \(pid \d+\) of '
                        r'generation 3 died before serving \(exit status '
                        r'3\)', start=at), 'reload 3 fails on its worker 2')
    check(srv.wait_line('err', r'reload: generation 4 serves', start=at),
          'the SIGHUP it held runs the program again: generation 4 serves')
    settled = wait_until(lambda: _versions(port) == {'1': '4', '2': '4'} and
                         len(worker_procs(srv)) == 2)
    check(settled, 'it ends with exactly 2 workers of version 4: %s, %s'
          % (_versions(port), worker_procs(srv)))
    failed = [x for x in srv.err[at:] if 'reload failed' in x]
    check(len(failed) == 1, 'one reload failed, not the next: %s' % failed)
    if not settled or len(failed) != 1:
        print('\n'.join('   | ' + line for line in srv.err[-40:]))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def _named(srv, name):
    return [p for p in session_procs(srv.p.pid) if comm(p) == name]


def _serving_pid(port, wid, version, timeout=TIMEOUT):
    """The pid of worker wid once it answers with version: not that of the
    worker it replaces, which a reload leaves answering for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, h, body = http_get(port, timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        if (status == 200 and h['x-worker'] == str(wid)
                and h['x-version'] == version):
            return int(h['x-worker-pid'])
    return None


def _restarts_from(srv, port, gen, version):
    """SIGKILL worker 1 of the generation that serves version: it is
    restarted (from generation gen's zygote, or by the supervisor itself
    for 0) and serves version."""
    pid = _serving_pid(port, 1, version)
    at = len(srv.err)
    if pid:
        os.kill(pid, signal.SIGKILL)
    started = (r'worker 1 started \(pid \d+, generation %d\)' % gen if gen
               else r'worker 1 started \(pid \d+\)$')
    check(srv.wait_line('err', started, start=at),
          'worker 1, killed, is restarted from generation %d' % gen)
    served = wait_until(lambda: _versions(port) == {'1': version,
                                                    '2': version})
    check(served, 'both workers serve version %s: %s'
          % (version, _versions(port)))
    said = '\n'.join(srv.err[at:])
    check('cannot start worker' not in said, 'no failed start: %r'
          % said[-300:])


def case_zygote(ame):
    d = T.scratch_dir()
    put = _put_in(d)
    put('version', '1')
    srv = start(['run', '--workers', '2', APP, '0', d])
    port = serving(srv, 2, 'zygote')
    if port is None:
        return srv.stop(signal.SIGKILL)
    put('version', '2')
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload: generation 1 serves'),
          'generation 1 serves')
    # Its zygote dies: the program runs again, and its zygote forks.
    zygote = _named(srv, 'ame-zygote')
    check(len(zygote) == 1, 'one zygote: %s' % zygote)
    put('version', '3')
    at = len(srv.err)
    for pid in zygote:
        os.kill(pid, signal.SIGKILL)
    check(srv.wait_line('err', r'the zygote of generation 1 is gone \(its '
                        r'workers cannot be restarted\): running the '
                        r'program again', start=at), 'the supervisor saw it')
    check(srv.wait_line('err', r'reload: generation 2 serves', start=at),
          'generation 2 serves')
    _restarts_from(srv, port, 2, '3')
    # The template dies: the zygote lives on (it is no stray) and forks.
    template = _named(srv, 'ame-template')
    zygote = _named(srv, 'ame-zygote')
    check(len(template) == 1 and len(zygote) == 1,
          'one template (%s), one zygote (%s)' % (template, zygote))
    for pid in template:
        os.kill(pid, signal.SIGKILL)
    check(wait_until(lambda: not _named(srv, 'ame-template')),
          'the template is gone')
    _restarts_from(srv, port, 2, '3')
    check(_named(srv, 'ame-zygote') == zygote, 'the same zygote')
    # That zygote dies too, and no reload can run: the supervisor forks.
    at = len(srv.err)
    for pid in zygote:
        os.kill(pid, signal.SIGKILL)
    check(srv.wait_line('err', r'generation 2 has no zygote: workers are '
                        r'forked from the supervisor again', start=at),
          'the supervisor says it forks the workers again')
    pid = wait_workers_serving(port, [1, 2]).get(1)
    at = len(srv.err)
    if pid:
        os.kill(pid, signal.SIGKILL)
    check(srv.wait_line('err', r'worker 1 started \(pid \d+\)$', start=at),
          'worker 1, killed, is forked by the supervisor')
    check(wait_until(lambda: _versions(port).get('1') == '1'),
          'it serves the program as first started: %s' % _versions(port))
    said = '\n'.join(srv.err)
    check('no record here holds' not in said, 'no zygote taken for a stray')
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def case_rehost(ame):
    d = T.scratch_dir()
    put = _put_in(d)
    put('version', '1')
    srv = start(['run', '--workers', '2', APP, '0', d],
                env={'SUP_INTERFACE': 'localhost'})
    port = serving(srv, 2, 'interface="localhost"')
    if port is None:
        return srv.stop(signal.SIGKILL)
    put('version', '2')
    at = len(srv.err)
    os.kill(srv.p.pid, signal.SIGHUP)
    m = srv.wait_line('err', r'reload: generation 1 serves|reload failed',
                      start=at)
    check(m and 'serves' in m.group(0), 'SIGHUP: %s' % (m and m.group(0)))
    check(wait_until(lambda: _versions(port) == {'1': '2', '2': '2'}),
          'both workers run version 2 on the same port: %s'
          % _versions(port))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def _tags(ports):
    """What each port answers ("LK VERSION"), or None where nothing."""
    out = []
    for p in ports:
        try:
            with socket.create_connection(('127.0.0.1', p), timeout=5) as c:
                out.append(c.makefile('rb').readline().decode().strip())
        except OSError:
            out.append(None)
    return out


def case_ephemeral(ame):
    d = T.scratch_dir()
    put = _put_in(d)
    put('version', '1')
    srv = start(['run', '--workers', '2', 'ephemeral.py', d])
    m = srv.wait_line('out', r'ports ([\d,]+)')
    if not check(m and srv.wait_line('err', r'2 worker\(s\) serving'),
                 'six listeners on ports the kernel picked: serving'):
        return srv.stop(signal.SIGKILL)
    ports = [int(p) for p in m.group(1).split(',')]
    for version in ('2', '3'):
        want = ['L%d %s' % (k, version) for k in range(6)]
        put('version', version)
        at = len(srv.err)
        os.kill(srv.p.pid, signal.SIGHUP)
        m = srv.wait_line('err', r'reload: generation \d+ serves|reload '
                          r'failed', start=at)
        check(m and 'serves' in m.group(0),
              'SIGHUP: %s' % (m and m.group(0)))
        check(wait_until(lambda: _tags(ports) == want),
              'version %s: each listenTCP(0) keeps its own port: %s'
              % (version, _tags(ports)))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def case_dropped(ame):
    d = T.scratch_dir()
    put = _put_in(d)
    put('version', '1')
    put('extra', str(free_port()))
    # Fixed ports: a port 0 would adopt the first inherited socket on its
    # host, which may be the extra one.
    srv = start(['run', '--workers', '2', APP, str(free_port()), d])
    port = serving(srv, 2, 'two listeners')
    if port is None:
        return srv.stop(signal.SIGKILL)
    os.unlink(os.path.join(d, 'extra'))
    put('version', '2')
    at = len(srv.err)
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload: generation 1 serves .*listeners '
                        r'the new program left are closed', start=at),
          'a reload drops the second listener')
    check(wait_until(lambda: _versions(port) == {'1': '2', '2': '2'}),
          'both workers run version 2: %s' % _versions(port))
    pid = wait_workers_serving(port, [1, 2]).get(1)
    if pid:
        os.kill(pid, signal.SIGKILL)
    check(srv.wait_line('err', r'worker 1 started \(pid \d+, generation 1\)',
                        start=at), 'worker 1, killed, is restarted')
    os.kill(srv.p.pid, signal.SIGTTIN)
    check(srv.wait_line('err', r'worker 3 started \(pid \d+, generation 1\)',
                        start=at), 'SIGTTIN: worker 3 started')
    seen = wait_workers_serving(port, [1, 2, 3])
    check(sorted(seen) == [1, 2, 3], 'workers 1, 2, 3 serve: %s' % seen)
    said = [x for x in srv.err[at:] if 'listening socket' in x]
    check(not said, 'no word of the dropped listener: %s' % said)
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def case_slowstart(ame):
    d = T.scratch_dir()
    put = _put_in(d)
    put('version', '1')
    srv = start(['run', '--workers', '2', '--timeout', '2', APP, '0', d])
    port = serving(srv, 2, 'slowstart')
    if port is None:
        return srv.stop(signal.SIGKILL)
    old = wait_workers_serving(port, [1, 2])
    put('hang_setup', '')
    put('version', '2')
    at = len(srv.err)
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload failed: the new program did not '
                        r'start within 2 s \(killed\); the old workers go '
                        r'on', start=at), 'a setup that hangs: the reload '
                        'fails after --timeout')
    check(wait_until(lambda: not _named(srv, 'ame-reload')),
          'its process is gone: %s' % _named(srv, 'ame-reload'))
    check(wait_workers_serving(port, [1, 2]) == old, 'the old workers serve')
    os.unlink(os.path.join(d, 'hang_setup'))
    os.kill(srv.p.pid, signal.SIGHUP)
    check(srv.wait_line('err', r'reload: generation 2 serves', start=at),
          'the next reload: generation 2 serves')
    check(wait_until(lambda: _versions(port) == {'1': '2', '2': '2'}),
          'both workers run version 2: %s' % _versions(port))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def _put_in(d):
    def put(name, text):
        with open(os.path.join(d, name), 'w') as f:
            f.write(text + '\n' if text else '')
    return put


def _reload_state(srv):
    """'STARTING' while the log shows a reload begun and not finished."""
    text = '\n'.join(srv.err)
    begun = len(re.findall(r'SIGHUP: reloading', text))
    ended = len(re.findall(r'reload: generation \d+ serves|reload failed',
                           text))
    return 'STARTING' if begun > ended else 'IDLE'


def _versions(port):
    v = {}
    for _ in range(60):
        try:
            status, h, body = http_get(port, timeout=5)
            v[h['x-worker']] = h['x-version']
        except OSError:
            pass
        if len(v) == 2:
            break
    return v


def case_recycle(ame):
    srv = start(['run', '--workers', '2', '--max-requests', '40',
                 '--max-requests-jitter', '0', APP, '0'])
    port = serving(srv, 2, 'recycle')
    if port is None:
        return srv.stop(signal.SIGKILL)
    lt = load_bg(port, 3, conns=8)
    lt.join(60)
    e, non2xx, n = load_errors(lt.result)
    check(e == 0 and non2xx == 0 and n > 200,
          'load with recycling: %s requests, %s errors, %s non-2xx'
          % (n, e, non2xx))
    text = '\n'.join(srv.err)
    replaced = re.findall(r'worker \d \(pid (\d+)\) served 40 requests '
                          r'\(--max-requests\): replacing it', text)
    check(len(replaced) >= 2, '%d replacements at 40 requests'
          % len(replaced))
    # --max-rss: the worker that grows is replaced.
    srv2 = start(['run', '--workers', '2', '--max-rss', '150', APP, '0'])
    port2 = serving(srv2, 2, '--max-rss')
    if port2:
        status, h, body = http_get(port2, '/grow')
        pid = h.get('x-worker-pid')
        check(srv2.wait_line('err', r'worker \d \(pid %s\) RSS [\d.]+ MiB '
                             r'\(--max-rss 150\): replacing it' % pid),
              'the worker that grew past 150 MiB is replaced')
        check(wait_until(lambda: not os.path.exists('/proc/%s' % pid)),
              'and ends')
    check(srv2.stop() == 0, '--max-rss: SIGTERM: exit 0')
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)
    counts = [int(m.group(1)) for m in
              (re.match(r'\[w\d\] served (\d+) requests', l)
               for l in srv.out) if m]
    # A worker at its limit stops accepting and closes each of its (8)
    # keep-alive connections after one more response at most.
    check(len(counts) >= len(replaced) + 2 and
          sum(40 <= c <= 40 + 8 for c in counts) >= len(replaced),
          "each replaced worker had served its 40, and at most one more "
          "per connection: %s" % counts)


# The sockets that hold free_port()'s ports until this process ends.
_HELD = []


def free_port():
    """
    A port on 127.0.0.1 for a server this test starts to listen on later,
    held meanwhile by a socket bound to it with SO_REUSEADDR and not
    listening: no test beside this one gets it (a bind to port 0, a
    connection's local port), and the server's own listener (SO_REUSEADDR,
    as every one ame run and Twisted make) still binds it.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 0))
    _HELD.append(s)
    return s.getsockname()[1]


def fetch(mport, path):
    with urllib.request.urlopen('http://127.0.0.1:%d%s' % (mport, path),
                                timeout=10) as r:
        return r.status, r.headers.get('content-type'), r.read().decode()


def case_metrics(ame):
    mport = free_port()
    srv = start(['run', '--workers', '2', '--metrics', '127.0.0.1:%d'
                 % mport, APP, '0'])
    port = serving(srv, 2, '--metrics')
    if port is None:
        return srv.stop(signal.SIGKILL)
    sent = 0  # response bytes the client read (headers as sent, + body)
    for _ in range(100):
        status, h, body = http_get(port)
        sent += len(body) + sum(len(k) + len(v) for k, v in h.items())
    want = 100

    def per_worker(text, name):
        return {int(m.group(1)): int(m.group(2)) for m in re.finditer(
            r'^ame_worker_%s\{worker="(\d+)"\} (\d+)$' % name, text, re.M)}

    def totals():
        st, ct, text = fetch(mport, '/metrics')
        got = per_worker(text, 'requests_total')
        return got if sum(got.values()) == want else None
    got = wait_until(totals)
    check(got, 'the request counters reach %d: %s' % (want, got))
    # The connection counters of twisted.web's transports: one connection
    # per request, each closed by now.
    def conns():
        st, ct, text = fetch(mport, '/metrics')
        c = {n: sum(per_worker(text, n).values()) for n in
             ('accepted_total', 'open', 'bytes_in_total', 'bytes_out_total')}
        return c if c['accepted_total'] == want and c['open'] == 0 else None
    c = wait_until(conns)
    check(c and c['bytes_in_total'] >= want * len('GET / HTTP/1.1\r\n\r\n')
          and c['bytes_out_total'] >= sent,
          '%d connections accepted, 0 open, bytes in and out counted (at '
          'least %d out): %s' % (want, sent, c))
    st, ct, text = fetch(mport, '/metrics')
    check(st == 200 and ct.startswith('text/plain') and
          '# TYPE ame_worker_requests_total counter' in text and
          'ame_workers 2' in text and 'ame_worker_busy_ratio{worker="1"}'
          in text and '# TYPE ame_worker_open gauge' in text,
          'Prometheus text format')
    st, ct, data = fetch(mport, '/data.json')
    d = json.loads(data)
    check(st == 200 and d['workers'] == 2 and len(d['slots']) == 2 and
          all(s['state'] == 'serving' for s in d['slots']),
          '/data.json: 2 workers serving')
    st, ct, page = fetch(mport, '/')
    check(st == 200 and ct.startswith('text/html') and '<canvas' in page and
          'http' not in page.replace('http-equiv', ''),
          'the page: HTML with a canvas, nothing fetched from elsewhere')
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)
    own = {int(m.group(1)): int(m.group(2)) for m in
           (re.match(r'\[w(\d)\] served (\d+) requests', l)
            for l in srv.out) if m}
    check(got == own, 'the counters equal the workers\' own counts: %s, %s'
          % (got, own))
    # A restart: the slot's restarts and why, and connections open (a
    # gauge) back to 0 once the process that held one is gone.
    mport = free_port()
    srv = start(['run', '--workers', '2', '--metrics', '127.0.0.1:%d'
                 % mport, APP, '0'])
    port = serving(srv, 2, '--metrics (restart)')
    if port is None:
        return srv.stop(signal.SIGKILL)
    held = T.http.client.HTTPConnection('127.0.0.1', port, timeout=TIMEOUT)
    st, h, body = http_get(port, conn=held)  # kept open (keep-alive)
    w, pid = int(h['x-worker']), int(h['x-worker-pid'])

    def gauge(name):
        st, ct, text = fetch(mport, '/metrics')
        m = re.search(r'^ame_worker_%s\{worker="%d"\} (\d+)$' % (name, w),
                      text, re.M)
        return int(m.group(1)) if m else None
    check(wait_until(lambda: gauge('open') == 1),
          'worker %d: 1 connection open' % w)
    os.kill(pid, signal.SIGKILL)
    new = srv.wait_line('err', r'worker %d started \(pid (?!%d\))' % (w, pid))
    held.close()

    def restarted():
        st, ct, data = fetch(mport, '/data.json')
        sl = json.loads(data)['slots'][w - 1]
        return sl if sl['state'] == 'serving' and sl['pid'] != pid else None
    sl = wait_until(restarted)
    check(new and sl and sl['restarts'] == 1 and 'signal 9' in sl['why'],
          'worker %d SIGKILLed: restarted, 1 restart, why %r'
          % (w, sl and sl['why']))
    check(wait_until(lambda: gauge('open') == 0) and
          gauge('restarts_total') == 1,
          'worker %d: 0 connections open after the restart (%s), '
          'ame_worker_restarts_total 1' % (w, gauge('open')))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0: the workers it stopped ended '
          'cleanly)' % rc)
    # A metrics address in use.
    blocker = socket.socket()
    blocker.bind(('127.0.0.1', 0))
    blocker.listen(1)
    rc, out, err = run_ame(ame, ['run', '--workers', '2', '--metrics',
                                 '127.0.0.1:%d' % blocker.getsockname()[1],
                                 APP, '0'])
    blocker.close()
    check(rc == 1 and len(err.strip().splitlines()) == 1 and
          'Address already in use' in err,
          'a --metrics address in use: exit %s (1), %r' % (rc, err.strip()))
    # No host: every address, IPv6 too where the machine has it.
    mport = free_port()
    srv = start(['run', '--workers', '1', '--metrics', ':%d' % mport,
                 APP, '0'])
    if serving(srv, 1, '--metrics :PORT') is None:
        return srv.stop(signal.SIGKILL)
    hosts = ['127.0.0.1']
    try:
        with socket.socket(socket.AF_INET6) as s6:
            s6.bind(('::1', 0))
        hosts.append('[::1]')
    except OSError:
        pass  # no IPv6 loopback here
    for host in hosts:
        try:
            with urllib.request.urlopen('http://%s:%d/metrics'
                                        % (host, mport), timeout=10) as r:
                st = r.status
        except OSError as e:
            st = e
        check(st == 200, '--metrics :%d answers on %s: %s'
              % (mport, host, st))
    srv.stop()


def chromium():
    """The headless browser's program, or None."""
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Rows(html.parser.HTMLParser):
    """The page's worker table as rendered: {worker id: [cell texts]}, the
    summary line (#sum) and the <body>'s attributes."""

    def __init__(self):
        super().__init__()
        self.rows, self.sum, self.body = {}, '', {}
        self._row = self._cell = self._in_sum = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'body':
            self.body = a
        elif tag == 'tr' and 'data-worker' in a:
            self._row = self.rows.setdefault(int(a['data-worker']), [])
        elif tag == 'td' and self._row is not None:
            self._cell = []
        elif tag == 'div' and a.get('id') == 'sum':
            self._in_sum = []

    def handle_endtag(self, tag):
        if tag == 'td' and self._cell is not None:
            self._row.append(''.join(self._cell).strip())
            self._cell = None
        elif tag == 'tr':
            self._row = None
        elif tag == 'div' and self._in_sum is not None:
            self.sum = ''.join(self._in_sum).strip()
            self._in_sum = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_sum is not None:
            self._in_sum.append(data)


# The page's table columns (cmd/run/metrics_page.c).
COLUMNS = ['worker', 'pid', 'state', 'requests', 'req/s', 'busy', 'RSS MiB',
           'restarts', 'last end', 'accepted', 'open', 'bytes in / out',
           'C callbacks',
           'Python path', 'STM commits', 'STM aborts']


def browse(browser, url, what):
    """Load url in a fresh headless browser, let the page's script run for
    3 s of the page's (virtual) time, and return the DOM it rendered,
    parsed (_Rows), or None."""
    with tempfile.TemporaryDirectory(prefix='ame-page-') as d:
        env = dict(os.environ, HOME=d, XDG_CONFIG_HOME=d, XDG_CACHE_HOME=d)
        for k in ('ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LD_PRELOAD'):
            env.pop(k, None)
        try:
            p = subprocess.run([browser, '--headless', '--no-sandbox',
                                '--disable-gpu', '--no-first-run',
                                '--user-data-dir=' + os.path.join(d, 'p'),
                                '--virtual-time-budget=3000', '--dump-dom',
                                url], capture_output=True, text=True,
                               timeout=120, env=env, start_new_session=True)
        except subprocess.TimeoutExpired:
            check(False, '%s: the browser answered in 120 s' % what)
            return None
    if not check(p.returncode == 0 and '<table' in p.stdout,
                 '%s: the browser rendered the page (exit %d)'
                 % (what, p.returncode)):
        print('  browser stderr: ' + p.stderr[-2000:])
        return None
    r = _Rows()
    r.feed(p.stdout)
    return r


def case_page(ame):
    browser = chromium()
    if browser is None:
        print('SKIP: no chromium (scripts/install-deps.sh installs it)')
        return 'skip'
    web = os.path.join(os.path.dirname(os.path.dirname(T.HERE)), 'examples',
                       'python', 'web.py')
    mport = free_port()
    url = 'http://127.0.0.1:%d/' % mport
    srv = start(['run', '--workers', '2', '--metrics', '127.0.0.1:%d' % mport,
                 web, '--port', '0'])
    m = srv.wait_line('out', r'listening on http://[\d.]+:(\d+)/')
    if not check(m and srv.wait_line('err', r'2 worker\(s\) serving'),
                 'web.py --workers 2 --metrics: serving'):
        srv.dump()
        return srv.stop(signal.SIGKILL)
    port = int(m.group(1))
    pids = srv.worker_pids(2)

    def table_ok(r, what):
        """Check what every read must show; return the requests served
        and the requests/s, summed over the table's rows."""
        if r is None:
            return None, None
        check(sorted(r.rows) == [1, 2] and
              all(len(c) == len(COLUMNS) for c in r.rows.values()),
              '%s: a row of %d cells per worker: %s'
              % (what, len(COLUMNS), r.rows))
        got = {w: (int(c[1]), c[2]) for w, c in r.rows.items()
               if len(c) == len(COLUMNS) and c[1].isdigit()}
        check(got == {w: (pid, 'serving') for w, pid in pids.items()},
              '%s: each row has its worker\'s pid, serving: %s (pids %s)'
              % (what, got, pids))
        # The script sets data-updated after drawing both plots; a tick
        # that failed anywhere says "no answer" in the summary instead.
        check('data-updated' in r.body and
              r.sum.startswith('2 workers, generation 0'),
              '%s: the summary and plots were drawn: %r' % (what, r.sum))
        try:
            return (sum(int(c[3]) for c in r.rows.values()),
                    sum(float(c[4]) for c in r.rows.values()))
        except (ValueError, IndexError):
            check(False, '%s: numbers in the requests and req/s columns'
                  % what)
            return None, None

    req1, rate1 = table_ok(browse(browser, url, 'idle'), 'idle')
    # Load at a fixed rate (gentle on a busy machine), for longer than
    # the second read can take; stopped once it is done.
    load = subprocess.Popen([ame, 'load', 'http://127.0.0.1:%d/' % port,
                             '-c', '4', '-t', '1', '-r', '200', '-d', '300s',
                             '--no-progress'], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Wait until the supervisor's last one-second sample saw requests.
        def moving():
            st, ct, data = fetch(mport, '/data.json')
            return any(s['rate'] and s['rate'][-1] > 0
                       for s in json.loads(data)['slots'])
        check(wait_until(moving, 60), 'the load reaches the workers')
        req2, rate2 = table_ok(browse(browser, url, 'under load'),
                               'under load')
    finally:
        os.killpg(load.pid, signal.SIGKILL)
        load.wait()
    check(req1 is not None and req2 is not None and req2 > req1,
          'the page\'s requests served grew under load: %s -> %s'
          % (req1, req2))
    check(rate2 is not None and rate2 > 0,
          'the page shows requests/s under load: %s -> %s' % (rate1, rate2))
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


CASES = {
    'options': case_options, 'hung': case_hung, 'orphan': case_orphan,
    'inuse': case_inuse, 'nofile': case_nofile, 'pidfile': case_pidfile,
    'startfail': case_startfail, 'resize': case_resize,
    'reload': case_reload, 'recycle': case_recycle, 'stray': case_stray,
    'rehup': case_rehup, 'zygote': case_zygote, 'rehost': case_rehost,
    'ephemeral': case_ephemeral,
    'dropped': case_dropped, 'slowstart': case_slowstart,
    'metrics': case_metrics, 'page': case_page,
}
NEEDS_LOAD = {'reload', 'recycle'}
AME = None


def main():
    global AME
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    AME = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    skipped = 0
    has_load = subprocess.run([AME, 'load', '--help'], capture_output=True,
                              text=True).returncode == 0
    for name in names:
        print('== %s' % name, flush=True)
        t = time.monotonic()
        if name in NEEDS_LOAD and not has_load:
            print('SKIP: %s needs `ame load`, not in this build' % name)
            skipped += 1
        elif CASES[name](AME) == 'skip':
            skipped += 1
        print('   (%.1f s)' % (time.monotonic() - t))
    if T.failures:
        print('%d check(s) failed:' % len(T.failures))
        for f in T.failures:
            print('  ' + f)
        sys.exit(1)
    if skipped == len(names):
        sys.exit(77)
    print('all checks passed')


if __name__ == '__main__':
    main()
