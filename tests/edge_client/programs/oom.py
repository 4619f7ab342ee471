# A MemoryError inside the client drops what it must, says so, and the next call works:
# the program takes nearly all of the heap, then a message comes back too large for
# what is left. step() must never raise; once the memory is back, messages flow again.
import gc

from edgeprog import arg, elapsed, out, ticks_ms

from edge_client import MQTTClient

host, port, cid = arg(1), int(arg(2)), arg(3)
topic = "oom/%s" % cid


def on_message(t, m):
    out("GOT", len(m))


c = MQTTClient(cid, host, port, keepalive=30, timeout=3, backoff_ms=(100, 400))
c.set_callback(on_message)
c.connect(clean_session=False)
out("SUBACK", c.subscribe(topic, 1))
big = bytes(6000)
small = bytes(300)
crumbs = None  # every global exists before the heap is full (the globals dict must not grow)
i = t0 = 0
hog = []
try:
    while True:
        hog.append(bytearray(256))
except MemoryError:
    pass
crumbs = []
try:
    while True:
        crumbs.append(bytearray(16))
except MemoryError:
    pass
# Nothing left at all: publish() and connect() must fail the documented ways.
out("PUB NO MEMORY", c.publish(topic, small, qos=1))  # True or False, never MemoryError
c.disconnect()
try:
    c.connect(clean_session=False)
    out("CONNECT NO MEMORY ok")
except OSError:
    out("CONNECT NO MEMORY OSError")
crumbs = None
for i in range(1, 13):  # about 3 KB back: not enough for a 6 KB receive buffer
    hog[-i] = None
gc.collect()
c.connect(clean_session=False)
gc.collect()
out("PUBLISHED", c.publish(topic, big, qos=1))  # goes out by reference, comes back too large
t0 = ticks_ms()
while elapsed(t0) < 2000:
    c.step(50)  # an uncaught MemoryError here ends the program with a traceback
hog = None
gc.collect()
out("LOST", c.s.lost)
c.publish(topic, "after", qos=1)
t0 = ticks_ms()
while elapsed(t0) < 5000:
    if not c.step(50):
        continue
    if c.pending() == 0 and elapsed(t0) > 500:
        break
c.disconnect()
out("DONE")
