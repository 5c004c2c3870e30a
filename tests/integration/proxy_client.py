#!/usr/bin/env python3
"""Clients for the proxy integration tests that curl cannot play.

  raw   --proxy H:P [--data BYTES]... [--data-file F] [--gap S] [--timeout S] [--shut]
        Sends the bytes (Python escapes allowed in --data, e.g. "\\r\\n"),
        each --data S seconds after the previous with --gap, optionally
        half-closes, and prints everything the proxy answers
        (read while sending) until it closes or the timeout. stderr gets
        "END eof|reset|timeout after SECONDS".
  tls   --proxy H:P --connect H:P --ca FILE [--sni NAME] [--data BYTES]...
        CONNECT, TLS (verifying with FILE), then sends each --data in turn
        on the one TLS connection and prints the decrypted answer until
        close or timeout. stderr gets "END ...".
  hold  --proxy H:P --hold N --data BYTES
        Opens N idle connections, then one more that sends BYTES; prints
        what that last one gets, then closes all.
  many  --proxy H:P --connect H:P --ca FILE --n N --path PATH
        N concurrent hijacked connections multiplexed in one process: each
        does CONNECT, the TLS handshake and one keep-alive GET PATH, reads
        the whole response and stays open. Prints "ready OK FAILED" once
        every connection has finished, then waits until --release FILE
        exists (or a line on stdin) before closing them all.
"""
import argparse
import os
import resource
import selectors
import socket
import ssl
import sys
import threading
import time


def unescape(s):
    return s.encode("latin-1").decode("unicode_escape").encode("latin-1")


def hostport(s):
    h, _, p = s.rpartition(":")
    return h.strip("[]"), int(p)


def read_all(sock, timeout, out):
    """Reads until EOF, reset or timeout; returns which."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        except ssl.SSLError as e:
            out.write(b"")
            return "tls-error:" + str(e)
        except OSError as e:
            return "error:" + str(e)
        if not b:
            return "eof"
        out.write(b)
        out.flush()


def cmd_raw(a):
    s = socket.create_connection(hostport(a.proxy), timeout=a.timeout)
    parts = []
    if a.data_file:
        with open(a.data_file, "rb") as f:
            parts.append(f.read())
    parts += [unescape(d) for d in a.data or []]
    if not a.gap:
        parts = [b"".join(parts)]
    # Read while sending, so an answer the proxy gives before the client
    # is done (a 408 to a trickled head) is seen, with its time.
    t0 = time.monotonic()
    result = {}

    def reader():
        result["how"] = read_all(s, a.timeout + a.gap * len(parts), sys.stdout.buffer)
        result["at"] = time.monotonic() - t0

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i, d in enumerate(parts):
            if i and a.gap:
                time.sleep(a.gap)
            if not th.is_alive():
                break
            s.sendall(d)
        if a.shut:
            s.shutdown(socket.SHUT_WR)
    except OSError as e:
        print("send-error:%s" % e, file=sys.stderr)
    th.join()
    print("END %s after %.1fs" % (result["how"], result["at"]), file=sys.stderr)
    s.close()


def connect_tunnel(a):
    s = socket.create_connection(hostport(a.proxy), timeout=a.timeout)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a.connect.encode(), a.connect.encode()))
    resp = b""
    while b"\r\n\r\n" not in resp:
        b = s.recv(1)
        if not b:
            raise SystemExit("proxy closed during CONNECT: %r" % resp)
        resp += b
    if not resp.startswith(b"HTTP/1.1 200"):
        sys.stdout.buffer.write(resp)
        raise SystemExit("CONNECT refused: %r" % resp.split(b"\r\n")[0])
    return s


def cmd_tls(a):
    s = connect_tunnel(a)
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if a.tls12 else ssl.TLSVersion.MAXIMUM_SUPPORTED
    host = hostport(a.connect)[0]
    t = ctx.wrap_socket(s, server_hostname=a.sni or host)
    for d in a.data or []:
        t.sendall(unescape(d))
        if a.gap:
            time.sleep(a.gap)
    how = read_all(t, a.timeout, sys.stdout.buffer)
    print("END " + how, file=sys.stderr)
    t.close()


def cmd_hold(a):
    held = []
    for _ in range(a.hold):
        held.append(socket.create_connection(hostport(a.proxy), timeout=a.timeout))
    time.sleep(0.3)  # let the proxy accept them
    s = socket.create_connection(hostport(a.proxy), timeout=a.timeout)
    try:
        s.sendall(b"".join(unescape(d) for d in a.data or []))
    except OSError:
        pass
    how = read_all(s, a.timeout, sys.stdout.buffer)
    print("END " + how, file=sys.stderr)
    s.close()
    for h in held:
        h.close()


class ManyConn:
    """One hijacked connection driven by the selector loop."""

    def __init__(self, a, ctx):
        self.a = a
        self.state = "connect"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(hostport(a.proxy))
        self.out = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a.connect.encode(), a.connect.encode())
        self.inbuf = b""
        self.ctx = ctx
        self.tls = None
        self.rbio = self.wbio = None
        self.resp = b""
        self.error = None

    def fileno(self):
        return self.sock.fileno()

    def events(self):
        ev = selectors.EVENT_READ
        if self.out or self.state == "connect":
            ev |= selectors.EVENT_WRITE
        return ev

    def fail(self, why):
        self.state = "failed"
        self.error = why

    def flush_tls(self):
        if self.wbio is not None:
            pending = self.wbio.read()
            if pending:
                self.out += pending

    def on_event(self, ev):
        try:
            if ev & selectors.EVENT_WRITE:
                if self.state == "connect":
                    err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        return self.fail("connect: %s" % os.strerror(err))
                    self.state = "connect-sent"
                if self.out:
                    n = self.sock.send(self.out)
                    self.out = self.out[n:]
            if ev & selectors.EVENT_READ:
                b = self.sock.recv(65536)
                if not b:
                    return self.fail("closed in state " + self.state)
                self.on_bytes(b)
        except BlockingIOError:
            pass
        except (OSError, ssl.SSLError) as e:
            self.fail("%s in state %s" % (e, self.state))

    def on_bytes(self, b):
        if self.state == "connect-sent":
            self.inbuf += b
            if b"\r\n\r\n" not in self.inbuf:
                return
            if not self.inbuf.startswith(b"HTTP/1.1 200"):
                return self.fail("CONNECT: %r" % self.inbuf[:40])
            self.rbio, self.wbio = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = self.ctx.wrap_bio(self.rbio, self.wbio, server_hostname=hostport(self.a.connect)[0])
            self.state = "handshake"
            self.step_handshake()
            return
        self.rbio.write(b)
        if self.state == "handshake":
            self.step_handshake()
        if self.state == "response":
            while True:
                try:
                    d = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                if not d:
                    # A response and the close_notify behind it can arrive
                    # in one segment: judge what came before the close.
                    self.check_response()
                    if self.state == "response":
                        self.fail("TLS closed before the response")
                    return
                self.resp += d
            self.check_response()
        elif self.state == "idle":
            try:
                d = self.tls.read(65536)
                if not d:
                    self.fail("closed while idle")
            except ssl.SSLWantReadError:
                pass

    def step_handshake(self):
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self.flush_tls()
            return
        self.state = "response"
        req = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (self.a.path.encode(), self.a.connect.encode())
        self.tls.write(req)
        self.flush_tls()

    def check_response(self):
        head, sep, body = self.resp.partition(b"\r\n\r\n")
        if not sep:
            return
        if not head.startswith(b"HTTP/1.1 200"):
            return self.fail("response %r" % head[:40])
        cl = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                cl = int(v)
        if cl is None:
            return self.fail("response without Content-Length")
        if len(body) >= cl:
            self.state = "idle"
            self.resp = b""


def cmd_many(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sel = selectors.DefaultSelector()
    conns = []
    pending = []
    deadline = time.monotonic() + a.timeout
    started = 0
    while True:
        busy = sum(1 for c in conns if c.state not in ("idle", "failed"))
        while started < a.n and busy < a.batch:
            c = ManyConn(a, ctx)
            conns.append(c)
            sel.register(c, c.events())
            started += 1
            busy += 1
        if started == a.n and busy == 0:
            break
        if time.monotonic() > deadline:
            break
        for key, ev in sel.select(timeout=0.5):
            c = key.fileobj
            c.on_event(ev)
            if c.state == "failed":
                sel.unregister(c)
                c.sock.close()
            else:
                sel.modify(c, c.events())
    ok = sum(1 for c in conns if c.state == "idle")
    failed = [c for c in conns if c.state != "idle"]
    for c in failed[:5]:
        print("failed: %s (state %s)" % (c.error, c.state), file=sys.stderr)
    print("ready %d %d" % (ok, len(failed)), flush=True)
    # Keep every connection open (and notice the ones the proxy closes)
    # until the test says so, or for --hold-secs at most.
    end = time.monotonic() + a.hold_secs
    while time.monotonic() < end:
        if a.release and os.path.exists(a.release):
            break
        if not a.release and sys.stdin.readline() is not None:
            break
        time.sleep(0.1)
    closed = 0
    for c in conns:
        if c.state == "idle":
            # Drain what is queued (a close_notify alert, say): EOF or an
            # error means the proxy closed it, EAGAIN that it is still open.
            c.sock.setblocking(False)
            try:
                while c.sock.recv(65536):
                    pass
                closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        c.sock.close()
    print("closed-by-proxy %d" % closed, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["raw", "tls", "hold", "many"])
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--connect")
    ap.add_argument("--ca")
    ap.add_argument("--sni")
    ap.add_argument("--data", action="append")
    ap.add_argument("--data-file")
    ap.add_argument("--timeout", type=float, default=5)
    ap.add_argument("--shut", action="store_true")
    ap.add_argument("--gap", type=float, default=0)
    ap.add_argument("--tls12", action="store_true")
    ap.add_argument("--hold", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--path", default="/")
    ap.add_argument("--release", help="many: close the connections once this file exists")
    ap.add_argument("--hold-secs", type=float, default=120)
    a = ap.parse_args()
    {"raw": cmd_raw, "tls": cmd_tls, "hold": cmd_hold, "many": cmd_many}[a.cmd](a)


if __name__ == "__main__":
    main()
