#!/usr/bin/env python3
"""Turns bench/task.sh's task-raw.txt into the task-engine results table.

    bench/task_report.py RAW TXT MD

RAW holds one measurement per line, "KIND key=value ...", KIND one of bulk,
kload, conc, suite, records, check, info (task.sh writes it). TXT gets the
plain-text table (task.sh prints it), MD the same as markdown for the
README. Ratios compare medians; every target says PASS or MISS for the fast
record path on, with the same ratio for the fast path off beside it for
reference. Exits 1 if RAW lacks a measurement a table row needs.
"""
import sys

from report import GIB, bulk_summary, kload_summary, parse, ratio, show, verdict, write_tables

# The fast-record-path issue's targets (shoald with tls.fastRecords on).
HIT_VS_DISK_MIN = 5.0  # shoald hit MB/s / squid disk hit MB/s
HIT_VS_MEM_MIN = 2.0  # shoald hit MB/s / squid memory hit MB/s
MISS_MIN = 3.0  # shoald miss MB/s / squid miss MB/s
SMALL_MIN = 1.5  # shoald 1 KiB req/s / squid 1 KiB hit req/s
P99_MAX_MS = 1.0  # worst p99 of the 1 KiB runs
# The task engine's own (earlier issue): one origin fetch for N concurrent
# clients, and bounded memory while moving the big object.
RSS_MAX_MIB = 64.0

SHOALDS = ("shoald-on", "shoald-off")


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: task_report.py RAW TXT MD")
    info, check, bulk, kload, suites, records, conc = {}, {}, {}, {}, {}, {}, None
    for kind, kv in parse(sys.argv[1]):
        if kind == "info":
            info.update(kv)
        elif kind == "check":
            check.update(kv)
        elif kind == "bulk":
            bulk.setdefault(kv["name"], []).append(kv)
        elif kind == "kload":
            kload.setdefault(kv["name"], []).append(kv)
        elif kind == "suite":
            suites.setdefault(kv["path"], {}).update(kv)
        elif kind == "records":
            records[kv.pop("path")] = kv
        elif kind == "conc":
            conc = kv

    def b(name):
        if name not in bulk:
            sys.exit(f"task_report.py: no bulk runs for {name}")
        return bulk_summary(bulk[name])

    def k(name):
        if name not in kload:
            sys.exit(f"task_report.py: no kload result for {name}")
        return kload_summary(kload[name])

    miss = {p: b(f"miss-{p}") for p in SHOALDS + ("squid-disk",)}
    miss["squid-mem"] = b("fill-squid-mem")
    hit = {p: b(f"hit-{p}") for p in SHOALDS + ("squid-disk", "squid-mem")}
    small = {p: k(f"small-{p}") for p in SHOALDS + ("squid-disk",)}

    size = info.get("size_mib", "?")
    obj = "1 GiB" if size == "1024" else f"{size} MiB"
    runs = info.get("runs", "?")

    # Which record layer each shoald's hijacked connections used: the fast
    # path is only measured if shoald-on's are libcrypto and shoald-off's
    # mbedtls. Keys are "LAYER/CIPHER", values connection counts.
    def layers(p):
        out = {}
        for key, n in records.get(p, {}).items():
            layer = key.split("/", 1)[0]
            out[layer] = out.get(layer, 0) + int(n)
        return out

    warnings = []
    for p, want in (("shoald-on", "libcrypto"), ("shoald-off", "mbedtls")):
        got = layers(p)
        if not got:
            warnings.append(f"{p}: core.log has no hijacked connection with a record layer")
        elif set(got) != {want}:
            warnings.append(f"{p}: hijacked connections by record layer {got}, expected all {want}")
    codes_miss = check.get("squid_disk_miss_codes", "")
    if set(codes_miss.split(",")) != {"TCP_MISS/200"}:
        warnings.append(f"squid disk-config misses are not all TCP_MISS: {codes_miss}")
    codes_disk = check.get("squid-disk_hit_codes", "")
    codes_mem = check.get("squid-mem_hit_codes", "")
    if any(c != "TCP_HIT/200" for c in codes_disk.split(",")[1:]) or not codes_disk.startswith("TCP_MISS"):
        warnings.append(f"squid disk hits are not all TCP_HIT: {codes_disk}")
    if any(c != "TCP_MEM_HIT/200" for c in codes_mem.split(",")[1:]) or not codes_mem.startswith("TCP_MISS"):
        warnings.append(f"squid memory hits are not all TCP_MEM_HIT: {codes_mem}")
    for p in SHOALDS:
        if check.get(f"{p}_hit_reuse") != runs:
            warnings.append(f"{p}: {check.get(f'{p}_hit_reuse')} store reuses over {runs} hits")
    for p in SHOALDS + ("squid-disk", "squid-mem"):
        if check.get(f"{p}_hit_origin_gets") != "1":
            warnings.append(f"{p}: the hit URL reached the origin {check.get(f'{p}_hit_origin_gets')} times (1 = the miss)")
    for p in SHOALDS + ("squid-disk",):
        if small[p]["errors"]:
            warnings.append(f"{p}: {small[p]['errors']} kload errors")

    def suite(p, side):
        return suites.get(p, {}).get(side, "unknown")

    def recs(p):
        r = records.get(p, {})
        return ", ".join(f"{key} x{n}" for key, n in sorted(r.items())) or "none"

    head = [
        f"Shoal task engine vs squid's caches (bench/task.sh)  {info.get('date', '')}"
        f"  {info.get('shoald', '').replace('_', ' ')} + {info.get('shoald_dirty', '?')} uncommitted files"
        " in userspace/ include/",
        f"{info.get('cpu', '').replace('_', ' ')}, kernel {info.get('kernel', '')}; proxies on cpu"
        f" {info.get('proxy_cpu')}, curl/kload/nginx on cpu {info.get('client_cpu')}; squid {info.get('squid', '')},"
        f" nginx {info.get('nginx', '')} (1 worker, TLS 1.2), curl {info.get('curl', '')}; MB = 10^6 bytes",
        "shoald: proxy.authCheck false (pure store hits), fresh --data-dir; fast path on = tls.fastRecords true"
        " (libcrypto AES-GCM records after mbedTLS's handshake), off = false (mbedTLS records)",
        "squid disk: ssl-bump, cache_dir aufs 16000 16 256, maximum_object_size 2 GB, cache_mem 256 MB, restarted"
        " before the hits; squid memory: no cache_dir, cache_mem"
        f" {info.get('squid_mem_cache_mem_mb', '?')} MB, maximum_object_size_in_memory"
        f" {info.get('squid_mem_max_obj_mb', '?')} MB",
        "TLS (curl probe, client side / origin side): "
        + "; ".join(f"{p} {suite(p, 'client')} / {suite(p, 'origin')}"
                    for p in SHOALDS + ("squid-disk", "squid-mem")),
        "core.log hijacked connections (records/cipher x count): "
        + "; ".join(f"{p}: {recs(p)}" for p in SHOALDS),
        "Background load (2 s, before servers start / after the runs): "
        + info.get("background_before", "?") + " / " + info.get("background_after", "?")
        + f"; waited {info.get('idle_waited_s', '?')} s of {info.get('idle_budget_s', '?')} s for idle cores;"
        " \"other %\" = proxy core busy outside the proxy process (loopback softirq + other jobs)",
    ]
    head += ["WARNING: " + w for w in warnings]

    pct = "{:.0f}"
    bulk_hdr = ["path", "best MB/s", "median MB/s", "CPU-s/GiB", "peak RSS MiB", "runs", "other %"]

    def bulk_row(label, s):
        return [label, show(s["best"]), show(s["median"]), show(s["cpu"], "{:.2f}"), show(s["hwm"], "{:.1f}"),
                str(s["n"]), show(s["other"], pct)]

    bulk_rows = [
        bulk_row("a. miss  shoald fast path on", miss["shoald-on"]),
        bulk_row("a. miss  shoald fast path off", miss["shoald-off"]),
        bulk_row("a. miss  squid (disk-cache config)", miss["squid-disk"]),
        bulk_row("a. miss  squid (memory-cache config: the fill)", miss["squid-mem"]),
        bulk_row("b. hit   shoald fast path on", hit["shoald-on"]),
        bulk_row("b. hit   shoald fast path off", hit["shoald-off"]),
        bulk_row("b. hit   squid disk hit", hit["squid-disk"]),
        bulk_row("b. hit   squid memory hit", hit["squid-mem"]),
    ]
    small_hdr = ["path", "req/s", "p50 ms", "p99 ms", "worst p99", "errors", "CPU us/req", "CPU-s/GiB", "other %"]
    small_rows = [
        [label, show(s["rps"]), show(s["p50"], "{:.3f}"), show(s["p99"], "{:.3f}"), show(s["p99_max"], "{:.3f}"),
         str(s["errors"]), show(s["us_per_req"], "{:.1f}"), show(s["cpu_per_gib"], "{:.0f}"), show(s["other"], pct)]
        for label, s in (("c. shoald fast path on", small["shoald-on"]), ("c. shoald fast path off", small["shoald-off"]),
                         ("c. squid 1 KiB hit", small["squid-disk"]))
    ]

    def target(text, on, off, limit, at_least, spec="{:.2f}x"):
        ok = None if on is None else (on >= limit if at_least else on <= limit)
        return [text, show(on, spec), verdict(ok), show(off, spec)]

    target_hdr = ["target (fast path on; off for reference)", "fast on", "result", "fast off"]
    def med(summaries, p):
        return summaries[p]["median"]

    target_rows = [
        target(f"{obj} hit >= {HIT_VS_DISK_MIN:g}x squid disk hit (median MB/s)",
               ratio(med(hit, "shoald-on"), med(hit, "squid-disk")),
               ratio(med(hit, "shoald-off"), med(hit, "squid-disk")), HIT_VS_DISK_MIN, True),
        target(f"{obj} hit >= {HIT_VS_MEM_MIN:g}x squid memory hit (median MB/s)",
               ratio(med(hit, "shoald-on"), med(hit, "squid-mem")),
               ratio(med(hit, "shoald-off"), med(hit, "squid-mem")), HIT_VS_MEM_MIN, True),
        target(f"{obj} miss >= {MISS_MIN:g}x squid miss (median MB/s)",
               ratio(med(miss, "shoald-on"), med(miss, "squid-disk")),
               ratio(med(miss, "shoald-off"), med(miss, "squid-disk")), MISS_MIN, True),
        target(f"1 KiB stored, {info.get('conns', '?')} conns >= {SMALL_MIN:g}x squid 1 KiB hit (median req/s)",
               ratio(small["shoald-on"]["rps"], small["squid-disk"]["rps"]),
               ratio(small["shoald-off"]["rps"], small["squid-disk"]["rps"]), SMALL_MIN, True),
        target(f"1 KiB p99 <= {P99_MAX_MS:g} ms (worst of the runs)", small["shoald-on"]["p99_max"],
               small["shoald-off"]["p99_max"], P99_MAX_MS, False, "{:.3f} ms"),
        target(f"peak RSS <= {RSS_MAX_MIB:.0f} MiB during the {obj} misses and hits",
               max(miss["shoald-on"]["hwm"], hit["shoald-on"]["hwm"]),
               max(miss["shoald-off"]["hwm"], hit["shoald-off"]["hwm"]), RSS_MAX_MIB, False, "{:.1f} MiB"),
    ]
    if conc is not None:
        cratio = int(conc["origin_bytes"]) / int(conc["size"])
        ok = abs(cratio - 1.0) < 1e-9 and conc["ok"] == conc["clients"]
        target_rows.append([f"d. {conc['clients']} concurrent clients of a fresh {obj}: origin bytes = 1.0x object",
                            f"{cratio:.2f}x", verdict(ok), "-"])

    notes = [
        f"squid access.log codes: disk-config misses {codes_miss}; disk hit URL {codes_disk};"
        f" memory hit URL {codes_mem}; 1 KiB {check.get('squid_small_codes')}, then"
        f" {check.get('squid_small_hits')} HITs during kload",
        "shoald store reuses: hits " + ", ".join(f"{p} {check.get(f'{p}_hit_reuse')}/{runs}" for p in SHOALDS)
        + "; 1 KiB " + ", ".join(f"{p} {check.get(f'{p}_small_reuse')}" for p in SHOALDS)
        + f"; origin GETs of 1k.bin: {check.get('small_origin_gets')} (3 = one per proxy)",
        "origin GETs of each hit URL (1 = its miss): "
        + ", ".join(f"{p} {check.get(f'{p}_hit_origin_gets')}" for p in SHOALDS + ("squid-disk", "squid-mem")),
        "kload suites: " + ", ".join(f"{p} {small[p]['suite']}" for p in SHOALDS + ("squid-disk",)),
    ]
    if conc is not None:
        notes.append(
            f"d: {conc['ok']}/{conc['clients']} clients got {conc['size']} bytes in {conc['seconds']} s; origin GETs"
            f" {conc['origin_gets']}, bytes {conc['origin_bytes']}; shoald-on CPU {conc['cpu_s']} s"
            f" ({float(conc['cpu_s']) / (int(conc['size']) * int(conc['clients']) / GIB):.2f} CPU-s/GiB served),"
            f" peak RSS {int(conc['hwm_kib']) / 1024:.1f} MiB")

    sections = [
        (f"Bulk: {obj} object, curl to /dev/null, each a miss on a fresh URL or a hit on the first; {runs} runs"
         " (best, median; CPU-s/GiB median, RSS max)", bulk_hdr, bulk_rows),
        (f"1 KiB stored object: {info.get('conns', '?')} keep-alive connections, {info.get('kload_seconds', '?')} s"
         f" after 1 s warm-up (build/bench/kload), {runs} runs (medians; worst p99; CPU per GiB of 1 KiB bodies)",
         small_hdr, small_rows),
        ("Targets", target_hdr, target_rows),
        ("Checks", ["what"], [[n] for n in notes]),
    ]
    write_tables(head, sections, sys.argv[2], sys.argv[3], "make bench (bench/task_report.py)")


if __name__ == "__main__":
    main()
