"""Input-dependent soft prompts (IDPG, Wu et al., 2022): a small generator maps each input's pooled
representation to that input's own prompt.

The representation is the frozen model's mean last hidden state over the input (without prompt),
computed under no_grad and cached per input, so training costs no more forward passes than plain
prompt tuning after the first epoch. The generator is a bottleneck MLP whose output layer starts at
zero: at step 0 every input gets the shared base prompt, exactly prompt tuning's initial prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InstancePrompt(nn.Module):
    """prompt(x) = P + reshape(W_up · tanh(W_down · pool(x))), one (n_tokens, hidden) prompt per input."""

    kind = "instance"

    def __init__(self, init: torch.Tensor, bottleneck: int = 32):
        super().__init__()
        n_tokens, hidden = init.shape
        self.weight = nn.Parameter(init.detach().float().clone())
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, n_tokens * hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._pooled: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> InstancePrompt:
        module = cls(state["weight"], bottleneck=state["down.weight"].shape[0])
        module.load_state_dict(state)
        return module

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) representations -> (batch, n_tokens, hidden) prompts."""
        n_tokens, hidden = self.weight.shape
        delta = self.up(torch.tanh(self.down(pooled.float()))).view(-1, n_tokens, hidden)
        return self.weight[None] + delta

    def for_inputs(self, backbone, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """The prompts of these inputs (the protocol a backbone calls for input-dependent prompts)."""
        missing = [tuple(x) for x in token_ids if tuple(x) not in self._pooled]
        if missing:
            pooled = backbone.pooled([list(x) for x in missing])
            if len(self._pooled) > 100_000:  # a long-running server: keep the cache bounded
                self._pooled.clear()
            self._pooled.update({x: p for x, p in zip(missing, pooled, strict=True)})
        pooled = torch.stack([self._pooled[tuple(x)] for x in token_ids]).to(self.weight.device)
        if pooled.is_inference() and not torch.is_inference_mode_enabled():
            pooled = pooled.clone()  # cached during evaluation; autograd cannot save inference tensors
        return self(pooled)
