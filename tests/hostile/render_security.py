"""Writes docs/security.md from the hostile-input suite's results and roost's own sources.

    .venv/bin/python -m pytest tests/hostile -q      # writes target/hostile/results.json
    .venv/bin/python tests/hostile/render_security.py [--results PATH] [--out PATH]

Three parts:
- the threat model (prose kept here, reviewed like code);
- every default limit, read from crates/roost-proto/src/config.rs,
  crates/roost-server/src/config.rs and the fixed limits of the server's sources
  (SERVER_LIMIT_FILES):
  the value from the `Default` impls and the reason from the doc comments;
- the table of hostile cases with their observed outcomes, from the results file: nothing in
  it is written by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_CONFIG = REPO_ROOT / "crates" / "roost-proto" / "src" / "config.rs"
SERVER_CONFIG = REPO_ROOT / "crates" / "roost-server" / "src" / "config.rs"
# The application server's fixed limits: every documented constant of these files.
SERVER_LIMIT_FILES = [REPO_ROOT / "crates" / "roost-server" / "src" / name
                      for name in ("plain_http.rs", "peer/sleep.rs", "maintenance.rs")]

THREAT_MODEL = """\
## Threat model

**Who.** Anyone who can open a TCP connection to the listening port. Before the handshake
completes nothing is known about them: they may send any bytes at any speed (one byte a
minute, or gigabytes at line rate), open many connections, stop reading while they keep
sending, half-close, reset, or vanish without a FIN. A web page in a victim's browser can also
open connections carrying the victim's cookies (cross-site WebSocket hijacking); only the
`Origin` header tells those apart.

**What roost bounds, and how.**
- *The handshake.* The head is read into a buffer capped at `max_handshake_size` with at most
  `max_headers` lines (431 beyond either); each byte is scanned once and the head is parsed
  only when a blank line completes it, so neither a byte-at-a-time trickle nor a long line
  costs more than linear time. Keys and resume tokens are length-checked before they are
  decoded. Header lists (`Sec-WebSocket-Protocol`, `Sec-WebSocket-Extensions`) are parsed in
  one pass; an invalid permessage-deflate offer is declined, not an error. The whole handshake
  must finish within `handshake_timeout`, else the connection is dropped without an answer.
  Wrong requests get their status at once: 400, 405 (with `Allow: GET`), 426 (with
  `Sec-WebSocket-Version: 13`), 431, and on the application server 403 (foreign Origin with an
  allowlist), 401 (a resume token that is forged, expired or already used), 410 (a valid token
  whose session ended) and 503 (past `max_connections`).
- *Frames and messages.* A declared length is checked against `max_frame_size` and
  `max_message_size` before any payload is read, and buffers grow only with bytes that
  actually arrive. Compressed messages are inflated under the same message limit, as they
  arrive, so a bomb costs at most one message of memory. Every RFC 6455 violation fails the
  connection with its close code (1002, 1007 for invalid UTF-8 in text or close reasons, 1009
  for size); text is validated incrementally, so invalid UTF-8 fails before the message ends.
- *Output.* Pongs stop being queued once `max_queued_output` bytes wait for a peer that does
  not read. The echo app (the bare driver) stops reading from a peer whose answers it cannot
  write, so TCP back-pressure bounds that peer; the application server bounds each
  connection's queue by `max_outbound` and then closes it with 1013.
- *Silence.* A peer that never answers our close frame is dropped after `close_timeout`; on
  the application server, a peer that sends nothing is pinged after `ping_interval` and
  dropped after `idle_timeout`.
- *Files.* No client input becomes a file name: durable attachments are named by a random
  connection id, and a resume token is only trusted after its HMAC verifies.
- *What the server tells about itself.* `/metrics`, `/healthz`, `/readyz` and `/presence`
  (which lists the connection ids in a room) answer anyone who reaches the listening port,
  unless `admin_addr` (`--admin-listen`) moves them to an address of their own: bind that to
  a private interface. A refused handshake says why in one line, never what a store failed on.

**What roost does not bound.** There is no rate limit, per-address limit or authentication
before the handshake: a client can keep a connection busy at line rate (at linear cost), and
many clients can each hold a handshake open for `handshake_timeout`, up to the process's file
descriptor limit. `roost serve --app echo` runs the bare driver: it has no connection limit
and no Origin check (it refuses those settings rather than ignore them); a silent connection
is closed (1001) after `--idle-timeout` (75 s). Worst-case memory is per connection (about
one message plus the output queue), so
`max_connections`, `max_message_size` and `max_outbound` must be sized together for the
machine. TLS is terminated by roost only for the echo app (`--tls-cert`); put the application
server behind a TLS terminator.
"""


# --- reading the Rust sources ------------------------------------------------------------------


def doc_before(lines: list[str], index: int) -> str:
    """The `///` comment block right above line `index`, as one paragraph."""
    docs = []
    i = index - 1
    while i >= 0 and (lines[i].strip().startswith("///") or lines[i].strip().startswith("#[")):
        if lines[i].strip().startswith("///"):
            docs.append(lines[i].strip()[3:].strip())
        i -= 1
    return " ".join(reversed(docs)).strip()


def struct_fields(source: str, name: str) -> dict[str, str]:
    """Field name -> doc comment of `pub struct name { ... }`."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"pub struct {name}\b", line))
    fields = {}
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("}"):
            break
        match = re.match(r"\s+pub (\w+):", lines[i])
        if match:
            fields[match.group(1)] = doc_before(lines, i)
    return fields


def default_values(source: str, name: str) -> dict[str, str]:
    """Field name -> expression, from the struct literal in `impl Default for name`."""
    block = source[source.index(f"impl Default for {name}"):]
    literal = block[block.index(f"{name} {{", block.index("fn default")):]
    values = {}
    for line in literal.splitlines()[1:]:
        if re.match(r"\s*}", line):
            break
        match = re.match(r"\s+(\w+): (.+),$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def builder_docs(source: str) -> dict[str, str]:
    """Setter name -> doc comment, from `impl ConfigBuilder`."""
    lines = source.splitlines()
    docs = {}
    for i, line in enumerate(lines):
        match = re.match(r"\s+pub fn (\w+)\(mut self", line)
        if match:
            docs[match.group(1)] = doc_before(lines, i)
    return docs


def constants(source: str) -> list[tuple[str, str, str]]:
    """(name, expression, doc) of each documented top-level `const`."""
    lines = source.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.match(r"const (\w+): [^=]+= (.+);$", line)
        if match and doc_before(lines, i):
            found.append((match.group(1), match.group(2), doc_before(lines, i)))
    return found


def human(expression: str) -> str:
    """`16 << 20` -> 16 MiB, `Duration::from_secs(5)` -> 5 s, `20_000` -> 20,000."""
    expr = expression.strip()
    shifted = re.fullmatch(r"(\d+) << (\d+)", expr)
    if shifted:
        value = int(shifted.group(1)) << int(shifted.group(2))
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value // size} {unit}"
        return f"{value} bytes"
    duration = re.fullmatch(r"(?:std::time::)?Duration::from_secs\(([\d_ *]+)\)", expr)
    if duration:
        seconds = 1
        for factor in duration.group(1).replace("_", "").split("*"):
            seconds *= int(factor)
        if seconds % 3600 == 0 and seconds >= 3600:
            return f"{seconds // 3600} h"
        return f"{seconds} s"
    if re.fullmatch(r"[\d_]+", expr):
        return f"{int(expr.replace('_', '')):,}"
    return f"`{expr}`"


def first_sentences(text: str) -> str:
    """The doc comment without its `Default …` sentence (the value column says it)."""
    text = re.sub(r"\[`([^`]+)`\]\([^)]*\)", r"`\1`", text)
    text = re.sub(r"\[(`[^`]+`)\]", r"\1", text)
    text = re.sub(r"\s*\(default [^)]*\)", "", text)
    # "Default 16 KiB; past it …" -> "Past it …"
    text = re.sub(r"\bDefault\b[^.;:]*[.;:]\s*(\w?)", lambda m: m.group(1).upper(), text)
    return text.strip().replace("|", "\\|")


def limits_section() -> str:
    proto = PROTO_CONFIG.read_text()
    server = SERVER_CONFIG.read_text()
    rel = lambda path: path.relative_to(REPO_ROOT).as_posix()  # noqa: E731
    out = [
        "## Default limits",
        "",
        f"Read from `{rel(PROTO_CONFIG)}`, `{rel(SERVER_CONFIG)}` and the files named below "
        "when this page was generated: the value is the `Default` implementation's, the reason "
        "is the doc comment's. `roost serve` keeps these defaults, except that "
        "`--max-message-size` (default 16 MiB) sets both `max_frame_size` and "
        "`max_message_size`, and the chat app takes its settings from `ServerConfig`.",
        "",
        "### Protocol (`roost_proto::Limits`, every connection, both apps)",
        "",
        "| Setting | Default | Why |",
        "|---|---|---|",
    ]
    setters = builder_docs(proto)
    fields = struct_fields(proto, "Limits")
    for name, expr in default_values(proto, "Limits").items():
        reason = setters.get(name) or fields.get(name, "")
        out.append(f"| `{name}` | {human(expr)} | {first_sentences(reason)} |")
    out += ["", "### Permessage-deflate (`roost_proto::DeflateConfig`)", "",
            "| Setting | Default | Why |", "|---|---|---|"]
    fields = struct_fields(proto, "DeflateConfig")
    for name, expr in default_values(proto, "DeflateConfig").items():
        out.append(f"| `{name}` | {human(expr)} | {first_sentences(fields.get(name, ''))} |")
    out += ["", "The application server (`roost_server::ServerConfig`) turns on "
            "`server_no_context_takeover`, so a broadcast is compressed once for all members.",
            "", "### Application server (`roost_server::ServerConfig`, `--app chat`)", "",
            "| Setting | Default | Why |", "|---|---|---|"]
    fields = struct_fields(server, "ServerConfig")
    for name, expr in default_values(server, "ServerConfig").items():
        if name == "protocol":
            continue
        out.append(f"| `{name}` | {human(expr)} | {first_sentences(fields.get(name, ''))} |")
    out += ["", "### Fixed limits of the application server", "",
            "| Constant | Value | Why | In |", "|---|---|---|---|"]
    for path in SERVER_LIMIT_FILES:
        for name, expr, doc in constants(path.read_text()):
            out.append(f"| `{name}` | {human(expr)} | {first_sentences(doc)} | "
                       f"`{rel(path)}` |")
    return "\n".join(out) + "\n"


# --- the results -------------------------------------------------------------------------------

CLASS_TITLES = {
    "handshake": "Handshakes",
    "deflate-offer": "Permessage-deflate offers",
    "origin": "Origin allowlist",
    "file-names": "Path traversal and odd characters (anything near a file name)",
    "resume-token": "Resume tokens",
    "admission": "Admission",
    "protocol": "RFC 6455 violations",
    "close-payload": "Close payloads",
    "utf8": "Invalid UTF-8",
    "length": "Declared lengths",
    "deflate": "Decompression bombs and corrupt deflate",
    "fragment-flood": "Floods of tiny or empty fragments",
    "control-flood": "Control-frame floods",
    "slow-reader": "Readers that never read",
    "fault": "Resets and half-closed peers",
    "resources": "Out of file descriptors, out of disk",
    "deadline": "Slow and silent peers (deadlines)",
}


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def kib(value: int) -> str:
    return f"{value / 1024:+.1f} MiB" if abs(value) >= 1024 else f"{value:+d} KiB"


def results_section(results: dict) -> str:
    cases = results["cases"]
    passed = sum(1 for c in cases if c["passed"])
    known = [c for c in cases if c["known_bug"]]
    failed = [c for c in cases if not c["passed"] and not c["known_bug"]]
    bound = results["rss_bound_kib"] // 1024
    servers = "; ".join(
        f"`{name}`: `roost serve --app {s['app']} {' '.join(s['args'])}`".replace(" `", "`")
        for name, s in sorted(results["servers"].items())
    )
    out = [
        "## Hostile cases and observed outcomes",
        "",
        "Generated from `target/hostile/results.json`, written by the run of "
        "`tests/hostile/test_hostile.py` on "
        f"{results['generated_at']} (commit `{results['git_commit'][:12]}`, "
        f"{results['host']}). Nothing in this section is written by hand; to refresh it, run "
        "the suite and then `tests/hostile/render_security.py`.",
        "",
        f"Servers: {servers}. Each case also checked that the server stayed alive (a fresh "
        "client got its answer), that a bystander connected before any attack still got its "
        f"answer, that the server's RSS never rose more than {bound} MiB during the case "
        "(sampled every 5 ms), and that its file descriptors came back to their level "
        "before the case. \"Answer\" is the time from sending the hostile input to the "
        "server's answer (status line, close frame, or the end of the connection for the "
        "deadlines); \"RSS\" is the peak rise during the case.",
        "",
        f"**{len(cases)} cases: {passed} as expected, {len(known)} known bugs, "
        f"{len(failed)} unexpected failures.**",
        "",
    ]
    if known or failed:
        out += ["### Bugs found", ""]
        for case in known + failed:
            why = results["known_bugs"].get(case["id"], "; ".join(case["problems"]))
            out.append(f"- `{case['id']}`: expected {case['expected']}, observed "
                       f"{case['observed']}. {why}.")
        out.append("")
    order = list(CLASS_TITLES)
    by_class: dict[str, list[dict]] = {}
    for case in cases:
        by_class.setdefault(case["class"], []).append(case)
    for klass in sorted(by_class, key=lambda k: order.index(k) if k in order else len(order)):
        out += [f"### {CLASS_TITLES.get(klass, klass)}", "",
                "| Case | Server | Sent | Expected | Observed | Answer | RSS | Result |",
                "|---|---|---|---|---|---|---|---|"]
        for case in by_class[klass]:
            name = case["id"].split("/", 1)[1].rsplit("[", 1)[0]
            ms = case["time_to_answer_ms"]
            answer = "—" if ms is None else (f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms")
            result = ("pass" if case["passed"] else
                      "**KNOWN BUG**" if case["known_bug"] else "**FAIL**")
            observed = case["observed"]
            if case["detail"] and klass in ("control-flood", "slow-reader", "fragment-flood"):
                observed += f" ({case['detail']})"
            out.append(
                f"| {cell(name)} | {case['target']} | {cell(case['sent'])} | "
                f"{cell(case['expected'])} | {cell(observed)} | {answer} | "
                f"{kib(case['rss_peak_delta_kib'])} | {result} |"
            )
        out.append("")
    return "\n".join(out)


def render(results: dict) -> str:
    return "\n".join([
        "# Security: hostile input",
        "",
        "<!-- Generated by tests/hostile/render_security.py; edit that script, not this file. -->",
        "",
        "What roost assumes about its peers, the limits that hold them, and what a run of the "
        "hostile-input suite (`tests/hostile/`) observed against `roost serve`.",
        "",
        THREAT_MODEL,
        limits_section(),
        results_section(results),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path,
                        default=REPO_ROOT / "target" / "hostile" / "results.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "security.md")
    args = parser.parse_args()
    if not args.results.exists():
        print(f"{args.results} is missing: run the hostile suite first", file=sys.stderr)
        return 1
    results = json.loads(args.results.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    print(f"wrote {args.out} ({len(results['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
