# The asyncio client: publishes n QoS 2 messages at an interval while receiving n_in,
# across broker restarts; then QoS 0 and 1 once each, and an unsubscribe.
import asyncio

from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client.aio import MQTTClient

host, port, cid, n, n_in, interval = arg(1), int(arg(2)), arg(3), int(arg(4)), int(arg(5)), int(arg(6))


async def main():
    inbox = Inbox()
    c = MQTTClient(cid, host, port, keepalive=5, timeout=3, backoff_ms=(100, 800))
    c.set_callback(inbox, info=True)
    out("PRESENT", int(await c.connect(clean_session=False)))
    out("SUBACK", await c.subscribe("edge/%s/in" % cid, 2))
    out("READY")
    reconnects = 0
    t0 = ticks_ms()
    for i in range(n):
        was_up = c.isconnected()
        await c.publish("edge/%s/out" % cid, "seq %d" % i, qos=2)
        out("SENT", i)
        await asyncio.sleep(interval / 1000)
        if c.isconnected() and not was_up:
            reconnects += 1
    while (inbox.n < n_in or c.pending()) and elapsed(t0) < 60000:
        was_up = c.isconnected()
        await asyncio.sleep(0.05)
        if c.isconnected() and not was_up:
            reconnects += 1
    await c.publish("edge/%s/out" % cid, "seq q0", qos=0)
    await c.publish("edge/%s/out" % cid, "seq q1", qos=1)
    out("FLUSHED", await c.flush(10000))
    await c.unsubscribe("edge/%s/in" % cid)
    out("UNSUBSCRIBED")
    await asyncio.sleep(0.3)  # let the last QoS 2 handshakes finish
    out("RECONNECTS", reconnects)
    out("DONE", c.pending(), inbox.n)
    await c.disconnect()


asyncio.run(main())
