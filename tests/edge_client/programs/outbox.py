# Queues n QoS 1 readings while the broker may be unreachable.
# mode "exit": stop right after queueing (a reset); "deliver": wait until all are acknowledged.
from edgeprog import arg, out

from edge_client import MQTTClient

host, port, cid, n, path, mode = arg(1), int(arg(2)), arg(3), int(arg(4)), arg(5), arg(6)
c = MQTTClient(cid, host, port, keepalive=5, timeout=3, backoff_ms=(100, 800), outbox=None if path == "-" else path)
try:
    c.connect()
    out("CONNECTED", c.pending())
except OSError:
    out("OFFLINE", c.pending())
for i in range(n):
    c.publish("edge/%s/readings" % cid, "reading %d" % i, qos=1)
out("QUEUED", c.pending())
if mode == "exit":
    out("EXIT")
else:
    out("FLUSHED", c.flush(30000))
    out("DONE", c.pending())
    c.disconnect()
