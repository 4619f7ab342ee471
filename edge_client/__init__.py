"""edge_client: a small MQTT 3.1.1 client for MicroPython and CPython that keeps every reading.

`from edge_client import MQTTClient` replaces `from umqtt.simple import MQTTClient`.
Names load lazily so that importing the asyncio variant does not pull in the
blocking client as well.
"""


def __getattr__(name):
    if name == "MQTTClient":
        from .client import MQTTClient

        return MQTTClient
    if name == "MQTTException":
        from .packets import MQTTException

        return MQTTException
    raise AttributeError(name)
