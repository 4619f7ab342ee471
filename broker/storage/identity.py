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


class MessageRows:
    """``Message`` object -> row id, without keeping the object alive."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[int, tuple[weakref.ref[Message], int]] = {}

    def get(self, message: Message) -> int:
        """The row of ``message``, or 0 if this storage has not stored or read it."""
        entry = self._rows.get(id(message))
        if entry is not None and entry[0]() is message:
            return entry[1]
        return 0

    def remember(self, message: Message, row: int) -> None:
        key = id(message)
        rows = self._rows

        def forget(ref: weakref.ref[Message]) -> None:
            current = rows.get(key)
            if current is not None and current[0] is ref:
                del rows[key]

        rows[key] = (weakref.ref(message, forget), row)

    def __len__(self) -> int:
        return len(self._rows)
