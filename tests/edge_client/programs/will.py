# Sets a last will, connects, then idles until the test kills it.
from edgeprog import arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid = arg(1), int(arg(2)), arg(3)
c = MQTTClient(cid, host, port, keepalive=10)
c.set_last_will("edge/%s/will" % cid, "gone", qos=1)
c.connect()
out("READY")
t0 = ticks_ms()
while elapsed(t0) < 20000:
    c.step(100)
out("TIMEOUT")
