"""One thread that owns a blocking resource (the SQLite connection), driven from asyncio.

Why not ``loop.run_in_executor`` on a one-worker ``ThreadPoolExecutor``: each call
there goes through a ``concurrent.futures.Future`` chained to an asyncio future
(two futures, two locks, a semaphore), which costs a third of the throughput of
a one-message group commit. Here a call is one queue put and one
``call_soon_threadsafe`` back: the same cost as the thread of aiosqlite, without
depending on a library's private API.

Calls run one at a time, in the order they were made. ``stop()`` lets the calls
already queued finish, then ends the thread; it is not a daemon, so forgetting
``stop()`` is noticed (the test suite fails on a leftover non-daemon thread).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

_Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DatabaseThread:
    """Runs functions on one dedicated thread; ``run`` returns an asyncio future."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name)
        self._thread.start()
        self._stopped = False

    def run(self, function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Call ``function(*args)`` on the thread; the future resolves on the calling loop."""
        if self._stopped:
            raise RuntimeError("the database thread is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._calls.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        """Finish the queued calls, then end the thread (waits for it)."""
        if not self._stopped:
            self._stopped = True
            self._calls.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _serve(self) -> None:
        calls = self._calls
        while True:
            call = calls.get()
            if call is None:
                return
            loop, future, function, args = call
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the caller, whatever it is
                _resolve_later(loop, future, None, exc)
            else:
                _resolve_later(loop, future, result, None)


def _resolve_later(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, future, result, error)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # cancelled by the caller meanwhile
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
