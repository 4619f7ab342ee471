# Readings at QoS 2 through the file outbox, with the reading counter in a file written
# atomically after each publish: the test kills this program (kill -9) at random moments.
import os

from edgeprog import arg, out, sleep_ms

from edge_client import MQTTClient

host, port, cid, path, n = arg(1), int(arg(2)), arg(3), arg(4), int(arg(5))
seq_path = path + ".seq"


def load():
    try:
        with open(seq_path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def save(seq):
    with open(seq_path + ".tmp", "w") as f:
        f.write(str(seq))
    os.rename(seq_path + ".tmp", seq_path)


seq = load()
c = MQTTClient(cid, host, port, keepalive=5, timeout=3, backoff_ms=(50, 400), outbox=path, outbox_size=0)
try:
    c.connect(clean_session=False)
except OSError:
    pass
out("START", seq, c.pending())
while seq < n:
    c.publish("edge/%s/seq" % cid, "seq %d" % seq, qos=2)  # on flash first
    seq += 1
    save(seq)
    c.step(0)
    sleep_ms(10)  # a reading every 10 ms or so: the kills land mid-stream
out("FLUSHED", c.flush(30000))
out("DONE", c.pending())
c.disconnect()
