"""Generative tasks on a causal LM: template + target text + metrics (exact match, F1, ROUGE, ...).

The task's answer is text. Soft methods train on the target's negative log-likelihood (the objective
`objectives.generation`), select on dev by the task's metric on greedy generations, and every score
here is a metric on generated text. Artifacts are served by the text engine (`engine_group`), so one
server takes classification and generative prompts of the same model together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..artifact import check_tensors, field_of
from ..errors import ArtifactError, ConfigError
from ..generative import GenerationResult, GenerativePredictor, evaluate_generation
from ..methods.base import RunContext, generative_methods
from ..models import CausalLMBackbone
from ..objectives import GenerationObjective
from ..tasks import Task, task_is_generative
from .base import Kind, Prepared
from .text import EvalPlan, TextKind


class GenerationKind(TextKind):
    name = "generation"
    backbone_kinds = ("causal-lm",)
    engine_group = "text"
    generates = True
    predictor_class = GenerativePredictor
    carries = "template and metrics"

    def accepts(self, model: Any, task: Any) -> bool:
        return task_is_generative(task) and Kind.accepts(self, model, task)  # not TextKind's: it refuses these

    def check_method(self, method: str, method_cls: Any, task: Any, model: Any = None) -> None:
        if not method_cls.generative:
            raise ConfigError(f"method '{method}' cannot learn a prompt for generative task "
                              f"'{getattr(task, 'name', task)}': "
                              f"{method_cls.not_generative_because} (methods that can: "
                              f"{', '.join(generative_methods())})")

    def load_backbone(self, model: str, device: str, dtype: str) -> Any:
        backbone = super().load_backbone(model, device, dtype)
        if not isinstance(backbone, CausalLMBackbone):
            raise ConfigError(f"model '{model}' is an {backbone.kind}, which cannot generate: a generative task "
                              "needs a causal LM")
        return backbone

    def is_backbone(self, obj: Any) -> bool:
        return isinstance(obj, CausalLMBackbone)

    def load_task(self, source: Any, data_dir: str | Path | None) -> Task:
        task = super().load_task(source, data_dir)
        if not task.is_generative:
            raise ConfigError(f"task '{task.name}' has a verbalizer, not a target: it is a classification task")
        return task

    def context(self, prepared: Prepared, backbone: Any, **common: Any) -> RunContext:
        data_dir = prepared.options.get("data_dir")
        return RunContext(backbone=backbone, task=prepared.task, data=prepared.data,
                          objective=GenerationObjective(backbone, prepared.task),
                          data_dir=Path(data_dir) if data_dir else None, **common)

    def evaluate(self, backbone: Any, prepared: Prepared, meta: dict[str, Any],
                 tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        task, prompt = prepared.task, self._prompt(backbone, meta, tensors)
        scores = {"dev": evaluate_generation(backbone, task, prepared.data.dev, prompt)}
        if prepared.held_out:
            scores["eval"] = evaluate_generation(backbone, task, prepared.held_out, prompt)
            scores["eval"].split = prepared.options["split"]
        return scores

    def score(self, backbone: Any, prepared: Prepared, prompt: Any) -> float:
        return evaluate_generation(backbone, prepared.task, prepared.held_out or prepared.data.dev, prompt).score

    def port(self, other: Any, prepared: Prepared, meta: dict[str, Any],
             tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """A text prompt and the plain template on another model, on the same held-out examples."""
        from ..prompts.hard import HardPrompt

        task, examples = prepared.task, prepared.held_out
        found = evaluate_generation(other, task, examples, self._prompt(other, meta, tensors))
        plain = evaluate_generation(other, task, examples, HardPrompt(task.spec.template))
        return {"model": other.model_id, "fingerprint": other.fingerprint, "n": found.n, **found.metrics,
                f"template_{found.primary}": plain.score}

    def check_meta(self, meta: dict[str, Any], where: Path) -> None:
        field_of(meta, "task.template", str, where)
        fields = field_of(meta, "task.input_fields", list, where)
        if not fields or not all(isinstance(f, str) for f in fields):
            raise ArtifactError(f"{where}: field 'task.input_fields' must be a non-empty list of strings")
        field_of(meta, "task.target", str, where)
        if not field_of(meta, "task.metric", list, where):
            raise ArtifactError(f"{where}: field 'task.metric' must name at least one metric")
        field_of(meta, "task.generation.max_new_tokens", int, where)
        stop = field_of(meta, "task.generation.stop", list, where)
        if not all(isinstance(s, str) and s for s in stop):
            raise ArtifactError(f"{where}: field 'task.generation.stop' must be a list of non-empty strings")

    def answer(self, predictor: Any, inputs: list[Any]) -> list[tuple[str, dict[str, float]]]:
        return [(text, {}) for text in predictor.generate(list(inputs))]

    def evaluate_artifact(self, plan: tuple[Task, EvalPlan], meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                          backbone: Any, where: str) -> GenerationResult:
        task, held = plan
        check_tensors(meta, tensors, backbone, where)
        result = evaluate_generation(backbone, task, held.examples, self._prompt(backbone, meta, tensors))
        result.split, result.excluded = held.split, held.excluded
        return result
