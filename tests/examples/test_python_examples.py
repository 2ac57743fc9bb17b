#!/usr/bin/python3
"""Tests of the Twisted examples (raw_http.py, web.py) on AMEReactor and
EPollReactor: each program is started on a free port, driven over sockets
and stopped with SIGTERM.  raw_http.py: keep-alive, pipelined requests,
heads split anywhere over several writes (byte by byte across the end), and
an oversized head refused with 431; web.py: two GETs on one connection,
over TLS too (--tls, with a key and self-signed certificate that openssl
makes; skipped without openssl), and the program run the way `ame run`
runs it (a reactor installed before it starts, which it must keep).  Run
with PYTHONPATH=BUILDDIR/bindings:bindings (meson test --suite examples)."""

import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "examples", "python")
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 14\r\n\r\nHello, world!\n")
REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
FAILED = []


def check(cond, what):
    print("%s  %s" % ("ok  " if cond else "FAIL", what), flush=True)
    if not cond:
        FAILED.append(what)


class Program:
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self.p.stdout], [], [], 30)
        line = self.p.stdout.readline().decode() if ready else ""
        m = re.search(r"listening on (https?)://[\d.]+:(\d+)/ \((\w+)\)",
                      line)
        if not m:
            self.stop()
            raise AssertionError("no startup line from %s: %r" % (argv, line))
        self.scheme, self.port, self.reactor = (m.group(1), int(m.group(2)),
                                                m.group(3))

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


def recv_exactly(s, n, timeout=5):
    s.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        c = s.recv(65536)
        if not c:
            break
        buf += c
    return buf


def test_raw(reactor):
    prog = Program([sys.executable, os.path.join(EXAMPLES, "raw_http.py"),
                    "--port", "0", "--reactor", reactor])
    name = "raw_http.py --reactor %s" % reactor
    try:
        check(prog.reactor == {"ame": "AMEReactor",
                               "epoll": "EPollReactor"}[reactor],
              "%s: runs on %s" % (name, prog.reactor))
        s = socket.create_connection(("127.0.0.1", prog.port), 5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(REQ)
        check(recv_exactly(s, len(RESPONSE)) == RESPONSE,
              "%s: one request, one response" % name)
        s.sendall(REQ * 5)
        check(recv_exactly(s, 5 * len(RESPONSE)) == RESPONSE * 5,
              "%s: 5 pipelined requests, 5 responses" % name)
        for cut in (1, len(REQ) - 3, len(REQ) - 1):
            s.sendall(REQ[:cut])
            time.sleep(0.05)
            s.sendall(REQ[cut:])
        check(recv_exactly(s, 3 * len(RESPONSE)) == RESPONSE * 3,
              "%s: heads split across the \\r\\n\\r\\n" % name)
        for b in REQ * 2:
            s.send(bytes([b]))
        check(recv_exactly(s, 2 * len(RESPONSE)) == RESPONSE * 2,
              "%s: heads sent byte by byte" % name)
        s.sendall(REQ + REQ[:10])
        first = recv_exactly(s, len(RESPONSE))
        s.settimeout(0.3)
        try:
            extra = s.recv(100)
        except socket.timeout:
            extra = b""
        check(first == RESPONSE and extra == b"",
              "%s: no answer to an incomplete head" % name)
        s.close()
        s = socket.create_connection(("127.0.0.1", prog.port), 5)
        s.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)
        got = recv_exactly(s, 1 << 20)
        check(got.startswith(b"HTTP/1.1 431 "),
              "%s: an oversized head is refused (431, closed)" % name)
        s.close()
    finally:
        prog.stop()


def http_get_twice(port, tls=False):
    """Two GETs on one connection (tls: over TLS, the certificate not
    verified); [(status line, body)] of the responses read."""
    s = socket.create_connection(("127.0.0.1", port), 5)
    out = []
    buf = b""
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.settimeout(5)
            s = ctx.wrap_socket(s)
        for _ in range(2):
            s.sendall(REQ)
            s.settimeout(5)
            while b"\r\n\r\n" not in buf:
                c = s.recv(4096)
                if not c:
                    return out
                buf += c
            head, buf = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            n = int(m.group(1)) if m else 0
            buf += recv_exactly(s, n - len(buf)) if len(buf) < n else b""
            out.append((head.split(b"\r\n")[0], buf[:n]))
            buf = buf[n:]
    finally:
        s.close()
    return out


def test_web(argv, want_reactor, name, scheme="http"):
    prog = Program(argv)
    try:
        check(prog.reactor == want_reactor,
              "%s: runs on %s" % (name, prog.reactor))
        check(prog.scheme == scheme,
              "%s: listens on %s://" % (name, prog.scheme))
        got = http_get_twice(prog.port, scheme == "https")
        check(got == [(b"HTTP/1.1 200 OK", b"Hello, world!")] * 2,
              "%s: two GETs on one connection: %r" % (name, got))
    finally:
        prog.stop()


# How `ame run` starts a program: the ame reactor installed first, then the
# program run as __main__ with its own arguments.
PRE_INSTALLED = """
import runpy, sys
import ame.reactor
ame.reactor.install()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_pem(tmpdir):
    """A private key and a self-signed certificate for CN=localhost, in one
    PEM file in tmpdir (web.py --tls's); None without openssl."""
    if shutil.which("openssl") is None:
        return None
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", "k.pem", "-out", "c.pem"], cwd=tmpdir,
                   check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    pem = os.path.join(tmpdir, "key-cert.pem")
    with open(pem, "wb") as out:
        for name in ("k.pem", "c.pem"):
            with open(os.path.join(tmpdir, name), "rb") as f:
                out.write(f.read())
    return pem


def main():
    web = os.path.join(EXAMPLES, "web.py")
    tmpdir = tempfile.mkdtemp(prefix="ame-test-examples-")
    try:
        pem = make_pem(tmpdir)
        for reactor in ("ame", "epoll"):
            test_raw(reactor)
            name = {"ame": "AMEReactor", "epoll": "EPollReactor"}[reactor]
            test_web([sys.executable, web, "--port", "0", "--reactor",
                      reactor], name, "web.py --reactor %s" % reactor)
            if pem is None:
                print("SKIP  web.py --tls --reactor %s: openssl not found"
                      % reactor)
                continue
            test_web([sys.executable, web, "--port", "0", "--reactor",
                      reactor, "--tls", pem], name,
                     "web.py --tls --reactor %s" % reactor, "https")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    test_web([sys.executable, web, "--port", "0"], "EPollReactor",
             "web.py (default reactor)")
    test_web([sys.executable, "-c", PRE_INSTALLED, web, "--port", "0",
              "--reactor", "epoll"], "AMEReactor",
             "web.py with the ame reactor installed before it starts")
    print("%d failed" % len(FAILED) if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
