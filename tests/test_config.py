"""The TOML configuration loader: values, units, and an error naming file and line for each mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broker.config import MAX_PACKET_SIZE_LIMIT, Config
from broker.config_file import OWN_TABLE_ARRAYS, TABLE_ARRAYS, ConfigError, find_line, load_config, parse_duration, parse_size

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def write(tmp_path: Path, text: str, name: str = "broker.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path + ":"), message
    return message[len(path) + 1 :]


# ---- the shipped example files ------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_file_loads(path: Path) -> None:
    config = load_config(str(path))
    assert isinstance(config, Config)


def test_there_are_example_files() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.toml")}
    assert {"broker.toml", "gateway-pi.toml"} <= names


def test_the_reference_file_sets_every_key_to_its_default() -> None:
    """broker.toml documents every key; its values must be the real defaults."""
    assert load_config(str(CONFIG_DIR / "broker.toml")) == Config()
    text = (CONFIG_DIR / "broker.toml").read_text()
    arrays = {array.field: name for name, array in TABLE_ARRAYS.items()}
    for field in dataclasses.fields(Config):
        if field.name in arrays:  # [[name]] tables: documented as a commented-out example
            name = arrays[field.name]
            assert f"\n# [[{name}]]\n" in text, f"[[{name}]] missing from config/broker.toml"
            for key in TABLE_ARRAYS[name].keys:
                assert f"\n# {key} = " in text, f"[[{name}]] {key} missing from config/broker.toml"
            continue
        if field.name in OWN_TABLE_ARRAYS.values():
            continue  # [[bridge]]: documented as a commented example
        assert f"\n{field.name} = " in text, f"{field.name} missing from config/broker.toml"


def test_gateway_example_values() -> None:
    config = load_config(str(CONFIG_DIR / "gateway-pi.toml"))
    assert config.bind == "0.0.0.0"
    assert config.data_dir.startswith("/var/lib/")
    assert config.max_session_expiry_interval == 7 * 86400
    assert config.max_packet_size == 1024 * 1024


# ---- values ------------------------------------------------------------------------


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_every_key_is_read(tmp_path: Path) -> None:
    text = """
[listener]
bind = "0.0.0.0"
port = 8883
[storage]
backend = "memory"
data_dir = "/srv/mq"
[limits]
max_queued_messages = 0
max_queued_bytes = 1234
max_inflight_messages = 65535
max_packet_size = 20
max_session_expiry_interval = 4294967295
max_keepalive = 1
max_topic_alias = 0
queue_qos0_messages = true
[mqtt]
allow_zero_length_clientid = false
retain_available = false
[log]
verbose = true
"""
    assert load_config(write(tmp_path, text)) == Config(
        bind="0.0.0.0",
        port=8883,
        backend="memory",
        data_dir="/srv/mq",
        max_queued_messages=0,
        max_queued_bytes=1234,
        max_inflight_messages=65535,
        max_packet_size=20,
        max_session_expiry_interval=4294967295,
        max_keepalive=1,
        max_topic_alias=0,
        queue_qos0_messages=True,
        allow_zero_length_clientid=False,
        retain_available=False,
        verbose=True,
    )


def test_dotted_keys_and_inline_tables_are_toml_too(tmp_path: Path) -> None:
    text = 'listener.port = 1884\nlimits = { max_packet_size = "2KB" }\n'
    config = load_config(write(tmp_path, text))
    assert (config.port, config.max_packet_size) == (1884, 2048)


def test_base_config_is_not_modified(tmp_path: Path) -> None:
    base = Config(port=1)
    config = load_config(write(tmp_path, "[listener]\nbind = '::1'\n"), base)
    assert (config.bind, config.port) == ("::1", 1)
    assert base.bind == "127.0.0.1"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0),
        (45, 45),
        ("45", 45),
        ("45s", 45),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1d 12h", 129600),
        ("10M", 600),
    ],
)
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "7x", "h", "1.5h", "-1s", "7 days", True, 1.5, [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (300, 300),
        ("300", 300),
        ("512B", 512),
        ("256KB", 256 * 1024),
        ("256kb", 256 * 1024),
        ("256 KiB", 256 * 1024),
        ("1MB", 1024**2),
        ("1M", 1024**2),
        ("2GB", 2 * 1024**3),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "MB", "1TB", "1.5MB", "-1KB", "1 megabyte", False, 2.0])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_units_in_the_file(tmp_path: Path) -> None:
    text = '[limits]\nmax_session_expiry_interval = "12h"\nmax_queued_bytes = "1MB"\nmax_keepalive = "5m"\n'
    config = load_config(write(tmp_path, text))
    assert config.max_session_expiry_interval == 43200
    assert config.max_queued_bytes == 1024**2
    assert config.max_keepalive == 300


# ---- errors, each with its line --------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="nope.toml: cannot read"):
        load_config(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[listener]\n# caf\xe9\nport = 1\n")
    with pytest.raises(ConfigError, match=r"latin1.toml:2: the file is not valid UTF-8"):
        load_config(str(path))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[listener]\nport 1883\n", 2, "TOML syntax error"),
        ("[listener]\nbind = '0.0.0.0'\nport = 1883 1884\n", 3, "TOML syntax error"),
        ("\n\n[listener\nport = 1\n", 3, "TOML syntax error"),
        ("[listener]\nport = 1\nport = 2\nbind = 'x'\n", 3, "TOML syntax error"),
        ("[listener]\nbind = \"unterminated\n\n", 2, "TOML syntax error"),
    ],
)
def test_syntax_errors(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{line}: "), message
    assert fragment in message


def test_syntax_error_at_end_of_file_names_the_last_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[listener]\nport = 1\nbind =")
    assert message.startswith("3: TOML syntax error"), message


def test_unknown_section_with_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[listener]\nport = 1\n\n[limit]\nmax_keepalive = 60\n")
    assert message.startswith("4: unknown section [limit]"), message
    assert "did you mean 'limits'?" in message


def test_unknown_section_without_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, "# comment\n[upstream]\naddress = 'x'\n")
    assert message.startswith("2: unknown section [upstream]"), message
    assert "did you mean" not in message
    assert "[listener]" in message  # lists the known ones


def test_unknown_nested_section(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[listener]\nport = 1\n[listener.tls]\ncert = 'x'\n")
    assert message.startswith("3: unknown key 'tls' in [listener]"), message


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    text = "[listener]\nport = 1\n\n[limits]\nmax_queued_messages = 5\nmax_inflight_msgs = 10\n"
    message = error_of(tmp_path, text)
    assert message.startswith("6: unknown key 'max_inflight_msgs' in [limits]"), message
    assert "did you mean 'max_inflight_messages'?" in message


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[mqtt]\nretain_available = true\nfrobnicate = 1\n")
    assert message.startswith("3: unknown key 'frobnicate' in [mqtt]"), message
    assert "did you mean" not in message


def test_key_in_the_wrong_section(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[listener]\nport = 1\ndata_dir = '/x'\n")
    assert message.startswith("3: key 'data_dir' belongs in the [storage] section"), message


def test_key_outside_any_section(tmp_path: Path) -> None:
    message = error_of(tmp_path, "# top\nport = 1883\n[listener]\nbind = 'x'\n")
    assert message.startswith("2: key 'port' must be in the [listener] section"), message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    message = error_of(tmp_path, "\nlimits = 5\n")
    assert message.startswith("2: [limits] must be a table"), message


def test_same_key_in_another_section_is_found_on_its_own_line(tmp_path: Path) -> None:
    """The line search follows sections: a 'verbose' comment elsewhere does not mislead it."""
    text = (
        "[listener]\n"
        "# verbose = 1 is not here\n"
        "port = 1\n"
        "[log]\n"
        "verbose = 1\n"
    )
    message = error_of(tmp_path, text)
    assert message.startswith("5: [log] verbose must be true or false"), message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[listener]\nport = '1883'\n", 2, "[listener] port must be an integer, got a string"),
        ("[listener]\nport = 18.5\n", 2, "must be an integer, got a float"),
        ("[listener]\nport = true\n", 2, "must be an integer, got a boolean"),
        ("[listener]\nbind = 127\n", 2, "[listener] bind must be a string, got an integer"),
        ("[listener]\nbind = ''\n", 2, "[listener] bind must not be empty"),
        ("[storage]\nbackend = 'postgres'\n", 2, 'must be one of "sqlite", "memory"'),
        ("[storage]\ndata_dir = []\n", 2, "must be a string, got an array"),
        ("[mqtt]\n\nretain_available = 'yes'\n", 3, "[mqtt] retain_available must be true or false"),
        ("[limits]\nqueue_qos0_messages = 1\n", 2, "must be true or false, got an integer"),
        ("[limits]\nmax_packet_size = 'huge'\n", 2, "max_packet_size must be a number of bytes"),
        ("[limits]\nmax_session_expiry_interval = '7 days'\n", 2, "must be a number of seconds or a duration"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{line}: "), message
    assert fragment in message


@pytest.mark.parametrize(
    ("key", "value", "low", "high"),
    [
        ("port", "-1", 0, 65535),
        ("port", "65536", 0, 65535),
        ("max_inflight_messages", "0", 1, 65535),
        ("max_inflight_messages", "65536", 1, 65535),
        ("max_packet_size", "19", 20, MAX_PACKET_SIZE_LIMIT),
        ("max_packet_size", '"256MB"', 20, MAX_PACKET_SIZE_LIMIT),  # 268435456: one over
        ("max_session_expiry_interval", "4294967296", 0, 4294967295),
        ("max_keepalive", "0", 1, 65535),
        ("max_keepalive", '"1d"', 1, 65535),
        ("max_topic_alias", "65536", 0, 65535),
        ("max_queued_messages", "-5", 0, 2**31 - 1),
        ("max_queued_bytes", "-1", 0, 2**53),
    ],
)
def test_out_of_range(tmp_path: Path, key: str, value: str, low: int, high: int) -> None:
    section = "listener" if key == "port" else "limits"
    text = f"# line 1\n\n[{section}]\n# a comment mentioning {key}\n{key} = {value}\n"
    message = error_of(tmp_path, text)
    assert message.startswith(f"5: [{section}] {key} must be between {low} and {high}, got "), message


def test_error_line_for_dotted_and_inline_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, "\n\nlimits.max_inflight_messages = 0\n")
    assert message.startswith("3: [limits] max_inflight_messages must be between"), message
    message = error_of(tmp_path, "\nlimits = { max_topic_alias = -1 }\n")
    assert message.startswith("2: [limits] max_topic_alias must be between"), message


def test_find_line_skips_multiline_strings() -> None:
    text = '[listener]\nbind = """\n[limits]\nport = 5\n"""\nport = 7\n'
    assert find_line(text, "listener", "port") == 6
    assert find_line(text, "limits") == 1  # not defined: falls back to line 1


def test_find_line_handles_quoted_keys_and_spaces() -> None:
    text = '[ "listener" ]\n  "port"   = 1\n[limits]\n\'max_keepalive\' = 2\n'
    assert find_line(text, "listener", "port") == 2
    assert find_line(text, "limits", "max_keepalive") == 4
    assert find_line(text, "limits", "missing") == 3  # falls back to the section header
