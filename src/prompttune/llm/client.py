"""`LLM`: a backend plus the response cache, the ledger of calls and tokens, the budget and the
concurrency limit. Optimisers talk only to this."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .base import ChatBackend, ChatRequest, Completion, LLMBudgetExhausted, LLMError, Message
from .cache import ResponseCache


class LLM:
    """Budget semantics: every call the optimiser makes counts, answered from the cache or not, so a
    rerun makes exactly the same calls as the first run (and, cached, costs nothing). `max_tokens`
    is checked before each call, so the last call may go over it by its own tokens."""

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

    # ------------------------------------------------------------------ budget
    @property
    def calls(self) -> int:
        return len(self.ledger)

    @property
    def tokens(self) -> int:
        return sum(e["prompt_tokens"] + e["completion_tokens"] for e in self.ledger)

    def affordable(self, wanted: int) -> int:
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return 0
        if self.max_calls is None:
            return wanted
        return max(0, min(wanted, self.max_calls - self.calls))

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
        n = self.affordable(len(requests))
        if n < len(requests):
            self.exhausted = True
        todo = requests[:n]
        if self.max_concurrency == 1 or len(todo) <= 1:
            return [self._one(r, purpose) for r in todo]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(lambda r: self._one(r, purpose), todo))

    def _one(self, request: ChatRequest, purpose: str) -> Completion:
        key = request.key(self.backend.backend_id)
        start = time.perf_counter()
        completion = self.cache.get(key) if self.cache is not None else None
        error = None
        if completion is None:
            try:
                completion = self.backend.chat(request)
            except LLMError as exc:
                error = str(exc)
            if completion is not None and self.cache is not None:
                self.cache.put(key, self.backend.backend_id, {"messages": request.message_dicts(),
                                                             "temperature": request.temperature,
                                                             "max_tokens": request.max_tokens, "n": request.n,
                                                             "seed": request.seed}, completion)
        entry = {
            "call": None, "purpose": purpose, "key": key[:16], "backend": self.backend.backend_id,
            "cached": bool(completion and completion.cached), "attempts": completion.attempts if completion else None,
            "prompt_tokens": completion.prompt_tokens if completion else 0,
            "completion_tokens": completion.completion_tokens if completion else 0,
            "seconds": round(time.perf_counter() - start, 3), "error": error,
        }
        with self._lock:
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
