"""Prompt learning on CLIP-style models: train / evaluate / load for the `clip` methods.

`api.train` hands a method whose backbone kind is "clip" to `train_clip`: the task is an image task
(`tasks/images.py`), the backbone a `ClipBackbone`, and evaluation follows the base-to-new protocol
when the task names base classes (train on base; score base test images among base classes, new
ones among new classes; report their harmonic mean).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .api import _check_out_dir, check_same_run, prepare_out_dir, run_fingerprint
from .artifact import backbone_matches, read_artifact, write_artifact
from .errors import ArtifactError, ConfigError
from .methods import get_method
from .methods.clip_base import ClipPredictor, ClipRunContext
from .methods.tpt import TPTPredictor
from .models.clip import ClipBackbone, harmonic_mean, load_clip_backbone
from .models.loading import FINGERPRINT_VERSION, fingerprint_of
from .prompts.clip import ClipPrompt, PromptShape
from .tasks.images import ImageTask, load_image_task
from .utils.env import package_versions


@dataclass
class ClipReport:
    out_dir: Path
    meta: dict[str, Any]
    seconds: float


def check_clip_tensors(meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone: ClipBackbone,
                       where: str) -> None:
    """Refuse tensors that do not fit the artifact's prompt shape on `backbone` (another width, depth or
    class count), naming the tensor and both shapes, before torch would fail inside load_state_dict."""
    shape = meta.get("prompt_shape")
    if not shape:
        return
    try:
        with torch.random.fork_rng(devices=[]):  # the throw-away module must not move the global RNG
            expected = ClipPrompt(PromptShape(**shape), backbone, len(meta["task"]["trained_classes"])).state_dict()
    except TypeError as exc:
        raise ArtifactError(f"{where}: prompt_shape {shape} is not a CLIP prompt shape ({exc})") from None
    for name, want in expected.items():
        got = tensors.get(name)
        if got is None:
            raise ArtifactError(f"{where}: missing tensor '{name}' that its prompt_shape needs")
        if tuple(got.shape) != tuple(want.shape) or not got.is_floating_point():
            raise ArtifactError(f"{where}: tensor '{name}' is {got.dtype} of shape {tuple(got.shape)}; model "
                                f"'{backbone.model_id}' with this prompt shape needs float {tuple(want.shape)}")


def make_predictor(backbone: ClipBackbone, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                   task: ImageTask) -> ClipPredictor:
    cls = TPTPredictor if meta.get("test_time") else ClipPredictor
    return cls(backbone, meta, tensors, task)


def evaluate_clip(predictor: ClipPredictor, task: ImageTask, trained: list[int], base_to_new: bool,
                  limit_per_class: int | None) -> dict[str, Any]:
    """Accuracy on held-out test images: base / new / harmonic mean, or over all classes."""
    if base_to_new and task.base_classes:
        base = task.test_indices(task.base_classes, limit_per_class)
        new_classes = task.new_classes
        new = task.test_indices(new_classes, limit_per_class)
        shape = predictor.meta.get("prompt_shape") or {}
        acc_base = predictor.accuracy(task.test, base, list(task.base_classes))
        acc_new = float("nan") if shape.get("class_specific") else predictor.accuracy(task.test, new, new_classes)
        return {"base": {"accuracy": acc_base, "n": len(base)}, "new": {"accuracy": acc_new, "n": len(new)},
                "hm": harmonic_mean(acc_base, acc_new)}
    idx = task.test_indices(trained, limit_per_class)
    return {"all": {"accuracy": predictor.accuracy(task.test, idx, trained), "n": len(idx)}}


def train_clip(method: str, model: str | ClipBackbone, task: str | ImageTask, shots: int = 16, seed: int = 0,
               out: str | Path = "runs/clip", *, dev_shots: int | None = None, base_to_new: bool = True,
               eval_limit: int | None = None, resume: bool = False, overwrite: bool = False,
               device: str = "auto", dtype: str = "auto", progress: bool | None = None,
               callbacks: list | None = None, **params: Any) -> ClipReport:
    """Learn a prompt for an image task on a CLIP-style model and write the artifact to `out`.

    `eval_limit` caps the test images scored per class.
    """
    started = time.perf_counter()
    method_obj = get_method(method).from_params(params)
    if "clip" not in method_obj.backbone_kinds:
        raise ConfigError(f"method '{method}' does not train on CLIP-style models")
    out_dir = Path(out)
    _check_out_dir(out_dir, resume, overwrite)
    task_obj = task if isinstance(task, ImageTask) else load_image_task(task)
    fewshot = task_obj.few_shot(shots, seed, dev_shots, base_only=base_to_new)
    backbone = model if isinstance(model, ClipBackbone) else load_clip_backbone(model, device, dtype)
    config = method_obj.config.model_dump()
    used = fewshot.train + fewshot.dev  # the data: these images' bytes and labels
    data = {"train": {"source": task_obj.name, "images": len(used),
                      "labels": task_obj.train.labels[used].tolist() if used else [],
                      "sha256": task_obj.train.content_hash(used)}}
    identity = {"method": method, "config": config, "task": task_obj.name, "classes": task_obj.classes,
                "train": fewshot.train, "dev": fewshot.dev, "data": data, "seed": seed,
                "backbone": backbone.fingerprint}
    fingerprint = run_fingerprint(identity)
    check_same_run(out_dir, fingerprint, identity, resume)
    prepare_out_dir(out_dir, overwrite, fingerprint, identity)
    ctx = ClipRunContext(backbone, task_obj, fewshot, seed, out_dir, resume,
                         sys.stderr.isatty() if progress is None else progress, fingerprint, list(callbacks or []))
    result = method_obj.fit(ctx)
    meta: dict[str, Any] = {
        "method": method,
        "prompt_kind": "clip",
        "hyperparameters": config,
        "trainable_parameters": result.trainable_parameters,
        "backbone": {"id": backbone.model_id, "fingerprint": backbone.fingerprint,
                     "fingerprint_version": FINGERPRINT_VERSION, "kind": "clip"},
        "task": {"name": task_obj.name, "source": str(task) if not isinstance(task, ImageTask) else task_obj.name,
                 "classes": task_obj.classes, "templates": task_obj.templates,
                 "base_classes": task_obj.base_classes, "trained_classes": fewshot.classes},
        "shots": shots,
        "seed": seed,
        "history": result.history,
        "run_fingerprint": fingerprint,
        "run_identity": identity,
        "versions": package_versions(),
        **{k: v for k, v in result.info.items() if k in ("prompt_shape", "zero_shot", "test_time",
                                                          "template_scores", "best_step")},
    }
    predictor = make_predictor(backbone, meta, result.tensors, task_obj)
    meta["metrics"] = evaluate_clip(predictor, task_obj, fewshot.classes, base_to_new, eval_limit)
    seconds = time.perf_counter() - started
    meta["seconds"] = round(seconds, 2)
    write_artifact(out_dir, result.tensors, meta)  # swapped in whole; the checkpoints go with the old dir
    return ClipReport(out_dir, meta, seconds)


def load_clip(path: str | Path, model: str | ClipBackbone | None = None, task: str | ImageTask | None = None,
              device: str = "auto", dtype: str = "auto") -> ClipPredictor:
    """A predictor for a CLIP artifact, refusing a backbone whose weights differ from the trained one's."""
    meta, tensors = read_artifact(path)
    if meta["prompt_kind"] != "clip":
        raise ArtifactError(f"{path}: a '{meta['prompt_kind']}' artifact, not a CLIP prompt")
    backbone = model if isinstance(model, ClipBackbone) else load_clip_backbone(model or meta["backbone"]["id"],
                                                                                 device, dtype)
    recorded = meta["backbone"]
    if not backbone_matches(recorded, backbone):
        now = fingerprint_of(backbone, recorded.get("fingerprint_version", 1))
        raise ArtifactError(f"{path}: trained on {recorded['id']} (weights {recorded['fingerprint']}),"
                            f" not on {backbone.model_id} (weights {now})")
    check_clip_tensors(meta, tensors, backbone, str(path))
    if task is None:
        task_obj = load_image_task(meta["task"].get("source") or meta["task"]["name"])
    else:
        task_obj = task if isinstance(task, ImageTask) else load_image_task(task)
    if task_obj.classes[:len(meta["task"]["classes"])] != meta["task"]["classes"]:
        raise ArtifactError(f"{path}: trained with classes {meta['task']['classes']}, the task has "
                            f"{task_obj.classes}")
    return make_predictor(backbone, meta, tensors, task_obj)
