# The board-only parts of the sensor node, behind one guard: a real ESP32 / Pico W,
# or a simulation on the MicroPython Unix port (or CPython) so that main.py runs
# unchanged on a PC. On the simulation, EDGE_<NAME> environment variables override
# config.py (EDGE_BROKER, EDGE_PORT, EDGE_STATE_DIR, EDGE_CYCLES, ...).
import os
import sys
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
    getenv = getattr(os, "getenv", None) or os.environ.get  # MicroPython / CPython
    value = getenv("EDGE_" + name)
    return default if value is None else value


if REAL:
    STATE_DIR = "/"  # the flash file system

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

    def read_temperature():
        try:
            import esp32  # ESP32: the chip's own sensor

            return esp32.mcu_temperature()
        except (ImportError, AttributeError):
            volts = machine.ADC(4).read_u16() * 3.3 / 65535  # RP2040 / Pico W: ADC 4
            return 27 - (volts - 0.706) / 0.001721

    def deep_sleep(ms):
        machine.deepsleep(ms)  # the board resets on wake and runs main.py again

else:
    STATE_DIR = setting("STATE_DIR", ".") + "/"

    def unique_id():
        return setting("UNIQUE_ID", "sim0001")

    def wifi_connect(ssid, password, timeout_ms):
        return setting("WIFI", "up") == "up"  # EDGE_WIFI=down simulates a missing access point

    def read_temperature():
        return 20.0 + (int(time.time() * 10) % 50) / 10

    def deep_sleep(ms):
        # Waking from deep sleep is a reset: here the process ends, and running
        # main.py again is the wake-up.
        print("SLEEP", ms)
        sys.exit(0)
