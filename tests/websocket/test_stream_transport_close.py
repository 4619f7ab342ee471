"""``StreamTransport.close`` never raises: a client that reset the connection just gets closed.

Found by the broker-stop test: paho reads the DISCONNECT and closes at once, its kernel
resets the connection, and the broker's lingering close then met ENOTCONN in ``write_eof``,
which aborted the shutdown as if the final commit had failed.
"""

from __future__ import annotations

import asyncio

from broker.server.transport import StreamTransport
from broker.core.transport import DEFAULT_LISTENER


class ResetTransport(asyncio.Transport):
    """An asyncio transport whose peer has reset the connection: shutdown() fails."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(107, "Transport endpoint is not connected")

    def resume_reading(self) -> None:
        pass


def test_lingering_close_of_a_reset_connection_closes_without_raising() -> None:
    async def scenario() -> None:
        raw = ResetTransport()
        stream = StreamTransport(raw, DEFAULT_LISTENER)
        stream.close(linger=True)
        assert raw.closed and not stream.lingering
        stream.close(linger=True)  # again: nothing more to do

    asyncio.run(scenario())
