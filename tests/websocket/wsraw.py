"""A raw WebSocket client for tests, with frames built by hand from RFC 6455.

Deliberately independent of the WebSocket library the broker uses: the frames the tests
send and the parsing of what the broker answers follow the RFC's byte layout (section
5.2), so a quirk of the library cannot hide behind itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from e2e.mqttraw import Packet, decode

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x37\xfa\x21\x3d") -> bytes:
    """One frame as a client sends it (masked unless ``mask`` is None)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = bytes([first, mask_bit | length])
    elif length < 65536:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if mask is None:
        return header + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


@dataclass
class HTTPResponse:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes


def request_bytes(path: str = "/mqtt", headers: dict[str, str] | None = None, method: str = "GET",
                  key: str | None = None) -> bytes:
    """An upgrade request; ``headers`` override (a value None removes the header)."""
    base: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "mqtt",
    }
    base.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in base.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class ConnectionClosed(Exception):
    pass


class WSRawClient:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buffer = bytearray()
        self.eof = False
        self.mqtt_stream = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WSRawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bytes -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_until_closed(self, timeout: float | None = None) -> bytes:
        """Everything until the server closes the connection (fails on timeout)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise AssertionError(f"server did not close; got {bytes(self.buffer)!r}")
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    # -- HTTP --------------------------------------------------------------------------
    def upgrade(self, request: bytes | None = None, expect_status: int | None = 101) -> HTTPResponse:
        """Send the request, read the response head (and a body if Content-Length says so)."""
        request = request or request_bytes()
        self.send(request)
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise AssertionError(f"no HTTP response; got {bytes(self.buffer)!r}")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        self.buffer = bytearray(rest)
        while len(self.buffer) < length:
            if not self._fill(deadline):
                break
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        response = HTTPResponse(int(status_line.split()[1]), headers, body)
        if expect_status is not None:
            assert response.status == expect_status, response
        if response.status == 101:
            key = [l.split(":", 1)[1].strip() for l in request.decode("latin-1").split("\r\n")
                   if l.lower().startswith("sec-websocket-key:")][0]
            expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            assert headers["sec-websocket-accept"] == expected
        return response

    # -- frames ------------------------------------------------------------------------
    def _split_frame(self) -> Frame | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        assert not buf[1] & 0x80, "a server must not mask its frames"
        length, pos = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < pos + length:
            return None
        payload = bytes(buf[pos:pos + length])
        del buf[:pos + length]
        return Frame(fin, opcode, payload)

    def recv_frame(self, timeout: float | None = None) -> Frame | None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            parsed = self._split_frame()
            if parsed is not None:
                return parsed
            if self.eof:
                raise ConnectionClosed("server closed the connection")
            if not self._fill(deadline) and not self.eof:
                return None

    def expect_frame(self, opcode: int, timeout: float | None = None) -> Frame:
        got = self.recv_frame(timeout)
        assert got is not None, f"timed out waiting for a frame with opcode {opcode:#x}"
        assert got.opcode == opcode, f"expected opcode {opcode:#x}, got {got}"
        return got

    def send_binary(self, data: bytes) -> None:
        self.send(frame(BINARY, data))

    # -- MQTT over the frames ----------------------------------------------------------
    def recv_packet(self, timeout: float | None = None, version: int = 4) -> Packet | None:
        """The next MQTT packet from the binary frames (any framing); None on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            split = self._split_packet()
            if split is not None:
                return decode(split[0], split[1], version)
            got = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if got is None:
                return None
            assert got.opcode in (BINARY, CONTINUATION), f"expected binary data, got {got}"
            self.mqtt_stream += got.payload

    def expect_packet(self, ptype: int, timeout: float | None = None, version: int = 4) -> Packet:
        got = self.recv_packet(timeout, version)
        assert got is not None, f"timed out waiting for packet type {ptype}"
        assert got.type == ptype, f"expected packet type {ptype}, got {got}"
        return got

    def _split_packet(self) -> tuple[int, bytes] | None:
        buf = self.mqtt_stream
        if len(buf) < 2:
            return None
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(buf):
                return None
            byte = buf[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
        if len(buf) < pos + length:
            return None
        first, body = buf[0], bytes(buf[pos:pos + length])
        del buf[:pos + length]
        return first, body
