# TLS through the platform ssl module: verify the broker's certificate, echo one message.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid, cafile = arg(1), int(arg(2)), arg(3), arg(4)
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=10, ssl=True, ssl_params={"cafile": cafile, "server_hostname": "localhost"})
c.set_callback(inbox, info=True)
c.connect()
out("SUBACK", c.subscribe("edge/%s/echo" % cid, 1))
c.publish("edge/%s/echo" % cid, "over tls", qos=1)
t0 = ticks_ms()
while inbox.n < 1 and elapsed(t0) < 10000:
    c.step(100)
out("DONE", inbox.n)
c.disconnect()
