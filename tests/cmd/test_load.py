#!/usr/bin/python3
"""tests/cmd/test_load.py — `ame load` end to end (suite 'load').

    test_load.py AME [CASE...]      (all cases when none is named)

AME is the built `ame` program.  The cases run it against a small HTTP/1.1
server of this file's own (asyncio, 127.0.0.1, a port picked by the
kernel) that counts every response it writes, by status, and checks that
what `ame load --json` reports agrees:

  hist     the histogram's own checks (ame load --selftest-hist)
  usage    bad command lines exit 2; --help exits 0
           (an unknown option inside a cluster, a host too long: the
           message names them)
           (and a --rate so low its interval overflows)
  refused  a port nobody listens on: exit 1 and one line on stderr
  counts   GET / for 2 s: every 10th response is a 404, every 3rd is
           chunked; the requests and status codes reported are the ones
           the server sent, no errors, percentiles in order
  delay    GET /slow (answered after 5 ms): latencies are all >= 5 ms
  close    GET /close (Connection: close): reconnects, nothing lost; and
           -H 'Connection: close': every request carries that one
           Connection header (not also the default keep-alive), so a
           server that honours it answers each on a new connection
  rate     --rate 200 for 2 s: about 400 requests, latency from due time;
           the same with a connection per request (the server closing, or
           -H 'Connection: close')
           and no slot due at or after the deadline is sent
           --json gives the settings exactly (-d, --timeout, --rate)
  ratedrop --rate 4000 on 16 connections, 2 threads, against /drop (the
           server answers keep-alive, then closes 2 ms later): no parse,
           timeout or write errors, every response the server sent
           counted, latencies in order and under 2 s
  timeout  GET /hang (never answered): timeouts counted, exit 1
           requests in flight at the deadline that stay unanswered
           through the final wait are abandoned, not timeouts
  tls      https:// against the same server behind TLS (a certificate made
           by `openssl req` for the test): counts, statuses, a POST body
           and HEAD agree, no errors; https:// to a server that does not
           speak TLS: exit 1 and one line saying the handshake failed;
           --rate with https:// is a usage error
           a body delimited by the close (close_notify) is a response
  method   -m POST -b DATA, -m PUT --body-file (every byte value), -m
           HEAD (responses with Content-Length and no body), -m DELETE:
           the server sees that method and exactly that body on every
           request, and the counts agree; bad -m / --body / -H values
           exit 2, an unreadable --body-file exits 1
  responses  odd responses: 103 and 100 before the final one (not
           counted), 204 and 304 with a Content-Length (no body), a
           body delimited by the close
  request  the request sent: -H Host replaces the default, a fragment
           (even with a ?) is not sent, -m POST -H 'Content-Length: 0'
           sends one Content-Length; -H Transfer-Encoding is refused
  nofile   -t 32 under a descriptor limit of -c + 64: the limit is
           raised for the workers' descriptors too

Standard library only; timings decide nothing but the generous bounds of
'rate' (at most the scheduled number of requests).
"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import ssl
import tempfile
import threading

DELAY_S = 0.005

# The odd responses, by path: (status, the response in the writes that
# send it, closes).  An interim response (103 Early Hints, on its own
# write; 100 Continue) before the final one, a 204 and a 304 whose
# Content-Length describes a body they do not carry (RFC 9110 8.6), and a
# body delimited by the close.
ODD = {
    '/early': (200, [b'HTTP/1.1 103 Early Hints\r\n'
                     b'Link: </s.css>; rel=preload\r\n\r\n',
                     b'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n'
                     b'hello\n'], False),
    '/continue': (200, [b'HTTP/1.1 100 Continue\r\n\r\n'
                        b'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n'
                        b'hello\n'], False),
    '/204': (204, [b'HTTP/1.1 204 No Content\r\nContent-Length: 6\r\n'
                   b'\r\n'], False),
    '/304': (304, [b'HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n'
                   b'\r\n'], False),
    '/eof': (200, [b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n'
                   b'hello\n'], True),
}


class CountingServer:
    """An HTTP/1.1 keep-alive server on a thread of its own.  `served`
    counts the responses written, `status` the same by code."""

    def __init__(self, ssl_context=None):
        self.ssl = ssl_context
        self.served = 0
        self.drop_s = 0.0  # /drop: how long before it closes
        self.status = {}
        self.methods = {}  # method: requests
        self.bodies = {}   # body bytes: requests
        self.connections = 0
        self.connection_headers = {}  # the request's Connection values
        self.host_headers = {}  # the request's Host values
        self.length_headers = {}  # its Content-Length and T-E headers
        self.targets = {}  # the request-target
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, '127.0.0.1', 0,
                                 ssl=self.ssl))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def close(self):
        def stop():
            self.server.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)

    def _response(self, path, method='GET', close=False):
        """The next response for path, counted, and whether to close
        (/close, or close: the request asked).  A response to HEAD has
        the headers a GET's would have, no body."""
        n = self.served
        self.served += 1
        code = 404 if n % 10 == 9 else 200
        self.status[code] = self.status.get(code, 0) + 1
        reason = b'OK' if code == 200 else b'Not Found'
        body = b'hello\n' if code == 200 else b'not found\n'
        head = b'HTTP/1.1 %d %s\r\n' % (code, reason)
        close = close or path == '/close'
        if close:
            head += b'Connection: close\r\n'
        if method == 'HEAD':
            return head + b'Content-Length: %d\r\n\r\n' % len(body), close
        if n % 3 == 1:
            half = len(body) // 2
            chunks = b'%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n' % (
                half, body[:half], len(body) - half, body[half:])
            return head + b'Transfer-Encoding: chunked\r\n\r\n' + chunks, close
        return head + b'Content-Length: %d\r\n\r\n' % len(body) + body, close

    async def _client(self, reader, writer):
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b'\r\n\r\n')
                except (asyncio.IncompleteReadError, ConnectionError,
                        ssl.SSLError):
                    break
                method, path = head.split(b' ', 2)[:2]
                method, path = method.decode(), path.decode()
                length = 0
                conn, hosts, lengths = [], [], []
                for line in head.split(b'\r\n')[1:]:
                    name, _, value = line.partition(b':')
                    name = name.strip().lower()
                    value = value.strip().decode()
                    if name == b'content-length':
                        length = int(value)
                    if name == b'connection':
                        conn.append(value)
                    if name == b'host':
                        hosts.append(value)
                    if name in (b'content-length', b'transfer-encoding'):
                        lengths.append((name.decode(), value))
                for seen, key in ((self.connection_headers, tuple(conn)),
                                  (self.host_headers, tuple(hosts)),
                                  (self.length_headers, tuple(lengths)),
                                  (self.targets, path)):
                    seen[key] = seen.get(key, 0) + 1
                body = await reader.readexactly(length) if length else b''
                self.methods[method] = self.methods.get(method, 0) + 1
                self.bodies[body] = self.bodies.get(body, 0) + 1
                if path == '/hang':
                    await reader.read()  # until the client gives up
                    break
                if path == '/slow':
                    await asyncio.sleep(DELAY_S)
                if path == '/drop':
                    # Answer (keep-alive), then close about when a --rate
                    # run's next request on this connection is due.
                    data, _ = self._response(path, method)
                    writer.write(data)
                    await writer.drain()
                    await asyncio.sleep(self.drop_s)
                    break
                if path in ODD:
                    code, parts, close = ODD[path]
                    self.served += 1
                    self.status[code] = self.status.get(code, 0) + 1
                    for part in parts:
                        writer.write(part)
                        await writer.drain()
                    if close:
                        break
                    continue
                data, close = self._response(path, method,
                                             conn == ['close'])
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()


def run_ame(ame, args, timeout=60, preexec_fn=None):
    p = subprocess.run([ame] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, text=True,
                       preexec_fn=preexec_fn)
    return p.returncode, p.stdout, p.stderr


failures = []


def check(cond, what):
    print(('ok    ' if cond else 'FAIL  ') + what)
    if not cond:
        failures.append(what)


def load_json(ame, url, args, preexec_fn=None):
    rc, out, err = run_ame(ame, ['load', url, '--json', '--no-progress'] +
                           args, preexec_fn=preexec_fn)
    if err:
        print('stderr: ' + err.strip())
    print('stdout: ' + out.strip())
    try:
        return rc, json.loads(out)
    except ValueError:
        return rc, None


def check_percentiles(lat):
    order = [lat['min'], lat['p50'], lat['p90'], lat['p99'], lat['p99.9'],
             lat['max']]
    check(all(a <= b for a, b in zip(order, order[1:])),
          'min <= p50 <= p90 <= p99 <= p99.9 <= max: %s' % order)


def check_counts(srv, res, conns):
    """The requests and codes reported against what srv sent.  Every
    response the server wrote is read before the run ends, so they should
    be equal; a response still in flight when the drain gives up (at most
    one per connection) is the only difference allowed."""
    reported = res['requests']
    diff = srv.served - reported
    check(0 <= diff <= conns,
          'requests reported %d, server answered %d (in flight at most %d)'
          % (reported, srv.served, conns))
    got = {int(k): v for k, v in res['status'].items()}
    if diff == 0:
        check(got == srv.status, 'status counts %s == server %s'
              % (got, srv.status))
    else:
        check(set(got) <= set(srv.status) and
              all(0 <= srv.status[k] - got.get(k, 0) <= diff
                  for k in srv.status),
              'status counts %s within %d of server %s'
              % (got, diff, srv.status))
    check(res['latency_us']['count'] == reported,
          'one latency per request (%d)' % res['latency_us']['count'])


def case_hist(ame):
    rc, out, err = run_ame(ame, ['load', '--selftest-hist'])
    sys.stdout.write(out + err)
    check(rc == 0 and 'ok' in out, 'histogram self-test')


def case_usage(ame):
    bad = [
        [],
        ['bogus'],
        ['load'],
        ['load', '-c', '0', 'http://127.0.0.1:1/'],
        ['load', '-c', 'x', 'http://127.0.0.1:1/'],
        ['load', '-d', 'xyz', 'http://127.0.0.1:1/'],
        ['load', '-d', '0s', 'http://127.0.0.1:1/'],
        ['load', '-t', '0', 'http://127.0.0.1:1/'],
        ['load', '--rate', '-5', 'http://127.0.0.1:1/'],
        ['load', '--timeout', 'never', 'http://127.0.0.1:1/'],
        ['load', '--bogus', 'http://127.0.0.1:1/'],
        ['load', '-c'],
        ['load', 'https://127.0.0.1:99999/'],
        ['load', 'ftp://127.0.0.1/'],
        ['load', 'http://127.0.0.1:99999/'],
        ['load', 'http://::1/'],
        ['load', 'http://127.0.0.1:1/', 'http://127.0.0.1:2/'],
    ]
    for args in bad:
        rc, out, err = run_ame(ame, args)
        check(rc == 2 and err.strip() and not out,
              'ame %s: exit %d (2), says %r' % (' '.join(args), rc,
                                                err.strip().split('\n')[0]))
    # Usage errors whose message matters: what it must say.
    said = [
        (['load', '-Xh', 'http://127.0.0.1:1/'], "unknown option '-X'"),
        (['load', 'http://%s/' % ('a' * 280)], "the URL's host is too long"),
        (['load', '--rate', '1e-9', 'http://127.0.0.1:1/'], '--rate'),
    ]
    for args, what in said:
        rc, out, err = run_ame(ame, args)
        check(rc == 2 and what in err and not out,
              'ame %s: exit %d (2), says %r (%r)'
              % (' '.join(a if len(a) < 40 else a[:20] + '...'
                          for a in args), rc,
                 err.strip().split('\n')[0][:100], what))
    rc, out, err = run_ame(ame, ['--help'])
    check(rc == 0 and all(c in out for c in ('load', 'run', 'twistd')),
          'ame --help lists load, run, twistd')
    rc, out, err = run_ame(ame, ['help'])
    check(rc == 0 and 'load' in out, 'ame help')
    rc, out, err = run_ame(ame, ['load', '--help'])
    check(rc == 0 and '--rate' in out and '--json' in out, 'ame load --help')


def case_refused(ame):
    # Bound and not listening: connections are refused, and while it is
    # held no test beside this one gets the port.
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    try:
        rc, out, err = run_ame(ame, ['load', 'http://127.0.0.1:%d/' % port,
                                     '-d', '2s', '--json'])
    finally:
        s.close()
    lines = err.strip().split('\n')
    check(rc == 1, 'refused port: exit %d (1)' % rc)
    check(len(lines) == 1 and 'connect' in lines[0] and not out,
          'refused port: one line on stderr: %r' % err)


def case_counts(ame):
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/' % srv.port,
                            ['-c', '8', '-d', '2s', '-t', '2'])
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'exit %d (0), JSON parsed' % rc)
    if res is None:
        return
    check(res['requests'] > 100, '%d requests (> 100)' % res['requests'])
    check_counts(srv, res, 8)
    check(res['errors']['total'] == 0, 'no errors: %s' % res['errors'])
    check(res['abandoned'] == 0, 'nothing abandoned')
    check_percentiles(res['latency_us'])
    check(res['requests_per_s'] > 0 and res['elapsed_s'] >= 2.0,
          'elapsed %.3f s >= 2 s' % res['elapsed_s'])


def case_delay(ame):
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/slow' % srv.port,
                            ['-c', '4', '-d', '1500ms', '-t', '2'])
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'exit %d (0), JSON parsed' % rc)
    if res is None:
        return
    lat = res['latency_us']
    delay_us = DELAY_S * 1e6
    check(lat['min'] >= delay_us and lat['p50'] >= delay_us,
          'min %.1f us and p50 %.1f us >= the server delay %.0f us'
          % (lat['min'], lat['p50'], delay_us))
    check_percentiles(lat)
    check_counts(srv, res, 4)
    # 4 connections, one request each per >= 5 ms: at most 800 per second.
    check(res['requests'] <= 4 * 1.5 / DELAY_S + 4,
          '%d requests is possible with a %.0f ms delay'
          % (res['requests'], DELAY_S * 1e3))
    check(res['errors']['total'] == 0, 'no errors: %s' % res['errors'])


def close_run(ame, path, args):
    """ame load -c 4 -d 1s on a CountingServer's path (plus args): every
    response counted, no errors, a connection per request.  Return the
    server."""
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d%s' % (srv.port, path),
                            ['-c', '4', '-d', '1s'] + args)
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'exit %d (0), JSON parsed' % rc)
    if res is None:
        return srv
    check_counts(srv, res, 4)
    check(res['errors']['total'] == 0, 'no errors: %s' % res['errors'])
    check(srv.connections >= res['requests'],
          'one connection per request (%d connections, %d requests)'
          % (srv.connections, res['requests']))
    return srv


def case_close(ame):
    close_run(ame, '/close', [])
    srv = close_run(ame, '/', ['-H', 'Connection: close'])
    check(list(srv.connection_headers) == [('close',)],
          "-H 'Connection: close' replaces the default: %s"
          % srv.connection_headers)


def rate_run(ame, path, args, what):
    """--rate 200 for 2 s on a CountingServer's path (plus args)."""
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d%s' % (srv.port, path),
                            ['-c', '4', '-d', '2s', '--rate', '200'] + args)
    finally:
        srv.close()
    check(rc == 0 and res is not None, '%s: exit %d (0), JSON parsed'
          % (what, rc))
    if res is None:
        return
    check(res['rate'] == 200 and res['latency_us']['from'] == 'due',
          '%s: rate 200, latency from the due time' % what)
    # 200/s for 2 s is 400 slots before the deadline.  The upper bound is
    # firm; the lower one only catches a broken schedule.
    check(200 <= res['requests'] <= 400,
          '%s: %d requests for 400 scheduled' % (what, res['requests']))
    check_counts(srv, res, 4)
    check_percentiles(res['latency_us'])
    check(res['errors']['total'] == 0, '%s: no errors: %s'
          % (what, res['errors']))


def case_rate(ame):
    rate_run(ame, '/', [], 'keep-alive')
    # A connection per request: each response closes its connection, and
    # the slot's next request is due one interval later all the same.
    rate_run(ame, '/close', [], 'server closes')
    rate_run(ame, '/', ['-H', 'Connection: close'], 'Connection: close')

    # No slot due at or after the deadline goes out, even before the
    # housekeeper has seen the deadline: 200/s on one connection for
    # 1002 ms is the 201 slots at 0, 5, ..., 1000 ms (the next, at 1005,
    # is after the deadline and before the housekeeper's tick at 1010).
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/' % srv.port,
                            ['-c', '1', '-d', '1002ms', '--rate', '200'])
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'deadline: exit %d (0)' % rc)
    check(srv.served <= 201, 'deadline: the server got %d requests for '
          '201 slots before the deadline' % srv.served)

    # The JSON gives the settings exactly (they round-trip).
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/' % srv.port,
                            ['-c', '1', '-d', '300123us', '--timeout',
                             '1000456us', '--rate', '100.123456789'])
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'settings: exit %d (0)' % rc)
    if res is None:
        return
    got = (res['duration_s'], res['timeout_s'], res['rate'])
    check(got == (0.300123, 1.000456, 100.123456789),
          'settings: duration_s, timeout_s, rate %s' % (got,))


def case_ratedrop(ame):
    # --rate while the server closes every keep-alive connection about
    # when its next request is due: the rate timer (any worker) and
    # on_close (the stream's) race, many times.  A timer's attempt that
    # aborted used to leave its in-flight time seen by on_close, or take
    # back a later stream's, which then read its response as one to no
    # request (a parse error); what can be checked is that no response
    # is refused, none is lost, and no latency is absurd.
    srv = CountingServer()
    srv.drop_s = 0.002
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/drop' % srv.port,
                            ['-c', '16', '-t', '2', '-d', '3s', '--rate',
                             '4000'])
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'drop: exit %d (0), JSON parsed'
          % rc)
    if res is None:
        return
    e = res['errors']
    check(e['parse'] == 0 and e['timeout'] == 0 and e['write'] == 0,
          'drop: no parse, timeout or write errors: %s' % e)
    check(0 < res['requests'] <= 12000 and res['requests'] == srv.served,
          'drop: %d requests (12000 scheduled), the server sent %d'
          % (res['requests'], srv.served))
    check_percentiles(res['latency_us'])
    check(res['latency_us']['max'] < 2e6, 'drop: max latency %s us'
          % res['latency_us']['max'])


def case_timeout(ame):
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/hang' % srv.port,
                            ['-c', '2', '-d', '1s', '--timeout', '300ms'])
    finally:
        srv.close()
    check(rc == 1, 'no response: exit %d (1)' % rc)
    if res is None:
        check(False, 'JSON printed')
        return
    check(res['requests'] == 0 and srv.served == 0, 'no response')
    check(res['errors']['timeout'] >= 2,
          '%d timeouts (>= 2)' % res['errors']['timeout'])
    check(res['errors']['read'] == 0 and res['errors']['connect'] == 0,
          'no other errors: %s' % res['errors'])

    # Requests in flight at the deadline (300 ms, well before their
    # --timeout) that are still unanswered when the final wait ends are
    # abandoned, not timeouts.
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/hang' % srv.port,
                            ['-c', '2', '-d', '300ms', '--timeout', '1s'])
    finally:
        srv.close()
    check(rc == 1 and res is not None, 'deadline: exit %d (1), JSON' % rc)
    if res is None:
        return
    check(res['abandoned'] == 2 and res['errors']['total'] == 0,
          'deadline: 2 abandoned (%d), no errors: %s'
          % (res['abandoned'], res['errors']))


def check_method_run(ame, srv, scheme, args, method, body, what):
    """`ame load` with args (4 connections, 2 threads, 1 s) against srv
    (closed here): the server saw only method, with exactly body on every
    request; the JSON says so; the counts agree; no errors."""
    try:
        rc, res = load_json(ame, '%s://127.0.0.1:%d/' % (scheme, srv.port),
                            ['-c', '4', '-d', '1s', '-t', '2'] + args)
    finally:
        srv.close()
    check(rc == 0 and res is not None,
          '%s: exit %d (0), JSON parsed' % (what, rc))
    if res is None:
        return
    check(res['requests'] > 50, '%s: %d requests (> 50)'
          % (what, res['requests']))
    check(list(srv.methods) == [method],
          '%s: the server saw %s' % (what, srv.methods))
    check(list(srv.bodies) == [body],
          '%s: every body was the %d bytes given (%s)'
          % (what, len(body),
             sorted((len(b), n) for b, n in srv.bodies.items())))
    check(res['method'] == method and res['body_bytes'] == len(body),
          '%s: JSON says %s, %d body bytes'
          % (what, res['method'], res['body_bytes']))
    check_counts(srv, res, 4)
    check(res['errors']['total'] == 0, '%s: no errors: %s'
          % (what, res['errors']))
    check_percentiles(res['latency_us'])


def case_method(ame):
    blob = bytes(range(256)) * 40  # every byte value, NUL and CR LF too
    with tempfile.NamedTemporaryFile(suffix='.bin') as f:
        f.write(blob)
        f.flush()
        runs = [
            (['-m', 'POST', '-b', 'a=1&b=two', '-H',
              'Content-Type: application/x-www-form-urlencoded'],
             'POST', b'a=1&b=two'),
            (['-m', 'PUT', '--body-file', f.name], 'PUT', blob),
            (['-m', 'HEAD'], 'HEAD', b''),
            (['-m', 'DELETE'], 'DELETE', b''),
            (['-m', 'POST'], 'POST', b''),
        ]
        for args, method, body in runs:
            what = ' '.join(a if len(a) < 30 else a[:8] + '...'
                            for a in args)
            check_method_run(ame, CountingServer(), 'http', args, method,
                             body, what)

    url = 'http://127.0.0.1:1/'
    for args in (['-m', 'BAD METHOD'], ['-m', ''], ['-m', 'GET\r\nX: y'],
                 ['-b', 'x', '--body-file', '/dev/null'],
                 ['-b', 'x', '-b', 'y'],
                 ['-b', 'x', '-H', 'Content-Length: 1'],
                 ['-b', 'x', '-H', 'transfer-encoding: chunked'],
                 ['-m', 'POST', '-H', 'Transfer-Encoding: chunked']):
        rc, out, err = run_ame(ame, ['load', url] + args)
        check(rc == 2 and err.strip() and not out,
              'ame load %s: exit %d (2), says %r'
              % (' '.join(args), rc, err.strip().split('\n')[0]))
    rc, out, err = run_ame(ame, ['load', url, '--body-file',
                                 '/nonexistent/body'])
    check(rc == 1 and 'No such file' in err and not out,
          '--body-file /nonexistent/body: exit %d (1), says %r'
          % (rc, err.strip()))
    rc, out, err = run_ame(ame, ['load', '--help'])
    check(all(o in out for o in ('--method', '--body', '--body-file')),
          'ame load --help lists --method, --body, --body-file')


def odd_run(ame, srv, scheme, path):
    """`ame load -c 2 -d 500ms` on srv's path (srv closed here): every
    response the server wrote counted, with its status; no errors."""
    what = '%s %s' % (scheme, path)
    try:
        rc, res = load_json(ame, '%s://127.0.0.1:%d%s'
                            % (scheme, srv.port, path),
                            ['-c', '2', '-d', '500ms', '--timeout', '1s'])
    finally:
        srv.close()
    check(rc == 0 and res is not None,
          '%s: exit %d (0), JSON parsed' % (what, rc))
    if res is None:
        return
    check(res['requests'] > 10, '%s: %d requests (> 10)'
          % (what, res['requests']))
    check_counts(srv, res, 2)
    check(res['errors']['total'] == 0 and res['abandoned'] == 0,
          '%s: no errors: %s, %d abandoned'
          % (what, res['errors'], res['abandoned']))


def case_responses(ame):
    for path in ('/early', '/continue', '/204', '/304', '/eof'):
        odd_run(ame, CountingServer(), 'http', path)


def request_run(ame, url, args, what):
    """`ame load -c 2 -d 300ms` on a CountingServer's url (a format for
    the port; plus args): exit 0, no errors.  Return the server."""
    srv = CountingServer()
    try:
        rc, res = load_json(ame, url % srv.port,
                            ['-c', '2', '-d', '300ms'] + args)
    finally:
        srv.close()
    check(rc == 0 and res is not None and res['errors']['total'] == 0,
          '%s: exit %d (0), no errors' % (what, rc))
    return srv


def case_request(ame):
    srv = request_run(ame, 'http://127.0.0.1:%d#frag?x=1', [], 'fragment')
    check(list(srv.targets) == ['/'],
          'a fragment (with a ?) is not sent: %s' % srv.targets)
    check(list(srv.host_headers) == [('127.0.0.1:%d' % srv.port,)],
          'one Host header, the URL\'s: %s' % srv.host_headers)
    srv = request_run(ame, 'http://127.0.0.1:%d/',
                      ['-H', 'Host: example.test'], 'Host')
    check(list(srv.host_headers) == [('example.test',)],
          "-H 'Host: example.test' replaces the default: %s"
          % srv.host_headers)
    srv = request_run(ame, 'http://127.0.0.1:%d/',
                      ['-m', 'POST', '-H', 'Content-Length: 0'],
                      'POST Content-Length')
    check(list(srv.length_headers) == [(('content-length', '0'),)],
          "-m POST -H 'Content-Length: 0': one Content-Length: %s"
          % srv.length_headers)


def case_nofile(ame):
    """32 workers under a descriptor limit of -c + 64: ame load raises it
    for the workers' own descriptors too."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        print('skip: the hard descriptor limit is %d' % hard)
        return

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (32 + 64, hard))
    srv = CountingServer()
    try:
        rc, res = load_json(ame, 'http://127.0.0.1:%d/' % srv.port,
                            ['-c', '32', '-t', '32', '-d', '500ms'],
                            preexec_fn=low)
    finally:
        srv.close()
    check(rc == 0 and res is not None, 'exit %d (0), JSON parsed' % rc)
    if res is None:
        return
    check(res['threads'] == 32 and res['errors']['total'] == 0,
          '%d threads (32), no errors: %s' % (res['threads'], res['errors']))


def make_cert(d):
    """A self-signed certificate and key for 127.0.0.1 in directory d (by
    the openssl command); return an SSL server context."""
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048',
                    '-nodes', '-days', '1', '-subj', '/CN=localhost',
                    '-keyout', key, '-out', cert],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def case_tls(ame):
    with tempfile.TemporaryDirectory() as d:
        ctx = make_cert(d)
        for args, method, body in (([], 'GET', b''),
                                   (['-m', 'POST', '-b', 'k=v'], 'POST',
                                    b'k=v'),
                                   (['-m', 'HEAD'], 'HEAD', b'')):
            check_method_run(ame, CountingServer(ctx), 'https', args, method,
                             body, 'https %s' % method)
        # A body delimited by the close, which over TLS is close_notify.
        odd_run(ame, CountingServer(ctx), 'https', '/eof')

    # A plain HTTP server behind an https:// URL: every handshake fails.
    srv = CountingServer()
    try:
        rc, out, err = run_ame(ame, ['load', 'https://127.0.0.1:%d/'
                                     % srv.port, '-c', '4', '-d', '5s'])
    finally:
        srv.close()
    lines = err.strip().split('\n')
    check(rc == 1 and len(lines) == 1 and 'TLS handshake' in lines[0]
          and not out, 'https to a plain server: exit %d (1), one line: %r'
          % (rc, err.strip()))
    rc, out, err = run_ame(ame, ['load', 'https://127.0.0.1:1/', '--rate',
                                 '10'])
    check(rc == 2 and 'https' in err, '--rate with https: exit %d (2), %r'
          % (rc, err.strip().split('\n')[0]))


CASES = {
    'hist': case_hist,
    'usage': case_usage,
    'refused': case_refused,
    'counts': case_counts,
    'delay': case_delay,
    'close': case_close,
    'rate': case_rate,
    'ratedrop': case_ratedrop,
    'timeout': case_timeout,
    'method': case_method,
    'tls': case_tls,
    'responses': case_responses,
    'request': case_request,
    'nofile': case_nofile,
}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ame = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    for name in names:
        print('== %s' % name)
        CASES[name](ame)
    if failures:
        print('%d check(s) failed:' % len(failures))
        for f in failures:
            print('  ' + f)
        sys.exit(1)
    print('all checks passed')


if __name__ == '__main__':
    main()
