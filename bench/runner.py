"""Runs the rounds: every scenario against every broker, brokers alternating within a round.

Throughput and latency runs share one long-running process per broker; the
memory scenario starts a fresh one each time, so that the "before" figure is a
broker that has not grown its heap under earlier load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.brokers import (
    TLS_BROKERS, WS_BROKERS, WS_PATH, Broker, BrokerError, MosquittoBroker, TLSFiles, make_broker,
    raise_nofile_limit,
)
from bench import scale
from bench.machine import wait_quiet
from bench.scenarios import Params, Scenario, figures

MEMORY_WARMUP_CONNECTIONS = 50  # opened and closed first, so lazy imports and first-use caches are paid
MEMORY_SETTLE_S = 1.0  # after the connections are up, before reading VmRSS


@dataclass
class RunResult:
    broker: str
    scenario: str
    round: int
    ok: bool
    value: float | None = None
    error: str = ""
    attempts: int = 1
    quiet_wait_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(
        self,
        params: Params,
        broker_keys: list[str],
        scenario_list: list[Scenario],
        workdir: Path,
        ours_args: list[str],
        say: Callable[[str], None] = print,
        wait_for_quiet: bool = True,
    ) -> None:
        self.params = params
        self.broker_keys = broker_keys
        self.scenarios = scenario_list
        self.workdir = workdir
        self.ours_args = ours_args
        self.say = say
        self.wait_for_quiet = wait_for_quiet
        # Each process holds up to one descriptor per connection, plus its own few.
        needed = max(params.connections, params.devices)
        keys = {s.key for s in scenario_list}
        if "scale-idle" in keys:
            needed = max(needed, params.idle_connections)
        if "scale-sessions" in keys:
            needed = max(needed, params.sessions)
        self.nofile = raise_nofile_limit(max(needed + 1024, 4096))
        self.brokers: dict[str, Broker] = {}
        self.results: list[RunResult] = []
        self._tag_counter = 0
        # TLS scenarios: one CA and server certificate for every broker's TLS listener.
        self.tls = TLSFiles(workdir / "certs") if any(s.tls for s in scenario_list) else None
        self.remarks: list[str] = []  # for the report: e.g. why a broker was left out of a scenario
        if "amqtt" in broker_keys and any(s.kind == "scale" for s in scenario_list):
            self.remarks.append(scale.AMQTT_REMARK)
        self._ws: dict[str, bool] = {}

    def _with_ws(self, key: str) -> bool:
        """Whether broker ``key`` gets a WebSockets listener (asked once: some mosquitto builds have none)."""
        if key not in self._ws:
            wanted = [s for s in self.scenarios if s.ws]
            self._ws[key] = bool(wanted) and key in WS_BROKERS
            if self._ws[key] and key == "mosquitto":
                refusal = MosquittoBroker.websockets_refusal(self.workdir / "mosquitto-ws-probe", self.nofile)
                if refusal:
                    self._ws[key] = False
                    titles = ", ".join(s.title for s in wanted)
                    self.remarks.append(
                        f"mosquitto, {titles}: not measured, ours only: this mosquitto does not start with a "
                        f"`listener PORT 127.0.0.1` + `protocol websockets` listener (its log: \"{refusal}\")")
        return self._ws[key]

    def _make(self, key: str) -> Broker:
        return make_broker(key, self.workdir / key, self.nofile, self.ours_args, self.tls, self._with_ws(key))

    def _measures(self, scenario: Scenario, key: str) -> bool:
        """Whether broker ``key`` runs ``scenario`` (amqtt has no TLS nor WebSockets listener here)."""
        if scenario.kind == "scale":
            return key in scale.SCALE_BROKERS
        if scenario.tls:
            return key in TLS_BROKERS
        if scenario.ws:
            return self._with_ws(key)
        return True

    def broker_info(self) -> dict[str, dict[str, Any]]:
        """Version and settings of each broker, for the report."""
        info = {}
        for key in self.broker_keys:
            broker = self._make(key)
            settings = broker.settings()
            if any(s.kind == "scale" for s in self.scenarios):
                settings += scale.SETTINGS.get(key, [])
            info[key] = {"version": broker.version(), "settings": settings}
        return info

    def run(self) -> list[RunResult]:
        loadgen.build()
        if self.params.connections + 64 > self.nofile:
            self.say(f"warning: open-file limit {self.nofile} is too low for {self.params.connections} connections")
        try:
            if any(s.kind not in ("memory", "scale") for s in self.scenarios):
                for key in self.broker_keys:
                    self.brokers[key] = self._make(key)
                    self.brokers[key].start()
            for round_no in range(1, self.params.rounds + 1):
                for scenario in self.scenarios:
                    for key in self.broker_keys:
                        if not self._measures(scenario, key):
                            continue
                        result = self._run_one(round_no, scenario, key)
                        self.results.append(result)
                        self.say(_progress_line(result, scenario))
        finally:
            for broker in self.brokers.values():
                broker.stop()
        return self.results

    # --- one measurement

    def _next_tag(self, key: str, scenario: Scenario) -> str:
        self._tag_counter += 1
        return f"{key[:2]}{scenario.key[:4]}{self._tag_counter}"

    def _quiet(self) -> float:
        if not self.wait_for_quiet:
            return 0.0
        busy, waited = wait_quiet(self.params.quiet_threshold, self.params.quiet_timeout)
        if busy > self.params.quiet_threshold:
            self.say(f"  (machine still busy: {busy:.2f} cores after waiting {waited:.0f}s; measuring anyway)")
        return waited

    def _broker_for(self, key: str, scenario: Scenario) -> Broker:
        """The running broker for a scenario; one with default queue limits is started on first use."""
        if not scenario.default_limits or key != "mosquitto":
            return self.brokers[key]
        variant = f"{key}-default-limits"
        if variant not in self.brokers:
            broker = make_broker(key, self.workdir / variant, self.nofile, self.ours_args, None, default_limits=True)
            self.brokers[variant] = broker
            broker.start()
        return self.brokers[variant]

    def _run_one(self, round_no: int, scenario: Scenario, key: str) -> RunResult:
        if scenario.kind == "memory":
            return self._run_memory(round_no, scenario, key)
        if scenario.kind == "scale":
            return self._run_scale(round_no, scenario, key)
        broker = self._broker_for(key, scenario)
        result = RunResult(key, scenario.key, round_no, ok=False)
        for attempt in range(1, self.params.retries + 2):
            result.attempts = attempt
            try:
                if not broker.running:
                    self.say(f"  ({key} is not running: restarting it)\n{broker.log_tail(10)}")
                    broker.stop()
                    broker.start()
                result.quiet_wait_s += self._quiet()
                p = self.params
                options = scenario.loadgen_options(p, self._next_tag(key, scenario), broker.pid)
                if scenario.tls:
                    assert self.tls is not None
                    options["tls"] = str(self.tls.ca)
                if scenario.ws:
                    options["ws"] = WS_PATH
                raw = loadgen.run(
                    broker.port_for(scenario.listener),
                    options,
                    timeout=p.warmup + p.duration + p.drain_timeout + 2 * p.drain_idle + 90,
                    nofile=self.nofile,
                )
            except (loadgen.LoadgenError, BrokerError) as exc:
                result.ok, result.error, result.value = False, _one_line(str(exc)), None
                if broker.running:
                    break  # the broker is fine, so the failure is the broker's answer to this load
                result.error += f" ({key} exited with code {broker.proc.returncode if broker.proc else '?'})"
                continue  # restarted at the top of the next attempt
            figs = figures(scenario, raw)
            result.figures = figs
            result.value = figs["value"]
            result.ok = result.value is not None
            result.error = "" if result.ok else "no figure (nothing delivered in the window)"
            disturbed = self.wait_for_quiet and (figs["other_cores"] or 0) > self.params.quiet_threshold
            if result.ok and not disturbed:
                break
            if disturbed and attempt <= self.params.retries:
                self.say(f"  (other processes used {figs['other_cores']:.2f} cores during the run: measuring again)")
        return result

    def _run_memory(self, round_no: int, scenario: Scenario, key: str) -> RunResult:
        result = RunResult(key, scenario.key, round_no, ok=False)
        broker = make_broker(key, self.workdir / f"{key}-memory", self.nofile, self.ours_args,
                             self.tls if scenario.tls else None)
        idle: loadgen.IdleConnections | None = None
        ca = str(self.tls.ca) if scenario.tls and self.tls is not None else None
        try:
            broker.start()
            port = broker.tls_port if scenario.tls else broker.port
            tag = self._next_tag(key, scenario)
            warm = loadgen.IdleConnections(port, MEMORY_WARMUP_CONNECTIONS, tag + "w", self.nofile, tls=ca)
            warm.open(timeout=60)
            warm.close()
            result.quiet_wait_s = self._quiet()
            time.sleep(0.5)
            before = broker.rss_kib()
            idle = loadgen.IdleConnections(port, self.params.connections, tag, self.nofile, tls=ca)
            established, failed, seconds = idle.open(timeout=300)
            time.sleep(MEMORY_SETTLE_S)
            if not broker.running:
                raise BrokerError(f"{key} exited while holding idle connections\n{broker.log_tail(10)}")
            after = broker.rss_kib()
            final = idle.close()
            idle = None
            if established == 0:
                raise loadgen.LoadgenError(f"no connection established ({final.get('first_error', '')})")
            per_conn = (after - before) / established
            result.value = per_conn
            result.ok = failed == 0 and final["dropped"] == 0
            result.figures = {
                "value": per_conn,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "established": established,
                "failed": failed,
                "dropped": final["dropped"],
                "connect_s": seconds,
                "connect_rate": established / seconds if seconds > 0 else None,
                "first_error": final.get("first_error", ""),
            }
            if not result.ok:
                result.error = (f"{failed} connections failed, {final['dropped']} dropped by the broker"
                                f" ({final.get('first_error', '')})")
        except (loadgen.LoadgenError, BrokerError, OSError) as exc:
            result.ok, result.error = False, _one_line(str(exc))
        finally:
            if idle is not None:
                idle.kill()
            broker.stop()
        return result


    def _run_scale(self, round_no: int, scenario: Scenario, key: str) -> RunResult:
        """A scale scenario (bench/scale.py) against a fresh broker."""
        result = RunResult(key, scenario.key, round_no, ok=False)
        context = scale.Context(
            params=self.params, tag=self._next_tag(key, scenario), nofile=self.nofile, say=self.say,
            make=lambda: make_broker(key, self.workdir / f"{key}-{scenario.key}", self.nofile, self.ours_args),
        )
        try:
            result.quiet_wait_s = self._quiet()
            figs = scale.RUNNERS[scenario.key](context)
        except (loadgen.LoadgenError, BrokerError, OSError, ConnectionError, TimeoutError) as exc:
            result.error = _one_line(f"{type(exc).__name__}: {exc}")
            return result
        result.error = figs.pop("error", "")
        result.figures = figs
        result.value = figs.get("value")
        result.ok = result.value is not None and not result.error
        return result


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "error"


def _progress_line(result: RunResult, scenario: Scenario) -> str:
    head = f"[round {result.round}] {scenario.key:<13} {result.broker:<10}"
    if not result.ok and result.value is None:
        return f"{head} FAILED: {result.error}"
    f = result.figures
    if scenario.kind == "scale":
        text = head + "  " + ", ".join(
            f"{label} {scale.format_figure(f.get(name), unit)} {unit}".rstrip() for name, label, unit in scale.ROWS[scenario.key])
        if "expected" in f:
            text += f"  lost {f.get('lost', 0)} of {f['expected']}"
    elif scenario.kind == "memory":
        text = (f"{head} {f['value']:8.2f} KiB/conn  (RSS {f['rss_before_kib'] / 1024:.1f} -> "
                f"{f['rss_after_kib'] / 1024:.1f} MiB, {f['established']} conns in {f['connect_s']:.1f}s)")
    else:
        if scenario.kind == "latency":
            main = f"p50 {f['p50']:8.1f} µs  p99 {f['p99']:8.1f} µs"
        else:
            main = f"{f['rate']:12,.0f} {scenario.unit}"
        cpu = ""
        if f["broker_cores"] is not None:
            cpu = (f"  cpu: broker {f['broker_cores']:.0%} loadgen {f['loadgen_cores']:.0%}"
                   f" other {f['other_cores']:.0%}")
        text = f"{head} {main}  lost {f['lost']}{cpu}"
        if f["held_back"]:
            text += f"  ({f['held_back']} held back until reconnect)"
    if result.error:
        text += f"  [{result.error}]"
    if result.attempts > 1:
        text += f"  (attempt {result.attempts})"
    return text
