# Shared by the test programs; runs on MicroPython and CPython.
import sys
import time

try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)


def arg(i, default=None):
    return sys.argv[i] if len(sys.argv) > i else default


def out(*words):
    print(*words)
    try:
        sys.stdout.flush()
    except AttributeError:
        pass


class Inbox:
    """Callback that prints and counts what arrives."""

    def __init__(self):
        self.n = 0

    def __call__(self, topic, msg, retained, qos):
        self.n += 1
        out("GOT", topic.decode(), qos, int(retained), msg.decode())


def elapsed(t0):
    return ticks_diff(ticks_ms(), t0)
