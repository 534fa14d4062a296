"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, `prompttune serve`) through the
official `openai` SDK, which also does the retrying: exponential backoff with jitter on 408/409/429/5xx,
timeouts and refused connections (`max_retries`)."""

from __future__ import annotations

import os

from .base import ChatRequest, Completion, LLMError


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
        self.base_url = base_url or "https://api.openai.com/v1"
        self.backend_id = f"openai:{self.base_url.rstrip('/')}:{model}"
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
            raise LLMError(f"cannot reach the LLM endpoint {self.base_url} ({type(cause).__name__}: {cause}); "
                           "is the server running and the --llm-base-url right?") from None
        except openai.APIStatusError as exc:
            raise LLMError(f"LLM endpoint {self.base_url} answered HTTP {exc.status_code} for model "
                           f"'{self.model}': {_short(exc.message)}") from None
        response = raw.parse()
        texts = [(c.message.content or "") for c in sorted(response.choices, key=lambda c: c.index)]
        if len(texts) < request.n:  # servers that ignore `n`: ask again for the rest, one at a time
            for i in range(len(texts), request.n):
                more = self.chat(ChatRequest(request.messages, request.temperature, request.max_tokens, 1,
                                             request.seed * 1000 + i))
                texts += more.texts
        usage = response.usage
        return Completion(
            texts=texts,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            attempts=raw.retries_taken + 1,
        )


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
