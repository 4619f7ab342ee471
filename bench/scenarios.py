"""The scenarios of issue 4 and the figures each one yields.

A scenario is a shape of load (who publishes, who subscribes, at which QoS)
turned into load-generator options; ``figures`` turns the generator's raw
counts into the numbers the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["throughput", "latency", "memory", "scale"]


@dataclass(frozen=True)
class Params:
    """Everything the command line can change about the load."""

    rounds: int = 3
    duration: float = 3.0  # seconds of measurement window per run
    warmup: float = 0.5  # seconds of load before the window opens
    publishers: int = 4  # fan-in publishers
    fanout_subscribers: int = 50
    payload: int = 64  # bytes of PUBLISH payload
    window: int = 20  # QoS 1/2: unacknowledged PUBLISHes per publisher
    transit: int = 1000  # messages published but not yet received, per subscriber
    latency_rate: float = 1000.0  # messages per second in the latency scenarios
    connections: int = 5000  # idle connections in the memory scenario
    slow_rate: float = 1000.0  # msg/s the slow subscriber reads in the slow + fast scenario
    devices: int = 10_000  # publishers of the devices scenario, one QoS 1 message every 10 s each
    # The scale scenarios of issue 13 (bench/scale.py; run with --scale or by name)
    idle_connections: int = 50_000
    subscriptions: int = 100_000
    sessions: int = 10_000
    queued: int = 10  # QoS 1 messages queued per persistent session
    retained: int = 100_000
    drain_timeout: float = 30.0
    drain_idle: float = 3.0
    quiet_threshold: float = 0.3  # busy cores (of other processes) tolerated
    quiet_timeout: float = 10.0  # longest wait for a quiet machine before a run
    retries: int = 1  # extra attempts for a run disturbed by other processes


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: Kind
    qos: int = 0
    publishers: int = 1
    subscribers: int = 1
    exact_filter: bool = False
    persistent: bool = False
    rate: float = 0.0
    tls: bool = False  # MQTT over TLS (the brokers' TLS listener, certificates from broker.certs)
    ws: bool = False  # MQTT over WebSockets (the brokers' websockets listener, ws:// on WS_PATH)

    @property
    def listener(self) -> str:
        """Which of a broker's listeners the load goes to: "plain", "tls" or "ws"."""
        return "tls" if self.tls else "ws" if self.ws else "plain"
    # Publishers that do not wait for the subscribers (no cap on messages in transit): what a
    # broker does with more than its subscribers take (issue 13).
    free_running: bool = False
    # Subscriber 0 reads this many msg/s from publisher 0's topic only; the others read all.
    slow_rate: float = 0.0
    text: str = ""  # scale scenarios: the report's description (their load is not loadgen options)

    @property
    def default_limits(self) -> bool:
        """Free-running loads run against each broker's default queue limits (mosquitto: 1000)."""
        return self.free_running

    @property
    def unit(self) -> str:
        if self.kind == "throughput" and self.subscribers > 1 and not self.slow_rate:
            return "deliveries/s"
        return {"throughput": "msg/s", "latency": "µs", "memory": "KiB/conn", "scale": ""}[self.kind]

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "throughput"

    def loadgen_options(self, params: Params, tag: str, broker_pid: int) -> dict[str, Any]:
        assert self.kind != "memory"
        return {
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "qos": self.qos,
            "filter": "exact" if self.exact_filter else "wildcard",
            "payload": params.payload,
            "warmup": params.warmup,
            "duration": params.duration,
            "window": params.window,
            "transit": 0 if self.free_running else params.transit,
            "rate": self.rate,
            "persistent": int(self.persistent),
            "broker_pid": broker_pid,
            "tag": tag,
            "drain_timeout": params.drain_timeout,
            "drain_idle": params.drain_idle,
            **({"slow_rate": self.slow_rate} if self.slow_rate else {}),
        }

    def describe(self, params: Params) -> str:
        """One line for the report: what the load was."""
        if self.kind == "scale":
            return self.text
        over = " over TLS (ECDSA P-256 certificate, TLS 1.3)" if self.tls else ""
        if self.ws:
            over = (" over WebSockets (ws://127.0.0.1:PORT/mqtt, subprotocol `mqtt`; each MQTT packet in a "
                    "masked binary frame of its own, as browsers and paho send them)")
        if self.kind == "memory":
            return (f"{params.connections} MQTT 3.1.1 connections{over} (CONNECT, clean session, keep-alive 300 s) "
                    "held idle; broker VmRSS after minus before, divided by the connections")
        subs = f"{self.subscribers} subscriber{'s' if self.subscribers > 1 else ''}"
        filt = "on the exact topic" if self.exact_filter else "on a wildcard (`bench/TAG/#`)"
        session = ", persistent session (clean session 0)" if self.persistent else ""
        pubs = f"{self.publishers} publisher{'s' if self.publishers > 1 else ''}"
        pace = f" at {self.rate:g} msg/s in all" if self.rate else " as fast as the broker takes them"
        acks = ""
        if self.qos:
            acks = f"; each publisher keeps at most {params.window} PUBLISHes unacknowledged"
        free = ", free-running (publishers never wait for the subscribers)" if self.free_running else ""
        if self.slow_rate:
            return (f"QoS {self.qos}: {pubs} as fast as the broker takes them; subscriber 1 reads "
                    f"{self.slow_rate:g} msg/s of publisher 1's topic only, subscriber 2 reads everything at "
                    f"full speed{session}{acks}. Figure: messages/s of publisher 2, which feeds only the fast "
                    "subscriber (a broker that stalls every publisher for the slow one scores low)")
        return f"QoS {self.qos}{over}: {pubs}{pace}, {subs} {filt}{session}{acks}{free}"


def scenarios(params: Params) -> dict[str, Scenario]:
    """All scenarios, in report order."""
    p = params.publishers
    items = [
        Scenario("qos0", "QoS 0 fan-in", "throughput", qos=0, publishers=p),
        Scenario("qos1", "QoS 1 fan-in", "throughput", qos=1, publishers=p, persistent=True),
        Scenario("qos2", "QoS 2 fan-in", "throughput", qos=2, publishers=p, persistent=True),
        Scenario("fanout", "Fan-out", "throughput", qos=0, publishers=1,
                 subscribers=params.fanout_subscribers, exact_filter=True),
        Scenario("latency", "Latency QoS 0", "latency", qos=0, rate=params.latency_rate),
        Scenario("latency-qos1", "Latency QoS 1", "latency", qos=1, persistent=True, rate=params.latency_rate),
        Scenario("memory", "Memory per idle connection", "memory"),
        Scenario("tls-qos0", "TLS QoS 0 fan-in", "throughput", qos=0, publishers=p, tls=True),
        Scenario("tls-fanout", "TLS fan-out", "throughput", qos=0, publishers=1,
                 subscribers=params.fanout_subscribers, exact_filter=True, tls=True),
        Scenario("tls-memory", "Memory per idle TLS connection", "memory", tls=True),
        Scenario("ws-qos0", "WebSockets QoS 0 fan-in", "throughput", qos=0, publishers=p, ws=True),
        # Issue 13: publishers that do not wait for the subscriber.
        Scenario("qos1-free", "QoS 1 fan-in, free-running, clean session", "throughput", qos=1, publishers=p,
                 free_running=True),
        Scenario("qos1-free-persistent", "QoS 1 fan-in, free-running, persistent", "throughput", qos=1,
                 publishers=p, persistent=True, free_running=True),
        Scenario("slow-fast", "Slow + fast subscriber", "throughput", qos=1, publishers=2, subscribers=2,
                 free_running=True, slow_rate=params.slow_rate),
        # Issue 13, goal 5: many devices, each reporting every 10 s, one backend subscriber on a wildcard.
        Scenario("devices", f"{params.devices:,} devices, QoS 1 every 10 s", "latency", qos=1,
                 publishers=params.devices, persistent=True, rate=params.devices / 10),
    ]
    return {s.key: s for s in items}


def figures(scenario: Scenario, raw: dict[str, Any]) -> dict[str, Any]:
    """The report's figures from one ``loadgen run`` result."""
    window = raw["window_s"] or 1.0
    broker_cpu = raw["broker_user_s"] + raw["broker_sys_s"] if raw["broker_user_s"] >= 0 else None
    loadgen_cpu = raw["loadgen_user_s"] + raw["loadgen_sys_s"]
    delivered = max(raw["received_window"], 1)
    out: dict[str, Any] = {
        "rate": raw["rate"],
        "lost": raw["lost"],
        "expected": raw["expected"],
        "duplicates": raw["duplicates"],
        "unacked": raw["unacked"],
        "presumed_dropped": raw["presumed_dropped"],
        "held_back": raw["missing_before_reconnect"],
        "protocol_errors": raw["protocol_errors"],
        "first_error": raw["first_error"],
        "loadgen_cores": loadgen_cpu / window,
        "loadgen_user_cores": raw["loadgen_user_s"] / window,
        "loadgen_us_per_msg": loadgen_cpu / delivered * 1e6,
        "broker_cores": None if broker_cpu is None else broker_cpu / window,
        "broker_us_per_msg": None if broker_cpu is None else broker_cpu / delivered * 1e6,
        "other_cores": None if broker_cpu is None else max(0.0, raw["machine_busy_cpu_s"] - broker_cpu - loadgen_cpu) / window,
    }
    if scenario.slow_rate and raw.get("per_publisher_window"):
        held, free = raw["per_publisher_window"][:2]
        out.update(held_publisher_rate=held / window, value=free / window)
        return out
    if scenario.kind == "latency":
        lat = raw["latency_us"]
        out.update(p50=lat["p50"], p90=lat["p90"], p99=lat["p99"], p999=lat["p999"], max=lat["max"],
                   samples=lat["count"])
        out["value"] = lat["p99"] if lat["count"] else None
    else:
        out["value"] = raw["rate"]
    return out
