"""What the server knows of one name clients pass as `model`: a learned artifact or the bare backbone.

Two kinds of artifact share the text engine: classifiers (`artifact.Predictor`: template + label words)
and generators (`generative.GenerativePredictor`: template + stop strings + a default answer length).
Both hold a prompt of any kind (text, soft, deep key/value, DePT, instance-dependent) and render inputs
through their template; what differs is what they answer, which this class says once for the engine
and the app (`classifies`, `generates`, `stops`, `default_max_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..generative import GenerativePredictor
from ..prompts.kinds import get_prompt_kind


@dataclass
class ServedPrompt:
    """A name clients use as `model`: a learned artifact, or the bare backbone (predictor None)."""

    name: str
    predictor: Any | None  # artifact.Predictor, generative.GenerativePredictor or None
    path: str | None = None

    @property
    def kind(self) -> str:
        return self.predictor.meta["prompt_kind"] if self.predictor else "backbone"

    @property
    def generative(self) -> bool:
        """A generative artifact: its answer is text, so it generates and never classifies."""
        return isinstance(self.predictor, GenerativePredictor)

    @property
    def classifies(self) -> bool:
        return self.predictor is not None and not self.generative

    @property
    def generates(self) -> bool:
        """Everything but a boosted ensemble (several templates, no single one to generate with)."""
        return getattr(self.predictor, "boosted", None) is None

    @property
    def soft(self) -> torch.Tensor | None:
        p = self.predictor.prompt if self.predictor else None
        return p if torch.is_tensor(p) else None

    @property
    def mixable_classify(self) -> bool:
        return self.classifies and get_prompt_kind(self.kind).mixable and \
            not self.predictor.label_words.needs_full_softmax

    @property
    def mixable_generate(self) -> bool:
        return self.predictor is None or get_prompt_kind(self.kind).mixable

    @property
    def stops(self) -> list[str]:
        """The stop strings every answer is cut at: a generative artifact's own (its answers end there)."""
        return self.predictor.stop if self.generative else []

    def default_max_tokens(self, fallback: int) -> int:
        """A request's max_tokens when it gives none: a generative artifact's recorded answer length."""
        return self.predictor.max_new_tokens if self.generative else fallback

    def default_temperature(self) -> float:
        """A request's temperature when it gives none: greedy for a generative artifact (as it was scored and
        as `load(dir).generate` answers), OpenAI's 1.0 otherwise."""
        return 0.0 if self.generative else 1.0

    def why_not_classify(self) -> str | None:
        """Why /v1/classify cannot answer for this name (None when it can)."""
        if self.predictor is None:
            return f"'{self.name}' is the bare backbone; classify needs an artifact (it has the template and labels)"
        if self.generative:
            return (f"'{self.name}' is a generative artifact (task {self.predictor.meta['task']['name']}): it "
                    "generates text, it has no labels to classify into; use /v1/completions or /v1/chat/completions")
        return None

    def model_input(self, text: str) -> str | dict[str, Any]:
        """A request's prompt text as the template takes it: the text itself for a one-field template, a
        JSON object string (field -> text) for a template with several fields, as /v1/classify takes them."""
        fields = list(self.predictor.input_fields)
        if len(fields) == 1:
            return text
        example = json.dumps({f: "..." for f in fields})
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{self.name}' fills a template with fields {', '.join(fields)}: give the prompt as a "
                              f"JSON object string, e.g. {example}")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}

    def render(self, text: str) -> str:
        """The model's input for a request's prompt text: through the artifact's template."""
        return self.predictor.render(self.model_input(text))

    def describe(self) -> dict[str, Any]:
        """What /v1/models shows: names, task, labels or generation settings; never the server's file paths."""
        info: dict[str, Any] = {"kind": self.kind}
        if self.classifies:
            info.update(task_type="classification", task=self.predictor.meta["task"]["name"],
                        labels=self.predictor.labels, method=self.predictor.meta.get("method"))
        elif self.generative:
            meta = self.predictor.meta
            info.update(task_type="generation", task=meta["task"]["name"], method=meta.get("method"),
                        max_new_tokens=self.predictor.max_new_tokens, stop=self.predictor.stop,
                        metric=meta.get("primary_metric"))
        return info


def merge_stops(*groups: Iterable[str] | str | None) -> list[str]:
    """The non-empty stop strings of `groups` (each a string, a list or None), each once, in order."""
    out: list[str] = []
    for group in groups:
        for s in [group] if isinstance(group, str) else (group or []):
            if s and s not in out:
                out.append(s)
    return out
