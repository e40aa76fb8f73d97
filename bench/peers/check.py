#!/usr/bin/env python3
"""Check that every benchmark peer serves the bench app before anyone measures it.

For each stack: start it on a free loopback port, run the checks, stop it, print one line.
The WebSocket stacks are checked for echo (text, binary, 64 KiB, a fragmented message),
ping/pong, the close handshake and the room behaviour; the raw TCP ceiling only for echoing
bytes, since it has no framing and no rooms.

Needs Python 3.11 and the `websockets` package (the repo's .venv has it):

    .venv/bin/python bench/peers/check.py [--only NAME ...] [--threads N] [--with-roost [PATH]]

Ends with `peers-check: N passed, M failed`; exits 1 when any stack failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from websockets.asyncio.client import ClientConnection, connect
except ImportError:
    sys.exit("check.py needs the `websockets` package: run it with .venv/bin/python or /tmp/venv/bin/python")

PEERS = Path(__file__).resolve().parent
REPO = PEERS.parent.parent
RUST_BIN = PEERS / "rust" / "target" / "release"
BUN = PEERS / "node_modules" / ".bin" / "bun"

TIMEOUT = 5.0  # seconds allowed for any one expected reply
QUIET = 0.3  # seconds of silence that show a message was not delivered


class CheckFailed(Exception):
    """One check's failure, with what was seen."""


@dataclass
class Stack:
    name: str
    command: list[str]  # with "{listen}" where the address goes
    build_hint: str
    websocket: bool = True
    compression: bool = False  # accepts permessage-deflate (the compressed-echo scenario)

    def missing(self) -> Path | None:
        program = Path(self.command[0])
        return program if program.is_absolute() and not program.exists() else None


def stacks(threads: int, roost: Path | None) -> list[Stack]:
    rust_hint = "cargo build --release --manifest-path bench/peers/rust/Cargo.toml"
    threaded = ["--threads", str(threads)]
    found = [
        Stack("tungstenite", [str(RUST_BIN / "tungstenite-server"), "--listen", "{listen}", *threaded], rust_hint),
        Stack("fastwebsockets", [str(RUST_BIN / "fastwebsockets-server"), "--listen", "{listen}", *threaded], rust_hint),
        Stack("bun", [str(BUN), str(PEERS / "bun" / "server.js"), "--listen", "{listen}"], "npm ci --prefix bench/peers", compression=True),
        Stack("node-ws", ["node", str(PEERS / "node-ws" / "server.js"), "--listen", "{listen}"], "npm ci --prefix bench/peers", compression=True),
        Stack("raw-tcp", [str(RUST_BIN / "raw-tcp-echo"), "--listen", "{listen}", *threaded], rust_hint, websocket=False),
    ]
    if roost is not None:
        found.insert(0, Stack("roost", [str(roost), "serve", "--app", "bench", "--listen", "{listen}"], "cargo build --release -p roost-cli", compression=True))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise CheckFailed("not listening after 10 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def recv(ws: ClientConnection, what: str) -> str | bytes:
    try:
        return await asyncio.wait_for(ws.recv(), TIMEOUT)
    except TimeoutError:
        raise CheckFailed(f"{what}: nothing received within {TIMEOUT:.0f} s") from None


async def expect(ws: ClientConnection, sent: str | bytes, what: str) -> None:
    got = await recv(ws, what)
    if type(got) is not type(sent):
        raise CheckFailed(f"{what}: sent {type(sent).__name__}, received {type(got).__name__}")
    if got != sent:
        raise CheckFailed(f"{what}: received {len(got)} units that differ from the {len(sent)} sent")


async def expect_silence(ws: ClientConnection, what: str) -> None:
    try:
        got = await asyncio.wait_for(ws.recv(), QUIET)
    except TimeoutError:
        return
    raise CheckFailed(f"{what}: received {got[:40]!r}")


async def check_echo(url: str) -> list[str]:
    async with connect(url + "/echo", max_size=None, compression=None, ping_interval=None) as ws:
        await ws.send("hello, roost")
        await expect(ws, "hello, roost", "echo-text")
        blob = bytes(range(256)) * 4
        await ws.send(blob)
        await expect(ws, blob, "echo-binary")
        big = os.urandom(64 * 1024)
        await ws.send(big)
        await expect(ws, big, "echo-64k")
        big_text = "é" * (32 * 1024)  # 64 KiB of two-byte UTF-8
        await ws.send(big_text)
        await expect(ws, big_text, "echo-64k-text")
        await ws.send(iter(["frag", "ment", "ed é", "!"]))  # one message in four frames
        await expect(ws, "fragmented é!", "fragmented")
    return ["echo-text", "echo-binary", "echo-64k", "echo-64k-text", "fragmented"]


async def check_compressed_echo(url: str) -> list[str]:
    async with connect(url + "/", compression="deflate", ping_interval=None) as ws:
        if not any(ext.name == "permessage-deflate" for ext in ws.protocol.extensions):
            raise CheckFailed("compression: the server declined permessage-deflate")
        record = '{"id": 1, "user": "roost", "tags": ["a", "b"], "ok": true}'
        text = (record * 20)[:1024]
        await ws.send(text)
        await expect(ws, text, "compressed-echo")
    return ["compressed-echo"]


async def check_ping(url: str) -> list[str]:
    async with connect(url + "/", compression=None, ping_interval=None) as ws:
        pong = await ws.ping(b"roost-ping")
        try:
            await asyncio.wait_for(pong, TIMEOUT)
        except TimeoutError:
            raise CheckFailed("ping: no pong within 5 s") from None
    return ["ping"]


async def check_close(url: str) -> list[str]:
    ws = await connect(url + "/", compression=None, ping_interval=None)
    await ws.close(code=1000, reason="done")
    received = ws.protocol.close_rcvd
    if received is None:
        raise CheckFailed(f"close: no close frame came back (close code {ws.close_code})")
    if received.code != 1000:
        raise CheckFailed(f"close: the server answered with code {received.code}, not 1000")
    return ["close"]


async def check_room(url: str) -> list[str]:
    options = dict(compression=None, ping_interval=None)
    a1, a2, a3 = [await connect(url + "/room/a", **options) for _ in range(3)]
    b1 = await connect(url + "/room/b", **options)
    try:
        # A ping round trip shows the server has each connection in its read loop, so in its room.
        for ws in (a1, a2, a3, b1):
            await asyncio.wait_for(await ws.ping(), TIMEOUT)
        await a1.send("to room a")
        await a1.send(b"\x00binary to room a")
        for n, ws in ((2, a2), (3, a3)):
            await expect(ws, "to room a", f"room: a{n} from a1")
            await expect(ws, b"\x00binary to room a", f"room: a{n} from a1 (binary)")
        await a3.send("from a3")
        for n, ws in ((1, a1), (2, a2)):
            await expect(ws, "from a3", f"room: a{n} from a3")
        await expect_silence(a1, "room: a1 heard its own message")
        await expect_silence(a3, "room: a3 heard its own message")
        await expect_silence(b1, "room: /room/b heard room a")
    finally:
        for ws in (a1, a2, a3, b1):
            await ws.close()
    return ["room"]


async def check_raw_echo(port: int) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for what, payload in (("echo-bytes", b"hello, roost"), ("echo-64k", os.urandom(64 * 1024))):
            writer.write(payload)
            await writer.drain()
            try:
                got = await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError):
                raise CheckFailed(f"{what}: the bytes did not all come back") from None
            if got != payload:
                raise CheckFailed(f"{what}: the bytes came back changed")
    finally:
        writer.close()
    return ["echo-bytes", "echo-64k"]


async def run_checks(stack: Stack, port: int) -> list[str]:
    if not stack.websocket:
        return await check_raw_echo(port) + ["(room: n/a)"]
    url = f"ws://127.0.0.1:{port}"
    passed = []
    for check in (check_echo, check_ping, check_close, check_room):
        passed += await check(url)
    if stack.compression:
        passed += await check_compressed_echo(url)
    return passed


def check_stack(stack: Stack) -> tuple[bool, str]:
    if (program := stack.missing()) is not None:
        return False, f"{program.relative_to(REPO) if program.is_relative_to(REPO) else program} missing: {stack.build_hint}"
    port = free_port()
    command = [part.replace("{listen}", f"127.0.0.1:{port}") for part in stack.command]
    log = PEERS / f".check-{stack.name}.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_listening(port, process, time.monotonic() + 10)
        passed = asyncio.run(run_checks(stack, port))
        if process.poll() is not None:
            raise CheckFailed(f"exited with status {process.returncode} during the checks")
        log.unlink()
        return True, " ".join(passed)
    except CheckFailed as failure:
        return False, f"{failure} (log: {log.relative_to(REPO)})"
    except Exception as error:  # a connection refused or reset mid-check is a failure too
        return False, f"{type(error).__name__}: {error} (log: {log.relative_to(REPO)})"
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="check only these stacks")
    parser.add_argument("--threads", type=int, default=1, help="--threads for the Rust peers (default 1)")
    parser.add_argument(
        "--with-roost",
        nargs="?",
        const=REPO / "target" / "release" / "roost",
        type=Path,
        metavar="PATH",
        help="also check `roost serve --app bench` (default PATH: target/release/roost)",
    )
    args = parser.parse_args()
    selected = stacks(args.threads, args.with_roost)
    if args.only:
        unknown = set(args.only) - {stack.name for stack in selected}
        if unknown:
            parser.error(f"unknown stack(s): {', '.join(sorted(unknown))}")
        selected = [stack for stack in selected if stack.name in args.only]

    passed = failed = 0
    width = max(len(stack.name) for stack in selected)
    for stack in selected:
        ok, detail = check_stack(stack)
        print(f"{'PASS' if ok else 'FAIL'} {stack.name:<{width}}  {detail}", flush=True)
        passed += ok
        failed += not ok
    print(f"peers-check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
