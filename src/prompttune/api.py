"""The Python API behind the CLI: `train`, `evaluate_artifact`, `load`, `serving_engine`.

This is the one run skeleton for every kind of backbone and task: resolve the method and its kind,
check the output directory, fingerprint the run, fit, clean up on failure, score and write the
artifact from the main process only. What differs per kind (text on a language model, images on a
CLIP model, ...) is asked of the kind (`kinds/`).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .artifact import RUN_JSON, backbone_meta, check_backbone, read_meta, write_artifact
from .errors import ConfigError
from .evaluation import EvalResult, evaluate_prompt
from .kinds import Kind, kind_for, kind_for_model, kind_of, open_artifact
from .kinds.text import held_out
from .methods import available_methods, get_method
from .rundir import check_out_dir, check_same_run, prepare_out_dir, run_fingerprint
from .tasks import Example, Task
from .training import CHECKPOINTS, DataParallel
from .utils.env import package_versions

__all__ = ["TrainReport", "describe_methods", "evaluate", "evaluate_artifact", "held_out", "load", "predict",
           "serving_engine", "train"]


@dataclass
class TrainReport:
    """What `train` returns: the artifact's directory and prompt.json, and the dev and held-out scores
    (`EvalResult` for text tasks, `ClipScores` for image tasks; `test` is None without held-out data)."""

    out_dir: Path
    meta: dict[str, Any]
    dev: Any
    test: Any | None
    seconds: float

    @property
    def primary_metric(self) -> str:
        return self.meta["primary_metric"]

    @property
    def score(self) -> float:
        """The primary metric on the held-out data (on dev when there is none)."""
        return (self.test or self.dev).as_dict()[self.primary_metric]


def _backbone(kind: Kind, model: Any, device: str, dtype: str) -> Any:
    return model if kind.is_backbone(model) else kind.load_backbone(model, device, dtype)


def _check_fits(method: str, method_obj: Any, backbone: Any) -> None:
    if backbone.kind not in method_obj.backbone_kinds:
        fits = [n for n, c in available_methods().items() if backbone.kind in c.backbone_kinds]
        raise ConfigError(
            f"method '{method}' trains on {' or '.join(method_obj.backbone_kinds)} backbones; "
            f"model '{backbone.model_id}' is a {backbone.kind} ({type(backbone.model).__name__}); "
            f"methods for it: {', '.join(fits)}"
        )


def _forget_run(out_dir: Path, created: bool) -> None:
    """A failed run with nothing to resume leaves no trace: its run.json goes, and --out if it made it."""
    if not any(out_dir.glob(CHECKPOINTS)):
        (out_dir / RUN_JSON).unlink(missing_ok=True)
        if created and out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _metrics(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """prompt.json's "metrics": per split ("dev": the k-shot dev set used for selection; "eval": held out)."""
    out = {}
    for name, s in scores.items():
        split = getattr(s, "split", None)
        out[name] = {"split": split, **s.as_dict()} if split and name != "dev" else s.as_dict()
    return out


def train(
    method: str = "prompt-tuning",
    model: str | Any = "smollm2-135m",
    task: str | Any = "sst2",
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
    port_to: list[str | Any] | None = None,
    extra_metrics: bool = False,
    **params: Any,
) -> TrainReport:
    """Learn a prompt with `method` and write the artifact to `out`.

    Everything the user controls is validated before anything is written, so bad input leaves no
    partial artifact. `params` are the method's hyper-parameters (see `prompttune methods`) and the
    kind's options (e.g. `base_to_new` for image tasks). `port_to`: other models a text prompt is
    evaluated on, unchanged, beside the plain template (prompt.json "portability"). `extra_metrics`:
    also record the figures the method declares for benchmarks (e.g. select's oracle), which cost
    extra evaluations on the held-out data.
    """
    started = time.perf_counter()
    method_cls = get_method(method)
    kind = kind_for(method_cls.backbone_kinds, method, model, task)
    kind.check_method(method, method_cls, task, model)
    options = {k: params.pop(k) for k in kind.options if k in params}
    method_obj = method_cls.from_params(params)
    out_dir = Path(out)
    check_out_dir(out_dir, resume, overwrite)
    prepared = kind.prepare(task, data_dir, shots, seed, dev_shots, eval_split, eval_limit, **options)
    backbone = _backbone(kind, model, device, dtype)
    _check_fits(method, method_obj, backbone)
    if port_to and not getattr(method_obj, "text_result", False):
        raise ConfigError(f"--port-to evaluates text prompts on other models; method '{method}' does not learn a "
                          "text prompt (a soft prompt is tied to its model)")
    ports = [_backbone(kind, m, device, dtype) for m in port_to or []]  # a bad model id fails before training
    config = method_obj.run_identity(prepared.task)
    identity = {"method": method, "config": kind.identity_config(config), "seed": seed,
                "backbone": backbone.fingerprint, **prepared.identity}
    fingerprint = run_fingerprint(identity)
    check_same_run(out_dir, fingerprint, identity, resume)
    created = prepare_out_dir(out_dir, overwrite, fingerprint, identity)
    cut_before = getattr(backbone, "truncated_inputs", 0)
    try:
        ctx = kind.context(prepared, backbone, seed=seed, out_dir=out_dir, resume=resume,
                           progress=sys.stderr.isatty() if progress is None else progress,
                           run_fingerprint=fingerprint, callbacks=list(callbacks or []))
        result = method_obj.fit(ctx)
    except BaseException:
        _forget_run(out_dir, created)
        raise
    meta: dict[str, Any] = {
        "kind": kind.name,
        "method": method,
        "prompt_kind": result.prompt_kind,
        "hyperparameters": config,
        "trainable_parameters": result.trainable_parameters,
        "backbone": backbone_meta(backbone),
        **prepared.meta,
        **kind.result_meta(result.info),
        "history": result.history,
        "info": result.info,
        **({"text_prompt": result.text_prompt} if result.text_prompt is not None else {}),
    }
    scores = kind.evaluate(backbone, prepared, meta, result.tensors)
    # inputs cut to fit the model's context during this run (training, selection, evaluation)
    meta["data"]["truncated_inputs"] = getattr(backbone, "truncated_inputs", 0) - cut_before
    meta["metrics"] = _metrics(scores)
    meta["primary_metric"] = (scores.get("eval") or scores["dev"]).primary
    if extra_metrics:
        try:
            extra = method_obj.extra_metrics(ctx, result, lambda prompt: kind.score(backbone, prepared, prompt))
        except Exception as exc:  # noqa: BLE001 - extra figures must never cost the trained prompt
            warnings.warn(f"{method}: its extra metrics failed ({type(exc).__name__}: {exc}); the artifact is "
                          "written without them", RuntimeWarning, stacklevel=2)
            extra = {"error": f"{type(exc).__name__}: {exc}"}
        if extra:
            meta["metrics"]["extra"] = extra
    portability = [kind.port(other, prepared, meta, result.tensors) for other in ports]
    meta.update({
        **({"portability": portability} if portability else {}),
        "run_fingerprint": fingerprint,
        "run_identity": identity,
        "train_seconds": round(time.perf_counter() - started, 2),
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    if DataParallel.current().is_main:  # under `accelerate launch`, one process writes
        write_artifact(out_dir, result.tensors, meta)  # swapped in whole; the run's checkpoints go with the old dir
    return TrainReport(out_dir, meta, scores.get("dev"), scores.get("eval"), time.perf_counter() - started)


def evaluate(backbone: Any, task: Task, examples: list[Example], prompt=None, batch_size: int = 32) -> EvalResult:
    """A text prompt (or none) on `examples` of a text task."""
    labels = backbone.label_words(task.words(), task.labels)
    return evaluate_prompt(backbone, task, labels, examples, prompt, batch_size)


def _artifact_backbone(kind: Kind, meta: dict[str, Any], path: str | Path, model: Any, device: str,
                       dtype: str) -> Any:
    """The recorded backbone (or `model`), refused when its weights differ from the trained ones."""
    backbone = _backbone(kind, model or meta["backbone"]["id"], device, dtype)
    check_backbone(meta, backbone, f"artifact {path}")
    return backbone


def evaluate_artifact(
    path: str | Path, task: str | Any | None = None, data_dir: str | Path | None = None, split: str | None = None,
    limit: int | None = None, model: str | Any | None = None, device: str = "auto", dtype: str = "auto",
) -> Any:
    """Score an artifact on held-out data (by default its own task's), minus the examples its run drew
    for training and selection; on the same split and limit the numbers equal the train-time held-out
    ones. Returns the kind's scores (`.line()`, `.summary()`, `.as_dict()`; `split`, `excluded`)."""
    kind, meta, tensors = open_artifact(path)
    plan = kind.eval_plan(Path(path), meta, task, data_dir, split, limit)  # bad input fails before the model loads
    backbone = _artifact_backbone(kind, meta, path, model, device, dtype)
    return kind.evaluate_artifact(plan, meta, tensors, backbone, f"artifact {path}")


def load(path: str | Path, model: str | Any | None = None, device: str = "auto", dtype: str = "auto",
         task: str | Any | None = None) -> Any:
    """Load an artifact, of any kind, with its backbone (the recorded one unless `model` is given),
    refusing a backbone whose weights differ from those the prompt was trained on. `task`: an image
    task for a CLIP artifact (default: the recorded one)."""
    kind, meta, tensors = open_artifact(path)
    backbone = _artifact_backbone(kind, meta, path, model, device, dtype)
    return kind.predictor(backbone, meta, tensors, f"artifact {path}", task)


def serving_engine(artifacts: list[str], model: str | Any | None = None, device: str = "auto", dtype: str = "auto",
                   **limits: Any) -> Any:
    """The engine that serves `artifacts` (NAME=PATH or PATH) on one backbone: the model (default: the
    first artifact's recorded one, else smollm2-135m) and the engine come from the artifacts' kind."""
    metas = {spec: read_meta(spec.rpartition("=")[2]) for spec in artifacts}
    kinds = {spec: kind_of(meta) for spec, meta in metas.items()}
    names = sorted({k.name for k in kinds.values()})
    if len({k.serves_with for k in kinds.values()}) > 1:
        groups = "; ".join(f"{n}: {', '.join(s for s, k in kinds.items() if k.name == n)}" for n in names)
        raise ConfigError(f"one server runs one model: artifacts of different kinds ({groups}) cannot be served "
                          "together; start one server for each kind")
    if model is None:
        model = next(iter(metas.values()))["backbone"]["id"] if metas else "smollm2-135m"
    kind = next(iter(kinds.values())) if kinds else kind_for_model(model)
    backbone = _backbone(kind, model, device, dtype)
    return kind.engine(backbone, artifacts, **limits)


def predict(path: str | Path, raw_inputs: list[str], model: str | Any | None = None,
            device: str = "auto") -> list[tuple[str, dict[str, float]]]:
    """Answer command-line inputs (texts or JSON objects; image files for a CLIP artifact): per input, the
    label and every label's probability, or, for a generative artifact, the generated answer (and {})."""
    kind, meta, tensors = open_artifact(path)
    inputs = kind.read_inputs(raw_inputs)
    backbone = _artifact_backbone(kind, meta, path, model, device, "auto")
    return kind.answer(kind.predictor(backbone, meta, tensors, f"artifact {path}"), inputs)


def describe_methods(model: str | None = None) -> list[dict[str, str]]:
    """Every registered method: name, description, hyper-parameters (defaults) and, with `model`, its
    trainable parameters on that model with default hyper-parameters (or which backbones it needs)."""
    from .models.load import model_kind

    config, kind = None, None
    if model is not None:
        from transformers import AutoConfig

        from .models.loading import resolve_model_source

        kind = model_kind(model)
        config = AutoConfig.from_pretrained(resolve_model_source(model)[0])
    rows = []
    for name, cls in available_methods().items():
        fields = ", ".join(f"{k}=<required>" if f.is_required() else f"{k}={f.get_default(call_default_factory=True)}"
                           for k, f in cls.Config.model_fields.items())
        row = {"method": name, "description": cls.description, "hyperparameters": fields or "-"}
        if config is not None:
            method = cls(cls.Config.model_construct())  # defaults, even where a field is required
            if kind not in cls.backbone_kinds:
                row["trainable"] = f"- (needs {' or '.join(cls.backbone_kinds)})"
            else:
                count = method.count_trainable(config) if hasattr(method, "count_trainable") else None
                row["trainable"] = "in the artifact" if count is None else f"{count:,}"
        rows.append(row)
    return rows
