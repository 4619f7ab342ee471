"""Smoke test of the benchmark harness: ``python -m bench --quick`` against ours and mosquitto.

Not a timing test: it proves that one command builds the load generator, starts
both brokers, drives every kind of scenario, and yields figures with no message
lost, so the full benchmark can be trusted to run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench import loadgen  # noqa: E402
from bench.brokers import MosquittoBroker  # noqa: E402

SCENARIOS = ["qos0", "qos1", "qos2", "fanout", "latency", "memory", "tls-qos0", "tls-memory", "ws-qos0"]
BROKERS = ["ours", "mosquitto"]
CONNECTIONS = 300


def test_quick_bench_yields_figures_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "bench", "--quick",
        "--brokers", ",".join(BROKERS),
        "--scenarios", ",".join(SCENARIOS),
        "--duration", "0.5", "--warmup", "0.2",
        "--fanout-subscribers", "10",
        "--connections", str(CONNECTIONS),
        "--json", str(out),
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench --quick")
    assert "wrote" not in proc.stdout  # quick mode leaves docs/benchmarks.md alone

    for scenario in SCENARIOS:
        for broker in BROKERS:
            if scenario == "ws-qos0" and broker == "mosquitto" and broker not in report["scenarios"][scenario]:
                # A mosquitto built without WebSockets is left out, and the report must say why.
                assert any(r.startswith("mosquitto, WebSockets") for r in report["remarks"]), report["remarks"]
                continue
            cell = report["scenarios"][scenario][broker]
            where = f"{scenario}/{broker}: {cell['runs']}"
            assert len(cell["runs"]) == 1, where
            run = cell["runs"][0]
            assert run["error"] == "", where
            assert cell["median"] is not None and math.isfinite(cell["median"]), where
            if scenario in ("memory", "tls-memory"):
                assert run["established"] == CONNECTIONS and run["failed"] == 0, where
                assert run["dropped"] == 0, where
                continue
            assert run["expected"] > 0, where
            assert run["lost"] == 0, where
            assert run["protocol_errors"] == 0, where
            assert run["unacked"] == 0, where
            if scenario == "qos2":
                assert run["duplicates"] == 0, where
            # CPU times are read in clock ticks, too coarse for the light latency load of a short run.
            assert run["broker_cores"] is not None and run["loadgen_cores"] > 0, where
            if scenario == "latency":
                assert run["samples"] > 0 and 0 < run["p50"] <= run["p99"], where
            else:
                assert run["rate"] > 0 and run["broker_cores"] > 0, where

    # The console report carries the same figures as the document would.
    assert "| QoS 0 fan-in (msg/s) |" in proc.stdout
    assert "ours ÷ mosquitto" in proc.stdout


def test_loss_check_counts_what_a_broker_drops(tmp_path: Path) -> None:
    """The zero-loss figures above mean something only if a real loss is seen: mosquitto with
    a queue of 5 messages per client drops QoS 1 messages that the load generator then misses."""
    class TinyQueueMosquitto(MosquittoBroker):
        def config_lines(self) -> list[str]:
            lines = [x for x in super().config_lines() if not x.startswith("max_queued_messages")]
            return [*lines, "max_queued_messages 5"]

    loadgen.build()
    broker = TinyQueueMosquitto(tmp_path, nofile=4096)
    broker.start()
    try:
        raw = loadgen.run(
            broker.port,
            {"qos": 1, "publishers": 4, "subscribers": 1, "persistent": 1, "transit": 5000,
             "warmup": 0.2, "duration": 0.5, "drain_idle": 1, "broker_pid": broker.pid, "tag": "loss"},
            timeout=60,
            nofile=4096,
        )
    finally:
        broker.stop()
    assert raw["unacked"] == 0  # every message was acknowledged to its publisher...
    assert raw["lost"] > 0  # ...and yet some never reached the subscriber
    assert raw["distinct"] + raw["lost"] == raw["expected"]
    assert "Outgoing messages are being dropped" in broker.log_path.read_text()


def test_free_running_scenarios_run_and_lose_nothing(tmp_path: Path) -> None:
    """Issue 13's scenarios: publishers that never wait, and a slow subscriber next to a fast one.

    Ours holds back only the publisher of the slow subscriber, so nothing is lost, and the
    figure of the slow + fast scenario is the free publisher's rate.
    """
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "bench", "--quick", "--brokers", "ours",
        "--scenarios", "qos1-free,slow-fast", "--duration", "1.0", "--warmup", "0.2",
        "--slow-rate", "500", "--json", str(out),
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    for scenario in ("qos1-free", "slow-fast"):
        run = report["scenarios"][scenario]["ours"]["runs"][0]
        assert run["error"] == "" and run["lost"] == 0 and run["unacked"] == 0, run
        assert run["value"] > 0, run
    fair = report["scenarios"]["slow-fast"]["ours"]["runs"][0]
    assert fair["value"] > fair["held_publisher_rate"], fair


SCALE_SCENARIOS = ["scale-idle", "scale-subs", "scale-sessions", "scale-retained"]


def test_scale_scenarios_at_tiny_size_yield_figures_and_lose_nothing(tmp_path: Path) -> None:
    """Issue 13's scale scenarios, each at a tiny size (--quick), against ours and mosquitto: every
    figure of the report is there, every connection held, every queued and retained message delivered."""
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "bench", "--quick", "--brokers", ",".join(BROKERS),
        "--scenarios", ",".join(SCALE_SCENARIOS), "--duration", "0.5", "--warmup", "0.2",
        "--idle-connections", "400", "--subscriptions", "1000", "--sessions", "100", "--queued", "3",
        "--retained", "1000", "--json", str(out),
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    from bench.scale import ROWS

    for scenario in SCALE_SCENARIOS:
        for broker in BROKERS:
            cell = report["scenarios"][scenario][broker]
            where = f"{scenario}/{broker}: {cell['runs']}"
            run = cell["runs"][0]
            assert run["error"] == "", where
            for figure, _, _ in ROWS[scenario]:
                assert run[figure] is not None and math.isfinite(run[figure]) and run[figure] >= 0, (figure, where)
            if scenario == "scale-idle":
                assert run["established"] == 400 and run["failed"] == 0 and run["dropped"] == 0, where
                continue
            assert run["expected"] > 0 and run["lost"] == 0, where
            if scenario == "scale-subs":
                assert run["refused"] == 0 and run["protocol_errors"] == 0, where
            if scenario == "scale-sessions":
                assert run["expected"] == 300 and run["acked"] == 300 and run["sessions_present"] == 100, where
            if scenario == "scale-retained":
                assert run["expected"] == 1000 and run["acked"] == 1000 and run["not_retained"] == 0, where
                assert run["rss_peak_kib"] >= run["rss_before_kib"] > 0, where
    assert "| 100 persistent sessions, restart: restart until CONNACK (s) |" in proc.stdout
