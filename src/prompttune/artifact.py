"""The prompt artifact: a directory with `prompt.safetensors` and `prompt.json`, and its predictor.

`prompt.json` is written last, so a directory without it is an unfinished run, never a broken
artifact. Loading reads safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .errors import ArtifactError, ConfigError
from .models import BACKBONE_TYPES, Backbone, DeltaPrompt, EncoderPrompt, load_backbone
from .utils.io import atomic_save_tensors, atomic_write_json

ARTIFACT_JSON = "prompt.json"
ARTIFACT_TENSORS = "prompt.safetensors"
FORMAT_VERSION = 1
PROMPT_KINDS = ("none", "soft", "kv", "dept", "instance", "encoder-head", "hard", "boosted", "clip")


def write_artifact(out_dir: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out_dir / ARTIFACT_TENSORS, tensors, {"format": "prompttune"})
    atomic_write_json(out_dir / ARTIFACT_JSON, {"format_version": FORMAT_VERSION, **meta})


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    root = Path(path)
    meta_path = root / ARTIFACT_JSON
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory (no such directory)")
    if not meta_path.exists():
        unfinished = (root / "checkpoint.safetensors").exists()
        hint = " (it holds an unfinished run: train again with --resume)" if unfinished else ""
        raise ArtifactError(f"{root}: no {ARTIFACT_JSON}, so not a finished prompttune artifact{hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for key in ("method", "prompt_kind", "backbone", "task"):
        if key not in meta:
            raise ArtifactError(f"{meta_path}: missing field '{key}'")
    if meta["prompt_kind"] not in PROMPT_KINDS:
        raise ArtifactError(f"{meta_path}: prompt_kind '{meta['prompt_kind']}' is not known to this version")
    try:
        tensors = load_file(str(root / ARTIFACT_TENSORS))
    except FileNotFoundError:
        raise ArtifactError(f"{root}: missing {ARTIFACT_TENSORS}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{root / ARTIFACT_TENSORS}: unreadable ({exc})") from None
    return meta, tensors


def backbone_meta(backbone: Backbone) -> dict[str, Any]:
    """What an artifact records of its backbone; `fingerprint` is what loading checks."""
    return {"id": backbone.model_id, "fingerprint": backbone.fingerprint, "class": type(backbone.model).__name__,
            "hidden_size": backbone.hidden_size, "dtype": str(backbone.dtype).removeprefix("torch.")}


def task_meta(task) -> dict[str, Any]:
    """What an artifact records of its task: enough to render inputs and read labels without the data."""
    spec = task.spec
    return {"name": task.name, "source": task.origin, "template": spec.template, "fields": spec.fields,
            "input_fields": spec.input_fields, "verbalizer": spec.verbalizer}


def check_backbone(meta: Mapping[str, Any], backbone: Backbone, where: str) -> None:
    want = meta["backbone"]
    if want.get("fingerprint") != backbone.fingerprint:
        raise ArtifactError(
            f"{where} was trained on backbone '{want.get('id')}' (weights {want.get('fingerprint')}), "
            f"not on '{backbone.model_id}' (weights {backbone.fingerprint}); load it with that model"
        )


def prompt_from_tensors(kind: str, tensors: Mapping[str, torch.Tensor], device=None,
                        text: Mapping[str, Any] | None = None):
    """What `backbone.score` takes for an artifact: None, soft embeddings, or per-layer (keys, values);
    for text prompts (`text` is prompt.json's "text_prompt") a `HardPrompt` or `BoostedPrompts`."""
    if kind in ("hard", "boosted", "clip"):
        from .prompts.hard import BoostedPrompts, HardPrompt

        if not text:
            raise ArtifactError(f"a '{kind}' artifact needs its 'text_prompt' in {ARTIFACT_JSON}")
        return HardPrompt.from_meta(text) if kind == "hard" else BoostedPrompts.from_meta(text)
    if kind == "soft":
        return tensors["prompt"].to(device)
    if kind == "dept":
        return DeltaPrompt(tensors["prompt"].to(device), tensors["input_delta"].to(device))
    if kind == "instance":
        from .prompts.instance import InstancePrompt

        return InstancePrompt.from_state(dict(tensors)).to(device).eval()
    if kind == "encoder-head":
        keys, values = tensors["keys"].to(device), tensors["values"].to(device)
        prefix = list(zip(keys, values, strict=True)) if keys.shape[2] else None
        return EncoderPrompt(prefix, tensors["head.weight"].to(device), tensors["head.bias"].to(device))
    if kind == "kv":
        return list(zip(tensors["keys"].to(device), tensors["values"].to(device), strict=True))
    return None


class Predictor:
    """A learned prompt applied to its frozen backbone: `predict`, `scores`, `generate`."""

    def __init__(self, backbone: Backbone, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.backbone = backbone
        self.meta = meta
        task = meta["task"]
        self.template: str = task["template"]
        self.input_fields: list[str] = task["input_fields"]
        self.labels: list[str] = list(task["verbalizer"])
        words = [[w] if isinstance(w, str) else list(w) for w in task["verbalizer"].values()]
        self.prompt = prompt_from_tensors(meta["prompt_kind"], tensors, backbone.device, meta.get("text_prompt"))
        self.boosted = None
        from .prompts.hard import BoostedPrompts, HardPrompt

        if isinstance(self.prompt, HardPrompt):  # a text prompt is its template (and maybe its words)
            self.template = self.prompt.template
            words = [[w] for w in self.prompt.words] if self.prompt.words else words
            self.prompt = None
        elif isinstance(self.prompt, BoostedPrompts):
            self.boosted, self.prompt = self.prompt, None
        self.label_words = backbone.label_words(words, self.labels)

    def render(self, item: str | Mapping[str, str]) -> str:
        if isinstance(item, str):
            if len(self.input_fields) != 1:
                raise ConfigError(
                    f"this prompt's template needs fields {', '.join(self.input_fields)}: pass a mapping, not a string"
                )
            item = {self.input_fields[0]: item}
        missing = [f for f in self.input_fields if f not in item]
        if missing:
            raise ConfigError(f"input lacks field(s) {', '.join(missing)} needed by the template")
        return self.template.format_map(dict(item))

    @torch.inference_mode()
    def scores(self, inputs: Sequence[str | Mapping[str, str]], batch_size: int = 32) -> torch.Tensor:
        """Log-probabilities over the labels, (n_inputs, n_labels)."""
        if self.boosted is not None:
            items = [x if isinstance(x, Mapping) else {self.input_fields[0]: x} for x in inputs]
            return self.boosted.scores(self.backbone, lambda t, item: t.format_map(dict(item)), items, len(self.labels))
        out = []
        for i in range(0, len(inputs), batch_size):
            ids = self.backbone.tokenize([self.render(x) for x in inputs[i : i + batch_size]])
            out.append(torch.log_softmax(self.backbone.score(ids, self.label_words, self.prompt).float(), -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def predict(self, inputs: Sequence[str | Mapping[str, str]]) -> list[str]:
        return [self.labels[i] for i in self.scores(inputs).argmax(1).tolist()]

    def generate(self, text: str | Mapping[str, str], max_new_tokens: int = 32, raw: bool = False, **kwargs) -> str:
        """Continue the rendered template (or `text` itself with raw=True) with the prompt in place."""
        if self.boosted is not None:
            raise ConfigError("a boosted ensemble classifies; it has no single template to generate with")
        rendered = text if raw and isinstance(text, str) else self.render(text)
        return self.backbone.generate([rendered], self.prompt, max_new_tokens=max_new_tokens, **kwargs)[0]


def load(
    path: str | Path, model: str | Backbone | None = None, device: str = "auto", dtype: str = "auto"
) -> Predictor:
    """Load an artifact with its backbone (the recorded one unless `model` is given), refusing a
    backbone whose weights differ from those the prompt was trained on."""
    meta, tensors = read_artifact(path)
    if isinstance(model, BACKBONE_TYPES):
        backbone = model
    else:
        backbone = load_backbone(model or meta["backbone"]["id"], device=device, dtype=dtype)
    check_backbone(meta, backbone, f"artifact {path}")
    return Predictor(backbone, meta, tensors)
