#!/usr/bin/env python3
"""Turns the raw runs of bench/compare.sh into bench/COMPARISON.md (tables,
machine, exact commands, the issue-4 targets) and bench/comparison.json (the
medians, read by the chart tool `compare-charts`).

    report.py WORK_DIR OUT.md OUT.json --repeats N --seconds S --hold S
              --quick 0|1 --idle-connections N --elapsed S --command TEXT

WORK_DIR holds runs.tsv (case, kind, server, repeat, status, server RSS after
the run, wall seconds, server threads), commands.tsv (case, server, command) and
runs/CASE-SERVER-REPEAT.json (each `wshub bench --json` summary).
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

SERVERS = ["wshub", "ws", "tokio-tungstenite", "fastwebsockets", "wshub+deflate"]
PEERS = ["ws", "tokio-tungstenite", "fastwebsockets"]
CASES = {
    "echo-100x64": ("echo", "echo, 100 connections × 64 B"),
    "echo-1000x64": ("echo", "echo, 1000 connections × 64 B"),
    "echo-100x16k": ("echo", "echo, 100 connections × 16 KiB"),
    "fanout-1000": ("fanout", "fan-out to 1,000 receivers × 64 B"),
    "fanout-5000": ("fanout", "fan-out to 5,000 receivers × 64 B"),
    "fanout-5000-r20": ("fanout", "fan-out to 5,000 receivers × 64 B at 20 messages/s"),
    "idle": ("idle", "idle connections"),
    "hub-5000": ("hub", "hub: 5,000 subscribers of one channel × 64 B"),
    "deflate-fanout-5000": ("fanout", "permessage-deflate: fan-out to 5,000 receivers × 64 B"),
    "deflate-fanout-5000-r20": ("fanout", "permessage-deflate: fan-out to 5,000 receivers × 64 B "
                                "at 20 messages/s"),
    "deflate-idle": ("idle", "permessage-deflate: idle connections after one 40 KiB message"),
}


def is_deflate(case_id):
    return case_id.startswith("deflate-")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load_runs(work):
    runs = []
    with open(os.path.join(work, "runs.tsv")) as f:
        for line in f:
            case, kind, server, rep, status, rss, wall, threads = line.rstrip("\n").split("\t")
            path = os.path.join(work, "runs", f"{case}-{server}-{rep}.json")
            data = None
            if os.path.exists(path):
                with open(path) as j:
                    data = json.load(j)
            runs.append({
                "case": case, "kind": kind, "server": server, "repeat": int(rep),
                "ok": status == "ok" and data is not None, "rss": int(float(rss or 0)),
                "wall": float(wall), "threads": int(threads or 0), "data": data,
            })
    return runs


def summarise(case, kind, server, runs):
    """The median figures of one server in one case."""
    # Run 0 counted the server's syscalls (the tracepoints slow it down):
    # its counts are used, none of its other figures.
    counting = [r["data"] for r in runs if r["ok"] and r["repeat"] == 0]
    runs = [r for r in runs if r["repeat"] != 0]
    ok = [r for r in runs if r["ok"]]
    row = {"case": CASES[case][1], "case_id": case, "kind": kind, "server": server,
           "runs": len(runs), "runs_ok": len(ok)}
    if not ok:
        return row
    d = [r["data"] for r in ok]
    if kind == "idle":
        per = []
        for x in d:
            before, opened = x.get("server_rss_before"), x.get("opened") or 0
            peak = max(x.get("server_rss_open") or 0, x.get("server_rss_end") or 0)
            if before is not None and opened:
                per.append((peak - before) / opened)
        row.update({
            "connections": median([x.get("opened") for x in d]),
            "rss_before": median([x.get("server_rss_before") for x in d]),
            "rss_open": median([x.get("server_rss_open") for x in d]),
            "rss_end": median([x.get("server_rss_end") for x in d]),
            "bytes_per_conn": median(per),
            "pings_answered": median([x.get("pings_answered") for x in d]),
            "dropped": sum(x.get("dropped", 0) for x in d),
        })
        return row
    if kind == "echo":
        tput = median([x.get("msg_per_sec") for x in d])
        cpu = median([x.get("server_cpu_us_per_msg") for x in d])
        problems = sum(x.get("errors", 0) for x in d)
    else:
        tput = median([x.get("deliveries_per_sec") for x in d])
        cpu = median([x.get("server_cpu_us_per_delivery") for x in d])
        problems = sum(x.get(k, 0) for x in d
                       for k in ("lost", "duplicates", "out_of_order", "errors"))
    core = median([(x.get("server_cpu_us_per_msg") or x.get("server_cpu_us_per_delivery") or 0)
                   * (x.get("msg_per_sec") or x.get("deliveries_per_sec") or 0) / 1e4
                   for x in d])
    row.update({
        "throughput": tput,
        "kernel_percent": median([x.get("server_kernel_percent") for x in d]),
        "calls": {k: median([x.get(f"server_{k}_calls_per_msg") for x in counting])
                  for k in ("send", "recv", "poll")},
        "p50_ms": median([x.get("p50_ms") for x in d]),
        "p99_ms": median([x.get("p99_ms") for x in d]),
        "cpu_us_per_msg": cpu,
        "per_cpu_second": (1e6 / cpu) if cpu else None,
        "server_core_percent": core,
        "generator_percent": median([x.get("generator_cpu_percent") for x in d]),
        "rss": median([r["rss"] for r in ok]),
        "problems": problems,
    })
    return row


CALLS_HEAD = "send / recv / poll calls per msg"


def calls_cell(r):
    """Syscalls per message (per delivery in fan-out), or – when uncounted."""
    c = r.get("calls") or {}
    if any(c.get(k) is None for k in ("send", "recv", "poll")):
        return "–"
    return " / ".join(f"{c[k]:.2f}" for k in ("send", "recv", "poll"))


def kernel_us(r):
    """The server's kernel CPU time per message, µs, if measured."""
    if r.get("cpu_us_per_msg") is None or r.get("kernel_percent") is None:
        return None
    return r["cpu_us_per_msg"] * r["kernel_percent"] / 100


def fmt(v, spec=",.0f", none="–"):
    return none if v is None else format(v, spec)


def mib(b):
    return None if b is None else b / (1 << 20)


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(root):
    model, cpus = "unknown CPU", 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                cpus += 1
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    u = platform.uname()
    lock = open(os.path.join(root, "bench/compare/Cargo.lock")).read()

    def locked(name):
        m = re.search(r'name = "' + re.escape(name) + r'"\nversion = "([^"]+)"', lock)
        return m.group(1) if m else "?"

    ws_version = "?"
    try:
        with open(os.path.join(root, "bench/node/node_modules/ws/package.json")) as f:
            ws_version = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        pass
    return {
        "cpu": f"{cpus} × {model}", "memory": mem,
        "kernel": f"{u.system} {u.release} {u.machine}",
        "rustc": sh(["rustc", "-V"]), "node": sh(["node", "--version"]),
        "ws": ws_version, "tokio-tungstenite": locked("tokio-tungstenite"),
        "fastwebsockets": locked("fastwebsockets"), "tokio (peers)": locked("tokio"),
    }


def threads_seen(runs):
    seen = {}
    for r in runs:
        if r["threads"]:
            seen.setdefault(r["server"], set()).add(r["threads"])
    return ", ".join(f"{s} {'/'.join(map(str, sorted(t)))}" for s, t in seen.items()) or "–"


def possessive(name):
    return name + ("'" if name.endswith("s") else "'s")


def verdict(ok):
    return "**met**" if ok else "**not met**"


OUT_OF_REACH = "out of reach of wshub's own code"


def where_cpu_goes(rows):
    """Bullets on the kernel's share and the syscalls, from the figures."""
    loaded = [r for r in rows if r["kind"] in ("echo", "fanout", "hub")
              and r.get("kernel_percent") is not None and not is_deflate(r["case_id"])]
    if not loaded:
        return []
    shares = [r["kernel_percent"] for r in loaded]
    mine = ", ".join(f"{r['case_id']} {r['kernel_percent']:.0f} %"
                     for r in loaded if r["server"] == "wshub")
    L = [f"- The kernel's share of the servers' CPU (stime over utime + stime) is "
         f"{min(shares):.0f}–{max(shares):.0f} % across the loaded cases; wshub's: {mine}."]
    counted = {(r["case_id"], r["server"]): r["calls"]["send"]
               for r in loaded if calls_cell(r) != "–"}
    pairs = []
    for case in dict.fromkeys(r["case_id"] for r in loaded):
        mine = counted.get((case, "wshub"))
        peer_case = "fanout-5000-r20" if case == "hub-5000" else case
        theirs = counted.get((peer_case, "fastwebsockets"))
        if mine is not None and theirs is not None:
            pairs.append(f"{case} {mine:.2f} vs {theirs:.2f}")
    if pairs:
        L.append("- Send calls per message (per delivery in fan-out), wshub vs fastwebsockets "
                 "(the hub against the broadcast at the same rate): " + ", ".join(pairs) + ". "
                 "A server that makes as many sends pays about as much kernel time per "
                 "message: on loopback a send also runs the receiving socket's TCP path, on "
                 "the sender's core. A server at 100 % of its core falls behind even at 20 "
                 "messages/s and then batches: fewer sends, later deliveries.")
    L.append(f"- \"{OUT_OF_REACH}\" marks a target that asks for less CPU per message than "
             "wshub's kernel time alone: no change to wshub's own code can meet it while "
             "the calls per message stay as they are.")
    return L + [""]


def targets(rows):
    """The issue-4 targets, each as (text, met or None when unmeasured)."""
    def get(case, server):
        return next((r for r in rows if r["case_id"] == case and r["server"] == server), None)

    out = []
    for case in ("echo-100x64", "echo-1000x64", "echo-100x16k"):
        w = get(case, "wshub")
        if not w or w.get("cpu_us_per_msg") is None:
            continue
        f, n = get(case, "fastwebsockets"), get(case, "ws")
        parts, met = [], True
        for peer, limit in ((f, 0.8), (n, 0.5)):
            if peer and peer.get("cpu_us_per_msg"):
                ratio = w["cpu_us_per_msg"] / peer["cpu_us_per_msg"]
                met &= ratio <= limit
                text = f"CPU/msg {ratio:.2f}× {possessive(peer['server'])} (target ≤ {limit}×)"
                floor = kernel_us(w)
                if ratio > limit and floor is not None and floor / peer["cpu_us_per_msg"] > limit:
                    text += (f", {OUT_OF_REACH}: its kernel time alone is "
                             f"{floor / peer['cpu_us_per_msg']:.2f}×")
                parts.append(text)
        peers = [get(case, s) for s in PEERS]
        best = max((p["throughput"] for p in peers if p and p.get("throughput")), default=None)
        if best:
            met &= w["throughput"] >= best
            parts.append(f"throughput {w['throughput'] / best:.2f}× the best peer's (target ≥ 1×)")
        if parts:
            out.append((f"{CASES[case][1]}: " + "; ".join(parts), met))
    # The hub case publishes 20 messages/s; its peers are the broadcast
    # servers at the same offered load, not at saturation (where many
    # deliveries share one write).
    for case, peer_case in (("fanout-1000", "fanout-1000"), ("fanout-5000", "fanout-5000"),
                            ("fanout-5000-r20", "fanout-5000-r20"),
                            ("hub-5000", "fanout-5000-r20")):
        w = get(case, "wshub")
        if not w or not w.get("per_cpu_second"):
            continue
        parts, met = [], True
        for name, limit in (("fastwebsockets", 2), ("ws", 3)):
            p = get(peer_case, name)
            if p and p.get("per_cpu_second"):
                ratio = w["per_cpu_second"] / p["per_cpu_second"]
                met &= ratio >= limit
                text = (f"deliveries per server CPU-second {ratio:.2f}× {possessive(name)} "
                        f"(target ≥ {limit}×)")
                floor = kernel_us(w)
                if ratio < limit and floor and p["cpu_us_per_msg"] / floor < limit:
                    text += (f", {OUT_OF_REACH}: with no user-space time at all it would be "
                             f"{p['cpu_us_per_msg'] / floor:.2f}×")
                parts.append(text)
        p99s = [get(peer_case, s) for s in PEERS]
        worst = [p["p99_ms"] for p in p99s if p and p.get("p99_ms") is not None]
        if worst and w.get("p99_ms") is not None:
            met &= w["p99_ms"] <= min(worst)
            parts.append(f"p99 {w['p99_ms']:.2f} ms vs the peers' best {min(worst):.2f} ms (target ≤)")
        if not parts:
            continue
        label = CASES[case][1]
        if case != peer_case:
            label += f" (against the peers' {CASES[peer_case][1]})"
        out.append((f"{label}: " + "; ".join(parts), met))
    w = get("idle", "wshub")
    if w and w.get("bytes_per_conn") is not None:
        per = w["bytes_per_conn"]
        million = (w["rss_before"] + per * 1_000_000) / (1 << 30)
        out.append((f"idle: {per:,.0f} B of server RSS per connection at {w['connections']:,.0f} "
                    f"connections with heartbeat on (target ≤ 2,048 B); extrapolated to "
                    f"1,000,000 connections: {million:.2f} GiB "
                    f"({mib(w['rss_before']):.1f} MiB base + {per:,.0f} B × 10⁶)", per <= 2048))
    # permessage-deflate: the same server and load with compression negotiated
    # and without, measured alternately in the same run.
    for case in ("deflate-fanout-5000", "deflate-fanout-5000-r20"):
        off, on = get(case, "wshub"), get(case, "wshub+deflate")
        if off and on and off.get("cpu_us_per_msg") and on.get("cpu_us_per_msg"):
            ratio = on["cpu_us_per_msg"] / off["cpu_us_per_msg"]
            out.append((f"{CASES[case][1]}: server CPU per delivery with compression "
                        f"{on['cpu_us_per_msg']:.2f} µs vs {off['cpu_us_per_msg']:.2f} µs without, "
                        f"{ratio:.2f}× (target ≤ 1.5×)", ratio <= 1.5))
    off, on = get("deflate-idle", "wshub"), get("deflate-idle", "wshub+deflate")
    if off and on and off.get("bytes_per_conn") is not None and on.get("bytes_per_conn") is not None:
        extra = on["bytes_per_conn"] - off["bytes_per_conn"]
        out.append((f"{CASES['deflate-idle'][1]}: {on['bytes_per_conn']:,.0f} B per connection "
                    f"with compression vs {off['bytes_per_conn']:,.0f} B without at "
                    f"{on['connections']:,.0f} connections: {extra:,.0f} B "
                    f"({extra / 1024:.1f} KiB) extra per compressing connection "
                    "(target ≤ 64 KiB)", extra <= 64 * 1024))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("out_md")
    ap.add_argument("out_json")
    for k in ("repeats", "seconds", "hold", "quick", "idle-connections", "elapsed"):
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--command", required=True)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    runs = load_runs(a.work)
    rows = []
    for case, (kind, _) in CASES.items():
        for server in SERVERS:
            mine = [r for r in runs if r["case"] == case and r["server"] == server]
            if mine:
                rows.append(summarise(case, kind, server, mine))
    commands = {}
    with open(os.path.join(a.work, "commands.tsv")) as f:
        for line in f:
            case, server, cmd = line.rstrip("\n").split("\t")
            commands.setdefault((case, server), cmd)
    m = machine(root)
    load = [open(os.path.join(a.work, n)).read().split()[:3] for n in ("load-start", "load-end")]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    with open(a.out_json, "w") as f:
        json.dump({"date": now, "quick": bool(a.quick), "repeats": a.repeats,
                   "seconds": a.seconds, "machine": m, "servers": SERVERS,
                   "rows": rows}, f, indent=1)
        f.write("\n")

    L = []
    if a.quick:
        L += ["> **SMOKE RUN (`--quick`), not the benchmark result:** "
              f"{a.repeats} repeat × {a.seconds} s per case, idle hold {a.hold} s, on a machine "
              f"busy with other builds (load average {' '.join(load[0])} at the start). "
              "It shows that every server and case runs; the figures are not fit for "
              "comparison. Run `bench/compare.sh` on a quiet machine for the real table.", ""]
    L += ["# wshub side by side: echo, fan-out, idle memory, hub", "",
          f"Generated by `{a.command}` on {now} in {a.elapsed} s "
          "(by `bench/compare/report.py`; charts in `bench/charts/`, medians in "
          "`bench/comparison.json`).", "",
          "## Setup", "",
          f"- Machine: {m['cpu']}, {m['memory']}, {m['kernel']}; {m['rustc']}; "
          f"Node {m['node']}.",
          f"- Load average (1, 5, 15 min): {' '.join(load[0])} at the start, "
          f"{' '.join(load[1])} at the end.",
          f"- Servers: wshub's `echo` and `broadcast` examples (`crates/wshub/examples`); "
          f"Node `ws` {m['ws']} running the seed's code (`bench/node/echo.js`, "
          f"`broadcast.js`); tokio-tungstenite {m['tokio-tungstenite']} and fastwebsockets "
          f"{m['fastwebsockets']} (`bench/compare/src/bin/`, tokio {m['tokio (peers)']}). "
          "Every broadcast server relays each message to all other open clients, "
          "as the seed's `client !== ws && readyState === OPEN`.",
          "- Runtime: every Rust server uses `#[tokio::main]` (multi-threaded, one worker "
          "per CPU the process may use), like wshub's examples; pinned by `taskset -c 0`, "
          "that is one worker on one core. Node runs JavaScript on one thread. Threads "
          "per server process (from /proc, after its runs): " + threads_seen(runs) + ".",
          "- Load: `wshub bench` (the same client for every server, one thread) pinned to "
          "CPU 1. Echo: one message in flight per connection, text. Fan-out: one sender "
          "keeps 8 messages ahead of the slowest receiver (saturation), or sends 20 "
          "messages/s (the case marked so: the hub case's offered load, 100,000 "
          "deliveries/s, its peers' side; at a low rate each delivery is a write of its "
          "own, at saturation many share one). Idle: a fresh echo "
          "server per run, connections from 127.0.0.2–254, wshub's heartbeat pinging every "
          "5 s; bytes per connection = (max(RSS all open, RSS end of hold) − RSS before) / N. "
          "Hub: `wshub serve` (memory broker), 20 publications/s through "
          "`POST /api/publish`.",
          f"- Each case: {a.repeats} run(s) per server, {a.seconds} s measured (echo after a "
          "1 s warm-up), servers alternating in a rotated order; the tables give medians. "
          "Server CPU is utime+stime from `/proc/PID/stat` over the measured window; "
          "server RSS is VmRSS after the run; \"core %\" is the server's CPU share of its "
          "core and \"gen %\" the generator's, over the window; \"kernel %\" is the "
          "kernel's share of the server's CPU (stime over utime + stime), and the syscall "
          "column the server's send, receive and poll calls per message (sendto, sendmsg, "
          "write, writev / recvfrom, recvmsg, read, readv / epoll_wait, epoll_pwait, "
          "epoll_pwait2), counted by `perf stat` over the measured window of one more "
          "run per server and case (`wshub bench --count-syscalls`; the tracepoints slow "
          "every syscall, so that run's other figures are not used; – where perf cannot "
          "count them).",
          ""]

    def table(kind, head, cells, deflate=False, title=None):
        """A table of the rows of `kind`, under `title` if any: nothing at all
        when no case of that kind ran (`--cases` picks a subset)."""
        sel = [r for r in rows if r["kind"] == kind and is_deflate(r["case_id"]) == deflate]
        if not sel:
            return
        if title:
            L.extend([title, ""])
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        for r in sel:
            L.append("| " + " | ".join(cells(r)) + " |")
        L.append("")

    def loaded(r):
        return [r["case"], r["server"], fmt(r.get("throughput")), fmt(r.get("p50_ms"), ".2f"),
                fmt(r.get("p99_ms"), ".2f"), fmt(r.get("cpu_us_per_msg"), ".2f"),
                fmt(r.get("per_cpu_second")), fmt(r.get("kernel_percent"), ".0f"),
                calls_cell(r), fmt(r.get("server_core_percent"), ".0f"),
                fmt(r.get("generator_percent"), ".0f"), fmt(mib(r.get("rss")), ".1f"),
                fmt(r.get("problems"), "d"), f"{r['runs_ok']}/{r['runs']}"]

    def loaded_head(rate, cost, per_cpu, problems):
        return ["case", "server", rate, "p50 ms", "p99 ms", cost, per_cpu, "kernel %",
                CALLS_HEAD, "core %", "gen %", "RSS MiB", problems, "runs ok"]

    delivery_head = loaded_head("deliveries/s", "server CPU µs/delivery",
                                "deliveries per server CPU-s", "lost+dup+ooo+errors")
    table("echo", loaded_head("msg/s", "server CPU µs/msg", "msg per server CPU-s", "errors"),
          loaded, title="## Echo")
    table("fanout", delivery_head, loaded, title="## Fan-out (broadcast examples)")
    idle_head = ["server", "connections", "RSS before MiB", "RSS all open MiB",
                 "RSS end of hold MiB", "bytes per connection", "pings answered",
                 "dropped", "runs ok"]

    def idle_cells(r):
        return [r["server"], fmt(r.get("connections")), fmt(mib(r.get("rss_before")), ".1f"),
                fmt(mib(r.get("rss_open")), ".1f"), fmt(mib(r.get("rss_end")), ".1f"),
                fmt(r.get("bytes_per_conn")), fmt(r.get("pings_answered")),
                fmt(r.get("dropped"), "d"), f"{r['runs_ok']}/{r['runs']}"]

    table("idle", idle_head, idle_cells, title="## Idle connections")
    table("hub", delivery_head, loaded, title="## Hub fan-out (wshub only)")

    if any(is_deflate(r["case_id"]) for r in rows):
        L += ["## permessage-deflate (wshub only)", "",
              "The same server with compression negotiated (`wshub+deflate`: the generator "
              "offers permessage-deflate with `--deflate`, default parameters) and without "
              "(`wshub`), alternating in the same run. Fan-out: the `broadcast` example, which "
              "compresses each message once for all receivers (the 64 B payload deflates to "
              "47 B). Memory: a fresh `echo` server per run; each `--deflate` connection sends "
              "one 40 KiB compressed message and gets its echo before it goes idle, so the "
              "server's decompressor has used its whole 32 KiB window (the client keeps its "
              "compression context, as browsers do, so the server keeps a decompressor per "
              "connection).", ""]
        table("fanout", delivery_head, loaded, deflate=True)
        table("idle", idle_head, idle_cells, deflate=True)
    L += ["## Issue-4 targets", ""]
    if a.quick:
        L += ["(Computed from the smoke figures: they say nothing yet.)", ""]
    for text, met in targets(rows):
        L.append(f"- {verdict(met)}: {text}")
    L += [""]
    gone = where_cpu_goes(rows)
    if gone:
        L += ["## Where the server CPU goes", ""] + gone
    L += ["## Charts", "",
          "![throughput](charts/throughput.png)", "",
          "![server CPU per message](charts/cpu-per-message.png)", "",
          "![latency](charts/latency.png)", "",
          "![idle memory](charts/idle-memory.png)", "",
          "## Exact commands", "",
          "Built with `cargo build --release --locked -p wshub --example echo --example "
          "broadcast -p wshub-cli --bin wshub` and `cargo build --release --locked --manifest-path "
          "bench/compare/Cargo.toml`; `$BIN` is the release directory, `$PORT` the server's "
          "port, `$SERVER_PID` its process. Servers run as `taskset -c 0 SERVER "
          "127.0.0.1:$PORT` (`$BIN/examples/echo`, `node bench/node/echo.js`, "
          "`$BIN/tungstenite-echo`, `$BIN/fastws-echo`, and the `broadcast` ones); the hub "
          "as `taskset -c 0 $BIN/wshub serve --config bench/hub.toml --listen 127.0.0.1:$PORT`.",
          "", "```text"]
    seen = set()
    for (case, server), cmd in commands.items():
        if (case, cmd) in seen:
            continue
        seen.add((case, cmd))
        L.append(f"# {case}")
        L.append(cmd)
    L += ["```", ""]
    walls = {}
    for r in runs:
        walls.setdefault(r["case"], []).append(r["wall"])
    L += ["Wall time per run (s, median): " + ", ".join(
        f"{c} {statistics.median(w):.0f}" for c, w in walls.items()) + ".", ""]
    with open(a.out_md, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {a.out_md} and {a.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
