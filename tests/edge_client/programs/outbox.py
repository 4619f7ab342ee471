# Queues n QoS 1 readings while the broker may be unreachable.
# mode "exit": stop right after queueing (a reset); "deliver": wait until all are acknowledged.
# Optional: the outbox size (default 32), how long to try delivering (ms, default 30000),
# and a file whose appearance starts the delivery (the test's peer is ready then).
# On MicroPython it also prints the live heap after queueing and after delivery.
import gc
import os

from edgeprog import arg, out, sleep_ms

from edge_client import MQTTClient

host, port, cid, n, path, mode = arg(1), int(arg(2)), arg(3), int(arg(4)), arg(5), arg(6)
size, flush_ms, go = int(arg(7, 32)), int(arg(8, 30000)), arg(9)


def heap(what):
    if hasattr(gc, "mem_alloc"):
        gc.collect()
        out("HEAP", what, gc.mem_alloc())


c = MQTTClient(
    cid, host, port, keepalive=5, timeout=3, backoff_ms=(100, 800), outbox=None if path == "-" else path,
    outbox_size=size,
)
try:
    c.connect(clean_session=False)
    out("CONNECTED", c.pending())
except OSError:
    out("OFFLINE", c.pending())
for i in range(n):
    c.publish("edge/%s/readings" % cid, "reading %d" % i, qos=1)
out("QUEUED", c.pending())
heap("queued")
if mode == "exit":
    out("EXIT")
else:
    while go:
        try:
            os.stat(go)
            break
        except OSError:
            sleep_ms(50)
    out("FLUSHED", c.flush(flush_ms))
    out("DONE", c.pending())
    heap("delivered")
    c.disconnect()
