"""The LLM client protocol: a backend answers one chat request with `n` completions.

Two backends implement it (`OpenAIBackend`: any OpenAI-compatible endpoint; `LocalChatBackend`: an
in-process transformers chat model). `LLM` wraps either with what every optimiser needs: a persistent
response cache, a ledger of calls and tokens, a call/token budget and a concurrency limit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

from ..errors import PromptTuneError


class LLMError(PromptTuneError):
    """An LLM endpoint that cannot be reached or keeps failing, or a response that makes no sense."""


class LLMBudgetExhausted(PromptTuneError):
    """The run's --max-llm-calls / --max-tokens budget is spent; optimisers stop cleanly on it."""


Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: hashable, stable
    temperature: float = 0.7
    max_tokens: int = 128
    n: int = 1
    seed: int = 0  # varies the sample deterministically; part of the cache key

    @classmethod
    def of(cls, messages: list[Message] | str, **kw) -> ChatRequest:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return cls(tuple((m["role"], m["content"]) for m in messages), **kw)

    def message_dicts(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self, backend_id: str) -> str:
        body = {"backend": backend_id, **asdict(self)}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Completion:
    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1  # HTTP attempts it took (retries on 429/5xx/connection errors + 1)
    cached: bool = False
    extra: dict = field(default_factory=dict)


class ChatBackend(Protocol):
    """Answers chat requests. `backend_id` names the model behind it (the cache key includes it)."""

    backend_id: str
    max_concurrency: int

    def chat(self, request: ChatRequest) -> Completion: ...
