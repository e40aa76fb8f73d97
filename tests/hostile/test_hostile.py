"""Hostile input against a running `roost serve` (echo and chat).

Each case sends one kind of hostile input over a raw socket (handshakes byte for byte, frames
built and masked here) and checks four things:
1. the exact answer: the HTTP status (and the headers it must carry) or the close code;
2. the server is alive: a fresh, well-behaved WebSocket client gets its answer;
3. a bystander connection, opened before any attack, still gets its answer;
4. resources stay bounded: the server's RSS (sampled every 5 ms from /proc/PID/status) never
   rises more than RSS_BOUND_KIB over its value before the case, and the server's file
   descriptors come back to their level before the case.

Every case is recorded in target/hostile/results.json (`render_security.py` turns that into
docs/security.md). A case that shows a real bug is listed in KNOWN_BUGS with what is wrong: it
is then reported as XFAIL and in the "hostile-input results" summary, never passed silently.

Run from the repository root (after `cargo build --release -p roost-cli`):
    .venv/bin/python -m pytest tests/hostile -q
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import select
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import (
    GOOD_ORIGIN, Client, Recorder, RssSampler, Server, start_configured, stop_server,
)

# --- bounds ------------------------------------------------------------------------------------

MiB = 1 << 20

# How far the server's RSS may rise during one case. The largest buffer one connection may make
# the server hold is one message of max_message_size (16 MiB); while it is assembled, inflated
# or echoed it can exist about twice (input buffer and output), and the allocator keeps some
# of it. 64 MiB leaves room for that while every attack below is sized so that an unbounded
# reaction (allocating a declared 2^63-byte length, inflating a 256 MiB bomb, queueing a pong
# for each of 600,000 pings) would go well past it.
RSS_BOUND_KIB = 64 * 1024

# Any handshake, however hostile, must be answered within this.
HANDSHAKE_ANSWER_MS = 1000
# The handshake deadline roost enforces (Limits::handshake_timeout) and the close timeout
# (Limits::close_timeout), with the slack the deadline checks allow.
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
DEADLINE_SLACK_S = 2.0

READ_TIMEOUT = 5.0  # seconds for any one answer the server owes
FREE_TIMEOUT = 3.0  # seconds for the server to release an attacking connection's descriptor

MAX_MESSAGE = 16 * MiB  # the default max_message_size and max_frame_size
MAX_QUEUED_OUTPUT = 8 * MiB  # Limits::max_queued_output, where pongs stop being queued

# Cases that show a bug in roost. Each maps the case id to what is wrong; such a case is
# reported as XFAIL with its observed outcome (and in the summary), never silently passed. A
# listed case that starts passing fails, so the list is kept honest.
KNOWN_BUGS: dict[str, str] = {}


# --- the wire: handshakes ----------------------------------------------------------------------

SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"


def default_path(server: Server) -> str:
    """Echo serves every path; on chat each connection gets a room of its own, so that no
    broadcast of another case reaches it."""
    return f"/chat/hostile-{os.urandom(4).hex()}" if server.app == "chat" else "/"


def upgrade_request(
    server: Server,
    *,
    method: str = "GET",
    target: str | bytes | None = None,
    version: str = "HTTP/1.1",
    replace: dict[str, str | None] | None = None,
    extra: list[str] | None = None,
) -> bytes:
    """A valid upgrade request for `server`, with headers replaced (None removes one) or added.
    Chat requests carry the allowed Origin, so that the checks after it are reached."""
    headers: dict[str, str | None] = {
        "Host": f"127.0.0.1:{server.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if server.app == "chat":
        headers["Origin"] = GOOD_ORIGIN
    headers.update(replace or {})
    lines = [f"{name}: {value}" for name, value in headers.items() if value is not None]
    lines += extra or []
    target = target if target is not None else default_path(server)
    target = target if isinstance(target, bytes) else target.encode()
    return (
        method.encode() + b" " + target + b" " + version.encode() + b"\r\n"
        + "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n"
    )


@dataclass
class HttpAnswer:
    status: int | None
    headers: dict[str, str]
    body: bytes
    ms: float
    error: str = ""
    leftover: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def read_http_answer(sock: socket.socket, started: float, timeout: float) -> HttpAnswer:
    """Reads a response head (and a body of Content-Length, unless the answer is 101)."""
    sock.settimeout(timeout)
    data = b""
    error = ""
    first_byte_ms = None
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            if first_byte_ms is None:
                first_byte_ms = (time.monotonic() - started) * 1000
            data += chunk
    except OSError as exc:
        error = type(exc).__name__
    ms = first_byte_ms if first_byte_ms is not None else (time.monotonic() - started) * 1000
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    if not match:
        return HttpAnswer(None, {}, data, ms, error or ("eof" if not data else "not HTTP"))
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(match.group(1))
    if status == 101:
        return HttpAnswer(status, headers, b"", ms, error, leftover=rest)
    want = int(headers.get("content-length", "0"))
    try:
        while len(rest) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    except OSError:
        pass
    return HttpAnswer(status, headers, rest, ms, error)


def http_exchange(server: Server, request: bytes, timeout: float = READ_TIMEOUT) -> HttpAnswer:
    """Sends `request` and reads the answer; a send refused half-way (the server already
    answered and closed) is not an error as long as the answer arrives."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        started = time.monotonic()
        try:
            sock.sendall(request)
        except OSError:
            pass
        return read_http_answer(sock, started, timeout)


def describe_answer(answer: HttpAnswer, must_have: dict[str, str] | None = None) -> str:
    """`HTTP 426 + Sec-WebSocket-Version: 13`: the status and the headers checked for."""
    if answer.status is None:
        return f"no HTTP answer ({answer.error})"
    text = f"HTTP {answer.status}"
    for name, value in (must_have or {}).items():
        got = answer.header(name)
        if value is None:
            text += f" without {name}" if got is None else f" + {name}: {got}"
        else:
            text += f" + {name}: {got}" if got is not None else f" without {name}"
    return text


# --- the wire: frames --------------------------------------------------------------------------

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    masked: bool = True,
    length: int | None = None,
    form: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """One client frame. `length` declares a payload length other than the real one; `form`
    forces the length encoding (7, 16 or 64 bits) even where it is not the minimal one."""
    first = (fin << 7) | (rsv1 << 6) | (rsv2 << 5) | (rsv3 << 4) | opcode
    n = len(payload) if length is None else length
    form = form or (7 if n < 126 else 16 if n < 65536 else 64)
    bit = 0x80 if masked else 0
    if form == 7:
        head = bytes([first, bit | n])
    elif form == 16:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = key or os.urandom(4)
    return head + key + mask(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def deflate(data: bytes, level: int = 9) -> bytes:
    """A permessage-deflate payload: raw deflate, sync-flushed, the 00 00 ff ff tail removed."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


@functools.cache
def bomb(megabytes: int) -> bytes:
    """`megabytes` MiB of zeros as one deflate stream of about 1 KiB per MiB. Sync-flushed
    pieces of independent compressors concatenate into a valid stream."""
    piece = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = piece.compress(bytes(MiB)) + piece.flush(zlib.Z_SYNC_FLUSH)
    return (chunk * megabytes)[:-4]


class BitWriter:
    """Writes deflate bit fields (least significant bit first), for hand-made corrupt streams."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, count: int) -> "BitWriter":
        self.bits += [(value >> i) & 1 for i in range(count)]
        return self

    def put_code(self, code: int, count: int) -> "BitWriter":
        """A Huffman code: most significant bit first."""
        self.bits += [(code >> (count - 1 - i)) & 1 for i in range(count)]
        return self

    def bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))


def deflate_distance_too_far() -> bytes:
    """A fixed-Huffman block whose first symbol copies from 1 byte back, before the start of
    the stream: "invalid distance too far back"."""
    # BFINAL=0, BTYPE=01; length code 257 (3 bytes) is the 7-bit code 0000001; distance code 0
    # (distance 1) is the 5-bit code 00000; then end of block (code 256, 0000000).
    return BitWriter().put(0, 1).put(1, 2).put_code(1, 7).put_code(0, 5).put_code(0, 7).bytes()


@dataclass
class ServerFrame:
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes


class RawWs:
    """A WebSocket client over a raw socket: it sends whatever bytes it is given and reads the
    server's frames as they come."""

    def __init__(self, server: Server, sock: socket.socket, answer: HttpAnswer) -> None:
        self.server, self.sock = server, sock
        self.buffer = bytearray(answer.leftover)
        self.deflate = "permessage-deflate" in (answer.header("sec-websocket-extensions") or "")
        self.name = ""

    @classmethod
    def open(
        cls,
        server: Server,
        *,
        target: str | None = None,
        extensions: str | None = None,
        rcvbuf: int | None = None,
        named: bool = True,
    ) -> "RawWs":
        """Connects and upgrades; on chat, also says its name (the app's first message).
        `rcvbuf` is set before connecting, as tcp(7) asks: shrunk on an open connection, the
        buffer can no longer hold the window already advertised, the kernel drops data it
        promised room for, and the window updates behind that data are discarded with it
        (our own sends then stall for seconds of retransmission back-off)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(READ_TIMEOUT)
        try:
            sock.connect(("127.0.0.1", server.port))
        except OSError:
            sock.close()
            raise
        extra = [f"Sec-WebSocket-Extensions: {extensions}"] if extensions else []
        sock.sendall(upgrade_request(server, target=target, extra=extra))
        answer = read_http_answer(sock, time.monotonic(), READ_TIMEOUT)
        assert answer.status == 101, f"upgrade refused: {answer}"
        ws = cls(server, sock, answer)
        if extensions and "permessage-deflate" in extensions:
            assert ws.deflate, "the server did not accept permessage-deflate"
        if server.app == "chat" and named:
            ws.name = f"raw-{os.urandom(3).hex()}"
            ws.send(frame(TEXT, ws.name.encode()))
            assert ws.read_message() == (TEXT, f"hello {ws.name}".encode())
            opcode, token = ws.read_message()
            assert token.startswith(b"resume ")
        return ws

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> str:
        """Sends, reporting instead of raising if the server already closed the connection."""
        try:
            self.sock.sendall(data)
            return ""
        except OSError as exc:
            return type(exc).__name__

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False at end of stream. Raises TimeoutError past `deadline`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 18)
        except socket.timeout as exc:
            raise TimeoutError from exc
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def _take(self, n: int, deadline: float) -> bytes | None:
        while len(self.buffer) < n:
            if not self._fill(deadline):
                return None
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def read_frame(self, timeout: float = READ_TIMEOUT) -> ServerFrame | None:
        """The next server frame; None at end of stream."""
        deadline = time.monotonic() + timeout
        head = self._take(2, deadline)
        if head is None:
            return None
        n = head[1] & 0x7F
        assert not head[1] & 0x80, "the server masked a frame"
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2, deadline) or b"\0\0")
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8, deadline) or b"\0" * 8)
        payload = self._take(n, deadline)
        if payload is None:
            return None
        return ServerFrame(bool(head[0] & 0x80), bool(head[0] & 0x40), head[0] & 0x0F, payload)

    def read_message(self, timeout: float = READ_TIMEOUT) -> tuple[int, bytes]:
        """The next data message, assembled and inflated; control frames are skipped."""
        deadline = time.monotonic() + timeout
        parts, opcode, compressed = [], None, False
        while True:
            got = self.read_frame(max(0.001, deadline - time.monotonic()))
            if got is None:
                raise EOFError("the server closed the connection")
            if got.opcode >= CLOSE:
                if got.opcode == CLOSE:
                    raise EOFError(f"the server closed with {describe_close(got.payload)}")
                continue
            if opcode is None:
                opcode, compressed = got.opcode, got.rsv1
            parts.append(got.payload)
            if got.fin:
                data = b"".join(parts)
                if compressed:
                    data = zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")
                return opcode, data

    def wait_close(self, timeout: float = READ_TIMEOUT) -> "CloseOutcome":
        """Reads (and counts) frames until the server's close frame, the end of the stream,
        a reset, or the timeout."""
        started = time.monotonic()
        deadline = started + timeout
        counts: dict[int, int] = {}
        data_bytes = 0
        while True:
            try:
                got = self.read_frame(max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                return CloseOutcome("no close within %.0f s" % timeout, counts, data_bytes, None)
            except ConnectionResetError:
                return CloseOutcome("reset without close frame", counts, data_bytes, None)
            ms = (time.monotonic() - started) * 1000
            if got is None:
                return CloseOutcome("end of stream without close frame", counts, data_bytes, ms)
            counts[got.opcode] = counts.get(got.opcode, 0) + 1
            data_bytes += len(got.payload)
            if got.opcode == CLOSE:
                return CloseOutcome(describe_close(got.payload), counts, data_bytes, ms)

    def wait_eof(self, timeout: float) -> tuple[str, float | None]:
        """Discards what arrives until the server ends the stream; returns how and when."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            while self._fill(deadline):
                self.buffer.clear()
        except TimeoutError:
            return "still open", None
        except ConnectionResetError:
            return "closed", time.monotonic() - started
        return "closed", time.monotonic() - started

    def reset(self) -> None:
        """Closes with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class CloseOutcome:
    observed: str
    counts: dict[int, int]
    data_bytes: int
    ms: float | None


def describe_close(payload: bytes) -> str:
    if len(payload) < 2:
        return "close without code"
    return f"close {struct.unpack('!H', payload[:2])[0]}"


def reply_for(ws: RawWs, text: str) -> bytes:
    """What the app answers to the text message `text`: echo returns it, chat broadcasts
    `<name>: <text>` to the room, sender included."""
    return (f"{ws.name}: {text}" if ws.server.app == "chat" else text).encode()


def expect_reply(ws: RawWs, text: str, timeout: float = READ_TIMEOUT) -> tuple[str, float]:
    started = time.monotonic()
    try:
        opcode, data = ws.read_message(timeout)
    except (EOFError, TimeoutError, OSError) as exc:
        return f"no reply ({exc or type(exc).__name__})", (time.monotonic() - started) * 1000
    ms = (time.monotonic() - started) * 1000
    if (opcode, data) == (TEXT, reply_for(ws, text)):
        return "answered", ms
    return f"wrong reply ({len(data)} bytes, opcode {opcode})", ms


# --- cases -------------------------------------------------------------------------------------


@dataclass
class Observed:
    """What an attack saw: the outcome in the same words as the expectation, the time the
    server took to answer (ms), and details for the record."""

    outcome: str
    ms: float | None = None
    detail: str = ""


@dataclass
class Case:
    id: str
    klass: str
    target: str  # which server: echo, chat or chat-limited
    sent: str
    expected: str
    attack: Callable[[Server], Observed] = field(repr=False)
    answer_bound_ms: float | None = None
    # Run against a server started for this case alone (with its own bystander): for attacks
    # heavy enough, or known to break the server, that they must not spoil the other cases.
    isolated: bool = False


CASES: list[Case] = []


def add(klass: str, name: str, sent: str, expected: str | dict[str, str], targets=("echo", "chat"),
        answer_bound_ms: float | None = None, isolated: bool = False):
    """Registers an attack for each target; `expected` may differ per target."""

    def register(attack: Callable[[Server], Observed]) -> Callable[[Server], Observed]:
        for target in targets:
            want = expected[target] if isinstance(expected, dict) else expected
            CASES.append(Case(f"{klass}/{name}[{target}]", klass, target, sent, want, attack,
                              answer_bound_ms, isolated))
        return attack

    return register


# Handshakes: each is one request and one answer.


def handshake_case(
    name: str,
    sent: str,
    expected: str | dict[str, str],
    build: Callable[[Server], bytes],
    must_have: dict[str, str | None] | None = None,
    targets=("echo", "chat"),
    klass: str = "handshake",
) -> None:
    def attack(server: Server) -> Observed:
        answer = http_exchange(server, build(server))
        return Observed(describe_answer(answer, must_have), answer.ms,
                        answer.body[:120].decode("utf-8", "replace").strip())

    add(klass, name, sent, expected, targets, HANDSHAKE_ANSWER_MS)(attack)


def with_key(key: str | None) -> Callable[[Server], bytes]:
    return lambda s: upgrade_request(s, replace={"Sec-WebSocket-Key": key})


H = "handshake"
handshake_case("post", "POST instead of GET", "HTTP 405 + Allow: GET",
               lambda s: upgrade_request(s, method="POST"), {"Allow": "GET"})
handshake_case("unknown-method", "method BREW", "HTTP 405 + Allow: GET",
               lambda s: upgrade_request(s, method="BREW"), {"Allow": "GET"})
handshake_case("version-8", "Sec-WebSocket-Version: 8",
               "HTTP 426 + Sec-WebSocket-Version: 13",
               lambda s: upgrade_request(s, replace={"Sec-WebSocket-Version": "8"}),
               {"Sec-WebSocket-Version": "13"})
handshake_case("version-missing", "no Sec-WebSocket-Version",
               "HTTP 426 + Sec-WebSocket-Version: 13",
               lambda s: upgrade_request(s, replace={"Sec-WebSocket-Version": None}),
               {"Sec-WebSocket-Version": "13"})
handshake_case("version-list", "Sec-WebSocket-Version: 13, 8",
               "HTTP 426 + Sec-WebSocket-Version: 13",
               lambda s: upgrade_request(s, replace={"Sec-WebSocket-Version": "13, 8"}),
               {"Sec-WebSocket-Version": "13"})
handshake_case("version-twice", "Sec-WebSocket-Version: 13 twice",
               "HTTP 426 + Sec-WebSocket-Version: 13",
               lambda s: upgrade_request(s, extra=["Sec-WebSocket-Version: 13"]),
               {"Sec-WebSocket-Version": "13"})
handshake_case("key-missing", "no Sec-WebSocket-Key", "HTTP 400", with_key(None))
handshake_case("key-short", "a key of 8 bytes", "HTTP 400",
               with_key(base64.b64encode(b"8 bytes!").decode()))
handshake_case("key-not-base64", "a 24-character key outside base64", "HTTP 400",
               with_key("!!!!!!!!!!!!!!!!!!!!!!!!"))
handshake_case("key-18-bytes", "24 base64 characters decoding to 18 bytes", "HTTP 400",
               with_key("A" * 24))
handshake_case("key-twice", "two Sec-WebSocket-Key headers", "HTTP 400",
               lambda s: upgrade_request(s, extra=[f"Sec-WebSocket-Key: {SAMPLE_KEY}"]))
handshake_case("key-huge", "a Sec-WebSocket-Key of 12 KiB", "HTTP 400", with_key("A" * 12288))
# Without `Upgrade: websocket` a request is plain HTTP to roost-server, which hands it to the
# app's HTTP handler (documented on `App::http`): the chat app answers 404 for /chat/<room>.
handshake_case("upgrade-missing", "no Upgrade header",
               {"echo": "HTTP 400", "chat": "HTTP 404"},
               lambda s: upgrade_request(s, replace={"Upgrade": None}))
handshake_case("upgrade-h2c", "Upgrade: h2c", {"echo": "HTTP 400", "chat": "HTTP 404"},
               lambda s: upgrade_request(s, replace={"Upgrade": "h2c"}))
handshake_case("connection-keep-alive", "Connection: keep-alive", "HTTP 400",
               lambda s: upgrade_request(s, replace={"Connection": "keep-alive"}))
handshake_case("connection-missing", "no Connection header", "HTTP 400",
               lambda s: upgrade_request(s, replace={"Connection": None}))
handshake_case("host-missing", "no Host header", "HTTP 400",
               lambda s: upgrade_request(s, replace={"Host": None}))
handshake_case("host-twice", "two Host headers", "HTTP 400",
               lambda s: upgrade_request(s, extra=["Host: evil.example"]))
handshake_case("http-1.0", "HTTP/1.0", "HTTP 400", lambda s: upgrade_request(s, version="HTTP/1.0"))
handshake_case("http-2-preface", "the HTTP/2 connection preface", "HTTP 400",
               lambda s: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
handshake_case("garbage", "binary garbage ending in a blank line", "HTTP 400",
               lambda s: b"\x00\x01\xfe\xffgarbage\x7f\r\n\r\n")
handshake_case("nul-in-header", "a NUL byte inside a header value", "HTTP 400",
               lambda s: upgrade_request(s).replace(b"Upgrade: websocket",
                                                    b"Upgrade: web\x00socket"))
handshake_case("bad-target", "a request target with raw bytes 0xff 0xfe", "HTTP 400",
               lambda s: upgrade_request(s, target=b"/chat/\xff\xfe"))
handshake_case("request-line-1mib", "a request line of 1 MiB",
               "HTTP 431", lambda s: upgrade_request(s, target="/" + "a" * MiB))
handshake_case("header-20kib", "one header of 20 KiB", "HTTP 431",
               lambda s: upgrade_request(s, extra=["X-Padding: " + "a" * 20480]))
handshake_case("headers-65", "65 header lines (the limit is 64)", "HTTP 431",
               lambda s: upgrade_request(
                   s, extra=[f"X-{i}: a" for i in range(65 - (6 if s.app == "chat" else 5))]))
handshake_case("headers-64", "exactly 64 header lines (control: accepted)", "HTTP 101",
               lambda s: upgrade_request(
                   s, extra=[f"X-{i}: a" for i in range(64 - (6 if s.app == "chat" else 5))]))
handshake_case("headers-3000-tiny", "3000 header lines `X:` in 12 KiB", "HTTP 431",
               lambda s: upgrade_request(s, extra=["X:"] * 3000))
handshake_case("protocol-15kib-list", "Sec-WebSocket-Protocol: a,a,a,… (15 KiB)",
               "HTTP 101 without Sec-WebSocket-Protocol",
               lambda s: upgrade_request(s, extra=["Sec-WebSocket-Protocol: " + "a," * 7500]),
               {"Sec-WebSocket-Protocol": None})
handshake_case("protocol-50-headers", "50 Sec-WebSocket-Protocol headers of 250 bytes",
               "HTTP 101 without Sec-WebSocket-Protocol",
               lambda s: upgrade_request(
                   s, extra=["Sec-WebSocket-Protocol: " + ",".join(["p"] * 125)] * 50),
               {"Sec-WebSocket-Protocol": None})
handshake_case("protocol-obs-text", "Sec-WebSocket-Protocol with bytes 0x80-0xff",
               "HTTP 101 without Sec-WebSocket-Protocol",
               lambda s: upgrade_request(s, extra=["Sec-WebSocket-Protocol: \xff\xfe, chat"]),
               {"Sec-WebSocket-Protocol": None})
handshake_case("extensions-15kib-params", "an unknown extension with 2900 parameters (15 KiB)",
               "HTTP 101 without Sec-WebSocket-Extensions",
               lambda s: upgrade_request(
                   s, extra=["Sec-WebSocket-Extensions: x" + "; a=b" * 2900]),
               {"Sec-WebSocket-Extensions": None})
handshake_case("extensions-15kib-offers", "340 permessage-deflate offers (15 KiB), all invalid",
               "HTTP 101 without Sec-WebSocket-Extensions",
               lambda s: upgrade_request(s, extra=[
                   "Sec-WebSocket-Extensions: "
                   + ", ".join(["permessage-deflate; server_max_window_bits=7"] * 340)]),
               {"Sec-WebSocket-Extensions": None})
handshake_case("extensions-unterminated-quote", "a 14 KiB unterminated quoted parameter",
               "HTTP 400",
               lambda s: upgrade_request(
                   s, extra=['Sec-WebSocket-Extensions: x; a="' + "\\a" * 7000]))
# RFC 9110 §5.6.1: a recipient ignores empty list elements.
handshake_case("extensions-commas", "Sec-WebSocket-Extensions: ,,,,… (15 KiB)",
               "HTTP 101 without Sec-WebSocket-Extensions",
               lambda s: upgrade_request(s, extra=["Sec-WebSocket-Extensions: " + "," * 15000]),
               {"Sec-WebSocket-Extensions": None})
for name, params in [
    ("smwb-7", "server_max_window_bits=7"),
    ("smwb-16", "server_max_window_bits=16"),
    ("smwb-8", "server_max_window_bits=8"),
    ("smwb-text", "server_max_window_bits=abc"),
    ("smwb-no-value", "server_max_window_bits"),
    ("smwb-huge", "server_max_window_bits=99999999999999999999999"),
    ("cmwb-16", "client_max_window_bits=16"),
    ("cmwb-0", "client_max_window_bits=0"),
    ("snct-value", "server_no_context_takeover=1"),
    ("snct-twice", "server_no_context_takeover; server_no_context_takeover"),
    ("unknown-param", "x_unknown=1"),
]:
    handshake_case(f"deflate-{name}", f"permessage-deflate; {params}",
                   "HTTP 101 without Sec-WebSocket-Extensions",
                   lambda s, params=params: upgrade_request(
                       s, extra=[f"Sec-WebSocket-Extensions: permessage-deflate; {params}"]),
                   {"Sec-WebSocket-Extensions": None}, klass="deflate-offer")
handshake_case("deflate-invalid-then-valid",
               "an invalid permessage-deflate offer, then a valid one",
               "HTTP 101 + Sec-WebSocket-Extensions: permessage-deflate…",
               lambda s: upgrade_request(s, extra=[
                   "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7, "
                   "permessage-deflate"]),
               {"Sec-WebSocket-Extensions": "permessage-deflate"}, klass="deflate-offer")
# The extension header value depends on the server's settings; only its start is compared.
for case in CASES:
    if case.id.startswith("deflate-offer/deflate-invalid-then-valid"):
        inner = case.attack

        def normalised(server: Server, inner=inner) -> Observed:
            seen = inner(server)
            seen.outcome = re.sub(r"(permessage-deflate).*", r"\1…", seen.outcome)
            return seen

        case.attack = normalised

# Origin allowlist (chat runs with --allow-origin https://good.example).
for name, origin in [
    ("foreign", "https://evil.example"),
    ("missing", None),
    ("suffix", "https://good.example.evil.example"),
    ("prefix", "https://evil.good.example"),
    ("case", "HTTPS://GOOD.EXAMPLE"),
    ("null", "null"),
    ("port", "https://good.example:444"),
]:
    handshake_case(f"origin-{name}", f"Origin: {origin}" if origin else "no Origin header",
                   "HTTP 403",
                   lambda s, origin=origin: upgrade_request(s, replace={"Origin": origin}),
                   targets=("chat",), klass="origin")
handshake_case("origin-allowed", f"Origin: {GOOD_ORIGIN} (control: accepted)", "HTTP 101",
               lambda s: upgrade_request(s), targets=("chat",), klass="origin")

# Request targets that could be mistaken for file names.
for name, target in [
    ("dotdot", "/chat/../../../../etc/passwd"),
    ("encoded-dotdot", "/chat/..%2F..%2F..%2F..%2Ftmp%2Fpwned-room"),
    ("encoded-nul", "/chat/%00pwned"),
    ("dot", "/chat/.."),
]:
    expected = {"/chat/../../../../etc/passwd": "HTTP 404"}.get(target, "HTTP 101")
    handshake_case(f"target-{name}", f"GET {target}", expected,
                   lambda s, target=target: upgrade_request(s, target=target),
                   targets=("chat",), klass="file-names")
handshake_case("target-dotdot", "GET /../../../../etc/passwd (echo ignores the path)",
               "HTTP 101", lambda s: upgrade_request(s, target="/../../../../etc/passwd"),
               targets=("echo",), klass="file-names")


# Resume tokens (chat with --durable DIR): only a token the server signed, unexpired and
# unused, for a session that still has its attachment, gets 101.


def resume_request(server: Server, token: str) -> bytes:
    return upgrade_request(server, target=f"/chat/resume?resume={token}")


def issue_token(server: Server, end_with: int | None) -> tuple[str, str]:
    """Joins as a new name and returns (name, token); the connection then ends with close
    code `end_with` (1000 ends the session) or, for None, a TCP reset (the session is kept)."""
    ws = RawWs.open(server, target="/chat/resume", named=False)
    name = f"resumer-{os.urandom(3).hex()}"
    before = attachments(server)
    ws.send(frame(TEXT, name.encode()))
    assert ws.read_message() == (TEXT, f"hello {name}".encode())
    _, token = ws.read_message()
    created = attachments(server) - before
    if end_with is None:
        ws.reset()
    else:
        ws.send(frame(CLOSE, close_payload(end_with)))
        ws.wait_close()
        ws.close()
        if end_with == 1000:
            # The session's attachment is removed after the close handshake; wait for it.
            deadline = time.monotonic() + READ_TIMEOUT
            while created & attachments(server) and time.monotonic() < deadline:
                time.sleep(0.01)
    return name, token.decode().removeprefix("resume ")


def attachments(server: Server) -> set[str]:
    return {p.name for p in (server.durable / "ws").glob("*.att")}


def forge_token(server: Server, *, expires_in: float, version: int = 1) -> str:
    """A token signed with the server's own key (read from its durable directory, as an
    operator could): lets the suite test expiry and unknown sessions."""
    key = (server.durable / "resume.key").read_bytes()
    claims = bytes([version]) + os.urandom(16) + struct.pack("!Q", int(time.time() + expires_in))
    tag = hmac.new(key, b"roost resume token\0" + claims, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(claims + tag).decode().rstrip("=")


def resume_case(name: str, sent: str, expected: str, make_token: Callable[[Server], str],
                reuse: bool = False) -> None:
    def attack(server: Server) -> Observed:
        token = make_token(server)
        if reuse:
            first = http_exchange(server, resume_request(server, token))
            assert first.status == 101, f"the first use of the token failed: {first}"
        answer = http_exchange(server, resume_request(server, token))
        return Observed(describe_answer(answer), answer.ms,
                        answer.body[:120].decode("utf-8", "replace").strip())

    add("resume-token", name, sent, expected, ("chat",), HANDSHAKE_ANSWER_MS)(attack)


def flip_middle(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("B" if token[middle] != "B" else "C") + token[middle + 1:]


resume_case("forged", "55 characters of `A`", "HTTP 401", lambda s: "A" * 55)
resume_case("wrong-length", "a 54-character token", "HTTP 401", lambda s: "A" * 54)
resume_case("huge", "a 12 KiB token", "HTTP 401", lambda s: "A" * 12288)
resume_case("traversal", "resume=../../../../etc/passwd", "HTTP 401",
            lambda s: "../../../../etc/passwd")
resume_case("encoded-traversal", "resume=..%2F..%2Fresume.key", "HTTP 401",
            lambda s: "..%2F..%2Fresume.key")
resume_case("traversal-55", "a 55-character token made of ../", "HTTP 401",
            lambda s: ("../" * 19)[:55])
resume_case("nul", "resume=%00 repeated", "HTTP 401", lambda s: "%00" * 55)
resume_case("standard-base64", "a 55-character token with + and /", "HTTP 401",
            lambda s: "+/" * 27 + "A")
resume_case("tampered", "a real token with one character changed", "HTTP 401",
            lambda s: flip_middle(issue_token(s, None)[1]))
resume_case("bad-version", "a token signed with the key but version 2", "HTTP 401",
            lambda s: forge_token(s, expires_in=3600, version=2))
resume_case("expired", "a token signed with the key, expired a minute ago", "HTTP 401",
            lambda s: forge_token(s, expires_in=-60))
resume_case("reused", "a real token presented a second time", "HTTP 401",
            lambda s: issue_token(s, None)[1], reuse=True)
resume_case("session-ended", "the token of a session its client closed with 1000", "HTTP 410",
            lambda s: issue_token(s, 1000)[1])
resume_case("unknown-session", "a token signed with the key for a session that never was",
            "HTTP 410", lambda s: forge_token(s, expires_in=3600))


@add("file-names", "durable-dir-names",
     "a name `../../../../tmp/pwned-…` and rooms with traversal, then a listing of DIR",
     "only the store's own file names", targets=("chat",))
def durable_dir_names(server: Server) -> Observed:
    marker = f"pwned-{os.urandom(4).hex()}"
    for target in [f"/chat/..%2F..%2F..%2F..%2Ftmp%2F{marker}", f"/chat/%2e%2e%2f{marker}"]:
        ws = RawWs.open(server, target=target, named=False)
        ws.send(frame(TEXT, f"../../../../tmp/{marker}".encode()))
        ws.read_message()
        ws.reset()
    time.sleep(0.2)
    allowed = re.compile(
        r"^(resume\.key|ws|ws/\.lock|ws/[0-9a-f]{32}\.att|ws/\.[0-9a-f]{32}\.[0-9a-f]{16}\.tmp)$"
    )
    names = sorted(str(p.relative_to(server.durable)) for p in server.durable.rglob("*"))
    odd = [n for n in names if not allowed.match(n)]
    stray = [str(p) for p in Path("/tmp").glob(f"*{marker}*")]
    stray += [str(p) for p in server.durable.parent.rglob(f"*{marker}*")]
    if odd or stray:
        return Observed(f"unexpected files: {odd + stray}")
    return Observed("only the store's own file names", None, f"{len(names)} entries")


@add("admission", "over-max-connections",
     "a 5th connection to `--max-connections 4` (the bystander and 3 others open)",
     "HTTP 503", targets=("chat-limited",), answer_bound_ms=HANDSHAKE_ANSWER_MS)
def over_max_connections(server: Server) -> Observed:
    holders = [RawWs.open(server, target=f"/chat/full-{i}") for i in range(3)]
    try:
        answer = http_exchange(server, upgrade_request(server, target="/chat/full-x"))
    finally:
        for ws in holders:
            ws.reset()
    # The slots must come back: the fresh client of the liveness check needs one.
    deadline = time.monotonic() + READ_TIMEOUT
    while time.monotonic() < deadline:
        probe = http_exchange(server, upgrade_request(server, target="/chat/probe"))
        if probe.status == 101:
            break
        time.sleep(0.05)
    return Observed(describe_answer(answer), answer.ms, answer.body.decode().strip())


# Frames: each case opens a WebSocket (on chat: named), sends the hostile bytes, and reads
# until the server's close frame.


def frame_case(klass: str, name: str, sent: str, expected: str | dict[str, str],
               build: Callable[[RawWs], list[bytes]], extensions: str | None = None,
               targets=("echo", "chat")) -> None:
    def attack(server: Server) -> Observed:
        ws = RawWs.open(server, extensions=extensions)
        try:
            started = time.monotonic()
            for data in build(ws):
                if ws.try_send(data):
                    break
            outcome = ws.wait_close()
            ms = (time.monotonic() - started) * 1000 if outcome.ms is not None else None
            return Observed(outcome.observed, ms)
        finally:
            ws.close()

    add(klass, name, sent, expected, targets, 2000)(attack)


P = "protocol"
frame_case(P, "unmasked", "an unmasked text frame", "close 1002",
           lambda ws: [frame(TEXT, b"hello", masked=False)])
for op in (0x3, 0x7, 0xB, 0xF):
    frame_case(P, f"opcode-{op:#x}", f"a frame with reserved opcode {op:#x}", "close 1002",
               lambda ws, op=op: [frame(op, b"x")])
frame_case(P, "rsv1-no-extension", "RSV1 set, no extension negotiated", "close 1002",
           lambda ws: [frame(TEXT, b"x", rsv1=True)])
frame_case(P, "rsv2", "RSV2 set", "close 1002", lambda ws: [frame(TEXT, b"x", rsv2=True)])
frame_case(P, "rsv3", "RSV3 set", "close 1002", lambda ws: [frame(BINARY, b"x", rsv3=True)])
frame_case(P, "fragmented-ping", "a ping with FIN clear", "close 1002",
           lambda ws: [frame(PING, b"x", fin=False)])
frame_case(P, "ping-126", "a ping of 126 bytes", "close 1002",
           lambda ws: [frame(PING, b"x" * 126)])
frame_case(P, "ping-declared-2^62", "a ping declaring 2^62 bytes", "close 1002",
           lambda ws: [frame(PING, length=1 << 62)])
frame_case(P, "continuation-first", "a continuation frame with no message started",
           "close 1002", lambda ws: [frame(CONT, b"x")])
frame_case(P, "text-inside-fragmented", "a new text frame inside a fragmented message",
           "close 1002", lambda ws: [frame(TEXT, b"a", fin=False), frame(TEXT, b"b")])
frame_case(P, "length-16-non-minimal", "length 5 in the 16-bit form", "close 1002",
           lambda ws: [frame(TEXT, b"hello", form=16)])
frame_case(P, "length-64-non-minimal", "length 200 in the 64-bit form", "close 1002",
           lambda ws: [frame(TEXT, b"a" * 200, form=64)])
frame_case(P, "length-64-msb", "a 64-bit length with its top bit set", "close 1002",
           lambda ws: [frame(BINARY, length=(1 << 63) | 5)])

C = "close-payload"
frame_case(C, "one-byte", "a close frame with a 1-byte payload", "close 1002",
           lambda ws: [frame(CLOSE, b"\x03")])
for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
    frame_case(C, f"code-{code}", f"close code {code}", "close 1002",
               lambda ws, code=code: [frame(CLOSE, close_payload(code))])
frame_case(C, "reason-invalid-utf8", "close 1000 with reason bytes ff fe", "close 1007",
           lambda ws: [frame(CLOSE, close_payload(1000, b"\xff\xfe"))])
frame_case(C, "reason-surrogate", "close 1000 with an encoded surrogate in the reason",
           "close 1007", lambda ws: [frame(CLOSE, close_payload(1000, b"ok \xed\xa0\x80"))])
frame_case(C, "payload-126", "a close frame of 126 bytes", "close 1002",
           lambda ws: [frame(CLOSE, close_payload(1000, b"x" * 124))])

U = "utf8"
for name, data in [
    ("byte-ff", b"\xff"),
    ("overlong-slash", b"\xc0\xaf"),
    ("surrogate", b"\xed\xa0\x80"),
    ("above-10ffff", b"\xf4\x90\x80\x80"),
    ("truncated-at-end", b"ok \xe2\x82"),
    ("continuation-byte-alone", b"\x80"),
]:
    frame_case(U, name, f"a text frame {data!r}", "close 1007",
               lambda ws, data=data: [frame(TEXT, data)])
frame_case(U, "split-invalid", "text fragments e2 | 28 (a broken sequence across frames)",
           "close 1007",
           lambda ws: [frame(TEXT, b"\xe2", fin=False), frame(CONT, b"\x28")])
frame_case(U, "fail-fast", "an invalid first fragment of a message that never ends",
           "close 1007", lambda ws: [frame(TEXT, b"ok \xff", fin=False)])
frame_case(U, "late-in-big-message", "1 MiB of valid text, then ff, in 64 fragments",
           "close 1007",
           lambda ws: [frame(TEXT, b"a" * 16384, fin=False)]
           + [frame(CONT, b"a" * 16384, fin=False)] * 63 + [frame(CONT, b"\xff")])
frame_case(U, "compressed", "a compressed text message inflating to ff fe", "close 1007",
           lambda ws: [frame(TEXT, deflate(b"valid start \xff\xfe"), rsv1=True)],
           extensions=DEFLATE_OFFER)

L = "length"
frame_case(L, "declared-2^63-1", "a binary frame header declaring 2^63-1 bytes",
           "close 1009", lambda ws: [frame(BINARY, length=(1 << 63) - 1)])
frame_case(L, "declared-1gib-text", "a text frame header declaring 1 GiB", "close 1009",
           lambda ws: [frame(TEXT, length=1 << 30)])
frame_case(L, "declared-limit+1", "a frame header declaring 16 MiB + 1", "close 1009",
           lambda ws: [frame(BINARY, length=MAX_MESSAGE + 1)])
frame_case(L, "fragments-sum-over-limit",
           "a 1-byte fragment, then a continuation declaring 16 MiB", "close 1009",
           lambda ws: [frame(TEXT, b"a", fin=False), frame(CONT, length=MAX_MESSAGE)])
frame_case(L, "compressed-declared-2^40", "a compressed frame declaring 2^40 bytes",
           "close 1009", lambda ws: [frame(TEXT, rsv1=True, length=1 << 40)],
           extensions=DEFLATE_OFFER)

D = "deflate"
frame_case(D, "bomb-256mib", "one text frame: 256 MiB of zeros deflated to 260 KB",
           "close 1009", lambda ws: [frame(TEXT, bomb(256), rsv1=True)],
           extensions=DEFLATE_OFFER)


def split(data: bytes, parts: int) -> list[bytes]:
    size = -(-len(data) // parts)
    return [data[i:i + size] for i in range(0, len(data), size)]


def fragments(opcode: int, pieces: list[bytes], compressed: bool) -> list[bytes]:
    last = len(pieces) - 1
    return [
        frame(opcode if i == 0 else CONT, piece, fin=i == last, rsv1=compressed and i == 0)
        for i, piece in enumerate(pieces)
    ]


frame_case(D, "bomb-256mib-fragmented", "the same bomb in 256 fragments of 1 KB", "close 1009",
           lambda ws: fragments(TEXT, split(bomb(256), 256), True), extensions=DEFLATE_OFFER)
frame_case(D, "rsv1-on-continuation", "RSV1 on a continuation frame", "close 1002",
           lambda ws: [frame(TEXT, deflate(b"abc"), rsv1=True, fin=False),
                       frame(CONT, deflate(b"def"), rsv1=True)], extensions=DEFLATE_OFFER)
frame_case(D, "rsv1-on-ping", "RSV1 on a ping", "close 1002",
           lambda ws: [frame(PING, b"x", rsv1=True)], extensions=DEFLATE_OFFER)
# RFC 7692 names no close code for a stream that cannot be inflated; roost sends 1002
# (ProtocolError::CorruptDeflate maps to PROTOCOL_ERROR in roost-proto's error.rs).
CORRUPT = "close 1002"
frame_case(D, "corrupt-block-type", "a deflate block of the reserved type 11", CORRUPT,
           lambda ws: [frame(TEXT, b"\xff\xff\xff\xff", rsv1=True)], extensions=DEFLATE_OFFER)
frame_case(D, "corrupt-stored-length", "a stored block whose LEN and NLEN disagree", CORRUPT,
           lambda ws: [frame(BINARY, b"\x00\x05\x00\x00\x00hello", rsv1=True)],
           extensions=DEFLATE_OFFER)
frame_case(D, "corrupt-distance", "a back-reference before the start of the stream", CORRUPT,
           lambda ws: [frame(BINARY, deflate_distance_too_far(), rsv1=True)],
           extensions=DEFLATE_OFFER)
frame_case(D, "corrupt-second-fragment", "valid first fragment, garbage second fragment",
           CORRUPT,
           lambda ws: [frame(TEXT, deflate(b"hello " * 100), rsv1=True, fin=False),
                       frame(CONT, b"\xff\xff\xff\xff")], extensions=DEFLATE_OFFER)


# Floods of fragments: legal but costly; each must end in the right message at bounded cost.


def flood_case(name: str, sent: str, pieces: Callable[[], tuple[list[bytes], str]],
               extensions: str | None = None) -> None:
    def attack(server: Server) -> Observed:
        ws = RawWs.open(server, extensions=extensions)
        try:
            frames, text = pieces()
            started = time.monotonic()
            ws.send(b"".join(frames))
            outcome, ms = expect_reply(ws, text, timeout=20)
            total = (time.monotonic() - started) * 1000
            return Observed(outcome, ms, f"{len(frames)} frames sent and answered in "
                                         f"{total:.0f} ms")
        finally:
            ws.close()

    add("fragment-flood", name, sent, "answered", ("echo", "chat"), 20000)(attack)


def empty_fragments() -> tuple[list[bytes], str]:
    empty = frame(CONT, b"", fin=False, key=b"\0\0\0\0")
    return [frame(TEXT, b"", fin=False)] + [empty] * 1_000_000 + [frame(CONT, b"done")], "done"


def tiny_fragments() -> tuple[list[bytes], str]:
    text = "0123456789" * 10_000
    body = text.encode()
    return fragments(TEXT, [body[i:i + 1] for i in range(len(body))], False), text


def tiny_compressed_fragments() -> tuple[list[bytes], str]:
    text = os.urandom(20_000).hex()  # 40 KB that compress to about 20 KB: 20,000 fragments
    data = deflate(text.encode(), level=1)
    return fragments(TEXT, [data[i:i + 1] for i in range(len(data))], True), text


flood_case("empty-1m", "1,000,000 empty continuation frames inside one text message",
           empty_fragments)
flood_case("one-byte-100k", "a 100 KB text message in 100,000 one-byte fragments",
           tiny_fragments)
flood_case("compressed-one-byte", "a compressed 40 KB message in 20,000 one-byte fragments",
           tiny_compressed_fragments, extensions=DEFLATE_OFFER)


# Control frames and readers that never read.

PING_FLOOD = 600_000  # 125-byte pings: 79 MB in, 76 MB of pongs if every one were queued


def kernel_buffer_slack() -> int:
    """The most bytes the kernel may hold between the server's queue and our reader: the
    server's send buffer (tcp_wmem max) and our receive buffer (set small below), doubled."""
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return 2 * (wmem + 256 * 1024)


@add("control-flood", "ping-flood-not-reading",
     f"{PING_FLOOD:,} pings of 125 bytes (79 MB) from a client that reads nothing meanwhile",
     {"echo": "connection kept, pongs bounded, answered", "chat": "close 1013"},
     answer_bound_ms=20000, isolated=True)
def ping_flood(server: Server) -> Observed:
    ws = RawWs.open(server, rcvbuf=64 * 1024)
    ws.sock.settimeout(3)
    try:
        ping = frame(PING, b"p" * 125)
        error = ws.try_send(ping * PING_FLOOD)
        text = "after the flood"
        if not error:
            error = ws.try_send(frame(TEXT, text.encode()))
        started = time.monotonic()
        pong_bytes, pongs = 0, 0
        while True:
            try:
                got = ws.read_frame(3)
            except (TimeoutError, ConnectionResetError) as exc:
                return Observed(f"no answer ({type(exc).__name__})",
                                detail=f"{pongs} pongs in {time.monotonic() - started:.1f} s; "
                                       f"send error {error or 'none'}")
            if got is None:
                return Observed("end of stream without close frame",
                                detail=f"{pongs} pongs; send error {error or 'none'}")
            if got.opcode == PONG:
                pongs += 1
                pong_bytes += len(got.payload) + 2
            elif got.opcode == CLOSE:
                return Observed(describe_close(got.payload), (time.monotonic() - started) * 1000,
                                f"{pongs} pongs ({pong_bytes / MiB:.1f} MiB) before the close")
            elif got.opcode == TEXT:
                ms = (time.monotonic() - started) * 1000
                bound = MAX_QUEUED_OUTPUT + kernel_buffer_slack()
                detail = (f"{pongs:,} pongs ({pong_bytes / MiB:.1f} MiB) for {PING_FLOOD:,} "
                          f"pings; bound {bound / MiB:.1f} MiB")
                ok = pong_bytes <= bound and pongs < PING_FLOOD
                got_text = got.payload.decode(errors="replace")
                answered = got_text == reply_for(ws, text).decode()
                if ok and answered:
                    return Observed("connection kept, pongs bounded, answered", ms, detail)
                return Observed(f"pongs {'bounded' if ok else 'NOT bounded'}, "
                                f"{'answered' if answered else 'wrong answer'}", ms, detail)
    finally:
        ws.close()


@add("control-flood", "pong-flood", "600,000 unsolicited pongs of 125 bytes",
     "connection kept, answered", answer_bound_ms=20000)
def pong_flood(server: Server) -> Observed:
    ws = RawWs.open(server)
    try:
        ws.send(frame(PONG, b"p" * 125) * PING_FLOOD)
        outcome, ms = expect_reply(ws, "after the pongs") if not ws.try_send(
            frame(TEXT, b"after the pongs")) else ("send failed", None)
        return Observed("connection kept, answered" if outcome == "answered" else outcome, ms)
    finally:
        ws.close()


@add("control-flood", "ping-flood-reading", "200,000 pings from a client that reads the pongs",
     "every ping answered", answer_bound_ms=20000)
def ping_flood_reading(server: Server) -> Observed:
    ws = RawWs.open(server)
    count = 200_000
    try:
        sender = threading.Thread(target=ws.try_send, args=(frame(PING, b"q" * 16) * count,))
        started = time.monotonic()
        sender.start()
        pongs = 0
        while pongs < count:
            got = ws.read_frame(20)
            if got is None or got.opcode == CLOSE:
                break
            pongs += got.opcode == PONG
        sender.join()
        ms = (time.monotonic() - started) * 1000
        return Observed("every ping answered" if pongs == count else f"{pongs} pongs", ms,
                        f"{count:,} pings and pongs in {ms:.0f} ms")
    finally:
        ws.close()


def send_without_reading(ws: RawWs, message: bytes, budget: int, seconds: float) -> tuple[int, bool]:
    """Sends `message` frames without reading until `budget` bytes are sent, the socket stays
    unwritable for a second (the server stopped reading: back-pressure) or `seconds` pass.
    Whole frames only: a frame already started is finished. Returns (bytes sent, blocked)."""
    sent, pending = 0, b""
    ws.sock.setblocking(False)
    deadline = time.monotonic() + seconds
    try:
        while (sent < budget or pending) and time.monotonic() < deadline:
            if not pending:
                pending = message
            _, writable, _ = select.select([], [ws.sock], [], 1.0)
            if not writable:
                if pending == message:
                    return sent, True
                continue
            try:
                n = ws.sock.send(pending)
            except BlockingIOError:
                continue
            except OSError:
                return sent, False
            sent += n
            pending = pending[n:]
        return sent, False
    finally:
        ws.sock.setblocking(True)


@add("slow-reader", "never-reads-echo",
     "64 KiB binary messages from a client that reads none of the echoes",
     "back-pressure: sender blocked, every echo delivered", targets=("echo",),
     answer_bound_ms=20000, isolated=True)
def never_reads_echo(server: Server) -> Observed:
    ws = RawWs.open(server, rcvbuf=64 * 1024)
    try:
        payload = os.urandom(64 * 1024)
        sent, blocked = send_without_reading(ws, frame(BINARY, payload), 512 * MiB, 10)
        messages = sent // len(frame(BINARY, payload))
        # Resume reading: every echo must arrive, then a final text.
        started = time.monotonic()
        ws.send(frame(TEXT, b"end"))
        received = 0
        while True:
            opcode, data = ws.read_message(20)
            if opcode == TEXT:
                break
            received += data == payload
        ms = (time.monotonic() - started) * 1000
        detail = f"sender blocked after {sent / MiB:.1f} MiB ({messages} messages)"
        if blocked and received == messages and data == b"end":
            return Observed("back-pressure: sender blocked, every echo delivered", ms, detail)
        return Observed(f"blocked={blocked}, {received}/{messages} echoes", ms, detail)
    finally:
        ws.close()


CLOSE_FRAME = re.compile(rb"\x88([\x02-\x7d])([\x03-\x13][\x00-\xff])")


def read_raw_until_close(ws: RawWs, timeout: float) -> Observed:
    """Reads the raw stream, walking frame boundaries, until a close frame. A close frame
    found inside another frame's bytes (the stream lost part of a frame) is reported as such:
    a client cannot parse it. The payloads sent before it must not contain 0x88."""
    raw, boundary, frames = bytearray(ws.buffer), 0, 0
    started = time.monotonic()
    deadline = started + timeout
    ws.sock.settimeout(0.5)
    while True:
        while True:  # complete frames from the boundary on
            if len(raw) - boundary < 2:
                break
            n, head = raw[boundary + 1] & 0x7F, 2
            if n == 126:
                n, head = int.from_bytes(raw[boundary + 2:boundary + 4], "big"), 4
            elif n == 127:
                n, head = int.from_bytes(raw[boundary + 2:boundary + 10], "big"), 10
            if len(raw) - boundary < head + n:
                break
            if raw[boundary] & 0x0F == CLOSE:
                payload = bytes(raw[boundary + head:boundary + head + n])
                return Observed(describe_close(payload), (time.monotonic() - started) * 1000,
                                f"{frames} frames before the close")
            boundary += head + n
            frames += 1
        spliced = CLOSE_FRAME.search(raw, boundary)
        if spliced:
            return Observed(
                f"close {int.from_bytes(spliced.group(2), 'big')} spliced into a partly sent "
                f"frame (stream corrupt)", (time.monotonic() - started) * 1000,
                f"close frame at byte {spliced.start()} of the stream, inside frame "
                f"{frames + 1} which starts at byte {boundary}")
        if time.monotonic() > deadline:
            return Observed(f"no close within {timeout:.0f} s")
        try:
            chunk = ws.sock.recv(1 << 20)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return Observed("reset without close frame")
        if not chunk:
            return Observed("end of stream without close frame",
                            detail=f"{frames} whole frames, {len(raw) - boundary} bytes after")
        raw += chunk


@add("slow-reader", "never-reads-chat",
     "4 KiB chat messages (broadcast back to the sender) from a client that never reads",
     "close 1013", targets=("chat",), answer_bound_ms=20000, isolated=True)
def never_reads_chat(server: Server) -> Observed:
    ws = RawWs.open(server, rcvbuf=64 * 1024)
    try:
        sent, blocked = send_without_reading(ws, frame(TEXT, b"x" * 4096), 48 * MiB, 10)
        seen = read_raw_until_close(ws, 10)
        seen.detail = f"{sent / MiB:.1f} MiB sent, blocked={blocked}; {seen.detail}"
        return seen
    finally:
        ws.close()


@add("control-flood", "heartbeat-flood-not-reading",
     "2,000,000 `heartbeat` texts (answered `alive` by the auto-response) from a client that "
     "reads nothing meanwhile", "close 1013", targets=("chat",), answer_bound_ms=20000,
     isolated=True)
def heartbeat_flood(server: Server) -> Observed:
    ws = RawWs.open(server, rcvbuf=64 * 1024)
    ws.sock.settimeout(3)
    try:
        error = ws.try_send(frame(TEXT, b"heartbeat") * 2_000_000)
        seen = read_raw_until_close(ws, 3)
        seen.detail = f"send: {error or 'complete'}" + (f"; {seen.detail}" if seen.detail else "")
        return seen
    finally:
        ws.close()


# Faults: connections that vanish or half-close at the worst moment.


def many(count: int, one: Callable[[], None]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        for future in [pool.submit(one) for _ in range(count)]:
            future.result()


def fault_case(name: str, sent: str, one: Callable[[Server], None], count: int = 50) -> None:
    def attack(server: Server) -> Observed:
        before = server.fds()
        many(count, lambda: one(server))
        started = time.monotonic()
        left = server.wait_fds(before, FREE_TIMEOUT)
        ms = (time.monotonic() - started) * 1000
        if left <= before:
            return Observed("freed", ms, f"{count} connections")
        return Observed(f"{left - before} descriptors still open", ms)

    add("fault", name, sent, "freed", ("echo", "chat"), 5000)(attack)


def rst_mid_handshake(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT)
    sock.sendall(upgrade_request(server)[:40])
    time.sleep(0.01)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def rst_mid_frame(server: Server) -> None:
    ws = RawWs.open(server)
    ws.send(frame(BINARY, os.urandom(1000), length=MiB)[: 1000 + 14])
    time.sleep(0.01)
    ws.reset()


def rst_mid_compressed(server: Server) -> None:
    ws = RawWs.open(server, extensions=DEFLATE_OFFER)
    pieces = fragments(TEXT, split(deflate(os.urandom(4096)), 4), True)
    ws.send(b"".join(pieces[:2]))
    time.sleep(0.01)
    ws.reset()


def rst_mid_echo(server: Server) -> None:
    ws = RawWs.open(server, rcvbuf=64 * 1024)
    ws.send(frame(TEXT, b"y" * (2 * MiB)))
    time.sleep(0.05)
    ws.reset()


def fin_after_handshake(server: Server) -> None:
    ws = RawWs.open(server)
    ws.sock.shutdown(socket.SHUT_WR)
    state, _ = ws.wait_eof(READ_TIMEOUT)
    assert state == "closed", "the server kept a half-closed connection open"
    ws.close()


def fin_mid_frame(server: Server) -> None:
    ws = RawWs.open(server)
    ws.send(frame(TEXT, b"z" * 1000)[:500])
    ws.sock.shutdown(socket.SHUT_WR)
    state, _ = ws.wait_eof(READ_TIMEOUT)
    assert state == "closed", "the server kept a half-closed connection open"
    ws.close()


fault_case("rst-mid-handshake", "50 clients reset after 40 bytes of their request",
           rst_mid_handshake)
fault_case("rst-mid-frame", "50 clients reset 1000 bytes into a frame declaring 1 MiB",
           rst_mid_frame)
fault_case("rst-mid-compressed", "50 clients reset halfway through a compressed message",
           rst_mid_compressed)
fault_case("rst-mid-reply", "10 clients reset while a 2 MiB answer is being written to them",
           rst_mid_echo, count=10)
fault_case("fin-after-handshake", "50 clients half-close (FIN) right after the handshake",
           fin_after_handshake)
fault_case("fin-mid-frame", "50 clients half-close halfway through a frame", fin_mid_frame)


# --- the harness -------------------------------------------------------------------------------


def measure_and_record(case: Case, server: Server, recorder: Recorder,
                       attack: Callable[[], Observed], group_rss: tuple[int, int] | None = None
                       ) -> None:
    """Runs `attack` against `server` with every check of the module docstring, records it,
    and fails (or, for KNOWN_BUGS, xfails) the test on any problem. `group_rss` (RSS before,
    peak) replaces the RSS measured here for attacks that ran earlier, as one group."""
    recorder.rss_bound_kib = RSS_BOUND_KIB
    recorder.known_bugs = KNOWN_BUGS
    assert server.is_running(), f"{case.target} is not running before the case"
    # The descriptors the server holds with only its bystander connected, at its first case;
    # every case must come back to it (a leak would otherwise hide in the next baseline).
    floor = server.extra.setdefault("fd_floor", server.fds())
    server.wait_fds(floor, 1.0)
    before = server.snapshot()
    problems: list[str] = []
    with RssSampler(server) as rss:
        try:
            seen = attack()
        except Exception as exc:  # the attack's own failure is an outcome to record
            seen = Observed(f"attack failed: {type(exc).__name__}: {exc}")
    alive = server.is_running()

    def fresh_answers() -> bool:
        fresh = Client(server, "fresh")
        try:
            return fresh.round_trip()
        finally:
            fresh.close()

    # Both checks at once: on a server that hangs, each waits for its own timeout.
    with ThreadPoolExecutor(max_workers=2) as pool:
        checks = {"a fresh client": pool.submit(fresh_answers),
                  "the bystander": pool.submit(server.bystander.round_trip)}
        answered = {}
        for who, future in checks.items():
            try:
                answered[who] = alive and future.result()
            except Exception as exc:
                answered[who] = False
                problems.append(f"{who} failed: {type(exc).__name__}: {exc}")
    fresh_ok, bystander_ok = answered["a fresh client"], answered["the bystander"]
    if alive and (fresh_ok or bystander_ok):
        fds_after = server.wait_fds(floor, FREE_TIMEOUT)
    else:
        # A server that answers nobody releases nothing either: no use waiting for it.
        fds_after = server.fds() if alive else floor
        server.extra["hung"] = True
    after = server.snapshot() if alive else before
    peak_delta = rss.peak_kib - before.rss_kib
    if group_rss:
        peak_delta = max(peak_delta, group_rss[1] - group_rss[0])
    if seen.outcome != case.expected:
        problems.append(f"expected {case.expected!r}, observed {seen.outcome!r}"
                        + (f" ({seen.detail})" if seen.detail else ""))
    if not alive:
        problems.append(f"the server died:\n{server.log_text()[-2000:]}")
    elif not fresh_ok and not any(p.startswith("a fresh") for p in problems):
        problems.append("a fresh client got no answer")
    if alive and not bystander_ok and not any(p.startswith("the bystander") for p in problems):
        problems.append("the bystander got no answer")
    if peak_delta > RSS_BOUND_KIB:
        problems.append(f"RSS rose {peak_delta / 1024:.1f} MiB (bound "
                        f"{RSS_BOUND_KIB / 1024:.0f} MiB)")
    if fds_after > floor:
        problems.append(f"{fds_after - floor} descriptors not released")
    if case.answer_bound_ms and seen.ms is not None and seen.ms > case.answer_bound_ms:
        problems.append(f"answered in {seen.ms:.0f} ms (bound {case.answer_bound_ms:.0f} ms)")
    known = case.id in KNOWN_BUGS
    recorder.servers[case.target] = {
        "app": server.app,
        "args": ["DIR" if server.durable and arg == str(server.durable) else arg
                 for arg in server.args],
    }
    recorder.add({
        "id": case.id,
        "class": case.klass,
        "target": case.target,
        "sent": case.sent,
        "expected": case.expected,
        "observed": seen.outcome,
        "detail": seen.detail,
        "time_to_answer_ms": None if seen.ms is None else round(seen.ms, 1),
        "rss_before_kib": before.rss_kib,
        "rss_peak_delta_kib": peak_delta,
        "rss_after_delta_kib": after.rss_kib - before.rss_kib,
        "cpu_ms": round(after.cpu_ms - before.cpu_ms, 1),
        "fds_released": fds_after <= floor,
        "server_alive": alive and fresh_ok,
        "bystander_ok": bool(bystander_ok),
        "passed": not problems,
        "known_bug": known and bool(problems),
        "problems": problems,
    })
    if known:
        if problems:
            pytest.xfail(f"KNOWN_BUGS: {KNOWN_BUGS[case.id]} | observed: {'; '.join(problems)}")
        pytest.fail(f"{case.id} is in KNOWN_BUGS but passed: remove it from the list")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile(case: Case, servers: dict[str, Server], workdir: Path,
                 recorder: Recorder) -> None:
    if not case.isolated:
        server = servers[case.target]
        measure_and_record(case, server, recorder, lambda: case.attack(server))
        return
    server = start_configured(case.target, workdir)
    try:
        measure_and_record(case, server, recorder, lambda: case.attack(server))
    finally:
        if server.extra.get("hung"):
            server.process.kill()
        stop_server(server)


# --- deadlines: slow and silent peers, all run at once ------------------------------------------


@dataclass
class SlowCase:
    id: str
    target: str
    sent: str
    expected: str
    run: Callable[[Server], Observed] = field(repr=False)


def closed_within(ws_or_sock, low: float, high: float, feed: Callable[[], None] | None = None,
                  started: float | None = None) -> Observed:
    """Waits until the server ends the connection; the outcome says whether that came inside
    [low, high] seconds from `started`. `feed` is called every 0.5 s meanwhile (a trickle)."""
    sock = ws_or_sock.sock if isinstance(ws_or_sock, RawWs) else ws_or_sock
    started = started or time.monotonic()
    limit = started + high + 5
    got = b""
    while time.monotonic() < limit:
        readable, _, _ = select.select([sock], [], [], 0.5)
        try:
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
                continue
            if feed:
                feed()
        except OSError:
            break
    else:
        return Observed(f"still open after {high + 5:.0f} s")
    elapsed = time.monotonic() - started
    answer = "without an answer" if not got else f"after {len(got)} bytes"
    if low <= elapsed <= high:
        return Observed(f"closed {answer} at the deadline", elapsed * 1000)
    return Observed(f"closed {answer} after {elapsed:.1f} s", elapsed * 1000)


def slow_connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT)


def idle_handshake(server: Server) -> Observed:
    sock = slow_connect(server)
    try:
        return closed_within(sock, HANDSHAKE_TIMEOUT_S - 0.5, HANDSHAKE_TIMEOUT_S + DEADLINE_SLACK_S)
    finally:
        sock.close()


def partial_head(server: Server) -> Observed:
    sock = slow_connect(server)
    try:
        started = time.monotonic()
        sock.sendall(upgrade_request(server)[:-2])
        return closed_within(sock, HANDSHAKE_TIMEOUT_S - 0.5,
                             HANDSHAKE_TIMEOUT_S + DEADLINE_SLACK_S, started=started)
    finally:
        sock.close()


def trickle(server: Server) -> Observed:
    sock = slow_connect(server)
    request = iter(upgrade_request(server)[:-2] + b"X-Slow: " + b"a" * 100000)
    try:
        started = time.monotonic()
        return closed_within(sock, HANDSHAKE_TIMEOUT_S - 0.5,
                             HANDSHAKE_TIMEOUT_S + DEADLINE_SLACK_S,
                             feed=lambda: sock.sendall(bytes([next(request)])), started=started)
    finally:
        sock.close()


def tls_hello(server: Server) -> Observed:
    sock = slow_connect(server)
    try:
        started = time.monotonic()
        # The start of a TLS 1.2 ClientHello: no line break ever comes.
        sock.sendall(bytes.fromhex("16030100a5010000a10303") + os.urandom(32))
        return closed_within(sock, HANDSHAKE_TIMEOUT_S - 0.5,
                             HANDSHAKE_TIMEOUT_S + DEADLINE_SLACK_S, started=started)
    finally:
        sock.close()


def slowloris(server: Server) -> Observed:
    socks = [slow_connect(server) for _ in range(200)]
    started = time.monotonic()
    try:
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(1)
        # Meanwhile the server serves everyone else.
        meanwhile = Client(server, "during-slowloris")
        serving = meanwhile.round_trip()
        meanwhile.close()
        results = [closed_within(sock, HANDSHAKE_TIMEOUT_S - 0.5,
                                 HANDSHAKE_TIMEOUT_S + DEADLINE_SLACK_S, started=started)
                   for sock in socks]
        late = [r.outcome for r in results if not r.outcome.endswith("at the deadline")]
        if late or not serving:
            return Observed(f"{len(late)} late ({late[:2]}), served meanwhile: {serving}")
        return Observed("all closed at the deadline, others served meanwhile",
                        max(r.ms for r in results))
    finally:
        for sock in socks:
            sock.close()


def silent_after_close(server: Server) -> Observed:
    """Chat closes a client that sends binary (1003); the client never answers the close."""
    ws = RawWs.open(server)
    try:
        ws.send(frame(BINARY, b"binary is not chat"))
        got = ws.read_frame()
        if got is None or got.opcode != CLOSE:
            return Observed(f"no close frame ({got})")
        started = time.monotonic()
        seen = closed_within(ws, CLOSE_TIMEOUT_S - 0.5, CLOSE_TIMEOUT_S + DEADLINE_SLACK_S,
                             started=started)
        seen.detail = f"after its {describe_close(got.payload)}: {seen.outcome}"
        if seen.outcome == "closed without an answer at the deadline":
            seen.outcome = "dropped at the close timeout"
        return seen
    finally:
        ws.close()


SLOW_CASES = [
    SlowCase(f"deadline/{name}[{target}]", target, sent, expected, run)
    for name, sent, expected, run, targets in [
        ("idle-handshake", "connect and send nothing",
         "closed without an answer at the deadline", idle_handshake, ("echo", "chat")),
        ("partial-head", "a request without its final blank line, then silence",
         "closed without an answer at the deadline", partial_head, ("echo", "chat")),
        ("trickle", "a request trickled at 2 bytes per second",
         "closed without an answer at the deadline", trickle, ("echo", "chat")),
        ("tls-client-hello", "a TLS ClientHello to the ws:// port",
         "closed without an answer at the deadline", tls_hello, ("echo", "chat")),
        ("slowloris-200", "200 connections holding an unfinished request",
         "all closed at the deadline, others served meanwhile", slowloris, ("echo", "chat")),
        ("silent-after-close", "binary to chat (closed 1003), the close never answered",
         "dropped at the close timeout", silent_after_close, ("chat",)),
    ]
    for target in targets
]


@pytest.fixture(scope="module")
def slow_outcomes(servers: dict[str, Server]) -> dict[str, tuple[Observed, dict]]:
    """Runs every slow case at once (they wait on the same 10 s clock) and measures each server
    around the whole group."""
    by_server = {}
    for target in {case.target for case in SLOW_CASES}:
        server = servers[target]
        by_server[target] = (server.snapshot(), RssSampler(server))
    for _, sampler in by_server.values():
        sampler.__enter__()

    def run(case: SlowCase) -> Observed:
        try:
            return case.run(servers[case.target])
        except Exception as exc:
            return Observed(f"attack failed: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=len(SLOW_CASES)) as pool:
        results = dict(zip([c.id for c in SLOW_CASES], pool.map(run, SLOW_CASES)))
    for _, sampler in by_server.values():
        sampler.__exit__(None, None, None)
    return {case.id: (results[case.id], {"before": by_server[case.target][0],
                                         "peak": by_server[case.target][1].peak_kib})
            for case in SLOW_CASES}


@pytest.mark.parametrize("slow", SLOW_CASES, ids=[case.id for case in SLOW_CASES])
def test_deadline(slow: SlowCase, slow_outcomes, servers: dict[str, Server],
                  recorder: Recorder) -> None:
    seen, group = slow_outcomes[slow.id]
    case = Case(slow.id, "deadline", slow.target, slow.sent, slow.expected, lambda s: seen)
    server = servers[slow.target]

    # The attack ran in the group, before this test: the RSS peak of the group is checked.
    measure_and_record(case, server, recorder, lambda: seen,
                       (group["before"].rss_kib, group["peak"]))
