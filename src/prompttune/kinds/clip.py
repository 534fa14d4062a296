"""Image classification on a CLIP-style dual encoder (CoOp, CoCoOp, MaPLe, ...).

The task is an image task (`tasks/images.py`). When it names base classes, training sees only those
and the score follows the base-to-new protocol: base test images among the base classes, new ones
among the new classes, and their harmonic mean (the primary metric); otherwise the accuracy over all
classes. `eval_limit` caps the test images scored per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifact import check_tensors, field_of
from ..errors import ArtifactError, ConfigError
from ..methods import available_methods
from ..methods.base import RunContext
from ..methods.family.clip import ClipMethod, ClipPredictor
from ..models.clip import ClipBackbone, harmonic_mean, load_clip_backbone
from ..tasks.images import ImageTask, decode_image, load_image_task
from .base import Kind, Prepared

APPLY_FIELDS = ("prompt_shape", "zero_shot", "test_time")  # what the predictor reads from prompt.json


@dataclass
class ClipScores:
    """Accuracy over all classes, or base / new / their harmonic mean."""

    n: int
    accuracy: float | None = None
    base: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    hm: float | None = None
    split: str | None = None
    excluded: int = 0

    @property
    def primary(self) -> str:
        return "hm" if self.hm is not None else "accuracy"

    def as_dict(self) -> dict[str, Any]:
        if self.hm is not None:
            return {"n": self.n, "base": self.base, "new": self.new, "hm": self.hm}
        return {"n": self.n, "accuracy": self.accuracy}

    def line(self) -> str:
        if self.hm is not None:
            assert self.base is not None and self.new is not None
            return f"base={self.base['accuracy']:.4f} new={self.new['accuracy']:.4f} hm={self.hm:.4f}"
        return f"accuracy={self.accuracy:.4f}"

    def summary(self) -> str:
        if self.hm is not None:
            assert self.base is not None and self.new is not None
            return (f"base {self.base['accuracy']:.4f} ({self.base['n']} images), new {self.new['accuracy']:.4f} "
                    f"({self.new['n']} images), harmonic mean {self.hm:.4f}")
        return f"{self.n} images: accuracy {self.accuracy:.4f}"


def score_images(predictor: ClipPredictor, task: ImageTask, trained: list[int], base_to_new: bool,
                 limit_per_class: int | None) -> ClipScores:
    """Accuracy on held-out test images: base / new / harmonic mean, or over all classes."""
    if base_to_new and task.base_classes:
        base = task.test_indices(task.base_classes, limit_per_class)
        new_classes = task.new_classes
        new = task.test_indices(new_classes, limit_per_class)
        shape = predictor.meta.get("prompt_shape") or {}
        acc_base = predictor.accuracy(task.test, base, list(task.base_classes))
        acc_new = float("nan") if shape.get("class_specific") else predictor.accuracy(task.test, new, new_classes)
        return ClipScores(len(base) + len(new), base={"accuracy": acc_base, "n": len(base)},
                          new={"accuracy": acc_new, "n": len(new)}, hm=harmonic_mean(acc_base, acc_new), split="test")
    idx = task.test_indices(trained, limit_per_class)
    return ClipScores(len(idx), accuracy=predictor.accuracy(task.test, idx, trained), split="test")


def make_predictor(backbone: ClipBackbone, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                   task: ImageTask) -> ClipPredictor:
    """The artifact's method's predictor (a method no longer registered: the plain one)."""
    method = available_methods().get(meta["method"])
    cls = method.predictor_class() if method is not None and issubclass(method, ClipMethod) else ClipPredictor
    return cls(backbone, meta, tensors, task)


class ClipKind(Kind):
    name = "clip"
    backbone_kinds = ("clip",)
    options = ("base_to_new",)

    def load_backbone(self, model: str, device: str, dtype: str) -> ClipBackbone:
        return load_clip_backbone(model, device, dtype)

    def is_backbone(self, obj: Any) -> bool:
        return isinstance(obj, ClipBackbone)

    def load_task(self, source: Any, data_dir: str | Path | None) -> ImageTask:
        return source if isinstance(source, ImageTask) else load_image_task(source)

    def prepare(self, task: Any, data_dir: str | Path | None, shots: int, seed: int, dev_shots: int | None,
                eval_split: str | None, eval_limit: int | None, base_to_new: bool = True,
                **options: Any) -> Prepared:
        _test_split_only(eval_split, "eval_split")
        task_obj = self.load_task(task, data_dir)
        fewshot = task_obj.few_shot(shots, seed, dev_shots, base_only=base_to_new)
        used = fewshot.train + fewshot.dev  # the data: these images' bytes and labels
        data = {"train": {"source": task_obj.name, "images": len(used),
                          "labels": task_obj.train.labels[used].tolist() if used else [],
                          "sha256": task_obj.train.content_hash(used)}}
        identity = {"task": task_obj.name, "classes": task_obj.classes, "train": fewshot.train, "dev": fewshot.dev,
                    "data": data}
        source = task_obj.name if isinstance(task, ImageTask) else str(task)
        meta = {"task": {"name": task_obj.name, "source": source, "classes": task_obj.classes,
                         "templates": task_obj.templates, "base_classes": task_obj.base_classes,
                         "trained_classes": fewshot.classes},
                "data": {"shots": shots, "dev_shots": min(shots, 16) if dev_shots is None else dev_shots, "seed": seed,
                         "train_size": len(fewshot.train), "dev_size": len(fewshot.dev), "eval_split": "test",
                         "base_to_new": bool(base_to_new and task_obj.base_classes)}}
        held = {"base_to_new": base_to_new, "limit_per_class": eval_limit}
        return Prepared(task_obj, fewshot, held, identity, meta)

    def context(self, prepared: Prepared, backbone: Any, **common: Any) -> RunContext:
        return RunContext(backbone=backbone, task=prepared.task, data=prepared.data, **common)

    def result_meta(self, info: dict[str, Any]) -> dict[str, Any]:
        return {k: info[k] for k in APPLY_FIELDS if k in info}

    def evaluate(self, backbone: Any, prepared: Prepared, meta: dict[str, Any],
                 tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        task, data, held = prepared.task, prepared.data, prepared.held_out
        predictor = make_predictor(backbone, meta, tensors, task)
        scores: dict[str, Any] = {}
        if not meta.get("test_time"):  # a test-time method tunes per image: scoring dev would double its cost
            scores["dev"] = ClipScores(len(data.dev), accuracy=predictor.accuracy(task.train, data.dev, data.classes))
        scores["eval"] = score_images(predictor, task, data.classes, held["base_to_new"], held["limit_per_class"])
        return scores

    def identity_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """CLIP runs were fingerprinted with the prompt length named `n_ctx`; keeping that name in the
        fingerprint lets runs started before it became `n_tokens` resume."""
        return {("n_ctx" if k == "n_tokens" else k): v for k, v in config.items()}

    def upgrade_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """CLIP artifacts written before the one schema: `shots`/`seed` at the top, `seconds`, and metrics
        {base, new, hm} or {all} instead of {"eval": ...}."""
        if "data" not in meta and isinstance(meta.get("shots"), int):
            meta = dict(meta)
            meta["data"] = {"shots": meta.pop("shots"), "seed": meta.pop("seed", 0), "eval_split": "test"}
            if "seconds" in meta:
                meta["train_seconds"] = meta.pop("seconds")
            old = meta.get("metrics") or {}
            if "hm" in old:
                meta["metrics"] = {"eval": {"split": "test", "n": old["base"]["n"] + old["new"]["n"], **old}}
                meta["primary_metric"] = "hm"
            elif "all" in old:
                meta["metrics"] = {"eval": {"split": "test", **old["all"]}}
                meta["primary_metric"] = "accuracy"
        return meta

    def check_meta(self, meta: dict[str, Any], where: Path) -> None:
        for name in ("classes", "templates", "trained_classes"):
            field_of(meta, f"task.{name}", list, where)
        field_of(meta, "prompt_shape", dict, where, required=False)

    def predictor(self, backbone: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                  task: Any = None) -> ClipPredictor:
        check_tensors(meta, tensors, backbone, where)
        if task is None:
            task_obj = load_image_task(meta["task"].get("source") or meta["task"]["name"])
        else:
            task_obj = task if isinstance(task, ImageTask) else load_image_task(task)
        if task_obj.classes[:len(meta["task"]["classes"])] != meta["task"]["classes"]:
            raise ArtifactError(f"{where}: trained with classes {meta['task']['classes']}, the task has "
                                f"{task_obj.classes}")
        return make_predictor(backbone, meta, tensors, task_obj)

    def eval_plan(self, path: Path, meta: dict[str, Any], task: Any, data_dir: str | Path | None,
                  split: str | None, limit: int | None) -> tuple[ImageTask | None, int | None]:
        """The image task's test split (training drew from its train split only); `limit` per class."""
        _test_split_only(split, "split")
        return (None if task is None else self.load_task(task, data_dir)), limit

    def evaluate_artifact(self, plan: tuple[ImageTask | None, int | None], meta: dict[str, Any],
                          tensors: dict[str, torch.Tensor], backbone: Any, where: str) -> ClipScores:
        """Base-to-new when the artifact was trained on base classes, else over the trained classes."""
        task, limit = plan
        predictor = self.predictor(backbone, meta, tensors, where, task)
        base_to_new = (meta.get("data") or {}).get("base_to_new", True)
        return score_images(predictor, predictor.task, meta["task"]["trained_classes"], base_to_new, limit)

    def engine(self, backbone: Any, artifacts: list[str], max_batch: int = 64, max_decoded_mb: int = 256,
               **limits: Any) -> Any:
        """The image classifier; its queue holds at most four requests' worth of decoded images."""
        from ..serve.clip import ClipEngine, load_clip_prompts
        from .serving import served_predictors

        served = served_predictors(self, backbone, artifacts)
        return ClipEngine(backbone, load_clip_prompts(served), max_batch=max_batch,
                          max_queued_bytes=4 * max_decoded_mb * 2**20)

    def read_inputs(self, raw: list[str]) -> list[Any]:
        """Image files, decoded."""
        paths = [Path(f) for f in raw]
        for p in paths:
            if not p.is_file():
                raise ConfigError(f"{p}: not a readable image file (no such file)")
        return [decode_image(p, str(p)) for p in paths]


def _test_split_only(split: str | None, name: str) -> None:
    if split not in (None, "test"):
        raise ConfigError(f"{name} '{split}': an image task is scored on its test split (its train split holds the "
                          "few-shot draw)")
