# The asyncio client with a full outbox: "block" waits for room, "raise" raises OutboxFull.
import asyncio

from edgeprog import arg, out

from edge_client.aio import MQTTClient
from edge_client.packets import OutboxFull

host, port, cid, n = arg(1), int(arg(2)), arg(3), int(arg(4))


async def main():
    c = MQTTClient(cid, host, port, keepalive=10, outbox_size=3, max_inflight=2, on_full="block")
    await c.connect()
    for i in range(n):
        await c.publish("edge/%s/full" % cid, "m %d" % i, qos=1)
    out("FLUSHED", await c.flush(10000), "DROPPED", c.s.dropped)
    await c.disconnect()
    for i in range(3):
        await c.publish("edge/%s/full" % cid, "late %d" % i, qos=1)
    out("REFUSED", await c.publish("edge/%s/full" % cid, "x", qos=1, on_full="refuse"))
    try:
        await c.publish("edge/%s/full" % cid, "x", qos=1, on_full="raise")
        out("NOT RAISED")
    except OutboxFull:
        out("RAISED")
    try:
        await c.publish("edge/%s/full" % cid, "x", qos=1)  # block, but no connection can make room
        out("NOT RAISED")
    except OutboxFull:
        out("RAISED")
    out("DONE", c.pending())


asyncio.run(main())
