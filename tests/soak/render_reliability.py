"""Writes docs/reliability.md and docs/soak.svg from the soak's results.

    .venv/bin/python tests/soak/soak.py                       # target/soak/summary.json, samples.csv
    .venv/bin/python tests/soak/render_reliability.py [--run-crash-tests]

Three parts:
- the soak: load, totals, errors, the RSS and fd trends after the warm-up, and a plot of RSS,
  fds and open connections over time (docs/soak.svg, drawn here without any plotting library);
- crash recovery: what crates/roost-cli/tests/chat.rs and crates/roost-server/tests/crash_store.rs
  check, and their last recorded run (`--run-crash-tests` runs them with cargo and records the
  outcome in target/soak/crash_tests.json);
- fuzzing: the table of docs/fuzzing.md, copied in if that file exists.

Every figure comes from those files; only the prose is written here.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOAK_DIR = REPO_ROOT / "target" / "soak"
DOCS = REPO_ROOT / "docs"

CRASH_TESTS = [
    ("roost-cli", "chat", "crates/roost-cli/tests/chat.rs"),
    ("roost-server", "crash_store", "crates/roost-server/tests/crash_store.rs"),
]

CRASH_PROSE = """\
Two test files exercise crashes for real: they kill processes with SIGKILL (no destructor, no
flush) and look at what survives.

**`crates/roost-server/tests/crash_store.rs`** (`sigkill_during_writes_loses_nothing_acknowledged`)
drives the durable attachment store (`DirStore`, the files behind `--durable DIR`) in a child
process that puts, overwrites and removes attachments of up to 24 KiB in a loop and prints a
line after each operation returns. The parent SIGKILLs the child after 1, 37, 150 and a random
number (below 400) of acknowledgements, with a random extra delay of up to 20 ms so the kill
lands at any step of a write (temporary file, fsync, rename, directory fsync), reusing the
directory so each child also recovers from the previous crash. After every kill it reopens the
directory and asserts:
- no unrecognized file is left (interrupted temporary files are cleaned up by `open`);
- every stored attachment is exactly one complete version of itself (no torn or mixed file);
- every acknowledged put is present with that version or a later one, never an older one;
- every acknowledged remove stays removed;
- at most one unacknowledged attachment per child exists (the put that was under way);
- over the rounds more than 100 ids were acknowledged, so the test did real work.

**`crates/roost-cli/tests/chat.rs`** runs the `roost serve --app chat --durable DIR` binary as
users run it:
- `every_acknowledged_attachment_survives_kill_9_and_resumes_once`: 20 clients join (each
  `hello` is sent only once the name is on disk), the server is SIGKILLed and restarted on the
  same directory; every client resumes with its token and gets `welcome back <name>` and a new
  token, its next message is broadcast under its name, a second use of the old token is
  refused with 401, the 20 attachments moved to new connection ids, none reused;
- `sigterm_closes_with_1001_keeps_files_and_exits_0`: SIGTERM closes the open connection with
  1001, the process exits with status 0, the attachment file stays, and after a restart the
  client resumes (`welcome back grace`);
- `operators_list_show_and_collect_attachments`: `roost attachments list|show` show a live
  server's attachment, `roost attachments gc` refuses to run while the server holds the
  directory and removes the attachments once it is stopped.

The soak above adds the graceful side under load: every run ends with SIGTERM and requires exit
status 0, and the attachments left on disk must be exactly the sessions it left resumable.
"""


def load_samples(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def nice_step(span: float, ticks: int = 5) -> float:
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** int(f"{raw:e}".split("e")[1])
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def axis_range(values: list[float], floor_zero: bool = False) -> tuple[float, float, float]:
    lo, hi = min(values), max(values)
    if floor_zero:
        lo = 0.0
    step = nice_step(hi - lo)
    lo = step * int(lo // step)
    hi = step * (int(hi // step) + 1)
    return lo, hi, step


def render_svg(samples: list[dict[str, float]], summary: dict) -> str:
    width, height = 760, 470
    left, right = 70, 20
    panels = [(40, 190), (265, 415)]  # (top, bottom) of each plot area
    t = [s["t_s"] for s in samples]
    t_max = max(t)
    t_step = nice_step(t_max, 8)
    t_hi = t_step * (int(t_max // t_step) + (0 if t_max % t_step == 0 else 1))

    def x(value: float) -> float:
        return left + (width - left - right) * value / t_hi

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">roost chat soak: '
        f'{summary["load_seconds"] / 60:.0f} min, {summary["totals"].get("connections", 0)} '
        f"connections, {summary['date']}</text>",
    ]
    warm = summary["warmup_ends_s"]
    kicks = [
        s["t_s"]
        for prev, s in zip(samples, samples[1:])
        if s.get("backpressure_closes_total", 0) > prev.get("backpressure_closes_total", 0)
    ]
    series = [
        (
            panels[0],
            "RSS (MiB)",
            [("RSS", [s["rss_kib"] / 1024 for s in samples], "#1f5fa8", "")],
            False,
        ),
        (
            panels[1],
            "count",
            [
                ("open fds", [s["fds"] for s in samples], "#b5442c", ""),
                ("open connections (/metrics)", [s["open"] for s in samples], "#4a8a3a", "4 3"),
            ],
            True,
        ),
    ]
    for (top, bottom), label, lines, floor_zero in series:
        values = [v for _, ys, _, _ in lines for v in ys]
        lo, hi, step = axis_range(values, floor_zero)

        def y(value: float, lo: float = lo, hi: float = hi, top: int = top, bottom: int = bottom) -> float:
            return bottom - (bottom - top) * (value - lo) / (hi - lo)

        out.append(
            f'<rect x="{x(0):.1f}" y="{top}" width="{x(warm) - x(0):.1f}" '
            f'height="{bottom - top}" fill="#eeeeee"/>'
        )
        out.append(
            f'<text x="{(x(0) + x(warm)) / 2:.1f}" y="{top + 12}" text-anchor="middle" '
            f'fill="#777">warm-up</text>'
        )
        tick = lo
        while tick <= hi + step / 1000:
            out.append(
                f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                f'stroke="#dddddd"/>'
            )
            text = f"{tick:g}"
            out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{text}</text>')
            tick += step
        for kick in kicks:
            out.append(
                f'<line x1="{x(kick):.1f}" x2="{x(kick):.1f}" y1="{top}" y2="{bottom}" '
                f'stroke="#c08a00" stroke-dasharray="2 3"/>'
            )
        out.append(
            f'<text x="16" y="{(top + bottom) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 16 {(top + bottom) / 2})">{label}</text>'
        )
        legend_x = left + 8
        for name, ys, color, dash in lines:
            points = " ".join(f"{x(tt):.1f},{y(v):.1f}" for tt, v in zip(t, ys))
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash_attr} '
                f'points="{points}"/>'
            )
            out.append(
                f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="{bottom + 22}" '
                f'y2="{bottom + 22}" stroke="{color}" stroke-width="2"{dash_attr}/>'
            )
            out.append(f'<text x="{legend_x + 22}" y="{bottom + 26}">{name}</text>')
            legend_x += 40 + 6.5 * len(name)
        if kicks and top == panels[0][0]:
            out.append(
                f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="{bottom + 22}" '
                f'y2="{bottom + 22}" stroke="#c08a00" stroke-dasharray="2 3"/>'
            )
            out.append(
                f'<text x="{legend_x + 22}" y="{bottom + 26}">slow reader closed with 1013</text>'
            )
        out.append(
            f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{bottom - top}" '
            f'fill="none" stroke="#444"/>'
        )
    tick = 0.0
    while tick <= t_hi + t_step / 1000:
        for _, bottom in panels:
            out.append(
                f'<text x="{x(tick):.1f}" y="{bottom + 12}" text-anchor="middle">{tick:g}</text>'
            )
        tick += t_step
    out.append(
        f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">seconds since the server '
        f"started (samples every {summary['config']['sample_every_s']:g} s)</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def soak_section(summary: dict, svg_name: str, others: list[dict], isolate: dict | None) -> str:
    c, tot, rss, fds = summary["config"], summary["totals"], summary["rss"], summary["fds"]
    srv = summary["server"]
    errors = summary["errors"]
    kick = summary["slow_reader_kick_s"]
    echo = summary["echo_latency_ms"]
    minutes = summary["load_seconds"] / 60
    lines = [
        "## Soak",
        "",
        "`tests/soak/soak.py` starts `roost serve --app chat --durable DIR` and runs, all at once "
        "and bounded in time and counts: steady clients chatting in several rooms (each checks "
        "that its own broadcasts come back complete and in order and that other senders' arrive "
        "in order; a quarter of them stay quiet long enough to go dormant), churn workers "
        "joining fresh clients that leave with 1000, 1001, a dropped or a reset TCP connection, "
        "resumes with the last token (`welcome back`, a spent token must get 401, a token of a "
        "session closed with 1000 must get 410), heartbeats answered `alive` by the "
        "auto-response, and one slow reader at a time that stops reading in a room flooded with "
        "32 KiB messages and must be closed with 1013 while the room's other members see "
        "nothing wrong. Every unexpected outcome is counted as an error. Every "
        f"{c['sample_every_s']:g} s it samples the server's RSS and open fds (`/proc/PID/status`, "
        "`/proc/PID/fd`) and the connection gauges of `/metrics`. At the end every client leaves "
        "with 1000, the gauges must reach 0, the fd count must return to its idle value, the "
        "attachment files left must be exactly the sessions left resumable on purpose, the "
        "server's counters must agree with the client's (resumes, 401s, 410s, 1013 closes, "
        "connections; no handler error or panic, no attachment-store error), the server log must "
        "hold no warning, and SIGTERM must stop the server with status 0.",
        "",
        "```sh",
        ".venv/bin/python tests/soak/soak.py --minutes 3                       # target/soak/",
        ".venv/bin/python tests/soak/soak.py --minutes 10 --out target/soak-long",
        ".venv/bin/python tests/soak/isolate.py                                # target/soak/isolate.json",
        ".venv/bin/python tests/soak/render_reliability.py --also target/soak-long --run-crash-tests",
        "```",
        "",
        f"Last run: {summary['date']}, commit `{summary['commit']}`, release build, "
        f"{summary['machine']['cpus']} CPUs (Linux {summary['machine']['kernel']}), client and "
        "server on the same machine, which also ran a fuzzing job at the time.",
        "",
        f"**Verdict: {'PASS' if summary['passed'] else 'FAIL'}** "
        f"({'; '.join(summary['verdicts']) if summary['verdicts'] else 'no errors; RSS and fds flat after the warm-up'}).",
        "",
        "| load | |",
        "| --- | --- |",
        f"| duration | {minutes:.1f} min of load; warm-up: the first {summary['warmup_ends_s']:.0f} s ({c['warmup_fraction']:.0%} of the run, at least {c['min_warmup_s']:g} s) |",
        f"| rooms | {c['rooms']} |",
        f"| steady clients | {c['steady_clients']} (message or heartbeat every 0.5-2 s, quiet ones every 11-16 s; resume every 30-60 s) |",
        f"| churn workers | {c['churn_workers']} concurrent join-chat-leave loops |",
        f"| slow readers | one every {c['slow_reader_every_s']:g} s, {c['slow_reader_rcvbuf'] // 1024} KiB receive buffer, flooded with {c['flood_message_bytes'] // 1024} KiB messages |",
        "",
        "| totals | |",
        "| --- | --- |",
        f"| WebSocket connections | {fmt(tot.get('connections', 0))} ({fmt(summary['connections_per_minute'])}/min); server counted {fmt(int(srv['counters'].get('roost_connections_total', 0)))} |",
        f"| joins / resumes | {fmt(tot.get('joins', 0))} / {fmt(tot.get('resumes', 0))} |",
        f"| left with 1000 / 1001 / dropped TCP / TCP reset | {fmt(tot.get('left_normal', 0))} / {fmt(tot.get('left_away', 0))} / {fmt(tot.get('left_drop', 0))} / {fmt(tot.get('left_reset', 0))} |",
        f"| spent tokens refused with 401 / ended sessions refused with 410 | {fmt(tot.get('refused_401', 0))} / {fmt(tot.get('refused_410', 0))} |",
        f"| messages sent / broadcast deliveries checked | {fmt(tot.get('messages_sent', 0))} / {fmt(tot.get('deliveries', 0))} |",
        f"| own broadcasts back in order | {fmt(tot.get('own_echoes', 0))} (latency p50 {fmt(echo['p50'])} ms, p99 {fmt(echo['p99'])} ms, max {fmt(echo['max'])} ms) |",
        f"| heartbeats answered `alive` | {fmt(tot.get('heartbeats_answered', 0))} of {fmt(tot.get('heartbeats', 0))} |",
        f"| slow readers closed with 1013 | {fmt(tot.get('slow_closed_1013', 0))} of {fmt(tot.get('slow_readers', 0))} (after {fmt(kick['min'])}-{fmt(kick['max'])} s of flooding; each then resumed) |",
        *(
            [
                f"| open connections (server gauges) | up to {summary['gauges']['max_open']}, of them up to {summary['gauges']['max_dormant']} dormant; {summary['gauges']['idle_end_open']} after every client left |"
            ]
            if "gauges" in summary
            else []
        ),
        f"| sessions left resumable / attachment files left | {fmt(tot.get('left_resumable', 0))} / {fmt(srv['attachments_left'])} |",
        f"| server exit status after SIGTERM | {srv['exit_code']} |",
        f"| **errors** | **{errors['total']}** |",
        "",
    ]
    if errors["total"]:
        lines += ["Errors by kind:", ""]
        lines += [f"- {kind}: {n}" for kind, n in errors["by_kind"].items()]
        lines += ["", "First errors:", ""] + [f"- `{e}`" for e in errors["examples"][:10]] + [""]
    lines += [
        "| after the warm-up | RSS | open fds |",
        "| --- | --- | --- |",
        f"| idle, before the load | {rss['idle_start_mib']:.1f} MiB | {fds['idle_start']} |",
        f"| min - max under load | {rss['min_mib']:.1f} - {rss['max_mib']:.1f} MiB (range {rss['range_mib']:.1f} MiB) | {fds['min']} - {fds['max']} (fds minus open connections: {fds['fds_minus_open_connections']['min']} - {fds['fds_minus_open_connections']['max']}) |",
        f"| linear trend | {rss['slope_mib_per_min']:+.2f} MiB/min (limit {c['max_rss_slope_mib_per_min']:g}) | {fds['slope_per_min']:+.2f} fds/min |",
        f"| idle, after every client left | {rss['idle_end_mib']:.1f} MiB | {fds['idle_end']} (limit: idle value ± {c['fd_tolerance']}) |",
        "",
        f"![RSS, open fds and open connections of the server during the soak]({svg_name})",
        "",
        "Grey: the warm-up, left out of the trends. Dotted: a slow reader closed with 1013; each "
        "costs the server its 1 MiB outbound queue and some socket buffers for a few seconds.",
        "",
        "**Why these limits.** The load is a steady state (fixed numbers of steady clients and "
        "churn workers), so what the open connections hold stays level and anything that grows "
        "with the connections handled is a leak. A connection leaked with its socket shows at "
        "once: the fd count must come back to its idle value (within "
        f"{c['fd_tolerance']}, for a `/metrics` scrape or a durable write in flight) and the "
        "gauges to 0. For memory the limit is on the linear trend of RSS after the warm-up: at "
        f"{fmt(summary['connections_per_minute'], 0)} connections a minute, a leak of "
        f"{fmt(rss['leak_per_connection_detectable_bytes'])} bytes per connection would reach "
        f"{c['max_rss_slope_mib_per_min']:g} MiB/min, and anything holding a connection's "
        "buffers is larger than that. The limit is not lower because a few minutes of glibc "
        "malloc are not flat even without a leak: the server's threads (the runtime's workers "
        "and the blocking pool that does the durable writes) allocate from several malloc "
        "arenas, and each slow-reader flood raises the heap's high-water mark, so RSS creeps up "
        "until the heap reaches its working size. The warm-up is at least a minute for the "
        "same reason. The longer runs and the isolated loops below tell that apart from a leak "
        "(a leak keeps growing at the same pace; the heap levels off); smaller leaks need a "
        "longer `--minutes`.",
        "",
    ]
    lines += other_runs(others)
    lines += isolation(isolate)
    return "\n".join(lines)


def other_runs(others: list[dict]) -> list[str]:
    if not others:
        return []
    lines = [
        "Other runs of the same soak (same load unless noted):",
        "",
        "| run | minutes | connections | errors | RSS trend after warm-up | RSS range | idle fds before / after | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in others:
        env = " ".join(f"`{k}={v}`" for k, v in o.get("server_env", {}).items())
        label = f"{o['date']}, `{o['commit']}`" + (f", {env}" if env else "")
        lines.append(
            f"| {label} | {o['load_seconds'] / 60:.0f} | {fmt(o['totals'].get('connections', 0))} | "
            f"{o['errors']['total']} | {o['rss']['slope_mib_per_min']:+.2f} MiB/min | "
            f"{o['rss']['min_mib']:.1f} - {o['rss']['max_mib']:.1f} MiB | "
            f"{o['fds']['idle_start']} / {o['fds']['idle_end']} | "
            f"{'PASS' if o['passed'] else 'FAIL'} |"
        )
    return lines + [""]


def isolation(isolate: dict | None) -> list[str]:
    if not isolate:
        return []
    rounds = isolate["rounds"]
    lines = [
        f"Each operation alone (`tests/soak/isolate.py`, {isolate['date']}, `{isolate['commit']}`): "
        f"{fmt(isolate['n'])} in a row ({isolate['slow']} for slow readers), "
        f"{isolate['concurrency']} at a time, in {rounds} rounds on a fresh server per operation; "
        "RSS growth per operation in "
        "each round. Growth only in the first round is the heap reaching its working size; "
        "growth in every round is memory kept per operation.",
        "",
        "| operation | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |",
        "| --- | " + " | ".join("---" for _ in range(rounds)) + " |",
    ]
    for name, values in isolate["bytes_per_operation_by_round"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:,} B" for v in values) + " |")
    errors = sum(isolate["errors"].values())
    lines += [
        "",
        f"Errors: {errors}. A resume spends its token, and the server remembers every spent "
        "token until it would have expired (24 hours) so that a second use gets 401: that "
        "memory is kept per resume and per refused 410 by design, and is bounded by the "
        "connections made in a day.",
        "",
    ]
    return lines


def run_crash_tests(path: Path) -> None:
    results = []
    for package, test, _ in CRASH_TESTS:
        command = ["cargo", "test", "-p", package, "--test", test]
        print("running", " ".join(command), flush=True)
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        output = done.stdout + done.stderr
        found = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", output)
        results.append(
            {
                "command": " ".join(command),
                "status": done.returncode,
                "passed": sum(int(p) for _, p, _ in found),
                "failed": sum(int(f) for _, _, f in found),
            }
        )
        if done.returncode:
            sys.stderr.write(output[-4000:])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    record = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def crash_section(crash_results: Path) -> str:
    lines = ["## Crash recovery", "", CRASH_PROSE]
    if crash_results.exists():
        record = json.loads(crash_results.read_text())
        lines += [
            f"Last recorded run: {record['date']}, commit `{record['commit']}`.",
            "",
            "| command | result |",
            "| --- | --- |",
        ]
        for r in record["results"]:
            verdict = "passed" if r["status"] == 0 and r["failed"] == 0 else "FAILED"
            lines.append(
                f"| `{r['command']}` | {verdict}: {r['passed']} passed, {r['failed']} failed |"
            )
    else:
        lines.append(
            "No run recorded yet: `render_reliability.py --run-crash-tests` runs both files and "
            "records the outcome here."
        )
    lines.append("")
    return "\n".join(lines)


def fuzzing_section(fuzzing_md: Path) -> str:
    lines = ["## Fuzzing", ""]
    if not fuzzing_md.exists():
        lines += [
            "Fuzzing figures per target are in [fuzzing.md](fuzzing.md) once measured.",
            "",
        ]
        return "\n".join(lines)
    tables, current = [], []
    for line in fuzzing_md.read_text().splitlines():
        if line.lstrip().startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    # The figures: the table with executions per target (the first one describes the targets).
    tables = [t for t in tables if "executions" in t[0]] or tables
    if tables:
        lines += [
            "Per target, from [fuzzing.md](fuzzing.md) (which has the targets, how they run and "
            "what they found):",
            "",
            *tables[0],
            "",
        ]
    else:
        lines += ["See [fuzzing.md](fuzzing.md) for the fuzzing figures per target.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak", default=str(SOAK_DIR), help="the soak's output directory")
    parser.add_argument("--out", default=str(DOCS / "reliability.md"))
    parser.add_argument("--svg", default=str(DOCS / "soak.svg"))
    parser.add_argument("--fuzzing", default=str(DOCS / "fuzzing.md"))
    parser.add_argument(
        "--also", action="append", default=[],
        help="another soak output directory to list under 'other runs' (repeatable)",
    )
    parser.add_argument(
        "--run-crash-tests", action="store_true",
        help="run the crash-recovery tests with cargo first and record the outcome",
    )
    args = parser.parse_args()
    soak = Path(args.soak)
    crash_results = soak / "crash_tests.json"
    isolate_path = soak / "isolate.json"
    if args.run_crash_tests:
        run_crash_tests(crash_results)
    summary = json.loads((soak / "summary.json").read_text())
    samples = load_samples(soak / "samples.csv")
    svg_path, out_path = Path(args.svg), Path(args.out)
    svg_path.write_text(render_svg(samples, summary))
    svg_rel = os.path.relpath(svg_path.resolve(), out_path.resolve().parent)
    parts = [
        "# Reliability",
        "",
        "How roost holds up over time and through crashes: a soak with churn under load, the "
        "crash-recovery tests, and the fuzzing figures. Generated by "
        "`tests/soak/render_reliability.py`; do not edit by hand.",
        "",
        soak_section(
            summary,
            str(svg_rel),
            [json.loads((Path(d) / "summary.json").read_text()) for d in args.also],
            json.loads(isolate_path.read_text()) if isolate_path.exists() else None,
        ),
        crash_section(crash_results),
        fuzzing_section(Path(args.fuzzing)),
    ]
    out_path.write_text("\n".join(parts))
    print(f"wrote {out_path} and {svg_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
