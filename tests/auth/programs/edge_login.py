# The device client logs in with a user name and password (MicroPython and CPython).
# argv: host port user password client_id. Prints REFUSED <code> or the results of a round trip.
import sys
import time

from edge_client import MQTTClient
from edge_client.packets import MQTTException

host, port, user, password, cid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
got = []


def on_message(topic, msg):
    got.append((topic, msg))


c = MQTTClient(cid, host, port, user=user, password=password, keepalive=10, reconnect=False)
c.set_callback(on_message)
try:
    c.connect()
except MQTTException as exc:
    print("REFUSED", exc.args[0])
    sys.exit(0)
print("CONNECTED")
print("SUBACK", c.subscribe("devices/%s/cmd" % cid, 1))
try:
    c.subscribe("devices/other/cmd", 1)
    print("SUBACK-OTHER granted")
except MQTTException as exc:
    print("SUBACK-OTHER", exc.args[0])
c.publish("devices/%s/cmd" % cid, "ping", qos=1)
for _ in range(100):  # up to 5 s for our own message to come back
    c.check_msg()
    if got:
        break
    time.sleep(0.05)
for topic, msg in got:
    print("GOT", topic.decode(), msg.decode())
c.disconnect()
