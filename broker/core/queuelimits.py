"""Queue limits of one session that differ from the broker-wide ``[limits]``.

A bridge's local session is its store-and-forward backlog: it is bounded by bytes
(sized for an SD card) with its own drop policy, and its drops are counted apart, while
device sessions keep the broker-wide limits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class QueueLimits:
    max_queued_messages: int  # 0 = no limit
    max_queued_bytes: int  # payload bytes; 0 = no limit
    queue_full_policy: str  # "drop_new" | "drop_oldest"
    dropped: int = 0  # messages dropped from this session's queue, for the owner to report
