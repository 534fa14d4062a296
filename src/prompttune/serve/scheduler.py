"""Fair, bounded scheduling of the server's work: what the engines' worker threads run next.

Every request becomes one `Work`: its rows (texts or images), a future, a deadline and a group key.
Rows of works with the same key may share a batch (e.g. every classification row of a text or soft
prompt; generation rows with the same sampling settings). `FairQueue.take` picks the next group in
round-robin order and fills a batch of at most `max_rows` rows by handing out rows one per waiting
work in turn, so a 1-row request is never stuck behind a 200-row one: both advance in every batch
(with more works waiting than a batch has rows, those served longest ago go first).
A work is complete, and its future set, once all of its rows have been delivered, whichever
batches they ran in. A work whose deadline passed, whose future was cancelled (the client went
away or gave up) or that failed is dropped from the queue, so no worker time goes to it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue holds as much work as it may: answer 503 and let the client retry."""


class EngineClosed(Exception):
    """The server is shutting down."""


class RequestTimeout(Exception):
    """A request's deadline passed before its rows were done."""


@dataclass(eq=False)
class Work:
    """One request's rows and where its answer goes."""

    key: Hashable
    rows: Sequence[Any]
    params: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() by which it must be done
    weight: int | None = None  # what it costs in the queue's capacity (default: its row count)
    future: Future = field(default_factory=Future)
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # rows handed to the worker so far
    delivered: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.rows)
        if self.weight is None:
            self.weight = len(self.rows)

    @property
    def live(self) -> bool:
        """Still wanted: not cancelled, failed or done, and not past its deadline."""
        return not self.future.done() and not self.expired()

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now if now is not None else time.monotonic()) > self.deadline


Part = tuple[Work, int, int]  # a work and the row range [start, stop) of it in one batch


class FairQueue:
    """Works grouped by key; groups served round-robin, rows within a group shared out fairly."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._groups: OrderedDict[Hashable, list[Work]] = OrderedDict()
        self._pending = 0  # summed weight of the works in the queue
        self._cond = threading.Condition()
        self._closed: Exception | None = None

    # ------------------------------------------------------------------ request side
    def submit(self, work: Work) -> Future:
        if not work.rows:  # nothing to run: settled at once, or it would wait for ever
            _settle(work, result=[])
            return work.future
        with self._cond:
            if self._closed is not None:
                raise self._closed
            if self._pending and self._pending + work.weight > self.capacity:
                raise Overloaded(f"the server's queue is full ({self._pending:,} rows waiting); retry shortly")
            self._groups.setdefault(work.key, []).append(work)
            self._pending += work.weight
            self._cond.notify_all()
        return work.future

    # ------------------------------------------------------------------ worker side
    def wait(self, timeout: float) -> bool:
        """Wait until some work is queued (True) or `timeout` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._groups) or self._closed is not None, timeout) and \
                bool(self._groups)

    def take(self, max_rows: Callable[[Hashable], int], accept: Callable[[Hashable], bool] | None = None,
             ) -> tuple[Hashable, list[Part]] | None:
        """The next batch: the first group (round-robin) that `accept`s, at most `max_rows(key)` rows of
        it, handed out one per waiting work in turn (those served longest ago first). None when nothing fits."""
        with self._cond:
            self._drop_dead()
            for key in list(self._groups):
                if accept is not None and not accept(key):
                    continue
                works = self._groups[key]
                counts = [0] * len(works)
                budget = max(1, max_rows(key))
                while budget:
                    before = budget
                    for i, w in enumerate(works):
                        if budget and w.taken + counts[i] < len(w.rows):
                            counts[i] += 1
                            budget -= 1
                    if budget == before:
                        break
                parts = []
                for w, n in zip(works, counts, strict=True):
                    if n:
                        parts.append((w, w.taken, w.taken + n))
                        w.taken += n
                # works that got nothing this time go first next time, so a group with more works
                # than a batch has rows still serves every one of them in turn
                order = [w for w, n in zip(works, counts, strict=True) if not n] + \
                        [w for w, n in zip(works, counts, strict=True) if n]
                left = [w for w in order if w.taken < len(w.rows)]
                del self._groups[key]
                if left:  # to the back of the line: the next batch serves another group first
                    self._groups[key] = left
                return key, parts
            return None

    def deliver(self, work: Work, start: int, values: Sequence[Any]) -> None:
        """Results for rows [start, start + len(values)) of `work`; completes it when all are in."""
        if not work.future.done():
            work.results[start : start + len(values)] = list(values)
            work.delivered += len(values)
            if work.delivered < len(work.rows):
                return
            _settle(work, result=work.results)
        self._release(work)

    def fail(self, work: Work, exc: BaseException) -> None:
        _settle(work, exc=exc)
        self._release(work)

    def close(self, exc: Exception) -> None:
        """Refuse new work and fail everything queued with `exc`."""
        with self._cond:
            self._closed = exc
            works = [w for ws in self._groups.values() for w in ws]
            self._groups.clear()
            self._cond.notify_all()
        for w in works:
            self.fail(w, exc)

    def __len__(self) -> int:
        """Requests queued (with rows not yet handed to the worker)."""
        with self._cond:
            return sum(len(ws) for ws in self._groups.values())

    @property
    def pending(self) -> int:
        """Summed weight of the works queued or running."""
        return self._pending

    # ------------------------------------------------------------------ internals
    def _drop_dead(self) -> None:
        now = time.monotonic()
        for key in list(self._groups):
            keep = []
            for w in self._groups[key]:
                if w.expired(now):
                    _settle(w, exc=RequestTimeout("the request's deadline passed while it waited"))
                if w.future.done():
                    self._release(w)
                else:
                    keep.append(w)
            if keep:
                self._groups[key] = keep
            else:
                del self._groups[key]

    def _release(self, work: Work) -> None:
        """A finished work stops counting against the capacity (its weight drops to 0, once)."""
        with self._cond:
            self._pending -= work.weight
            work.weight = 0


def _settle(work: Work, result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is None:
            work.future.set_result(result)
        else:
            work.future.set_exception(exc)
    except InvalidStateError:  # cancelled meanwhile by the waiting side
        pass
