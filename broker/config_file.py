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
from dataclasses import dataclass, replace

from broker.config import MAX_PACKET_SIZE_LIMIT, Config

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


# ---- the schema: every key of every section -------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # "str" | "int" | "bool" | "duration" | "size" | "path" ("" allowed) | "auto_bool"
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
        number: int
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be an integer, got {_type_name(value)} ({value!r})")
            number = value
        elif self.kind == "duration":
            number = parse_duration(value)
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
    },
    "auth": {
        "password_file": _Key("path"),
        "acl_file": _Key("path"),
        "allow_anonymous": _Key("auto_bool"),
        "clientid_prefix_username": _Key("bool"),
    },
}


def _check_schema_matches_config() -> None:
    """Every Config field is a key of exactly one section, and the reverse."""
    keys = [key for section in SCHEMA.values() for key in section]
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
    for section, keys in SCHEMA.items():
        if key in keys:
            return section
    return None


def apply_table(config: Config, data: dict[str, object], text: str, where: str) -> None:
    """Check the parsed TOML against the schema and set the values on ``config``."""

    def fail(message: str, *path: str) -> ConfigError:
        return ConfigError(f"{where}:{find_line(text, *path)}: {message}")

    for section, table in data.items():
        if section not in SCHEMA:
            home = _home_of(section)
            if home is not None:
                raise fail(f"key {section!r} must be in the [{home}] section", section)
            hint = _suggest(section, list(SCHEMA))
            known = ", ".join(f"[{s}]" for s in SCHEMA)
            raise fail(f"unknown section [{section}]{hint} (known sections: {known})", section)
        if not isinstance(table, dict):
            raise fail(f"[{section}] must be a table (a [{section}] section), got {_type_name(table)}", section)
        keys = SCHEMA[section]
        for key, value in table.items():
            spec = keys.get(key)
            if spec is None:
                home = _home_of(key)
                if home is not None:
                    message = f"key {key!r} belongs in the [{home}] section, not [{section}]"
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
    apply_table(config, data, text, path)
    return config
