"""The LLM client layer: what LLM-driven optimisers (apo, opro, evoprompt, ape) talk to.

    llm = make_llm("smollm2-135m")                                   # in-process chat model
    llm = make_llm("gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")  # any OpenAI-compatible server
    llm.chat("Rewrite this instruction: ...", n=4)
"""

from __future__ import annotations

from pathlib import Path

from ..utils.env import cache_dir
from .base import ChatBackend, ChatRequest, Completion, LLMBudgetExhausted, LLMError
from .cache import ResponseCache
from .client import LLM
from .local import LocalChatBackend
from .openai_backend import OpenAIBackend


def default_cache_path() -> Path:
    return cache_dir() / "llm-cache.sqlite"


def make_llm(
    model: str = "smollm2-135m",
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache: str | Path | None = "default",
    max_calls: int | None = None,
    max_tokens: int | None = None,
    max_concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 4,
    backbone=None,
    ledger_path: str | Path | None = None,
) -> LLM:
    """An `LLM` on an OpenAI-compatible endpoint when `base_url` is given (or `model` starts with
    "openai:"), else on an in-process transformers chat model (`backbone` reuses one already loaded).
    `cache`: "default" (the user cache dir), a path, or None for no cache."""
    if base_url or model.startswith("openai:"):
        backend: ChatBackend = OpenAIBackend(model.removeprefix("openai:"), base_url, api_key_env, timeout,
                                             max_retries, max_concurrency)
    else:
        use = backbone if backbone is not None and getattr(backbone, "model_id", None) == model else None
        backend = LocalChatBackend(model, backbone=use)
    store = None
    if cache is not None:
        store = ResponseCache(default_cache_path() if cache == "default" else cache)
    return LLM(backend, store, max_calls, max_tokens, max_concurrency, ledger_path)


from . import judge  # noqa: E402, F401  (registers the llm_judge metric; it uses make_llm above)

__all__ = ["LLM", "ChatRequest", "Completion", "LLMBudgetExhausted", "LLMError", "LocalChatBackend",
           "OpenAIBackend", "ResponseCache", "make_llm"]
