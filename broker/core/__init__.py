"""The broker core: connections, packet handlers, sessions, routing, retained messages.

Driven by the edge (``broker.server``, ``broker.bridge``): a ``Connection`` is fed
received bytes and writes its answers to a ``Transport`` (``core/transport.py``);
it talks to persistence only through ``broker.storage.base.Storage``. Nothing here
opens a socket.

Who owns what:

* ``connection.py``: framing, output order behind commits, keepalive, closing;
* ``handlers/``: one module per packet type, where each packet is checked and answered;
* ``sessions.py``: the session life cycle (create, resume, take over, end, expire, wills);
* ``session.py``: one session's queue and in-flight window;
* ``engine.py``: subscriptions, routing, retained messages, group commits, the tick.
"""
