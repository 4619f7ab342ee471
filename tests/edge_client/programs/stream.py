# Publishes n QoS 2 messages at an interval while receiving n_in, across broker restarts.
from edgeprog import Inbox, arg, elapsed, out, ticks_diff, ticks_ms

from edge_client import MQTTClient

host, port, cid, n, n_in, interval = arg(1), int(arg(2)), arg(3), int(arg(4)), int(arg(5)), int(arg(6))
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=5, timeout=3, backoff_ms=(100, 800))
c.set_callback(inbox, info=True)
out("PRESENT", int(c.connect(clean_session=False)))
out("SUBACK", c.subscribe("edge/%s/in" % cid, 2))
out("READY")
i = 0
reconnects = 0
was_up = True
t0 = next_at = ticks_ms()
while (i < n or inbox.n < n_in or c.pending()) and elapsed(t0) < 60000:
    up = c.isconnected()
    if up and not was_up:
        reconnects += 1
    was_up = up
    if i < n and ticks_diff(ticks_ms(), next_at) >= 0:
        c.publish("edge/%s/out" % cid, "seq %d" % i, qos=2)
        out("SENT", i)
        i += 1
        next_at += interval
    c.step(10)
t1 = ticks_ms()
while elapsed(t1) < 300:  # let the last QoS 2 handshakes finish
    c.step(50)
out("RECONNECTS", reconnects)
out("DONE", c.pending(), inbox.n)
c.disconnect()
