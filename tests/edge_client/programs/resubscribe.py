# Clean session: after the broker restarts it has no session, so the client must make
# its subscription again by itself. Waits for n messages.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid, n = arg(1), int(arg(2)), arg(3), int(arg(4))
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=5, timeout=3, backoff_ms=(100, 800))
c.set_callback(inbox, info=True)
out("PRESENT", int(c.connect()))
out("SUBACK", c.subscribe("edge/%s/x" % cid, 1))
out("READY")
t0 = ticks_ms()
while inbox.n < n and elapsed(t0) < 30000:
    c.step(50)
out("DONE", inbox.n)
c.disconnect()
