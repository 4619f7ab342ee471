"""The bridge outage test of issue 11, with our broker or mosquitto as the gateway.

Run from the repository root:

    python bench/bridge_outage.py --gateway ours
    python bench/bridge_outage.py --gateway mosquitto

The scenario is the one the CI test runs (``tests/bridge/harness.outage_with_crashes``):
two local devices (3.1.1 and 5) publish QoS 1 and 2 to ``site/sensors/...``; the uplink (a
TCP proxy) goes down; the gateway is killed with SIGKILL during the outage, restarted,
the uplink comes back, and the gateway is killed again while the backlog drains. The
upstream is a real mosquitto with a persistent QoS 2 subscriber on ``gw1/sensors/#``.
The devices' record of what the gateway acknowledged is compared with what arrived.

The mosquitto gateway is configured as equivalently as mosquitto allows: persistence on
with ``autosave_interval 1`` (the most frequent save), unlimited queues, a bridge with
``cleansession false``, ``try_private true``, ``restart_timeout 1``, ``topic sensors/# out 2
site/ gw1/``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from brokerprocess import BrokerProcess, MosquittoProcess  # noqa: E402

from broker.protocol.packets import MQTT_3_1_1, MQTT_5  # noqa: E402
from fault.mqttclient import Publisher, Subscriber  # noqa: E402
from tests.bridge.harness import Collector, Proxy, bridge_config, delivery_report, outage_with_crashes  # noqa: E402

TOPICS = [("site/sensors/a", 1), ("site/sensors/a", 2), ("site/sensors/b", 2)]


def mosquitto_gateway(directory: Path, proxy_port: int) -> MosquittoProcess:
    bridge = "\n".join([
        "autosave_interval 1",
        "max_queued_messages 0",
        "connection cloud",
        f"address 127.0.0.1:{proxy_port}",
        "bridge_protocol_version mqttv311",
        "cleansession false",
        "clientid gateway-1",
        "keepalive_interval 5",
        "restart_timeout 1",
        "try_private true",
        "topic sensors/# out 2 site/ gw1/",
    ])
    return MosquittoProcess(directory, True, bridge)


async def run(kind: str, scale: int, seed: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bridge-outage-") as tmp:
        root = Path(tmp)
        for name in ("up", "gw"):
            (root / name).mkdir()
        upstream = MosquittoProcess(root / "up", True, "").start()
        proxy = await Proxy(upstream.host, upstream.port).start()
        gateway: BrokerProcess | MosquittoProcess
        if kind == "ours":
            config = root / "gateway.toml"
            config.write_text(bridge_config(proxy.port))
            gateway = BrokerProcess(root / "gw", ["-c", str(config)], REPO).start()
        else:
            gateway = mosquitto_gateway(root / "gw", proxy.port).start()
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 2)]),
                                    upstream.host, lambda: upstream.port).start()
        rng = random.Random(seed)
        publishers = [Publisher("dev-v3", MQTT_3_1_1, TOPICS, rng), Publisher("dev-v5", MQTT_5, TOPICS, rng)]
        try:
            await asyncio.sleep(2)  # the bridge connects
            await outage_with_crashes(gateway, proxy, collector.subscriber, publishers, scale)
            return delivery_report(publishers, collector.subscriber)
        finally:
            await collector.close()
            await proxy.close()
            gateway.cleanup()
            upstream.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", choices=("ours", "mosquitto"), default="ours")
    parser.add_argument("--scale", type=int, default=1, help="multiplies the number of messages per phase")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    report = asyncio.run(run(args.gateway, args.scale, args.seed))
    missing = report["missing"]
    duplicated = report["qos2_duplicated"]
    assert isinstance(missing, list) and isinstance(duplicated, list)
    print(f"gateway: {args.gateway}")
    print(f"  acknowledged by the gateway (QoS 1/2): {report['acknowledged']}")
    print(f"  arrived upstream:                      {report['arrived']}")
    print(f"  lost:                                  {len(missing)}")
    print(f"  QoS 2 delivered more than once:        {len(duplicated)}")
    print(f"  out of order (per publisher and QoS):  {report['reordered']}")
    print(f"  QoS 1 duplicates (allowed):            {report['duplicates']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
