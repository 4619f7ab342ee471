"""Sans-I/O MQTT protocol core: packet types, codec, reason codes, topic rules.

Nothing in this package touches a socket or the event loop: it takes bytes and
returns packet objects, and the reverse.
"""
