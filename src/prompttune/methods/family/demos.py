"""What the fixed-demonstration methods (demos-random, demos-bootstrap, demos-instruction) share: their
common hyper-parameters, the pool-size check, the seeded labelled draw, the prompt a set of demonstrations
makes, and ranking such prompts without leakage (`DemoRanking`).

A set of demonstrations is a list of indices into the few-shot train draw (`ctx.data.train`, the
pool); its prompt is `HardPrompt.build(template, instruction, demos=...)`, plain text in the template,
so `predict`, `serve` and `--port-to` apply it unchanged (prompts/demos.py).

**Leakage.** A candidate scored on a train example among its own demonstrations sees that example's
answer a few lines above the question, and would be ranked on copying it. `DemoRanking` therefore ranks
each candidate only on the train examples outside its demonstration set (the trace's "ranked_on" counts
them); a search using it keeps at least one pool example out of every set (`check_pool(..., spare=1)`).
The pick among the finalists is on dev, which no candidate contains.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from ...errors import ConfigError
from ...prompts.demos import demo_record
from ...prompts.hard import HardPrompt
from ...search.engine import CandidateScorer
from ...search.engine import fitness as label_fitness
from ..base import MethodConfig, RunContext


class DemosConfig(MethodConfig):
    k: int = Field(4, ge=1, description="demonstrations put in front of every input (drawn from the --shots pool)")
    instruction: str = Field("", description="text put before the demonstrations (none by default)")


def check_pool(method: str, k: int, pool: int, spare: int = 0) -> None:
    """Refuse a demonstration count the training pool cannot supply (`spare`: examples that must stay
    outside every demonstration set, e.g. to rank the set on)."""
    if k + spare > pool:
        need = f"{k} demonstrations" + (f" plus {spare} example(s) to rank them on" if spare else "")
        raise ConfigError(f"{method}: k={k} needs {need}, but the training pool (the --shots draw) has only {pool} "
                          f"example(s); pass more --shots or a smaller k (at most {max(pool - spare, 0)})")


def labelled_draw(pool: int, k: int, seed: int) -> list[int]:
    """k distinct train indices, in drawn order, from `seed` alone: demos-random's demonstrations (and
    demos-bootstrap's labelled candidate, so that it is never worse on dev than demos-random)."""
    return random.Random(seed).sample(range(pool), k)


def demos_prompt(ctx: RunContext, indices: Sequence[int], instruction: str = "") -> HardPrompt:
    """The task's template behind `instruction` and the train examples at `indices`, each answered."""
    records = [demo_record(ctx.task, ctx.data.train[i]) for i in indices]
    return HardPrompt.build(ctx.task.spec.template, instruction=instruction, demos=records)


def held_out_fitness(scorer: Any, scores: torch.Tensor, held: torch.Tensor) -> float:
    """A scorer's fitness of one prompt's `scores` on the examples where `held` is True only: label scores
    (accuracy, ties by cross-entropy), a generative scorer's rows (likelihood or metric), or an endpoint
    classifier's per-example hits."""
    if isinstance(scorer, CandidateScorer):
        return label_fitness(scores[held], scorer.golds[held])
    if getattr(scorer, "golds", None) is None:
        return scorer.fitness(scores[held])
    return float(scorer.per_example(scores)[held].float().mean())


class DemoRanking:
    """Put before `HardPromptSearch` (or a subclass) in a search's bases: its `evaluate` ranks a prompt on
    the train examples outside the demonstrations recorded for its template in `demo_sets` (all of them for
    a prompt without). Record a candidate's set (train indices) before evaluating it."""

    @property
    def demo_sets(self) -> dict[str, tuple[int, ...]]:
        """Template -> the train indices of its demonstrations."""
        sets = self.__dict__.get("_demo_sets")
        if sets is None:
            sets = self.__dict__["_demo_sets"] = {}
        return sets

    def evaluate(self, prompts: list[HardPrompt], origins: list[dict[str, Any]] | None = None) -> list[float]:
        """Train fitness of each prompt (as many as the budget pays for), on the examples outside its own
        demonstrations; recorded in the trace with how many examples that was."""
        search: Any = self
        scorer = search.train_scorer
        scores = scorer.score(prompts)
        out = []
        for i, (prompt, s) in enumerate(zip(prompts, scores, strict=False)):
            inside = set(self.demo_sets.get(prompt.template, ()))
            held = torch.tensor([j not in inside for j in range(len(scorer))])
            fit = held_out_fitness(scorer, s, held)
            if prompt.template not in search.pool:
                fields = {}
                if search.ctx.task.is_generative:
                    fields["fitness"] = getattr(scorer, "fitness_name", "target log-likelihood per token")
                search.state.record(fit, candidate=prompt.describe(), ranked_on=int(held.sum()), **fields,
                                    **(origins[i] if origins else {}))
            search.pool[prompt.template] = (prompt, fit)
            out.append(fit)
        return out
