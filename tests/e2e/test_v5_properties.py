"""MQTT 5 message properties and subscription options, through paho.

User properties, response topic, correlation data, payload format indicator and
content type are forwarded; subscription identifiers, no-local,
retain-as-published and retain-handling shape what a subscriber receives.
"""

from __future__ import annotations

from .pahoclient import prop, publish_props


def test_message_properties_forwarded_unchanged(paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/req", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    user = [("k", "v"), ("k", "v2"), ("unicode", "größe ✓"), ("empty", "")]
    pub.publish(
        f"{uid}/req",
        "température".encode(),
        1,
        properties=publish_props(
            UserProperty=user,
            ResponseTopic=f"{uid}/resp",
            CorrelationData=b"\xff\x00request-42",
            PayloadFormatIndicator=1,
            ContentType="text/plain; charset=utf-8",
        ),
    )
    [msg] = sub.expect_messages(1)
    assert msg.payload == "température".encode()
    assert prop(msg, "UserProperty") == user  # order and duplicates preserved
    assert prop(msg, "ResponseTopic") == f"{uid}/resp"
    assert prop(msg, "CorrelationData") == b"\xff\x00request-42"
    assert prop(msg, "PayloadFormatIndicator") == 1
    assert prop(msg, "ContentType") == "text/plain; charset=utf-8"


def test_request_response_round_trip(paho, uid):
    responder = paho(f"{uid}-responder", 5)
    responder.connect()
    responder.subscribe(f"{uid}/service", 1)
    requester = paho(f"{uid}-requester", 5)
    requester.connect()
    requester.subscribe(f"{uid}/inbox", 1)
    requester.publish(
        f"{uid}/service", b"ping", 1,
        properties=publish_props(ResponseTopic=f"{uid}/inbox", CorrelationData=b"id-1"),
    )
    [request] = responder.wait_messages(1)
    responder.publish(
        prop(request, "ResponseTopic"), b"pong", 1,
        properties=publish_props(CorrelationData=prop(request, "CorrelationData")),
    )
    [reply] = requester.expect_messages(1)
    assert (reply.payload, prop(reply, "CorrelationData")) == (b"pong", b"id-1")


def test_no_properties_are_invented(paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/plain", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/plain", b"x", 1)
    [msg] = sub.expect_messages(1)
    for name in ("UserProperty", "ResponseTopic", "CorrelationData", "ContentType",
                 "PayloadFormatIndicator", "MessageExpiryInterval", "SubscriptionIdentifier"):
        assert prop(msg, name) is None, f"unexpected {name}"


def test_subscription_identifier_carried_on_matching_messages(paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/with-id/#", 1, subscription_id=42)
    sub.subscribe(f"{uid}/big-id", 1, subscription_id=268_435_455)  # the largest allowed
    sub.subscribe(f"{uid}/no-id", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/with-id/a", b"1", 1)
    pub.publish(f"{uid}/big-id", b"2", 1)
    pub.publish(f"{uid}/no-id", b"3", 1)
    got = {m.payload: prop(m, "SubscriptionIdentifier") for m in sub.expect_messages(3)}
    assert got == {b"1": [42], b"2": [268_435_455], b"3": None}


def test_resubscribe_without_identifier_removes_it(paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/t", 1, subscription_id=7)
    sub.subscribe(f"{uid}/t", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/t", b"x", 1)
    [msg] = sub.expect_messages(1)
    assert prop(msg, "SubscriptionIdentifier") is None


def test_subscription_identifier_on_retained_delivery(paho, uid):
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/r", b"kept", 1, retain=True)
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1, subscription_id=9)
    [msg] = sub.expect_messages(1)
    assert msg.retain and prop(msg, "SubscriptionIdentifier") == [9]


def test_no_local(paho, uid):
    me = paho(f"{uid}-me", 5)
    me.connect()
    me.subscribe(f"{uid}/chat", 1, no_local=True)
    other = paho(f"{uid}-other", 5)
    other.connect()
    me.publish(f"{uid}/chat", b"mine", 1)
    other.publish(f"{uid}/chat", b"theirs", 1)
    assert [m.payload for m in me.expect_messages(1)] == [b"theirs"]


def test_without_no_local_own_messages_come_back(paho, uid):
    me = paho(f"{uid}-me", 5)
    me.connect()
    me.subscribe(f"{uid}/chat", 1)
    me.publish(f"{uid}/chat", b"mine", 1)
    assert [m.payload for m in me.expect_messages(1)] == [b"mine"]


def test_retain_as_published(paho, uid):
    rap = paho(f"{uid}-rap", 5)
    rap.connect()
    rap.subscribe(f"{uid}/r", 1, retain_as_published=True)
    plain = paho(f"{uid}-plain", 5)
    plain.connect()
    plain.subscribe(f"{uid}/r", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/r", b"retained", 1, retain=True)
    pub.publish(f"{uid}/r", b"not retained", 1)
    assert [(m.payload, m.retain) for m in rap.expect_messages(2)] == [(b"retained", True), (b"not retained", False)]
    assert [(m.payload, m.retain) for m in plain.expect_messages(2)] == [(b"retained", False), (b"not retained", False)]


def test_retain_handling_0_sends_retained_on_every_subscribe(paho, uid):
    _retain(paho, uid)
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1, retain_handling=0)
    sub.wait_messages(1)
    sub.subscribe(f"{uid}/r", 1, retain_handling=0)
    assert [m.payload for m in sub.expect_messages(2)] == [b"kept", b"kept"]


def test_retain_handling_1_sends_retained_only_for_a_new_subscription(paho, uid):
    _retain(paho, uid)
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1, retain_handling=1)
    sub.wait_messages(1)
    sub.subscribe(f"{uid}/r", 1, retain_handling=1)  # already exists: nothing
    assert [m.payload for m in sub.expect_messages(1)] == [b"kept"]
    sub.unsubscribe(f"{uid}/r")
    sub.subscribe(f"{uid}/r", 1, retain_handling=1)  # new again
    assert [m.payload for m in sub.expect_messages(2)] == [b"kept", b"kept"]


def test_retain_handling_2_never_sends_retained(paho, uid):
    _retain(paho, uid)
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1, retain_handling=2)
    sub.expect_nothing()
    # Live messages still flow.
    pub = paho(f"{uid}-pub2", 5)
    pub.connect()
    pub.publish(f"{uid}/r", b"live", 1)
    assert [m.payload for m in sub.expect_messages(1)] == [b"live"]


def _retain(paho, uid):
    pub = paho(f"{uid}-retainer", 5)
    pub.connect()
    pub.publish(f"{uid}/r", b"kept", 1, retain=True)
    pub.disconnect()
