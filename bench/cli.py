"""``python -m bench``: measure ours, mosquitto and amqtt side by side and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.brokers import BROKER_KEYS, BrokerError
from bench.machine import machine_info
from bench.report import Summary, generated_section, update_doc
from bench.runner import Bench
from bench.scale import scale_scenarios
from bench.scenarios import Params, Scenario, scenarios

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOC = REPO_ROOT / "docs" / "benchmarks.md"

PRESETS: dict[str, dict[str, Any]] = {
    # A few seconds per broker: proves the harness and the brokers work, not a measurement.
    "quick": dict(rounds=1, duration=1.0, warmup=0.3, connections=300, drain_idle=2.0, retries=0,
                  idle_connections=600, subscriptions=2000, sessions=200, queued=3, retained=2000),
    "default": {},
    "long": dict(rounds=5, duration=10.0, warmup=2.0),
}


def all_scenarios(params: Params) -> dict[str, Scenario]:
    """Every scenario by key: the default ones, then the scale ones (only with --scale or by name)."""
    return {**scenarios(params), **{s.key: s for s in scale_scenarios(params)}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    default_scenarios = list(scenarios(Params()))
    scale_keys = [s.key for s in scale_scenarios(Params())]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark our broker against mosquitto and amqtt on this machine, in one run "
        "with alternating rounds, and write the figures into docs/benchmarks.md.",
    )
    parser.add_argument("--brokers", default=",".join(BROKER_KEYS),
                        help=f"comma-separated, from {','.join(BROKER_KEYS)} (default: all)")
    parser.add_argument("--scenarios",
                        help=f"comma-separated, from {','.join(default_scenarios + scale_keys)} "
                        "(default: all but the scale ones)")
    parser.add_argument("--scale", action="store_true",
                        help=f"add the scale scenarios of issue 13 ({','.join(scale_keys)}) to the default ones "
                        "(about 2-3 more minutes per round)")
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="smoke mode: 1 short round, 300 idle connections, no quiet-machine wait, no doc")
    preset.add_argument("--long", action="store_true", help="5 rounds of 10 s windows")
    parser.add_argument("--rounds", type=int, help="rounds per scenario and broker (default 3)")
    parser.add_argument("--duration", type=float, help="seconds of measurement window per run (default 3)")
    parser.add_argument("--warmup", type=float, help="seconds of load before the window (default 0.5)")
    parser.add_argument("--connections", type=int, help="idle connections in the memory scenario (default 5000)")
    parser.add_argument("--publishers", type=int, help="publishers in the fan-in scenarios (default 4)")
    parser.add_argument("--fanout-subscribers", type=int, help="subscribers in the fan-out scenario (default 50)")
    parser.add_argument("--payload", type=int, help="payload bytes per message (default 64, at least 16)")
    parser.add_argument("--window", type=int,
                        help="QoS 1/2: unacknowledged PUBLISHes per publisher (default 20)")
    parser.add_argument("--transit", type=int,
                        help="messages published but not yet received, per subscriber (default 1000)")
    parser.add_argument("--slow-rate", type=float,
                        help="msg/s the slow subscriber reads in the slow-fast scenario (default 1000)")
    parser.add_argument("--devices", type=int,
                        help="publishers in the devices scenario, one QoS 1 message every 10 s each (default 10000)")
    parser.add_argument("--idle-connections", type=int, help="connections in scale-idle (default 50000)")
    parser.add_argument("--subscriptions", type=int, help="filters in scale-subs (default 100000)")
    parser.add_argument("--sessions", type=int, help="persistent sessions in scale-sessions (default 10000)")
    parser.add_argument("--queued", type=int, help="QoS 1 messages queued per session in scale-sessions (default 10)")
    parser.add_argument("--retained", type=int, help="retained messages in scale-retained (default 100000)")
    parser.add_argument("--latency-rate", type=float, help="messages per second in the latency scenarios (default 1000)")
    parser.add_argument("--retries", type=int,
                        help="extra attempts for a run during which other processes were busy (default 1)")
    parser.add_argument("--quiet-threshold", type=float,
                        help="busy cores of other processes tolerated before and during a run (default 0.3)")
    parser.add_argument("--quiet-timeout", type=float, help="longest wait for a quiet machine (default 10 s)")
    parser.add_argument("--no-quiet-wait", action="store_true",
                        help="do not wait for a quiet machine, and do not repeat disturbed runs")
    parser.add_argument("--ours-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `python -m broker` (repeatable), e.g. --ours-arg=--memory")
    parser.add_argument("--doc", type=Path, help=f"document to update (default {DEFAULT_DOC.relative_to(REPO_ROOT)}; "
                        "not written in --quick mode unless given)")
    parser.add_argument("--no-doc", action="store_true", help="do not write the document")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this JSON file")
    parser.add_argument("--keep-workdir", action="store_true", help="keep broker logs and configs after the run")
    return parser.parse_args(argv)


def build_params(args: argparse.Namespace) -> Params:
    preset = "quick" if args.quick else "long" if args.long else "default"
    params = replace(Params(), **PRESETS[preset])
    overrides = {
        name: getattr(args, name)
        for name in ("rounds", "duration", "warmup", "connections", "publishers", "fanout_subscribers", "payload",
                     "window", "transit", "slow_rate", "devices", "latency_rate", "retries", "quiet_threshold", "quiet_timeout",
                     "idle_connections", "subscriptions", "sessions", "queued", "retained")
        if getattr(args, name) is not None
    }
    params = replace(params, **overrides)
    if params.rounds < 1 or params.duration <= 0 or params.payload < 16:
        raise SystemExit("need --rounds >= 1, --duration > 0 and --payload >= 16")
    return params


def _split(text: str, allowed: list[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return items


def loadgen_description() -> str:
    try:
        version = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    except OSError:
        version = "?"
    return f"`bench/loadgen.c` (C, one thread, epoll), gcc {version} {' '.join(loadgen.CFLAGS)}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    params = build_params(args)
    known = all_scenarios(params)
    broker_keys = _split(args.brokers, list(BROKER_KEYS), "broker")
    wanted = args.scenarios or ",".join(k for k, s in known.items() if args.scale or s.kind != "scale")
    chosen = [known[k] for k in _split(wanted, list(known), "scenario")]
    quiet_wait = not (args.no_quiet_wait or args.quick)
    if not quiet_wait:
        params = replace(params, retries=0)
    write_doc = not args.no_doc and (args.doc is not None or not args.quick)
    doc_path = args.doc or DEFAULT_DOC
    command = "python -m bench" + (" " + shlex.join(argv) if argv else "")

    workdir = Path(tempfile.mkdtemp(prefix="edgemq-bench-"))
    bench = Bench(params, broker_keys, chosen, workdir, args.ours_arg, wait_for_quiet=quiet_wait)
    print(f"{command}\nbrokers: {', '.join(broker_keys)}; scenarios: {', '.join(s.key for s in chosen)}; "
          f"{params.rounds} round(s); logs in {workdir}", flush=True)
    started = time.monotonic()
    machine = machine_info()
    try:
        loadgen.build()
        info = bench.broker_info()
        results = bench.run()
    except (BrokerError, loadgen.LoadgenError) as exc:
        print(f"bench failed: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started

    remarks = list(bench.remarks)
    if "ours" in info:
        now = bench.broker_info()["ours"]["version"]
        if now != info["ours"]["version"]:
            # The long-running broker kept the code it started with; fresh ones (memory) did not.
            remarks.append(f"ours: the checkout changed during the run (at the end: {now})")
    summary = Summary(results, chosen, broker_keys)
    section = generated_section(summary, params, command, machine, info, loadgen_description(), elapsed, remarks)
    print("\n" + section)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"command": command, "machine": machine, "brokers": info, "params": params.__dict__,
             "elapsed_s": elapsed, "remarks": remarks, "scenarios": summary.to_json()},
            indent=1, ensure_ascii=False))
    if write_doc:
        update_doc(doc_path, section)
        print(f"wrote {doc_path}")
    failed = any(not r.ok for r in results)
    if args.keep_workdir or failed:
        print(f"broker logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
