"""The Python API behind the CLI: `train`, `evaluate`, `load`."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .artifact import (
    ARTIFACT_JSON,
    backbone_meta,
    check_backbone,
    load,
    prompt_from_tensors,
    read_artifact,
    task_meta,
    write_artifact,
)
from .errors import ConfigError
from .evaluation import EvalResult, evaluate_prompt
from .methods import RunContext, available_methods, get_method
from .models import BACKBONE_TYPES, Backbone, load_backbone
from .tasks import Example, Task, load_task
from .training import CHECKPOINTS, DataParallel
from .utils.env import package_versions

__all__ = ["TrainReport", "evaluate", "evaluate_artifact", "load", "train"]


@dataclass
class TrainReport:
    out_dir: Path
    meta: dict[str, Any]
    dev: EvalResult
    test: EvalResult | None
    seconds: float


def _backbone(model: str | Backbone, device: str, dtype: str) -> Backbone:
    return model if isinstance(model, BACKBONE_TYPES) else load_backbone(model, device=device, dtype=dtype)


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if overwrite or not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if (out / ARTIFACT_JSON).exists() and not resume:
        raise ConfigError(f"--out {out} already holds an artifact; pass --overwrite to replace it")
    if any(out.glob(CHECKPOINTS)) and not resume:
        raise ConfigError(
            f"--out {out} holds an unfinished run's checkpoint; pass --resume to continue it or --overwrite"
        )


def held_out(task: Task, split: str, used: list[Example], limit: int | None) -> list[Example]:
    """The evaluation examples: `split` minus any example used for training or selection."""
    taken = {ex.origin for ex in used}
    examples = [ex for ex in task.split(split) if ex.origin not in taken]
    return examples[:limit] if limit else examples


def train(
    method: str = "prompt-tuning",
    model: str | Backbone = "smollm2-135m",
    task: str = "sst2",
    data_dir: str | Path | None = None,
    shots: int = 32,
    seed: int = 0,
    out: str | Path = "runs/prompt",
    *,
    dev_shots: int | None = None,
    eval_split: str | None = None,
    eval_limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool | None = None,
    callbacks: list[Callable[[int, float], None]] | None = None,
    port_to: list[str | Backbone] | None = None,
    **params: Any,
) -> TrainReport:
    """Learn a prompt with `method` and write the artifact to `out`.

    Everything the user controls is validated before anything is written, so bad input leaves no
    partial artifact. `params` are the method's hyper-parameters (see `prompttune methods`).
    `port_to`: other models a text prompt (hard or boosted) is evaluated on, unchanged, beside the
    plain template (portability, recorded in prompt.json "portability").
    """
    if "clip" in get_method(method).backbone_kinds:  # image tasks on CLIP-style models: see vlm.py
        from .vlm import train_clip

        return train_clip(method, model, task, shots, seed, out, dev_shots=dev_shots, eval_limit=eval_limit,
                          resume=resume, overwrite=overwrite, device=device, dtype=dtype, progress=progress,
                          callbacks=callbacks, **params)
    started = time.perf_counter()
    method_obj = get_method(method).from_params(params)
    out_dir = Path(out)
    _check_out_dir(out_dir, resume, overwrite)
    task_obj = load_task(task, data_dir)
    fewshot = task_obj.few_shot(shots, seed, dev_shots)
    split = eval_split or task_obj.eval_split_name
    test_examples = held_out(task_obj, split, fewshot.train + fewshot.dev, eval_limit)
    backbone = _backbone(model, device, dtype)
    if backbone.kind not in method_obj.backbone_kinds:
        fits = [n for n, c in available_methods().items() if backbone.kind in c.backbone_kinds]
        raise ConfigError(
            f"method '{method}' trains on {' or '.join(method_obj.backbone_kinds)} backbones; "
            f"model '{backbone.model_id}' is a {backbone.kind} ({type(backbone.model).__name__}); "
            f"methods for it: {', '.join(fits)}"
        )
    labels = backbone.label_words(task_obj.words(), task_obj.labels)
    if port_to and not getattr(method_obj, "text_result", False):
        raise ConfigError(f"--port-to evaluates text prompts on other models; method '{method}' does not learn a "
                          "text prompt (a soft prompt is tied to its model)")
    ports = [_backbone(m, device, dtype) for m in port_to or []]  # a bad model id fails before training
    config = method_obj.config.model_dump()
    run_key = json.dumps(
        {"method": method, "config": config, "task": task_obj.spec.model_dump(), "shots": shots, "seed": seed,
         "dev_shots": dev_shots, "backbone": backbone.fingerprint}, sort_keys=True,
    )
    fingerprint = hashlib.sha256(run_key.encode()).hexdigest()[:16]

    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(
        backbone=backbone, task=task_obj, data=fewshot, labels=labels, seed=seed, out_dir=out_dir,
        resume=resume, progress=sys.stderr.isatty() if progress is None else progress,
        run_fingerprint=fingerprint, callbacks=list(callbacks or []), data_dir=Path(data_dir) if data_dir else None,
    )
    try:
        result = method_obj.fit(ctx)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    prompt = prompt_from_tensors(result.prompt_kind, result.tensors, backbone.device, result.text_prompt)
    dev = evaluate_prompt(backbone, task_obj, labels, fewshot.dev, prompt)
    test = evaluate_prompt(backbone, task_obj, labels, test_examples, prompt) if test_examples else None
    portability = [_port(other, task_obj, test_examples, prompt) for other in ports]
    meta = {
        "method": method,
        "prompt_kind": result.prompt_kind,
        "hyperparameters": config,
        "trainable_parameters": result.trainable_parameters,
        "backbone": backbone_meta(backbone),
        "task": task_meta(task_obj),
        "data": {"shots": shots, "dev_shots": dev_shots or shots, "seed": seed, "train_size": len(fewshot.train),
                 "dev_size": len(fewshot.dev), "eval_split": split, "eval_size": len(test_examples)},
        # "dev": the k-shot dev set used for selection; "eval": the held-out examples of `eval_split`
        "metrics": {"dev": dev.as_dict(), **({"eval": {"split": split, **test.as_dict()}} if test else {})},
        "history": result.history,
        "info": result.info,
        **({"text_prompt": result.text_prompt} if result.text_prompt is not None else {}),
        **({"portability": portability} if portability else {}),
        "run_fingerprint": fingerprint,
        "train_seconds": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if DataParallel.current().is_main:  # under `accelerate launch`, one process writes
        write_artifact(out_dir, result.tensors, meta)
        for ckpt in out_dir.glob(CHECKPOINTS):
            ckpt.unlink()
    return TrainReport(out_dir, meta, dev, test, time.perf_counter() - started)


def _port(other: Backbone, task: Task, examples: list[Example], prompt) -> dict[str, Any]:
    """A text prompt and the plain template on another model, on the same held-out examples."""
    from .prompts.hard import HardPrompt

    labels = other.label_words(task.words(), task.labels)
    found = evaluate_prompt(other, task, labels, examples, prompt)
    plain = evaluate_prompt(other, task, labels, examples, HardPrompt(task.spec.template))
    return {"model": other.model_id, "fingerprint": other.fingerprint, "n": found.n,
            "accuracy": found.accuracy, "macro_f1": found.macro_f1, "template_accuracy": plain.accuracy}


def evaluate(
    backbone: Backbone, task: Task, examples: list[Example], prompt=None, batch_size: int = 32
) -> EvalResult:
    labels = backbone.label_words(task.words(), task.labels)
    return evaluate_prompt(backbone, task, labels, examples, prompt, batch_size)


def evaluate_artifact(
    path: str | Path, task: str | None = None, data_dir: str | Path | None = None, split: str | None = None,
    limit: int | None = None, model: str | Backbone | None = None, device: str = "auto",
    dtype: str = "auto",
) -> EvalResult:
    """Score an artifact on a task split (by default the task it was trained on)."""
    meta, tensors = read_artifact(path)
    task_obj = load_task(task or meta["task"].get("source", meta["task"]["name"]), data_dir)
    examples = task_obj.split(split or task_obj.eval_split_name)
    examples = examples[:limit] if limit else examples
    backbone = _backbone(model or meta["backbone"]["id"], device, dtype)
    check_backbone(meta, backbone, f"artifact {path}")
    prompt = prompt_from_tensors(meta["prompt_kind"], tensors, backbone.device, meta.get("text_prompt"))
    return evaluate(backbone, task_obj, examples, prompt)
