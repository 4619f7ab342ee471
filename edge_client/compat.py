"""CPython stand-ins for the MicroPython built-ins the library uses.

Kept in their own module so a device never loads them: on MicroPython the
`from micropython import const` / `from time import ticks_ms` lines succeed and
this file is not imported.
"""
import time


def const(x):
    return x


def ticks_ms():
    return int(time.monotonic() * 1000)


def ticks_diff(a, b):
    return a - b


def ticks_add(a, b):
    return a + b


def sleep_ms(ms):
    time.sleep(ms / 1000)
