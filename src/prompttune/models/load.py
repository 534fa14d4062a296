"""Which kind of model a `--model` value names, and loading a frozen text backbone for it.

`model_kind` is the one place that tells a causal LM, an encoder and a CLIP-style dual encoder apart,
from the config alone (no weights are read): `load_backbone` dispatches on it, `api.describe_methods`
uses it to say which methods a model takes, and the kinds to choose a model's kind. The backbones
themselves live in `causal_lm.py` and `encoder.py`; this module sits above both, so neither needs
the other.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .causal_lm import CausalLMBackbone, load_causal_lm
from .encoder import EncoderBackbone, is_encoder_config, load_encoder
from .loading import resolve_device, resolve_dtype, resolve_model_source
from .open_clip import is_open_clip_source

CLIP_MODEL_TYPES = ("clip", "vision-text-dual-encoder")
_CLIP_USE = ("it takes the CLIP methods (zero-shot-clip, coop, cocoop, kgcoop, prograd, maple, promptsrc, tpt) "
             "and an image task")


def model_kind(model: str) -> str:
    """"causal-lm", "encoder" or "clip" for an alias, local directory, .gguf file, hub id or `open_clip:...`
    source. Raises `ModelError` when the model cannot be found or its config read."""
    if is_open_clip_source(model):
        return "clip"
    source, _ = resolve_model_source(model)
    return _config_kind(_read_config(model, source))


def load_backbone(model: str = "smollm2-135m", device: str = "auto",
                  dtype: str = "auto") -> CausalLMBackbone | EncoderBackbone:
    """Load a frozen backbone by alias, local directory, GGUF file or hub id: a `CausalLMBackbone`,
    or an `EncoderBackbone` when the config is an encoder's (BERT, MiniLM, ...). CLIP models are refused
    with the methods they take (they load through `models.clip.load_clip_backbone`)."""
    if is_open_clip_source(model):
        raise ModelError(f"model '{model}' is an open_clip CLIP model; {_CLIP_USE}")
    source, model_id = resolve_model_source(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    config = _read_config(model, source)
    kind = _config_kind(config)
    if kind == "clip":
        raise ModelError(f"model '{model}' is a CLIP-style dual encoder ({config.model_type}); {_CLIP_USE}")
    load = load_encoder if kind == "encoder" else load_causal_lm
    try:
        return load(source, model_id, dev, torch_dtype)
    except (OSError, ValueError) as exc:
        raise _cannot_load(model, source, exc) from None


def _config_kind(config) -> str:
    if config.model_type in CLIP_MODEL_TYPES:
        return "clip"
    return "encoder" if is_encoder_config(config) else "causal-lm"


def _read_config(model: str, source: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _cannot_load(model, source, exc) from None


def _cannot_load(model: str, source: str, exc: Exception) -> ModelError:
    """One line naming the model, where it was looked for, and the first line of the cause."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = "from its directory" if Path(source).exists() else "as a hub id"
    return ModelError(f"cannot load model '{model}' {where} ({first})")
