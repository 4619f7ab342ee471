# Actuator: a relay switched by commands at QoS 2 on a persistent session, so that
# every command is carried out exactly once, including those sent while the board
# was offline, asleep or being reset. Runs on ESP32 / Pico W, and on the
# MicroPython Unix port with a simulated relay (see board.py).
import json

import board
import config

from edge_client import MQTTClient

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython
    from edge_client.compat import ticks_diff, ticks_ms


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
    cid = board.setting("CLIENT_ID", config.CLIENT_ID) or "actuator-" + board.unique_id()
    host = board.setting("BROKER", config.BROKER)
    port = int(board.setting("PORT", config.PORT))
    run_ms = int(board.setting("RUN_MS", 0))  # 0: forever (the simulation sets a limit)
    state_topic = config.STATE_TOPIC.replace("{id}", cid)
    online_topic = config.ONLINE_TOPIC.replace("{id}", cid)
    relay = board.Relay(config.RELAY_PIN)

    # The state file keeps the ids of QoS 2 commands already carried out until the
    # broker releases them: a command that arrives again after a reset is not repeated.
    user, password, ssl, ssl_params = credentials()
    client = MQTTClient(
        cid, host, port, user, password, keepalive=30, timeout=5, ssl=ssl, ssl_params=ssl_params,
        outbox=board.STATE_DIR + config.STATE_FILE, backoff_ms=(500, 30000),
    )
    client.set_last_will(online_topic, "0", retain=True, qos=1)

    def on_command(topic, msg):
        try:
            cmd = json.loads(msg)
            on = cmd["relay"] == "on"
        except (ValueError, KeyError, TypeError):
            print("BAD COMMAND", msg)
            return
        relay.set(on)
        print("DONE", cmd.get("id"))
        state = json.dumps({"relay": "on" if on else "off", "cmd": cmd.get("id")})
        client.publish(state_topic, state, retain=True, qos=1)

    client.set_callback(on_command)
    client.subscribe(config.COMMAND_TOPIC.replace("{id}", cid), 2)  # sent on connect
    if board.wifi_connect(config.WIFI_SSID, config.WIFI_PASSWORD, 15000):
        try:
            present = client.connect(clean_session=False)  # the broker queued commands meanwhile
            print("CONNECTED", "session present" if present else "new session")
        except Exception as e:
            print("OFFLINE", repr(e))  # step() keeps trying with backoff
    client.publish(online_topic, "1", retain=True, qos=1)
    print("READY")
    t0 = ticks_ms()
    while not run_ms or ticks_diff(ticks_ms(), t0) < run_ms:
        client.step(200)
    client.publish(online_topic, "0", retain=True, qos=1)  # a planned stop sends no will
    try:
        client.flush(5000)
    except OSError:
        pass
    client.disconnect()
    print("STOPPED")


main()
