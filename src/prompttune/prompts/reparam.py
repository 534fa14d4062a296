"""Soft prompts produced by a small trainable network instead of stored directly.

Each module's `forward()` returns (n_tokens, hidden) input embeddings, exactly like `SoftPrompt`,
so the backbone and the trainer treat them alike. After training the output is folded into a
plain prompt tensor (the artifact's "prompt"); the network weights are kept beside it so a run can
continue from the artifact.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class ResidualPrompt(nn.Module):
    """Residual reparameterisation (Razdaibiedina et al., 2023): P' = P + LayerNorm(MLP(P)), with
    one bottleneck MLP shared by all prompt tokens."""

    kind = "embeddings"

    def __init__(self, init: torch.Tensor, bottleneck: int = 128):
        super().__init__()
        hidden = init.shape[1]
        self.weight = nn.Parameter(init.detach().float().clone())
        self.mlp = nn.Sequential(nn.Linear(hidden, bottleneck), nn.ReLU(), nn.Linear(bottleneck, hidden))
        self.norm = nn.LayerNorm(hidden)
        # Start the residual branch at the scale of the embeddings, so the initial prompt stays close
        # to its initialisation (the paper's T5 embeddings are far larger than a small LM's).
        with torch.no_grad():
            self.norm.weight.fill_(float(init.float().pow(2).mean().sqrt()) * 0.1)

    def forward(self) -> torch.Tensor:
        return self.weight + self.norm(self.mlp(self.weight))


class LowRankPrompt(nn.Module):
    """Low-rank prompt (LoPT): P = U @ V with U (n_tokens, rank) and V (rank, hidden), started from
    the best rank-r approximation (truncated SVD) of the initial prompt."""

    kind = "embeddings"

    def __init__(self, init: torch.Tensor, rank: int):
        super().__init__()
        n_tokens, hidden = init.shape
        if not 1 <= rank <= min(n_tokens, hidden):
            raise ConfigError(
                f"lopt rank {rank} must be between 1 and the prompt's smaller side "
                f"(n_tokens {n_tokens}, hidden size {hidden})"
            )
        u, s, vh = torch.linalg.svd(init.detach().float(), full_matrices=False)
        root = s[:rank].sqrt()
        self.u = nn.Parameter(u[:, :rank] * root)
        self.v = nn.Parameter(root[:, None] * vh[:rank])

    def forward(self) -> torch.Tensor:
        return self.u @ self.v


class PromptEncoderPrompt(nn.Module):
    """P-tuning (Liu et al., 2021): virtual-token embeddings passed through a prompt encoder, an MLP
    or a bidirectional LSTM followed by an MLP."""

    kind = "embeddings"

    def __init__(self, init: torch.Tensor, encoder: str = "mlp", encoder_hidden: int = 256):
        super().__init__()
        hidden = init.shape[1]
        self.weight = nn.Parameter(init.detach().float().clone())
        if encoder == "mlp":
            self.lstm = None
            self.head = nn.Sequential(nn.Linear(hidden, encoder_hidden), nn.ReLU(),
                                      nn.Linear(encoder_hidden, encoder_hidden), nn.ReLU(),
                                      nn.Linear(encoder_hidden, hidden))
        elif encoder == "lstm":
            self.lstm = nn.LSTM(hidden, encoder_hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Sequential(nn.Linear(2 * encoder_hidden, 2 * encoder_hidden), nn.ReLU(),
                                      nn.Linear(2 * encoder_hidden, hidden))
        else:
            raise ConfigError(f"p-tuning encoder '{encoder}' is not one of mlp, lstm")

    def forward(self) -> torch.Tensor:
        x = self.weight
        if self.lstm is not None:
            x = self.lstm(x[None])[0][0]
        return self.head(x)

