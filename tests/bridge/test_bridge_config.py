"""``[[bridge]]`` configuration: defaults, mosquitto's topic prefix rules, errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.bridge.config import TopicConfig, parse_address
from broker.bridge.link import BRIDGE_PROTOCOL_BIT, connect_packet, encode_connect
from broker.config_file import ConfigError, load_config
from broker.protocol.codec import PacketReader

MINIMAL = """
[[bridge]]
name = "cloud"
address = "mqtt.example.com:8883"

[[bridge.topic]]
pattern = "sensors/#"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return load_config(str(path))


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    prefix = str(tmp_path / "broker.toml") + ":"
    assert message.startswith(prefix), message
    return message[len(prefix):]


def test_defaults(tmp_path):
    (bridge,) = load(tmp_path, MINIMAL).bridges
    assert bridge.addresses == (("mqtt.example.com", 8883),)
    assert bridge.protocol_version == 4
    assert not bridge.clean_start  # a persistent upstream session, as mosquitto's cleansession false
    assert bridge.local_clientid == "$bridge/cloud"
    assert bridge.client_id.endswith(".cloud")  # "<hostname>.<name>", mosquitto's default
    assert bridge.backlog_max_bytes == 1 << 30
    assert bridge.backlog_full_policy == "drop_oldest"
    assert bridge.max_inflight == 20
    assert bridge.try_private
    assert not bridge.use_tls
    assert bridge.topics == (TopicConfig("sensors/#", "out", 1, "", ""),)


def test_full_bridge(tmp_path):
    text = """
[[bridge]]
name = "aws"
address = ["a.example.com:443", "b.example.com"]
protocol_version = "5"
client_id = "gw-17"
keepalive = "1m"
session_expiry = "7d"
cafile = "/etc/ssl/AmazonRootCA1.pem"
certfile = "/etc/edgemq/gw.crt"
keyfile = "/etc/edgemq/gw.key"
alpn = "x-amzn-mqtt-ca"
backlog_max_bytes = "256MB"
backlog_full_policy = "drop_new"
max_rate = 500
restart_timeout = "5m"

[[bridge.topic]]
pattern = "#"
direction = "both"
qos = 0
local_prefix = "aws/"
remote_prefix = "things/gw-17/"
"""
    (bridge,) = load(tmp_path, text).bridges
    assert bridge.addresses == (("a.example.com", 443), ("b.example.com", 1883))
    assert bridge.protocol_version == 5
    assert bridge.keepalive == 60 and bridge.session_expiry == 7 * 86400 and bridge.restart_timeout == 300
    assert bridge.use_tls and bridge.alpn == ("x-amzn-mqtt-ca",)
    assert bridge.backlog_max_bytes == 256 << 20 and bridge.backlog_full_policy == "drop_new"
    assert bridge.topics[0].local_filter == "aws/#"
    assert bridge.topics[0].remote_filter == "things/gw-17/#"


# mosquitto's bridge topic rules (mosquitto.conf(5), "topic pattern [[[ out | in | both ] qos-level]
# local-prefix remote-prefix]"): the prefixes are prepended to the pattern on their side, and
# traded for each other when a message crosses; with an empty pattern they are full topic names.
PREFIX_CASES = [
    # pattern, local_prefix, remote_prefix, local topic, remote topic
    ("sensors/#", "", "", "sensors/t1", "sensors/t1"),
    ("sensors/#", "site/", "gw1/", "site/sensors/t1", "gw1/sensors/t1"),
    ("#", "", "devices/gw1/", "a/b", "devices/gw1/a/b"),
    ("+/temp", "local/", "", "local/room1/temp", "room1/temp"),
    ("", "local/alarm", "cloud/alarms/gw1", "local/alarm", "cloud/alarms/gw1"),
]


@pytest.mark.parametrize(("pattern", "local_prefix", "remote_prefix", "local", "remote"), PREFIX_CASES)
def test_prefix_rules(pattern, local_prefix, remote_prefix, local, remote):
    topic = TopicConfig(pattern, "both", 1, local_prefix, remote_prefix)
    assert topic.to_remote(local) == remote
    assert topic.to_local(remote) == local


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL.replace('name = "cloud"\n', ""), '2: [[bridge]] needs a name'),
        (MINIMAL.replace('"mqtt.example.com:8883"', '"host:99999"'), "4: [[bridge]] address 'host:99999' must end"),
        (MINIMAL + 'direction = "up"\n', '8: [[bridge]] [[bridge.topic]] direction must be "out", "in" or "both"'),
        (MINIMAL + "qos = 3\n", "8: [[bridge]] [[bridge.topic]] qos must be 0, 1 or 2"),
        (MINIMAL + 'local_prefix = "a/+/"\n', "8: [[bridge]] [[bridge.topic]] local_prefix must not contain wildcards"),
        (MINIMAL.replace('pattern = "sensors/#"', 'pattern = ""'), "7: [[bridge]] [[bridge.topic]] an empty pattern"),
        (MINIMAL.replace('pattern = "sensors/#"', 'pattern = "a/#/b"'), "7: [[bridge]] [[bridge.topic]] the local topic filter"),
        (MINIMAL.replace("\n[[bridge.topic]]\npattern = \"sensors/#\"\n", ""), "2: [[bridge]] needs at least one [[bridge.topic]]"),
        (MINIMAL.replace('name = "cloud"', 'name = "cloud"\nprotocol_version = "4"'), '4: [[bridge]] protocol_version must be "3.1.1" or "5"'),
        (MINIMAL.replace('name = "cloud"', 'name = "cloud"\nbackup = "x"'), "4: [[bridge]] unknown key 'backup'"),
        (MINIMAL.replace('name = "cloud"', 'name = "cloud"\ncertfile = "c.pem"'), "4: [[bridge]] certfile needs keyfile"),
        (MINIMAL + MINIMAL, "10: [[bridge]] name 'cloud' is used by two bridges"),
        ("[bridge]\nname = 'x'\n", "1: bridges are written [[bridge]]"),
        (MINIMAL.replace('name = "cloud"', 'name = "cloud"\nbacklog_max_bytes = "1 TB"'), "4: [[bridge]] backlog_max_bytes must be"),
    ],
)
def test_errors_name_the_line(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(expected), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("host:1884", ("host", 1884)), ("host", ("host", 1883)), ("[::1]:8883", ("::1", 8883)), ("[::1]", ("::1", 1883))],
)
def test_addresses(text, expected):
    assert parse_address(text) == expected


def test_try_private_sets_the_bridge_bit_only():
    """mosquitto's try_private: protocol level 0x84, the rest of the CONNECT unchanged."""
    (bridge,) = load_config_text(MINIMAL).bridges
    plain = encode_connect(connect_packet(bridge, 20), private=False)
    private = encode_connect(connect_packet(bridge, 20), private=True)
    level_at = plain.index(b"\x00\x04MQTT") + 6
    assert plain[level_at] == 4 and private[level_at] == 4 | BRIDGE_PROTOCOL_BIT == 0x84
    assert plain[:level_at] + plain[level_at + 1:] == private[:level_at] + private[level_at + 1:]
    (packet,) = PacketReader().feed(plain)
    assert packet.client_id == bridge.client_id and not packet.clean_start


def load_config_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        return load(Path(directory), text)
