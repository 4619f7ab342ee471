"""Load the TOML configuration file into a ``Config``, or stop with a message that names the line.

A broker that starts with a typo in its configuration silently runs with a
default the operator did not want, so everything unknown or out of range is an
error: ``ConfigError("broker.toml:12: [limits] max_inflight_messages must be
between 1 and 65535, got 0")``. tomllib reports where syntax errors are but not
where a key is, so the line of a key is found by scanning the file text.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace

from broker.config import AUTO_MEMORY, LISTENER_PROTOCOLS, MAX_PACKET_SIZE_LIMIT, TLS_VERSIONS, Config, ListenerConfig

MAX_UINT32 = 0xFFFF_FFFF


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


# ---- value parsers -------------------------------------------------------------

_DURATION_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+)\s*([wdhms])", re.IGNORECASE)
_DURATION = re.compile(r"\s*(?:\d+\s*[wdhms]\s*)+", re.IGNORECASE)

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_duration(value: object) -> int:
    """Seconds from an integer or a string like ``"7d"``, ``"12h"``, ``"1h30m"``, ``"45s"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if _DURATION.fullmatch(text):
            return sum(int(n) * _DURATION_UNITS[unit.lower()] for n, unit in _DURATION_PART.findall(text))
    raise ValueError(
        f"must be a number of seconds or a duration like \"7d\", \"12h\", \"30m\", \"45s\", got {value!r}"
    )


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"256KB"`` or ``"1MB"`` (1 KB = 1024 bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"must be a number of bytes or a size like \"256KB\", \"1MB\", got {value!r}")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def parse_mode(value: object) -> int:
    """File permissions from a TOML octal integer (``0o660``) or a string of octal digits (``"0660"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value.strip()):
        number = int(value.strip().replace("o", ""), 8)
    else:
        raise ValueError(f"must be file permissions such as 0o660 or \"0660\", got {value!r}")
    if not 0 <= number <= 0o7777:
        raise ValueError(f"must be file permissions such as 0o660 or \"0660\", got {oct(number)}")
    return number


# ---- the schema: every key of every section -------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # "str" | "int" | "bool" | "duration" | "size" | "mode" | "strings" | "path" ("" allowed) | "auto_bool"
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    empty_ok: bool = False  # "" is a meaningful value (for example: feature off)

    def convert(self, value: object) -> object:
        """The Python value for a TOML value, or ValueError saying what is expected."""
        if self.kind == "auto_bool":  # true, false, or "auto" (None: the code decides)
            if isinstance(value, bool):
                return value
            if value == "auto":
                return None
            raise ValueError(f'must be true, false or "auto", got {_type_name(value)} ({value!r})')
        if self.kind == "path":
            if not isinstance(value, str):
                raise ValueError(f"must be a string (a file path, or \"\" for none), got {_type_name(value)} ({value!r})")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {_type_name(value)} ({value!r})")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {_type_name(value)} ({value!r})")
            if self.choices and value not in self.choices:
                options = ", ".join(f'"{c}"' for c in self.choices)
                raise ValueError(f"must be one of {options}, got {value!r}")
            if not value and not self.empty_ok:
                raise ValueError("must not be empty")
            return value
        if self.kind == "mode":
            return parse_mode(value)
        if self.kind == "strings":
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"must be an array of non-empty strings, got {value!r}")
            return tuple(value)
        number: int
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be an integer, got {_type_name(value)} ({value!r})")
            number = value
        elif self.kind == "duration":
            number = parse_duration(value)
        elif self.choices and value == "auto":  # a size whose default is computed (max_memory)
            return AUTO_MEMORY
        else:
            number = parse_size(value)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ValueError(f"must be between {self.low} and {self.high}, got {number}")
        return number


SCHEMA: dict[str, dict[str, _Key]] = {
    "listener": {
        "bind": _Key("str"),
        "port": _Key("int", 0, 65535),
    },
    "storage": {
        "backend": _Key("str", choices=("sqlite", "memory")),
        "data_dir": _Key("str"),
        "sync": _Key("str", choices=("full", "normal", "off")),
        "min_free_space": _Key("size", 0, 2**53),
        "compact_after_idle": _Key("duration", 0, 86400),
    },
    "limits": {
        "max_queued_messages": _Key("int", 0, 2**31 - 1),
        "max_queued_bytes": _Key("size", 0, 2**53),
        "max_inflight_messages": _Key("int", 1, 65535),
        "max_packet_size": _Key("size", 20, MAX_PACKET_SIZE_LIMIT),
        "max_session_expiry_interval": _Key("duration", 0, MAX_UINT32),
        "max_keepalive": _Key("duration", 1, 65535),
        "max_topic_alias": _Key("int", 0, 65535),
        "queue_qos0_messages": _Key("bool"),
        "queue_full_policy": _Key("str", choices=("drop_new", "drop_oldest")),
        "connect_timeout": _Key("duration", 1, 3600),
        "max_connections": _Key("int", 0, 2**31 - 1),
        "max_connections_per_address": _Key("int", 0, 2**31 - 1),
        "max_connect_rate": _Key("int", 0, 2**31 - 1),
        "max_takeovers_per_minute": _Key("int", 0, 2**31 - 1),
        "max_topic_levels": _Key("int", 0, 32768),
        "max_topic_length": _Key("size", 1, 65535),
        "stalled_subscriber_timeout": _Key("duration", 1, 86400),
        "max_memory": _Key("size", 0, 2**53, choices=("auto",)),
    },
    "mqtt": {
        "allow_zero_length_clientid": _Key("bool"),
        "retain_available": _Key("bool"),
        "sys_interval": _Key("duration", 0, 86400),
        "response_information": _Key("str"),
        "server_reference": _Key("str", empty_ok=True),
        "server_reference_mode": _Key("str", choices=("moved", "use_another")),
    },
    "log": {
        "verbose": _Key("bool"),
        "log_packets": _Key("bool"),
        "priority_prefix": _Key("str", choices=("auto", "on", "off")),
    },
    "metrics": {
        "metrics_enabled": _Key("bool"),
        "metrics_bind": _Key("str"),
        "metrics_port": _Key("int", 0, 65535),
    },
    "auth": {
        "password_file": _Key("path"),
        "acl_file": _Key("path"),
        "allow_anonymous": _Key("auto_bool"),
        "clientid_prefix_username": _Key("bool"),
    },
}


class TableError(ValueError):
    """A table of an array of tables is inconsistent; ``key`` is where to point the line at."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class TableArray:
    """A TOML array of tables such as ``[[listener]]``: any number of tables with the same keys.

    Each table's keys are checked against ``keys``, then ``build`` makes one item of the
    list in the Config field ``field`` from the converted values (only the keys present);
    ``build`` raises TableError for combinations that make no sense.
    """

    field: str
    keys: dict[str, _Key]
    build: Callable[[dict[str, object]], object]


def _build_listener(values: dict[str, object]) -> ListenerConfig:
    listener = ListenerConfig(**values)  # type: ignore[arg-type]  # converted by the schema
    tls_keys = [k for k in _LISTENER_TLS_KEYS if k in values]
    if listener.path is not None:
        for key in ("port", "bind"):
            if key in values:
                raise TableError(f"give either path (a Unix socket) or {key}, not both", key)
        if tls_keys:
            raise TableError(f"a Unix socket listener takes no TLS settings ({tls_keys[0]})", tls_keys[0])
    elif listener.port is None:
        raise TableError("needs a port (or a path for a Unix socket)")
    if "mode" in values and listener.path is None:
        raise TableError("mode is the permissions of a Unix socket: it needs a path", "mode")
    for key in ("websocket_path", "allowed_origins"):
        if key in values and listener.protocol != "websockets":
            raise TableError(f'{key} needs protocol = "websockets"', key)
    if "websocket_path" in values:
        if not listener.websocket_path.startswith("/"):
            raise TableError(f"websocket_path must start with '/', got {listener.websocket_path!r}", "websocket_path")
    if (listener.certfile is None) != (listener.keyfile is None):
        given, missing = ("certfile", "keyfile") if listener.keyfile is None else ("keyfile", "certfile")
        raise TableError(f"{given} needs {missing} too (TLS needs the certificate and its private key)", given)
    if not listener.tls and tls_keys:
        raise TableError(f"{tls_keys[0]} is a TLS setting: it needs certfile and keyfile", tls_keys[0])
    if listener.require_certificate and listener.cafile is None and listener.capath is None:
        raise TableError(
            "require_certificate needs cafile or capath (the CA that signs client certificates)",
            "require_certificate",
        )
    if listener.crlfile is not None and not listener.require_certificate:
        raise TableError("crlfile needs require_certificate = true (it revokes client certificates)", "crlfile")
    if listener.use_identity_as_username and not listener.require_certificate:
        raise TableError(
            "use_identity_as_username needs require_certificate = true", "use_identity_as_username"
        )
    return listener


# TLS settings: meaningless without certfile and keyfile, and on a Unix socket.
_LISTENER_TLS_KEYS = (
    "certfile", "keyfile", "cafile", "capath", "crlfile", "require_certificate", "use_identity_as_username",
    "tls_version", "ciphers",
)

TABLE_ARRAYS: dict[str, TableArray] = {
    "listener": TableArray(
        "listeners",
        {
            "port": _Key("int", 0, 65535),
            "bind": _Key("str"),
            "protocol": _Key("str", choices=LISTENER_PROTOCOLS),
            "path": _Key("str"),
            "mode": _Key("mode"),
            "websocket_path": _Key("str"),
            "allowed_origins": _Key("strings"),
            "certfile": _Key("str"),
            "keyfile": _Key("str"),
            "cafile": _Key("str"),
            "capath": _Key("str"),
            "crlfile": _Key("str"),
            "require_certificate": _Key("bool"),
            "use_identity_as_username": _Key("bool"),
            "tls_version": _Key("str", choices=TLS_VERSIONS),
            "ciphers": _Key("str"),
            "handshake_timeout": _Key("duration", 1, 3600),
            "allow_anonymous": _Key("bool"),
        },
        _build_listener,
    ),
}

# Arrays of tables read by their own module (``[[bridge]]`` with its nested ``[[bridge.topic]]``):
# TOML name -> Config field.
OWN_TABLE_ARRAYS = {"bridge": "bridges"}


def _check_schema_matches_config() -> None:
    """Every Config field is a key of exactly one section or an array of tables, and the reverse."""
    keys = [key for section in SCHEMA.values() for key in section]
    keys += [array.field for array in TABLE_ARRAYS.values()]
    keys += list(OWN_TABLE_ARRAYS.values())
    fields = list(Config.__dataclass_fields__)
    if sorted(keys) != sorted(fields):
        raise AssertionError(f"config schema {sorted(keys)} does not match Config {sorted(fields)}")


_check_schema_matches_config()


# ---- finding the line of a section or key ------------------------------------------

_HEADER = re.compile(r"\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(r"""\s*((?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEY_PART = re.compile(r"""[A-Za-z0-9_\-]+|"([^"]*)"|'([^']*)'""")


def _key_path(text: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART.finditer(text):
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        parts.append(quoted if quoted is not None else match.group(0))
    return tuple(parts)


def _scan(text: str) -> list[tuple[int, tuple[str, ...], bool]]:
    """(line number, full key path, is a table header) for every header and key line.

    Good enough for locating keys in a file tomllib already accepted; lines
    inside multi-line strings are skipped.
    """
    found = []
    table: tuple[str, ...] = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header:
            table = _key_path(header.group(1))
            found.append((number, table, True))
            continue
        key = _KEY_LINE.match(line)
        if key:
            found.append((number, table + _key_path(key.group(1)), False))
            rest = line[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
                    break
    return found


def find_line(text: str, *path: str) -> int:
    """The line that defines ``path`` (e.g. ``("limits", "max_packet_size")``).

    Falls back to the line of the closest enclosing definition (the section
    header, or an inline table holding the key), then to line 1.
    """
    entries = _scan(text)
    for length in range(len(path), 0, -1):
        wanted = path[:length]
        for number, full, _ in entries:
            if full == wanted:
                return number
        for number, full, is_header in entries:  # dotted keys: "limits.max_inflight_messages = 1"
            if not is_header and full[:length] == wanted:
                return number
    return 1


# ---- loading -----------------------------------------------------------------------


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _home_of(key: str) -> str | None:
    """Where a key misplaced at the top level belongs: "[limits]" or "a [[listener]] table"."""
    for section, keys in SCHEMA.items():
        if key in keys:
            return f"the [{section}] section"
    for name, array in TABLE_ARRAYS.items():
        if key in array.keys:
            return f"a [[{name}]] table"
    return None


def _array_table_spans(text: str, name: str) -> list[tuple[int, int]]:
    """(header line, last line) of each ``[[name]]`` table, in file order."""
    lines = text.splitlines()
    headers = [(number, full) for number, full, is_header in _scan(text) if is_header]
    spans: list[tuple[int, int]] = []
    for position, (number, full) in enumerate(headers):
        if full != (name,) or not lines[number - 1].lstrip().startswith("[["):
            continue
        end = len(lines)
        for later, later_full in headers[position + 1 :]:
            if later_full[:1] != (name,) or lines[later - 1].lstrip().startswith("[["):
                end = later - 1
                break
        spans.append((number, end))
    return spans


def find_table_line(text: str, name: str, index: int, key: str | None = None) -> int:
    """The line of ``key`` in the ``index``-th ``[[name]]`` table (or of its header)."""
    spans = _array_table_spans(text, name)
    if index < len(spans):
        start, end = spans[index]
        if key is not None:
            for number, full, _ in _scan(text):
                if start < number <= end and full[:2] == (name, key):
                    return number
        return start
    return find_line(text, name, *((key,) if key is not None else ()))  # inline array of tables


def _apply_array(
    config: Config, name: str, tables: list[object], text: str, where: str
) -> None:
    """Check each table of ``[[name]]`` and set the list of built items on ``config``."""
    array = TABLE_ARRAYS[name]
    items = []
    for index, table in enumerate(tables):
        label = f"[[{name}]] #{index + 1}"

        def fail(message: str, key: str | None = None) -> ConfigError:
            return ConfigError(f"{where}:{find_table_line(text, name, index, key)}: {label}: {message}")

        if not isinstance(table, dict):
            raise fail(f"must be a table, got {_type_name(table)}")
        values: dict[str, object] = {}
        for key, value in table.items():
            spec = array.keys.get(key)
            if spec is None:
                raise fail(f"unknown key {key!r}{_suggest(key, list(array.keys))}", key)
            try:
                values[key] = spec.convert(value)
            except ValueError as exc:
                raise fail(f"{key} {exc}", key) from None
        try:
            items.append(array.build(values))
        except TableError as exc:
            raise fail(str(exc), exc.key) from None
    setattr(config, array.field, items)


def apply_table(config: Config, data: dict[str, object], text: str, where: str) -> None:
    """Check the parsed TOML against the schema and set the values on ``config``."""

    def fail(message: str, *path: str) -> ConfigError:
        return ConfigError(f"{where}:{find_line(text, *path)}: {message}")

    for section, table in data.items():
        if section in TABLE_ARRAYS and isinstance(table, list):
            _apply_array(config, section, table, text, where)
            continue
        if section not in SCHEMA:
            home = _home_of(section)
            if home is not None:
                raise fail(f"key {section!r} must be in {home}", section)
            if section in TABLE_ARRAYS:
                raise fail(f"[{section}] must be written [[{section}]] (there may be several)", section)
            hint = _suggest(section, list(SCHEMA) + list(TABLE_ARRAYS))
            known = ", ".join([f"[{s}]" for s in SCHEMA] + [f"[[{a}]]" for a in TABLE_ARRAYS])
            raise fail(f"unknown section [{section}]{hint} (known sections: {known})", section)
        if not isinstance(table, dict):
            raise fail(f"[{section}] must be a table (a [{section}] section), got {_type_name(table)}", section)
        keys = SCHEMA[section]
        for key, value in table.items():
            spec = keys.get(key)
            if spec is None:
                home = _home_of(key)
                if section in TABLE_ARRAYS and key in TABLE_ARRAYS[section].keys:
                    message = (
                        f"key {key!r} is a setting of [[{section}]] tables: "
                        f"write [[{section}]] instead of [{section}]"
                    )
                elif home is not None:
                    message = f"key {key!r} belongs in {home}, not [{section}]"
                else:
                    hint = _suggest(key, list(keys))
                    message = f"unknown key {key!r} in [{section}]{hint}"
                raise fail(message, section, key)
            try:
                setattr(config, key, spec.convert(value))
            except ValueError as exc:
                raise fail(f"[{section}] {key} {exc}", section, key) from None


def _syntax_line(exc: tomllib.TOMLDecodeError, text: str) -> tuple[int, str]:
    """tomllib puts "(at line L, column C)" in its message; take it apart."""
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        return int(match.group(1)), f"{message[: match.start()]} (column {match.group(2)})"
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        return max(1, len(text.splitlines())), f"{message[: match.start()]} (at end of file)"
    return 1, message


def load_config(path: str, base: Config | None = None) -> Config:
    """Read the TOML file at ``path`` over ``base`` (default: ``Config()``).

    Raises ConfigError naming the file and line of the first problem.
    """
    config = replace(base) if base is not None else Config()
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the file is not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, message = _syntax_line(exc, text)
        raise ConfigError(f"{path}:{line}: TOML syntax error: {message}") from None
    bridge_tables = data.pop("bridge", None)
    apply_table(config, data, text, path)
    if bridge_tables is not None:
        from broker.bridge.config import BridgeConfigError, parse_bridges

        try:
            config.bridges = parse_bridges(bridge_tables, text, path)
        except BridgeConfigError as exc:
            raise ConfigError(str(exc)) from None
    return config
