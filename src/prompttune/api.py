"""The Python API behind the CLI: `train`, `evaluate`, `load`."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .artifact import (
    ARTIFACT_JSON,
    RUN_JSON,
    backbone_meta,
    check_backbone,
    check_tensors,
    foreign_entries,
    holds_cwd,
    is_run_dir,
    load,
    prompt_from_tensors,
    read_artifact,
    task_meta,
    write_artifact,
)
from .errors import ConfigError, DataError
from .evaluation import EvalResult, evaluate_prompt
from .methods import RunContext, available_methods, get_method
from .models import BACKBONE_TYPES, Backbone, load_backbone
from .tasks import Example, Task, load_task
from .training import CHECKPOINTS, DataParallel
from .utils.env import package_versions
from .utils.io import atomic_write_json

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
    """Refuse, before any work, an --out that this run may not write into (or, with --overwrite, delete)."""
    if not out.exists():
        _check_writable(out)
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    _check_writable(out)
    if overwrite:
        if holds_cwd(out.resolve()):
            raise ConfigError(f"--overwrite: --out {out} is the working directory or holds it; refusing to delete "
                              "it: choose another --out")
        foreign = foreign_entries(out)
        if foreign or (any(out.iterdir()) and not is_run_dir(out)):
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(f"--overwrite: --out {out} is not a prompttune artifact or run directory (it holds "
                              f"{shown or 'no artifact'}); refusing to delete it: choose another --out")
        return
    if (out / ARTIFACT_JSON).exists() and not resume:
        raise ConfigError(f"--out {out} already holds an artifact; pass --overwrite to replace it")
    if any(out.glob(CHECKPOINTS)) and not resume:
        raise ConfigError(
            f"--out {out} holds an unfinished run's checkpoint; pass --resume to continue it or --overwrite"
        )


def _check_writable(out: Path) -> None:
    """Create and remove a file in --out (or the nearest directory above it that exists), so a run that could
    not write its artifact fails now, not after training."""
    where = out
    while not where.exists() and where != where.parent:
        where = where.parent
    probe = where / f".prompttune-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write into {where} ({exc.strerror}); choose another --out") from None


def run_fingerprint(identity: dict[str, Any]) -> str:
    """The hash of everything that determines a run's result (method, config, task, data, seeds, backbone)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def describe_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """What differs between two run identities, for a message: "seed 0 -> 7; train data ... changed"."""
    if not old:
        return "it records no run identity"
    a, b = _flat(old), _flat(new)
    out: list[str] = []
    for split, info in (new.get("data") or {}).items():
        before = (old.get("data") or {}).get(split)
        if before != info:
            where = info.get("source", split) if isinstance(info, dict) else split
            size = ""
            if isinstance(before, dict) and "size" in before and "size" in info and before["size"] != info["size"]:
                size = f": {before['size']} -> {info['size']} bytes"
            out.append(f"the {split} data ({where}) changed{size}")
    for key in sorted(set(a) | set(b)):
        if key.startswith("data.") or a.get(key) == b.get(key):
            continue
        out.append(f"{key} {str(a.get(key, '(unset)'))[:40]} -> {str(b.get(key, '(unset)'))[:40]}")
    return "; ".join(out[:limit]) + ("; ..." if len(out) > limit else "") if out else "its fingerprint differs"


def check_same_run(out: Path, fingerprint: str, identity: dict[str, Any], resume: bool) -> None:
    """With --resume, continue only the run that --out holds: refuse an artifact or unfinished run of
    another one (other method, hyper-parameters, seed, shots, model or changed data), saying what differs."""
    if not resume or not out.is_dir():
        return
    unfinished = "checkpoint" if any(out.glob(CHECKPOINTS)) else "unfinished run"
    for name, what in ((ARTIFACT_JSON, "artifact"), (RUN_JSON, unfinished)):
        path = out / name
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"--resume: {path} is unreadable, so its run cannot be told; use --overwrite") from None
        if not isinstance(recorded, dict) or recorded.get("run_fingerprint") != fingerprint:
            before = recorded.get("run_identity") if isinstance(recorded, dict) else None
            why = describe_differences(before or {}, identity)
            raise ConfigError(
                f"--resume: --out {out}: its {what} belongs to a different run ({why}); "
                "--resume continues only the same run: choose another --out, or --overwrite to replace it"
            )
        return


def prepare_out_dir(out: Path, overwrite: bool, fingerprint: str, identity: dict[str, Any]) -> bool:
    """Clear --out for --overwrite (checked safe by `_check_out_dir`), create it and record the run's
    identity in run.json; returns whether the directory is new."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if DataParallel.current().is_main:
        atomic_write_json(out / RUN_JSON, {"run_fingerprint": fingerprint, "run_identity": identity})
    return created


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
    identity = {"method": method, "config": config, "task": task_obj.spec.model_dump(),
                "data": task_obj.data_identity(), "shots": shots, "seed": seed, "dev_shots": dev_shots,
                "backbone": backbone.fingerprint}
    fingerprint = run_fingerprint(identity)
    check_same_run(out_dir, fingerprint, identity, resume)
    created = prepare_out_dir(out_dir, overwrite, fingerprint, identity)
    ctx = RunContext(
        backbone=backbone, task=task_obj, data=fewshot, labels=labels, seed=seed, out_dir=out_dir,
        resume=resume, progress=sys.stderr.isatty() if progress is None else progress,
        run_fingerprint=fingerprint, callbacks=list(callbacks or []), data_dir=Path(data_dir) if data_dir else None,
    )
    cut_before = getattr(backbone, "truncated_inputs", 0)
    try:
        result = method_obj.fit(ctx)
    except BaseException:
        if not any(out_dir.glob(CHECKPOINTS)):  # nothing to resume: leave no trace of the run
            (out_dir / RUN_JSON).unlink(missing_ok=True)
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
                 "dev_size": len(fewshot.dev), "eval_split": split, "eval_size": len(test_examples),
                 # inputs cut to fit the model's context during this run (training, selection, evaluation)
                 "truncated_inputs": getattr(backbone, "truncated_inputs", 0) - cut_before},
        # "dev": the k-shot dev set used for selection; "eval": the held-out examples of `eval_split`
        "metrics": {"dev": dev.as_dict(), **({"eval": {"split": split, **test.as_dict()}} if test else {})},
        "history": result.history,
        "info": result.info,
        **({"text_prompt": result.text_prompt} if result.text_prompt is not None else {}),
        **({"portability": portability} if portability else {}),
        "run_fingerprint": fingerprint,
        "run_identity": identity,
        "train_seconds": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if DataParallel.current().is_main:  # under `accelerate launch`, one process writes
        write_artifact(out_dir, result.tensors, meta)  # swapped in whole; the run's checkpoints go with the old dir
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
    """Score an artifact on a task split (by default the task it was trained on), minus the examples its
    run drew for training and selection, by the rule `train` applies (`held_out`): the k-shot draw is
    redrawn from the shots and seed prompt.json's `data` records. On the same split and limit the
    numbers equal the train-time held-out ones. The result names the `split` and counts `excluded`."""
    meta, tensors = read_artifact(path)
    task_obj = load_task(task or meta["task"].get("source", meta["task"]["name"]), data_dir)
    split_name = split or task_obj.eval_split_name
    used = _drawn_for_training(path, meta, task_obj, data_dir)
    taken = {ex.origin for ex in used}
    examples = held_out(task_obj, split_name, used, limit)
    backbone = _backbone(model or meta["backbone"]["id"], device, dtype)
    check_backbone(meta, backbone, f"artifact {path}")
    check_tensors(meta, tensors, backbone, f"artifact {path}")
    prompt = prompt_from_tensors(meta["prompt_kind"], tensors, backbone.device, meta.get("text_prompt"))
    result = evaluate(backbone, task_obj, examples, prompt)
    result.split = split_name
    result.excluded = sum(ex.origin in taken for ex in task_obj.split(split_name))
    return result


def _drawn_for_training(
    path: str | Path, meta: dict[str, Any], task: Task, data_dir: str | Path | None
) -> list[Example]:
    """The train and dev examples the artifact's run drew (`Task.few_shot` with its recorded shots and seed),
    from the artifact's own task (which `task` may be, or share data files with: origins are file:line)."""
    data = meta.get("data") or {}
    if not isinstance(data.get("shots"), int) or not isinstance(data.get("seed"), int):
        return []  # imported or CLIP artifacts record no k-shot draw: nothing of `task` was trained on
    own = meta["task"].get("source", meta["task"]["name"])
    source = task
    if own != task.origin:  # scoring on another task: it shares data with the trained one only by file:line
        try:
            source = load_task(own, data_dir)
        except (ConfigError, DataError) as exc:
            warnings.warn(f"artifact {path} was trained on task {own}, whose data cannot be read here ({exc}); "
                          f"no example of {task.name} is left out as used in training", UserWarning, stacklevel=3)
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
