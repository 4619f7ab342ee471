"""Memory-only behaviour (everything common to all backends is in contract.py)."""

from __future__ import annotations

from broker.protocol.packets import MQTT_5
from broker.storage.base import SessionRecord
from broker.storage.memory import MemoryStorage

from .helpers import run_async


@run_async
async def test_memory_commit_is_already_resolved() -> None:
    store = MemoryStorage()
    await store.open()
    store.save_session(SessionRecord("c", 60, MQTT_5))
    assert store.commit().done()  # nothing to wait for: no I/O
    await store.close()
