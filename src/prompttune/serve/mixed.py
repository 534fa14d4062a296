"""One packed forward pass for a batch whose examples sit behind different soft prompts: what a server
mixing artifacts on one backbone runs (`engine.py`). It is serving's alone, so it lives here rather than
on `CausalLMBackbone`, built from the backbone's packing pieces (`PackedLayout`, `AttentionPlan`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from ..models import CausalLMBackbone, LabelWords
from ..models.attention import move_masks, output_cache
from ..models.packing import PackedLayout


@torch.inference_mode()
def answer_hidden_mixed(
    backbone: CausalLMBackbone, token_ids: Sequence[Sequence[int]], prompt_of: Sequence[int],
    prompts: Sequence[torch.Tensor], max_row_tokens: int = 1024,
) -> torch.Tensor:
    """The hidden state at each example's answer position (batch, hidden), example i behind soft
    prompt `prompts[prompt_of[i]]` (-1: none), all in one packed forward pass. The distinct prompts'
    keys/values are computed once (one block-diagonal pass, positions restarting per prompt) and every
    example attends only to its own prompt's segment."""
    bb = backbone
    lengths = [int(p.shape[0]) for p in prompts]
    token_ids = [bb.fit([x], lengths[j] if j >= 0 else 0)[0] for x, j in zip(token_ids, prompt_of, strict=True)]
    if not bb.attention.packable:
        return _per_prompt_padded(bb, token_ids, prompt_of, prompts)
    single = LabelWords(words=(((0,),),))  # no word branches: only the answer position is read
    layout = PackedLayout.build(token_ids, single, max_row_tokens)
    total, rows = sum(lengths), layout.ids.shape[0]
    segment = torch.cat([torch.full((n,), j) for j, n in enumerate(lengths)]) if total else torch.zeros(0)
    prompt_positions = torch.cat([torch.arange(n) for n in lengths]) if total else torch.zeros(0, dtype=torch.long)
    cache = _prompts_cache(bb, prompts, segment, prompt_positions, rows) if total else None
    allowed = layout.allowed(total)
    owner = torch.tensor(list(prompt_of) + [-1], dtype=torch.long)  # index -1 (pads) -> no prompt
    query_prompt = owner[layout.unit]  # (R, L): the prompt each token belongs behind
    allowed[:, :, :total] = query_prompt[:, :, None] == segment[None, None, :].long()
    positions = layout.positions + torch.tensor(lengths + [0], dtype=torch.long)[query_prompt]
    keys = torch.cat([prompt_positions.expand(rows, -1), positions], 1)
    masks = bb.attention.masks(allowed, positions, keys, bb.dtype)
    hidden = bb._forward(
        cache, inputs_embeds=bb.embed(layout.ids.clamp(min=0)), attention_mask=move_masks(masks, bb.device),
        position_ids=positions.to(bb.device), use_cache=False,
    ).last_hidden_state
    return hidden[layout.answer_row, layout.answer_col]


def _prompts_cache(bb: CausalLMBackbone, prompts: Sequence[torch.Tensor], segment: torch.Tensor,
                   prompt_positions: torch.Tensor, rows: int) -> DynamicCache:
    """The keys/values of all distinct prompts side by side, each attending only to itself, repeated for
    the `rows` packed rows."""
    total = len(segment)
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    masks = bb.attention.masks(allowed[None], prompt_positions[None], prompt_positions[None], bb.dtype)
    cache = output_cache(bb._forward(
        DynamicCache(), inputs_embeds=torch.cat([p.to(bb.device, bb.dtype) for p in prompts])[None],
        attention_mask=move_masks(masks, bb.device), position_ids=prompt_positions[None].to(bb.device),
        use_cache=True,
    ))
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def _per_prompt_padded(bb: CausalLMBackbone, token_ids: list[list[int]], prompt_of: Sequence[int],
                       prompts: Sequence[torch.Tensor]) -> torch.Tensor:
    """For a model no packed mask describes: one right-padded batch per prompt, masks from transformers."""
    out = torch.empty(len(token_ids), bb.hidden_size, device=bb.device, dtype=bb.dtype)
    for j in sorted(set(prompt_of)):
        idx = [i for i, p in enumerate(prompt_of) if p == j]
        embeds, mask, positions, answer = bb.padded_inputs(
            [token_ids[i] for i in idx], prompts[j] if j >= 0 else None, padding_side="right")
        hidden = bb._forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                             use_cache=False).last_hidden_state
        out[torch.tensor(idx, device=bb.device)] = hidden[torch.arange(len(idx), device=bb.device), answer]
    return out
