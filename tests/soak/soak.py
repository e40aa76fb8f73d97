"""A bounded soak of `roost serve --app chat`: churn, broadcasts, resumes, heartbeats and slow
readers for a few minutes, with the server's RSS and open fd count sampled throughout.

    .venv/bin/python tests/soak/soak.py [--minutes 3] [--rooms 4] [--clients 24] [--out target/soak/]
    .venv/bin/python tests/soak/render_reliability.py      # docs/reliability.md and docs/soak.svg

What runs at once, for --minutes:
- steady clients (--clients, spread over --rooms rooms) chat at a modest rate; each checks that
  its own broadcasts come back complete and in order and that every other sender's arrive in
  order; some stay quiet long enough for the server to make them dormant; all send heartbeats
  (answered `alive` by the auto-response) and from time to time leave with 1001, a dropped TCP
  connection or a TCP reset, and resume with their token (`welcome back`);
- churn workers (--churn) join fresh clients, chat briefly and leave with 1000 (then the token
  must get 410), 1001 or a dropped or reset connection (then the resume must work once and a
  second use get 401), or with 1001 for good (the attachment stays on disk, resumable);
- one slow reader at a time (every --slow-every seconds) joins a busy room with a small receive
  buffer and stops reading while a flooder sends 32 KiB messages to that room; the server must
  close it with 1013, while the room's other members keep receiving everything in order.

Every 2 s the server's RSS and open fd count (/proc/PID/status, /proc/PID/fd) and the connection
gauges of /metrics are sampled. At the end every client leaves with 1000, the gauges must reach
0, the fd count must return to its idle baseline, the attachments on disk must be exactly the
sessions deliberately left resumable, and SIGTERM must stop the server with exit status 0.

Every unexpected outcome is an error with a short description. Writes OUT/samples.csv,
OUT/summary.json and OUT/server.log; exits 1 if there was any error or memory or fds were not
flat after the warm-up, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import csv
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

REPO_ROOT = Path(__file__).resolve().parents[2]
BINARY = REPO_ROOT / "target" / "release" / "roost"

#: Longest wait for any one step (connect, greeting, close, an echo, a heartbeat answer).
OP_TIMEOUT = 10.0
#: Seconds between two samples of the server's RSS, fds and gauges.
SAMPLE_EVERY = 2.0
#: Size of one flood message (random base64, so permessage-deflate cannot shrink it).
FLOOD_BYTES = 32 << 10
#: Receive buffer of a slow reader's socket: small, so the server's queue fills soon.
SLOW_RCVBUF = 16 << 10
#: Longest a slow reader may wait to be closed once the flood starts.
SLOW_KICK_LIMIT = 60.0
#: A chat token's length (see crates/roost-server/src/resume.rs).
TOKEN_LEN = 55
BROADCAST = re.compile(r"#(\d+)(?: |$)")


class Soak:
    """Shared state: the server's address, counters and the error log."""

    def __init__(self, host: str, port: int, rng: random.Random) -> None:
        self.host, self.port, self.rng = host, port, rng
        self.base = f"ws://{host}:{port}"
        self.started = time.monotonic()
        self.stop = asyncio.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []
        self.echo_ms: list[float] = []
        self.kick_s: list[float] = []
        self.open_clients = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if len(self.examples) < 50:
            line = f"t={self.now():.1f}s {kind}" + (f": {detail}" if detail else "")
            self.examples.append(line)
            print("ERROR", line, flush=True)

    async def http_get(self, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), OP_TIMEOUT
        )
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
            )
            data = await asyncio.wait_for(reader.read(), OP_TIMEOUT)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, body.decode()

    async def metrics(self) -> dict[str, float]:
        status, body = await self.http_get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        values = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def connect(self, path: str, **options) -> asyncio.Future[ClientConnection]:
        options.setdefault("ping_interval", None)
        return asyncio.wait_for(
            connect(
                self.base + path,
                proxy=None,
                open_timeout=OP_TIMEOUT,
                close_timeout=OP_TIMEOUT,
                **options,
            ),
            OP_TIMEOUT,
        )


class Client:
    """One chat session (a name in a room) over one or more connections, checking all it gets."""

    def __init__(self, soak: Soak, role: str, name: str, room: str) -> None:
        self.soak, self.role, self.name, self.room = soak, role, name, room
        self.seq = 0
        self.token: str | None = None
        self.last_from: dict[str, int] = {}
        self.own: collections.deque[tuple[int, float]] = collections.deque()
        self.beats: collections.deque[float] = collections.deque()
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task | None = None
        self.greeting = ""
        self.greeted: asyncio.Future | None = None
        self.tokened: asyncio.Future | None = None
        self.leaving = False

    def error(self, kind: str, detail: str = "") -> None:
        self.soak.error(f"{self.role}: {kind}", f"{self.name}: {detail}" if detail else self.name)

    async def open(self, resume: bool = False, **options) -> None:
        """Joins (sends the name) or resumes with the last token; returns once greeted."""
        path = f"/chat/{self.room}"
        if resume:
            path += f"?resume={self.token}"
        self.ws = await self.soak.connect(path, **options)
        self.soak.count("connections")
        self.soak.open_clients += 1
        loop = asyncio.get_running_loop()
        self.greeting = f"welcome back {self.name}" if resume else f"hello {self.name}"
        self.greeted, self.tokened = loop.create_future(), loop.create_future()
        self.leaving = False
        self.reader = asyncio.create_task(self._read(self.ws))
        if not resume:
            await asyncio.wait_for(self.ws.send(self.name), OP_TIMEOUT)
        try:
            await asyncio.wait_for(asyncio.shield(self.greeted), OP_TIMEOUT)
            await asyncio.wait_for(asyncio.shield(self.tokened), OP_TIMEOUT)
        except (TimeoutError, ConnectionError):
            self.error("no greeting", f"expected {self.greeting!r} and a token")
            raise
        self.soak.count("resumes" if resume else "joins")

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                self._handle(message)
        except ConnectionClosed:
            pass
        except Exception as error:  # noqa: BLE001 - any surprise is an error of the soak
            self.error("reader failed", repr(error)[:120])
        finally:
            self.soak.open_clients -= 1
            for future in (self.greeted, self.tokened):
                if future is not None and not future.done():
                    future.set_exception(ConnectionError("closed before the greeting"))
            if not self.leaving:
                rcvd = ws.protocol.close_rcvd
                code = rcvd.code if rcvd else None
                self.error("closed unexpectedly", f"close code {code}")

    def _handle(self, message: str | bytes) -> None:
        if not isinstance(message, str):
            self.error("binary message")
            return
        if message == "alive":
            if self.beats:
                self.beats.popleft()
                self.soak.count("heartbeats_answered")
            else:
                self.error("alive without heartbeat")
        elif message.startswith("resume "):
            token = message[len("resume ") :]
            if len(token) != TOKEN_LEN or self.tokened is None or self.tokened.done():
                self.error("unexpected resume message", message[:80])
            elif self.greeted is None or not self.greeted.done():
                self.error("token before greeting")
            else:
                self.token = token
                self.tokened.set_result(None)
        elif message == self.greeting and self.greeted is not None and not self.greeted.done():
            self.greeted.set_result(None)
        elif ": " in message:
            sender, text = message.split(": ", 1)
            match = BROADCAST.match(text)
            if match is None:
                self.error("malformed broadcast", message[:80])
                return
            seq = int(match.group(1))
            self.soak.count("deliveries")
            if sender == self.name:
                if self.own and self.own[0][0] == seq:
                    _, sent = self.own.popleft()
                    self.soak.echo_ms.append((time.monotonic() - sent) * 1000)
                    self.soak.count("own_echoes")
                else:
                    expected = self.own[0][0] if self.own else None
                    self.error("own broadcast out of order", f"got #{seq}, expected #{expected}")
            else:
                if seq <= self.last_from.get(sender, 0):
                    self.error(
                        "broadcast out of order",
                        f"{sender} #{seq} after #{self.last_from[sender]}",
                    )
                self.last_from[sender] = seq
        else:
            self.error("unexpected message", message[:80])

    async def say(self, padding: str = "") -> None:
        self.seq += 1
        self.own.append((self.seq, time.monotonic()))
        text = f"#{self.seq}" + (f" {padding}" if padding else "")
        await asyncio.wait_for(self.ws.send(text), OP_TIMEOUT)
        self.soak.count("messages_sent")
        self.soak.count("bytes_sent", len(text))

    async def heartbeat(self) -> None:
        self.beats.append(time.monotonic())
        await asyncio.wait_for(self.ws.send("heartbeat"), OP_TIMEOUT)
        self.soak.count("heartbeats")

    def check_overdue(self) -> None:
        now = time.monotonic()
        if self.own and now - self.own[0][1] > OP_TIMEOUT:
            self.error("own broadcast lost", f"#{self.own[0][0]} not back in {OP_TIMEOUT:.0f} s")
            self.own.clear()
        if self.beats and now - self.beats[0] > OP_TIMEOUT:
            self.error("heartbeat unanswered")
            self.beats.clear()

    async def settle(self) -> None:
        """Waits until every own broadcast and heartbeat came back."""
        deadline = time.monotonic() + OP_TIMEOUT
        while (self.own or self.beats) and time.monotonic() < deadline:
            if self.reader is not None and self.reader.done():
                break
            await asyncio.sleep(0.02)
        self.check_overdue()
        if self.own or self.beats:
            self.error("echo missing at leave", f"{len(self.own)} messages, {len(self.beats)} beats")
            self.own.clear()
            self.beats.clear()

    async def leave(self, how: str) -> None:
        """Ends this connection: `normal` (1000), `away` (1001), `drop` (FIN), `reset` (RST)."""
        await self.settle()
        self.leaving = True
        ws = self.ws
        if how in ("normal", "away"):
            code = 1000 if how == "normal" else 1001
            await asyncio.wait_for(ws.close(code), OP_TIMEOUT * 2)
            rcvd = ws.protocol.close_rcvd
            if rcvd is None or rcvd.code != code:
                self.error("close not answered", f"sent {code}, got {rcvd}")
        else:
            if how == "reset":
                sock = ws.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.transport.abort()
        await asyncio.wait_for(self.reader, OP_TIMEOUT)
        self.soak.count(f"left_{how}")

    async def expect_refused(self, token: str, status: int) -> None:
        """A resume with `token` must be refused with `status`."""
        try:
            ws = await self.soak.connect(f"/chat/{self.room}?resume={token}")
        except InvalidStatus as error:
            got = error.response.status_code
            if got == status:
                self.soak.count(f"refused_{status}")
            else:
                self.error(f"resume refused with {got}", f"expected {status}")
            return
        self.error("spent token accepted", f"expected {status}")
        await ws.close()


async def steady(soak: Soak, index: int, room: str) -> None:
    """A long-lived member: chats, sends heartbeats, sometimes resumes after a lost connection."""
    rng = random.Random(soak.rng.random())
    quiet = index % 4 == 3  # idles past dormant_after (10 s) between messages
    client = Client(soak, "steady", f"s{index}", room)
    await client.open()
    next_resume = time.monotonic() + rng.uniform(30, 60)
    while not soak.stop.is_set():
        pause = rng.uniform(11, 16) if quiet else rng.uniform(0.5, 2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), pause)
        if soak.stop.is_set():
            break
        try:
            client.check_overdue()
            if client.reader.done():
                # Lost unexpectedly (already counted): carry on with a resume.
                await client.open(resume=True)
            if rng.random() < 0.2:
                await client.heartbeat()
            else:
                await client.say()
            if time.monotonic() >= next_resume:
                await client.leave(rng.choice(["away", "drop", "reset"]))
                await asyncio.sleep(rng.uniform(0, 0.5))
                await client.open(resume=True)
                next_resume = time.monotonic() + rng.uniform(30, 60)
        except Exception as error:  # noqa: BLE001
            soak.error("steady: step failed", f"s{index}: {error!r}"[:160])
            await asyncio.sleep(1)
    try:
        if client.reader.done():
            await client.open(resume=True)
        await client.leave("normal")
    except Exception as error:  # noqa: BLE001
        soak.error("steady: final leave failed", f"s{index}: {error!r}"[:160])


async def churn(soak: Soak, worker: int, rooms: list[str]) -> None:
    """Fresh clients one after another: join, chat a little, leave one of five ways."""
    rng = random.Random(soak.rng.random())
    n = 0
    while not soak.stop.is_set():
        n += 1
        client = Client(soak, "churn", f"c{worker}-{n}", rng.choice(rooms))
        try:
            await client.open()
            if rng.random() < 0.5:
                await client.heartbeat()
            for _ in range(rng.randint(1, 4)):
                await client.say()
                await asyncio.sleep(rng.uniform(0.02, 0.3))
            how = rng.choices(
                ["normal", "away", "drop", "reset", "away_for_good"], [30, 25, 20, 15, 10]
            )[0]
            if how == "normal":
                token = client.token
                await client.leave("normal")
                if rng.random() < 0.5:
                    await client.expect_refused(token, 410)
            elif how == "away_for_good":
                await client.leave("away")
                soak.count("left_resumable")
            else:
                await client.leave(how)
                spent = client.token
                await client.open(resume=True)
                if rng.random() < 0.5:
                    await client.expect_refused(spent, 401)
                await client.say()
                await client.leave("normal")
        except Exception as error:  # noqa: BLE001
            soak.error("churn: cycle failed", f"{client.name}: {error!r}"[:160])
            if client.ws is not None and client.reader is not None and not client.reader.done():
                client.leaving = True
                client.ws.transport.abort()
            await asyncio.sleep(1)
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def slow_readers(soak: Soak, rooms: list[str], every: float) -> None:
    """One slow reader at a time: it stops reading while a flooder fills its room."""
    rng = random.Random(soak.rng.random())
    k = 0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), every)
        if soak.stop.is_set():
            return
        k += 1
        try:
            await slow_episode(soak, k, rooms[k % len(rooms)], rng)
        except Exception as error:  # noqa: BLE001
            soak.error("slow: episode failed", f"#{k}: {error!r}"[:160])


async def slow_episode(soak: Soak, k: int, room: str, rng: random.Random) -> None:
    name = f"slow{k}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    await asyncio.wait_for(
        asyncio.get_running_loop().sock_connect(sock, (soak.host, soak.port)), OP_TIMEOUT
    )
    # No compression: what waits for it is counted in raw bytes. A small max_queue makes the
    # library stop reading the socket as soon as the application stops calling recv.
    ws = await soak.connect(f"/chat/{room}", sock=sock, compression=None, max_queue=4)
    soak.count("connections")
    soak.count("slow_readers")
    await asyncio.wait_for(ws.send(name), OP_TIMEOUT)
    token, greeted = None, False
    deadline = time.monotonic() + OP_TIMEOUT
    while token is None:
        message = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        if message == f"hello {name}":
            greeted = True
        elif greeted and message.startswith("resume "):
            token = message[len("resume ") :]
    soak.count("joins")
    # From here on it reads nothing.
    before = (await soak.metrics())["roost_backpressure_closes_total"]
    flooder = Client(soak, "flooder", f"flood{k}", room)
    await flooder.open()
    started = time.monotonic()
    kicked = False
    last_poll = 0.0
    while time.monotonic() - started < SLOW_KICK_LIMIT:
        padding = base64.b64encode(os.urandom(FLOOD_BYTES * 3 // 4)).decode()
        await flooder.say(padding)
        soak.count("flood_messages")
        if time.monotonic() - last_poll >= 0.2:
            last_poll = time.monotonic()
            if (await soak.metrics())["roost_backpressure_closes_total"] > before:
                kicked = True
                break
        await asyncio.sleep(0.03)
    if not kicked:
        soak.error("slow: not closed", f"{name} still open after {SLOW_KICK_LIMIT:.0f} s")
    soak.kick_s.append(time.monotonic() - started)
    # Read again: what was already in flight, then the server's close frame.
    drained = 0
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(OP_TIMEOUT * 2):
            while True:
                await ws.recv()
                drained += 1
    soak.count("slow_drained_messages", drained)
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None and rcvd.code == 1013:
        soak.count("slow_closed_1013")
    else:
        soak.error("slow: wrong close", f"{name}: expected 1013, got {rcvd}")
        ws.transport.abort()
    # Closed by the server, not by the client: the session is resumable.
    slow = Client(soak, "slow", name, room)
    slow.token = token
    await slow.open(resume=True)
    await slow.leave("normal")
    await flooder.leave("normal")


async def sampler(soak: Soak, pid: int, rows: list[dict]) -> None:
    while not soak.stop.is_set():
        try:
            rows.append(await sample(soak, pid))
        except Exception as error:  # noqa: BLE001
            soak.error("sampler failed", repr(error)[:160])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), SAMPLE_EVERY)


async def sample(soak: Soak, pid: int) -> dict:
    rss_kib = threads = None
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    m = await soak.metrics()
    gauges = {s: int(m.get(f'roost_connections{{state="{s}"}}', 0)) for s in ("live", "parked", "dormant")}
    return {
        "t_s": round(soak.now(), 2),
        "rss_kib": rss_kib,
        "fds": fds,
        "threads": threads,
        **gauges,
        "open": sum(gauges.values()),
        "client_open": soak.open_clients,
        "connections_total": int(m.get("roost_connections_total", 0)),
        "messages_in_total": int(m.get("roost_messages_in_total", 0)),
        "messages_out_total": int(m.get("roost_messages_out_total", 0)),
        "backpressure_closes_total": int(m.get("roost_backpressure_closes_total", 0)),
    }


def slope_per_minute(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    cov = sum((t - mt) * (y - my) for t, y in zip(ts, ys))
    return cov / var * 60 if var else 0.0


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def start_server(binary: Path, durable: Path, log_path: Path):
    process = await asyncio.create_subprocess_exec(
        str(binary), "--log-json", "serve", "--app", "chat", "--listen", "127.0.0.1:0",
        "--durable", str(durable),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    log = open(log_path, "w")  # noqa: SIM115 - closed by the log pump
    loop = asyncio.get_running_loop()
    listening: asyncio.Future[tuple[str, int]] = loop.create_future()
    levels: collections.Counter[str] = collections.Counter()
    bad_lines: list[str] = []

    async def pump() -> None:
        try:
            while line := await process.stderr.readline():
                text = line.decode(errors="replace").rstrip("\n")
                log.write(text + "\n")
                try:
                    record = json.loads(text)
                except json.JSONDecodeError:
                    record = {"level": "UNPARSED", "fields": {"message": text}}
                level = record.get("level", "?")
                message = str(record.get("fields", {}).get("message", ""))
                levels[level] += 1
                if level in ("WARN", "ERROR", "UNPARSED"):
                    bad_lines.append(f"{level} {message}"[:160])
                found = re.search(r"listening on ws://([\d.]+):(\d+)", message)
                if found and not listening.done():
                    listening.set_result((found.group(1), int(found.group(2))))
        finally:
            log.close()
            if not listening.done():
                listening.set_exception(RuntimeError("the server exited before listening"))

    pump_task = asyncio.create_task(pump())
    host, port = await asyncio.wait_for(listening, 30)
    return process, host, port, pump_task, levels, bad_lines


def git_commit() -> str:
    """HEAD's short hash, with `+changes` if crates/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "crates", "Cargo.lock"], cwd=REPO_ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    binary = Path(args.binary)
    if args.build:
        # A no-op when the binary is current; otherwise the soak would measure an older build
        # than the commit it reports. Cargo waits for its lock if another build holds it.
        subprocess.run(["cargo", "build", "--release", "-p", "roost-cli"], cwd=REPO_ROOT, check=True)
    commit = git_commit()
    durable_holder = tempfile.TemporaryDirectory(prefix="roost-soak-")
    durable = Path(durable_holder.name)
    process, host, port, pump, levels, bad_lines = await start_server(
        binary, durable, out / "server.log"
    )
    soak = Soak(host, port, random.Random(args.seed))
    print(f"server pid {process.pid} on {soak.base}, durable dir {durable}", flush=True)
    rows: list[dict] = []
    await asyncio.sleep(1)
    baseline = await sample(soak, process.pid)
    rooms = [f"room{r}" for r in range(args.rooms)]
    duration = args.minutes * 60
    tasks = [asyncio.create_task(sampler(soak, process.pid, rows))]
    workers = [
        asyncio.create_task(steady(soak, i, rooms[i % len(rooms)])) for i in range(args.clients)
    ]
    workers += [asyncio.create_task(churn(soak, w, rooms)) for w in range(args.churn)]
    if args.slow_every > 0:
        workers.append(asyncio.create_task(slow_readers(soak, rooms, args.slow_every)))
    load_started = soak.now()
    while soak.now() - load_started < duration:
        await asyncio.sleep(min(15, duration - (soak.now() - load_started)))
        last = rows[-1] if rows else {}
        print(
            f"t={soak.now():6.1f}s rss={last.get('rss_kib', 0) / 1024:6.1f} MiB "
            f"fds={last.get('fds')} open={last.get('open')} connections={soak.counts['connections']} "
            f"sent={soak.counts['messages_sent']} resumes={soak.counts['resumes']} "
            f"slow={soak.counts['slow_closed_1013']} errors={sum(soak.errors.values())}",
            flush=True,
        )
    load_ended = soak.now()
    soak.stop.set()
    done, pending = await asyncio.wait(workers, timeout=60)
    for task in pending:
        soak.error("worker did not finish in 60 s")
        task.cancel()
    for task in tasks:
        await task
    # Every client left: the gauges must reach 0 and the fds the idle baseline.
    final = await sample(soak, process.pid)
    deadline = time.monotonic() + 15
    while (final["open"] or final["fds"] > baseline["fds"] + args.fd_tolerance) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.5)
        final = await sample(soak, process.pid)
    if final["open"]:
        soak.error("connections left open", f"{final['open']} after every client left")
    metrics = await soak.metrics()
    # SIGTERM: a graceful stop with status 0.
    process.send_signal(signal.SIGTERM)
    try:
        exit_code = await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        soak.error("server did not exit within 20 s of SIGTERM")
        process.kill()
        exit_code = await process.wait()
    await pump
    if exit_code != 0:
        soak.error("server exit status", str(exit_code))
    for line in bad_lines:
        soak.error("server log", line)
    attachments = len(list((durable / "ws").glob("*.att")))
    if attachments != soak.counts["left_resumable"]:
        soak.error(
            "attachments on disk",
            f"{attachments}, expected {soak.counts['left_resumable']} (sessions left resumable)",
        )
    durable_holder.cleanup()

    # Cross-checks against the server's own counters.
    def metric(name: str) -> int:
        return int(metrics.get(name, 0))

    kicks = soak.counts["slow_closed_1013"]
    checks = {
        "roost_backpressure_closes_total": (metric("roost_backpressure_closes_total"), kicks),
        'roost_closes_total{code="1013"}': (metric('roost_closes_total{code="1013"}'), kicks),
        "roost_handler_panics_total": (metric("roost_handler_panics_total"), 0),
        "roost_handler_errors_total": (metric("roost_handler_errors_total"), 0),
        "roost_accept_errors_total": (metric("roost_accept_errors_total"), 0),
        "roost_attachment_store_errors_total": (metric("roost_attachment_store_errors_total"), 0),
        "roost_resumes_total": (metric("roost_resumes_total"), soak.counts["resumes"]),
        'roost_handshake_rejections_total{status="410"}': (
            metric('roost_handshake_rejections_total{status="410"}'), soak.counts["refused_410"]
        ),
        'roost_handshake_rejections_total{status="401"}': (
            metric('roost_handshake_rejections_total{status="401"}'), soak.counts["refused_401"]
        ),
        "roost_connections_total": (metric("roost_connections_total"), soak.counts["connections"]),
    }
    for name, (got, want) in checks.items():
        if got != want:
            soak.error("server counter mismatch", f"{name} = {got}, expected {want}")
    other_rejections = {
        k: v for k, v in metrics.items()
        if k.startswith("roost_handshake_rejections_total") and '"410"' not in k and '"401"' not in k
    }
    if other_rejections:
        soak.error("unexpected handshake rejections", str(other_rejections))

    # Trends after the warm-up.
    warm = load_started + max(args.warmup * duration, args.min_warmup)
    measured = [r for r in rows if warm <= r["t_s"] <= load_ended]
    ts = [r["t_s"] for r in measured]
    rss_mib = [r["rss_kib"] / 1024 for r in measured]
    fds = [r["fds"] for r in measured]
    spare = [r["fds"] - r["open"] for r in measured]
    rss_slope = slope_per_minute(ts, rss_mib)
    fd_slope = slope_per_minute(ts, fds)
    churned_per_min = soak.counts["connections"] / (duration / 60)
    verdicts = []
    if rss_slope >= args.max_rss_slope:
        verdicts.append(f"RSS grows {rss_slope:.3f} MiB/min >= {args.max_rss_slope}")
    if abs(final["fds"] - baseline["fds"]) > args.fd_tolerance:
        verdicts.append(f"fds {final['fds']} at the end vs {baseline['fds']} idle at the start")
    if not measured:
        verdicts.append("no samples after the warm-up")
    error_total = sum(soak.errors.values())
    if error_total:
        verdicts.append(f"{error_total} errors")
    flat = not any(v.startswith(("RSS", "fds", "no samples")) for v in verdicts)

    fields = list(rows[0].keys()) if rows else []
    with open(out / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        # Allocator settings the server inherited, if any: they change how RSS behaves.
        "server_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
        "config": {
            "minutes": args.minutes,
            "rooms": args.rooms,
            "steady_clients": args.clients,
            "churn_workers": args.churn,
            "slow_reader_every_s": args.slow_every,
            "flood_message_bytes": FLOOD_BYTES,
            "slow_reader_rcvbuf": SLOW_RCVBUF,
            "sample_every_s": SAMPLE_EVERY,
            "warmup_fraction": args.warmup,
            "min_warmup_s": args.min_warmup,
            "max_rss_slope_mib_per_min": args.max_rss_slope,
            "fd_tolerance": args.fd_tolerance,
            "seed": args.seed,
        },
        "load_seconds": round(load_ended - load_started, 1),
        "warmup_ends_s": round(warm, 1),
        "totals": dict(sorted(soak.counts.items())),
        "connections_per_minute": round(churned_per_min, 1),
        "echo_latency_ms": {
            "p50": percentile(soak.echo_ms, 50),
            "p99": percentile(soak.echo_ms, 99),
            "max": max(soak.echo_ms, default=None),
        },
        "slow_reader_kick_s": {
            "count": len(soak.kick_s),
            "min": min(soak.kick_s, default=None),
            "max": max(soak.kick_s, default=None),
        },
        "server": {
            "exit_code": exit_code,
            "log_levels": dict(levels),
            "attachments_left": attachments,
            "counters": {k: v for k, v in sorted(metrics.items()) if "connections{" not in k},
        },
        "rss": {
            "idle_start_mib": round(baseline["rss_kib"] / 1024, 2),
            "idle_end_mib": round(final["rss_kib"] / 1024, 2),
            "min_mib": round(min(rss_mib, default=0), 2),
            "max_mib": round(max(rss_mib, default=0), 2),
            "range_mib": round(max(rss_mib, default=0) - min(rss_mib, default=0), 2),
            "slope_mib_per_min": round(rss_slope, 3),
            "leak_per_connection_detectable_bytes": round(
                args.max_rss_slope * 2**20 / churned_per_min
            ) if churned_per_min else None,
        },
        "fds": {
            "idle_start": baseline["fds"],
            "idle_end": final["fds"],
            "min": min(fds, default=0),
            "max": max(fds, default=0),
            "slope_per_min": round(fd_slope, 2),
            "fds_minus_open_connections": {"min": min(spare, default=0), "max": max(spare, default=0)},
        },
        "gauges": {
            "max_open": max((r["open"] for r in rows), default=0),
            "max_dormant": max((r["dormant"] for r in rows), default=0),
            "idle_end_open": final["open"],
        },
        "errors": {
            "total": error_total,
            "by_kind": dict(soak.errors.most_common()),
            "examples": soak.examples,
        },
        "flat": flat,
        "passed": not verdicts,
        "verdicts": verdicts,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("totals", "rss", "fds", "errors", "verdicts")}, indent=2))
    print("PASS" if not verdicts else "FAIL: " + "; ".join(verdicts), flush=True)
    return 0 if not verdicts else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="load duration (default 3)")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--clients", type=int, default=24, help="steady clients (default 24)")
    parser.add_argument("--churn", type=int, default=6, help="concurrent churn workers (default 6)")
    parser.add_argument(
        "--slow-every", type=float, default=25.0,
        help="seconds between slow-reader episodes, 0 for none (default 25)",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "target" / "soak"))
    parser.add_argument("--binary", default=str(BINARY))
    parser.add_argument(
        "--no-build", dest="build", action="store_false",
        help="use --binary as it is instead of running cargo build --release -p roost-cli first",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the run left out of the trends"
    )
    parser.add_argument(
        "--min-warmup", type=float, default=60.0,
        help="shortest warm-up in seconds (default 60: the heap grows into its working size "
        "during the first slow-reader floods)",
    )
    parser.add_argument(
        "--max-rss-slope", type=float, default=2.0,
        help="largest RSS growth after the warm-up that counts as flat, MiB/min (default 2)",
    )
    parser.add_argument(
        "--fd-tolerance", type=int, default=3,
        help="allowed difference between idle fd counts before and after (default 3)",
    )
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
