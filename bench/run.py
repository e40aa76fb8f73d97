#!/usr/bin/env python3
"""Run every stack in bench/peers and roost under the same load, side by side, and write
docs/performance.md.

    python3 bench/run.py [--runs N]                    # every table, into docs/performance.md
    python3 bench/run.py --only SCENARIO,... --merge   # measure some tables again
    python3 bench/run.py [--quick] [--only SCENARIO,...] [--stacks NAME,...] --out FILE  # a trial

Each server runs the bench app (echo on any path, /room/<name> to the other members), pinned
to core 0 with taskset; the load generator (`roost bench`, the same for every stack) is
pinned to core 1. Every scenario runs N times per stack (default 3) and the median is kept.
Figures are only ever ratios within one run of this script: the machine is shared and noisy.

Prerequisites (bench/peers/README.md): `cargo build --release -p roost-cli`,
`cargo build --release --manifest-path bench/peers/rust/Cargo.toml`, `npm ci --prefix
bench/peers`. Stacks whose binaries are missing are reported as such, not skipped silently.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PEERS = ROOT / "bench" / "peers"
ROOST = ROOT / "target" / "release" / "roost"
RUST_PEERS = PEERS / "rust" / "target" / "release"
BUN = PEERS / "node_modules" / ".bin" / "bun"

STACKS = {
    "roost": [str(ROOST), "serve", "--app", "bench", "--listen", "{addr}"],
    "tokio-tungstenite": [str(RUST_PEERS / "tungstenite-server"), "--listen", "{addr}"],
    "fastwebsockets": [str(RUST_PEERS / "fastwebsockets-server"), "--listen", "{addr}"],
    "bun": [str(BUN), str(PEERS / "bun" / "server.js"), "--listen", "{addr}"],
    "node-ws": ["node", str(PEERS / "node-ws" / "server.js"), "--listen", "{addr}"],
    "raw-tcp": [str(RUST_PEERS / "raw-tcp-echo"), "--listen", "{addr}"],
}
COMPRESSION = {"roost", "bun", "node-ws"}


@dataclass
class Scenario:
    name: str
    title: str
    args: list[str]
    metric: str          # key in the JSON report
    unit: str
    higher_is_better: bool = True
    raw_tcp: bool = True  # whether the raw TCP ceiling takes part
    stacks: set[str] | None = None
    notes: str = ""
    timed: bool = True  # takes --duration and --warmup (idle measures once, after settling)


SCENARIOS = [
    Scenario("echo64", "Echo 64 B, 100 connections x 16 in flight",
             ["echo", "-c", "100", "-p", "16", "-s", "64"], "msgs_per_s", "msgs/s"),
    Scenario("echo16k", "Echo 16 KiB, 10 connections x 4 in flight",
             ["echo", "-c", "10", "-p", "4", "-s", "16384"], "mib_per_s", "MiB/s"),
    Scenario("latency", "Latency, 1 connection, 64 B strict ping-pong (p99)",
             ["latency", "-s", "64"], "round_trip.p99_us", "us p99",
             higher_is_better=False, raw_tcp=False),
    Scenario("broadcast", "Broadcast, 1,000 subscribers, 64 B, maximum rate",
             ["broadcast", "-n", "1000", "-s", "64"], "deliveries_per_s", "deliveries/s",
             raw_tcp=False),
    Scenario("idle", "Idle connections: server RSS per connection, 19,500 connections",
             ["idle", "-c", "19500"], "bytes_per_connection", "bytes/conn",
             higher_is_better=False, raw_tcp=False, timed=False),
    Scenario("connect", "Connections per second (opening and closing handshakes)",
             ["connect", "-c", "16"], "connections_per_s", "conn/s", raw_tcp=False),
    Scenario("deflate", "Compressed echo, 1 KiB JSON-like text, permessage-deflate",
             ["echo", "-c", "50", "-p", "8", "-s", "1024", "--text", "--payload", "json",
              "--deflate"], "msgs_per_s", "msgs/s", raw_tcp=False, stacks=COMPRESSION),
]


# The client scenario: the same echo load (64 B x 100 connections x 16 in flight, every echo
# checked) driven by each client library against roost's bench server.
CLIENT_LOAD = ["-c", "100", "-p", "16", "-s", "64"]
CLIENTS = {
    "roost": [str(ROOST), "bench", "echo", *CLIENT_LOAD, "--json"],
    "tokio-tungstenite": [str(RUST_PEERS / "tungstenite-client"), *CLIENT_LOAD],
}
CLIENT_SCENARIO = Scenario(
    "client", "Client: echo 64 B, 100 connections x 16 in flight, against roost's server",
    ["echo", *CLIENT_LOAD], "msgs_per_s", "msgs/s", raw_tcp=False)


def free_addr() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def wait_for(addr: str, deadline: float) -> bool:
    host, port = addr.rsplit(":", 1)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def pin(core: int, command: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] + command) if shutil.which("taskset") else command


def dig(report: dict, path: str):
    value = report
    for key in path.split("."):
        value = value[key]
    return value


@dataclass
class Result:
    values: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    error: str | None = None
    # CPU use over each run (1.0 = one core busy for the whole run): the load generator's (in
    # the client scenario, the client's) and the server's. A side near 1.0 is the limit.
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@contextlib.contextmanager
def serving(command: list[str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """Runs a server (`{addr}` in `command` becomes a free address) pinned to core 0 until
    the block ends; yields its address and process."""
    addr = free_addr()
    server = subprocess.Popen(pin(0, [part.replace("{addr}", addr) for part in command]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        if not wait_for(addr, time.monotonic() + 20):
            raise RuntimeError("the server did not start listening")
        yield addr, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_load(command: list[str], server: subprocess.Popen, timeout: float) -> tuple[dict, float, float]:
    """Runs the load `command` against `server`: its JSON report, and the CPU use of the load
    and of the server over the run (1.0 = one core busy for all of it), which tell which side
    was the limit."""
    # The CPU time of reaped children grows by the load's alone: the server is reaped only
    # after it. taskset execs the server, so the pid is the server's own.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu_seconds(server.pid)
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("the load generator did not finish") from None
    wall = time.monotonic() - started
    server_cpu = (process_cpu_seconds(server.pid) - server_before) / wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
    load_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall
    return json.loads(done.stdout.strip().splitlines()[-1]), load_cpu, server_cpu


def run_rounds(results: dict[str, Result], runs: int,
               run: Callable[[str], tuple[float, float, float]]) -> None:
    """Runs each stack (or client) `runs` times into its result, round by round: every one
    once per round, so that a slow spell of the shared machine weighs on all of them alike
    instead of on the one whose runs it fell on. Those not built are left as they are."""
    for _ in range(runs):
        for name, result in results.items():
            if result.error and result.error.startswith("not built"):
                continue
            try:
                value, load_cpu, server_cpu = run(name)
                result.values.append(value)
                result.cpu.append(load_cpu)
                result.server_cpu.append(server_cpu)
            except Exception as error:  # noqa: BLE001 - reported in the table
                result.error = str(error)[:120]


def time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT on this machine (/proc/net/sockstat), 0 if unknown."""
    try:
        fields = Path("/proc/net/sockstat").read_text().split("TCP:", 1)[1].split("\n", 1)[0]
        words = fields.split()
        return int(words[words.index("tw") + 1])
    except (OSError, IndexError, ValueError):
        return 0


def settle() -> None:
    """Waits (at most 75 s) for the TIME_WAIT sockets of earlier runs to expire. The idle
    scenario closes tens of thousands of connections; while their TIME_WAIT entries last
    (60 s), every new connection's ephemeral port search walks them, and the connect
    scenario measured right after showed a generator busy in the kernel at a seventh of its
    rate, for whichever stack came first."""
    deadline = time.monotonic() + 75
    while time_wait_sockets() > 1000 and time.monotonic() < deadline:
        time.sleep(1)


def run_once(stack: str, scenario: Scenario, duration: int, warmup: int) -> tuple[float, float, float]:
    """One run of `scenario` against `stack`: its figure, and the load's and the server's CPU
    use ([`measured_load`])."""
    settle()
    with serving(STACKS[stack]) as (addr, server):
        args = list(scenario.args)
        if stack == "raw-tcp":
            args.append("--raw-tcp")
        if scenario.timed:
            args += ["--duration", str(duration), "--warmup", str(warmup)]
        else:
            args += ["--server-pid", str(server.pid)]
        load = pin(1, [str(ROOST), "bench", *args, "--url", f"ws://{addr}/", "--json"])
        report, load_cpu, server_cpu = measured_load(load, server, duration + warmup + 300)
        return float(dig(report, scenario.metric)), load_cpu, server_cpu


def run_client_once(client: str, duration: int, warmup: int) -> tuple[float, float, float]:
    """One run of the client scenario: msgs/s, and the client's and the server's CPU use."""
    settle()
    with serving(STACKS["roost"]) as (addr, server):
        command = pin(1, [*CLIENTS[client], "--url", f"ws://{addr}/", "--duration", str(duration),
                          "--warmup", str(warmup)])
        report, client_cpu, server_cpu = measured_load(command, server, duration + warmup + 120)
        return float(report["msgs_per_s"]), client_cpu, server_cpu


def cluster_broadcast(duration: int, warmup: int, runs: int) -> dict[str, Result]:
    """roost broadcast within one process and across two processes sharing a Redis."""
    redis_bin = shutil.which("redis-server")
    results = {"one process": Result(), "across two processes (Redis)": Result()}
    if not redis_bin:
        for result in results.values():
            result.error = "redis-server not installed"
        return results
    redis_addr = free_addr()
    redis = subprocess.Popen([redis_bin, "--port", redis_addr.rsplit(":", 1)[1], "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = []
    try:
        if not wait_for(redis_addr, time.monotonic() + 10):
            raise RuntimeError("redis-server did not start")
        addrs = [free_addr(), free_addr()]
        for addr in addrs:
            nodes.append(subprocess.Popen(
                pin(0, [str(ROOST), "serve", "--app", "bench", "--listen", addr,
                        "--cluster", f"redis://{redis_addr}"]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for addr in addrs:
            if not wait_for(addr, time.monotonic() + 20):
                raise RuntimeError("a roost node did not start")
        for label, extra in [("one process", []),
                             ("across two processes (Redis)", ["--publish-url", f"ws://{addrs[1]}/"])]:
            for _ in range(runs):
                load = pin(1, [str(ROOST), "bench", "broadcast", "-n", "1000", "-s", "64",
                               "--url", f"ws://{addrs[0]}/", *extra, "--duration", str(duration),
                               "--warmup", str(warmup), "--json"])
                done = subprocess.run(load, capture_output=True, text=True, timeout=duration + warmup + 120)
                if done.returncode != 0:
                    results[label].error = (done.stderr.strip().splitlines() or ["failed"])[-1]
                    continue
                report = json.loads(done.stdout.strip().splitlines()[-1])
                results[label].values.append(float(report["deliveries_per_s"]))
                results[label].latencies.append(float(report["delivery_latency"]["p99_us"]))
    finally:
        for process in nodes + [redis]:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
    return results


# Micro-benchmarks (criterion): roost-proto beside tungstenite on the same bytes, and roost-proto's
# own hot paths (unmasking, UTF-8, deflate and inflate), which tungstenite 0.30 has no public
# or no equivalent path for.
MICRO_BENCHES = [
    ("beside", ["cargo", "bench", "-q", "--manifest-path", str(PEERS / "rust" / "Cargo.toml"),
                "--bench", "beside_tungstenite"], PEERS / "rust" / "target" / "criterion"),
    ("codec", ["cargo", "bench", "-q", "-p", "roost-proto", "--bench", "codec"],
     ROOT / "target" / "criterion"),
]
MICRO_TIME = ["--", "--warm-up-time", "1", "--measurement-time", "3", "--noplot"]


def micro() -> dict:
    """Runs the criterion benches (pinned to core 0) and reads their estimates back."""
    found: dict[str, dict] = {}
    for name, command, out in MICRO_BENCHES:
        done = subprocess.run(pin(0, command + MICRO_TIME), capture_output=True, text=True,
                              cwd=ROOT, timeout=1800)
        if done.returncode != 0:
            found[name] = {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:160]}
            continue
        rows = {}
        for bench in sorted(out.glob("**/new/benchmark.json")):
            meta = json.loads(bench.read_text())
            estimates = json.loads((bench.parent / "estimates.json").read_text())
            rows[meta["full_id"]] = {"ns": estimates["median"]["point_estimate"],
                                     "throughput": meta.get("throughput") or {}}
        found[name] = {"rows": rows}
    return found


def rate(row: dict) -> str:
    """Throughput of one criterion row, in the unit its benchmark declared."""
    seconds = row["ns"] / 1e9
    if "Bytes" in row["throughput"]:
        per_s = row["throughput"]["Bytes"] / seconds
        return f"{per_s / 2**30:.2f} GiB/s" if per_s >= 2**30 else f"{per_s / 2**20:,.0f} MiB/s"
    if "Elements" in row["throughput"]:
        return f"{row['throughput']['Elements'] / seconds / 1e6:,.1f} M/s"
    return "-"


def duration(ns: float) -> str:
    return f"{ns / 1000:,.1f} us" if ns >= 1000 else f"{ns:,.1f} ns"


def render_micro(found: dict) -> list[str]:
    out = ["## Micro-benchmarks (criterion)", "",
           "`bench/peers/rust/benches/beside_tungstenite.rs`: the same bytes through roost-proto "
           "and through tungstenite 0.30, in memory (tungstenite over a stream that reads a "
           "buffer and drops writes). Median time per iteration; ratio = tungstenite's time / "
           "roost's (above 1: roost is faster).", ""]
    beside = found.get("beside", {})
    if "error" in beside:
        out += [f"Not measured: {beside['error']}", ""]
    else:
        rows = beside.get("rows", {})
        out += ["| case | roost | tungstenite | roost throughput | ratio |",
                "| --- | --- | --- | --- | --- |"]
        for group in sorted({key.split("/")[0] for key in rows}):
            mine, theirs = rows.get(f"{group}/roost"), rows.get(f"{group}/tungstenite")
            if not mine or not theirs:
                continue
            out.append(f"| {group} | {duration(mine['ns'])} | {duration(theirs['ns'])} | "
                       f"{rate(mine)} | {theirs['ns'] / mine['ns']:.2f} |")
        out.append("")
    codec = found.get("codec", {})
    out += ["roost-proto's own paths (`crates/roost-proto/benches/codec.rs`); permessage-deflate "
            "has no counterpart in tungstenite 0.30.", ""]
    if "error" in codec:
        out += [f"Not measured: {codec['error']}", ""]
    else:
        out += ["| case | time | throughput |", "| --- | --- | --- |"]
        for key, row in codec.get("rows", {}).items():
            out.append(f"| {key} | {duration(row['ns'])} | {rate(row)} |")
        out.append("")
    return out


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def chart(scenario: Scenario, results: dict[str, Result]) -> str:
    """A horizontal bar chart as inline SVG."""
    rows = [(s, r.median) for s, r in results.items() if r.median is not None]
    if not rows:
        return ""
    top = max(v for _, v in rows) or 1.0
    height = 24 * len(rows) + 10
    bars = []
    for i, (stack, value) in enumerate(rows):
        width = 360 * value / top
        y = 5 + 24 * i
        colour = "#3f5bd8" if stack == "roost" else "#9aa3b5"
        bars.append(
            f'<text x="0" y="{y + 15}" font-size="12" font-family="sans-serif">{stack}</text>'
            f'<rect x="130" y="{y}" width="{width:.1f}" height="18" fill="{colour}"/>'
            f'<text x="{136 + width:.1f}" y="{y + 14}" font-size="11" font-family="sans-serif">'
            f'{value:,.1f}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="{height}" '
            f'role="img" aria-label="{scenario.title}">{"".join(bars)}</svg>')


def render_cluster(results: dict[str, Result]) -> list[str]:
    out = ["## Broadcast across processes (roost, 1,000 subscribers, 64 B, maximum rate)", "",
           "Subscribers on one process; the publisher on the same process, then on a second "
           "process sharing the room through Redis (`roost serve --cluster`).", "",
           "| where the publisher is | deliveries/s | p99 delivery latency (us) | runs |",
           "| --- | --- | --- | --- |"]
    for label, result in results.items():
        if result.median is None:
            out.append(f"| {label} | - | - | {result.error or 'no result'} |")
            continue
        latency = statistics.median(result.latencies) if result.latencies else float("nan")
        runs = ", ".join(f"{v:,.0f}" for v in result.values)
        out.append(f"| {label} | {result.median:,.0f} | {latency:,.0f} | {runs} |")
    return out + [""]


# (scenario, what roost is compared with, the ratio the issue asks for, how it reads, what
# holds roost back where it falls short, as far as it has been profiled)
TARGETS = [
    ("echo64", ["bun"], 1.25, "echo 64 B: >= 1.25x Bun",
     "the kernel's work per message, the same for every stack, and a load generator that runs "
     "at its core's limit as each server does at its own. Per echoed message (/proc utime and "
     "stime, four alternating pairs on a quiet machine) Bun's server spent 162-182 ns in user "
     "space and 338-360 ns in the kernel, roost's 157-174 + 349-364, the generator 147-167 + "
     "355-375; all eight runs gave 1.84-1.92 M msgs/s. Each side makes one recv and one writev "
     "per 16-message batch, and loopback TCP charges the receiver's processing to the sender. "
     "1.25x Bun would need roost's own work at about 60 ns per message (callgrind: about 1,310 "
     "instructions now, 1,797 before this round's one-step parse, long-lived waits and "
     "cheaper framing) and a generator that outruns both"),
    ("echo64", ["raw-tcp"], 0.9, "echo 64 B: >= 0.9x raw TCP",
     "the same: raw TCP's server does no protocol work (23-38 ns of user time per message), "
     "and the generator in raw mode frames nothing (55-68 ns against 147-167)"),
    ("echo16k", ["raw-tcp"], 0.9, "echo 16 KiB: >= 0.9x raw TCP",
     "the load generator is the limit (CPU columns), and runs spread on this machine: this "
     "table's three rounds gave roost 0.96, 0.89 and 0.91 of raw TCP. This table and the "
     "client's were measured again on their own after roost's client went from 32 KiB to 64 "
     "KiB per read (the other tables are from the full run): five paired runs before and "
     "after that change gave "
     "1,792-1,991 and 2,042-2,298 MiB/s, and four paired runs against raw TCP 0.92-0.96. Per "
     "MiB the generator spends 91-114 us in user space driving roost and 83-100 driving raw "
     "TCP (it masks each payload while it copies it: 636 ns per 16 KiB frame in criterion when "
     "this table was measured; masking over vectorized 64-bit words, since, cut that frame "
     "from 972 to 548 ns in one criterion session, and four paired echo runs before and after "
     "it differed by less than their spread), "
     "beside 300-365 us in the kernel either way. roost's server copies no payload in user "
     "space (a message is a slice of the read buffer and goes back out as its own writev "
     "piece); its user time, unmasking and bookkeeping, is 54-64 us per MiB in most runs "
     "(83 in one)"),
    ("latency", None, 1.0, "latency p99: no worse than the best",
     "each round trip wakes the connection's task (one epoll wake-up, one recv, one writev)"),
    ("broadcast", ["bun"], 1.3, "broadcast: >= 1.3x Bun",
     "the servers and the generator are all near their limits. The publisher's window of 16 "
     "messages leaves as one writev per member (strace: 71 reads of the publisher and 71,623 "
     "writevs for 1,181 broadcasts to 1,000 members), and 87% of the server's time is the "
     "kernel (perf): loopback TCP runs the receivers' TCP processing on the sender's core too"),
    ("client", ["tokio-tungstenite"], 1.5, "client: >= 1.5x tokio-tungstenite's client",
     "both clients run at their core's limit, and roost's server, driven by roost's client, "
     "near its own: the figure is bound by one core or the other. Between scenarios of one "
     "run the same load can spread by more than the gap (an earlier run of this session: "
     "1.52 M msgs/s here, 1.76 M in its echo 64 B scenario; the session before measured "
     "1.49x)"),
    ("connect", None, 1.0, "connect rate: no worse than the best peer",
     "the load generator is the limit, and runs spread by more than the gap: paired reruns "
     "after an earlier full run of this session (roost, then Bun, three times, 5 s each) "
     "gave roost 15,724, 15,368 and 16,268 conn/s, Bun 15,902, 14,260 and 13,119"),
    ("deflate", ["bun", "node-ws"], 1.0, "compressed echo: >= the best peer with compression",
     "zlib-rs at level 1 with context takeover; each message is inflated and compressed "
     "once (Bun and ws use zlib at their default levels)"),
]


IDLE_TARGET_BYTES = 512
IDLE_HELD_BACK = ("a hibernating connection keeps one 256-byte allocation (its peer state), a "
                  "56-byte entry in the slab of sleepers, an entry in the table of peers and a "
                  "pointer in its room (mimalloc's own page walk at 19,000 connections, taken while "
                  "the sleeper entry was still 72 bytes: about 270 B in the 256-byte class, 72 "
                  "B of sleepers, 45 B of peer table and 8 B of room list); no task, no buffer, no registration with tokio's "
                  "reactor. Pages that connections emptied when they went to sleep are returned "
                  "within a second (a janitor thread lets mimalloc purge, and it does not ask "
                  "for transparent huge pages, which the kernel would fill back in)")


def render_projection(per_connection: float) -> list[str]:
    """What 1,000,000 idle connections would need, from the measured bytes per connection."""
    million = per_connection * 1_000_000
    return ["## Projection: 1,000,000 idle connections", "",
            f"Measured here: {per_connection:,.0f} bytes of server RSS per idle connection "
            "(the idle scenario above; this machine's hard limit of 20,000 descriptors per "
            "process caps the measurement). A hibernating connection keeps fixed-size state "
            "only: its peer state (one 256-byte allocation: queues, locks, room name, "
            "attachment slot, the compact protocol core), a 56-byte entry in the slab of "
            "sleepers, an entry in the table of peers (24 bytes per bucket, between one and two "
            "buckets per connection) and one pointer in its room's member list; no task, no "
            "buffer, no compression state, no registration with tokio's reactor. So RSS grows "
            "linearly: "
            f"1,000,000 connections would take about {million / 2**30:.2f} GiB of RSS in "
            "roost, plus each attachment the application sets (its size). The kernel's share "
            "is larger and is not in RSS: this machine's slab grew by about 5 KB per TCP socket "
            "(`Slab` in /proc/meminfo before and after opening 19,000 connections, both ends on "
            "this host: 190 MB for 38,000 sockets), so 1,000,000 idle connections need about "
            "5 GB of kernel memory on the server, before any socket buffer fills. Also needed: "
            "one descriptor each (raise `ulimit -n` and `fs.nr_open`), and, past about 28,000 "
            "connections per client address, more source addresses or ports (`roost bench "
            "idle` spreads over 127.0.0.x).", ""]


def cpu_summary(rows: dict[str, Result], stacks: list[str]) -> str:
    """Each stack's server and load CPU in this run (medians), for the targets table."""
    parts = [f"{stack}: server {statistics.median(rows[stack].server_cpu):.2f}, "
             f"load {statistics.median(rows[stack].cpu):.2f}"
             for stack in stacks if rows[stack].server_cpu and rows[stack].cpu]
    return f"CPU in this run ({'; '.join(parts)})" if parts else ""


def render_targets(results: dict[str, dict[str, Result]]) -> list[str]:
    out = ["## Targets", "",
           "Ratios of roost to the peers named, from the medians below (for latency, the best "
           "peer's p99 divided by roost's); where a target is missed, what holds roost back.", "",
           "| target | measured ratio | met | what holds it back |", "| --- | --- | --- | --- |"]
    by_name = {s.name: s for s in [*SCENARIOS, CLIENT_SCENARIO]}
    for name, against, wanted, label, why in TARGETS:
        rows = results.get(name)
        if not rows or rows.get("roost") is None or rows["roost"].median is None:
            continue
        scenario = by_name[name]
        others = [r.median for stack, r in rows.items()
                  if stack != "roost" and r.median is not None and (against is None or stack in against)]
        if against is None:
            others = [r.median for stack, r in rows.items()
                      if stack not in ("roost", "raw-tcp") and r.median is not None]
        if not others:
            continue
        best = max(others) if scenario.higher_is_better else min(others)
        best_stack = next(stack for stack, r in rows.items() if stack != "roost" and r.median == best)
        roost = rows["roost"].median
        ratio = roost / best if scenario.higher_is_better else best / roost
        met = ratio >= wanted
        if not met:
            why = f"{why}. {cpu_summary(rows, ['roost', best_stack])}"
        out.append(f"| {label} | {ratio:.2f} | {'yes' if met else 'no'} | {'' if met else why} |")
    idle = results.get("idle", {}).get("roost")
    if idle is not None and idle.median is not None:
        met = idle.median <= IDLE_TARGET_BYTES
        out.append(f"| idle: <= {IDLE_TARGET_BYTES} B of server RSS per connection | "
                   f"{idle.median:,.0f} B | {'yes' if met else 'no'} | "
                   f"{'' if met else IDLE_HELD_BACK} |")
    return out + [""]


def apart_note(apart: dict[str, float], scenario: str) -> list[str]:
    """A line saying when a table merged in later (`--merge`) was measured, if it was."""
    if scenario not in apart:
        return []
    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(apart[scenario]))
    return [f"Measured on its own on {when} (`--merge`), after the rest of this file; its "
            "rows were measured together, so their ratios hold.", ""]


def render(results: dict[str, dict[str, Result]], args, started: float,
           apart: dict[str, float] | None = None) -> str:
    apart = apart or {}
    out = ["# Performance", "",
           "Measured by `python3 bench/run.py` (this file is its output; do not edit by hand).",
           f"Machine: {machine()}. Server pinned to core 0, load generator (`roost bench`) to "
           f"core 1. {args.runs} run(s) per stack and scenario, taken in rounds (each stack once "
           "per round, so a slow spell of the machine weighs on all alike), median shown; "
           f"{args.duration} s measured after {args.warmup} s of warm-up. The machine is shared: "
           "compare ratios within this file, not across runs. Server CPU and load CPU are "
           "each side's CPU time over the run's wall time (medians; 1.00 = its core busy all "
           "along): the side near 1.00 is the limit, and where it is the load generator, the "
           "figure says more about the generator than about the server.", "",
           f"Generated on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}.", ""]
    out += render_targets(results)
    for scenario in [*SCENARIOS, CLIENT_SCENARIO]:
        if scenario.name not in results:
            continue
        rows = results[scenario.name]
        values = [r.median for r in rows.values() if r.median is not None]
        best = (max(values) if scenario.higher_is_better else min(values)) if values else None
        client = scenario.name == "client"
        load = "client CPU" if client else "load CPU"
        cpu_columns = f" server CPU | {load} |" if scenario.timed else ""
        out += [f"## {scenario.title}", "", *apart_note(apart, scenario.name),
                f"`roost bench {' '.join(scenario.args)}`", "",
                f"| {'client' if client else 'stack'} | {scenario.unit} | ratio to the best |"
                f"{cpu_columns} runs |",
                "| --- | --- | --- |" + (" --- | --- |" if scenario.timed else "") + " --- |"]
        if client:
            out[-4:-2] = ["Each client library drives the same load against `roost serve --app "
                          "bench` (server on core 0, client on core 1).", "",
                          f"`{' '.join(CLIENTS['roost'][1:])}` / "
                          f"`tungstenite-client {' '.join(CLIENT_LOAD)}`", ""]
        for stack, result in rows.items():
            if result.median is None:
                out.append(f"| {stack} | - | - |{' - | - |' if scenario.timed else ''} "
                           f"{result.error or 'no result'} |")
                continue
            ratio = (result.median / best if scenario.higher_is_better else best / result.median) if best else 0
            runs = ", ".join(f"{v:,.1f}" for v in result.values)
            cpu = ""
            if scenario.timed:
                cpu = "".join(f" {statistics.median(side):.2f} |" if side else " - |"
                              for side in (result.server_cpu, result.cpu))
            out.append(f"| {stack} | {result.median:,.1f} | {ratio:.2f} |{cpu} {runs} |")
        out += ["", chart(scenario, rows), ""]
    if "cluster" in results:
        cluster = render_cluster(results["cluster"])
        out += cluster[:2] + apart_note(apart, "cluster") + cluster[2:]
    idle = results.get("idle", {}).get("roost")
    if idle is not None and idle.median is not None:
        out += render_projection(idle.median)
    if "micro" in results:
        micro = render_micro(results["micro"])
        out += micro[:2] + apart_note(apart, "micro") + micro[2:]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 run of 2 s per case")
    parser.add_argument("--only", help="comma-separated scenarios")
    parser.add_argument("--stacks", help="comma-separated stacks")
    parser.add_argument("--out", type=Path, default=DOC,
                        help="the document to write (default docs/performance.md; a trial run "
                             "with --only, --stacks or --quick must name another, or --merge)")
    parser.add_argument("--render-only", type=Path, metavar="JSON",
                        help="re-render the document from a saved performance.json")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: put the scenarios run into the saved performance.json "
                             "next to --out and re-render; the other tables stay as they were, "
                             "and the merged ones say when they were measured")
    args = parser.parse_args()
    if args.merge and not args.only:
        parser.error("--merge needs --only: the scenarios to measure again")
    if args.merge and args.stacks:
        parser.error("--merge measures every stack of a table again (its rows are compared "
                     "with each other): drop --stacks")
    if (args.only or args.stacks or args.quick) and not args.merge and args.out.resolve() == DOC:
        parser.error(f"a run with --only, --stacks or --quick would replace {DOC.relative_to(ROOT)} "
                     "with fewer or rougher figures: add --merge to measure some tables again "
                     "into it, or --out FILE to write the trial elsewhere")
    only = set(args.only.split(",")) if args.only else None
    known = [scenario.name for scenario in SCENARIOS] + ["client", "micro", "cluster"]
    if only and not only <= set(known):
        parser.error(f"--only: no scenario {', '.join(sorted(only - set(known)))}; "
                     f"the scenarios are {','.join(known)}")
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 2, 1
    if args.render_only:
        saved, results = load_saved(args.render_only)
        args.runs, args.duration, args.warmup = saved["runs"], saved["duration"], saved["warmup"]
        args.out.write_text(render(results, args, saved["started"], saved.get("apart")))
        print(f"wrote {args.out}")
        return 0
    if not ROOST.exists():
        print(f"missing {ROOST}: cargo build --release -p roost-cli", file=sys.stderr)
        return 1
    saved_path = args.out.parent / "performance.json"
    if args.merge:
        # Checked before measuring: a run that cannot be merged is not wasted.
        saved, merged = load_saved(saved_path)
        if (saved["runs"], saved["duration"], saved["warmup"]) != (args.runs, args.duration, args.warmup):
            print(f"--merge: {saved_path} was measured with --runs {saved['runs']} --duration "
                  f"{saved['duration']} --warmup {saved['warmup']}: use the same", file=sys.stderr)
            return 1
    stacks = args.stacks.split(",") if args.stacks else list(STACKS)
    started = time.time()
    results: dict[str, dict[str, Result]] = {}
    for scenario in SCENARIOS:
        if only and scenario.name not in only:
            continue
        runnable = {}
        for stack in stacks:
            if stack == "raw-tcp" and not scenario.raw_tcp:
                continue
            if scenario.stacks and stack not in scenario.stacks:
                continue
            result = runnable[stack] = Result()
            binary = STACKS[stack][0]
            if not (shutil.which(binary) or Path(binary).exists()):
                result.error = f"not built ({binary})"
        run_rounds(runnable, args.runs,
                   lambda stack: run_once(stack, scenario, args.duration, args.warmup))
        results[scenario.name] = runnable
        for stack, result in runnable.items():
            shown = f"{result.median:,.1f}" if result.median is not None else result.error
            print(f"{scenario.name:>10} {stack:>18}: {shown}", flush=True)
    if not only or "client" in only:
        runnable = {}
        for client, command in CLIENTS.items():
            result = runnable[client] = Result()
            if not Path(command[0]).exists():
                result.error = f"not built ({command[0]})"
        run_rounds(runnable, args.runs,
                   lambda client: run_client_once(client, args.duration, args.warmup))
        results["client"] = runnable
        for client, result in runnable.items():
            shown = f"{result.median:,.1f}" if result.median is not None else result.error
            print(f"    client {client:>18}: {shown}", flush=True)
    if not only or "micro" in only:
        results["micro"] = micro()
        print("     micro: criterion benches done", flush=True)
    if not only or "cluster" in only:
        results["cluster"] = cluster_broadcast(args.duration, args.warmup, args.runs)
        for label, result in results["cluster"].items():
            shown = f"{result.median:,.1f}" if result.median is not None else result.error
            print(f"   cluster {label:>30}: {shown}", flush=True)
    apart: dict[str, float] = {}
    if args.merge:
        apart = saved.get("apart", {})
        for scenario in results:
            apart[scenario] = started
        merged.update(results)
        results, started = merged, saved["started"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, args, started, apart))
    saved_path.write_text(json.dumps(
        {"started": started, "runs": args.runs, "duration": args.duration, "warmup": args.warmup,
         "results": {scenario: {stack: {"values": r.values, "latencies": r.latencies, "error": r.error,
                                       "cpu": r.cpu, "server_cpu": r.server_cpu}
                                for stack, r in rows.items()}
                     for scenario, rows in results.items() if scenario != "micro"},
         "micro": results.get("micro"), "apart": apart},
        indent=1))
    print(f"wrote {args.out}")
    return 0


def load_saved(path: Path) -> tuple[dict, dict]:
    """A saved performance.json, and its results as `Result`s (with the micro suite's rows)."""
    saved = json.loads(path.read_text())
    results = {scenario: {stack: Result(r["values"], r.get("latencies", []), r["error"],
                                        r.get("cpu", []), r.get("server_cpu", []))
                          for stack, r in rows.items()} for scenario, rows in saved["results"].items()}
    if saved.get("micro"):
        results["micro"] = saved["micro"]
    return saved, results


if __name__ == "__main__":
    sys.exit(main())
