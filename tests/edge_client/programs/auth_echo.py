# A user name and password in CONNECT: echo one message, or report the broker's refusal.
from edgeprog import Inbox, arg, elapsed, out, ticks_ms

from edge_client import MQTTClient
from edge_client.packets import MQTTException

host, port, cid, user, password = arg(1), int(arg(2)), arg(3), arg(4), arg(5)
inbox = Inbox()
c = MQTTClient(cid, host, port, user=user, password=password, keepalive=10, reconnect=False)
c.set_callback(inbox, info=True)
try:
    c.connect()
except MQTTException as e:
    out("REFUSED", e.args[0])
else:
    out("SUBACK", c.subscribe("edge/%s/echo" % cid, 1))
    c.publish("edge/%s/echo" % cid, "with a password", qos=1)
    t0 = ticks_ms()
    while inbox.n < 1 and elapsed(t0) < 10000:
        c.step(100)
    out("DONE", inbox.n)
    c.disconnect()
