"""Prompt kinds in one table: how an artifact's `prompt_kind` is checked, applied, saved, served and exported.

An artifact's `prompt.json` names its `prompt_kind`; everything that depends on it asks the
`PromptKind` registered under that name: which tensors (and shapes) it needs, whether it needs
prompt.json's "text_prompt", how to rebuild what `backbone.score` takes, how a trained prompt is
saved, whether the server can pack it with others in one pass, and what PEFT adapter it exports to.
A new prompt kind is one `register_prompt_kind(PromptKind(...))`, not an edit in five modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ArtifactError
from ..models.causal_lm import DeltaPrompt
from ..models.encoder import EncoderPrompt

Tensors = Mapping[str, torch.Tensor]
TENSORS_FILE = "prompt.safetensors"  # artifact.ARTIFACT_TENSORS (artifact imports this module)


@dataclass(frozen=True)
class PeftRows:
    """A prompt as a PEFT adapter's table: "PROMPT_TUNING" rows are input embeddings (n_tokens, hidden),
    "PREFIX_TUNING" rows are per-token keys and values (n_tokens, layers * 2 * kv_heads * head_dim)."""

    peft_type: str
    rows: torch.Tensor


def _no_tensors(backbone, n_labels: int) -> dict[str, tuple[str, ...]]:
    return {}


def _nothing(tensors: Tensors, device, text: Mapping[str, Any] | None) -> None:
    return None


@dataclass(frozen=True)
class PromptKind:
    """One `prompt_kind`. `shapes(backbone, n_labels)` gives each tensor's expected shape (a digit string
    where the backbone fixes the size, a name where it is free but must agree across tensors); `build`
    rebuilds the applied prompt from the tensors (and prompt.json's "text_prompt" where `needs_text`);
    `holds` / `save` recognise a trained prompt of this kind and give its tensors (the inverse of
    `build`); `mixable`: the server can batch it with other prompts in one packed pass; `peft` gives
    its PEFT table, or None where it has none (`no_peft` says why); `custom_check(meta, tensors,
    backbone, where)` replaces the check from `shapes` where the shapes depend on prompt.json."""

    name: str
    shapes: Callable[[Any, int], dict[str, tuple[str, ...]]] = _no_tensors
    build: Callable[[Tensors, Any, Mapping[str, Any] | None], Any] = _nothing
    needs_text: bool = False
    mixable: bool = False
    holds: Callable[[Any], bool] | None = None
    save: Callable[[Any], dict[str, torch.Tensor]] | None = None
    peft: Callable[[Tensors], PeftRows | None] | None = None
    no_peft: str = ""
    custom_check: Callable[[Mapping[str, Any], Tensors, Any, str], None] | None = None

    def check(self, meta: Mapping[str, Any], tensors: Tensors, backbone, where: str) -> None:
        """Refuse tensors whose shapes do not fit `backbone` (e.g. a prompt of another hidden size) or the
        artifact's own labels, naming the tensor and both shapes."""
        if self.custom_check is not None:
            self.custom_check(meta, tensors, backbone, where)
            return
        sizes: dict[str, int] = {}
        for name, want in self.shapes(backbone, len(meta["task"].get("verbalizer") or {})).items():
            if name not in tensors:
                raise ArtifactError(f"{where}: a '{self.name}' artifact needs the tensor '{name}' in {TENSORS_FILE}")
            got = tuple(tensors[name].shape)
            ok = len(got) == len(want) and all(
                (w.isdigit() and int(w) == g) or (not w.isdigit() and sizes.setdefault(w, g) == g)
                for w, g in zip(want, got, strict=False))
            if not ok or not tensors[name].is_floating_point():
                raise ArtifactError(
                    f"{where}: tensor '{name}' is {tensors[name].dtype} of shape {got}; model '{backbone.model_id}' "
                    f"needs a float tensor of shape ({', '.join(want)})"
                )

    def peft_rows(self, tensors: Tensors) -> PeftRows | None:
        """The prompt as a PEFT table, or None where this prompt has no PEFT equivalent."""
        return self.peft(tensors) if self.peft is not None else None


PROMPT_KINDS: dict[str, PromptKind] = {}  # the registry: name -> kind, in registration order


def register_prompt_kind(kind: PromptKind) -> PromptKind:
    """Add (or replace) the prompt kind `kind.name`; returns it."""
    PROMPT_KINDS[kind.name] = kind
    return kind


def get_prompt_kind(name: str) -> PromptKind:
    try:
        return PROMPT_KINDS[name]
    except KeyError:
        raise ArtifactError(f"prompt_kind '{name}' is not known to this version "
                            f"(known: {', '.join(PROMPT_KINDS)})") from None


def prompt_kinds() -> list[str]:
    """Names of every registered prompt kind, in registration order."""
    return list(PROMPT_KINDS)


def kind_of_prompt(prompt: Any) -> PromptKind:
    """The kind that saves `prompt`, a trained prompt as `backbone.score` takes it (kinds are asked in
    registration order, so a more specific one registered first wins)."""
    for kind in PROMPT_KINDS.values():
        if kind.holds is not None and kind.save is not None and kind.holds(prompt):
            return kind
    raise ArtifactError(f"no prompt kind saves a prompt of type {type(prompt).__name__}")


# --------------------------------------------------------------------------- the built-in kinds
def _hidden(backbone) -> str:
    return str(backbone.hidden_size)


def _kv(layers: int, heads: int, head_dim: int) -> dict[str, tuple[str, ...]]:
    kv = (str(layers), str(heads), "n_tokens", str(head_dim))
    return {"keys": kv, "values": kv}


def _kv_shapes(backbone, n_labels: int) -> dict[str, tuple[str, ...]]:
    from .deep import kv_shape

    return _kv(*kv_shape(backbone.model.config))


def _encoder_head_shapes(backbone, n_labels: int) -> dict[str, tuple[str, ...]]:
    hidden = _hidden(backbone)
    return {**_kv(*backbone.kv_shape), "head.weight": (str(n_labels), hidden), "head.bias": (str(n_labels),)}


def _build_hard(tensors: Tensors, device, text: Mapping[str, Any] | None):
    from .hard import HardPrompt

    return HardPrompt.from_meta(text or {})


def _build_boosted(tensors: Tensors, device, text: Mapping[str, Any] | None):
    from .hard import BoostedPrompts

    return BoostedPrompts.from_meta(text or {})


def _build_instance(tensors: Tensors, device, text: Mapping[str, Any] | None):
    from .instance import InstancePrompt

    return InstancePrompt.from_state(dict(tensors)).to(device).eval()


def _build_encoder_head(tensors: Tensors, device, text: Mapping[str, Any] | None) -> EncoderPrompt:
    keys, values = tensors["keys"].to(device), tensors["values"].to(device)
    prefix = list(zip(keys, values, strict=True)) if keys.shape[2] else None
    return EncoderPrompt(prefix, tensors["head.weight"].to(device), tensors["head.bias"].to(device))


def _is_kv(prompt: Any) -> bool:
    return isinstance(prompt, list | tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in prompt)


def _save_kv(prompt) -> dict[str, torch.Tensor]:
    return {"keys": torch.stack([k for k, _ in prompt]).detach().float().cpu(),  # per-layer (keys, values)
            "values": torch.stack([v for _, v in prompt]).detach().float().cpu()}


def _kv_peft(tensors: Tensors) -> PeftRows:
    from .deep import kv_to_peft_rows

    return PeftRows("PREFIX_TUNING", kv_to_peft_rows(tensors["keys"], tensors["values"]))


def _dept_peft(tensors: Tensors) -> PeftRows | None:
    """A DePT prompt whose input update is zero is exactly a plain prompt; any other has no PEFT equivalent."""
    return PeftRows("PROMPT_TUNING", tensors["prompt"]) if tensors["input_delta"].abs().max() == 0 else None


def _build_knn(tensors: Tensors, device, text: Mapping[str, Any] | None):
    """Unbound kNN demonstrations: whoever applies them binds them to its backbone (`KnnDemos.bind`), which
    encodes the inputs there and re-encodes the pool when that backbone is not the one that encoded it
    (encoder "backbone" on another model, e.g. `--port-to`)."""
    from .knn import KnnDemos

    return KnnDemos.from_meta(text or {}, tensors["pool_embeddings"])


def _check_knn(meta: Mapping[str, Any], tensors: Tensors, backbone, where: str) -> None:
    """One float row per demonstration; the width is the encoder's, checked (or re-encoded) when bound."""
    got, demos = tensors.get("pool_embeddings"), (meta.get("text_prompt") or {}).get("demos")
    if got is None:
        raise ArtifactError(f"{where}: a 'knn-demos' artifact needs the tensor 'pool_embeddings' in {TENSORS_FILE}")
    n = len(demos) if isinstance(demos, list) else "n_pool"
    if got.dim() != 2 or not got.is_floating_point() or (isinstance(n, int) and got.shape[0] != n):
        raise ArtifactError(f"{where}: tensor 'pool_embeddings' is {got.dtype} of shape {tuple(got.shape)}; its "
                            f"pool needs a float tensor of shape ({n}, dim)")


def _check_clip(meta: Mapping[str, Any], tensors: Tensors, backbone, where: str) -> None:
    """Refuse tensors that do not fit the artifact's prompt shape on `backbone` (another width, depth or
    class count), naming the tensor and both shapes, before torch would fail inside load_state_dict."""
    shape = meta.get("prompt_shape")
    if not shape:
        return
    from .clip import ClipPrompt, PromptShape

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


register_prompt_kind(PromptKind("none", mixable=True, no_peft="it learned nothing (zero-shot)"))
register_prompt_kind(PromptKind(
    "instance", shapes=lambda bb, n: {"weight": ("n_tokens", _hidden(bb)), "down.weight": ("bottleneck", _hidden(bb))},
    build=_build_instance, holds=lambda p: hasattr(p, "for_inputs"),  # the generator itself is the prompt
    save=lambda p: {k: v.detach().float().cpu() for k, v in p.state_dict().items()},
    no_peft="an input-dependent prompt generator has no PEFT equivalent"))
register_prompt_kind(PromptKind(
    "soft", shapes=lambda bb, n: {"prompt": ("n_tokens", _hidden(bb))},
    build=lambda t, device, text: t["prompt"].to(device), mixable=True,
    holds=torch.is_tensor, save=lambda p: {"prompt": p.detach().float().cpu()},
    peft=lambda t: PeftRows("PROMPT_TUNING", t["prompt"])))
register_prompt_kind(PromptKind(
    "dept", shapes=lambda bb, n: {"prompt": ("n_tokens", _hidden(bb)), "input_delta": ("positions", _hidden(bb))},
    build=lambda t, device, text: DeltaPrompt(t["prompt"].to(device), t["input_delta"].to(device)),
    holds=lambda p: isinstance(p, DeltaPrompt),
    save=lambda p: {"prompt": p.embeddings.detach().float().cpu(), "input_delta": p.input_delta.detach().float().cpu()},
    peft=_dept_peft, no_peft="DePT's update of the input embeddings has no PEFT equivalent"))
register_prompt_kind(PromptKind(
    "kv", shapes=_kv_shapes, build=lambda t, device, text: list(zip(t["keys"].to(device), t["values"].to(device),
                                                                     strict=True)),
    holds=_is_kv, save=_save_kv, peft=_kv_peft))
register_prompt_kind(PromptKind("encoder-head", shapes=_encoder_head_shapes, build=_build_encoder_head,
                                no_peft="PEFT prompt adapters carry no classification head"))
register_prompt_kind(PromptKind("hard", build=_build_hard, needs_text=True, mixable=True,
                                no_peft="a text prompt has no learned vectors to export"))
register_prompt_kind(PromptKind("boosted", build=_build_boosted, needs_text=True,
                                no_peft="a boosted ensemble of text prompts has no learned vectors to export"))
register_prompt_kind(PromptKind(
    "knn-demos", build=_build_knn, needs_text=True, mixable=True, custom_check=_check_knn,
    no_peft="demonstrations chosen per input are text, not learned vectors"))
# CLIP prompts are applied by their predictor (ClipPredictor rebuilds the ClipPrompt module), so no `build`.
register_prompt_kind(PromptKind("clip", custom_check=_check_clip, no_peft="PEFT has no CLIP prompt adapters"))
