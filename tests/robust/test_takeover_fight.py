"""Issue 15 item 2: two devices sharing a client id must not stall everyone's QoS 1 traffic.

Each takeover left the old connection's stored-queue read running; thousands
piled up on the database thread ahead of the commits that every PUBACK waits
for (canary gaps of 6.9 s and 19.4 s). Stale reads are now cancelled and
skipped, reads queue in the event loop rather than ahead of commits, the fight
is logged once per client id, and ``max_takeovers_per_minute`` can refuse it.
"""

from __future__ import annotations

import re

from bench.robustness import Client, connect, takeover_fight
from broker.core.takeovers import TakeoverWatch


def test_the_watch_logs_a_fight_once_and_refuses_past_the_limit() -> None:
    watch = TakeoverWatch(max_per_minute=4)
    lines = [watch.taken_over("twin", "10.0.0.1:1", "10.0.0.2:2", now=float(i)) for i in range(4)]
    assert lines[0] == "client twin already connected, closing old connection"
    assert lines[1] == lines[0] and lines[3] is None
    assert lines[2] is not None and "10.0.0.1:1 and 10.0.0.2:2" in lines[2] and "3 takeovers" in lines[2]
    assert watch.refused("twin", now=10.0) and not watch.refused("other", now=10.0)
    assert not watch.refused("twin", now=61.0)  # a new minute
    assert watch.taken_over("twin", "a", "b", now=61.0) is not None  # and a fresh report
    watch.prune(now=200.0)
    assert len(watch) == 0
    assert not TakeoverWatch(0).refused("twin")


def test_a_takeover_fight_does_not_stall_the_commit_path(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    canary = canary_factory(broker.port)
    figures = takeover_fight(broker, seconds=8.0, queued=1000)
    result = canary.stop()
    assert figures["connects"] > 200, figures
    result.check()
    log = broker.log()
    fights = re.findall(r"client id twin is used by more than one client: (\S+) and (\S+) take", log)
    assert len(fights) <= (1 + 8 // 60 + 1) and fights, log[-3000:]
    assert {fights[0][0].split(":")[0], fights[0][1].split(":")[0]} == {"127.0.0.2", "127.0.0.3"}
    assert log.count("client twin already connected") == 2


def test_a_flapping_client_id_is_refused_past_the_limit(broker_factory) -> None:
    broker = broker_factory(config="[limits]\nmax_takeovers_per_minute = 3\n")
    clients = []
    answers = []
    for i in range(6):
        client = Client(broker.port, timeout=10, source=f"127.0.0.{2 + i % 2}")
        client.send(connect("flapper", 5))
        answers.append(client.expect(2)[1])
        clients.append(client)
    assert answers == [0, 0, 0, 0, 0x9F, 0x9F], answers
    # The connection that won is still served.
    clients[3].send(b"\xc0\x00")
    assert clients[3].expect(13) == b""
    for client in clients:
        client.close()
