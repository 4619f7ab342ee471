"""A bounded fuzz run in CI (issue 15): mutated MQTT 3.1.1 and 5 packets against the codec and a live broker.

The broker must log no traceback, keep answering, and keep serving a canary.
``FUZZ_SEED=n`` replays a run; ``FUZZ_SECONDS`` makes it longer. The hour-long
run is ``python -m bench.fuzz --minutes 60``.
"""

from __future__ import annotations

import os
import random

from bench.fuzz import fuzz_broker, fuzz_codec, ping

SECONDS = float(os.environ.get("FUZZ_SECONDS", "15"))


def seed() -> int:
    value = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
    print(f"FUZZ_SEED={value}")
    return value


def test_the_codec_answers_every_mutation_with_packets_or_an_mqtt_error() -> None:
    assert fuzz_codec(SECONDS / 3, seed()) > 1000


def test_a_live_broker_survives_mutated_packets(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    canary = canary_factory(broker.port)
    cases = fuzz_broker(broker.port, SECONDS, seed(), lambda: broker_process_alive(broker.pid))
    assert cases > 100
    assert ping(broker.port)
    canary.stop().check()
    log = broker.log()
    assert "Traceback" not in log and "broker: critical:" not in log, log[log.find("Traceback") - 3000 :][:8000]


def broker_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
