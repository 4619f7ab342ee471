"""Hypothesis strategies for valid MQTT packets of every type, per protocol level and direction.

"Valid" means a conforming peer could send it: the codec must decode what these
produce back to an equal object after encoding.
"""

from __future__ import annotations

from hypothesis import strategies as st

from broker.protocol import properties as P
from broker.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
)
from broker.protocol.property_codec import (
    ACK_PROPS,
    AUTH_PROPS,
    CONNACK_PROPS,
    CONNECT_PROPS,
    DISCONNECT_PROPS,
    PUBLISH_PROPS,
    SUBSCRIBE_PROPS,
    UNSUBSCRIBE_PROPS,
    WILL_PROPS,
)
from broker.protocol.wire import VARINT_MAX

# UTF-8 Encoded Strings: any code point but U+0000 and the surrogates.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
topic_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
                     min_size=1, max_size=12)
packet_id = st.integers(1, 65535)
u16 = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)
zero_or_one = st.integers(0, 1)

_VALUES = {
    P.PAYLOAD_FORMAT_INDICATOR: zero_or_one,
    P.MESSAGE_EXPIRY_INTERVAL: u32,
    P.CONTENT_TYPE: text,
    P.RESPONSE_TOPIC: topic_name,
    P.CORRELATION_DATA: st.binary(max_size=16),
    P.SUBSCRIPTION_IDENTIFIER: st.lists(st.integers(1, VARINT_MAX), min_size=1, max_size=3),
    P.SESSION_EXPIRY_INTERVAL: u32,
    P.ASSIGNED_CLIENT_IDENTIFIER: text,
    P.SERVER_KEEP_ALIVE: u16,
    P.AUTHENTICATION_METHOD: text,
    P.AUTHENTICATION_DATA: st.binary(max_size=16),
    P.REQUEST_PROBLEM_INFORMATION: zero_or_one,
    P.WILL_DELAY_INTERVAL: u32,
    P.REQUEST_RESPONSE_INFORMATION: zero_or_one,
    P.RESPONSE_INFORMATION: text,
    P.SERVER_REFERENCE: text,
    P.REASON_STRING: text,
    P.RECEIVE_MAXIMUM: st.integers(1, 65535),
    P.TOPIC_ALIAS_MAXIMUM: u16,
    P.TOPIC_ALIAS: st.integers(1, 65535),
    P.MAXIMUM_QOS: zero_or_one,
    P.RETAIN_AVAILABLE: zero_or_one,
    P.USER_PROPERTY: st.lists(st.tuples(text, text), min_size=1, max_size=3),
    P.MAXIMUM_PACKET_SIZE: st.integers(1, 2**32 - 1),
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: zero_or_one,
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: zero_or_one,
    P.SHARED_SUBSCRIPTION_AVAILABLE: zero_or_one,
}


def _fix_auth(props: dict) -> dict:
    if P.AUTHENTICATION_DATA in props and P.AUTHENTICATION_METHOD not in props:
        props[P.AUTHENTICATION_METHOD] = "method"
    return props


def properties(allowed: frozenset, single_subscription_id: bool = False) -> st.SearchStrategy[dict]:
    optional = {pid: _VALUES[pid] for pid in sorted(allowed)}
    if single_subscription_id and P.SUBSCRIPTION_IDENTIFIER in optional:
        optional[P.SUBSCRIPTION_IDENTIFIER] = st.lists(st.integers(1, VARINT_MAX), min_size=1, max_size=1)
    return st.fixed_dictionaries({}, optional=optional).map(_fix_auth)


def _utf8_if_declared(props: dict, payload: bytes) -> bytes:
    """Payload Format Indicator 1 promises UTF-8: keep the promise."""
    if props.get(P.PAYLOAD_FORMAT_INDICATOR) == 1:
        return payload.decode("utf-8", "replace").encode("utf-8")
    return payload


@st.composite
def publishes(draw, version: int, from_client: bool = True) -> Publish:
    qos = draw(st.integers(0, 2))
    if version == 5:
        allowed = PUBLISH_PROPS if not from_client else PUBLISH_PROPS - {P.SUBSCRIPTION_IDENTIFIER}
        props = draw(properties(allowed))
    else:
        props = {}
    topic = draw(topic_name)
    if P.TOPIC_ALIAS in props and draw(st.booleans()):
        topic = ""
    payload = _utf8_if_declared(props, draw(st.binary(max_size=300)))
    return Publish(
        topic, payload, qos, draw(st.booleans()), draw(st.booleans()) if qos else False,
        draw(packet_id) if qos else None, props,
    )


@st.composite
def connects(draw, version: int) -> Connect:
    v5 = version == 5
    will = None
    if draw(st.booleans()):
        will_props = draw(properties(WILL_PROPS)) if v5 else {}
        will_payload = _utf8_if_declared(will_props, draw(st.binary(max_size=40)))
        will = Will(draw(topic_name), will_payload, draw(st.integers(0, 2)), draw(st.booleans()), will_props)
    username = draw(st.none() | text)
    password = draw(st.none() | st.binary(max_size=20))
    if not v5 and username is None:
        password = None  # v3.1.1 forbids a password without a user name
    return Connect(
        draw(text), version, "MQIsdp" if version == 3 else "MQTT", draw(st.booleans()), draw(u16),
        username, password, will, draw(properties(CONNECT_PROPS)) if v5 else {},
    )


@st.composite
def connacks(draw, version: int) -> Connack:
    if version == 5:
        code = draw(st.sampled_from([0x00, 0x80, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
                                     0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F]))
        props = draw(properties(CONNACK_PROPS))
    else:
        code = draw(st.integers(0, 5))
        props = {}
    return Connack(draw(st.booleans()) if code == 0 else False, code, props)


_ACK_CODES = {
    Puback: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    Pubrec: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    Pubrel: [0x00, 0x92],
    Pubcomp: [0x00, 0x92],
}


@st.composite
def acks(draw, version: int):
    cls = draw(st.sampled_from(list(_ACK_CODES)))
    if version != 5:
        return cls(draw(packet_id))
    return cls(draw(packet_id), draw(st.sampled_from(_ACK_CODES[cls])), draw(properties(ACK_PROPS)))


@st.composite
def subscription_options(draw, version: int) -> SubscriptionOptions:
    if version != 5:
        return SubscriptionOptions(draw(st.integers(0, 2)))
    return SubscriptionOptions(draw(st.integers(0, 2)), draw(st.booleans()), draw(st.booleans()),
                               draw(st.integers(0, 2)))


@st.composite
def subscribes(draw, version: int) -> Subscribe:
    subs = draw(st.lists(st.tuples(text, subscription_options(version)), min_size=1, max_size=4))
    for topic_filter, options in subs:
        if topic_filter.startswith("$share/"):
            options.no_local = False  # No Local on a shared subscription is a protocol error
    props = draw(properties(SUBSCRIBE_PROPS, single_subscription_id=True)) if version == 5 else {}
    return Subscribe(draw(packet_id), subs, props)


@st.composite
def subacks(draw, version: int) -> Suback:
    if version == 5:
        codes = st.sampled_from([0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2])
        return Suback(draw(packet_id), draw(st.lists(codes, min_size=1, max_size=5)), draw(properties(ACK_PROPS)))
    codes = st.sampled_from([0x00, 0x01, 0x02, 0x80])
    return Suback(draw(packet_id), draw(st.lists(codes, min_size=1, max_size=5)))


@st.composite
def unsubscribes(draw, version: int) -> Unsubscribe:
    props = draw(properties(UNSUBSCRIBE_PROPS)) if version == 5 else {}
    return Unsubscribe(draw(packet_id), draw(st.lists(text, min_size=1, max_size=4)), props)


@st.composite
def unsubacks(draw, version: int) -> Unsuback:
    if version != 5:
        return Unsuback(draw(packet_id))
    codes = st.sampled_from([0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91])
    return Unsuback(draw(packet_id), draw(st.lists(codes, min_size=1, max_size=5)), draw(properties(ACK_PROPS)))


@st.composite
def disconnects(draw, version: int) -> Disconnect:
    if version != 5:
        return Disconnect()
    code = draw(st.sampled_from([0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F,
                                 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D,
                                 0x9E, 0x9F, 0xA0, 0xA1, 0xA2]))
    return Disconnect(code, draw(properties(DISCONNECT_PROPS)))


@st.composite
def auths(draw) -> Auth:
    return Auth(draw(st.sampled_from([0x00, 0x18, 0x19])), draw(properties(AUTH_PROPS)))


def client_packets(version: int) -> st.SearchStrategy:
    """What a client may send after its CONNECT."""
    options = [publishes(version, from_client=True), acks(version), subscribes(version),
               unsubscribes(version), st.just(Pingreq()), disconnects(version)]
    if version == 5:
        options.append(auths())
    return st.one_of(options)


def server_packets(version: int) -> st.SearchStrategy:
    """What a server may send to a client."""
    options = [connacks(version), publishes(version, from_client=False), acks(version), subacks(version),
               unsubacks(version), st.just(Pingresp()), disconnects(version)]
    if version == 5:
        options.append(auths())
    return st.one_of(options)


versions = st.sampled_from([3, 4, 5])


@st.composite
def client_streams(draw) -> tuple[int, list]:
    """A protocol level and what a client sends on one connection: CONNECT, then anything."""
    version = draw(versions)
    packets = [draw(connects(version))] + draw(st.lists(client_packets(version), max_size=8))
    return version, packets
