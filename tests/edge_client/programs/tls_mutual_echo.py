# Mutual TLS through the platform ssl module: verify the broker, show our certificate, echo one message.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid, cafile, cert, key = arg(1), int(arg(2)), arg(3), arg(4), arg(5), arg(6)
params = {"cafile": cafile, "server_hostname": "localhost"}
if cert != "-":
    params["cert"] = cert
    params["key"] = key
inbox = Inbox()
c = MQTTClient(cid, host, port, keepalive=10, ssl=True, ssl_params=params)
c.set_callback(inbox, info=True)
c.connect()
out("SUBACK", c.subscribe("edge/%s/echo" % cid, 1))
c.publish("edge/%s/echo" % cid, "over mutual tls", qos=1)
t0 = ticks_ms()
while inbox.n < 1 and elapsed(t0) < 10000:
    c.step(100)
out("DONE", inbox.n)
c.disconnect()
