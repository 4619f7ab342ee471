# The burst from issue 14: connect, subscribe at QoS 0/1/2, publish 10 binary messages per
# QoS (payloads 4..703 bytes) to itself and poll check_msg(); then, for ours, a reconnect
# with a full outbox. Prints the live heap (gc.collect() before every sample) at idle and
# its high-water mark, sampled in the callback and after every call. With MODE "plain" no
# gc.collect() is forced (a real program's heap, fragmentation included) and no peak is taken.
#   burst.py umqtt|ours|ours-file HOST PORT CID measure|plain [OUTBOX_PATH]
import gc
import sys

from edgeprog import elapsed, out, ticks_ms

which, host, port, cid, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
gc.collect()
base = gc.mem_alloc()
peak = [0]


def sample():
    if mode == "plain":
        return
    gc.collect()
    m = gc.mem_alloc() - base
    if m > peak[0]:
        peak[0] = m


def payload(q, i):
    n = 4 + i * 699 // 9
    b = bytearray(n)
    for k in range(n):
        b[k] = (k * 31 + q * 7 + i) & 0xFF
    b[0] = i
    return b


got = [0, 0, 0]
bad = []


def on_message(topic, msg):
    q = topic[-1] - 48
    i = msg[0]
    if msg != payload(q, i):
        bad.append((topic, len(msg)))
    got[q] += 1
    sample()


qoss = (0, 1) if which == "umqtt" else (0, 1, 2)  # umqtt.simple has no QoS 2
if which == "umqtt":
    from umqtt.simple import MQTTClient

    c = MQTTClient(cid, host, port, keepalive=30)
else:
    from edge_client import MQTTClient

    c = MQTTClient(cid, host, port, keepalive=30, outbox=sys.argv[6] if which == "ours-file" else None)
c.set_callback(on_message)
c.connect()
topic = "burst/%s/q" % cid
for q in qoss:
    c.subscribe(topic + str(q), q)
gc.collect()
out("IDLE", gc.mem_alloc() - base)
for q in qoss:
    for i in range(10):
        c.publish(topic + str(q), payload(q, i), qos=q)
        sample()
        c.check_msg()
        sample()
t0 = ticks_ms()
while sum(got) < 10 * len(qoss) and elapsed(t0) < 20000:
    c.check_msg()
    sample()
out("GOT", got[0], got[1], got[2], "BAD", len(bad))
out("PEAK", peak[0])
if which != "umqtt":
    # A reconnect with a full outbox: offline, fill it, connect again, deliver.
    peak[0] = 0
    c.disconnect()
    n = 0
    while c.pending() < 32:
        c.publish(topic + "x", payload(1, n % 10), qos=1)
        n += 1
        sample()
    c.connect(clean_session=False)
    sample()
    out("FLUSHED", c.flush(20000))
    sample()
    out("RECONNECT_PEAK", peak[0])
c.disconnect()
out("DONE")
