#!/usr/bin/env python3
"""Raspberry Pi gateway: reads the sensors attached to the Pi and publishes them to the
broker through edge_client's asyncio client, with the outbox on the SD card so that
no reading is lost while the uplink or the broker is away, or the Pi reboots.

Sensors found under /sys (or --sysfs-root):
  * DS18B20 1-Wire thermometers: bus/w1/devices/28-*/w1_slave (enable dtoverlay=w1-gpio)
  * the SoC temperature: class/thermal/thermal_zone*/temp
With --simulate (or when nothing is found) a simulated thermometer stands in.

Each reading goes to <prefix>/<sensor> as JSON {"seq", "value", "unit", "ts"} at QoS 1;
<prefix>/status is a retained "online"/"offline" (the latter as last will).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from edge_client.aio import MQTTClient  # noqa: E402
from edge_client.packets import MQTTException  # noqa: E402


class Sensor:
    """A named source of readings; read() returns None when the sensor has no value now."""

    def __init__(self, name: str, read: Callable[[], float | None]) -> None:
        self.name = name
        self.read = read


def ds18b20(path: str) -> Callable[[], float | None]:
    def read() -> float | None:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        # line 1 ends in YES when the CRC matched; line 2 ends in t=<millidegrees>
        if len(lines) < 2 or not lines[0].strip().endswith("YES") or "t=" not in lines[1]:
            return None
        return int(lines[1].rsplit("t=", 1)[1]) / 1000

    return read


def thermal_zone(path: str) -> Callable[[], float | None]:
    def read() -> float | None:
        try:
            with open(path) as f:
                return int(f.read().strip()) / 1000
        except (OSError, ValueError):
            return None

    return read


def simulated() -> Callable[[], float | None]:
    value = [21.0]

    def read() -> float | None:
        value[0] = round(value[0] + random.uniform(-0.2, 0.2), 2)
        return value[0]

    return read


def find_sensors(sysfs_root: str, simulate: bool) -> list[Sensor]:
    sensors = []
    for path in sorted(glob.glob(os.path.join(sysfs_root, "bus/w1/devices/28-*/w1_slave"))):
        sensors.append(Sensor(os.path.basename(os.path.dirname(path)), ds18b20(path)))
    for path in sorted(glob.glob(os.path.join(sysfs_root, "class/thermal/thermal_zone*/temp"))):
        zone = os.path.dirname(path)
        try:
            with open(os.path.join(zone, "type")) as f:
                kind = f.read().strip()
        except OSError:
            kind = os.path.basename(zone)
        sensors.append(Sensor(kind.replace("/", "_"), thermal_zone(path)))
    if simulate or not sensors:
        sensors.append(Sensor("simulated", simulated()))
    return sensors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="localhost", help="broker host name or address")
    p.add_argument("--port", type=int, default=0, help="broker port (default 1883, 8883 with --tls)")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--client-id", default="gateway-" + socket.gethostname())
    p.add_argument("--prefix", help="topic prefix (default gateway/<client id>)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between readings")
    p.add_argument("--outbox", default="/var/lib/edge-gateway/outbox.bin", help="outbox file ('' keeps it in RAM)")
    p.add_argument("--outbox-size", type=int, default=10000, help="readings kept while offline")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cafile", help="CA certificate for --tls (default: the system's)")
    p.add_argument("--sysfs-root", default="/sys")
    p.add_argument("--simulate", action="store_true", help="add a simulated thermometer")
    p.add_argument("--count", type=int, default=0, help="stop after this many rounds (0: run until SIGTERM)")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    prefix = args.prefix or f"gateway/{args.client_id}"
    sensors = find_sensors(args.sysfs_root, args.simulate)
    print("sensors:", ", ".join(s.name for s in sensors), flush=True)
    if args.outbox:
        os.makedirs(os.path.dirname(os.path.abspath(args.outbox)), exist_ok=True)
    client = MQTTClient(
        args.client_id, args.host, args.port, args.user, args.password, keepalive=30,
        ssl=args.tls, ssl_params={"cafile": args.cafile} if args.cafile else {},
        outbox=args.outbox or None, outbox_size=args.outbox_size, backoff_ms=(500, 30000),
    )
    client.set_last_will(f"{prefix}/status", "offline", retain=True, qos=1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await client.connect(clean_session=False)  # the broker keeps what is in flight
        print("connected", flush=True)
    except (OSError, MQTTException) as e:
        print(f"broker unreachable ({e!r}); readings wait in the outbox", flush=True)
    await client.publish(f"{prefix}/status", "online", retain=True, qos=1)
    seq = 0
    while not stop.is_set():
        for sensor in sensors:
            value = sensor.read()
            if value is None:
                continue
            reading = {"seq": seq, "value": value, "unit": "C", "ts": round(time.time(), 3)}
            if not await client.publish(f"{prefix}/{sensor.name}", json.dumps(reading), qos=1):
                print("outbox full: reading refused", flush=True)
        seq += 1
        print(f"round {seq}: {client.pending()} pending", flush=True)
        if args.count and seq >= args.count:
            break
        try:
            await asyncio.wait_for(stop.wait(), args.interval)
        except asyncio.TimeoutError:
            pass
    await client.publish(f"{prefix}/status", "offline", retain=True, qos=1)
    delivered = await client.flush(10000)
    print("pending at exit:", client.pending(), flush=True)
    await client.disconnect()
    return 0 if delivered else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
