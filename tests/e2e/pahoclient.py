"""A thin synchronous wrapper around paho-mqtt 2.x for end-to-end tests.

paho runs its network loop in a thread; tests want to say "connect and give me
the CONNACK", "wait for 3 messages", "nothing else arrives within 0.3 s". This
wrapper records every callback and offers those waits, each with a deadline.
Automatic reconnection is off: a lost connection must stay visible to the test.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 5.0  # default deadline for anything the broker should do promptly
QUIET = 0.3  # how long "nothing more arrives" is watched


def props(packet_type: int, **values: object) -> Properties:
    """paho Properties for ``packet_type`` from keyword names (UserProperty takes a list)."""
    p = Properties(packet_type)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                p.UserProperty = pair
        else:
            setattr(p, name, value)
    return p


def publish_props(**values: object) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


def prop(message_or_props: object, name: str, default: object = None) -> object:
    """A property of a received message (or a Properties object), or ``default``."""
    p = getattr(message_or_props, "properties", message_or_props)
    return getattr(p, name, default) if p is not None else default


@dataclass
class ConnectResult:
    reason_code: int
    session_present: bool
    properties: Properties | None


class PahoClient:
    """One paho client, MQTT 3.1.1 (version=4) or 5 (version=5)."""

    def __init__(
        self,
        target: object,
        client_id: str = "",
        version: int = 5,
        clean: bool = True,
        manual_ack: bool = False,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
    ) -> None:
        """``transport="websockets"``: MQTT over WebSockets to ``ws_path``."""
        self.target = target
        self.version = version
        self.client_id = client_id
        protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        kwargs = {} if version == 5 else {"clean_session": clean}
        self.clean = clean
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            transport=transport,
            **kwargs,
        )
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path)
        self._cond = threading.Condition()
        self.messages: list[mqtt.MQTTMessage] = []
        self.connacks: list[ConnectResult] = []
        self.disconnects: list[tuple[int, Properties | None]] = []
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_publish = self._on_publish

    # -- callbacks (network thread) ------------------------------------------------
    def _record(self, fn) -> None:
        with self._cond:
            fn()
            self._cond.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        result = ConnectResult(reason_code.value, bool(flags.session_present), properties)
        self._record(lambda: self.connacks.append(result))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._record(lambda: self.disconnects.append((reason_code.value, properties)))

    def _on_message(self, client, userdata, message) -> None:
        self._record(lambda: self.messages.append(message))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._record(lambda: self.subacks.__setitem__(mid, [rc.value for rc in reason_codes]))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._record(lambda: self.unsubacks.__setitem__(mid, [rc.value for rc in reason_codes]))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._record(lambda: self.pubacks.__setitem__(mid, reason_code.value))

    # -- waiting -------------------------------------------------------------------
    def wait_for(self, predicate, timeout: float = WAIT, what: str = "condition"):
        """Wait until ``predicate()`` is truthy (checked under the lock); return its value."""
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise AssertionError(f"{self.client_id or 'client'}: timed out waiting for {what}")
        return result

    def wait_messages(self, count: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """Wait until at least ``count`` messages arrived; returns all received so far."""
        self.wait_for(lambda: len(self.messages) >= count, timeout,
                      f"{count} messages (have {len(self.messages)})")
        with self._cond:
            return list(self.messages)

    def expect_messages(self, count: int, timeout: float = WAIT, quiet: float = QUIET) -> list[mqtt.MQTTMessage]:
        """Exactly ``count`` messages: wait for them, then check nothing more comes."""
        self.wait_messages(count, timeout)
        time.sleep(quiet)
        with self._cond:
            got = list(self.messages)
        assert len(got) == count, f"expected {count} messages, got {[(m.topic, m.payload) for m in got]}"
        return got

    def expect_nothing(self, quiet: float = QUIET) -> None:
        time.sleep(quiet)
        with self._cond:
            assert not self.messages, f"unexpected messages {[(m.topic, m.payload) for m in self.messages]}"

    def take_messages(self) -> list[mqtt.MQTTMessage]:
        with self._cond:
            got, self.messages = self.messages, []
        return got

    def wait_disconnected(self, timeout: float = WAIT) -> tuple[int, Properties | None]:
        self.wait_for(lambda: self.disconnects, timeout, "the connection to close")
        return self.disconnects[0]

    # -- actions -------------------------------------------------------------------
    def connect(
        self,
        keepalive: int = 30,
        clean_start: bool = True,
        properties: Properties | None = None,
        will: tuple | None = None,
        expect_success: bool = True,
        **connect_props: object,
    ) -> ConnectResult:
        """Connect and wait for the CONNACK. ``will`` = (topic, payload, qos, retain[, Properties]).

        Keyword arguments become CONNECT properties (v5), e.g. SessionExpiryInterval=60.
        """
        if will is not None:
            topic, payload, qos, retain, *rest = will
            self.client.will_set(topic, payload, qos, retain, properties=rest[0] if rest else None)
        if connect_props:
            properties = properties or Properties(PacketTypes.CONNECT)
            for name, value in connect_props.items():
                setattr(properties, name, value)
        kwargs = {}
        if self.version == 5:
            kwargs = {"clean_start": clean_start, "properties": properties}
        self.client.connect(self.target.host, self.target.port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        self.wait_for(lambda: self.connacks or self.disconnects, WAIT, "CONNACK")
        if not self.connacks:
            raise AssertionError(f"connection closed before CONNACK: {self.disconnects}")
        result = self.connacks[-1]
        if expect_success:
            assert result.reason_code == 0, f"CONNACK refused: {result.reason_code:#x}"
        return result

    def subscribe(
        self,
        topic: str | list,
        qos: int = 0,
        properties: Properties | None = None,
        **options: object,
    ) -> list[int]:
        """Subscribe and return the SUBACK reason codes.

        ``options`` (v5): no_local, retain_as_published, retain_handling, and
        subscription_id (becomes the Subscription Identifier property).
        """
        sub_id = options.pop("subscription_id", None)
        if sub_id is not None:
            properties = properties or Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = sub_id
        if isinstance(topic, list):
            request = topic
        elif self.version == 5:
            request = [(topic, SubscribeOptions(
                qos=qos,
                noLocal=bool(options.get("no_local", False)),
                retainAsPublished=bool(options.get("retain_as_published", False)),
                retainHandling=int(options.get("retain_handling", 0)),
            ))]
        else:
            request = [(topic, qos)]
        result, mid = self.client.subscribe(request, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        return self.wait_for(lambda: self.subacks.get(mid), WAIT, "SUBACK")

    def unsubscribe(self, topic: str | list[str]) -> list[int]:
        result, mid = self.client.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed locally: {result}"
        self.wait_for(lambda: mid in self.unsubacks, WAIT, "UNSUBACK")
        return self.unsubacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        wait: bool = True,
    ) -> int:
        """Publish; with ``wait`` block until the QoS flow completed. Returns the mid."""
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if wait:
            info.wait_for_publish(WAIT)
            assert info.is_published(), f"publish of {topic!r} not completed"
        return info.mid

    def disconnect(self, properties: Properties | None = None, reason_code: int = 0) -> None:
        """A clean DISCONNECT (the will is discarded)."""
        if self.client.is_connected():
            if self.version == 5 and reason_code:
                from paho.mqtt.reasoncodes import ReasonCode

                rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
                self.client.disconnect(reasoncode=rc, properties=properties)
            else:
                self.client.disconnect(properties=properties)
            self.wait_for(lambda: self.disconnects, WAIT, "disconnect")
        self.client.loop_stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT: an abnormal disconnect."""
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.wait_for(lambda: self.disconnects, WAIT, "the dropped connection to close")
        self.client.loop_stop()

    def close(self) -> None:
        """Teardown: stop the loop whatever the state."""
        try:
            if self.client.is_connected():
                self.client.disconnect()
        finally:
            self.client.loop_stop()
