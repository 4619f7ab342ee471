"""``[[listener]]`` tables: values, defaults, the command line, and errors naming file, line and table."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.__main__ import build_parser, config_from_args
from broker.config import Config, ListenerConfig, listener_settings
from broker.config_file import ConfigError, find_table_line, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(str(path))


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    return message[len(str(path)) + 1 :]


GATEWAY = """
[storage]
backend = "memory"

[[listener]]
port = 1883

[[listener]]
port = 8883
bind = "0.0.0.0"
certfile = "/etc/edgemq/server.pem"
keyfile = "/etc/edgemq/server.key"
cafile = "/etc/edgemq/ca.pem"
require_certificate = true
use_identity_as_username = true
tls_version = "tlsv1.3"
ciphers = "ECDHE+AESGCM"
handshake_timeout = "5s"

[[listener]]
port = 8083
protocol = "websockets"
websocket_path = "/ws"
allowed_origins = ["http://localhost:8080", "https://dash.example"]
allow_anonymous = false

[[listener]]
path = "/run/edgemq.sock"
mode = 0o600
"""


def test_several_listeners_are_read_in_order(tmp_path: Path) -> None:
    config = load(tmp_path, GATEWAY)
    assert config.backend == "memory"
    assert config.listeners == [
        ListenerConfig(port=1883),
        ListenerConfig(
            port=8883,
            bind="0.0.0.0",
            certfile="/etc/edgemq/server.pem",
            keyfile="/etc/edgemq/server.key",
            cafile="/etc/edgemq/ca.pem",
            require_certificate=True,
            use_identity_as_username=True,
            tls_version="tlsv1.3",
            ciphers="ECDHE+AESGCM",
            handshake_timeout=5,
        ),
        ListenerConfig(
            port=8083,
            protocol="websockets",
            websocket_path="/ws",
            allowed_origins=("http://localhost:8080", "https://dash.example"),
            allow_anonymous=False,
        ),
        ListenerConfig(path="/run/edgemq.sock", mode=0o600),
    ]
    assert [(l.tls, l.unix, l.plain_tcp) for l in config.listeners] == [
        (False, False, True), (True, False, False), (False, False, False), (False, True, False),
    ]


def test_defaults_of_a_listener_table() -> None:
    listener = ListenerConfig(port=1)
    assert (listener.bind, listener.protocol, listener.mode, listener.websocket_path) == (
        "127.0.0.1", "mqtt", 0o660, "/mqtt",
    )
    assert (listener.tls_version, listener.handshake_timeout, listener.require_certificate) == (
        "tlsv1.2", 10, False,
    )
    assert listener.allow_anonymous is None


@pytest.mark.parametrize(("text", "mode"), [("0o644", 0o644), ('"0600"', 0o600), ('"660"', 0o660), ("432", 0o660)])
def test_socket_mode_as_octal_integer_or_string(tmp_path: Path, text: str, mode: int) -> None:
    config = load(tmp_path, f'[[listener]]\npath = "/tmp/x.sock"\nmode = {text}\n')
    assert config.listeners[0].mode == mode


def test_inline_array_of_tables(tmp_path: Path) -> None:
    config = load(tmp_path, 'listener = [{ port = 1 }, { port = 2, protocol = "websockets" }]\n')
    assert [(l.port, l.protocol) for l in config.listeners] == [(1, "mqtt"), (2, "websockets")]


def test_the_legacy_listener_section_is_the_one_plain_listener(tmp_path: Path) -> None:
    config = load(tmp_path, '[listener]\nbind = "0.0.0.0"\nport = 1884\n')
    assert config.listeners == []
    assert listener_settings(config) == [ListenerConfig(port=1884, bind="0.0.0.0")]
    assert listener_settings(Config()) == [ListenerConfig(port=1883, bind="127.0.0.1")]


def test_the_example_gateway_file_has_every_kind_of_listener() -> None:
    config = load_config(str(CONFIG_DIR / "listeners.toml"))
    kinds = {(l.protocol, l.tls, l.unix) for l in config.listeners}
    assert kinds == {
        ("mqtt", False, False), ("mqtt", True, False), ("websockets", False, False),
        ("websockets", True, False), ("mqtt", False, True),
    }


# ---- the command line and [[listener]] -------------------------------------------------


def parse(*argv: str) -> Config:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_port_option_sets_the_first_plain_listener(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text(GATEWAY)
    config = parse("-c", str(path), "--port", "0")
    assert [l.port for l in config.listeners] == [0, 8883, 8083, None]
    config = parse("-c", str(path), "--bind", "10.0.0.1")
    assert [(l.bind, l.port) for l in config.listeners][:2] == [("10.0.0.1", 1883), ("0.0.0.0", 8883)]


def test_port_option_adds_a_plain_listener_in_front_when_none_is_configured(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[[listener]]\nport = 8883\ncertfile = "c"\nkeyfile = "k"\n')
    config = parse("-c", str(path), "--port", "0")
    assert [(l.port, l.tls) for l in config.listeners] == [(0, False), (8883, True)]
    assert listener_settings(parse("-c", str(path))) == [
        ListenerConfig(port=8883, certfile="c", keyfile="k")
    ]


# ---- errors: file, line, which table ---------------------------------------------------

TLS = 'certfile = "c.pem"\nkeyfile = "k.pem"\n'


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[[listener]]\nport = 1\n\n[[listener]]\nbind = '0.0.0.0'\n", 4, "[[listener]] #2: needs a port (or a path"),
        ("[[listener]]\nport = 1\n[[listener]]\nport = 2\ncertfle = 'x'\n", 5, "[[listener]] #2: unknown key 'certfle'; did you mean 'certfile'?"),
        ("[[listener]]\nport = 70000\n", 2, "[[listener]] #1: port must be between 0 and 65535, got 70000"),
        ("[[listener]]\nport = 1\nprotocol = 'ws'\n", 3, 'protocol must be one of "mqtt", "websockets"'),
        ("[[listener]]\nport = 1\ncertfile = 'c'\n", 3, "certfile needs keyfile too"),
        ("[[listener]]\nport = 1\nkeyfile = 'k'\n", 3, "keyfile needs certfile too"),
        ("[[listener]]\nport = 1\ncafile = 'ca'\n", 3, "cafile is a TLS setting: it needs certfile and keyfile"),
        ("[[listener]]\nport = 1\n" + TLS + "require_certificate = true\n", 5, "require_certificate needs cafile or capath"),
        ("[[listener]]\nport = 1\n" + TLS + "cafile = 'a'\nuse_identity_as_username = true\n", 6, "use_identity_as_username needs require_certificate = true"),
        ("[[listener]]\nport = 1\n" + TLS + "crlfile = 'r.crl'\n", 5, "crlfile needs require_certificate = true"),
        ("[[listener]]\nport = 1\n" + TLS + "tls_version = 'tlsv1.1'\n", 5, 'tls_version must be one of "tlsv1.2", "tlsv1.3"'),
        ("[[listener]]\npath = '/tmp/s'\nport = 1\n", 3, "give either path (a Unix socket) or port"),
        ("[[listener]]\npath = '/tmp/s'\n" + TLS, 3, "a Unix socket listener takes no TLS settings (certfile)"),
        ("[[listener]]\nport = 1\nmode = '0600'\n", 3, "mode is the permissions of a Unix socket: it needs a path"),
        ("[[listener]]\npath = '/tmp/s'\nmode = 'rw'\n", 3, "mode must be file permissions"),
        ("[[listener]]\nport = 1\nwebsocket_path = '/x'\n", 3, 'websocket_path needs protocol = "websockets"'),
        ("[[listener]]\nport = 1\nprotocol = 'websockets'\nwebsocket_path = 'x'\n", 4, "websocket_path must start with '/'"),
        ("[[listener]]\nport = 1\n" + TLS + "handshake_timeout = 0\n", 5, "handshake_timeout must be between 1 and 3600"),
        ("[[listener]]\nport = 1\nallowed_origins = ['http://x']\n", 3, 'allowed_origins needs protocol = "websockets"'),
        ("[[listener]]\nport = 1\nprotocol = 'websockets'\nallowed_origins = 'http://x'\n", 4, "allowed_origins must be an array of non-empty strings"),
        ("[[listener]]\nport = 1\n[listener.tls]\ncert = 'x'\n", 3, "[[listener]] #1: unknown key 'tls'"),
        ("[listener]\nport = 1\ncertfile = 'x'\n", 3, "key 'certfile' is a setting of [[listener]] tables: write [[listener]] instead of [listener]"),
        ("certfile = 'x'\n", 1, "key 'certfile' must be in a [[listener]] table"),
        ("listener = [1, 2]\n", 1, "[[listener]] #1: must be a table, got an integer"),
    ],
)
def test_errors_name_the_line_and_the_table(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{line}: "), message
    assert fragment in message, message


def test_find_table_line_counts_tables_not_sections() -> None:
    text = "[storage]\nbackend = 'memory'\n[[listener]]\nport = 1\n[limits]\nmax_keepalive = 5\n[[listener]]\n# c\nport = 2\n"
    assert find_table_line(text, "listener", 0) == 3
    assert find_table_line(text, "listener", 0, "port") == 4
    assert find_table_line(text, "listener", 1) == 7
    assert find_table_line(text, "listener", 1, "port") == 9
    assert find_table_line(text, "listener", 1, "bind") == 7
