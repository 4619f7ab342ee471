"""A mutation fuzzer for the MQTT codec and for a live broker.

    python -m bench.fuzz --minutes 60                 # an hour against a broker it starts
    python -m bench.fuzz --minutes 5 --codec-only     # the decoder alone, in process
    python -m bench.fuzz --seed 1234 --minutes 1      # replay a run

Seeds are valid MQTT 3.1.1 and 5 packets of every type a client sends, with
properties, wills, shared filters and wildcards. Each case takes a few of them
and mutates the bytes (bit flips, interesting values, insertions, deletions,
truncation, splices, rewritten lengths). The codec must answer every case with
packets or an ``MQTTError``, nothing else; the broker must stay up, log no
traceback, keep answering PINGREQ and keep serving a canary client
(``bench/canary.py``) without a gap above one second.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.canary import varint
from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, encode
from broker.protocol.errors import MQTTError
from broker.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    SubscriptionOptions,
    Unsubscribe,
    Will,
)

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x20, 0x30, 0x2F, 0x23, 0x2B, 0x24)


def seed_connects(version: int) -> list[bytes]:
    props = {P.SESSION_EXPIRY_INTERVAL: 60, P.RECEIVE_MAXIMUM: 10, P.TOPIC_ALIAS_MAXIMUM: 5,
             P.USER_PROPERTY: [("k", "v")], P.MAXIMUM_PACKET_SIZE: 1000} if version == 5 else {}
    will_props = {P.WILL_DELAY_INTERVAL: 1, P.CONTENT_TYPE: "text"} if version == 5 else {}
    return [
        encode(Connect("fuzz", version, keepalive=30, properties=props), version),
        encode(Connect("fuzz-w", version, clean_start=False, keepalive=10, username="user", password=b"pw",
                       will=Will("fuzz/will", b"gone", 1, True, will_props), properties=props), version),
        encode(Connect("", version, keepalive=0), version),
    ]


def seed_packets(version: int) -> list[bytes]:
    v5 = version == 5
    pub_props = {P.MESSAGE_EXPIRY_INTERVAL: 5, P.TOPIC_ALIAS: 1, P.RESPONSE_TOPIC: "fuzz/r",
                 P.CORRELATION_DATA: b"c", P.USER_PROPERTY: [("a", "b")], P.PAYLOAD_FORMAT_INDICATOR: 1} if v5 else {}
    sub_props = {P.SUBSCRIPTION_IDENTIFIER: [7]} if v5 else {}
    options = SubscriptionOptions(1, no_local=v5, retain_as_published=v5, retain_handling=1 if v5 else 0)
    packets = [
        Publish("fuzz/a", b"hello", 0),
        Publish("fuzz/b", b"x" * 40, 1, retain=True, packet_id=1, properties=pub_props),
        Publish("fuzz/c/d", b"\x00\xff", 2, packet_id=2, properties=pub_props),
        Publish("fuzz/retained", b"", 0, retain=True),
        Puback(1), Pubrec(2), Pubrel(2), Pubcomp(2),
        Subscribe(3, [("fuzz/#", options), ("fuzz/+/d", SubscriptionOptions(2)), ("$share/g/fuzz/a", SubscriptionOptions(1))],
                  sub_props),
        Unsubscribe(4, ["fuzz/#", "$share/g/fuzz/a"]),
        Pingreq(),
    ]
    if v5:
        packets.append(Auth(0x18, {P.AUTHENTICATION_METHOD: "x"}))
        packets.append(Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 0}))
    else:
        packets.append(Disconnect())
    return [encode(p, version) for p in packets]


SEEDS = {version: (seed_connects(version), seed_packets(version)) for version in (4, 5)}


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One to four random mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        if not buf:
            buf += bytes([rng.randrange(256)])
            continue
        pos = rng.randrange(len(buf))
        if kind == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[pos] = rng.choice(INTERESTING)
        elif kind == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            del buf[pos : pos + rng.randint(1, 8)]
        elif kind == 4:
            del buf[pos:]
        elif kind == 5:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
        elif kind == 6:  # rewrite the remaining length to something else
            length = rng.choice((0, 1, 2, 127, 128, 16383, 16384, len(buf), len(buf) + 1, 2**21, 268_435_455))
            i = 1
            while i < len(buf) and buf[i] & 0x80:
                i += 1
            buf[1 : i + 1] = varint(length)
        elif kind == 7:
            piece = buf[pos : pos + rng.randint(1, 16)]
            buf[pos:pos] = piece * rng.randint(1, 4)
        else:  # a length-prefixed field made to claim more than is there
            if pos + 1 < len(buf):
                buf[pos] = 0xFF
                buf[pos + 1] = rng.randrange(256)
    return bytes(buf)


def cases(rng: random.Random) -> Iterator[tuple[int, bytes]]:
    """(version, bytes of one connection's input): a CONNECT (mutated now and then) and packets."""
    while True:
        version = rng.choice((4, 5))
        connects, packets = SEEDS[version]
        pool = connects + packets
        first = rng.choice(connects)
        if rng.random() < 0.25:
            first = mutate(first, rng, pool)
        body = [rng.choice(packets) for _ in range(rng.randint(1, 6))]
        index = rng.randrange(len(body))
        body[index] = mutate(body[index], rng, pool)
        yield version, first + b"".join(body)


def fuzz_codec(seconds: float, seed: int) -> int:
    """Feed cases to PacketReader in random splits; anything but packets or MQTTError is a bug."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    count = 0
    for _version, data in cases(rng):
        reader = PacketReader(max_packet_size=rng.choice((1 << 20, 268_435_460)))
        pos = 0
        try:
            while pos < len(data):
                step = rng.randint(1, max(1, len(data) - pos))
                reader.feed(data[pos : pos + step])
                pos += step
        except MQTTError:
            pass
        except Exception as exc:
            raise AssertionError(f"codec raised {exc!r} on {data.hex()} (seed {seed}, case {count})") from exc
        count += 1
        if count % 256 == 0 and time.monotonic() > deadline:
            return count


def _talk(port: int, data: bytes, rng: random.Random) -> None:
    """Send one case over a fresh connection, read what comes back for a moment, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            pos = 0
            while pos < len(data):
                step = rng.randint(1, len(data) - pos)
                sock.sendall(data[pos : pos + step])
                pos += step
            sock.settimeout(0.02)
            while sock.recv(65536):
                pass
        except (TimeoutError, OSError):
            pass


def ping(port: int) -> bool:
    """A fresh client gets CONNACK and PINGRESP: the broker still answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(encode(Connect("fuzz-probe", 4, keepalive=30), 4) + b"\xc0\x00")
            got = b""
            deadline = time.monotonic() + 5
            while b"\xd0\x00" not in got and time.monotonic() < deadline:
                chunk = sock.recv(1024)
                if not chunk:
                    return False
                got += chunk
            return got.startswith(b"\x20\x02\x00\x00") and b"\xd0\x00" in got
    except OSError:
        return False


def fuzz_broker(port: int, seconds: float, seed: int, alive: Callable[[], bool] = lambda: True) -> int:
    """Send cases to a running broker for ``seconds``; checks it answers every 200 cases."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    count = 0
    for _version, data in cases(rng):
        _talk(port, data, rng)
        count += 1
        if count % 200 == 0:
            if not alive() or not ping(port):
                raise AssertionError(f"the broker stopped answering after {count} cases (seed {seed})")
        if time.monotonic() > deadline:
            return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--codec-only", action="store_true")
    parser.add_argument("--port", type=int, help="fuzz a broker already running on this port")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    seconds = args.minutes * 60
    print(f"seed {seed}", flush=True)
    if args.codec_only:
        print(f"codec: {fuzz_codec(seconds, seed)} cases, no unexpected exception")
        return 0
    from bench.brokers import raise_nofile_limit
    from bench.canary import Canary
    from bench.robustness import SourceBroker

    if args.port:
        port, check = args.port, (lambda: True)
        broker = None
    else:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
        raise_nofile_limit(4096)
        broker = SourceBroker(workdir, None)
        broker.start()
        port, check = broker.port, (lambda: broker.running)
    canary = Canary("127.0.0.1", port)
    try:
        count = fuzz_broker(port, seconds * 0.8, seed, check)
        codec = fuzz_codec(seconds * 0.2, seed)
    finally:
        result = canary.stop()
        if broker is not None:
            log = broker.log_path.read_text(errors="replace")
            broker.stop()
            if "Traceback" in log:
                print(log[log.index("Traceback") - 2000 :][:6000])
                print("FAILED: a traceback in the broker log")
                return 1
    print(f"broker: {count} cases; codec: {codec} cases; canary {result}")
    result.check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
