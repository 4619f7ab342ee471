# Persistent session. phase "subscribe": subscribe at QoS 2 and leave.
# phase "collect": come back (no new SUBSCRIBE) and receive n messages queued meanwhile.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid, phase, n = arg(1), int(arg(2)), arg(3), arg(4), int(arg(5, "0"))
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=10)
c.set_callback(inbox, info=True)
out("PRESENT", int(c.connect(clean_session=False)))
if phase == "subscribe":
    out("SUBACK", c.subscribe("edge/%s/cmd/#" % cid, 2))
else:
    while inbox.n < n:
        c.wait_msg()
    t0 = ticks_ms()
    while elapsed(t0) < 300:  # let the last QoS 2 handshakes finish
        c.step(50)
out("DONE", inbox.n)
c.disconnect()
