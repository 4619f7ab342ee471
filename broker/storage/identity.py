"""Which stored row a ``Message`` object is, kept by the storage and by object identity.

A message fanned out to many sessions (and kept as retained) is written once: the
first ``enqueue``/``set_retained`` stores it and records its row here, later ones
refer to that row. A message read back from storage is recorded too, so queueing it
again (a retained message sent to a new subscriber) adds no copy. The core never
sees these ids; an entry goes away with its message object.
"""

from __future__ import annotations

import weakref

from broker.message import Message


class _RowRef(weakref.ref):
    """A weak reference to a message that also carries its key and row (no closure per message)."""

    __slots__ = ("key", "row")
    key: int
    row: int


class MessageRows:
    """``Message`` object -> row id, without keeping the object alive."""

    __slots__ = ("_rows", "_forget")

    def __init__(self) -> None:
        self._rows: dict[int, _RowRef] = {}
        rows = self._rows

        def forget(ref: _RowRef) -> None:
            """The message is gone: drop its entry, unless the id was reused meanwhile."""
            if rows.get(ref.key) is ref:
                del rows[ref.key]

        self._forget = forget

    def get(self, message: Message) -> int:
        """The row of ``message``, or 0 if this storage has not stored or read it."""
        ref = self._rows.get(id(message))
        if ref is not None and ref() is message:
            return ref.row
        return 0

    def remember(self, message: Message, row: int) -> None:
        ref = _RowRef(message, self._forget)
        ref.key = key = id(message)
        ref.row = row
        self._rows[key] = ref

    def __len__(self) -> int:
        return len(self._rows)
