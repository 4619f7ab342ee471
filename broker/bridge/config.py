"""``[[bridge]]`` and ``[[bridge.topic]]`` tables: checked here, with the file and line of every error.

Option names follow mosquitto's bridge options (``address``, ``cleansession`` became
``clean_start``, ``bridge_cafile`` became ``cafile``, ``topic pattern direction qos
local_prefix remote_prefix`` became a ``[[bridge.topic]]`` table), so that a mosquitto
bridge moves over line by line; the README has the mapping.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.protocol.topics import is_valid_topic_filter

NEVER_EXPIRES = 0xFFFF_FFFF


class BridgeConfigError(ValueError):
    """A bad ``[[bridge]]`` table; the message names the file and line."""


# fail(message, key=None, topic_index=None): the error, located at the key's line
Fail = Callable[..., BridgeConfigError]


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """One ``[[bridge.topic]]``: what crosses the bridge and how its topic is renamed.

    mosquitto's rules: the local filter is ``local_prefix + pattern``, the remote one
    ``remote_prefix + pattern``; a topic crossing the bridge trades one prefix for the
    other. An empty pattern makes the two prefixes full topic names (one topic renamed).
    """

    pattern: str
    direction: str = "out"  # "out" | "in" | "both"
    qos: int = 1
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def local_filter(self) -> str:
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        return self.remote_prefix + self.pattern

    @property
    def outgoing(self) -> bool:
        return self.direction in ("out", "both")

    @property
    def incoming(self) -> bool:
        return self.direction in ("in", "both")

    def to_remote(self, local_topic: str) -> str:
        return self.remote_prefix + local_topic[len(self.local_prefix):]

    def to_local(self, remote_topic: str) -> str:
        return self.local_prefix + remote_topic[len(self.remote_prefix):]


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    name: str
    addresses: tuple[tuple[str, int], ...]  # tried in order: the first is the primary
    topics: tuple[TopicConfig, ...]
    protocol_version: int = 4  # 4 = MQTT 3.1.1, 5 = MQTT 5
    client_id: str = ""  # remote client id; default "<hostname>.<name>" as mosquitto
    local_clientid: str = ""  # the local session holding the backlog; default "$bridge/<name>"
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    clean_start: bool = False
    session_expiry: int = NEVER_EXPIRES  # v5: what the bridge asks the upstream to keep its session
    try_private: bool = True  # v3.1.1: announce a bridge (protocol level 0x84) so it is not echoed
    tls: bool = False  # TLS with the system's CA certificates; implied by cafile/capath/certfile
    cafile: str | None = None
    capath: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    alpn: tuple[str, ...] = ()
    insecure: bool = False  # skip the host name check of the server certificate
    max_inflight: int = 20  # 3.1.1 upstreams (they cannot say their Receive Maximum)
    max_rate: int = 0  # messages per second sent upstream; 0 = as fast as acknowledgements allow
    backlog_max_bytes: int = 1 << 30  # payload bytes kept while the upstream is away
    backlog_full_policy: str = "drop_oldest"  # "drop_oldest" | "drop_new"
    restart_timeout: int = 60  # the longest wait between reconnection attempts, in seconds
    connect_timeout: int = 10

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.cafile or self.capath or self.certfile)


# ---- lines of keys inside arrays of tables ------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*=")


def _bridge_lines(text: str) -> list[tuple[int, dict[str, int], list[tuple[int, dict[str, int]]]]]:
    """For each ``[[bridge]]`` in order: its header line, its key lines, and its topics' lines."""
    bridges: list[tuple[int, dict[str, int], list[tuple[int, dict[str, int]]]]] = []
    current: dict[str, int] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = header.group(2).replace(" ", "")
            current = None
            if header.group(1) == "[[" and name == "bridge":
                bridges.append((number, {}, []))
                current = bridges[-1][1]
            elif header.group(1) == "[[" and name == "bridge.topic" and bridges:
                bridges[-1][2].append((number, {}))
                current = bridges[-1][2][-1][1]
            continue
        key = _KEY.match(line)
        if key and current is not None:
            current.setdefault(key.group(1), number)
    return bridges


# ---- the keys ------------------------------------------------------------------------------

_BRIDGE_KEYS = {
    "name", "address", "protocol_version", "client_id", "local_clientid", "username", "password",
    "keepalive", "clean_start", "session_expiry", "try_private", "tls", "cafile", "capath",
    "certfile", "keyfile", "alpn", "insecure", "max_inflight", "max_rate", "backlog_max_bytes",
    "backlog_full_policy", "restart_timeout", "connect_timeout", "topic",
}
_TOPIC_KEYS = {"pattern", "direction", "qos", "local_prefix", "remote_prefix"}
_PROTOCOLS = {"3.1.1": 4, "mqttv311": 4, "5": 5, "5.0": 5, "mqttv5": 5, "mqttv50": 5}
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def parse_address(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (port 1883; mosquitto's default)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"address {value!r} has no host")
    if not port_text:
        return host, 1883
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {value!r} must end with a port between 1 and 65535")
    return host, int(port_text)


def _duration(value: object) -> int:
    from broker.config_file import parse_duration  # the one duration syntax of the config file

    return parse_duration(value)


def _size(value: object) -> int:
    from broker.config_file import parse_size

    return parse_size(value)


def parse_bridges(tables: object, text: str, path: str) -> list[BridgeConfig]:
    """The bridges of a parsed TOML document (``data["bridge"]``)."""
    lines = _bridge_lines(text)
    if not isinstance(tables, list):
        line = next((n for n, t in enumerate(text.splitlines(), 1) if t.strip().startswith("[bridge")), 1)
        raise BridgeConfigError(f"{path}:{line}: bridges are written [[bridge]] (an array of tables), not [bridge]")
    bridges: list[BridgeConfig] = []
    names: set[str] = set()
    for index, table in enumerate(tables):
        header, key_lines, topic_lines = lines[index] if index < len(lines) else (1, {}, [])

        def fail(message: str, key: str | None = None, topic: int | None = None) -> BridgeConfigError:
            line = header
            if topic is not None and topic < len(topic_lines):
                line = topic_lines[topic][1].get(key or "", topic_lines[topic][0])
            elif key is not None:
                line = key_lines.get(key, header)
            return BridgeConfigError(f"{path}:{line}: [[bridge]] {message}")

        bridge = _parse_bridge(table, fail)
        if bridge.name in names:
            raise fail(f"name {bridge.name!r} is used by two bridges", "name")
        names.add(bridge.name)
        bridges.append(bridge)
    return bridges


def _parse_bridge(table: dict[str, Any], fail: Fail) -> BridgeConfig:
    for key in table:
        if key not in _BRIDGE_KEYS:
            raise fail(f"unknown key {key!r}", key)

    def get(key: str, kind: type, default: object = None) -> object:
        if key not in table:
            return default
        value = table[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise fail(f"{key} must be an integer, got {value!r}", key)
        if kind is not int and not isinstance(value, kind):
            raise fail(f"{key} must be a {kind.__name__}, got {value!r}", key)
        return value

    name = get("name", str)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("needs a name of letters, digits, '.', '-', '_' (it appears in $SYS topics)", "name")
    raw_address = table.get("address")
    if isinstance(raw_address, str):
        raw_address = [raw_address]
    if not isinstance(raw_address, list) or not raw_address or not all(isinstance(a, str) for a in raw_address):
        raise fail('address must be "host:port" or a list of them (failover in order)', "address")
    try:
        addresses = tuple(parse_address(a) for a in raw_address)
    except ValueError as exc:
        raise fail(str(exc), "address") from None
    version_text = str(table.get("protocol_version", "3.1.1"))
    if version_text.lower() not in _PROTOCOLS:
        raise fail(f'protocol_version must be "3.1.1" or "5", got {version_text!r}', "protocol_version")
    policy = get("backlog_full_policy", str, "drop_oldest")
    if policy not in ("drop_oldest", "drop_new"):
        raise fail(f'backlog_full_policy must be "drop_oldest" or "drop_new", got {policy!r}', "backlog_full_policy")
    alpn = table.get("alpn", [])
    if isinstance(alpn, str):
        alpn = [alpn]
    if not isinstance(alpn, list) or not all(isinstance(a, str) and a for a in alpn):
        raise fail("alpn must be a protocol name or a list of them", "alpn")

    def number(key: str, default: int, low: int, high: int, convert: Callable[[object], int] | None = None) -> int:
        if key not in table:
            return default
        try:
            value = convert(table[key]) if convert else get(key, int)
        except ValueError as exc:
            raise fail(f"{key} {exc}", key) from None
        assert isinstance(value, int)
        if not low <= value <= high:
            raise fail(f"{key} must be between {low} and {high}, got {value}", key)
        return value

    for key in ("clean_start", "try_private", "tls", "insecure"):
        get(key, bool)
    for key in ("client_id", "local_clientid", "username", "password", "cafile", "capath", "certfile", "keyfile"):
        get(key, str)
    if table.get("keyfile") and not table.get("certfile"):
        raise fail("keyfile needs certfile as well", "keyfile")
    if table.get("certfile") and not table.get("keyfile"):
        raise fail("certfile needs keyfile as well", "certfile")
    raw_topics = table.get("topic", [])
    if not isinstance(raw_topics, list) or not raw_topics:
        raise fail("needs at least one [[bridge.topic]] table", "topic")
    topics = tuple(_parse_topic(t, i, fail) for i, t in enumerate(raw_topics))
    return BridgeConfig(
        name=name,
        addresses=addresses,
        topics=topics,
        protocol_version=_PROTOCOLS[version_text.lower()],
        client_id=str(table.get("client_id") or f"{socket.gethostname()}.{name}"),
        local_clientid=str(table.get("local_clientid") or f"$bridge/{name}"),
        username=table.get("username"),
        password=table.get("password"),
        keepalive=number("keepalive", 60, 0, 65535, _duration),
        clean_start=bool(table.get("clean_start", False)),
        session_expiry=number("session_expiry", NEVER_EXPIRES, 0, NEVER_EXPIRES, _duration),
        try_private=bool(table.get("try_private", True)),
        tls=bool(table.get("tls", False)),
        cafile=table.get("cafile"),
        capath=table.get("capath"),
        certfile=table.get("certfile"),
        keyfile=table.get("keyfile"),
        alpn=tuple(alpn),
        insecure=bool(table.get("insecure", False)),
        max_inflight=number("max_inflight", 20, 1, 65535),
        max_rate=number("max_rate", 0, 0, 10_000_000),
        backlog_max_bytes=number("backlog_max_bytes", 1 << 30, 1, 2**53, _size),
        backlog_full_policy=str(policy),
        restart_timeout=number("restart_timeout", 60, 1, 86400, _duration),
        connect_timeout=number("connect_timeout", 10, 1, 600, _duration),
    )


def _parse_topic(table: object, index: int, fail: Fail) -> TopicConfig:
    if not isinstance(table, dict):
        raise fail("topic entries are written [[bridge.topic]]", None, index)
    for key in table:
        if key not in _TOPIC_KEYS:
            raise fail(f"[[bridge.topic]] unknown key {key!r}", key, index)
    strings = {}
    for key in ("pattern", "direction", "local_prefix", "remote_prefix"):
        value = table.get(key, "out" if key == "direction" else "")
        if not isinstance(value, str):
            raise fail(f"[[bridge.topic]] {key} must be a string, got {value!r}", key, index)
        strings[key] = value
    if "pattern" not in table:
        raise fail('[[bridge.topic]] needs a pattern (a topic filter such as "sensors/#")', "pattern", index)
    if strings["direction"] not in ("out", "in", "both"):
        raise fail(f'[[bridge.topic]] direction must be "out", "in" or "both", got {strings["direction"]!r}',
                   "direction", index)
    qos = table.get("qos", 1)
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise fail(f"[[bridge.topic]] qos must be 0, 1 or 2, got {qos!r}", "qos", index)
    pattern = strings["pattern"]
    for key in ("local_prefix", "remote_prefix"):
        if "+" in strings[key] or "#" in strings[key]:
            raise fail(f"[[bridge.topic]] {key} must not contain wildcards", key, index)
    if not pattern and not (strings["local_prefix"] and strings["remote_prefix"]):
        raise fail('[[bridge.topic]] an empty pattern needs local_prefix and remote_prefix (full topic names)',
                   "pattern", index)
    topic = TopicConfig(pattern, strings["direction"], qos, strings["local_prefix"], strings["remote_prefix"])
    for what, value in (("local", topic.local_filter), ("remote", topic.remote_filter)):
        if not is_valid_topic_filter(value):
            raise fail(f"[[bridge.topic]] the {what} topic filter {value!r} is not valid", "pattern", index)
    return topic
