"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, `prompttune serve`) through the
official `openai` SDK, which also does the retrying: exponential backoff with jitter on 408/409/429/5xx,
timeouts and refused connections (`max_retries`).

One `chat` is one HTTP request (plus the SDK's retries of it). A server that answers fewer choices than
`n` gets no second request from here: `LLM` asks for the rest, each ask a call of its budget."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import ChatRequest, Completion, LLMError

# query parameters that carry credentials (api_key, key, access_token, sig, ...); api-version and the like stay
_SECRET_PARAM = re.compile(r"key|token|secret|pass|pwd|sig|auth|cred", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` without credentials (user:password@, and secret query parameters): what the ledger, the cache
    key and error messages show. Rotating a key then also keeps the cache."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not _SECRET_PARAM.search(k)])
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        max_concurrency: int = 8,
    ):
        try:
            import openai
        except ImportError:
            raise LLMError("an OpenAI-compatible endpoint needs the openai SDK: pip install 'prompttune[llm]'") \
                from None
        key = os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise LLMError(f"no API key: set ${api_key_env} (or pass a --llm-base-url for a local server)")
        self._openai = openai
        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"  # as given: the SDK sends its credentials
        self.public_url = redact_url(self.base_url)
        self.backend_id = f"openai:{self.public_url.rstrip('/')}:{model}"
        self.max_concurrency = max_concurrency
        # Local servers usually take any key; the SDK insists on one.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or "EMPTY", timeout=timeout,
                                    max_retries=max_retries)

    def chat(self, request: ChatRequest) -> Completion:
        openai = self._openai
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model, messages=request.message_dicts(), temperature=request.temperature,
                max_tokens=request.max_tokens, n=request.n, seed=request.seed,
            )
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise LLMError(f"cannot reach the LLM endpoint {self.public_url} ({type(cause).__name__}: "
                           f"{_short(_redact_urls(str(cause)))}); is the server running and the --llm-base-url "
                           "right?") from None
        except openai.APIStatusError as exc:
            raise LLMError(f"LLM endpoint {self.public_url} answered HTTP {exc.status_code} for model "
                           f"'{self.model}': {_short(_redact_urls(exc.message))}") from None
        response = raw.parse()
        choices = sorted(response.choices or [], key=lambda c: getattr(c, "index", None) or 0)
        texts = [getattr(getattr(c, "message", None), "content", None) or "" for c in choices][:request.n]
        usage = response.usage
        return Completion(
            texts=texts,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            attempts=raw.retries_taken + 1,
        )


def _redact_urls(text: str) -> str:
    """Every URL in an error text without its credentials (httpx puts the request URL in some messages)."""
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", lambda m: redact_url(m.group()), str(text), flags=re.IGNORECASE)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
