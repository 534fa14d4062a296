"""The prompt artifact: a directory with `prompt.safetensors` and `prompt.json`, and its predictor.

The artifact is written whole into a temporary directory and swapped in place of the run
directory, so its tensors and its JSON always come from the same write, and a directory without
`prompt.json` is an unfinished run, never a broken artifact. A directory that holds anything
prompttune did not write (a `.git/`, a `.env`, notes), the working directory (or one above it), or
one the OS will not swap (a mount point, an unwritable parent) is written in place instead, file
by file: the old `prompt.json` goes first and the new one comes last, so the rule still holds.
Loading reads safetensors and JSON only (nothing is ever unpickled). `read_artifact` checks
`format_version` and the type of every field all kinds share; `kinds.open_artifact`, which every
loader uses, adds the kind's own fields (e.g. a text task's template and verbalizer), and the
predictor checks the shape of every tensor against the backbone, so a bad artifact fails at load
with its name, not later inside torch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .errors import ArtifactError, ConfigError
from .models import Backbone
from .models.loading import FINGERPRINT_VERSION, fingerprint_of
from .prompts.kinds import get_prompt_kind
from .utils.io import SwapUnavailable, atomic_save_tensors, atomic_write_text, json_text, write_dir_atomically

ARTIFACT_JSON = "prompt.json"
ARTIFACT_TENSORS = "prompt.safetensors"
RUN_JSON = "run.json"  # an unfinished run's identity (see api.train); gone once the artifact is written
LEDGER = "llm_ledger.jsonl"  # an LLM-driven method's record of its calls; kept with the artifact
FORMAT_VERSION = 1


def _checkpoint(name: str) -> bool:
    return name.startswith("checkpoint") and name.endswith(".safetensors")


def _our_temp(name: str) -> bool:
    """A temporary file of our atomic writers (`.{name}.{12 hex}.tmp`), left by a killed run."""
    return re.fullmatch(r"\..+\.[0-9a-f]{12}\.tmp", name) is not None


def _ours(entry: Path) -> bool:
    """A file prompttune writes into an artifact or run directory."""
    name = entry.name
    return entry.is_file() and (name in (ARTIFACT_JSON, ARTIFACT_TENSORS, RUN_JSON, LEDGER) or _checkpoint(name)
                                or _our_temp(name))


def _run_state(entry: Path) -> bool:
    """Files of an unfinished run that the finished artifact drops: checkpoints, run.json, our temp files."""
    return _ours(entry) and entry.name != LEDGER


def holds_cwd(path: Path) -> bool:
    """Whether `path` is the working directory or one above it (swapping it would pull it from under us)."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == path or path in cwd.parents


def write_artifact(out_dir: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the artifact into a fresh directory and swap it in place of `out_dir`. Other files of the
    run (e.g. an LLM ledger) are carried over; its checkpoints are not. Where a swap would be unsafe or
    the OS refuses it, write in place (see the module docstring)."""
    out_dir = Path(out_dir).resolve()
    text = json_text({"format_version": FORMAT_VERSION, **meta})  # fails before anything is written

    def write(tmp: Path) -> None:
        atomic_save_tensors(tmp / ARTIFACT_TENSORS, tensors, {"format": "prompttune"})
        atomic_write_text(tmp / ARTIFACT_JSON, text)

    swappable = not out_dir.exists() or (out_dir.is_dir() and not foreign_entries(out_dir) and not holds_cwd(out_dir))
    if swappable:
        try:
            write_dir_atomically(out_dir, write, keep=lambda entry: not _run_state(entry))
            return
        except SwapUnavailable:
            pass  # nothing changed: write in place
    write_in_place(out_dir, tensors, text)


def write_in_place(out_dir: Path, tensors: Mapping[str, torch.Tensor], json_text: str) -> None:
    """Write the artifact file by file into `out_dir`, each atomically, leaving every other file alone:
    the old prompt.json is removed first and the new one written last (a directory without it is an
    unfinished run), then the run's checkpoints and run.json go."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ARTIFACT_JSON).unlink(missing_ok=True)
    atomic_save_tensors(out_dir / ARTIFACT_TENSORS, tensors, {"format": "prompttune"})
    atomic_write_text(out_dir / ARTIFACT_JSON, json_text)
    for entry in out_dir.iterdir():
        if _run_state(entry) and entry.name not in (ARTIFACT_JSON, ARTIFACT_TENSORS):
            os.unlink(entry)


def is_run_dir(path: Path) -> bool:
    """True for a directory prompttune made: an artifact, or an unfinished run (checkpoints, run.json)."""
    if not path.is_dir():
        return False
    return (path / ARTIFACT_JSON).exists() or (path / RUN_JSON).exists() or any(path.glob("checkpoint*.safetensors"))


def foreign_entries(path: Path) -> list[str]:
    """Entries of directory `path` that prompttune never writes into an artifact or run directory
    (what `--overwrite` must not delete, and what makes `write_artifact` write in place)."""
    return sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir() if not _ours(e))


_TYPE_NAMES = {str: "a string", int: "an integer", dict: "a mapping", list: "a list", float: "a number"}


def field_of(meta: Mapping[str, Any], dotted: str, kind: type | tuple[type, ...], where: Path,
           required: bool = True) -> Any:
    """prompt.json's field `dotted` (e.g. "task.template"), which must be of type `kind`."""
    value: Any = meta
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            if required:
                raise ArtifactError(f"{where}: missing field '{dotted}'")
            return None
        value = value[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise ArtifactError(f"{where}: field '{dotted}' must be {want}, not {type(value).__name__} {value!r:.60}")
    return value


def _check_fields(meta: Any, where: Path) -> None:
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where}: must hold a JSON object, not {type(meta).__name__}")
    version = field_of(meta, "format_version", int, where)
    if not 1 <= version <= FORMAT_VERSION:
        raise ArtifactError(f"{where}: format_version {version} is not one this prompttune reads (1 to "
                            f"{FORMAT_VERSION}); it was written by a newer version, upgrade prompttune")
    field_of(meta, "method", str, where)
    kind = field_of(meta, "prompt_kind", str, where)
    try:
        prompt_kind = get_prompt_kind(kind)
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    field_of(meta, "backbone.id", str, where)
    field_of(meta, "backbone.fingerprint", str, where)
    field_of(meta, "backbone.fingerprint_version", int, where, required=False)
    field_of(meta, "task", dict, where)  # its fields are the kind's to check (kinds/*.check_meta)
    if prompt_kind.needs_text:
        field_of(meta, "text_prompt", dict, where)


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """prompt.json (its common fields checked; `kinds.open_artifact` adds the kind's checks) and the tensors."""
    root = Path(path)
    meta = read_meta(root)
    try:
        tensors = load_file(str(root / ARTIFACT_TENSORS))
    except FileNotFoundError:
        raise ArtifactError(f"{root}: missing {ARTIFACT_TENSORS}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{root / ARTIFACT_TENSORS}: unreadable ({exc})") from None
    return meta, tensors


def read_meta(path: str | Path) -> dict[str, Any]:
    """An artifact's prompt.json alone, its common fields checked (no tensor is read)."""
    root = Path(path)
    meta_path = root / ARTIFACT_JSON
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory (no such directory)")
    if not meta_path.exists():
        unfinished = any(root.glob("checkpoint*.safetensors"))
        hint = " (it holds an unfinished run: train again with --resume)" if unfinished else ""
        raise ArtifactError(f"{root}: no {ARTIFACT_JSON}, so not a finished prompttune artifact{hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{meta_path}: not UTF-8 text") from None
    _check_fields(meta, meta_path)
    return meta


def backbone_meta(backbone: Any) -> dict[str, Any]:
    """What an artifact records of its backbone; `fingerprint` is what loading checks."""
    meta = {"id": backbone.model_id, "fingerprint": backbone.fingerprint, "fingerprint_version": FINGERPRINT_VERSION,
            "kind": backbone.kind, "class": type(backbone.model).__name__,
            "dtype": str(backbone.dtype).removeprefix("torch.")}
    if hasattr(backbone, "hidden_size"):
        meta["hidden_size"] = backbone.hidden_size
    return meta


def task_meta(task) -> dict[str, Any]:
    """What an artifact records of its task: enough to render inputs and read labels without the data."""
    spec = task.spec
    meta = {"name": task.name, "source": task.origin, "template": spec.template, "fields": spec.fields,
            "input_fields": spec.input_fields}
    if getattr(spec, "is_generative", False):  # the target, its metrics and how answers are generated
        dumped = spec.model_dump(mode="json")
        return {**meta, **{k: dumped[k] for k in ("target", "metric", "generation", "dev_metric")}}
    return {**meta, "verbalizer": spec.verbalizer}


def backbone_matches(recorded: Mapping[str, Any], backbone) -> bool:
    """Whether `backbone` has the weights an artifact recorded. Artifacts written before fingerprint
    version 2 hold the old, sampled fingerprint: for them it is recomputed the old way."""
    version = recorded.get("fingerprint_version", 1)
    return recorded.get("fingerprint") == fingerprint_of(backbone, version)


def check_backbone(meta: Mapping[str, Any], backbone: Backbone, where: str) -> None:
    want = meta["backbone"]
    if not backbone_matches(want, backbone):
        raise ArtifactError(
            f"{where} was trained on backbone '{want.get('id')}' (weights {want.get('fingerprint')}), "
            f"not on '{backbone.model_id}' (weights {fingerprint_of(backbone, want.get('fingerprint_version', 1))}); "
            "load it with that model"
        )


def check_tensors(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], backbone, where: str) -> None:
    """Refuse tensors that do not fit `backbone` or the artifact's own labels (its prompt kind's check)."""
    get_prompt_kind(meta["prompt_kind"]).check(meta, tensors, backbone, where)


def prompt_from_tensors(kind: str, tensors: Mapping[str, torch.Tensor], device=None,
                        text: Mapping[str, Any] | None = None):
    """What `backbone.score` takes for an artifact of prompt kind `kind`: None, soft embeddings, per-layer
    (keys, values), ...; for text prompts (`text` is prompt.json's "text_prompt") a `HardPrompt` or
    `BoostedPrompts`."""
    prompt_kind = get_prompt_kind(kind)
    if prompt_kind.needs_text and not text:
        raise ArtifactError(f"a '{kind}' artifact needs its 'text_prompt' in {ARTIFACT_JSON}")
    return prompt_kind.build(tensors, device, text)


class Predictor:
    """A learned prompt applied to its frozen backbone: `predict`, `scores`, `generate`."""

    def __init__(self, backbone: Backbone, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                 where: str = "artifact"):
        self.backbone = backbone
        self.meta = meta
        task = meta["task"]
        self.template: str = task["template"]
        self.input_fields: list[str] = task["input_fields"]
        self.labels: list[str] = list(task["verbalizer"])
        words = [[w] if isinstance(w, str) else list(w) for w in task["verbalizer"].values()]
        check_tensors(meta, tensors, backbone, where)
        try:
            self.prompt = prompt_from_tensors(meta["prompt_kind"], tensors, backbone.device, meta.get("text_prompt"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # tensors or text_prompt that do not fit
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{where}: its {meta['prompt_kind']} prompt cannot be rebuilt ({first})") from None
        self.boosted = self.renderer = None
        from .prompts.hard import BoostedPrompts, HardPrompt
        from .prompts.knn import renders_own_inputs

        if renders_own_inputs(self.prompt):  # e.g. kNN demonstrations: each input gets its own text
            self.renderer, self.prompt = self.prompt.bind(backbone), None
        elif isinstance(self.prompt, HardPrompt):  # a text prompt is its template (and maybe its words)
            self.template = self.prompt.template
            words = [[w] for w in self.prompt.words] if self.prompt.words else words
            self.prompt = None
        elif isinstance(self.prompt, BoostedPrompts):
            self.boosted, self.prompt = self.prompt, None
        self.label_words = backbone.label_words(words, self.labels)

    def render(self, item: str | Mapping[str, str]) -> str:
        return self.render_many([item])[0]

    def render_many(self, items: Sequence[str | Mapping[str, str]]) -> list[str]:
        """The model's input for each item: through the template, or the prompt's own rendering."""
        fields = [self._fields(x) for x in items]
        if self.renderer is not None:
            return self.renderer.render_many(fields)
        return [self.template.format_map(f) for f in fields]

    def _fields(self, item: str | Mapping[str, str]) -> dict[str, str]:
        if isinstance(item, str):
            if len(self.input_fields) != 1:
                raise ConfigError(
                    f"this prompt's template needs fields {', '.join(self.input_fields)}: pass a mapping, not a string"
                )
            item = {self.input_fields[0]: item}
        missing = [f for f in self.input_fields if f not in item]
        if missing:
            raise ConfigError(f"input lacks field(s) {', '.join(missing)} needed by the template")
        return dict(item)

    @torch.inference_mode()
    def scores(self, inputs: Sequence[str | Mapping[str, str]], batch_size: int = 32) -> torch.Tensor:
        """Log-probabilities over the labels, (n_inputs, n_labels)."""
        if self.boosted is not None:
            items = [x if isinstance(x, Mapping) else {self.input_fields[0]: x} for x in inputs]
            return self.boosted.scores(self.backbone, lambda t, item: t.format_map(dict(item)), items, len(self.labels))
        out = []
        for i in range(0, len(inputs), batch_size):
            ids = self.backbone.tokenize(self.render_many(inputs[i : i + batch_size]))
            out.append(torch.log_softmax(self.backbone.score(ids, self.label_words, self.prompt).float(), -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def classify(self, inputs: Sequence[str | Mapping[str, str]]) -> list[tuple[str, dict[str, float]]]:
        """Per input, the predicted label and the probability of every label."""
        rows = self.scores(inputs).exp().tolist()
        return [(self.labels[max(range(len(r)), key=r.__getitem__)], dict(zip(self.labels, r, strict=True)))
                for r in rows]

    def predict(self, inputs: Sequence[str | Mapping[str, str]]) -> list[str]:
        return [self.labels[i] for i in self.scores(inputs).argmax(1).tolist()]

    def generate(self, text: str | Mapping[str, str], max_new_tokens: int = 32, raw: bool = False, **kwargs) -> str:
        """Continue the rendered template (or `text` itself with raw=True) with the prompt in place."""
        if self.boosted is not None:
            raise ConfigError("a boosted ensemble classifies; it has no single template to generate with")
        rendered = text if raw and isinstance(text, str) else self.render(text)
        return self.backbone.generate([rendered], self.prompt, max_new_tokens=max_new_tokens, **kwargs)[0]

