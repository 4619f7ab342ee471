"""A fake of the core's ``Transport`` interface for tests that drive a ``Connection`` directly.

It records what the broker writes, whether it closed (and lingered), and whether reading
is paused; no event loop I/O. Import it as ``from coretransport import FakeTransport``.
"""

from __future__ import annotations

from broker.core.transport import DEFAULT_LISTENER


class FakeTransport:
    def __init__(self, port: int = 5000) -> None:
        self.written = bytearray()
        self.closed = False
        self.lingered = False
        self.paused = False
        self.listener = DEFAULT_LISTENER
        self.peer = f"127.0.0.1:{port}"

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self.write(data)

    def write_buffer_size(self) -> int:
        return 0

    def close(self, linger: bool = False) -> None:
        self.closed = True
        self.lingered = linger

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def peer_certificate(self) -> None:
        return None
