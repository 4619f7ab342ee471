"""The shared empty containers (``broker/core/empty.py``) that idle clients hold instead of
their own: reading them works as with any empty container, adding to them must fail (a
path that adds without first making its own container would share state between clients)."""

from __future__ import annotations

import pytest

from broker.core.empty import EMPTY_DEQUE, EMPTY_DICT, EMPTY_SET

ADDS_TO_DEQUE = [
    ("append", lambda d: d.append(1)),
    ("appendleft", lambda d: d.appendleft(1)),
    ("extend", lambda d: d.extend([1])),
    ("extendleft", lambda d: d.extendleft([1])),
    ("insert", lambda d: d.insert(0, 1)),
    ("+=", lambda d: d.__iadd__([1])),
]
ADDS_TO_SET = [
    ("add", lambda s: s.add(1)),
    ("update", lambda s: s.update([1])),
    ("symmetric_difference_update", lambda s: s.symmetric_difference_update([1])),
]
ADDS_TO_DICT = [
    ("[]=", lambda d: d.__setitem__(1, 2)),
    ("setdefault", lambda d: d.setdefault(1, 2)),
    ("update", lambda d: d.update({1: 2})),
    ("update(key=)", lambda d: d.update(k=2)),
]


@pytest.mark.parametrize("name, add", ADDS_TO_DEQUE, ids=[n for n, _ in ADDS_TO_DEQUE])
def test_the_shared_deque_refuses_every_addition(name, add) -> None:
    with pytest.raises(TypeError):
        add(EMPTY_DEQUE)
    assert len(EMPTY_DEQUE) == 0


@pytest.mark.parametrize("name, add", ADDS_TO_SET, ids=[n for n, _ in ADDS_TO_SET])
def test_the_shared_set_refuses_every_addition(name, add) -> None:
    with pytest.raises(TypeError):
        add(EMPTY_SET)
    assert len(EMPTY_SET) == 0


@pytest.mark.parametrize("name, add", ADDS_TO_DICT, ids=[n for n, _ in ADDS_TO_DICT])
def test_the_shared_dict_refuses_every_addition(name, add) -> None:
    with pytest.raises(TypeError):
        add(EMPTY_DICT)
    assert len(EMPTY_DICT) == 0


def test_the_shared_empties_read_like_empty_containers() -> None:
    assert not EMPTY_DEQUE and list(EMPTY_DEQUE) == [] and len(EMPTY_DEQUE) == 0
    EMPTY_DEQUE.clear()
    with pytest.raises(IndexError):
        EMPTY_DEQUE.popleft()
    assert not EMPTY_SET and 1 not in EMPTY_SET and sorted(EMPTY_SET) == []
    EMPTY_SET.discard(1)
    EMPTY_SET.clear()
    assert not EMPTY_DICT and EMPTY_DICT.get(1) is None and EMPTY_DICT.pop(1, None) is None
    assert list(EMPTY_DICT.values()) == [] and 1 not in EMPTY_DICT
    EMPTY_DICT.clear()
