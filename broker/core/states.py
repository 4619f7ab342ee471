"""The states of a client connection (``Connection.state``)."""

CONNECTING = 0  # waiting for CONNECT
CONNECTED = 1  # CONNECT accepted: a session is attached
CLOSED = 2
AUTHENTICATING = 3  # AUTH: CONNECT received, waiting for engine.auth's decision; later packets are held
