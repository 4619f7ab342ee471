# Sensor node: one temperature reading per interval, published at QoS 1 through the
# edge_client outbox on flash, so no reading is lost to a Wi-Fi outage, a broker
# restart, a reset or deep sleep. Runs on ESP32 / Pico W, and on the MicroPython
# Unix port with simulated hardware (see board.py).
import os

import board
import config

from edge_client import MQTTClient

try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:  # CPython
    from edge_client.compat import sleep_ms, ticks_diff, ticks_ms


def load_seq(path):
    # The temp file counts too: a reset between removing the old file and the rename
    # (FAT cannot rename over a file) leaves only it.
    for p in (path, path + ".tmp"):
        try:
            with open(p) as f:
                return int(f.read())
        except (OSError, ValueError):
            pass
    return 0


def save_seq(path, seq):
    """Atomically: a reset mid-write must not restart the sequence at 0."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(seq))
    try:
        os.rename(tmp, path)  # atomic on littlefs (ESP32, Pico W) and POSIX
    except OSError:  # FAT: no rename over an existing file
        os.remove(path)
        os.rename(tmp, path)


def credentials():
    """user, password, ssl and ssl_params for MQTTClient from config.py (on the
    simulation, EDGE_USER, EDGE_PASSWORD, EDGE_SSL=1, EDGE_CA, EDGE_CERT, ... override)."""
    user = board.setting("USER", config.USER)
    password = board.setting("PASSWORD", config.PASSWORD)
    if str(board.setting("SSL", config.SSL)) not in ("True", "1"):
        return user, password, False, {}
    params = {"cafile": board.setting("CA", config.CA)}
    cert = board.setting("CERT", config.CERT)
    if cert:
        params["cert"] = cert
        params["key"] = board.setting("KEY", config.KEY)
    name = board.setting("SERVER_HOSTNAME", config.SERVER_HOSTNAME)
    if name:
        params["server_hostname"] = name
    return user, password, True, params


def main():
    cid = board.setting("CLIENT_ID", config.CLIENT_ID) or "sensor-" + board.unique_id()
    host = board.setting("BROKER", config.BROKER)
    port = int(board.setting("PORT", config.PORT))
    interval = int(board.setting("INTERVAL_MS", config.INTERVAL_MS))
    deep_sleep = str(board.setting("DEEP_SLEEP", config.DEEP_SLEEP)) in ("True", "1")
    flush_ms = int(board.setting("FLUSH_MS", config.FLUSH_MS))
    cycles = int(board.setting("CYCLES", 0))  # 0: forever (the simulation sets a limit)
    topic = config.TOPIC.replace("{id}", cid)
    seq_path = board.STATE_DIR + "seq.txt"

    user, password, ssl, ssl_params = credentials()
    client = MQTTClient(
        cid, host, port, user, password, keepalive=30, timeout=5, ssl=ssl, ssl_params=ssl_params,
        outbox=board.STATE_DIR + config.OUTBOX, outbox_size=config.OUTBOX_SIZE,
        backoff_ms=(500, 30000),
    )
    if board.wifi_connect(config.WIFI_SSID, config.WIFI_PASSWORD, 15000):
        try:
            # A persistent session: the broker keeps what is in flight across our
            # resets and its restarts, so no reading waiting for its ack is lost.
            client.connect(clean_session=False)
        except Exception as e:  # the broker may be away: readings wait in the outbox
            print("OFFLINE", repr(e))
    else:
        print("NO WIFI")

    n = 0
    while True:
        seq = load_seq(seq_path)
        value = board.read_temperature()
        client.publish(topic, '{"seq":%d,"t":%.1f}' % (seq, value), qos=1)  # on flash first
        save_seq(seq_path, seq + 1)
        print("READING", seq, "%.1f" % value)
        n += 1
        if deep_sleep:
            deliver(client, flush_ms)
            print("PENDING", client.pending())
            client.disconnect()  # what is still pending stays in the outbox file
            board.deep_sleep(interval)
            return
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < interval:
            client.step(100)  # acks, pings, reconnects with backoff
        if cycles and n >= cycles:
            break
    deliver(client, flush_ms)
    print("PENDING", client.pending())
    client.disconnect()


def deliver(client, flush_ms):
    try:
        client.flush(flush_ms)
    except OSError:
        pass  # never connected (no Wi-Fi): the readings wait on flash for the next wake


main()
