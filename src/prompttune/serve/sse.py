"""Server-sent events for streamed completions: the engine's text pieces, cut at the stop strings.

A piece is sent as soon as no stop string can begin in it; the characters that might begin one are
held back until the next piece settles it. The stream ends with the finish reason and `[DONE]`, or
with an error event (the engine's failure, or no output for the idle timeout).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from .guard import error_body


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (not sent yet)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def sse_events(queue: asyncio.Queue, future: Future, piece: Callable[[str, str | None], dict],
                     stops: list[str], idle_timeout: float,
                     error_of: Callable[[BaseException], dict[str, Any]]) -> AsyncIterator[str]:
    """Server-sent events from the engine's pieces (`("text", str)` items, then `("end", future)`): text
    with stop strings applied, then the finish reason and [DONE]; an error (`error_of` gives its body), or
    no output for `idle_timeout` seconds, ends the stream with an error event. However it ends (client gone
    included), the future is cancelled so generation stops."""
    held = ""
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), idle_timeout)
            except TimeoutError:
                yield _event(error_body(f"no output for {idle_timeout:g} s (--request-timeout)", "request_timeout",
                                        "server_error"))
                return
            if kind == "text":
                held += value
                hits = [held.index(s) for s in stops if s in held]
                if hits:
                    if min(hits):
                        yield _event(piece(held[: min(hits)], None))
                    yield _event(piece("", "stop"))
                    yield "data: [DONE]\n\n"
                    return
                ready = len(held) - held_back(held, stops)
                if ready:
                    yield _event(piece(held[:ready], None))
                    held = held[ready:]
                continue
            if value.cancelled():
                return
            if value.exception() is not None:
                yield _event(error_of(value.exception()))
                return
            if held:
                yield _event(piece(held, None))
            yield _event(piece("", value.result()[0][3]))
            yield "data: [DONE]\n\n"
            return
    finally:
        future.cancel()
