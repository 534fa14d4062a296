"""How the engine's `generate` calls end, row by row, and hand each request its text.

`RowStopper` is the stopping criterion of one batched call: each row stops at its request's
max_tokens, at EOS, at one of its stop strings (an artifact's own plus the request's), or when its
request is no longer wanted; a request whose rows have all stopped is answered at once. `Interrupt`
is the criterion of a call that a predictor runs itself (one row). Both let the engine run one waiting
classification batch between two generated tokens (`Engine._between_steps`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from transformers import StoppingCriteria, TextStreamer

from ..models.causal_lm import cut_at_stop
from .scheduler import Work


class Engine(Protocol):
    """What the criteria use of `engine.Engine` (a protocol, so this module does not import the engine)."""

    backbone: Any
    queue: Any
    _closing: threading.Event

    def _between_steps(self) -> None: ...

    def _drop(self, work: Work) -> None: ...

STOP_WINDOW_SLACK = 4  # tokens decoded beyond a stop string's length when looking for it in a row's tail


def cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first occurrence of any of `stops`, and whether one was found."""
    cut = cut_at_stop(text, stops)
    return cut, len(cut) < len(text)  # stop strings are never empty: a cut always shortens


class Interrupt(StoppingCriteria):
    """The stopping criterion of a predictor's own `generate` call: stop when the request is no longer
    wanted or the server closes; between two steps the engine runs one classification batch."""

    def __init__(self, engine: Engine, work: Work):
        self.engine, self.work = engine, work

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        stop = self.engine._closing.is_set() or not self.work.live
        self.engine._between_steps()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class RowStopper(StoppingCriteria):
    """The stopping criterion of one batched `generate` call: row r stops at its own `max_tokens`, at
    EOS, at one of its request's stop strings, or when its request is cancelled, out of time or the server
    closes; a request whose rows have all stopped gets its answer at once (`early`). Between two steps
    the engine runs one classification batch."""

    def __init__(self, engine: Engine, rows: list[tuple[Work, int]], prompt_lengths: list[int], early: bool = True):
        self.engine, self.rows, self.prompt_lengths, self.early = engine, rows, prompt_lengths, early
        self.limits = [w.params["max_tokens"] for w, _ in rows]
        self.stops = [list(w.params.get("stop") or ()) for w, _ in rows]
        self.eos = engine.backbone.tokenizer.eos_token_id
        self.stopped = [False] * len(rows)
        self.finish_reason = ["length"] * len(rows)
        self.answered: set[int] = set()  # id() of the works already answered or dropped

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        closing = self.engine._closing.is_set()
        last = input_ids[:, -1].tolist()
        for r, (work, _) in enumerate(self.rows):
            if self.stopped[r]:
                continue
            if closing or not work.live:
                self.stopped[r] = True
            elif last[r] == self.eos or self._stop_string_in_tail(input_ids[r], r):
                self.stopped[r], self.finish_reason[r] = True, "stop"
            elif input_ids.shape[1] >= self.limits[r]:
                self.stopped[r] = True
        if self.early:  # a stream answers after `generate`, once its streamer has flushed the last piece
            self._answer(input_ids)
        self.engine._between_steps()
        return torch.tensor(self.stopped, dtype=torch.bool, device=input_ids.device)

    def _stop_string_in_tail(self, tokens: torch.Tensor, r: int) -> bool:
        """Whether row r's last tokens hold one of its stop strings: only the tail is decoded, as the earlier
        steps looked at the rest. (A miss only costs tokens: the answer is cut at the stop string anyway.)"""
        if not self.stops[r]:
            return False
        window = max(map(len, self.stops[r])) + STOP_WINDOW_SLACK
        tail = self.engine.backbone.tokenizer.decode(tokens[-window:].tolist(), skip_special_tokens=True)
        return any(s in tail for s in self.stops[r])

    def finish(self, tokens: torch.Tensor) -> None:
        """After `generate`: answer whatever the criterion has not."""
        self.stopped = [True] * len(self.rows)
        self._answer(tokens)

    def _answer(self, tokens: torch.Tensor) -> None:
        by_work: dict[int, list[int]] = {}
        for r, (work, _) in enumerate(self.rows):
            by_work.setdefault(id(work), []).append(r)
        for rs in by_work.values():
            work = self.rows[rs[0]][0]
            if id(work) in self.answered or not all(self.stopped[r] for r in rs):
                continue
            self.answered.add(id(work))
            if not work.live or self.engine._closing.is_set():
                self.engine._drop(work)
                continue
            self.engine.queue.deliver(work, self.rows[rs[0]][1], [self._text(tokens, r) for r in rs])

    def _text(self, tokens: torch.Tensor, r: int) -> tuple[str, int, int, str]:
        """Row r's answer: (text up to EOS and cut at a stop string, prompt tokens, new tokens, finish reason)."""
        row = tokens[r, : self.limits[r]].tolist()
        if self.eos in row:
            row = row[: row.index(self.eos)]
        text, cut = cut_at_stops(self.engine.backbone.tokenizer.decode(row, skip_special_tokens=True), self.stops[r])
        return text, self.prompt_lengths[r], len(row), "stop" if cut else self.finish_reason[r]


class TextPieces(TextStreamer):
    """A streamer that hands each finished piece of text to `on_text` (the HTTP side's queue)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)
