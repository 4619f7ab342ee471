# Retained both ways: receive one retained message, leave one retained behind.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid = arg(1), int(arg(2)), arg(3)
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=10)
c.set_callback(inbox, info=True)
c.connect()
out("SUBACK", c.subscribe("edge/%s/retained/in" % cid, 1))
c.publish("edge/%s/retained/out" % cid, "kept", retain=True, qos=1)
out("FLUSHED", c.flush(10000))
t0 = ticks_ms()
while inbox.n < 1 and elapsed(t0) < 10000:
    c.check_msg()
out("DONE", inbox.n)
c.disconnect()
