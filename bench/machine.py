"""What the machine is, and how busy it is apart from the benchmark.

The figures only mean something next to the machine that produced them, and on
a shared 2-core machine a test suite running beside the benchmark changes them:
so the bench waits for a quiet machine before each measurement and records the
CPU that other processes used during it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def os_name() -> str:
    try:
        with open("/etc/os-release") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def busy_cpu_seconds() -> float:
    """CPU seconds spent busy by all cores since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_cores(interval: float) -> float:
    """How many cores were busy, on average, over the next ``interval`` seconds."""
    before, t0 = busy_cpu_seconds(), time.monotonic()
    time.sleep(interval)
    return (busy_cpu_seconds() - before) / (time.monotonic() - t0)


def wait_quiet(threshold: float, timeout: float, interval: float = 0.3) -> tuple[float, float]:
    """Wait until the machine is below ``threshold`` busy cores; returns (busy cores, seconds waited)."""
    start = time.monotonic()
    while True:
        busy = busy_cores(interval)
        waited = time.monotonic() - start
        if busy <= threshold or waited >= timeout:
            return busy, waited


def machine_info() -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "memory": f"{memory_gib():.1f} GiB",
        "os": f"{os_name()}, Linux {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
