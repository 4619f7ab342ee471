"""Shared empty containers for per-client state that most clients never fill.

An empty ``deque`` takes 760 bytes, an empty ``set`` 216 and an empty ``dict`` 64
(mosquitto needs about 730 bytes for a whole idle connection). A connection or
session starts with these shared, read-only empties and gets a container of its
own when it first stores something, so an idle client (or an offline session)
pays nothing for queues and tables it does not use.
They read like any empty container (``len``, ``in``, iteration, ``clear``); every
method that would add to them raises, so a path that forgets to replace one fails
loudly instead of sharing state between clients. (In-place operators such as ``|=``
are not guarded: use the methods.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def _refuse(*_args: Any) -> NoReturn:
    raise TypeError("a shared empty container is read-only: give the owner a container of its own first")


class EmptyDeque(deque[T]):
    """A deque that stays empty (the placeholder of a queue nobody has used yet)."""

    __slots__ = ()

    def append(self, x: T, /) -> NoReturn:
        _refuse()

    def appendleft(self, x: T, /) -> NoReturn:
        _refuse()

    def extend(self, iterable: Iterable[T], /) -> NoReturn:
        _refuse()

    def extendleft(self, iterable: Iterable[T], /) -> NoReturn:
        _refuse()

    def insert(self, i: int, x: T, /) -> NoReturn:
        _refuse()

    def __iadd__(self, value: Iterable[T], /) -> NoReturn:
        _refuse()


class EmptySet(set[T]):
    """A set that stays empty (the placeholder of a set nobody has used yet)."""

    __slots__ = ()

    def add(self, element: T, /) -> NoReturn:
        _refuse()

    def update(self, *s: Iterable[T]) -> NoReturn:
        _refuse()

    def symmetric_difference_update(self, s: Iterable[T], /) -> NoReturn:
        _refuse()


class EmptyDict(dict[K, V]):
    """A dict that stays empty (the placeholder of a table nobody has used yet)."""

    __slots__ = ()

    def __setitem__(self, key: K, value: V, /) -> NoReturn:
        _refuse()

    def setdefault(self, key: K, default: V, /) -> NoReturn:
        _refuse()

    def update(self, *args: Any, **kwargs: V) -> NoReturn:
        _refuse()


# The placeholders themselves: compare with ``is`` to know whether a container is shared.
EMPTY_DEQUE: deque[Any] = EmptyDeque()
EMPTY_SET: set[Any] = EmptySet()
EMPTY_DICT: dict[Any, Any] = EmptyDict()
