"""Deep prompts plus a linear head on a frozen encoder (the P-tuning v2 NLU setting, Liu et al., 2022).

The body stays frozen; trained are per-layer prompt keys/values and a linear head over the pooled,
normalised features. The head starts as the zero-shot classifier (the verbalizer words' embeddings,
scaled), and the prompt's keys start at zero (uniform attention over prompt values near zero), so step
0 is the encoder's zero-shot accuracy and training moves on from there.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..models import EncoderBackbone, EncoderPrompt
from ..models.encoder import LABEL_SCALE
from ..training import TrainConfig
from .base import MethodResult, RunContext, register
from .family.soft import SoftPromptMethod


class FineTuneHeadConfig(TrainConfig):
    n_tokens: int = Field(10, ge=0, description="deep prompt length per layer (0: head only)")
    lr: float = Field(5e-3, gt=0, description="peak learning rate (AdamW)")
    init_std: float = Field(0.02, gt=0, description="standard deviation of the prompt values at init")


class EncoderPromptModule(nn.Module):
    """Trainable deep prompt (keys, values: layers x heads x n_tokens x head_dim) and linear head."""

    def __init__(self, kv_shape: tuple[int, int, int], n_tokens: int, head_init: torch.Tensor, init_std: float):
        super().__init__()
        layers, heads, head_dim = kv_shape
        self.keys = nn.Parameter(torch.zeros(layers, heads, n_tokens, head_dim))
        self.values = nn.Parameter(torch.randn(layers, heads, n_tokens, head_dim) * init_std)
        self.head = nn.Linear(head_init.shape[1], head_init.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(head_init)
            self.head.bias.zero_()

    def forward(self) -> EncoderPrompt:
        prefix = list(zip(self.keys, self.values, strict=True)) if self.keys.shape[2] else None
        return EncoderPrompt(prefix, self.head.weight, self.head.bias)


@register
class FineTuneHead(SoftPromptMethod):
    name = "fine-tune-head"
    description = "Encoder (BERT/MiniLM) with frozen body: deep prompts + a trainable linear head (P-tuning v2 NLU)."
    Config = FineTuneHeadConfig
    backbone_kinds = ("encoder",)
    generative = False
    not_generative_because = ("it trains a linear classifier over the labels on an encoder, and a generative task "
                               "has no labels: its answer is text")

    def count_trainable(self, model_config) -> int:
        cfg: FineTuneHeadConfig = self.config  # type: ignore[assignment]
        head_dim = model_config.hidden_size // model_config.num_attention_heads
        prompt = 2 * model_config.num_hidden_layers * model_config.num_attention_heads * cfg.n_tokens * head_dim
        return prompt + 2 * (model_config.hidden_size + 1)  # a two-class head; more classes add hidden + 1 each

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: FineTuneHeadConfig = self.config  # type: ignore[assignment]
        bb = self.backbone = ctx.backbone
        if not isinstance(bb, EncoderBackbone):
            raise ConfigError(f"{self.name} needs an encoder backbone; '{bb.model_id}' is a causal LM")
        head_init = LABEL_SCALE * bb.label_embeddings(ctx.labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            module = EncoderPromptModule(bb.kv_shape, cfg.n_tokens, head_init.cpu(), cfg.init_std).to(bb.device)
        outcome = self.train_module(ctx, module, cfg)
        module.load_state_dict(outcome.best_state)
        tensors = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
        return MethodResult(
            prompt_kind="encoder-head", tensors=tensors,
            trainable_parameters=sum(p.numel() for p in module.parameters() if p.requires_grad),
            history=outcome.history,
            info={"best_step": outcome.best_step, "best_dev_accuracy": outcome.best.accuracy},
        )
