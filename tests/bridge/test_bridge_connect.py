"""How the bridge connects: failover, refusals in words, TLS (mutual, as AWS IoT and Azure
need), the in-flight window from the upstream's Receive Maximum, and max_rate pacing."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from broker.protocol.packets import MQTT_5

from brokerprocess import free_port
from fault.mqttclient import Publisher, Subscriber

from .harness import Collector, Proxy, bridge_config, publish, wait_log, wait_until


def forwards(gateway, upstream) -> None:
    """One message published on the gateway arrives upstream."""

    async def main() -> None:
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 1)]),
                                    upstream.host, lambda: upstream.port).start()
        try:
            await wait_log(gateway, "Bridge cloud connected")
            await publish([Publisher("dev", MQTT_5, [("site/sensors/x", 1)], random.Random(1))], gateway.port, 1)
            await wait_until(lambda: len(collector.subscriber.deliveries) == 1, 10, "the message upstream")
        finally:
            await collector.close()

    asyncio.run(main())


def test_failover_to_the_next_address(broker_factory, mosquitto_factory):
    upstream = mosquitto_factory()
    dead = free_port()
    extra = ""
    config = bridge_config(upstream.port, extra=extra).replace(
        f'address = "127.0.0.1:{upstream.port}"', f'address = ["127.0.0.1:{dead}", "127.0.0.1:{upstream.port}"]')
    gateway = broker_factory(config=config)
    forwards(gateway, upstream)
    log = gateway.log()
    assert f"connecting to 127.0.0.1:{dead} failed: connection refused" in log
    assert f"Bridge cloud connected to 127.0.0.1:{upstream.port}" in log


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_refusal_is_explained_and_not_logged_per_attempt(broker_factory, mosquitto_factory, tmp_path, version):
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gateway", "right"], check=True,
                   capture_output=True, timeout=30)
    upstream = mosquitto_factory(config=f"password_file {passwords}\nallow_anonymous false")
    extra = 'username = "gateway"\npassword = "wrong"'
    gateway = broker_factory(config=bridge_config(upstream.port, version=version, extra=extra))

    async def main() -> None:
        # At least six attempts (1 s apart at most, restart_timeout = 1).
        await wait_until(lambda: upstream.log().count("not authorised") + upstream.log().count("bad user")
                         + upstream.log().count("Client gateway-1 disconnected") >= 6, 30, "six attempts")

    asyncio.run(main())
    failures = re.findall(r"Bridge cloud: connecting to .* failed: (.*)", gateway.log())
    assert failures, gateway.log()
    assert re.fullmatch(r"refused: (bad user name or password|not authorized) \(code 0x\w\w\)", failures[0]), failures
    assert len(failures) <= 3, failures  # then only when the reason changes
    assert "will keep retrying" in gateway.log()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("bridge-certs")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=bridge test CA"],
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt",
         "-days", "2", "-subj", "/CN=someone else"],
    ]
    for name, cn in (("server", "localhost"), ("client", "gateway-1")):
        steps += [
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}"],
            ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext"],
        ]
    (d / "elsewhere.ext").write_text("subjectAltName=DNS:elsewhere.example\n")
    steps += [
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "elsewhere.key", "-out", "elsewhere.csr",
         "-subj", "/CN=elsewhere.example"],
        ["x509", "-req", "-in", "elsewhere.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "elsewhere.crt", "-days", "2", "-extfile", "elsewhere.ext"],
    ]
    for step in steps:
        result = subprocess.run([openssl, *step], cwd=d, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    return d


def tls_upstream(mosquitto_factory, certs: Path, server: str = "server"):
    port = free_port()
    upstream = mosquitto_factory(config=(
        f"listener {port} 127.0.0.1\n"
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / (server + '.crt')}\nkeyfile {certs / (server + '.key')}\n"
        "require_certificate true\n"
    ))
    return upstream, port


def test_mutual_tls(broker_factory, mosquitto_factory, certs):
    upstream, tls_port = tls_upstream(mosquitto_factory, certs)
    extra = (f'cafile = "{certs / "ca.crt"}"\ncertfile = "{certs / "client.crt"}"\n'
             f'keyfile = "{certs / "client.key"}"\nalpn = "mqtt"')
    config = bridge_config(tls_port, extra=extra).replace("127.0.0.1:", "localhost:")
    gateway = broker_factory(config=config)
    forwards(gateway, upstream)  # the subscriber uses the plain listener


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ('cafile = "{d}/other.crt"\ncertfile = "{d}/client.crt"\nkeyfile = "{d}/client.key"',
         r"TLS: server certificate not accepted: .*(self.signed|unable to get local issuer)"),
        ('cafile = "{d}/ca.crt"', r"TLS|closed by the upstream broker|connection reset"),
        ('cafile = "{d}/missing.pem"', r"TLS set-up: cafile .*missing\.pem: no such file or directory"),
        ('cafile = "{d}/ca.crt"\ncertfile = "{d}/client.crt"\nkeyfile = "{d}/server.key"',
         r"TLS set-up: certfile .*client\.crt / keyfile .*server\.key: TLS: KEY_VALUES_MISMATCH"),
    ],
    ids=["unknown-server-ca", "no-client-certificate", "missing-cafile", "key-of-another-certificate"],
)
def test_tls_failures_are_explained(broker_factory, mosquitto_factory, certs, extra, reason):
    _, tls_port = tls_upstream(mosquitto_factory, certs)
    config = bridge_config(tls_port, extra=extra.format(d=certs)).replace("127.0.0.1:", "localhost:")
    gateway = broker_factory(config=config)

    async def main() -> None:
        await wait_log(gateway, r"Bridge cloud: connecting to localhost:\d+ failed: ")

    asyncio.run(main())
    failure = re.search(r"Bridge cloud: connecting to localhost:\d+ failed: (.*)", gateway.log())
    assert failure is not None and re.search(reason, failure.group(1)), failure
    assert "Bridge cloud connected" not in gateway.log()


def test_window_is_the_upstream_receive_maximum(broker_factory):
    """A v5 upstream says how many QoS 1/2 it takes unacknowledged; a 3.1.1 one gets max_inflight."""
    upstream = broker_factory(config="[limits]\nmax_inflight_messages = 7\n")
    v5 = broker_factory(config=bridge_config(upstream.port, version="5"))
    v3 = broker_factory(config=bridge_config(upstream.port, version="3.1.1", extra="max_inflight = 5")
                        .replace('client_id = "gateway-1"', 'client_id = "gateway-2"'))

    async def main() -> None:
        await wait_log(v5, r"Bridge cloud connected to .*\(v5, session present 0, window 7\)")
        await wait_log(v3, r"Bridge cloud connected to .*\(v3\.1\.1, session present 0, window 5\)")

    asyncio.run(main())


def test_max_rate_paces_the_drain(broker_factory, mosquitto_factory):
    upstream = mosquitto_factory()

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port).start()
        proxy.down()
        gateway = broker_factory(config=bridge_config(proxy.port, extra="max_rate = 20"))
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 1)]),
                                    upstream.host, lambda: upstream.port).start()
        arrivals: list[float] = []
        deliveries = collector.subscriber.deliveries
        try:
            await publish([Publisher("dev", MQTT_5, [("site/sensors/a", 1)], random.Random(1))], gateway.port, 60)
            proxy.up()
            while len(arrivals) < 60:
                await wait_until(lambda: len(deliveries) > len(arrivals), 15, "the drain")
                arrivals.extend(time.monotonic() for _ in range(len(deliveries) - len(arrivals)))
            # 60 messages at 20/s with a burst of 2: about 2.9 s; unpaced it takes milliseconds.
            assert arrivals[-1] - arrivals[0] >= 2.4, arrivals[-1] - arrivals[0]
        finally:
            await collector.close()
            await proxy.close()

    asyncio.run(main())


@pytest.mark.parametrize("version", [4, 5])
def test_no_device_can_take_the_bridge_session(broker_factory, mosquitto_factory, version):
    """The bridge's local session is its backlog: a client using its id is refused."""
    from broker.protocol.packets import Connect

    from fault.mqttclient import Link

    upstream = mosquitto_factory()
    gateway = broker_factory(config=bridge_config(upstream.port))

    async def main() -> None:
        await wait_log(gateway, "Bridge cloud connected")
        opened = await Link.open("127.0.0.1", gateway.port, Connect("$bridge/cloud", version, clean_start=False))
        assert opened is not None
        link, connack = opened
        assert connack.reason_code == (0x85 if version == 5 else 0x02)  # client identifier not valid
        link.abort()

    asyncio.run(main())
    forwards(gateway, upstream)  # the bridge was not disturbed
    assert gateway.log().count("Bridge cloud connected") == 1


def test_a_removed_bridge_leaves_a_warning(broker_factory, mosquitto_factory):
    upstream = mosquitto_factory()
    gateway = broker_factory(config=bridge_config(upstream.port))
    forwards(gateway, upstream)
    assert gateway.stop() == 0
    plain = broker_factory(data_dir=gateway.data_dir)
    plain.wait_for_log(r"session \$bridge/cloud belongs to a bridge that is no longer configured")


@pytest.mark.parametrize("insecure", [False, True])
def test_host_name_check_is_off_only_on_request(broker_factory, mosquitto_factory, certs, insecure):
    """A certificate for another host name is refused unless ``insecure = true`` says otherwise."""
    upstream, tls_port = tls_upstream(mosquitto_factory, certs, "elsewhere")
    extra = (f'cafile = "{certs / "ca.crt"}"\ncertfile = "{certs / "client.crt"}"\n'
             f'keyfile = "{certs / "client.key"}"\ninsecure = {"true" if insecure else "false"}')
    gateway = broker_factory(config=bridge_config(tls_port, extra=extra).replace("127.0.0.1:", "localhost:"))
    if insecure:
        forwards(gateway, upstream)
        return

    async def main() -> None:
        await wait_log(gateway, r"Bridge cloud: connecting to localhost:\d+ failed: ")

    asyncio.run(main())
    assert re.search(r"failed: TLS: server certificate not accepted: .*[Hh]ostname mismatch", gateway.log()), \
        gateway.log()


def test_messages_the_upstream_refuses_do_not_block_the_backlog(broker_factory, mosquitto_factory, tmp_path):
    """A v5 upstream answers PUBACK 0x87 (not authorized) for a topic its ACL denies: those messages
    are finished (counted, logged once), the others keep flowing."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite gw1/sensors/ok/#\ntopic read gw1/sensors/#\n")
    upstream = mosquitto_factory(config=f"acl_file {acl}")
    gateway = broker_factory(config=bridge_config(upstream.port, version="5"))

    async def main() -> None:
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 1)]),
                                    upstream.host, lambda: upstream.port).start()
        try:
            await wait_log(gateway, "Bridge cloud connected")
            await publish([Publisher("dev", MQTT_5, [("site/sensors/denied", 1)], random.Random(1))], gateway.port, 5)
            await publish([Publisher("dev2", MQTT_5, [("site/sensors/ok/x", 1)], random.Random(1))], gateway.port, 1)
            await wait_until(lambda: bool(collector.subscriber.deliveries), 10, "the allowed message")
            assert [d.msg_id for d in collector.subscriber.deliveries] == ["dev2:1"]
            await wait_log(gateway, r"Bridge cloud: the upstream refused a message \(code 0x87")
        finally:
            await collector.close()

    asyncio.run(main())
    assert gateway.log().count("the upstream refused a message") == 1
