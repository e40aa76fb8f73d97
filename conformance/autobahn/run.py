#!/usr/bin/env python3
"""Run the Autobahn TestSuite against roost (through kosoku) and diff the verdicts with the
checked-in expectations.

    run.py server --cmd "target/release/roost serve --app echo --listen 127.0.0.1:{port}"
    run.py client --cmd "target/release/examples/autobahn_client {url}"

`server` starts the command on a free port, waits until the port accepts TCP, and lets kosoku
(fuzzingclient role) run the whole suite against it. `client` starts kosoku as a fuzzingserver
on a free port and runs the command, which must drive every case and then call
/updateReports. Both then compare kosoku's `index.json` with `expected-<role>.json` beside
this file and print one line CI can count:

    autobahn-server: 517 passed, 0 failed

A case passes when its behavior and behaviorClose equal the expected ones. Independently, a
verdict that is not acceptable on its own (behavior other than OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED; behaviorClose other than OK, INFORMATIONAL) fails unless its expected entry
carries a "note" saying why. `--update` rewrites the expected file from the report and keeps
existing notes. Exit status: 0 when every case passes, 1 otherwise, 130 on Ctrl-C.

Python 3.11 standard library only; kosoku runs as a subprocess. Every wait is bounded and
every child process is killed on the way out, including on Ctrl-C, SIGTERM and timeouts.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"

SERVER_START_TIMEOUT = 30.0
"""Seconds a server under test, or kosoku's fuzzingserver, gets to accept TCP connections."""

DEFAULT_RUN_TIMEOUT = 20 * 60.0
"""Seconds for a whole run; a full run takes about 4 minutes against roost on 2 cores."""

REPORT_GRACE = 60.0
"""Seconds kosoku's fuzzingserver gets to write its report after the client has exited."""

CLIENT_GRACE = 10.0
"""Seconds a client under test may keep running after kosoku's fuzzingserver has finished."""

STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when stopping a child process group."""

HEARTBEAT = 60.0
"""Seconds between "still running" lines, so a long CI step visibly makes progress."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

ACCEPTABLE_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"})
ACCEPTABLE_CLOSES = frozenset({"OK", "INFORMATIONAL"})

# Files kosoku writes into its output directory, plus our logs; removed before each run so a
# stale report can never be compared.
REPORT_FILE_PATTERNS = ("index.json", "index.html", "*_case_*.json", "*_case_*.html", "*.log")


def main() -> int:
    args = parse_args()
    role = args.role
    label = f"autobahn-{role}"
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the `finally` blocks stop the children.
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    try:
        return run(args, label)
    except KeyboardInterrupt:
        print(f"{label}: interrupted; child processes stopped", flush=True)
        return 130


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn TestSuite (kosoku) against roost and diff the results "
        "with the checked-in expectations.",
    )
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kosoku", metavar="PATH", help="kosoku executable "
                        "(default: `kosoku` on PATH)")
    common.add_argument("--out", metavar="DIR", type=Path,
                        help="report directory (default: conformance/autobahn/out/ROLE)")
    common.add_argument("--expected", metavar="FILE", type=Path,
                        help="expectations (default: conformance/autobahn/expected-ROLE.json)")
    common.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_RUN_TIMEOUT,
                        help="bound on the whole run (default: %(default).0f)")
    common.add_argument("--update", action="store_true",
                        help="rewrite the expected file from this run's report, keeping notes")
    common.add_argument("--agent", help="report agent to check when the report holds several")
    common.add_argument("-i", "--include", metavar="CASE", action="append", default=[],
                        help="run only these case ids or `*` globs (repeatable); "
                        "the other expected cases are then not checked")
    common.add_argument("-x", "--exclude", metavar="CASE", action="append", default=[],
                        help="leave out these case ids or `*` globs (repeatable)")

    server = roles.add_parser("server", parents=[common], help="test a server: "
                              "kosoku is the fuzzing client")
    server.add_argument("--cmd", required=True, help="server command; {port} is replaced by "
                        "the port to listen on at 127.0.0.1 (split like a shell, not run by one)")
    server.add_argument("--parallelism", "-p", metavar="N", type=int, default=1,
                        help="cases kosoku runs at once (default: %(default)s)")

    client = roles.add_parser("client", parents=[common], help="test a client: "
                              "kosoku is the fuzzing server")
    client.add_argument("--cmd", required=True, help="client command; {url} is replaced by the "
                        "fuzzing server's ws:// URL (split like a shell, not run by one)")

    args = parser.parse_args()
    placeholder = "{port}" if args.role == "server" else "{url}"
    if placeholder not in args.cmd:
        parser.error(f"--cmd must contain {placeholder}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.role == "server" and args.parallelism < 1:
        parser.error("--parallelism must be at least 1")
    for pattern in args.include + args.exclude:
        # kosoku turns `?` and `[` into regex syntax rather than glob syntax (see README), so
        # our selection would disagree with the cases it actually runs.
        if any(c in pattern for c in "?[]"):
            parser.error(f"case pattern {pattern!r}: use case ids and `*` only")
    args.kosoku = args.kosoku or shutil.which("kosoku")
    if not args.kosoku:
        parser.error("kosoku not found on PATH; install it (pip install kosoku) or pass --kosoku")
    args.out = (args.out or HERE / "out" / args.role).resolve()
    args.expected = args.expected or HERE / f"expected-{args.role}.json"
    return args


def run(args: argparse.Namespace, label: str) -> int:
    expected = load_expected(args.expected)
    selection = Selection(args.include, args.exclude)
    prepare_out_dir(args.out)
    deadline = time.monotonic() + args.timeout

    errors: list[str] = []
    children: list[Child] = []
    try:
        if args.role == "server":
            run_server_role(args, label, deadline, children, errors)
        else:
            run_client_role(args, label, deadline, children, errors)
    except RunTimeout:
        errors.append(f"the run exceeded --timeout {args.timeout:.0f} s and was stopped")
    except HarnessError as error:
        errors.append(str(error))
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short and leave a child behind.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
        for child in reversed(children):
            child.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    report = load_report(args.out, args.agent, errors)
    if args.update and errors:
        print(f"{label}: not updating {args.expected}: the run went wrong (errors below)")
    elif args.update and report is not None:
        expected = update_expected(args.expected, expected, report, selection, label)
    outcome = compare(expected, report or {}, selection)
    print_outcome(label, outcome, report or {}, args.out, args.expected)
    for error in errors:
        print(f"{label}: error: {error}", flush=True)
    print(f"{label}: {outcome.passed} passed, {len(outcome.problems)} failed", flush=True)
    return 1 if outcome.problems or errors else 0


# --- running the suite ----------------------------------------------------------------------


def run_server_role(args: argparse.Namespace, label: str, deadline: float,
                    children: list[Child], errors: list[str]) -> None:
    port = free_port()
    server_argv = shlex.split(args.cmd.replace("{port}", str(port)))
    print(f"{label}: starting server on port {port}: {shlex.join(server_argv)}", flush=True)
    server = Child("server", server_argv, args.out / "server.log")
    children.append(server)
    wait_for_port(port, server, min(SERVER_START_TIMEOUT, remaining(deadline)))

    kosoku_argv = [args.kosoku, f"{HOST}:{port}", "-o", str(args.out),
                   "-p", str(args.parallelism), *selection_flags(args)]
    print(f"{label}: running kosoku (fuzzingclient, -p {args.parallelism}); "
          f"log in {args.out / 'kosoku.log'}", flush=True)
    kosoku = Child("kosoku", kosoku_argv, args.out / "kosoku.log")
    children.append(kosoku)
    wait_for_exit(kosoku, deadline, label, watch=[server], errors=errors)
    check_kosoku(kosoku, args.out, errors)
    if server.exit_code() is None:
        return
    # The server died during the run; every later case fails, but the cause is this.
    errors.append(f"the server exited during the run with status {server.exit_code()}; "
                  f"log tail:\n{server.log_tail()}")


def run_client_role(args: argparse.Namespace, label: str, deadline: float,
                    children: list[Child], errors: list[str]) -> None:
    port = free_port()
    kosoku_argv = [args.kosoku, "-m", "fuzzingserver", f"{HOST}:{port}", "-o", str(args.out),
                   *selection_flags(args)]
    kosoku = Child("kosoku", kosoku_argv, args.out / "kosoku.log")
    children.append(kosoku)
    wait_for_port(port, kosoku, min(SERVER_START_TIMEOUT, remaining(deadline)))

    url = f"ws://{HOST}:{port}"
    client_argv = shlex.split(args.cmd.replace("{url}", url))
    print(f"{label}: running client against kosoku fuzzingserver at {url}: "
          f"{shlex.join(client_argv)}", flush=True)
    client = Child("client", client_argv, args.out / "client.log")
    children.append(client)
    # kosoku ends the run when the client calls /updateReports; a client that finishes while
    # kosoku keeps waiting has skipped it, and one that outlives kosoku is hanging.
    wait_for_exit(client, deadline, label, watch=[kosoku], watch_grace=CLIENT_GRACE,
                  errors=errors)
    status = client.exit_code()
    if status not in (None, 0):
        errors.append(f"the client exited with status {status}; log tail:\n{client.log_tail()}")
    # A client that failed has probably not called /updateReports; don't wait long for it.
    grace = min(REPORT_GRACE if status in (None, 0) else STOP_GRACE, remaining(deadline))
    if kosoku.wait(grace) is None:
        errors.append(f"kosoku did not finish within {grace:.0f} s of the client exiting "
                      "(the client must call /updateReports?agent=...)")
        return
    check_kosoku(kosoku, args.out, errors)


def check_kosoku(kosoku: Child, out: Path, errors: list[str]) -> None:
    """Note a kosoku that exited without writing a report (it exits 1 when a case fails, so
    only the report's absence tells a crash apart)."""
    if not (out / "index.json").exists():
        errors.append(f"kosoku exited with status {kosoku.exit_code()} without writing a "
                      f"report; log tail:\n{kosoku.log_tail()}")


def selection_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for pattern in args.include:
        flags += ["-i", pattern]
    for pattern in args.exclude:
        flags += ["-x", pattern]
    return flags


class RunTimeout(Exception):
    """The overall --timeout expired."""


class HarnessError(Exception):
    """A child could not be started or never became ready; the run cannot go on."""


class Child:
    """A child process in its own process group, output to a log file.

    Its own group keeps Ctrl-C from reaching it before we decide to stop it, and lets `stop`
    reach anything it spawned (a `cargo run` wrapper, a shell).
    """

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            try:
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)
            except OSError as error:
                raise HarnessError(f"cannot start the {name} ({argv[0]}): {error}") from error

    def exit_code(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after STOP_GRACE."""
        self._signal_group(signal.SIGTERM)
        self.wait(STOP_GRACE)
        # The leader may be gone while something it spawned still runs; the group id cannot
        # be reused while any member is alive, so signalling it is safe.
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "    (no log)"
        tail = text.splitlines()[-lines:] or ["(empty)"]
        return "\n".join(f"    {line}" for line in tail)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def free_port() -> int:
    # Free when we ask; should another process take it before the child binds, the child
    # fails to start and the run says so.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, child: Child, timeout: float) -> None:
    """Return once `port` accepts TCP; fail if `child` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        status = child.exit_code()
        if status is not None:
            raise HarnessError(f"the {child.name} exited with status {status} before accepting "
                             f"connections on port {port}; log tail:\n{child.log_tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise HarnessError(f"the {child.name} did not accept connections on port {port} "
                             f"within {timeout:.0f} s; log tail:\n"
                             f"{child.log_tail()}")
        time.sleep(0.1)


def wait_for_exit(child: Child, deadline: float, label: str, watch: list[Child],
                  errors: list[str], watch_grace: float | None = None) -> None:
    """Wait for `child` to exit, until `deadline` (then RunTimeout).

    A `watch`ed child exiting first is noted; with `watch_grace`, `child` then gets only that
    many more seconds before it is given up on (and later stopped).
    """
    started = last_beat = time.monotonic()
    watch_exited: float | None = None
    while child.wait(0.2) is None:
        now = time.monotonic()
        if now >= deadline:
            raise RunTimeout
        if watch_exited is None and any(w.exit_code() is not None for w in watch):
            watch_exited = now
        if watch_grace is not None and watch_exited is not None:
            if now - watch_exited >= watch_grace:
                names = ", ".join(w.name for w in watch if w.exit_code() is not None)
                errors.append(f"the {child.name} was still running {watch_grace:.0f} s after "
                              f"the {names} finished; stopped it")
                return
        if now - last_beat >= HEARTBEAT:
            last_beat = now
            print(f"{label}: {child.name} still running ({(now - started) / 60:.0f} min)",
                  flush=True)


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def prepare_out_dir(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for pattern in REPORT_FILE_PATTERNS:
        for stale in out.glob(pattern):
            stale.unlink()


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# --- reports and expectations ---------------------------------------------------------------


@dataclass
class Selection:
    """The cases a run covers: all, or those matching --include minus --exclude.

    Matching is fnmatch on the whole id. kosoku matches `*` patterns as a prefix (`*.1.1` also
    runs 12.1.10), so it runs at least what we select; extra cases it runs are still checked.
    """

    include: list[str]
    exclude: list[str]

    def is_full(self) -> bool:
        return not self.include and not self.exclude

    def covers(self, case_id: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(case_id, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(case_id, p) for p in self.exclude)


def load_report(out: Path, agent: str | None, errors: list[str]) -> dict[str, dict] | None:
    """The report's case id -> index entry for one agent, or None (with an error) if absent."""
    index_path = out / "index.json"
    if not index_path.exists():
        if not errors:
            errors.append(f"kosoku wrote no report ({index_path}); see {out / 'kosoku.log'}")
        return None
    index = json.loads(index_path.read_text())
    # index.json is keyed by agent: the Server header of a tested server, or the `agent`
    # query parameter a tested client sent.
    if agent is None and len(index) == 1:
        agent = next(iter(index))
    if agent not in index:
        errors.append(f"cannot tell which agent to check; the report holds {sorted(index)} "
                      "(pass --agent)")
        return None
    return index[agent]


def load_expected(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path}: invalid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected an object mapping case ids to verdicts")
    for case_id, entry in data.items():
        keys = set(entry) if isinstance(entry, dict) else set()
        valid = (
            {"behavior", "behaviorClose"} <= keys <= {"behavior", "behaviorClose", "note"}
            and all(isinstance(entry[k], str) and entry[k] for k in keys)
        )
        if not valid:
            raise SystemExit(f"{path}: case {case_id}: expected "
                             '{"behavior": ..., "behaviorClose": ..., optional "note": ...}')
    return data


def update_expected(path: Path, expected: dict[str, dict], report: dict[str, dict],
                    selection: Selection, label: str) -> dict[str, dict]:
    """Rewrite `path` from `report`, keeping notes; return the new expectations.

    A full run replaces the file; a selective run replaces only the cases it ran.
    """
    updated = {} if selection.is_full() else dict(expected)
    for case_id, result in report.items():
        entry = {"behavior": result["behavior"], "behaviorClose": result["behaviorClose"]}
        old = expected.get(case_id, {})
        if "note" in old:
            entry["note"] = old["note"]
            if verdict(old) != verdict(entry):
                print(f"{label}: update: {case_id} changed from {show(verdict(old))} to "
                      f"{show(verdict(entry))}; review its note: {old['note']}")
        updated[case_id] = entry
    for case_id in sorted(set(expected) - set(updated), key=case_order):
        print(f"{label}: update: dropped {case_id} (not in this run's report)")
    unnoted = [c for c, e in updated.items() if "note" not in e]
    needs_note = [c for c in unnoted if not acceptable(verdict(updated[c]))]
    lenient = [c for c in unnoted
               if c not in needs_note and updated[c]["behavior"] in ("NON-STRICT", "UNIMPLEMENTED")]
    if needs_note:
        print(f"{label}: update: these fail until their entry gets a \"note\": "
              f"{' '.join(sorted(needs_note, key=case_order))}")
    if lenient:
        print(f"{label}: update: consider a \"note\" on these NON-STRICT/UNIMPLEMENTED cases: "
              f"{' '.join(sorted(lenient, key=case_order))}")
    path.write_text(format_expected(updated))
    changed = sum(1 for c in set(expected) | set(updated) if expected.get(c) != updated.get(c))
    print(f"{label}: update: wrote {len(updated)} cases to {path} ({changed} changed)")
    return updated


def format_expected(expected: dict[str, dict]) -> str:
    """One case per line in numeric id order, so diffs in review stay small and readable."""
    lines = []
    for case_id in sorted(expected, key=case_order):
        entry = expected[case_id]
        ordered = {k: entry[k] for k in ("behavior", "behaviorClose", "note") if k in entry}
        lines.append(f"  {json.dumps(case_id)}: {json.dumps(ordered, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def case_order(case_id: str) -> list[int]:
    return [int(part) if part.isdigit() else 0 for part in case_id.split(".")]


def verdict(entry: dict) -> tuple[str, str]:
    return entry["behavior"], entry["behaviorClose"]


def show(pair: tuple[str, str] | None) -> str:
    return "(missing)" if pair is None else f"{pair[0]} / {pair[1]}"


# --- comparison -----------------------------------------------------------------------------


@dataclass
class Problem:
    case_id: str
    kind: str
    got: tuple[str, str] | None
    expected: tuple[str, str] | None


MISSING, UNEXPECTED, DIFFERS, NEEDS_NOTE = "missing", "unexpected", "differs", "needs note"


@dataclass
class Outcome:
    passed: int = 0
    problems: list[Problem] = field(default_factory=list)


def compare(expected: dict[str, dict], report: dict[str, dict],
            selection: Selection) -> Outcome:
    outcome = Outcome()
    case_ids = set(report) | {c for c in expected if selection.covers(c)}
    for case_id in sorted(case_ids, key=case_order):
        got = verdict(report[case_id]) if case_id in report else None
        want = verdict(expected[case_id]) if case_id in expected else None
        if got is None:
            kind = MISSING
        elif want is None:
            kind = UNEXPECTED
        elif got != want:
            kind = DIFFERS
        elif not acceptable(got) and "note" not in expected[case_id]:
            kind = NEEDS_NOTE
        else:
            outcome.passed += 1
            continue
        outcome.problems.append(Problem(case_id, kind, got, want))
    return outcome


def acceptable(pair: tuple[str, str]) -> bool:
    """Whether a verdict may stand without a note explaining it."""
    return pair[0] in ACCEPTABLE_BEHAVIORS and pair[1] in ACCEPTABLE_CLOSES


def print_outcome(label: str, outcome: Outcome, report: dict[str, dict], out: Path,
                  expected_path: Path) -> None:
    if not outcome.problems:
        return
    count = len(outcome.problems)
    if not report:
        print(f"{label}: no report, so all {count} expected cases are missing")
        return
    print(f"{label}: {count} case{'s' if count != 1 else ''} do not match {expected_path}:")
    if not expected_path.exists():
        print("  (the expected file does not exist yet; --update creates it)")
    for problem in outcome.problems:
        got, want = show(problem.got), show(problem.expected)
        if problem.kind == MISSING:
            print(f"  {problem.case_id:<8} missing from the report, expected {want}")
            continue
        if problem.kind == UNEXPECTED:
            print(f"  {problem.case_id:<8} got {got}, not in the expected file")
        elif problem.kind == DIFFERS:
            print(f"  {problem.case_id:<8} got {got}, expected {want}")
        else:
            print(f"  {problem.case_id:<8} got {got} as expected, but that verdict needs a "
                  '"note" in the expected file saying why it is accepted')
        details = case_details(out, report.get(problem.case_id))
        keys = ("description",) if problem.kind == UNEXPECTED else DETAIL_KEYS
        for key in keys:
            if details.get(key):
                print(f"           {key}: {details[key]}")
        if details.get("path"):
            print(f"           report: {details['path']}")
    sys.stdout.flush()


DETAIL_KEYS = ("description", "result", "resultClose")


def case_details(out: Path, entry: dict | None) -> dict[str, str]:
    """Description and kosoku's explanations from the per-case report, when there is one."""
    if not entry or not entry.get("reportfile"):
        return {}
    path = out / entry["reportfile"]
    try:
        case = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    details = {"path": str(path)}
    for key in DETAIL_KEYS:
        # Descriptions are HTML fragments written for the HTML report.
        text = re.sub(r"<[^>]+>", " ", str(case.get(key) or ""))
        text = " ".join(text.split())
        details[key] = text if len(text) <= 160 else text[:157] + "..."
    return details


if __name__ == "__main__":
    sys.exit(main())
