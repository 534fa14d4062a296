"""`llm_judge`: a generative answer scored by an LLM against a rubric (and the reference answers).

Each judgement is one chat call through `prompttune.llm.LLM`, so it lands in that client's ledger, counts
against its call/token budget and is answered from its response cache on a rerun. The judge asks for one
integer on a scale (default 1-10) and maps it to [0, 1]; the first integer on the scale in the reply is the
score, and a reply without one scores 0 and is counted in `unparsable`.

    metric:
      - {name: llm_judge, rubric: "Is the answer a correct, fluent plural?", model: gpt-4o-mini,
         base_url: "http://127.0.0.1:8000/v1"}

From Python the client can be given at bind time: `get_metric("llm_judge", rubric=..., client=llm)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tasks.answer_metrics import register_metric_factory
from .cache import ResponseCache

_INTEGER = re.compile(r"(?<![\w.-])\d+(?!\w)")  # "7", "7/10", "Score: 7." but not the 4 of "gpt4" or "-4"


def judge_prompt(rubric: str, prediction: str, answers: Sequence[str], scale: tuple[int, int]) -> str:
    """The one user message a judgement sends."""
    lo, hi = scale
    parts = [f"Grade an answer by this rubric:\n{rubric.strip()}"]
    references = [a.strip() for a in answers if a.strip()]
    if references:
        parts.append("Reference answer" + ("s" if len(references) > 1 else "") + ":\n"
                     + "\n".join(f"- {a}" for a in references))
    parts.append(f"Answer to grade:\n{prediction.strip() or '(empty)'}")
    parts.append(f"Reply with one integer from {lo} (worst) to {hi} (best) and nothing else.")
    return "\n\n".join(parts)


def parse_score(reply: str, scale: tuple[int, int]) -> float | None:
    """The first integer of `reply` that lies on the scale, mapped to [0, 1]; None when there is none."""
    lo, hi = scale
    for match in _INTEGER.finditer(reply):
        value = int(match.group())
        if lo <= value <= hi:
            return (value - lo) / (hi - lo)
    return None


class LLMJudge:
    """A bound `llm_judge` metric. The client is made on the first judgement (binding costs nothing, so task
    files are checked without starting a model); `unparsable` counts replies that held no score."""

    def __init__(self, rubric: str = "", client: Any = None, model: str | None = None, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", scale: Sequence[int] = (1, 10), cache: Any = "default",
                 max_tokens: int = 16):
        if not isinstance(rubric, str) or not rubric.strip():
            raise ConfigError("metric 'llm_judge': option 'rubric' must be a non-empty text")
        if client is None and not model:
            raise ConfigError("metric 'llm_judge' needs a 'model' (and a 'base_url' for an OpenAI-compatible "
                              "endpoint), or a client given from Python")
        if (not isinstance(scale, Sequence) or len(scale) != 2 or not all(isinstance(v, int) for v in scale)
                or scale[0] >= scale[1]):
            raise ConfigError(f"metric 'llm_judge': option 'scale' must be two integers [low, high], low < high; "
                              f"got {scale!r}")
        self.rubric = rubric
        self.scale = (int(scale[0]), int(scale[1]))
        self.max_tokens = max_tokens
        self.unparsable = 0
        self._client = client
        self._make = {"model": model, "base_url": base_url, "api_key_env": api_key_env,
                      "cache": cache}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _make_client(**self._make)
        return self._client

    def __call__(self, prediction: str, answers: Sequence[str]) -> float:
        reply = self.client.chat(judge_prompt(self.rubric, prediction, answers, self.scale), temperature=0.0,
                                 max_tokens=self.max_tokens, purpose="llm_judge")[0]
        score = parse_score(reply, self.scale)
        if score is None:
            self.unparsable += 1
            return 0.0
        return score


def _make_client(model: str, base_url: str | None, api_key_env: str, cache: Any) -> Any:
    """An LLM for the judge; `cache` is "default", a path, None, or a ResponseCache to share."""
    from . import make_llm  # noqa: PLC0415 (the package's factory; it is defined after this module loads)

    if isinstance(cache, ResponseCache):
        llm = make_llm(model, base_url=base_url, api_key_env=api_key_env, cache=None)
        llm.cache = cache
        return llm
    return make_llm(model, base_url=base_url, api_key_env=api_key_env,
                    cache=cache if cache in (None, "default") else Path(cache))


@register_metric_factory("llm_judge")
def llm_judge(**options: Any) -> LLMJudge:
    """Options: rubric (required); model / base_url / api_key_env, or client; scale [low, high] (default
    [1, 10]); cache ("default", a path, None or a ResponseCache); max_tokens of the reply (default 16)."""
    return LLMJudge(**options)
