#!/usr/bin/env python3
"""Turns bench/p2p.sh's p2p-raw.txt into the P2P results table and the
data file bench/p2p.gnuplot plots.

    bench/p2p_report.py RAW TXT MD DAT

RAW holds one measurement per line, "KIND key=value ...", KIND one of
info, run (one per system and N: clients, ok, t_first, t_median, t_last in
seconds from the common start, origin_bytes, cpu_s) and client (one per
client). TXT gets the plain-text table (p2p.sh prints it), MD the same as
markdown, DAT one line per N: "N T* shoal direct central" (seconds, "-"
where not measured).

The fluid lower bound for F bytes to N peers when every uplink (origin and
peers) is U and downloads are unlimited: T* = max(F/U, N*F/(U + N*U)); the
F/d term drops out. Targets: Shoal's T_last <= 1.3 T* at every N, its
origin bytes <= 1.1 F, and at the largest N the warm central cache's T_last
at least 8x Shoal's. A run where some client did not get the right bytes
misses every target it is part of.
"""
import sys

from report import parse, ratio, show, verdict, write_tables

T_MAX = 1.3  # T_last / T*
ORIGIN_MAX = 1.1  # origin bytes / F
CENTRAL_MIN = 8.0  # central T_last / Shoal T_last at the largest N


def fnum(kv, key):
    try:
        v = float(kv[key])
    except (KeyError, ValueError):
        return None
    return None if v != v else v  # nan -> None


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: p2p_report.py RAW TXT MD DAT")
    info, runs = {}, {}
    for kind, kv in parse(sys.argv[1]):
        if kind == "info":
            info.update(kv)
        elif kind == "run":
            runs[(kv["system"], int(kv["n"]))] = kv
    F = int(info["f_bytes"])
    U = float(info["rate_bps"])
    ns = sorted({int(n) for n in info["ns"].split(",")})
    nmax = int(info["nmax"])

    def tstar(n):
        return max(F * 8 / U, n * F * 8 / (U + n * U))

    def complete(kv):
        return kv is not None and kv.get("ok") == kv.get("clients")

    rows, targets = [], []
    order = [("shoal", n) for n in ns] + [("direct", nmax), ("central", nmax)]
    for sysname, n in order:
        kv = runs.get((sysname, n))
        if kv is None:
            if sysname == "shoal":
                rows.append([f"shoal N={n}", n, "-", show(tstar(n), "{:.1f}"), "-", "-", "-", "-", "-",
                             "not run" if info.get("shoal_p2p") == "0" else "missing"])
            continue
        t_last = fnum(kv, "t_last")
        ob = fnum(kv, "origin_bytes")
        note = ""
        if not complete(kv):
            note = f"{kv.get('ok')}/{kv.get('clients')} right"
        if sysname == "central" and "fill_s" in kv:
            note = (note + "; " if note else "") + (f"fill {float(kv['fill_s']):.1f} s, not in T_last; "
                                                     f"origin/F includes the fill")
        rows.append([
            f"{sysname} N={n}", n, show(t_last, "{:.1f}"), show(tstar(n), "{:.1f}"),
            show(ratio(t_last, tstar(n)), "{:.2f}"), show(None if ob is None else ob / F, "{:.2f}"),
            show(fnum(kv, "cpu_s"), "{:.1f}"), show(fnum(kv, "busy_pct"), "{:.0f}"),
            f"{kv.get('ok')}/{kv.get('clients')}", note])

    for n in ns:
        kv = runs.get(("shoal", n))
        t_last = fnum(kv, "t_last") if kv else None
        ok = None if kv is None else (complete(kv) and t_last is not None and t_last <= T_MAX * tstar(n))
        targets.append([f"Shoal N={n}: T_last <= {T_MAX} T*",
                        show(ratio(t_last, tstar(n)), "{:.2f} T*"), verdict(ok)])
    for n in ns:
        kv = runs.get(("shoal", n))
        ob = fnum(kv, "origin_bytes") if kv else None
        ok = None if ob is None else (complete(kv) and ob <= ORIGIN_MAX * F)
        targets.append([f"Shoal N={n}: origin bytes <= {ORIGIN_MAX} F",
                        show(None if ob is None else ob / F, "{:.3f} F"), verdict(ok)])
    s, c = runs.get(("shoal", nmax)), runs.get(("central", nmax))
    r = ratio(fnum(c, "t_last") if c else None, fnum(s, "t_last") if s else None)
    ok = None if r is None else (complete(s) and complete(c) and r >= CENTRAL_MIN)
    targets.append([f"N={nmax}: central cache T_last / Shoal T_last >= {CENTRAL_MIN:.0f}",
                    show(r, "{:.1f}x"), verdict(ok)])
    d = runs.get(("direct", nmax))
    r = ratio(fnum(d, "t_last") if d else None, fnum(s, "t_last") if s else None)
    targets.append([f"N={nmax}: direct T_last / Shoal T_last (no target)", show(r, "{:.1f}x"), "-"])

    head = [
        "Shoal P2P distribution (bench/p2p.sh)",
        f"F = {F / 2**20:.0f} MiB; every uplink U = u = {U / 1e6:.0f} Mbit/s (TBF; measured "
        f"{info.get('u_eff_mbit', '?')} Mbit/s of payload), downloads unlimited (the F/d term of T* drops out)",
        "T* = max(F/U, N*F/(U + N*u)); times from the common start to the slowest client's last byte;",
        "origin bytes: the origin's eth0 tx_bytes (frames with headers, ~1 % over the payload) / F",
        "piece links between peers: " + ("TLS (p2p.tls: true)" if info.get("peer_tls") == "1" else "plain TCP (signed requests)"),
        f"CPU s: all shoald processes (peers and scheduler) for shoal, the origin's registry for direct, "
        f"the cache's registry for central; busy %: the whole machine's CPUs during the run",
        f"{info.get('date', '?')}, {info.get('cpu', '?')} x{info.get('ncpu', '?')}, kernel {info.get('kernel', '?')}, "
        f"{info.get('shoald', '?')} (uncommitted files: {info.get('shoald_dirty', '?')})",
    ]
    sections = [
        ("Distribution of one blob", ["run", "N", "T_last s", "T* s", "T_last/T*", "origin/F", "CPU s", "busy %",
                                      "right", "note"], rows),
        ("Targets", ["target", "measured", "verdict"], targets),
    ]
    write_tables(head, sections, sys.argv[2], sys.argv[3], "bench/p2p_report.py")

    with open(sys.argv[4], "w") as out:
        out.write("# N tstar shoal direct central (seconds; - = not measured)\n")
        for n in sorted(set(ns) | {nmax}):
            vals = [tstar(n)]
            for sysname in ("shoal", "direct", "central"):
                kv = runs.get((sysname, n))
                vals.append(fnum(kv, "t_last") if kv and complete(kv) else None)
            out.write(f"{n} " + " ".join("-" if v is None else f"{v:.3f}" for v in vals) + "\n")


if __name__ == "__main__":
    main()
