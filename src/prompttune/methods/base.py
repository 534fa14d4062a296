"""The method protocol and registry: a method trains (or finds) a prompt for a task on a backbone.

A new method is one file in this folder with a `@register`-ed subclass of `Method`, and one
import line in `methods/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import ConfigError
from ..models import LabelWords


class MethodConfig(BaseModel):
    """Hyper-parameters of a method; unknown keys are errors, so typos never pass silently.

    The prompt length is `n_tokens` for every method; `n_ctx` (CoOp's name, used by older grids and
    artifacts) is accepted for it."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _prompt_length_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "n_ctx" in data and "n_tokens" in cls.model_fields:
            data = dict(data)
            if "n_tokens" in data:
                raise ValueError("n_ctx is another name for n_tokens: give one of them")
            data["n_tokens"] = data.pop("n_ctx")
        return data


@dataclass(kw_only=True)
class RunContext:
    """What a method's `fit` gets, for every kind (see kinds/): the backbone, the task and its few-shot
    draw (`data.train`, `data.dev`); `labels` are the label words of a text classification task."""

    backbone: Any
    task: Any
    data: Any
    seed: int
    out_dir: Path
    labels: LabelWords | None = None
    objective: Any = None  # what soft methods train on (objectives.Objective); the kind sets it
    resume: bool = False
    progress: bool = True
    run_fingerprint: str = ""
    data_dir: Path | None = None  # where task data paths resolve (methods that read other tasks need it)
    callbacks: list[Callable[[int, float], None]] = field(default_factory=list)


@dataclass
class MethodResult:
    """What a method learned. `prompt_kind` says how `tensors` are applied at inference:
    "none" (the template alone), "soft" (tensor "prompt", (n_tokens, hidden) input embeddings) or
    "kv" (tensors "keys" and "values", (layers, kv_heads, n_tokens, head_dim): a deep prompt) or
    "dept" (tensors "prompt" and "input_delta", (max_length, hidden), added to input tokens by position),
    "hard" (no tensors: `text_prompt` holds a `HardPrompt`, the template as text) or "boosted"
    (`text_prompt` holds a `BoostedPrompts` ensemble)."""

    prompt_kind: str
    tensors: dict[str, torch.Tensor]
    trainable_parameters: int
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    text_prompt: dict[str, Any] | None = None  # "hard" / "boosted": the text itself (prompt.json "text_prompt")


class Method(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    backbone_kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)  # which backbones it can train on
    generative: ClassVar[bool] = False  # whether it learns prompts for generative tasks (answers that are text)
    not_generative_because: ClassVar[str] = "it learns from label words, and generative tasks have none"

    def __init__(self, config: MethodConfig):
        self.config = config

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Method:
        try:
            return cls(cls.Config.model_validate(params))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or ("n_ctx" if "n_ctx" in params else "?")
            known = ", ".join(cls.Config.model_fields)
            msg = "unknown hyper-parameter" if err["type"] == "extra_forbidden" else err["msg"].removeprefix(
                "Value error, ")
            raise ConfigError(f"method '{cls.name}': {key}: {msg} (its hyper-parameters: {known or 'none'})") from None

    def run_identity(self, task: Any) -> dict[str, Any]:
        """The hyper-parameters as the run fingerprint records them. A query `budget` left unset on a
        generative task grows by the dev pick's reserve (`family.search.resolved_budget`), so such a run is
        told apart from one given the same number explicitly (on --resume, and in prompt.json)."""
        config = self.config.model_dump()
        if ("budget" in config and getattr(task, "is_generative", False)
                and "budget" not in self.config.model_fields_set):
            config["budget"] = f"{config['budget']} + the dev reserve"
        return config

    @abstractmethod
    def fit(self, ctx: RunContext) -> MethodResult:
        """Learn a prompt on `ctx.data.train`, selecting on `ctx.data.dev`."""

    @classmethod
    def result_lines(cls, meta: dict[str, Any]) -> list[str]:
        """What `prompttune train` prints about the result beside the scores: the prompt found (text
        methods), the queries and LLM calls spent. Methods with more to say extend it."""
        info, text, lines = meta.get("info", {}), meta.get("text_prompt"), []
        if text and "template" in text:
            lines.append(f"prompt template: {text['template']!r}")
            if text.get("words"):
                lines.append(f"label words: {text['words']}")
        elif text and "members" in text:
            lines += [f"alpha {m['alpha']:.3f}  words {m['words']}  template {m['template']!r}"
                      for m in text["members"]]
        if "queries_used" in info:
            budget = info.get("budget")
            lines.append(f"queries used: {info['queries_used']:,}" + (f" of --budget {budget:,}" if budget else ""))
        if "llm" in info:
            llm = info["llm"]
            lines.append(f"LLM calls: {llm['calls']} ({llm['new_calls']} new, {llm['cached_calls']} from the cache), "
                         f"tokens {llm['prompt_tokens'] + llm['completion_tokens']:,}, retries {llm['retries']}"
                         + (" - LLM budget spent" if llm["budget_exhausted"] else ""))
        return lines

    def extra_metrics(self, ctx: RunContext, result: MethodResult, score: Callable[[Any], float]) -> dict[str, Any]:
        """Figures a benchmark records beside the held-out score (e.g. select's oracle), computed with
        `score(prompt)`: an applied prompt's primary metric on the held-out data. Only run when asked
        (`train(..., extra_metrics=True)`, as the bench does), since each score costs an evaluation."""
        return {}


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"method name '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ConfigError(f"--method '{name}' is not a method (available: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def available_methods() -> dict[str, type[Method]]:
    return dict(sorted(_REGISTRY.items()))


def generative_methods() -> list[str]:
    """The methods that learn prompts for generative tasks."""
    return [name for name, cls in available_methods().items() if cls.generative]
