"""Soft prompts: trainable vectors placed before the input embeddings (Lester et al., 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models import CausalLMBackbone

INIT_CHOICES = ("text", "vocab", "random")


class SoftPrompt(nn.Module):
    """`n_tokens` vectors of the model's hidden size, kept in fp32 whatever the model's dtype.

    The protocol of every prompt module: `forward()` gives what the backbone consumes (here the
    (n_tokens, hidden) embeddings), and `state_dict()` is what the artifact stores.
    """

    kind = "embeddings"

    def __init__(self, n_tokens: int, hidden_size: int):
        super().__init__()
        if n_tokens < 1:
            raise ConfigError(f"prompt length must be at least 1, got {n_tokens}")
        self.weight = nn.Parameter(torch.zeros(n_tokens, hidden_size, dtype=torch.float32))

    @property
    def n_tokens(self) -> int:
        return self.weight.shape[0]

    def forward(self) -> torch.Tensor:
        return self.weight

    @classmethod
    def initialise(
        cls, backbone: CausalLMBackbone, n_tokens: int, init: str = "text", init_text: str | None = None,
        seed: int = 0, vocab_top: int = 5000,
    ) -> SoftPrompt:
        """`text`: embeddings of `init_text`, repeated or cut to length (PEFT's TEXT init);
        `vocab`: embeddings of tokens sampled from the first `vocab_top` ids (Lester's sampled vocab);
        `random`: uniform in [-0.5, 0.5] as in the paper's random init."""
        prompt = cls(n_tokens, backbone.hidden_size)
        gen = torch.Generator().manual_seed(seed)
        if init == "text":
            if not init_text or not init_text.strip():
                raise ConfigError("init 'text' needs a non-empty init_text")
            ids = backbone.tokenizer(init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(f"init_text {init_text!r} tokenizes to nothing")
            ids = (ids * (n_tokens // len(ids) + 1))[:n_tokens]
            vectors = backbone.embed(torch.tensor(ids))
        elif init == "vocab":
            top = min(vocab_top, backbone.vocab_size)
            vectors = backbone.embed(torch.randint(0, top, (n_tokens,), generator=gen))
        elif init == "random":
            vectors = torch.rand(n_tokens, backbone.hidden_size, generator=gen) - 0.5
        else:
            raise ConfigError(f"prompt init '{init}' is not one of {', '.join(INIT_CHOICES)}")
        with torch.no_grad():
            prompt.weight.copy_(vectors.detach().float().cpu())
        return prompt.to(backbone.device)


def nearest_tokens(backbone: CausalLMBackbone, vectors: torch.Tensor, k: int = 1) -> list[list[tuple[str, float]]]:
    """The k vocabulary tokens closest (cosine) to each prompt vector, with their similarity: a
    readable view of a soft prompt."""
    table = torch.nn.functional.normalize(backbone.model.get_input_embeddings().weight.float(), dim=-1)
    query = torch.nn.functional.normalize(vectors.to(table.device).float(), dim=-1)
    sims, ids = (query @ table.T).topk(k, dim=-1)
    return [[(backbone.tokenizer.decode([i]), s) for i, s in zip(row_ids, row_sims, strict=True)]
            for row_ids, row_sims in zip(ids.tolist(), sims.tolist(), strict=True)]
