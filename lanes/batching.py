"""Bundling waiting refine requests into one batched pipeline call.

The first request for a key becomes the leader: it waits until the batch is full or the
lane's max wait has passed (so a lone job is not held), runs the batch, and hands each
follower its own result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Batch:
    items: list[Any] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    results: list[Any] | None = None
    error: BaseException | None = None


class Batcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Hashable, _Batch] = {}

    def submit(
        self,
        key: Hashable,
        item: Any,
        *,
        max_batch: int,
        max_wait_s: float,
        run: Callable[[list[Any]], list[Any]],
    ) -> tuple[Any, int]:
        """Run `item` in a batch with others of the same key; returns (its result, the batch size)."""
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None
            if batch is None:
                batch = self._open[key] = _Batch()
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= max_batch:
                batch.closed = True
                self._open.pop(key, None)
                batch.full.set()
        if leader:
            batch.full.wait(max_wait_s)
            with self._lock:
                if not batch.closed:
                    batch.closed = True
                    self._open.pop(key, None)
            try:
                batch.results = run(batch.items)
            except BaseException as exc:
                batch.error = exc
            finally:
                batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None  # the leader sets results or error before setting done
        return batch.results[index], len(batch.items)


refine_batcher = Batcher()
