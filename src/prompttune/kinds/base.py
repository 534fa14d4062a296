"""The kind protocol: what differs between kinds of backbone and task.

`api.train`, `api.evaluate_artifact` and `api.load` hold the one run skeleton (resolve the method and
the kind, check the output directory, fingerprint, fit, clean up on failure, write from the main
process only). Everything that depends on the kind of model and task is asked of a `Kind`: loading
the backbone and the task, drawing the few-shot split, building the method's `RunContext`, scoring,
the task's part of `prompt.json`, the predictor that applies an artifact and the serving engine.
A new kind is one subclass, registered with `register_kind`; the CLI, the bench and the server
need no change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ..artifact import ARTIFACT_JSON, read_artifact
from ..errors import ArtifactError, ConfigError, PromptTuneError
from ..methods.base import RunContext


class Scores(Protocol):
    """A scoring result: `as_dict()` goes into prompt.json's metrics; `primary` names its headline key."""

    primary: str

    def as_dict(self) -> dict[str, Any]: ...

    def line(self) -> str:
        """The `key=value` line `prompttune eval` ends with."""
        ...

    def summary(self) -> str:
        """One human sentence."""
        ...


@dataclass
class Prepared:
    """One run's data as the kind drew it, before any model is loaded."""

    task: Any
    data: Any  # the few-shot draw: `.train` and `.dev`
    held_out: Any  # what the final score is computed on
    identity: dict[str, Any]  # what of the task and data determines the result (part of the run fingerprint)
    meta: dict[str, Any]  # prompt.json's "task" and "data" entries
    options: dict[str, Any] = field(default_factory=dict)


class Kind(ABC):
    """One kind of backbone and task. Subclasses are stateless; one instance is registered."""

    name: ClassVar[str]
    backbone_kinds: ClassVar[tuple[str, ...]]  # the `Backbone.kind`s of this kind; methods declare theirs
    options: ClassVar[tuple[str, ...]] = ()  # train() keywords this kind takes (not the method's)
    engine_group: ClassVar[str | None] = None  # kinds with the same group are served by one engine (default: name)

    @property
    def serves_with(self) -> str:
        """Kinds that answer the same `serves_with` share one server."""
        return self.engine_group or self.name

    def check_method(self, method: str, method_cls: Any, task: Any, model: Any = None) -> None:
        """Refuse, before anything loads, a method that cannot learn this kind's tasks (or this task)."""
        return None

    def accepts(self, model: Any, task: Any) -> bool:
        """Whether this kind runs `task` on `model`, when a method fits several kinds: by default, whether
        `model` is (or names, by its config) one of this kind's backbones."""
        if self.is_backbone(model):
            return True
        if not isinstance(model, str):
            return False
        try:
            return _model_kind(model) in self.backbone_kinds
        except PromptTuneError:
            return True  # unreadable here: loading it will say why

    def identity_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The method config as it enters the run fingerprint (a kind may keep older names, so that runs
        started before a rename still resume)."""
        return config

    @abstractmethod
    def load_backbone(self, model: str, device: str, dtype: str) -> Any: ...

    @abstractmethod
    def is_backbone(self, obj: Any) -> bool:
        """Whether `obj` is an already loaded backbone of this kind."""

    @abstractmethod
    def load_task(self, source: Any, data_dir: str | Path | None) -> Any:
        """A task of this kind by name, file or object; a clear error when `source` is not one."""

    @abstractmethod
    def prepare(self, task: Any, data_dir: str | Path | None, shots: int, seed: int, dev_shots: int | None,
                eval_split: str | None, eval_limit: int | None, **options: Any) -> Prepared: ...

    @abstractmethod
    def context(self, prepared: Prepared, backbone: Any, **common: Any) -> RunContext: ...

    @abstractmethod
    def evaluate(self, backbone: Any, prepared: Prepared, meta: dict[str, Any],
                 tensors: dict[str, torch.Tensor]) -> dict[str, Scores]:
        """Score a freshly trained artifact: {"dev": ..., "eval": ...} (eval absent without held-out data)."""

    @abstractmethod
    def check_meta(self, meta: dict[str, Any], where: Path) -> None:
        """Refuse a prompt.json whose kind-specific fields are missing or of the wrong type."""

    @abstractmethod
    def predictor(self, backbone: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                  task: Any = None) -> Any:
        """What applies an artifact: the prompt on its (checked) backbone."""

    @abstractmethod
    def eval_plan(self, path: Path, meta: dict[str, Any], task: Any, data_dir: str | Path | None,
                  split: str | None, limit: int | None) -> Any:
        """What `evaluate_artifact` scores: the task and the held-out data, minus what the artifact's run
        drew for training. Made before any model is loaded, so bad input fails fast."""

    @abstractmethod
    def evaluate_artifact(self, plan: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor], backbone: Any,
                          where: str) -> Scores:
        """Score an artifact on its `eval_plan`."""

    def result_meta(self, info: dict[str, Any]) -> dict[str, Any]:
        """Fields of a method's `info` that applying the artifact needs, put at prompt.json's top level."""
        return {}

    def score(self, backbone: Any, prepared: Prepared, prompt: Any) -> float:
        """The primary metric of an applied `prompt` on the held-out data (for `Method.extra_metrics`)."""
        raise ConfigError(f"kind '{self.name}' cannot score a bare prompt")

    def port(self, other: Any, prepared: Prepared, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
        """The artifact's prompt on another model (`--port-to`)."""
        raise ConfigError(f"--port-to: prompts of kind '{self.name}' cannot be moved to another model")

    def upgrade_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """An older prompt.json brought to today's schema (in memory)."""
        return meta

    def engine(self, backbone: Any, artifacts: list[str], **limits: Any) -> Any:
        raise ConfigError(f"artifacts of kind '{self.name}' cannot be served")

    def answer(self, predictor: Any, inputs: list[Any]) -> list[tuple[str, dict[str, float]]]:
        """`prompttune predict`'s answers: per input, the answer and (for a classifier) each label's probability."""
        return predictor.classify(inputs)

    def read_inputs(self, raw: list[str]) -> list[Any]:
        """`prompttune predict`'s command-line inputs as the predictor takes them."""
        return list(raw)


_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    if kind.name in _KINDS:
        raise RuntimeError(f"kind '{kind.name}' registered twice")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    if name not in _KINDS:
        raise ArtifactError(f"kind '{name}' is not known to this version (known: {', '.join(_KINDS)})")
    return _KINDS[name]


def kinds() -> dict[str, Kind]:
    return dict(_KINDS)


def kind_for(backbone_kinds: tuple[str, ...], method: str, model: Any = None, task: Any = None) -> Kind:
    """The kind a method runs as: the one whose backbones it trains on (and that accepts the model and task)."""
    fits = [k for k in _KINDS.values() if set(k.backbone_kinds) & set(backbone_kinds)]
    if len(fits) > 1:
        fits = [k for k in fits if k.accepts(model, task)] or fits
    if not fits:
        raise ConfigError(f"method '{method}' trains on {' or '.join(backbone_kinds)} backbones, which no kind "
                          f"registered here runs (kinds: {', '.join(_KINDS)})")
    return fits[0]


def kind_for_model(model: Any) -> Kind:
    """The kind whose backbones `model` is: a loaded backbone, or a model id read by its config."""
    for kind in _KINDS.values():
        if kind.is_backbone(model):
            return kind
    found = _model_kind(model)
    for kind in _KINDS.values():
        if found in kind.backbone_kinds:
            return kind
    raise ConfigError(f"model '{model}' is a {found}, which no kind registered here runs")


def _model_kind(model: str) -> str:
    from ..models.load import model_kind

    return model_kind(model)


def kind_of(meta: dict[str, Any]) -> Kind:
    """The kind an artifact records; artifacts from before kinds were recorded are text, or CLIP by prompt kind."""
    name = meta.get("kind") or ("clip" if meta.get("prompt_kind") == "clip" else "text")
    if not isinstance(name, str):
        raise ArtifactError(f"field 'kind' must be a string, not {type(name).__name__}")
    return get_kind(name)


def open_artifact(path: str | Path) -> tuple[Kind, dict[str, Any], dict[str, torch.Tensor]]:
    """An artifact's kind, prompt.json (brought to today's schema and checked) and tensors."""
    meta, tensors = read_artifact(path)
    kind = kind_of(meta)
    meta = kind.upgrade_meta(meta)
    kind.check_meta(meta, Path(path) / ARTIFACT_JSON)
    return kind, meta, tensors
