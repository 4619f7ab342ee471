"""Errors raised by the codec; each carries the MQTT 5 reason code to close with."""

from __future__ import annotations


class MQTTError(Exception):
    """A protocol violation; `reason_code` is what a v5 DISCONNECT/CONNACK reports."""

    reason_code = 0x80

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MQTTError):
    """The bytes do not form a valid packet (reason 0x81)."""

    reason_code = 0x81


class ProtocolError(MQTTError):
    """A well-formed packet that breaks a rule of the protocol (reason 0x82)."""

    reason_code = 0x82


class PacketTooLarge(MQTTError):
    """A packet over the negotiated Maximum Packet Size (reason 0x95)."""

    reason_code = 0x95


class UnsupportedProtocolVersion(MQTTError):
    """CONNECT with an unknown protocol name/level.

    The broker answers with CONNACK 0x01 (v3.1.1) or 0x84 (v5) and closes.
    """

    reason_code = 0x84

    def __init__(self, message: str, protocol_level: int) -> None:
        super().__init__(message)
        self.protocol_level = protocol_level
