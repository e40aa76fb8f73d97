"""Fixtures for the hostile-input suite: the `roost serve` processes under attack, the
connections opened before any attack ("bystanders"), process measurements (RSS, CPU, open file
descriptors), and the results file that `render_security.py` turns into docs/security.md.

Every server listens on 127.0.0.1 with a port the OS picks (read from its `listening on` line)
and is killed when the session ends.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
import websockets
from websockets.sync.client import ClientConnection, connect

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOST_BIN = Path(os.environ.get("ROOST_BIN", REPO_ROOT / "target" / "release" / "roost"))
RESULTS = REPO_ROOT / "target" / "hostile" / "results.json"

STARTUP_TIMEOUT = 10.0  # seconds for a server to print its address
CLIENT_TIMEOUT = 3.0  # seconds for any step of a well-behaved client

# The origin the chat servers allow (`--allow-origin`); every well-behaved chat client sends it.
GOOD_ORIGIN = "https://good.example"

LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- one running server ----------------------------------------------------------------------


class Client:
    """A well-behaved client (the `websockets` library, permessage-deflate on) that checks the
    server answers: echo returns the message, chat broadcasts `<name>: <message>` back."""

    def __init__(self, server: "Server", label: str) -> None:
        self.server = server
        self.name = f"{label}-{os.urandom(3).hex()}"
        # Entered as a context manager (the form websockets 17 asks for), left in close().
        self.ws: ClientConnection = connect(
            server.url(f"/chat/{self.name}") if server.app == "chat" else server.url("/"),
            origin=GOOD_ORIGIN if server.app == "chat" else None,
            open_timeout=CLIENT_TIMEOUT,
            close_timeout=CLIENT_TIMEOUT,
            max_size=None,
        ).__enter__()
        self.sent = 0
        if server.app == "chat":
            self.ws.send(self.name)
            assert self.ws.recv(timeout=CLIENT_TIMEOUT) == f"hello {self.name}"
            assert str(self.ws.recv(timeout=CLIENT_TIMEOUT)).startswith("resume ")

    def round_trip(self) -> bool:
        """Sends one message and waits for the server's answer to it."""
        self.sent += 1
        text = f"still there? {self.sent} {os.urandom(4).hex()}"
        want = f"{self.name}: {text}" if self.server.app == "chat" else text
        self.ws.send(text)
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while time.monotonic() < deadline:
            if self.ws.recv(timeout=max(0.01, deadline - time.monotonic())) == want:
                return True
        return False

    def close(self) -> None:
        self.ws.close()


@dataclass
class Snapshot:
    rss_kib: int
    cpu_ms: float
    fds: int


@dataclass
class Server:
    """A `roost serve` process and what the suite measures of it."""

    app: str
    args: list[str]
    process: subprocess.Popen
    log: Path
    port: int
    durable: Path | None = None
    bystander: Client | None = None
    started_rss_kib: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def is_running(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, "VmRSS missing from /proc/PID/status"
        return int(match.group(1))

    def cpu_ms(self) -> float:
        # Fields 14 and 15 (utime, stime) come after the parenthesised command name.
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def snapshot(self) -> Snapshot:
        return Snapshot(self.rss_kib(), self.cpu_ms(), self.fds())

    def wait_fds(self, at_most: int, timeout: float) -> int:
        """Waits until the server holds at most `at_most` descriptors; returns the count."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.fds()
            if count <= at_most or time.monotonic() > deadline:
                return count
            time.sleep(0.02)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class RssSampler:
    """Samples a server's RSS every few milliseconds while an attack runs; keeps the peak."""

    def __init__(self, server: Server, interval: float = 0.005) -> None:
        self.server, self.interval = server, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, self.server.rss_kib())
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self.peak_kib = self.server.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.peak_kib = max(self.peak_kib, self.server.rss_kib())
        except (OSError, AssertionError):
            pass


def start_server(app: str, *args: str, workdir: Path, name: str, prefix: Sequence[str] = (),
                 preexec_fn: Callable[[], None] | None = None) -> Server:
    """Starts `roost serve --app APP ARGS` on a free port. `prefix` runs it through another
    command that execs it (so the pid stays the server's: `nsenter`, say); `preexec_fn` runs
    in the child before that (to lower a resource limit, say)."""
    if not ROOST_BIN.exists():
        pytest.exit(
            f"{ROOST_BIN} is missing: run `cargo build --release -p roost-cli` first", returncode=2
        )
    log = workdir / f"{name}.log"
    command = [*prefix, str(ROOST_BIN), "serve", "--app", app, "--listen", "127.0.0.1:0", *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=sink, stdin=subprocess.DEVNULL,
            preexec_fn=preexec_fn,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            server = Server(app, list(args), process, log, int(match.group(1)))
            server.started_rss_kib = server.rss_kib()
            return server
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    process.wait()
    raise RuntimeError(f"{command} did not start:\n{log.read_text(errors='replace')}")


def stop_server(server: Server) -> None:
    if server.bystander is not None:
        try:
            server.bystander.close()
        except Exception:  # the server may already be gone; stopping it is what matters
            pass
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="roost-hostile-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The servers under attack, by name: (app, arguments); {durable} is a fresh directory.
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "echo": ("echo", []),
    "chat": ("chat", ["--durable", "{durable}", "--allow-origin", GOOD_ORIGIN]),
    "chat-limited": ("chat", ["--max-connections", "4", "--allow-origin", GOOD_ORIGIN]),
}
_started = 0


def start_configured(target: str, workdir: Path) -> Server:
    """Starts the server `target` of CONFIGS and connects its bystander."""
    global _started
    _started += 1
    app, args = CONFIGS[target]
    durable = workdir / f"durable-{_started}"
    args = [arg.replace("{durable}", str(durable)) for arg in args]
    server = start_server(app, *args, workdir=workdir, name=f"{target}-{_started}")
    if "--durable" in args:
        server.durable = durable
    try:
        server.bystander = Client(server, "bystander")
        assert server.bystander.round_trip()
    except BaseException:
        stop_server(server)
        raise
    return server


@pytest.fixture(scope="session")
def servers(workdir: Path) -> Iterator[dict[str, Server]]:
    """The servers under attack (see CONFIGS), each with a bystander connected before any
    attack: `echo`; `chat` with a durable directory and an Origin allowlist; `chat-limited`
    with --max-connections 4, for the admission limit."""
    started: dict[str, Server] = {}
    try:
        for target in CONFIGS:
            started[target] = start_configured(target, workdir)
        yield started
    finally:
        for server in started.values():
            stop_server(server)


# --- results ---------------------------------------------------------------------------------


class Recorder:
    """Collects one record per hostile case; written to target/hostile/results.json."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.servers: dict[str, dict] = {}
        self.known_bugs: dict[str, str] = {}
        self.rss_bound_kib = 0

    def add(self, record: dict) -> None:
        self.records = [r for r in self.records if r["id"] != record["id"]] + [record]


RECORDER = Recorder()


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return RECORDER


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RECORDER.records:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
        "binary": str(ROOST_BIN.relative_to(REPO_ROOT) if ROOST_BIN.is_relative_to(REPO_ROOT)
                      else ROOST_BIN),
        "host": f"{platform.system()} {platform.release()} {platform.machine()}, "
                f"{os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "rss_bound_kib": RECORDER.rss_bound_kib,
        "servers": RECORDER.servers,
        "known_bugs": RECORDER.known_bugs,
        "pytest_exit_status": int(exitstatus),
        "cases": RECORDER.records,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config) -> None:
    if not RECORDER.records:
        return
    write = terminalreporter.write_line
    terminalreporter.section("hostile-input results")
    failed = [r for r in RECORDER.records if not r["passed"] and not r["known_bug"]]
    known = [r for r in RECORDER.records if r["known_bug"]]
    write(f"{len(RECORDER.records)} cases recorded in {RESULTS.relative_to(REPO_ROOT)}; "
          f"{len(failed)} unexpected, {len(known)} in KNOWN_BUGS")
    for record in known:
        write(f"KNOWN BUG {record['id']}: expected {record['expected']!r}, "
              f"observed {record['observed']!r} -- {RECORDER.known_bugs.get(record['id'], '')}")
    for record in failed:
        write(f"FAILED {record['id']}: {'; '.join(record['problems'])}")
