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


class DecomposedPrompt(nn.Module):
    """DePT (Shi & Lipani, 2023): a shorter soft prompt plus a low-rank update A @ B of the input
    tokens' embeddings by position (A: max_length x rank, B: rank x hidden; B starts at zero, so
    training starts from the plain shorter prompt)."""

    kind = "dept"

    def __init__(self, init: torch.Tensor, max_length: int, rank: int):
        super().__init__()
        hidden = init.shape[1]
        self.weight = nn.Parameter(init.detach().float().clone())
        self.a = nn.Parameter(torch.randn(max_length, rank) / rank**0.5)
        self.b = nn.Parameter(torch.zeros(rank, hidden))

    def forward(self):
        from ..models import DeltaPrompt

        return DeltaPrompt(self.weight, self.a @ self.b)


class MaskedPrompt(nn.Module):
    """A soft prompt with token- and piece-level masks (XPrompt, Ma et al., 2022): each prompt vector
    is cut into `n_pieces` equal pieces; pruned tokens and pieces are multiplied by zero. The masks
    are buffers, so they travel with checkpoints but are never trained."""

    kind = "embeddings"

    def __init__(self, init: torch.Tensor, n_pieces: int):
        super().__init__()
        n_tokens, hidden = init.shape
        if hidden % n_pieces:
            raise ConfigError(f"xprompt n_pieces {n_pieces} does not divide the model's hidden size {hidden}")
        self.weight = nn.Parameter(init.detach().float().clone())
        self.register_buffer("token_mask", torch.ones(n_tokens))
        self.register_buffer("piece_mask", torch.ones(n_tokens, n_pieces))

    def mask(self) -> torch.Tensor:
        piece = self.weight.shape[1] // self.piece_mask.shape[1]
        return self.token_mask[:, None] * self.piece_mask.repeat_interleave(piece, dim=1)

    def forward(self) -> torch.Tensor:
        return self.weight * self.mask()


class MultitaskPrompt(nn.Module):
    """Multitask prompt tuning (MPT, Wang et al., 2023): one shared prompt P* and, per task k, a
    rank-one multiplicative update: P_k = P* ∘ (u_k v_kᵀ). u and v start at ones, so every task
    starts at P*."""

    kind = "embeddings"

    def __init__(self, shared: torch.Tensor, n_tasks: int = 1):
        super().__init__()
        n_tokens, hidden = shared.shape
        self.weight = nn.Parameter(shared.detach().float().clone())
        self.u = nn.Parameter(torch.ones(n_tasks, n_tokens))
        self.v = nn.Parameter(torch.ones(n_tasks, hidden))

    def forward(self, task: int = 0) -> torch.Tensor:
        return self.weight * torch.outer(self.u[task], self.v[task])
