#!/usr/bin/env python3
"""transparent_probe: small socket clients for the transparent-interception
tests (tests/integration/t_transparent_*.sh). Each prints one JSON object per
line on stdout and never uses a proxy: the test runs it inside (or outside)
an intercepted cgroup and looks at what the kernel and Shoal did.

  peer ADDR PORT        TCP connect (AF_INET6 when ADDR has a ":", so
                        "::ffff:127.0.0.2" is a dual-stack connect), print
                        {"peer": [ip, port], "sock": [ip, port], "pid": N}
  tls ADDR PORT NAME CAFILE [PATH]
                        TCP connect to ADDR:PORT, TLS with SNI NAME verified
                        against CAFILE, GET PATH (default /v2/), print
                        {"peer", "sock", "pid", "status", "issuer"} where
                        issuer is the CN of the certificate's issuer
  udp ADDR PORT         UDP: sendto() on an unconnected socket, then
                        connect() + send() on another; print
                        {"sendto": ERR, "connect": ERR, "send": ERR} with ERR
                        "ok", an errno name ("EPERM"), or "-" (not tried)
  job NAME CAFILE       a long-lived "job": for every line read on stdin,
                        one `tls NAME 443 NAME CAFILE` attempt (the name
                        resolved each time, as a client would), printing
                        its result or {"error": "ECONNREFUSED ..."}; exits
                        at EOF
"""
import errno
import json
import os
import socket
import ssl
import sys


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def addr_pair(a):
    return [a[0], a[1]]


def err_name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__


def connect(addr, port):
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((addr, port))
    return s


def peer(addr, port):
    s = connect(addr, port)
    out = {"peer": addr_pair(s.getpeername()), "sock": addr_pair(s.getsockname()), "pid": os.getpid()}
    s.close()
    return out


def issuer_cn(cert):
    for rdn in cert.get("issuer", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return ""


def tls(addr, port, name, cafile, path="/v2/"):
    ctx = ssl.create_default_context(cafile=cafile)
    s = connect(addr, port)
    out = {"peer": addr_pair(s.getpeername()), "sock": addr_pair(s.getsockname()), "pid": os.getpid()}
    with ctx.wrap_socket(s, server_hostname=name) as t:
        out["issuer"] = issuer_cn(t.getpeercert())
        t.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = t.recv(4096)
            if not chunk:
                break
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        out["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return out


def udp(addr, port):
    out = {"sendto": "-", "connect": "-", "send": "-"}
    fam = family_of(addr)
    with socket.socket(fam, socket.SOCK_DGRAM) as u:
        try:
            u.sendto(b"shoal-udp-probe", (addr, port))
            out["sendto"] = "ok"
        except OSError as e:
            out["sendto"] = err_name(e)
    with socket.socket(fam, socket.SOCK_DGRAM) as u:
        try:
            u.connect((addr, port))
            out["connect"] = "ok"
        except OSError as e:
            out["connect"] = err_name(e)
        if out["connect"] == "ok":
            try:
                u.send(b"shoal-udp-probe")
                out["send"] = "ok"
            except OSError as e:
                out["send"] = err_name(e)
    return out


def job(name, cafile):
    for _ in sys.stdin:
        try:
            addr = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)[0][4][0]
            res = tls(addr, 443, name, cafile)
        except (OSError, ssl.SSLError) as e:
            res = {"error": f"{err_name(e)} {e}"}
        print(json.dumps(res), flush=True)


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    cmd = a[0]
    if cmd == "peer" and len(a) == 3:
        res = peer(a[1], int(a[2]))
    elif cmd == "tls" and len(a) in (5, 6):
        res = tls(a[1], int(a[2]), a[3], a[4], *a[5:])
    elif cmd == "udp" and len(a) == 3:
        res = udp(a[1], int(a[2]))
    elif cmd == "job" and len(a) == 3:
        job(a[1], a[2])
        return
    else:
        sys.exit(__doc__)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
