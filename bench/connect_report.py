#!/usr/bin/env python3
"""Turns bench/connect.sh's connect-raw.txt into the results table.

    bench/connect_report.py RAW TXT MD

RAW holds one measurement per line, "KIND key=value ...", KIND one of conn
(a connlat case: one run's percentiles), bpfstat (one BPF program's run
time and count over one case's connects), kload, check, info (connect.sh
writes it). TXT gets the plain-text table (connect.sh prints it), MD the
same as markdown. Latency differences between cases measured in the same
connlat run are medians of the per-run differences of their p50s (a0 and
a1 share runs too: batches taking turns); the one comparison across the
eBPF and iptables phases (d - a, shown for reference) is a difference of
the medians of the runs' p50s.
Every target line says PASS or MISS. Exits 1 if RAW lacks a measurement
a target needs.
"""
import statistics
import sys

from report import kload_summary, parse, ratio, show, verdict, write_tables

# Issue 5's targets.
REDIRECT_ADD_MAX_US = 5.0  # redirected connect minus a connect without a hook
NOMATCH_PROG_MAX_NS = 500.0  # BPF program time per non-matching connect in the cgroup
OUTSIDE_DIFF_MAX_US = 0.3  # outside the cgroup: hook attached elsewhere vs none at all

CASES = [
    # (phase, set, label, description)
    ("ebpf", "toggle", "a0", "outside, no hook attached anywhere"),
    ("ebpf", "toggle", "a1", "outside, hooks attached (to the job cgroup)"),
    ("ebpf", "toggle", "a1x", "the same, after a no-op attach (control)"),
    ("ebpf", "mix", "a", "outside, hooks attached elsewhere"),
    ("ebpf", "mix", "b", "job cgroup, non-matching port"),
    ("ebpf", "mix", "c", "job cgroup, port 443, redirected by eBPF"),
    ("iptables", "mix", "an", "outside, a namespace without NAT (iptables phase)"),
    ("iptables", "mix", "a2", "outside, iptables mode (NAT table on)"),
    ("iptables", "mix", "b2", "job cgroup, non-matching port, iptables"),
    ("iptables", "mix", "d", "job cgroup, port 443, redirected by iptables"),
]
# Paired reference within the same connlat run (a0 and a1: batches taking
# turns, the hooks detached and attached in between).
PAIRED_REF = {"a1": "a0", "a1x": "a1", "b": "a", "c": "a", "a2": "an", "b2": "a2", "d": "a2"}
AWAKE = [("ebpf", "a"), ("ebpf", "b"), ("ebpf", "c"), ("iptables", "an"), ("iptables", "a2"), ("iptables", "b2"),
         ("iptables", "d")]
# (name, description, the explicit run of the same phase)
KLOAD = [
    ("direct", "direct HTTPS (no proxy, outside the cgroup)", "explicit"),
    ("explicit", "eBPF phase: explicit (--proxy, CONNECT), hijacked", "explicit"),
    ("transparent-ebpf", "eBPF phase: transparent (redirect), hijacked", "explicit"),
    ("explicit-iptables", "iptables phase: explicit, hijacked", "explicit-iptables"),
    ("transparent-iptables", "iptables phase: transparent (REDIRECT), hijacked", "explicit-iptables"),
]


def runs_of(conn, phase, set_, label):
    """{run: row} of one case."""
    return {r["run"]: r for r in conn if r["phase"] == phase and r["set"] == set_ and r["label"] == label}


def med(rows, key):
    vals = [float(r[key]) for r in rows.values()]
    return statistics.median(vals) if vals else None


def paired_all(a, b, key="p50_us"):
    """a's key minus b's key, for each run both have."""
    return [float(a[r][key]) - float(b[r][key]) for r in a if r in b]


def paired(a, b, key="p50_us"):
    """Median over the runs both have of a's key minus b's key."""
    d = paired_all(a, b, key)
    return statistics.median(d) if d else None


def spread(a, b):
    """The lowest and highest per-run difference of p50s, as text."""
    d = paired_all(a, b)
    return "-" if not d else "{:+.2f} .. {:+.2f}".format(min(d), max(d))


def diff(x, y):
    return None if x is None or y is None else x - y


def fmt_us(x):
    return show(x, "{:.2f}")


def fmt_diff(x):
    return "-" if x is None else "{:+.2f}".format(x)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: connect_report.py RAW TXT MD")
    info, conn, bpf, kload, checks = {}, [], [], {}, []
    for kind, kv in parse(sys.argv[1]):
        if kind == "info":
            info.update(kv)
        elif kind == "conn":
            conn.append(kv)
        elif kind == "bpfstat":
            bpf.append(kv)
        elif kind == "kload":
            kload.setdefault(kv["name"], []).append(kv)
        elif kind == "check":
            checks.append(kv)

    stopped = {lab: runs_of(conn, ph, st, lab) for ph, st, lab, _ in CASES}
    for ph, st, lab, _ in CASES:
        if not stopped[lab]:
            sys.exit(f"connect_report.py: no {ph}/{st} runs of case {lab} in {sys.argv[1]}")
    p50 = {lab: med(stopped[lab], "p50_us") for lab in stopped}
    n_per = {lab: sum(int(r["n"]) for r in stopped[lab].values()) for lab in stopped}

    foreign = max(int(r.get("foreign_hooks", "0")) for r in stopped["a0"].values())

    head = [
        "Shoal transparent interception: connect latency, BPF cost, 1 KiB transparent vs explicit (bench/connect.sh)",
        f"{info.get('date', '?')}  kernel {info.get('kernel', '?')}  {info.get('cpu', '?').replace('_', ' ')}",
        f"{info.get('shoald', '?').replace('_', ' ')} (uncommitted files in userspace/include: "
        f"{info.get('shoald_dirty', '?')}); shoald on cpu {info.get('proxy_cpu', '?')}, "
        f"clients, connlat's server and nginx on cpu {info.get('client_cpu', '?')}",
        f"Background load (2 s, before/after): {info.get('background_before', '?')} / "
        f"{info.get('background_after', '?')}; waited {info.get('idle_waited_s', '?')} s for idle cores",
        f"connect: {info.get('connect_runs', '?')} runs x {info.get('connects_per_case', '?')} timed connects per "
        f"case (+{info.get('warmup', '?')} warm-up), servers held stopped in batches of {info.get('batch', '?')}; "
        f"awake run {info.get('awake_connects', '?')} per case",
    ]
    if foreign:
        head.append(f"WARNING: {foreign} connect/sockops program(s) of another shoald were attached elsewhere on "
                    "the machine during the a0 runs: a0 is not 'nothing attached at all'")
    for c in checks:
        gone = int(c.get("shoald_client_gone", "0"))
        ok = (int(c.get("connects", -1)) == int(c.get("shoald_redirected", 0)) + gone
              and c.get("shoald_no_original_destination") == "0")
        head.append(f"check {c['phase']}: case {c['redirect_case']} made {c['connects']} connects, shoald counted "
                    f"{c['shoald_redirected']} redirected, {gone} already closed by connlat when looked up, and "
                    f"{c['shoald_no_original_destination']} without an "
                    f"original destination{'' if ok else '  <-- MISMATCH'}")

    # A. connect latency, servers stopped.
    rows_a = []
    for ph, st, lab, desc in CASES:
        ref = PAIRED_REF.get(lab)
        d_ref = paired(stopped[lab], stopped[ref]) if ref else None
        rows_a.append([
            f"{lab}  {desc}",
            fmt_us(p50[lab]),
            fmt_us(med(stopped[lab], "p90_us")),
            fmt_us(med(stopped[lab], "p99_us")),
            f"{fmt_diff(d_ref)} vs {ref}" if ref else "-",
            spread(stopped[lab], stopped[ref]) if ref else "-",
            n_per[lab],
        ])
    sec_a = ("A. connect() latency in us, servers held stopped (medians of the runs' percentiles)",
             ["case", "p50", "p90", "p99", "p50 diff, same run", "runs' range", "connects"], rows_a)

    # B. awake servers (reference).
    rows_b = []
    for ph, lab in AWAKE:
        rr = runs_of(conn, ph, "awake", lab)
        if not rr:
            continue
        ref = PAIRED_REF.get(lab)
        ref_rr = runs_of(conn, ph, "awake", ref) if ref else {}
        rows_b.append([
            f"{lab}  ({ph})",
            fmt_us(med(rr, "p50_us")),
            fmt_us(med(rr, "p90_us")),
            fmt_us(med(rr, "p99_us")),
            f"{fmt_diff(paired(rr, ref_rr))} vs {ref}" if ref_rr else "-",
            sum(int(r["n"]) for r in rr.values()),
        ])
    sec_b = ("B. connect() latency in us, servers awake (each connect also wakes the server on the other core; "
             "reference only)", ["case", "p50", "p90", "p99", "p50 diff", "connects"], rows_b)

    # C. BPF program run time.
    rows_c, per_connect = [], {}
    for case in ("b", "c"):
        total = 0.0
        for r in sorted((x for x in bpf if x["case"] == case), key=lambda x: x["prog"]):
            runs, ns, n = int(r["runs"]), int(r["ns"]), int(r["connects"])
            total += ns / n if n else 0
            if runs == 0:
                continue
            rows_c.append([f"{case}  {r['prog']}", show(runs / n, "{:.2f}"), show(ns / runs, "{:.0f}"),
                           show(ns / n, "{:.0f}")])
        if any(x["case"] == case for x in bpf):
            per_connect[case] = total
            rows_c.append([f"{case}  all programs", "", "", show(total, "{:.0f}")])
    sec_c = ("C. BPF program run time (kernel.bpf_stats_enabled; b: non-matching connects, c: redirected)",
             ["case  program", "runs/connect", "ns/run", "ns/connect"], rows_c)

    # D. 1 KiB.
    ks = {name: kload_summary(kload[name]) for name, _, _ in KLOAD if name in kload}
    rows_d = []
    for name, desc, ref in KLOAD:
        if name not in ks:
            continue
        s = ks[name]
        rows_d.append([desc, show(s["rps"]), show(ratio(s["rps"], ks.get(ref, {}).get("rps")), "{:.2f}x"),
                       show(s["p50"], "{:.3f}"), show(s["p99"], "{:.3f}"), show(s["p99_max"], "{:.3f}"),
                       s["errors"], show(s["us_per_req"], "{:.1f}"), show(s["other"], "{:.0f}")])
    sec_d = (f"D. 1 KiB GETs from the job cgroup, {info.get('conns', '?')} keep-alive connections, "
             f"{info.get('kload_seconds', '?')} s x {info.get('runs', '?')} runs (medians; TLS 1.2 to shoald)",
             ["path", "req/s", "vs explicit (same phase)", "p50 ms", "p99 ms", "worst p99", "errors", "proxy CPU us/req",
              "other %"], rows_d)

    # Targets.
    c_add = paired(stopped["c"], stopped["a"])
    d_add = paired(stopped["d"], stopped["an"])
    outside = paired(stopped["a1"], stopped["a0"])
    nomatch = per_connect.get("b")
    t_rows = [
        ["redirected connect, eBPF: c - a (same run)", f"<= {REDIRECT_ADD_MAX_US:.1f} us", fmt_us(c_add),
         verdict(None if c_add is None else c_add <= REDIRECT_ADD_MAX_US)],
        ["redirected connect, iptables: d - an (same run)", f"<= {REDIRECT_ADD_MAX_US:.1f} us", fmt_us(d_add),
         verdict(None if d_add is None else d_add <= REDIRECT_ADD_MAX_US)],
        ["  (d - a2, same run: the redirect's own share)", "", fmt_us(paired(stopped["d"], stopped["a2"])), ""],
        ["  (a2 - an, same run: what every connect in the namespace pays)", "",
         fmt_us(paired(stopped["a2"], stopped["an"])), ""],
        ["  (d - a, across phases)", "", fmt_us(diff(p50["d"], p50["a"])), ""],
        ["program time per non-matching connect in the cgroup (C, b)", f"<= {NOMATCH_PROG_MAX_NS:.0f} ns",
         show(nomatch, "{:.0f} ns"), verdict(None if nomatch is None else nomatch <= NOMATCH_PROG_MAX_NS)],
        ["  (latency: b - a, same run)", "", fmt_us(paired(stopped["b"], stopped["a"])), ""],
        ["outside the cgroup: a1 - a0, the runs' differences of medians" + (" (a0 not clean)" if foreign else ""),
         f"< {OUTSIDE_DIFF_MAX_US:.1f} us", fmt_us(outside),
         verdict(None if outside is None else outside < OUTSIDE_DIFF_MAX_US)],
        ["  (range over the runs)", "", spread(stopped["a1"], stopped["a0"]), ""],
        ["  (control a1x - a1: the turn-taking's own effect)", "", fmt_us(paired(stopped["a1x"], stopped["a1"])),
         ""],
    ]
    for name, ref in (("transparent-ebpf", "explicit"), ("transparent-iptables", "explicit-iptables")):
        if name in ks and ref in ks:
            t_rows.append([f"1 KiB {name} / {ref}: req/s, p50, p99 (reported, no target)", "",
                           "{} {} {}".format(show(ratio(ks[name]["rps"], ks[ref]["rps"]), "{:.2f}x"),
                                             show(ratio(ks[name]["p50"], ks[ref]["p50"]), "{:.2f}x"),
                                             show(ratio(ks[name]["p99"], ks[ref]["p99"]), "{:.2f}x")), ""])
    sec_t = ("Targets (issue 5; never tuned for)", ["target", "bound", "measured", ""], t_rows)

    write_tables(head, [sec_a, sec_b, sec_c, sec_d, sec_t], sys.argv[2], sys.argv[3], "bench/connect_report.py")


if __name__ == "__main__":
    main()
