"""Interoperability between roost and the Python `websockets` library, over real sockets.

1. A `websockets` client talks to `roost serve --app echo`: payload kinds, permessage-deflate
   negotiated or not, ping/pong, an application close code, wss:// with a test certificate.
2. `roost connect` talks to an echo server written here with `websockets`: plain and TLS, with
   and without compression on the Python side, and subprotocol selection.
3. Raw sockets send broken upgrade requests to `roost serve`; each gets the right HTTP status
   and the server keeps serving normal clients afterwards.

Everything listens on 127.0.0.1 with a port picked by the OS, every wait has a timeout, and the
fixtures kill every process and thread they start. The roost binary is `target/release/roost`
(build it with `cargo build --release -p roost-cli`) or the path in `ROOST_BIN`.
Run from the repository root: `.venv/bin/python -m pytest tests/interop -q`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import queue
import re
import secrets
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOST_BIN = Path(os.environ.get("ROOST_BIN", REPO_ROOT / "target" / "release" / "roost"))

STARTUP_TIMEOUT = 10.0  # seconds for a server to report its address
EXCHANGE_TIMEOUT = 20.0  # seconds for one whole client conversation
SOCKET_TIMEOUT = 5.0  # seconds for any single raw socket read

# Larger than the 1 MiB messages below; the client default is exactly 1 MiB.
MAX_MESSAGE = 4 * 1024 * 1024

# RFC 6455 §1.3: the sample nonce and the accept value derived from it.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- certificate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A private CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """Trusts only the test CA; hostname checking stays on."""
        return ssl.create_default_context(cafile=str(self.ca))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """Made with the `openssl` command: a P-256 CA, and a leaf certificate it signs."""
    directory = tmp_path_factory.mktemp("certificate")

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30
        )

    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(
        "req", "-x509", "-new", *ec_key, "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=roost interop test CA",
    )
    openssl(
        "req", "-new", *ec_key, "-keyout", "key.pem", "-out", "server.csr",
        "-subj", "/CN=localhost",
    )
    (directory / "server.ext").write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", str(secrets.randbits(63)), "-days", "2",
        "-extfile", "server.ext", "-out", "cert.pem",
    )
    return Certificate(
        ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )


# --- roost server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoostServer:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def url(self, scheme: str = "ws", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}/"


LISTENING = re.compile(r"listening on wss?://127\.0\.0\.1:(\d+)")


@pytest.fixture
def roost_server(tmp_path: Path) -> Iterator[Callable[..., RoostServer]]:
    """Starts `roost serve --app echo` on a free port; call it with extra CLI arguments.

    At teardown the server must still be running and must not have logged a panic: a test
    that crashed it fails even if its own assertions passed.
    """
    if not ROOST_BIN.is_file():
        pytest.fail(f"{ROOST_BIN} is missing: run `cargo build --release -p roost-cli` first")
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(*args: str) -> RoostServer:
        log = tmp_path / f"roost-serve-{len(started)}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(ROOST_BIN), "serve", "--app", "echo", "--listen", "127.0.0.1:0", *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={**os.environ, "NO_COLOR": "1"},
            )
        started.append((process, log))
        return RoostServer(process, log, port=_wait_for_listening(process, log))

    yield start

    problems = []
    for process, log in started:
        exit_code = process.poll()
        process.kill()
        process.wait(timeout=STARTUP_TIMEOUT)
        text = log.read_text(errors="replace")
        if exit_code is not None:
            problems.append(f"roost serve exited early with {exit_code}:\n{text}")
        elif "panicked" in text:
            problems.append(f"roost serve panicked:\n{text}")
    if problems:
        pytest.fail("\n".join(problems))


def _wait_for_listening(process: subprocess.Popen[bytes], log: Path) -> int:
    for _ in range(int(STARTUP_TIMEOUT / 0.02)):
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"roost serve did not report its address:\n{log.read_text()}")


# --- python server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """What the Python echo server saw of one connection, recorded once it closed."""

    path: str
    offered_extensions: str | None
    accepted_extensions: str | None
    subprotocol: str | None
    messages: list[str | bytes]
    close_received: Close | None
    peer_closed_first: bool | None


class PythonEchoServer:
    """A `websockets` echo server on its own event loop in a background thread."""

    def __init__(
        self,
        *,
        compression: str | None,
        tls: ssl.SSLContext | None,
        subprotocols: list[str] | None,
    ) -> None:
        self.sessions: queue.Queue[Session] = queue.Queue()
        self.port = 0
        self._options = dict(
            compression=compression, ssl=tls, subprotocols=subprotocols, max_size=MAX_MESSAGE
        )
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="python-echo-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT) or self._error is not None:
            raise AssertionError(f"python echo server did not start: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.cancel)
        self._thread.join(STARTUP_TIMEOUT)
        assert not self._thread.is_alive(), "python echo server did not stop"

    def next_session(self) -> Session:
        return self.sessions.get(timeout=SOCKET_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # start() reports it
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._echo, "127.0.0.1", 0, **self._options) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stop

    async def _echo(self, ws: ServerConnection) -> None:
        messages: list[str | bytes] = []
        try:
            async for message in ws:
                messages.append(message)
                await ws.send(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        self.sessions.put(
            Session(
                path=ws.request.path,
                offered_extensions=ws.request.headers.get("Sec-WebSocket-Extensions"),
                accepted_extensions=ws.response.headers.get("Sec-WebSocket-Extensions"),
                subprotocol=ws.subprotocol,
                messages=messages,
                close_received=ws.protocol.close_rcvd,
                peer_closed_first=ws.protocol.close_rcvd_then_sent,
            )
        )


@pytest.fixture
def python_server() -> Iterator[Callable[..., PythonEchoServer]]:
    """Starts a Python echo server; keyword arguments as in `PythonEchoServer`."""
    started: list[PythonEchoServer] = []

    def start(
        *,
        compression: str | None = "deflate",
        tls: ssl.SSLContext | None = None,
        subprotocols: list[str] | None = None,
    ) -> PythonEchoServer:
        server = PythonEchoServer(compression=compression, tls=tls, subprotocols=subprotocols)
        started.append(server)
        server.start()
        return server

    yield start

    for server in started:
        server.stop()


# --- helpers ------------------------------------------------------------------------------------


def run(coroutine, timeout: float = EXCHANGE_TIMEOUT):
    """Runs one client conversation on a fresh event loop, bounded by `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def python_client(url: str, **options):
    return connect(url, proxy=None, max_size=MAX_MESSAGE, open_timeout=SOCKET_TIMEOUT, **options)


def fingerprint(message: str | bytes) -> tuple[str, int, str]:
    """Type, length and digest: compares 1 MiB messages without printing them on failure."""
    data = message.encode() if isinstance(message, str) else message
    return (type(message).__name__, len(data), hashlib.sha256(data).hexdigest())


ECHO_PAYLOADS: list[tuple[str, str | bytes]] = [
    ("text", "hello roost"),
    ("binary", bytes(range(256))),
    ("empty text", ""),
    ("empty binary", b""),
    ("unicode", "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001f680\U0001f980"),
    ("large text", "roost\u2192" * (1 << 17)),  # 8 bytes each in UTF-8: exactly 1 MiB
    ("large binary", os.urandom(1 << 20)),
]


async def assert_echoes(ws) -> None:
    for name, payload in ECHO_PAYLOADS:
        await ws.send(payload)
        echoed = await ws.recv()
        assert fingerprint(echoed) == fingerprint(payload), f"{name} came back different"


async def echo_all(url: str, **options) -> str | None:
    """Echoes every payload; returns the server's Sec-WebSocket-Extensions header."""
    async with python_client(url, **options) as ws:
        await assert_echoes(ws)
        return ws.response.headers.get("Sec-WebSocket-Extensions")


# --- 1. python client -> roost serve ------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None], ids=["offered", "not-offered"])
def test_roost_server_echoes_python_client(roost_server, compression):
    server = roost_server()

    accepted = run(echo_all(server.url(), compression=compression))

    if compression:
        assert accepted is not None and "permessage-deflate" in accepted
    else:
        assert accepted is None


def test_roost_server_without_compression_declines_offer(roost_server):
    server = roost_server("--no-compression")

    accepted = run(echo_all(server.url(), compression="deflate"))

    assert accepted is None


def test_roost_server_answers_ping(roost_server):
    server = roost_server()

    async def ping() -> float:
        async with python_client(server.url()) as ws:
            # websockets resolves this only for a pong that carries the same payload.
            pong = await ws.ping(b"roost-interop")
            return await asyncio.wait_for(pong, SOCKET_TIMEOUT)

    latency = run(ping())

    assert isinstance(latency, float) and latency >= 0


def test_roost_server_echoes_application_close_code(roost_server):
    server = roost_server()

    async def close() -> tuple[Close | None, Close | None, int | None]:
        async with python_client(server.url()) as ws:
            await ws.send("before close")
            assert await ws.recv() == "before close"
            await ws.close(4000, "done here")
            return ws.protocol.close_sent, ws.protocol.close_rcvd, ws.close_code

    sent, received, close_code = run(close())

    assert sent == Close(4000, "done here")
    assert received is not None and received.code == 4000
    assert close_code == 4000


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_roost_server_over_tls(roost_server, certificate, host):
    server = roost_server("--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key))

    accepted = run(echo_all(server.url("wss", host), ssl=certificate.client_context()))

    assert accepted is not None and "permessage-deflate" in accepted


def test_roost_server_over_tls_rejects_untrusted_client_context(roost_server, certificate):
    """Sanity check of the TLS test itself: without the test CA the handshake must fail."""
    server = roost_server("--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key))

    with pytest.raises(ssl.SSLCertVerificationError):
        run(echo_all(server.url("wss"), ssl=ssl.create_default_context()))


# --- 2. roost connect -> python server ----------------------------------------------------------


CLIENT_LINES = [
    "first",
    "second",
    "",
    "unicode: h\u00e9llo \u65e5\u672c\u8a9e \U0001f680",
    "compressible " * 5000,
    "last",
]


@dataclass(frozen=True)
class ClientRun:
    returncode: int
    stdout_lines: list[str]
    stderr: str


def roost_connect(url: str, *args: str, lines: list[str] = CLIENT_LINES) -> ClientRun:
    """Runs `roost connect`, writes `lines` to its stdin, waits for as many lines on stdout,
    then closes stdin, which makes it close the connection with 1000 and exit.

    Stdin stays open until every echo is back: on EOF roost closes at once, and a peer that has
    answered the close frame rightly sends no more echoes.
    """
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(
            [str(ROOST_BIN), "connect", url, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env={**os.environ, "NO_COLOR": "1"},
        )
        stdout: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stdout, stdout), daemon=True)
        reader.start()
        received: list[str] = []
        try:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.write("".join(line + "\n" for line in lines).encode())
                process.stdin.flush()
            with contextlib.suppress(queue.Empty):
                while len(received) < len(lines):
                    line = stdout.get(timeout=EXCHANGE_TIMEOUT)
                    if line is None:
                        break
                    received.append(line)
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            returncode = process.wait(timeout=EXCHANGE_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=EXCHANGE_TIMEOUT)
        reader.join(SOCKET_TIMEOUT)
        while not stdout.empty():
            line = stdout.get_nowait()
            if line is not None:
                received.append(line)
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")
    return ClientRun(returncode, received, stderr)


def _read_lines(stream, lines: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").removesuffix("\n"))
    lines.put(None)


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-deflate"])
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_roost_client_against_python_server(python_server, certificate, scheme, compression):
    tls = certificate.server_context() if scheme == "wss" else None
    server = python_server(compression=compression, tls=tls)
    url = f"{scheme}://127.0.0.1:{server.port}/interop"
    ca_args = ("--ca", str(certificate.ca)) if tls else ()

    result = roost_connect(url, *ca_args)

    assert result.returncode == 0, result.stderr
    assert result.stdout_lines == CLIENT_LINES
    assert f"connected to {url}" in result.stderr.splitlines()

    session = server.next_session()
    assert session.path == "/interop"
    assert session.messages == CLIENT_LINES
    assert session.close_received == Close(1000, "")
    assert session.peer_closed_first is True
    assert session.offered_extensions is not None
    assert "permessage-deflate" in session.offered_extensions
    if compression:
        assert session.accepted_extensions is not None
        assert "permessage-deflate" in session.accepted_extensions
    else:
        assert session.accepted_extensions is None


def test_roost_client_selects_subprotocol(python_server):
    server = python_server(subprotocols=["chat"])
    url = f"ws://127.0.0.1:{server.port}/"

    result = roost_connect(url, "--protocol", "chat", lines=["hello chat"])

    assert result.returncode == 0, result.stderr
    assert f"connected to {url} (chat)" in result.stderr.splitlines()
    assert result.stdout_lines == ["hello chat"]
    assert server.next_session().subprotocol == "chat"


def test_roost_client_rejects_untrusted_certificate(python_server, certificate):
    """Sanity check of the wss tests: without --ca the test certificate must not be trusted."""
    server = python_server(tls=certificate.server_context())

    result = roost_connect(f"wss://127.0.0.1:{server.port}/", lines=["never sent"])

    assert result.returncode != 0
    assert result.stdout_lines == []
    assert "certificate" in result.stderr


# --- 3. broken upgrade requests -> roost serve --------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    body: bytes
    closed: bool  # the server closed the connection after responding


def upgrade_request(
    method: str = "GET",
    version: str = "13",
    key: str | None = SAMPLE_KEY,
    extra: str = "",
) -> bytes:
    lines = [
        f"{method} / HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_exchange(port: int, request: bytes) -> HttpResponse:
    """Sends raw bytes, reads one response head and its Content-Length body, then waits
    briefly for the server to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a server may answer and close before reading an oversized request
        data = b""
        closed = False
        while True:
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator and len(body) >= _content_length(head):
                break
            chunk = _receive(sock)
            if not chunk:
                closed = True
                break
            data += chunk
        if not closed:
            sock.settimeout(1.0)
            try:
                closed = _receive(sock) == b""
            except socket.timeout:
                closed = False
    assert separator, f"no complete response head: {data[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return HttpResponse(int(status_line.split()[1]), headers, body, closed)


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _content_length(head: bytes) -> int:
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    return int(match.group(1)) if match else 0


def test_raw_valid_upgrade_is_accepted(roost_server):
    """The control case for the raw helper: the RFC 6455 §1.3 sample key is accepted."""
    server = roost_server()

    response = http_exchange(server.port, upgrade_request())

    expected_accept = base64.b64encode(
        hashlib.sha1((SAMPLE_KEY + ACCEPT_GUID).encode()).digest()
    ).decode()
    assert expected_accept == SAMPLE_ACCEPT
    assert response.status == 101
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["sec-websocket-accept"] == SAMPLE_ACCEPT
    assert not response.closed


BAD_REQUESTS = {
    "version-8": (upgrade_request(version="8"), 426),
    "post": (upgrade_request(method="POST"), 405),
    "missing-key": (upgrade_request(key=None), 400),
    "header-20kb": (upgrade_request(extra="X-Padding: " + "a" * 20 * 1024), 431),
}


@pytest.mark.parametrize("request_bytes, status", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_upgrade_is_rejected_and_server_keeps_serving(roost_server, request_bytes, status):
    server = roost_server()

    response = http_exchange(server.port, request_bytes)

    assert response.status == status
    assert response.closed, "the server kept a rejected connection open"
    if status == 426:
        assert response.headers.get("sec-websocket-version") == "13"
    if status == 405:
        assert response.headers.get("allow") == "GET"
    assert "sec-websocket-accept" not in response.headers

    async def still_serving() -> str | bytes:
        async with python_client(server.url()) as ws:
            await ws.send("still there?")
            return await ws.recv()

    assert run(still_serving()) == "still there?"
