"""Learnable prompts for CLIP-style dual encoders: one module covers the VLM methods' prompt shapes.

- `ctx` (n_ctx, text_hidden), or (classes, n_ctx, text_hidden) class-specific: context vectors in
  place of the words before the class name (CoOp, KgCoOp, ProGrad, TPT);
- `meta_net`: image feature -> a shift added to every context vector, per image (CoCoOp);
- `text_deep` (depth - 1, n_ctx, text_hidden): replacement context tokens at the input of text layers
  1..depth-1 (MaPLe, PromptSRC);
- `vision_deep` (depth, n_vision, vision_hidden): tokens appended to the image patches at layer 0 and
  replaced at layers 1..depth-1 (PromptSRC, independent V-L prompts);
- `couplers`: per layer, a linear map from the text prompt to the vision prompt (MaPLe's coupling
  function, so the two towers' prompts are learned jointly).

`PromptShape` is the JSON-able description stored in the artifact; the module's `state_dict` is its
tensors, so an artifact rebuilds exactly the module that was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.clip import ClipBackbone


@dataclass
class PromptShape:
    n_ctx: int = 4
    class_specific: bool = False
    conditional: bool = False  # CoCoOp meta-net
    text_depth: int = 0  # layers with text prompts beyond the input (0: input only)
    vision_depth: int = 0  # layers with vision prompts (0: none)
    n_vision: int = 0
    coupled: bool = False  # vision prompts = coupler(text prompts) (MaPLe)

    def to_json(self) -> dict:
        return asdict(self)


class ClipPrompt(nn.Module):
    def __init__(self, shape: PromptShape, backbone: ClipBackbone, n_classes: int,
                 init_ctx: torch.Tensor | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.shape = shape
        d, dv = backbone.text_hidden, backbone.vision_hidden

        def normal(*size: int) -> torch.Tensor:
            return torch.randn(*size, generator=generator) * 0.02

        base = init_ctx.detach().float().clone() if init_ctx is not None else normal(shape.n_ctx, d)
        if shape.class_specific:
            base = base.unsqueeze(0).repeat(n_classes, 1, 1)
        self.ctx = nn.Parameter(base)
        if shape.conditional:
            hidden = max(1, backbone.embed_dim // 16)
            self.meta_net = nn.Sequential(nn.Linear(backbone.embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, d))
            with torch.no_grad():  # seeded init, independent of torch's global RNG
                for layer in (self.meta_net[0], self.meta_net[2]):
                    bound = 1 / layer.in_features ** 0.5
                    layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                    layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
        if shape.text_depth:
            self.text_deep = nn.Parameter(normal(shape.text_depth, shape.n_ctx, d))
        if shape.vision_depth:
            if shape.coupled:
                self.couplers = nn.ModuleList(nn.Linear(d, dv) for _ in range(shape.vision_depth))
                with torch.no_grad():
                    for layer in self.couplers:
                        layer.weight.copy_(normal(dv, d))
                        layer.bias.zero_()
            else:
                self.vision_deep = nn.Parameter(normal(shape.vision_depth, shape.n_vision, dv))

    @property
    def image_side_frozen(self) -> bool:
        """True when the image tower runs without prompts, so its features can be cached."""
        return not self.shape.vision_depth

    def text_prompts(self) -> list[torch.Tensor]:
        """Text prompts per layer: the input context (shared form) then the deep ones."""
        first = self.ctx if self.ctx.dim() == 2 else self.ctx.mean(0)
        deep = list(self.text_deep) if self.shape.text_depth else []
        return [first, *deep]

    def vision_prompts(self) -> list[torch.Tensor] | None:
        if not self.shape.vision_depth:
            return None
        if self.shape.coupled:
            text = self.text_prompts()
            return [coupler(text[i]) for i, coupler in enumerate(self.couplers)]
        return list(self.vision_deep)

    def class_text_features(self, backbone: ClipBackbone, ids: torch.Tensor, mask: torch.Tensor,
                            image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text features of every class: (classes, dim), or (images, classes, dim) when conditional."""
        emb = backbone.token_embedding()(ids).float()  # (C, L, d)
        s, n = backbone.context_start, self.shape.n_ctx
        deep = list(self.text_deep) if self.shape.text_depth else None
        if self.shape.conditional:
            assert image_features is not None, "a conditional prompt needs the image features"
            shift = self.meta_net(image_features.float())  # (B, d)
            ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # (B, n, d)
            b, c = ctx.shape[0], emb.shape[0]
            rows = torch.cat([emb[None, :, :s].expand(b, -1, -1, -1), ctx[:, None].expand(-1, c, -1, -1),
                              emb[None, :, s + n:].expand(b, -1, -1, -1)], dim=2)
            feats = backbone.encode_text(rows.reshape(b * c, *rows.shape[2:]), mask.repeat(b, 1), deep)
            return feats.view(b, c, -1)
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(emb.shape[0], -1, -1)
        rows = torch.cat([emb[:, :s], ctx, emb[:, s + n:]], dim=1)
        return backbone.encode_text(rows, mask, deep)


def context_init(backbone: ClipBackbone, text: str | None, n_ctx: int) -> torch.Tensor | None:
    """Token embeddings of `text` (e.g. "a photo of a") as initial context, when it is exactly n_ctx tokens."""
    if not text:
        return None
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != n_ctx:
        return None
    with torch.no_grad():
        return backbone.token_embedding()(torch.tensor(ids, device=backbone.device)).float().cpu()
