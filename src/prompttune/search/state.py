"""The bookkeeping every search shares: the query budget, memoised evaluations, the trace, resume.

A search is a pure function of its seed and of what the model answers. So its checkpoint is just
the model's answers so far (memoised by key) and resuming is replaying: the search runs again from
the start, every question it already asked is answered from the checkpoint without touching the
model, and it continues past the point where it stopped with identical state (RNG, population,
CMA-ES matrices), ending bit-identical to a run that never stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import ArtifactError
from ..utils.io import atomic_save_tensors

SEARCH_CHECKPOINT = "checkpoint.search.safetensors"


class SearchState:
    """Budget (forward passes: one prompt on one example is one), memo, trace and checkpoint."""

    def __init__(
        self,
        out_dir: Path,
        budget: int | None,
        resume: bool = False,
        fingerprint: str = "",
        callbacks: list[Callable[[int, float], None]] | None = None,
    ):
        self.path = Path(out_dir) / SEARCH_CHECKPOINT
        self.limit = budget
        self.used = 0
        self.memo: dict[str, torch.Tensor] = {}
        self.charged: set[str] = set()
        self.trace: list[dict[str, Any]] = []
        self.best = float("-inf")
        self.rounds = 0
        self.exhausted = False
        self.fingerprint = fingerprint
        self.callbacks = list(callbacks or [])
        self._dirty = False
        if resume and self.path.exists():
            self._load()

    # ------------------------------------------------------------------ budget
    def remaining(self) -> float:
        return float("inf") if self.limit is None else self.limit - self.used

    def affords(self, cost: int) -> bool:
        return cost <= self.remaining()

    def charge(self, key: str, cost: int) -> bool:
        """Spend `cost` forward passes on the question `key` (once per key and run); False, with nothing
        spent, when the budget cannot pay for it."""
        if key in self.charged:
            return True
        if not self.affords(cost):
            self.exhausted = True
            return False
        self.used += cost
        self.charged.add(key)
        return True

    # ------------------------------------------------------------------ memo
    def cached(self, key: str) -> torch.Tensor | None:
        return self.memo.get(key)

    def remember(self, key: str, value: torch.Tensor) -> torch.Tensor:
        self.memo[key] = value.detach().cpu().contiguous()
        self._dirty = True
        return self.memo[key]

    def lookup(self, key: str, cost: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """The answer to `key`, charged `cost`; None when the budget cannot pay for it."""
        if not self.charge(key, cost):
            return None
        hit = self.memo.get(key)
        return hit if hit is not None else self.remember(key, compute())

    # ------------------------------------------------------------------ trace and rounds
    def record(self, score: float, **fields: Any) -> None:
        """One evaluated candidate: its score, the queries spent so far and the best score so far."""
        self.best = max(self.best, score)
        self.trace.append({"queries": self.used, "score": round(score, 6), "best": round(self.best, 6), **fields})

    def round_done(self) -> None:
        """End of a search round: save the checkpoint (if anything new was asked), then run callbacks."""
        self.rounds += 1
        if self._dirty:
            self.save()
        for cb in self.callbacks:
            cb(self.rounds, self.best)

    # ------------------------------------------------------------------ checkpoint
    def save(self) -> None:
        keys = sorted(self.memo)
        tensors = {f"memo.{i}": self.memo[k] for i, k in enumerate(keys)}
        meta = {"fingerprint": self.fingerprint, "keys": keys}
        atomic_save_tensors(self.path, tensors, {"prompttune": json.dumps(meta)})
        self._dirty = False

    def _load(self) -> None:
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads(f.metadata()["prompttune"])
                self.memo = {k: f.get_tensor(f"memo.{i}") for i, k in enumerate(meta["keys"])}
        except Exception as exc:  # a truncated or foreign file
            raise ArtifactError(f"{self.path}: not a readable prompttune search checkpoint ({exc})") from None
        if meta.get("fingerprint") != self.fingerprint:
            raise ArtifactError(
                f"{self.path}: checkpoint belongs to a different run (method, hyper-parameters, "
                "data or model differ); use --overwrite to start over"
            )
