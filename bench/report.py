#!/usr/bin/env python3
"""Turns bench/run.sh's raw.txt into the results table.

    bench/report.py RAW TXT MD

RAW holds one measurement per line, "KIND key=value ...", KIND one of bulk,
kload, cipher, suite, info (run.sh writes it). TXT gets the plain-text
table (run.sh prints it), MD the same as markdown for the README. Ratios
compare medians; every target line says PASS or MISS against the figure it
names. Exits 1 if RAW lacks a measurement a table row needs.
"""
import statistics
import sys

GIB = float(1 << 30)
TUNNEL_MIN = 1.0  # shoald tunnel throughput / squid tunnel throughput
RELAY_CPU_MAX = 1.2  # shoald relay CPU-s/GiB / cipher bound
P99_MAX_MS = 1.0
RSS_MAX_MIB = 64.0


def parse(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            kv = {}
            for p in parts[1:]:
                if "=" in p:
                    k, v = p.split("=", 1)
                    kv[k] = v
            rows.append((parts[0], kv))
    return rows


def suite_key(openssl_name):
    """Maps an OpenSSL cipher name to cipher_speed's suite name."""
    n = openssl_name.upper()
    if "CHACHA20" in n:
        return "chacha20-poly1305"
    if "AES128-GCM" in n or "AES_128_GCM" in n:
        return "aes-128-gcm"
    if "AES256-GCM" in n or "AES_256_GCM" in n:
        return "aes-256-gcm"
    return None


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: report.py RAW TXT MD")
    rows = parse(sys.argv[1])
    info, bulk, kload, cipher, suites = {}, {}, {}, {}, {}
    for kind, kv in rows:
        if kind == "info":
            info.update(kv)
        elif kind == "bulk":
            bulk.setdefault(kv["name"], []).append(kv)
        elif kind == "kload":
            kload.setdefault(kv["name"], []).append(kv)
        elif kind == "cipher":
            cipher[kv["suite"]] = kv
        elif kind == "suite":
            suites.setdefault(kv["path"], {}).update(kv)

    def b(name):
        runs = bulk.get(name)
        if not runs:
            sys.exit(f"report.py: no bulk runs for {name}")
        mbps = [float(r["bps"]) / 1e6 for r in runs]
        measured = all(r.get("measured") == "1" for r in runs)
        cpu = [float(r["cpu_s"]) / (float(r["bytes"]) / GIB) for r in runs] if measured else None
        hwm = max(int(r["hwm_kib"]) for r in runs) / 1024.0 if measured else None
        # The proxy core's busy time not charged to the proxy process: its
        # softirq share of the loopback traffic, plus anything else running
        # there (other jobs on the machine). For "direct" it is all noise.
        other = statistics.median(
            (float(r.get("pcore_busy_s", "0")) - float(r["cpu_s"])) / float(r["seconds"]) * 100 for r in runs)
        return {
            "best": max(mbps),
            "median": statistics.median(mbps),
            "cpu": statistics.median(cpu) if cpu else None,
            "hwm": hwm,
            "other": other,
            "n": len(runs),
        }

    def k(name):
        runs = kload.get(name)
        if not runs:
            sys.exit(f"report.py: no kload result for {name}")

        def med(key):
            return statistics.median(float(r[key]) for r in runs)

        per_req, other = [], []
        for r in runs:
            secs = float(r["seconds"]) + 1.0  # the warm-up second runs too
            cpu = float(r.get("proxy_cpu_s", "0"))
            reqs = int(r["requests"]) * secs / float(r["seconds"])
            if cpu > 0 and reqs:
                per_req.append(cpu / reqs * 1e6)
            other.append((float(r.get("pcore_busy_s", "0")) - cpu) / secs * 100)
        return {
            "rps": med("rps"),
            "p50": med("p50_ms"),
            "p99": med("p99_ms"),
            "p99_max": max(float(r["p99_ms"]) for r in runs),
            "errors": sum(int(r["errors"]) for r in runs),
            "suite": runs[0].get("suite", "-"),
            "us_per_req": statistics.median(per_req) if per_req else None,
            "other": statistics.median(other),
        }

    d, st, qt, sr, qr = (b(n) for n in ("direct", "shoald-tunnel", "squid-tunnel", "shoald-relay", "squid-relay"))
    kd, ks, kq = (k(n) for n in ("direct", "shoald-relay", "squid-relay"))

    cli = suites.get("shoald-relay", {}).get("client", "unknown")
    org = suites.get("shoald-relay", {}).get("origin", "unknown")
    seal_suite, open_suite = suite_key(cli), suite_key(org)
    bound = None
    if seal_suite in cipher and open_suite in cipher:
        bound = float(cipher[open_suite]["open_s_per_GiB"]) + float(cipher[seal_suite]["seal_s_per_GiB"])

    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    def ratio(a, c):
        return None if a is None or c is None or c == 0 else a / c

    def verdict(ok):
        return "-" if ok is None else ("PASS" if ok else "MISS")

    size = info.get("size_mib", "?")
    runs = info.get("runs", "?")
    head = [
        f"Shoal explicit-proxy bench  {info.get('date', '')}  {info.get('shoald', '').replace('_', ' ')}"
        f" + {info.get('shoald_dirty', '?')} uncommitted files in userspace/ include/",
        f"{info.get('cpu', '').replace('_', ' ')}, kernel {info.get('kernel', '')}; proxy on cpu {info.get('proxy_cpu')},"
        f" curl/kload/nginx on cpu {info.get('client_cpu')}",
        f"squid {info.get('squid', '')}, nginx {info.get('nginx', '')} (1 worker, TLS 1.2), curl {info.get('curl', '')};"
        f" MB = 10^6 bytes",
        "TLS suites: client<->shoald relay " + cli + "; shoald<->origin " + org
        + "; client<->squid relay " + suites.get("squid-relay", {}).get("client", "unknown")
        + "; squid<->origin " + suites.get("squid-relay", {}).get("origin", "unknown"),
        "Background load (2 s, before servers start / after the runs): "
        + info.get("background_before", "?") + " / " + info.get("background_after", "?")
        + f"; waited {info.get('idle_waited_s', '?')} s of {info.get('idle_budget_s', '?')} s for idle cores",
        "\"other %\" = proxy core busy outside the proxy process (loopback softirq + other jobs)",
    ]
    # With no proxy running the proxy core should idle: kernel workers (page
    # cache readahead for nginx's sendfile) take ~10 % during bulk runs.
    noisy = [n for n, x, lim in (("bulk direct", d["other"], 25), ("1 KiB direct", kd["other"], 10)) if x > lim]
    if noisy:
        head.append("WARNING: other jobs used the proxy core during the " + " and ".join(noisy)
                    + " runs (high other % with no proxy running): figures are disturbed; rerun on an idle machine")

    bulk_hdr = ["path", "best MB/s", "median MB/s", "CPU-s/GiB", "peak RSS MiB", "shoald/squid", "other %"]
    pct = "{:.0f}"
    bulk_rows = [
        ["a. direct HTTPS (curl -> nginx)", f(d["best"]), f(d["median"]), "-", "-", "", f(d["other"], pct)],
        ["b. tunnel   shoald", f(st["best"]), f(st["median"]), f(st["cpu"], "{:.2f}"), f(st["hwm"], "{:.1f}"),
         f(ratio(st["median"], qt["median"]), "{:.2f}x"), f(st["other"], pct)],
        ["b. tunnel   squid", f(qt["best"]), f(qt["median"]), f(qt["cpu"], "{:.2f}"), f(qt["hwm"], "{:.1f}"), "",
         f(qt["other"], pct)],
        ["c. relay    shoald (hijack, route direct)", f(sr["best"]), f(sr["median"]), f(sr["cpu"], "{:.2f}"),
         f(sr["hwm"], "{:.1f}"), f(ratio(sr["median"], qr["median"]), "{:.2f}x"), f(sr["other"], pct)],
        ["c. relay    squid (bump all, cache deny all)", f(qr["best"]), f(qr["median"]), f(qr["cpu"], "{:.2f}"),
         f(qr["hwm"], "{:.1f}"), "", f(qr["other"], pct)],
    ]
    conns = info.get("conns", "?")
    secs = info.get("kload_seconds", "?")
    small_hdr = ["path", "req/s", "p50 ms", "p99 ms", "worst p99", "errors", "proxy CPU us/req",
                 "shoald/squid req/s", "other %"]
    small_rows = [
        ["d. direct (kload -> nginx)", f(kd["rps"]), f(kd["p50"], "{:.3f}"), f(kd["p99"], "{:.3f}"),
         f(kd["p99_max"], "{:.3f}"), str(kd["errors"]), "-", "", f(kd["other"], pct)],
        ["d. relay    shoald", f(ks["rps"]), f(ks["p50"], "{:.3f}"), f(ks["p99"], "{:.3f}"), f(ks["p99_max"], "{:.3f}"),
         str(ks["errors"]),
         f(ks["us_per_req"], "{:.0f}"), f(ratio(ks["rps"], kq["rps"]), "{:.2f}x"), f(ks["other"], pct)],
        ["d. relay    squid", f(kq["rps"]), f(kq["p50"], "{:.3f}"), f(kq["p99"], "{:.3f}"), f(kq["p99_max"], "{:.3f}"),
         str(kq["errors"]),
         f(kq["us_per_req"], "{:.0f}"), "", f(kq["other"], pct)],
    ]
    cipher_hdr = ["mbedTLS AEAD, 16 KiB records", "seal MB/s", "open MB/s", "seal s/GiB", "open s/GiB"]
    cipher_rows = [
        [n, f(float(c["seal_MBps"])), f(float(c["open_MBps"])), f(float(c["seal_s_per_GiB"]), "{:.2f}"),
         f(float(c["open_s_per_GiB"]), "{:.2f}")]
        for n, c in cipher.items()
    ]

    t_tunnel = ratio(st["median"], qt["median"])
    t_cpu = ratio(sr["cpu"], bound)
    rss = max(x for x in (st["hwm"], sr["hwm"]) if x is not None)
    bound_txt = (f"{bound:.2f} CPU-s/GiB = open({open_suite}) + seal({seal_suite})" if bound is not None
                 else "unknown (suite not measured)")
    target_hdr = ["target", "measured", "result"]
    target_rows = [
        [f"tunnel median >= {TUNNEL_MIN:.1f}x squid tunnel", f(t_tunnel, "{:.2f}x"),
         verdict(None if t_tunnel is None else t_tunnel >= TUNNEL_MIN)],
        [f"relay CPU-s/GiB <= {RELAY_CPU_MAX:.1f}x cipher bound ({f(bound, '{:.2f}')})",
         f"{f(sr['cpu'], '{:.2f}')} = {f(t_cpu, '{:.2f}x')}",
         verdict(None if t_cpu is None else t_cpu <= RELAY_CPU_MAX)],
        [f"1 KiB relay p99 (median of runs) <= {P99_MAX_MS:g} ms", f"{ks['p99']:.3f} ms", verdict(ks["p99"] <= P99_MAX_MS)],
        [f"peak RSS <= {RSS_MAX_MIB:.0f} MiB during {size} MiB transfers", f"{rss:.1f} MiB",
         verdict(rss <= RSS_MAX_MIB)],
        ["(reported) relay median vs squid relay", f(ratio(sr["median"], qr["median"]), "{:.2f}x"), "-"],
    ]

    sections = [
        (f"Bulk: {size} MiB file, curl to /dev/null, {runs} runs (best, median; CPU-s/GiB median, RSS max)",
         bulk_hdr, bulk_rows),
        (f"1 KiB: {conns} keep-alive connections, {secs} s after 1 s warm-up (build/bench/kload), {runs} runs"
         " (medians; worst p99 of the runs)", small_hdr,
         small_rows),
        (f"Cipher bound for the relay: {bound_txt}", cipher_hdr, cipher_rows),
        ("Targets", target_hdr, target_rows),
    ]

    txt = list(head)
    for title, hdr, body in sections:
        widths = [max(len(str(r[i])) for r in [hdr] + body) for i in range(len(hdr))]
        txt.append("")
        txt.append(title)
        for r in [hdr] + body:
            cells = [str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)]
            txt.append("  " + "  ".join(cells).rstrip())
    with open(sys.argv[2], "w") as out:
        out.write("\n".join(txt) + "\n")

    md = ["<!-- generated by make bench (bench/report.py) -->"] + [h + "  " for h in head]
    for title, hdr, body in sections:
        md.append("")
        md.append(f"**{title}**")
        md.append("")
        md.append("| " + " | ".join(hdr) + " |")
        md.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for r in body:
            md.append("| " + " | ".join(str(c) for c in r) + " |")
    with open(sys.argv[3], "w") as out:
        out.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
