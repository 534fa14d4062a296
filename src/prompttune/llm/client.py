"""`LLM`: a backend plus the response cache, the ledger of calls and tokens, the budget and the
concurrency limit. Optimisers talk only to this."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .base import ChatBackend, ChatRequest, Completion, LLMBudgetExhausted, LLMError, Message
from .cache import ResponseCache

log = logging.getLogger(__name__)

# A server that answers fewer choices than `n` (many ignore `n`) is asked again for the rest at most this
# many times, each ask its own call of the budget; then the request gets the completions there are.
MAX_TOP_UPS = 2


def top_up_seed(seed: int, i: int) -> int:
    """The seed of the i-th top-up request of a request seeded `seed`: fixed (so reruns hit the cache) and
    within 31 bits whatever `seed` is (servers reject bigger ones)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/top-up/{i}".encode()).digest()[:4], "big") & 0x7FFFFFFF


class LLM:
    """Budget semantics: every call counts, answered from the cache or not, so a rerun makes exactly the
    same calls as the first run (and, cached, costs nothing). A call is one request to the backend: one
    ledger entry, one HTTP request to an endpoint (whose retries are its `attempts`, at most
    `max_retries` + 1), top-ups for missing choices included. `max_tokens` is checked before each call,
    so the last call may go over it by its own tokens."""

    def __init__(
        self,
        backend: ChatBackend,
        cache: ResponseCache | None = None,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_concurrency: int | None = None,
        ledger_path: str | Path | None = None,
    ):
        self.backend = backend
        self.cache = cache
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_concurrency = max(1, min(max_concurrency or backend.max_concurrency, backend.max_concurrency))
        self.ledger: list[dict[str, Any]] = []
        self.ledger_path = Path(ledger_path) if ledger_path else None
        self.exhausted = False
        self._lock = threading.Lock()
        self._reserved = 0  # calls paid for and not yet in the ledger (in flight on other threads)

    # ------------------------------------------------------------------ budget
    @property
    def calls(self) -> int:
        return len(self.ledger)

    @property
    def tokens(self) -> int:
        return sum(e["prompt_tokens"] + e["completion_tokens"] for e in self.ledger)

    def affordable(self, wanted: int) -> int:
        with self._lock:
            return self._affordable(wanted)

    def _affordable(self, wanted: int) -> int:  # the caller holds the lock
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return 0
        if self.max_calls is None:
            return wanted
        return max(0, min(wanted, self.max_calls - len(self.ledger) - self._reserved))

    def _reserve(self, wanted: int) -> int:
        """Pay for up to `wanted` calls now; how many were paid for (fewer: the budget is spent)."""
        with self._lock:
            n = self._affordable(wanted)
            self._reserved += n
        if n < wanted:
            self.exhausted = True
        return n

    # ------------------------------------------------------------------ calls
    def chat(self, messages: list[Message] | str, *, temperature: float = 0.7, max_tokens: int = 128, n: int = 1,
             seed: int = 0, purpose: str = "") -> list[str]:
        """The `n` completions of one request; raises LLMBudgetExhausted when the budget is spent."""
        done = self.chat_many([ChatRequest.of(messages, temperature=temperature, max_tokens=max_tokens, n=n,
                                              seed=seed)], purpose=purpose)
        if not done:
            raise LLMBudgetExhausted(self.budget_message())
        return done[0].texts

    def chat_many(self, requests: list[ChatRequest], purpose: str = "") -> list[Completion]:
        """Answers to as many of `requests` (in order) as the budget pays for, `max_concurrency` at a time.
        Fewer answers than requests means the budget is spent (`self.exhausted`)."""
        todo = requests[:self._reserve(len(requests))]
        if self.max_concurrency == 1 or len(todo) <= 1:
            return [self._answer(r, purpose) for r in todo]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(lambda r: self._answer(r, purpose), todo))

    def _answer(self, request: ChatRequest, purpose: str) -> Completion:
        """The completions of one paid-for request: its call, then up to MAX_TOP_UPS calls for the choices
        the server left out, each paid for before it is made."""
        parts = [self._one(request, purpose)]
        texts = list(parts[0].texts)
        for i in range(MAX_TOP_UPS):
            if len(texts) >= request.n or self._reserve(1) == 0:
                break
            more = self._one(dataclasses.replace(request, n=request.n - len(texts), seed=top_up_seed(request.seed, i)),
                             f"{purpose} (top-up)" if purpose else "top-up")
            parts.append(more)
            if not more.texts:
                break
            texts += more.texts
        if not texts:
            raise LLMError(f"the LLM ({self.backend.backend_id}) answered no completion to a request for "
                           f"{request.n} ({len(parts)} calls)")
        if len(texts) < request.n:
            log.warning("the LLM (%s) gave %d of the %d completions asked for, after %d calls",
                        self.backend.backend_id, len(texts), request.n, len(parts))
        if len(parts) == 1:
            return parts[0]
        return Completion(texts[:request.n], sum(p.prompt_tokens for p in parts),
                          sum(p.completion_tokens for p in parts), sum(p.attempts for p in parts),
                          all(p.cached for p in parts))

    def _one(self, request: ChatRequest, purpose: str) -> Completion:
        """One call, already paid for (`_reserve`): from the cache or the backend, and into the ledger."""
        key = request.key(self.backend.backend_id)
        start = time.perf_counter()
        completion, error = None, None
        try:
            completion = self.cache.get(key) if self.cache is not None else None
            if completion is None:
                completion = self.backend.chat(request)
                if self.cache is not None:
                    self.cache.put(key, self.backend.backend_id, {
                        "messages": request.message_dicts(), "temperature": request.temperature,
                        "max_tokens": request.max_tokens, "n": request.n, "seed": request.seed}, completion)
        except LLMError as exc:
            error = str(exc)
        except BaseException:  # not a call after all: give its place in the budget back
            with self._lock:
                self._reserved -= 1
            raise
        entry = {
            "call": None, "purpose": purpose, "key": key[:16], "backend": self.backend.backend_id,
            "cached": bool(completion and completion.cached), "attempts": completion.attempts if completion else None,
            "choices": len(completion.texts) if completion else 0, "n": request.n,
            "prompt_tokens": completion.prompt_tokens if completion else 0,
            "completion_tokens": completion.completion_tokens if completion else 0,
            "seconds": round(time.perf_counter() - start, 3), "error": error,
        }
        with self._lock:
            self._reserved -= 1
            entry["call"] = len(self.ledger)
            self.ledger.append(entry)
            if self.ledger_path:
                with open(self.ledger_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
        if error:
            raise LLMError(error)
        return completion

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        new = [e for e in self.ledger if not e["cached"]]
        return {
            "backend": self.backend.backend_id,
            "calls": self.calls,
            "new_calls": len(new),
            "cached_calls": self.calls - len(new),
            "prompt_tokens": sum(e["prompt_tokens"] for e in self.ledger),
            "completion_tokens": sum(e["completion_tokens"] for e in self.ledger),
            "retries": sum((e["attempts"] or 1) - 1 for e in new),
            "errors": sum(1 for e in self.ledger if e["error"]),
            "max_calls": self.max_calls,
            "max_tokens": self.max_tokens,
            "budget_exhausted": self.exhausted,
        }

    def budget_message(self) -> str:
        return (f"LLM budget spent: {self.calls} calls (max {self.max_calls}), {self.tokens} tokens "
                f"(max {self.max_tokens})")
