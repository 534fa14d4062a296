"""How each decoder layer attends, so that the masks prompttune builds by hand stay exact.

The packed scoring path (`CausalLMBackbone.score`, serve's `answer_hidden_mixed`) and the search engine put
several sequences in one row and pass their own 4-D masks. transformers hands such a mask unchanged
to the attention of every layer, so the mask has to say everything the layer would have applied
itself: a sliding-window layer (Mistral, Gemma 2/3's local layers, Qwen2 with `use_sliding_window`)
must find its window in it. `AttentionPlan.of(model)` reads each layer's type and window the way
transformers' own cache does, and `masks` turns one boolean "may attend" pattern into the mask of
each layer type, windows measured in positions: what the model measures in an unpacked sequence.

Whatever a hand-built mask could still get wrong (chunked attention, bidirectional attention,
state-space or KV-sharing layers, kernels that take no 4-D mask such as flash or flex attention)
makes the plan not `packable`; the callers then take the padded path, where transformers builds
the masks itself.

`cache_kwarg` / `output_cache`: the name under which the decoder takes and returns its KV cache
(`cache` since transformers 5.x renamed `past_key_values`, which now warns), so no call warns.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch

# Kernels that apply an additive 4-D mask exactly as given.
MASKABLE_IMPLEMENTATIONS = ("sdpa", "eager")
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class AttentionPlan:
    """Per layer type, the window a query may look back (None: all of its past)."""

    windows: dict[str, int | None]
    by_type: bool  # the decoder takes {layer type: mask}, needed when the types' masks differ
    why_not_packable: str | None = None

    @property
    def packable(self) -> bool:
        return self.why_not_packable is None

    @classmethod
    def of(cls, model) -> AttentionPlan:
        config = model.config.get_text_config(decoder=True)
        decoder = model.base_model
        types, windows = _layer_types(config)
        by_type = _takes_mask_per_type(decoder)
        plan = dict(zip(types, windows, strict=True))
        impl = getattr(config, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", None)
        why = None
        if impl not in MASKABLE_IMPLEMENTATIONS:
            why = f"its attention implementation '{impl}' does not take a 4-D mask as given"
        elif not getattr(config, "is_causal", True) or getattr(config, "use_bidirectional_attention", False):
            why = "its attention is not (only) causal"
        elif set(types) - {FULL, SLIDING}:
            why = f"it has {', '.join(sorted(set(types) - {FULL, SLIDING}))} layers"
        elif any(plan[t] != w for t, w in zip(types, windows, strict=True)):
            why = "layers of one type have different windows"
        elif len(set(plan.values())) > 1 and not by_type:
            why = "its layers need different masks and its forward takes only one"
        elif not any("Attention" in type(m).__name__ for m in decoder.modules()):
            why = "it has no attention layers (a packed row would share state across examples)"
        return cls(plan, by_type, why)

    def masks(
        self, allowed: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive (R, 1, Q, K) masks from `allowed` (R, Q, K), for every layer type: a sliding layer also
        hides keys `window` or more positions behind the query. One tensor when all types agree."""
        windows = set(self.windows.values())
        distance = query_positions[:, :, None] - key_positions[:, None, :] if windows != {None} else None
        by_window: dict[int | None, torch.Tensor] = {}
        for window in windows:
            keep = allowed if window is None else allowed & (distance < window)
            mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
            by_window[window] = mask.masked_fill_(~keep, torch.finfo(dtype).min)[:, None]
        if len(by_window) == 1:
            return next(iter(by_window.values()))
        return {layer_type: by_window[w] for layer_type, w in self.windows.items()}


def move_masks(masks: torch.Tensor | dict[str, torch.Tensor], device) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(masks, dict):
        return {k: v.to(device) for k, v in masks.items()}
    return masks.to(device)


def _layer_types(config) -> tuple[list[str], list[int | None]]:
    """Each layer's type and window, as transformers' cache reads them (inferred from `sliding_window` /
    `attention_chunk_size` when the config has no `layer_types`)."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        types, kwargs = get_layer_types_and_kwargs(config)
        windows = [kw.get("sliding_window") if t == SLIDING else None for t, kw in zip(types, kwargs, strict=True)]
        return list(types), windows
    except (ImportError, AttributeError):  # transformers before per-layer configs
        n = config.num_hidden_layers
        types = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if types is None:
            chunk = getattr(config, "attention_chunk_size", None)
            types = [SLIDING if window else "chunked_attention" if chunk else FULL] * n
        return list(types), [window if t == SLIDING else None for t in types]


def _takes_mask_per_type(decoder) -> bool:
    """Whether the decoder's forward accepts a {layer type: mask} dict as `attention_mask`."""
    try:
        source = inspect.getsource(inspect.unwrap(type(decoder).forward))
    except (OSError, TypeError):
        return False
    return re.search(r"isinstance\(\s*(\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)", source) is not None


def cache_kwarg(module) -> str:
    """The keyword `module.forward` takes its KV cache under: `cache`, or `past_key_values` before the rename."""
    try:
        params = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache a forward returned, read without touching the deprecated `past_key_values` alias."""
    fields = getattr(type(output), "__dataclass_fields__", {})
    return getattr(output, "cache" if "cache" in fields else "past_key_values", None)
