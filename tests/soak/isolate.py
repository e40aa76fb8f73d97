"""What one operation costs the chat server in memory, when repeated thousands of times in a row.

    .venv/bin/python tests/soak/isolate.py [--rounds 5] [--n 6000] [--slow 10]

The soak mixes everything, which is realistic but leaves a small RSS trend that could be a leak
or the allocator settling. This takes each of the soak's operations alone, repeats it --n times
(8 at a time; --slow times for slow readers) on a server of its own and reads the server's RSS
after each batch, for --rounds rounds. Growth that happens in the first round and not in the later ones is the heap
reaching its working size; growth that repeats every round is memory kept per operation.
Writes OUT/isolate.json (read by render_reliability.py); exits 1 on any unexpected outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import (  # noqa: E402
    BINARY,
    FLOOD_BYTES,
    OP_TIMEOUT,
    REPO_ROOT,
    SLOW_RCVBUF,
    Client,
    Soak,
    git_commit,
    start_server,
)
from websockets.exceptions import ConnectionClosed  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def join_1000(soak: Soak, i: int) -> None:
    client = Client(soak, "join-1000", f"j{i}", "iso")
    await client.open()
    await client.leave("normal")


async def join_1001(soak: Soak, i: int) -> None:
    client = Client(soak, "join-1001", f"a{i}", "iso")
    await client.open()
    await client.leave("away")


async def drop_resume(soak: Soak, i: int) -> None:
    client = Client(soak, "drop-resume", f"r{i}", "iso")
    await client.open()
    await client.leave("drop")
    await client.open(resume=True)
    await client.leave("normal")


async def refused_410(soak: Soak, i: int) -> None:
    client = Client(soak, "refused-410", f"f{i}", "iso")
    await client.open()
    token = client.token
    await client.leave("normal")
    await client.expect_refused(token, 410)


async def slow_reader(soak: Soak, i: int, flooder: Client) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (soak.host, soak.port))
    ws = await soak.connect("/chat/flood", sock=sock, compression=None, max_queue=4)
    await ws.send(f"slow{i}")
    while not (await asyncio.wait_for(ws.recv(), OP_TIMEOUT)).startswith("resume "):
        pass
    before = (await soak.metrics())["roost_backpressure_closes_total"]
    started = time.monotonic()
    while time.monotonic() - started < 60:
        await flooder.say(base64.b64encode(os.urandom(FLOOD_BYTES * 3 // 4)).decode())
        if flooder.seq % 8 == 0:
            await flooder.settle()
            if (await soak.metrics())["roost_backpressure_closes_total"] > before:
                break
    try:
        async with asyncio.timeout(OP_TIMEOUT * 2):
            while True:
                await ws.recv()
    except (ConnectionClosed, TimeoutError):
        pass
    rcvd = ws.protocol.close_rcvd
    if rcvd is None or rcvd.code != 1013:
        soak.error("slow reader: wrong close", str(rcvd))
        ws.transport.abort()


async def batch(soak: Soak, operation, n: int, concurrency: int = 8) -> None:
    numbers = iter(range(n))

    async def worker() -> None:
        for i in numbers:
            try:
                await operation(soak, i)
            except Exception as error:  # noqa: BLE001
                soak.error(f"{operation.__name__} failed", repr(error)[:160])

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.build:
        subprocess.run(["cargo", "build", "--release", "-p", "roost-cli"], cwd=REPO_ROOT, check=True)
    operations = [
        ("join, leave with 1000", join_1000, args.n),
        ("join, leave with 1001 (stays resumable)", join_1001, args.n),
        ("join, drop TCP, resume, leave with 1000", drop_resume, args.n),
        ("join, leave with 1000, resume refused with 410", refused_410, args.n),
        ("slow reader flooded until closed with 1013", None, args.slow),
    ]
    growth: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for name, operation, n in operations:
        # A fresh server for each operation, so that none reuses memory another one freed.
        with tempfile.TemporaryDirectory(prefix="roost-isolate-") as durable:
            process, host, port, pump, _, bad_lines = await start_server(
                Path(args.binary), Path(durable), out / "isolate-server.log"
            )
            soak = Soak(host, port, random.Random(1))
            flooder = None
            if operation is None:
                flooder = Client(soak, "flooder", "flooder", "flood")
                await flooder.open()
            growth[name] = []
            for _ in range(args.rounds):
                before = rss_kib(process.pid)
                if flooder is None:
                    await batch(soak, operation, n)
                else:
                    for i in range(n):
                        await slow_reader(soak, i, flooder)
                growth[name].append((rss_kib(process.pid) - before) * 1024 / n)
            print(f"{name}: {[round(g) for g in growth[name]]} B per operation", flush=True)
            if flooder is not None:
                await flooder.leave("normal")
            process.terminate()
            await process.wait()
            await pump
            for line in bad_lines:
                soak.error("server log", line)
            for kind, count in soak.errors.items():
                errors[kind] = errors.get(kind, 0) + count
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "rounds": args.rounds,
        "n": args.n,
        "slow": args.slow,
        "concurrency": 8,
        "bytes_per_operation_by_round": {k: [round(v) for v in vs] for k, vs in growth.items()},
        "errors": errors,
    }
    (out / "isolate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=6000, help="operations per round (default 6000)")
    parser.add_argument("--slow", type=int, default=10, help="slow readers per round (default 10)")
    parser.add_argument("--out", default=str(REPO_ROOT / "target" / "soak"))
    parser.add_argument("--binary", default=str(BINARY))
    parser.add_argument("--no-build", dest="build", action="store_false")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
