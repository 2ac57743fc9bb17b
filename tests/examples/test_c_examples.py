#!/usr/bin/python3
"""End-to-end tests of the C examples (meson suite 'examples').

    test_c_examples.py echo       EXE
    test_c_examples.py http       EXE
    test_c_examples.py chat       EXE
    test_c_examples.py wordcount  EXE
    test_c_examples.py fuzz       EXE CORPUS_DIR     (fuzz-http-replay)

Each server is started on a port it picks itself (port 0; the port is read
from its first line of output), driven over real sockets, then stopped
with SIGTERM: it must exit with status 0 and print its final report.  A
server still running when a test fails is killed.  Standard library only.
"""
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TIMEOUT = float(os.environ.get("AME_EXAMPLES_TIMEOUT", "20"))


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def check_eq(got, want, what):
    if got != want:
        raise Failure(f"{what}: got {got!r}, want {want!r}")


# ---------------------------------------------------------------------------
# Servers.

class Server:
    """A running example server; use as a context manager."""

    def __init__(self, exe, *args):
        """Start exe with args (which should ask for port 0)."""
        self.proc = subprocess.Popen(
            [exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.first = self._readline_stdout()
        m = re.search(r"listening on port (\d+)", self.first)
        if not m:
            self.kill()
            raise Failure(f"no 'listening on port' line: {self.first!r}")
        self.port = int(m.group(1))

    def _readline_stdout(self):
        deadline = time.monotonic() + TIMEOUT
        line = b""
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise Failure("server printed nothing")
            ch = os.read(fd, 1)
            if not ch:
                break
            line += ch
        return line.decode(errors="replace")

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port),
                                     timeout=TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def stop(self):
        """SIGTERM; return (stdout, stderr) after checking exit status 0."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure("server did not stop within the timeout")
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        if self.proc.returncode != 0:
            raise Failure(f"server exited with {self.proc.returncode}\n"
                          f"stdout:\n{out}\nstderr:\n{err}")
        check("ame reactor:" in out, f"no reactor report in:\n{out}")
        return out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def stop_at_once(exe, *args):
    """SIGTERM a server as soon as it says it listens, before its loops
    have run: it has caught the signal by then and stops gracefully."""
    with Server(exe, *args) as srv:
        srv.stop()


def run_threads(fn, n):
    """Run fn(i) on n threads; re-raise the first failure."""
    errors = []

    def wrap(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
        check(not t.is_alive(), "a client thread hung")
    if errors:
        raise errors[0]


def vm_rss_kib(pid):
    """The resident size of process pid, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failure(f"no VmRSS for {pid}")


def expect_usage_error(exe, *args):
    """exe with args refuses them (exit status 2) instead of running."""
    try:
        r = subprocess.run([exe, *args], capture_output=True, text=True,
                           timeout=3)
    except subprocess.TimeoutExpired as e:
        raise Failure(f"{' '.join(args)}: ran instead of refusing: "
                      f"{e.stdout!r}")
    check_eq(r.returncode, 2, f"{' '.join(args)}: {r.stdout}{r.stderr}")


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise Failure(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def expect_closed(s):
    """The peer closes the connection (EOF or reset), sending nothing."""
    try:
        rest = s.recv(1)
    except ConnectionResetError:
        return
    check_eq(rest, b"", "bytes after the server should have closed")


# ---------------------------------------------------------------------------
# echo

def test_echo(exe):
    for args in (("abc",), ("80x",), ("0", "two"), ("-1",)):
        expect_usage_error(exe, *args)
    stop_at_once(exe, "0", "2")
    with Server(exe, "0", "2") as srv:  # echo PORT WORKERS
        total = [0]
        lock = threading.Lock()

        def client(i):
            rnd = random.Random(i)
            s = srv.connect()
            sent = 0
            for _ in range(20):
                data = rnd.randbytes(rnd.randint(1, 5000))
                s.sendall(data)
                check_eq(recv_exactly(s, len(data)), data,
                         f"client {i}: echoed bytes")
                sent += len(data)
            # A large write, read back while it is still being sent.
            big = rnd.randbytes(300000)
            got = []
            t = threading.Thread(
                target=lambda: got.append(recv_exactly(s, len(big))))
            t.start()
            s.sendall(big)
            t.join(TIMEOUT)
            check(got and got[0] == big, f"client {i}: large echo differs")
            sent += len(big)
            s.close()
            with lock:
                total[0] += sent

        run_threads(client, 6)
        out, err = srv.stop()
        check("failed" not in err, f"callbacks failed:\n{err}")
        m = re.search(r"echo: (\d+) bytes echoed", out)
        check(m, f"no final count in:\n{out}")
        check_eq(int(m.group(1)), total[0], "bytes echoed (final report)")


# ---------------------------------------------------------------------------
# http

class HttpConn:
    """A raw HTTP/1.1 client connection that can pipeline."""

    def __init__(self, srv):
        self.s = srv.connect()
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise Failure("server closed the connection")
        self.buf += chunk

    def response(self, head=False):
        """Read one response: (status, headers dict lower-cased, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) [^\r\n]*$", lines[0])
        check(m, f"bad status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(": ")
            check(sep and name, f"bad header line {line!r}")
            check(name.lower() not in headers, f"repeated header {name}")
            headers[name.lower()] = value
        n = int(headers["content-length"])
        body = b""
        if not head:
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        return int(m.group(1)), headers, body

    def request(self, method, path, body=None, headers=()):
        self.send(req(method, path, body, headers))
        return self.response(head=method == "HEAD")

    def expect_closed(self):
        check_eq(self.buf, b"", "bytes after the last response")
        expect_closed(self.s)

    def close(self):
        self.s.close()


def req(method, path, body=None, headers=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += list(headers)
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return data + (body or b"")


def stats(srv):
    c = HttpConn(srv)
    status, headers, body = c.request("GET", "/stats")
    c.close()
    check_eq(status, 200, "GET /stats status")
    check_eq(headers["content-type"], "application/json", "/stats type")
    return json.loads(body)


def test_http(exe):
    for args in (("-p", "abc"), ("-p", "8080x"), ("-w", "two"),
                 ("--idle-timeout", "-1"), ("--idle-timeout", "1e99")):
        expect_usage_error(exe, *args)
    stop_at_once(exe, "-p", "0", "-w", "2")
    with Server(exe, "-p", "0", "-w", "2") as srv:
        http_keepalive(srv)
        http_pipelined(srv)
        http_errors(srv)
        http_close(srv)
        http_counters(srv)
        http_cache(srv)
        last = stats(srv)
        out, err = srv.stop()
        m = re.search(r"http: (\d+) requests on (\d+) paths", out)
        check(m, f"no final totals in:\n{out}")
        check_eq(int(m.group(1)), last["requests"],
                 "final report's requests vs the last /stats")
        check_eq(int(m.group(2)), last["paths_counted"], "final paths")
        check("failed" not in err, f"callbacks failed:\n{err}")
    # The same with one listening socket per worker.
    with Server(exe, "-p", "0", "-w", "2", "--reuseport") as srv:
        check("reuseport" in srv.first, "reuseport not reported")
        def client(i):
            c = HttpConn(srv)
            for _ in range(20):
                status, _, body = c.request("GET", "/hello")
                check_eq((status, body), (200, b"Hello, world!\n"), "hello")
            c.close()
        run_threads(client, 4)
        check_eq(stats(srv)["paths"]["/hello"], 80, "/hello with reuseport")
        srv.stop()
    # A client that never completes a request (slowloris) is closed after
    # the idle timeout; one that goes on asking is not.
    with Server(exe, "-p", "0", "-w", "2", "--idle-timeout", "1") as srv:
        http_idle_timeout(srv)
        srv.stop()
    with Server(exe, "-p", "0", "-w", "2") as srv:
        http_output_limit(srv)
        srv.stop()


def http_output_limit(srv):
    """Pipelined requests whose responses to one read pass 1 MiB: the
    request past it gets 503 and the connection closes, so that a few
    bytes of requests cannot make the server build gigabytes of output."""
    c = HttpConn(srv)
    for i in range(300):  # a /stats of some 600 KB
        c.send(req("HEAD", f"/{i:04d}" + "a" * 2000))
        c.response(head=True)
    c.send(req("GET", "/stats") * 50)  # one read, or a few
    statuses = []
    while len(statuses) < 50:
        try:
            status, headers, _ = c.response()
        except Failure:  # closed
            break
        statuses.append(status)
        if headers.get("connection") == "close":
            break
    check(len(statuses) < 50 and statuses[-1] == 503,
          f"responses to 50 pipelined /stats: {statuses}")
    check(all(st == 200 for st in statuses[:-1]), f"{statuses}")
    c.expect_closed()
    c.close()


def http_idle_timeout(srv):
    slow = srv.connect()
    slow.sendall(b"GET /hello HTTP/1.1\r\nHost: te")
    idle = srv.connect()
    busy = HttpConn(srv)
    start = time.monotonic()
    while time.monotonic() - start < 3.5:  # 3 times the timeout
        status, _, _ = busy.request("GET", "/hello")
        check_eq(status, 200, "a client that goes on asking")
        time.sleep(0.25)
    for s, what in ((slow, "a half-sent request"), (idle, "an idle client")):
        s.settimeout(0.5)
        try:
            expect_closed(s)
        except socket.timeout:
            raise Failure(f"{what} still open after 3.5 s (timeout 1 s)")
        s.close()
    busy.close()


def http_keepalive(srv):
    c = HttpConn(srv)
    for path in ["/", "/hello", "/hello?x=1", "/nope", "/hello"]:
        status, headers, body = c.request("GET", path)
        if path == "/nope":
            check_eq(status, 404, "GET /nope")
            continue
        check_eq(status, 200, f"GET {path}")
        check_eq(body, b"Hello, world!\n", f"GET {path} body")
        check_eq(headers["content-type"], "text/plain", "content type")
        check("connection" not in headers, "keep-alive is the default")
    status, headers, body = c.request("HEAD", "/hello")
    check_eq((status, headers["content-length"], body), (200, "14", b""),
             "HEAD /hello")
    c.close()


def http_pipelined(srv):
    c = HttpConn(srv)
    batch = (req("GET", "/hello") + req("GET", "/pipe/1") +
             req("PUT", "/cache/pipe", b"piped") + req("HEAD", "/hello") +
             req("GET", "/cache/pipe") + req("GET", "/hello"))
    c.send(batch)  # one write: the server reads several requests at once
    want = [(200, b"Hello, world!\n"), (404, b"Not Found\n"),
            (201, b"stored\n"), (200, b""), (200, b"piped"),
            (200, b"Hello, world!\n")]
    for i, (status, body) in enumerate(want):
        got = c.response(head=i == 3)
        check_eq((got[0], got[2]), (status, body), f"pipelined response {i}")
    # Requests split at every byte boundary still parse.
    data = req("GET", "/hello") * 3
    for b in data:
        c.send(bytes([b]))
    for _ in range(3):
        check_eq(c.response()[2], b"Hello, world!\n", "byte-by-byte request")
    c.close()


def http_errors(srv):
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x00\x01\x02 binary junk\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (b"BREW /pot HTTP/1.1\r\n\r\n", 501),
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n", 431),
        (b"PUT /cache/big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", 413),
    ]
    # A HEAD request's error has no body (RFC 9110, 9.3.2): after the head
    # nothing comes but the close.  "HEX" begins as HEAD does and is not.
    head_cases = [
        (b"HEAD / HTTP/1.1\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n", 431),
        (b"HEAD / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (b"HEAD /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"HEAD http://example.com HTTP/1.1\r\n\r\n", 400),
    ]
    cases += [(b"HEX / HTTP/1.1\r\n\r\n", 501)]
    for (data, status), head in ([(x, False) for x in cases] +
                                 [(x, True) for x in head_cases]):
        c = HttpConn(srv)
        c.send(data)
        got, headers, body = c.response(head=head)
        check_eq(got, status, f"status for {data[:40]!r}")
        check_eq(headers.get("connection"), "close", f"close on {status}")
        if not head:
            check(body, f"a body with {status} for {data[:40]!r}")
        c.expect_closed()
        c.close()
    # An error after good requests: the good ones are answered first.
    c = HttpConn(srv)
    c.send(req("GET", "/hello") + b"NOT HTTP AT ALL\r\n\r\n")
    check_eq(c.response()[0], 200, "request before the garbage")
    check_eq(c.response()[0], 400, "the garbage")
    c.expect_closed()
    c.close()
    # Methods we know but do not serve: 405, and the connection stays.
    c = HttpConn(srv)
    status, headers, _ = c.request("OPTIONS", "/hello")
    check_eq(status, 405, "OPTIONS")
    check("allow" in headers, "405 without Allow")
    check_eq(c.request("GET", "/hello")[0], 200, "GET after a 405")
    c.close()


def http_close(srv):
    c = HttpConn(srv)
    status, headers, body = c.request("GET", "/hello",
                                      headers=["Connection: close"])
    check_eq((status, body), (200, b"Hello, world!\n"), "Connection: close")
    check_eq(headers.get("connection"), "close", "Connection: close echoed")
    c.expect_closed()
    c.close()
    # Requests pipelined after the closing one are not answered.
    c = HttpConn(srv)
    c.send(req("GET", "/hello", headers=["Connection: close"]) +
           req("GET", "/hello"))
    check_eq(c.response()[0], 200, "closing request")
    c.expect_closed()
    c.close()
    # HTTP/1.0 closes by default, keeps alive if asked.
    c = HttpConn(srv)
    c.send(b"GET /hello HTTP/1.0\r\n\r\n")
    status, headers, _ = c.response()
    check_eq((status, headers.get("connection")), (200, "close"), "HTTP/1.0")
    c.expect_closed()
    c.close()
    c = HttpConn(srv)
    c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
    for _ in range(2):
        status, headers, _ = c.response()
        check_eq((status, headers.get("connection")), (200, "keep-alive"),
                 "HTTP/1.0 keep-alive")
    c.close()


def http_counters(srv):
    """Counters are transactional: exact after concurrent requests."""
    before = stats(srv)["paths"]
    conns, per_conn = 8, 60

    def client(i):
        c = HttpConn(srv)
        for k in range(0, per_conn, 6):  # batches of 6 pipelined requests
            c.send(b"".join(req("GET", "/count/a" if j % 2 else "/count/b")
                            for j in range(6)))
            for _ in range(6):
                check_eq(c.response()[0], 404, "counted path")
        for _ in range(10):
            check_eq(c.request("GET", "/hello")[0], 200, "hello")
        c.close()

    run_threads(client, conns)
    after = stats(srv)
    half = conns * per_conn // 2
    check_eq(after["paths"].get("/count/a"), half, "/count/a hits")
    check_eq(after["paths"].get("/count/b"), half, "/count/b hits")
    check_eq(after["paths"]["/hello"] - before["/hello"], conns * 10,
             "/hello hits")
    check_eq(after["requests"], sum(after["paths"].values()),
             "requests is the sum over paths")


def http_cache(srv):
    c = HttpConn(srv)
    status, _, v1 = c.request("GET", "/cache/alpha")
    check_eq(status, 200, "GET of a missing key computes it")
    check(re.fullmatch(rb"[0-9a-f]{16}\n", v1), f"computed value {v1!r}")
    check_eq(c.request("GET", "/cache/alpha")[2], v1, "cached value")
    check_eq(c.request("PUT", "/cache/alpha", b"one")[0], 200, "PUT replace")
    check_eq(c.request("GET", "/cache/alpha")[2], b"one", "GET after PUT")
    check_eq(c.request("POST", "/cache/beta", b"two")[0], 201, "POST new")
    check_eq(c.request("GET", "/cache/beta?q")[2], b"two", "GET beta")
    check_eq(c.request("DELETE", "/cache/beta")[0], 200, "DELETE")
    check_eq(c.request("DELETE", "/cache/beta")[0], 404, "DELETE again")
    c.close()
    # Many clients miss the same key at once: computed exactly once.
    before = stats(srv)["cache"]["computed"]
    values = []

    def client(i):
        c = HttpConn(srv)
        status, _, body = c.request("GET", "/cache/together")
        check_eq(status, 200, "concurrent GET")
        values.append(body)
        c.close()

    run_threads(client, 8)
    check_eq(len(set(values)), 1, "everyone saw the same value")
    check_eq(stats(srv)["cache"]["computed"] - before, 1,
             "computed once for 8 concurrent misses")


# ---------------------------------------------------------------------------
# chat

class ChatClient:
    def __init__(self, srv):
        self.s = srv.connect()
        self.f = self.s.makefile("rb")

    def line(self):
        raw = self.f.readline()
        check(raw.endswith(b"\n"), f"incomplete line {raw!r}")
        return raw[:-1].decode()

    def say(self, text):
        self.s.sendall(text.encode() + b"\n")

    def who(self):
        """Send /who and return (lines before its answer, the answer)."""
        self.say("/who")
        before = []
        while True:
            line = self.line()
            if re.match(r"\* \d+ here:", line):
                return before, line
            before.append(line)

    def close(self):
        self.f.close()
        self.s.close()


def test_chat(exe):
    for args in (("-p", "abc"), ("-p", "70000"), ("-w", "-1")):
        expect_usage_error(exe, *args)
    stop_at_once(exe, "-p", "0", "-w", "2")
    with Server(exe, "-p", "0", "-w", "2") as srv:
        a = ChatClient(srv)
        check(a.line().startswith("* welcome, guest1: 1 here"), "welcome a")
        b = ChatClient(srv)
        check(b.line().startswith("* welcome, guest2: 2 here"), "welcome b")
        c = ChatClient(srv)
        check(c.line().startswith("* welcome, guest3: 3 here"), "welcome c")
        check_eq(a.line(), "* guest2 joined", "a sees b join")
        check_eq(a.line(), "* guest3 joined", "a sees c join")
        check_eq(b.line(), "* guest3 joined", "b sees c join")

        a.say("hello from a")
        check_eq(b.line(), "<guest1> hello from a", "b gets a's line")
        check_eq(c.line(), "<guest1> hello from a", "c gets a's line")
        before, answer = a.who()  # nothing came back to the sender
        check_eq(before, [], "lines a got back")
        check_eq(answer, "* 3 here: guest3 guest2 guest1 (you)", "/who")

        b.say("/nick bob")
        check_eq(b.line(), "* you are now bob", "nick confirmed")
        check_eq(a.line(), "* guest2 is now known as bob", "a sees nick")
        check_eq(c.line(), "* guest2 is now known as bob", "c sees nick")
        c.say("/nick bob")
        check_eq(c.line(), "* bob is taken", "nick taken")
        c.say("/nick")
        check(c.line().startswith("* usage: /nick"), "nick usage")
        b.say("hi\r")  # CRLF lines too
        check_eq(a.line(), "<bob> hi", "a gets bob's line")
        check_eq(c.line(), "<bob> hi", "c gets bob's line")
        # Exactly once: nothing else is waiting for anyone.
        for cl, name in ((a, "a"), (b, "b"), (c, "c")):
            before, _ = cl.who()
            check_eq(before, [], f"extra lines for {name}")

        c.close()
        check_eq(a.line(), "* guest3 left", "a sees c leave")
        check_eq(b.line(), "* guest3 left", "b sees c leave")
        b.s.sendall(b"/quit\nsent after /quit\n")  # in one read
        check_eq(b.line(), "* bye", "quit")
        check_eq(b.f.readline(), b"", "closed after /quit")
        b.close()
        check_eq(a.line(), "* bob left", "a sees b leave")
        out, err = srv.stop()
        check("failed" not in err, f"callbacks failed:\n{err}")
        m = re.search(r"chat: (\d+) clients joined, (\d+) lines broadcast, "
                      r"(\d+) delivered, (\d+) dropped, (\d+) still listed",
                      out)
        check(m, f"no final totals in:\n{out}")
        # joins 1+2, a's line 2, nick 2, bob's line 2, leaves 2+1
        check_eq(tuple(map(int, m.groups())), (3, 2, 12, 0, 0),
                 "chat totals")
        a.close()

    # Many clients talking at once: each line reaches every other client
    # exactly once.
    with Server(exe, "-p", "0", "-w", "2") as srv:
        n, lines = 8, 25
        clients = []
        for i in range(n):
            cl = ChatClient(srv)
            check(cl.line().startswith(f"* welcome, guest{i + 1}:"),
                  "welcome")
            clients.append(cl)
        for i, cl in enumerate(clients):  # joins of those after it
            for k in range(i + 1, n):
                check_eq(cl.line(), f"* guest{k + 1} joined", "join notice")

        def talker(i):
            cl = clients[i]
            for k in range(lines):
                cl.say(f"line {k} from {i}")
            got = {}
            while sum(got.values()) < (n - 1) * lines:
                line = cl.line()
                got[line] = got.get(line, 0) + 1
            check(all(v == 1 for v in got.values()), f"duplicates at {i}")
            for j in range(n):
                for k in range(lines):
                    msg = f"<guest{j + 1}> line {k} from {j}"
                    check((msg in got) == (j != i), f"{i} got {msg}?")

        run_threads(talker, n)
        for cl in clients:
            cl.close()
        out, _ = srv.stop()
        check(f"{n * lines} lines broadcast" in out, f"totals:\n{out}")

    # A client that never reads must not make the server buffer every line
    # for it: the talkers go on, the server's memory stays bounded.
    with Server(exe, "-p", "0", "-w", "2") as srv:
        a = ChatClient(srv)
        check(a.line().startswith("* welcome"), "welcome a")
        lazy = socket.socket()
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.connect(("127.0.0.1", srv.port))
        check_eq(a.line(), "* guest2 joined", "a sees the lazy one join")
        rss0 = vm_rss_kib(srv.proc.pid)
        line = b"x" * 1000 + b"\n"
        for _ in range(256 * 1024 // 64):  # 256 MiB of lines
            a.s.sendall(line * 64)
        before, answer = a.who()  # the server still reads a
        check_eq(before, [], "lines a got back")
        grown = vm_rss_kib(srv.proc.pid) - rss0
        check(grown < 64 * 1024,
              f"server grew by {grown} KiB buffering for a client that "
              f"does not read")
        lazy.close()
        out, _ = srv.stop()
        m = re.search(r"(\d+) dropped", out)
        check(m and int(m.group(1)) > 0, f"no lines dropped:\n{out}")
        a.close()


# ---------------------------------------------------------------------------
# wordcount

def test_wordcount(exe):
    tops = set()
    for threads in ("1", "2", "4"):
        r = subprocess.run([exe, "-t", threads, "-g", "200000", "-c", "16",
                            "--check", "-n", "5"], capture_output=True,
                           text=True, timeout=TIMEOUT * 3)
        check_eq(r.returncode, 0, f"wordcount -t {threads}\n{r.stdout}"
                                  f"{r.stderr}")
        check("check: ok" in r.stdout, f"-t {threads}:\n{r.stdout}")
        check(re.search(rf"{threads} threads?:", r.stdout), "thread count")
        tops.add("\n".join(r.stdout.splitlines()[1:6]))
    check_eq(len(tops), 1, "the top words differ between thread counts")
    # A file with known counts.
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("The cat, the CAT's dog.\nthe dog; é\n")
        f.flush()
        r = subprocess.run([exe, "-t", "2", "--check", "-n", "10", f.name],
                           capture_output=True, text=True, timeout=TIMEOUT)
        check_eq(r.returncode, 0, f"wordcount FILE\n{r.stdout}{r.stderr}")
        lines = r.stdout.splitlines()
        check(lines[0].startswith("wordcount: 8 words, 5 distinct"),
              lines[0])
        counts = {l.split()[1]: int(l.split()[0]) for l in lines[1:6]}
        check_eq(counts, {"the": 3, "dog": 2, "cat": 1, "cat's": 1, "é": 1},
                 "counts of the file")
    # Sizes that overflow (CHUNK_KB * 1024, WORDS * 16) or are not
    # numbers are refused (exit status 2), not wrapped.
    for args in (["-c", str(1 << 54)], ["-c", "-1"], ["-c", "4x"],
                 ["-g", str(1 << 60)], ["-g", "-5"], ["-t", "two"],
                 ["-n", "-1"]):
        r = subprocess.run([exe, *args], capture_output=True, text=True,
                           timeout=TIMEOUT)
        check_eq(r.returncode, 2, f"wordcount {' '.join(args)}\n"
                                  f"{r.stdout[-500:]}{r.stderr[-2000:]}")


# ---------------------------------------------------------------------------
# fuzz target replay

def test_fuzz(exe, corpus):
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus))
    check(files, "empty corpus")
    r = subprocess.run([exe, *files, "--random", "3000"],
                       capture_output=True, text=True, timeout=TIMEOUT * 3)
    check_eq(r.returncode, 0, f"fuzz-http-replay\n{r.stdout}{r.stderr}")
    check(f"{len(files)} files and 3000 random inputs checked" in r.stdout,
          r.stdout)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    name, exe, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    tests = {"echo": test_echo, "http": test_http, "chat": test_chat,
             "wordcount": test_wordcount, "fuzz": test_fuzz}
    try:
        tests[name](exe, *rest)
    except Failure as e:
        print(f"FAIL {name}: {e}", file=sys.stderr)
        return 1
    print(f"ok {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
