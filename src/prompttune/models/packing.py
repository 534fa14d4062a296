"""Examples packed back to back into a few rows, and who may attend to whom inside them (`score`'s layout)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .scoring import LabelWords


@dataclass
class PackedLayout:
    """Examples (and their multi-token-word branches) packed into rows, with the bookkeeping."""

    ids: torch.Tensor  # (R, L) token ids, pads included
    positions: torch.Tensor  # (R, L) positions before the prompt offset
    unit: torch.Tensor  # (R, L) which example a token belongs to; -1 for pads
    branch: torch.Tensor  # (R, L) 0 for the example's own tokens, k for the k-th word branch
    answer_row: torch.Tensor
    answer_col: torch.Tensor
    branch_row: dict[int, torch.Tensor]
    branch_col: dict[int, torch.Tensor]

    @classmethod
    def build(
        cls, token_ids: Sequence[Sequence[int]], labels: LabelWords, max_row_tokens: int, inline_prompt: int = 0
    ) -> PackedLayout:
        """`inline_prompt` > 0 puts that many prompt slots (ids -1, -2, ...) before every example; every
        multi-token label word is a branch (keyed by its index in `labels.flat`) holding all its tokens but the last."""
        words = [(w_idx, w[:-1]) for w_idx, w in enumerate(labels.flat) if len(w) > 1]
        return cls.pack(token_ids, [words] * len(token_ids), max_row_tokens, inline_prompt)

    @classmethod
    def for_targets(
        cls, token_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]], max_row_tokens: int,
        inline_prompt: int = 0,
    ) -> PackedLayout:
        """Teacher forcing: example i's target tokens but the last are its one branch (key 0), right after
        its input, so its answer position and the branch's predict the target: example i's predicting
        positions are `answer_col[i] + range(len(target_ids[i]))` in row `answer_row[i]`."""
        return cls.pack(token_ids, [[(0, t[:-1])] for t in target_ids], max_row_tokens, inline_prompt)

    @classmethod
    def pack(
        cls, token_ids: Sequence[Sequence[int]], branches: Sequence[Sequence[tuple[int, Sequence[int]]]],
        max_row_tokens: int, inline_prompt: int = 0,
    ) -> PackedLayout:
        """Pack examples back to back; `branches[i]`: example i's (key, tokens) branches, which attend to the
        example and to themselves, and sit right after it (every example has the same keys, in order)."""
        rows: list[list[tuple[int, int, int, int]]] = [[]]  # (token, position, unit, branch)
        answer_row, answer_col = [], []
        branch_row: dict[int, list[int]] = {}
        branch_col: dict[int, list[int]] = {}
        for i, x in enumerate(token_ids):
            need = inline_prompt + len(x) + sum(len(b) for _, b in branches[i])
            if rows[-1] and len(rows[-1]) + need > max_row_tokens:
                rows.append([])
            row = rows[-1]
            r = len(rows) - 1
            row.extend((-k - 1, k, i, 0) for k in range(inline_prompt))
            row.extend((t, inline_prompt + p, i, 0) for p, t in enumerate(x))
            answer_row.append(r)
            answer_col.append(len(row) - 1)
            for k, (key, toks) in enumerate(branches[i], start=1):
                branch_row.setdefault(key, []).append(r)
                branch_col.setdefault(key, []).append(len(row))
                row.extend((t, inline_prompt + len(x) + p, i, k) for p, t in enumerate(toks))
        width = max(len(r) for r in rows)
        table = torch.zeros(len(rows), width, 4, dtype=torch.long)
        table[..., 2] = -1  # pads belong to no example
        for r, row in enumerate(rows):
            if row:
                table[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        return cls(
            ids=table[..., 0], positions=table[..., 1], unit=table[..., 2], branch=table[..., 3],
            answer_row=as_t(answer_row), answer_col=as_t(answer_col),
            branch_row={k: as_t(v) for k, v in branch_row.items()},
            branch_col={k: as_t(v) for k, v in branch_col.items()},
        )

    def allowed(self, n_prompt: int) -> torch.Tensor:
        """(R, L, n_prompt + L) booleans: prompt visible to all; causal within an example; a word branch
        sees its example and itself; pads see only themselves (never an empty row)."""
        n_rows, width = self.ids.shape
        unit_q, unit_k = self.unit[:, :, None], self.unit[:, None, :]
        br_q, br_k = self.branch[:, :, None], self.branch[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()[None]
        allowed = (unit_q == unit_k) & (unit_q >= 0) & causal & ((br_k == 0) | (br_k == br_q))
        allowed |= torch.eye(width, dtype=torch.bool)[None]
        prompt_cols = (self.unit >= 0)[:, :, None].expand(n_rows, width, n_prompt)
        return torch.cat([prompt_cols, allowed], dim=2)


def causal_allowed(real: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """(R, L, L) booleans for plain rows (`real`: (R, L), False on pads): causal over real keys, pads see themselves."""
    n = real.shape[1] if width is None else width
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None] & real[:, None, :]
    return allowed | torch.eye(n, dtype=torch.bool)[None]
