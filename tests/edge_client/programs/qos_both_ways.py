# QoS 0/1/2 in both directions: subscribe to in/#, publish to out/*, wait for n_in messages.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid, n_in = arg(1), int(arg(2)), arg(3), int(arg(4))
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=10)
c.set_callback(inbox, info=True)
out("PRESENT", int(c.connect()))
out("SUBACK", c.subscribe("edge/%s/in/#" % cid, 2))
out("READY")
for q in (0, 1, 2):
    c.publish("edge/%s/out/q%d" % (cid, q), "payload-%d" % q, qos=q)
c.publish(b"edge/" + cid.encode() + b"/out/bin", bytes(range(256)), qos=2)
out("FLUSHED", c.flush(10000))
t0 = ticks_ms()
while inbox.n < n_in and elapsed(t0) < 15000:
    c.step(100)
out("DONE", inbox.n)
c.disconnect()
