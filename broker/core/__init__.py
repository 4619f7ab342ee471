"""The broker engine: sessions, subscriptions, retained messages and message routing.

Pure logic driven by the server edge (``broker.server``): it receives decoded
packets and returns packets to send, and talks to persistence only through
``broker.storage.base.Storage``. Nothing here opens a socket.
"""
