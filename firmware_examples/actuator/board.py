# The board-only parts of the actuator, behind one guard: a relay on a real ESP32 /
# Pico W, or a simulated relay on the MicroPython Unix port (or CPython) so that
# main.py runs unchanged on a PC. On the simulation, EDGE_<NAME> environment
# variables override config.py (EDGE_BROKER, EDGE_PORT, EDGE_STATE_DIR, EDGE_RUN_MS).
import os
import time

try:
    import machine
    import network

    REAL = True
except ImportError:
    REAL = False


def setting(name, default):
    if REAL:
        return default
    getenv = getattr(os, "getenv", None) or os.environ.get
    value = getenv("EDGE_" + name)
    return default if value is None else value


if REAL:
    STATE_DIR = "/"

    def unique_id():
        return "".join("%02x" % b for b in machine.unique_id())

    def wifi_connect(ssid, password, timeout_ms):
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            wlan.connect(ssid, password)
        t0 = time.ticks_ms()
        while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            time.sleep_ms(100)
        return wlan.isconnected()

    class Relay:
        def __init__(self, pin):
            self.pin = machine.Pin(pin, machine.Pin.OUT, value=0)

        def set(self, on):
            self.pin.value(1 if on else 0)

else:
    STATE_DIR = setting("STATE_DIR", ".") + "/"

    def unique_id():
        return setting("UNIQUE_ID", "sim0001")

    def wifi_connect(ssid, password, timeout_ms):
        return setting("WIFI", "up") == "up"

    class Relay:
        def __init__(self, pin):
            self.pin = pin
            self.on = False

        def set(self, on):
            self.on = on
            print("RELAY", "on" if on else "off")
