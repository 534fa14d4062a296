"""Text classification on a language model (causal LM or encoder): template + verbalizer tasks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifact import Predictor, check_tensors, field_of, prompt_from_tensors, task_meta
from ..errors import ArtifactError, ConfigError, DataError
from ..evaluation import EvalResult, evaluate_prompt
from ..methods.base import RunContext, generative_methods
from ..models import BACKBONE_TYPES, load_backbone
from ..objectives import ClassificationObjective
from ..tasks import Example, Task, load_task, task_is_generative
from .base import Kind, Prepared


@dataclass
class EvalPlan:
    examples: list[Example]
    split: str
    excluded: int  # examples of `split` left out as drawn for training or selection


def held_out(task: Task, split: str, used: list[Example], limit: int | None) -> list[Example]:
    """The evaluation examples: `split` minus any example used for training or selection."""
    taken = {ex.origin for ex in used}
    examples = [ex for ex in task.split(split) if ex.origin not in taken]
    return examples[:limit] if limit else examples


# Fields the task schema gained with generative tasks: a classification task's identity leaves them out while
# they are unset, so runs started before they existed still --resume.
_GENERATIVE_FIELDS = {"target", "also_accept", "metric", "generation", "dev_metric", "keep_rows_with"}


def task_identity(spec: Any) -> dict[str, Any]:
    """What of a task's spec enters the run fingerprint."""
    if spec.is_generative:
        return spec.model_dump()
    unset = {f for f in _GENERATIVE_FIELDS
             if getattr(spec, f) == type(spec).model_fields[f].get_default(call_default_factory=True)}
    return spec.model_dump(exclude=unset)


class TextKind(Kind):
    name = "text"
    backbone_kinds = ("causal-lm", "encoder")
    generates = False  # whether its tasks' answers are text (the generation kind) or labels
    predictor_class: type = Predictor  # what applies its artifacts
    carries = "template and labels"  # what an artifact of this kind brings along (for the `task` refusal)

    def accepts(self, model: Any, task: Any) -> bool:
        return not task_is_generative(task) and super().accepts(model, task)

    def check_method(self, method: str, method_cls: Any, task: Any, model: Any = None) -> None:
        if task_is_generative(task) and method_cls.generative:  # then only the model is wrong for it
            raise ConfigError(f"task '{getattr(task, 'name', task)}' is generative (its answer is text): it needs "
                              f"a causal LM, which model '{model}' is not")
        if task_is_generative(task):
            raise ConfigError(f"method '{method}' cannot learn a prompt for generative task "
                              f"'{getattr(task, 'name', task)}': "
                              f"{method_cls.not_generative_because} (methods that can: "
                              f"{', '.join(generative_methods())})")

    def load_backbone(self, model: str, device: str, dtype: str) -> Any:
        return load_backbone(model, device=device, dtype=dtype)

    def is_backbone(self, obj: Any) -> bool:
        return isinstance(obj, BACKBONE_TYPES)

    def load_task(self, source: Any, data_dir: str | Path | None) -> Task:
        return source if isinstance(source, Task) else load_task(source, data_dir)

    def prepare(self, task: Any, data_dir: str | Path | None, shots: int, seed: int, dev_shots: int | None,
                eval_split: str | None, eval_limit: int | None, **options: Any) -> Prepared:
        task_obj = self.load_task(task, data_dir)
        fewshot = task_obj.few_shot(shots, seed, dev_shots)
        split = eval_split or task_obj.eval_split_name
        examples = held_out(task_obj, split, fewshot.train + fewshot.dev, eval_limit)
        identity = {"task": task_identity(task_obj.spec), "data": task_obj.data_identity(), "shots": shots,
                    "dev_shots": dev_shots}
        meta = {"task": task_meta(task_obj),
                "data": {"shots": shots, "dev_shots": dev_shots or shots, "seed": seed,
                         "train_size": len(fewshot.train), "dev_size": len(fewshot.dev), "eval_split": split,
                         "eval_size": len(examples)}}
        return Prepared(task_obj, fewshot, examples, identity, meta, {"split": split, "data_dir": data_dir})

    def context(self, prepared: Prepared, backbone: Any, **common: Any) -> RunContext:
        labels = backbone.label_words(prepared.task.words(), prepared.task.labels)
        data_dir = prepared.options.get("data_dir")
        return RunContext(backbone=backbone, task=prepared.task, data=prepared.data, labels=labels,
                          objective=ClassificationObjective(backbone, prepared.task, labels),
                          data_dir=Path(data_dir) if data_dir else None, **common)

    def _prompt(self, backbone: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
        return prompt_from_tensors(meta["prompt_kind"], tensors, backbone.device, meta.get("text_prompt"))

    def evaluate(self, backbone: Any, prepared: Prepared, meta: dict[str, Any],
                 tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        task = prepared.task
        labels = backbone.label_words(task.words(), task.labels)
        prompt = self._prompt(backbone, meta, tensors)
        scores = {"dev": evaluate_prompt(backbone, task, labels, prepared.data.dev, prompt)}
        if prepared.held_out:
            scores["eval"] = evaluate_prompt(backbone, task, labels, prepared.held_out, prompt)
            scores["eval"].split = prepared.options["split"]
        return scores

    def score(self, backbone: Any, prepared: Prepared, prompt: Any) -> float:
        task = prepared.task
        labels = backbone.label_words(task.words(), task.labels)
        return evaluate_prompt(backbone, task, labels, prepared.held_out or prepared.data.dev, prompt).accuracy

    def port(self, other: Any, prepared: Prepared, meta: dict[str, Any],
             tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """A text prompt and the plain template on another model, on the same held-out examples."""
        from ..prompts.hard import HardPrompt

        task, examples = prepared.task, prepared.held_out
        labels = other.label_words(task.words(), task.labels)
        found = evaluate_prompt(other, task, labels, examples, self._prompt(other, meta, tensors))
        plain = evaluate_prompt(other, task, labels, examples, HardPrompt(task.spec.template))
        return {"model": other.model_id, "fingerprint": other.fingerprint, "n": found.n,
                "accuracy": found.accuracy, "macro_f1": found.macro_f1, "template_accuracy": plain.accuracy}

    def check_meta(self, meta: dict[str, Any], where: Path) -> None:
        field_of(meta, "task.template", str, where)
        fields = field_of(meta, "task.input_fields", list, where)
        if not fields or not all(isinstance(f, str) for f in fields):
            raise ArtifactError(f"{where}: field 'task.input_fields' must be a non-empty list of strings")
        verbalizer = field_of(meta, "task.verbalizer", dict, where)
        for label, words in verbalizer.items():
            ok = isinstance(words, str) or (isinstance(words, list) and words and all(isinstance(w, str)
                                                                                       for w in words))
            if not ok:
                raise ArtifactError(f"{where}: field 'task.verbalizer.{label}' must be a word or a non-empty list "
                                    f"of words, not {words!r:.60}")

    def predictor(self, backbone: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                  task: Any = None) -> Any:
        if task is not None:
            raise ConfigError(f"{where}: a text prompt carries its own {self.carries}; `task` applies to image "
                              "artifacts only (to score it on another task, use evaluate_artifact)")
        return self.predictor_class(backbone, meta, tensors, where)

    def eval_plan(self, path: Path, meta: dict[str, Any], task: Any, data_dir: str | Path | None,
                  split: str | None, limit: int | None) -> tuple[Task, EvalPlan]:
        """A task split (by default the artifact's own task's), minus the examples its run drew for
        training and selection, redrawn from the shots and seed prompt.json's `data` records: on the same
        split and limit the numbers equal the train-time held-out ones."""
        task_obj = task if isinstance(task, Task) else load_task(
            task or meta["task"].get("source", meta["task"]["name"]), data_dir)
        if task_obj.is_generative != self.generates:
            have, want = ("generative", "classification") if task_obj.is_generative else ("classification",
                                                                                        "generative")
            raise ConfigError(f"task '{task_obj.name}' is a {have} task; this artifact's prompt was learned for a "
                              f"{want} task and is scored on one")
        split_name = split or task_obj.eval_split_name
        used = _drawn_for_training(path, meta, task_obj, data_dir)
        taken = {ex.origin for ex in used}
        examples = held_out(task_obj, split_name, used, limit)
        return task_obj, EvalPlan(examples, split_name, sum(ex.origin in taken for ex in task_obj.split(split_name)))

    def evaluate_artifact(self, plan: tuple[Task, EvalPlan], meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                          backbone: Any, where: str) -> EvalResult:
        task, held = plan
        check_tensors(meta, tensors, backbone, where)
        labels = backbone.label_words(task.words(), task.labels)
        result = evaluate_prompt(backbone, task, labels, held.examples, self._prompt(backbone, meta, tensors))
        result.split, result.excluded = held.split, held.excluded
        return result

    def engine(self, backbone: Any, artifacts: list[str], max_batch: int = 64, batch_wait_ms: float = 2.0,
               **limits: Any) -> Any:
        """The text engine: classification and generation, the backbone itself served under its own name."""
        from ..serve.engine import Engine, load_prompts
        from ..serve.specs import public_name
        from .serving import served_predictors

        served = served_predictors(self, backbone, artifacts, reserved=(public_name(backbone.model_id),))
        return Engine(backbone, load_prompts(backbone, served), max_batch=max_batch, batch_wait_ms=batch_wait_ms)

    def read_inputs(self, raw: list[str]) -> list[Any]:
        """Plain texts, or JSON objects for templates with several fields."""
        import json

        inputs: list[Any] = []
        for text in raw:
            if text.lstrip().startswith("{"):
                try:
                    inputs.append(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"input {text[:40]!r} looks like JSON but is not ({exc.msg})") from None
            else:
                inputs.append(text)
        return inputs


def _drawn_for_training(path: Path, meta: dict[str, Any], task: Task, data_dir: str | Path | None) -> list[Example]:
    """The train and dev examples the artifact's run drew (`Task.few_shot` with its recorded shots and seed),
    from the artifact's own task (which `task` may be, or share data files with: origins are file:line)."""
    from ..rundir import describe_differences

    data = meta.get("data") or {}
    if not isinstance(data.get("shots"), int) or not isinstance(data.get("seed"), int):
        return []  # imported artifacts record no k-shot draw: nothing of `task` was trained on
    own = meta["task"].get("source", meta["task"]["name"])
    source = task
    if own != task.origin:  # scoring on another task: it shares data with the trained one only by file:line
        try:
            source = load_task(own, data_dir)
        except (ConfigError, DataError) as exc:
            warnings.warn(f"artifact {path} was trained on task {own}, whose data cannot be read here ({exc}); "
                          f"no example of {task.name} is left out as used in training", UserWarning, stacklevel=4)
            return []
    recorded_data = (meta.get("run_identity") or {}).get("data")
    if isinstance(recorded_data, dict):  # the draw is by position in the data: the data must be the same
        now = source.data_identity()
        changed = [split for split in ("train", "dev") if recorded_data.get(split) != now.get(split)]
        if changed:
            why = describe_differences({"data": {k: recorded_data.get(k) for k in changed}},
                                       {"data": {k: now.get(k) for k in changed}})
            raise DataError(f"artifact {path}: its task's data ({own}) changed since training ({why}), so which "
                            "examples training used cannot be told; evaluate with the data it was trained on")
    fewshot = source.few_shot(data["shots"], data["seed"], data.get("dev_shots"))
    recorded = (data.get("train_size"), data.get("dev_size"))
    if None not in recorded and recorded != (len(fewshot.train), len(fewshot.dev)):
        raise DataError(
            f"artifact {path}: its task data ({own}) no longer gives the draw it was trained on ({recorded[0]} train "
            f"and {recorded[1]} dev examples recorded, {len(fewshot.train)} and {len(fewshot.dev)} now), so which "
            "examples training used cannot be told; evaluate with the data it was trained on"
        )
    return fewshot.train + fewshot.dev
