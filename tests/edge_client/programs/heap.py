# Heap used by an MQTT client after import, connect and subscribe (MicroPython, gc.mem_alloc).
# Same steps for every library measured: "ours", "ours-file" (outbox on flash) and "umqtt".
import gc
import sys

which, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
gc.collect()
base = gc.mem_alloc()
if which == "umqtt":
    from umqtt.simple import MQTTClient

    c = MQTTClient("heap-umqtt", host, port, keepalive=30)
else:
    from edge_client import MQTTClient

    box = sys.argv[4] if which == "ours-file" else None
    c = MQTTClient("heap-" + which, host, port, keepalive=30, outbox=box)
c.set_callback(lambda t, m: None)
c.connect()
c.subscribe(b"heap/#", 1)
gc.collect()
print("HEAP", gc.mem_alloc() - base)
c.disconnect()
