"""Turns bench/run's runs.jsonl into docs/bench/results.md: one table per scenario, then the
targets of the fan-out issue, each marked met or not, from the same run's figures.

    python bench/report.py RUNS.jsonl OUT.md DURATION REPS [PKG_DIR] [TIMING.json]
"""
import datetime
import gzip
import json
import os
import statistics
import sys

runs_path, out_path, duration, reps = sys.argv[1:5]
pkg_dir = sys.argv[5] if len(sys.argv) > 5 else None
timing_path = sys.argv[6] if len(sys.argv) > 6 else None
runs = [json.loads(line) for line in open(runs_path) if line.strip()]


def med(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def group(scenario):
    """(server, clients, senders, rate, via) → the runs of that configuration."""
    rows = {}
    for r in runs:
        if r["scenario"] != scenario:
            continue
        x = r["run"]
        key = (r["server"], x["clients"], x["senders"], x["rate"], x.get("send_via", "ws"))
        rows.setdefault(key, []).append(x)
    return rows


def delivered(rs):
    return med([100.0 * r["received"] / max(r["expected"], 1) for r in rs])


def fmt(v, spec):
    return "n/a" if v is None or v != v else format(v, spec)


out = [
    "# Benchmark results\n",
    f"Made by `bench/run` on {datetime.date.today()}: 64-byte messages, {duration} s of sending per "
    f"run, median of {reps} run(s) per row; each server fresh, pinned to core 0, the load "
    "generator (`bench/loadgen`) pinned to core 1, servers taking turns. hubbub runs its release "
    "build with storage on (SQLite, fsync per commit, acks after commit) in anonymous mode. "
    "Latency counts from each message's scheduled send time to its arrival at a receiver.\n",
]

# (a) fan-out steps
fan = group("fanout")
out += [
    "## Fan-out: 1,000 clients, senders at 20 msg/s\n",
    "![p99 latency against offered deliveries per second](fanout.svg)\n",
    "| server | offered/s | delivered | deliveries/s | p50 ms | p99 ms | max ms | idle RSS KiB/conn | CPU µs/delivery |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for key, rs in sorted(fan.items(), key=lambda kv: (kv[1][0]["offered_deliveries_per_sec"], kv[0][0])):
    offered = rs[0]["offered_deliveries_per_sec"]
    out.append(
        f"| {key[0]} | {offered:,.0f} | {delivered(rs):.2f}% | {med([r['deliveries_per_sec'] for r in rs]):,.0f} | "
        f"{fmt(med([r['latency_ms']['p50'] for r in rs]), '.1f')} | {fmt(med([r['latency_ms']['p99'] for r in rs]), '.1f')} | "
        f"{fmt(med([r['latency_ms']['max'] for r in rs]), '.1f')} | {fmt(med([r['rss_per_connection_kib'] for r in rs]), '.2f')} | "
        f"{fmt(med([r['cpu_us_per_delivery'] for r in rs]), '.2f')} |"
    )
servers = sorted({k[0] for k in fan})
out += ["", "Highest step fully delivered (every message to every client):", "",
        "| server | with p99 ≤ 50 ms | with p99 ≤ 20 ms |", "| --- | ---: | ---: |"]
best = {}
for s in servers:
    steps = sorted((rs[0]["offered_deliveries_per_sec"], rs) for k, rs in fan.items() if k[0] == s)
    def highest(limit):
        top = None
        for offered, rs in steps:
            if delivered(rs) >= 99.999 and med([r["latency_ms"]["p99"] for r in rs]) <= limit:
                top = offered
            else:
                break
        return top
    best[s] = (highest(50), highest(20))
    out.append(f"| {s} | {fmt(best[s][0], ',.0f')} | {fmt(best[s][1], ',.0f')} |")
out.append("")

# (b) latency at small scale, and at 1,000 × 1 × 20 (the first fan-out step)
out += ["## Latency\n", "| server | clients × senders × msg/s | delivered | p50 ms | p90 ms | p99 ms | max ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
latency_rows = list(group("small").items()) + [(k, rs) for k, rs in fan.items() if k[2] == 1]
for key, rs in sorted(latency_rows, key=lambda kv: (kv[0][1], kv[0][0])):
    out.append(
        f"| {key[0]} | {key[1]:,} × {key[2]} × {key[3]:g} | {delivered(rs):.2f}% | "
        + " | ".join(fmt(med([r["latency_ms"][q] for r in rs]), ".1f") for q in ("p50", "p90", "p99", "max"))
        + " |"
    )
out.append("")

# (c, d, e) 10,000-member room
room = group("room10k")
out += ["## A 10,000-member room, 1 sender at 2 msg/s\n",
        "\"Last member\" is the time until every member had a message (median and worst over the messages).\n",
        "| server | connected | handshakes/s | delivered | last member p50 ms | last member max ms | idle RSS KiB/conn |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for key, rs in sorted(room.items()):
    out.append(
        f"| {key[0]} | {med([r['clients'] for r in rs]):,.0f} | {fmt(med([r.get('handshakes_per_sec') for r in rs]), ',.0f')} | "
        f"{delivered(rs):.2f}% | {fmt(med([r['last_member_ms']['p50'] for r in rs]), '.1f')} | "
        f"{fmt(med([r['last_member_ms']['max'] for r in rs]), '.1f')} | {fmt(med([r['rss_per_connection_kib'] for r in rs]), '.2f')} |"
    )
out.append("")

# (d) 19,000 connections
big = group("conn19k")
out += ["## 19,000 connections, 1 sender at 2 msg/s\n",
        "| server | connected | delivered | p99 ms | last member max ms | server RSS MiB (idle) | idle RSS KiB/conn |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for key, rs in sorted(big.items()):
    idle = med([(r.get("server_rss_kib") or {}).get("idle") for r in rs])
    out.append(
        f"| {key[0]} | {med([r['clients'] for r in rs]):,.0f} | {delivered(rs):.2f}% | "
        f"{fmt(med([r['latency_ms']['p99'] for r in rs]), '.1f')} | {fmt(med([r['last_member_ms']['max'] for r in rs]), '.1f')} | "
        f"{fmt(idle / 1024 if idle == idle else idle, '.1f')} | {fmt(med([r['rss_per_connection_kib'] for r in rs]), '.2f')} |"
    )
out.append("")

# (f) HTTP POST → WebSocket fan-out
http = group("http")
out += ["## HTTP POST → 1,000 WebSocket clients (the persisted path)\n",
        "Each sender POSTs to `/api/rooms/general/messages` on its own keep-alive connection; the server "
        "stores the message, answers 201 and fans it out.\n",
        "| server | senders × msg/s | offered deliveries/s | delivered | p50 ms | p99 ms | max ms | CPU µs/delivery |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for key, rs in sorted(http.items(), key=lambda kv: kv[0][2]):
    out.append(
        f"| {key[0]} | {key[2]} × {key[3]:g} | {rs[0]['offered_deliveries_per_sec']:,.0f} | {delivered(rs):.2f}% | "
        + " | ".join(fmt(med([r["latency_ms"][q] for r in rs]), ".1f") for q in ("p50", "p99", "max"))
        + f" | {fmt(med([r['cpu_us_per_delivery'] for r in rs]), '.2f')} |"
    )
out.append("")

# Many rooms
many = [r["run"] for r in runs if r["scenario"] == "rooms200"]
one = [r["run"] for r in runs if r["scenario"] == "rooms1"]
if many or one:
    out += ["## Many rooms: 1,000 clients each in 20 of 200 rooms, 200 msg/s over the rooms\n",
            "Each client follows 20 of 200 rooms (100 followers per room); 10 senders at 20 msg/s send "
            "each message to one room in turn. Beside it, the same 200 msg/s into one room of 100 "
            "followers: the same deliveries per second, in one room instead of 200. \"Gaps\" counts "
            "seqs missing in a room a receiver follows.\n",
            "| scenario | clients | rooms | offered/s | delivered | deliveries/s | gaps | p50 ms | p99 ms | max ms | CPU µs/delivery |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, rs in (("200 rooms × 100 followers", many), ("1 room × 100 followers", one)):
        if not rs:
            continue
        out.append(
            f"| {label} | {med([r['clients'] for r in rs]):,.0f} | {med([r.get('rooms', 1) for r in rs]):,.0f} | "
            f"{med([r['offered_deliveries_per_sec'] for r in rs]):,.0f} | {delivered(rs):.2f}% | "
            f"{med([r['deliveries_per_sec'] for r in rs]):,.0f} | {med([r['gaps'] for r in rs]):,.0f} | "
            + " | ".join(fmt(med([r["latency_ms"][q] for r in rs]), ".1f") for q in ("p50", "p99", "max"))
            + f" | {fmt(med([r['cpu_us_per_delivery'] for r in rs]), '.2f')} |"
        )
    settled = [r["settle"] for r in many if r.get("settle")]
    if settled:
        out += ["", "Not timed: while the 1,000 accounts connect, each client receives the presence of "
                f"everyone who comes online (all are in `general`): {med([s['frames_per_client'] for s in settled]):,.0f} "
                f"frames, {med([s['bytes_per_client'] for s in settled]) / 1024:,.1f} KiB per client, read "
                f"until quiet {med([s['secs'] for s in settled]):.1f} s after the last connect. The run "
                "starts after that."]
    out.append("")

# Typing and presence beside the messages
sig_with = [r["run"] for r in runs if r["scenario"] == "signals-yes"]
sig_without = [r["run"] for r in runs if r["scenario"] == "signals-no"]
if sig_with or sig_without:
    out += ["## Typing and presence beside the messages\n",
            "1,000 clients (204 accounts, the rest guests), 4 senders at 20 msg/s (80,000 deliveries/s). "
            "With signals, each sender also sends `typing` every 3 s and 200 accounts flap their "
            "presence (idle, active) every 10 s; without, the same messages alone. Typing is relayed in "
            "this room (its limit of 100 members lifted), so each note reaches every client; the accounts "
            "say hello as a browser tab does, so they send and receive presence. Latency is of the "
            "messages only; \"signal frames\" are the typing and presence frames all clients received.\n",
            "| run | delivered | deliveries/s | signal frames received/s | p50 ms | p99 ms | max ms | CPU µs/delivery |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, rs in (("messages alone", sig_without), ("with typing and presence", sig_with)):
        if not rs:
            continue
        signals = med([r.get("signals_received", float("nan")) / float(duration) for r in rs])
        out.append(
            f"| {label} | {delivered(rs):.2f}% | {med([r['deliveries_per_sec'] for r in rs]):,.0f} | "
            f"{fmt(signals, ',.0f')} | "
            + " | ".join(fmt(med([r["latency_ms"][q] for r in rs]), ".1f") for q in ("p50", "p99", "max"))
            + f" | {fmt(med([r['cpu_us_per_delivery'] for r in rs]), '.2f')} |"
        )
    out.append("")

# The browser side
client_total = None
if pkg_dir and os.path.isdir(pkg_dir):
    try:
        import brotli
    except ImportError:
        brotli = None
    out += ["## The release client\n", "| file | raw bytes | gzip -9 | brotli -q 11 |", "| --- | ---: | ---: | ---: |"]
    total = [0, 0, 0]
    for name in sorted(os.listdir(pkg_dir)):
        if not name.endswith((".wasm", ".js", ".css")):
            continue
        data = open(os.path.join(pkg_dir, name), "rb").read()
        sizes = [len(data), len(gzip.compress(data, 9)), len(brotli.compress(data, quality=11)) if brotli else None]
        total = [t + (s or 0) for t, s in zip(total, sizes)]
        out.append(f"| {name} | " + " | ".join(fmt(s, ",") for s in sizes) + " |")
    out.append(f"| all | {total[0]:,} | {total[1]:,} | {total[2]:,} |")
    client_total = total[2] if brotli else None
    out.append("")
timing = None
if timing_path and os.path.exists(timing_path):
    timing = json.load(open(timing_path))
    out += [f"Navigation to a hydrated page: {timing['hydrated_ms']:.0f} ms; to a connected one: "
            f"{timing['connected_ms']:.0f} ms (median of {timing['runs']} reloads in headless Chromium, "
            "measured by Playwright in the page, release build, loopback).\n"]

# Targets
def hub(scenario, **want):
    for key, rs in group(scenario).items():
        if key[0] == "hubbub-v1" and all(rs[0][k] == v for k, v in want.items()):
            return rs
    return None

targets = []
v1 = best.get("hubbub-v1")
top_step = max((rs[0]["offered_deliveries_per_sec"] for rs in fan.values()), default=None)
if v1:
    targets.append(("every step to 320k fully delivered with p99 ≤ 20 ms",
                    v1[1] is not None and v1[1] >= 320_000,
                    f"highest such step: {fmt(v1[1], ',.0f')} (steps run up to {fmt(top_step, ',.0f')})"))
rs = hub("fanout", senders=8)
if rs:
    cpu = med([r["cpu_us_per_delivery"] for r in rs])
    targets.append(("CPU ≤ 3 µs per delivery at 160k offered", cpu <= 3, f"{cpu:.2f} µs"))
rs = hub("fanout", senders=1)
if rs:
    mine = med([r["latency_ms"]["p99"] for r in rs])
    peers = {k[0]: med([r["latency_ms"]["p99"] for r in x]) for k, x in fan.items()
             if k[2] == 1 and not k[0].startswith("hubbub")}
    targets.append(("p99 at 1,000 clients × 20 msg/s below every peer's", all(mine < p for p in peers.values()),
                    f"hubbub-v1 {mine:.1f} ms; " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(peers.items()))))
rs = hub("room10k")
if rs:
    kib = med([r["rss_per_connection_kib"] for r in rs])
    targets.append(("≤ 4 KiB RSS per idle connection at 10,000", kib <= 4, f"{kib:.2f} KiB"))
rs = hub("conn19k")
if rs:
    p99 = med([r["latency_ms"]["p99"] for r in rs])
    ok = delivered(rs) >= 99.999 and med([r["clients"] for r in rs]) >= 19000 and p99 <= 50
    targets.append(("19,000 connections held, 2 msg/s sender p99 ≤ 50 ms", ok,
                    f"{med([r['clients'] for r in rs]):,.0f} connected, {delivered(rs):.2f}% delivered, p99 {p99:.1f} ms"))
if sig_with and sig_without:
    p_with = med([r["latency_ms"]["p99"] for r in sig_with])
    p_without = med([r["latency_ms"]["p99"] for r in sig_without])
    targets.append(("message p99 with typing and presence within 20% of without", p_with <= 1.2 * p_without,
                    f"{p_with:.1f} ms with, {p_without:.1f} ms without ({(p_with / p_without - 1) * 100:+.0f}%)"))
if client_total:
    targets.append(("release client ≤ 250 KB brotli", client_total <= 250_000, f"{client_total:,} B"))
out += ["## Targets\n", "| target | met | measured |", "| --- | --- | --- |"]
out += [f"| {t} | {'yes' if ok else '**no**'} | {m} |" for t, ok, m in targets]

open(out_path, "w").write("\n".join(out) + "\n")
print("\n".join(out))
