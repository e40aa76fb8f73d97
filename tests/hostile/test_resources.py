"""Resource faults against a running `roost serve`: the process runs out of file descriptors,
and the disk under its durable directory fills up.

Each test starts its own server (the faults would spoil the shared ones) and records its
outcome next to the hostile cases, so that docs/security.md shows it:

- Out of descriptors: `roost serve` (echo, and chat on roost-server) runs with a descriptor
  limit of FD_LIMIT. Clients connect until one is no longer answered. The server must stay up,
  say so in its log, keep serving the connections it has, and, once some of them end, accept
  the client that waited in the backlog and new ones; chat also counts the failed accepts in
  `roost_accept_errors_total`.
- Disk full: chat with `--durable` on a small tmpfs, mounted in a private mount namespace
  (`unshare`; needs root, as the test command runs). Clients register names (acknowledged by
  `hello`), then the disk is filled. A new name must be refused with close 1011 and a reason,
  the log must say why, the store must hold no torn or temporary file, everyone else keeps
  chatting; once space is freed names are stored again; after kill -9 and a restart on the
  same directory, every acknowledged name resumes.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import (
    CLIENT_TIMEOUT, GOOD_ORIGIN, ROOST_BIN, Client, Recorder, RssSampler, Server, Snapshot,
    start_server, stop_server,
)
from test_hostile import read_http_answer, upgrade_request

FD_LIMIT = 64  # the server's descriptor limit (soft and hard) in the exhaustion test
STALL = 1.0  # seconds without an answer that mean the server is not accepting
TMPFS_SIZE = "256k"  # the durable directory's disk in the disk-full test


def record(recorder: Recorder, server: Server, *, case: str, sent: str, expected: str,
           observed: str, problems: list[str], ms: float | None, before: Snapshot,
           after: Snapshot, peak_kib: int, fds_released: bool, shown_args: list[str],
           alive: bool) -> None:
    """Adds one record in the hostile suite's format (class `resources`): `before` and
    `after` bracket the fault on `server`, `peak_kib` is its RSS sampled during it, `alive`
    whether the server (or the one restarted after it) still serves."""
    target = f"{server.app}-{case}"
    recorder.servers[target] = {"app": server.app, "args": shown_args}
    recorder.add({
        "id": f"resources/{case}[{target}]",
        "class": "resources",
        "target": target,
        "sent": sent,
        "expected": expected,
        "observed": observed,
        "detail": "",
        "time_to_answer_ms": None if ms is None else round(ms, 1),
        "rss_before_kib": before.rss_kib,
        "rss_peak_delta_kib": peak_kib - before.rss_kib,
        "rss_after_delta_kib": after.rss_kib - before.rss_kib,
        "cpu_ms": round(after.cpu_ms - before.cpu_ms, 1),
        "fds_released": fds_released,
        "server_alive": alive,
        "bystander_ok": not any(p.startswith("the bystander") for p in problems),
        "passed": not problems,
        "known_bug": False,
        "problems": problems,
    })


def wait_for_log(server: Server, pattern: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, server.log_text()):
            return True
        time.sleep(0.02)
    return False


# --- out of file descriptors -------------------------------------------------------------------


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def begin_upgrade(server: Server) -> tuple[socket.socket, float]:
    """Connects (the kernel completes this from the backlog) and sends an upgrade request."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    sock.sendall(upgrade_request(server))
    return sock, time.monotonic()


def accept_errors_metric(server: Server) -> int | None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_http_answer(sock, time.monotonic(), CLIENT_TIMEOUT)
    match = re.search(rb"^roost_accept_errors_total (\d+)", answer.body, re.MULTILINE)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize("app", ["echo", "chat"])
def test_out_of_descriptors(app: str, workdir: Path, recorder: Recorder) -> None:
    args = ["--allow-origin", GOOD_ORIGIN] if app == "chat" else []
    server = start_server(app, *args, workdir=workdir, name=f"{app}-fd-limit",
                          preexec_fn=limit_descriptors)
    held: list[socket.socket] = []
    problems: list[str] = []
    observed, ms = "never ran out", None
    try:
        bystander = Client(server, "bystander")
        assert bystander.round_trip()
        before = server.snapshot()
        floor = before.fds
        sampler = RssSampler(server).__enter__()
        # Upgrade until one request goes unanswered: the server is out of descriptors. Each
        # answered connection stays open, holding one of the server's descriptors.
        waiting = None
        for _ in range(FD_LIMIT + 16):
            sock, started = begin_upgrade(server)
            answer = read_http_answer(sock, started, STALL)
            if answer.status is None and answer.error == "TimeoutError":
                waiting = (sock, started)
                break
            assert answer.status == 101, f"upgrade refused: {answer}"
            held.append(sock)
        if waiting is None:
            problems.append(f"{len(held)} connections open and still accepting: the limit of "
                            f"{FD_LIMIT} descriptors did not apply")
        else:
            observed = f"out of descriptors after {len(held)} connections"
            if not server.is_running():
                problems.append(f"the server died:\n{server.log_text()[-2000:]}")
            if not wait_for_log(server, r"WARN.*cannot accept connections"):
                problems.append("the log does not say that accepting failed")
            if not bystander.round_trip():
                problems.append("the bystander got no answer while descriptors ran out")
            # Ending a few connections frees descriptors: the waiting client gets its answer.
            for sock in held[:4]:
                sock.close()
            del held[:4]
            sock, started = waiting
            answer = read_http_answer(sock, started, CLIENT_TIMEOUT * 2)
            held.append(sock)
            if answer.status != 101:
                problems.append(f"the client waiting in the backlog got {answer} once "
                                "descriptors were free")
            else:
                ms = answer.ms
                observed += "; accepted the waiting client once 4 ended"
            fresh = Client(server, "fresh")
            if not fresh.round_trip():
                problems.append("a fresh client got no answer after descriptors were freed")
            fresh.close()
            if not wait_for_log(server, r"accepting connections again"):
                problems.append("the log does not say that accepting works again")
            if app == "chat":
                counted = accept_errors_metric(server)
                if not counted:
                    problems.append(f"roost_accept_errors_total is {counted}, not counted")
                else:
                    observed += f"; roost_accept_errors_total {counted}"
        for sock in held:
            sock.close()
        held.clear()
        released = server.wait_fds(floor, 5.0) <= floor
        if not released:
            problems.append(f"{server.fds() - floor} descriptors not released")
        sampler.__exit__(None, None, None)
        record(recorder, server, case="out-of-descriptors",
               sent=f"connections until the server's {FD_LIMIT} descriptors run out, then 4 end",
               expected="keeps serving; reports it; accepts again once descriptors free",
               observed=observed if not problems else "; ".join(problems), problems=problems,
               ms=ms, before=before, after=server.snapshot(), peak_kib=sampler.peak_kib,
               fds_released=released, shown_args=[*args, f"(ulimit -n {FD_LIMIT})"],
               alive=server.is_running())
        bystander.close()
    finally:
        for sock in held:
            sock.close()
        stop_server(server)
    assert not problems, "\n".join(problems)


# --- disk full ----------------------------------------------------------------------------------


class PrivateTmpfs:
    """A tmpfs of TMPFS_SIZE at `path`, visible only inside a mount namespace that a `sleep`
    process holds; servers join it with `nsenter`, the test reaches it through /proc."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        script = (f'mount -t tmpfs -o size={TMPFS_SIZE},mode=0700 roost-disk-full "$0" '
                  '&& echo mounted && exec sleep 600')
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        line = self.holder.stdout.readline().strip()
        if line != "mounted":
            self.holder.kill()
            _, err = self.holder.communicate(timeout=5)
            pytest.fail(f"cannot mount a private tmpfs (the test command runs as root): {err}")

    @property
    def prefix(self) -> list[str]:
        """Runs a command inside the namespace (nsenter execs it: the pid stays the server's)."""
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--"]

    def outside(self, inside: Path) -> Path:
        """The path through which this process reaches `inside` (a path in the namespace)."""
        return Path(f"/proc/{self.holder.pid}/root") / inside.relative_to("/")

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def register(server: Server, name: str) -> tuple[ClientConnection, str]:
    """Joins the room `disk` and says `name`; returns the connection and its resume token."""
    ws = connect(server.url("/chat/disk"), origin=GOOD_ORIGIN, open_timeout=CLIENT_TIMEOUT,
                 close_timeout=CLIENT_TIMEOUT).__enter__()
    ws.send(name)
    assert ws.recv(timeout=CLIENT_TIMEOUT) == f"hello {name}"
    token = str(ws.recv(timeout=CLIENT_TIMEOUT))
    assert token.startswith("resume ")
    return ws, token.removeprefix("resume ")


def refused_name(server: Server, name: str) -> tuple[str, float]:
    """Says `name` on a new connection; returns how the server answered and how fast."""
    ws = connect(server.url("/chat/disk"), origin=GOOD_ORIGIN, open_timeout=CLIENT_TIMEOUT,
                 close_timeout=CLIENT_TIMEOUT).__enter__()
    started = time.monotonic()
    ws.send(name)
    try:
        answer = ws.recv(timeout=CLIENT_TIMEOUT)
        ws.close()
        return f"answered {answer!r}", (time.monotonic() - started) * 1000
    except ConnectionClosed as closed:
        got = closed.rcvd
        outcome = "closed without a close frame" if got is None else \
            f"close {got.code} {got.reason!r}"
        return outcome, (time.monotonic() - started) * 1000


def fill(path: Path) -> int:
    """Writes to `path` until the disk is full; returns the bytes written."""
    chunk = b"\0" * 16384
    written = 0
    with path.open("wb") as sink:
        for _ in range(100_000):
            try:
                written += sink.write(chunk)
                sink.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written
    raise AssertionError(f"wrote {written} bytes into a {TMPFS_SIZE} tmpfs without filling it")


def store_entries(store: Path) -> list[str]:
    return sorted(name for name in os.listdir(store) if name != ".lock")


def listed_ids(store: Path) -> set[str]:
    """The attachment ids `roost attachments list` prints (it validates what it reads)."""
    listing = subprocess.run([str(ROOST_BIN), "attachments", "list", str(store)],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    return {line.split()[0] for line in listing.stdout.splitlines()[1:] if line.strip()}


def resumes(server: Server, token: str, name: str) -> bool:
    with connect(server.url(f"/chat/disk?resume={token}"), origin=GOOD_ORIGIN,
                 open_timeout=CLIENT_TIMEOUT, close_timeout=CLIENT_TIMEOUT) as ws:
        return ws.recv(timeout=CLIENT_TIMEOUT) == f"welcome back {name}"


def test_disk_full(workdir: Path, recorder: Recorder) -> None:
    disk = PrivateTmpfs(workdir / "tmpfs")
    store = disk.path / "store"
    args = ["--durable", str(store), "--allow-origin", GOOD_ORIGIN]
    start: Callable[[str], Server] = lambda name: start_server(
        "chat", *args, workdir=workdir, name=name, prefix=disk.prefix)
    server = start("chat-disk-full")
    problems: list[str] = []
    observed, ms = "", None
    acked: dict[str, str] = {}  # name -> resume token
    open_ws: list[ClientConnection] = []
    try:
        for n in range(5):
            ws, token = register(server, f"before-{n}")
            acked[f"before-{n}"] = token
            open_ws.append(ws)
        # Measured on this server from here until the kill: RSS, CPU, and descriptors (the
        # refused client's socket and the failed write's temporary file must be released).
        before = server.snapshot()
        sampler = RssSampler(server).__enter__()
        filler = disk.outside(disk.path / "filler")
        fill(filler)
        outcome, ms = refused_name(server, "while-full")
        observed = f"{outcome}"
        expected_close = "close 1011 'cannot store your name right now'"
        if outcome != expected_close:
            problems.append(f"a name while the disk is full: expected {expected_close}, got "
                            f"{outcome}")
        if not wait_for_log(server, r"cannot store the name.*No space left on device"):
            problems.append("the log does not say the disk is full:\n" + server.log_text()[-2000:])
        # Everyone else keeps chatting: the first registered client sees its own broadcast.
        open_ws[0].send("still here")
        if open_ws[0].recv(timeout=CLIENT_TIMEOUT) != "before-0: still here":
            problems.append("the bystander got no answer while the disk was full")
        inside = disk.outside(store / "ws")  # the store keeps its files in DIR/ws
        entries = store_entries(inside)
        if len(entries) != len(acked) or any(not e.endswith(".att") for e in entries):
            problems.append(f"the store holds {entries}, not the {len(acked)} acknowledged "
                            "attachments alone (a torn or temporary file?)")
        if len(listed_ids(disk.outside(store))) != len(acked):
            problems.append("`roost attachments list` does not show every acknowledged name")
        released = server.wait_fds(before.fds, 5.0) <= before.fds
        if not released:
            problems.append(f"{server.fds() - before.fds} descriptors not released")
        filler.unlink()
        ws, token = register(server, "after-freeing")
        acked["after-freeing"] = token
        open_ws.append(ws)
        observed += "; names stored again once space was freed"
        sampler.__exit__(None, None, None)
        after = server.snapshot()
        measured = server
        # kill -9, restart on the same directory: every acknowledged name resumes.
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        for ws in open_ws:
            ws.close_socket()
        open_ws.clear()
        server = start("chat-disk-full-restarted")
        lost = [name for name, token in acked.items() if not resumes(server, token, name)]
        if lost:
            problems.append(f"after kill -9 and a restart these names did not resume: {lost}")
        else:
            observed += f"; all {len(acked)} acknowledged names resumed after kill -9"
        record(recorder, measured, case="disk-full",
               sent="5 names stored, then the durable directory's disk filled and a 6th "
                    "name sent; space freed; kill -9 and restart",
               expected="close 1011 to that client only; no torn file; every acknowledged "
                        "name resumes",
               observed=observed if not problems else "; ".join(problems), problems=problems,
               ms=ms, before=before, after=after, peak_kib=sampler.peak_kib,
               fds_released=released, shown_args=["--durable", f"DIR (tmpfs of {TMPFS_SIZE})", "--allow-origin",
                           GOOD_ORIGIN],
               alive=server.is_running() and not lost)
    finally:
        for ws in open_ws:
            ws.close_socket()
        stop_server(server)
        disk.close()
    assert not problems, "\n".join(problems)
