#!/usr/bin/python3
"""tests/cmd/test_run.py — `ame run` and `ame twistd` end to end (suite 'run').

    test_run.py AME [CASE...]      (all cases when none is named)

AME is the built `ame` program; PYTHONPATH must find the `ame` package
(meson sets it to BUILDDIR/bindings:SRCDIR/bindings).  The programs run
are in tests/cmd/run_apps/.  Cases:

  usage     bad command lines exit 2 (an unknown option is named, also
            in a cluster of short ones); --help says what it must
  setup     what a program sees (reactor class, sys.argv, sys.path[0],
            __name__, sys.executable), for a file and for -m, in one
            process and with --workers 2 (each worker's lines prefixed)
  errors    a missing file, a syntax error, an exception during setup, a
            program that never calls reactor.run(), a port already in use,
            a missing module: one line on stderr, exit 1, with 1 and with 2
            workers; sys.exit(3) exits 3
  examples  each program of run_apps (HTTP and a raw line protocol) in one
            process and with 2 workers (HTTP also with --sockets shared):
            served, then SIGTERM (or SIGINT): exit 0
  programs  each example program of examples/python (web.py, raw_http.py),
            unchanged, in one process and with 2 workers: on AMEReactor,
            answers, `ame load` without errors, SIGTERM: exit 0
  balance   2 workers under `ame load` (32 connections): both workers get
            connections (the figures are printed)
  crash     kill -9 a worker under load: the supervisor logs it and starts
            a new one, which serves; requests on the other worker keep
            succeeding; `ame load` sees at most one error per connection
  stop      SIGTERM under load (256 KiB responses and 1 s requests): no
            response is truncated, the request in flight at the signal
            completes, the supervisor exits 0 and no worker is left
  force     a second SIGTERM during a graceful stop kills the workers:
            exit 1, nothing left running
  early     SIGTERM as soon as the workers are forked (before their
            reactors run): they still stop gracefully, exit 0
  backoff   workers that die just after their reactor started are
            restarted after 0.1, 0.2, 0.4 s
  faults    bad input while serving, in one process (io thread and
            inline) and with 2 workers: malformed requests get a 400,
            peers that reset mid-request or mid-response, a resource that
            raises (500), a callLater callback that raises (logged), and
            an fd table exhausted by 120 connections under a limit of 64
            descriptors (some served, the rest closed by Twisted's EMFILE
            recovery, none left hanging); after each, the server still
            answers GET / and GET /big whole, and SIGTERM exits 0
  signals   SIGUSR1 sent to the supervisor reaches every worker when the
            program handles it (and the supervisor says so; SIGHUP is the
            supervisor's own: a reload);
            when it does not, SIGUSR1 ends the supervisor, as it would end
            one process, and the workers stop after it
  cpus      in a cgroup of its own with a CPU quota of one CPU (as root,
            where a cpu controller can be written; else skipped, exit 77):
            `ame run --workers auto` runs one process, `ame load` one
            thread, and ame._ame.cpu_count() says 1; at 1.5 CPUs, two
            workers (on a machine where the process may use two CPUs)
  twistd    `ame twistd -n web` in one process and with 2 workers, and
            daemonized (no -n) with 2 workers: pid file, clean stop
  shared    ame.shared across workers (run_apps/shared_web.py): a shared
            counter counts every request served by either worker; a bank's
            total holds through transfers while a worker is SIGKILLed under
            load; examples/python/chat.py: clients on both workers get the
            same lines in the same order

Every case checks that nothing it started is left running: each `ame` runs
in a session of its own, and no process of that session may remain once it
has exited.  Standard library only; timings decide nothing but generous
timeouts.
"""
import atexit
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, 'run_apps')
BIG = 256 * 1024
TIMEOUT = 20  # seconds: generous limit for anything to happen

failures = []


def scratch_dir():
    """A new temporary directory, removed with what is in it when the
    script exits."""
    d = tempfile.mkdtemp(prefix='ame-test-')
    atexit.register(shutil.rmtree, d, True)
    return d


def check(cond, what):
    print(('ok    ' if cond else 'FAIL  ') + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def session_procs(sid):
    """Pids of the processes in session sid (from /proc)."""
    pids = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2:].split()
        # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != 'Z':
            pids.append(int(d))
    return pids


def check_nothing_left(sid, what):
    deadline = time.monotonic() + 5
    left = session_procs(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = session_procs(sid)
    check(not left, '%s: nothing left running (%s)' % (what, left or 'none'))
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def run_ame(ame, args, cwd=APPS, timeout=60, env=None):
    """Run ame to completion in a session of its own (with env added to the
    environment); check that nothing of it is left; return (status,
    stdout, stderr)."""
    p = subprocess.Popen([ame] + args, cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         start_new_session=True,
                         env=dict(os.environ, **env) if env else None)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        check(False, 'ame %s finished in %d s' % (' '.join(args), timeout))
    check_nothing_left(p.pid, 'ame %s' % ' '.join(args))
    return p.returncode, out, err


class Server:
    """`ame ARGS` running in the background, its output collected line by
    line (stdout and stderr apart) by two threads."""

    def __init__(self, ame, args, cwd=APPS, max_fds=None, env=None,
                 cgroup=None):
        """max_fds: the RLIMIT_NOFILE (soft and hard) to run ame (and its
        workers) under; env: variables to add to the environment; cgroup: the
        directory of a cgroup to start it in."""
        self.args = args

        def limit():
            if max_fds is not None:
                # The hard limit too: `ame run` raises the soft limit to
                # the hard one at start.
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))
            if cgroup is not None:
                join_cgroup(cgroup)

        self.p = subprocess.Popen([ame] + args, cwd=cwd,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  start_new_session=True,
                                  preexec_fn=limit,
                                  env=dict(os.environ, **(env or {})))
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self._read, args=(self.p.stdout,
                                                      self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stderr,
                                                      self.err), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _read(self, f, lines):
        for line in f:
            with self.cond:
                lines.append(line.rstrip('\n'))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, which, pattern, timeout=TIMEOUT, start=0):
        """The first match of pattern in stdout or stderr lines (from
        index start on), or None after timeout."""
        lines = self.out if which == 'out' else self.err
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and
                                 not any(t.is_alive() for t in self.threads)):
                    return None
                self.cond.wait(min(left, 0.2))

    def port(self, pattern=r'listening on (\d+)', which='out'):
        m = self.wait_line(which, pattern)
        if m is None:
            self.dump()
            return None
        return int(m.group(1))

    def worker_pids(self, n, start=0):
        """{id: pid} of the n workers started (from the supervisor's log)."""
        pids = {}
        deadline = time.monotonic() + TIMEOUT
        while len(pids) < n and time.monotonic() < deadline:
            with self.cond:
                for line in self.err[start:]:
                    m = re.search(r'worker (\d+) started \(pid (\d+)\)', line)
                    if m:
                        pids[int(m.group(1))] = int(m.group(2))
                if len(pids) < n:
                    self.cond.wait(0.2)
        return pids

    def stop(self, sig=signal.SIGTERM, timeout=TIMEOUT):
        """Send sig, wait for the exit; return the status (None: killed
        after timeout)."""
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            rc = None
        for t in self.threads:
            t.join(5)
        check_nothing_left(self.p.pid, 'ame %s' % ' '.join(self.args))
        return rc

    def dump(self):
        print('  stdout: ' + '\n  stdout: '.join(self.out))
        print('  stderr: ' + '\n  stderr: '.join(self.err))


def http_get(port, path='/', conn=None, timeout=TIMEOUT):
    """GET path; return (status, headers dict, body).  With conn, on that
    keep-alive connection."""
    c = conn or http.client.HTTPConnection('127.0.0.1', port,
                                           timeout=timeout)
    try:
        c.request('GET', path)
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        if conn is None:
            c.close()


def wait_workers_serving(port, ids, timeout=TIMEOUT):
    """Open fresh connections until every worker id in ids has answered;
    return {id: pid} seen."""
    seen = {}
    deadline = time.monotonic() + timeout
    while set(seen) < set(ids) and time.monotonic() < deadline:
        try:
            status, h, body = http_get(port, timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        if status == 200:
            seen[int(h['x-worker'])] = int(h['x-worker-pid'])
    return seen


def load(ame, port, args):
    """Run `ame load` against port, return its JSON (or None)."""
    p = subprocess.run([ame, 'load', 'http://127.0.0.1:%d/' % port,
                        '--json', '--no-progress'] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    if p.stderr.strip():
        print('  load stderr: ' + p.stderr.strip())
    try:
        return json.loads(p.stdout)
    except ValueError:
        print('  load stdout: ' + p.stdout)
        return None


def served_counts(srv):
    """{worker id: (requests, connections)} from the workers' last lines."""
    counts = {}
    for line in srv.out:
        m = re.match(r'\[w(\d+)\] served (\d+) requests on (\d+) '
                     r'connections', line)
        if m:
            counts[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return counts


# ---- cases ---------------------------------------------------------------

def case_usage(ame):
    for args in (['run'], ['run', '--workers', '0', 'x.py'],
                 ['run', '--workers', 'lots', 'x.py'],
                 ['run', '--workers'], ['run', '--grace', '-1', 'x.py'],
                 ['run', '--bogus', 'x.py'], ['run', '-m'],
                 ['run', '--sockets', 'bogus', 'x.py'],
                 ['twistd', '--sockets', 'bogus'],
                 ['run', '--io', 'fibres', 'x.py'], ['twistd', '--io', 'x'],
                 ['twistd', '--workers', '0'], ['twistd', '--workers'],
                 ['run', '--shared-size', '1K', 'x.py'],
                 ['run', '--shared-size', '12Q', 'x.py'],
                 ['run', '--shared-size', '48G', 'x.py'],
                 ['twistd', '--shared-size', 'lots']):
        rc, out, err = run_ame(ame, args)
        check(rc == 2 and err.strip() and not out,
              'ame %s: exit %d (2), says %r'
              % (' '.join(args), rc, err.strip().split('\n')[0]))
    for args, name in ((['run', '-vx', 'x.py'], '-x'),
                       (['run', '-x', 'x.py'], '-x'),
                       (['run', '--bogus', 'x.py'], '--bogus')):
        rc, out, err = run_ame(ame, args)
        check(rc == 2 and "unknown option '%s'" % name in err,
              'ame %s: names %s: %r' % (' '.join(args), name, err.strip()))
    rc, out, err = run_ame(ame, ['run', '--help'])
    check(rc == 0 and '--workers' in out and '-m MODULE' in out,
          'ame run --help: exit 0, options')
    check('PER-WORKER STATE' in out and 'ame.shared' in out and
          '--shared-size' in out,
          'ame run --help documents the per-worker state limit and where '
          'shared state goes')
    rc, out, err = run_ame(ame, ['help', 'run'])
    check(rc == 0 and '--workers' in out, 'ame help run')
    rc, out, err = run_ame(ame, ['twistd', '--help'])
    check(rc == 0 and '--workers' in out and 'reactor' in out,
          'ame twistd --help')
    rc, out, err = run_ame(ame, ['--help'])
    built = [l.split()[0] for l in out.splitlines()
             if l.startswith('  ') and 'not in this build' not in l]
    check(rc == 0 and 'run' in built and 'twistd' in built,
          'ame --help lists run and twistd as built')


def case_setup(ame):
    rc, out, err = run_ame(ame, ['run', 'reactor_check.py', 'a', '--b'])
    check(rc == 0, 'reactor_check.py: exit %d (0); stderr %r' % (rc, err))
    check('reactor ame.reactor.AMEReactor' in out,
          'the reactor is ame.reactor.AMEReactor')
    check("argv ['reactor_check.py', 'a', '--b']" in out,
          'sys.argv is the program and its arguments')
    check('path0 %s' % os.path.realpath(APPS) in out,
          "sys.path[0] is the program's directory")
    check('name __main__' in out, '__name__ is __main__')
    check('executable /usr/bin/python3' in out,
          'sys.executable is /usr/bin/python3')
    check('worker - running' in out and 'after run' in out,
          'reactor.run() ran and returned; code after it ran')

    rc, out, err = run_ame(ame, ['run', '-m', 'reactor_check', 'x'])
    check(rc == 0 and 'reactor ame.reactor.AMEReactor' in out,
          '-m reactor_check: exit %d (0), ame reactor' % rc)
    check("argv ['%s', 'x']" % os.path.join(APPS, 'reactor_check.py') in out,
          "-m: sys.argv[0] is the module's file")
    check('path0 %s' % APPS in out, '-m: sys.path[0] is the current '
          'directory')

    rc, out, err = run_ame(ame, ['run', '--workers', '2',
                                 'reactor_check.py'])
    check(rc == 0, '--workers 2 reactor_check.py: exit %d (0)' % rc)
    lines = out.splitlines()
    check(lines.count('reactor ame.reactor.AMEReactor') == 1,
          'the setup ran once (in the supervisor)')
    check('[w1] worker 1 running' in lines and
          '[w2] worker 2 running' in lines,
          "each worker ran the reactor; its lines are prefixed '[wN] '")
    check('[w1] after run' in lines and '[w2] after run' in lines,
          "each worker ran the program's code after reactor.run()")
    check('warning: no listening port' in err,
          'a warning: no listening port to share')
    check(len(re.findall(r'worker \d+ \(pid \d+\) exited \(exit status 0\); '
                         r'not restarted', err)) == 2,
          'the workers exited 0 on their own and were not restarted')


def case_errors(ame):
    tmp = scratch_dir()
    syntax = os.path.join(tmp, 'syntax_error.py')
    with open(syntax, 'w') as f:
        f.write('from twisted.internet import reactor\n'
                'def broken(:\n    pass\n')
    busy = socket.socket()
    busy.bind(('127.0.0.1', 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]
    cases = [
        (['nosuch.py'], r'^ame run: nosuch\.py: No such file or directory$'),
        ([syntax], r'^ame run: .*syntax_error\.py: SyntaxError: .*line 2'),
        (['setup_raises.py'], r'^ame run: setup_raises\.py: ValueError: bad '
         r'configuration value 42 \(at setup_raises\.py:\d+\)$'),
        (['never_runs.py'], r'^ame run: never_runs\.py: returned without '
         r'calling reactor\.run\(\)$'),
        (['hello_web.py', str(busy_port)], r'^ame run: hello_web\.py: '
         r'CannotListenError: .*%d.*Address already in use' % busy_port),
        (['-m', 'no_such_module'],
         r'^ame run: no_such_module: ImportError: No module named'),
    ]
    try:
        for workers in ('1', '2'):
            for args, rx in cases:
                argv = ['run', '--workers', workers] + args
                rc, out, err = run_ame(ame, argv)
                lines = err.strip().split('\n')
                check(rc == 1, '%s: exit %d (1)' % (' '.join(argv), rc))
                check(len(lines) == 1 and re.search(rx, lines[0]),
                      '%s: one line %r' % (' '.join(argv), err.strip()))
                check('listening' not in out, '%s: nothing served'
                      % ' '.join(argv))
        rc, out, err = run_ame(ame, ['run', '-v', 'setup_raises.py'])
        check(rc == 1 and err.startswith('ame run: setup_raises.py: ') and
              'Traceback' in err and 'in configure' in err,
              '-v: the one line, then the traceback')
        # AME_SHARED_SIZE as --shared-size: 4M to 47G, one clear line
        # (not "cannot make the shared heap ...: invalid argument").
        for size in ('1M', '0', 'lots', '48G'):
            rc, out, err = run_ame(ame, ['run', '--workers', '2',
                                         'hello_web.py', '0'],
                                   env={'AME_SHARED_SIZE': size})
            check(rc == 1 and err.strip() == "ame run: AME_SHARED_SIZE "
                  "wants bytes, 4M to 47G (e.g. 256M, 2G), not '%s'"
                  % size and not out,
                  'AME_SHARED_SIZE=%s: exit %d (1), says %r'
                  % (size, rc, err.strip()))
        rc, out, err = run_ame(ame, ['run', 'exits.py', '3'])
        check(rc == 3 and not err, 'sys.exit(3) in setup: exit %d (3), no '
              'message %r' % (rc, err))
    finally:
        busy.close()


def case_examples(ame):
    # --io auto (the default): inline when the workers fill the CPUs.
    ncpu = len(os.sched_getaffinity(0))
    auto2 = 'inline' if ncpu <= 2 else 'thread'
    for workers in ('1', '2', 'shared', 'thread', 'inline'):
        opts = ['--workers', workers]
        io = ('inline' if ncpu <= 1 else 'thread') if workers == '1' \
            else auto2
        if workers == 'shared':
            workers, opts = '2', ['--workers', '2', '--sockets', 'shared']
        elif workers in ('thread', 'inline'):
            io = workers
            workers, opts = '2', ['--workers', '2', '--io', io]
        srv = Server(ame, ['run'] + opts + ['hello_web.py', '0'])
        port = srv.port()
        if not check(port, 'hello_web.py %s: listening' % ' '.join(opts)):
            srv.stop(signal.SIGKILL)
            continue
        if workers == '2' and '--sockets' not in opts:
            seen = wait_workers_serving(port, [1, 2])
            check(sorted(seen) == [1, 2], 'both workers answer: %s' % seen)
        status, h, body = http_get(port)
        check(status == 200 and body == b'hello\n', 'GET / -> 200 hello')
        check(h.get('x-io') == io, '%s: io %s (%s)'
              % (' '.join(opts), h.get('x-io'), io))
        status, h, body = http_get(port, '/big')
        check(status == 200 and body == b'x' * BIG, 'GET /big -> 256 KiB')
        rc = srv.stop()
        check(rc == 0, 'hello_web.py %s: SIGTERM -> exit %s (0)'
              % (' '.join(opts), rc))
        n = len([l for l in srv.out if re.search(r'served \d+', l)])
        if not check(n == int(workers), '%d "served" line(s) (%s)' % (n, workers)):
            srv.dump()
        if '--sockets' in opts or '--io' in opts:
            continue

        srv = Server(ame, ['run', '--workers', workers, 'echo_lines.py'])
        port = srv.port()
        if not check(port, 'echo_lines.py --workers %s: listening' % workers):
            srv.stop(signal.SIGKILL)
            continue
        pids = set()
        # Worker 2 may still be starting (it binds a listening socket of
        # its own): keep connecting, for up to TIMEOUT, until both answer.
        deadline = time.monotonic() + TIMEOUT
        for i in range(100000 if workers == '2' else 2):
            if workers == '2' and time.monotonic() > deadline:
                break
            with socket.create_connection(('127.0.0.1', port), 5) as s:
                s.settimeout(TIMEOUT)
                s.sendall(b'hello %d\n' % i)
                f = s.makefile('rb')
                line = f.readline()
                m = re.match(rb'(\d+): hello %d\n$' % i, line)
                check(m, 'echo_lines: %r' % line)
                if m:
                    pids.add(int(m.group(1)))
            if workers == '2' and len(pids) == 2 and i >= 2:
                break
        if workers == '2':
            check(len(pids) == 2, 'echo_lines: both workers answered %s'
                  % sorted(pids))
        rc = srv.stop(signal.SIGINT)
        check(rc == 0, 'echo_lines.py --workers %s: SIGINT -> exit %s (0)'
              % (workers, rc))


def case_programs(ame):
    """The HTTP example programs of examples/python (each one that
    announces 'listening on http://'), unchanged, under `ame run`: listening
    on the ame reactor, answering, stopped by SIGTERM with exit 0.  The
    others are tested where they belong: chat.py (a line protocol) by
    tests/python/test_shared.py, wordcount.py and corpus.py (batch jobs) by
    tests/python/test_tasks.py."""
    d = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'examples', 'python')

    def http_program(f):
        with open(os.path.join(d, f), encoding='utf-8') as fh:
            return 'listening on http://' in fh.read()

    progs = sorted(f for f in os.listdir(d) if f.endswith('.py') and
                   http_program(f)) if os.path.isdir(d) else []
    check(progs, 'example programs in examples/python: %s' % progs)
    for prog in progs:
        for workers in ('1', '2'):
            srv = Server(ame, ['run', '--workers', workers,
                               os.path.join(d, prog), '--port', '0'])
            m = srv.wait_line('out', r'listening on http://[\d.]+:(\d+)/ '
                              r'\((\w+)\)')
            what = '%s --workers %s' % (prog, workers)
            if not check(m and m.group(2) == 'AMEReactor',
                         '%s: listening on AMEReactor: %r'
                         % (what, m and m.group(0))):
                srv.dump()
                srv.stop(signal.SIGKILL)
                continue
            port = int(m.group(1))
            if workers == '2':
                check(len(srv.worker_pids(2)) == 2, '%s: 2 workers' % what)
            for _ in range(3):
                status, h, body = http_get(port)
                check(status == 200 and body.startswith(b'Hello, world!'),
                      '%s: GET / -> %d %r' % (what, status, body))
            res = load(ame, port, ['-c', '4', '-d', '500ms', '-t', '1'])
            check(res is not None and res['requests'] > 0 and
                  res['errors']['total'] == 0,
                  '%s: ame load, no errors' % what)
            rc = srv.stop()
            check(rc == 0, '%s: SIGTERM -> exit %s (0)' % (what, rc))


def case_balance(ame):
    srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'])
    port = srv.port()
    if not check(port, 'listening'):
        srv.stop(signal.SIGKILL)
        return
    seen = wait_workers_serving(port, [1, 2])
    check(sorted(seen) == [1, 2], 'both workers answer')
    res = load(ame, port, ['-c', '32', '-d', '2s', '-t', '1'])
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)
    check(res is not None and res['errors']['total'] == 0,
          'ame load: no errors')
    counts = served_counts(srv)
    print('  per worker (requests, connections): %s' % counts)
    check(sorted(counts) == [1, 2] and all(c[1] > 0 and c[0] > 0
                                           for c in counts.values()),
          'both workers got connections and served requests')
    if res is not None:
        total = sum(c[0] for c in counts.values())
        check(total >= res['requests'],
              'the workers served %d, ame load counted %d'
              % (total, res['requests']))


class KeepAliveClient(threading.Thread):
    """GET path over and over on one keep-alive connection until told to
    stop or the connection fails; records every response."""

    def __init__(self, port, conn, path='/'):
        super().__init__(daemon=True)
        self.port, self.conn, self.path = port, conn, path
        self.ok = 0
        self.error = None
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                status, h, body = http_get(self.port, self.path, self.conn)
            except (OSError, http.client.HTTPException) as e:
                self.error = repr(e)
                return
            if status != 200:
                self.error = 'status %d' % status
                return
            self.ok += 1


def case_crash(ame):
    srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'])
    port = srv.port()
    pids = srv.worker_pids(2)
    if not check(port and sorted(pids) == [1, 2],
                 'listening, workers started: %s' % pids):
        srv.stop(signal.SIGKILL)
        return
    wait_workers_serving(port, [1, 2])
    # Keep-alive connections that landed on worker 1 (the survivor).
    survivors = []
    others = []
    for _ in range(40):
        c = http.client.HTTPConnection('127.0.0.1', port, timeout=TIMEOUT)
        status, h, body = http_get(port, conn=c)
        (survivors if h['x-worker'] == '1' else others).append(c)
        if len(survivors) >= 2:
            break
    for c in others:
        c.close()
    check(survivors, 'keep-alive connections on worker 1: %d'
          % len(survivors))
    clients = [KeepAliveClient(port, c) for c in survivors]
    for t in clients:
        t.start()
    loader = threading.Thread(target=lambda: results.append(
        load(ame, port, ['-c', '8', '-d', '3s', '-t', '1'])))
    results = []
    loader.start()
    time.sleep(1)  # under load
    mark = len(srv.err)
    os.kill(pids[2], signal.SIGKILL)
    died = srv.wait_line('err', r'worker 2 \(pid %d\) died \(signal 9\); '
                         r'restarting in ([\d.]+) s' % pids[2], start=mark)
    check(died and float(died.group(1)) == 0.1,
          'the supervisor logs the death and a 0.1 s back-off: %r'
          % (died and died.group(0)))
    new = srv.wait_line('err', r'worker 2 started \(pid (\d+)\)', start=mark)
    check(new and int(new.group(1)) != pids[2],
          'a new worker 2 started: %r' % (new and new.group(0)))
    loader.join(60)
    for t in clients:
        t.halt.set()
        t.join(TIMEOUT)
    for t in clients:
        check(t.error is None and t.ok > 0,
              'a connection on worker 1 kept succeeding: %d requests, '
              'error %s' % (t.ok, t.error))
    res = results[0] if results else None
    if check(res is not None, 'ame load reported'):
        e = res['errors']
        print('  load: %d requests, errors %s' % (res['requests'], e))
        check(res['requests'] > 0 and e['connect'] == 0 and
              e['timeout'] == 0 and e['parse'] == 0,
              'load: requests succeeded, no connect/timeout/parse errors')
        # A connection on worker 2 fails when it dies; its reconnect can
        # fail once more if the kernel hashes it to worker 2's SO_REUSEPORT
        # socket while the dying process still holds it (the exit of a
        # large process, an ASan build's in particular, takes a while):
        # at most two failures per connection of the 8.
        check(e['read'] + e['write'] <= 16,
              'load: at most two failures per connection (%d)'
              % (e['read'] + e['write']))
    if new:
        seen = {}
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            status, h, body = http_get(port)
            if h['x-worker'] == '2':
                seen = h
                break
        check(seen and int(seen['x-worker-pid']) == int(new.group(1)),
              'the new worker 2 serves requests')
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


class Recorder(threading.Thread):
    """A keep-alive client of path that records, per request, whether the
    response was whole, truncated, or never came."""

    def __init__(self, port, path, expect):
        super().__init__(daemon=True)
        self.port, self.path, self.expect = port, path, expect
        self.whole = 0
        self.truncated = []
        self.failed = None
        self.sent_at = None        # the request in flight: when sent
        self.in_flight = threading.Event()
        self.finished = []         # (sent, received) of whole responses

    def run(self):
        conn = http.client.HTTPConnection('127.0.0.1', self.port,
                                          timeout=TIMEOUT)
        while True:
            try:
                conn.request('GET', self.path)
                self.sent_at = time.monotonic()
                self.in_flight.set()
                r = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self.failed = repr(e)  # no response: not a truncation
                return
            try:
                body = r.read()
            except (OSError, http.client.HTTPException) as e:
                self.truncated.append(repr(e))
                return
            if r.status != 200 or body != self.expect:
                self.truncated.append('status %d, %d bytes'
                                      % (r.status, len(body)))
                return
            self.whole += 1
            self.finished.append((self.sent_at, time.monotonic()))
            self.in_flight.clear()


def case_stop(ame):
    srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'])
    port = srv.port()
    pids = srv.worker_pids(2)
    if not check(port and len(pids) == 2, 'listening, 2 workers'):
        srv.stop(signal.SIGKILL)
        return
    wait_workers_serving(port, [1, 2])
    big = [Recorder(port, '/big', b'x' * BIG) for _ in range(4)]
    slow = [Recorder(port, '/slow', b'slow\n') for _ in range(2)]
    for t in big + slow:
        t.start()
    time.sleep(1)  # under load
    # Signal while a 1 s request is in flight.
    slow[0].in_flight.wait(TIMEOUT)
    t_sig = time.monotonic()
    os.kill(srv.p.pid, signal.SIGTERM)
    try:
        rc = srv.p.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = None
    for t in big + slow:
        t.join(TIMEOUT)
    rc2 = srv.stop()  # (already exited) joins, checks nothing is left
    check(rc == 0 and rc2 == 0, 'SIGTERM under load: exit %s (0)' % rc)
    whole = sum(t.whole for t in big + slow)
    truncated = [x for t in big + slow for x in t.truncated]
    print('  whole responses %d; ends: %s' % (
        whole, [t.failed for t in big + slow]))
    check(whole > 0 and not truncated,
          '%d whole responses, none truncated %s' % (whole, truncated))
    spanning = [f for t in slow for f in t.finished
                if f[0] < t_sig < f[1]]
    check(spanning, 'a 1 s request in flight at the signal completed '
          '(%d such)' % len(spanning))
    check(srv.wait_line('err', r'SIGTERM: stopping 2 worker', timeout=1),
          'the supervisor logged the graceful stop')
    counts = served_counts(srv)
    check(sorted(counts) == [1, 2], 'both workers stopped cleanly and '
          'reported: %s' % counts)
    for wid, pid in pids.items():
        check(not os.path.exists('/proc/%d' % pid),
              'worker %d (pid %d) is gone' % (wid, pid))


def case_force(ame):
    srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'])
    port = srv.port()
    pids = srv.worker_pids(2)
    if not check(port and len(pids) == 2, 'listening, 2 workers'):
        srv.stop(signal.SIGKILL)
        return
    wait_workers_serving(port, [1, 2])
    slow = [Recorder(port, '/slow', b'slow\n') for _ in range(4)]
    for t in slow:
        t.start()
    for t in slow:
        t.in_flight.wait(TIMEOUT)
    # The first signal starts a graceful stop that waits for the 1 s
    # requests; the second one kills the workers.
    os.kill(srv.p.pid, signal.SIGTERM)
    check(srv.wait_line('err', r'SIGTERM: stopping 2 worker'),
          'first SIGTERM: graceful stop')
    os.kill(srv.p.pid, signal.SIGTERM)
    rc = srv.stop()
    check(rc == 1, 'second SIGTERM: exit %s (1)' % rc)
    check(srv.wait_line('err', r'second signal: killing \d worker', 1),
          'the supervisor logged the forced stop')
    for t in slow:
        t.join(TIMEOUT)
    check(not any(t.truncated for t in slow), 'nothing truncated')


def case_early(ame):
    for _ in range(3):
        srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'])
        # As soon as the workers exist: they may not handle signals yet.
        check(srv.wait_line('err', r'worker 2 started'), 'workers started')
        # One SIGTERM (stop() sends it: a kill here and another from stop()
        # would be a second signal whenever the supervisor handled the
        # first in between, which forces the stop).
        rc = srv.stop(signal.SIGTERM)
        check(rc == 0, 'SIGTERM at once: exit %s (0)' % rc)
        counts = served_counts(srv)
        if not check(sorted(counts) == [1, 2],
                     'both workers stopped gracefully, shutdown code ran: %s'
                     % counts):
            srv.dump()


def case_backoff(ame):
    crash_dir = scratch_dir()
    srv = Server(ame, ['run', '--workers', '2', 'crash_loop.py', crash_dir,
                       '3'])
    for wid in (1, 2):
        check(srv.wait_line('out', r'^\[w%d\] worker %d serving' % (wid, wid)),
              'worker %d serves after 3 crashes' % wid)
    for wid in (1, 2):
        delays = [float(m.group(1)) for m in
                  (re.search(r'worker %d \(pid \d+\) died \(exit status 7\); '
                             r'restarting in ([\d.]+) s' % wid, l)
                   for l in srv.err) if m]
        check(delays == [0.1, 0.2, 0.4],
              'worker %d: restarted after 0.1, 0.2, 0.4 s: %s' % (wid, delays))
    starts = len(re.findall(r'worker \d started', '\n'.join(srv.err)))
    check(starts == 8, '8 workers started (2 + 2 x 3 restarts): %d' % starts)
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)


def raw_exchange(port, data, timeout=TIMEOUT):
    """Send data on a fresh connection, read until the server closes it
    (or timeout); return what came back."""
    with socket.create_connection(('127.0.0.1', port), timeout) as s:
        s.settimeout(timeout)
        s.sendall(data)
        got = b''
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got


def reset_close(s):
    """Close s with a reset (SO_LINGER 0) instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                 struct.pack('ii', 1, 0))
    s.close()


def still_serves(port, what):
    """GET / and GET /big on fresh connections, retried for up to TIMEOUT
    (descriptors a fault used are released asynchronously)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            status, h, body = http_get(port, timeout=5)
            status2, h2, body2 = http_get(port, '/big', timeout=5)
            ok = (status, body, status2, body2) == (200, b'hello\n', 200,
                                                   b'x' * BIG)
        except OSError as e:
            ok, status = False, e
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return check(ok, '%s: then GET / and GET /big whole (%s)'
                 % (what, status))


def exhaust_fds(port, conns):
    """Open conns connections at once, then send GET / on each and read
    the answers; return (served, closed, hung).  A connection the server
    closed (Twisted's EMFILE recovery accepts and closes what it cannot
    keep) counts as closed; one with no answer or close after TIMEOUT
    (or 5 s per socket) as hung."""
    socks = []
    for _ in range(conns):
        s = socket.socket()
        s.settimeout(TIMEOUT)
        try:
            s.connect(('127.0.0.1', port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    served = closed = hung = 0
    for s in socks:
        try:
            s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        except OSError:
            pass
    deadline = time.monotonic() + TIMEOUT
    for s in socks:
        got = b''
        s.settimeout(max(0.1, min(5, deadline - time.monotonic())))
        try:
            while b'hello\n' not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except socket.timeout:
            hung += 1
            continue
        if got.startswith(b'HTTP/1.1 200') and got.endswith(b'hello\n'):
            served += 1
        elif got:
            print('  unexpected answer: %r' % got[:200])
            hung += 1
        else:
            closed += 1
    for s in socks:
        s.close()
    return served, closed, hung


def case_faults(ame):
    for opts in (['--workers', '1', '--io', 'thread'],
                 ['--workers', '1', '--io', 'inline'],
                 ['--workers', '2']):
        name = 'hello_web.py %s' % ' '.join(opts)
        srv = Server(ame, ['run'] + opts + ['hello_web.py', '0'], max_fds=64,
                     env={'HELLO_LOG': '1'})
        port = srv.port()
        if not check(port, '%s (64 descriptors): listening' % name):
            srv.stop(signal.SIGKILL)
            continue
        if opts[1] == '2':
            seen = wait_workers_serving(port, [1, 2])
            check(sorted(seen) == [1, 2], 'both workers answer: %s' % seen)

        for junk in (b'GARBAGE\r\n\r\n', b'\x00\x01\x02 junk\r\n\r\n',
                     b'GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n',
                     b'GET / HTTP/1.1\r\n' + b'X: y\r\n' * 20000):
            got = raw_exchange(port, junk)
            check(got.startswith(b'HTTP/1.1 400'),
                  '%s: %r... -> 400, closed (%r)'
                  % (name, junk[:20], got[:40]))
        still_serves(port, '%s, malformed requests' % name)

        for i in range(20):
            with socket.create_connection(('127.0.0.1', port), TIMEOUT) as s:
                if i % 2:
                    s.sendall(b'GET /big HTTP/1.1\r\nHost: x\r\n\r\n')
                    s.settimeout(TIMEOUT)
                    s.recv(1000)  # the response is on its way
                else:
                    s.sendall(b'GET /big HTTP/1.1\r\nHo')
                reset_close(s)
        still_serves(port, '%s, 20 peers reset mid-request or '
                     'mid-response' % name)

        status, h, body = http_get(port, '/raise')
        check(status == 500, '%s: a resource that raises -> %d (500)'
              % (name, status))
        status, h, body = http_get(port, '/later')
        check(status == 200, '%s: /later -> %d' % (name, status))
        m = srv.wait_line('err', r'ZeroDivisionError')
        m = m and srv.wait_line('err', r'ZeroDivisionError',
                                start=srv.err.index(m.string) + 1)
        check(m is not None, '%s: both raising callbacks are logged' % name)
        still_serves(port, '%s, raising callbacks' % name)

        start = len(srv.err)
        served, closed, hung = exhaust_fds(port, 120)
        check(hung == 0 and served > 0 and closed > 0,
              '%s: 120 connections at 64 descriptors: %d served, %d closed '
              '(fd table full), %d hung' % (name, served, closed, hung))
        check(srv.wait_line('err', r'EMFILE encountered', start=start)
              is not None, '%s: Twisted logged its EMFILE recovery' % name)
        still_serves(port, '%s, fd table exhausted' % name)

        rc = srv.stop()
        if not check(rc == 0, '%s: SIGTERM -> exit %s (0)' % (name, rc)):
            srv.dump()


def case_signals(ame):
    srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'],
                 env={'HELLO_SIGNALS': '1'})
    port = srv.port()
    if not check(port, 'listening (the program handles HUP and USR1)'):
        srv.stop(signal.SIGKILL)
        return
    seen = wait_workers_serving(port, [1, 2])
    check(sorted(seen) == [1, 2], 'both workers answer: %s' % seen)
    # SIGHUP is the supervisor's own (a reload: case 'reload'); USR1 is
    # passed on.
    for sig in (signal.SIGUSR1, signal.SIGUSR1):
        os.kill(srv.p.pid, sig)
        time.sleep(0.1)  # one at a time: a pending signal is not queued
    want = 'hup=0 usr1=2'
    got = {}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            status, h, body = http_get(port, timeout=5)
        except OSError:
            continue
        got[h.get('x-worker')] = h.get('x-signals')
        if len(got) == 2 and all(v == want for v in got.values()):
            break
    check(len(got) == 2 and all(v == want for v in got.values()),
          'each worker counted the signals sent to the supervisor: %s (%s)'
          % (got, want))
    check(srv.wait_line('err', r'SIGUSR1: passed on to 2 worker') is not
          None, 'the supervisor says it passed them on')
    check(srv.p.poll() is None, 'the supervisor still runs')
    rc = srv.stop()
    check(rc == 0, 'SIGTERM: exit %s (0)' % rc)

    srv = Server(ame, ['run', '--workers', '2', 'hello_web.py', '0'])
    port = srv.port()
    if not check(port, 'listening (no handler for USR1)'):
        srv.stop(signal.SIGKILL)
        return
    seen = wait_workers_serving(port, [1, 2])
    os.kill(srv.p.pid, signal.SIGUSR1)
    try:
        rc = srv.p.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == -signal.SIGUSR1, 'no handler: SIGUSR1 ends the supervisor '
          '(%s)' % rc)
    srv.stop()  # checks that the workers are gone too


def join_cgroup(cg):
    """Move the calling process into cgroup directory cg."""
    with open(os.path.join(cg, 'cgroup.procs'), 'w') as f:
        f.write(str(os.getpid()))


def make_cpu_cgroup():
    """A new cgroup, as (directory, function setting its CPU quota in
    CPUs), in cgroup v2 where the cpu controller is enabled, else in v1's
    cpu hierarchy; None where none can be made (not root, read-only)."""
    mounts = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            point = fields[4].replace('\\040', ' ')
            if rfields[0] == 'cgroup2':
                mounts.append((2, point))
            elif rfields[0] == 'cgroup' and 'cpu' in rfields[2].split(','):
                mounts.append((1, point))
    for version, point in sorted(mounts, reverse=True):
        if version == 2:
            try:
                with open(os.path.join(point, 'cgroup.subtree_control')) as f:
                    if 'cpu' not in f.read().split():
                        continue
            except OSError:
                continue
        cg = os.path.join(point, 'ame-test-%d' % os.getpid())
        try:
            os.mkdir(cg)
        except OSError:
            continue

        def set_quota(cpus, cg=cg, version=version):
            if version == 2:
                with open(os.path.join(cg, 'cpu.max'), 'w') as f:
                    f.write('%d 100000' % int(cpus * 100000))
            else:
                with open(os.path.join(cg, 'cpu.cfs_period_us'), 'w') as f:
                    f.write('100000')
                with open(os.path.join(cg, 'cpu.cfs_quota_us'), 'w') as f:
                    f.write('%d' % int(cpus * 100000))
        try:
            set_quota(1)
            # A process can be started in it (delegation, "no internal
            # processes" in v2).
            subprocess.run(['/bin/true'], check=True, timeout=30,
                           preexec_fn=lambda cg=cg: join_cgroup(cg))
        except (OSError, subprocess.SubprocessError):
            time.sleep(0.1)
            try:
                os.rmdir(cg)
            except OSError:
                pass
            continue
        return cg, set_quota
    return None


def case_cpus(ame):
    made = make_cpu_cgroup() if os.geteuid() == 0 else None
    if made is None:
        print('SKIP  no cgroup with a CPU quota can be made here (needs '
              'root and a writable cpu controller)')
        return 'skip'
    cg, set_quota = made
    print('  cgroup %s' % cg)
    try:
        set_quota(1)
        srv = Server(ame, ['run', '--workers', 'auto', 'hello_web.py', '0'],
                     cgroup=cg)
        port = srv.port()
        if check(port, 'quota 1 CPU: --workers auto listening'):
            status, h, body = http_get(port)
            check(status == 200 and h.get('x-worker') == '-',
                  'one process served (X-Worker %s)' % h.get('x-worker'))
            check(h.get('x-cpus') == '1' and h.get('x-io') == 'inline',
                  'quota 1 CPU: ame._ame.cpu_count() %s (1), io %s (inline)'
                  % (h.get('x-cpus'), h.get('x-io')))
            url = 'http://127.0.0.1:%d/' % port
            p = subprocess.run([ame, 'load', url, '-c', '4', '-d', '300ms',
                                '--json', '--no-progress'], text=True,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               preexec_fn=lambda: join_cgroup(cg),
                               timeout=60)
            try:
                threads = json.loads(p.stdout)['threads']
            except (ValueError, KeyError):
                threads = None
            check(threads == 1, 'quota 1 CPU: ame load runs %s thread(s) '
                  '(1) %s' % (threads, p.stderr.strip()))
        rc = srv.stop()
        check(rc == 0, 'SIGTERM: exit %s (0)' % rc)
        check(not any('worker' in l and 'started' in l for l in srv.err),
              'no worker processes were forked')

        if len(os.sched_getaffinity(0)) >= 2:
            set_quota(1.5)
            srv = Server(ame, ['run', '--workers', 'auto', 'hello_web.py',
                               '0'], cgroup=cg)
            port = srv.port()
            if check(port, 'quota 1.5 CPUs: --workers auto listening'):
                seen = wait_workers_serving(port, [1, 2])
                check(sorted(seen) == [1, 2],
                      'quota 1.5 CPUs: two workers answer: %s' % seen)
            rc = srv.stop()
            check(rc == 0, 'SIGTERM: exit %s (0)' % rc)
            check(not srv.wait_line('err', r'worker 3 started', timeout=0),
                  'no third worker')
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(cg)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    check(False, 'cgroup %s removed: %s' % (cg, e))
                    break
                time.sleep(0.1)


def case_twistd(ame):
    www = scratch_dir()
    with open(os.path.join(www, 'index.html'), 'w') as f:
        f.write('twistd here\n')
    for workers in ('1', '2'):
        srv = Server(ame, ['twistd', '--workers', workers, '-n',
                           '--pidfile=', 'web', '--listen',
                           'tcp:0:interface=127.0.0.1', '--path', www],
                     cwd=www)
        port = srv.port(r'Site starting on (\d+)')
        if not check(port, 'twistd --workers %s web: listening' % workers):
            srv.stop(signal.SIGKILL)
            continue
        check(srv.wait_line('out', r'reactor class: ame\.reactor\.AMEReactor'),
              'twistd uses the ame reactor')
        for _ in range(4):
            status, h, body = http_get(port)
            check(status == 200 and body == b'twistd here\n',
                  'GET / -> 200 from twistd web')
        rc = srv.stop()
        if workers == '1':
            # twistd stops itself with the signal it got, as it does alone.
            check(rc == -signal.SIGTERM, 'SIGTERM: twistd ends by SIGTERM '
                  '(%s)' % rc)
        else:
            check(rc == 0, 'SIGTERM: supervisor exit %s (0)' % rc)
            check(any(l.startswith('[w1] ') for l in srv.out) and
                  any(l.startswith('[w2] ') for l in srv.out),
                  "the workers' log lines are prefixed")
    twistd_daemon(ame, www)
    rc, out, err = run_ame(ame, ['twistd', '--reactor=epoll', 'web'])
    check(rc == 1 and 'remove' in err, '--reactor=epoll: refused (%d) %r'
          % (rc, err.strip()))


def children(pid):
    """Pids whose parent is pid (from /proc)."""
    kids = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                with open('/proc/%s/stat' % d) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(')') + 2:].split()[1]) == pid:
                kids.append(int(d))
    return kids


def twistd_daemon(ame, www):
    """twistd without -n, 2 workers: the daemon is the supervisor, its pid
    in the pid file, which it removes at exit."""
    d = scratch_dir()
    pidfile, logfile = os.path.join(d, 'twistd.pid'), os.path.join(d, 'log')
    rc, out, err = run_ame(ame, ['twistd', '--workers', '2', '--pidfile',
                                 pidfile, '--logfile', logfile, 'web',
                                 '--listen', 'tcp:0:interface=127.0.0.1',
                                 '--path', www], cwd=d)
    check(rc == 0, 'daemonized twistd --workers 2: started, exit %d (0)'
          % rc)
    port = sup = None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not (port and sup):
        try:
            with open(logfile) as f:
                m = re.search(r'Site starting on (\d+)', f.read())
            port = m and int(m.group(1))
            with open(pidfile) as f:
                sup = int(f.read())
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if not check(port and sup, 'daemon: port %s, supervisor pid %s'
                 % (port, sup)):
        return
    workers = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = children(sup)
        time.sleep(0.05)
    check(len(workers) == 2, 'daemon: 2 workers %s' % workers)
    status, h, body = http_get(port)
    check(status == 200 and body == b'twistd here\n', 'daemon: GET / -> 200')
    os.kill(sup, signal.SIGTERM)
    left = [sup] + workers
    while time.monotonic() < deadline and left:
        left = [p for p in left if os.path.exists('/proc/%d' % p)]
        time.sleep(0.05)
    check(not left, 'daemon: SIGTERM: supervisor and workers gone %s'
          % left)
    check(not os.path.exists(pidfile), 'daemon: pid file removed')
    with open(logfile) as f:
        log = f.read()
    check('Traceback' not in log and 'Server Shut Down' in log,
          'daemon: the workers shut down cleanly (log)')
    for p in left:
        os.kill(p, signal.SIGKILL)


def case_shared(ame):
    """ame.shared across workers: two workers (and, after a worker is
    killed with SIGKILL under load, its replacement) increment one shared
    counter exactly once per request served, and keep a shared bank's total
    through transfers; examples/python/chat.py under --workers 2 gives every
    client, on either worker, the same lines in the same order."""
    srv = Server(ame, ['run', '--workers', '2', 'shared_web.py', '0'])
    port = srv.port()
    if port is None:
        check(False, 'shared_web.py under --workers 2 listens')
        return
    pids = wait_workers_serving_pid(port, 2)
    check(len(pids) == 2, 'both workers answer (%s)' % sorted(pids))
    res = load(ame, port, ['-c', '8', '-d', '1s', '-t', '1'])
    ok = res is not None and res['errors']['total'] == 0
    check(ok, 'ame load: no errors')
    time.sleep(0.2)  # requests in flight when ame load stopped finish
    status, h, body = http_get(port, '/count')
    if ok:
        # ame load counts the responses it read; those it abandoned at
        # the end may have been served too.
        served = res['status'].get('200', 0)
        lo, hi = served, served + res['abandoned']
        check(status == 200 and lo <= int(body) <= hi and served > 0,
              'the shared counter is the number of requests the workers '
              'served: %s, ame load read %d (+%d abandoned)'
              % (body.strip().decode(), served, res['abandoned']))
    # Transfers under load, a worker killed in the middle: the total holds.
    p = subprocess.Popen([ame, 'load', 'http://127.0.0.1:%d/transfer' % port,
                          '-c', '8', '-d', '2s', '-t', '1', '--json',
                          '--no-progress'], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.7)
    os.kill(max(pids.values()), signal.SIGKILL)
    p.communicate(timeout=60)
    check(srv.wait_line('err', r'worker \d+ \(pid %d\) died'
                        % max(pids.values())) is not None,
          'the supervisor saw the worker die')
    sums = set()
    for _ in range(20):
        status, h, body = http_get(port, '/sum')
        sums.add((status, body.strip()))
    check(sums == {(200, b'1000')},
          'after the kill, every worker sees the bank total 1000: %s'
          % sorted(sums))
    check(srv.stop() == 0, 'SIGTERM: exit 0')

    # The chat room spans the workers.
    chat = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'examples',
                        'python', 'chat.py')
    srv = Server(ame, ['run', '--workers', '2', chat, '--port', '0'])
    m = srv.wait_line('out', r'listening on [\d.]+:(\d+)')
    if m is None:
        srv.dump()
        check(False, 'chat.py under --workers 2 listens')
        return
    cport = int(m.group(1))
    clients, by_pid = [], {}
    for _ in range(40):
        c = socket.create_connection(('127.0.0.1', cport), timeout=TIMEOUT)
        f = c.makefile('rb')
        greet = f.readline().decode()
        mm = re.search(r'you are (\S+) \(process (\d+)\)', greet)
        clients.append((c, f, mm.group(1)))
        by_pid.setdefault(int(mm.group(2)), []).append(len(clients) - 1)
        if len(by_pid) == 2 and len(clients) >= 3:
            break
    check(len(by_pid) == 2, 'clients on both workers (%d clients)'
          % len(clients))
    # Everyone says something, at once; every client reads until it has
    # every line (its socket's timeout fails the test if one never comes).
    for i, (c, f, name) in enumerate(clients):
        c.sendall(b'line %d\n' % i)
    seqs = []
    for c, f, name in clients:
        got = []
        while len(got) < len(clients):
            line = f.readline().decode().rstrip('\r\n')
            if not line:
                break
            if line.startswith('<'):
                got.append(line)
        seqs.append(got)
    check(all(s == seqs[0] for s in seqs) and
          len(seqs[0]) == len(clients),
          'every client, on both workers, got the same %d lines in the same '
          'order' % len(seqs[0]))
    for c, f, name in clients:
        c.close()
    check(srv.stop() == 0, 'chat: SIGTERM: exit 0')


def wait_workers_serving_pid(port, n, timeout=TIMEOUT):
    """Fresh connections until n different X-Worker-Pid answered."""
    pids = {}
    deadline = time.monotonic() + timeout
    while len(pids) < n and time.monotonic() < deadline:
        try:
            status, h, body = http_get(port, '/count', timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        pids[h['x-worker-pid']] = int(h['x-worker-pid'])
    return pids


# Cases that drive the server with `ame load`.
NEEDS_LOAD = {'programs', 'balance', 'crash', 'cpus', 'shared'}

CASES = {
    'shared': case_shared,
    'usage': case_usage,
    'setup': case_setup,
    'errors': case_errors,
    'examples': case_examples,
    'programs': case_programs,
    'balance': case_balance,
    'crash': case_crash,
    'stop': case_stop,
    'force': case_force,
    'early': case_early,
    'backoff': case_backoff,
    'faults': case_faults,
    'twistd': case_twistd,
    'cpus': case_cpus,
    'signals': case_signals,
}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ame = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    skipped = 0
    has_load = subprocess.run([ame, 'load', '--help'], capture_output=True,
                              text=True).returncode == 0
    for name in names:
        print('== %s' % name, flush=True)
        t = time.monotonic()
        if name in NEEDS_LOAD and not has_load:
            print('SKIP: %s drives the server with `ame load`, which is not '
                  'in this build (-Dload=disabled or no http-parser)' % name)
            skipped += 1
        elif CASES[name](ame) == 'skip':
            skipped += 1
        print('   (%.1f s)' % (time.monotonic() - t))
    if failures:
        print('%d check(s) failed:' % len(failures))
        for f in failures:
            print('  ' + f)
        sys.exit(1)
    if skipped == len(names):
        sys.exit(77)  # meson: skipped
    print('all checks passed')


if __name__ == '__main__':
    main()
