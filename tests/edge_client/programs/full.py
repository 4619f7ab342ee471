# A full outbox, as the caller chooses: "block" keeps the connection going until there is
# room (nothing dropped), "raise" raises OutboxFull, "refuse" returns False.
from edgeprog import arg, out

from edge_client import MQTTClient
from edge_client.packets import OutboxFull

host, port, cid, n = arg(1), int(arg(2)), arg(3), int(arg(4))
c = MQTTClient(cid, host, port, keepalive=10, outbox_size=3, max_inflight=2, on_full="block")
c.connect()
for i in range(n):
    c.publish("edge/%s/full" % cid, "m %d" % i, qos=1)
out("FLUSHED", c.flush(10000), "DROPPED", c.s.dropped)
c.disconnect()  # offline from here: nothing can make room
for i in range(3):
    c.publish("edge/%s/full" % cid, "late %d" % i, qos=1)
out("REFUSED", c.publish("edge/%s/full" % cid, "x", qos=1, on_full="refuse"))
try:
    c.publish("edge/%s/full" % cid, "x", qos=1, on_full="raise")
    out("NOT RAISED")
except OutboxFull:
    out("RAISED")
try:
    c.publish("edge/%s/full" % cid, "x", qos=1)  # block, but no connection can make room
    out("NOT RAISED")
except OutboxFull:
    out("RAISED")
out("DONE", c.pending())
